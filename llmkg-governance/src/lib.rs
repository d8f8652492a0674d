//! # llmkg-governance
//!
//! The security plane of LLMKG Federation: organizations join a federation only if they keep
//! control. This crate checks who a node is, decides what it may do, keeps confidential
//! branches sealed from organizations that are not members, and records every such decision
//! in a tamper-evident log that other organizations witness and outside auditors verify.
//!
//! ```text
//!                    FederatedSecurityManager  (implements core's SecurityManager)
//!   ┌──────────────┬──────────────┬───────────────┬────────────────────────────────┐
//!   │ trust        │ access       │ keys          │ audit                          │
//!   │ pinned roots │ rules per    │ data key per  │ RFC 6962 Merkle log on redb,   │
//!   │ + levels,    │ organization,│ federation,   │ C2SP signed checkpoints,       │
//!   │ certificates,│ default deny,│ HPKE-wrapped  │ witness cosignatures,          │
//!   │ revocations, │ forbid wins, │ per member,   │ inclusion/consistency proofs,  │
//!   │ quorum root  │ every owner  │ new epoch on  │ equivocation evidence, export  │
//!   │ rotation     │ consents     │ every change  │                                │
//!   └──────────────┴──────────────┴───────────────┴────────────────────────────────┘
//!        every decision and refusal ──► one JSON entry in the audit log ([`event`])
//! ```
//!
//! The paved path is [`manager::FederatedSecurityManager`]; its documentation has a complete
//! example. Its [`commit_policy`](llmkg_federation_core::security::SecurityManager::commit_policy)
//! plugs into a replica, so an unauthorized commit is refused on receipt by every node that
//! holds the same pins, trust levels and published policies.
//!
//! ## What this crate does not do (yet)
//!
//! - The replica does not yet store commits of a sealed branch in sealed form: sealing,
//!   verification by relays and opening are built here ([`keys`]), and the federated branch
//!   composes them with sync.
//! - Policy reconciliation across organizations, approval workflows, compliance reports and
//!   dispute resolution are not built.
//! - Cedar policies are not supported; the native evaluator is the only one.

pub mod access;
pub mod audit;
pub mod event;
pub mod keys;
pub mod manager;
pub mod paved;
pub mod trust;

pub use event::{AuditEvent, AuditKind};
pub use manager::{FederatedSecurityManager, GovernanceError, GovernanceOptions, SignedPolicy};
