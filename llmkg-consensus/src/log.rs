//! A consensus group's durable, hash-chained log, on any [`KvStore`].
//!
//! Every backend that keeps an ordered log (Raft first) needs the same things of it: the hard
//! state (term and vote) and the entries durable before any message that depends on them
//! leaves; a hash chain so that acknowledging one entry acknowledges the whole prefix (see
//! [`ChainHash`]); truncation of a conflicting suffix; and compaction up to a snapshot. This
//! is that log. Every write is one atomic batch of the store, durable when the call returns;
//! a failed write changes nothing, here or on disk.
//!
//! ```
//! use llmkg_consensus::log::DurableLog;
//! use llmkg_federation_core::MemoryKv;
//! use llmkg_federation_core::consensus::GroupId;
//!
//! let mut log = DurableLog::open(MemoryKv::new(), GroupId::from_bytes([1; 32]))?;
//! let last = log.append(3, vec![b"create branch".to_vec(), b"join node".to_vec()])?;
//! assert_eq!((last, log.last_term()), (2, 3));
//! let entry = log.entry(2)?.expect("entry 2");
//! assert_eq!(entry.payload, b"join node");
//! // The chain hash of entry 2 covers entry 1 too.
//! assert_eq!(entry.chain, log.entry(1)?.unwrap().chain.next(3, 2, b"join node"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ops::Bound;

use llmkg_federation_core::consensus::{ChainHash, GroupId};
use llmkg_federation_core::{KvBatch, KvError, KvStore, NodeId, encoding};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The largest payload an entry may carry.
pub const MAX_ENTRY_LEN: usize = 16 << 20;

const HARD_KEY: &[u8] = b"h";
const SNAPSHOT_KEY: &[u8] = b"s";
const SNAPSHOT_DATA_KEY: &[u8] = b"d";
const ENTRY_PREFIX: u8 = b'e';

fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [ENTRY_PREFIX; 9];
    if let Some(tail) = key.get_mut(1..) {
        tail.copy_from_slice(&index.to_be_bytes());
    }
    key
}

/// The term and vote a node must never forget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: u64,
    /// Whom it voted for in that term, if anyone.
    pub vote: Option<NodeId>,
}

/// The last entry a snapshot covers: everything up to it may be compacted away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPoint {
    /// Its index (0: no snapshot, the log starts at 1).
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The chain hash after it.
    pub chain: ChainHash,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The leader's term it was appended in.
    pub term: u64,
    /// Its position (from 1).
    pub index: u64,
    /// The chain hash after it: `previous.next(term, index, payload)`.
    pub chain: ChainHash,
    /// What it carries, opaque to the log.
    pub payload: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct StoredEntry {
    term: u64,
    chain: ChainHash,
    #[serde(with = "llmkg_federation_core::encoding::bytes")]
    payload: Vec<u8>,
}

/// What went wrong. Nothing was changed, in memory or on disk.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LogError {
    /// The store failed (see [`KvError`] for whether anything may have been written; the log
    /// must then be reopened).
    #[error("storage: {0}")]
    Storage(#[from] KvError),
    /// What the store holds is not a log this code wrote (or it was damaged).
    #[error("the stored log is damaged: {0}")]
    Corrupt(String),
    /// An entry does not extend the chain: its chain hash is not the previous one's next.
    #[error("entry {index} does not extend the hash chain")]
    ChainBroken {
        /// The entry.
        index: u64,
    },
    /// Entries to store are not consecutive, or do not follow `prev`.
    #[error("entries are not consecutive from index {expected}")]
    NotConsecutive {
        /// The index the next entry should have had.
        expected: u64,
    },
    /// The entry before the new ones is not the one the log holds there (a follower's log
    /// differs from the leader's at `index`; the leader must back off).
    #[error("the log does not hold the entry before at index {index}")]
    PrevMismatch {
        /// The index whose term did not match.
        index: u64,
    },
    /// The request would remove entries a snapshot already covers, or reach past the log.
    #[error("index {index} is outside the log ({first}..={last})")]
    OutOfRange {
        /// The index asked for.
        index: u64,
        /// The first index held.
        first: u64,
        /// The last index held.
        last: u64,
    },
    /// An entry's term is older than the entry before it (terms never go down in a log).
    #[error("entry {index} has term {term}, older than the term {previous} before it")]
    TermWentDown {
        /// The entry.
        index: u64,
        /// Its term.
        term: u64,
        /// The term before it.
        previous: u64,
    },
    /// A payload is longer than [`MAX_ENTRY_LEN`].
    #[error("an entry of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// [`MAX_ENTRY_LEN`].
        max: usize,
    },
}

fn corrupt(what: impl std::fmt::Display) -> LogError {
    LogError::Corrupt(what.to_string())
}

/// See the [module documentation](self).
pub struct DurableLog<K: KvStore> {
    kv: K,
    hard: HardState,
    snapshot: SnapshotPoint,
    last: u64,
    last_term: u64,
    last_chain: ChainHash,
}

impl<K: KvStore> DurableLog<K> {
    /// Opens the log of `group` kept in `kv` (empty if nothing is there yet), checking that
    /// every stored entry follows the previous one and extends the hash chain.
    pub fn open(kv: K, group: GroupId) -> Result<Self, LogError> {
        let hard = match kv.get(HARD_KEY)? {
            Some(bytes) => encoding::decode_with_limit(&bytes, 1024).map_err(corrupt)?,
            None => HardState::default(),
        };
        let snapshot = match kv.get(SNAPSHOT_KEY)? {
            Some(bytes) => encoding::decode_with_limit(&bytes, 1024).map_err(corrupt)?,
            None => SnapshotPoint { index: 0, term: 0, chain: ChainHash::genesis(group) },
        };
        let mut log = Self {
            kv,
            hard,
            snapshot,
            last: snapshot.index,
            last_term: snapshot.term,
            last_chain: snapshot.chain,
        };
        // Walk the stored entries once, in pages, checking the chain.
        let mut next = snapshot.index + 1;
        loop {
            let page = log.read_range(next, 256, usize::MAX)?;
            if page.is_empty() {
                break;
            }
            for entry in page {
                if entry.index != next {
                    return Err(corrupt(format!("entry {next} is missing")));
                }
                if entry.chain != log.last_chain.next(entry.term, entry.index, &entry.payload) {
                    return Err(corrupt(format!(
                        "entry {} does not extend the chain",
                        entry.index
                    )));
                }
                log.last = entry.index;
                log.last_term = entry.term;
                log.last_chain = entry.chain;
                next += 1;
            }
        }
        Ok(log)
    }

    /// The term and vote.
    pub fn hard_state(&self) -> HardState {
        self.hard
    }

    /// Makes `hard` durable; it is in force when this returns.
    pub fn save_hard_state(&mut self, hard: HardState) -> Result<(), LogError> {
        let bytes = encoding::try_encode(&hard).map_err(corrupt)?;
        self.kv.put(HARD_KEY, &bytes)?;
        self.hard = hard;
        Ok(())
    }

    /// What the last snapshot covers.
    pub fn snapshot_point(&self) -> SnapshotPoint {
        self.snapshot
    }

    /// The first index still held as an entry (one past the snapshot point).
    pub fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }

    /// The last index (the snapshot point's, if no entry follows it).
    pub fn last_index(&self) -> u64 {
        self.last
    }

    /// The last entry's term.
    pub fn last_term(&self) -> u64 {
        self.last_term
    }

    /// The chain hash after the last entry.
    pub fn last_chain(&self) -> ChainHash {
        self.last_chain
    }

    /// The term at `index`, if the log knows it (the snapshot point's included; index 0 has
    /// term 0).
    pub fn term_at(&self, index: u64) -> Result<Option<u64>, LogError> {
        if index == self.snapshot.index {
            return Ok(Some(self.snapshot.term));
        }
        if index == self.last {
            return Ok(Some(self.last_term));
        }
        Ok(self.entry(index)?.map(|e| e.term))
    }

    /// The chain hash after `index`, if the log knows it.
    pub fn chain_at(&self, index: u64) -> Result<Option<ChainHash>, LogError> {
        if index == self.snapshot.index {
            return Ok(Some(self.snapshot.chain));
        }
        Ok(self.entry(index)?.map(|e| e.chain))
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: u64) -> Result<Option<LogEntry>, LogError> {
        if index <= self.snapshot.index || index > self.last {
            return Ok(None);
        }
        let Some(bytes) = self.kv.get(&entry_key(index))? else {
            return Err(corrupt(format!("entry {index} is missing")));
        };
        let stored: StoredEntry =
            encoding::decode_with_limit(&bytes, MAX_ENTRY_LEN + 1024).map_err(corrupt)?;
        Ok(Some(LogEntry {
            term: stored.term,
            index,
            chain: stored.chain,
            payload: stored.payload,
        }))
    }

    /// Entries from `from` on, at most `max_count` of them and, after the first, no more than
    /// `max_bytes` of payload in all (so a batch for the network stays bounded).
    pub fn entries(
        &self,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>, LogError> {
        if from <= self.snapshot.index {
            return Err(LogError::OutOfRange {
                index: from,
                first: self.first_index(),
                last: self.last,
            });
        }
        self.read_range(from, max_count, max_bytes)
    }

    fn read_range(
        &self,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>, LogError> {
        let start = entry_key(from);
        let end = [ENTRY_PREFIX + 1];
        let pairs = self.kv.scan(Bound::Included(&start), Bound::Excluded(&end), max_count)?;
        let mut out = Vec::with_capacity(pairs.len());
        let mut bytes = 0usize;
        for (key, value) in pairs {
            let index = key
                .get(1..9)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .filter(|_| key.len() == 9)
                .ok_or_else(|| corrupt("a key that is not an entry's"))?;
            let stored: StoredEntry =
                encoding::decode_with_limit(&value, MAX_ENTRY_LEN + 1024).map_err(corrupt)?;
            bytes = bytes.saturating_add(stored.payload.len());
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(LogEntry {
                term: stored.term,
                index,
                chain: stored.chain,
                payload: stored.payload,
            });
        }
        Ok(out)
    }

    /// Appends `payloads` as entries of `term` (a leader's append); returns the new last
    /// index. Durable when it returns.
    pub fn append(&mut self, term: u64, payloads: Vec<Vec<u8>>) -> Result<u64, LogError> {
        if term < self.last_term && !payloads.is_empty() {
            let (index, previous) = (self.last + 1, self.last_term);
            return Err(LogError::TermWentDown { index, term, previous });
        }
        let mut chain = self.last_chain;
        let mut index = self.last;
        let mut entries = Vec::with_capacity(payloads.len());
        for payload in payloads {
            index += 1;
            chain = chain.next(term, index, &payload);
            entries.push(LogEntry { term, index, chain, payload });
        }
        self.write_after(self.last, entries)
    }

    /// Stores entries received from a leader after the entry at `prev_index` of `prev_term`
    /// (a follower's append): checks that the log holds that entry, that the new entries are
    /// consecutive and extend the hash chain, replaces any suffix that conflicts with them,
    /// and keeps entries that already match. Returns the last index of the new entries.
    /// Durable when it returns.
    pub fn replicate(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<LogEntry>,
    ) -> Result<u64, LogError> {
        if prev_index < self.snapshot.index {
            return Err(LogError::OutOfRange {
                index: prev_index,
                first: self.first_index(),
                last: self.last,
            });
        }
        if self.term_at(prev_index)? != Some(prev_term) {
            return Err(LogError::PrevMismatch { index: prev_index });
        }
        let Some(mut chain) = self.chain_at(prev_index)? else {
            return Err(LogError::PrevMismatch { index: prev_index });
        };
        let mut previous = prev_term;
        for (offset, entry) in entries.iter().enumerate() {
            let expected = prev_index + 1 + offset as u64;
            if entry.index != expected {
                return Err(LogError::NotConsecutive { expected });
            }
            if entry.term < previous {
                return Err(LogError::TermWentDown {
                    index: entry.index,
                    term: entry.term,
                    previous,
                });
            }
            previous = entry.term;
            chain = chain.next(entry.term, entry.index, &entry.payload);
            if entry.chain != chain {
                return Err(LogError::ChainBroken { index: entry.index });
            }
        }
        // Entries already held with the same term are the same entries (log matching): skip
        // them, and write from the first one that differs.
        let mut skip = 0;
        for entry in &entries {
            if entry.index > self.last || self.term_at(entry.index)? != Some(entry.term) {
                break;
            }
            skip += 1;
        }
        let last_new = prev_index + entries.len() as u64;
        if skip == entries.len() {
            return Ok(last_new);
        }
        let rest: Vec<LogEntry> = entries.into_iter().skip(skip).collect();
        let after = prev_index + skip as u64;
        self.write_after(after, rest)?;
        Ok(last_new)
    }

    /// Writes `entries` (consecutive, chained) after index `after`, removing whatever the log
    /// held beyond `after`, in one atomic batch.
    fn write_after(&mut self, after: u64, entries: Vec<LogEntry>) -> Result<u64, LogError> {
        if let Some(big) = entries.iter().find(|e| e.payload.len() > MAX_ENTRY_LEN) {
            return Err(LogError::TooLarge { len: big.payload.len(), max: MAX_ENTRY_LEN });
        }
        let mut batch = KvBatch::new();
        for index in (after + 1)..=self.last {
            batch = batch.delete(entry_key(index).to_vec());
        }
        let Some(last) = entries.last().map(|e| (e.index, e.term, e.chain)) else {
            if batch.is_empty() {
                return Ok(self.last);
            }
            // Only a truncation.
            let term = self.term_at(after)?.ok_or_else(|| corrupt("no term before the cut"))?;
            let chain = self.chain_at(after)?.ok_or_else(|| corrupt("no chain before the cut"))?;
            self.kv.write(batch)?;
            (self.last, self.last_term, self.last_chain) = (after, term, chain);
            return Ok(after);
        };
        for entry in entries {
            let stored =
                StoredEntry { term: entry.term, chain: entry.chain, payload: entry.payload };
            let bytes = encoding::try_encode(&stored).map_err(corrupt)?;
            batch = batch.put(entry_key(entry.index).to_vec(), bytes);
        }
        self.kv.write(batch)?;
        (self.last, self.last_term, self.last_chain) = last;
        Ok(self.last)
    }

    /// The snapshot stored with the last [`compact`](Self::compact) or
    /// [`install_snapshot`](Self::install_snapshot) (empty if none).
    pub fn snapshot_data(&self) -> Result<Vec<u8>, LogError> {
        Ok(self.kv.get(SNAPSHOT_DATA_KEY)?.unwrap_or_default())
    }

    /// Forgets the entries up to `index` and keeps `data`, the snapshot that now covers them,
    /// in the same atomic write. `index` must be held. Durable when it returns.
    pub fn compact(&mut self, index: u64, data: &[u8]) -> Result<(), LogError> {
        if index <= self.snapshot.index {
            return Ok(());
        }
        let Some(entry) = self.entry(index)? else {
            return Err(LogError::OutOfRange { index, first: self.first_index(), last: self.last });
        };
        let point = SnapshotPoint { index, term: entry.term, chain: entry.chain };
        let mut batch = KvBatch::new()
            .put(SNAPSHOT_KEY.to_vec(), encoding::try_encode(&point).map_err(corrupt)?)
            .put(SNAPSHOT_DATA_KEY.to_vec(), data.to_vec());
        for i in self.first_index()..=index {
            batch = batch.delete(entry_key(i).to_vec());
        }
        self.kv.write(batch)?;
        self.snapshot = point;
        Ok(())
    }

    /// Replaces the whole log by a snapshot (a follower installing a leader's snapshot): its
    /// point and `data`. Entries after the point that match it are kept; everything else
    /// goes. Durable when it returns.
    pub fn install_snapshot(&mut self, point: SnapshotPoint, data: &[u8]) -> Result<(), LogError> {
        if point.index <= self.snapshot.index {
            // Older than what the log already covers: nothing to do.
            return Ok(());
        }
        let keep = point.index <= self.last && self.chain_at(point.index)? == Some(point.chain);
        let mut batch = KvBatch::new()
            .put(SNAPSHOT_KEY.to_vec(), encoding::try_encode(&point).map_err(corrupt)?)
            .put(SNAPSHOT_DATA_KEY.to_vec(), data.to_vec());
        let drop_to = if keep { point.index } else { self.last };
        for i in self.first_index()..=drop_to {
            batch = batch.delete(entry_key(i).to_vec());
        }
        self.kv.write(batch)?;
        self.snapshot = point;
        if !keep {
            (self.last, self.last_term, self.last_chain) = (point.index, point.term, point.chain);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use llmkg_federation_core::{MemoryKv, NodeKeypair};

    use super::*;

    fn group() -> GroupId {
        GroupId::from_bytes([4; 32])
    }

    fn payloads(n: usize, tag: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![tag, i as u8]).collect()
    }

    #[test]
    fn appends_survive_a_reopen_and_the_chain_is_checked_on_open() {
        let kv = std::sync::Arc::new(MemoryKv::new());
        let mut log = DurableLog::open(kv.clone(), group()).unwrap();
        assert_eq!((log.last_index(), log.last_term(), log.first_index()), (0, 0, 1));
        log.append(1, payloads(3, 1)).unwrap();
        log.append(2, payloads(2, 2)).unwrap();
        let vote = NodeKeypair::from_secret_bytes([1; 32]).node_id();
        log.save_hard_state(HardState { term: 2, vote: Some(vote) }).unwrap();
        let chain = log.last_chain();
        let again = DurableLog::open(kv.clone(), group()).unwrap();
        assert_eq!((again.last_index(), again.last_term(), again.last_chain()), (5, 2, chain));
        assert_eq!(again.hard_state(), HardState { term: 2, vote: Some(vote) });
        // Another group's chain does not match what is stored.
        assert!(matches!(
            DurableLog::open(kv.clone(), GroupId::from_bytes([5; 32])),
            Err(LogError::Corrupt(_))
        ));
        // A damaged entry is found on open.
        let mut bytes = kv.get(&entry_key(3)).unwrap().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        kv.put(&entry_key(3), &bytes).unwrap();
        assert!(matches!(DurableLog::open(kv, group()), Err(LogError::Corrupt(_))));
    }

    #[test]
    fn a_follower_keeps_matching_entries_and_replaces_a_conflicting_suffix() {
        let mut leader = DurableLog::open(MemoryKv::new(), group()).unwrap();
        leader.append(1, payloads(2, 1)).unwrap();
        leader.append(3, payloads(2, 3)).unwrap();
        let mut follower = DurableLog::open(MemoryKv::new(), group()).unwrap();
        follower.append(1, payloads(2, 1)).unwrap();
        follower.append(2, payloads(3, 2)).unwrap(); // a stale leader's entries 3..=5
        let from_leader = leader.entries(3, 10, usize::MAX).unwrap();
        assert_eq!(follower.replicate(2, 1, from_leader.clone()).unwrap(), 4);
        assert_eq!((follower.last_index(), follower.last_term()), (4, 3));
        assert_eq!(follower.last_chain(), leader.last_chain());
        assert_eq!(follower.entry(5).unwrap(), None);
        // The same entries again change nothing (a duplicate message).
        assert_eq!(follower.replicate(2, 1, from_leader.clone()).unwrap(), 4);
        assert_eq!(follower.last_index(), 4);
        // An older, shorter message does not truncate what matches.
        assert_eq!(follower.replicate(2, 1, from_leader[..1].to_vec()).unwrap(), 3);
        assert_eq!(follower.last_index(), 4);
    }

    #[test]
    fn bad_appends_are_refused_and_change_nothing() {
        let mut leader = DurableLog::open(MemoryKv::new(), group()).unwrap();
        leader.append(1, payloads(3, 1)).unwrap();
        let entries = leader.entries(2, 10, usize::MAX).unwrap();
        let mut follower = DurableLog::open(MemoryKv::new(), group()).unwrap();
        follower.append(1, payloads(1, 1)).unwrap();
        let before = (follower.last_index(), follower.last_chain());
        // Wrong previous term.
        assert!(matches!(
            follower.replicate(1, 9, entries.clone()),
            Err(LogError::PrevMismatch { index: 1 })
        ));
        // A hole.
        assert!(matches!(
            follower.replicate(2, 1, entries.clone()),
            Err(LogError::PrevMismatch { .. })
        ));
        // A tampered payload breaks the chain.
        let mut tampered = entries.clone();
        tampered[1].payload.push(0);
        assert!(matches!(
            follower.replicate(1, 1, tampered),
            Err(LogError::ChainBroken { index: 3 })
        ));
        // Not consecutive.
        let skipped = vec![entries[1].clone()];
        assert!(matches!(
            follower.replicate(1, 1, skipped),
            Err(LogError::NotConsecutive { expected: 2 })
        ));
        // Terms going down, chained correctly all the same.
        let start = follower.chain_at(1).unwrap().unwrap();
        let (c2, c3) = (start.next(3, 2, b"x"), start.next(3, 2, b"x").next(2, 3, b"y"));
        let down = vec![
            LogEntry { term: 3, index: 2, chain: c2, payload: b"x".to_vec() },
            LogEntry { term: 2, index: 3, chain: c3, payload: b"y".to_vec() },
        ];
        assert!(matches!(
            follower.replicate(1, 1, down),
            Err(LogError::TermWentDown { index: 3, term: 2, previous: 3 })
        ));
        assert_eq!((follower.last_index(), follower.last_chain()), before);
        assert_eq!(follower.replicate(1, 1, entries).unwrap(), 3);
        assert_eq!(follower.last_chain(), leader.last_chain());
    }

    #[test]
    fn compaction_keeps_terms_and_chains_and_snapshots_install() {
        let kv = std::sync::Arc::new(MemoryKv::new());
        let mut log = DurableLog::open(kv.clone(), group()).unwrap();
        log.append(1, payloads(4, 1)).unwrap();
        log.append(2, payloads(2, 2)).unwrap();
        let chain4 = log.chain_at(4).unwrap().unwrap();
        log.compact(4, b"state at 4").unwrap();
        assert_eq!(log.snapshot_data().unwrap(), b"state at 4");
        assert_eq!(log.first_index(), 5);
        assert_eq!(log.term_at(4).unwrap(), Some(1));
        assert_eq!(log.chain_at(4).unwrap(), Some(chain4));
        assert_eq!(log.entry(3).unwrap(), None);
        assert!(matches!(log.entries(3, 10, usize::MAX), Err(LogError::OutOfRange { .. })));
        let reopened = DurableLog::open(kv, group()).unwrap();
        assert_eq!((reopened.first_index(), reopened.last_index()), (5, 6));
        // A snapshot that matches keeps the entries after it; one that does not replaces all.
        let mut follower = log;
        let point =
            SnapshotPoint { index: 5, term: 2, chain: follower.chain_at(5).unwrap().unwrap() };
        follower.install_snapshot(point, b"at 5").unwrap();
        assert_eq!((follower.first_index(), follower.last_index()), (6, 6));
        let foreign = SnapshotPoint { index: 9, term: 4, chain: ChainHash::from_bytes([7; 32]) };
        follower.install_snapshot(foreign, b"at 9").unwrap();
        assert_eq!(follower.snapshot_data().unwrap(), b"at 9");
        assert_eq!(
            (follower.first_index(), follower.last_index(), follower.last_term()),
            (10, 9, 4)
        );
        assert_eq!(follower.last_chain(), foreign.chain);
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        // The simulator's disk fails every write while it is set faulty.
        let kv = llmkg_transport::sim::Disk::new();
        let mut log = DurableLog::open(kv.clone(), group()).unwrap();
        log.append(1, payloads(2, 1)).unwrap();
        kv.set_faulty(true);
        let before = (log.last_index(), log.last_chain(), log.hard_state());
        assert!(log.append(2, payloads(1, 2)).is_err());
        assert!(log.save_hard_state(HardState { term: 5, vote: None }).is_err());
        assert!(log.compact(1, b"s").is_err());
        assert_eq!((log.last_index(), log.last_chain(), log.hard_state()), before);
        assert_eq!(log.first_index(), 1);
        kv.set_faulty(false);
        let reopened = DurableLog::open(kv, group()).unwrap();
        assert_eq!((reopened.last_index(), reopened.last_chain()), (before.0, before.1));
    }

    #[test]
    fn groups_share_one_store_under_their_own_namespaces() {
        use llmkg_federation_core::kv::Prefixed;
        let shared = std::sync::Arc::new(MemoryKv::new());
        let (a, b) = (GroupId::from_bytes([1; 32]), GroupId::from_bytes([2; 32]));
        let space = |g: GroupId| Prefixed::namespace(shared.clone(), &g.to_string()).unwrap();
        let mut log_a = DurableLog::open(space(a), a).unwrap();
        let mut log_b = DurableLog::open(space(b), b).unwrap();
        log_a.append(1, payloads(5, 1)).unwrap();
        log_b.append(4, payloads(2, 2)).unwrap();
        log_a.compact(3, b"").unwrap();
        log_b.save_hard_state(HardState { term: 9, vote: None }).unwrap();
        let (log_a, log_b) =
            (DurableLog::open(space(a), a).unwrap(), DurableLog::open(space(b), b).unwrap());
        assert_eq!((log_a.first_index(), log_a.last_index(), log_a.hard_state().term), (4, 5, 0));
        assert_eq!((log_b.first_index(), log_b.last_index(), log_b.hard_state().term), (1, 2, 9));
        assert_eq!(log_b.last_term(), 4);
    }

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        let mut log = DurableLog::open(MemoryKv::new(), group()).unwrap();
        log.append(1, (0..10).map(|i| vec![i; 100]).collect()).unwrap();
        assert_eq!(log.entries(1, 4, usize::MAX).unwrap().len(), 4);
        assert_eq!(log.entries(1, 100, 250).unwrap().len(), 2);
        // At least one entry, however large.
        assert_eq!(log.entries(1, 100, 0).unwrap().len(), 1);
        assert!(matches!(
            log.append(0, vec![vec![1]]),
            Err(LogError::TermWentDown { index: 11, term: 0, previous: 1 })
        ));
        let too_big = vec![0; MAX_ENTRY_LEN + 1];
        assert!(matches!(log.append(2, vec![too_big]), Err(LogError::TooLarge { .. })));
        assert_eq!(log.last_index(), 10);
    }
}
