#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Crash safety of `RedbStore` + `Repository` under a real `SIGKILL`.
//!
//! The test binary re-executes itself: `crash_child` (a no-op unless
//! `LLMKG_CRASH_CHILD_DIR` is set) commits in an endless loop and reports every commit whose
//! `commit` call returned; the parent kills it at a random moment, then checks that the store
//! opens, that every branch fully verifies, and that no reported commit was lost.
//!
//! The seed is fixed (`DEFAULT_SEED`) so that every run draws the same delays and the child
//! writes the same triples; run another with `LLMKG_CRASH_SEED=<seed>` (the seed is printed).
//! The moment a kill lands still depends on the machine's speed, so a failure reproduces the
//! same workload, not necessarily the same instant.
//!
//! Four rounds in five kill the child a random time after it reported being ready to commit,
//! so those kills land in the commit loop; every fifth round counts the delay from the spawn,
//! so the kill may also land while the store opens (redb recovering the file) or while the
//! child reaches its heads' states. The test asserts that the commit-loop kills did land
//! there and interrupted a child that had committed.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use llmkg_federation_core::{
    BranchName, ChangeSet, CommitId, NodeKeypair, OrgId, RedbStore, Repository, SystemClock, Term,
    Triple,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tempfile::TempDir;

const CHILD_ENV: &str = "LLMKG_CRASH_CHILD_DIR";
const SEED_ENV: &str = "LLMKG_CRASH_SEED";
const ROUNDS: usize = 25;
/// The seed of a run without `LLMKG_CRASH_SEED`.
const DEFAULT_SEED: u64 = 0x5eed_c4a5;
/// The child's nonce (which makes its triples distinct from earlier children's).
const NONCE_ENV: &str = "LLMKG_CRASH_CHILD_NONCE";
const TRIPLES_PER_COMMIT: usize = 50;
const MARKER: &str = "COMMITTED ";
const OPENED: &str = "CHILD OPENED";
const READY: &str = "CHILD READY";

fn repository(dir: &Path) -> Repository<RedbStore> {
    let store = RedbStore::open(dir.join("repo.redb")).expect("open the store");
    Repository::new(
        store,
        NodeKeypair::from_secret_bytes([3; 32]),
        OrgId::new("crashco").unwrap(),
        SystemClock,
    )
}

/// `TRIPLES_PER_COMMIT` triples no earlier commit (of this or any earlier child) has added.
fn fresh_triples(nonce: &str, counter: &mut u64) -> Vec<Triple> {
    (0..TRIPLES_PER_COMMIT)
        .map(|_| {
            *counter += 1;
            let n = *counter;
            Triple::new(
                Term::iri(format!("https://crash.example/{nonce}/s{}", n / 7)).unwrap(),
                Term::iri(format!("https://crash.example/p{}", n % 7)).unwrap(),
                Term::string(format!("value {n} of run {nonce}")).unwrap(),
            )
            .unwrap()
        })
        .collect()
}

/// The child: commits forever, printing `COMMITTED <branch> <id>` after each `commit` returned.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut out = std::io::stdout().lock();
    // libtest may have written "test crash_child ... " without a newline: start a fresh line.
    writeln!(out).unwrap();
    out.flush().unwrap();
    let mut repo = repository(Path::new(&dir));
    writeln!(out, "{OPENED}").unwrap();
    out.flush().unwrap();
    let main = BranchName::new("main").unwrap();
    let side = BranchName::new("side").unwrap();
    let nonce = std::env::var(NONCE_ENV).expect("the parent sets the nonce");
    let mut counter = 0u64;
    // Materialize (and so verify) the existing heads; from here on the child only commits.
    for branch in [&main, &side] {
        if repo.head(branch).unwrap().is_some() {
            repo.state(branch).unwrap();
        }
    }
    writeln!(out, "{READY}").unwrap();
    out.flush().unwrap();
    for i in 0u64.. {
        let mut branches = vec![&main];
        if i % 5 == 0 {
            branches.push(&side);
        }
        for branch in branches {
            let add = fresh_triples(&nonce, &mut counter);
            // Every third commit on a branch also removes a few triples of its current state
            // (possibly ones an earlier, killed child added), so commits carry removals.
            let remove: Vec<Triple> = if i % 3 == 1 && repo.head(branch).unwrap().is_some() {
                repo.state(branch).unwrap().iter().take(3).map(|t| t.to_triple()).collect()
            } else {
                Vec::new()
            };
            let changes = ChangeSet::new(add, remove).unwrap();
            let id = repo.commit(branch, changes, &format!("commit {i} on {branch}")).unwrap();
            writeln!(out, "{MARKER}{branch} {id}").unwrap();
            out.flush().unwrap();
        }
    }
}

/// Where the child was when the kill landed, by the last progress line it printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before `RedbStore::open` returned: starting up, or redb recovering the file.
    Opening,
    /// Store open, reaching (and verifying) the existing heads' states.
    Materializing,
    /// Committing, since this long after the spawn.
    Committing(Duration),
}

/// Kills and reaps the child if the parent unwinds before it does so itself.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One round's child: spawned, reported on, killed.
struct Round {
    /// `(branch, id)` in the order the child reported them.
    reported: Vec<(BranchName, CommitId)>,
    /// How far the child had got when it was killed.
    phase: Phase,
    killed_by_sigkill: bool,
    stderr: String,
}

/// When the kill lands: a delay after the spawn, or after the child said it is ready to commit.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    AfterSpawn(Duration),
    AfterReady(Duration),
}

/// The longest a child may take to open the store and reach its heads before the round fails.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn run_child(dir: &Path, kill_at: KillAt, nonce: &str) -> Round {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env_remove(SEED_ENV)
        .env(NONCE_ENV, nonce)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let spawned = Instant::now();
    let mut child = KillOnDrop(child);

    let reported = Arc::new(Mutex::new(Vec::new()));
    let phase = Arc::new(Mutex::new(Phase::Opening));
    let stdout = child.0.stdout.take().unwrap();
    let reader = {
        let reported = Arc::clone(&reported);
        let phase = Arc::clone(&phase);
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match lines.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                // A line cut short by the kill has no newline: it proves nothing, skip it.
                if !line.ends_with('\n') {
                    continue;
                }
                if line.contains(OPENED) {
                    *phase.lock().unwrap() = Phase::Materializing;
                    continue;
                }
                if line.contains(READY) {
                    *phase.lock().unwrap() = Phase::Committing(spawned.elapsed());
                    continue;
                }
                let Some(at) = line.find(MARKER) else {
                    continue;
                };
                let mut parts = line[at + MARKER.len()..].split_whitespace();
                let (Some(branch), Some(id), None) = (parts.next(), parts.next(), parts.next())
                else {
                    panic!("malformed report line {line:?}");
                };
                let branch = BranchName::new(branch).unwrap();
                let id = CommitId::from_str(id).unwrap();
                reported.lock().unwrap().push((branch, id));
            }
        })
    };
    let mut stderr_pipe = child.0.stderr.take().unwrap();
    let stderr_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });

    match kill_at {
        KillAt::AfterSpawn(delay) => thread::sleep(delay),
        KillAt::AfterReady(delay) => {
            while !matches!(*phase.lock().unwrap(), Phase::Committing(_)) {
                assert!(
                    spawned.elapsed() < READY_TIMEOUT,
                    "the child was not ready to commit after {READY_TIMEOUT:?}"
                );
                thread::sleep(Duration::from_millis(1));
            }
            thread::sleep(delay);
        }
    }
    // On Unix `kill` sends SIGKILL. It fails only if the child was already reaped, which we
    // have not done yet; an early exit shows up in the status below.
    child.0.kill().expect("SIGKILL the child");
    let status = child.0.wait().unwrap();
    reader.join().expect("stdout reader");
    let stderr = stderr_reader.join().unwrap();

    use std::os::unix::process::ExitStatusExt;
    let killed_by_sigkill = status.signal() == Some(9);
    let reported = std::mem::take(&mut *reported.lock().unwrap());
    let phase = *phase.lock().unwrap();
    Round { reported, phase, killed_by_sigkill, stderr }
}

#[test]
fn sigkill_never_loses_a_finished_commit() {
    let seed = match std::env::var(SEED_ENV) {
        Ok(s) => s.parse().expect("LLMKG_CRASH_SEED must be a u64"),
        Err(_) => DEFAULT_SEED,
    };
    println!("crash test seed: {seed} (rerun with {SEED_ENV}={seed})");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let started = Instant::now();
    let dir = TempDir::new().unwrap();

    let mut all_reported: Vec<CommitId> = Vec::new();
    let mut last_on: BTreeMap<BranchName, CommitId> = BTreeMap::new();
    let mut kills = 0usize;
    let mut productive_kills = 0usize;
    let mut kills_opening = 0usize;
    let mut kills_materializing = 0usize;
    let mut loop_rounds = 0usize;
    let mut loop_kills_after_a_commit = 0usize;
    let mut distinct: HashSet<CommitId> = HashSet::new();
    let mut unreported_total = 0usize;
    let mut commits_on_chains = 0usize;

    for round in 0..ROUNDS {
        let kill_at = if round % 5 == 4 {
            KillAt::AfterSpawn(Duration::from_millis(rng.random_range(5..150)))
        } else {
            loop_rounds += 1;
            KillAt::AfterReady(Duration::from_millis(rng.random_range(20..150)))
        };
        let nonce = format!("{seed}-{round}");
        let Round { reported, phase, killed_by_sigkill, stderr } =
            run_child(dir.path(), kill_at, &nonce);
        assert!(
            killed_by_sigkill,
            "round {round} (seed {seed}): the child was not killed by SIGKILL: it exited on \
             its own. stderr:\n{stderr}"
        );
        kills += 1;
        if !reported.is_empty() {
            productive_kills += 1;
        }
        if matches!(kill_at, KillAt::AfterReady(_)) {
            assert!(
                matches!(phase, Phase::Committing(_)),
                "round {round} (seed {seed}): a commit-loop kill landed in {phase:?}"
            );
            if !reported.is_empty() {
                loop_kills_after_a_commit += 1;
            }
        }
        match phase {
            Phase::Opening => kills_opening += 1,
            Phase::Materializing => kills_materializing += 1,
            Phase::Committing(_) => {}
        }
        for (branch, id) in &reported {
            all_reported.push(*id);
            assert!(distinct.insert(*id), "commit {id} was reported twice");
            last_on.insert(branch.clone(), *id);
        }

        // Recovery: the file opens and everything the child reported is there and verifies:
        // the full replay from the root agrees with the state reached the everyday way.
        let verify_started = Instant::now();
        let mut repo = repository(dir.path());
        let branches = repo.branches().unwrap();
        let mut on_chains: HashSet<CommitId> = HashSet::new();
        for (branch, head) in &branches {
            let mut state = repo.materialize(*head).unwrap_or_else(|e| {
                panic!("round {round} (seed {seed}): branch {branch} at {head} fails: {e}")
            });
            assert!(!state.is_empty());
            let mut reached = repo.state(branch).unwrap().clone();
            assert_eq!(reached.state_root(), state.state_root());
            // Collect the first-parent chain (the child never merges, so that is all of it).
            let mut cursor = Some(*head);
            while let Some(c) = cursor {
                assert!(on_chains.insert(c), "commit {c} is on two chains");
                cursor = repo.load_commit(c).unwrap().commit().parents().first().copied();
            }
        }
        for id in &all_reported {
            repo.load_commit(*id).unwrap_or_else(|e| {
                panic!("round {round} (seed {seed}): reported commit {id} is lost: {e}")
            });
        }
        for (branch, last) in &last_on {
            let head = repo
                .head(branch)
                .unwrap()
                .unwrap_or_else(|| panic!("round {round} (seed {seed}): branch {branch} vanished"));
            assert!(
                repo.is_ancestor(*last, head).unwrap(),
                "round {round} (seed {seed}): branch {branch} at {head} does not contain the \
                 last reported commit {last}"
            );
        }
        // Every reported commit is on a chain. The other commits on the chains are the one
        // in flight when the kill landed: a SIGKILL does not discard the page cache, so a
        // batch whose pages were all written is complete on disk even if the kill came
        // during its fsync, before `write` returned (observed in most kills that hit the
        // commit loop: the fdatasync is most of a commit's time). The child reports each
        // commit before it starts the next, so each round adds at most one, and none vanish.
        for id in &distinct {
            assert!(
                on_chains.contains(id),
                "round {round} (seed {seed}): reported commit {id} is on no branch"
            );
        }
        let unreported = on_chains.len() - distinct.len();
        assert!(
            unreported >= unreported_total && unreported <= unreported_total + 1,
            "round {round} (seed {seed}): {unreported} unreported commits after \
             {unreported_total} in the previous round"
        );
        unreported_total = unreported;
        commits_on_chains = on_chains.len();
        let phase = match phase {
            Phase::Opening => "while opening the store".to_owned(),
            Phase::Materializing => "while reaching heads  ".to_owned(),
            Phase::Committing(t) => format!("committing since {:3} ms", t.as_millis()),
        };
        let (delay, from) = match kill_at {
            KillAt::AfterSpawn(d) => (d, "spawn"),
            KillAt::AfterReady(d) => (d, "ready"),
        };
        println!(
            "round {round:2}: killed {:3} ms after {from} ({phase}), {:3} commits reported, \
             {:4} on {} branches, verified in {} ms",
            delay.as_millis(),
            reported.len(),
            on_chains.len(),
            branches.len(),
            verify_started.elapsed().as_millis()
        );
        drop(repo); // releases the file lock before the next child opens it
    }

    // The child's commits carry removals, not only additions.
    let mut repo = repository(dir.path());
    let mut with_removals = 0usize;
    for (_, head) in repo.branches().unwrap() {
        for c in repo.log(head, usize::MAX).unwrap() {
            if !c.commit().changes().removed().is_empty() {
                with_removals += 1;
            }
        }
    }
    drop(repo);

    println!(
        "crash test summary (seed {seed}): {kills} SIGKILLs ({productive_kills} after at least \
         one reported commit; {kills_opening} while the child was opening the store, \
         {kills_materializing} while it was reaching the heads; {loop_kills_after_a_commit} of \
         {loop_rounds} commit-loop kills after at least one commit), {} reported commits all \
         present and verified, {commits_on_chains} \
         commits on the branches ({unreported_total} present but never reported: in flight at \
         the kill; {with_removals} with removals), {:.1} s",
        all_reported.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(kills, ROUNDS);
    // Most commit-loop kills must interrupt a child that had already committed: otherwise the
    // kills test start-up, not the commit path. (At least half, so that a slow disk, whose
    // first fsync may outlast a short delay, does not make the test flaky.)
    assert!(
        loop_kills_after_a_commit * 2 >= loop_rounds,
        "only {loop_kills_after_a_commit} of {loop_rounds} commit-loop kills came after a commit"
    );
    assert!(with_removals > 0, "no commit removed triples: removals were not tested");
}
