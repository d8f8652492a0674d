//! Eventual consistency in the simulator: 64 nodes writing concurrently (adding triples and
//! removing triples they hold) over lossy,
//! duplicating, reordering links, a partition into halves that heals, crashes with restarts.
//! After the network heals every replica must reach the same heads and state root within
//! [`CONVERGENCE_ROUNDS`] anti-entropy rounds, and every write a node acknowledged must be
//! held by every replica.
//!
//! `cargo test -p llmkg-sync --test suite sync_sim::` runs 120 seeds (in several tests, so the
//! harness spreads them over the cores); odd seeds find differences by set reconciliation
//! over commit ids, even seeds by version vectors. More: `LLMKG_SYNC_SEEDS=10000` (split the same way);
//! one seed: `LLMKG_SYNC_SEED=1234` (with `LLMKG_SYNC_DEBUG=1` to print every replica's metrics).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use llmkg_federation_core::consensus::GroupId;
use llmkg_federation_core::{
    ChangeSet, CommitId, NodeId, OrgId, Protocol, Time, Timestamp, Triple,
};
use llmkg_sync::protocol::{SyncConfig, SyncCore};
use llmkg_sync::replica::{Replica, ReplicaConfig};
use llmkg_transport::sim::{Disk, NodeContext, Sim, SimBuilder};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Node = SyncCore<Disk>;

const NODES: usize = 64;
/// Writes each node attempts (some change nothing and are not committed).
const WRITES_PER_NODE: usize = 1;
/// Writes happen in the first second; the partition lasts from 0.2 s to 0.7 s.
const WRITE_WINDOW_US: u64 = 1_000_000;
const ROUND: Duration = Duration::from_millis(100);
/// The bound on convergence after the last fault and the last write, in rounds.
const CONVERGENCE_ROUNDS: u64 = 40;

fn triple(i: u32) -> Triple {
    crate::common::sim::triple(i, 7)
}

fn build(seed: u64) -> Sim<Node> {
    let link = crate::common::sim::lossy_link(0.02);
    let reconcile = seed % 2 == 1;
    SimBuilder::new(seed)
        .nodes(NODES)
        .default_link(link)
        .build(move |ctx: NodeContext| {
            let org = OrgId::new(format!("org-{}", ctx.index % 4)).unwrap();
            let replica =
                Replica::open(ctx.disk.clone(), ctx.keypair(), org, ReplicaConfig::default())
                    .expect("open replica");
            let mut config = SyncConfig::new(
                GroupId::from_bytes([7; 32]),
                Timestamp::from_micros(1_700_000_000_000_000),
            );
            config.round_interval = ROUND;
            // Odd seeds find differences by set reconciliation over commit ids, even seeds
            // by version vectors.
            if reconcile {
                config.vv_limit = 0;
            }
            config.stream_timeout = Duration::from_millis(500);
            SyncCore::new(replica, config, ctx.peers(), ctx.seed)
        })
        .expect("build sim")
}

/// What one seed did.
struct Outcome {
    writes: usize,
    rounds_to_converge: u64,
    messages: u64,
}

fn run_seed(seed: u64) -> Result<Outcome, String> {
    let mut sim = build(seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let ids: Vec<NodeId> = sim.node_ids().to_vec();
    // A schedule of writes over the first second, a partition into halves from 0.2 s to
    // 0.7 s, and four crashes with restarts.
    let mut plan: BTreeMap<(u64, u32), Action> = BTreeMap::new();
    let mut k = 0u32;
    for (i, _) in ids.iter().enumerate() {
        for _ in 0..WRITES_PER_NODE {
            let at = rng.random_range(0..WRITE_WINDOW_US);
            k += 1;
            plan.insert((at, k), Action::Write(i));
        }
    }
    let mut shuffled: Vec<NodeId> = ids.clone();
    for i in (1..shuffled.len()).rev() {
        let j = rng.random_range(0..=i);
        shuffled.swap(i, j);
    }
    let (left, right) = shuffled.split_at(NODES / 2);
    plan.insert((200_000, 0), Action::Partition(left.to_vec(), right.to_vec()));
    plan.insert((700_000, 0), Action::Heal);
    for c in 0..4u32 {
        let i = rng.random_range(0..NODES);
        let at = rng.random_range(100_000..800_000u64);
        let down = rng.random_range(50_000..300_000u64);
        plan.insert((at, 10_000 + c), Action::Crash(i));
        plan.insert((at + down, 10_000 + c), Action::Restart(i));
    }

    let mut acknowledged: BTreeSet<CommitId> = BTreeSet::new();
    let mut counter = 0u32;
    let mut last_disturbance = Time::ZERO;
    for ((at, _), action) in plan {
        sim.run_until(Time::from_micros(at));
        let now = sim.now();
        match action {
            Action::Write(i) => {
                let id = ids[i];
                if !sim.is_up(id).unwrap() {
                    continue;
                }
                counter += 1;
                let fresh = triple(counter);
                let remove = rng.random_bool(0.3);
                let pick = rng.random_range(0..1_000usize);
                let r = sim
                    .with_node(id, |core, now| {
                        let changes = crate::common::sim::one_change(core, fresh, remove, pick);
                        core.write(now, changes, &format!("w{counter}"))
                    })
                    .unwrap();
                if let Ok(c) = r {
                    acknowledged.insert(c);
                }
            }
            Action::Partition(a, b) => sim.partition(&[a, b]).unwrap(),
            Action::Heal => sim.heal(),
            Action::Crash(i) => {
                let _ = sim.crash(ids[i]);
            }
            Action::Restart(i) => {
                let _ = sim.restart(ids[i]);
            }
        }
        last_disturbance = now;
    }
    // Make sure every node is up, then run until every replica holds the same heads.
    for id in &ids {
        if !sim.is_up(*id).unwrap() {
            sim.restart(*id).unwrap();
        }
    }
    let start = sim.now().max(last_disturbance);
    let deadline = start + ROUND * CONVERGENCE_ROUNDS as u32;
    loop {
        if converged(&mut sim, &ids) {
            break;
        }
        if sim.now() >= deadline {
            return Err(format!(
                "not converged {} rounds after the last fault: {}",
                CONVERGENCE_ROUNDS,
                describe(&mut sim, &ids)
            ));
        }
        sim.run_for(ROUND / 2);
    }
    let rounds = (sim.now().saturating_since(start).as_micros() / ROUND.as_micros()) as u64 + 1;
    // No acknowledged write is lost, and the roots agree.
    let mut roots = BTreeSet::new();
    for id in &ids {
        let (missing, root) = sim
            .with_node(*id, |core, _| {
                let missing = acknowledged.iter().filter(|c| !core.replica().contains(c)).count();
                (missing, core.replica_mut().state_root())
            })
            .unwrap();
        if std::env::var("LLMKG_SYNC_DEBUG").is_ok() {
            let m = sim.node(*id).unwrap().replica().metrics().clone();
            eprintln!("{id:?}: {m:?} {:?}", sim.node(*id).unwrap().metrics());
        }
        if missing > 0 {
            return Err(format!("{id:?} lacks {missing} acknowledged writes"));
        }
        roots.insert(root);
    }
    if roots.len() != 1 {
        return Err(format!("same heads but {} different state roots", roots.len()));
    }
    Ok(Outcome {
        writes: acknowledged.len(),
        rounds_to_converge: rounds,
        messages: sim.message_totals().sent,
    })
}

enum Action {
    Write(usize),
    Partition(Vec<NodeId>, Vec<NodeId>),
    Heal,
    Crash(usize),
    Restart(usize),
}

fn converged(sim: &mut Sim<Node>, ids: &[NodeId]) -> bool {
    let mut first: Option<Vec<CommitId>> = None;
    for id in ids {
        let Some(core) = sim.node(*id) else { return false };
        let heads = core.replica().heads();
        match &first {
            None => first = Some(heads),
            Some(h) if *h != heads => return false,
            Some(_) => {}
        }
    }
    true
}

fn describe(sim: &mut Sim<Node>, ids: &[NodeId]) -> String {
    let mut by_heads: BTreeMap<Vec<CommitId>, usize> = BTreeMap::new();
    for id in ids {
        if let Some(core) = sim.node(*id) {
            *by_heads.entry(core.replica().heads()).or_default() += 1;
        }
    }
    let groups: Vec<String> = by_heads.values().map(|n| n.to_string()).collect();
    format!("{} groups of heads, sizes {}", by_heads.len(), groups.join(","))
}

fn seeds(part: u64, parts: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("LLMKG_SYNC_SEED") {
        return if part == 0 {
            vec![s.parse().expect("LLMKG_SYNC_SEED is a number")]
        } else {
            vec![]
        };
    }
    let total: u64 =
        std::env::var("LLMKG_SYNC_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    // Pairs of seeds (one of each configuration) go to the parts in turn, so that the parts
    // take about as long as each other.
    (0..total).filter(|s| (s / 2) % parts == part).collect()
}

fn run_part(part: u64) {
    let mut worst = 0;
    let mut writes = 0;
    let mut messages = 0;
    let mut failures = Vec::new();
    let list = seeds(part, 4);
    for (n, seed) in list.iter().enumerate() {
        if n > 0 && n % 500 == 0 {
            eprintln!(
                "part {part}: {n} of {} seeds run, {} failures so far",
                list.len(),
                failures.len()
            );
        }
        match run_seed(*seed) {
            Ok(o) => {
                worst = worst.max(o.rounds_to_converge);
                writes += o.writes;
                messages += o.messages;
            }
            Err(e) => failures.push(format!("seed {seed}: {e} (replay: LLMKG_SYNC_SEED={seed})")),
        }
    }
    eprintln!(
        "part {part}: {} seeds, {} failures, {writes} acknowledged writes, {messages} messages, worst convergence {worst} rounds",
        list.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn converges_part_0() {
    run_part(0);
}

#[test]
fn converges_part_1() {
    run_part(1);
}

#[test]
fn converges_part_2() {
    run_part(2);
}

#[test]
fn converges_part_3() {
    run_part(3);
}

#[test]
fn a_restarted_node_keeps_its_acknowledged_writes() {
    let mut sim = build(99);
    let id = sim.node_ids()[3];
    sim.run_for(Duration::from_millis(50));
    let c = sim
        .with_node(id, |core, now| core.write(now, ChangeSet::adding([triple(1)]), "durable"))
        .unwrap()
        .unwrap();
    sim.crash(id).unwrap();
    sim.restart(id).unwrap();
    assert!(sim.node(id).unwrap().replica().contains(&c));
    let _ = Protocol::poll_timeout(sim.node(id).unwrap());
}
