#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The simulator's channels, membership and connectivity: two protocols on one link with a
//! bandwidth model, nodes joining and leaving at run time, connectivity reported to cores,
//! partitions detected after a delay, messages to oneself, and the maximum message size.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use llmkg_federation_core::encoding;
use llmkg_federation_core::{ChannelId, HostInfo, LinkState, NodeId, Protocol, Time, Transmit};
use llmkg_transport::sim::{
    Bandwidth, Fault, Latency, LinkConfig, Mux, MuxEvent, MuxMessage, RunOutcome, SimBuilder,
    SimError,
};
use serde::{Deserialize, Serialize};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ch(n: u8) -> ChannelId {
    ChannelId::new(n).unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. A flooding channel does not hold up a quiet one

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Blob {
    seq: u64,
    sent_at: u64,
    pad: Vec<u8>,
}

/// Sends `count` blobs of `size` padding bytes to `to`, one every `interval` (all at once
/// when the interval is zero); reports each blob it receives with its one-way latency.
struct Stream {
    to: Option<NodeId>,
    size: usize,
    count: u64,
    interval: Duration,
    next: u64,
    due: Option<Time>,
    out: VecDeque<Transmit<Blob>>,
    events: VecDeque<(u64, Duration)>,
}

impl Stream {
    fn new(to: Option<NodeId>, size: usize, count: u64, interval: Duration) -> Self {
        let due = to.map(|_| Time::ZERO);
        Self {
            to,
            size,
            count,
            interval,
            next: 0,
            due,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }
}

impl Protocol for Stream {
    type Message = Blob;
    type Event = (u64, Duration);

    fn handle_message(&mut self, now: Time, _from: NodeId, blob: Blob) {
        self.events.push_back((blob.seq, now - Time::from_micros(blob.sent_at)));
    }
    fn handle_timeout(&mut self, now: Time) {
        let Some(to) = self.to else { return };
        loop {
            let blob = Blob { seq: self.next, sent_at: now.as_micros(), pad: vec![7; self.size] };
            self.out.push_back(Transmit { to, message: blob });
            self.next += 1;
            if self.next == self.count || !self.interval.is_zero() {
                break;
            }
        }
        self.due = (self.next < self.count).then(|| now + self.interval);
    }
    fn poll_transmit(&mut self) -> Option<Transmit<Blob>> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Time> {
        self.due
    }
    fn poll_event(&mut self) -> Option<(u64, Duration)> {
        self.events.pop_front()
    }
}

const FLOOD_PAD: usize = 10_000;
const FLOOD_COUNT: u64 = 200;
const QUIET_COUNT: u64 = 50;
const BYTES_PER_SEC: u64 = 1_000_000;
const PROPAGATION_MS: u64 = 1;

/// Node 0 floods node 1 on channel 1 (200 blobs of 10 kB at once: 2 s of transmission at
/// 1 MB/s) while sending a small blob every `interval` on channel 2. Returns the quiet blobs'
/// latencies, and the longest time a flood blob takes to transmit.
fn flood_vs_quiet(
    seed: u64,
    separate_channels: bool,
    interval: Duration,
) -> (Vec<Duration>, Duration, Duration) {
    let link = LinkConfig::with_latency(Latency::Fixed(ms(PROPAGATION_MS)))
        .bandwidth(Bandwidth::new(BYTES_PER_SEC).queue_limit(10_000));
    let mut sim = SimBuilder::new(seed)
        .nodes(2)
        .default_link(link)
        .build(move |ctx| {
            let to = (ctx.index == 0).then(|| ctx.nodes[1]);
            let flood = Stream::new(to, FLOOD_PAD, FLOOD_COUNT, Duration::ZERO);
            let quiet = Stream::new(to, 0, QUIET_COUNT, interval);
            Mux::new((ch(1), flood), (ch(2), quiet)).unwrap()
        })
        .unwrap();
    if separate_channels {
        sim.set_channel_of(MuxMessage::channel);
    }
    assert!(matches!(sim.run(), RunOutcome::Quiescent { .. }));
    let stats = sim.stats();
    assert_eq!(stats.messages.delivered, FLOOD_COUNT + QUIET_COUNT);
    assert_eq!(stats.messages.dropped(), 0);
    let mut quiet = Vec::new();
    let mut flood_seen = 0;
    for (_, _, event) in sim.drain_events() {
        match event {
            MuxEvent::First(_) => flood_seen += 1,
            MuxEvent::Second((_, latency)) => quiet.push(latency),
        }
    }
    assert_eq!((flood_seen, quiet.len() as u64), (FLOOD_COUNT, QUIET_COUNT));
    let len = |m: &MuxMessage<Blob, Blob>| encoding::try_encode(m).unwrap().len() as u64;
    let blob = |pad| Blob { seq: u64::MAX, sent_at: u64::MAX, pad: vec![7; pad] };
    let transmit = |bytes: u64| Duration::from_micros((bytes * 1_000_000).div_ceil(BYTES_PER_SEC));
    let flood_tx = transmit(len(&MuxMessage::First(ch(1), blob(FLOOD_PAD))));
    let quiet_tx = transmit(len(&MuxMessage::Second(ch(2), blob(0))));
    (quiet, flood_tx, quiet_tx)
}

/// The stated bound: with per-channel queues served by deficit round robin, a message of a
/// channel that uses less than its fair share of the link in bytes waits at most for the
/// flood message being transmitted (a busy channel sends at most one message per turn once
/// its allowance is spent), then takes its own transmission time and the propagation delay:
///
///   latency <= propagation + transmit(largest flood message) + transmit(own message).
///
/// Measured (1 ms propagation, 1 MB/s, 10 kB flood messages): quiet latency at most
/// 11.011 ms on its own channel (bound 11.047 ms), whether the quiet channel sends every
/// 20 ms or every 2 ms (five small messages per flood message: one message per turn would
/// let its queue grow), against 2.002 s when both share one channel (the first quiet message
/// waits behind the whole flood).
#[test]
fn a_flooding_channel_does_not_hold_up_a_quiet_one_beyond_the_bound() {
    for (seed, interval) in [(1, ms(20)), (2, ms(20)), (3, ms(20)), (1, ms(2)), (2, ms(2))] {
        let (separate, flood_tx, quiet_tx) = flood_vs_quiet(seed, true, interval);
        let bound = ms(PROPAGATION_MS) + flood_tx + quiet_tx;
        let worst = separate.iter().max().copied().unwrap();
        assert!(worst <= bound, "seed {seed}: quiet latency {worst:?} above the bound {bound:?}");

        let (shared, _, _) = flood_vs_quiet(seed, false, interval);
        let baseline = shared.iter().max().copied().unwrap();
        assert!(
            baseline > bound * 50,
            "seed {seed}: on one channel the flood should hold the quiet messages up: {baseline:?}"
        );
        eprintln!(
            "seed {seed}, a quiet message every {interval:?}: quiet latency max {worst:?} \
             (bound {bound:?}) on its own channel, max {baseline:?} sharing the flood's channel"
        );
    }
}

#[test]
fn a_full_channel_queue_drops_and_counts_without_touching_other_channels() {
    let link = LinkConfig::with_latency(Latency::Fixed(ms(1)))
        .bandwidth(Bandwidth::new(BYTES_PER_SEC).queue_limit(10));
    let mut sim = SimBuilder::new(5)
        .nodes(2)
        .default_link(link)
        .build(|ctx| {
            let to = (ctx.index == 0).then(|| ctx.nodes[1]);
            let flood = Stream::new(to, FLOOD_PAD, FLOOD_COUNT, Duration::ZERO);
            let quiet = Stream::new(to, 0, QUIET_COUNT, ms(10));
            Mux::new((ch(1), flood), (ch(2), quiet)).unwrap()
        })
        .unwrap();
    sim.set_channel_of(MuxMessage::channel);
    sim.run();
    let m = sim.stats().messages;
    // One in transmission, ten queued; the rest of the burst overflows.
    assert_eq!(m.dropped_overflow, FLOOD_COUNT - 11);
    assert_eq!(m.delivered, 11 + QUIET_COUNT);
    assert_eq!(m.sent, m.delivered + m.dropped());
}

// ---------------------------------------------------------------------------------------------
// 2. Membership and connectivity

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Hello(u32);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Start(usize),
    Peer(NodeId, LinkState),
    Hello(NodeId, u32),
}

/// Greets every peer reported up, a few times; reports every input.
#[derive(Default)]
struct Greeter {
    out: VecDeque<Transmit<Hello>>,
    events: VecDeque<Seen>,
}

impl Protocol for Greeter {
    type Message = Hello;
    type Event = Seen;
    fn handle_message(&mut self, _now: Time, from: NodeId, Hello(n): Hello) {
        self.events.push_back(Seen::Hello(from, n));
    }
    fn handle_timeout(&mut self, _now: Time) {}
    fn poll_transmit(&mut self) -> Option<Transmit<Hello>> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Time> {
        None
    }
    fn poll_event(&mut self) -> Option<Seen> {
        self.events.pop_front()
    }
    fn handle_start(&mut self, _now: Time, host: HostInfo) {
        self.events.push_back(Seen::Start(host.max_message_len));
    }
    fn handle_peer(&mut self, _now: Time, peer: NodeId, link: LinkState) {
        self.events.push_back(Seen::Peer(peer, link));
        if link == LinkState::Up {
            for n in 0..3 {
                self.out.push_back(Transmit { to: peer, message: Hello(n) });
            }
        }
    }
}

type Log = Vec<(Time, NodeId, Seen)>;

/// Three greeters on lossy, jittery links.
fn greeters(seed: u64) -> llmkg_transport::sim::Sim<Greeter> {
    let link = LinkConfig::with_latency(Latency::Uniform { min: ms(1), max: ms(8) }).loss(0.1);
    SimBuilder::new(seed)
        .nodes(3)
        .default_link(link)
        .max_message_len(4096)
        .build(|_| Greeter::default())
        .unwrap()
}

/// Three nodes; a fourth joins, one crashes, one leaves, the crashed one restarts, a fifth
/// joins — all while greetings are in flight over lossy, jittery links.
fn membership_run(seed: u64) -> (Log, llmkg_transport::sim::TraceHash, Vec<NodeId>) {
    let mut sim = greeters(seed);
    let ids = sim.node_ids().to_vec();
    sim.run_for(ms(3));
    let d = sim.add_node().unwrap();
    sim.run_for(ms(2));
    sim.crash(ids[1]).unwrap();
    sim.run_for(ms(2));
    sim.remove_node(ids[0]).unwrap();
    assert_eq!(sim.remove_node(ids[0]), Err(SimError::Removed(ids[0])));
    assert_eq!(sim.crash(ids[0]), Err(SimError::Removed(ids[0])));
    sim.run_for(ms(1));
    sim.restart(ids[1]).unwrap();
    let e = sim.add_node().unwrap();
    assert!(matches!(sim.run(), RunOutcome::Quiescent { .. }));
    assert_eq!(sim.members(), vec![ids[1], ids[2], d, e]);
    assert!(!sim.is_member(ids[0]));
    let stats = sim.stats();
    assert_eq!((stats.joined, stats.left), (2, 1));
    assert!(stats.nodes[&ids[0]].removed);
    (sim.drain_events(), sim.trace_hash(), sim.members())
}

/// Checks, for one run, what every core was told: started first with the maximum length,
/// never told about itself, links alternating up and down starting up, greetings only from a
/// peer whose link is up, and at the end every running member up with every other.
fn check_connectivity(seed: u64, log: &Log, members: &[NodeId]) {
    // (node, incarnation start index) -> view; a restart starts a fresh view.
    let mut views: BTreeMap<NodeId, BTreeMap<NodeId, LinkState>> = BTreeMap::new();
    let mut started: BTreeMap<NodeId, bool> = BTreeMap::new();
    for (at, node, seen) in log {
        match seen {
            Seen::Start(max) => {
                assert_eq!(*max, 4096, "seed {seed}");
                started.insert(*node, true);
                views.insert(*node, BTreeMap::new());
            }
            Seen::Peer(peer, link) => {
                assert!(started.get(node).copied().unwrap_or(false), "seed {seed}: not started");
                assert_ne!(peer, node, "seed {seed}: told about itself");
                let view = views.entry(*node).or_default();
                let before = view.get(peer).copied().unwrap_or(LinkState::Down);
                assert_ne!(before, *link, "seed {seed}: {node:?} told {link:?} twice at {at}");
                view.insert(*peer, *link);
            }
            Seen::Hello(from, _) => {
                let up = views.get(node).and_then(|v| v.get(from)).copied();
                assert_eq!(
                    up,
                    Some(LinkState::Up),
                    "seed {seed}: greeting outside the link at {at}"
                );
            }
        }
    }
    for node in members {
        let view = &views[node];
        for peer in members.iter().filter(|p| *p != node) {
            assert_eq!(view.get(peer), Some(&LinkState::Up), "seed {seed}: final view");
        }
        let up = view.values().filter(|l| **l == LinkState::Up).count();
        assert_eq!(up, members.len() - 1, "seed {seed}: a departed node still seen up");
    }
}

/// The same membership changes, scheduled in advance rather than made between steps.
fn scheduled_membership_run(seed: u64) -> (Log, llmkg_transport::sim::TraceHash, Vec<NodeId>) {
    let mut sim = greeters(seed);
    let ids = sim.node_ids().to_vec();
    let (d, e) = ([0xd0; 32], [0xe0; 32]);
    let id =
        |secret: [u8; 32]| llmkg_federation_core::NodeKeypair::from_secret_bytes(secret).node_id();
    let at = |millis: u64| Time::from_millis(millis);
    sim.schedule(at(3), Fault::Join { secret: d }).unwrap();
    sim.schedule(at(5), Fault::Crash(ids[1])).unwrap();
    sim.schedule(at(7), Fault::Remove(ids[0])).unwrap();
    sim.schedule(at(8), Fault::Restart(ids[1])).unwrap();
    sim.schedule(at(8), Fault::Join { secret: e }).unwrap();
    // A second join of the same identity, scheduled before the first applied, does nothing.
    sim.schedule(at(9), Fault::Join { secret: e }).unwrap();
    assert!(matches!(sim.run(), RunOutcome::Quiescent { .. }));
    // Once it has joined, scheduling it again is refused.
    assert_eq!(
        sim.schedule(at(20), Fault::Join { secret: e }),
        Err(SimError::DuplicateNode(id(e)))
    );
    assert_eq!(sim.members(), vec![ids[1], ids[2], id(d), id(e)]);
    assert_eq!((sim.stats().joined, sim.stats().left), (2, 1));
    (sim.drain_events(), sim.trace_hash(), sim.members())
}

#[test]
fn scheduled_joins_and_leaves_are_deterministic_and_cores_see_their_links() {
    for seed in 0..100 {
        let (log, hash, members) = scheduled_membership_run(seed);
        check_connectivity(seed, &log, &members);
        let (again, hash_again, _) = scheduled_membership_run(seed);
        assert_eq!(
            (log, hash),
            (again, hash_again),
            "seed {seed}: the same seed gives the same run"
        );
    }
}

#[test]
fn nodes_join_and_leave_at_run_time_deterministically_and_cores_see_their_links() {
    let mut hashes = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let (log, hash, members) = membership_run(seed);
        check_connectivity(seed, &log, &members);
        let (again, hash_again, _) = membership_run(seed);
        assert_eq!(log, again, "seed {seed}: the same seed gives the same run");
        assert_eq!(hash, hash_again, "seed {seed}");
        hashes.insert(hash);
    }
    assert!(hashes.len() > 190, "different seeds differ: {} distinct traces", hashes.len());
}

#[test]
fn partitions_are_reported_only_after_the_detection_delay() {
    let build = |detection| {
        SimBuilder::new(9)
            .nodes(4)
            .partition_detection(detection)
            .build(|_| Greeter::default())
            .unwrap()
    };
    let peer_events = |sim: &mut llmkg_transport::sim::Sim<Greeter>| {
        let ids = sim.node_ids().to_vec();
        sim.run();
        sim.drain_events();
        sim.schedule(
            Time::from_millis(10),
            llmkg_transport::sim::Fault::Partition(vec![ids[..2].to_vec()]),
        )
        .unwrap();
        sim.schedule(Time::from_millis(200), llmkg_transport::sim::Fault::Heal).unwrap();
        // Too short to be noticed.
        sim.schedule(
            Time::from_millis(300),
            llmkg_transport::sim::Fault::Partition(vec![ids[..1].to_vec()]),
        )
        .unwrap();
        sim.schedule(Time::from_millis(320), llmkg_transport::sim::Fault::Heal).unwrap();
        sim.run();
        let events: Vec<(Time, usize, usize, LinkState)> = sim
            .drain_events()
            .into_iter()
            .filter_map(|(at, node, seen)| match seen {
                Seen::Peer(peer, link) => {
                    Some((at, sim.index_of(node).unwrap(), sim.index_of(peer).unwrap(), link))
                }
                _ => None,
            })
            .collect();
        events
    };
    assert!(peer_events(&mut build(None)).is_empty(), "undetected partitions report nothing");

    let events = peer_events(&mut build(Some(ms(50))));
    let cross = [(0, 2), (0, 3), (1, 2), (1, 3), (2, 0), (2, 1), (3, 0), (3, 1)];
    let mut downs: Vec<_> = events.iter().filter(|e| e.3 == LinkState::Down).collect();
    let mut ups: Vec<_> = events.iter().filter(|e| e.3 == LinkState::Up).collect();
    downs.sort_by_key(|e| (e.1, e.2));
    ups.sort_by_key(|e| (e.1, e.2));
    assert_eq!(downs.iter().map(|e| (e.1, e.2)).collect::<Vec<_>>(), cross);
    assert_eq!(ups.iter().map(|e| (e.1, e.2)).collect::<Vec<_>>(), cross);
    assert!(downs.iter().all(|e| e.0 == Time::from_millis(60)), "{downs:?}");
    assert!(ups.iter().all(|e| e.0 == Time::from_millis(250)), "{ups:?}");
}

// ---------------------------------------------------------------------------------------------
// 3. Sending to oneself, and the maximum message size

/// Sends itself `n` numbers (and one oversized message) when started; reports what arrives.
struct SelfTalk {
    n: u32,
    out: VecDeque<Transmit<Vec<u8>>>,
    events: VecDeque<(NodeId, Vec<u8>)>,
    me: NodeId,
}

impl Protocol for SelfTalk {
    type Message = Vec<u8>;
    type Event = (NodeId, Vec<u8>);
    fn handle_message(&mut self, _now: Time, from: NodeId, m: Vec<u8>) {
        self.events.push_back((from, m));
    }
    fn handle_timeout(&mut self, _now: Time) {}
    fn poll_transmit(&mut self) -> Option<Transmit<Vec<u8>>> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Time> {
        None
    }
    fn poll_event(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.events.pop_front()
    }
    fn handle_start(&mut self, _now: Time, host: HostInfo) {
        for i in 0..self.n {
            self.out.push_back(Transmit { to: self.me, message: vec![i as u8] });
        }
        self.out.push_back(Transmit { to: self.me, message: vec![0; host.max_message_len] });
    }
    fn handle_peer(&mut self, _now: Time, peer: NodeId, _link: LinkState) {
        assert_ne!(peer, self.me, "no connectivity is reported for oneself");
    }
}

#[test]
fn a_node_receives_what_it_sends_itself_in_order_without_faults_and_oversize_is_counted() {
    // Every link loses everything, jitters and reorders; loopback is not a link.
    let link = LinkConfig::with_latency(Latency::Uniform { min: ms(1), max: ms(50) })
        .loss(1.0)
        .reorder(0.5, ms(100));
    let mut sim = SimBuilder::new(3)
        .nodes(2)
        .default_link(link)
        .max_message_len(64)
        .build(|ctx| SelfTalk { n: 20, out: VecDeque::new(), events: VecDeque::new(), me: ctx.id })
        .unwrap();
    let a = sim.node_ids()[0];
    sim.partition(&[[a]]).unwrap();
    assert_eq!(sim.run(), RunOutcome::Quiescent { at: Time::ZERO });
    let events: Vec<_> = sim.drain_events().into_iter().filter(|(_, n, _)| *n == a).collect();
    let expected: Vec<_> = (0..20u8).map(|i| (Time::ZERO, a, (a, vec![i]))).collect();
    assert_eq!(events, expected, "delivered at once, in order, from itself");
    let stats = sim.stats();
    assert_eq!(stats.oversized, 2, "one per node: the encoding exceeds 64 bytes");
    assert_eq!(stats.nodes[&a].oversized, 1);
    assert_eq!(stats.links[&(a, a)].delivered, 20);
}
