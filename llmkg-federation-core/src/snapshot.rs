//! Snapshots: the state at a commit in bounded chunks, each checked on arrival.
//!
//! A fresh replica installs a state without replaying history: the sender cuts its Merkle
//! tree along a **frontier** — subtrees that together hold every triple exactly once, each
//! small enough that its triples encode within a byte bound — and sends a
//! [`SnapshotManifest`] (the state root and, for each frontier subtree, its path, hash and
//! count) followed by one [`SnapshotChunk`] per subtree, in any order.
//!
//! ```text
//!  manifest: root ── recomputed from the cut ──┐       chunk (prefix 3a): triples
//!   cut: [0 | 1 | 2 | 3a | 3b | ... | f]       │        ├─ ids all start with 3a, sorted
//!          ▲                                   │        ├─ count = cut count
//!          └── each chunk's ids rebuild the ───┘        └─ ids rebuild the cut hash
//!              subtree hash of its cut entry
//! ```
//!
//! The [`SnapshotReceiver`] refuses a manifest whose cut does not rebuild the expected root,
//! and checks each chunk completely before keeping it: a bad, unknown or repeated chunk
//! changes nothing. [`SnapshotReceiver::finish`] builds the [`GraphState`] in bulk once every
//! chunk is in and checks its root once more.
//!
//! ```
//! use llmkg_federation_core::{GraphState, Term, Triple};
//! use llmkg_federation_core::snapshot::{Snapshot, SnapshotChunk, SnapshotReceiver};
//!
//! let mut state = GraphState::new();
//! for i in 0..100 {
//!     let iri = |s: String| Term::iri(s).unwrap();
//!     state.insert(&Triple::new(iri(format!("urn:s:{i}")), iri("urn:p".into()), Term::string("v")?)?)?;
//! }
//! let root = state.state_root();
//! let (manifest, chunks) = Snapshot::build(&state, 4096)?.into_parts();
//! let mut receiver = SnapshotReceiver::new(manifest, &root)?;
//! for chunk in chunks {
//!     receiver.receive(&chunk.encode())?;
//! }
//! let mut installed = receiver.finish()?;
//! assert_eq!(installed.state_root(), root);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::encoding::{self, DecodeError, MAX_ENCODED_LEN, TripleId};
use crate::graph::{ApplyError, GraphState};
use crate::merkle::{self, NibblePath, NodeHash, StateRoot};
use crate::term::Triple;

/// The default bound on a chunk's encoded size: 1 MiB.
pub const DEFAULT_MAX_CHUNK_BYTES: usize = 1 << 20;

/// The largest chunk bound a manifest may declare (the crate's decoding limit, 256 MiB).
pub const MAX_CHUNK_BYTES: usize = MAX_ENCODED_LEN;

/// The most entries a manifest's cut may have.
pub const MAX_CUT_LEN: usize = 1 << 18;

/// Bytes a chunk's encoding needs besides its triples: the prefix (at most 65 bytes) and the
/// triple count (at most 10).
const CHUNK_OVERHEAD: u64 = 80;

/// Largest encoded cut entry: a 65-byte path, a 32-byte hash and a 10-byte count.
const MAX_CUT_ENTRY_BYTES: usize = 65 + 32 + 10;

/// Largest encoded manifest.
pub const MAX_MANIFEST_BYTES: usize = 32 + 10 + 10 + 10 + MAX_CUT_LEN * MAX_CUT_ENTRY_BYTES;

/// A snapshot could not be built, or a manifest or chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Building: a leaf (at most 32 triples, the smallest unit a chunk can hold) encodes to
    /// more than the chunk bound. Nothing was built.
    #[error("the leaf at {prefix:?} needs {bytes} bytes, more than the chunk bound {limit}")]
    LeafTooLarge {
        /// The leaf's path.
        prefix: NibblePath,
        /// Its chunk's encoded size.
        bytes: u64,
        /// The bound in force.
        limit: u64,
    },
    /// Building: the bound is so small for this state that the cut would have more than
    /// [`MAX_CUT_LEN`] entries; or a manifest declares a chunk bound above
    /// [`MAX_CHUNK_BYTES`]. Nothing was built.
    #[error("chunk bound {limit} is out of range for this snapshot")]
    BoundOutOfRange {
        /// The bound in question.
        limit: u64,
    },
    /// A manifest or chunk does not decode (truncated, altered, non-canonical, too long).
    /// The receiver is unchanged.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The manifest is inconsistent: its cut does not rebuild its state root (a gap, an
    /// overlap, a wrong hash, a non-canonical shape) or its count is not the cut's total.
    #[error("invalid snapshot manifest: {0}")]
    InvalidManifest(&'static str),
    /// The manifest is for another state than the one expected.
    #[error("the manifest's state root {manifest:?} is not the expected {expected:?}")]
    UnexpectedRoot {
        /// The root the receiver was asked to install.
        expected: StateRoot,
        /// The manifest's root.
        manifest: StateRoot,
    },
    /// The chunk's prefix is not in the manifest's cut. The receiver is unchanged.
    #[error("no chunk with prefix {0:?} in the manifest")]
    UnknownPrefix(NibblePath),
    /// The chunk for this prefix was already received. The receiver is unchanged.
    #[error("chunk {0:?} was already received")]
    DuplicateChunk(NibblePath),
    /// The chunk's triples are not exactly those of its subtree (unsorted or repeated ids,
    /// ids outside its prefix, a wrong count or a wrong hash). The receiver is unchanged.
    #[error("chunk {prefix:?} refused: {reason}")]
    BadChunk {
        /// The chunk's prefix.
        prefix: NibblePath,
        /// What was wrong.
        reason: &'static str,
    },
    /// [`SnapshotReceiver::finish`]: chunks are still missing.
    #[error("{missing} of {total} chunks are missing")]
    Incomplete {
        /// How many chunks have not arrived.
        missing: usize,
        /// How many the manifest lists.
        total: usize,
    },
    /// [`SnapshotReceiver::finish`]: the installed state's root differs from the manifest's
    /// (cannot happen for chunks that passed their checks; reported rather than assumed).
    #[error("the installed state's root differs from the manifest's")]
    InstalledRootMismatch,
    /// [`SnapshotReceiver::finish`]: the state could not be built (dictionary full).
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// One subtree of a snapshot's cut: its path, hash and number of triples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutEntry {
    /// The subtree's path.
    pub prefix: NibblePath,
    /// The subtree's hash.
    pub hash: NodeHash,
    /// The number of triples below.
    pub count: u64,
}

/// What a snapshot holds: the state root, the number of triples, the chunk bound and the cut.
///
/// A value of this type is consistent: its cut (in path order, covering every id exactly
/// once) rebuilds its state root and its count is the cut's total. Decoding checks this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawManifest")]
pub struct SnapshotManifest {
    state_root: StateRoot,
    count: u64,
    max_chunk_bytes: u64,
    cut: Vec<CutEntry>,
}

#[derive(Serialize, Deserialize)]
struct RawManifest {
    state_root: StateRoot,
    count: u64,
    max_chunk_bytes: u64,
    cut: Vec<CutEntry>,
}

impl TryFrom<RawManifest> for SnapshotManifest {
    type Error = SnapshotError;
    fn try_from(raw: RawManifest) -> Result<Self, Self::Error> {
        let manifest = SnapshotManifest::new(raw.state_root, raw.max_chunk_bytes, raw.cut)?;
        if manifest.count != raw.count {
            return Err(SnapshotError::InvalidManifest("the count is not the cut's total"));
        }
        Ok(manifest)
    }
}

impl SnapshotManifest {
    /// A manifest from its parts, checked: the cut (in path order) must rebuild
    /// `state_root` and `max_chunk_bytes` must be at most [`MAX_CHUNK_BYTES`].
    pub fn new(
        state_root: StateRoot,
        max_chunk_bytes: u64,
        cut: Vec<CutEntry>,
    ) -> Result<Self, SnapshotError> {
        if max_chunk_bytes > MAX_CHUNK_BYTES as u64 {
            return Err(SnapshotError::BoundOutOfRange { limit: max_chunk_bytes });
        }
        if cut.len() > MAX_CUT_LEN {
            return Err(SnapshotError::InvalidManifest("the cut is too long"));
        }
        let frontier: Vec<(NibblePath, NodeHash, u64)> =
            cut.iter().map(|e| (e.prefix, e.hash, e.count)).collect();
        let (root, count) =
            merkle::root_of_frontier(&frontier).map_err(SnapshotError::InvalidManifest)?;
        if root != state_root {
            return Err(SnapshotError::InvalidManifest("the cut does not rebuild the state root"));
        }
        Ok(SnapshotManifest { state_root, count, max_chunk_bytes, cut })
    }

    /// The root of the state the snapshot holds.
    pub fn state_root(&self) -> StateRoot {
        self.state_root
    }

    /// The number of triples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The bound on each chunk's encoded size.
    pub fn max_chunk_bytes(&self) -> u64 {
        self.max_chunk_bytes
    }

    /// The cut: one entry per chunk, in path order.
    pub fn cut(&self) -> &[CutEntry] {
        &self.cut
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// Decodes and checks a manifest (at most [`MAX_MANIFEST_BYTES`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        // The raw shape first, so that a manifest which decodes but is inconsistent is
        // reported as such rather than as a decoding failure.
        let raw: RawManifest = encoding::decode_with_limit(bytes, MAX_MANIFEST_BYTES)?;
        SnapshotManifest::try_from(raw)
    }
}

/// The triples of one subtree of a snapshot's cut, sorted by id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    prefix: NibblePath,
    triples: Vec<Triple>,
}

impl SnapshotChunk {
    /// A chunk from its parts. Nothing is checked here: the receiver checks every chunk.
    pub fn new(prefix: NibblePath, triples: Vec<Triple>) -> Self {
        SnapshotChunk { prefix, triples }
    }

    /// The path of the subtree.
    pub fn prefix(&self) -> &NibblePath {
        &self.prefix
    }

    /// The triples, sorted by id.
    pub fn triples(&self) -> &[Triple] {
        &self.triples
    }

    /// The prefix and the triples.
    pub fn into_parts(self) -> (NibblePath, Vec<Triple>) {
        (self.prefix, self.triples)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }

    /// Decodes a chunk of at most `limit` bytes (a manifest's
    /// [`max_chunk_bytes`](SnapshotManifest::max_chunk_bytes)). Its content is checked by
    /// the receiver.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<Self, SnapshotError> {
        Ok(encoding::decode_with_limit(bytes, limit.min(MAX_CHUNK_BYTES))?)
    }
}

/// A snapshot being sent: its manifest and its chunks, produced one at a time.
pub struct Snapshot<'a> {
    manifest: SnapshotManifest,
    chunks: SnapshotChunks<'a>,
}

impl<'a> Snapshot<'a> {
    /// Cuts `state` into chunks of at most `max_chunk_bytes` encoded bytes each (see
    /// [`DEFAULT_MAX_CHUNK_BYTES`]): the cut descends the Merkle tree from the root until
    /// each subtree fits. Fails if a single leaf does not fit or the cut would be longer than
    /// [`MAX_CUT_LEN`]. Costs one pass over the triples to size them; the chunks' triples are
    /// copied out of the state only as the iterator reaches them.
    pub fn build(state: &'a GraphState, max_chunk_bytes: usize) -> Result<Self, SnapshotError> {
        let limit = max_chunk_bytes as u64;
        if max_chunk_bytes > MAX_CHUNK_BYTES {
            return Err(SnapshotError::BoundOutOfRange { limit });
        }
        let sizes: Vec<u64> = state
            .terms()
            .map(|t| postcard::experimental::serialized_size(t).map_or(u64::MAX, |n| n as u64))
            .collect();
        let size = |i: u32| sizes.get(i as usize).copied().unwrap_or(u64::MAX);
        let weight =
            |k: &[u32; 3]| size(k[0]).saturating_add(size(k[1])).saturating_add(size(k[2]));
        let frontier = state
            .merkle()
            .frontier(&weight, &|_, w: u64| w.saturating_add(CHUNK_OVERHEAD) <= limit);
        if frontier.len() > MAX_CUT_LEN {
            return Err(SnapshotError::BoundOutOfRange { limit });
        }
        let mut cut = Vec::with_capacity(frontier.len());
        let mut nodes = Vec::with_capacity(frontier.len());
        for node in frontier {
            let bytes = node
                .entries
                .iter()
                .fold(CHUNK_OVERHEAD, |acc, (_, k)| acc.saturating_add(weight(k)));
            if bytes > limit {
                return Err(SnapshotError::LeafTooLarge { prefix: node.prefix, bytes, limit });
            }
            cut.push(CutEntry {
                prefix: node.prefix,
                hash: NodeHash::from_bytes(node.hash),
                count: node.entries.len() as u64,
            });
            nodes.push((node.prefix, node.entries));
        }
        let manifest = SnapshotManifest::new(state.merkle().current_root(), limit, cut)?;
        Ok(Snapshot { manifest, chunks: SnapshotChunks { state, nodes: nodes.into_iter() } })
    }

    /// The manifest.
    pub fn manifest(&self) -> &SnapshotManifest {
        &self.manifest
    }

    /// The manifest and the chunks, in cut order.
    pub fn into_parts(self) -> (SnapshotManifest, SnapshotChunks<'a>) {
        (self.manifest, self.chunks)
    }
}

/// A chunk's ids with the dictionary keys of their triples.
type ChunkEntries = Vec<(TripleId, [u32; 3])>;

/// The chunks of a [`Snapshot`], in cut order, each copied out of the state when reached.
pub struct SnapshotChunks<'a> {
    state: &'a GraphState,
    nodes: std::vec::IntoIter<(NibblePath, ChunkEntries)>,
}

impl Iterator for SnapshotChunks<'_> {
    type Item = SnapshotChunk;
    fn next(&mut self) -> Option<SnapshotChunk> {
        let (prefix, entries) = self.nodes.next()?;
        let triples = entries
            .iter()
            .filter_map(|(_, k)| self.state.resolve(*k))
            .map(|t| t.to_triple())
            .collect();
        Some(SnapshotChunk { prefix, triples })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.nodes.size_hint()
    }
}

impl ExactSizeIterator for SnapshotChunks<'_> {}

/// How far a [`SnapshotReceiver`] has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotProgress {
    /// Chunks received and checked.
    pub chunks_received: usize,
    /// Chunks in the manifest.
    pub chunks_total: usize,
    /// Triples received and checked.
    pub triples_received: u64,
    /// Triples in the manifest.
    pub triples_total: u64,
}

/// Receives a snapshot: checks the manifest against the expected root, then each chunk on
/// arrival, and builds the state when all are in. A refused chunk leaves the receiver as it
/// was.
pub struct SnapshotReceiver {
    manifest: SnapshotManifest,
    /// The checked chunks, by cut position: each triple with its id, sorted by id.
    received: Vec<Option<Vec<(TripleId, Triple)>>>,
    chunks_received: usize,
    triples_received: u64,
}

impl SnapshotReceiver {
    /// Starts receiving the snapshot described by `manifest`, which must be for
    /// `expected_root` (the state root of the commit being installed).
    pub fn new(
        manifest: SnapshotManifest,
        expected_root: &StateRoot,
    ) -> Result<Self, SnapshotError> {
        if manifest.state_root != *expected_root {
            return Err(SnapshotError::UnexpectedRoot {
                expected: *expected_root,
                manifest: manifest.state_root,
            });
        }
        let received = vec![None; manifest.cut.len()];
        Ok(SnapshotReceiver { manifest, received, chunks_received: 0, triples_received: 0 })
    }

    /// The manifest being received.
    pub fn manifest(&self) -> &SnapshotManifest {
        &self.manifest
    }

    /// Decodes (within the manifest's chunk bound) and receives one encoded chunk.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let limit = usize::try_from(self.manifest.max_chunk_bytes).unwrap_or(MAX_CHUNK_BYTES);
        let chunk = SnapshotChunk::decode(bytes, limit)?;
        self.receive_chunk(chunk)
    }

    /// Checks and keeps one chunk: its prefix must be in the cut and not yet received, its
    /// triples sorted by id, distinct, under the prefix, as many as the cut says, and their
    /// ids must rebuild the cut's hash. On error the receiver is unchanged.
    pub fn receive_chunk(&mut self, chunk: SnapshotChunk) -> Result<(), SnapshotError> {
        let SnapshotChunk { prefix, triples } = chunk;
        let position = self
            .manifest
            .cut
            .binary_search_by(|e| e.prefix.cmp(&prefix))
            .map_err(|_| SnapshotError::UnknownPrefix(prefix))?;
        let (Some(entry), Some(slot)) =
            (self.manifest.cut.get(position), self.received.get(position))
        else {
            return Err(SnapshotError::UnknownPrefix(prefix));
        };
        if slot.is_some() {
            return Err(SnapshotError::DuplicateChunk(prefix));
        }
        let bad = |reason| SnapshotError::BadChunk { prefix, reason };
        if triples.len() as u64 != entry.count {
            return Err(bad("the number of triples differs from the cut's count"));
        }
        let ids: Vec<TripleId> = triples.iter().map(Triple::id).collect();
        if !ids.windows(2).all(|w| matches!(w, [a, b] if a < b)) {
            return Err(bad("triples not sorted by id, or repeated"));
        }
        if !ids.iter().all(|id| prefix.is_prefix_of(id)) {
            return Err(bad("a triple outside the chunk's prefix"));
        }
        if merkle::subtree_hash(&ids, prefix.len()) != *entry.hash.as_bytes() {
            return Err(bad("the triples do not hash to the cut's hash"));
        }
        let count = entry.count;
        if let Some(slot) = self.received.get_mut(position) {
            *slot = Some(ids.into_iter().zip(triples).collect());
            self.chunks_received += 1;
            self.triples_received += count;
        }
        Ok(())
    }

    /// How many chunks and triples have been received, of how many.
    pub fn progress(&self) -> SnapshotProgress {
        SnapshotProgress {
            chunks_received: self.chunks_received,
            chunks_total: self.received.len(),
            triples_received: self.triples_received,
            triples_total: self.manifest.count,
        }
    }

    /// True once every chunk has been received.
    pub fn is_complete(&self) -> bool {
        self.chunks_received == self.received.len()
    }

    /// The prefixes of the chunks not yet received, in cut order.
    pub fn missing(&self) -> impl Iterator<Item = &NibblePath> {
        self.manifest
            .cut
            .iter()
            .zip(&self.received)
            .filter(|(_, r)| r.is_none())
            .map(|(e, _)| &e.prefix)
    }

    /// Builds the state from the received chunks, in bulk, and checks its root against the
    /// manifest. Fails with [`SnapshotError::Incomplete`] while chunks are missing (check
    /// [`SnapshotReceiver::is_complete`] first to keep the receiver).
    pub fn finish(self) -> Result<GraphState, SnapshotError> {
        if !self.is_complete() {
            return Err(SnapshotError::Incomplete {
                missing: self.received.len() - self.chunks_received,
                total: self.received.len(),
            });
        }
        let count = usize::try_from(self.triples_received).unwrap_or(0);
        let triples = self.received.into_iter().flatten().flatten();
        let mut state = GraphState::from_sorted_by_id(triples, count)?;
        if state.state_root() != self.manifest.state_root {
            return Err(SnapshotError::InstalledRootMismatch);
        }
        Ok(state)
    }
}
