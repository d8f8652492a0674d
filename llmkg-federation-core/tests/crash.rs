#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Crash safety of `RedbStore` + `Repository` under a real `SIGKILL`.
//!
//! The test binary re-executes itself: `crash_child` (a no-op unless
//! `LLMKG_CRASH_CHILD_DIR` is set) commits in an endless loop and reports every commit whose
//! `commit` call returned; the parent kills it at a random moment, then checks that the store
//! opens, that every branch fully verifies, and that no reported commit was lost.
//!
//! Reproduce a run with `LLMKG_CRASH_SEED=<seed>` (the seed is printed).
//!
//! The kill delay is counted from the spawn, so a kill lands while the child opens the store
//! (redb recovering the file), while it materializes the existing heads (the repository
//! replays and verifies every commit from the root, which grows with the history), or while it
//! commits. The child prints progress lines and the summary says how many kills hit each
//! phase: in the later rounds many kills land during materialization.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let nonce = format!("{}-{nanos}", std::process::id());
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
    /// Store open, materializing (and verifying) the existing heads.
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

fn run_child(dir: &Path, delay: Duration) -> Round {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env_remove(SEED_ENV)
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

    thread::sleep(delay);
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
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64,
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
    let mut distinct: HashSet<CommitId> = HashSet::new();
    let mut unreported_total = 0usize;
    let mut commits_on_chains = 0usize;

    for round in 0..ROUNDS {
        let delay = Duration::from_millis(rng.random_range(20..250));
        let Round { reported, phase, killed_by_sigkill, stderr } = run_child(dir.path(), delay);
        assert!(
            killed_by_sigkill,
            "round {round} (seed {seed}): the child was not killed by SIGKILL: it exited on \
             its own. stderr:\n{stderr}"
        );
        kills += 1;
        if !reported.is_empty() {
            productive_kills += 1;
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

        // Recovery: the file opens and everything the child reported is there and verifies.
        let verify_started = Instant::now();
        let mut repo = repository(dir.path());
        let branches = repo.branches().unwrap();
        let mut on_chains: HashSet<CommitId> = HashSet::new();
        for (branch, head) in &branches {
            let state = repo.materialize(*head).unwrap_or_else(|e| {
                panic!("round {round} (seed {seed}): branch {branch} at {head} fails: {e}")
            });
            assert!(!state.is_empty());
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
            Phase::Materializing => "while materializing   ".to_owned(),
            Phase::Committing(t) => format!("committing since {:3} ms", t.as_millis()),
        };
        println!(
            "round {round:2}: killed after {:3} ms ({phase}), {:3} commits reported, \
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
         {kills_materializing} while it was materializing the heads), {} reported commits all present and verified, {commits_on_chains} \
         commits on the branches ({unreported_total} present but never reported: in flight at \
         the kill; {with_removals} with removals), {:.1} s",
        all_reported.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 20, "only {kills} kills");
    assert!(!all_reported.is_empty(), "the child never reported a commit: nothing was tested");
}
