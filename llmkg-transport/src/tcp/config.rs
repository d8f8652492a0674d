//! Configuration of the TCP transport.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::Clock as _;
use llmkg_federation_core::{NodeCertificate, NodeId, NodeKeypair, SystemClock, TrustAnchors};

use super::handshake::MAX_HANDSHAKE_CERTIFICATE_LEN;
use super::{FederationId, HandshakeError, TcpError};

/// Which authenticated identities may connect.
///
/// Nodes registered with [`TcpTransport::add_peer`](super::TcpTransport::add_peer) are always
/// trusted; the policy decides about everyone else. The check runs after the peer has proved
/// its identity and before anything is delivered from it.
#[derive(Clone)]
#[non_exhaustive]
pub enum Trust {
    /// Only the listed nodes (and those added with `add_peer`). The default, with an empty
    /// list: only nodes this host explicitly added.
    AllowList(HashSet<NodeId>),
    /// The host decides, per identity. Called during handshakes: keep it fast.
    Callback(Arc<dyn Fn(&NodeId) -> bool + Send + Sync>),
    /// Any node that proves an identity (a higher layer checks membership). The peer table
    /// is still bounded by [`TcpConfig::max_peers`].
    AnyAuthenticated,
    /// A node whose handshake carries a certificate that verifies against these anchors at
    /// the current (system) time and names the node's authenticated id. Refusals:
    /// [`HandshakeError::MissingCertificate`], [`HandshakeError::CertificateRefused`].
    Certificates(Arc<TrustAnchors>),
}

impl Trust {
    /// A policy calling `f`.
    pub fn callback(f: impl Fn(&NodeId) -> bool + Send + Sync + 'static) -> Self {
        Self::Callback(Arc::new(f))
    }

    /// Whether the policy admits `node` on its identity alone (never, for
    /// [`Trust::Certificates`]).
    pub fn admits(&self, node: &NodeId) -> bool {
        match self {
            Trust::AllowList(list) => list.contains(node),
            Trust::Callback(f) => f(node),
            Trust::AnyAuthenticated => true,
            Trust::Certificates(_) => false,
        }
    }

    /// Whether the policy admits `node`, which sent the encoded `certificate` (if any) in its
    /// handshake.
    pub(crate) fn check(
        &self,
        node: &NodeId,
        certificate: Option<&[u8]>,
    ) -> Result<(), HandshakeError> {
        let Trust::Certificates(anchors) = self else {
            return if self.admits(node) {
                Ok(())
            } else {
                Err(HandshakeError::UntrustedPeer(*node))
            };
        };
        let Some(bytes) = certificate else {
            return Err(HandshakeError::MissingCertificate(*node));
        };
        let refused = |error| HandshakeError::CertificateRefused { peer: *node, error };
        let cert = NodeCertificate::decode(bytes).map_err(refused)?;
        cert.verify_for(anchors, SystemClock.now(), node).map_err(refused)
    }
}

impl Default for Trust {
    fn default() -> Self {
        Self::AllowList(HashSet::new())
    }
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::AllowList(list) => f.debug_tuple("AllowList").field(list).finish(),
            Trust::Callback(_) => f.write_str("Callback(..)"),
            Trust::AnyAuthenticated => f.write_str("AnyAuthenticated"),
            Trust::Certificates(a) => f.debug_tuple("Certificates").field(a).finish(),
        }
    }
}

/// Settings of a [`TcpTransport`](super::TcpTransport). Create with [`TcpConfig::new`] and
/// adjust the public fields.
///
/// ```
/// use llmkg_federation_core::NodeKeypair;
/// use llmkg_transport::tcp::{FederationId, TcpConfig, Trust};
/// let mut config =
///     TcpConfig::new(NodeKeypair::from_secret_bytes([1; 32]), FederationId::from_name("demo"));
/// config.max_message_len = 1 << 20;
/// config.trust = Trust::AnyAuthenticated;
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct TcpConfig {
    /// This node's identity.
    pub keypair: NodeKeypair,
    /// The federation; peers of another federation are refused.
    pub federation: FederationId,
    /// Where to listen. Default `127.0.0.1:0` (loopback, any free port).
    pub listen_addr: SocketAddr,
    /// Largest payload carried ([`Transport::max_message_len`](llmkg_federation_core::Transport::max_message_len)),
    /// sent and received. A payload longer than one frame ([`MAX_FRAME_LEN`](super::MAX_FRAME_LEN))
    /// travels in parts and is reassembled; a peer that sends a longer one is disconnected.
    /// Default 64 MiB.
    pub max_message_len: usize,
    /// Capacity, in messages, of each peer's outgoing queue on each channel (responses have
    /// a queue of their own). Default 1024. Queues take memory only for what they hold.
    pub outgoing_queue: usize,
    /// How many bytes of messages and requests one peer may have waiting on one channel of
    /// this node (received, not yet taken by `recv_on`; each counts its payload plus 64
    /// bytes): the peer is given this much credit per channel, and more as its messages are
    /// taken, so a channel that is not read stops only its own senders. A peer may start one
    /// message while it has any credit left, so what it can have waiting on a channel is at
    /// most this plus one message. Default 4 MiB; at least 1.
    pub inbound_window: u32,
    /// Time allowed to connect, and separately to complete the hello and Noise handshake
    /// (and, for the responder, the acceptance). Default 5 s. Three times this is how far
    /// apart two connections made by the two ends may be set up and still be treated as
    /// simultaneous dials; a connection the peer makes later replaces the live one.
    pub handshake_timeout: Duration,
    /// First redial delay after a failure or disconnect; doubles up to `backoff_max`. Each
    /// delay is jittered to between half and all of its value. Default 50 ms.
    pub backoff_initial: Duration,
    /// Largest redial delay. Default 5 s.
    pub backoff_max: Duration,
    /// How long `close` lets queued messages drain before cutting links. Default 2 s.
    pub flush_timeout: Duration,
    /// When a connection's writer has sent nothing for this long, it sends a keepalive frame
    /// (6 bytes of plaintext, one small encrypted chunk), so that the peer's
    /// [`idle_timeout`](Self::idle_timeout) does not fire on a healthy but quiet link.
    /// Keepalives are never delivered by `recv`, never wait in the outgoing queue, and are
    /// not counted in [`TcpStats::frames_out`](super::TcpStats::frames_out) /
    /// `frames_in` (their bytes are counted in `bytes_out` / `bytes_in`). Default 10 s;
    /// must be positive.
    pub keepalive_interval: Duration,
    /// When a connection's reader has received no encrypted chunk at all (application frame
    /// or keepalive) for this long while waiting on the socket, the connection is closed
    /// with [`TcpError::IdleTimeout`], published on
    /// [`connection_failures`](super::TcpTransport::connection_failures): the peer is
    /// reported disconnected, requests waiting on it fail with `Disconnected`, and a peer
    /// this node dials is redialed with the usual backoff. This is how a peer that vanished
    /// without closing its socket (power loss, cut network) is noticed. Default 30 s; must be
    /// greater than `keepalive_interval` (both ends should use compatible settings: a peer
    /// whose keepalive interval is not below this node's idle timeout will be cut off
    /// whenever its link is quiet).
    pub idle_timeout: Duration,
    /// Who may connect besides added peers. Default: nobody else.
    pub trust: Trust,
    /// This node's certificate, sent to peers inside the encrypted handshake (after Noise
    /// has authenticated the identity), for peers that trust by [`Trust::Certificates`].
    /// Default: none (the handshake payload is then exactly the original format).
    pub certificate: Option<NodeCertificate>,
    /// Bound on the peer table as seen by inbound connections: a trusted node that was not
    /// added and connects while the table holds this many peers is refused with
    /// [`HandshakeError::TooManyPeers`](super::HandshakeError::TooManyPeers). (`add_peer`
    /// itself is never refused: the host decides how many peers it adds.) Default 1024.
    /// Each peer costs a task and its outgoing queue, so with [`Trust::AnyAuthenticated`]
    /// this bounds what strangers can make the node allocate.
    pub max_peers: usize,
    /// Bound on inbound connections not yet adopted at once: in handshake, authenticated and
    /// waiting for their peer's task, or being dismissed after losing a tie-break. The
    /// listener never stops accepting because of strangers: when the bound is reached, a new
    /// connection takes the place of an unfinished handshake, which is shed (closed, with
    /// [`HandshakeError::Shed`]): from the address groups (see
    /// [`max_pending_per_address`](Self::max_pending_per_address)) holding the most
    /// pending handshakes, the least advanced (no hello yet, then no first Noise message,
    /// then no identity), then the oldest. Only when every slot is held by an authenticated
    /// connection does the listener wait for one to be done. It also bounds how many closed
    /// sockets linger to read their peer's close. Default 64.
    pub max_pending_handshakes: usize,
    /// Bound on the unfinished inbound handshakes from one address group: one IPv4 address
    /// (IPv4-mapped IPv6 addresses count as IPv4), or one IPv6 /64 prefix (what one host or
    /// subscriber can usually choose addresses from). A new connection from a group at the
    /// bound sheds that group's least advanced, then oldest, handshake. Loopback is not
    /// special: each `127.x.y.z` is its own group. So a flood from a few addresses stays
    /// among those addresses, and peers elsewhere are not shed by it. Default 8; must be
    /// positive.
    pub max_pending_per_address: usize,
    /// Time allowed for a connecting peer's hello (its first 42 bytes) to arrive, counted
    /// from the accept; within [`handshake_timeout`](Self::handshake_timeout), which bounds
    /// the whole handshake. A legitimate dialer sends its hello as soon as it is connected,
    /// so this only needs to cover a round trip and a retransmission or two; a peer that
    /// sends nothing, or dribbles its hello, is closed with [`HandshakeError::Timeout`]. The
    /// node sends nothing before it has the peer's hello. Default 2 s; must be positive.
    pub hello_timeout: Duration,
}

impl TcpConfig {
    /// Defaults for `keypair` in `federation`.
    pub fn new(keypair: NodeKeypair, federation: FederationId) -> Self {
        Self {
            keypair,
            federation,
            listen_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            max_message_len: 64 << 20,
            outgoing_queue: 1024,
            inbound_window: 4 << 20,
            handshake_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            flush_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            trust: Trust::default(),
            certificate: None,
            max_peers: 1024,
            max_pending_handshakes: 64,
            max_pending_per_address: 8,
            hello_timeout: Duration::from_secs(2),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), TcpError> {
        if self.max_message_len == 0 {
            return Err(TcpError::InvalidConfig("max_message_len must be at least 1"));
        }
        if self.outgoing_queue == 0 || self.inbound_window == 0 {
            return Err(TcpError::InvalidConfig("queue capacities must be at least 1"));
        }
        if self.max_peers == 0 || self.max_pending_handshakes == 0 {
            return Err(TcpError::InvalidConfig(
                "max_peers and max_pending_handshakes must be >= 1",
            ));
        }
        if self.max_pending_per_address == 0 {
            return Err(TcpError::InvalidConfig("max_pending_per_address must be >= 1"));
        }
        if self.hello_timeout.is_zero() {
            return Err(TcpError::InvalidConfig("hello_timeout must be positive"));
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return Err(TcpError::InvalidConfig("need 0 < backoff_initial <= backoff_max"));
        }
        if self.handshake_timeout.is_zero() {
            return Err(TcpError::InvalidConfig("handshake_timeout must be positive"));
        }
        if let Some(cert) = &self.certificate {
            if cert.node() != self.keypair.node_id() {
                return Err(TcpError::InvalidConfig("the certificate is for another node"));
            }
            if cert.encode().len() > MAX_HANDSHAKE_CERTIFICATE_LEN {
                return Err(TcpError::InvalidConfig("the certificate is too long"));
            }
        }
        if self.keepalive_interval.is_zero() || self.idle_timeout <= self.keepalive_interval {
            return Err(TcpError::InvalidConfig("need 0 < keepalive_interval < idle_timeout"));
        }
        Ok(())
    }
}
