#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Three Raft nodes as separate OS processes over TCP + Noise, each durable on redb. One is
//! killed with SIGKILL at random moments and restarted, over and over, while every node keeps
//! proposing; afterwards no acknowledged decision is missing and the three logs agree.
//!
//! The test binary re-executes itself: `raft_node_child` (a no-op unless
//! `LLMKG_RAFT_NODE` is set) runs one node and a client that proposes in a loop, printing
//! `ACK <index> <nonce>` for each decision it received (with evidence that verified). The
//! kill schedule comes from a fixed seed (`LLMKG_RAFT_KILL_SEED` to change it; it is printed).
//!
//! Nodes snapshot every [`SNAPSHOT_EVERY`] entries, so kills also land around compactions and
//! restarted nodes catch up from snapshots. The state machine remembers the nonce decided at
//! each index, so a decision compacted out of a log is still checked, in its snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llmkg_consensus::engine::{EngineOptions, RaftEngine};
use llmkg_consensus::log::DurableLog;
use llmkg_consensus::raft::{Configuration, EntryKind, decode_snapshot};
use llmkg_federation_core::consensus::{
    ConsensusEngine, ConsensusProposal, DecisionMachine, GroupId, Member, Outcome, PolicyUpdate,
    ProposalKind,
};
use llmkg_federation_core::{
    FederationId, NodeKeypair, OrgId, RedbKv, Signed, Timestamp, encoding,
};
use llmkg_transport::{TcpConfig, TcpTransport, TokioTimer};

const CHILD_ENV: &str = "LLMKG_RAFT_NODE";
const SEED_ENV: &str = "LLMKG_RAFT_KILL_SEED";
const DEFAULT_SEED: u64 = 0x7af7_c0de;
const KILLS: usize = 24;
const SNAPSHOT_EVERY: u64 = 1500;

/// Approves everything and remembers which proposal nonce was decided at which index.
#[derive(Default)]
struct NonceMachine(BTreeMap<u64, u64>);

impl DecisionMachine for NonceMachine {
    fn decide(&mut self, index: u64, proposal: &Signed<ConsensusProposal>) -> Outcome {
        if let Ok(p) = proposal.open(&federation()) {
            self.0.insert(index, p.nonce);
        }
        Outcome::Approved
    }

    fn snapshot(&self) -> Vec<u8> {
        encoding::try_encode(&self.0).unwrap()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0 =
            encoding::decode_with_limit(snapshot, snapshot.len()).map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn federation() -> FederationId {
    FederationId::from_name("raft-processes")
}

fn group() -> GroupId {
    GroupId::from_bytes([0x3a; 32])
}

fn keypair(i: usize) -> NodeKeypair {
    NodeKeypair::from_secret_bytes([0x40 + i as u8; 32])
}

fn voters() -> Vec<Member> {
    (0..3)
        .map(|i| Member { node: keypair(i).node_id(), org: OrgId::new(format!("org{i}")).unwrap() })
        .collect()
}

fn store(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("node{i}.redb"))
}

/// One node: `LLMKG_RAFT_NODE=<index>;<incarnation>;<dir>;<port0>,<port1>,<port2>`.
#[test]
fn raft_node_child() {
    let Some(spec) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let spec = spec.to_string_lossy().to_string();
    let parts: Vec<&str> = spec.split(';').collect();
    let (index, incarnation): (usize, u64) = (parts[0].parse().unwrap(), parts[1].parse().unwrap());
    let dir = PathBuf::from(parts[2]);
    let ports: Vec<u16> = parts[3].split(',').map(|p| p.parse().unwrap()).collect();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let mut config = TcpConfig::new(keypair(index), federation());
        config.listen_addr = SocketAddr::from(([127, 0, 0, 1], ports[index]));
        config.backoff_max = Duration::from_millis(200);
        let transport = Arc::new(TcpTransport::bind(config).await.unwrap());
        for (i, port) in ports.iter().enumerate() {
            if i != index {
                transport
                    .add_peer(keypair(i).node_id(), SocketAddr::from(([127, 0, 0, 1], *port)))
                    .unwrap();
            }
        }
        let kv = RedbKv::open(store(&dir, index)).unwrap();
        let mut options = EngineOptions::new(
            keypair(index),
            federation(),
            group(),
            Some(Configuration::new(voters(), Vec::new())),
        );
        options.seed = incarnation * 7 + index as u64;
        options.raft.snapshot_threshold = SNAPSHOT_EVERY;
        let timer = Arc::new(TokioTimer::new());
        let (engine, task) =
            RaftEngine::start(options, kv, NonceMachine::default(), transport, timer).unwrap();
        tokio::spawn(task);
        println!("READY");
        let membership = engine.membership();
        let mut counter = 0u64;
        loop {
            counter += 1;
            let nonce = ((index as u64) << 56) | (incarnation << 32) | counter;
            let proposal = ConsensusProposal {
                group: group(),
                kind: ProposalKind::PolicyUpdate(PolicyUpdate {
                    policy: "p".into(),
                    version: nonce,
                    document: Vec::new(),
                }),
                proposed_at: Timestamp::from_micros(0),
                deadline: Timestamp::from_micros(i64::MAX),
                nonce,
            };
            let signed = Signed::sign_crate_kind(&keypair(index), &federation(), proposal).unwrap();
            match engine.propose(signed, Duration::from_secs(2)).await {
                Ok(result) => {
                    let ok = result
                        .evidence
                        .verify(&membership, &federation())
                        .is_ok_and(|c| c.index == result.index);
                    if ok {
                        println!("ACK {} {nonce}", result.index);
                    } else {
                        println!("BAD-EVIDENCE {}", result.index);
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
}

/// SplitMix64, for the kill schedule.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Default)]
struct Seen {
    /// (index, nonce, when)
    acks: Vec<(u64, u64, Instant)>,
    ready: usize,
    bad_evidence: usize,
}

fn spawn(
    exe: &Path,
    dir: &Path,
    index: usize,
    incarnation: u64,
    ports: &[u16],
    seen: &Arc<Mutex<Seen>>,
) -> Child {
    let ports = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let spec = format!("{index};{incarnation};{};{ports}", dir.display());
    let mut child = Command::new(exe)
        .args(["--exact", "raft_node_child", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let seen = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let line = line.rsplit_once("... ").map_or(line.as_str(), |(_, rest)| rest);
            let mut words = line.split_whitespace();
            let mut s = seen.lock().unwrap();
            match (words.next(), words.next(), words.next()) {
                (Some("READY"), None, None) => s.ready += 1,
                (Some("ACK"), Some(index), Some(nonce)) => {
                    s.acks.push((index.parse().unwrap(), nonce.parse().unwrap(), Instant::now()));
                }
                (Some("BAD-EVIDENCE"), _, _) => s.bad_evidence += 1,
                _ => {}
            }
        }
    });
    child
}

fn free_ports() -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..3).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// The proposal nonce decided at each index a node holds: those its snapshot covers (from
/// the snapshot's state) and those of its log.
fn log_nonces(dir: &Path, i: usize) -> (DurableLog<RedbKv>, BTreeMap<u64, u64>) {
    let kv = RedbKv::open(store(dir, i)).unwrap();
    let log = DurableLog::open(kv, group()).unwrap();
    let data = log.snapshot_data().unwrap();
    let mut nonces = if data.is_empty() {
        BTreeMap::new()
    } else {
        let (_, state) = decode_snapshot(&data).unwrap();
        let mut machine = NonceMachine::default();
        machine.restore(&state).unwrap();
        assert!(
            machine.0.keys().all(|&k| k <= log.snapshot_point().index),
            "node {i}'s snapshot holds decisions past its point"
        );
        machine.0
    };
    let mut from = log.first_index();
    while from <= log.last_index() {
        let page = log.entries(from, 512, usize::MAX).unwrap();
        for e in &page {
            if let Ok(EntryKind::Command(bytes)) =
                encoding::decode_with_limit::<EntryKind>(&e.payload, 1 << 20)
            {
                let p = Signed::<ConsensusProposal>::decode(&bytes, &federation()).unwrap();
                nonces.insert(e.index, p.open(&federation()).unwrap().nonce);
            }
        }
        from = page.last().map_or(from + 1, |e| e.index + 1);
    }
    (log, nonces)
}

#[test]
fn acknowledged_decisions_survive_sigkill_of_a_node_process() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let seed = std::env::var(SEED_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED);
    println!("raft process test seed {seed} (set {SEED_ENV} to change it)");
    let mut rng = seed;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let ports = free_ports();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut incarnations = [0u64; 3];
    let mut children: Vec<Child> =
        (0..3).map(|i| spawn(&exe, dir.path(), i, 0, &ports, &seen)).collect();
    let started = Instant::now();
    while seen.lock().unwrap().acks.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "no decision within a minute");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut kills_with_progress = 0;
    for kill in 0..KILLS {
        let before = seen.lock().unwrap().acks.len();
        std::thread::sleep(Duration::from_millis(150 + next(&mut rng) % 600));
        let victim = (next(&mut rng) % 3) as usize;
        children[victim].kill().unwrap(); // SIGKILL
        children[victim].wait().unwrap();
        if seen.lock().unwrap().acks.len() > before {
            kills_with_progress += 1;
        }
        // Down for a moment, then back on the same store.
        std::thread::sleep(Duration::from_millis(next(&mut rng) % 300));
        incarnations[victim] += 1;
        children[victim] = spawn(&exe, dir.path(), victim, incarnations[victim], &ports, &seen);
        println!(
            "kill {kill}: node {victim}, {} decisions acknowledged so far",
            seen.lock().unwrap().acks.len()
        );
    }
    // Let the restarted node catch up, then stop everyone at once.
    std::thread::sleep(Duration::from_secs(3));
    let settled = Instant::now() - Duration::from_secs(2);
    for c in &mut children {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.bad_evidence, 0, "every decision's evidence verified");
    assert!(kills_with_progress >= KILLS / 2, "decisions kept coming between kills");
    let logs: Vec<_> = (0..3).map(|i| log_nonces(dir.path(), i)).collect();
    // The three logs agree wherever two of them hold the same index.
    for i in 0..3 {
        for j in (i + 1)..3 {
            let (a, b) = (&logs[i].0, &logs[j].0);
            let common = a.last_index().min(b.last_index());
            let from = a.first_index().max(b.first_index());
            if common >= from {
                assert_eq!(
                    a.chain_at(common).unwrap(),
                    b.chain_at(common).unwrap(),
                    "logs {i} and {j} disagree at {common}"
                );
            }
        }
    }
    // Where two nodes know what was decided at an index (in a log or a snapshot), they agree.
    for i in 0..3 {
        for j in (i + 1)..3 {
            for (index, nonce) in &logs[i].1 {
                if let Some(other) = logs[j].1.get(index) {
                    assert_eq!(nonce, other, "nodes {i} and {j} decided differently at {index}");
                }
            }
        }
    }
    // No acknowledged decision is missing: each is in a majority of the logs, at its index;
    // and those acknowledged before the last moments are in all three.
    let mut distinct = BTreeSet::new();
    for &(index, nonce, at) in &seen.acks {
        assert!(distinct.insert(nonce), "nonce {nonce} acknowledged twice");
        let holders = logs.iter().filter(|(_, n)| n.get(&index) == Some(&nonce)).count();
        assert!(holders >= 2, "decision {nonce} at {index} is in {holders} logs");
        if at < settled {
            assert_eq!(holders, 3, "decision {nonce} at {index} is not in every log");
        }
    }
    println!(
        "{KILLS} kills ({kills_with_progress} with decisions in between), {} decisions acknowledged and all present; logs end at {:?}, snapshots at {:?}",
        seen.acks.len(),
        logs.iter().map(|(l, _)| l.last_index()).collect::<Vec<_>>(),
        logs.iter().map(|(l, _)| l.snapshot_point().index).collect::<Vec<_>>()
    );
}
