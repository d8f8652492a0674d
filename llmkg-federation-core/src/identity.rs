//! Node identities, organizations, signers and signed envelopes.
//!
//! A node's identity *is* its ed25519 public key: [`NodeId`] holds the 32 key bytes, so any
//! signature can be checked from the id alone, with no directory lookup. An [`OrgId`] names an
//! organization; a [`NodeCertificate`](crate::NodeCertificate) signed by the organization's
//! root key says that a node belongs to it.
//!
//! Every signature covers a domain-separation context, so a signature made for one kind of
//! message can never be replayed as another:
//!
//! - [`Signed<T>`] envelopes (the kinds hosts and protocols define, [`Signable`]) sign
//!   `ENVELOPE_DOMAIN ‖ len(T::CONTEXT) ‖ T::CONTEXT ‖ federation id ‖ encoding(value)`, so they
//!   are also bound to one [`FederationId`].
//! - The crate's own kinds (commits, certificates, revocations, the transport's identity
//!   binding) sign under contexts in the reserved namespace [`RESERVED_CONTEXT_PREFIX`].
//!   [`NodeKeypair::sign_raw`] refuses those contexts, so the public API never hands out a
//!   signature a host could pass off as one of them.
//!
//! Keys can live outside the process: signing goes through the object-safe [`Signer`] trait,
//! which [`NodeKeypair`] implements.

use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use thiserror::Error;

use crate::encoding::{self, DecodeError, EncodeError};
use crate::federation::FederationId;

/// Contexts starting with this prefix belong to this crate family's own signed kinds and are
/// refused by [`NodeKeypair::sign_raw`], [`SigningInput::raw`] and [`Signed::sign`].
pub const RESERVED_CONTEXT_PREFIX: &str = "llmkg/";

/// The reserved context under which every [`Signed`] envelope is signed; the kind's own
/// context and the federation id follow it in the signing input.
pub const ENVELOPE_DOMAIN: &str = "llmkg/envelope/v1";

/// The reserved context binding a transport's Noise static key to a node identity (see
/// [`SigningInput::transport_binding`]).
pub const TRANSPORT_BINDING_CONTEXT: &str = "llmkg/transport/noise-static/v1";

/// Whether `context` is in the reserved namespace ([`RESERVED_CONTEXT_PREFIX`]).
pub fn is_reserved_context(context: &str) -> bool {
    context.starts_with(RESERVED_CONTEXT_PREFIX)
}

/// A signature or an identity did not check out. Nothing was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The bytes are not a valid ed25519 public key.
    #[error("not a valid ed25519 public key")]
    InvalidPublicKey,
    /// The signature does not verify for this signer, context (kind), federation and value.
    #[error("signature by {signer} does not verify for this {kind}")]
    BadSignature {
        /// The claimed signer.
        signer: NodeId,
        /// The kind of value ([`Signable::CONTEXT`], or the raw context).
        kind: &'static str,
    },
    /// The envelope was validly signed, but for another federation than the one expected.
    #[error("signed for federation {actual}, expected {expected}")]
    FederationMismatch {
        /// The federation the reader is in.
        expected: FederationId,
        /// The federation the envelope was signed for.
        actual: FederationId,
    },
    /// The envelope could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The value could not be encoded (its `Serialize` implementation is not postcard
    /// compatible), so its signature cannot be checked.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// A signature could not be made. Nothing was signed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SignError {
    /// The context is reserved for this crate family's own kinds
    /// ([`RESERVED_CONTEXT_PREFIX`]); they are signed only through their own constructors.
    #[error("signature context {context:?} is reserved")]
    ReservedContext {
        /// The refused context.
        context: String,
    },
    /// The value could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The [`Signer`] failed.
    #[error(transparent)]
    Signer(#[from] SignerError),
}

/// A [`Signer`] could not sign.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SignerError {
    /// The key is unreachable (device unplugged, agent down, timeout); retrying may help.
    #[error("signer unavailable: {0}")]
    Unavailable(String),
    /// The signer refused this request (policy, user declined, ...).
    #[error("signer refused: {0}")]
    Refused(String),
}

/// A node's identity: its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "[u8; 32]", into = "[u8; 32]")]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Validates `bytes` as an ed25519 public key.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, SignatureError> {
        verifying_key(&bytes).map_err(|()| SignatureError::InvalidPublicKey)?;
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

    pub(crate) fn verifying_key(&self) -> Result<VerifyingKey, SignatureError> {
        verifying_key(&self.0).map_err(|()| SignatureError::InvalidPublicKey)
    }

    /// Checks `signature` over `context` and `message` made by this node (the format of
    /// [`NodeKeypair::sign_raw`]). Any context may be verified, reserved ones included.
    pub fn verify(
        &self,
        context: &'static str,
        message: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), SignatureError> {
        self.verify_input(context, &signing_input(context, message), signature)
    }

    /// Checks `signature` over a complete signing input; `kind` names it in the error.
    pub(crate) fn verify_input(
        &self,
        kind: &'static str,
        input: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), SignatureError> {
        verify_strict(&self.0, input, signature)
            .map_err(|_| SignatureError::BadSignature { signer: *self, kind })
    }
}

/// Strict ed25519 verification (rejects small-order keys and points, non-canonical scalars).
pub(crate) fn verify_strict(key: &[u8; 32], input: &[u8], signature: &[u8; 64]) -> Result<(), ()> {
    let key = verifying_key(key)?;
    key.verify_strict(input, &Signature::from_bytes(signature)).map_err(|_| ())
}

/// The decompressed public key of `bytes`. Decompressing is a large part of a verification
/// (and of decoding every node id), and a node sees the same few keys over and over, so each
/// thread keeps the last keys it decompressed (at most [`KEY_CACHE`]; cleared when full).
fn verifying_key(bytes: &[u8; 32]) -> Result<VerifyingKey, ()> {
    thread_local! {
        static KEYS: std::cell::RefCell<std::collections::HashMap<[u8; 32], VerifyingKey>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    if let Some(key) = KEYS.with(|k| k.borrow().get(bytes).copied()) {
        return Ok(key);
    }
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| ())?;
    KEYS.with(|k| {
        let mut k = k.borrow_mut();
        if k.len() >= KEY_CACHE {
            k.clear();
        }
        k.insert(*bytes, key);
    });
    Ok(key)
}

/// How many decompressed keys each thread keeps (see `verifying_key`).
const KEY_CACHE: usize = 1024;

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

/// The raw signing format: length-prefixed context, then the message.
pub(crate) fn signing_input(context: &str, message: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(8 + context.len() + message.len());
    input.extend_from_slice(&(context.len() as u64).to_le_bytes());
    input.extend_from_slice(context.as_bytes());
    input.extend_from_slice(message);
    input
}

/// The signing input of a [`Signed`] envelope of kind `context` in `federation`: the raw
/// format under [`ENVELOPE_DOMAIN`] whose message is the length-prefixed kind context, the
/// federation id and the value's signed message.
fn envelope_input(context: &str, federation: &FederationId, message: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(8 + context.len() + 32 + message.len());
    inner.extend_from_slice(&(context.len() as u64).to_le_bytes());
    inner.extend_from_slice(context.as_bytes());
    inner.extend_from_slice(federation.as_bytes());
    inner.extend_from_slice(message);
    signing_input(ENVELOPE_DOMAIN, &inner)
}

/// The exact bytes a [`Signer`] signs (ed25519, pure mode: the bytes themselves, no prehash).
///
/// Hosts cannot build one for a reserved context: [`SigningInput::raw`] refuses them, and the
/// crate builds the inputs of its own kinds itself. A [`Signer`] backed by a device reads the
/// bytes with [`as_bytes`](Self::as_bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct SigningInput(Vec<u8>);

impl SigningInput {
    /// The input for `message` under a host-chosen `context` (the format of
    /// [`NodeKeypair::sign_raw`]). Refuses reserved contexts.
    pub fn raw(context: &str, message: &[u8]) -> Result<Self, SignError> {
        if is_reserved_context(context) {
            return Err(SignError::ReservedContext { context: context.chars().take(80).collect() });
        }
        Ok(Self(signing_input(context, message)))
    }

    /// The input binding a transport's Noise static public key to the signing node
    /// ([`TRANSPORT_BINDING_CONTEXT`]). Such a signature only states "this node uses this
    /// transport key", so it is safe to hand out for any key bytes.
    pub fn transport_binding(noise_static_public: &[u8]) -> Self {
        Self(signing_input(TRANSPORT_BINDING_CONTEXT, noise_static_public))
    }

    /// An input under one of this crate's own (reserved) contexts.
    pub(crate) fn reserved(context: &'static str, message: &[u8]) -> Self {
        Self(signing_input(context, message))
    }

    /// The bytes to sign.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SigningInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningInput({} bytes)", self.0.len())
    }
}

/// Something that signs for a node: a [`NodeKeypair`] in memory, or a host's key kept in a
/// hardware module or an agent.
///
/// Contract: [`sign`](Self::sign) returns the ed25519 signature (RFC 8032, pure) of
/// `input.as_bytes()` by the key whose public half is [`node_id`](Self::node_id), or an error;
/// it never signs anything else. The crate does not re-verify what a signer returns: a signer
/// that returns a wrong signature produces envelopes that every receiver refuses.
pub trait Signer: Send + Sync {
    /// The node this signer signs for.
    fn node_id(&self) -> NodeId;

    /// Signs `input`.
    fn sign(&self, input: &SigningInput) -> Result<[u8; 64], SignerError>;
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

    /// Signs `message` under `context`. Refuses contexts in the reserved namespace
    /// ([`RESERVED_CONTEXT_PREFIX`]) with [`SignError::ReservedContext`]: commits,
    /// certificates and envelopes are signed only through their own constructors.
    pub fn sign_raw(&self, context: &str, message: &[u8]) -> Result<[u8; 64], SignError> {
        Ok(self.sign_input(&SigningInput::raw(context, message)?))
    }

    /// Signs a prepared input. Never fails.
    pub fn sign_input(&self, input: &SigningInput) -> [u8; 64] {
        self.key.sign(input.as_bytes()).to_bytes()
    }

    /// Signs `value` for `federation`, producing an envelope anyone in that federation can
    /// verify. Same as [`Signed::sign`] with this keypair.
    pub fn sign<T: Signable>(
        &self,
        federation: &FederationId,
        value: T,
    ) -> Result<Signed<T>, SignError> {
        Signed::sign(self, federation, value)
    }
}

impl Signer for NodeKeypair {
    fn node_id(&self) -> NodeId {
        NodeKeypair::node_id(self)
    }

    fn sign(&self, input: &SigningInput) -> Result<[u8; 64], SignerError> {
        Ok(self.sign_input(input))
    }
}

impl fmt::Debug for NodeKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKeypair({})", self.node_id().short())
    }
}

/// A kind of value carried in a [`Signed`] envelope, with its domain-separation context.
pub trait Signable: Serialize + DeserializeOwned {
    /// The context string mixed into every signature of this kind, e.g. `"acme/vote/v1"`.
    /// Distinct kinds must use distinct contexts. Contexts in the reserved namespace
    /// ([`RESERVED_CONTEXT_PREFIX`]) are refused when signing.
    const CONTEXT: &'static str;

    /// The bytes the signature covers (after the domain, context and federation). By default
    /// the value's postcard encoding; large values may sign a collision-resistant hash of it
    /// instead, which is equally binding.
    fn signed_message(&self) -> Result<Vec<u8>, EncodeError> {
        encoding::try_encode(self)
    }
}

/// A kind of signed value that belongs to this crate family (consensus proposals and
/// acknowledgements, for example): signed under a reserved context through
/// [`Signed::sign_crate_kind`]. Sealed: only this crate implements it, so a host can sign these
/// kinds only as what they are, never pass arbitrary bytes off as one.
pub trait CrateSignable: Signable + sealed::Sealed {}

pub(crate) mod sealed {
    /// Seals [`CrateSignable`](super::CrateSignable).
    pub trait Sealed {}
}

/// A value signed by a node for one federation, verified whenever it is constructed.
///
/// A `Signed<T>` only exists if its signature verified: it is made by [`Signed::sign`], by
/// [`Signed::decode`] or by serde deserialization, which all check the signature. It can
/// therefore be a field of a protocol message: decoding the message verifies the envelope.
///
/// The signature covers [`ENVELOPE_DOMAIN`], `T::CONTEXT`, the federation id and the value.
/// Since a deserializer cannot know which federation the reader is in, the envelope carries
/// its federation, and the value is reachable only through [`open`](Self::open), which checks
/// it against the reader's federation ([`SignatureError::FederationMismatch`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Signed<T> {
    value: T,
    federation: FederationId,
    signer: NodeId,
    signature: [u8; 64],
}

#[derive(Serialize)]
struct EnvelopeRef<'a, T> {
    value: &'a T,
    federation: &'a FederationId,
    signer: &'a NodeId,
    #[serde(with = "sig_bytes")]
    signature: &'a [u8; 64],
}

#[derive(Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
struct Envelope<T> {
    value: T,
    federation: FederationId,
    signer: NodeId,
    #[serde(with = "sig_bytes")]
    signature: [u8; 64],
}

/// The end of every signed commit envelope: who signed, and the signature. A commit envelope
/// is the commit's canonical encoding followed by this.
#[derive(Serialize, Deserialize)]
pub(crate) struct EnvelopeTail {
    pub(crate) signer: NodeId,
    #[serde(with = "sig_bytes")]
    pub(crate) signature: [u8; 64],
}

encoding::canonical!(EnvelopeTail);

pub(crate) mod sig_bytes {
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

impl<T: Signable> Envelope<T> {
    fn input(&self) -> Result<Vec<u8>, SignatureError> {
        Ok(envelope_input(T::CONTEXT, &self.federation, &self.value.signed_message()?))
    }

    fn verify(self) -> Result<Signed<T>, SignatureError> {
        let input = self.input()?;
        self.signer.verify_input(T::CONTEXT, &input, &self.signature)?;
        Ok(self.into_signed())
    }

    fn into_signed(self) -> Signed<T> {
        Signed {
            value: self.value,
            federation: self.federation,
            signer: self.signer,
            signature: self.signature,
        }
    }
}

impl<T: Signable> Signed<T> {
    /// Signs `value` for `federation` with `signer`. Refuses a kind whose context is reserved
    /// ([`SignError::ReservedContext`]).
    pub fn sign(
        signer: &dyn Signer,
        federation: &FederationId,
        value: T,
    ) -> Result<Self, SignError> {
        if is_reserved_context(T::CONTEXT) {
            return Err(SignError::ReservedContext { context: T::CONTEXT.into() });
        }
        let input = SigningInput(envelope_input(T::CONTEXT, federation, &value.signed_message()?));
        let signature = signer.sign(&input)?;
        Ok(Self { value, federation: *federation, signer: signer.node_id(), signature })
    }

    /// Signs a crate family's own kind (see [`CrateSignable`]) for `federation`: the same
    /// envelope as [`sign`](Self::sign), under the kind's reserved context.
    pub fn sign_crate_kind(
        signer: &dyn Signer,
        federation: &FederationId,
        value: T,
    ) -> Result<Self, SignError>
    where
        T: CrateSignable,
    {
        let input = SigningInput(envelope_input(T::CONTEXT, federation, &value.signed_message()?));
        let signature = signer.sign(&input)?;
        Ok(Self { value, federation: *federation, signer: signer.node_id(), signature })
    }

    /// The value, if the envelope was signed for `expected` (the reader's federation).
    pub fn open(&self, expected: &FederationId) -> Result<&T, SignatureError> {
        self.check_federation(expected)?;
        Ok(&self.value)
    }

    /// Consumes the envelope, returning the value if it was signed for `expected`.
    pub fn into_open(self, expected: &FederationId) -> Result<T, SignatureError> {
        self.check_federation(expected)?;
        Ok(self.value)
    }

    fn check_federation(&self, expected: &FederationId) -> Result<(), SignatureError> {
        if self.federation == *expected {
            Ok(())
        } else {
            Err(SignatureError::FederationMismatch { expected: *expected, actual: self.federation })
        }
    }

    /// The federation the envelope was signed for.
    pub fn federation(&self) -> FederationId {
        self.federation
    }

    /// Who signed.
    pub fn signer(&self) -> NodeId {
        self.signer
    }

    /// The raw signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// Encodes the envelope: value, federation, signer, signature. Fails only if the value's
    /// `Serialize` implementation is not postcard compatible (then it could not have been
    /// signed either).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        encoding::try_encode(&EnvelopeRef {
            value: &self.value,
            federation: &self.federation,
            signer: &self.signer,
            signature: &self.signature,
        })
    }

    /// Decodes an envelope, verifies its signature under `T::CONTEXT` and checks that it was
    /// signed for `expected`.
    pub fn decode(bytes: &[u8], expected: &FederationId) -> Result<Self, SignatureError> {
        let signed = Self::decode_any_federation(bytes)?;
        signed.check_federation(expected)?;
        Ok(signed)
    }

    fn decode_any_federation(bytes: &[u8]) -> Result<Self, SignatureError> {
        Self::decode_unverified(bytes)?.verify()
    }

    fn decode_unverified(bytes: &[u8]) -> Result<Envelope<T>, SignatureError> {
        let what = "Signed";
        if bytes.len() > encoding::MAX_ENCODED_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                limit: encoding::MAX_ENCODED_LEN,
            }
            .into());
        }
        match postcard::take_from_bytes::<Envelope<T>>(bytes) {
            Ok((env, [])) => {
                let canonical = EnvelopeRef {
                    value: &env.value,
                    federation: &env.federation,
                    signer: &env.signer,
                    signature: &env.signature,
                };
                encoding::ensure_canonical(&canonical, bytes)?;
                Ok(env)
            }
            Ok((_, rest)) => Err(DecodeError::TrailingBytes { what, extra: rest.len() }.into()),
            Err(e) => Err(DecodeError::Malformed { what, reason: e.to_string() }.into()),
        }
    }

    /// Decodes and verifies many envelopes at once, all expected in `expected`.
    ///
    /// The signatures are checked with ed25519 batch verification, which is several times
    /// faster than one by one for large batches. If the batch fails, the envelopes are checked
    /// one by one to name the first bad one: the error carries its index. The batch's random
    /// coefficients are derived deterministically from the batch itself (ed25519-dalek's
    /// transcript), so no RNG is needed and a given batch always gets the same answer.
    ///
    /// Batch verification accepts exactly the batches whose every signature satisfies the
    /// verification equation — with one caveat: a *signer* that deliberately builds its own
    /// signature with a small-order component can make it pass a batch yet fail the strict
    /// one-by-one check of [`decode`](Self::decode) (with probability about one half).
    /// Weak (small-order) signer keys are refused before batching. Use [`decode`](Self::decode)
    /// where every node must reach the same verdict on a value signed by a possibly malicious
    /// member.
    pub fn decode_batch<B: AsRef<[u8]>>(
        items: &[B],
        expected: &FederationId,
    ) -> Result<Vec<Self>, BatchError> {
        let mut envs = Vec::with_capacity(items.len().min(1 << 16));
        let mut inputs = Vec::with_capacity(items.len().min(1 << 16));
        for (index, item) in items.iter().enumerate() {
            let env = Self::decode_unverified(item.as_ref())
                .and_then(|env| Ok((env.input()?, env)))
                .map_err(|error| BatchError { index, error })?;
            inputs.push(env.0);
            envs.push(env.1);
        }
        let batch: Vec<BatchItem<'_>> = envs
            .iter()
            .zip(&inputs)
            .map(|(env, input)| BatchItem {
                signer: env.signer,
                kind: T::CONTEXT,
                input,
                signature: &env.signature,
            })
            .collect();
        verify_batch(&batch)?;
        let mut out = Vec::with_capacity(envs.len());
        for (index, env) in envs.into_iter().enumerate() {
            let signed = env.into_signed();
            signed.check_federation(expected).map_err(|error| BatchError { index, error })?;
            out.push(signed);
        }
        Ok(out)
    }
}

impl<T: Signable> Serialize for Signed<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        EnvelopeRef {
            value: &self.value,
            federation: &self.federation,
            signer: &self.signer,
            signature: &self.signature,
        }
        .serialize(s)
    }
}

impl<'de, T: Signable> Deserialize<'de> for Signed<T> {
    /// Decodes the envelope and verifies its signature; a bad signature is a deserialization
    /// error. The federation is checked later, by [`Signed::open`].
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Envelope::<T>::deserialize(d)?.verify().map_err(serde::de::Error::custom)
    }
}

/// One signature of a batch given to [`verify_batch`].
pub(crate) struct BatchItem<'a> {
    pub(crate) signer: NodeId,
    pub(crate) kind: &'static str,
    pub(crate) input: &'a [u8],
    pub(crate) signature: &'a [u8; 64],
}

/// A batch verification failed: the first bad item and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("item {index} of the batch: {error}")]
pub struct BatchError {
    /// Index of the first item that does not verify (or decode).
    pub index: usize,
    /// Why it was refused.
    pub error: SignatureError,
}

/// Verifies a batch of signatures (see [`Signed::decode_batch`] for the semantics); on
/// failure, names the first bad one, found by verifying one by one.
pub(crate) fn verify_batch(items: &[BatchItem<'_>]) -> Result<(), BatchError> {
    let mut keys = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let key = item.signer.verifying_key().map_err(|error| BatchError { index, error })?;
        if key.is_weak() {
            return Err(BatchError {
                index,
                error: SignatureError::BadSignature { signer: item.signer, kind: item.kind },
            });
        }
        keys.push(key);
    }
    let messages: Vec<&[u8]> = items.iter().map(|i| i.input).collect();
    let signatures: Vec<Signature> =
        items.iter().map(|i| Signature::from_bytes(i.signature)).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        return Ok(());
    }
    for (index, item) in items.iter().enumerate() {
        item.signer
            .verify_input(item.kind, item.input, item.signature)
            .map_err(|error| BatchError { index, error })?;
    }
    // Unreachable in practice: the batch failed but every signature verifies on its own.
    // Refuse conservatively, blaming the first item.
    match items.first() {
        Some(item) => Err(BatchError {
            index: 0,
            error: SignatureError::BadSignature { signer: item.signer, kind: item.kind },
        }),
        None => Ok(()),
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
