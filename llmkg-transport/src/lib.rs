//! # llmkg-transport
//!
//! **Status: not implemented yet.** This crate is a placeholder in the workspace so that the
//! crate map and dependency direction are fixed from the start; it exports nothing.
//!
//! It will hold the implementations of the host-facing `Transport` trait defined in
//! `llmkg-federation-core`:
//!
//! - an in-process transport over async channels, for embedding and integration tests;
//! - a TCP transport (feature `tcp`, tokio) with length-prefixed frames and a Noise XX
//!   handshake bound to the nodes' ed25519 identities;
//! - `sim`, a deterministic discrete-event network simulator with virtual time that drives
//!   sans-io protocol cores directly (latency, loss, duplication, reordering, partitions,
//!   crashes, Byzantine peers);
//! - a conformance suite that any `Transport` implementation can run against itself.
//!
//! Nothing here works yet; do not depend on it.
