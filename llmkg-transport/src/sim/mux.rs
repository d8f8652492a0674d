//! Two protocols on one node, each on its own channel.

use llmkg_federation_core::{ChannelId, HostInfo, LinkState, NodeId, Protocol, Time, Transmit};
use serde::{Deserialize, Serialize};

/// Two cores run as one, each on its own [`ChannelId`]: the composition the simulator needs
/// to run two protocols (consensus and sync, say) on every node and over the same links.
///
/// Every input reaches the core it belongs to: a message by the variant of its
/// [`MuxMessage`] (a message whose channel is not the one its core runs on is dropped and
/// counted in [`misrouted`](Self::misrouted)), a timeout by whose deadline passed, and
/// [`handle_start`](Protocol::handle_start) and [`handle_peer`](Protocol::handle_peer) by
/// both. Outputs are drained first from the first core, then from the second. Each
/// transmit carries its core's channel, so with
/// [`Sim::set_channel_of`](super::Sim::set_channel_of)`(MuxMessage::channel)` the
/// simulator queues the two protocols apart on links with a
/// [`Bandwidth`](super::Bandwidth) model, like a channel-aware transport does.
///
/// Over a real [`Transport`](llmkg_federation_core::Transport) there is no need for it: run
/// one [`Driver`](crate::Driver) per protocol, each on its own channel of the same transport
/// ([`DriverConfig::channel`](crate::DriverConfig::channel)).
///
/// ```
/// use llmkg_federation_core::ChannelId;
/// use llmkg_transport::echo::{Echo, EchoConfig};
/// use llmkg_transport::sim::{Mux, MuxMessage, SimBuilder};
///
/// let (consensus, sync) = (ChannelId::new(1).unwrap(), ChannelId::new(2).unwrap());
/// let mut sim = SimBuilder::new(1).nodes(2).build(move |ctx| {
///     let targets: Vec<_> = ctx.peers().collect();
///     let first = Echo::new(EchoConfig::new(targets.clone()));
///     let second = Echo::new(EchoConfig::new(targets));
///     Mux::new((consensus, first), (sync, second)).expect("two different channels")
/// })?;
/// sim.set_channel_of(MuxMessage::channel);
/// sim.run();
/// assert_eq!(sim.drain_events().len(), 4, "each node heard a pong on each channel");
/// # Ok::<(), llmkg_transport::sim::SimError>(())
/// ```
#[derive(Debug)]
pub struct Mux<A, B> {
    channels: (ChannelId, ChannelId),
    first: A,
    second: B,
    misrouted: u64,
}

/// What a [`Mux`] sends: a message of one of its two cores, with the channel it travels on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MuxMessage<MA, MB> {
    /// For the first core.
    First(ChannelId, MA),
    /// For the second core.
    Second(ChannelId, MB),
}

impl<MA, MB> MuxMessage<MA, MB> {
    /// The channel the message travels on.
    pub fn channel(&self) -> ChannelId {
        match self {
            MuxMessage::First(c, _) | MuxMessage::Second(c, _) => *c,
        }
    }
}

/// What a [`Mux`] reports: an event of one of its two cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxEvent<EA, EB> {
    /// From the first core.
    First(EA),
    /// From the second core.
    Second(EB),
}

impl<A: Protocol, B: Protocol> Mux<A, B> {
    /// `first` on its channel and `second` on its own; `None` if the two channels are the
    /// same.
    pub fn new(first: (ChannelId, A), second: (ChannelId, B)) -> Option<Self> {
        (first.0 != second.0).then(|| Self {
            channels: (first.0, second.0),
            first: first.1,
            second: second.1,
            misrouted: 0,
        })
    }

    /// The first core.
    pub fn first(&self) -> &A {
        &self.first
    }

    /// The first core, for core-specific inputs (drained with the rest by the host).
    pub fn first_mut(&mut self) -> &mut A {
        &mut self.first
    }

    /// The second core.
    pub fn second(&self) -> &B {
        &self.second
    }

    /// The second core, for core-specific inputs.
    pub fn second_mut(&mut self) -> &mut B {
        &mut self.second
    }

    /// The channels of the first and the second core.
    pub fn channels(&self) -> (ChannelId, ChannelId) {
        self.channels
    }

    /// Messages dropped because they arrived tagged with a channel their core does not run
    /// on.
    pub fn misrouted(&self) -> u64 {
        self.misrouted
    }
}

fn due(deadline: Option<Time>, now: Time) -> bool {
    deadline.is_some_and(|d| d <= now)
}

impl<A: Protocol, B: Protocol> Protocol for Mux<A, B> {
    type Message = MuxMessage<A::Message, B::Message>;
    type Event = MuxEvent<A::Event, B::Event>;

    fn handle_message(&mut self, now: Time, from: NodeId, message: Self::Message) {
        match message {
            MuxMessage::First(c, m) if c == self.channels.0 => {
                self.first.handle_message(now, from, m);
            }
            MuxMessage::Second(c, m) if c == self.channels.1 => {
                self.second.handle_message(now, from, m);
            }
            _ => self.misrouted += 1,
        }
    }

    fn handle_timeout(&mut self, now: Time) {
        if due(self.first.poll_timeout(), now) {
            self.first.handle_timeout(now);
        }
        if due(self.second.poll_timeout(), now) {
            self.second.handle_timeout(now);
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit<Self::Message>> {
        if let Some(t) = self.first.poll_transmit() {
            return Some(Transmit {
                to: t.to,
                message: MuxMessage::First(self.channels.0, t.message),
            });
        }
        let t = self.second.poll_transmit()?;
        Some(Transmit { to: t.to, message: MuxMessage::Second(self.channels.1, t.message) })
    }

    fn poll_timeout(&self) -> Option<Time> {
        match (self.first.poll_timeout(), self.second.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn poll_event(&mut self) -> Option<Self::Event> {
        if let Some(e) = self.first.poll_event() {
            return Some(MuxEvent::First(e));
        }
        self.second.poll_event().map(MuxEvent::Second)
    }

    fn handle_start(&mut self, now: Time, host: HostInfo) {
        self.first.handle_start(now, host);
        self.second.handle_start(now, host);
    }

    fn handle_peer(&mut self, now: Time, peer: NodeId, link: LinkState) {
        self.first.handle_peer(now, peer, link);
        self.second.handle_peer(now, peer, link);
    }
}
