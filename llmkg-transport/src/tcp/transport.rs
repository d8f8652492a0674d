//! [`TcpTransport`]: the listener, the peer table, request correlation and the
//! [`Transport`] implementation.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use llmkg_federation_core::{
    BoxFuture, ChannelId, Incoming, NodeId, RequestId, Transport, TransportError,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};

use super::conn::{ConnCtx, Linger, PeerSignal};
use super::handshake::{
    self, AddressGroup, Admission, Gate, HandshakeError, Local, Role, Shed, Ticket,
};
use super::outbox::{Kind, Outbox, Outgoing};
use super::peer::{Established, PeerActor, PeerCmd, PeerHandle};
use super::{
    ConnectionFailure, FederationId, HandshakePayload, NOISE_PARAMS, TcpConfig, TcpError, Trust,
};
use crate::inbox::{Inbox, Item};

/// How many connection failures a lagging subscriber can miss before it sees `Lagged`.
const FAILURE_CHANNEL_CAPACITY: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lifecycle of the transport, broadcast to every task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Running,
    /// `close` started: stop accepting, drain queues.
    Closing,
    /// Everything stops now.
    Dead,
}

pub(crate) async fn wait_level(rx: &mut watch::Receiver<Level>, at_least: Level) {
    let _ = rx.wait_for(|l| *l >= at_least).await;
}

#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) connections_accepted: Counter,
    pub(crate) connections_dialed: Counter,
    pub(crate) connections_refused: Counter,
    pub(crate) connections_failed: Counter,
    pub(crate) dial_failures: Counter,
    pub(crate) handshakes_shed: Counter,
    pub(crate) handshakes_shed_per_address: Counter,
    pub(crate) frames_in: Counter,
    pub(crate) frames_out: Counter,
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
}

/// A snapshot of a transport's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpStats {
    /// Inbound connections that completed the handshake.
    pub connections_accepted: u64,
    /// Outbound connections that completed the handshake.
    pub connections_dialed: u64,
    /// Handshakes (either direction) that failed or were refused.
    pub connections_refused: u64,
    /// Established connections that ended with an error.
    pub connections_failed: u64,
    /// Dial attempts that failed before the handshake (refused, unreachable, timed out).
    pub dial_failures: u64,
    /// Unfinished inbound handshakes shed to make room for newer connections
    /// ([`HandshakeError::Shed`]; also counted in `connections_refused`).
    pub handshakes_shed: u64,
    /// Of `handshakes_shed`, those shed because their address group held
    /// [`TcpConfig::max_pending_per_address`] pending handshakes.
    pub handshakes_shed_per_address: u64,
    /// Frames received (keepalives not included).
    pub frames_in: u64,
    /// Frames sent (keepalives not included).
    pub frames_out: u64,
    /// Encrypted bytes received after handshakes (chunk headers included).
    pub bytes_in: u64,
    /// Encrypted bytes sent after handshakes (chunk headers included).
    pub bytes_out: u64,
}

struct Pending {
    peer: NodeId,
    tx: oneshot::Sender<Result<Vec<u8>, TransportError>>,
}

/// Requests this node sent and is waiting on.
pub(crate) struct Requests {
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
}

impl Requests {
    pub(crate) fn new() -> Self {
        Self { pending: Mutex::new(HashMap::new()), next: AtomicU64::new(1) }
    }

    /// Registers a request to `peer`; returns its id and where its answer will arrive.
    fn open(&self, peer: NodeId) -> (u64, oneshot::Receiver<Result<Vec<u8>, TransportError>>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, Pending { peer, tx });
        (id, rx)
    }

    fn forget(&self, id: u64) {
        lock(&self.pending).remove(&id);
    }

    /// Hands a response to the request waiting for it, if `from` is the node it was sent to.
    /// Late or unsolicited responses are dropped.
    pub(crate) fn complete(&self, from: NodeId, id: u64, payload: Vec<u8>) {
        let tx = match lock(&self.pending).entry(id) {
            Entry::Occupied(e) if e.get().peer == from => Some(e.remove().tx),
            _ => None,
        };
        if let Some(tx) = tx {
            let _ = tx.send(Ok(payload));
        }
    }

    /// Fails every request waiting on `node` with `Disconnected`; the others wait on.
    pub(crate) fn fail(&self, node: NodeId) {
        let failed: Vec<Pending> =
            lock(&self.pending).extract_if(|_, p| p.peer == node).map(|(_, p)| p).collect();
        for p in failed {
            let _ = p.tx.send(Err(TransportError::Disconnected(node)));
        }
    }

    /// Fails every request with `Closed`.
    fn fail_all(&self) {
        let pending: Vec<Pending> = lock(&self.pending).drain().map(|(_, p)| p).collect();
        for p in pending {
            let _ = p.tx.send(Err(TransportError::Closed));
        }
    }
}

/// Room for the node's messages to itself: a counting semaphore per channel, of the
/// outgoing queue's capacity.
struct SelfSlots {
    tx: Vec<async_channel::Sender<()>>,
    rx: Vec<async_channel::Receiver<()>>,
}

/// State shared by the handle and every task.
pub(crate) struct Inner {
    pub(crate) local: NodeId,
    federation: FederationId,
    static_private: Vec<u8>,
    static_public: Vec<u8>,
    payload: Vec<u8>,
    trust: Trust,
    max_message_len: usize,
    outgoing_queue: usize,
    max_peers: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) flush_timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    peers: Mutex<HashMap<NodeId, PeerHandle>>,
    /// The live connection to each connected peer.
    connected: Mutex<HashMap<NodeId, u64>>,
    /// Each peer's flow-control signal (see [`PeerSignal`]): one per node that ever had a
    /// peer entry, kept when it is removed, since its messages may still be waiting.
    signals: Mutex<HashMap<NodeId, Arc<PeerSignal>>>,
    /// What the connections' loops share (inbox, requests, counters, limits).
    pub(crate) conn: Arc<ConnCtx>,
    self_slots: SelfSlots,
    next_conn: AtomicU64,
    closed: AtomicBool,
    pub(crate) level: watch::Sender<Level>,
    failures: broadcast::Sender<ConnectionFailure>,
    pub(crate) stats: Arc<Counters>,
    pub(crate) handle: Handle,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Spawns a connection task (dial, reader, writer, dismissal) on the transport's runtime.
    /// Besides its own bounds, it ends when the transport dies (closed or dropped), so it
    /// cannot outlive the transport, whatever a peer does (only [`linger`](super::conn::linger)
    /// may, briefly).
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        let mut level = self.level.subscribe();
        self.handle.spawn(async move {
            tokio::select! {
                _ = wait_level(&mut level, Level::Dead) => {}
                _ = task => {}
            }
        })
    }

    /// How far apart two connections made by different ends may be set up and still count as
    /// simultaneous dials (see the tie-break in the peer actor). A dial takes at most two
    /// handshake timeouts (connect, then handshake); the third is slack.
    pub(crate) fn simultaneous_window(&self) -> Duration {
        self.handshake_timeout.saturating_mul(3)
    }

    pub(crate) fn local_handshake(&self) -> Local<'_> {
        Local {
            id: self.local,
            federation: self.federation,
            static_private: &self.static_private,
            payload: &self.payload,
        }
    }

    /// Whether `node` (authenticated, having sent `certificate`) may connect.
    pub(crate) fn check_trust(
        &self,
        node: &NodeId,
        certificate: Option<&[u8]>,
    ) -> Result<(), HandshakeError> {
        if lock(&self.peers).get(node).is_some_and(|p| p.added) {
            return Ok(());
        }
        self.trust.check(node, certificate)
    }

    pub(crate) fn jitter_seed(&self, node: &NodeId) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(&self.static_public);
        h.update(node.as_bytes());
        let bytes = h.finalize();
        let (first, _) = bytes.as_bytes().split_first_chunk::<8>().unwrap_or((&[0; 8], &[]));
        u64::from_le_bytes(*first)
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn publish(&self, failure: ConnectionFailure) {
        let _ = self.failures.send(failure);
    }

    /// Connection `conn_id` to `node` is up.
    pub(crate) fn set_connected(&self, node: NodeId, conn_id: u64) {
        lock(&self.connected).insert(node, conn_id);
    }

    /// Connection `conn_id` to `node` is down; `false` (and nothing changes) if another
    /// connection to it is up by now.
    pub(crate) fn clear_connected(&self, node: NodeId, conn_id: u64) -> bool {
        let mut connected = lock(&self.connected);
        match connected.get(&node) {
            Some(current) if *current != conn_id => false,
            _ => {
                connected.remove(&node);
                true
            }
        }
    }

    /// The node's flow-control signal, the same for all its connections and actors.
    pub(crate) fn signal(&self, node: NodeId) -> Arc<PeerSignal> {
        lock(&self.signals)
            .entry(node)
            .or_insert_with(|| Arc::new(PeerSignal::new(self.conn.window)))
            .clone()
    }

    /// The peer's handle, creating the peer (and its actor) if needed. `addr` registers a
    /// dial address and marks the peer as added (trusted).
    fn peer(
        self: &Arc<Self>,
        node: NodeId,
        addr: Option<SocketAddr>,
    ) -> Result<PeerHandle, TcpError> {
        let mut peers = lock(&self.peers);
        if self.is_closed() {
            return Err(TcpError::Closed);
        }
        if let Some(handle) = peers.get_mut(&node) {
            if let Some(addr) = addr {
                handle.added = true;
                let _ = handle.cmd.send(PeerCmd::SetAddr(addr));
            }
            return Ok(handle.clone());
        }
        if addr.is_none() && peers.len() >= self.max_peers {
            return Err(HandshakeError::TooManyPeers.into());
        }
        let outbox = Arc::new(Outbox::new(self.outgoing_queue));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let handle =
            PeerHandle { outbox: outbox.clone(), cmd: cmd_tx.clone(), added: addr.is_some() };
        let actor = PeerActor::new(self.clone(), node, addr, outbox, cmd_rx, cmd_tx);
        let task = self.handle.spawn(actor.run());
        lock(&self.tasks).push(task);
        peers.insert(node, handle.clone());
        Ok(handle)
    }

    /// The outbox to `to`, after the checks every send does; `None` for this node itself.
    fn outbox_for(&self, to: NodeId, len: usize) -> Result<Option<Arc<Outbox>>, TransportError> {
        if self.is_closed() {
            return Err(TransportError::Closed);
        }
        if len > self.max_message_len {
            return Err(TransportError::MessageTooLarge { len, max: self.max_message_len });
        }
        if to == self.local {
            return Ok(None);
        }
        lock(&self.peers)
            .get(&to)
            .map(|p| Some(p.outbox.clone()))
            .ok_or(TransportError::UnknownPeer(to))
    }

    /// The error for a send to `to` whose outbox refused it: the transport closed, or `to`
    /// was removed while the send waited.
    fn removed(&self, to: NodeId, error: TransportError) -> TransportError {
        if self.is_closed() { error } else { TransportError::UnknownPeer(to) }
    }

    /// Queues `item` for this node itself on `channel`, waiting for room.
    async fn to_self(&self, channel: ChannelId, item: Item) -> Result<(), TransportError> {
        let (Some(tx), Some(rx)) =
            (self.self_slots.tx.get(channel.index()), self.self_slots.rx.get(channel.index()))
        else {
            return Err(TransportError::Closed);
        };
        tx.send(()).await.map_err(|_| TransportError::Closed)?;
        let rx = rx.clone();
        let release = Box::new(move || {
            let _ = rx.try_recv();
        });
        self.conn
            .inbox
            .push(channel, self.local, 0, item, Some(release))
            .map_err(|_| TransportError::Closed)
    }

    /// Stops everything at once (no flushing).
    fn kill(&self) {
        self.closed.store(true, Ordering::Release);
        for p in lock(&self.peers).values() {
            p.outbox.close();
        }
        for rx in &self.self_slots.rx {
            rx.close();
        }
        self.conn.inbox.close();
        self.level.send_replace(Level::Dead);
        self.conn.requests.fail_all();
    }
}

/// The TCP + Noise [`Transport`]: authenticated, encrypted links to the peers this node
/// adds and to trusted peers that connect to it. See the [module docs](super).
pub struct TcpTransport {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("local_id", &self.inner.local)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Binds the listener and starts accepting connections. Must be called within a tokio
    /// runtime; the transport's tasks run on that runtime.
    ///
    /// Errors: [`TcpError::InvalidConfig`], [`TcpError::Io`] if the address cannot be bound.
    pub async fn bind(config: TcpConfig) -> Result<Self, TcpError> {
        config.validate()?;
        let handle = Handle::try_current()
            .map_err(|_| TcpError::InvalidConfig("bind must run within a tokio runtime"))?;
        let params =
            NOISE_PARAMS.parse().map_err(|e: snow::Error| TcpError::Noise(e.to_string()))?;
        let static_key = snow::Builder::new(params)
            .generate_keypair()
            .map_err(|e| TcpError::Noise(e.to_string()))?;
        let mut payload =
            HandshakePayload::sign(&config.keypair, &static_key.public).encode().to_vec();
        if let Some(cert) = &config.certificate {
            payload.push(handshake::CERTIFICATE_EXTENSION);
            payload.extend_from_slice(&cert.encode());
        }

        let socket =
            if config.listen_addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(config.listen_addr)?;
        let listener = socket.listen(1024)?;
        let local_addr = listener.local_addr()?;

        let (level, _) = watch::channel(Level::Running);
        let (failures, _) = broadcast::channel(FAILURE_CHANNEL_CAPACITY);
        let local = config.keypair.node_id();
        let stats = Arc::new(Counters::default());
        let conn = Arc::new(ConnCtx {
            stats: stats.clone(),
            inbox: Arc::new(Inbox::new(local)),
            requests: Arc::new(Requests::new()),
            keepalive_interval: config.keepalive_interval,
            idle_timeout: config.idle_timeout,
            max_message_len: config.max_message_len,
            window: config.inbound_window,
            linger: Linger {
                handle: handle.clone(),
                permits: Arc::new(Semaphore::new(config.max_pending_handshakes)),
                limit: config.flush_timeout,
            },
        });
        // Messages to oneself wait in a queue like a peer's outgoing queue.
        let window = config.outgoing_queue;
        let (self_tx, self_rx) = ChannelId::all().map(|_| async_channel::bounded(window)).unzip();
        let inner = Arc::new(Inner {
            local,
            federation: config.federation,
            static_private: static_key.private,
            static_public: static_key.public,
            payload,
            trust: config.trust,
            max_message_len: config.max_message_len,
            outgoing_queue: config.outgoing_queue,
            max_peers: config.max_peers,
            handshake_timeout: config.handshake_timeout,
            flush_timeout: config.flush_timeout,
            backoff_initial: config.backoff_initial,
            backoff_max: config.backoff_max,
            peers: Mutex::new(HashMap::new()),
            connected: Mutex::new(HashMap::new()),
            signals: Mutex::new(HashMap::new()),
            conn,
            self_slots: SelfSlots { tx: self_tx, rx: self_rx },
            next_conn: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            level,
            failures,
            stats,
            handle: handle.clone(),
            tasks: Mutex::new(Vec::new()),
        });
        let permits = Arc::new(Semaphore::new(config.max_pending_handshakes));
        let admission = Admission::new(config.max_pending_per_address);
        let acceptor = handle.spawn(accept_loop(
            inner.clone(),
            listener,
            permits,
            admission,
            config.hello_timeout,
        ));
        lock(&inner.tasks).push(acceptor);
        Ok(Self { inner, local_addr })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Registers `node` at `addr`: this node keeps a connection to it, dialing now and
    /// redialing with capped exponential backoff after failures and disconnects. The node
    /// becomes trusted. Calling it again updates the address.
    ///
    /// Errors: [`TcpError::SelfPeer`], [`TcpError::Closed`]; nothing changed.
    pub fn add_peer(&self, node: NodeId, addr: SocketAddr) -> Result<(), TcpError> {
        if node == self.inner.local {
            return Err(TcpError::SelfPeer);
        }
        self.inner.peer(node, Some(addr)).map(|_| ())
    }

    /// Removes `node`, at any time: stops dialing it, closes the link to it with a goodbye
    /// (every channel then reports it disconnected, and requests waiting on it fail with
    /// [`TransportError::Disconnected`]), drops what was queued for it, and forgets that
    /// [`add_peer`](Self::add_peer) trusted it — a node that [`Trust`] admits may still
    /// connect again, and is then a new peer. Sends to it fail with
    /// [`TransportError::UnknownPeer`] from now on, and so do sends that were waiting for
    /// room in its queue. Returns whether the node was a peer.
    ///
    /// Errors: [`TcpError::Closed`].
    pub fn remove_peer(&self, node: NodeId) -> Result<bool, TcpError> {
        if self.inner.is_closed() {
            return Err(TcpError::Closed);
        }
        let Some(handle) = lock(&self.inner.peers).remove(&node) else { return Ok(false) };
        handle.outbox.close();
        let _ = handle.cmd.send(PeerCmd::Remove);
        Ok(true)
    }

    /// Subscribes to connection failures: every refused handshake, failed dial and
    /// connection closed with an error, with its typed reason. Bounded: a subscriber that
    /// falls more than 256 failures behind gets `RecvError::Lagged`.
    pub fn connection_failures(&self) -> broadcast::Receiver<ConnectionFailure> {
        self.inner.failures.subscribe()
    }

    /// The peers with a live connection now.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = lock(&self.inner.connected).keys().copied().collect();
        peers.sort();
        peers
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TcpStats {
        let s = &self.inner.stats;
        TcpStats {
            connections_accepted: s.connections_accepted.get(),
            connections_dialed: s.connections_dialed.get(),
            connections_refused: s.connections_refused.get(),
            connections_failed: s.connections_failed.get(),
            dial_failures: s.dial_failures.get(),
            handshakes_shed: s.handshakes_shed.get(),
            handshakes_shed_per_address: s.handshakes_shed_per_address.get(),
            frames_in: s.frames_in.get(),
            frames_out: s.frames_out.get(),
            bytes_in: s.bytes_in.get(),
            bytes_out: s.bytes_out.get(),
        }
    }

    async fn close_gracefully(&self) {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.flush_timeout + Duration::from_millis(100);
        if inner.closed.swap(true, Ordering::AcqRel) {
            // Another call is shutting down (or was, and was cancelled): wait for it within
            // the same bound, then make sure everything is stopped.
            let mut level = inner.level.subscribe();
            let _ = timeout_at(deadline, wait_level(&mut level, Level::Dead)).await;
            inner.kill();
            return;
        }
        inner.level.send_replace(Level::Closing);
        let peers: Vec<PeerHandle> = lock(&inner.peers).values().cloned().collect();
        for p in &peers {
            p.outbox.close();
            let _ = p.cmd.send(PeerCmd::Close);
        }
        let tasks = std::mem::take(&mut *lock(&inner.tasks));
        for mut task in tasks {
            if timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
        inner.kill();
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.inner.kill();
    }
}

/// Accepts connections for as long as the transport runs. It never stops accepting because
/// of unauthenticated connections: a new connection from an address group at its limit sheds
/// one of that group's unfinished handshakes, and one arriving when every pending slot is
/// taken sheds one from the fullest groups (see [`Admission`]). Only slots held by
/// authenticated connections make it wait.
async fn accept_loop(
    inner: Arc<Inner>,
    listener: TcpListener,
    permits: Arc<Semaphore>,
    admission: Arc<Admission>,
    hello_timeout: Duration,
) {
    let mut level = inner.level.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = wait_level(&mut level, Level::Closing) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of file descriptors or a similar transient failure: back off briefly
                // instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let group = AddressGroup::of(addr.ip());
        let freeing = admission.make_room_in(group);
        if freeing {
            inner.stats.handshakes_shed.add(1);
            inner.stats.handshakes_shed_per_address.add(1);
        }
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // A shed handshake gives its slot back at once; if none can be shed, every
                // slot is held by an authenticated connection, soon done.
                if !freeing && admission.shed_one() {
                    inner.stats.handshakes_shed.add(1);
                }
                tokio::select! {
                    _ = wait_level(&mut level, Level::Closing) => return,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                }
            }
        };
        let (ticket, shed) = admission.admit(group);
        let inner2 = inner.clone();
        let mut level2 = inner.level.subscribe();
        inner.handle.spawn(async move {
            tokio::select! {
                _ = wait_level(&mut level2, Level::Closing) => {}
                _ = accept_one(inner2, stream, addr, permit, ticket, shed, hello_timeout) => {}
            }
        });
    }
}

/// The identity a refused handshake names, when it is authenticated.
fn named_peer(error: &TcpError) -> Option<NodeId> {
    match error {
        TcpError::Handshake(HandshakeError::UntrustedPeer(id)) => Some(*id),
        TcpError::Handshake(HandshakeError::UnexpectedPeer { actual, .. }) => Some(*actual),
        _ => None,
    }
}

/// Runs the responder's side of a connection: handshake, peer table, acceptance. Hands the
/// connection to its peer's actor together with `permit`, which the actor releases once it
/// has dealt with it.
async fn accept_one(
    inner: Arc<Inner>,
    mut stream: TcpStream,
    peer_addr: SocketAddr,
    permit: OwnedSemaphorePermit,
    ticket: Ticket,
    shed: oneshot::Receiver<Shed>,
    hello_timeout: Duration,
) {
    let mut authenticated = None;
    let setup = async {
        stream.set_nodelay(true)?;
        let local = inner.local_handshake();
        let trusted = |id: &NodeId, cert: Option<&[u8]>| inner.check_trust(id, cert);
        let progress = |stage| ticket.advance(stage);
        let gate = Gate { hello_timeout, progress: &progress };
        let mut auth =
            handshake::run_gated(&mut stream, Role::Responder, &local, None, &trusted, Some(&gate))
                .await?;
        ticket.release();
        authenticated = Some(auth.peer);
        let handle = inner.peer(auth.peer, None)?;
        auth.session.send_accept(&mut stream).await?;
        Ok::<_, TcpError>((auth, handle))
    };
    // Once released (authenticated), the ticket's sender is gone: never shed after that.
    let shed = async {
        match shed.await {
            Ok(reason) => reason,
            Err(_) => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = timeout(inner.handshake_timeout, setup) => match result {
            Ok(result) => result,
            Err(_) => Err(HandshakeError::Timeout { after: inner.handshake_timeout }.into()),
        },
        reason = shed => {
            Err(HandshakeError::Shed { per_address: reason == Shed::PerAddress }.into())
        }
    };
    match result {
        Ok((auth, handle)) => {
            inner.stats.connections_accepted.add(1);
            let est = Established {
                stream,
                peer_addr,
                session: auth.session,
                initiator: auth.peer,
                at: Instant::now(),
                from_dial: false,
                permit: Some(permit),
            };
            let _ = handle.cmd.send(PeerCmd::Established(Box::new(est)));
        }
        Err(TcpError::Closed) => {}
        Err(error) => {
            inner.stats.connections_refused.add(1);
            let peer = named_peer(&error).or(authenticated);
            inner.publish(ConnectionFailure { peer_addr, peer, error });
        }
    }
}

/// Removes a request's pending entry however the request ends (answer, timeout, drop).
struct PendingGuard<'a> {
    requests: &'a Requests,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.requests.forget(self.id);
    }
}

impl TcpTransport {
    async fn request_inner(
        &self,
        channel: ChannelId,
        to: NodeId,
        payload: Vec<u8>,
        after: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let inner = &*self.inner;
        let outbox = inner.outbox_for(to, payload.len())?;
        let requests = &*inner.conn.requests;
        let (id, rx) = requests.open(to);
        let _guard = PendingGuard { requests, id };
        let exchange = async {
            match outbox {
                Some(outbox) => {
                    let kind = Kind::Request(id);
                    let item = Outgoing { kind, channel, payload };
                    outbox.push(item).await.map_err(|e| inner.removed(to, e))?;
                }
                None => {
                    let item = Item::Request { id: RequestId(id), payload };
                    inner.to_self(channel, item).await?;
                }
            }
            rx.await.map_err(|_| TransportError::Closed)?
        };
        match timeout(after, exchange).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout { peer: to, after }),
        }
    }
}

impl Transport for TcpTransport {
    fn local_id(&self) -> NodeId {
        self.inner.local
    }

    fn max_message_len(&self) -> usize {
        self.inner.max_message_len
    }

    fn send_on(
        &self,
        channel: ChannelId,
        to: NodeId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            match self.inner.outbox_for(to, payload.len())? {
                Some(outbox) => {
                    let item = Outgoing { kind: Kind::Message, channel, payload };
                    outbox.push(item).await.map_err(|e| self.inner.removed(to, e))
                }
                None => self.inner.to_self(channel, Item::Message(payload)).await,
            }
        })
    }

    fn request_on(
        &self,
        channel: ChannelId,
        to: NodeId,
        payload: Vec<u8>,
        after: Duration,
    ) -> BoxFuture<'_, Result<Vec<u8>, TransportError>> {
        Box::pin(self.request_inner(channel, to, payload, after))
    }

    fn respond(
        &self,
        to: NodeId,
        id: RequestId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            match self.inner.outbox_for(to, payload.len())? {
                Some(outbox) => {
                    let kind = Kind::Response(id.0);
                    let item = Outgoing { kind, channel: ChannelId::DEFAULT, payload };
                    outbox.push(item).await.map_err(|e| self.inner.removed(to, e))
                }
                None => {
                    self.inner.conn.requests.complete(self.inner.local, id.0, payload);
                    Ok(())
                }
            }
        })
    }

    fn recv_on(&self, channel: ChannelId) -> BoxFuture<'_, Result<Incoming, TransportError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if inner.is_closed() {
                return Err(TransportError::Closed);
            }
            // A `recv_on` waiting when `close` starts returns at once rather than when the
            // shutdown completes.
            let mut level = inner.level.subscribe();
            tokio::select! {
                incoming = inner.conn.inbox.recv(channel) => match incoming {
                    Ok(incoming) if !inner.is_closed() => Ok(incoming),
                    _ => Err(TransportError::Closed),
                },
                _ = wait_level(&mut level, Level::Closing) => Err(TransportError::Closed),
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.close_gracefully())
    }
}
