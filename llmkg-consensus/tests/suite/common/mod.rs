//! The simulator harness of the Raft tests: a replicated key-value state machine, a cluster
//! builder and an invariant checker run after every simulator step.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use llmkg_consensus::raft::{
    Applied, Configuration, Raft, RaftConfig, RaftEvent, RaftSetup, Role, StateMachine,
};
use llmkg_federation_core::consensus::{ChainHash, GroupId, Member};
use llmkg_federation_core::{FederationId, KvStore, NodeId, OrgId, encoding};
use llmkg_transport::sim::{Disk, NodeContext, Sim, SimBuilder};
use serde::{Deserialize, Serialize};

/// A command of the replicated key-value store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvCommand {
    /// Sets `key` to `value`; returns the previous value.
    Put { key: u8, value: u64 },
    /// Reads `key`.
    Get { key: u8 },
}

/// A replicated map from small keys to numbers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KvMachine {
    pub map: BTreeMap<u8, u64>,
    pub applied: Vec<u64>,
}

impl StateMachine for KvMachine {
    type Output = Option<u64>;

    fn apply(&mut self, index: u64, command: &[u8]) -> Option<u64> {
        self.applied.push(index);
        match encoding::decode_with_limit::<KvCommand>(command, 64) {
            Ok(KvCommand::Put { key, value }) => self.map.insert(key, value),
            Ok(KvCommand::Get { key }) => self.map.get(&key).copied(),
            Err(_) => None,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        encoding::try_encode(&self.map).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.map =
            encoding::decode_with_limit(snapshot, snapshot.len()).map_err(|e| e.to_string())?;
        self.applied.clear();
        Ok(())
    }
}

pub type Node = Raft<Disk, KvMachine>;

pub fn federation() -> FederationId {
    FederationId::from_name("raft-tests")
}

pub fn group() -> GroupId {
    GroupId::from_bytes([42; 32])
}

pub fn member(node: NodeId) -> Member {
    Member { node, org: OrgId::new(format!("org-{}", node.short())).expect("org id") }
}

/// Fast timers for the simulator (links of a few milliseconds).
pub fn test_config() -> RaftConfig {
    let mut c = RaftConfig::default();
    c.election_timeout_min = Duration::from_millis(100);
    c.election_timeout_max = Duration::from_millis(200);
    c.heartbeat_interval = Duration::from_millis(30);
    c.max_append_entries = 16;
    c.max_inflight = 4;
    c.snapshot_threshold = 40;
    c.snapshot_chunk_len = 64;
    c
}

/// A simulated cluster whose first `founders` nodes bootstrap the group as voters; nodes
/// added later join with no configuration (they learn it from the leader).
pub fn build(builder: SimBuilder, founders: usize, config: RaftConfig) -> Sim<Node> {
    builder
        .build(move |ctx: NodeContext| {
            let bootstrap = (ctx.index < founders).then(|| {
                let voters = ctx.nodes.iter().take(founders).map(|n| member(*n)).collect();
                Configuration::new(voters, Vec::new())
            });
            let setup = RaftSetup {
                keypair: ctx.keypair(),
                federation: federation(),
                group: group(),
                bootstrap,
                config: config.clone(),
                seed: ctx.seed,
            };
            Raft::open(setup, ctx.disk.clone(), KvMachine::default()).expect("open raft node")
        })
        .expect("build sim")
}

/// The live node that leads in the highest term, if any.
pub fn leader(sim: &Sim<Node>) -> Option<NodeId> {
    sim.node_ids()
        .iter()
        .filter_map(|id| sim.node(*id).map(|n| (*id, n)))
        .filter(|(_, n)| n.role() == Role::Leader)
        .max_by_key(|(_, n)| n.term())
        .map(|(id, _)| id)
}

#[derive(Default, Clone)]
struct NodeView {
    term: u64,
    vote: Option<NodeId>,
    commit: u64,
    applied: u64,
    last: u64,
    leader_term: Option<(u64, u64, ChainHash)>,
}

/// Checks the Raft invariants over a run, after every step.
#[derive(Default)]
pub struct Checker {
    views: HashMap<NodeId, NodeView>,
    leaders: BTreeMap<u64, NodeId>,
    /// Index -> (term, chain) of every entry known committed.
    committed: BTreeMap<u64, (u64, ChainHash)>,
    /// (index, term) -> chain of every entry seen at the end of some log.
    seen: HashMap<(u64, u64), ChainHash>,
    /// Proposals acknowledged to a client: index -> term.
    pub acknowledged: BTreeMap<u64, u64>,
    pub steps: u64,
}

impl Checker {
    /// A node restarted: its volatile state starts over.
    pub fn restarted(&mut self, id: NodeId) {
        if let Some(v) = self.views.get_mut(&id) {
            v.commit = 0;
            v.applied = 0;
            v.leader_term = None;
        }
    }

    /// Takes the run's events: applied entries must agree with everything committed so far.
    pub fn take_events(&mut self, sim: &mut Sim<Node>) -> Result<Vec<(NodeId, u64, u64)>, String> {
        let mut applied = Vec::new();
        for (_, node, event) in sim.drain_events() {
            if let RaftEvent::Applied { index, term, chain, entry } = event {
                self.commit_entry(index, term, chain)
                    .map_err(|e| format!("{} applied: {e}", node.short()))?;
                if let Applied::Command(_) = entry {
                    applied.push((node, index, term));
                }
            }
        }
        Ok(applied)
    }

    fn commit_entry(&mut self, index: u64, term: u64, chain: ChainHash) -> Result<(), String> {
        match self.committed.get(&index) {
            Some(&(t, c)) if (t, c) != (term, chain) => Err(format!(
                "entry {index} committed as term {t} and later as term {term} (state-machine safety)"
            )),
            Some(_) => Ok(()),
            None => {
                self.committed.insert(index, (term, chain));
                Ok(())
            }
        }
    }

    /// Checks every invariant that can be checked on the nodes now up.
    pub fn check(&mut self, sim: &Sim<Node>) -> Result<(), String> {
        self.steps += 1;
        for &id in sim.node_ids() {
            let Some(node) = sim.node(id) else { continue };
            let name = id.short();
            let view = self.views.entry(id).or_default().clone();
            let (term, vote, commit, applied) =
                (node.term(), node.vote(), node.commit_index(), node.applied_index());
            let log = node.log();
            let (last, snap) = (log.last_index(), log.snapshot_point().index);
            // Monotonic term and vote (durable: across restarts too).
            if term < view.term {
                return Err(format!("{name}: term went back from {} to {term}", view.term));
            }
            if term == view.term && view.vote.is_some() && vote != view.vote {
                return Err(format!("{name}: changed its vote in term {term}"));
            }
            // Monotonic commit and applied (volatile: within an incarnation).
            if commit < view.commit || applied < view.applied {
                return Err(format!(
                    "{name}: commit {} -> {commit} or applied {} -> {applied} went back",
                    view.commit, view.applied
                ));
            }
            // purged <= snapshot <= applied <= committed <= last log.
            if !(snap <= applied && applied <= commit && commit <= last) {
                return Err(format!(
                    "{name}: snapshot {snap} <= applied {applied} <= commit {commit} <= last {last} broken"
                ));
            }
            if log.first_index() != snap + 1 {
                return Err(format!("{name}: entries purged beyond the snapshot"));
            }
            let changed = commit != view.commit || last != view.last || term != view.term;
            let mut new_view = NodeView { term, vote, commit, applied, last, leader_term: None };
            if changed || node.role() == Role::Leader {
                // Committed entries are immutable: what this node holds at its commit index
                // is what was committed there.
                if commit > snap {
                    let t = log.term_at(commit).map_err(|e| e.to_string())?.unwrap_or(0);
                    let c = log.chain_at(commit).map_err(|e| e.to_string())?.ok_or("no chain")?;
                    self.commit_entry(commit, t, c).map_err(|e| format!("{name}: {e}"))?;
                }
                // Log matching: two logs with an entry of the same index and term agree on
                // everything up to it (the chain hash covers the prefix).
                let key = (last, log.last_term());
                let chain = log.last_chain();
                if let Some(other) = self.seen.insert(key, chain)
                    && other != chain
                {
                    return Err(format!(
                        "{name}: entry {} of term {} differs from another log's (log matching)",
                        key.0, key.1
                    ));
                }
            }
            if node.role() == Role::Leader {
                // Election safety.
                if let Some(other) = self.leaders.insert(term, id)
                    && other != id
                {
                    return Err(format!(
                        "two leaders in term {term}: {} and {name}",
                        other.short()
                    ));
                }
                // Leader append-only.
                if let Some((t, prev_last, prev_chain)) = view.leader_term
                    && t == term
                {
                    let now = log.chain_at(prev_last).map_err(|e| e.to_string())?;
                    if last < prev_last || (prev_last > snap && now != Some(prev_chain)) {
                        return Err(format!("{name}: leader of term {term} rewrote its log"));
                    }
                } else {
                    // Leader completeness: a new leader holds every committed entry.
                    if let Some((&c, &(ct, cc))) = self.committed.iter().next_back() {
                        let ok = if c > snap {
                            log.chain_at(c).map_err(|e| e.to_string())? == Some(cc)
                        } else {
                            self.committed
                                .get(&snap)
                                .is_none_or(|&(_, sc)| sc == log.snapshot_point().chain)
                        };
                        if !ok && ct <= term {
                            return Err(format!(
                                "{name}: leader of term {term} lacks committed entry {c} (leader completeness)"
                            ));
                        }
                    }
                }
                new_view.leader_term = Some((term, last, log.last_chain()));
            }
            self.views.insert(id, new_view);
        }
        Ok(())
    }

    /// After the run: every entry ever committed is in the log of every live member of the
    /// final configuration (or under its snapshot, whose chain hash agrees), and every
    /// acknowledged proposal is committed. Nodes removed from the group are not checked:
    /// they stop receiving the log.
    pub fn check_final(&self, sim: &Sim<Node>) -> Result<(), String> {
        let members: Vec<NodeId> = leader(sim)
            .and_then(|l| sim.node(l))
            .map(|n| n.configuration().members())
            .unwrap_or_else(|| sim.node_ids().to_vec());
        for (&index, &term) in &self.acknowledged {
            match self.committed.get(&index) {
                Some(&(t, _)) if t == term => {}
                _ => return Err(format!("acknowledged entry {index} of term {term} is lost")),
            }
        }
        for &id in &members {
            let Some(node) = sim.node(id) else { continue };
            let log = node.log();
            let snap = log.snapshot_point();
            for (&index, &(term, chain)) in &self.committed {
                if index > log.last_index() {
                    continue; // not caught up yet: checked through the leader
                }
                let held = if index > snap.index {
                    log.chain_at(index).map_err(|e| e.to_string())?
                } else if index == snap.index {
                    Some(snap.chain)
                } else {
                    continue;
                };
                if held != Some(chain) {
                    return Err(format!(
                        "{}: committed entry {index} of term {term} is not in its log (durability)",
                        id.short()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The term of the entry committed at `index`, if known.
    pub fn committed_term(&self, index: u64) -> Option<u64> {
        self.committed.get(&index).map(|(t, _)| *t)
    }

    /// How many entries are known committed.
    pub fn committed_count(&self) -> usize {
        self.committed.len()
    }
}

/// Reads a node's log from its disk (for nodes that are down).
pub fn disk_log(sim: &Sim<Node>, id: NodeId) -> llmkg_consensus::log::DurableLog<Disk> {
    let disk = sim.disk(id).expect("disk");
    llmkg_consensus::log::DurableLog::open(disk, group()).expect("open log")
}

/// Whether a KvStore-backed log agrees with another on their common prefix.
pub fn logs_agree<K: KvStore, L: KvStore>(
    a: &llmkg_consensus::log::DurableLog<K>,
    b: &llmkg_consensus::log::DurableLog<L>,
) -> bool {
    let common = a.last_index().min(b.last_index());
    let from = a.first_index().max(b.first_index());
    (from..=common).all(|i| {
        let (ta, tb) = (a.term_at(i).ok().flatten(), b.term_at(i).ok().flatten());
        ta != tb || a.chain_at(i).ok().flatten() == b.chain_at(i).ok().flatten()
    })
}

// ----- Single cores driven by hand (the paper-rule and bad-input tests) -----

/// The keypair of test node `i`.
pub fn keypair(i: u8) -> llmkg_federation_core::NodeKeypair {
    llmkg_federation_core::NodeKeypair::from_secret_bytes([i; 32])
}

/// The id of test node `i`.
pub fn node_id(i: u8) -> NodeId {
    keypair(i).node_id()
}

/// A configuration of the test nodes `voters` and `learners`.
pub fn configuration(voters: &[u8], learners: &[u8]) -> Configuration {
    let members = |ids: &[u8]| ids.iter().map(|i| member(node_id(*i))).collect();
    Configuration::new(members(voters), members(learners))
}

/// The setup of test node `i` (its seed is `i`).
pub fn setup(i: u8, bootstrap: Option<Configuration>, config: RaftConfig) -> RaftSetup {
    RaftSetup {
        keypair: keypair(i),
        federation: federation(),
        group: group(),
        bootstrap,
        config,
        seed: u64::from(i),
    }
}

/// Opens a node over `kv` (reopening it restarts the node) and starts it at `now` with room
/// for messages of 1 MiB.
pub fn open_node(
    setup: RaftSetup,
    kv: &std::sync::Arc<llmkg_federation_core::MemoryKv>,
    now: llmkg_federation_core::Time,
) -> Raft<std::sync::Arc<llmkg_federation_core::MemoryKv>, KvMachine> {
    use llmkg_federation_core::Protocol;
    let mut node = Raft::open(setup, kv.clone(), KvMachine::default()).expect("open raft node");
    node.handle_start(now, llmkg_federation_core::HostInfo::new(1 << 20));
    node
}

/// Everything the node wants sent, in order.
pub fn outbox<K: KvStore, S: StateMachine>(
    node: &mut Raft<K, S>,
) -> Vec<llmkg_federation_core::Transmit<llmkg_consensus::raft::RaftMessage>> {
    use llmkg_federation_core::Protocol;
    std::iter::from_fn(|| node.poll_transmit()).collect()
}

/// Everything the node reported, in order.
pub fn reported<K: KvStore, S: StateMachine>(node: &mut Raft<K, S>) -> Vec<RaftEvent<S::Output>> {
    use llmkg_federation_core::Protocol;
    std::iter::from_fn(|| node.poll_event()).collect()
}

/// A message of the test group.
pub fn message(
    term: u64,
    body: llmkg_consensus::raft::RaftBody,
) -> llmkg_consensus::raft::RaftMessage {
    llmkg_consensus::raft::RaftMessage { group: group(), term, body }
}

/// The encoded command `Put { key, value }`.
pub fn put(key: u8, value: u64) -> Vec<u8> {
    encoding::try_encode(&KvCommand::Put { key, value }).expect("encode command")
}

/// The payload of a log entry of `kind`.
pub fn entry_bytes(kind: &llmkg_consensus::raft::EntryKind) -> Vec<u8> {
    encoding::try_encode(kind).expect("encode entry")
}

/// The payload the tests store at (`index`, `term`): a command naming both, so that two logs
/// holding an entry of the same index and term hold the same entry (log matching).
pub fn paper_entry(index: u64, term: u64) -> Vec<u8> {
    let key = u8::try_from(index % 8).expect("small key");
    entry_bytes(&llmkg_consensus::raft::EntryKind::Command(put(key, index * 1_000 + term)))
}

/// The entry at (`index`, `term`) as a leader sends it.
pub fn wire(index: u64, term: u64) -> llmkg_consensus::raft::WireEntry {
    llmkg_consensus::raft::WireEntry { term, payload: paper_entry(index, term) }
}

/// Writes into `kv` a log whose entry `i + 1` has term `terms[i]` (payloads from
/// [`paper_entry`]), and the hard state (`term`, `vote`).
pub fn write_log(
    kv: &std::sync::Arc<llmkg_federation_core::MemoryKv>,
    terms: &[u64],
    term: u64,
    vote: Option<NodeId>,
) {
    let mut log = llmkg_consensus::log::DurableLog::open(kv.clone(), group()).expect("open log");
    for (i, t) in terms.iter().enumerate() {
        log.append(*t, vec![paper_entry(i as u64 + 1, *t)]).expect("append");
    }
    log.save_hard_state(llmkg_consensus::log::HardState { term, vote }).expect("hard state");
}

/// The chain hash after a log whose entry `i + 1` has term `terms[i]` (payloads from
/// [`paper_entry`]).
pub fn chain_of(terms: &[u64]) -> ChainHash {
    terms.iter().enumerate().fold(ChainHash::genesis(group()), |h, (i, t)| {
        let index = i as u64 + 1;
        h.next(*t, index, &paper_entry(index, *t))
    })
}

/// The terms of a node's log, from its first entry to its last.
pub fn log_terms<K: KvStore>(log: &llmkg_consensus::log::DurableLog<K>) -> Vec<u64> {
    (log.first_index()..=log.last_index())
        .map(|i| log.term_at(i).expect("read term").expect("term held"))
        .collect()
}

/// The acknowledgement of entry `index` of `node`'s log, signed by test node `signer`.
pub fn ack_of<K: KvStore, S: StateMachine>(
    node: &Raft<K, S>,
    signer: u8,
    index: u64,
) -> llmkg_federation_core::Signed<llmkg_federation_core::consensus::RaftAck> {
    let log = node.log();
    let ack = llmkg_federation_core::consensus::RaftAck {
        group: group(),
        term: log.term_at(index).expect("term").expect("entry held"),
        index,
        chain: log.chain_at(index).expect("chain").expect("entry held"),
    };
    llmkg_federation_core::Signed::sign_crate_kind(&keypair(signer), &federation(), ack)
        .expect("sign ack")
}

/// Test node `signer`'s answer that its log matches `leader`'s up to `index`, with its signed
/// acknowledgement: what a follower holding the leader's log sends.
pub fn accepted<K: KvStore, S: StateMachine>(
    leader: &Raft<K, S>,
    signer: u8,
    index: u64,
) -> llmkg_consensus::raft::RaftMessage {
    use llmkg_consensus::raft::{AppendResult, RaftBody};
    let ack = Some(ack_of(leader, signer, index));
    message(leader.term(), RaftBody::AppendResponse(AppendResult::Accepted { index, ack }))
}

/// Makes `node` time out and win an election with the votes of test nodes `peers` (through a
/// pre-vote round first if it runs one). Returns the time it became leader. Its vote requests
/// are drained; what it sent as leader (its no-op's appends) is left in its outbox.
pub fn win_election<K: KvStore, S: StateMachine>(
    node: &mut Raft<K, S>,
    peers: &[u8],
) -> llmkg_federation_core::Time {
    use llmkg_consensus::raft::RaftBody;
    use llmkg_federation_core::Protocol;
    let now = node.poll_timeout().expect("an election timer");
    node.handle_timeout(now);
    outbox(node);
    if node.role() == Role::PreCandidate {
        let term = node.term() + 1;
        for p in peers {
            if node.role() != Role::PreCandidate {
                break;
            }
            let granted = message(term, RaftBody::PreVoteResponse { granted: true });
            node.handle_message(now, node_id(*p), granted);
        }
        outbox(node);
    }
    for p in peers {
        if node.role() == Role::Leader {
            break;
        }
        let granted = message(node.term(), RaftBody::VoteResponse { granted: true });
        node.handle_message(now, node_id(*p), granted);
    }
    assert_eq!(node.role(), Role::Leader, "the votes of {peers:?} elect the node");
    now
}
