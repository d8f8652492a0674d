#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The durable audit log: agreement with an in-memory recomputation, durability on redb,
//! refused batches, proof sizes.

use llmkg_federation_core::kv::{KvStore, MemoryKv, RedbKv};
use llmkg_governance::audit::log::{MAX_BATCH_ENTRIES, MAX_ENTRY_LEN};
use llmkg_governance::audit::merkle::{
    Hash, empty_root, leaf_hash, tree_consistency_proof, tree_inclusion_proof, tree_root,
    verify_consistency, verify_inclusion,
};
use llmkg_governance::audit::{AuditError, AuditLog};
use proptest::prelude::*;

fn entry(i: u64) -> Vec<u8> {
    format!("{{\"event\":\"test\",\"n\":{i}}}").into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Appending in arbitrary batches gives the roots, proofs and entries of a naive
    /// in-memory recomputation, at every size.
    #[test]
    fn durable_log_matches_naive_recomputation(batches in prop::collection::vec(0usize..9, 1..12)) {
        let mut log = AuditLog::open(MemoryKv::new()).unwrap();
        let mut leaves: Vec<Hash> = Vec::new();
        let mut n = 0u64;
        for b in batches {
            let entries: Vec<Vec<u8>> = (n..n + b as u64).map(entry).collect();
            let range = log.append_batch(&entries).unwrap();
            prop_assert_eq!(range, n..n + b as u64);
            n += b as u64;
            leaves.extend(entries.iter().map(|e| leaf_hash(e)));
            prop_assert_eq!(log.size(), n);
            prop_assert_eq!(log.root(), tree_root(&leaves));
        }
        for size in 0..=n {
            let prefix = &leaves[..size as usize];
            prop_assert_eq!(log.root_at(size).unwrap(), tree_root(prefix));
            for index in 0..size {
                prop_assert_eq!(log.inclusion_proof(index, size).unwrap(), tree_inclusion_proof(prefix, index).unwrap());
            }
            for old in 0..=size {
                prop_assert_eq!(log.consistency_proof(old, size).unwrap(), tree_consistency_proof(prefix, old).unwrap());
            }
        }
        for i in 0..n {
            prop_assert_eq!(log.entry(i).unwrap(), entry(i));
        }
        prop_assert_eq!(log.entries(0..n).unwrap(), (0..n).map(entry).collect::<Vec<_>>());
        // Reopening the same store recovers everything.
        let reopened = AuditLog::open(log.store()).unwrap();
        prop_assert_eq!(reopened.size(), n);
        prop_assert_eq!(reopened.root(), log.root());
    }
}

#[test]
fn empty_log() {
    let log = AuditLog::open(MemoryKv::new()).unwrap();
    assert_eq!(log.size(), 0);
    assert_eq!(log.root(), empty_root());
    assert_eq!(log.root_at(0).unwrap(), empty_root());
    assert!(matches!(log.entry(0), Err(AuditError::IndexOutOfRange { index: 0, size: 0 })));
    assert!(matches!(log.root_at(1), Err(AuditError::SizeOutOfRange { .. })));
    assert!(matches!(log.inclusion_proof(0, 0), Err(AuditError::IndexOutOfRange { .. })));
    assert!(log.consistency_proof(0, 0).unwrap().is_empty());
}

#[test]
fn reopening_redb_recovers_size_and_root() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.redb");
    let (root, root_at_5) = {
        let mut log = AuditLog::open(RedbKv::open(&path).unwrap()).unwrap();
        log.append(b"first").unwrap();
        log.append_batch(&(1..300).map(entry).collect::<Vec<_>>()).unwrap();
        log.append(b"last").unwrap();
        (log.root(), log.root_at(5).unwrap())
        // Dropped without any shutdown step: what returned Ok is durable.
    };
    let mut log = AuditLog::open(RedbKv::open(&path).unwrap()).unwrap();
    assert_eq!(log.size(), 301);
    assert_eq!(log.root(), root);
    assert_eq!(log.root_at(5).unwrap(), root_at_5);
    assert_eq!(log.entry(0).unwrap(), b"first");
    assert_eq!(log.entry(300).unwrap(), b"last");
    // And it keeps growing consistently.
    let old_root = log.root();
    log.append(b"after reopen").unwrap();
    let proof = log.consistency_proof(301, 302).unwrap();
    verify_consistency(301, 302, &old_root, &log.root(), &proof).unwrap();
    let proof = log.inclusion_proof(301, 302).unwrap();
    verify_inclusion(&leaf_hash(b"after reopen"), 301, 302, &proof, &log.root()).unwrap();
}

#[test]
fn a_refused_batch_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.redb");
    let mut log = AuditLog::open(RedbKv::open(&path).unwrap()).unwrap();
    log.append_batch(&[b"a", b"b", b"c"]).unwrap();
    let root = log.root();

    let too_long = vec![b'x'; MAX_ENTRY_LEN + 1];
    let batch = vec![b"ok".to_vec(), too_long, b"ok too".to_vec()];
    let err = log.append_batch(&batch).unwrap_err();
    assert!(matches!(err, AuditError::EntryTooLarge { position: 1, .. }), "{err}");
    let too_many = vec![b"x".to_vec(); MAX_BATCH_ENTRIES + 1];
    assert!(matches!(log.append_batch(&too_many), Err(AuditError::BatchTooLarge { .. })));
    assert_eq!(log.size(), 3);
    assert_eq!(log.root(), root);
    // An entry of exactly the limit is accepted.
    drop(log);

    let mut log = AuditLog::open(RedbKv::open(&path).unwrap()).unwrap();
    assert_eq!(log.size(), 3);
    assert_eq!(log.root(), root);
    assert!(log.store().get(&[b'e', 0, 0, 0, 0, 0, 0, 0, 3]).unwrap().is_none());
    assert_eq!(log.append(&vec![b'y'; MAX_ENTRY_LEN]).unwrap(), 3);
    assert!(log.append_batch(&Vec::<Vec<u8>>::new()).unwrap().is_empty());
}

#[test]
fn proofs_stay_logarithmic() {
    let mut log = AuditLog::open(MemoryKv::new()).unwrap();
    let batch: Vec<Vec<u8>> = (0..4096).map(entry).collect();
    log.append_batch(&batch).unwrap();
    log.append_batch(&batch[..1000]).unwrap();
    let size = log.size();
    let p = log.inclusion_proof(1234, size).unwrap();
    assert!(p.len() <= 13, "{}", p.len());
    verify_inclusion(&leaf_hash(&entry(1234)), 1234, size, &p, &log.root()).unwrap();
    let p = log.consistency_proof(777, size).unwrap();
    assert!(p.len() <= 2 * 13, "{}", p.len());
    verify_consistency(777, size, &log.root_at(777).unwrap(), &log.root(), &p).unwrap();
}

/// Throughput and proof sizes on redb, release mode only:
/// `cargo test --release -p llmkg-governance --test suite -- --ignored --nocapture audit_log::`.
#[test]
#[ignore = "a measurement; run in release mode"]
fn measure_redb_append_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(RedbKv::open(dir.path().join("audit.redb")).unwrap()).unwrap();
    let entry = br#"{"event":"permission","decision":"granted","subject":"org-17/node-4","resource":"graph/acme","action":"write","at":1700000000}"#;
    let batch: Vec<&[u8]> = vec![&entry[..]; 1000];
    let total = 1_000_000u64;
    let start = std::time::Instant::now();
    for _ in 0..total / 1000 {
        log.append_batch(&batch).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!("appended {total} entries in batches of 1000: {:.0} entries/s", total as f64 / secs);
    let size = log.size();
    let t = std::time::Instant::now();
    let inc = log.inclusion_proof(123_456, size).unwrap();
    let con = log.consistency_proof(654_321, size).unwrap();
    println!(
        "at {size}: inclusion proof {} hashes, consistency proof {} hashes ({:?})",
        inc.len(),
        con.len(),
        t.elapsed()
    );
    verify_inclusion(&leaf_hash(entry), 123_456, size, &inc, &log.root()).unwrap();
    verify_consistency(654_321, size, &log.root_at(654_321).unwrap(), &log.root(), &con).unwrap();
}

/// A store whose next write fails: either before anything is written (`Backend`) or after the
/// batch became durable (`CommitUncertain`).
struct Faulty {
    inner: MemoryKv,
    fail: std::sync::Mutex<Option<bool>>, // Some(true): apply then report uncertain
}

impl KvStore for Faulty {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, llmkg_federation_core::kv::KvError> {
        self.inner.get(key)
    }
    fn scan(
        &self,
        start: std::ops::Bound<&[u8]>,
        end: std::ops::Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<llmkg_federation_core::kv::KvPair>, llmkg_federation_core::kv::KvError> {
        self.inner.scan(start, end, limit)
    }
    fn write(
        &self,
        batch: llmkg_federation_core::kv::KvBatch,
    ) -> Result<(), llmkg_federation_core::kv::KvError> {
        use llmkg_federation_core::kv::KvError;
        match self.fail.lock().unwrap().take() {
            None => self.inner.write(batch),
            Some(false) => Err(KvError::backend("injected failure before commit")),
            Some(true) => {
                self.inner.write(batch)?;
                Err(KvError::CommitUncertain("injected failure after commit".into()))
            }
        }
    }
}

#[test]
fn store_failures_leave_the_log_consistent() {
    let store = std::sync::Arc::new(Faulty { inner: MemoryKv::new(), fail: Default::default() });
    let mut log = AuditLog::open(store.clone()).unwrap();
    log.append_batch(&[b"a", b"b"]).unwrap();
    let root = log.root();

    // Failure before commit: nothing written, the log goes on from the same state.
    *store.fail.lock().unwrap() = Some(false);
    assert!(matches!(log.append(b"lost"), Err(AuditError::Store(_))));
    assert_eq!((log.size(), log.root()), (2, root));
    assert_eq!(AuditLog::open(store.clone()).unwrap().root(), root);
    log.append(b"c").unwrap();

    // Outcome unknown: the log refuses to write until reopened; reopening finds the batch.
    *store.fail.lock().unwrap() = Some(true);
    assert!(matches!(log.append_batch(&[b"d", b"e"]), Err(AuditError::Store(_))));
    assert!(matches!(log.append(b"f"), Err(AuditError::Poisoned)));
    let reopened = AuditLog::open(store.clone()).unwrap();
    assert_eq!(reopened.size(), 5);
    assert_eq!(reopened.root(), tree_root(&[b"a", b"b", b"c", b"d", b"e"].map(|e| leaf_hash(e))));
}
