//! # llmkg-consensus
//!
//! **Status: under construction.** The consensus backends are not built yet; what this crate
//! exports today is the tooling their tests are built on:
//!
//! - [`linearizability`]: a checker (Wing and Gong's search with Lowe's memoization) that
//!   decides whether a concurrent history of operations is explained by a sequential model,
//!   property-tested against brute force;
//! - [`log`]: a consensus group's durable, hash-chained log on any `KvStore` (hard state,
//!   leader appends, follower appends that check the chain and replace a conflicting suffix,
//!   compaction, snapshot installation), every write atomic and durable when it returns.
//!
//! It will hold the pluggable consensus backends used to agree on federated-branch decisions
//! (branch creation, federated merges, synchronization plans, policy updates, node join and
//! leave), each written as a sans-io state machine and run by one generic async driver:
//!
//! - Raft, for crash faults;
//! - a Byzantine fault-tolerant backend with verifiable quorum certificates;
//! - gossip, for eventual agreement across very large federations;
//! - a hybrid of a primary and a fallback backend, and strategy selection.
//!
//! None of the backends exists yet; do not depend on them.

pub mod engine;
pub mod linearizability;
pub mod log;
pub mod raft;
