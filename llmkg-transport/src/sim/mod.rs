//! The deterministic network simulator: many sans-io cores, one process, virtual time.
//!
//! A [`Sim`] drives a set of [`Protocol`] cores directly, with a discrete-event scheduler over
//! virtual time ([`Time`], microseconds) and a network model seeded from one `u64`. There is
//! no wall clock, no thread and no iteration over randomly ordered maps, so **the same seed and
//! the same setup give the same run, event for event**; [`Sim::trace_hash`] digests everything
//! that happened, so two runs can be compared with one value and a failing seed replays.
//!
//! # How a run works
//!
//! - Nodes are numbered `0..n` and have ed25519 identities ([`NodeId`]) derived from their
//!   index (or supplied with [`SimBuilder::secrets`]). Each node's core is built by a factory
//!   that receives a [`NodeContext`]: id, index, incarnation, a per-node seed derived from the
//!   master seed, index and incarnation, the node's [`Disk`] and every node id added so far.
//! - **Messages travel as bytes.** Whatever a core emits from `poll_transmit` is encoded with
//!   the canonical encoding ([`encoding::try_encode`]; a message its type cannot encode is
//!   counted in [`SimStats::unencodable`] and not sent); on arrival the bytes are decoded with
//!   [`encoding::decode_with_limit`] (limit: [`SimBuilder::max_message_len`]). Bytes that do
//!   not decode are dropped and counted ([`MessageStats::dropped_decode`]), never handed to a
//!   core, never a panic. Byte counts are therefore exact, and arbitrary bytes can be put on
//!   the wire with [`Sim::inject_raw`].
//! - The host rule of [`Protocol`] is applied after every input: transmits, then events, then
//!   the timer deadline are drained. A core's single deadline is honoured exactly: when it
//!   passes, `handle_timeout` is called at that virtual time (a deadline that is already due
//!   right after a fire is deferred by one microsecond, so a core that never clears its timer
//!   cannot stall virtual time). A deadline of [`Time::MAX`] means "never" and is not armed.
//! - Entries (message arrivals, timers, scheduled faults) are processed in order of virtual
//!   time, and entries due at the same instant in the order they were scheduled (the ordering
//!   of a heap keyed by `(time, sequence number)`, implemented with a timing wheel).
//!
//! # Network model
//!
//! Each directed link `(from, to)` follows a [`LinkConfig`] (the default one unless
//! overridden with [`Sim::set_link`]): a [`Latency`] distribution (fixed, uniform, or a
//! long-tailed floor-plus-exponential), a loss probability, a duplication probability and
//! optional [`Reorder`]ing. Without reordering **a link is FIFO**: a copy is never scheduled
//! before the previous copy on the same link, whatever latency was sampled (duplicates and
//! link reconfigurations included; copies that will be dropped on arrival because the receiver
//! restarted meanwhile do not hold back copies to its new incarnation). With reordering, a
//! held-back copy is delayed further than FIFO would place it and does not hold later copies
//! back, so they may overtake it. Loss, duplication and latency are decided when a message is
//! sent, from the network RNG.
//!
//! **Partitions** ([`Sim::partition`], [`Fault::Partition`]) split the nodes into groups; a
//! message between groups is dropped when it is sent, and a copy in flight is dropped on
//! arrival if *any* partition in force at some moment of its flight separated its sender and
//! receiver (so a partition cuts what is in flight, even if it heals before the copy would
//! have arrived). [`Sim::heal`] puts everyone back in one group.
//!
//! **Crash and restart.** [`Sim::crash`] drops the node's core: its memory, its queued outputs
//! and its timer are gone; messages to it are dropped and counted (including those in flight
//! when it crashed, even if it restarts before they arrive). [`Sim::restart`] calls the same
//! factory again with the next incarnation and the same [`Disk`], so a restarted node keeps
//! only what it made durable (see [`Disk`] for the contract). Messages a node sent before it
//! crashed stay on the wire. A `Disk` is also a
//! [`KvStore`](llmkg_federation_core::kv::KvStore), the trait production cores persist through,
//! and its writes can be made to fail ([`Disk::fail_next_writes`], [`Disk::set_faulty`]): a
//! failed write writes nothing.
//!
//! **Byzantine nodes** are cores wrapped in [`Byzantine`], which drops, forges, equivocates
//! and replays what the honest core sends. Links are authenticated, as with the real Noise
//! transport: the receiver is always told the true sender.
//!
//! Faults can be applied immediately or scheduled at a virtual time with [`Sim::schedule`].
//!
//! **Membership** changes while a run goes on: [`Sim::add_node`] adds a node now,
//! [`Sim::remove_node`] (or [`Fault::Remove`]) makes one leave for good — unlike a crash, it
//! never restarts and messages to it become unroutable.
//!
//! **What cores are told.** Every core is started with [`Protocol::handle_start`] (carrying
//! [`SimBuilder::max_message_len`]) when it is built, joins or restarts, and then told
//! [`LinkState::Up`] for every running peer. Crashes, restarts, joins and removals are
//! reported to the peers with [`Protocol::handle_peer`] (`Down` / `Up`), each notice travelling
//! behind what the node already had on the wire to that peer, so a peer's messages arrive
//! between its `Up` and its `Down` (on FIFO links). Partitions are reported only if
//! [`SimBuilder::partition_detection`] is set, after that delay. Nothing is ever reported about
//! oneself, and a message a node sends to itself is a loopback: delivered at once, in order,
//! never lost, duplicated, partitioned or delayed. A message whose encoding exceeds the
//! maximum length is not sent ([`SimStats::oversized`]).
//!
//! **Channels and bandwidth.** By default a link carries any number of messages at once. With
//! a [`Bandwidth`] in its [`LinkConfig`], a link transmits one message at a time and queues the
//! others per [`ChannelId`] (given by [`Sim::set_channel_of`]), serving the channels in turn,
//! so a flooding protocol delays another only by a bounded amount. [`Mux`] runs two protocol
//! cores on one node, each on its own channel.
//!
//! # Observing a run
//!
//! - [`Sim::with_node`] calls a core-specific input (a proposal, a query) at the current
//!   virtual time and drains the node's outputs; [`Sim::node`] reads a core.
//! - Events emitted by cores are collected as `(Time, NodeId, P::Event)` and taken with
//!   [`Sim::drain_events`] (or not collected at all, see [`SimBuilder::record_events`]).
//! - [`Sim::stats`] counts messages and bytes sent, delivered and dropped (by cause) per link,
//!   per node and in total, events processed and virtual time elapsed.
//! - [`Sim::trace_hash`]: every delivery (with its bytes), drop, timer fire, emitted event,
//!   crash, restart, partition, link change and host call feeds a running BLAKE3 hash. Events
//!   contribute their time and node, plus their contents if [`Sim::set_event_digest`] is set.
//!   [`SimBuilder::record_trace`] keeps the last entries for debugging a failing seed.
//!
//! # Running
//!
//! [`Sim::run_until`] processes everything scheduled up to a deadline and reports a
//! [`RunOutcome`]: quiescent (no messages in flight and no pending faults; timers may remain
//! beyond the deadline) or stopped at the deadline with work pending. [`Sim::run`] has no
//! deadline and so returns only once nothing at all is scheduled (a core with a periodic timer
//! never gets there; use [`Sim::run_for`] or [`Sim::run_until`]). [`Sim::step`] processes one
//! entry at a time.
//!
//! # Example
//!
//! Two nodes play ping-pong over 5 ms links until the counter reaches 10:
//!
//! ```
//! use std::time::Duration;
//! use llmkg_federation_core::{NodeId, Protocol, Time, Transmit};
//! use llmkg_transport::sim::{Latency, LinkConfig, RunOutcome, SimBuilder};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Ping(u32);
//!
//! #[derive(Default)]
//! struct PingPong { out: Vec<Transmit<Ping>>, events: Vec<u32> }
//!
//! impl Protocol for PingPong {
//!     type Message = Ping;
//!     type Event = u32;
//!     fn handle_message(&mut self, _now: Time, from: NodeId, Ping(n): Ping) {
//!         self.events.push(n);
//!         if n < 10 {
//!             self.out.push(Transmit { to: from, message: Ping(n + 1) });
//!         }
//!     }
//!     fn handle_timeout(&mut self, _now: Time) {}
//!     fn poll_transmit(&mut self) -> Option<Transmit<Ping>> { self.out.pop() }
//!     fn poll_timeout(&self) -> Option<Time> { None }
//!     fn poll_event(&mut self) -> Option<u32> { self.events.pop() }
//! }
//!
//! let link = LinkConfig::with_latency(Latency::Fixed(Duration::from_millis(5)));
//! let mut sim = SimBuilder::new(7).nodes(2).default_link(link).build(|_ctx| PingPong::default())?;
//! let (a, b) = (sim.node_ids()[0], sim.node_ids()[1]);
//! sim.with_node(a, |core, _now| core.out.push(Transmit { to: b, message: Ping(0) }))?;
//!
//! assert_eq!(sim.run(), RunOutcome::Quiescent { at: Time::from_millis(55) });
//! let events = sim.drain_events();
//! assert_eq!(events.len(), 11);
//! assert_eq!(events.last().map(|(at, node, n)| (*at, *node, *n)), Some((Time::from_millis(55), b, 10)));
//! let stats = sim.stats();
//! assert_eq!((stats.messages.sent, stats.messages.delivered, stats.events), (11, 11, 11));
//! # Ok::<(), llmkg_transport::sim::SimError>(())
//! ```
//!
//! [`encoding::try_encode`]: llmkg_federation_core::encoding::try_encode
//! [`encoding::decode_with_limit`]: llmkg_federation_core::encoding::decode_with_limit

mod byzantine;
mod disk;
mod floors;
mod mux;
mod network;
mod partition;
mod queue;
mod stats;
mod trace;
pub mod workloads;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::encoding;
use llmkg_federation_core::{ChannelId, HostInfo, LinkState, NodeId, NodeKeypair, Protocol, Time};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use byzantine::{Byzantine, ByzantineConfig, ByzantineStats, Forger};
pub use disk::{Disk, DiskOp, InjectedFault};
pub use mux::{Mux, MuxEvent, MuxMessage};
pub use network::{Bandwidth, Latency, LinkConfig, Reorder};
pub use stats::{MessageStats, NodeStats, SimStats};
pub use trace::{DropReason, TraceEntry, TraceHash};

use floors::{Floor, Floors};
use network::{CompiledLink, chance};
use partition::PartitionHistory;
use queue::Queue;
use trace::{
    TAG_CRASH, TAG_DELIVERED, TAG_DROPPED, TAG_EVENT, TAG_HEAL, TAG_HOST, TAG_JOIN, TAG_LEAVE,
    TAG_LINK, TAG_OVERSIZED, TAG_PARTITION, TAG_RESTART, TAG_TIMEOUT, TAG_UNENCODABLE,
    TAG_UNROUTABLE, Tracer,
};

/// Default for [`SimBuilder::max_message_len`]: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 16 << 20;

/// A simulator call was given something it cannot act on.
///
/// Every variant is returned before anything is done: **no state changed** (no core was
/// called, nothing was sent, counted, traced or scheduled, and a builder built nothing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The id is not one of the simulated nodes. Nothing changed.
    #[error("node {0:?} is not part of the simulation")]
    UnknownNode(NodeId),
    /// The node is crashed: it cannot take a host input ([`Sim::with_node`]) or crash again.
    /// Nothing changed.
    #[error("node {0:?} is down")]
    NodeDown(NodeId),
    /// The node is running, so it cannot be restarted. Nothing changed.
    #[error("node {0:?} is up")]
    NodeUp(NodeId),
    /// A node appears more than once in the partition groups. Nothing changed (the previous
    /// partition stays in force).
    #[error("node {0:?} appears in more than one partition group")]
    DuplicateInPartition(NodeId),
    /// Two nodes were given the same identity ([`SimBuilder::secrets`]). Nothing was built.
    #[error("two nodes share the identity {0:?}")]
    DuplicateNode(NodeId),
    /// A link configuration is invalid (see [`LinkConfig::validate`]). Nothing changed.
    #[error("invalid link configuration: {0}")]
    InvalidLink(&'static str),
    /// A fault was scheduled before the current virtual time. Nothing was scheduled.
    #[error("cannot schedule at {at}: the simulation is already at {now}")]
    InPast {
        /// The requested time.
        at: Time,
        /// The current virtual time.
        now: Time,
    },
    /// More nodes than the simulator can index (`u32::MAX`). Nothing was built (or added).
    #[error("too many nodes: {0}")]
    TooManyNodes(usize),
    /// The node has left the simulation for good ([`Sim::remove_node`]): it cannot crash,
    /// restart, take host inputs or leave again. Nothing changed.
    #[error("node {0:?} has left the simulation")]
    Removed(NodeId),
}

/// What a node's factory receives when the node is (re)built.
pub struct NodeContext {
    /// The node's identity.
    pub id: NodeId,
    /// The node's index (its position in [`Sim::node_ids`]).
    pub index: usize,
    /// 0 when the simulation is built, incremented by each restart.
    pub incarnation: u32,
    /// A seed for the core's RNG, derived from the master seed, the index and the incarnation.
    pub seed: u64,
    /// The node's durable storage (a [`KvStore`](llmkg_federation_core::kv::KvStore)); the
    /// same store across incarnations.
    pub disk: Disk,
    /// Every node id added so far, in index order (including this node's, and those of nodes
    /// that have left): `nodes[index]` is this node. Who is reachable right now is what
    /// [`Protocol::handle_peer`] reports.
    pub nodes: Arc<[NodeId]>,
    secret: [u8; 32],
}

impl NodeContext {
    /// A ChaCha8 RNG seeded from [`seed`](Self::seed).
    pub fn rng(&self) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.seed)
    }

    /// Another seed derived from [`seed`](Self::seed) and `label`, for a second independent
    /// RNG (a [`Byzantine`] wrapper's, say).
    pub fn derive_seed(&self, label: &str) -> u64 {
        let mut h = blake3::Hasher::new_derive_key("llmkg-federation sim derived seed v1");
        h.update(&self.seed.to_le_bytes());
        h.update(label.as_bytes());
        first_u64(h.finalize().as_bytes())
    }

    /// The node's signing key (stable across incarnations).
    pub fn keypair(&self) -> NodeKeypair {
        NodeKeypair::from_secret_bytes(self.secret)
    }

    /// Every other node's id in [`nodes`](Self::nodes), in index order.
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.id;
        self.nodes.iter().copied().filter(move |n| *n != me)
    }
}

impl fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeContext")
            .field("id", &self.id)
            .field("index", &self.index)
            .field("incarnation", &self.incarnation)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// A fault to apply now ([`Sim::apply`]) or at a virtual time ([`Sim::schedule`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Fault {
    /// Splits the nodes into these groups; nodes listed in none form one more group together.
    /// Replaces any partition in force. Copies in flight between nodes it separates are
    /// dropped when they arrive, even if the partition has healed by then.
    Partition(Vec<Vec<NodeId>>),
    /// Ends any partition.
    Heal,
    /// Crashes a node (a scheduled crash of a node already down does nothing).
    Crash(NodeId),
    /// Restarts a crashed node (a scheduled restart of a running node does nothing).
    Restart(NodeId),
    /// The node leaves the simulation for good (see [`Sim::remove_node`]; a scheduled removal
    /// of a node that has already left does nothing).
    Remove(NodeId),
    /// A node with this secret key joins (see [`Sim::add_node_with_secret`]). Refused when it
    /// is scheduled if a node with that identity exists already; if one has joined by the
    /// time it applies, it does nothing.
    Join {
        /// The new node's secret key (its identity is derived from it).
        secret: [u8; 32],
    },
    /// Overrides the configuration of one directed link.
    SetLink {
        /// Sender side.
        from: NodeId,
        /// Receiver side.
        to: NodeId,
        /// The new configuration.
        config: LinkConfig,
    },
    /// Returns one directed link to the default configuration.
    ClearLink {
        /// Sender side.
        from: NodeId,
        /// Receiver side.
        to: NodeId,
    },
    /// Replaces the default link configuration.
    SetDefaultLink(LinkConfig),
}

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunOutcome {
    /// Nothing is in flight and no fault is pending; timers may still be set beyond the
    /// deadline.
    Quiescent {
        /// Virtual time of the last entry this run processed, or the clock when the run started
        /// if it processed none.
        at: Time,
    },
    /// The deadline was reached with messages in flight or faults pending.
    Deadline {
        /// Message copies still in flight.
        in_flight: u64,
    },
}

/// Configures and builds a [`Sim`].
#[derive(Clone, Debug)]
pub struct SimBuilder {
    seed: u64,
    nodes: usize,
    secrets: Option<Vec<[u8; 32]>>,
    default_link: LinkConfig,
    max_message_len: usize,
    trace_limit: usize,
    record_events: bool,
    partition_detection: Option<Duration>,
}

impl SimBuilder {
    /// A builder for a run seeded with `seed` (no nodes yet, 1 ms FIFO lossless links).
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            nodes: 0,
            secrets: None,
            default_link: LinkConfig::default(),
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            trace_limit: 0,
            record_events: true,
            partition_detection: None,
        }
    }

    /// Simulates `n` nodes whose identities are derived from their index (the same for every
    /// seed). Overrides [`secrets`](Self::secrets).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self.secrets = None;
        self
    }

    /// Simulates one node per secret key, in this order.
    pub fn secrets(mut self, secrets: Vec<[u8; 32]>) -> Self {
        self.nodes = secrets.len();
        self.secrets = Some(secrets);
        self
    }

    /// The configuration of every link not overridden.
    pub fn default_link(mut self, link: LinkConfig) -> Self {
        self.default_link = link;
        self
    }

    /// The largest message the network carries (default [`DEFAULT_MAX_MESSAGE_LEN`]). Cores
    /// are told it in [`Protocol::handle_start`]; a message a core emits that encodes longer is
    /// not sent and is counted in [`SimStats::oversized`]; bytes longer than this that reach a
    /// receiver anyway ([`Sim::inject_raw`]) are dropped as decode failures.
    pub fn max_message_len(mut self, len: usize) -> Self {
        self.max_message_len = len;
        self
    }

    /// Keeps the last `limit` [`TraceEntry`]s (0, the default, keeps none). The trace hash is
    /// computed either way.
    pub fn record_trace(mut self, limit: usize) -> Self {
        self.trace_limit = limit;
        self
    }

    /// Whether to collect the events cores emit for [`Sim::drain_events`] (default: yes). They
    /// are fed into the trace hash either way. Collected events are kept until drained, so a
    /// long run that never drains them should turn this off.
    pub fn record_events(mut self, record: bool) -> Self {
        self.record_events = record;
        self
    }

    /// Whether, and how late, cores are told about partitions (default `None`: never).
    ///
    /// A real link notices a partition only when its idle or keep-alive timeout expires, so a
    /// partition is not a crash: by default the simulator reports nothing for it (links stay
    /// up as far as the cores know, and what crosses the partition is lost). With
    /// `Some(delay)`, every partition assignment (a partition or a heal) that is still in force
    /// `delay` after it came into force is reported: [`LinkState::Down`] to both ends of every
    /// link it cut, [`LinkState::Up`] to both ends of every link it rejoined. An assignment
    /// replaced within `delay` is never reported.
    pub fn partition_detection(mut self, delay: Option<Duration>) -> Self {
        self.partition_detection = delay;
        self
    }

    /// Builds the simulation at time zero: calls `factory` once per node in index order
    /// (incarnation 0), then, node by node in index order, starts the core
    /// ([`Protocol::handle_start`]), reports every other node as [`LinkState::Up`]
    /// ([`Protocol::handle_peer`], in index order) and drains its outputs after each input.
    pub fn build<P, F>(self, factory: F) -> Result<Sim<P>, SimError>
    where
        P: Protocol,
        F: FnMut(NodeContext) -> P + 'static,
    {
        let default_compiled = self.default_link.compile()?;
        if u32::try_from(self.nodes).is_err() {
            return Err(SimError::TooManyNodes(self.nodes));
        }
        let secrets: Vec<[u8; 32]> = match self.secrets {
            Some(s) => s,
            None => (0..self.nodes as u64)
                .map(|i| {
                    blake3::derive_key("llmkg-federation sim node identity v1", &i.to_le_bytes())
                })
                .collect(),
        };
        let ids: Vec<NodeId> =
            secrets.iter().map(|s| NodeKeypair::from_secret_bytes(*s).node_id()).collect();
        let mut index = IdMap::default();
        for (i, id) in ids.iter().enumerate() {
            if index.insert(*id, i as u32).is_some() {
                return Err(SimError::DuplicateNode(*id));
            }
        }
        let n = ids.len();
        let mut net_seed = blake3::Hasher::new_derive_key("llmkg-federation sim network v1");
        net_seed.update(&self.seed.to_le_bytes());
        let world = World {
            now: Time::ZERO,
            seed: self.seed,
            ids: ids.into(),
            secrets,
            index,
            meta: (0..n).map(|_| NodeMeta::new()).collect(),
            queue: Queue::new(),
            rng: ChaCha8Rng::from_seed(*net_seed.finalize().as_bytes()),
            default_link: self.default_link,
            default_compiled,
            wires: if n <= DENSE_LINKS_MAX_NODES {
                Wires::Dense { n, ids: vec![UNUSED_LINK; n * n] }
            } else {
                Wires::Sparse(HashMap::default())
            },
            floors: Floors::new(),
            overrides: HashMap::default(),
            links: Vec::new(),
            sends: Vec::with_capacity(SEND_LOG),
            send_links: Vec::with_capacity(SEND_LOG),
            rare: IdMap::default(),
            totals: MessageStats::default(),
            events: 0,
            arrivals: 0,
            timer_fires: 0,
            faults: 0,
            unroutable: 0,
            unencodable: 0,
            last_event_at: Time::ZERO,
            in_flight: 0,
            pending_faults: 0,
            pending_notices: 0,
            partitions: PartitionHistory::new(),
            tracer: Tracer::new(self.seed, n, self.trace_limit),
            max_message_len: self.max_message_len,
            oversized: 0,
            joined: 0,
            left: 0,
            detection: self.partition_detection,
            assignment_generation: 0,
        };
        let mut sim = Sim {
            world,
            cores: Vec::with_capacity(n),
            factory: Box::new(factory),
            events: Vec::new(),
            record_events: self.record_events,
            event_digest: None,
            digest_buf: Vec::new(),
            channel_of: None,
        };
        for i in 0..n {
            let ctx = sim.world.context(i as u32);
            let core = (sim.factory)(ctx);
            sim.cores.push(Some(core));
        }
        for i in 0..n {
            let peers = sim.world.linked(i as u32);
            sim.start(i as u32, &peers);
        }
        Ok(sim)
    }
}

/// A deterministic discrete-event simulation of `P` cores on a modelled network.
///
/// See the [module documentation](self).
pub struct Sim<P: Protocol> {
    world: World,
    cores: Vec<Option<P>>,
    factory: Box<dyn FnMut(NodeContext) -> P>,
    events: Vec<(Time, NodeId, P::Event)>,
    record_events: bool,
    event_digest: Option<EventDigest<P::Event>>,
    digest_buf: Vec<u8>,
    channel_of: Option<ChannelOf<P::Message>>,
}

impl<P: Protocol> Sim<P> {
    /// The current virtual time.
    pub fn now(&self) -> Time {
        self.world.now
    }

    /// The master seed.
    pub fn seed(&self) -> u64 {
        self.world.seed
    }

    /// Every node id, in index order.
    pub fn node_ids(&self) -> &[NodeId] {
        &self.world.ids
    }

    /// The id of the node at `index`.
    pub fn node_id(&self, index: usize) -> Option<NodeId> {
        self.world.ids.get(index).copied()
    }

    /// The index of node `id`.
    pub fn index_of(&self, id: NodeId) -> Option<usize> {
        self.world.index.get(&id).map(|i| *i as usize)
    }

    /// Number of simulated nodes.
    pub fn node_count(&self) -> usize {
        self.world.ids.len()
    }

    /// The core of node `id`, if the node exists and is running.
    pub fn node(&self, id: NodeId) -> Option<&P> {
        let i = self.index_of(id)?;
        self.cores.get(i)?.as_ref()
    }

    /// Whether node `id` is running.
    pub fn is_up(&self, id: NodeId) -> Result<bool, SimError> {
        let i = self.world.resolve(id)?;
        Ok(self.world.meta[i as usize].up)
    }

    /// A handle to node `id`'s durable storage (shared with the node).
    pub fn disk(&self, id: NodeId) -> Result<Disk, SimError> {
        let i = self.world.resolve(id)?;
        Ok(self.world.meta[i as usize].disk.clone())
    }

    /// Calls `input` on node `id`'s core at the current virtual time (for core-specific inputs
    /// such as a proposal), then drains the node's outputs.
    pub fn with_node<R>(
        &mut self,
        id: NodeId,
        input: impl FnOnce(&mut P, Time) -> R,
    ) -> Result<R, SimError> {
        let i = self.world.resolve(id)?;
        let now = self.world.now;
        if self.world.meta[i as usize].removed {
            return Err(SimError::Removed(id));
        }
        let Some(core) = self.cores[i as usize].as_mut() else {
            return Err(SimError::NodeDown(id));
        };
        self.world.tracer.head(TAG_HOST, now, i);
        if self.world.tracer.recording() {
            self.world.tracer.record(TraceEntry::HostCall { at: now, node: id });
        }
        let r = input(core, now);
        self.drain(i, false);
        Ok(r)
    }

    /// Puts `bytes` on the link `from → to` as if `from` had sent them (even if `from` is
    /// down), subject to the link model like any message. Whatever does not decode as
    /// `P::Message` is dropped on arrival and counted in [`MessageStats::dropped_decode`].
    pub fn inject_raw(&mut self, from: NodeId, to: NodeId, bytes: Vec<u8>) -> Result<(), SimError> {
        let f = self.world.resolve(from)?;
        self.world.resolve(to)?;
        self.world.send(f, to, ChannelId::DEFAULT, bytes);
        Ok(())
    }

    /// From now on, sends each message a core emits on the channel `channel_of` says (by
    /// default every message travels on [`ChannelId::DEFAULT`]). Channels matter only on links
    /// with a [`Bandwidth`] model, whose transmitters queue each channel apart and serve them
    /// in turn. For a [`Mux`] core: `sim.set_channel_of(MuxMessage::channel)`.
    pub fn set_channel_of(&mut self, channel_of: impl Fn(&P::Message) -> ChannelId + 'static) {
        self.channel_of = Some(Box::new(channel_of));
    }

    // ----- membership -----

    /// Adds a node now, with the identity derived from its index like [`SimBuilder::nodes`]
    /// (the same for every seed), and returns its id. See
    /// [`add_node_with_secret`](Self::add_node_with_secret).
    pub fn add_node(&mut self) -> Result<NodeId, SimError> {
        let index = self.world.ids.len() as u64;
        let secret =
            blake3::derive_key("llmkg-federation sim node identity v1", &index.to_le_bytes());
        self.add_node_with_secret(secret)
    }

    /// Adds a node with this secret key now and returns its id.
    ///
    /// The node gets the next index and an empty [`Disk`]; its core is built by the factory
    /// (incarnation 0) and started ([`Protocol::handle_start`]). Every running node it can
    /// reach is told [`LinkState::Up`] about it (in index order, before anything the new node
    /// sends can arrive), and it is told `Up` about each of them. It joins partition group 0
    /// (the nodes no partition group lists). Cores built later list it in
    /// [`NodeContext::nodes`]; cores already running learn about it only through
    /// [`Protocol::handle_peer`].
    ///
    /// # Errors
    ///
    /// [`SimError::DuplicateNode`] if a node (present or departed) already has this identity,
    /// [`SimError::TooManyNodes`] at `u32::MAX` nodes. Nothing changed.
    pub fn add_node_with_secret(&mut self, secret: [u8; 32]) -> Result<NodeId, SimError> {
        let id = NodeKeypair::from_secret_bytes(secret).node_id();
        if self.world.index.contains_key(&id) {
            return Err(SimError::DuplicateNode(id));
        }
        let n = self.world.ids.len();
        let Ok(i) = u32::try_from(n) else {
            return Err(SimError::TooManyNodes(n + 1));
        };
        if i == u32::MAX {
            return Err(SimError::TooManyNodes(n + 1));
        }
        let w = &mut self.world;
        w.grow_link_index(n + 1);
        let mut ids = w.ids.to_vec();
        ids.push(id);
        w.ids = ids.into();
        w.secrets.push(secret);
        w.index.insert(id, i);
        w.meta.push(NodeMeta::new());
        w.joined += 1;
        w.tracer.head(TAG_JOIN, w.now, i);
        w.tracer.bytes(id.as_bytes());
        if w.tracer.recording() {
            w.tracer.record(TraceEntry::Joined { at: w.now, node: id });
        }
        let ctx = w.context(i);
        self.cores.push(Some((self.factory)(ctx)));
        self.bring_up(i);
        Ok(id)
    }

    /// Node `id` leaves the simulation for good, now.
    ///
    /// Unlike a crash, it never comes back: its core is dropped, every running node that saw
    /// it up is told [`LinkState::Down`] (behind what it already had on the wire to them),
    /// copies in flight to it are dropped on arrival ([`DropReason::Crash`]), copies still
    /// queued in its transmitters are dropped ([`DropReason::Overflow`]), and messages
    /// addressed to it from now on are unroutable ([`SimStats::unroutable`]). Its index, id,
    /// statistics and [`Disk`] remain; its id cannot join again.
    ///
    /// # Errors
    ///
    /// [`SimError::UnknownNode`], or [`SimError::Removed`] if it has already left. Nothing
    /// changed.
    pub fn remove_node(&mut self, id: NodeId) -> Result<(), SimError> {
        self.apply(Fault::Remove(id))
    }

    /// Whether `id` is part of the simulation: added and not removed (running or crashed).
    pub fn is_member(&self, id: NodeId) -> bool {
        self.world.index.get(&id).is_some_and(|i| !self.world.meta[*i as usize].removed)
    }

    /// The nodes that are part of the simulation (running or crashed), in index order.
    pub fn members(&self) -> Vec<NodeId> {
        let w = &self.world;
        w.ids.iter().zip(&w.meta).filter(|(_, m)| !m.removed).map(|(id, _)| *id).collect()
    }

    /// From now on, also feeds each event's contents into the trace hash: `digest` appends
    /// bytes that identify the event to the buffer it is given (for example its canonical
    /// encoding). Without a digest only an event's time and node are hashed.
    pub fn set_event_digest(&mut self, digest: impl FnMut(&P::Event, &mut Vec<u8>) + 'static) {
        self.event_digest = Some(Box::new(digest));
    }

    /// Takes the events emitted so far, as `(time, node, event)` in emission order.
    pub fn drain_events(&mut self) -> Vec<(Time, NodeId, P::Event)> {
        std::mem::take(&mut self.events)
    }

    /// The events emitted and not yet drained.
    pub fn events(&self) -> &[(Time, NodeId, P::Event)] {
        &self.events
    }

    // ----- faults -----

    /// Applies `fault` now.
    pub fn apply(&mut self, fault: Fault) -> Result<(), SimError> {
        let action = self.world.resolve_fault(fault)?;
        self.apply_action(action)
    }

    /// Applies `fault` at virtual time `at` (after everything already scheduled for `at`).
    /// Node ids and configurations are checked now.
    pub fn schedule(&mut self, at: Time, fault: Fault) -> Result<(), SimError> {
        if at < self.world.now {
            return Err(SimError::InPast { at, now: self.world.now });
        }
        let action = self.world.resolve_fault(fault)?;
        self.world.pending_faults += 1;
        self.world.push(at, Kind::Fault(Box::new(action)));
        Ok(())
    }

    /// Splits the nodes into `groups` now (see [`Fault::Partition`]).
    pub fn partition<G: AsRef<[NodeId]>>(&mut self, groups: &[G]) -> Result<(), SimError> {
        self.apply(Fault::Partition(groups.iter().map(|g| g.as_ref().to_vec()).collect()))
    }

    /// Ends any partition now.
    pub fn heal(&mut self) {
        self.apply_action(Action::Heal).unwrap_or(());
    }

    /// Crashes node `id` now: its core is dropped, its timer discarded; copies in flight to it
    /// are dropped when they arrive, even if it has restarted by then.
    pub fn crash(&mut self, id: NodeId) -> Result<(), SimError> {
        self.apply(Fault::Crash(id))
    }

    /// Restarts the crashed node `id` now, rebuilding its core from its [`Disk`].
    pub fn restart(&mut self, id: NodeId) -> Result<(), SimError> {
        self.apply(Fault::Restart(id))
    }

    /// Overrides the configuration of the directed link `from → to` now.
    pub fn set_link(
        &mut self,
        from: NodeId,
        to: NodeId,
        config: LinkConfig,
    ) -> Result<(), SimError> {
        self.apply(Fault::SetLink { from, to, config })
    }

    /// Replaces the default link configuration now.
    pub fn set_default_link(&mut self, config: LinkConfig) -> Result<(), SimError> {
        self.apply(Fault::SetDefaultLink(config))
    }

    fn apply_action(&mut self, action: Action) -> Result<(), SimError> {
        if let Action::Join(secret) = action {
            return self.add_node_with_secret(secret).map(|_| ());
        }
        let w = &mut self.world;
        let now = w.now;
        match action {
            Action::Partition(groups, count) => {
                w.tracer.head(TAG_PARTITION, now, u32::try_from(count).unwrap_or(u32::MAX));
                for (m, g) in w.meta.iter_mut().zip(&groups) {
                    m.group = *g;
                    w.tracer.u32(*g);
                }
                // Nodes added since the partition was resolved are unlisted: group 0.
                for m in w.meta.iter_mut().skip(groups.len()) {
                    m.group = 0;
                    w.tracer.u32(0);
                }
                let together = w.meta.windows(2).all(|p| p[0].group == p[1].group);
                w.partitions.push((!together).then(|| groups.into_boxed_slice()));
                if w.tracer.recording() {
                    w.tracer.record(TraceEntry::Partition { at: now, groups: count });
                }
                w.schedule_detection();
            }
            Action::Heal => {
                w.tracer.head(TAG_HEAL, now, 1);
                for m in &mut w.meta {
                    m.group = 0;
                }
                w.partitions.push(None);
                if w.tracer.recording() {
                    w.tracer.record(TraceEntry::Partition { at: now, groups: 1 });
                }
                w.schedule_detection();
            }
            Action::Crash(i) => {
                let m = &w.meta[i as usize];
                if m.removed {
                    return Err(SimError::Removed(w.ids[i as usize]));
                }
                if !m.up {
                    return Err(SimError::NodeDown(w.ids[i as usize]));
                }
                for peer in w.linked(i) {
                    w.notify(peer, i, false);
                }
                w.drop_queued_from(i);
                let m = &mut w.meta[i as usize];
                m.up = false;
                m.crashes += 1;
                // Invalidates the pending timer entry.
                m.timer_gen += 1;
                m.timer_armed = None;
                self.cores[i as usize] = None;
                w.tracer.head(TAG_CRASH, now, i);
                if w.tracer.recording() {
                    w.tracer.record(TraceEntry::Crash { at: now, node: w.ids[i as usize] });
                }
            }
            Action::Restart(i) => {
                let m = &mut w.meta[i as usize];
                if m.removed {
                    return Err(SimError::Removed(w.ids[i as usize]));
                }
                if m.up {
                    return Err(SimError::NodeUp(w.ids[i as usize]));
                }
                m.up = true;
                m.restarts += 1;
                m.incarnation += 1;
                let incarnation = m.incarnation;
                w.tracer.head(TAG_RESTART, now, i);
                w.tracer.u32(incarnation);
                if w.tracer.recording() {
                    let node = w.ids[i as usize];
                    w.tracer.record(TraceEntry::Restart { at: now, node, incarnation });
                }
                let ctx = w.context(i);
                self.cores[i as usize] = Some((self.factory)(ctx));
                self.bring_up(i);
            }
            // Handled above, before the world is borrowed.
            Action::Join(_) => {}
            Action::Remove(i) => {
                let m = &w.meta[i as usize];
                if m.removed {
                    return Err(SimError::Removed(w.ids[i as usize]));
                }
                if m.up {
                    for peer in w.linked(i) {
                        w.notify(peer, i, false);
                    }
                }
                w.drop_queued_from(i);
                let m = &mut w.meta[i as usize];
                m.up = false;
                m.removed = true;
                m.timer_gen += 1;
                m.timer_armed = None;
                self.cores[i as usize] = None;
                w.left += 1;
                w.tracer.head(TAG_LEAVE, now, i);
                if w.tracer.recording() {
                    w.tracer.record(TraceEntry::Left { at: now, node: w.ids[i as usize] });
                }
                // Leaving is not a fault.
                return Ok(());
            }
            Action::SetLink(f, t, config) => {
                w.overrides.insert(link_key(f, t), config);
                w.trace_link_change(Some((f, t)), Some(&config));
            }
            Action::ClearLink(f, t) => {
                w.overrides.remove(&link_key(f, t));
                w.trace_link_change(Some((f, t)), None);
            }
            Action::SetDefault(config, compiled) => {
                w.default_link = config;
                w.default_compiled = compiled;
                w.trace_link_change(None, Some(&compiled));
            }
        }
        self.world.faults += 1;
        Ok(())
    }

    // ----- running -----

    /// Processes the next scheduled entry (skipping superseded timers) and returns its time,
    /// or `None` if nothing is scheduled.
    pub fn step(&mut self) -> Option<Time> {
        loop {
            let (at, kind) = self.world.queue.pop()?;
            if self.process(at, kind) {
                return Some(self.world.now);
            }
        }
    }

    /// Runs until nothing at all is scheduled. Never returns for cores that keep a timer set
    /// forever; prefer [`run_until`](Self::run_until) for those.
    pub fn run(&mut self) -> RunOutcome {
        self.run_until(Time::MAX)
    }

    /// Runs for `duration` of virtual time (see [`run_until`](Self::run_until)).
    pub fn run_for(&mut self, duration: Duration) -> RunOutcome {
        self.run_until(self.world.now + duration)
    }

    /// Processes everything scheduled at or before `deadline`. Afterwards the clock reads
    /// `deadline` (unless it is [`Time::MAX`], or already later). The outcome is
    /// [`RunOutcome::Quiescent`] if no message is in flight and no fault is pending (timers
    /// may remain), [`RunOutcome::Deadline`] otherwise.
    pub fn run_until(&mut self, deadline: Time) -> RunOutcome {
        let mut last = self.world.now;
        while let Some((at, kind)) = self.world.queue.pop_until(deadline) {
            if self.process(at, kind) {
                last = self.world.now;
            }
        }
        if deadline != Time::MAX && deadline > self.world.now {
            self.world.now = deadline;
        }
        let w = &self.world;
        if w.in_flight == 0 && w.pending_faults == 0 && w.pending_notices == 0 {
            RunOutcome::Quiescent { at: last }
        } else {
            RunOutcome::Deadline { in_flight: self.world.in_flight }
        }
    }

    /// Number of scheduled entries (message copies in flight, timers, faults; superseded
    /// timer entries included until they are skipped).
    pub fn pending(&self) -> usize {
        self.world.queue.len()
    }

    /// Message copies in flight.
    pub fn in_flight(&self) -> u64 {
        self.world.in_flight
    }

    // ----- observing -----

    /// Events processed so far (message arrivals plus timer fires).
    pub fn events_processed(&self) -> u64 {
        self.world.events
    }

    /// Network-wide message counters (cheap; [`stats`](Self::stats) has everything).
    pub fn message_totals(&self) -> MessageStats {
        self.world.totals
    }

    /// A snapshot of all counters.
    pub fn stats(&self) -> SimStats {
        let w = &self.world;
        let mut nodes: Vec<NodeStats> = w
            .meta
            .iter()
            .enumerate()
            .map(|(i, m)| NodeStats {
                index: i,
                outbound: MessageStats::default(),
                inbound: MessageStats::default(),
                timer_fires: m.timer_fires,
                unroutable: m.unroutable,
                unencodable: m.unencodable,
                oversized: m.oversized,
                crashes: m.crashes,
                restarts: m.restarts,
                incarnation: m.incarnation,
                up: m.up,
                removed: m.removed,
            })
            .collect();
        let in_flight = w.in_flight_by_link();
        let (logged, new_links) = w.logged_sends_by_link();
        let mut links = BTreeMap::new();
        let known = w.links.iter().map(|l| (l.from, l.to, l.sent, l.sent_bytes));
        let new = new_links.into_iter().map(|(from, to)| (from, to, 0, 0));
        for (from, to, sent, sent_bytes) in known.chain(new) {
            let key = link_key(from, to);
            let (logged, logged_bytes) = logged.get(&key).copied().unwrap_or((0, 0));
            let sent = (sent + logged, sent_bytes + logged_bytes);
            let stats = w.link_stats(key, sent, in_flight.get(&key).copied());
            nodes[from as usize].outbound.add(&stats);
            nodes[to as usize].inbound.add(&stats);
            if stats.sent + stats.duplicated > 0 {
                links.insert((w.ids[from as usize], w.ids[to as usize]), stats);
            }
        }
        SimStats {
            now: w.now,
            last_event_at: w.last_event_at,
            events: w.events,
            arrivals: w.arrivals,
            timer_fires: w.timer_fires,
            faults: w.faults,
            unroutable: w.unroutable,
            unencodable: w.unencodable,
            oversized: w.oversized,
            joined: w.joined,
            left: w.left,
            messages: w.totals,
            nodes: nodes.into_iter().map(|s| (w.ids[s.index], s)).collect(),
            links,
        }
    }

    /// The digest of everything that happened so far. Equal for runs with the same seed and
    /// the same setup and inputs; the exact value is not stable across versions of this
    /// crate.
    pub fn trace_hash(&self) -> TraceHash {
        self.world.tracer.digest()
    }

    /// The recorded trace entries, oldest first (empty unless
    /// [`SimBuilder::record_trace`] was set).
    pub fn trace(&self) -> impl Iterator<Item = &TraceEntry> {
        self.world.tracer.entries()
    }

    // ----- internals -----

    /// Processes one popped entry; false if it was a superseded timer (nothing happened).
    fn process(&mut self, at: Time, kind: Kind) -> bool {
        let w = &mut self.world;
        if at > w.now {
            w.now = at;
        }
        match kind {
            Kind::Deliver { from, to, incarnation, epoch, bytes } => {
                self.arrive(from, to, incarnation, epoch, bytes);
                true
            }
            Kind::Timer { node, generation } => self.fire(node, generation),
            Kind::Fault(action) => {
                self.world.pending_faults -= 1;
                // A scheduled crash of a node already down (or restart of a running one) is a
                // no-op by definition.
                let _ = self.apply_action(*action);
                true
            }
            Kind::Notice { node, incarnation, peer, up } => {
                self.world.pending_notices -= 1;
                self.notice(node, incarnation, peer, up)
            }
            Kind::Detect { generation } => {
                let w = &mut self.world;
                w.pending_notices -= 1;
                if generation == w.assignment_generation {
                    w.detect();
                }
                true
            }
            Kind::TxDone { link } => {
                self.world.tx_done(link);
                false
            }
        }
    }

    /// Delivers a connectivity notice; false if its node has crashed or left since.
    fn notice(&mut self, node: u32, incarnation: u32, peer: u32, up: bool) -> bool {
        let w = &mut self.world;
        let m = &w.meta[node as usize];
        if !m.up || m.incarnation != incarnation {
            return false;
        }
        let link = if up { LinkState::Up } else { LinkState::Down };
        self.tell(node, peer, link);
        true
    }

    /// Calls `handle_peer` on `node` about `peer` now, then drains it.
    fn tell(&mut self, node: u32, peer: u32, link: LinkState) {
        let w = &mut self.world;
        let (now, peer) = (w.now, w.ids[peer as usize]);
        let Some(core) = self.cores[node as usize].as_mut() else { return };
        if w.tracer.recording() {
            let node = w.ids[node as usize];
            w.tracer.record(TraceEntry::Peer { at: now, node, peer, link });
        }
        core.handle_peer(now, peer, link);
        self.drain(node, false);
    }

    /// Starts the freshly built core of `node` (the max message length) and tells it that
    /// `peers` are up, draining after each input.
    fn start(&mut self, node: u32, peers: &[u32]) {
        let now = self.world.now;
        let host = HostInfo::new(self.world.max_message_len);
        if let Some(core) = self.cores[node as usize].as_mut() {
            core.handle_start(now, host);
        }
        self.drain(node, false);
        for &peer in peers {
            self.tell(node, peer, LinkState::Up);
        }
    }

    /// A node joined or restarted (its core freshly built): its peers are told it is up
    /// (queued first, so nothing it sends can overtake the notice), then it is started.
    fn bring_up(&mut self, node: u32) {
        let peers = self.world.linked(node);
        for &peer in &peers {
            self.world.notify(peer, node, true);
        }
        self.start(node, &peers);
    }

    fn arrive(&mut self, from: u32, to: u32, incarnation: u32, epoch: u64, bytes: Vec<u8>) {
        let w = &mut self.world;
        w.in_flight -= 1;
        w.events += 1;
        w.arrivals += 1;
        w.last_event_at = w.now;
        // Always called, so the copy is released from the partition history.
        let cut = w.partitions.arrived(epoch, from, to);
        let link = link_key(from, to);
        w.release_floor(link);
        let dest = &w.meta[to as usize];
        if !dest.up || dest.incarnation != incarnation {
            w.drop_copy(link, bytes.len(), DropReason::Crash);
            return;
        }
        if cut {
            w.drop_copy(link, bytes.len(), DropReason::Partition);
            return;
        }
        let message = match encoding::decode_with_limit::<P::Message>(&bytes, w.max_message_len) {
            Ok(m) => m,
            Err(_) => {
                w.drop_copy(link, bytes.len(), DropReason::Decode);
                return;
            }
        };
        w.delivered(from, to, &bytes);
        let now = w.now;
        let sender = w.ids[from as usize];
        if let Some(core) = self.cores[to as usize].as_mut() {
            core.handle_message(now, sender, message);
            self.drain(to, false);
        }
    }

    fn fire(&mut self, node: u32, generation: u64) -> bool {
        let w = &mut self.world;
        let m = &mut w.meta[node as usize];
        if !m.up || m.timer_gen != generation {
            return false;
        }
        m.timer_armed = None;
        let Some(core) = self.cores[node as usize].as_mut() else {
            return false;
        };
        let now = w.now;
        match core.poll_timeout() {
            Some(deadline) if deadline <= now && deadline != Time::MAX => {
                m.timer_fires += 1;
                w.timer_fires += 1;
                w.events += 1;
                w.last_event_at = now;
                w.tracer.head(TAG_TIMEOUT, now, node);
                if w.tracer.recording() {
                    w.tracer.record(TraceEntry::Timeout { at: now, node: w.ids[node as usize] });
                }
                core.handle_timeout(now);
                self.drain(node, true);
                true
            }
            later => {
                w.arm(node, later, false);
                false
            }
        }
    }

    /// Drains a core's outputs after an input: transmits, events, then its deadline.
    fn drain(&mut self, node: u32, after_fire: bool) {
        let Some(core) = self.cores.get_mut(node as usize).and_then(Option::as_mut) else {
            return;
        };
        let w = &mut self.world;
        while let Some(t) = core.poll_transmit() {
            let channel = self.channel_of.as_ref().map_or(ChannelId::DEFAULT, |f| f(&t.message));
            match encoding::try_encode(&t.message) {
                Ok(bytes) if bytes.len() > w.max_message_len => {
                    w.oversized(node, t.to, bytes.len());
                }
                Ok(bytes) => w.send(node, t.to, channel, bytes),
                Err(_) => w.unencodable(node, t.to),
            }
        }
        while let Some(event) = core.poll_event() {
            w.tracer.head(TAG_EVENT, w.now, node);
            self.digest_buf.clear();
            if let Some(digest) = self.event_digest.as_mut() {
                digest(&event, &mut self.digest_buf);
            }
            // Length-prefixed even when empty, so records stay unambiguous.
            w.tracer.bytes(&self.digest_buf);
            if w.tracer.recording() {
                w.tracer.record(TraceEntry::Event { at: w.now, node: w.ids[node as usize] });
            }
            if self.record_events {
                self.events.push((w.now, w.ids[node as usize], event));
            }
        }
        let deadline = core.poll_timeout();
        w.arm(node, deadline, after_fire);
    }
}

impl<P: Protocol> fmt::Debug for Sim<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.world.seed)
            .field("now", &self.world.now)
            .field("nodes", &self.world.ids.len())
            .field("pending", &self.world.queue.len())
            .finish_non_exhaustive()
    }
}

/// Appends bytes identifying an event to a buffer (see [`Sim::set_event_digest`]).
type EventDigest<E> = Box<dyn FnMut(&E, &mut Vec<u8>)>;

/// Says which channel a message travels on (see [`Sim::set_channel_of`]).
type ChannelOf<M> = Box<dyn Fn(&M) -> ChannelId>;

/// Everything but the cores, so a core and the network can be borrowed at once.
struct World {
    now: Time,
    seed: u64,
    ids: Arc<[NodeId]>,
    secrets: Vec<[u8; 32]>,
    index: IdMap<NodeId, u32>,
    meta: Vec<NodeMeta>,
    queue: Queue<Kind>,
    rng: ChaCha8Rng,
    default_link: LinkConfig,
    default_compiled: CompiledLink,
    wires: Wires,
    /// The FIFO floors of the links that may have a FIFO copy in flight, by [`link_key`] (see
    /// [`World::fifo_at`]).
    floors: Floors,
    /// Per-link configurations overriding the default.
    overrides: IdMap<u64, CompiledLink>,
    links: Vec<Link>,
    /// Sends not yet counted in their link's [`Link::sent`]: (sender, receiver, encoded
    /// length). Counted [`SEND_LOG`] at a time (see [`World::count_sends`]).
    sends: Vec<(u32, u32, u32)>,
    /// Scratch space for [`World::count_sends`] (kept to reuse its allocation).
    send_links: Vec<Option<u32>>,
    /// Duplication and drop counters of the links that had any, by [`link_key`] (kept apart
    /// so the state touched by every message stays small).
    rare: IdMap<u64, RareStats>,
    totals: MessageStats,
    events: u64,
    arrivals: u64,
    timer_fires: u64,
    faults: u64,
    unroutable: u64,
    unencodable: u64,
    last_event_at: Time,
    in_flight: u64,
    pending_faults: u64,
    /// Connectivity notices and partition detections scheduled and not yet processed.
    pending_notices: u64,
    partitions: PartitionHistory,
    tracer: Tracer,
    max_message_len: usize,
    oversized: u64,
    joined: u64,
    left: u64,
    /// [`SimBuilder::partition_detection`].
    detection: Option<Duration>,
    /// Bumped by every partition or heal; a detection reports only the one it was made for.
    assignment_generation: u64,
}

struct NodeMeta {
    up: bool,
    /// Left for good ([`Sim::remove_node`]); `up` is false too.
    removed: bool,
    incarnation: u32,
    group: u32,
    /// The partition group the cores have been told about (see
    /// [`SimBuilder::partition_detection`]); links between nodes with different
    /// `seen_group`s have been reported down.
    seen_group: u32,
    disk: Disk,
    /// Generation of the one valid timer entry; bumped to invalidate it.
    timer_gen: u64,
    /// When the valid timer entry (if any) is scheduled.
    timer_armed: Option<Time>,
    timer_fires: u64,
    unroutable: u64,
    unencodable: u64,
    oversized: u64,
    crashes: u64,
    restarts: u64,
}

impl NodeMeta {
    fn new() -> Self {
        Self {
            up: true,
            removed: false,
            incarnation: 0,
            group: 0,
            seen_group: 0,
            disk: Disk::new(),
            timer_gen: 0,
            timer_armed: None,
            timer_fires: 0,
            unroutable: 0,
            unencodable: 0,
            oversized: 0,
            crashes: 0,
            restarts: 0,
        }
    }
}

/// Up to this many nodes, the link indices are a dense `n × n` table (4 MiB at most) rather
/// than a hash map.
const DENSE_LINKS_MAX_NODES: usize = 1024;

/// Marks a link never used in [`Wires`].
const UNUSED_LINK: u32 = u32::MAX;

/// Sends logged before they are counted in their links (see [`World::count_sends`]).
const SEND_LOG: usize = 4096;

/// The index in [`World::links`] of every directed link `(from, to)` used so far, found from
/// its ends in one access.
///
/// A large run uses most of its `n²` links, so per-link state is read from memory rather than
/// cache, and reading it at every send stalls the send. So a send reads no per-link state
/// that grows with `n²`: the FIFO floor it needs is in a small map of the links with copies in
/// flight ([`World::floors`]), and its counting is logged ([`World::sends`]) and done in
/// batches, which look links up here and in [`World::links`] with their cache misses
/// overlapping. A link's delivered counters are not kept: every copy ends delivered, dropped
/// or still in flight, so [`World::link_stats`] derives them from the others and the copies in
/// flight. Duplication and drop counters, which few copies touch, are in [`World::rare`].
enum Wires {
    /// Row `from`, column `to`, of a table with `n` columns.
    Dense {
        n: usize,
        ids: Vec<u32>,
    },
    Sparse(IdMap<u64, u32>),
}

/// A link's state, by its index.
struct Link {
    from: u32,
    to: u32,
    /// The transmitter, once the link has had a bandwidth model (see [`Bandwidth`]).
    tx: Option<Box<Transmitter>>,
    /// Messages handed to the link ([`MessageStats::sent`]), except those still in
    /// [`World::sends`].
    sent: u64,
    /// Their encoded bytes ([`MessageStats::sent_bytes`]).
    sent_bytes: u64,
}

/// The counters of a link that only duplicated and dropped copies touch.
#[derive(Default, Clone, Copy)]
struct RareStats {
    /// `duplicated` and the drop counters; the others stay zero.
    stats: MessageStats,
    /// Bytes of the extra copies made by duplication (so delivered bytes can be derived).
    duplicated_bytes: u64,
}

/// A link's transmitter: busy with one message at a time, the others waiting per channel,
/// served by deficit round robin (fair in bytes, see [`Bandwidth`]).
struct Transmitter {
    busy: bool,
    /// The channel whose turn it is.
    next: usize,
    /// Bytes each channel may still send in its turn.
    deficit: [u64; ChannelId::COUNT],
    queues: [VecDeque<Queued>; ChannelId::COUNT],
}

/// What a channel's turn adds to its deficit: about one Ethernet frame.
const QUANTUM: u64 = 1500;

impl Transmitter {
    /// Deficit round robin: the channel whose turn it is sends its head message if its deficit
    /// covers it; otherwise it gets a quantum more and the turn passes on. An empty channel's
    /// deficit is reset, so an idle channel cannot save up. Each turn adds a quantum to some
    /// waiting channel, so this ends (after at most the largest message's length in quanta of
    /// turns around the channels).
    fn next_by_deficit(&mut self) -> Option<(usize, Queued)> {
        if self.queues.iter().all(VecDeque::is_empty) {
            self.deficit = [0; ChannelId::COUNT];
            return None;
        }
        loop {
            let c = self.next % ChannelId::COUNT;
            let (Some(queue), Some(deficit)) = (self.queues.get_mut(c), self.deficit.get_mut(c))
            else {
                return None;
            };
            match queue.front().map(|q| q.bytes.len() as u64) {
                None => {
                    *deficit = 0;
                    self.next = c + 1;
                }
                Some(len) if *deficit >= len => {
                    *deficit -= len;
                    return queue.pop_front().map(|q| (c, q));
                }
                Some(_) => {
                    *deficit = deficit.saturating_add(QUANTUM);
                    self.next = c + 1;
                }
            }
        }
    }
}

/// A copy waiting for its link's transmitter (already counted in flight).
struct Queued {
    incarnation: u32,
    epoch: u64,
    bytes: Vec<u8>,
}

enum Action {
    Partition(Vec<u32>, usize),
    Heal,
    Crash(u32),
    Restart(u32),
    Remove(u32),
    Join([u8; 32]),
    SetLink(u32, u32, CompiledLink),
    ClearLink(u32, u32),
    SetDefault(LinkConfig, CompiledLink),
}

enum Kind {
    /// A message copy; `incarnation` of the receiver and partition `epoch` when it was sent.
    Deliver {
        from: u32,
        to: u32,
        incarnation: u32,
        epoch: u64,
        bytes: Vec<u8>,
    },
    Timer {
        node: u32,
        generation: u64,
    },
    Fault(Box<Action>),
    /// Tells `node` (if still in `incarnation`) that its link to `peer` is up or down.
    Notice {
        node: u32,
        incarnation: u32,
        peer: u32,
        up: bool,
    },
    /// The partition assignment of this generation has been in force for the detection delay.
    Detect {
        generation: u64,
    },
    /// The transmitter of `link` has finished a message.
    TxDone {
        link: u32,
    },
}

/// Where link `from → to` is in a dense table of `n` columns; `None` for an end beyond it
/// (which would otherwise alias another row's link).
fn dense_index(n: usize, from: u32, to: u32) -> Option<usize> {
    let (from, to) = (from as usize, to as usize);
    (from < n && to < n).then(|| from * n + to)
}

/// Messages and their bytes.
type Counts = (u64, u64);

/// Identifies link `from → to` in maps.
fn link_key(from: u32, to: u32) -> u64 {
    (u64::from(from) << 32) | u64::from(to)
}

/// The ends of the link of [`link_key`] `key`.
fn link_ends(key: u64) -> (u32, u32) {
    ((key >> 32) as u32, key as u32)
}

fn first_u64(bytes: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

impl World {
    fn resolve(&self, id: NodeId) -> Result<u32, SimError> {
        self.index.get(&id).copied().ok_or(SimError::UnknownNode(id))
    }

    fn context(&self, i: u32) -> NodeContext {
        let m = &self.meta[i as usize];
        let mut h = blake3::Hasher::new_derive_key("llmkg-federation sim node seed v1");
        h.update(&self.seed.to_le_bytes());
        h.update(&u64::from(i).to_le_bytes());
        h.update(&u64::from(m.incarnation).to_le_bytes());
        NodeContext {
            id: self.ids[i as usize],
            index: i as usize,
            incarnation: m.incarnation,
            seed: first_u64(h.finalize().as_bytes()),
            disk: m.disk.clone(),
            nodes: self.ids.clone(),
            secret: self.secrets[i as usize],
        }
    }

    fn resolve_fault(&self, fault: Fault) -> Result<Action, SimError> {
        Ok(match fault {
            Fault::Partition(groups) => {
                // Group 0 holds the unlisted nodes; listed groups are numbered from 1. Each
                // non-empty group holds a node no other group holds, so the numbers fit in u32.
                let mut assignment: Vec<Option<u32>> = vec![None; self.ids.len()];
                let mut nonempty = 0u32;
                for members in groups.iter().filter(|g| !g.is_empty()) {
                    nonempty = nonempty.saturating_add(1);
                    for id in members {
                        let i = self.resolve(*id)? as usize;
                        match assignment.get_mut(i) {
                            Some(slot @ None) => *slot = Some(nonempty),
                            _ => return Err(SimError::DuplicateInPartition(*id)),
                        }
                    }
                }
                let unlisted = assignment.iter().any(Option::is_none);
                let count = nonempty as usize + usize::from(unlisted);
                Action::Partition(assignment.into_iter().map(|g| g.unwrap_or(0)).collect(), count)
            }
            Fault::Heal => Action::Heal,
            Fault::Crash(id) => Action::Crash(self.resolve(id)?),
            Fault::Restart(id) => Action::Restart(self.resolve(id)?),
            Fault::Remove(id) => Action::Remove(self.resolve(id)?),
            Fault::Join { secret } => {
                let id = NodeKeypair::from_secret_bytes(secret).node_id();
                if self.index.contains_key(&id) {
                    return Err(SimError::DuplicateNode(id));
                }
                Action::Join(secret)
            }
            Fault::SetLink { from, to, config } => {
                Action::SetLink(self.resolve(from)?, self.resolve(to)?, config.compile()?)
            }
            Fault::ClearLink { from, to } => {
                Action::ClearLink(self.resolve(from)?, self.resolve(to)?)
            }
            Fault::SetDefaultLink(config) => {
                let compiled = config.compile()?;
                Action::SetDefault(config, compiled)
            }
        })
    }

    /// Traces a change of link `link` (`None`: the default) to `config` (`None`: cleared).
    fn trace_link_change(&mut self, link: Option<(u32, u32)>, config: Option<&CompiledLink>) {
        let (f, t) = link.unwrap_or((u32::MAX, u32::MAX));
        self.tracer.head(TAG_LINK, self.now, f);
        self.tracer.u32(t);
        match config {
            Some(c) => c.trace_into(&mut self.tracer),
            None => self.tracer.u8(0),
        }
        if self.tracer.recording() {
            let link = link.map(|(f, t)| (self.ids[f as usize], self.ids[t as usize]));
            self.tracer.record(TraceEntry::LinkChanged { at: self.now, link });
        }
    }

    fn push(&mut self, at: Time, kind: Kind) {
        self.queue.push(at, kind);
    }

    /// A partition or heal came into force: schedules its report, if partitions are detected.
    fn schedule_detection(&mut self) {
        self.assignment_generation += 1;
        if let Some(delay) = self.detection {
            self.pending_notices += 1;
            let generation = self.assignment_generation;
            self.push(self.now + delay, Kind::Detect { generation });
        }
    }

    /// Makes room in the link table for `nodes` nodes: a dense table grows by doubling its
    /// stride (up to [`DENSE_LINKS_MAX_NODES`]), beyond which the indices move to a hash map.
    fn grow_link_index(&mut self, nodes: usize) {
        let Wires::Dense { n, ids } = &mut self.wires else { return };
        if nodes <= *n {
            return;
        }
        let old = *n;
        let moved = std::mem::take(ids);
        let used = moved.into_iter().enumerate().filter(|(_, id)| *id != UNUSED_LINK);
        if nodes <= DENSE_LINKS_MAX_NODES {
            let stride = nodes.max(old.saturating_mul(2)).clamp(4, DENSE_LINKS_MAX_NODES);
            let mut grown = vec![UNUSED_LINK; stride * stride];
            for (i, id) in used {
                grown[(i / old) * stride + i % old] = id;
            }
            self.wires = Wires::Dense { n: stride, ids: grown };
        } else {
            let mut map: IdMap<u64, u32> = HashMap::default();
            for (i, id) in used {
                map.insert(link_key((i / old) as u32, (i % old) as u32), id);
            }
            self.wires = Wires::Sparse(map);
        }
    }

    /// The index of link `from → to`, created on first use (`None` only for an end beyond the
    /// table, which adding nodes grows first: not reached).
    fn link(&mut self, from: u32, to: u32) -> Option<u32> {
        let id = match &mut self.wires {
            Wires::Dense { n, ids } => ids.get_mut(dense_index(*n, from, to)?)?,
            Wires::Sparse(map) => map.entry(link_key(from, to)).or_insert(UNUSED_LINK),
        };
        if *id == UNUSED_LINK {
            *id = self.links.len() as u32;
            self.links.push(Link { from, to, tx: None, sent: 0, sent_bytes: 0 });
        }
        Some(*id)
    }

    /// The index of link `from → to`, if it was ever used.
    fn link_index(&self, from: u32, to: u32) -> Option<u32> {
        let id = match &self.wires {
            Wires::Dense { n, ids } => dense_index(*n, from, to).and_then(|i| ids.get(i)),
            Wires::Sparse(map) => map.get(&link_key(from, to)),
        };
        id.copied().filter(|id| *id != UNUSED_LINK)
    }

    /// The index of link `from → to`, created now if it was not yet: the logged sends are
    /// counted first, so links are indexed in the order of their first send.
    fn link_now(&mut self, from: u32, to: u32) -> Option<u32> {
        self.count_sends();
        self.link(from, to)
    }

    /// The instant a FIFO copy on `link` to receiver incarnation `incarnation`, due no earlier
    /// than `at` (microseconds), is scheduled at: not before an earlier FIFO copy to the same
    /// incarnation.
    ///
    /// Copies to an earlier incarnation are never delivered, so a floor binds only copies to
    /// the incarnation it was set for (a restarted node gets new connections, not the tail of
    /// the old ones). A floor that is not after the current instant binds nothing (every copy
    /// is scheduled at or after the current instant), so a link's floor is dropped when the
    /// copy that set it arrives ([`release_floor`](Self::release_floor)), and the floors held
    /// are those of links with FIFO copies in flight: a few, where a run uses most of its `n²`
    /// links.
    fn fifo_at(&self, link: u64, incarnation: u32, at: u64) -> u64 {
        match self.floors.get(link) {
            Some(floor) if floor.incarnation == incarnation => at.max(floor.at),
            _ => at,
        }
    }

    /// A FIFO copy on `link` to `incarnation` is scheduled at `at`: later FIFO copies to that
    /// incarnation must not be scheduled before it.
    fn set_floor(&mut self, link: u64, incarnation: u32, at: u64) {
        self.floors.insert(link, Floor { at, incarnation });
    }

    /// A copy on `link` arrived: the link's floor is dropped once it binds nothing.
    fn release_floor(&mut self, link: u64) {
        self.floors.remove_if_not_after(link, self.now.as_micros());
    }

    /// Logs a send of `len` bytes on link `from → to` for its counters.
    fn count_send(&mut self, from: u32, to: u32, len: u64) {
        if self.sends.len() >= SEND_LOG {
            self.count_sends();
        }
        match u32::try_from(len) {
            Ok(len) => self.sends.push((from, to, len)),
            Err(_) => {
                // Too long for the log: counted now (after the logged ones, so the links are
                // still indexed in the order of their first send).
                self.count_sends();
                if let Some(link) = self.link(from, to)
                    && let Some(state) = self.links.get_mut(link as usize)
                {
                    state.sent += 1;
                    state.sent_bytes += len;
                }
            }
        }
    }

    /// Adds the logged sends to their links' counters, creating (indexing) the links sent on
    /// for the first time in the order of their first send. Done in batches because the link
    /// table and the links are spread over memory: the look-ups of a batch do not wait for
    /// one another, so their cache misses overlap, where a look-up at every send would stall
    /// it.
    fn count_sends(&mut self) {
        let mut sends = std::mem::take(&mut self.sends);
        let mut indices = std::mem::take(&mut self.send_links);
        // Two passes, so that no look-up waits for the one before: the links' indices, then
        // their counters.
        indices.extend(sends.iter().map(|&(from, to, _)| self.link(from, to)));
        for (link, &(_, _, len)) in indices.drain(..).zip(&sends) {
            if let Some(state) = link.and_then(|link| self.links.get_mut(link as usize)) {
                state.sent += 1;
                state.sent_bytes += u64::from(len);
            }
        }
        sends.clear();
        self.sends = sends;
        self.send_links = indices;
    }

    /// The sends of each link still in the log, by [`link_key`]: (messages, bytes); and the
    /// links among them not indexed yet, in the order of their first send.
    fn logged_sends_by_link(&self) -> (IdMap<u64, Counts>, Vec<(u32, u32)>) {
        let mut by_link: IdMap<u64, Counts> = IdMap::default();
        let mut new = Vec::new();
        for &(from, to, len) in &self.sends {
            let entry = by_link.entry(link_key(from, to)).or_insert_with(|| {
                if self.link_index(from, to).is_none() {
                    new.push((from, to));
                }
                (0, 0)
            });
            entry.0 += 1;
            entry.1 += u64::from(len);
        }
        (by_link, new)
    }

    /// Counts (and traces) a message node `from` emitted for `to`, which is not a member.
    fn unroutable(&mut self, from: u32, to: NodeId) {
        self.unroutable += 1;
        self.meta[from as usize].unroutable += 1;
        self.tracer.head(TAG_UNROUTABLE, self.now, from);
        self.tracer.bytes(to.as_bytes());
        if self.tracer.recording() {
            let from = self.ids[from as usize];
            self.tracer.record(TraceEntry::Unroutable { at: self.now, from, to });
        }
    }

    /// Counts (and traces) a message node `from` emitted for `to` that did not encode.
    fn unencodable(&mut self, from: u32, to: NodeId) {
        self.unencodable += 1;
        self.meta[from as usize].unencodable += 1;
        self.tracer.head(TAG_UNENCODABLE, self.now, from);
        self.tracer.bytes(to.as_bytes());
        if self.tracer.recording() {
            let from = self.ids[from as usize];
            self.tracer.record(TraceEntry::Unencodable { at: self.now, from, to });
        }
    }

    /// Counts (and traces) a message node `from` emitted for `to` whose encoding is `len`
    /// bytes, over the maximum message length.
    fn oversized(&mut self, from: u32, to: NodeId, len: usize) {
        self.oversized += 1;
        self.meta[from as usize].oversized += 1;
        self.tracer.head(TAG_OVERSIZED, self.now, from);
        self.tracer.bytes(to.as_bytes());
        self.tracer.u64(len as u64);
        if self.tracer.recording() {
            let from = self.ids[from as usize];
            self.tracer.record(TraceEntry::Oversized { at: self.now, from, to, bytes: len });
        }
    }

    /// The configuration in force on link `from → to`.
    fn config_of(&self, from: u32, to: u32) -> CompiledLink {
        if self.overrides.is_empty() {
            self.default_compiled
        } else {
            self.overrides.get(&link_key(from, to)).copied().unwrap_or(self.default_compiled)
        }
    }

    /// Hands `bytes` from node `from` to the network, addressed to `to`, on `channel`.
    fn send(&mut self, from: u32, to: NodeId, channel: ChannelId, bytes: Vec<u8>) {
        let dest = match self.index.get(&to) {
            Some(&dest) if !self.meta[dest as usize].removed => dest,
            _ => return self.unroutable(from, to),
        };
        let len = bytes.len() as u64;
        let link = link_key(from, dest);
        self.count_send(from, dest, len);
        self.totals.sent += 1;
        self.totals.sent_bytes += len;
        let config = self.config_of(from, dest);
        let (receiver, sender) = (&self.meta[dest as usize], &self.meta[from as usize]);
        if !receiver.up {
            self.drop_copy(link, bytes.len(), DropReason::Crash);
            return;
        }
        let incarnation = receiver.incarnation;
        if from == dest {
            // Loopback: no loss, duplication, reordering, partition or transmitter; delivered
            // at the current instant, after what is already scheduled for it.
            self.in_flight += 1;
            let epoch = self.partitions.sent();
            let at = self.fifo_at(link, incarnation, self.now.as_micros());
            self.set_floor(link, incarnation, at);
            let deliver = Kind::Deliver { from, to: dest, incarnation, epoch, bytes };
            self.push(Time::from_micros(at), deliver);
            return;
        }
        if sender.group != receiver.group {
            self.drop_copy(link, bytes.len(), DropReason::Partition);
            return;
        }
        if chance(&mut self.rng, config.loss) {
            self.drop_copy(link, bytes.len(), DropReason::Loss);
            return;
        }
        if chance(&mut self.rng, config.duplicate) {
            let rare = self.rare.entry(link).or_default();
            rare.stats.duplicated += 1;
            rare.duplicated_bytes += len;
            self.totals.duplicated += 1;
            let copy = bytes.clone();
            self.transmit((link, from, dest), &config, channel, incarnation, bytes);
            self.transmit((link, from, dest), &config, channel, incarnation, copy);
        } else {
            self.transmit((link, from, dest), &config, channel, incarnation, bytes);
        }
    }

    /// Puts a copy in flight on link `ends` (its index and its ends): straight onto the wire,
    /// or through the link's transmitter.
    fn transmit(
        &mut self,
        ends: (u64, u32, u32),
        config: &CompiledLink,
        channel: ChannelId,
        incarnation: u32,
        bytes: Vec<u8>,
    ) {
        let Some(bandwidth) = config.bandwidth else {
            self.in_flight += 1;
            let epoch = self.partitions.sent();
            self.launch(ends, config, self.now.as_micros(), incarnation, epoch, bytes);
            return;
        };
        let (key, from, to) = ends;
        let Some(link) = self.link_now(from, to) else { return };
        let Some(state) = self.links.get_mut(link as usize) else { return };
        let tx = state.tx.get_or_insert_with(|| {
            Box::new(Transmitter {
                busy: false,
                next: 0,
                deficit: [0; ChannelId::COUNT],
                queues: std::array::from_fn(|_| VecDeque::new()),
            })
        });
        if !tx.busy {
            self.in_flight += 1;
            let epoch = self.partitions.sent();
            self.start_tx(link, config, channel.index(), Queued { incarnation, epoch, bytes });
            return;
        }
        if tx.queues[channel.index()].len() >= bandwidth.queue_limit {
            self.drop_copy(key, bytes.len(), DropReason::Overflow);
            return;
        }
        self.in_flight += 1;
        let epoch = self.partitions.sent();
        tx.queues[channel.index()].push_back(Queued { incarnation, epoch, bytes });
    }

    /// The transmitter of `link` starts sending `q` (from the queue of `channel`).
    fn start_tx(&mut self, link: u32, config: &CompiledLink, channel: usize, q: Queued) {
        let busy_us = config.bandwidth.map_or(0, |b| b.serialization_us(q.bytes.len()));
        let end = self.now.as_micros().saturating_add(busy_us);
        let Some(state) = self.links.get_mut(link as usize) else { return };
        let (from, to) = (state.from, state.to);
        if let Some(tx) = state.tx.as_mut() {
            tx.busy = true;
            // The channel keeps its turn while its deficit covers its next message.
            tx.next = channel;
        }
        self.push(Time::from_micros(end), Kind::TxDone { link });
        let key = link_key(from, to);
        self.launch((key, from, to), config, end, q.incarnation, q.epoch, q.bytes);
    }

    /// The transmitter of `link` is free: it starts the next queued copy, by deficit round
    /// robin.
    fn tx_done(&mut self, link: u32) {
        let state = &mut self.links[link as usize];
        let (from, to) = (state.from, state.to);
        let Some(tx) = state.tx.as_mut() else { return };
        tx.busy = false;
        let next = tx.next_by_deficit();
        if let Some((channel, q)) = next {
            let config = self.config_of(from, to);
            self.start_tx(link, &config, channel, q);
        }
    }

    /// Node `node` crashed or left: the copies still queued in its transmitters go with it.
    fn drop_queued_from(&mut self, node: u32) {
        for link in 0..self.links.len() {
            let state = &mut self.links[link];
            if state.from != node {
                continue;
            }
            let Some(tx) = state.tx.as_mut() else { continue };
            let queued: Vec<Queued> = tx.queues.iter_mut().flat_map(|q| q.drain(..)).collect();
            let (from, to) = (state.from, state.to);
            for q in queued {
                self.in_flight -= 1;
                self.partitions.arrived(q.epoch, from, to);
                self.drop_copy(link_key(from, to), q.bytes.len(), DropReason::Overflow);
            }
        }
    }

    /// Schedules the arrival of a copy that leaves the sender at `base` (microseconds).
    fn launch(
        &mut self,
        (link, from, to): (u64, u32, u32),
        config: &CompiledLink,
        base: u64,
        incarnation: u32,
        epoch: u64,
        bytes: Vec<u8>,
    ) {
        let sampled = base.saturating_add(config.sample_latency(&mut self.rng));
        let held_back = config.sample_reorder(&mut self.rng);
        // Never before an earlier FIFO copy. A held-back copy is then delayed further and does
        // not hold later copies back, so they may overtake it.
        let fifo_at = self.fifo_at(link, incarnation, sampled);
        let at = match held_back {
            Some(extra) => fifo_at.saturating_add(extra),
            None => {
                self.set_floor(link, incarnation, fifo_at);
                fifo_at
            }
        };
        self.push(Time::from_micros(at), Kind::Deliver { from, to, incarnation, epoch, bytes });
    }

    /// The running nodes other than `node` whose link to it the cores see as up (same
    /// reported partition group), in index order.
    fn linked(&self, node: u32) -> Vec<u32> {
        let group = self.meta[node as usize].seen_group;
        (0..self.meta.len() as u32)
            .filter(|&i| i != node && self.meta[i as usize].up)
            .filter(|&i| self.meta[i as usize].seen_group == group)
            .collect()
    }

    /// Schedules telling `node` that its link to `peer` went up or down: behind every FIFO
    /// copy already on the wire from `peer` to it, so a peer's messages arrive between its
    /// `Up` and its `Down`.
    fn notify(&mut self, node: u32, peer: u32, up: bool) {
        let incarnation = self.meta[node as usize].incarnation;
        let mut at = self.now;
        let link = link_key(peer, node);
        at = Time::from_micros(self.fifo_at(link, incarnation, at.as_micros()));
        self.pending_notices += 1;
        self.push(at, Kind::Notice { node, incarnation, peer, up });
    }

    /// Reports the partition assignment in force to the cores (see
    /// [`SimBuilder::partition_detection`]).
    fn detect(&mut self) {
        let n = self.meta.len() as u32;
        for i in 0..n {
            if !self.meta[i as usize].up {
                continue;
            }
            for j in 0..n {
                let (a, b) = (&self.meta[i as usize], &self.meta[j as usize]);
                if i == j || !b.up {
                    continue;
                }
                let before = a.seen_group == b.seen_group;
                let after = a.group == b.group;
                if before != after {
                    self.notify(i, j, after);
                }
            }
        }
        for m in &mut self.meta {
            m.seen_group = m.group;
        }
    }

    /// The copies in flight on each link that has any: (copies, bytes). They are in the event
    /// queue, or waiting in a transmitter.
    fn in_flight_by_link(&self) -> IdMap<u64, (u64, u64)> {
        let mut by_link: IdMap<u64, (u64, u64)> = IdMap::default();
        let mut add = |link: u64, len: usize| {
            let entry = by_link.entry(link).or_default();
            entry.0 += 1;
            entry.1 += len as u64;
        };
        for kind in self.queue.iter() {
            if let Kind::Deliver { from, to, bytes, .. } = kind {
                add(link_key(*from, *to), bytes.len());
            }
        }
        for state in &self.links {
            for q in state.tx.iter().flat_map(|tx| tx.queues.iter().flatten()) {
                add(link_key(state.from, state.to), q.bytes.len());
            }
        }
        by_link
    }

    /// The counters of link `link` (a [`link_key`]), given what was sent on it and its copies
    /// in flight (messages, bytes). Every copy sent or made by duplication is delivered,
    /// dropped or in flight, so what is neither dropped nor in flight was delivered.
    fn link_stats(
        &self,
        link: u64,
        (sent, sent_bytes): (u64, u64),
        in_flight: Option<(u64, u64)>,
    ) -> MessageStats {
        let rare = self.rare.get(&link).copied().unwrap_or_default();
        let (copies, bytes) = in_flight.unwrap_or((0, 0));
        let mut stats = rare.stats;
        stats.sent = sent;
        stats.sent_bytes = sent_bytes;
        stats.delivered = (sent + stats.duplicated).saturating_sub(stats.dropped() + copies);
        stats.delivered_bytes =
            (sent_bytes + rare.duplicated_bytes).saturating_sub(stats.dropped_bytes + bytes);
        stats
    }

    /// Counts (and traces) a copy on link `link` (a [`link_key`]) dropped for `reason`.
    fn drop_copy(&mut self, link: u64, len: usize, reason: DropReason) {
        let rare = self.rare.entry(link).or_default();
        for stats in [&mut rare.stats, &mut self.totals] {
            match reason {
                DropReason::Loss => stats.dropped_loss += 1,
                DropReason::Partition => stats.dropped_partition += 1,
                DropReason::Crash => stats.dropped_crash += 1,
                DropReason::Decode => stats.dropped_decode += 1,
                DropReason::Overflow => stats.dropped_overflow += 1,
            }
            stats.dropped_bytes += len as u64;
        }
        let (from, to) = link_ends(link);
        self.tracer.head(TAG_DROPPED, self.now, from);
        self.tracer.u32(to);
        self.tracer.u64(len as u64);
        self.tracer.drop_reason(reason);
        if self.tracer.recording() {
            let (from, to) = (self.ids[from as usize], self.ids[to as usize]);
            self.tracer.record(TraceEntry::Dropped { at: self.now, from, to, bytes: len, reason });
        }
    }

    /// Counts (and traces) a copy from `from` to `to` handed to its receiver. The link's own
    /// delivered counters are derived when asked for (see [`Wires`]).
    fn delivered(&mut self, from: u32, to: u32, bytes: &[u8]) {
        let len = bytes.len() as u64;
        self.totals.delivered += 1;
        self.totals.delivered_bytes += len;
        self.tracer.head(TAG_DELIVERED, self.now, from);
        self.tracer.u32(to);
        self.tracer.bytes(bytes);
        if self.tracer.recording() {
            let (from, to) = (self.ids[from as usize], self.ids[to as usize]);
            let entry = TraceEntry::Delivered { at: self.now, from, to, bytes: bytes.len() };
            self.tracer.record(entry);
        }
    }

    /// Makes sure node `node`'s timer entry fires no later than `deadline` (deferred past
    /// `now` if the node's timer has just fired).
    fn arm(&mut self, node: u32, deadline: Option<Time>, after_fire: bool) {
        // `Time::MAX` means never. A still-valid entry finds no due deadline when it pops, and
        // is dropped then.
        let Some(deadline) = deadline.filter(|d| *d != Time::MAX) else {
            return;
        };
        let floor = if after_fire {
            // Right after a fire at the last representable instant nothing can come later.
            match self.now.as_micros().checked_add(1) {
                Some(next) => Time::from_micros(next),
                None => return,
            }
        } else {
            self.now
        };
        let at = deadline.max(floor);
        let m = &mut self.meta[node as usize];
        if let Some(armed) = m.timer_armed
            && armed <= at
        {
            // The earlier entry re-arms for the later deadline when it pops.
            return;
        }
        m.timer_gen += 1;
        m.timer_armed = Some(at);
        let generation = m.timer_gen;
        self.push(at, Kind::Timer { node, generation });
    }
}

/// A fast hasher for keys that are uniformly random (node ids) or small integers (link keys).
/// Maps using it are only ever looked up, never iterated, so their order cannot affect a run.
///
/// Each word is mixed with a folded 64×64→128-bit multiply, so every input bit reaches the low
/// bits the table indexes with (a plain multiply would leave the low bits depending on the low
/// bits of the key alone, and link keys `from << 32 | to` with the same `to` would all collide).
/// It is not meant to resist keys chosen to collide.
#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

impl IdHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * 0x9e37_79b9_7f4a_7c15_u128;
        self.0 = (product as u64) ^ ((product >> 64) as u64) ^ 0x51_7c_c1_b7_27_22_0a_95;
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
}

/// A hash map for lookups only (see [`IdHasher`]); never iterate one where order matters.
pub(super) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A floor is dropped when the copy that set it arrives, so none is left once nothing is in
    /// flight, whatever crashes, restarts, partitions, losses, duplicates and reordering did
    /// meanwhile; and the statistics are the same before and after the logged sends are
    /// counted.
    #[test]
    fn no_floor_outlives_its_copies_and_counting_sends_changes_no_statistic() {
        use workloads::{Flood, FloodConfig};
        let link = LinkConfig::with_latency(Latency::Uniform {
            min: Duration::from_millis(1),
            max: Duration::from_millis(30),
        })
        .loss(0.05)
        .duplicate(0.05)
        .reorder(0.1, Duration::from_millis(10));
        for seed in 0..4 {
            let mut sim = SimBuilder::new(seed)
                .nodes(24)
                .default_link(link.clone())
                .record_events(false)
                .build(|ctx| Flood::new(&ctx, FloodConfig::default()))
                .unwrap();
            let ids = sim.node_ids().to_vec();
            sim.schedule(Time::from_millis(15), Fault::Crash(ids[3])).unwrap();
            sim.schedule(Time::from_millis(40), Fault::Restart(ids[3])).unwrap();
            let groups = vec![ids[..8].to_vec()];
            sim.schedule(Time::from_millis(20), Fault::Partition(groups)).unwrap();
            sim.schedule(Time::from_millis(60), Fault::Heal).unwrap();
            for rumor in 0..10u64 {
                let origin = ids[(rumor as usize * 5) % ids.len()];
                sim.with_node(origin, |core, now| core.originate(now, rumor)).unwrap();
                sim.run_for(Duration::from_millis(7));
            }
            assert!(matches!(sim.run(), RunOutcome::Quiescent { .. }), "seed {seed}");
            assert_eq!(sim.world.floors.len(), 0, "seed {seed}");
            assert!(!sim.world.sends.is_empty(), "seed {seed}: the log should hold sends");
            let logged = sim.stats();
            sim.world.count_sends();
            assert!(sim.world.sends.is_empty());
            assert_eq!(sim.stats(), logged, "seed {seed}");
        }
    }

    #[test]
    fn link_keys_spread_over_the_low_hash_bits() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<IdHasher>::default();
        let mut buckets = std::collections::BTreeSet::new();
        for from in 0..64 {
            for to in 0..64 {
                buckets.insert(build.hash_one(link_key(from, to)) & 0xfff);
            }
        }
        // 4,096 keys in 4,096 buckets: about 2,589 distinct if the hash is uniform.
        assert!(buckets.len() > 2_400, "{} distinct buckets", buckets.len());
    }
}
