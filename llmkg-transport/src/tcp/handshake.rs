//! Connection setup: the cleartext hello, then a Noise XX handshake whose payloads bind each
//! side's Noise static key to its node identity.
//!
//! ```text
//! initiator                                   responder
//!   Hello(magic, version, federation)  ──►
//!                                      ◄──  Hello(magic, version, federation)
//!       both check version and federation; prologue = initiator hello ‖ responder hello
//!   XX msg 1: e                        ──►
//!                                      ◄──  XX msg 2: e, ee, s, es + HandshakePayload
//!   XX msg 3: s, se + HandshakePayload ──►
//!                                      ◄──  acceptance: an empty encrypted chunk
//! ```
//!
//! The responder says nothing until the initiator's hello has arrived (within
//! [`TcpConfig::hello_timeout`](super::TcpConfig::hello_timeout)): to bytes that are not a
//! hello it never answers, and to a hello naming another federation it answers with a hello
//! naming the all-zero federation, so the dialer sees the mismatch without learning the
//! node's federation. Only a dialer that named the node's federation gets its real hello
//! and, after XX message 1, the node's Diffie-Hellman work.
//!
//! Handshake messages are framed as `[u16 BE length][bytes]`. A [`HandshakePayload`] is the
//! sender's [`NodeId`] and its signature, under [`IDENTITY_BINDING_CONTEXT`], over the Noise
//! static public key the handshake authenticates. Each side checks the signature against the
//! key Noise actually authenticated, then that the peer is not itself, then (when dialing)
//! that the peer is the node it meant to reach, then its trust policy. The responder, having
//! also found room for the peer in its peer table, sends the acceptance (the first chunk of
//! its encrypted stream, with nothing in it); the initiator reports the link up only once it
//! has it, so a node that refuses a dialer never shows up as connected there.
//!
//! The listener keeps unfinished inbound handshakes in an admission table (per address
//! group, with how far each has got) and sheds from it rather than stop accepting; see
//! [`TcpConfig::max_pending_handshakes`](super::TcpConfig::max_pending_handshakes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use llmkg_federation_core::{CertificateError, NodeId, NodeKeypair, SigningInput};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::TcpError;
use super::conn::Session;

/// The first bytes of every connection.
pub const MAGIC: [u8; 8] = *b"LLMKGFED";

/// The wire protocol version this implementation speaks. Version 2 (channels, credit and
/// payloads in parts in the frame format) cannot talk to version 1, and the hello says so.
pub const PROTOCOL_VERSION: u16 = 2;

/// Length of an encoded [`Hello`]: magic, version, federation id.
pub const HELLO_LEN: usize = 8 + 2 + 32;

/// The Noise protocol used after the hello.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

/// Signature context binding a Noise static key to a node identity (reserved: signed through
/// [`SigningInput::transport_binding`](llmkg_federation_core::SigningInput::transport_binding)).
pub const IDENTITY_BINDING_CONTEXT: &str = llmkg_federation_core::TRANSPORT_BINDING_CONTEXT;

/// Length of an encoded [`HandshakePayload`]: node id and signature. A payload may be
/// followed by an extension: [`CERTIFICATE_EXTENSION`] and an encoded
/// [`NodeCertificate`](llmkg_federation_core::NodeCertificate) (sent only by nodes configured
/// with one, so nodes without a certificate speak exactly the original format).
pub const HANDSHAKE_PAYLOAD_LEN: usize = 32 + 64;

/// Tag of the certificate extension after the handshake payload.
pub const CERTIFICATE_EXTENSION: u8 = 1;

/// Longest certificate the handshake carries (it must fit in one Noise handshake message).
pub const MAX_HANDSHAKE_CERTIFICATE_LEN: usize = 768;

/// The longest handshake message accepted (the XX messages of this protocol are at most 192
/// bytes).
pub const MAX_HANDSHAKE_MESSAGE_LEN: usize = 1024;

/// Names a federation; both ends of a connection must agree on it. Defined in
/// `llmkg-federation-core` (signed envelopes are bound to it too) and re-exported here.
///
/// ```
/// use llmkg_transport::tcp::FederationId;
/// assert_eq!(FederationId::from_name("acme"), FederationId::from_name("acme"));
/// assert_ne!(FederationId::from_name("acme"), FederationId::from_name("other"));
/// ```
pub use llmkg_federation_core::FederationId;

/// A connection could not be set up. Nothing was delivered; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer does not speak this protocol (the first bytes are not [`MAGIC`]).
    #[error("not an LLMKG federation connection (bad magic)")]
    BadMagic,
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// [`PROTOCOL_VERSION`].
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The peer belongs to another federation.
    #[error("federation mismatch: ours {ours}, theirs {theirs}")]
    FederationMismatch {
        /// This node's federation.
        ours: FederationId,
        /// The peer's federation.
        theirs: FederationId,
    },
    /// A hello or handshake payload had the wrong shape.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
    /// A handshake message was longer than [`MAX_HANDSHAKE_MESSAGE_LEN`].
    #[error("handshake message of {len} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge {
        /// The declared length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The Noise handshake failed (for example: a tampered hello or message).
    #[error("noise handshake failed: {0}")]
    Noise(String),
    /// The peer's signature does not bind the Noise static key it used to the identity it
    /// claims.
    #[error("peer {claimed} did not sign the noise static key it used")]
    BadIdentityBinding {
        /// The identity the peer claimed.
        claimed: NodeId,
    },
    /// Trust is by certificate and the peer sent none.
    #[error("peer {0} presented no certificate")]
    MissingCertificate(NodeId),
    /// The peer's certificate does not verify against the anchors now, or does not name the
    /// authenticated peer.
    #[error("certificate of peer {peer} refused: {error}")]
    CertificateRefused {
        /// The authenticated peer.
        peer: NodeId,
        /// Why its certificate was refused.
        error: CertificateError,
    },
    /// The peer proved its identity, but this node does not trust it.
    #[error("peer {0} is not trusted")]
    UntrustedPeer(NodeId),
    /// Dialing `expected`, this node reached another node.
    #[error("expected peer {expected}, reached {actual}")]
    UnexpectedPeer {
        /// The node that was dialed.
        expected: NodeId,
        /// The node that answered.
        actual: NodeId,
    },
    /// The peer is this node itself.
    #[error("connected to itself")]
    SelfConnection,
    /// The peer is new and the peer table is full.
    #[error("too many peers")]
    TooManyPeers,
    /// The handshake did not finish in time.
    #[error("handshake did not finish within {after:?}")]
    Timeout {
        /// The configured handshake timeout.
        after: Duration,
    },
    /// The handshake was unfinished when the listener shed it to make room for a newer
    /// connection: its address group held
    /// [`max_pending_per_address`](super::TcpConfig::max_pending_per_address) pending
    /// handshakes (`per_address`), or the node held
    /// [`max_pending_handshakes`](super::TcpConfig::max_pending_handshakes). The least
    /// advanced, then oldest, handshake of the fullest address group is shed.
    #[error("unfinished handshake shed to make room ({})", if *per_address { "limit per address" } else { "overall limit" })]
    Shed {
        /// Whether the per-address limit (rather than the overall one) was reached.
        per_address: bool,
    },
    /// The peer closed the connection during the handshake. This is what a dialer sees when
    /// the node it dialed refuses it (untrusted, peer table full, ...): the refusing side
    /// knows the typed reason, and closes without an acceptance.
    #[error("peer closed the connection during the handshake")]
    ConnectionClosed,
}

/// The cleartext greeting each side sends first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The sender's protocol version.
    pub version: u16,
    /// The sender's federation.
    pub federation: FederationId,
}

impl Hello {
    /// This implementation's hello for `federation`.
    pub fn new(federation: FederationId) -> Self {
        Self { version: PROTOCOL_VERSION, federation }
    }

    /// The wire form: magic, version (u16 BE), federation id.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        let (magic, rest) = out.split_at_mut(8);
        let (version, federation) = rest.split_at_mut(2);
        magic.copy_from_slice(&MAGIC);
        version.copy_from_slice(&self.version.to_be_bytes());
        federation.copy_from_slice(self.federation.as_bytes());
        out
    }

    /// Parses a hello. Never panics; allocates nothing.
    pub fn decode(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let Some((magic, rest)) = bytes.split_first_chunk::<8>() else {
            return Err(HandshakeError::BadMagic);
        };
        if *magic != MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        let Some((version, rest)) = rest.split_first_chunk::<2>() else {
            return Err(HandshakeError::Malformed { what: "hello", reason: "too short" });
        };
        let Ok(federation) = <[u8; 32]>::try_from(rest) else {
            return Err(HandshakeError::Malformed { what: "hello", reason: "wrong length" });
        };
        Ok(Self {
            version: u16::from_be_bytes(*version),
            federation: FederationId::from_bytes(federation),
        })
    }

    /// Checks that a peer sending `theirs` can talk to a node sending `self`.
    pub fn check_compatible(&self, theirs: &Hello) -> Result<(), HandshakeError> {
        if theirs.version != self.version {
            return Err(HandshakeError::VersionMismatch {
                ours: self.version,
                theirs: theirs.version,
            });
        }
        if theirs.federation != self.federation {
            return Err(HandshakeError::FederationMismatch {
                ours: self.federation,
                theirs: theirs.federation,
            });
        }
        Ok(())
    }
}

/// What each side sends inside the Noise handshake: who it is, and its signature over its
/// Noise static public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakePayload {
    /// The sender's identity.
    pub node_id: NodeId,
    /// `node_id`'s signature, under [`IDENTITY_BINDING_CONTEXT`], over the Noise static key.
    pub signature: [u8; 64],
}

impl HandshakePayload {
    /// The payload binding `noise_static_public` to `keypair`'s identity.
    pub fn sign(keypair: &NodeKeypair, noise_static_public: &[u8]) -> Self {
        Self {
            node_id: keypair.node_id(),
            signature: keypair.sign_input(&SigningInput::transport_binding(noise_static_public)),
        }
    }

    /// The wire form: node id, then signature.
    pub fn encode(&self) -> [u8; HANDSHAKE_PAYLOAD_LEN] {
        let mut out = [0u8; HANDSHAKE_PAYLOAD_LEN];
        let (id, sig) = out.split_at_mut(32);
        id.copy_from_slice(self.node_id.as_bytes());
        sig.copy_from_slice(&self.signature);
        out
    }

    /// Parses a payload. Never panics; allocates nothing.
    pub fn decode(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let malformed = |reason| HandshakeError::Malformed { what: "handshake payload", reason };
        let Ok(bytes) = <&[u8; HANDSHAKE_PAYLOAD_LEN]>::try_from(bytes) else {
            return Err(malformed("wrong length"));
        };
        let (id, sig) = bytes.split_at(32);
        let id = <[u8; 32]>::try_from(id).map_err(|_| malformed("wrong length"))?;
        let signature = <[u8; 64]>::try_from(sig).map_err(|_| malformed("wrong length"))?;
        let node_id = NodeId::from_bytes(id).map_err(|_| malformed("invalid node id"))?;
        Ok(Self { node_id, signature })
    }

    /// Checks that `node_id` signed `noise_static_public`.
    pub fn verify(&self, noise_static_public: &[u8]) -> Result<(), HandshakeError> {
        self.node_id
            .verify(IDENTITY_BINDING_CONTEXT, noise_static_public, &self.signature)
            .map_err(|_| HandshakeError::BadIdentityBinding { claimed: self.node_id })
    }
}

/// Which side of the connection this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Initiator,
    Responder,
}

/// The trust check: the authenticated peer and the certificate bytes it sent, if any.
pub(crate) type Trusted<'a> =
    dyn Fn(&NodeId, Option<&[u8]>) -> Result<(), HandshakeError> + Sync + 'a;

/// What a handshake needs from the local node.
pub(crate) struct Local<'a> {
    pub(crate) id: NodeId,
    pub(crate) federation: FederationId,
    pub(crate) static_private: &'a [u8],
    pub(crate) payload: &'a [u8],
}

/// A finished handshake.
pub(crate) struct Authenticated {
    pub(crate) peer: NodeId,
    pub(crate) session: Session,
}

fn noise_err(e: snow::Error) -> HandshakeError {
    HandshakeError::Noise(e.to_string())
}

fn io_err(e: std::io::Error) -> TcpError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        HandshakeError::ConnectionClosed.into()
    } else {
        TcpError::io(e)
    }
}

async fn send_msg<S: AsyncWrite + Unpin>(stream: &mut S, msg: &[u8]) -> Result<(), TcpError> {
    let mut out = Vec::with_capacity(2 + msg.len());
    let len = u16::try_from(msg.len()).map_err(|_| HandshakeError::MessageTooLarge {
        len: msg.len(),
        max: MAX_HANDSHAKE_MESSAGE_LEN,
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await.map_err(io_err)
}

async fn recv_msg<'b, S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &'b mut [u8; MAX_HANDSHAKE_MESSAGE_LEN],
) -> Result<&'b [u8], TcpError> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(io_err)?;
    let len = usize::from(u16::from_be_bytes(len));
    let Some(msg) = buf.get_mut(..len) else {
        return Err(HandshakeError::MessageTooLarge { len, max: MAX_HANDSHAKE_MESSAGE_LEN }.into());
    };
    stream.read_exact(msg).await.map_err(io_err)?;
    Ok(msg)
}

/// Checks the peer's payload against the static key Noise authenticated, then identity rules.
fn check_peer(
    payload: &[u8],
    remote_static: Option<&[u8]>,
    local: &Local<'_>,
    expected: Option<NodeId>,
    trusted: &Trusted<'_>,
) -> Result<NodeId, HandshakeError> {
    let (payload, extension) = payload.split_at(payload.len().min(HANDSHAKE_PAYLOAD_LEN));
    let certificate = match extension.split_first() {
        None => None,
        Some((&CERTIFICATE_EXTENSION, cert)) => Some(cert),
        Some(_) => {
            return Err(HandshakeError::Malformed {
                what: "handshake payload",
                reason: "unknown extension",
            });
        }
    };
    let payload = HandshakePayload::decode(payload)?;
    let Some(remote_static) = remote_static else {
        return Err(HandshakeError::Noise("no remote static key".into()));
    };
    payload.verify(remote_static)?;
    let peer = payload.node_id;
    if peer == local.id {
        return Err(HandshakeError::SelfConnection);
    }
    if let Some(expected) = expected
        && expected != peer
    {
        return Err(HandshakeError::UnexpectedPeer { expected, actual: peer });
    }
    trusted(&peer, certificate)?;
    Ok(peer)
}

/// Runs the hello exchange and the Noise XX handshake on `stream`; as the initiator, also
/// waits for the responder's acceptance. The responder's caller sends the acceptance (after
/// its own last checks) with [`Session::send_accept`]. The caller bounds it all in time.
pub(crate) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    role: Role,
    local: &Local<'_>,
    expected: Option<NodeId>,
    trusted: &Trusted<'_>,
) -> Result<Authenticated, TcpError> {
    run_gated(stream, role, local, expected, trusted, None).await
}

/// What an inbound connection's handshake is waiting for: how far it has got. When pending
/// handshakes must be shed, the least advanced go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// Accepted; its hello has not arrived yet. It has proved nothing.
    Hello,
    /// Its hello named this node's federation and version; the first Noise message has not
    /// arrived yet.
    Noise,
    /// This node answered the first Noise message (its Diffie-Hellman work is done); the
    /// peer's identity has not arrived yet.
    Identity,
}

/// What the listener adds to a responder's handshake: the deadline for the peer's hello and
/// a report of each stage reached.
pub(crate) struct Gate<'a> {
    pub(crate) hello_timeout: Duration,
    pub(crate) progress: &'a (dyn Fn(Stage) + Sync),
}

/// The federation a responder names in its hello to a dialer whose hello named another
/// federation: the responder does not disclose its own to a stranger.
pub(crate) const UNDISCLOSED: FederationId = FederationId::from_bytes([0; 32]);

/// [`run`], with the listener's `gate` for the responder. The responder says nothing until
/// the dialer's hello has arrived (within the gate's hello timeout): a stranger that does not
/// send a well-formed hello learns nothing, and one that names another federation is
/// answered with a hello naming [`UNDISCLOSED`] (so it sees the mismatch) before the
/// connection is closed. Only a dialer that named this node's federation and version gets
/// the node's hello and, after its first Noise message, the node's Diffie-Hellman work.
pub(crate) async fn run_gated<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    role: Role,
    local: &Local<'_>,
    expected: Option<NodeId>,
    trusted: &Trusted<'_>,
    gate: Option<&Gate<'_>>,
) -> Result<Authenticated, TcpError> {
    let ours = Hello::new(local.federation);
    let ours_bytes = ours.encode();
    let mut theirs_bytes = [0u8; HELLO_LEN];
    match role {
        Role::Initiator => {
            stream.write_all(&ours_bytes).await.map_err(io_err)?;
            stream.read_exact(&mut theirs_bytes).await.map_err(io_err)?;
        }
        Role::Responder => {
            let read = stream.read_exact(&mut theirs_bytes);
            match gate {
                Some(gate) => tokio::time::timeout(gate.hello_timeout, read)
                    .await
                    .map_err(|_| HandshakeError::Timeout { after: gate.hello_timeout })?,
                None => read.await,
            }
            .map_err(io_err)?;
            let theirs = Hello::decode(&theirs_bytes)?;
            let reply = if theirs.federation == local.federation {
                ours
            } else {
                Hello { federation: UNDISCLOSED, ..ours }
            };
            stream.write_all(&reply.encode()).await.map_err(io_err)?;
        }
    }
    let theirs = Hello::decode(&theirs_bytes)?;
    ours.check_compatible(&theirs)?;
    let progress = |stage| {
        if let Some(gate) = gate {
            (gate.progress)(stage);
        }
    };
    progress(Stage::Noise);
    let mut prologue = [0u8; 2 * HELLO_LEN];
    let (first, second) = prologue.split_at_mut(HELLO_LEN);
    match role {
        Role::Initiator => {
            first.copy_from_slice(&ours_bytes);
            second.copy_from_slice(&theirs_bytes);
        }
        Role::Responder => {
            first.copy_from_slice(&theirs_bytes);
            second.copy_from_slice(&ours_bytes);
        }
    }
    let params = NOISE_PARAMS.parse().map_err(noise_err)?;
    let builder = snow::Builder::new(params)
        .local_private_key(local.static_private)
        .and_then(|b| b.prologue(&prologue))
        .map_err(noise_err)?;

    let mut out = [0u8; MAX_HANDSHAKE_MESSAGE_LEN];
    let mut inbuf = [0u8; MAX_HANDSHAKE_MESSAGE_LEN];
    let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE_LEN];
    let (hs, peer) = match role {
        Role::Initiator => {
            let mut hs = builder.build_initiator().map_err(noise_err)?;
            let n = hs.write_message(&[], &mut out).map_err(noise_err)?;
            send_msg(stream, out.get(..n).unwrap_or_default()).await?;
            let msg = recv_msg(stream, &mut inbuf).await?;
            let n = hs.read_message(msg, &mut payload).map_err(noise_err)?;
            let peer = check_peer(
                payload.get(..n).unwrap_or_default(),
                hs.get_remote_static(),
                local,
                expected,
                trusted,
            )?;
            let n = hs.write_message(local.payload, &mut out).map_err(noise_err)?;
            send_msg(stream, out.get(..n).unwrap_or_default()).await?;
            (hs, peer)
        }
        Role::Responder => {
            let mut hs = builder.build_responder().map_err(noise_err)?;
            let msg = recv_msg(stream, &mut inbuf).await?;
            if hs.read_message(msg, &mut payload).map_err(noise_err)? != 0 {
                return Err(HandshakeError::Malformed {
                    what: "handshake message 1",
                    reason: "unexpected payload",
                }
                .into());
            }
            let n = hs.write_message(local.payload, &mut out).map_err(noise_err)?;
            send_msg(stream, out.get(..n).unwrap_or_default()).await?;
            progress(Stage::Identity);
            let msg = recv_msg(stream, &mut inbuf).await?;
            let n = hs.read_message(msg, &mut payload).map_err(noise_err)?;
            let peer = check_peer(
                payload.get(..n).unwrap_or_default(),
                hs.get_remote_static(),
                local,
                expected,
                trusted,
            )?;
            (hs, peer)
        }
    };
    let mut session = Session::new(hs.into_stateless_transport_mode().map_err(noise_err)?);
    if role == Role::Initiator {
        session.recv_accept(stream).await?;
    }
    Ok(Authenticated { peer, session })
}

/// Which inbound connections count together against
/// [`TcpConfig::max_pending_per_address`](super::TcpConfig::max_pending_per_address): an IPv4
/// address (an IPv4-mapped IPv6 address counts as the IPv4 address), or an IPv6 /64 prefix,
/// the block a single subscriber or host can usually pick addresses from at will. Loopback
/// addresses are not special: `127.0.0.1` and `127.0.0.2` are two groups, although they are
/// the same host (whoever can use them can do worse than flood a listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum AddressGroup {
    V4(Ipv4Addr),
    V6Prefix([u8; 8]),
}

impl AddressGroup {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4),
                None => {
                    let [a, b, c, d, e, f, g, h, ..] = v6.octets();
                    Self::V6Prefix([a, b, c, d, e, f, g, h])
                }
            },
        }
    }
}

/// Why a pending handshake was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shed {
    /// Its address group was at its limit and a connection from the same group arrived.
    PerAddress,
    /// The node was at its overall limit and a connection arrived.
    Overall,
}

struct PendingEntry {
    group: AddressGroup,
    stage: Stage,
    shed: oneshot::Sender<Shed>,
}

#[derive(Default)]
struct AdmissionTable {
    next: u64,
    /// Unauthenticated inbound handshakes, by arrival order (older first).
    entries: BTreeMap<u64, PendingEntry>,
    per_group: HashMap<AddressGroup, usize>,
}

impl AdmissionTable {
    fn remove(&mut self, id: u64) -> Option<PendingEntry> {
        let entry = self.entries.remove(&id)?;
        if let Some(count) = self.per_group.get_mut(&entry.group) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_group.remove(&entry.group);
            }
        }
        Some(entry)
    }

    /// Sheds the least advanced, then oldest, entry among those `eligible`.
    fn shed_where(&mut self, reason: Shed, eligible: impl Fn(&PendingEntry) -> bool) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| eligible(e))
            .min_by_key(|(id, e)| (e.stage, **id))
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.remove(id)) {
            Some(entry) => {
                let _ = entry.shed.send(reason);
                true
            }
            None => false,
        }
    }
}

/// The listener's table of inbound handshakes that have not authenticated yet: how many each
/// address group holds, how far each has got, and a way to shed each. Bounded by the
/// listener's pending-handshake limit (plus the one connection being admitted).
pub(crate) struct Admission {
    max_per_address: usize,
    table: Mutex<AdmissionTable>,
}

impl Admission {
    pub(crate) fn new(max_per_address: usize) -> Arc<Self> {
        Arc::new(Self { max_per_address, table: Mutex::new(AdmissionTable::default()) })
    }

    fn table(&self) -> MutexGuard<'_, AdmissionTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// If `group` holds its limit of pending handshakes, sheds its least advanced (then
    /// oldest) one, to make room for a new connection from it. Returns whether it shed one.
    pub(crate) fn make_room_in(&self, group: AddressGroup) -> bool {
        let mut table = self.table();
        if table.per_group.get(&group).copied().unwrap_or(0) < self.max_per_address {
            return false;
        }
        table.shed_where(Shed::PerAddress, |e| e.group == group)
    }

    /// Sheds one pending handshake: from the address groups holding the most, the least
    /// advanced, then oldest. A peer with a single connection in handshake is shed only once
    /// every group is down to one. Returns whether there was one to shed.
    pub(crate) fn shed_one(&self) -> bool {
        let mut table = self.table();
        let Some(most) = table.per_group.values().copied().max() else { return false };
        let heavy: HashSet<AddressGroup> =
            table.per_group.iter().filter(|(_, n)| **n == most).map(|(g, _)| *g).collect();
        table.shed_where(Shed::Overall, |e| heavy.contains(&e.group))
    }

    /// Registers a new pending handshake from `group`. The receiver fires if it is shed; the
    /// ticket removes it from the table when dropped or released.
    pub(crate) fn admit(
        self: &Arc<Self>,
        group: AddressGroup,
    ) -> (Ticket, oneshot::Receiver<Shed>) {
        let (tx, rx) = oneshot::channel();
        let mut table = self.table();
        let id = table.next;
        table.next = table.next.wrapping_add(1);
        table.entries.insert(id, PendingEntry { group, stage: Stage::Hello, shed: tx });
        *table.per_group.entry(group).or_insert(0) += 1;
        (Ticket { admission: self.clone(), id }, rx)
    }
}

/// A pending handshake's place in the [`Admission`] table.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
}

impl Ticket {
    /// Records that the handshake reached `stage`.
    pub(crate) fn advance(&self, stage: Stage) {
        if let Some(entry) = self.admission.table().entries.get_mut(&self.id) {
            entry.stage = stage;
        }
    }

    /// Takes the handshake out of the table: it authenticated, and is no longer shed.
    pub(crate) fn release(&self) {
        self.admission.table().remove(self.id);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_checks() {
        let a = Hello::new(FederationId::from_name("a"));
        assert_eq!(Hello::decode(&a.encode()), Ok(a));
        let b = Hello::new(FederationId::from_name("b"));
        assert!(matches!(a.check_compatible(&b), Err(HandshakeError::FederationMismatch { .. })));
        let next = Hello { version: PROTOCOL_VERSION + 1, ..a };
        assert_eq!(
            a.check_compatible(&next),
            Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: PROTOCOL_VERSION + 1
            })
        );
        assert_eq!(Hello::decode(b"GARBAGE!and more bytes"), Err(HandshakeError::BadMagic));
        assert!(Hello::decode(&a.encode()[..41]).is_err());
    }

    #[test]
    fn address_groups() {
        let v4 = |s: &str| AddressGroup::of(s.parse().unwrap());
        assert_eq!(v4("10.0.0.1"), v4("::ffff:10.0.0.1"));
        assert_ne!(v4("10.0.0.1"), v4("10.0.0.2"));
        assert_ne!(v4("127.0.0.1"), v4("127.0.0.2"));
        assert_eq!(v4("2001:db8:1:2::1"), v4("2001:db8:1:2:ffff::9"));
        assert_ne!(v4("2001:db8:1:2::1"), v4("2001:db8:1:3::1"));
    }

    #[test]
    fn payload_round_trip_and_binding() {
        let kp = NodeKeypair::from_secret_bytes([3; 32]);
        let p = HandshakePayload::sign(&kp, &[7; 32]);
        let decoded = HandshakePayload::decode(&p.encode()).unwrap();
        assert_eq!(decoded, p);
        assert!(decoded.verify(&[7; 32]).is_ok());
        assert_eq!(
            decoded.verify(&[8; 32]),
            Err(HandshakeError::BadIdentityBinding { claimed: kp.node_id() })
        );
        assert!(HandshakePayload::decode(&[0; 95]).is_err());
    }
}
