//! Joining from a snapshot in the simulator: ten nodes write over lossy links while two
//! nodes that started empty join late, each catching up from a snapshot a peer prepares, the
//! commits after its head following by anti-entropy, and the history before it fetched only
//! when a commit concurrent with the base arrives. Every replica must converge to the same
//! heads and root, and hold every acknowledged write.
//!
//! `cargo test -p llmkg-sync --test suite sync_join::` runs 60 seeds and two that once failed; more with
//! `LLMKG_JOIN_SEEDS=1000`, one with `LLMKG_JOIN_SEED=7`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use llmkg_federation_core::consensus::GroupId;
use llmkg_federation_core::{CommitId, NodeId, OrgId, Time, Timestamp, Triple};
use llmkg_sync::protocol::{SyncConfig, SyncCore};
use llmkg_sync::replica::{Replica, ReplicaConfig};
use llmkg_transport::sim::{Disk, NodeContext, Sim, SimBuilder};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Node = SyncCore<Disk>;

const NODES: usize = 10;
/// The last two nodes start empty and join late.
const JOINERS: usize = 2;
const ROUND: Duration = Duration::from_millis(100);
const CONVERGENCE_ROUNDS: u32 = 60;

fn triple(i: u32) -> Triple {
    crate::common::sim::triple(i, 11)
}

fn build(seed: u64) -> Sim<Node> {
    let link = crate::common::sim::lossy_link(0.0);
    SimBuilder::new(seed)
        .nodes(NODES)
        .default_link(link)
        .build(move |ctx: NodeContext| {
            let org = OrgId::new(format!("org-{}", ctx.index % 4)).unwrap();
            let replica =
                Replica::open(ctx.disk.clone(), ctx.keypair(), org, ReplicaConfig::default())
                    .expect("open replica");
            let mut config = SyncConfig::new(
                GroupId::from_bytes([9; 32]),
                Timestamp::from_micros(1_700_000_000_000_000),
            );
            config.round_interval = ROUND;
            config.stream_timeout = Duration::from_millis(500);
            // Small parts, so that a snapshot takes several.
            config.max_batch_bytes = 2_048;
            let core = SyncCore::new(replica, config, ctx.peers(), ctx.seed);
            if ctx.index >= NODES - JOINERS { core.joining() } else { core }
        })
        .expect("build sim")
}

enum Action {
    Write(usize),
    Crash(usize),
    Restart(usize),
}

#[derive(Default)]
struct Outcome {
    installed: u64,
    deepened: u64,
    fell_back: u64,
    parts: u64,
}

fn run_seed(seed: u64) -> Result<Outcome, String> {
    let mut sim = build(seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x701);
    let ids: Vec<NodeId> = sim.node_ids().to_vec();
    let mut plan: BTreeMap<(u64, u32), Action> = BTreeMap::new();
    let mut k = 0u32;
    let mut at = |plan: &mut BTreeMap<(u64, u32), Action>, t: u64, a: Action| {
        k += 1;
        plan.insert((t, k), a);
    };
    for j in NODES - JOINERS..NODES {
        at(&mut plan, 1, Action::Crash(j));
        at(&mut plan, rng.random_range(1_000_000..1_800_000), Action::Restart(j));
        at(&mut plan, rng.random_range(2_500_000..3_000_000), Action::Write(j));
    }
    for i in 0..NODES - JOINERS {
        for _ in 0..6 {
            at(&mut plan, rng.random_range(10_000..1_000_000), Action::Write(i));
        }
        // Writes while the others join: commits after the snapshots' heads, some of them
        // concurrent with those heads.
        at(&mut plan, rng.random_range(1_000_000..2_000_000), Action::Write(i));
    }
    let mut acknowledged: BTreeSet<CommitId> = BTreeSet::new();
    let mut counter = 0u32;
    for ((t, _), action) in plan {
        sim.run_until(Time::from_micros(t));
        match action {
            Action::Write(i) => {
                if !sim.is_up(ids[i]).unwrap() {
                    continue;
                }
                counter += 1;
                let fresh = triple(counter);
                let remove = rng.random_bool(0.3);
                let pick = rng.random_range(0..1_000usize);
                let r = sim
                    .with_node(ids[i], |core, now| {
                        core.write(
                            now,
                            crate::common::sim::one_change(core, fresh, remove, pick),
                            "w",
                        )
                    })
                    .unwrap();
                if let Ok(c) = r {
                    acknowledged.insert(c);
                }
            }
            Action::Crash(i) => {
                let _ = sim.crash(ids[i]);
            }
            Action::Restart(i) => {
                let _ = sim.restart(ids[i]);
            }
        }
    }
    let deadline = sim.now() + ROUND * CONVERGENCE_ROUNDS;
    loop {
        let heads: BTreeSet<Vec<CommitId>> =
            ids.iter().filter_map(|id| sim.node(*id).map(|c| c.replica().heads())).collect();
        if heads.len() == 1 && ids.iter().all(|id| sim.node(*id).is_some_and(|c| !c.is_joining())) {
            break;
        }
        if sim.now() >= deadline {
            let nodes: Vec<String> = ids
                .iter()
                .enumerate()
                .filter_map(|(n, id)| {
                    let c = sim.node(*id)?;
                    let (r, m) = (c.replica(), c.metrics());
                    Some(format!(
                        "node {n}: {} commits, {} heads, {} pending, shallow {}, joining {}, \
                         before base {}, deepened {}, refused {}",
                        r.len(),
                        r.heads().len(),
                        r.pending(),
                        r.is_shallow(),
                        c.is_joining(),
                        m.before_base,
                        m.deepened,
                        m.commits_refused
                    ))
                })
                .collect();
            return Err(format!(
                "not converged: {} groups of heads\n{}",
                heads.len(),
                nodes.join("\n")
            ));
        }
        sim.run_for(ROUND / 2);
    }
    let mut roots = BTreeSet::new();
    let mut out = Outcome::default();
    for (n, id) in ids.iter().enumerate() {
        let (missing, root, m) = sim
            .with_node(*id, |core, _| {
                let missing = acknowledged.iter().filter(|c| !core.replica().knows(c)).count();
                (missing, core.replica_mut().state_root(), core.metrics().clone())
            })
            .unwrap();
        if missing > 0 {
            return Err(format!("node {n} lacks {missing} acknowledged writes"));
        }
        roots.insert(root);
        if n >= NODES - JOINERS {
            out.installed += m.snapshots_installed;
            out.deepened += m.deepened;
            out.parts += m.snapshot_parts_received;
            if m.snapshots_installed == 0 {
                out.fell_back += 1;
            }
        } else if m.snapshots_installed > 0 {
            return Err(format!("node {n}, which held commits, installed a snapshot"));
        }
    }
    if roots.len() != 1 {
        return Err(format!("same heads but {} different state roots", roots.len()));
    }
    Ok(out)
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("LLMKG_JOIN_SEED") {
        return vec![s.parse().expect("LLMKG_JOIN_SEED is a number")];
    }
    let n = std::env::var("LLMKG_JOIN_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    // Seeds that once failed: a base whose head is a root commit has no commits to fetch,
    // and deepening it must not wait for any.
    let regressions = [335, 1605];
    (0..n).chain(regressions.into_iter().filter(|s| *s >= n)).collect()
}

#[test]
fn late_nodes_join_from_snapshots_and_converge() {
    let list = seeds();
    let mut total = Outcome::default();
    let mut failures = Vec::new();
    for seed in &list {
        match run_seed(*seed) {
            Ok(o) => {
                total.installed += o.installed;
                total.deepened += o.deepened;
                total.fell_back += o.fell_back;
                total.parts += o.parts;
            }
            Err(e) => failures.push(format!("seed {seed}: {e} (replay: LLMKG_JOIN_SEED={seed})")),
        }
    }
    let joins = list.len() as u64 * JOINERS as u64;
    eprintln!(
        "{} seeds, {} failures: {} of {joins} joins from a snapshot ({} parts), {} fell back to history, {} deepened",
        list.len(),
        failures.len(),
        total.installed,
        total.parts,
        total.fell_back,
        total.deepened
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Measured: 114 of 120 joins used a snapshot over the 60 default seeds (576 of 600 over
    // 300); the rest found no peer with one in three passes and synced the history.
    if list.len() >= 20 {
        assert!(total.installed * 10 >= joins * 8, "too few joins used a snapshot");
        assert!(total.deepened > 0, "no join met a commit concurrent with its base");
    }
}

// ---------------------------------------------------------------------------------------------
// A hostile or broken provider, message by message.

mod hostile {
    use super::triple;
    use llmkg_federation_core::consensus::GroupId;
    use llmkg_federation_core::snapshot::SnapshotManifest;
    use llmkg_federation_core::{
        ChangeSet, HostInfo, LinkState, MemoryKv, NodeId, NodeKeypair, OrgId, Protocol, Time,
        Timestamp,
    };
    use llmkg_sync::protocol::{
        SnapshotHeader, SyncBody, SyncConfig, SyncCore, SyncEvent, SyncMessage,
    };
    use llmkg_sync::replica::{Replica, ReplicaConfig};
    use std::time::Duration;

    type Core = SyncCore<MemoryKv>;

    fn group() -> GroupId {
        GroupId::from_bytes([4; 32])
    }

    fn core(seed: u8, peer: NodeId, joining: bool) -> Core {
        let replica = Replica::open(
            MemoryKv::new(),
            NodeKeypair::from_secret_bytes([seed; 32]),
            OrgId::new("us").unwrap(),
            ReplicaConfig::default(),
        )
        .unwrap();
        let mut config = SyncConfig::new(group(), Timestamp::from_micros(1_700_000_000_000_000));
        config.max_batch_bytes = 512;
        config.max_snapshot_triples = 1_000;
        let mut c = SyncCore::new(replica, config, [peer], u64::from(seed));
        if joining {
            c = c.joining();
        }
        c.handle_start(Time::ZERO, HostInfo::new(1 << 20));
        c.handle_peer(Time::ZERO, peer, LinkState::Up);
        c
    }

    fn id(seed: u8) -> NodeId {
        NodeKeypair::from_secret_bytes([seed; 32]).node_id()
    }

    /// Runs the joiner's rounds until it sends something; returns what it sent.
    fn until_sends(joiner: &mut Core, now: &mut Time) -> Vec<SyncBody> {
        for _ in 0..50 {
            *now += Duration::from_millis(250);
            joiner.handle_timeout(*now);
            let out: Vec<SyncBody> =
                std::iter::from_fn(|| joiner.poll_transmit()).map(|t| t.message.body).collect();
            if !out.is_empty() {
                return out;
            }
        }
        panic!("the joiner never asked");
    }

    /// Passes `body` to `to` from `from`, returning what `to` answers.
    fn pass(to: &mut Core, from: NodeId, now: Time, body: SyncBody) -> Vec<SyncBody> {
        to.handle_message(now, from, SyncMessage { group: group(), body });
        std::iter::from_fn(|| to.poll_transmit()).map(|t| t.message.body).collect()
    }

    fn malformed(c: &mut Core) -> usize {
        std::iter::from_fn(|| c.poll_event())
            .filter(|e| matches!(e, SyncEvent::Malformed { .. }))
            .count()
    }

    #[test]
    fn hostile_snapshot_messages_change_nothing_and_an_honest_one_is_installed() {
        let (p, j) = (id(1), id(2));
        let mut provider = core(1, j, false);
        let mut joiner = core(2, p, true);
        let mut now = Time::ZERO;
        for i in 0..40 {
            provider.write(now, ChangeSet::adding([triple(i)]), "w").unwrap();
        }
        let _ = std::iter::from_fn(|| provider.poll_transmit()).count();
        let ask = until_sends(&mut joiner, &mut now);
        let [SyncBody::SnapshotFetch { session, part: None }] = ask.as_slice() else {
            panic!("expected a snapshot request, got {ask:?}");
        };
        let session = *session;
        let answer = pass(&mut provider, j, now, SyncBody::SnapshotFetch { session, part: None });
        let [SyncBody::SnapshotHead { header: Some(header), .. }] = answer.as_slice() else {
            panic!("expected a header, got {answer:?}");
        };
        let header: SnapshotHeader = (**header).clone();
        let cut = SnapshotManifest::decode(&header.manifest).unwrap().cut().len();
        assert!(
            cut > 1 && header.id_parts > 1,
            "small parts: {cut} chunks, {} id parts",
            header.id_parts
        );

        // Headers beyond the bounds are dropped, and the joiner asks elsewhere.
        let mut big = header.clone();
        big.ids = u64::MAX;
        let sent = pass(
            &mut joiner,
            p,
            now,
            SyncBody::SnapshotHead { session, header: Some(Box::new(big)) },
        );
        assert!(sent.is_empty());
        assert_eq!(malformed(&mut joiner), 1);
        assert!(joiner.replica().is_empty() && joiner.is_joining());

        // The honest header, from a session the joiner did not open: ignored.
        let sent = pass(
            &mut joiner,
            p,
            now,
            SyncBody::SnapshotHead { session: session ^ 1, header: Some(Box::new(header.clone())) },
        );
        assert!(sent.is_empty());

        // Ask again (the provider was marked as failed; one pass later it is asked again).
        let mut session = session;
        for _ in 0..10 {
            let ask = until_sends(&mut joiner, &mut now);
            if let [SyncBody::SnapshotFetch { session: s, part: None }] = ask.as_slice() {
                session = *s;
                break;
            }
        }
        let answer = pass(&mut provider, j, now, SyncBody::SnapshotFetch { session, part: None });
        let [SyncBody::SnapshotHead { header: Some(header), .. }] = answer.as_slice() else {
            panic!("expected a header, got {answer:?}");
        };
        let mut asks = pass(
            &mut joiner,
            p,
            now,
            SyncBody::SnapshotHead { session, header: Some(header.clone()) },
        );
        assert!(!asks.is_empty());
        // A part of garbage bytes is dropped with a reason.
        let sent = pass(
            &mut joiner,
            p,
            now,
            SyncBody::SnapshotPart { session, part: 0, data: vec![0xff; 64] },
        );
        assert!(sent.is_empty());
        assert_eq!(malformed(&mut joiner), 1);
        assert!(joiner.replica().is_empty());

        // An honest run from a fresh request installs the snapshot.
        let mut installed = false;
        for _ in 0..200 {
            if asks.is_empty() {
                asks = until_sends(&mut joiner, &mut now);
            }
            let mut replies = Vec::new();
            for a in asks.drain(..) {
                replies.extend(pass(&mut provider, j, now, a));
            }
            for r in replies {
                asks.extend(pass(&mut joiner, p, now, r));
            }
            if !joiner.is_joining() {
                installed = true;
                break;
            }
        }
        assert!(installed, "the snapshot was never installed");
        assert_eq!(joiner.metrics().snapshots_installed, 1);
        // The joiner asks the provider for what follows the head, and converges.
        for _ in 0..20 {
            let mut replies = Vec::new();
            for a in asks.drain(..) {
                replies.extend(pass(&mut provider, j, now, a));
            }
            for r in replies {
                asks.extend(pass(&mut joiner, p, now, r));
            }
            if asks.is_empty() {
                break;
            }
        }
        assert_eq!(joiner.replica_mut().state_root(), provider.replica_mut().state_root());
        assert_eq!(joiner.replica().heads(), provider.replica().heads());
    }
}
