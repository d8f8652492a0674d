//! The generic async driver: runs any sans-io [`Protocol`] core over any [`Transport`] and
//! [`Timer`].
//!
//! The driver is where the core meets real time and a real network, and the only place with
//! locks: the core sits behind a mutex that the driver and the host's [`DriverHandle`] share.
//! It spawns nothing and needs no particular runtime — [`Driver::run`] is one future; poll it
//! on whatever executor the host uses (with [`StdTimer`](crate::StdTimer) or, under tokio,
//! `TokioTimer` (feature `tcp`)).
//!
//! ```text
//!   (construction) ────────────► core.handle_start(now, HostInfo { max_message_len })
//!   transport.recv_on(ch):
//!     Message ──decode─────────► core.handle_message ─┐
//!     PeerConnected/Disconnected ► core.handle_peer   │
//!     Request ─────────────────► request queue ──────┼──► handle.next_request() / respond()
//!   timer fires ───────────────► core.handle_timeout  ├─► drain: poll_transmit ─encode─► outbox ─► transport.send_on(ch)
//!   handle.call(|core, now| ..) ─────────────────────┘          poll_event ──────► handle.next_event()
//!                                                               poll_timeout ────► timer.sleep_until
//! ```
//!
//! **Channels.** A driver runs its core on one [`ChannelId`] of the transport
//! ([`DriverConfig::channel`], default [`ChannelId::DEFAULT`]): it sends with
//! [`Transport::send_on`] and receives with [`Transport::recv_on`] on that channel only. Several
//! protocols share one transport by running one driver each, on different channels; a
//! driver that stops does not close the transport.
//!
//! **Start and connectivity.** The core's [`handle_start`](Protocol::handle_start) is called
//! when the driver is built ([`Driver::new`]), before the host can reach the core through the
//! handle, with the transport's [`max_message_len`](Transport::max_message_len). Connectivity
//! the channel reports is handed to [`handle_peer`](Protocol::handle_peer) in the order it
//! arrives among the messages (and counted in [`DriverStats::connectivity_changes`]).
//!
//! **Requests.** Requests (see [`Transport::request_on`]) carry opaque bytes and are not part of
//! the sans-io vocabulary, so the core never sees them: the driver hands them to the host.
//! Inbound requests on the driver's channel wait in a bounded queue
//! ([`DriverConfig::request_capacity`], default 64) for [`DriverHandle::next_request`]; the host
//! answers with [`DriverHandle::respond`] (or does not, and the requester times out). A
//! request that finds the queue full — or every request when the capacity is 0 — is dropped
//! unanswered and counted in [`DriverStats::requests_ignored`]; the driver never waits on
//! this queue, so a host that does not serve requests does not slow the core down. The host
//! sends its own requests on the driver's channel with [`DriverHandle::request`].
//!
//! Inbound and outbound run concurrently inside the one future, so two drivers sending to
//! each other cannot deadlock on full queues. The outbox between the core and the transport
//! is bounded ([`DriverConfig::outbox_capacity`]); when the transport cannot keep up and the
//! outbox is full, further transmits are dropped and counted in
//! [`DriverStats::outbox_dropped`] — the core sees exactly the lossy network it is written
//! for, and memory stays bounded. Events wait in a bounded queue for
//! [`DriverHandle::next_event`]; while it is full the driver waits (it does not drop
//! decisions), which in turn stops it reading from the network.
//!
//! Inbound payloads are decoded with the transport's maximum message size as the limit;
//! payloads that do not decode are dropped and counted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_channel::{Receiver, Sender, TrySendError};
use futures_util::future::{Either, select};
use llmkg_federation_core::encoding;
use llmkg_federation_core::{
    BoxFuture, ChannelId, HostInfo, Incoming, LinkState, NodeId, Protocol, RequestId, Time, Timer,
    Transport, TransportError,
};

/// Settings of a [`Driver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverConfig {
    /// Encoded messages waiting for the transport before new ones are dropped. Default 4,096.
    pub outbox_capacity: usize,
    /// Events waiting for the host before the driver pauses. Default 1,024.
    pub event_capacity: usize,
    /// The transport channel the core runs on. Default [`ChannelId::DEFAULT`].
    pub channel: ChannelId,
    /// Inbound requests waiting for [`DriverHandle::next_request`] before new ones are
    /// dropped unanswered; 0 drops every request. Default 64.
    pub request_capacity: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            outbox_capacity: 4096,
            event_capacity: 1024,
            channel: ChannelId::DEFAULT,
            request_capacity: 64,
        }
    }
}

impl DriverConfig {
    /// The default settings on `channel`.
    pub fn on_channel(channel: ChannelId) -> Self {
        Self { channel, ..Self::default() }
    }
}

/// A request that arrived on the driver's channel (see [`DriverHandle::next_request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboundRequest {
    /// The authenticated requester.
    pub from: NodeId,
    /// Pass this to [`DriverHandle::respond`].
    pub id: RequestId,
    /// The bytes it sent (not decoded: requests are the host's).
    pub payload: Vec<u8>,
}

/// What a driver has done so far. Counts only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverStats {
    /// Messages handed to the transport successfully.
    pub messages_sent: u64,
    /// Payload bytes of those messages.
    pub bytes_sent: u64,
    /// Messages the transport refused (unknown peer, closed, too large).
    pub send_failures: u64,
    /// Transmits dropped because the outbox was full.
    pub outbox_dropped: u64,
    /// Transmits whose message the core's type could not encode
    /// ([`try_encode`](llmkg_federation_core::encoding::try_encode)), dropped.
    pub encode_failures: u64,
    /// Messages received and handed to the core.
    pub messages_received: u64,
    /// Payload bytes of those messages.
    pub bytes_received: u64,
    /// Inbound payloads that did not decode as the core's message type, dropped.
    pub decode_failures: u64,
    /// Inbound requests queued for [`DriverHandle::next_request`].
    pub requests_queued: u64,
    /// Inbound requests dropped unanswered because the request queue was full (or its
    /// capacity is 0); their requesters time out.
    pub requests_ignored: u64,
    /// Times the core's timer fired.
    pub timeouts: u64,
    /// Peer connected / disconnected notifications seen (each handed to
    /// [`handle_peer`](Protocol::handle_peer)).
    pub connectivity_changes: u64,
}

/// Why [`Driver::run`] returned.
#[derive(Debug)]
#[non_exhaustive]
pub enum DriverExit {
    /// [`DriverHandle::shutdown`] was called.
    Shutdown,
    /// The transport was closed.
    TransportClosed,
    /// The transport failed while receiving.
    TransportFailed(TransportError),
}

struct Shared<P> {
    core: Mutex<P>,
    stats: Mutex<DriverStats>,
    shutdown: AtomicBool,
}

impl<P> Shared<P> {
    fn core(&self) -> MutexGuard<'_, P> {
        self.core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stats(&self) -> MutexGuard<'_, DriverStats> {
        self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs a core; see the [module documentation](self).
pub struct Driver<P: Protocol> {
    shared: Arc<Shared<P>>,
    transport: Arc<dyn Transport>,
    timer: Arc<dyn Timer>,
    config: DriverConfig,
    events_tx: Sender<P::Event>,
    requests_tx: Sender<InboundRequest>,
    wake_rx: Receiver<()>,
}

/// The host's side of a running [`Driver`]: local requests, events, statistics, shutdown.
/// Clones share the driver.
pub struct DriverHandle<P: Protocol> {
    shared: Arc<Shared<P>>,
    timer: Arc<dyn Timer>,
    transport: Arc<dyn Transport>,
    channel: ChannelId,
    events_rx: Receiver<P::Event>,
    requests_rx: Receiver<InboundRequest>,
    wake_tx: Sender<()>,
}

impl<P: Protocol> Clone for DriverHandle<P> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            timer: Arc::clone(&self.timer),
            transport: Arc::clone(&self.transport),
            channel: self.channel,
            events_rx: self.events_rx.clone(),
            requests_rx: self.requests_rx.clone(),
            wake_tx: self.wake_tx.clone(),
        }
    }
}

impl<P: Protocol> DriverHandle<P> {
    /// Runs `f` on the core at the current time — for core-specific requests such as a
    /// proposal — then wakes the driver to send what the core produced.
    pub fn call<R>(&self, f: impl FnOnce(&mut P, Time) -> R) -> R {
        let result = {
            let mut core = self.shared.core();
            f(&mut core, self.timer.now())
        };
        self.wake();
        result
    }

    /// The next event from the core, or `None` once the driver has stopped and every event
    /// was taken.
    pub async fn next_event(&self) -> Option<P::Event> {
        self.events_rx.recv().await.ok()
    }

    /// An event if one is waiting.
    pub fn try_next_event(&self) -> Option<P::Event> {
        self.events_rx.try_recv().ok()
    }

    /// The next inbound request on the driver's channel, or `None` once the driver has
    /// stopped and every queued request was taken. Answer it with
    /// [`respond`](Self::respond).
    pub async fn next_request(&self) -> Option<InboundRequest> {
        self.requests_rx.recv().await.ok()
    }

    /// A request if one is waiting.
    pub fn try_next_request(&self) -> Option<InboundRequest> {
        self.requests_rx.try_recv().ok()
    }

    /// Answers `request` ([`Transport::respond`]).
    pub async fn respond(
        &self,
        request: &InboundRequest,
        payload: Vec<u8>,
    ) -> Result<(), TransportError> {
        self.transport.respond(request.from, request.id, payload).await
    }

    /// Sends a request to `to` on the driver's channel and waits up to `timeout` for the
    /// answer ([`Transport::request_on`]). The core is not involved.
    pub async fn request(
        &self,
        to: NodeId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        self.transport.request_on(self.channel, to, payload, timeout).await
    }

    /// The channel the driver runs on.
    pub fn channel(&self) -> ChannelId {
        self.channel
    }

    /// A snapshot of the driver's counters.
    pub fn stats(&self) -> DriverStats {
        self.shared.stats().clone()
    }

    /// Asks the driver to stop; [`Driver::run`] returns [`DriverExit::Shutdown`] soon after.
    /// Messages still in the outbox are dropped.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
        // A full channel means a wake-up is already pending.
        let _ = self.wake_tx.try_send(());
    }
}

impl<P> Driver<P>
where
    P: Protocol,
{
    /// A driver for `core` with default settings, and its handle.
    pub fn new(
        core: P,
        transport: Arc<dyn Transport>,
        timer: Arc<dyn Timer>,
    ) -> (Self, DriverHandle<P>) {
        Self::with_config(core, transport, timer, DriverConfig::default())
    }

    /// A driver for `core` with `config`, and its handle. Starts the core
    /// ([`handle_start`](Protocol::handle_start) with the transport's maximum message length)
    /// before returning; its outputs are sent once [`run`](Self::run) is polled.
    pub fn with_config(
        mut core: P,
        transport: Arc<dyn Transport>,
        timer: Arc<dyn Timer>,
        config: DriverConfig,
    ) -> (Self, DriverHandle<P>) {
        core.handle_start(timer.now(), HostInfo::new(transport.max_message_len()));
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            stats: Mutex::new(DriverStats::default()),
            shutdown: AtomicBool::new(false),
        });
        let (events_tx, events_rx) = async_channel::bounded(config.event_capacity.max(1));
        let (wake_tx, wake_rx) = async_channel::bounded(1);
        // A zero capacity is honoured by refusing every request (see `on_incoming`).
        let (requests_tx, requests_rx) = async_channel::bounded(config.request_capacity.max(1));
        let handle = DriverHandle {
            shared: Arc::clone(&shared),
            timer: Arc::clone(&timer),
            transport: Arc::clone(&transport),
            channel: config.channel,
            events_rx,
            requests_rx,
            wake_tx,
        };
        (Self { shared, transport, timer, config, events_tx, requests_tx, wake_rx }, handle)
    }

    /// Runs the core until [`DriverHandle::shutdown`] or until the transport closes.
    pub async fn run(self) -> DriverExit {
        let (outbox_tx, outbox_rx) = async_channel::bounded(self.config.outbox_capacity.max(1));
        let inbound = Box::pin(self.inbound_loop(outbox_tx));
        let outbound = Box::pin(self.outbound_loop(outbox_rx));
        match select(inbound, outbound).await {
            Either::Left((exit, _)) => exit,
            // The outbound loop only ends when the inbound loop dropped the outbox.
            Either::Right(((), inbound)) => inbound.await,
        }
    }

    async fn outbound_loop(&self, outbox: Receiver<(NodeId, Vec<u8>)>) {
        while let Ok((to, bytes)) = outbox.recv().await {
            let len = bytes.len() as u64;
            let result = self.transport.send_on(self.config.channel, to, bytes).await;
            let mut stats = self.shared.stats();
            match result {
                Ok(()) => {
                    stats.messages_sent += 1;
                    stats.bytes_sent += len;
                }
                Err(_) => stats.send_failures += 1,
            }
        }
    }

    /// Drains the core's outputs; returns its next deadline.
    async fn drain(&self, outbox: &Sender<(NodeId, Vec<u8>)>) -> Option<Time> {
        let mut events = Vec::new();
        let deadline = {
            let mut core = self.shared.core();
            let mut dropped = 0;
            let mut unencodable = 0;
            while let Some(transmit) = core.poll_transmit() {
                let Ok(bytes) = encoding::try_encode(&transmit.message) else {
                    unencodable += 1;
                    continue;
                };
                if let Err(TrySendError::Full(_) | TrySendError::Closed(_)) =
                    outbox.try_send((transmit.to, bytes))
                {
                    dropped += 1;
                }
            }
            while let Some(event) = core.poll_event() {
                events.push(event);
            }
            if dropped + unencodable > 0 {
                let mut stats = self.shared.stats();
                stats.outbox_dropped += dropped;
                stats.encode_failures += unencodable;
            }
            core.poll_timeout()
        };
        for event in events {
            // The host dropped every handle: nobody wants events any more.
            let _ = self.events_tx.send(event).await;
        }
        deadline
    }

    async fn inbound_loop(&self, outbox: Sender<(NodeId, Vec<u8>)>) -> DriverExit {
        let max_len = self.transport.max_message_len();
        let channel = self.config.channel;
        let mut recv = self.transport.recv_on(channel);
        let mut wake: BoxFuture<'_, _> = Box::pin(self.wake_rx.recv());
        let mut sleep: Option<(Time, BoxFuture<'static, ()>)> = None;
        loop {
            if self.shared.shutdown.load(Ordering::Acquire) {
                return DriverExit::Shutdown;
            }
            let deadline = self.drain(&outbox).await.unwrap_or(Time::MAX);
            if sleep.as_ref().is_none_or(|(at, _)| *at != deadline) {
                sleep = Some((deadline, self.timer.sleep_until(deadline)));
            }
            let Some((_, sleeping)) = sleep.as_mut() else { continue };
            match select(&mut recv, select(sleeping, &mut wake)).await {
                Either::Left((received, _)) => {
                    recv = self.transport.recv_on(channel);
                    match received {
                        Ok(incoming) => self.on_incoming(incoming, max_len),
                        Err(TransportError::Closed) => return DriverExit::TransportClosed,
                        Err(error) => return DriverExit::TransportFailed(error),
                    }
                }
                Either::Right((Either::Left(((), _)), _)) => {
                    sleep = None;
                    self.shared.stats().timeouts += 1;
                    let now = self.timer.now();
                    self.shared.core().handle_timeout(now);
                }
                Either::Right((Either::Right((woken, _)), _)) => {
                    wake = match woken {
                        Ok(()) => Box::pin(self.wake_rx.recv()),
                        // Every handle is gone: nobody can wake us any more.
                        Err(_) => Box::pin(std::future::pending()),
                    };
                }
            }
        }
    }

    fn on_peer(&self, peer: NodeId, link: LinkState) {
        self.shared.stats().connectivity_changes += 1;
        let now = self.timer.now();
        self.shared.core().handle_peer(now, peer, link);
    }

    fn on_incoming(&self, incoming: Incoming, max_len: usize) {
        match incoming {
            Incoming::Message { from, payload } => {
                match encoding::decode_with_limit::<P::Message>(&payload, max_len) {
                    Ok(message) => {
                        {
                            let mut stats = self.shared.stats();
                            stats.messages_received += 1;
                            stats.bytes_received += payload.len() as u64;
                        }
                        let now = self.timer.now();
                        self.shared.core().handle_message(now, from, message);
                    }
                    Err(_) => self.shared.stats().decode_failures += 1,
                }
            }
            Incoming::Request { from, id, payload } => {
                let queued = self.config.request_capacity > 0
                    && self.requests_tx.try_send(InboundRequest { from, id, payload }).is_ok();
                let mut stats = self.shared.stats();
                if queued {
                    stats.requests_queued += 1;
                } else {
                    stats.requests_ignored += 1;
                }
            }
            Incoming::PeerConnected { peer } => self.on_peer(peer, LinkState::Up),
            Incoming::PeerDisconnected { peer } => self.on_peer(peer, LinkState::Down),
            _ => {}
        }
    }
}
