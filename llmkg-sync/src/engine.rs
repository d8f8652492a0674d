//! [`EventualSync`]: the anti-entropy core behind the [`SyncStrategy`] contract, over any
//! [`Transport`].
//!
//! The engine runs one [`SyncCore`] in the generic [`Driver`] of `llmkg-transport`, on the
//! replica set's own transport channel, so the same core that runs in the simulator runs
//! in-process and over TCP. It is two parts: the [`EventualSync`] handle (an `Arc`, usable as
//! `Arc<dyn SyncStrategy>`) and a [`SyncTask`] future the host polls on its executor.
//! Nothing is spawned.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use llmkg_federation_core::consensus::GroupId;
//! use llmkg_federation_core::sync::{FederatedSyncOptions, SyncStrategy};
//! use llmkg_federation_core::{ChangeSet, MemoryKv, NodeKeypair, OrgId, Term, Triple};
//! use llmkg_sync::engine::{EventualSync, SyncOptions};
//! use llmkg_transport::{InProcessNetwork, StdTimer};
//!
//! let timer = Arc::new(StdTimer::new());
//! let network = InProcessNetwork::new(timer.clone());
//! let keypair = NodeKeypair::from_secret_bytes([1; 32]);
//! let transport = Arc::new(network.join(keypair.node_id())?);
//! let options = SyncOptions::new(keypair, OrgId::new("acme")?, GroupId::from_bytes([7; 32]));
//! let (sync, task) = EventualSync::start(options, MemoryKv::new(), Vec::new(), transport, timer)?;
//! tokio::spawn(task);
//! let sync: Arc<dyn SyncStrategy> = sync;
//! let t = Triple::new(Term::iri("https://ex.org/s")?, Term::iri("https://ex.org/p")?, Term::string("o")?)?;
//! sync.write(ChangeSet::adding([t]), "add".into()).await?;
//! let result = sync.synchronize(FederatedSyncOptions::default()).await?;
//! println!("{:?}: {} commits sent", result.consistency, result.commits_sent);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use llmkg_federation_core::consensus::GroupId;
use llmkg_federation_core::security::EnvelopeSeal;
use llmkg_federation_core::sync::{
    ConsistencyLevel, FederatedSyncOptions, FederatedSyncResult, FederatedSyncStrategy,
    NodeSyncResult, ReplicaStatus, SyncError, SyncStrategy,
};
use llmkg_federation_core::{
    BoxFuture, ChangeSet, ChannelId, Clock, CommitId, CommitPolicy, GraphState, KvStore, NodeId,
    NodeKeypair, OrgId, SystemClock, Time, Timer, Timestamp, Transport, Triple,
};
use llmkg_transport::{Driver, DriverConfig, DriverHandle};

use crate::protocol::{ShipError, SyncConfig, SyncCore, SyncEvent};
use crate::replica::{OpenError, ReceiveError, Replica, ReplicaConfig, WriteError};

/// Whether `strategy` is one this crate can run: eventual consistency only, for now.
pub fn require_available(strategy: &FederatedSyncStrategy) -> Result<(), SyncError> {
    match strategy {
        FederatedSyncStrategy::EventualConsistency => Ok(()),
        other => Err(SyncError::NotAvailable(other.clone())),
    }
}

/// How to start an [`EventualSync`].
#[non_exhaustive]
pub struct SyncOptions {
    /// The node's key (commits are signed with it).
    pub keypair: NodeKeypair,
    /// The organization its commits are made for.
    pub org: OrgId,
    /// The replica set (one per federated branch).
    pub group: GroupId,
    /// The strategy asked for; only [`FederatedSyncStrategy::EventualConsistency`] is
    /// available.
    pub strategy: FederatedSyncStrategy,
    /// The transport channel of this replica set. Default 2.
    pub channel: ChannelId,
    /// Protocol settings (the `group` and `wall_origin` fields are set by the engine).
    pub sync: SyncConfig,
    /// Replica bounds and tolerances.
    pub replica: ReplicaConfig,
    /// Seeds peer selection.
    pub seed: u64,
    /// The wall clock commit timestamps come from. Default: the system clock.
    pub clock: Arc<dyn Clock>,
    /// For a sealed branch, how commits are sealed for shipping and opened on arrival (see
    /// [`SyncCore::with_seal`]). Default `None`: commits travel in the clear inside the
    /// transport's encryption.
    pub seal: Option<Arc<dyn EnvelopeSeal>>,
    /// Whether an empty replica catches up from a peer's snapshot rather than the whole
    /// history (see [`SyncCore::joining`]). Default false.
    pub join_from_snapshot: bool,
}

impl SyncOptions {
    /// Default options for `keypair` of `org` in replica set `group`.
    pub fn new(keypair: NodeKeypair, org: OrgId, group: GroupId) -> Self {
        let seed =
            u64::from_le_bytes(keypair.node_id().as_bytes()[..8].try_into().unwrap_or([0; 8]));
        Self {
            keypair,
            org,
            group,
            strategy: FederatedSyncStrategy::EventualConsistency,
            channel: ChannelId::new(2).unwrap_or(ChannelId::DEFAULT),
            sync: SyncConfig::new(group, Timestamp::from_micros(0)),
            replica: ReplicaConfig::default(),
            seed,
            clock: Arc::new(SystemClock),
            seal: None,
            join_from_snapshot: false,
        }
    }
}

impl std::fmt::Debug for SyncOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncOptions")
            .field("node", &self.keypair.node_id())
            .field("org", &self.org)
            .field("group", &self.group)
            .field("channel", &self.channel)
            .field("sync", &self.sync)
            .field("sealed", &self.seal.is_some())
            .finish_non_exhaustive()
    }
}

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The strategy is not available.
    #[error(transparent)]
    Strategy(#[from] SyncError),
    /// The replica's stored commits could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
}

type Core<K> = SyncCore<K>;

struct Inner<K: KvStore + 'static> {
    handle: DriverHandle<Core<K>>,
    timer: Arc<dyn Timer>,
    round: Duration,
    changed: event_listener::Event,
    /// Finished state comparisons, by peer, until taken.
    diffs: Mutex<HashMap<NodeId, StateDiff>>,
}

/// How this replica's state and a peer's differ (see [`EventualSync::compare_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateDiff {
    /// Triples only this replica's state holds, sorted.
    pub only_here: Vec<Triple>,
    /// Triples only the peer's state holds, sorted.
    pub only_there: Vec<Triple>,
}

/// One node's eventually consistent replica of a branch, synchronized over a transport; see
/// the [module documentation](self).
pub struct EventualSync<K: KvStore + 'static> {
    inner: Arc<Inner<K>>,
}

/// The future that runs an [`EventualSync`]: the driver and the event pump. Poll it to
/// completion on any executor; it ends when the engine is shut down or the transport closes.
pub struct SyncTask {
    future: BoxFuture<'static, ()>,
}

impl Future for SyncTask {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.future.as_mut().poll(cx)
    }
}

impl<K: KvStore + 'static> EventualSync<K> {
    /// Opens the replica kept in `kv` and starts syncing it with `peers` (and any peer that
    /// connects on the channel) over `transport`. Every commit must pass `AcceptAll`; see
    /// [`start_with_policy`](Self::start_with_policy).
    pub fn start(
        options: SyncOptions,
        kv: K,
        peers: Vec<NodeId>,
        transport: Arc<dyn Transport>,
        timer: Arc<dyn Timer>,
    ) -> Result<(Arc<Self>, SyncTask), StartError> {
        Self::start_with_policy(
            options,
            kv,
            llmkg_federation_core::AcceptAll,
            peers,
            transport,
            timer,
        )
    }

    /// [`start`](Self::start) with the policy every commit received must pass (stored ones
    /// passed it when they were admitted).
    pub fn start_with_policy(
        options: SyncOptions,
        kv: K,
        policy: impl CommitPolicy + 'static,
        peers: Vec<NodeId>,
        transport: Arc<dyn Transport>,
        timer: Arc<dyn Timer>,
    ) -> Result<(Arc<Self>, SyncTask), StartError> {
        require_available(&options.strategy)?;
        let SyncOptions {
            keypair,
            org,
            group,
            channel,
            mut sync,
            replica,
            seed,
            clock,
            seal,
            join_from_snapshot,
            ..
        } = options;
        // The replica's wall clock is the host's clock read once, advanced by the monotonic
        // timer: it never goes backwards while the engine runs.
        let elapsed = i64::try_from(timer.now().as_micros()).unwrap_or(i64::MAX);
        sync.wall_origin = Timestamp::from_micros(clock.now().as_micros().saturating_sub(elapsed));
        sync.group = group;
        let round = sync.round_interval;
        let replica = Replica::open_with_policy(kv, keypair, org, replica, policy)?;
        let mut core = SyncCore::new(replica, sync, peers, seed);
        if let Some(seal) = seal {
            core = core.with_seal(seal);
        }
        if join_from_snapshot {
            core = core.joining();
        }
        let config = DriverConfig { channel, ..DriverConfig::default() };
        let (driver, handle) = Driver::with_config(core, transport, Arc::clone(&timer), config);
        let inner = Arc::new(Inner {
            handle,
            timer,
            round,
            changed: event_listener::Event::new(),
            diffs: Mutex::new(HashMap::new()),
        });
        let run = {
            let inner = Arc::clone(&inner);
            async move {
                let driver = Box::pin(driver.run());
                let pump = Box::pin(pump(Arc::clone(&inner)));
                let _ = futures_util::future::select(driver, pump).await;
                inner.handle.shutdown();
                inner.changed.notify(usize::MAX);
            }
        };
        Ok((Arc::new(Self { inner }), SyncTask { future: Box::pin(run) }))
    }

    /// Stops the engine; its task ends soon after.
    pub fn shutdown(&self) {
        self.inner.handle.shutdown();
        self.inner.changed.notify(usize::MAX);
    }

    /// Reads the core (its replica, metrics, peers).
    pub fn with_core<R>(&self, f: impl FnOnce(&mut Core<K>) -> R) -> R {
        self.inner.handle.call(|core, _| f(core))
    }

    /// The driver's counters (messages, bytes, decode failures).
    pub fn driver_stats(&self) -> llmkg_transport::DriverStats {
        self.inner.handle.stats()
    }

    /// Compares this replica's current state with `peer`'s, triple by triple, by set
    /// reconciliation over triple ids (however the two states were built), and returns the
    /// triples that differ; `None` if the comparison did not finish within `timeout` (the
    /// peer is unreachable, or sent symbols that do not decode). Nothing is applied.
    pub async fn compare_with(&self, peer: NodeId, timeout: Duration) -> Option<StateDiff> {
        let take = || self.inner.diffs.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer);
        take();
        self.inner.handle.call(|core, now| core.compare_with(now, peer));
        let deadline = self.inner.timer.now() + timeout;
        loop {
            let listener = self.inner.changed.listen();
            if let Some(d) = take() {
                return Some(d);
            }
            if self.inner.timer.now() >= deadline {
                return None;
            }
            let sleep = self.inner.timer.sleep_until(deadline);
            let _ = futures_util::future::select(listener, sleep).await;
        }
    }

    /// Waits until the replica holds `id` or `timeout` passes; true if it does.
    pub async fn wait_for(&self, id: CommitId, timeout: Duration) -> bool {
        let deadline = self.inner.timer.now() + timeout;
        loop {
            let listener = self.inner.changed.listen();
            if self.with_core(|c| c.replica().contains(&id)) {
                return true;
            }
            if self.inner.timer.now() >= deadline {
                return false;
            }
            let sleep = self.inner.timer.sleep_until(deadline);
            let _ = futures_util::future::select(listener, sleep).await;
        }
    }

    async fn synchronize_inner(
        &self,
        options: FederatedSyncOptions,
    ) -> Result<FederatedSyncResult, SyncError> {
        let started = Instant::now();
        let inner = &self.inner;
        let known = self.with_core(|c| c.peers());
        let peers: Vec<NodeId> =
            if options.peers.is_empty() { known.clone() } else { options.peers.clone() };
        if let Some(p) = peers.iter().find(|p| !known.contains(p)) {
            return Err(SyncError::UnknownPeer(*p));
        }
        let before_stats = inner.handle.stats();
        let before = self.with_core(|c| {
            (
                c.metrics().clone(),
                peers.iter().map(|p| c.peer_counts(p)).collect::<Vec<_>>(),
                c.replica().metrics().triples_applied,
            )
        });
        let since = inner.timer.now();
        let deadline = since + options.timeout;
        loop {
            let listener = inner.changed.listen();
            let now = inner.timer.now();
            // Ask the peers that have not converged yet, in the same call that finds them.
            // A peer counts as converged only on a report that is not older than this call.
            let done = inner.handle.call(|core, now| {
                let waiting: Vec<NodeId> =
                    peers.iter().filter(|p| !core.converged_since(p, since)).copied().collect();
                if !waiting.is_empty() && now < deadline {
                    core.sync_now(now, &waiting);
                }
                waiting.is_empty()
            });
            if done || now >= deadline {
                break;
            }
            let next: Time = (now + inner.round).min(deadline);
            let sleep = inner.timer.sleep_until(next);
            let _ = futures_util::future::select(listener, sleep).await;
            // Let the replies arrive before asking again.
            if inner.timer.now() < next {
                inner.timer.sleep_until(next).await;
            }
        }
        let after_stats = inner.handle.stats();
        let result = self.with_core(|c| {
            let metrics = c.metrics().clone();
            let nodes: Vec<NodeSyncResult> = peers
                .iter()
                .zip(&before.1)
                .map(|(p, (sent0, recv0))| {
                    let (sent, recv) = c.peer_counts(p);
                    let mut r = NodeSyncResult::new(*p);
                    r.converged = c.converged_since(p, since);
                    r.state_root = c.peer_root(p);
                    r.commits_sent = sent - sent0;
                    r.commits_received = recv - recv0;
                    r
                })
                .collect();
            let failures = nodes
                .iter()
                .filter(|n| !n.converged)
                .map(|n| {
                    (n.node, "did not reach this node's commits before the timeout".to_owned())
                })
                .collect::<Vec<_>>();
            let consistency = if failures.is_empty() {
                ConsistencyLevel::Eventual
            } else {
                ConsistencyLevel::Partial
            };
            let triples = c.replica().metrics().triples_applied;
            (metrics, nodes, failures, consistency, c.replica_mut().state_root(), triples)
        });
        let (metrics, nodes, failures, consistency, state_root, triples) = result;
        let mut out = FederatedSyncResult::new(
            FederatedSyncStrategy::EventualConsistency,
            consistency,
            state_root,
        );
        out.nodes = nodes;
        out.commits_sent = metrics.commits_sent - before.0.commits_sent;
        out.commits_received = metrics.commits_applied - before.0.commits_applied;
        out.triples_received = triples - before.2;
        out.bytes_sent = after_stats.bytes_sent - before_stats.bytes_sent;
        out.bytes_received = after_stats.bytes_received - before_stats.bytes_received;
        out.round_trips = metrics.requests_sent - before.0.requests_sent;
        out.elapsed = started.elapsed();
        out.failures = failures;
        Ok(out)
    }
}

/// Drains the core's events and wakes whoever waits for the replica to change.
async fn pump<K: KvStore + 'static>(inner: Arc<Inner<K>>) {
    while let Some(event) = inner.handle.next_event().await {
        if let SyncEvent::StateDiff { peer, only_here, only_there } = event {
            let mut diffs = inner.diffs.lock().unwrap_or_else(|p| p.into_inner());
            diffs.insert(peer, StateDiff { only_here, only_there });
        }
        inner.changed.notify(usize::MAX);
    }
}

fn write_error(e: WriteError) -> SyncError {
    match e {
        WriteError::NothingToCommit => SyncError::NothingToCommit,
        WriteError::Storage(e) => SyncError::Storage(format!("{e} (nothing was written)")),
        other => SyncError::Refused(other.to_string()),
    }
}

impl<K: KvStore + 'static> SyncStrategy for EventualSync<K> {
    fn strategy(&self) -> FederatedSyncStrategy {
        FederatedSyncStrategy::EventualConsistency
    }

    fn write(
        &self,
        changes: ChangeSet,
        message: String,
    ) -> BoxFuture<'_, Result<CommitId, SyncError>> {
        Box::pin(async move {
            let r = self.inner.handle.call(|core, now| core.write(now, changes, &message));
            self.inner.changed.notify(usize::MAX);
            r.map_err(write_error)
        })
    }

    fn adopt(&self, commit: Vec<u8>) -> BoxFuture<'_, Result<(), SyncError>> {
        Box::pin(async move {
            let r = self.inner.handle.call(|core, now| core.adopt(now, &commit));
            self.inner.changed.notify(usize::MAX);
            match r {
                Ok(_) => Ok(()),
                Err(ReceiveError::Storage(e)) => {
                    Err(SyncError::Storage(format!("{e} (nothing was taken)")))
                }
                Err(e) => Err(SyncError::Refused(e.to_string())),
            }
        })
    }

    fn next_timestamp(&self) -> BoxFuture<'_, Result<Timestamp, SyncError>> {
        Box::pin(async move {
            Ok(self.inner.handle.call(|core, now| {
                let wall = core.wall(now);
                core.replica().next_timestamp(wall)
            }))
        })
    }

    fn synchronize(
        &self,
        options: FederatedSyncOptions,
    ) -> BoxFuture<'_, Result<FederatedSyncResult, SyncError>> {
        Box::pin(self.synchronize_inner(options))
    }

    fn status(&self) -> BoxFuture<'_, Result<ReplicaStatus, SyncError>> {
        Box::pin(async move {
            Ok(self.with_core(|c| {
                let r = c.replica_mut();
                let status = ReplicaStatus::new(
                    r.heads(),
                    r.state_root(),
                    r.len() as u64,
                    r.state().len() as u64,
                );
                if r.is_shallow() { status.shallow(r.base_len() as u64) } else { status }
            }))
        })
    }

    fn state(&self) -> BoxFuture<'_, Result<(Vec<CommitId>, GraphState), SyncError>> {
        Box::pin(async move {
            Ok(self.with_core(|c| (c.replica().heads(), c.replica().state().clone())))
        })
    }

    fn shipped(&self, id: CommitId) -> BoxFuture<'_, Result<Option<Vec<u8>>, SyncError>> {
        Box::pin(async move {
            self.with_core(|c| c.shipped(&id)).map_err(|e| match e {
                ShipError::Storage(e) => SyncError::Storage(e.to_string()),
                other => SyncError::Refused(other.to_string()),
            })
        })
    }
}
