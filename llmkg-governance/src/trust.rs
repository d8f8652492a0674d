//! Identity and trust between organizations.
//!
//! An organization *is* its root key. Each organization pins the roots of the organizations
//! it trusts, with a [`TrustLevel`] that caps what their nodes may do whatever the access
//! policies say. Node certificates are checked against the pinned roots (signature, validity
//! window, serial not revoked, roles); revocations and node-key rotations are signed by the
//! organization's root. Rotating a root itself takes a quorum of the *other* member
//! organizations, so an organization that lost its root (or let it lapse) can be re-admitted
//! under a new one without anyone holding the old key.
//!
//! ```text
//!   pin(org, root, level) ─► TrustStore ◄─ add_certificate(cert, now)   verified before kept
//!                               ▲   ▲
//!        add_revocation(rev) ───┘   └── rotate_root(rotation signed by the new root,
//!        rotate_node_key(new cert + revocation of the old serial)   endorsements of a majority
//!                                                                   of the other members)
//! ```
//!
//! ```
//! use llmkg_federation_core::{NodeKeypair, OrgId, OrgKeypair, Role, Timestamp};
//! use llmkg_governance::trust::{TrustLevel, TrustStore};
//!
//! let acme = OrgId::new("acme")?;
//! let root = OrgKeypair::from_secret_bytes([1; 32]);
//! let node = NodeKeypair::from_secret_bytes([2; 32]).node_id();
//! let t = |s: i64| Timestamp::from_micros(s * 1_000_000);
//! let cert = root.certify(acme.clone(), node, [Role::Writer], t(0), t(1_000), 1)?;
//!
//! let mut trust = TrustStore::new();
//! assert!(trust.add_certificate(cert.clone(), t(10)).is_err()); // acme is not pinned yet
//! trust.pin(acme.clone(), root.root_key(), TrustLevel::Member);
//! trust.add_certificate(cert, t(10))?;
//! let principal = trust.principal(&node, t(10))?;
//! assert_eq!((principal.org(), principal.roles()), (&acme, &[Role::Writer][..]));
//! assert!(trust.principal(&node, t(2_000)).is_err()); // expired by then
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use llmkg_federation_core::encoding::{self, EncodeError};
use llmkg_federation_core::security::Operation;
use llmkg_federation_core::{
    CertificateError, NodeCertificate, NodeId, OrgId, OrgKeypair, OrgRootKey, Revocation, Role,
    SignError, Timestamp, TrustAnchors,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most certificates kept per node (the highest serials win).
const MAX_CERTIFICATES_PER_NODE: usize = 8;

const ROOT_ROTATION_CONTEXT: &str = "llmkg-governance/root-rotation/v1";
const ROOT_ENDORSEMENT_CONTEXT: &str = "llmkg-governance/root-endorsement/v1";

/// How far this organization trusts another: an upper bound on what that organization's
/// nodes may do here, whatever the access policies permit. The store only records it; the
/// [`FederatedSecurityManager`](crate::manager::FederatedSecurityManager) applies it to every
/// decision (as a refusal by the local organization with rule `trust-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TrustLevel {
    /// Its nodes are identified (they may relay data) but may do nothing.
    Relay,
    /// Its nodes may at most read.
    Reader,
    /// Its nodes may read, commit, propose, approve and merge; it counts towards the quorum
    /// that rotates another organization's root.
    Member,
    /// As [`Member`](Self::Member), and its nodes may also administer.
    Full,
}

impl TrustLevel {
    /// Whether nodes of an organization trusted at this level may ever perform `op`.
    pub fn allows(self, op: Operation) -> bool {
        match self {
            Self::Relay => false,
            Self::Reader => op == Operation::Read,
            Self::Member => op != Operation::Administer,
            Self::Full => true,
        }
    }

    /// Whether an organization at this level counts towards root-rotation quorums.
    pub fn votes(self) -> bool {
        self >= Self::Member
    }
}

impl fmt::Display for TrustLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Relay => "relay",
            Self::Reader => "reader",
            Self::Member => "member",
            Self::Full => "full",
        })
    }
}

/// A certified node as access control sees it: its organization and roles, from a
/// certificate that verified at the time asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    node: NodeId,
    org: OrgId,
    roles: Vec<Role>,
    serial: u64,
}

impl Principal {
    /// A principal (for tests and hosts evaluating policies directly; a [`TrustStore`] makes
    /// them from verified certificates).
    pub fn new(node: NodeId, org: OrgId, roles: impl IntoIterator<Item = Role>) -> Self {
        let roles: BTreeSet<Role> = roles.into_iter().collect();
        Self { node, org, roles: roles.into_iter().collect(), serial: 0 }
    }

    /// The node.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Its organization.
    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// Its roles, sorted.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// The serial of the certificate it was made from (0 if made by [`new`](Self::new)).
    pub fn serial(&self) -> u64 {
        self.serial
    }
}

/// An identity or trust change was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TrustError {
    /// A certificate or revocation did not check out.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The node has no certificate here.
    #[error("node {0} has no certificate")]
    NoCertificate(NodeId),
    /// A node-key rotation's new certificate and revocation are of different organizations.
    #[error("rotation mixes organizations {certificate} and {revocation}")]
    RotationOrgMismatch {
        /// The new certificate's organization.
        certificate: OrgId,
        /// The revocation's organization.
        revocation: OrgId,
    },
    /// A node-key rotation revokes the serial it certifies.
    #[error("rotation revokes its own new serial {0}")]
    RotationRevokesItself(u64),
    /// A root rotation is for an organization that is not pinned here.
    #[error("organization {0} is not pinned")]
    UnknownOrg(OrgId),
    /// A root rotation names another old root than the pinned one, or a sequence other than
    /// the next.
    #[error("root rotation of {org} is stale or out of order: {detail}")]
    StaleRotation {
        /// The organization.
        org: OrgId,
        /// What did not match.
        detail: &'static str,
    },
    /// The rotation is not signed by the new root it installs (no proof of possession).
    #[error("root rotation of {0} is not signed by its new root")]
    RotationNotSigned(OrgId),
    /// Too few of the other member organizations endorsed a root rotation.
    #[error("root rotation of {org} has {have} valid endorsements, needs {need}")]
    QuorumNotMet {
        /// The organization whose root was to rotate.
        org: OrgId,
        /// Distinct voting organizations whose endorsement verified.
        have: usize,
        /// A majority of the other voting organizations.
        need: usize,
    },
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// An organization root's replacement of one of its node keys: the new key's certificate
/// and the revocation of the old key's serial, both signed by the root, applied together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKeyRotation {
    /// The new key's certificate.
    pub certificate: NodeCertificate,
    /// The revocation of the old key's serial.
    pub revocation: Revocation,
}

/// The statement that `org`'s root moves from `old_root` to `new_root`, signed by the new
/// root (proof of possession). It takes effect with the endorsements of a majority of the
/// other voting member organizations ([`TrustStore::rotate_root`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRotation {
    body: RootRotationBody,
    #[serde(with = "serde_sig")]
    signature: [u8; 64],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RootRotationBody {
    org: OrgId,
    old_root: OrgRootKey,
    new_root: OrgRootKey,
    sequence: u64,
    issued_at: Timestamp,
}

impl RootRotationBody {
    /// The bytes the new root and the endorsers sign.
    fn message(&self) -> Result<Vec<u8>, EncodeError> {
        encoding::try_encode(self)
    }
}

/// Another organization's endorsement of a [`RootRotation`], signed by its own root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootEndorsement {
    /// The endorsing organization.
    pub endorser: OrgId,
    #[serde(with = "serde_sig")]
    signature: [u8; 64],
}

/// Serde for 64-byte signatures (bytes in binary formats; a sequence is accepted too).
pub(crate) mod serde_sig {
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(sig)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = [u8; 64];
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<[u8; 64], E> {
                <[u8; 64]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<[u8; 64], A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = a
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                if a.next_element::<u8>()?.is_some() {
                    return Err(serde::de::Error::invalid_length(65, &self));
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

impl RootRotation {
    /// `org`'s move from `old_root` to the root of `new_root`, the `sequence`-th rotation of
    /// its root (1 for the first), signed by the new root.
    pub fn sign(
        new_root: &OrgKeypair,
        org: OrgId,
        old_root: OrgRootKey,
        sequence: u64,
        issued_at: Timestamp,
    ) -> Result<Self, SignError> {
        let body =
            RootRotationBody { org, old_root, new_root: new_root.root_key(), sequence, issued_at };
        let signature = new_root.sign_statement(ROOT_ROTATION_CONTEXT, &body.message()?)?;
        Ok(Self { body, signature })
    }

    /// The organization.
    pub fn org(&self) -> &OrgId {
        &self.body.org
    }

    /// The root it replaces.
    pub fn old_root(&self) -> OrgRootKey {
        self.body.old_root
    }

    /// The root it installs.
    pub fn new_root(&self) -> OrgRootKey {
        self.body.new_root
    }

    /// Which rotation of the organization's root this is (1 for the first).
    pub fn sequence(&self) -> u64 {
        self.body.sequence
    }

    /// `endorser`'s endorsement of this rotation, signed by its root.
    pub fn endorse(
        &self,
        endorser: OrgId,
        endorser_root: &OrgKeypair,
    ) -> Result<RootEndorsement, SignError> {
        let signature =
            endorser_root.sign_statement(ROOT_ENDORSEMENT_CONTEXT, &self.body.message()?)?;
        Ok(RootEndorsement { endorser, signature })
    }
}

/// The organizations this node trusts (pinned roots with trust levels), the certificates of
/// their nodes it knows, and their revocations.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    anchors: TrustAnchors,
    levels: BTreeMap<OrgId, TrustLevel>,
    root_sequence: BTreeMap<OrgId, u64>,
    certificates: BTreeMap<NodeId, Vec<NodeCertificate>>,
}

impl TrustStore {
    /// Trusts no one.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pins `root` as `org`'s root, trusted at `level` (out of band: this is the act of
    /// trusting). Returns the previously pinned root.
    pub fn pin(&mut self, org: OrgId, root: OrgRootKey, level: TrustLevel) -> Option<OrgRootKey> {
        self.levels.insert(org.clone(), level);
        self.anchors.pin(org, root)
    }

    /// Changes the level `org` is trusted at. `false` if it is not pinned.
    pub fn set_level(&mut self, org: &OrgId, level: TrustLevel) -> bool {
        match self.levels.get_mut(org) {
            Some(l) => {
                *l = level;
                true
            }
            None => false,
        }
    }

    /// The level `org` is trusted at, if pinned.
    pub fn level(&self, org: &OrgId) -> Option<TrustLevel> {
        self.levels.get(org).copied()
    }

    /// The root pinned for `org`.
    pub fn root(&self, org: &OrgId) -> Option<OrgRootKey> {
        self.anchors.root(org)
    }

    /// The pinned organizations, in order.
    pub fn orgs(&self) -> impl Iterator<Item = &OrgId> {
        self.levels.keys()
    }

    /// The pins and revocations, as core's certificate checks take them.
    pub fn anchors(&self) -> &TrustAnchors {
        &self.anchors
    }

    /// Keeps `certificate` after verifying it at `now` against the pins (organization pinned
    /// to the root that signed it, within its validity window, serial not revoked). At most 8
    /// certificates are kept per node, the highest serials. On error nothing changed.
    pub fn add_certificate(
        &mut self,
        certificate: NodeCertificate,
        now: Timestamp,
    ) -> Result<(), TrustError> {
        certificate.verify(&self.anchors, now)?;
        let list = self.certificates.entry(certificate.node()).or_default();
        if !list.contains(&certificate) {
            list.push(certificate);
            list.sort_by_key(|c| std::cmp::Reverse(c.serial()));
            list.truncate(MAX_CERTIFICATES_PER_NODE);
        }
        Ok(())
    }

    /// Accepts a revocation signed by its organization's pinned root. On error nothing
    /// changed.
    pub fn add_revocation(&mut self, revocation: &Revocation) -> Result<(), TrustError> {
        self.anchors.add_revocation(revocation)?;
        Ok(())
    }

    /// The certificates known for `node`, highest serial first.
    pub fn certificates(&self, node: &NodeId) -> &[NodeCertificate] {
        self.certificates.get(node).map(Vec::as_slice).unwrap_or(&[])
    }

    /// `node` as a principal at `at`: from its highest-serial certificate that verifies then.
    /// The error is the first certificate's refusal (expired, revoked, wrong root, ...).
    pub fn principal(&self, node: &NodeId, at: Timestamp) -> Result<Principal, TrustError> {
        let certs = self.certificates(node);
        let mut first_error = None;
        for cert in certs {
            match cert.verify_for(&self.anchors, at, node) {
                Ok(()) => {
                    return Ok(Principal {
                        node: *node,
                        org: cert.org().clone(),
                        roles: cert.roles().to_vec(),
                        serial: cert.serial(),
                    });
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.map_or(TrustError::NoCertificate(*node), TrustError::Certificate))
    }

    /// Replaces a node key: checks that the new certificate verifies at `now` and the
    /// revocation is signed by the same organization's pinned root, then applies both. On
    /// error nothing changed.
    pub fn rotate_node_key(
        &mut self,
        rotation: &NodeKeyRotation,
        now: Timestamp,
    ) -> Result<(), TrustError> {
        let (cert, rev) = (&rotation.certificate, &rotation.revocation);
        if cert.org() != rev.org() {
            return Err(TrustError::RotationOrgMismatch {
                certificate: cert.org().clone(),
                revocation: rev.org().clone(),
            });
        }
        if rev.serials().contains(&cert.serial()) {
            return Err(TrustError::RotationRevokesItself(cert.serial()));
        }
        // Check both against a copy, so a failure of either changes nothing.
        let mut anchors = self.anchors.clone();
        anchors.add_revocation(rev)?;
        cert.verify(&anchors, now)?;
        self.anchors = anchors;
        self.add_certificate(cert.clone(), now)
    }

    /// The organizations whose endorsement counts for rotating `org`'s root: the other pinned
    /// organizations trusted at [`TrustLevel::Member`] or above.
    pub fn root_voters(&self, org: &OrgId) -> Vec<OrgId> {
        self.levels.iter().filter(|(o, l)| *o != org && l.votes()).map(|(o, _)| o.clone()).collect()
    }

    /// Installs a new root for an organization: the rotation must name the pinned root as the
    /// old one and the next sequence number, be signed by the new root, and carry valid
    /// endorsements (by their pinned roots) from a majority of [`root_voters`](Self::root_voters).
    /// Certificates signed by the old root stop verifying; the organization re-certifies its
    /// nodes under the new one, with new serials (serials revoked under the old root stay
    /// revoked). An organization with no other voting member here cannot rotate its root this
    /// way (a majority of none is not reached): it is re-pinned out of band with
    /// [`pin`](Self::pin). Returns the organizations whose endorsement counted. On error
    /// nothing changed.
    pub fn rotate_root(
        &mut self,
        rotation: &RootRotation,
        endorsements: &[RootEndorsement],
    ) -> Result<Vec<OrgId>, TrustError> {
        let org = rotation.org();
        let Some(pinned) = self.anchors.root(org) else {
            return Err(TrustError::UnknownOrg(org.clone()));
        };
        if pinned != rotation.old_root() {
            return Err(TrustError::StaleRotation {
                org: org.clone(),
                detail: "old root is not the pinned root",
            });
        }
        let expected = self.root_sequence.get(org).copied().unwrap_or(0) + 1;
        if rotation.sequence() != expected {
            return Err(TrustError::StaleRotation {
                org: org.clone(),
                detail: "sequence is not the next one",
            });
        }
        let Ok(message) = rotation.body.message() else {
            return Err(TrustError::RotationNotSigned(org.clone()));
        };
        if !rotation.new_root().verify_statement(
            ROOT_ROTATION_CONTEXT,
            &message,
            &rotation.signature,
        ) {
            return Err(TrustError::RotationNotSigned(org.clone()));
        }
        let voters = self.root_voters(org);
        let need = voters.len() / 2 + 1;
        let mut counted: BTreeSet<OrgId> = BTreeSet::new();
        for e in endorsements {
            if !voters.contains(&e.endorser) || counted.contains(&e.endorser) {
                continue;
            }
            let Some(root) = self.anchors.root(&e.endorser) else { continue };
            if root.verify_statement(ROOT_ENDORSEMENT_CONTEXT, &message, &e.signature) {
                counted.insert(e.endorser.clone());
            }
        }
        if counted.len() < need {
            return Err(TrustError::QuorumNotMet { org: org.clone(), have: counted.len(), need });
        }
        self.anchors.pin(org.clone(), rotation.new_root());
        self.root_sequence.insert(org.clone(), expected);
        Ok(counted.into_iter().collect())
    }
}
