//! The paved path: a federation node assembled from the defaults — Raft for every branch's
//! group, eventual consistency for its replicas, the
//! [`FederatedSecurityManager`](crate::FederatedSecurityManager) for its security plane, one
//! key-value store (redb on disk, or memory) for everything, over any [`Transport`] (TCP +
//! Noise in production, in-process in tests).
//!
//! ```no_run
//! # async fn example(
//! #     identity: llmkg_federation_core::system::NodeIdentity,
//! #     security: llmkg_governance::FederatedSecurityManager<llmkg_federation_core::RedbKv>,
//! #     transport: std::sync::Arc<dyn llmkg_federation_core::Transport>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use llmkg_federation_core::{FederationId, RedbKv};
//! use llmkg_governance::paved::{PavedBackend, paved_system};
//! use llmkg_transport::TokioTimer;
//!
//! let store = RedbKv::open("node.redb")?;
//! let timer = Arc::new(TokioTimer::new());
//! let spawn = Arc::new(|task| {
//!     tokio::spawn(task);
//! });
//! let backend = PavedBackend::new(&identity, FederationId::from_name("research"), store,
//!     transport.clone(), timer.clone(), spawn);
//! let system = paved_system(identity, FederationId::from_name("research"), transport,
//!     Arc::new(security), backend, timer);
//! // system.create_federated_branch(request, source_triples).await? ...
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use llmkg_consensus::engine::{EngineOptions, RaftEngine};
use llmkg_consensus::raft::{Configuration, RaftConfig};
use llmkg_federation_core::consensus::{ConsensusEngine, GroupId};
use llmkg_federation_core::kv::Prefixed;
use llmkg_federation_core::registry::SharedRegistry;
use llmkg_federation_core::security::{EnvelopeSeal, SecurityManager};
use llmkg_federation_core::sync::SyncStrategy;
use llmkg_federation_core::system::{
    BackendError, BranchBackend, FederatedBranchingSystem, GroupSpec, NodeIdentity, SystemConfig,
};
use llmkg_federation_core::{
    BoxFuture, ChannelId, Clock, CommitPolicy, FederationId, KvBatch, KvStore, NodeKeypair, OrgId,
    SystemClock, Timer, Transport,
};
use llmkg_sync::engine::{EventualSync, SyncOptions};

/// How often a replica gossips its summary on the paved path: faster than the sync engine's
/// default, because a federated branch's operations (creation, merge) wait for convergence.
pub const SYNC_ROUND: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs a task on the host's executor (`|task| { tokio::spawn(task); }`).
pub type Spawner = Arc<dyn Fn(BoxFuture<'static, ()>) + Send + Sync>;

type Running<K> =
    (Arc<RaftEngine<Prefixed<K>, SharedRegistry>>, Option<Arc<EventualSync<Prefixed<K>>>>);

/// Raft and eventual sync for every branch, kept in one store under per-group prefixes.
pub struct PavedBackend<K: KvStore + Clone + 'static> {
    secret: zeroize::Zeroizing<[u8; 32]>,
    org: OrgId,
    federation: FederationId,
    store: K,
    transport: Arc<dyn Transport>,
    timer: Arc<dyn Timer>,
    clock: Arc<dyn Clock>,
    spawn: Spawner,
    raft: RaftConfig,
    running: Mutex<HashMap<GroupId, Running<K>>>,
    /// Whether a node joining a running group starts from a member's snapshot.
    snapshot_joins: std::sync::atomic::AtomicBool,
}

impl<K: KvStore + Clone + 'static> PavedBackend<K> {
    /// A backend for `identity`'s node in `federation`, storing in `store`.
    pub fn new(
        identity: &NodeIdentity,
        federation: FederationId,
        store: K,
        transport: Arc<dyn Transport>,
        timer: Arc<dyn Timer>,
        spawn: Spawner,
    ) -> Arc<Self> {
        Arc::new(Self {
            secret: zeroize::Zeroizing::new(identity.keypair.secret_bytes()),
            org: identity.certificate.org().clone(),
            federation,
            store,
            transport,
            timer,
            clock: Arc::new(SystemClock),
            spawn,
            raft: RaftConfig::default(),
            running: Mutex::new(HashMap::new()),
            snapshot_joins: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Whether a node that joins a running group catches up from a member's snapshot (the
    /// default) or from the branch's whole history; applies to groups started after.
    pub fn set_snapshot_joins(&self, on: bool) {
        self.snapshot_joins.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn keypair(&self) -> NodeKeypair {
        NodeKeypair::from_secret_bytes(*self.secret)
    }

    fn prefixed(&self, group: &GroupId, role: &str) -> Prefixed<K> {
        let mut prefix = b"fed/".to_vec();
        prefix.extend_from_slice(group.as_bytes());
        prefix.push(b'/');
        prefix.extend_from_slice(role.as_bytes());
        prefix.push(b'/');
        Prefixed::new(self.store.clone(), prefix)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<GroupId, Running<K>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn channel(n: u8) -> Result<ChannelId, BackendError> {
    ChannelId::new(n).ok_or_else(|| BackendError(format!("no transport channel {n}")))
}

impl<K: KvStore + Clone + 'static> BranchBackend for PavedBackend<K> {
    fn start_consensus(
        &self,
        spec: &GroupSpec,
        machine: SharedRegistry,
    ) -> Result<Arc<dyn ConsensusEngine>, BackendError> {
        if let Some((engine, _)) = self.running().get(&spec.group) {
            return Ok(engine.clone());
        }
        let bootstrap = spec
            .bootstrap
            .as_ref()
            .map(|m| Configuration::new(m.voters().to_vec(), m.learners().to_vec()));
        let mut options =
            EngineOptions::new(self.keypair(), self.federation, spec.group, bootstrap);
        options.channel = channel(spec.channels.consensus)?;
        options.raft = self.raft.clone();
        options.clock = Arc::clone(&self.clock);
        let kv = self.prefixed(&spec.group, "raft");
        let (engine, task) = RaftEngine::start(
            options,
            kv,
            machine,
            Arc::clone(&self.transport),
            Arc::clone(&self.timer),
        )
        .map_err(|e| BackendError(format!("consensus: {e}")))?;
        (self.spawn)(Box::pin(task));
        self.running().insert(spec.group, (Arc::clone(&engine), None));
        Ok(engine)
    }

    fn start_sync(
        &self,
        spec: &GroupSpec,
        policy: Arc<dyn CommitPolicy>,
        seal: Option<Arc<dyn EnvelopeSeal>>,
    ) -> Result<Arc<dyn SyncStrategy>, BackendError> {
        if let Some((_, Some(sync))) = self.running().get(&spec.group) {
            return Ok(sync.clone());
        }
        let mut options = SyncOptions::new(self.keypair(), self.org.clone(), spec.group);
        options.channel = channel(spec.channels.sync)?;
        options.clock = Arc::clone(&self.clock);
        options.sync.round_interval = SYNC_ROUND;
        options.seal = seal;
        // A node joining a running group starts from a member's snapshot.
        options.join_from_snapshot = spec.bootstrap.is_none()
            && self.snapshot_joins.load(std::sync::atomic::Ordering::Relaxed);
        let kv = self.prefixed(&spec.group, "sync");
        let (sync, task) = EventualSync::start_with_policy(
            options,
            kv,
            policy,
            spec.peers.clone(),
            Arc::clone(&self.transport),
            Arc::clone(&self.timer),
        )
        .map_err(|e| BackendError(format!("sync: {e}")))?;
        (self.spawn)(Box::pin(task));
        if let Some(entry) = self.running().get_mut(&spec.group) {
            entry.1 = Some(Arc::clone(&sync));
        }
        Ok(sync)
    }

    fn stop(&self, group: &GroupId) {
        if let Some((engine, sync)) = self.running().remove(group) {
            engine.shutdown();
            if let Some(sync) = sync {
                sync.shutdown();
            }
        }
    }

    fn remember(&self, group: &GroupId, creation: &[u8]) -> Result<(), BackendError> {
        let batch = KvBatch::new().put(hosted_key(group), creation.to_vec());
        self.store.write(batch).map_err(|e| BackendError(format!("storage: {e}")))
    }

    fn forget(&self, group: &GroupId) -> Result<(), BackendError> {
        let batch = KvBatch::new().delete(hosted_key(group));
        self.store.write(batch).map_err(|e| BackendError(format!("storage: {e}")))
    }

    fn remembered(&self) -> Result<Vec<Vec<u8>>, BackendError> {
        let pairs = self
            .store
            .scan_prefix(HOSTED_PREFIX, 4096)
            .map_err(|e| BackendError(format!("storage: {e}")))?;
        Ok(pairs.into_iter().map(|(_, v)| v).collect())
    }

    fn recorded(&self, group: &GroupId) -> Result<u64, BackendError> {
        let value = self
            .store
            .get(&recorded_key(group))
            .map_err(|e| BackendError(format!("storage: {e}")))?;
        Ok(value.and_then(|v| v.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0))
    }

    fn set_recorded(&self, group: &GroupId, index: u64) -> Result<(), BackendError> {
        let batch = KvBatch::new().put(recorded_key(group), index.to_be_bytes().to_vec());
        self.store.write(batch).map_err(|e| BackendError(format!("storage: {e}")))
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        (self.spawn)(task);
    }
}

fn recorded_key(group: &GroupId) -> Vec<u8> {
    let mut key = b"fed-recorded/".to_vec();
    key.extend_from_slice(group.as_bytes());
    key
}

const HOSTED_PREFIX: &[u8] = b"fed-hosted/";

fn hosted_key(group: &GroupId) -> Vec<u8> {
    let mut key = HOSTED_PREFIX.to_vec();
    key.extend_from_slice(group.as_bytes());
    key
}

/// A [`FederatedBranchingSystem`] on the paved path: `backend`'s Raft and eventual sync,
/// `security`'s governance, over `transport`, with the system clock and default settings.
pub fn paved_system<K: KvStore + Clone + 'static>(
    identity: NodeIdentity,
    federation: FederationId,
    transport: Arc<dyn Transport>,
    security: Arc<dyn SecurityManager>,
    backend: Arc<PavedBackend<K>>,
    timer: Arc<dyn Timer>,
) -> FederatedBranchingSystem {
    FederatedBranchingSystem::start(
        identity,
        federation,
        transport,
        security,
        backend,
        Arc::new(SystemClock),
        timer,
        SystemConfig::default(),
    )
}
