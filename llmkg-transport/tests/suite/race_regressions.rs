#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Regression tests for races we found in the channel and membership code: a node
//! that leaves or is removed and comes back, a send waiting while its sender leaves, a late
//! answer after a rejoin, two readers of one channel. Each failed before its fix.

use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::{ChannelId, Incoming, NodeId, NodeKeypair, Transport};
use llmkg_transport::tcp::{FederationId, TcpConfig, TcpTransport};
use llmkg_transport::{InProcessConfig, InProcessNetwork, TokioTimer};
use tokio::time::timeout;

fn node(i: u8) -> NodeId {
    NodeKeypair::from_secret_bytes([i; 32]).node_id()
}

/// In-process: a send that was waiting for room when its sender left lands after the
/// receiver's channel reported the disconnect; the inbox drops that entry without running its
/// release callback, so the slot it holds is never returned and the channel stalls for every
/// sender.
#[tokio::test(flavor = "current_thread")]
async fn in_process_send_of_a_departed_node_leaks_a_slot() {
    let net = InProcessNetwork::with_config(
        InProcessConfig { inbound_capacity: 1, ..Default::default() },
        Arc::new(TokioTimer::new()),
    );
    let a = net.join(node(1)).unwrap();
    let b = net.join(node(2)).unwrap();
    let c = net.join(node(3)).unwrap();
    let (a_id, b_id, c_id) = (node(1), node(2), node(3));
    // b's channel 0 reports a and c up.
    for _ in 0..2 {
        assert!(matches!(b.recv().await.unwrap(), Incoming::PeerConnected { .. }));
    }
    c.send(b_id, b"c1".to_vec()).await.unwrap(); // b's channel 0 is now full
    let blocked = tokio::spawn(async move {
        let r = a.send(b_id, b"a1".to_vec()).await; // waits for room
        (a, r)
    });
    tokio::task::yield_now().await;
    assert!(net.remove(&a_id));
    // b reports a gone, and takes c's message (which frees the slot a's send waits for).
    assert_eq!(b.recv().await.unwrap(), Incoming::PeerDisconnected { peer: a_id });
    assert_eq!(b.recv().await.unwrap(), Incoming::Message { from: c_id, payload: b"c1".to_vec() });
    let (_a, sent) = blocked.await.unwrap();
    println!("a's waiting send returned {sent:?} after a was removed");
    // c sends again: b must get it.
    let c2 = async {
        c.send(b_id, b"c2".to_vec()).await.unwrap();
    };
    let got = async {
        loop {
            if let Incoming::Message { from, payload } = b.recv().await.unwrap() {
                return (from, payload);
            }
        }
    };
    let r = timeout(Duration::from_secs(3), async { tokio::join!(c2, got) }).await;
    assert!(r.is_ok(), "channel 0 of b is stalled: c's send never got room");
}

/// In-process: request ids restart at zero when a node rejoins, so a late answer to a request
/// of its earlier membership completes an unrelated request of the new one.
#[tokio::test(flavor = "current_thread")]
async fn in_process_stale_response_completes_a_new_request() {
    let net = InProcessNetwork::new(Arc::new(TokioTimer::new()));
    let (a_id, b_id) = (node(1), node(2));
    let b = net.join(b_id).unwrap();
    let a = net.join(a_id).unwrap();
    let _ = b.recv().await.unwrap(); // a connected
    let old_req = tokio::spawn(async move {
        let _ = a.request(b_id, b"old question".to_vec(), Duration::from_secs(5)).await;
        a
    });
    let old_id = loop {
        if let Incoming::Request { id, .. } = b.recv().await.unwrap() {
            break id;
        }
    };
    old_req.abort();
    net.remove(&a_id);
    let a2 = Arc::new(net.join(a_id).unwrap());
    let a2c = a2.clone();
    let new_req = tokio::spawn(async move {
        a2c.request(b_id, b"new question".to_vec(), Duration::from_secs(2)).await
    });
    // b answers the OLD request late.
    let new_id = loop {
        if let Incoming::Request { id, .. } = b.recv().await.unwrap() {
            break id;
        }
    };
    println!("old id {old_id:?}, new id {new_id:?}");
    b.respond(a_id, old_id, b"answer to the OLD question".to_vec()).await.unwrap();
    let answer = new_req.await.unwrap();
    assert!(
        answer.is_err(),
        "the new request was completed with the answer to the old one: {:?}",
        answer.map(String::from_utf8)
    );
}

fn tcp_config(seed: u8, window: u32) -> TcpConfig {
    let mut config = TcpConfig::new(
        NodeKeypair::from_secret_bytes([seed; 32]),
        FederationId::from_name("review"),
    );
    config.inbound_window = window;
    config
}

async fn wait_up(t: &TcpTransport, peer: NodeId) {
    timeout(Duration::from_secs(10), async {
        while !t.connected_peers().contains(&peer) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the link never came up");
}

async fn message_on(
    t: &TcpTransport,
    channel: ChannelId,
    within: Duration,
) -> Option<(NodeId, Vec<u8>)> {
    timeout(within, async {
        loop {
            if let Incoming::Message { from, payload } = t.recv_on(channel).await.unwrap() {
                return (from, payload);
            }
        }
    })
    .await
    .ok()
}

/// TCP: entries a removed peer left in a channel release credit into the removed peer's
/// LinkFlow; the new peer (same id, added again) was granted only `window - queued`, so the
/// credit is lost for good and the channel stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_remove_then_readd_stalls_a_channel_that_had_unread_messages() {
    // Room for eight one-byte messages (each counts its length plus 64).
    let count = 8u32;
    let window = count * 65;
    let a = TcpTransport::bind(tcp_config(11, window)).await.unwrap();
    let b = TcpTransport::bind(tcp_config(12, window)).await.unwrap();
    let (a_id, b_id) = (a.local_id(), b.local_id());
    a.add_peer(b_id, b.local_addr()).unwrap();
    b.add_peer(a_id, a.local_addr()).unwrap();
    wait_up(&a, b_id).await;
    wait_up(&b, a_id).await;
    let ch = ChannelId::new(3).unwrap();
    for i in 0..count {
        a.send_on(ch, b_id, vec![i as u8]).await.unwrap();
    }
    // Let them arrive and sit unread on b's channel 3.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.remove_peer(a_id).unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.add_peer(a_id, a.local_addr()).unwrap();
    wait_up(&b, a_id).await;
    wait_up(&a, b_id).await;
    // b reads the old messages (their credit goes to the removed peer's flow).
    for _ in 0..count {
        message_on(&b, ch, Duration::from_secs(5)).await.expect("an old message");
    }
    // a sends more: b should receive them.
    let sender = async {
        for i in 0..count {
            a.send_on(ch, b_id, vec![100 + i as u8]).await.unwrap();
        }
    };
    sender.await; // the outbox takes them (capacity 1024)
    let got = message_on(&b, ch, Duration::from_secs(5)).await;
    assert!(got.is_some(), "b's channel 3 never delivers a's new messages: a has no credit");
    a.close().await;
    b.close().await;
}

/// Inbox: `push` wakes receivers with `notify(1)`, which in event-listener 5 means "make sure
/// at least one listener is notified". Two pushes before the first woken receiver runs wake
/// one receiver only; a second receiver of the channel sleeps with a message waiting.
#[tokio::test(flavor = "current_thread")]
async fn a_second_receiver_of_a_channel_misses_its_wake_up() {
    let net = InProcessNetwork::new(Arc::new(TokioTimer::new()));
    let a = net.join(node(41)).unwrap();
    let b = Arc::new(net.join(node(42)).unwrap());
    assert!(matches!(b.recv().await.unwrap(), Incoming::PeerConnected { .. }));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for r in 0..2 {
        let (b, tx) = (b.clone(), tx.clone());
        tokio::spawn(async move {
            let got = b.recv().await.unwrap();
            tx.send((r, got)).unwrap();
            std::future::pending::<()>().await; // this receiver is busy from now on
        });
    }
    tokio::task::yield_now().await; // both receivers wait
    a.send(node(42), b"one".to_vec()).await.unwrap();
    a.send(node(42), b"two".to_vec()).await.unwrap();
    let first = timeout(Duration::from_secs(1), rx.recv()).await.unwrap().unwrap();
    let second = timeout(Duration::from_secs(1), rx.recv()).await;
    assert!(second.is_ok(), "only {first:?} was received; the other receiver was never woken");
}
