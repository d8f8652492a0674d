//! The per-peer supervisor: owns the peer's outgoing queue, its single live connection, and
//! the dialer with capped exponential backoff.
//!
//! All connection changes of one peer go through its actor, one at a time, so the
//! connectivity it reports is in order with the messages around it: it marks the link up in
//! the inbox (with the connection's number as the link's epoch) before the connection's
//! reader starts, and down only after the reader has stopped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::NodeId;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};

use super::ConnectionFailure;
use super::TcpError;
use super::conn::{LinkFlow, PeerSignal, Session, linger, read_loop, write_loop};
use super::handshake::{self, HandshakeError, Role};
use super::outbox::Outbox;
use super::transport::{Inner, Level, wait_level};

/// A connection that finished its handshake, waiting for its peer's actor to adopt it.
pub(crate) struct Established {
    pub(crate) stream: TcpStream,
    pub(crate) peer_addr: SocketAddr,
    pub(crate) session: Session,
    /// Who dialed.
    pub(crate) initiator: NodeId,
    /// When the handshake finished.
    pub(crate) at: Instant,
    /// Whether this actor's own dialer made it.
    pub(crate) from_dial: bool,
    /// An inbound connection keeps its pending-handshake slot until its actor has adopted or
    /// dismissed it, so a peer cannot pile up authenticated connections faster than its
    /// actor handles them.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

pub(crate) enum PeerCmd {
    Established(Box<Established>),
    Ended {
        conn_id: u64,
        error: Option<TcpError>,
    },
    DialFailed,
    SetAddr(SocketAddr),
    /// The transport is closing: flush what is queued, say goodbye.
    Close,
    /// The peer was removed: close the link now and stop.
    Remove,
}

/// What the rest of the transport holds of a peer.
#[derive(Clone)]
pub(crate) struct PeerHandle {
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) cmd: mpsc::UnboundedSender<PeerCmd>,
    /// Registered with `add_peer` (always trusted).
    pub(crate) added: bool,
}

struct Live {
    conn_id: u64,
    initiator: NodeId,
    /// When its handshake finished (for the tie-break).
    established_at: Instant,
    /// When it was adopted (for the backoff).
    up_since: Instant,
    peer_addr: SocketAddr,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    /// Asks the writer to say goodbye and stop (when the connection is replaced).
    stop: oneshot::Sender<()>,
    /// Asks the reader to stop delivering (it acknowledges on the enclosed sender) and to
    /// linger until the peer closes.
    retire_reader: oneshot::Sender<oneshot::Sender<()>>,
}

/// Capped exponential backoff; each delay is jittered to between half and all of itself.
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Self { initial, max, current: initial, rng: seed }
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.initial;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = base.saturating_mul(2).min(self.max);
        // SplitMix64: jitter needs no cryptographic strength, only independence across nodes
        // (the seed comes from the OS RNG via the Noise static key).
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let half = base / 2;
        let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).saturating_add(1);
        half + Duration::from_nanos(z % span)
    }
}

pub(crate) struct PeerActor {
    inner: Arc<Inner>,
    node: NodeId,
    addr: Option<SocketAddr>,
    outbox: Arc<Outbox>,
    /// Wakes the writer when the host takes the peer's messages (kept across actors).
    signal: Arc<PeerSignal>,
    cmds: mpsc::UnboundedReceiver<PeerCmd>,
    cmd_tx: mpsc::UnboundedSender<PeerCmd>,
    live: Option<Live>,
    dial: Option<JoinHandle<()>>,
    next_dial: Option<Instant>,
    backoff: Backoff,
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl PeerActor {
    pub(crate) fn new(
        inner: Arc<Inner>,
        node: NodeId,
        addr: Option<SocketAddr>,
        outbox: Arc<Outbox>,
        cmds: mpsc::UnboundedReceiver<PeerCmd>,
        cmd_tx: mpsc::UnboundedSender<PeerCmd>,
    ) -> Self {
        let seed = inner.jitter_seed(&node);
        let backoff = Backoff::new(inner.backoff_initial, inner.backoff_max, seed);
        let next_dial = addr.map(|_| Instant::now());
        let signal = inner.signal(node);
        Self {
            inner,
            node,
            addr,
            outbox,
            signal,
            cmds,
            cmd_tx,
            live: None,
            dial: None,
            next_dial,
            backoff,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut level = self.inner.level.subscribe();
        loop {
            let may_dial = self.live.is_none() && self.dial.is_none() && self.addr.is_some();
            let deadline = self.next_dial.filter(|_| may_dial);
            tokio::select! {
                _ = wait_level(&mut level, Level::Dead) => {
                    self.abort_all();
                    return;
                }
                cmd = self.cmds.recv() => {
                    let Some(cmd) = cmd else { return };
                    // Handling a command can wait (on the inbound queue, on a writer); the
                    // transport dying ends that wait too.
                    let keep_going = tokio::select! {
                        biased;
                        _ = wait_level(&mut level, Level::Dead) => false,
                        keep_going = self.handle(cmd) => keep_going,
                    };
                    if !keep_going {
                        self.abort_all();
                        return;
                    }
                }
                _ = sleep_until_opt(deadline) => {
                    self.next_dial = None;
                    self.start_dial();
                }
            }
        }
    }

    /// Handles one command; `false` when the actor should stop.
    async fn handle(&mut self, cmd: PeerCmd) -> bool {
        match cmd {
            PeerCmd::SetAddr(addr) => {
                self.addr = Some(addr);
                if self.live.is_none() && self.dial.is_none() {
                    self.backoff.reset();
                    self.next_dial = Some(Instant::now());
                }
            }
            PeerCmd::DialFailed => {
                self.dial = None;
                self.next_dial = Some(Instant::now() + self.backoff.next_delay());
            }
            PeerCmd::Established(est) => {
                if est.from_dial {
                    self.dial = None;
                }
                if self.inner.is_closed() {
                    return true;
                }
                let adopt = match &self.live {
                    None => true,
                    Some(old) => self.new_wins(old, &est),
                };
                if adopt {
                    if let Some(old) = self.live.take() {
                        self.retire(old).await;
                    }
                    self.install(*est).await;
                } else {
                    self.dismiss(*est);
                }
            }
            PeerCmd::Ended { conn_id, error } => {
                if self.live.as_ref().is_some_and(|l| l.conn_id == conn_id)
                    && let Some(live) = self.live.take()
                {
                    // A link that stayed up a while starts the backoff afresh; one that keeps
                    // failing right after it is set up keeps backing off.
                    if live.up_since.elapsed() >= self.inner.backoff_max {
                        self.backoff.reset();
                    }
                    self.teardown(live, error).await;
                    if self.addr.is_some() {
                        self.next_dial = Some(Instant::now() + self.backoff.next_delay());
                    }
                }
            }
            PeerCmd::Close => {
                self.close_gracefully().await;
                return false;
            }
            PeerCmd::Remove => {
                if let Some(dial) = self.dial.take() {
                    dial.abort();
                }
                match self.live.take() {
                    Some(live) => self.retire(live).await,
                    // Requests queued for a peer that never connected fail now too.
                    None => self.inner.conn.requests.fail(self.node),
                }
                return false;
            }
        }
        true
    }

    /// One live connection per peer; both ends must pick the same one.
    ///
    /// - A new connection from the same initiator replaces the old one: that side dials only
    ///   when it has no link, so it evidently lost the old one.
    /// - Connections made by different sides within [`Inner::simultaneous_window`] of each
    ///   other are simultaneous dials: both ends keep the one initiated by the smaller id.
    /// - A connection made by the other side well after the live one was set up means that
    ///   side abandoned the live one (it restarted, or saw it fail) while this side has not
    ///   noticed yet: the new one replaces it. Without this rule the larger node could not
    ///   reconnect until the smaller one happened to write to the dead link and fail.
    ///
    /// Near the window's edge the two ends can decide differently; each then retires the
    /// connection the other kept, both see a goodbye, and the next dial settles it.
    fn new_wins(&self, old: &Live, new: &Established) -> bool {
        if old.initiator == new.initiator {
            return true;
        }
        if new.at.saturating_duration_since(old.established_at) > self.inner.simultaneous_window() {
            return true;
        }
        new.initiator == self.inner.local.min(self.node)
    }

    async fn install(&mut self, est: Established) {
        let Established { stream, peer_addr, session, initiator, at, permit, .. } = est;
        let node = self.node;
        if self.inner.is_closed() {
            return;
        }
        drop(permit);
        let conn_id = self.inner.next_conn_id();
        self.inner.set_connected(node, conn_id);
        // Before the reader starts: the link is up before its first message.
        self.inner.conn.inbox.link_up(node, conn_id);
        let flow = Arc::new(LinkFlow::new(self.outbox.clone(), self.signal.clone()));
        let (sealer, opener) = session.split();
        let (r, w) = stream.into_split();
        let (retire_reader, mut retired) = oneshot::channel::<oneshot::Sender<()>>();
        let reader = {
            let inner = self.inner.clone();
            let cmd = self.cmd_tx.clone();
            let flow = flow.clone();
            self.inner.spawn(async move {
                let mut r = r;
                let outcome = tokio::select! {
                    biased;
                    ack = &mut retired => Err(ack.ok()),
                    result = read_loop(&mut r, opener, node, conn_id, flow, &inner.conn) => Ok(result),
                };
                match outcome {
                    Ok(result) => {
                        let _ = cmd.send(PeerCmd::Ended { conn_id, error: result.err() });
                    }
                    Err(ack) => {
                        // Retired: nothing more is delivered from here on.
                        if let Some(ack) = ack {
                            let _ = ack.send(());
                        }
                        linger(r, &inner.conn.linger);
                    }
                }
            })
        };
        let (stop, stop_rx) = oneshot::channel();
        let writer = {
            let inner = self.inner.clone();
            let cmd = self.cmd_tx.clone();
            self.inner.spawn(async move {
                if let Err(e) = write_loop(w, sealer, node, flow, stop_rx, &inner.conn).await {
                    let _ = cmd.send(PeerCmd::Ended { conn_id, error: Some(e) });
                }
            })
        };
        let up_since = Instant::now();
        self.live = Some(Live {
            conn_id,
            initiator,
            established_at: at,
            up_since,
            peer_addr,
            reader,
            writer,
            stop,
            retire_reader,
        });
    }

    /// Closes a duplicate connection that lost the tie-break with a goodbye, so the other
    /// end (which may have adopted it for a moment) sees a clean close, not a failure. Nothing
    /// is read from it.
    fn dismiss(&self, est: Established) {
        let inner = self.inner.clone();
        self.inner.spawn(async move {
            let Established { mut stream, session, permit, .. } = est;
            let (mut sealer, _) = session.split();
            if let Ok(Ok(())) = timeout(inner.flush_timeout, sealer.goodbye(&mut stream)).await {
                linger(stream, &inner.conn.linger);
            }
            drop(permit);
        });
    }

    /// Retires a live connection that a new one replaces: stops reading from it at once, and
    /// lets its writer finish the batch in hand and say goodbye (bounded by the flush
    /// timeout, then cut), so the peer sees a clean close rather than a lost connection.
    ///
    /// The new connection's writer starts only after this one has stopped, so the two never
    /// take from the queue at the same time, and nothing read from the old connection is
    /// delivered after anything read from the new one: no frame is duplicated or reordered
    /// across the switch. Frames still in flight on the old connection are lost (the
    /// `PeerDisconnected` reported here says so), unless the peer reads it to the end.
    async fn retire(&mut self, live: Live) {
        let Live { conn_id, reader, mut writer, stop, retire_reader, .. } = live;
        let flush = self.inner.flush_timeout;
        self.stop_delivering(reader, retire_reader).await;
        let _ = stop.send(());
        if timeout(flush, &mut writer).await.is_err() {
            writer.abort();
            let _ = writer.await;
        }
        self.disconnected(conn_id, None, None);
    }

    /// Makes a connection's reader stop delivering (it then lingers in the background until
    /// the peer closes); returns once nothing more can arrive from it.
    async fn stop_delivering(
        &self,
        mut reader: JoinHandle<()>,
        retire: oneshot::Sender<oneshot::Sender<()>>,
    ) {
        let (ack, acked) = oneshot::channel();
        let _ = retire.send(ack);
        // Resolves at once if the reader has already ended.
        if timeout(self.inner.flush_timeout, acked).await.is_err() {
            reader.abort();
            let _ = (&mut reader).await;
        }
    }

    /// Stops a connection's tasks, fails requests waiting on it, reports the disconnect.
    async fn teardown(&mut self, live: Live, error: Option<TcpError>) {
        live.reader.abort();
        live.writer.abort();
        let _ = live.reader.await;
        let _ = live.writer.await;
        self.disconnected(live.conn_id, error, Some(live.peer_addr));
    }

    /// Bookkeeping when connection `conn_id` goes away (after its reader stopped): the link
    /// is down in the inbox and the connected set, waiting requests fail, and the failure is
    /// reported, if any. If a newer link to the node is up already (the node was removed and
    /// came back while this actor was still closing), that link and its requests are left
    /// alone.
    fn disconnected(&self, conn_id: u64, error: Option<TcpError>, peer_addr: Option<SocketAddr>) {
        let node = self.node;
        self.inner.conn.inbox.link_down(node, conn_id);
        if self.inner.clear_connected(node, conn_id) {
            self.inner.conn.requests.fail(node);
        }
        if let (Some(error), Some(peer_addr)) = (error, peer_addr) {
            self.inner.stats.connections_failed.add(1);
            self.inner.publish(ConnectionFailure { peer_addr, peer: Some(node), error });
        }
    }

    fn start_dial(&mut self) {
        let Some(addr) = self.addr else { return };
        let inner = self.inner.clone();
        let cmd = self.cmd_tx.clone();
        let node = self.node;
        self.dial = Some(self.inner.spawn(async move {
            match dial(&inner, node, addr).await {
                Ok(est) => {
                    inner.stats.connections_dialed.add(1);
                    let _ = cmd.send(PeerCmd::Established(Box::new(est)));
                }
                Err(error) => {
                    if matches!(error, TcpError::Handshake(_)) {
                        inner.stats.connections_refused.add(1);
                    } else {
                        inner.stats.dial_failures.add(1);
                    }
                    inner.publish(ConnectionFailure { peer_addr: addr, peer: Some(node), error });
                    let _ = cmd.send(PeerCmd::DialFailed);
                }
            }
        }));
    }

    async fn close_gracefully(&mut self) {
        if let Some(dial) = self.dial.take() {
            dial.abort();
        }
        if let Some(mut live) = self.live.take() {
            // The outbox is closed: the writer sends what is left, then a goodbye. The reader
            // then stops and the socket lingers in the background (bounded by the flush
            // timeout too) until the peer, having read the goodbye, closes its side; `close`
            // does not wait for that.
            if timeout(self.inner.flush_timeout, &mut live.writer).await.is_ok() {
                self.stop_delivering(live.reader, live.retire_reader).await;
            } else {
                live.writer.abort();
                live.reader.abort();
            }
            self.inner.clear_connected(self.node, live.conn_id);
        }
    }

    fn abort_all(&mut self) {
        if let Some(dial) = self.dial.take() {
            dial.abort();
        }
        if let Some(live) = self.live.take() {
            live.reader.abort();
            live.writer.abort();
        }
    }
}

/// Connects to `addr` and authenticates it as `node`.
async fn dial(inner: &Inner, node: NodeId, addr: SocketAddr) -> Result<Established, TcpError> {
    let connect = timeout(inner.handshake_timeout, TcpStream::connect(addr)).await;
    let mut stream = connect.map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    let local = inner.local_handshake();
    let trusted = |id: &NodeId, cert: Option<&[u8]>| inner.check_trust(id, cert);
    let run = handshake::run(&mut stream, Role::Initiator, &local, Some(node), &trusted);
    let auth = timeout(inner.handshake_timeout, run)
        .await
        .map_err(|_| HandshakeError::Timeout { after: inner.handshake_timeout })??;
    Ok(Established {
        stream,
        peer_addr: addr,
        session: auth.session,
        initiator: inner.local,
        at: Instant::now(),
        from_dial: true,
        permit: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(5), 7);
        let mut base = Duration::from_millis(50);
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d >= base / 2 && d <= base, "{d:?} not in [{:?}, {base:?}]", base / 2);
            base = (base * 2).min(Duration::from_secs(5));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(50));
    }
}
