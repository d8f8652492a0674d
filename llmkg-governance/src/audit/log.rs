//! The durable, append-only audit log over a [`KvStore`].
//!
//! Keys (all big-endian, so they sort in index order):
//!
//! ```text
//!   "e" ‖ index:u64             → the entry's bytes
//!   "h" ‖ level:u8 ‖ index:u64  → hash of the complete subtree of leaves
//!                                 index·2^level .. (index+1)·2^level, for level ≥ 2
//!                                 (lower levels are recomputed from at most 4 entries)
//!   "s"                         → the log's size (u64)
//! ```
//!
//! Each call to [`AuditLog::append`] / [`AuditLog::append_batch`] writes its entries, the
//! hashes of every subtree they complete and the new size in **one** atomic
//! [`KvBatch`]: after a crash the whole call is there or none of it. Any root or proof, for
//! any size up to the current one, reads O(log n) stored hashes.

use std::ops::{Bound, Range};

use llmkg_federation_core::kv::{KvBatch, KvError, KvPair, KvStore, RangeIter};
use thiserror::Error;

use super::merkle::{
    self, Hash, consistency_path, empty_root, fold_right, inclusion_path, leaf_hash, node_hash,
};

/// The longest entry the log accepts: 64 KiB.
pub const MAX_ENTRY_LEN: usize = 64 * 1024;

/// The most entries one [`AuditLog::append_batch`] call accepts.
pub const MAX_BATCH_ENTRIES: usize = 65_536;

/// The first byte of every key [`AuditLog::append_batch_with`] writes beside the entries.
pub const SIDE_PREFIX: u8 = b'x';

const SIZE_KEY: &[u8] = b"s";
const ENTRY_PREFIX: u8 = b'e';
const HASH_PREFIX: u8 = b'h';
/// The longest key the log writes.
const LONGEST_KEY: usize = 10;

/// An audit log operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AuditError {
    /// An entry is longer than [`MAX_ENTRY_LEN`]. Refused before anything was done:
    /// **nothing was written** (no entry of the batch).
    #[error("entry {position} of the batch is {len} bytes, longer than the limit of {max}")]
    EntryTooLarge {
        /// The entry's position in the batch.
        position: usize,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The batch has more than [`MAX_BATCH_ENTRIES`] entries. **Nothing was written.**
    #[error("batch of {len} entries is larger than the limit of {max}")]
    BatchTooLarge {
        /// The batch's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An entry index is not below the size asked about. Nothing was read or changed.
    #[error("entry index {index} is not below size {size}")]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The size it had to be below.
        size: u64,
    },
    /// A tree size is larger than the log's size (or an old size larger than a new one).
    /// Nothing was read or changed.
    #[error("tree size {requested} is larger than {limit}")]
    SizeOutOfRange {
        /// The size asked for.
        requested: u64,
        /// The largest size allowed.
        limit: u64,
    },
    /// The store cannot hold the log's keys (a [`Prefixed`](llmkg_federation_core::kv::Prefixed)
    /// namespace too long). **Nothing was written.**
    #[error("the store accepts keys of {max} bytes, the log needs {needed}")]
    KeysTooLong {
        /// The store's key limit.
        max: usize,
        /// What the log needs.
        needed: usize,
    },
    /// An earlier write's outcome is unknown ([`KvError::CommitUncertain`]); the log refuses
    /// to write until it is reopened from its store. **Nothing was written.**
    #[error("the log must be reopened after a write of unknown outcome")]
    Poisoned,
    /// The stored log is damaged or inconsistent. **Nothing was written.**
    #[error("audit log store is corrupt: {0}")]
    Corrupt(String),
    /// A side record's key does not start with [`SIDE_PREFIX`] or is longer than the store
    /// accepts. **Nothing was written.**
    #[error("a side record's key must start with {SIDE_PREFIX:#04x} and fit the store")]
    InvalidSideKey,
    /// The store failed; see [`KvError`] for whether anything was written (a failed write of
    /// a batch writes all of it or nothing).
    #[error("audit log store failed: {0}")]
    Store(#[from] KvError),
}

/// Subtree hashes below this level are recomputed from the entries when needed instead of
/// stored: each stored level costs a write per 2^level entries, so leaving out levels 0 and 1
/// cuts the writes per entry from about 2 to 1.25, for at most 4 entry reads per proof node.
const FIRST_STORED_LEVEL: u32 = 2;

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn hash_key(level: u32, index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = HASH_PREFIX;
    k[1] = level as u8;
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The append-only Merkle audit log (RFC 6962 shape), durable on any [`KvStore`].
///
/// Entries are opaque bytes to the log. `&mut self` appends; reads take `&self`.
///
/// ```
/// use llmkg_federation_core::kv::MemoryKv;
/// use llmkg_governance::audit::AuditLog;
/// use llmkg_governance::audit::merkle::{leaf_hash, verify_consistency, verify_inclusion};
///
/// let mut log = AuditLog::open(MemoryKv::new())?;
/// log.append(br#"{"event":"permission-granted"}"#)?;
/// let old_root = log.root();
/// let range = log.append_batch(&[&b"{}"[..], b"{\"n\":2}", b"{\"n\":3}"])?;
/// assert_eq!(range, 1..4);
///
/// // Entry 2 is in the tree of size 4 ...
/// let proof = log.inclusion_proof(2, 4)?;
/// verify_inclusion(&leaf_hash(&log.entry(2)?), 2, 4, &proof, &log.root())?;
/// // ... and the tree of size 4 extends the tree of size 1.
/// let proof = log.consistency_proof(1, 4)?;
/// verify_consistency(1, 4, &old_root, &log.root(), &proof)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct AuditLog<K: KvStore> {
    store: K,
    size: u64,
    /// Hashes of the complete subtrees along the right edge, largest (leftmost) first, with
    /// their levels: one per set bit of `size`.
    frontier: Vec<(u32, Hash)>,
    root: Hash,
    poisoned: bool,
}

impl<K: KvStore> AuditLog<K> {
    /// Opens the log kept in `store`, recovering its size and state (an empty store is an
    /// empty log). Reads O(log n) keys.
    pub fn open(store: K) -> Result<Self, AuditError> {
        let max = store.max_key_len();
        if max < LONGEST_KEY {
            return Err(AuditError::KeysTooLong { max, needed: LONGEST_KEY });
        }
        let size = match store.get(SIZE_KEY)? {
            None => 0,
            Some(v) => {
                let bytes: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| AuditError::Corrupt("size is not 8 bytes".into()))?;
                u64::from_be_bytes(bytes)
            }
        };
        let mut log =
            Self { store, size, frontier: Vec::new(), root: empty_root(), poisoned: false };
        let mut pos = 0u64;
        for level in (0..64u32).rev() {
            if size & (1u64 << level) != 0 {
                let h = log.stored_hash(level, pos >> level)?;
                log.frontier.push((level, h));
                pos += 1u64 << level;
            }
        }
        log.root = log.frontier_root();
        Ok(log)
    }

    fn frontier_root(&self) -> Hash {
        let parts: Vec<Hash> = self.frontier.iter().map(|(_, h)| *h).collect();
        fold_right(&parts)
    }

    fn stored_hash(&self, level: u32, index: u64) -> Result<Hash, AuditError> {
        if level == 0 {
            // Leaf hashes are not stored: one entry read and one hash.
            let entry = self
                .store
                .get(&entry_key(index))?
                .ok_or_else(|| AuditError::Corrupt(format!("missing entry {index}")))?;
            return Ok(leaf_hash(&entry));
        }
        if level < FIRST_STORED_LEVEL {
            // Nor are the lowest levels: at most 2^FIRST_STORED_LEVEL entry reads.
            let left = self.stored_hash(level - 1, index << 1)?;
            let right = self.stored_hash(level - 1, (index << 1) | 1)?;
            return Ok(node_hash(&left, &right));
        }
        let v = self.store.get(&hash_key(level, index))?.ok_or_else(|| {
            AuditError::Corrupt(format!("missing subtree hash at level {level}, index {index}"))
        })?;
        v.as_slice().try_into().map_err(|_| {
            AuditError::Corrupt(format!(
                "subtree hash at level {level}, index {index} is not 32 bytes"
            ))
        })
    }

    /// The store the log is kept in.
    pub fn store(&self) -> &K {
        &self.store
    }

    /// The number of entries.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The side records whose keys start with `prefix` (which must start with
    /// [`SIDE_PREFIX`]), in key order.
    pub fn side_records(&self, prefix: &[u8]) -> Result<Vec<KvPair>, AuditError> {
        if prefix.first() != Some(&SIDE_PREFIX) {
            return Err(AuditError::InvalidSideKey);
        }
        Ok(self.store.scan_prefix(prefix, usize::MAX)?)
    }

    /// The root of the current tree (the empty tree's root if there is no entry).
    pub fn root(&self) -> Hash {
        self.root
    }

    /// Appends one entry; returns its index. One atomic write.
    pub fn append(&mut self, entry: &[u8]) -> Result<u64, AuditError> {
        self.append_batch(&[entry]).map(|r| r.start)
    }

    /// Appends `entries` in order in one atomic write; returns their indexes. An empty batch
    /// writes nothing and returns an empty range at the current size.
    ///
    /// Every entry is checked before anything is written: one entry over [`MAX_ENTRY_LEN`]
    /// refuses the whole batch.
    pub fn append_batch(&mut self, entries: &[impl AsRef<[u8]>]) -> Result<Range<u64>, AuditError> {
        self.append_batch_with(entries, Vec::new())
    }

    /// Appends `entries` like [`append_batch`](Self::append_batch) and writes `side` records
    /// (keys starting with [`SIDE_PREFIX`]) in the same atomic write: state the log's owner
    /// keeps beside the events that record its changes, so that the two never disagree. With
    /// no entry, nothing is written.
    pub fn append_batch_with(
        &mut self,
        entries: &[impl AsRef<[u8]>],
        side: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Range<u64>, AuditError> {
        let max_key = self.store.max_key_len();
        if side.iter().any(|(k, _)| k.first() != Some(&SIDE_PREFIX) || k.len() > max_key) {
            return Err(AuditError::InvalidSideKey);
        }
        if self.poisoned {
            return Err(AuditError::Poisoned);
        }
        if entries.len() > MAX_BATCH_ENTRIES {
            return Err(AuditError::BatchTooLarge { len: entries.len(), max: MAX_BATCH_ENTRIES });
        }
        for (position, e) in entries.iter().enumerate() {
            let len = e.as_ref().len();
            if len > MAX_ENTRY_LEN {
                return Err(AuditError::EntryTooLarge { position, len, max: MAX_ENTRY_LEN });
            }
        }
        let start = self.size;
        if entries.is_empty() {
            return Ok(start..start);
        }
        let end = start
            .checked_add(entries.len() as u64)
            .filter(|e| *e < (1u64 << 63))
            .ok_or(AuditError::SizeOutOfRange { requested: u64::MAX, limit: (1u64 << 63) - 1 })?;

        let mut batch = KvBatch::new();
        let mut frontier = self.frontier.clone();
        for (i, e) in (start..end).zip(entries) {
            let e = e.as_ref();
            let mut h = leaf_hash(e);
            batch = batch.put(entry_key(i).to_vec(), e);
            let (mut level, mut index) = (0u32, i);
            // Each odd index completes its parent with the frontier's last subtree.
            while index & 1 == 1 {
                let Some((_, left)) = frontier.pop() else {
                    return Err(AuditError::Corrupt("frontier shorter than the size".into()));
                };
                h = node_hash(&left, &h);
                level += 1;
                index >>= 1;
                if level >= FIRST_STORED_LEVEL {
                    batch = batch.put(hash_key(level, index).to_vec(), h.to_vec());
                }
            }
            frontier.push((level, h));
        }
        batch = batch.put(SIZE_KEY, end.to_be_bytes().to_vec());
        for (k, v) in side {
            batch = batch.put(k, v);
        }
        match self.store.write(batch) {
            Ok(()) => {}
            Err(e @ KvError::CommitUncertain(_)) => {
                self.poisoned = true;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
        self.size = end;
        self.frontier = frontier;
        self.root = self.frontier_root();
        Ok(start..end)
    }

    /// The root of the tree of the first `size` entries (`size <= self.size()`).
    pub fn root_at(&self, size: u64) -> Result<Hash, AuditError> {
        if size > self.size {
            return Err(AuditError::SizeOutOfRange { requested: size, limit: self.size });
        }
        if size == self.size {
            return Ok(self.root);
        }
        if size == 0 {
            return Ok(empty_root());
        }
        merkle::range_hash(&|l, i| self.stored_hash(l, i), 0, size)
    }

    /// The entry at `index`.
    pub fn entry(&self, index: u64) -> Result<Vec<u8>, AuditError> {
        if index >= self.size {
            return Err(AuditError::IndexOutOfRange { index, size: self.size });
        }
        self.store
            .get(&entry_key(index))?
            .ok_or_else(|| AuditError::Corrupt(format!("missing entry {index}")))
    }

    /// The entries `range` (clamped to the log's size), in order, read page by page.
    pub fn entries(&self, range: Range<u64>) -> Result<Vec<Vec<u8>>, AuditError> {
        let end = range.end.min(self.size);
        if range.start >= end {
            return Ok(Vec::new());
        }
        let (lo, hi) = (entry_key(range.start), entry_key(end));
        let iter =
            RangeIter::new(&self.store, Bound::Included(&lo[..]), Bound::Excluded(&hi[..]), 1024);
        let mut out = Vec::with_capacity((end - range.start).min(1 << 20) as usize);
        for (expected, item) in (range.start..end).zip(iter) {
            let (k, v) = item?;
            if k != entry_key(expected) {
                return Err(AuditError::Corrupt(format!("missing entry {expected}")));
            }
            out.push(v);
        }
        if out.len() as u64 != end - range.start {
            return Err(AuditError::Corrupt("missing entries".into()));
        }
        Ok(out)
    }

    /// The inclusion proof of entry `index` in the tree of the first `size` entries
    /// (`index < size <= self.size()`); verify it with
    /// [`verify_inclusion`](super::merkle::verify_inclusion).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, AuditError> {
        if size > self.size {
            return Err(AuditError::SizeOutOfRange { requested: size, limit: self.size });
        }
        if index >= size {
            return Err(AuditError::IndexOutOfRange { index, size });
        }
        inclusion_path(&|l, i| self.stored_hash(l, i), index, size)
    }

    /// The consistency proof from the tree of size `old` to the tree of size `new`
    /// (`old <= new <= self.size()`); verify it with
    /// [`verify_consistency`](super::merkle::verify_consistency).
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, AuditError> {
        if new > self.size {
            return Err(AuditError::SizeOutOfRange { requested: new, limit: self.size });
        }
        if old > new {
            return Err(AuditError::SizeOutOfRange { requested: old, limit: new });
        }
        consistency_path(&|l, i| self.stored_hash(l, i), old, new)
    }
}
