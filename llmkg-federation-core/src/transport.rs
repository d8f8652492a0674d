//! The host-facing network interface: [`Transport`] and the [`Timer`] a driver sleeps on.
//!
//! The federation never opens a socket by itself. The host gives it a [`Transport`] (the
//! crate `llmkg-transport` ships an in-process one, a TCP + Noise one and a deterministic
//! simulator; an integrator can write their own and run the conformance suite there) and a
//! [`Timer`]. Both are object safe: a host can hold `Arc<dyn Transport>`.
//!
//! Payloads are opaque bytes; the transport authenticates *who* sent them (the `from` of an
//! [`Incoming`] message is the peer's verified [`NodeId`]) but never interprets them.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use thiserror::Error;

use crate::{NodeId, Time};

/// A boxed, sendable future: what the object-safe async traits here return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
/// - **Authentication.** `from` on everything [`recv`](Transport::recv) returns is the
///   verified identity of the sender, never a claim taken from the payload.
/// - **Ordering.** Messages and requests from one node to another are received in the order
///   they were handed to the transport, for as long as the link between the two stays up.
///   There is no ordering between different peers. A response completes its
///   [`request`](Transport::request) as soon as it arrives, whether or not anyone is calling
///   [`recv`](Transport::recv); it is not ordered with the messages around it.
/// - **At most once.** A completed [`send`](Transport::send) means the message was accepted
///   for delivery, not that it arrived. A disconnect may lose messages that were accepted but
///   not yet received; the transport never delivers a message twice and never delivers a
///   message altered. Protocols that need reliability retransmit.
/// - **Backpressure.** Each peer has a bounded outgoing queue; `send`, `request` and
///   `respond` wait while it is full. Inbound messages wait in a bounded queue until
///   [`recv`](Transport::recv) takes them; while it is full the transport stops reading from
///   peers. No peer can make a transport use unbounded memory.
/// - **Sizes.** Payloads longer than [`max_message_len`](Transport::max_message_len) are
///   refused with [`TransportError::MessageTooLarge`] on send; a peer that sends one is
///   disconnected.
/// - **Cancellation.** Dropping a `send` future before it completes means the message may or
///   may not have been queued; dropping a `recv` future loses nothing.
/// - **Connectivity.** [`Incoming::PeerConnected`] / [`Incoming::PeerDisconnected`] report
///   links coming up and going down, in order with the messages around them.
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

    /// Queues a one-way message for `to`.
    fn send(&self, to: NodeId, payload: Vec<u8>) -> BoxFuture<'_, Result<(), TransportError>>;

    /// Sends a request to `to` and waits up to `timeout` for its response.
    fn request(
        &self,
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

    /// The next inbound message, request or connectivity change.
    fn recv(&self) -> BoxFuture<'_, Result<Incoming, TransportError>>;

    /// Shuts down: stops accepting work, lets queued messages go out (best effort, bounded
    /// by the implementation's shutdown timeout) and closes every link.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// A source of monotonic time and sleeps, for drivers and request timeouts.
pub trait Timer: Send + Sync {
    /// The current monotonic time.
    fn now(&self) -> Time;

    /// A future that completes at or after `deadline`.
    fn sleep_until(&self, deadline: Time) -> BoxFuture<'static, ()>;
}
