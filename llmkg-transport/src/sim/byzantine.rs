//! A wrapper that makes an honest core misbehave.

use std::collections::VecDeque;
use std::fmt;

use llmkg_federation_core::{HostInfo, LinkState, NodeId, Protocol, Time, Transmit};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::network::{chance, index_below};

/// Produces a forged version of a message.
///
/// Implemented by every `FnMut(&mut ChaCha8Rng, NodeId, &M) -> M` closure. `to` is the
/// recipient the forgery is meant for, so a forger can tailor versions per recipient (which is
/// what equivocation needs).
pub trait Forger<M> {
    /// A forged replacement for `original`, to be sent to `to`.
    fn forge(&mut self, rng: &mut ChaCha8Rng, to: NodeId, original: &M) -> M;
}

impl<M, F> Forger<M> for F
where
    F: FnMut(&mut ChaCha8Rng, NodeId, &M) -> M,
{
    fn forge(&mut self, rng: &mut ChaCha8Rng, to: NodeId, original: &M) -> M {
        self(rng, to, original)
    }
}

/// How often a [`Byzantine`] node misbehaves. Probabilities are per outgoing message of the
/// wrapped core; values outside `[0, 1]` are treated as the nearest bound, NaN as 0.
#[derive(Clone, Debug, PartialEq)]
pub struct ByzantineConfig {
    /// Probability of silently dropping a message (1 silences the node entirely, replays
    /// included).
    pub drop: f64,
    /// Probability of replacing a message by a forgery (requires a forger).
    pub forge: f64,
    /// Probability of equivocating: the message goes to its recipient, and a different forged
    /// version of it goes to another peer (requires a forger and a peer list).
    pub equivocate: f64,
    /// Probability of also re-sending one of the last `replay_window` earlier messages of the
    /// wrapped core (dropped ones included), to its original recipient or (half the time, if a
    /// peer list is set) to a random peer.
    pub replay: f64,
    /// How many earlier messages are remembered for replay. This is the wrapper's only
    /// buffer: it holds at most this many clones of messages the wrapped core sent, and is
    /// not used at all when the window is 0.
    pub replay_window: usize,
}

impl ByzantineConfig {
    /// No misbehaviour at all: the wrapper passes everything through (and draws nothing from
    /// its RNG), so honest and Byzantine nodes can share one core type.
    pub fn honest() -> Self {
        Self { drop: 0.0, forge: 0.0, equivocate: 0.0, replay: 0.0, replay_window: 0 }
    }
}

impl Default for ByzantineConfig {
    /// Honest, with a replay window of 64 ready for when `replay` is raised.
    fn default() -> Self {
        Self { replay_window: 64, ..Self::honest() }
    }
}

/// What a [`Byzantine`] node did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ByzantineStats {
    /// Messages of the wrapped core passed through unmodified.
    pub passed: u64,
    /// Messages dropped.
    pub dropped: u64,
    /// Messages replaced by forgeries.
    pub forged: u64,
    /// Extra, different versions sent to other peers.
    pub equivocated: u64,
    /// Earlier messages re-sent.
    pub replayed: u64,
}

/// A Byzantine node: wraps an honest core and tampers with what it sends.
///
/// Incoming messages, timers and events go to the wrapped core unchanged; each message the
/// core sends may be dropped, forged, equivocated or accompanied by a replay of an earlier one,
/// according to a [`ByzantineConfig`] and a seeded RNG. Raw garbage that does not even decode
/// can be sent with [`Sim::inject_raw`](super::Sim::inject_raw).
///
/// **Links are authenticated.** As with the Noise-secured real transport, a Byzantine node
/// cannot claim another sender: the simulator always tells the receiver the true sender id. A
/// Byzantine node can lie only in message *contents* (and in the `to` of what it sends).
pub struct Byzantine<P: Protocol> {
    inner: P,
    config: ByzantineConfig,
    rng: ChaCha8Rng,
    forger: Option<Box<dyn Forger<P::Message>>>,
    peers: Vec<NodeId>,
    history: VecDeque<Transmit<P::Message>>,
    out: VecDeque<Transmit<P::Message>>,
    stats: ByzantineStats,
}

impl<P: Protocol> Byzantine<P>
where
    P::Message: Clone,
{
    /// Wraps `inner`, misbehaving as `config` says with an RNG seeded from `seed`. Without a
    /// forger ([`with_forger`](Self::with_forger)) forging and equivocation do nothing; without
    /// peers ([`with_peers`](Self::with_peers)) equivocation does nothing and replays go to the
    /// original recipient.
    pub fn new(inner: P, config: ByzantineConfig, seed: u64) -> Self {
        Self {
            inner,
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            forger: None,
            peers: Vec::new(),
            history: VecDeque::new(),
            out: VecDeque::new(),
            stats: ByzantineStats::default(),
        }
    }

    /// Sets the forger used for forging and equivocation.
    pub fn with_forger(mut self, forger: impl Forger<P::Message> + 'static) -> Self {
        self.forger = Some(Box::new(forger));
        self
    }

    /// Sets the peers that equivocated versions and redirected replays may be sent to.
    pub fn with_peers(mut self, peers: Vec<NodeId>) -> Self {
        self.peers = peers;
        self
    }

    /// The wrapped core.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The wrapped core, mutably (for core-specific inputs).
    pub fn inner_mut(&mut self) -> &mut P {
        &mut self.inner
    }

    /// The misbehaviour configuration.
    pub fn config(&self) -> &ByzantineConfig {
        &self.config
    }

    /// Changes the misbehaviour from now on (a smaller replay window forgets the oldest
    /// remembered messages at once).
    pub fn set_config(&mut self, config: ByzantineConfig) {
        self.config = config;
        self.trim_history(self.config.replay_window);
    }

    /// Forgets the oldest remembered messages until at most `keep` remain.
    fn trim_history(&mut self, keep: usize) {
        let excess = self.history.len().saturating_sub(keep);
        self.history.drain(..excess);
    }

    /// Remembers `t` for later replays (the window permitting).
    fn remember(&mut self, t: Transmit<P::Message>) {
        if self.config.replay_window > 0 {
            self.trim_history(self.config.replay_window - 1);
            self.history.push_back(t);
        }
    }

    /// What the wrapper has done so far.
    pub fn stats(&self) -> ByzantineStats {
        self.stats
    }

    /// A random peer other than `not`, if there is one.
    fn other_peer(&mut self, not: NodeId) -> Option<NodeId> {
        let candidates = self.peers.iter().filter(|p| **p != not).count();
        if candidates == 0 {
            return None;
        }
        let pick = index_below(&mut self.rng, candidates);
        self.peers.iter().filter(|p| **p != not).nth(pick).copied()
    }

    fn tamper(&mut self, t: Transmit<P::Message>) {
        if chance(&mut self.rng, self.config.drop) {
            self.stats.dropped += 1;
            self.remember(t);
            return;
        }
        if self.config.replay_window > 0 {
            // Remembered as the core sent it, before any forgery.
            let original = t.clone();
            self.send_tampered(t);
            self.remember(original);
        } else {
            self.send_tampered(t);
        }
    }

    fn send_tampered(&mut self, t: Transmit<P::Message>) {
        let Transmit { to, mut message } = t;
        let mut untouched = true;
        if let Some(forger) = self.forger.as_mut()
            && chance(&mut self.rng, self.config.forge)
        {
            message = forger.forge(&mut self.rng, to, &message);
            self.stats.forged += 1;
            untouched = false;
        }
        let mut extra = None;
        if self.forger.is_some()
            && chance(&mut self.rng, self.config.equivocate)
            && let Some(other) = self.other_peer(to)
            && let Some(forger) = self.forger.as_mut()
        {
            extra =
                Some(Transmit { to: other, message: forger.forge(&mut self.rng, other, &message) });
            self.stats.equivocated += 1;
        }
        if untouched {
            self.stats.passed += 1;
        }
        self.out.push_back(Transmit { to, message });
        self.out.extend(extra);
        // Replay one of the messages the core sent before this one (this one is remembered
        // only afterwards).
        let earlier = self.history.len();
        if earlier > 0 && chance(&mut self.rng, self.config.replay) {
            let pick = index_below(&mut self.rng, earlier);
            if let Some(old) = self.history.get(pick).cloned() {
                let redirect = !self.peers.is_empty() && chance(&mut self.rng, 0.5);
                let to = if redirect { self.other_peer(old.to).unwrap_or(old.to) } else { old.to };
                self.out.push_back(Transmit { to, message: old.message });
                self.stats.replayed += 1;
            }
        }
    }
}

impl<P: Protocol> Protocol for Byzantine<P>
where
    P::Message: Clone,
{
    type Message = P::Message;
    type Event = P::Event;

    fn handle_message(&mut self, now: Time, from: NodeId, message: Self::Message) {
        self.inner.handle_message(now, from, message);
    }

    fn handle_timeout(&mut self, now: Time) {
        self.inner.handle_timeout(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit<Self::Message>> {
        loop {
            if let Some(t) = self.out.pop_front() {
                return Some(t);
            }
            let t = self.inner.poll_transmit()?;
            self.tamper(t);
        }
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.inner.poll_timeout()
    }

    fn poll_event(&mut self) -> Option<Self::Event> {
        self.inner.poll_event()
    }

    fn handle_start(&mut self, now: Time, host: HostInfo) {
        self.inner.handle_start(now, host);
    }

    fn handle_peer(&mut self, now: Time, peer: NodeId, link: LinkState) {
        self.inner.handle_peer(now, peer, link);
    }
}

impl<P: Protocol + fmt::Debug> fmt::Debug for Byzantine<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Byzantine")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}
