#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The in-process transport against the conformance suite, plus its own specifics.

use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::{
    Incoming, NodeId, NodeKeypair, RequestId, Timer, Transport, TransportError,
};
use llmkg_transport::testing::{Pair, Suite};
use llmkg_transport::{
    InProcessConfig, InProcessError, InProcessNetwork, InProcessTransport, StdTimer,
};

fn node(i: u8) -> NodeId {
    NodeKeypair::from_secret_bytes([i; 32]).node_id()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
}

#[test]
fn passes_the_conformance_suite() {
    runtime().block_on(async {
        let timer: Arc<dyn Timer> = Arc::new(StdTimer::new());
        let mut next = 10u8;
        let report = Suite::new(Arc::clone(&timer))
            .run(|| {
                next += 2;
                let net = InProcessNetwork::with_config(
                    InProcessConfig { inbound_capacity: 256, ..Default::default() },
                    Arc::clone(&timer),
                );
                let a: Arc<dyn Transport> = Arc::new(net.join(node(next)).unwrap());
                let b: Arc<dyn Transport> = Arc::new(net.join(node(next + 1)).unwrap());
                async move { Pair { a, b } }
            })
            .await
            .unwrap_or_else(|failure| panic!("{failure}"));
        assert_eq!(report.passed.len(), 13, "{report:?}");
    });
}

#[test]
fn membership_and_connectivity_notifications() {
    runtime().block_on(async {
        let net = InProcessNetwork::new(Arc::new(StdTimer::new()));
        let a = net.join(node(1)).unwrap();
        assert_eq!(net.join(node(1)).unwrap_err(), InProcessError::AlreadyMember(node(1)));
        let b = net.join(node(2)).unwrap();
        assert_eq!(a.recv().await.unwrap(), Incoming::PeerConnected { peer: node(2) });
        assert_eq!(b.recv().await.unwrap(), Incoming::PeerConnected { peer: node(1) });
        // Messages sent before a close arrive before the disconnect notification.
        b.send(node(1), b"last words".to_vec()).await.unwrap();
        drop(b);
        assert_eq!(
            a.recv().await.unwrap(),
            Incoming::Message { from: node(2), payload: b"last words".to_vec() }
        );
        assert_eq!(a.recv().await.unwrap(), Incoming::PeerDisconnected { peer: node(2) });
        assert_eq!(net.members(), vec![node(1)]);
        // The id is free again once the endpoint left.
        let b = net.join(node(2)).unwrap();
        assert_eq!(a.recv().await.unwrap(), Incoming::PeerConnected { peer: node(2) });
        drop(b);
    });
}

#[test]
fn pending_request_fails_when_the_peer_leaves() {
    runtime().block_on(async {
        let net = InProcessNetwork::new(Arc::new(StdTimer::new()));
        let a = net.join(node(1)).unwrap();
        let b = net.join(node(2)).unwrap();
        let request = a.request(node(2), b"?".to_vec(), Duration::from_secs(30));
        let leave = async {
            // Take the request, then leave without answering.
            loop {
                if let Incoming::Request { .. } = b.recv().await.unwrap() {
                    break;
                }
            }
            b.close().await;
        };
        let (result, ()) = futures_util::future::join(request, leave).await;
        assert!(matches!(result, Err(TransportError::Disconnected(peer)) if peer == node(2)));
    });
}

#[test]
fn only_the_asked_peer_can_answer() {
    runtime().block_on(async {
        let net = InProcessNetwork::new(Arc::new(StdTimer::new()));
        let a = net.join(node(1)).unwrap();
        let b = net.join(node(2)).unwrap();
        let c = net.join(node(3)).unwrap();
        let request = a.request(node(2), b"?".to_vec(), Duration::from_secs(30));
        let answer = async {
            let id = loop {
                if let Incoming::Request { id, .. } = b.recv().await.unwrap() {
                    break id;
                }
            };
            // c guesses the id and answers first: ignored.
            c.respond(node(1), id, b"forged".to_vec()).await.unwrap();
            b.respond(node(1), id, b"genuine".to_vec()).await.unwrap();
        };
        let (result, ()) = futures_util::future::join(request, answer).await;
        assert_eq!(result.unwrap(), b"genuine".to_vec());
    });
}

#[test]
fn request_timeout_covers_waiting_for_queue_space() {
    runtime().block_on(async {
        let timer: Arc<dyn Timer> = Arc::new(StdTimer::new());
        let config = InProcessConfig { inbound_capacity: 1, ..Default::default() };
        let net = InProcessNetwork::with_config(config, Arc::clone(&timer));
        let a = net.join(node(1)).unwrap();
        let _b = net.join(node(2)).unwrap();
        // b never reads: its one-slot queue fills, and the request cannot even be queued.
        a.send(node(2), b"fills the queue".to_vec()).await.unwrap();
        let started = timer.now();
        let result = a.request(node(2), b"?".to_vec(), Duration::from_millis(100)).await;
        assert!(matches!(result, Err(TransportError::Timeout { peer, .. }) if peer == node(2)));
        assert!(timer.now() - started >= Duration::from_millis(100));
    });
}

/// Requests are failed per peer: when one peer leaves, only the requests waiting on it fail;
/// a request to another peer, outstanding at the same moment, is still answered.
#[test]
fn a_leaving_peer_fails_only_its_own_pending_requests() {
    async fn next_request(t: &InProcessTransport) -> (NodeId, RequestId, Vec<u8>) {
        loop {
            if let Incoming::Request { from, id, payload } = t.recv().await.unwrap() {
                return (from, id, payload);
            }
        }
    }
    runtime().block_on(async {
        let net = InProcessNetwork::new(Arc::new(StdTimer::new()));
        let a = Arc::new(net.join(node(1)).unwrap());
        let b = net.join(node(2)).unwrap();
        let c = net.join(node(3)).unwrap();
        let ask = |to: NodeId| {
            let a = a.clone();
            tokio::spawn(async move { a.request(to, b"?".to_vec(), Duration::from_secs(30)).await })
        };
        let (to_b, to_c) = (ask(node(2)), ask(node(3)));
        // Both requests have arrived; neither is answered.
        assert_eq!(next_request(&b).await.0, node(1));
        let (from, c_request, _) = next_request(&c).await;
        assert_eq!(from, node(1));

        b.close().await;
        let result = to_b.await.unwrap();
        assert!(
            matches!(result, Err(TransportError::Disconnected(peer)) if peer == node(2)),
            "the request to the peer that left ended with {result:?}"
        );
        c.respond(node(1), c_request, b"from c".to_vec()).await.unwrap();
        match to_c.await.unwrap() {
            Ok(answer) => assert_eq!(answer, b"from c".to_vec()),
            other => panic!("the request to the peer that stayed ended with {other:?}"),
        }
    });
}
