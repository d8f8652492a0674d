//! # llmkg-consensus
//!
//! The control plane of LLMKG Federation: how the nodes of a federated branch agree on one
//! ordered, hash-chained log of decisions (create the branch, merge it, adopt a sync plan,
//! update a policy, let a node join or leave), and show afterwards what was decided and by
//! whom.
//!
//! ```text
//!  host ── propose(Signed<ConsensusProposal>) ──► RaftEngine (ConsensusEngine) ──► ConsensusResult
//!                                                   │   group commit, forwarding,         + Evidence
//!                                                   │   waiters, decided log
//!                                                   ▼
//!                                    Driver ◄──► Raft core (sans-io Protocol) ◄──► DurableLog on KvStore
//!                                      │                │                              (redb, memory, sim Disk)
//!                                  Transport        StateMachine (the host's DecisionMachine)
//! ```
//!
//! - [`raft`]: Raft as a sans-io core — pre-vote, check-quorum, leadership transfer,
//!   pipelined and batched replication with fast back-off, the Figure-8 commit rule, snapshots
//!   sent in chunks, joint-consensus membership changes with learners, and **verifiable
//!   commits**: followers sign their acknowledgement of (group, term, index, chain hash) and a
//!   majority of them, with the chain path to the decided entry, is evidence any third party
//!   checks with the group's membership alone.
//! - [`engine`]: [`RaftEngine`](engine::RaftEngine), the Raft core behind the object-safe
//!   [`ConsensusEngine`](llmkg_federation_core::consensus::ConsensusEngine) over any
//!   transport, durable on any key-value store (redb for real nodes).
//! - [`log`]: the durable, hash-chained log every log-based backend can reuse.
//! - [`check`]: the safety checks any ordered-log backend must pass in the simulator.
//! - [`linearizability`]: a linearizability checker (Wing and Gong's search with Lowe's
//!   memoization), property-tested against brute force.
//!
//! What it does not do (yet): Byzantine fault tolerance, gossip agreement and hybrid
//! strategies are named in [`ConsensusStrategy`](llmkg_federation_core::consensus::ConsensusStrategy)
//! but not built; asking for them is a typed
//! [`NotAvailable`](llmkg_federation_core::consensus::ConsensusError::NotAvailable) error.
//! Raft assumes crash faults: a member that lies can stall or mislead its group (though it
//! cannot forge another member's acknowledgement or proposal). See
//! `docs/guide-consensus.md` for adding a backend.

pub mod check;
pub mod engine;
pub mod linearizability;
pub mod log;
pub mod raft;

/// The researcher's guide (`docs/guide-consensus.md`), compiled and run as a doctest so its
/// examples cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guide-consensus.md")]
struct GuideConsensus;
