#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! A peer controls the bytes. Every malformed, forged or rule-breaking commit is refused with
//! its typed error and leaves the replica exactly as it was — in memory and in its store —
//! and the waiting room stays within its bounds. A replica reopened from its store is the
//! same replica.

use crate::common;

use std::collections::BTreeSet;

use common::*;
use llmkg_federation_core::{
    ChangeSet, CommitId, CommitPolicy, CommitRefusal, CommitVerifyError, MemoryKv, NodeId,
    NodeKeypair, SignedCommit, Signer, SignerError, SigningInput, StateRoot, Triple,
};
use llmkg_sync::hlc::ClockError;
use llmkg_sync::replica::{ReceiveError, Received, Replica, ReplicaConfig, RuleViolation};
use llmkg_sync::vv::VersionVector;
use proptest::prelude::*;

/// Wall clock of the victim: a second after the honest writes.
const WALL: i64 = BASE + 1_000_000;

/// Everything observable about a replica.
#[derive(Debug, PartialEq)]
struct Observed {
    root: StateRoot,
    heads: Vec<CommitId>,
    len: usize,
    pending: usize,
    ids: Vec<CommitId>,
    vv: VersionVector,
    triples: BTreeSet<Triple>,
    store: Vec<(Vec<u8>, Vec<u8>)>,
}

fn observe(r: &mut Replica<MemoryKv>, kv: &MemoryKv) -> Observed {
    Observed {
        root: r.state_root(),
        heads: r.heads(),
        len: r.len(),
        pending: r.pending(),
        ids: r.ids().collect(),
        vv: r.version_vector(),
        triples: triples_of(r),
        store: scan_all(kv),
    }
}

fn root_of_state(state: &BTreeSet<Triple>) -> StateRoot {
    root_of(state)
}

/// The state `base` with `changes` applied (they must apply).
fn after(base: &BTreeSet<Triple>, changes: &ChangeSet) -> BTreeSet<Triple> {
    let mut s = base.clone();
    for t in changes.removed() {
        assert!(s.remove(t));
    }
    for t in changes.added() {
        assert!(s.insert(t.clone()));
    }
    s
}

/// A victim replica holding a small concurrent history:
/// a1 (+t0 +t1 by A), b1 (-t0 by B, saw a1), a2 (+t2 by A, concurrent with b1).
/// State {t1, t2}, heads {a2, b1}.
struct Fixture {
    victim: Replica<MemoryKv>,
    kv: MemoryKv,
    a: Replica<MemoryKv>,
    a1: SignedCommit,
    b1: SignedCommit,
    a2: SignedCommit,
    /// A third author's key, for crafted commits.
    c: NodeKeypair,
}

impl Fixture {
    fn new() -> Self {
        Self::with_config(ReplicaConfig::default())
    }

    fn with_config(config: ReplicaConfig) -> Self {
        let mut a = open(MemoryKv::new(), 1, ReplicaConfig::default());
        let mut b = open(MemoryKv::new(), 2, ReplicaConfig::default());
        let a1 = a.write(ts(BASE), ChangeSet::adding([triple(0), triple(1)]), "a1").unwrap();
        b.receive(ts(BASE), a1.as_bytes()).unwrap();
        let b1 = b.write(ts(BASE), ChangeSet::removing([triple(0)]), "b1").unwrap();
        let a2 = a.write(ts(BASE), ChangeSet::adding([triple(2)]), "a2").unwrap();
        let kv = MemoryKv::new();
        let mut victim = open(kv.clone(), 10, config);
        for c in [&a1, &b1, &a2] {
            victim.receive(ts(WALL), c.as_bytes()).unwrap();
        }
        assert_eq!(triples_of(&victim), [triple(1), triple(2)].into_iter().collect());
        Self { victim, kv, a, a1, b1, a2, c: keypair(3) }
    }

    fn state(&self) -> BTreeSet<Triple> {
        triples_of(&self.victim)
    }

    fn observe(&mut self) -> Observed {
        observe(&mut self.victim, &self.kv)
    }

    /// Receives `bytes`, which must be refused and change nothing; returns the error.
    fn refused(&mut self, bytes: &[u8]) -> ReceiveError {
        self.refused_at(WALL, bytes)
    }

    fn refused_at(&mut self, wall: i64, bytes: &[u8]) -> ReceiveError {
        let before = self.observe();
        let refused = self.victim.metrics().refused;
        let err = match self.victim.receive(ts(wall), bytes) {
            Ok(r) => panic!("accepted: {r:?}"),
            Err(e) => e,
        };
        assert_eq!(self.observe(), before, "a refused commit changed the replica ({err})");
        assert_eq!(self.victim.metrics().refused, refused + 1);
        err
    }

    /// A commit by C on the victim's heads, with the right root unless `root` is given.
    fn by_c(&self, changes: ChangeSet, timestamp: i64, root: Option<StateRoot>) -> SignedCommit {
        let root = root.unwrap_or_else(|| root_of_state(&after(&self.state(), &changes)));
        craft(&self.c, self.victim.heads(), changes, timestamp, root)
    }
}

fn rule(err: ReceiveError) -> RuleViolation {
    match err {
        ReceiveError::Rule { violation, .. } => violation,
        other => panic!("expected a rule violation, got {other}"),
    }
}

#[test]
fn a_well_formed_commit_by_hand_is_accepted() {
    // The control for the crafted commits below: right parents, stamp, changes and root.
    let mut f = Fixture::new();
    let good = f.by_c(ChangeSet::adding([triple(3)]), BASE + 10, None);
    assert_eq!(
        f.victim.receive(ts(WALL), good.as_bytes()).unwrap(),
        Received::Applied(vec![good.id()])
    );
    assert!(f.victim.state().contains(&triple(3)));
    assert_eq!(f.victim.heads(), vec![good.id()]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random bytes never decode into a commit.
    #[test]
    fn random_bytes_are_unverifiable(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut f = Fixture::new();
        let err = f.refused(&bytes);
        prop_assert!(matches!(err, ReceiveError::Unverifiable(_)), "{}", err);
    }

    /// A valid envelope with random bytes overwritten is refused, unless the bytes happened
    /// to be the same.
    #[test]
    fn scribbled_envelopes_are_unverifiable(at in any::<prop::sample::Index>(), junk in prop::collection::vec(any::<u8>(), 1..8)) {
        let mut f = Fixture::new();
        let good = f.by_c(ChangeSet::adding([triple(3)]), BASE + 10, None);
        let mut bytes = good.as_bytes().to_vec();
        let start = at.index(bytes.len());
        for (n, j) in junk.iter().enumerate() {
            if let Some(b) = bytes.get_mut(start + n) {
                *b = *j;
            }
        }
        prop_assume!(bytes != good.as_bytes());
        let err = f.refused(&bytes);
        prop_assert!(matches!(err, ReceiveError::Unverifiable(_)), "{}", err);
    }
}

#[test]
fn truncated_extended_and_bit_flipped_envelopes_are_unverifiable() {
    let mut f = Fixture::new();
    let good = f.by_c(ChangeSet::adding([triple(3)]), BASE + 10, None);
    let bytes = good.as_bytes();
    for n in 0..bytes.len() {
        let err = f.refused(&bytes[..n]);
        assert!(matches!(err, ReceiveError::Unverifiable(_)), "prefix {n}: {err}");
    }
    // Trailing bytes: another spelling of the same commit is not the commit.
    for extra in [&[0u8][..], &[1, 2, 3]] {
        let long = [bytes, extra].concat();
        let err = f.refused(&long);
        assert!(matches!(err, ReceiveError::Unverifiable(_)), "extended: {err}");
    }
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.to_vec();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let err = f.refused(&flipped);
        assert!(matches!(err, ReceiveError::Unverifiable(_)), "bit {bit}: {err}");
    }
    // The original still goes through afterwards.
    assert!(matches!(f.victim.receive(ts(WALL), bytes).unwrap(), Received::Applied(_)));
}

/// Signs for one node with another node's key.
struct Impostor {
    claims: NodeId,
    key: NodeKeypair,
}

impl Signer for Impostor {
    fn node_id(&self) -> NodeId {
        self.claims
    }
    fn sign(&self, input: &SigningInput) -> Result<[u8; 64], SignerError> {
        Ok(self.key.sign_input(input))
    }
}

#[test]
fn commits_signed_by_another_key_are_unverifiable() {
    let mut f = Fixture::new();
    let changes = ChangeSet::adding([triple(3)]);
    let root = root_of_state(&after(&f.state(), &changes));
    let commit = llmkg_federation_core::Commit::new(
        f.victim.heads(),
        changes,
        f.c.node_id(),
        org(),
        ts(BASE + 10),
        "forged".into(),
        root,
    )
    .unwrap();
    let mallory = keypair(66);
    // C named as the signer, Mallory's signature.
    let forged = SignedCommit::sign_with(
        &Impostor { claims: f.c.node_id(), key: keypair(66) },
        commit.clone(),
    )
    .unwrap();
    let err = f.refused(forged.as_bytes());
    assert!(matches!(err, ReceiveError::Unverifiable(CommitVerifyError::Signature(_))), "{err}");
    // Mallory named as the signer with her valid signature over C's commit.
    let mut bytes = forged.as_bytes().to_vec();
    let c_id = f.c.node_id();
    let tail = bytes.len() - 97;
    let at = (tail..bytes.len() - 31)
        .find(|i| bytes[*i..*i + 32] == c_id.as_bytes()[..])
        .expect("signer in the tail");
    bytes[at..at + 32].copy_from_slice(mallory.node_id().as_bytes());
    let err = f.refused(&bytes);
    assert!(
        matches!(err, ReceiveError::Unverifiable(CommitVerifyError::SignerNotAuthor { .. })),
        "{err}"
    );
}

#[test]
fn a_lying_state_root_is_refused() {
    let mut f = Fixture::new();
    let changes = ChangeSet::adding([triple(3)]);
    let honest = root_of_state(&after(&f.state(), &changes));
    for lie in
        [root_of_state(&BTreeSet::new()), root_of_state(&f.state()), StateRoot::from_bytes([7; 32])]
    {
        let bad = f.by_c(changes.clone(), BASE + 10, Some(lie));
        match rule(f.refused(bad.as_bytes())) {
            RuleViolation::StateRootMismatch { claimed, actual } => {
                assert_eq!((claimed, actual), (lie, honest));
            }
            other => panic!("{other}"),
        }
    }
}

#[test]
fn changes_that_do_not_apply_are_refused() {
    let mut f = Fixture::new();
    // Removing an absent triple, adding a present one, and both mixed with good changes.
    let cases = [
        ChangeSet::removing([triple(0)]),
        ChangeSet::removing([triple(5)]),
        ChangeSet::adding([triple(1)]),
        ChangeSet::new([triple(3)], [triple(0)]).unwrap(),
        ChangeSet::new([triple(2), triple(3)], [triple(1)]).unwrap(),
    ];
    for changes in cases {
        let bad = f.by_c(changes.clone(), BASE + 10, Some(root_of_state(&f.state())));
        assert!(
            matches!(rule(f.refused(bad.as_bytes())), RuleViolation::ChangesDoNotApply(_)),
            "{changes:?}"
        );
    }
}

#[test]
fn changes_are_checked_against_the_authors_past_not_the_receivers_state() {
    let mut f = Fixture::new();
    // On a1 alone the author saw {t0, t1}: removing t0 is effective there (though b1 removed
    // it in the victim's state), adding t0 is not (though t0 is absent from the victim's).
    let past: BTreeSet<Triple> = [triple(0), triple(1)].into_iter().collect();
    let add_t0 = ChangeSet::adding([triple(0)]);
    let bad = craft(&f.c, vec![f.a1.id()], add_t0.clone(), BASE + 10, root_of_state(&past));
    assert!(matches!(rule(f.refused(bad.as_bytes())), RuleViolation::ChangesDoNotApply(_)));
    // And a root computed from the receiver's state is a lie.
    let remove_t0 = ChangeSet::removing([triple(0)]);
    let wrong = root_of_state(&after(&f.state(), &add_t0));
    let bad = craft(&f.c, vec![f.a1.id()], add_t0, BASE + 11, wrong);
    assert!(matches!(rule(f.refused(bad.as_bytes())), RuleViolation::ChangesDoNotApply(_)));
    let good = craft(
        &f.c,
        vec![f.a1.id()],
        remove_t0.clone(),
        BASE + 12,
        root_of_state(&after(&past, &remove_t0)),
    );
    assert!(matches!(f.victim.receive(ts(WALL), good.as_bytes()).unwrap(), Received::Applied(_)));
    // Its removal saw only a1's dot: the state is unchanged, {t1, t2}, with three heads.
    assert_eq!(f.state(), [triple(1), triple(2)].into_iter().collect());
    assert_eq!(f.victim.heads().len(), 3);
}

#[test]
fn parents_that_are_ancestors_of_one_another_are_refused() {
    let mut f = Fixture::new();
    let changes = ChangeSet::adding([triple(3)]);
    // a1 is an ancestor of b1 and of a2. The state of the past is the state of b1: {t1}.
    let past: BTreeSet<Triple> = [triple(1)].into_iter().collect();
    let root = root_of_state(&after(&past, &changes));
    for parents in [vec![f.a1.id(), f.b1.id()], vec![f.b1.id(), f.a1.id()]] {
        let bad = craft(&f.c, parents, changes.clone(), BASE + 10, root);
        match rule(f.refused(bad.as_bytes())) {
            RuleViolation::ParentsNotConcurrent { ancestor, descendant } => {
                assert_eq!((ancestor, descendant), (f.a1.id(), f.b1.id()));
            }
            other => panic!("{other}"),
        }
    }
    // With all three.
    let all = {
        let mut s = after(&f.state(), &changes);
        s.insert(triple(3));
        s
    };
    let bad =
        craft(&f.c, vec![f.a2.id(), f.a1.id(), f.b1.id()], changes, BASE + 10, root_of_state(&all));
    assert!(matches!(rule(f.refused(bad.as_bytes())), RuleViolation::ParentsNotConcurrent { .. }));
}

#[test]
fn timestamps_not_after_a_parent_or_far_ahead_are_refused() {
    let mut f = Fixture::new();
    let latest =
        [&f.a1, &f.b1, &f.a2].iter().map(|c| c.commit().timestamp().as_micros()).max().unwrap();
    let a2_ts = f.a2.commit().timestamp().as_micros();
    let b1_ts = f.b1.commit().timestamp().as_micros();
    let changes = ChangeSet::adding([triple(3)]);
    for stamp in [latest, a2_ts.min(b1_ts), BASE - 1, i64::MIN] {
        let bad = f.by_c(changes.clone(), stamp, None);
        assert!(
            matches!(
                rule(f.refused(bad.as_bytes())),
                RuleViolation::Clock(ClockError::NotAfterParent { .. })
            ),
            "stamp {stamp}"
        );
    }
    // Too far ahead of the victim's clock: refused now, accepted once its clock caught up.
    let ahead = f.victim.config().max_clock_ahead.as_micros() as i64;
    let far = f.by_c(changes.clone(), WALL + ahead + 1, None);
    match rule(f.refused(far.as_bytes())) {
        RuleViolation::Clock(ClockError::TooFarAhead { timestamp, wall, tolerance }) => {
            assert_eq!(
                (timestamp, wall, tolerance),
                (ts(WALL + ahead + 1), ts(WALL), f.victim.config().max_clock_ahead)
            );
        }
        other => panic!("{other}"),
    }
    // Still too far a microsecond before the stamp is within the tolerance.
    let err = f.refused_at(WALL, far.as_bytes());
    assert!(matches!(rule(err), RuleViolation::Clock(ClockError::TooFarAhead { .. })));
    // Exactly at the tolerance is accepted.
    let mut g = Fixture::new();
    let edge = g.by_c(changes.clone(), WALL + ahead, None);
    assert!(matches!(g.victim.receive(ts(WALL), edge.as_bytes()).unwrap(), Received::Applied(_)));
    assert!(matches!(
        f.victim.receive(ts(WALL + 1), far.as_bytes()).unwrap(),
        Received::Applied(_)
    ));
    // The receiver's clock follows the stamps it holds: its next own write is after it.
    let next = f.victim.write(ts(WALL), ChangeSet::adding([triple(4)]), "").unwrap();
    assert!(next.commit().timestamp() > far.commit().timestamp());
}

#[test]
fn equivocation_is_refused_in_either_order() {
    // C makes two different commits on the same parents: whichever comes second is refused.
    let f = Fixture::new();
    let x1 = f.by_c(ChangeSet::adding([triple(3)]), BASE + 10, None);
    let x2 = f.by_c(ChangeSet::adding([triple(4)]), BASE + 10, None);
    for (first, second) in [(&x1, &x2), (&x2, &x1)] {
        let mut g = Fixture::new();
        g.victim.receive(ts(WALL), first.as_bytes()).unwrap();
        match rule(g.refused(second.as_bytes())) {
            RuleViolation::Equivocation { author, seq, held } => {
                assert_eq!((author, seq, held), (f.c.node_id(), 1, first.id()));
            }
            other => panic!("{other}"),
        }
    }
    // A's commit that does not descend from A's latest (a2): concurrent with it.
    let mut g = Fixture::new();
    let akey = keypair(1);
    let past: BTreeSet<Triple> = [triple(1)].into_iter().collect(); // the state of b1
    let changes = ChangeSet::adding([triple(5)]);
    let fork = craft(
        &akey,
        vec![g.b1.id()],
        changes.clone(),
        BASE + 10,
        root_of_state(&after(&past, &changes)),
    );
    match rule(g.refused(fork.as_bytes())) {
        RuleViolation::Equivocation { author, seq, held } => {
            assert_eq!((author, seq, held), (akey.node_id(), 2, g.a2.id()));
        }
        other => panic!("{other}"),
    }
    // A root commit by an author who already has commits.
    let root = craft(
        &akey,
        vec![],
        changes.clone(),
        BASE + 10,
        root_of_state(&after(&BTreeSet::new(), &changes)),
    );
    assert!(matches!(rule(g.refused(root.as_bytes())), RuleViolation::Equivocation { seq: 1, .. }));
    // A's honest next commit (on both heads) is still accepted.
    let next = g.a.write(ts(BASE), ChangeSet::adding([triple(5)]), "a3");
    // a's replica does not hold b1: its commit descends from a2 only, which is fine.
    let next = next.unwrap();
    assert!(matches!(g.victim.receive(ts(WALL), next.as_bytes()).unwrap(), Received::Applied(_)));
}

#[test]
fn oversized_envelopes_are_refused() {
    let mut config = ReplicaConfig::default();
    config.max_commit_bytes = 400;
    let mut f = Fixture::with_config(config);
    let many: Vec<Triple> = (10..40).map(triple).collect();
    let big = f.by_c(ChangeSet::adding(many), BASE + 10, None);
    assert!(big.as_bytes().len() > 400);
    match f.refused(big.as_bytes()) {
        ReceiveError::TooLarge { len, limit } => {
            assert_eq!((len, limit), (big.as_bytes().len(), 400))
        }
        other => panic!("{other}"),
    }
    // Garbage that long is refused for its length before anything else.
    assert!(matches!(f.refused(&vec![0xff; 401]), ReceiveError::TooLarge { .. }));
    // An envelope of exactly the limit is looked at.
    let small = f.by_c(ChangeSet::adding([triple(3)]), BASE + 10, None);
    assert!(small.as_bytes().len() <= 400);
    assert!(f.victim.receive(ts(WALL), small.as_bytes()).is_ok());
}

/// An author's chain of `n` commits on its own replica, each adding one triple.
fn chain(seed: u8, n: usize) -> Vec<SignedCommit> {
    let mut r = open(MemoryKv::new(), seed, ReplicaConfig::default());
    (0..n)
        .map(|i| r.write(ts(BASE + i as i64), ChangeSet::adding([triple(100 + i)]), "").unwrap())
        .collect()
}

#[test]
fn a_flood_of_unparented_commits_is_bounded_by_count() {
    let mut config = ReplicaConfig::default();
    config.max_pending = 8;
    let mut f = Fixture::with_config(config);
    let commits = chain(4, 30);
    let store = scan_all(&f.kv);
    let (root, len) = (f.victim.state_root(), f.victim.len());
    let mut accepted = Vec::new();
    for c in &commits[1..] {
        match f.victim.receive(ts(WALL), c.as_bytes()) {
            Ok(Received::Pending { id, missing }) => {
                assert_eq!(id, c.id());
                assert_eq!(missing, c.commit().parents().to_vec());
                accepted.push(c.id());
            }
            Err(ReceiveError::PendingFull { id }) => assert_eq!(id, c.id()),
            other => panic!("{other:?}"),
        }
        assert!(f.victim.pending() <= 8);
        assert_eq!((f.victim.state_root(), f.victim.len()), (root, len));
        assert_eq!(scan_all(&f.kv), store, "waiting commits are not stored");
    }
    assert_eq!(accepted.len(), 8);
    assert_eq!(f.victim.pending(), 8);
    // The waiting room asks for the root.
    assert_eq!(f.victim.wanted(), vec![commits[0].id()]);
    // Offering a waiting commit again does not grow anything.
    for _ in 0..100 {
        assert!(matches!(
            f.victim.receive(ts(WALL), commits[1].as_bytes()).unwrap(),
            Received::Pending { .. }
        ));
    }
    assert_eq!(f.victim.pending(), 8);
    // Flooding with commits whose parents do not exist.
    let fake = craft(
        &keypair(5),
        vec![CommitId::from_bytes([9; 32])],
        ChangeSet::adding([triple(0)]),
        BASE,
        root,
    );
    assert!(matches!(
        f.victim.receive(ts(WALL), fake.as_bytes()),
        Err(ReceiveError::PendingFull { .. })
    ));
    // The root releases the 8 that wait, in order.
    let got = f.victim.receive(ts(WALL), commits[0].as_bytes()).unwrap();
    let want: Vec<CommitId> = commits[..9].iter().map(|c| c.id()).collect();
    assert_eq!(got, Received::Applied(want));
    assert_eq!(f.victim.pending(), 0);
    assert!(f.victim.wanted().is_empty());
    for c in &commits[9..] {
        assert!(matches!(f.victim.receive(ts(WALL), c.as_bytes()).unwrap(), Received::Applied(_)));
    }
    assert_eq!(f.victim.len(), 3 + 30);
}

#[test]
fn a_flood_of_unparented_commits_is_bounded_by_bytes() {
    let commits = chain(4, 30);
    let size = commits[5].as_bytes().len();
    let mut config = ReplicaConfig::default();
    config.max_pending_bytes = size * 5 + size / 2;
    let mut f = Fixture::with_config(config);
    let store = scan_all(&f.kv);
    let mut waiting_bytes = 0;
    for c in &commits[1..] {
        match f.victim.receive(ts(WALL), c.as_bytes()) {
            Ok(Received::Pending { .. }) => waiting_bytes += c.as_bytes().len(),
            Err(ReceiveError::PendingFull { .. }) => {
                assert!(waiting_bytes + c.as_bytes().len() > size * 5 + size / 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(waiting_bytes <= size * 5 + size / 2);
        assert_eq!(scan_all(&f.kv), store);
    }
    assert_eq!(f.victim.pending(), 5);
    // Once released, the room is free again.
    f.victim.receive(ts(WALL), commits[0].as_bytes()).unwrap();
    assert_eq!(f.victim.pending(), 0);
    for c in &commits[8..14] {
        let _ = f.victim.receive(ts(WALL), c.as_bytes());
        assert!(f.victim.pending() <= 5);
    }
    assert_eq!(f.victim.pending(), 5);
}

#[test]
fn a_waiting_commit_that_breaks_a_rule_is_dropped_when_released() {
    let mut f = Fixture::new();
    let parent = f.by_c(ChangeSet::adding([triple(3)]), BASE + 10, None);
    let past = after(&f.state(), parent.commit().changes());
    // The child lies about its root; it waits for its parent first.
    let child = craft(
        &f.c,
        vec![parent.id()],
        ChangeSet::adding([triple(4)]),
        BASE + 11,
        root_of_state(&past),
    );
    assert!(matches!(
        f.victim.receive(ts(WALL), child.as_bytes()).unwrap(),
        Received::Pending { .. }
    ));
    let store = scan_all(&f.kv);
    assert_eq!(
        f.victim.receive(ts(WALL), parent.as_bytes()).unwrap(),
        Received::Applied(vec![parent.id()])
    );
    assert_eq!(f.victim.pending(), 0);
    assert!(!f.victim.contains(&child.id()));
    assert_eq!(f.state(), past);
    assert_eq!(f.victim.heads(), vec![parent.id()]);
    assert_eq!(scan_all(&f.kv).len(), store.len() + 1, "only the parent is stored");
}

/// Refuses every commit by one author.
struct Ban(NodeId);

impl CommitPolicy for Ban {
    fn check(&self, commit: &SignedCommit) -> Result<(), CommitRefusal> {
        if commit.commit().author() == self.0 {
            Err(CommitRefusal::NoCertificate { author: self.0 })
        } else {
            Ok(())
        }
    }
}

#[test]
fn endlessly_repeated_commits_are_known_and_change_nothing() {
    let mut f = Fixture::new();
    let before = f.observe();
    let dups = f.victim.metrics().duplicates;
    for _ in 0..300 {
        for c in [&f.a1.clone(), &f.b1.clone(), &f.a2.clone()] {
            assert_eq!(f.victim.receive(ts(WALL), c.as_bytes()).unwrap(), Received::Known(c.id()));
        }
    }
    assert_eq!(f.observe(), before);
    assert_eq!(f.victim.metrics().duplicates, dups + 900);
}

#[test]
fn reopening_from_the_store_gives_the_same_replica() {
    let mut f = Fixture::new();
    // Refused and waiting commits leave no trace in the store.
    let lie =
        f.by_c(ChangeSet::adding([triple(3)]), BASE + 10, Some(StateRoot::from_bytes([1; 32])));
    let _ = f.refused(lie.as_bytes());
    let mine = f.victim.write(ts(WALL), ChangeSet::removing([triple(1)]), "v").unwrap();
    let mut reopened =
        Replica::open(f.kv.clone(), keypair(10), org(), ReplicaConfig::default()).unwrap();
    let mut before = f.observe();
    before.pending = 0;
    assert_eq!(observe(&mut reopened, &f.kv), before);
    // The reopened replica continues its own chain and clock: peers accept its next commit.
    let next = reopened.write(ts(BASE), ChangeSet::adding([triple(6)]), "after restart").unwrap();
    assert!(next.commit().timestamp() > mine.commit().timestamp());
    let mut peer = observer(20, &[f.a1.encode(), f.b1.encode(), f.a2.encode(), mine.encode()]);
    assert!(matches!(peer.receive(ts(WALL), next.as_bytes()).unwrap(), Received::Applied(_)));
    assert_eq!(peer.state_root(), reopened.state_root());
    // What it stored after the restart is kept with the rest: a second restart sees it all.
    let mut after_write = observe(&mut reopened, &f.kv);
    let mut third =
        Replica::open(f.kv.clone(), keypair(10), org(), ReplicaConfig::default()).unwrap();
    after_write.pending = 0;
    assert_eq!(observe(&mut third, &f.kv), after_write);
    assert_eq!(scan_all(&f.kv).len(), third.len());
    assert_eq!(third.len(), 5);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Every replica of a random history, reopened from (a clone of) its store, has the same
    /// state root, heads, commits and version vector; the store holds exactly its commits.
    #[test]
    fn reopened_replicas_match_after_random_histories(
        (k, skew, steps) in (2usize..=4, any::<u64>(), prop::collection::vec(step(true), 1..24)),
    ) {
        let mut sim = Sim::honest(k, skew);
        for s in &steps {
            sim.run(s);
        }
        for i in 0..k {
            let kv = sim.kvs[i].clone();
            let mut before = observe(&mut sim.reps[i], &kv);
            before.pending = 0;
            let mut again = Replica::open(kv.clone(), keypair(i as u8 + 1), org(), ReplicaConfig::default()).unwrap();
            prop_assert_eq!(observe(&mut again, &kv), before);
            prop_assert_eq!(scan_all(&kv).len(), sim.held[i].len());
        }
    }
}

/// Node 10's replica in `kv`, whose policy refuses every commit by node `banned`.
fn banning(kv: MemoryKv, banned: u8) -> Replica<MemoryKv> {
    Replica::open_with_policy(
        kv,
        keypair(10),
        org(),
        ReplicaConfig::default(),
        Ban(keypair(banned).node_id()),
    )
    .unwrap()
}

#[test]
fn policy_refusals_change_nothing_even_for_waiting_commits() {
    let mut a = open(MemoryKv::new(), 1, ReplicaConfig::default());
    let c1 = a.write(ts(BASE), ChangeSet::adding([triple(0)]), "").unwrap();
    let c2 = a.write(ts(BASE), ChangeSet::adding([triple(1)]), "").unwrap();
    let kv = MemoryKv::new();
    let mut v = banning(kv.clone(), 1);
    let before = observe(&mut v, &kv);
    for c in [&c2, &c1] {
        assert!(matches!(v.receive(ts(WALL), c.as_bytes()), Err(ReceiveError::Refused { .. })));
        assert_eq!(observe(&mut v, &kv), before);
    }
}

/// A store whose writes fail while `fail` is set.
#[derive(Clone)]
struct Failing {
    inner: MemoryKv,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl llmkg_federation_core::KvStore for Failing {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, llmkg_federation_core::KvError> {
        self.inner.get(key)
    }
    fn scan(
        &self,
        start: std::ops::Bound<&[u8]>,
        end: std::ops::Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<llmkg_federation_core::kv::KvPair>, llmkg_federation_core::KvError> {
        self.inner.scan(start, end, limit)
    }
    fn write(
        &self,
        batch: llmkg_federation_core::KvBatch,
    ) -> Result<(), llmkg_federation_core::KvError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(llmkg_federation_core::KvError::backend("injected: store unavailable"));
        }
        self.inner.write(batch)
    }
}

/// A local write applies to the state in place when nothing held is concurrent with it; one
/// that is refused afterwards (by the policy, or because it cannot be stored) must leave the
/// state, the heads and the store as they were, on an empty replica (the bulk path) and on one
/// that holds triples, whatever the write adds and removes. The replica writes again after.
#[test]
fn refused_local_writes_leave_the_replica_as_it_was() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut a = open(MemoryKv::new(), 1, ReplicaConfig::default());
    let c1 = a.write(ts(BASE), ChangeSet::adding((0..6).map(triple)), "").unwrap();
    let writes = [
        ChangeSet::adding((10..40).map(triple)),
        ChangeSet::new((10..20).map(triple).collect::<Vec<_>>(), vec![triple(1), triple(4)])
            .unwrap(),
    ];
    for held in [false, true] {
        for changes in &writes {
            if !held && !changes.removed().is_empty() {
                continue;
            }
            // Refused by the policy.
            let kv = MemoryKv::new();
            let mut v = banning(kv.clone(), 10);
            if held {
                v.receive(ts(WALL), c1.as_bytes()).unwrap();
            }
            let before = observe(&mut v, &kv);
            let refused = v.write(ts(WALL), changes.clone(), "refused");
            assert!(matches!(refused, Err(llmkg_sync::replica::WriteError::Refused(_))));
            assert_eq!(observe(&mut v, &kv), before);
            // Not stored.
            let fail = std::sync::Arc::new(AtomicBool::new(false));
            let kv = Failing { inner: MemoryKv::new(), fail: fail.clone() };
            let mut v =
                Replica::open(kv.clone(), keypair(10), org(), ReplicaConfig::default()).unwrap();
            if held {
                v.receive(ts(WALL), c1.as_bytes()).unwrap();
            }
            let (root, heads, triples) = (v.state_root(), v.heads(), v.state().triples());
            fail.store(true, Ordering::SeqCst);
            let failed = v.write(ts(WALL), changes.clone(), "unstored");
            assert!(matches!(failed, Err(llmkg_sync::replica::WriteError::Storage(_))));
            assert_eq!((v.state_root(), v.heads(), v.state().triples()), (root, heads, triples));
            assert_eq!(scan_all(&kv.inner).len(), usize::from(held));
            fail.store(false, Ordering::SeqCst);
            let written = v.write(ts(WALL), changes.clone(), "stored").unwrap();
            assert_eq!(v.state_root(), written.commit().state_root());
            assert_eq!(v.heads(), vec![written.id()]);
        }
    }
}
