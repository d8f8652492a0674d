//! Checkpoints (c2sp.org/tlog-checkpoint) in signed notes (c2sp.org/signed-note).
//!
//! ```text
//!   llmkg.example/audit                          ← origin
//!   4711                                         ← tree size, decimal
//!   rMYlWtnI3cH+0pQy1O3xVyQd9XgrnTQ8sVbq7Hhd2lI=  ← root hash, standard base64
//!                                                ← blank line: end of the body
//!   — llmkg.example/audit AbCd…base64(key id ‖ ed25519 signature of the body)…
//!   — witness.example/w1 …base64(key id ‖ timestamp ‖ signature)…   (cosignatures)
//! ```
//!
//! The log signs with a [`LogSigner`], a key of its own (not a node key): the signature is
//! plain ed25519 over the body bytes, so every C2SP tool can check it. Its public half is a
//! [`LogVerifier`], written as a verifier key string `name+keyid+base64(0x01 ‖ key)`.
//!
//! ```
//! use ed25519_dalek::SigningKey;
//! use llmkg_governance::audit::checkpoint::{Checkpoint, LogSigner, LogVerifier, SignedNote};
//!
//! let signer = LogSigner::new("llmkg.example/audit", SigningKey::from_bytes(&[7; 32]))?;
//! let checkpoint = Checkpoint::new("llmkg.example/audit", 3, [0xAB; 32])?;
//! let text = signer.sign(&checkpoint).to_text();
//!
//! // An auditor knows the verifier key string only.
//! let verifier = LogVerifier::from_vkey(&signer.verifier().to_vkey())?;
//! let parsed = verifier.verify(&SignedNote::parse(text.as_bytes())?)?;
//! assert_eq!(parsed, checkpoint);
//! # Ok::<(), llmkg_governance::audit::checkpoint::CheckpointError>(())
//! ```

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::merkle::{HASH_LEN, Hash};

/// The longest signed note [`SignedNote::parse`] accepts: 64 KiB.
pub const MAX_NOTE_LEN: usize = 64 * 1024;
/// The most signature lines [`SignedNote::parse`] accepts.
pub const MAX_NOTE_SIGNATURES: usize = 100;
/// The longest key name or origin accepted: 256 bytes.
pub const MAX_NAME_LEN: usize = 256;
/// The signature type byte of an ed25519 note signer (c2sp.org/signed-note).
pub const ALG_ED25519: u8 = 0x01;

/// A checkpoint, signed note or key did not parse or verify. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The note is longer than [`MAX_NOTE_LEN`].
    #[error("note of {len} bytes is longer than the limit of {max}")]
    NoteTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The note is not UTF-8 or holds a control character other than newline.
    #[error("note is not UTF-8 text without control characters")]
    NotText,
    /// The note has no blank line separating body and signatures, or its body does not end
    /// with a newline, or its signature block does not end with one.
    #[error("note is not a body, a blank line and signature lines")]
    MalformedNote,
    /// The note has no signature line, or more than [`MAX_NOTE_SIGNATURES`].
    #[error("note has {count} signature lines (1 to {max} allowed)")]
    SignatureCount {
        /// How many there were (up to the first over the limit).
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A signature line is not `— <name> <base64>`, or its base64 holds fewer than 5 bytes.
    #[error("malformed signature line: {0}")]
    MalformedSignatureLine(String),
    /// A key name or origin is empty, too long, or holds whitespace or `+` (key names) or a
    /// control character (origins).
    #[error("invalid name or origin: {0:?}")]
    InvalidName(String),
    /// The checkpoint body is not origin, decimal size, base64 root hash and optional
    /// non-empty extension lines.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(&'static str),
    /// A verifier key string is not `name+<8 hex>+<base64>` with a matching key id and a
    /// valid key of the expected type.
    #[error("malformed verifier key: {0}")]
    MalformedVerifierKey(&'static str),
    /// The note carries no signature by the expected key (name and key id).
    #[error("note has no signature by {name}+{key_id:08x}")]
    MissingSignature {
        /// The key's name.
        name: String,
        /// The key's id.
        key_id: u32,
    },
    /// A signature by the expected key (name and key id) does not verify.
    #[error("signature by {name}+{key_id:08x} does not verify")]
    BadSignature {
        /// The key's name.
        name: String,
        /// The key's id.
        key_id: u32,
    },
    /// The checkpoint's origin is not the one expected.
    #[error("checkpoint origin {found:?} is not the expected {expected:?}")]
    WrongOrigin {
        /// The expected origin.
        expected: String,
        /// The checkpoint's.
        found: String,
    },
}

/// True if `name` is a valid note key name: 1 to [`MAX_NAME_LEN`] bytes, no Unicode whitespace,
/// no `+`, no control character.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.chars().any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

fn check_key_name(name: &str) -> Result<(), CheckpointError> {
    if is_valid_key_name(name) { Ok(()) } else { Err(CheckpointError::InvalidName(name.into())) }
}

/// The key id of a signed-note key: the first 4 bytes of SHA-256(name ‖ 0x0A ‖ type ‖ key),
/// big-endian.
pub fn key_id(name: &str, alg: u8, public_key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0A, alg]);
    h.update(public_key);
    let d: Hash = h.finalize().into();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Encodes a verifier key string: `name+<key id, 8 hex>+base64(type ‖ key)`.
pub(crate) fn encode_vkey(name: &str, alg: u8, key: &VerifyingKey) -> String {
    let mut bytes = Vec::with_capacity(33);
    bytes.push(alg);
    bytes.extend_from_slice(key.as_bytes());
    format!("{name}+{:08x}+{}", key_id(name, alg, key.as_bytes()), B64.encode(bytes))
}

/// Parses a verifier key string of type `alg`; returns the name, key and key id.
pub(crate) fn decode_vkey(
    vkey: &str,
    alg: u8,
) -> Result<(String, VerifyingKey, u32), CheckpointError> {
    use CheckpointError::MalformedVerifierKey as Bad;
    if vkey.len() > MAX_NAME_LEN + 64 {
        return Err(Bad("too long"));
    }
    let (name, rest) = vkey.split_once('+').ok_or(Bad("no '+' after the name"))?;
    let (id_hex, key_b64) = rest.split_once('+').ok_or(Bad("no '+' after the key id"))?;
    check_key_name(name)?;
    if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Bad("key id is not 8 hex digits"));
    }
    let id = u32::from_str_radix(id_hex, 16).map_err(|_| Bad("key id is not hex"))?;
    let bytes = B64.decode(key_b64).map_err(|_| Bad("key is not standard base64"))?;
    let Some((&found_alg, key)) = bytes.split_first() else {
        return Err(Bad("empty key"));
    };
    if found_alg != alg {
        return Err(Bad("unexpected key type"));
    }
    let key: [u8; 32] = key.try_into().map_err(|_| Bad("key is not 32 bytes"))?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| Bad("not an ed25519 public key"))?;
    if key_id(name, alg, key.as_bytes()) != id {
        return Err(Bad("key id does not match name and key"));
    }
    Ok((name.to_owned(), key, id))
}

/// A tree head: origin, size and root hash, with optional extension lines
/// (c2sp.org/tlog-checkpoint).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Checkpoint {
    origin: String,
    size: u64,
    root: Hash,
    extensions: Vec<String>,
}

fn check_origin(origin: &str) -> Result<(), CheckpointError> {
    if origin.is_empty() || origin.len() > MAX_NAME_LEN || origin.chars().any(char::is_control) {
        return Err(CheckpointError::InvalidName(origin.into()));
    }
    Ok(())
}

impl Checkpoint {
    /// A checkpoint without extension lines. The origin must be 1 to [`MAX_NAME_LEN`] bytes
    /// without control characters (C2SP recommends a schema-less URL).
    pub fn new(origin: &str, size: u64, root: Hash) -> Result<Self, CheckpointError> {
        check_origin(origin)?;
        Ok(Self { origin: origin.to_owned(), size, root, extensions: Vec::new() })
    }

    /// Adds an extension line (non-empty, no control characters).
    pub fn with_extension(mut self, line: &str) -> Result<Self, CheckpointError> {
        if line.is_empty() || line.chars().any(char::is_control) {
            return Err(CheckpointError::MalformedCheckpoint("invalid extension line"));
        }
        self.extensions.push(line.to_owned());
        Ok(self)
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The tree size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root hash.
    pub fn root(&self) -> &Hash {
        &self.root
    }

    /// The extension lines (without their newlines).
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }

    /// The note body: `origin\nsize\nbase64(root)\n` followed by the extension lines.
    pub fn to_body(&self) -> String {
        let mut s = format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root));
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a note body (strictly: canonical decimal size, canonical padded base64 of 32
    /// bytes, every line ending in a newline, no empty line).
    pub fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        use CheckpointError::MalformedCheckpoint as Bad;
        if body.len() > MAX_NOTE_LEN {
            return Err(CheckpointError::NoteTooLarge { len: body.len(), max: MAX_NOTE_LEN });
        }
        let text = body.strip_suffix('\n').ok_or(Bad("body does not end with a newline"))?;
        let mut lines = text.split('\n');
        let origin = lines.next().ok_or(Bad("no origin line"))?;
        check_origin(origin)?;
        let size = lines.next().ok_or(Bad("no size line"))?;
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(Bad("size is not a canonical decimal number"));
        }
        let size: u64 = size.parse().map_err(|_| Bad("size does not fit 64 bits"))?;
        let root = lines.next().ok_or(Bad("no root hash line"))?;
        let root = B64.decode(root).map_err(|_| Bad("root hash is not standard base64"))?;
        let root: Hash =
            root.as_slice().try_into().map_err(|_| Bad("root hash is not 32 bytes"))?;
        let mut cp = Self::new(origin, size, root)?;
        for line in lines {
            cp = cp.with_extension(line)?;
        }
        Ok(cp)
    }
}

/// One signature line of a signed note: key name, key id and the signature bytes after the id
/// (64 bytes for a log's ed25519 signature, 72 for a timestamped cosignature).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NoteSignature {
    name: String,
    key_id: u32,
    bytes: Vec<u8>,
}

impl NoteSignature {
    /// A signature line's content. The name must be a valid key name.
    pub fn new(name: &str, key_id: u32, bytes: Vec<u8>) -> Result<Self, CheckpointError> {
        check_key_name(name)?;
        Ok(Self { name: name.to_owned(), key_id, bytes })
    }

    /// A signature line from parts already checked (a valid key name).
    pub(crate) fn from_parts(name: String, key_id: u32, bytes: Vec<u8>) -> Self {
        Self { name, key_id, bytes }
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The signature bytes after the key id.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The line: `— <name> <base64(key id ‖ bytes)>\n`.
    pub fn to_line(&self) -> String {
        let mut raw = Vec::with_capacity(4 + self.bytes.len());
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&self.bytes);
        format!("\u{2014} {} {}\n", self.name, B64.encode(raw))
    }

    /// Parses one line (without its newline).
    pub fn parse_line(line: &str) -> Result<Self, CheckpointError> {
        let bad = |why: &str| CheckpointError::MalformedSignatureLine(why.to_owned());
        let rest = line.strip_prefix("\u{2014} ").ok_or_else(|| bad("no em dash and space"))?;
        let (name, b64) = rest.split_once(' ').ok_or_else(|| bad("no space after the name"))?;
        check_key_name(name)?;
        let raw = B64.decode(b64).map_err(|_| bad("not standard base64"))?;
        if raw.len() < 5 {
            return Err(bad("fewer than 5 bytes"));
        }
        let (id, bytes) = raw.split_at(4);
        let key_id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
        Ok(Self { name: name.to_owned(), key_id, bytes: bytes.to_vec() })
    }
}

/// A signed note (c2sp.org/signed-note): a text body ending in a newline, a blank line, and
/// one or more signature lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SignedNote {
    body: String,
    signatures: Vec<NoteSignature>,
}

impl SignedNote {
    /// A note of `body` (which must end with a newline) carrying `signatures`. No check of
    /// the signatures is made.
    pub fn new(body: String, signatures: Vec<NoteSignature>) -> Result<Self, CheckpointError> {
        if body.len() > MAX_NOTE_LEN {
            return Err(CheckpointError::NoteTooLarge { len: body.len(), max: MAX_NOTE_LEN });
        }
        if body.chars().any(|c| c.is_ascii_control() && c != '\n') {
            return Err(CheckpointError::NotText);
        }
        if !body.ends_with('\n') {
            return Err(CheckpointError::MalformedNote);
        }
        Ok(Self { body, signatures })
    }

    /// Parses a signed note defensively: at most [`MAX_NOTE_LEN`] bytes, UTF-8 without control
    /// characters other than newline, body and signatures split at the last blank line, 1 to
    /// [`MAX_NOTE_SIGNATURES`] well-formed signature lines. Signatures are not verified here.
    pub fn parse(bytes: &[u8]) -> Result<Self, CheckpointError> {
        if bytes.len() > MAX_NOTE_LEN {
            return Err(CheckpointError::NoteTooLarge { len: bytes.len(), max: MAX_NOTE_LEN });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| CheckpointError::NotText)?;
        if text.chars().any(|c| c.is_ascii_control() && c != '\n') {
            return Err(CheckpointError::NotText);
        }
        let (body, sigs) = text.rsplit_once("\n\n").ok_or(CheckpointError::MalformedNote)?;
        let sigs = sigs.strip_suffix('\n').ok_or(CheckpointError::MalformedNote)?;
        let mut signatures = Vec::new();
        for line in sigs.split('\n') {
            if signatures.len() == MAX_NOTE_SIGNATURES {
                return Err(CheckpointError::SignatureCount {
                    count: MAX_NOTE_SIGNATURES + 1,
                    max: MAX_NOTE_SIGNATURES,
                });
            }
            signatures.push(NoteSignature::parse_line(line)?);
        }
        Self::new(format!("{body}\n"), signatures)
    }

    /// The body (the signed text), ending with a newline.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The signature lines, in order.
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Adds a signature line, replacing any line of the same key name and id.
    pub fn add_signature(&mut self, sig: NoteSignature) {
        self.signatures.retain(|s| !(s.name == sig.name && s.key_id == sig.key_id));
        self.signatures.push(sig);
    }

    /// The signatures by key `name` with id `key_id`.
    pub fn signatures_by(&self, name: &str, key_id: u32) -> impl Iterator<Item = &NoteSignature> {
        self.signatures.iter().filter(move |s| s.name == name && s.key_id == key_id)
    }

    /// The note's text: body, blank line, signature lines.
    pub fn to_text(&self) -> String {
        let mut s = self.body.clone();
        s.push('\n');
        for sig in &self.signatures {
            s.push_str(&sig.to_line());
        }
        s
    }
}

impl fmt::Display for SignedNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// The log's checkpoint signing key: an ed25519 key and its key name (usually the origin).
/// Dedicated to checkpoints; the signature is plain ed25519 over the note body.
pub struct LogSigner {
    name: String,
    key: SigningKey,
    key_id: u32,
}

impl fmt::Debug for LogSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl LogSigner {
    /// A signer named `name` (a valid key name: no whitespace, no `+`).
    pub fn new(name: &str, key: SigningKey) -> Result<Self, CheckpointError> {
        check_key_name(name)?;
        let key_id = key_id(name, ALG_ED25519, key.verifying_key().as_bytes());
        Ok(Self { name: name.to_owned(), key, key_id })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The public half.
    pub fn verifier(&self) -> LogVerifier {
        LogVerifier { name: self.name.clone(), key: self.key.verifying_key(), key_id: self.key_id }
    }

    /// Signs `checkpoint`: a note of its body with one signature line.
    pub fn sign(&self, checkpoint: &Checkpoint) -> SignedNote {
        let body = checkpoint.to_body();
        let sig = self.sign_line(&body);
        SignedNote { body, signatures: vec![sig] }
    }

    /// The signature line of this key over a note body.
    pub fn sign_line(&self, body: &str) -> NoteSignature {
        let sig = self.key.sign(body.as_bytes());
        NoteSignature {
            name: self.name.clone(),
            key_id: self.key_id,
            bytes: sig.to_bytes().to_vec(),
        }
    }
}

/// The public key of a [`LogSigner`]: checks the log's signature on checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogVerifier {
    name: String,
    key: VerifyingKey,
    key_id: u32,
}

impl LogVerifier {
    /// A verifier for key `name` with public key `key`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, CheckpointError> {
        check_key_name(name)?;
        let key_id = key_id(name, ALG_ED25519, key.as_bytes());
        Ok(Self { name: name.to_owned(), key, key_id })
    }

    /// Parses a C2SP verifier key string `name+<8 hex key id>+base64(0x01 ‖ key)`.
    pub fn from_vkey(vkey: &str) -> Result<Self, CheckpointError> {
        let (name, key, key_id) = decode_vkey(vkey, ALG_ED25519)?;
        Ok(Self { name, key, key_id })
    }

    /// The C2SP verifier key string.
    pub fn to_vkey(&self) -> String {
        encode_vkey(&self.name, ALG_ED25519, &self.key)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The ed25519 public key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// True if `sig` is this key's valid signature over `body` (name, id and signature).
    pub fn verify_line(&self, body: &str, sig: &NoteSignature) -> bool {
        if sig.name != self.name || sig.key_id != self.key_id {
            return false;
        }
        let Ok(bytes) = <[u8; 64]>::try_from(sig.bytes.as_slice()) else {
            return false;
        };
        self.key.verify_strict(body.as_bytes(), &Signature::from_bytes(&bytes)).is_ok()
    }

    /// Verifies this key's signature on `note` and parses its body as a checkpoint.
    ///
    /// Every signature line with this key's name and id must verify (one must exist); lines
    /// of other keys (cosignatures) are ignored here.
    pub fn verify(&self, note: &SignedNote) -> Result<Checkpoint, CheckpointError> {
        let mut found = false;
        for sig in note.signatures_by(&self.name, self.key_id) {
            if !self.verify_line(&note.body, sig) {
                return Err(CheckpointError::BadSignature {
                    name: self.name.clone(),
                    key_id: self.key_id,
                });
            }
            found = true;
        }
        if !found {
            return Err(CheckpointError::MissingSignature {
                name: self.name.clone(),
                key_id: self.key_id,
            });
        }
        Checkpoint::parse_body(&note.body)
    }

    /// [`verify`](Self::verify), then checks the checkpoint's origin.
    pub fn verify_origin(
        &self,
        note: &SignedNote,
        origin: &str,
    ) -> Result<Checkpoint, CheckpointError> {
        let cp = self.verify(note)?;
        if cp.origin() != origin {
            return Err(CheckpointError::WrongOrigin {
                expected: origin.to_owned(),
                found: cp.origin().to_owned(),
            });
        }
        Ok(cp)
    }
}

/// Decodes a standard-base64 hash (32 bytes).
pub(crate) fn decode_hash(s: &str) -> Option<Hash> {
    let v = B64.decode(s).ok()?;
    <[u8; HASH_LEN]>::try_from(v.as_slice()).ok()
}

/// Encodes a hash as standard base64.
pub(crate) fn encode_hash(h: &Hash) -> String {
    B64.encode(h)
}
