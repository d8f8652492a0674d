//! The crate's integration tests, one module per area, built as one test binary.
//! (Tests that spawn themselves as child processes or count allocations with a global
//! allocator stay in binaries of their own beside this directory.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
mod engine;
mod reconcile_real;
mod replica_adversarial;
mod replica_laws;
mod replica_oracle;
mod replica_snapshot;
mod riblt;
mod sealed;
mod sync_adversarial;
mod sync_feeder;
mod sync_join;
mod sync_sim;
