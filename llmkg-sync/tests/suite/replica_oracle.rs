#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Differential tests: the replicas against `crdts::Orswot` (an independent add-wins
//! observed-remove set) and against a brute-force oracle written from the definition.
//!
//! Mapping: a replica's local write is one Orswot operation pair on that replica's Orswot
//! (remove the effective removals with the replica's read context, then add the effective
//! additions under one new dot of the replica's actor); "deliver all of j's commits to i" is
//! `i.merge(j)`. Our writes drop ineffective changes, so the Orswot only adds absent members
//! and removes present ones.

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use common::*;
use crdts::{CmRDT, CvRDT, Orswot};
use llmkg_federation_core::{CommitId, MemoryKv};
use llmkg_sync::replica::Replica;
use proptest::prelude::*;

type Set = Orswot<u8, u8>;

fn members(set: &Set) -> BTreeSet<u8> {
    set.read().val.into_iter().collect()
}

fn indexes(r: &Replica<MemoryKv>) -> BTreeSet<u8> {
    let u = universe();
    triples_of(r).iter().map(|t| u.iter().position(|x| x == t).unwrap() as u8).collect()
}

/// The Orswot side of a write: only absent members are added, only present ones removed.
fn orswot_write(set: &mut Set, actor: u8, add: u8, remove: u8) -> (Vec<u8>, Vec<u8>) {
    let present: HashSet<u8> = set.read().val;
    let adds: Vec<u8> = (0..UNIVERSE as u8)
        .filter(|b| add & !remove & (1 << b) != 0 && !present.contains(b))
        .collect();
    let removes: Vec<u8> =
        (0..UNIVERSE as u8).filter(|b| remove & (1 << b) != 0 && present.contains(b)).collect();
    if !removes.is_empty() {
        let ctx = set.read_ctx().derive_rm_ctx();
        set.apply(set.rm_all(removes.clone(), ctx));
    }
    if !adds.is_empty() {
        let ctx = set.read_ctx().derive_add_ctx(actor);
        set.apply(set.add_all(adds.clone(), ctx));
    }
    (adds, removes)
}

fn full_history() -> impl Strategy<Value = (usize, u64, Vec<Step>)> {
    (2usize..=5, any::<u64>(), prop::collection::vec(step(false), 1..32))
}

/// Replays `steps` on our replicas and on Orswots, comparing after every step.
fn differential(k: usize, skew: u64, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut sim = Sim::honest(k, skew);
    let mut sets: Vec<Set> = vec![Set::new(); k];
    let compare = |sim: &Sim, sets: &[Set]| -> Result<(), TestCaseError> {
        for (i, (r, set)) in sim.reps.iter().zip(sets).enumerate() {
            prop_assert_eq!(indexes(r), members(set), "replica {} vs Orswot", i);
        }
        Ok(())
    };
    for s in steps {
        match *s {
            Step::Write { who, add, remove } => {
                let i = who as usize % k;
                let (adds, removes) = orswot_write(&mut sets[i], i as u8, add, remove);
                let written = sim.write(i, add, remove);
                prop_assert_eq!(written.is_none(), adds.is_empty() && removes.is_empty());
            }
            Step::Deliver { from, to, subset, shuffle } => {
                assert_eq!(subset, u64::MAX);
                let from = from as usize % k;
                let to = (from + 1 + to as usize % (k - 1)) % k;
                sim.deliver(from, to, u64::MAX, shuffle);
                let other = sets[from].clone();
                sets[to].merge(other);
            }
            _ => sim.run(s),
        }
        sim.check();
        compare(&sim, &sets)?;
    }
    // Full exchange: everyone converges to the same set, and so do the Orswots. Two passes
    // of all pairs: after the first, the last replica holds everything; the second spreads it.
    for _pass in 0..2 {
        for from in 0..k {
            for to in 0..k {
                if from != to {
                    sim.deliver(from, to, u64::MAX, None);
                    let other = sets[from].clone();
                    sets[to].merge(other);
                }
            }
        }
    }
    sim.check();
    compare(&sim, &sets)?;
    let root = sim.reps[0].state_root();
    for i in 0..k {
        prop_assert_eq!(sim.reps[i].state_root(), root);
        prop_assert_eq!(members(&sets[i]), members(&sets[0]));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Our replicas and Orswot replicas agree on the member set after every step, for every
    /// replica, and after a full exchange.
    #[test]
    fn replicas_agree_with_orswot(
        (k, skew, steps) in full_history(),
    ) {
        differential(k, skew, &steps)?;
    }

    /// With partial, out-of-order deliveries (commits wait for their parents), every
    /// replica's state, root, heads, commits and waiting room match the brute-force oracle
    /// and the model after every step.
    #[test]
    fn replicas_agree_with_brute_force_oracle(
        (k, skew, steps) in (2usize..=5, any::<u64>(), prop::collection::vec(step(true), 1..40)),
    ) {
        let mut sim = Sim::honest(k, skew);
        for s in &steps {
            sim.run(s);
            sim.check();
        }
        sim.exchange_all();
        sim.check();
    }
}

/// A small history with a removal concurrent with a re-addition: every causally closed
/// subset of its commits, delivered to a fresh replica, gives the brute-force oracle's state.
#[test]
fn every_subset_of_a_small_history_matches_the_oracle() {
    // a: c1 +t0 ; b (saw c1): c2 -t0 ; c (saw nothing): c3 +t0 +t1 ; a: c4 -t1 after c3.
    let mut sim = Sim::honest(3, 0);
    sim.write(0, 0b01, 0).unwrap();
    sim.deliver(0, 1, u64::MAX, None);
    sim.write(1, 0, 0b01).unwrap();
    sim.write(2, 0b11, 0).unwrap();
    sim.deliver(2, 0, u64::MAX, None);
    sim.write(0, 0, 0b10).unwrap();
    sim.exchange_all();
    sim.check();
    let all = sim.all_envelopes();
    let infos: BTreeMap<CommitId, _> = all.iter().map(|e| (info(e).id, info(e))).collect();
    let ids: Vec<CommitId> = infos.keys().copied().collect();
    let t0 = triple(0);
    // Every causally closed subset, delivered to a fresh replica.
    for mask in 0u32..(1 << ids.len()) {
        let set: BTreeSet<CommitId> =
            ids.iter().enumerate().filter(|(n, _)| mask & (1 << n) != 0).map(|(_, c)| *c).collect();
        if !set.iter().all(|c| infos[c].parents.iter().all(|p| set.contains(p))) {
            continue;
        }
        let envs: Vec<Vec<u8>> =
            all.iter().filter(|e| set.contains(&info(e).id)).cloned().collect();
        let mut r = observer(50, &envs);
        let want = oracle_state(&sim.commits, &set);
        assert_eq!(triples_of(&r), want);
        assert_eq!(r.state_root(), root_of(&want));
    }
    // Everything: t0's re-addition by c was unseen by b's removal.
    assert!(sim.reps[0].state().contains(&t0));
    assert!(!sim.reps[0].state().contains(&triple(1)));
}
