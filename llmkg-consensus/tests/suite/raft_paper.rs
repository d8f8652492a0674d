#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The rules of the Raft paper (Ongaro and Ousterhout, "In Search of an Understandable
//! Consensus Algorithm", 2014), one test per rule, after the paper-test lists of etcd and
//! raft-rs, plus the extensions this implementation makes (pre-vote, check-quorum, leadership
//! transfer, membership changes, learners, snapshots in chunks).
//!
//! Most tests drive a single core by hand: exact messages in through `handle_message`,
//! timeouts at chosen instants, and assertions on exactly what it sends, reports and stores.
//! Rules that need several nodes run them over [`Net`], a tiny deterministic network in this
//! file that delivers every message at once, in the order sent, unless its link is cut.

use crate::common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use common::{
    KvMachine, accepted, chain_of, configuration, entry_bytes, group, log_terms, member, message,
    node_id, open_node, outbox, put, reported, setup, win_election, wire, write_log,
};
use llmkg_consensus::log::{DurableLog, HardState};
use llmkg_consensus::raft::{
    AppendResult, Applied, Configuration, EntryKind, ProposeError, Raft, RaftBody, RaftConfig,
    RaftEvent, RaftMessage, Role, SnapshotChunk, WireEntry,
};
use llmkg_federation_core::consensus::{Membership, RaftAck};
use llmkg_federation_core::{HostInfo, MemoryKv, NodeId, Protocol, Time, Transmit};
use llmkg_transport::sim::Disk;

type Core = Raft<Arc<MemoryKv>, KvMachine>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn at(millis: u64) -> Time {
    Time::from_millis(millis)
}

/// Plain Raft, as the paper has it: no pre-vote, no check-quorum.
fn plain() -> RaftConfig {
    let mut c = RaftConfig::default();
    c.pre_vote = false;
    c.check_quorum = false;
    c
}

/// Test node `i` of a group of `voters`, over a fresh store.
fn fresh(i: u8, voters: &[u8], config: RaftConfig) -> Core {
    let kv = Arc::new(MemoryKv::new());
    open_node(setup(i, Some(configuration(voters, &[])), config), &kv, Time::ZERO)
}

/// Test node `i` of a group of `voters`, whose store already holds the log `terms` and the
/// hard state (`term`, `vote`).
fn with_log(
    i: u8,
    voters: &[u8],
    config: RaftConfig,
    terms: &[u64],
    term: u64,
    vote: Option<u8>,
) -> (Core, Arc<MemoryKv>) {
    let kv = Arc::new(MemoryKv::new());
    write_log(&kv, terms, term, vote.map(node_id));
    let node = open_node(setup(i, Some(configuration(voters, &[])), config), &kv, Time::ZERO);
    (node, kv)
}

fn append(prev_index: u64, prev_term: u64, entries: Vec<WireEntry>, commit: u64) -> RaftBody {
    RaftBody::Append { prev_index, prev_term, entries, commit, certificate: Vec::new() }
}

fn vote(last_index: u64, last_term: u64) -> RaftBody {
    RaftBody::Vote { last_index, last_term, transfer: false }
}

/// What was sent, as (recipient, message), in node order.
fn by_recipient(out: Vec<Transmit<RaftMessage>>) -> Vec<(NodeId, RaftMessage)> {
    let mut sent: Vec<(NodeId, RaftMessage)> = out.into_iter().map(|t| (t.to, t.message)).collect();
    sent.sort_by_key(|(to, _)| *to);
    sent
}

/// The same message to each of `peers`, in node order.
fn to_each(peers: &[u8], m: &RaftMessage) -> Vec<(NodeId, RaftMessage)> {
    let mut sent: Vec<(NodeId, RaftMessage)> =
        peers.iter().map(|p| (node_id(*p), m.clone())).collect();
    sent.sort_by_key(|(to, _)| *to);
    sent
}

fn one(to: u8, m: RaftMessage) -> Vec<Transmit<RaftMessage>> {
    vec![Transmit { to: node_id(to), message: m }]
}

fn recipients(out: &[Transmit<RaftMessage>]) -> BTreeSet<NodeId> {
    out.iter().map(|t| t.to).collect()
}

fn ids(nodes: &[u8]) -> BTreeSet<NodeId> {
    nodes.iter().map(|i| node_id(*i)).collect()
}

fn stored_hard_state(kv: &Arc<MemoryKv>) -> HardState {
    DurableLog::open(kv.clone(), group()).expect("open log").hard_state()
}

/// The (index, term) of every entry applied, in the order reported.
fn applied(events: Vec<RaftEvent<Option<u64>>>) -> Vec<(u64, u64)> {
    events
        .into_iter()
        .filter_map(|e| match e {
            RaftEvent::Applied { index, term, .. } => Some((index, term)),
            _ => None,
        })
        .collect()
}

/// Node 1, leader of {1, 2, 3} in term 1, whose no-op (entry 1) both followers acknowledged
/// and which told them it is committed. Everything it sent and reported is drained.
fn leader_of_three(config: RaftConfig) -> (Core, Arc<MemoryKv>, Time) {
    let kv = Arc::new(MemoryKv::new());
    let mut n = open_node(setup(1, Some(configuration(&[1, 2, 3], &[])), config), &kv, Time::ZERO);
    let t = win_election(&mut n, &[2, 3]);
    n.handle_message(t, node_id(2), accepted(&n, 2, 1));
    n.handle_message(t, node_id(3), accepted(&n, 3, 1));
    assert_eq!(n.commit_index(), 1);
    outbox(&mut n);
    reported(&mut n);
    (n, kv, t)
}

// ----- §5.1: terms -----

#[test]
fn a_node_starts_as_a_follower() {
    let mut n = fresh(1, &[1, 2, 3], RaftConfig::default());
    assert_eq!((n.role(), n.term(), n.vote(), n.leader()), (Role::Follower, 0, None, None));
    assert_eq!((n.commit_index(), n.applied_index(), n.log().last_index()), (0, 0, 0));
    assert!(outbox(&mut n).is_empty());
    assert!(reported(&mut n).is_empty());
    let due = n.poll_timeout().expect("an election timer");
    assert!(due >= at(150) && due < at(300), "first election timeout at {due}");
    // Calling early is harmless: still a follower, nothing sent, the same deadline.
    n.handle_timeout(at(149));
    assert_eq!(n.role(), Role::Follower);
    assert!(outbox(&mut n).is_empty());
    assert_eq!(n.poll_timeout(), Some(due));
}

#[test]
fn a_follower_adopts_a_higher_term_from_any_message() {
    // (message, whether its sender is then known as the leader)
    let bodies = [
        (append(0, 0, Vec::new(), 0), true),
        (RaftBody::Heartbeat { commit: 0 }, true),
        (vote(0, 0), false),
        (RaftBody::VoteResponse { granted: false }, false),
        (RaftBody::PreVoteResponse { granted: false }, false),
        (RaftBody::AppendResponse(AppendResult::Accepted { index: 0, ack: None }), false),
        (RaftBody::HeartbeatResponse { last_index: 0 }, false),
        (RaftBody::SnapshotResponse { index: 1, next_offset: 0, done: false }, false),
        (RaftBody::TimeoutNow, false),
    ];
    for (body, leads) in bodies {
        // A follower of term 2 that voted for node 3, with one entry of term 1.
        let (mut n, kv) = with_log(1, &[1, 2, 3], plain(), &[1], 2, Some(3));
        n.handle_message(at(1), node_id(2), message(5, body.clone()));
        assert_eq!((n.term(), n.role()), (5, Role::Follower), "{body:?}");
        assert_eq!(n.leader(), leads.then(|| node_id(2)), "{body:?}");
        // The new term is durable, without the old term's vote (and the vote request, from a
        // candidate whose log is behind, was not granted).
        assert_eq!(n.vote(), None, "{body:?}");
        assert_eq!(stored_hard_state(&kv), HardState { term: 5, vote: None }, "{body:?}");
    }
}

#[test]
fn a_candidate_steps_down_on_a_higher_term() {
    let bodies = [
        (append(0, 0, Vec::new(), 0), Some(node_id(2))),
        (RaftBody::Heartbeat { commit: 0 }, Some(node_id(2))),
        (RaftBody::VoteResponse { granted: false }, None),
    ];
    for (body, leader) in bodies {
        let mut n = fresh(1, &[1, 2, 3], plain());
        let t = n.poll_timeout().unwrap();
        n.handle_timeout(t);
        assert_eq!((n.role(), n.term()), (Role::Candidate, 1));
        outbox(&mut n);
        reported(&mut n);
        n.handle_message(t, node_id(2), message(2, body.clone()));
        assert_eq!(
            (n.role(), n.term(), n.leader(), n.vote()),
            (Role::Follower, 2, leader, None),
            "{body:?}"
        );
        assert!(
            reported(&mut n).contains(&RaftEvent::RoleChanged {
                term: 2,
                role: Role::Follower,
                leader
            }),
            "{body:?}"
        );
    }
}

#[test]
fn a_leader_steps_down_on_a_higher_term() {
    let bodies = [
        (RaftBody::HeartbeatResponse { last_index: 0 }, None),
        (RaftBody::VoteResponse { granted: false }, None),
        (
            RaftBody::AppendResponse(AppendResult::Rejected {
                rejected: 0,
                hint_index: 0,
                hint_term: 0,
            }),
            None,
        ),
        (append(0, 0, Vec::new(), 0), Some(node_id(2))),
    ];
    for (body, leader) in bodies {
        let (mut n, _kv, t) = leader_of_three(plain());
        assert_eq!((n.role(), n.term()), (Role::Leader, 1));
        n.handle_message(t, node_id(2), message(2, body.clone()));
        assert_eq!((n.role(), n.term(), n.leader()), (Role::Follower, 2, leader), "{body:?}");
        assert_eq!(n.propose(t, put(1, 1)), Err(ProposeError::NotLeader { leader }));
        assert!(
            outbox(&mut n).iter().all(|o| !matches!(o.message.body, RaftBody::Append { .. })),
            "a deposed leader replicates nothing: {body:?}"
        );
    }
}

#[test]
fn a_stale_term_message_is_rejected() {
    let (mut n, _kv) = with_log(1, &[1, 2, 3], plain(), &[1, 2], 3, None);
    let chain = n.log().last_chain();
    let t = at(1);
    // A deposed leader's append stores nothing and is told the newer term.
    n.handle_message(t, node_id(2), message(2, append(2, 2, vec![wire(3, 2)], 3)));
    assert_eq!((n.log().last_index(), n.log().last_chain(), n.commit_index()), (2, chain, 0));
    assert_eq!(outbox(&mut n), one(2, message(3, RaftBody::HeartbeatResponse { last_index: 2 })));
    // Its heartbeat commits nothing either.
    n.handle_message(t, node_id(2), message(1, RaftBody::Heartbeat { commit: 2 }));
    assert_eq!(n.commit_index(), 0);
    assert_eq!(outbox(&mut n), one(2, message(3, RaftBody::HeartbeatResponse { last_index: 2 })));
    // A vote request of an old term is not granted (nor answered).
    n.handle_message(t, node_id(3), message(2, vote(5, 2)));
    assert!(outbox(&mut n).is_empty());
    assert_eq!((n.term(), n.vote(), n.role(), n.leader()), (3, None, Role::Follower, None));
}

// ----- §5.2: leader election -----

#[test]
fn the_leader_broadcasts_heartbeats() {
    let mut n = fresh(1, &[1, 2, 3], plain());
    let t0 = win_election(&mut n, &[2, 3]);
    // Only node 2 holds the no-op: it commits, node 3 is not known to hold anything.
    n.handle_message(t0, node_id(2), accepted(&n, 2, 1));
    assert_eq!(n.commit_index(), 1);
    outbox(&mut n);
    assert_eq!(n.poll_timeout(), Some(t0 + ms(50)));
    n.handle_timeout(t0 + ms(49));
    assert!(outbox(&mut n).is_empty());
    n.handle_timeout(t0 + ms(50));
    // One heartbeat to each follower, in the leader's term, with the commit index as far as
    // that follower is known to hold the log.
    let mut expected = vec![
        (node_id(2), message(1, RaftBody::Heartbeat { commit: 1 })),
        (node_id(3), message(1, RaftBody::Heartbeat { commit: 0 })),
    ];
    expected.sort_by_key(|(to, _)| *to);
    assert_eq!(by_recipient(outbox(&mut n)), expected);
    assert_eq!(n.poll_timeout(), Some(t0 + ms(100)));
}

#[test]
fn a_follower_times_out_and_starts_an_election() {
    let kv = Arc::new(MemoryKv::new());
    let mut n = open_node(setup(1, Some(configuration(&[1, 2, 3], &[])), plain()), &kv, Time::ZERO);
    let due = n.poll_timeout().unwrap();
    n.handle_timeout(due);
    assert_eq!(
        (n.role(), n.term(), n.vote(), n.leader()),
        (Role::Candidate, 1, Some(node_id(1)), None)
    );
    assert_eq!(by_recipient(outbox(&mut n)), to_each(&[2, 3], &message(1, vote(0, 0))));
    // The new term and the vote for itself were durable before the requests left.
    assert_eq!(stored_hard_state(&kv), HardState { term: 1, vote: Some(node_id(1)) });
    assert_eq!(
        reported(&mut n),
        vec![RaftEvent::RoleChanged { term: 1, role: Role::Candidate, leader: None }]
    );
}

#[test]
fn a_candidate_times_out_and_starts_a_new_election() {
    let mut n = fresh(1, &[1, 2, 3], plain());
    let first = n.poll_timeout().unwrap();
    n.handle_timeout(first);
    outbox(&mut n);
    let second = n.poll_timeout().unwrap();
    assert!(second >= first + ms(150) && second < first + ms(300), "{first} then {second}");
    n.handle_timeout(Time::from_micros(second.as_micros() - 1));
    assert_eq!(n.term(), 1);
    assert!(outbox(&mut n).is_empty());
    n.handle_timeout(second);
    assert_eq!((n.role(), n.term(), n.vote()), (Role::Candidate, 2, Some(node_id(1))));
    assert_eq!(by_recipient(outbox(&mut n)), to_each(&[2, 3], &message(2, vote(0, 0))));
}

#[test]
fn an_election_is_won_lost_or_undecided_in_one_round() {
    // (voters, grants, refusals, outcome): the candidate's own vote counts.
    let cases: [(&[u8], usize, usize, Role); 8] = [
        (&[1], 0, 0, Role::Leader),
        (&[1, 2, 3], 1, 0, Role::Leader),
        (&[1, 2, 3], 0, 2, Role::Candidate),
        (&[1, 2, 3], 0, 0, Role::Candidate),
        (&[1, 2, 3, 4, 5], 2, 0, Role::Leader),
        (&[1, 2, 3, 4, 5], 4, 0, Role::Leader),
        (&[1, 2, 3, 4, 5], 1, 3, Role::Candidate),
        (&[1, 2, 3, 4, 5], 1, 0, Role::Candidate),
    ];
    for (voters, grants, refusals, outcome) in cases {
        let mut n = fresh(1, voters, plain());
        let t = n.poll_timeout().unwrap();
        n.handle_timeout(t);
        for (k, p) in voters[1..].iter().enumerate().take(grants + refusals) {
            let granted = k < grants;
            n.handle_message(t, node_id(*p), message(1, RaftBody::VoteResponse { granted }));
        }
        let case = (voters.len(), grants, refusals);
        assert_eq!((n.role(), n.term()), (outcome, 1), "{case:?}");
        assert_eq!(n.leader(), (outcome == Role::Leader).then(|| node_id(1)), "{case:?}");
    }
}

#[test]
fn a_follower_votes_once_per_term_first_come_first_served() {
    // (vote already cast in term 1, candidate asking, granted)
    let cases = [
        (None, 2, true),
        (None, 3, true),
        (Some(2), 2, true),
        (Some(3), 3, true),
        (Some(2), 3, false),
        (Some(3), 2, false),
    ];
    for (voted, candidate, granted) in cases {
        let (mut n, kv) = with_log(1, &[1, 2, 3], plain(), &[], 1, voted);
        n.handle_message(at(1), node_id(candidate), message(1, vote(0, 0)));
        let case = (voted, candidate);
        assert_eq!(
            outbox(&mut n),
            one(candidate, message(1, RaftBody::VoteResponse { granted })),
            "{case:?}"
        );
        let now = if granted { Some(node_id(candidate)) } else { voted.map(node_id) };
        assert_eq!(n.vote(), now, "{case:?}");
        assert_eq!(stored_hard_state(&kv), HardState { term: 1, vote: now }, "{case:?}");
    }
    // In one term: the first candidate to ask gets the vote, the second does not.
    let mut n = fresh(1, &[1, 2, 3], plain());
    n.handle_message(at(1), node_id(3), message(4, vote(0, 0)));
    n.handle_message(at(2), node_id(2), message(4, vote(0, 0)));
    let answers = by_recipient(outbox(&mut n));
    let mut expected = vec![
        (node_id(3), message(4, RaftBody::VoteResponse { granted: true })),
        (node_id(2), message(4, RaftBody::VoteResponse { granted: false })),
    ];
    expected.sort_by_key(|(to, _)| *to);
    assert_eq!(answers, expected);
}

#[test]
fn a_candidate_falls_back_to_follower_on_an_append_of_its_term() {
    for body in [append(0, 0, Vec::new(), 0), RaftBody::Heartbeat { commit: 0 }] {
        let mut n = fresh(1, &[1, 2, 3], plain());
        let t = n.poll_timeout().unwrap();
        n.handle_timeout(t);
        outbox(&mut n);
        assert_eq!((n.role(), n.term()), (Role::Candidate, 1));
        // Another node won this term and says so.
        n.handle_message(t, node_id(2), message(1, body.clone()));
        assert_eq!((n.role(), n.term(), n.leader()), (Role::Follower, 1, Some(node_id(2))));
        // It keeps its vote of this term (for itself) and answers the leader.
        assert_eq!(n.vote(), Some(node_id(1)));
        let answer = outbox(&mut n);
        assert_eq!(recipients(&answer), ids(&[2]), "{body:?}");
        assert!(matches!(
            answer[0].message.body,
            RaftBody::AppendResponse(AppendResult::Accepted { index: 0, .. })
                | RaftBody::HeartbeatResponse { last_index: 0 }
        ));
    }
}

#[test]
fn election_timeouts_are_randomized() {
    // One candidate's successive timeouts each fall in [150 ms, 300 ms) and are spread over it.
    let mut n = fresh(1, &[1, 2, 3], plain());
    let mut now = Time::ZERO;
    let mut waits = BTreeSet::new();
    for _ in 0..200 {
        let due = n.poll_timeout().unwrap();
        let wait = due - now;
        assert!(wait >= ms(150) && wait < ms(300), "{wait:?}");
        waits.insert(wait);
        now = due;
        n.handle_timeout(now);
        outbox(&mut n);
    }
    assert!(waits.len() > 190, "only {} distinct timeouts", waits.len());
    assert!(*waits.first().unwrap() < ms(175) && *waits.last().unwrap() >= ms(275));
    // Nodes of different seeds draw differently; the same seed draws the same (replay).
    let first_timeout = |seed: u64| {
        let mut s = setup(1, Some(configuration(&[1, 2, 3], &[])), plain());
        s.seed = seed;
        open_node(s, &Arc::new(MemoryKv::new()), Time::ZERO).poll_timeout().unwrap()
    };
    let by_seed: BTreeSet<Time> = (0..100).map(first_timeout).collect();
    assert!(by_seed.len() > 95, "only {} distinct first timeouts", by_seed.len());
    assert_eq!(first_timeout(7), first_timeout(7));
}

#[test]
fn followers_rarely_time_out_together() {
    // Five followers hear their leader at the same instant, round after round. The first to
    // time out is usually alone by a margin of 5 ms (time for its vote requests to arrive
    // before anyone else campaigns): split votes are rare.
    let voters = [1, 2, 3, 4, 5, 6];
    let mut followers: Vec<Core> = (2..=6).map(|i| fresh(i, &voters, plain())).collect();
    let rounds = 1_000;
    let mut conflicts = 0;
    let mut now = Time::ZERO;
    for _ in 0..rounds {
        now += ms(1);
        let mut dues: Vec<Time> = followers
            .iter_mut()
            .map(|f| {
                f.handle_message(now, node_id(1), message(1, RaftBody::Heartbeat { commit: 0 }));
                outbox(f);
                f.poll_timeout().unwrap()
            })
            .collect();
        dues.sort();
        if dues[1] - dues[0] < ms(5) {
            conflicts += 1;
        }
    }
    // Uniform timeouts over 150 ms give about 16 %; equal timeouts would give 100 %.
    assert!(conflicts * 100 < rounds * 30, "{conflicts} conflicts in {rounds} rounds");
}

// ----- §5.3: log replication -----

#[test]
fn a_leader_appends_a_proposal_and_replicates_it() {
    let (mut n, kv, t) = leader_of_three(plain());
    let command = put(1, 7);
    assert_eq!(n.propose(t, command.clone()), Ok((2, 1)));
    assert_eq!((n.log().last_index(), n.log().last_term()), (2, 1));
    let payload = entry_bytes(&EntryKind::Command(command));
    // Every follower gets the entry, with the index and term of the entry before it.
    let expected = message(
        1,
        RaftBody::Append {
            prev_index: 1,
            prev_term: 1,
            entries: vec![WireEntry { term: 1, payload: payload.clone() }],
            commit: 1,
            certificate: Vec::new(),
        },
    );
    assert_eq!(by_recipient(outbox(&mut n)), to_each(&[2, 3], &expected));
    // The entry was durable before it left.
    let stored = DurableLog::open(kv.clone(), group()).unwrap();
    assert_eq!(stored.entry(2).unwrap().map(|e| (e.term, e.payload)), Some((1, payload)));
    // It is not committed before a follower holds it.
    assert_eq!(n.commit_index(), 1);
}

#[test]
fn a_leader_applies_a_committed_entry_and_tells_the_followers() {
    let (mut n, _kv, t) = leader_of_three(plain());
    let (index, term) = n.propose(t, put(1, 7)).unwrap();
    outbox(&mut n);
    assert!(reported(&mut n).is_empty());
    n.handle_message(t, node_id(2), accepted(&n, 2, index));
    assert_eq!((n.commit_index(), n.applied_index()), (index, index));
    let chain = n.log().chain_at(index).unwrap().unwrap();
    assert_eq!(
        reported(&mut n),
        vec![RaftEvent::Applied { index, term, chain, entry: Applied::Command(None) }]
    );
    assert_eq!(n.state_machine().map.get(&1), Some(&7));
    // Every follower hears the new commit index.
    let told = outbox(&mut n);
    assert_eq!(recipients(&told), ids(&[2, 3]));
    for t in &told {
        assert!(matches!(t.message.body, RaftBody::Append { commit: 2, .. }), "{t:?}");
    }
}

#[test]
fn an_entry_commits_once_a_majority_holds_it() {
    // In a group of five, the leader and two followers are a majority.
    let cases: [(&[u8], u64); 5] =
        [(&[], 0), (&[2], 0), (&[2, 3], 1), (&[2, 3, 4], 1), (&[2, 3, 4, 5], 1)];
    for (acks, commit) in cases {
        let mut n = fresh(1, &[1, 2, 3, 4, 5], plain());
        let t = win_election(&mut n, &[2, 3, 4, 5]);
        for a in acks {
            n.handle_message(t, node_id(*a), accepted(&n, *a, 1));
        }
        assert_eq!(n.commit_index(), commit, "acknowledged by {acks:?}");
    }
}

#[test]
fn committing_an_entry_commits_the_preceding_ones() {
    // Logs left by earlier leaders; the new leader (term 3) commits them with its no-op.
    for terms in [vec![], vec![2], vec![1, 1], vec![1, 2, 2]] {
        let (mut n, _kv) = with_log(1, &[1, 2, 3], plain(), &terms, 2, None);
        let t = win_election(&mut n, &[2, 3]);
        assert_eq!(n.term(), 3);
        let noop = terms.len() as u64 + 1;
        assert_eq!(n.log().term_at(noop).unwrap(), Some(3));
        reported(&mut n);
        n.handle_message(t, node_id(2), accepted(&n, 2, noop));
        assert_eq!(n.commit_index(), noop, "{terms:?}");
        // Applied in log order, the earlier terms' entries first.
        let mut expected: Vec<(u64, u64)> =
            terms.iter().enumerate().map(|(i, t)| (i as u64 + 1, *t)).collect();
        expected.push((noop, 3));
        assert_eq!(applied(reported(&mut n)), expected, "{terms:?}");
        let commands: Vec<u64> = (1..noop).collect();
        assert_eq!(n.state_machine().applied, commands);
    }
}

#[test]
fn a_follower_applies_entries_once_it_learns_they_are_committed() {
    let mut n = fresh(1, &[1, 2, 3], plain());
    let t = at(1);
    n.handle_message(
        t,
        node_id(2),
        message(1, append(0, 0, vec![wire(1, 1), wire(2, 1), wire(3, 1)], 1)),
    );
    assert_eq!((n.log().last_index(), n.commit_index(), n.applied_index()), (3, 1, 1));
    assert_eq!(applied(reported(&mut n)), vec![(1, 1)]);
    // The follower acknowledges the whole append, signing the chain hash of its last entry.
    let answer = outbox(&mut n);
    assert_eq!(recipients(&answer), ids(&[2]));
    let RaftBody::AppendResponse(AppendResult::Accepted { index: 3, ack: Some(ack) }) =
        &answer[0].message.body
    else {
        panic!("not an acknowledgement of entry 3: {answer:?}");
    };
    assert_eq!(ack.signer(), node_id(1));
    let expected = RaftAck { group: group(), term: 1, index: 3, chain: chain_of(&[1, 1, 1]) };
    assert_eq!(ack.open(&common::federation()).unwrap(), &expected);
    // Later the leader says everything is committed.
    n.handle_message(t, node_id(2), message(1, append(3, 1, Vec::new(), 3)));
    assert_eq!((n.commit_index(), n.applied_index()), (3, 3));
    assert_eq!(applied(reported(&mut n)), vec![(2, 1), (3, 1)]);
    assert_eq!(n.state_machine().applied, vec![1, 2, 3]);
}

#[test]
fn a_follower_refuses_an_append_whose_previous_entry_it_lacks() {
    // The follower holds [1, 2]; (prev index, prev term) -> its answer.
    let accepted_at = |index| Ok(index);
    let rejected = |rejected, hint_index, hint_term| Err((rejected, hint_index, hint_term));
    let cases = [
        ((0, 0), accepted_at(0)),
        ((1, 1), accepted_at(1)),
        ((2, 2), accepted_at(2)),
        ((1, 2), rejected(1, 1, 1)),
        ((2, 1), rejected(2, 1, 1)),
        ((3, 2), rejected(3, 2, 2)),
        ((3, 3), rejected(3, 2, 2)),
    ];
    for ((prev_index, prev_term), expected) in cases {
        let (mut n, _kv) = with_log(1, &[1, 2, 3], plain(), &[1, 2], 2, None);
        let chain = n.log().last_chain();
        n.handle_message(
            at(1),
            node_id(2),
            message(2, append(prev_index, prev_term, Vec::new(), 0)),
        );
        let answer = outbox(&mut n);
        assert_eq!(recipients(&answer), ids(&[2]));
        let got = match &answer[0].message.body {
            RaftBody::AppendResponse(AppendResult::Accepted { index, .. }) => Ok(*index),
            RaftBody::AppendResponse(AppendResult::Rejected {
                rejected,
                hint_index,
                hint_term,
            }) => Err((*rejected, *hint_index, *hint_term)),
            other => panic!("{other:?}"),
        };
        assert_eq!(got, expected, "prev ({prev_index}, {prev_term})");
        assert_eq!((n.log().last_index(), n.log().last_chain()), (2, chain));
    }
}

#[test]
fn a_follower_truncates_a_conflicting_suffix() {
    // The follower holds [1, 2]; (prev index, prev term, new entries' terms) -> its log after.
    type Case = ((u64, u64), &'static [u64], &'static [u64]);
    let cases: [Case; 5] = [
        ((2, 2), &[3], &[1, 2, 3]),
        ((1, 1), &[3, 4], &[1, 3, 4]),
        ((0, 0), &[1], &[1, 2]),
        ((0, 0), &[3], &[3]),
        ((1, 1), &[2], &[1, 2]),
    ];
    for ((prev_index, prev_term), new, after) in cases {
        let (mut n, kv) = with_log(1, &[1, 2, 3], plain(), &[1, 2], 2, None);
        let entries: Vec<WireEntry> =
            new.iter().enumerate().map(|(k, t)| wire(prev_index + k as u64 + 1, *t)).collect();
        n.handle_message(at(1), node_id(2), message(4, append(prev_index, prev_term, entries, 0)));
        let case = (prev_index, prev_term, new);
        assert_eq!(log_terms(n.log()), after, "{case:?}");
        assert_eq!(n.log().last_chain(), chain_of(after), "{case:?}");
        // What it acknowledges is what the append covered, no more.
        let last_new = prev_index + new.len() as u64;
        assert!(
            matches!(
                &outbox(&mut n)[..],
                [Transmit {
                    message: RaftMessage {
                        body: RaftBody::AppendResponse(AppendResult::Accepted { index, .. }),
                        ..
                    },
                    ..
                }] if *index == last_new
            ),
            "{case:?}"
        );
        // And it is durable.
        let stored = DurableLog::open(kv.clone(), group()).unwrap();
        assert_eq!(log_terms(&stored), after, "{case:?}");
    }
}

#[test]
fn a_leader_brings_a_diverged_follower_log_in_line() {
    // Figure 7 of the paper: the leader of term 8 and followers (a) to (f).
    let leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [&[u64]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],
        &[1, 1, 1, 4],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        &[1, 1, 1, 4, 4, 4, 4],
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    ];
    for follower_log in followers {
        let (mut leader, _) = with_log(1, &[1, 2, 3], plain(), &leader_log, 7, None);
        let last = *follower_log.last().unwrap();
        let (mut follower, _) = with_log(2, &[1, 2, 3], plain(), follower_log, last, None);
        // Node 3 votes for the leader, then hears nothing more.
        let t = win_election(&mut leader, &[3]);
        assert_eq!(leader.term(), 8);
        let mut rounds = 0;
        loop {
            let mut moved = false;
            for m in outbox(&mut leader).into_iter().filter(|m| m.to == node_id(2)) {
                follower.handle_message(t, node_id(1), m.message);
                moved = true;
            }
            for m in outbox(&mut follower) {
                leader.handle_message(t, node_id(2), m.message);
                moved = true;
            }
            if !moved {
                break;
            }
            rounds += 1;
            assert!(rounds < 50, "no agreement after {rounds} rounds for {follower_log:?}");
        }
        let mut expected = leader_log.to_vec();
        expected.push(8);
        assert_eq!(log_terms(follower.log()), expected, "{follower_log:?}");
        assert_eq!(follower.log().last_chain(), leader.log().last_chain(), "{follower_log:?}");
        // With the follower, the leader has a majority for its no-op: all is committed.
        assert_eq!((leader.commit_index(), follower.commit_index()), (11, 11), "{follower_log:?}");
    }
}

// ----- §5.4: safety -----

#[test]
fn vote_requests_carry_the_candidates_last_log_position() {
    for (terms, term) in [(vec![1], 1), (vec![1, 2], 2), (vec![1, 1, 3], 5)] {
        let (mut n, _) = with_log(1, &[1, 2, 3], plain(), &terms, term, None);
        let t = n.poll_timeout().unwrap();
        n.handle_timeout(t);
        let request = message(term + 1, vote(terms.len() as u64, *terms.last().unwrap()));
        assert_eq!(by_recipient(outbox(&mut n)), to_each(&[2, 3], &request), "{terms:?}");
    }
}

#[test]
fn votes_go_only_to_candidates_with_an_up_to_date_log() {
    // (voter's log, candidate's last index and last term, granted)
    let cases: [(&[u64], u64, u64, bool); 9] = [
        (&[1], 1, 1, true),
        (&[1], 2, 1, true),
        (&[1, 1], 1, 1, false),
        (&[1], 1, 2, true),
        (&[1], 2, 2, true),
        (&[1, 1], 1, 2, true),
        (&[2], 1, 1, false),
        (&[2], 2, 1, false),
        (&[2, 2], 3, 1, false),
    ];
    for (log, last_index, last_term, granted) in cases {
        let term = *log.last().unwrap();
        let (mut n, _) = with_log(1, &[1, 2, 3], plain(), log, term, None);
        n.handle_message(at(1), node_id(2), message(3, vote(last_index, last_term)));
        let case = (log, last_index, last_term);
        assert_eq!(
            outbox(&mut n),
            one(2, message(3, RaftBody::VoteResponse { granted })),
            "{case:?}"
        );
        assert_eq!(n.vote(), granted.then(|| node_id(2)), "{case:?}");
    }
}

#[test]
fn figure_8_a_leader_does_not_commit_an_old_term_entry_by_counting() {
    // Entry 2 was appended in term 2 by a leader that did not commit it; the leader of term 3
    // holds it and appends its no-op as entry 3.
    let (mut n, _) = with_log(1, &[1, 2, 3], plain(), &[1, 2], 2, None);
    let t = win_election(&mut n, &[2, 3]);
    assert_eq!((n.term(), n.log().last_index()), (3, 3));
    reported(&mut n);
    // Every follower holds entry 2: counting replicas would commit it, but it is not of the
    // leader's term, so nothing is committed.
    n.handle_message(t, node_id(2), accepted(&n, 2, 2));
    n.handle_message(t, node_id(3), accepted(&n, 3, 2));
    assert_eq!(n.commit_index(), 0);
    assert!(applied(reported(&mut n)).is_empty());
    // Once a majority holds an entry of its own term, that entry and all before it commit.
    n.handle_message(t, node_id(2), accepted(&n, 2, 3));
    assert_eq!(n.commit_index(), 3);
    assert_eq!(applied(reported(&mut n)), vec![(1, 1), (2, 2), (3, 3)]);
}

#[test]
fn term_vote_and_log_survive_a_restart() {
    let kv = Arc::new(MemoryKv::new());
    let conf = Some(configuration(&[1, 2, 3], &[]));
    let mut n = open_node(setup(2, conf.clone(), plain()), &kv, Time::ZERO);
    n.handle_message(at(1), node_id(1), message(5, vote(0, 0)));
    assert_eq!(outbox(&mut n), one(1, message(5, RaftBody::VoteResponse { granted: true })));
    n.handle_message(at(2), node_id(1), message(5, append(0, 0, vec![wire(1, 5), wire(2, 5)], 1)));
    assert_eq!(n.commit_index(), 1);
    let chain = n.log().last_chain();
    drop(n);
    // Restarted from its store alone.
    let mut n = open_node(setup(2, conf.clone(), plain()), &kv, at(10));
    assert_eq!(
        (n.term(), n.vote(), n.role(), n.leader()),
        (5, Some(node_id(1)), Role::Follower, None)
    );
    assert_eq!((n.log().last_index(), n.log().last_chain()), (2, chain));
    // It does not vote for another candidate in term 5...
    n.handle_message(at(11), node_id(3), message(5, vote(9, 5)));
    assert_eq!(outbox(&mut n), one(3, message(5, RaftBody::VoteResponse { granted: false })));
    // ...but repeats its vote to the one it voted for (whose answer may have been lost).
    n.handle_message(at(12), node_id(1), message(5, vote(2, 5)));
    assert_eq!(outbox(&mut n), one(1, message(5, RaftBody::VoteResponse { granted: true })));
    // A candidate's own term and vote survive too: it cannot vote twice in its term.
    let kv = Arc::new(MemoryKv::new());
    let mut c = open_node(setup(1, conf.clone(), plain()), &kv, Time::ZERO);
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(t);
    drop(c);
    let mut c = open_node(setup(1, conf, plain()), &kv, t);
    assert_eq!((c.term(), c.vote(), c.role()), (1, Some(node_id(1)), Role::Follower));
    c.handle_message(t, node_id(2), message(1, vote(0, 0)));
    assert_eq!(outbox(&mut c), one(2, message(1, RaftBody::VoteResponse { granted: false })));
}

#[test]
fn nothing_depends_on_a_write_that_failed() {
    // The simulator's disk fails every write while it is set faulty.
    let kv = Disk::new();
    let conf = Some(configuration(&[1, 2, 3], &[]));
    let mut n =
        Raft::open(setup(2, conf.clone(), plain()), kv.clone(), KvMachine::default()).unwrap();
    n.handle_start(Time::ZERO, HostInfo::new(1 << 20));
    let failing = |on: bool| kv.set_faulty(on);
    // A new term that cannot be stored: no vote leaves.
    failing(true);
    n.handle_message(at(1), node_id(1), message(1, vote(0, 0)));
    assert!(outbox(&mut n).is_empty());
    assert_eq!((n.term(), n.vote()), (0, None));
    assert!(matches!(reported(&mut n)[..], [RaftEvent::StorageFailed { .. }]));
    // A vote that cannot be stored is not granted.
    failing(false);
    n.handle_message(at(2), node_id(3), message(1, RaftBody::VoteResponse { granted: false }));
    assert_eq!((n.term(), n.leader()), (1, None));
    failing(true);
    n.handle_message(at(3), node_id(3), message(1, vote(0, 0)));
    assert_eq!(outbox(&mut n), one(3, message(1, RaftBody::VoteResponse { granted: false })));
    assert_eq!(n.vote(), None);
    // Entries that cannot be stored are not acknowledged.
    failing(false);
    n.handle_message(at(4), node_id(1), message(1, RaftBody::Heartbeat { commit: 0 }));
    outbox(&mut n);
    failing(true);
    n.handle_message(at(4), node_id(1), message(1, append(0, 0, vec![wire(1, 1)], 0)));
    assert!(outbox(&mut n).is_empty());
    assert_eq!(n.log().last_index(), 0);
    // An election that cannot be stored does not start.
    let due = n.poll_timeout().unwrap();
    n.handle_timeout(due);
    assert!(outbox(&mut n).is_empty());
    assert_eq!((n.term(), n.role()), (1, Role::Follower));
    assert_eq!(n.metrics().storage_failures, 4);
    // A leader does not send what it could not store.
    let leader_kv = Disk::new();
    let mut l =
        Raft::open(setup(1, conf, plain()), leader_kv.clone(), KvMachine::default()).unwrap();
    l.handle_start(Time::ZERO, HostInfo::new(1 << 20));
    let t = win_election(&mut l, &[2, 3]);
    l.handle_message(t, node_id(2), accepted(&l, 2, 1));
    outbox(&mut l);
    leader_kv.set_faulty(true);
    assert!(matches!(l.propose(t, put(1, 1)), Err(ProposeError::Storage(_))));
    assert!(outbox(&mut l).is_empty());
    assert_eq!(l.log().last_index(), 1);
}

// ----- Pre-vote and check-quorum (Ongaro's thesis, §9.6) -----

#[test]
fn pre_vote_does_not_raise_terms() {
    let (mut n, kv) = with_log(1, &[1, 2, 3], RaftConfig::default(), &[1], 1, None);
    let mut now = n.poll_timeout().unwrap();
    n.handle_timeout(now);
    // It asks whether it could win term 2, without entering it.
    assert_eq!((n.role(), n.term(), n.vote()), (Role::PreCandidate, 1, None));
    let pre_vote = message(2, RaftBody::PreVote { last_index: 1, last_term: 1 });
    assert_eq!(by_recipient(outbox(&mut n)), to_each(&[2, 3], &pre_vote));
    assert_eq!(stored_hard_state(&kv), HardState { term: 1, vote: None });
    // Cut off, it asks again and again; its term does not move.
    for _ in 0..10 {
        now = n.poll_timeout().unwrap();
        n.handle_timeout(now);
        outbox(&mut n);
    }
    assert_eq!((n.role(), n.term(), n.vote()), (Role::PreCandidate, 1, None));
    assert_eq!((n.metrics().pre_campaigns, n.metrics().campaigns), (11, 0));
    // A voter without a leader would vote: it says so without changing its term or vote.
    let (mut voter, voter_kv) = with_log(2, &[1, 2, 3], RaftConfig::default(), &[1], 1, None);
    voter.handle_message(now, node_id(1), pre_vote.clone());
    assert_eq!(outbox(&mut voter), one(1, message(2, RaftBody::PreVoteResponse { granted: true })));
    assert_eq!((voter.term(), voter.vote(), voter.role()), (1, None, Role::Follower));
    assert_eq!(stored_hard_state(&voter_kv), HardState { term: 1, vote: None });
    // It would not for a term that is not above its own.
    voter.handle_message(
        now,
        node_id(3),
        message(1, RaftBody::PreVote { last_index: 1, last_term: 1 }),
    );
    assert_eq!(
        outbox(&mut voter),
        one(3, message(1, RaftBody::PreVoteResponse { granted: false }))
    );
    // With a majority of pre-votes, the pre-candidate campaigns for real.
    n.handle_message(now, node_id(2), message(2, RaftBody::PreVoteResponse { granted: true }));
    assert_eq!((n.role(), n.term(), n.vote()), (Role::Candidate, 2, Some(node_id(1))));
    assert_eq!(by_recipient(outbox(&mut n)), to_each(&[2, 3], &message(2, vote(1, 1))));
}

#[test]
fn a_follower_in_its_lease_ignores_vote_requests() {
    let heard = at(1_000);
    let follower = || {
        let mut f = fresh(2, &[1, 2, 3], RaftConfig::default());
        f.handle_message(heard, node_id(1), message(1, RaftBody::Heartbeat { commit: 0 }));
        outbox(&mut f);
        f
    };
    // Within the minimum election timeout of hearing its leader, a vote request is ignored...
    let mut f = follower();
    f.handle_message(heard + ms(149), node_id(3), message(2, vote(0, 0)));
    assert!(outbox(&mut f).is_empty());
    assert_eq!((f.term(), f.vote(), f.leader()), (1, None, Some(node_id(1))));
    assert_eq!(f.metrics().votes_ignored_in_lease, 1);
    // ...and a pre-vote refused.
    f.handle_message(
        heard + ms(149),
        node_id(3),
        message(2, RaftBody::PreVote { last_index: 0, last_term: 0 }),
    );
    assert_eq!(outbox(&mut f), one(3, message(1, RaftBody::PreVoteResponse { granted: false })));
    // After it, the vote is granted.
    f.handle_message(heard + ms(150), node_id(3), message(2, vote(0, 0)));
    assert_eq!(outbox(&mut f), one(3, message(2, RaftBody::VoteResponse { granted: true })));
    assert_eq!((f.term(), f.vote()), (2, Some(node_id(3))));
    // A candidate the leader handed over to is voted for even within the lease.
    let mut g = follower();
    let transfer = RaftBody::Vote { last_index: 0, last_term: 0, transfer: true };
    g.handle_message(heard + ms(1), node_id(3), message(2, transfer));
    assert_eq!(outbox(&mut g), one(3, message(2, RaftBody::VoteResponse { granted: true })));
    assert_eq!((g.term(), g.vote()), (2, Some(node_id(3))));
}

#[test]
fn a_leader_without_a_quorum_steps_down() {
    let mut n = fresh(1, &[1, 2, 3], RaftConfig::default());
    let t0 = win_election(&mut n, &[2, 3]);
    n.handle_message(t0, node_id(2), accepted(&n, 2, 1));
    outbox(&mut n);
    // Nobody answers any more.
    let mut stepped_down = None;
    while let Some(due) = n.poll_timeout().filter(|d| *d <= t0 + ms(1_000)) {
        n.handle_timeout(due);
        outbox(&mut n);
        if n.role() != Role::Leader {
            stepped_down = Some(due);
            break;
        }
    }
    let when = stepped_down.expect("the leader steps down");
    assert!(when > t0 + ms(150) && when <= t0 + ms(300), "stepped down at {when}");
    assert_eq!((n.role(), n.term(), n.leader()), (Role::Follower, 1, None));
    // A leader that keeps hearing from one follower (a majority with itself) stays.
    let mut n = fresh(1, &[1, 2, 3], RaftConfig::default());
    let t0 = win_election(&mut n, &[2, 3]);
    while let Some(due) = n.poll_timeout().filter(|d| *d <= t0 + ms(2_000)) {
        n.handle_timeout(due);
        for m in outbox(&mut n) {
            if m.to == node_id(2) && matches!(m.message.body, RaftBody::Heartbeat { .. }) {
                let answer = message(1, RaftBody::HeartbeatResponse { last_index: 0 });
                n.handle_message(due, node_id(2), answer);
            }
        }
        assert_eq!(n.role(), Role::Leader, "at {due}");
    }
}

#[test]
fn a_fresh_group_campaigns_on_demand_and_only_once() {
    // Asked before any timeout, a founding voter campaigns at once: a pre-vote by default...
    let mut n = fresh(1, &[1, 2, 3], RaftConfig::default());
    assert!(n.poll_timeout().unwrap() >= at(150));
    assert!(n.campaign_if_fresh(at(1)));
    assert_eq!((n.role(), n.term(), n.vote()), (Role::PreCandidate, 0, None));
    let pre_vote = message(1, RaftBody::PreVote { last_index: 0, last_term: 0 });
    assert_eq!(by_recipient(outbox(&mut n)), to_each(&[2, 3], &pre_vote));
    // ...and it is not asked to again while that campaign runs.
    assert!(!n.campaign_if_fresh(at(2)));
    assert!(outbox(&mut n).is_empty());

    // Without pre-vote it enters term 1 and asks for votes.
    let mut n = fresh(1, &[1, 2, 3], plain());
    assert!(n.campaign_if_fresh(at(1)));
    assert_eq!((n.role(), n.term(), n.vote()), (Role::Candidate, 1, Some(node_id(1))));
    assert_eq!(by_recipient(outbox(&mut n)), to_each(&[2, 3], &message(1, vote(0, 0))));

    // A group that has had a term or a leader waits for its timeout as before.
    let (mut n, _) = with_log(1, &[1, 2, 3], plain(), &[], 1, None);
    assert!(!n.campaign_if_fresh(at(1)));
    assert!(outbox(&mut n).is_empty());
    let mut n = fresh(1, &[1, 2, 3], plain());
    n.handle_message(at(1), node_id(2), message(1, append(0, 0, Vec::new(), 0)));
    assert_eq!(n.leader(), Some(node_id(2)));
    outbox(&mut n);
    assert!(!n.campaign_if_fresh(at(2)));
    assert!(outbox(&mut n).is_empty());
    // A learner never campaigns.
    let kv = Arc::new(MemoryKv::new());
    let mut learner =
        open_node(setup(4, Some(configuration(&[1, 2, 3], &[4])), plain()), &kv, Time::ZERO);
    assert!(!learner.campaign_if_fresh(at(1)));
    assert_eq!((learner.role(), learner.term()), (Role::Follower, 0));
    assert!(outbox(&mut learner).is_empty());
}

// ----- Several nodes -----

/// A tiny deterministic network: every message is delivered at once, in the order sent,
/// unless its link is cut; time moves only in `run_for`, one millisecond at a time.
struct Net {
    nodes: BTreeMap<u8, Core>,
    names: BTreeMap<NodeId, u8>,
    queue: VecDeque<(u8, u8, RaftMessage)>,
    cut: BTreeSet<(u8, u8)>,
    now: Time,
    events: Vec<(u8, RaftEvent<Option<u64>>)>,
    delivered: Vec<(u8, u8, RaftMessage)>,
    /// The most snapshot chunks ever in the network at once.
    peak_chunks: usize,
}

impl Net {
    fn new(voters: &[u8], learners: &[u8], config: &RaftConfig) -> Self {
        let conf = configuration(voters, learners);
        let mut net = Net {
            nodes: BTreeMap::new(),
            names: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            now: Time::ZERO,
            events: Vec::new(),
            delivered: Vec::new(),
            peak_chunks: 0,
        };
        for &i in voters.iter().chain(learners) {
            let kv = Arc::new(MemoryKv::new());
            let node = open_node(setup(i, Some(conf.clone()), config.clone()), &kv, Time::ZERO);
            net.nodes.insert(i, node);
            net.names.insert(node_id(i), i);
        }
        net
    }

    fn node(&self, i: u8) -> &Core {
        &self.nodes[&i]
    }

    /// Starts test node `i` now, with no configuration: it learns it from the leader.
    fn join(&mut self, i: u8, config: &RaftConfig) {
        let kv = Arc::new(MemoryKv::new());
        let node = open_node(setup(i, None, config.clone()), &kv, self.now);
        self.nodes.insert(i, node);
        self.names.insert(node_id(i), i);
    }

    /// Runs a request on node `i` at the current time, then delivers what follows from it.
    fn with<R>(&mut self, i: u8, request: impl FnOnce(&mut Core, Time) -> R) -> R {
        let now = self.now;
        let result = request(self.nodes.get_mut(&i).expect("a node"), now);
        self.collect(i);
        self.deliver();
        result
    }

    fn collect(&mut self, i: u8) {
        let node = self.nodes.get_mut(&i).expect("a node");
        for t in outbox(node) {
            if let Some(&to) = self.names.get(&t.to) {
                self.queue.push_back((i, to, t.message));
            }
        }
        for e in reported(node) {
            self.events.push((i, e));
        }
        let chunks =
            self.queue.iter().filter(|(_, _, m)| matches!(m.body, RaftBody::Snapshot(_))).count();
        self.peak_chunks = self.peak_chunks.max(chunks);
    }

    fn deliver(&mut self) {
        let mut steps = 0;
        while let Some((from, to, m)) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 100_000, "the network does not settle");
            if self.cut.contains(&(from, to)) {
                continue;
            }
            let Some(node) = self.nodes.get_mut(&to) else { continue };
            self.delivered.push((from, to, m.clone()));
            node.handle_message(self.now, node_id(from), m);
            self.collect(to);
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += ms(1);
            let now = self.now;
            let due: Vec<u8> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.poll_timeout().is_some_and(|t| t <= now))
                .map(|(i, _)| *i)
                .collect();
            for i in due {
                self.with(i, |n, now| n.handle_timeout(now));
            }
        }
    }

    /// Node `i` times out first (at its own deadline) and is elected.
    fn elect(&mut self, i: u8) {
        let due = self.node(i).poll_timeout().expect("a voter");
        self.now = self.now.max(due);
        self.with(i, |n, now| n.handle_timeout(now));
        assert_eq!(self.node(i).role(), Role::Leader, "node {i} is elected");
    }

    fn leaders(&self) -> Vec<u8> {
        self.nodes.iter().filter(|(_, n)| n.role() == Role::Leader).map(|(i, _)| *i).collect()
    }

    fn isolate(&mut self, i: u8) {
        for &j in self.nodes.keys() {
            if j != i {
                self.cut.insert((i, j));
                self.cut.insert((j, i));
            }
        }
    }

    fn propose(&mut self, i: u8, key: u8, value: u64) -> u64 {
        self.with(i, |n, now| n.propose(now, put(key, value))).expect("a leader").0
    }
}

#[test]
fn a_rejoining_node_does_not_depose_a_healthy_leader() {
    let mut net = Net::new(&[1, 2, 3], &[], &RaftConfig::default());
    net.elect(1);
    let term = net.node(1).term();
    // Node 3 is cut off for two seconds: it keeps asking for pre-votes nobody hears, and its
    // term stays where it was.
    net.isolate(3);
    net.run_for(ms(2_000));
    assert!(net.node(3).metrics().pre_campaigns >= 6);
    assert_eq!((net.node(3).term(), net.node(3).metrics().campaigns), (term, 0));
    assert_eq!((net.leaders(), net.node(1).term()), (vec![1], term));
    // Back, it follows the leader it finds, in the same term, and catches up.
    net.cut.clear();
    net.run_for(ms(500));
    assert_eq!((net.leaders(), net.node(1).term()), (vec![1], term));
    assert_eq!((net.node(3).role(), net.node(3).leader()), (Role::Follower, Some(node_id(1))));
    let index = net.propose(1, 1, 1);
    assert_eq!(net.node(3).commit_index(), index);
    // Now node 3 hears the others but not the leader: the others heard from the leader within
    // their lease and refuse its pre-votes; nobody's term moves.
    let before = net.node(3).metrics().pre_campaigns;
    net.cut.insert((1, 3));
    net.run_for(ms(2_000));
    assert!(net.node(3).metrics().pre_campaigns >= before + 6);
    assert_eq!(net.leaders(), vec![1]);
    for i in 1..=3 {
        assert_eq!(net.node(i).term(), term, "node {i}");
    }
    assert_eq!(net.node(2).metrics().votes_ignored_in_lease, 0);
}

#[test]
fn leadership_transfer() {
    let mut net = Net::new(&[1, 2, 3], &[], &RaftConfig::default());
    net.elect(1);
    net.propose(1, 1, 1);
    let term = net.node(1).term();
    // Only another voter can take over.
    for to in [1, 9] {
        let refused = net.with(1, |n, now| n.transfer_leadership(now, node_id(to)));
        assert_eq!(refused, Err(ProposeError::NotAVoter(node_id(to))));
    }
    // Node 2 is caught up: it is told to campaign at once. Meanwhile, no proposals.
    let now = net.now;
    let leader = net.nodes.get_mut(&1).unwrap();
    leader.transfer_leadership(now, node_id(2)).unwrap();
    assert_eq!(leader.propose(now, put(2, 2)), Err(ProposeError::Transferring));
    assert_eq!(outbox(leader), one(2, message(term, RaftBody::TimeoutNow)));
    net.queue.push_back((1, 2, message(term, RaftBody::TimeoutNow)));
    net.deliver();
    // It campaigned without a pre-vote round, and the voters that were within their lease
    // voted for it all the same.
    assert_eq!(net.leaders(), vec![2]);
    assert_eq!(net.node(2).term(), term + 1);
    assert_eq!((net.node(2).metrics().pre_campaigns, net.node(2).metrics().campaigns), (0, 1));
    assert_eq!((net.node(1).role(), net.node(1).leader()), (Role::Follower, Some(node_id(2))));
    assert_eq!(net.node(3).leader(), Some(node_id(2)));
    let index = net.propose(2, 3, 3);
    for i in 1..=3 {
        assert_eq!(net.node(i).commit_index(), index, "node {i}");
    }
}

#[test]
fn a_removed_leader_steps_down() {
    let mut net = Net::new(&[1, 2, 3], &[], &RaftConfig::default());
    net.elect(1);
    let term = net.node(1).term();
    let target =
        Membership::new(group(), vec![member(node_id(2)), member(node_id(3))], Vec::new()).unwrap();
    let campaigns = (net.node(1).metrics().pre_campaigns, net.node(1).metrics().campaigns);
    let joint = net.with(1, |n, now| n.change_membership(now, &target)).unwrap();
    // The joint configuration committed, the leader appended the final one, and once that
    // committed, the leader, no longer a voter, stepped down.
    let old = net.node(1);
    assert_eq!(old.role(), Role::Follower);
    assert_eq!(old.commit_index(), joint + 1);
    assert!(!old.configuration().is_joint());
    assert_eq!(old.configuration().all_voters(), ids(&[2, 3]).into_iter().collect::<Vec<_>>());
    // It has no election timer any more and never campaigns.
    assert_eq!(old.poll_timeout(), None);
    net.run_for(ms(1_000));
    let leaders = net.leaders();
    assert!(leaders == vec![2] || leaders == vec![3], "{leaders:?}");
    assert!(net.node(leaders[0]).term() > term);
    let old = net.node(1);
    assert_eq!(old.role(), Role::Follower);
    assert_eq!((old.metrics().pre_campaigns, old.metrics().campaigns), campaigns);
}

#[test]
fn a_learner_does_not_vote() {
    let conf = configuration(&[1, 2, 3], &[4]);
    let mut learner = open_node(
        setup(4, Some(conf.clone()), RaftConfig::default()),
        &Arc::new(MemoryKv::new()),
        Time::ZERO,
    );
    // It has no election timer, and a timeout makes it do nothing.
    assert_eq!(learner.poll_timeout(), None);
    learner.handle_timeout(at(10_000));
    assert!(outbox(&mut learner).is_empty());
    let metrics = learner.metrics();
    assert_eq!(
        (learner.role(), learner.term(), metrics.pre_campaigns, metrics.campaigns),
        (Role::Follower, 0, 0, 0)
    );
    // A candidate asks only the voters, and a learner's vote does not count.
    let mut candidate =
        open_node(setup(1, Some(conf), plain()), &Arc::new(MemoryKv::new()), Time::ZERO);
    let t = candidate.poll_timeout().unwrap();
    candidate.handle_timeout(t);
    assert_eq!(recipients(&outbox(&mut candidate)), ids(&[2, 3]));
    candidate.handle_message(t, node_id(4), message(1, RaftBody::VoteResponse { granted: true }));
    assert_eq!(candidate.role(), Role::Candidate);
    candidate.handle_message(t, node_id(2), message(1, RaftBody::VoteResponse { granted: true }));
    assert_eq!(candidate.role(), Role::Leader);
    // The learner still receives the log.
    assert_eq!(recipients(&outbox(&mut candidate)), ids(&[2, 3, 4]));
}

#[test]
fn snapshot_sent_in_chunks_to_a_follower_behind_compaction() {
    let mut config = RaftConfig::default();
    config.snapshot_threshold = 5;
    config.snapshot_chunk_len = 32;
    let mut net = Net::new(&[1, 2, 3], &[], &config);
    net.elect(1);
    net.isolate(3);
    for v in 1..=12 {
        net.propose(1, (v % 4) as u8, v);
    }
    let point = net.node(1).log().snapshot_point();
    assert!(point.index >= 5, "the leader compacted its log: {point:?}");
    assert!(net.node(3).log().last_index() < point.index, "node 3 is behind the compaction");
    net.delivered.clear();
    net.peak_chunks = 0;
    net.cut.clear();
    net.run_for(ms(500));
    let chunks: Vec<SnapshotChunk> = net
        .delivered
        .iter()
        .filter(|(from, to, _)| (*from, *to) == (1, 3))
        .filter_map(|(_, _, m)| match &m.body {
            RaftBody::Snapshot(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    // In chunks of at most 32 bytes, in order, one in flight at a time.
    assert!(chunks.len() >= 2, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| c.point == point && c.data.len() <= 32));
    let offsets: Vec<u64> = chunks.iter().map(|c| c.offset).collect();
    let expected: Vec<u64> = (0..chunks.len() as u64).map(|k| k * 32).collect();
    assert_eq!(offsets, expected);
    assert_eq!(chunks.iter().map(|c| c.data.len() as u64).sum::<u64>(), chunks[0].total);
    assert_eq!(net.peak_chunks, 1);
    // Installed: the follower has the leader's state and log.
    let (follower, leader) = (net.node(3), net.node(1));
    assert_eq!(follower.metrics().snapshots_installed, 1);
    assert!(net.events.contains(&(3, RaftEvent::SnapshotInstalled { index: point.index })));
    assert_eq!(follower.log().snapshot_point(), point);
    assert_eq!(follower.state_machine().map, leader.state_machine().map);
    assert_eq!(follower.log().last_chain(), leader.log().last_chain());
    assert_eq!(follower.commit_index(), leader.commit_index());
}

// ----- §6: membership changes -----

#[test]
fn a_configuration_takes_effect_when_appended_not_when_committed() {
    // The leader of term 1 appends a joint configuration adding node 4 as a voter.
    let joint = Configuration {
        voters: configuration(&[1, 2, 3, 4], &[]).voters,
        outgoing: configuration(&[1, 2, 3], &[]).voters,
        learners: Vec::new(),
    };
    let entries = vec![
        WireEntry { term: 1, payload: entry_bytes(&EntryKind::Noop) },
        WireEntry { term: 1, payload: entry_bytes(&EntryKind::Config(joint.clone())) },
    ];
    let mut f = fresh(2, &[1, 2, 3], RaftConfig::default());
    f.handle_message(at(1), node_id(1), message(1, append(0, 0, entries, 0)));
    outbox(&mut f);
    // In force at once, uncommitted: node 4 now votes.
    assert_eq!(f.commit_index(), 0);
    assert_eq!(f.configuration(), &joint);
    f.handle_message(at(500), node_id(4), message(2, vote(2, 1)));
    assert_eq!(outbox(&mut f), one(4, message(2, RaftBody::VoteResponse { granted: true })));
    // The leader of term 3 replaces entry 2: the configuration before it is back, and node 4
    // is a stranger again.
    f.handle_message(at(501), node_id(3), message(3, append(1, 1, vec![wire(2, 3)], 0)));
    outbox(&mut f);
    assert_eq!(f.configuration(), &configuration(&[1, 2, 3], &[]));
    f.handle_message(at(1_000), node_id(4), message(4, vote(9, 9)));
    assert!(outbox(&mut f).is_empty());
    assert_eq!((f.metrics().stranger_votes, f.term()), (1, 3));
}

#[test]
fn during_a_membership_change_decisions_need_both_majorities() {
    // Node 1's log ends with the joint configuration from {1, 2, 3} to {1, 4, 5}.
    let joint = Configuration {
        voters: configuration(&[1, 4, 5], &[]).voters,
        outgoing: configuration(&[1, 2, 3], &[]).voters,
        learners: Vec::new(),
    };
    let kv = Arc::new(MemoryKv::new());
    let mut log = DurableLog::open(kv.clone(), group()).unwrap();
    log.append(1, vec![entry_bytes(&EntryKind::Config(joint.clone()))]).unwrap();
    log.save_hard_state(HardState { term: 1, vote: None }).unwrap();
    drop(log);
    let mut n = open_node(setup(1, Some(configuration(&[1, 2, 3], &[])), plain()), &kv, Time::ZERO);
    assert_eq!(n.configuration(), &joint);
    // An election asks both halves, and a majority of the old one alone does not win it.
    let t = n.poll_timeout().unwrap();
    n.handle_timeout(t);
    assert_eq!(recipients(&outbox(&mut n)), ids(&[2, 3, 4, 5]));
    for p in [2, 3] {
        n.handle_message(t, node_id(p), message(2, RaftBody::VoteResponse { granted: true }));
    }
    assert_eq!(n.role(), Role::Candidate);
    n.handle_message(t, node_id(4), message(2, RaftBody::VoteResponse { granted: true }));
    assert_eq!(n.role(), Role::Leader);
    // Committing its no-op (entry 2) needs both majorities too.
    n.handle_message(t, node_id(2), accepted(&n, 2, 2));
    n.handle_message(t, node_id(3), accepted(&n, 3, 2));
    assert_eq!(n.commit_index(), 0);
    n.handle_message(t, node_id(5), accepted(&n, 5, 2));
    assert_eq!(n.commit_index(), 2);
    // The joint configuration is committed: the leader appends the new one as entry 3.
    assert_eq!(n.log().last_index(), 3);
    assert_eq!(n.configuration(), &Configuration::new(joint.voters.clone(), Vec::new()));
}

#[test]
fn a_new_voter_first_catches_up_as_a_learner() {
    let config = RaftConfig::default();
    let mut net = Net::new(&[1, 2, 3], &[], &config);
    net.elect(1);
    for v in 1..=5 {
        net.propose(1, v as u8, v);
    }
    let voters = |ids: &[u8]| ids.iter().map(|i| member(node_id(*i))).collect::<Vec<_>>();
    let with_4 = Membership::new(group(), voters(&[1, 2, 3, 4]), Vec::new()).unwrap();
    // Not yet a caught-up learner: refused, nothing appended.
    let last = net.node(1).log().last_index();
    let refused = net.with(1, |n, now| n.change_membership(now, &with_4));
    assert_eq!(refused, Err(ProposeError::NotCaughtUp(node_id(4))));
    assert_eq!(net.node(1).log().last_index(), last);
    // It joins as a learner, learns the configuration and the log from the leader, and has
    // no vote and no election timer.
    net.join(4, &config);
    let learner = Membership::new(group(), voters(&[1, 2, 3]), vec![member(node_id(4))]).unwrap();
    net.with(1, |n, now| n.change_membership(now, &learner)).unwrap();
    net.run_for(ms(200));
    let commit = net.node(1).commit_index();
    assert_eq!(net.node(4).commit_index(), commit);
    assert_eq!(net.node(4).state_machine().map, net.node(1).state_machine().map);
    assert_eq!(net.node(4).poll_timeout(), None);
    // Caught up, it is promoted (through the joint configuration) and then votes.
    net.with(1, |n, now| n.change_membership(now, &with_4)).unwrap();
    net.run_for(ms(200));
    let promoted = net.node(4);
    assert!(promoted.configuration().is_voter(&node_id(4)));
    assert!(!promoted.configuration().is_joint());
    assert!(promoted.poll_timeout().is_some());
    assert_eq!(promoted.commit_index(), net.node(1).log().last_index());
    assert_eq!(net.leaders(), vec![1]);
}
