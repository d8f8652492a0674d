//! Federation keys: organization encryption keys, key epochs and sealed change sets.
//!
//! A federated branch with security level Confidential or above stores and ships its change
//! sets *sealed* under a per-federation data key. Each member organization has an X25519
//! encryption key ([`OrgEncryptionKeypair`]), certified by its root
//! ([`EncryptionKeyCertificate`]). An administering node issues a [`KeyEpoch`] whenever the
//! membership changes: a fresh random data key, wrapped for every member with HPKE (RFC 9180,
//! base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305). An organization
//! that has left is not among the recipients of the next epoch, so it cannot read anything
//! sealed after it left; one that joins receives only the epochs from its joining on.
//!
//! ```text
//!  OrgKeypair (root) ──sign_statement──► EncryptionKeyCertificate { org, root, key, serial, issued_at }
//!
//!  admin node ──Signed<KeyEpoch>──► every node           epoch n-1 ◄──digest── epoch n ◄── ...
//!     KeyEpoch { federation, epoch n, previous digest,
//!                members: [ org A: HPKE(pk_A, data key n), org B: HPKE(pk_B, data key n) ] }
//!
//!  FederationKeyring (org A) ──accept──► data keys of the epochs A was a member of
//!        │ seal(branch, changes)                                ▲ open(branch, sealed)
//!        ▼                                                      │
//!  SealedChangeSet { epoch, nonce, XChaCha20-Poly1305(data key n, changes; AD = fed, branch, n) }
//!        └── inside an author-signed Signed<SealedCommit>: relays verify it without any key
//! ```
//!
//! Signatures cover the sealed form, so a node that holds no key can still verify and relay
//! what it cannot read. Whether the node that signed an epoch may administer the federation is
//! the caller's decision ([`Signed::signer`]).
//!
//! Randomness and time are parameters: nothing here reads the clock or the operating system's
//! random number generator.
//!
//! # Example
//!
//! ```
//! use llmkg_federation_core::{BranchName, ChangeSet, FederationId, NodeKeypair, OrgId, Term, Triple};
//! use llmkg_governance::keys::{FederationKeyring, OrgEncryptionKeypair};
//! use rand::SeedableRng;
//!
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
//! let federation = FederationId::from_name("research");
//! let acme = OrgId::new("acme")?;
//! let admin = NodeKeypair::from_secret_bytes([1; 32]);
//!
//! let mut keyring = FederationKeyring::new(
//!     federation,
//!     acme.clone(),
//!     OrgEncryptionKeypair::generate(&mut rng),
//! );
//! let members = [(acme.clone(), keyring.public_key())];
//! let epoch = keyring.rotate(&mut rng, &admin, &members)?; // ship `epoch` to the other members
//! assert_eq!(keyring.current_epoch(), Some(1));
//!
//! let main = BranchName::new("main")?;
//! let changes = ChangeSet::adding([Triple::new(
//!     Term::iri("https://example.org/alice")?,
//!     Term::iri("http://xmlns.com/foaf/0.1/name")?,
//!     Term::string("Alice")?,
//! )?]);
//! let sealed = keyring.seal(&mut rng, &main, &changes)?;
//! assert_eq!(keyring.open(&main, &sealed)?, changes);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use zeroize::Zeroize;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hpke::aead::ChaCha20Poly1305 as HpkeChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use llmkg_federation_core::encoding::{self, DecodeError, EncodeError, hex};
use llmkg_federation_core::{
    BranchName, ChangeSet, FederationId, OrgId, OrgKeypair, OrgRootKey, SignError, Signable,
    SignatureError, Signed, Signer, Timestamp, TrustAnchors,
};
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Signing context of [`EncryptionKeyCertificate`]s (an organization root's statement).
pub const ENCRYPTION_KEY_CONTEXT: &str = "llmkg-governance/encryption-key/v1";
/// Signing context of [`KeyEpoch`] envelopes.
pub const KEY_EPOCH_CONTEXT: &str = "llmkg-governance/key-epoch/v1";
/// Signing context of [`SealedCommit`] envelopes.
pub const SEALED_COMMIT_CONTEXT: &str = "llmkg-governance/sealed-commit/v1";

/// Most member organizations in one [`KeyEpoch`].
pub const MAX_MEMBERS: usize = 1024;
/// Longest encoded `Signed<KeyEpoch>` accepted by [`KeyEpoch::decode_signed`] (a full epoch
/// of [`MAX_MEMBERS`] members takes about 180 KiB).
pub const MAX_KEY_EPOCH_LEN: usize = 256 * 1024;
/// Longest ciphertext of a [`SealedChangeSet`] (plaintext plus the 16-byte tag): 64 MiB, the
/// largest value a key-value store of the core holds.
pub const MAX_SEALED_LEN: usize = 64 << 20;
/// Longest plaintext (canonical change-set encoding) that can be sealed.
pub const MAX_PLAINTEXT_LEN: usize = MAX_SEALED_LEN - TAG_LEN;
/// Longest encoded [`SealedChangeSet`] accepted by [`SealedChangeSet::decode`].
pub const MAX_SEALED_ENCODED_LEN: usize = MAX_SEALED_LEN + 64;
/// Longest encoded `Signed<SealedCommit>` accepted by [`SealedCommit::decode_signed`].
pub const MAX_SEALED_COMMIT_LEN: usize = MAX_SEALED_ENCODED_LEN + 1024;

/// Length of a data key.
const DATA_KEY_LEN: usize = 32;
/// Length of an AEAD tag (Poly1305), in a wrapped key and in a sealed change set.
const TAG_LEN: usize = 16;
/// Length of a wrapped data key: the encrypted key and its tag.
const WRAPPED_LEN: usize = DATA_KEY_LEN + TAG_LEN;
/// Length of an XChaCha20-Poly1305 nonce.
const NONCE_LEN: usize = 24;

/// Domain of the HPKE `info` of a wrapped data key.
const WRAP_INFO_DOMAIN: &str = "llmkg-governance/key-wrap/v1";
/// Domain of the associated data of a sealed change set.
const SEAL_AAD_DOMAIN: &str = "llmkg-governance/sealed-change-set/v1";
/// Domain of the associated data of a sealed commit envelope (a replica's commit as it is
/// shipped to the branch's other replicas): a sealed change set cannot pass for one.
const ENVELOPE_AAD_DOMAIN: &str = "llmkg-governance/sealed-commit-envelope/v1";
/// Domain of an epoch digest.
const EPOCH_DIGEST_DOMAIN: &str = "llmkg-governance/key-epoch-digest/v1";

type Suite = X25519HkdfSha256;
type HpkePrivateKey = <Suite as Kem>::PrivateKey;
type HpkePublicKey = <Suite as Kem>::PublicKey;
type HpkeEncappedKey = <Suite as Kem>::EncappedKey;

/// A key, an epoch or a sealed change set did not check out, or could not be made.
///
/// Every variant means the same for state: the call failed as a whole and nothing changed (no
/// epoch was recorded, no key was stored, nothing was decrypted).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The bytes are not a usable X25519 public key (non-canonical, or of small order so that
    /// every key agreement with it is predictable). Nothing changed.
    #[error("not a valid X25519 encryption key")]
    InvalidEncryptionKey,
    /// The organization of an encryption-key certificate has no pinned root. Nothing changed.
    #[error("organization {org} is not pinned")]
    UnpinnedOrg {
        /// The organization the certificate claims.
        org: OrgId,
    },
    /// The certificate names (and is signed by) another root than the one pinned for its
    /// organization. Nothing changed.
    #[error("organization {org} is pinned to another root key than {claimed}")]
    WrongRoot {
        /// The organization.
        org: OrgId,
        /// The root the certificate names.
        claimed: OrgRootKey,
    },
    /// The certificate's signature does not verify under the root it names: forged or
    /// damaged. Nothing changed.
    #[error("bad signature on the encryption-key certificate of {org}")]
    BadCertificateSignature {
        /// The organization the certificate claims.
        org: OrgId,
    },
    /// A signed envelope (epoch, sealed commit) does not verify or does not decode. Nothing
    /// changed.
    #[error(transparent)]
    Envelope(#[from] SignatureError),
    /// The epoch was signed for, or names, another federation than the keyring's. Nothing
    /// changed.
    #[error("key epoch of federation {actual}, expected {expected}")]
    WrongFederation {
        /// The keyring's federation.
        expected: FederationId,
        /// The federation of the epoch.
        actual: FederationId,
    },
    /// The epoch is not the next one: epochs are accepted in order, each exactly once.
    /// Nothing changed.
    #[error("key epoch {got} is not the next one (expected {expected})")]
    UnexpectedEpoch {
        /// The next epoch number this keyring accepts.
        expected: u64,
        /// The number of the refused epoch.
        got: u64,
    },
    /// The epoch's previous-epoch digest is not the digest of the epoch this keyring accepted
    /// last (a fork or a forgery). Nothing changed.
    #[error("key epoch {epoch} does not chain to the previous epoch")]
    BrokenChain {
        /// The refused epoch.
        epoch: u64,
    },
    /// A membership list is empty, too long, repeats an organization, or an epoch's fields
    /// are out of bounds. Nothing changed.
    #[error("invalid key epoch: {0}")]
    InvalidEpoch(&'static str),
    /// This organization is a member of the epoch, but its copy of the data key is wrapped to
    /// another encryption key than the keyring's (the keyring holds an outdated or a wrong
    /// key). Nothing changed.
    #[error("the data key of epoch {epoch} is wrapped to another encryption key of this org")]
    WrappedForOtherKey {
        /// The epoch.
        epoch: u64,
    },
    /// This organization's copy of the epoch's data key does not decrypt (damaged or forged).
    /// Nothing changed.
    #[error("the data key of epoch {epoch} does not unwrap")]
    UnwrapFailed {
        /// The epoch.
        epoch: u64,
    },
    /// Wrapping the data key for a member failed (HPKE refused the encapsulation). Nothing
    /// was issued.
    #[error("could not wrap the data key for {org}")]
    WrapFailed {
        /// The member.
        org: OrgId,
    },
    /// Signing failed. Nothing was issued and nothing changed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The keyring has accepted no epoch yet, so it has no key to seal with. Nothing was
    /// sealed.
    #[error("no key epoch accepted yet")]
    NoCurrentEpoch,
    /// The keyring knows the epoch but its organization was not a member of it, so it has no
    /// key for it (for example an organization reading what was written after its removal,
    /// or before it joined). Nothing was decrypted.
    #[error("no key for epoch {epoch}: this organization was not a member")]
    NoKeyForEpoch {
        /// The epoch the value was sealed in.
        epoch: u64,
    },
    /// The keyring has not accepted this epoch (yet). Nothing was decrypted.
    #[error("unknown key epoch {epoch}")]
    UnknownEpoch {
        /// The epoch the value claims.
        epoch: u64,
    },
    /// Authenticated decryption failed: wrong branch or federation, a flipped byte in the
    /// nonce, the ciphertext or the epoch. Nothing was decrypted.
    #[error("sealed change set does not authenticate (tampered, or opened for the wrong branch)")]
    Tampered,
    /// The bytes do not decode (or a decrypted payload is not a canonical change set).
    /// Nothing was decrypted or accepted.
    #[error(transparent)]
    Malformed(#[from] DecodeError),
    /// A value exceeds its documented size limit. Nothing was sealed.
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A value could not be encoded. Nothing was issued or sealed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

// ------------------------------------------------------------------------------------------
// Secrets

/// 32 secret bytes, zeroized when dropped.
struct SecretBytes([u8; 32]);

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Zeroizes a buffer that held secret bytes.
fn wipe(buf: &mut [u8]) {
    buf.zeroize();
}

// ------------------------------------------------------------------------------------------
// Organization encryption keys

/// An organization's X25519 encryption key (public half), to which data keys are wrapped.
///
/// Always valid: canonical (below 2^255 − 19, top bit clear) and not of small order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "[u8; 32]", into = "[u8; 32]")]
pub struct OrgEncryptionKey([u8; 32]);

/// The X25519 u-coordinates of small order that are below the field prime (0, 1, the two
/// points of order 8, and p − 1). Key agreement with any of them yields a value an attacker
/// knows.
const SMALL_ORDER_POINTS: [[u8; 32]; 5] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

impl OrgEncryptionKey {
    /// Validates `bytes` as an X25519 public key: canonical (the top bit clear and the value
    /// below 2^255 − 19) and not one of the small-order points.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, KeyError> {
        if !is_canonical_u(&bytes) || SMALL_ORDER_POINTS.contains(&bytes) {
            return Err(KeyError::InvalidEncryptionKey);
        }
        Ok(Self(bytes))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn to_hpke(self) -> Result<HpkePublicKey, KeyError> {
        HpkePublicKey::from_bytes(&self.0).map_err(|_| KeyError::InvalidEncryptionKey)
    }
}

/// Whether `u` (little endian) has its top bit clear and is below p = 2^255 − 19.
fn is_canonical_u(u: &[u8; 32]) -> bool {
    let [low, middle @ .., top] = u;
    if *top > 0x7f {
        return false;
    }
    // u ≥ p exactly when u = 2^255 − 19 + k for k in 0..19: top byte 0x7f, the middle all
    // 0xff and the low byte at least 0xed.
    !(*top == 0x7f && middle.iter().all(|b| *b == 0xff) && *low >= 0xed)
}

impl TryFrom<[u8; 32]> for OrgEncryptionKey {
    type Error = KeyError;
    fn try_from(value: [u8; 32]) -> Result<Self, Self::Error> {
        Self::from_bytes(value)
    }
}

impl From<OrgEncryptionKey> for [u8; 32] {
    fn from(value: OrgEncryptionKey) -> Self {
        value.0
    }
}

impl fmt::Display for OrgEncryptionKey {
    /// Lower-case hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for OrgEncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_string();
        write!(f, "OrgEncryptionKey({})", hex.get(..8).unwrap_or(&hex))
    }
}

/// An organization's X25519 encryption keypair. Deliberately neither `Clone` nor
/// `Debug`-printable (its `Debug` shows the public key only).
///
/// The secret is a 32-byte seed from which the X25519 key is derived with the suite's
/// `DeriveKeyPair` (RFC 9180, section 7.1.3); [`secret_bytes`](Self::secret_bytes) returns
/// the seed, to persist the key. The seed and the derived private key are zeroized when
/// dropped.
pub struct OrgEncryptionKeypair {
    seed: SecretBytes,
    secret: HpkePrivateKey,
    public: OrgEncryptionKey,
}

impl OrgEncryptionKeypair {
    /// The keypair derived from `seed` (32 bytes of high-entropy randomness; keep it secret).
    pub fn from_secret_bytes(seed: [u8; 32]) -> Self {
        let seed = SecretBytes(seed);
        let (secret, public) = Suite::derive_keypair(&seed.0);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&public.to_bytes());
        // A public key derived from a clamped scalar never has small order and is reduced.
        Self { seed, secret, public: OrgEncryptionKey(bytes) }
    }

    /// A fresh keypair from `rng`.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut seed = SecretBytes([0; 32]);
        rng.fill_bytes(&mut seed.0);
        Self::from_secret_bytes(seed.0)
    }

    /// The seed, to persist the keypair.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.seed.0
    }

    /// The public key, which the organization's root certifies
    /// ([`EncryptionKeyCertificate::issue`]).
    pub fn public_key(&self) -> OrgEncryptionKey {
        self.public
    }
}

impl fmt::Debug for OrgEncryptionKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrgEncryptionKeypair({:?})", self.public)
    }
}

// ------------------------------------------------------------------------------------------
// Encryption-key certificates

/// What an [`EncryptionKeyCertificate`] states; its canonical encoding is what the root signs.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct KeyStatement {
    org: OrgId,
    root: OrgRootKey,
    key: OrgEncryptionKey,
    serial: u64,
    issued_at: Timestamp,
}

impl KeyStatement {
    fn message(&self) -> Result<Vec<u8>, KeyError> {
        Ok(encoding::try_encode(self)?)
    }
}

/// An organization root's signed statement that `key` is the organization's encryption key
/// from serial `serial` on, issued at `issued_at` (signed with
/// [`OrgKeypair::sign_statement`] under [`ENCRYPTION_KEY_CONTEXT`]). Not bound to a
/// federation: an organization uses one encryption key in every federation it joins.
///
/// Decoding does not check the signature; [`verify`](Self::verify) checks it, and the root,
/// against the pinned [`TrustAnchors`]. Among several verified certificates of one
/// organization, the highest serial is the current key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EncryptionKeyCertificate {
    statement: KeyStatement,
    #[serde(with = "crate::trust::serde_sig")]
    signature: [u8; 64],
}

/// Longest encoded [`EncryptionKeyCertificate`] accepted by
/// [`EncryptionKeyCertificate::decode`].
pub const MAX_KEY_CERTIFICATE_LEN: usize = 512;

impl EncryptionKeyCertificate {
    /// Has `root` state that `key` is `org`'s encryption key from `serial` on.
    pub fn issue(
        root: &OrgKeypair,
        org: OrgId,
        key: OrgEncryptionKey,
        serial: u64,
        issued_at: Timestamp,
    ) -> Result<Self, KeyError> {
        let statement = KeyStatement { org, root: root.root_key(), key, serial, issued_at };
        let signature = root.sign_statement(ENCRYPTION_KEY_CONTEXT, &statement.message()?)?;
        Ok(Self { statement, signature })
    }

    /// Checks the certificate against `anchors`: its organization is pinned
    /// ([`KeyError::UnpinnedOrg`]), to the root the certificate names
    /// ([`KeyError::WrongRoot`]), and that root signed it
    /// ([`KeyError::BadCertificateSignature`]).
    pub fn verify(&self, anchors: &TrustAnchors) -> Result<(), KeyError> {
        let s = &self.statement;
        match anchors.root(&s.org) {
            None => return Err(KeyError::UnpinnedOrg { org: s.org.clone() }),
            Some(pinned) if pinned != s.root => {
                return Err(KeyError::WrongRoot { org: s.org.clone(), claimed: s.root });
            }
            Some(_) => {}
        }
        if s.root.verify_statement(ENCRYPTION_KEY_CONTEXT, &s.message()?, &self.signature) {
            Ok(())
        } else {
            Err(KeyError::BadCertificateSignature { org: s.org.clone() })
        }
    }

    /// [`verify`](Self::verify), then the certified key.
    pub fn verified_key(&self, anchors: &TrustAnchors) -> Result<OrgEncryptionKey, KeyError> {
        self.verify(anchors)?;
        Ok(self.statement.key)
    }

    /// Decodes a certificate (canonical, at most [`MAX_KEY_CERTIFICATE_LEN`] bytes). The
    /// signature is checked by [`verify`](Self::verify).
    pub fn decode(bytes: &[u8]) -> Result<Self, KeyError> {
        Ok(encoding::decode_with_limit(bytes, MAX_KEY_CERTIFICATE_LEN)?)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Result<Vec<u8>, KeyError> {
        Ok(encoding::try_encode(self)?)
    }

    /// The organization.
    pub fn org(&self) -> &OrgId {
        &self.statement.org
    }

    /// The root that signed (or claims to have signed) the certificate.
    pub fn root(&self) -> OrgRootKey {
        self.statement.root
    }

    /// The certified encryption key (not yet verified: see [`verified_key`](Self::verified_key)).
    pub fn key(&self) -> OrgEncryptionKey {
        self.statement.key
    }

    /// The serial: the key is the organization's from this serial on.
    pub fn serial(&self) -> u64 {
        self.statement.serial
    }

    /// When the root issued the certificate.
    pub fn issued_at(&self) -> Timestamp {
        self.statement.issued_at
    }

    /// The root's signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
}

// ------------------------------------------------------------------------------------------
// Key epochs

/// The digest of a [`KeyEpoch`] (SHA-256 over its fields), by which the next epoch names it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EpochDigest([u8; 32]);

impl EpochDigest {
    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for EpochDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EpochDigest({})", hex(self.0.get(..4).unwrap_or_default()))
    }
}

/// One member's copy of an epoch's data key: HPKE-wrapped to the member's encryption key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WrappedKey {
    org: OrgId,
    recipient: OrgEncryptionKey,
    encapsulated: [u8; 32],
    ciphertext: Vec<u8>,
}

impl WrappedKey {
    /// The member organization.
    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// The encryption key the data key is wrapped to.
    pub fn recipient(&self) -> OrgEncryptionKey {
        self.recipient
    }
}

/// The data key of one epoch of a federation, wrapped for each member organization, chained
/// to the previous epoch by its digest. Issued by an administering node inside a
/// `Signed<KeyEpoch>` (context [`KEY_EPOCH_CONTEXT`]).
///
/// Epochs are numbered from 1; epoch 1 has no previous epoch. Members are sorted by
/// organization and distinct, at least 1 and at most [`MAX_MEMBERS`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "RawKeyEpoch")]
pub struct KeyEpoch {
    federation: FederationId,
    epoch: u64,
    previous: Option<EpochDigest>,
    members: Vec<WrappedKey>,
}

#[derive(Deserialize)]
struct RawKeyEpoch {
    federation: FederationId,
    epoch: u64,
    previous: Option<EpochDigest>,
    members: Vec<WrappedKey>,
}

impl TryFrom<RawKeyEpoch> for KeyEpoch {
    type Error = KeyError;
    fn try_from(r: RawKeyEpoch) -> Result<Self, Self::Error> {
        KeyEpoch::checked(KeyEpoch {
            federation: r.federation,
            epoch: r.epoch,
            previous: r.previous,
            members: r.members,
        })
    }
}

impl Signable for KeyEpoch {
    const CONTEXT: &'static str = KEY_EPOCH_CONTEXT;
}

impl KeyEpoch {
    fn checked(e: KeyEpoch) -> Result<Self, KeyError> {
        if e.epoch == 0 {
            return Err(KeyError::InvalidEpoch("epochs are numbered from 1"));
        }
        if (e.epoch == 1) != e.previous.is_none() {
            return Err(KeyError::InvalidEpoch("exactly epoch 1 has no previous epoch"));
        }
        if e.members.is_empty() {
            return Err(KeyError::InvalidEpoch("no members"));
        }
        if e.members.len() > MAX_MEMBERS {
            return Err(KeyError::InvalidEpoch("too many members"));
        }
        if e.members.windows(2).any(|w| matches!(w, [a, b] if a.org >= b.org)) {
            return Err(KeyError::InvalidEpoch("members not sorted and distinct"));
        }
        if e.members.iter().any(|m| m.ciphertext.len() != WRAPPED_LEN) {
            return Err(KeyError::InvalidEpoch("wrapped key of the wrong length"));
        }
        Ok(e)
    }

    /// The federation.
    pub fn federation(&self) -> FederationId {
        self.federation
    }

    /// The epoch number (from 1).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The digest of the previous epoch (`None` for epoch 1).
    pub fn previous(&self) -> Option<EpochDigest> {
        self.previous
    }

    /// The member organizations, sorted.
    pub fn members(&self) -> impl Iterator<Item = &OrgId> {
        self.members.iter().map(|m| &m.org)
    }

    /// The wrapped copies of the data key, one per member, sorted by organization.
    pub fn wrapped_keys(&self) -> &[WrappedKey] {
        &self.members
    }

    /// Whether `org` is a member of this epoch.
    pub fn has_member(&self, org: &OrgId) -> bool {
        self.member(org).is_some()
    }

    fn member(&self, org: &OrgId) -> Option<&WrappedKey> {
        self.members.binary_search_by(|m| m.org.cmp(org)).ok().and_then(|i| self.members.get(i))
    }

    /// The digest naming this epoch in the next one: SHA-256 over a domain and every field,
    /// each length-prefixed where its length varies.
    pub fn digest(&self) -> EpochDigest {
        let mut h = Sha256::new();
        put_str(&mut h, EPOCH_DIGEST_DOMAIN);
        h.update(self.federation.as_bytes());
        h.update(self.epoch.to_le_bytes());
        match &self.previous {
            None => h.update([0u8]),
            Some(d) => {
                h.update([1u8]);
                h.update(d.0);
            }
        }
        h.update((self.members.len() as u64).to_le_bytes());
        for m in &self.members {
            put_str(&mut h, m.org.as_str());
            h.update(m.recipient.0);
            h.update(m.encapsulated);
            h.update((m.ciphertext.len() as u64).to_le_bytes());
            h.update(&m.ciphertext);
        }
        EpochDigest(h.finalize().into())
    }

    /// Decodes a `Signed<KeyEpoch>` (canonical, at most [`MAX_KEY_EPOCH_LEN`] bytes), verifies
    /// its signature and checks that it was signed for `federation`. Whether its signer may
    /// administer the federation is the caller's to check ([`Signed::signer`]).
    pub fn decode_signed(
        bytes: &[u8],
        federation: &FederationId,
    ) -> Result<Signed<KeyEpoch>, KeyError> {
        let signed: Signed<KeyEpoch> = encoding::decode_with_limit(bytes, MAX_KEY_EPOCH_LEN)?;
        signed.open(federation)?;
        Ok(signed)
    }
}

/// Feeds a length-prefixed string to a hash.
fn put_str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

/// Appends a length-prefixed string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The HPKE `info` of the data key of `epoch` wrapped for `org`.
fn wrap_info(federation: &FederationId, epoch: u64, org: &OrgId) -> Vec<u8> {
    let mut info = Vec::with_capacity(128);
    push_str(&mut info, WRAP_INFO_DOMAIN);
    info.extend_from_slice(federation.as_bytes());
    info.extend_from_slice(&epoch.to_le_bytes());
    push_str(&mut info, org.as_str());
    info
}

/// The associated data of a change set sealed in `epoch` for `branch`.
fn seal_aad(domain: &str, federation: &FederationId, branch: &BranchName, epoch: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(128 + branch.as_str().len());
    push_str(&mut aad, domain);
    aad.extend_from_slice(federation.as_bytes());
    aad.extend_from_slice(&epoch.to_le_bytes());
    push_str(&mut aad, branch.as_str());
    aad
}

// ------------------------------------------------------------------------------------------
// Keyring

/// One epoch's data key, held as a cipher (zeroized when dropped).
#[derive(Clone)]
struct DataKey(XChaCha20Poly1305);

impl DataKey {
    fn new(bytes: &SecretBytes) -> Self {
        Self(XChaCha20Poly1305::new(chacha20poly1305::Key::cast_from_core(&bytes.0)))
    }
}

/// What the keyring knows of one accepted epoch.
#[derive(Clone)]
struct EpochRecord {
    digest: EpochDigest,
    key: Option<DataKey>,
}

/// What [`FederationKeyring::accept`] recorded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Accepted {
    /// This organization is a member of the epoch: its data key is now held, and values are
    /// sealed under it from now on.
    Member {
        /// The epoch.
        epoch: u64,
    },
    /// This organization is not a member of the epoch: the epoch is recorded (so the chain
    /// continues) but no key; opening what is sealed in it fails with
    /// [`KeyError::NoKeyForEpoch`], and sealing fails until a later epoch includes the
    /// organization again.
    NotMember {
        /// The epoch.
        epoch: u64,
    },
}

/// One organization's keys in one federation: its encryption keypair and the data keys of
/// the epochs it was a member of.
///
/// Epochs are accepted in order, from epoch 1 on, each chaining to the previous; an
/// organization that joins later accepts the earlier epochs too (they are public: only
/// wrapped keys) and is recorded as not a member of them.
pub struct FederationKeyring {
    federation: FederationId,
    org: OrgId,
    keypair: OrgEncryptionKeypair,
    epochs: BTreeMap<u64, EpochRecord>,
}

impl fmt::Debug for FederationKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FederationKeyring")
            .field("federation", &self.federation)
            .field("org", &self.org)
            .field("key", &self.keypair.public)
            .field("current_epoch", &self.current_epoch())
            .finish_non_exhaustive()
    }
}

impl FederationKeyring {
    /// A copy (the same keypair and epochs), to change and swap in only once the change is
    /// recorded.
    pub(crate) fn duplicate(&self) -> Self {
        Self {
            federation: self.federation,
            org: self.org.clone(),
            keypair: OrgEncryptionKeypair::from_secret_bytes(self.keypair.seed.0),
            epochs: self.epochs.clone(),
        }
    }

    /// The keyring of `org` in `federation`, with `keypair` as the organization's encryption
    /// key, having accepted no epoch yet.
    pub fn new(federation: FederationId, org: OrgId, keypair: OrgEncryptionKeypair) -> Self {
        Self { federation, org, keypair, epochs: BTreeMap::new() }
    }

    /// The federation.
    pub fn federation(&self) -> FederationId {
        self.federation
    }

    /// The organization.
    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// The organization's public encryption key.
    pub fn public_key(&self) -> OrgEncryptionKey {
        self.keypair.public
    }

    /// The last accepted epoch, if any.
    pub fn current_epoch(&self) -> Option<u64> {
        self.epochs.keys().next_back().copied()
    }

    /// Whether the organization was a member of `epoch` (false for epochs not accepted).
    pub fn is_member(&self, epoch: u64) -> bool {
        self.epochs.get(&epoch).is_some_and(|r| r.key.is_some())
    }

    /// The next epoch number and the digest it must chain to.
    fn next(&self) -> (u64, Option<EpochDigest>) {
        match self.epochs.iter().next_back() {
            None => (1, None),
            Some((n, r)) => (n.saturating_add(1), Some(r.digest)),
        }
    }

    /// Issues the next epoch: a fresh random data key from `rng`, wrapped for each of
    /// `members` (organization and its verified encryption key), signed by `signer`, and
    /// accepted into this keyring. Rotate on every membership change; ship the result to
    /// every node. On error nothing changed.
    pub fn rotate(
        &mut self,
        rng: &mut impl CryptoRng,
        signer: &dyn Signer,
        members: &[(OrgId, OrgEncryptionKey)],
    ) -> Result<Signed<KeyEpoch>, KeyError> {
        if members.is_empty() {
            return Err(KeyError::InvalidEpoch("no members"));
        }
        if members.len() > MAX_MEMBERS {
            return Err(KeyError::InvalidEpoch("too many members"));
        }
        let mut sorted: Vec<&(OrgId, OrgEncryptionKey)> = members.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        if sorted.windows(2).any(|w| matches!(w, [a, b] if a.0 == b.0)) {
            return Err(KeyError::InvalidEpoch("an organization is listed twice"));
        }
        let (epoch, previous) = self.next();
        let mut data_key = SecretBytes([0; 32]);
        rng.fill_bytes(&mut data_key.0);
        let mut wrapped = Vec::with_capacity(sorted.len());
        for (org, key) in sorted {
            let info = wrap_info(&self.federation, epoch, org);
            let (encapsulated, ciphertext) =
                hpke::single_shot_seal_with_rng::<HpkeChaCha20Poly1305, HkdfSha256, Suite>(
                    &OpModeS::Base,
                    &key.to_hpke()?,
                    &info,
                    &data_key.0,
                    &[],
                    rng,
                )
                .map_err(|_| KeyError::WrapFailed { org: org.clone() })?;
            let mut enc = [0u8; 32];
            enc.copy_from_slice(&encapsulated.to_bytes());
            wrapped.push(WrappedKey {
                org: org.clone(),
                recipient: *key,
                encapsulated: enc,
                ciphertext,
            });
        }
        let value = KeyEpoch::checked(KeyEpoch {
            federation: self.federation,
            epoch,
            previous,
            members: wrapped,
        })?;
        let signed = Signed::sign(signer, &self.federation, value)?;
        self.accept(&signed)?;
        Ok(signed)
    }

    /// Accepts the next epoch: signed for this federation, numbered one past the last accepted
    /// epoch (1 for the first), chaining to it by digest. If the organization is a member, its
    /// copy of the data key is unwrapped and kept; otherwise the epoch is recorded as one it
    /// has no key for. On error nothing changed.
    ///
    /// The envelope's signature was checked when it was made or decoded; whether its signer
    /// may administer the federation is the caller's to check ([`Signed::signer`]).
    pub fn accept(&mut self, signed: &Signed<KeyEpoch>) -> Result<Accepted, KeyError> {
        let e = signed.open(&self.federation)?;
        if e.federation != self.federation {
            return Err(KeyError::WrongFederation {
                expected: self.federation,
                actual: e.federation,
            });
        }
        let (expected, previous) = self.next();
        if e.epoch != expected {
            return Err(KeyError::UnexpectedEpoch { expected, got: e.epoch });
        }
        if e.previous != previous {
            return Err(KeyError::BrokenChain { epoch: e.epoch });
        }
        let key = match e.member(&self.org) {
            None => None,
            Some(m) => Some(self.unwrap(e.epoch, m)?),
        };
        let accepted = match key {
            Some(_) => Accepted::Member { epoch: e.epoch },
            None => Accepted::NotMember { epoch: e.epoch },
        };
        self.epochs.insert(e.epoch, EpochRecord { digest: e.digest(), key });
        Ok(accepted)
    }

    /// Accepts `epochs` in order, all or nothing (a joining organization catching up on the
    /// chain, say). Returns what each recorded; on error nothing changed.
    pub fn accept_all(&mut self, epochs: &[Signed<KeyEpoch>]) -> Result<Vec<Accepted>, KeyError> {
        let before = self.current_epoch();
        let mut out = Vec::with_capacity(epochs.len());
        for e in epochs {
            match self.accept(e) {
                Ok(a) => out.push(a),
                Err(err) => {
                    // Roll back what this call accepted.
                    self.epochs.retain(|n, _| before.is_some_and(|b| *n <= b));
                    return Err(err);
                }
            }
        }
        Ok(out)
    }

    fn unwrap(&self, epoch: u64, m: &WrappedKey) -> Result<DataKey, KeyError> {
        if m.recipient != self.keypair.public {
            return Err(KeyError::WrappedForOtherKey { epoch });
        }
        let encapsulated = HpkeEncappedKey::from_bytes(&m.encapsulated)
            .map_err(|_| KeyError::UnwrapFailed { epoch })?;
        let info = wrap_info(&self.federation, epoch, &self.org);
        let mut plain = hpke::single_shot_open::<HpkeChaCha20Poly1305, HkdfSha256, Suite>(
            &OpModeR::Base,
            &self.keypair.secret,
            &encapsulated,
            &info,
            &m.ciphertext,
            &[],
        )
        .map_err(|_| KeyError::UnwrapFailed { epoch })?;
        let mut bytes = SecretBytes([0; 32]);
        let ok = plain.len() == DATA_KEY_LEN;
        if ok {
            bytes.0.copy_from_slice(&plain);
        }
        wipe(&mut plain);
        if ok { Ok(DataKey::new(&bytes)) } else { Err(KeyError::UnwrapFailed { epoch }) }
    }

    /// Seals `changes` for `branch` under the current epoch's data key (XChaCha20-Poly1305
    /// with a random 24-byte nonce from `rng`; the associated data binds the federation, the
    /// branch and the epoch). Fails with [`KeyError::NoCurrentEpoch`] before the first epoch,
    /// [`KeyError::NoKeyForEpoch`] if the organization is not a member of the current epoch,
    /// and [`KeyError::TooLarge`] beyond [`MAX_PLAINTEXT_LEN`].
    pub fn seal(
        &self,
        rng: &mut impl CryptoRng,
        branch: &BranchName,
        changes: &ChangeSet,
    ) -> Result<SealedChangeSet, KeyError> {
        let mut buffer = Vec::new();
        encoding::encode_into(changes, &mut buffer);
        self.seal_in_place(rng, (SEAL_AAD_DOMAIN, "change set"), branch, buffer)
    }

    /// Opens a change set sealed for `branch` in this federation. Fails with
    /// [`KeyError::UnknownEpoch`] for an epoch not accepted, [`KeyError::NoKeyForEpoch`] for
    /// an epoch the organization was not a member of, [`KeyError::Tampered`] if it does not
    /// authenticate (another branch, a flipped byte) and [`KeyError::Malformed`] if the
    /// plaintext is not a canonical change set.
    pub fn open(
        &self,
        branch: &BranchName,
        sealed: &SealedChangeSet,
    ) -> Result<ChangeSet, KeyError> {
        let mut buffer = self.open_to_vec(SEAL_AAD_DOMAIN, branch, sealed)?;
        let changes = encoding::decode_with_limit(&buffer, MAX_PLAINTEXT_LEN);
        wipe(&mut buffer);
        Ok(changes?)
    }

    /// Seals a commit envelope of `branch` (the bytes a replica ships to the branch's other
    /// replicas) like [`seal`](Self::seal) seals a change set, under associated data of its
    /// own domain, so neither can be opened as the other.
    pub fn seal_envelope(
        &self,
        rng: &mut impl CryptoRng,
        branch: &BranchName,
        envelope: &[u8],
    ) -> Result<SealedChangeSet, KeyError> {
        let mut buffer = Vec::with_capacity(envelope.len() + TAG_LEN);
        buffer.extend_from_slice(envelope);
        self.seal_in_place(rng, (ENVELOPE_AAD_DOMAIN, "commit envelope"), branch, buffer)
    }

    /// Opens a commit envelope sealed by [`seal_envelope`](Self::seal_envelope); fails as
    /// [`open`](Self::open) does (the envelope itself is the caller's to check).
    pub fn open_envelope(
        &self,
        branch: &BranchName,
        sealed: &SealedChangeSet,
    ) -> Result<Vec<u8>, KeyError> {
        self.open_to_vec(ENVELOPE_AAD_DOMAIN, branch, sealed)
    }

    fn seal_in_place(
        &self,
        rng: &mut impl CryptoRng,
        (domain, what): (&str, &'static str),
        branch: &BranchName,
        mut buffer: Vec<u8>,
    ) -> Result<SealedChangeSet, KeyError> {
        let Some((&epoch, record)) = self.epochs.iter().next_back() else {
            return Err(KeyError::NoCurrentEpoch);
        };
        let Some(key) = &record.key else {
            return Err(KeyError::NoKeyForEpoch { epoch });
        };
        if buffer.len() > MAX_PLAINTEXT_LEN {
            let len = buffer.len();
            wipe(&mut buffer);
            return Err(KeyError::TooLarge { what, len, limit: MAX_PLAINTEXT_LEN });
        }
        buffer.reserve_exact(TAG_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let aad = seal_aad(domain, &self.federation, branch, epoch);
        key.0.encrypt_in_place(XNonce::cast_from_core(&nonce), &aad, &mut buffer).map_err(
            |_| KeyError::TooLarge { what, len: buffer.len(), limit: MAX_PLAINTEXT_LEN },
        )?;
        Ok(SealedChangeSet { epoch, nonce, ciphertext: buffer })
    }

    fn open_to_vec(
        &self,
        domain: &str,
        branch: &BranchName,
        sealed: &SealedChangeSet,
    ) -> Result<Vec<u8>, KeyError> {
        let epoch = sealed.epoch;
        let Some(record) = self.epochs.get(&epoch) else {
            return Err(KeyError::UnknownEpoch { epoch });
        };
        let Some(key) = &record.key else {
            return Err(KeyError::NoKeyForEpoch { epoch });
        };
        let aad = seal_aad(domain, &self.federation, branch, epoch);
        let mut buffer = sealed.ciphertext.clone();
        key.0
            .decrypt_in_place(XNonce::cast_from_core(&sealed.nonce), &aad, &mut buffer)
            .map_err(|_| KeyError::Tampered)?;
        Ok(buffer)
    }
}

// ------------------------------------------------------------------------------------------
// Sealed values

/// A change set sealed under one epoch's data key: the epoch, the nonce and the
/// XChaCha20-Poly1305 ciphertext (with its tag). Canonical: [`decode`](Self::decode) accepts
/// exactly the encodings [`encode`](Self::encode) produces. Carried inside an author-signed
/// envelope ([`SealedCommit`]), so relays verify it without being able to read it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSealedChangeSet")]
pub struct SealedChangeSet {
    epoch: u64,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

#[derive(Deserialize)]
struct RawSealedChangeSet {
    epoch: u64,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl TryFrom<RawSealedChangeSet> for SealedChangeSet {
    type Error = KeyError;
    fn try_from(r: RawSealedChangeSet) -> Result<Self, Self::Error> {
        if r.ciphertext.len() < TAG_LEN {
            return Err(KeyError::Tampered);
        }
        if r.ciphertext.len() > MAX_SEALED_LEN {
            return Err(KeyError::TooLarge {
                what: "sealed change set",
                len: r.ciphertext.len(),
                limit: MAX_SEALED_LEN,
            });
        }
        Ok(Self { epoch: r.epoch, nonce: r.nonce, ciphertext: r.ciphertext })
    }
}

impl SealedChangeSet {
    /// The epoch whose data key sealed it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The nonce.
    pub fn nonce(&self) -> &[u8; 24] {
        &self.nonce
    }

    /// The ciphertext, tag included.
    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }

    /// Decodes a sealed change set (canonical, at most [`MAX_SEALED_ENCODED_LEN`] bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self, KeyError> {
        Ok(encoding::decode_with_limit(bytes, MAX_SEALED_ENCODED_LEN)?)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Result<Vec<u8>, KeyError> {
        Ok(encoding::try_encode(self)?)
    }
}

impl fmt::Debug for SealedChangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedChangeSet")
            .field("epoch", &self.epoch)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// A sealed change set with the metadata a relay needs, signed by its author (a
/// `Signed<SealedCommit>`, context [`SEALED_COMMIT_CONTEXT`]): the branch, the authoring
/// organization and the author's timestamp travel in the clear; the changes do not.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SealedCommit {
    branch: BranchName,
    org: OrgId,
    timestamp: Timestamp,
    sealed: SealedChangeSet,
}

impl Signable for SealedCommit {
    const CONTEXT: &'static str = SEALED_COMMIT_CONTEXT;
}

impl SealedCommit {
    /// Seals `changes` for `branch` with `keyring` and has `author` sign the result for the
    /// keyring's federation.
    pub fn seal(
        keyring: &FederationKeyring,
        rng: &mut impl CryptoRng,
        author: &dyn Signer,
        branch: BranchName,
        timestamp: Timestamp,
        changes: &ChangeSet,
    ) -> Result<Signed<SealedCommit>, KeyError> {
        let sealed = keyring.seal(rng, &branch, changes)?;
        let value = SealedCommit { branch, org: keyring.org.clone(), timestamp, sealed };
        Ok(Signed::sign(author, &keyring.federation, value)?)
    }

    /// Decodes a `Signed<SealedCommit>` (canonical, at most [`MAX_SEALED_COMMIT_LEN`] bytes),
    /// verifies the author's signature and checks it was signed for `federation`. Needs no
    /// key: relays call this.
    pub fn decode_signed(
        bytes: &[u8],
        federation: &FederationId,
    ) -> Result<Signed<SealedCommit>, KeyError> {
        let signed: Signed<SealedCommit> =
            encoding::decode_with_limit(bytes, MAX_SEALED_COMMIT_LEN)?;
        signed.open(federation)?;
        Ok(signed)
    }

    /// Opens the change set with `keyring` (see [`FederationKeyring::open`]).
    pub fn open(&self, keyring: &FederationKeyring) -> Result<ChangeSet, KeyError> {
        keyring.open(&self.branch, &self.sealed)
    }

    /// The branch.
    pub fn branch(&self) -> &BranchName {
        &self.branch
    }

    /// The authoring organization, as the author claims it (check it against the signer's
    /// certificate).
    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// The author's timestamp.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The sealed change set.
    pub fn sealed(&self) -> &SealedChangeSet {
        &self.sealed
    }
}
