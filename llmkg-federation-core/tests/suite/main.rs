//! The crate's integration tests, one module per area, built as one test binary.
//! (Tests that spawn themselves as child processes or count allocations with a global
//! allocator stay in binaries of their own beside this directory.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod certificates;
mod encoding;
mod envelopes;
mod kv;
mod merkle;
mod merkle_proofs;
mod rdf_blank_nodes;
mod rdf_convert;
mod rdf_import;
mod rdf_robustness;
mod rdf_roundtrip;
mod rdf_w3c;
mod registry;
mod repo;
mod repo_policy;
mod repo_snapshots;
mod repo_states;
mod signatures;
mod snapshot;
mod store;
