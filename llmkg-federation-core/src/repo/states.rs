//! Reaching the state at any commit in O(changes): a small cache of verified states, and
//! walks along first-parent chains that apply commits forward or undo them backward.
//!
//! A commit records the exact changes from its first parent's state, so the first-parent
//! edges of the history can be walked in both directions: forward by applying a commit's
//! changes, backward by applying their inverse. Any two commits are joined by such a path
//! through the point where their first-parent chains meet (or through the empty state
//! before their roots). Every step is verified: a forward step checks the commit's state
//! root, a backward step checks the parent's.

use std::collections::{HashMap, HashSet};

use super::{InvalidCommit, RepoError, Repository, apply_verified};
use crate::commit::{CommitId, peek_parents};
use crate::graph::GraphState;
use crate::store::{ObjectId, Store};
use crate::term::{ChangeSet, Triple};

/// Verified states by commit, least recently used first.
#[derive(Default)]
pub(super) struct StateCache {
    entries: Vec<(CommitId, GraphState)>,
}

impl StateCache {
    pub(super) fn ids(&self) -> Vec<CommitId> {
        self.entries.iter().map(|(id, _)| *id).collect()
    }

    pub(super) fn take(&mut self, id: CommitId) -> Option<GraphState> {
        let pos = self.entries.iter().position(|(c, _)| *c == id)?;
        Some(self.entries.remove(pos).1)
    }

    /// Puts `state` (the verified state at `id`) in as the most recently used entry,
    /// evicting the least recently used beyond `capacity`.
    pub(super) fn put(&mut self, id: CommitId, state: GraphState, capacity: usize) {
        self.entries.retain(|(c, _)| *c != id);
        self.entries.push((id, state));
        let excess = self.entries.len().saturating_sub(capacity.max(1));
        self.entries.drain(..excess);
    }

    /// The most recently used entry (just put).
    pub(super) fn last(&self) -> Option<&GraphState> {
        self.entries.last().map(|(_, s)| s)
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The net effect of a walk: each triple's count goes +1 when added and −1 when removed.
/// Steps are exact (only absent triples are added, only present ones removed), so the count
/// of every triple stays in {−1, 0, +1}: +1 means added since the start, −1 removed.
#[derive(Default)]
pub(super) struct NetChanges(HashMap<Triple, i8>);

impl NetChanges {
    fn record(&mut self, changes: &ChangeSet, forward: bool) {
        let (plus, minus) = if forward {
            (changes.added(), changes.removed())
        } else {
            (changes.removed(), changes.added())
        };
        for t in plus {
            *self.0.entry(t.clone()).or_default() += 1;
        }
        for t in minus {
            *self.0.entry(t.clone()).or_default() -= 1;
        }
    }

    /// The change set from the start of the walk to its end.
    pub(super) fn into_change_set(self) -> ChangeSet {
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for (t, n) in self.0 {
            match n {
                1.. => add.push(t),
                ..0 => remove.push(t),
                0 => {}
            }
        }
        add.sort_unstable();
        remove.sort_unstable();
        ChangeSet::from_sorted(add, remove)
    }
}

/// A path between two commits along first-parent edges: undo `back` (in order, each step
/// going from a commit to its first parent's state), then apply `forward` (in order).
#[derive(Debug, Default)]
pub(super) struct Path {
    pub(super) back: Vec<CommitId>,
    pub(super) forward: Vec<CommitId>,
}

impl Path {
    fn cost(&self) -> usize {
        self.back.len() + self.forward.len()
    }
}

/// How a commit links to the state before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Link {
    /// A root: the state before it is empty.
    Root,
    /// Its changes apply to this parent's state.
    Parent(CommitId),
    /// The boundary of a shallow replica: its state comes from its checkpoint.
    Shallow,
}

/// Where a first-parent chain walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChainEnd {
    /// At a commit the caller asked to stop at.
    Stopped,
    /// At a root commit.
    Root,
    /// At a shallow boundary (which has no usable checkpoint, or the caller would have
    /// stopped there).
    Shallow,
    /// After the most commits the caller allowed.
    Limit,
}

/// One side of [`Repository::path`]'s search: a first-parent chain walked so far.
struct ChainWalk {
    chain: Vec<CommitId>,
    pos: HashMap<CommitId, usize>,
    done: bool,
    shallow: bool,
}

impl ChainWalk {
    fn new(start: CommitId) -> Self {
        Self { chain: vec![start], pos: HashMap::from([(start, 0)]), done: false, shallow: false }
    }

    fn len(&self) -> usize {
        self.chain.len()
    }

    fn last(&self) -> CommitId {
        self.chain.last().copied().unwrap_or_else(|| CommitId::from_bytes([0; 32]))
    }

    /// Appends `c`; `Err` if it is already on the chain (a cycle: a damaged store).
    fn push(&mut self, c: CommitId) -> Result<(), ()> {
        if self.pos.insert(c, self.chain.len()).is_some() {
            return Err(());
        }
        self.chain.push(c);
        Ok(())
    }
}

/// Why an attempt to reach a state failed.
enum Reach {
    /// Loading the checkpoint of this commit failed.
    Checkpoint(CommitId, Box<RepoError>),
    /// Anything else.
    Other(Box<RepoError>),
}

impl From<RepoError> for Reach {
    fn from(e: RepoError) -> Self {
        Reach::Other(Box::new(e))
    }
}

/// Where the walk to a wanted state starts.
enum Origin {
    /// A cached state, then this path.
    Cached(CommitId, Path),
    /// The checkpoint of this commit, then forward along the chain.
    Checkpoint(CommitId, Vec<CommitId>),
    /// The empty state, then forward from the root.
    Empty(Vec<CommitId>),
}

/// Loading a checkpoint, or a root commit into the empty state, costs about as much as
/// replaying this many commits; a cached state further away than this is not preferred.
const CHECKPOINT_COST: usize = 32;

/// How far (in commits) cached states are searched before the target's chain is walked.
const NEAR: usize = 64;

impl<S: Store> Repository<S> {
    /// How `id` links to the state before it: from verified metadata if known, else read
    /// from the front of the stored envelope (every step that uses it is verified when taken).
    pub(super) fn link(&mut self, id: CommitId) -> Result<Link, RepoError> {
        if let Some(l) = self.links.get(&id) {
            return Ok(*l);
        }
        let first = match self.meta.get(&id) {
            Some(m) if !m.parents.is_empty() => m.parents.first().copied(),
            _ => {
                let bytes =
                    self.store.object(&ObjectId::from(id))?.ok_or(RepoError::CommitNotFound(id))?;
                let parents = peek_parents(&bytes).map_err(|e| RepoError::InvalidCommit {
                    id,
                    reason: InvalidCommit::Malformed(e),
                })?;
                parents.first().copied()
            }
        };
        let link = match first {
            None => Link::Root,
            Some(_) if self.is_shallow(id)? => Link::Shallow,
            Some(p) => Link::Parent(p),
        };
        self.links.insert(id, link);
        Ok(link)
    }

    /// `id` and its first-parent ancestors, newest first, stopping after the first commit for
    /// which `stop` is true, at a root or a shallow boundary, or once the chain holds more
    /// than `max` commits. Returns the chain and how it ended.
    pub(super) fn chain(
        &mut self,
        id: CommitId,
        max: usize,
        mut stop: impl FnMut(&mut Self, CommitId) -> Result<bool, RepoError>,
    ) -> Result<(Vec<CommitId>, ChainEnd), RepoError> {
        let mut chain = vec![id];
        let mut seen = HashSet::from([id]);
        let mut cursor = id;
        loop {
            if stop(self, cursor)? {
                return Ok((chain, ChainEnd::Stopped));
            }
            if chain.len() > max {
                return Ok((chain, ChainEnd::Limit));
            }
            match self.link(cursor)? {
                Link::Root => return Ok((chain, ChainEnd::Root)),
                Link::Shallow => return Ok((chain, ChainEnd::Shallow)),
                Link::Parent(p) => {
                    if !seen.insert(p) {
                        return Err(RepoError::InvalidCommit {
                            id: cursor,
                            reason: InvalidCommit::Cycle(p),
                        });
                    }
                    chain.push(p);
                    cursor = p;
                }
            }
        }
    }

    /// The path from `from` to `to`, if it costs at most `max` steps.
    pub(super) fn path(
        &mut self,
        from: CommitId,
        to: CommitId,
        max: usize,
    ) -> Result<Option<Path>, RepoError> {
        // Walk both first-parent chains one step at a time, in turn, until one reaches a
        // commit the other has seen: that is where the chains meet, and no step is taken
        // beyond it on either side.
        let mut sides = [ChainWalk::new(from), ChainWalk::new(to)];
        let mut turn = 0;
        let meeting = loop {
            if from == to {
                break Some((0, 0));
            }
            if sides.iter().all(|s| s.done)
                || sides[0].len() + sides[1].len() > max.saturating_add(2)
            {
                break None;
            }
            let s = if sides[turn].done { 1 - turn } else { turn };
            turn = 1 - s;
            let last = sides[s].last();
            match self.link(last)? {
                Link::Root => sides[s].done = true,
                Link::Shallow => {
                    sides[s].done = true;
                    sides[s].shallow = true;
                }
                Link::Parent(p) => {
                    sides[s].push(p).map_err(|()| RepoError::InvalidCommit {
                        id: last,
                        reason: InvalidCommit::Cycle(p),
                    })?;
                    if let Some(&j) = sides[1 - s].pos.get(&p) {
                        let i = sides[s].len() - 1;
                        break Some(if s == 0 { (i, j) } else { (j, i) });
                    }
                }
            }
        };
        let [a, b] = sides;
        let path = match meeting {
            Some((i, j)) => Path {
                back: a.chain.get(..i).unwrap_or_default().to_vec(),
                forward: b.chain.get(..j).unwrap_or_default().iter().rev().copied().collect(),
            },
            // Unrelated histories: through the empty state before both roots (not past a
            // shallow boundary: the state before it cannot be reached).
            None if a.done && b.done && !a.shallow && !b.shallow => {
                Path { back: a.chain, forward: b.chain.into_iter().rev().collect() }
            }
            None => return Ok(None),
        };
        Ok(Some(path).filter(|p| p.cost() <= max))
    }

    /// The verified state at `target`, taken out of the cache (put it back with
    /// `self.states.put`). Starts from the cheapest of: a cached state (forward or backward
    /// along first parents), the nearest checkpoint on the target's first-parent chain, or the
    /// empty state before the root. A checkpoint that fails to load is noted and skipped.
    pub(super) fn take_state_at(&mut self, target: CommitId) -> Result<GraphState, RepoError> {
        if let Some(state) = self.states.take(target) {
            return Ok(state);
        }
        loop {
            match self.reach(target) {
                Err(Reach::Checkpoint(c, e)) => {
                    if self.is_shallow(c)? {
                        // Nothing before a shallow boundary to replay instead.
                        return Err(*e);
                    }
                    self.checkpoint_failed(c);
                }
                Err(Reach::Other(e)) => return Err(*e),
                Ok((state, since)) => {
                    self.after_new_state(target, &state, since);
                    return Ok(state);
                }
            }
        }
    }

    /// One attempt of [`Repository::take_state_at`]: the state and its replay distance from
    /// the nearest checkpoint.
    fn reach(&mut self, target: CommitId) -> Result<(GraphState, u64), Reach> {
        let cost = |o: &Option<Origin>| match o {
            Some(Origin::Cached(_, p)) => p.cost(),
            Some(Origin::Checkpoint(_, f)) | Some(Origin::Empty(f)) => f.len() + CHECKPOINT_COST,
            None => usize::MAX,
        };
        // Cached states close to the target first (a parent, a sibling), so that the common
        // cases never walk the history back to a checkpoint.
        let cached = self.states.ids();
        let mut best: Option<Origin> = None;
        for &c in &cached {
            let bound = cost(&best).saturating_sub(1).min(NEAR);
            if let Some(path) = self.path(c, target, bound)? {
                best = Some(Origin::Cached(c, path));
            }
        }
        // Then the target's own first-parent chain, no further than the best start so far,
        // back to a cached state, a checkpoint or the root.
        let limit = cost(&best);
        let (chain, end) = self
            .chain(target, limit, |repo, c| Ok(cached.contains(&c) || repo.has_checkpoint(c)?))?;
        // `chain` ends with the origin commit if the walk stopped at one.
        let on_chain = match (end, chain.split_last()) {
            (ChainEnd::Stopped, Some((&origin, rest))) => {
                let forward = rest.iter().rev().copied().collect();
                if cached.contains(&origin) {
                    Some(Origin::Cached(origin, Path { back: Vec::new(), forward }))
                } else {
                    Some(Origin::Checkpoint(origin, forward))
                }
            }
            (ChainEnd::Root, _) => Some(Origin::Empty(chain.iter().rev().copied().collect())),
            _ => None,
        };
        if cost(&on_chain) < cost(&best) {
            best = on_chain;
        }
        // Cached states further away, if they still beat what was found.
        if best.is_none() || cost(&best) > NEAR {
            for &c in &cached {
                let bound = cost(&best).saturating_sub(1);
                if let Some(path) = self.path(c, target, bound)? {
                    best = Some(Origin::Cached(c, path));
                }
            }
        }
        let (mut state, path, start, base) = match best {
            Some(Origin::Cached(c, path)) => {
                let since = self.since(c);
                match self.states.take(c) {
                    Some(s) => (s, path, Some(c), since),
                    None => return Err(RepoError::CommitNotFound(c).into()),
                }
            }
            Some(Origin::Checkpoint(c, forward)) => {
                let state =
                    self.load_checkpoint(c).map_err(|e| Reach::Checkpoint(c, Box::new(e)))?;
                (state, Path { back: Vec::new(), forward }, Some(c), 0)
            }
            Some(Origin::Empty(forward)) => {
                (GraphState::new(), Path { back: Vec::new(), forward }, None, 0)
            }
            None => {
                // A shallow boundary whose checkpoint is gone or damaged.
                let boundary = self.chain(target, usize::MAX, |_, _| Ok(false))?.0;
                let boundary = boundary.last().copied().unwrap_or(target);
                return Err(RepoError::Snapshot {
                    id: boundary,
                    error: Box::new(crate::snapshot::SnapshotError::Incomplete {
                        missing: 1,
                        total: 1,
                    }),
                }
                .into());
            }
        };
        let applied = self.walk(&mut state, start, &path, None)?;
        Ok((state, base.saturating_add(applied)))
    }

    /// Moves `state` (the verified state at `start`, or the empty state for `None`) along
    /// `path`, verifying every step, and records the net changes if asked. On error the state
    /// is dropped by the caller (it may be part-way). Returns the number of triples added and
    /// removed on the way, not counting a first load into the empty state.
    pub(super) fn walk(
        &mut self,
        state: &mut GraphState,
        start: Option<CommitId>,
        path: &Path,
        mut net: Option<&mut NetChanges>,
    ) -> Result<u64, RepoError> {
        let mut at = start;
        let mut applied = 0u64;
        for &c in &path.back {
            let commit = self.load_commit(c)?;
            if at != Some(c) {
                return Err(RepoError::InvalidCommit { id: c, reason: InvalidCommit::BrokenPath });
            }
            let parent = commit.commit().parents().first().copied();
            let undo = commit.commit().changes().inverse();
            state.apply(&undo).map_err(|e| RepoError::InvalidCommit {
                id: c,
                reason: InvalidCommit::ChangesDoNotApply(e),
            })?;
            let expected = match parent {
                Some(p) => {
                    // The state landed on holds the parent's changes: it must pass the
                    // policy, as it would on a forward step.
                    let parent_commit = self.load_commit(p)?;
                    self.check_policy(&parent_commit)?;
                    parent_commit.commit().state_root()
                }
                None => GraphState::new().state_root(),
            };
            let actual = state.state_root();
            if actual != expected {
                return Err(RepoError::InvalidCommit {
                    id: parent.unwrap_or(c),
                    reason: InvalidCommit::StateRootMismatch { claimed: expected, actual },
                });
            }
            if let Some(n) = net.as_deref_mut() {
                n.record(commit.commit().changes(), false);
            }
            applied = applied.saturating_add(commit.commit().changes().len() as u64);
            at = parent;
        }
        for &c in &path.forward {
            let commit = self.load_commit(c).map_err(|e| match e {
                RepoError::CommitNotFound(missing) => RepoError::InvalidCommit {
                    id: missing,
                    reason: InvalidCommit::MissingParent(missing),
                },
                e => e,
            })?;
            if commit.commit().parents().first().copied() != at {
                return Err(RepoError::InvalidCommit { id: c, reason: InvalidCommit::BrokenPath });
            }
            self.check_policy(&commit)?;
            // Changes loaded into an empty state take the bulk path, about as fast as loading
            // a checkpoint: they do not count as replay.
            let bulk = state.is_empty();
            apply_verified(state, &commit)?;
            if let Some(n) = net.as_deref_mut() {
                n.record(commit.commit().changes(), true);
            }
            if !bulk {
                applied = applied.saturating_add(commit.commit().changes().len() as u64);
            }
            at = Some(c);
        }
        Ok(applied)
    }

    /// Moves `state` from `from` to `to` and returns the net changes between them.
    pub(super) fn walk_between(
        &mut self,
        state: &mut GraphState,
        from: CommitId,
        to: CommitId,
    ) -> Result<ChangeSet, RepoError> {
        let path = self.path(from, to, usize::MAX)?.ok_or(RepoError::Snapshot {
            id: to,
            error: Box::new(crate::snapshot::SnapshotError::Incomplete { missing: 1, total: 1 }),
        })?;
        let mut net = NetChanges::default();
        self.walk(state, Some(from), &path, Some(&mut net))?;
        Ok(net.into_change_set())
    }
}
