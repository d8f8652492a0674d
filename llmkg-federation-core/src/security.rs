//! The security-plane contract: who may do what to a federated branch, and who consented.
//!
//! A federated branch holds data of several organizations. None of them gives up control: an
//! operation that touches several organizations' data needs every one of them to allow it
//! (see the rule of consent in the architecture document). A [`SecurityManager`] is one
//! node's view of that: it checks requesters' certificates against the organization roots it
//! pins, evaluates each involved organization's access policy, and answers with a
//! [`SecurityDecision`] that says, per organization, whether it approved, refused (and by
//! which rule), or has yet to be asked.
//!
//! ```text
//!  FederatedBranchRequest ──validate_branch_request──► SecurityDecision { per org: Approved | Refused | Pending }
//!                         ──create_security_context──► SecurityContext  (members, level, key epoch)
//!  CrossFederationMerge   ──validate_cross_federation_merge──► SecurityDecision
//!  (federation, branch)   ──commit_policy──► CommitPolicy: every received commit checked
//!                         ──envelope_seal──► EnvelopeSeal: a sealed level's commits shipped sealed
//!                         ──key_epochs / accept_key_epochs──► the data-key epochs members exchange
//! ```
//!
//! The trait is object safe; `llmkg-governance` implements it. Decisions are local and
//! synchronous: a manager evaluates policies it holds, it does not ask other nodes, so the
//! methods do not await. Consent from another organization whose policy this node does not
//! hold is reported as [`Verdict::Pending`], to arrive as a signed approval through the
//! branch's consensus log.
//!
//! ```
//! use llmkg_federation_core::OrgId;
//! use llmkg_federation_core::security::{OrgVerdict, SecurityDecision, Verdict};
//!
//! let acme = OrgId::new("acme")?;
//! let globex = OrgId::new("globex")?;
//! let decision = SecurityDecision::new(vec![
//!     OrgVerdict::new(acme.clone(), Verdict::Approved { rule: Some("acme-writers".into()) }),
//!     OrgVerdict::new(globex.clone(), Verdict::Pending { reason: "policy not held".into() }),
//! ]);
//! assert!(!decision.is_approved());
//! assert_eq!(decision.approved_by().collect::<Vec<_>>(), [&acme]);
//! assert_eq!(decision.pending().collect::<Vec<_>>(), [&globex]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::federated::FederatedBranchRequest;

use crate::certificate::{CertificateError, CommitPolicy};
use crate::federation::FederationId;
use crate::identity::{NodeId, OrgId};
use crate::store::BranchName;
use crate::time::Timestamp;

/// How sensitive a federated branch's contents are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SecurityLevel {
    /// Anyone in the federation may read it.
    Public,
    /// Members' nodes read it in the clear.
    Internal,
    /// Change sets are stored and shipped sealed under the federation's data key; only the
    /// member organizations of the epoch they were written in can read them.
    Confidential,
    /// As [`Confidential`](Self::Confidential), for the most sensitive data.
    Secret,
}

impl SecurityLevel {
    /// Whether change sets of a branch at this level are sealed.
    pub fn seals(self) -> bool {
        self >= Self::Confidential
    }
}

/// What a principal asks to do to a federated branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Operation {
    /// Read and replicate the branch's contents.
    Read,
    /// Author commits on the branch.
    Commit,
    /// Propose a decision to the branch's consensus group.
    Propose,
    /// Approve (or refuse) a proposal on behalf of an organization.
    Approve,
    /// Merge another branch into this one.
    Merge,
    /// Change the branch's membership, policies or keys; create it.
    Administer,
}

impl Operation {
    /// Every operation, in order.
    pub const ALL: [Operation; 6] =
        [Self::Read, Self::Commit, Self::Propose, Self::Approve, Self::Merge, Self::Administer];
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Commit => "commit",
            Self::Propose => "propose",
            Self::Approve => "approve",
            Self::Merge => "merge",
            Self::Administer => "administer",
        })
    }
}

/// A predicate namespace (an IRI prefix) whose data belongs to one organization: operations
/// touching it need that organization's consent (and only its, unless other data is touched
/// too). The longest matching prefix decides.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NamespaceClaim {
    /// The IRI prefix.
    pub prefix: String,
    /// The organization whose data it is.
    pub owner: OrgId,
}

/// A federated branch, named across federations.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BranchRef {
    /// Its federation.
    pub federation: FederationId,
    /// Its name.
    pub branch: BranchName,
}

/// A request to merge a branch of one federation into a branch of another (or the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrossFederationMerge {
    /// The node asking.
    pub requester: NodeId,
    /// The branch merged from.
    pub source: BranchRef,
    /// The branch merged into.
    pub target: BranchRef,
    /// The predicate IRIs the merged changes touch; empty for the whole branch.
    pub predicates: Vec<String>,
}

/// An organization entering or leaving a federated branch, as a node asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChange {
    /// The node asking.
    pub requester: NodeId,
    /// The branch.
    pub branch: BranchRef,
    /// The organization.
    pub org: OrgId,
    /// Whether it enters (`true`) or leaves.
    pub joins: bool,
    /// For a sealed branch, the node that issues the data-key epoch of the new membership
    /// (the others fetch it from the members): a member's node after the change, never one of
    /// the organization that leaves, which must not see the key it is to be kept from.
    /// [`FederatedBranchingSystem`](crate::system::FederatedBranchingSystem) picks the
    /// proposer of the change when it remains a member, else the remaining member with the
    /// lowest node id; `None` when the change is replayed from the log (after a restart):
    /// nobody issues then, the epoch already exists.
    pub issuer: Option<NodeId>,
}

/// A decision of a branch's consensus group, as the audit trail records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The group.
    pub group: [u8; 32],
    /// The log index that decided.
    pub index: u64,
    /// The proposal decided.
    pub proposal: [u8; 32],
    /// What was decided, in words ("executed merge", "rejected join: ...").
    pub outcome: String,
}

/// The security context of one federated branch: who holds it and how it is protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityContext {
    /// The branch.
    pub branch: BranchRef,
    /// Its member organizations, sorted.
    pub members: Vec<OrgId>,
    /// Its security level.
    pub level: SecurityLevel,
    /// The namespaces that are one organization's data.
    pub namespaces: Vec<NamespaceClaim>,
    /// The current data-key epoch, for a sealed level.
    pub key_epoch: Option<u64>,
    /// When it was created.
    pub created_at: Timestamp,
}

/// One organization's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Verdict {
    /// Its policy allows the operation (by this rule).
    Approved {
        /// The rule that permitted it.
        rule: Option<String>,
    },
    /// Its policy refuses the operation.
    Refused {
        /// The rule that forbade it, or `None` when nothing permitted it (default deny).
        rule: Option<String>,
        /// Why, in words.
        reason: String,
    },
    /// Its consent is needed and not yet known here: a signed approval must arrive.
    Pending {
        /// What is awaited.
        reason: String,
    },
}

/// An organization and its [`Verdict`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgVerdict {
    /// The organization.
    pub org: OrgId,
    /// Its answer.
    pub verdict: Verdict,
}

impl OrgVerdict {
    /// `org` answered `verdict`.
    pub fn new(org: OrgId, verdict: Verdict) -> Self {
        Self { org, verdict }
    }
}

/// The answer to a request: one verdict per organization whose consent it needs, sorted by
/// organization.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SecurityDecision {
    verdicts: Vec<OrgVerdict>,
}

impl SecurityDecision {
    /// The decision made of these verdicts (sorted by organization here; an organization
    /// listed twice keeps its least favourable verdict: refused, then pending, then approved).
    pub fn new(mut verdicts: Vec<OrgVerdict>) -> Self {
        fn rank(v: &Verdict) -> u8 {
            match v {
                Verdict::Refused { .. } => 0,
                Verdict::Pending { .. } => 1,
                Verdict::Approved { .. } => 2,
            }
        }
        verdicts.sort_by(|a, b| a.org.cmp(&b.org).then(rank(&a.verdict).cmp(&rank(&b.verdict))));
        verdicts.dedup_by(|later, first| later.org == first.org);
        Self { verdicts }
    }

    /// Every verdict, sorted by organization.
    pub fn verdicts(&self) -> &[OrgVerdict] {
        &self.verdicts
    }

    /// Whether every organization approved (and at least one was asked).
    pub fn is_approved(&self) -> bool {
        !self.verdicts.is_empty()
            && self.verdicts.iter().all(|v| matches!(v.verdict, Verdict::Approved { .. }))
    }

    /// Whether some organization refused.
    pub fn is_refused(&self) -> bool {
        self.refused_by().next().is_some()
    }

    /// The organizations that approved.
    pub fn approved_by(&self) -> impl Iterator<Item = &OrgId> {
        self.verdicts
            .iter()
            .filter(|v| matches!(v.verdict, Verdict::Approved { .. }))
            .map(|v| &v.org)
    }

    /// The organizations that refused, with the deciding rule (if any) and the reason.
    pub fn refused_by(&self) -> impl Iterator<Item = (&OrgId, Option<&str>, &str)> {
        self.verdicts.iter().filter_map(|v| match &v.verdict {
            Verdict::Refused { rule, reason } => Some((&v.org, rule.as_deref(), reason.as_str())),
            _ => None,
        })
    }

    /// The organizations whose approval is still needed.
    pub fn pending(&self) -> impl Iterator<Item = &OrgId> {
        self.verdicts
            .iter()
            .filter(|v| matches!(v.verdict, Verdict::Pending { .. }))
            .map(|v| &v.org)
    }
}

impl fmt::Display for SecurityDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for v in &self.verdicts {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            match &v.verdict {
                Verdict::Approved { rule: Some(r) } => write!(f, "{} approved (rule {r})", v.org)?,
                Verdict::Approved { rule: None } => write!(f, "{} approved", v.org)?,
                Verdict::Refused { reason, .. } => write!(f, "{} refused: {reason}", v.org)?,
                Verdict::Pending { reason } => write!(f, "{} pending: {reason}", v.org)?,
            }
        }
        if first {
            f.write_str("no organization asked")?;
        }
        Ok(())
    }
}

/// A security manager could not answer, or refused to act. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// The requester's identity did not check out (no certificate, forged, expired, revoked,
    /// unpinned or wrong root).
    #[error("requester {node}: {error}")]
    Identity {
        /// The requester.
        node: NodeId,
        /// Why its certificate was refused.
        error: CertificateError,
    },
    /// The requester has no certificate this manager knows.
    #[error("requester {0} has no known certificate")]
    UnknownRequester(NodeId),
    /// The branch has no security context here.
    #[error("no security context for branch {0:?}")]
    UnknownBranch(BranchName),
    /// The request is malformed or conflicts with what exists (a namespace claim that is not
    /// an IRI prefix or is claimed twice, a branch that already has a context, sealed branches
    /// of one federation with different members).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// An action needed an approved decision and did not have one.
    #[error("not approved: {0}")]
    NotApproved(SecurityDecision),
    /// The manager's own machinery failed (its audit log's storage, its key material).
    #[error("security manager failure: {0}")]
    Internal(String),
}

/// One node's security plane: certificates, trust, access control, keys and the audit trail
/// behind three questions and one hook.
///
/// Contract:
/// - Every answer is computed from state this manager holds (pinned roots, certificates,
///   revocations, published policies) at `now`; it never blocks on the network.
/// - Default deny: an organization whose policy does not permit an operation refuses it; an
///   organization whose policy is unknown here is [`Verdict::Pending`], never approved.
/// - An operation touching several organizations' data needs all of them
///   ([`SecurityDecision::is_approved`]).
/// - Every decision, approval or refusal, is recorded in the manager's audit trail before the
///   method returns; an `Err` changes nothing else.
pub trait SecurityManager: Send + Sync {
    /// Who must consent to creating the federated branch `request` describes, and what each
    /// of them answers.
    fn validate_branch_request(
        &self,
        request: &FederatedBranchRequest,
        now: Timestamp,
    ) -> Result<SecurityDecision, SecurityError>;

    /// Creates the branch's security context (its members, level, and for a sealed level its
    /// first data-key epoch). Refused with [`SecurityError::NotApproved`] unless
    /// [`validate_branch_request`](Self::validate_branch_request) approves.
    fn create_security_context(
        &self,
        request: &FederatedBranchRequest,
        now: Timestamp,
    ) -> Result<SecurityContext, SecurityError>;

    /// Who must consent to `merge` (the organizations of both branches) and what each answers.
    fn validate_cross_federation_merge(
        &self,
        merge: &CrossFederationMerge,
        now: Timestamp,
    ) -> Result<SecurityDecision, SecurityError>;

    /// Who must consent to the membership change `change` asks for, and what each answers.
    /// Decides only (audited); nothing else changes.
    fn validate_membership_change(
        &self,
        change: &MembershipChange,
        now: Timestamp,
    ) -> Result<SecurityDecision, SecurityError>;

    /// Applies a membership change the branch's group decided: the context's members, and
    /// for a sealed level a new data-key epoch the departed cannot open. Audited; on error
    /// nothing changed.
    fn apply_membership_change(
        &self,
        change: &MembershipChange,
        now: Timestamp,
    ) -> Result<SecurityContext, SecurityError>;

    /// Records a decision of `branch`'s group (an operation executed or rejected, with why)
    /// in the audit trail.
    fn record_decision(
        &self,
        branch: &BranchRef,
        record: &DecisionRecord,
        now: Timestamp,
    ) -> Result<(), SecurityError>;

    /// The policy every commit of `branch` must pass wherever it is received: the author is
    /// certified by a trusted root and every organization whose data the commit touches
    /// permits it. Plug it into the branch's replica.
    fn commit_policy(&self, branch: &BranchRef) -> Result<Arc<dyn CommitPolicy>, SecurityError>;

    /// How `branch`'s replicas seal the commits they ship to each other: for a level that
    /// [seals](SecurityLevel::seals), an [`EnvelopeSeal`] under the federation's current
    /// data-key epoch; `None` for a level whose commits travel in the clear (inside the
    /// transport's encryption). Plug it into the branch's replica set.
    fn envelope_seal(
        &self,
        branch: &BranchRef,
    ) -> Result<Option<Arc<dyn EnvelopeSeal>>, SecurityError>;

    /// The data-key epochs of `branch`'s federation this node issued or accepted, encoded,
    /// oldest first, for a member whose epoch has not arrived; empty for a level that does not
    /// seal.
    fn key_epochs(&self, branch: &BranchRef) -> Vec<Vec<u8>>;

    /// Accepts data-key epochs another member sent (encoded, oldest first; those already held
    /// are skipped) and returns how many were new. Each must be issued by an administrator of
    /// a member and the newest must wrap the key for exactly the branch's members as this
    /// node knows them. Audited; on error nothing changed.
    fn accept_key_epochs(
        &self,
        branch: &BranchRef,
        epochs: &[Vec<u8>],
        now: Timestamp,
    ) -> Result<usize, SecurityError>;

    /// Whether `branch` is of a sealed level and the data-key epoch of its latest membership
    /// change has not arrived here: its replicas can open what they already hold keys for,
    /// but seal nothing until it does.
    fn awaits_key_epoch(&self, branch: &BranchRef) -> bool;
}

/// Seals and opens one branch's commit envelopes (the bytes its replicas ship to each other)
/// under the federation's data key, for a branch of a level that
/// [seals](SecurityLevel::seals). Whoever is not a member of the epoch a commit was sealed
/// under cannot read it: an organization that left reads nothing written after.
pub trait EnvelopeSeal: Send + Sync {
    /// Seals one envelope under the current epoch. Fails with [`SealError::EpochPending`]
    /// while the epoch of the branch's latest membership change has not arrived.
    fn seal(&self, envelope: &[u8]) -> Result<Vec<u8>, SealError>;

    /// Opens a sealed envelope a peer shipped. A refusal is audited.
    fn open(&self, sealed: &[u8], now: Timestamp) -> Result<Vec<u8>, SealError>;
}

/// Why an envelope could not be sealed or opened. Nothing was decrypted or changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SealError {
    /// The data-key epoch of the branch's latest membership change has not arrived here:
    /// nothing can be sealed until it does.
    #[error("the branch's current data-key epoch has not arrived here")]
    EpochPending,
    /// This node holds no key for the epoch the envelope was sealed under: its organization
    /// was not a member of that epoch (it left before it, say), or the epoch is unknown here.
    #[error("no data key here for epoch {epoch}")]
    NoKey {
        /// The epoch the envelope names.
        epoch: u64,
    },
    /// The envelope does not decode or does not authenticate (tampered, or sealed for
    /// another branch).
    #[error("unreadable sealed envelope: {0}")]
    Unreadable(String),
    /// The security manager's own machinery failed (its audit log, say).
    #[error("sealing failed: {0}")]
    Internal(String),
}
