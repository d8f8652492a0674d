//! Version vectors: the cheap causal summary of a replica.
//!
//! Every author's commits form a chain (each of its commits descends from its previous one,
//! see the replica's rules), so "which commits a replica holds" is summarized exactly by, per
//! author, how many of that author's commits it holds. Two replicas compare vectors to learn
//! what each lacks; the cost is one entry per author, which is why a federation with
//! hundreds of writers uses set reconciliation instead (see the crate docs).
//!
//! ```
//! use llmkg_federation_core::NodeKeypair;
//! use llmkg_sync::vv::VersionVector;
//!
//! let (a, b) = (NodeKeypair::from_secret_bytes([1; 32]).node_id(), NodeKeypair::from_secret_bytes([2; 32]).node_id());
//! let mut x = VersionVector::new();
//! x.observe(a, 3);
//! let mut y = VersionVector::new();
//! y.observe(b, 1);
//! assert!(!x.dominates(&y) && !y.dominates(&x)); // concurrent
//! x.join(&y);
//! assert!(x.dominates(&y));
//! assert_eq!((x.get(a), x.get(b)), (3, 1));
//! ```

use std::collections::BTreeMap;

use llmkg_federation_core::NodeId;
use serde::{Deserialize, Serialize};

/// The most entries a version vector decoded from a peer may have.
pub const MAX_VV_ENTRIES: usize = 65_536;

/// Per author, how many of its commits are held (see the [module documentation](self)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<(NodeId, u64)>", into = "Vec<(NodeId, u64)>")]
pub struct VersionVector(BTreeMap<NodeId, u64>);

/// A version vector from a peer was malformed. Decoding it changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VersionVectorError {
    /// More than [`MAX_VV_ENTRIES`] entries.
    #[error("{0} entries exceed the limit of {MAX_VV_ENTRIES}")]
    TooLong(usize),
    /// Entries not in strictly increasing author order, or a zero count (never encoded).
    #[error("entries are not sorted by author, repeat one, or hold a zero")]
    NotCanonical,
}

impl TryFrom<Vec<(NodeId, u64)>> for VersionVector {
    type Error = VersionVectorError;
    fn try_from(entries: Vec<(NodeId, u64)>) -> Result<Self, Self::Error> {
        if entries.len() > MAX_VV_ENTRIES {
            return Err(VersionVectorError::TooLong(entries.len()));
        }
        if entries.windows(2).any(|w| w[0].0 >= w[1].0) || entries.iter().any(|e| e.1 == 0) {
            return Err(VersionVectorError::NotCanonical);
        }
        Ok(Self(entries.into_iter().collect()))
    }
}

impl From<VersionVector> for Vec<(NodeId, u64)> {
    fn from(v: VersionVector) -> Self {
        v.0.into_iter().collect()
    }
}

impl VersionVector {
    /// The empty vector (nothing held).
    pub fn new() -> Self {
        Self::default()
    }

    /// How many of `author`'s commits are covered.
    pub fn get(&self, author: NodeId) -> u64 {
        self.0.get(&author).copied().unwrap_or(0)
    }

    /// Raises `author`'s entry to at least `count`.
    pub fn observe(&mut self, author: NodeId, count: u64) {
        if count > 0 {
            let e = self.0.entry(author).or_insert(0);
            *e = (*e).max(count);
        }
    }

    /// The pointwise maximum of the two.
    pub fn join(&mut self, other: &VersionVector) {
        for (a, n) in &other.0 {
            self.observe(*a, *n);
        }
    }

    /// True if this vector covers everything `other` covers.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(a, n)| self.get(*a) >= *n)
    }

    /// The authors and counts, by author.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.0.iter().map(|(a, n)| (*a, *n))
    }

    /// Number of authors with a non-zero entry.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if nothing is covered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The total number of commits covered.
    pub fn total(&self) -> u64 {
        self.0.values().fold(0u64, |s, n| s.saturating_add(*n))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use llmkg_federation_core::NodeKeypair;
    use llmkg_federation_core::encoding;

    fn node(i: u8) -> NodeId {
        NodeKeypair::from_secret_bytes([i; 32]).node_id()
    }

    #[test]
    fn round_trips_and_refuses_non_canonical_encodings() {
        let mut v = VersionVector::new();
        v.observe(node(1), 4);
        v.observe(node(2), 1);
        let bytes = encoding::try_encode(&v).unwrap();
        assert_eq!(encoding::decode::<VersionVector>(&bytes).ok(), Some(v.clone()));
        let mut entries: Vec<(NodeId, u64)> = v.into();
        entries.reverse();
        assert!(
            encoding::decode::<VersionVector>(&encoding::try_encode(&entries).unwrap()).is_err()
        );
        let zero = vec![(node(1), 0u64)];
        assert!(encoding::decode::<VersionVector>(&encoding::try_encode(&zero).unwrap()).is_err());
    }
}
