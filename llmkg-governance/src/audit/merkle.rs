//! RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.
//!
//! ```text
//!                 root = MTH(D[0:5])
//!                /                  \
//!        MTH(D[0:4])               leaf(d4)        leaf(d) = SHA-256(0x00 ‖ d)
//!        /         \                               node(l, r) = SHA-256(0x01 ‖ l ‖ r)
//!  MTH(D[0:2])  MTH(D[2:4])                        MTH(empty) = SHA-256("")
//!   /     \      /     \
//! leaf0 leaf1  leaf2  leaf3
//! ```
//!
//! A tree of `n` leaves splits at `k`, the largest power of two below `n`; the left part is
//! therefore always a *complete* subtree (a power of two of leaves, aligned). The durable log
//! stores the hash of every complete subtree, and every hash this module needs is either one
//! of those or the right edge of a tree, folded from at most 64 of them.
//!
//! The verification functions ([`verify_inclusion`], [`verify_consistency`]) are pure: they
//! need only hashes, never the log.
//!
//! ```
//! use llmkg_governance::audit::merkle::{leaf_hash, tree_inclusion_proof, tree_root, verify_inclusion};
//!
//! let leaves: Vec<_> = [b"a", b"b", b"c"].iter().map(|d| leaf_hash(*d)).collect();
//! let root = tree_root(&leaves);
//! let proof = tree_inclusion_proof(&leaves, 2)?;
//! verify_inclusion(&leaves[2], 2, 3, &proof, &root)?;
//! # Ok::<(), llmkg_governance::audit::merkle::ProofError>(())
//! ```

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Length of a hash, in bytes.
pub const HASH_LEN: usize = 32;

/// A SHA-256 hash: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; HASH_LEN];

/// The longest proof (inclusion or consistency) accepted by the verification functions: a
/// tree of 2^64 leaves needs at most 64 hashes for an inclusion proof and 2·64 for a
/// consistency proof.
pub const MAX_PROOF_LEN: usize = 128;

/// A proof did not verify, or its parameters are impossible. Verification has no side
/// effect: nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not below the tree size (or the tree is empty).
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The old tree size is larger than the new one.
    #[error("old tree size {old} is larger than new tree size {new}")]
    SizesOutOfOrder {
        /// The old size.
        old: u64,
        /// The new size.
        new: u64,
    },
    /// The proof has the wrong number of hashes for the sizes (and index) given.
    #[error("proof of {len} hashes has the wrong length for these sizes")]
    WrongLength {
        /// The proof's length.
        len: usize,
    },
    /// The proof leads to another root than the expected (new) root.
    #[error("proof does not lead to the expected root")]
    RootMismatch,
    /// A consistency proof leads to another old root than the one given.
    #[error("consistency proof does not lead to the old root")]
    OldRootMismatch,
}

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The hash of a leaf: SHA-256(0x00 ‖ entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    sha256(&[&[0x00], entry])
}

/// The hash of an interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The Merkle tree hash of leaves `lo..hi` (`lo < hi`) of a tree, given a source of complete
/// subtree hashes `get(level, index)` (the subtree of leaves `index·2^level ..
/// (index+1)·2^level`). `lo` must be aligned as it is in the RFC's recursion (a multiple of
/// the power of two at or above `hi - lo`); then at most 64 complete subtrees are read.
pub(crate) fn range_hash<E>(
    get: &impl Fn(u32, u64) -> Result<Hash, E>,
    lo: u64,
    hi: u64,
) -> Result<Hash, E> {
    let n = hi - lo;
    if n.is_power_of_two() {
        let level = n.trailing_zeros();
        return get(level, lo >> level);
    }
    let mut parts = Vec::with_capacity(n.count_ones() as usize);
    let mut pos = lo;
    let mut rem = n;
    while rem > 0 {
        let level = 63 - rem.leading_zeros();
        parts.push(get(level, pos >> level)?);
        pos += 1 << level;
        rem -= 1 << level;
    }
    Ok(fold_right(&parts))
}

/// Folds subtree hashes (largest first) into the hash of their concatenation:
/// node(p0, node(p1, … node(p_{n-2}, p_{n-1}))).
pub(crate) fn fold_right(parts: &[Hash]) -> Hash {
    let mut iter = parts.iter().rev();
    let Some(last) = iter.next() else {
        return empty_root();
    };
    iter.fold(*last, |acc, left| node_hash(left, &acc))
}

/// The inclusion proof of leaf `index` in the tree of leaves `0..size` (RFC 9162 §2.1.3.1),
/// over a source of complete subtree hashes. The caller checks `index < size`.
pub(crate) fn inclusion_path<E>(
    get: &impl Fn(u32, u64) -> Result<Hash, E>,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, E> {
    // Descend from the root, collecting siblings top-down, then reverse (the proof is bottom-up).
    let mut out = Vec::with_capacity(64);
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index < lo + k {
            out.push(range_hash(get, lo + k, hi)?);
            hi = lo + k;
        } else {
            out.push(range_hash(get, lo, lo + k)?);
            lo += k;
        }
    }
    out.reverse();
    Ok(out)
}

/// The consistency proof between the trees of sizes `old` and `new` (RFC 9162 §2.1.4.1),
/// over a source of complete subtree hashes. The caller checks `old <= new`. Empty for
/// `old == 0` and `old == new`.
pub(crate) fn consistency_path<E>(
    get: &impl Fn(u32, u64) -> Result<Hash, E>,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, E> {
    let mut out = Vec::with_capacity(64);
    if old == 0 || old == new {
        return Ok(out);
    }
    // SUBPROOF(m, D[lo:hi], b), unrolled: siblings are collected top-down, then reversed.
    let (mut lo, mut hi, mut m, mut b) = (0u64, new, old, true);
    loop {
        let n = hi - lo;
        if m == n {
            if !b {
                out.push(range_hash(get, lo, hi)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            out.push(range_hash(get, lo + k, hi)?);
            hi = lo + k;
        } else {
            out.push(range_hash(get, lo, lo + k)?);
            lo += k;
            m -= k;
            b = false;
        }
    }
    out.reverse();
    Ok(out)
}

/// The root of the tree whose leaf hashes are `leaves`, computed directly from the RFC 6962
/// definition (recursively, in memory). A reference for tests and small trees.
pub fn tree_root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [one] => *one,
        _ => {
            let k = split_point(leaves.len() as u64) as usize;
            let (left, right) = leaves.split_at(k);
            node_hash(&tree_root(left), &tree_root(right))
        }
    }
}

fn slice_source(leaves: &[Hash]) -> impl Fn(u32, u64) -> Result<Hash, ProofError> + '_ {
    move |level, index| {
        let start = index.checked_shl(level).unwrap_or(u64::MAX) as usize;
        let end = start.saturating_add(1usize << level);
        leaves
            .get(start..end)
            .map(tree_root)
            .ok_or(ProofError::IndexOutOfRange { index, size: leaves.len() as u64 })
    }
}

/// The inclusion proof of leaf `index` in the tree whose leaf hashes are `leaves`, computed
/// in memory.
pub fn tree_inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, ProofError> {
    let size = leaves.len() as u64;
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    inclusion_path(&slice_source(leaves), index, size)
}

/// The consistency proof from the tree of the first `old` leaves to the tree of all `leaves`,
/// computed in memory.
pub fn tree_consistency_proof(leaves: &[Hash], old: u64) -> Result<Vec<Hash>, ProofError> {
    let new = leaves.len() as u64;
    if old > new {
        return Err(ProofError::SizesOutOfOrder { old, new });
    }
    consistency_path(&slice_source(leaves), old, new)
}

/// Verifies that `proof` proves the leaf with hash `leaf_hash` at `index` to be in the tree
/// of `size` leaves with root `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::WrongLength { len: proof.len() });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength { len: proof.len() });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength { len: proof.len() });
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies that `proof` proves the tree of `old_size` leaves with root `old_root` to be a
/// prefix of the tree of `new_size` leaves with root `new_root` (RFC 9162 §2.1.4.2).
///
/// Equal sizes need an empty proof and equal roots. An old size of 0 needs an empty proof and
/// the empty tree's root as `old_root` (every tree extends the empty tree).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesOutOfOrder { old: old_size, new: new_size });
    }
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::WrongLength { len: proof.len() });
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength { len: proof.len() });
        }
        if *old_root != empty_root() {
            return Err(ProofError::OldRootMismatch);
        }
        return Ok(());
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength { len: proof.len() });
        }
        if old_root != new_root {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    // A power-of-two old tree is itself a node of the new tree: the proof omits its hash.
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(old_root);
    }
    path.extend(proof.iter());
    let mut iter = path.into_iter();
    let Some(first) = iter.next() else {
        return Err(ProofError::WrongLength { len: proof.len() });
    };
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in iter {
        if sn == 0 {
            return Err(ProofError::WrongLength { len: proof.len() });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength { len: proof.len() });
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}
