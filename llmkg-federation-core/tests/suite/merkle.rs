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
