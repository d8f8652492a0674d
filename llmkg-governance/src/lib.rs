//! # llmkg-governance
//!
//! The security plane of LLMKG Federation (work in progress on this branch).
pub mod audit;
