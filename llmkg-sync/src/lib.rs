//! # llmkg-sync
//!
//! Keeps the replicas of a federated branch consistent.
//!
//! Work in progress: the eventual-consistency replica ([`replica`]), hybrid logical clocks
//! ([`hlc`]) and version vectors ([`vv`]).

pub mod engine;
pub mod hlc;
pub mod protocol;
pub mod replica;
pub mod vv;
