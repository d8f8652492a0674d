//! The indexed, in-memory state of a graph at one commit.
//!
//! A [`GraphState`] interns every term once in a dictionary (`u32` ids) and keeps each triple
//! in three ordered indexes — SPO, POS and OSP — so that every pattern with any combination of
//! bound positions is answered by one range scan over an index whose key starts with the bound
//! terms. Alongside, a [`MerkleTree`] over the triple ids yields the [`StateRoot`].
//!
//! Terms are not removed from the dictionary when their last triple goes; a state rebuilt from
//! scratch (see [`Repository::materialize`](crate::Repository::materialize)) has none left over.

use std::hash::BuildHasher;

use indexmap::IndexMap;
use indexmap::map::raw_entry_v1::{RawEntryApiV1, RawEntryMut};
use thiserror::Error;

use crate::encoding::TripleId;
use crate::merkle::{MerkleTree, RehashQueue, StateRoot};
use crate::term::{ChangeSet, Term, Triple};

use crate::key_index::{Key, KeyIndex};

/// The dictionary's hasher: fast, and seeded per process so that peers cannot choose
/// colliding terms in advance.
type Hasher = foldhash::quality::RandomState;

/// The term dictionary: each distinct term once, its key its position.
#[derive(Clone, Debug, Default)]
struct Dictionary(IndexMap<Term, (), Hasher>);

impl Dictionary {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn get_index_of(&self, term: &Term) -> Option<usize> {
        self.0.get_index_of(term)
    }

    fn get_index(&self, i: usize) -> Option<&Term> {
        self.0.get_index(i).map(|(t, ())| t)
    }

    /// Adds `term`; false if it was there.
    fn insert(&mut self, term: Term) -> bool {
        self.0.insert(term, ()).is_none()
    }

    fn insert_full(&mut self, term: Term) -> usize {
        self.0.insert_full(term, ()).0
    }

    /// The key of `term`, added (cloned) if it is new: one hash and one probe of the table
    /// either way, where a lookup and then an insert take two of each for a new term.
    fn intern(&mut self, term: &Term) -> Result<u32, ApplyError> {
        if self.0.len() >= u32::MAX as usize {
            return self.get_index_of(term).map(|i| i as u32).ok_or(ApplyError::DictionaryFull);
        }
        Ok(self.intern_within(term))
    }

    /// [`Dictionary::intern`] for a caller that checked there is room for the term (fewer
    /// than `u32::MAX` terms before it): the key.
    fn intern_within(&mut self, term: &Term) -> u32 {
        let hash = self.0.hasher().hash_one(term);
        match self.0.raw_entry_mut_v1().from_key_hashed_nocheck(hash, term) {
            RawEntryMut::Occupied(e) => e.index() as u32,
            RawEntryMut::Vacant(e) => {
                let key = e.index() as u32;
                e.insert_hashed_nocheck(hash, term.clone(), ());
                key
            }
        }
    }

    fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional);
    }

    fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }

    fn iter(&self) -> impl ExactSizeIterator<Item = &Term> {
        self.0.keys()
    }
}

/// The ids of a change set's added triples and of its removed ones, each in the change set's
/// order (see [`GraphState::apply_with_ids`]).
pub type ChangeIds = (Vec<TripleId>, Vec<TripleId>);

/// A change set does not apply to a state. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The change set adds a triple the state already holds.
    #[error("adds a triple already present: {0}")]
    AlreadyPresent(Box<Triple>),
    /// The change set removes a triple the state does not hold.
    #[error("removes a triple not present: {0}")]
    NotPresent(Box<Triple>),
    /// The dictionary would exceed 2³² terms.
    #[error("the term dictionary is full (2^32 terms)")]
    DictionaryFull,
}

/// A borrowed view of a triple stored in a [`GraphState`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TripleRef<'a> {
    /// The subject.
    pub subject: &'a Term,
    /// The predicate.
    pub predicate: &'a Term,
    /// The object.
    pub object: &'a Term,
}

impl TripleRef<'_> {
    /// An owned copy.
    pub fn to_triple(&self) -> Triple {
        Triple::from_valid_parts(self.subject.clone(), self.predicate.clone(), self.object.clone())
    }
}

/// A triple pattern: each position either bound to a term or free.
///
/// ```
/// use llmkg_federation_core::{Pattern, Term};
/// let alice = Term::iri("https://example.org/alice")?;
/// let everything_about_alice = Pattern::any().with_subject(alice);
/// # Ok::<(), llmkg_federation_core::TermError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pattern {
    /// The subject to match, or any.
    pub subject: Option<Term>,
    /// The predicate to match, or any.
    pub predicate: Option<Term>,
    /// The object to match, or any.
    pub object: Option<Term>,
}

impl Pattern {
    /// The pattern matching every triple.
    pub fn any() -> Self {
        Self::default()
    }

    /// Binds the subject.
    pub fn with_subject(mut self, term: Term) -> Self {
        self.subject = Some(term);
        self
    }

    /// Binds the predicate.
    pub fn with_predicate(mut self, term: Term) -> Self {
        self.predicate = Some(term);
        self
    }

    /// Binds the object.
    pub fn with_object(mut self, term: Term) -> Self {
        self.object = Some(term);
        self
    }
}

/// Which index a query scans, and how its keys map back to (s, p, o).
#[derive(Clone, Copy, Debug)]
enum Order {
    Spo,
    Pos,
    Osp,
}

impl Order {
    fn to_spo(self, k: Key) -> Key {
        match self {
            Order::Spo => k,
            Order::Pos => [k[2], k[0], k[1]],
            Order::Osp => [k[1], k[2], k[0]],
        }
    }
}

/// The triples matching a [`Pattern`], in index order.
pub struct Matches<'a> {
    dict: &'a Dictionary,
    range: Option<crate::key_index::Range<'a>>,
    order: Order,
}

impl<'a> Iterator for Matches<'a> {
    type Item = TripleRef<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        let key = self.order.to_spo(self.range.as_mut()?.next()?);
        resolve(self.dict, key)
    }
}

/// The terms of the triple with dictionary key `k` (SPO order).
fn resolve(dict: &Dictionary, k: Key) -> Option<TripleRef<'_>> {
    Some(TripleRef {
        subject: dict.get_index(k[0] as usize)?,
        predicate: dict.get_index(k[1] as usize)?,
        object: dict.get_index(k[2] as usize)?,
    })
}

/// Removes `removed` (present) from the three indexes and inserts `added` (absent), each in
/// its index's key order.
fn update_indexes(
    spo: &mut KeyIndex,
    pos: &mut KeyIndex,
    osp: &mut KeyIndex,
    removed: Vec<Key>,
    added: Vec<Key>,
) {
    let rotate = |keys: &[Key], f: fn(&Key) -> Key| {
        let mut out: Vec<Key> = keys.iter().map(f).collect();
        out.sort_unstable();
        out
    };
    let by_p = |k: &Key| [k[1], k[2], k[0]];
    let by_o = |k: &Key| [k[2], k[0], k[1]];
    for (keys, insert) in [(removed, false), (added, true)] {
        let sorted = rotate(&keys, |k| *k);
        for (index, keys) in [
            (&mut *spo, sorted),
            (&mut *pos, rotate(&keys, by_p)),
            (&mut *osp, rotate(&keys, by_o)),
        ] {
            if insert {
                index.insert_absent(keys);
            } else {
                index.remove_present(keys);
            }
        }
    }
}

/// On the Merkle thread, once its tree is updated: hands the stale subtrees to the thread
/// waiting on `handoff` (which joins when its own work is done) and rehashes them with
/// `threads - 2` more. The caller finishes with the top levels.
fn share_rehash<'m>(
    merkle: &'m mut MerkleTree<Key>,
    handoff: &std::sync::mpsc::SyncSender<std::sync::Arc<RehashQueue<'m, Key>>>,
    threads: usize,
) {
    let queue = std::sync::Arc::new(merkle.rehash_queue());
    // If the other thread is gone, this one works without it.
    let _ = handoff.send(std::sync::Arc::clone(&queue));
    queue.work_on(threads.saturating_sub(1));
}

/// How many additions the interning thread passes to the Merkle thread at a time
/// ([`GraphState::add_on_two_threads`]): small enough that the Merkle thread starts early,
/// large enough that each descent of its tree shares the upper levels.
const PIPELINE_SLICE: usize = 128;

/// The Merkle side of a batch: removals, then additions, each an id with its key.
type MerkleChanges = (Vec<(TripleId, Key)>, Vec<(TripleId, Key)>);

/// The indexed state of a graph: term dictionary, SPO/POS/OSP indexes and Merkle tree.
#[derive(Clone, Debug, Default)]
pub struct GraphState {
    dict: Dictionary,
    spo: KeyIndex,
    pos: KeyIndex,
    osp: KeyIndex,
    merkle: MerkleTree<Key>,
}

impl GraphState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state root of the state that holds exactly `triples` (a triple given twice counts
    /// once), computed from the triples' ids alone: no dictionary or index is built, so this
    /// is the cheap way to check a set of triples against a root someone names.
    ///
    /// ```
    /// use llmkg_federation_core::{GraphState, Term, Triple};
    ///
    /// let t = Triple::new(
    ///     Term::iri("https://example.org/a")?,
    ///     Term::iri("https://example.org/p")?,
    ///     Term::string("x")?,
    /// )?;
    /// let mut state = GraphState::new();
    /// state.insert(&t)?;
    /// assert_eq!(GraphState::root_of([&t, &t]), state.state_root());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn root_of<'a>(triples: impl IntoIterator<Item = &'a Triple>) -> StateRoot {
        MerkleTree::from_entries(triples.into_iter().map(|t| (t.id(), ()))).root()
    }

    /// Number of triples.
    pub fn len(&self) -> usize {
        self.spo.len()
    }

    /// True if the state holds no triple.
    pub fn is_empty(&self) -> bool {
        self.spo.is_empty()
    }

    /// Number of distinct terms in the dictionary.
    pub fn term_count(&self) -> usize {
        self.dict.len()
    }

    fn key_of(&self, t: &Triple) -> Option<Key> {
        Some([
            self.dict.get_index_of(t.subject())? as u32,
            self.dict.get_index_of(t.predicate())? as u32,
            self.dict.get_index_of(t.object())? as u32,
        ])
    }

    fn intern(&mut self, term: &Term) -> Result<u32, ApplyError> {
        self.dict.intern(term)
    }

    /// True if the state holds `triple`.
    pub fn contains(&self, triple: &Triple) -> bool {
        self.key_of(triple).is_some_and(|k| self.spo.contains(&k))
    }

    /// Inserts a triple known by its key; returns false if it was present.
    fn insert_key(&mut self, k: Key, id: TripleId) -> bool {
        if !self.spo.insert(k) {
            return false;
        }
        self.pos.insert([k[1], k[2], k[0]]);
        self.osp.insert([k[2], k[0], k[1]]);
        self.merkle.insert(id, k);
        true
    }

    fn remove_key(&mut self, k: Key, id: &TripleId) {
        self.spo.remove(&k);
        self.pos.remove(&[k[1], k[2], k[0]]);
        self.osp.remove(&[k[2], k[0], k[1]]);
        self.merkle.remove(id);
    }

    /// Adds `triple`; returns false if it was already present.
    pub fn insert(&mut self, triple: &Triple) -> Result<bool, ApplyError> {
        let k = [
            self.intern(triple.subject())?,
            self.intern(triple.predicate())?,
            self.intern(triple.object())?,
        ];
        Ok(self.insert_key(k, triple.id()))
    }

    /// Removes `triple`; returns false if it was not present.
    pub fn remove(&mut self, triple: &Triple) -> bool {
        match self.key_of(triple) {
            Some(k) if self.spo.contains(&k) => {
                self.remove_key(k, &triple.id());
                true
            }
            _ => false,
        }
    }

    /// Loads `triples` (distinct, as the sides of a [`ChangeSet`] are) into a state that holds
    /// no triple, in bulk: keys are sorted once and the indexes and the Merkle tree are built
    /// from sorted runs instead of by one insert per triple. The result is the same state as
    /// inserting them one by one (same triples, same root). On error (dictionary full) the
    /// state still holds no triple.
    fn load_into_empty(&mut self, triples: &[Triple]) -> Result<(), ApplyError> {
        self.load_into_empty_with_ids(triples, triples.iter().map(Triple::id))
    }

    /// [`load_into_empty`](Self::load_into_empty) with the triples' ids, in the same order.
    fn load_into_empty_with_ids(
        &mut self,
        triples: &[Triple],
        ids: impl Iterator<Item = TripleId>,
    ) -> Result<(), ApplyError> {
        debug_assert!(self.spo.is_empty() && self.merkle.is_empty());
        let mut keys: Vec<Key> = Vec::with_capacity(triples.len());
        for t in triples {
            keys.push([
                self.intern(t.subject())?,
                self.intern(t.predicate())?,
                self.intern(t.object())?,
            ]);
        }
        // The dictionary grew by doubling; a bulk load is the large allocation of a state.
        self.dict.shrink_to_fit();
        self.merkle = MerkleTree::from_entries(ids.zip(keys.iter().copied()));
        let sorted = KeyIndex::from_unsorted;
        self.pos = sorted(keys.iter().map(|k| [k[1], k[2], k[0]]).collect());
        self.osp = sorted(keys.iter().map(|k| [k[2], k[0], k[1]]).collect());
        self.spo = sorted(keys);
        Ok(())
    }

    /// Applies `changes` exactly: every removed triple must be present and every added triple
    /// absent. On error the set of triples (and so the root) is unchanged; the dictionary may
    /// have gained terms, which is not observable through queries.
    pub fn apply(&mut self, changes: &ChangeSet) -> Result<(), ApplyError> {
        self.apply_collecting(changes, None)
    }

    /// [`apply`](Self::apply), also returning the ids of the added and of the removed triples,
    /// in the change set's order: applying computes them, so a caller that needs them (to
    /// index the triples' histories, say) need not hash every triple again.
    pub fn apply_with_ids(&mut self, changes: &ChangeSet) -> Result<ChangeIds, ApplyError> {
        let mut ids = (Vec::new(), Vec::new());
        self.apply_collecting(changes, Some(&mut ids))?;
        Ok(ids)
    }

    fn apply_collecting(
        &mut self,
        changes: &ChangeSet,
        ids: Option<&mut ChangeIds>,
    ) -> Result<(), ApplyError> {
        if self.is_empty() && changes.removed().is_empty() {
            // Every addition is absent and the additions are distinct: load them in bulk.
            let Some(ids) = ids else { return self.load_into_empty(changes.added()) };
            ids.0 = changes.added().iter().map(Triple::id).collect();
            return self.load_into_empty_with_ids(changes.added(), ids.0.iter().copied());
        }
        let mut removals = Vec::with_capacity(changes.removed().len());
        for t in changes.removed() {
            match self.key_of(t) {
                Some(k) if self.spo.contains(&k) => removals.push((t.id(), k)),
                _ => return Err(ApplyError::NotPresent(Box::new(t.clone()))),
            }
        }
        let mut additions = Vec::with_capacity(changes.added().len());
        for t in changes.added() {
            let k =
                [self.intern(t.subject())?, self.intern(t.predicate())?, self.intern(t.object())?];
            if self.spo.contains(&k) {
                return Err(ApplyError::AlreadyPresent(Box::new(t.clone())));
            }
            additions.push((t.id(), k));
        }
        if let Some(ids) = ids {
            ids.0 = additions.iter().map(|e| e.0).collect();
            ids.1 = removals.iter().map(|e| e.0).collect();
        }
        self.apply_keys(removals, additions);
        Ok(())
    }

    /// Removes `removals` (present) and then inserts `additions` (absent, distinct), each a
    /// triple id with its key: each index in its key order without searching for the keys
    /// (their presence is known), the Merkle tree in one batch each (see
    /// [`MerkleTree::insert_many`]).
    ///
    /// A large batch on a large state (see [`MerkleTree::root`]) updates the Merkle tree on a
    /// second thread while this one updates the indexes (the two share nothing); the second
    /// thread then rehashes the stale subtrees, and this one joins it when its indexes are done
    /// ([`share_rehash`]). The result is the same as on one thread.
    fn apply_keys(&mut self, removals: Vec<(TripleId, Key)>, additions: Vec<(TripleId, Key)>) {
        let removed_keys: Vec<Key> = removals.iter().map(|e| e.1).collect();
        let added_keys: Vec<Key> = additions.iter().map(|e| e.1).collect();
        let update_merkle = |merkle: &mut MerkleTree<Key>, (removals, additions): MerkleChanges| {
            merkle.remove_many(removals.into_iter().map(|e| e.0).collect());
            merkle.insert_many(additions);
        };
        let threads = self.threads_for(removed_keys.len() + added_keys.len());
        let mut job = Some((removals, additions));
        if threads >= 2 {
            let Self { spo, pos, osp, merkle, .. } = &mut *self;
            std::thread::scope(|scope| {
                let job = &mut job;
                let (handoff, queue) = std::sync::mpsc::sync_channel(1);
                let merkle_thread = std::thread::Builder::new().spawn_scoped(scope, move || {
                    if let Some(changes) = job.take() {
                        update_merkle(merkle, changes);
                        share_rehash(merkle, &handoff, threads);
                    }
                });
                update_indexes(spo, pos, osp, removed_keys, added_keys);
                if merkle_thread.is_ok()
                    && let Ok(queue) = queue.recv()
                {
                    queue.work();
                }
            });
            // If the system refused the thread, the job is still here: done below.
        } else {
            update_indexes(&mut self.spo, &mut self.pos, &mut self.osp, removed_keys, added_keys);
        }
        if let Some(changes) = job.take() {
            update_merkle(&mut self.merkle, changes);
        }
        if threads >= 2 {
            // The subtrees are rehashed: only the top levels are left.
            self.merkle.root_on(1);
        }
    }

    /// How many threads a batch of `changes` on this state pays for: 1, or all there are
    /// when [`MerkleTree::root`] would spread its rehash.
    fn threads_for(&self, changes: usize) -> usize {
        if self.merkle.threads_pay_for(changes) { crate::merkle::available_threads() } else { 1 }
    }

    /// The additions of [`apply_effective`](Self::apply_effective) on a large state, with
    /// `removals` (present, each with its id) taken out first: the effective additions' flags,
    /// and the ids of those additions in order.
    ///
    /// The Merkle tree is updated on a second thread *while* this one interns the terms: the
    /// second thread hashes the triples' ids, then inserts each slice of
    /// [`PIPELINE_SLICE`] additions as soon as this thread has their keys. Then this thread
    /// updates the indexes while the other rehashes, and joins the rehash when done (as in
    /// [`apply_keys`](Self::apply_keys)). The caller checked that the dictionary has room for
    /// every term of `add`, so nothing can fail halfway.
    fn add_on_two_threads(
        &mut self,
        add: &[Triple],
        removals: Vec<(TripleId, Key)>,
        threads: usize,
    ) -> (Vec<bool>, Vec<TripleId>) {
        let removed_keys: Vec<Key> = removals.iter().map(|e| e.1).collect();
        let mut job = Some(removals.into_iter().map(|e| e.0).collect::<Vec<_>>());
        let mut effective = Vec::with_capacity(add.len());
        let mut added_keys = Vec::with_capacity(add.len());
        // The effective additions (position, key) if the Merkle thread could not start.
        let mut unsent: Vec<(u32, Key)> = Vec::new();
        let Self { dict, spo, pos, osp, merkle } = &mut *self;
        let ids = std::thread::scope(|scope| {
            let job = &mut job;
            let (slices, slices_in) = std::sync::mpsc::channel::<Vec<(u32, Key)>>();
            let (handoff, queue) = std::sync::mpsc::sync_channel(1);
            let merkle_thread = std::thread::Builder::new().spawn_scoped(scope, move || {
                let removed = job.take()?;
                let ids: Vec<TripleId> = add.iter().map(Triple::id).collect();
                merkle.remove_many(removed);
                // Ends when the interning thread drops its sender.
                for slice in slices_in {
                    let entries =
                        slice.iter().filter_map(|&(i, k)| Some((*ids.get(i as usize)?, k)));
                    merkle.insert_many(entries.collect());
                }
                share_rehash(merkle, &handoff, threads);
                Some(ids)
            });
            for (n, chunk) in add.chunks(PIPELINE_SLICE).enumerate() {
                let mut slice = Vec::with_capacity(chunk.len());
                for (i, t) in chunk.iter().enumerate() {
                    let k = [t.subject(), t.predicate(), t.object()]
                        .map(|term| dict.intern_within(term));
                    let new = !spo.contains(&k);
                    effective.push(new);
                    if new {
                        slice.push(((n * PIPELINE_SLICE + i) as u32, k));
                        added_keys.push(k);
                    }
                }
                if merkle_thread.is_ok() {
                    let _ = slices.send(slice);
                } else {
                    unsent.extend(slice);
                }
            }
            drop(slices);
            update_indexes(spo, pos, osp, removed_keys, added_keys);
            let Ok(merkle_thread) = merkle_thread else { return None };
            if let Ok(queue) = queue.recv() {
                queue.work();
            }
            // A panic on the Merkle thread leaves the state half-updated: pass it on.
            merkle_thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        let ids = match ids {
            Some(ids) => {
                // The subtrees are rehashed: only the top levels are left.
                self.merkle.root_on(1);
                ids
            }
            None => {
                // The system refused the thread: the Merkle tree is updated here.
                let ids: Vec<TripleId> = add.iter().map(Triple::id).collect();
                self.merkle.remove_many(job.take().unwrap_or_default());
                let entries = unsent.iter().filter_map(|&(i, k)| Some((*ids.get(i as usize)?, k)));
                self.merkle.insert_many(entries.collect());
                ids
            }
        };
        let added_ids =
            ids.into_iter().zip(&effective).filter(|(_, new)| **new).map(|(id, _)| id).collect();
        (effective, added_ids)
    }

    /// Applies the part of `changes` that changes this state — additions not yet present and
    /// removals that are present — and returns that part.
    pub fn apply_effective(&mut self, changes: ChangeSet) -> Result<ChangeSet, ApplyError> {
        self.apply_effective_collecting(changes, None)
    }

    /// [`apply_effective`](Self::apply_effective), also returning the ids of the effective
    /// additions and removals, in the order of the returned change set's sides (see
    /// [`apply_with_ids`](Self::apply_with_ids)).
    pub fn apply_effective_with_ids(
        &mut self,
        changes: ChangeSet,
    ) -> Result<(ChangeSet, ChangeIds), ApplyError> {
        let mut ids = (Vec::new(), Vec::new());
        let effective = self.apply_effective_collecting(changes, Some(&mut ids))?;
        Ok((effective, ids))
    }

    fn apply_effective_collecting(
        &mut self,
        changes: ChangeSet,
        ids: Option<&mut ChangeIds>,
    ) -> Result<ChangeSet, ApplyError> {
        if self.is_empty() {
            // Nothing can be removed and every (distinct) addition is effective.
            let (add, _) = changes.into_parts();
            match ids {
                None => self.load_into_empty(&add)?,
                Some(ids) => {
                    ids.0 = add.iter().map(Triple::id).collect();
                    self.load_into_empty_with_ids(&add, ids.0.iter().copied())?;
                }
            }
            return Ok(ChangeSet::from_sorted(add, Vec::new()));
        }
        let (mut add, mut remove) = changes.into_parts();
        let mut removals = Vec::with_capacity(remove.len());
        remove.retain(|t| match self.key_of(t) {
            Some(k) if self.spo.contains(&k) => {
                removals.push((t.id(), k));
                true
            }
            _ => false,
        });
        let threads = self.threads_for(removals.len() + add.len());
        // The two-thread path interns as it goes: it is taken only when no term can fail to fit.
        let room = (u32::MAX as usize).saturating_sub(self.dict.len()) >= 3 * add.len();
        if threads >= 2 && room {
            let removed_ids: Vec<TripleId> = removals.iter().map(|e| e.0).collect();
            let (effective, added_ids) = self.add_on_two_threads(&add, removals, threads);
            let mut flags = effective.into_iter();
            // `retain` visits each triple once, in order: the flags are taken in step.
            add.retain(|_| flags.next().unwrap_or(false));
            if let Some(ids) = ids {
                *ids = (added_ids, removed_ids);
            }
            return Ok(ChangeSet::from_sorted(add, remove));
        }
        let mut additions = Vec::with_capacity(add.len());
        let mut failure = None;
        add.retain(|t| {
            if failure.is_some() {
                return false;
            }
            let k = [t.subject(), t.predicate(), t.object()].map(|term| self.intern(term));
            match k {
                [Ok(s), Ok(p), Ok(o)] if !self.spo.contains(&[s, p, o]) => {
                    additions.push((t.id(), [s, p, o]));
                    true
                }
                [Ok(_), Ok(_), Ok(_)] => false,
                _ => {
                    failure = Some(ApplyError::DictionaryFull);
                    false
                }
            }
        });
        if let Some(e) = failure {
            // Nothing was applied: only the dictionary may have grown.
            return Err(e);
        }
        if let Some(ids) = ids {
            ids.0 = additions.iter().map(|e| e.0).collect();
            ids.1 = removals.iter().map(|e| e.0).collect();
        }
        self.apply_keys(removals, additions);
        Ok(ChangeSet::from_sorted(add, remove))
    }

    /// The Merkle root of the current set of triples.
    pub fn state_root(&mut self) -> StateRoot {
        self.merkle.root()
    }

    /// The Merkle tree over the triple ids of this state.
    pub fn merkle(&self) -> &MerkleTree<[u32; 3]> {
        &self.merkle
    }

    /// The triple with content id `id`, if the state holds it (one Merkle lookup: the tree
    /// keeps each triple's dictionary key).
    pub fn get_by_id(&self, id: &TripleId) -> Option<TripleRef<'_>> {
        self.resolve(self.merkle.get(id)?)
    }

    /// Builds a state from triples sorted by id and distinct, each with its id (the caller
    /// checked both; `count` is how many, for allocation), moving the terms into the dictionary: the bulk path of snapshot
    /// installation. The same state as inserting them one by one (same triples, same root).
    pub(crate) fn from_sorted_by_id(
        triples: impl IntoIterator<Item = (TripleId, Triple)>,
        count: usize,
    ) -> Result<Self, ApplyError> {
        let mut state = GraphState::new();
        // Typical graphs have fewer distinct terms than triples; this saves most regrowth.
        state.dict.reserve(count);
        let mut entries: Vec<(TripleId, Key)> = Vec::with_capacity(count);
        for (id, t) in triples {
            let (s, p, o) = t.into_parts();
            entries.push((
                id,
                [state.intern_owned(s)?, state.intern_owned(p)?, state.intern_owned(o)?],
            ));
        }
        let sorted = KeyIndex::from_unsorted;
        state.pos = sorted(entries.iter().map(|(_, k)| [k[1], k[2], k[0]]).collect());
        state.osp = sorted(entries.iter().map(|(_, k)| [k[2], k[0], k[1]]).collect());
        state.spo = sorted(entries.iter().map(|(_, k)| *k).collect());
        state.merkle = MerkleTree::from_sorted_entries(entries);
        Ok(state)
    }

    fn intern_owned(&mut self, term: Term) -> Result<u32, ApplyError> {
        if self.dict.len() >= u32::MAX as usize {
            return match self.dict.get_index_of(&term) {
                Some(i) => Ok(i as u32),
                None => Err(ApplyError::DictionaryFull),
            };
        }
        Ok(self.dict.insert_full(term) as u32)
    }

    /// The SPO keys, in order (with [`GraphState::terms`], what a checkpoint stores).
    pub(crate) fn spo_keys(&self) -> impl ExactSizeIterator<Item = [u32; 3]> + '_ {
        self.spo.iter()
    }

    /// Rebuilds a state from its dictionary (distinct terms, in key order) and its SPO keys,
    /// in bulk: no term is looked up more than once. Refuses a repeated term, a repeated key,
    /// a key naming no term, or keys that do not form valid triples. The caller checks the
    /// root.
    pub(crate) fn from_dictionary(terms: Vec<Term>, keys: Vec<Key>) -> Result<Self, &'static str> {
        let mut state = GraphState::new();
        state.dict.reserve(terms.len());
        for t in terms {
            if !state.dict.insert(t) {
                return Err("a term is listed twice");
            }
        }
        let mut entries: Vec<(TripleId, Key)> = Vec::with_capacity(keys.len());
        for k in &keys {
            let Some(t) = state.resolve(*k) else {
                return Err("a key names no term");
            };
            if !matches!(t.predicate, Term::Iri(_)) || matches!(t.subject, Term::Literal(_)) {
                return Err("a key does not form a valid triple");
            }
            entries.push((TripleId::of_parts(t.subject, t.predicate, t.object), *k));
        }
        let sorted = KeyIndex::from_unsorted;
        state.pos = sorted(keys.iter().map(|k| [k[1], k[2], k[0]]).collect());
        state.osp = sorted(keys.iter().map(|k| [k[2], k[0], k[1]]).collect());
        state.spo = sorted(keys);
        if state.spo.len() != entries.len() {
            return Err("a key is listed twice");
        }
        state.merkle = MerkleTree::from_entries(entries);
        Ok(state)
    }

    /// Every term of the dictionary, in key order.
    pub(crate) fn terms(&self) -> impl ExactSizeIterator<Item = &Term> {
        self.dict.iter()
    }

    /// The triple with dictionary key `k`.
    pub(crate) fn resolve(&self, k: Key) -> Option<TripleRef<'_>> {
        resolve(&self.dict, k)
    }

    /// The difference from `self` to `other`: the change set that turns this state into
    /// `other`. Uses the Merkle trees, so it costs O(d · log n) for `d` differences.
    pub fn diff(&self, other: &GraphState) -> ChangeSet {
        let (only_self, only_other) = self.merkle.diff(&other.merkle);
        let mut remove: Vec<Triple> =
            only_self.iter().filter_map(|(_, k)| self.resolve(*k)).map(|t| t.to_triple()).collect();
        let mut add: Vec<Triple> = only_other
            .iter()
            .filter_map(|(_, k)| other.resolve(*k))
            .map(|t| t.to_triple())
            .collect();
        remove.sort_unstable();
        add.sort_unstable();
        ChangeSet::from_sorted(add, remove)
    }

    /// The triples matching `pattern`, answered from the index whose key order starts with the
    /// bound positions (no scan of unrelated triples).
    ///
    /// ```
    /// use llmkg_federation_core::{GraphState, Pattern, Term, Triple};
    /// let (alice, bob) = (Term::iri("urn:ex:alice")?, Term::iri("urn:ex:bob")?);
    /// let knows = Term::iri("http://xmlns.com/foaf/0.1/knows")?;
    /// let mut state = GraphState::new();
    /// state.insert(&Triple::new(alice.clone(), knows.clone(), bob.clone())?)?;
    /// let who: Vec<_> = state.matching(&Pattern::any().with_object(bob)).collect();
    /// assert_eq!(who.len(), 1);
    /// assert_eq!(who[0].subject, &alice);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn matching(&self, pattern: &Pattern) -> Matches<'_> {
        let lookup = |t: &Option<Term>| match t {
            None => Some(None),
            Some(t) => self.dict.get_index_of(t).map(|i| Some(i as u32)),
        };
        let (Some(s), Some(p), Some(o)) =
            (lookup(&pattern.subject), lookup(&pattern.predicate), lookup(&pattern.object))
        else {
            // A bound term the dictionary has never seen matches nothing.
            return Matches { dict: &self.dict, range: None, order: Order::Spo };
        };
        let (order, index, prefix): (Order, &KeyIndex, [Option<u32>; 3]) = match (s, p, o) {
            (Some(_), _, None) | (Some(_), Some(_), Some(_)) | (None, None, None) => {
                (Order::Spo, &self.spo, [s, p, o])
            }
            (None, Some(_), _) => (Order::Pos, &self.pos, [p, o, None]),
            (_, None, Some(_)) => (Order::Osp, &self.osp, [o, s, None]),
        };
        // The bound positions form a prefix of the chosen index's key.
        let mut lo = [0u32; 3];
        let mut hi = [u32::MAX; 3];
        for (i, bound) in prefix.iter().enumerate() {
            match bound {
                Some(v) => {
                    lo[i] = *v;
                    hi[i] = *v;
                }
                None => break,
            }
        }
        Matches { dict: &self.dict, range: Some(index.range(lo, hi)), order }
    }

    /// Every triple, in SPO index order.
    pub fn iter(&self) -> Matches<'_> {
        self.matching(&Pattern::any())
    }

    /// Every triple in the order of [`Triple`]'s `Ord` (subject, predicate, object), borrowed
    /// rather than cloned: equal sets give equal sequences, whatever the history of the state
    /// (dictionary ids depend on insertion order, so index order does not). Costs a sort of
    /// the terms and of one 12-byte key per triple.
    #[cfg(feature = "rdf")]
    pub(crate) fn iter_sorted(&self) -> impl Iterator<Item = TripleRef<'_>> {
        let mut order: Vec<u32> = (0..self.dict.len() as u32).collect();
        order.sort_unstable_by(|a, b| {
            self.dict.get_index(*a as usize).cmp(&self.dict.get_index(*b as usize))
        });
        let mut rank = vec![0u32; order.len()];
        for (r, &i) in order.iter().enumerate() {
            if let Some(slot) = rank.get_mut(i as usize) {
                *slot = r as u32;
            }
        }
        let rank_of = |i: u32| rank.get(i as usize).copied().unwrap_or(u32::MAX);
        let mut keys: Vec<Key> =
            self.spo.iter().map(|k| [rank_of(k[0]), rank_of(k[1]), rank_of(k[2])]).collect();
        keys.sort_unstable();
        let term =
            move |r: u32| order.get(r as usize).and_then(|&i| self.dict.get_index(i as usize));
        keys.into_iter().filter_map(move |k| {
            Some(TripleRef { subject: term(k[0])?, predicate: term(k[1])?, object: term(k[2])? })
        })
    }

    /// Every triple, owned and sorted.
    pub fn triples(&self) -> Vec<Triple> {
        let mut all: Vec<Triple> = self.iter().map(|t| t.to_triple()).collect();
        all.sort_unstable();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u32, p: u32, o: u32) -> Triple {
        let iri = |n: u32| Term::iri(format!("urn:x:{n}")).unwrap();
        let object =
            if o.is_multiple_of(3) { Term::string(format!("v{o}")).unwrap() } else { iri(o) };
        Triple::new(iri(s), iri(p), object).unwrap()
    }

    /// A state rebuilt from its dictionary and keys (what a checkpoint stores) is the same
    /// state, and the ids computed from term references are the triples' ids; malformed
    /// parts are refused.
    #[test]
    fn rebuilding_from_the_dictionary_gives_the_same_state() {
        let mut state = GraphState::new();
        for i in 0..500u32 {
            state.insert(&t(i % 41, i % 7, i.wrapping_mul(13) % 101)).unwrap();
        }
        for i in 0..100u32 {
            state.remove(&t(i % 41, i % 7, i.wrapping_mul(13) % 101));
        }
        let terms: Vec<Term> = state.terms().cloned().collect();
        let keys: Vec<Key> = state.spo_keys().collect();
        let mut rebuilt = GraphState::from_dictionary(terms.clone(), keys.clone()).unwrap();
        assert_eq!(rebuilt.state_root(), state.state_root());
        assert_eq!(rebuilt.triples(), state.triples());
        for x in state.triples() {
            let (s, p, o) = (x.subject(), x.predicate(), x.object());
            assert_eq!(TripleId::of_parts(s, p, o), x.id());
        }
        let mut doubled = terms.clone();
        doubled.push(terms[0].clone());
        assert!(GraphState::from_dictionary(doubled, keys.clone()).is_err());
        let mut repeated = keys.clone();
        repeated.push(keys[0]);
        assert!(GraphState::from_dictionary(terms.clone(), repeated).is_err());
        assert!(GraphState::from_dictionary(terms.clone(), vec![[0, 0, u32::MAX]]).is_err());
        let literal = terms.iter().position(|t| matches!(t, Term::Literal(_)));
        if let Some(l) = literal {
            assert!(GraphState::from_dictionary(terms, vec![[0, l as u32, 0]]).is_err());
        }
    }

    /// The bulk load into an empty state gives the same state as one insert per triple.
    #[test]
    fn bulk_load_equals_incremental_inserts() {
        let triples: Vec<Triple> =
            (0..2_000u32).map(|i| t(i % 97, i % 5, i.wrapping_mul(31) % 113)).collect();
        let changes = ChangeSet::adding(triples.clone());
        let mut one_by_one = GraphState::new();
        for x in &triples {
            one_by_one.insert(x).unwrap();
        }
        let mut bulk = GraphState::new();
        bulk.apply(&changes).unwrap();
        let mut bulk_effective = GraphState::new();
        let effective = bulk_effective.apply_effective(changes.clone()).unwrap();
        assert_eq!(effective, changes);
        for state in [&mut bulk, &mut bulk_effective] {
            assert_eq!(state.state_root(), one_by_one.state_root());
            assert_eq!(state.triples(), one_by_one.triples());
            assert_eq!(state.len(), one_by_one.len());
            for x in triples.iter().take(50) {
                for p in [
                    Pattern::any().with_subject(x.subject().clone()),
                    Pattern::any().with_predicate(x.predicate().clone()),
                    Pattern::any().with_object(x.object().clone()),
                ] {
                    assert_eq!(state.matching(&p).count(), one_by_one.matching(&p).count());
                }
            }
            // Later incremental changes work on a bulk-loaded state.
            let extra = t(1_000, 1, 2);
            assert!(state.insert(&extra).unwrap());
            assert!(state.remove(&triples[0]));
            assert!(!state.contains(&triples[0]));
        }
    }

    /// Large batches on a large state take the two-thread path (the Merkle tree updated on a
    /// second thread as the terms are interned, then the rehash shared): the state is the one
    /// a bulk load of the same triples builds, with the same root, counts and answers, and the
    /// ids returned are the effective triples', batch after batch.
    #[test]
    fn large_batches_on_two_threads_give_the_same_state() {
        use crate::merkle::{PARALLEL_REHASH_MIN_CHANGES, PARALLEL_REHASH_MIN_LEN};
        let n = PARALLEL_REHASH_MIN_LEN as u32 + 2_000;
        let mut live: std::collections::BTreeSet<Triple> =
            (0..n).map(|i| t(i / 4, i % 4, i)).collect();
        let mut state = GraphState::new();
        state.apply(&ChangeSet::adding(live.iter().cloned())).unwrap();
        let batch = PARALLEL_REHASH_MIN_CHANGES as u32 * 4;
        for round in 0..3u32 {
            let base = n + round * batch;
            let adds: Vec<Triple> = (base..base + batch).map(|i| t(i / 4, i % 4, i)).collect();
            // Removals spread over the whole state, and one addition already present.
            let removes: Vec<Triple> = live.iter().step_by(97).take(300).cloned().collect();
            let mut with_present = adds.clone();
            with_present.push(live.iter().nth(5).cloned().unwrap());
            let changes = ChangeSet::new(with_present, removes.clone()).unwrap();
            let (applied, ids) = state.apply_effective_with_ids(changes).unwrap();
            assert_eq!(ids.0, applied.added().iter().map(Triple::id).collect::<Vec<_>>());
            assert_eq!(ids.1, applied.removed().iter().map(Triple::id).collect::<Vec<_>>());
            assert_eq!(applied.added().len(), adds.len());
            assert_eq!(applied.removed().len(), removes.len());
            for r in &removes {
                live.remove(r);
            }
            live.extend(adds);
            let mut expect = GraphState::new();
            expect.apply(&ChangeSet::adding(live.iter().cloned())).unwrap();
            assert_eq!(state.len(), live.len());
            assert_eq!(state.state_root(), expect.state_root());
            assert_eq!(state.merkle().entries().len(), live.len());
            for x in live.iter().step_by(501) {
                assert!(state.contains(x));
                let p = Pattern::any().with_object(x.object().clone());
                assert_eq!(state.matching(&p).count(), 1);
            }
        }
    }

    use proptest::prelude::*;

    /// A triple over a small vocabulary (so that inputs repeat triples and share terms), with
    /// IRIs, blank nodes and literals in every position they may take.
    fn small_triple() -> impl Strategy<Value = Triple> {
        (0u8..6, 0u8..3, 0u8..8).prop_map(|(s, p, o)| {
            let subject = if s % 2 == 0 {
                Term::iri(format!("urn:s:{s}")).unwrap()
            } else {
                Term::blank(format!("b{s}")).unwrap()
            };
            let object = match o % 3 {
                0 => Term::iri(format!("urn:s:{o}")).unwrap(),
                1 => Term::blank(format!("b{o}")).unwrap(),
                _ => Term::string(format!("v{o}")).unwrap(),
            };
            Triple::new(subject, Term::iri(format!("urn:p:{p}")).unwrap(), object).unwrap()
        })
    }

    /// Everything the state is made of, in a comparable form: dictionary in id order, the
    /// three indexes, the Merkle entries and root.
    type Parts = (Vec<Term>, Vec<Key>, Vec<Key>, Vec<Key>, Vec<(TripleId, Key)>, StateRoot);

    fn parts(state: &mut GraphState) -> Parts {
        (
            state.dict.iter().cloned().collect(),
            state.spo.iter().collect(),
            state.pos.iter().collect(),
            state.osp.iter().collect(),
            state.merkle.entries(),
            state.state_root(),
        )
    }

    /// Sorted answers to every single-bound pattern over `terms`, plus the full scan.
    fn answers(state: &GraphState, terms: &[Term]) -> Vec<Vec<Triple>> {
        let mut out = vec![state.triples()];
        for term in terms {
            for p in [
                Pattern::any().with_subject(term.clone()),
                Pattern::any().with_predicate(term.clone()),
                Pattern::any().with_object(term.clone()),
            ] {
                let mut found: Vec<Triple> = state.matching(&p).map(|t| t.to_triple()).collect();
                found.sort_unstable();
                out.push(found);
            }
        }
        out
    }

    proptest! {
        /// The bulk path (`apply` and `apply_effective` on a state without triples) builds
        /// exactly what one insert per triple, in the change set's order, builds — dictionary,
        /// indexes, Merkle tree — also on a state emptied by removals (whose dictionary keeps
        /// the old terms), and answers like a state that received the input in any order,
        /// duplicates included.
        #[test]
        fn bulk_path_equals_per_triple_inserts(
            history in proptest::collection::vec(small_triple(), 0..40),
            input in proptest::collection::vec(small_triple(), 0..80),
        ) {
            // A state with no triple left but a dictionary from its history.
            let mut emptied = GraphState::new();
            for x in &history {
                emptied.insert(x).unwrap();
            }
            for x in &history {
                emptied.remove(x);
            }
            prop_assert!(emptied.is_empty());

            let changes = ChangeSet::adding(input.clone());
            for start in [GraphState::new(), emptied] {
                let mut expected = start.clone();
                for x in changes.added() {
                    expected.insert(x).unwrap();
                }
                let mut exact = start.clone();
                exact.apply(&changes).unwrap();
                let mut effective = start.clone();
                let applied = effective.apply_effective(changes.clone()).unwrap();
                prop_assert_eq!(&applied, &changes);
                let want = parts(&mut expected);
                prop_assert_eq!(&parts(&mut exact), &want);
                prop_assert_eq!(&parts(&mut effective), &want);

                // Raw input order, duplicates and all: same set, same root, same answers.
                let mut raw = GraphState::new();
                for x in &input {
                    raw.insert(x).unwrap();
                }
                let terms: Vec<Term> = raw.dict.iter().cloned().collect();
                prop_assert_eq!(raw.state_root(), want.5);
                prop_assert_eq!(answers(&exact, &terms), answers(&raw, &terms));

                // The bulk-loaded state keeps working incrementally.
                for x in input.iter().take(5) {
                    prop_assert_eq!(exact.remove(x), raw.remove(x));
                }
                prop_assert_eq!(exact.state_root(), raw.state_root());
            }
        }

        /// Removals applied to a state without triples: an error for the exact `apply`
        /// (nothing changes), ignored by `apply_effective` (which then bulk-loads the rest).
        #[test]
        fn removals_on_an_empty_state(
            add in proptest::collection::vec(small_triple(), 0..20),
            remove in proptest::collection::vec(small_triple(), 1..5),
        ) {
            let remove: Vec<Triple> = remove.into_iter().filter(|r| !add.contains(r)).collect();
            prop_assume!(!remove.is_empty());
            let changes = ChangeSet::new(add.clone(), remove).unwrap();
            let mut exact = GraphState::new();
            let err = exact.apply(&changes).unwrap_err();
            prop_assert!(matches!(err, ApplyError::NotPresent(_)), "{:?}", err);
            prop_assert!(exact.is_empty());
            prop_assert_eq!(exact.state_root(), GraphState::new().state_root());

            let mut effective = GraphState::new();
            let applied = effective.apply_effective(changes.clone()).unwrap();
            prop_assert_eq!(&applied, &ChangeSet::adding(add.clone()));
            let mut expected = GraphState::new();
            for x in changes.added() {
                expected.insert(x).unwrap();
            }
            prop_assert_eq!(parts(&mut effective), parts(&mut expected));
        }
    }
}
