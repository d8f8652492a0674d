#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Durability of a `Replica` on `RedbKv` under a real `SIGKILL`.
//!
//! The test binary re-executes itself: `replica_crash_child` (a no-op unless
//! `LLMKG_REPLICA_CRASH_DIR` is set) writes commits — its own, and ones received from a second
//! author whose commits the parent prepared, in an endless loop, printing each id once the
//! call returned. The parent kills it at a random moment, reopens the replica (which verifies
//! every stored commit again) and checks that every acknowledged commit is held, that the
//! state is the one its commits determine (a fresh replica fed the same commits has the same
//! root), and that the reopened replica can go on writing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmkg_federation_core::{
    ChangeSet, CommitId, MemoryKv, NodeKeypair, OrgId, RedbKv, Term, Timestamp, Triple,
};
use llmkg_sync::replica::{Replica, ReplicaConfig};

const CHILD_ENV: &str = "LLMKG_REPLICA_CRASH_DIR";
const ROUNDS: u64 = 8;
const WALL: i64 = 1_700_000_000_000_000;

fn triple(i: u64) -> Triple {
    Triple::new(
        Term::iri(format!("https://example.org/s{}", i % 50)).unwrap(),
        Term::iri("https://example.org/p").unwrap(),
        Term::string(format!("{i}")).unwrap(),
    )
    .unwrap()
}

fn open(dir: &Path) -> Replica<RedbKv> {
    let kv = RedbKv::open(dir.join("replica.redb")).expect("open the store");
    Replica::open(
        kv,
        NodeKeypair::from_secret_bytes([1; 32]),
        OrgId::new("acme").unwrap(),
        ReplicaConfig::default(),
    )
    .expect("the replica opens and every stored commit checks out")
}

/// A chain of commits by a second author, made once in memory and replayed into the child.
fn other_author(n: u64) -> Vec<Vec<u8>> {
    let mut r = Replica::open(
        MemoryKv::new(),
        NodeKeypair::from_secret_bytes([2; 32]),
        OrgId::new("globex").unwrap(),
        ReplicaConfig::default(),
    )
    .unwrap();
    (0..n)
        .map(|i| {
            r.write(
                Timestamp::from_micros(WALL),
                ChangeSet::adding([triple(1_000_000 + i)]),
                "other",
            )
            .unwrap()
            .encode()
        })
        .collect()
}

/// The child: alternately writes its own commit (adding, or removing a triple it holds) and
/// receives the next of the other author's, printing `ACK <id>` after each call returned.
#[test]
fn replica_crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut r = open(Path::new(&dir));
    let others = other_author(5_000);
    println!("OPEN {}", r.len());
    let mut i = r.len() as u64;
    loop {
        i += 1;
        let wall = Timestamp::from_micros(WALL + i as i64);
        if i.is_multiple_of(2) {
            let held = r.state().triples();
            let changes = if i.is_multiple_of(6) && !held.is_empty() {
                ChangeSet::removing([held[(i as usize / 6) % held.len()].clone()])
            } else {
                ChangeSet::adding([triple(i)])
            };
            if let Ok(c) = r.write(wall, changes, "mine") {
                println!("ACK {}", c.id());
            }
        } else if let Some(bytes) = others.iter().find(|b| {
            let c = llmkg_federation_core::SignedCommit::decode(b, None).unwrap();
            !r.contains(&c.id())
        }) {
            let c = llmkg_federation_core::SignedCommit::decode(bytes, None).unwrap();
            r.receive(wall, bytes).unwrap();
            println!("ACK {}", c.id());
        }
    }
}

/// SplitMix64, for the delays.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn no_acknowledged_commit_is_lost_when_the_process_is_killed() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let mut rng = 0x5eed_u64;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut killed_with_acks = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "replica_crash_child", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let reader = {
            let acked = acked.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let line = line.rsplit_once("... ").map_or(line.as_str(), |(_, rest)| rest);
                    let mut words = line.split_whitespace();
                    match (words.next(), words.next()) {
                        (Some("OPEN"), Some(_)) => {
                            let _ = opened_tx.send(());
                        }
                        (Some("ACK"), Some(id)) => acked.lock().unwrap().push(id.to_owned()),
                        _ => {}
                    }
                }
            })
        };
        opened_rx.recv_timeout(Duration::from_secs(120)).expect("the child opened its replica");
        std::thread::sleep(Duration::from_millis(50 + next(&mut rng) % 300));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let acked = Arc::try_unwrap(acked).unwrap().into_inner().unwrap();
        let mut r = open(dir.path());
        let held: std::collections::BTreeSet<String> =
            r.ids().map(|c: CommitId| c.to_string()).collect();
        for id in &acked {
            assert!(held.contains(id), "round {round}: acknowledged commit {id} lost");
        }
        // The state is the one the held commits determine: a fresh replica fed them agrees.
        let mut fresh = Replica::open(
            MemoryKv::new(),
            NodeKeypair::from_secret_bytes([3; 32]),
            OrgId::new("x").unwrap(),
            ReplicaConfig::default(),
        )
        .unwrap();
        for id in r.ids().collect::<Vec<_>>() {
            fresh
                .receive(
                    Timestamp::from_micros(i64::MAX / 2),
                    &r.commit_bytes(&id).unwrap().unwrap(),
                )
                .unwrap();
        }
        assert_eq!(fresh.state_root(), r.state_root(), "round {round}");
        assert_eq!(fresh.heads(), r.heads(), "round {round}");
        if !acked.is_empty() {
            killed_with_acks += 1;
        }
        println!(
            "round {round}: killed after {} acknowledged commits; {} held",
            acked.len(),
            held.len()
        );
    }
    assert!(killed_with_acks >= ROUNDS / 2, "most kills must interrupt a child that wrote");
    // The reopened replica goes on writing on its own chain.
    let mut r = open(dir.path());
    let n = r.len();
    r.write(
        Timestamp::from_micros(WALL + 1_000_000_000),
        ChangeSet::adding([triple(u64::MAX / 2)]),
        "after",
    )
    .unwrap();
    assert_eq!(r.len(), n + 1);
}
