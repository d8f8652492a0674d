//! The Merkle state tree: a history-independent hash tree over a set of [`TripleId`]s.
//!
//! ## Shape
//!
//! The tree is a 16-ary trie over the hex digits (nibbles) of the ids. A node covering the ids
//! that share a prefix of `d` nibbles is a **leaf** holding those ids, sorted, when there are at
//! most [`LEAF_CAPACITY`] of them, and otherwise a **branch** with one child per next nibble
//! (absent children for empty ranges). The shape is therefore a function of the set alone:
//! equal sets give equal trees and equal [`StateRoot`]s whatever the order of insertion and
//! removal (history independence).
//!
//! ```text
//!   branch ─┬─ 0: leaf [0a.., 0f..]          leaf hash   = H(0x00 ‖ ids in order)
//!           ├─ 1: ∅                           branch hash = H(0x01 ‖ 16 × (child hash | 0³²))
//!           ├─ 2: branch ─┬─ 0: leaf [20..]
//!           │             └─ ...
//!           └─ f: leaf [f3..]
//! ```
//!
//! ## Costs
//!
//! Inserting or removing one id touches one root-to-leaf path: O(log₁₆ n) nodes plus a leaf of
//! at most [`LEAF_CAPACITY`] entries. Hashes are recomputed lazily, once per batch, by
//! [`MerkleTree::root`], so applying a change set of `k` ids costs O(k · log n) hashing.
//! [`MerkleTree::insert_many`] and [`MerkleTree::remove_many`] apply a batch in one descent
//! (each node on the paths visited once, each leaf merged once), and after a large batch in a
//! large tree [`MerkleTree::root`] rehashes the subtrees two levels down on several threads. Neither
//! changes the tree or its root: only how fast they are reached.
//!
//! ## Comparing
//!
//! [`MerkleTree::diff`] walks two trees together and skips every subtree whose hashes agree,
//! so finding the difference of two states costs O(d · log n) for `d` differing ids, not
//! O(n). Set reconciliation between nodes builds on the same walk.
//!
//! ## Summaries and proofs
//!
//! A [`SubtreeSummary`] describes the subtree under any [`NibblePath`]: its hash, its count,
//! and either its 16 children (hash and count) or, when at most [`LEAF_CAPACITY`] ids lie
//! below, the ids themselves. A summary is checked on construction and decoding (its hash
//! recomputes from its content) and against its parent ([`SubtreeSummary::check_child`]), so
//! a peer can walk another peer's tree one verified step at a time.
//!
//! A [`MerkleProof`] shows that an id is present in, or absent from, the set under a
//! [`StateRoot`]: the 15 sibling hashes of each branch on the id's path, then the leaf's ids
//! or an empty slot. [`MerkleProof::verify`] needs only the root and the id.
//!
//! Each entry carries a small `Copy` payload that is *not* hashed (the graph state keeps the
//! dictionary ids of the triple there, to turn a difference of ids back into triples).

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::encoding::{self, DecodeError, TripleId, content_id};

/// Entries of one side of a [`MerkleTree::diff`].
pub type DiffSide<V> = Vec<(TripleId, V)>;

/// The most ids a leaf holds before it splits into a branch.
pub const LEAF_CAPACITY: usize = 32;

/// A leaf's entries grow by this many at a time (see `merge_sorted`).
const LEAF_GROWTH: usize = 4;

/// [`MerkleTree::root`] spreads the rehash over threads only when at least this many ids
/// changed since the last root: below it, the hashing is shorter than starting a thread.
pub const PARALLEL_REHASH_MIN_CHANGES: usize = 256;

/// ...and only in a tree of at least this many ids (a smaller tree rehashes in well under a
/// millisecond).
pub const PARALLEL_REHASH_MIN_LEN: usize = 1 << 16;

content_id!(
    /// The root hash of the Merkle state tree: identifies a set of triples.
    StateRoot
);

content_id!(
    /// The hash of one node of the Merkle state tree (the hash of an absent subtree is all
    /// zeros, see [`NodeHash::ABSENT`]).
    NodeHash
);

impl NodeHash {
    /// What a branch records for an empty child slot: 32 zero bytes.
    pub const ABSENT: NodeHash = NodeHash::from_bytes(ZERO);
}

const ZERO: [u8; 32] = [0; 32];

/// Longest id path, in nibbles.
const MAX_DEPTH: usize = 64;

/// The hash of a leaf holding `ids` (in order).
fn leaf_hash<'a>(ids: impl IntoIterator<Item = &'a TripleId>) -> [u8; 32] {
    // A leaf of at most `LEAF_CAPACITY` ids is laid out in one buffer and hashed in one call
    // (feeding the hasher 32 bytes at a time cost a quarter more); only a leaf at the
    // deepest level can hold more.
    let mut buf = [0u8; 1 + LEAF_CAPACITY * 32];
    let mut len = 1;
    let mut ids = ids.into_iter();
    for id in ids.by_ref() {
        let Some(slot) = buf.get_mut(len..len + 32) else {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&buf[..len]);
            hasher.update(id.as_bytes());
            for id in ids {
                hasher.update(id.as_bytes());
            }
            return *hasher.finalize().as_bytes();
        };
        slot.copy_from_slice(id.as_bytes());
        len += 32;
    }
    *blake3::hash(&buf[..len]).as_bytes()
}

/// The hash of a branch with these 16 child hashes (zeros for empty slots).
fn branch_hash<'a>(children: impl IntoIterator<Item = &'a [u8; 32]>) -> [u8; 32] {
    let mut buf = [0u8; 1 + 16 * 32];
    buf[0] = 0x01;
    for (child, chunk) in children.into_iter().zip(buf[1..].chunks_exact_mut(32)) {
        chunk.copy_from_slice(child);
    }
    *blake3::hash(&buf).as_bytes()
}

/// The hash of the canonical node over `ids` (sorted, distinct, all sharing the first `depth`
/// nibbles) at `depth`, computed without building the node. An empty set hashes as an empty
/// leaf (the caller decides whether that or [`NodeHash::ABSENT`] applies).
pub(crate) fn subtree_hash(ids: &[TripleId], depth: usize) -> [u8; 32] {
    if ids.len() <= LEAF_CAPACITY || depth >= MAX_DEPTH {
        return leaf_hash(ids);
    }
    let mut children = [ZERO; 16];
    let mut rest = ids;
    for (n, child) in children.iter_mut().enumerate() {
        let split = rest.partition_point(|id| nibble(id, depth) <= n);
        let (here, after) = rest.split_at(split);
        if !here.is_empty() {
            *child = subtree_hash(here, depth + 1);
        }
        rest = after;
    }
    branch_hash(&children)
}

/// A path from the root of the tree: up to 64 nibbles (hex digits of an id, most significant
/// first). The empty path names the root.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "Vec<u8>", try_from = "Vec<u8>")]
pub struct NibblePath {
    len: u8,
    /// Nibbles; those past `len` are zero.
    nibbles: [u8; MAX_DEPTH],
}

/// A nibble path was longer than 64 nibbles or held a value above 15.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a nibble path has at most 64 nibbles, each 0..=15")]
pub struct InvalidNibblePath;

impl NibblePath {
    /// The empty path: the root.
    pub const ROOT: NibblePath = NibblePath { len: 0, nibbles: [0; MAX_DEPTH] };

    /// A path from its nibbles (each 0..=15, at most 64 of them).
    pub fn new(nibbles: &[u8]) -> Result<Self, InvalidNibblePath> {
        if nibbles.len() > MAX_DEPTH || nibbles.iter().any(|n| *n > 15) {
            return Err(InvalidNibblePath);
        }
        let mut path = Self::ROOT;
        path.nibbles.iter_mut().zip(nibbles).for_each(|(d, s)| *d = *s);
        path.len = nibbles.len() as u8;
        Ok(path)
    }

    /// The first `len` nibbles of `id` (all 64 if `len` is larger).
    pub fn of_id(id: &TripleId, len: usize) -> Self {
        let len = len.min(MAX_DEPTH);
        let mut path = Self::ROOT;
        for (depth, d) in path.nibbles.iter_mut().take(len).enumerate() {
            *d = nibble(id, depth) as u8;
        }
        path.len = len as u8;
        path
    }

    /// The nibbles.
    pub fn nibbles(&self) -> &[u8] {
        self.nibbles.get(..self.len as usize).unwrap_or(&[])
    }

    /// Number of nibbles: the depth of the node this path names.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True for the root path.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The path one nibble longer, or `None` at 64 nibbles or for a nibble above 15.
    pub fn child(&self, nibble: u8) -> Option<Self> {
        if self.len() >= MAX_DEPTH || nibble > 15 {
            return None;
        }
        let mut child = *self;
        *child.nibbles.get_mut(self.len())? = nibble;
        child.len += 1;
        Some(child)
    }

    /// The path one nibble shorter and the last nibble, or `None` for the root.
    pub fn parent(&self) -> Option<(Self, u8)> {
        let last = self.len().checked_sub(1)?;
        let mut parent = *self;
        let nibble = std::mem::take(parent.nibbles.get_mut(last)?);
        parent.len -= 1;
        Some((parent, nibble))
    }

    /// True if `id` starts with this path.
    pub fn is_prefix_of(&self, id: &TripleId) -> bool {
        self.nibbles().iter().enumerate().all(|(depth, n)| nibble(id, depth) == *n as usize)
    }

    /// True if `other` starts with this path (a path is a prefix of itself).
    pub fn is_prefix_of_path(&self, other: &NibblePath) -> bool {
        other.nibbles().starts_with(self.nibbles())
    }
}

impl Default for NibblePath {
    fn default() -> Self {
        Self::ROOT
    }
}

impl PartialOrd for NibblePath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NibblePath {
    /// Lexicographic on the nibbles: a path sorts before the paths it is a prefix of, and
    /// disjoint subtrees sort in the order of their ids.
    fn cmp(&self, other: &Self) -> Ordering {
        self.nibbles().cmp(other.nibbles())
    }
}

impl fmt::Debug for NibblePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NibblePath(")?;
        for n in self.nibbles() {
            write!(f, "{n:x}")?;
        }
        write!(f, ")")
    }
}

impl From<NibblePath> for Vec<u8> {
    fn from(path: NibblePath) -> Self {
        path.nibbles().to_vec()
    }
}

impl TryFrom<Vec<u8>> for NibblePath {
    type Error = InvalidNibblePath;
    fn try_from(nibbles: Vec<u8>) -> Result<Self, Self::Error> {
        NibblePath::new(&nibbles)
    }
}

#[derive(Clone, Debug)]
struct Node<V> {
    hash: [u8; 32],
    dirty: bool,
    count: usize,
    kind: Kind<V>,
}

#[derive(Clone, Debug)]
enum Kind<V> {
    Leaf(Vec<(TripleId, V)>),
    Branch(Box<Children<V>>),
}

/// A branch's 16 child slots, with a copy of each child's hash as of the last rehash and a
/// bit per child whose copy may be stale.
///
/// Rehashing a branch reads the copies of its clean children here, in one place, instead of
/// one cache miss per child node; only the stale children are visited. Any mutable access to
/// the slots through `DerefMut` marks every child stale (always correct); the batch paths
/// mark exactly the children they change ([`Children::parts`]).
#[derive(Clone, Debug)]
struct Children<V> {
    slots: [Option<Box<Node<V>>>; 16],
    hashes: [[u8; 32]; 16],
    stale: u16,
}

impl<V> Children<V> {
    fn new(slots: [Option<Box<Node<V>>>; 16]) -> Box<Self> {
        Box::new(Children { slots, hashes: [ZERO; 16], stale: u16::MAX })
    }

    /// The slots and the stale bits, for a caller that sets the bit of each child it changes.
    fn parts(&mut self) -> (&mut [Option<Box<Node<V>>>; 16], &mut u16) {
        (&mut self.slots, &mut self.stale)
    }
}

impl<V> std::ops::Deref for Children<V> {
    type Target = [Option<Box<Node<V>>>; 16];
    fn deref(&self) -> &Self::Target {
        &self.slots
    }
}

impl<V> std::ops::DerefMut for Children<V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.stale = u16::MAX;
        &mut self.slots
    }
}

fn nibble(id: &TripleId, depth: usize) -> usize {
    let byte = id.as_bytes().get(depth / 2).copied().unwrap_or(0);
    if depth.is_multiple_of(2) { (byte >> 4) as usize } else { (byte & 0x0f) as usize }
}

/// The threads CPU-bound work may use here (at most 16, the root's fan-out).
///
/// Asked of the OS once per process: [`std::thread::available_parallelism`] reads cgroup files
/// on Linux, which cost more than a small commit's whole apply.
pub(crate) fn available_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(16)))
}

/// Merges `new` (sorted by id, distinct) into `old` (likewise) in place, in id order; an id
/// in both keeps the entry of `old`. Returns how many entries were added.
///
/// A leaf takes one or two new entries per batch: each is put in place (a leaf holds at most
/// [`LEAF_CAPACITY`] entries to shift). The vector grows [`LEAF_GROWTH`] entries at a time:
/// a reallocation per insert cost more than the descent to the leaf, and doubling would leave
/// a large tree's leaves a quarter empty on average.
fn merge_sorted<V: Copy>(old: &mut Vec<(TripleId, V)>, new: &[(TripleId, V)]) -> usize {
    let before = old.len();
    let needed = before + new.len();
    if needed > old.capacity() {
        old.reserve_exact(needed.next_multiple_of(LEAF_GROWTH) - before);
    }
    // Entries of `old` below `from` are below every entry of `new` still to place.
    let mut from = 0;
    for e in new {
        let rest = old.get(from..).unwrap_or_default();
        match rest.binary_search_by(|x| x.0.cmp(&e.0)) {
            Ok(at) => from += at + 1,
            Err(at) => {
                old.insert(from + at, *e);
                from += at + 1;
            }
        }
    }
    old.len() - before
}

impl<V: Copy> Node<V> {
    fn empty_leaf() -> Self {
        Node { hash: ZERO, dirty: true, count: 0, kind: Kind::Leaf(Vec::new()) }
    }

    /// Builds the canonical node for `entries` (sorted, distinct) at `depth`.
    fn build(entries: Vec<(TripleId, V)>, depth: usize) -> Self {
        let count = entries.len();
        // Ids are 64 nibbles long: at depth 64 all remaining entries are equal, so a leaf.
        if count <= LEAF_CAPACITY || depth >= 64 {
            // Buckets grow by doubling: a built leaf holds what it needs and no more.
            let mut entries = entries;
            entries.shrink_to_fit();
            return Node { hash: ZERO, dirty: true, count, kind: Kind::Leaf(entries) };
        }
        let mut buckets: [Vec<(TripleId, V)>; 16] = Default::default();
        for e in entries {
            if let Some(bucket) = buckets.get_mut(nibble(&e.0, depth)) {
                bucket.push(e);
            }
        }
        let children = buckets
            .map(|b| if b.is_empty() { None } else { Some(Box::new(Node::build(b, depth + 1))) });
        Node { hash: ZERO, dirty: true, count, kind: Kind::Branch(Children::new(children)) }
    }

    /// Builds the canonical node for `entries` at `depth`, in any order; of entries with the
    /// same id the first is kept. Each level partitions its entries by their nibble into
    /// buckets of exact size (a counting pass first), and a leaf sorts its own.
    fn build_unsorted(mut entries: Vec<(TripleId, V)>, depth: usize) -> Self {
        if entries.len() <= LEAF_CAPACITY || depth >= 64 {
            // Stable, so the first of equal ids stays first and is the one kept.
            entries.sort_by_key(|e| e.0);
            entries.dedup_by(|a, b| a.0 == b.0);
            entries.shrink_to_fit();
            let count = entries.len();
            return Node { hash: ZERO, dirty: true, count, kind: Kind::Leaf(entries) };
        }
        let mut sizes = [0usize; 16];
        for e in &entries {
            if let Some(n) = sizes.get_mut(nibble(&e.0, depth)) {
                *n += 1;
            }
        }
        let mut buckets: [Vec<(TripleId, V)>; 16] = sizes.map(Vec::with_capacity);
        for e in entries {
            if let Some(bucket) = buckets.get_mut(nibble(&e.0, depth)) {
                bucket.push(e);
            }
        }
        let children = buckets.map(|b| {
            if b.is_empty() { None } else { Some(Box::new(Node::build_unsorted(b, depth + 1))) }
        });
        let count = children.iter().flatten().map(|c| c.count).sum();
        if count <= LEAF_CAPACITY {
            // Repeated ids made this a small set after all: the canonical node is a leaf of
            // the children's entries, which are leaves, in nibble order (so sorted).
            let mut merged = Vec::with_capacity(count);
            for child in children.into_iter().flatten() {
                if let Kind::Leaf(entries) = child.kind {
                    merged.extend(entries);
                }
            }
            return Node { hash: ZERO, dirty: true, count, kind: Kind::Leaf(merged) };
        }
        Node { hash: ZERO, dirty: true, count, kind: Kind::Branch(Children::new(children)) }
    }

    fn insert(&mut self, id: TripleId, value: V, depth: usize) -> bool {
        let inserted = match &mut self.kind {
            Kind::Leaf(entries) => match entries.binary_search_by(|e| e.0.cmp(&id)) {
                Ok(_) => false,
                Err(pos) => {
                    entries.insert(pos, (id, value));
                    true
                }
            },
            Kind::Branch(children) => match children.get_mut(nibble(&id, depth)) {
                Some(slot @ None) => {
                    let mut leaf = Node::empty_leaf();
                    leaf.insert(id, value, depth + 1);
                    *slot = Some(Box::new(leaf));
                    true
                }
                Some(Some(child)) => child.insert(id, value, depth + 1),
                None => false,
            },
        };
        if inserted {
            self.count += 1;
            self.dirty = true;
            if let Kind::Leaf(entries) = &mut self.kind
                && entries.len() > LEAF_CAPACITY
                && depth < 64
            {
                *self = Node::build(std::mem::take(entries), depth);
            }
        }
        inserted
    }

    fn remove(&mut self, id: &TripleId, depth: usize) -> Option<V> {
        let removed = match &mut self.kind {
            Kind::Leaf(entries) => match entries.binary_search_by(|e| e.0.cmp(id)) {
                Ok(pos) => Some(entries.remove(pos).1),
                Err(_) => None,
            },
            Kind::Branch(children) => {
                let slot = children.get_mut(nibble(id, depth))?;
                let child = slot.as_mut()?;
                let removed = child.remove(id, depth + 1);
                if child.count == 0 {
                    *slot = None;
                }
                removed
            }
        };
        if removed.is_some() {
            self.lost(1);
        }
        removed
    }

    /// Accounts for `removed` (> 0) ids gone from this subtree, and keeps the node canonical:
    /// a branch left with a leaf's worth of ids becomes that leaf.
    fn lost(&mut self, removed: usize) {
        self.count -= removed;
        self.dirty = true;
        if matches!(self.kind, Kind::Branch(_)) && self.count <= LEAF_CAPACITY {
            let mut entries = Vec::with_capacity(self.count);
            self.collect(&mut entries);
            self.kind = Kind::Leaf(entries);
        }
    }

    /// Inserts `entries` (sorted by id, distinct) in one descent: each node on their paths is
    /// visited once, and a leaf takes its new entries in one merge. Ids already present keep
    /// their payload. Returns how many were inserted. The node stays canonical.
    fn insert_sorted(&mut self, entries: &[(TripleId, V)], depth: usize) -> usize {
        if entries.is_empty() {
            return 0;
        }
        let inserted = match &mut self.kind {
            Kind::Leaf(old) => {
                let inserted = merge_sorted(old, entries);
                if old.len() > LEAF_CAPACITY && depth < MAX_DEPTH {
                    *self = Node::build(std::mem::take(old), depth);
                    return inserted;
                }
                inserted
            }
            Kind::Branch(children) => {
                let mut inserted = 0;
                let mut rest = entries;
                let (slots, stale) = children.parts();
                for (n, slot) in slots.iter_mut().enumerate() {
                    let split = rest.partition_point(|e| nibble(&e.0, depth) <= n);
                    let (here, after) = rest.split_at(split);
                    rest = after;
                    if here.is_empty() {
                        continue;
                    }
                    *stale |= 1 << n;
                    match slot {
                        Some(child) => inserted += child.insert_sorted(here, depth + 1),
                        None => {
                            inserted += here.len();
                            *slot = Some(Box::new(Node::build(here.to_vec(), depth + 1)));
                        }
                    }
                }
                inserted
            }
        };
        if inserted > 0 {
            self.count += inserted;
            self.dirty = true;
        }
        inserted
    }

    /// Removes `ids` (sorted, distinct) in one descent, like [`Node::insert_sorted`]. Ids
    /// not present are skipped. Returns how many were removed. The node stays canonical.
    fn remove_sorted(&mut self, ids: &[TripleId], depth: usize) -> usize {
        if ids.is_empty() {
            return 0;
        }
        let removed = match &mut self.kind {
            Kind::Leaf(entries) => {
                let before = entries.len();
                let mut gone = ids.iter().peekable();
                entries.retain(|e| {
                    while gone.next_if(|id| **id < e.0).is_some() {}
                    gone.next_if(|id| **id == e.0).is_none()
                });
                before - entries.len()
            }
            Kind::Branch(children) => {
                let mut removed = 0;
                let mut rest = ids;
                let (slots, stale) = children.parts();
                for (n, slot) in slots.iter_mut().enumerate() {
                    let split = rest.partition_point(|id| nibble(id, depth) <= n);
                    let (here, after) = rest.split_at(split);
                    rest = after;
                    if let Some(child) = slot.as_mut()
                        && !here.is_empty()
                    {
                        *stale |= 1 << n;
                        removed += child.remove_sorted(here, depth + 1);
                        if child.count == 0 {
                            *slot = None;
                        }
                    }
                }
                removed
            }
        };
        if removed > 0 {
            self.lost(removed);
        }
        removed
    }

    fn get(&self, id: &TripleId, depth: usize) -> Option<V> {
        match &self.kind {
            Kind::Leaf(entries) => entries
                .binary_search_by(|e| e.0.cmp(id))
                .ok()
                .and_then(|i| entries.get(i))
                .map(|e| e.1),
            Kind::Branch(children) => children.get(nibble(id, depth))?.as_ref()?.get(id, depth + 1),
        }
    }

    /// Appends every entry of this subtree, in id order.
    fn collect(&self, out: &mut Vec<(TripleId, V)>) {
        match &self.kind {
            Kind::Leaf(entries) => out.extend_from_slice(entries),
            Kind::Branch(children) => {
                for child in children.iter().flatten() {
                    child.collect(out);
                }
            }
        }
    }

    fn rehash(&mut self) -> [u8; 32] {
        if !self.dirty {
            return self.hash;
        }
        self.hash = match &mut self.kind {
            Kind::Leaf(entries) => leaf_hash(entries.iter().map(|e| &e.0)),
            Kind::Branch(children) => {
                // Only the stale children are visited; the others' hashes are at hand.
                let Children { slots, hashes, stale } = &mut **children;
                let mut bits = std::mem::take(stale);
                while bits != 0 {
                    let n = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if let (Some(slot), Some(h)) = (slots.get_mut(n), hashes.get_mut(n)) {
                        *h = slot.as_mut().map_or(ZERO, |child| child.rehash());
                    }
                }
                branch_hash(hashes.iter())
            }
        };
        self.dirty = false;
        self.hash
    }

    /// Collects into `out` the stale nodes `levels` below this one (and stale leaves above
    /// that level): nodes whose subtrees share nothing, so threads may rehash them apart.
    fn stale_below<'a>(&'a mut self, levels: usize, out: &mut Vec<&'a mut Node<V>>) {
        if !self.dirty {
            return;
        }
        if levels == 0 || matches!(self.kind, Kind::Leaf(_)) {
            out.push(self);
        } else if let Kind::Branch(children) = &mut self.kind {
            for child in children.iter_mut().flatten() {
                child.stale_below(levels - 1, out);
            }
        }
    }

    /// The hash of this node: the cached one if up to date, else recomputed (without caching)
    /// from the children whose cached hashes are stale.
    fn current_hash(&self) -> [u8; 32] {
        if !self.dirty {
            return self.hash;
        }
        match &self.kind {
            Kind::Leaf(entries) => leaf_hash(entries.iter().map(|e| &e.0)),
            Kind::Branch(children) => branch_hash(&children_hashes(children)),
        }
    }

    /// The entries of this subtree whose ids start with `prefix`.
    fn collect_under(&self, prefix: &NibblePath, out: &mut Vec<(TripleId, V)>) {
        match &self.kind {
            Kind::Leaf(entries) => {
                out.extend(entries.iter().filter(|e| prefix.is_prefix_of(&e.0)).copied())
            }
            Kind::Branch(_) => self.collect(out),
        }
    }

    fn heap_bytes(&self) -> usize {
        match &self.kind {
            Kind::Leaf(entries) => entries.capacity() * std::mem::size_of::<(TripleId, V)>(),
            Kind::Branch(children) => {
                std::mem::size_of::<Children<V>>()
                    + children
                        .iter()
                        .flatten()
                        .map(|c| std::mem::size_of::<Node<V>>() + c.heap_bytes())
                        .sum::<usize>()
            }
        }
    }
}

fn children_hashes<V: Copy>(children: &[Option<Box<Node<V>>>; 16]) -> [[u8; 32]; 16] {
    let mut hashes = [ZERO; 16];
    for (child, h) in children.iter().zip(hashes.iter_mut()) {
        if let Some(child) = child {
            *h = child.current_hash();
        }
    }
    hashes
}

/// One child slot of a branch summary: the child's hash and how many ids lie below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSummary {
    /// The child's hash.
    pub hash: NodeHash,
    /// The number of ids below the child (claimed; only a summary with ids proves a count).
    pub count: u64,
}

/// What a [`SubtreeSummary`] says about the content of its subtree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SummaryBody {
    /// More than [`LEAF_CAPACITY`] ids lie below: the 16 children (`None` for an empty
    /// range), whose hashes make up the subtree's branch hash.
    Children(Box<[Option<ChildSummary>; 16]>),
    /// At most [`LEAF_CAPACITY`] ids lie below: all of them, sorted.
    Ids(Vec<TripleId>),
}

/// A summary of the subtree under a [`NibblePath`]; see [`MerkleTree::summary`].
///
/// A value of this type is consistent: its hash recomputes from its body, its count matches
/// its body, its ids are sorted, distinct and under its prefix, and it is a branch exactly
/// when more than [`LEAF_CAPACITY`] ids lie below (checked by the decoder too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSummary")]
pub struct SubtreeSummary {
    prefix: NibblePath,
    hash: NodeHash,
    count: u64,
    body: SummaryBody,
}

#[derive(Deserialize)]
struct RawSummary {
    prefix: NibblePath,
    hash: NodeHash,
    count: u64,
    body: SummaryBody,
}

/// A summary or proof is inconsistent or does not match what it is checked against.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SummaryError {
    /// The summary's hash does not recompute from its body, or its count does not match.
    #[error("the summary's hash or count does not match its content")]
    Inconsistent,
    /// The summary's shape is not one the canonical tree has (ids unsorted, repeated, outside
    /// the prefix, too many for a leaf, or a branch over too few ids).
    #[error("the summary is not canonical: {0}")]
    NonCanonical(&'static str),
    /// The child summary is not for a child of the parent's prefix.
    #[error("not a child of the parent's prefix")]
    NotAChild,
    /// The child's hash or count differs from what the parent records for it.
    #[error("the child does not match the parent")]
    ChildMismatch,
    /// The summary's hash is not the expected root.
    #[error("the summary's hash is not the state root")]
    RootMismatch,
    /// The bytes do not decode to a summary.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Largest encoded [`SubtreeSummary`]: a 64-nibble prefix and 16 children, or 32 ids.
pub const MAX_SUMMARY_BYTES: usize = 1024 + 16 * (1 + 32 + 10) + 1 + 10 + 32 + 65 + 16;

impl TryFrom<RawSummary> for SubtreeSummary {
    type Error = SummaryError;
    fn try_from(raw: RawSummary) -> Result<Self, Self::Error> {
        let s =
            SubtreeSummary { prefix: raw.prefix, hash: raw.hash, count: raw.count, body: raw.body };
        s.check()?;
        Ok(s)
    }
}

/// Checks that `ids` are sorted, distinct, under `prefix` and few enough for a leaf.
fn check_leaf_ids(ids: &[TripleId], prefix: &NibblePath) -> Result<(), &'static str> {
    if ids.len() > LEAF_CAPACITY {
        return Err("more ids than a leaf holds");
    }
    if !ids.windows(2).all(|w| matches!(w, [a, b] if a < b)) {
        return Err("ids not sorted and distinct");
    }
    if !ids.iter().all(|id| prefix.is_prefix_of(id)) {
        return Err("an id outside the prefix");
    }
    Ok(())
}

/// The hash of the subtree under `prefix` holding `ids` (at most a leaf's worth, sorted):
/// a leaf hash, or [`NodeHash::ABSENT`] for no id below a non-root prefix.
fn small_subtree_hash(ids: &[TripleId], prefix: &NibblePath) -> [u8; 32] {
    if ids.is_empty() && !prefix.is_empty() { ZERO } else { leaf_hash(ids) }
}

impl SubtreeSummary {
    fn check(&self) -> Result<(), SummaryError> {
        match &self.body {
            SummaryBody::Ids(ids) => {
                check_leaf_ids(ids, &self.prefix).map_err(SummaryError::NonCanonical)?;
                if self.count != ids.len() as u64
                    || self.hash.as_bytes() != &small_subtree_hash(ids, &self.prefix)
                {
                    return Err(SummaryError::Inconsistent);
                }
            }
            SummaryBody::Children(children) => {
                if self.prefix.len() >= MAX_DEPTH {
                    return Err(SummaryError::NonCanonical("a branch at full depth"));
                }
                let mut hashes = [ZERO; 16];
                let mut total: u64 = 0;
                for (child, h) in children.iter().zip(hashes.iter_mut()) {
                    if let Some(c) = child {
                        if c.count == 0 || c.hash == NodeHash::ABSENT {
                            return Err(SummaryError::NonCanonical("an empty child recorded"));
                        }
                        *h = *c.hash.as_bytes();
                        total = total.checked_add(c.count).ok_or(SummaryError::Inconsistent)?;
                    }
                }
                if total <= LEAF_CAPACITY as u64 {
                    return Err(SummaryError::NonCanonical("a branch over a leaf's worth of ids"));
                }
                if total != self.count || self.hash.as_bytes() != &branch_hash(&hashes) {
                    return Err(SummaryError::Inconsistent);
                }
            }
        }
        Ok(())
    }

    /// The path of the summarized subtree.
    pub fn prefix(&self) -> &NibblePath {
        &self.prefix
    }

    /// The subtree's hash ([`NodeHash::ABSENT`] for an empty subtree below the root; the
    /// root of an empty tree is the hash of an empty leaf).
    pub fn hash(&self) -> NodeHash {
        self.hash
    }

    /// The number of ids below.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The children or the ids.
    pub fn body(&self) -> &SummaryBody {
        &self.body
    }

    /// The ids, if at most [`LEAF_CAPACITY`] lie below.
    pub fn ids(&self) -> Option<&[TripleId]> {
        match &self.body {
            SummaryBody::Ids(ids) => Some(ids),
            SummaryBody::Children(_) => None,
        }
    }

    /// Checks that this summary is the root summary of the state `root`.
    pub fn check_root(&self, root: &StateRoot) -> Result<(), SummaryError> {
        if self.prefix.is_empty() && self.hash.as_bytes() == root.as_bytes() {
            Ok(())
        } else {
            Err(SummaryError::RootMismatch)
        }
    }

    /// Checks that `child` summarizes a child subtree of `self` as `self` records it: the
    /// hash and count of its slot (empty slot: count 0), or, when `self` lists ids, exactly
    /// the ids under the child's prefix. Together with [`SubtreeSummary::check_root`] this
    /// verifies a walk down a peer's tree step by step.
    pub fn check_child(&self, child: &SubtreeSummary) -> Result<(), SummaryError> {
        let (parent, n) = child.prefix.parent().ok_or(SummaryError::NotAChild)?;
        if parent != self.prefix {
            return Err(SummaryError::NotAChild);
        }
        let matches = match &self.body {
            SummaryBody::Children(children) => match children.get(n as usize) {
                Some(Some(slot)) => slot.hash == child.hash && slot.count == child.count,
                Some(None) => child.count == 0,
                None => false,
            },
            SummaryBody::Ids(ids) => {
                let below = ids.iter().filter(|id| child.prefix.is_prefix_of(id));
                child.ids().is_some_and(|c| below.eq(c.iter()))
            }
        };
        if matches { Ok(()) } else { Err(SummaryError::ChildMismatch) }
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// Decodes and checks a summary (at most [`MAX_SUMMARY_BYTES`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, SummaryError> {
        Ok(encoding::decode_with_limit(bytes, MAX_SUMMARY_BYTES)?)
    }
}

/// Whether an id is in the set a [`MerkleProof`] was verified against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// The id is in the set.
    Present,
    /// The id is not in the set.
    Absent,
}

/// Where the path of a [`MerkleProof`] ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProofEnd {
    /// The last branch's slot for the id is empty: no id with that prefix.
    EmptySlot,
    /// The leaf on the id's path, with all its ids in order.
    Leaf(Vec<TripleId>),
}

/// A proof that an id is present in, or absent from, the set under a [`StateRoot`]; see
/// [`MerkleTree::prove`] and [`MerkleProof::verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawProof")]
pub struct MerkleProof {
    /// For each branch on the path, from the root: the hashes of the 15 other child slots in
    /// slot order (zeros for empty ones).
    branches: Vec<[NodeHash; 15]>,
    end: ProofEnd,
}

#[derive(Deserialize)]
struct RawProof {
    branches: Vec<[NodeHash; 15]>,
    end: ProofEnd,
}

impl TryFrom<RawProof> for MerkleProof {
    type Error = ProofError;
    fn try_from(raw: RawProof) -> Result<Self, Self::Error> {
        let proof = MerkleProof { branches: raw.branches, end: raw.end };
        proof.check_shape()?;
        Ok(proof)
    }
}

/// A [`MerkleProof`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The proof has a shape the canonical tree cannot have: a path longer than 64 branches,
    /// an empty slot with no branch, a leaf with too many ids, ids unsorted or repeated, ids
    /// outside the leaf's position, or an empty leaf below the root.
    #[error("malformed proof: {0}")]
    Malformed(&'static str),
    /// The path's slot for the id holds a hash where the proof claims an empty slot, or the
    /// other way round (only detectable as a root mismatch), or the recomputed root differs.
    #[error("the proof does not lead to the expected state root")]
    RootMismatch,
    /// The bytes do not decode to a proof.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Largest encoded [`MerkleProof`]: 64 branches of 15 hashes and a full leaf.
pub const MAX_PROOF_BYTES: usize = 2 + 64 * 15 * 32 + 2 + 32 * 32 + 8;

impl MerkleProof {
    fn check_shape(&self) -> Result<(), ProofError> {
        if self.branches.len() > MAX_DEPTH {
            return Err(ProofError::Malformed("a path longer than the ids"));
        }
        match &self.end {
            ProofEnd::EmptySlot if self.branches.is_empty() => {
                Err(ProofError::Malformed("an empty slot without a branch"))
            }
            ProofEnd::Leaf(ids) if ids.len() > LEAF_CAPACITY => {
                Err(ProofError::Malformed("more ids than a leaf holds"))
            }
            ProofEnd::Leaf(ids) if ids.is_empty() && !self.branches.is_empty() => {
                Err(ProofError::Malformed("an empty leaf below the root"))
            }
            _ => Ok(()),
        }
    }

    /// Number of branches on the path (the depth of its end).
    pub fn depth(&self) -> usize {
        self.branches.len()
    }

    /// Where the path ends.
    pub fn end(&self) -> &ProofEnd {
        &self.end
    }

    /// Verifies the proof for `id` against `root` and says whether `id` is in the set. The
    /// path is recomputed from `id`'s nibbles, so a proof made for another id, for another
    /// state, or altered in any byte is refused (short of a BLAKE3 collision), and a leaf must
    /// be one the canonical tree can hold at that position: sorted, distinct ids sharing the
    /// path's prefix, at most [`LEAF_CAPACITY`] of them.
    pub fn verify(&self, root: &StateRoot, id: &TripleId) -> Result<Membership, ProofError> {
        self.check_shape()?;
        let depth = self.branches.len();
        let (mut hash, membership) = match &self.end {
            ProofEnd::EmptySlot => (ZERO, Membership::Absent),
            ProofEnd::Leaf(ids) => {
                check_leaf_ids(ids, &NibblePath::of_id(id, depth))
                    .map_err(ProofError::Malformed)?;
                let present = ids.binary_search(id).is_ok();
                (leaf_hash(ids), if present { Membership::Present } else { Membership::Absent })
            }
        };
        for (level, siblings) in self.branches.iter().enumerate().rev() {
            let slot = nibble(id, level);
            let mut children = [ZERO; 16];
            let mut others = siblings.iter();
            for (n, child) in children.iter_mut().enumerate() {
                *child = if n == slot {
                    hash
                } else {
                    *others.next().ok_or(ProofError::Malformed("missing sibling"))?.as_bytes()
                };
            }
            hash = branch_hash(&children);
        }
        if &hash == root.as_bytes() { Ok(membership) } else { Err(ProofError::RootMismatch) }
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// Decodes a proof (at most [`MAX_PROOF_BYTES`]), checking its shape.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProofError> {
        Ok(encoding::decode_with_limit(bytes, MAX_PROOF_BYTES)?)
    }
}

/// One node of a frontier of the tree (see `MerkleTree::frontier`).
pub(crate) struct FrontierNode<V> {
    pub(crate) prefix: NibblePath,
    pub(crate) hash: [u8; 32],
    pub(crate) entries: Vec<(TripleId, V)>,
}

/// Stale subtrees of a [`MerkleTree`], handed out one at a time to the threads that rehash
/// them: a thread takes the next subtree whenever it finishes one, so a thread that joins
/// late, or that the machine slows, still takes an even share. See
/// [`MerkleTree::rehash_queue`].
pub(crate) struct RehashQueue<'a, V>(std::sync::Mutex<Vec<&'a mut Node<V>>>);

impl<V: Copy + Send> RehashQueue<'_, V> {
    /// Rehashes subtrees until none is left, on this thread and `threads - 1` more (scoped;
    /// a thread the system refuses leaves its share to the others).
    pub(crate) fn work_on(&self, threads: usize) {
        std::thread::scope(|scope| {
            for _ in 1..threads {
                let _ = std::thread::Builder::new().spawn_scoped(scope, || self.work());
            }
            self.work();
        });
    }

    /// Rehashes subtrees until none is left.
    pub(crate) fn work(&self) {
        loop {
            // No code panics while holding the lock; if one did, the list is still whole.
            let next = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
            let Some(node) = next else { return };
            node.rehash();
        }
    }
}

/// A history-independent Merkle tree over a set of [`TripleId`]s, each with an unhashed
/// payload `V`. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct MerkleTree<V: Copy = ()> {
    root: Node<V>,
    /// Ids inserted or removed since the hashes were last brought up to date: what decides
    /// whether [`MerkleTree::root`] spreads the rehash over threads.
    pending: usize,
}

impl<V: Copy> Default for MerkleTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy> MerkleTree<V> {
    /// An empty tree.
    pub fn new() -> Self {
        MerkleTree { root: Node::empty_leaf(), pending: 0 }
    }

    /// Builds a tree from entries in any order (duplicates keep the first payload).
    ///
    /// The entries are not sorted first: they are partitioned by nibble level by level, as
    /// the trie's shape demands anyway, and only each leaf's few entries are sorted.
    pub fn from_entries(entries: impl IntoIterator<Item = (TripleId, V)>) -> Self {
        let root = Node::build_unsorted(entries.into_iter().collect(), 0);
        let pending = root.count;
        MerkleTree { root, pending }
    }

    /// Number of ids in the tree.
    pub fn len(&self) -> usize {
        self.root.count
    }

    /// True if the tree holds no id.
    pub fn is_empty(&self) -> bool {
        self.root.count == 0
    }

    /// Inserts `id`; returns false (and keeps the old payload) if it was present.
    pub fn insert(&mut self, id: TripleId, value: V) -> bool {
        let inserted = self.root.insert(id, value, 0);
        self.pending += usize::from(inserted);
        inserted
    }

    /// Removes `id`, returning its payload if it was present.
    pub fn remove(&mut self, id: &TripleId) -> Option<V> {
        let removed = self.root.remove(id, 0);
        self.pending += usize::from(removed.is_some());
        removed
    }

    /// Inserts many entries at once: the same tree as inserting them one by one (ids already
    /// present keep their payload), but each node on their paths is visited once and each leaf
    /// merged once. `entries` need not be sorted. Returns how many were inserted.
    pub fn insert_many(&mut self, mut entries: Vec<(TripleId, V)>) -> usize {
        entries.sort_unstable_by_key(|e| e.0);
        entries.dedup_by(|a, b| a.0 == b.0);
        let inserted = self.root.insert_sorted(&entries, 0);
        self.pending += inserted;
        inserted
    }

    /// Removes many ids at once, like [`MerkleTree::insert_many`]: the same tree as removing
    /// them one by one. Ids not present are skipped. Returns how many were removed.
    pub fn remove_many(&mut self, mut ids: Vec<TripleId>) -> usize {
        ids.sort_unstable();
        ids.dedup();
        let removed = self.root.remove_sorted(&ids, 0);
        self.pending += removed;
        removed
    }

    /// The payload of `id`, if present.
    pub fn get(&self, id: &TripleId) -> Option<V> {
        self.root.get(id, 0)
    }

    /// True if `id` is present.
    pub fn contains(&self, id: &TripleId) -> bool {
        self.get(id).is_some()
    }

    /// All entries, in id order.
    pub fn entries(&self) -> Vec<(TripleId, V)> {
        let mut out = Vec::with_capacity(self.len());
        self.root.collect(&mut out);
        out
    }

    /// The root hash, recomputing the hashes of the nodes changed since the last call.
    ///
    /// When many ids changed in a large tree ([`PARALLEL_REHASH_MIN_CHANGES`] and
    /// [`PARALLEL_REHASH_MIN_LEN`]), the subtrees two levels below the root are rehashed on
    /// up to [`std::thread::available_parallelism`] scoped threads, each taking the next
    /// stale subtree when done with one; the root is the same either way.
    pub fn root(&mut self) -> StateRoot
    where
        V: Send,
    {
        let threads = if self.threads_pay_for(self.pending) { available_threads() } else { 1 };
        self.root_on(threads)
    }

    /// True if rehashing after `changes` inserted or removed ids pays for threads here: enough
    /// changes ([`PARALLEL_REHASH_MIN_CHANGES`]) in a large enough tree
    /// ([`PARALLEL_REHASH_MIN_LEN`]).
    pub(crate) fn threads_pay_for(&self, changes: usize) -> bool {
        changes >= PARALLEL_REHASH_MIN_CHANGES && self.len() >= PARALLEL_REHASH_MIN_LEN
    }

    /// [`MerkleTree::root`] on at most `threads` threads (scoped, the calling one included),
    /// sharing a [`RehashQueue`].
    pub(crate) fn root_on(&mut self, threads: usize) -> StateRoot
    where
        V: Send,
    {
        if threads >= 2 && self.root.dirty {
            self.rehash_queue().work_on(threads);
        }
        self.pending = 0;
        StateRoot::from_bytes(self.root.rehash())
    }

    /// The stale subtrees two levels below the root (up to 256), as a queue any number of
    /// threads may rehash together ([`RehashQueue::work`]). Once the queue is worked off and
    /// dropped, [`MerkleTree::root`] has only the levels above it left to hash: the same root
    /// as without the queue, since each subtree's hash depends on that subtree alone.
    pub(crate) fn rehash_queue(&mut self) -> RehashQueue<'_, V> {
        let mut stale = Vec::with_capacity(256);
        self.root.stale_below(2, &mut stale);
        RehashQueue(std::sync::Mutex::new(stale))
    }

    /// The root hash without updating the cached hashes: cheap when up to date, else the
    /// stale part of the tree is rehashed for this call only.
    pub fn current_root(&self) -> StateRoot {
        StateRoot::from_bytes(self.root.current_hash())
    }

    /// The root hash if it is up to date (no change since the last [`MerkleTree::root`]).
    pub fn clean_root(&self) -> Option<StateRoot> {
        (!self.root.dirty).then(|| StateRoot::from_bytes(self.root.hash))
    }

    /// The symmetric difference with `other`: entries only in `self`, and entries only in
    /// `other`, each in id order. Subtrees with equal hashes are skipped; subtrees whose
    /// hashes are stale (changed since the last [`MerkleTree::root`]) are compared entry by
    /// entry, so the result is always exact.
    pub fn diff<W: Copy>(&self, other: &MerkleTree<W>) -> (DiffSide<V>, DiffSide<W>) {
        let (mut left, mut right) = (Vec::new(), Vec::new());
        diff_nodes(Some(&self.root), Some(&other.root), &mut left, &mut right);
        (left, right)
    }

    /// Approximate heap bytes used by the tree (entries and nodes).
    pub fn heap_bytes(&self) -> usize {
        self.root.heap_bytes()
    }

    /// Builds a tree from entries already sorted by id and distinct (the caller checked).
    pub(crate) fn from_sorted_entries(entries: Vec<(TripleId, V)>) -> Self {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        let pending = entries.len();
        MerkleTree { root: Node::build(entries, 0), pending }
    }

    /// The node at `prefix` if the tree has one there, else the leaf or empty slot the
    /// prefix falls into (with its depth).
    fn descend(&self, prefix: &NibblePath) -> (Option<&Node<V>>, usize) {
        let mut node = &self.root;
        for (depth, n) in prefix.nibbles().iter().enumerate() {
            match &node.kind {
                Kind::Leaf(_) => return (Some(node), depth),
                Kind::Branch(children) => match children.get(*n as usize) {
                    Some(Some(child)) => node = child,
                    _ => return (None, depth + 1),
                },
            }
        }
        (Some(node), prefix.len())
    }

    /// A summary of the subtree under `prefix`: its hash and count, and its 16 children or,
    /// when at most [`LEAF_CAPACITY`] ids lie below, the ids. A prefix inside a leaf gets the
    /// leaf's ids under it, an empty range count 0 and [`NodeHash::ABSENT`]. Uses the cached
    /// hashes, recomputing stale ones on the way (call [`MerkleTree::root`] after a batch of
    /// changes to keep this cheap).
    pub fn summary(&self, prefix: &NibblePath) -> SubtreeSummary {
        let prefix = *prefix;
        let ids_summary = |ids: Vec<TripleId>| SubtreeSummary {
            prefix,
            hash: NodeHash::from_bytes(small_subtree_hash(&ids, &prefix)),
            count: ids.len() as u64,
            body: SummaryBody::Ids(ids),
        };
        match self.descend(&prefix) {
            (None, _) => ids_summary(Vec::new()),
            (Some(node), depth) if depth < prefix.len() || matches!(node.kind, Kind::Leaf(_)) => {
                let mut entries = Vec::new();
                node.collect_under(&prefix, &mut entries);
                ids_summary(entries.into_iter().map(|e| e.0).collect())
            }
            (Some(node), _) => {
                let mut children: [Option<ChildSummary>; 16] = [None; 16];
                if let Kind::Branch(nodes) = &node.kind {
                    for (slot, child) in children.iter_mut().zip(nodes.iter()) {
                        *slot = child.as_ref().map(|c| ChildSummary {
                            hash: NodeHash::from_bytes(c.current_hash()),
                            count: c.count as u64,
                        });
                    }
                }
                SubtreeSummary {
                    prefix,
                    hash: NodeHash::from_bytes(node.current_hash()),
                    count: node.count as u64,
                    body: SummaryBody::Children(Box::new(children)),
                }
            }
        }
    }

    /// A proof that `id` is present in or absent from this tree, checkable against
    /// [`MerkleTree::root`] with [`MerkleProof::verify`]. Uses the cached hashes, recomputing
    /// stale ones on the way.
    pub fn prove(&self, id: &TripleId) -> MerkleProof {
        let mut branches = Vec::new();
        let mut node = &self.root;
        let mut depth = 0;
        loop {
            match &node.kind {
                Kind::Leaf(entries) => {
                    let ids = entries.iter().map(|e| e.0).collect();
                    return MerkleProof { branches, end: ProofEnd::Leaf(ids) };
                }
                Kind::Branch(children) => {
                    let slot = nibble(id, depth);
                    let hashes = children_hashes(children);
                    let mut siblings = [NodeHash::ABSENT; 15];
                    let others = hashes.iter().enumerate().filter(|(n, _)| *n != slot);
                    for (s, (_, h)) in siblings.iter_mut().zip(others) {
                        *s = NodeHash::from_bytes(*h);
                    }
                    branches.push(siblings);
                    match children.get(slot) {
                        Some(Some(child)) => node = child,
                        _ => return MerkleProof { branches, end: ProofEnd::EmptySlot },
                    }
                    depth += 1;
                }
            }
        }
    }

    /// A frontier of the tree: nodes that together hold every id exactly once, in id order,
    /// each as small as needed for `fits(count, weight)` — the sum of `weight` over its
    /// entries — to hold, descending from the root; a leaf is taken whether or not it fits.
    /// An empty tree has an empty frontier.
    pub(crate) fn frontier(
        &self,
        weight: &impl Fn(&V) -> u64,
        fits: &impl Fn(usize, u64) -> bool,
    ) -> Vec<FrontierNode<V>> {
        fn walk<V: Copy>(
            node: &Node<V>,
            prefix: NibblePath,
            weight: &impl Fn(&V) -> u64,
            fits: &impl Fn(usize, u64) -> bool,
            out: &mut Vec<FrontierNode<V>>,
        ) {
            let mut entries = Vec::with_capacity(node.count);
            node.collect(&mut entries);
            let total: u64 = entries.iter().map(|e| weight(&e.1)).sum();
            match &node.kind {
                Kind::Branch(children) if !fits(node.count, total) => {
                    drop(entries);
                    for (n, child) in children.iter().enumerate() {
                        if let (Some(child), Some(p)) = (child, prefix.child(n as u8)) {
                            walk(child, p, weight, fits, out);
                        }
                    }
                }
                _ => out.push(FrontierNode { prefix, hash: node.current_hash(), entries }),
            }
        }
        let mut out = Vec::new();
        if !self.is_empty() {
            walk(&self.root, NibblePath::ROOT, weight, fits, &mut out);
        }
        out
    }
}

/// Recomputes the root hash from a frontier of `(prefix, hash, count)` in path order (as
/// [`MerkleTree`] frontiers and snapshot cuts are): every id must be covered exactly once,
/// the rebuilt branches must each hold more than [`LEAF_CAPACITY`] ids, and frontier nodes
/// must be non-empty. Returns the root and the total count, or why the frontier is refused.
pub(crate) fn root_of_frontier(
    nodes: &[(NibblePath, NodeHash, u64)],
) -> Result<(StateRoot, u64), &'static str> {
    fn fold(
        nodes: &[(NibblePath, NodeHash, u64)],
        next: &mut usize,
        prefix: NibblePath,
    ) -> Result<([u8; 32], u64), &'static str> {
        let (p, h, c) = nodes.get(*next).ok_or("the frontier has a gap")?;
        if *p == prefix {
            if *c == 0 || *h == NodeHash::ABSENT {
                return Err("an empty frontier node");
            }
            *next += 1;
            return Ok((*h.as_bytes(), *c));
        }
        if !prefix.is_prefix_of_path(p) {
            return Err("the frontier has a gap or is out of order");
        }
        let mut children = [ZERO; 16];
        let mut count: u64 = 0;
        for (n, child) in children.iter_mut().enumerate() {
            let Some(child_prefix) = prefix.child(n as u8) else {
                return Err("the frontier is deeper than the ids");
            };
            if nodes.get(*next).is_some_and(|(p, _, _)| child_prefix.is_prefix_of_path(p)) {
                let (h, c) = fold(nodes, next, child_prefix)?;
                *child = h;
                count = count.checked_add(c).ok_or("counts overflow")?;
            }
        }
        if count <= LEAF_CAPACITY as u64 {
            return Err("a branch over a leaf's worth of ids");
        }
        Ok((branch_hash(&children), count))
    }
    if nodes.is_empty() {
        return Ok((StateRoot::from_bytes(leaf_hash([])), 0));
    }
    let mut next = 0;
    let (root, count) = fold(nodes, &mut next, NibblePath::ROOT)?;
    if next != nodes.len() {
        return Err("the frontier has nodes out of order or repeated");
    }
    Ok((StateRoot::from_bytes(root), count))
}

fn diff_nodes<V: Copy, W: Copy>(
    a: Option<&Node<V>>,
    b: Option<&Node<W>>,
    left: &mut Vec<(TripleId, V)>,
    right: &mut Vec<(TripleId, W)>,
) {
    match (a, b) {
        (None, None) => {}
        (Some(a), None) => a.collect(left),
        (None, Some(b)) => b.collect(right),
        (Some(a), Some(b)) => {
            if !a.dirty && !b.dirty && a.hash == b.hash {
                return;
            }
            if let (Kind::Branch(ca), Kind::Branch(cb)) = (&a.kind, &b.kind) {
                for (x, y) in ca.iter().zip(cb.iter()) {
                    diff_nodes(x.as_deref(), y.as_deref(), left, right);
                }
                return;
            }
            let (mut xs, mut ys) = (Vec::with_capacity(a.count), Vec::with_capacity(b.count));
            a.collect(&mut xs);
            b.collect(&mut ys);
            let (mut i, mut j) = (xs.into_iter().peekable(), ys.into_iter().peekable());
            loop {
                match (i.peek(), j.peek()) {
                    (Some(x), Some(y)) => match x.0.cmp(&y.0) {
                        std::cmp::Ordering::Less => left.extend(i.next()),
                        std::cmp::Ordering::Greater => right.extend(j.next()),
                        std::cmp::Ordering::Equal => {
                            i.next();
                            j.next();
                        }
                    },
                    (Some(_), None) => left.extend(i.next()),
                    (None, Some(_)) => right.extend(j.next()),
                    (None, None) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> TripleId {
        TripleId::from_bytes(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    #[test]
    fn empty_trees_agree() {
        let mut a = MerkleTree::<()>::new();
        let mut b = MerkleTree::<()>::from_entries([]);
        assert_eq!(a.root(), b.root());
    }

    #[test]
    fn insert_then_remove_returns_to_the_same_root() {
        let mut t = MerkleTree::new();
        for n in 0..100 {
            t.insert(id(n), ());
        }
        let before = t.root();
        for n in 100..1_000 {
            t.insert(id(n), ());
        }
        assert_ne!(t.root(), before);
        for n in 100..1_000 {
            assert_eq!(t.remove(&id(n)), Some(()));
        }
        assert_eq!(t.root(), before);
        assert_eq!(t.len(), 100);
        assert_eq!(t.remove(&id(5_000)), None);
    }

    #[test]
    fn a_stale_tree_still_diffs_exactly() {
        let mut a = MerkleTree::new();
        let mut b = MerkleTree::new();
        for n in 0..500 {
            a.insert(id(n), ());
            b.insert(id(n), ());
        }
        a.root();
        b.root();
        b.insert(id(9_999), ());
        b.remove(&id(3));
        let (only_a, only_b) = a.diff(&b);
        assert_eq!(only_a.iter().map(|e| e.0).collect::<Vec<_>>(), vec![id(3)]);
        assert_eq!(only_b.iter().map(|e| e.0).collect::<Vec<_>>(), vec![id(9_999)]);
    }
}
