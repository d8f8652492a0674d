//! The anti-entropy protocol: a sans-io core that keeps one [`Replica`] in step with its peers.
//!
//! ```text
//!  every round (and after a local write), to `fanout` random peers:
//!    A ── Summary { heads, root, reply: true } ──────────────────────────────► B
//!    B: heads equal            → A ◄── Summary { reply: false }                 (in sync)
//!    B holds all of A's heads  → A ◄── Batch … Batch (what A lacks, parents first)
//!    B lacks one of A's heads  → A ◄── Need { B's version vector } ──► A streams to B
//!    A ◄── Summary { B's heads, reply: false }: A runs the same three cases the other way
//!
//!  fed_by (in each Summary): the peer streaming new commits to the sender, if any. Another
//!  peer does not push it meanwhile what that feeder is known to hold, and a node being fed
//!  does not ask (Need) a peer whose heads the feeder showed; the next round looks again
//!  once that stream has stopped.
//!
//!  Batch { stream, seq, commits }  ──►   ◄── Ack { stream, seq }   (at most `window` unacked)
//!  Want { ids }: ask for named commits (the missing parents of commits that arrived early)
//!  SnapshotFetch ⇄ SnapshotHead, SnapshotPart: a joining node's catch-up (see [`catchup`])
//! ```
//!
//! The heads of a replica summarize everything it holds (a replica holds the causal past of
//! every commit it holds), so when B holds all of A's heads it knows exactly what A lacks
//! — the commits outside their causal past — without any vector. Only when each side holds
//! something the other lacks does a side send its version vector. Each node talks to
//! `fanout` peers per round, never to all, so its cost per round does not grow with the
//! federation; new commits spread epidemically in O(log n) rounds.
//!
//! Commits travel in batches bounded by the frame size, pipelined up to
//! [`SyncConfig::window`] unacknowledged batches per peer; a stream that stops being
//! acknowledged for [`SyncConfig::stream_timeout`] is dropped, and the next round works out
//! again what the peer lacks. Every message names the replica set ([`GroupId`]); a message
//! for another is dropped. Everything a peer controls is bounded: heads and wanted ids per
//! message, commits per batch (and each commit by the replica's own limits).
//!
//! A replica set of a sealed branch ([`SyncCore::with_seal`]) ships every commit sealed under
//! the federation's current data key and opens what arrives with the keys its organization
//! holds: a commit sealed under an epoch this organization is not a member of is refused
//! ([`ReceiveError::Sealed`]), so an organization that left reads nothing written after. While
//! the current epoch has not arrived here, nothing is sent (the stream waits, and the next
//! round tries again). Such a set does not compare states triple by triple
//! ([`SyncCore::compare_with`]): that exchange would carry triples in the clear.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::consensus::GroupId;
use llmkg_federation_core::kv::KvStore;
use llmkg_federation_core::security::{EnvelopeSeal, SealError};
use llmkg_federation_core::{
    ChangeSet, CommitId, HostInfo, LinkState, NodeId, Protocol, StateRoot, Time, Timestamp,
    Transmit, Triple, TripleId,
};
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::replica::{DeepenError, ReceiveError, Received, Replica, SnapshotError, WriteError};
use crate::riblt;
use crate::vv::VersionVector;

pub mod catchup;

pub use catchup::{MAX_SERVING, SnapshotHeader};

/// Most heads a summary carries; a replica with more sends its version vector instead.
pub const MAX_SUMMARY_HEADS: usize = 64;
/// Most commit ids a [`SyncBody::Want`] may name.
pub const MAX_WANT: usize = 4096;
/// Most commits in one batch.
pub const MAX_BATCH_COMMITS: usize = 4096;
/// Most triple ids one [`SyncBody::FetchTriples`] may name (and triples one answer carries).
pub const MAX_FETCH: usize = 4096;
/// Bytes of one coded symbol on the wire (see [`riblt`]).
const SYMBOL_BYTES: usize = 37;

/// Settings of the anti-entropy protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncConfig {
    /// The replica set: messages name it, and messages of another are dropped.
    pub group: GroupId,
    /// Time between anti-entropy rounds. Default 200 ms.
    pub round_interval: Duration,
    /// Peers contacted per round and after each local write. Default 2; 0 turns
    /// anti-entropy off (the replica only answers).
    pub fanout: usize,
    /// Unacknowledged batches in flight to one peer. Default 4.
    pub window: usize,
    /// A stream with no acknowledgement for this long is dropped. Default 2 s.
    pub stream_timeout: Duration,
    /// Largest batch, in bytes of commit envelopes; the host's frame size caps it (at half a
    /// frame). Default 1 MiB.
    pub max_batch_bytes: usize,
    /// The wall-clock time at `Time::ZERO`: the replica's wall clock is this plus the
    /// monotonic time of the inputs (commit timestamps come from it).
    pub wall_origin: Timestamp,
    /// A replica whose version vector has more authors than this finds what it lacks by set
    /// reconciliation over commit ids instead of sending the vector. Default 256: below
    /// that a vector (about 35 bytes per author) costs less than a reconciliation session's
    /// extra round trip and symbols (see `sync-scaling` in `docs/BENCHMARKS.md`).
    pub vv_limit: usize,
    /// Most differences a reconciliation session decodes before it gives up. Default
    /// 250,000.
    pub max_differences: usize,
    /// Most triples a snapshot to catch up from may declare ([`SyncCore::joining`]).
    /// Default 64 million.
    pub max_snapshot_triples: u64,
    /// Most commit ids a snapshot to catch up from may declare. Default 16 million.
    pub max_snapshot_commits: u64,
}

impl SyncConfig {
    /// The defaults for replica set `group`, with the wall clock at `Time::ZERO` being
    /// `wall_origin`.
    pub fn new(group: GroupId, wall_origin: Timestamp) -> Self {
        Self {
            group,
            round_interval: Duration::from_millis(200),
            fanout: 2,
            window: 4,
            stream_timeout: Duration::from_secs(2),
            max_batch_bytes: 1 << 20,
            wall_origin,
            vv_limit: 256,
            max_differences: 250_000,
            max_snapshot_triples: 64_000_000,
            max_snapshot_commits: 16_000_000,
        }
    }
}

/// A message between replicas of one set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncMessage {
    /// The replica set.
    pub group: GroupId,
    /// What it says.
    pub body: SyncBody,
}

/// The kinds of message (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SyncBody {
    /// The sender's heads (all of them, or `truncated`), root and size.
    Summary {
        /// Its heads, sorted (at most [`MAX_SUMMARY_HEADS`]).
        heads: Vec<CommitId>,
        /// True if it has more heads than listed.
        truncated: bool,
        /// Its state root.
        root: StateRoot,
        /// How many commits it holds.
        commits: u64,
        /// True if the receiver should answer with its own summary.
        reply: bool,
        /// The peer streaming new commits to the sender right now, if one is (see
        /// [`SyncCore::feeder`]): a receiver that is not that peer does not push meanwhile
        /// what that peer is known to hold (it would be the same commits again).
        fed_by: Option<NodeId>,
    },
    /// Send me the commits this version vector does not cover.
    Need {
        /// What the sender holds.
        vv: VersionVector,
    },
    /// Send me these commits.
    Want {
        /// Their ids (at most [`MAX_WANT`]).
        ids: Vec<CommitId>,
    },
    /// Commits, parents first.
    Batch {
        /// The sender's stream to this receiver.
        stream: u64,
        /// The batch's number in the stream.
        seq: u64,
        /// Commit envelopes (at most [`MAX_BATCH_COMMITS`]).
        #[serde(with = "llmkg_federation_core::encoding::bytes::list")]
        commits: Vec<Vec<u8>>,
    },
    /// Batch `seq` of `stream` arrived.
    Ack {
        /// The stream.
        stream: u64,
        /// The batch.
        seq: u64,
    },
    /// A step of a set-reconciliation session over commit ids or triple ids (see
    /// [`riblt`]); the side that opened the session decodes.
    Reconcile {
        /// The session, chosen by the side that opened it.
        session: u64,
        /// Which ids are reconciled.
        target: ReconcileTarget,
        /// The step.
        step: riblt::Message,
    },
    /// Send me these triples of your current state.
    FetchTriples {
        /// The state-comparison session.
        session: u64,
        /// Their ids (at most [`MAX_FETCH`]).
        ids: Vec<TripleId>,
    },
    /// Triples of the sender's current state, answering [`SyncBody::FetchTriples`].
    Triples {
        /// The session.
        session: u64,
        /// The triples the sender holds among those asked for.
        triples: Vec<Triple>,
    },
    /// Send me a snapshot to start from: its header (`part: None`), or one of its parts.
    SnapshotFetch {
        /// The catch-up session, chosen by the asker.
        session: u64,
        /// The part, or `None` for the header (which prepares the snapshot).
        part: Option<u32>,
    },
    /// A snapshot's header, or `None` if the sender has none to give.
    SnapshotHead {
        /// The session.
        session: u64,
        /// The header.
        header: Option<Box<SnapshotHeader>>,
    },
    /// One part of a snapshot: some of the base's commit ids, or one chunk of its state
    /// (encoded; sealed in a sealed replica set).
    SnapshotPart {
        /// The session.
        session: u64,
        /// The part's number.
        part: u32,
        /// Its bytes.
        #[serde(with = "llmkg_federation_core::encoding::bytes")]
        data: Vec<u8>,
    },
}

/// Which ids a reconciliation session compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReconcileTarget {
    /// The commits each replica holds: finds what each lacks when version vectors are too
    /// large to send.
    Commits,
    /// The triples of each replica's current state: compares two states however they were
    /// built (see [`SyncCore::compare_with`]).
    Triples,
}

/// A commit could not be produced as shipped ([`SyncCore::shipped`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShipError {
    /// The replica's store failed.
    #[error("replica storage: {0}")]
    Storage(#[from] llmkg_federation_core::kv::KvError),
    /// It could not be sealed (the current data-key epoch has not arrived here).
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// What the core reports to its host.
#[derive(Debug)]
#[non_exhaustive]
pub enum SyncEvent {
    /// Commits from `from` were applied (in this order).
    Applied {
        /// Who sent them.
        from: NodeId,
        /// The commits.
        ids: Vec<CommitId>,
    },
    /// A commit from `from` was refused; the replica did not change.
    Refused {
        /// Who sent it.
        from: NodeId,
        /// Why.
        error: ReceiveError,
    },
    /// A state comparison ([`SyncCore::compare_with`]) finished: the triples only this
    /// replica's state holds, and those only the peer's holds.
    StateDiff {
        /// The peer compared with.
        peer: NodeId,
        /// Triples in this replica's state and not in the peer's, sorted.
        only_here: Vec<Triple>,
        /// Triples in the peer's state and not in this replica's, sorted.
        only_there: Vec<Triple>,
    },
    /// A reconciliation session with `peer` failed (the peer sent symbols that do not
    /// decode within the limits); nothing changed and the session was dropped.
    ReconcileFailed {
        /// The peer.
        peer: NodeId,
        /// Why.
        error: riblt::SessionError,
    },
    /// The replica started from a snapshot `from` sent (the commits after its head follow
    /// by anti-entropy).
    SnapshotInstalled {
        /// The provider.
        from: NodeId,
        /// The triples of its state.
        triples: u64,
    },
    /// A snapshot from `from` was refused; the replica did not change, another peer is asked.
    SnapshotRefused {
        /// The provider.
        from: NodeId,
        /// Why.
        error: SnapshotError,
    },
    /// No peer had a snapshot to give: the replica catches up from the whole history.
    SnapshotUnavailable,
    /// The replica fetched the history before its base and holds it all now.
    Deepened {
        /// The base's commits fetched.
        commits: u64,
    },
    /// The history fetched to deepen the replica was refused; the replica did not change.
    DeepenFailed {
        /// Why.
        error: DeepenError,
    },
    /// A message from `from` broke the protocol's bounds and was dropped.
    Malformed {
        /// Who sent it.
        from: NodeId,
        /// What was wrong.
        reason: &'static str,
    },
}

/// Counters of what the core has done. They only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncMetrics {
    /// Anti-entropy rounds run.
    pub rounds: u64,
    /// Summaries sent.
    pub summaries_sent: u64,
    /// Requests sent that expect an answer (summaries asking for a reply, needs, wants).
    pub requests_sent: u64,
    /// Version vectors sent.
    pub vectors_sent: u64,
    /// Reconciliation sessions opened.
    pub reconciliations: u64,
    /// Batches sent.
    pub batches_sent: u64,
    /// Commits sent.
    pub commits_sent: u64,
    /// Commits received and applied.
    pub commits_applied: u64,
    /// Commits received that were already held.
    pub duplicates_received: u64,
    /// Commits received and refused.
    pub commits_refused: u64,
    /// Streams dropped for lack of acknowledgements.
    pub streams_dropped: u64,
    /// Messages dropped for breaking the bounds or naming another replica set.
    pub messages_dropped: u64,
    /// Commits sealed for sending (a sealed branch's replica set).
    pub commits_sealed: u64,
    /// Times a stream waited because the current data-key epoch had not arrived.
    pub seal_waits: u64,
    /// Snapshots prepared for peers.
    pub snapshots_served: u64,
    /// Snapshot parts sent.
    pub snapshot_parts_sent: u64,
    /// Snapshot parts received.
    pub snapshot_parts_received: u64,
    /// Snapshots installed (at most one: a replica starts from one).
    pub snapshots_installed: u64,
    /// Commits received that do not descend from the replica's base.
    pub before_base: u64,
    /// Times the replica fetched the history before its base.
    pub deepened: u64,
    /// Checkpoint commits written so that a snapshot could be taken.
    pub checkpoints: u64,
    /// Pushes and requests not made because another peer was streaming new commits to the
    /// peer (or to this node) at the time.
    pub deferred_to_feeder: u64,
}

/// What is known of a peer.
#[derive(Debug, Default)]
struct Peer {
    up: bool,
    /// Its heads and root as it last reported them.
    heads: Option<(Vec<CommitId>, bool, StateRoot)>,
    /// When that report arrived.
    heard_at: Time,
    /// The stream of commits to it, if one is running.
    out: Option<Stream>,
    next_stream: u64,
    commits_sent: u64,
    commits_received: u64,
    /// When a batch from it last brought a commit new here, or when its summary last showed
    /// commits this node lacked while no other peer was feeding it (see
    /// [`SyncCore::feeder`]).
    fed_at: Option<Time>,
    /// The reconciliation session this node opened with the peer, if any.
    asking: Option<Asking>,
    /// The reconciliation session the peer opened with this node, if any.
    answering: Option<Answering>,
}

struct Asking {
    session: u64,
    target: ReconcileTarget,
    requester: riblt::Requester,
    started: Time,
    /// For a state comparison: what only this side holds, and the ids still to fetch.
    only_here: Vec<Triple>,
    to_fetch: Vec<TripleId>,
    only_there: Vec<Triple>,
    /// The ids of the fetch in flight.
    fetching: HashSet<TripleId>,
}

struct Answering {
    session: u64,
    target: ReconcileTarget,
    responder: riblt::Responder,
    started: Time,
}

impl std::fmt::Debug for Asking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asking")
            .field("session", &self.session)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Answering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answering")
            .field("session", &self.session)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Stream {
    id: u64,
    queue: VecDeque<CommitId>,
    queued: HashSet<CommitId>,
    next_seq: u64,
    in_flight: BTreeMap<u64, usize>,
    last_progress: Time,
}

/// The anti-entropy core for one replica (see the [module documentation](self)).
pub struct SyncCore<K: KvStore> {
    replica: Replica<K>,
    config: SyncConfig,
    rng: ChaCha8Rng,
    peers: BTreeMap<NodeId, Peer>,
    out: VecDeque<Transmit<SyncMessage>>,
    events: VecDeque<SyncEvent>,
    next_round: Option<Time>,
    max_batch_bytes: usize,
    now: Time,
    metrics: SyncMetrics,
    seal: Option<Arc<dyn EnvelopeSeal>>,
    /// While catching up from a snapshot.
    joining: Option<catchup::Joining>,
    /// Snapshots kept ready for peers.
    serving: BTreeMap<NodeId, catchup::Serving>,
    /// While gathering the history before the replica's base.
    deepening: Option<catchup::Deepening>,
}

impl<K: KvStore> std::fmt::Debug for SyncCore<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncCore").field("replica", &self.replica).finish_non_exhaustive()
    }
}

impl<K: KvStore> SyncCore<K> {
    /// A core over `replica` that syncs with `peers` (more may join through
    /// [`handle_peer`](Protocol::handle_peer)), with randomness from `seed`.
    pub fn new(
        replica: Replica<K>,
        config: SyncConfig,
        peers: impl IntoIterator<Item = NodeId>,
        seed: u64,
    ) -> Self {
        let me = replica.node_id();
        let peers = peers.into_iter().filter(|p| *p != me).map(|p| (p, Peer::default())).collect();
        let max_batch_bytes = config.max_batch_bytes;
        Self {
            replica,
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            peers,
            out: VecDeque::new(),
            events: VecDeque::new(),
            next_round: None,
            max_batch_bytes,
            now: Time::ZERO,
            metrics: SyncMetrics::default(),
            seal: None,
            joining: None,
            serving: BTreeMap::new(),
            deepening: None,
        }
    }

    /// Makes this the replica set of a sealed branch: commits are shipped sealed by `seal`
    /// and opened by it on arrival (see the [module documentation](self)).
    #[must_use]
    pub fn with_seal(mut self, seal: Arc<dyn EnvelopeSeal>) -> Self {
        self.seal = Some(seal);
        self
    }

    /// Whether commits travel sealed.
    pub fn is_sealed(&self) -> bool {
        self.seal.is_some()
    }

    /// Commit `id` exactly as this core ships it (sealed on a sealed replica set), or `None`
    /// if the replica does not hold it.
    pub fn shipped(&self, id: &CommitId) -> Result<Option<Vec<u8>>, ShipError> {
        let Some(envelope) = self.replica.commit_bytes(id)? else { return Ok(None) };
        match &self.seal {
            None => Ok(Some(envelope)),
            Some(seal) => Ok(Some(seal.seal(&envelope)?)),
        }
    }

    /// The replica.
    pub fn replica(&self) -> &Replica<K> {
        &self.replica
    }

    /// The replica, mutably (for queries that cache, such as the state root).
    pub fn replica_mut(&mut self) -> &mut Replica<K> {
        &mut self.replica
    }

    /// What the core has done so far.
    pub fn metrics(&self) -> &SyncMetrics {
        &self.metrics
    }

    /// The wall clock at `now`.
    pub fn wall(&self, now: Time) -> Timestamp {
        let us = i64::try_from(now.as_micros()).unwrap_or(i64::MAX);
        Timestamp::from_micros(self.config.wall_origin.as_micros().saturating_add(us))
    }

    /// Commits `changes` to the replica (durable when it returns) and tells `fanout` peers.
    pub fn write(
        &mut self,
        now: Time,
        changes: ChangeSet,
        message: &str,
    ) -> Result<CommitId, WriteError> {
        self.now = now;
        // A replica holding commits takes no snapshot: this one catches up from history.
        self.joining = None;
        let commit = self.replica.write(self.wall(now), changes, message)?;
        self.announce();
        Ok(commit.id())
    }

    /// Tells a few peers of a commit made here (a write, an adopted commit): a summary each.
    fn announce(&mut self) {
        for p in self.pick_peers(self.config.fanout) {
            self.send_summary(p, true);
        }
    }

    /// Takes a complete commit made elsewhere (a federated merge's commit) into the replica,
    /// checked like one received from a peer; peers hear of it as of a local write.
    pub fn adopt(&mut self, now: Time, bytes: &[u8]) -> Result<Received, ReceiveError> {
        self.now = now;
        self.joining = None;
        let received = self.replica.receive(self.wall(now), bytes)?;
        if matches!(received, Received::Applied(_)) {
            self.announce();
        }
        Ok(received)
    }

    /// Asks `peers` (every known peer if empty) for their summaries now; they answer, and
    /// the exchange that follows brings both sides up to date.
    pub fn sync_now(&mut self, now: Time, peers: &[NodeId]) {
        self.now = now;
        let targets: Vec<NodeId> =
            if peers.is_empty() { self.peers.keys().copied().collect() } else { peers.to_vec() };
        for p in targets {
            if self.peers.contains_key(&p) {
                self.send_summary(p, true);
            }
        }
    }

    /// True if `peer` last reported exactly this replica's heads.
    pub fn converged_with(&self, peer: &NodeId) -> bool {
        let ours = self.replica.heads();
        self.peers
            .get(peer)
            .and_then(|p| p.heads.as_ref())
            .is_some_and(|(h, truncated, _)| !truncated && *h == ours)
    }

    /// True if `peer` reported exactly this replica's heads in a summary that arrived at or
    /// after `since` (so the report is not older than the question).
    pub fn converged_since(&self, peer: &NodeId, since: Time) -> bool {
        self.converged_with(peer) && self.peers.get(peer).is_some_and(|p| p.heard_at >= since)
    }

    /// The state root `peer` last reported.
    pub fn peer_root(&self, peer: &NodeId) -> Option<StateRoot> {
        self.peers.get(peer).and_then(|p| p.heads.as_ref()).map(|h| h.2)
    }

    /// Commits sent to and received from `peer` so far.
    pub fn peer_counts(&self, peer: &NodeId) -> (u64, u64) {
        self.peers.get(peer).map_or((0, 0), |p| (p.commits_sent, p.commits_received))
    }

    /// The peers known, sorted.
    pub fn peers(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }

    fn pick_peers(&mut self, n: usize) -> Vec<NodeId> {
        let up: Vec<NodeId> = self.peers.iter().filter(|(_, p)| p.up).map(|(id, _)| *id).collect();
        let pool = if up.is_empty() { self.peers.keys().copied().collect() } else { up };
        pool.sample(&mut self.rng, n).copied().collect()
    }

    fn send(&mut self, to: NodeId, body: SyncBody) {
        self.out
            .push_back(Transmit { to, message: SyncMessage { group: self.config.group, body } });
    }

    fn send_summary(&mut self, to: NodeId, reply: bool) {
        let mut heads = self.replica.heads();
        let truncated = heads.len() > MAX_SUMMARY_HEADS;
        heads.truncate(MAX_SUMMARY_HEADS);
        let root = self.replica.state_root();
        let commits = self.replica.len() as u64;
        self.metrics.summaries_sent += 1;
        if reply {
            self.metrics.requests_sent += 1;
        }
        let fed_by = self.feeder();
        self.send(to, SyncBody::Summary { heads, truncated, root, commits, reply, fed_by });
    }

    /// The peer that is streaming new commits to this node: the one whose batch most
    /// recently brought a commit new here (or whose summary last showed commits this node
    /// lacks, when no other was feeding it), if that was less than half of
    /// [`SyncConfig::stream_timeout`] ago. While one is, this node does not ask other peers
    /// for what the feeder showed, and its summaries tell other peers not to push what the
    /// feeder holds: in a federation where one node writes a large source, every peer
    /// otherwise also relays it to every other (measured in `bench-federation`'s
    /// create-branch: 117 duplicate deliveries besides the 45 commits needed).
    pub fn feeder(&self) -> Option<NodeId> {
        let window = self.config.stream_timeout / 2;
        self.peers
            .iter()
            .filter_map(|(id, p)| p.fed_at.map(|t| (t, *id)))
            .filter(|(t, _)| self.now.saturating_since(*t) < window)
            .max()
            .map(|(_, id)| id)
    }

    /// True if `feeder`'s last summary shows it holds every commit of `commits` (held here):
    /// none is outside the past of its reported heads.
    fn feeder_holds_all(&self, feeder: &NodeId, commits: &[CommitId]) -> bool {
        let Some((heads, false, _)) = self.peers.get(feeder).and_then(|p| p.heads.as_ref()) else {
            return false;
        };
        let Some(beyond) = self.replica.missing_for_heads(heads) else { return false };
        let beyond: HashSet<&CommitId> = beyond.iter().collect();
        commits.iter().all(|c| !beyond.contains(c))
    }

    /// True if every one of `heads` is among the heads `feeder` last reported (so its
    /// stream is bringing them).
    fn feeder_shows(&self, feeder: &NodeId, heads: &[CommitId]) -> bool {
        self.peers
            .get(feeder)
            .and_then(|p| p.heads.as_ref())
            .is_some_and(|(theirs, _, _)| heads.iter().all(|h| theirs.binary_search(h).is_ok()))
    }

    fn send_need(&mut self, to: NodeId) {
        self.metrics.vectors_sent += 1;
        self.metrics.requests_sent += 1;
        let vv = self.replica.version_vector();
        self.send(to, SyncBody::Need { vv });
    }

    /// Queues `ids` (parents first) for `to`, starting a stream if none is running.
    fn stream_to(&mut self, to: NodeId, ids: Vec<CommitId>) {
        if ids.is_empty() {
            return;
        }
        let now = self.now;
        let Some(peer) = self.peers.get_mut(&to) else { return };
        if peer.out.is_none() {
            peer.next_stream += 1;
        }
        let id = peer.next_stream;
        let stream = peer.out.get_or_insert_with(|| Stream {
            id,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            next_seq: 0,
            in_flight: BTreeMap::new(),
            last_progress: now,
        });
        for c in ids {
            if stream.queued.insert(c) {
                stream.queue.push_back(c);
            }
        }
        self.pump(to);
    }

    /// Sends batches to `to` while the window has room.
    fn pump(&mut self, to: NodeId) {
        loop {
            let limit = self.max_batch_bytes;
            let window = self.config.window.max(1);
            let Some(stream) = self.peers.get_mut(&to).and_then(|p| p.out.as_mut()) else { return };
            if stream.in_flight.len() >= window {
                return;
            }
            if stream.queue.is_empty() {
                if stream.in_flight.is_empty()
                    && let Some(p) = self.peers.get_mut(&to)
                {
                    p.out = None;
                }
                return;
            }
            let mut ids = Vec::new();
            let mut bytes = 0usize;
            let mut key_pending = false;
            while let Some(id) = stream.queue.front().copied() {
                if ids.len() >= MAX_BATCH_COMMITS {
                    break;
                }
                let Ok(Some(mut env)) = self.replica.commit_bytes(&id) else {
                    stream.queue.pop_front();
                    continue;
                };
                if let Some(seal) = &self.seal {
                    match seal.seal(&env) {
                        Ok(sealed) => env = sealed,
                        Err(SealError::EpochPending) => {
                            key_pending = true;
                            break;
                        }
                        Err(_) => {
                            stream.queue.pop_front();
                            continue;
                        }
                    }
                }
                if !ids.is_empty() && bytes + env.len() > limit {
                    break;
                }
                bytes += env.len();
                ids.push(env);
                stream.queue.pop_front();
            }
            if self.seal.is_some() {
                self.metrics.commits_sealed += ids.len() as u64;
            }
            if key_pending && ids.is_empty() {
                // Nothing leaves until the current epoch's key is here: the stream stalls,
                // times out, and a later round works out again what the peer lacks.
                self.metrics.seal_waits += 1;
                return;
            }
            if ids.is_empty() {
                continue;
            }
            let (stream_id, seq) = (stream.id, stream.next_seq);
            stream.next_seq += 1;
            stream.in_flight.insert(seq, ids.len());
            let n = ids.len() as u64;
            self.metrics.batches_sent += 1;
            self.metrics.commits_sent += n;
            if let Some(p) = self.peers.get_mut(&to) {
                p.commits_sent += n;
            }
            self.send(to, SyncBody::Batch { stream: stream_id, seq, commits: ids });
        }
    }

    fn on_summary(
        &mut self,
        from: NodeId,
        heads: Vec<CommitId>,
        truncated: bool,
        root: StateRoot,
        reply: bool,
        fed_by: Option<NodeId>,
    ) {
        if heads.len() > MAX_SUMMARY_HEADS || heads.windows(2).any(|w| w[0] >= w[1]) {
            self.malformed(from, "summary heads not sorted or too many");
            return;
        }
        let ours = self.replica.heads();
        let same = !truncated && heads == ours;
        let now = self.now;
        if let Some(p) = self.peers.get_mut(&from) {
            p.heads = Some((heads.clone(), truncated, root));
            p.heard_at = now;
        }
        if self.joining.is_some() {
            // Nothing is exchanged before the snapshot is installed.
            return;
        }
        // The peer holds commits this node lacks: with no other feeder, it becomes the one
        // (it pushes them on this node's summary, or they are asked for below), so that
        // summaries sent meanwhile keep other peers from pushing the same commits.
        let lacking = truncated || heads.iter().any(|h| !self.replica.knows(h));
        if lacking
            && self.feeder().is_none()
            && let Some(p) = self.peers.get_mut(&from)
        {
            p.fed_at = Some(now);
        }
        if reply {
            self.send_summary(from, false);
        }
        if same {
            return;
        }
        let me = self.replica.node_id();
        // Another node is streaming to the peer, or to this node, and is known to hold what
        // would be sent: leave it to that stream. (The next round looks again once it has
        // stopped.) Anything the feeder is not known to hold goes as before.
        let peer_feeder = fed_by.filter(|f| *f != me);
        let here_feeder = self.feeder().filter(|f| *f != from);
        match (truncated, self.replica.missing_for_heads(&heads)) {
            (false, Some(missing))
                if !missing.is_empty()
                    && peer_feeder.is_some_and(|f| self.feeder_holds_all(&f, &missing)) =>
            {
                self.metrics.deferred_to_feeder += 1;
            }
            (false, Some(missing)) => self.stream_to(from, missing),
            _ if !truncated && here_feeder.is_some_and(|f| self.feeder_shows(&f, &heads)) => {
                self.metrics.deferred_to_feeder += 1;
            }
            _ if self.replica.authors() > self.config.vv_limit => {
                self.open_session(from, ReconcileTarget::Commits)
            }
            _ => self.send_need(from),
        }
    }

    fn on_batch(&mut self, from: NodeId, stream: u64, seq: u64, commits: Vec<Vec<u8>>) {
        if commits.len() > MAX_BATCH_COMMITS {
            self.malformed(from, "batch holds too many commits");
            return;
        }
        if self.joining.is_some() {
            // Nothing is applied before the snapshot is installed; the sender's next round
            // works out again what this replica lacks.
            self.send(from, SyncBody::Ack { stream, seq });
            return;
        }
        let wall = self.wall(self.now);
        let mut applied = Vec::new();
        let mut fed = false;
        for sealed in &commits {
            let opened;
            let bytes = match &self.seal {
                None => sealed,
                Some(seal) => match seal.open(sealed, wall) {
                    Ok(plain) => {
                        opened = plain;
                        &opened
                    }
                    Err(e) => {
                        self.metrics.commits_refused += 1;
                        self.events.push_back(SyncEvent::Refused { from, error: e.into() });
                        continue;
                    }
                },
            };
            if self.gather(bytes) {
                continue;
            }
            match self.replica.receive(wall, bytes) {
                Ok(Received::Applied(ids)) => {
                    applied.extend(ids);
                    fed = true;
                }
                Ok(Received::Known(_)) => self.metrics.duplicates_received += 1,
                Ok(Received::Pending { .. }) => fed = true,
                Err(ReceiveError::BeforeBase { .. }) => self.start_deepening(from),
                Err(error) => {
                    self.metrics.commits_refused += 1;
                    self.events.push_back(SyncEvent::Refused { from, error });
                }
            }
        }
        if fed && let Some(p) = self.peers.get_mut(&from) {
            p.fed_at = Some(self.now);
        }
        self.send(from, SyncBody::Ack { stream, seq });
        self.after_applied(from, applied);
        let wanted = self.replica.wanted();
        if !wanted.is_empty() {
            self.metrics.requests_sent += 1;
            let ids = wanted.into_iter().take(MAX_WANT).collect();
            self.send(from, SyncBody::Want { ids });
        }
    }

    fn after_applied(&mut self, from: NodeId, applied: Vec<CommitId>) {
        if applied.is_empty() {
            return;
        }
        let n = applied.len() as u64;
        self.metrics.commits_applied += n;
        if let Some(p) = self.peers.get_mut(&from) {
            p.commits_received += n;
        }
        self.events.push_back(SyncEvent::Applied { from, ids: applied });
    }

    fn on_ack(&mut self, from: NodeId, stream: u64, seq: u64) {
        let now = self.now;
        let Some(s) = self.peers.get_mut(&from).and_then(|p| p.out.as_mut()) else { return };
        if s.id != stream || s.in_flight.remove(&seq).is_none() {
            return;
        }
        s.last_progress = now;
        self.pump(from);
    }

    /// Compares this replica's current state with `peer`'s, triple by triple, by set
    /// reconciliation over triple ids — however the two states were built (two
    /// organizations that imported the same vocabulary separately, say). The answer is a
    /// [`SyncEvent::StateDiff`]; nothing is applied. A comparison already running with the
    /// peer is replaced. A sealed replica set does not compare (the exchange would carry
    /// triples in the clear): nothing happens.
    pub fn compare_with(&mut self, now: Time, peer: NodeId) {
        self.now = now;
        if self.seal.is_some() {
            return;
        }
        self.open_session(peer, ReconcileTarget::Triples);
    }

    fn local_ids(&self, target: ReconcileTarget) -> Vec<riblt::Id> {
        match target {
            ReconcileTarget::Commits => self.replica.ids().map(|c| *c.as_bytes()).collect(),
            ReconcileTarget::Triples => self
                .replica
                .state()
                .merkle()
                .entries()
                .into_iter()
                .map(|(id, _)| *id.as_bytes())
                .collect(),
        }
    }

    fn limits(&self) -> riblt::DecodeLimits {
        riblt::DecodeLimits::for_differences(self.config.max_differences)
    }

    fn open_session(&mut self, peer: NodeId, target: ReconcileTarget) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        if target == ReconcileTarget::Commits
            && self.peers.get(&peer).and_then(|p| p.asking.as_ref()).is_some()
        {
            // One at a time; the running one will find the same commits.
            return;
        }
        let session = self.rng.random::<u64>();
        let requester = riblt::Requester::new(session, self.local_ids(target), self.limits());
        let step = requester.open();
        let asking = Asking {
            session,
            target,
            requester,
            started: self.now,
            only_here: Vec::new(),
            to_fetch: Vec::new(),
            only_there: Vec::new(),
            fetching: HashSet::new(),
        };
        if let Some(p) = self.peers.get_mut(&peer) {
            p.asking = Some(asking);
        }
        self.metrics.requests_sent += 1;
        self.metrics.reconciliations += 1;
        self.send(peer, SyncBody::Reconcile { session, target, step });
    }

    /// Most symbols one message may carry.
    fn symbols_per_message(&self) -> u64 {
        (self.max_batch_bytes / SYMBOL_BYTES).max(1) as u64
    }

    fn on_reconcile(
        &mut self,
        from: NodeId,
        session: u64,
        target: ReconcileTarget,
        step: riblt::Message,
    ) {
        if self.seal.is_some() && target == ReconcileTarget::Triples {
            self.malformed(from, "a sealed replica set does not compare triples");
            return;
        }
        match step {
            riblt::Message::Open { .. } => {
                let ids = self.local_ids(target);
                let cap = self.symbols_per_message();
                let max = self.limits().max_symbols as u64;
                match riblt::Responder::accept(ids, &step, max) {
                    Ok((responder, reply)) => {
                        let reply = clamp_symbols(reply, cap);
                        if let Some(p) = self.peers.get_mut(&from) {
                            p.answering =
                                Some(Answering { session, target, responder, started: self.now });
                        }
                        self.send(from, SyncBody::Reconcile { session, target, step: reply });
                    }
                    Err(_) => self.malformed(from, "reconciliation opened with a malformed sketch"),
                }
            }
            riblt::Message::More { count } => {
                let cap = self.symbols_per_message();
                let Some(a) = self.peers.get_mut(&from).and_then(|p| p.answering.as_mut()) else {
                    return;
                };
                if a.session != session {
                    return;
                }
                let step = riblt::Message::More { count: count.min(cap) };
                match a.responder.handle(&step) {
                    Ok(Some(reply)) => {
                        self.send(from, SyncBody::Reconcile { session, target, step: reply })
                    }
                    Ok(None) => {}
                    Err(_) => {
                        if let Some(p) = self.peers.get_mut(&from) {
                            p.answering = None;
                        }
                        self.malformed(from, "reconciliation asked past its limit");
                    }
                }
            }
            riblt::Message::Done => {
                if let Some(p) = self.peers.get_mut(&from)
                    && p.answering.as_ref().is_some_and(|a| a.session == session)
                {
                    p.answering = None;
                }
            }
            riblt::Message::Symbols { .. } => self.on_symbols(from, session, step),
        }
    }

    fn on_symbols(&mut self, from: NodeId, session: u64, step: riblt::Message) {
        let Some(a) = self.peers.get_mut(&from).and_then(|p| p.asking.as_mut()) else { return };
        if a.session != session {
            return;
        }
        let target = a.target;
        match a.requester.handle(&step) {
            Ok(riblt::Message::Done) => {
                let diff = a.requester.differences().unwrap_or(riblt::Differences {
                    remote_only: Vec::new(),
                    local_only: Vec::new(),
                });
                self.send(
                    from,
                    SyncBody::Reconcile { session, target, step: riblt::Message::Done },
                );
                self.reconciled(from, target, diff);
            }
            Ok(next) => {
                self.metrics.requests_sent += 1;
                self.send(from, SyncBody::Reconcile { session, target, step: next });
            }
            Err(error) => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.asking = None;
                }
                self.events.push_back(SyncEvent::ReconcileFailed { peer: from, error });
            }
        }
    }

    /// A session decoded: act on the differences.
    fn reconciled(&mut self, from: NodeId, target: ReconcileTarget, diff: riblt::Differences) {
        match target {
            ReconcileTarget::Commits => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.asking = None;
                }
                let mut theirs: Vec<CommitId> =
                    diff.remote_only.iter().map(|id| CommitId::from_bytes(*id)).collect();
                theirs.truncate(MAX_WANT);
                if !theirs.is_empty() {
                    self.metrics.requests_sent += 1;
                    self.send(from, SyncBody::Want { ids: theirs });
                }
                let mut ours: Vec<CommitId> = diff
                    .local_only
                    .iter()
                    .map(|id| CommitId::from_bytes(*id))
                    .filter(|id| self.replica.contains(id))
                    .collect();
                ours.sort_by_key(|id| self.replica.generation(id));
                self.stream_to(from, ours);
            }
            ReconcileTarget::Triples => {
                let mut only_here: Vec<Triple> = diff
                    .local_only
                    .iter()
                    .filter_map(|id| self.replica.state().get_by_id(&TripleId::from_bytes(*id)))
                    .map(|t| t.to_triple())
                    .collect();
                only_here.sort();
                let to_fetch: Vec<TripleId> =
                    diff.remote_only.iter().map(|id| TripleId::from_bytes(*id)).collect();
                if let Some(a) = self.peers.get_mut(&from).and_then(|p| p.asking.as_mut()) {
                    a.only_here = only_here;
                    a.to_fetch = to_fetch;
                }
                self.fetch_more(from);
            }
        }
    }

    /// Asks for the next triples of a comparison, or reports it when all arrived.
    fn fetch_more(&mut self, from: NodeId) {
        let Some(a) = self.peers.get_mut(&from).and_then(|p| p.asking.as_mut()) else { return };
        if !a.fetching.is_empty() {
            return;
        }
        if a.to_fetch.is_empty() {
            let Some(a) = self.peers.get_mut(&from).and_then(|p| p.asking.take()) else { return };
            let mut only_there = a.only_there;
            only_there.sort();
            self.events.push_back(SyncEvent::StateDiff {
                peer: from,
                only_here: a.only_here,
                only_there,
            });
            return;
        }
        let n = a.to_fetch.len().min(MAX_FETCH);
        let ids: Vec<TripleId> = a.to_fetch.drain(..n).collect();
        a.fetching = ids.iter().copied().collect();
        let session = a.session;
        self.metrics.requests_sent += 1;
        self.send(from, SyncBody::FetchTriples { session, ids });
    }

    fn on_fetch_triples(&mut self, from: NodeId, session: u64, ids: Vec<TripleId>) {
        if self.seal.is_some() {
            self.malformed(from, "a sealed replica set sends no triples in the clear");
            return;
        }
        if ids.len() > MAX_FETCH {
            self.malformed(from, "fetch names too many triples");
            return;
        }
        let triples = ids
            .iter()
            .filter_map(|id| self.replica.state().get_by_id(id))
            .map(|t| t.to_triple())
            .collect();
        self.send(from, SyncBody::Triples { session, triples });
    }

    fn on_triples(&mut self, from: NodeId, session: u64, triples: Vec<Triple>) {
        let Some(a) = self.peers.get_mut(&from).and_then(|p| p.asking.as_mut()) else { return };
        if a.session != session || a.target != ReconcileTarget::Triples || a.fetching.is_empty() {
            return;
        }
        if triples.len() > a.fetching.len() {
            self.malformed(from, "more triples than asked for");
            return;
        }
        // Keep only triples that were asked for, each once: a peer cannot add others.
        let asked = std::mem::take(&mut a.fetching);
        let mut seen = HashSet::new();
        a.only_there
            .extend(triples.into_iter().filter(|t| asked.contains(&t.id()) && seen.insert(t.id())));
        self.fetch_more(from);
    }

    fn malformed(&mut self, from: NodeId, reason: &'static str) {
        self.metrics.messages_dropped += 1;
        self.events.push_back(SyncEvent::Malformed { from, reason });
    }

    fn round(&mut self, now: Time) {
        self.metrics.rounds += 1;
        self.catchup_round(now);
        let jitter = self.rng.random_range(0..=self.config.round_interval.as_micros() as u64 / 4);
        self.next_round = Some(now + self.config.round_interval + Duration::from_micros(jitter));
        if self.joining.is_some() {
            return;
        }
        let targets = self.pick_peers(self.config.fanout);
        for p in targets {
            self.send_summary(p, true);
        }
        // Drop streams that stopped making progress.
        let timeout = self.config.stream_timeout;
        let stalled: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.out.as_ref().is_some_and(|s| now.saturating_since(s.last_progress) >= timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stalled {
            if let Some(p) = self.peers.get_mut(&id) {
                p.out = None;
                self.metrics.streams_dropped += 1;
            }
        }
        // Reconciliation sessions that stopped making progress go too.
        for p in self.peers.values_mut() {
            if p.asking.as_ref().is_some_and(|a| now.saturating_since(a.started) >= timeout * 4) {
                p.asking = None;
            }
            if p.answering.as_ref().is_some_and(|a| now.saturating_since(a.started) >= timeout * 4)
            {
                p.answering = None;
            }
        }
    }
}

impl<K: KvStore> Protocol for SyncCore<K> {
    type Message = SyncMessage;
    type Event = SyncEvent;

    fn handle_start(&mut self, now: Time, host: HostInfo) {
        self.now = now;
        self.max_batch_bytes = self.config.max_batch_bytes.min(host.max_message_len / 2).max(1);
        // Rounds start at a random offset so that nodes started together do not all talk at
        // once.
        let offset = self.rng.random_range(0..=self.config.round_interval.as_micros() as u64);
        self.next_round = Some(now + Duration::from_micros(offset));
    }

    fn handle_peer(&mut self, now: Time, peer: NodeId, link: LinkState) {
        self.now = now;
        if peer == self.replica.node_id() {
            return;
        }
        let p = self.peers.entry(peer).or_default();
        p.up = link == LinkState::Up;
        if !p.up {
            // Batches in flight may be lost; the next round works out what is missing.
            p.out = None;
        }
    }

    fn handle_message(&mut self, now: Time, from: NodeId, message: SyncMessage) {
        self.now = now;
        if message.group != self.config.group {
            self.metrics.messages_dropped += 1;
            return;
        }
        if from == self.replica.node_id() {
            return;
        }
        self.peers.entry(from).or_default();
        match message.body {
            SyncBody::Summary { heads, truncated, root, commits: _, reply, fed_by } => {
                self.on_summary(from, heads, truncated, root, reply, fed_by)
            }
            SyncBody::Need { vv } => {
                let missing = self.replica.missing_for_vv(&vv);
                self.stream_to(from, missing);
            }
            SyncBody::Want { ids } => {
                if ids.len() > MAX_WANT {
                    self.malformed(from, "want names too many commits");
                    return;
                }
                let held: Vec<CommitId> =
                    ids.into_iter().filter(|id| self.replica.contains(id)).collect();
                let mut held = held;
                held.sort_by_key(|id| self.replica.generation(id));
                self.stream_to(from, held);
            }
            SyncBody::Batch { stream, seq, commits } => self.on_batch(from, stream, seq, commits),
            SyncBody::Ack { stream, seq } => self.on_ack(from, stream, seq),
            SyncBody::Reconcile { session, target, step } => {
                self.on_reconcile(from, session, target, step)
            }
            SyncBody::FetchTriples { session, ids } => self.on_fetch_triples(from, session, ids),
            SyncBody::Triples { session, triples } => self.on_triples(from, session, triples),
            SyncBody::SnapshotFetch { session, part } => {
                self.on_snapshot_fetch(from, session, part)
            }
            SyncBody::SnapshotHead { session, header } => {
                self.on_snapshot_head(from, session, header)
            }
            SyncBody::SnapshotPart { session, part, data } => {
                self.on_snapshot_part(from, session, part, data)
            }
        }
    }

    fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        if self.next_round.is_some_and(|t| t <= now) {
            self.round(now);
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit<SyncMessage>> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.next_round
    }

    fn poll_event(&mut self) -> Option<SyncEvent> {
        self.events.pop_front()
    }
}

/// Caps the symbols of a responder's reply to what one message may carry (the requester
/// asks again for the rest).
fn clamp_symbols(reply: riblt::Message, cap: u64) -> riblt::Message {
    match reply {
        riblt::Message::Symbols { estimate, mut symbols } => {
            symbols.truncate(usize::try_from(cap).unwrap_or(usize::MAX));
            riblt::Message::Symbols { estimate, symbols }
        }
        other => other,
    }
}
