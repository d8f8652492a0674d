//! Shared by the replica test suites: a model of random concurrent histories, checked step by
//! step against a brute-force oracle written from the definition of the replica's semantics.
#![allow(dead_code, unreachable_pub)]

pub mod sim;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::time::Duration;

use llmkg_federation_core::{
    ChangeSet, Commit, CommitId, KvStore, MemoryKv, NodeId, NodeKeypair, OrgId, SignedCommit,
    StateRoot, Term, Timestamp, Triple,
};
use llmkg_sync::replica::{Received, Replica, ReplicaConfig, WriteError};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// A plausible wall clock, in microseconds.
pub const BASE: i64 = 1_700_000_000_000_000;
/// Size of the triple universe: small, so that additions and removals collide.
pub const UNIVERSE: usize = 6;

pub fn org() -> OrgId {
    OrgId::new("acme").unwrap()
}

pub fn ts(us: i64) -> Timestamp {
    Timestamp::from_micros(us)
}

pub fn triple(i: usize) -> Triple {
    Triple::new(
        Term::iri("https://ex.org/s").unwrap(),
        Term::iri(format!("https://ex.org/p{}", i % 2)).unwrap(),
        Term::string(format!("o{i}")).unwrap(),
    )
    .unwrap()
}

pub fn universe() -> Vec<Triple> {
    (0..UNIVERSE).map(triple).collect()
}

pub fn keypair(seed: u8) -> NodeKeypair {
    NodeKeypair::from_secret_bytes([seed; 32])
}

pub fn open(kv: MemoryKv, seed: u8, config: ReplicaConfig) -> Replica<MemoryKv> {
    Replica::open(kv, keypair(seed), org(), config).unwrap()
}

/// Every key and value in a store.
pub fn scan_all(kv: &MemoryKv) -> Vec<(Vec<u8>, Vec<u8>)> {
    kv.scan(Bound::Unbounded, Bound::Unbounded, usize::MAX).unwrap()
}

/// A commit decoded from its envelope.
#[derive(Clone, Debug)]
pub struct Info {
    pub id: CommitId,
    pub parents: Vec<CommitId>,
    pub author: NodeId,
    pub timestamp: Timestamp,
    pub added: Vec<Triple>,
    pub removed: Vec<Triple>,
    pub bytes: Vec<u8>,
}

pub fn info(bytes: &[u8]) -> Info {
    let s = SignedCommit::decode(bytes, None).unwrap();
    let c = s.commit();
    Info {
        id: s.id(),
        parents: c.parents().to_vec(),
        author: c.author(),
        timestamp: c.timestamp(),
        added: c.changes().added().to_vec(),
        removed: c.changes().removed().to_vec(),
        bytes: bytes.to_vec(),
    }
}

/// The causal past of `id` (strict ancestors), through parents.
pub fn ancestors(commits: &BTreeMap<CommitId, Info>, id: CommitId) -> BTreeSet<CommitId> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<CommitId> = commits[&id].parents.clone();
    while let Some(p) = stack.pop() {
        if seen.insert(p) {
            stack.extend(commits[&p].parents.iter().copied());
        }
    }
    seen
}

/// The brute-force oracle, straight from the definition: t is in state(S) iff some commit
/// a ∈ S adds t and no commit r ∈ S removing t has a in its causal past.
pub fn oracle_state(
    commits: &BTreeMap<CommitId, Info>,
    set: &BTreeSet<CommitId>,
) -> BTreeSet<Triple> {
    let past: BTreeMap<CommitId, BTreeSet<CommitId>> =
        set.iter().map(|id| (*id, ancestors(commits, *id))).collect();
    oracle_state_with(commits, &past, set)
}

/// [`oracle_state`] with the causal pasts (strict ancestors) of the members given.
pub fn oracle_state_with(
    commits: &BTreeMap<CommitId, Info>,
    past: &BTreeMap<CommitId, BTreeSet<CommitId>>,
    set: &BTreeSet<CommitId>,
) -> BTreeSet<Triple> {
    let mut out = BTreeSet::new();
    for a in set {
        for t in &commits[a].added {
            let removed = set.iter().any(|r| commits[r].removed.contains(t) && past[r].contains(a));
            if !removed {
                out.insert(t.clone());
            }
        }
    }
    out
}

/// The root of a set of triples, computed by a state built from scratch.
pub fn root_of(triples: &BTreeSet<Triple>) -> StateRoot {
    let mut g = llmkg_federation_core::GraphState::new();
    g.apply(&ChangeSet::adding(triples.iter().cloned())).unwrap();
    g.state_root()
}

/// The heads of a set of commits: those no member lists as a parent.
pub fn oracle_heads(commits: &BTreeMap<CommitId, Info>, set: &BTreeSet<CommitId>) -> Vec<CommitId> {
    let parents: BTreeSet<CommitId> =
        set.iter().flat_map(|c| commits[c].parents.iter().copied()).collect();
    set.iter().filter(|c| !parents.contains(c)).copied().collect()
}

pub fn triples_of(r: &Replica<MemoryKv>) -> BTreeSet<Triple> {
    r.state().triples().into_iter().collect()
}

/// One step of a random concurrent history. Indexes are reduced modulo the number of
/// replicas.
#[derive(Clone, Debug)]
pub enum Step {
    /// Replica `who` writes: add the triples of `add` (not in `remove`), remove those of
    /// `remove` (bit i is triple i).
    Write { who: u8, add: u8, remove: u8 },
    /// Replica `from` sends `to` the commits it holds selected by `subset` (bit i of its
    /// applied order, cycling), in applied order or shuffled by `shuffle`.
    Deliver { from: u8, to: u8, subset: u64, shuffle: Option<u64> },
    /// Every wall clock advances.
    Tick { micros: u32 },
    /// One replica's wall clock jumps (forwards or backwards).
    Jump { who: u8, micros: i64 },
}

pub fn write_step() -> impl Strategy<Value = Step> {
    (any::<u8>(), 0u8..64, prop_oneof![Just(0u8), 0u8..64])
        .prop_map(|(who, add, remove)| Step::Write { who, add, remove })
}

pub fn deliver_step(partial: bool) -> BoxedStrategy<Step> {
    let subset = if partial {
        prop_oneof![2 => Just(u64::MAX), 1 => any::<u64>()].boxed()
    } else {
        Just(u64::MAX).boxed()
    };
    (any::<u8>(), any::<u8>(), subset, proptest::option::of(any::<u64>()))
        .prop_map(|(from, to, subset, shuffle)| Step::Deliver { from, to, subset, shuffle })
        .boxed()
}

pub fn tick_step() -> impl Strategy<Value = Step> {
    (0u32..2_000_000).prop_map(|micros| Step::Tick { micros })
}

/// Steps of an honest history: writes, (partial) deliveries, clock ticks.
pub fn step(partial: bool) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => write_step(),
        4 => deliver_step(partial),
        1 => tick_step(),
    ]
}

/// The replicas of a random history, with the model of what each holds and waits for.
pub struct Sim {
    pub k: usize,
    pub kvs: Vec<MemoryKv>,
    pub reps: Vec<Replica<MemoryKv>>,
    pub walls: Vec<i64>,
    pub universe: Vec<Triple>,
    /// Every commit written by anyone.
    pub commits: BTreeMap<CommitId, Info>,
    /// Per replica, the commits the model says it holds.
    pub held: Vec<BTreeSet<CommitId>>,
    /// Per replica, the commits the model says wait for parents.
    pub waiting: Vec<BTreeSet<CommitId>>,
    /// Per commit, its author's wall clock when it was written.
    pub written_at: BTreeMap<CommitId, i64>,
    /// Per commit, its causal past (strict ancestors).
    pub past: BTreeMap<CommitId, BTreeSet<CommitId>>,
    /// Envelope -> id, so the model does not verify signatures again.
    pub by_bytes: HashMap<Vec<u8>, CommitId>,
}

impl Sim {
    /// `k` replicas with key seeds 1..=k, each with its wall clock `skews[i]` µs off.
    pub fn new(k: usize, skews: &[i64], config: ReplicaConfig) -> Self {
        let kvs: Vec<MemoryKv> = (0..k).map(|_| MemoryKv::new()).collect();
        let reps = kvs
            .iter()
            .enumerate()
            .map(|(i, kv)| open(kv.clone(), i as u8 + 1, config.clone()))
            .collect();
        Self {
            k,
            reps,
            kvs,
            walls: (0..k).map(|i| BASE + skews.get(i).copied().unwrap_or(0)).collect(),
            universe: universe(),
            commits: BTreeMap::new(),
            held: vec![BTreeSet::new(); k],
            waiting: vec![BTreeSet::new(); k],
            written_at: BTreeMap::new(),
            past: BTreeMap::new(),
            by_bytes: HashMap::new(),
        }
    }

    /// Default tolerances, clocks within ±1 s of one another.
    pub fn honest(k: usize, skew_seed: u64) -> Self {
        let skews: Vec<i64> =
            (0..k).map(|i| ((skew_seed >> (8 * i)) & 0xff) as i64 * 7_800 - 1_000_000).collect();
        Self::new(k, &skews, ReplicaConfig::default())
    }

    pub fn model_state(&self, i: usize) -> BTreeSet<Triple> {
        oracle_state_with(&self.commits, &self.past, &self.held[i])
    }

    pub fn run(&mut self, step: &Step) {
        match *step {
            Step::Write { who, add, remove } => {
                let _ = self.write(who as usize % self.k, add, remove);
            }
            Step::Deliver { from, to, subset, shuffle } => {
                let from = from as usize % self.k;
                let to = (from + 1 + to as usize % (self.k - 1)) % self.k;
                self.deliver(from, to, subset, shuffle);
            }
            Step::Tick { micros } => {
                for w in &mut self.walls {
                    *w += i64::from(micros);
                }
            }
            Step::Jump { who, micros } => {
                let i = who as usize % self.k;
                self.walls[i] = self.walls[i].saturating_add(micros);
            }
        }
    }

    /// Replica `i` writes; checks the result against the model. Returns the commit, if any.
    pub fn write(&mut self, i: usize, add: u8, remove: u8) -> Option<SignedCommit> {
        let adds: Vec<Triple> = (0..UNIVERSE)
            .filter(|b| add & !remove & (1 << b) != 0)
            .map(|b| self.universe[b].clone())
            .collect();
        let removes: Vec<Triple> = (0..UNIVERSE)
            .filter(|b| remove & (1 << b) != 0)
            .map(|b| self.universe[b].clone())
            .collect();
        let state = self.model_state(i);
        let mut eff_add: Vec<Triple> =
            adds.iter().filter(|t| !state.contains(t)).cloned().collect();
        let mut eff_rm: Vec<Triple> =
            removes.iter().filter(|t| state.contains(t)).cloned().collect();
        eff_add.sort();
        eff_rm.sort();
        let heads_before = self.reps[i].heads();
        let root_before = self.reps[i].state_root();
        let wall = self.walls[i];
        match self.reps[i].write(ts(wall), ChangeSet::new(adds, removes).unwrap(), "w") {
            Err(WriteError::NothingToCommit) => {
                assert!(
                    eff_add.is_empty() && eff_rm.is_empty(),
                    "NothingToCommit for effective changes"
                );
                assert_eq!(self.reps[i].state_root(), root_before);
                assert_eq!(self.reps[i].heads(), heads_before);
                None
            }
            Err(e) => panic!("write failed: {e}"),
            Ok(c) => {
                assert!(
                    !(eff_add.is_empty() && eff_rm.is_empty()),
                    "wrote a commit that changes nothing"
                );
                assert_eq!(
                    c.commit().changes().added(),
                    &eff_add[..],
                    "write keeps exactly the effective additions"
                );
                assert_eq!(
                    c.commit().changes().removed(),
                    &eff_rm[..],
                    "write keeps exactly the effective removals"
                );
                let mut parents = c.commit().parents().to_vec();
                parents.sort();
                assert_eq!(parents, heads_before, "a write takes the heads as parents");
                assert_eq!(c.commit().author(), self.reps[i].node_id());
                assert!(c.commit().timestamp() >= ts(wall), "stamp behind the writer's wall clock");
                let inf = info(c.as_bytes());
                for p in &inf.parents {
                    assert!(inf.timestamp > self.commits[p].timestamp, "stamp not after parent's");
                }
                self.written_at.insert(inf.id, wall);
                let mut past = BTreeSet::new();
                for p in &inf.parents {
                    past.insert(*p);
                    past.extend(self.past[p].iter().copied());
                }
                self.past.insert(inf.id, past);
                self.by_bytes.insert(inf.bytes.clone(), inf.id);
                self.held[i].insert(inf.id);
                self.commits.insert(inf.id, inf);
                assert_eq!(self.reps[i].heads(), vec![c.id()]);
                Some(c)
            }
        }
    }

    /// The envelopes replica `from` holds, in its applied order, selected by `subset`.
    pub fn envelopes(&self, from: usize, subset: u64) -> Vec<Vec<u8>> {
        self.reps[from]
            .ids()
            .enumerate()
            .filter(|(n, _)| subset & (1 << (n % 64)) != 0)
            .map(|(_, id)| self.reps[from].commit_bytes(&id).unwrap().unwrap())
            .collect::<Vec<_>>()
    }

    pub fn deliver(&mut self, from: usize, to: usize, subset: u64, shuffle: Option<u64>) {
        let mut envs = self.envelopes(from, subset);
        if let Some(seed) = shuffle {
            envs.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        for e in envs {
            self.receive(to, &e);
        }
    }

    /// Replica `to` receives `bytes` (an honest commit); checks the outcome against the model.
    pub fn receive(&mut self, to: usize, bytes: &[u8]) {
        let inf = match self.by_bytes.get(bytes) {
            Some(id) => self.commits[id].clone(),
            None => info(bytes),
        };
        let id = inf.id;
        let wall = self.walls[to];
        let got = self.reps[to]
            .receive(ts(wall), bytes)
            .unwrap_or_else(|e| panic!("honest commit refused: {e}"));
        if self.held[to].contains(&id) {
            assert_eq!(got, Received::Known(id));
            return;
        }
        let missing: BTreeSet<CommitId> =
            inf.parents.iter().filter(|p| !self.held[to].contains(p)).copied().collect();
        if !missing.is_empty() {
            match got {
                Received::Pending { id: got_id, missing: got_missing } => {
                    assert_eq!(got_id, id);
                    assert_eq!(got_missing.into_iter().collect::<BTreeSet<_>>(), missing);
                }
                other => panic!("expected Pending, got {other:?}"),
            }
            self.waiting[to].insert(id);
            return;
        }
        let Received::Applied(applied) = got else { panic!("expected Applied, got {got:?}") };
        assert_eq!(applied.first(), Some(&id), "the received commit is applied first");
        self.held[to].insert(id);
        self.waiting[to].remove(&id);
        // Release: whatever waits with all its parents held, transitively.
        let mut released = BTreeSet::new();
        loop {
            let ready: Vec<CommitId> = self.waiting[to]
                .iter()
                .filter(|w| self.commits[w].parents.iter().all(|p| self.held[to].contains(p)))
                .copied()
                .collect();
            if ready.is_empty() {
                break;
            }
            for w in ready {
                self.waiting[to].remove(&w);
                self.held[to].insert(w);
                released.insert(w);
            }
        }
        let got_released: BTreeSet<CommitId> = applied.iter().skip(1).copied().collect();
        assert_eq!(got_released, released, "released waiting commits");
        assert_eq!(applied.len(), released.len() + 1, "a commit is applied once");
        // Parents before children.
        let mut seen: BTreeSet<CommitId> =
            self.held[to].iter().filter(|c| !applied.contains(c)).copied().collect();
        for a in &applied {
            assert!(
                self.commits[a].parents.iter().all(|p| seen.contains(p)),
                "applied before a parent"
            );
            seen.insert(*a);
        }
    }

    /// Checks every replica against the model and the brute-force oracle.
    pub fn check(&mut self) {
        for i in 0..self.k {
            let want = self.model_state(i);
            assert_eq!(
                triples_of(&self.reps[i]),
                want,
                "replica {i}: state differs from the oracle"
            );
            assert_eq!(self.reps[i].state_root(), root_of(&want), "replica {i}: root");
            assert_eq!(self.reps[i].len(), self.held[i].len(), "replica {i}: len");
            assert_eq!(self.reps[i].pending(), self.waiting[i].len(), "replica {i}: pending");
            let ids: BTreeSet<CommitId> = self.reps[i].ids().collect();
            assert_eq!(ids, self.held[i], "replica {i}: commits held");
            assert_eq!(
                self.reps[i].heads(),
                oracle_heads(&self.commits, &self.held[i]),
                "replica {i}: heads"
            );
            // The version vector counts, per author, the commits held.
            let mut vv = llmkg_sync::vv::VersionVector::new();
            let mut counts: BTreeMap<NodeId, u64> = BTreeMap::new();
            for c in &self.held[i] {
                *counts.entry(self.commits[c].author).or_default() += 1;
            }
            for (a, n) in counts {
                vv.observe(a, n);
            }
            assert_eq!(self.reps[i].version_vector(), vv, "replica {i}: version vector");
            // ids() is in applied order: parents first.
            let mut seen = BTreeSet::new();
            for id in self.reps[i].ids() {
                assert!(
                    self.commits[&id].parents.iter().all(|p| seen.contains(p)),
                    "ids() not parents-first"
                );
                seen.insert(id);
            }
        }
    }

    /// Every replica sends every other all it holds, until all hold the same commits.
    pub fn exchange_all(&mut self) {
        for _ in 0..2 {
            for from in 0..self.k {
                for to in 0..self.k {
                    if from != to {
                        self.deliver(from, to, u64::MAX, None);
                    }
                }
            }
        }
    }

    /// Every commit written, parents first (by the order written).
    pub fn all_envelopes(&self) -> Vec<Vec<u8>> {
        let mut all: Vec<&Info> = self.commits.values().collect();
        // Sorting by depth puts parents first.
        let depth = depths(&self.commits);
        all.sort_by_key(|c| (depth[&c.id], c.id));
        all.into_iter().map(|c| c.bytes.clone()).collect()
    }
}

/// Length of the longest parent path from a root, per commit.
pub fn depths(commits: &BTreeMap<CommitId, Info>) -> HashMap<CommitId, usize> {
    fn go(
        commits: &BTreeMap<CommitId, Info>,
        id: CommitId,
        memo: &mut HashMap<CommitId, usize>,
    ) -> usize {
        if let Some(d) = memo.get(&id) {
            return *d;
        }
        let d = commits[&id].parents.iter().map(|p| go(commits, *p, memo) + 1).max().unwrap_or(0);
        memo.insert(id, d);
        d
    }
    let mut memo = HashMap::new();
    for id in commits.keys() {
        go(commits, *id, &mut memo);
    }
    memo
}

/// A fresh observer replica (key seed `seed`) fed `envelopes` in order; every one must be
/// accepted (possibly after waiting).
pub fn observer(seed: u8, envelopes: &[Vec<u8>]) -> Replica<MemoryKv> {
    let mut r = open(MemoryKv::new(), seed, ReplicaConfig::default());
    feed(&mut r, envelopes);
    r
}

/// An observer's wall clock: later than any stamp of the tests (the clock rule only bounds
/// stamps from above).
pub const FAR_FUTURE: i64 = BASE + 100 * 365 * 24 * 3600 * 1_000_000;

pub fn feed(r: &mut Replica<MemoryKv>, envelopes: &[Vec<u8>]) {
    for e in envelopes {
        r.receive(ts(FAR_FUTURE), e).unwrap_or_else(|err| panic!("honest commit refused: {err}"));
    }
}

/// A commit built and signed by hand.
pub fn craft(
    key: &NodeKeypair,
    parents: Vec<CommitId>,
    changes: ChangeSet,
    timestamp: i64,
    root: StateRoot,
) -> SignedCommit {
    let c =
        Commit::new(parents, changes, key.node_id(), org(), ts(timestamp), "crafted".into(), root)
            .unwrap();
    SignedCommit::sign(key, c).unwrap()
}

pub fn tolerant_config() -> ReplicaConfig {
    let mut c = ReplicaConfig::default();
    c.max_clock_ahead = Duration::from_secs(10 * 365 * 24 * 3600);
    c
}
