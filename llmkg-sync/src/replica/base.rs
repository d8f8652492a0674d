//! Starting a replica from a snapshot instead of the whole history, and deepening it later.
//!
//! # The base
//!
//! A [`BaseSnapshot`] is the state of the causal past of one commit, its **head**, with the head
//! itself (signed), the head's version vector and the ids of the rest of that past. A replica
//! that installs it holds the head as its only commit, and the head's past as a **base** it
//! knows only by ids and by its state. That is enough for every commit that descends from
//! the head: its author's past contains the whole base, so the state it saw is the base's
//! state with held commits applied, and every triple of the base is in the past of every
//! removal to come (the base's additions all count as the head's).
//!
//! The snapshot is verified, not trusted: the head's signature and id, the host's policy,
//! and the state, whose Merkle root must equal the root the head's author signed. What is
//! not signed (the version vector, the ids) is checked for consistency with the head; a lie
//! there can only make the replica refuse later commits, not hold a state no author signed.
//!
//! # Choosing the head
//!
//! [`Replica::snapshot`] picks the latest held commit `h` such that
//!
//! - every other held commit is an ancestor or a descendant of `h` — so each held commit
//!   outside the base can be checked from the base (it descends from the head), and
//! - `h` is in the past of every version vector the host gives: what the other writers were
//!   last known to hold. A writer's next commit takes its heads as parents, so it descends
//!   from `h` too (the base is *causally stable*).
//!
//! The held commits after `h` follow by ordinary sync.
//!
//! # Deepening
//!
//! A commit that does not descend from the head can still arrive: written by a node whose
//! version vector was not given or was out of date (a member that joined since, a departed
//! member's last words, a merge commit planned before the head, a writer with more heads than
//! a commit takes parents). It has a parent inside the base, or none, and this replica cannot
//! check it, so [`Replica::receive`] refuses it with
//! [`ReceiveError::BeforeBase`](super::ReceiveError::BeforeBase) — nothing changes. The host
//! then fetches the base's commits from a peer ([`Replica::base_ids`]) and
//! [`Replica::deepen`]s: the whole history is verified as if received in order, stored in
//! place of the snapshot, and the replica goes on as one that never had a base. The refused commit is offered again by the next round of
//! anti-entropy.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use llmkg_federation_core::kv::{KvBatch, KvError, KvStore, MemoryKv};
use llmkg_federation_core::{
    AcceptAll, ChangeSet, CommitId, CommitRefusal, CommitVerifyError, GraphState, NodeId,
    SignedCommit, Signer, SignerError, SigningInput, StateRoot, Timestamp, Triple,
};
use serde::{Deserialize, Serialize};

use super::{
    COMMIT_END, COMMIT_PREFIX, Histories, History, Meta, OPEN_PAGE, OpenError, Replica, commit_key,
};
use crate::hlc::ClockError;
use crate::vv::VersionVector;

/// Key of the stored base (its head, version vector, ids and the number of triple chunks).
const BASE_KEY: &[u8] = b"sync/base/head";
/// Key prefix of the stored base's triples, in chunks (followed by the chunk number).
const BASE_TRIPLES: &[u8] = b"sync/base/triples/";
/// Bytes of encoded triples per stored chunk.
const CHUNK_BYTES: usize = 8 << 20;
/// Most checks of "descends from the candidate" one snapshot choice may make.
const MAX_CHOICE_WORK: usize = 1 << 24;

/// The state of one commit's causal past, to start a replica from (see the
/// [module documentation](self)). The state travels as a
/// [`snapshot`](llmkg_federation_core::snapshot) of bounded chunks, each checked on arrival
/// against the head's signed state root.
#[derive(Debug, Clone)]
pub struct BaseSnapshot<'a> {
    /// The envelope of the head: the commit whose past this is.
    pub head: Vec<u8>,
    /// Per author, how many of its commits are in the head's past (the head included).
    pub vv: Vec<(NodeId, u64)>,
    /// The head's generation at the replica that made the snapshot (orders sending only).
    pub generation: u64,
    /// The ids of the commits in the head's past, the head excluded.
    pub ids: Vec<CommitId>,
    /// The state of the head's past: the state the head's author signed the root of
    /// (borrowed from the replica when that is its current state).
    pub state: Cow<'a, GraphState>,
}

/// A snapshot was refused. **Nothing changed** in the replica for any variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The replica already holds commits (a snapshot is only a starting point).
    #[error("the replica already holds commits; a snapshot only starts an empty one")]
    NotEmpty,
    /// The head does not decode, or its id or signature does not verify.
    #[error("snapshot head rejected: {0}")]
    Unverifiable(#[from] CommitVerifyError),
    /// The host's commit policy refused the head.
    #[error("snapshot head {id} refused by policy: {reason}")]
    Refused {
        /// The head.
        id: CommitId,
        /// Why.
        reason: Box<CommitRefusal>,
    },
    /// The head's timestamp is too far ahead of the local clock.
    #[error("snapshot head: {0}")]
    Clock(#[from] ClockError),
    /// The version vector or the ids do not fit the head.
    #[error("inconsistent snapshot: {0}")]
    Inconsistent(String),
    /// The state is not the one whose root the head's author signed.
    #[error("snapshot state has root {actual}, its head claims {claimed}")]
    RootMismatch {
        /// What the head claims.
        claimed: StateRoot,
        /// What the triples give.
        actual: StateRoot,
    },
    /// The store failed; nothing was written.
    #[error("replica storage: {0}")]
    Storage(#[from] KvError),
}

/// Deepening a replica failed. **Nothing changed** in the replica for any variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeepenError {
    /// The replica did not start from a snapshot: it already holds its whole history.
    #[error("the replica has no base to deepen")]
    NoBase,
    /// A commit given is not one of the base's, or is given twice.
    #[error("commit {0} is not one of the base's, or is given twice")]
    Unexpected(CommitId),
    /// Some of the base's commits were not given.
    #[error("{missing} of the base's commits were not given")]
    Incomplete {
        /// How many.
        missing: usize,
    },
    /// A commit given does not decode or verify.
    #[error("base commit rejected: {0}")]
    Unverifiable(#[from] CommitVerifyError),
    /// The history does not replay into this replica's commits and state.
    #[error("the base's history does not replay: {0}")]
    Replay(String),
    /// The store failed; nothing was written.
    #[error("replica storage: {0}")]
    Storage(#[from] KvError),
}

/// What a replica keeps of the snapshot it started from.
#[derive(Debug)]
pub(super) struct Base {
    /// The head (held, at index 0).
    head: SignedCommit,
    /// The ids of the head's past, the head excluded.
    ids: HashSet<CommitId>,
    /// Stored chunks of triples.
    chunks: u32,
}

/// The stored form of a base (its triples are stored apart, in chunks).
#[derive(Serialize, Deserialize)]
struct BaseRecord {
    head: Vec<u8>,
    vv: Vec<(NodeId, u64)>,
    generation: u64,
    ids: Vec<CommitId>,
    chunks: u32,
}

/// The signer of a replica rebuilt only to be verified: it never writes.
struct VerifyOnly(NodeId);

impl Signer for VerifyOnly {
    fn node_id(&self) -> NodeId {
        self.0
    }

    fn sign(&self, _: &SigningInput) -> Result<[u8; 64], SignerError> {
        Err(SignerError::Refused("a replica being verified does not write".into()))
    }
}

impl<K: KvStore> Replica<K> {
    /// The base head, if commit index `i` is it.
    pub(super) fn base_head(&self, i: u32) -> Option<&SignedCommit> {
        self.base.as_ref().filter(|_| i == 0).map(|b| &b.head)
    }

    /// True if `id` is in the base this replica started from (and not held).
    pub(super) fn in_base(&self, id: &CommitId) -> bool {
        self.base.as_ref().is_some_and(|b| b.ids.contains(id))
    }

    /// True if this replica started from a snapshot and has not been deepened since.
    pub fn is_shallow(&self) -> bool {
        self.base.is_some()
    }

    /// How many commits the base holds besides its head (0 without a base).
    pub fn base_len(&self) -> usize {
        self.base.as_ref().map_or(0, |b| b.ids.len())
    }

    /// The ids of the base's commits (the head's past, the head excluded), sorted: what to
    /// ask peers for to [`deepen`](Self::deepen). Empty without a base.
    pub fn base_ids(&self) -> Vec<CommitId> {
        let mut ids: Vec<CommitId> =
            self.base.as_ref().map(|b| b.ids.iter().copied().collect()).unwrap_or_default();
        ids.sort();
        ids
    }

    /// The held commits in the causal past of held commit `head` (itself included), parents
    /// first — the history a shallow replica whose base head is `head` lacks — or `None` if
    /// `head` is not held or its past reaches into this replica's own base.
    pub fn past_of(&self, head: &CommitId) -> Option<Vec<CommitId>> {
        let &h = self.index.get(head)?;
        let vv = &self.meta(h).vv;
        if self.base_len() > 0 {
            return None;
        }
        let mut past: Vec<u32> =
            (0..self.metas.len() as u32).filter(|i| self.in_past(*i, vv)).collect();
        past.sort_by_key(|i| (self.meta(*i).generation, *i));
        Some(past.into_iter().map(|i| self.meta(i).id).collect())
    }

    /// A snapshot a new replica can start from (see the [module documentation](self)), or
    /// `None` if no held commit qualifies as its head. `stable`: what the other writers were
    /// last known to hold; the head is in the past of each (none: no such bound). Costs a pass
    /// over the state and, to choose the head, about one check per commit held after it.
    pub fn snapshot(&self, stable: &[VersionVector]) -> Result<Option<BaseSnapshot<'_>>, KvError> {
        let Some(h) = self.choose_head(stable) else { return Ok(None) };
        let head_bytes = match self.base_head(h) {
            Some(head) => head.as_bytes().to_vec(),
            None => self.kv.get(&commit_key(self.meta(h).arrival))?.ok_or_else(|| {
                KvError::Io(std::io::Error::other("a held commit is missing from the store"))
            })?,
        };
        let m = self.meta(h);
        let vv: Vec<(NodeId, u64)> = self
            .authors
            .iter()
            .zip(m.vv.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(node, n)| (*node, *n))
            .collect();
        let mut ids: Vec<CommitId> =
            self.base.as_ref().map(|b| b.ids.iter().copied().collect()).unwrap_or_default();
        ids.extend(
            (0..self.metas.len() as u32)
                .filter(|i| *i != h && self.in_past(*i, &m.vv))
                .map(|i| self.meta(i).id),
        );
        ids.sort();
        // The state of the head's past: the current state without the held commits after it.
        let after = self.outside(&m.vv);
        let state = if after.is_empty() {
            Cow::Borrowed(&self.state)
        } else {
            let delta = self.delta_to_past(&after, &m.vv)?;
            let mut past = self.state.clone();
            past.apply(&delta).map_err(|e| {
                KvError::Io(std::io::Error::other(format!("inconsistent replica state: {e}")))
            })?;
            Cow::Owned(past)
        };
        Ok(Some(BaseSnapshot { head: head_bytes, vv, generation: m.generation, ids, state }))
    }

    /// True if [`snapshot`](Self::snapshot) would find a head for these bounds (the cheap
    /// part of making one).
    pub fn can_snapshot(&self, stable: &[VersionVector]) -> bool {
        self.choose_head(stable).is_some()
    }

    /// The latest held commit every other held commit is comparable with, in the past of
    /// every vector of `stable`.
    fn choose_head(&self, stable: &[VersionVector]) -> Option<u32> {
        let n = self.metas.len() as u32;
        let interior = self.base_len() as u64;
        let mut work = 0usize;
        for i in (0..n).rev() {
            let m = self.meta(i);
            let node = self.authors.get(m.author as usize)?;
            if !stable.iter().all(|vv| m.seq <= vv.get(*node)) {
                continue;
            }
            // Every commit applied before it is in its past (they are applied parents first,
            // so its held past is among them): its held past has exactly `i + 1` commits.
            let past: u64 = m.vv.iter().sum();
            if past.checked_sub(interior) != Some(u64::from(i) + 1) {
                continue;
            }
            work = work.saturating_add((n - i) as usize);
            if work > MAX_CHOICE_WORK {
                return None;
            }
            if (i + 1..n).all(|j| self.in_past(i, &self.meta(j).vv)) {
                return Some(i);
            }
        }
        None
    }

    /// Starts this replica, which must hold no commit, from `snapshot`: verified (see the
    /// [module documentation](self)), stored durably and installed. `wall` is the local wall
    /// clock. Commits descending from the snapshot's head are then received as usual.
    pub fn install_snapshot(
        &mut self,
        wall: Timestamp,
        snapshot: BaseSnapshot<'_>,
    ) -> Result<(), SnapshotError> {
        if !self.metas.is_empty() || !self.waiting.is_empty() {
            return Err(SnapshotError::NotEmpty);
        }
        let BaseSnapshot { head, vv, generation, ids, state } = snapshot;
        let head = SignedCommit::decode(&head, None)?;
        let id = head.id();
        self.policy
            .check(&head)
            .map_err(|reason| SnapshotError::Refused { id, reason: Box::new(reason) })?;
        self.clock.check(wall, head.commit().timestamp(), std::iter::empty())?;
        check_shape(&head, &vv, &ids)?;
        let mut state = state.into_owned();
        let actual = state.state_root();
        if actual != head.commit().state_root() {
            return Err(SnapshotError::RootMismatch {
                claimed: head.commit().state_root(),
                actual,
            });
        }
        let (batch, chunks) = base_batch(&head, &vv, generation, &ids, &state)?;
        self.kv.write(batch)?;
        let history = base_history(&state);
        self.install_base(head, &vv, generation, ids, chunks, state, history);
        Ok(())
    }

    /// Installs a verified base in memory: the head held at index 0, the base's authors with
    /// their counts, every triple of the state as if the head added it.
    #[allow(clippy::too_many_arguments)]
    fn install_base(
        &mut self,
        head: SignedCommit,
        vv: &[(NodeId, u64)],
        generation: u64,
        ids: Vec<CommitId>,
        chunks: u32,
        state: GraphState,
        history: Histories,
    ) {
        let author_node = head.commit().author();
        let mut full = vec![0u64; vv.len()];
        let mut head_author = 0u32;
        for (a, (node, count)) in vv.iter().enumerate() {
            self.authors.push(*node);
            self.author_index.insert(*node, a as u32);
            if *node == author_node {
                head_author = a as u32;
                self.chains.push(vec![0]);
                self.chain_base.push(count.saturating_sub(1));
            } else {
                self.chains.push(Vec::new());
                self.chain_base.push(*count);
            }
            if let Some(slot) = full.get_mut(a) {
                *slot = *count;
            }
        }
        let id = head.id();
        let timestamp = head.commit().timestamp();
        self.metas.push(Meta {
            id,
            author: head_author,
            seq: vv_count(vv, &author_node),
            generation,
            timestamp,
            vv: full.into_boxed_slice(),
            arrival: u64::MAX,
        });
        self.index.insert(id, 0);
        self.heads.insert(id);
        self.clock.observe(timestamp);
        self.history = history;
        self.state = state;
        self.base = Some(Base { head, ids: ids.into_iter().collect(), chunks });
    }

    /// Loads the stored base, if there is one (when the replica opens).
    pub(super) fn load_base(&mut self) -> Result<(), OpenError> {
        let Some(bytes) = self.kv.get(BASE_KEY)? else { return Ok(()) };
        let damaged = |what: String| OpenError::Base(what);
        let record: BaseRecord = postcard::from_bytes(&bytes)
            .map_err(|e| damaged(format!("stored base does not decode: {e}")))?;
        let head = SignedCommit::decode(&record.head, None)
            .map_err(|e| damaged(format!("stored base head: {e}")))?;
        check_shape(&head, &record.vv, &record.ids).map_err(|e| damaged(e.to_string()))?;
        let mut triples = Vec::new();
        for chunk in 0..record.chunks {
            let bytes = self
                .kv
                .get(&chunk_key(chunk))?
                .ok_or_else(|| damaged(format!("stored base chunk {chunk} is missing")))?;
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                let (t, tail) = postcard::take_from_bytes::<Triple>(rest)
                    .map_err(|e| damaged(format!("stored base chunk {chunk}: {e}")))?;
                triples.push(t);
                rest = tail;
            }
        }
        let mut state = GraphState::new();
        state.apply(&ChangeSet::adding(triples)).map_err(|e| damaged(e.to_string()))?;
        let history = base_history(&state);
        let actual = state.state_root();
        if actual != head.commit().state_root() {
            return Err(damaged(format!(
                "stored base state has root {actual}, its head claims {}",
                head.commit().state_root()
            )));
        }
        self.install_base(
            head,
            &record.vv,
            record.generation,
            record.ids,
            record.chunks,
            state,
            history,
        );
        Ok(())
    }

    /// Turns this shallow replica into a full one: `history` holds the envelopes of every
    /// commit of the base (the ids [`base_ids`](Self::base_ids) lists, in any order; commits
    /// the replica holds are ignored). The
    /// whole history — the base's commits, the head, every commit held since — is verified
    /// as if received in order and must give the same commits and state; it then replaces
    /// the snapshot in the store, in one write.
    pub fn deepen(&mut self, history: Vec<Vec<u8>>) -> Result<(), DeepenError> {
        let Some(base) = &self.base else { return Err(DeepenError::NoBase) };
        let mut given: HashMap<CommitId, SignedCommit> = HashMap::with_capacity(history.len());
        for bytes in history {
            let c = SignedCommit::decode(&bytes, None)?;
            let id = c.id();
            if self.index.contains_key(&id) {
                continue;
            }
            if !base.ids.contains(&id) || given.insert(id, c).is_some() {
                return Err(DeepenError::Unexpected(id));
            }
        }
        if given.len() < base.ids.len() {
            return Err(DeepenError::Incomplete { missing: base.ids.len() - given.len() });
        }
        let order = parents_first(&given).ok_or_else(|| {
            DeepenError::Replay("the base's commits do not form a closed history".into())
        })?;
        // The new layout: the base's commits, the head, then what is stored now, in order.
        let mut layout: Vec<Vec<u8>> = Vec::with_capacity(order.len() + self.metas.len());
        for id in &order {
            if let Some(c) = given.remove(id) {
                layout.push(c.as_bytes().to_vec());
            }
        }
        layout.push(base.head.as_bytes().to_vec());
        let mut old_keys = Vec::new();
        let mut from = COMMIT_PREFIX.to_vec();
        loop {
            let page = self.kv.scan(
                std::ops::Bound::Included(&from),
                std::ops::Bound::Excluded(COMMIT_END),
                OPEN_PAGE,
            )?;
            let Some((last, _)) = page.last() else { break };
            from = last.clone();
            from.push(0);
            let full = page.len() == OPEN_PAGE;
            for (key, bytes) in page {
                old_keys.push(key);
                layout.push(bytes);
            }
            if !full {
                break;
            }
        }
        let mut batch = KvBatch::new();
        let rebuilt = MemoryKv::new();
        for (arrival, bytes) in layout.iter().enumerate() {
            batch = batch.put(commit_key(arrival as u64), bytes.clone());
        }
        rebuilt.write(batch.clone())?;
        let verified = Replica::open_with_policy(
            rebuilt,
            VerifyOnly(self.signer.node_id()),
            self.org.clone(),
            self.config.clone(),
            AcceptAll,
        )
        .map_err(|e| DeepenError::Replay(e.to_string()))?;
        let mut verified = verified;
        let same = verified.len() == self.metas.len() + base.ids.len()
            && self.metas.iter().all(|m| verified.contains(&m.id))
            && verified.state_root() == self.state.state_root();
        if !same {
            return Err(DeepenError::Replay(
                "the history gives other commits or another state than the replica holds".into(),
            ));
        }
        // One write: the snapshot and the old layout go, the history comes.
        let mut write = KvBatch::new().delete(BASE_KEY.to_vec());
        for chunk in 0..base.chunks {
            write = write.delete(chunk_key(chunk));
        }
        for key in old_keys {
            write = write.delete(key);
        }
        write.extend(batch);
        self.kv.write(write)?;
        let Replica {
            metas,
            index,
            authors,
            author_index,
            chains,
            chain_base,
            heads,
            history,
            state,
            next_arrival,
            recent,
            clock,
            ..
        } = verified;
        self.metas = metas;
        self.index = index;
        self.authors = authors;
        self.author_index = author_index;
        self.chains = chains;
        self.chain_base = chain_base;
        self.heads = heads;
        self.history = history;
        self.state = state;
        self.next_arrival = next_arrival;
        self.recent = recent;
        self.clock.observe(clock.last());
        self.base = None;
        Ok(())
    }
}

/// Checks a snapshot's version vector and ids against its head.
fn check_shape(
    head: &SignedCommit,
    vv: &[(NodeId, u64)],
    ids: &[CommitId],
) -> Result<(), SnapshotError> {
    let bad = |what: &str| Err(SnapshotError::Inconsistent(what.to_owned()));
    let mut seen = HashSet::with_capacity(vv.len());
    let mut total: u64 = 0;
    for (node, count) in vv {
        if *count == 0 || !seen.insert(*node) {
            return bad("the version vector lists an author twice or with no commit");
        }
        total = total.saturating_add(*count);
    }
    if vv_count(vv, &head.commit().author()) == 0 {
        return bad("the head's author is not in the version vector");
    }
    if total != ids.len() as u64 + 1 {
        return bad("the version vector does not count the ids and the head");
    }
    let set: HashSet<&CommitId> = ids.iter().collect();
    if set.len() != ids.len() || set.contains(&head.id()) {
        return bad("the ids repeat, or list the head");
    }
    if !head.commit().parents().iter().all(|p| set.contains(p)) {
        return bad("a parent of the head is not among the ids");
    }
    Ok(())
}

/// Every triple of a base's state, as added by the head (index 0).
fn base_history(state: &GraphState) -> Histories {
    state.merkle().entries().into_iter().map(|(id, _)| (id, History::Added(0))).collect()
}

fn vv_count(vv: &[(NodeId, u64)], node: &NodeId) -> u64 {
    vv.iter().find(|(n, _)| n == node).map_or(0, |(_, c)| *c)
}

fn chunk_key(chunk: u32) -> Vec<u8> {
    [BASE_TRIPLES, &chunk.to_be_bytes()].concat()
}

/// The store writes of a base: its record and its triples in chunks of about [`CHUNK_BYTES`].
fn base_batch(
    head: &SignedCommit,
    vv: &[(NodeId, u64)],
    generation: u64,
    ids: &[CommitId],
    state: &GraphState,
) -> Result<(KvBatch, u32), KvError> {
    let encode = |e: postcard::Error| KvError::Io(std::io::Error::other(e.to_string()));
    let mut batch = KvBatch::new();
    let mut chunks = 0u32;
    let mut buf: Vec<u8> = Vec::new();
    for t in state.iter() {
        buf = postcard::to_extend(&t.to_triple(), buf).map_err(encode)?;
        if buf.len() >= CHUNK_BYTES {
            batch = batch.put(chunk_key(chunks), std::mem::take(&mut buf));
            chunks += 1;
        }
    }
    if !buf.is_empty() {
        batch = batch.put(chunk_key(chunks), buf);
        chunks += 1;
    }
    let record = BaseRecord {
        head: head.as_bytes().to_vec(),
        vv: vv.to_vec(),
        generation,
        ids: ids.to_vec(),
        chunks,
    };
    let record = postcard::to_allocvec(&record).map_err(encode)?;
    Ok((batch.put(BASE_KEY.to_vec(), record), chunks))
}

/// The ids of `commits` with parents before children, or `None` if a parent is outside the
/// set (the set is not a closed history) or they form a cycle.
fn parents_first(commits: &HashMap<CommitId, SignedCommit>) -> Option<Vec<CommitId>> {
    let mut waiting: HashMap<CommitId, usize> = HashMap::with_capacity(commits.len());
    let mut children: HashMap<CommitId, Vec<CommitId>> = HashMap::new();
    let mut ready: Vec<CommitId> = Vec::new();
    for (id, c) in commits {
        let parents = c.commit().parents();
        for p in parents {
            if !commits.contains_key(p) {
                return None;
            }
            children.entry(*p).or_default().push(*id);
        }
        if parents.is_empty() {
            ready.push(*id);
        } else {
            waiting.insert(*id, parents.len());
        }
    }
    ready.sort();
    let mut order = Vec::with_capacity(commits.len());
    while let Some(id) = ready.pop() {
        order.push(id);
        for child in children.remove(&id).unwrap_or_default() {
            if let Some(n) = waiting.get_mut(&child) {
                *n -= 1;
                if *n == 0 {
                    waiting.remove(&child);
                    ready.push(child);
                }
            }
        }
    }
    (order.len() == commits.len()).then_some(order)
}
