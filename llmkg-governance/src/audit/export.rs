//! The auditor's export: one JSON document holding everything needed to verify the log
//! without access to it (the format is specified in `docs/audit-format.md`).
//!
//! ```text
//!   { "format": "llmkg-audit-export/v1",
//!     "origin": …, "log_key": <verifier key>, "witness_keys": [<verifier key>, …],
//!     "checkpoint": <signed note, with cosignatures>,
//!     "entries": [<base64>, …],                         ← all entries of the checkpoint's tree
//!     "earlier_checkpoints": [{ "checkpoint": <signed note>, "consistency_proof": [<base64>, …] }],
//!     "inclusion_proofs": [{ "index": n, "proof": [<base64>, …] }] }
//! ```
//!
//! [`build_export`] writes one from a log; [`verify_export`] checks all of it.
//!
//! ```
//! use ed25519_dalek::SigningKey;
//! use llmkg_federation_core::kv::MemoryKv;
//! use llmkg_governance::audit::AuditLog;
//! use llmkg_governance::audit::checkpoint::{Checkpoint, LogSigner};
//! use llmkg_governance::audit::export::{build_export, verify_export_json};
//!
//! let signer = LogSigner::new("llmkg.example/audit", SigningKey::from_bytes(&[3; 32]))?;
//! let mut log = AuditLog::open(MemoryKv::new())?;
//! log.append_batch(&[&b"{\"a\":1}"[..], b"{\"a\":2}", b"{\"a\":3}"])?;
//! let note = signer.sign(&Checkpoint::new("llmkg.example/audit", log.size(), log.root())?);
//!
//! let export = build_export(&log, &signer.verifier(), &note, &[], &[], &[1])?;
//! let summary = verify_export_json(&export.to_json())?;
//! assert_eq!(summary.size, 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use llmkg_federation_core::kv::KvStore;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::checkpoint::{
    Checkpoint, CheckpointError, LogVerifier, SignedNote, decode_hash, encode_hash,
};
use super::log::{AuditError, AuditLog, MAX_ENTRY_LEN};
use super::merkle::{Hash, ProofError, leaf_hash, tree_root, verify_consistency, verify_inclusion};
use super::witness::CosignatureVerifier;

/// The value of the `format` field.
pub const EXPORT_FORMAT: &str = "llmkg-audit-export/v1";

/// An auditor's export document (serialized as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditExport {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// The log's origin (the first line of every checkpoint).
    pub origin: String,
    /// The log's verifier key string (`name+keyid+base64(0x01 ‖ key)`).
    pub log_key: String,
    /// The witnesses' verifier key strings (`name+keyid+base64(0x04 ‖ key)`); each must have
    /// cosigned `checkpoint`.
    pub witness_keys: Vec<String>,
    /// The latest signed checkpoint note, with its cosignatures.
    pub checkpoint: String,
    /// Every entry of the checkpoint's tree, in order, standard base64.
    pub entries: Vec<String>,
    /// Earlier checkpoints, each with its consistency proof to `checkpoint`.
    pub earlier_checkpoints: Vec<EarlierCheckpoint>,
    /// Inclusion proofs of chosen entries in `checkpoint`'s tree.
    pub inclusion_proofs: Vec<InclusionProof>,
}

/// An earlier checkpoint and the proof that the latest one extends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlierCheckpoint {
    /// The signed checkpoint note (it may carry cosignatures).
    pub checkpoint: String,
    /// The consistency proof from its tree to the latest checkpoint's, standard base64 hashes.
    pub consistency_proof: Vec<String>,
}

/// An inclusion proof of one entry in the latest checkpoint's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// The entry's index.
    pub index: u64,
    /// The proof, standard base64 hashes, bottom-up.
    pub proof: Vec<String>,
}

impl AuditExport {
    /// The document as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Serializing strings, numbers and vectors of them cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Building or verifying an export failed. Nothing was changed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The document is not JSON of the export schema.
    #[error("export is not valid JSON of the schema: {0}")]
    Json(String),
    /// The `format` field is not [`EXPORT_FORMAT`].
    #[error("unknown export format {0:?}")]
    UnknownFormat(String),
    /// A key, a checkpoint or a signature did not parse or verify.
    #[error("{what}: {error}")]
    Checkpoint {
        /// Which item.
        what: String,
        /// The error.
        error: CheckpointError,
    },
    /// A base64 field did not decode (or a hash is not 32 bytes, or an entry is too long).
    #[error("{0} is not valid base64 of the expected length")]
    Encoding(String),
    /// The number of entries is not the checkpoint's size.
    #[error("{entries} entries for a checkpoint of size {size}")]
    EntryCount {
        /// Entries in the document.
        entries: u64,
        /// The checkpoint's size.
        size: u64,
    },
    /// The entries do not hash to the checkpoint's root.
    #[error("the entries do not hash to the checkpoint's root")]
    RootMismatch,
    /// A listed witness did not cosign the latest checkpoint.
    #[error("witness {0} did not cosign the latest checkpoint")]
    MissingCosignature(String),
    /// A proof did not verify.
    #[error("{what}: {error}")]
    Proof {
        /// Which proof.
        what: String,
        /// The error.
        error: ProofError,
    },
    /// Reading the log failed (building only).
    #[error("audit log: {0}")]
    Log(#[from] AuditError),
}

fn cp_err(what: impl Into<String>) -> impl FnOnce(CheckpointError) -> ExportError {
    let what = what.into();
    move |error| ExportError::Checkpoint { what, error }
}

/// Builds the export of `log` at the size of `latest` (a checkpoint of this log, signed by
/// `log_key`, with the cosignatures of `witnesses`), with `earlier` checkpoints and the
/// inclusion proofs of the entries at `inclusion`. Checks that the checkpoints match the log.
pub fn build_export<K: KvStore>(
    log: &AuditLog<K>,
    log_key: &LogVerifier,
    latest: &SignedNote,
    witnesses: &[CosignatureVerifier],
    earlier: &[SignedNote],
    inclusion: &[u64],
) -> Result<AuditExport, ExportError> {
    let cp = log_key.verify(latest).map_err(cp_err("latest checkpoint"))?;
    let size = cp.size();
    if log.root_at(size)? != *cp.root() {
        return Err(ExportError::RootMismatch);
    }
    let mut earlier_out = Vec::with_capacity(earlier.len());
    for (i, note) in earlier.iter().enumerate() {
        let what = format!("earlier checkpoint {i}");
        let e = log_key.verify_origin(note, cp.origin()).map_err(cp_err(what.clone()))?;
        if log.root_at(e.size())? != *e.root() {
            return Err(ExportError::RootMismatch);
        }
        let proof = log.consistency_proof(e.size(), size)?;
        earlier_out.push(EarlierCheckpoint {
            checkpoint: note.to_text(),
            consistency_proof: proof.iter().map(encode_hash).collect(),
        });
    }
    let mut inclusion_out = Vec::with_capacity(inclusion.len());
    for &index in inclusion {
        let proof = log.inclusion_proof(index, size)?;
        inclusion_out
            .push(InclusionProof { index, proof: proof.iter().map(encode_hash).collect() });
    }
    Ok(AuditExport {
        format: EXPORT_FORMAT.to_owned(),
        origin: cp.origin().to_owned(),
        log_key: log_key.to_vkey(),
        witness_keys: witnesses.iter().map(CosignatureVerifier::to_vkey).collect(),
        checkpoint: latest.to_text(),
        entries: log.entries(0..size)?.iter().map(|e| B64.encode(e)).collect(),
        earlier_checkpoints: earlier_out,
        inclusion_proofs: inclusion_out,
    })
}

/// What [`verify_export`] established.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportSummary {
    /// The log's origin.
    pub origin: String,
    /// The latest checkpoint's size (= the number of entries verified).
    pub size: u64,
    /// Its root.
    pub root: Hash,
    /// Each listed witness's name and cosignature timestamp on the latest checkpoint.
    pub cosignatures: Vec<(String, u64)>,
    /// Earlier checkpoints proven to be prefixes of the latest.
    pub earlier_checkpoints: usize,
    /// Inclusion proofs verified.
    pub inclusion_proofs: usize,
}

fn decode_proof(items: &[String], what: &str) -> Result<Vec<Hash>, ExportError> {
    items.iter().map(|s| decode_hash(s).ok_or_else(|| ExportError::Encoding(what.into()))).collect()
}

fn parse_note(text: &str, what: &str) -> Result<SignedNote, ExportError> {
    SignedNote::parse(text.as_bytes()).map_err(cp_err(what))
}

/// Parses and verifies an export document given as JSON text ([`verify_export`]).
pub fn verify_export_json(json: &str) -> Result<ExportSummary, ExportError> {
    let doc: AuditExport =
        serde_json::from_str(json).map_err(|e| ExportError::Json(e.to_string()))?;
    verify_export(&doc)
}

/// Verifies everything in an export:
///
/// 1. the latest checkpoint is signed by `log_key` and has the document's origin;
/// 2. every listed witness validly cosigned it (and no line under a listed witness's key is
///    invalid);
/// 3. the entries are as many as its size and hash to its root (RFC 6962);
/// 4. every earlier checkpoint is signed by the log, has the origin, carries only valid
///    cosignatures of listed witnesses, and its consistency proof to the latest verifies;
/// 5. every inclusion proof verifies for its entry against the latest root.
pub fn verify_export(doc: &AuditExport) -> Result<ExportSummary, ExportError> {
    if doc.format != EXPORT_FORMAT {
        return Err(ExportError::UnknownFormat(doc.format.clone()));
    }
    let log_key = LogVerifier::from_vkey(&doc.log_key).map_err(cp_err("log key"))?;
    let witnesses = doc
        .witness_keys
        .iter()
        .enumerate()
        .map(|(i, k)| CosignatureVerifier::from_vkey(k).map_err(cp_err(format!("witness key {i}"))))
        .collect::<Result<Vec<_>, _>>()?;

    let note = parse_note(&doc.checkpoint, "latest checkpoint")?;
    let cp: Checkpoint =
        log_key.verify_origin(&note, &doc.origin).map_err(cp_err("latest checkpoint"))?;
    let mut cosignatures = Vec::with_capacity(witnesses.len());
    for w in &witnesses {
        match w.verify(&note).map_err(cp_err("latest checkpoint"))? {
            Some(t) => cosignatures.push((w.name().to_owned(), t)),
            None => return Err(ExportError::MissingCosignature(w.to_vkey())),
        }
    }

    let size = cp.size();
    if doc.entries.len() as u64 != size {
        return Err(ExportError::EntryCount { entries: doc.entries.len() as u64, size });
    }
    let mut leaves = Vec::with_capacity(doc.entries.len());
    for (i, e) in doc.entries.iter().enumerate() {
        let bytes = B64.decode(e).map_err(|_| ExportError::Encoding(format!("entry {i}")))?;
        if bytes.len() > MAX_ENTRY_LEN {
            return Err(ExportError::Encoding(format!("entry {i}")));
        }
        leaves.push(leaf_hash(&bytes));
    }
    if tree_root(&leaves) != *cp.root() {
        return Err(ExportError::RootMismatch);
    }

    for (i, earlier) in doc.earlier_checkpoints.iter().enumerate() {
        let what = format!("earlier checkpoint {i}");
        let note = parse_note(&earlier.checkpoint, &what)?;
        let e = log_key.verify_origin(&note, &doc.origin).map_err(cp_err(what.clone()))?;
        for w in &witnesses {
            w.verify(&note).map_err(cp_err(what.clone()))?;
        }
        let proof = decode_proof(&earlier.consistency_proof, &what)?;
        verify_consistency(e.size(), size, e.root(), cp.root(), &proof)
            .map_err(|error| ExportError::Proof { what, error })?;
    }

    for (i, p) in doc.inclusion_proofs.iter().enumerate() {
        let what = format!("inclusion proof {i} (entry {})", p.index);
        let proof = decode_proof(&p.proof, &what)?;
        let leaf = usize::try_from(p.index).ok().and_then(|i| leaves.get(i)).ok_or(
            ExportError::Proof {
                what: what.clone(),
                error: ProofError::IndexOutOfRange { index: p.index, size },
            },
        )?;
        verify_inclusion(leaf, p.index, size, &proof, cp.root())
            .map_err(|error| ExportError::Proof { what, error })?;
    }

    Ok(ExportSummary {
        origin: doc.origin.clone(),
        size,
        root: *cp.root(),
        cosignatures,
        earlier_checkpoints: doc.earlier_checkpoints.len(),
        inclusion_proofs: doc.inclusion_proofs.len(),
    })
}
