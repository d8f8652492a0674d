//! Witnessing: cosignatures (c2sp.org/tlog-cosignature, `cosignature/v1`) and equivocation
//! detection.
//!
//! ```text
//!   log ──(signed checkpoint N, consistency proof M→N)──► Witness
//!                                                          │ 1. log signature valid?
//!                                                          │ 2. proof from the last checkpoint
//!                                                          │    it saw (M) to N valid?
//!                                                          │ 3. remember N, cosign
//!   note + "— witness.example/w1 base64(id ‖ time ‖ sig)" ◄┘
//! ```
//!
//! A cosignature signs `cosignature/v1\ntime <t>\n` followed by the checkpoint body, where `t`
//! is the witness's timestamp (seconds since the Unix epoch, given by the caller).
//!
//! Two validly signed checkpoints of one origin that cannot both be true are an
//! [`Equivocation`]: the same size with different roots, or a consistency proof that does not
//! verify. Anyone holding the log's verifier key can re-check one with
//! [`Equivocation::verify`].
//!
//! ```
//! use ed25519_dalek::SigningKey;
//! use llmkg_governance::audit::checkpoint::{Checkpoint, LogSigner};
//! use llmkg_governance::audit::witness::{Witness, WitnessKey};
//!
//! let log = LogSigner::new("llmkg.example/audit", SigningKey::from_bytes(&[1; 32]))?;
//! let key = WitnessKey::new("witness.example/w1", SigningKey::from_bytes(&[2; 32]))?;
//! let verifier = key.verifier();
//! let mut witness = Witness::new(key);
//! witness.add_log("llmkg.example/audit", log.verifier());
//!
//! let mut note = log.sign(&Checkpoint::new("llmkg.example/audit", 0, [0; 32])?);
//! // First sight of this origin: no proof needed.
//! let cosig = witness.cosign(&note, &[], 1_700_000_000)?;
//! assert_eq!(verifier.verify_line(note.body(), &cosig), Some(1_700_000_000));
//! note.add_signature(cosig);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use thiserror::Error;

use super::checkpoint::{
    Checkpoint, CheckpointError, LogVerifier, NoteSignature, SignedNote, decode_vkey, encode_vkey,
    key_id,
};
use super::merkle::{Hash, ProofError, verify_consistency};

/// The signature type byte of a `cosignature/v1` key (c2sp.org/tlog-cosignature).
pub const ALG_COSIGNATURE_V1: u8 = 0x04;

/// The message a `cosignature/v1` signs: `cosignature/v1\ntime <timestamp>\n` ‖ body.
pub fn cosigned_message(body: &str, timestamp: u64) -> Vec<u8> {
    let mut m = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    m.extend_from_slice(body.as_bytes());
    m
}

/// A witness's cosigning key (ed25519) and its key name.
pub struct WitnessKey {
    name: String,
    key: SigningKey,
    key_id: u32,
}

impl fmt::Debug for WitnessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WitnessKey")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl WitnessKey {
    /// A key named `name` (a valid key name: no whitespace, no `+`).
    pub fn new(name: &str, key: SigningKey) -> Result<Self, CheckpointError> {
        let verifier = CosignatureVerifier::new(name, key.verifying_key())?;
        Ok(Self { name: verifier.name, key, key_id: verifier.key_id })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public half.
    pub fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
            key_id: self.key_id,
        }
    }

    /// The cosignature line over a checkpoint body at `timestamp`, without any check: a
    /// [`Witness`] checks before it calls this.
    pub fn cosign_body(&self, body: &str, timestamp: u64) -> NoteSignature {
        let sig = self.key.sign(&cosigned_message(body, timestamp));
        let mut bytes = Vec::with_capacity(72);
        bytes.extend_from_slice(&timestamp.to_be_bytes());
        bytes.extend_from_slice(&sig.to_bytes());
        // The name was validated in `new`.
        NoteSignature::from_parts(self.name.clone(), self.key_id, bytes)
    }
}

/// The public key of a witness: checks its `cosignature/v1` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignatureVerifier {
    name: String,
    key: VerifyingKey,
    key_id: u32,
}

impl CosignatureVerifier {
    /// A verifier for witness key `name` with public key `key`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, CheckpointError> {
        if !super::checkpoint::is_valid_key_name(name) {
            return Err(CheckpointError::InvalidName(name.to_owned()));
        }
        let key_id = key_id(name, ALG_COSIGNATURE_V1, key.as_bytes());
        Ok(Self { name: name.to_owned(), key, key_id })
    }

    /// Parses a verifier key string `name+<8 hex key id>+base64(0x04 ‖ key)`.
    pub fn from_vkey(vkey: &str) -> Result<Self, CheckpointError> {
        let (name, key, key_id) = decode_vkey(vkey, ALG_COSIGNATURE_V1)?;
        Ok(Self { name, key, key_id })
    }

    /// The verifier key string.
    pub fn to_vkey(&self) -> String {
        encode_vkey(&self.name, ALG_COSIGNATURE_V1, &self.key)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// If `sig` is this witness's valid cosignature over `body`, its timestamp.
    pub fn verify_line(&self, body: &str, sig: &NoteSignature) -> Option<u64> {
        if sig.name() != self.name || sig.key_id() != self.key_id || sig.bytes().len() != 72 {
            return None;
        }
        let (ts, s) = sig.bytes().split_at(8);
        let timestamp = u64::from_be_bytes(ts.try_into().ok()?);
        let s: [u8; 64] = s.try_into().ok()?;
        self.key
            .verify_strict(&cosigned_message(body, timestamp), &Signature::from_bytes(&s))
            .ok()
            .map(|()| timestamp)
    }

    /// The timestamp of this witness's valid cosignature on `note`, if it carries one. A line
    /// with this key's name and id that does not verify is an error.
    pub fn verify(&self, note: &SignedNote) -> Result<Option<u64>, CheckpointError> {
        let mut found = None;
        for sig in note.signatures_by(&self.name, self.key_id) {
            match self.verify_line(note.body(), sig) {
                Some(t) => found = Some(t),
                None => {
                    return Err(CheckpointError::BadSignature {
                        name: self.name.clone(),
                        key_id: self.key_id,
                    });
                }
            }
        }
        Ok(found)
    }
}

/// Why two checkpoints of one origin cannot both be true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EquivocationKind {
    /// Same size, different roots: conclusive on its own.
    SameSizeDifferentRoots,
    /// The consistency proof from the smaller to the larger does not verify (or the log
    /// offered none). Conclusive only in that the log failed to prove consistency; an honest
    /// log can always produce a valid proof, so a third party may ask it for one.
    InconsistentProof,
}

/// Evidence that a log equivocated: two checkpoints of one origin, both validly signed by the
/// log, that cannot both be true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equivocation {
    first: SignedNote,
    second: SignedNote,
    proof: Option<Vec<Hash>>,
    kind: EquivocationKind,
}

/// An [`Equivocation`] did not check out: it is no evidence. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EquivocationError {
    /// One of the two checkpoints is not validly signed by the log (or does not parse).
    #[error("a checkpoint is not validly signed by the log: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The two checkpoints have different origins.
    #[error("the checkpoints have different origins")]
    DifferentOrigins,
    /// The two checkpoints are consistent (same tree, or the proof verifies).
    #[error("the checkpoints are consistent")]
    Consistent,
    /// The checkpoints have different sizes and no proof is attached.
    #[error("different sizes and no consistency proof attached")]
    NoProof,
}

impl Equivocation {
    /// The earlier-seen checkpoint.
    pub fn first(&self) -> &SignedNote {
        &self.first
    }

    /// The later-seen checkpoint.
    pub fn second(&self) -> &SignedNote {
        &self.second
    }

    /// The consistency proof that failed, if the sizes differ.
    pub fn proof(&self) -> Option<&[Hash]> {
        self.proof.as_deref()
    }

    /// What kind of contradiction this is.
    pub fn kind(&self) -> EquivocationKind {
        self.kind
    }

    /// Re-checks the evidence with the log's verifier key alone: both notes validly signed,
    /// one origin, and either one size with two roots or a failing consistency proof.
    pub fn verify(&self, log: &LogVerifier) -> Result<EquivocationKind, EquivocationError> {
        let a = log.verify(&self.first)?;
        let b = log.verify(&self.second)?;
        classify(&a, &b, self.proof.as_deref())?.ok_or(EquivocationError::NoProof)
    }
}

/// `Ok(Some(kind))` for a contradiction, `Ok(None)` if different sizes come without proof,
/// `Err(Consistent)` if consistent.
fn classify(
    a: &Checkpoint,
    b: &Checkpoint,
    proof: Option<&[Hash]>,
) -> Result<Option<EquivocationKind>, EquivocationError> {
    if a.origin() != b.origin() {
        return Err(EquivocationError::DifferentOrigins);
    }
    if a.size() == b.size() {
        return if a.root() == b.root() {
            Err(EquivocationError::Consistent)
        } else {
            Ok(Some(EquivocationKind::SameSizeDifferentRoots))
        };
    }
    let Some(proof) = proof else {
        return Ok(None);
    };
    let (old, new) = if a.size() < b.size() { (a, b) } else { (b, a) };
    match verify_consistency(old.size(), new.size(), old.root(), new.root(), proof) {
        Ok(()) => Err(EquivocationError::Consistent),
        Err(_) => Ok(Some(EquivocationKind::InconsistentProof)),
    }
}

/// The outcome of [`check_pair`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PairCheck {
    /// Same tree, or the consistency proof verifies.
    Consistent,
    /// Different sizes and no proof given: nothing can be concluded yet.
    Unproven,
    /// The log equivocated.
    Equivocation(Box<Equivocation>),
}

/// Checks two signed checkpoints of a log against each other, with an optional consistency
/// proof between them (from the smaller to the larger). Both must be validly signed by `log`
/// and share an origin, else an error.
pub fn check_pair(
    log: &LogVerifier,
    first: &SignedNote,
    second: &SignedNote,
    proof: Option<&[Hash]>,
) -> Result<PairCheck, EquivocationError> {
    let a = log.verify(first)?;
    let b = log.verify(second)?;
    match classify(&a, &b, proof) {
        Err(EquivocationError::Consistent) => Ok(PairCheck::Consistent),
        Err(e) => Err(e),
        Ok(None) => Ok(PairCheck::Unproven),
        Ok(Some(kind)) => Ok(PairCheck::Equivocation(Box::new(Equivocation {
            first: first.clone(),
            second: second.clone(),
            proof: if a.size() == b.size() { None } else { proof.map(<[Hash]>::to_vec) },
            kind,
        }))),
    }
}

/// A witness refused to cosign. **Nothing changed**: the witness still remembers the
/// checkpoint it had seen before.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WitnessError {
    /// The witness does not follow this origin.
    #[error("unknown origin {0:?}")]
    UnknownOrigin(String),
    /// The checkpoint is malformed or not validly signed by the log.
    #[error("checkpoint refused: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint is smaller than the one the witness saw last (a rollback).
    #[error("checkpoint of size {offered} is older than the last seen, of size {seen}")]
    Stale {
        /// The size last seen.
        seen: u64,
        /// The size offered.
        offered: u64,
    },
    /// The consistency proof is malformed for the sizes (wrong length); the log may retry
    /// with a correct proof. (A proof of the right shape that does not lead to both roots
    /// is an [`Equivocation`](WitnessError::Equivocation).)
    #[error("consistency proof refused: {0}")]
    Proof(ProofError),
    /// The log equivocated: the evidence is attached.
    #[error("the log equivocated ({:?})", .0.kind())]
    Equivocation(Box<Equivocation>),
}

#[derive(Debug, Clone)]
struct FollowedLog {
    verifier: LogVerifier,
    latest: Option<(Checkpoint, SignedNote)>,
}

/// A witness (a peer organization): checks each checkpoint a log offers for consistency with
/// the last one it saw of that origin, remembers it, and only then cosigns.
///
/// The remembered checkpoints live in memory; a host persists them with
/// [`latest`](Self::latest) and restores them with [`restore`](Self::restore).
#[derive(Debug)]
pub struct Witness {
    key: WitnessKey,
    logs: BTreeMap<String, FollowedLog>,
}

impl Witness {
    /// A witness cosigning with `key`, following no log yet.
    pub fn new(key: WitnessKey) -> Self {
        Self { key, logs: BTreeMap::new() }
    }

    /// The witness's verifier.
    pub fn verifier(&self) -> CosignatureVerifier {
        self.key.verifier()
    }

    /// Follows the log of `origin`, signed by `log` (replacing any earlier key, forgetting
    /// what was seen).
    pub fn add_log(&mut self, origin: &str, log: LogVerifier) {
        self.logs.insert(origin.to_owned(), FollowedLog { verifier: log, latest: None });
    }

    /// The last checkpoint cosigned for `origin`.
    pub fn latest(&self, origin: &str) -> Option<&SignedNote> {
        self.logs.get(origin)?.latest.as_ref().map(|(_, n)| n)
    }

    /// Restores the last checkpoint seen for a followed `origin` (as saved from
    /// [`latest`](Self::latest)); it must be validly signed by the log.
    pub fn restore(&mut self, origin: &str, note: &SignedNote) -> Result<(), WitnessError> {
        let followed =
            self.logs.get_mut(origin).ok_or_else(|| WitnessError::UnknownOrigin(origin.into()))?;
        let cp = followed.verifier.verify_origin(note, origin)?;
        followed.latest = Some((cp, note.clone()));
        Ok(())
    }

    /// Checks `note` (the log's signed checkpoint) and `proof` (the consistency proof from
    /// the last checkpoint this witness saw of its origin; empty on first sight or for the
    /// same size), then remembers it and returns the cosignature line at `timestamp`.
    pub fn cosign(
        &mut self,
        note: &SignedNote,
        proof: &[Hash],
        timestamp: u64,
    ) -> Result<NoteSignature, WitnessError> {
        let origin = note.body().split('\n').next().unwrap_or_default().to_owned();
        let followed = self
            .logs
            .get_mut(&origin)
            .ok_or_else(|| WitnessError::UnknownOrigin(origin.clone()))?;
        let cp = followed.verifier.verify_origin(note, &origin)?;
        if let Some((seen, seen_note)) = &followed.latest {
            let equivocation = |kind, proof: Option<Vec<Hash>>| {
                WitnessError::Equivocation(Box::new(Equivocation {
                    first: seen_note.clone(),
                    second: note.clone(),
                    proof,
                    kind,
                }))
            };
            if cp.size() < seen.size() {
                return Err(WitnessError::Stale { seen: seen.size(), offered: cp.size() });
            }
            if cp.size() == seen.size() && cp.root() != seen.root() {
                return Err(equivocation(EquivocationKind::SameSizeDifferentRoots, None));
            }
            match verify_consistency(seen.size(), cp.size(), seen.root(), cp.root(), proof) {
                Ok(()) => {}
                Err(e @ (ProofError::WrongLength { .. } | ProofError::SizesOutOfOrder { .. })) => {
                    return Err(WitnessError::Proof(e));
                }
                Err(_) => {
                    return Err(equivocation(
                        EquivocationKind::InconsistentProof,
                        Some(proof.to_vec()),
                    ));
                }
            }
        } else if !proof.is_empty() {
            return Err(WitnessError::Proof(ProofError::WrongLength { len: proof.len() }));
        }
        let sig = self.key.cosign_body(note.body(), timestamp);
        followed.latest = Some((cp, note.clone()));
        Ok(sig)
    }
}
