//! A node's inbound side, shared by the in-process and TCP transports: one queue per
//! [`ChannelId`], and link connectivity kept as *state* that each channel reports in order
//! with its messages.
//!
//! Connectivity as state rather than queued events is what keeps it bounded: a peer that
//! flaps a thousand times while a channel is not read costs nothing, and when the channel
//! is read it reports where each link stands. The order rules of the
//! [`Transport`](llmkg_federation_core::Transport) contract hold per channel:
//!
//! - every message of a link is preceded by a `PeerConnected` for it, and
//! - a `PeerDisconnected` comes after the last message of the link it ends.
//!
//! Links are told apart by an *epoch* the transport assigns (a connection number): each
//! queued message carries the epoch of the link it arrived on. A channel that has reported
//! a peer connected at epoch `e` and meets a message of a later epoch reports the
//! disconnect of `e` and the connect of the new one before the message.
//!
//! The queues themselves are not bounded here: each entry carries a release callback
//! ([`OnTaken`]) that the transport uses to bound them (the in-process transport returns a
//! slot of the channel's capacity; TCP reports the bytes taken to the peer's signal, which
//! wakes the writer of its current connection to compute new credit), run when the entry is
//! taken.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use event_listener::{Event, listener};
use llmkg_federation_core::{ChannelId, Incoming, NodeId, RequestId, TransportError};

/// Run when a queued entry is taken by the application (not when it is discarded at close),
/// with the inbox locked: it must not call back into the inbox.
pub(crate) type OnTaken = Box<dyn FnOnce() + Send>;

/// What a peer sent on a channel.
pub(crate) enum Item {
    Message(Vec<u8>),
    Request { id: RequestId, payload: Vec<u8> },
}

impl Item {
    pub(crate) fn len(&self) -> usize {
        match self {
            Item::Message(payload) | Item::Request { payload, .. } => payload.len(),
        }
    }
}

/// What a sender has waiting on a channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Queued {
    pub(crate) entries: usize,
    pub(crate) bytes: u64,
}

/// What an entry of `len` payload bytes counts against its sender's room: its length plus a
/// fixed overhead, so that empty messages are not free.
pub(crate) fn charge(len: usize) -> u64 {
    (len as u64).saturating_add(ENTRY_OVERHEAD)
}

/// The fixed part of [`charge`].
pub(crate) const ENTRY_OVERHEAD: u64 = 64;

struct Entry {
    from: NodeId,
    epoch: u64,
    item: Item,
    on_taken: Option<OnTaken>,
}

/// A link as reported or known: its epoch and whether it is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    epoch: u64,
    up: bool,
}

#[derive(Default)]
struct Channel {
    queue: VecDeque<Entry>,
    /// The last link of each peer this channel reported, and whether it reported it up or
    /// (already) down.
    reported: HashMap<NodeId, Link>,
    /// Queued entries per sender, and their charged bytes (see [`charge`]).
    queued_from: HashMap<NodeId, Queued>,
    /// Peers whose link changed since this channel last caught up with them.
    dirty: BTreeSet<NodeId>,
}

struct State {
    closed: bool,
    /// The latest link of every peer that had one, up or down.
    links: HashMap<NodeId, Link>,
    channels: Vec<Channel>,
}

/// See the [module documentation](self).
pub(crate) struct Inbox {
    local: NodeId,
    state: Mutex<State>,
    /// One per channel: notified when the channel may have something new.
    events: Vec<Event>,
}

impl Inbox {
    pub(crate) fn new(local: NodeId) -> Self {
        let channels = ChannelId::all().map(|_| Channel::default()).collect();
        Self {
            local,
            state: Mutex::new(State { closed: false, links: HashMap::new(), channels }),
            events: ChannelId::all().map(|_| Event::new()).collect(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify_all(&self) {
        for event in &self.events {
            event.notify(usize::MAX);
        }
    }

    /// The link to `peer` is up, as link `epoch` (larger than any earlier link's epoch).
    pub(crate) fn link_up(&self, peer: NodeId, epoch: u64) {
        self.set_link(peer, Some(epoch), None);
    }

    /// Link `epoch` to `peer` is down. Ignored if `peer`'s latest link is another one (a
    /// newer link is up already: the old one's end must not take it down).
    pub(crate) fn link_down(&self, peer: NodeId, epoch: u64) {
        self.set_link(peer, None, Some(epoch));
    }

    fn set_link(&self, peer: NodeId, epoch: Option<u64>, ending: Option<u64>) {
        if peer == self.local {
            return;
        }
        {
            let mut state = self.state();
            if state.closed {
                return;
            }
            let old = state.links.get(&peer).copied();
            if let (Some(ending), Some(old)) = (ending, old)
                && old.epoch != ending
            {
                return;
            }
            let new = match (epoch, old) {
                (Some(epoch), _) => Link { epoch, up: true },
                (None, Some(link)) => Link { up: false, ..link },
                (None, None) => return,
            };
            if old == Some(new) {
                return;
            }
            state.links.insert(peer, new);
            for channel in &mut state.channels {
                channel.dirty.insert(peer);
            }
        }
        self.notify_all();
    }

    /// Queues `item` from `from`, received on its link `epoch` (ignored for the node's own
    /// messages). `Err` gives the item back if the inbox is closed.
    pub(crate) fn push(
        &self,
        channel: ChannelId,
        from: NodeId,
        epoch: u64,
        item: Item,
        on_taken: Option<OnTaken>,
    ) -> Result<(), Item> {
        {
            let mut state = self.state();
            if state.closed {
                return Err(item);
            }
            let Some(ch) = state.channels.get_mut(channel.index()) else { return Err(item) };
            let queued = ch.queued_from.entry(from).or_default();
            queued.entries += 1;
            queued.bytes = queued.bytes.saturating_add(charge(item.len()));
            ch.queue.push_back(Entry { from, epoch, item, on_taken });
        }
        if let Some(event) = self.events.get(channel.index()) {
            // `notify(1)` would only make sure *some* listener is notified: with two readers
            // of one channel and two entries, the second reader could sleep on the second.
            event.notify_additional(1);
        }
        Ok(())
    }

    /// What `from` has waiting on `channel`.
    #[cfg(feature = "tcp")]
    pub(crate) fn queued_from(&self, channel: ChannelId, from: &NodeId) -> Queued {
        self.state()
            .channels
            .get(channel.index())
            .and_then(|c| c.queued_from.get(from).copied())
            .unwrap_or_default()
    }

    /// What `from` has waiting on each channel.
    #[cfg(feature = "tcp")]
    pub(crate) fn queued_all(&self, from: &NodeId) -> [Queued; ChannelId::COUNT] {
        let state = self.state();
        std::array::from_fn(|i| {
            state.channels.get(i).and_then(|c| c.queued_from.get(from).copied()).unwrap_or_default()
        })
    }

    /// Closes the inbox: every `recv` returns [`TransportError::Closed`]; queued entries are
    /// dropped without running their release callbacks.
    pub(crate) fn close(&self) {
        let dropped: Vec<Channel> = {
            let mut state = self.state();
            state.closed = true;
            state.links.clear();
            state.channels.iter_mut().map(std::mem::take).collect()
        };
        drop(dropped);
        self.notify_all();
    }

    /// The next item on `channel`, waiting until there is one.
    pub(crate) async fn recv(&self, channel: ChannelId) -> Result<Incoming, TransportError> {
        let Some(event) = self.events.get(channel.index()) else {
            return Err(TransportError::Closed);
        };
        loop {
            if let Some(next) = self.try_recv(channel) {
                return next;
            }
            listener!(event => waiting);
            // Checked again after registering, so a notification in between is not missed.
            if let Some(next) = self.try_recv(channel) {
                return next;
            }
            waiting.await;
        }
    }

    /// The next item on `channel` if one is ready.
    pub(crate) fn try_recv(&self, channel: ChannelId) -> Option<Result<Incoming, TransportError>> {
        let mut state = self.state();
        if state.closed {
            return Some(Err(TransportError::Closed));
        }
        let State { links, channels, .. } = &mut *state;
        let ch = channels.get_mut(channel.index())?;
        let (incoming, on_taken) = next(self.local, links, ch)?;
        // Under the lock, so that what is queued and what was released always agree (see
        // `with_queued`). Release callbacks only count and wake; they never call back in.
        if let Some(release) = on_taken {
            release();
        }
        Some(Ok(incoming))
    }

    /// Entries queued on `channel` (connectivity not counted).
    #[cfg(test)]
    fn queued(&self, channel: ChannelId) -> usize {
        self.state().channels.get(channel.index()).map_or(0, |c| c.queue.len())
    }
}

/// Decides what `channel` delivers next: a connectivity change that must come first, or its
/// oldest entry.
///
/// Per peer, a channel reports the latest link it knows of: `Up` before the link's first
/// message, `Down` after its last one. Links that came and went while the channel was not
/// read are skipped, except that the last one is always reported (up, and down if it is down
/// by then).
fn next(
    local: NodeId,
    links: &HashMap<NodeId, Link>,
    ch: &mut Channel,
) -> Option<(Incoming, Option<OnTaken>)> {
    // The oldest entry's link must be the one reported, first.
    while let Some(head) = ch.queue.front() {
        let (from, epoch) = (head.from, head.epoch);
        if from == local {
            break;
        }
        match ch.reported.get(&from).copied() {
            Some(Link { epoch: e, up: true }) if e == epoch => break,
            Some(Link { epoch: e, up: true }) if e < epoch => {
                ch.reported.insert(from, Link { epoch: e, up: false });
                return Some((Incoming::PeerDisconnected { peer: from }, None));
            }
            Some(Link { epoch: e, .. }) if e >= epoch => {
                // From a link this channel already reported over (a message that was on its
                // way when its link ended): it cannot be delivered in order any more. It is
                // dropped, and its room given back.
                if let Some(release) = take_head(ch).and_then(|e| e.on_taken) {
                    release();
                }
            }
            _ => {
                ch.reported.insert(from, Link { epoch, up: true });
                return Some((Incoming::PeerConnected { peer: from }, None));
            }
        }
    }
    // Links that changed, for peers with nothing queued here (a peer with entries queued is
    // caught up when they reach the front).
    let mut settled = Vec::new();
    let mut change = None;
    for peer in &ch.dirty {
        if ch.queued_from.get(peer).is_some_and(|q| q.entries > 0) {
            continue;
        }
        let have = ch.reported.get(peer).copied();
        let Some(want) = links.get(peer).copied() else {
            settled.push(*peer);
            continue;
        };
        match have {
            Some(h) if h == want => settled.push(*peer),
            Some(Link { epoch, up: true }) => {
                change = Some((*peer, Link { epoch, up: false }));
                break;
            }
            Some(Link { epoch, up: false }) if epoch >= want.epoch => settled.push(*peer),
            _ => {
                change = Some((*peer, Link { epoch: want.epoch, up: true }));
                break;
            }
        }
    }
    for peer in settled {
        ch.dirty.remove(&peer);
    }
    if let Some((peer, link)) = change {
        ch.reported.insert(peer, link);
        let incoming = if link.up {
            Incoming::PeerConnected { peer }
        } else {
            Incoming::PeerDisconnected { peer }
        };
        return Some((incoming, None));
    }
    let entry = take_head(ch)?;
    let incoming = match entry.item {
        Item::Message(payload) => Incoming::Message { from: entry.from, payload },
        Item::Request { id, payload } => Incoming::Request { from: entry.from, id, payload },
    };
    Some((incoming, entry.on_taken))
}

fn take_head(ch: &mut Channel) -> Option<Entry> {
    let entry = ch.queue.pop_front()?;
    if let Some(q) = ch.queued_from.get_mut(&entry.from) {
        q.entries = q.entries.saturating_sub(1);
        q.bytes = q.bytes.saturating_sub(charge(entry.item.len()));
        if q.entries == 0 {
            ch.queued_from.remove(&entry.from);
        }
    }
    Some(entry)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use llmkg_federation_core::NodeKeypair;

    use super::*;

    fn node(n: u8) -> NodeId {
        NodeKeypair::from_secret_bytes([n; 32]).node_id()
    }

    const A: ChannelId = ChannelId::DEFAULT;

    fn b() -> ChannelId {
        ChannelId::new(1).unwrap()
    }

    fn msg(bytes: &[u8]) -> Item {
        Item::Message(bytes.to_vec())
    }

    fn drain(inbox: &Inbox, channel: ChannelId) -> Vec<Incoming> {
        std::iter::from_fn(|| inbox.try_recv(channel).map(|r| r.unwrap())).collect()
    }

    fn connected(peer: NodeId) -> Incoming {
        Incoming::PeerConnected { peer }
    }

    fn disconnected(peer: NodeId) -> Incoming {
        Incoming::PeerDisconnected { peer }
    }

    fn message(from: NodeId, payload: &[u8]) -> Incoming {
        Incoming::Message { from, payload: payload.to_vec() }
    }

    #[test]
    fn each_channel_reports_connectivity_around_its_own_messages() {
        let (me, p) = (node(1), node(2));
        let inbox = Inbox::new(me);
        inbox.link_up(p, 1);
        inbox.push(A, p, 1, msg(b"a1"), None).ok().unwrap();
        inbox.link_down(p, 1);
        assert_eq!(drain(&inbox, A), vec![connected(p), message(p, b"a1"), disconnected(p)]);
        // Channel b saw the link come and go with nothing on it: it still reports both.
        assert_eq!(drain(&inbox, b()), vec![connected(p), disconnected(p)]);
        assert_eq!(drain(&inbox, b()), vec![]);
        inbox.link_up(p, 2);
        assert_eq!(drain(&inbox, b()), vec![connected(p)]);
        assert_eq!(drain(&inbox, A), vec![connected(p)]);
    }

    #[test]
    fn a_message_of_a_newer_link_is_preceded_by_the_old_links_disconnect() {
        let (me, p) = (node(1), node(2));
        let inbox = Inbox::new(me);
        inbox.link_up(p, 1);
        inbox.push(A, p, 1, msg(b"old"), None).ok().unwrap();
        inbox.link_down(p, 1);
        inbox.link_up(p, 2);
        inbox.push(A, p, 2, msg(b"new"), None).ok().unwrap();
        assert_eq!(
            drain(&inbox, A),
            vec![
                connected(p),
                message(p, b"old"),
                disconnected(p),
                connected(p),
                message(p, b"new")
            ]
        );
    }

    #[test]
    fn flapping_while_unread_costs_nothing_and_reports_the_current_state() {
        let (me, p) = (node(1), node(2));
        let inbox = Inbox::new(me);
        inbox.link_up(p, 1);
        assert_eq!(drain(&inbox, A), vec![connected(p)]);
        for epoch in 2..10_000 {
            inbox.link_down(p, epoch - 1);
            inbox.link_up(p, epoch);
        }
        assert_eq!(inbox.queued(A), 0);
        assert_eq!(drain(&inbox, A), vec![disconnected(p), connected(p)]);
        assert_eq!(drain(&inbox, b()), vec![connected(p)]);
    }

    #[test]
    fn own_messages_need_no_link_and_taking_an_entry_releases_it_once() {
        let me = node(1);
        let inbox = Inbox::new(me);
        let released = Arc::new(AtomicUsize::new(0));
        let r = released.clone();
        let release: OnTaken = Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        inbox.push(b(), me, 0, msg(b"self"), Some(release)).ok().unwrap();
        inbox.link_up(me, 1); // ignored: no connectivity for oneself
        assert_eq!(drain(&inbox, A), vec![]);
        assert_eq!(released.load(Ordering::SeqCst), 0);
        assert_eq!(drain(&inbox, b()), vec![message(me, b"self")]);
        assert_eq!(released.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn close_fails_receivers_and_refuses_pushes() {
        let (me, p) = (node(1), node(2));
        let inbox = Inbox::new(me);
        inbox.link_up(p, 1);
        inbox.push(A, p, 1, msg(b"x"), None).ok().unwrap();
        inbox.close();
        assert!(matches!(inbox.try_recv(A), Some(Err(TransportError::Closed))));
        assert!(inbox.push(A, p, 1, msg(b"y"), None).is_err());
        let waiting = futures_util::FutureExt::now_or_never(inbox.recv(b()));
        assert!(matches!(waiting, Some(Err(TransportError::Closed))));
    }

    #[test]
    fn a_waiting_receiver_wakes_for_its_channel() {
        let (me, p) = (node(1), node(2));
        let inbox = Arc::new(Inbox::new(me));
        inbox.link_up(p, 1);
        assert_eq!(drain(&inbox, b()), vec![connected(p)]);
        let waiter = {
            let inbox = inbox.clone();
            std::thread::spawn(move || futures_executor_block_on(inbox.recv(b())))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        inbox.push(b(), p, 1, msg(b"late"), None).ok().unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), message(p, b"late"));
    }

    /// A minimal executor for the test above (the crate is runtime-agnostic).
    fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Wake, Waker};
        struct Thread(std::thread::Thread);
        impl Wake for Thread {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Thread(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
                return out;
            }
            std::thread::park();
        }
    }
}
