//! Conformance suites for [`Store`] and [`KvStore`] implementations (feature `testing`):
//! [`store_suite`] and [`kv_suite`].
//!
//! ```
//! # #[cfg(feature = "testing")] {
//! use llmkg_federation_core::{MemoryStore, testing};
//! testing::store_suite(MemoryStore::new);
//! # }
//! ```
//!
//! Each check panics with a message naming the broken contract clause.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};

use crate::kv::{
    KvBatch, KvError, KvPair, KvStore, MAX_KEY_LEN, MAX_VALUE_LEN, RangeIter, prefix_successor,
};
use crate::{BranchName, CommitId, ObjectId, Store, StoreError, WriteBatch};

fn oid(n: u8) -> ObjectId {
    ObjectId::from_bytes([n; 32])
}

fn cid(n: u8) -> CommitId {
    CommitId::from_bytes([n; 32])
}

fn name(s: &str) -> BranchName {
    BranchName::new(s).unwrap()
}

/// Runs every check, each on a fresh store from `make`.
pub fn store_suite<S: Store>(mut make: impl FnMut() -> S) {
    objects_round_trip(&make());
    objects_are_immutable(&make());
    refs_compare_and_swap(&make());
    conflicting_batch_writes_nothing(&make());
    batch_is_applied_in_order(&make());
    refs_are_listed_sorted(&make());
    large_and_empty_objects(&make());
}

/// Objects read back as written; absent ones are `None`.
pub fn objects_round_trip(store: &impl Store) {
    assert_eq!(store.object(&oid(1)).unwrap(), None, "absent object must read as None");
    assert!(!store.contains_object(&oid(1)).unwrap());
    store.write(WriteBatch::new().put_object(oid(1), b"one".to_vec())).unwrap();
    assert_eq!(store.object(&oid(1)).unwrap().as_deref(), Some(&b"one"[..]), "read-your-writes");
    assert!(store.contains_object(&oid(1)).unwrap());
}

/// Writing an existing id keeps the first bytes and is not an error.
pub fn objects_are_immutable(store: &impl Store) {
    store.write(WriteBatch::new().put_object(oid(2), b"first".to_vec())).unwrap();
    store.write(WriteBatch::new().put_object(oid(2), b"second".to_vec())).unwrap();
    assert_eq!(
        store.object(&oid(2)).unwrap().as_deref(),
        Some(&b"first"[..]),
        "objects are immutable"
    );
}

/// Ref updates succeed only from the expected value.
pub fn refs_compare_and_swap(store: &impl Store) {
    let main = name("main");
    assert_eq!(store.reference(&main).unwrap(), None);
    store.write(WriteBatch::new().update_ref(main.clone(), None, Some(cid(1)))).unwrap();
    assert_eq!(store.reference(&main).unwrap(), Some(cid(1)));
    match store.write(WriteBatch::new().update_ref(main.clone(), None, Some(cid(2)))) {
        Err(StoreError::RefConflict { actual, .. }) => assert_eq!(actual, Some(cid(1))),
        other => panic!("creating an existing ref must be a RefConflict, got {other:?}"),
    }
    match store.write(WriteBatch::new().update_ref(main.clone(), Some(cid(9)), Some(cid(2)))) {
        Err(StoreError::RefConflict { .. }) => {}
        other => panic!("a stale expected value must be a RefConflict, got {other:?}"),
    }
    store.write(WriteBatch::new().update_ref(main.clone(), Some(cid(1)), Some(cid(2)))).unwrap();
    assert_eq!(store.reference(&main).unwrap(), Some(cid(2)));
    store.write(WriteBatch::new().update_ref(main.clone(), Some(cid(2)), None)).unwrap();
    assert_eq!(store.reference(&main).unwrap(), None, "a ref updated to None is deleted");
}

/// A batch with one failing compare-and-swap writes none of its objects or refs.
pub fn conflicting_batch_writes_nothing(store: &impl Store) {
    store.write(WriteBatch::new().update_ref(name("b"), None, Some(cid(1)))).unwrap();
    let batch = WriteBatch::new()
        .put_object(oid(7), b"seven".to_vec())
        .update_ref(name("a"), None, Some(cid(7)))
        .update_ref(name("b"), Some(cid(5)), Some(cid(7)));
    assert!(matches!(store.write(batch), Err(StoreError::RefConflict { .. })));
    assert_eq!(
        store.object(&oid(7)).unwrap(),
        None,
        "object of a failed batch must not be written"
    );
    assert_eq!(store.reference(&name("a")).unwrap(), None, "ref of a failed batch must not move");
    assert_eq!(store.reference(&name("b")).unwrap(), Some(cid(1)));
}

/// Updates of the same ref within a batch see the previous update.
pub fn batch_is_applied_in_order(store: &impl Store) {
    let batch = WriteBatch::new().update_ref(name("x"), None, Some(cid(1))).update_ref(
        name("x"),
        Some(cid(1)),
        Some(cid(2)),
    );
    store.write(batch).unwrap();
    assert_eq!(store.reference(&name("x")).unwrap(), Some(cid(2)));
}

/// `references` lists every ref sorted by name.
pub fn refs_are_listed_sorted(store: &impl Store) {
    for (n, v) in [("zeta", 1), ("alpha/main", 2), ("mid", 3)] {
        store.write(WriteBatch::new().update_ref(name(n), None, Some(cid(v)))).unwrap();
    }
    let refs = store.references().unwrap();
    let names: Vec<&str> = refs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["alpha/main", "mid", "zeta"]);
    assert_eq!(refs[0].1, cid(2));
}

/// Empty and multi-megabyte objects round-trip.
pub fn large_and_empty_objects(store: &impl Store) {
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    store
        .write(WriteBatch::new().put_object(oid(3), Vec::new()).put_object(oid(4), big.clone()))
        .unwrap();
    assert_eq!(store.object(&oid(3)).unwrap(), Some(Vec::new()));
    assert_eq!(store.object(&oid(4)).unwrap(), Some(big));
}

// ---------------------------------------------------------------------------------------------
// Key-value stores

/// Runs every [`KvStore`] check, each on a fresh, empty store from `make`.
///
/// ```
/// # #[cfg(feature = "testing")] {
/// use llmkg_federation_core::{MemoryKv, testing};
/// testing::kv_suite(MemoryKv::new);
/// # }
/// ```
pub fn kv_suite<K: KvStore>(mut make: impl FnMut() -> K) {
    kv_round_trip(&make());
    kv_scans_are_ordered(&make());
    kv_scan_bounds(&make());
    kv_scan_limit_and_paging(&make());
    kv_empty_ranges(&make());
    kv_keys_that_are_prefixes(&make());
    kv_batch_is_atomic(&make());
    kv_batch_is_applied_in_order(&make());
    kv_large_values(&make());
    kv_oversized_refused(&make());
    kv_concurrent_batches_are_serializable(&make());
}

/// Keys of the scan checks: empty, `0x00` and `0xFF` bytes, keys that are prefixes of others.
fn kv_keys() -> Vec<Vec<u8>> {
    let keys: [&[u8]; 14] = [
        b"",
        &[0x00],
        &[0x00, 0x00],
        &[0x00, 0xFF],
        &[0x01],
        b"a",
        b"ab",
        b"ab\x00",
        b"abc",
        b"b",
        &[0xFE, 0xFF],
        &[0xFF],
        &[0xFF, 0x00],
        &[0xFF, 0xFF],
    ];
    keys.iter().map(|k| k.to_vec()).collect()
}

/// Fills `store` with [`kv_keys`], each key's value being the key reversed plus a marker.
fn kv_fill(store: &(impl KvStore + ?Sized)) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut model = BTreeMap::new();
    let mut batch = KvBatch::new();
    for (i, k) in kv_keys().into_iter().enumerate() {
        let mut v: Vec<u8> = k.iter().rev().copied().collect();
        v.push(i as u8);
        batch = batch.put(k.as_slice(), v.as_slice());
        model.insert(k, v);
    }
    store.write(batch).expect("kv contract: a valid batch must be written");
    model
}

fn model_range(
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    start: Bound<&[u8]>,
    end: Bound<&[u8]>,
) -> Vec<KvPair> {
    model
        .iter()
        .filter(|(k, _)| (start, end).contains(k.as_slice()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn all(store: &(impl KvStore + ?Sized)) -> Vec<KvPair> {
    store.scan(Bound::Unbounded, Bound::Unbounded, usize::MAX).unwrap()
}

/// Get, put, overwrite and delete round-trip; an empty value is not an absent key; the empty
/// key is a key; deleting an absent key is not an error.
pub fn kv_round_trip(store: &(impl KvStore + ?Sized)) {
    assert_eq!(store.get(b"k").unwrap(), None, "kv contract: an absent key must read as None");
    store.put(b"k", b"one").unwrap();
    assert_eq!(store.get(b"k").unwrap().as_deref(), Some(&b"one"[..]), "kv: read-your-writes");
    store.put(b"k", b"two").unwrap();
    assert_eq!(store.get(b"k").unwrap().as_deref(), Some(&b"two"[..]), "kv: a put overwrites");
    store.put(b"empty", b"").unwrap();
    assert_eq!(store.get(b"empty").unwrap(), Some(Vec::new()), "kv: an empty value is a value");
    store.put(b"", b"empty key").unwrap();
    assert_eq!(store.get(b"").unwrap().as_deref(), Some(&b"empty key"[..]), "kv: the empty key");
    store.delete(b"k").unwrap();
    assert_eq!(store.get(b"k").unwrap(), None, "kv: a deleted key must read as None");
    store.delete(b"k").unwrap();
    store.delete(b"never").unwrap();
    store.write(KvBatch::new()).unwrap();
    assert_eq!(
        all(store),
        vec![(b"".to_vec(), b"empty key".to_vec()), (b"empty".to_vec(), Vec::new())],
        "kv contract: a full scan must return exactly the live keys"
    );
}

/// A full scan returns every key once, in bytewise order (`0x00` and `0xFF` bytes included).
pub fn kv_scans_are_ordered(store: &(impl KvStore + ?Sized)) {
    let model = kv_fill(store);
    let expected: Vec<KvPair> = model.into_iter().collect();
    assert_eq!(all(store), expected, "kv contract, ordered scans: not in bytewise key order");
}

/// Every combination of included, excluded and unbounded bounds, on keys present and absent,
/// returns exactly the keys within the bounds, in order.
pub fn kv_scan_bounds(store: &(impl KvStore + ?Sized)) {
    let model = kv_fill(store);
    let mut points = kv_keys();
    points.extend([b"aa".to_vec(), b"abd".to_vec(), vec![0x80], vec![0xFF, 0xFF, 0xFF]]);
    let mut bounds: Vec<Bound<&[u8]>> = vec![Bound::Unbounded];
    for p in &points {
        bounds.push(Bound::Included(p));
        bounds.push(Bound::Excluded(p));
    }
    for &start in &bounds {
        for &end in &bounds {
            let got = store.scan(start, end, usize::MAX).unwrap();
            assert_eq!(
                got,
                model_range(&model, start, end),
                "kv contract, ordered scans: wrong entries for bounds {start:?}..{end:?}"
            );
        }
    }
}

/// `limit` caps a scan at its first entries; paging from `Excluded(last key)` (by hand and
/// with [`RangeIter`]) visits every entry exactly once.
pub fn kv_scan_limit_and_paging(store: &(impl KvStore + ?Sized)) {
    let model = kv_fill(store);
    let expected: Vec<KvPair> = model.into_iter().collect();
    assert!(
        store.scan(Bound::Unbounded, Bound::Unbounded, 0).unwrap().is_empty(),
        "kv contract: a scan with limit 0 must return nothing"
    );
    for limit in [1, 2, 5, expected.len(), expected.len() + 1] {
        let got = store.scan(Bound::Unbounded, Bound::Unbounded, limit).unwrap();
        assert_eq!(
            got,
            expected[..limit.min(expected.len())],
            "kv contract: a scan with limit {limit} must return the first {limit} entries"
        );
    }
    let from = b"ab".as_slice();
    for page in [1, 2, 3, 7, 100] {
        let mut pages = Vec::new();
        let mut start = Bound::Included(from.to_vec());
        loop {
            let got =
                store.scan(start.as_ref().map(Vec::as_slice), Bound::Unbounded, page).unwrap();
            assert!(got.len() <= page, "kv contract: a scan returned more than its limit");
            let done = got.len() < page;
            if let Some((last, _)) = got.last() {
                start = Bound::Excluded(last.clone());
            }
            pages.extend(got);
            if done {
                break;
            }
        }
        let tail: Vec<KvPair> =
            expected.iter().filter(|(k, _)| k.as_slice() >= from).cloned().collect();
        assert_eq!(pages, tail, "kv contract: paging by {page} must visit every entry once");
        let iterated: Vec<KvPair> =
            RangeIter::new(store, Bound::Included(from), Bound::Unbounded, page)
                .collect::<Result<_, _>>()
                .unwrap();
        assert_eq!(iterated, tail, "kv: RangeIter paging by {page}");
    }
}

/// Empty and inverted ranges are `Ok` and empty, on an empty store and a filled one.
pub fn kv_empty_ranges(store: &(impl KvStore + ?Sized)) {
    let empty = |s: Bound<&[u8]>, e: Bound<&[u8]>, what: &str| {
        let got = store.scan(s, e, 10).unwrap();
        assert!(got.is_empty(), "kv contract, ordered scans: {what} must be empty, got {got:?}");
    };
    empty(Bound::Unbounded, Bound::Unbounded, "a scan of an empty store");
    assert!(store.scan_prefix(b"a", 10).unwrap().is_empty());
    kv_fill(store);
    let a = b"a".as_slice();
    let b = b"b".as_slice();
    empty(Bound::Included(b), Bound::Included(a), "an inverted range");
    empty(Bound::Excluded(b), Bound::Excluded(a), "an inverted exclusive range");
    empty(Bound::Included(a), Bound::Excluded(a), "[a, a)");
    empty(Bound::Excluded(a), Bound::Included(a), "(a, a]");
    empty(Bound::Excluded(a), Bound::Excluded(a), "(a, a)");
    empty(Bound::Unbounded, Bound::Excluded(b""), "(.., \"\")");
    empty(Bound::Excluded(&[0xFF, 0xFF]), Bound::Unbounded, "after the greatest key");
    empty(Bound::Included(b"aa"), Bound::Excluded(b"ab"), "a gap between keys");
    assert!(store.scan_prefix(b"zz", 10).unwrap().is_empty(), "kv: a prefix with no key");
    let one = store.scan(Bound::Included(a), Bound::Included(a), 10).unwrap();
    assert_eq!(one.len(), 1, "kv contract, ordered scans: [a, a] must hold exactly a");
}

/// A key that is a prefix of another is a different key; prefix scans return the prefix
/// itself and its extensions only, including `0xFF`-ended prefixes and the empty prefix.
pub fn kv_keys_that_are_prefixes(store: &(impl KvStore + ?Sized)) {
    let model = kv_fill(store);
    assert_eq!(store.get(b"a").unwrap(), model.get(b"a".as_slice()).cloned());
    assert_ne!(store.get(b"a").unwrap(), store.get(b"ab").unwrap());
    assert_eq!(store.get(b"abcd").unwrap(), None, "kv: an extension of a key is not that key");
    for prefix in [&b"a"[..], b"ab", &[0x00], &[0xFF], &[0xFF, 0xFF], &[0xFE], b""] {
        let expected: Vec<KvPair> = model
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            store.scan_prefix(prefix, usize::MAX).unwrap(),
            expected,
            "kv: scan_prefix({prefix:?}) must return the prefix and its extensions only"
        );
    }
    assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
}

/// A batch that is refused (an oversized value or key in the middle) writes none of its
/// operations, before or after the bad one.
pub fn kv_batch_is_atomic(store: &(impl KvStore + ?Sized)) {
    store.write(KvBatch::new().put(b"keep", b"old").put(b"doomed", b"here")).unwrap();
    let before = all(store);
    let big = vec![7u8; MAX_VALUE_LEN + 1];
    let batch = KvBatch::new()
        .put(b"keep", b"new")
        .delete(b"doomed")
        .put(b"fresh", b"value")
        .put(b"big", big)
        .put(b"after", b"value");
    match store.write(batch) {
        Err(KvError::ValueTooLarge { len, max }) => {
            assert_eq!((len, max), (MAX_VALUE_LEN + 1, MAX_VALUE_LEN));
        }
        other => panic!("kv contract: an oversized value must be ValueTooLarge, got {other:?}"),
    }
    assert_eq!(all(store), before, "kv contract, atomic batches: a refused batch wrote something");
    let long_key = vec![1u8; store.max_key_len() + 1];
    let batch =
        KvBatch::new().delete(b"keep").put(long_key.as_slice(), b"v").put(b"fresh", b"value");
    assert!(matches!(store.write(batch), Err(KvError::KeyTooLarge { .. })));
    let batch = KvBatch::new().put(b"fresh", b"value").delete(long_key);
    assert!(matches!(store.write(batch), Err(KvError::KeyTooLarge { .. })));
    assert_eq!(all(store), before, "kv contract, atomic batches: a refused batch wrote something");
}

/// Operations of a batch apply in order: the last one on a key wins.
pub fn kv_batch_is_applied_in_order(store: &(impl KvStore + ?Sized)) {
    store.put(b"old", b"1").unwrap();
    let batch = KvBatch::new()
        .put(b"put-then-delete", b"x")
        .delete(b"put-then-delete")
        .delete(b"delete-then-put")
        .put(b"delete-then-put", b"y")
        .put(b"twice", b"first")
        .put(b"twice", b"second")
        .delete(b"old")
        .put(b"old", b"2")
        .delete(b"old");
    store.write(batch).unwrap();
    assert_eq!(store.get(b"put-then-delete").unwrap(), None, "kv: put then delete must be absent");
    assert_eq!(
        store.get(b"delete-then-put").unwrap().as_deref(),
        Some(&b"y"[..]),
        "kv: delete then put must be present"
    );
    assert_eq!(store.get(b"twice").unwrap().as_deref(), Some(&b"second"[..]), "kv: last put wins");
    assert_eq!(store.get(b"old").unwrap(), None, "kv: the last delete wins");
    assert_eq!(all(store).len(), 2);
}

/// Multi-megabyte values, a value of exactly [`MAX_VALUE_LEN`] and a key of exactly
/// [`KvStore::max_key_len`] (at most [`MAX_KEY_LEN`]) round-trip.
pub fn kv_large_values(store: &(impl KvStore + ?Sized)) {
    let max_key = store.max_key_len();
    assert!(
        (1..=MAX_KEY_LEN).contains(&max_key),
        "kv contract: max_key_len must be within 1..=MAX_KEY_LEN, is {max_key}"
    );
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let key = vec![0xABu8; max_key];
    store
        .write(KvBatch::new().put(b"big", big.as_slice()).put(key.as_slice(), b"longest key"))
        .unwrap();
    assert!(store.get(b"big").unwrap() == Some(big), "kv: a 4 MB value must round-trip");
    assert_eq!(store.get(&key).unwrap().as_deref(), Some(&b"longest key"[..]), "kv: longest key");
    let limit = vec![0x5Au8; MAX_VALUE_LEN];
    store.put(b"limit", &limit).unwrap();
    let got = store.get(b"limit").unwrap().unwrap();
    assert!(got == limit, "kv: a value of exactly MAX_VALUE_LEN must round-trip");
    drop(got);
    store.delete(b"limit").unwrap();
    let scanned = store.scan_prefix(b"big", 1).unwrap();
    assert_eq!(scanned.len(), 1);
    assert_eq!(scanned[0].1.len(), 4_000_000, "kv: scans return whole large values");
}

/// Keys over [`KvStore::max_key_len`] and values over [`MAX_VALUE_LEN`] are refused with the
/// typed error, by every operation, and write nothing.
pub fn kv_oversized_refused(store: &(impl KvStore + ?Sized)) {
    store.put(b"k", b"v").unwrap();
    let max_key = store.max_key_len();
    let long_key = vec![b'k'; max_key + 1];
    let is_key_err = |r: Result<(), KvError>, what: &str| match r {
        Err(KvError::KeyTooLarge { len, max }) => {
            assert_eq!((len, max), (max_key + 1, max_key), "kv: {what}");
        }
        other => {
            panic!("kv contract: {what} with an oversized key must be KeyTooLarge, got {other:?}")
        }
    };
    is_key_err(store.put(&long_key, b"v"), "put");
    is_key_err(store.delete(&long_key), "delete");
    is_key_err(store.get(&long_key).map(drop), "get");
    match store.put(b"v", &vec![0u8; MAX_VALUE_LEN + 1]) {
        Err(KvError::ValueTooLarge { .. }) => {}
        other => panic!("kv contract: an oversized value must be ValueTooLarge, got {other:?}"),
    }
    assert_eq!(
        all(store),
        vec![(b"k".to_vec(), b"v".to_vec())],
        "kv contract: a refused write wrote something"
    );
}

/// Batches from several threads are serializable: each batch writes the same value under
/// two keys, and every scan sees the two equal.
pub fn kv_concurrent_batches_are_serializable(store: &(impl KvStore + ?Sized)) {
    const THREADS: u32 = 4;
    const WRITES: u32 = 25;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                for i in 0..WRITES {
                    let v = (t * 1000 + i).to_be_bytes();
                    let own = [b"own/".as_slice(), &t.to_be_bytes(), &i.to_be_bytes()].concat();
                    store.write(KvBatch::new().put(b"x", v).put(b"y", v).put(own, v)).unwrap();
                }
            });
        }
        s.spawn(|| {
            for _ in 0..50 {
                let pair = store.scan(Bound::Included(b"x"), Bound::Included(b"y"), 10).unwrap();
                if let [(_, x), (_, y)] = pair.as_slice() {
                    assert_eq!(x, y, "kv contract, concurrency: a scan saw half a batch");
                }
            }
        });
    });
    assert_eq!(
        store.scan_prefix(b"own/", usize::MAX).unwrap().len(),
        (THREADS * WRITES) as usize,
        "kv contract, concurrency: a concurrent write was lost"
    );
    let x = store.get(b"x").unwrap();
    assert!(x.is_some() && x == store.get(b"y").unwrap(), "kv: the last batch wins whole");
}
