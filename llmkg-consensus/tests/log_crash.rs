#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Durability of `DurableLog` on `RedbKv` under a real `SIGKILL`.
//!
//! The test binary re-executes itself: `log_crash_child` (a no-op unless
//! `LLMKG_LOG_CRASH_DIR` is set) appends entries, saves its hard state and compacts in an
//! endless loop, printing each call that returned; the parent kills it at a random moment,
//! reopens the log (which checks the whole hash chain) and checks that nothing acknowledged was
//! lost: every acknowledged entry still held has the acknowledged chain hash, the log reaches
//! at least the last acknowledged index, and the hard state and snapshot point are at least
//! the acknowledged ones.
//!
//! The delays come from a fixed seed (`LLMKG_LOG_CRASH_SEED` to change it; it is printed). The
//! instant a kill lands still depends on the machine's speed, so a failure reproduces the
//! workload, not necessarily the instant.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmkg_consensus::log::{DurableLog, HardState};
use llmkg_federation_core::RedbKv;
use llmkg_federation_core::consensus::{ChainHash, GroupId};

const CHILD_ENV: &str = "LLMKG_LOG_CRASH_DIR";
const SEED_ENV: &str = "LLMKG_LOG_CRASH_SEED";
const DEFAULT_SEED: u64 = 0x10c5_c4a5;
const ROUNDS: u64 = 12;

fn group() -> GroupId {
    GroupId::from_bytes([0x1c; 32])
}

fn open(dir: &Path) -> DurableLog<RedbKv> {
    let kv = RedbKv::open(dir.join("log.redb")).expect("open the store");
    DurableLog::open(kv, group()).expect("the log opens and its chain checks out")
}

/// The child: appends forever, printing `ACK <index> <chain>` after each append returned,
/// `HARD <term>` after each hard-state save and `COMPACT <index>` after each compaction.
#[test]
fn log_crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut log = open(Path::new(&dir));
    println!("OPEN {}", log.last_index());
    let mut term = log.hard_state().term;
    loop {
        let index = log.last_index() + 1;
        if index % 40 == 1 {
            term += 1;
            log.save_hard_state(HardState { term, vote: None }).unwrap();
            println!("HARD {term}");
        }
        let payload = format!("entry {index} of term {term}").into_bytes();
        let last = log.append(term.max(1), vec![payload.clone(), payload]).unwrap();
        println!("ACK {last} {}", log.last_chain());
        if last % 100 < 2 && last > 50 {
            log.compact(last - 30, b"").unwrap();
            println!("COMPACT {}", last - 30);
        }
    }
}

#[derive(Default)]
struct Acked {
    entries: Vec<(u64, String)>,
    hard_term: u64,
    compacted: u64,
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
fn no_acknowledged_entry_is_lost_when_the_process_is_killed() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let seed = std::env::var(SEED_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED);
    println!("log crash test seed {seed} (set {SEED_ENV} to change it)");
    let mut rng = seed;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut killed_with_acks = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "log_crash_child", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let acked = Arc::new(Mutex::new(Acked::default()));
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let reader = {
            let acked = acked.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // The harness prints `test log_crash_child ... ` before the first line.
                    let line = line.rsplit_once("... ").map_or(line.as_str(), |(_, rest)| rest);
                    let mut words = line.split_whitespace();
                    let mut a = acked.lock().unwrap();
                    match (words.next(), words.next(), words.next()) {
                        (Some("OPEN"), Some(_), None) => {
                            let _ = opened_tx.send(());
                        }
                        (Some("ACK"), Some(index), Some(chain)) => {
                            a.entries.push((index.parse().unwrap(), chain.to_string()));
                        }
                        (Some("HARD"), Some(term), None) => a.hard_term = term.parse().unwrap(),
                        (Some("COMPACT"), Some(index), None) => {
                            a.compacted = index.parse().unwrap();
                        }
                        _ => {}
                    }
                }
            })
        };
        opened_rx.recv_timeout(Duration::from_secs(60)).expect("the child opened its log");
        std::thread::sleep(Duration::from_millis(20 + next(&mut rng) % 200));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let acked = Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap();
        let log = open(dir.path());
        let last_acked = acked.entries.last().map_or(0, |(i, _)| *i);
        assert!(
            log.last_index() >= last_acked,
            "round {round}: the log ends at {} but {last_acked} was acknowledged",
            log.last_index()
        );
        for (index, chain) in &acked.entries {
            if *index >= log.first_index() {
                let held = log.chain_at(*index).unwrap().map(|c: ChainHash| c.to_string());
                assert_eq!(held.as_deref(), Some(chain.as_str()), "round {round}: entry {index}");
            }
        }
        assert!(log.hard_state().term >= acked.hard_term, "round {round}: hard state lost");
        assert!(log.snapshot_point().index >= acked.compacted, "round {round}: compaction lost");
        if last_acked > 0 {
            killed_with_acks += 1;
        }
        println!(
            "round {round}: killed after {} acknowledged appends; log {}..={}, term {}",
            acked.entries.len(),
            log.first_index(),
            log.last_index(),
            log.hard_state().term
        );
    }
    assert!(killed_with_acks >= ROUNDS / 2, "most kills must interrupt a child that appended");
}
