#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

//! Integration tests of the deterministic network simulator.
//!
//! Every assertion that depends on a seed prints it, so a failure replays with that seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use llmkg_federation_core::{NodeId, NodeKeypair, Protocol, Time, Transmit};
use llmkg_transport::sim::workloads::{Flood, FloodConfig};
use llmkg_transport::sim::{
    Byzantine, ByzantineConfig, Disk, Fault, Latency, LinkConfig, MessageStats, RunOutcome,
    SimBuilder, SimError, SimStats, TraceHash,
};
use rand::Rng;
use serde::{Deserialize, Serialize};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn uniform(min: u64, max: u64) -> LinkConfig {
    LinkConfig::with_latency(Latency::Uniform { min: ms(min), max: ms(max) })
}

/// `sent + duplicated == delivered + dropped + in flight`, for totals, per link and per node.
fn check_accounting(seed: u64, stats: &SimStats) {
    let m = &stats.messages;
    assert_eq!(
        m.sent + m.duplicated,
        m.delivered + m.dropped() + m.in_flight(),
        "seed {seed}: totals {m:?}"
    );
    let mut links = MessageStats::default();
    for l in stats.links.values() {
        assert_eq!(l.sent + l.duplicated, l.delivered + l.dropped() + l.in_flight(), "seed {seed}");
        links = add(links, l);
    }
    assert_eq!(&links, m, "seed {seed}: per-link stats do not sum to the totals");
    let (mut out, mut inb) = (MessageStats::default(), MessageStats::default());
    for n in stats.nodes.values() {
        out = add(out, &n.outbound);
        inb = add(inb, &n.inbound);
    }
    assert_eq!(&out, m, "seed {seed}: per-node outbound stats do not sum to the totals");
    assert_eq!(&inb, m, "seed {seed}: per-node inbound stats do not sum to the totals");
    assert_eq!(stats.events, stats.arrivals + stats.timer_fires, "seed {seed}");
}

fn add(mut a: MessageStats, b: &MessageStats) -> MessageStats {
    a.sent += b.sent;
    a.sent_bytes += b.sent_bytes;
    a.duplicated += b.duplicated;
    a.delivered += b.delivered;
    a.delivered_bytes += b.delivered_bytes;
    a.dropped_loss += b.dropped_loss;
    a.dropped_partition += b.dropped_partition;
    a.dropped_crash += b.dropped_crash;
    a.dropped_decode += b.dropped_decode;
    a.dropped_bytes += b.dropped_bytes;
    a
}

// ---------------------------------------------------------------------------------------------
// 1. Determinism

/// A small gossip run with every network feature on: loss, duplication, reordering, long-tail
/// latency on some links, a partition that heals, a crash and a restart.
fn gossip_run(seed: u64) -> (TraceHash, SimStats) {
    let link = uniform(1, 30).loss(0.05).duplicate(0.02).reorder(0.1, ms(20));
    let mut sim = SimBuilder::new(seed)
        .nodes(40)
        .default_link(link)
        .build(|ctx| Flood::new(&ctx, FloodConfig::default()))
        .unwrap();
    let ids = sim.node_ids().to_vec();
    let slow = LinkConfig::with_latency(Latency::Exponential { floor: ms(5), mean: ms(40) });
    sim.set_link(ids[1], ids[2], slow.clone()).unwrap();
    sim.schedule(Time::from_millis(5), Fault::Partition(vec![ids[..20].to_vec()])).unwrap();
    sim.schedule(Time::from_millis(300), Fault::Heal).unwrap();
    sim.schedule(Time::from_millis(50), Fault::Crash(ids[7])).unwrap();
    sim.schedule(Time::from_millis(400), Fault::Restart(ids[7])).unwrap();
    let link = Fault::SetLink { from: ids[3], to: ids[4], config: slow };
    sim.schedule(Time::from_millis(100), link).unwrap();
    sim.set_event_digest(|e, out| out.extend_from_slice(&e.rumor.to_le_bytes()));
    for (i, origin) in [0usize, 25, 39].into_iter().enumerate() {
        sim.with_node(ids[origin], |core, now| core.originate(now, i as u64)).unwrap();
    }
    sim.run_for(ms(10));
    sim.with_node(ids[10], |core, now| core.originate(now, 99)).unwrap();
    let outcome = sim.run();
    assert!(matches!(outcome, RunOutcome::Quiescent { .. }), "seed {seed}: {outcome:?}");
    (sim.trace_hash(), sim.stats())
}

#[test]
fn same_seed_gives_the_same_trace_and_different_seeds_differ() {
    let seed = 7;
    let (first, stats) = gossip_run(seed);
    check_accounting(seed, &stats);
    assert!(stats.messages.dropped_loss > 0, "seed {seed}: {:?}", stats.messages);
    assert!(stats.messages.dropped_partition > 0, "seed {seed}: {:?}", stats.messages);
    assert!(stats.messages.dropped_crash > 0, "seed {seed}: {:?}", stats.messages);
    assert!(stats.messages.duplicated > 0, "seed {seed}: {:?}", stats.messages);
    for run in 1..100 {
        let (hash, again) = gossip_run(seed);
        assert_eq!(hash, first, "seed {seed}: run {run} diverged");
        assert_eq!(again, stats, "seed {seed}: run {run} counted differently");
    }
    let mut seen = BTreeSet::from([first]);
    for other in 100..120 {
        let (hash, _) = gossip_run(other);
        assert!(seen.insert(hash), "seed {other}: trace hash collides with an earlier seed");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. 1,000 nodes under loss and a healing partition

#[test]
fn thousand_node_flood_survives_loss_and_a_healing_partition() {
    let seed = 1_000;
    let n = 1_000;
    let mut sim = SimBuilder::new(seed)
        .nodes(n)
        .default_link(uniform(1, 20).loss(0.05))
        .record_events(false)
        .build(|ctx| Flood::new(&ctx, FloodConfig::default()))
        .unwrap();
    let ids = sim.node_ids().to_vec();
    sim.partition(&[&ids[..n / 2]]).unwrap();
    sim.schedule(Time::from_millis(2_000), Fault::Heal).unwrap();
    let rumors = [(0usize, 1u64), (n / 2, 2), (n - 1, 3)];
    for (origin, rumor) in rumors {
        sim.with_node(ids[origin], |core, now| core.originate(now, rumor)).unwrap();
    }

    // Before the heal each rumor stays on its side of the partition.
    let outcome = sim.run_until(Time::from_millis(1_900));
    assert!(matches!(outcome, RunOutcome::Deadline { .. }), "seed {seed}: {outcome:?}");
    let left = |i: usize| i < n / 2;
    for (i, id) in ids.iter().enumerate() {
        let core = sim.node(*id).unwrap();
        assert_eq!(core.knows(1), left(i), "seed {seed}: node {i} and rumor 1 before the heal");
        assert_eq!(core.knows(2), !left(i), "seed {seed}: node {i} and rumor 2 before the heal");
    }

    let outcome = sim.run();
    assert!(matches!(outcome, RunOutcome::Quiescent { .. }), "seed {seed}: {outcome:?}");
    for (i, id) in ids.iter().enumerate() {
        let core = sim.node(*id).unwrap();
        for (_, rumor) in rumors {
            assert!(core.knows(rumor), "seed {seed}: node {i} never learned rumor {rumor}");
        }
        assert_eq!(core.unacknowledged(), 0, "seed {seed}: node {i}");
        assert_eq!(core.gave_up(), 0, "seed {seed}: node {i}");
    }
    let stats = sim.stats();
    check_accounting(seed, &stats);
    let m = stats.messages;
    assert_eq!(m.in_flight(), 0, "seed {seed}");
    assert_eq!(sim.pending(), 0, "seed {seed}: quiescent but entries remain");
    assert!(m.dropped_partition > 0, "seed {seed}: {m:?}");
    assert_eq!(m.dropped_crash + m.dropped_decode, 0, "seed {seed}: {m:?}");
    // Loss is decided per copy handed to a link while the partition does not stop it.
    let exposed = m.sent - m.dropped_partition;
    let loss = m.dropped_loss as f64 / exposed as f64;
    assert!((0.04..0.06).contains(&loss), "seed {seed}: loss rate {loss} ({m:?})");
    assert!(stats.events > 20_000, "seed {seed}: only {} events", stats.events);
    assert_eq!(stats.nodes.len(), n);
    assert!(stats.now >= Time::from_millis(2_000), "seed {seed}");
}

// ---------------------------------------------------------------------------------------------
// 3. Link properties

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Msg {
    Seq(u64),
    Bump,
    Value(u64),
}

/// Sends what the host queues; reports every message received.
#[derive(Default)]
struct Recorder {
    out: VecDeque<Transmit<Msg>>,
    events: VecDeque<(NodeId, Msg)>,
}

impl Recorder {
    fn send(&mut self, to: NodeId, message: Msg) {
        self.out.push_back(Transmit { to, message });
    }
}

impl Protocol for Recorder {
    type Message = Msg;
    type Event = (NodeId, Msg);
    fn handle_message(&mut self, _now: Time, from: NodeId, message: Msg) {
        self.events.push_back((from, message));
    }
    fn handle_timeout(&mut self, _now: Time) {}
    fn poll_transmit(&mut self) -> Option<Transmit<Msg>> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Time> {
        None
    }
    fn poll_event(&mut self) -> Option<(NodeId, Msg)> {
        self.events.pop_front()
    }
}

/// Sends `Seq(0..n)` from node 0 to node 1 over `link` (half at time 0, half 1 ms later) and
/// returns the sequence numbers in arrival order plus the stats.
fn stream(seed: u64, link: LinkConfig, n: u64) -> (Vec<u64>, SimStats) {
    let mut sim =
        SimBuilder::new(seed).nodes(2).default_link(link).build(|_| Recorder::default()).unwrap();
    let (a, b) = (sim.node_ids()[0], sim.node_ids()[1]);
    sim.with_node(a, |core, _| (0..n / 2).for_each(|i| core.send(b, Msg::Seq(i)))).unwrap();
    sim.run_for(ms(1));
    sim.with_node(a, |core, _| (n / 2..n).for_each(|i| core.send(b, Msg::Seq(i)))).unwrap();
    assert!(matches!(sim.run(), RunOutcome::Quiescent { .. }), "seed {seed}");
    let got = sim
        .drain_events()
        .into_iter()
        .map(|(_, node, (from, msg))| {
            assert_eq!((node, from), (b, a), "seed {seed}");
            match msg {
                Msg::Seq(i) => i,
                other => panic!("seed {seed}: unexpected {other:?}"),
            }
        })
        .collect();
    let stats = sim.stats();
    check_accounting(seed, &stats);
    (got, stats)
}

fn inversions(seq: &[u64]) -> usize {
    seq.windows(2).filter(|w| w[1] < w[0]).count()
}

#[test]
fn links_are_fifo_without_reordering() {
    for seed in 0..5 {
        let (got, _) = stream(seed, uniform(1, 50), 500);
        assert_eq!(got, (0..500).collect::<Vec<_>>(), "seed {seed}: not FIFO");
        let tail = LinkConfig::with_latency(Latency::Exponential { floor: ms(1), mean: ms(30) });
        let (got, _) = stream(seed, tail, 500);
        assert_eq!(got, (0..500).collect::<Vec<_>>(), "seed {seed}: long tail not FIFO");
    }
}

#[test]
fn reordering_reorders_but_loses_nothing() {
    let seed = 11;
    let (mut got, _) = stream(seed, uniform(1, 50).reorder(0.3, ms(50)), 500);
    assert!(inversions(&got) > 20, "seed {seed}: only {} inversions", inversions(&got));
    got.sort_unstable();
    assert_eq!(got, (0..500).collect::<Vec<_>>(), "seed {seed}");
}

#[test]
fn duplication_duplicates() {
    let seed = 12;
    let n = 1_000;
    let (got, stats) = stream(seed, uniform(1, 50).duplicate(0.25), n);
    let extra = got.len() as u64 - n;
    assert_eq!(extra, stats.messages.duplicated, "seed {seed}");
    assert!((150..350).contains(&extra), "seed {seed}: {extra} duplicates");
    assert_eq!(got.iter().collect::<BTreeSet<_>>().len() as u64, n, "seed {seed}");
    // Duplicates travel FIFO too: the sequence never goes backwards.
    assert_eq!(inversions(&got), 0, "seed {seed}");
}

#[test]
fn loss_drops_about_the_configured_fraction() {
    let seed = 13;
    let n = 2_000;
    let (got, stats) = stream(seed, uniform(1, 50).loss(0.2), n);
    let lost = stats.messages.dropped_loss;
    assert_eq!(got.len() as u64 + lost, n, "seed {seed}");
    assert!((300..500).contains(&lost), "seed {seed}: lost {lost} of {n}");
    assert_eq!(inversions(&got), 0, "seed {seed}");
    // Deterministic for the seed.
    let (again, _) = stream(seed, uniform(1, 50).loss(0.2), n);
    assert_eq!(got, again, "seed {seed}");
}

// ---------------------------------------------------------------------------------------------
// 4. Crash and restart

#[derive(Debug, PartialEq, Eq)]
enum CounterEvent {
    Bumped { memory: u64, durable: u64 },
    Tick,
}

/// Node 0 sends `Bump` to node 1 every 10 ms, 100 times. Node 1 counts bumps in memory and on
/// its disk; its first incarnation also sets a timer for 300 ms that emits `Tick`.
struct Counter {
    index: usize,
    peer: NodeId,
    disk: Disk,
    memory: u64,
    timer: Option<Time>,
    sent: u64,
    out: VecDeque<Transmit<Msg>>,
    events: VecDeque<CounterEvent>,
}

impl Protocol for Counter {
    type Message = Msg;
    type Event = CounterEvent;
    fn handle_message(&mut self, _now: Time, _from: NodeId, message: Msg) {
        if message == Msg::Bump {
            self.memory += 1;
            let durable = self.disk.get_u64(b"count").unwrap_or(0) + 1;
            self.disk.put_u64(b"count", durable);
            self.events.push_back(CounterEvent::Bumped { memory: self.memory, durable });
        }
    }
    fn handle_timeout(&mut self, now: Time) {
        if self.index == 0 {
            self.sent += 1;
            self.out.push_back(Transmit { to: self.peer, message: Msg::Bump });
            self.timer = (self.sent < 100).then(|| now + ms(10));
        } else {
            self.events.push_back(CounterEvent::Tick);
            self.timer = None;
        }
    }
    fn poll_transmit(&mut self) -> Option<Transmit<Msg>> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Time> {
        self.timer
    }
    fn poll_event(&mut self) -> Option<CounterEvent> {
        self.events.pop_front()
    }
}

#[test]
fn a_restarted_node_keeps_only_what_it_made_durable() {
    let seed = 21;
    let link = LinkConfig::with_latency(Latency::Fixed(ms(1)));
    let mut sim = SimBuilder::new(seed)
        .nodes(2)
        .default_link(link)
        .record_trace(1_000)
        .build(|ctx| Counter {
            index: ctx.index,
            peer: ctx.nodes[1 - ctx.index],
            memory: 0,
            timer: match (ctx.index, ctx.incarnation) {
                (0, _) => Some(Time::from_millis(10)),
                (_, 0) => Some(Time::from_millis(300)),
                _ => None,
            },
            disk: ctx.disk,
            sent: 0,
            out: VecDeque::new(),
            events: VecDeque::new(),
        })
        .unwrap();
    let (a, b) = (sim.node_ids()[0], sim.node_ids()[1]);
    sim.schedule(Time::from_micros(200_500), Fault::Crash(b)).unwrap();
    sim.schedule(Time::from_micros(500_500), Fault::Restart(b)).unwrap();

    sim.run_until(Time::from_millis(300));
    assert!(sim.node(b).is_none(), "seed {seed}");
    assert_eq!(sim.is_up(b), Ok(false));
    assert_eq!(sim.with_node(b, |_, _| ()), Err(SimError::NodeDown(b)));
    assert_eq!(sim.disk(b).unwrap().get_u64(b"count"), Some(19), "seed {seed}");

    let outcome = sim.run();
    assert_eq!(outcome, RunOutcome::Quiescent { at: Time::from_millis(1_001) }, "seed {seed}");
    let core = sim.node(b).unwrap();
    // Bumps sent at 10..=190 ms arrived before the crash; the one sent at 200 ms was in flight
    // when it happened; those sent at 210..=500 ms found the node down; 510..=1000 ms arrived.
    assert_eq!(core.memory, 50, "seed {seed}: memory survived the crash");
    assert_eq!(core.disk.get_u64(b"count"), Some(69), "seed {seed}: durable count lost");
    let events = sim.drain_events();
    assert!(
        events.iter().all(|(_, _, e)| *e != CounterEvent::Tick),
        "seed {seed}: the crashed incarnation's timer fired"
    );
    assert_eq!(events.len(), 69, "seed {seed}");
    let stats = sim.stats();
    check_accounting(seed, &stats);
    let link = stats.links[&(a, b)];
    assert_eq!((link.sent, link.delivered, link.dropped_crash), (100, 69, 31), "seed {seed}");
    let node = stats.nodes[&b];
    assert_eq!((node.crashes, node.restarts, node.incarnation, node.up), (1, 1, 1, true));
    let recorded = sim.trace().count();
    assert!((100..=1_000).contains(&recorded), "seed {seed}: {recorded} trace entries");
}

// ---------------------------------------------------------------------------------------------
// 5. Byzantine nodes and garbage

/// Broadcasts or sends what the host asks; reports what it receives.
type Node = Byzantine<Recorder>;

fn byzantine_sim(seed: u64, config: ByzantineConfig, n: usize) -> llmkg_transport::sim::Sim<Node> {
    SimBuilder::new(seed)
        .nodes(n)
        .build(move |ctx| {
            let config = if ctx.index == 0 { config.clone() } else { ByzantineConfig::honest() };
            Byzantine::new(Recorder::default(), config, ctx.derive_seed("byzantine"))
                .with_peers(ctx.peers().collect())
                .with_forger(|rng: &mut rand_chacha::ChaCha8Rng, _to: NodeId, m: &Msg| match m {
                    Msg::Value(v) => Msg::Value(v.wrapping_add(1 + rng.next_u64() % 1_000_000)),
                    other => other.clone(),
                })
        })
        .unwrap()
}

/// What honest nodes received from node 0, per receiver.
fn received_from_zero(sim: &mut llmkg_transport::sim::Sim<Node>) -> BTreeMap<NodeId, Vec<Msg>> {
    let zero = sim.node_ids()[0];
    let mut got: BTreeMap<NodeId, Vec<Msg>> = BTreeMap::new();
    for (_, node, (from, msg)) in sim.drain_events() {
        if from == zero {
            got.entry(node).or_default().push(msg);
        }
    }
    got
}

fn broadcast(sim: &mut llmkg_transport::sim::Sim<Node>, value: u64) {
    let ids = sim.node_ids().to_vec();
    sim.with_node(ids[0], |core, _| {
        for to in &ids[1..] {
            core.inner_mut().send(*to, Msg::Value(value));
        }
    })
    .unwrap();
    assert!(matches!(sim.run(), RunOutcome::Quiescent { .. }));
}

#[test]
fn forging_gives_each_receiver_a_different_message() {
    let seed = 31;
    let config = ByzantineConfig { forge: 1.0, ..ByzantineConfig::default() };
    let mut sim = byzantine_sim(seed, config, 10);
    broadcast(&mut sim, 7);
    let got = received_from_zero(&mut sim);
    assert_eq!(got.len(), 9, "seed {seed}: {got:?}");
    let values: BTreeSet<&Msg> = got.values().flatten().collect();
    assert!(!values.contains(&Msg::Value(7)), "seed {seed}: an original got through");
    assert!(values.len() > 1, "seed {seed}: receivers saw the same forgery");
    let stats = sim.node(sim.node_ids()[0]).unwrap().stats();
    assert_eq!((stats.forged, stats.passed), (9, 0), "seed {seed}");
}

#[test]
fn equivocation_shows_different_versions_to_different_receivers() {
    let seed = 32;
    let config = ByzantineConfig { equivocate: 1.0, ..ByzantineConfig::default() };
    let mut sim = byzantine_sim(seed, config, 10);
    broadcast(&mut sim, 7);
    let got = received_from_zero(&mut sim);
    // Every honest node got the original, and some also a conflicting version.
    assert!(got.values().all(|v| v.contains(&Msg::Value(7))), "seed {seed}: {got:?}");
    let conflicted = got.values().filter(|v| v.iter().any(|m| *m != Msg::Value(7))).count();
    assert!(conflicted > 0, "seed {seed}: {got:?}");
    let all: BTreeSet<&Msg> = got.values().flatten().collect();
    assert!(all.len() > 1, "seed {seed}");
    let stats = sim.node(sim.node_ids()[0]).unwrap().stats();
    assert_eq!((stats.equivocated, stats.passed), (9, 9), "seed {seed}");
    assert_eq!(sim.stats().messages.delivered, 18, "seed {seed}");
}

#[test]
fn dropping_everything_silences_a_node() {
    let seed = 33;
    let config = ByzantineConfig { drop: 1.0, replay: 1.0, ..ByzantineConfig::default() };
    let mut sim = byzantine_sim(seed, config, 10);
    broadcast(&mut sim, 7);
    assert!(received_from_zero(&mut sim).is_empty(), "seed {seed}");
    let zero = sim.node_ids()[0];
    assert_eq!(sim.node(zero).unwrap().stats().dropped, 9, "seed {seed}");
    assert_eq!(sim.stats().nodes[&zero].outbound.sent, 0, "seed {seed}");
}

#[test]
fn replay_repeats_earlier_messages() {
    let seed = 34;
    let config = ByzantineConfig { replay: 1.0, ..ByzantineConfig::default() };
    let mut sim = byzantine_sim(seed, config, 3);
    let ids = sim.node_ids().to_vec();
    sim.with_node(ids[0], |core, _| {
        (0..20).for_each(|i| core.inner_mut().send(ids[1], Msg::Seq(i)))
    })
    .unwrap();
    sim.run();
    let replayed = sim.node(ids[0]).unwrap().stats().replayed;
    assert_eq!(replayed, 19, "seed {seed}: every message after the first replays one");
    let got = received_from_zero(&mut sim);
    let total: usize = got.values().map(Vec::len).sum();
    assert_eq!(total as u64, 20 + replayed, "seed {seed}");
    let at_one = &got[&ids[1]];
    let distinct: BTreeSet<&Msg> = at_one.iter().collect();
    assert!(distinct.len() < at_one.len(), "seed {seed}: node 1 saw no repeat: {at_one:?}");
}

#[test]
fn garbage_bytes_are_counted_as_decode_failures_and_never_delivered() {
    let seed = 35;
    let mut sim = SimBuilder::new(seed)
        .nodes(2)
        .max_message_len(64)
        .build(|_| Box::new(Recorder::default()) as Box<dyn Protocol<Message = Msg, Event = _>>)
        .unwrap();
    let (a, b) = (sim.node_ids()[0], sim.node_ids()[1]);
    sim.inject_raw(a, b, vec![0xff; 5]).unwrap(); // bad variant tag
    sim.inject_raw(a, b, vec![0x00, 0x80, 0x00]).unwrap(); // Seq(0) with an over-long varint
    sim.inject_raw(a, b, vec![]).unwrap(); // truncated
    let mut trailing = llmkg_federation_core::encoding::try_encode(&Msg::Seq(1)).unwrap();
    trailing.push(0);
    sim.inject_raw(a, b, trailing).unwrap(); // trailing bytes
    let mut huge = llmkg_federation_core::encoding::try_encode(&Msg::Seq(1)).unwrap();
    huge.resize(100, 0);
    sim.inject_raw(a, b, huge).unwrap(); // over the size limit
    sim.inject_raw(a, b, llmkg_federation_core::encoding::try_encode(&Msg::Seq(9)).unwrap())
        .unwrap();
    sim.run();
    let events = sim.drain_events();
    assert_eq!(events.len(), 1, "seed {seed}: {events:?}");
    assert_eq!(events[0].2, (a, Msg::Seq(9)));
    let stats = sim.stats();
    assert_eq!(stats.messages.dropped_decode, 5, "seed {seed}: {:?}", stats.messages);
    assert_eq!(stats.links[&(a, b)].delivered, 1);
    check_accounting(seed, &stats);
}

// ---------------------------------------------------------------------------------------------
// API edges

#[test]
fn bad_input_returns_errors() {
    let mut sim = SimBuilder::new(1).nodes(3).build(|_| Recorder::default()).unwrap();
    let ids = sim.node_ids().to_vec();
    let stranger = NodeKeypair::from_secret_bytes([9; 32]).node_id();
    assert_eq!(sim.with_node(stranger, |_, _| ()), Err(SimError::UnknownNode(stranger)));
    assert_eq!(sim.crash(stranger), Err(SimError::UnknownNode(stranger)));
    assert_eq!(sim.inject_raw(ids[0], stranger, vec![]), Err(SimError::UnknownNode(stranger)));
    assert_eq!(sim.partition(&[vec![stranger]]), Err(SimError::UnknownNode(stranger)));
    assert_eq!(
        sim.partition(&[vec![ids[0]], vec![ids[1], ids[0]]]),
        Err(SimError::DuplicateInPartition(ids[0]))
    );
    assert!(matches!(
        sim.set_link(ids[0], ids[1], LinkConfig::default().loss(2.0)),
        Err(SimError::InvalidLink(_))
    ));
    assert!(
        SimBuilder::new(1)
            .default_link(LinkConfig::default().duplicate(-1.0))
            .build(|_| Recorder::default())
            .is_err()
    );
    assert_eq!(sim.restart(ids[0]), Err(SimError::NodeUp(ids[0])));
    sim.crash(ids[0]).unwrap();
    assert_eq!(sim.crash(ids[0]), Err(SimError::NodeDown(ids[0])));
    sim.run_until(Time::from_millis(10));
    assert_eq!(
        sim.schedule(Time::from_millis(5), Fault::Heal),
        Err(SimError::InPast { at: Time::from_millis(5), now: Time::from_millis(10) })
    );
    assert!(sim.node(stranger).is_none());
    assert_eq!(sim.index_of(stranger), None);
    assert_eq!(sim.node_id(3), None);
    let dup = SimBuilder::new(1).secrets(vec![[1; 32], [1; 32]]).build(|_| Recorder::default());
    assert!(matches!(dup, Err(SimError::DuplicateNode(_))));

    // A core addressing an unknown id is counted, not a panic.
    sim.with_node(ids[1], |core, _| core.send(stranger, Msg::Bump)).unwrap();
    assert_eq!(sim.stats().unroutable, 1);
}

#[test]
fn step_and_deadline_outcomes() {
    let link = LinkConfig::with_latency(Latency::Fixed(ms(10)));
    let mut sim =
        SimBuilder::new(3).nodes(2).default_link(link).build(|_| Recorder::default()).unwrap();
    let (a, b) = (sim.node_ids()[0], sim.node_ids()[1]);
    sim.with_node(a, |core, _| {
        core.send(b, Msg::Seq(1));
        core.send(b, Msg::Seq(2));
    })
    .unwrap();
    assert_eq!(sim.run_until(Time::from_millis(5)), RunOutcome::Deadline { in_flight: 2 });
    assert_eq!(sim.now(), Time::from_millis(5));
    assert_eq!(sim.step(), Some(Time::from_millis(10)));
    assert_eq!(sim.events().len(), 1);
    assert_eq!(sim.in_flight(), 1);
    assert_eq!(sim.step(), Some(Time::from_millis(10)));
    assert_eq!(sim.step(), None);
    assert_eq!(sim.run_for(ms(100)), RunOutcome::Quiescent { at: Time::from_millis(10) });
    assert_eq!(sim.now(), Time::from_millis(110));
    assert_eq!(sim.events_processed(), 2);
    // Messages sent during a partition are dropped; after healing they flow again.
    sim.partition(&[[a]]).unwrap();
    sim.with_node(a, |core, _| core.send(b, Msg::Seq(3))).unwrap();
    sim.heal();
    sim.with_node(a, |core, _| core.send(b, Msg::Seq(4))).unwrap();
    sim.run();
    let totals = sim.message_totals();
    assert_eq!((totals.sent, totals.delivered, totals.dropped_partition), (4, 3, 1));
}

/// Fires every `period` (or, with a zero period, keeps asking for a timer in the past).
struct Ticker {
    period: Duration,
    next: Time,
    fired: VecDeque<Time>,
}

impl Protocol for Ticker {
    type Message = Msg;
    type Event = Time;
    fn handle_message(&mut self, _now: Time, _from: NodeId, _message: Msg) {}
    fn handle_timeout(&mut self, now: Time) {
        assert!(now >= self.next, "woken at {now} before the deadline {}", self.next);
        self.fired.push_back(now);
        self.next += self.period;
    }
    fn poll_transmit(&mut self) -> Option<Transmit<Msg>> {
        None
    }
    fn poll_timeout(&self) -> Option<Time> {
        Some(self.next)
    }
    fn poll_event(&mut self) -> Option<Time> {
        self.fired.pop_front()
    }
}

#[test]
fn timers_fire_at_their_deadline_and_a_stuck_timer_cannot_stall_time() {
    let mut sim = SimBuilder::new(5)
        .nodes(2)
        .build(|ctx| Ticker {
            period: if ctx.index == 0 { ms(10) } else { Duration::ZERO },
            next: if ctx.index == 0 { Time::from_millis(10) } else { Time::ZERO },
            fired: VecDeque::new(),
        })
        .unwrap();
    let (a, b) = (sim.node_ids()[0], sim.node_ids()[1]);
    // Only timers remain beyond the deadline: quiescent (the stuck timer fired last, at 55 ms).
    assert_eq!(
        sim.run_until(Time::from_millis(55)),
        RunOutcome::Quiescent { at: Time::from_millis(55) }
    );
    let events = sim.drain_events();
    let ticks = |node| events.iter().filter(move |(_, n, _)| *n == node);
    let at_a: Vec<u64> = ticks(a)
        .map(|(at, _, fired)| {
            assert_eq!(at, fired);
            at.as_micros() / 1_000
        })
        .collect();
    assert_eq!(at_a, vec![10, 20, 30, 40, 50]);
    // The core whose deadline never moves is woken at most once per microsecond.
    let at_b: Vec<u64> = ticks(b).take(4).map(|(at, _, _)| at.as_micros()).collect();
    assert_eq!(at_b, vec![0, 1, 2, 3]);
    assert_eq!(ticks(b).count(), 55_001);
    assert_eq!(sim.stats().nodes[&a].timer_fires, 5);
}

/// Not a correctness test: measures simulator throughput on 1,000 nodes, with 200 rumors
/// started 20 ms apart and then all at once (about 1.6 million events each). Run with
/// `cargo test --release -p llmkg-transport --test suite -- --ignored --nocapture sim::`.
#[test]
#[ignore]
fn throughput_1000_nodes() {
    for staggered in [true, false] {
        let started = std::time::Instant::now();
        let mut sim = SimBuilder::new(42)
            .nodes(1_000)
            .default_link(uniform(1, 20).loss(0.01))
            .record_events(false)
            .build(|ctx| Flood::new(&ctx, FloodConfig::default()))
            .unwrap();
        let built = started.elapsed();
        let ids = sim.node_ids().to_vec();
        let run_started = std::time::Instant::now();
        for rumor in 0..200u64 {
            let origin = ids[(rumor as usize * 7) % ids.len()];
            sim.with_node(origin, |core, now| core.originate(now, rumor)).unwrap();
            if staggered {
                sim.run_for(ms(20));
            }
        }
        let outcome = sim.run();
        let elapsed = run_started.elapsed();
        let events = sim.events_processed();
        println!(
            "staggered: {staggered}; build {built:?}; {outcome:?}; {events} events in \
             {elapsed:?} = {:.0} events/s; {:?}",
            events as f64 / elapsed.as_secs_f64(),
            sim.message_totals()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Contract edges: in-flight cuts, restart floors, timers at the end of time, Byzantine window

/// Sends `Seq(0)` from node 0 to node 2 over a 10 ms link and returns what node 2 received.
fn cut_in_flight(fault: impl FnOnce(&mut llmkg_transport::sim::Sim<Recorder>, [NodeId; 3])) -> u64 {
    let link = LinkConfig::with_latency(Latency::Fixed(ms(10)));
    let mut sim =
        SimBuilder::new(41).nodes(3).default_link(link).build(|_| Recorder::default()).unwrap();
    let ids: [NodeId; 3] = sim.node_ids().try_into().unwrap();
    sim.with_node(ids[0], |core, _| core.send(ids[2], Msg::Seq(0))).unwrap();
    sim.run_until(Time::from_millis(2));
    fault(&mut sim, ids);
    assert!(matches!(sim.run(), RunOutcome::Quiescent { .. }));
    let stats = sim.stats();
    check_accounting(41, &stats);
    assert_eq!(stats.messages.sent, 1);
    stats.messages.delivered
}

#[test]
fn a_partition_cuts_copies_in_flight_even_if_it_heals_before_they_arrive() {
    // Separated 2 ms into a 10 ms flight, healed at 4 ms: the copy was on a cut link.
    let delivered = cut_in_flight(|sim, ids| {
        sim.partition(&[[ids[2]]]).unwrap();
        sim.run_until(Time::from_millis(4));
        sim.heal();
    });
    assert_eq!(delivered, 0);
    // A partition that does not separate the two leaves the copy alone.
    let delivered = cut_in_flight(|sim, ids| {
        sim.partition(&[[ids[1]]]).unwrap();
        sim.run_until(Time::from_millis(4));
        sim.heal();
    });
    assert_eq!(delivered, 1);
    // So does one scheduled after the copy arrived.
    let delivered = cut_in_flight(|sim, ids| {
        sim.schedule(Time::from_millis(10), Fault::Partition(vec![vec![ids[2]]])).unwrap();
    });
    assert_eq!(delivered, 1);
}

#[test]
fn a_restarted_receiver_is_not_held_back_by_copies_to_its_previous_incarnation() {
    let mut sim = SimBuilder::new(42).nodes(2).build(|_| Recorder::default()).unwrap();
    let (a, b) = (sim.node_ids()[0], sim.node_ids()[1]);
    sim.set_link(a, b, LinkConfig::with_latency(Latency::Fixed(Duration::from_secs(1)))).unwrap();
    sim.with_node(a, |core, _| core.send(b, Msg::Seq(0))).unwrap();
    sim.crash(b).unwrap();
    sim.restart(b).unwrap();
    sim.set_link(a, b, LinkConfig::with_latency(Latency::Fixed(ms(1)))).unwrap();
    sim.with_node(a, |core, _| core.send(b, Msg::Seq(1))).unwrap();
    sim.run();
    let events = sim.drain_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, Time::from_millis(1), "held back behind a copy that was never due");
    assert_eq!(events[0].2, (a, Msg::Seq(1)));
    assert_eq!(sim.stats().messages.dropped_crash, 1);
}

/// A core whose timer is set to `Time::MAX` (never), or is due forever at the end of time.
struct Forever {
    deadline: Time,
    fires: u64,
}

impl Protocol for Forever {
    type Message = Msg;
    type Event = ();
    fn handle_message(&mut self, _now: Time, _from: NodeId, _message: Msg) {}
    fn handle_timeout(&mut self, _now: Time) {
        self.fires += 1;
    }
    fn poll_transmit(&mut self) -> Option<Transmit<Msg>> {
        None
    }
    fn poll_timeout(&self) -> Option<Time> {
        Some(self.deadline)
    }
    fn poll_event(&mut self) -> Option<()> {
        None
    }
}

#[test]
fn a_deadline_at_the_end_of_time_never_stalls_a_run() {
    // `Time::MAX` means never.
    let mut sim =
        SimBuilder::new(6).nodes(1).build(|_| Forever { deadline: Time::MAX, fires: 0 }).unwrap();
    assert_eq!(sim.run(), RunOutcome::Quiescent { at: Time::ZERO });
    assert_eq!(sim.pending(), 0);
    // A deadline that stays due near the end of time fires once per microsecond that is left
    // (the last time at `Time::MAX` itself), and the run ends.
    let mut sim = SimBuilder::new(6)
        .nodes(1)
        .build(|_| Forever { deadline: Time::from_micros(u64::MAX - 3), fires: 0 })
        .unwrap();
    assert_eq!(sim.run(), RunOutcome::Quiescent { at: Time::MAX });
    assert_eq!(sim.node(sim.node_ids()[0]).unwrap().fires, 4);
    assert_eq!(sim.pending(), 0);
}

#[test]
fn the_replay_window_holds_exactly_the_last_messages_and_shrinks_on_request() {
    let seed = 36;
    let config = ByzantineConfig { replay: 1.0, replay_window: 1, ..ByzantineConfig::honest() };
    let mut sim = byzantine_sim(seed, config, 2);
    let ids = sim.node_ids().to_vec();
    let send = |sim: &mut llmkg_transport::sim::Sim<Node>, range: std::ops::Range<u64>| {
        sim.with_node(ids[0], |core, _| {
            range.for_each(|i| core.inner_mut().send(ids[1], Msg::Seq(i)))
        })
        .unwrap();
        sim.run();
    };
    send(&mut sim, 0..5);
    // With a window of one, each message after the first replays the one just before it.
    let got: Vec<Msg> = received_from_zero(&mut sim).remove(&ids[1]).unwrap();
    let want: Vec<Msg> = [0, 1, 0, 2, 1, 3, 2, 4, 3].into_iter().map(Msg::Seq).collect::<Vec<_>>();
    assert_eq!(got, want, "seed {seed}");
    // Shrinking the window to zero forgets what was remembered: no more replays.
    sim.with_node(ids[0], |core, _| {
        core.set_config(ByzantineConfig { replay: 1.0, ..ByzantineConfig::honest() })
    })
    .unwrap();
    send(&mut sim, 5..8);
    let got: Vec<Msg> = received_from_zero(&mut sim).remove(&ids[1]).unwrap();
    assert_eq!(got, (5..8).map(Msg::Seq).collect::<Vec<_>>(), "seed {seed}");
    assert_eq!(sim.node(ids[0]).unwrap().stats().replayed, 4, "seed {seed}");
}

#[test]
fn a_rumor_claiming_the_largest_hop_count_does_not_overflow() {
    use llmkg_transport::sim::workloads::FloodMessage;
    let mut sim = SimBuilder::new(37)
        .nodes(3)
        .build(|ctx| Flood::new(&ctx, FloodConfig { fanout: usize::MAX, ..FloodConfig::default() }))
        .unwrap();
    let ids = sim.node_ids().to_vec();
    let rumor = FloodMessage::Rumor { id: 5, hops: u32::MAX, padding: vec![] };
    let bytes = llmkg_federation_core::encoding::try_encode(&rumor).unwrap();
    sim.inject_raw(ids[0], ids[1], bytes).unwrap();
    assert!(matches!(sim.run(), RunOutcome::Quiescent { .. }));
    assert!(ids.iter().all(|id| sim.node(*id).unwrap().knows(5)));
    assert_eq!(sim.node(ids[1]).unwrap().hops(5), Some(u32::MAX));
    assert_eq!(sim.node(ids[2]).unwrap().hops(5), Some(u32::MAX));
}

#[test]
fn link_changes_feed_their_configuration_into_the_trace() {
    let run = |loss: f64| {
        let mut sim = SimBuilder::new(38).nodes(2).build(|_| Recorder::default()).unwrap();
        let (a, b) = (sim.node_ids()[0], sim.node_ids()[1]);
        sim.set_link(a, b, LinkConfig::default().loss(loss)).unwrap();
        sim.trace_hash()
    };
    assert_eq!(run(0.25), run(0.25));
    assert_ne!(run(0.25), run(0.5));
}

#[test]
fn link_configs_reject_non_finite_and_out_of_range_values() {
    let ok = LinkConfig::default();
    for bad in [
        ok.clone().loss(f64::NAN),
        ok.clone().loss(f64::INFINITY),
        ok.clone().loss(-0.5),
        ok.clone().duplicate(1.0 + f64::EPSILON),
        ok.clone().duplicate(f64::NEG_INFINITY),
        ok.clone().reorder(f64::NAN, ms(1)),
        ok.clone().reorder(2.0, ms(1)),
        LinkConfig::with_latency(Latency::Uniform { min: ms(2), max: ms(1) }),
    ] {
        assert!(matches!(bad.validate(), Err(SimError::InvalidLink(_))), "{bad:?}");
        let built =
            SimBuilder::new(1).nodes(1).default_link(bad.clone()).build(|_| Recorder::default());
        assert!(matches!(built, Err(SimError::InvalidLink(_))), "{bad:?}");
    }
    // Extreme but valid: zero ranges and the longest durations sample without panicking.
    for good in [
        LinkConfig::with_latency(Latency::Uniform { min: Duration::ZERO, max: Duration::ZERO }),
        LinkConfig::with_latency(Latency::Uniform { min: Duration::MAX, max: Duration::MAX }),
        LinkConfig::with_latency(Latency::Exponential {
            floor: Duration::MAX,
            mean: Duration::MAX,
        }),
        LinkConfig::with_latency(Latency::Exponential {
            floor: Duration::ZERO,
            mean: Duration::ZERO,
        }),
        LinkConfig::with_latency(Latency::Fixed(Duration::MAX)).reorder(1.0, Duration::MAX),
        ok.clone().loss(1.0).duplicate(1.0).reorder(0.0, Duration::ZERO),
    ] {
        let mut sim = SimBuilder::new(2)
            .nodes(2)
            .default_link(good.clone())
            .build(|_| Recorder::default())
            .unwrap();
        let (a, b) = (sim.node_ids()[0], sim.node_ids()[1]);
        sim.with_node(a, |core, _| (0..10).for_each(|i| core.send(b, Msg::Seq(i)))).unwrap();
        assert!(matches!(sim.run(), RunOutcome::Quiescent { .. }), "{good:?}");
        let stats = sim.stats();
        check_accounting(2, &stats);
        assert_eq!(sim.in_flight(), 0, "{good:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Random scenarios: accounting, FIFO, cuts, determinism

mod scenarios {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::sync::Arc;

    use llmkg_transport::sim::{NodeContext, Sim};
    use proptest::prelude::*;
    use rand::Rng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// What [`Chatter`] nodes send: `(incarnation, seq)` increases with every message a node
    /// sends; `epoch` is the harness's fault counter when it was sent.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    struct Data {
        inc: u32,
        seq: u64,
        epoch: u64,
        reply: bool,
    }

    /// A message received: the sender, the message and the fault counter on arrival.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Got {
        from: NodeId,
        data: Data,
        epoch: u64,
    }

    /// Every message a core sent: (sender index, incarnation, seq) -> receiver index.
    type SendLog = BTreeMap<(usize, u32, u64), usize>;

    /// Every few milliseconds (a budget of ticks per incarnation) sends one or two messages
    /// to random nodes (itself included); replies to about a third of what it receives.
    struct Chatter {
        index: usize,
        inc: u32,
        nodes: Arc<[NodeId]>,
        rng: ChaCha8Rng,
        seq: u64,
        budget: u32,
        timer: Option<Time>,
        faults: Rc<Cell<u64>>,
        log: Rc<RefCell<SendLog>>,
        out: VecDeque<Transmit<Data>>,
        events: VecDeque<Got>,
    }

    impl Chatter {
        fn new(ctx: &NodeContext, faults: Rc<Cell<u64>>, log: Rc<RefCell<SendLog>>) -> Self {
            Self {
                index: ctx.index,
                inc: ctx.incarnation,
                nodes: ctx.nodes.clone(),
                rng: ctx.rng(),
                seq: 0,
                budget: 12,
                // Due at once: fires when the node is built or rebuilt.
                timer: Some(Time::ZERO),
                faults,
                log,
                out: VecDeque::new(),
                events: VecDeque::new(),
            }
        }

        fn send(&mut self, to: usize, reply: bool) {
            self.seq += 1;
            self.log.borrow_mut().insert((self.index, self.inc, self.seq), to);
            let data = Data { inc: self.inc, seq: self.seq, epoch: self.faults.get(), reply };
            self.out.push_back(Transmit { to: self.nodes[to], message: data });
        }
    }

    impl Protocol for Chatter {
        type Message = Data;
        type Event = Got;
        fn handle_message(&mut self, _now: Time, from: NodeId, data: Data) {
            if !data.reply && self.rng.next_u64().is_multiple_of(3) {
                let to = self.nodes.iter().position(|n| *n == from).unwrap();
                self.send(to, true);
            }
            self.events.push_back(Got { from, data, epoch: self.faults.get() });
        }
        fn handle_timeout(&mut self, now: Time) {
            if self.budget == 0 {
                self.timer = None;
                return;
            }
            self.budget -= 1;
            for _ in 0..1 + self.rng.next_u64() % 2 {
                let to = (self.rng.next_u64() % self.nodes.len() as u64) as usize;
                self.send(to, false);
            }
            self.timer = Some(now + Duration::from_micros(500 + self.rng.next_u64() % 5_000));
        }
        fn poll_transmit(&mut self) -> Option<Transmit<Data>> {
            self.out.pop_front()
        }
        fn poll_timeout(&self) -> Option<Time> {
            self.timer
        }
        fn poll_event(&mut self) -> Option<Got> {
            self.events.pop_front()
        }
    }

    #[derive(Clone, Debug)]
    struct LinkSpec {
        latency: Latency,
        loss: f64,
        duplicate: f64,
        reorder: (f64, u64),
    }

    impl LinkSpec {
        fn config(&self, reorder: bool) -> LinkConfig {
            let c = LinkConfig::with_latency(self.latency.clone())
                .loss(self.loss)
                .duplicate(self.duplicate);
            if reorder {
                c.reorder(self.reorder.0, Duration::from_micros(self.reorder.1))
            } else {
                c
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// A group label (0..3) per node.
        Partition(Vec<u8>),
        Heal,
        Crash(usize),
        Restart(usize),
        SetLink(usize, usize, LinkSpec),
        ClearLink(usize, usize),
        /// Scheduled (rather than applied) this many microseconds ahead.
        ScheduleDefault(u64, LinkSpec),
        Garbage(usize, usize),
    }

    #[derive(Clone, Debug)]
    struct Scenario {
        seed: u64,
        nodes: usize,
        reorder: bool,
        default: LinkSpec,
        /// Each step after this many microseconds.
        steps: Vec<(u64, Step)>,
    }

    fn probability() -> impl Strategy<Value = f64> {
        prop_oneof![3 => Just(0.0), 4 => 0.0..0.4f64, 1 => Just(1.0)]
    }

    fn link_spec() -> impl Strategy<Value = LinkSpec> {
        let us = Duration::from_micros;
        let latency = prop_oneof![
            (0..4_000u64).prop_map(move |d| Latency::Fixed(us(d))),
            (0..8_000u64, 0..8_000u64)
                .prop_map(move |(a, b)| Latency::Uniform { min: us(a.min(b)), max: us(a.max(b)) }),
            (0..2_000u64, 0..4_000u64)
                .prop_map(move |(f, m)| Latency::Exponential { floor: us(f), mean: us(m) }),
        ];
        (latency, probability(), probability(), (probability(), 0..10_000u64)).prop_map(
            |(latency, loss, duplicate, reorder)| LinkSpec { latency, loss, duplicate, reorder },
        )
    }

    fn scenario() -> impl Strategy<Value = Scenario> {
        (2..=5usize).prop_flat_map(|n| {
            let node = 0..n;
            let step = prop_oneof![
                2 => proptest::collection::vec(0..3u8, n).prop_map(Step::Partition),
                1 => Just(Step::Heal),
                2 => node.clone().prop_map(Step::Crash),
                2 => node.clone().prop_map(Step::Restart),
                1 => (node.clone(), node.clone(), link_spec()).prop_map(|(a, b, l)| Step::SetLink(a, b, l)),
                1 => (node.clone(), node.clone()).prop_map(|(a, b)| Step::ClearLink(a, b)),
                1 => (0..20_000u64, link_spec()).prop_map(|(d, l)| Step::ScheduleDefault(d, l)),
                1 => (node.clone(), node.clone()).prop_map(|(a, b)| Step::Garbage(a, b)),
            ];
            let steps = proptest::collection::vec(
                (prop_oneof![1 => Just(0u64), 4 => 0..15_000u64], step),
                0..12,
            );
            (any::<u64>(), Just(n), any::<bool>(), link_spec(), steps).prop_map(
                |(seed, nodes, reorder, default, steps)| Scenario { seed, nodes, reorder, default, steps },
            )
        })
    }

    /// The state the harness put in force with fault number `epoch`: group labels and which
    /// nodes are up.
    #[derive(Clone)]
    struct Topology {
        groups: Vec<u8>,
        up: Vec<bool>,
    }

    struct Outcome {
        hash: TraceHash,
        stats: SimStats,
        events: Vec<(Time, NodeId, Got)>,
    }

    /// Checks the accounting identity against the independently counted copies in flight.
    fn check_exact_accounting(seed: u64, sim: &Sim<Chatter>) {
        let stats = sim.stats();
        check_accounting(seed, &stats);
        let m = &stats.messages;
        assert_eq!(
            m.sent + m.duplicated,
            m.delivered + m.dropped() + sim.in_flight(),
            "seed {seed}: {m:?}, {} in flight",
            sim.in_flight()
        );
        let per_link: u64 = stats.links.values().map(MessageStats::in_flight).sum();
        assert_eq!(per_link, sim.in_flight(), "seed {seed}: per-link copies in flight");
    }

    fn run(s: &Scenario) -> Outcome {
        let seed = s.seed;
        let faults = Rc::new(Cell::new(0u64));
        let log = Rc::new(RefCell::new(SendLog::new()));
        let (f, l) = (faults.clone(), log.clone());
        let mut sim = SimBuilder::new(seed)
            .nodes(s.nodes)
            .default_link(s.default.config(s.reorder))
            .build(move |ctx| Chatter::new(&ctx, f.clone(), l.clone()))
            .unwrap();
        let ids = sim.node_ids().to_vec();
        let mut topology = vec![Topology { groups: vec![0; s.nodes], up: vec![true; s.nodes] }];
        let mut any_duplication = s.default.duplicate > 0.0;
        let mut garbage = 0u64;
        for (gap, step) in &s.steps {
            sim.run_for(Duration::from_micros(*gap));
            check_exact_accounting(seed, &sim);
            let before = (sim.trace_hash(), sim.stats());
            let mut next = topology.last().unwrap().clone();
            let changed = match step {
                Step::Partition(labels) => {
                    let groups: Vec<Vec<NodeId>> = (1..3u8)
                        .map(|g| (0..s.nodes).filter(|i| labels[*i] == g).map(|i| ids[i]).collect())
                        .collect();
                    sim.partition(&groups).unwrap();
                    next.groups = labels.clone();
                    true
                }
                Step::Heal => {
                    sim.heal();
                    next.groups = vec![0; s.nodes];
                    true
                }
                Step::Crash(i) => match sim.crash(ids[*i]) {
                    Ok(()) => {
                        next.up[*i] = false;
                        true
                    }
                    Err(e) => {
                        assert_eq!(e, SimError::NodeDown(ids[*i]), "seed {seed}");
                        false
                    }
                },
                Step::Restart(i) => {
                    // Counted before the restart: the rebuilt core sends under the new state.
                    faults.set(faults.get() + 1);
                    match sim.restart(ids[*i]) {
                        Ok(()) => {
                            next.up[*i] = true;
                            topology.push(next.clone());
                            continue;
                        }
                        Err(e) => {
                            faults.set(faults.get() - 1);
                            assert_eq!(e, SimError::NodeUp(ids[*i]), "seed {seed}");
                            false
                        }
                    }
                }
                Step::SetLink(a, b, spec) => {
                    any_duplication |= spec.duplicate > 0.0;
                    sim.set_link(ids[*a], ids[*b], spec.config(s.reorder)).unwrap();
                    false
                }
                Step::ClearLink(a, b) => {
                    let clear = Fault::ClearLink { from: ids[*a], to: ids[*b] };
                    sim.apply(clear).unwrap();
                    false
                }
                Step::ScheduleDefault(after, spec) => {
                    any_duplication |= spec.duplicate > 0.0;
                    let at = sim.now() + Duration::from_micros(*after);
                    sim.schedule(at, Fault::SetDefaultLink(spec.config(s.reorder))).unwrap();
                    false
                }
                Step::Garbage(a, b) => {
                    // An over-long varint: never decodes.
                    sim.inject_raw(ids[*a], ids[*b], vec![0xff; 6]).unwrap();
                    garbage += 1;
                    false
                }
            };
            if changed {
                faults.set(faults.get() + 1);
                topology.push(next);
            } else if matches!(step, Step::Crash(_) | Step::Restart(_)) {
                // A refused fault changes nothing, not even the trace.
                assert_eq!((sim.trace_hash(), sim.stats()), before, "seed {seed}: {step:?}");
            }
        }
        let outcome = sim.run();
        assert!(matches!(outcome, RunOutcome::Quiescent { .. }), "seed {seed}: {outcome:?}");
        assert_eq!(sim.in_flight(), 0, "seed {seed}");
        check_exact_accounting(seed, &sim);

        let stats = sim.stats();
        let events = sim.drain_events();
        let log = log.borrow();
        let m = &stats.messages;
        assert_eq!(m.sent, log.len() as u64 + garbage, "seed {seed}: every send counted once");
        assert_eq!(m.delivered, events.len() as u64, "seed {seed}: every delivery reached a core");
        // Garbage copies are duplicated like any others, and only garbage fails to decode.
        assert!(m.dropped_decode <= 2 * garbage, "seed {seed}: {m:?}");
        let index = |id: NodeId| ids.iter().position(|n| *n == id).unwrap();
        let mut copies: BTreeMap<(usize, u32, u64), u32> = BTreeMap::new();
        let mut last: BTreeMap<(usize, usize), (u32, u64)> = BTreeMap::new();
        for (at, node, got) in &events {
            let (from, to) = (index(got.from), index(*node));
            let key = (from, got.data.inc, got.data.seq);
            assert_eq!(
                log.get(&key),
                Some(&to),
                "seed {seed}: {got:?} at {at} was never sent to {to}"
            );
            let n = copies.entry(key).or_default();
            *n += 1;
            assert!(
                *n <= if any_duplication { 2 } else { 1 },
                "seed {seed}: {got:?} delivered {n} times"
            );
            // Nothing that was in flight while sender and receiver were separated, or while the
            // receiver was down, is delivered.
            for (epoch, t) in topology
                .iter()
                .enumerate()
                .take(got.epoch as usize + 1)
                .skip(got.data.epoch as usize)
            {
                assert!(
                    t.up[to],
                    "seed {seed}: {got:?} at {at} reached node {to}, down in epoch {epoch}"
                );
                assert_eq!(
                    t.groups[from], t.groups[to],
                    "seed {seed}: {got:?} at {at} crossed a partition (epoch {epoch}) to node {to}"
                );
            }
            if !s.reorder {
                let sent = (got.data.inc, got.data.seq);
                if let Some(prev) = last.insert((from, to), sent) {
                    assert!(
                        prev <= sent,
                        "seed {seed}: link {from}->{to} delivered {sent:?} after {prev:?}"
                    );
                }
            }
        }
        Outcome { hash: sim.trace_hash(), stats, events }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_scenarios_keep_the_network_contract(s in scenario()) {
            let first = run(&s);
            let again = run(&s);
            prop_assert_eq!(first.hash, again.hash, "seed {}: same scenario, different trace", s.seed);
            prop_assert_eq!(&first.stats, &again.stats, "seed {}", s.seed);
            prop_assert_eq!(&first.events, &again.events, "seed {}", s.seed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Durable protocol state through `KvStore`: a crash keeps exactly what was durable

mod durable_state {
    use std::collections::{BTreeMap, BTreeSet, VecDeque};
    use std::ops::Bound;

    use llmkg_federation_core::kv::{KvBatch, KvError, KvOp, KvStore, RangeIter};
    use llmkg_federation_core::{NodeId, Protocol, Time, Transmit};
    use llmkg_transport::sim::{Latency, LinkConfig, SimBuilder};
    use rand::Rng;
    use rand_chacha::ChaCha8Rng;
    use serde::{Deserialize, Serialize};

    use super::ms;

    type State = BTreeMap<Vec<u8>, Vec<u8>>;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    struct Record {
        seq: u64,
        payload: u64,
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum JournalEvent {
        /// A batch returned `Ok`: these operations are durable.
        Wrote(Vec<KvOp>),
        /// A batch failed: none of it may be on the disk. With each key the batch touched, as
        /// read back right after the failure.
        Failed(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    }

    /// A sans-io core whose durable state goes through `KvStore` only. Every tick it bumps
    /// `seq`, stores the record it is about to send and prunes an old one, all in one batch,
    /// and sends the record only once the batch returned `Ok` (durable before sending).
    /// Records it receives wait in memory and are flushed every third tick in one batch
    /// (with a receive counter): a crash before the flush loses them, as it would lose an
    /// unfinished batch. On (re)start it rebuilds everything from the store, paging through it.
    struct Journal {
        store: Box<dyn KvStore>,
        /// What the store held when this incarnation started.
        recovered: State,
        seq: u64,
        received: u64,
        pending: Vec<(NodeId, Record)>,
        ticks: u64,
        rng: ChaCha8Rng,
        nodes: Vec<NodeId>,
        index: usize,
        timer: Option<Time>,
        out: VecDeque<Transmit<Record>>,
        events: VecDeque<JournalEvent>,
    }

    fn sent_key(seq: u64) -> Vec<u8> {
        [b"sent/".as_slice(), &seq.to_be_bytes()].concat()
    }

    fn u64_at(state: &State, key: &[u8]) -> u64 {
        state.get(key).map_or(0, |v| u64::from_be_bytes(v.as_slice().try_into().unwrap()))
    }

    impl Journal {
        fn open(
            store: Box<dyn KvStore>,
            ctx_rng: ChaCha8Rng,
            nodes: Vec<NodeId>,
            index: usize,
        ) -> Self {
            // Small pages, so that recovery exercises paging.
            let recovered: State = RangeIter::new(&*store, Bound::Unbounded, Bound::Unbounded, 3)
                .collect::<Result<_, KvError>>()
                .unwrap();
            Self {
                seq: u64_at(&recovered, b"seq"),
                received: u64_at(&recovered, b"received"),
                recovered,
                store,
                pending: Vec::new(),
                ticks: 0,
                rng: ctx_rng,
                nodes,
                index,
                timer: Some(Time::ZERO),
                out: VecDeque::new(),
                events: VecDeque::new(),
            }
        }

        fn commit(&mut self, batch: KvBatch) -> bool {
            let ops = batch.ops().to_vec();
            match self.store.write(batch) {
                Ok(()) => {
                    self.events.push_back(JournalEvent::Wrote(ops));
                    true
                }
                Err(KvError::Io(_)) => {
                    let read_back = ops
                        .iter()
                        .map(|op| (op.key().to_vec(), self.store.get(op.key()).unwrap()))
                        .collect();
                    self.events.push_back(JournalEvent::Failed(read_back));
                    false
                }
                Err(e) => panic!("unexpected store error {e}"),
            }
        }
    }

    impl Protocol for Journal {
        type Message = Record;
        type Event = JournalEvent;

        fn handle_message(&mut self, _now: Time, from: NodeId, message: Record) {
            self.pending.push((from, message));
        }

        fn handle_timeout(&mut self, now: Time) {
            self.ticks += 1;
            let seq = self.seq + 1;
            let record = Record { seq, payload: self.rng.next_u64() };
            let mut batch = KvBatch::new()
                .put(b"seq", seq.to_be_bytes())
                .put(sent_key(seq), record.payload.to_be_bytes());
            if seq > 4 {
                batch = batch.delete(sent_key(seq - 4));
            }
            if self.commit(batch) {
                self.seq = seq;
                let to = self.nodes
                    [(self.index + 1 + (self.rng.next_u64() % 3) as usize) % self.nodes.len()];
                self.out.push_back(Transmit { to, message: record });
            }
            if self.ticks.is_multiple_of(3) && !self.pending.is_empty() {
                let received = self.received + self.pending.len() as u64;
                let mut batch = KvBatch::new().put(b"received", received.to_be_bytes());
                for (from, r) in &self.pending {
                    let key = [b"recv/".as_slice(), from.as_bytes(), &r.seq.to_be_bytes()].concat();
                    batch = batch.put(key, r.payload.to_be_bytes());
                }
                // A failed flush keeps the records pending, to be retried at the next flush.
                if self.commit(batch) {
                    self.received = received;
                    self.pending.clear();
                }
            }
            self.timer = Some(now + ms(2 + self.rng.next_u64() % 6));
        }

        fn poll_transmit(&mut self) -> Option<Transmit<Record>> {
            self.out.pop_front()
        }

        fn poll_timeout(&self) -> Option<Time> {
            self.timer
        }

        fn poll_event(&mut self) -> Option<JournalEvent> {
            self.events.pop_front()
        }
    }

    fn apply(model: &mut State, ops: &[KvOp]) {
        for op in ops {
            match op {
                KvOp::Put(k, v) => {
                    model.insert(k.clone(), v.clone());
                }
                KvOp::Delete(k) => {
                    model.remove(k);
                }
            }
        }
    }

    #[derive(Default, Debug)]
    struct Counts {
        crashes: u64,
        restarts: u64,
        failed: u64,
        lost_pending: u64,
    }

    /// One seeded run. After every stretch of virtual time, each node's disk must hold exactly
    /// the operations of the batches that returned `Ok`, applied in order (the model); after
    /// every restart, the state the new incarnation rebuilt must be that model too.
    fn run(seed: u64) -> Counts {
        const NODES: usize = 4;
        let link = LinkConfig::with_latency(Latency::Uniform { min: ms(1), max: ms(4) });
        let mut sim = SimBuilder::new(seed)
            .nodes(NODES)
            .default_link(link)
            .build(|ctx| {
                let rng = ctx.rng();
                Journal::open(Box::new(ctx.disk.clone()), rng, ctx.nodes.to_vec(), ctx.index)
            })
            .unwrap();
        let ids: Vec<NodeId> = sim.node_ids().to_vec();
        let mut models: BTreeMap<NodeId, State> =
            ids.iter().map(|id| (*id, State::new())).collect();
        let mut host = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed ^ 0x5eed);
        let mut counts = Counts::default();

        let drain = |sim: &mut llmkg_transport::sim::Sim<Journal>,
                     models: &mut BTreeMap<NodeId, State>,
                     counts: &mut Counts| {
            for (_, node, event) in sim.drain_events() {
                match event {
                    JournalEvent::Wrote(ops) => apply(models.get_mut(&node).unwrap(), &ops),
                    JournalEvent::Failed(read_back) => {
                        counts.failed += 1;
                        // Right after the failure, every key the batch touched still held
                        // what the successful writes before it left there.
                        let model = &models[&node];
                        for (k, v) in &read_back {
                            assert_eq!(
                                v.as_ref(),
                                model.get(k),
                                "seed {seed}: a failed batch changed key {k:?}"
                            );
                        }
                    }
                }
            }
            for id in sim.node_ids() {
                assert_eq!(
                    &sim.disk(*id).unwrap().entries(),
                    &models[id],
                    "seed {seed}: node {id:?}'s disk is not exactly what returned Ok"
                );
            }
        };

        for _ in 0..80 {
            sim.run_for(ms(1 + host.next_u64() % 30));
            drain(&mut sim, &mut models, &mut counts);
            let id = ids[(host.next_u64() % NODES as u64) as usize];
            match host.next_u64() % 6 {
                0 | 1 => {
                    if sim.is_up(id).unwrap() {
                        // Records received but not yet flushed die with the node.
                        counts.lost_pending += sim.node(id).unwrap().pending.len() as u64;
                        sim.crash(id).unwrap();
                        counts.crashes += 1;
                    } else {
                        sim.restart(id).unwrap();
                        counts.restarts += 1;
                        let core = sim.node(id).unwrap();
                        assert_eq!(
                            core.recovered, models[&id],
                            "seed {seed}: a restarted node rebuilt something else than what was durable"
                        );
                        assert_eq!(core.seq, u64_at(&models[&id], b"seq"), "seed {seed}");
                        assert!(core.pending.is_empty());
                    }
                }
                2 => sim.disk(id).unwrap().fail_next_writes(1 + host.next_u64() % 3),
                3 => {
                    let disk = sim.disk(id).unwrap();
                    disk.set_faulty(true);
                    sim.run_for(ms(host.next_u64() % 15));
                    disk.set_faulty(false);
                    drain(&mut sim, &mut models, &mut counts);
                }
                _ => {}
            }
        }
        for id in &ids {
            if !sim.is_up(*id).unwrap() {
                sim.restart(*id).unwrap();
                counts.restarts += 1;
                assert_eq!(sim.node(*id).unwrap().recovered, models[id], "seed {seed}");
            }
        }
        sim.run_for(ms(50));
        drain(&mut sim, &mut models, &mut counts);
        // Something actually happened: records were sent, received and flushed.
        let flushed: BTreeSet<usize> = models
            .values()
            .enumerate()
            .filter(|(_, m)| m.keys().any(|k| k.starts_with(b"recv/")))
            .map(|(i, _)| i)
            .collect();
        assert!(!flushed.is_empty(), "seed {seed}: no node ever flushed a received record");
        counts
    }

    #[test]
    fn a_crash_keeps_exactly_what_was_durable() {
        let mut total = Counts::default();
        for seed in 0..12 {
            let c = run(seed);
            total.crashes += c.crashes;
            total.restarts += c.restarts;
            total.failed += c.failed;
            total.lost_pending += c.lost_pending;
        }
        // The scenario exercised what it claims to.
        assert!(total.crashes >= 20 && total.restarts >= 20, "{total:?}");
        assert!(total.failed >= 20, "too few failed writes: {total:?}");
        assert!(total.lost_pending >= 5, "too few unflushed records lost in crashes: {total:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Pinned values: the same run on every platform and build
//
// The tests above compare runs within one process, so they cannot see a change that alters
// every run alike: a different sampling order, another RNG draw, a platform's `ln`, a changed
// seed derivation. These pin the values themselves. A deliberate change to the simulator's
// RNG use, sampling order, seed derivation or trace format legitimately changes them: then
// re-pin them on purpose, in the same change, and say so in its description (recorded seeds
// no longer replay the same runs).

/// The trace hash of `gossip_run(7)` (every network feature, faults, the flood workload).
const PINNED_GOSSIP_TRACE: &str =
    "e21659b9d9640540681587f089f4731dffef545f1e0f452dd576815afcf227a6";

#[test]
fn the_trace_hash_of_a_fixed_run_is_pinned() {
    let (hash, stats) = gossip_run(7);
    assert_eq!(
        hash.to_string(),
        PINNED_GOSSIP_TRACE,
        "the trace of seed 7 changed ({:?}); re-pin only if the change is deliberate",
        stats.messages
    );
}

/// One message every second from node 0 to node 1 (so FIFO never holds one back: the
/// longest exponential sample is about 37 means), returning each one's latency in µs.
fn latency_samples(seed: u64, latency: Latency, n: u64) -> Vec<u64> {
    let mut sim = SimBuilder::new(seed)
        .nodes(2)
        .default_link(LinkConfig::with_latency(latency))
        .build(|_| Recorder::default())
        .unwrap();
    let (a, b) = (sim.node_ids()[0], sim.node_ids()[1]);
    (0..n)
        .map(|i| {
            let sent = sim.now();
            sim.with_node(a, |core, _| core.send(b, Msg::Seq(i))).unwrap();
            sim.run_for(Duration::from_secs(1));
            match &sim.drain_events()[..] {
                [(at, node, (_, Msg::Seq(j)))] if *node == b && *j == i => {
                    at.as_micros() - sent.as_micros()
                }
                other => panic!("seed {seed}: message {i}: {other:?}"),
            }
        })
        .collect()
}

/// The latency of the first message of a run with seed `seed`, in µs.
fn first_latency(seed: u64, latency: Latency) -> u64 {
    let mut sim = SimBuilder::new(seed)
        .nodes(2)
        .default_link(LinkConfig::with_latency(latency))
        .build(|_| Recorder::default())
        .unwrap();
    let (a, b) = (sim.node_ids()[0], sim.node_ids()[1]);
    sim.with_node(a, |core, _| core.send(b, Msg::Seq(0))).unwrap();
    assert!(matches!(sim.run(), RunOutcome::Quiescent { .. }), "seed {seed}");
    match &sim.drain_events()[..] {
        [(at, node, _)] if *node == b => at.as_micros(),
        other => panic!("seed {seed}: {other:?}"),
    }
}

/// "A seed gives the same samples on every platform": the latency samples of seed 1 are
/// pinned, for the long-tailed distribution (drawn through the portable logarithm) and the
/// uniform one (integer-only). At millisecond means a sample is rounded to whole µs, which
/// hides the logarithm's last bits; with a mean of 2^56 µs they show (one ulp of the
/// logarithm is 16 µs, and the samples stay far below the end of virtual time), so a
/// platform's `ln` or a less precise series in its place changes the pinned values.
#[test]
fn latency_samples_of_a_seed_are_pinned() {
    let precise =
        Latency::Exponential { floor: Duration::ZERO, mean: Duration::from_micros(1 << 56) };
    let got: Vec<u64> = (1..=8).map(|seed| first_latency(seed, precise.clone())).collect();
    let pinned = [
        24213006481993336,
        77603088087491840,
        33928883501584864,
        79565168976445520,
        41478115600394048,
        98810911023735328,
        40101821875309568,
        14185826968752888,
    ];
    assert_eq!(got, pinned, "exponential latency samples of seeds 1 to 8, mean 2^56 us");
    let exponential = Latency::Exponential { floor: ms(1), mean: ms(10) };
    let got = latency_samples(1, exponential, 12);
    let pinned = [4360, 33437, 26164, 3720, 19323, 2760, 14967, 12972, 4644, 4160, 11393, 6236];
    assert_eq!(got, pinned, "exponential latency samples of seed 1");
    let got = latency_samples(1, Latency::Uniform { min: ms(1), max: ms(50) }, 12);
    let pinned = [36016, 2911, 4956, 38329, 8842, 42091, 13122, 15799, 35034, 36721, 18330, 30026];
    assert_eq!(got, pinned, "uniform latency samples of seed 1");
}

/// The node identities and per-node seeds a master seed derives, pinned (node ids through
/// the trace, per-node seeds because cores draw everything from them).
#[test]
fn derived_node_seeds_are_pinned() {
    let seeds = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut sim = SimBuilder::new(7)
        .nodes(3)
        .build({
            let seeds = seeds.clone();
            move |ctx| {
                let derived = (ctx.index, ctx.incarnation, ctx.seed, ctx.derive_seed("pin"));
                seeds.borrow_mut().push(derived);
                Recorder::default()
            }
        })
        .unwrap();
    // A restart derives the next incarnation's seed.
    let first = sim.node_ids()[0];
    sim.crash(first).unwrap();
    sim.restart(first).unwrap();
    let seeds = seeds.borrow().clone();
    let ids: Vec<String> =
        sim.node_ids().iter().map(|id| id.to_string()[..16].to_owned()).collect();
    assert_eq!(
        ids,
        ["c539725198f1770f", "d5548b641b087f24", "575a55f7f0bd0be7"],
        "node ids of seed 7"
    );
    let pinned = [
        (0, 0, 14471416340908838589, 10805331594304886514),
        (1, 0, 6358442596042826771, 5691147477795397543),
        (2, 0, 594634134220787867, 5221409895779300347),
        (0, 1, 17584087674509945119, 13006497766222725403),
    ];
    assert_eq!(seeds, pinned, "node seeds of seed 7");
}

/// A link keeps its state (FIFO floor, counters) while the link table grows: past its dense
/// stride, then past the dense limit into a map, with copies in flight on the old links.
#[test]
fn link_state_survives_the_table_growing_into_a_map() {
    let seed = 11;
    let mut sim = SimBuilder::new(seed)
        .nodes(3)
        .default_link(uniform(1, 5).loss(0.05))
        .build(|ctx| Flood::new(&ctx, FloodConfig::default()))
        .unwrap();
    let first = sim.node_ids().to_vec();
    sim.with_node(first[0], |core, now| core.originate(now, 1)).unwrap();
    sim.run_for(ms(2));
    let before = sim.stats();
    assert!(before.messages.in_flight() > 0, "nothing in flight to carry over");
    for _ in 0..1100 {
        sim.add_node().unwrap();
    }
    let grown = sim.stats();
    assert_eq!(grown.links.len(), before.links.len());
    for (link, s) in &before.links {
        assert_eq!(grown.links[link].sent, s.sent, "{link:?}");
        assert_eq!(grown.links[link].sent_bytes, s.sent_bytes, "{link:?}");
    }
    check_accounting(seed, &grown);
    assert!(matches!(sim.run(), RunOutcome::Quiescent { .. }));
    assert!(first.iter().all(|id| sim.node(*id).is_some_and(|n| n.knows(1))));
    // The newest node's links live in the map: its rumor reaches its ring successor, node 0.
    let last = *sim.node_ids().last().unwrap();
    sim.with_node(last, |core, now| core.originate(now, 2)).unwrap();
    assert!(matches!(sim.run(), RunOutcome::Quiescent { .. }));
    assert!(sim.node(first[0]).is_some_and(|n| n.knows(2)));
    check_accounting(seed, &sim.stats());
}
