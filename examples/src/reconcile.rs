//! The `reconcile-ids` benchmark case: finding the symmetric difference of two sets of
//! 32-byte ids with the rateless IBLT exchange of `llmkg_sync::riblt`, against the
//! `negentropy` crate (range-based reconciliation) on the same two sets in the same run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use llmkg_sync::riblt::{DecodeLimits, Id, Message, Requester, Responder};
use negentropy::{Negentropy, NegentropyStorageVector};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bench::{Case, round};

/// The two sets of one case and the planted differences.
struct Sets {
    /// The requester's ids.
    a: Vec<Id>,
    /// The responder's ids.
    b: Vec<Id>,
    /// Ids only in `a`, sorted.
    a_only: Vec<Id>,
    /// Ids only in `b`, sorted.
    b_only: Vec<Id>,
}

/// `n` random ids of which `d` differ: with `clustered`, a contiguous run of the sorted ids,
/// otherwise random ones. Alternate differing ids go to either side only; the rest to both.
fn make_sets(n: usize, d: usize, clustered: bool, seed: u64) -> Sets {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ids: Vec<Id> = (0..n).map(|_| rng.random()).collect();
    ids.sort_unstable();
    let d = d.min(n);
    let chosen: Vec<usize> = if clustered {
        let start = rng.random_range(0..=n - d);
        (start..start + d).collect()
    } else {
        let mut all: Vec<usize> = (0..n).collect();
        let (picked, _) = all.partial_shuffle(&mut rng, d);
        let mut picked = picked.to_vec();
        picked.sort_unstable();
        picked
    };
    // 0 = both, 1 = a only, 2 = b only
    let mut side = vec![0u8; n];
    for (k, &i) in chosen.iter().enumerate() {
        side[i] = if k % 2 == 0 { 1 } else { 2 };
    }
    let (mut a, mut b, mut a_only, mut b_only) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, s) in ids.into_iter().zip(side) {
        match s {
            1 => {
                a.push(id);
                a_only.push(id);
            }
            2 => {
                b.push(id);
                b_only.push(id);
            }
            _ => {
                a.push(id);
                b.push(id);
            }
        }
    }
    // Neither side keeps its ids sorted.
    a.shuffle(&mut rng);
    b.shuffle(&mut rng);
    Sets { a, b, a_only, b_only }
}

/// What one exchange moved and found.
struct Outcome {
    bytes: usize,
    round_trips: u32,
    ms: f64,
    /// Ids found only on the requester's side, sorted.
    a_only: Vec<Id>,
    /// Ids found only on the responder's side, sorted.
    b_only: Vec<Id>,
}

fn wire_len(m: &Message) -> usize {
    postcard::to_stdvec(m).expect("encode").len()
}

/// The RIBLT exchange between a requester over `a` and a responder over `b`, in one thread.
fn riblt_exchange(sets: &Sets, salt: u64) -> Outcome {
    let t = Instant::now();
    let limits = DecodeLimits::default();
    let mut requester = Requester::new(salt, sets.a.iter().copied(), limits);
    let open = requester.open();
    let mut bytes = wire_len(&open);
    let (mut responder, mut reply) =
        Responder::accept(sets.b.iter().copied(), &open, limits.max_symbols as u64).unwrap();
    loop {
        bytes += wire_len(&reply);
        let next = requester.handle(&reply).unwrap();
        bytes += wire_len(&next);
        match responder.handle(&next).unwrap() {
            Some(r) => reply = r,
            None => break,
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let diff = requester.differences().expect("decoded");
    let (mut a_only, mut b_only) = (diff.local_only, diff.remote_only);
    a_only.sort_unstable();
    b_only.sort_unstable();
    Outcome { bytes, round_trips: requester.rounds(), ms, a_only, b_only }
}

/// The negentropy exchange: the requester is the initiator, every id has timestamp 0, no
/// frame size limit (0, the crate's examples' setting: one frame per message).
fn negentropy_exchange(sets: &Sets) -> Outcome {
    let t = Instant::now();
    let storage = |ids: &[Id]| {
        let mut s = NegentropyStorageVector::with_capacity(ids.len());
        for id in ids {
            s.insert(0, negentropy::Id::from_byte_array(*id)).unwrap();
        }
        s.seal().unwrap();
        s
    };
    let (sa, sb) = (storage(&sets.a), storage(&sets.b));
    let mut client = Negentropy::borrowed(&sa, 0).unwrap();
    let mut relay = Negentropy::borrowed(&sb, 0).unwrap();
    let mut msg = client.initiate().unwrap();
    let mut bytes = msg.len();
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let mut round_trips = 0;
    loop {
        let reply = relay.reconcile(&msg).unwrap();
        bytes += reply.len();
        round_trips += 1;
        match client.reconcile_with_ids(&reply, &mut have, &mut need).unwrap() {
            Some(next) => {
                bytes += next.len();
                msg = next;
            }
            None => break,
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let mut a_only: Vec<Id> = have.into_iter().map(|i| i.to_bytes()).collect();
    let mut b_only: Vec<Id> = need.into_iter().map(|i| i.to_bytes()).collect();
    a_only.sort_unstable();
    b_only.sort_unstable();
    Outcome { bytes, round_trips, ms, a_only, b_only }
}

/// The `reconcile-ids` cases: for each `d` in `ds` and each layout (`random`, `clustered`),
/// two sets drawn from `n` random ids of which `d` differ (split between the sides), reconciled
/// with the RIBLT exchange and with negentropy.
///
/// Metrics: `bytes` (every message of the RIBLT exchange, both directions, postcard-encoded,
/// including the sketch, the over-shoot of the last batch and the final `Done`),
/// `ratio_to_minimum` (`bytes / (32 d)`), `round_trips` (requests answered with symbols),
/// `decode_ms` (wall time of the whole exchange in one thread: both sides' keyed hashing,
/// encoding and decoding), and the same for negentropy (`negentropy_bytes`,
/// `negentropy_round_trips`, `negentropy_ms`, the latter including building and sorting its
/// storage). Panics if either method does not find exactly the planted differences.
pub fn reconcile_ids_cases(n: usize, ds: &[usize]) -> Vec<Case> {
    let mut cases = Vec::new();
    for &d in ds {
        for (layout, clustered) in [("random", false), ("clustered", true)] {
            let seed = (d as u64) << 1 | u64::from(clustered);
            let sets = make_sets(n, d, clustered, seed);
            let r = riblt_exchange(&sets, 0x5a17 ^ seed);
            assert_eq!(r.a_only, sets.a_only, "riblt: requester-only ids differ");
            assert_eq!(r.b_only, sets.b_only, "riblt: responder-only ids differ");
            let ng = negentropy_exchange(&sets);
            assert_eq!(ng.a_only, sets.a_only, "negentropy: requester-only ids differ");
            assert_eq!(ng.b_only, sets.b_only, "negentropy: responder-only ids differ");
            let minimum = (d * 32).max(1) as f64;
            cases.push(
                Case::new("reconcile-ids")
                    .param("n", n)
                    .param("d", d)
                    .param("layout", layout)
                    .metric("bytes", r.bytes)
                    .metric("ratio_to_minimum", round(r.bytes as f64 / minimum, 3))
                    .metric("round_trips", r.round_trips)
                    .metric("decode_ms", round(r.ms, 1))
                    .metric("negentropy_bytes", ng.bytes)
                    .metric("negentropy_ratio_to_minimum", round(ng.bytes as f64 / minimum, 3))
                    .metric("negentropy_round_trips", ng.round_trips)
                    .metric("negentropy_ms", round(ng.ms, 1)),
            );
        }
    }
    cases
}
