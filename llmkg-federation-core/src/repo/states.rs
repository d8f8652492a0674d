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

/// One side of [`Repository::path`]'s search: a first-parent chain walked so far.
struct ChainWalk {
    chain: Vec<CommitId>,
    pos: HashMap<CommitId, usize>,
    done: bool,
}

impl ChainWalk {
    fn new(start: CommitId) -> Self {
        Self { chain: vec![start], pos: HashMap::from([(start, 0)]), done: false }
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

/// Where the walk to a wanted state starts.
enum Origin {
    /// A cached state, then this path.
    Cached(CommitId, Path),
    /// The checkpoint of this commit, then forward along the chain.
    Checkpoint(CommitId, Vec<CommitId>),
    /// The empty state, then forward from the root.
    Empty(Vec<CommitId>),
}

/// Loading a checkpoint costs about as much as replaying this many commits; a cached state
/// further away than this is not preferred over a checkpoint.
const CHECKPOINT_COST: usize = 32;

impl<S: Store> Repository<S> {
    /// The first parent of `id`, from verified metadata if known, else read from the front
    /// of the stored envelope (every step that uses it is verified when it is applied).
    pub(super) fn first_parent(&mut self, id: CommitId) -> Result<Option<CommitId>, RepoError> {
        if let Some(m) = self.meta.get(&id) {
            return Ok(m.parents.first().copied());
        }
        if let Some(p) = self.links.get(&id) {
            return Ok(*p);
        }
        let bytes = self.store.object(&ObjectId::from(id))?.ok_or(RepoError::CommitNotFound(id))?;
        let parents = peek_parents(&bytes)
            .map_err(|e| RepoError::InvalidCommit { id, reason: InvalidCommit::Malformed(e) })?;
        let first = parents.first().copied();
        self.links.insert(id, first);
        Ok(first)
    }

    /// `id` and its first-parent ancestors, newest first, stopping after the first commit for
    /// which `stop` is true, at a root, or after `max` commits. Returns the chain and whether
    /// it ended at a root (whose state is reached from the empty state).
    fn chain(
        &mut self,
        id: CommitId,
        max: usize,
        mut stop: impl FnMut(&mut Self, CommitId) -> Result<bool, RepoError>,
    ) -> Result<(Vec<CommitId>, bool), RepoError> {
        let mut chain = vec![id];
        let mut seen = HashSet::from([id]);
        let mut cursor = id;
        loop {
            if stop(self, cursor)? || chain.len() > max {
                return Ok((chain, false));
            }
            match self.first_parent(cursor)? {
                None => return Ok((chain, true)),
                Some(p) => {
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
            match self.first_parent(last)? {
                None => sides[s].done = true,
                Some(p) => {
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
            // Unrelated histories: through the empty state before both roots.
            None if a.done && b.done => {
                Path { back: a.chain, forward: b.chain.into_iter().rev().collect() }
            }
            None => return Ok(None),
        };
        Ok(Some(path).filter(|p| p.cost() <= max))
    }

    /// The verified state at `target`, taken out of the cache (put it back with
    /// `self.states.put`). Starts from the cheapest of: a cached state (forward or backward
    /// along first parents), the nearest checkpoint on the target's first-parent chain, or the
    /// empty state before the root.
    pub(super) fn take_state_at(&mut self, target: CommitId) -> Result<GraphState, RepoError> {
        if let Some(state) = self.states.take(target) {
            return Ok(state);
        }
        let cached: HashSet<CommitId> = self.states.ids().into_iter().collect();
        let (chain, at_root) = self.chain(target, usize::MAX, |repo, c| {
            Ok(cached.contains(&c) || repo.has_checkpoint(c)?)
        })?;
        // `chain` ends with the origin commit unless it ended at a root.
        let mut best = match (at_root, chain.split_last()) {
            (true, _) | (_, None) => Origin::Empty(chain.iter().rev().copied().collect()),
            (false, Some((&origin, rest))) => {
                let forward = rest.iter().rev().copied().collect();
                if cached.contains(&origin) {
                    Origin::Cached(origin, Path { back: Vec::new(), forward })
                } else {
                    Origin::Checkpoint(origin, forward)
                }
            }
        };
        let cost = |o: &Origin| match o {
            Origin::Cached(_, p) => p.cost(),
            Origin::Checkpoint(_, f) => f.len() + CHECKPOINT_COST,
            Origin::Empty(f) => f.len(),
        };
        for c in cached {
            let bound = cost(&best).saturating_sub(1);
            if matches!(&best, Origin::Cached(id, _) if *id == c) {
                continue;
            }
            if let Some(path) = self.path(c, target, bound)? {
                best = Origin::Cached(c, path);
            }
        }
        let (mut state, path, start) = match best {
            Origin::Cached(c, path) => match self.states.take(c) {
                Some(s) => (s, path, Some(c)),
                None => return Err(RepoError::CommitNotFound(c)),
            },
            Origin::Checkpoint(c, forward) => {
                (self.load_checkpoint(c)?, Path { back: Vec::new(), forward }, Some(c))
            }
            Origin::Empty(forward) => (GraphState::new(), Path { back: Vec::new(), forward }, None),
        };
        self.walk(&mut state, start, &path, None)?;
        Ok(state)
    }

    /// Moves `state` (the verified state at `start`, or the empty state for `None`) along
    /// `path`, verifying every step, and records the net changes if asked. On error the state
    /// is dropped by the caller (it may be part-way).
    pub(super) fn walk(
        &mut self,
        state: &mut GraphState,
        start: Option<CommitId>,
        path: &Path,
        mut net: Option<&mut NetChanges>,
    ) -> Result<(), RepoError> {
        let mut at = start;
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
                Some(p) => self.load_commit(p)?.commit().state_root(),
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
            apply_verified(state, &commit)?;
            if let Some(n) = net.as_deref_mut() {
                n.record(commit.commit().changes(), true);
            }
            at = Some(c);
        }
        Ok(())
    }

    /// Moves `state` from `from` to `to` and returns the net changes between them.
    pub(super) fn walk_between(
        &mut self,
        state: &mut GraphState,
        from: CommitId,
        to: CommitId,
    ) -> Result<ChangeSet, RepoError> {
        let path = self.path(from, to, usize::MAX)?.unwrap_or_default();
        let mut net = NetChanges::default();
        self.walk(state, Some(from), &path, Some(&mut net))?;
        Ok(net.into_change_set())
    }
}
