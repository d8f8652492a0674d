//! A node's durable storage in the simulator.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

/// A simulated node's durable key-value store: what survives a crash.
///
/// The contract the simulator enforces: **a write is durable when the call returns**, and it
/// is the *only* thing that survives a crash. When a node crashes its core (all in-memory
/// state, queued outputs and timers) is dropped; on restart the factory receives the same
/// `Disk` in its [`NodeContext`](super::NodeContext) and must rebuild from it. A crash happens
/// between two inputs to the core, never in the middle of a call, so there are no torn
/// writes; [`apply_batch`](Disk::apply_batch) applies several writes atomically.
///
/// `Disk` is a cheap handle (clones share the same store) for a single-threaded simulation;
/// the host may keep a clone to inspect what a node persisted. Keys are ordered bytewise.
#[derive(Clone, Default)]
pub struct Disk {
    inner: Rc<RefCell<DiskInner>>,
}

#[derive(Default)]
struct DiskInner {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    writes: u64,
    bytes_written: u64,
}

/// One write of an atomic batch (see [`Disk::apply_batch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskOp {
    /// Sets `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Removes `key`.
    Delete(Vec<u8>),
}

impl Disk {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.borrow().map.get(key).cloned()
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.inner.borrow().map.contains_key(key)
    }

    /// Stores `value` under `key`, durably, returning the previous value.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
        let mut inner = self.inner.borrow_mut();
        inner.writes += 1;
        inner.bytes_written += (key.len() + value.len()) as u64;
        inner.map.insert(key.to_vec(), value.to_vec())
    }

    /// Removes `key`, durably, returning the previous value.
    pub fn delete(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut inner = self.inner.borrow_mut();
        inner.writes += 1;
        inner.bytes_written += key.len() as u64;
        inner.map.remove(key)
    }

    /// Applies all `ops` in order as one atomic, durable write.
    pub fn apply_batch(&self, ops: impl IntoIterator<Item = DiskOp>) {
        // Collected first so no user code runs while the store is borrowed.
        let ops: Vec<DiskOp> = ops.into_iter().collect();
        let mut inner = self.inner.borrow_mut();
        inner.writes += 1;
        for op in ops {
            match op {
                DiskOp::Put(k, v) => {
                    inner.bytes_written += (k.len() + v.len()) as u64;
                    inner.map.insert(k, v);
                }
                DiskOp::Delete(k) => {
                    inner.bytes_written += k.len() as u64;
                    inner.map.remove(&k);
                }
            }
        }
    }

    /// Reads a little-endian `u64` stored under `key` (absent or malformed: `None`).
    pub fn get_u64(&self, key: &[u8]) -> Option<u64> {
        let inner = self.inner.borrow();
        let bytes: [u8; 8] = inner.map.get(key)?.as_slice().try_into().ok()?;
        Some(u64::from_le_bytes(bytes))
    }

    /// Stores `value` as a little-endian `u64` under `key`, durably.
    pub fn put_u64(&self, key: &[u8], value: u64) {
        self.put(key, &value.to_le_bytes());
    }

    /// All entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let inner = self.inner.borrow();
        inner
            .map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.inner.borrow().map.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.inner.borrow().map.is_empty()
    }

    /// Number of write calls (`put`, `delete`, `put_u64`, one per batch) so far.
    pub fn writes(&self) -> u64 {
        self.inner.borrow().writes
    }

    /// Total key and value bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.inner.borrow().bytes_written
    }
}

impl fmt::Debug for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.borrow();
        f.debug_struct("Disk")
            .field("keys", &inner.map.len())
            .field("writes", &inner.writes)
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
}
