//! # llmkg-sync
//!
//! **Status: not implemented yet.** This crate is a placeholder in the workspace so that the
//! crate map and dependency direction are fixed from the start; it exports nothing.
//!
//! It will keep the contents of federated branches consistent across nodes:
//!
//! - clocks (hybrid logical clocks, version vectors);
//! - a delta-state add-wins observed-remove set of triples;
//! - set reconciliation over the Merkle state tree of `llmkg-federation-core`;
//! - the four sync strategies (eventual, consensus-ordered, conflict-resolution, custom),
//!   with conflict detection and resolution policies.
//!
//! Nothing here works yet; do not depend on it.

pub mod riblt;
