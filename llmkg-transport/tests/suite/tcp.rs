#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The TCP + Noise transport: the conformance suite, live-link behavior (ordering,
//! requests, reconnects, simultaneous dials, graceful close), refusals with typed reasons
//! (trust, identity binding, federation, version, timeouts), hostile byte streams from raw
//! clients, and property tests of the pure decoders.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use llmkg_federation_core::{
    CertificateError, ChannelId, Incoming, NodeCertificate, NodeId, NodeKeypair, OrgId, OrgKeypair,
    Role, Timer, Timestamp, Transport, TransportError, TrustAnchors,
};
use llmkg_transport::TokioTimer;
use llmkg_transport::tcp::{
    ConnectionFailure, FederationId, Frame, FrameDecoder, FrameError, HELLO_LEN, HandshakeError,
    HandshakePayload, Hello, MAX_CHUNK_PLAINTEXT, NOISE_PARAMS, PROTOCOL_VERSION, TcpConfig,
    TcpError, TcpTransport, Trust,
};
use llmkg_transport::testing::{Pair, Suite};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio::time::timeout;

/// Generous bound on anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(10);

fn fed() -> FederationId {
    FederationId::from_name("tcp-tests")
}

fn keypair(seed: u8) -> NodeKeypair {
    NodeKeypair::from_secret_bytes([seed; 32])
}

fn id(seed: u8) -> NodeId {
    keypair(seed).node_id()
}

fn config(seed: u8) -> TcpConfig {
    TcpConfig::new(keypair(seed), fed())
}

async fn bind(config: TcpConfig) -> TcpTransport {
    TcpTransport::bind(config).await.unwrap()
}

async fn recv_event(t: &TcpTransport) -> Incoming {
    timeout(PROMPT, t.recv()).await.expect("recv timed out").expect("recv failed")
}

async fn wait_connected(t: &TcpTransport, peer: NodeId) {
    loop {
        if let Incoming::PeerConnected { peer: p } = recv_event(t).await
            && p == peer
        {
            return;
        }
    }
}

async fn wait_disconnected(t: &TcpTransport, peer: NodeId) {
    loop {
        if let Incoming::PeerDisconnected { peer: p } = recv_event(t).await
            && p == peer
        {
            return;
        }
    }
}

/// Fails if `t` reports a link coming up or going down within `window`.
async fn assert_no_link_event(t: &TcpTransport, window: Duration) {
    if let Ok(event) = timeout(window, t.recv()).await {
        panic!("expected no event, got {event:?}");
    }
}

/// The next message, skipping connectivity events about nodes other than `guard` (an event
/// about `guard` fails the test: that link must stay up).
async fn next_message_keeping(t: &TcpTransport, guard: Option<NodeId>) -> (NodeId, Vec<u8>) {
    loop {
        match recv_event(t).await {
            Incoming::Message { from, payload } => return (from, payload),
            Incoming::PeerDisconnected { peer } if Some(peer) == guard => {
                panic!("the healthy link to {peer:?} went down")
            }
            Incoming::PeerConnected { peer } if Some(peer) == guard => {
                panic!("the healthy link to {peer:?} was re-established")
            }
            _ => {}
        }
    }
}

async fn next_message(t: &TcpTransport) -> (NodeId, Vec<u8>) {
    next_message_keeping(t, None).await
}

/// Waits for a published failure matching `pred`; panics with everything seen otherwise.
async fn expect_failure(
    rx: &mut broadcast::Receiver<ConnectionFailure>,
    what: &str,
    pred: impl Fn(&ConnectionFailure) -> bool,
) -> ConnectionFailure {
    let mut seen = Vec::new();
    let found = timeout(PROMPT, async {
        loop {
            match rx.recv().await {
                Ok(f) if pred(&f) => return f,
                Ok(f) => seen.push(format!("{:?}", f.error)),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("failure channel: {e}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {what} failure published; saw {seen:?}"))
}

/// `a` dials `b`; `b` trusts `a` by its allow-list. Returns once both see the link.
async fn connected_pair(seed_a: u8, seed_b: u8) -> (TcpTransport, TcpTransport) {
    let a = bind(config(seed_a)).await;
    let mut cb = config(seed_b);
    cb.trust = Trust::AllowList(HashSet::from([id(seed_a)]));
    let b = bind(cb).await;
    a.add_peer(id(seed_b), b.local_addr()).unwrap();
    wait_connected(&a, id(seed_b)).await;
    wait_connected(&b, id(seed_a)).await;
    (a, b)
}

fn numbered(seq: u64, padding: usize) -> Vec<u8> {
    let mut v = seq.to_be_bytes().to_vec();
    v.resize(8 + padding, (seq % 251) as u8);
    v
}

fn seq_of(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload[..8].try_into().unwrap())
}

/// One message each way between `a` and `b`, failing if either sees the other disconnect.
async fn assert_link_ok(a: &TcpTransport, b: &TcpTransport, tag: u64) {
    let (a_id, b_id) = (a.local_id(), b.local_id());
    a.send(b_id, numbered(tag, 1)).await.unwrap();
    let (from, payload) = next_message_keeping(b, Some(a_id)).await;
    assert_eq!((from, seq_of(&payload)), (a_id, tag));
    b.send(a_id, numbered(tag + 1, 1)).await.unwrap();
    let (from, payload) = next_message_keeping(a, Some(b_id)).await;
    assert_eq!((from, seq_of(&payload)), (b_id, tag + 1));
}

// ---------------------------------------------------------------------------------------
// The conformance suite and live links
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let timer: Arc<dyn Timer> = Arc::new(TokioTimer::new());
    let mut next = 100u8;
    let report = Suite::new(timer)
        .run(|| {
            next += 2;
            let seed = next;
            async move {
                let (a, b) = connected_pair(seed, seed + 1).await;
                Pair { a: Arc::new(a), b: Arc::new(b) }
            }
        })
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(report.passed.len(), 13, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_100k_messages_each_way_in_order() {
    const COUNT: u64 = 100_000;
    let (a, b) = connected_pair(1, 2).await;
    // Mostly small payloads; every 1000th spans several encrypted chunks.
    let size = |seq: u64| if seq % 1000 == 999 { 200_000 } else { (seq % 200) as usize };
    let sender = |from: &'static TcpTransport, to: NodeId| async move {
        for seq in 0..COUNT {
            from.send(to, numbered(seq, size(seq))).await.unwrap();
        }
    };
    let receiver = |at: &'static TcpTransport, from_id: NodeId| async move {
        for expected in 0..COUNT {
            let (from, payload) = next_message_keeping(at, Some(from_id)).await;
            assert_eq!(from, from_id);
            assert_eq!(seq_of(&payload), expected, "lost or reordered");
            assert_eq!(payload.len(), 8 + size(expected));
            assert!(payload[8..].iter().all(|&x| x == (expected % 251) as u8), "altered");
        }
    };
    let a: &'static TcpTransport = Box::leak(Box::new(a));
    let b: &'static TcpTransport = Box::leak(Box::new(b));
    let (a_id, b_id) = (a.local_id(), b.local_id());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(sender(a, b_id));
    tasks.spawn(sender(b, a_id));
    tasks.spawn(receiver(b, a_id));
    tasks.spawn(receiver(a, b_id));
    // The first failure (a panic in any task) ends the test at once.
    while let Some(done) =
        timeout(Duration::from_secs(60), tasks.join_next()).await.expect("exchange took too long")
    {
        done.unwrap();
    }
    let stats = a.stats();
    assert!(stats.frames_out >= COUNT && stats.frames_in >= COUNT, "{stats:?}");
    // Every payload byte went out encrypted (100 large messages alone are 20 MB).
    assert!(stats.bytes_out > 20_000_000 && stats.bytes_in > 20_000_000, "{stats:?}");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_matched_and_time_out() {
    let (a, b) = connected_pair(3, 4).await;
    let (a_id, b_id) = (a.local_id(), b.local_id());
    let b = Arc::new(b);
    // The server answers "ping-N" with "pong-N", in reverse order of arrival, and ignores
    // "ignore".
    let server = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                match b.recv().await {
                    Ok(Incoming::Request { from, id, payload }) => {
                        assert_eq!(from, a_id);
                        if payload == b"ignore" {
                            continue;
                        }
                        held.push((id, payload));
                        if held.len() == 16 {
                            for (id, p) in held.drain(..).rev() {
                                let mut r = b"pong".to_vec();
                                r.extend_from_slice(&p[4..]);
                                b.respond(from, id, r).await.unwrap();
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
    };
    let a = Arc::new(a);
    let mut calls = Vec::new();
    for i in 0..16 {
        let a = a.clone();
        calls.push(tokio::spawn(async move {
            let r = a.request(b_id, format!("ping-{i}").into_bytes(), PROMPT).await.unwrap();
            assert_eq!(r, format!("pong-{i}").into_bytes());
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    // An unanswered request times out, not before its timeout.
    let started = tokio::time::Instant::now();
    let after = Duration::from_millis(200);
    match a.request(b_id, b"ignore".to_vec(), after).await {
        Err(TransportError::Timeout { peer, after: t }) => assert_eq!((peer, t), (b_id, after)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= after);
    // Requests to nodes it cannot reach fail at once.
    match a.request(id(99), b"x".to_vec(), PROMPT).await {
        Err(TransportError::UnknownPeer(p)) => assert_eq!(p, id(99)),
        other => panic!("expected UnknownPeer, got {other:?}"),
    }
    a.close().await;
    b.close().await;
    server.await.unwrap();
}

/// Requests are failed per peer: when the link to one peer dies, only the requests waiting on
/// that peer fail (with `Disconnected`); a request to another peer, outstanding at the same
/// moment, still completes with its answer once that peer responds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_peer_fails_only_its_own_pending_requests() {
    let a = Arc::new(bind(config(140)).await);
    let a_id = a.local_id();
    let trusting_a = |seed: u8| {
        let mut c = config(seed);
        c.trust = Trust::AllowList(HashSet::from([a_id]));
        c
    };
    let b = bind(trusting_a(141)).await;
    let c = bind(trusting_a(142)).await;
    let (b_id, c_id) = (b.local_id(), c.local_id());
    a.add_peer(b_id, b.local_addr()).unwrap();
    a.add_peer(c_id, c.local_addr()).unwrap();
    for (t, peer) in [(&b, a_id), (&c, a_id)] {
        wait_connected(t, peer).await;
    }
    let mut up = HashSet::new();
    while up.len() < 2 {
        if let Incoming::PeerConnected { peer } = recv_event(&a).await {
            up.insert(peer);
        }
    }

    // One request outstanding to each peer; both have arrived, neither is answered yet.
    let to_b = tokio::spawn({
        let a = a.clone();
        async move { a.request(b_id, b"to b".to_vec(), PROMPT * 3).await }
    });
    let to_c = tokio::spawn({
        let a = a.clone();
        async move { a.request(c_id, b"to c".to_vec(), PROMPT * 3).await }
    });
    let mut c_request = None;
    for (t, name) in [(&b, "b"), (&c, "c")] {
        match recv_event(t).await {
            Incoming::Request { from, id, payload } => {
                assert_eq!((from, payload), (a_id, format!("to {name}").into_bytes()));
                if name == "c" {
                    c_request = Some(id);
                }
            }
            other => panic!("{name} expected the request, got {other:?}"),
        }
    }

    // b dies without a goodbye: its transport is dropped, its sockets go with it.
    drop(b);
    match timeout(PROMPT, to_b).await.expect("the request to b was not failed").unwrap() {
        Err(TransportError::Disconnected(p)) => assert_eq!(p, b_id),
        other => panic!("the request to the lost peer ended with {other:?}"),
    }
    wait_disconnected(&a, b_id).await;
    if to_c.is_finished() {
        panic!("the request to c ended when b was lost: {:?}", to_c.await);
    }

    // c answers now: its request completes normally, over a link that stayed up.
    c.respond(a_id, c_request.unwrap(), b"from c".to_vec()).await.unwrap();
    match timeout(PROMPT, to_c).await.expect("the request to c never completed").unwrap() {
        Ok(answer) => assert_eq!(answer, b"from c".to_vec()),
        other => panic!("the request to the healthy peer ended with {other:?}"),
    }
    assert_eq!(a.connected_peers(), vec![c_id]);
    a.close().await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_queued_messages_then_refuses_everything() {
    let (a, b) = connected_pair(5, 6).await;
    let (a_id, b_id) = (a.local_id(), b.local_id());
    // All of it is accepted while b reads nothing: b's credit on the channel (4 MiB, about
    // 24,000 such messages) plus a's outgoing queue (1,024). More would wait for b to read,
    // as flow control should.
    const COUNT: u64 = 1_000;
    for seq in 0..COUNT {
        a.send(b_id, numbered(seq, 100)).await.unwrap();
    }
    // Some of it may still be queued at a when close starts: close sends it out within the
    // flush timeout while b reads.
    let b = Arc::new(b);
    let reader = tokio::spawn({
        let b = b.clone();
        async move {
            for expected in 0..COUNT {
                let (from, payload) = next_message(&b).await;
                assert_eq!((from, seq_of(&payload)), (a_id, expected));
            }
        }
    });
    a.close().await;
    reader.await.unwrap();
    // A goodbye is a clean close: the peer sees a disconnect but no failure.
    let mut failures = b.connection_failures();
    wait_disconnected(&b, a_id).await;
    assert!(failures.try_recv().is_err(), "a graceful close was reported as a failure");
    assert!(matches!(a.send(b_id, vec![1]).await, Err(TransportError::Closed)));
    assert!(matches!(a.request(b_id, vec![1], PROMPT).await, Err(TransportError::Closed)));
    assert!(matches!(a.recv().await, Err(TransportError::Closed)));
    assert!(matches!(a.add_peer(id(77), b.local_addr()), Err(TcpError::Closed)));
    // The listener is gone too.
    assert!(TcpStream::connect(a_local_addr_after_close(&a)).await.is_err());
    b.close().await;
}

fn a_local_addr_after_close(t: &TcpTransport) -> SocketAddr {
    t.local_addr()
}

/// Both ends dial each other at once; both must keep the same connection (the one the
/// smaller id initiated) and use it without further churn.
async fn simultaneous_pair(seed_a: u8, seed_b: u8) {
    let a = bind(config(seed_a)).await;
    let b = bind(config(seed_b)).await;
    let (a_id, b_id) = (a.local_id(), b.local_id());
    a.add_peer(b_id, b.local_addr()).unwrap();
    b.add_peer(a_id, a.local_addr()).unwrap();
    wait_connected(&a, b_id).await;
    wait_connected(&b, a_id).await;
    // Let any duplicate connection be resolved, then drain the events it caused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for t in [&a, &b] {
        let mut up = true;
        while let Ok(Ok(ev)) = timeout(Duration::from_millis(50), t.recv()).await {
            match ev {
                Incoming::PeerConnected { .. } => up = true,
                Incoming::PeerDisconnected { .. } => up = false,
                _ => {}
            }
        }
        assert!(up, "the link must end up up");
    }
    assert_eq!(a.connected_peers(), vec![b_id]);
    assert_eq!(b.connected_peers(), vec![a_id]);
    // From now on the one remaining link carries everything, with no further churn.
    for round in 0..100 {
        assert_link_ok(&a, &b, round * 2).await;
    }
    // At most the two simultaneous connections were ever made: no redial was needed.
    for t in [&a, &b] {
        let s = t.stats();
        assert!(s.connections_accepted + s.connections_dialed <= 2, "{s:?}");
        assert_eq!(s.connections_failed, 0, "{s:?}");
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_settle_on_one_link() {
    // The race does not happen on every run; several pairs make it all but certain.
    let pairs = (0..6u8).map(|i| simultaneous_pair(50 + 2 * i, 51 + 2 * i));
    futures_util::future::join_all(pairs).await;
}

/// Kill = drop the peer's runtime without any graceful shutdown; restart = a new transport
/// with the same identity on the same port. The first node must reconnect by itself.
#[test]
fn killed_peer_is_reconnected_automatically() {
    let rt_a =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let b_config = || {
        let mut c = config(10);
        c.trust = Trust::AllowList(HashSet::from([id(9)]));
        c
    };
    let rt_b =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let b = rt_b.block_on(bind(b_config()));
    let b_addr = b.local_addr();
    let a = Arc::new(rt_a.block_on(bind(config(9))));
    let (a_id, b_id) = (id(9), id(10));
    let mut failures = a.connection_failures();
    a.add_peer(b_id, b_addr).unwrap();
    rt_a.block_on(async {
        wait_connected(&a, b_id).await;
        a.send(b_id, b"before".to_vec()).await.unwrap();
    });
    rt_b.block_on(async {
        wait_connected(&b, a_id).await;
        assert_eq!(next_message(&b).await, (a_id, b"before".to_vec()));
    });
    // A request in flight when the peer dies fails with Disconnected, not a timeout.
    let in_flight = {
        let a = a.clone();
        rt_a.spawn(async move { a.request(b_id, b"never answered".to_vec(), PROMPT * 3).await })
    };
    rt_b.block_on(async {
        assert!(matches!(recv_event(&b).await, Incoming::Request { .. }));
    });

    rt_b.shutdown_background();
    drop(b);

    rt_a.block_on(async {
        wait_disconnected(&a, b_id).await;
        match in_flight.await.unwrap() {
            Err(TransportError::Disconnected(p)) => assert_eq!(p, b_id),
            other => panic!("expected Disconnected, got {other:?}"),
        }
        let f = expect_failure(&mut failures, "lost connection", |f| f.peer == Some(b_id)).await;
        assert!(
            matches!(
                f.error,
                TcpError::ConnectionLost | TcpError::Io(_) | TcpError::Frame(FrameError::Truncated)
            ),
            "{f:?}"
        );
        // Queued while the peer is down: delivered once it is back.
        for seq in 0..10 {
            a.send(b_id, numbered(seq, 10)).await.unwrap();
        }
    });

    // Restart on the same port (the old listener may take a moment to be released).
    let rt_b2 =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let b2 = rt_b2.block_on(async {
        let deadline = tokio::time::Instant::now() + PROMPT;
        loop {
            let mut c = b_config();
            c.listen_addr = b_addr;
            match TcpTransport::bind(c).await {
                Ok(t) => break t,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot rebind: {e}"),
            }
        }
    });
    rt_a.block_on(wait_connected(&a, b_id));
    rt_b2.block_on(async {
        wait_connected(&b2, a_id).await;
        for expected in 0..10 {
            let (from, payload) = next_message(&b2).await;
            assert_eq!((from, seq_of(&payload)), (a_id, expected));
        }
        b2.send(a_id, b"back".to_vec()).await.unwrap();
    });
    rt_a.block_on(async {
        assert_eq!(next_message(&a).await, (b_id, b"back".to_vec()));
        a.close().await;
    });
    rt_b2.block_on(b2.close());
}

// ---------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_identity_is_refused() {
    let mut ca = config(11);
    ca.trust = Trust::AllowList(HashSet::from([id(13)])); // not 12
    let a = bind(ca).await;
    let b = bind(config(12)).await;
    let mut failures = a.connection_failures();
    let mut b_failures = b.connection_failures();
    b.add_peer(a.local_id(), a.local_addr()).unwrap();
    let f = expect_failure(&mut failures, "UntrustedPeer", |f| {
        matches!(f.error, TcpError::Handshake(HandshakeError::UntrustedPeer(_)))
    })
    .await;
    match f.error {
        TcpError::Handshake(HandshakeError::UntrustedPeer(who)) => assert_eq!(who, id(12)),
        _ => unreachable!(),
    }
    assert_eq!(f.peer, Some(id(12)));
    assert!(a.connected_peers().is_empty());
    assert!(a.stats().connections_refused >= 1);
    // The refused node is not a peer: nothing can be sent to it.
    assert!(matches!(a.send(id(12), vec![1]).await, Err(TransportError::UnknownPeer(_))));
    // The dialer never had a link: no acceptance came, so it saw its dials refused (and
    // backs off), never a PeerConnected.
    expect_failure(&mut b_failures, "dial refused", |f| {
        f.peer == Some(id(11))
            && matches!(f.error, TcpError::Handshake(HandshakeError::ConnectionClosed))
    })
    .await;
    assert_no_link_event(&b, Duration::from_millis(200)).await;
    assert!(b.connected_peers().is_empty());
    assert_eq!(b.stats().connections_dialed, 0, "{:?}", b.stats());

    // A trust callback works the same way, and can admit.
    let mut cc = config(14);
    cc.trust = Trust::callback(|n| *n == id(12));
    let c = bind(cc).await;
    b.add_peer(c.local_id(), c.local_addr()).unwrap();
    wait_connected(&c, id(12)).await;
    a.close().await;
    b.close().await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_reaches_the_wrong_node_is_refused() {
    let a = bind(config(15)).await;
    let mut cb = config(16);
    cb.trust = Trust::AnyAuthenticated;
    let b = bind(cb).await;
    let mut failures = a.connection_failures();
    // a believes node 17 listens at b's address.
    a.add_peer(id(17), b.local_addr()).unwrap();
    let f = expect_failure(&mut failures, "UnexpectedPeer", |f| {
        matches!(f.error, TcpError::Handshake(HandshakeError::UnexpectedPeer { .. }))
    })
    .await;
    match f.error {
        TcpError::Handshake(HandshakeError::UnexpectedPeer { expected, actual }) => {
            assert_eq!((expected, actual), (id(17), id(16)));
        }
        _ => unreachable!(),
    }
    assert!(a.connected_peers().is_empty());
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_peer_table_refuses_new_identities() {
    let mut ca = config(24);
    ca.trust = Trust::AnyAuthenticated;
    ca.max_peers = 1;
    let a = bind(ca).await;
    let (b, c) = (bind(config(25)).await, bind(config(26)).await);
    let (mut fa, mut fc) = (a.connection_failures(), c.connection_failures());
    b.add_peer(a.local_id(), a.local_addr()).unwrap();
    wait_connected(&a, b.local_id()).await;
    wait_connected(&b, a.local_id()).await;
    c.add_peer(a.local_id(), a.local_addr()).unwrap();
    let f = expect_failure(&mut fa, "TooManyPeers", |f| {
        matches!(f.error, TcpError::Handshake(HandshakeError::TooManyPeers))
    })
    .await;
    assert_eq!(f.peer, Some(c.local_id()), "the refusal names the authenticated node");
    expect_failure(&mut fc, "dial refused", |f| {
        matches!(f.error, TcpError::Handshake(HandshakeError::ConnectionClosed))
    })
    .await;
    assert_no_link_event(&c, Duration::from_millis(100)).await;
    assert_eq!(a.connected_peers(), vec![b.local_id()]);
    assert_link_ok(&a, &b, 0).await;
    for t in [a, b, c] {
        t.close().await;
    }
}

/// `a` (the smaller id) dialed `b`, and then `b`'s identity connects in again, as a `b` that
/// restarted would while `a` has not noticed its old link died. Right after the link was set
/// up that is a simultaneous dial and `a` keeps its own connection; later, it means `b`
/// abandoned the link, and `a` takes the new one instead of shutting `b` out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_the_peer_abandoned_is_replaced_by_its_new_connection() {
    let (mut sa, mut sb) = (70u8, 71u8);
    if id(sa) > id(sb) {
        std::mem::swap(&mut sa, &mut sb);
    }
    let mut ca = config(sa);
    // The window must comfortably hold a raw handshake and a goodbye on a loaded machine.
    ca.handshake_timeout = Duration::from_secs(2);
    let window = 3 * ca.handshake_timeout;
    let a = bind(ca).await;
    let mut cb = config(sb);
    cb.trust = Trust::AllowList(HashSet::from([id(sa)]));
    let b = bind(cb).await;
    let (a_id, b_id) = (a.local_id(), b.local_id());
    a.add_peer(b_id, b.local_addr()).unwrap();
    wait_connected(&a, b_id).await;
    wait_connected(&b, a_id).await;
    let started = tokio::time::Instant::now();

    // At once: the other side's connection loses the tie-break. It gets a goodbye and
    // nothing else; the link carries on.
    let early = raw_handshake(a.local_addr(), &keypair(sb), Forgery::None).await.unwrap();
    let frames = timeout(PROMPT, early.read_frames_until_goodbye(Arc::default())).await;
    assert!(started.elapsed() < window, "the test machine is too slow for this window");
    assert_eq!(frames.unwrap(), Vec::new());
    assert_link_ok(&a, &b, 0).await;

    // Well after: the new connection replaces the old link.
    tokio::time::sleep_until(started + window + Duration::from_millis(100)).await;
    let late = raw_handshake(a.local_addr(), &keypair(sb), Forgery::None).await.unwrap();
    let progress = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn(late.read_frames_until_goodbye(progress));
    wait_disconnected(&a, b_id).await;
    wait_connected(&a, b_id).await;
    wait_disconnected(&b, a_id).await; // the old link was retired with a goodbye
    a.send(b_id, b"over the new link".to_vec()).await.unwrap();
    a.close().await;
    let frames = timeout(PROMPT, reader).await.unwrap().unwrap();
    assert_eq!(frames, vec![Frame::message(ChannelId::DEFAULT, b"over the new link".to_vec())]);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_federation_is_refused_on_both_sides() {
    let a = bind(config(18)).await;
    let mut cb = TcpConfig::new(keypair(19), FederationId::from_name("elsewhere"));
    cb.trust = Trust::AnyAuthenticated;
    let b = bind(cb).await;
    let (mut fa, mut fb) = (a.connection_failures(), b.connection_failures());
    a.add_peer(id(19), b.local_addr()).unwrap();
    let is_mismatch = |f: &ConnectionFailure| {
        matches!(f.error, TcpError::Handshake(HandshakeError::FederationMismatch { .. }))
    };
    let on_b = expect_failure(&mut fb, "FederationMismatch (refusing side)", is_mismatch).await;
    match on_b.error {
        TcpError::Handshake(HandshakeError::FederationMismatch { ours, theirs }) => {
            assert_eq!((ours, theirs), (FederationId::from_name("elsewhere"), fed()));
        }
        _ => unreachable!(),
    }
    expect_failure(&mut fa, "FederationMismatch (dialing side)", is_mismatch).await;
    assert!(a.connected_peers().is_empty() && b.connected_peers().is_empty());
    a.close().await;
    b.close().await;
}

// ---------------------------------------------------------------------------------------
// Raw clients: hostile peers speaking the wire protocol by hand
// ---------------------------------------------------------------------------------------

/// A hand-written client: hello, Noise XX as initiator, then raw encrypted chunks.
struct Raw {
    stream: TcpStream,
    cipher: snow::StatelessTransportState,
    nonce: u64,
}

async fn send_hs(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(&(msg.len() as u16).to_be_bytes()).await.unwrap();
    stream.write_all(msg).await.unwrap();
}

async fn recv_hs(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.ok()?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut msg).await.ok()?;
    Some(msg)
}

#[derive(Clone, Copy, PartialEq)]
enum Forgery {
    None,
    /// Sign a different Noise static key than the one used.
    SignOtherKey,
    /// Put a different hello into the prologue than the one sent.
    TamperPrologue,
    /// Put a payload into XX message 1 (which must be empty).
    PayloadInFirstMessage,
}

/// Runs the client side of the handshake. `None` if the client's own side fails. It does
/// not wait for the node's acceptance: that is the first (empty) chunk the node sends.
async fn raw_handshake(addr: SocketAddr, identity: &NodeKeypair, forgery: Forgery) -> Option<Raw> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let ours = Hello::new(fed()).encode();
    stream.write_all(&ours).await.unwrap();
    let mut theirs = [0u8; HELLO_LEN];
    stream.read_exact(&mut theirs).await.unwrap();
    let mut prologue = ours.to_vec();
    prologue.extend_from_slice(&theirs);
    if forgery == Forgery::TamperPrologue {
        prologue[9] ^= 1; // a different version
    }
    let static_key = snow::Builder::new(NOISE_PARAMS.parse().unwrap()).generate_keypair().unwrap();
    let signed_key = match forgery {
        Forgery::SignOtherKey => {
            snow::Builder::new(NOISE_PARAMS.parse().unwrap()).generate_keypair().unwrap().public
        }
        _ => static_key.public.clone(),
    };
    let payload = HandshakePayload::sign(identity, &signed_key).encode();
    let mut hs = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
        .local_private_key(&static_key.private)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut buf = [0u8; 1024];
    let first: &[u8] = if forgery == Forgery::PayloadInFirstMessage { b"hi" } else { &[] };
    let n = hs.write_message(first, &mut buf).unwrap();
    send_hs(&mut stream, &buf[..n]).await;
    let msg = recv_hs(&mut stream).await?;
    let mut server_payload = [0u8; 1024];
    let n = hs.read_message(&msg, &mut server_payload).ok()?;
    let server = HandshakePayload::decode(&server_payload[..n]).unwrap();
    server.verify(hs.get_remote_static().unwrap()).unwrap();
    let n = hs.write_message(&payload, &mut buf).unwrap();
    send_hs(&mut stream, &buf[..n]).await;
    Some(Raw { stream, cipher: hs.into_stateless_transport_mode().unwrap(), nonce: 0 })
}

impl Raw {
    /// Encrypts `plain` into chunks and writes them.
    async fn send_plain(&mut self, plain: &[u8]) {
        for chunk in plain.chunks(MAX_CHUNK_PLAINTEXT) {
            let mut ct = vec![0u8; chunk.len() + 16];
            let n = self.cipher.write_message(self.nonce, chunk, &mut ct).unwrap();
            self.nonce += 1;
            self.stream.write_all(&(n as u16).to_be_bytes()).await.unwrap();
            self.stream.write_all(&ct[..n]).await.unwrap();
        }
    }
}

/// Node `a` (trusting the raw identity 22) linked to a healthy peer `b`.
struct Victim {
    a: TcpTransport,
    b: TcpTransport,
    failures: broadcast::Receiver<ConnectionFailure>,
}

const RAW: u8 = 22;

async fn victim(seed: u8) -> Victim {
    victim_with(seed, |c| c).await
}

/// [`victim`], with `tweak` applied to the configurations of both nodes.
async fn victim_with(seed: u8, tweak: fn(TcpConfig) -> TcpConfig) -> Victim {
    let a = {
        let mut c = tweak(config(seed));
        c.trust = Trust::AllowList(HashSet::from([id(RAW), id(seed + 1)]));
        // Long enough for the raw clients' handshakes on a loaded machine.
        c.handshake_timeout = Duration::from_secs(2);
        bind(c).await
    };
    let mut cb = tweak(config(seed + 1));
    cb.trust = Trust::AllowList(HashSet::from([id(seed)]));
    let b = bind(cb).await;
    a.add_peer(b.local_id(), b.local_addr()).unwrap();
    wait_connected(&a, b.local_id()).await;
    wait_connected(&b, a.local_id()).await;
    let failures = a.connection_failures();
    assert_link_ok(&a, &b, 0).await;
    Victim { a, b, failures }
}

impl Victim {
    /// Expects a failure of the raw connection matching `pred`, its disconnect event, and
    /// that the healthy link carried on undisturbed.
    async fn expect_refused(
        &mut self,
        what: &str,
        after_handshake: bool,
        pred: impl Fn(&TcpError) -> bool,
    ) -> ConnectionFailure {
        let f = expect_failure(&mut self.failures, what, |f| pred(&f.error)).await;
        if after_handshake {
            assert_eq!(f.peer, Some(id(RAW)));
            // The raw peer was connected, then disconnected; `b` was never affected.
            let mut saw_down = false;
            while !saw_down {
                match recv_event(&self.a).await {
                    Incoming::PeerDisconnected { peer } => {
                        assert_eq!(peer, id(RAW));
                        saw_down = true;
                    }
                    Incoming::PeerConnected { peer } => assert_eq!(peer, id(RAW)),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_link_ok(&self.a, &self.b, 10).await;
        assert_link_ok(&self.a, &self.b, 20).await;
        assert_eq!(self.a.connected_peers(), vec![self.b.local_id()]);
        f
    }

    async fn close(self) {
        self.a.close().await;
        self.b.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_key_not_signed_by_the_identity_is_refused() {
    let mut v = victim(30).await;
    // The node stops at the forged payload; the client may or may not see its msg 3 land.
    let _ = raw_handshake(v.a.local_addr(), &keypair(RAW), Forgery::SignOtherKey).await;
    let f = v
        .expect_refused("BadIdentityBinding", false, |e| {
            matches!(e, TcpError::Handshake(HandshakeError::BadIdentityBinding { .. }))
        })
        .await;
    match f.error {
        TcpError::Handshake(HandshakeError::BadIdentityBinding { claimed }) => {
            assert_eq!(claimed, id(RAW))
        }
        _ => unreachable!(),
    }
    // Nothing from the forger reached the host.
    assert!(matches!(v.a.send(id(RAW), vec![1]).await, Err(TransportError::UnknownPeer(_))));
    v.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_hello_breaks_the_handshake() {
    let v = victim(32).await;
    // The hellos are in the Noise prologue: a client that saw different hellos than the
    // node cannot complete the handshake.
    assert!(
        raw_handshake(v.a.local_addr(), &keypair(RAW), Forgery::TamperPrologue).await.is_none()
    );
    assert!(raw_handshake(v.a.local_addr(), &keypair(RAW), Forgery::None).await.is_some());
    v.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_in_the_first_handshake_message_is_refused() {
    let mut v = victim(46).await;
    assert!(
        raw_handshake(v.a.local_addr(), &keypair(RAW), Forgery::PayloadInFirstMessage)
            .await
            .is_none()
    );
    v.expect_refused("Malformed message 1", false, |e| {
        matches!(e, TcpError::Handshake(HandshakeError::Malformed { .. }))
    })
    .await;
    v.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_the_hello_is_refused() {
    let mut v = victim(34).await;
    let mut s = TcpStream::connect(v.a.local_addr()).await.unwrap();
    s.write_all(&[0xAB; 64]).await.unwrap();
    v.expect_refused("BadMagic", false, |e| {
        matches!(e, TcpError::Handshake(HandshakeError::BadMagic))
    })
    .await;
    // Another protocol version is refused with its own reason.
    let mut s = TcpStream::connect(v.a.local_addr()).await.unwrap();
    let mut hello = Hello::new(fed());
    hello.version = PROTOCOL_VERSION + 1;
    s.write_all(&hello.encode()).await.unwrap();
    v.expect_refused("VersionMismatch", false, |e| {
        matches!(e, TcpError::Handshake(HandshakeError::VersionMismatch { ours: 2, theirs: 3 }))
    })
    .await;
    v.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_times_out_in_the_handshake() {
    let mut v = victim(36).await;
    let _s = TcpStream::connect(v.a.local_addr()).await.unwrap();
    v.expect_refused("handshake Timeout", false, |e| {
        matches!(e, TcpError::Handshake(HandshakeError::Timeout { .. }))
    })
    .await;
    v.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_handshake_closes_only_that_connection() {
    let mut v = victim(38).await;
    let mut raw = raw_handshake(v.a.local_addr(), &keypair(RAW), Forgery::None).await.unwrap();
    let mut junk = vec![0x00, 0x40];
    junk.extend((0..64u8).map(|i| i.wrapping_mul(37)));
    raw.stream.write_all(&junk).await.unwrap();
    v.expect_refused("Decrypt", true, |e| matches!(e, TcpError::Decrypt)).await;
    v.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_closes_only_that_connection() {
    let mut v = victim(40).await;
    let mut raw = raw_handshake(v.a.local_addr(), &keypair(RAW), Forgery::None).await.unwrap();
    // A whole valid frame first: it is delivered.
    let mut plain = Vec::new();
    Frame::message(ChannelId::DEFAULT, b"valid".to_vec()).encode(&mut plain).unwrap();
    // Then a header promising 100 bytes, 10 bytes, and end of stream.
    plain.extend_from_slice(&[0, 0, 0, 100, 0, 0]);
    plain.extend_from_slice(&[7; 10]);
    raw.send_plain(&plain).await;
    raw.stream.shutdown().await.unwrap();
    loop {
        match recv_event(&v.a).await {
            Incoming::Message { from, payload } => {
                assert_eq!((from, payload), (id(RAW), b"valid".to_vec()));
                break;
            }
            Incoming::PeerConnected { peer } => assert_eq!(peer, id(RAW)),
            other => panic!("unexpected {other:?}"),
        }
    }
    v.expect_refused("Truncated", true, |e| matches!(e, TcpError::Frame(FrameError::Truncated)))
        .await;

    // A chunk cut short is truncated too.
    let mut raw = raw_handshake(v.a.local_addr(), &keypair(RAW), Forgery::None).await.unwrap();
    raw.stream.write_all(&[0x01, 0x00]).await.unwrap();
    raw.stream.write_all(&[0u8; 50]).await.unwrap();
    raw.stream.shutdown().await.unwrap();
    v.expect_refused("Truncated chunk", true, |e| {
        matches!(e, TcpError::Frame(FrameError::Truncated))
    })
    .await;
    v.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_only_that_connection() {
    let mut v = victim(42).await;
    let max = llmkg_transport::tcp::MAX_FRAME_LEN;
    let mut raw = raw_handshake(v.a.local_addr(), &keypair(RAW), Forgery::None).await.unwrap();
    // Declares 4 GiB - 1; the node must refuse it from the header alone.
    raw.send_plain(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0]).await;
    let f = v
        .expect_refused("TooLarge", true, |e| {
            matches!(e, TcpError::Frame(FrameError::TooLarge { .. }))
        })
        .await;
    match f.error {
        TcpError::Frame(FrameError::TooLarge { len, max: m }) => {
            assert_eq!((len, m), (u64::from(u32::MAX), max));
        }
        _ => unreachable!(),
    }
    // An unknown frame kind is malformed.
    let mut raw = raw_handshake(v.a.local_addr(), &keypair(RAW), Forgery::None).await.unwrap();
    raw.send_plain(&[0, 0, 0, 0, 0x7F, 0]).await;
    v.expect_refused("Malformed", true, |e| {
        matches!(e, TcpError::Frame(FrameError::Malformed { .. }))
    })
    .await;
    v.close().await;
}

impl Raw {
    /// Reads and decrypts frames until a goodbye (or the end of the stream), counting them
    /// in `progress`.
    ///
    /// It first gives the node plenty of credit on every channel, as a real peer would.
    async fn read_frames_until_goodbye(mut self, progress: Arc<AtomicUsize>) -> Vec<Frame> {
        let mut credit = Vec::new();
        for channel in ChannelId::all() {
            Frame::Credit { channel, bytes: 1 << 30 }.encode(&mut credit).unwrap();
        }
        self.send_plain(&credit).await;
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut frames = Vec::new();
        let mut nonce = 0u64;
        loop {
            let mut len = [0u8; 2];
            if self.stream.read_exact(&mut len).await.is_err() {
                return frames;
            }
            let mut ct = vec![0u8; u16::from_be_bytes(len) as usize];
            self.stream.read_exact(&mut ct).await.unwrap();
            let mut plain = vec![0u8; ct.len()];
            let n = self.cipher.read_message(nonce, &ct, &mut plain).unwrap();
            nonce += 1;
            let mut input = &plain[..n];
            while let Some(f) = decoder.feed(&mut input).unwrap() {
                if f == Frame::Goodbye {
                    return frames;
                }
                if matches!(f, Frame::KeepAlive | Frame::Credit { .. }) {
                    continue;
                }
                frames.push(f);
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// When a new connection replaces a live one (here: the peer "restarted" and dialed in
/// again, eight times in a row, mid-stream), the old connection's writer finishes and says
/// goodbye before the new one takes over the queue: read connection by connection, the
/// stream is complete and in order, nothing lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_connections_hand_over_the_queue_in_order() {
    const HANDOVERS: usize = 8;
    let mut ca = config(60);
    // a must not redial during the test: the connections then come in a known order.
    ca.backoff_initial = Duration::from_secs(60);
    ca.backoff_max = Duration::from_secs(60);
    let a = bind(ca).await;
    let mut cb = config(61);
    cb.trust = Trust::AllowList(HashSet::from([id(60)]));
    // A deep queue keeps the writer in long batches, widening any window in which two
    // writers could take from it at once.
    cb.outgoing_queue = 1 << 16;
    let b = Arc::new(bind(cb).await);
    let (a_id, b_id) = (a.local_id(), b.local_id());
    a.add_peer(b_id, b.local_addr()).unwrap();
    wait_connected(&a, b_id).await;
    wait_connected(&b, a_id).await;
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (b, done) = (b.clone(), done.clone());
        tokio::spawn(async move {
            // Flat out until the hand-overs are over: the queue stays deep and the writer
            // is mid-batch at every switch.
            let mut seq = 0u64;
            while !done.load(Ordering::Relaxed) || seq < 50_000 {
                for _ in 0..1000 {
                    b.send(a_id, numbered(seq, 16)).await.unwrap();
                    seq += 1;
                }
                tokio::task::yield_now().await;
            }
            seq
        })
    };
    // a reads its connection to the end, concurrently (a stalled reader would stall the old
    // writer, and the hand-over would then cut it after the flush timeout).
    let a = Arc::new(a);
    let first_reader = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut first = Vec::new();
            loop {
                match recv_event(&a).await {
                    Incoming::Message { from, payload } => {
                        assert_eq!(from, b_id);
                        first.push(seq_of(&payload));
                    }
                    Incoming::PeerDisconnected { peer } if peer == b_id => return first,
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Clients with a's identity: b adopts each in turn and retires the one before. The
    // next one starts only once the current one is receiving.
    let mut readers = Vec::new();
    for _ in 0..HANDOVERS {
        let raw = raw_handshake(b.local_addr(), &keypair(60), Forgery::None).await.unwrap();
        let progress = Arc::new(AtomicUsize::new(0));
        readers.push(tokio::spawn(raw.read_frames_until_goodbye(progress.clone())));
        timeout(PROMPT, async {
            while progress.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the new connection never received anything");
    }
    done.store(true, Ordering::Relaxed);
    let first = first_reader.await.unwrap();
    assert!(!first.is_empty());
    let total = sender.await.unwrap();
    // Closing b flushes the rest to the last client and says goodbye.
    b.close().await;
    let mut all = first;
    let mut sizes = vec![all.len()];
    for r in readers {
        let frames = timeout(PROMPT, r).await.unwrap().unwrap();
        sizes.push(frames.len());
        all.extend(frames.into_iter().map(|f| match f {
            Frame::Message { payload, .. } => seq_of(&payload),
            other => panic!("unexpected {other:?}"),
        }));
    }
    if all != (0..total).collect::<Vec<_>>() {
        let bad = all.windows(2).position(|w| w[1] != w[0] + 1);
        panic!("stream broken across connections {sizes:?} at {bad:?} of {}", all.len());
    }
    a.close().await;
}

/// A peer that stops reading cannot hold `close` up beyond the flush timeout; concurrent
/// `close` calls all return once the transport is shut down; a waiting `recv` returns
/// `Closed` as soon as the shutdown starts; and the stuck connection is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_bounded_when_a_peer_stops_reading() {
    let mut ca = config(80);
    ca.trust = Trust::AllowList(HashSet::from([id(RAW)]));
    ca.flush_timeout = Duration::from_secs(1);
    let flush = ca.flush_timeout;
    let a = Arc::new(bind(ca).await);
    let mut raw = raw_handshake(a.local_addr(), &keypair(RAW), Forgery::None).await.unwrap();
    wait_connected(&a, id(RAW)).await;
    // Far more than the socket buffers hold: the writer is stuck once they are full.
    for seq in 0..512 {
        a.send(id(RAW), numbered(seq, 64 * 1024)).await.unwrap();
    }
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move { a.recv().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = tokio::time::Instant::now();
    let (first, second) = tokio::join!(a.close(), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        a.close().await;
        started.elapsed()
    });
    let ((), second_done) = (first, second);
    let elapsed = started.elapsed();
    // It let the stuck queue drain for the flush timeout, then gave up: without the bound it
    // would wait for the peer forever. The slack is generous for a loaded machine.
    let bound = flush + Duration::from_secs(4);
    assert!(elapsed >= flush, "close gave up on the queue after {elapsed:?}");
    assert!(elapsed < bound, "close took {elapsed:?}");
    assert!(second_done < bound, "the second close took {second_done:?}");
    assert!(matches!(waiting.await.unwrap(), Err(TransportError::Closed)));
    // The connection was cut: reading what was sent ends, it does not hang.
    let mut sink = vec![0u8; 1 << 16];
    timeout(PROMPT, async {
        while let Ok(n) = raw.stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .expect("the stuck connection was not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payload_is_refused_on_send() {
    let mut ca = config(44);
    ca.max_message_len = 1000;
    let a = bind(ca).await;
    let mut cb = config(45);
    cb.trust = Trust::AllowList(HashSet::from([id(44)]));
    let b = bind(cb).await;
    a.add_peer(id(45), b.local_addr()).unwrap();
    assert_eq!(a.max_message_len(), 1000);
    match a.send(id(45), vec![0; 1001]).await {
        Err(TransportError::MessageTooLarge { len: 1001, max: 1000 }) => {}
        other => panic!("{other:?}"),
    }
    // Invalid configurations are refused up front.
    let mut bad = config(46);
    bad.max_message_len = 0;
    assert!(matches!(TcpTransport::bind(bad).await, Err(TcpError::InvalidConfig(_))));
    assert!(matches!(a.add_peer(id(44), b.local_addr()), Err(TcpError::SelfPeer)));
    a.close().await;
    b.close().await;
}

// ---------------------------------------------------------------------------------------
// Liveness: keepalives and the idle timeout
// ---------------------------------------------------------------------------------------

// An idle timeout ten keepalive intervals long: a healthy link survives a scheduler stalled
// for most of a second on a loaded machine.
const KEEPALIVE: Duration = Duration::from_millis(100);
const IDLE: Duration = Duration::from_secs(1);
/// A keepalive on the wire: a chunk (2-byte length, 16-byte tag) carrying a 5-byte frame.
const KEEPALIVE_WIRE_BYTES: u64 = 2 + 6 + 16;

fn lively(mut c: TcpConfig) -> TcpConfig {
    c.keepalive_interval = KEEPALIVE;
    c.idle_timeout = IDLE;
    c
}

/// An idle but healthy link stays up for many idle timeouts: keepalives flow both ways
/// (counted in bytes, not in frames) and nothing reaches `recv`; messages flow after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_hold_an_idle_link_up() {
    let a = bind(lively(config(90))).await;
    let mut cb = lively(config(91));
    cb.trust = Trust::AllowList(HashSet::from([id(90)]));
    let b = bind(cb).await;
    let (mut fa, mut fb) = (a.connection_failures(), b.connection_failures());
    a.add_peer(id(91), b.local_addr()).unwrap();
    wait_connected(&a, id(91)).await;
    wait_connected(&b, id(90)).await;
    assert_link_ok(&a, &b, 0).await;
    // The counters are updated just after delivery: wait until both sides agree.
    timeout(PROMPT, async {
        // Frames, and bytes too: credit frames are not counted as frames.
        while a.stats().frames_out != b.stats().frames_in
            || b.stats().frames_out != a.stats().frames_in
            || a.stats().bytes_out != b.stats().bytes_in
            || b.stats().bytes_out != a.stats().bytes_in
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("frame counters never settled");
    let measured = tokio::time::Instant::now();
    let before = (a.stats(), b.stats());
    // Three idle timeouts without application traffic: no event at all on either side.
    let quiet = IDLE * 3;
    tokio::join!(assert_no_link_event(&a, quiet), assert_no_link_event(&b, quiet));
    let after = (a.stats(), b.stats());
    // At most one keepalive per interval of the time actually measured (which a loaded
    // machine may stretch beyond `quiet`), plus one in flight.
    let most = (measured.elapsed().as_millis() / KEEPALIVE.as_millis()) as u64 + 1;
    for (from, to, name) in [(before.0, after.0, "a"), (before.1, after.1, "b")] {
        assert_eq!((to.frames_out, to.frames_in), (from.frames_out, from.frames_in), "{name}");
        let (sent, received) = (to.bytes_out - from.bytes_out, to.bytes_in - from.bytes_in);
        assert_eq!(sent % KEEPALIVE_WIRE_BYTES, 0, "{name}: only keepalives were sent");
        let keepalives = sent / KEEPALIVE_WIRE_BYTES;
        assert!((4..=most).contains(&keepalives), "{name} sent {keepalives} keepalives");
        assert!(received >= 4 * KEEPALIVE_WIRE_BYTES, "{name} received {received} bytes");
        assert_eq!(to.connections_failed, from.connections_failed, "{name}");
    }
    assert!(matches!(fa.try_recv(), Err(broadcast::error::TryRecvError::Empty)));
    assert!(matches!(fb.try_recv(), Err(broadcast::error::TryRecvError::Empty)));
    assert_link_ok(&a, &b, 10).await;
    assert_eq!(a.connected_peers(), vec![id(91)]);
    assert_eq!(b.connected_peers(), vec![id(90)]);
    a.close().await;
    b.close().await;
}

/// A peer that completed the handshake and then went silent without closing its socket is
/// cut off with `IdleTimeout` within a bounded time: reported disconnected, its pending
/// request failed with `Disconnected`, its socket closed. The healthy peer is not affected.
/// A keepalive it sent before going silent was accepted and never reached `recv`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_cut_off_by_the_idle_timeout() {
    let mut v = victim_with(92, lively).await;
    let started = tokio::time::Instant::now();
    let mut raw = raw_handshake(v.a.local_addr(), &keypair(RAW), Forgery::None).await.unwrap();
    let mut plain = Vec::new();
    Frame::KeepAlive.encode(&mut plain).unwrap();
    Frame::message(ChannelId::DEFAULT, b"last words".to_vec()).encode(&mut plain).unwrap();
    raw.send_plain(&plain).await;
    wait_connected(&v.a, id(RAW)).await;
    assert_eq!(next_message(&v.a).await, (id(RAW), b"last words".to_vec()));
    // From here on the raw client sends nothing, and keeps its socket open.
    let (answer, failure) = tokio::join!(
        v.a.request(id(RAW), b"anyone there?".to_vec(), PROMPT),
        expect_failure(&mut v.failures, "IdleTimeout", |f| {
            matches!(f.error, TcpError::IdleTimeout { .. })
        }),
    );
    let elapsed = started.elapsed();
    assert!(
        matches!(answer, Err(TransportError::Disconnected(p)) if p == id(RAW)),
        "the pending request ended with {answer:?}"
    );
    assert_eq!(failure.peer, Some(id(RAW)));
    assert!(matches!(failure.error, TcpError::IdleTimeout { after } if after == IDLE));
    assert!(elapsed >= IDLE && elapsed < IDLE * 10, "cut off after {elapsed:?}");
    match recv_event(&v.a).await {
        Incoming::PeerDisconnected { peer } => assert_eq!(peer, id(RAW)),
        other => panic!("unexpected {other:?}"),
    }
    assert_link_ok(&v.a, &v.b, 10).await;
    assert_eq!(v.a.connected_peers(), vec![v.b.local_id()]);
    // The node closed the socket: reading it (the acceptance, keepalives) reaches the end.
    let mut sink = vec![0u8; 1 << 16];
    timeout(PROMPT, async {
        while let Ok(n) = raw.stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .expect("the silent peer's socket was not closed");
    // The healthy link stays up across further idle timeouts.
    tokio::time::sleep(IDLE * 2).await;
    assert_link_ok(&v.a, &v.b, 20).await;
    v.close().await;
}

/// A dialed peer whose link goes quiet for longer than this node's idle timeout (here: its
/// keepalive interval is the 10 s default) is cut off and then redialed by the usual logic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialed_peer_that_goes_quiet_is_redialed() {
    let mut ca = lively(config(94));
    ca.backoff_initial = Duration::from_millis(20);
    ca.backoff_max = Duration::from_millis(100);
    let a = bind(ca).await;
    let mut cb = config(95);
    cb.trust = Trust::AllowList(HashSet::from([id(94)]));
    let b = bind(cb).await;
    let mut failures = a.connection_failures();
    a.add_peer(id(95), b.local_addr()).unwrap();
    wait_connected(&a, id(95)).await;
    let f = expect_failure(&mut failures, "IdleTimeout", |f| {
        matches!(f.error, TcpError::IdleTimeout { .. })
    })
    .await;
    assert_eq!(f.peer, Some(id(95)));
    assert_eq!(f.peer_addr, b.local_addr());
    wait_disconnected(&a, id(95)).await;
    wait_connected(&a, id(95)).await;
    assert!(a.stats().connections_dialed >= 2, "{:?}", a.stats());
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_settings_are_validated() {
    let mut c = config(96);
    c.keepalive_interval = Duration::ZERO;
    assert!(matches!(TcpTransport::bind(c).await, Err(TcpError::InvalidConfig(_))));
    let mut c = config(96);
    c.idle_timeout = c.keepalive_interval;
    assert!(matches!(TcpTransport::bind(c).await, Err(TcpError::InvalidConfig(_))));
    let c = config(96);
    assert_eq!(
        (c.keepalive_interval, c.idle_timeout),
        (Duration::from_secs(10), Duration::from_secs(30))
    );
    let mut c = lively(config(96));
    c.idle_timeout = KEEPALIVE + Duration::from_millis(1);
    TcpTransport::bind(c).await.unwrap().close().await;
}

// ---------------------------------------------------------------------------------------
// Property tests of the pure decoders
// ---------------------------------------------------------------------------------------

fn arb_frame() -> impl Strategy<Value = Frame> {
    let payload = || proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        (0..16u8, any::<bool>(), payload()).prop_map(|(c, more, payload)| Frame::Message {
            channel: ChannelId::new(c).unwrap(),
            more,
            payload
        }),
        (0..16u8, any::<u64>(), any::<bool>(), payload()).prop_map(|(c, id, more, payload)| {
            Frame::Request { channel: ChannelId::new(c).unwrap(), id, more, payload }
        }),
        (any::<u64>(), any::<bool>(), payload()).prop_map(|(id, more, payload)| Frame::Response {
            id,
            more,
            payload
        }),
        (0..16u8, any::<u32>())
            .prop_map(|(c, bytes)| Frame::Credit { channel: ChannelId::new(c).unwrap(), bytes }),
        Just(Frame::KeepAlive),
    ]
}

/// Feeds `bytes` in pieces of the given sizes; returns the frames or the first error.
fn decode_in_pieces(
    decoder: &mut FrameDecoder,
    bytes: &[u8],
    pieces: &[usize],
    max_capacity: usize,
) -> Result<Vec<Frame>, FrameError> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut sizes = pieces.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        let (mut piece, tail) = rest.split_at(n);
        rest = tail;
        while let Some(f) = decoder.feed(&mut piece)? {
            out.push(f);
            assert!(decoder.buffered_capacity() <= max_capacity);
        }
        assert!(piece.is_empty());
        assert!(decoder.buffered_capacity() <= max_capacity, "{}", decoder.buffered_capacity());
    }
    Ok(out)
}

/// Any frame, with payloads up to 300 bytes, half of them short (so that headers make up a
/// good part of the stream).
fn arb_any_frame() -> impl Strategy<Value = Frame> {
    let payload = || {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..8),
            proptest::collection::vec(any::<u8>(), 0..300),
        ]
    };
    prop_oneof![
        3 => (0..16u8, any::<bool>(), payload()).prop_map(|(c, more, payload)| {
            Frame::Message { channel: ChannelId::new(c).unwrap(), more, payload }
        }),
        2 => (0..16u8, any::<u64>(), any::<bool>(), payload()).prop_map(
            |(c, id, more, payload)| Frame::Request {
                channel: ChannelId::new(c).unwrap(),
                id,
                more,
                payload
            }
        ),
        2 => (any::<u64>(), any::<bool>(), payload())
            .prop_map(|(id, more, payload)| Frame::Response { id, more, payload }),
        1 => Just(Frame::KeepAlive),
        1 => Just(Frame::Goodbye),
    ]
}

/// What is done to a valid encoded stream before it is decoded.
#[derive(Debug, Clone)]
enum Damage {
    None,
    /// One byte xored with a non-zero value.
    Flip(prop::sample::Index, u8),
    /// One byte of one frame's header (frame, byte) xored with a non-zero value.
    FlipHeader(prop::sample::Index, prop::sample::Index, u8),
    /// The stream cut short.
    Truncate(prop::sample::Index),
    /// Arbitrary bytes after the valid frames (all of the input when there are none).
    Garbage(Vec<u8>),
}

#[derive(Debug, Clone)]
struct DecoderCase {
    frames: Vec<Frame>,
    damage: Damage,
    /// The sizes the stream is fed in, cycled.
    pieces: Vec<usize>,
    /// The decoder's maximum payload length: often below some frames' payloads.
    max: usize,
}

fn decoder_case() -> impl Strategy<Value = DecoderCase> {
    let damage = prop_oneof![
        2 => Just(Damage::None),
        2 => (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(at, x)| Damage::Flip(at, x)),
        2 => (any::<prop::sample::Index>(), any::<prop::sample::Index>(), 1u8..=255)
            .prop_map(|(frame, at, x)| Damage::FlipHeader(frame, at, x)),
        2 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Garbage),
    ];
    (
        proptest::collection::vec(arb_any_frame(), 0..12),
        damage,
        proptest::collection::vec(1usize..64, 1..8),
        // No limit; any limit; or exactly one frame's payload length, or one byte less.
        prop_oneof![
            3 => Just(None),
            1 => (0usize..300).prop_map(|max| Some((max, None))),
            2 => (any::<prop::sample::Index>(), 0usize..2).prop_map(|(i, less)| Some((less, Some(i)))),
        ],
    )
        .prop_map(|(frames, damage, pieces, max)| {
            let max = match max {
                None => 1 << 20,
                Some((max, None)) => max,
                Some((_, Some(_))) if frames.is_empty() => 0,
                Some((less, Some(i))) => {
                    frames[i.index(frames.len())].payload().len().saturating_sub(less)
                }
            };
            DecoderCase { frames, damage, pieces, max }
        })
}

/// Which decoder paths a run of cases reached.
#[derive(Debug, Default)]
struct Coverage {
    cases: usize,
    /// Frames decoded: Message, Request, Response, Goodbye, KeepAlive.
    frames: [usize; 5],
    /// A piece ran out inside a frame header / inside a payload.
    paused_in_header: usize,
    paused_in_payload: usize,
    /// `TooLarge` after at least one whole frame.
    too_large_mid_stream: usize,
    malformed: usize,
    truncated_in_header: usize,
    truncated_in_payload: usize,
    /// Flipped payload bytes that came out flipped, and nothing else changed.
    payload_flips: usize,
    /// Flipped header bytes (any outcome but a panic or a broken invariant).
    header_flips: usize,
}

/// What decoding a stream gave.
#[derive(Debug, PartialEq)]
struct Decoded {
    frames: Vec<Frame>,
    /// The first error `feed` returned.
    error: Option<FrameError>,
    finish: Result<(), FrameError>,
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out).unwrap();
    out
}

/// Feeds `bytes` in pieces of the given sizes and checks the decoder's contract as it goes:
/// each frame re-encodes to exactly the bytes consumed for it and respects the maximum;
/// `Ok(None)` means the piece was used up; after an error nothing more is yielded, the error
/// repeats and no payload buffer is held; `finish` agrees with whether the stream ended on a
/// frame boundary.
fn decode_checked(bytes: &[u8], pieces: &[usize], max: usize, cov: &mut Coverage) -> Decoded {
    let mut d = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut error: Option<FrameError> = None;
    // Where the frame being decoded started, and how far the input has been handed over.
    let (mut frame_start, mut offset) = (0usize, 0usize);
    let mut sizes = pieces.iter().cycle();
    while offset < bytes.len() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, bytes.len() - offset);
        let mut input = &bytes[offset..offset + n];
        loop {
            match d.feed(&mut input) {
                Ok(Some(frame)) => {
                    assert!(error.is_none(), "{frame:?} yielded after {error:?}");
                    let end = offset + n - input.len();
                    assert_eq!(
                        bytes.get(frame_start..end),
                        Some(&encoded(&frame)[..]),
                        "{frame:?} does not re-encode to the bytes it was decoded from"
                    );
                    assert!(frame.payload().len() <= max, "{frame:?} exceeds {max}");
                    assert!(d.is_idle());
                    frame_start = end;
                    frames.push(frame);
                }
                Ok(None) => {
                    assert!(error.is_none(), "Ok(None) after {error:?}");
                    assert!(input.is_empty(), "Ok(None) with input left");
                    if !d.is_idle() {
                        if d.buffered_capacity() > 0 {
                            cov.paused_in_payload += 1;
                        } else {
                            cov.paused_in_header += 1;
                        }
                    }
                    break;
                }
                Err(e) => {
                    match &error {
                        Some(first) => assert_eq!(&e, first, "the error changed"),
                        None => error = Some(e),
                    }
                    assert_eq!(d.buffered_capacity(), 0, "a failed decoder holds a buffer");
                    assert!(!d.is_idle());
                    break;
                }
            }
            assert!(d.buffered_capacity() <= max, "{} > {max}", d.buffered_capacity());
        }
        offset += n;
    }
    let finish = d.finish();
    match &error {
        Some(e) => assert_eq!(finish.as_ref(), Err(e)),
        None if frame_start == bytes.len() => assert_eq!(finish, Ok(())),
        None => {
            assert_eq!(finish, Err(FrameError::Truncated));
            if d.buffered_capacity() > 0 {
                cov.truncated_in_payload += 1;
            } else {
                cov.truncated_in_header += 1;
            }
        }
    }
    match &error {
        Some(FrameError::TooLarge { .. }) if !frames.is_empty() => cov.too_large_mid_stream += 1,
        Some(FrameError::Malformed { .. }) => cov.malformed += 1,
        _ => {}
    }
    for f in &frames {
        let kind = match f {
            Frame::Message { .. } => 0,
            Frame::Request { .. } => 1,
            Frame::Response { .. } => 2,
            Frame::Goodbye => 3,
            _ => 4,
        };
        cov.frames[kind] += 1;
    }
    Decoded { frames, error, finish }
}

/// `frame` with payload byte `i` xored with `x`.
fn with_payload_byte_flipped(frame: &Frame, i: usize, x: u8) -> Frame {
    let flip = |p: &[u8]| {
        let mut p = p.to_vec();
        p[i] ^= x;
        p
    };
    match frame {
        Frame::Message { channel, more, payload } => {
            Frame::Message { channel: *channel, more: *more, payload: flip(payload) }
        }
        Frame::Request { channel, id, more, payload } => {
            Frame::Request { channel: *channel, id: *id, more: *more, payload: flip(payload) }
        }
        Frame::Response { id, more, payload } => {
            Frame::Response { id: *id, more: *more, payload: flip(payload) }
        }
        other => panic!("{other:?} has no payload"),
    }
}

/// Runs one case: the general contract (in [`decode_checked`]), the same result however the
/// stream is cut, and the exact expected outcome where the damage makes it predictable.
fn check_decoder_case(case: &DecoderCase, cov: &mut Coverage) {
    cov.cases += 1;
    let max = case.max;
    let mut stream = Vec::new();
    // Each frame's extent in the stream, and where its payload starts.
    let mut spans = Vec::new();
    for f in &case.frames {
        let (_, header_len) = f.header().unwrap();
        let start = stream.len();
        f.encode(&mut stream).unwrap();
        spans.push((start, start + header_len, stream.len()));
    }
    // The frames a valid stream yields: up to the first one over the maximum, which fails.
    let expect_valid = |frames: &[Frame]| {
        let over = frames.iter().position(|f| f.payload().len() > max);
        let error =
            over.map(|i| FrameError::TooLarge { len: frames[i].payload().len() as u64, max });
        let finish = error.clone().map_or(Ok(()), Err);
        Decoded { frames: frames[..over.unwrap_or(frames.len())].to_vec(), error, finish }
    };
    let over = case.frames.iter().position(|f| f.payload().len() > max);
    let intact_before = |j: usize| j.min(over.unwrap_or(usize::MAX));

    let mut bytes = stream.clone();
    let flip = match &case.damage {
        Damage::Flip(at, x) if !stream.is_empty() => Some((at.index(stream.len()), *x)),
        Damage::FlipHeader(frame, at, x) if !spans.is_empty() => {
            let (start, payload_start, _) = spans[frame.index(spans.len())];
            Some((start + at.index(payload_start - start), *x))
        }
        _ => None,
    };
    // Predicted exactly, or: how many leading frames must come out unchanged.
    let (expected, intact) = match &case.damage {
        Damage::Flip(..) | Damage::FlipHeader(..) if flip.is_some() => {
            let (pos, x) = flip.unwrap();
            bytes[pos] ^= x;
            let j = spans.iter().position(|&(_, _, end)| pos < end).unwrap();
            let (_, payload_start, _) = spans[j];
            if pos >= payload_start {
                cov.payload_flips += 1;
                let mut frames = case.frames.clone();
                frames[j] = with_payload_byte_flipped(&frames[j], pos - payload_start, x);
                (Some(expect_valid(&frames)), 0)
            } else {
                cov.header_flips += 1;
                (None, intact_before(j))
            }
        }
        Damage::Truncate(at) if !stream.is_empty() => {
            let cut = at.index(stream.len());
            bytes.truncate(cut);
            // Frames wholly before the cut come out; the one cut through is Truncated.
            let whole = spans.iter().take_while(|&&(_, _, end)| end <= cut).count();
            match over {
                Some(i) if i < whole => (Some(expect_valid(&case.frames)), 0),
                // The cut is inside the oversized frame: TooLarge or Truncated, depending on
                // whether its length arrived.
                Some(i) if i == whole => (None, i),
                _ => {
                    let finish = if whole == spans.len() || spans[whole].0 == cut {
                        Ok(())
                    } else {
                        Err(FrameError::Truncated)
                    };
                    let frames = case.frames[..whole].to_vec();
                    (Some(Decoded { frames, error: None, finish }), 0)
                }
            }
        }
        Damage::Garbage(tail) => {
            bytes.extend_from_slice(tail);
            (None, intact_before(case.frames.len()))
        }
        _ => (Some(expect_valid(&case.frames)), 0),
    };

    let got = decode_checked(&bytes, &case.pieces, max, cov);
    // However the stream is cut into pieces, the outcome is the same.
    let whole = decode_checked(&bytes, &[bytes.len()], max, &mut Coverage::default());
    assert_eq!(got, whole, "the outcome depends on how the stream was cut");
    match expected {
        Some(expected) => assert_eq!(got, expected),
        None => {
            assert!(got.frames.len() >= intact, "{got:?}: expected {intact} intact frames");
            assert_eq!(got.frames[..intact], case.frames[..intact]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Arbitrary bytes almost always fail at the first header; they check only the general
    /// contract. The streams of real frames below reach every other state.
    #[test]
    fn frame_decoder_survives_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        pieces in proptest::collection::vec(1usize..64, 1..8),
        max in 0usize..5000,
    ) {
        decode_checked(&bytes, &pieces, max, &mut Coverage::default());
    }

    /// Valid streams of frames, fed in random pieces, intact or with one byte flipped, cut
    /// short or followed by garbage, against a maximum that some frames exceed.
    #[test]
    fn frame_decoder_keeps_its_contract_on_valid_and_damaged_streams(case in decoder_case()) {
        check_decoder_case(&case, &mut Coverage::default());
    }

    #[test]
    fn frames_round_trip_however_the_stream_is_cut(
        frames in proptest::collection::vec(arb_frame(), 0..20),
        pieces in proptest::collection::vec(1usize..100, 1..8),
    ) {
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode(&mut bytes).unwrap();
        }
        let mut d = FrameDecoder::new(300);
        let out = decode_in_pieces(&mut d, &bytes, &pieces, 300).unwrap();
        prop_assert_eq!(out, frames);
        prop_assert!(d.finish().is_ok());
    }

    #[test]
    fn declared_lengths_never_reserve_ahead_of_the_data(
        declared in prop_oneof![any::<u32>(), 0u32..=(16 << 20) + 16],
        kind in 0u8..3,
        mut body in proptest::collection::vec(any::<u8>(), 0..70_000),
    ) {
        let max = 16usize << 20;
        let mut d = FrameDecoder::new(max);
        let mut bytes = declared.to_be_bytes().to_vec();
        bytes.push(kind);
        bytes.push(0); // channel
        if kind != 0 {
            bytes.extend_from_slice(&[0; 8]); // request id
        }
        // At most one frame's worth of payload: nothing after it.
        body.truncate(declared as usize);
        bytes.extend_from_slice(&body);
        match decode_in_pieces(&mut d, &bytes, &[4096], max) {
            Err(FrameError::TooLarge { len, max: m }) => {
                prop_assert!(declared as usize > max);
                prop_assert_eq!((len, m), (u64::from(declared), max));
                prop_assert_eq!(d.buffered_capacity(), 0);
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
            Ok(_) => {
                prop_assert!(declared as usize <= max);
                // Capacity follows the bytes that arrived, not the declared length.
                let arrived = body.len() + 14;
                prop_assert!(d.buffered_capacity() <= (2 * arrived).max(64 * 1024));
            }
        }
    }

    #[test]
    fn a_keepalive_with_a_payload_is_malformed_and_buffers_nothing(
        declared in 1u32..=(1 << 20),
        body in proptest::collection::vec(any::<u8>(), 0..64),
        prefix in proptest::collection::vec(arb_frame(), 0..4),
    ) {
        let mut bytes = Vec::new();
        for f in &prefix {
            f.encode(&mut bytes).unwrap();
        }
        bytes.extend_from_slice(&declared.to_be_bytes());
        bytes.push(4);
        bytes.push(0);
        bytes.extend_from_slice(&body);
        let mut d = FrameDecoder::new(1 << 20);
        match decode_in_pieces(&mut d, &bytes, &[7], 1 << 20) {
            Err(FrameError::Malformed { .. }) => prop_assert_eq!(d.buffered_capacity(), 0),
            other => prop_assert!(false, "expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn hello_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        if let Ok(h) = Hello::decode(&bytes) {
            prop_assert_eq!(bytes.len(), HELLO_LEN);
            prop_assert_eq!(&h.encode()[..], &bytes[..]);
        }
    }

    #[test]
    fn hello_round_trips(version in any::<u16>(), fed_bytes in any::<[u8; 32]>()) {
        let h = Hello { version, federation: FederationId::from_bytes(fed_bytes) };
        prop_assert_eq!(Hello::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn handshake_payload_decoder_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        key in any::<[u8; 32]>(),
    ) {
        if let Ok(p) = HandshakePayload::decode(&bytes) {
            prop_assert_eq!(&p.encode()[..], &bytes[..]);
            // Random bytes are (overwhelmingly) not a valid binding.
            prop_assert!(p.verify(&key).is_err());
        }
    }
}

/// The generator of [`frame_decoder_keeps_its_contract_on_valid_and_damaged_streams`] gets
/// past the header checks: over a fixed sample of its cases, every kind of frame is decoded,
/// pieces end inside headers and inside payloads, and each error (too large after valid
/// frames, malformed, truncated in a header and in a payload) occurs, as do checked payload
/// and header flips.
#[test]
fn the_frame_decoder_cases_reach_every_decoder_state() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = decoder_case();
    let mut cov = Coverage::default();
    for _ in 0..1024 {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        check_decoder_case(&case, &mut cov);
    }
    println!("{cov:?}");
    // Each in at least 1% of the cases.
    let least = cov.cases / 100;
    let reached = [
        ("messages", cov.frames[0]),
        ("requests", cov.frames[1]),
        ("responses", cov.frames[2]),
        ("goodbyes", cov.frames[3]),
        ("keepalives", cov.frames[4]),
        ("paused in a header", cov.paused_in_header),
        ("paused in a payload", cov.paused_in_payload),
        ("too large after valid frames", cov.too_large_mid_stream),
        ("malformed", cov.malformed),
        ("truncated in a header", cov.truncated_in_header),
        ("truncated in a payload", cov.truncated_in_payload),
        ("payload flips", cov.payload_flips),
        ("header flips", cov.header_flips),
    ];
    for (what, count) in reached {
        assert!(count >= least, "{what}: {count} in {} cases; {cov:?}", cov.cases);
    }
}

// ---------------------------------------------------------------------------------------
// Trust by organization certificate
// ---------------------------------------------------------------------------------------

fn org_root(n: u8) -> OrgKeypair {
    OrgKeypair::from_secret_bytes([200 + n; 32])
}

fn now_micros() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(d.as_micros()).unwrap()
}

/// A certificate of `org` for node `seed`, valid from `from` to `to` hours around now.
fn org_cert(root: &OrgKeypair, org: &str, seed: u8, from: i64, to: i64) -> NodeCertificate {
    let hour = 3_600_000_000;
    let now = now_micros();
    root.certify(
        OrgId::new(org).unwrap(),
        id(seed),
        [Role::Writer],
        Timestamp::from_micros(now + from * hour),
        Timestamp::from_micros(now + to * hour),
        u64::from(seed),
    )
    .unwrap()
}

/// Trusts certificates of `acme` (pinned to root 1).
fn cert_config(seed: u8, cert: Option<NodeCertificate>) -> TcpConfig {
    let mut anchors = TrustAnchors::new();
    anchors.pin(OrgId::new("acme").unwrap(), org_root(1).root_key());
    let mut c = config(seed);
    c.trust = Trust::Certificates(Arc::new(anchors));
    c.certificate = cert;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certified_nodes_of_a_pinned_org_connect() {
    let a = bind(cert_config(41, Some(org_cert(&org_root(1), "acme", 41, -1, 1)))).await;
    let b = bind(cert_config(42, Some(org_cert(&org_root(1), "acme", 42, -1, 1)))).await;
    // Only a adds b: b admits a by its certificate alone.
    a.add_peer(id(42), b.local_addr()).unwrap();
    wait_connected(&a, id(42)).await;
    wait_connected(&b, id(41)).await;
    assert_link_ok(&a, &b, 1).await;
    a.close().await;
    b.close().await;
}

async fn refused_with(cert: Option<NodeCertificate>, what: &str) -> HandshakeError {
    let server = bind(cert_config(51, None)).await;
    let mut failures = server.connection_failures();
    let mut cc = config(52);
    cc.certificate = cert;
    let client = bind(cc).await;
    client.add_peer(id(51), server.local_addr()).unwrap();
    let f = expect_failure(&mut failures, what, |f| {
        matches!(
            f.error,
            TcpError::Handshake(
                HandshakeError::CertificateRefused { .. } | HandshakeError::MissingCertificate(_)
            )
        )
    })
    .await;
    client.close().await;
    server.close().await;
    match f.error {
        TcpError::Handshake(e) => e,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncertified_forged_expired_and_unpinned_certificates_are_refused() {
    // No certificate at all.
    let e = refused_with(None, "MissingCertificate").await;
    assert_eq!(e, HandshakeError::MissingCertificate(id(52)));
    // Forged: another root certifies the node for acme.
    let e = refused_with(Some(org_cert(&org_root(2), "acme", 52, -1, 1)), "forged").await;
    assert!(
        matches!(e, HandshakeError::CertificateRefused { peer, error: CertificateError::WrongRoot { .. } } if peer == id(52)),
        "{e:?}"
    );
    // Expired.
    let e = refused_with(Some(org_cert(&org_root(1), "acme", 52, -3, -2)), "expired").await;
    assert!(
        matches!(
            e,
            HandshakeError::CertificateRefused { error: CertificateError::Expired { .. }, .. }
        ),
        "{e:?}"
    );
    // An organization that is not pinned.
    let e = refused_with(Some(org_cert(&org_root(3), "other", 52, -1, 1)), "unpinned").await;
    assert!(
        matches!(
            e,
            HandshakeError::CertificateRefused { error: CertificateError::UnknownOrg(_), .. }
        ),
        "{e:?}"
    );
}

#[test]
fn a_certificate_for_another_node_is_an_invalid_config() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = config(61);
    c.certificate = Some(org_cert(&org_root(1), "acme", 62, -1, 1));
    let r = rt.block_on(TcpTransport::bind(c));
    assert!(matches!(r, Err(TcpError::InvalidConfig(_))));
}

/// `remove_peer` retires the old connection in the old actor; if the same identity connects
/// again meanwhile (here: while the old writer is stuck on a full socket for the flush
/// timeout), the new actor brings the new link up before the old actor finishes. The old
/// actor's end must not take the new link down (it once did: the channels reported the peer
/// disconnected while its connection was live, and dropped its later messages as stale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_connections_end_never_takes_down_a_newer_one() {
    let mut c = config(31);
    c.inbound_window = 4 * 65;
    c.trust = Trust::AnyAuthenticated;
    let a = bind(c).await;
    let x_key = keypair(32);
    let x = x_key.node_id();
    let (c1, c2) = (ChannelId::new(1).unwrap(), ChannelId::new(2).unwrap());

    // R1: x's first connection; it grants a lots of credit on channel 1 and never reads.
    let mut r1 = raw_handshake(a.local_addr(), &x_key, Forgery::None).await.unwrap();
    let mut credit = Vec::new();
    Frame::Credit { channel: c1, bytes: 1 << 30 }.encode(&mut credit).unwrap();
    r1.send_plain(&credit).await;
    timeout(PROMPT, async {
        while !a.connected_peers().contains(&x) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap();
    for _ in 0..40 {
        a.send_on(c1, x, vec![7; 1 << 20]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // a's writer is now stuck
    assert!(a.remove_peer(x).unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;

    // R2: x connects again, as a new peer (a trusts any authenticated node).
    let mut r2 = raw_handshake(a.local_addr(), &x_key, Forgery::None).await.unwrap();
    let mut m = Vec::new();
    Frame::message(c2, b"m1".to_vec()).encode(&mut m).unwrap();
    r2.send_plain(&m).await;
    let mut seen = Vec::new();
    while !seen.iter().any(|e| matches!(e, Incoming::Message { .. })) {
        seen.push(timeout(Duration::from_secs(5), a.recv_on(c2)).await.unwrap().unwrap());
    }
    println!("channel 2 before: {seen:?}");
    // The old actor's flush timeout (2 s) passes; r2 stays connected and sends again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut m = Vec::new();
    Frame::message(c2, b"m2".to_vec()).encode(&mut m).unwrap();
    r2.send_plain(&m).await;
    let mut after = Vec::new();
    let got_m2 = timeout(Duration::from_secs(2), async {
        loop {
            let e = a.recv_on(c2).await.unwrap();
            after.push(e.clone());
            if matches!(e, Incoming::Message { .. }) {
                return;
            }
        }
    })
    .await
    .is_ok();
    println!("channel 2 after: {after:?}; connected_peers = {:?}", a.connected_peers());
    assert!(
        !after.contains(&Incoming::PeerDisconnected { peer: x }),
        "x reported disconnected while its connection is up"
    );
    assert!(got_m2, "m2 on the live connection was never delivered");
    drop(r1);
    a.close().await;
}
