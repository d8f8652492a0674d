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
//!
//! ## Comparing
//!
//! [`MerkleTree::diff`] walks two trees together and skips every subtree whose hashes agree,
//! so finding the difference of two states costs O(d · log n) for `d` differing ids, not
//! O(n). Set reconciliation between nodes builds on the same walk.
//!
//! Each entry carries a small `Copy` payload that is *not* hashed (the graph state keeps the
//! dictionary ids of the triple there, to turn a difference of ids back into triples).

use crate::encoding::{TripleId, content_id};

/// Entries of one side of a [`MerkleTree::diff`].
pub type DiffSide<V> = Vec<(TripleId, V)>;

/// The most ids a leaf holds before it splits into a branch.
pub const LEAF_CAPACITY: usize = 32;

content_id!(
    /// The root hash of the Merkle state tree: identifies a set of triples.
    StateRoot
);

const ZERO: [u8; 32] = [0; 32];

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
    Branch(Box<[Option<Box<Node<V>>>; 16]>),
}

fn nibble(id: &TripleId, depth: usize) -> usize {
    let byte = id.as_bytes().get(depth / 2).copied().unwrap_or(0);
    if depth.is_multiple_of(2) { (byte >> 4) as usize } else { (byte & 0x0f) as usize }
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
        Node { hash: ZERO, dirty: true, count, kind: Kind::Branch(Box::new(children)) }
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
            self.count -= 1;
            self.dirty = true;
            if matches!(self.kind, Kind::Branch(_)) && self.count <= LEAF_CAPACITY {
                let mut entries = Vec::with_capacity(self.count);
                self.collect(&mut entries);
                self.kind = Kind::Leaf(entries);
            }
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
        let mut hasher = blake3::Hasher::new();
        match &mut self.kind {
            Kind::Leaf(entries) => {
                hasher.update(&[0x00]);
                for (id, _) in entries.iter() {
                    hasher.update(id.as_bytes());
                }
            }
            Kind::Branch(children) => {
                let mut buf = [0u8; 1 + 16 * 32];
                buf[0] = 0x01;
                for (child, chunk) in children.iter_mut().zip(buf[1..].chunks_exact_mut(32)) {
                    if let Some(child) = child {
                        chunk.copy_from_slice(&child.rehash());
                    }
                }
                hasher.update(&buf);
            }
        }
        self.hash = *hasher.finalize().as_bytes();
        self.dirty = false;
        self.hash
    }

    fn heap_bytes(&self) -> usize {
        match &self.kind {
            Kind::Leaf(entries) => entries.capacity() * std::mem::size_of::<(TripleId, V)>(),
            Kind::Branch(children) => {
                std::mem::size_of::<[Option<Box<Node<V>>>; 16]>()
                    + children
                        .iter()
                        .flatten()
                        .map(|c| std::mem::size_of::<Node<V>>() + c.heap_bytes())
                        .sum::<usize>()
            }
        }
    }
}

/// A history-independent Merkle tree over a set of [`TripleId`]s, each with an unhashed
/// payload `V`. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct MerkleTree<V: Copy = ()> {
    root: Node<V>,
}

impl<V: Copy> Default for MerkleTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy> MerkleTree<V> {
    /// An empty tree.
    pub fn new() -> Self {
        MerkleTree { root: Node::empty_leaf() }
    }

    /// Builds a tree from entries in any order (duplicates keep the first payload).
    pub fn from_entries(entries: impl IntoIterator<Item = (TripleId, V)>) -> Self {
        let mut entries: Vec<(TripleId, V)> = entries.into_iter().collect();
        entries.sort_by_key(|e| e.0);
        entries.dedup_by(|a, b| a.0 == b.0);
        MerkleTree { root: Node::build(entries, 0) }
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
        self.root.insert(id, value, 0)
    }

    /// Removes `id`, returning its payload if it was present.
    pub fn remove(&mut self, id: &TripleId) -> Option<V> {
        self.root.remove(id, 0)
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
    pub fn root(&mut self) -> StateRoot {
        StateRoot::from_bytes(self.root.rehash())
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
