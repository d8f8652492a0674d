//! A small ping/echo [`Protocol`] core: the smallest complete example of a sans-io core, and
//! the one the tests use to show that the same core runs unchanged in the simulator,
//! in-process and over TCP.
//!
//! Every node answers pings. A node given targets also sends rounds of pings: one to every
//! target per [`EchoConfig::interval`], [`EchoConfig::rounds`] times, and reports each pong
//! with its round-trip time, or the ping as lost once [`EchoConfig::timeout`] has passed.
//! It needs no start-up call: its first timer is due at [`Time::ZERO`], so a host's first
//! `poll_timeout` makes it send the first round.
//!
//! ```
//! use llmkg_federation_core::{NodeKeypair, Protocol, Time};
//! use llmkg_transport::echo::{Echo, EchoConfig, EchoEvent, EchoMessage};
//!
//! let bob = NodeKeypair::from_secret_bytes([2; 32]).node_id();
//! let alice = NodeKeypair::from_secret_bytes([1; 32]).node_id();
//! let mut pinger = Echo::new(EchoConfig::new(vec![bob]).rounds(1));
//!
//! assert_eq!(pinger.poll_timeout(), Some(Time::ZERO));
//! pinger.handle_timeout(Time::ZERO);
//! let ping = pinger.poll_transmit().unwrap();
//! assert_eq!((ping.to, &ping.message), (bob, &EchoMessage::Ping { seq: 0 }));
//!
//! pinger.handle_message(Time::from_micros(40), bob, EchoMessage::Pong { seq: 0 });
//! assert!(matches!(pinger.poll_event(), Some(EchoEvent::Pong { seq: 0, .. })));
//! # let _ = alice;
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use llmkg_federation_core::{NodeId, Protocol, Time, Transmit};
use serde::{Deserialize, Serialize};

/// What echo nodes send each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EchoMessage {
    /// Please answer with a [`EchoMessage::Pong`] carrying the same `seq`.
    Ping {
        /// Chosen by the pinger; unique per pinger.
        seq: u64,
    },
    /// The answer to a ping.
    Pong {
        /// The ping's `seq`.
        seq: u64,
    },
}

/// What an echo node reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EchoEvent {
    /// A ping was answered.
    Pong {
        /// Who answered.
        peer: NodeId,
        /// The ping's sequence number.
        seq: u64,
        /// Time from sending the ping to receiving the pong.
        rtt: Duration,
    },
    /// A ping got no answer within the timeout.
    Lost {
        /// Who was pinged.
        peer: NodeId,
        /// The ping's sequence number.
        seq: u64,
    },
}

/// Settings of an [`Echo`] node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoConfig {
    targets: Vec<NodeId>,
    rounds: u64,
    interval: Duration,
    timeout: Duration,
}

impl EchoConfig {
    /// Pings `targets` (none: only answers), one round by default, every 10 ms, giving up on
    /// a ping after 1 s.
    pub fn new(targets: Vec<NodeId>) -> Self {
        Self {
            targets,
            rounds: 1,
            interval: Duration::from_millis(10),
            timeout: Duration::from_secs(1),
        }
    }

    /// How many rounds of pings to send.
    pub fn rounds(mut self, rounds: u64) -> Self {
        self.rounds = rounds;
        self
    }

    /// Time between rounds.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long to wait for a pong before reporting the ping lost.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The ping/echo core. See the [module documentation](self).
#[derive(Debug)]
pub struct Echo {
    config: EchoConfig,
    rounds_sent: u64,
    next_round: Option<Time>,
    next_seq: u64,
    /// seq → (peer, sent at); ordered by seq, which is also the order they were sent.
    outstanding: BTreeMap<u64, (NodeId, Time)>,
    transmits: VecDeque<Transmit<EchoMessage>>,
    events: VecDeque<EchoEvent>,
    pings_answered: u64,
    pongs_received: u64,
    pongs_unexpected: u64,
    lost: u64,
}

impl Echo {
    /// A node with `config`.
    pub fn new(config: EchoConfig) -> Self {
        let next_round = (config.rounds > 0 && !config.targets.is_empty()).then_some(Time::ZERO);
        Self {
            config,
            rounds_sent: 0,
            next_round,
            next_seq: 0,
            outstanding: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            pings_answered: 0,
            pongs_received: 0,
            pongs_unexpected: 0,
            lost: 0,
        }
    }

    /// A node that only answers.
    pub fn responder() -> Self {
        Self::new(EchoConfig::new(Vec::new()))
    }

    /// Pings this node answered.
    pub fn pings_answered(&self) -> u64 {
        self.pings_answered
    }

    /// Pongs that answered an outstanding ping.
    pub fn pongs_received(&self) -> u64 {
        self.pongs_received
    }

    /// Pongs for no outstanding ping (duplicates, late or forged answers), ignored.
    pub fn pongs_unexpected(&self) -> u64 {
        self.pongs_unexpected
    }

    /// Pings reported lost.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// True when every round has been sent and every ping answered or given up on.
    pub fn is_done(&self) -> bool {
        self.next_round.is_none() && self.outstanding.is_empty()
    }

    fn expire(&mut self, now: Time) {
        while let Some((&seq, &(peer, sent))) = self.outstanding.first_key_value() {
            if now.saturating_since(sent) < self.config.timeout {
                break;
            }
            self.outstanding.remove(&seq);
            self.lost += 1;
            self.events.push_back(EchoEvent::Lost { peer, seq });
        }
    }
}

impl Protocol for Echo {
    type Message = EchoMessage;
    type Event = EchoEvent;

    fn handle_message(&mut self, now: Time, from: NodeId, message: EchoMessage) {
        match message {
            EchoMessage::Ping { seq } => {
                self.pings_answered += 1;
                self.transmits.push_back(Transmit { to: from, message: EchoMessage::Pong { seq } });
            }
            EchoMessage::Pong { seq } => match self.outstanding.get(&seq) {
                Some(&(peer, sent)) if peer == from => {
                    self.outstanding.remove(&seq);
                    self.pongs_received += 1;
                    let rtt = now.saturating_since(sent);
                    self.events.push_back(EchoEvent::Pong { peer, seq, rtt });
                }
                _ => self.pongs_unexpected += 1,
            },
        }
    }

    fn handle_timeout(&mut self, now: Time) {
        self.expire(now);
        if let Some(due) = self.next_round
            && now >= due
        {
            for &peer in &self.config.targets {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.outstanding.insert(seq, (peer, now));
                self.transmits.push_back(Transmit { to: peer, message: EchoMessage::Ping { seq } });
            }
            self.rounds_sent += 1;
            self.next_round =
                (self.rounds_sent < self.config.rounds).then(|| now + self.config.interval);
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit<EchoMessage>> {
        self.transmits.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        // Pings are sent in seq order at non-decreasing times: the first expires first.
        let expiry =
            self.outstanding.first_key_value().map(|(_, &(_, sent))| sent + self.config.timeout);
        match (self.next_round, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn poll_event(&mut self) -> Option<EchoEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use llmkg_federation_core::NodeKeypair;

    use super::*;

    fn node(i: u8) -> NodeId {
        NodeKeypair::from_secret_bytes([i; 32]).node_id()
    }

    #[test]
    fn pings_each_target_per_round_and_reports_losses() {
        let (a, b) = (node(2), node(3));
        let config = EchoConfig::new(vec![a, b])
            .rounds(2)
            .interval(Duration::from_millis(10))
            .timeout(Duration::from_millis(25));
        let mut echo = Echo::new(config);
        echo.handle_timeout(Time::ZERO);
        let first: Vec<_> = std::iter::from_fn(|| echo.poll_transmit()).collect();
        assert_eq!(first.len(), 2);
        assert_eq!(echo.poll_timeout(), Some(Time::from_millis(10)));
        echo.handle_message(Time::from_millis(3), a, EchoMessage::Pong { seq: 0 });
        // A pong from the wrong peer, and a duplicate, are ignored.
        echo.handle_message(Time::from_millis(4), a, EchoMessage::Pong { seq: 1 });
        echo.handle_message(Time::from_millis(4), a, EchoMessage::Pong { seq: 0 });
        assert_eq!(echo.pongs_unexpected(), 2);
        assert_eq!(
            echo.poll_event(),
            Some(EchoEvent::Pong { peer: a, seq: 0, rtt: Duration::from_millis(3) })
        );
        echo.handle_timeout(Time::from_millis(10));
        assert_eq!(std::iter::from_fn(|| echo.poll_transmit()).count(), 2);
        // Second round sent, no more rounds: the next deadline is seq 1's expiry.
        assert_eq!(echo.poll_timeout(), Some(Time::from_millis(25)));
        echo.handle_timeout(Time::from_millis(40));
        let lost: Vec<_> = std::iter::from_fn(|| echo.poll_event()).collect();
        assert_eq!(
            lost,
            vec![
                EchoEvent::Lost { peer: b, seq: 1 },
                EchoEvent::Lost { peer: a, seq: 2 },
                EchoEvent::Lost { peer: b, seq: 3 }
            ]
        );
        assert!(echo.is_done());
        assert_eq!(echo.poll_timeout(), None);
    }

    #[test]
    fn responder_answers_every_ping() {
        let mut echo = Echo::responder();
        assert_eq!(echo.poll_timeout(), None);
        echo.handle_message(Time::ZERO, node(5), EchoMessage::Ping { seq: 9 });
        assert_eq!(
            echo.poll_transmit(),
            Some(Transmit { to: node(5), message: EchoMessage::Pong { seq: 9 } })
        );
        assert_eq!(echo.pings_answered(), 1);
    }
}
