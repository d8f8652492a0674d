#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! A core whose message type cannot be encoded (a sequence of unknown length, which the
//! canonical encoding refuses) is counted, not a panic, in both hosts.

use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::{NodeId, Protocol, Time, Timer, Transmit, Transport};
use llmkg_transport::sim::{RunOutcome, SimBuilder};
use llmkg_transport::{Driver, InProcessNetwork, StdTimer};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Encodes fine when `ok`, otherwise as a sequence without a length (refused).
struct Msg {
    ok: bool,
}

impl Serialize for Msg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.ok {
            s.serialize_bool(true)
        } else {
            let mut seq = s.serialize_seq(None)?;
            seq.serialize_element(&1u8)?;
            seq.end()
        }
    }
}

impl<'de> Deserialize<'de> for Msg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bool::deserialize(d).map(|ok| Msg { ok })
    }
}

/// Sends one bad and one good message to every peer at start; counts what it receives.
struct Sender {
    peers: Vec<NodeId>,
    started: bool,
    out: Vec<Transmit<Msg>>,
    received: u64,
}

impl Sender {
    fn new(peers: Vec<NodeId>) -> Self {
        Self { peers, started: false, out: Vec::new(), received: 0 }
    }
}

impl Protocol for Sender {
    type Message = Msg;
    type Event = ();
    fn handle_message(&mut self, _now: Time, _from: NodeId, _msg: Msg) {
        self.received += 1;
    }
    fn handle_timeout(&mut self, _now: Time) {
        if !self.started {
            self.started = true;
            for &to in &self.peers {
                self.out.push(Transmit { to, message: Msg { ok: false } });
                self.out.push(Transmit { to, message: Msg { ok: true } });
            }
        }
    }
    fn poll_transmit(&mut self) -> Option<Transmit<Msg>> {
        self.out.pop()
    }
    fn poll_timeout(&self) -> Option<Time> {
        (!self.started).then_some(Time::ZERO)
    }
    fn poll_event(&mut self) -> Option<()> {
        None
    }
}

#[test]
fn the_simulator_counts_unencodable_messages() {
    let mut sim = SimBuilder::new(1)
        .nodes(2)
        .build(|ctx| {
            if ctx.index == 0 { Sender::new(ctx.peers().collect()) } else { Sender::new(vec![]) }
        })
        .unwrap();
    assert!(matches!(sim.run(), RunOutcome::Quiescent { .. }));
    let stats = sim.stats();
    assert_eq!(stats.unencodable, 1);
    assert_eq!(stats.messages.sent, 1);
    assert_eq!(sim.node(sim.node_ids()[1]).unwrap().received, 1);
}

#[test]
fn the_driver_counts_unencodable_messages() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        let timer: Arc<dyn Timer> = Arc::new(StdTimer::new());
        let net = InProcessNetwork::new(Arc::clone(&timer));
        let a = Arc::new(
            net.join(llmkg_federation_core::NodeKeypair::from_secret_bytes([1; 32]).node_id())
                .unwrap(),
        );
        let b_id = llmkg_federation_core::NodeKeypair::from_secret_bytes([2; 32]).node_id();
        let b = net.join(b_id).unwrap();
        let (driver, handle) = Driver::new(Sender::new(vec![b_id]), a as Arc<dyn Transport>, timer);
        let watcher = async {
            // The good message arrives; the bad one never does.
            loop {
                if let llmkg_federation_core::Incoming::Message { .. } = b.recv().await.unwrap() {
                    break;
                }
            }
            assert!(
                futures_util::FutureExt::now_or_never(b.recv()).is_none(),
                "a second message arrived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            handle.shutdown();
        };
        let (_, ()) = futures_util::future::join(driver.run(), watcher).await;
        let stats = handle.stats();
        assert_eq!((stats.encode_failures, stats.messages_sent), (1, 1));
    });
}
