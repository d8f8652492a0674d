//! An in-process [`Transport`]: nodes in one process talking over async channels.
//!
//! For embedding several nodes in one program and for integration tests. Runtime-agnostic: it
//! needs no executor of its own and sleeps (request timeouts) on the [`Timer`] the network
//! was created with.
//!
//! ```
//! use std::sync::Arc;
//! use llmkg_federation_core::{ChannelId, Incoming, NodeKeypair, Transport};
//! use llmkg_transport::{InProcessNetwork, StdTimer};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let net = InProcessNetwork::new(Arc::new(StdTimer::new()));
//! let alice = net.join(NodeKeypair::from_secret_bytes([1; 32]).node_id())?;
//! let bob = net.join(NodeKeypair::from_secret_bytes([2; 32]).node_id())?;
//!
//! alice.send(bob.local_id(), b"hello".to_vec()).await?;
//! // Bob first learns that Alice is there, then gets her message.
//! assert_eq!(bob.recv().await?, Incoming::PeerConnected { peer: alice.local_id() });
//! assert_eq!(
//!     bob.recv().await?,
//!     Incoming::Message { from: alice.local_id(), payload: b"hello".to_vec() }
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! Every member is connected to every other member, and to itself (a node may send to its
//! own id). Each endpoint has one bounded inbound queue per [`ChannelId`] shared by all
//! senders (its capacity is [`InProcessConfig::inbound_capacity`] messages and requests;
//! connectivity is reported as state and takes no room): a sender waits while the
//! receiver's queue *on that channel* is full, so a channel nobody reads holds up no other
//! channel. Membership changes at run time: [`InProcessNetwork::join`] adds a node,
//! [`Transport::close`] (or dropping the endpoint, or [`InProcessNetwork::remove`]) takes it
//! out: the others see [`Incoming::PeerDisconnected`] on every channel and their pending
//! requests to it fail with [`TransportError::Disconnected`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_util::future::{Either, select};
use llmkg_federation_core::{
    BoxFuture, ChannelId, Incoming, NodeId, RequestId, Timer, Transport, TransportError,
};
use thiserror::Error;

use crate::inbox::{Inbox, Item};

/// Settings of an [`InProcessNetwork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InProcessConfig {
    /// Messages and requests an endpoint holds on one channel before senders on that channel
    /// wait. Default 1,024.
    pub inbound_capacity: usize,
    /// The largest payload carried. Default 64 MiB.
    pub max_message_len: usize,
}

impl Default for InProcessConfig {
    fn default() -> Self {
        Self { inbound_capacity: 1024, max_message_len: 64 << 20 }
    }
}

/// Why a node could not join an [`InProcessNetwork`]. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InProcessError {
    /// A live endpoint with this id is already a member.
    #[error("node {0} is already a member of this network")]
    AlreadyMember(NodeId),
}

type ResponseSender = Sender<Result<Vec<u8>, TransportError>>;

/// A counting semaphore per channel: a sender puts a token in before queueing a message or
/// request on the channel, and taking the entry out of the inbox takes one out.
struct Slots {
    tx: Sender<()>,
    rx: Receiver<()>,
}

struct Endpoint {
    id: NodeId,
    /// This membership's link epoch: larger for every join, so a node that leaves and joins
    /// again is a new link to the others.
    epoch: u64,
    inbox: Inbox,
    slots: Vec<Slots>,
    /// Requests this endpoint sent and is waiting on: id → (peer asked, where to answer).
    pending: Mutex<HashMap<u64, (NodeId, ResponseSender)>>,
    closed: AtomicBool,
}

impl Endpoint {
    fn pending(&self) -> MutexGuard<'_, HashMap<u64, (NodeId, ResponseSender)>> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `item` from `sender` on `channel`, waiting for room. A sender that leaves
    /// while it waits gets `Closed`, and its message is not queued.
    async fn deliver(
        &self,
        channel: ChannelId,
        sender: &Endpoint,
        item: Item,
    ) -> Result<(), TransportError> {
        let peer = self.id;
        let Some(slots) = self.slots.get(channel.index()) else {
            return Err(TransportError::Disconnected(peer));
        };
        slots.tx.send(()).await.map_err(|_| TransportError::Disconnected(peer))?;
        if sender.closed.load(Ordering::Acquire) {
            let _ = slots.rx.try_recv();
            return Err(TransportError::Closed);
        }
        let (from, epoch) = (sender.id, sender.epoch);
        let rx = slots.rx.clone();
        let release = Box::new(move || {
            let _ = rx.try_recv();
        });
        self.inbox
            .push(channel, from, epoch, item, Some(release))
            .map_err(|_| TransportError::Disconnected(peer))
    }

    /// Fails every request waiting on `peer` (or on anyone, if `None`).
    fn fail_pending(&self, peer: Option<NodeId>, error: impl Fn() -> TransportError) {
        let mut pending = self.pending();
        pending.retain(|_, (asked, tx)| {
            if peer.is_none_or(|p| p == *asked) {
                let _ = tx.try_send(Err(error()));
                false
            } else {
                true
            }
        });
    }

    /// Leaves the network: closes this endpoint and tells the others. Idempotent.
    fn leave(self: &Arc<Self>, shared: &Shared) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.id;
        let others: Vec<Arc<Endpoint>> = {
            let mut members = shared.members();
            if members.get(&me).is_some_and(|e| Arc::ptr_eq(e, self)) {
                members.remove(&me);
            }
            members.values().cloned().collect()
        };
        self.inbox.close();
        for slots in &self.slots {
            slots.rx.close();
        }
        self.fail_pending(None, || TransportError::Closed);
        for other in others {
            other.fail_pending(Some(me), || TransportError::Disconnected(me));
            other.inbox.link_down(me, self.epoch);
        }
    }
}

struct Shared {
    config: InProcessConfig,
    timer: Arc<dyn Timer>,
    members: Mutex<BTreeMap<NodeId, Arc<Endpoint>>>,
    next_epoch: AtomicU64,
    /// Request ids, unique in the network: a late answer to a request of a node that left
    /// cannot complete a request of a node that joined under the same id.
    next_request: AtomicU64,
}

impl Shared {
    fn members(&self) -> MutexGuard<'_, BTreeMap<NodeId, Arc<Endpoint>>> {
        self.members.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn member(&self, id: &NodeId) -> Option<Arc<Endpoint>> {
        self.members().get(id).cloned()
    }
}

/// A set of nodes in one process, all connected to each other. Clones share the network.
#[derive(Clone)]
pub struct InProcessNetwork {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InProcessNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessNetwork")
            .field("config", &self.shared.config)
            .field("members", &self.shared.members().len())
            .finish()
    }
}

impl InProcessNetwork {
    /// An empty network with default settings; request timeouts sleep on `timer`.
    pub fn new(timer: Arc<dyn Timer>) -> Self {
        Self::with_config(InProcessConfig::default(), timer)
    }

    /// An empty network with `config`.
    pub fn with_config(config: InProcessConfig, timer: Arc<dyn Timer>) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                timer,
                members: Mutex::new(BTreeMap::new()),
                next_epoch: AtomicU64::new(1),
                next_request: AtomicU64::new(0),
            }),
        }
    }

    /// Adds node `id`, at any time. Every current member sees [`Incoming::PeerConnected`]
    /// for it (on every channel), and it sees one for every current member.
    pub fn join(&self, id: NodeId) -> Result<InProcessTransport, InProcessError> {
        let capacity = self.shared.config.inbound_capacity.max(1);
        let slots = ChannelId::all()
            .map(|_| {
                let (tx, rx) = async_channel::bounded(capacity);
                Slots { tx, rx }
            })
            .collect();
        let mut members = self.shared.members();
        if members.contains_key(&id) {
            return Err(InProcessError::AlreadyMember(id));
        }
        let epoch = self.shared.next_epoch.fetch_add(1, Ordering::Relaxed);
        let endpoint = Arc::new(Endpoint {
            id,
            epoch,
            inbox: Inbox::new(id),
            slots,
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        for (peer, other) in members.iter() {
            other.inbox.link_up(id, epoch);
            endpoint.inbox.link_up(*peer, other.epoch);
        }
        members.insert(id, Arc::clone(&endpoint));
        drop(members);
        Ok(InProcessTransport { endpoint, shared: Arc::clone(&self.shared) })
    }

    /// Takes node `id` out of the network, as if its endpoint had been closed: its own
    /// operations fail with [`TransportError::Closed`] from now on, and the others see it
    /// disconnect. Returns whether it was a member.
    pub fn remove(&self, id: &NodeId) -> bool {
        let Some(endpoint) = self.shared.member(id) else { return false };
        endpoint.leave(&self.shared);
        true
    }

    /// The current members, in id order.
    pub fn members(&self) -> Vec<NodeId> {
        self.shared.members().keys().copied().collect()
    }
}

/// One node's endpoint in an [`InProcessNetwork`].
pub struct InProcessTransport {
    endpoint: Arc<Endpoint>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InProcessTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessTransport").field("id", &self.endpoint.id).finish()
    }
}

/// Removes a pending request when its `request` future ends or is dropped.
struct PendingGuard<'a> {
    endpoint: &'a Endpoint,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.endpoint.pending().remove(&self.id);
    }
}

impl InProcessTransport {
    fn check(&self, payload: &[u8]) -> Result<(), TransportError> {
        if self.endpoint.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let max = self.shared.config.max_message_len;
        if payload.len() > max {
            return Err(TransportError::MessageTooLarge { len: payload.len(), max });
        }
        Ok(())
    }

    fn peer(&self, to: NodeId) -> Result<Arc<Endpoint>, TransportError> {
        self.shared.member(&to).ok_or(TransportError::UnknownPeer(to))
    }

    async fn request_inner(
        &self,
        channel: ChannelId,
        to: NodeId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        self.check(&payload)?;
        let peer = self.peer(to)?;
        // The timeout covers the whole request, including waiting for room in the peer's queue.
        let deadline = self.shared.timer.now() + timeout;
        let id = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = async_channel::bounded(1);
        self.endpoint.pending().insert(id, (to, tx));
        let _guard = PendingGuard { endpoint: &self.endpoint, id };
        let me = &self.endpoint;
        let exchange = async move {
            let item = Item::Request { id: RequestId(id), payload };
            peer.deliver(channel, me, item).await?;
            rx.recv().await.unwrap_or(Err(TransportError::Disconnected(to)))
        };
        let sleep = self.shared.timer.sleep_until(deadline);
        match select(Box::pin(exchange), sleep).await {
            Either::Left((result, _)) => result,
            Either::Right(((), _)) => Err(TransportError::Timeout { peer: to, after: timeout }),
        }
    }
}

impl Transport for InProcessTransport {
    fn local_id(&self) -> NodeId {
        self.endpoint.id
    }

    fn max_message_len(&self) -> usize {
        self.shared.config.max_message_len
    }

    fn send_on(
        &self,
        channel: ChannelId,
        to: NodeId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            self.check(&payload)?;
            let peer = self.peer(to)?;
            peer.deliver(channel, &self.endpoint, Item::Message(payload)).await
        })
    }

    fn request_on(
        &self,
        channel: ChannelId,
        to: NodeId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<u8>, TransportError>> {
        Box::pin(self.request_inner(channel, to, payload, timeout))
    }

    fn respond(
        &self,
        to: NodeId,
        id: RequestId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            self.check(&payload)?;
            let requester = self.peer(to)?;
            let mut pending = requester.pending();
            // Only the peer that was asked may answer.
            if pending.get(&id.0).is_some_and(|(asked, _)| *asked == self.endpoint.id)
                && let Some((_, tx)) = pending.remove(&id.0)
            {
                let _ = tx.try_send(Ok(payload));
            }
            Ok(())
        })
    }

    fn recv_on(&self, channel: ChannelId) -> BoxFuture<'_, Result<Incoming, TransportError>> {
        Box::pin(async move {
            if self.endpoint.closed.load(Ordering::Acquire) {
                return Err(TransportError::Closed);
            }
            self.endpoint.inbox.recv(channel).await
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.endpoint.leave(&self.shared) })
    }
}

impl Drop for InProcessTransport {
    /// Dropping an endpoint leaves the network, like [`Transport::close`].
    fn drop(&mut self) {
        futures_util::FutureExt::now_or_never(Transport::close(self));
    }
}
