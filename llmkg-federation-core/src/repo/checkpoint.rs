//! Checkpoints and shallow replicas: the verified state at a commit kept in the store, so
//! that a reopened repository starts from the nearest checkpoint instead of the root, and a
//! fresh replica from a peer's snapshot instead of the history.
//!
//! A checkpoint stores a state the way it is held in memory: its term dictionary once, in key
//! order, in chunks of 65,536 terms, and its triples as dictionary keys (12 bytes each) in
//! chunks of 262,144. Chunks are content-addressed objects; the dictionary only grows at its end, so the term chunks of earlier checkpoints of the same
//! lineage are already there and are not written again. A manifest, stored under an id
//! derived from the commit, lists the chunks; manifest and new chunks go into the store in one
//! atomic batch. Loading one rebuilds the state in bulk (each term decoded and interned once,
//! each triple's id computed from its terms) and checks that its Merkle root is the commit's
//! state root: the whole state is verified, as a replay would.
//!
//! Peers exchange states in another format, [`crate::snapshot`], whose every chunk can be
//! checked on arrival on its own; locally, loading speed matters more, and the store is ours.
//!
//! A checkpoint is a cache, not evidence: a damaged or missing one is skipped (counted in
//! [`Repository::checkpoint_failures`]) and the state is rebuilt by replay instead, except
//! at the boundary of a shallow replica, where there is nothing before it to replay.

use serde::{Deserialize, Serialize};

use super::{RepoError, Repository, states};
use crate::commit::{CommitId, SignedCommit};
use crate::encoding::{self, hash_bytes};
use crate::graph::GraphState;
use crate::merkle::StateRoot;
use crate::snapshot::{Snapshot, SnapshotError, SnapshotReceiver};
use crate::store::{ObjectId, Store, WriteBatch};
use crate::term::Term;

/// Terms per dictionary chunk of a checkpoint.
const TERMS_PER_CHUNK: usize = 1 << 16;
/// Triples (12-byte dictionary keys) per key chunk of a checkpoint.
const KEYS_PER_CHUNK: usize = 1 << 18;
/// Encoded bytes after which a term chunk ends early (terms may be up to 1 MiB each).
const TERM_CHUNK_BYTES: usize = 64 << 20;

/// What a checkpoint holds: the state root it must rebuild and its chunks, in order.
#[derive(Serialize, Deserialize)]
struct CheckpointManifest {
    state_root: StateRoot,
    terms: u64,
    triples: u64,
    term_chunks: Vec<ObjectId>,
    key_chunks: Vec<ObjectId>,
}

encoding::canonical!(CheckpointManifest);

/// When a [`Repository`] writes checkpoints on its own (see [`RepoOptions`](super::RepoOptions)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointPolicy {
    /// A new state is checkpointed when the triples added and removed since the nearest
    /// checkpoint on its first-parent chain (or since the root; a first load into the empty
    /// state does not count) reach the larger of this and half the state's size. Default
    /// 100,000. The replay after a crash is then at most about half a state's worth of
    /// changes; the dictionary chunks of earlier checkpoints are shared, so each checkpoint
    /// writes its new terms and 12 bytes per triple.
    pub min_changes: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self { min_changes: 100_000 }
    }
}

/// The object holding the manifest of commit `id`'s checkpoint.
fn manifest_object(id: CommitId) -> ObjectId {
    ObjectId::from_bytes(hash_bytes(b"llmkg/checkpoint/v2", id.as_bytes()))
}

/// The object holding a checkpoint chunk: named by its content, so equal chunks of different
/// checkpoints are stored once.
fn chunk_object(bytes: &[u8]) -> ObjectId {
    ObjectId::from_bytes(hash_bytes(b"llmkg/checkpoint-chunk/v2", bytes))
}

/// The marker object saying commit `id` is the boundary of a shallow replica: its parents are
/// not here, and its state comes from its checkpoint.
fn shallow_object(id: CommitId) -> ObjectId {
    ObjectId::from_bytes(crate::encoding::hash_bytes(b"llmkg/shallow/v1", id.as_bytes()))
}

impl<S: Store> Repository<S> {
    /// Writes a checkpoint of the state at `id` now (on demand; the repository also writes
    /// them on its own, see [`CheckpointPolicy`]). A host that checkpoints its branch heads
    /// before closing reopens them in the time it takes to load one snapshot. Returns the
    /// number of chunk objects written (chunks unchanged since an earlier checkpoint are
    /// shared, not written again).
    pub fn checkpoint(&mut self, id: CommitId) -> Result<usize, RepoError> {
        if self.bad_checkpoints.contains(&id) {
            // Stored objects are immutable: a damaged checkpoint of this commit cannot be
            // replaced (the state is reached by replay instead).
            return Err(RepoError::Snapshot {
                id,
                error: Box::new(SnapshotError::InvalidManifest(
                    "a damaged checkpoint of this commit is in the store and cannot be replaced",
                )),
            });
        }
        let state = self.take_state_at(id)?;
        let written = self.write_checkpoint(id, &state);
        self.states.put(id, state, self.options.cached_states);
        if written.is_ok() {
            self.since_checkpoint.insert(id, 0);
        }
        written
    }

    /// The snapshot of the state at `id`, in chunks of at most `max_chunk_bytes`, for a peer
    /// to install with [`Repository::install_snapshot`].
    pub fn snapshot(
        &mut self,
        id: CommitId,
        max_chunk_bytes: usize,
    ) -> Result<Snapshot<'_>, RepoError> {
        let state = self.state_at(id)?;
        Snapshot::build(state, max_chunk_bytes)
            .map_err(|error| RepoError::Snapshot { id, error: Box::new(error) })
    }

    /// Installs the state at a commit from a snapshot, making this repository a shallow
    /// replica that starts there: `commit` (the signed commit's envelope) is verified (id,
    /// signature, authorship, the commit policy), `receiver` must hold every chunk of a
    /// snapshot of that commit's state root (each chunk was checked on arrival; the built
    /// state's root is checked once more), and then the commit, its state as a checkpoint,
    /// and a mark saying its parents are absent are written in one atomic batch. Later
    /// commits are received as usual. On error nothing is stored.
    ///
    /// Like a shallow clone, such a replica cannot reach states before the snapshot, and the
    /// merge bases it computes ignore the history before it.
    pub fn install_snapshot(
        &mut self,
        commit: &[u8],
        receiver: SnapshotReceiver,
    ) -> Result<CommitId, RepoError> {
        let commit = SignedCommit::decode(commit, None).map_err(RepoError::Unverifiable)?;
        let id = commit.id();
        let root = commit.commit().state_root();
        if receiver.manifest().state_root() != root {
            return Err(RepoError::Snapshot {
                id,
                error: Box::new(SnapshotError::UnexpectedRoot {
                    expected: root,
                    manifest: receiver.manifest().state_root(),
                }),
            });
        }
        self.check_policy(&commit)?;
        let state = receiver
            .finish()
            .map_err(|error| RepoError::Snapshot { id, error: Box::new(error) })?;
        if self.store.contains_object(&ObjectId::from(id))? {
            return Ok(id);
        }
        let mut shallow = commit.commit().parents().is_empty();
        for p in commit.commit().parents() {
            if !self.store.contains_object(&ObjectId::from(*p))? {
                shallow = true;
            }
        }
        if !shallow {
            // Its parents are here: verify it against them like any received commit (the
            // snapshot, already checked against its root, is not needed).
            return self.receive(commit.as_bytes());
        }
        let mut batch = self.checkpoint_batch(id, &state)?;
        if !commit.commit().parents().is_empty() {
            batch = batch.put_object(shallow_object(id), Vec::new());
        }
        let (record_id, record) = self.generation_record(id, &[])?;
        batch = batch.put_object(id, commit.as_bytes().to_vec()).put_object(record_id, record);
        self.store.write(batch)?;
        self.no_checkpoint.remove(&id);
        if !commit.commit().parents().is_empty() {
            self.shallow.insert(id, true);
            self.links.insert(id, states::Link::Shallow);
        }
        self.remember(&commit);
        self.since_checkpoint.insert(id, 0);
        self.states.put(id, state, self.options.cached_states);
        Ok(id)
    }

    /// True if `id` is the boundary of a shallow replica (installed from a snapshot, its
    /// parents absent).
    pub fn is_shallow(&mut self, id: CommitId) -> Result<bool, RepoError> {
        if let Some(&known) = self.shallow.get(&id) {
            return Ok(known);
        }
        let shallow = self.store.contains_object(&shallow_object(id))?;
        self.shallow.insert(id, shallow);
        Ok(shallow)
    }

    /// How many checkpoints could not be written or loaded (each time, the repository went
    /// on without: a failed periodic checkpoint does not fail the commit that triggered it,
    /// and a damaged checkpoint is replaced by a replay).
    pub fn checkpoint_failures(&self) -> u64 {
        self.checkpoint_failures
    }

    /// True if the store holds a checkpoint of the state at `id` not found damaged.
    pub(super) fn has_checkpoint(&mut self, id: CommitId) -> Result<bool, RepoError> {
        if self.bad_checkpoints.contains(&id) || self.no_checkpoint.contains(&id) {
            return Ok(false);
        }
        let present = self.store.contains_object(&manifest_object(id))?;
        if !present {
            self.no_checkpoint.insert(id);
        }
        Ok(present)
    }

    /// The verified state at `id`, loaded from its checkpoint: rebuilt in bulk and checked
    /// against the commit's state root.
    pub(super) fn load_checkpoint(&mut self, id: CommitId) -> Result<GraphState, RepoError> {
        let root = self.load_commit(id)?.commit().state_root();
        let damaged = |what: &'static str| RepoError::Snapshot {
            id,
            error: Box::new(SnapshotError::InvalidManifest(what)),
        };
        let manifest = self
            .store
            .object(&manifest_object(id))?
            .ok_or_else(|| damaged("checkpoint missing"))?;
        let manifest: CheckpointManifest =
            encoding::decode(&manifest).map_err(|_| damaged("checkpoint manifest damaged"))?;
        if manifest.state_root != root {
            return Err(damaged("checkpoint of another state"));
        }
        // The counts must fit the chunks listed, and only then size the buffers.
        let fits = |count: u64, chunks: usize, per: usize| {
            count <= (chunks as u64).saturating_mul(per as u64)
        };
        if !fits(manifest.terms, manifest.term_chunks.len(), TERMS_PER_CHUNK)
            || !fits(manifest.triples, manifest.key_chunks.len(), KEYS_PER_CHUNK)
        {
            return Err(damaged("checkpoint counts exceed its chunks"));
        }
        let expected_terms = usize::try_from(manifest.terms).unwrap_or(usize::MAX);
        let expected_keys = usize::try_from(manifest.triples).unwrap_or(usize::MAX);
        let mut terms: Vec<Term> = Vec::with_capacity(expected_terms.min(1 << 24));
        for chunk in &manifest.term_chunks {
            let bytes =
                self.store.object(chunk)?.ok_or_else(|| damaged("a term chunk is missing"))?;
            let part: Vec<Term> =
                encoding::decode(&bytes).map_err(|_| damaged("a term chunk is damaged"))?;
            terms.extend(part);
        }
        let mut keys: Vec<[u32; 3]> = Vec::with_capacity(expected_keys.min(1 << 26));
        for chunk in &manifest.key_chunks {
            let bytes =
                self.store.object(chunk)?.ok_or_else(|| damaged("a key chunk is missing"))?;
            if bytes.len() % 12 != 0 {
                return Err(damaged("a key chunk is damaged"));
            }
            keys.extend(bytes.chunks_exact(12).map(|k| {
                let word = |i: usize| {
                    let mut w = [0u8; 4];
                    w.copy_from_slice(k.get(i..i + 4).unwrap_or(&[0; 4]));
                    u32::from_le_bytes(w)
                };
                [word(0), word(4), word(8)]
            }));
        }
        if terms.len() != expected_terms || keys.len() != expected_keys {
            return Err(damaged("checkpoint counts differ from its manifest"));
        }
        let mut state = GraphState::from_dictionary(terms, keys).map_err(damaged)?;
        if state.state_root() != root {
            return Err(damaged("checkpoint does not rebuild the commit's state root"));
        }
        Ok(state)
    }

    /// Notes that the checkpoint of `id` failed to load, so walks replay instead.
    pub(super) fn checkpoint_failed(&mut self, id: CommitId) {
        self.bad_checkpoints.insert(id);
        self.checkpoint_failures += 1;
    }

    /// The batch that stores a checkpoint of `state`, the state at `id`: the manifest and
    /// the chunks the store does not hold yet.
    fn checkpoint_batch(&self, id: CommitId, state: &GraphState) -> Result<WriteBatch, RepoError> {
        let mut batch = WriteBatch::new();
        let add =
            |batch: WriteBatch, bytes: Vec<u8>| -> Result<(WriteBatch, ObjectId), RepoError> {
                let object = chunk_object(&bytes);
                if self.store.contains_object(&object)? {
                    Ok((batch, object))
                } else {
                    Ok((batch.put_object(object, bytes), object))
                }
            };
        // Term chunks end after `TERMS_PER_CHUNK` terms or `TERM_CHUNK_BYTES` of encoding,
        // whichever comes first; both depend only on the dictionary's prefix, so the chunks
        // of an earlier checkpoint of the same lineage keep their bytes.
        let terms: Vec<&Term> = state.terms().collect();
        let mut term_chunks = Vec::new();
        let mut start = 0;
        while start < terms.len() {
            let mut end = start;
            let mut bytes = 0usize;
            while end < terms.len() && end - start < TERMS_PER_CHUNK {
                let size = terms
                    .get(end)
                    .and_then(|t| postcard::experimental::serialized_size(*t).ok())
                    .unwrap_or(0);
                if end > start && bytes + size > TERM_CHUNK_BYTES {
                    break;
                }
                bytes += size;
                end += 1;
            }
            let part = terms.get(start..end).unwrap_or_default();
            let (b, object) = add(batch, encoding::encode(part))?;
            batch = b;
            term_chunks.push(object);
            start = end;
        }
        let mut key_chunks = Vec::new();
        let mut bytes = Vec::with_capacity(12 * KEYS_PER_CHUNK.min(state.len()));
        let mut keys = state.spo_keys().peekable();
        while keys.peek().is_some() {
            bytes.clear();
            for k in keys.by_ref().take(KEYS_PER_CHUNK) {
                for w in k {
                    bytes.extend_from_slice(&w.to_le_bytes());
                }
            }
            let (b, object) = add(batch, bytes.clone())?;
            batch = b;
            key_chunks.push(object);
        }
        let manifest = CheckpointManifest {
            state_root: state.merkle().current_root(),
            terms: terms.len() as u64,
            triples: state.len() as u64,
            term_chunks,
            key_chunks,
        };
        Ok(batch.put_object(manifest_object(id), encoding::encode(&manifest)))
    }

    /// Writes a checkpoint of `state`, the state at `id`; returns the chunks written.
    fn write_checkpoint(&mut self, id: CommitId, state: &GraphState) -> Result<usize, RepoError> {
        if self.bad_checkpoints.contains(&id) {
            // Its damaged objects would be kept (objects are immutable): writing is futile.
            return Err(RepoError::Snapshot {
                id,
                error: Box::new(SnapshotError::InvalidManifest(
                    "a damaged checkpoint of this commit is in the store and cannot be replaced",
                )),
            });
        }
        let batch = self.checkpoint_batch(id, state)?;
        let chunks = batch.objects.len().saturating_sub(1);
        self.store.write(batch)?;
        self.no_checkpoint.remove(&id);
        Ok(chunks)
    }

    /// Records that the state at `id` is `changes` triples of replay past the nearest
    /// checkpoint, and checkpoints it if the policy says so. The state must be `id`'s.
    pub(super) fn after_new_state(&mut self, id: CommitId, state: &GraphState, changes: u64) {
        let Some(policy) = &self.options.checkpoints else {
            self.since_checkpoint.insert(id, changes);
            return;
        };
        let due = changes >= policy.min_changes.max(state.len() as u64 / 2);
        if due {
            match self.write_checkpoint(id, state) {
                Ok(_) => {
                    self.since_checkpoint.insert(id, 0);
                    return;
                }
                Err(_) => self.checkpoint_failures += 1,
            }
        }
        self.since_checkpoint.insert(id, changes);
    }
}
