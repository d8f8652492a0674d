//! Durable key-value storage for protocol cores.
//!
//! Consensus (a Raft term, vote and truncatable log) and other protocol cores keep small
//! amounts of state that must survive a crash. [`KvStore`] is the synchronous storage trait
//! they are written against: byte keys in bytewise order, point reads, ordered range scans
//! with a limit (so large ranges can be paged through), and atomic batches of puts and
//! deletes. The contract is "**durable before returning**": a core that wrote its vote and got
//! `Ok` may send the vote.
//!
//! | store | durability | use |
//! |---|---|---|
//! | [`MemoryKv`] | none: gone with the process | tests, caches |
//! | [`RedbKv`] | ACID, one file (alone or shared with a [`RedbStore`](crate::RedbStore)) | the embedded default |
//! | the simulator's `Disk` (llmkg-transport) | survives simulated crashes, faults injectable | deterministic simulation |
//!
//! Several cores can share one store under disjoint key prefixes with [`Prefixed`]. The
//! `testing` module (feature `testing`) has the conformance suite every implementation must
//! pass (`kv_suite`).
//!
//! ```
//! use std::ops::Bound;
//! use llmkg_federation_core::kv::{KvBatch, KvStore, MemoryKv};
//!
//! let kv = MemoryKv::new();
//! // Term and vote change together or not at all.
//! kv.write(KvBatch::new().put(b"raft/term", 7u64.to_be_bytes()).put(b"raft/vote", b"node-3"))?;
//! assert_eq!(kv.get(b"raft/vote")?.as_deref(), Some(&b"node-3"[..]));
//!
//! // Log entries under big-endian indexes sort in index order.
//! for i in 1u64..=5 {
//!     kv.put(&[b"log/".as_slice(), &i.to_be_bytes()].concat(), format!("entry {i}").as_bytes())?;
//! }
//! let first_two = kv.scan_prefix(b"log/", 2)?;
//! assert_eq!(first_two.len(), 2);
//! assert_eq!(first_two[1].1, b"entry 2");
//! // Everything from index 3 on (a truncation deletes these in one batch).
//! let from_3 = [b"log/".as_slice(), &3u64.to_be_bytes()].concat();
//! let tail = kv.scan(Bound::Included(&from_3), Bound::Excluded(b"log0"), usize::MAX)?;
//! kv.write(tail.into_iter().map(|(k, _)| k).fold(KvBatch::new(), KvBatch::delete))?;
//! assert_eq!(kv.scan_prefix(b"log/", usize::MAX)?.len(), 2);
//! # Ok::<(), llmkg_federation_core::kv::KvError>(())
//! ```

mod memory;
mod prefixed;
mod redb_kv;

pub use memory::MemoryKv;
pub use prefixed::Prefixed;
pub(crate) use redb_kv::KV_TABLE;
pub use redb_kv::RedbKv;

use std::collections::VecDeque;
use std::ops::Bound;

use thiserror::Error;

/// The longest key a [`KvStore`] accepts: 1 KiB. Longer keys are refused with
/// [`KvError::KeyTooLarge`].
pub const MAX_KEY_LEN: usize = 1024;

/// The longest value a [`KvStore`] accepts: 64 MiB. Longer values are refused with
/// [`KvError::ValueTooLarge`].
pub const MAX_VALUE_LEN: usize = 64 << 20;

/// A key and its value, as returned by [`KvStore::scan`].
pub type KvPair = (Vec<u8>, Vec<u8>);

/// A key-value operation failed.
///
/// Each variant says whether anything was written. Only
/// [`CommitUncertain`](KvError::CommitUncertain) leaves the outcome of a write open, and
/// even then the batch is wholly present or wholly absent, never in part.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KvError {
    /// A key is longer than [`MAX_KEY_LEN`] (or than what is left of it under a
    /// [`Prefixed`] namespace). Refused before anything was done: **nothing was written**.
    #[error("key of {len} bytes is longer than the limit of {max} bytes")]
    KeyTooLarge {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value is longer than [`MAX_VALUE_LEN`]. Refused before anything was done:
    /// **nothing was written**.
    #[error("value of {len} bytes is longer than the limit of {max} bytes")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stored data is damaged. **Nothing was written.**
    #[error("key-value store is corrupt: {0}")]
    Corrupt(String),
    /// An I/O operation failed: a device error, or a fault injected by a test store (the
    /// simulator's disk reports its injected faults here). **Nothing was written.**
    #[error("key-value store I/O failed: {0}")]
    Io(#[source] std::io::Error),
    /// The backend failed before committing (locking, a transaction it could not begin, a lock
    /// poisoned by a panic, ...). **Nothing was written.**
    #[error("key-value backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend failed while committing a batch, after it may already have become durable
    /// (an fsync that failed, say). The batch is **wholly present or wholly absent, unknown
    /// which**; a caller should treat the store as failed and reopen it to find out. (A
    /// redb-backed store refuses further writes until reopened.)
    #[error("key-value commit failed, its outcome is unknown: {0}")]
    CommitUncertain(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl KvError {
    /// Wraps a backend error as [`KvError::Backend`].
    pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        KvError::Backend(e.into())
    }
}

/// Checks a key against [`MAX_KEY_LEN`].
pub fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.len() > MAX_KEY_LEN {
        return Err(KvError::KeyTooLarge { len: key.len(), max: MAX_KEY_LEN });
    }
    Ok(())
}

/// Checks a value against [`MAX_VALUE_LEN`].
pub fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(KvError::ValueTooLarge { len: value.len(), max: MAX_VALUE_LEN });
    }
    Ok(())
}

/// One operation of a [`KvBatch`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Sets the key (first) to the value (second).
    Put(Vec<u8>, Vec<u8>),
    /// Removes the key (absent keys are not an error).
    Delete(Vec<u8>),
}

impl KvOp {
    /// The key this operation writes.
    pub fn key(&self) -> &[u8] {
        match self {
            KvOp::Put(k, _) | KvOp::Delete(k) => k,
        }
    }
}

/// Puts and deletes applied **in order, all or nothing** by [`KvStore::write`].
///
/// Later operations on a key win: a put then a delete of the same key leaves it absent, a
/// delete then a put leaves it present.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvBatch {
    ops: Vec<KvOp>,
}

impl KvBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put of `value` under `key`. Owned bytes (`Vec<u8>`) are moved in, not copied;
    /// borrowed ones (`&[u8]`, `&[u8; N]`, `&str`) are copied.
    pub fn put(mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(KvOp::Put(key.into(), value.into()));
        self
    }

    /// Adds a delete of `key`.
    pub fn delete(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.ops.push(KvOp::Delete(key.into()));
        self
    }

    /// Appends `op`.
    pub fn push(&mut self, op: KvOp) {
        self.ops.push(op);
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[KvOp] {
        &self.ops
    }

    /// The operations, in order.
    pub fn into_ops(self) -> Vec<KvOp> {
        self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if the batch has no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks every key and value against [`MAX_KEY_LEN`] and [`MAX_VALUE_LEN`]; the first
    /// violation is returned. Stores call this before writing anything.
    pub fn validate(&self) -> Result<(), KvError> {
        for op in &self.ops {
            check_key(op.key())?;
            if let KvOp::Put(_, v) = op {
                check_value(v)?;
            }
        }
        Ok(())
    }
}

impl From<Vec<KvOp>> for KvBatch {
    fn from(ops: Vec<KvOp>) -> Self {
        Self { ops }
    }
}

impl FromIterator<KvOp> for KvBatch {
    fn from_iter<I: IntoIterator<Item = KvOp>>(iter: I) -> Self {
        Self { ops: iter.into_iter().collect() }
    }
}

impl Extend<KvOp> for KvBatch {
    fn extend<I: IntoIterator<Item = KvOp>>(&mut self, iter: I) {
        self.ops.extend(iter);
    }
}

impl IntoIterator for KvBatch {
    type Item = KvOp;
    type IntoIter = std::vec::IntoIter<KvOp>;
    fn into_iter(self) -> Self::IntoIter {
        self.ops.into_iter()
    }
}

/// True if no key can lie between `start` and `end` (bytewise order).
///
/// Stores use it to answer inverted or empty ranges without asking their backend (a
/// `BTreeMap` panics on an inverted range).
pub fn range_is_empty(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e))
        | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        (Bound::Unbounded, Bound::Excluded(e)) => e.is_empty(),
        (_, Bound::Unbounded) | (Bound::Unbounded, Bound::Included(_)) => false,
    }
}

/// The smallest key greater than every key that starts with `prefix`: the exclusive end of
/// the prefix's range. `None` if there is none (`prefix` is empty or all `0xFF`), in which
/// case the range is unbounded above.
///
/// ```
/// use llmkg_federation_core::kv::prefix_successor;
/// assert_eq!(prefix_successor(b"log/"), Some(b"log0".to_vec()));
/// assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
/// assert_eq!(prefix_successor(&[0xFF, 0xFF]), None);
/// ```
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A synchronous, durable key-value store for protocol state.
///
/// Keys are byte strings of at most [`MAX_KEY_LEN`] bytes ([`max_key_len`](KvStore::max_key_len)
/// under a [`Prefixed`] namespace), ordered bytewise (lexicographic
/// by unsigned byte, a shorter key before its extensions); values are byte strings of at
/// most [`MAX_VALUE_LEN`] bytes. The store does not interpret either.
///
/// # Contract
///
/// - **Atomic batches.** [`write`](KvStore::write) applies the operations of a [`KvBatch`] in
///   order, all of them or none. A batch with any key or value over its limit is refused
///   with [`KvError::KeyTooLarge`] / [`KvError::ValueTooLarge`] and writes nothing.
/// - **Durability.** A durable store has made the whole batch durable when `write` returns
///   `Ok`. After a crash, every write that returned `Ok` is present, and a batch that was in
///   flight is wholly present or wholly absent — never in part. ([`MemoryKv`] is not
///   durable at all.)
/// - **Failed writes write nothing.** A write that returns an error wrote nothing, except
///   [`KvError::CommitUncertain`]: then the batch is wholly present or wholly absent.
/// - **Read-your-writes.** [`get`](KvStore::get) and [`scan`](KvStore::scan) reflect every
///   write that returned before them.
/// - **Ordered scans.** `scan(start, end, limit)` returns the first `limit` entries with keys
///   within the bounds, in ascending key order. An empty or inverted range is `Ok` and empty.
///   Fewer than `limit` entries means the range is exhausted; otherwise continue from
///   `Bound::Excluded(last key)` (or use [`RangeIter`]). Bounds are not keys: they may be of
///   any length.
/// - **Concurrency.** Methods take `&self` and may be called from several threads; writes are
///   serializable and a scan sees a single consistent state. (Pages of one range read by
///   successive calls may see different states.)
///
/// The trait is object safe: a host may hold a `Box<dyn KvStore>` or `Arc<dyn KvStore>`, and
/// `&K`, `Box<K>` and `Arc<K>` are stores when `K` is.
///
/// ```
/// use std::sync::Arc;
/// use llmkg_federation_core::kv::{KvBatch, KvError, KvStore, MAX_KEY_LEN, MemoryKv};
///
/// let kv: Arc<dyn KvStore> = Arc::new(MemoryKv::new());
/// kv.put(b"a", b"1")?;
/// // The second op is refused, so the first is not written either.
/// let too_long = vec![0; MAX_KEY_LEN + 1];
/// let err = kv.write(KvBatch::new().put(b"b", b"2").put(too_long, b"x")).unwrap_err();
/// assert!(matches!(err, KvError::KeyTooLarge { .. }));
/// assert_eq!(kv.get(b"b")?, None);
/// // Later operations on a key win.
/// kv.write(KvBatch::new().put(b"c", b"3").delete(b"c").delete(b"a").put(b"a", b"4"))?;
/// assert_eq!(kv.get(b"c")?, None);
/// assert_eq!(kv.get(b"a")?.as_deref(), Some(&b"4"[..]));
/// # Ok::<(), KvError>(())
/// ```
pub trait KvStore: Send + Sync {
    /// The value under `key`, if present. A key over [`max_key_len`](KvStore::max_key_len) is
    /// refused with [`KvError::KeyTooLarge`].
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;

    /// Up to `limit` entries with keys between `start` and `end`, in ascending key order (see
    /// the trait contract).
    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KvPair>, KvError>;

    /// Applies `batch` atomically and durably (see the trait contract).
    fn write(&self, batch: KvBatch) -> Result<(), KvError>;

    /// The longest key this store accepts: [`MAX_KEY_LEN`], unless the store adds bytes of its
    /// own to every key ([`Prefixed`] takes its prefix off the limit).
    fn max_key_len(&self) -> usize {
        MAX_KEY_LEN
    }

    /// Sets `key` to `value`: a batch of one put.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.write(KvBatch::new().put(key, value))
    }

    /// Removes `key` (absent: not an error): a batch of one delete.
    fn delete(&self, key: &[u8]) -> Result<(), KvError> {
        self.write(KvBatch::new().delete(key))
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<KvPair>, KvError> {
        let end = prefix_successor(prefix);
        let end = match &end {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        self.scan(Bound::Included(prefix), end, limit)
    }
}

macro_rules! forward_kv {
    ($ty:ty) => {
        impl<K: KvStore + ?Sized> KvStore for $ty {
            fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
                (**self).get(key)
            }
            fn scan(
                &self,
                start: Bound<&[u8]>,
                end: Bound<&[u8]>,
                limit: usize,
            ) -> Result<Vec<KvPair>, KvError> {
                (**self).scan(start, end, limit)
            }
            fn write(&self, batch: KvBatch) -> Result<(), KvError> {
                (**self).write(batch)
            }
            fn max_key_len(&self) -> usize {
                (**self).max_key_len()
            }
            fn put(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
                (**self).put(key, value)
            }
            fn delete(&self, key: &[u8]) -> Result<(), KvError> {
                (**self).delete(key)
            }
            fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<KvPair>, KvError> {
                (**self).scan_prefix(prefix, limit)
            }
        }
    };
}

forward_kv!(Box<K>);
forward_kv!(std::sync::Arc<K>);
forward_kv!(&K);

/// Iterates over a key range page by page, `page_size` entries per [`KvStore::scan`] call,
/// so a large range is never held in memory at once.
///
/// Each page is a separate scan: writes made between pages may or may not be seen, but keys
/// are always yielded in strictly ascending order and each at most once. After an error the
/// iterator yields nothing more.
///
/// ```
/// use std::ops::Bound;
/// use llmkg_federation_core::kv::{KvStore, MemoryKv, RangeIter};
///
/// let kv = MemoryKv::new();
/// for i in 0u8..10 {
///     kv.put(&[i], &[i * 2])?;
/// }
/// let keys: Vec<u8> = RangeIter::new(&kv, Bound::Included(&[3]), Bound::Unbounded, 4)
///     .map(|entry| entry.map(|(k, _)| k[0]))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(keys, [3, 4, 5, 6, 7, 8, 9]);
/// # Ok::<(), llmkg_federation_core::kv::KvError>(())
/// ```
pub struct RangeIter<'a, K: KvStore + ?Sized> {
    store: &'a K,
    next_start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    page_size: usize,
    page: VecDeque<KvPair>,
    done: bool,
}

impl<'a, K: KvStore + ?Sized> RangeIter<'a, K> {
    /// Iterates over the keys of `store` between `start` and `end`. A `page_size` of 0 is
    /// taken as 1.
    pub fn new(store: &'a K, start: Bound<&[u8]>, end: Bound<&[u8]>, page_size: usize) -> Self {
        Self {
            store,
            next_start: start.map(<[u8]>::to_vec),
            end: end.map(<[u8]>::to_vec),
            page_size: page_size.max(1),
            page: VecDeque::new(),
            done: false,
        }
    }
}

impl<K: KvStore + ?Sized> Iterator for RangeIter<'_, K> {
    type Item = Result<KvPair, KvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(entry) = self.page.pop_front() {
            return Some(Ok(entry));
        }
        if self.done {
            return None;
        }
        let page = self.store.scan(
            self.next_start.as_ref().map(Vec::as_slice),
            self.end.as_ref().map(Vec::as_slice),
            self.page_size,
        );
        match page {
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
            Ok(page) => {
                if page.len() < self.page_size {
                    self.done = true;
                }
                // Keep only keys past the previous page, so that a store that ignored the
                // start bound could not make the iterator repeat itself forever.
                let page: VecDeque<KvPair> = match &self.next_start {
                    Bound::Excluded(after) => page.into_iter().filter(|(k, _)| k > after).collect(),
                    _ => page.into(),
                };
                if let Some((last, _)) = page.back() {
                    self.next_start = Bound::Excluded(last.clone());
                }
                self.page = page;
                let first = self.page.pop_front();
                if first.is_none() {
                    self.done = true;
                }
                first.map(Ok)
            }
        }
    }
}

impl<K: KvStore + ?Sized> std::fmt::Debug for RangeIter<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeIter")
            .field("next_start", &self.next_start)
            .field("end", &self.end)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}
