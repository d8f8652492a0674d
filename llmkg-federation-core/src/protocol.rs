//! The sans-io protocol vocabulary: what every message-exchanging core implements.
//!
//! Consensus, sync and anything else that talks to other nodes is written as a plain owned
//! state machine with no I/O, no clock reads, no threads and no locks. The host (a driver
//! over a real [`Transport`](crate::Transport), or the deterministic simulator) feeds it
//! inputs and drains its outputs:
//!
//! ```text
//!            handle_message(now, from, msg)      poll_transmit() -> Transmit { to, message }
//!  host ───► handle_timeout(now)          core ─► poll_timeout()  -> Option<Time>
//!            (core-specific requests)            poll_event()    -> Option<Event>
//! ```
//!
//! The rules every core follows, and every host relies on:
//!
//! - **Time is an input.** A core never reads a clock; each input carries `now`, a [`Time`]
//!   that never goes backwards for one core instance.
//! - **Randomness is an input.** A core that needs randomness takes a seeded RNG (or a seed)
//!   when it is constructed and never reads OS entropy, so a run replays from its seed.
//! - **Outputs are drained after every input.** After each `handle_*` call (and after any
//!   core-specific request such as `propose`), the host calls `poll_transmit` until `None`,
//!   `poll_event` until `None`, and then `poll_timeout` once to learn the next deadline.
//!   Outputs are produced in the order the core decided them.
//! - **Timers are a single deadline.** `poll_timeout` returns the earliest instant at which
//!   the core wants `handle_timeout`; `None` means no timer. Calling `handle_timeout` early
//!   or more often than asked is allowed and must be harmless.
//! - **The network is lossy.** Transports deliver at most once and in order per peer while a
//!   link is up; a core must tolerate loss, duplication (a replaying peer) and reordering
//!   across reconnects, and must treat every message as untrusted input: decoding is bounded
//!   and a bad message is dropped (or reported as an event), never a panic.
//! - **Durability is explicit.** A core that must remember something across a crash writes
//!   it through a synchronous storage interface whose writes are durable when the call
//!   returns; anything else is lost when the node crashes. The simulator enforces this by
//!   rebuilding a crashed node from its durable storage alone.
//!
//! - **The host says what it knows.** Before any other input the host calls
//!   [`handle_start`](Protocol::handle_start) with [`HostInfo`] (the largest message the
//!   network carries, so a core can size its batches), and it reports every link to a peer
//!   coming up or going down with [`handle_peer`](Protocol::handle_peer), in order with the
//!   messages around it. Both have empty defaults: a core that does not care ignores them.
//!
//! Core-specific inputs (a local proposal, a query) are ordinary methods on the core; they
//! follow the same draining rule.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::NodeId;

/// Monotonic time in microseconds, as seen by a protocol core.
///
/// Not wall-clock time (that is [`Timestamp`](crate::Timestamp)): the origin is arbitrary
/// (the simulator starts at zero, a driver at the moment it started), only differences mean
/// anything. Arithmetic saturates instead of overflowing.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Time(u64);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(0);
    /// The latest representable instant; useful as "never".
    pub const MAX: Time = Time(u64::MAX);

    /// The instant `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// The instant `millis` milliseconds after the origin (saturating).
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis.saturating_mul(1_000))
    }

    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// The time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Time {
    type Output = Time;
    /// Saturates at [`Time::MAX`].
    fn add(self, rhs: Duration) -> Time {
        Time(self.0.saturating_add(duration_micros(rhs)))
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    /// Saturates at zero (see [`Time::saturating_since`]).
    fn sub(self, rhs: Time) -> Duration {
        self.saturating_since(rhs)
    }
}

impl fmt::Display for Time {
    /// Seconds with microsecond precision, e.g. `12.000345s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// What the host tells a core before its first input (see [`Protocol::handle_start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostInfo {
    /// The largest encoded message the host's network carries. A message the core sends that
    /// encodes longer is dropped by the host (and counted), never sent.
    pub max_message_len: usize,
}

impl HostInfo {
    /// Host information with the given maximum message length.
    pub const fn new(max_message_len: usize) -> Self {
        Self { max_message_len }
    }
}

/// Whether a link to a peer is up or down (see [`Protocol::handle_peer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// Messages can flow both ways.
    Up,
    /// The link is down; messages in flight may have been lost.
    Down,
}

/// A message a core wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit<M> {
    /// The destination node.
    pub to: NodeId,
    /// The message.
    pub message: M,
}

/// A sans-io protocol core: a deterministic state machine driven by its host.
///
/// See the [module documentation](self) for the contract. Messages cross the network in the
/// crate's canonical encoding ([`encoding`](crate::encoding)); hosts decode inbound bytes
/// with a size limit and drop what does not decode, so a core only ever sees well-formed
/// values of its own message type.
///
/// A minimal core that answers every ping:
///
/// ```
/// use llmkg_federation_core::{NodeId, Protocol, Time, Transmit};
/// use std::collections::VecDeque;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Ping(u64);
///
/// #[derive(Default)]
/// struct Echo { out: VecDeque<Transmit<Ping>>, seen: u64 }
///
/// impl Protocol for Echo {
///     type Message = Ping;
///     type Event = u64;
///     fn handle_message(&mut self, _now: Time, from: NodeId, msg: Ping) {
///         self.seen += 1;
///         self.out.push_back(Transmit { to: from, message: Ping(msg.0) });
///     }
///     fn handle_timeout(&mut self, _now: Time) {}
///     fn poll_transmit(&mut self) -> Option<Transmit<Ping>> { self.out.pop_front() }
///     fn poll_timeout(&self) -> Option<Time> { None }
///     fn poll_event(&mut self) -> Option<u64> { None }
/// }
/// ```
pub trait Protocol {
    /// What this core sends and receives.
    type Message: Serialize + DeserializeOwned;
    /// What this core reports to its host (decisions, commits, state changes).
    type Event;

    /// A message from `from` arrived at `now`.
    fn handle_message(&mut self, now: Time, from: NodeId, message: Self::Message);

    /// The deadline returned by [`poll_timeout`](Protocol::poll_timeout) has passed.
    fn handle_timeout(&mut self, now: Time);

    /// The next message to send, if any.
    fn poll_transmit(&mut self) -> Option<Transmit<Self::Message>>;

    /// When [`handle_timeout`](Protocol::handle_timeout) should next be called, if ever.
    fn poll_timeout(&self) -> Option<Time>;

    /// The next event for the host, if any.
    fn poll_event(&mut self) -> Option<Self::Event>;

    /// Called once, before any other input, with what the host knows about its network. A
    /// core restarted after a crash is started again. The default does nothing.
    fn handle_start(&mut self, now: Time, host: HostInfo) {
        let _ = (now, host);
    }

    /// The link to `peer` came up or went down, in order with the messages around it: a
    /// peer's messages arrive between its `Up` and its `Down`. Hosts may report a link
    /// going down and up again (a reconnect) as `Down` then `Up`. The default does nothing.
    fn handle_peer(&mut self, now: Time, peer: NodeId, link: LinkState) {
        let _ = (now, peer, link);
    }
}

impl<P: Protocol + ?Sized> Protocol for Box<P> {
    type Message = P::Message;
    type Event = P::Event;

    fn handle_message(&mut self, now: Time, from: NodeId, message: Self::Message) {
        (**self).handle_message(now, from, message);
    }

    fn handle_timeout(&mut self, now: Time) {
        (**self).handle_timeout(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit<Self::Message>> {
        (**self).poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Time> {
        (**self).poll_timeout()
    }

    fn poll_event(&mut self) -> Option<Self::Event> {
        (**self).poll_event()
    }

    fn handle_start(&mut self, now: Time, host: HostInfo) {
        (**self).handle_start(now, host);
    }

    fn handle_peer(&mut self, now: Time, peer: NodeId, link: LinkState) {
        (**self).handle_peer(now, peer, link);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_arithmetic_saturates() {
        let t = Time::from_micros(5);
        assert_eq!(t + Duration::from_micros(7), Time::from_micros(12));
        assert_eq!(Time::MAX + Duration::from_secs(1), Time::MAX);
        assert_eq!(t - Time::from_micros(9), Duration::ZERO);
        assert_eq!(Time::from_micros(9) - t, Duration::from_micros(4));
        assert_eq!(Time::from_millis(1_500).to_string(), "1.500000s");
    }
}
