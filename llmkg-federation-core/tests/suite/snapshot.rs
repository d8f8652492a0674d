#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Snapshots: round trips to the same state, and every kind of bad input refused without
//! changing the receiver.

use llmkg_federation_core::snapshot::{
    CutEntry, DEFAULT_MAX_CHUNK_BYTES, SnapshotChunk, SnapshotProgress,
};
use llmkg_federation_core::{
    GraphState, NibblePath, NodeHash, Snapshot, SnapshotError, SnapshotManifest, SnapshotReceiver,
    StateRoot, Term, Triple,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

fn triple(i: u64) -> Triple {
    Triple::new(
        Term::iri(format!("https://example.org/entity/{}", i % 997)).unwrap(),
        Term::iri(format!("https://example.org/prop/{}", i % 13)).unwrap(),
        Term::string(format!("value number {i}")).unwrap(),
    )
    .unwrap()
}

fn state_of(n: u64) -> GraphState {
    let mut s = GraphState::new();
    for i in 0..n {
        s.insert(&triple(i)).unwrap();
    }
    s
}

/// Builds a snapshot: the manifest and the encoded chunks.
fn snapshot(state: &GraphState, bound: usize) -> (SnapshotManifest, Vec<Vec<u8>>) {
    let (manifest, chunks) = Snapshot::build(state, bound).unwrap().into_parts();
    let chunks: Vec<Vec<u8>> = chunks.map(|c| c.encode()).collect();
    for c in &chunks {
        assert!(c.len() <= bound, "chunk of {} bytes over the bound {bound}", c.len());
    }
    (manifest, chunks)
}

fn install(
    manifest: SnapshotManifest,
    chunks: &[Vec<u8>],
    root: &StateRoot,
    seed: u64,
) -> GraphState {
    let manifest = SnapshotManifest::decode(&manifest.encode()).unwrap();
    let mut r = SnapshotReceiver::new(manifest, root).unwrap();
    let mut order: Vec<usize> = (0..chunks.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    for i in order {
        r.receive(&chunks[i]).unwrap();
    }
    assert!(r.is_complete());
    r.finish().unwrap()
}

#[test]
fn round_trips_empty_one_and_ten_thousand() {
    for (n, bound) in [(0, 1024), (1, 1024), (10_000, DEFAULT_MAX_CHUNK_BYTES), (10_000, 8 * 1024)]
    {
        let mut state = state_of(n);
        let root = state.state_root();
        let (manifest, chunks) = snapshot(&state, bound);
        assert_eq!(manifest.count(), n);
        assert_eq!(manifest.cut().len(), chunks.len());
        let mut installed = install(manifest, &chunks, &root, n);
        assert_eq!(installed.state_root(), root);
        assert_eq!(installed.triples(), state.triples());
        assert_eq!(installed.len(), state.len());
        // The installed state keeps working.
        assert!(installed.insert(&triple(1_000_000)).unwrap());
        if n > 0 {
            assert!(installed.remove(&triple(0)));
        }
    }
}

#[test]
fn small_bounds_give_many_chunks_and_a_too_small_bound_is_refused() {
    let state = state_of(3_000);
    let (manifest, chunks) = snapshot(&state, 4096);
    assert!(chunks.len() > 16, "{} chunks", chunks.len());
    assert!(manifest.cut().iter().all(|e| e.count > 0));
    assert!(matches!(Snapshot::build(&state, 200), Err(SnapshotError::LeafTooLarge { .. })));
}

struct Fixture {
    root: StateRoot,
    manifest: SnapshotManifest,
    chunks: Vec<Vec<u8>>,
}

fn fixture() -> Fixture {
    let mut state = state_of(2_000);
    let root = state.state_root();
    let (manifest, chunks) = snapshot(&state, 8 * 1024);
    assert!(chunks.len() >= 4);
    Fixture { root, manifest, chunks }
}

fn receiver(f: &Fixture) -> SnapshotReceiver {
    SnapshotReceiver::new(f.manifest.clone(), &f.root).unwrap()
}

#[test]
fn a_flipped_byte_in_any_chunk_is_refused_and_changes_nothing() {
    let f = fixture();
    let mut r = receiver(&f);
    r.receive(&f.chunks[0]).unwrap();
    let before = r.progress();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (k, chunk) in f.chunks.iter().enumerate().skip(1) {
        // Every byte of one chunk, random bytes of the others.
        let positions: Vec<usize> = if k == 1 {
            (0..chunk.len()).collect()
        } else {
            (0..20).map(|_| rng.random_range(0..chunk.len())).collect()
        };
        for i in positions {
            let mut bad = chunk.clone();
            bad[i] ^= 1 << rng.random_range(0..8);
            assert!(r.receive(&bad).is_err(), "chunk {k} byte {i} accepted");
            assert_eq!(r.progress(), before);
        }
    }
    for chunk in &f.chunks[1..] {
        r.receive(chunk).unwrap();
    }
    let mut state = r.finish().unwrap();
    assert_eq!(state.state_root(), f.root);
}

#[test]
fn truncated_and_duplicate_chunks_are_refused() {
    let f = fixture();
    let mut r = receiver(&f);
    let c = &f.chunks[1];
    for cut in [0, 1, c.len() / 2, c.len() - 1] {
        assert!(matches!(r.receive(&c[..cut]), Err(SnapshotError::Decode(_))));
    }
    let mut longer = c.clone();
    longer.push(0);
    assert!(matches!(r.receive(&longer), Err(SnapshotError::Decode(_))));
    r.receive(c).unwrap();
    assert!(matches!(r.receive(c), Err(SnapshotError::DuplicateChunk(_))));
    assert_eq!(r.progress().chunks_received, 1);
}

#[test]
fn a_missing_chunk_fails_finish() {
    let f = fixture();
    let mut r = receiver(&f);
    for c in &f.chunks[1..] {
        r.receive(c).unwrap();
    }
    assert!(!r.is_complete());
    assert_eq!(r.missing().count(), 1);
    let total = f.chunks.len();
    assert_eq!(r.finish().err(), Some(SnapshotError::Incomplete { missing: 1, total }));
}

#[test]
fn chunks_with_wrong_content_are_refused() {
    let f = fixture();
    let limit = f.manifest.max_chunk_bytes() as usize;
    let decode = |b: &[u8]| SnapshotChunk::decode(b, limit).unwrap();
    let (p0, t0) = decode(&f.chunks[0]).into_parts();
    let (p1, t1) = decode(&f.chunks[1]).into_parts();
    let mut r = receiver(&f);
    let bad = |r: &mut SnapshotReceiver, c: SnapshotChunk| {
        let before: SnapshotProgress = r.progress();
        let e = r.receive_chunk(c).unwrap_err();
        assert_eq!(r.progress(), before);
        e
    };
    // Claims another chunk's prefix.
    let e = bad(&mut r, SnapshotChunk::new(p1, t0.clone()));
    assert!(matches!(e, SnapshotError::BadChunk { .. }), "{e:?}");
    // A prefix not in the cut.
    let unknown = NibblePath::new(&[p0.nibbles().to_vec(), vec![0; 3]].concat()).unwrap();
    assert!(matches!(
        bad(&mut r, SnapshotChunk::new(unknown, t0.clone())),
        SnapshotError::UnknownPrefix(_)
    ));
    // A missing triple.
    let e = bad(&mut r, SnapshotChunk::new(p0, t0[1..].to_vec()));
    assert!(matches!(e, SnapshotError::BadChunk { .. }), "{e:?}");
    // An extra triple (from another chunk, or replacing one).
    let mut extra = t0.clone();
    extra.push(t1[0].clone());
    assert!(matches!(bad(&mut r, SnapshotChunk::new(p0, extra)), SnapshotError::BadChunk { .. }));
    let mut swapped = t0.clone();
    swapped[0] = triple(999_999);
    assert!(matches!(bad(&mut r, SnapshotChunk::new(p0, swapped)), SnapshotError::BadChunk { .. }));
    // Out of order, or repeated.
    let mut reversed = t0.clone();
    reversed.reverse();
    assert!(matches!(
        bad(&mut r, SnapshotChunk::new(p0, reversed)),
        SnapshotError::BadChunk { .. }
    ));
    let mut repeated = t0.clone();
    let last = repeated.len() - 1;
    repeated[last] = repeated[last - 1].clone();
    assert!(matches!(
        bad(&mut r, SnapshotChunk::new(p0, repeated)),
        SnapshotError::BadChunk { .. }
    ));
    // The right chunk is still accepted afterwards.
    r.receive_chunk(SnapshotChunk::new(p0, t0)).unwrap();
    assert_eq!(r.progress().chunks_received, 1);
}

#[test]
fn manifests_that_do_not_rebuild_the_root_are_refused() {
    let f = fixture();
    let cut = f.manifest.cut().to_vec();
    let limit = f.manifest.max_chunk_bytes();
    SnapshotManifest::new(f.root, limit, cut.clone()).unwrap();
    // Another root.
    let other = StateRoot::from_bytes([7; 32]);
    assert!(matches!(
        SnapshotManifest::new(other, limit, cut.clone()),
        Err(SnapshotError::InvalidManifest(_))
    ));
    // The right manifest for another expected root.
    assert!(matches!(
        SnapshotReceiver::new(f.manifest.clone(), &other),
        Err(SnapshotError::UnexpectedRoot { .. })
    ));
    // A dropped entry (a gap), a repeated one, a changed hash, a swapped order.
    let mut gap = cut.clone();
    gap.remove(1);
    let mut dup = cut.clone();
    dup.insert(1, cut[1]);
    let mut hash = cut.clone();
    hash[2].hash = NodeHash::from_bytes([1; 32]);
    let mut swapped = cut.clone();
    swapped.swap(0, 1);
    let mut empty = cut.clone();
    empty[0].count = 0;
    let split: Vec<CutEntry> = {
        // Replace the first entry by a claimed split into its 16 children with made-up hashes.
        let mut v: Vec<CutEntry> = (0..16)
            .map(|n| CutEntry {
                prefix: cut[0].prefix.child(n).unwrap(),
                hash: NodeHash::from_bytes([n + 1; 32]),
                count: 1,
            })
            .collect();
        v.extend_from_slice(&cut[1..]);
        v
    };
    for bad in [gap, dup, hash, swapped, split, empty] {
        assert!(matches!(
            SnapshotManifest::new(f.root, limit, bad),
            Err(SnapshotError::InvalidManifest(_))
        ));
    }
    // Flipped bytes of an encoded manifest are refused.
    let enc = f.manifest.encode();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..300 {
        let mut bad = enc.clone();
        let i = rng.random_range(0..bad.len());
        bad[i] ^= 1 << rng.random_range(0..8);
        if let Ok(m) = SnapshotManifest::decode(&bad) {
            // Only a different, self-consistent manifest decodes (the chunk bound is not
            // hashed, so flipping it gives another valid manifest for the same root).
            assert_ne!(m, f.manifest);
            assert_eq!(m.cut(), f.manifest.cut(), "byte {i}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random sets and bounds: the snapshot installs the same state whatever the order.
    #[test]
    fn snapshots_round_trip(
        picks in proptest::collection::btree_set(0u64..50_000, 0..1_500),
        bound in 4_096usize..40_000, // a leaf of 32 of these triples needs ~3.1 KB
        seed in any::<u64>(),
    ) {
        let mut state = GraphState::new();
        for i in &picks {
            state.insert(&triple(*i)).unwrap();
        }
        let root = state.state_root();
        let (manifest, chunks) = snapshot(&state, bound);
        prop_assert_eq!(manifest.count() as usize, picks.len());
        let mut installed = install(manifest, &chunks, &root, seed);
        prop_assert_eq!(installed.state_root(), root);
        prop_assert_eq!(installed.triples(), state.triples());
    }
}
