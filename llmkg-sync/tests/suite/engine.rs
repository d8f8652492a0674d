#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The eventual-consistency engine behind the `SyncStrategy` contract: the same core as in
//! the simulator, in-process and over TCP + Noise.

use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::consensus::GroupId;
use llmkg_federation_core::sync::{
    ConsistencyLevel, FederatedSyncOptions, FederatedSyncStrategy, SyncError, SyncStrategy,
};
use llmkg_federation_core::{
    ChangeSet, FederationId, MemoryKv, NodeId, NodeKeypair, OrgId, Term, Transport, Triple,
};
use llmkg_sync::engine::{EventualSync, StartError, SyncOptions};
use llmkg_transport::{InProcessNetwork, TcpConfig, TcpTransport, TokioTimer};

fn keypair(i: usize) -> NodeKeypair {
    NodeKeypair::from_secret_bytes([i as u8 + 1; 32])
}

fn triple(s: &str, o: &str) -> Triple {
    Triple::new(
        Term::iri(format!("https://example.org/{s}")).unwrap(),
        Term::iri("https://example.org/p").unwrap(),
        Term::string(o).unwrap(),
    )
    .unwrap()
}

fn options(i: usize) -> SyncOptions {
    let mut o = SyncOptions::new(
        keypair(i),
        OrgId::new(format!("org{i}")).unwrap(),
        GroupId::from_bytes([3; 32]),
    );
    o.sync.round_interval = Duration::from_millis(20);
    o
}

type Engine = EventualSync<MemoryKv>;

fn start(transports: Vec<Arc<dyn Transport>>, timer: Arc<TokioTimer>) -> Vec<Arc<Engine>> {
    let ids: Vec<NodeId> = (0..transports.len()).map(|i| keypair(i).node_id()).collect();
    transports
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let peers = ids.iter().copied().filter(|p| *p != ids[i]).collect();
            let (engine, task) =
                EventualSync::start(options(i), MemoryKv::new(), peers, t, timer.clone()).unwrap();
            tokio::spawn(task);
            engine
        })
        .collect()
}

/// Concurrent writes on every node, one removal concurrent with a re-addition, then a
/// synchronization: every replica reaches the same heads and state root.
async fn converge(engines: &[Arc<Engine>]) {
    let shared = triple("shared", "x");
    engines[0].write(ChangeSet::adding([shared.clone()]), "shared".into()).await.unwrap();
    let r = engines[0]
        .synchronize(FederatedSyncOptions::default().with_timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(r.consistency, ConsistencyLevel::Eventual, "{r:?}");
    // Now concurrently: node 0 removes it, node 1 writes something else, node 2 writes too.
    let (a, b, c) = tokio::join!(
        engines[0].write(ChangeSet::removing([shared.clone()]), "remove".into()),
        engines[1].write(ChangeSet::adding([triple("one", "1")]), "one".into()),
        engines[2].write(ChangeSet::adding([triple("two", "2")]), "two".into()),
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    // Writing what is already there is refused, typed.
    assert!(matches!(
        engines[1].write(ChangeSet::adding([triple("one", "1")]), "again".into()).await,
        Err(SyncError::NothingToCommit)
    ));
    for e in engines {
        let r = e
            .synchronize(FederatedSyncOptions::default().with_timeout(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(r.strategy, FederatedSyncStrategy::EventualConsistency);
        assert_eq!(r.consistency, ConsistencyLevel::Eventual, "{r:?}");
        assert!(r.failures.is_empty());
        assert!(r.nodes.iter().all(|n| n.converged && n.state_root == Some(r.state_root)));
    }
    let mut statuses = Vec::new();
    for e in engines {
        statuses.push(e.status().await.unwrap());
    }
    assert!(statuses.windows(2).all(|w| w[0] == w[1]), "{statuses:?}");
    assert_eq!(statuses[0].commits, 4);
    assert_eq!(statuses[0].triples, 2);
    let state_has_shared = engines[1].with_core(|c| c.replica().state().contains(&shared));
    assert!(!state_has_shared);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_converge_in_process() {
    let timer = Arc::new(TokioTimer::new());
    let network = InProcessNetwork::new(timer.clone());
    let transports: Vec<Arc<dyn Transport>> = (0..3)
        .map(|i| Arc::new(network.join(keypair(i).node_id()).unwrap()) as Arc<dyn Transport>)
        .collect();
    let engines = start(transports, timer);
    converge(&engines).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_converge_over_tcp() {
    let federation = FederationId::from_name("sync-engine-tests");
    let mut tcp = Vec::new();
    for i in 0..3 {
        tcp.push(Arc::new(
            TcpTransport::bind(TcpConfig::new(keypair(i), federation)).await.unwrap(),
        ));
    }
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                tcp[i].add_peer(keypair(j).node_id(), tcp[j].local_addr()).unwrap();
            }
        }
    }
    let transports: Vec<Arc<dyn Transport>> =
        tcp.into_iter().map(|t| t as Arc<dyn Transport>).collect();
    let engines = start(transports, Arc::new(TokioTimer::new()));
    converge(&engines).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_not_built_are_refused_and_unknown_peers_named() {
    let timer = Arc::new(TokioTimer::new());
    let network = InProcessNetwork::new(timer.clone());
    for strategy in [
        FederatedSyncStrategy::StrongConsistency,
        FederatedSyncStrategy::ConflictResolution,
        FederatedSyncStrategy::Custom("mine".into()),
    ] {
        let mut o = options(0);
        o.strategy = strategy.clone();
        let t = Arc::new(
            network.join(NodeKeypair::from_secret_bytes([90; 32]).node_id()).unwrap_or_else(|_| {
                network.join(NodeKeypair::from_secret_bytes([91; 32]).node_id()).unwrap()
            }),
        );
        match EventualSync::start(o, MemoryKv::new(), Vec::new(), t, timer.clone()) {
            Err(StartError::Strategy(SyncError::NotAvailable(s))) => assert_eq!(s, strategy),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("{strategy} started"),
        }
    }
    let t = Arc::new(network.join(keypair(0).node_id()).unwrap());
    let (engine, task) =
        EventualSync::start(options(0), MemoryKv::new(), Vec::new(), t, timer).unwrap();
    tokio::spawn(task);
    let stranger = NodeKeypair::from_secret_bytes([77; 32]).node_id();
    let r = engine.synchronize(FederatedSyncOptions::default().with_peers([stranger])).await;
    assert!(matches!(r, Err(SyncError::UnknownPeer(p)) if p == stranger));
    // Alone, a synchronization with nobody is trivially complete.
    let r = engine.synchronize(FederatedSyncOptions::default()).await.unwrap();
    assert_eq!(r.consistency, ConsistencyLevel::Eventual);
}
