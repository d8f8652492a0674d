//! The data-plane contract: how replicas of a federated branch are kept consistent.
//!
//! A federated branch lives on nodes of several organizations, each writing to its own
//! replica. A [`SyncStrategy`] is one node's replica of one branch together with the protocol
//! that keeps it consistent with the others: it takes local writes, exchanges commits with
//! peers and reports what a synchronization achieved. The strategies are named by
//! [`FederatedSyncStrategy`]:
//!
//! | strategy | replicas agree on | built |
//! |---|---|---|
//! | [`EventualConsistency`](FederatedSyncStrategy::EventualConsistency) | the same state once they hold the same commits (add-wins, observed-remove) | `llmkg-sync` |
//! | [`StrongConsistency`](FederatedSyncStrategy::StrongConsistency) | change sets in the order the branch's consensus group decides | not yet |
//! | [`ConflictResolution`](FederatedSyncStrategy::ConflictResolution) | three-way merges, conflicts resolved or escalated | not yet |
//! | [`Custom`](FederatedSyncStrategy::Custom) | whatever the host's strategy defines | the host's |
//!
//! A strategy that is not built is refused with [`SyncError::NotAvailable`], never imitated.
//!
//! The trait is object safe: a host holds `Box<dyn SyncStrategy>` and may implement its own
//! (see the sync guide in the repository's `docs/`).
//!
//! ```
//! use llmkg_federation_core::sync::{FederatedSyncOptions, FederatedSyncStrategy, SyncError};
//! use std::time::Duration;
//!
//! let options = FederatedSyncOptions::default().with_timeout(Duration::from_secs(5));
//! assert_eq!(options.timeout, Duration::from_secs(5));
//! let refused = SyncError::NotAvailable(FederatedSyncStrategy::StrongConsistency);
//! assert!(refused.to_string().contains("not available"));
//! ```

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{BoxFuture, ChangeSet, CommitId, GraphState, NodeId, StateRoot, Timestamp};

/// How the replicas of a federated branch are kept consistent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FederatedSyncStrategy {
    /// Every replica writes locally; replicas exchange commits and converge to the same state
    /// once they hold the same commits (add-wins observed-remove over the commit graph).
    EventualConsistency,
    /// Change sets are applied in the order the branch's consensus group decides.
    StrongConsistency,
    /// Replicas diverge and merge three ways; conflicts are resolved by policy or escalated
    /// to governance.
    ConflictResolution,
    /// A strategy supplied by the host, by name.
    Custom(String),
}

impl fmt::Display for FederatedSyncStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EventualConsistency => f.write_str("eventual consistency"),
            Self::StrongConsistency => f.write_str("strong consistency"),
            Self::ConflictResolution => f.write_str("conflict resolution"),
            Self::Custom(name) => write!(f, "custom strategy {name:?}"),
        }
    }
}

/// How consistent the replicas a synchronization reached were when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ConsistencyLevel {
    /// Some requested peers were not reached, or still hold other commits than this node.
    Partial,
    /// Every requested peer held exactly this node's commits (the same heads, so the same
    /// state root) at the end: the replicas had converged.
    Eventual,
    /// The replicas applied the same change sets in the order consensus decided.
    Strong,
}

/// What [`SyncStrategy::synchronize`] should do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FederatedSyncOptions {
    /// The peers to synchronize with; empty means every peer the strategy knows.
    pub peers: Vec<NodeId>,
    /// How long to try before returning what was reached. Default 10 s.
    pub timeout: Duration,
}

impl Default for FederatedSyncOptions {
    fn default() -> Self {
        Self { peers: Vec::new(), timeout: Duration::from_secs(10) }
    }
}

impl FederatedSyncOptions {
    /// The default options with these peers.
    pub fn with_peers(mut self, peers: impl IntoIterator<Item = NodeId>) -> Self {
        self.peers = peers.into_iter().collect();
        self
    }

    /// The default options with this timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// What a synchronization achieved with one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeSyncResult {
    /// The peer.
    pub node: NodeId,
    /// The peer held exactly this node's commits when the synchronization ended.
    pub converged: bool,
    /// The peer's state root as it last reported it, if it did.
    pub state_root: Option<StateRoot>,
    /// Commits this node sent to the peer during the synchronization.
    pub commits_sent: u64,
    /// Commits received from the peer and applied during the synchronization.
    pub commits_received: u64,
}

impl NodeSyncResult {
    /// A result for `node` with nothing recorded yet.
    pub fn new(node: NodeId) -> Self {
        Self { node, converged: false, state_root: None, commits_sent: 0, commits_received: 0 }
    }
}

/// What [`SyncStrategy::synchronize`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FederatedSyncResult {
    /// The strategy that ran.
    pub strategy: FederatedSyncStrategy,
    /// The level reached (see [`ConsistencyLevel`]).
    pub consistency: ConsistencyLevel,
    /// Per requested peer, in the order requested.
    pub nodes: Vec<NodeSyncResult>,
    /// This node's state root at the end.
    pub state_root: StateRoot,
    /// Commits sent to any peer during the synchronization.
    pub commits_sent: u64,
    /// Commits received and applied during the synchronization.
    pub commits_received: u64,
    /// Triples added or removed by the commits received.
    pub triples_received: u64,
    /// Bytes this node sent on the sync channel during the synchronization.
    pub bytes_sent: u64,
    /// Bytes this node received on the sync channel during the synchronization.
    pub bytes_received: u64,
    /// Request/response exchanges this node started during the synchronization.
    pub round_trips: u64,
    /// How long it took.
    pub elapsed: Duration,
    /// Peers that could not be synchronized with, and why.
    pub failures: Vec<(NodeId, String)>,
}

impl FederatedSyncResult {
    /// A result of `strategy` at `consistency` with nothing moved yet.
    pub fn new(
        strategy: FederatedSyncStrategy,
        consistency: ConsistencyLevel,
        state_root: StateRoot,
    ) -> Self {
        Self {
            strategy,
            consistency,
            nodes: Vec::new(),
            state_root,
            commits_sent: 0,
            commits_received: 0,
            triples_received: 0,
            bytes_sent: 0,
            bytes_received: 0,
            round_trips: 0,
            elapsed: Duration::ZERO,
            failures: Vec::new(),
        }
    }
}

/// What a replica holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// The commits no other held commit descends from, sorted.
    pub heads: Vec<CommitId>,
    /// The root of the replica's state.
    pub state_root: StateRoot,
    /// How many commits it holds.
    pub commits: u64,
    /// How many triples its state holds.
    pub triples: u64,
    /// True if the replica started from a snapshot and knows the commits before it only by
    /// id (it has not fetched that history since).
    pub shallow: bool,
    /// How many commits the replica knows only by id (0 unless `shallow`).
    pub base_commits: u64,
}

impl ReplicaStatus {
    /// A status with these values, of a replica that holds its whole history.
    pub fn new(heads: Vec<CommitId>, state_root: StateRoot, commits: u64, triples: u64) -> Self {
        Self { heads, state_root, commits, triples, shallow: false, base_commits: 0 }
    }

    /// The same status, of a replica that started from a snapshot and knows `base_commits`
    /// commits only by id.
    #[must_use]
    pub fn shallow(mut self, base_commits: u64) -> Self {
        self.shallow = true;
        self.base_commits = base_commits;
        self
    }
}

/// A sync operation failed. Each variant says whether anything changed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The strategy is not built; nothing was done.
    #[error("sync strategy {0} is not available")]
    NotAvailable(FederatedSyncStrategy),
    /// The write changes nothing in the replica's state; nothing was written.
    #[error("nothing to commit: the changes are already in the replica's state")]
    NothingToCommit,
    /// The write was refused (the commit policy, a bound); nothing was written.
    #[error("write refused: {0}")]
    Refused(String),
    /// The replica's storage failed; what the variant's message says was or was not written.
    #[error("replica storage: {0}")]
    Storage(String),
    /// The strategy has stopped (its driver ended); nothing was done.
    #[error("the sync strategy has stopped")]
    Closed,
    /// A peer named in the options is not one this strategy syncs with; nothing was done.
    #[error("{0:?} is not a peer of this replica")]
    UnknownPeer(NodeId),
    /// Anything else a host's strategy reports; its message says what changed.
    #[error("{0}")]
    Other(String),
}

/// One node's replica of a federated branch and the protocol that keeps it consistent.
///
/// Contract:
/// - [`write`](Self::write) makes a local commit durable before it returns its id; the commit
///   then reaches every peer eventually, as long as the network eventually delivers.
/// - [`synchronize`](Self::synchronize) never fails because a peer is slow or unreachable:
///   it returns what it reached by the deadline, with the peers it could not synchronize
///   with in [`FederatedSyncResult::failures`] and a [`ConsistencyLevel`] that says so.
/// - Every commit received from a peer is verified (signature, the host's commit policy and
///   the strategy's own rules) before it changes the replica; a bad one is refused and
///   changes nothing.
pub trait SyncStrategy: Send + Sync {
    /// Which strategy this is.
    fn strategy(&self) -> FederatedSyncStrategy;

    /// Commits `changes` to this node's replica (durable when it returns) and returns the
    /// commit's id.
    fn write(
        &self,
        changes: ChangeSet,
        message: String,
    ) -> BoxFuture<'_, Result<CommitId, SyncError>>;

    /// Takes `commit`, a complete signed commit envelope made elsewhere (a federated
    /// merge's commit, from the consensus log), into this node's replica, checked exactly
    /// like a commit received from a peer. Taking a commit the replica holds is a no-op; one
    /// whose parents have not arrived yet waits for them like a received one.
    fn adopt(&self, commit: Vec<u8>) -> BoxFuture<'_, Result<(), SyncError>>;

    /// A timestamp later than that of every commit this replica holds, by its clock: what a
    /// commit made elsewhere on this replica's heads may carry.
    fn next_timestamp(&self) -> BoxFuture<'_, Result<Timestamp, SyncError>>;

    /// Exchanges commits with the peers in `options` until they hold the same commits as
    /// this node or the timeout passes, and reports what moved.
    fn synchronize(
        &self,
        options: FederatedSyncOptions,
    ) -> BoxFuture<'_, Result<FederatedSyncResult, SyncError>>;

    /// What the replica holds now.
    fn status(&self) -> BoxFuture<'_, Result<ReplicaStatus, SyncError>>;

    /// The replica's heads and the state they determine (a copy, taken atomically).
    fn state(&self) -> BoxFuture<'_, Result<(Vec<CommitId>, GraphState), SyncError>>;

    /// Commit `id` exactly as this replica ships it to its peers (sealed, for a branch whose
    /// commits travel sealed), or `None` if the replica does not hold it: what an auditor
    /// inspects to see what a peer, or anyone on the path, could read.
    fn shipped(&self, id: CommitId) -> BoxFuture<'_, Result<Option<Vec<u8>>, SyncError>>;
}
