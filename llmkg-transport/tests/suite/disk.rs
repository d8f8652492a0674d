#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The simulator's `Disk` as a production `KvStore`: the key-value conformance suite, fault
//! injection (a failed write writes nothing) and the simulator's own interface next to it.

use std::ops::Bound;

use llmkg_federation_core::kv::{KvBatch, KvError, KvStore, MAX_KEY_LEN, Prefixed, RangeIter};
use llmkg_federation_core::testing;
use llmkg_transport::sim::{Disk, DiskOp, InjectedFault};

#[test]
fn disk_passes_the_kv_conformance_suite() {
    testing::kv_suite(Disk::new);
}

#[test]
fn disk_namespaces_pass_the_kv_conformance_suite() {
    testing::kv_suite(|| {
        let disk = Disk::new();
        Prefixed::namespace(disk.clone(), "sync").unwrap().put(b"k", b"neighbour").unwrap();
        Prefixed::namespace(disk, "raft").unwrap()
    });
}

#[test]
fn disk_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Disk>();
    // And usable as a shared trait object from several threads.
    let disk = Disk::new();
    let shared: std::sync::Arc<dyn KvStore> = std::sync::Arc::new(disk.clone());
    std::thread::scope(|s| {
        for t in 0u8..4 {
            let kv = shared.clone();
            s.spawn(move || kv.put(&[t], &[t]).unwrap());
        }
    });
    assert_eq!(disk.len(), 4);
}

fn injected(r: Result<(), KvError>) -> bool {
    match r {
        Err(KvError::Io(e)) => e.get_ref().is_some_and(|inner| inner.is::<InjectedFault>()),
        _ => false,
    }
}

#[test]
fn a_failed_batch_writes_nothing() {
    let disk = Disk::new();
    KvStore::write(&disk, KvBatch::new().put(b"term", b"1").put(b"log/1", b"a")).unwrap();
    let before = disk.entries();
    let (writes, bytes) = (disk.writes(), disk.bytes_written());

    disk.fail_next_writes(2);
    let batch = KvBatch::new().put(b"term", b"2").delete(b"log/1").put(b"log/2", b"b");
    assert!(injected(KvStore::write(&disk, batch.clone())), "first injected fault");
    assert!(injected(KvStore::delete(&disk, b"term")), "second injected fault");
    assert_eq!(disk.entries(), before, "a failed write changed the disk");
    assert_eq!(
        (disk.writes(), disk.bytes_written()),
        (writes, bytes),
        "a failed write was counted"
    );
    assert_eq!(disk.failed_writes(), 2);

    // The faults are used up: the same batch now goes through whole.
    KvStore::write(&disk, batch).unwrap();
    assert_eq!(disk.get(b"term").as_deref(), Some(&b"2"[..]));
    assert_eq!(disk.get(b"log/1"), None);
    assert_eq!(disk.get(b"log/2").as_deref(), Some(&b"b"[..]));
    assert_eq!(disk.writes(), writes + 1);
}

#[test]
fn a_faulty_disk_fails_every_write_until_cleared_and_reads_still_work() {
    let disk = Disk::new();
    KvStore::put(&disk, b"a", b"1").unwrap();
    disk.set_faulty(true);
    for i in 0u8..5 {
        assert!(injected(KvStore::put(&disk, &[i], b"x")));
    }
    assert!(injected(KvStore::write(&disk, KvBatch::new())), "even an empty batch fails");
    assert_eq!(KvStore::get(&disk, b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(KvStore::scan(&disk, Bound::Unbounded, Bound::Unbounded, 10).unwrap().len(), 1);
    // A refused batch is refused for its size, before the device is involved.
    let long = vec![0; MAX_KEY_LEN + 1];
    assert!(matches!(KvStore::put(&disk, &long, b"x"), Err(KvError::KeyTooLarge { .. })));
    assert_eq!(disk.failed_writes(), 6);
    disk.set_faulty(false);
    KvStore::put(&disk, b"b", b"2").unwrap();
    assert_eq!(disk.len(), 2);
}

#[test]
fn the_simulator_interface_and_the_kv_interface_see_one_store() {
    let disk = Disk::new();
    disk.put_u64(b"count", 3);
    disk.apply_batch([
        DiskOp::Put(b"p/1".to_vec(), b"x".to_vec()),
        DiskOp::Delete(b"none".to_vec()),
    ]);
    KvStore::put(&disk, b"p/2", b"y").unwrap();
    assert_eq!(KvStore::get(&disk, b"count").unwrap(), Some(3u64.to_le_bytes().to_vec()));
    assert_eq!(disk.scan_prefix(b"p/"), KvStore::scan_prefix(&disk, b"p/", 10).unwrap());
    let keys: Vec<Vec<u8>> = RangeIter::new(&disk, Bound::Unbounded, Bound::Unbounded, 1)
        .map(|e| e.unwrap().0)
        .collect();
    assert_eq!(keys, [b"count".to_vec(), b"p/1".to_vec(), b"p/2".to_vec()]);
    assert_eq!(disk.writes(), 3);
    // The simulator's own writes are never faulted.
    disk.set_faulty(true);
    assert_eq!(disk.put(b"p/3", b"z"), None);
    assert!(disk.contains_key(b"p/3"));
}
