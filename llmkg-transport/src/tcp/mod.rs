//! The TCP + Noise transport: encrypted, mutually authenticated links between nodes,
//! identified by their ed25519 [`NodeId`](llmkg_federation_core::NodeId)s.
//!
//! ```text
//!  send_on/request_on/respond ─► per-peer lane per channel ─► writer (round-robin, credit)
//!                                                             ─► Noise chunks ─► TCP
//!  recv_on ◄─ inbox (queue per channel) ◄─ reader (reassembly) ◄─ frame decoder ◄─ TCP
//! ```
//!
//! **Connection setup** ([`handshake`](Hello)): both sides send a cleartext [`Hello`]
//! (magic, [`PROTOCOL_VERSION`], [`FederationId`]) and refuse a peer of another version or
//! federation; the dialer speaks first, and the listening side answers only once the
//! dialer's hello has arrived within [`TcpConfig::hello_timeout`] (so a port scanner hears
//! nothing, and a dialer naming another federation is answered with an all-zero federation
//! rather than the node's). Both hellos become the Noise prologue, so tampering with them
//! breaks the handshake. Then a Noise XX handshake ([`NOISE_PARAMS`]) with a fresh static key per
//! transport; each side's [`HandshakePayload`] carries its node id and a signature over its
//! Noise static key, binding the key to the identity. A side accepts the other only if the
//! signature verifies over the key Noise authenticated, the identity is not its own and,
//! when dialing, is the node that was dialed, and the identity is trusted (added with
//! [`TcpTransport::add_peer`] or admitted by [`Trust`]; with [`Trust::Certificates`] a peer
//! is admitted by the node certificate it sends after its payload, inside the encrypted
//! handshake, if that certificate verifies against the pinned organization roots and names
//! the authenticated node, see [`CERTIFICATE_EXTENSION`]). The responder, once it has also
//! found room for the peer in its table, accepts with an empty first encrypted chunk; the
//! dialer reports the link up only after that, so a refused dialer sees its dial fail
//! (and backs off) rather than a link that comes up and drops. Every refusal has a typed
//! [`HandshakeError`] on the refusing side. Strangers cannot block the listener: unfinished
//! handshakes are bounded per address group ([`TcpConfig::max_pending_per_address`]) and
//! overall ([`TcpConfig::max_pending_handshakes`]), and at either bound the least advanced,
//! oldest handshake of the fullest group is shed ([`HandshakeError::Shed`]) so that the new
//! connection is accepted; the listener never stops accepting because of them.
//!
//! **Data**: [`Frame`]s (message, request, response, credit, goodbye, keepalive), each on a
//! channel, form a byte stream, encrypted in Noise messages of at most 65535 bytes, each
//! sent as `[u16 BE length][ciphertext]`. The receiver checks each declared frame length
//! against [`MAX_FRAME_LEN`] before buffering anything; a payload longer than a frame
//! travels in parts and is reassembled, up to [`TcpConfig::max_message_len`]. A malformed
//! stream, or a peer that breaks the flow control below, closes only that connection; the
//! failure is published on [`TcpTransport::connection_failures`] and the peer is reported
//! disconnected.
//!
//! **Channels and flow control**: each peer has an outgoing lane per channel (and one for
//! responses); a connection's writer takes one frame from each lane that may send in turn,
//! so a message on a quiet channel waits for at most one frame of each busy lane. The
//! receiving side never waits for the host: it gives each peer *credit* per channel, in
//! bytes ([`TcpConfig::inbound_window`]), computed from what the peer has waiting there, and
//! more as the host takes it; a peer that sends where what it has waiting fills its window is
//! cut off, so it can have at most the window plus one message waiting. A channel the
//! host does not read therefore stops only its own senders (see `docs/decisions.md`, D40).
//!
//! **Links**: one live connection per peer. The node dials every added peer and redials it
//! with capped, jittered exponential backoff; if both ends dial each other at once, both
//! keep the connection initiated by the smaller node id, while a connection the peer makes
//! well after the live one was set up replaces it (the peer evidently lost the old one). A
//! replaced connection stops delivering before the new one starts, and its writer stops
//! before the new writer takes over the queue: nothing is duplicated or reordered across
//! the switch, and what was in flight may be lost (a `PeerDisconnected` is reported). Each
//! peer's outgoing queues are bounded and outlive connections: messages queued while the
//! peer is away go out when it is back. Peers are added ([`TcpTransport::add_peer`]) and
//! removed ([`TcpTransport::remove_peer`]) while the transport runs; the end of a removed
//! peer's old connection never takes down a newer one.
//!
//! **Shutdown**: [`close`](llmkg_federation_core::Transport::close) returns within the
//! flush timeout (plus a moment) whatever the peers do; dropping the transport stops
//! everything at once. Either way every task ends, except that a closed socket may linger
//! for up to the flush timeout to read the peer's close (so the peer gets the goodbye
//! rather than a reset).
//!
//! **Liveness**: a connection's writer that has sent nothing for
//! [`TcpConfig::keepalive_interval`] sends a [`Frame::KeepAlive`] (never delivered, never
//! queued); a reader that has received nothing for [`TcpConfig::idle_timeout`] closes the
//! connection with [`TcpError::IdleTimeout`]. So a peer that vanished without closing its
//! socket (power loss, cut network) is reported disconnected within the idle timeout, and a
//! peer this node dials is then redialed.
//!
//! It deliberately does not: resolve names, traverse NATs, or rekey long-lived sessions.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use llmkg_federation_core::{Incoming, NodeKeypair, Transport};
//! use llmkg_transport::tcp::{FederationId, TcpConfig, TcpTransport};
//!
//! let federation = FederationId::from_name("acme-research");
//! let a_key = NodeKeypair::from_secret_bytes([1; 32]);
//! let b_key = NodeKeypair::from_secret_bytes([2; 32]);
//! let (a_id, b_id) = (a_key.node_id(), b_key.node_id());
//! let a = TcpTransport::bind(TcpConfig::new(a_key, federation)).await?;
//! let b = TcpTransport::bind(TcpConfig::new(b_key, federation)).await?;
//! a.add_peer(b_id, b.local_addr())?; // a dials b
//! b.add_peer(a_id, a.local_addr())?; // and b trusts a
//! a.send(b_id, b"hello".to_vec()).await?;
//! loop {
//!     if let Incoming::Message { from, payload } = b.recv().await? {
//!         assert_eq!((from, payload), (a_id, b"hello".to_vec()));
//!         break;
//!     }
//! }
//! a.close().await;
//! # Ok(()) }
//! ```

mod config;
mod conn;
mod error;
mod frame;
mod handshake;
mod outbox;
mod peer;
mod transport;

pub use config::{TcpConfig, Trust};
pub use error::{ConnectionFailure, TcpError};
pub use frame::{
    Frame, FrameDecoder, FrameError, INITIAL_PAYLOAD_CAPACITY, MAX_FRAME_HEADER_LEN,
    MIN_FRAME_HEADER_LEN,
};
pub use handshake::{
    CERTIFICATE_EXTENSION, FederationId, HANDSHAKE_PAYLOAD_LEN, HELLO_LEN, HandshakeError,
    HandshakePayload, Hello, IDENTITY_BINDING_CONTEXT, MAGIC, MAX_HANDSHAKE_CERTIFICATE_LEN,
    MAX_HANDSHAKE_MESSAGE_LEN, NOISE_PARAMS, PROTOCOL_VERSION,
};
pub use outbox::MAX_FRAME_LEN;
pub use transport::{TcpStats, TcpTransport};

/// Largest Noise transport message (one encrypted chunk on the wire, without its 2-byte
/// length prefix).
pub const MAX_CHUNK_LEN: usize = conn::MAX_CHUNK_LEN;
/// Largest plaintext carried by one chunk (the chunk minus the 16-byte AEAD tag).
pub const MAX_CHUNK_PLAINTEXT: usize = conn::MAX_CHUNK_PLAINTEXT;
