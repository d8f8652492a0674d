//! Benchmark of consensus: Raft in the simulator (virtual latency and the deterministic
//! messages and bytes per decision), the Raft engine over TCP + Noise on loopback with an
//! in-memory log and durable on redb (latency with one proposer, throughput with 1 and 64
//! concurrent proposers, against one durable redb write measured in the same run), and the
//! cost of signed acknowledgements against unsigned ones.
//!
//! ```text
//! cargo run --release -p llmkg-examples --bin bench-consensus -- [--json] [--case NAME]
//!     [--decisions N] [--seconds S]
//! ```
//!
//! The three TCP nodes share this process and its 2-worker runtime, as three nodes on one
//! 2-core host would: every message is encrypted and crosses the kernel's loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use llmkg_consensus::engine::{AcceptAll, EngineOptions, RaftEngine};
use llmkg_consensus::raft::{
    Applied, Configuration, Raft, RaftConfig, RaftEvent, RaftSetup, Role, StateMachine,
};
use llmkg_examples::bench::{Case, Cli, Report, quantile, round};
use llmkg_federation_core::consensus::{
    ConsensusEngine, ConsensusProposal, GroupId, Member, PolicyUpdate, ProposalKind,
};
use llmkg_federation_core::{
    FederationId, KvStore, MemoryKv, NodeKeypair, OrgId, RedbKv, Signed, Timestamp, Transport,
};
use llmkg_transport::sim::{Disk, Latency, LinkConfig, Sim, SimBuilder};
use llmkg_transport::{TcpConfig, TcpTransport, TokioTimer};

#[derive(Clone)]
struct Args {
    json: bool,
    only: Option<String>,
    decisions: usize,
    seconds: f64,
}

fn args() -> Args {
    let names: Vec<&str> = CASES.iter().map(|(n, _)| *n).collect();
    let cli =
        Cli::parse("bench-consensus", &names, &[("--decisions", 2_000.0), ("--seconds", 3.0)]);
    Args {
        json: cli.json,
        only: cli.only.clone(),
        decisions: cli.get("--decisions") as usize,
        seconds: cli.get("--seconds"),
    }
}

type CaseFn = fn(&Args, &tokio::runtime::Runtime, &mut Report);

const CASES: &[(&str, CaseFn)] = &[
    ("raft-sim-3", |a, _, r| raft_sim(a, r, "raft-sim-3", 3)),
    ("raft-sim-7", |a, _, r| raft_sim(a, r, "raft-sim-7", 7)),
    ("raft-signed-acks", raft_signed_acks),
    ("raft-tcp-3-memory", |a, rt, r| raft_tcp(a, rt, r, false)),
    ("raft-tcp-3-redb", |a, rt, r| raft_tcp(a, rt, r, true)),
];

fn federation() -> FederationId {
    FederationId::from_name("bench-consensus")
}

fn group() -> GroupId {
    GroupId::from_bytes([0xbc; 32])
}

fn keypair(i: usize) -> NodeKeypair {
    NodeKeypair::from_secret_bytes([0x10 + i as u8; 32])
}

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member { node: keypair(i).node_id(), org: OrgId::new(format!("org{i}")).unwrap() })
        .collect()
}

/// A state machine that only counts.
#[derive(Default)]
struct Counter(u64);

impl StateMachine for Counter {
    type Output = u64;
    fn apply(&mut self, _index: u64, _command: &[u8]) -> u64 {
        self.0 += 1;
        self.0
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0 = u64::from_le_bytes(snapshot.try_into().map_err(|_| "bad snapshot")?);
        Ok(())
    }
}

/// A proposal as a client would make it: a signed policy update (its encoded size is reported
/// as `proposal_bytes`). In the 64-proposer runs the clients sign in the same process, on the
/// same two cores, as they go.
fn proposal(by: usize, nonce: u64) -> Signed<ConsensusProposal> {
    let p = ConsensusProposal {
        group: group(),
        kind: ProposalKind::PolicyUpdate(PolicyUpdate {
            policy: "retention".into(),
            version: nonce,
            document: vec![0; 16],
        }),
        proposed_at: Timestamp::from_micros(0),
        deadline: Timestamp::from_micros(i64::MAX),
        nonce,
    };
    Signed::sign_crate_kind(&keypair(by), &federation(), p).unwrap()
}

struct SimRun {
    latencies_ms: Vec<f64>,
    messages: u64,
    bytes: u64,
    wall: Duration,
}

/// `decisions` sequential proposals to the leader of an `n`-voter group over fixed 1 ms
/// links; each waits until the leader applied it.
fn sim_decisions(n: usize, decisions: usize, signed: bool) -> SimRun {
    let mut config = RaftConfig::default();
    config.signed_acks = signed;
    config.snapshot_threshold = u64::MAX;
    let link = LinkConfig::with_latency(Latency::Fixed(Duration::from_millis(1)));
    let voters = members(n);
    let mut sim: Sim<Raft<Disk, Counter>> = SimBuilder::new(7)
        .nodes(n)
        .secrets((0..n).map(|i| keypair(i).secret_bytes()).collect())
        .default_link(link)
        .record_events(true)
        .build(move |ctx| {
            let setup = RaftSetup {
                keypair: ctx.keypair(),
                federation: federation(),
                group: group(),
                bootstrap: Some(Configuration::new(voters.clone(), Vec::new())),
                config: config.clone(),
                seed: ctx.seed,
            };
            Raft::open(setup, ctx.disk.clone(), Counter::default()).unwrap()
        })
        .unwrap();
    sim.run_for(Duration::from_secs(1));
    let leader = sim
        .node_ids()
        .iter()
        .copied()
        .find(|id| sim.node(*id).is_some_and(|n| n.role() == Role::Leader))
        .expect("a leader within a second");
    sim.drain_events();
    let command = proposal(0, 0).encode().unwrap();
    let before = sim.message_totals();
    let mut latencies_ms = Vec::with_capacity(decisions);
    let started = Instant::now();
    for _ in 0..decisions {
        let t0 = sim.now();
        let (index, _) =
            sim.with_node(leader, |n, now| n.propose(now, command.clone())).unwrap().unwrap();
        'wait: loop {
            sim.step().expect("the simulation keeps going");
            for (at, node, event) in sim.drain_events() {
                if node == leader
                    && let RaftEvent::Applied { index: i, entry: Applied::Command(_), .. } = event
                    && i == index
                {
                    latencies_ms.push(at.saturating_since(t0).as_secs_f64() * 1e3);
                    break 'wait;
                }
            }
        }
    }
    let wall = started.elapsed();
    let after = sim.message_totals();
    SimRun {
        latencies_ms,
        messages: after.sent - before.sent,
        bytes: after.sent_bytes - before.sent_bytes,
        wall,
    }
}

fn raft_sim(a: &Args, report: &mut Report, name: &str, n: usize) {
    let decisions = a.decisions.min(5_000);
    let mut run = sim_decisions(n, decisions, true);
    let d = decisions as f64;
    report.push(
        Case::new(name)
            .param("voters", n as u64)
            .param("link_latency_ms", 1)
            .param("decisions", decisions as u64)
            .param("proposers", 1)
            .param("proposal_bytes", proposal(0, 0).encode().unwrap().len() as u64)
            .metric("virtual_latency_ms", round(quantile(&mut run.latencies_ms, 0.5), 3))
            .metric("virtual_latency_p99_ms", round(quantile(&mut run.latencies_ms, 0.99), 3))
            .metric("messages_per_decision", round(run.messages as f64 / d, 2))
            .metric("bytes_per_decision", round(run.bytes as f64 / d, 1)),
    );
}

fn raft_signed_acks(a: &Args, _rt: &tokio::runtime::Runtime, report: &mut Report) {
    let decisions = a.decisions.min(5_000);
    // Interleave to spread the machine's noise over both; take each one's best of three.
    let mut signed = Vec::new();
    let mut unsigned = Vec::new();
    let mut bytes = (0, 0);
    for _ in 0..3 {
        let s = sim_decisions(3, decisions, true);
        let u = sim_decisions(3, decisions, false);
        bytes = (s.bytes, u.bytes);
        signed.push(s.wall.as_secs_f64() * 1e6 / decisions as f64);
        unsigned.push(u.wall.as_secs_f64() * 1e6 / decisions as f64);
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (s, u) = (best(&signed), best(&unsigned));
    report.push(
        Case::new("raft-signed-acks")
            .param("voters", 3)
            .param("decisions", decisions as u64)
            .metric("signed_cpu_us_per_decision", round(s, 1))
            .metric("unsigned_cpu_us_per_decision", round(u, 1))
            .metric("cpu_ratio", round(s / u, 2))
            .metric("signed_bytes_per_decision", round(bytes.0 as f64 / decisions as f64, 1))
            .metric("unsigned_bytes_per_decision", round(bytes.1 as f64 / decisions as f64, 1))
            .metric("bytes_ratio", round(bytes.0 as f64 / bytes.1 as f64, 2)),
    );
}

type Engines<K> = Vec<Arc<RaftEngine<K, AcceptAll>>>;

/// Three engines over TCP on loopback, each with the store `kv(i)`.
async fn tcp_cluster<K: KvStore + 'static>(kv: impl Fn(usize) -> K) -> Engines<K> {
    let mut transports = Vec::new();
    for i in 0..3 {
        transports.push(Arc::new(
            TcpTransport::bind(TcpConfig::new(keypair(i), federation())).await.unwrap(),
        ));
    }
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                transports[i].add_peer(keypair(j).node_id(), transports[j].local_addr()).unwrap();
            }
        }
    }
    let timer = Arc::new(TokioTimer::new());
    let mut engines = Vec::new();
    for (i, t) in transports.into_iter().enumerate() {
        let mut options = EngineOptions::new(
            keypair(i),
            federation(),
            group(),
            Some(Configuration::new(members(3), Vec::new())),
        );
        options.raft.snapshot_threshold = 1 << 20;
        let transport: Arc<dyn Transport> = t;
        let (engine, task) =
            RaftEngine::start(options, kv(i), AcceptAll, transport, timer.clone()).unwrap();
        tokio::spawn(task);
        engines.push(engine);
    }
    // Wait for a leader.
    let started = Instant::now();
    loop {
        if engines.iter().any(|e| e.health().leader.is_some_and(|l| e.with_core(|c| c.id()) == l)) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    engines
}

fn leader_of<K: KvStore + 'static>(engines: &Engines<K>) -> Arc<RaftEngine<K, AcceptAll>> {
    engines
        .iter()
        .find(|e| e.health().leader.is_some_and(|l| e.with_core(|c| c.id()) == l))
        .cloned()
        .expect("a leader")
}

struct TcpRun {
    p50_us: f64,
    p99_us: f64,
    one_per_s: f64,
    many_per_s: f64,
}

async fn measure<K: KvStore + 'static>(engines: Engines<K>, a: &Args) -> TcpRun {
    let leader = leader_of(&engines);
    let timeout = Duration::from_secs(10);
    // Warm up.
    for n in 0..100 {
        leader.propose(proposal(0, n), timeout).await.unwrap();
    }
    // One proposer, sequential: latency and throughput.
    let mut samples = Vec::with_capacity(a.decisions);
    let started = Instant::now();
    for n in 0..a.decisions as u64 {
        // The client signs before the clock starts: what is timed is the decision.
        let p = proposal(0, 1_000 + n);
        let t0 = Instant::now();
        leader.propose(p, timeout).await.unwrap();
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
        if started.elapsed().as_secs_f64() > a.seconds {
            break;
        }
    }
    let one_per_s = samples.len() as f64 / started.elapsed().as_secs_f64();
    let p50_us = quantile(&mut samples, 0.5);
    let p99_us = quantile(&mut samples, 0.99);
    // 64 concurrent proposers for the same time.
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(a.seconds);
    let mut tasks = Vec::new();
    for p in 0..64u64 {
        let leader = leader.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                leader.propose(proposal(1, (p << 32) | done), timeout).await.unwrap();
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let many_per_s = total as f64 / started.elapsed().as_secs_f64();
    for e in &engines {
        e.shutdown();
    }
    TcpRun { p50_us, p99_us, one_per_s, many_per_s }
}

/// One durable redb write (a small put, committed with fsync), p50 over 200 writes.
fn fsync_baseline_us(dir: &std::path::Path) -> f64 {
    let kv = RedbKv::open(dir.join("baseline.redb")).unwrap();
    let mut samples = Vec::new();
    for i in 0..200u32 {
        let t0 = Instant::now();
        kv.put(&i.to_be_bytes(), &[0u8; 200]).unwrap();
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    quantile(&mut samples, 0.5)
}

fn raft_tcp(a: &Args, rt: &tokio::runtime::Runtime, report: &mut Report, durable: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (run, baseline) = if durable {
        let baseline = fsync_baseline_us(dir.path());
        let path = dir.path().to_path_buf();
        let run = rt.block_on(async {
            let engines =
                tcp_cluster(|i| RedbKv::open(path.join(format!("node{i}.redb"))).unwrap()).await;
            let a = a.clone();
            tokio::spawn(async move { measure(engines, &a).await }).await.unwrap()
        });
        (run, Some(baseline))
    } else {
        let run = rt.block_on(async {
            let engines = tcp_cluster(|_| MemoryKv::new()).await;
            let a = a.clone();
            tokio::spawn(async move { measure(engines, &a).await }).await.unwrap()
        });
        (run, None)
    };
    let name = if durable { "raft-tcp-3-redb" } else { "raft-tcp-3-memory" };
    let mut case = Case::new(name)
        .param("voters", 3)
        .param("store", if durable { "redb" } else { "memory" })
        .param("seconds", a.seconds)
        .metric("p50_us", round(run.p50_us, 1))
        .metric("p99_us", round(run.p99_us, 1))
        .metric("decisions_per_s_1_proposer", round(run.one_per_s, 0))
        .metric("decisions_per_s_64_proposers", round(run.many_per_s, 0))
        .metric("group_commit_ratio", round(run.many_per_s / run.one_per_s, 2));
    if let Some(b) = baseline {
        case = case.metric("fsync_baseline_us", round(b, 1));
    }
    report.push(case);
}

fn main() {
    let a = args();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut report = Report::new("consensus", a.json);
    for (name, run) in CASES {
        if a.only.as_deref().is_some_and(|only| only != *name) {
            continue;
        }
        if !a.json {
            eprintln!("  .. {name}");
        }
        run(&a, &rt, &mut report);
    }
    report.finish();
}
