//! # llmkg-governance
//!
//! **Status: not implemented yet.** This crate is a placeholder in the workspace so that the
//! crate map and dependency direction are fixed from the start; it exports nothing.
//!
//! It will hold security and governance across organizational boundaries: node certificates
//! issued by organization root keys, trust between organizations, access control (default
//! deny; every involved organization must allow), per-federation encryption keys, a
//! tamper-evident Merkle audit log with signed checkpoints, policy reconciliation, approval
//! workflows, compliance monitoring and dispute resolution.
//!
//! Nothing here works yet; do not depend on it.
