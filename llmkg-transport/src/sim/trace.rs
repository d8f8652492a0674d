//! The running trace hash and the optional bounded trace record.

use std::collections::VecDeque;
use std::fmt;

use llmkg_federation_core::{NodeId, Time};

/// Why a message copy was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The link's loss probability.
    Loss,
    /// Sender and receiver were in different partition groups.
    Partition,
    /// The receiver was down, or crashed while the copy was in flight.
    Crash,
    /// The payload did not decode as the receiver's message type.
    Decode,
    /// The link's transmitter queue for the message's channel was full (see
    /// [`Bandwidth`](super::Bandwidth)), or the sender crashed or left while the message was
    /// still queued in it.
    Overflow,
}

impl DropReason {
    fn tag(self) -> u8 {
        match self {
            DropReason::Loss => 0,
            DropReason::Partition => 1,
            DropReason::Crash => 2,
            DropReason::Decode => 3,
            DropReason::Overflow => 4,
        }
    }
}

/// The BLAKE3 digest of everything that happened in a run (see
/// [`Sim::trace_hash`](super::Sim::trace_hash)).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TraceHash(pub [u8; 32]);

impl TraceHash {
    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for TraceHash {
    /// Lower-case hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TraceHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceHash({self})")
    }
}

/// One recorded happening, for debugging a failing seed (see
/// [`SimBuilder::record_trace`](super::SimBuilder::record_trace)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceEntry {
    /// A message copy was decoded and handed to `to`.
    Delivered {
        /// Virtual time of delivery.
        at: Time,
        /// Sender.
        from: NodeId,
        /// Receiver.
        to: NodeId,
        /// Encoded length.
        bytes: usize,
    },
    /// A message copy was dropped.
    Dropped {
        /// Virtual time of the drop: the send time for loss, for a receiver already down and
        /// for a partition in force at send time; otherwise the arrival time.
        at: Time,
        /// Sender.
        from: NodeId,
        /// Intended receiver.
        to: NodeId,
        /// Encoded length.
        bytes: usize,
        /// Why.
        reason: DropReason,
    },
    /// A core addressed a message to an id outside the simulation.
    Unroutable {
        /// Virtual time.
        at: Time,
        /// Sender.
        from: NodeId,
        /// The unknown destination.
        to: NodeId,
    },
    /// A core emitted a message its type cannot encode (see
    /// [`try_encode`](llmkg_federation_core::encoding::try_encode)); nothing was sent.
    Unencodable {
        /// Virtual time.
        at: Time,
        /// Sender.
        from: NodeId,
        /// The intended destination.
        to: NodeId,
    },
    /// `handle_timeout` was called.
    Timeout {
        /// Virtual time.
        at: Time,
        /// The node.
        node: NodeId,
    },
    /// A core emitted an event.
    Event {
        /// Virtual time.
        at: Time,
        /// The node.
        node: NodeId,
    },
    /// A node crashed.
    Crash {
        /// Virtual time.
        at: Time,
        /// The node.
        node: NodeId,
    },
    /// A node was rebuilt from its disk.
    Restart {
        /// Virtual time.
        at: Time,
        /// The node.
        node: NodeId,
        /// Its new incarnation.
        incarnation: u32,
    },
    /// The partition groups changed (a partition or a heal).
    Partition {
        /// Virtual time.
        at: Time,
        /// Number of groups now in force (1 when healed).
        groups: usize,
    },
    /// A link configuration changed.
    LinkChanged {
        /// Virtual time.
        at: Time,
        /// Sender side, or `None` for the default configuration.
        link: Option<(NodeId, NodeId)>,
    },
    /// A core was told that its link to `peer` came up or went down (recorded, not hashed:
    /// it follows from the hashed crash, restart, join, leave or partition that caused it).
    Peer {
        /// Virtual time.
        at: Time,
        /// The node told.
        node: NodeId,
        /// The peer.
        peer: NodeId,
        /// Up or down.
        link: llmkg_federation_core::LinkState,
    },
    /// A node joined the simulation ([`Sim::add_node`](super::Sim::add_node)).
    Joined {
        /// Virtual time.
        at: Time,
        /// The node.
        node: NodeId,
    },
    /// A node left the simulation for good ([`Sim::remove_node`](super::Sim::remove_node)).
    Left {
        /// Virtual time.
        at: Time,
        /// The node.
        node: NodeId,
    },
    /// A core emitted a message whose encoding exceeds the maximum message length; nothing
    /// was sent.
    Oversized {
        /// Virtual time.
        at: Time,
        /// Sender.
        from: NodeId,
        /// The intended destination.
        to: NodeId,
        /// Encoded length.
        bytes: usize,
    },
    /// The host called a core-specific input through [`Sim::with_node`](super::Sim::with_node).
    HostCall {
        /// Virtual time.
        at: Time,
        /// The node.
        node: NodeId,
    },
}

/// Feeds a byte record of each happening into BLAKE3 (buffered, so the digest equals the hash
/// of the concatenated records) and optionally keeps the last `limit` entries.
pub(super) struct Tracer {
    hasher: blake3::Hasher,
    buf: Vec<u8>,
    limit: usize,
    record: VecDeque<TraceEntry>,
}

const FLUSH_AT: usize = 64 * 1024;

pub(super) const TAG_DELIVERED: u8 = 1;
pub(super) const TAG_DROPPED: u8 = 2;
pub(super) const TAG_UNROUTABLE: u8 = 3;
pub(super) const TAG_TIMEOUT: u8 = 4;
pub(super) const TAG_EVENT: u8 = 5;
pub(super) const TAG_CRASH: u8 = 6;
pub(super) const TAG_RESTART: u8 = 7;
pub(super) const TAG_PARTITION: u8 = 8;
pub(super) const TAG_LINK: u8 = 9;
pub(super) const TAG_HOST: u8 = 10;
pub(super) const TAG_HEAL: u8 = 11;
pub(super) const TAG_UNENCODABLE: u8 = 12;
pub(super) const TAG_JOIN: u8 = 13;
pub(super) const TAG_LEAVE: u8 = 14;
pub(super) const TAG_OVERSIZED: u8 = 15;

impl Tracer {
    pub(super) fn new(seed: u64, nodes: usize, limit: usize) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("llmkg-federation sim trace v1");
        hasher.update(&seed.to_le_bytes());
        hasher.update(&(nodes as u64).to_le_bytes());
        Self { hasher, buf: Vec::with_capacity(FLUSH_AT + 1024), limit, record: VecDeque::new() }
    }

    /// Whether entries are being recorded (so callers can skip building them).
    #[inline]
    pub(super) fn recording(&self) -> bool {
        self.limit > 0
    }

    pub(super) fn record(&mut self, entry: TraceEntry) {
        if self.limit == 0 {
            return;
        }
        if self.record.len() == self.limit {
            self.record.pop_front();
        }
        self.record.push_back(entry);
    }

    pub(super) fn entries(&self) -> impl Iterator<Item = &TraceEntry> {
        self.record.iter()
    }

    /// Starts a record: tag, time, node.
    #[inline]
    pub(super) fn head(&mut self, tag: u8, at: Time, node: u32) {
        self.maybe_flush();
        self.buf.push(tag);
        self.buf.extend_from_slice(&at.as_micros().to_le_bytes());
        self.buf.extend_from_slice(&node.to_le_bytes());
    }

    #[inline]
    pub(super) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    #[inline]
    pub(super) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    #[inline]
    pub(super) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Length-prefixed bytes. Long ones go straight to the hasher, so the buffer never grows
    /// much beyond `FLUSH_AT` (it would otherwise keep the capacity of the longest message).
    #[inline]
    pub(super) fn bytes(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        if bytes.len() >= FLUSH_AT {
            self.hasher.update(&self.buf);
            self.buf.clear();
            self.hasher.update(bytes);
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    #[inline]
    pub(super) fn drop_reason(&mut self, reason: DropReason) {
        self.buf.push(reason.tag());
    }

    #[inline]
    fn maybe_flush(&mut self) {
        if self.buf.len() >= FLUSH_AT {
            self.hasher.update(&self.buf);
            self.buf.clear();
        }
    }

    pub(super) fn digest(&self) -> TraceHash {
        let mut h = self.hasher.clone();
        h.update(&self.buf);
        TraceHash(*h.finalize().as_bytes())
    }
}
