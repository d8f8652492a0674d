//! The crate's integration tests, one module per area, built as one test binary.
//! (Tests that spawn themselves as child processes or count allocations with a global
//! allocator stay in binaries of their own beside this directory.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod access_laws;
mod audit_checkpoint;
mod audit_log;
mod audit_merkle;
mod audit_python;
mod audit_witness;
mod common;
mod federation;
mod federation_sim;
mod keys;
mod refusals;
mod review_adversarial;
mod trust_refusals;
