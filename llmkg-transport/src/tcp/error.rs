//! Errors of the TCP transport.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::{NodeId, TransportError};
use thiserror::Error;

use super::{FrameError, HandshakeError};

/// Why a TCP transport operation or connection failed.
///
/// Connection-level variants ([`Handshake`](TcpError::Handshake), [`Frame`](TcpError::Frame),
/// [`Decrypt`](TcpError::Decrypt), [`ConnectionLost`](TcpError::ConnectionLost),
/// [`IdleTimeout`](TcpError::IdleTimeout), [`Noise`](TcpError::Noise), [`Io`](TcpError::Io))
/// close only the affected connection and are reported through
/// [`TcpTransport::connection_failures`](super::TcpTransport::connection_failures); the
/// transport keeps serving every other peer (and redials an added peer). Frames already
/// delivered from that connection stay delivered; frames in flight on it are lost.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum TcpError {
    /// A socket operation failed (bind, connect refused, reset, ...). From `bind`: nothing
    /// was started.
    #[error("I/O error: {0}")]
    Io(#[source] Arc<io::Error>),
    /// The connection setup failed or was refused; no frame was exchanged, and the peer was
    /// not reported connected.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The peer sent bytes that are not well-formed frames.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer broke the frame protocol: it sent more messages on a channel than it had
    /// credit for, a payload longer than the maximum message length, or parts of a long
    /// payload out of turn. The connection was closed.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// An encrypted chunk did not decrypt (tampered, garbage or out of order).
    #[error("decryption failed")]
    Decrypt,
    /// The peer closed the connection at a frame boundary without saying goodbye (it
    /// crashed or was killed).
    #[error("connection closed by the peer without a goodbye")]
    ConnectionLost,
    /// Nothing at all (not even a keepalive) arrived on the connection for
    /// [`TcpConfig::idle_timeout`](super::TcpConfig::idle_timeout): the peer vanished
    /// without closing its socket, or the network path is broken. The connection was closed.
    #[error("nothing received from the peer for {after:?}")]
    IdleTimeout {
        /// The idle timeout in force.
        after: Duration,
    },
    /// The Noise session failed outside the handshake (for example: nonce exhaustion, which
    /// ends the connection rather than reuse a nonce).
    #[error("noise session failed: {0}")]
    Noise(String),
    /// The configuration is unusable; nothing was started.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// A node cannot be its own peer; nothing changed.
    #[error("a node cannot add itself as a peer")]
    SelfPeer,
    /// The transport has been closed; nothing changed.
    #[error("transport closed")]
    Closed,
}

impl TcpError {
    pub(crate) fn io(e: io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}

impl From<io::Error> for TcpError {
    fn from(e: io::Error) -> Self {
        Self::io(e)
    }
}

impl From<TcpError> for TransportError {
    fn from(e: TcpError) -> Self {
        match e {
            TcpError::Closed => TransportError::Closed,
            other => TransportError::Other(Box::new(other)),
        }
    }
}

/// A connection or connection attempt that ended with an error, as published by
/// [`TcpTransport::connection_failures`](super::TcpTransport::connection_failures).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionFailure {
    /// The remote socket address.
    pub peer_addr: SocketAddr,
    /// The peer's identity, if known (dialed, authenticated, or named by the error).
    pub peer: Option<NodeId>,
    /// Why the connection failed or was refused.
    pub error: TcpError,
}
