//! Safety checks any ordered-log backend must pass, whatever its protocol.
//!
//! A consensus backend decides an ordered log. Whatever it does inside, what its members
//! report must satisfy a few properties, and [`Agreement`] checks them as a run goes: feed it
//! every entry a member reports decided (its index and a digest of the entry, e.g. the chain
//! hash or a BLAKE3 hash) and tell it when a member restarts.
//!
//! - **Agreement** (state-machine safety): two members never decide different entries at the
//!   same index, across restarts included.
//! - **Order**: within one incarnation a member decides indices in increasing order without
//!   gaps (it may start again from a snapshot after a restart).
//! - **Durability** of what clients were told: an entry reported to a client as decided
//!   ([`Agreement::acknowledged`]) is the one [`Agreement::final_check`] finds decided.
//!
//! The Raft tests check more (terms, votes, logs; see `tests/suite/raft_sim.rs`); these are the
//! checks a new backend can adopt on day one.
//!
//! ```
//! use llmkg_consensus::check::Agreement;
//! use llmkg_federation_core::NodeKeypair;
//!
//! let (a, b) = (NodeKeypair::from_secret_bytes([1; 32]).node_id(), NodeKeypair::from_secret_bytes([2; 32]).node_id());
//! let mut check = Agreement::default();
//! check.decided(a, 1, [7; 32])?;
//! check.decided(b, 1, [7; 32])?;
//! assert!(check.decided(b, 2, [8; 32]).is_ok());
//! // `a` deciding something else at index 2 breaks agreement.
//! assert!(check.decided(a, 2, [9; 32]).is_err());
//! # Ok::<(), llmkg_consensus::check::Violation>(())
//! ```

use std::collections::{BTreeMap, HashMap};

use llmkg_federation_core::NodeId;
use thiserror::Error;

/// A broken property, with what showed it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Violation {
    /// Two members decided different entries at one index.
    #[error("{node} decided another entry at index {index} than was decided there before")]
    Disagreement {
        /// The member that disagreed.
        node: NodeId,
        /// The index.
        index: u64,
    },
    /// A member decided out of order (an index not following the previous one).
    #[error("{node} decided index {index} after {previous}")]
    OutOfOrder {
        /// The member.
        node: NodeId,
        /// What it decided.
        index: u64,
        /// What it decided before.
        previous: u64,
    },
    /// An entry a client was told was decided is not the one decided at its index.
    #[error("the entry acknowledged at index {index} was lost")]
    Lost {
        /// The index.
        index: u64,
    },
}

/// See the [module documentation](self).
#[derive(Debug, Default, Clone)]
pub struct Agreement {
    decided: BTreeMap<u64, [u8; 32]>,
    last: HashMap<NodeId, u64>,
    acknowledged: BTreeMap<u64, [u8; 32]>,
}

impl Agreement {
    /// `node` decided `digest` at `index`.
    pub fn decided(&mut self, node: NodeId, index: u64, digest: [u8; 32]) -> Result<(), Violation> {
        if let Some(&previous) = self.last.get(&node)
            && index != previous + 1
        {
            return Err(Violation::OutOfOrder { node, index, previous });
        }
        match self.decided.get(&index) {
            Some(d) if *d != digest => return Err(Violation::Disagreement { node, index }),
            Some(_) => {}
            None => {
                self.decided.insert(index, digest);
            }
        }
        self.last.insert(node, index);
        Ok(())
    }

    /// `node` restarted: it may decide again from any index (a snapshot's, or its log's start).
    pub fn restarted(&mut self, node: NodeId) {
        self.last.remove(&node);
    }

    /// A client was told `digest` was decided at `index`.
    pub fn acknowledged(&mut self, index: u64, digest: [u8; 32]) {
        self.acknowledged.insert(index, digest);
    }

    /// Every acknowledged entry is the one decided at its index.
    pub fn final_check(&self) -> Result<(), Violation> {
        for (&index, digest) in &self.acknowledged {
            if self.decided.get(&index) != Some(digest) {
                return Err(Violation::Lost { index });
            }
        }
        Ok(())
    }

    /// How many indices were decided.
    pub fn decided_count(&self) -> usize {
        self.decided.len()
    }
}

#[cfg(test)]
mod tests {
    use llmkg_federation_core::NodeKeypair;

    use super::*;

    fn node(i: u8) -> NodeId {
        NodeKeypair::from_secret_bytes([i; 32]).node_id()
    }

    #[test]
    fn each_property_is_caught() {
        let mut c = Agreement::default();
        c.decided(node(1), 5, [1; 32]).unwrap();
        assert_eq!(
            c.decided(node(1), 7, [2; 32]),
            Err(Violation::OutOfOrder { node: node(1), index: 7, previous: 5 })
        );
        c.restarted(node(1));
        c.decided(node(1), 3, [3; 32]).unwrap();
        assert_eq!(
            c.decided(node(2), 5, [9; 32]),
            Err(Violation::Disagreement { node: node(2), index: 5 })
        );
        c.acknowledged(5, [1; 32]);
        assert_eq!(c.final_check(), Ok(()));
        c.acknowledged(6, [6; 32]);
        assert_eq!(c.final_check(), Err(Violation::Lost { index: 6 }));
        assert_eq!(c.decided_count(), 2);
    }
}
