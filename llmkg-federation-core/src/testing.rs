//! Conformance suite for [`Store`] implementations (feature `testing`).
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
