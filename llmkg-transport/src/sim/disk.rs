//! A node's durable storage in the simulator.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use llmkg_federation_core::kv::{
    KvBatch, KvError, KvOp, KvPair, KvStore, check_key, range_is_empty,
};

/// A simulated node's durable key-value store: what survives a crash.
///
/// The contract the simulator enforces: **a write is durable when the call returns**, and it
/// is the *only* thing that survives a crash. When a node crashes its core (all in-memory
/// state, queued outputs and timers) is dropped; on restart the factory receives the same
/// `Disk` in its [`NodeContext`](super::NodeContext) and must rebuild from it. A crash happens
/// between two inputs to the core, never in the middle of a call, so there are no torn
/// writes; [`apply_batch`](Disk::apply_batch) and [`KvStore::write`] apply several writes
/// atomically.
///
/// `Disk` is a cheap handle (clones share the same store); it is `Send + Sync`, so a core may
/// keep it as any other [`KvStore`]. The host may keep a clone to inspect what a node
/// persisted. Keys are ordered bytewise.
///
/// # Two interfaces
///
/// - The **[`KvStore`] implementation** is the production contract protocol cores are written
///   against (the same code runs on a `RedbKv` in a real node). Its writes can fail: see
///   *fault injection* below. Call it through the trait — `KvStore::put(&disk, ..)`, a
///   `&dyn KvStore` or a generic `K: KvStore` — since the inherent methods of the same names
///   take precedence in method-call syntax.
/// - The **inherent methods** ([`get`](Disk::get), [`put`](Disk::put),
///   [`delete`](Disk::delete), [`apply_batch`](Disk::apply_batch), [`put_u64`](Disk::put_u64),
///   [`scan_prefix`](Disk::scan_prefix), ...) are the simulator's infallible interface. They
///   ignore injected faults and the key and value limits, and are also how a host inspects a
///   disk.
///
/// # Fault injection
///
/// [`fail_next_writes`](Disk::fail_next_writes) makes the next `n` writes through the
/// [`KvStore`] trait fail, and [`set_faulty`](Disk::set_faulty) makes all of them fail until
/// cleared. A failing write returns [`KvError::Io`] and **writes nothing**; it is counted in
/// [`failed_writes`](Disk::failed_writes), not in [`writes`](Disk::writes). Reads never fail.
///
/// ```
/// use llmkg_federation_core::kv::{KvBatch, KvError, KvStore};
/// use llmkg_transport::sim::Disk;
///
/// let disk = Disk::new();
/// KvStore::put(&disk, b"term", b"1")?;
/// disk.fail_next_writes(1);
/// let failed = KvStore::write(&disk, KvBatch::new().put(b"term", b"2").put(b"vote", b"n1"));
/// assert!(matches!(failed, Err(KvError::Io(_))));
/// assert_eq!(disk.get(b"term").as_deref(), Some(&b"1"[..]));
/// assert_eq!(disk.get(b"vote"), None);
/// assert_eq!((disk.writes(), disk.failed_writes()), (1, 1));
/// KvStore::put(&disk, b"vote", b"n1")?; // the fault was used up
/// # Ok::<(), KvError>(())
/// ```
#[derive(Clone, Default)]
pub struct Disk {
    inner: Arc<Mutex<DiskInner>>,
}

#[derive(Default)]
struct DiskInner {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    writes: u64,
    bytes_written: u64,
    fail_next: u64,
    faulty: bool,
    failed_writes: u64,
}

impl DiskInner {
    fn apply(&mut self, ops: impl IntoIterator<Item = KvOp>) {
        self.writes += 1;
        for op in ops {
            match op {
                KvOp::Put(k, v) => {
                    self.bytes_written += (k.len() + v.len()) as u64;
                    self.map.insert(k, v);
                }
                KvOp::Delete(k) => {
                    self.bytes_written += k.len() as u64;
                    self.map.remove(&k);
                }
            }
        }
    }

    /// Whether the next trait write must fail (and uses up one injected fault if so).
    fn take_fault(&mut self) -> bool {
        let fail = if self.faulty {
            true
        } else if self.fail_next > 0 {
            self.fail_next -= 1;
            true
        } else {
            false
        };
        if fail {
            self.failed_writes += 1;
        }
        fail
    }
}

/// One write of an atomic batch (see [`Disk::apply_batch`]): the key-value [`KvOp`].
pub type DiskOp = KvOp;

/// The error of an injected disk fault (inside [`KvError::Io`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("injected disk fault: nothing was written")]
pub struct InjectedFault;

impl Disk {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, DiskInner> {
        // No code that can panic runs while the lock is held, so a poisoned lock still guards
        // a consistent map.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().map.get(key).cloned()
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.lock().map.contains_key(key)
    }

    /// Stores `value` under `key`, durably, returning the previous value. Never faulted.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
        let mut inner = self.lock();
        inner.writes += 1;
        inner.bytes_written += (key.len() + value.len()) as u64;
        inner.map.insert(key.to_vec(), value.to_vec())
    }

    /// Removes `key`, durably, returning the previous value. Never faulted.
    pub fn delete(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut inner = self.lock();
        inner.writes += 1;
        inner.bytes_written += key.len() as u64;
        inner.map.remove(key)
    }

    /// Applies all `ops` in order as one atomic, durable write. Never faulted.
    pub fn apply_batch(&self, ops: impl IntoIterator<Item = DiskOp>) {
        // Collected first so no user code runs while the store is locked.
        let ops: Vec<DiskOp> = ops.into_iter().collect();
        self.lock().apply(ops);
    }

    /// Reads a little-endian `u64` stored under `key` (absent or malformed: `None`).
    pub fn get_u64(&self, key: &[u8]) -> Option<u64> {
        let inner = self.lock();
        let bytes: [u8; 8] = inner.map.get(key)?.as_slice().try_into().ok()?;
        Some(u64::from_le_bytes(bytes))
    }

    /// Stores `value` as a little-endian `u64` under `key`, durably. Never faulted.
    pub fn put_u64(&self, key: &[u8], value: u64) {
        self.put(key, &value.to_le_bytes());
    }

    /// All entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let inner = self.lock();
        inner
            .map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.lock().map.clone()
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.lock().map.is_empty()
    }

    /// Number of successful write calls (`put`, `delete`, `put_u64`, one per batch, one per
    /// [`KvStore`] write) so far.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Total key and value bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.lock().bytes_written
    }

    /// Makes the next `n` writes through [`KvStore`] fail with [`KvError::Io`], writing
    /// nothing (replacing any count set before).
    pub fn fail_next_writes(&self, n: u64) {
        self.lock().fail_next = n;
    }

    /// While `faulty`, every write through [`KvStore`] fails with [`KvError::Io`] and writes
    /// nothing.
    pub fn set_faulty(&self, faulty: bool) {
        self.lock().faulty = faulty;
    }

    /// Number of writes through [`KvStore`] that failed on an injected fault.
    pub fn failed_writes(&self) -> u64 {
        self.lock().failed_writes
    }
}

/// The production key-value contract, with injectable write faults (see [`Disk`]).
impl KvStore for Disk {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key)?;
        Ok(self.lock().map.get(key).cloned())
    }

    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KvPair>, KvError> {
        if limit == 0 || range_is_empty(start, end) {
            return Ok(Vec::new());
        }
        let inner = self.lock();
        Ok(inner
            .map
            .range::<[u8], _>((start, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&self, batch: KvBatch) -> Result<(), KvError> {
        batch.validate()?;
        let mut inner = self.lock();
        if inner.take_fault() {
            return Err(KvError::Io(std::io::Error::other(InjectedFault)));
        }
        inner.apply(batch);
        Ok(())
    }
}

impl fmt::Debug for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("Disk")
            .field("keys", &inner.map.len())
            .field("writes", &inner.writes)
            .field("failed_writes", &inner.failed_writes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_state_and_batches_apply_in_order() {
        let disk = Disk::new();
        let view = disk.clone();
        disk.put(b"a/1", b"x");
        disk.put_u64(b"n", 7);
        disk.apply_batch([
            DiskOp::Put(b"a/2".to_vec(), b"y".to_vec()),
            DiskOp::Delete(b"a/1".to_vec()),
            DiskOp::Put(b"b".to_vec(), b"z".to_vec()),
        ]);
        assert_eq!(view.get(b"a/1"), None);
        assert_eq!(view.get_u64(b"n"), Some(7));
        assert_eq!(view.get_u64(b"b"), None);
        assert_eq!(view.scan_prefix(b"a/"), vec![(b"a/2".to_vec(), b"y".to_vec())]);
        assert_eq!(view.len(), 3);
        assert_eq!(view.writes(), 3);
    }

    #[test]
    fn faults_fail_trait_writes_only_and_write_nothing() {
        let disk = Disk::new();
        disk.set_faulty(true);
        let r = KvStore::write(&disk, KvBatch::new().put(b"a", b"1").delete(b"b"));
        assert!(matches!(r, Err(KvError::Io(_))));
        assert!(disk.is_empty());
        // The simulator's own interface is never faulted.
        disk.put(b"b", b"2");
        disk.set_faulty(false);
        assert!(KvStore::put(&disk, b"a", b"1").is_ok());
        assert_eq!((disk.len(), disk.writes(), disk.failed_writes()), (2, 2, 1));
    }
}
