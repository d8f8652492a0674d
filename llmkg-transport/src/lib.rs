//! # llmkg-transport
//!
//! Transports for LLMKG Federation, the generic driver that runs a sans-io
//! [`Protocol`](llmkg_federation_core::Protocol) core over any of them, and the deterministic
//! network simulator. (Crate documentation is completed with the modules.)

pub mod sim;
#[cfg(feature = "tcp")]
pub mod tcp;
