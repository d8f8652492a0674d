#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! One sans-io core, three hosts: the echo core run by the generic driver in-process and over
//! TCP, and directly by the simulator.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use llmkg_federation_core::{NodeId, NodeKeypair, Timer, Transport};
use llmkg_transport::echo::{Echo, EchoConfig, EchoEvent};
use llmkg_transport::{Driver, DriverExit, InProcessNetwork, StdTimer};

fn node(i: u8) -> NodeId {
    NodeKeypair::from_secret_bytes([i; 32]).node_id()
}

/// Runs an echo pinger and responders over `transports` (the first pings the others) until
/// every ping is answered; returns the pinger's events.
async fn run_echo(transports: Vec<Arc<dyn Transport>>, timer: Arc<dyn Timer>) -> Vec<EchoEvent> {
    let targets: Vec<NodeId> = transports[1..].iter().map(|t| t.local_id()).collect();
    let targets_len = targets.len();
    let config = EchoConfig::new(targets)
        .rounds(20)
        .interval(Duration::from_millis(1))
        .timeout(Duration::from_secs(10));
    let mut drivers = Vec::new();
    let mut handles = Vec::new();
    for (i, transport) in transports.into_iter().enumerate() {
        let core = if i == 0 { Echo::new(config.clone()) } else { Echo::responder() };
        let (driver, handle) = Driver::new(core, transport, Arc::clone(&timer));
        drivers.push(driver.run());
        handles.push(handle);
    }
    let pinger = handles[0].clone();
    // Every ping ends in exactly one event: a pong or a loss.
    let expected = 20 * targets_len;
    let observer = async move {
        let mut events = Vec::new();
        while events.len() < expected {
            match pinger.next_event().await {
                Some(event) => events.push(event),
                None => break,
            }
        }
        for handle in &handles {
            handle.shutdown();
        }
        (events, handles)
    };
    let (exits, (events, handles)) = futures_util::future::join(join_all(drivers), observer).await;
    for exit in exits {
        assert!(matches!(exit, DriverExit::Shutdown), "{exit:?}");
    }
    let responder_answers: u64 =
        handles[1..].iter().map(|h| h.call(|core, _| core.pings_answered())).sum();
    assert_eq!(responder_answers, events.len() as u64, "every ping answered exactly once");
    let stats = handles[0].stats();
    assert_eq!(stats.decode_failures, 0);
    assert_eq!(stats.outbox_dropped, 0);
    assert_eq!(stats.messages_sent, events.len() as u64);
    events
}

fn check_all_answered(events: &[EchoEvent], peers: usize) {
    assert_eq!(events.len(), 20 * peers);
    for (i, event) in events.iter().enumerate() {
        assert!(matches!(event, EchoEvent::Pong { .. }), "event #{i} is {event:?}");
    }
}

#[test]
fn echo_runs_in_process() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        let timer: Arc<dyn Timer> = Arc::new(StdTimer::new());
        let net = InProcessNetwork::new(Arc::clone(&timer));
        let transports: Vec<Arc<dyn Transport>> =
            (1..=4).map(|i| Arc::new(net.join(node(i)).unwrap()) as Arc<dyn Transport>).collect();
        let events = run_echo(transports, timer).await;
        check_all_answered(&events, 3);
    });
}

#[test]
fn drivers_are_send_and_run_on_a_multi_threaded_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build();
    let rt = rt.unwrap();
    rt.block_on(async {
        let timer: Arc<dyn Timer> = Arc::new(llmkg_transport::TokioTimer::new());
        let net = InProcessNetwork::new(Arc::clone(&timer));
        let a: Arc<dyn Transport> = Arc::new(net.join(node(1)).unwrap());
        let b: Arc<dyn Transport> = Arc::new(net.join(node(2)).unwrap());
        let config = EchoConfig::new(vec![node(2)]).rounds(50).interval(Duration::ZERO);
        let (pinger, ping_handle) = Driver::new(Echo::new(config), a, Arc::clone(&timer));
        let (responder, echo_handle) = Driver::new(Echo::responder(), b, timer);
        let tasks = [tokio::spawn(pinger.run()), tokio::spawn(responder.run())];
        let mut pongs = 0;
        while pongs < 50 {
            match ping_handle.next_event().await.unwrap() {
                EchoEvent::Pong { peer, .. } if peer == node(2) => pongs += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        ping_handle.shutdown();
        echo_handle.shutdown();
        for task in tasks {
            assert!(matches!(task.await.unwrap(), DriverExit::Shutdown));
        }
        assert_eq!(echo_handle.call(|core, _| core.pings_answered()), 50);
    });
}

#[test]
fn echo_runs_in_the_simulator() {
    use llmkg_transport::sim::{Latency, LinkConfig, RunOutcome, SimBuilder};
    let link = LinkConfig::with_latency(Latency::Fixed(Duration::from_millis(5)));
    let mut sim = SimBuilder::new(42)
        .nodes(4)
        .default_link(link)
        .build(|ctx| {
            if ctx.index == 0 {
                let config = EchoConfig::new(ctx.peers().collect())
                    .rounds(20)
                    .interval(Duration::from_millis(1))
                    .timeout(Duration::from_secs(10));
                Echo::new(config)
            } else {
                Echo::responder()
            }
        })
        .unwrap();
    let outcome = sim.run();
    // Last round sent at 19 ms, answered 10 ms later.
    assert_eq!(outcome, RunOutcome::Quiescent { at: llmkg_federation_core::Time::from_millis(29) });
    let pinger = sim.node_ids()[0];
    let events: Vec<EchoEvent> = sim
        .drain_events()
        .into_iter()
        .filter(|(_, node, _)| *node == pinger)
        .map(|(_, _, event)| event)
        .collect();
    check_all_answered(&events, 3);
    for event in &events {
        // Fixed 5 ms links: every round trip takes exactly 10 ms of virtual time.
        assert!(matches!(event, EchoEvent::Pong { rtt, .. } if *rtt == Duration::from_millis(10)));
    }
    let totals = sim.stats().messages;
    assert_eq!((totals.sent, totals.delivered), (120, 120));
}

#[test]
fn echo_runs_over_tcp() {
    use llmkg_transport::{FederationId, TcpConfig, TcpTransport, TokioTimer, Trust};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    rt.unwrap().block_on(async {
        let federation = FederationId::from_name("echo-test");
        let pinger_key = NodeKeypair::from_secret_bytes([1; 32]);
        let mut transports: Vec<TcpTransport> = Vec::new();
        for i in 2..=4u8 {
            let mut config = TcpConfig::new(NodeKeypair::from_secret_bytes([i; 32]), federation);
            config.trust = Trust::AllowList([pinger_key.node_id()].into());
            transports.push(TcpTransport::bind(config).await.unwrap());
        }
        let pinger = TcpTransport::bind(TcpConfig::new(pinger_key, federation)).await.unwrap();
        for responder in &transports {
            pinger.add_peer(responder.local_id(), responder.local_addr()).unwrap();
        }
        transports.insert(0, pinger);
        let transports: Vec<Arc<dyn Transport>> =
            transports.into_iter().map(|t| Arc::new(t) as Arc<dyn Transport>).collect();
        // Messages sent before a link is up wait in the peer's queue; no loss expected.
        let events = run_echo(transports.clone(), Arc::new(TokioTimer::new())).await;
        check_all_answered(&events, 3);
        for transport in transports {
            transport.close().await;
        }
    });
}
