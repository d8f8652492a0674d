//! Signed, content-addressed commits.
//!
//! A [`Commit`] records its parents, the exact [`ChangeSet`] it applies to its first parent's
//! state, its author and organization, a timestamp from the repository's clock, a message and
//! the [`StateRoot`] of the resulting state. Its [`CommitId`] is the BLAKE3 hash of its
//! canonical encoding (without the signature, under the domain `llmkg/commit/v1`), and it is
//! signed by its author under the context `llmkg/commit/v1`.
//!
//! A [`SignedCommit`] can only be obtained by signing or by decoding bytes whose id, signature
//! and authorship check out. Checking the state root needs the parent's state, which the
//! [`Repository`](crate::Repository) does on every load and receipt.

use serde::{Deserialize, Serialize};

use crate::encoding::{self, DecodeError, MAX_ENCODED_LEN, content_id, hash_bytes};
use crate::identity::{
    EnvelopeTail, NodeId, NodeKeypair, OrgId, SignatureError, Signer, SignerError, SigningInput,
};
use crate::merkle::StateRoot;
use crate::term::ChangeSet;
use crate::time::Timestamp;

/// Most parents a commit may have (a merge has two; octopus merges are not produced).
pub const MAX_PARENTS: usize = 16;
/// Bytes of an envelope's tail: the signer's id (32) and the signature (64, length-prefixed).
const ENVELOPE_TAIL_LEN: usize = 32 + 1 + 64;

/// Longest commit message, in bytes.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

content_id!(
    /// The content id of a [`Commit`].
    CommitId
);

impl CommitId {
    const DOMAIN: &'static [u8] = b"llmkg/commit/v1";

    /// The id of `commit`.
    pub fn of(commit: &Commit) -> Self {
        Self::from_encoding(&encoding::encode(commit))
    }

    /// The id of the commit whose canonical encoding is `bytes`.
    fn from_encoding(bytes: &[u8]) -> Self {
        Self::from_bytes(hash_bytes(Self::DOMAIN, bytes))
    }
}

/// A commit: a signed step from its first parent's state to a new state.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "RawCommit")]
pub struct Commit {
    // `parents` must stay the first field: ancestry walks read it from the front of the
    // encoding without decoding the change set.
    parents: Vec<CommitId>,
    changes: ChangeSet,
    author: NodeId,
    org: OrgId,
    timestamp: Timestamp,
    message: String,
    state_root: StateRoot,
}

#[derive(Deserialize)]
struct RawCommit {
    parents: Vec<CommitId>,
    changes: ChangeSet,
    author: NodeId,
    org: OrgId,
    timestamp: Timestamp,
    message: String,
    state_root: StateRoot,
}

/// Why a commit's fields were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitShapeError {
    /// More than [`MAX_PARENTS`] parents.
    #[error("{0} parents exceed the limit of {MAX_PARENTS}")]
    TooManyParents(usize),
    /// The same parent listed twice.
    #[error("parent {0} is listed twice")]
    DuplicateParent(CommitId),
    /// The message is longer than [`MAX_MESSAGE_LEN`].
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_LEN} bytes")]
    MessageTooLong(usize),
}

impl TryFrom<RawCommit> for Commit {
    type Error = CommitShapeError;
    fn try_from(r: RawCommit) -> Result<Self, Self::Error> {
        Commit::new(r.parents, r.changes, r.author, r.org, r.timestamp, r.message, r.state_root)
    }
}

impl Commit {
    /// Assembles a commit, checking the bounds on parents and message.
    pub fn new(
        parents: Vec<CommitId>,
        changes: ChangeSet,
        author: NodeId,
        org: OrgId,
        timestamp: Timestamp,
        message: String,
        state_root: StateRoot,
    ) -> Result<Self, CommitShapeError> {
        Self::check_shape(&parents, &message)?;
        Ok(Commit { parents, changes, author, org, timestamp, message, state_root })
    }

    /// What [`Commit::new`] checks, without building the commit.
    pub(crate) fn check_shape(parents: &[CommitId], message: &str) -> Result<(), CommitShapeError> {
        if parents.len() > MAX_PARENTS {
            return Err(CommitShapeError::TooManyParents(parents.len()));
        }
        for (i, p) in parents.iter().enumerate() {
            if parents.iter().take(i).any(|q| q == p) {
                return Err(CommitShapeError::DuplicateParent(*p));
            }
        }
        if message.len() > MAX_MESSAGE_LEN {
            return Err(CommitShapeError::MessageTooLong(message.len()));
        }
        Ok(())
    }

    /// The parents; the first is the one `changes` applies to. Empty for a root commit.
    pub fn parents(&self) -> &[CommitId] {
        &self.parents
    }

    /// The exact changes from the first parent's state (or the empty state).
    pub fn changes(&self) -> &ChangeSet {
        &self.changes
    }

    /// The changes, consuming the commit (no copy of a large change set).
    pub fn into_changes(self) -> ChangeSet {
        self.changes
    }

    /// The node that made and signed the commit.
    pub fn author(&self) -> NodeId {
        self.author
    }

    /// The author's organization.
    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// When the commit was made, by the author's clock.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The commit message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The Merkle root of the state after this commit.
    pub fn state_root(&self) -> StateRoot {
        self.state_root
    }

    /// The content id.
    pub fn id(&self) -> CommitId {
        CommitId::of(self)
    }
}

impl Commit {
    /// The (reserved) signature context of commits. A commit's signature covers this context
    /// and its id (raw format: `len(context) as u64 LE ‖ context ‖ id`), so signing and
    /// verifying cost the same whatever the size of the change set. Commit signatures are not
    /// bound to a federation: a commit is content that may travel between federations, and
    /// whether it is admissible in one is a [`CommitPolicy`](crate::CommitPolicy) decision.
    pub const SIGNATURE_CONTEXT: &'static str = "llmkg/commit/v1";
}

/// A commit was rejected before its state was looked at. Nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitVerifyError {
    /// The bytes do not decode, or the signature does not verify.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The commit hashes to another id than the one it was fetched or announced under.
    #[error("commit content hashes to {actual}, not {expected}")]
    IdMismatch {
        /// The id it was fetched or announced under.
        expected: CommitId,
        /// The id of its content.
        actual: CommitId,
    },
    /// The [`Signer`] failed; nothing was signed.
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// The commit's fields break a bound (parents, message).
    #[error(transparent)]
    Shape(#[from] CommitShapeError),
    /// The signer is not the commit's author.
    #[error("commit by {author} is signed by {signer}")]
    SignerNotAuthor {
        /// The author named in the commit.
        author: NodeId,
        /// Who signed it.
        signer: NodeId,
    },
}

impl From<DecodeError> for CommitVerifyError {
    fn from(e: DecodeError) -> Self {
        CommitVerifyError::Signature(SignatureError::Decode(e))
    }
}

/// A commit whose id, signature and authorship have been verified, with its envelope bytes
/// (the commit's canonical encoding, the signer and the signature, as stored and sent).
///
/// The envelope is the commit's canonical encoding, the signer's key and the signature (a
/// length-prefixed byte string) over [`Commit::SIGNATURE_CONTEXT`] and the id.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedCommit {
    id: CommitId,
    commit: Commit,
    signer: NodeId,
    signature: [u8; 64],
    bytes: Vec<u8>,
}

impl SignedCommit {
    /// Signs `commit` with `keypair`. The author must be the keypair's node.
    pub fn sign(keypair: &NodeKeypair, commit: Commit) -> Result<Self, CommitVerifyError> {
        Self::sign_with(keypair, commit)
    }

    /// Signs `commit` with any [`Signer`] (a key outside the process, say). The author must
    /// be the signer's node. Fails with [`CommitVerifyError::Signer`] if the signer does.
    pub fn sign_with(signer: &dyn Signer, commit: Commit) -> Result<Self, CommitVerifyError> {
        Self::try_sign_with(signer, commit).map_err(|failed| failed.0)
    }

    /// [`SignedCommit::sign_with`], handing the commit back on failure (the repository
    /// undoes its changes with it).
    pub(crate) fn try_sign_with(
        signer: &dyn Signer,
        commit: Commit,
    ) -> Result<Self, Box<(CommitVerifyError, Commit)>> {
        let node = signer.node_id();
        if commit.author != node {
            let author = commit.author;
            let e = CommitVerifyError::SignerNotAuthor { author, signer: node };
            return Err(Box::new((e, commit)));
        }
        // Room for the envelope's tail (the signer's id and the signature), so that appending
        // it does not reallocate: a vector one byte short would double, and a large commit's
        // encoding be held twice over.
        let mut bytes = encoding::encode_sized(&commit, ENVELOPE_TAIL_LEN);
        let id = CommitId::from_encoding(&bytes);
        let input = SigningInput::reserved(Commit::SIGNATURE_CONTEXT, id.as_bytes());
        let signature = match signer.sign(&input) {
            Ok(s) => s,
            Err(e) => return Err(Box::new((e.into(), commit))),
        };
        encoding::encode_into(&EnvelopeTail { signer: node, signature }, &mut bytes);
        Ok(Self { id, commit, signer: node, signature, bytes })
    }

    /// Assembles the envelope of `commit` from a signature made elsewhere (by its author,
    /// over the commit's id), verifying it: how every replica rebuilds the one commit a
    /// federated merge carries in its proposal.
    pub fn assemble(commit: Commit, signature: [u8; 64]) -> Result<Self, CommitVerifyError> {
        let signer = commit.author;
        let mut bytes = encoding::encode_sized(&commit, ENVELOPE_TAIL_LEN);
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(DecodeError::TooLarge { len: bytes.len(), limit: MAX_ENCODED_LEN }.into());
        }
        let id = CommitId::from_encoding(&bytes);
        signer.verify(Commit::SIGNATURE_CONTEXT, id.as_bytes(), &signature)?;
        encoding::encode_into(&EnvelopeTail { signer, signature }, &mut bytes);
        Ok(Self { id, commit, signer, signature, bytes })
    }

    /// The id of the commit in envelope `bytes` *if* the envelope is well formed: the hash of
    /// everything but its fixed-length tail (signer and signature), computed without decoding.
    /// Only a match with an id already verified means anything: then the envelope holds that
    /// very commit (whatever its tail). A malformed envelope's claim matches nothing.
    pub fn claimed_id(bytes: &[u8]) -> Option<CommitId> {
        let len = bytes.len().checked_sub(ENVELOPE_TAIL_LEN)?;
        Some(CommitId::from_encoding(bytes.get(..len)?))
    }

    /// Decodes `bytes` and verifies signature and authorship, and, when given, that the
    /// content hashes to `expected`.
    pub fn decode(bytes: &[u8], expected: Option<CommitId>) -> Result<Self, CommitVerifyError> {
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(DecodeError::TooLarge { len: bytes.len(), limit: MAX_ENCODED_LEN }.into());
        }
        let (commit, rest) = encoding::decode_prefix::<Commit>(bytes)?;
        let value_len = bytes.len() - rest.len();
        let tail: EnvelopeTail = encoding::decode(rest)?;
        let value_bytes = bytes.get(..value_len).unwrap_or_default();
        // The id is the hash of the canonical encoding: refuse any other spelling of it.
        encoding::ensure_canonical(&commit, value_bytes)?;
        let id = CommitId::from_encoding(value_bytes);
        if let Some(expected) = expected
            && expected != id
        {
            return Err(CommitVerifyError::IdMismatch { expected, actual: id });
        }
        tail.signer.verify(Commit::SIGNATURE_CONTEXT, id.as_bytes(), &tail.signature)?;
        if tail.signer != commit.author {
            return Err(CommitVerifyError::SignerNotAuthor {
                author: commit.author,
                signer: tail.signer,
            });
        }
        Ok(Self {
            id,
            commit,
            signer: tail.signer,
            signature: tail.signature,
            bytes: bytes.to_vec(),
        })
    }

    /// The encoded envelope, as stored and sent.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The commit and its encoded envelope, taken apart without copying the encoding.
    pub(crate) fn into_commit_and_bytes(self) -> (Commit, Vec<u8>) {
        (self.commit, self.bytes)
    }

    /// The encoded envelope, as stored and sent.
    pub fn encode(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// The content id.
    pub fn id(&self) -> CommitId {
        self.id
    }

    /// The commit.
    pub fn commit(&self) -> &Commit {
        &self.commit
    }

    /// The commit, consuming the envelope (its encoding is dropped).
    pub fn into_commit(self) -> Commit {
        self.commit
    }

    /// The signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// The signer (always the author).
    pub fn signer(&self) -> NodeId {
        self.signer
    }
}

/// Reads the parent list from the front of an encoded commit envelope without decoding or
/// verifying the rest. Only for walks whose every step is verified afterwards.
pub(crate) fn peek_parents(bytes: &[u8]) -> Result<Vec<CommitId>, DecodeError> {
    let (parents, _) = encoding::decode_prefix::<Vec<CommitId>>(bytes)?;
    if parents.len() > MAX_PARENTS {
        return Err(DecodeError::Malformed {
            what: "Commit",
            reason: format!("{} parents exceed the limit of {MAX_PARENTS}", parents.len()),
        });
    }
    Ok(parents)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::term::{Term, Triple};

    /// The envelope is encoded at its exact size: the tail was reserved, so appending it did
    /// not reallocate (which would double a large commit's buffer).
    #[test]
    fn envelope_is_built_at_its_exact_size() {
        let key = NodeKeypair::from_secret_bytes([7; 32]);
        let iri = |s: &str| Term::iri(s).unwrap();
        let triples = (0..200).map(|i| {
            let (p, o) = (iri("https://example.org/p"), iri("https://example.org/o"));
            Triple::new(iri(&format!("https://example.org/s{i}")), p, o).unwrap()
        });
        let commit = Commit::new(
            Vec::new(),
            ChangeSet::adding(triples),
            key.node_id(),
            OrgId::new("acme").unwrap(),
            Timestamp::from_micros(1),
            "import".to_owned(),
            StateRoot::from_bytes([0; 32]),
        )
        .unwrap();
        let body = encoding::encode(&commit).len();
        let signed = SignedCommit::sign(&key, commit.clone()).unwrap();
        assert_eq!(signed.bytes.len(), body + ENVELOPE_TAIL_LEN);
        assert_eq!(signed.bytes.capacity(), signed.bytes.len());
        let assembled = SignedCommit::assemble(commit, signed.signature).unwrap();
        assert_eq!(assembled.bytes, signed.bytes);
        assert_eq!(assembled.bytes.capacity(), assembled.bytes.len());
    }
}
