//! Counters the simulator keeps.

use std::collections::BTreeMap;

use llmkg_federation_core::{NodeId, Time};

/// Message and byte counters for a link, a node or the whole network.
///
/// Every message a core sends (or the host injects) counts once in `sent`; a duplicated
/// message adds one to `duplicated`. Every copy then ends exactly once as delivered or as
/// dropped for one reason, or is still in flight, so at any moment
/// `sent + duplicated == delivered + dropped() + in flight`, where the network-wide number in
/// flight is [`Sim::in_flight`](super::Sim::in_flight) (counted separately;
/// [`in_flight`](MessageStats::in_flight) derives it from the other counters). Messages
/// addressed to ids outside the simulation are not sent and are counted apart
/// ([`SimStats::unroutable`]). Byte counts are of the encoded payloads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Encoded bytes handed to the network.
    pub sent_bytes: u64,
    /// Extra copies created by link duplication.
    pub duplicated: u64,
    /// Copies decoded and handed to the receiving core.
    pub delivered: u64,
    /// Bytes of the delivered copies.
    pub delivered_bytes: u64,
    /// Copies lost by the link's loss probability.
    pub dropped_loss: u64,
    /// Copies dropped because sender and receiver were in different partition groups at send
    /// time, or at some moment while the copy was in flight (dropped on arrival).
    pub dropped_partition: u64,
    /// Copies dropped because the receiver was down at send time, or crashed (or restarted)
    /// while the copy was in flight.
    pub dropped_crash: u64,
    /// Copies that arrived but did not decode as the receiver's message type (malformed,
    /// non-canonical, or longer than the configured limit).
    pub dropped_decode: u64,
    /// Copies dropped by a link's transmitter: its queue for the channel was full, or the
    /// sender crashed or left while they were queued (only with a
    /// [`Bandwidth`](super::Bandwidth) model).
    pub dropped_overflow: u64,
    /// Bytes of all dropped copies.
    pub dropped_bytes: u64,
}

impl MessageStats {
    /// Copies dropped for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss
            + self.dropped_partition
            + self.dropped_crash
            + self.dropped_decode
            + self.dropped_overflow
    }

    /// Copies neither delivered nor dropped yet.
    pub fn in_flight(&self) -> u64 {
        (self.sent + self.duplicated).saturating_sub(self.delivered + self.dropped())
    }

    pub(super) fn add(&mut self, other: &MessageStats) {
        self.sent += other.sent;
        self.sent_bytes += other.sent_bytes;
        self.duplicated += other.duplicated;
        self.delivered += other.delivered;
        self.delivered_bytes += other.delivered_bytes;
        self.dropped_loss += other.dropped_loss;
        self.dropped_partition += other.dropped_partition;
        self.dropped_crash += other.dropped_crash;
        self.dropped_decode += other.dropped_decode;
        self.dropped_overflow += other.dropped_overflow;
        self.dropped_bytes += other.dropped_bytes;
    }
}

/// Counters of one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// The node's position in [`Sim::node_ids`](super::Sim::node_ids).
    pub index: usize,
    /// Messages this node sent (summed over its outgoing links).
    pub outbound: MessageStats,
    /// Messages addressed to this node (summed over its incoming links).
    pub inbound: MessageStats,
    /// Times `handle_timeout` was called on this node.
    pub timer_fires: u64,
    /// Messages this node addressed to an id that is not part of the simulation.
    pub unroutable: u64,
    /// Messages this node emitted that its message type could not encode (not sent).
    pub unencodable: u64,
    /// Messages this node emitted whose encoding exceeded the maximum message length (not
    /// sent).
    pub oversized: u64,
    /// Times the node crashed.
    pub crashes: u64,
    /// Times the node was restarted.
    pub restarts: u64,
    /// The current incarnation (0 for the first, +1 per restart).
    pub incarnation: u32,
    /// Whether the node is running.
    pub up: bool,
    /// Whether the node has left the simulation for good
    /// ([`Sim::remove_node`](super::Sim::remove_node)).
    pub removed: bool,
}

/// A snapshot of everything the simulator counted (see [`Sim::stats`](super::Sim::stats)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// The current virtual time (time elapsed since the start).
    pub now: Time,
    /// When the last delivery or timer fire was processed.
    pub last_event_at: Time,
    /// Events processed: message arrivals (delivered or dropped on arrival) plus timer fires.
    pub events: u64,
    /// Message arrivals processed (delivered or dropped on arrival).
    pub arrivals: u64,
    /// Timer fires (calls to `handle_timeout`).
    pub timer_fires: u64,
    /// Faults applied (scheduled or immediate partitions, heals, crashes, restarts, link
    /// changes).
    pub faults: u64,
    /// Messages addressed to ids that are not part of the simulation.
    pub unroutable: u64,
    /// Messages cores emitted that their message type could not encode (not sent).
    pub unencodable: u64,
    /// Messages cores emitted whose encoding exceeded the maximum message length (not sent).
    pub oversized: u64,
    /// Nodes added while the simulation ran ([`Sim::add_node`](super::Sim::add_node)).
    pub joined: u64,
    /// Nodes that left ([`Sim::remove_node`](super::Sim::remove_node)).
    pub left: u64,
    /// Network-wide totals.
    pub messages: MessageStats,
    /// Per node, keyed by id.
    pub nodes: BTreeMap<NodeId, NodeStats>,
    /// Per directed link `(from, to)` that carried at least one message.
    pub links: BTreeMap<(NodeId, NodeId), MessageStats>,
}
