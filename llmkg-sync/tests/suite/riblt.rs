#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeSet;

use llmkg_sync::riblt::{
    CodedSymbol, DecodeError, DecodeLimits, Decoder, Encoder, Id, Inconsistency, Message,
    Requester, Responder, SessionError,
};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn ids(rng: &mut ChaCha8Rng, n: usize) -> Vec<Id> {
    (0..n).map(|_| rng.random()).collect()
}

/// Streams `remote` into a decoder over `local` in batches of `batch`; returns the decoder.
fn decode(salt: u64, remote: &[Id], local: &[Id], batch: usize) -> Decoder {
    let mut e = Encoder::from_ids(salt, remote.iter().copied());
    let mut d = Decoder::new(salt, local.iter().copied(), DecodeLimits::default());
    let d_max = remote.len() + local.len();
    while !d.is_decoded() {
        assert!(d.symbols_used() <= 10 * d_max + 64, "no progress");
        d.add_symbols(&e.next_symbols(batch)).unwrap();
    }
    d
}

fn set(v: &[Id]) -> BTreeSet<Id> {
    v.iter().copied().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trips(seed: u64, common in 0usize..400, a_only in 0usize..60, b_only in 0usize..60,
                   batch in 1usize..40) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let c = ids(&mut rng, common);
        let ax = ids(&mut rng, a_only);
        let bx = ids(&mut rng, b_only);
        let a: Vec<Id> = c.iter().chain(&ax).copied().collect();
        let b: Vec<Id> = c.iter().chain(&bx).copied().collect();
        let d = decode(seed, &b, &a, batch);
        prop_assert_eq!(set(d.remote_only()), set(&bx));
        prop_assert_eq!(set(d.local_only()), set(&ax));
        prop_assert_eq!(d.remote_only().len(), bx.len());
        prop_assert_eq!(d.local_only().len(), ax.len());
    }

    #[test]
    fn results_do_not_depend_on_id_order_or_batching(seed: u64, b1 in 1usize..30,
                                                     b2 in 1usize..30) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let c = ids(&mut rng, 200);
        let mut a: Vec<Id> = c.iter().chain(&ids(&mut rng, 20)).copied().collect();
        let mut b: Vec<Id> = c.iter().chain(&ids(&mut rng, 25)).copied().collect();
        let d1 = decode(seed, &b, &a, b1);
        let mut e1 = Encoder::from_ids(seed, b.iter().copied());
        a.shuffle(&mut rng);
        b.shuffle(&mut rng);
        let mut e2 = Encoder::from_ids(seed, b.iter().copied());
        prop_assert_eq!(e1.next_symbols(50), e2.next_symbols(50));
        let d2 = decode(seed, &b, &a, b2);
        prop_assert_eq!(set(d1.remote_only()), set(d2.remote_only()));
        prop_assert_eq!(set(d1.local_only()), set(d2.local_only()));
    }

    #[test]
    fn forged_symbols_never_panic_and_stay_within_the_limit(
        seed: u64,
        forged in proptest::collection::vec((any::<[u8; 32]>(), any::<[u8; 4]>(), any::<i8>()), 1..64),
        local in 0usize..50,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let limits = DecodeLimits { max_symbols: 200, max_differences: 30 };
        let mut d = Decoder::new(seed, ids(&mut rng, local), limits);
        let batch: Vec<CodedSymbol> =
            forged.iter().map(|&(sum, checksum, count)| CodedSymbol { sum, checksum, count }).collect();
        for _ in 0..10 {
            let before = d.symbols_used();
            match d.add_symbols(&batch) {
                Ok(_) => {}
                Err(DecodeError::SymbolLimit { .. }) => prop_assert_eq!(d.symbols_used(), before),
                Err(DecodeError::Failed) => prop_assert!(d.is_failed()),
                Err(DecodeError::DifferenceLimit { .. } | DecodeError::Inconsistent(_)) => {
                    prop_assert!(d.is_failed())
                }
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
            prop_assert!(d.symbols_used() <= limits.max_symbols);
            prop_assert!(d.differences_found() <= limits.max_differences);
        }
    }
}

#[test]
fn empty_and_identical_and_one_sided_sets() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let s = ids(&mut rng, 300);
    let d = decode(1, &[], &[], 1);
    assert_eq!(d.symbols_used(), 1);
    assert!(d.remote_only().is_empty() && d.local_only().is_empty());
    let d = decode(2, &s, &s, 4);
    assert_eq!(d.symbols_used(), 4);
    assert!(d.remote_only().is_empty() && d.local_only().is_empty());
    let d = decode(3, &s, &[], 16);
    assert_eq!(set(d.remote_only()), set(&s));
    let d = decode(4, &[], &s, 16);
    assert_eq!(set(d.local_only()), set(&s));
}

#[test]
fn random_symbols_end_at_the_symbol_limit() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let limits = DecodeLimits { max_symbols: 1000, max_differences: 1000 };
    let mut d = Decoder::new(5, ids(&mut rng, 100), limits);
    let mut last = Ok(false);
    for _ in 0..20 {
        let batch: Vec<CodedSymbol> = (0..100)
            .map(|_| CodedSymbol { sum: rng.random(), checksum: rng.random(), count: rng.random() })
            .collect();
        last = d.add_symbols(&batch);
        if last.is_err() {
            break;
        }
    }
    assert_eq!(last, Err(DecodeError::SymbolLimit { limit: 1000, offered: 1100 }));
    assert_eq!(d.symbols_used(), 1000);
    assert!(!d.is_decoded() && !d.is_failed());
}

#[test]
fn huge_counts_and_repeated_symbols_do_not_decode() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let local = ids(&mut rng, 100);
    let limits = DecodeLimits { max_symbols: 500, max_differences: 100 };
    for count in [i8::MIN, i8::MAX, -1, 1] {
        let mut e = Encoder::from_ids(6, local.iter().copied());
        let mut d = Decoder::new(6, local.iter().copied(), limits);
        let mut sym = e.next_symbols(1)[0];
        sym.count = sym.count.wrapping_add(count);
        let repeated = vec![sym; 100];
        let mut result = Ok(false);
        for _ in 0..6 {
            result = d.add_symbols(&repeated);
            if result.is_err() {
                break;
            }
        }
        assert!(!d.is_decoded(), "count {count}");
        assert!(result.is_err(), "count {count}");
        assert!(d.symbols_used() <= 500);
    }
}

#[test]
fn symbols_under_another_salt_do_not_decode() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let c = ids(&mut rng, 500);
    let b: Vec<Id> = c.iter().chain(&ids(&mut rng, 10)).copied().collect();
    let limits = DecodeLimits::for_differences(10);
    let mut e = Encoder::from_ids(1, b.iter().copied());
    let mut d = Decoder::new(2, c.iter().copied(), limits);
    let mut result = Ok(false);
    while result == Ok(false) {
        result = d.add_symbols(&e.next_symbols(10));
    }
    assert!(result.is_err(), "{result:?}");
    assert!(d.symbols_used() <= limits.max_symbols);
    assert!(d.differences_found() <= limits.max_differences);
}

#[test]
fn too_many_differences_fail_the_decoder() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let b = ids(&mut rng, 200);
    let limits = DecodeLimits { max_symbols: 10_000, max_differences: 20 };
    let mut e = Encoder::from_ids(3, b.iter().copied());
    let mut d = Decoder::new(3, [], limits);
    let mut result = Ok(false);
    while result == Ok(false) {
        result = d.add_symbols(&e.next_symbols(50));
    }
    assert_eq!(result, Err(DecodeError::DifferenceLimit { limit: 20 }));
    assert_eq!(d.differences_found(), 20);
    assert_eq!(d.add_symbols(&e.next_symbols(1)), Err(DecodeError::Failed));
}

/// Symbols of `set` plus (`sign` +1) or minus (-1) the symbols of `extra`, as a forger would.
fn combine(set: &[CodedSymbol], extra: &[CodedSymbol], sign: i8) -> Vec<CodedSymbol> {
    set.iter()
        .zip(extra)
        .map(|(s, x)| {
            let mut out = *s;
            for (a, b) in out.sum.iter_mut().zip(&x.sum) {
                *a ^= b;
            }
            for (a, b) in out.checksum.iter_mut().zip(&x.checksum) {
                *a ^= b;
            }
            out.count = out.count.wrapping_add(x.count.wrapping_mul(sign));
            out
        })
        .collect()
}

#[test]
fn a_remote_only_id_the_local_side_has_is_inconsistent() {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let local = ids(&mut rng, 300);
    let m = 64;
    let honest = Encoder::from_ids(8, local.iter().copied()).next_symbols(m);
    let x = Encoder::from_ids(8, [local[7]]).next_symbols(m);
    let mut d = Decoder::new(8, local.iter().copied(), DecodeLimits::default());
    let r = d.add_symbols(&combine(&honest, &x, 1));
    assert_eq!(r, Err(DecodeError::Inconsistent(Inconsistency::RemoteOnlyIsLocal)));
    assert!(d.is_failed());
}

#[test]
fn a_local_only_id_the_local_side_lacks_is_inconsistent() {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let local = ids(&mut rng, 300);
    let z: Id = rng.random();
    let m = 64;
    let honest = Encoder::from_ids(8, local.iter().copied()).next_symbols(m);
    let zs = Encoder::from_ids(8, [z]).next_symbols(m);
    let mut d = Decoder::new(8, local.iter().copied(), DecodeLimits::default());
    let r = d.add_symbols(&combine(&honest, &zs, -1));
    assert_eq!(r, Err(DecodeError::Inconsistent(Inconsistency::LocalOnlyIsMissing)));
}

#[test]
fn an_id_recovered_twice_is_inconsistent() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let local = ids(&mut rng, 300);
    let mut duplicates = 0;
    for _ in 0..20 {
        let x: Id = rng.random();
        let mut honest = Encoder::from_ids(8, local.iter().copied());
        let mut xe = Encoder::from_ids(8, [x]);
        // First batch: the remote has x, but symbol 0 is garbled so decoding cannot finish.
        let mut first = combine(&honest.next_symbols(64), &xe.next_symbols(64), 1);
        first[0].sum[0] ^= 0x5a;
        let mut d = Decoder::new(8, local.iter().copied(), DecodeLimits::default());
        assert_eq!(d.add_symbols(&first), Ok(false));
        // Second batch: x is gone again, so it shows up as local-only.
        match d.add_symbols(&honest.next_symbols(64)) {
            Ok(false) => {}
            Err(DecodeError::Inconsistent(Inconsistency::DuplicateId)) => duplicates += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(duplicates > 5, "{duplicates}");
}

/// Runs the whole exchange, every message through postcard; returns (bytes, round trips).
fn exchange(a: &[Id], b: &[Id], salt: u64) -> (usize, u32, Requester) {
    let wire = |m: &Message| {
        let bytes = postcard::to_stdvec(m).unwrap();
        let back: Message = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(&back, m);
        bytes.len()
    };
    let mut req = Requester::new(salt, a.iter().copied(), DecodeLimits::default());
    let open = req.open();
    let mut bytes = wire(&open);
    let (mut resp, mut reply) = Responder::accept(b.iter().copied(), &open, 1 << 20).unwrap();
    loop {
        bytes += wire(&reply);
        let next = req.handle(&reply).unwrap();
        bytes += wire(&next);
        match resp.handle(&next).unwrap() {
            Some(r) => reply = r,
            None => break,
        }
    }
    assert!(resp.is_done() && req.is_done());
    (bytes, req.rounds(), req)
}

#[test]
fn the_exchange_finds_the_differences_in_few_round_trips() {
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    let c = ids(&mut rng, 20_000);
    for d in [0usize, 1, 10, 100, 1000] {
        let ax = ids(&mut rng, d / 2);
        let bx = ids(&mut rng, d - d / 2);
        let a: Vec<Id> = c.iter().chain(&ax).copied().collect();
        let b: Vec<Id> = c.iter().chain(&bx).copied().collect();
        let (bytes, rounds, req) = exchange(&a, &b, d as u64);
        let diff = req.differences().unwrap();
        assert_eq!(set(&diff.remote_only), set(&bx));
        assert_eq!(set(&diff.local_only), set(&ax));
        assert!(rounds <= 4, "d={d}: {rounds} round trips");
        if d >= 100 {
            let ratio = bytes as f64 / (32 * d) as f64;
            assert!(ratio < 2.6, "d={d}: ratio {ratio}");
        }
    }
}

#[test]
fn the_responder_rejects_out_of_place_messages_and_big_requests() {
    let open = Requester::new(1, [], DecodeLimits::default()).open();
    let (mut resp, _) = Responder::accept([[1u8; 32]], &open, 100).unwrap();
    let sent = resp.symbols_sent();
    assert_eq!(
        resp.handle(&Message::More { count: 1000 }).unwrap_err(),
        SessionError::TooManyRequested { asked: sent + 1000, limit: 100 }
    );
    assert_eq!(resp.symbols_sent(), sent);
    assert_eq!(resp.handle(&open).unwrap_err(), SessionError::Unexpected);
    assert!(Responder::accept([], &Message::Done, 100).is_err());
    let mut req = Requester::new(1, [], DecodeLimits::default());
    assert_eq!(req.handle(&Message::Done).unwrap_err(), SessionError::Unexpected);
}
