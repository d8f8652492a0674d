//! The audit trail as a transparency log.
//!
//! Every security-relevant event of the federation (permission decisions and refusals,
//! certificate and key changes, membership, consensus decisions) is appended as one entry to
//! an append-only Merkle log in the shape of RFC 6962 / RFC 9162, kept durably in a
//! [`KvStore`](llmkg_federation_core::kv::KvStore). The log publishes signed checkpoints in the
//! C2SP formats, which peer organizations witness (cosign) after checking that each extends
//! the last one they saw; any outside auditor can verify an [`export`] with only SHA-256 and
//! ed25519 (see `docs/audit-format.md`).
//!
//! ```text
//!   event ──append──► AuditLog (entries + complete subtree hashes, one atomic batch per call)
//!                        │ size, root
//!                        ▼
//!                  Checkpoint ──LogSigner──► SignedNote ──Witness::cosign──► + cosignatures
//!                        │                                  (consistency proof from the
//!                        ▼                                   witness's last checkpoint)
//!   auditor ◄── export::build_export (entries, checkpoints, proofs) ──► export::verify_export
//! ```
//!
//! | module | concept |
//! |---|---|
//! | [`merkle`] | RFC 6962 hashing, inclusion and consistency proofs, pure verification |
//! | [`log`] | the durable log, [`AuditLog`] |
//! | [`checkpoint`] | c2sp.org/tlog-checkpoint bodies in c2sp.org/signed-note notes |
//! | [`witness`] | `cosignature/v1`, [`Witness`], [`Equivocation`] |
//! | [`export`] | the auditor's JSON document and its verification |
//!
//! Entries are opaque bytes to the log; the governance manager writes one UTF-8 JSON object
//! per event. Time is never read from a clock here: cosignature timestamps are parameters.

pub mod checkpoint;
pub mod export;
pub mod log;
pub mod merkle;
pub mod witness;

pub use checkpoint::{Checkpoint, CheckpointError, LogSigner, LogVerifier, SignedNote};
pub use export::{AuditExport, ExportError, build_export, verify_export};
pub use log::{AuditError, AuditLog, SIDE_PREFIX};
pub use merkle::{Hash, ProofError, verify_consistency, verify_inclusion};
pub use witness::{CosignatureVerifier, Equivocation, Witness, WitnessError, WitnessKey};
