//! The local versioned graph: git for triples.
//!
//! A [`Repository`] stores signed commits in a [`Store`] and keeps branches as refs. Every
//! commit it loads from the store or receives from elsewhere is verified — content id,
//! signature, authorship, the host's [`CommitPolicy`], that its changes apply exactly to its
//! first parent's state, and the resulting state root — before it is used or stored.
//!
//! ## States
//!
//! The state at a commit is reached in O(changes), never by replaying from the root: a
//! commit's changes are exact, so first-parent edges are walked forward (apply) or backward
//! (apply the inverse), every step checking a state root, from the cheapest start — one of a
//! few cached verified states ([`RepoOptions::cached_states`]), the nearest checkpoint, or the
//! empty state. Checkpoints are snapshots of a state kept in the store
//! ([`CheckpointPolicy`], [`Repository::checkpoint`]); a replica can also start from one
//! received from a peer ([`Repository::install_snapshot`]). [`Repository::materialize`]
//! is the exception on purpose: a full, verified replay, an audit of the history.
//!
//! ## Merges
//!
//! [`Repository::merge`] is a three-way merge with set semantics: for ours `A`, theirs `B` and
//! base `O`, the result is `(A ∩ B) ∪ (A − O) ∪ (B − O)`: a triple survives if both sides have
//! it or one side added it; a removal on either side wins over an untouched triple.
//!
//! The base is the state of the **merge base**: the best common ancestor of the two commits
//! (a common ancestor that is not an ancestor of another common ancestor). Criss-cross
//! histories can have several; then, as git's recursive strategy does, the bases are merged
//! pairwise in commit-id order into a *virtual base*, each pair using its own merge base
//! (recursively), and that state is the base. The result does not depend on which side is
//! "ours": merging `B` into `A` and `A` into `B` give the same state.

mod checkpoint;
mod states;

pub use checkpoint::CheckpointPolicy;

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use thiserror::Error;

use crate::certificate::{AcceptAll, CommitPolicy, CommitRefusal};
use crate::commit::{Commit, CommitId, CommitShapeError, CommitVerifyError, SignedCommit};
use crate::encoding::DecodeError;
use crate::graph::{ApplyError, GraphState};
use crate::identity::{OrgId, Signer};
use crate::merkle::StateRoot;
use crate::store::{BranchName, ObjectId, Store, StoreError, WriteBatch};
use crate::term::ChangeSet;
use crate::time::{Clock, Timestamp};

/// A repository operation failed. Unless a variant says otherwise, nothing was stored and no
/// ref moved.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RepoError {
    /// The store failed. For a [`StoreError::RefConflict`], another writer moved the branch
    /// first: reload and retry.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such branch.
    #[error("branch {0} does not exist")]
    BranchNotFound(BranchName),
    /// The branch already exists.
    #[error("branch {0} already exists")]
    BranchExists(BranchName),
    /// No such commit in the store.
    #[error("commit {0} is not in the store")]
    CommitNotFound(CommitId),
    /// A commit failed verification (see [`InvalidCommit`]).
    #[error("commit {id} rejected: {reason}")]
    InvalidCommit {
        /// The id it was stored or announced under.
        id: CommitId,
        /// What was wrong.
        reason: InvalidCommit,
    },
    /// Bytes offered as a commit do not decode, or their signature or authorship does not
    /// verify; no id can be trusted for them.
    #[error("commit rejected: {0}")]
    Unverifiable(CommitVerifyError),
    /// The change set changes nothing on this branch: every addition is already present and
    /// every removal already absent.
    #[error("nothing to commit: the changes are already in the branch state")]
    NothingToCommit,
    /// A commit could not be assembled (message too long, ...).
    #[error(transparent)]
    Shape(#[from] CommitShapeError),
    /// A state operation failed (the term dictionary is full).
    #[error(transparent)]
    Apply(ApplyError),
    /// The commit policy refused the commit (see [`Repository::with_policy`]).
    #[error("commit {id} refused by policy: {reason}")]
    Refused {
        /// The refused commit.
        id: CommitId,
        /// Why.
        reason: Box<CommitRefusal>,
    },
    /// A snapshot of the state at `id` could not be built, or one offered for installation
    /// (or a stored checkpoint at the boundary of a shallow replica) was refused.
    #[error("snapshot of the state at {id}: {error}")]
    Snapshot {
        /// The commit whose state it is.
        id: CommitId,
        /// What was wrong.
        error: Box<crate::snapshot::SnapshotError>,
    },
}

/// Why a commit was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvalidCommit {
    /// Bad encoding, signature, id or authorship.
    #[error(transparent)]
    Verify(#[from] CommitVerifyError),
    /// A parent is not in the store.
    #[error("parent {0} is missing")]
    MissingParent(CommitId),
    /// Its changes do not apply exactly to its first parent's state.
    #[error("changes do not apply to the parent state: {0}")]
    ChangesDoNotApply(ApplyError),
    /// The state after applying its changes has another root than the commit claims.
    #[error("state root is {actual}, commit claims {claimed}")]
    StateRootMismatch {
        /// The root the commit records.
        claimed: StateRoot,
        /// The root of the state its changes produce.
        actual: StateRoot,
    },
    /// The stored envelope's parent list does not decode (a damaged store).
    #[error("malformed parent list: {0}")]
    Malformed(DecodeError),
    /// The first-parent chain returns to this commit: a cycle, which content-addressed
    /// history cannot have (a damaged store).
    #[error("ancestry cycle through {0}")]
    Cycle(CommitId),
    /// A commit on a walk between two states is not linked to the previous one by its first
    /// parent (the store changed under the walk, or is damaged).
    #[error("first-parent link broken on a walk between states")]
    BrokenPath,
}

/// What [`Repository::merge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MergeOutcome {
    /// Theirs is already contained in ours: nothing changed.
    AlreadyUpToDate,
    /// Theirs is not in ours' history, but the three-way merge leaves ours' state as it is:
    /// no commit was made and the branch did not move. (Two replicas that merge each other
    /// settle here instead of making merge commits forever.)
    Unchanged,
    /// Ours was an ancestor of theirs: the branch now points at theirs, no commit was made.
    FastForward(CommitId),
    /// A merge commit with parents `[ours, theirs]` was made and the branch points at it.
    Merged(CommitId),
}

#[derive(Clone, Debug)]
struct Meta {
    parents: Vec<CommitId>,
    timestamp: Timestamp,
}

/// How a [`Repository`] trades memory for speed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepoOptions {
    /// How many verified states (one per commit, shared by the branches pointing there) are
    /// kept in memory, least recently used evicted first; at least 1. Default 4. Each costs
    /// about 190 bytes per triple.
    pub cached_states: usize,
    /// When checkpoints are written without being asked for; `None` writes them only on
    /// demand ([`Repository::checkpoint`]). Default: [`CheckpointPolicy::default`].
    pub checkpoints: Option<CheckpointPolicy>,
}

impl Default for RepoOptions {
    fn default() -> Self {
        Self { cached_states: 4, checkpoints: Some(CheckpointPolicy::default()) }
    }
}

/// A versioned graph: signed commits, branches, diffs, merges and queries over a [`Store`].
///
/// ```
/// use llmkg_federation_core::{
///     BranchName, ChangeSet, ManualClock, MemoryStore, MergeOutcome, NodeKeypair, OrgId,
///     Pattern, Repository, Term, Timestamp, Triple,
/// };
///
/// let key = NodeKeypair::from_secret_bytes([7; 32]);
/// let clock = ManualClock::new(Timestamp::from_micros(1_700_000_000_000_000));
/// let mut repo = Repository::new(MemoryStore::new(), key, OrgId::new("acme")?, clock);
///
/// let (alice, name) = (Term::iri("https://example.org/alice")?, Term::iri("http://xmlns.com/foaf/0.1/name")?);
/// let main = BranchName::new("main")?;
/// let first = repo.commit(&main, ChangeSet::adding([Triple::new(alice.clone(), name.clone(), Term::string("Alice")?)?]), "add alice")?;
///
/// let feature = BranchName::new("feature")?;
/// repo.create_branch(&feature, first)?;
/// repo.commit(&feature, ChangeSet::adding([Triple::new(alice.clone(), name.clone(), Term::string("Alice L.")?)?]), "alias")?;
///
/// let theirs = repo.head(&feature)?.expect("feature has a head");
/// assert!(matches!(repo.merge(&main, theirs, "merge feature")?, MergeOutcome::FastForward(_)));
/// let names: Vec<_> = repo.state(&main)?.matching(&Pattern::any().with_subject(alice)).collect();
/// assert_eq!(names.len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Repository<S: Store> {
    store: S,
    signer: Box<dyn Signer>,
    policy: Box<dyn CommitPolicy>,
    org: OrgId,
    clock: Box<dyn Clock>,
    /// Verified states by commit (see [`RepoOptions::cached_states`]).
    states: states::StateCache,
    /// Parents and timestamps of commits verified so far.
    meta: HashMap<CommitId, Meta>,
    /// First parents read from stored envelopes without verification, to plan walks (each
    /// step of a walk is verified when taken).
    links: HashMap<CommitId, states::Link>,
    /// Triples of replay between each known state and the nearest checkpoint behind it.
    since_checkpoint: HashMap<CommitId, u64>,
    /// Checkpoints found damaged in this session.
    bad_checkpoints: HashSet<CommitId>,
    /// Commits known to have no checkpoint (until one is written).
    no_checkpoint: HashSet<CommitId>,
    checkpoint_failures: u64,
    /// Which commits are (or are not) the boundary of a shallow replica.
    shallow: HashMap<CommitId, bool>,
    /// Generation numbers known so far (see [`Repository::log`]).
    generations: HashMap<CommitId, u64>,
    options: RepoOptions,
}

impl<S: Store> std::fmt::Debug for Repository<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("node", &self.signer.node_id())
            .field("org", &self.org)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Repository<S> {
    /// A repository over `store`, committing as `signer`'s node (a [`NodeKeypair`](crate::NodeKeypair), or a
    /// host's [`Signer`] that keeps the key elsewhere) on behalf of `org`, with
    /// timestamps from `clock`.
    pub fn new(
        store: S,
        signer: impl Signer + 'static,
        org: OrgId,
        clock: impl Clock + 'static,
    ) -> Self {
        Self {
            store,
            signer: Box::new(signer),
            policy: Box::new(AcceptAll),
            org,
            clock: Box::new(clock),
            states: states::StateCache::default(),
            meta: HashMap::new(),
            links: HashMap::new(),
            since_checkpoint: HashMap::new(),
            bad_checkpoints: HashSet::new(),
            no_checkpoint: HashSet::new(),
            checkpoint_failures: 0,
            shallow: HashMap::new(),
            generations: HashMap::new(),
            options: RepoOptions::default(),
        }
    }

    /// Sets the policy every commit must pass — made here, received, or met on the way to a
    /// state — before it is stored or its changes are applied (a revoked or expired
    /// certificate, an unauthorized writer, an organization the author is not certified by).
    /// The default admits every verified commit. A commit is checked when it enters (made,
    /// received, installed from a snapshot) and whenever it is replayed; states already in
    /// memory or in a checkpoint were checked when they were built and are not checked again.
    /// After the host's policy changes (a revocation, say), [`Repository::clear_cache`] makes
    /// the next reads replay, and so re-check, the commits after the nearest checkpoint; the
    /// history before it stays as checked then.
    pub fn with_policy(mut self, policy: impl CommitPolicy + 'static) -> Self {
        self.policy = Box::new(policy);
        self.states.clear();
        self
    }

    /// Drops every state kept in memory, so the next read rebuilds it from the nearest
    /// checkpoint or by replay, checking every replayed commit against the current policy.
    pub fn clear_cache(&mut self) {
        self.states.clear();
    }

    /// Replaces the tuning options (and drops the states kept in memory).
    pub fn with_options(mut self, options: RepoOptions) -> Self {
        self.options = options;
        self.states.clear();
        self
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The identity commits are signed with.
    pub fn node_id(&self) -> crate::NodeId {
        self.signer.node_id()
    }

    /// The organization commits are made for.
    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// Every branch and its head, sorted by name.
    pub fn branches(&self) -> Result<Vec<(BranchName, CommitId)>, RepoError> {
        Ok(self.store.references()?)
    }

    /// The head of `branch`, or `None` if it does not exist.
    pub fn head(&self, branch: &BranchName) -> Result<Option<CommitId>, RepoError> {
        Ok(self.store.reference(branch)?)
    }

    fn existing_head(&self, branch: &BranchName) -> Result<CommitId, RepoError> {
        self.head(branch)?.ok_or_else(|| RepoError::BranchNotFound(branch.clone()))
    }

    /// Loads commit `id`, verifying its id, signature and authorship (not its state root:
    /// that needs its parent's state; see [`Repository::materialize`]).
    pub fn load_commit(&mut self, id: CommitId) -> Result<SignedCommit, RepoError> {
        let bytes = self.store.object(&ObjectId::from(id))?.ok_or(RepoError::CommitNotFound(id))?;
        let commit = SignedCommit::decode(&bytes, Some(id))
            .map_err(|e| RepoError::InvalidCommit { id, reason: e.into() })?;
        self.remember(&commit);
        Ok(commit)
    }

    fn remember(&mut self, c: &SignedCommit) {
        self.remember_commit(c.id(), c.commit());
    }

    fn remember_commit(&mut self, id: CommitId, c: &Commit) {
        if self.meta.contains_key(&id) {
            return;
        }
        // The boundary of a shallow replica has no parents here: walks of the history stop
        // at it, as at a root.
        let grafted = !c.parents().is_empty() && self.is_shallow(id).unwrap_or(false);
        let parents = if grafted { Vec::new() } else { c.parents().to_vec() };
        self.meta.insert(id, Meta { parents, timestamp: c.timestamp() });
    }

    fn meta(&mut self, id: CommitId) -> Result<Meta, RepoError> {
        if let Some(m) = self.meta.get(&id) {
            return Ok(m.clone());
        }
        self.load_commit(id)?;
        self.meta.get(&id).cloned().ok_or(RepoError::CommitNotFound(id))
    }

    /// The state at commit `id`, rebuilt from the store by replaying its whole first-parent
    /// chain from the root commit, ignoring every cache and checkpoint: an audit of the
    /// history. Every commit on the chain is fully verified on the way: id, signature,
    /// authorship, the commit policy, exact applicability of its changes and its state root.
    /// For everyday use [`Repository::state_at`] reaches the same state in O(changes). In a
    /// shallow replica the replay starts from the snapshot it was installed from.
    pub fn materialize(&mut self, id: CommitId) -> Result<GraphState, RepoError> {
        let (chain, end) = self.chain(id, usize::MAX, |_, _| Ok(false))?;
        let mut forward: Vec<CommitId> = chain.into_iter().rev().collect();
        let (mut state, start) = match end {
            // A shallow replica starts from the snapshot it was installed from.
            states::ChainEnd::Shallow => match forward.first().copied() {
                Some(boundary) => {
                    forward.remove(0);
                    (self.load_checkpoint(boundary)?, Some(boundary))
                }
                None => (GraphState::new(), None),
            },
            _ => (GraphState::new(), None),
        };
        let path = states::Path { back: Vec::new(), forward };
        self.walk(&mut state, start, &path, None)?;
        Ok(state)
    }

    /// The verified state at commit `id`, reached from the nearest cached state or checkpoint
    /// (forward or backward along first parents, every step verified) and kept in the cache.
    /// Costs O(changes between the two), not O(history).
    pub fn state_at(&mut self, id: CommitId) -> Result<&GraphState, RepoError> {
        let state = self.take_state_at(id)?;
        self.states.put(id, state, self.options.cached_states);
        self.states.last().ok_or(RepoError::CommitNotFound(id))
    }

    /// The state at the head of `branch` (see [`Repository::state_at`]).
    pub fn state(&mut self, branch: &BranchName) -> Result<&GraphState, RepoError> {
        let head = self.existing_head(branch)?;
        self.state_at(head)
    }

    /// The state at `head` (or the empty state), taken out of the cache.
    fn take_state(&mut self, head: Option<CommitId>) -> Result<GraphState, RepoError> {
        match head {
            Some(head) => self.take_state_at(head),
            None => Ok(GraphState::new()),
        }
    }

    /// Puts back a state taken with `take_state` after `changes` were applied to it and the
    /// operation then failed: undoes them so the cached state is the state at `at` again.
    fn restore(&mut self, at: Option<CommitId>, mut state: GraphState, changes: &ChangeSet) {
        if let Some(at) = at
            && state.apply(&changes.inverse()).is_ok()
        {
            self.states.put(at, state, self.options.cached_states);
        }
    }

    /// Commits `changes` to `branch` and moves the branch to the new commit, atomically.
    ///
    /// Only the effective part of `changes` is recorded: additions already present and
    /// removals already absent are dropped. If nothing is left the call fails with
    /// [`RepoError::NothingToCommit`]. If the branch does not exist it is created with a root
    /// commit (no parents), as git does for an unborn branch.
    ///
    /// The commit object and the ref update are written in one atomic batch: after a crash
    /// either both are there or neither is.
    pub fn commit(
        &mut self,
        branch: &BranchName,
        changes: ChangeSet,
        message: &str,
    ) -> Result<CommitId, RepoError> {
        let head = self.head(branch)?;
        let mut state = self.take_state(head)?;
        let effective = match state.apply_effective(changes) {
            Ok(e) => e,
            Err(e) => {
                // The state may hold part of the changes: rebuild it when next needed.
                return Err(RepoError::Apply(e));
            }
        };
        if effective.is_empty() {
            if let Some(h) = head {
                self.states.put(h, state, self.options.cached_states);
            }
            return Err(RepoError::NothingToCommit);
        }
        let parents: Vec<CommitId> = head.into_iter().collect();
        self.write_commit(branch, head, parents, state, effective, message)
    }

    /// Signs and writes a commit with `parents` and `changes`, already applied to `state`,
    /// moving `branch` from `head`. The state is cached under the new commit on success and
    /// restored to `head`'s on failure.
    fn write_commit(
        &mut self,
        branch: &BranchName,
        head: Option<CommitId>,
        parents: Vec<CommitId>,
        mut state: GraphState,
        changes: ChangeSet,
        message: &str,
    ) -> Result<CommitId, RepoError> {
        let first_parent = parents.first().copied();
        if let Err(e) = Commit::check_shape(&parents, message) {
            self.restore(first_parent, state, &changes);
            return Err(RepoError::Shape(e));
        }
        // The change set moves into the commit (no copy); a failure below undoes it on the
        // state from the commit's own copy. (`new` checks only the shape, checked above.)
        let commit = Commit::new(
            parents,
            changes,
            self.signer.node_id(),
            self.org.clone(),
            self.clock.now(),
            message.to_owned(),
            state.state_root(),
        )
        .map_err(RepoError::Shape)?;
        let signed = match SignedCommit::try_sign_with(self.signer.as_ref(), commit) {
            Ok(s) => s,
            Err(failed) => {
                let (e, commit) = *failed;
                self.restore(first_parent, state, commit.changes());
                return Err(RepoError::Unverifiable(e));
            }
        };
        if let Err(e) = self.check_policy(&signed) {
            self.restore(first_parent, state, signed.commit().changes());
            return Err(e);
        }
        let id = signed.id();
        let record = match self.generation_record(id, signed.commit().parents()) {
            Ok(r) => r,
            Err(e) => {
                self.restore(first_parent, state, signed.commit().changes());
                return Err(e);
            }
        };
        // The encoding moves into the store's batch: a large commit is not held twice.
        let (commit, bytes) = signed.into_commit_and_bytes();
        let batch = WriteBatch::new()
            .put_object(id, bytes)
            .put_object(record.0, record.1)
            .update_ref(branch.clone(), head, Some(id));
        if let Err(e) = self.store.write(batch) {
            self.restore(first_parent, state, commit.changes());
            return Err(e.into());
        }
        self.remember_commit(id, &commit);
        let since = self.replay_since(first_parent, commit.changes().len());
        self.after_new_state(id, &state, since);
        self.states.put(id, state, self.options.cached_states);
        Ok(id)
    }

    /// Creates `branch` pointing at commit `at`, which must be in the store.
    pub fn create_branch(&mut self, branch: &BranchName, at: CommitId) -> Result<(), RepoError> {
        if self.head(branch)?.is_some() {
            return Err(RepoError::BranchExists(branch.clone()));
        }
        self.load_commit(at)?;
        match self.store.write(WriteBatch::new().update_ref(branch.clone(), None, Some(at))) {
            Ok(()) => Ok(()),
            Err(StoreError::RefConflict { .. }) => Err(RepoError::BranchExists(branch.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes `branch`. Its commits stay in the store.
    pub fn delete_branch(&mut self, branch: &BranchName) -> Result<(), RepoError> {
        let head = self.existing_head(branch)?;
        self.store.write(WriteBatch::new().update_ref(branch.clone(), Some(head), None))?;
        Ok(())
    }

    /// Verifies a commit received from elsewhere — id, signature, authorship, that its parents
    /// are present, the commit policy, that its changes apply exactly to its first parent's
    /// state and that the state root matches — and stores it. No ref moves. Returns its id.
    ///
    /// The parent's state is reached from the nearest cached state, so receiving a chain of
    /// commits in order costs O(changes) per commit; the received commit's state is cached.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<CommitId, RepoError> {
        let commit = SignedCommit::decode(bytes, None).map_err(RepoError::Unverifiable)?;
        let id = commit.id();
        if self.store.contains_object(&ObjectId::from(id))? {
            return Ok(id);
        }
        for p in commit.commit().parents() {
            if !self.store.contains_object(&ObjectId::from(*p))? {
                return Err(RepoError::InvalidCommit {
                    id,
                    reason: InvalidCommit::MissingParent(*p),
                });
            }
        }
        self.check_policy(&commit)?;
        let parent = commit.commit().parents().first().copied();
        let mut state = self.take_state(parent)?;
        if let Err(e) = apply_verified(&mut state, &commit) {
            self.restore_after_failed_apply(parent, state, &commit);
            return Err(e);
        }
        let written = self.generation_record(id, commit.commit().parents()).and_then(|record| {
            let batch = WriteBatch::new()
                .put_object(id, commit.as_bytes().to_vec())
                .put_object(record.0, record.1);
            Ok(self.store.write(batch)?)
        });
        if let Err(e) = written {
            self.restore(parent, state, commit.commit().changes());
            return Err(e);
        }
        self.remember(&commit);
        let since = self.replay_since(parent, commit.commit().changes().len());
        self.after_new_state(id, &state, since);
        self.states.put(id, state, self.options.cached_states);
        Ok(id)
    }

    /// Triples of replay between the state at `id` and the nearest checkpoint behind it
    /// (unknown states count as far).
    fn since(&self, id: CommitId) -> u64 {
        self.since_checkpoint.get(&id).copied().unwrap_or(u64::MAX / 2)
    }

    /// The replay distance of a new commit's state: its parent's plus its own changes. A root
    /// commit's changes are loaded into the empty state in bulk, as fast as a checkpoint, so
    /// they count as none.
    fn replay_since(&self, parent: Option<CommitId>, changes: usize) -> u64 {
        match parent {
            None => 0,
            Some(p) => self.since(p).saturating_add(changes as u64),
        }
    }

    /// Puts back the parent's state after a commit's changes failed to apply (the state is
    /// unchanged) or applied but gave the wrong root (undone here).
    fn restore_after_failed_apply(
        &mut self,
        parent: Option<CommitId>,
        mut state: GraphState,
        commit: &SignedCommit,
    ) {
        let Some(parent) = parent else { return };
        let Ok(expected) = self.load_commit(parent).map(|c| c.commit().state_root()) else {
            return;
        };
        if state.state_root() != expected {
            // The changes applied and the root was wrong: undo them.
            if state.apply(&commit.commit().changes().inverse()).is_err()
                || state.state_root() != expected
            {
                return;
            }
        }
        self.states.put(parent, state, self.options.cached_states);
    }

    /// True if `ancestor` is `descendant` or one of its ancestors.
    pub fn is_ancestor(
        &mut self,
        ancestor: CommitId,
        descendant: CommitId,
    ) -> Result<bool, RepoError> {
        if ancestor == descendant {
            return Ok(true);
        }
        let mut seen = HashSet::from([descendant]);
        let mut queue = VecDeque::from([descendant]);
        while let Some(c) = queue.pop_front() {
            for p in self.meta(c)?.parents {
                if p == ancestor {
                    return Ok(true);
                }
                if seen.insert(p) {
                    queue.push_back(p);
                }
            }
        }
        Ok(false)
    }

    /// `starts` and all their ancestors.
    fn ancestors(&mut self, starts: &[CommitId]) -> Result<HashSet<CommitId>, RepoError> {
        let mut seen: HashSet<CommitId> = starts.iter().copied().collect();
        let mut queue: VecDeque<CommitId> = starts.iter().copied().collect();
        while let Some(c) = queue.pop_front() {
            for p in self.meta(c)?.parents {
                if seen.insert(p) {
                    queue.push_back(p);
                }
            }
        }
        Ok(seen)
    }

    /// The best common ancestors of `a` and `b`, sorted by id: the common ancestors that are
    /// not ancestors of another common ancestor. Usually one; several in criss-cross
    /// histories; none if the histories are unrelated.
    pub fn merge_bases(&mut self, a: CommitId, b: CommitId) -> Result<Vec<CommitId>, RepoError> {
        self.merge_bases_of_sets(&[a], &[b])
    }

    fn merge_bases_of_sets(
        &mut self,
        xs: &[CommitId],
        ys: &[CommitId],
    ) -> Result<Vec<CommitId>, RepoError> {
        let ax = self.ancestors(xs)?;
        let ay = self.ancestors(ys)?;
        let common: Vec<CommitId> = ax.intersection(&ay).copied().collect();
        // Everything reachable from a parent of a common ancestor is a common ancestor that
        // is not best; what remains is best.
        let mut starts = Vec::new();
        for c in &common {
            starts.extend(self.meta(*c)?.parents);
        }
        let dominated = self.ancestors(&starts)?;
        let mut best: Vec<CommitId> =
            common.into_iter().filter(|c| !dominated.contains(c)).collect();
        best.sort();
        Ok(best)
    }

    /// A copy of the verified state at `id` (the cached one stays cached).
    fn state_copy(&mut self, id: CommitId) -> Result<GraphState, RepoError> {
        Ok(self.state_at(id)?.clone())
    }

    /// The state of the virtual merge base of several `bases` (criss-cross histories; see
    /// the module docs). Built as a full state: such histories are rare.
    fn virtual_base_state(&mut self, bases: &[CommitId]) -> Result<GraphState, RepoError> {
        let Some((first, rest)) = bases.split_first() else {
            return Ok(GraphState::new());
        };
        let mut acc = self.state_copy(*first)?;
        let mut merged = vec![*first];
        for b in rest {
            let inner = self.merge_bases_of_sets(&merged, &[*b])?;
            let inner_base = match inner.as_slice() {
                [] => GraphState::new(),
                [one] => self.state_copy(*one)?,
                many => self.virtual_base_state(many)?,
            };
            let theirs = self.state_copy(*b)?;
            let changes = three_way(&acc, &theirs, &inner_base);
            acc.apply(&changes).map_err(RepoError::Apply)?;
            merged.push(*b);
        }
        Ok(acc)
    }

    /// The changes that turn ours' state into the three-way merge with theirs (module docs),
    /// computed by walking one state from ours to theirs and to the merge base and back:
    /// O(changes on those paths) for a single merge base.
    fn merge_changes(&mut self, ours: CommitId, theirs: CommitId) -> Result<ChangeSet, RepoError> {
        let bases = self.merge_bases(ours, theirs)?;
        if bases.len() > 1 {
            let base = self.virtual_base_state(&bases)?;
            let theirs_state = self.state_copy(theirs)?;
            let ours_state = self.state_at(ours)?;
            return Ok(three_way(ours_state, &theirs_state, &base));
        }
        let mut state = self.take_state_at(ours)?;
        let result = self.single_base_merge(&mut state, ours, theirs, bases.first().copied());
        if result.is_ok() {
            self.states.put(ours, state, self.options.cached_states);
        }
        result
    }

    /// [`Repository::merge_changes`] with at most one merge base: `state` starts and ends at
    /// ours, visiting theirs and the base on the way.
    fn single_base_merge(
        &mut self,
        state: &mut GraphState,
        ours: CommitId,
        theirs: CommitId,
        base: Option<CommitId>,
    ) -> Result<ChangeSet, RepoError> {
        let (only_theirs, only_ours) = self.walk_between(state, ours, theirs)?.into_parts();
        let Some(base) = base else {
            // Unrelated histories: the base is empty, so theirs' additions all stay and
            // nothing of ours is removed.
            self.walk_between(state, theirs, ours)?;
            return Ok(ChangeSet::from_sorted(only_theirs, Vec::new()));
        };
        self.walk_between(state, theirs, base)?;
        // Only in theirs: keep if theirs added it (absent from base). Only in ours: drop if
        // theirs removed it (present in base).
        let add = only_theirs.into_iter().filter(|t| !state.contains(t)).collect();
        let remove = only_ours.into_iter().filter(|t| state.contains(t)).collect();
        self.walk_between(state, base, ours)?;
        Ok(ChangeSet::from_sorted(add, remove))
    }

    /// Merges commit `theirs` into `branch`.
    ///
    /// - If `theirs` is already an ancestor of the head: [`MergeOutcome::AlreadyUpToDate`].
    /// - If the head is an ancestor of `theirs`: the branch fast-forwards to `theirs` (whose
    ///   state is verified first, reached from the head's in O(changes)).
    /// - Otherwise the three-way merge (module docs) is computed. If it changes the head's
    ///   state, a merge commit with parents `[head, theirs]` records it
    ///   ([`MergeOutcome::Merged`]); if not, nothing is written ([`MergeOutcome::Unchanged`]).
    pub fn merge(
        &mut self,
        branch: &BranchName,
        theirs: CommitId,
        message: &str,
    ) -> Result<MergeOutcome, RepoError> {
        let ours = self.existing_head(branch)?;
        self.load_commit(theirs)?;
        if self.is_ancestor(theirs, ours)? {
            return Ok(MergeOutcome::AlreadyUpToDate);
        }
        if self.is_ancestor(ours, theirs)? {
            // Verify the whole target before pointing a branch at it.
            let state = self.take_state_at(theirs)?;
            self.states.put(theirs, state, self.options.cached_states);
            self.store.write(WriteBatch::new().update_ref(
                branch.clone(),
                Some(ours),
                Some(theirs),
            ))?;
            return Ok(MergeOutcome::FastForward(theirs));
        }
        let changes = self.merge_changes(ours, theirs)?;
        if changes.is_empty() {
            return Ok(MergeOutcome::Unchanged);
        }
        let mut state = self.take_state_at(ours)?;
        state.apply(&changes).map_err(RepoError::Apply)?;
        let parents = vec![ours, theirs];
        let id = self.write_commit(branch, Some(ours), parents, state, changes, message)?;
        Ok(MergeOutcome::Merged(id))
    }

    /// The changes that turn the state at `from` into the state at `to`: O(changes between
    /// them) from the nearest cached state.
    pub fn diff(&mut self, from: CommitId, to: CommitId) -> Result<ChangeSet, RepoError> {
        let mut state = self.take_state_at(from)?;
        let changes = self.walk_between(&mut state, from, to)?;
        self.states.put(to, state, self.options.cached_states);
        Ok(changes)
    }

    /// `start` and its ancestors, newest first, at most `limit` of them: every commit comes
    /// before its parents. The order is by generation (a root is 1, any other commit one more
    /// than its highest parent), then latest timestamp, then highest id. The walk reads only
    /// the commits it returns and their parents, using the generation numbers recorded when
    /// commits are written or received.
    pub fn log(&mut self, start: CommitId, limit: usize) -> Result<Vec<SignedCommit>, RepoError> {
        let mut out = Vec::new();
        let mut frontier: BinaryHeap<(u64, Timestamp, CommitId)> = BinaryHeap::new();
        let mut queued = HashSet::from([start]);
        frontier.push((self.generation(start)?, self.meta(start)?.timestamp, start));
        while out.len() < limit {
            let Some((_, _, c)) = frontier.pop() else { break };
            out.push(self.load_commit(c)?);
            for p in self.meta(c)?.parents {
                if queued.insert(p) {
                    frontier.push((self.generation(p)?, self.meta(p)?.timestamp, p));
                }
            }
        }
        Ok(out)
    }

    /// The generation number of `id`: read from its record if the store has one, else
    /// computed from its ancestors (and remembered for this repository's lifetime).
    fn generation(&mut self, id: CommitId) -> Result<u64, RepoError> {
        let mut stack = vec![id];
        while let Some(&c) = stack.last() {
            if self.generations.contains_key(&c) {
                stack.pop();
                continue;
            }
            if let Some(bytes) = self.store.object(&generation_object(c))?
                && let Ok(raw) = <[u8; 8]>::try_from(bytes.as_slice())
            {
                self.generations.insert(c, u64::from_le_bytes(raw));
                stack.pop();
                continue;
            }
            let parents = self.meta(c)?.parents;
            let missing: Vec<CommitId> =
                parents.iter().copied().filter(|p| !self.generations.contains_key(p)).collect();
            if missing.is_empty() {
                let g = parents.iter().filter_map(|p| self.generations.get(p)).max().copied();
                self.generations.insert(c, g.unwrap_or(0).saturating_add(1));
                stack.pop();
            } else {
                if stack.len() > self.generations.len() + 1_000_000 {
                    return Err(RepoError::InvalidCommit {
                        id: c,
                        reason: InvalidCommit::Cycle(c),
                    });
                }
                stack.extend(missing);
            }
        }
        self.generations.get(&id).copied().ok_or(RepoError::CommitNotFound(id))
    }

    /// The generation record to store with a new commit with these parents.
    fn generation_record(
        &mut self,
        id: CommitId,
        parents: &[CommitId],
    ) -> Result<(ObjectId, Vec<u8>), RepoError> {
        let mut g = 0;
        for p in parents {
            g = g.max(self.generation(*p)?);
        }
        let g = g.saturating_add(1);
        self.generations.insert(id, g);
        Ok((generation_object(id), g.to_le_bytes().to_vec()))
    }
}

impl<S: Store> Repository<S> {
    /// Refuses a commit the host's policy does not admit.
    fn check_policy(&self, commit: &SignedCommit) -> Result<(), RepoError> {
        self.policy
            .check(commit)
            .map_err(|reason| RepoError::Refused { id: commit.id(), reason: Box::new(reason) })
    }
}

/// Where the generation number of commit `id` is recorded: an object whose id is derived
/// from the commit's. The record is an index, not evidence: a damaged one can change the
/// order of [`Repository::log`], never what a commit or a state is.
fn generation_object(id: CommitId) -> ObjectId {
    ObjectId::from_bytes(crate::encoding::hash_bytes(b"llmkg/commit-generation/v1", id.as_bytes()))
}

/// Applies a verified commit's changes to its first parent's `state` and checks the root.
fn apply_verified(state: &mut GraphState, commit: &SignedCommit) -> Result<(), RepoError> {
    let id = commit.id();
    state.apply(commit.commit().changes()).map_err(|e| RepoError::InvalidCommit {
        id,
        reason: InvalidCommit::ChangesDoNotApply(e),
    })?;
    let actual = state.state_root();
    let claimed = commit.commit().state_root();
    if actual != claimed {
        return Err(RepoError::InvalidCommit {
            id,
            reason: InvalidCommit::StateRootMismatch { claimed, actual },
        });
    }
    Ok(())
}

/// The exact changes that turn `ours` into the three-way merge of `ours` and `theirs` over
/// `base`: `(A ∩ B) ∪ (A − O) ∪ (B − O)`.
pub fn three_way(ours: &GraphState, theirs: &GraphState, base: &GraphState) -> ChangeSet {
    let d = ours.diff(theirs);
    // Only in theirs: keep if theirs added it (absent from base).
    let add = d.added().iter().filter(|t| !base.contains(t)).cloned().collect();
    // Only in ours: drop if theirs removed it (present in base).
    let remove = d.removed().iter().filter(|t| base.contains(t)).cloned().collect();
    ChangeSet::from_sorted(add, remove)
}
