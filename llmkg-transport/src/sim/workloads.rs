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
pub struct Flood {
    index: usize,
    nodes: Arc<[NodeId]>,
    rng: ChaCha8Rng,
    config: FloodConfig,
    /// Known rumors and their hop counts (looked up, never iterated).
    known: IdMap<u64, u32>,
    /// Unacknowledged forwards: (rumor, peer) -> (next retransmission, retransmissions so far).
    /// Looked up, never iterated.
    pending: IdMap<(u64, NodeId), (Time, u32)>,
    /// Retransmission deadlines in the order they were set, which is also time order (the
    /// interval is constant and time never goes backwards). Entries whose forward was
    /// acknowledged meanwhile are skipped; the front is always live, so it is the deadline.
    deadlines: VecDeque<(Time, u64, NodeId)>,
    out: VecDeque<Transmit<FloodMessage>>,
    events: VecDeque<Learned>,
    /// Scratch space for the peers a new rumor goes to (kept to avoid an allocation each time).
    targets: Vec<usize>,
    retransmissions: u64,
    gave_up: u64,
}

impl Flood {
    /// A node built from the simulator's context (its index, the node list and its seed).
    pub fn new(ctx: &NodeContext, config: FloodConfig) -> Self {
        Self {
            index: ctx.index,
            nodes: ctx.nodes.clone(),
            rng: ctx.rng(),
            config,
            known: IdMap::default(),
            pending: IdMap::default(),
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
        self.pending.len()
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
        if self.known.contains_key(&rumor) {
            return false;
        }
        self.known.insert(rumor, hops);
        self.events.push_back(Learned { rumor, hops });
        let n = self.nodes.len();
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        if n <= self.config.fanout.saturating_add(1) {
            targets.extend((0..n).filter(|i| *i != self.index));
        } else {
            while targets.len() < self.config.fanout {
                let pick = index_below(&mut self.rng, n);
                if pick != self.index && !targets.contains(&pick) {
                    targets.push(pick);
                }
            }
            let next = (self.index + 1) % n;
            if self.config.ring && next != self.index && !targets.contains(&next) {
                targets.push(next);
            }
        }
        let due = now + self.interval();
        for &t in &targets {
            let Some(&peer) = self.nodes.get(t) else { continue };
            // `hops` may come from a peer: saturate rather than overflow.
            self.send_rumor(peer, rumor, hops.saturating_add(1));
            self.pending.insert((rumor, peer), (due, 0));
            self.deadlines.push_back((due, rumor, peer));
        }
        self.targets = targets;
        true
    }

    /// The retransmission interval (at least a microsecond, so deadlines strictly increase).
    fn interval(&self) -> Duration {
        self.config.retransmit_after.max(Duration::from_micros(1))
    }

    /// Drops deadlines at the front whose forward was acknowledged (or re-scheduled).
    fn skip_stale(&mut self) {
        while let Some(&(due, rumor, peer)) = self.deadlines.front() {
            if self.pending.get(&(rumor, peer)).is_some_and(|(d, _)| *d == due) {
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
            let hops = self.known.get(&rumor).copied().unwrap_or(0).saturating_add(1);
            self.send_rumor(peer, rumor, hops);
            self.retransmissions += 1;
            let next = now + self.interval();
            self.pending.insert((rumor, peer), (next, attempts + 1));
            self.deadlines.push_back((next, rumor, peer));
        }
        self.skip_stale();
    }

    fn poll_transmit(&mut self) -> Option<Transmit<FloodMessage>> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.deadlines.front().map(|d| d.0)
    }

    fn poll_event(&mut self) -> Option<Learned> {
        self.events.pop_front()
    }
}
