#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The local versioned graph: commits, branches, merges, merge bases, queries, and the
//! rejection of bad commits.

use std::collections::{BTreeSet, HashMap, HashSet};

use llmkg_federation_core::encoding;
use llmkg_federation_core::{
    BranchName, ChangeSet, Commit, CommitId, CommitVerifyError, GraphState, InvalidCommit,
    ManualClock, MemoryStore, MergeOutcome, NodeKeypair, OrgId, Pattern, RepoError, Repository,
    SignedCommit, StateRoot, Store, Term, Timestamp, Triple, WriteBatch,
};
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn repo_with(store: MemoryStore, seed: u8, org: &str) -> Repository<MemoryStore> {
    let clock = ManualClock::new(Timestamp::from_micros(1_700_000_000_000_000));
    Repository::new(
        store,
        NodeKeypair::from_secret_bytes([seed; 32]),
        OrgId::new(org).unwrap(),
        clock,
    )
}

fn repo() -> Repository<MemoryStore> {
    repo_with(MemoryStore::new(), 1, "acme")
}

fn b(name: &str) -> BranchName {
    BranchName::new(name).unwrap()
}

/// Triple number `n` over a small universe, so random change sets overlap.
fn t(n: u32) -> Triple {
    Triple::new(
        Term::iri(format!("https://example.org/s{}", n % 17)).unwrap(),
        Term::iri(format!("https://example.org/p{}", n % 5)).unwrap(),
        Term::string(format!("v{n}")).unwrap(),
    )
    .unwrap()
}

fn set_of(state: &GraphState) -> BTreeSet<Triple> {
    state.triples().into_iter().collect()
}

fn add(ns: impl IntoIterator<Item = u32>) -> ChangeSet {
    ChangeSet::adding(ns.into_iter().map(t))
}

/// Applies a random change (adds and removes over the small universe) to `branch`, unless it
/// turns out empty.
fn random_commit(repo: &mut Repository<MemoryStore>, branch: &BranchName, rng: &mut ChaCha8Rng) {
    let current: Vec<Triple> = repo.state(branch).unwrap().triples();
    let adds: Vec<Triple> =
        (0..rng.random_range(1..6)).map(|_| t(rng.random_range(0..60))).collect();
    let removes: Vec<Triple> = current
        .iter()
        .filter(|_| rng.random_range(0..5) == 0)
        .filter(|x| !adds.contains(x))
        .cloned()
        .collect();
    match repo.commit(branch, ChangeSet::new(adds, removes).unwrap(), "random") {
        Ok(_) | Err(RepoError::NothingToCommit) => {}
        Err(e) => panic!("commit failed: {e}"),
    }
}

#[test]
fn commit_records_only_effective_changes_and_injected_time() {
    let mut r = repo();
    let main = b("main");
    let c1 = r.commit(&main, add([1, 2, 3]), "first").unwrap();
    assert!(matches!(r.commit(&main, add([1, 2]), "again"), Err(RepoError::NothingToCommit)));
    let changes = ChangeSet::new([t(3), t(4)], [t(1), t(99)]).unwrap();
    let c2 = r.commit(&main, changes, "second").unwrap();
    let commit = r.load_commit(c2).unwrap();
    assert_eq!(commit.commit().changes().added(), &[t(4)]);
    assert_eq!(commit.commit().changes().removed(), &[t(1)]);
    assert_eq!(commit.commit().parents(), &[c1]);
    assert_eq!(commit.commit().timestamp(), Timestamp::from_micros(1_700_000_000_000_000));
    assert_eq!(set_of(r.state(&main).unwrap()), [t(2), t(3), t(4)].into_iter().collect());
    // The cached state and a fresh replay agree, root included.
    let mut replayed = r.materialize(c2).unwrap();
    assert_eq!(replayed.state_root(), commit.commit().state_root());
}

#[test]
fn branches_diff_and_log() {
    let mut r = repo();
    let main = b("main");
    let c1 = r.commit(&main, add([1, 2]), "one").unwrap();
    let c2 = r.commit(&main, add([3]), "two").unwrap();
    let feature = b("team/feature");
    r.create_branch(&feature, c1).unwrap();
    assert!(matches!(r.create_branch(&feature, c1), Err(RepoError::BranchExists(_))));
    assert!(matches!(
        r.create_branch(&b("x"), CommitId::from_bytes([9; 32])),
        Err(RepoError::CommitNotFound(_))
    ));
    let c3 = r.commit(&feature, ChangeSet::new([t(4)], [t(1)]).unwrap(), "three").unwrap();
    let names: Vec<String> = r.branches().unwrap().iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names, ["main", "team/feature"]);

    let d = r.diff(c2, c3).unwrap();
    assert_eq!(d.added(), &[t(4)]);
    let mut removed = d.removed().to_vec();
    removed.sort();
    let mut want = vec![t(1), t(3)];
    want.sort();
    assert_eq!(removed, want);
    // Applying the diff to the first state gives the second.
    let mut s = r.materialize(c2).unwrap();
    s.apply(&d).unwrap();
    assert_eq!(s.state_root(), r.materialize(c3).unwrap().state_root());

    let log: Vec<CommitId> = r.log(c3, 10).unwrap().iter().map(|c| c.id()).collect();
    assert_eq!(log, [c3, c1]);
    assert_eq!(r.log(c2, 1).unwrap().len(), 1);

    r.delete_branch(&feature).unwrap();
    assert_eq!(r.head(&feature).unwrap(), None);
    assert!(matches!(r.delete_branch(&feature), Err(RepoError::BranchNotFound(_))));
}

#[test]
fn queries_use_every_index_and_agree_with_a_scan() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut state = GraphState::new();
    let mut all = Vec::new();
    for _ in 0..2_000 {
        let x = Triple::new(
            Term::iri(format!("urn:s{}", rng.random_range(0..50))).unwrap(),
            Term::iri(format!("urn:p{}", rng.random_range(0..8))).unwrap(),
            if rng.random_bool(0.5) {
                Term::iri(format!("urn:s{}", rng.random_range(0..50))).unwrap()
            } else {
                Term::string(format!("{}", rng.random_range(0..30))).unwrap()
            },
        )
        .unwrap();
        state.insert(&x).unwrap();
        all.push(x);
    }
    all.sort();
    all.dedup();
    assert_eq!(state.len(), all.len());
    let pick = |rng: &mut ChaCha8Rng| all[rng.random_range(0..all.len())].clone();
    for _ in 0..300 {
        let sample = pick(&mut rng);
        let mask = rng.random_range(0..8u8);
        let mut pattern = Pattern::any();
        if mask & 1 != 0 {
            pattern = pattern.with_subject(sample.subject().clone());
        }
        if mask & 2 != 0 {
            pattern = pattern.with_predicate(sample.predicate().clone());
        }
        if mask & 4 != 0 {
            pattern = pattern.with_object(sample.object().clone());
        }
        let mut got: Vec<Triple> = state.matching(&pattern).map(|x| x.to_triple()).collect();
        got.sort();
        let want: Vec<Triple> = all
            .iter()
            .filter(|x| pattern.subject.as_ref().is_none_or(|s| x.subject() == s))
            .filter(|x| pattern.predicate.as_ref().is_none_or(|p| x.predicate() == p))
            .filter(|x| pattern.object.as_ref().is_none_or(|o| x.object() == o))
            .cloned()
            .collect();
        assert_eq!(got, want, "pattern {pattern:?}");
        assert!(!got.is_empty());
    }
    let unknown = Pattern::any().with_subject(Term::iri("urn:never").unwrap());
    assert_eq!(state.matching(&unknown).count(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Merging A into B and B into A give the same state, and that state is
    /// (A ∩ B) ∪ (A − O) ∪ (B − O).
    #[test]
    fn merge_is_symmetric_and_follows_set_semantics(seed in any::<u64>()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut r = repo();
        let (main, x, y) = (b("main"), b("x"), b("y"));
        r.commit(&main, add(0..20), "base").unwrap();
        for _ in 0..rng.random_range(0..3) {
            random_commit(&mut r, &main, &mut rng);
        }
        let base = r.head(&main).unwrap().unwrap();
        r.create_branch(&x, base).unwrap();
        r.create_branch(&y, base).unwrap();
        for _ in 0..rng.random_range(1..4) {
            random_commit(&mut r, &x, &mut rng);
        }
        for _ in 0..rng.random_range(1..4) {
            random_commit(&mut r, &y, &mut rng);
        }
        let (hx, hy) = (r.head(&x).unwrap().unwrap(), r.head(&y).unwrap().unwrap());
        let o = set_of(&r.materialize(base).unwrap());
        let a = set_of(&r.materialize(hx).unwrap());
        let bb = set_of(&r.materialize(hy).unwrap());
        let expected: BTreeSet<Triple> = a
            .intersection(&bb)
            .chain(a.difference(&o))
            .chain(bb.difference(&o))
            .cloned()
            .collect();

        r.create_branch(&b("m1"), hx).unwrap();
        r.create_branch(&b("m2"), hy).unwrap();
        let o1 = r.merge(&b("m1"), hy, "y into x").unwrap();
        let o2 = r.merge(&b("m2"), hx, "x into y").unwrap();
        let s1 = set_of(r.state(&b("m1")).unwrap());
        let s2 = set_of(r.state(&b("m2")).unwrap());
        prop_assert_eq!(&s1, &expected);
        prop_assert_eq!(&s2, &expected);
        let diverged = !r.is_ancestor(hx, hy).unwrap() && !r.is_ancestor(hy, hx).unwrap();
        if diverged {
            // A merge commit exactly when the merge changes ours' state.
            for (out, ours, theirs) in [(o1, hx, hy), (o2, hy, hx)] {
                let changed = set_of(&r.materialize(ours).unwrap()) != expected;
                match out {
                    MergeOutcome::Merged(m) => {
                        prop_assert!(changed);
                        let c = r.load_commit(m).unwrap();
                        prop_assert_eq!(c.commit().parents(), &[ours, theirs]);
                    }
                    MergeOutcome::Unchanged => prop_assert!(!changed),
                    other => prop_assert!(false, "diverged branches must merge, got {:?}", other),
                }
            }
            // The two replicas merge each other again, in either order: they settle, with no
            // new commit on either side (a branch may fast-forward to the other's commit).
            for (branch, other) in [("m1", "m2"), ("m2", "m1"), ("m2", "m1"), ("m1", "m2")] {
                let (branch, theirs) = (b(branch), r.head(&b(other)).unwrap().unwrap());
                let before = r.head(&branch).unwrap();
                let out = r.merge(&branch, theirs, "again").unwrap();
                match out {
                    MergeOutcome::Unchanged | MergeOutcome::AlreadyUpToDate => {
                        prop_assert_eq!(r.head(&branch).unwrap(), before);
                    }
                    MergeOutcome::FastForward(to) => prop_assert_eq!(to, theirs),
                    other => prop_assert!(false, "merging again made {:?}", other),
                }
            }
            prop_assert_eq!(set_of(r.state(&b("m1")).unwrap()), set_of(r.state(&b("m2")).unwrap()));
        }
        // Merging a commit with itself (or anything already contained) changes nothing.
        let head = r.head(&b("m1")).unwrap().unwrap();
        prop_assert_eq!(r.merge(&b("m1"), head, "self").unwrap(), MergeOutcome::AlreadyUpToDate);
        prop_assert_eq!(r.merge(&b("m1"), hx, "old").unwrap(), MergeOutcome::AlreadyUpToDate);
        prop_assert_eq!(r.head(&b("m1")).unwrap(), Some(head));
        // Merging a descendant fast-forwards.
        let mut seeded = ChaCha8Rng::seed_from_u64(seed ^ 1);
        random_commit(&mut r, &b("m1"), &mut seeded);
        let ahead = r.head(&b("m1")).unwrap().unwrap();
        r.create_branch(&b("behind"), head).unwrap();
        let out = r.merge(&b("behind"), ahead, "ff").unwrap();
        if ahead != head {
            prop_assert_eq!(out, MergeOutcome::FastForward(ahead));
            prop_assert_eq!(r.head(&b("behind")).unwrap(), Some(ahead));
        }
    }

    /// Merge bases agree with a brute-force search over random DAGs built with commits,
    /// branches and (criss-cross) merges.
    #[test]
    fn merge_bases_match_brute_force(seed in any::<u64>()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut r = repo();
        let branches: Vec<BranchName> = (0..4).map(|i| b(&format!("b{i}"))).collect();
        let root = r.commit(&branches[0], add([0]), "root").unwrap();
        for br in &branches[1..] {
            r.create_branch(br, root).unwrap();
        }
        let mut counter = 1000;
        for _ in 0..30 {
            let br = &branches[rng.random_range(0..branches.len())];
            if rng.random_range(0..3) == 0 {
                let other = &branches[rng.random_range(0..branches.len())];
                let theirs = r.head(other).unwrap().unwrap();
                r.merge(br, theirs, "merge").unwrap();
            } else {
                counter += 1;
                r.commit(br, add([counter]), "work").unwrap();
            }
        }
        // Collect the DAG through the public API.
        let heads: Vec<CommitId> = branches.iter().map(|x| r.head(x).unwrap().unwrap()).collect();
        let mut parents: HashMap<CommitId, Vec<CommitId>> = HashMap::new();
        let mut stack = heads.clone();
        while let Some(c) = stack.pop() {
            if parents.contains_key(&c) {
                continue;
            }
            let ps = r.load_commit(c).unwrap().commit().parents().to_vec();
            stack.extend(ps.iter().copied());
            parents.insert(c, ps);
        }
        let ancestors = |c: CommitId| -> HashSet<CommitId> {
            let mut seen = HashSet::from([c]);
            let mut stack = vec![c];
            while let Some(x) = stack.pop() {
                for p in &parents[&x] {
                    if seen.insert(*p) {
                        stack.push(*p);
                    }
                }
            }
            seen
        };
        let all: Vec<CommitId> = parents.keys().copied().collect();
        for _ in 0..20 {
            let a = all[rng.random_range(0..all.len())];
            let c = all[rng.random_range(0..all.len())];
            let common: Vec<CommitId> =
                ancestors(a).intersection(&ancestors(c)).copied().collect();
            let mut best: Vec<CommitId> = common
                .iter()
                .copied()
                .filter(|x| !common.iter().any(|y| y != x && ancestors(*y).contains(x)))
                .collect();
            best.sort();
            prop_assert_eq!(r.merge_bases(a, c).unwrap(), best);
            prop_assert_eq!(r.is_ancestor(a, c).unwrap(), ancestors(c).contains(&a));
        }
    }
}

/// The classic criss-cross: two merge bases, merged into a virtual base.
#[test]
fn criss_cross_merge_uses_a_virtual_base() {
    let mut r = repo();
    let (x, y) = (b("x"), b("y"));
    let o = r.commit(&x, add([1, 2, 3]), "base").unwrap();
    r.create_branch(&y, o).unwrap();
    let x1 = r.commit(&x, ChangeSet::new([t(10)], [t(1)]).unwrap(), "x1").unwrap();
    let y1 = r.commit(&y, ChangeSet::new([t(20)], [t(2)]).unwrap(), "y1").unwrap();
    r.create_branch(&b("xm"), x1).unwrap();
    r.create_branch(&b("ym"), y1).unwrap();
    let MergeOutcome::Merged(mx) = r.merge(&b("xm"), y1, "y1 into x1").unwrap() else { panic!() };
    let MergeOutcome::Merged(my) = r.merge(&b("ym"), x1, "x1 into y1").unwrap() else { panic!() };
    // Each side keeps working: xm drops 3 and adds 30; ym adds 40.
    r.commit(&b("xm"), ChangeSet::new([t(30)], [t(3)]).unwrap(), "x2").unwrap();
    r.commit(&b("ym"), add([40]), "y2").unwrap();
    let (hx, hy) = (r.head(&b("xm")).unwrap().unwrap(), r.head(&b("ym")).unwrap().unwrap());
    let mut bases = vec![x1, y1];
    bases.sort();
    assert_eq!(r.merge_bases(mx, my).unwrap(), bases);
    assert_eq!(r.merge_bases(hx, hy).unwrap(), bases);
    r.merge(&b("xm"), hy, "criss-cross").unwrap();
    // The virtual base is {10, 20} ∪ {3}: x's removal of 3 and both sides' additions survive.
    let got = set_of(r.state(&b("xm")).unwrap());
    let want: BTreeSet<Triple> = [10, 20, 30, 40].into_iter().map(t).collect();
    assert_eq!(got, want);
}

/// A commit-context signature made with the key directly (the public API refuses the
/// reserved context).
fn forge_commit_signature(kp: &NodeKeypair, message: &[u8]) -> [u8; 64] {
    use ed25519_dalek::Signer as _;
    let context = b"llmkg/commit/v1";
    let mut input = (context.len() as u64).to_le_bytes().to_vec();
    input.extend_from_slice(context);
    input.extend_from_slice(message);
    ed25519_dalek::SigningKey::from_bytes(&kp.secret_bytes()).sign(&input).to_bytes()
}

fn signed(key: &NodeKeypair, commit: Commit) -> SignedCommit {
    SignedCommit::sign(key, commit).unwrap()
}

/// Another node's repository sharing the first commit, to receive from.
fn two_repos() -> (Repository<MemoryStore>, Repository<MemoryStore>, CommitId) {
    let mut alice = repo_with(MemoryStore::new(), 1, "acme");
    let mut bob = repo_with(MemoryStore::new(), 2, "globex");
    let c1 = alice.commit(&b("main"), add([1, 2]), "first").unwrap();
    let bytes = alice.store().object(&c1.into()).unwrap().unwrap();
    assert_eq!(bob.receive(&bytes).unwrap(), c1);
    (alice, bob, c1)
}

#[test]
fn received_commits_are_fully_verified_and_nothing_bad_is_stored() {
    let (mut alice, mut bob, c1) = two_repos();
    let key_a = NodeKeypair::from_secret_bytes([1; 32]);
    let key_b = NodeKeypair::from_secret_bytes([2; 32]);
    let parent_state_root = alice.load_commit(c1).unwrap().commit().state_root();
    let good = alice.commit(&b("main"), add([3]), "second").unwrap();
    let good_bytes = alice.store().object(&good.into()).unwrap().unwrap();
    let good_commit = alice.load_commit(good).unwrap().commit().clone();
    let objects_before = bob.store().object_count();

    let make =
        |changes: ChangeSet, root: StateRoot, author: &NodeKeypair, parents: Vec<CommitId>| {
            Commit::new(
                parents,
                changes,
                author.node_id(),
                OrgId::new("acme").unwrap(),
                Timestamp::from_micros(5),
                "evil".into(),
                root,
            )
            .unwrap()
        };

    // 1. Every single flipped byte is rejected (decoding, id or signature).
    for i in 0..good_bytes.len() {
        let mut bad = good_bytes.clone();
        bad[i] ^= 0x01;
        assert!(bob.receive(&bad).is_err(), "flipped byte {i} accepted");
    }
    // 2. A wrong state root, correctly signed by its author.
    let wrong_root = signed(&key_a, make(add([3]), parent_state_root, &key_a, vec![c1]));
    match bob.receive(&wrong_root.encode()) {
        Err(RepoError::InvalidCommit {
            reason: InvalidCommit::StateRootMismatch { .. }, ..
        }) => {}
        other => panic!("wrong state root accepted: {other:?}"),
    }
    // 3. Changes that do not apply to the parent (removing an absent triple).
    let bad_changes = signed(
        &key_a,
        make(ChangeSet::removing([t(77)]), good_commit.state_root(), &key_a, vec![c1]),
    );
    assert!(matches!(
        bob.receive(&bad_changes.encode()),
        Err(RepoError::InvalidCommit { reason: InvalidCommit::ChangesDoNotApply(_), .. })
    ));
    // 4. A missing parent.
    let orphan = signed(&key_a, make(add([3]), good_commit.state_root(), &key_a, vec![good]));
    assert!(matches!(
        bob.receive(&orphan.encode()),
        Err(RepoError::InvalidCommit { reason: InvalidCommit::MissingParent(_), .. })
    ));
    // 5. Signed by another node than its author: the envelope carries B's key and signature
    //    over A's commit.
    let mut stolen = encoding::try_encode(&good_commit).unwrap();
    stolen.extend_from_slice(key_b.node_id().as_bytes());
    stolen.push(64);
    stolen.extend_from_slice(&forge_commit_signature(&key_b, good_commit.id().as_bytes()));
    assert!(matches!(
        bob.receive(&stolen),
        Err(RepoError::Unverifiable(CommitVerifyError::SignerNotAuthor { .. }))
    ));
    // 6. A forged signature: A's envelope with the signature bytes of another message.
    let mut forged = good_bytes.clone();
    let n = forged.len();
    let other_sig = forge_commit_signature(&key_a, b"something else");
    forged[n - 64..].copy_from_slice(&other_sig);
    assert!(matches!(bob.receive(&forged), Err(RepoError::Unverifiable(_))));

    assert_eq!(bob.store().object_count(), objects_before, "a rejected commit was stored");
    // The genuine commit is accepted.
    assert_eq!(bob.receive(&good_bytes).unwrap(), good);
    bob.create_branch(&b("from-alice"), good).unwrap();
    assert_eq!(
        set_of(bob.state(&b("from-alice")).unwrap()),
        set_of(alice.state(&b("main")).unwrap())
    );
}

#[test]
fn corrupt_objects_in_the_store_are_detected_on_load() {
    let mut r = repo();
    let main = b("main");
    let c1 = r.commit(&main, add([1]), "one").unwrap();
    let c2 = r.commit(&main, add([2]), "two").unwrap();
    // Another commit's bytes stored under c2's id in a fresh store: the id check catches it.
    let store = MemoryStore::new();
    let c1_bytes = r.store().object(&c1.into()).unwrap().unwrap();
    store
        .write(
            WriteBatch::new().put_object(c1, c1_bytes.clone()).put_object(c2, c1_bytes).update_ref(
                main.clone(),
                None,
                Some(c2),
            ),
        )
        .unwrap();
    let mut damaged = repo_with(store, 1, "acme");
    match damaged.state(&main) {
        Err(RepoError::InvalidCommit { id, .. }) => assert_eq!(id, c2),
        other => panic!("corrupt store accepted: {other:?}"),
    }
}

#[test]
fn bad_names_and_terms_are_typed_errors() {
    assert!(BranchName::new("").is_err());
    assert!(BranchName::new("a//b").is_err());
    assert!(BranchName::new("a b").is_err());
    assert!(OrgId::new("-acme").is_err());
    assert!(Term::iri("relative/path").is_err());
    assert!(Term::blank("has space").is_err());
    assert!(
        Triple::new(
            Term::string("lit").unwrap(),
            Term::iri("urn:p").unwrap(),
            Term::string("o").unwrap()
        )
        .is_err()
    );
    assert!(
        Triple::new(
            Term::iri("urn:s").unwrap(),
            Term::blank("b").unwrap(),
            Term::string("o").unwrap()
        )
        .is_err()
    );
}
