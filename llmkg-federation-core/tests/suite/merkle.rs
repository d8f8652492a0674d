#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Laws of the Merkle state tree: history independence and exact differences.

use std::collections::BTreeSet;

use llmkg_federation_core::{GraphState, MerkleTree, Term, Triple, TripleId};
use proptest::prelude::*;

fn id(n: u32) -> TripleId {
    TripleId::from_bytes(*blake3::hash(&n.to_le_bytes()).as_bytes())
}

fn tree(ids: impl IntoIterator<Item = u32>) -> MerkleTree {
    let mut t = MerkleTree::new();
    for n in ids {
        t.insert(id(n), ());
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Equal sets give equal roots whatever the order of insertion, whatever was inserted and
    /// removed on the way, and however the tree was built.
    #[test]
    fn root_is_history_independent(
        set in proptest::collection::btree_set(0u32..5_000, 0..600),
        noise in proptest::collection::vec(5_000u32..6_000, 0..200),
        seed in any::<u64>(),
    ) {
        let ordered: Vec<u32> = set.iter().copied().collect();
        let mut shuffled = ordered.clone();
        // A deterministic shuffle driven by the seed.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut a = tree(ordered.iter().copied());
        let mut b = MerkleTree::new();
        for (k, n) in shuffled.iter().enumerate() {
            b.insert(id(*n), ());
            if let Some(x) = noise.get(k) {
                b.insert(id(*x), ());
            }
            if k % 7 == 0 {
                b.root(); // interleave hash refreshes with updates
            }
        }
        for x in &noise {
            b.remove(&id(*x));
        }
        let mut c = MerkleTree::from_entries(shuffled.iter().map(|n| (id(*n), ())));
        prop_assert_eq!(a.len(), set.len());
        prop_assert_eq!(b.len(), set.len());
        prop_assert_eq!(a.root(), b.root());
        prop_assert_eq!(a.root(), c.root());
    }

    /// Built from entries in any order with repeated ids, a tree is the one inserting the
    /// first entry of each id gives: same entries, payloads and root. Small id ranges make
    /// lists longer than a leaf whose distinct ids fit in one (the build must fold them back
    /// into a leaf); large ones make several levels.
    #[test]
    fn from_entries_keeps_the_first_of_repeated_ids(
        range in prop_oneof![Just(40u32), Just(3_000u32)],
        list in proptest::collection::vec((any::<u32>(), any::<u16>()), 0..4_000),
    ) {
        let list: Vec<(u32, u16)> = list.into_iter().map(|(n, p)| (n % range, p)).collect();
        let mut inserted: MerkleTree<u16> = MerkleTree::new();
        for (n, p) in &list {
            inserted.insert(id(*n), *p);
        }
        let mut built = MerkleTree::from_entries(list.iter().map(|(n, p)| (id(*n), *p)));
        prop_assert_eq!(built.len(), inserted.len());
        prop_assert_eq!(built.entries(), inserted.entries());
        prop_assert_eq!(built.root(), inserted.root());
    }

    /// Different sets give different roots.
    #[test]
    fn different_sets_differ(
        set in proptest::collection::btree_set(0u32..5_000, 1..400),
        extra in 5_000u32..10_000,
    ) {
        let mut a = tree(set.iter().copied());
        let mut b = tree(set.iter().copied().chain([extra]));
        prop_assert_ne!(a.root(), b.root());
        let mut c = tree(set.iter().copied().skip(1));
        prop_assert_ne!(a.root(), c.root());
    }

    /// The Merkle difference of two states is exactly their symmetric difference, whether or
    /// not the hashes are up to date.
    #[test]
    fn diff_is_the_symmetric_difference(
        common in proptest::collection::btree_set(0u32..20_000, 0..1_500),
        only_a in proptest::collection::btree_set(20_000u32..30_000, 0..200),
        only_b in proptest::collection::btree_set(30_000u32..40_000, 0..200),
        refresh in any::<bool>(),
    ) {
        let mut a = tree(common.iter().chain(&only_a).copied());
        let mut b = tree(common.iter().chain(&only_b).copied());
        if refresh {
            a.root();
            b.root();
        }
        let (left, right) = a.diff(&b);
        let left: BTreeSet<TripleId> = left.into_iter().map(|e| e.0).collect();
        let right: BTreeSet<TripleId> = right.into_iter().map(|e| e.0).collect();
        let want_left: BTreeSet<TripleId> = only_a.iter().map(|n| id(*n)).collect();
        let want_right: BTreeSet<TripleId> = only_b.iter().map(|n| id(*n)).collect();
        prop_assert_eq!(left, want_left);
        prop_assert_eq!(right, want_right);
    }

    /// The same law on graph states built from triples in different orders.
    #[test]
    fn graph_state_root_ignores_order(
        raw in proptest::collection::btree_set((0u8..30, 0u8..5, 0u8..40), 0..300),
    ) {
        let triples: Vec<Triple> = raw
            .iter()
            .map(|(s, p, o)| {
                Triple::new(
                    Term::iri(format!("urn:s:{s}")).unwrap(),
                    Term::iri(format!("urn:p:{p}")).unwrap(),
                    Term::string(format!("{o}")).unwrap(),
                )
                .unwrap()
            })
            .collect();
        let mut forward = GraphState::new();
        for t in &triples {
            forward.insert(t).unwrap();
        }
        let mut backward = GraphState::new();
        for t in triples.iter().rev() {
            backward.insert(t).unwrap();
        }
        prop_assert_eq!(forward.state_root(), backward.state_root());
        let d = forward.diff(&backward);
        prop_assert!(d.is_empty());
    }
}

/// A tree with payloads (`u32`), built one id at a time.
fn tree_with(ids: impl IntoIterator<Item = u32>) -> MerkleTree<u32> {
    let mut t = MerkleTree::new();
    for n in ids {
        t.insert(id(n), n);
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Batch insertion and removal give the same tree as one id at a time: same root, same
    /// entries and payloads (an id already present keeps its payload), same counts returned.
    #[test]
    fn batches_match_one_at_a_time(
        start in proptest::collection::btree_set(0u32..4_000, 0..700),
        rounds in proptest::collection::vec(
            (
                proptest::collection::vec(0u32..4_000, 0..300),
                proptest::collection::vec(0u32..4_000, 0..300),
            ),
            1..5,
        ),
        refresh in any::<bool>(),
    ) {
        let mut batched = tree_with(start.iter().copied());
        let mut single = tree_with(start.iter().copied());
        for (adds, removes) in &rounds {
            if refresh {
                batched.root();
            }
            let removed = batched.remove_many(removes.iter().map(|n| id(*n)).collect());
            let removed_one_by_one =
                removes.iter().collect::<BTreeSet<_>>().iter().filter(|n| single.remove(&id(***n)).is_some()).count();
            prop_assert_eq!(removed, removed_one_by_one);
            // Payload `n + 1` for new ids: an id already present must keep payload `n`.
            let inserted = batched.insert_many(adds.iter().map(|n| (id(*n), n + 1)).collect());
            let inserted_one_by_one = adds.iter().filter(|n| single.insert(id(**n), **n + 1)).count();
            prop_assert_eq!(inserted, inserted_one_by_one);
            prop_assert_eq!(batched.len(), single.len());
            prop_assert_eq!(batched.entries(), single.entries());
            prop_assert_eq!(batched.root(), single.root());
            let mut rebuilt = MerkleTree::from_entries(single.entries());
            prop_assert_eq!(batched.root(), rebuilt.root());
        }
    }

    /// Applying change sets in one batch (`apply`, `apply_effective`) gives the same state as
    /// inserting and removing their triples one at a time.
    #[test]
    fn graph_state_batches_match_one_at_a_time(
        start in proptest::collection::btree_set((0u8..20, 0u8..4, 0u8..30), 0..200),
        rounds in proptest::collection::vec(
            (
                proptest::collection::btree_set((0u8..20, 0u8..4, 0u8..30), 0..60),
                proptest::collection::btree_set((0u8..20, 0u8..4, 0u8..30), 0..60),
            ),
            1..5,
        ),
    ) {
        let triple = |(s, p, o): &(u8, u8, u8)| {
            Triple::new(
                Term::iri(format!("urn:s:{s}")).unwrap(),
                Term::iri(format!("urn:p:{p}")).unwrap(),
                Term::string(format!("{o}")).unwrap(),
            )
            .unwrap()
        };
        let mut effective = GraphState::new();
        let mut exact = GraphState::new();
        let mut single = GraphState::new();
        for t in &start {
            effective.insert(&triple(t)).unwrap();
            exact.insert(&triple(t)).unwrap();
            single.insert(&triple(t)).unwrap();
        }
        for (adds, removes) in &rounds {
            let removes: Vec<_> = removes.difference(adds).collect();
            let changes = llmkg_federation_core::ChangeSet::new(
                adds.iter().map(triple),
                removes.iter().map(|t| triple(t)),
            )
            .unwrap();
            let applied = effective.apply_effective(changes.clone()).unwrap();
            let mut want_removed = Vec::new();
            for t in &removes {
                if single.remove(&triple(t)) {
                    want_removed.push(triple(t));
                }
            }
            let mut want_added = Vec::new();
            for t in adds {
                if single.insert(&triple(t)).unwrap() {
                    want_added.push(triple(t));
                }
            }
            want_added.sort();
            want_removed.sort();
            prop_assert_eq!(applied.added(), &want_added[..]);
            prop_assert_eq!(applied.removed(), &want_removed[..]);
            // `apply` takes exactly the effective part, and refuses anything else untouched.
            let before = exact.state_root();
            if !changes.is_empty() && applied != changes {
                prop_assert!(exact.apply(&changes).is_err());
                prop_assert_eq!(exact.state_root(), before);
            }
            exact.apply(&applied).unwrap();
            prop_assert_eq!(effective.len(), single.len());
            prop_assert_eq!(exact.len(), single.len());
            prop_assert_eq!(effective.state_root(), single.state_root());
            prop_assert_eq!(exact.state_root(), single.state_root());
            // Results come in dictionary-key order, which depends on the order terms were
            // first seen: compare them as sets.
            let answer = |g: &GraphState, p: &llmkg_federation_core::Pattern| {
                g.matching(p).map(|t| t.to_triple()).collect::<BTreeSet<_>>()
            };
            let any = llmkg_federation_core::Pattern::any();
            prop_assert_eq!(answer(&effective, &any), answer(&single, &any));
            prop_assert_eq!(answer(&exact, &any), answer(&single, &any));
            for p in 0u8..4 {
                let pattern = llmkg_federation_core::Pattern::any()
                    .with_predicate(Term::iri(format!("urn:p:{p}")).unwrap());
                prop_assert_eq!(answer(&effective, &pattern), answer(&single, &pattern));
            }
            for o in 0u8..30 {
                let pattern = llmkg_federation_core::Pattern::any()
                    .with_object(Term::string(format!("{o}")).unwrap());
                prop_assert_eq!(answer(&effective, &pattern), answer(&single, &pattern));
            }
        }
    }
}

/// Above the thresholds the rehash runs on several threads: the root is the same as a tree
/// built from scratch, after batches of inserts and removals.
#[test]
fn parallel_rehash_gives_the_same_root() {
    use llmkg_federation_core::merkle::{PARALLEL_REHASH_MIN_CHANGES, PARALLEL_REHASH_MIN_LEN};
    let n = PARALLEL_REHASH_MIN_LEN as u32 + 5_000;
    let mut t = MerkleTree::from_entries((0..n).map(|k| (id(k), k)));
    let mut expect = tree_with(0..n);
    assert_eq!(t.root(), expect.root());
    let batch = PARALLEL_REHASH_MIN_CHANGES as u32 * 4;
    t.insert_many((n..n + batch).map(|k| (id(k), k)).collect());
    t.remove_many((0..batch).map(id).collect());
    let mut expect = MerkleTree::from_entries((batch..n + batch).map(|k| (id(k), k)));
    assert_eq!(t.root(), expect.root());
    assert_eq!(t.len(), n as usize);
}

#[test]
fn large_tree_insert_remove_round_trip() {
    let mut t = tree(0..50_000);
    let full = t.root();
    for n in (0..50_000).step_by(3) {
        assert!(t.remove(&id(n)).is_some());
    }
    let mut expect = tree((0..50_000).filter(|n| n % 3 != 0));
    assert_eq!(t.root(), expect.root());
    for n in (0..50_000).step_by(3) {
        assert!(t.insert(id(n), ()));
    }
    assert_eq!(t.root(), full);
    assert!(!t.insert(id(1), ()), "inserting a present id reports false");
}
