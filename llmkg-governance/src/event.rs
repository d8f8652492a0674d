//! The security events the audit trail records.
//!
//! Each event becomes one entry of the audit log: a UTF-8 JSON object, written once and never
//! rewritten, whose bytes are what the log hashes. Ids are lower-case hex, times are
//! microseconds since the Unix epoch. The object always has `"at"` (when it was recorded),
//! `"by"` (the recording organization) and `"event"` (its kind, below); the other members
//! depend on the kind.
//!
//! | `event` | recorded when |
//! |---|---|
//! | `pin` | an organization's root is pinned with a trust level |
//! | `certificate-accepted` / `certificate-refused` | a node certificate is offered |
//! | `revocation` / `revocation-refused` | a revocation is offered |
//! | `node-key-rotated` / `node-key-rotation-refused` | a node key is replaced |
//! | `root-rotated` / `root-rotation-refused` | an organization's root is replaced |
//! | `policy-installed` / `policy-refused` | an organization publishes an access policy |
//! | `encryption-key` / `encryption-key-refused` | an organization's encryption key is offered |
//! | `access-decision` | any permission decision: branch request, merge, operation |
//! | `request-refused` | a request refused before any policy was asked (unknown branch, malformed request, missing key material, conflicting membership) |
//! | `commit-refused` | a received commit fails the branch's commit policy |
//! | `context-created` | a federated branch's security context is created |
//! | `membership-changed` | an organization joins or leaves a branch |
//! | `key-epoch` / `key-epoch-refused` | a federation data-key epoch is issued or accepted, or refused |
//! | `sealed-read-refused` | a sealed change set could not be opened |
//! | `consensus-decision` | the branch's consensus group decided a proposal |

use llmkg_federation_core::encoding::hex;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// One organization's verdict inside an `access-decision` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerdictRecord {
    /// The organization.
    pub org: String,
    /// `approved`, `refused` or `pending`.
    pub verdict: &'static str,
    /// The deciding rule, if one decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why (refused or pending).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[non_exhaustive]
#[allow(missing_docs)] // the fields are described in the module table and named for what they hold
pub enum AuditKind {
    Pin {
        org: String,
        root: String,
        level: String,
    },
    CertificateAccepted {
        org: String,
        node: String,
        serial: u64,
    },
    CertificateRefused {
        org: String,
        node: String,
        serial: u64,
        reason: String,
    },
    Revocation {
        org: String,
        serials: Vec<u64>,
    },
    RevocationRefused {
        org: String,
        reason: String,
    },
    NodeKeyRotated {
        org: String,
        node: String,
        serial: u64,
        revoked: Vec<u64>,
    },
    NodeKeyRotationRefused {
        org: String,
        reason: String,
    },
    RootRotated {
        org: String,
        old_root: String,
        new_root: String,
        sequence: u64,
        endorsers: Vec<String>,
    },
    RootRotationRefused {
        org: String,
        reason: String,
    },
    PolicyInstalled {
        org: String,
        version: u64,
        rules: usize,
    },
    PolicyRefused {
        org: String,
        reason: String,
    },
    EncryptionKey {
        org: String,
        key: String,
    },
    EncryptionKeyRefused {
        org: String,
        reason: String,
    },
    AccessDecision {
        federation: String,
        branch: String,
        node: String,
        operation: String,
        approved: bool,
        verdicts: Vec<VerdictRecord>,
    },
    RequestRefused {
        federation: String,
        branch: String,
        node: String,
        operation: String,
        reason: String,
    },
    CommitRefused {
        federation: String,
        branch: String,
        commit: String,
        author: String,
        reason: String,
    },
    ContextCreated {
        federation: String,
        branch: String,
        level: String,
        members: Vec<String>,
        key_epoch: Option<u64>,
    },
    MembershipChanged {
        federation: String,
        branch: String,
        members: Vec<String>,
        key_epoch: Option<u64>,
    },
    KeyEpoch {
        federation: String,
        epoch: u64,
        members: Vec<String>,
        issued_here: bool,
    },
    KeyEpochRefused {
        federation: String,
        epoch: u64,
        issuer: String,
        reason: String,
    },
    SealedReadRefused {
        federation: String,
        branch: String,
        epoch: u64,
        reason: String,
    },
    ConsensusDecision {
        group: String,
        index: u64,
        proposal: String,
        outcome: String,
    },
}

/// One audit entry: when, by whom, what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// When it was recorded (microseconds since the Unix epoch).
    pub at: i64,
    /// The organization that recorded it.
    pub by: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: AuditKind,
}

impl AuditEvent {
    /// The entry bytes: the event as one compact JSON object, at most
    /// [`MAX_ENTRY_LEN`](crate::audit::log::MAX_ENTRY_LEN) bytes. An event that would be
    /// longer (a refusal quoting a huge value from a peer) keeps its shape, but every string
    /// longer than 256 bytes is cut and marked with its length and SHA-256, so the refusal is
    /// still recorded.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Strings, integers, booleans and sequences of them: serializing cannot fail.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        if bytes.len() <= crate::audit::log::MAX_ENTRY_LEN {
            return bytes;
        }
        let mut value = serde_json::to_value(self).unwrap_or_default();
        shorten(&mut value);
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        if bytes.len() <= crate::audit::log::MAX_ENTRY_LEN {
            return bytes;
        }
        // Only a huge number of members could still exceed it: keep the kind and the time.
        let digest = hex(&Sha256::digest(&bytes));
        serde_json::to_vec(&serde_json::json!({
            "at": self.at,
            "by": self.by,
            "event": value.get("event").cloned().unwrap_or_default(),
            "truncated": {"bytes": bytes.len(), "sha256": digest},
        }))
        .unwrap_or_default()
    }
}

const KEEP: usize = 256;

fn shorten(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) if s.len() > KEEP => {
            let digest = hex(&Sha256::digest(s.as_bytes()));
            let mut cut = KEEP;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            *s = format!("{}… ({} bytes, sha256 {digest})", &s[..cut], s.len());
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(shorten),
        serde_json::Value::Object(map) => map.values_mut().for_each(shorten),
        _ => {}
    }
}
