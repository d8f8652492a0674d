//! Organizations, node certificates, revocations and the commit admission policy.
//!
//! An organization *is* its root key ([`OrgRootKey`], held as an [`OrgKeypair`], distinct from
//! node keys). The root certifies node keys ([`NodeCertificate`]: organization, roles,
//! validity window, serial) and revokes them by serial ([`Revocation`]). Other organizations
//! pin the roots they trust ([`TrustAnchors`]) and verify certificates against those pins at
//! a given time.
//!
//! ```text
//!   OrgKeypair ──certify──► NodeCertificate { org, root, node, roles, not_before, not_after, serial }
//!        └─────revoke─────► Revocation { org, root, serials, issued_at }
//!   TrustAnchors { org → pinned root, revoked serials }  ──verify(cert, now)──► Ok / CertificateError
//! ```
//!
//! Certificates and revocations are signed under reserved contexts (`llmkg/node-certificate/v1`,
//! `llmkg/revocation/v1`) and are not bound to a federation: an organization's membership is
//! the same in every federation it joins. Decoding one verifies its signature against the root
//! it names, so a value of these types is always genuinely signed by that key; whether that
//! key is the organization's pinned root is what [`NodeCertificate::verify`] checks.
//!
//! [`CommitPolicy`] decides whether a verified commit is admissible; [`CertificatePolicy`]
//! admits a commit only if its author holds a valid certificate of the commit's organization.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::commit::SignedCommit;
use crate::encoding::{self, DecodeError};
use crate::identity::{
    NodeId, OrgId, SignError, SigningInput, sig_bytes, signing_input, verify_strict,
};
use crate::time::Timestamp;

/// Most roles a certificate may grant.
pub const MAX_ROLES: usize = 8;
/// Most serials one [`Revocation`] may list.
pub const MAX_REVOKED_SERIALS: usize = 65_536;
/// Longest encoded [`NodeCertificate`] accepted by [`NodeCertificate::decode`].
pub const MAX_CERTIFICATE_LEN: usize = 1024;
/// Most certificates a [`CertificatePolicy`] keeps per node (the newest serials win).
const MAX_CERTIFICATES_PER_NODE: usize = 8;

const CERTIFICATE_CONTEXT: &str = "llmkg/node-certificate/v1";
const REVOCATION_CONTEXT: &str = "llmkg/revocation/v1";

/// A certificate, a revocation or a pin did not check out. Nothing was accepted or changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The organization has no pinned root.
    #[error("organization {0} is not pinned")]
    UnknownOrg(OrgId),
    /// The certificate or revocation names another root key than the one pinned for its
    /// organization (signed by a root this node does not trust for it).
    #[error("organization {org} is pinned to another root key than {claimed}")]
    WrongRoot {
        /// The organization.
        org: OrgId,
        /// The root the certificate names (and is signed by).
        claimed: OrgRootKey,
    },
    /// The signature does not verify under the root key the value names: forged or damaged.
    #[error("bad signature on a certificate or revocation of {org}")]
    BadSignature {
        /// The organization the value claims.
        org: OrgId,
    },
    /// `now` is after the certificate's `not_after`.
    #[error("certificate {serial} of {org} expired at {not_after}")]
    Expired {
        /// The organization.
        org: OrgId,
        /// The serial.
        serial: u64,
        /// End of validity.
        not_after: Timestamp,
    },
    /// `now` is before the certificate's `not_before`.
    #[error("certificate {serial} of {org} is not valid before {not_before}")]
    NotYetValid {
        /// The organization.
        org: OrgId,
        /// The serial.
        serial: u64,
        /// Start of validity.
        not_before: Timestamp,
    },
    /// The root revoked the certificate's serial.
    #[error("certificate {serial} of {org} is revoked")]
    Revoked {
        /// The organization.
        org: OrgId,
        /// The revoked serial.
        serial: u64,
    },
    /// The certificate is for another node.
    #[error("certificate names node {certified}, not {expected}")]
    NodeMismatch {
        /// The node the caller expected (for example, the peer authenticated by the
        /// transport, or a commit's author).
        expected: NodeId,
        /// The node the certificate certifies.
        certified: NodeId,
    },
    /// Fields out of bounds: too many roles, roles unsorted or repeated, too many revoked
    /// serials, `not_before` after `not_after`.
    #[error("invalid certificate or revocation: {0}")]
    Invalid(&'static str),
    /// The bytes do not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// An organization's root public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "[u8; 32]", into = "[u8; 32]")]
pub struct OrgRootKey([u8; 32]);

/// The bytes were not a valid ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("not a valid ed25519 public key")]
pub struct InvalidRootKey;

impl OrgRootKey {
    /// Validates `bytes` as an ed25519 public key.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, InvalidRootKey> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| InvalidRootKey)?;
        Ok(Self(bytes))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `signature` is this root's signature of `message` under `context` (made by
    /// [`OrgKeypair::sign_statement`]; strict ed25519 verification).
    pub fn verify_statement(&self, context: &str, message: &[u8], signature: &[u8; 64]) -> bool {
        verify_strict(&self.0, &signing_input(context, message), signature).is_ok()
    }
}

impl TryFrom<[u8; 32]> for OrgRootKey {
    type Error = InvalidRootKey;
    fn try_from(value: [u8; 32]) -> Result<Self, Self::Error> {
        Self::from_bytes(value)
    }
}

impl From<OrgRootKey> for [u8; 32] {
    fn from(value: OrgRootKey) -> Self {
        value.0
    }
}

impl fmt::Display for OrgRootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        encoding::fmt_hex(&self.0, f)
    }
}

impl fmt::Debug for OrgRootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_string();
        write!(f, "OrgRootKey({})", hex.get(..8).unwrap_or(&hex))
    }
}

/// An organization's root signing key. Deliberately neither `Clone` nor `Debug`-printable.
pub struct OrgKeypair {
    key: SigningKey,
}

impl OrgKeypair {
    /// The root keypair whose secret is `secret` (32 bytes of high-entropy randomness).
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(&secret) }
    }

    /// The secret bytes, to persist the root.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public root key, which other organizations pin.
    pub fn root_key(&self) -> OrgRootKey {
        OrgRootKey(self.key.verifying_key().to_bytes())
    }

    fn sign(&self, context: &'static str, message: &[u8]) -> [u8; 64] {
        self.key.sign(&signing_input(context, message)).to_bytes()
    }

    /// Signs `message` under a host- or sibling-crate-chosen `context`: the organization's
    /// statements other than certificates and revocations (an endorsement of another
    /// organization's new root, an encryption key, a policy). Refuses contexts in the reserved
    /// namespace ([`RESERVED_CONTEXT_PREFIX`](crate::RESERVED_CONTEXT_PREFIX)), so such a
    /// signature can never pass for a certificate or a revocation. Checked with
    /// [`OrgRootKey::verify_statement`].
    pub fn sign_statement(&self, context: &str, message: &[u8]) -> Result<[u8; 64], SignError> {
        let input = SigningInput::raw(context, message)?;
        Ok(self.key.sign(input.as_bytes()).to_bytes())
    }

    /// Certifies `node` as a member of `org` with `roles` (sorted and deduplicated here, at
    /// most [`MAX_ROLES`]), valid from `not_before` to `not_after` inclusive.
    pub fn certify(
        &self,
        org: OrgId,
        node: NodeId,
        roles: impl IntoIterator<Item = Role>,
        not_before: Timestamp,
        not_after: Timestamp,
        serial: u64,
    ) -> Result<NodeCertificate, CertificateError> {
        let roles: BTreeSet<Role> = roles.into_iter().collect();
        let body = CertificateBody::new(CertificateBody {
            org,
            root: self.root_key(),
            node,
            roles: roles.into_iter().collect(),
            not_before,
            not_after,
            serial,
        })?;
        let signature = self.sign(CERTIFICATE_CONTEXT, &encoding::encode(&body));
        Ok(NodeCertificate { body, signature })
    }

    /// Revokes the certificates of `org` with these serials.
    pub fn revoke(
        &self,
        org: OrgId,
        serials: impl IntoIterator<Item = u64>,
        issued_at: Timestamp,
    ) -> Result<Revocation, CertificateError> {
        let serials: BTreeSet<u64> = serials.into_iter().collect();
        let body = RevocationBody::new(RevocationBody {
            org,
            root: self.root_key(),
            serials: serials.into_iter().collect(),
            issued_at,
        })?;
        let signature = self.sign(REVOCATION_CONTEXT, &encoding::encode(&body));
        Ok(Revocation { body, signature })
    }
}

impl fmt::Debug for OrgKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrgKeypair({:?})", self.root_key())
    }
}

/// What a certified node may do.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Role {
    /// May read and replicate the organization's data.
    Reader,
    /// May author commits for the organization.
    Writer,
    /// May administer the organization's membership in a federation.
    Admin,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "RawCertificateBody")]
struct CertificateBody {
    org: OrgId,
    root: OrgRootKey,
    node: NodeId,
    roles: Vec<Role>,
    not_before: Timestamp,
    not_after: Timestamp,
    serial: u64,
}

#[derive(Deserialize)]
struct RawCertificateBody {
    org: OrgId,
    root: OrgRootKey,
    node: NodeId,
    roles: Vec<Role>,
    not_before: Timestamp,
    not_after: Timestamp,
    serial: u64,
}

impl CertificateBody {
    fn new(b: CertificateBody) -> Result<Self, CertificateError> {
        if b.roles.len() > MAX_ROLES {
            return Err(CertificateError::Invalid("too many roles"));
        }
        if b.roles.windows(2).any(|w| matches!(w, [a, c] if a >= c)) {
            return Err(CertificateError::Invalid("roles not sorted and distinct"));
        }
        if b.not_before > b.not_after {
            return Err(CertificateError::Invalid("not_before is after not_after"));
        }
        Ok(b)
    }
}

impl TryFrom<RawCertificateBody> for CertificateBody {
    type Error = CertificateError;
    fn try_from(r: RawCertificateBody) -> Result<Self, Self::Error> {
        Self::new(CertificateBody {
            org: r.org,
            root: r.root,
            node: r.node,
            roles: r.roles,
            not_before: r.not_before,
            not_after: r.not_after,
            serial: r.serial,
        })
    }
}

/// An organization root's statement that a node key belongs to the organization, with roles,
/// a validity window and a serial. Always carries a valid signature by the root it names
/// ([`root`](Self::root)); [`verify`](Self::verify) checks that root against the pins.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NodeCertificate {
    body: CertificateBody,
    signature: [u8; 64],
}

/// A body an organization root signs, under its own context.
trait RootSigned: encoding::Canonical {
    /// The signing context of this kind of body.
    const CONTEXT: &'static str;
    /// The root that signs it.
    fn signing_root(&self) -> &OrgRootKey;
    /// The organization it speaks for.
    fn signing_org(&self) -> &OrgId;
}

impl RootSigned for CertificateBody {
    const CONTEXT: &'static str = CERTIFICATE_CONTEXT;
    fn signing_root(&self) -> &OrgRootKey {
        &self.root
    }
    fn signing_org(&self) -> &OrgId {
        &self.org
    }
}

impl RootSigned for RevocationBody {
    const CONTEXT: &'static str = REVOCATION_CONTEXT;
    fn signing_root(&self) -> &OrgRootKey {
        &self.root
    }
    fn signing_org(&self) -> &OrgId {
        &self.org
    }
}

/// Checks `signature` over `body` by the root the body names.
fn check_root_signature<B: RootSigned>(
    body: &B,
    signature: &[u8; 64],
) -> Result<(), CertificateError> {
    verify_strict(
        body.signing_root().as_bytes(),
        &signing_input(B::CONTEXT, &encoding::encode(body)),
        signature,
    )
    .map_err(|()| CertificateError::BadSignature { org: body.signing_org().clone() })
}

#[derive(Serialize, Deserialize)]
struct SignedBody<B> {
    body: B,
    #[serde(with = "sig_bytes")]
    signature: [u8; 64],
}

impl NodeCertificate {
    /// Decodes a certificate (at most [`MAX_CERTIFICATE_LEN`] bytes, canonical) and verifies
    /// its signature under the root it names.
    pub fn decode(bytes: &[u8]) -> Result<Self, CertificateError> {
        let raw: SignedBody<CertificateBody> =
            encoding::decode_with_limit(bytes, MAX_CERTIFICATE_LEN)?;
        check_root_signature(&raw.body, &raw.signature)?;
        Ok(Self { body: raw.body, signature: raw.signature })
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// The organization.
    pub fn org(&self) -> &OrgId {
        &self.body.org
    }

    /// The root key that signed the certificate.
    pub fn root(&self) -> OrgRootKey {
        self.body.root
    }

    /// The certified node.
    pub fn node(&self) -> NodeId {
        self.body.node
    }

    /// The roles, sorted.
    pub fn roles(&self) -> &[Role] {
        &self.body.roles
    }

    /// Whether the certificate grants `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.body.roles.contains(&role)
    }

    /// Start of validity (inclusive).
    pub fn not_before(&self) -> Timestamp {
        self.body.not_before
    }

    /// End of validity (inclusive).
    pub fn not_after(&self) -> Timestamp {
        self.body.not_after
    }

    /// The serial, unique per organization; revocations name it.
    pub fn serial(&self) -> u64 {
        self.body.serial
    }

    /// The signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// Checks the certificate against `anchors` at time `now`: its organization is pinned, to
    /// the root that signed it, `now` is within the validity window, and the serial is not
    /// revoked.
    pub fn verify(&self, anchors: &TrustAnchors, now: Timestamp) -> Result<(), CertificateError> {
        let b = &self.body;
        anchors.check_root(&b.org, &b.root)?;
        if now < b.not_before {
            return Err(CertificateError::NotYetValid {
                org: b.org.clone(),
                serial: b.serial,
                not_before: b.not_before,
            });
        }
        if now > b.not_after {
            return Err(CertificateError::Expired {
                org: b.org.clone(),
                serial: b.serial,
                not_after: b.not_after,
            });
        }
        if anchors.is_revoked(&b.org, b.serial) {
            return Err(CertificateError::Revoked { org: b.org.clone(), serial: b.serial });
        }
        Ok(())
    }

    /// [`verify`](Self::verify), and that the certificate is for `node`.
    pub fn verify_for(
        &self,
        anchors: &TrustAnchors,
        now: Timestamp,
        node: &NodeId,
    ) -> Result<(), CertificateError> {
        if self.body.node != *node {
            return Err(CertificateError::NodeMismatch {
                expected: *node,
                certified: self.body.node,
            });
        }
        self.verify(anchors, now)
    }
}

impl Serialize for NodeCertificate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SignedBody { body: &self.body, signature: self.signature }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for NodeCertificate {
    /// Decodes and verifies the signature under the root the certificate names.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = SignedBody::<CertificateBody>::deserialize(d)?;
        check_root_signature(&raw.body, &raw.signature).map_err(serde::de::Error::custom)?;
        Ok(Self { body: raw.body, signature: raw.signature })
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "RawRevocationBody")]
struct RevocationBody {
    org: OrgId,
    root: OrgRootKey,
    serials: Vec<u64>,
    issued_at: Timestamp,
}

#[derive(Deserialize)]
struct RawRevocationBody {
    org: OrgId,
    root: OrgRootKey,
    serials: Vec<u64>,
    issued_at: Timestamp,
}

impl RevocationBody {
    fn new(b: RevocationBody) -> Result<Self, CertificateError> {
        if b.serials.len() > MAX_REVOKED_SERIALS {
            return Err(CertificateError::Invalid("too many revoked serials"));
        }
        if b.serials.windows(2).any(|w| matches!(w, [a, c] if a >= c)) {
            return Err(CertificateError::Invalid("serials not sorted and distinct"));
        }
        Ok(b)
    }
}

impl TryFrom<RawRevocationBody> for RevocationBody {
    type Error = CertificateError;
    fn try_from(r: RawRevocationBody) -> Result<Self, Self::Error> {
        Self::new(RevocationBody {
            org: r.org,
            root: r.root,
            serials: r.serials,
            issued_at: r.issued_at,
        })
    }
}

/// A root's signed list of revoked certificate serials. Always carries a valid signature by
/// the root it names; [`TrustAnchors::add_revocation`] checks that root against the pin.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Revocation {
    body: RevocationBody,
    signature: [u8; 64],
}

impl Revocation {
    /// Decodes a revocation (canonical) and verifies its signature under the root it names.
    pub fn decode(bytes: &[u8]) -> Result<Self, CertificateError> {
        let limit = 256 + 10 * MAX_REVOKED_SERIALS;
        let raw: SignedBody<RevocationBody> = encoding::decode_with_limit(bytes, limit)?;
        check_root_signature(&raw.body, &raw.signature)?;
        Ok(Self { body: raw.body, signature: raw.signature })
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// The organization.
    pub fn org(&self) -> &OrgId {
        &self.body.org
    }

    /// The root key that signed it.
    pub fn root(&self) -> OrgRootKey {
        self.body.root
    }

    /// The revoked serials, sorted.
    pub fn serials(&self) -> &[u64] {
        &self.body.serials
    }

    /// When the root issued it.
    pub fn issued_at(&self) -> Timestamp {
        self.body.issued_at
    }
}

impl Serialize for Revocation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SignedBody { body: &self.body, signature: self.signature }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Revocation {
    /// Decodes and verifies the signature under the root the revocation names.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = SignedBody::<RevocationBody>::deserialize(d)?;
        check_root_signature(&raw.body, &raw.signature).map_err(serde::de::Error::custom)?;
        Ok(Self { body: raw.body, signature: raw.signature })
    }
}

encoding::canonical!(
    OrgRootKey,
    Role,
    CertificateBody,
    RevocationBody,
    NodeCertificate,
    Revocation
);

/// The organization roots this node trusts (pinned out of band), and the revocations they
/// issued.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustAnchors {
    roots: BTreeMap<OrgId, OrgRootKey>,
    revoked: BTreeMap<OrgId, BTreeSet<u64>>,
}

impl TrustAnchors {
    /// No organization trusted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pins `root` as `org`'s root key, returning the previously pinned one. Revocations
    /// already accepted for `org` stay in force.
    pub fn pin(&mut self, org: OrgId, root: OrgRootKey) -> Option<OrgRootKey> {
        self.roots.insert(org, root)
    }

    /// The root pinned for `org`.
    pub fn root(&self, org: &OrgId) -> Option<OrgRootKey> {
        self.roots.get(org).copied()
    }

    fn check_root(&self, org: &OrgId, claimed: &OrgRootKey) -> Result<(), CertificateError> {
        match self.roots.get(org) {
            None => Err(CertificateError::UnknownOrg(org.clone())),
            Some(pinned) if pinned != claimed => {
                Err(CertificateError::WrongRoot { org: org.clone(), claimed: *claimed })
            }
            Some(_) => Ok(()),
        }
    }

    /// Accepts a revocation signed by `org`'s pinned root; its serials are revoked from now on
    /// (a revoked certificate no longer verifies at any time). On error nothing changed.
    pub fn add_revocation(&mut self, revocation: &Revocation) -> Result<(), CertificateError> {
        self.check_root(revocation.org(), &revocation.root())?;
        let set = self.revoked.entry(revocation.org().clone()).or_default();
        set.extend(revocation.serials().iter().copied());
        Ok(())
    }

    /// Whether `org` revoked `serial`.
    pub fn is_revoked(&self, org: &OrgId, serial: u64) -> bool {
        self.revoked.get(org).is_some_and(|s| s.contains(&serial))
    }
}

/// Why a [`CommitPolicy`] refused a commit. The commit was not admitted; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommitRefusal {
    /// The author has no known certificate.
    #[error("author {author} has no certificate")]
    NoCertificate {
        /// The commit's author.
        author: NodeId,
    },
    /// None of the author's certificates is valid at the commit's timestamp (the error of the
    /// first one tried: expired, not yet valid, revoked, unknown org, wrong root, ...).
    #[error("author {author} has no valid certificate: {error}")]
    InvalidCertificate {
        /// The commit's author.
        author: NodeId,
        /// Why its certificate was refused.
        error: CertificateError,
    },
    /// The author is certified, but by another organization than the commit's `org`.
    #[error("commit claims organization {commit_org}, author is certified by {certified_org}")]
    OrgMismatch {
        /// The commit's author.
        author: NodeId,
        /// The organization named in the commit.
        commit_org: OrgId,
        /// The organization of the author's valid certificate.
        certified_org: OrgId,
    },
    /// The author's valid certificate lacks the role the policy requires.
    #[error("author {author} lacks role {role:?}")]
    MissingRole {
        /// The commit's author.
        author: NodeId,
        /// The required role.
        role: Role,
    },
    /// The access policy of an organization whose data the commit touches does not permit
    /// its author to commit it (default deny, or a forbid).
    #[error("author {author} may not commit this: {reason}")]
    AccessDenied {
        /// The commit's author.
        author: NodeId,
        /// Which organizations refused, and by which rule.
        reason: String,
    },
    /// A host policy's own reason.
    #[error("refused: {0}")]
    Other(String),
}

/// Decides whether a commit (already verified: id, signature, authorship) is admissible.
///
/// Called by the repository when receiving or materializing commits from others. Must be
/// deterministic for a given commit and policy state, and fast: it runs once per commit.
pub trait CommitPolicy: Send + Sync {
    /// `Ok` to admit `commit`, or why not.
    fn check(&self, commit: &SignedCommit) -> Result<(), CommitRefusal>;
}

impl<P: CommitPolicy + ?Sized> CommitPolicy for std::sync::Arc<P> {
    fn check(&self, commit: &SignedCommit) -> Result<(), CommitRefusal> {
        (**self).check(commit)
    }
}

/// Admits every verified commit (the behavior without a policy).
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptAll;

impl CommitPolicy for AcceptAll {
    fn check(&self, _commit: &SignedCommit) -> Result<(), CommitRefusal> {
        Ok(())
    }
}

/// Admits a commit iff its author holds a certificate that verifies against the anchors at
/// the commit's timestamp, names the commit's `org`, and (if required) grants a role.
///
/// The timestamp is the author's claim, so a certificate counts at the time the author says
/// it committed; revocation, though, is timeless here: once a serial is revoked, commits made
/// under it are refused whatever their timestamp (a stolen key can backdate).
#[derive(Clone, Debug, Default)]
pub struct CertificatePolicy {
    anchors: TrustAnchors,
    certificates: BTreeMap<NodeId, Vec<NodeCertificate>>,
    required_role: Option<Role>,
}

impl CertificatePolicy {
    /// A policy over `anchors`, knowing no certificate yet, requiring no role.
    pub fn new(anchors: TrustAnchors) -> Self {
        Self { anchors, certificates: BTreeMap::new(), required_role: None }
    }

    /// Also require `role` (typically [`Role::Writer`]).
    pub fn require_role(mut self, role: Role) -> Self {
        self.required_role = Some(role);
        self
    }

    /// The anchors, to pin roots or add revocations.
    pub fn anchors_mut(&mut self) -> &mut TrustAnchors {
        &mut self.anchors
    }

    /// Remembers a certificate for its node. Its validity is checked per commit, not here.
    /// At most 8 are kept per node: the ones with the highest serials.
    pub fn add_certificate(&mut self, certificate: NodeCertificate) {
        let list = self.certificates.entry(certificate.node()).or_default();
        if list.contains(&certificate) {
            return;
        }
        list.push(certificate);
        list.sort_by_key(|c| std::cmp::Reverse(c.serial()));
        list.truncate(MAX_CERTIFICATES_PER_NODE);
    }
}

impl CommitPolicy for CertificatePolicy {
    fn check(&self, commit: &SignedCommit) -> Result<(), CommitRefusal> {
        let c = commit.commit();
        let author = c.author();
        let Some(certs) = self.certificates.get(&author) else {
            return Err(CommitRefusal::NoCertificate { author });
        };
        let mut refusal = None;
        for cert in certs {
            let r = match cert.verify_for(&self.anchors, c.timestamp(), &author) {
                Err(error) => CommitRefusal::InvalidCertificate { author, error },
                Ok(()) if cert.org() != c.org() => CommitRefusal::OrgMismatch {
                    author,
                    commit_org: c.org().clone(),
                    certified_org: cert.org().clone(),
                },
                Ok(()) => match self.required_role {
                    Some(role) if !cert.has_role(role) => {
                        CommitRefusal::MissingRole { author, role }
                    }
                    _ => return Ok(()),
                },
            };
            refusal.get_or_insert(r);
        }
        Err(refusal.unwrap_or(CommitRefusal::NoCertificate { author }))
    }
}

#[cfg(test)]
mod statement_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn statements_verify_only_under_their_context_and_key() {
        let root = OrgKeypair::from_secret_bytes([3; 32]);
        let other = OrgKeypair::from_secret_bytes([4; 32]);
        let sig = root.sign_statement("acme/endorse/v1", b"hello").unwrap();
        assert!(root.root_key().verify_statement("acme/endorse/v1", b"hello", &sig));
        assert!(!root.root_key().verify_statement("acme/endorse/v2", b"hello", &sig));
        assert!(!root.root_key().verify_statement("acme/endorse/v1", b"hellp", &sig));
        assert!(!other.root_key().verify_statement("acme/endorse/v1", b"hello", &sig));
        assert!(root.sign_statement("llmkg/node-certificate/v1", b"x").is_err());
    }
}
