//! # llmkg-transport
//!
//! How LLMKG Federation nodes reach each other. Everything here works with the sans-io
//! vocabulary of `llmkg-federation-core` ([`Protocol`](llmkg_federation_core::Protocol),
//! [`Transport`](llmkg_federation_core::Transport), [`Timer`](llmkg_federation_core::Timer)),
//! so one protocol core runs unchanged in all three settings:
//!
//! ```text
//!                         ┌──────────── a sans-io Protocol core ────────────┐
//!                         │  (consensus, sync, the echo core in `echo`)     │
//!                         └──────┬───────────────────────────────┬──────────┘
//!             driven directly by │                               │ driven by
//!                  ┌─────────────▼─────────┐          ┌──────────▼───────────┐
//!                  │ sim: virtual time,    │          │ Driver (any runtime) │
//!                  │ seeded faults, traces │          └──────────┬───────────┘
//!                  └───────────────────────┘                     │ dyn Transport
//!                                                   ┌────────────┴────────────┐
//!                                          InProcessTransport       tcp::TcpTransport
//!                                          (async channels)         (feature `tcp`: tokio,
//!                                                                    Noise XX, ed25519-bound)
//! ```
//!
//! - [`InProcessNetwork`] / [`InProcessTransport`]: nodes in one process, for embedding and
//!   integration tests; runtime-agnostic.
//! - `tcp` (feature `tcp`): the real network — length-prefixed, Noise-encrypted frames,
//!   peers mutually authenticated by their node identities, bounded queues, reconnects.
//! - [`sim`]: the deterministic discrete-event simulator that drives cores directly with
//!   virtual time, a seeded RNG and a configurable faulty network.
//! - [`Driver`]: runs any core over any transport and timer.
//! - [`echo`]: a small ping/echo core showing all of the above.
//! - `testing` (feature `testing`): the conformance suite for `Transport` implementations.
//!
//! ## What this crate does not do
//!
//! It does not interpret payloads (the cores do), does not retry or reorder messages for a
//! protocol (the network is at-most-once; cores retransmit), and does not discover peers
//! (the host says who is where).

pub mod driver;
pub mod echo;
mod inbox;
pub mod inprocess;
pub mod sim;
#[cfg(feature = "tcp")]
pub mod tcp;
#[cfg(feature = "testing")]
pub mod testing;
mod timer;

pub use driver::{Driver, DriverConfig, DriverExit, DriverHandle, DriverStats, InboundRequest};
pub use inprocess::{InProcessConfig, InProcessError, InProcessNetwork, InProcessTransport};
#[cfg(feature = "tcp")]
pub use tcp::{
    ConnectionFailure, FederationId, TcpConfig, TcpError, TcpStats, TcpTransport, Trust,
};
pub use timer::StdTimer;
#[cfg(feature = "tcp")]
pub use timer::TokioTimer;

/// The integrator's guide (`docs/guide-transport.md`), compiled and run as a doctest so its
/// example cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guide-transport.md")]
struct GuideTransport;
