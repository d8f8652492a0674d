#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Laws of the replica's semantics over random concurrent histories: the state is a function
//! of the commit set, merging is a join (commutative, associative, idempotent), additions
//! win over concurrent removals, timestamps follow causality, and partitions heal.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use llmkg_federation_core::{ChangeSet, CommitId, MemoryKv, Timestamp};
use llmkg_sync::replica::{Received, Replica, ReplicaConfig};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// A random history: 2..=5 replicas, clock skews, steps.
fn history(partial: bool, max_steps: usize) -> impl Strategy<Value = (usize, u64, Vec<Step>)> {
    (2usize..=5, any::<u64>(), prop::collection::vec(step(partial), 1..max_steps))
}

fn run(k: usize, skew: u64, steps: &[Step]) -> Sim {
    let mut sim = Sim::honest(k, skew);
    for s in steps {
        sim.run(s);
    }
    sim
}

fn ids_of(r: &Replica<MemoryKv>) -> BTreeSet<CommitId> {
    r.ids().collect()
}

/// The envelopes replica `r` holds, in its applied order.
fn held(r: &Replica<MemoryKv>) -> Vec<Vec<u8>> {
    r.ids().map(|id| r.commit_bytes(&id).unwrap().unwrap()).collect()
}

/// Delivers every commit `from` holds into `into`.
fn merge_into(into: &mut Replica<MemoryKv>, from: &Replica<MemoryKv>) {
    feed(into, &held(from));
}

fn snapshot(
    r: &mut Replica<MemoryKv>,
) -> (llmkg_federation_core::StateRoot, Vec<CommitId>, BTreeSet<CommitId>) {
    (r.state_root(), r.heads(), ids_of(r))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The same commit set gives the same state root, triples and heads whatever the order of
    /// delivery (commits whose parents are missing wait and are released later).
    #[test]
    fn same_commit_set_same_state_in_any_order(
        (k, skew, steps) in history(true, 24),
        seeds in prop::collection::vec(any::<u64>(), 3),
    ) {
        let sim = run(k, skew, &steps);
        let all = sim.all_envelopes();
        let everything: BTreeSet<CommitId> = sim.commits.keys().copied().collect();
        let want = oracle_state(&sim.commits, &everything);
        let want_heads = oracle_heads(&sim.commits, &everything);
        let mut orders = vec![all.clone(), all.iter().rev().cloned().collect::<Vec<_>>()];
        for s in &seeds {
            let mut o = all.clone();
            o.shuffle(&mut ChaCha8Rng::seed_from_u64(*s));
            orders.push(o);
        }
        for (n, order) in orders.iter().enumerate() {
            let mut r = observer(100 + n as u8, order);
            prop_assert_eq!(r.pending(), 0);
            prop_assert_eq!(r.len(), all.len());
            prop_assert_eq!(&triples_of(&r), &want);
            prop_assert_eq!(r.state_root(), root_of(&want));
            prop_assert_eq!(&r.heads(), &want_heads);
        }
    }

    /// Merging replica states (delivering all of one's commits into another) is commutative,
    /// associative and idempotent.
    #[test]
    fn merge_is_a_join(
        (k, skew, steps) in history(true, 24),
        pick in any::<(u8, u8, u8)>(),
    ) {
        let sim = run(k, skew, &steps);
        let a = &sim.reps[pick.0 as usize % k];
        let b = &sim.reps[pick.1 as usize % k];
        let c = &sim.reps[pick.2 as usize % k];
        let (ea, eb, ec) = (held(a), held(b), held(c));

        // Commutative.
        let mut ab = observer(101, &ea);
        feed(&mut ab, &eb);
        let mut ba = observer(102, &eb);
        feed(&mut ba, &ea);
        prop_assert_eq!(snapshot(&mut ab), snapshot(&mut ba));

        // Associative: (A ⊔ B) ⊔ C = A ⊔ (B ⊔ C).
        let mut ab_c = observer(103, &ea);
        feed(&mut ab_c, &eb);
        feed(&mut ab_c, &ec);
        let mut bc = observer(104, &eb);
        feed(&mut bc, &ec);
        let mut a_bc = observer(105, &ea);
        merge_into(&mut a_bc, &bc);
        prop_assert_eq!(snapshot(&mut ab_c), snapshot(&mut a_bc));

        // The join is the union, and its state the oracle's.
        let union: BTreeSet<CommitId> = ids_of(a).union(&ids_of(b)).copied().collect::<BTreeSet<_>>()
            .union(&ids_of(c)).copied().collect();
        prop_assert_eq!(ids_of(&ab_c), union.clone());
        prop_assert_eq!(triples_of(&ab_c), oracle_state(&sim.commits, &union));

        // Idempotent: delivering again returns Known and changes nothing, in memory or store.
        let before = snapshot(&mut ab);
        let (len, pending) = (ab.len(), ab.pending());
        let dup_before = ab.metrics().duplicates;
        for e in ea.iter().chain(&eb) {
            let got = ab.receive(ts(FAR_FUTURE), e).unwrap();
            prop_assert!(matches!(got, Received::Known(_)), "{:?}", got);
        }
        prop_assert_eq!(snapshot(&mut ab), before);
        prop_assert_eq!((ab.len(), ab.pending()), (len, pending));
        prop_assert_eq!(ab.metrics().duplicates, dup_before + (ea.len() + eb.len()) as u64);
        // A ⊔ A = A.
        let mut aa = observer(106, &ea);
        feed(&mut aa, &ea);
        let mut a1 = observer(107, &ea);
        prop_assert_eq!(snapshot(&mut aa), snapshot(&mut a1));
    }

    /// Add wins: after a full exchange, a triple is present iff some addition of it is not in
    /// the causal past of any removal of it — in particular an addition concurrent with every
    /// removal survives, and an addition every removal saw does not.
    #[test]
    fn additions_concurrent_with_removals_survive(
        (k, skew, steps) in history(true, 28),
    ) {
        let mut sim = run(k, skew, &steps);
        sim.exchange_all();
        sim.check();
        let everything: BTreeSet<CommitId> = sim.commits.keys().copied().collect();
        let past: BTreeMap<CommitId, BTreeSet<CommitId>> =
            everything.iter().map(|c| (*c, ancestors(&sim.commits, *c))).collect();
        for t in &sim.universe {
            let adds: Vec<CommitId> =
                everything.iter().filter(|c| sim.commits[c].added.contains(t)).copied().collect();
            let removes: Vec<CommitId> =
                everything.iter().filter(|c| sim.commits[c].removed.contains(t)).copied().collect();
            let surviving = adds.iter().any(|a| removes.iter().all(|r| !past[r].contains(a)));
            for i in 0..k {
                prop_assert_eq!(sim.reps[i].state().contains(t), surviving, "replica {} triple {:?}", i, t);
            }
        }
    }

    /// Every commit's timestamp is after each of its parents', and never behind its writer's
    /// wall clock, even when wall clocks lag far behind or jump backwards.
    #[test]
    fn timestamps_exceed_parents(
        k in 2usize..=5,
        lags in prop::collection::vec(prop_oneof![Just(0i64), -86_400_000_000i64..0, 0i64..3_600_000_000], 5),
        steps in prop::collection::vec(prop_oneof![
            3 => write_step(),
            3 => deliver_step(true),
            1 => tick_step(),
            1 => (any::<u8>(), -3_600_000_000i64..1_000_000).prop_map(|(who, micros)| Step::Jump { who, micros }),
        ], 1..28),
    ) {
        let mut sim = Sim::new(k, &lags, tolerant_config());
        for s in &steps {
            sim.run(s);
        }
        sim.exchange_all();
        sim.check();
        let mut by_author: BTreeMap<_, Vec<(usize, Timestamp)>> = BTreeMap::new();
        let depth = depths(&sim.commits);
        for c in sim.commits.values() {
            for p in &c.parents {
                prop_assert!(c.timestamp > sim.commits[p].timestamp, "{:?} not after parent", c.id);
            }
            prop_assert!(c.timestamp.as_micros() >= sim.written_at[&c.id]);
            by_author.entry(c.author).or_default().push((depth[&c.id], c.timestamp));
        }
        // An author's commits form a chain, so its stamps strictly increase along it.
        for chain in by_author.values_mut() {
            chain.sort();
            prop_assert!(chain.windows(2).all(|w| w[0].1 < w[1].1));
        }
    }

    /// Replicas isolated in groups for a while (deliveries only within a group), then healed
    /// by a full exchange in random order, converge — over two rounds of partitioning.
    #[test]
    fn partitions_heal_and_converge(
        (k, skew, steps) in history(true, 16),
        steps2 in prop::collection::vec(step(true), 1..16),
        groups in prop::collection::vec(0u8..3, 10),
        heal_seed in any::<u64>(),
    ) {
        let mut sim = Sim::honest(k, skew);
        for (round, steps) in [&steps, &steps2].into_iter().enumerate() {
            let group = |i: usize| groups[round * 5 + i];
            for s in steps {
                if let Step::Deliver { from, to, .. } = *s {
                    let from = from as usize % k;
                    let to = (from + 1 + to as usize % (k - 1)) % k;
                    if group(from) != group(to) {
                        continue;
                    }
                }
                sim.run(s);
                sim.check();
            }
            // Heal: every ordered pair, in random order, twice, shuffled deliveries.
            let mut rng = ChaCha8Rng::seed_from_u64(heal_seed ^ round as u64);
            let mut pairs: Vec<(usize, usize)> =
                (0..k).flat_map(|a| (0..k).filter(move |b| *b != a).map(move |b| (a, b))).collect();
            for _ in 0..2 {
                pairs.shuffle(&mut rng);
                for (n, &(a, b)) in pairs.iter().enumerate() {
                    sim.deliver(a, b, u64::MAX, Some(heal_seed.wrapping_add(n as u64)));
                }
            }
            sim.check();
            let everything: BTreeSet<CommitId> = sim.commits.keys().copied().collect();
            let want = root_of(&oracle_state(&sim.commits, &everything));
            for i in 0..k {
                prop_assert_eq!(&ids_of(&sim.reps[i]), &everything);
                prop_assert_eq!(sim.reps[i].state_root(), want);
                prop_assert_eq!(sim.reps[i].pending(), 0);
            }
            let heads = sim.reps[0].heads();
            prop_assert!(sim.reps.iter().all(|r| r.heads() == heads));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A replica's version vector and heads tell another exactly what it lacks: the commits
    /// `missing_for_vv` lists are the set difference, parents first, and delivered in that
    /// order each applies at once; generations grow from parents to children.
    #[test]
    fn version_vectors_summarize_exactly((k, skew, steps) in history(true, 24)) {
        let mut sim = run(k, skew, &steps);
        sim.check();
        for i in 0..k {
            for c in &sim.held[i] {
                let g = sim.reps[i].generation(c).unwrap();
                for p in &sim.commits[c].parents {
                    prop_assert!(sim.reps[i].generation(p).unwrap() < g);
                }
            }
            for j in 0..k {
                let want: BTreeSet<CommitId> = sim.held[i].difference(&sim.held[j]).copied().collect();
                let listed = sim.reps[i].missing_for_vv(&sim.reps[j].version_vector());
                prop_assert_eq!(listed.iter().copied().collect::<BTreeSet<_>>(), want.clone());
                prop_assert_eq!(listed.len(), want.len());
                match sim.reps[i].missing_for_heads(&sim.reps[j].heads()) {
                    Some(by_heads) => {
                        prop_assert!(sim.reps[j].heads().iter().all(|h| sim.held[i].contains(h)));
                        prop_assert_eq!(by_heads, listed.clone());
                    }
                    None => prop_assert!(sim.reps[j].heads().iter().any(|h| !sim.held[i].contains(h))),
                }
                // Delivered in order to a replica holding exactly j's commits, each applies.
                let mut copy = observer(110, &held(&sim.reps[j]));
                for id in &listed {
                    let bytes = sim.reps[i].commit_bytes(id).unwrap().unwrap();
                    let got = copy.receive(ts(FAR_FUTURE), &bytes).unwrap();
                    prop_assert!(matches!(got, Received::Applied(ref v) if v[0] == *id), "{:?}", got);
                }
                let all: BTreeSet<CommitId> = sim.held[i].union(&sim.held[j]).copied().collect();
                prop_assert_eq!(ids_of(&copy), all);
            }
        }
    }
}

/// The minimal cases of add-wins, by hand.
#[test]
fn concurrent_add_survives_remove() {
    let t = triple(0);
    let now = ts(BASE);
    // Two independent additions of t; one is removed by a commit that saw only it.
    let mut a = open(MemoryKv::new(), 1, ReplicaConfig::default());
    let mut b = open(MemoryKv::new(), 2, ReplicaConfig::default());
    let c1 = a.write(now, ChangeSet::adding([t.clone()]), "a adds t").unwrap();
    let c3 = b.write(now, ChangeSet::adding([t.clone()]), "b adds t").unwrap();
    let c2 = a.write(now, ChangeSet::removing([t.clone()]), "a removes t").unwrap();
    assert!(!a.state().contains(&t));
    a.receive(now, c3.as_bytes()).unwrap();
    b.receive(now, c1.as_bytes()).unwrap();
    b.receive(now, c2.as_bytes()).unwrap();
    assert!(a.state().contains(&t), "b's addition was not seen by the removal");
    assert!(b.state().contains(&t));
    assert_eq!(a.state_root(), b.state_root());

    // Removal and a later re-addition on another branch, concurrent with a second removal.
    let mut a = open(MemoryKv::new(), 1, ReplicaConfig::default());
    let mut b = open(MemoryKv::new(), 2, ReplicaConfig::default());
    let c1 = a.write(now, ChangeSet::adding([t.clone()]), "+t").unwrap();
    b.receive(now, c1.as_bytes()).unwrap();
    let ra = a.write(now, ChangeSet::removing([t.clone()]), "-t").unwrap();
    let rb = b.write(now, ChangeSet::removing([t.clone()]), "-t").unwrap();
    let back = b.write(now, ChangeSet::adding([t.clone()]), "+t again").unwrap();
    a.receive(now, rb.as_bytes()).unwrap();
    assert!(!a.state().contains(&t), "both removals saw the only addition");
    a.receive(now, back.as_bytes()).unwrap();
    b.receive(now, ra.as_bytes()).unwrap();
    assert!(
        a.state().contains(&t) && b.state().contains(&t),
        "the re-addition is unseen by a's removal"
    );
    assert_eq!(a.state_root(), b.state_root());

    // And a removal that saw every addition wins.
    let gone = a.write(now, ChangeSet::removing([t.clone()]), "-t").unwrap();
    b.receive(now, gone.as_bytes()).unwrap();
    assert!(!a.state().contains(&t) && !b.state().contains(&t));
    assert_eq!(a.state_root(), b.state_root());
}

/// A writer whose wall clock lags far behind, or goes backwards, still stamps after the
/// parents and after its own previous commit.
#[test]
fn lagging_and_backward_clocks_still_stamp_after_parents() {
    let mut config = ReplicaConfig::default();
    config.max_clock_ahead = Duration::from_secs(2 * 86_400);
    let mut ahead = open(MemoryKv::new(), 1, config.clone());
    let mut behind = open(MemoryKv::new(), 2, config);
    let day = 86_400_000_000;
    let c1 = ahead.write(ts(BASE + day), ChangeSet::adding([triple(0)]), "").unwrap();
    behind.receive(ts(BASE), c1.as_bytes()).unwrap();
    let c2 = behind.write(ts(BASE), ChangeSet::adding([triple(1)]), "").unwrap();
    assert!(c2.commit().timestamp() > c1.commit().timestamp());
    // The wall clock jumps back an hour: the next stamp is still later.
    let c3 = behind.write(ts(BASE - 3_600_000_000), ChangeSet::adding([triple(2)]), "").unwrap();
    assert!(c3.commit().timestamp() > c2.commit().timestamp());
    // The same wall reading twice: stamps never repeat.
    let c4 = behind.write(ts(BASE - 3_600_000_000), ChangeSet::adding([triple(3)]), "").unwrap();
    assert!(c4.commit().timestamp() > c3.commit().timestamp());
    for c in [&c2, &c3, &c4] {
        ahead.receive(ts(BASE + day), c.as_bytes()).unwrap();
    }
    assert_eq!(ahead.state_root(), behind.state_root());
}

/// The stamp of a local write may lawfully run ahead of the writer's wall clock by more than
/// `max_clock_ahead` (it must follow the writer's last stamp and the parents'): the write
/// still succeeds. The tolerance is for stamps received from peers.
#[test]
fn a_wall_clock_stepping_back_does_not_block_local_writes() {
    let mut r = open(MemoryKv::new(), 1, ReplicaConfig::default());
    let ahead = r.config().max_clock_ahead.as_micros() as i64;
    let c1 = r.write(ts(BASE), ChangeSet::adding([triple(0)]), "").unwrap();
    // The wall clock is stepped back by more than the tolerance.
    let c2 = r.write(ts(BASE - ahead - 1), ChangeSet::adding([triple(1)]), "").unwrap();
    assert!(c2.commit().timestamp() > c1.commit().timestamp());

    // A received commit stamped exactly at the tolerance, then a local write at that wall.
    let mut peer = open(MemoryKv::new(), 2, ReplicaConfig::default());
    let edge = peer.write(ts(BASE + ahead), ChangeSet::adding([triple(2)]), "").unwrap();
    let mut v = open(MemoryKv::new(), 3, ReplicaConfig::default());
    v.receive(ts(BASE), edge.as_bytes()).unwrap();
    let mine = v.write(ts(BASE), ChangeSet::adding([triple(3)]), "").unwrap();
    assert!(mine.commit().timestamp() > edge.commit().timestamp());
}
