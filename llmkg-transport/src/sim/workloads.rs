//! Small ready-made cores for simulator tests and benchmarks.
//!
//! [`Flood`] spreads rumors by push gossip with acknowledgements and retransmission, which
//! exercises every part of the simulator (random fan-out from an injected RNG, timers, loss
//! recovery, partitions) with a tiny amount of per-message work. A 1,000-node run:
//!
//! ```
//! use llmkg_transport::sim::workloads::{Flood, FloodConfig};
//! use llmkg_transport::sim::{LinkConfig, Latency, RunOutcome, SimBuilder};
//! use std::time::Duration;
//!
//! let link = LinkConfig::with_latency(Latency::Uniform {
//!     min: Duration::from_millis(1),
//!     max: Duration::from_millis(20),
//! })
//! .loss(0.05);
//! let mut sim = SimBuilder::new(1)
//!     .nodes(1_000)
//!     .default_link(link)
//!     .record_events(false)
//!     .build(|ctx| Flood::new(&ctx, FloodConfig::default()))?;
//! let origin = sim.node_ids()[0];
//! sim.with_node(origin, |core, now| core.originate(now, 42))?;
//! assert!(matches!(sim.run(), RunOutcome::Quiescent { .. }));
//! assert!(sim.node_ids().iter().all(|id| sim.node(*id).is_some_and(|n| n.knows(42))));
//! println!("{} events", sim.stats().events);
//! # Ok::<(), llmkg_transport::sim::SimError>(())
//! ```

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::{NodeId, Protocol, Time, Transmit};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::network::index_below;
use super::{IdMap, NodeContext};

/// Parameters of a [`Flood`] node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloodConfig {
    /// How many distinct random peers each node forwards a new rumor to.
    pub fanout: usize,
    /// Also forward to the next node by index (wrapping), which guarantees that a rumor
    /// reaches every node once the network lets it through; random fan-out alone misses a
    /// few nodes with high probability.
    pub ring: bool,
    /// How long to wait for an acknowledgement before sending a rumor again.
    pub retransmit_after: Duration,
    /// How many times a rumor is re-sent to one peer before giving up (a peer that stays down
    /// would otherwise keep the sender's timer alive forever).
    pub max_retransmits: u32,
    /// Extra bytes carried by every rumor, to model larger messages.
    pub padding: usize,
}

impl Default for FloodConfig {
    /// Fan-out 3 plus the ring successor, retransmission every 200 ms up to 64 times, no
    /// padding.
    fn default() -> Self {
        Self {
            fanout: 3,
            ring: true,
            retransmit_after: Duration::from_millis(200),
            max_retransmits: 64,
            padding: 0,
        }
    }
}

/// What [`Flood`] nodes send each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FloodMessage {
    /// A rumor, `hops` links away from its origin on arrival.
    Rumor {
        /// The rumor.
        id: u64,
        /// Hops travelled, including this one.
        hops: u32,
        /// Filler (see [`FloodConfig::padding`]).
        padding: Vec<u8>,
    },
    /// Acknowledges a rumor (sent for every copy received, new or not).
    Ack {
        /// The rumor.
        id: u64,
    },
}

/// Emitted by a [`Flood`] node the first time it learns a rumor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learned {
    /// The rumor.
    pub rumor: u64,
    /// Hops from the origin (0 at the origin).
    pub hops: u32,
}

/// A push-gossip node with acknowledgements and retransmission.
///
/// When a node learns a rumor (from the host via [`originate`](Flood::originate), or from a
/// peer) it emits [`Learned`] and forwards the rumor to [`FloodConfig::fanout`] distinct peers
/// chosen with its injected RNG, plus its ring successor if [`FloodConfig::ring`] is set.
/// Every received copy is acknowledged; an unacknowledged forward is re-sent every
/// [`FloodConfig::retransmit_after`] until acknowledged or [`FloodConfig::max_retransmits`] is
/// exhausted. The timer is cleared when nothing is awaiting acknowledgement, so a finished
/// flood is quiescent. All state is in memory: a restarted node has forgotten everything.
#[derive(Debug)]
// Every message goes to a node not touched for a while, so each cache line of the node's
// state it reads is a miss: the fields most messages read come first, in declaration order,
// and the RNG (over 300 bytes, read only when a rumor is new) is behind a pointer.
#[repr(C)]
pub struct Flood {
    out: VecDeque<Transmit<FloodMessage>>,
    /// Known rumors and their hop counts (looked up, never iterated).
    known: IdMap<u64, u32>,
    /// Retransmission deadlines in the order they were set, which is also time order (the
    /// interval is constant and time never goes backwards). Entries whose forward was
    /// acknowledged meanwhile are skipped; the front is always live, so it is the deadline.
    deadlines: VecDeque<Deadline>,
    /// The rumor each slot holds or last held, by slot. A rumor is learned once, so at most
    /// one slot ever holds it: an acknowledgement finds its slot by scanning these few words
    /// (without touching `known`), or through `active` once there are more than
    /// [`SCAN_SLOTS`] slots.
    rumors: Vec<u64>,
    /// One entry per slot; a slot is free when it has no live forward (see `free`).
    slots: Vec<Slot>,
    /// The forwards of slot `s` are `forwards[s * stride..(s + 1) * stride]`, in the order
    /// they were sent; a rumor goes to at most `stride` peers.
    forwards: Vec<Forward>,
    stride: usize,
    /// Forwards still awaiting acknowledgement, over all slots.
    unacknowledged: usize,
    nodes: Arc<[NodeId]>,
    events: VecDeque<Learned>,
    /// Slots without live forwards, for reuse.
    free: Vec<u32>,
    /// Scratch space for the peers a new rumor goes to (kept to avoid an allocation each time).
    targets: Vec<usize>,
    index: usize,
    rng: Box<ChaCha8Rng>,
    config: FloodConfig,
    /// Rumors with forwards awaiting acknowledgement -> their slot (looked up, never
    /// iterated). Built when the slots first outnumber [`SCAN_SLOTS`], kept from then on.
    active: Option<IdMap<u64, u32>>,
    retransmissions: u64,
    gave_up: u64,
}

/// The peers (indexes into the node list) node `index` of `n` forwards a new rumor to, into
/// `targets` (cleared first): every other node if there are at most `fanout + 1`, else
/// `fanout` distinct others drawn with `rng`, plus the ring successor if `ring` is set.
fn choose_targets(
    rng: &mut ChaCha8Rng,
    n: usize,
    index: usize,
    config: &FloodConfig,
    targets: &mut Vec<usize>,
) {
    targets.clear();
    if n <= config.fanout.saturating_add(1) {
        targets.extend((0..n).filter(|i| *i != index));
        return;
    }
    while targets.len() < config.fanout {
        let pick = index_below(rng, n);
        if pick != index && !targets.contains(&pick) {
            targets.push(pick);
        }
    }
    let next = (index + 1) % n;
    if config.ring && next != index && !targets.contains(&next) {
        targets.push(next);
    }
}

/// Up to this many slots an acknowledgement scans `Flood::rumors` for its rumor.
const SCAN_SLOTS: usize = 16;

/// No peer: the forward was acknowledged or abandoned.
const DONE: u32 = u32::MAX;

/// A rumor whose forwards are awaited (the rumor is in `Flood::rumors`).
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The hops at which this node learned the rumor.
    hops: u32,
    /// Incremented each time the slot is freed, so deadlines set for its previous rumor are
    /// recognised as stale.
    generation: u32,
    /// Forwards not yet acknowledged or abandoned.
    live: u32,
}

/// One forward of a rumor to one peer.
#[derive(Clone, Copy, Debug)]
struct Forward {
    /// The next retransmission.
    due: Time,
    /// The peer's index in `nodes`, or [`DONE`].
    peer: u32,
    /// Retransmissions so far.
    attempts: u32,
}

impl Forward {
    const DONE: Forward = Forward { due: Time::ZERO, peer: DONE, attempts: 0 };
}

/// A retransmission deadline of forward `forward` of `slot`, set while the slot had
/// generation `generation`.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    due: Time,
    slot: u32,
    generation: u32,
    forward: u32,
}

impl Flood {
    /// A node built from the simulator's context (its index, the node list and its seed).
    pub fn new(ctx: &NodeContext, config: FloodConfig) -> Self {
        Self::from_parts(ctx.index, ctx.nodes.clone(), ctx.rng(), config)
    }

    fn from_parts(
        index: usize,
        nodes: Arc<[NodeId]>,
        rng: ChaCha8Rng,
        config: FloodConfig,
    ) -> Self {
        let n = nodes.len();
        // The most peers `learn` forwards one rumor to.
        let stride = if n <= config.fanout.saturating_add(1) {
            n.saturating_sub(1)
        } else {
            config.fanout + usize::from(config.ring)
        };
        Self {
            index,
            nodes,
            rng: Box::new(rng),
            config,
            known: IdMap::default(),
            rumors: Vec::new(),
            active: None,
            slots: Vec::new(),
            forwards: Vec::new(),
            stride,
            free: Vec::new(),
            unacknowledged: 0,
            deadlines: VecDeque::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            targets: Vec::new(),
            retransmissions: 0,
            gave_up: 0,
        }
    }

    /// Starts spreading `rumor` from this node; false if it was already known.
    pub fn originate(&mut self, now: Time, rumor: u64) -> bool {
        self.learn(now, rumor, 0)
    }

    /// Whether this node knows `rumor`.
    pub fn knows(&self, rumor: u64) -> bool {
        self.known.contains_key(&rumor)
    }

    /// Hops from the origin at which this node learned `rumor`.
    pub fn hops(&self, rumor: u64) -> Option<u32> {
        self.known.get(&rumor).copied()
    }

    /// Number of rumors known.
    pub fn known_count(&self) -> usize {
        self.known.len()
    }

    /// Forwards still awaiting acknowledgement.
    pub fn unacknowledged(&self) -> usize {
        self.unacknowledged
    }

    /// Rumor copies re-sent so far.
    pub fn retransmissions(&self) -> u64 {
        self.retransmissions
    }

    /// Forwards abandoned after [`FloodConfig::max_retransmits`].
    pub fn gave_up(&self) -> u64 {
        self.gave_up
    }

    fn learn(&mut self, now: Time, rumor: u64, hops: u32) -> bool {
        match self.known.entry(rumor) {
            Entry::Occupied(_) => return false,
            Entry::Vacant(v) => v.insert(hops),
        };
        self.events.push_back(Learned { rumor, hops });
        let mut targets = std::mem::take(&mut self.targets);
        choose_targets(&mut self.rng, self.nodes.len(), self.index, &self.config, &mut targets);
        if !targets.is_empty() {
            let due = now + self.interval();
            let (slot, generation) = self.open_slot(rumor, hops);
            let base = slot as usize * self.stride;
            let mut live = 0;
            for (i, &t) in targets.iter().enumerate().take(self.stride) {
                let Some(&peer) = self.nodes.get(t) else { continue };
                // `hops` may come from a peer: saturate rather than overflow.
                self.send_rumor(peer, rumor, hops.saturating_add(1));
                if let Some(f) = self.forwards.get_mut(base + i) {
                    // Indices below `nodes.len()`, which the simulator keeps within u32.
                    *f = Forward { due, peer: t as u32, attempts: 0 };
                    live += 1;
                    self.deadlines.push_back(Deadline { due, slot, generation, forward: i as u32 });
                }
            }
            self.unacknowledged += live as usize;
            match self.slots.get_mut(slot as usize) {
                Some(s) if live > 0 => s.live = live,
                _ => self.close_slot(slot),
            }
        }
        self.targets = targets;
        true
    }

    /// A free slot for `rumor` (with every forward [`Forward::DONE`]) and its generation.
    fn open_slot(&mut self, rumor: u64, hops: u32) -> (u32, u32) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = self.slots.len() as u32;
                self.slots.push(Slot { hops, generation: 0, live: 0 });
                self.rumors.push(rumor);
                self.forwards.resize(self.forwards.len() + self.stride, Forward::DONE);
                if self.active.is_none() && self.slots.len() > SCAN_SLOTS {
                    // Slots in use hold their rumor; free ones are left out.
                    let live = self.slots.iter().zip(&self.rumors).enumerate();
                    let active = live
                        .filter(|(_, (s, _))| s.live > 0)
                        .map(|(i, (_, &r))| (r, i as u32))
                        .collect();
                    self.active = Some(active);
                }
                slot
            }
        };
        if let Some(r) = self.rumors.get_mut(slot as usize) {
            *r = rumor;
        }
        if let Some(active) = &mut self.active {
            active.insert(rumor, slot);
        }
        match self.slots.get_mut(slot as usize) {
            Some(s) => {
                s.hops = hops;
                s.live = 0;
                (slot, s.generation)
            }
            None => (slot, 0),
        }
    }

    /// Frees `slot`, whose forwards are all done; its deadlines become stale.
    fn close_slot(&mut self, slot: u32) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.live = 0;
            s.generation = s.generation.wrapping_add(1);
            if let (Some(active), Some(rumor)) = (&mut self.active, self.rumors.get(slot as usize))
            {
                active.remove(rumor);
            }
            self.free.push(slot);
        }
    }

    /// Marks forward `at` of `slot` done, freeing the slot with its last live forward.
    fn finish_forward(&mut self, slot: u32, at: usize) {
        if let Some(f) = self.forwards.get_mut(at) {
            *f = Forward::DONE;
        }
        self.unacknowledged = self.unacknowledged.saturating_sub(1);
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.live = s.live.saturating_sub(1);
            if s.live == 0 {
                self.close_slot(slot);
            }
        }
    }

    /// Where a deadline's forward is in `forwards`, if the deadline is still live: its
    /// forward is awaiting acknowledgement and due at that time.
    fn live_forward(&self, d: &Deadline) -> Option<usize> {
        let slot = self.slots.get(d.slot as usize)?;
        if slot.generation != d.generation {
            return None;
        }
        let at = d.slot as usize * self.stride + d.forward as usize;
        let f = self.forwards.get(at)?;
        (f.peer != DONE && f.due == d.due).then_some(at)
    }

    /// The slot of `rumor` if it has forwards awaiting acknowledgement.
    fn slot_of(&self, rumor: u64) -> Option<u32> {
        let slot = match &self.active {
            Some(active) => *active.get(&rumor)?,
            None => self.rumors.iter().position(|r| *r == rumor)? as u32,
        };
        self.slots.get(slot as usize).is_some_and(|s| s.live > 0).then_some(slot)
    }

    /// The retransmission interval (at least a microsecond, so deadlines strictly increase).
    fn interval(&self) -> Duration {
        self.config.retransmit_after.max(Duration::from_micros(1))
    }

    /// Drops deadlines at the front whose forward was acknowledged (or re-scheduled).
    fn skip_stale(&mut self) {
        while let Some(d) = self.deadlines.front() {
            if self.live_forward(d).is_some() {
                break;
            }
            self.deadlines.pop_front();
        }
    }

    fn send_rumor(&mut self, to: NodeId, id: u64, hops: u32) {
        let padding = vec![0u8; self.config.padding];
        self.out.push_back(Transmit { to, message: FloodMessage::Rumor { id, hops, padding } });
    }
}

impl Protocol for Flood {
    type Message = FloodMessage;
    type Event = Learned;

    fn handle_message(&mut self, now: Time, from: NodeId, message: FloodMessage) {
        match message {
            FloodMessage::Rumor { id, hops, .. } => {
                self.out.push_back(Transmit { to: from, message: FloodMessage::Ack { id } });
                self.learn(now, id, hops);
            }
            FloodMessage::Ack { id } => {
                let Some(slot) = self.slot_of(id) else { return };
                let base = slot as usize * self.stride;
                let Some(forwards) = self.forwards.get(base..base + self.stride) else { return };
                let nodes = &self.nodes;
                let acked = forwards.iter().position(|f| {
                    f.peer != DONE && nodes.get(f.peer as usize).is_some_and(|p| *p == from)
                });
                if let Some(i) = acked {
                    self.finish_forward(slot, base + i);
                    self.skip_stale();
                }
            }
        }
    }

    fn handle_timeout(&mut self, now: Time) {
        while let Some(&d) = self.deadlines.front() {
            if d.due > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(at) = self.live_forward(&d) else { continue };
            let Some(&f) = self.forwards.get(at) else { continue };
            if f.attempts >= self.config.max_retransmits {
                self.finish_forward(d.slot, at);
                self.gave_up += 1;
                continue;
            }
            let (Some(slot), Some(&peer)) =
                (self.slots.get(d.slot as usize), self.nodes.get(f.peer as usize))
            else {
                continue;
            };
            let Some(&rumor) = self.rumors.get(d.slot as usize) else { continue };
            let hops = slot.hops.saturating_add(1);
            self.send_rumor(peer, rumor, hops);
            self.retransmissions += 1;
            let next = now + self.interval();
            if let Some(f) = self.forwards.get_mut(at) {
                f.due = next;
                f.attempts += 1;
            }
            self.deadlines.push_back(Deadline { due: next, ..d });
        }
        self.skip_stale();
    }

    fn poll_transmit(&mut self) -> Option<Transmit<FloodMessage>> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.deadlines.front().map(|d| d.due)
    }

    fn poll_event(&mut self) -> Option<Learned> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use llmkg_federation_core::NodeKeypair;
    use proptest::prelude::*;
    use rand::SeedableRng;

    use super::*;

    /// The straightforward bookkeeping [`Flood`] replaced: pending forwards by (rumor, peer
    /// id), deadlines naming the rumor and the peer.
    struct Model {
        index: usize,
        nodes: Arc<[NodeId]>,
        rng: ChaCha8Rng,
        config: FloodConfig,
        known: HashMap<u64, u32>,
        pending: HashMap<(u64, NodeId), (Time, u32)>,
        deadlines: VecDeque<(Time, u64, NodeId)>,
        out: Vec<Transmit<FloodMessage>>,
        events: Vec<Learned>,
        retransmissions: u64,
        gave_up: u64,
    }

    impl Model {
        fn learn(&mut self, now: Time, rumor: u64, hops: u32) {
            if self.known.contains_key(&rumor) {
                return;
            }
            self.known.insert(rumor, hops);
            self.events.push(Learned { rumor, hops });
            let mut targets = Vec::new();
            choose_targets(&mut self.rng, self.nodes.len(), self.index, &self.config, &mut targets);
            let due = now + self.interval();
            for t in targets {
                let peer = self.nodes[t];
                self.send(peer, rumor, hops.saturating_add(1));
                self.pending.insert((rumor, peer), (due, 0));
                self.deadlines.push_back((due, rumor, peer));
            }
        }

        fn interval(&self) -> Duration {
            self.config.retransmit_after.max(Duration::from_micros(1))
        }

        fn send(&mut self, to: NodeId, id: u64, hops: u32) {
            let padding = vec![0u8; self.config.padding];
            self.out.push(Transmit { to, message: FloodMessage::Rumor { id, hops, padding } });
        }

        fn skip_stale(&mut self) {
            while let Some(&(due, rumor, peer)) = self.deadlines.front() {
                if self.pending.get(&(rumor, peer)).is_some_and(|(d, _)| *d == due) {
                    break;
                }
                self.deadlines.pop_front();
            }
        }

        fn handle_message(&mut self, now: Time, from: NodeId, message: FloodMessage) {
            match message {
                FloodMessage::Rumor { id, hops, .. } => {
                    self.out.push(Transmit { to: from, message: FloodMessage::Ack { id } });
                    self.learn(now, id, hops);
                }
                FloodMessage::Ack { id } => {
                    if self.pending.remove(&(id, from)).is_some() {
                        self.skip_stale();
                    }
                }
            }
        }

        fn handle_timeout(&mut self, now: Time) {
            while let Some(&(due, rumor, peer)) = self.deadlines.front() {
                if due > now {
                    break;
                }
                self.deadlines.pop_front();
                let attempts = match self.pending.get(&(rumor, peer)) {
                    Some(&(pending_due, attempts)) if pending_due == due => attempts,
                    _ => continue,
                };
                if attempts >= self.config.max_retransmits {
                    self.pending.remove(&(rumor, peer));
                    self.gave_up += 1;
                    continue;
                }
                let hops = self.known[&rumor].saturating_add(1);
                self.send(peer, rumor, hops);
                self.retransmissions += 1;
                let next = now + self.interval();
                self.pending.insert((rumor, peer), (next, attempts + 1));
                self.deadlines.push_back((next, rumor, peer));
            }
            self.skip_stale();
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Originate(u64),
        Rumor {
            from: usize,
            id: u64,
            hops: u32,
        },
        Ack {
            from: usize,
            id: u64,
        },
        /// Advances the clock by this many milliseconds (possibly none) and fires the timer
        /// if it is due.
        Wait(u64),
    }

    fn op(rumors: u64) -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0..rumors).prop_map(Op::Originate),
            3 => (0usize..8, 0..rumors, prop_oneof![0u32..4, Just(u32::MAX)])
                .prop_map(|(from, id, hops)| Op::Rumor { from, id, hops }),
            6 => (0usize..8, 0..rumors).prop_map(|(from, id)| Op::Ack { from, id }),
            3 => prop_oneof![Just(0u64), 1u64..4, 10u64..30].prop_map(Op::Wait),
        ]
    }

    fn config() -> impl Strategy<Value = FloodConfig> {
        (prop_oneof![0usize..4, Just(usize::MAX)], any::<bool>(), 0u64..4, 0u32..4).prop_map(
            |(fanout, ring, after, max_retransmits)| FloodConfig {
                fanout,
                ring,
                retransmit_after: Duration::from_millis(after),
                max_retransmits,
                padding: 0,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The slots against the model over random originations, rumors, acknowledgements
        /// (expected, repeated and unexpected) and timer firings: the same transmits in the
        /// same order, the same events, deadline and counters after every step.
        #[test]
        fn matches_the_pending_map_model(
            n in 1usize..8,
            index in 0usize..8,
            config in config(),
            rumors in prop_oneof![1u64..4, 20u64..60],
            seed in any::<u64>(),
            ops in prop::collection::vec(op(60), 1..300),
        ) {
            let index = index % n;
            let nodes: Arc<[NodeId]> = (0..n)
                .map(|i| NodeKeypair::from_secret_bytes([i as u8 + 1; 32]).node_id())
                .collect();
            let rng = ChaCha8Rng::seed_from_u64(seed);
            let mut flood = Flood::from_parts(index, nodes.clone(), rng.clone(), config.clone());
            let mut model = Model {
                index,
                nodes: nodes.clone(),
                rng,
                config,
                known: HashMap::new(),
                pending: HashMap::new(),
                deadlines: VecDeque::new(),
                out: Vec::new(),
                events: Vec::new(),
                retransmissions: 0,
                gave_up: 0,
            };
            let mut now = Time::ZERO;
            for op in ops {
                match op {
                    Op::Originate(rumor) => {
                        let rumor = rumor % rumors;
                        let fresh = !model.known.contains_key(&rumor);
                        model.learn(now, rumor, 0);
                        prop_assert_eq!(flood.originate(now, rumor), fresh);
                    }
                    Op::Rumor { from, id, hops } => {
                        let (from, id) = (nodes[from % n], id % rumors);
                        let message = FloodMessage::Rumor { id, hops, padding: vec![] };
                        model.handle_message(now, from, message.clone());
                        flood.handle_message(now, from, message);
                    }
                    Op::Ack { from, id } => {
                        let (from, id) = (nodes[from % n], id % rumors);
                        model.handle_message(now, from, FloodMessage::Ack { id });
                        flood.handle_message(now, from, FloodMessage::Ack { id });
                    }
                    Op::Wait(ms) => {
                        now += Duration::from_millis(ms);
                        if flood.poll_timeout().is_some_and(|t| t <= now) {
                            model.handle_timeout(now);
                            flood.handle_timeout(now);
                        }
                    }
                }
                let sent: Vec<_> = std::iter::from_fn(|| flood.poll_transmit()).collect();
                prop_assert_eq!(sent, std::mem::take(&mut model.out));
                let learned: Vec<_> = std::iter::from_fn(|| flood.poll_event()).collect();
                prop_assert_eq!(learned, std::mem::take(&mut model.events));
                prop_assert_eq!(flood.poll_timeout(), model.deadlines.front().map(|d| d.0));
                prop_assert_eq!(flood.unacknowledged(), model.pending.len());
                prop_assert_eq!(flood.retransmissions(), model.retransmissions);
                prop_assert_eq!(flood.gave_up(), model.gave_up);
                prop_assert_eq!(flood.known_count(), model.known.len());
            }
        }
    }
}
