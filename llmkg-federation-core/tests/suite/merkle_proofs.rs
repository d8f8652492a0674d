#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Merkle summaries and membership proofs: they verify for what is true, and nothing a
//! cheating or faulty peer sends makes them verify for what is false.

use std::collections::BTreeSet;

use llmkg_federation_core::merkle::{LEAF_CAPACITY, ProofEnd, SummaryBody, SummaryError};
use llmkg_federation_core::{
    GraphState, Membership, MerkleProof, MerkleTree, NibblePath, NodeHash, ProofError, StateRoot,
    SubtreeSummary, Term, Triple, TripleId,
};
use proptest::prelude::*;
use serde::Serialize;

fn id(n: u32) -> TripleId {
    TripleId::from_bytes(*blake3::hash(&n.to_le_bytes()).as_bytes())
}

fn tree(ids: impl IntoIterator<Item = u32>) -> MerkleTree {
    MerkleTree::from_entries(ids.into_iter().map(|n| (id(n), ())))
}

fn truth(t: &MerkleTree, x: &TripleId) -> Membership {
    if t.contains(x) { Membership::Present } else { Membership::Absent }
}

/// The serde shape of a proof, to craft proofs the prover API would never make.
#[derive(Serialize)]
struct FakeProof {
    branches: Vec<[NodeHash; 15]>,
    end: FakeEnd,
}

#[derive(Serialize)]
enum FakeEnd {
    #[allow(dead_code)]
    EmptySlot,
    Leaf(Vec<TripleId>),
}

/// Walks the whole tree through summaries, checking each child against its parent, and
/// returns the ids found at the bottom.
fn walk(t: &MerkleTree, s: &SubtreeSummary, out: &mut Vec<TripleId>) {
    match s.body() {
        SummaryBody::Ids(ids) => out.extend_from_slice(ids),
        SummaryBody::Children(children) => {
            let mut total = 0;
            for n in 0..16u8 {
                let child = t.summary(&s.prefix().child(n).unwrap());
                s.check_child(&child).unwrap();
                assert_eq!(children[n as usize].is_some(), child.count() > 0);
                total += child.count();
                walk(t, &child, out);
            }
            assert_eq!(total, s.count());
        }
    }
}

/// Set reconciliation over summaries only: descends where hashes differ.
fn reconcile(
    a: &MerkleTree,
    b: &MerkleTree,
    prefix: NibblePath,
    only_a: &mut BTreeSet<TripleId>,
    only_b: &mut BTreeSet<TripleId>,
) {
    let (sa, sb) = (a.summary(&prefix), b.summary(&prefix));
    if sa.hash() == sb.hash() {
        return;
    }
    match (sa.ids(), sb.ids()) {
        (Some(_), _) | (_, Some(_)) => {
            let mut xs = Vec::new();
            walk(a, &sa, &mut xs);
            let mut ys = Vec::new();
            walk(b, &sb, &mut ys);
            let (xs, ys): (BTreeSet<_>, BTreeSet<_>) =
                (xs.into_iter().collect(), ys.into_iter().collect());
            only_a.extend(xs.difference(&ys));
            only_b.extend(ys.difference(&xs));
        }
        (None, None) => {
            for n in 0..16u8 {
                reconcile(a, b, prefix.child(n).unwrap(), only_a, only_b);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every present id and random absent ids get a proof that verifies with the truth.
    #[test]
    fn proofs_verify_for_present_and_absent_ids(
        set in proptest::collection::btree_set(0u32..100_000, 0..800),
        absent in proptest::collection::vec(100_000u32..200_000, 1..40),
        stale in any::<bool>(),
    ) {
        let mut t = tree(set.iter().copied());
        let root = if stale { t.current_root() } else { t.root() };
        for n in set.iter().step_by(3) {
            let p = t.prove(&id(*n));
            prop_assert_eq!(p.verify(&root, &id(*n)), Ok(Membership::Present));
            let back = MerkleProof::decode(&p.encode()).unwrap();
            prop_assert_eq!(&back, &p);
        }
        for n in &absent {
            let p = t.prove(&id(*n));
            prop_assert_eq!(p.verify(&root, &id(*n)), Ok(Membership::Absent));
        }
    }

    /// Flipping any single bit of an encoded proof never yields a verified claim for the same
    /// (root, id): the canonical decoder or the verifier refuses every altered proof.
    #[test]
    fn a_flipped_bit_never_verifies_a_false_claim(
        set in proptest::collection::btree_set(0u32..50_000, 0..300),
        target in 0u32..60_000,
        bit in any::<proptest::sample::Index>(),
    ) {
        let mut t = tree(set.iter().copied());
        let root = t.root();
        let x = id(target);
        let mut bytes = t.prove(&x).encode();
        let i = bit.index(bytes.len() * 8);
        bytes[i / 8] ^= 1 << (i % 8);
        match MerkleProof::decode(&bytes) {
            Err(_) => {}
            Ok(p) => {
                let got = p.verify(&root, &x);
                prop_assert!(got.is_err(), "altered proof accepted: {:?}", got);
            }
        }
    }

    /// A proof does not verify against another state's root, and never verifies a false
    /// membership for another id (it fails outright when the other id leaves the path).
    #[test]
    fn wrong_root_or_id_is_refused(
        set in proptest::collection::btree_set(0u32..50_000, 1..500),
        pick in any::<proptest::sample::Index>(),
        other in 0u32..60_000,
    ) {
        let mut t = tree(set.iter().copied());
        let root = t.root();
        let n = *pick.get(&set.iter().copied().collect::<Vec<_>>());
        let p = t.prove(&id(n));
        let mut changed = tree(set.iter().copied().chain([70_000]));
        prop_assert_eq!(p.verify(&changed.root(), &id(n)), Err(ProofError::RootMismatch));
        let y = id(other);
        if let Ok(m) = p.verify(&root, &y) {
            prop_assert_eq!(m, truth(&t, &y));
            let d = p.depth();
            prop_assert!(d == 0 || NibblePath::of_id(&y, d) == NibblePath::of_id(&id(n), d));
        }
    }

    /// Walking summaries from the root checks every child against its parent and finds
    /// every id exactly once.
    #[test]
    fn child_summaries_hash_to_their_parent(
        set in proptest::collection::btree_set(0u32..50_000, 0..700),
    ) {
        let mut t = tree(set.iter().copied());
        let root = t.root();
        let top = t.summary(&NibblePath::ROOT);
        top.check_root(&root).unwrap();
        prop_assert_eq!(top.count() as usize, set.len());
        let back = SubtreeSummary::decode(&top.encode()).unwrap();
        prop_assert_eq!(&back, &top);
        let mut found = Vec::new();
        walk(&t, &top, &mut found);
        let want: BTreeSet<TripleId> = set.iter().map(|n| id(*n)).collect();
        prop_assert_eq!(found.len(), want.len());
        prop_assert_eq!(found.into_iter().collect::<BTreeSet<_>>(), want);
    }

    /// Two peers comparing summaries top-down find exactly their symmetric difference.
    #[test]
    fn summaries_find_the_difference(
        common in proptest::collection::btree_set(0u32..20_000, 0..1_000),
        only_a in proptest::collection::btree_set(20_000u32..30_000, 0..60),
        only_b in proptest::collection::btree_set(30_000u32..40_000, 0..60),
    ) {
        let a = tree(common.iter().chain(&only_a).copied());
        let b = tree(common.iter().chain(&only_b).copied());
        let (mut got_a, mut got_b) = (BTreeSet::new(), BTreeSet::new());
        reconcile(&a, &b, NibblePath::ROOT, &mut got_a, &mut got_b);
        prop_assert_eq!(got_a, only_a.iter().map(|n| id(*n)).collect::<BTreeSet<_>>());
        prop_assert_eq!(got_b, only_b.iter().map(|n| id(*n)).collect::<BTreeSet<_>>());
    }
}

#[test]
fn empty_tree_proves_absence() {
    let mut t = tree([]);
    let root = t.root();
    let p = t.prove(&id(1));
    assert_eq!(p.depth(), 0);
    assert_eq!(p.end(), &ProofEnd::Leaf(vec![]));
    assert_eq!(p.verify(&root, &id(1)), Ok(Membership::Absent));
    let s = t.summary(&NibblePath::ROOT);
    s.check_root(&root).unwrap();
    assert_eq!(s.count(), 0);
}

#[test]
fn an_absence_proof_cannot_be_forged_for_a_present_id() {
    let mut t = tree(0..2_000);
    let root = t.root();
    let x = id(7);
    let honest = t.prove(&x);
    let ProofEnd::Leaf(ids) = honest.end() else { panic!("a present id ends in a leaf") };
    let depth = honest.depth();
    // Re-encode the honest path with the id dropped from its leaf, or with an empty slot.
    let bytes = honest.encode();
    let leaf_bytes = 1 + 1 + 32 * ids.len(); // variant tag, length, ids
    let path = &bytes[..bytes.len() - leaf_bytes];
    let mut without = path.to_vec();
    let rest: Vec<TripleId> = ids.iter().copied().filter(|i| *i != x).collect();
    without.extend(enc(&ProofEnd::Leaf(rest)));
    let forged = MerkleProof::decode(&without).unwrap();
    assert_eq!(forged.verify(&root, &x), Err(ProofError::RootMismatch));
    let mut empty = path.to_vec();
    empty.extend(enc(&ProofEnd::EmptySlot));
    let forged = MerkleProof::decode(&empty).unwrap();
    assert_eq!(forged.depth(), depth);
    assert_eq!(forged.verify(&root, &x), Err(ProofError::RootMismatch));
}

#[test]
fn leaves_a_canonical_tree_cannot_hold_are_refused() {
    let ids: Vec<TripleId> = {
        let mut v: Vec<TripleId> = (0..40).map(id).collect();
        v.sort();
        v
    };
    // Too many ids for a leaf: refused by the decoder.
    let big = enc(&FakeProof { branches: vec![], end: FakeEnd::Leaf(ids.clone()) });
    assert!(matches!(MerkleProof::decode(&big), Err(ProofError::Decode(_))));
    // A root leaf whose ids are unsorted: the root is computed over them as given, yet the
    // verifier refuses the shape.
    let mut unsorted = ids[..3].to_vec();
    unsorted.swap(0, 2);
    let p = MerkleProof::decode(&enc(&FakeProof {
        branches: vec![],
        end: FakeEnd::Leaf(unsorted.clone()),
    }))
    .unwrap();
    let mut h = blake3::Hasher::new();
    h.update(&[0]);
    for i in &unsorted {
        h.update(i.as_bytes());
    }
    let root = StateRoot::from_bytes(*h.finalize().as_bytes());
    assert!(matches!(p.verify(&root, &unsorted[0]), Err(ProofError::Malformed(_))));
    // A leaf at depth 1 holding an id outside its slot.
    let x = id(1);
    let stranger = (2..).map(id).find(|y| y.as_bytes()[0] >> 4 != x.as_bytes()[0] >> 4).unwrap();
    let mut leaf = vec![x, stranger];
    leaf.sort();
    let p = MerkleProof::decode(&enc(&FakeProof {
        branches: vec![[NodeHash::ABSENT; 15]],
        end: FakeEnd::Leaf(leaf),
    }))
    .unwrap();
    assert!(matches!(p.verify(&root, &x), Err(ProofError::Malformed(_))));
    const { assert!(LEAF_CAPACITY < 40) };
}

#[test]
fn summaries_inside_leaves_and_of_absent_subtrees() {
    let mut t = tree(0..20); // one leaf at the root
    t.root();
    let x = id(3);
    let deep = NibblePath::of_id(&x, 5);
    let s = t.summary(&deep);
    assert_eq!(s.ids(), Some(&[x][..]));
    let top = t.summary(&NibblePath::ROOT);
    let child = t.summary(&NibblePath::of_id(&x, 1));
    top.check_child(&child).unwrap();
    // An absent subtree.
    let nowhere = (0..16u8)
        .map(|n| NibblePath::new(&[n, 0, 0]).unwrap())
        .find(|p| (0..20).all(|n| !p.is_prefix_of(&id(n))))
        .unwrap();
    let s = t.summary(&nowhere);
    assert_eq!((s.count(), s.hash()), (0, NodeHash::ABSENT));
    // A child summary from another tree does not match.
    let other = tree(0..21);
    let wrong = other.summary(&NibblePath::of_id(&x, 1));
    let mine = t.summary(&NibblePath::of_id(&x, 1));
    if wrong != mine {
        assert_eq!(top.check_child(&wrong), Err(SummaryError::ChildMismatch));
    }
    assert_eq!(top.check_child(&t.summary(&deep)), Err(SummaryError::NotAChild));
    assert!(NibblePath::new(&[16]).is_err());
    assert!(NibblePath::new(&[0; 65]).is_err());
    // Flipped bytes in an encoded summary are refused.
    let big = tree(0..500);
    let enc = big.summary(&NibblePath::ROOT).encode();
    for i in 0..enc.len() {
        let mut bad = enc.clone();
        bad[i] ^= 0x40;
        if let Ok(s) = SubtreeSummary::decode(&bad) {
            assert!(s.check_root(&big.current_root()).is_err(), "byte {i}");
        }
    }
}

#[test]
fn graph_state_lookup_by_id() {
    let mut state = GraphState::new();
    let triples: Vec<Triple> = (0..200)
        .map(|i| {
            Triple::new(
                Term::iri(format!("urn:s:{}", i % 17)).unwrap(),
                Term::iri("urn:p").unwrap(),
                Term::string(format!("{i}")).unwrap(),
            )
            .unwrap()
        })
        .collect();
    for t in &triples {
        state.insert(t).unwrap();
    }
    for t in &triples {
        assert_eq!(state.get_by_id(&t.id()).unwrap().to_triple(), *t);
    }
    assert!(state.get_by_id(&id(5)).is_none());
    state.remove(&triples[0]);
    assert!(state.get_by_id(&triples[0].id()).is_none());
}

/// The canonical encoding of a test-made value.
fn enc<T: Serialize>(value: &T) -> Vec<u8> {
    llmkg_federation_core::encoding::try_encode(value).unwrap()
}
