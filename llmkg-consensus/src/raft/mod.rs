//! Raft, as a sans-io core.
//!
//! [`Raft`] is one member of one consensus group: a plain state machine that the host drives
//! through [`Protocol`] (messages in, timeouts, transmits and events out) and through its own
//! requests ([`propose`](Raft::propose), [`change_membership`](Raft::change_membership),
//! [`transfer_leadership`](Raft::transfer_leadership)). It never reads a clock or OS
//! randomness and persists through a [`KvStore`] whose writes are durable when they return.
//!
//! What it implements, after the Raft paper and what raft-rs and etcd learned since:
//!
//! - **Elections** with randomized timeouts from the seeded RNG, **pre-vote** (a node first
//!   asks whether it could win, without raising anyone's term) and **check-quorum** (a
//!   leader that has not heard from a majority within an election timeout steps down, and a
//!   follower that heard from its leader within the minimum election timeout refuses to vote
//!   for anyone else): a node cut off and rejoining does not depose a healthy leader.
//!   **Leadership transfer** hands over to a caught-up voter.
//! - **Replication** with batches bounded in entries and bytes, pipelining up to
//!   [`RaftConfig::max_inflight`] appends per follower, fast back-off on conflicts (the
//!   follower names the last index of a term no newer than the leader's, the leader skips
//!   whole terms), and commitment only through an entry of the leader's own term (the
//!   paper's Figure 8); a new leader appends a no-op to commit its predecessors' entries.
//! - **Persistence before dependent messages**: the term and vote are written before a vote
//!   or a campaign leaves, entries before they are acknowledged (a follower's) or counted
//!   (the leader's own). Every write goes through [`DurableLog`]; a failed write changes
//!   nothing and the message that depended on it is not sent.
//! - **Snapshots**: once [`RaftConfig::snapshot_threshold`] entries were applied since the
//!   last one, the host state machine is snapshotted and the log compacted up to the applied
//!   index (never further). A follower behind the leader's snapshot receives it in chunks of
//!   at most [`RaftConfig::snapshot_chunk_len`] bytes, one in flight at a time.
//! - **Membership changes by joint consensus**, one in flight: the leader appends the joint
//!   configuration, and once it commits, the final one (also when a snapshot taken as it
//!   committed holds it). New voters must be learners that have caught up. A leader that is
//!   not a voter of the final configuration steps down.
//! - **Replication flow** per follower: probing (one append in flight, sent again after each
//!   heartbeat answer even when it carries nothing new, until one is accepted), then
//!   pipelined replication (up to [`RaftConfig::max_inflight`] appends), or a snapshot.
//! - **Verifiable commits**: the log is hash-chained ([`ChainHash`]); a follower accepting an
//!   append signs a [`RaftAck`] of (group, term, index, chain hash) of its last matching
//!   entry. The leader checks every acknowledgement against its own log before counting it,
//!   and the acknowledgements that certify its commit index travel to the followers, so
//!   every member can produce [`Evidence`] for any entry it applied ([`Raft::evidence`]).
//!
//! Messages name their group; a node drops (and counts in [`RaftMetrics`]) messages for
//! another group, malformed entries, acknowledgements that do not match its log, and votes
//! from nodes that are not voters.

mod message;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::consensus::{
    ChainHash, ChainLink, ChainPath, Evidence, GroupId, Membership, RaftAck, RaftCertificate,
};
use llmkg_federation_core::{
    FederationId, HostInfo, KvStore, NodeId, NodeKeypair, Protocol, Signed, Time, Transmit,
    encoding,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use message::SnapshotBlob;
pub use message::{
    AppendResult, Configuration, EntryKind, RaftBody, RaftMessage, SnapshotChunk, WireEntry,
};

use crate::log::{DurableLog, LogEntry, LogError, SnapshotPoint};

/// Reads a snapshot as Raft stores it ([`DurableLog::snapshot_data`]): the configuration in
/// force at its point and the state machine's snapshot. For inspection tools and tests; a
/// node restores its own snapshot when it opens.
pub fn decode_snapshot(data: &[u8]) -> Result<(Configuration, Vec<u8>), RaftError> {
    let blob: SnapshotBlob = encoding::decode_with_limit(data, data.len())
        .map_err(|e| RaftError::Snapshot(e.to_string()))?;
    Ok((blob.config, blob.state))
}

/// The host's deterministic state machine: applies committed commands in log order.
///
/// Every member applies the same commands in the same order, so a state machine that is a
/// function of its commands reaches the same state and outputs everywhere. It must not read
/// clocks, randomness or local configuration.
pub trait StateMachine {
    /// What applying a command produces (reported in [`RaftEvent::Applied`]).
    type Output;

    /// Applies the command of entry `index`.
    fn apply(&mut self, index: u64, command: &[u8]) -> Self::Output;

    /// The whole state, as bytes [`restore`](StateMachine::restore) accepts.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state by a snapshot's.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}

/// Settings of a [`Raft`] node. The defaults suit a LAN or loopback deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RaftConfig {
    /// The shortest election timeout (also the leader lease and the check-quorum period).
    /// Default 150 ms.
    pub election_timeout_min: Duration,
    /// The longest election timeout; each timeout is drawn uniformly in between. Default
    /// 300 ms.
    pub election_timeout_max: Duration,
    /// How often a leader sends heartbeats. Default 50 ms.
    pub heartbeat_interval: Duration,
    /// The most entries in one append. Default 512.
    pub max_append_entries: usize,
    /// The most payload bytes in one append (after the first entry), also capped at half the
    /// host's maximum message length. Default 1 MiB.
    pub max_append_bytes: usize,
    /// Appends in flight to one follower before the leader waits for acknowledgements.
    /// Default 8.
    pub max_inflight: usize,
    /// Applied entries since the last snapshot that trigger a new one. Default 8,192.
    pub snapshot_threshold: u64,
    /// The largest snapshot chunk. Default 256 KiB.
    pub snapshot_chunk_len: usize,
    /// The largest snapshot accepted from a leader. Default 32 MiB.
    pub max_snapshot_len: u64,
    /// Pre-vote before campaigning. Default on.
    pub pre_vote: bool,
    /// Leaders step down without a majority, followers honour a lease. Default on.
    pub check_quorum: bool,
    /// Followers sign their acknowledgements (needed for [`Raft::evidence`]). Default on.
    pub signed_acks: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            heartbeat_interval: Duration::from_millis(50),
            max_append_entries: 512,
            max_append_bytes: 1 << 20,
            max_inflight: 8,
            snapshot_threshold: 8192,
            snapshot_chunk_len: 256 << 10,
            max_snapshot_len: 32 << 20,
            pre_vote: true,
            check_quorum: true,
            signed_acks: true,
        }
    }
}

/// Who a node is and what group it belongs to.
#[derive(Debug)]
pub struct RaftSetup {
    /// The node's signing key (its id is the public key).
    pub keypair: NodeKeypair,
    /// The federation acknowledgements are signed for.
    pub federation: FederationId,
    /// The group.
    pub group: GroupId,
    /// The group's first configuration, for its founding members (pass the same on every
    /// start); `None` for a node that joins later and learns the configuration from the
    /// leader. Ignored once the node holds a snapshot.
    pub bootstrap: Option<Configuration>,
    /// Settings.
    pub config: RaftConfig,
    /// Seeds the election timeouts.
    pub seed: u64,
}

/// Why a node could not be opened.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RaftError {
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The stored snapshot could not be restored.
    #[error("the stored snapshot does not restore: {0}")]
    Snapshot(String),
    /// A stored entry does not decode.
    #[error("stored entry {0} does not decode")]
    Entry(u64),
}

/// Why a request was refused. Nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// Only the leader appends; this is who this node thinks leads, if anyone.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// Leadership is being handed over.
    #[error("leadership is being transferred")]
    Transferring,
    /// A membership change is still in flight.
    #[error("a membership change is already in flight")]
    ChangeInFlight,
    /// A new voter has not caught up as a learner.
    #[error("{0} must be a caught-up learner before it can vote")]
    NotCaughtUp(NodeId),
    /// The membership asked for is not valid.
    #[error("invalid membership: {0}")]
    InvalidMembership(String),
    /// The target of a transfer is not another voter.
    #[error("{0} is not another voter")]
    NotAVoter(NodeId),
    /// A command is longer than one append may carry.
    #[error("a command of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The write failed (nothing was written).
    #[error("storage: {0}")]
    Storage(String),
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks whether it could win an election.
    PreCandidate,
    /// Campaigns.
    Candidate,
    /// Leads.
    Leader,
}

/// What an applied entry was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied<O> {
    /// A leader's no-op.
    Noop,
    /// A command, and what the state machine produced.
    Command(O),
    /// A configuration.
    Config(Configuration),
}

/// What a node reports to its host.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RaftEvent<O> {
    /// Entry `index` was committed and applied.
    Applied {
        /// Its index.
        index: u64,
        /// Its term.
        term: u64,
        /// The chain hash after it.
        chain: ChainHash,
        /// What it was.
        entry: Applied<O>,
    },
    /// The node's role, term or known leader changed.
    RoleChanged {
        /// The term.
        term: u64,
        /// The role.
        role: Role,
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// A snapshot from the leader replaced the state up to `index`.
    SnapshotInstalled {
        /// What it covers.
        index: u64,
    },
    /// A write failed; what depended on it was not done.
    StorageFailed {
        /// The error.
        error: String,
    },
}

/// Counts of what a node did and refused. Counts only grow (within one incarnation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RaftMetrics {
    /// Messages for another group, dropped.
    pub wrong_group: u64,
    /// Malformed or impossible messages (entries that do not decode or do not chain,
    /// indices past the log, oversized snapshots), dropped.
    pub bad_messages: u64,
    /// Acknowledgements missing, forged, for another federation or group, or not matching
    /// the leader's log, refused.
    pub bad_acks: u64,
    /// Votes and pre-votes from nodes that are not voters, dropped.
    pub stranger_votes: u64,
    /// Vote requests ignored because a leader was heard within the lease.
    pub votes_ignored_in_lease: u64,
    /// Failed storage writes.
    pub storage_failures: u64,
    /// Pre-vote rounds started.
    pub pre_campaigns: u64,
    /// Elections started.
    pub campaigns: u64,
    /// Times this node became leader.
    pub became_leader: u64,
    /// Snapshots taken of the local state machine.
    pub snapshots_taken: u64,
    /// Snapshot chunks sent.
    pub snapshot_chunks_sent: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Acknowledgements signed.
    pub acks_signed: u64,
}

#[derive(Debug, Clone)]
enum Flow {
    Probe { paused: bool },
    Replicate,
    Snapshot { point: SnapshotPoint, data: Arc<Vec<u8>>, offset: u64 },
}

#[derive(Debug, Clone)]
struct Progress {
    matched: u64,
    next: u64,
    flow: Flow,
    inflight: VecDeque<u64>,
    active: bool,
    ack: Option<Signed<RaftAck>>,
    commit_sent: u64,
    matched_at_heartbeat: u64,
}

impl Progress {
    fn new(next: u64) -> Self {
        Self {
            matched: 0,
            next,
            flow: Flow::Probe { paused: false },
            inflight: VecDeque::new(),
            active: false,
            ack: None,
            commit_sent: 0,
            matched_at_heartbeat: 0,
        }
    }

    fn probe(&mut self, next: u64) {
        self.next = next.max(self.matched + 1);
        self.flow = Flow::Probe { paused: false };
        self.inflight.clear();
    }
}

#[derive(Debug)]
struct LeaderState {
    progress: BTreeMap<NodeId, Progress>,
    transfer: Option<(NodeId, Time)>,
    heartbeat_due: Time,
    quorum_check_due: Time,
    own_ack: Option<Signed<RaftAck>>,
}

#[derive(Debug)]
struct Incoming {
    point: SnapshotPoint,
    total: u64,
    data: Vec<u8>,
}

/// One member of one consensus group. See the [module documentation](self).
pub struct Raft<K: KvStore, S: StateMachine> {
    id: NodeId,
    keypair: NodeKeypair,
    federation: FederationId,
    group: GroupId,
    cfg: RaftConfig,
    log: DurableLog<K>,
    sm: S,
    rng: ChaCha8Rng,
    role: Role,
    leader: Option<NodeId>,
    leader_state: Option<LeaderState>,
    votes: BTreeSet<NodeId>,
    commit: u64,
    applied: u64,
    /// The configuration at the snapshot point, then each configuration entry after it.
    base_config: Configuration,
    configs: Vec<(u64, Configuration)>,
    election_due: Time,
    leader_contact: Option<Time>,
    incoming: Option<Incoming>,
    certificate: Vec<Signed<RaftAck>>,
    /// The last acknowledgement this follower signed.
    last_ack: Option<Signed<RaftAck>>,
    /// A write failed in a way that left memory ahead of storage: the node ignores every
    /// input until it is opened again.
    halted: bool,
    out: VecDeque<Transmit<RaftMessage>>,
    events: VecDeque<RaftEvent<S::Output>>,
    max_append_bytes: usize,
    metrics: RaftMetrics,
    now: Time,
}

fn storage_error(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn encode_entry(kind: &EntryKind) -> Vec<u8> {
    // Encoding an owned enum of byte vectors and members cannot fail.
    encoding::try_encode(kind).unwrap_or_default()
}

impl<K: KvStore, S: StateMachine> Raft<K, S> {
    /// Opens the node: reads its term, vote, log and snapshot from `kv`, restores `sm` from
    /// the snapshot, and starts as a follower. A restarted node calls this again with the
    /// same store and a fresh state machine.
    pub fn open(setup: RaftSetup, kv: K, mut sm: S) -> Result<Self, RaftError> {
        let RaftSetup { keypair, federation, group, bootstrap, config, seed } = setup;
        let log = DurableLog::open(kv, group)?;
        let point = log.snapshot_point();
        let data = log.snapshot_data()?;
        let base_config = if data.is_empty() {
            bootstrap.unwrap_or_else(|| Configuration::new(Vec::new(), Vec::new()))
        } else {
            let (config, state) = decode_snapshot(&data)?;
            sm.restore(&state).map_err(RaftError::Snapshot)?;
            config
        };
        let mut configs = Vec::new();
        let mut next = log.first_index();
        while next <= log.last_index() {
            let page = log.entries(next, 256, usize::MAX)?;
            if page.is_empty() {
                break;
            }
            for entry in page {
                let kind: EntryKind =
                    encoding::decode_with_limit(&entry.payload, entry.payload.len())
                        .map_err(|_| RaftError::Entry(entry.index))?;
                if let EntryKind::Config(c) = kind {
                    configs.push((entry.index, c));
                }
                next = entry.index + 1;
            }
        }
        let rng = ChaCha8Rng::seed_from_u64(seed);
        let mut node = Self {
            id: keypair.node_id(),
            keypair,
            federation,
            group,
            cfg: config,
            log,
            sm,
            rng,
            role: Role::Follower,
            leader: None,
            leader_state: None,
            votes: BTreeSet::new(),
            commit: point.index,
            applied: point.index,
            base_config,
            configs,
            election_due: Time::MAX,
            leader_contact: None,
            incoming: None,
            certificate: Vec::new(),
            last_ack: None,
            halted: false,
            out: VecDeque::new(),
            events: VecDeque::new(),
            max_append_bytes: 1 << 20,
            metrics: RaftMetrics::default(),
            now: Time::ZERO,
        };
        node.max_append_bytes = node.cfg.max_append_bytes;
        node.reset_election_timer();
        Ok(node)
    }

    // ----- what a host reads -----

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.log.hard_state().term
    }

    /// Whom this node voted for in the current term.
    pub fn vote(&self) -> Option<NodeId> {
        self.log.hard_state().vote
    }

    /// The node's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader this node knows of, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The highest index known to be committed.
    pub fn commit_index(&self) -> u64 {
        self.commit
    }

    /// The highest index applied to the state machine.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// The durable log.
    pub fn log(&self) -> &DurableLog<K> {
        &self.log
    }

    /// The state machine.
    pub fn state_machine(&self) -> &S {
        &self.sm
    }

    /// The configuration in force (the latest in the log, committed or not).
    pub fn configuration(&self) -> &Configuration {
        self.configs.last().map(|(_, c)| c).unwrap_or(&self.base_config)
    }

    /// The configuration in force as a [`Membership`] (its incoming voters and learners), if
    /// it has voters.
    pub fn membership(&self) -> Option<Membership> {
        self.configuration().membership(self.group)
    }

    /// What the node counted so far.
    pub fn metrics(&self) -> &RaftMetrics {
        &self.metrics
    }

    /// Voters this node heard from within the last election timeout, itself included (a
    /// leader's view; a follower counts itself and its leader).
    pub fn reachable_voters(&self) -> usize {
        match &self.leader_state {
            Some(ls) => {
                1 + ls.progress.iter().filter(|(n, p)| p.active && self.is_voter(n)).count()
            }
            None => 1 + usize::from(self.leader.is_some()),
        }
    }

    fn is_voter(&self, node: &NodeId) -> bool {
        self.configuration().is_voter(node)
    }

    // ----- requests -----

    /// Appends `command` as the next entry (leader only) and starts replicating it. Returns
    /// its index and term: it is decided when [`RaftEvent::Applied`] reports that index with
    /// that term, and lost if the index is applied with another term.
    pub fn propose(&mut self, now: Time, command: Vec<u8>) -> Result<(u64, u64), ProposeError> {
        let (first, _, term) = self.propose_batch(now, vec![command])?;
        Ok((first, term))
    }

    /// Appends several commands in one durable write (group commit). Returns the first and
    /// last index and the term.
    pub fn propose_batch(
        &mut self,
        now: Time,
        commands: Vec<Vec<u8>>,
    ) -> Result<(u64, u64, u64), ProposeError> {
        self.now = now;
        if self.halted {
            return Err(ProposeError::Storage("the node halted after a storage failure".into()));
        }
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if self.leader_state.as_ref().is_some_and(|ls| ls.transfer.is_some()) {
            return Err(ProposeError::Transferring);
        }
        if let Some(big) = commands.iter().find(|c| c.len() > self.max_append_bytes) {
            return Err(ProposeError::TooLarge { len: big.len(), max: self.max_append_bytes });
        }
        let first = self.log.last_index() + 1;
        let payloads = commands.into_iter().map(|c| encode_entry(&EntryKind::Command(c))).collect();
        let last = self.append_own(payloads)?;
        self.broadcast_append();
        self.maybe_commit();
        Ok((first, last, self.term()))
    }

    /// Changes the voters and learners (leader only): by joint consensus when the voters
    /// change, directly when only learners do. New voters must be learners whose log has
    /// caught up with the commit index. Returns the index of the configuration entry.
    pub fn change_membership(
        &mut self,
        now: Time,
        membership: &Membership,
    ) -> Result<u64, ProposeError> {
        self.now = now;
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if membership.group() != self.group {
            return Err(ProposeError::InvalidMembership("another group".into()));
        }
        let current = self.configuration().clone();
        let change_pending = current.is_joint()
            || self.configs.last().is_some_and(|(index, _)| *index > self.commit);
        if change_pending {
            return Err(ProposeError::ChangeInFlight);
        }
        let old: BTreeSet<NodeId> = current.voters.iter().map(|m| m.node).collect();
        let new: BTreeSet<NodeId> = membership.voters().iter().map(|m| m.node).collect();
        if let Some(ls) = &self.leader_state {
            for node in new.difference(&old) {
                let caught_up = current.learners.iter().any(|m| m.node == *node)
                    && ls.progress.get(node).is_some_and(|p| p.matched >= self.commit);
                if !caught_up {
                    return Err(ProposeError::NotCaughtUp(*node));
                }
            }
        }
        let outgoing = if old == new { Vec::new() } else { current.voters.clone() };
        let next = Configuration {
            voters: membership.voters().to_vec(),
            outgoing,
            learners: membership.learners().to_vec(),
        };
        let index = self.append_own(vec![encode_entry(&EntryKind::Config(next))])?;
        self.broadcast_append();
        self.maybe_commit();
        Ok(index)
    }

    /// Hands leadership to `to`, a voter: once its log matches, it is told to campaign at
    /// once. Proposals are refused meanwhile; the transfer is abandoned after an election
    /// timeout.
    pub fn transfer_leadership(&mut self, now: Time, to: NodeId) -> Result<(), ProposeError> {
        self.now = now;
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if to == self.id || !self.is_voter(&to) {
            return Err(ProposeError::NotAVoter(to));
        }
        let deadline = now + self.cfg.election_timeout_max;
        let last = self.log.last_index();
        let caught_up = if let Some(ls) = self.leader_state.as_mut() {
            ls.transfer = Some((to, deadline));
            ls.progress.get(&to).is_some_and(|p| p.matched == last)
        } else {
            false
        };
        if caught_up {
            self.send(to, RaftBody::TimeoutNow);
        } else {
            self.send_append(to);
        }
        Ok(())
    }

    /// Starts an election now if this group has never had one: the node is a voting follower
    /// in term 0 with an empty log and knows no leader. Returns whether it did.
    ///
    /// A host calls this when something waits for a leader — a proposal made right after the
    /// group was founded — so that the first decision does not wait out an election timeout
    /// (150–300 ms by default). Safety never depends on when an election starts; with
    /// pre-vote a premature campaign changes no term unless a majority would vote for it.
    /// Elections after the first keep their randomized timeouts.
    pub fn campaign_if_fresh(&mut self, now: Time) -> bool {
        self.now = now;
        let fresh = !self.halted
            && self.role == Role::Follower
            && self.leader.is_none()
            && self.term() == 0
            && self.log.last_index() == 0;
        if fresh && self.is_voter(&self.id) {
            self.campaign(false);
            return true;
        }
        false
    }

    /// Evidence that entry `index` is decided: a majority of signed acknowledgements of it or
    /// of later entries, with the chain path from it to them. `None` if this node does not
    /// hold such a certificate yet (or no longer holds the entry) or acknowledgements are
    /// unsigned.
    pub fn evidence(&self, index: u64) -> Option<Evidence> {
        self.evidence_batch(&[index]).pop().flatten()
    }

    /// [`evidence`](Self::evidence) for several entries at once, reading the log once.
    pub fn evidence_batch(&self, indices: &[u64]) -> Vec<Option<Evidence>> {
        let mut out = vec![None; indices.len()];
        let first = self.log.first_index();
        let wanted = |i: u64| i > 0 && i <= self.commit && i >= first;
        let Some(lowest) = indices.iter().copied().filter(|i| wanted(*i)).min() else {
            return out;
        };
        let Some(membership) = self.membership() else { return out };
        // The acknowledgements on this node's log, each signer once (the furthest kept).
        let mut acks: Vec<(u64, Signed<RaftAck>)> = Vec::new();
        for ack in self.certificate.iter().chain(self.own_ack_for(lowest).as_ref()) {
            let Ok(value) = ack.open(&self.federation) else { continue };
            if value.index < lowest || value.index > self.log.last_index() {
                continue;
            }
            if self.log.chain_at(value.index).ok().flatten() != Some(value.chain) {
                continue;
            }
            match acks.iter_mut().find(|(_, a)| a.signer() == ack.signer()) {
                Some(held) if held.0 >= value.index => {}
                Some(held) => *held = (value.index, ack.clone()),
                None => acks.push((value.index, ack.clone())),
            }
        }
        let Some(furthest) = acks.iter().map(|(i, _)| *i).max() else { return out };
        let Some(count) = usize::try_from(furthest - lowest + 1).ok() else { return out };
        let Ok(entries) = self.log.entries(lowest, count, usize::MAX) else { return out };
        let Some(before) = self.log.chain_at(lowest - 1).ok().flatten() else { return out };
        let digests: Vec<ChainLink> = entries
            .iter()
            .map(|e| ChainLink { term: e.term, digest: *blake3::hash(&e.payload).as_bytes() })
            .collect();
        for (slot, &index) in out.iter_mut().zip(indices) {
            if !wanted(index) {
                continue;
            }
            let covering: Vec<&(u64, Signed<RaftAck>)> =
                acks.iter().filter(|(i, _)| *i >= index).collect();
            let voters = covering.iter().filter(|(_, a)| membership.is_voter(&a.signer())).count();
            if voters < membership.quorum() {
                continue;
            }
            let reach = covering.iter().map(|(i, _)| *i).max().unwrap_or(index);
            let Ok(at) = usize::try_from(index - lowest) else { continue };
            let Ok(end) = usize::try_from(reach - lowest) else { continue };
            let Some(entry) = entries.get(at) else { continue };
            let prev = if at == 0 {
                before
            } else {
                match entries.get(at - 1) {
                    Some(e) => e.chain,
                    None => continue,
                }
            };
            let later = digests.get(at + 1..=end).map(<[ChainLink]>::to_vec).unwrap_or_default();
            let path =
                ChainPath { index, term: entry.term, prev, entry: entry.payload.clone(), later };
            let acks = covering.iter().map(|(_, a)| a.clone()).collect();
            *slot = Some(Evidence::Raft(RaftCertificate { acks, path }));
        }
        out
    }

    /// This node's own acknowledgement of an entry at or after `index`: the leader's signed
    /// when it committed, or a new one of this node's commit index (which its log holds).
    fn own_ack_for(&self, index: u64) -> Option<Signed<RaftAck>> {
        if let Some(ack) = self.leader_state.as_ref().and_then(|ls| ls.own_ack.clone())
            && ack.open(&self.federation).is_ok_and(|v| v.index >= index)
        {
            return Some(ack);
        }
        let commit = self.commit;
        let chain = self.log.chain_at(commit).ok().flatten()?;
        let term = self.log.term_at(commit).ok().flatten()?;
        let ack = RaftAck { group: self.group, term, index: commit, chain };
        Signed::sign_crate_kind(&self.keypair, &self.federation, ack).ok()
    }

    // ----- plumbing -----

    fn send(&mut self, to: NodeId, body: RaftBody) {
        let message = RaftMessage { group: self.group, term: self.term(), body };
        self.out.push_back(Transmit { to, message });
    }

    fn event(&mut self, event: RaftEvent<S::Output>) {
        self.events.push_back(event);
    }

    fn storage_failed(&mut self, error: impl std::fmt::Display) {
        self.metrics.storage_failures += 1;
        self.event(RaftEvent::StorageFailed { error: error.to_string() });
    }

    fn reset_election_timer(&mut self) {
        let (lo, hi) = (self.cfg.election_timeout_min, self.cfg.election_timeout_max);
        let lo_us = u64::try_from(lo.as_micros()).unwrap_or(u64::MAX);
        let hi_us = u64::try_from(hi.as_micros()).unwrap_or(u64::MAX).max(lo_us + 1);
        let timeout = self.rng.random_range(lo_us..hi_us);
        self.election_due = self.now + Duration::from_micros(timeout);
    }

    fn announce(&mut self) {
        let (term, role, leader) = (self.term(), self.role, self.leader);
        self.event(RaftEvent::RoleChanged { term, role, leader });
    }

    /// Becomes a follower of `term` (persisting a new term first). Returns false if the
    /// write failed (nothing changed).
    fn become_follower(&mut self, term: u64, leader: Option<NodeId>) -> bool {
        if term > self.term() {
            let hard = crate::log::HardState { term, vote: None };
            if let Err(e) = self.log.save_hard_state(hard) {
                self.storage_failed(e);
                return false;
            }
        }
        let changed = self.role != Role::Follower || self.leader != leader || term > self.term();
        self.role = Role::Follower;
        self.leader = leader;
        self.leader_state = None;
        self.votes.clear();
        self.reset_election_timer();
        if changed {
            self.announce();
        }
        true
    }

    fn in_lease(&self) -> bool {
        if !self.cfg.check_quorum {
            return false;
        }
        match self.role {
            Role::Leader => true,
            _ => {
                self.leader.is_some()
                    && self
                        .leader_contact
                        .is_some_and(|t| self.now < t + self.cfg.election_timeout_min)
            }
        }
    }

    fn log_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        let (my_index, my_term) = (self.log.last_index(), self.log.last_term());
        last_term > my_term || (last_term == my_term && last_index >= my_index)
    }

    // ----- elections -----

    fn campaign(&mut self, transfer: bool) {
        if !self.is_voter(&self.id) {
            return;
        }
        if self.cfg.pre_vote && !transfer {
            self.metrics.pre_campaigns += 1;
            self.role = Role::PreCandidate;
            self.leader = None;
            self.votes = BTreeSet::from([self.id]);
            self.reset_election_timer();
            self.announce();
            if self.configuration().has_quorum(|n| self.votes.contains(n)) {
                return self.start_election(false);
            }
            let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
            let Some(term) = self.term().checked_add(1) else { return };
            for peer in self.configuration().all_voters() {
                if peer != self.id {
                    let body = RaftBody::PreVote { last_index, last_term };
                    let message = RaftMessage { group: self.group, term, body };
                    self.out.push_back(Transmit { to: peer, message });
                }
            }
        } else {
            self.start_election(transfer);
        }
    }

    fn start_election(&mut self, transfer: bool) {
        let Some(term) = self.term().checked_add(1) else {
            // The last term there is: this node cannot campaign any more.
            self.reset_election_timer();
            return;
        };
        let hard = crate::log::HardState { term, vote: Some(self.id) };
        if let Err(e) = self.log.save_hard_state(hard) {
            self.storage_failed(e);
            self.reset_election_timer();
            return;
        }
        self.metrics.campaigns += 1;
        self.role = Role::Candidate;
        self.leader = None;
        self.leader_state = None;
        self.votes = BTreeSet::from([self.id]);
        self.reset_election_timer();
        self.announce();
        if self.configuration().has_quorum(|n| self.votes.contains(n)) {
            return self.become_leader();
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.configuration().all_voters() {
            if peer != self.id {
                self.send(peer, RaftBody::Vote { last_index, last_term, transfer });
            }
        }
    }

    fn become_leader(&mut self) {
        let next = self.log.last_index() + 1;
        let progress = self
            .configuration()
            .members()
            .into_iter()
            .filter(|n| *n != self.id)
            .map(|n| (n, Progress::new(next)))
            .collect();
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.certificate.clear();
        self.leader_state = Some(LeaderState {
            progress,
            transfer: None,
            heartbeat_due: self.now + self.cfg.heartbeat_interval,
            quorum_check_due: self.now + self.cfg.election_timeout_min,
            own_ack: None,
        });
        self.metrics.became_leader += 1;
        self.announce();
        if let Err(e) = self.append_own(vec![encode_entry(&EntryKind::Noop)]) {
            // Without its no-op the leader cannot commit anything of its own term.
            self.storage_failed(e);
            self.become_follower(self.term(), None);
            return;
        }
        self.broadcast_append();
        self.maybe_commit();
    }

    // ----- the leader's log -----

    /// Appends entries of the current term to the leader's own log (durably), tracking
    /// configuration entries.
    fn append_own(&mut self, payloads: Vec<Vec<u8>>) -> Result<u64, ProposeError> {
        let first = self.log.last_index() + 1;
        let configs: Vec<(u64, Configuration)> = payloads
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match encoding::decode_with_limit(p, p.len()) {
                Ok(EntryKind::Config(c)) => Some((first + i as u64, c)),
                _ => None,
            })
            .collect();
        let term = self.term();
        let last = self.log.append(term, payloads).map_err(|e| {
            self.storage_failed(&e);
            ProposeError::Storage(storage_error(e))
        })?;
        if !configs.is_empty() {
            self.configs.extend(configs);
            self.sync_progress();
        }
        Ok(last)
    }

    /// Adds progress for new members and drops it for nodes no longer in the configuration.
    fn sync_progress(&mut self) {
        let members = self.configuration().members();
        let next = self.log.last_index() + 1;
        let id = self.id;
        if let Some(ls) = self.leader_state.as_mut() {
            ls.progress.retain(|n, _| members.contains(n));
            for n in members {
                if n != id {
                    ls.progress.entry(n).or_insert_with(|| Progress::new(next));
                }
            }
        }
    }

    fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = match &self.leader_state {
            Some(ls) => ls.progress.keys().copied().collect(),
            None => return,
        };
        for peer in peers {
            self.send_append(peer);
        }
    }

    /// Sends `peer` what it is missing, as far as the flow allows, or an append without
    /// entries if only the commit index is new to it or it is being probed. Returns whether
    /// anything was sent.
    fn send_append(&mut self, peer: NodeId) -> bool {
        let mut sent = false;
        loop {
            let Some(pr) = self.leader_state.as_ref().and_then(|ls| ls.progress.get(&peer)) else {
                return sent;
            };
            let probing = matches!(pr.flow, Flow::Probe { .. });
            let (next, flow_ok, commit_sent) = (
                pr.next,
                match &pr.flow {
                    Flow::Probe { paused } => !paused,
                    Flow::Replicate => pr.inflight.len() < self.cfg.max_inflight,
                    Flow::Snapshot { .. } => false,
                },
                pr.commit_sent,
            );
            if !flow_ok {
                return sent;
            }
            if next < self.log.first_index() {
                self.start_snapshot(peer);
                return true;
            }
            let last = self.log.last_index();
            let entries = if next <= last {
                match self.log.entries(next, self.cfg.max_append_entries, self.max_append_bytes) {
                    Ok(e) => e,
                    Err(e) => {
                        self.storage_failed(e);
                        return sent;
                    }
                }
            } else {
                Vec::new()
            };
            let tell_commit = self.commit > commit_sent;
            // A probe is sent even with nothing new in it: its answer is how the leader learns
            // where the follower's log matches, and the one before it may have been lost.
            if entries.is_empty() && !tell_commit && !probing {
                return sent;
            }
            let prev_index = next - 1;
            let Ok(Some(prev_term)) = self.log.term_at(prev_index) else {
                self.start_snapshot(peer);
                return true;
            };
            let last_sent = prev_index + entries.len() as u64;
            let certificate = if tell_commit { self.certificate_for(peer) } else { Vec::new() };
            let commit = self.commit;
            let wire: Vec<WireEntry> = entries
                .into_iter()
                .map(|e| WireEntry { term: e.term, payload: e.payload })
                .collect();
            let empty = wire.is_empty();
            if let Some(pr) = self.leader_state.as_mut().and_then(|ls| ls.progress.get_mut(&peer)) {
                pr.commit_sent = commit;
                match &mut pr.flow {
                    Flow::Probe { paused } => *paused = true,
                    Flow::Replicate => {
                        if !empty {
                            pr.next = last_sent + 1;
                            pr.inflight.push_back(last_sent);
                        }
                    }
                    Flow::Snapshot { .. } => {}
                }
            }
            self.send(
                peer,
                RaftBody::Append { prev_index, prev_term, entries: wire, commit, certificate },
            );
            sent = true;
            if empty {
                return sent;
            }
        }
    }

    fn start_snapshot(&mut self, peer: NodeId) {
        let point = self.log.snapshot_point();
        let data = match self.log.snapshot_data() {
            Ok(d) => Arc::new(d),
            Err(e) => return self.storage_failed(e),
        };
        if let Some(pr) = self.leader_state.as_mut().and_then(|ls| ls.progress.get_mut(&peer)) {
            pr.flow = Flow::Snapshot { point, data, offset: 0 };
            pr.inflight.clear();
        }
        self.send_snapshot_chunk(peer);
    }

    fn send_snapshot_chunk(&mut self, peer: NodeId) {
        let chunk_len = self.cfg.snapshot_chunk_len.min(self.max_append_bytes).max(1);
        let Some(pr) = self.leader_state.as_ref().and_then(|ls| ls.progress.get(&peer)) else {
            return;
        };
        let Flow::Snapshot { point, data, offset } = &pr.flow else { return };
        let start = usize::try_from(*offset).unwrap_or(usize::MAX).min(data.len());
        let end = start.saturating_add(chunk_len).min(data.len());
        let chunk = SnapshotChunk {
            point: *point,
            total: data.len() as u64,
            offset: start as u64,
            data: data.get(start..end).map(<[u8]>::to_vec).unwrap_or_default(),
        };
        self.metrics.snapshot_chunks_sent += 1;
        self.send(peer, RaftBody::Snapshot(chunk));
    }

    /// Advances the commit index to the highest index a quorum holds, if that entry is of
    /// the current term; then applies, tells the followers, and finishes a joint change.
    fn maybe_commit(&mut self) {
        let Some(ls) = &self.leader_state else { return };
        let last = self.log.last_index();
        let id = self.id;
        let candidate = self.configuration().committed_index(|n| {
            if *n == id { last } else { ls.progress.get(n).map_or(0, |p| p.matched) }
        });
        if candidate <= self.commit || candidate == u64::MAX {
            return;
        }
        // Figure 8: only an entry of the leader's own term is committed by counting.
        if self.log.term_at(candidate).ok().flatten() != Some(self.term()) {
            return;
        }
        self.commit = candidate;
        self.certify(candidate);
        self.apply_committed();
        if self.role != Role::Leader {
            return;
        }
        self.finish_joint_change();
        // Tell the followers the new commit index.
        self.broadcast_append();
    }

    /// Gathers the acknowledgements that certify `commit` (the followers' and the leader's
    /// own, signed now).
    fn certify(&mut self, commit: u64) {
        if !self.cfg.signed_acks {
            return;
        }
        let Ok(Some(chain)) = self.log.chain_at(commit) else { return };
        let Ok(Some(term)) = self.log.term_at(commit) else { return };
        let ack = RaftAck { group: self.group, term, index: commit, chain };
        let own = match Signed::sign_crate_kind(&self.keypair, &self.federation, ack) {
            Ok(s) => s,
            Err(_) => return,
        };
        self.metrics.acks_signed += 1;
        let federation = self.federation;
        let Some(ls) = self.leader_state.as_mut() else { return };
        let mut acks: Vec<Signed<RaftAck>> = ls
            .progress
            .values()
            .filter_map(|p| p.ack.clone())
            .filter(|a| a.open(&federation).is_ok_and(|v| v.index >= commit))
            .collect();
        acks.push(own.clone());
        ls.own_ack = Some(own);
        self.certificate = acks;
    }

    /// The certificate of the commit index as `peer` needs it: without its own
    /// acknowledgement (it adds its own when it builds evidence), the leader's first.
    fn certificate_for(&self, peer: NodeId) -> Vec<Signed<RaftAck>> {
        let config = self.configuration();
        let voters = config.voters.len().max(config.outgoing.len());
        let needed = if config.is_voter(&peer) { voters / 2 } else { voters / 2 + 1 };
        let mut out: Vec<Signed<RaftAck>> = Vec::with_capacity(needed);
        let own = self.leader_state.as_ref().and_then(|ls| ls.own_ack.clone());
        for ack in own.iter().chain(&self.certificate) {
            if out.len() >= needed.max(1) && !config.is_joint() {
                break;
            }
            let signer = ack.signer();
            if signer != peer && !out.iter().any(|a| a.signer() == signer) {
                out.push(ack.clone());
            }
        }
        out
    }

    /// Once a joint configuration is committed, the leader appends the final one; once the
    /// final one is committed, a leader that is not one of its voters steps down. The
    /// configuration in force may be the snapshot's (a snapshot taken right as the joint entry
    /// committed compacts it out of `configs`): it is committed, so it is finished too.
    fn finish_joint_change(&mut self) {
        let (index, config) = match self.configs.last() {
            Some((index, config)) => (*index, config.clone()),
            None => (self.log.snapshot_point().index, self.base_config.clone()),
        };
        if index > self.commit {
            return;
        }
        if config.is_joint() {
            let last = Configuration::new(config.voters.clone(), config.learners.clone());
            if let Err(e) = self.append_own(vec![encode_entry(&EntryKind::Config(last))]) {
                self.storage_failed(e);
            }
            self.broadcast_append();
            self.maybe_commit();
        } else if !config.is_voter(&self.id) && self.role == Role::Leader {
            self.become_follower(self.term(), None);
        }
    }

    // ----- applying -----

    fn apply_committed(&mut self) {
        while self.applied < self.commit {
            let batch = match self.log.entries(self.applied + 1, 256, 4 << 20) {
                Ok(b) if !b.is_empty() => b,
                Ok(_) => return,
                Err(e) => return self.storage_failed(e),
            };
            for entry in batch {
                if entry.index > self.commit {
                    break;
                }
                let LogEntry { term, index, chain, payload } = entry;
                let applied = match encoding::decode_with_limit(&payload, payload.len()) {
                    Ok(EntryKind::Command(c)) => Applied::Command(self.sm.apply(index, &c)),
                    Ok(EntryKind::Config(c)) => Applied::Config(c),
                    // Entries are checked to decode when they arrive; a stored one that does
                    // not is applied as a no-op by every member alike.
                    Ok(EntryKind::Noop) | Err(_) => Applied::Noop,
                };
                self.applied = index;
                self.event(RaftEvent::Applied { index, term, chain, entry: applied });
            }
        }
        self.maybe_snapshot();
    }

    fn maybe_snapshot(&mut self) {
        let point = self.log.snapshot_point();
        if self.applied < point.index + self.cfg.snapshot_threshold.max(1) {
            return;
        }
        let applied = self.applied;
        let config = self
            .configs
            .iter()
            .rev()
            .find(|(i, _)| *i <= applied)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| self.base_config.clone());
        let blob = SnapshotBlob { config: config.clone(), state: self.sm.snapshot() };
        let Ok(bytes) = encoding::try_encode(&blob) else { return };
        match self.log.compact(applied, &bytes) {
            Ok(()) => {
                self.metrics.snapshots_taken += 1;
                self.base_config = config;
                self.configs.retain(|(i, _)| *i > applied);
            }
            Err(e) => self.storage_failed(e),
        }
    }

    // ----- message handlers -----

    /// A message only the leader of `term` sends arrived from `from`: follow it (a leader
    /// receiving one counts it: two leaders in one term cannot be). Returns whether to
    /// handle the message.
    fn follow(&mut self, now: Time, term: u64, from: NodeId) -> bool {
        if self.role == Role::Leader {
            self.metrics.bad_messages += 1;
            return false;
        }
        if (self.role != Role::Follower || self.leader != Some(from))
            && !self.become_follower(term, Some(from))
        {
            return false;
        }
        self.leader_contact = Some(now);
        self.reset_election_timer();
        true
    }

    fn on_pre_vote(&mut self, from: NodeId, term: u64, last_index: u64, last_term: u64) {
        let granted =
            term > self.term() && !self.in_lease() && self.log_up_to_date(last_index, last_term);
        let reply_term = if granted { term } else { self.term() };
        let body = RaftBody::PreVoteResponse { granted };
        let message = RaftMessage { group: self.group, term: reply_term, body };
        self.out.push_back(Transmit { to: from, message });
    }

    fn on_vote(&mut self, from: NodeId, last_index: u64, last_term: u64) {
        let hard = self.log.hard_state();
        let can_vote = hard.vote == Some(from) || (hard.vote.is_none() && self.leader.is_none());
        let mut granted = can_vote && self.log_up_to_date(last_index, last_term);
        if granted && hard.vote.is_none() {
            let new = crate::log::HardState { term: hard.term, vote: Some(from) };
            if let Err(e) = self.log.save_hard_state(new) {
                self.storage_failed(e);
                granted = false;
            }
        }
        if granted {
            self.reset_election_timer();
        }
        self.send(from, RaftBody::VoteResponse { granted });
    }

    fn on_append(
        &mut self,
        from: NodeId,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<WireEntry>,
        commit: u64,
        certificate: Vec<Signed<RaftAck>>,
    ) {
        // Check the entries decode before anything is stored (and note the configurations,
        // by position).
        let mut configs_at: Vec<(usize, Configuration)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match encoding::decode_with_limit::<EntryKind>(&e.payload, e.payload.len()) {
                Ok(EntryKind::Config(c)) => configs_at.push((i, c)),
                Ok(_) => {}
                Err(_) => {
                    self.metrics.bad_messages += 1;
                    return;
                }
            }
        }
        if prev_index.checked_add(entries.len() as u64).is_none() {
            self.metrics.bad_messages += 1;
            return;
        }
        let first_new = prev_index.saturating_add(1);
        self.take_certificate(certificate);
        // What is committed here matches the leader: skip it.
        let (mut prev_index, mut prev_term, mut entries) = (prev_index, prev_term, entries);
        if prev_index < self.commit {
            let skip = (self.commit - prev_index).min(entries.len() as u64);
            if prev_index + (entries.len() as u64) <= self.commit {
                let index = self.commit;
                return self.accept(from, index, commit.min(index), true);
            }
            entries.drain(..usize::try_from(skip).unwrap_or(usize::MAX));
            prev_index = self.commit;
            prev_term = match self.log.term_at(prev_index) {
                Ok(Some(t)) => t,
                _ => return,
            };
        }
        let start =
            self.log.chain_at(prev_index).ok().flatten().unwrap_or(ChainHash::from_bytes([0; 32]));
        let mut chain = start;
        let mut index = prev_index;
        let log_entries: Vec<LogEntry> = entries
            .into_iter()
            .map(|e| {
                index += 1;
                chain = chain.next(e.term, index, &e.payload);
                LogEntry { term: e.term, index, chain, payload: e.payload }
            })
            .collect();
        // Positions were counted before committed entries were skipped.
        let configs: Vec<(u64, Configuration)> = configs_at
            .into_iter()
            .map(|(i, c)| (first_new + i as u64, c))
            .filter(|(index, _)| *index > prev_index)
            .collect();
        let count = log_entries.len() as u64;
        match self.log.replicate(prev_index, prev_term, log_entries) {
            Ok(last_new) => {
                // If the log ends here, everything after prev_index was replaced by these
                // entries; if it is longer, it matched and its configurations stand.
                if self.log.last_index() == last_new {
                    self.configs.retain(|(i, _)| *i <= prev_index);
                    self.configs.extend(configs);
                }
                self.accept(from, last_new, commit.min(last_new), count > 0);
            }
            Err(LogError::PrevMismatch { .. }) => {
                let hint_index =
                    self.conflict_hint(prev_index.min(self.log.last_index()), prev_term);
                let hint_term = self.log.term_at(hint_index).ok().flatten().unwrap_or(0);
                self.send(
                    from,
                    RaftBody::AppendResponse(AppendResult::Rejected {
                        rejected: prev_index,
                        hint_index,
                        hint_term,
                    }),
                );
            }
            Err(LogError::Storage(e)) => self.storage_failed(e),
            Err(LogError::Corrupt(e)) => self.storage_failed(e),
            Err(_) => self.metrics.bad_messages += 1,
        }
    }

    /// The largest index at or below `index` whose term is at most `term` (or the snapshot
    /// point): where the leader's and this log may agree.
    fn conflict_hint(&self, mut index: u64, term: u64) -> u64 {
        let floor = self.log.snapshot_point().index;
        while index > floor {
            match self.log.term_at(index) {
                Ok(Some(t)) if t > term => index -= 1,
                _ => break,
            }
        }
        index
    }

    /// The log matches the leader's up to `index`: commit what the leader says, acknowledge.
    fn accept(&mut self, from: NodeId, index: u64, commit: u64, brought_entries: bool) {
        if commit > self.commit {
            self.commit = commit;
            self.apply_committed();
        }
        let ack = if self.cfg.signed_acks {
            let chain = self.log.chain_at(index).ok().flatten();
            let term = self.log.term_at(index).ok().flatten();
            match (chain, term) {
                (Some(chain), Some(term)) => {
                    let ack = RaftAck { group: self.group, term, index, chain };
                    // The same acknowledgement again, for an append that brought nothing
                    // new (the leader telling its commit index), is not signed or sent again:
                    // the leader holds it, or rewinds and sends entries if it lost it.
                    match &self.last_ack {
                        Some(signed) if signed.open(&self.federation).ok() == Some(&ack) => {
                            if brought_entries {
                                Some(signed.clone())
                            } else {
                                None
                            }
                        }
                        _ => {
                            self.metrics.acks_signed += 1;
                            let signed =
                                Signed::sign_crate_kind(&self.keypair, &self.federation, ack).ok();
                            self.last_ack.clone_from(&signed);
                            signed
                        }
                    }
                }
                _ => None,
            }
        } else {
            None
        };
        self.send(from, RaftBody::AppendResponse(AppendResult::Accepted { index, ack }));
    }

    /// Keeps the acknowledgements a leader sent as the certificate of its commit index, if
    /// they are for this federation and group.
    fn take_certificate(&mut self, certificate: Vec<Signed<RaftAck>>) {
        if certificate.is_empty()
            || certificate.len() > 2 * self.configuration().all_voters().len() + 1
        {
            return;
        }
        let ok = certificate
            .iter()
            .all(|a| a.open(&self.federation).is_ok_and(|v| v.group == self.group));
        if ok {
            self.certificate = certificate;
        } else {
            self.metrics.bad_acks += 1;
        }
    }

    fn on_append_response(&mut self, from: NodeId, result: AppendResult) {
        let last = self.log.last_index();
        match result {
            AppendResult::Accepted { index, ack } => {
                if index > last {
                    self.metrics.bad_messages += 1;
                    return;
                }
                // An acknowledgement left out stands for the one the leader holds; if that
                // does not cover `index`, the answer is not counted (the follower sends its
                // acknowledgement again with the next entries).
                if self.cfg.signed_acks && ack.is_none() {
                    let covered = self
                        .leader_state
                        .as_ref()
                        .and_then(|ls| ls.progress.get(&from))
                        .and_then(|p| p.ack.as_ref())
                        .and_then(|a| a.open(&self.federation).ok())
                        .is_some_and(|a| a.index >= index);
                    if !covered {
                        // Missing where one is needed (a follower whose earlier answer was
                        // lost sends it again once the leader rewinds and sends entries).
                        self.metrics.bad_acks += 1;
                        return;
                    }
                }
                let ack = if self.cfg.signed_acks && ack.is_some() {
                    match self.check_ack(from, index, ack) {
                        Ok(ack) => ack,
                        Err(()) => {
                            self.metrics.bad_acks += 1;
                            return;
                        }
                    }
                } else {
                    None
                };
                let Some(pr) = self.leader_state.as_mut().and_then(|ls| ls.progress.get_mut(&from))
                else {
                    return;
                };
                pr.active = true;
                if index > pr.matched {
                    pr.matched = index;
                }
                if let Some(ack) = ack {
                    pr.ack = Some(ack);
                }
                pr.next = pr.next.max(index + 1);
                while pr.inflight.front().is_some_and(|i| *i <= index) {
                    pr.inflight.pop_front();
                }
                if let Flow::Probe { .. } = pr.flow {
                    pr.flow = Flow::Replicate;
                    pr.inflight.clear();
                    pr.next = pr.matched + 1;
                }
                let matched = pr.matched;
                self.maybe_commit();
                if self.role != Role::Leader {
                    return;
                }
                let transfer_to =
                    self.leader_state.as_ref().and_then(|ls| ls.transfer).map(|(n, _)| n);
                if transfer_to == Some(from) && matched == self.log.last_index() {
                    self.send(from, RaftBody::TimeoutNow);
                }
                self.send_append(from);
            }
            AppendResult::Rejected { rejected, hint_index, hint_term } => {
                if rejected > last {
                    self.metrics.bad_messages += 1;
                    return;
                }
                let back_to = self.conflict_hint(hint_index.min(last), hint_term);
                let Some(pr) = self.leader_state.as_mut().and_then(|ls| ls.progress.get_mut(&from))
                else {
                    return;
                };
                pr.active = true;
                if rejected < pr.matched {
                    return; // stale
                }
                match pr.flow {
                    Flow::Replicate => {
                        let next = pr.matched + 1;
                        pr.probe(next);
                    }
                    Flow::Probe { .. } => {
                        if rejected + 1 != pr.next {
                            return; // stale
                        }
                        let next = rejected.min(back_to + 1);
                        pr.probe(next.max(1));
                    }
                    Flow::Snapshot { .. } => return,
                }
                self.send_append(from);
            }
        }
    }

    /// Checks a follower's signed acknowledgement of `index` against the leader's own log.
    fn check_ack(
        &self,
        from: NodeId,
        index: u64,
        ack: Option<Signed<RaftAck>>,
    ) -> Result<Option<Signed<RaftAck>>, ()> {
        let ack = ack.ok_or(())?;
        let value = ack.open(&self.federation).map_err(|_| ())?;
        if ack.signer() != from || value.group != self.group || value.index != index {
            return Err(());
        }
        if index < self.log.snapshot_point().index {
            // Covered by the snapshot: cannot be checked, and is of no use as evidence.
            return Ok(None);
        }
        let chain = self.log.chain_at(index).ok().flatten();
        let term = self.log.term_at(index).ok().flatten();
        if chain != Some(value.chain) || term != Some(value.term) {
            return Err(());
        }
        Ok(Some(ack))
    }

    fn on_heartbeat_response(&mut self, from: NodeId) {
        let last = self.log.last_index();
        let Some(pr) = self.leader_state.as_mut().and_then(|ls| ls.progress.get_mut(&from)) else {
            return;
        };
        pr.active = true;
        let stuck = pr.matched == pr.matched_at_heartbeat;
        pr.matched_at_heartbeat = pr.matched;
        match &pr.flow {
            Flow::Snapshot { .. } => {
                if stuck {
                    self.send_snapshot_chunk(from);
                }
            }
            Flow::Probe { .. } => {
                pr.flow = Flow::Probe { paused: false };
                self.send_append(from);
            }
            Flow::Replicate => {
                if stuck && pr.matched < last {
                    let next = pr.matched + 1;
                    pr.probe(next);
                    self.send_append(from);
                }
            }
        }
    }

    fn on_snapshot(&mut self, from: NodeId, chunk: SnapshotChunk) {
        let SnapshotChunk { point, total, offset, data } = chunk;
        if total > self.cfg.max_snapshot_len
            || offset.saturating_add(data.len() as u64) > total
            || point.index == 0
        {
            self.metrics.bad_messages += 1;
            return;
        }
        if point.index <= self.commit {
            let index = point.index;
            return self
                .send(from, RaftBody::SnapshotResponse { index, next_offset: total, done: true });
        }
        let expected = match &self.incoming {
            Some(inc) if inc.point == point && inc.total == total => inc.data.len() as u64,
            _ => 0,
        };
        if offset != expected {
            let body = RaftBody::SnapshotResponse {
                index: point.index,
                next_offset: expected,
                done: false,
            };
            return self.send(from, body);
        }
        if offset == 0 {
            self.incoming = Some(Incoming { point, total, data: Vec::new() });
        }
        let Some(inc) = self.incoming.as_mut() else { return };
        inc.data.extend_from_slice(&data);
        if (inc.data.len() as u64) < total {
            let next_offset = inc.data.len() as u64;
            return self.send(
                from,
                RaftBody::SnapshotResponse { index: point.index, next_offset, done: false },
            );
        }
        let Some(Incoming { data, .. }) = self.incoming.take() else { return };
        let blob: SnapshotBlob = match encoding::decode_with_limit(&data, data.len()) {
            Ok(b) => b,
            Err(_) => {
                self.metrics.bad_messages += 1;
                return;
            }
        };
        // The state machine takes the snapshot first: one it refuses changes nothing.
        if self.sm.restore(&blob.state).is_err() {
            self.metrics.bad_messages += 1;
            return;
        }
        if let Err(e) = self.log.install_snapshot(point, &data) {
            // The state machine is ahead of the durable log now: stop until restarted,
            // which rebuilds both from storage.
            self.halted = true;
            return self.storage_failed(e);
        }
        self.metrics.snapshots_installed += 1;
        self.base_config = blob.config;
        let last = self.log.last_index();
        self.configs.retain(|(i, _)| *i > point.index && *i <= last);
        self.commit = self.commit.max(point.index);
        self.applied = point.index;
        self.event(RaftEvent::SnapshotInstalled { index: point.index });
        self.send(
            from,
            RaftBody::SnapshotResponse { index: point.index, next_offset: total, done: true },
        );
        self.apply_committed();
    }

    fn on_snapshot_response(&mut self, from: NodeId, index: u64, next_offset: u64, done: bool) {
        let Some(pr) = self.leader_state.as_mut().and_then(|ls| ls.progress.get_mut(&from)) else {
            return;
        };
        pr.active = true;
        let Flow::Snapshot { point, offset, .. } = &mut pr.flow else { return };
        if point.index != index {
            return;
        }
        if done {
            pr.matched = pr.matched.max(index);
            let next = index + 1;
            pr.probe(next);
            self.maybe_commit();
            self.send_append(from);
        } else {
            *offset = next_offset;
            self.send_snapshot_chunk(from);
        }
    }
}

impl<K: KvStore, S: StateMachine> Protocol for Raft<K, S> {
    type Message = RaftMessage;
    type Event = RaftEvent<S::Output>;

    fn handle_start(&mut self, now: Time, host: HostInfo) {
        self.now = now;
        self.max_append_bytes = self.cfg.max_append_bytes.min(host.max_message_len / 2).max(1);
        self.reset_election_timer();
        // Entries committed before a restart are applied again as the leader tells the
        // commit index; nothing to do until then.
    }

    fn handle_message(&mut self, now: Time, from: NodeId, message: RaftMessage) {
        self.now = now;
        if self.halted {
            return;
        }
        if message.group != self.group {
            self.metrics.wrong_group += 1;
            return;
        }
        let RaftMessage { term, body, .. } = message;
        let is_vote_request = matches!(body, RaftBody::PreVote { .. } | RaftBody::Vote { .. });
        if is_vote_request && !self.is_voter(&from) {
            self.metrics.stranger_votes += 1;
            return;
        }
        let my_term = self.term();
        if term > my_term {
            match &body {
                RaftBody::PreVote { .. } => {}
                RaftBody::PreVoteResponse { granted: true } => {}
                RaftBody::Vote { transfer: false, .. } if self.in_lease() => {
                    self.metrics.votes_ignored_in_lease += 1;
                    return;
                }
                _ => {
                    let leader = match &body {
                        RaftBody::Append { .. }
                        | RaftBody::Heartbeat { .. }
                        | RaftBody::Snapshot(_) => Some(from),
                        _ => None,
                    };
                    if !self.become_follower(term, leader) {
                        return;
                    }
                }
            }
        } else if term < my_term {
            match body {
                RaftBody::Append { .. } | RaftBody::Heartbeat { .. } | RaftBody::Snapshot(_) => {
                    // A stale leader: tell it the newer term so it steps down.
                    let last_index = self.log.last_index();
                    self.send(from, RaftBody::HeartbeatResponse { last_index });
                }
                RaftBody::PreVote { .. } => {
                    self.send(from, RaftBody::PreVoteResponse { granted: false });
                }
                _ => {}
            }
            return;
        }
        match body {
            RaftBody::PreVote { last_index, last_term } => {
                self.on_pre_vote(from, term, last_index, last_term)
            }
            RaftBody::PreVoteResponse { granted } => {
                if self.role == Role::PreCandidate
                    && self.term().checked_add(1) == Some(term)
                    && granted
                {
                    self.votes.insert(from);
                    if self.configuration().has_quorum(|n| self.votes.contains(n)) {
                        self.start_election(false);
                    }
                }
            }
            RaftBody::Vote { last_index, last_term, .. } => {
                self.on_vote(from, last_index, last_term)
            }
            RaftBody::VoteResponse { granted } => {
                if self.role == Role::Candidate && granted {
                    self.votes.insert(from);
                    if self.configuration().has_quorum(|n| self.votes.contains(n)) {
                        self.become_leader();
                    }
                }
            }
            RaftBody::Append { prev_index, prev_term, entries, commit, certificate } => {
                if self.follow(now, term, from) {
                    self.on_append(from, prev_index, prev_term, entries, commit, certificate);
                }
            }
            RaftBody::AppendResponse(result) => {
                if self.role == Role::Leader {
                    self.on_append_response(from, result);
                }
            }
            RaftBody::Heartbeat { commit } => {
                if !self.follow(now, term, from) {
                    return;
                }
                let commit = commit.min(self.log.last_index());
                if commit > self.commit {
                    self.commit = commit;
                    self.apply_committed();
                }
                let last_index = self.log.last_index();
                self.send(from, RaftBody::HeartbeatResponse { last_index });
            }
            RaftBody::HeartbeatResponse { .. } => {
                if self.role == Role::Leader {
                    self.on_heartbeat_response(from);
                }
            }
            RaftBody::Snapshot(chunk) => {
                if self.follow(now, term, from) {
                    self.on_snapshot(from, chunk);
                }
            }
            RaftBody::SnapshotResponse { index, next_offset, done } => {
                if self.role == Role::Leader {
                    self.on_snapshot_response(from, index, next_offset, done);
                }
            }
            RaftBody::TimeoutNow => {
                if self.role != Role::Leader && self.leader == Some(from) {
                    self.campaign(true);
                }
            }
        }
    }

    fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        if self.halted {
            return;
        }
        if self.role == Role::Leader {
            let Some(ls) = self.leader_state.as_mut() else { return };
            if let Some((_, deadline)) = ls.transfer
                && now >= deadline
            {
                ls.transfer = None;
            }
            if now >= ls.quorum_check_due {
                ls.quorum_check_due = now + self.cfg.election_timeout_min;
                let active: BTreeSet<NodeId> =
                    ls.progress.iter().filter(|(_, p)| p.active).map(|(n, _)| *n).collect();
                for p in ls.progress.values_mut() {
                    p.active = false;
                }
                let id = self.id;
                if self.cfg.check_quorum
                    && !self.configuration().has_quorum(|n| *n == id || active.contains(n))
                {
                    self.become_follower(self.term(), None);
                    return;
                }
            }
            let Some(ls) = self.leader_state.as_mut() else { return };
            if now >= ls.heartbeat_due {
                ls.heartbeat_due = now + self.cfg.heartbeat_interval;
                let beats: Vec<(NodeId, u64)> =
                    ls.progress.iter().map(|(n, p)| (*n, p.matched.min(self.commit))).collect();
                for (peer, commit) in beats {
                    self.send(peer, RaftBody::Heartbeat { commit });
                }
            }
            return;
        }
        if now >= self.election_due {
            if self.is_voter(&self.id) {
                self.campaign(false);
            } else {
                self.reset_election_timer();
            }
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit<RaftMessage>> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        match &self.leader_state {
            Some(ls) => {
                let mut t = ls.heartbeat_due.min(ls.quorum_check_due);
                if let Some((_, deadline)) = ls.transfer {
                    t = t.min(deadline);
                }
                Some(t)
            }
            None if self.is_voter(&self.id) => Some(self.election_due),
            None => None,
        }
    }

    fn poll_event(&mut self) -> Option<RaftEvent<S::Output>> {
        self.events.pop_front()
    }
}
