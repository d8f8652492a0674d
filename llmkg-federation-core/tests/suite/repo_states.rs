#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Reaching states in O(changes): cached and walked states agree with a full replay from the
//! root, receiving in order reads a bounded number of objects per commit, `log` reads only
//! what it returns, and a damaged history (a wrong state root, a cycle) is refused.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use llmkg_federation_core::{
    BranchName, ChangeSet, Commit, CommitId, GraphState, InvalidCommit, ManualClock, MemoryStore,
    MergeOutcome, NodeKeypair, ObjectId, OrgId, RepoError, RepoOptions, Repository, SignedCommit,
    Store, StoreError, Term, Timestamp, Triple, WriteBatch,
};
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A store that counts object reads and presence checks.
#[derive(Default)]
struct Counting {
    inner: MemoryStore,
    reads: AtomicUsize,
    contains: AtomicUsize,
}

impl Counting {
    fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }

    fn lookups(&self) -> usize {
        self.reads() + self.contains.load(Ordering::Relaxed)
    }
}

impl Store for Counting {
    fn object(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.object(id)
    }
    fn contains_object(&self, id: &ObjectId) -> Result<bool, StoreError> {
        self.contains.fetch_add(1, Ordering::Relaxed);
        self.inner.contains_object(id)
    }
    fn reference(&self, name: &BranchName) -> Result<Option<CommitId>, StoreError> {
        self.inner.reference(name)
    }
    fn references(&self) -> Result<Vec<(BranchName, CommitId)>, StoreError> {
        self.inner.references()
    }
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.inner.write(batch)
    }
}

fn key(seed: u8) -> NodeKeypair {
    NodeKeypair::from_secret_bytes([seed; 32])
}

fn repo_on<S: Store>(store: S, seed: u8, cached: usize) -> Repository<S> {
    let clock = ManualClock::new(Timestamp::from_micros(1_700_000_000_000_000));
    let mut options = RepoOptions::default();
    options.cached_states = cached;
    Repository::new(store, key(seed), OrgId::new("acme").unwrap(), clock).with_options(options)
}

fn b(name: &str) -> BranchName {
    BranchName::new(name).unwrap()
}

fn t(n: u32) -> Triple {
    Triple::new(
        Term::iri(format!("https://example.org/s{}", n % 13)).unwrap(),
        Term::iri(format!("https://example.org/p{}", n % 3)).unwrap(),
        Term::string(format!("v{n}")).unwrap(),
    )
    .unwrap()
}

fn set_of(state: &GraphState) -> BTreeSet<Triple> {
    state.triples().into_iter().collect()
}

/// A random history on three branches: commits with additions and removals, merges between
/// the branches (merge commits, fast-forwards and no-op merges). Returns every commit made.
fn random_history<S: Store>(
    r: &mut Repository<S>,
    rng: &mut ChaCha8Rng,
    steps: usize,
) -> Vec<CommitId> {
    let branches = [b("a"), b("b"), b("c")];
    let first = r.commit(&branches[0], ChangeSet::adding((0..10).map(t)), "root").unwrap();
    for br in &branches[1..] {
        r.create_branch(br, first).unwrap();
    }
    let mut commits = vec![first];
    for _ in 0..steps {
        let br = &branches[rng.random_range(0..3)];
        if rng.random_range(0..4) == 0 {
            let other = &branches[rng.random_range(0..3)];
            let theirs = r.head(other).unwrap().unwrap();
            match r.merge(br, theirs, "merge").unwrap() {
                MergeOutcome::Merged(id) => commits.push(id),
                MergeOutcome::FastForward(_)
                | MergeOutcome::AlreadyUpToDate
                | MergeOutcome::Unchanged => {}
                other => panic!("unexpected {other:?}"),
            }
            continue;
        }
        let current = r.state(br).unwrap().triples();
        let adds: Vec<Triple> =
            (0..rng.random_range(1..5)).map(|_| t(rng.random_range(0..50))).collect();
        let removes: Vec<Triple> = current
            .into_iter()
            .filter(|_| rng.random_range(0..4) == 0)
            .filter(|x| !adds.contains(x))
            .collect();
        match r.commit(br, ChangeSet::new(adds, removes).unwrap(), "step") {
            Ok(id) => commits.push(id),
            Err(RepoError::NothingToCommit) => {}
            Err(e) => panic!("{e}"),
        }
    }
    commits
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Whatever the cache size and the order of requests, the state reached from cached
    /// states (forward and backward along first parents) is the state replayed from the root,
    /// and diffs agree with diffs of replayed states.
    #[test]
    fn walked_states_equal_replayed_states(seed in any::<u64>(), cached in 1usize..4) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut r = repo_on(MemoryStore::new(), 1, cached);
        let commits = random_history(&mut r, &mut rng, 30);
        for _ in 0..40 {
            let c = commits[rng.random_range(0..commits.len())];
            let walked = set_of(r.state_at(c).unwrap());
            prop_assert_eq!(&walked, &set_of(&r.materialize(c).unwrap()));
        }
        for _ in 0..10 {
            let x = commits[rng.random_range(0..commits.len())];
            let y = commits[rng.random_range(0..commits.len())];
            let d = r.diff(x, y).unwrap();
            let expected = r.materialize(x).unwrap().diff(&r.materialize(y).unwrap());
            prop_assert_eq!(d, expected);
        }
    }

    /// A second node receiving the whole history in an order where parents come first ends
    /// with the same state at every commit.
    #[test]
    fn received_histories_have_the_same_states(seed in any::<u64>()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut alice = repo_on(MemoryStore::new(), 1, 2);
        let commits = random_history(&mut alice, &mut rng, 25);
        let mut bob = repo_on(MemoryStore::new(), 2, 1);
        // `commits` is in creation order, so every parent precedes its children.
        for c in &commits {
            let bytes = alice.store().object(&(*c).into()).unwrap().unwrap();
            prop_assert_eq!(bob.receive(&bytes).unwrap(), *c);
        }
        for c in &commits {
            prop_assert_eq!(bob.state_at(*c).unwrap().clone().state_root(), alice.state_at(*c).unwrap().clone().state_root());
        }
    }
}

#[test]
fn receiving_in_order_reads_a_bounded_number_of_objects_per_commit() {
    let mut alice = repo_on(MemoryStore::new(), 1, 4);
    let main = b("main");
    let mut ids = Vec::new();
    for i in 0..200u32 {
        ids.push(alice.commit(&main, ChangeSet::adding([t(1000 + i)]), "one more").unwrap());
    }
    let mut bob = repo_on(Counting::default(), 2, 2);
    let mut per_commit = Vec::new();
    for id in &ids {
        let bytes = alice.store().object(&(*id).into()).unwrap().unwrap();
        let before = bob.store().reads();
        bob.receive(&bytes).unwrap();
        per_commit.push(bob.store().reads() - before);
    }
    // A replay from the root would read every ancestor: 199 objects for the last one.
    let worst = per_commit.iter().max().copied().unwrap();
    assert!(worst <= 4, "a receive read {worst} objects: {per_commit:?}");
    bob.create_branch(&main, ids[199]).unwrap();
    let before = bob.store().reads();
    assert_eq!(bob.state(&main).unwrap().len(), 200);
    assert!(bob.store().reads() - before <= 2, "the head's state was not reused");
}

#[test]
fn log_reads_only_what_it_returns() {
    let store = std::sync::Arc::new(Counting::default());
    let mut r = repo_on(store.clone(), 1, 2);
    let main = b("main");
    let mut head = None;
    for i in 0..300u32 {
        head = Some(r.commit(&main, ChangeSet::adding([t(i)]), "c").unwrap());
    }
    // A fresh repository over the same store: nothing cached.
    let mut fresh = repo_on(store.clone(), 1, 2);
    let before = store.reads();
    let log = fresh.log(head.unwrap(), 5).unwrap();
    assert_eq!(log.len(), 5);
    let reads = store.reads() - before;
    // Five commits, their parents, and their generation records.
    assert!(reads <= 5 * 4, "log(5) read {reads} objects of a 300-commit history");
    let all = fresh.log(head.unwrap(), usize::MAX).unwrap();
    assert_eq!(all.len(), 300);
}

/// Every listed commit comes before its parents, and every ancestor is listed once.
#[test]
fn log_lists_children_before_parents_on_merged_histories() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut r = repo_on(MemoryStore::new(), 1, 2);
    random_history(&mut r, &mut rng, 60);
    for br in ["a", "b", "c"] {
        let head = r.head(&b(br)).unwrap().unwrap();
        let log = r.log(head, usize::MAX).unwrap();
        let mut listed = HashSet::new();
        for c in &log {
            assert!(listed.insert(c.id()), "listed twice");
            for p in c.commit().parents() {
                assert!(!listed.contains(p), "a parent came before its child");
            }
        }
        let mut expected = HashSet::new();
        let mut todo = vec![head];
        while let Some(c) = todo.pop() {
            if expected.insert(c) {
                todo.extend(r.load_commit(c).unwrap().commit().parents().iter().copied());
            }
        }
        assert_eq!(listed, expected);
    }
}

/// A commit stored without going through `receive`, validly signed but claiming a wrong
/// state root, is refused by every path that reaches its state.
#[test]
fn a_stored_commit_with_a_wrong_state_root_is_refused() {
    let mut r = repo_on(MemoryStore::new(), 1, 2);
    let main = b("main");
    let c1 = r.commit(&main, ChangeSet::adding([t(1)]), "one").unwrap();
    let c1_root = r.load_commit(c1).unwrap().commit().state_root();
    // Adds t(2) but claims the parent's root.
    let bad = Commit::new(
        vec![c1],
        ChangeSet::adding([t(2)]),
        key(1).node_id(),
        OrgId::new("acme").unwrap(),
        Timestamp::from_micros(9),
        "planted".into(),
        c1_root,
    )
    .unwrap();
    let bad = SignedCommit::sign(&key(1), bad).unwrap();
    let planted = b("planted");
    r.store()
        .write(WriteBatch::new().put_object(bad.id(), bad.encode()).update_ref(
            planted.clone(),
            None,
            Some(bad.id()),
        ))
        .unwrap();
    let is_root_mismatch = |e: RepoError| {
        matches!(
            e,
            RepoError::InvalidCommit { reason: InvalidCommit::StateRootMismatch { .. }, .. }
        )
    };
    assert!(is_root_mismatch(r.materialize(bad.id()).unwrap_err()));
    assert!(is_root_mismatch(r.state(&planted).map(|_| ()).unwrap_err()));
    assert!(is_root_mismatch(r.state_at(bad.id()).map(|_| ()).unwrap_err()));
    // From a fresh repository over the same objects (nothing cached) too.
    let store = MemoryStore::new();
    for id in [c1, bad.id()] {
        let bytes = r.store().object(&id.into()).unwrap().unwrap();
        store.write(WriteBatch::new().put_object(id, bytes)).unwrap();
    }
    let mut fresh = repo_on(store, 1, 2);
    assert!(is_root_mismatch(fresh.materialize(bad.id()).unwrap_err()));
    // The good parent is still fine.
    assert_eq!(fresh.state_at(c1).unwrap().len(), 1);
}

/// Envelopes stored under ids whose first parents point at each other: a cycle, reported as
/// such, not as a decode error.
#[test]
fn an_ancestry_cycle_in_a_damaged_store_is_a_typed_error() {
    let (x, y) = (CommitId::from_bytes([1; 32]), CommitId::from_bytes([2; 32]));
    let envelope = |parent: CommitId| {
        let c = Commit::new(
            vec![parent],
            ChangeSet::adding([t(1)]),
            key(1).node_id(),
            OrgId::new("acme").unwrap(),
            Timestamp::from_micros(1),
            "loop".into(),
            GraphState::new().state_root(),
        )
        .unwrap();
        SignedCommit::sign(&key(1), c).unwrap().encode()
    };
    let store = MemoryStore::new();
    store.write(WriteBatch::new().put_object(x, envelope(y)).put_object(y, envelope(x))).unwrap();
    let mut r = repo_on(store, 1, 2);
    match r.materialize(x) {
        Err(RepoError::InvalidCommit { reason: InvalidCommit::Cycle(_), .. }) => {}
        other => panic!("expected a cycle, got {other:?}"),
    }
    match r.state_at(y).map(|_| ()) {
        Err(RepoError::InvalidCommit { reason: InvalidCommit::Cycle(_), .. }) => {}
        other => panic!("expected a cycle, got {other:?}"),
    }
}

/// Reaching the parent of a cached head, or diffing it with the head, touches a few objects,
/// not every commit back to the last checkpoint.
#[test]
fn the_parent_of_a_cached_head_is_one_step_away() {
    let store = std::sync::Arc::new(Counting::default());
    let mut r = repo_on(store.clone(), 1, 2);
    let main = b("main");
    let mut commits = Vec::new();
    for i in 0..1_000u32 {
        commits.push(r.commit(&main, ChangeSet::adding([t(10_000 + i)]), "c").unwrap());
    }
    let head = *commits.last().unwrap();
    for k in [2usize, 3, 2] {
        let before = store.lookups();
        r.state_at(commits[commits.len() - k]).unwrap();
        let touched = store.lookups() - before;
        assert!(touched <= 12, "state_at(head~{}) touched {touched} objects", k - 1);
        r.state_at(head).unwrap();
    }
    let before = store.lookups();
    r.diff(commits[commits.len() - 2], head).unwrap();
    let touched = store.lookups() - before;
    assert!(touched <= 12, "diff(head~1, head) touched {touched} objects");
}

/// `apply_with_ids` is `apply` plus the ids of the added and removed triples in the change
/// set's order, on the bulk path (into an empty state) and the incremental one; a change
/// that does not apply returns no ids and leaves the state as it was.
#[test]
fn apply_with_ids_returns_each_triples_id_in_order() {
    let ids = |ts: &[Triple]| ts.iter().map(Triple::id).collect::<Vec<_>>();
    let first = ChangeSet::adding((0..400).map(t));
    let (mut with_ids, mut plain) = (GraphState::new(), GraphState::new());
    let (added, removed) = with_ids.apply_with_ids(&first).unwrap();
    plain.apply(&first).unwrap();
    assert_eq!(added, ids(first.added()));
    assert!(removed.is_empty());
    let second = ChangeSet::new((400..700).map(t), (0..400).step_by(3).map(t)).unwrap();
    let (added, removed) = with_ids.apply_with_ids(&second).unwrap();
    plain.apply(&second).unwrap();
    assert_eq!(added, ids(second.added()));
    assert_eq!(removed, ids(second.removed()));
    assert_eq!(with_ids.state_root(), plain.state_root());
    let before = with_ids.state_root();
    assert!(with_ids.apply_with_ids(&second).is_err());
    assert_eq!(with_ids.state_root(), before);
    // The effective part's ids, in the order of the effective change set: on an empty state
    // (the bulk path) and on one where some additions are present and some removals absent.
    let mut fresh = GraphState::new();
    let (effective, (added, removed)) = fresh.apply_effective_with_ids(first.clone()).unwrap();
    assert_eq!((added, removed), (ids(effective.added()), Vec::new()));
    let mixed = ChangeSet::new((650..800).map(t), (0..10).map(t)).unwrap();
    let (effective, (added, removed)) = with_ids.apply_effective_with_ids(mixed).unwrap();
    assert_eq!(effective.added().len(), 100);
    assert_eq!(added, ids(effective.added()));
    assert_eq!(removed, ids(effective.removed()));
    assert_eq!(effective.removed().len(), 6);
}
