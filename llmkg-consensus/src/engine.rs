//! [`RaftEngine`]: the Raft core behind the [`ConsensusEngine`] contract, over any
//! [`Transport`].
//!
//! The engine runs one [`Raft`] core of one group in the generic [`Driver`] of
//! `llmkg-transport`, on the group's own transport channel, and adds what a host needs:
//!
//! - **Proposals from any member.** A proposal made at a follower is forwarded to the leader
//!   as a transport request on the group's channel; the leader appends it and answers with
//!   its index and term, and the follower waits for its own replica to apply that entry.
//!   Without a known leader the engine retries until the timeout; in a group that has never
//!   had a leader, the proposing node campaigns at once ([`Raft::campaign_if_fresh`]).
//! - **Group commit.** Proposals waiting at the leader are appended together, in one durable
//!   write ([`Raft::propose_batch`]), so many concurrent proposers share each write and each
//!   round of replication.
//! - **Decisions with evidence.** When the entry is applied with the term it was appended in,
//!   the host's [`DecisionMachine`] has given its [`Outcome`], and the result carries
//!   [`Evidence`] a third party can check with the group's membership alone. If the entry
//!   was replaced by a new leader's, the proposal fails with [`ConsensusError::Lost`]; a
//!   timeout is [`ConsensusError::Timeout`] (the proposal may still be decided).
//! - **The decided log, in order**, through [`ConsensusEngine::next_decided`].
//!
//! The engine is two parts: the [`RaftEngine`] handle (an `Arc`, usable as
//! `Arc<dyn ConsensusEngine>`) and an [`EngineTask`] future that the host polls on its
//! executor. Nothing is spawned.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use llmkg_consensus::engine::{AcceptAll, EngineOptions, RaftEngine};
//! use llmkg_consensus::raft::Configuration;
//! use llmkg_federation_core::consensus::{ConsensusEngine, GroupId, Member};
//! use llmkg_federation_core::{FederationId, MemoryKv, NodeKeypair, OrgId};
//! use llmkg_transport::{InProcessNetwork, StdTimer};
//!
//! let timer = Arc::new(StdTimer::new());
//! let network = InProcessNetwork::new(timer.clone());
//! let keypair = NodeKeypair::from_secret_bytes([1; 32]);
//! let me = Member { node: keypair.node_id(), org: OrgId::new("acme")? };
//! let transport = Arc::new(network.join(keypair.node_id())?);
//! let options = EngineOptions::new(
//!     keypair,
//!     FederationId::from_name("f"),
//!     GroupId::from_bytes([7; 32]),
//!     Some(Configuration::new(vec![me], Vec::new())),
//! );
//! let (engine, task) = RaftEngine::start(options, MemoryKv::new(), AcceptAll, transport, timer)?;
//! tokio::spawn(task);
//! let engine: Arc<dyn ConsensusEngine> = engine;
//! // engine.propose(signed_proposal, timeout).await? ...
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use event_listener::Event;
use futures_util::future::{Either, select};
use llmkg_federation_core::consensus::{
    ConsensusEngine, ConsensusError, ConsensusProposal, ConsensusResult, ConsensusStrategy,
    DecidedEntry, Evidence, GroupId, Health, Member, Membership, Outcome, ProposalId,
};
use llmkg_federation_core::{
    BoxFuture, ChannelId, Clock, FederationId, KvStore, NodeId, NodeKeypair, OrgId, Signed,
    SystemClock, Timer, Transport, encoding,
};
use llmkg_transport::{Driver, DriverConfig, DriverHandle};
use serde::{Deserialize, Serialize};

use crate::raft::{
    Applied, Configuration, ProposeError, Raft, RaftConfig, RaftError, RaftEvent, RaftSetup,
    StateMachine,
};

pub use llmkg_federation_core::consensus::DecisionMachine;

/// Approves every well-formed proposal (a stand-in for a registry in tests and benchmarks).
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAll;

impl DecisionMachine for AcceptAll {
    fn decide(&mut self, _index: u64, _proposal: &Signed<ConsensusProposal>) -> Outcome {
        Outcome::Approved
    }

    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// What a group's log entry decided (the output of [`Decisions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The proposal, if the command was a well-formed proposal of this group and federation.
    pub proposal: Option<Signed<ConsensusProposal>>,
    /// The outcome.
    pub outcome: Outcome,
}

/// The state machine a [`RaftEngine`] runs: decodes each command as a signed proposal of the
/// group's federation and group, and asks the host's [`DecisionMachine`]. A command that is
/// not one is rejected, the same way on every member.
pub struct Decisions<M> {
    machine: M,
    federation: FederationId,
    group: GroupId,
}

impl<M: DecisionMachine> Decisions<M> {
    /// Wraps `machine` for `group` of `federation`.
    pub fn new(machine: M, federation: FederationId, group: GroupId) -> Self {
        Self { machine, federation, group }
    }

    /// The host's machine.
    pub fn machine(&self) -> &M {
        &self.machine
    }
}

impl<M: DecisionMachine> StateMachine for Decisions<M> {
    type Output = Decision;

    fn apply(&mut self, index: u64, command: &[u8]) -> Decision {
        match Signed::<ConsensusProposal>::decode(command, &self.federation) {
            Ok(p) if p.open(&self.federation).is_ok_and(|v| v.group == self.group) => {
                let outcome = self.machine.decide(index, &p);
                Decision { proposal: Some(p), outcome }
            }
            Ok(_) => Decision {
                proposal: None,
                outcome: Outcome::Rejected { reason: "a proposal for another group".into() },
            },
            Err(_) => Decision {
                proposal: None,
                outcome: Outcome::Rejected { reason: "not a signed proposal".into() },
            },
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.machine.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.machine.restore(snapshot)
    }
}

/// How to start a [`RaftEngine`].
#[non_exhaustive]
pub struct EngineOptions {
    /// The node's key.
    pub keypair: NodeKeypair,
    /// The federation.
    pub federation: FederationId,
    /// The group.
    pub group: GroupId,
    /// The group's first configuration (founding members; `None` for a joining node).
    pub bootstrap: Option<Configuration>,
    /// The protocol asked for; only [`ConsensusStrategy::Raft`] is available.
    pub strategy: ConsensusStrategy,
    /// The transport channel of this group. Default 1.
    pub channel: ChannelId,
    /// Raft settings (`signed_acks` is always on in an engine: results carry evidence).
    pub raft: RaftConfig,
    /// Seeds the election timeouts.
    pub seed: u64,
    /// Stamps `decided_at`. Default: the system clock.
    pub clock: Arc<dyn Clock>,
    /// Decided entries kept for [`ConsensusEngine::next_decided`]. Default 65,536.
    pub decided_buffer: usize,
    /// The most proposals appended in one write. Default 1,024.
    pub max_batch: usize,
}

impl EngineOptions {
    /// Default options for `keypair` in `group` of `federation`.
    pub fn new(
        keypair: NodeKeypair,
        federation: FederationId,
        group: GroupId,
        bootstrap: Option<Configuration>,
    ) -> Self {
        let seed =
            u64::from_le_bytes(keypair.node_id().as_bytes()[..8].try_into().unwrap_or([0; 8]));
        Self {
            keypair,
            federation,
            group,
            bootstrap,
            strategy: ConsensusStrategy::Raft,
            channel: ChannelId::new(1).unwrap_or(ChannelId::DEFAULT),
            raft: RaftConfig::default(),
            seed,
            clock: Arc::new(SystemClock),
            decided_buffer: 65_536,
            max_batch: 1024,
        }
    }
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("node", &self.keypair.node_id())
            .field("federation", &self.federation)
            .field("group", &self.group)
            .field("strategy", &self.strategy)
            .field("channel", &self.channel)
            .field("raft", &self.raft)
            .finish_non_exhaustive()
    }
}

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The strategy is not available.
    #[error(transparent)]
    Strategy(#[from] ConsensusError),
    /// The node's stored state could not be opened.
    #[error(transparent)]
    Raft(#[from] RaftError),
    /// The bootstrap configuration is not a valid membership.
    #[error("invalid bootstrap membership: {0}")]
    Membership(String),
}

/// Whether `strategy` is one this crate can run: Raft only, for now.
pub fn require_available(strategy: &ConsensusStrategy) -> Result<(), ConsensusError> {
    match strategy {
        ConsensusStrategy::Raft => Ok(()),
        other => Err(ConsensusError::NotAvailable(other.clone())),
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Forward {
    Propose(Vec<u8>),
}

#[derive(Debug, Serialize, Deserialize)]
enum ForwardReply {
    Appended { index: u64, term: u64 },
    NotLeader { leader: Option<NodeId> },
    Refused { reason: String },
}

type Reply = Result<(Decision, Option<Evidence>, u64), ConsensusError>;

struct Waiter {
    term: u64,
    tx: async_channel::Sender<Reply>,
}

struct Queued {
    command: Vec<u8>,
    reply: async_channel::Sender<Result<(u64, u64), ProposeError>>,
    /// The local proposer's waiter, registered in the same critical section as the append
    /// so that the entry's application cannot be missed.
    waiter: Option<async_channel::Sender<Reply>>,
}

#[derive(Default)]
struct State {
    /// Proposals waiting for their entry: index -> waiters.
    pending: BTreeMap<u64, Vec<Waiter>>,
    /// Recently applied commands: index -> (term, decision), for waiters that register late.
    recent: BTreeMap<u64, (u64, Decision)>,
    /// Applied with the right term, waiting for a certificate.
    uncertified: BTreeMap<u64, (Decision, Vec<Waiter>)>,
    decided: VecDeque<DecidedEntry>,
    dropped_through: u64,
    cursor: u64,
    closed: bool,
}

const RECENT: usize = 4096;

type Core<K, M> = Raft<K, Decisions<M>>;

struct Inner<K: KvStore + 'static, M: DecisionMachine> {
    handle: DriverHandle<Core<K, M>>,
    me: NodeId,
    timer: Arc<dyn Timer>,
    clock: Arc<dyn Clock>,
    federation: FederationId,
    group: GroupId,
    /// The membership before the node learns one (its bootstrap, or itself alone).
    initial: Membership,
    state: Mutex<State>,
    changed: Event,
    queue_tx: async_channel::Sender<Queued>,
    /// Wakes the pump to look for certificates (a waiter registered after its entry applied).
    wake_tx: async_channel::Sender<()>,
    wake_rx: async_channel::Receiver<()>,
    decided_buffer: usize,
}

impl<K: KvStore + 'static, M: DecisionMachine> Inner<K, M> {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One group's consensus over a transport; see the [module documentation](self).
pub struct RaftEngine<K: KvStore + 'static, M: DecisionMachine> {
    inner: Arc<Inner<K, M>>,
}

/// The future that runs a [`RaftEngine`]: the driver, the event pump, the proposal batcher
/// and the server of forwarded proposals. Poll it to completion on any executor; it ends
/// when the engine is shut down or the transport closes.
pub struct EngineTask {
    future: BoxFuture<'static, ()>,
}

impl Future for EngineTask {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.future.as_mut().poll(cx)
    }
}

impl<K: KvStore + 'static, M: DecisionMachine> RaftEngine<K, M> {
    /// Opens the node's state in `kv` and starts the engine on `transport`. Returns the
    /// engine and the task the host must poll.
    pub fn start(
        options: EngineOptions,
        kv: K,
        machine: M,
        transport: Arc<dyn Transport>,
        timer: Arc<dyn Timer>,
    ) -> Result<(Arc<Self>, EngineTask), StartError> {
        require_available(&options.strategy)?;
        let EngineOptions {
            keypair,
            federation,
            group,
            bootstrap,
            channel,
            raft,
            seed,
            clock,
            decided_buffer,
            max_batch,
            ..
        } = options;
        let initial = match bootstrap.as_ref() {
            Some(c) => c.membership(group).ok_or_else(|| {
                StartError::Membership("a configuration needs voters, each once".into())
            })?,
            None => {
                let org =
                    OrgId::new("unknown").map_err(|e| StartError::Membership(e.to_string()))?;
                let me = Member { node: keypair.node_id(), org };
                Membership::new(group, vec![me], Vec::new())
                    .map_err(|e| StartError::Membership(e.to_string()))?
            }
        };
        let me = keypair.node_id();
        // Results carry evidence, which needs signed acknowledgements.
        let mut raft = raft;
        raft.signed_acks = true;
        let setup = RaftSetup { keypair, federation, group, bootstrap, config: raft, seed };
        let core = Raft::open(setup, kv, Decisions::new(machine, federation, group))?;
        let config = DriverConfig { channel, event_capacity: 4096, ..DriverConfig::default() };
        let (driver, handle) = Driver::with_config(core, transport, Arc::clone(&timer), config);
        let (queue_tx, queue_rx) = async_channel::bounded(65_536);
        let (wake_tx, wake_rx) = async_channel::bounded(1);
        let inner = Arc::new(Inner {
            handle,
            me,
            timer,
            clock,
            federation,
            group,
            initial,
            state: Mutex::new(State::default()),
            changed: Event::new(),
            queue_tx,
            wake_tx,
            wake_rx,
            decided_buffer: decided_buffer.max(1),
        });
        let run = {
            let inner = Arc::clone(&inner);
            async move {
                let driver = Box::pin(driver.run());
                let pump = Box::pin(pump(Arc::clone(&inner)));
                let batcher = Box::pin(batcher(Arc::clone(&inner), queue_rx, max_batch.max(1)));
                let server = Box::pin(serve_forwards(Arc::clone(&inner)));
                let helpers = Box::pin(async move {
                    futures_util::future::join3(pump, batcher, server).await;
                });
                let _ = select(driver, helpers).await;
                inner.handle.shutdown();
                close(&inner);
            }
        };
        Ok((Arc::new(Self { inner }), EngineTask { future: Box::pin(run) }))
    }

    /// Stops the engine: its task ends soon after, and waiting proposals fail with
    /// [`ConsensusError::Closed`].
    pub fn shutdown(&self) {
        self.inner.handle.shutdown();
        self.inner.queue_tx.close();
        close(&self.inner);
    }

    /// Reads the Raft core (its metrics, log, configuration).
    pub fn with_core<R>(&self, f: impl FnOnce(&Core<K, M>) -> R) -> R {
        self.inner.handle.call(|core, _| f(core))
    }

    /// Changes the group's voters and learners (see [`Raft::change_membership`]); this node
    /// must lead.
    pub fn change_membership(&self, membership: &Membership) -> Result<u64, ProposeError> {
        self.inner.handle.call(|core, now| core.change_membership(now, membership))
    }

    /// Hands leadership to `to` (see [`Raft::transfer_leadership`]).
    pub fn transfer_leadership(&self, to: NodeId) -> Result<(), ProposeError> {
        self.inner.handle.call(|core, now| core.transfer_leadership(now, to))
    }

    /// The driver's counters (messages, bytes, decode failures).
    pub fn driver_stats(&self) -> llmkg_transport::DriverStats {
        self.inner.handle.stats()
    }

    async fn propose_inner(
        &self,
        proposal: Signed<ConsensusProposal>,
        timeout: Duration,
    ) -> Result<ConsensusResult, ConsensusError> {
        let inner = &self.inner;
        let value = proposal.open(&inner.federation).map_err(|_| ConsensusError::WrongGroup)?;
        if value.group != inner.group {
            return Err(ConsensusError::WrongGroup);
        }
        let id = ProposalId::of(&proposal).map_err(|e| ConsensusError::Other(Box::new(e)))?;
        let command = proposal.encode().map_err(|e| ConsensusError::Other(Box::new(e)))?;
        let deadline = inner.timer.now() + timeout;
        let expired = || ConsensusError::Timeout { after: timeout };
        // Get the proposal appended: here if this node leads, else at the leader.
        let (_index, _term, rx) = loop {
            if inner.timer.now() >= deadline {
                return Err(expired());
            }
            let leader = inner.handle.call(|core, _| core.leader());
            let attempt = if leader == Some(inner.me) {
                self.append_here(command.clone(), deadline, timeout).await?
            } else if let Some(leader) = leader {
                self.append_at(leader, command.clone(), deadline).await?
            } else {
                // A group that has never elected a leader elects one now rather than after
                // an election timeout (this node campaigns; any voter may win).
                inner.handle.call(|core, now| core.campaign_if_fresh(now));
                None
            };
            if let Some(appended) = attempt {
                break appended;
            }
            // No leader yet (or it just changed): wait a little and try again.
            let pause = inner.timer.now() + Duration::from_millis(10);
            inner.timer.sleep_until(pause.min(deadline)).await;
        };
        let wait = Box::pin(rx.recv());
        let sleep = inner.timer.sleep_until(deadline);
        let reply = match select(wait, sleep).await {
            Either::Left((reply, _)) => reply.map_err(|_| ConsensusError::Closed)?,
            // Give up waiting; the proposal may still be decided. (Its waiter goes when its
            // index is applied: answering a dropped receiver is a no-op.)
            Either::Right(((), _)) => return Err(expired()),
        };
        let (decision, evidence, index) = reply?;
        let evidence = evidence.ok_or(ConsensusError::Closed)?;
        let membership = self.membership();
        let participants =
            evidence.verify(&membership, &inner.federation).map(|c| c.signers).unwrap_or_default();
        Ok(ConsensusResult {
            proposal: id,
            approved: decision.outcome == Outcome::Approved,
            outcome: decision.outcome,
            strategy: ConsensusStrategy::Raft,
            participants,
            decided_at: inner.clock.now(),
            index,
            evidence,
        })
    }

    /// Appends at this node (the leader) through the batcher. `None`: not the leader after
    /// all.
    async fn append_here(
        &self,
        command: Vec<u8>,
        deadline: llmkg_federation_core::Time,
        timeout: Duration,
    ) -> Result<Option<(u64, u64, async_channel::Receiver<Reply>)>, ConsensusError> {
        let inner = &self.inner;
        let (tx, rx) = async_channel::bounded(1);
        let (waiter_tx, waiter_rx) = async_channel::bounded(1);
        inner
            .queue_tx
            .send(Queued { command, reply: tx, waiter: Some(waiter_tx) })
            .await
            .map_err(|_| ConsensusError::Closed)?;
        let sleep = inner.timer.sleep_until(deadline);
        let appended = match select(Box::pin(rx.recv()), sleep).await {
            Either::Left((r, _)) => r.map_err(|_| ConsensusError::Closed)?,
            Either::Right(_) => return Err(ConsensusError::Timeout { after: timeout }),
        };
        match appended {
            Ok((index, term)) => Ok(Some((index, term, waiter_rx))),
            Err(ProposeError::NotLeader { .. }) | Err(ProposeError::Transferring) => Ok(None),
            Err(e) => Err(ConsensusError::Other(Box::new(e))),
        }
    }

    /// Forwards to `leader`. `None`: it does not lead (any more) or did not answer in time.
    async fn append_at(
        &self,
        leader: NodeId,
        command: Vec<u8>,
        deadline: llmkg_federation_core::Time,
    ) -> Result<Option<(u64, u64, async_channel::Receiver<Reply>)>, ConsensusError> {
        let inner = &self.inner;
        let payload = encoding::try_encode(&Forward::Propose(command))
            .map_err(|e| ConsensusError::Other(Box::new(e)))?;
        let left = deadline.saturating_since(inner.timer.now());
        let wait = left.min(Duration::from_millis(500));
        let Ok(bytes) = inner.handle.request(leader, payload, wait).await else {
            return Ok(None);
        };
        match encoding::decode_with_limit::<ForwardReply>(&bytes, 1024) {
            Ok(ForwardReply::Appended { index, term }) => {
                Ok(Some((index, term, register(inner, index, term))))
            }
            Ok(ForwardReply::NotLeader { .. }) => Ok(None),
            Ok(ForwardReply::Refused { reason }) => {
                Err(ConsensusError::Unavailable { reason, leader: Some(leader) })
            }
            Err(_) => Ok(None),
        }
    }
}

/// Registers a waiter for entry `index` of `term`, or answers at once if it was already
/// applied.
fn register<K: KvStore + 'static, M: DecisionMachine>(
    inner: &Inner<K, M>,
    index: u64,
    term: u64,
) -> async_channel::Receiver<Reply> {
    let (tx, rx) = async_channel::bounded(1);
    let mut state = inner.state();
    if state.closed {
        let _ = tx.try_send(Err(ConsensusError::Closed));
        return rx;
    }
    if let Some((t, decision)) = state.recent.get(&index).cloned() {
        if t != term {
            let _ = tx.try_send(Err(ConsensusError::Lost));
        } else {
            state
                .uncertified
                .entry(index)
                .or_insert_with(|| (decision, Vec::new()))
                .1
                .push(Waiter { term, tx });
        }
        drop(state);
        let _ = inner.wake_tx.try_send(());
        return rx;
    }
    state.pending.entry(index).or_default().push(Waiter { term, tx });
    rx
}

fn close<K: KvStore + 'static, M: DecisionMachine>(inner: &Inner<K, M>) {
    let mut state = inner.state();
    state.closed = true;
    for (_, waiters) in std::mem::take(&mut state.pending) {
        for w in waiters {
            let _ = w.tx.try_send(Err(ConsensusError::Closed));
        }
    }
    for (_, (_, waiters)) in std::mem::take(&mut state.uncertified) {
        for w in waiters {
            let _ = w.tx.try_send(Err(ConsensusError::Closed));
        }
    }
    drop(state);
    inner.changed.notify(usize::MAX);
}

/// Takes the core's events: resolves waiting proposals and feeds the decided log.
async fn pump<K: KvStore + 'static, M: DecisionMachine>(inner: Arc<Inner<K, M>>) {
    loop {
        let has_uncertified = !inner.state().uncertified.is_empty();
        // Certificates arrive with later messages: while some applied entry waits for one,
        // look again soon even without events.
        let tick: BoxFuture<'static, ()> = if has_uncertified {
            inner.timer.sleep_until(inner.timer.now() + Duration::from_millis(2))
        } else {
            Box::pin(futures_util::future::pending())
        };
        let woken = Box::pin(async {
            let _ = inner.wake_rx.recv().await;
        });
        let next = Box::pin(inner.handle.next_event());
        let event = match select(next, select(tick, woken)).await {
            Either::Left((Some(e), _)) => Some(e),
            Either::Left((None, _)) => return,
            Either::Right(_) => None,
        };
        let mut batch: Vec<RaftEvent<Decision>> = event.into_iter().collect();
        while let Some(e) = inner.handle.try_next_event() {
            batch.push(e);
            if batch.len() >= 1024 {
                break;
            }
        }
        let mut state = inner.state();
        for event in batch {
            let RaftEvent::Applied { index, term, entry: Applied::Command(decision), .. } = event
            else {
                continue;
            };
            if let Some(proposal) = decision.proposal.clone() {
                if state.decided.len() >= inner.decided_buffer
                    && let Some(old) = state.decided.pop_front()
                {
                    state.dropped_through = old.index;
                }
                // A restarted node applies again: keep the buffer in log order.
                if state.decided.back().is_none_or(|d| d.index < index) {
                    let outcome = decision.outcome.clone();
                    state.decided.push_back(DecidedEntry { index, proposal, outcome });
                }
            }
            state.recent.insert(index, (term, decision.clone()));
            while state.recent.len() > RECENT {
                state.recent.pop_first();
            }
            if let Some(waiters) = state.pending.remove(&index) {
                let (right, wrong): (Vec<Waiter>, Vec<Waiter>) =
                    waiters.into_iter().partition(|w| w.term == term);
                for w in wrong {
                    let _ = w.tx.try_send(Err(ConsensusError::Lost));
                }
                if !right.is_empty() {
                    state
                        .uncertified
                        .entry(index)
                        .or_insert_with(|| (decision, Vec::new()))
                        .1
                        .extend(right);
                }
            }
        }
        // Waiters whose entry is applied: attach evidence if the core can certify it now.
        let indices: Vec<u64> = state.uncertified.keys().copied().collect();
        drop(state);
        if !indices.is_empty() {
            let found: Vec<(u64, Option<Evidence>)> = inner.handle.call(|core, _| {
                indices.iter().copied().zip(core.evidence_batch(&indices)).collect()
            });
            let mut state = inner.state();
            for (index, evidence) in found {
                let Some(evidence) = evidence else { continue };
                if let Some((decision, waiters)) = state.uncertified.remove(&index) {
                    for w in waiters {
                        let _ =
                            w.tx.try_send(Ok((decision.clone(), Some(evidence.clone()), index)));
                    }
                }
            }
        }
        inner.changed.notify(usize::MAX);
    }
}

/// Appends queued proposals in batches (group commit).
async fn batcher<K: KvStore + 'static, M: DecisionMachine>(
    inner: Arc<Inner<K, M>>,
    queue: async_channel::Receiver<Queued>,
    max_batch: usize,
) {
    while let Ok(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let commands: Vec<Vec<u8>> = batch.iter().map(|q| q.command.clone()).collect();
        let result = inner.handle.call(|core, now| {
            let result = core.propose_batch(now, commands);
            if let Ok((first, _, term)) = &result {
                let mut state = inner.state();
                for (i, q) in batch.iter().enumerate() {
                    if let Some(tx) = &q.waiter {
                        let waiter = Waiter { term: *term, tx: tx.clone() };
                        state.pending.entry(first + i as u64).or_default().push(waiter);
                    }
                }
            }
            result
        });
        match result {
            Ok((first, _, term)) => {
                for (i, q) in batch.into_iter().enumerate() {
                    let _ = q.reply.try_send(Ok((first + i as u64, term)));
                }
            }
            Err(e) => {
                for q in batch {
                    let _ = q.reply.try_send(Err(e.clone()));
                }
            }
        }
    }
}

/// Serves proposals forwarded by other members.
async fn serve_forwards<K: KvStore + 'static, M: DecisionMachine>(inner: Arc<Inner<K, M>>) {
    let max = 64 << 20;
    while let Some(request) = inner.handle.next_request().await {
        let member = inner.handle.call(|core, _| core.configuration().contains(&request.from));
        let reply = match encoding::decode_with_limit::<Forward>(&request.payload, max) {
            _ if !member => ForwardReply::Refused { reason: "not a member of the group".into() },
            Err(_) => ForwardReply::Refused { reason: "malformed request".into() },
            Ok(Forward::Propose(command)) => {
                let ok = Signed::<ConsensusProposal>::decode(&command, &inner.federation)
                    .is_ok_and(|p| p.open(&inner.federation).is_ok_and(|v| v.group == inner.group));
                if !ok {
                    ForwardReply::Refused { reason: "not a signed proposal of this group".into() }
                } else {
                    let (tx, rx) = async_channel::bounded(1);
                    let queued = Queued { command, reply: tx, waiter: None };
                    if inner.queue_tx.send(queued).await.is_err() {
                        return;
                    }
                    match rx.recv().await {
                        Ok(Ok((index, term))) => ForwardReply::Appended { index, term },
                        Ok(Err(ProposeError::NotLeader { leader })) => {
                            ForwardReply::NotLeader { leader }
                        }
                        Ok(Err(e)) => ForwardReply::Refused { reason: e.to_string() },
                        Err(_) => return,
                    }
                }
            }
        };
        if let Ok(bytes) = encoding::try_encode(&reply) {
            let _ = inner.handle.respond(&request, bytes).await;
        }
    }
}

impl<K: KvStore + 'static, M: DecisionMachine> ConsensusEngine for RaftEngine<K, M> {
    fn strategy(&self) -> ConsensusStrategy {
        ConsensusStrategy::Raft
    }

    fn membership(&self) -> Membership {
        let current = self.inner.handle.call(|core, _| core.membership());
        current.unwrap_or_else(|| self.inner.initial.clone())
    }

    fn health(&self) -> Health {
        self.inner.handle.call(|core, _| {
            Health::new(
                core.leader(),
                core.commit_index(),
                core.applied_index(),
                core.reachable_voters(),
            )
        })
    }

    fn propose(
        &self,
        proposal: Signed<ConsensusProposal>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<ConsensusResult, ConsensusError>> {
        Box::pin(self.propose_inner(proposal, timeout))
    }

    fn next_decided(&self) -> BoxFuture<'_, Result<DecidedEntry, ConsensusError>> {
        Box::pin(async move {
            loop {
                let listener = self.inner.changed.listen();
                {
                    let mut state = self.inner.state();
                    if state.cursor < state.dropped_through {
                        let through = state.dropped_through;
                        state.cursor = through;
                        return Err(ConsensusError::Lagged { through });
                    }
                    let cursor = state.cursor;
                    if let Some(entry) = state.decided.iter().find(|d| d.index > cursor).cloned() {
                        state.cursor = entry.index;
                        return Ok(entry);
                    }
                    if state.closed {
                        return Err(ConsensusError::Closed);
                    }
                }
                listener.await;
            }
        })
    }

    fn change_membership(
        &self,
        membership: Membership,
    ) -> BoxFuture<'_, Result<(), ConsensusError>> {
        Box::pin(async move {
            match RaftEngine::change_membership(self, &membership) {
                Ok(_) => Ok(()),
                Err(ProposeError::NotLeader { leader }) => Err(ConsensusError::Unavailable {
                    reason: "only the leader changes the membership".into(),
                    leader,
                }),
                Err(e @ (ProposeError::Transferring | ProposeError::ChangeInFlight)) => {
                    Err(ConsensusError::Unavailable { reason: e.to_string(), leader: None })
                }
                Err(e) => Err(ConsensusError::Other(Box::new(e))),
            }
        })
    }
}
