//! The replication cases of `bench-sync`: batching over TCP, bandwidth against shipping the
//! whole state, and per-node cost as the federation grows (in the simulator).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llmkg_federation_core::consensus::GroupId;
use llmkg_federation_core::{
    ChangeSet, ChannelId, CommitId, FederationId, Incoming, MemoryKv, NodeKeypair, OrgId, Term,
    Time, Timestamp, Transport, Triple, encoding,
};
use llmkg_sync::engine::{EventualSync, SyncOptions};
use llmkg_sync::protocol::{SyncConfig, SyncCore};
use llmkg_sync::replica::{Replica, ReplicaConfig};
use llmkg_transport::sim::{Disk, Latency, LinkConfig, NodeContext, Sim, SimBuilder};
use llmkg_transport::{TcpConfig, TcpTransport, TokioTimer};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bench::{Case, round};

const WALL: i64 = 1_700_000_000_000_000;

fn keypair(i: usize) -> NodeKeypair {
    NodeKeypair::from_secret_bytes([i as u8 + 1; 32])
}

fn org() -> OrgId {
    OrgId::new("bench").unwrap()
}

fn group() -> GroupId {
    GroupId::from_bytes([5; 32])
}

/// Triple number `i` of a synthetic branch (about 90 bytes encoded).
pub fn triple(i: u64) -> Triple {
    Triple::new(
        Term::iri(format!("https://example.org/entity/{}", i / 8)).unwrap(),
        Term::iri(format!("https://example.org/property/{}", i % 8)).unwrap(),
        Term::string(format!("value {i}")).unwrap(),
    )
    .unwrap()
}

/// A replica in memory holding `commits` commits of one triple each, by one author.
fn filled_replica(commits: usize) -> (MemoryKv, Vec<CommitId>) {
    let kv = MemoryKv::new();
    let mut r = Replica::open(kv.clone(), keypair(0), org(), ReplicaConfig::default()).unwrap();
    let mut ids = Vec::with_capacity(commits);
    for i in 0..commits {
        let c = r
            .write(Timestamp::from_micros(WALL), ChangeSet::adding([triple(i as u64)]), "c")
            .unwrap();
        ids.push(c.id());
    }
    (kv, ids)
}

async fn tcp_pair() -> (Arc<TcpTransport>, Arc<TcpTransport>) {
    let f = FederationId::from_name("bench-sync");
    let a = Arc::new(TcpTransport::bind(TcpConfig::new(keypair(0), f)).await.unwrap());
    let b = Arc::new(TcpTransport::bind(TcpConfig::new(keypair(1), f)).await.unwrap());
    a.add_peer(keypair(1).node_id(), b.local_addr()).unwrap();
    b.add_peer(keypair(0).node_id(), a.local_addr()).unwrap();
    (a, b)
}

/// `sync-batching`: `commits` commits to an empty replica over TCP + Noise, by the
/// anti-entropy protocol (frame-bounded batches, pipelined) and by one request per commit,
/// in the same run.
pub fn sync_batching(commits: usize) -> Case {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (kv, ids) = filled_replica(commits);
    let head = *ids.last().unwrap();

    // Batched: two engines; the empty one synchronizes with the full one.
    let batched_s = rt.block_on(async {
        let (a, b) = tcp_pair().await;
        let timer = Arc::new(TokioTimer::new());
        let mut oa = SyncOptions::new(keypair(0), org(), group());
        oa.sync.round_interval = Duration::from_millis(50);
        let mut ob = SyncOptions::new(keypair(1), org(), group());
        ob.sync.round_interval = Duration::from_millis(50);
        let (ea, ta) = EventualSync::start(
            oa,
            kv.clone(),
            vec![keypair(1).node_id()],
            a.clone(),
            timer.clone(),
        )
        .unwrap();
        tokio::spawn(ta);
        let started = Instant::now();
        let (eb, tb) =
            EventualSync::start(ob, MemoryKv::new(), vec![keypair(0).node_id()], b.clone(), timer)
                .unwrap();
        tokio::spawn(tb);
        assert!(eb.wait_for(head, Duration::from_secs(600)).await, "batched sync did not finish");
        let s = started.elapsed().as_secs_f64();
        ea.shutdown();
        eb.shutdown();
        a.close().await;
        b.close().await;
        s
    });

    // One request per commit: the client asks for each commit by id, in order, and applies
    // the answer to its replica before asking for the next.
    let single_s = rt.block_on(async {
        let (a, b) = tcp_pair().await;
        let channel = ChannelId::new(3).unwrap();
        let server_replica = Arc::new(Mutex::new(
            Replica::open(kv.clone(), keypair(0), org(), ReplicaConfig::default()).unwrap(),
        ));
        let server = {
            let a = a.clone();
            let replica = server_replica.clone();
            tokio::spawn(async move {
                while let Ok(incoming) = a.recv_on(channel).await {
                    if let Incoming::Request { from, id, payload } = incoming {
                        let want: CommitId = encoding::decode(&payload).unwrap();
                        let bytes = replica.lock().unwrap().commit_bytes(&want).unwrap().unwrap();
                        let _ = a.respond(from, id, bytes).await;
                    }
                }
            })
        };
        let mut client =
            Replica::open(MemoryKv::new(), keypair(1), org(), ReplicaConfig::default()).unwrap();
        let started = Instant::now();
        let server_id = keypair(0).node_id();
        for id in &ids {
            let bytes = b
                .request_on(channel, server_id, encoding::encode(id), Duration::from_secs(10))
                .await
                .unwrap();
            client.receive(Timestamp::from_micros(WALL), &bytes).unwrap();
        }
        let s = started.elapsed().as_secs_f64();
        assert!(client.contains(&head));
        a.close().await;
        b.close().await;
        server.abort();
        s
    });
    // The bound: strict signature verification of every commit, one by one, nothing else.
    let envelopes: Vec<Vec<u8>> = {
        let r = Replica::open(kv.clone(), keypair(0), org(), ReplicaConfig::default()).unwrap();
        ids.iter().map(|id| r.commit_bytes(id).unwrap().unwrap()).collect()
    };
    let started = Instant::now();
    for e in &envelopes {
        llmkg_federation_core::SignedCommit::decode(e, None).unwrap();
    }
    let verify = commits as f64 / started.elapsed().as_secs_f64();
    let batched = commits as f64 / batched_s;
    let single = commits as f64 / single_s;
    Case::new("sync-batching")
        .param("commits", commits as u64)
        .param("transport", "tcp+noise, loopback")
        .metric("commits_per_s", round(batched, 0))
        .metric("one_per_request_commits_per_s", round(single, 0))
        .metric("speedup_ratio", round(batched / single, 2))
        .metric("verify_only_commits_per_s", round(verify, 0))
}

type SimNode = SyncCore<Disk>;

fn sim(
    seed: u64,
    nodes: usize,
    link: LinkConfig,
    max_batch_bytes: usize,
    vv_limit: Option<usize>,
) -> Sim<SimNode> {
    SimBuilder::new(seed)
        .nodes(nodes)
        .default_link(link)
        .max_message_len(16 << 20)
        .build(move |ctx: NodeContext| {
            let mut rc = ReplicaConfig::default();
            rc.max_commit_bytes = 16 << 20;
            let replica = Replica::open(ctx.disk.clone(), ctx.keypair(), org(), rc).unwrap();
            let mut config = SyncConfig::new(group(), Timestamp::from_micros(WALL));
            config.round_interval = Duration::from_millis(100);
            config.max_batch_bytes = max_batch_bytes;
            if let Some(limit) = vv_limit {
                config.vv_limit = limit;
            }
            SyncCore::new(replica, config, ctx.peers(), ctx.seed)
        })
        .unwrap()
}

fn heads_agree(sim: &Sim<SimNode>) -> bool {
    let heads: BTreeSet<Vec<CommitId>> =
        sim.node_ids().iter().filter_map(|id| sim.node(*id)).map(|c| c.replica().heads()).collect();
    heads.len() == 1
}

fn run_to_convergence(sim: &mut Sim<SimNode>, limit: Duration) -> Duration {
    let start = sim.now();
    while !heads_agree(sim) {
        assert!(sim.now().saturating_since(start) < limit, "no convergence");
        sim.run_for(Duration::from_millis(10));
    }
    sim.now().saturating_since(start)
}

/// `sync-bandwidth`: two replicas of a branch of `triples` triples that differ in
/// `diff_per_mille`‰ of them; bytes the protocol moves to bring the stale one up to date,
/// against shipping the whole state (its triples, canonically encoded).
pub fn sync_bandwidth(triples: u64, diff_per_mille: u64) -> Case {
    let per_commit = 10_000u64;
    let mut s = sim(
        1,
        2,
        LinkConfig::with_latency(Latency::Fixed(Duration::from_millis(5))),
        1 << 20,
        None,
    );
    let ids = s.node_ids().to_vec();
    // Node 0 builds the branch; node 1 catches up before the measured part.
    let built = Instant::now();
    for chunk in 0..triples.div_ceil(per_commit) {
        let add = (chunk * per_commit..((chunk + 1) * per_commit).min(triples)).map(triple);
        s.with_node(ids[0], |core, now| core.write(now, ChangeSet::adding(add), "bulk").unwrap())
            .unwrap();
    }
    run_to_convergence(&mut s, Duration::from_secs(3_600));
    let setup_s = built.elapsed().as_secs_f64();
    // The change: replace `diff` triples (half removed, half added) on node 0, in commits of
    // at most `per_commit` triples.
    let diff = triples * diff_per_mille / 1000;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut removed = BTreeSet::new();
    while (removed.len() as u64) < diff / 2 {
        removed.insert(rng.random_range(0..triples));
    }
    let removed: Vec<u64> = removed.into_iter().collect();
    let added: Vec<u64> = (triples..triples + diff - diff / 2).collect();
    for (r, a) in removed.chunks(per_commit as usize / 2).zip(added.chunks(per_commit as usize / 2))
    {
        let changes =
            ChangeSet::new(a.iter().copied().map(triple), r.iter().copied().map(triple)).unwrap();
        s.with_node(ids[0], |core, now| core.write(now, changes, "edit").unwrap()).unwrap();
    }
    let before = s.message_totals();
    run_to_convergence(&mut s, Duration::from_secs(3_600));
    let after = s.message_totals();
    let moved = after.sent_bytes - before.sent_bytes;
    let messages = after.sent - before.sent;
    let full: u64 = s
        .with_node(ids[0], |core, _| {
            core.replica().state().triples().iter().map(|t| encoding::encode(t).len() as u64).sum()
        })
        .unwrap();
    let roots: BTreeSet<_> = ids
        .iter()
        .map(|id| s.with_node(*id, |c, _| c.replica_mut().state_root()).unwrap())
        .collect();
    assert_eq!(roots.len(), 1, "replicas differ after sync");
    Case::new("sync-bandwidth")
        .param("triples", triples)
        .param("differing_triples", diff)
        .metric("bytes", moved)
        .metric("messages", messages)
        .metric("full_state_bytes", full)
        .metric("saved_ratio", round(1.0 - moved as f64 / full as f64, 4))
        .metric("setup_s", round(setup_s, 1))
}

/// `sync-scaling`: every node of `nodes` writes `writes_per_node` commits at random times in
/// the first second (lossless links, 1–20 ms); messages and bytes sent until every replica
/// holds every write, per node and per write. `vv_limit` overrides the protocol's choice
/// between version vectors and reconciliation over commit ids (`Some(0)` forces
/// reconciliation).
pub fn sync_scaling(
    nodes: usize,
    writes_per_node: usize,
    seed: u64,
    vv_limit: Option<usize>,
) -> Case {
    let link = LinkConfig::with_latency(Latency::Uniform {
        min: Duration::from_millis(1),
        max: Duration::from_millis(20),
    });
    let mut s = sim(seed, nodes, link, 1 << 20, vv_limit);
    let ids = s.node_ids().to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut plan: Vec<(u64, usize)> = Vec::new();
    for i in 0..nodes {
        for _ in 0..writes_per_node {
            plan.push((rng.random_range(0..1_000_000u64), i));
        }
    }
    plan.sort();
    let mut k = 0u64;
    for (at, i) in plan {
        s.run_until(Time::from_micros(at));
        k += 1;
        let t = triple(k);
        s.with_node(ids[i], |core, now| core.write(now, ChangeSet::adding([t]), "w").unwrap())
            .unwrap();
    }
    let converge = run_to_convergence(&mut s, Duration::from_secs(600));
    let totals = s.message_totals();
    let writes = (nodes * writes_per_node) as f64;
    let rounds = (Duration::from_secs(1) + converge).as_millis() as f64 / 100.0;
    Case::new("sync-scaling")
        .param("nodes", nodes as u64)
        .param("differences_by", if vv_limit == Some(0) { "reconciliation" } else { "default" })
        .param("writes", writes as u64)
        .metric("messages_per_node_per_write", round(totals.sent as f64 / nodes as f64 / writes, 3))
        .metric(
            "bytes_per_node_per_write",
            round(totals.sent_bytes as f64 / nodes as f64 / writes, 1),
        )
        .metric("messages_per_node_per_round", round(totals.sent as f64 / nodes as f64 / rounds, 2))
        .metric(
            "rounds_to_converge_after_last_write",
            round(converge.as_millis() as f64 / 100.0, 1),
        )
}
