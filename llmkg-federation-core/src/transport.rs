//! The host-facing network interface: [`Transport`] and the [`Timer`] a driver sleeps on.
//!
//! The federation never opens a socket by itself. The host gives it a [`Transport`] (the
//! crate `llmkg-transport` ships an in-process one, a TCP + Noise one and a deterministic
//! simulator; an integrator can write their own and run the conformance suite there) and a
//! [`Timer`]. Both are object safe: a host can hold `Arc<dyn Transport>`.
//!
//! Payloads are opaque bytes; the transport authenticates *who* sent them (the `from` of an
//! [`Incoming`] message is the peer's verified [`NodeId`]) but never interprets them.
//!
//! Several protocols share one transport, each on its own [`ChannelId`]: consensus, sync and
//! governance talk to the same peers over the same links without one busy protocol holding
//! up another (see the contract on [`Transport`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use thiserror::Error;

use crate::{NodeId, Time};

/// A boxed, sendable future: what the object-safe async traits here return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A protocol's lane on a transport: each channel has its own queues, and what is sent on a
/// channel is received only by [`Transport::recv_on`] of the same channel.
///
/// There are [`ChannelId::COUNT`] channels, numbered from zero; [`ChannelId::DEFAULT`] is the
/// one [`Transport::send`], [`Transport::request`] and [`Transport::recv`] use.
///
/// ```
/// use llmkg_federation_core::ChannelId;
///
/// let sync = ChannelId::new(2).expect("a channel below ChannelId::COUNT");
/// assert_eq!(sync.index(), 2);
/// assert!(ChannelId::new(ChannelId::COUNT as u8).is_none());
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub struct ChannelId(u8);

impl ChannelId {
    /// How many channels a transport carries.
    pub const COUNT: usize = 16;
    /// Channel zero: what the channel-less methods of [`Transport`] use.
    pub const DEFAULT: ChannelId = ChannelId(0);

    /// Channel `n`, if `n` is below [`COUNT`](Self::COUNT).
    pub const fn new(n: u8) -> Option<Self> {
        if (n as usize) < Self::COUNT { Some(Self(n)) } else { None }
    }

    /// The channel's number, below [`COUNT`](Self::COUNT).
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// Every channel, in order.
    pub fn all() -> impl Iterator<Item = ChannelId> {
        (0..Self::COUNT as u8).map(ChannelId)
    }
}

impl TryFrom<u8> for ChannelId {
    type Error = InvalidChannel;
    fn try_from(n: u8) -> Result<Self, InvalidChannel> {
        Self::new(n).ok_or(InvalidChannel(n))
    }
}

impl From<ChannelId> for u8 {
    fn from(c: ChannelId) -> u8 {
        c.0
    }
}

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "channel {}", self.0)
    }
}

/// A channel number at or above [`ChannelId::COUNT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("channel {0} does not exist (there are {count})", count = ChannelId::COUNT)]
pub struct InvalidChannel(pub u8);

/// Correlates a request with its response. Chosen by the requesting transport; unique among
/// that transport's outstanding requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Something that arrived from the network, in the order it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incoming {
    /// A one-way message.
    Message {
        /// The authenticated sender.
        from: NodeId,
        /// The bytes it sent.
        payload: Vec<u8>,
    },
    /// A request; answer it with [`Transport::respond`] (or not: the requester times out).
    Request {
        /// The authenticated sender.
        from: NodeId,
        /// Pass this back to [`Transport::respond`].
        id: RequestId,
        /// The bytes it sent.
        payload: Vec<u8>,
    },
    /// A link to `peer` came up: messages can flow both ways.
    PeerConnected {
        /// The peer.
        peer: NodeId,
    },
    /// The link to `peer` went down. Messages to or from it that were in flight may be lost;
    /// requests waiting on it fail with [`TransportError::Disconnected`]. A transport that
    /// reconnects reports [`Incoming::PeerConnected`] again when the link is back.
    PeerDisconnected {
        /// The peer.
        peer: NodeId,
    },
}

/// Why a transport operation failed. Each variant says whether anything was sent.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The transport does not know how to reach this peer (no address, not a member, not
    /// trusted). Nothing was sent.
    #[error("no route to peer {0}")]
    UnknownPeer(NodeId),
    /// The payload exceeds the transport's maximum message size. Nothing was sent.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge {
        /// The payload's size.
        len: usize,
        /// [`Transport::max_message_len`].
        max: usize,
    },
    /// No response arrived in time. The request may or may not have been delivered and
    /// processed; a late response is discarded.
    #[error("request to {peer} timed out after {after:?}")]
    Timeout {
        /// The peer that did not answer.
        peer: NodeId,
        /// The timeout that expired.
        after: Duration,
    },
    /// The link to the peer went down while the operation was waiting; the message may or
    /// may not have been delivered.
    #[error("peer {0} disconnected")]
    Disconnected(NodeId),
    /// This transport has been closed. Nothing was sent.
    #[error("transport closed")]
    Closed,
    /// A failure specific to the implementation (I/O, configuration).
    #[error("transport failure: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A node's connection to the federation's network.
///
/// # Contract
///
/// Implementations must provide, and callers may rely on, exactly this:
///
/// - **Authentication.** `from` on everything [`recv_on`](Transport::recv_on) returns is the
///   verified identity of the sender, never a claim taken from the payload.
/// - **Channels.** Every message and request travels on a [`ChannelId`] and is received only
///   by `recv_on` of that channel. Channels are independent: each has its own bounded queues
///   in both directions, so a channel whose receiver is slow or whose sender floods holds up
///   only itself — what waits on one channel never delays another channel beyond the
///   transmission of what is already on the wire. A host that does not use a channel need
///   not read it.
/// - **Ordering.** Messages and requests from one node to another on one channel are
///   received in the order they were handed to the transport, for as long as the link
///   between the two stays up. There is no ordering between different peers or different
///   channels. A response completes its [`request_on`](Transport::request_on) as soon as it
///   arrives, whether or not anyone is calling `recv_on`; it is not ordered with the messages
///   around it.
/// - **At most once.** A completed [`send_on`](Transport::send_on) means the message was
///   accepted for delivery, not that it arrived. A disconnect may lose messages that were
///   accepted but not yet received; the transport never delivers a message twice and never
///   delivers a message altered. Protocols that need reliability retransmit.
/// - **Backpressure.** Each peer has a bounded outgoing queue per channel; `send_on`,
///   `request_on` and [`respond`](Transport::respond) wait while it is full (a transport may
///   give responses one queue per peer of their own, not flow-controlled per channel: they
///   only answer requests the peer is waiting on). Inbound messages
///   wait in a bounded queue per channel until `recv_on` takes them; while a channel's queue
///   is full its senders wait (over a network: are not given credit to send more on that
///   channel). No peer can make a transport use unbounded memory.
/// - **Sizes.** Payloads up to [`max_message_len`](Transport::max_message_len) are carried
///   whole, however the transport frames them underneath (a network transport splits a long
///   payload into frames and reassembles it). Longer payloads are refused with
///   [`TransportError::MessageTooLarge`] on send; a peer that sends one is disconnected.
/// - **Connectivity.** Each channel reports, in order with its messages, a
///   [`Incoming::PeerConnected`] before the first message of a link and a
///   [`Incoming::PeerDisconnected`] after its last one. Connectivity is state, not a queue:
///   a channel that is not read for a while then reports each peer's latest link (up, and
///   down if it has gone down since), skipping links that came and went in between, so
///   connectivity never fills a queue however often a peer reconnects.
/// - **Membership.** Peers can be added and removed while the transport runs (how is the
///   implementation's: joining and leaving an in-process network, TCP `add_peer` /
///   `remove_peer`). Removing a peer closes its link: the channels report it
///   disconnected and requests waiting on it fail with [`TransportError::Disconnected`].
/// - **Sending to oneself.** A node may send, request and respond to its own
///   [`local_id`](Transport::local_id): the message is received by its own `recv_on` of the
///   channel it was sent on, `from` being its own id, with the same ordering and size rules.
///   No connectivity is ever reported for oneself.
/// - **Cancellation.** Dropping a `send_on` future before it completes means the message may
///   or may not have been queued; dropping a `recv_on` future loses nothing.
/// - **Shutdown.** After [`close`](Transport::close) completes, every operation returns
///   [`TransportError::Closed`] and peers observe a disconnect.
///
/// Implementations are checked against this contract by the conformance suite in
/// `llmkg_transport::testing`.
pub trait Transport: Send + Sync {
    /// This node's identity.
    fn local_id(&self) -> NodeId;

    /// The largest payload this transport carries.
    fn max_message_len(&self) -> usize;

    /// Queues a one-way message for `to` on `channel`.
    fn send_on(
        &self,
        channel: ChannelId,
        to: NodeId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), TransportError>>;

    /// Sends a request to `to` on `channel` and waits up to `timeout` for its response.
    fn request_on(
        &self,
        channel: ChannelId,
        to: NodeId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<u8>, TransportError>>;

    /// Answers request `id` received from `to`. A response to a request the peer has
    /// stopped waiting for is discarded by the peer.
    fn respond(
        &self,
        to: NodeId,
        id: RequestId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), TransportError>>;

    /// The next inbound message, request or connectivity change on `channel`.
    fn recv_on(&self, channel: ChannelId) -> BoxFuture<'_, Result<Incoming, TransportError>>;

    /// Shuts down: stops accepting work, lets queued messages go out (best effort, bounded
    /// by the implementation's shutdown timeout) and closes every link.
    fn close(&self) -> BoxFuture<'_, ()>;

    /// [`send_on`](Transport::send_on) the [default channel](ChannelId::DEFAULT).
    fn send(&self, to: NodeId, payload: Vec<u8>) -> BoxFuture<'_, Result<(), TransportError>> {
        self.send_on(ChannelId::DEFAULT, to, payload)
    }

    /// [`request_on`](Transport::request_on) the [default channel](ChannelId::DEFAULT).
    fn request(
        &self,
        to: NodeId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<u8>, TransportError>> {
        self.request_on(ChannelId::DEFAULT, to, payload, timeout)
    }

    /// [`recv_on`](Transport::recv_on) the [default channel](ChannelId::DEFAULT).
    fn recv(&self) -> BoxFuture<'_, Result<Incoming, TransportError>> {
        self.recv_on(ChannelId::DEFAULT)
    }
}

/// A source of monotonic time and sleeps, for drivers and request timeouts.
pub trait Timer: Send + Sync {
    /// The current monotonic time.
    fn now(&self) -> Time;

    /// A future that completes at or after `deadline`.
    fn sleep_until(&self, deadline: Time) -> BoxFuture<'static, ()>;
}
