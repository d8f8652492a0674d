//! The federation vocabulary: what organizations agree on when they hold a branch together.
//!
//! A [`FederatedBranchRequest`] asks for a branch held by several organizations: its name,
//! the state it starts from ([`BranchSource`]), who participates, the [`FederationPolicy`]
//! (how long it lives, how sensitive it is, who may read, write, propose and merge), the sync
//! strategy, and the [`GovernanceRules`] saying which operations need which approvals, by
//! when. Once every participant consented, the branch is a [`FederatedBranch`] in the
//! [registry](crate::registry) of its consensus group.
//!
//! Consent is explicit and signed: an organization's node evaluates a pending operation with
//! its own security manager and submits a [`Consent`] — approve or refuse — bound to the
//! proposal's id and to the heads it was made against, carrying the node's certificate so
//! that every member can check, deterministically, that the organization really said it.
//!
//! ```
//! use std::time::Duration;
//! use llmkg_federation_core::federated::{
//!     ApprovalRule, FederationPolicy, GovernanceRules, GovernedOperation, Orgs, Quorum,
//! };
//! use llmkg_federation_core::OrgId;
//! use llmkg_federation_core::security::SecurityLevel;
//!
//! let acme = OrgId::new("acme")?;
//! let policy = FederationPolicy::default()
//!     .with_level(SecurityLevel::Confidential)
//!     .with_merge(Orgs::only([acme.clone()]));
//! let rules = GovernanceRules::default()
//!     .with(ApprovalRule::new(GovernedOperation::Merge, Quorum::AtLeast(2), Duration::from_secs(60)));
//! let members = [acme.clone(), OrgId::new("globex")?];
//! assert!(policy.merge.allows(&acme, &members));
//! assert!(!policy.merge.allows(&members[1], &members));
//! assert_eq!(rules.rule(GovernedOperation::Merge).quorum, Quorum::AtLeast(2));
//! // An operation without a rule needs every organization involved.
//! assert_eq!(rules.rule(GovernedOperation::Join).quorum, Quorum::All);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::certificate::NodeCertificate;
use crate::consensus::{ConsensusStrategy, GroupId, Member, ProposalId};
use crate::federation::FederationId;
use crate::graph::GraphState;
use crate::identity::{NodeId, OrgId};
use crate::merkle::StateRoot;
use crate::security::{NamespaceClaim, SecurityLevel};
use crate::store::BranchName;
use crate::sync::FederatedSyncStrategy;
use crate::term::Term;
use crate::time::Timestamp;
use crate::{CommitId, OrgRootKey};

/// The most organizations a branch, a rule or a consent names (bounds what a peer can make a
/// registry hold).
pub const MAX_ORGS: usize = 256;

/// The most heads a consent or a merge names.
pub const MAX_HEADS: usize = 64;

/// The longest reason a refusal carries, in bytes.
pub const MAX_REASON_LEN: usize = 1024;

/// A set of organizations a policy names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Orgs {
    /// Every member organization of the branch, whoever they are at the time.
    Members,
    /// Only these (those of them that are members).
    Only(BTreeSet<OrgId>),
    /// No organization.
    Nobody,
}

impl Orgs {
    /// Only `orgs`.
    pub fn only(orgs: impl IntoIterator<Item = OrgId>) -> Self {
        Self::Only(orgs.into_iter().collect())
    }

    /// Whether `org` is in the set, given the branch's member organizations `members`.
    pub fn allows(&self, org: &OrgId, members: &[OrgId]) -> bool {
        members.contains(org)
            && match self {
                Self::Members => true,
                Self::Only(set) => set.contains(org),
                Self::Nobody => false,
            }
    }

    fn len(&self) -> usize {
        match self {
            Self::Only(set) => set.len(),
            Self::Members | Self::Nobody => 0,
        }
    }
}

/// How a federated branch is run: how long, how sensitive, and who may do what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationPolicy {
    /// How sensitive its contents are.
    pub security_level: SecurityLevel,
    /// How long the federation lasts from its creation; `None`: until dissolved. Once it has
    /// passed, the registry refuses every further operation.
    pub duration: Option<Duration>,
    /// Who may read it.
    pub read: Orgs,
    /// Who may write to it.
    pub write: Orgs,
    /// Who may propose changes of membership and policy.
    pub propose: Orgs,
    /// Who may propose merges into it.
    pub merge: Orgs,
}

impl Default for FederationPolicy {
    /// Internal, no end, every member may read, write, propose and merge.
    fn default() -> Self {
        Self {
            security_level: SecurityLevel::Internal,
            duration: None,
            read: Orgs::Members,
            write: Orgs::Members,
            propose: Orgs::Members,
            merge: Orgs::Members,
        }
    }
}

impl FederationPolicy {
    /// With this security level.
    pub fn with_level(mut self, level: SecurityLevel) -> Self {
        self.security_level = level;
        self
    }

    /// Lasting `duration` from creation.
    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration = Some(duration);
        self
    }

    /// With these organizations allowed to propose merges.
    pub fn with_merge(mut self, orgs: Orgs) -> Self {
        self.merge = orgs;
        self
    }

    /// With these organizations allowed to propose membership and policy changes.
    pub fn with_propose(mut self, orgs: Orgs) -> Self {
        self.propose = orgs;
        self
    }

    /// With these organizations allowed to write.
    pub fn with_write(mut self, orgs: Orgs) -> Self {
        self.write = orgs;
        self
    }

    fn check(&self) -> Result<(), String> {
        let named = self.read.len() + self.write.len() + self.propose.len() + self.merge.len();
        if named > 4 * MAX_ORGS {
            return Err(format!("the policy names more than {} organizations", 4 * MAX_ORGS));
        }
        Ok(())
    }
}

/// An operation on a federated branch whose approvals the [`GovernanceRules`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GovernedOperation {
    /// Merging another federated branch into this one.
    Merge,
    /// Letting a node in.
    Join,
    /// Taking a node out (by someone other than the node itself).
    Leave,
    /// Replacing a policy or the synchronization plan.
    PolicyChange,
}

impl fmt::Display for GovernedOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Merge => "merge",
            Self::Join => "join",
            Self::Leave => "leave",
            Self::PolicyChange => "policy change",
        })
    }
}

/// Which approvals an operation needs, out of the organizations it involves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Quorum {
    /// Every involved organization.
    All,
    /// At least this many distinct involved organizations (capped at how many there are).
    AtLeast(u32),
    /// These organizations (those of them that are involved), each one.
    Named(BTreeSet<OrgId>),
}

impl Quorum {
    /// Whether the approvals of `approved` satisfy this quorum over the involved `involved`.
    pub fn is_met(&self, approved: &BTreeSet<OrgId>, involved: &BTreeSet<OrgId>) -> bool {
        let counted = approved.intersection(involved).count();
        match self {
            Self::All => involved.is_subset(approved),
            Self::AtLeast(n) => counted >= (*n as usize).clamp(1, involved.len().max(1)),
            Self::Named(orgs) => {
                // Named organizations none of which is involved: every involved one.
                let mut needed = orgs.intersection(involved).peekable();
                if needed.peek().is_none() {
                    involved.is_subset(approved)
                } else {
                    needed.all(|o| approved.contains(o))
                }
            }
        }
    }

    /// The organizations whose approval still counts toward the quorum: `involved` minus
    /// `approved` (for [`Named`](Self::Named), only the named ones).
    pub fn awaiting(&self, approved: &BTreeSet<OrgId>, involved: &BTreeSet<OrgId>) -> Vec<OrgId> {
        let named = match self {
            Self::Named(orgs) if orgs.intersection(involved).next().is_some() => Some(orgs),
            _ => None,
        };
        involved
            .iter()
            .filter(|o| !approved.contains(*o) && named.is_none_or(|n| n.contains(*o)))
            .cloned()
            .collect()
    }
}

/// The approvals one operation needs, and how long they may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRule {
    /// The operation.
    pub operation: GovernedOperation,
    /// The approvals it needs.
    pub quorum: Quorum,
    /// How long after its proposal the approvals may arrive; later, it is rejected.
    pub deadline: Duration,
}

impl ApprovalRule {
    /// A rule.
    pub fn new(operation: GovernedOperation, quorum: Quorum, deadline: Duration) -> Self {
        Self { operation, quorum, deadline }
    }
}

/// Which operations need which approvals. An operation without a rule needs every involved
/// organization within [`GovernanceRules::DEFAULT_DEADLINE`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GovernanceRules {
    /// The rules, at most one per operation (a later one replaces an earlier one).
    pub rules: Vec<ApprovalRule>,
}

impl GovernanceRules {
    /// The deadline of an operation without a rule: five minutes.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

    /// With `rule` (replacing the rule of its operation, if any).
    pub fn with(mut self, rule: ApprovalRule) -> Self {
        self.rules.retain(|r| r.operation != rule.operation);
        self.rules.push(rule);
        self
    }

    /// The rule for `operation`.
    pub fn rule(&self, operation: GovernedOperation) -> ApprovalRule {
        self.rules
            .iter()
            .rev()
            .find(|r| r.operation == operation)
            .cloned()
            .unwrap_or(ApprovalRule::new(operation, Quorum::All, Self::DEFAULT_DEADLINE))
    }

    fn check(&self) -> Result<(), String> {
        if self.rules.len() > 16 {
            return Err("more than 16 governance rules".into());
        }
        for r in &self.rules {
            if let Quorum::Named(orgs) = &r.quorum
                && orgs.len() > MAX_ORGS
            {
                return Err(format!("a rule names more than {MAX_ORGS} organizations"));
            }
        }
        Ok(())
    }
}

/// The state a federated branch starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BranchSource {
    /// Nothing: the branch starts empty.
    Empty,
    /// A snapshot of a state, shipped to every participant as the branch's first commit (the
    /// state, not its history).
    State {
        /// Where it comes from, in words (a branch name, a commit id).
        from: String,
        /// Its state root: every participant checks the snapshot it receives against it.
        root: StateRoot,
        /// Its size.
        triples: u64,
    },
}

impl BranchSource {
    /// The source describing `state`, which came from `from`.
    pub fn of_state(from: impl Into<String>, state: &mut GraphState) -> Self {
        Self::State { from: from.into(), root: state.state_root(), triples: state.len() as u64 }
    }

    /// The state root the branch starts with.
    pub fn root(&self) -> StateRoot {
        match self {
            Self::Empty => GraphState::new().state_root(),
            Self::State { root, .. } => *root,
        }
    }
}

/// A request to create a federated branch held by several organizations.
///
/// Build one with [`new`](Self::new) and the `with_*` methods; the defaults are an empty
/// source, the [default policy](FederationPolicy::default), eventual consistency, Raft, and
/// every operation needing every involved organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedBranchRequest {
    /// The federation the branch belongs to.
    pub federation: FederationId,
    /// The branch's name.
    pub branch: BranchName,
    /// The node asking. Its organization and roles come from its certificate, never from the
    /// request.
    pub requester: NodeId,
    /// The organizations whose nodes will hold the branch (the requester's is added if
    /// missing).
    pub participants: Vec<OrgId>,
    /// The state it starts from.
    pub source: BranchSource,
    /// How it is run.
    pub policy: FederationPolicy,
    /// How its replicas are kept consistent.
    pub sync: FederatedSyncStrategy,
    /// How its group decides.
    pub consensus: ConsensusStrategy,
    /// Which operations need which approvals.
    pub rules: GovernanceRules,
    /// Security requirements: the predicate namespaces the branch will carry that are one
    /// organization's data. Data outside every declared namespace belongs to all
    /// participants jointly.
    pub namespaces: Vec<NamespaceClaim>,
}

impl FederatedBranchRequest {
    /// A request by `requester` for `branch` of `federation`, held by `participants`, with
    /// the defaults.
    pub fn new(
        federation: FederationId,
        branch: BranchName,
        requester: NodeId,
        participants: impl IntoIterator<Item = OrgId>,
    ) -> Self {
        Self {
            federation,
            branch,
            requester,
            participants: participants.into_iter().collect(),
            source: BranchSource::Empty,
            policy: FederationPolicy::default(),
            sync: FederatedSyncStrategy::EventualConsistency,
            consensus: ConsensusStrategy::Raft,
            rules: GovernanceRules::default(),
            namespaces: Vec::new(),
        }
    }

    /// Starting from `source`.
    pub fn with_source(mut self, source: BranchSource) -> Self {
        self.source = source;
        self
    }

    /// Under `policy`.
    pub fn with_policy(mut self, policy: FederationPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// At this security level (in the policy).
    pub fn with_level(mut self, level: SecurityLevel) -> Self {
        self.policy.security_level = level;
        self
    }

    /// With these governance rules.
    pub fn with_rules(mut self, rules: GovernanceRules) -> Self {
        self.rules = rules;
        self
    }

    /// With these namespace claims.
    pub fn with_namespaces(mut self, namespaces: Vec<NamespaceClaim>) -> Self {
        self.namespaces = namespaces;
        self
    }

    /// Kept consistent by `sync`.
    pub fn with_sync(mut self, sync: FederatedSyncStrategy) -> Self {
        self.sync = sync;
        self
    }

    /// The security level.
    pub fn security_level(&self) -> SecurityLevel {
        self.policy.security_level
    }

    /// Checks the bounds a request from a peer must keep.
    pub fn check_bounds(&self) -> Result<(), String> {
        if self.participants.is_empty() || self.participants.len() > MAX_ORGS {
            return Err(format!("a request names 1 to {MAX_ORGS} participants"));
        }
        if self.namespaces.len() > 4 * MAX_ORGS {
            return Err("too many namespace claims".into());
        }
        self.policy.check()?;
        self.rules.check()
    }
}

/// Which side a merge keeps when a single-valued predicate has different values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MergeSide {
    /// The branch merged from.
    Source,
    /// The branch merged into.
    Target,
}

/// How a federated merge combines the two states.
///
/// A merge brings into the target every triple of the source it lacks. A predicate declared
/// single-valued holds one object per subject: when the two sides give a subject different
/// objects for it, that is a conflict, resolved by keeping `prefer`'s and reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedMergePolicy {
    /// Predicate IRIs that take one object per subject.
    pub single_valued: Vec<String>,
    /// The side kept in a conflict.
    pub prefer: MergeSide,
}

impl Default for FederatedMergePolicy {
    /// No single-valued predicates; the target is kept in a conflict.
    fn default() -> Self {
        Self { single_valued: Vec::new(), prefer: MergeSide::Target }
    }
}

/// A single-valued predicate the two sides of a merge gave different objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeConflict {
    /// The subject.
    pub subject: Term,
    /// The predicate.
    pub predicate: Term,
    /// The side kept.
    pub kept: MergeSide,
}

/// What a federated merge did, once executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedMergeResult {
    /// The merge proposal.
    pub proposal: ProposalId,
    /// Its position in the target's log.
    pub index: u64,
    /// The organizations whose approvals decided it.
    pub approved_by: Vec<OrgId>,
    /// Triples the merge added to the target.
    pub added: u64,
    /// Triples it removed (losing sides of conflicts).
    pub removed: u64,
    /// Conflicts and how they were resolved.
    pub conflicts: Vec<MergeConflict>,
    /// The target's state root right after the merge (every replica reaches it).
    pub state_root: StateRoot,
}

/// A federated branch as its registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedBranch {
    /// Its federation.
    pub federation: FederationId,
    /// Its name.
    pub branch: BranchName,
    /// Its consensus group.
    pub group: GroupId,
    /// The state it started from.
    pub source: BranchSource,
    /// Its member organizations, sorted.
    pub organizations: Vec<OrgId>,
    /// Its nodes (the group's members), sorted.
    pub members: Vec<Member>,
    /// How it is run.
    pub policy: FederationPolicy,
    /// Who must approve what.
    pub rules: GovernanceRules,
    /// How its replicas are kept consistent.
    pub sync: FederatedSyncStrategy,
    /// How its group decides.
    pub consensus: ConsensusStrategy,
    /// The namespaces that are one organization's data.
    pub namespaces: Vec<NamespaceClaim>,
    /// When its creation was proposed.
    pub created_at: Timestamp,
    /// When it ends, if its policy sets a duration.
    pub expires_at: Option<Timestamp>,
}

impl FederatedBranch {
    /// The node ids of its members.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.node).collect()
    }
}

/// An organization's answer to a pending operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsentVerdict {
    /// It approves.
    Approve,
    /// It refuses, and says why.
    Refuse {
        /// Why.
        reason: String,
    },
}

/// An organization's signed answer to a pending operation, submitted through the group's log
/// (as the [`Consent`](crate::consensus::ProposalKind::Consent) kind of proposal, signed by
/// one of the organization's nodes).
///
/// It counts only for the proposal it names, made against the heads it names, when the
/// certificate it carries is the signing node's, for the organization it names, issued by that
/// organization's root as the registry knows it, and valid at the time of the log entry. A
/// stale consent (other heads), a replayed one (a decided proposal, or a second consent of the
/// same organization), or a forged one counts for nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// The operation answered.
    pub proposal: ProposalId,
    /// The heads the answer was made against (for a merge: the source's heads then the
    /// target's; empty for other operations).
    pub heads: Vec<CommitId>,
    /// The organization answering.
    pub org: OrgId,
    /// The answer.
    pub verdict: ConsentVerdict,
    /// The signing node's certificate.
    pub certificate: NodeCertificate,
}

/// `reason` cut to at most [`MAX_REASON_LEN`] bytes, at a character boundary.
pub(crate) fn bounded_reason(mut reason: String) -> String {
    let end = crate::term::prefix_within(&reason, MAX_REASON_LEN).len();
    reason.truncate(end);
    reason
}

/// A merge's heads as a consent names them: the source's, then the target's.
pub fn merge_heads(source: &[CommitId], target: &[CommitId]) -> Vec<CommitId> {
    source.iter().chain(target).copied().collect()
}

/// The organizations' roots a registry checks consents against.
pub type Directory = Vec<(OrgId, OrgRootKey)>;
