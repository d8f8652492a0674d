//! # llmkg-consensus
//!
//! **Status: not implemented yet.** This crate is a placeholder in the workspace so that the
//! crate map and dependency direction are fixed from the start; it exports nothing.
//!
//! It will hold the pluggable consensus backends used to agree on federated-branch decisions
//! (branch creation, federated merges, synchronization plans, policy updates, node join and
//! leave), each written as a sans-io state machine and run by one generic async driver:
//!
//! - Raft, for crash faults;
//! - a HotStuff-style Byzantine fault-tolerant protocol with ed25519-signed votes and
//!   verifiable quorum certificates;
//! - gossip, for eventual agreement across very large federations;
//! - a hybrid of a primary and a fallback backend, and strategy selection.
//!
//! Nothing here works yet; do not depend on it.
