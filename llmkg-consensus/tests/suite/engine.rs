#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The Raft engine behind the `ConsensusEngine` contract, over the in-process transport.

use std::sync::Arc;
use std::time::Duration;

use llmkg_consensus::engine::{AcceptAll, EngineOptions, RaftEngine, StartError};
use llmkg_consensus::raft::{Configuration, RaftConfig};
use llmkg_federation_core::consensus::{
    ConsensusEngine, ConsensusError, ConsensusProposal, ConsensusStrategy, GroupId, Member,
    NodeLeave, PolicyUpdate, ProposalId, ProposalKind,
};
use llmkg_federation_core::{FederationId, MemoryKv, NodeKeypair, OrgId, Signed, Timestamp};
use llmkg_transport::{InProcessNetwork, TokioTimer};

fn federation() -> FederationId {
    FederationId::from_name("engine-tests")
}

fn group() -> GroupId {
    GroupId::from_bytes([9; 32])
}

fn keys(n: u8) -> Vec<NodeKeypair> {
    (1..=n).map(|i| NodeKeypair::from_secret_bytes([i; 32])).collect()
}

fn fast() -> RaftConfig {
    let mut c = RaftConfig::default();
    c.election_timeout_min = Duration::from_millis(50);
    c.election_timeout_max = Duration::from_millis(100);
    c.heartbeat_interval = Duration::from_millis(15);
    c
}

type Engine = RaftEngine<MemoryKv, AcceptAll>;

fn cluster(n: u8) -> (Vec<Arc<Engine>>, Vec<NodeKeypair>) {
    let timer = Arc::new(TokioTimer::new());
    let network = InProcessNetwork::new(timer.clone());
    let keys = keys(n);
    let voters: Vec<Member> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Member { node: k.node_id(), org: OrgId::new(format!("org{i}")).unwrap() })
        .collect();
    let mut engines = Vec::new();
    for k in &keys {
        let transport = Arc::new(network.join(k.node_id()).unwrap());
        let mut options = EngineOptions::new(
            NodeKeypair::from_secret_bytes(k.secret_bytes()),
            federation(),
            group(),
            Some(Configuration::new(voters.clone(), Vec::new())),
        );
        options.raft = fast();
        let (engine, task) =
            RaftEngine::start(options, MemoryKv::new(), AcceptAll, transport, timer.clone())
                .unwrap();
        tokio::spawn(task);
        engines.push(engine);
    }
    (engines, keys)
}

fn proposal(by: &NodeKeypair, nonce: u64) -> Signed<ConsensusProposal> {
    let p = ConsensusProposal {
        group: group(),
        kind: ProposalKind::PolicyUpdate(PolicyUpdate {
            policy: "retention".into(),
            version: nonce,
            document: vec![1, 2, 3],
        }),
        proposed_at: Timestamp::from_micros(1),
        deadline: Timestamp::from_micros(i64::MAX),
        nonce,
    };
    Signed::sign_crate_kind(by, &federation(), p).unwrap()
}

async fn wait_for_leader(engines: &[Arc<Engine>]) -> usize {
    for _ in 0..200 {
        for (i, e) in engines.iter().enumerate() {
            let h = e.health();
            if h.leader == Some(e.with_core(|c| c.id())) {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_at_the_leader_and_at_a_follower_are_decided_with_evidence() {
    let (engines, keys) = cluster(3);
    let leader = wait_for_leader(&engines).await;
    let follower = (leader + 1) % 3;
    let membership = engines[leader].membership();
    assert_eq!(membership.voters().len(), 3);
    for (n, at) in [(1, leader), (2, follower), (3, follower), (4, leader)] {
        let p = proposal(&keys[at], n);
        let result = engines[at].propose(p.clone(), Duration::from_secs(5)).await.unwrap();
        assert!(result.approved);
        assert_eq!(result.proposal, ProposalId::of(&p).unwrap());
        assert_eq!(result.strategy, ConsensusStrategy::Raft);
        assert!(result.participants.len() >= 2, "{:?}", result.participants);
        // A third party with the membership alone checks the evidence, and it certifies
        // exactly this proposal at this index.
        let certified = result.evidence.verify(&membership, &federation()).unwrap();
        assert_eq!(certified.index, result.index);
        let entry: llmkg_consensus::raft::EntryKind =
            llmkg_federation_core::encoding::decode_with_limit(&certified.entry, 1 << 20).unwrap();
        assert_eq!(entry, llmkg_consensus::raft::EntryKind::Command(p.encode().unwrap()));
    }
    // Every member follows the same decided log, in order.
    for e in &engines {
        let mut nonces = Vec::new();
        let mut last = 0;
        for _ in 0..4 {
            let d = tokio::time::timeout(Duration::from_secs(5), e.next_decided())
                .await
                .unwrap()
                .unwrap();
            assert!(d.index > last);
            last = d.index;
            nonces.push(d.proposal.open(&federation()).unwrap().nonce);
        }
        assert_eq!(nonces, vec![1, 2, 3, 4]);
    }
    for e in &engines {
        e.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_share_writes_and_all_are_decided() {
    let (engines, keys) = cluster(3);
    let leader = wait_for_leader(&engines).await;
    let engine = engines[leader].clone();
    let mut tasks = Vec::new();
    for n in 0..64u64 {
        let engine = engine.clone();
        let p = proposal(&keys[leader], 100 + n);
        tasks.push(tokio::spawn(async move { engine.propose(p, Duration::from_secs(10)).await }));
    }
    let mut indices = Vec::new();
    for t in tasks {
        indices.push(t.await.unwrap().unwrap().index);
    }
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(indices.len(), 64, "each proposal has its own entry");
    for e in &engines {
        e.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_groups_federations_strategies_and_timeouts_are_typed_errors() {
    let (engines, keys) = cluster(3);
    wait_for_leader(&engines).await;
    // Another group's proposal.
    let mut p = ConsensusProposal {
        group: GroupId::from_bytes([1; 32]),
        kind: ProposalKind::NodeLeave(NodeLeave { node: keys[0].node_id() }),
        proposed_at: Timestamp::from_micros(1),
        deadline: Timestamp::from_micros(2),
        nonce: 1,
    };
    let other_group = Signed::sign_crate_kind(&keys[0], &federation(), p.clone()).unwrap();
    assert!(matches!(
        engines[0].propose(other_group, Duration::from_secs(1)).await,
        Err(ConsensusError::WrongGroup)
    ));
    // Another federation's signature.
    p.group = group();
    let elsewhere =
        Signed::sign_crate_kind(&keys[0], &FederationId::from_name("other"), p).unwrap();
    assert!(matches!(
        engines[0].propose(elsewhere, Duration::from_secs(1)).await,
        Err(ConsensusError::WrongGroup)
    ));
    // A strategy that is not built yet.
    let timer = Arc::new(TokioTimer::new());
    let network = InProcessNetwork::new(timer.clone());
    let k = NodeKeypair::from_secret_bytes([77; 32]);
    let transport = Arc::new(network.join(k.node_id()).unwrap());
    let mut options = EngineOptions::new(k, federation(), group(), None);
    options.strategy = ConsensusStrategy::Byzantine;
    assert!(matches!(
        RaftEngine::start(options, MemoryKv::new(), AcceptAll, transport, timer),
        Err(StartError::Strategy(ConsensusError::NotAvailable(ConsensusStrategy::Byzantine)))
    ));
    // A minority cannot decide: the proposal times out (and may still be decided later).
    for e in &engines[1..] {
        e.shutdown();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lonely = engines[0].propose(proposal(&keys[0], 9), Duration::from_millis(300)).await;
    assert!(matches!(lonely, Err(ConsensusError::Timeout { .. })), "{lonely:?}");
    engines[0].shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_share_the_nodes_each_on_its_own_channel() {
    let timer = Arc::new(TokioTimer::new());
    let network = InProcessNetwork::new(timer.clone());
    let keys = keys(3);
    let voters: Vec<Member> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Member { node: k.node_id(), org: OrgId::new(format!("org{i}")).unwrap() })
        .collect();
    let transports: Vec<_> =
        keys.iter().map(|k| Arc::new(network.join(k.node_id()).unwrap())).collect();
    let groups = [GroupId::from_bytes([21; 32]), GroupId::from_bytes([22; 32])];
    let mut engines: Vec<Vec<Arc<Engine>>> = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let mut in_group = Vec::new();
        for (k, transport) in keys.iter().zip(&transports) {
            let mut options = EngineOptions::new(
                NodeKeypair::from_secret_bytes(k.secret_bytes()),
                federation(),
                *group,
                Some(Configuration::new(voters.clone(), Vec::new())),
            );
            options.raft = fast();
            options.channel = llmkg_federation_core::ChannelId::new(1 + g as u8).unwrap();
            let (engine, task) = RaftEngine::start(
                options,
                MemoryKv::new(),
                AcceptAll,
                transport.clone(),
                timer.clone(),
            )
            .unwrap();
            tokio::spawn(task);
            in_group.push(engine);
        }
        engines.push(in_group);
    }
    for (g, group) in groups.iter().enumerate() {
        wait_for_leader(&engines[g]).await;
        for n in 0..3u64 {
            let p = ConsensusProposal {
                group: *group,
                kind: ProposalKind::PolicyUpdate(PolicyUpdate {
                    policy: format!("group {g}"),
                    version: n,
                    document: Vec::new(),
                }),
                proposed_at: Timestamp::from_micros(1),
                deadline: Timestamp::from_micros(i64::MAX),
                nonce: n,
            };
            let signed = Signed::sign_crate_kind(&keys[n as usize], &federation(), p).unwrap();
            let result =
                engines[g][n as usize].propose(signed, Duration::from_secs(5)).await.unwrap();
            let membership = engines[g][0].membership();
            assert_eq!(membership.group(), *group);
            result.evidence.verify(&membership, &federation()).unwrap();
        }
    }
    // Each group's log holds only its own proposals; neither saw a message of the other.
    for (g, group) in groups.iter().enumerate() {
        for e in &engines[g] {
            for _ in 0..3 {
                let d = tokio::time::timeout(Duration::from_secs(5), e.next_decided())
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(d.proposal.open(&federation()).unwrap().group, *group);
            }
            assert_eq!(e.with_core(|c| c.metrics().wrong_group), 0);
            e.shutdown();
        }
    }
}
