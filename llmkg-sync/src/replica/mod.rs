//! The eventual-consistency replica: a set of signed commits and the state it determines.
//!
//! # Semantics
//!
//! The state of a replica is a **pure function of the set of commits it holds**: add-wins
//! observed-remove over the commit graph's causality. Each commit's additions are *dots*
//! (the commit, the triple). A triple is in the state when some commit adding it is not
//! *observed* by a commit removing it — a removal removes only the additions in its causal
//! past, so an addition concurrent with a removal survives:
//!
//! ```text
//!   c1: +t (by a)       c3: +t (by b, who had not seen c1)
//!     |
//!   c2: -t (by a, saw c1)
//!
//!   state{c1}          = {t}
//!   state{c1, c2}      = {}     c2 saw c1's dot and removed it
//!   state{c1, c2, c3}  = {t}    c3's dot is concurrent with c2: unseen, so it survives
//! ```
//!
//! Two replicas that hold the same commits have the same state, and the same state root,
//! whatever order the commits arrived in.
//!
//! # Rules a commit follows
//!
//! A local [`write`](Replica::write) takes the replica's current heads as parents (at most
//! [`MAX_PARENTS`]), so concurrent writers do not breed merge commits: the next write of
//! anyone who has seen both branches joins them. A received commit is checked against the
//! same rules, not only for applying:
//!
//! - id, signature and authorship (the envelope), and the host's [`CommitPolicy`];
//! - its parents are present (otherwise it waits, bounded, until they are) and concurrent
//!   with one another — no parent is an ancestor of another, as heads never are;
//! - its timestamp is a hybrid logical clock stamp: later than every parent's, and not more
//!   than [`ReplicaConfig::max_clock_ahead`] ahead of the receiver's clock;
//! - its author's commits form a chain: the commit descends from its author's previous one.
//!   Two concurrent commits by one author are an **equivocation**: the second one a replica
//!   sees is refused, and the two signed commits are the proof (this is what makes a
//!   per-author version vector an exact summary of a replica);
//! - its changes are effective in the state of its causal past (it adds only absent
//!   triples, removes only present ones), and its state root is the root of that state with
//!   its changes applied: the state its author saw.
//!
//! A commit that breaks a rule is refused with a typed error and changes nothing.
//!
//! # Costs
//!
//! Receiving a commit whose parents are the replica's heads costs O(changes · log n).
//! Checking a commit that is concurrent with commits the replica already holds also walks
//! those commits' changes (to rebuild the state its author saw): O(changes of the
//! concurrent commits). Memory: the state, one entry per triple ever touched listing the
//! commits that touched it, and per commit a version vector of one `u64` per author. The
//! commits themselves are in the [`KvStore`]; opening a replica replays them.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::kv::{KvBatch, KvError, KvStore};
use llmkg_federation_core::security::SealError;
use llmkg_federation_core::{
    AcceptAll, ApplyError, ChangeIds, ChangeSet, Commit, CommitId, CommitPolicy, CommitRefusal,
    CommitShapeError, CommitVerifyError, GraphState, MAX_PARENTS, NodeId, OrgId, SignedCommit,
    Signer, StateRoot, Timestamp, Triple, TripleId,
};

use crate::hlc::{ClockError, HybridClock};
use crate::vv::VersionVector;

pub mod base;

pub use base::{BaseSnapshot, DeepenError, SnapshotError};

/// Key prefix of stored commits (followed by the arrival number, big-endian).
const COMMIT_PREFIX: &[u8] = b"sync/commit/";
/// The first key after every stored commit's.
const COMMIT_END: &[u8] = b"sync/commit0";
/// Commits read back per page on open.
const OPEN_PAGE: usize = 256;

/// Bounds and tolerances of a [`Replica`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaConfig {
    /// How far ahead of the local clock a received commit's timestamp may be. Default 5 s.
    pub max_clock_ahead: Duration,
    /// Most commits waiting for their parents. Default 4,096.
    pub max_pending: usize,
    /// Most bytes of commits waiting for their parents. Default 64 MiB.
    pub max_pending_bytes: usize,
    /// Longest commit envelope accepted. Default 16 MiB.
    pub max_commit_bytes: usize,
    /// How long (by the local wall clock) a commit may wait for its parents before a full
    /// waiting room lets it go to make room. Default 60 s.
    pub max_pending_age: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            max_clock_ahead: Duration::from_secs(5),
            max_pending: 4096,
            max_pending_bytes: 64 << 20,
            max_commit_bytes: 16 << 20,
            max_pending_age: Duration::from_secs(60),
        }
    }
}

/// What [`Replica::receive`] did with a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// The commit was applied, followed by these waiting commits it unblocked, in the order
    /// applied (the commit itself first).
    Applied(Vec<CommitId>),
    /// The replica already held it; nothing changed.
    Known(CommitId),
    /// It waits for these parents (it was already waiting if they were asked for before).
    Pending {
        /// The commit.
        id: CommitId,
        /// Its parents the replica does not hold.
        missing: Vec<CommitId>,
    },
}

/// A rule of the replica's semantics a received commit breaks (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleViolation {
    /// The timestamp is behind a parent's or too far ahead of the local clock.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// One parent is an ancestor of another: the parents are not heads.
    #[error("parent {ancestor} is an ancestor of parent {descendant}")]
    ParentsNotConcurrent {
        /// The ancestor.
        ancestor: CommitId,
        /// Its descendant, also listed.
        descendant: CommitId,
    },
    /// The author already made another commit concurrent with this one.
    #[error(
        "{author} equivocates: its commit {held} is concurrent with this one (both number {seq})"
    )]
    Equivocation {
        /// The author.
        author: NodeId,
        /// The position in the author's chain both commits claim.
        seq: u64,
        /// The commit held at that position.
        held: CommitId,
    },
    /// The changes are not effective in the state of the commit's causal past.
    #[error("changes do not apply to the state the author saw: {0}")]
    ChangesDoNotApply(ApplyError),
    /// The claimed state root is not the root of the author's state after the changes.
    #[error("state root is {actual}, commit claims {claimed}")]
    StateRootMismatch {
        /// What the commit claims.
        claimed: StateRoot,
        /// What its causal past and changes give.
        actual: StateRoot,
    },
}

/// A received commit was refused. **Nothing changed** in the replica for any variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The envelope is longer than [`ReplicaConfig::max_commit_bytes`].
    #[error("commit of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes do not decode, or the id, signature or authorship does not verify.
    #[error("commit rejected: {0}")]
    Unverifiable(#[from] CommitVerifyError),
    /// The host's commit policy refused it.
    #[error("commit {id} refused by policy: {reason}")]
    Refused {
        /// The commit.
        id: CommitId,
        /// Why.
        reason: Box<CommitRefusal>,
    },
    /// It breaks a rule of the replica's semantics.
    #[error("commit {id} breaks the replica's rules: {violation}")]
    Rule {
        /// The commit.
        id: CommitId,
        /// Which rule.
        violation: RuleViolation,
    },
    /// Its parents are missing and the waiting room is full
    /// ([`ReplicaConfig::max_pending`], [`ReplicaConfig::max_pending_bytes`]).
    #[error("commit {id} waits for parents and the waiting room is full")]
    PendingFull {
        /// The commit.
        id: CommitId,
    },
    /// The commit does not descend from the head of the snapshot this replica started from
    /// (a parent of it is in the base, or it has no parent): it cannot be checked without the
    /// base's history. Deepen the replica ([`Replica::deepen`]) and receive it again.
    #[error("commit {id} does not descend from this replica's base; deepen the replica first")]
    BeforeBase {
        /// The commit.
        id: CommitId,
    },
    /// The store failed; nothing was written.
    #[error("replica storage: {0}")]
    Storage(#[from] KvError),
    /// The commit arrived sealed and could not be opened here: no key for the epoch it was
    /// sealed under (this organization left the branch before it was written), or it does
    /// not authenticate.
    #[error("sealed commit: {0}")]
    Sealed(#[from] SealError),
}

/// A local write failed. **Nothing was written** for any variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The changes change nothing in the replica's state.
    #[error("nothing to commit: the changes are already in the replica's state")]
    NothingToCommit,
    /// The state could not take the changes (the term dictionary is full).
    #[error(transparent)]
    Apply(ApplyError),
    /// The commit could not be assembled (message too long).
    #[error(transparent)]
    Shape(#[from] CommitShapeError),
    /// The signer failed.
    #[error(transparent)]
    Sign(#[from] CommitVerifyError),
    /// The host's commit policy refused the commit.
    #[error("commit refused by policy: {0}")]
    Refused(Box<CommitRefusal>),
    /// The store failed.
    #[error("replica storage: {0}")]
    Storage(#[from] KvError),
}

/// Opening a replica failed: a stored commit could not be read back or no longer passes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The store failed.
    #[error("replica storage: {0}")]
    Storage(#[from] KvError),
    /// A stored commit's parent is not stored before it (a damaged store).
    #[error("stored commit number {arrival} comes before its parent {parent}")]
    MissingParent {
        /// Its arrival number.
        arrival: u64,
        /// The parent.
        parent: CommitId,
    },
    /// The stored snapshot the replica started from is damaged.
    #[error("stored base: {0}")]
    Base(String),
    /// A stored commit was refused on replay (a damaged store, or a stricter policy).
    #[error("stored commit number {arrival} refused on replay: {error}")]
    Replay {
        /// Its arrival number.
        arrival: u64,
        /// Why.
        error: Box<ReceiveError>,
    },
}

/// What is known of a held commit.
#[derive(Debug)]
struct Meta {
    id: CommitId,
    author: u32,
    seq: u64,
    generation: u64,
    timestamp: Timestamp,
    /// Per author index: how many of its commits are in this commit's past, itself included.
    vv: Box<[u64]>,
    /// Where it is stored.
    arrival: u64,
}

/// The replica's index of triple histories.
type Histories = HashMap<TripleId, History, foldhash::quality::RandomState>;

/// The commits that touched a triple, in the order they were applied: (commit, is_add).
#[derive(Debug)]
enum History {
    /// The common case: one commit added it and nothing else touched it.
    Added(u32),
    Many(Vec<(u32, bool)>),
}

impl History {
    fn events(&self) -> Vec<(u32, bool)> {
        match self {
            History::Added(c) => vec![(*c, true)],
            History::Many(v) => v.clone(),
        }
    }

    fn push(&mut self, commit: u32, add: bool) {
        match self {
            History::Added(c) => *self = History::Many(vec![(*c, true), (commit, add)]),
            History::Many(v) => v.push((commit, add)),
        }
    }
}

/// A commit waiting for its parents.
#[derive(Debug)]
struct Waiting {
    commit: SignedCommit,
    missing: Vec<CommitId>,
    /// The local wall clock when it arrived.
    since: Timestamp,
}

/// Counters of what a replica has done. They only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaMetrics {
    /// Commits written locally.
    pub written: u64,
    /// Commits received and applied (including ones that waited).
    pub applied: u64,
    /// Triples added or removed by the commits applied.
    pub triples_applied: u64,
    /// Received commits the replica already held.
    pub duplicates: u64,
    /// Received commits refused (any [`ReceiveError`]).
    pub refused: u64,
    /// Received commits that had to wait for parents.
    pub deferred: u64,
    /// Waiting commits let go after [`ReplicaConfig::max_pending_age`] to make room.
    pub expired: u64,
}

/// One node's replica of an eventually consistent branch (see the
/// [module documentation](self)). Sans-io: the wall clock is an argument; the only I/O is
/// the [`KvStore`], durable when a write returns.
///
/// ```
/// use llmkg_federation_core::{ChangeSet, MemoryKv, NodeKeypair, OrgId, Term, Timestamp, Triple};
/// use llmkg_sync::replica::{Replica, ReplicaConfig};
///
/// let org = OrgId::new("acme")?;
/// let open = |seed: u8| Replica::open(MemoryKv::new(), NodeKeypair::from_secret_bytes([seed; 32]), org.clone(), ReplicaConfig::default());
/// let (mut a, mut b) = (open(1)?, open(2)?);
/// let now = Timestamp::from_micros(1_700_000_000_000_000);
/// let t = Triple::new(Term::iri("https://ex.org/s")?, Term::iri("https://ex.org/p")?, Term::string("o")?)?;
///
/// let first = a.write(now, ChangeSet::adding([t.clone()]), "add")?;
/// b.receive(now, first.as_bytes())?;
/// // Concurrently: a removes the triple, b adds it again (a no-op for b, so b adds another).
/// let t2 = Triple::new(Term::iri("https://ex.org/s")?, Term::iri("https://ex.org/p")?, Term::string("o2")?)?;
/// let removal = a.write(now, ChangeSet::removing([t.clone()]), "remove")?;
/// let addition = b.write(now, ChangeSet::adding([t2.clone()]), "add another")?;
/// a.receive(now, addition.as_bytes())?;
/// b.receive(now, removal.as_bytes())?;
/// assert_eq!(a.state_root(), b.state_root());
/// assert!(!a.state().contains(&t) && a.state().contains(&t2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Replica<K: KvStore> {
    kv: K,
    signer: Box<dyn Signer>,
    org: OrgId,
    policy: Box<dyn CommitPolicy>,
    config: ReplicaConfig,
    clock: HybridClock,
    metas: Vec<Meta>,
    index: HashMap<CommitId, u32>,
    authors: Vec<NodeId>,
    author_index: HashMap<NodeId, u32>,
    /// Per author index: its held commits by position in its chain, after the
    /// `chain_base` of its commits that are in the base and not held.
    chains: Vec<Vec<u32>>,
    /// Per author index: how many of its commits the base holds without this replica holding
    /// them (all zero for a replica that did not start from a snapshot).
    chain_base: Vec<u64>,
    /// The snapshot this replica started from, if it did (see [`BaseSnapshot`]).
    base: Option<base::Base>,
    heads: BTreeSet<CommitId>,
    /// Keyed by triple ids, which peers choose (by choosing triples): hashed with a
    /// per-process seed, and fast (SipHash was a tenth of receiving a large commit).
    history: Histories,
    state: GraphState,
    next_arrival: u64,
    waiting: HashMap<CommitId, Waiting>,
    waiting_bytes: usize,
    /// Missing parent -> commits waiting for it.
    waiting_for: HashMap<CommitId, Vec<CommitId>>,
    metrics: ReplicaMetrics,
    /// The change sets of the latest commits applied, by index (consecutive).
    recent: VecDeque<(u32, Arc<ChangeSet>)>,
}

/// How many of the latest commits' change sets are kept in memory: the commits concurrent
/// with a new one are almost always among them.
const RECENT_CHANGES: usize = 1024;

impl<K: KvStore> std::fmt::Debug for Replica<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("node", &self.signer.node_id())
            .field("commits", &self.metas.len())
            .field("heads", &self.heads.len())
            .finish_non_exhaustive()
    }
}

/// A verified commit ready to be stored and applied.
struct Admitted {
    commit: SignedCommit,
    author: u32,
    new_author: bool,
    seq: u64,
    generation: u64,
    vv: Box<[u64]>,
    /// True when the state already holds the commit's effect (its past was the whole set).
    applied_in_place: bool,
    /// The ids of the commit's added and removed triples, in order (applying computed them).
    ids: ChangeIds,
}

impl<K: KvStore> Replica<K> {
    /// Opens the replica kept in `kv` (empty if it holds none), writing as `signer`'s node for
    /// `org`. Every stored commit is replayed and verified again (id, signature, the rules and
    /// the default policy, which admits every verified commit; use
    /// [`open_with_policy`](Self::open_with_policy) for another).
    pub fn open(
        kv: K,
        signer: impl Signer + 'static,
        org: OrgId,
        config: ReplicaConfig,
    ) -> Result<Self, OpenError> {
        Self::open_with_policy(kv, signer, org, config, AcceptAll)
    }

    /// [`open`](Self::open) with the policy every commit received must pass (stored commits
    /// passed it when they were admitted, and are not judged again when the replica opens;
    /// their signatures and the replica's rules are checked again).
    pub fn open_with_policy(
        kv: K,
        signer: impl Signer + 'static,
        org: OrgId,
        config: ReplicaConfig,
        policy: impl CommitPolicy + 'static,
    ) -> Result<Self, OpenError> {
        let mut replica = Self {
            kv,
            signer: Box::new(signer),
            org,
            policy: Box::new(policy),
            clock: HybridClock::new(config.max_clock_ahead),
            config,
            metas: Vec::new(),
            index: HashMap::new(),
            authors: Vec::new(),
            author_index: HashMap::new(),
            chains: Vec::new(),
            chain_base: Vec::new(),
            base: None,
            heads: BTreeSet::new(),
            history: HashMap::default(),
            state: GraphState::new(),
            next_arrival: 0,
            waiting: HashMap::new(),
            waiting_bytes: 0,
            waiting_for: HashMap::new(),
            metrics: ReplicaMetrics::default(),
            recent: VecDeque::new(),
        };
        replica.replay()?;
        Ok(replica)
    }

    fn replay(&mut self) -> Result<(), OpenError> {
        self.load_base()?;
        let end = COMMIT_END.to_vec();
        let mut from = COMMIT_PREFIX.to_vec();
        loop {
            let page = self.kv.scan(
                std::ops::Bound::Included(&from),
                std::ops::Bound::Excluded(&end),
                OPEN_PAGE,
            )?;
            let Some((last, _)) = page.last() else { break };
            from = last.clone();
            from.push(0);
            for (key, bytes) in &page {
                let arrival = key
                    .get(COMMIT_PREFIX.len()..)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(u64::MAX);
                let fail =
                    |error: ReceiveError| OpenError::Replay { arrival, error: Box::new(error) };
                let commit = SignedCommit::decode(bytes, None).map_err(|e| fail(e.into()))?;
                let id = commit.id();
                if self.index.contains_key(&id) {
                    continue;
                }
                if let Some(parent) = self.missing_parents(&commit).first() {
                    return Err(OpenError::MissingParent { arrival, parent: *parent });
                }
                let admitted = self.admit(None, commit, None).map_err(fail)?;
                self.install(admitted, arrival);
                self.next_arrival = self.next_arrival.max(arrival.saturating_add(1));
            }
            if page.len() < OPEN_PAGE {
                break;
            }
        }
        Ok(())
    }

    /// The node this replica writes as.
    pub fn node_id(&self) -> NodeId {
        self.signer.node_id()
    }

    /// The configuration.
    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> &GraphState {
        &self.state
    }

    /// The root of the current state.
    pub fn state_root(&mut self) -> StateRoot {
        self.state.state_root()
    }

    /// The commits no held commit descends from, sorted.
    pub fn heads(&self) -> Vec<CommitId> {
        self.heads.iter().copied().collect()
    }

    /// Number of commits held.
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    /// True if no commit is held.
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// True if commit `id` is held (applied; not merely waiting).
    pub fn contains(&self, id: &CommitId) -> bool {
        self.index.contains_key(id)
    }

    /// True if commit `id` is in this replica's past: held, or in the base of the snapshot
    /// it started from ([`BaseSnapshot`]).
    pub fn knows(&self, id: &CommitId) -> bool {
        self.index.contains_key(id) || self.in_base(id)
    }

    /// Every held commit id, in the order applied (parents before children).
    pub fn ids(&self) -> impl Iterator<Item = CommitId> + '_ {
        self.metas.iter().map(|m| m.id)
    }

    /// Commits waiting for parents.
    pub fn pending(&self) -> usize {
        self.waiting.len()
    }

    /// Parents that waiting commits need, sorted (what to ask peers for).
    pub fn wanted(&self) -> Vec<CommitId> {
        let mut v: Vec<CommitId> =
            self.waiting_for.keys().filter(|p| !self.waiting.contains_key(p)).copied().collect();
        v.sort();
        v
    }

    /// What the replica has done so far.
    pub fn metrics(&self) -> &ReplicaMetrics {
        &self.metrics
    }

    /// Number of authors whose commits are held (the length of the version vector).
    pub fn authors(&self) -> usize {
        self.authors.len()
    }

    /// A timestamp later than every commit held and every stamp issued, at wall-clock time
    /// `wall` (the clock does not move).
    pub fn next_timestamp(&self, wall: Timestamp) -> Timestamp {
        wall.max(Timestamp::from_micros(self.clock.last().as_micros().saturating_add(1)))
    }

    /// Per author, how many of its commits are held.
    pub fn version_vector(&self) -> VersionVector {
        let mut v = VersionVector::new();
        for (a, node) in self.authors.iter().enumerate() {
            v.observe(*node, self.chain_len(a as u32));
        }
        v
    }

    /// Per author, how many of its commits are in the causal past of `heads` (those held;
    /// the others are ignored).
    pub fn version_vector_of(&self, heads: &[CommitId]) -> VersionVector {
        let idx: Vec<u32> = heads.iter().filter_map(|h| self.index.get(h).copied()).collect();
        let vv = self.join_vv(&idx, None);
        let mut v = VersionVector::new();
        for (node, n) in self.authors.iter().zip(vv) {
            if n > 0 {
                v.observe(*node, n);
            }
        }
        v
    }

    /// The stored envelope of a held commit.
    pub fn commit_bytes(&self, id: &CommitId) -> Result<Option<Vec<u8>>, KvError> {
        let Some(&i) = self.index.get(id) else { return Ok(None) };
        if let Some(head) = self.base_head(i) {
            return Ok(Some(head.as_bytes().to_vec()));
        }
        let Some(m) = self.metas.get(i as usize) else { return Ok(None) };
        self.kv.get(&commit_key(m.arrival))
    }

    /// The generation of a held commit (a root is 1, any other one more than its highest
    /// parent): sorting by it puts parents before children.
    pub fn generation(&self, id: &CommitId) -> Option<u64> {
        self.index.get(id).and_then(|i| self.metas.get(*i as usize)).map(|m| m.generation)
    }

    /// The held commits not in the causal past of `heads`, parents first — what a peer
    /// whose heads are `heads` lacks — or `None` if a head is not held here (then the peer
    /// has something this replica lacks, and the difference needs its version vector).
    pub fn missing_for_heads(&self, heads: &[CommitId]) -> Option<Vec<CommitId>> {
        let mut idx = Vec::with_capacity(heads.len());
        for h in heads {
            idx.push(*self.index.get(h)?);
        }
        let vv = self.join_vv(&idx, None);
        Some(self.beyond(|a| vv_get(&vv, a)))
    }

    /// The held commits a replica whose version vector is `vv` lacks, parents first.
    pub fn missing_for_vv(&self, vv: &VersionVector) -> Vec<CommitId> {
        self.beyond(|a| self.authors.get(a as usize).map_or(0, |n| vv.get(*n)))
    }

    /// Commits beyond `covered(author)` in each author's chain, parents first.
    fn beyond(&self, covered: impl Fn(u32) -> u64) -> Vec<CommitId> {
        let mut out: Vec<u32> = Vec::new();
        for a in 0..self.chains.len() as u32 {
            out.extend(self.held_beyond(a, covered(a)));
        }
        out.sort_by_key(|i| (self.meta(*i).generation, *i));
        out.into_iter().map(|i| self.meta(i).id).collect()
    }

    /// How many commits of author `a` this replica's past holds (the base's included).
    fn chain_len(&self, a: u32) -> u64 {
        let held = self.chains.get(a as usize).map_or(0, |c| c.len() as u64);
        held + self.chain_base.get(a as usize).copied().unwrap_or(0)
    }

    /// The held commits of author `a` after its first `covered`.
    fn held_beyond(&self, a: u32, covered: u64) -> impl Iterator<Item = u32> + '_ {
        let base = self.chain_base.get(a as usize).copied().unwrap_or(0);
        let skip = usize::try_from(covered.saturating_sub(base)).unwrap_or(usize::MAX);
        self.chains.get(a as usize).into_iter().flatten().skip(skip).copied()
    }

    /// The held commit at position `seq` (from 1) of author `a`'s chain.
    fn at_seq(&self, a: u32, seq: u64) -> Option<u32> {
        let base = self.chain_base.get(a as usize).copied().unwrap_or(0);
        let pos = usize::try_from(seq.checked_sub(base + 1)?).ok()?;
        self.chains.get(a as usize)?.get(pos).copied()
    }

    fn meta(&self, i: u32) -> &Meta {
        // Indexes come from `index`/`chains`/`parents`, all built with `metas`.
        &self.metas[i as usize]
    }

    /// True if commit `x` is in the past described by `vv` (itself included when `vv` is a
    /// commit's own vector).
    fn in_past(&self, x: u32, vv: &[u64]) -> bool {
        let m = self.meta(x);
        m.seq <= vv_get(vv, m.author)
    }

    fn join_vv(&self, parents: &[u32], extra_author: Option<u32>) -> Vec<u64> {
        let width = self.authors.len()
            + usize::from(extra_author.is_some_and(|a| a as usize >= self.authors.len()));
        let mut vv = vec![0u64; width];
        for p in parents {
            for (slot, n) in vv.iter_mut().zip(self.meta(*p).vv.iter()) {
                *slot = (*slot).max(*n);
            }
        }
        vv
    }

    fn missing_parents(&self, commit: &SignedCommit) -> Vec<CommitId> {
        commit.commit().parents().iter().filter(|p| !self.index.contains_key(p)).copied().collect()
    }

    /// True if `triple` is in the state of the commits `keep` selects.
    fn member(&self, events: &[(u32, bool)], keep: impl Fn(u32) -> bool) -> bool {
        events.iter().filter(|(a, add)| *add && keep(*a)).any(|(a, _)| {
            !events.iter().any(|(r, add)| {
                !*add && *r != *a && keep(*r) && self.in_past(*a, &self.meta(*r).vv)
            })
        })
    }

    /// A held commit's change set: from the recent ones kept in memory, or read back from
    /// the store (verified when it was admitted).
    fn stored_changes(&self, i: u32) -> Result<Arc<ChangeSet>, KvError> {
        if let Some((first, _)) = self.recent.front()
            && let Some(offset) = i.checked_sub(*first)
            && let Some((_, changes)) = self.recent.get(offset as usize)
        {
            return Ok(changes.clone());
        }
        if let Some(head) = self.base_head(i) {
            return Ok(Arc::new(head.commit().changes().clone()));
        }
        let key = commit_key(self.meta(i).arrival);
        let bytes = self.kv.get(&key)?.ok_or_else(|| {
            KvError::Io(std::io::Error::other("a held commit is missing from the store"))
        })?;
        let (commit, _) = postcard::take_from_bytes::<Commit>(&bytes)
            .map_err(|e| KvError::Io(std::io::Error::other(format!("stored commit: {e}"))))?;
        Ok(Arc::new(commit.changes().clone()))
    }

    /// Verifies `commit` (parents all held) against the policy and rules. On success the
    /// state may already hold the commit's effect (`applied_in_place`); on error it is as
    /// it was.
    ///
    /// `applied` is for a local write the state already holds, with the ids applying it
    /// computed: its parents are every head, so its past is the whole replica and it is not
    /// applied again (its root was computed from this very state).
    fn admit(
        &mut self,
        wall: Option<Timestamp>,
        commit: SignedCommit,
        applied: Option<ChangeIds>,
    ) -> Result<Admitted, ReceiveError> {
        let id = commit.id();
        let rule = |violation: RuleViolation| ReceiveError::Rule { id, violation };
        // A stored commit passed the policy when it was admitted; reopening does not judge it
        // again (what it was judged against, a registry, say, is itself still being restored).
        if wall.is_some() {
            self.policy
                .check(&commit)
                .map_err(|reason| ReceiveError::Refused { id, reason: Box::new(reason) })?;
        }
        let c = commit.commit();
        let parents: Vec<u32> =
            c.parents().iter().filter_map(|p| self.index.get(p).copied()).collect();
        // Clock.
        let parent_times = parents.iter().map(|p| self.meta(*p).timestamp);
        match wall {
            Some(wall) => self.clock.check(wall, c.timestamp(), parent_times),
            None => HybridClock::new(Duration::MAX).check(
                Timestamp::from_micros(i64::MAX),
                c.timestamp(),
                parent_times,
            ),
        }
        .map_err(|e| rule(e.into()))?;
        // Parents are concurrent.
        for p in &parents {
            for q in &parents {
                if p != q && self.in_past(*p, &self.meta(*q).vv) {
                    return Err(rule(RuleViolation::ParentsNotConcurrent {
                        ancestor: self.meta(*p).id,
                        descendant: self.meta(*q).id,
                    }));
                }
            }
        }
        // The author's chain.
        let (author, new_author) = match self.author_index.get(&c.author()) {
            Some(a) => (*a, false),
            None => (self.authors.len() as u32, true),
        };
        let mut vv = self.join_vv(&parents, Some(author));
        let seq = vv_get(&vv, author).saturating_add(1);
        if let Some(held) = self.at_seq(author, seq) {
            return Err(rule(RuleViolation::Equivocation {
                author: c.author(),
                seq,
                held: self.meta(held).id,
            }));
        }
        let generation =
            parents.iter().map(|p| self.meta(*p).generation).max().unwrap_or(0).saturating_add(1);
        // The state the author saw, its changes and root.
        let concurrent = self.outside(&vv);
        let in_place = concurrent.is_empty();
        let ids = match applied {
            Some(ids) if in_place => ids,
            Some(_) => {
                return Err(ReceiveError::Storage(KvError::Io(std::io::Error::other(
                    "a local write applied in place has concurrent commits",
                ))));
            }
            None => self.apply_in_past(id, c, &concurrent, &vv)?,
        };
        if let Some(slot) = vv.get_mut(author as usize) {
            *slot = seq;
        }
        Ok(Admitted {
            commit,
            author,
            new_author,
            seq,
            generation,
            vv: vv.into_boxed_slice(),
            applied_in_place: in_place,
            ids,
        })
    }

    /// Applies `c` to the state of its past (described by `vv`, with the held commits
    /// `concurrent` outside it) and checks the root it claims. When nothing is concurrent the
    /// state keeps the commit's effect; otherwise, or on error, it is as it was.
    fn apply_in_past(
        &mut self,
        id: CommitId,
        c: &Commit,
        concurrent: &[u32],
        vv: &[u64],
    ) -> Result<ChangeIds, ReceiveError> {
        let rule = |violation: RuleViolation| ReceiveError::Rule { id, violation };
        let delta = self.delta_to_past(concurrent, vv).map_err(ReceiveError::Storage)?;
        if let Err(e) = self.state.apply(&delta) {
            return Err(ReceiveError::Storage(KvError::Io(std::io::Error::other(format!(
                "inconsistent replica state: {e}"
            )))));
        }
        let outcome = match self.state.apply_with_ids(c.changes()) {
            Err(e) => Err(rule(RuleViolation::ChangesDoNotApply(e))),
            Ok(ids) => {
                let actual = self.state.state_root();
                if actual == c.state_root() {
                    Ok(ids)
                } else {
                    let _ = self.state.apply(&c.changes().inverse());
                    Err(rule(RuleViolation::StateRootMismatch { claimed: c.state_root(), actual }))
                }
            }
        };
        if outcome.is_err() || !concurrent.is_empty() {
            if outcome.is_ok() {
                let _ = self.state.apply(&c.changes().inverse());
            }
            let _ = self.state.apply(&delta.inverse());
        }
        outcome
    }

    /// The held commits outside the past described by `vv` (concurrent with a commit whose
    /// vector it is).
    fn outside(&self, vv: &[u64]) -> Vec<u32> {
        (0..self.chains.len() as u32).flat_map(|a| self.held_beyond(a, vv_get(vv, a))).collect()
    }

    /// The changes that turn the current state into the state of the past described by
    /// `vv`, given the held commits outside it.
    fn delta_to_past(&self, concurrent: &[u32], vv: &[u64]) -> Result<ChangeSet, KvError> {
        if concurrent.is_empty() {
            return Ok(ChangeSet::default());
        }
        let mut touched: HashMap<TripleId, Triple> = HashMap::new();
        for &x in concurrent {
            let changes = self.stored_changes(x)?;
            for t in changes.added().iter().chain(changes.removed()) {
                touched.entry(t.id()).or_insert_with(|| t.clone());
            }
        }
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for (id, t) in touched {
            let Some(h) = self.history.get(&id) else { continue };
            let in_past = self.member(&h.events(), |x| self.in_past(x, vv));
            match (self.state.contains(&t), in_past) {
                (true, false) => remove.push(t),
                (false, true) => add.push(t),
                _ => {}
            }
        }
        ChangeSet::new(add, remove)
            .map_err(|e| KvError::Io(std::io::Error::other(format!("inconsistent history: {e}"))))
    }

    /// Records an admitted commit in memory (it is already stored under `arrival`).
    fn install(&mut self, a: Admitted, arrival: u64) {
        let i = self.metas.len() as u32;
        let c = a.commit.commit();
        if a.new_author {
            self.authors.push(c.author());
            self.author_index.insert(c.author(), a.author);
            self.chains.push(Vec::new());
            self.chain_base.push(0);
        }
        if let Some(chain) = self.chains.get_mut(a.author as usize) {
            chain.push(i);
        }
        for p in c.parents() {
            self.heads.remove(p);
        }
        self.heads.insert(a.commit.id());
        self.index.insert(a.commit.id(), i);
        self.clock.observe(c.timestamp());
        self.metas.push(Meta {
            id: a.commit.id(),
            author: a.author,
            seq: a.seq,
            generation: a.generation,
            timestamp: c.timestamp(),
            vv: a.vv,
            arrival,
        });
        self.metrics.triples_applied += c.changes().len() as u64;
        // The commit is done with: its change set moves to the recent ones (no copy).
        let changes = Arc::new(a.commit.into_commit().into_changes());
        self.recent.push_back((i, changes.clone()));
        if self.recent.len() > RECENT_CHANGES {
            self.recent.pop_front();
        }
        debug_assert_eq!(a.ids.0.len(), changes.added().len());
        self.history.reserve(changes.added().len());
        for (t, id) in changes.added().iter().zip(&a.ids.0) {
            match self.history.get_mut(id) {
                Some(h) => h.push(i, true),
                None => {
                    self.history.insert(*id, History::Added(i));
                }
            }
            if !a.applied_in_place {
                // An addition is a fresh dot: the triple is present.
                let _ = self.state.insert(t);
            }
        }
        debug_assert_eq!(a.ids.1.len(), changes.removed().len());
        for (t, id) in changes.removed().iter().zip(&a.ids.1) {
            let Some(h) = self.history.get_mut(id) else { continue };
            h.push(i, false);
            if !a.applied_in_place {
                let events = h.events();
                if !self.member(&events, |_| true) {
                    self.state.remove(t);
                }
            }
        }
    }

    /// Verifies a commit received from a peer and applies it, or keeps it until its parents
    /// arrive (see the module docs for the rules). `wall` is the local wall clock.
    pub fn receive(&mut self, wall: Timestamp, bytes: &[u8]) -> Result<Received, ReceiveError> {
        let result = self.receive_inner(wall, bytes);
        if result.is_err() {
            self.metrics.refused += 1;
        }
        result
    }

    fn receive_inner(&mut self, wall: Timestamp, bytes: &[u8]) -> Result<Received, ReceiveError> {
        if bytes.len() > self.config.max_commit_bytes {
            return Err(ReceiveError::TooLarge {
                len: bytes.len(),
                limit: self.config.max_commit_bytes,
            });
        }
        // A commit already held is recognized by its id before its signature is checked:
        // repeated commits cost a hash, not a verification.
        if let Some(id) = SignedCommit::claimed_id(bytes) {
            if self.index.contains_key(&id) || self.in_base(&id) {
                self.metrics.duplicates += 1;
                return Ok(Received::Known(id));
            }
            if let Some(w) = self.waiting.get(&id) {
                self.metrics.duplicates += 1;
                return Ok(Received::Pending { id, missing: w.missing.clone() });
            }
        }
        let commit = SignedCommit::decode(bytes, None)?;
        let id = commit.id();
        if self.index.contains_key(&id) {
            self.metrics.duplicates += 1;
            return Ok(Received::Known(id));
        }
        let missing = self.missing_parents(&commit);
        if let Some(parent) = missing.iter().find(|p| self.in_base(p)) {
            // A parent held here descends from the base's head, so from that parent: a full
            // replica refuses the commit for it. Otherwise only the history can tell.
            if let Some(held) =
                commit.commit().parents().iter().find(|p| self.index.contains_key(p))
            {
                return Err(ReceiveError::Rule {
                    id,
                    violation: RuleViolation::ParentsNotConcurrent {
                        ancestor: *parent,
                        descendant: *held,
                    },
                });
            }
            return Err(ReceiveError::BeforeBase { id });
        }
        if self.base.is_some() && commit.commit().parents().is_empty() {
            // Every held commit descends from the base's head; a root is concurrent with it.
            return Err(ReceiveError::BeforeBase { id });
        }
        if !missing.is_empty() {
            if !self.waiting.contains_key(&id) {
                self.policy
                    .check(&commit)
                    .map_err(|reason| ReceiveError::Refused { id, reason: Box::new(reason) })?;
                let full = |r: &Self| {
                    r.waiting.len() >= r.config.max_pending
                        || r.waiting_bytes.saturating_add(bytes.len()) > r.config.max_pending_bytes
                };
                if full(self) {
                    self.expire_waiting(wall);
                }
                if full(self) {
                    return Err(ReceiveError::PendingFull { id });
                }
                for p in &missing {
                    self.waiting_for.entry(*p).or_default().push(id);
                }
                self.waiting_bytes += bytes.len();
                self.waiting.insert(id, Waiting { commit, missing: missing.clone(), since: wall });
                self.metrics.deferred += 1;
            }
            return Ok(Received::Pending { id, missing });
        }
        self.apply_new(Some(wall), commit, None)?;
        let mut applied = vec![id];
        self.release_waiting(wall, id, &mut applied);
        Ok(Received::Applied(applied))
    }

    /// Lets go of the commits that have waited longer than
    /// [`ReplicaConfig::max_pending_age`]: a peer that filled the room with commits whose
    /// parents never come blocks it for that long at most. (A commit let go is asked for again
    /// by the next anti-entropy round if it is real.)
    fn expire_waiting(&mut self, wall: Timestamp) {
        let age = i64::try_from(self.config.max_pending_age.as_micros()).unwrap_or(i64::MAX);
        let cutoff = Timestamp::from_micros(wall.as_micros().saturating_sub(age));
        let old: Vec<CommitId> =
            self.waiting.iter().filter(|(_, w)| w.since < cutoff).map(|(id, _)| *id).collect();
        for id in old {
            if let Some(w) = self.waiting.remove(&id) {
                self.waiting_bytes = self.waiting_bytes.saturating_sub(w.commit.as_bytes().len());
                for p in &w.missing {
                    if let Some(children) = self.waiting_for.get_mut(p) {
                        children.retain(|c| *c != id);
                        if children.is_empty() {
                            self.waiting_for.remove(p);
                        }
                    }
                }
                self.metrics.expired += 1;
            }
        }
    }

    /// Stores and installs a commit whose parents are held. `wall` is the local wall clock a
    /// received commit's stamp may not run too far ahead of; `None` for a local write, whose
    /// stamp the hybrid logical clock set (it may lawfully run further ahead of the wall: it
    /// follows the parents' and the replica's own latest stamp).
    ///
    /// `applied`: see [`admit`](Self::admit); on error the caller undoes the write.
    fn apply_new(
        &mut self,
        wall: Option<Timestamp>,
        commit: SignedCommit,
        applied: Option<ChangeIds>,
    ) -> Result<(), ReceiveError> {
        let local = applied.is_some();
        let admitted = self.admit(wall, commit, applied)?;
        let arrival = self.next_arrival;
        if let Err(e) =
            self.kv.write(KvBatch::new().put(commit_key(arrival), admitted.commit.as_bytes()))
        {
            if admitted.applied_in_place && !local {
                let _ = self.state.apply(&admitted.commit.commit().changes().inverse());
            }
            return Err(e.into());
        }
        self.next_arrival += 1;
        self.install(admitted, arrival);
        self.metrics.applied += 1;
        Ok(())
    }

    /// Applies the waiting commits that `id` (just applied) unblocks, transitively.
    fn release_waiting(&mut self, wall: Timestamp, id: CommitId, applied: &mut Vec<CommitId>) {
        let mut ready = vec![id];
        while let Some(parent) = ready.pop() {
            let Some(children) = self.waiting_for.remove(&parent) else { continue };
            for child in children {
                let Some(w) = self.waiting.get_mut(&child) else { continue };
                w.missing.retain(|p| *p != parent);
                if !w.missing.is_empty() {
                    continue;
                }
                let Some(w) = self.waiting.remove(&child) else { continue };
                self.waiting_bytes = self.waiting_bytes.saturating_sub(w.commit.as_bytes().len());
                if self.apply_new(Some(wall), w.commit, None).is_ok() {
                    applied.push(child);
                    ready.push(child);
                } else {
                    // Refused (counted): its own waiting descendants stay until they expire
                    // (`max_pending_age`); a later, valid copy may still be admitted.
                    self.metrics.refused += 1;
                }
            }
        }
    }

    /// Commits `changes` locally: the effective part (additions absent from the state,
    /// removals present) becomes a commit whose parents are the heads, stamped by the hybrid
    /// logical clock at wall time `wall`, signed, stored durably and applied. Returns it, to
    /// send to peers.
    pub fn write(
        &mut self,
        wall: Timestamp,
        changes: ChangeSet,
        message: &str,
    ) -> Result<SignedCommit, WriteError> {
        self.write_commit(wall, changes, message, false)
    }

    /// Commits no change, with every head as a parent: a commit every held commit is an
    /// ancestor of, which a [`BaseSnapshot`] can then be taken at. Refused with
    /// [`WriteError::NothingToCommit`] when the replica holds nothing, or more heads than a
    /// commit takes parents ([`MAX_PARENTS`]).
    pub fn checkpoint(&mut self, wall: Timestamp) -> Result<SignedCommit, WriteError> {
        if self.heads.is_empty() || self.heads.len() > MAX_PARENTS {
            return Err(WriteError::NothingToCommit);
        }
        self.write_commit(wall, ChangeSet::default(), "checkpoint", true)
    }

    fn write_commit(
        &mut self,
        wall: Timestamp,
        changes: ChangeSet,
        message: &str,
        allow_empty: bool,
    ) -> Result<SignedCommit, WriteError> {
        let parents = self.write_parents();
        let idx: Vec<u32> = parents.iter().filter_map(|p| self.index.get(p).copied()).collect();
        let me = self.signer.node_id();
        let author = self.author_index.get(&me).copied().unwrap_or(self.authors.len() as u32);
        let vv = self.join_vv(&idx, Some(author));
        let concurrent = self.outside(&vv);
        let delta = self.delta_to_past(&concurrent, &vv)?;
        self.state.apply(&delta).map_err(WriteError::Apply)?;
        let undo = |state: &mut GraphState, effective: &ChangeSet| {
            let _ = state.apply(&effective.inverse());
            let _ = state.apply(&delta.inverse());
        };
        let (effective, ids) = match self.state.apply_effective_with_ids(changes) {
            Ok(e) => e,
            Err(e) => {
                // Partly applied: rebuilding is the host's concern; report.
                let _ = self.state.apply(&delta.inverse());
                return Err(WriteError::Apply(e));
            }
        };
        if effective.is_empty() && !allow_empty {
            undo(&mut self.state, &effective);
            return Err(WriteError::NothingToCommit);
        }
        let root = self.state.state_root();
        // With nothing held concurrent (the parents are every head, the usual case) the state
        // now is the commit's result, and the commit is admitted as it stands. Otherwise the
        // state goes back, and admitting the commit merges it in like a peer's.
        let in_place = concurrent.is_empty();
        // What undoes the write in place if it is refused from here on (the change set goes
        // into the commit): the ids of its additions and a copy of its removals, usually few.
        let rollback = if in_place {
            Some((ids.0.clone(), effective.removed().to_vec()))
        } else {
            undo(&mut self.state, &effective);
            None
        };
        let parent_times: Vec<Timestamp> = idx.iter().map(|p| self.meta(*p).timestamp).collect();
        let timestamp = self.clock.stamp(wall, parent_times);
        let signed = Commit::new(
            parents,
            effective,
            me,
            self.org.clone(),
            timestamp,
            message.to_owned(),
            root,
        )
        .map_err(WriteError::from)
        .and_then(|commit| Ok(SignedCommit::sign_with(self.signer.as_ref(), commit)?))
        .and_then(|signed| match self.policy.check(&signed) {
            Ok(()) => Ok(signed),
            Err(r) => Err(WriteError::Refused(Box::new(r))),
        });
        // Our own commit follows the rules by construction; admitting it checks that too,
        // except the tolerance for stamps ahead of the wall clock, which is for peers' stamps.
        let outcome = match signed {
            Ok(signed) => match self.apply_new(None, signed.clone(), in_place.then_some(ids)) {
                Ok(()) => Ok(signed),
                Err(ReceiveError::Storage(e)) => Err(WriteError::Storage(e)),
                Err(e) => Err(WriteError::Storage(KvError::Io(std::io::Error::other(format!(
                    "own commit refused: {e}"
                ))))),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok(signed) => {
                self.metrics.applied -= 1;
                self.metrics.written += 1;
                Ok(signed)
            }
            Err(e) => {
                // A refused write leaves the state as it was.
                if let Some((added, removed)) = rollback {
                    let added: Vec<Triple> = added
                        .iter()
                        .filter_map(|id| self.state.get_by_id(id).map(|t| t.to_triple()))
                        .collect();
                    if let Ok(inverse) = ChangeSet::new(removed, added) {
                        let _ = self.state.apply(&inverse);
                    }
                }
                Err(e)
            }
        }
    }

    /// The parents of a new local commit: the heads, or, when there are more than
    /// [`MAX_PARENTS`], the head that holds this node's latest commit and the oldest others.
    fn write_parents(&self) -> Vec<CommitId> {
        if self.heads.len() <= MAX_PARENTS {
            return self.heads.iter().copied().collect();
        }
        let me = self.author_index.get(&self.signer.node_id()).copied();
        let mine = me.map_or(0, |a| self.chain_len(a));
        let mut heads: Vec<u32> =
            self.heads.iter().filter_map(|h| self.index.get(h).copied()).collect();
        // The head covering our latest commit first, then by generation (oldest first).
        heads.sort_by_key(|h| {
            let covers = me.is_some_and(|a| vv_get(&self.meta(*h).vv, a) == mine);
            (!covers, self.meta(*h).generation, *h)
        });
        heads.truncate(MAX_PARENTS);
        heads.into_iter().map(|h| self.meta(h).id).collect()
    }
}

fn vv_get(vv: &[u64], author: u32) -> u64 {
    vv.get(author as usize).copied().unwrap_or(0)
}

fn commit_key(arrival: u64) -> Vec<u8> {
    [COMMIT_PREFIX, &arrival.to_be_bytes()].concat()
}
