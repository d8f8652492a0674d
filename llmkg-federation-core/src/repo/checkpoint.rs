//! Checkpoints and shallow replicas: the verified state at a commit kept in the store as a
//! snapshot (see [`crate::snapshot`]), so that a reopened repository starts from the nearest
//! checkpoint instead of the root, and a fresh replica starts from a snapshot instead of the
//! history.
//!
//! A checkpoint of commit `C` is a snapshot manifest stored under an object id derived from
//! `C`, and one object per chunk, stored under an id derived from the chunk's prefix and
//! subtree hash: a chunk whose subtree did not change since an earlier checkpoint is already
//! there and is not written again. Manifest and chunks go into the store in one atomic batch.
//! Loading one checks everything a received snapshot is checked for: the manifest against the
//! commit's state root, every chunk against the manifest, and the built state's root.
//!
//! A checkpoint is a cache, not evidence: a damaged or missing one is skipped (counted in
//! [`Repository::checkpoint_failures`]) and the state is rebuilt by replay instead, except
//! at the boundary of a shallow replica, where there is nothing before it to replay.

use super::{RepoError, Repository, states};
use crate::commit::{CommitId, SignedCommit};
use crate::encoding::hash_of;
use crate::graph::GraphState;
use crate::merkle::{NibblePath, NodeHash};
use crate::snapshot::{
    MAX_CHUNK_BYTES, Snapshot, SnapshotError, SnapshotManifest, SnapshotReceiver,
};
use crate::store::{ObjectId, Store, WriteBatch};

/// When a [`Repository`] writes checkpoints on its own (see [`RepoOptions`](super::RepoOptions)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointPolicy {
    /// A new state is checkpointed when the triples added and removed since the nearest
    /// checkpoint on its first-parent chain (or since the root) reach the larger of this and
    /// half the state's size. Default 100,000. Replaying from a checkpoint then costs at most
    /// about half of what loading one does, and the checkpoints of a growing branch add up to
    /// about twice its final size.
    pub min_changes: u64,
    /// The chunk bound of checkpoint snapshots, in encoded bytes. Default 256 KiB.
    pub chunk_bytes: usize,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self { min_changes: 100_000, chunk_bytes: 256 << 10 }
    }
}

/// The object holding the manifest of commit `id`'s checkpoint.
fn manifest_object(id: CommitId) -> ObjectId {
    ObjectId::from_bytes(crate::encoding::hash_bytes(b"llmkg/checkpoint/v1", id.as_bytes()))
}

/// The object holding a checkpoint chunk: named by its prefix and subtree hash, so equal
/// subtrees of different checkpoints share it.
fn chunk_object(prefix: &NibblePath, hash: &NodeHash) -> ObjectId {
    ObjectId::from_bytes(hash_of(b"llmkg/checkpoint-chunk/v1", &(prefix, hash)))
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
        let mut batch = self.checkpoint_batch(id, &state)?;
        let shallow = commit
            .commit()
            .parents()
            .iter()
            .any(|p| !self.store.contains_object(&ObjectId::from(*p)).unwrap_or(false));
        if shallow {
            batch = batch.put_object(shallow_object(id), Vec::new());
        }
        let (record_id, record) = self.generation_record(id, &[])?;
        batch = batch.put_object(id, commit.as_bytes().to_vec()).put_object(record_id, record);
        self.store.write(batch)?;
        if shallow {
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
        if self.bad_checkpoints.contains(&id) {
            return Ok(false);
        }
        Ok(self.store.contains_object(&manifest_object(id))?)
    }

    /// The verified state at `id`, loaded from its checkpoint.
    pub(super) fn load_checkpoint(&mut self, id: CommitId) -> Result<GraphState, RepoError> {
        let root = self.load_commit(id)?.commit().state_root();
        let snapshot = |error| RepoError::Snapshot { id, error: Box::new(error) };
        let manifest = self.store.object(&manifest_object(id))?.ok_or(RepoError::Snapshot {
            id,
            error: Box::new(SnapshotError::Incomplete { missing: 1, total: 1 }),
        })?;
        let manifest = SnapshotManifest::decode(&manifest).map_err(snapshot)?;
        let cut: Vec<_> = manifest.cut().iter().map(|e| chunk_object(&e.prefix, &e.hash)).collect();
        let mut receiver = SnapshotReceiver::new(manifest, &root).map_err(snapshot)?;
        for object in cut {
            let bytes = self.store.object(&object)?.ok_or_else(|| {
                let total = receiver.progress().chunks_total;
                snapshot(SnapshotError::Incomplete {
                    missing: total - receiver.progress().chunks_received,
                    total,
                })
            })?;
            receiver.receive(&bytes).map_err(snapshot)?;
        }
        receiver.finish().map_err(snapshot)
    }

    /// Notes that the checkpoint of `id` failed to load, so walks replay instead.
    pub(super) fn checkpoint_failed(&mut self, id: CommitId) {
        self.bad_checkpoints.insert(id);
        self.checkpoint_failures += 1;
    }

    /// The batch that stores a checkpoint of `state`, the state at `id`: the manifest and
    /// the chunks the store does not hold yet.
    fn checkpoint_batch(&self, id: CommitId, state: &GraphState) -> Result<WriteBatch, RepoError> {
        let chunk_bytes = self
            .options
            .checkpoints
            .as_ref()
            .map_or(CheckpointPolicy::default().chunk_bytes, |p| p.chunk_bytes);
        // A leaf of huge terms may not fit the policy's bound; such a checkpoint uses the
        // largest bound instead (a leaf always fits it).
        let snapshot = match Snapshot::build(state, chunk_bytes) {
            Err(SnapshotError::LeafTooLarge { .. }) => Snapshot::build(state, MAX_CHUNK_BYTES),
            other => other,
        }
        .map_err(|error| RepoError::Snapshot { id, error: Box::new(error) })?;
        let (manifest, chunks) = snapshot.into_parts();
        let mut batch = WriteBatch::new();
        for (entry, chunk) in manifest.cut().iter().zip(chunks) {
            let object = chunk_object(&entry.prefix, &entry.hash);
            if !self.store.contains_object(&object)? {
                batch = batch.put_object(object, chunk.encode());
            }
        }
        Ok(batch.put_object(manifest_object(id), manifest.encode()))
    }

    /// Writes a checkpoint of `state`, the state at `id`; returns the chunks written.
    fn write_checkpoint(&mut self, id: CommitId, state: &GraphState) -> Result<usize, RepoError> {
        let batch = self.checkpoint_batch(id, state)?;
        let chunks = batch.objects.len().saturating_sub(1);
        self.store.write(batch)?;
        self.bad_checkpoints.remove(&id);
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
