//! The control plane's vocabulary: what a consensus group decides, and the evidence that it
//! did, checkable by anyone who knows the group's members.
//!
//! Every cross-organization decision of a federated branch is a [`ConsensusProposal`] signed
//! by its proposer and bound to the federation. The group of the branch agrees on one ordered
//! log of them; a deterministic state machine applies the log in order, so every correct
//! member reaches the same [`Outcome`]. A decision comes with [`Evidence`] of the backend
//! that decided it — for Raft, a majority of the group's voters signing their acknowledgement
//! of the same (group, term, index, chain hash) — that [`Evidence::verify`] checks with the
//! group's [`Membership`] and the federation id alone.
//!
//! The backends will live in `llmkg-consensus`; this module is the contract they share.
//!
//! ```
//! use llmkg_federation_core::consensus::{
//!     ChainHash, ChainLink, ChainPath, Evidence, GroupId, Member, Membership, RaftAck,
//!     RaftCertificate,
//! };
//! use llmkg_federation_core::{FederationId, NodeKeypair, OrgId, Signed};
//!
//! let federation = FederationId::from_name("acme-research");
//! let keys: Vec<NodeKeypair> = (1..=3).map(|i| NodeKeypair::from_secret_bytes([i; 32])).collect();
//! let org = OrgId::new("acme")?;
//! let group = GroupId::from_bytes([7; 32]);
//! let membership = Membership::new(
//!     group,
//!     keys.iter().map(|k| Member { node: k.node_id(), org: org.clone() }).collect(),
//!     Vec::new(),
//! )?;
//! // A log of two entries of term 2: the decision at index 1, then one more entry.
//! let (decision, later) = (b"create branch".to_vec(), b"join node".to_vec());
//! let prev = ChainHash::genesis(group);
//! let at_1 = prev.next(2, 1, &decision);
//! let at_2 = at_1.next(2, 2, &later);
//! // One voter acknowledges entry 1, another entry 2 (which covers entry 1 too).
//! let acks = vec![
//!     Signed::sign_crate_kind(&keys[0], &federation, RaftAck { group, term: 2, index: 1, chain: at_1 })?,
//!     Signed::sign_crate_kind(&keys[1], &federation, RaftAck { group, term: 2, index: 2, chain: at_2 })?,
//! ];
//! let path = ChainPath {
//!     index: 1,
//!     term: 2,
//!     prev,
//!     entry: decision.clone(),
//!     later: vec![ChainLink { term: 2, digest: *blake3::hash(&later).as_bytes() }],
//! };
//! let evidence = Evidence::Raft(RaftCertificate { acks, path });
//! let certified = evidence.verify(&membership, &federation)?;
//! assert_eq!((certified.term, certified.index, certified.entry), (2, 1, decision));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::commit::{CommitShapeError, CommitVerifyError};
use crate::encoding::{self, content_id};
use crate::federated::{Consent, Directory, FederatedBranchRequest, FederatedMergePolicy};
use crate::identity::{CrateSignable, sealed};
use crate::sync::FederatedSyncStrategy;
use crate::{
    BoxFuture, BranchName, ChangeSet, Commit, CommitId, FederationId, NodeId, NodeKeypair, OrgId,
    OrgRootKey, Signable, Signed, SignedCommit, StateRoot, Timestamp,
};

content_id!(
    /// A consensus group: the nodes of one federated branch that agree on its log of
    /// decisions. Derived from the request that created the branch.
    GroupId
);

content_id!(
    /// The hash chaining a group's log: each entry's chain hash covers the previous one's and
    /// the entry, so acknowledging one entry acknowledges the whole prefix.
    ChainHash
);

content_id!(
    /// A proposal: the hash of its signed envelope.
    ProposalId
);

impl ChainHash {
    const DOMAIN: &'static [u8] = b"llmkg/consensus/chain/v1";

    /// The chain hash before a group's first entry.
    pub fn genesis(group: GroupId) -> Self {
        let mut bytes = Vec::with_capacity(33);
        bytes.push(0);
        bytes.extend_from_slice(group.as_bytes());
        Self(encoding::hash_bytes(Self::DOMAIN, &bytes))
    }

    /// The chain hash after appending, to a log whose chain hash is `self`, the entry of
    /// `term` at `index` whose encoding is `entry`. Changing anything in the log up to an
    /// entry changes that entry's chain hash and every later one.
    pub fn next(&self, term: u64, index: u64, entry: &[u8]) -> Self {
        self.next_digest(term, index, blake3::hash(entry).as_bytes())
    }

    /// [`next`](Self::next) given the entry's BLAKE3 digest instead of the entry (how a chain
    /// path proves later entries without carrying them).
    pub fn next_digest(&self, term: u64, index: u64, digest: &[u8; 32]) -> Self {
        let mut bytes = Vec::with_capacity(1 + 32 + 8 + 8 + 32);
        bytes.push(1);
        bytes.extend_from_slice(&self.0);
        bytes.extend_from_slice(&term.to_le_bytes());
        bytes.extend_from_slice(&index.to_le_bytes());
        bytes.extend_from_slice(digest);
        Self(encoding::hash_bytes(Self::DOMAIN, &bytes))
    }
}

/// A node of a group, with the organization it acts for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The node.
    pub node: NodeId,
    /// Its organization.
    pub org: OrgId,
}

/// Who is in a group: the voters, who decide, and the learners, who follow and catch up
/// before they may vote. Decoding checks it like [`Membership::new`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MembershipWire")]
pub struct Membership {
    group: GroupId,
    voters: Vec<Member>,
    learners: Vec<Member>,
}

/// A membership that cannot be.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// A group needs at least one voter.
    #[error("a group needs at least one voter")]
    NoVoters,
    /// A node appears twice (as two voters, two learners, or both).
    #[error("node {0} appears more than once")]
    Duplicate(NodeId),
}

#[derive(Deserialize)]
struct MembershipWire {
    group: GroupId,
    voters: Vec<Member>,
    learners: Vec<Member>,
}

impl TryFrom<MembershipWire> for Membership {
    type Error = MembershipError;
    fn try_from(wire: MembershipWire) -> Result<Self, MembershipError> {
        Membership::new(wire.group, wire.voters, wire.learners)
    }
}

impl Membership {
    /// The membership of `group`; voters and learners are kept in node order.
    pub fn new(
        group: GroupId,
        mut voters: Vec<Member>,
        mut learners: Vec<Member>,
    ) -> Result<Self, MembershipError> {
        if voters.is_empty() {
            return Err(MembershipError::NoVoters);
        }
        voters.sort();
        learners.sort();
        let mut seen = BTreeSet::new();
        for m in voters.iter().chain(&learners) {
            if !seen.insert(m.node) {
                return Err(MembershipError::Duplicate(m.node));
            }
        }
        Ok(Self { group, voters, learners })
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The voters, in node order.
    pub fn voters(&self) -> &[Member] {
        &self.voters
    }

    /// The learners, in node order.
    pub fn learners(&self) -> &[Member] {
        &self.learners
    }

    /// Whether `node` votes.
    pub fn is_voter(&self, node: &NodeId) -> bool {
        self.voters.iter().any(|m| m.node == *node)
    }

    /// How many voters make a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// Which agreement protocol decides. No backend exists yet; the first will be
/// [`Raft`](ConsensusStrategy::Raft). An engine asked for a strategy it does not offer returns
/// [`ConsensusError::NotAvailable`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ConsensusStrategy {
    /// Crash-fault-tolerant leader-based replication.
    Raft,
    /// Byzantine-fault-tolerant agreement with quorum certificates.
    Byzantine,
    /// Eventual agreement by signed votes spread by gossip.
    Gossip,
    /// A primary protocol, and a fallback when it cannot make progress.
    Hybrid {
        /// Tried first.
        primary: Box<ConsensusStrategy>,
        /// Used when the primary cannot decide.
        fallback: Box<ConsensusStrategy>,
    },
}

/// Create a federated branch and its group: the group's first entry. The group's id is
/// [`BranchCreation::group_id`], so the entry cannot be replayed into another group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchCreation {
    /// What was asked.
    pub request: FederatedBranchRequest,
    /// The participating nodes: the group's first voters.
    pub members: Vec<Member>,
    /// The participants' organization roots, which their consents are checked against.
    pub directory: Directory,
    /// The transport channels of the branch's consensus group and of its replicas.
    pub channels: GroupChannels,
    /// Distinguishes otherwise equal creations.
    pub nonce: u64,
}

/// The transport channels one federated branch uses on every node that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupChannels {
    /// The consensus group's channel.
    pub consensus: u8,
    /// The replicas' channel.
    pub sync: u8,
}

impl BranchCreation {
    const GROUP_DOMAIN: &'static [u8] = b"llmkg/consensus/group-of-creation/v1";

    /// The group the creation founds: the hash of its encoding.
    pub fn group_id(&self) -> Result<GroupId, encoding::EncodeError> {
        Ok(GroupId(encoding::hash_bytes(Self::GROUP_DOMAIN, &encoding::try_encode(self)?)))
    }
}

/// Merge the state of a branch of another group into this group's branch. The change set is
/// computed by the proposer from both states and carried in the proposal, so every
/// organization approves exactly what will be applied, and every replica applies the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedMerge {
    /// The group of the branch merged from.
    pub source_group: GroupId,
    /// The branch merged from.
    pub source_branch: BranchName,
    /// Its heads, as the proposer saw them.
    pub source_heads: Vec<CommitId>,
    /// This branch's heads the merge applies to.
    pub target_heads: Vec<CommitId>,
    /// The source's organizations, with their roots (their consents are needed too).
    pub source_orgs: Directory,
    /// How the two states were combined.
    pub policy: FederatedMergePolicy,
    /// What the merge changes in the target's state at `target_heads`.
    pub changes: ChangeSet,
    /// The target's state root after the merge, at `target_heads`.
    pub result_root: StateRoot,
    /// The one commit that carries the merge into the target: every replica applies exactly
    /// it (see [`MergeCommit`]).
    pub commit: MergeCommit,
}

/// What a [`FederatedMerge`] needs besides its change set to make its commit: the commit
/// whose parents are the merge's `target_heads`, whose changes are its `changes` and whose
/// state root is its `result_root`, with the message [`FederatedMerge::commit_message`].
///
/// Its author is a key made for this merge alone, not the proposer's node key: the proposer
/// signs it when it proposes, and its node may go on writing to the target while the merge
/// is decided without the two commits ever counting as one author's two concurrent commits.
/// A replica admits a commit by such an author only when its registry executed the merge
/// that names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeCommit {
    /// The merge's own key.
    pub author: NodeId,
    /// The proposer's organization.
    pub org: OrgId,
    /// When the proposer made it.
    pub timestamp: Timestamp,
    /// The author's signature over the commit's id.
    #[serde(with = "crate::identity::sig_bytes")]
    pub signature: [u8; 64],
}

impl FederatedMerge {
    /// The message of the merge's commit.
    pub fn commit_message(&self) -> String {
        format!("merge of {}", self.source_branch)
    }

    /// The merge's commit, before it is signed.
    pub fn unsigned_commit(
        &self,
        author: NodeId,
        org: OrgId,
        timestamp: Timestamp,
    ) -> Result<Commit, CommitShapeError> {
        Commit::new(
            self.target_heads.clone(),
            self.changes.clone(),
            author,
            org,
            timestamp,
            self.commit_message(),
            self.result_root,
        )
    }

    /// Signs the merge's commit with `key`, a key made for this merge alone, as of
    /// `commit.org` and `commit.timestamp`: sets `commit.author` and `commit.signature`.
    pub fn sign_commit(&mut self, key: &NodeKeypair) -> Result<(), CommitVerifyError> {
        let (org, timestamp) = (self.commit.org.clone(), self.commit.timestamp);
        let signed = SignedCommit::sign(key, self.unsigned_commit(key.node_id(), org, timestamp)?)?;
        self.commit.author = key.node_id();
        self.commit.signature = *signed.signature();
        Ok(())
    }

    /// The merge's commit, rebuilt from the proposal and verified against its signature.
    pub fn signed_commit(&self) -> Result<SignedCommit, CommitVerifyError> {
        let c = &self.commit;
        let commit = self.unsigned_commit(c.author, c.org.clone(), c.timestamp)?;
        SignedCommit::assemble(commit, c.signature)
    }
}

/// Adopt a way of keeping the branch's replicas consistent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynchronizationPlan {
    /// The strategy.
    pub strategy: FederatedSyncStrategy,
    /// How often replicas reconcile, in milliseconds (0: on every change).
    pub interval_ms: u64,
}

/// Replace a governance policy of the branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyUpdate {
    /// The policy's name.
    pub policy: String,
    /// Its new version; must exceed the current one.
    pub version: u64,
    /// The policy document, opaque to consensus (governance reads it).
    #[serde(with = "crate::encoding::bytes")]
    pub document: Vec<u8>,
}

/// Let a node into the group. It catches up as a learner, then votes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeJoin {
    /// The node and its organization.
    pub member: Member,
    /// Its organization's root, when the organization is new to the branch (its consent is
    /// needed too, and checked against this root).
    pub root: Option<OrgRootKey>,
}

/// Take a node out of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLeave {
    /// The node.
    pub node: NodeId,
}

/// What a proposal asks the group to decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ProposalKind {
    /// See [`BranchCreation`].
    BranchCreation(BranchCreation),
    /// See [`FederatedMerge`].
    FederatedMerge(FederatedMerge),
    /// See [`SynchronizationPlan`].
    SynchronizationPlan(SynchronizationPlan),
    /// See [`PolicyUpdate`].
    PolicyUpdate(PolicyUpdate),
    /// See [`NodeJoin`].
    NodeJoin(NodeJoin),
    /// See [`NodeLeave`].
    NodeLeave(NodeLeave),
    /// An organization's answer to a pending proposal; see [`Consent`].
    Consent(Consent),
}

/// A decision asked of a group. Signed by its proposer ([`Signed<ConsensusProposal>`]) and so
/// bound to the federation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusProposal {
    /// The group asked.
    pub group: GroupId,
    /// What is asked.
    pub kind: ProposalKind,
    /// When it was made (the proposer's clock).
    pub proposed_at: Timestamp,
    /// After this, the state machine rejects it if it is not yet approved.
    pub deadline: Timestamp,
    /// Distinguishes otherwise equal proposals.
    pub nonce: u64,
}

impl Signable for ConsensusProposal {
    const CONTEXT: &'static str = "llmkg/consensus/proposal/v1";
}

impl sealed::Sealed for ConsensusProposal {}
impl CrateSignable for ConsensusProposal {}

impl ProposalId {
    const DOMAIN: &'static [u8] = b"llmkg/consensus/proposal-id/v1";

    /// The id of a signed proposal: the hash of its envelope (value, federation, signer,
    /// signature).
    pub fn of(proposal: &Signed<ConsensusProposal>) -> Result<Self, encoding::EncodeError> {
        Ok(Self(encoding::hash_bytes(Self::DOMAIN, &proposal.encode()?)))
    }
}

/// What the group's state machine made of a proposal: the same on every correct member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The approvals the group's rules demand were in the log in time.
    Approved,
    /// Refused, or not approved by the deadline.
    Rejected {
        /// Why, in words.
        reason: String,
    },
    /// Accepted into the log, waiting for the approvals its rules demand: a later entry
    /// decides it (approved when they are in, rejected on a refusal or at its deadline).
    Pending {
        /// The organizations whose approval would count.
        awaiting: Vec<OrgId>,
    },
}

/// A voter's acknowledgement that its log holds entry `index` of `term` with chain hash
/// `chain` (and therefore the whole prefix the chain hash covers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftAck {
    /// The group.
    pub group: GroupId,
    /// The leader's term the entry was appended in.
    pub term: u64,
    /// The entry's position in the log.
    pub index: u64,
    /// The chain hash at that entry.
    pub chain: ChainHash,
}

impl Signable for RaftAck {
    const CONTEXT: &'static str = "llmkg/consensus/raft-ack/v1";
}

impl sealed::Sealed for RaftAck {}
impl CrateSignable for RaftAck {}

/// The most later entries a [`ChainPath`] may carry (a certificate's acknowledgements lie at
/// most this far past the entry it proves).
pub const MAX_CHAIN_PATH: usize = 1 << 16;

/// One later entry of a [`ChainPath`]: its term and the BLAKE3 digest of its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    /// The entry's term.
    pub term: u64,
    /// `blake3(entry)`.
    pub digest: [u8; 32],
}

/// The hash chain from one entry of a group's log up to the entries its acknowledgements
/// name: the entry itself (so a verifier sees what was decided), the chain hash before it,
/// and a digest of each later entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPath {
    /// The entry's position.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The chain hash before it (at `index - 1`).
    pub prev: ChainHash,
    /// The entry's encoding, as the log holds it.
    #[serde(with = "crate::encoding::bytes")]
    pub entry: Vec<u8>,
    /// The entries after it, in order, as far as the furthest acknowledgement.
    pub later: Vec<ChainLink>,
}

impl ChainPath {
    /// The (term, chain hash) at each index the path covers, from `index` on.
    fn chains(&self) -> Vec<(u64, u64, ChainHash)> {
        let mut out = Vec::with_capacity(self.later.len() + 1);
        let mut chain = self.prev.next(self.term, self.index, &self.entry);
        out.push((self.index, self.term, chain));
        let mut index = self.index;
        for link in &self.later {
            index = index.saturating_add(1);
            chain = chain.next_digest(link.term, index, &link.digest);
            out.push((index, link.term, chain));
        }
        out
    }
}

/// A Raft decision's evidence: signed acknowledgements by a majority of the group's voters of
/// entries at or after the decided one, and the hash chain linking the decided entry to each
/// of them. Acknowledging an entry acknowledges the prefix its chain hash covers, so the
/// acknowledgements need not all name the same entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftCertificate {
    /// The acknowledgements.
    pub acks: Vec<Signed<RaftAck>>,
    /// The chain from the decided entry to every acknowledged one.
    pub path: ChainPath,
}

/// How a decision was reached, in a form a third party can check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Evidence {
    /// See [`RaftCertificate`].
    Raft(RaftCertificate),
}

/// What a piece of evidence certifies: that the group's log holds this entry, and therefore
/// the prefix its chain hash covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified {
    /// The group.
    pub group: GroupId,
    /// The entry's term.
    pub term: u64,
    /// The entry's index.
    pub index: u64,
    /// The chain hash at the entry.
    pub chain: ChainHash,
    /// The entry's encoding: what was decided.
    pub entry: Vec<u8>,
    /// The voters whose acknowledgements count, in node order.
    pub signers: Vec<NodeId>,
}

/// Evidence that does not prove what it claims. Nothing is certified.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// No acknowledgement at all.
    #[error("the evidence is empty")]
    Empty,
    /// An acknowledgement was signed for another federation.
    #[error("an acknowledgement was signed for another federation")]
    OtherFederation,
    /// An acknowledgement is for another group than the membership's.
    #[error("an acknowledgement is for another group")]
    OtherGroup,
    /// An acknowledgement names an entry the chain path does not lead to.
    #[error("an acknowledgement is of an entry off the chain path")]
    Mismatch,
    /// The chain path is longer than [`MAX_CHAIN_PATH`].
    #[error("the chain path is longer than {MAX_CHAIN_PATH} entries")]
    PathTooLong,
    /// A signer is not a voter of the group.
    #[error("{0} is not a voter of the group")]
    NotAVoter(NodeId),
    /// Fewer distinct voters than a majority signed.
    #[error("{signed} distinct voters signed, a majority is {quorum}")]
    NoQuorum {
        /// Distinct voters that signed.
        signed: usize,
        /// A majority of the voters.
        quorum: usize,
    },
}

impl Evidence {
    /// Checks the evidence against the group's membership and the federation: each
    /// acknowledgement's signature (already checked when it was built or decoded) was made for
    /// `federation` and for `membership`'s group, each names an entry the chain path leads to
    /// (same index, term and chain hash), every signer is a voter, and a majority of distinct
    /// voters signed. What is certified is the path's first entry.
    pub fn verify(
        &self,
        membership: &Membership,
        federation: &FederationId,
    ) -> Result<Certified, EvidenceError> {
        match self {
            Evidence::Raft(certificate) => certificate.verify(membership, federation),
        }
    }
}

impl RaftCertificate {
    fn verify(
        &self,
        membership: &Membership,
        federation: &FederationId,
    ) -> Result<Certified, EvidenceError> {
        if self.acks.is_empty() {
            return Err(EvidenceError::Empty);
        }
        if self.path.later.len() > MAX_CHAIN_PATH {
            return Err(EvidenceError::PathTooLong);
        }
        let chains = self.path.chains();
        let mut signers = BTreeSet::new();
        for ack in &self.acks {
            let value = ack.open(federation).map_err(|_| EvidenceError::OtherFederation)?;
            if value.group != membership.group() {
                return Err(EvidenceError::OtherGroup);
            }
            let offset = value.index.checked_sub(self.path.index).ok_or(EvidenceError::Mismatch)?;
            let on_path = usize::try_from(offset).ok().and_then(|o| chains.get(o));
            if on_path != Some(&(value.index, value.term, value.chain)) {
                return Err(EvidenceError::Mismatch);
            }
            let signer = ack.signer();
            if !membership.is_voter(&signer) {
                return Err(EvidenceError::NotAVoter(signer));
            }
            signers.insert(signer);
        }
        let quorum = membership.quorum();
        if signers.len() < quorum {
            return Err(EvidenceError::NoQuorum { signed: signers.len(), quorum });
        }
        let (index, term, chain) = chains[0];
        Ok(Certified {
            group: membership.group(),
            term,
            index,
            chain,
            entry: self.path.entry.clone(),
            signers: signers.into_iter().collect(),
        })
    }
}

/// A decision as an engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusResult {
    /// The proposal decided.
    pub proposal: ProposalId,
    /// Whether the outcome is [`Outcome::Approved`].
    pub approved: bool,
    /// The outcome.
    pub outcome: Outcome,
    /// The protocol that decided.
    pub strategy: ConsensusStrategy,
    /// The voters whose acknowledgements are in the evidence.
    pub participants: Vec<NodeId>,
    /// When the deciding entry was committed (the reporting node's clock).
    pub decided_at: Timestamp,
    /// The entry's position in the group's log.
    pub index: u64,
    /// The evidence.
    pub evidence: Evidence,
}

/// An entry of a group's log, in log order, as [`ConsensusEngine::next_decided`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidedEntry {
    /// Its position.
    pub index: u64,
    /// The proposal it holds.
    pub proposal: Signed<ConsensusProposal>,
    /// What the state machine made of it.
    pub outcome: Outcome,
}

/// How an engine sees its group now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The current leader, if the backend has one and knows it.
    pub leader: Option<NodeId>,
    /// The last index this node knows to be decided.
    pub decided: u64,
    /// The last index this node has applied.
    pub applied: u64,
    /// Voters this node has heard from recently (itself included).
    pub reachable_voters: usize,
}

impl Health {
    /// A health report.
    pub fn new(
        leader: Option<NodeId>,
        decided: u64,
        applied: u64,
        reachable_voters: usize,
    ) -> Self {
        Self { leader, decided, applied, reachable_voters }
    }
}

/// Why a proposal or a query failed. Each variant says whether the proposal may still be
/// decided.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConsensusError {
    /// No decision within the timeout. The proposal may still be decided later (follow
    /// [`ConsensusEngine::next_decided`]); a timeout is not a rejection.
    #[error("no decision within {after:?}; the proposal may still be decided")]
    Timeout {
        /// The timeout that expired.
        after: Duration,
    },
    /// The engine does not offer this strategy. Nothing was proposed.
    #[error("consensus strategy {0:?} is not available")]
    NotAvailable(ConsensusStrategy),
    /// The proposal is for another group, or its signature is for another federation.
    /// Nothing was proposed.
    #[error("the proposal is not for this group and federation")]
    WrongGroup,
    /// This node cannot propose now (it is not a voter, or no leader is known). Nothing was
    /// proposed; try again or elsewhere.
    #[error("cannot propose now: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
        /// A node that may accept it, if known.
        leader: Option<NodeId>,
    },
    /// The proposal's entry was replaced in the log by a new leader's: it will not be
    /// decided (unless proposed again).
    #[error("the proposal was lost in a change of leader; propose it again")]
    Lost,
    /// The engine has stopped. The proposal may or may not have been decided.
    #[error("consensus engine closed")]
    Closed,
    /// [`ConsensusEngine::next_decided`] fell so far behind that decided entries were no
    /// longer buffered; the next call continues after `through`.
    #[error("decided entries up to index {through} were no longer buffered")]
    Lagged {
        /// The last index that was skipped.
        through: u64,
    },
    /// A failure of the engine's storage or transport.
    #[error("consensus engine failure: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One consensus group's agreement, as a node's host uses it. Object safe: a host holds
/// `Arc<dyn ConsensusEngine>`, whatever the backend.
pub trait ConsensusEngine: Send + Sync {
    /// The protocol this engine runs.
    fn strategy(&self) -> ConsensusStrategy;

    /// The group's membership as this node last knew it.
    fn membership(&self) -> Membership;

    /// How this node sees the group now.
    fn health(&self) -> Health;

    /// Proposes `proposal` and waits up to `timeout` for its decision.
    fn propose(
        &self,
        proposal: Signed<ConsensusProposal>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<ConsensusResult, ConsensusError>>;

    /// The next decided entry, in log order, from the first one this handle has not seen.
    fn next_decided(&self) -> BoxFuture<'_, Result<DecidedEntry, ConsensusError>>;

    /// Moves the group to `membership`, a change the host's [`DecisionMachine`] already
    /// decided (a node joining or leaving). Only a node that can order the change starts it
    /// (for Raft, the leader; elsewhere [`ConsensusError::Unavailable`] names the leader);
    /// it returns once the change is under way. A node that is to become a voter must have
    /// caught up as a learner first: add it as a learner, then make it a voter.
    fn change_membership(
        &self,
        membership: Membership,
    ) -> BoxFuture<'_, Result<(), ConsensusError>>;
}

/// The host's deterministic decision rules behind a group's log: what the group makes of
/// each proposal, applied in log order on every member. A backend runs one per group
/// (the federation's [`Registry`](crate::registry::Registry) is one).
pub trait DecisionMachine: Send + 'static {
    /// The outcome of `proposal`, decided at `index`. Must depend only on the proposals
    /// applied before (no clocks, no local policy), so every member decides alike.
    fn decide(&mut self, index: u64, proposal: &Signed<ConsensusProposal>) -> Outcome;

    /// The machine's whole state.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state by a snapshot's. On error the state is unchanged.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}

impl<M: DecisionMachine + ?Sized> DecisionMachine for Box<M> {
    fn decide(&mut self, index: u64, proposal: &Signed<ConsensusProposal>) -> Outcome {
        (**self).decide(index, proposal)
    }

    fn snapshot(&self) -> Vec<u8> {
        (**self).snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        (**self).restore(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeKeypair;

    fn keys(n: u8) -> Vec<NodeKeypair> {
        (1..=n).map(|i| NodeKeypair::from_secret_bytes([i; 32])).collect()
    }

    fn membership(keys: &[NodeKeypair], learners: &[NodeKeypair]) -> Membership {
        let member = |k: &NodeKeypair| Member { node: k.node_id(), org: OrgId::new("o").unwrap() };
        Membership::new(
            GroupId::from_bytes([1; 32]),
            keys.iter().map(member).collect(),
            learners.iter().map(member).collect(),
        )
        .unwrap()
    }

    /// A log of `n` entries of term 1 in group 1: the chain path proving entry `index`.
    fn path(index: u64, n: u64) -> ChainPath {
        let group = GroupId::from_bytes([1; 32]);
        let entry = |i: u64| format!("entry {i}").into_bytes();
        let mut prev = ChainHash::genesis(group);
        for i in 1..index {
            prev = prev.next(1, i, &entry(i));
        }
        let later = (index + 1..=n)
            .map(|i| ChainLink { term: 1, digest: *blake3::hash(&entry(i)).as_bytes() })
            .collect();
        ChainPath { index, term: 1, prev, entry: entry(index), later }
    }

    /// The acknowledgement of entry `index` on `path`.
    fn ack(path: &ChainPath, index: u64) -> RaftAck {
        let (index, term, chain) = path.chains()[(index - path.index) as usize];
        RaftAck { group: GroupId::from_bytes([1; 32]), term, index, chain }
    }

    fn certificate(
        signers: &[&NodeKeypair],
        fed: &FederationId,
        path: &ChainPath,
        index: u64,
    ) -> Evidence {
        let acks = signers
            .iter()
            .map(|k| Signed::sign_crate_kind(*k, fed, ack(path, index)).unwrap())
            .collect();
        Evidence::Raft(RaftCertificate { acks, path: path.clone() })
    }

    #[test]
    fn a_majority_of_voters_certifies_an_entry() {
        let fed = FederationId::from_name("f");
        let k = keys(5);
        let m = membership(&k, &[]);
        assert_eq!(m.quorum(), 3);
        let p = path(10, 10);
        let good = certificate(&[&k[0], &k[2], &k[4]], &fed, &p, 10);
        let certified = good.verify(&m, &fed).unwrap();
        assert_eq!((certified.term, certified.index, certified.signers.len()), (1, 10, 3));
        assert_eq!(certified.entry, b"entry 10");
        // Two are not enough, and the same voter twice is one voter.
        let few = certificate(&[&k[0], &k[2]], &fed, &p, 10);
        assert_eq!(few.verify(&m, &fed), Err(EvidenceError::NoQuorum { signed: 2, quorum: 3 }));
        let twice = certificate(&[&k[0], &k[0], &k[2]], &fed, &p, 10);
        assert!(matches!(twice.verify(&m, &fed), Err(EvidenceError::NoQuorum { .. })));
        assert_eq!(
            Evidence::Raft(RaftCertificate { acks: vec![], path: p }).verify(&m, &fed),
            Err(EvidenceError::Empty)
        );
    }

    #[test]
    fn acknowledgements_of_later_entries_certify_an_earlier_one_through_the_path() {
        let fed = FederationId::from_name("f");
        let k = keys(3);
        let m = membership(&k, &[]);
        let p = path(4, 9);
        let acks = vec![
            Signed::sign_crate_kind(&k[0], &fed, ack(&p, 9)).unwrap(),
            Signed::sign_crate_kind(&k[1], &fed, ack(&p, 6)).unwrap(),
        ];
        let evidence = Evidence::Raft(RaftCertificate { acks: acks.clone(), path: p.clone() });
        let certified = evidence.verify(&m, &fed).unwrap();
        assert_eq!((certified.index, certified.entry.as_slice()), (4, &b"entry 4"[..]));
        // Another entry in place of the decided one breaks the path to every acknowledgement.
        let mut swapped = p.clone();
        swapped.entry = b"entry X".to_vec();
        let forged = Evidence::Raft(RaftCertificate { acks: acks.clone(), path: swapped });
        assert_eq!(forged.verify(&m, &fed), Err(EvidenceError::Mismatch));
        // So does changing a later entry's term, or cutting the path short of an acknowledgement.
        let mut retermed = p.clone();
        retermed.later[0].term = 2;
        let forged = Evidence::Raft(RaftCertificate { acks: acks.clone(), path: retermed });
        assert_eq!(forged.verify(&m, &fed), Err(EvidenceError::Mismatch));
        let mut short = p.clone();
        short.later.truncate(2);
        let forged = Evidence::Raft(RaftCertificate { acks: acks.clone(), path: short });
        assert_eq!(forged.verify(&m, &fed), Err(EvidenceError::Mismatch));
        // An acknowledgement of an entry before the decided one certifies nothing about it.
        let early = path(2, 9);
        let mut before = vec![Signed::sign_crate_kind(&k[0], &fed, ack(&early, 2)).unwrap()];
        before.push(acks[0].clone());
        let forged = Evidence::Raft(RaftCertificate { acks: before, path: p });
        assert_eq!(forged.verify(&m, &fed), Err(EvidenceError::Mismatch));
    }

    #[test]
    fn learners_strangers_other_entries_groups_and_federations_do_not_count() {
        let fed = FederationId::from_name("f");
        let k = keys(5);
        let m = membership(&k[..3], &k[3..4]);
        let p = path(1, 2);
        let learner = certificate(&[&k[0], &k[3]], &fed, &p, 1);
        assert_eq!(learner.verify(&m, &fed), Err(EvidenceError::NotAVoter(k[3].node_id())));
        let stranger = certificate(&[&k[0], &k[4]], &fed, &p, 1);
        assert_eq!(stranger.verify(&m, &fed), Err(EvidenceError::NotAVoter(k[4].node_id())));
        let Evidence::Raft(mut mixed) = certificate(&[&k[0]], &fed, &p, 1);
        let mut off_path = ack(&p, 2);
        off_path.chain = ChainHash::from_bytes([3; 32]);
        mixed.acks.push(Signed::sign_crate_kind(&k[1], &fed, off_path).unwrap());
        assert_eq!(Evidence::Raft(mixed).verify(&m, &fed), Err(EvidenceError::Mismatch));
        let mut other = ack(&p, 1);
        other.group = GroupId::from_bytes([2; 32]);
        let acks = [&k[0], &k[1]]
            .iter()
            .map(|key| Signed::sign_crate_kind(*key, &fed, other.clone()).unwrap())
            .collect();
        let other_group = Evidence::Raft(RaftCertificate { acks, path: p.clone() });
        assert_eq!(other_group.verify(&m, &fed), Err(EvidenceError::OtherGroup));
        let elsewhere = certificate(&[&k[0], &k[1]], &FederationId::from_name("g"), &p, 1);
        assert_eq!(elsewhere.verify(&m, &fed), Err(EvidenceError::OtherFederation));
        let mut long = p.clone();
        long.later = vec![ChainLink { term: 1, digest: [0; 32] }; MAX_CHAIN_PATH + 1];
        let too_long = certificate(&[&k[0], &k[1]], &fed, &long, 1);
        assert_eq!(too_long.verify(&m, &fed), Err(EvidenceError::PathTooLong));
    }

    #[test]
    fn evidence_with_any_byte_flipped_does_not_verify() {
        let fed = FederationId::from_name("f");
        let k = keys(3);
        let m = membership(&k, &[]);
        let p = path(7, 8);
        let Evidence::Raft(mut certificate) = certificate(&[&k[0]], &fed, &p, 7);
        certificate.acks.push(Signed::sign_crate_kind(&k[1], &fed, ack(&p, 8)).unwrap());
        let evidence = Evidence::Raft(certificate);
        let original = evidence.verify(&m, &fed).unwrap();
        let bytes = encoding::try_encode(&evidence).unwrap();
        let mut decoded_ok = 0;
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut flipped = bytes.clone();
                flipped[i] ^= bit;
                // Decoding checks every signature; if it decodes, it must not certify the same.
                if let Ok(e) = encoding::decode_with_limit::<Evidence>(&flipped, 1 << 16) {
                    decoded_ok += 1;
                    assert_ne!(
                        e.verify(&m, &fed).ok(),
                        Some(original.clone()),
                        "byte {i} bit {bit:#x}"
                    );
                }
            }
        }
        assert!(decoded_ok < bytes.len(), "most flips must fail to decode at all");
    }

    #[test]
    fn proposals_are_signed_for_a_federation_and_hosts_cannot_forge_crate_kinds() {
        let fed = FederationId::from_name("f");
        let k = NodeKeypair::from_secret_bytes([1; 32]);
        let proposal = ConsensusProposal {
            group: GroupId::from_bytes([1; 32]),
            kind: ProposalKind::NodeLeave(NodeLeave { node: k.node_id() }),
            proposed_at: Timestamp::from_micros(1_000),
            deadline: Timestamp::from_micros(2_000),
            nonce: 7,
        };
        // The public signing path refuses the reserved kind...
        assert!(Signed::sign(&k, &fed, proposal.clone()).is_err());
        // ...the crate-kind path signs it, bound to the federation.
        let signed = Signed::sign_crate_kind(&k, &fed, proposal.clone()).unwrap();
        assert_eq!(signed.open(&fed).unwrap(), &proposal);
        assert!(signed.open(&FederationId::from_name("g")).is_err());
        let bytes = signed.encode().unwrap();
        let back = Signed::<ConsensusProposal>::decode(&bytes, &fed).unwrap();
        assert_eq!(ProposalId::of(&back).unwrap(), ProposalId::of(&signed).unwrap());
    }

    #[test]
    fn the_chain_hash_binds_the_whole_prefix() {
        let group = GroupId::from_bytes([1; 32]);
        let chain = |entries: &[(u64, &[u8])]| {
            entries
                .iter()
                .enumerate()
                .fold(ChainHash::genesis(group), |h, (i, (term, e))| h.next(*term, i as u64 + 1, e))
        };
        let log: [(u64, &[u8]); 3] = [(1, b"a"), (1, b"b"), (2, b"c")];
        assert_eq!(chain(&log), chain(&log));
        // Any change anywhere in the prefix: the entry, its term, or the order.
        assert_ne!(chain(&log), chain(&[(1, b"x"), (1, b"b"), (2, b"c")]));
        assert_ne!(chain(&log), chain(&[(2, b"a"), (1, b"b"), (2, b"c")]));
        assert_ne!(chain(&log), chain(&[(1, b"b"), (1, b"a"), (2, b"c")]));
        // Another group's log of the same entries.
        let other = ChainHash::genesis(GroupId::from_bytes([2; 32])).next(1, 1, b"a");
        assert_ne!(chain(&log[..1]), other);
        // The index is bound too.
        let h = ChainHash::genesis(group);
        assert_ne!(h.next(1, 1, b"a"), h.next(1, 2, b"a"));
    }

    #[test]
    fn memberships_are_checked() {
        let k = keys(2);
        let m = |v: &[NodeKeypair], l: &[NodeKeypair]| {
            let member =
                |k: &NodeKeypair| Member { node: k.node_id(), org: OrgId::new("o").unwrap() };
            Membership::new(
                GroupId::from_bytes([1; 32]),
                v.iter().map(member).collect(),
                l.iter().map(member).collect(),
            )
        };
        assert_eq!(m(&[], &k), Err(MembershipError::NoVoters));
        assert_eq!(m(&k, &k[..1]), Err(MembershipError::Duplicate(k[0].node_id())));
        assert_eq!(m(&k, &[]).unwrap().quorum(), 2);
        // A membership from the wire is checked the same way.
        let good = m(&k, &[]).unwrap();
        let bytes = encoding::try_encode(&good).unwrap();
        assert_eq!(encoding::decode_with_limit::<Membership>(&bytes, 4096).unwrap(), good);
        let member = |k: &NodeKeypair| Member { node: k.node_id(), org: OrgId::new("o").unwrap() };
        let twice = (
            GroupId::from_bytes([1; 32]),
            vec![member(&k[0]), member(&k[0])],
            Vec::<Member>::new(),
        );
        let bytes = encoding::try_encode(&twice).unwrap();
        assert!(encoding::decode_with_limit::<Membership>(&bytes, 4096).is_err());
    }
}
