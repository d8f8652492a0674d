//! The federation's registry: the deterministic state machine behind a federated branch's
//! consensus log.
//!
//! One [`Registry`] per federated branch, on every node that holds it, applies the branch
//! group's log in order: the creation, then proposals (merges, joins, leaves, policy changes)
//! and the organizations' signed [`Consent`]s to them. It consults nothing but the log — no
//! clock, no local policy — so every member holds the same registry
//! ([`Registry::digest`] is equal everywhere after the same entries).
//!
//! **The rule of consent.** A proposal that needs approvals is *pending* when it enters the
//! log ([`Outcome::Pending`]). It is executed at the entry that completes the quorum its
//! [rule](crate::federated::GovernanceRules) demands, and rejected at a refusal from an
//! organization whose consent counts, or at the first entry whose time is past its deadline.
//! The registry's time is the latest `proposed_at` of the entries applied so far, so it moves
//! only with the log and is the same on every member. (A member whose clock runs ahead can
//! only make deadlines pass early, that is, reject; it can never approve anything.)
//!
//! A consent counts only when:
//! - it is dated (its `proposed_at`) no later than the proposal's deadline;
//! - it names a pending proposal (not a decided, expired or unknown one: replays count for
//!   nothing), and carries the heads that proposal was made against (stale ones do not);
//! - its organization is involved in the proposal and has not answered it yet;
//! - the certificate it carries is the signing node's, for that organization, issued by the
//!   root the registry holds for it (pinned by the creation, or named by the proposal and so
//!   approved by every other organization that consented), and valid at the entry's time.
//!
//! ```text
//!   index  entry                                   outcome        registry
//!   1      BranchCreation (acme, globex)           Pending        branch proposed
//!   2      Consent acme: approve                   Approved       counted
//!   3      Consent globex: approve                 Approved       counted -> branch active
//!   4      FederatedMerge by acme                  Pending        merge pending
//!   5      Consent globex: approve, stale heads    Rejected       not counted
//!   6      Consent globex: approve                 Approved       counted
//!   7      Consent acme: approve                   Approved       counted -> merge executed
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::CommitId;
use crate::certificate::{OrgRootKey, TrustAnchors};
use crate::consensus::{
    BranchCreation, ConsensusProposal, DecisionMachine, GroupId, Member, Outcome, ProposalId,
    ProposalKind,
};
use crate::encoding;
use crate::federated::{
    Consent, ConsentVerdict, FederatedBranch, GovernanceRules, GovernedOperation, MAX_HEADS,
    MAX_ORGS, Quorum, bounded_reason, merge_heads,
};
use crate::federation::FederationId;
use crate::identity::{NodeId, OrgId, Signed};
use crate::time::Timestamp;

/// The most operations pending at once; more are rejected until some are decided.
pub const MAX_PENDING: usize = 1024;

/// The most proposals remembered (to refuse replays) until their deadlines pass.
pub const MAX_SEEN: usize = 4 * MAX_PENDING;

/// The most members a group holds.
pub const MAX_MEMBERS: usize = 1024;

/// The largest registry snapshot [`Registry::restore`] accepts.
pub const MAX_SNAPSHOT_LEN: usize = 64 << 20;

/// An operation waiting for approvals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOperation {
    /// Its proposal.
    pub proposal: ProposalId,
    /// Where it entered the log.
    pub index: u64,
    /// Who proposed it.
    pub proposer: NodeId,
    /// What it does.
    pub kind: ProposalKind,
    /// The organizations whose consent counts.
    pub involved: BTreeSet<OrgId>,
    /// How many of them must approve.
    pub quorum: Quorum,
    /// The heads consents must name.
    pub heads: Vec<CommitId>,
    /// After this (registry time), it is rejected.
    pub deadline: Timestamp,
    /// Those that approved so far.
    pub approved: BTreeSet<OrgId>,
    /// Roots of involved organizations the branch does not hold yet (named by the proposal).
    pub roots: BTreeMap<OrgId, OrgRootKey>,
}

impl PendingOperation {
    /// The organizations whose approval would still count.
    pub fn awaiting(&self) -> Vec<OrgId> {
        self.quorum.awaiting(&self.approved, &self.involved)
    }
}

/// An executed operation, as the registry's history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutedOperation {
    /// Its proposal.
    pub proposal: ProposalId,
    /// Where it entered the log.
    pub proposed_at_index: u64,
    /// The entry that executed it.
    pub index: u64,
    /// The registry's time when it was executed.
    pub executed_at: Timestamp,
    /// Who proposed it.
    pub proposer: NodeId,
    /// What it did.
    pub kind: ProposalKind,
    /// The organizations whose approvals decided it.
    pub approved_by: Vec<OrgId>,
}

/// What applying an entry changed, for the host to act on (drained with
/// [`Registry::take_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryEvent {
    /// A proposal entered the log and waits for approvals.
    Pending {
        /// The proposal.
        proposal: ProposalId,
        /// Its index.
        index: u64,
        /// Whose approval counts.
        awaiting: Vec<OrgId>,
    },
    /// An organization's approval was counted.
    Approved {
        /// The proposal.
        proposal: ProposalId,
        /// The organization.
        org: OrgId,
        /// The consent's index.
        index: u64,
    },
    /// An operation was executed: the registry now reflects it, and hosts carry out its
    /// effects (replicas, memberships, keys).
    Executed(Box<ExecutedOperation>),
    /// A pending operation was rejected (a refusal, its deadline, the branch ending).
    Rejected {
        /// The proposal.
        proposal: ProposalId,
        /// The entry that rejected it.
        index: u64,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
struct State {
    branch: Option<FederatedBranch>,
    active: bool,
    directory: BTreeMap<OrgId, OrgRootKey>,
    pending: BTreeMap<ProposalId, PendingOperation>,
    history: Vec<ExecutedOperation>,
    time: Timestamp,
    applied: u64,
    /// Membership changes executed so far (the federation key epoch follows it).
    membership_version: u64,
    /// Proposals entered, with their deadlines, until their deadline passes: a proposal
    /// entered again (the same signed bytes) is refused while it could still matter.
    seen: BTreeMap<ProposalId, Timestamp>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    federation: FederationId,
    group: GroupId,
    state: State,
}

/// The deterministic registry of one federated branch; see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Registry {
    federation: FederationId,
    group: GroupId,
    state: State,
    events: VecDeque<RegistryEvent>,
}

/// Why an entry was rejected, in words.
type Rejection = String;

impl Registry {
    /// An empty registry for `group` of `federation`: it accepts a creation first.
    pub fn new(federation: FederationId, group: GroupId) -> Self {
        Self { federation, group, state: State::default(), events: VecDeque::new() }
    }

    /// The federation.
    pub fn federation(&self) -> FederationId {
        self.federation
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The branch, once its creation entered the log (see [`is_active`](Self::is_active)).
    pub fn branch(&self) -> Option<&FederatedBranch> {
        self.state.branch.as_ref()
    }

    /// Whether every participant approved the creation.
    pub fn is_active(&self) -> bool {
        self.state.active
    }

    /// The group's members.
    pub fn members(&self) -> &[Member] {
        self.state.branch.as_ref().map_or(&[], |b| &b.members)
    }

    /// The organization roots the registry checks consents against.
    pub fn directory(&self) -> &BTreeMap<OrgId, OrgRootKey> {
        &self.state.directory
    }

    /// The operations waiting for approvals.
    pub fn pending(&self) -> impl Iterator<Item = &PendingOperation> {
        self.state.pending.values()
    }

    /// The pending operation of `proposal`.
    pub fn pending_operation(&self, proposal: &ProposalId) -> Option<&PendingOperation> {
        self.state.pending.get(proposal)
    }

    /// The executed operations, oldest first.
    pub fn history(&self) -> &[ExecutedOperation] {
        &self.state.history
    }

    /// The executed operation of `proposal`.
    pub fn executed(&self, proposal: &ProposalId) -> Option<&ExecutedOperation> {
        self.state.history.iter().rev().find(|e| e.proposal == *proposal)
    }

    /// The registry's time: the latest `proposed_at` applied.
    pub fn time(&self) -> Timestamp {
        self.state.time
    }

    /// The last index applied.
    pub fn applied(&self) -> u64 {
        self.state.applied
    }

    /// How many membership changes were executed (joins and leaves).
    pub fn membership_version(&self) -> u64 {
        self.state.membership_version
    }

    /// A digest of the whole state: equal on every member that applied the same entries.
    pub fn digest(&self) -> [u8; 32] {
        encoding::hash_bytes(b"llmkg/registry/digest/v1", &self.snapshot_bytes())
    }

    /// What the entries applied since the last call changed.
    pub fn take_events(&mut self) -> Vec<RegistryEvent> {
        self.events.drain(..).collect()
    }

    /// Applies the entry at `index`: a signed proposal of this group. Returns its outcome;
    /// the same on every member.
    pub fn apply(&mut self, index: u64, signed: &Signed<ConsensusProposal>) -> Outcome {
        self.state.applied = self.state.applied.max(index);
        let Ok(proposal) = signed.open(&self.federation) else {
            return reject("the proposal is signed for another federation");
        };
        if proposal.group != self.group {
            return reject("the proposal is for another group");
        }
        let Ok(id) = ProposalId::of(signed) else {
            return reject("the proposal cannot be encoded");
        };
        let signer = signed.signer();
        // Only the group's members move the registry's time (and, before there is a group,
        // the creation's requester): an entry from anyone else cannot expire anything.
        let moves_time = match (&self.state.branch, &proposal.kind) {
            (Some(b), _) => b.members.iter().any(|m| m.node == signer),
            (None, ProposalKind::BranchCreation(c)) => c.request.requester == signer,
            (None, _) => false,
        };
        if moves_time {
            self.state.time = self.state.time.max(proposal.proposed_at);
        }
        self.expire(index);
        let is_consent = matches!(proposal.kind, ProposalKind::Consent(_));
        if !is_consent {
            if self.state.seen.contains_key(&id) {
                return reject("the proposal was entered before (a replay)");
            }
            if proposal.deadline < self.state.time {
                return reject("the proposal's deadline has already passed");
            }
            if self.state.seen.len() >= MAX_SEEN {
                return reject("too many proposals are still within their deadlines");
            }
        }
        let result = match &proposal.kind {
            ProposalKind::BranchCreation(creation) => {
                self.propose_creation(index, id, signer, proposal, creation)
            }
            ProposalKind::Consent(consent) => {
                self.consent(index, signer, proposal.proposed_at, consent)
            }
            _ => self.propose(index, id, signer, proposal),
        };
        match result {
            Ok(outcome) => {
                if !is_consent {
                    self.state.seen.insert(id, proposal.deadline);
                }
                outcome
            }
            Err(reason) => reject(reason),
        }
    }

    fn expire(&mut self, index: u64) {
        let now = self.state.time;
        self.state.seen.retain(|_, deadline| *deadline >= now);
        let ended =
            self.state.branch.as_ref().and_then(|b| b.expires_at).is_some_and(|end| now > end);
        let expired: Vec<ProposalId> = self
            .state
            .pending
            .values()
            .filter(|p| ended || now > p.deadline)
            .map(|p| p.proposal)
            .collect();
        for proposal in expired {
            if let Some(op) = self.state.pending.remove(&proposal) {
                let reason = if ended {
                    "the federation's duration ended".to_string()
                } else {
                    format!("its deadline passed awaiting {}", names(&op.awaiting()))
                };
                self.events.push_back(RegistryEvent::Rejected { proposal, index, reason });
            }
        }
    }

    fn propose_creation(
        &mut self,
        index: u64,
        id: ProposalId,
        signer: NodeId,
        proposal: &ConsensusProposal,
        creation: &BranchCreation,
    ) -> Result<Outcome, Rejection> {
        if self.state.branch.is_some() {
            return Err("the group was already created".into());
        }
        let request = &creation.request;
        if creation.group_id().ok() != Some(self.group) {
            return Err("the group id is not the hash of the creation".into());
        }
        if request.federation != self.federation {
            return Err("the request is for another federation".into());
        }
        request.check_bounds()?;
        if signer != request.requester {
            return Err("the creation is not signed by its requester".into());
        }
        if creation.members.is_empty() || creation.members.len() > MAX_MEMBERS {
            return Err(format!("a group has 1 to {MAX_MEMBERS} members"));
        }
        let participants: BTreeSet<OrgId> = request.participants.iter().cloned().collect();
        let directory: BTreeMap<OrgId, OrgRootKey> = creation.directory.iter().cloned().collect();
        if directory.len() != creation.directory.len()
            || directory.keys().cloned().collect::<BTreeSet<_>>() != participants
        {
            return Err("the directory must name each participant's root once".into());
        }
        let mut nodes = BTreeSet::new();
        for m in &creation.members {
            if !participants.contains(&m.org) {
                return Err(format!("member {} is of {}, not a participant", m.node, m.org));
            }
            if !nodes.insert(m.node) {
                return Err(format!("member {} is named twice", m.node));
            }
        }
        for org in &participants {
            if !creation.members.iter().any(|m| &m.org == org) {
                return Err(format!("participant {org} has no node"));
            }
        }
        if !creation.members.iter().any(|m| m.node == signer) {
            return Err("the requester is not one of the group's members".into());
        }
        if creation.channels.consensus == creation.channels.sync {
            return Err("the consensus and sync channels must differ".into());
        }
        let mut members = creation.members.clone();
        members.sort();
        let expires_at = request.policy.duration.map(|d| proposal.proposed_at.saturating_add(d));
        self.state.branch = Some(FederatedBranch {
            federation: request.federation,
            branch: request.branch.clone(),
            group: self.group,
            source: request.source.clone(),
            organizations: participants.iter().cloned().collect(),
            members,
            policy: request.policy.clone(),
            rules: request.rules.clone(),
            sync: request.sync.clone(),
            consensus: request.consensus.clone(),
            namespaces: request.namespaces.clone(),
            created_at: proposal.proposed_at,
            expires_at,
        });
        self.state.directory = directory;
        let deadline = proposal
            .deadline
            .min(proposal.proposed_at.saturating_add(GovernanceRules::DEFAULT_DEADLINE));
        let op = PendingOperation {
            proposal: id,
            index,
            proposer: signer,
            kind: ProposalKind::BranchCreation(creation.clone()),
            involved: participants,
            quorum: Quorum::All,
            heads: Vec::new(),
            deadline,
            approved: BTreeSet::new(),
            roots: BTreeMap::new(),
        };
        Ok(self.enqueue(op))
    }

    fn enqueue(&mut self, op: PendingOperation) -> Outcome {
        let awaiting = op.awaiting();
        self.events.push_back(RegistryEvent::Pending {
            proposal: op.proposal,
            index: op.index,
            awaiting: awaiting.clone(),
        });
        self.state.pending.insert(op.proposal, op);
        Outcome::Pending { awaiting }
    }

    fn propose(
        &mut self,
        index: u64,
        id: ProposalId,
        signer: NodeId,
        proposal: &ConsensusProposal,
    ) -> Result<Outcome, Rejection> {
        let Some(branch) = self.state.branch.as_ref().filter(|_| self.state.active) else {
            return Err("the branch is not created yet".into());
        };
        if branch.expires_at.is_some_and(|end| self.state.time > end) {
            return Err("the federation's duration ended".into());
        }
        let Some(me) = branch.members.iter().find(|m| m.node == signer) else {
            return Err(format!("the proposer {signer} is not a member of the group"));
        };
        if self.state.pending.len() >= MAX_PENDING {
            return Err(format!("{MAX_PENDING} operations are already pending"));
        }
        let orgs = &branch.organizations;
        let mut involved: BTreeSet<OrgId> = orgs.iter().cloned().collect();
        let mut roots = BTreeMap::new();
        let mut heads = Vec::new();
        let operation = match &proposal.kind {
            ProposalKind::FederatedMerge(merge) => {
                if !branch.policy.merge.allows(&me.org, orgs) {
                    return Err(format!("{} may not propose merges into this branch", me.org));
                }
                if merge.source_group == self.group {
                    return Err("a branch cannot be merged into itself".into());
                }
                if merge.source_heads.len() + merge.target_heads.len() > MAX_HEADS {
                    return Err(format!("a merge names at most {MAX_HEADS} heads"));
                }
                if merge.source_orgs.is_empty() || merge.source_orgs.len() > MAX_ORGS {
                    return Err(format!("a merge names 1 to {MAX_ORGS} source organizations"));
                }
                let named: BTreeSet<&OrgId> = merge.source_orgs.iter().map(|(o, _)| o).collect();
                if named.len() != merge.source_orgs.len() {
                    return Err("the merge names a source organization twice".into());
                }
                for (org, root) in &merge.source_orgs {
                    match self.state.directory.get(org) {
                        Some(known) if known != root => {
                            return Err(format!("the merge names another root for {org}"));
                        }
                        Some(_) => {}
                        None => {
                            roots.insert(org.clone(), *root);
                        }
                    }
                    involved.insert(org.clone());
                }
                heads = merge_heads(&merge.source_heads, &merge.target_heads);
                // The one commit every replica will apply: made and signed as the merge says,
                // under a key of its own that no member holds and no other merge used.
                if merge.commit.org != me.org {
                    return Err("the merge's commit names another organization".into());
                }
                merge.signed_commit().map_err(|e| format!("the merge's commit: {e}"))?;
                let key = merge.commit.author;
                if branch.members.iter().any(|m| m.node == key) {
                    return Err("the merge's commit is signed by a member's key".into());
                }
                let merge_key = |kind: &ProposalKind| match kind {
                    ProposalKind::FederatedMerge(m) => Some(m.commit.author),
                    _ => None,
                };
                if self.state.history.iter().any(|e| merge_key(&e.kind) == Some(key))
                    || self.state.pending.values().any(|p| merge_key(&p.kind) == Some(key))
                {
                    return Err("the merge's commit key was used before".into());
                }
                GovernedOperation::Merge
            }
            ProposalKind::NodeJoin(join) => {
                if !branch.policy.propose.allows(&me.org, orgs) {
                    return Err(format!("{} may not propose membership changes", me.org));
                }
                if branch.members.iter().any(|m| m.node == join.member.node) {
                    return Err(format!("{} is already a member", join.member.node));
                }
                if branch.members.len() >= MAX_MEMBERS {
                    return Err(format!("the group has {MAX_MEMBERS} members already"));
                }
                match (self.state.directory.get(&join.member.org), join.root) {
                    (Some(known), Some(root)) if *known != root => {
                        return Err(format!("the join names another root for {}", join.member.org));
                    }
                    (Some(_), _) => {}
                    (None, Some(root)) => {
                        roots.insert(join.member.org.clone(), root);
                    }
                    (None, None) => {
                        return Err(format!(
                            "{} is new to the branch: its root is needed",
                            join.member.org
                        ));
                    }
                }
                if involved.len() >= MAX_ORGS && !involved.contains(&join.member.org) {
                    return Err(format!("the branch has {MAX_ORGS} organizations already"));
                }
                involved.insert(join.member.org.clone());
                GovernedOperation::Join
            }
            ProposalKind::NodeLeave(leave) => {
                let Some(leaving) = branch.members.iter().find(|m| m.node == leave.node) else {
                    return Err(format!("{} is not a member", leave.node));
                };
                if branch.members.len() == 1 {
                    return Err("the last member cannot leave".into());
                }
                if leave.node == signer {
                    // Leaving of one's own accord needs nobody's approval.
                    let op = PendingOperation {
                        proposal: id,
                        index,
                        proposer: signer,
                        kind: proposal.kind.clone(),
                        involved: BTreeSet::new(),
                        quorum: Quorum::All,
                        heads: Vec::new(),
                        deadline: proposal.deadline,
                        approved: BTreeSet::new(),
                        roots: BTreeMap::new(),
                    };
                    self.execute(index, op);
                    return Ok(Outcome::Approved);
                }
                if !branch.policy.propose.allows(&me.org, orgs) {
                    return Err(format!("{} may not propose membership changes", me.org));
                }
                // The organization of the node taken out does not get a say.
                let org_stays =
                    branch.members.iter().any(|m| m.org == leaving.org && m.node != leave.node);
                if !org_stays {
                    involved.remove(&leaving.org);
                }
                GovernedOperation::Leave
            }
            ProposalKind::PolicyUpdate(_) | ProposalKind::SynchronizationPlan(_) => {
                if !branch.policy.propose.allows(&me.org, orgs) {
                    return Err(format!("{} may not propose policy changes", me.org));
                }
                GovernedOperation::PolicyChange
            }
            _ => return Err("this kind of proposal is not decided by a federation registry".into()),
        };
        let rule = branch.rules.rule(operation);
        let deadline = proposal.deadline.min(proposal.proposed_at.saturating_add(rule.deadline));
        let op = PendingOperation {
            proposal: id,
            index,
            proposer: signer,
            kind: proposal.kind.clone(),
            involved,
            quorum: rule.quorum,
            heads,
            deadline,
            approved: BTreeSet::new(),
            roots,
        };
        Ok(self.enqueue(op))
    }

    fn consent(
        &mut self,
        index: u64,
        signer: NodeId,
        dated: Timestamp,
        consent: &Consent,
    ) -> Result<Outcome, Rejection> {
        let Some(op) = self.state.pending.get(&consent.proposal) else {
            return Err(format!(
                "no pending proposal {}: decided, expired or unknown",
                consent.proposal.short()
            ));
        };
        if dated > op.deadline {
            return Err("the consent is dated after the proposal's deadline (late)".into());
        }
        if consent.heads != op.heads {
            return Err("the consent was made against other heads (stale)".into());
        }
        if !op.involved.contains(&consent.org) {
            return Err(format!("{} is not asked to consent to this proposal", consent.org));
        }
        if op.approved.contains(&consent.org) {
            return Err(format!("{} already answered", consent.org));
        }
        let certificate = &consent.certificate;
        if certificate.node() != signer {
            return Err("the certificate is not the signing node's".into());
        }
        if certificate.org() != &consent.org {
            return Err(format!(
                "the certificate is of {}, not {}",
                certificate.org(),
                consent.org
            ));
        }
        let Some(root) =
            self.state.directory.get(&consent.org).or_else(|| op.roots.get(&consent.org))
        else {
            return Err(format!("no root is known for {}", consent.org));
        };
        let mut anchors = TrustAnchors::new();
        anchors.pin(consent.org.clone(), *root);
        if let Err(e) = certificate.verify(&anchors, self.state.time) {
            return Err(format!("the certificate does not check out: {e}"));
        }
        let proposal = consent.proposal;
        match &consent.verdict {
            ConsentVerdict::Refuse { reason } => {
                let reason = bounded_reason(reason.clone());
                self.state.pending.remove(&proposal);
                let reason = format!("{} refused: {reason}", consent.org);
                self.events.push_back(RegistryEvent::Rejected { proposal, index, reason });
                Ok(Outcome::Approved)
            }
            ConsentVerdict::Approve => {
                let Some(op) = self.state.pending.get_mut(&proposal) else {
                    return Err("the proposal vanished".into());
                };
                op.approved.insert(consent.org.clone());
                let met = op.quorum.is_met(&op.approved, &op.involved);
                self.events.push_back(RegistryEvent::Approved {
                    proposal,
                    org: consent.org.clone(),
                    index,
                });
                if met && let Some(op) = self.state.pending.remove(&proposal) {
                    // What was checked when it was proposed may no longer hold: an operation
                    // executed meanwhile may conflict with it.
                    match self.still_valid(&op) {
                        Ok(()) => self.execute(index, op),
                        Err(reason) => {
                            let reason = format!("no longer applicable: {reason}");
                            self.events.push_back(RegistryEvent::Rejected {
                                proposal,
                                index,
                                reason,
                            });
                        }
                    }
                }
                Ok(Outcome::Approved)
            }
        }
    }

    /// Whether `op`, checked when proposed, still applies to the registry as it is now.
    fn still_valid(&self, op: &PendingOperation) -> Result<(), String> {
        let members = self.members();
        for (org, root) in &op.roots {
            if self.state.directory.get(org).is_some_and(|known| known != root) {
                return Err(format!("{org}'s root was pinned otherwise meanwhile"));
            }
        }
        match &op.kind {
            ProposalKind::NodeJoin(j) if members.iter().any(|m| m.node == j.member.node) => {
                Err(format!("{} is already a member", j.member.node))
            }
            ProposalKind::NodeJoin(_) if members.len() >= MAX_MEMBERS => {
                Err(format!("the group has {MAX_MEMBERS} members already"))
            }
            ProposalKind::NodeLeave(l) if !members.iter().any(|m| m.node == l.node) => {
                Err(format!("{} is no longer a member", l.node))
            }
            ProposalKind::NodeLeave(_) if members.len() <= 1 => {
                Err("the last member cannot leave".into())
            }
            _ => Ok(()),
        }
    }

    fn execute(&mut self, index: u64, op: PendingOperation) {
        let state = &mut self.state;
        match &op.kind {
            ProposalKind::BranchCreation(_) => state.active = true,
            ProposalKind::NodeJoin(join) => {
                if let Some(branch) = state.branch.as_mut() {
                    branch.members.push(join.member.clone());
                    branch.members.sort();
                    if !branch.organizations.contains(&join.member.org) {
                        branch.organizations.push(join.member.org.clone());
                        branch.organizations.sort();
                    }
                }
                for (org, root) in &op.roots {
                    state.directory.insert(org.clone(), *root);
                }
                state.membership_version += 1;
            }
            ProposalKind::NodeLeave(leave) => {
                if let Some(branch) = state.branch.as_mut() {
                    let org =
                        branch.members.iter().find(|m| m.node == leave.node).map(|m| m.org.clone());
                    branch.members.retain(|m| m.node != leave.node);
                    if let Some(org) = org
                        && !branch.members.iter().any(|m| m.org == org)
                    {
                        branch.organizations.retain(|o| *o != org);
                        branch.namespaces.retain(|c| c.owner != org);
                    }
                }
                state.membership_version += 1;
            }
            _ => {}
        }
        let executed = ExecutedOperation {
            proposal: op.proposal,
            proposed_at_index: op.index,
            index,
            executed_at: state.time,
            proposer: op.proposer,
            kind: op.kind,
            approved_by: op.approved.into_iter().collect(),
        };
        state.history.push(executed.clone());
        self.events.push_back(RegistryEvent::Executed(Box::new(executed)));
    }

    fn snapshot_bytes(&self) -> Vec<u8> {
        let snapshot =
            Snapshot { federation: self.federation, group: self.group, state: self.state.clone() };
        encoding::try_encode(&snapshot).unwrap_or_default()
    }

    /// Replaces the state by a snapshot's (of this federation and group). On error nothing
    /// changed.
    pub fn restore_snapshot(&mut self, bytes: &[u8]) -> Result<(), String> {
        let snapshot: Snapshot = encoding::decode_with_limit(bytes, MAX_SNAPSHOT_LEN)
            .map_err(|e| format!("registry snapshot: {e}"))?;
        if snapshot.federation != self.federation || snapshot.group != self.group {
            return Err("the snapshot is of another federation or group".into());
        }
        self.state = snapshot.state;
        self.events.clear();
        Ok(())
    }
}

impl DecisionMachine for Registry {
    fn decide(&mut self, index: u64, proposal: &Signed<ConsensusProposal>) -> Outcome {
        self.apply(index, proposal)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.snapshot_bytes()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.restore_snapshot(snapshot)
    }
}

/// A [`Registry`] shared between the consensus engine that applies the log and the host that
/// reads it. Clones share one registry.
#[derive(Debug, Clone)]
pub struct SharedRegistry(Arc<Mutex<Registry>>);

impl SharedRegistry {
    /// Shares `registry`.
    pub fn new(registry: Registry) -> Self {
        Self(Arc::new(Mutex::new(registry)))
    }

    /// Locks it (a poisoned lock is taken over: the registry's state is replaced only
    /// whole).
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DecisionMachine for SharedRegistry {
    fn decide(&mut self, index: u64, proposal: &Signed<ConsensusProposal>) -> Outcome {
        self.lock().apply(index, proposal)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.lock().snapshot_bytes()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.lock().restore_snapshot(snapshot)
    }
}

fn reject(reason: impl Into<String>) -> Outcome {
    Outcome::Rejected { reason: reason.into() }
}

fn names(orgs: &[OrgId]) -> String {
    if orgs.is_empty() {
        return "nobody".into();
    }
    orgs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
