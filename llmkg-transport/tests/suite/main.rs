//! The crate's integration tests, one module per area, built as one test binary.
//! (Tests that spawn themselves as child processes or count allocations with a global
//! allocator stay in binaries of their own beside this directory.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod channels;
mod disk;
mod driver;
mod echo;
mod inprocess;
mod race_regressions;
mod sim;
mod sim_channels;
mod tcp;
mod tcp_flood;
mod unencodable;
