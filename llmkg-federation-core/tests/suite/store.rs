#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The storage conformance suite on both built-in stores, plus what the suite cannot check
//! with a single `make()` call: persistence across reopen, a second handle on an open file,
//! and compare-and-swap under real thread contention.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::thread;

use llmkg_federation_core::{
    BranchName, CommitId, MemoryStore, ObjectId, RedbStore, Store, StoreError, WriteBatch, testing,
};
use tempfile::TempDir;

fn open(path: &Path) -> RedbStore {
    RedbStore::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

#[test]
fn memory_store_passes_the_conformance_suite() {
    testing::store_suite(MemoryStore::new);
}

#[test]
fn redb_store_passes_the_conformance_suite() {
    // The TempDir lives until the end of the test: every store the suite makes is a fresh
    // file inside it.
    let dir = TempDir::new().unwrap();
    let mut n = 0u32;
    testing::store_suite(|| {
        n += 1;
        open(&dir.path().join(format!("suite-{n}.redb")))
    });
    assert!(n >= 7, "the suite made only {n} stores");
}

fn oid(n: u8) -> ObjectId {
    ObjectId::from_bytes([n; 32])
}

fn cid(n: u8) -> CommitId {
    CommitId::from_bytes([n; 32])
}

fn branch(s: &str) -> BranchName {
    BranchName::new(s).unwrap()
}

#[test]
fn redb_store_keeps_objects_and_refs_across_reopen() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("repo.redb");
    {
        let store = open(&path);
        store
            .write(
                WriteBatch::new()
                    .put_object(oid(1), b"one".to_vec())
                    .put_object(oid(2), Vec::new())
                    .update_ref(branch("main"), None, Some(cid(1)))
                    .update_ref(branch("team/feature"), None, Some(cid(2))),
            )
            .unwrap();
        store
            .write(
                WriteBatch::new()
                    .put_object(oid(3), vec![7; 100_000])
                    .update_ref(branch("main"), Some(cid(1)), Some(cid(3)))
                    .update_ref(branch("gone"), None, Some(cid(9))),
            )
            .unwrap();
        store.write(WriteBatch::new().update_ref(branch("gone"), Some(cid(9)), None)).unwrap();
        // A failed batch must not show up after reopening either.
        assert!(matches!(
            store.write(WriteBatch::new().put_object(oid(4), b"never".to_vec()).update_ref(
                branch("main"),
                Some(cid(1)),
                Some(cid(4))
            )),
            Err(StoreError::RefConflict { .. })
        ));
    } // closed here

    let store = open(&path);
    assert_eq!(store.object(&oid(1)).unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(store.object(&oid(2)).unwrap(), Some(Vec::new()));
    assert_eq!(store.object(&oid(3)).unwrap(), Some(vec![7; 100_000]));
    assert!(!store.contains_object(&oid(4)).unwrap());
    assert_eq!(store.reference(&branch("main")).unwrap(), Some(cid(3)));
    assert_eq!(store.reference(&branch("gone")).unwrap(), None);
    assert_eq!(
        store.references().unwrap(),
        vec![(branch("main"), cid(3)), (branch("team/feature"), cid(2))]
    );
    // And the reopened store keeps working, compare-and-swap included.
    store.write(WriteBatch::new().update_ref(branch("main"), Some(cid(3)), Some(cid(5)))).unwrap();
    drop(store);
    assert_eq!(open(&path).reference(&branch("main")).unwrap(), Some(cid(5)));
}

#[test]
fn a_second_redb_store_on_an_open_file_is_refused() {
    // Observed behaviour (redb 4.6 on Linux): redb locks the file when it opens it, and a
    // second `Database::create` of the same path — even from the same process — fails with
    // `DatabaseError::DatabaseAlreadyOpen`, which `RedbStore::open` reports as
    // `StoreError::Backend`. It neither panics nor hands out a second handle that could
    // overwrite the first one's pages. Once the first handle is dropped the file opens again.
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("repo.redb");
    let first = open(&path);
    first
        .write(WriteBatch::new().put_object(oid(1), b"one".to_vec()).update_ref(
            branch("main"),
            None,
            Some(cid(1)),
        ))
        .unwrap();

    let second = catch_unwind(AssertUnwindSafe(|| RedbStore::open(&path)))
        .expect("opening an already open redb file must not panic");
    match &second {
        Err(StoreError::Backend(e)) => {
            let msg = e.to_string();
            println!("second open refused: {msg}");
            assert!(
                msg.to_lowercase().contains("already open"),
                "unexpected backend error for a second open: {msg}"
            );
        }
        Err(other) => panic!("expected a backend error for a second open, got {other:?}"),
        Ok(_) => panic!("a second RedbStore on an open file must be refused"),
    }
    drop(second);

    // The first handle is unaffected and still writes.
    assert_eq!(first.reference(&branch("main")).unwrap(), Some(cid(1)));
    first.write(WriteBatch::new().update_ref(branch("main"), Some(cid(1)), Some(cid(2)))).unwrap();
    drop(first);

    let reopened = open(&path);
    assert_eq!(reopened.reference(&branch("main")).unwrap(), Some(cid(2)));
    assert_eq!(reopened.object(&oid(1)).unwrap().as_deref(), Some(&b"one"[..]));
}

const THREADS: u64 = 4;
const INCREMENTS: u64 = 50;

/// A commit id carrying `n`: little-endian in the first 8 bytes, a fixed tag after.
fn counter_id(n: u64) -> CommitId {
    let mut bytes = [0xC0; 32];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    CommitId::from_bytes(bytes)
}

fn counter_of(id: CommitId) -> u64 {
    let bytes = id.as_bytes();
    assert!(bytes[8..].iter().all(|b| *b == 0xC0), "ref holds a value no writer wrote: {id}");
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

/// `THREADS` threads each make `INCREMENTS` successful compare-and-swap increments of one
/// ref, retrying on conflicts. Returns the number of conflicts seen.
fn contended_increments<S: Store + 'static>(store: Arc<S>) -> u64 {
    let name = branch("counter");
    let start = Arc::new(Barrier::new(THREADS as usize));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let store = Arc::clone(&store);
            let name = name.clone();
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                let mut written = Vec::new();
                let mut conflicts = 0u64;
                while (written.len() as u64) < INCREMENTS {
                    let old = store.reference(&name).unwrap();
                    let next = old.map_or(0, counter_of) + 1;
                    let batch =
                        WriteBatch::new().update_ref(name.clone(), old, Some(counter_id(next)));
                    match store.write(batch) {
                        Ok(()) => written.push(next),
                        Err(StoreError::RefConflict { actual, .. }) => {
                            assert_ne!(actual, old, "a conflict must report a changed value");
                            conflicts += 1;
                        }
                        Err(e) => panic!("unexpected store error: {e}"),
                    }
                }
                (written, conflicts)
            })
        })
        .collect();

    let mut all = BTreeSet::new();
    let mut conflicts = 0;
    for w in workers {
        let (written, c) = w.join().unwrap();
        conflicts += c;
        for n in written {
            assert!(all.insert(n), "value {n} was written by two successful swaps");
        }
    }
    let total = THREADS * INCREMENTS;
    // Every successful swap wrote a distinct value and they are exactly 1..=total: no update
    // was lost and none was applied on top of a stale read.
    assert_eq!(all, (1..=total).collect::<BTreeSet<_>>());
    assert_eq!(
        store.reference(&name).unwrap().map(counter_of),
        Some(total),
        "the ref must reflect exactly {total} successful updates"
    );
    conflicts
}

#[test]
fn redb_store_compare_and_swap_under_contention() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("counter.redb");
    let conflicts = contended_increments(Arc::new(open(&path)));
    println!("redb: {} increments, {conflicts} conflicts", THREADS * INCREMENTS);
    // Durable too: the final value survives a reopen.
    assert_eq!(
        open(&path).reference(&branch("counter")).unwrap(),
        Some(counter_id(THREADS * INCREMENTS))
    );
}

#[test]
fn memory_store_compare_and_swap_under_contention() {
    let conflicts = contended_increments(Arc::new(MemoryStore::new()));
    println!("memory: {} increments, {conflicts} conflicts", THREADS * INCREMENTS);
}
