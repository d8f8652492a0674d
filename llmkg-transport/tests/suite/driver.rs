#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The generic driver: start first, connectivity in order with messages, channels, requests.
//!
//! Most tests drive it with a small scripted transport defined here, so they check the driver
//! alone; the last one runs two drivers per node over the in-process transport.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_util::future::join;
use llmkg_federation_core::encoding;
use llmkg_federation_core::{
    BoxFuture, ChannelId, HostInfo, Incoming, LinkState, NodeId, NodeKeypair, Protocol, RequestId,
    Time, Transmit, Transport, TransportError,
};
use llmkg_transport::driver::InboundRequest;
use llmkg_transport::{Driver, DriverConfig, DriverExit, DriverHandle, StdTimer};

fn node(i: u8) -> NodeId {
    NodeKeypair::from_secret_bytes([i; 32]).node_id()
}

fn ch(n: u8) -> ChannelId {
    ChannelId::new(n).unwrap()
}

// ----- a scripted transport -----

/// A transport whose inbound side is scripted per channel and whose outbound side is recorded.
struct Scripted {
    id: NodeId,
    max: usize,
    inboxes: Vec<(Sender<Incoming>, Receiver<Incoming>)>,
    sent: Mutex<Vec<(ChannelId, NodeId, Vec<u8>)>>,
    responses: Mutex<Vec<(NodeId, RequestId, Vec<u8>)>>,
    requests: Mutex<Vec<(ChannelId, NodeId, Vec<u8>)>>,
}

impl Scripted {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            id: node(200),
            max,
            inboxes: (0..ChannelId::COUNT).map(|_| async_channel::unbounded()).collect(),
            sent: Mutex::default(),
            responses: Mutex::default(),
            requests: Mutex::default(),
        })
    }

    fn push(&self, channel: ChannelId, incoming: Incoming) {
        self.inboxes[channel.index()].0.try_send(incoming).unwrap();
    }

    fn message(&self, channel: ChannelId, from: NodeId, n: u64) {
        let payload = encoding::try_encode(&n).unwrap();
        self.push(channel, Incoming::Message { from, payload });
    }

    fn sent(&self) -> Vec<(ChannelId, NodeId, u64)> {
        let sent = self.sent.lock().unwrap();
        sent.iter().map(|(c, to, b)| (*c, *to, encoding::decode::<u64>(b).unwrap())).collect()
    }
}

impl Transport for Scripted {
    fn local_id(&self) -> NodeId {
        self.id
    }

    fn max_message_len(&self) -> usize {
        self.max
    }

    fn send_on(
        &self,
        channel: ChannelId,
        to: NodeId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), TransportError>> {
        self.sent.lock().unwrap().push((channel, to, payload));
        Box::pin(async { Ok(()) })
    }

    fn request_on(
        &self,
        channel: ChannelId,
        to: NodeId,
        payload: Vec<u8>,
        _timeout: Duration,
    ) -> BoxFuture<'_, Result<Vec<u8>, TransportError>> {
        self.requests.lock().unwrap().push((channel, to, payload.clone()));
        // The scripted peer answers with the request reversed.
        Box::pin(async move { Ok(payload.into_iter().rev().collect()) })
    }

    fn respond(
        &self,
        to: NodeId,
        id: RequestId,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), TransportError>> {
        self.responses.lock().unwrap().push((to, id, payload));
        Box::pin(async { Ok(()) })
    }

    fn recv_on(&self, channel: ChannelId) -> BoxFuture<'_, Result<Incoming, TransportError>> {
        let rx = self.inboxes[channel.index()].1.clone();
        Box::pin(async move { rx.recv().await.map_err(|_| TransportError::Closed) })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        for (tx, _) in &self.inboxes {
            tx.close();
        }
        Box::pin(async {})
    }
}

// ----- a core that reports every input -----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    Start(usize),
    Peer(NodeId, LinkState),
    Message(NodeId, u64),
}

/// Reports each input as an event and answers message `n` with `n + 1000`.
#[derive(Default)]
struct Recorder {
    started: bool,
    out: VecDeque<Transmit<u64>>,
    events: VecDeque<Input>,
}

impl Protocol for Recorder {
    type Message = u64;
    type Event = Input;

    fn handle_message(&mut self, _now: Time, from: NodeId, n: u64) {
        self.events.push_back(Input::Message(from, n));
        self.out.push_back(Transmit { to: from, message: n + 1000 });
    }
    fn handle_timeout(&mut self, _now: Time) {}
    fn poll_transmit(&mut self) -> Option<Transmit<u64>> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Time> {
        None
    }
    fn poll_event(&mut self) -> Option<Input> {
        self.events.pop_front()
    }
    fn handle_start(&mut self, _now: Time, host: HostInfo) {
        assert!(!self.started && self.events.is_empty(), "handle_start comes first, once");
        self.started = true;
        self.events.push_back(Input::Start(host.max_message_len));
    }
    fn handle_peer(&mut self, _now: Time, peer: NodeId, link: LinkState) {
        self.events.push_back(Input::Peer(peer, link));
    }
}

fn driver(
    transport: &Arc<Scripted>,
    config: DriverConfig,
) -> (Driver<Recorder>, DriverHandle<Recorder>) {
    let transport: Arc<dyn Transport> = transport.clone();
    Driver::with_config(Recorder::default(), transport, Arc::new(StdTimer::new()), config)
}

/// Takes `n` events, waits until the transport has `sent` messages, then stops the driver.
async fn observe(
    handle: DriverHandle<Recorder>,
    transport: Arc<Scripted>,
    n: usize,
    sent: usize,
) -> Vec<Input> {
    let mut events = Vec::new();
    while events.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(10), handle.next_event()).await;
        events.push(next.expect("the driver stalled").expect("the driver stopped"));
    }
    for _ in 0..1000 {
        if transport.sent.lock().unwrap().len() >= sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.shutdown();
    events
}

#[tokio::test]
async fn start_comes_first_and_connectivity_is_forwarded_in_order_with_messages() {
    let t = Scripted::new(4321);
    let (a, c3) = (node(1), ch(3));
    t.push(c3, Incoming::PeerConnected { peer: a });
    t.message(c3, a, 1);
    t.message(c3, a, 2);
    t.push(c3, Incoming::PeerDisconnected { peer: a });
    t.push(c3, Incoming::PeerConnected { peer: a });
    t.message(c3, a, 3);
    // Another channel's traffic is not this driver's.
    t.message(ChannelId::DEFAULT, a, 99);

    let (driver, handle) = driver(&t, DriverConfig::on_channel(c3));
    assert!(handle.call(|core, _| core.started), "started before the host can reach the core");
    let (exit, events) = join(driver.run(), observe(handle.clone(), t.clone(), 7, 3)).await;
    assert!(matches!(exit, DriverExit::Shutdown), "{exit:?}");
    assert_eq!(
        events,
        vec![
            Input::Start(4321),
            Input::Peer(a, LinkState::Up),
            Input::Message(a, 1),
            Input::Message(a, 2),
            Input::Peer(a, LinkState::Down),
            Input::Peer(a, LinkState::Up),
            Input::Message(a, 3),
        ]
    );
    assert_eq!(t.sent(), vec![(c3, a, 1001), (c3, a, 1002), (c3, a, 1003)], "sent on channel 3");
    let stats = handle.stats();
    assert_eq!((stats.connectivity_changes, stats.messages_received), (3, 3));
    assert!(handle.try_next_event().is_none());
    assert_eq!(t.inboxes[0].1.len(), 1, "channel 0 was never read");
}

#[tokio::test]
async fn two_drivers_share_one_transport_on_two_channels() {
    let t = Scripted::new(1 << 20);
    let a = node(1);
    t.push(ch(1), Incoming::PeerConnected { peer: a });
    t.message(ch(1), a, 1);
    t.message(ch(2), a, 2);
    t.push(ch(2), Incoming::PeerDisconnected { peer: a });
    let (d1, h1) = driver(&t, DriverConfig::on_channel(ch(1)));
    let (d2, h2) = driver(&t, DriverConfig::on_channel(ch(2)));
    let drivers = join(d1.run(), d2.run());
    let observers = join(observe(h1, t.clone(), 3, 2), observe(h2, t.clone(), 3, 2));
    let (_, (e1, e2)) = join(drivers, observers).await;
    let max = Input::Start(1 << 20);
    assert_eq!(e1, vec![max.clone(), Input::Peer(a, LinkState::Up), Input::Message(a, 1)]);
    assert_eq!(e2, vec![max, Input::Message(a, 2), Input::Peer(a, LinkState::Down)]);
    let mut sent = t.sent();
    sent.sort();
    assert_eq!(sent, vec![(ch(1), a, 1001), (ch(2), a, 1002)]);
}

#[tokio::test]
async fn requests_go_to_the_host_through_a_bounded_queue() {
    let t = Scripted::new(1 << 20);
    let (a, b) = (node(1), node(2));
    for (i, from) in [a, b, a].into_iter().enumerate() {
        let payload = vec![i as u8; 3];
        t.push(ChannelId::DEFAULT, Incoming::Request { from, id: RequestId(i as u64), payload });
    }
    // A message after the requests: once the core has it, the driver has seen all three.
    t.message(ChannelId::DEFAULT, a, 5);
    let config = DriverConfig { request_capacity: 2, ..DriverConfig::default() };
    let (driver, handle) = driver(&t, config);
    let host = {
        let handle = handle.clone();
        let t = t.clone();
        async move {
            let events = observe_until_message(&handle).await;
            let first = handle.next_request().await.unwrap();
            let first: InboundRequest = first;
            assert_eq!(
                (first.from, first.id, &first.payload[..]),
                (a, RequestId(0), &[0u8; 3][..])
            );
            handle.respond(&first, b"answer".to_vec()).await.unwrap();
            let second = handle.try_next_request().unwrap();
            assert_eq!((second.from, second.id), (b, RequestId(1)));
            assert!(handle.try_next_request().is_none(), "the third did not fit");
            // The host's own requests go out on the driver's channel.
            let answer = handle.request(b, vec![1, 2, 3], Duration::from_secs(1)).await.unwrap();
            assert_eq!(answer, vec![3, 2, 1]);
            assert_eq!(t.requests.lock().unwrap()[0], (ChannelId::DEFAULT, b, vec![1, 2, 3]));
            handle.shutdown();
            events
        }
    };
    let (_, events) = join(driver.run(), host).await;
    assert_eq!(events.last(), Some(&Input::Message(a, 5)));
    assert_eq!(t.responses.lock().unwrap().clone(), vec![(a, RequestId(0), b"answer".to_vec())]);
    let stats = handle.stats();
    assert_eq!((stats.requests_queued, stats.requests_ignored), (2, 1));
    assert!(handle.next_request().await.is_none(), "the driver has stopped");
}

async fn observe_until_message(handle: &DriverHandle<Recorder>) -> Vec<Input> {
    let mut events = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), handle.next_event()).await;
        let event = next.expect("the driver stalled").expect("the driver stopped");
        let done = matches!(event, Input::Message(..));
        events.push(event);
        if done {
            return events;
        }
    }
}

#[tokio::test]
async fn a_zero_request_capacity_refuses_every_request() {
    let t = Scripted::new(1 << 20);
    let a = node(1);
    for i in 0..3 {
        t.push(
            ChannelId::DEFAULT,
            Incoming::Request { from: a, id: RequestId(i), payload: vec![] },
        );
    }
    t.message(ChannelId::DEFAULT, a, 5);
    let config = DriverConfig { request_capacity: 0, ..DriverConfig::default() };
    let (driver, handle) = driver(&t, config);
    let host = async {
        observe_until_message(&handle).await;
        handle.shutdown();
    };
    join(driver.run(), host).await;
    assert!(handle.try_next_request().is_none());
    let stats = handle.stats();
    assert_eq!((stats.requests_queued, stats.requests_ignored), (0, 3));
}

/// Two drivers of a node, each on its own channel of one in-process transport, each see only
/// their own protocol's messages.
#[tokio::test]
async fn two_protocols_share_in_process_links_on_two_channels() {
    use llmkg_transport::InProcessNetwork;
    use llmkg_transport::echo::{Echo, EchoConfig, EchoEvent};

    let timer: Arc<dyn llmkg_federation_core::Timer> = Arc::new(StdTimer::new());
    let net = InProcessNetwork::new(Arc::clone(&timer));
    let (x, y) = (node(1), node(2));
    let tx: Arc<dyn Transport> = Arc::new(net.join(x).unwrap());
    let ty: Arc<dyn Transport> = Arc::new(net.join(y).unwrap());
    let config = EchoConfig::new(vec![y]).rounds(5).interval(Duration::from_millis(1));
    let mut runs = Vec::new();
    let mut pingers = Vec::new();
    let mut responders = Vec::new();
    for c in [ch(1), ch(2)] {
        let (d, h) = Driver::with_config(
            Echo::new(config.clone()),
            Arc::clone(&tx),
            Arc::clone(&timer),
            DriverConfig::on_channel(c),
        );
        runs.push(d.run());
        pingers.push(h);
        let (d, h) = Driver::with_config(
            Echo::responder(),
            Arc::clone(&ty),
            Arc::clone(&timer),
            DriverConfig::on_channel(c),
        );
        runs.push(d.run());
        responders.push(h);
    }
    let observer = async {
        for pinger in &pingers {
            for _ in 0..5 {
                let event = pinger.next_event().await.unwrap();
                assert!(matches!(event, EchoEvent::Pong { peer, .. } if peer == y), "{event:?}");
            }
        }
        for h in pingers.iter().chain(&responders) {
            h.shutdown();
        }
    };
    join(futures_util::future::join_all(runs), observer).await;
    for h in &responders {
        assert_eq!(h.call(|core, _| core.pings_answered()), 5, "each channel answered its own");
        assert_eq!(h.stats().decode_failures, 0);
    }
}
