#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Checkpoints and shallow replicas: a reopened repository starts from a checkpoint and gets
//! the state a replay from the root gives; a replica installed from a snapshot and fed the
//! later commits has the same state roots as a full replica; bad snapshots install nothing.

use llmkg_federation_core::snapshot::{SnapshotChunk, SnapshotReceiver};
use llmkg_federation_core::{
    BranchName, ChangeSet, CheckpointPolicy, CommitId, GraphState, ManualClock, MemoryStore,
    NodeKeypair, ObjectId, OrgId, RepoError, RepoOptions, Repository, SnapshotError, Store, Term,
    Timestamp, Triple, WriteBatch,
};
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn options(min_changes: Option<u64>) -> RepoOptions {
    let mut o = RepoOptions::default();
    o.cached_states = 2;
    o.checkpoints = min_changes.map(|m| {
        let mut p = CheckpointPolicy::default();
        p.min_changes = m;
        p
    });
    o
}

fn repo_on<S: Store>(store: S, seed: u8, min_changes: Option<u64>) -> Repository<S> {
    let clock = ManualClock::new(Timestamp::from_micros(1_700_000_000_000_000));
    Repository::new(
        store,
        NodeKeypair::from_secret_bytes([seed; 32]),
        OrgId::new("acme").unwrap(),
        clock,
    )
    .with_options(options(min_changes))
}

fn b(name: &str) -> BranchName {
    BranchName::new(name).unwrap()
}

fn t(n: u32) -> Triple {
    Triple::new(
        Term::iri(format!("https://example.org/s{}", n % 31)).unwrap(),
        Term::iri(format!("https://example.org/p{}", n % 4)).unwrap(),
        Term::string(format!("value {n}")).unwrap(),
    )
    .unwrap()
}

/// A linear history of `n` random commits on `main`; returns the commits in order.
fn history<S: Store>(r: &mut Repository<S>, rng: &mut ChaCha8Rng, n: usize) -> Vec<CommitId> {
    let main = b("main");
    let mut out = vec![r.commit(&main, ChangeSet::adding((0..40).map(t)), "root").unwrap()];
    while out.len() < n {
        let current = r.state(&main).unwrap().triples();
        let adds: Vec<Triple> =
            (0..rng.random_range(1..12)).map(|_| t(rng.random_range(0..400))).collect();
        let removes: Vec<Triple> = current
            .into_iter()
            .filter(|_| rng.random_range(0..6) == 0)
            .filter(|x| !adds.contains(x))
            .collect();
        match r.commit(&main, ChangeSet::new(adds, removes).unwrap(), "step") {
            Ok(id) => out.push(id),
            Err(RepoError::NothingToCommit) => {}
            Err(e) => panic!("{e}"),
        }
    }
    out
}

fn root(state: &GraphState) -> llmkg_federation_core::StateRoot {
    state.clone().state_root()
}

fn bytes_of<S: Store>(r: &Repository<S>, id: CommitId) -> Vec<u8> {
    r.store().object(&ObjectId::from(id)).unwrap().unwrap()
}

/// Builds the snapshot of `at` in `from` and feeds every chunk, as bytes, to a receiver.
fn received_snapshot<S: Store>(
    from: &mut Repository<S>,
    at: CommitId,
    chunk_bytes: usize,
) -> SnapshotReceiver {
    let claimed = from.load_commit(at).unwrap().commit().state_root();
    let (manifest, chunks) = from.snapshot(at, chunk_bytes).unwrap().into_parts();
    let chunks: Vec<SnapshotChunk> = chunks.collect();
    let manifest = llmkg_federation_core::SnapshotManifest::decode(&manifest.encode()).unwrap();
    let mut receiver = SnapshotReceiver::new(manifest, &claimed).unwrap();
    for c in chunks {
        receiver.receive(&c.encode()).unwrap();
    }
    receiver
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Reopening over the same store (nothing cached) reaches every state through the
    /// periodic checkpoints, and it equals the replay from the root.
    #[test]
    fn states_from_checkpoints_equal_replays(seed in any::<u64>(), min_changes in 5u64..60) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let store = std::sync::Arc::new(MemoryStore::new());
        let mut r = repo_on(store.clone(), 1, Some(min_changes));
        let commits = history(&mut r, &mut rng, 30);
        prop_assert_eq!(r.checkpoint_failures(), 0);
        drop(r);
        let mut reopened = repo_on(store.clone(), 1, Some(min_changes));
        for _ in 0..10 {
            let c = commits[rng.random_range(0..commits.len())];
            let via_checkpoints = root(reopened.state_at(c).unwrap());
            prop_assert_eq!(via_checkpoints, root(&reopened.materialize(c).unwrap()));
        }
        prop_assert_eq!(reopened.checkpoint_failures(), 0);
    }

    /// A shallow replica installed from a snapshot at commit k and then fed the commits after
    /// it has the same state roots as the full replica, and the same log back to k.
    #[test]
    fn shallow_replicas_match_full_ones(seed in any::<u64>(), chunk_bytes in 2600usize..9000) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut full = repo_on(MemoryStore::new(), 1, None);
        let commits = history(&mut full, &mut rng, 20);
        let k = rng.random_range(1..commits.len());
        let receiver = received_snapshot(&mut full, commits[k], chunk_bytes);
        let mut shallow = repo_on(MemoryStore::new(), 2, None);
        prop_assert_eq!(shallow.install_snapshot(&bytes_of(&full, commits[k]), receiver).unwrap(), commits[k]);
        prop_assert!(shallow.is_shallow(commits[k]).unwrap());
        for c in &commits[k + 1..] {
            prop_assert_eq!(shallow.receive(&bytes_of(&full, *c)).unwrap(), *c);
        }
        for c in &commits[k..] {
            prop_assert_eq!(root(shallow.state_at(*c).unwrap()), root(full.state_at(*c).unwrap()));
            prop_assert_eq!(root(&shallow.materialize(*c).unwrap()), root(full.state_at(*c).unwrap()));
        }
        let head = *commits.last().unwrap();
        let log: Vec<CommitId> = shallow.log(head, usize::MAX).unwrap().iter().map(|c| c.id()).collect();
        let expected: Vec<CommitId> = commits[k..].iter().rev().copied().collect();
        prop_assert_eq!(log, expected);
        // The states before the snapshot are out of reach, with a typed error.
        if k > 0 {
            prop_assert!(shallow.state_at(commits[k - 1]).is_err());
        }
    }
}

#[test]
fn a_reopened_repository_starts_from_the_checkpoint() {
    let store = std::sync::Arc::new(MemoryStore::new());
    let mut r = repo_on(store.clone(), 1, None);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let commits = history(&mut r, &mut rng, 60);
    let head = *commits.last().unwrap();
    let written = r.checkpoint(head).unwrap();
    assert!(written >= 1);
    // Checkpointing again writes no chunk: they are all there.
    assert_eq!(r.checkpoint(head).unwrap(), 0);
    drop(r);
    let mut reopened = repo_on(store.clone(), 1, None);
    let want = root(&reopened.materialize(head).unwrap());
    let mut fresh = repo_on(store.clone(), 1, None);
    assert_eq!(root(fresh.state(&b("main")).unwrap()), want);
    assert_eq!(fresh.checkpoint_failures(), 0);
    // Without the commits before the head, only the checkpoint can give the head's state.
    let older: Vec<ObjectId> =
        commits[..commits.len() - 1].iter().map(|c| ObjectId::from(*c)).collect();
    let pruned = MemoryStore::new();
    for (id, bytes) in store.objects() {
        if !older.contains(&id) {
            pruned.write(WriteBatch::new().put_object(id, bytes)).unwrap();
        }
    }
    pruned.write(WriteBatch::new().update_ref(b("main"), None, Some(head))).unwrap();
    let mut from_checkpoint = repo_on(pruned, 1, None);
    assert_eq!(root(from_checkpoint.state(&b("main")).unwrap()), want);
    assert!(from_checkpoint.materialize(head).is_err(), "the older commits are really gone");
}

#[test]
fn a_damaged_checkpoint_is_skipped_and_the_state_replayed() {
    let mut r = repo_on(MemoryStore::new(), 1, None);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let commits = history(&mut r, &mut rng, 20);
    let head = *commits.last().unwrap();
    r.checkpoint(head).unwrap();
    // Copy everything into a new store, except that every object the checkpoint wrote is
    // replaced with garbage (the commits are copied intact).
    let damaged = MemoryStore::new();
    let fresh_objects = MemoryStore::new();
    let mut probe = repo_on(fresh_objects, 1, None);
    for c in &commits {
        probe.receive(&bytes_of(&r, *c)).unwrap();
    }
    let commit_objects: Vec<ObjectId> = commits.iter().map(|c| ObjectId::from(*c)).collect();
    for (id, bytes) in r.store().objects() {
        let bytes = if commit_objects.contains(&id) || probe.store().contains_object(&id).unwrap() {
            bytes
        } else {
            vec![0xAB; 7]
        };
        damaged.write(WriteBatch::new().put_object(id, bytes)).unwrap();
    }
    damaged.write(WriteBatch::new().update_ref(b("main"), None, Some(head))).unwrap();
    let mut reopened = repo_on(damaged, 1, None);
    let want = root(&r.materialize(head).unwrap());
    assert_eq!(root(reopened.state(&b("main")).unwrap()), want);
    assert_eq!(reopened.checkpoint_failures(), 1);
}

#[test]
fn bad_snapshots_install_nothing() {
    let mut full = repo_on(MemoryStore::new(), 1, None);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut commits = history(&mut full, &mut rng, 30);
    commits.push(full.commit(&b("main"), ChangeSet::adding((1000..1300).map(t)), "grow").unwrap());
    commits.push(full.commit(&b("main"), ChangeSet::adding([t(5000)]), "after").unwrap());
    let at = commits[30];
    let commit_bytes = bytes_of(&full, at);
    let mut shallow = repo_on(MemoryStore::new(), 2, None);
    let is_empty = |r: &Repository<MemoryStore>| r.store().object_count() == 0;

    // A truncated snapshot: one chunk never arrives.
    let claimed = full.load_commit(at).unwrap().commit().state_root();
    let (manifest, chunks) = full.snapshot(at, 2600).unwrap().into_parts();
    let chunks: Vec<SnapshotChunk> = chunks.collect();
    assert!(chunks.len() >= 2, "{} chunks", chunks.len());
    let mut receiver = SnapshotReceiver::new(manifest.clone(), &claimed).unwrap();
    for c in &chunks[1..] {
        receiver.receive(&c.encode()).unwrap();
    }
    match shallow.install_snapshot(&commit_bytes, receiver) {
        Err(RepoError::Snapshot { error, .. })
            if matches!(*error, SnapshotError::Incomplete { missing: 1, .. }) => {}
        other => panic!("a truncated snapshot was installed: {other:?}"),
    }
    assert!(is_empty(&shallow));

    // One flipped byte in a chunk: refused on arrival, the receiver unchanged.
    let mut receiver = SnapshotReceiver::new(manifest.clone(), &claimed).unwrap();
    let mut bad = chunks[0].encode();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    assert!(receiver.receive(&bad).is_err());
    assert_eq!(receiver.progress().chunks_received, 0);

    // A complete snapshot of another commit's state, offered with this commit.
    let other = received_snapshot(&mut full, commits[3], 2600);
    match shallow.install_snapshot(&commit_bytes, other) {
        Err(RepoError::Snapshot { error, .. })
            if matches!(*error, SnapshotError::UnexpectedRoot { .. }) => {}
        other => panic!("a snapshot of another state was installed: {other:?}"),
    }
    assert!(is_empty(&shallow));

    // A forged commit envelope with a correct snapshot.
    let mut forged = commit_bytes.clone();
    let n = forged.len();
    forged[n - 1] ^= 0x01;
    let good = received_snapshot(&mut full, at, 2600);
    assert!(matches!(shallow.install_snapshot(&forged, good), Err(RepoError::Unverifiable(_))));
    assert!(is_empty(&shallow));

    // A commit whose parent is missing cannot be received by a replica without the snapshot.
    assert!(shallow.receive(&bytes_of(&full, commits[31])).is_err());
    assert!(is_empty(&shallow));
}

/// A commit offered with a snapshot while its parents are here is verified against them like
/// any received commit: a forged one (its changes do not lead to the state it claims) is
/// refused and nothing is stored, and a genuine one gets its real place in the history.
#[test]
fn a_snapshot_of_a_commit_whose_parents_are_here_does_not_bypass_verification() {
    let mut victim = repo_on(MemoryStore::new(), 1, None);
    let c0 = victim.commit(&b("main"), ChangeSet::adding([t(1)]), "c0").unwrap();
    let mut elsewhere = repo_on(MemoryStore::new(), 2, None);
    let y = elsewhere.commit(&b("main"), ChangeSet::adding([t(1), t(3)]), "y").unwrap();
    let root_y = elsewhere.load_commit(y).unwrap().commit().state_root();
    let author = NodeKeypair::from_secret_bytes([2; 32]);
    let forged = llmkg_federation_core::Commit::new(
        vec![c0],
        ChangeSet::adding([t(2)]),
        author.node_id(),
        OrgId::new("acme").unwrap(),
        Timestamp::from_micros(1_700_000_000_000_001),
        "adds t2, claims {t1, t3}".into(),
        root_y,
    )
    .unwrap();
    let forged = llmkg_federation_core::SignedCommit::sign(&author, forged).unwrap();
    let objects = victim.store().object_count();
    let snapshot = received_snapshot(&mut elsewhere, y, 4096);
    assert!(victim.install_snapshot(&forged.encode(), snapshot).is_err());
    assert_eq!(victim.store().object_count(), objects, "a forged commit was stored");
    // A genuine child installed the same way is received normally: not a shallow boundary.
    let c1 = victim.commit(&b("side"), ChangeSet::adding([t(7)]), "unrelated").unwrap();
    let _ = c1;
    let mut source = repo_on(MemoryStore::new(), 3, None);
    source.receive(&bytes_of(&victim, c0)).unwrap();
    source.create_branch(&b("main"), c0).unwrap();
    let child = source.commit(&b("main"), ChangeSet::adding([t(4)]), "child").unwrap();
    let snapshot = received_snapshot(&mut source, child, 4096);
    assert_eq!(victim.install_snapshot(&bytes_of(&source, child), snapshot).unwrap(), child);
    assert!(!victim.is_shallow(child).unwrap());
    let log: Vec<CommitId> = victim.log(child, 10).unwrap().iter().map(|c| c.id()).collect();
    assert_eq!(log, vec![child, c0]);
}
