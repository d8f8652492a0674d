//! The local versioned graph: git for triples.
//!
//! A [`Repository`] stores signed commits in a [`Store`] and keeps branches as refs. Every
//! commit it loads from the store or receives from elsewhere is verified — content id,
//! signature, authorship, that its changes apply exactly to its first parent's state, and the
//! resulting state root — before it is used or stored.
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

use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};

use thiserror::Error;

use crate::commit::{
    Commit, CommitId, CommitShapeError, CommitVerifyError, SignedCommit, peek_parents,
};
use crate::encoding::DecodeError;
use crate::graph::{ApplyError, GraphState};
use crate::identity::{NodeKeypair, OrgId};
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
    /// The ancestry walk met a cycle or a malformed link (a damaged store).
    #[error("malformed ancestry: {0}")]
    Ancestry(DecodeError),
}

/// What [`Repository::merge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Theirs is already contained in ours: nothing changed.
    AlreadyUpToDate,
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
    keypair: NodeKeypair,
    org: OrgId,
    clock: Box<dyn Clock>,
    /// Materialized head states, keyed by branch, with the commit they are the state of.
    heads: HashMap<BranchName, (CommitId, GraphState)>,
    /// Parents and timestamps of commits verified so far.
    meta: HashMap<CommitId, Meta>,
}

impl<S: Store> std::fmt::Debug for Repository<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("node", &self.keypair.node_id())
            .field("org", &self.org)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Repository<S> {
    /// A repository over `store`, committing as `keypair`'s node on behalf of `org`, with
    /// timestamps from `clock`.
    pub fn new(store: S, keypair: NodeKeypair, org: OrgId, clock: impl Clock + 'static) -> Self {
        Self {
            store,
            keypair,
            org,
            clock: Box::new(clock),
            heads: HashMap::new(),
            meta: HashMap::new(),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The identity commits are signed with.
    pub fn node_id(&self) -> crate::NodeId {
        self.keypair.node_id()
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
        self.meta.entry(c.id()).or_insert_with(|| Meta {
            parents: c.commit().parents().to_vec(),
            timestamp: c.commit().timestamp(),
        });
    }

    fn meta(&mut self, id: CommitId) -> Result<Meta, RepoError> {
        if let Some(m) = self.meta.get(&id) {
            return Ok(m.clone());
        }
        self.load_commit(id)?;
        self.meta.get(&id).cloned().ok_or(RepoError::CommitNotFound(id))
    }

    /// The state at commit `id`, rebuilt from the store by replaying its first-parent chain
    /// from the root commit. Every commit on the chain is fully verified on the way: id,
    /// signature, authorship, exact applicability of its changes and its state root.
    pub fn materialize(&mut self, id: CommitId) -> Result<GraphState, RepoError> {
        // Walk back along first parents, reading only the parent list of each envelope; every
        // link is checked again against the verified commit during the replay below.
        let mut chain = vec![id];
        let mut seen = HashSet::from([id]);
        let mut cursor = id;
        loop {
            let parents = match self.meta.get(&cursor) {
                Some(m) => m.parents.clone(),
                None => {
                    let bytes = self
                        .store
                        .object(&ObjectId::from(cursor))?
                        .ok_or(RepoError::CommitNotFound(cursor))?;
                    peek_parents(&bytes).map_err(|e| RepoError::InvalidCommit {
                        id: cursor,
                        reason: InvalidCommit::Ancestry(e),
                    })?
                }
            };
            match parents.first() {
                None => break,
                Some(p) => {
                    if !seen.insert(*p) {
                        return Err(RepoError::InvalidCommit {
                            id: cursor,
                            reason: InvalidCommit::Ancestry(DecodeError::Malformed {
                                what: "Commit",
                                reason: "first-parent chain has a cycle".into(),
                            }),
                        });
                    }
                    chain.push(*p);
                    cursor = *p;
                }
            }
        }
        let mut state = GraphState::new();
        let mut expected_parent: Option<CommitId> = None;
        for &cid in chain.iter().rev() {
            let commit = self.load_commit(cid).map_err(|e| match e {
                RepoError::CommitNotFound(missing) if missing != id => {
                    RepoError::InvalidCommit { id, reason: InvalidCommit::MissingParent(missing) }
                }
                e => e,
            })?;
            if commit.commit().parents().first().copied() != expected_parent {
                return Err(RepoError::InvalidCommit {
                    id: cid,
                    reason: InvalidCommit::Ancestry(DecodeError::Malformed {
                        what: "Commit",
                        reason: "parent list changed between reads".into(),
                    }),
                });
            }
            apply_verified(&mut state, &commit)?;
            expected_parent = Some(cid);
        }
        Ok(state)
    }

    /// The materialized state at the head of `branch`, cached until the branch moves.
    pub fn state(&mut self, branch: &BranchName) -> Result<&GraphState, RepoError> {
        let head = self.existing_head(branch)?;
        let fresh = matches!(self.heads.get(branch), Some((cached, _)) if *cached == head);
        if !fresh {
            let state = self.materialize(head)?;
            self.heads.insert(branch.clone(), (head, state));
        }
        match self.heads.get(branch) {
            Some((_, state)) => Ok(state),
            None => Err(RepoError::BranchNotFound(branch.clone())),
        }
    }

    /// The cached materialized state of commit `id`, if a branch head is there.
    #[cfg(feature = "rdf")]
    pub(crate) fn cached_state(&self, id: CommitId) -> Option<&GraphState> {
        self.heads.values().find(|(c, _)| *c == id).map(|(_, s)| s)
    }

    /// Takes the cached state of `branch` at `head` out of the cache, materializing it if the
    /// cache is stale. Put it back with `self.heads.insert` on success.
    fn take_state(
        &mut self,
        branch: &BranchName,
        head: Option<CommitId>,
    ) -> Result<GraphState, RepoError> {
        match (self.heads.remove(branch), head) {
            (Some((cached, state)), Some(head)) if cached == head => Ok(state),
            (_, Some(head)) => self.materialize(head),
            (_, None) => Ok(GraphState::new()),
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
        let mut state = self.take_state(branch, head)?;
        let effective = state.apply_effective(changes).map_err(RepoError::Apply)?;
        if effective.is_empty() {
            if let Some(h) = head {
                self.heads.insert(branch.clone(), (h, state));
            }
            return Err(RepoError::NothingToCommit);
        }
        let parents: Vec<CommitId> = head.into_iter().collect();
        self.write_commit(branch, head, parents, state, effective, message)
    }

    /// Signs and writes a commit with `parents` and `changes`, already applied to `state`,
    /// moving `branch` from `head`. The state is cached on success and dropped on failure (it
    /// is rebuilt from the store when next needed).
    fn write_commit(
        &mut self,
        branch: &BranchName,
        head: Option<CommitId>,
        parents: Vec<CommitId>,
        mut state: GraphState,
        changes: ChangeSet,
        message: &str,
    ) -> Result<CommitId, RepoError> {
        let commit = Commit::new(
            parents,
            changes,
            self.keypair.node_id(),
            self.org.clone(),
            self.clock.now(),
            message.to_owned(),
            state.state_root(),
        )?;
        let signed = SignedCommit::sign(&self.keypair, commit).map_err(RepoError::Unverifiable)?;
        let id = signed.id();
        let batch = WriteBatch::new().put_object(id, signed.as_bytes().to_vec()).update_ref(
            branch.clone(),
            head,
            Some(id),
        );
        self.store.write(batch)?;
        self.remember(&signed);
        self.heads.insert(branch.clone(), (id, state));
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
        self.heads.remove(branch);
        Ok(())
    }

    /// Verifies a commit received from elsewhere — id, signature, authorship, that its parents
    /// are present, that its changes apply exactly to its first parent's state and that the
    /// state root matches — and stores it. No ref moves. Returns its id.
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
        let mut state = match commit.commit().parents().first() {
            Some(p) => self.materialize(*p)?,
            None => GraphState::new(),
        };
        apply_verified(&mut state, &commit)?;
        self.store.write(WriteBatch::new().put_object(id, commit.as_bytes().to_vec()))?;
        self.remember(&commit);
        Ok(id)
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

    /// The state of the (possibly virtual) merge base of `bases`; see the module docs.
    fn base_state(&mut self, bases: &[CommitId]) -> Result<GraphState, RepoError> {
        let Some((first, rest)) = bases.split_first() else {
            return Ok(GraphState::new());
        };
        let mut acc = self.materialize(*first)?;
        let mut merged = vec![*first];
        for b in rest {
            let inner = self.merge_bases_of_sets(&merged, &[*b])?;
            let inner_base = self.base_state(&inner)?;
            let theirs = self.materialize(*b)?;
            let changes = three_way(&acc, &theirs, &inner_base);
            acc.apply(&changes).map_err(RepoError::Apply)?;
            merged.push(*b);
        }
        Ok(acc)
    }

    /// Merges commit `theirs` into `branch`.
    ///
    /// - If `theirs` is already an ancestor of the head: [`MergeOutcome::AlreadyUpToDate`].
    /// - If the head is an ancestor of `theirs`: the branch fast-forwards to `theirs`.
    /// - Otherwise a merge commit with parents `[head, theirs]` records the three-way merge
    ///   (module docs), even if the merged state equals the head's.
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
            let state = self.materialize(theirs)?;
            self.store.write(WriteBatch::new().update_ref(
                branch.clone(),
                Some(ours),
                Some(theirs),
            ))?;
            self.heads.insert(branch.clone(), (theirs, state));
            return Ok(MergeOutcome::FastForward(theirs));
        }
        let bases = self.merge_bases(ours, theirs)?;
        let base = self.base_state(&bases)?;
        let their_state = self.materialize(theirs)?;
        let mut our_state = self.take_state(branch, Some(ours))?;
        let changes = three_way(&our_state, &their_state, &base);
        our_state.apply(&changes).map_err(RepoError::Apply)?;
        let parents = vec![ours, theirs];
        let id = self.write_commit(branch, Some(ours), parents, our_state, changes, message)?;
        Ok(MergeOutcome::Merged(id))
    }

    /// The changes that turn the state at `from` into the state at `to`.
    pub fn diff(&mut self, from: CommitId, to: CommitId) -> Result<ChangeSet, RepoError> {
        let a = self.materialize(from)?;
        let b = self.materialize(to)?;
        Ok(a.diff(&b))
    }

    /// `start` and its ancestors, newest first: every commit comes before its parents, and
    /// among commits whose children are all listed, the latest timestamp (then the highest
    /// id) comes first. At most `limit` commits.
    pub fn log(&mut self, start: CommitId, limit: usize) -> Result<Vec<SignedCommit>, RepoError> {
        let all = self.ancestors(&[start])?;
        let mut pending_children: HashMap<CommitId, usize> = HashMap::new();
        for c in &all {
            for p in self.meta(*c)?.parents {
                *pending_children.entry(p).or_default() += 1;
            }
        }
        let mut ready = BinaryHeap::new();
        ready.push((self.meta(start)?.timestamp, start));
        let mut out = Vec::new();
        let mut emitted = BTreeSet::new();
        while let Some((_, c)) = ready.pop() {
            if out.len() >= limit {
                break;
            }
            if !emitted.insert(c) {
                continue;
            }
            out.push(self.load_commit(c)?);
            for p in self.meta(c)?.parents {
                if let Some(n) = pending_children.get_mut(&p) {
                    *n -= 1;
                    if *n == 0 {
                        ready.push((self.meta(p)?.timestamp, p));
                    }
                }
            }
        }
        Ok(out)
    }
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
