#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The key-value conformance suite on `MemoryKv`, `RedbKv` (own file and shared with a
//! `RedbStore`), the `Prefixed` adapter and the forwarding impls, plus what the suite cannot
//! check with a single `make()` call: durability across reopen and sharing one file.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use llmkg_federation_core::kv::{
    KvBatch, KvError, KvStore, MAX_KEY_LEN, MAX_VALUE_LEN, MemoryKv, Prefixed, RedbKv,
};
use llmkg_federation_core::{
    BranchName, CommitId, ObjectId, RedbStore, Store, WriteBatch, testing,
};
use tempfile::TempDir;

fn open(path: &Path) -> RedbKv {
    RedbKv::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

#[test]
fn memory_kv_passes_the_conformance_suite() {
    testing::kv_suite(MemoryKv::new);
}

#[test]
fn redb_kv_passes_the_conformance_suite() {
    let dir = TempDir::new().unwrap();
    let mut n = 0u32;
    testing::kv_suite(|| {
        n += 1;
        open(&dir.path().join(format!("kv-{n}.redb")))
    });
    assert!(n >= 11, "the suite made only {n} stores");
}

#[test]
fn redb_store_kv_passes_the_conformance_suite() {
    let dir = TempDir::new().unwrap();
    let mut n = 0u32;
    testing::kv_suite(|| {
        n += 1;
        let store = RedbStore::open(dir.path().join(format!("store-{n}.redb"))).unwrap();
        store.kv()
    });
}

/// A namespace in a store crowded with neighbours on both sides must behave like a store of
/// its own: the suite's full scans would see any leaked key.
#[test]
fn prefixed_namespaces_pass_the_conformance_suite() {
    let neighbours = |shared: &MemoryKv| {
        for name in ["", "a", "raf", "raft0", "rafu", "zzz"] {
            let other = Prefixed::namespace(shared.clone(), name).unwrap();
            other
                .write(KvBatch::new().put(b"", b"n").put(b"a", b"n").put([0xFF; 8], b"n"))
                .unwrap();
        }
        shared.put(&[0xFF; 4], b"raw").unwrap();
        shared.put(b"", b"raw").unwrap();
    };
    testing::kv_suite(|| {
        let shared = MemoryKv::new();
        neighbours(&shared);
        Prefixed::namespace(shared, "raft").unwrap()
    });
    // Raw prefixes next to 0xFF, where the end of the namespace is unbounded.
    testing::kv_suite(|| {
        let shared = MemoryKv::new();
        shared.write(KvBatch::new().put([0xFE], b"n").put([0xFE, 0xFF, 0xFF], b"n")).unwrap();
        Prefixed::new(shared, vec![0xFF, 0xFF])
    });
}

#[test]
fn forwarding_impls_pass_the_conformance_suite() {
    testing::kv_suite(|| Box::new(MemoryKv::new()) as Box<dyn KvStore>);
    testing::kv_suite(|| Arc::new(MemoryKv::new()) as Arc<dyn KvStore>);
    let held: Vec<MemoryKv> = (0..11).map(|_| MemoryKv::new()).collect();
    let mut it = held.iter();
    testing::kv_suite(|| it.next().unwrap());
}

#[test]
fn prefixed_keys_are_limited_including_the_prefix() {
    let kv = Prefixed::namespace(MemoryKv::new(), "raft").unwrap();
    kv.put(&vec![1; MAX_KEY_LEN - 5], b"fits").unwrap();
    match kv.put(&vec![1; MAX_KEY_LEN - 4], b"too long") {
        Err(KvError::KeyTooLarge { len, max }) => {
            assert_eq!((len, max), (MAX_KEY_LEN - 4, MAX_KEY_LEN - 5))
        }
        other => panic!("expected KeyTooLarge, got {other:?}"),
    }
    assert!(matches!(
        Prefixed::namespace(MemoryKv::new(), &"n".repeat(256)),
        Err(KvError::KeyTooLarge { .. })
    ));
    assert_eq!(kv.inner().len(), 1);
}

#[test]
fn redb_kv_keeps_every_returned_write_across_reopen() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("node.redb");
    {
        let kv = open(&path);
        kv.write(KvBatch::new().put(b"raft/term", 3u64.to_be_bytes()).put(b"raft/vote", b"n1"))
            .unwrap();
        for i in 1u64..=100 {
            kv.put(&[b"log/".as_slice(), &i.to_be_bytes()].concat(), &[i as u8; 300]).unwrap();
        }
        // Truncate the log from 61 on, in one batch.
        let from = [b"log/".as_slice(), &61u64.to_be_bytes()].concat();
        let tail = kv.scan(Bound::Included(&from), Bound::Excluded(b"log0"), usize::MAX).unwrap();
        assert_eq!(tail.len(), 40);
        kv.write(tail.into_iter().map(|(k, _)| k).fold(KvBatch::new(), KvBatch::delete)).unwrap();
        kv.put(b"big", &vec![9; 5_000_000]).unwrap();
        // A refused batch must not show up after reopening either.
        let refused = KvBatch::new()
            .put(b"raft/term", 4u64.to_be_bytes())
            .put(b"x", vec![0; MAX_VALUE_LEN + 1]);
        assert!(matches!(kv.write(refused), Err(KvError::ValueTooLarge { .. })));
        kv.write(KvBatch::new().put(b"gone", b"1").delete(b"gone")).unwrap();
    }
    let kv = open(&path);
    assert_eq!(kv.get(b"raft/term").unwrap(), Some(3u64.to_be_bytes().to_vec()));
    assert_eq!(kv.get(b"raft/vote").unwrap().as_deref(), Some(&b"n1"[..]));
    let log = kv.scan_prefix(b"log/", usize::MAX).unwrap();
    assert_eq!(log.len(), 60);
    for (i, (k, v)) in log.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(k, &[b"log/".as_slice(), &n.to_be_bytes()].concat());
        assert_eq!(v, &vec![n as u8; 300]);
    }
    assert_eq!(kv.get(b"big").unwrap().map(|v| v.len()), Some(5_000_000));
    assert_eq!(kv.get(b"x").unwrap(), None);
    assert_eq!(kv.get(b"gone").unwrap(), None);
    assert_eq!(kv.scan(Bound::Unbounded, Bound::Unbounded, usize::MAX).unwrap().len(), 63);
}

fn oid(n: u8) -> ObjectId {
    ObjectId::from_bytes([n; 32])
}

#[test]
fn redb_kv_shares_a_file_with_redb_store() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("node.redb");
    let main = BranchName::new("main").unwrap();
    let head = CommitId::from_bytes([1; 32]);
    {
        let store = RedbStore::open(&path).unwrap();
        let kv = store.kv();
        // The second handle on the same open database works: no "already open" error.
        store
            .write(WriteBatch::new().put_object(oid(1), b"commit".to_vec()).update_ref(
                main.clone(),
                None,
                Some(head),
            ))
            .unwrap();
        kv.put(b"raft/term", b"5").unwrap();
        // Each sees only its own table.
        assert_eq!(kv.scan(Bound::Unbounded, Bound::Unbounded, 10).unwrap().len(), 1);
        assert_eq!(store.references().unwrap().len(), 1);
        // The kv handle outlives the store handle: it shares the database.
        drop(store);
        kv.put(b"raft/vote", b"n2").unwrap();
        // The file is still open, held by the kv handle.
        assert!(RedbStore::open(&path).is_err(), "a second open of a held file must fail");
    }
    // Reopened as a store, then as a kv store of its own: everything is there.
    {
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.reference(&main).unwrap(), Some(head));
        assert_eq!(store.object(&oid(1)).unwrap().as_deref(), Some(&b"commit"[..]));
        let kv = store.kv();
        assert_eq!(kv.get(b"raft/term").unwrap().as_deref(), Some(&b"5"[..]));
        assert_eq!(kv.get(b"raft/vote").unwrap().as_deref(), Some(&b"n2"[..]));
    }
    let kv = open(&path);
    assert_eq!(kv.scan_prefix(b"raft/", 10).unwrap().len(), 2);
    drop(kv);
    // A file made by `RedbKv::open` can be opened as a store too.
    let other = dir.path().join("kv-first.redb");
    open(&other).put(b"k", b"v").unwrap();
    let store = RedbStore::open(&other).unwrap();
    assert_eq!(store.references().unwrap(), vec![]);
    assert_eq!(store.kv().get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn redb_kv_handles_are_shared_across_threads() {
    let dir = TempDir::new().unwrap();
    let kv = open(&dir.path().join("threads.redb"));
    std::thread::scope(|s| {
        for t in 0u8..4 {
            let kv = kv.clone();
            s.spawn(move || {
                for i in 0u8..20 {
                    kv.put(&[t, i], &[t ^ i]).unwrap();
                }
            });
        }
    });
    assert_eq!(kv.scan(Bound::Unbounded, Bound::Unbounded, usize::MAX).unwrap().len(), 80);
}

mod model {
    //! Random sequences of batches and scans against a `BTreeMap` model.

    use std::collections::BTreeMap;
    use std::ops::{Bound, RangeBounds};

    use llmkg_federation_core::kv::{KvBatch, KvOp, KvStore, MemoryKv, Prefixed, RedbKv};
    use proptest::prelude::*;
    use tempfile::TempDir;

    #[derive(Clone, Debug)]
    enum Step {
        Write(Vec<KvOp>),
        Scan(Bound<Vec<u8>>, Bound<Vec<u8>>, usize),
        Get(Vec<u8>),
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(vec![0x00u8, 0x01, b'a', 0xFE, 0xFF]), 0..4)
    }

    fn bound() -> impl Strategy<Value = Bound<Vec<u8>>> {
        prop_oneof![
            Just(Bound::Unbounded),
            key().prop_map(Bound::Included),
            key().prop_map(Bound::Excluded),
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        let op = prop_oneof![
            (key(), prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(k, v)| KvOp::Put(k, v)),
            key().prop_map(KvOp::Delete),
        ];
        prop_oneof![
            3 => prop::collection::vec(op, 0..6).prop_map(Step::Write),
            2 => (bound(), bound(), 0usize..6).prop_map(|(s, e, l)| Step::Scan(s, e, l)),
            1 => key().prop_map(Step::Get),
        ]
    }

    fn check(store: &dyn KvStore, steps: &[Step]) -> Result<(), TestCaseError> {
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for step in steps {
            match step {
                Step::Write(ops) => {
                    store.write(ops.iter().cloned().collect::<KvBatch>()).unwrap();
                    for op in ops {
                        match op {
                            KvOp::Put(k, v) => model.insert(k.clone(), v.clone()),
                            KvOp::Delete(k) => model.remove(k),
                        };
                    }
                }
                Step::Scan(s, e, limit) => {
                    let (s, e) = (s.as_ref().map(Vec::as_slice), e.as_ref().map(Vec::as_slice));
                    let expected: Vec<(Vec<u8>, Vec<u8>)> = model
                        .iter()
                        .filter(|(k, _)| (s, e).contains(k.as_slice()))
                        .take(*limit)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    prop_assert_eq!(store.scan(s, e, *limit).unwrap(), expected);
                }
                Step::Get(k) => prop_assert_eq!(store.get(k).unwrap(), model.get(k).cloned()),
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn stores_agree_with_a_btreemap(steps in prop::collection::vec(step(), 1..25)) {
            check(&MemoryKv::new(), &steps)?;
            check(&Prefixed::new(MemoryKv::new(), vec![0xFF]), &steps)?;
            let dir = TempDir::new().unwrap();
            check(&RedbKv::open(dir.path().join("model.redb")).unwrap(), &steps)?;
        }
    }
}
