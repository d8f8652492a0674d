//! Node identities, organizations and signed envelopes.
//!
//! A node's identity *is* its ed25519 public key: [`NodeId`] holds the 32 key bytes, so any
//! signature can be checked from the id alone, with no directory lookup. An [`OrgId`] names an
//! organization; certifying that a node belongs to one is the governance layer's job.
//!
//! Every signature covers a per-kind domain-separation context (see [`Signable::CONTEXT`]) and
//! the canonical encoding of the value, so a signature made for one kind of message can never
//! be replayed as another.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use thiserror::Error;

use crate::encoding::{self, DecodeError};

/// A signature or an identity did not check out. Nothing was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The bytes are not a valid ed25519 public key.
    #[error("not a valid ed25519 public key")]
    InvalidPublicKey,
    /// The signature does not verify for this signer, context and value.
    #[error("signature by {signer} does not verify for this {kind}")]
    BadSignature {
        /// The claimed signer.
        signer: NodeId,
        /// The kind of value ([`Signable::CONTEXT`]).
        kind: &'static str,
    },
    /// The envelope could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A node's identity: its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "[u8; 32]", into = "[u8; 32]")]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Validates `bytes` as an ed25519 public key.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, SignatureError> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| SignatureError::InvalidPublicKey)?;
        Ok(Self(bytes))
    }

    /// The public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 hex digits, for logs and summaries.
    pub fn short(&self) -> String {
        self.to_string().chars().take(8).collect()
    }

    fn verifying_key(&self) -> Result<VerifyingKey, SignatureError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| SignatureError::InvalidPublicKey)
    }

    /// Checks `signature` over `context` and `message` made by this node.
    pub fn verify(
        &self,
        context: &'static str,
        message: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), SignatureError> {
        let key = self.verifying_key()?;
        let sig = Signature::from_bytes(signature);
        key.verify_strict(&signing_input(context, message), &sig)
            .map_err(|_| SignatureError::BadSignature { signer: *self, kind: context })
    }
}

impl TryFrom<[u8; 32]> for NodeId {
    type Error = SignatureError;
    fn try_from(value: [u8; 32]) -> Result<Self, Self::Error> {
        Self::from_bytes(value)
    }
}

impl From<NodeId> for [u8; 32] {
    fn from(value: NodeId) -> Self {
        value.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        encoding::fmt_hex(&self.0, f)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

/// The message actually signed: length-prefixed context, then the value's encoding.
fn signing_input(context: &str, message: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(8 + context.len() + message.len());
    input.extend_from_slice(&(context.len() as u64).to_le_bytes());
    input.extend_from_slice(context.as_bytes());
    input.extend_from_slice(message);
    input
}

/// A node's signing key. Deliberately neither `Clone` nor `Debug`-printable.
pub struct NodeKeypair {
    key: SigningKey,
}

impl NodeKeypair {
    /// The keypair whose secret key is `secret` (32 bytes of high-entropy randomness; keep it
    /// secret). Tests and simulations derive it from a seeded RNG.
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(&secret) }
    }

    /// The secret key bytes, to persist the identity.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    /// Signs `message` under `context`.
    pub fn sign_raw(&self, context: &'static str, message: &[u8]) -> [u8; 64] {
        self.key.sign(&signing_input(context, message)).to_bytes()
    }

    /// Signs `value`, producing an envelope anyone can verify.
    pub fn sign<T: Signable>(&self, value: T) -> Signed<T> {
        let signature = self.sign_raw(T::CONTEXT, &value.signed_message());
        Signed { value, signer: self.node_id(), signature }
    }
}

impl fmt::Debug for NodeKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKeypair({})", self.node_id().short())
    }
}

/// A kind of value that is signed, with its domain-separation context.
pub trait Signable: Serialize + DeserializeOwned {
    /// The context string mixed into every signature of this kind, e.g. `"llmkg/commit/v1"`.
    /// Distinct kinds must use distinct contexts.
    const CONTEXT: &'static str;

    /// The bytes the signature covers (after the context). By default the canonical
    /// encoding; large values may sign their content id instead, which is equally binding
    /// because the id is a collision-resistant hash of that encoding.
    fn signed_message(&self) -> Vec<u8> {
        encoding::encode(self)
    }
}

/// A value with a verified signature.
///
/// A `Signed<T>` only exists if its signature verified: it is made by [`NodeKeypair::sign`] or
/// by [`Signed::decode`], which checks the signature before returning. There is deliberately
/// no `Deserialize` implementation.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Signed<T> {
    value: T,
    signer: NodeId,
    signature: [u8; 64],
}

#[derive(Serialize)]
struct EnvelopeRef<'a, T> {
    value: &'a T,
    signer: &'a NodeId,
    #[serde(with = "sig_bytes")]
    signature: &'a [u8; 64],
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    value: T,
    signer: NodeId,
    #[serde(with = "sig_bytes")]
    signature: [u8; 64],
}

/// The end of every signed envelope: who signed, and the signature. An envelope is the
/// value's canonical encoding followed by this.
#[derive(Serialize, Deserialize)]
pub(crate) struct EnvelopeTail {
    pub(crate) signer: NodeId,
    #[serde(with = "sig_bytes")]
    pub(crate) signature: [u8; 64],
}

mod sig_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer, B: AsRef<[u8]>>(
        sig: &B,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(sig.as_ref())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let bytes: &'de [u8] = <&[u8]>::deserialize(d)?;
        <[u8; 64]>::try_from(bytes)
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"64"))
    }
}

impl<T: Signable> Signed<T> {
    /// The signed value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Consumes the envelope, returning the value.
    pub fn into_value(self) -> T {
        self.value
    }

    /// Who signed.
    pub fn signer(&self) -> NodeId {
        self.signer
    }

    /// The raw signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// Encodes the envelope (value, signer, signature).
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(&EnvelopeRef {
            value: &self.value,
            signer: &self.signer,
            signature: &self.signature,
        })
    }

    /// Decodes an envelope and verifies its signature under `T::CONTEXT`.
    ///
    /// The signature is checked over the canonical re-encoding of the decoded value; since
    /// decoders reject non-canonical input, that is the same as the bytes received.
    pub fn decode(bytes: &[u8]) -> Result<Self, SignatureError> {
        let env: Envelope<T> = encoding::decode(bytes)?;
        env.signer.verify(T::CONTEXT, &env.value.signed_message(), &env.signature)?;
        Ok(Self { value: env.value, signer: env.signer, signature: env.signature })
    }
}

/// An organization's name: 1 to 64 characters of `[a-z0-9-]`, starting with a letter or
/// digit (like a DNS label).
///
/// ```
/// use llmkg_federation_core::OrgId;
/// assert!(OrgId::new("acme-research").is_ok());
/// assert!(OrgId::new("Acme Research").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgId(Box<str>);

/// An organization name was not a valid [`OrgId`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "invalid organization id {0:?}: expected 1-64 characters of [a-z0-9-], not starting with '-'"
)]
pub struct InvalidOrgId(pub String);

impl OrgId {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidOrgId> {
        let name: String = name.into();
        let ok = (1..=64).contains(&name.len())
            && !name.starts_with('-')
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(name.into_boxed_str()))
        } else {
            Err(InvalidOrgId(name.chars().take(80).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OrgId {
    type Error = InvalidOrgId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<OrgId> for String {
    fn from(value: OrgId) -> Self {
        value.0.into()
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrgId({})", self.0)
    }
}
