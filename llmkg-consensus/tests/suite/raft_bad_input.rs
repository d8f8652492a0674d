#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Bad input to a Raft node is refused, changes nothing, and is counted: forged, replayed and
//! misdirected acknowledgements, votes from strangers and from old terms, messages for other
//! groups, malformed appends and snapshots, and arbitrary bytes off the network. Evidence a
//! node produces for a committed entry verifies, and a flipped byte breaks it.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{
    KvMachine, accepted, ack_of, chain_of, configuration, entry_bytes, federation, group, message,
    node_id, open_node, outbox, put, reported, setup, win_election, wire, write_log,
};
use llmkg_consensus::log::SnapshotPoint;
use llmkg_consensus::raft::{
    AppendResult, Configuration, EntryKind, Raft, RaftBody, RaftConfig, RaftEvent, RaftMessage,
    Role, SnapshotChunk, WireEntry,
};
use llmkg_federation_core::consensus::{ChainHash, Evidence, GroupId, Membership, RaftAck};
use llmkg_federation_core::{
    FederationId, MemoryKv, NodeKeypair, Protocol, Signed, Time, encoding,
};
use proptest::prelude::*;
use proptest::sample::Index;

type Core = Raft<Arc<MemoryKv>, KvMachine>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn at(millis: u64) -> Time {
    Time::from_millis(millis)
}

fn three() -> Option<Configuration> {
    Some(configuration(&[1, 2, 3], &[]))
}

fn append(prev_index: u64, prev_term: u64, entries: Vec<WireEntry>, commit: u64) -> RaftBody {
    RaftBody::Append { prev_index, prev_term, entries, commit, certificate: Vec::new() }
}

fn vote(last_index: u64, last_term: u64) -> RaftBody {
    RaftBody::Vote { last_index, last_term, transfer: false }
}

fn response(term: u64, index: u64, ack: Option<Signed<RaftAck>>) -> RaftMessage {
    message(term, RaftBody::AppendResponse(AppendResult::Accepted { index, ack }))
}

/// Node 1, just elected leader of {1, 2, 3} in term 1, its no-op (entry 1) sent and not yet
/// acknowledged. What it sent and reported is drained.
fn new_leader(config: RaftConfig) -> (Core, Time) {
    let mut n = open_node(setup(1, three(), config), &Arc::new(MemoryKv::new()), Time::ZERO);
    let t = win_election(&mut n, &[2, 3]);
    outbox(&mut n);
    reported(&mut n);
    (n, t)
}

/// Node 2, following node 1 in term 2, holding entries [1 (term 1), 2 (term 2)], entry 1
/// committed.
fn follower(config: RaftConfig) -> Core {
    follower_on(config, &Arc::new(MemoryKv::new()))
}

fn follower_on(config: RaftConfig, kv: &Arc<MemoryKv>) -> Core {
    let mut f = open_node(setup(2, three(), config), kv, Time::ZERO);
    f.handle_message(at(1), node_id(1), message(2, append(0, 0, vec![wire(1, 1), wire(2, 2)], 1)));
    outbox(&mut f);
    reported(&mut f);
    assert_eq!((f.log().last_index(), f.commit_index(), f.leader()), (2, 1, Some(node_id(1))));
    f
}

/// What must not change: the log's end and snapshot, the commit and applied indices, the
/// term and vote.
type State = (u64, ChainHash, SnapshotPoint, u64, u64, u64, Option<llmkg_federation_core::NodeId>);

fn state(n: &Core) -> State {
    let log = n.log();
    (
        log.last_index(),
        log.last_chain(),
        log.snapshot_point(),
        n.commit_index(),
        n.applied_index(),
        n.term(),
        n.vote(),
    )
}

// ----- Acknowledgements -----

/// Feeds the new leader an acknowledgement of its no-op from node 2 that `spoil` made bad:
/// it must be refused (and counted) and commit nothing; then the genuine one commits, so the
/// bad one was all that held the commit back.
fn refused(spoil: impl FnOnce(&Core) -> Option<Signed<RaftAck>>) {
    let (mut n, t) = new_leader(RaftConfig::default());
    let bad = spoil(&n);
    n.handle_message(t, node_id(2), response(1, 1, bad));
    assert_eq!(n.metrics().bad_acks, 1);
    assert_eq!(n.commit_index(), 0);
    assert!(outbox(&mut n).is_empty());
    n.handle_message(t, node_id(2), accepted(&n, 2, 1));
    assert_eq!((n.commit_index(), n.metrics().bad_acks), (1, 1));
}

fn sign(key: &NodeKeypair, federation: &FederationId, ack: RaftAck) -> Option<Signed<RaftAck>> {
    Some(Signed::sign_crate_kind(key, federation, ack).unwrap())
}

fn genuine(n: &Core, index: u64) -> RaftAck {
    ack_of(n, 2, index).open(&federation()).unwrap().clone()
}

#[test]
fn a_forged_acknowledgement_is_refused() {
    // Node 2's acknowledgement, signed by node 3 (a voter) or by a stranger.
    for signer in [3, 9] {
        refused(|n| sign(&common::keypair(signer), &federation(), genuine(n, 1)));
    }
}

#[test]
fn a_replayed_acknowledgement_is_refused() {
    // Node 2's acknowledgement of entry 1, resent as if it acknowledged entry 2.
    let (mut n, t) = new_leader(RaftConfig::default());
    n.handle_message(t, node_id(2), accepted(&n, 2, 1));
    assert_eq!(n.commit_index(), 1);
    let old = ack_of(&n, 2, 1);
    let (index, _) = n.propose(t, put(1, 1)).unwrap();
    outbox(&mut n);
    n.handle_message(t, node_id(2), response(1, index, Some(old.clone())));
    assert_eq!((n.metrics().bad_acks, n.commit_index()), (1, 1));
    // The very same response again is a duplicate: it changes nothing either.
    n.handle_message(t, node_id(2), response(1, 1, Some(old)));
    assert_eq!(n.commit_index(), 1);
    n.handle_message(t, node_id(2), accepted(&n, 2, index));
    assert_eq!(n.commit_index(), index);
    // An acknowledgement from an earlier term, of an entry 2 (of term 1) that the leader of
    // term 2 replaced by its no-op.
    let kv = Arc::new(MemoryKv::new());
    write_log(&kv, &[1], 1, None);
    let mut n = open_node(setup(1, three(), RaftConfig::default()), &kv, Time::ZERO);
    let t = win_election(&mut n, &[2, 3]);
    assert_eq!((n.term(), n.log().last_index()), (2, 2));
    let stale = RaftAck { group: group(), term: 1, index: 2, chain: chain_of(&[1, 1]) };
    n.handle_message(
        t,
        node_id(2),
        response(2, 2, sign(&common::keypair(2), &federation(), stale)),
    );
    assert_eq!((n.metrics().bad_acks, n.commit_index()), (1, 0));
    n.handle_message(t, node_id(2), accepted(&n, 2, 2));
    assert_eq!(n.commit_index(), 2);
}

#[test]
fn an_acknowledgement_for_another_federation_is_refused() {
    let elsewhere = FederationId::from_name("another-federation");
    refused(|n| sign(&common::keypair(2), &elsewhere, genuine(n, 1)));
}

#[test]
fn an_acknowledgement_for_another_group_is_refused() {
    refused(|n| {
        let mut ack = genuine(n, 1);
        ack.group = GroupId::from_bytes([7; 32]);
        sign(&common::keypair(2), &federation(), ack)
    });
}

#[test]
fn an_acknowledgement_whose_chain_does_not_match_the_log_is_refused() {
    refused(|n| {
        let mut ack = genuine(n, 1);
        ack.chain = ChainHash::from_bytes([9; 32]);
        sign(&common::keypair(2), &federation(), ack)
    });
    // The right chain hash under another term is no better.
    refused(|n| {
        let mut ack = genuine(n, 1);
        ack.term = 2;
        sign(&common::keypair(2), &federation(), ack)
    });
}

#[test]
fn a_missing_acknowledgement_is_refused_when_acks_are_signed() {
    refused(|_| None);
    // Without signed acknowledgements, the same response counts.
    let mut config = RaftConfig::default();
    config.signed_acks = false;
    let (mut n, t) = new_leader(config);
    n.handle_message(t, node_id(2), response(1, 1, None));
    assert_eq!((n.commit_index(), n.metrics().bad_acks), (1, 0));
}

// ----- Votes and groups -----

#[test]
fn a_vote_from_a_non_voter_is_dropped() {
    // Node 4 is a learner, node 9 a stranger.
    let conf = Some(configuration(&[1, 2, 3], &[4]));
    let mut n = open_node(
        setup(2, conf.clone(), RaftConfig::default()),
        &Arc::new(MemoryKv::new()),
        Time::ZERO,
    );
    let requests = [vote(5, 5), RaftBody::PreVote { last_index: 5, last_term: 5 }];
    let mut count = 0;
    for from in [9, 4] {
        for body in &requests {
            n.handle_message(at(1), node_id(from), message(5, body.clone()));
            count += 1;
            assert_eq!(n.metrics().stranger_votes, count);
            assert!(outbox(&mut n).is_empty());
            assert_eq!((n.term(), n.vote(), n.role()), (0, None, Role::Follower));
        }
    }
    n.handle_message(at(1), node_id(3), message(5, vote(5, 5)));
    assert_eq!((n.term(), n.vote()), (5, Some(node_id(3))));
    // Nor does a vote granted by a non-voter count toward an election.
    let mut plain = RaftConfig::default();
    plain.pre_vote = false;
    let mut c = open_node(setup(1, conf, plain), &Arc::new(MemoryKv::new()), Time::ZERO);
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(t);
    for from in [9, 4] {
        c.handle_message(t, node_id(from), message(1, RaftBody::VoteResponse { granted: true }));
    }
    assert_eq!(c.role(), Role::Candidate);
    c.handle_message(t, node_id(2), message(1, RaftBody::VoteResponse { granted: true }));
    assert_eq!(c.role(), Role::Leader);
}

#[test]
fn a_vote_response_for_an_old_term_does_not_count() {
    let mut plain = RaftConfig::default();
    plain.pre_vote = false;
    let mut c = open_node(setup(1, three(), plain), &Arc::new(MemoryKv::new()), Time::ZERO);
    let mut t = Time::ZERO;
    for _ in 0..2 {
        t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
    }
    assert_eq!((c.role(), c.term()), (Role::Candidate, 2));
    // A grant of the first election arrives late.
    c.handle_message(t, node_id(2), message(1, RaftBody::VoteResponse { granted: true }));
    assert_eq!((c.role(), c.term()), (Role::Candidate, 2));
    c.handle_message(t, node_id(2), message(2, RaftBody::VoteResponse { granted: true }));
    assert_eq!((c.role(), c.term()), (Role::Leader, 2));
}

#[test]
fn a_message_for_another_group_is_dropped() {
    let other = GroupId::from_bytes([7; 32]);
    let mut f = follower(RaftConfig::default());
    let before = state(&f);
    let foreign = [
        append(2, 2, vec![wire(3, 2)], 3),
        vote(9, 9),
        RaftBody::Heartbeat { commit: 2 },
        RaftBody::TimeoutNow,
    ];
    for (k, body) in foreign.into_iter().enumerate() {
        let m = RaftMessage { group: other, term: 7, body };
        f.handle_message(at(2), node_id(1), m);
        assert_eq!(f.metrics().wrong_group, k as u64 + 1);
        assert!(outbox(&mut f).is_empty());
        assert_eq!(state(&f), before);
        assert_eq!(f.role(), Role::Follower);
    }
    // A leader does not count another group's acknowledgement.
    let (mut n, t) = new_leader(RaftConfig::default());
    let mut m = accepted(&n, 2, 1);
    m.group = other;
    n.handle_message(t, node_id(2), m);
    assert_eq!((n.metrics().wrong_group, n.commit_index()), (1, 0));
}

// ----- Appends -----

#[test]
fn entries_that_do_not_decode_are_dropped() {
    let mut f = follower(RaftConfig::default());
    let before = state(&f);
    let garbage = WireEntry { term: 2, payload: vec![0xff, 0xff, 0xff] };
    let trailing =
        WireEntry { term: 2, payload: [entry_bytes(&EntryKind::Noop), vec![0]].concat() };
    let bad = [vec![garbage.clone()], vec![wire(3, 2), garbage], vec![trailing]];
    for (k, entries) in bad.into_iter().enumerate() {
        f.handle_message(at(2), node_id(1), message(2, append(2, 2, entries, 3)));
        assert_eq!(f.metrics().bad_messages, k as u64 + 1);
        assert!(outbox(&mut f).is_empty());
        assert_eq!(state(&f), before);
    }
    f.handle_message(at(3), node_id(1), message(2, append(2, 2, vec![wire(3, 2)], 3)));
    assert_eq!((f.log().last_index(), f.commit_index()), (3, 3));
}

#[test]
fn entries_whose_terms_go_down_are_dropped() {
    let mut f = follower(RaftConfig::default());
    let before = state(&f);
    let bad = [vec![wire(3, 2), wire(4, 1)], vec![wire(3, 1)]];
    for (k, entries) in bad.into_iter().enumerate() {
        f.handle_message(at(2), node_id(1), message(2, append(2, 2, entries, 2)));
        assert_eq!(f.metrics().bad_messages, k as u64 + 1);
        assert!(outbox(&mut f).is_empty());
        assert_eq!(state(&f), before);
    }
}

#[test]
fn a_commit_index_past_the_log_is_capped() {
    // A follower holding three entries, of which only the first is known to match the
    // leader's log: an append of that one entry claiming a huge commit index commits it alone.
    let kv = Arc::new(MemoryKv::new());
    write_log(&kv, &[1, 1, 1], 1, None);
    let mut f = open_node(setup(2, three(), RaftConfig::default()), &kv, Time::ZERO);
    f.handle_message(at(1), node_id(1), message(2, append(0, 0, vec![wire(1, 1)], 1_000)));
    assert_eq!((f.commit_index(), f.applied_index(), f.log().last_index()), (1, 1, 3));
    // An empty append commits no further than its previous entry.
    f.handle_message(at(2), node_id(1), message(2, append(2, 1, Vec::new(), u64::MAX)));
    assert_eq!((f.commit_index(), f.applied_index()), (2, 2));
    // A heartbeat claiming everything commits no further than the log.
    let mut g = follower(RaftConfig::default());
    g.handle_message(at(2), node_id(1), message(2, RaftBody::Heartbeat { commit: u64::MAX }));
    assert_eq!((g.commit_index(), g.applied_index()), (2, 2));
}

#[test]
fn a_rejection_naming_an_index_past_the_log_is_dropped() {
    for rejected in [u64::MAX, 1_000] {
        let (mut n, t) = new_leader(RaftConfig::default());
        let body = RaftBody::AppendResponse(AppendResult::Rejected {
            rejected,
            hint_index: u64::MAX,
            hint_term: u64::MAX,
        });
        n.handle_message(t, node_id(2), message(1, body));
        assert_eq!((n.role(), n.metrics().bad_messages), (Role::Leader, 1), "{rejected}");
        assert!(outbox(&mut n).is_empty());
        n.handle_message(t, node_id(2), accepted(&n, 2, 1));
        assert_eq!(n.commit_index(), 1);
    }
}

#[test]
fn a_term_at_the_end_of_the_range_does_not_crash_a_node() {
    for pre_vote in [true, false] {
        let mut config = RaftConfig::default();
        config.pre_vote = pre_vote;
        let mut f = follower(config.clone());
        let mut term = f.term();
        f.handle_message(at(2), node_id(1), message(u64::MAX, RaftBody::Heartbeat { commit: 0 }));
        outbox(&mut f);
        // The leader goes quiet: the node times out, again and again.
        for _ in 0..3 {
            assert!(f.term() >= term, "the term went back from {term} to {}", f.term());
            term = f.term();
            let due = f.poll_timeout().unwrap();
            f.handle_timeout(due);
            for m in outbox(&mut f) {
                assert!(m.message.term >= term, "{m:?} from a node of term {term}");
            }
        }
        // A leader deposed at that term, then told by the new leader to campaign at once.
        let (mut n, t) = new_leader(config);
        let deposing = [
            RaftBody::HeartbeatResponse { last_index: 0 },
            append(0, 0, Vec::new(), 0),
            RaftBody::TimeoutNow,
        ];
        for body in deposing {
            let term = n.term();
            n.handle_message(t, node_id(2), message(u64::MAX, body));
            assert!(n.term() >= term, "the term went back from {term} to {}", n.term());
            for m in outbox(&mut n) {
                assert!(m.message.term >= n.term(), "{m:?} from a node of term {}", n.term());
            }
        }
    }
}

// ----- Snapshots -----

fn chunk(index: u64, total: u64, offset: u64, data: Vec<u8>) -> RaftMessage {
    let point = SnapshotPoint { index, term: 2, chain: ChainHash::from_bytes([5; 32]) };
    message(2, RaftBody::Snapshot(SnapshotChunk { point, total, offset, data }))
}

/// A snapshot as a leader stores and sends it: the configuration and the state machine's
/// state (the same encoding as the crate's own snapshot blob, a struct of these two fields).
fn snapshot_blob(state: Vec<u8>) -> Vec<u8> {
    encoding::try_encode(&(configuration(&[1, 2, 3], &[]), state)).unwrap()
}

#[test]
fn an_oversized_snapshot_is_refused() {
    let mut config = RaftConfig::default();
    config.max_snapshot_len = 1_024;
    let mut f = follower(config);
    let before = state(&f);
    f.handle_message(at(2), node_id(1), chunk(10, 1_025, 0, vec![0; 16]));
    assert_eq!(f.metrics().bad_messages, 1);
    assert!(outbox(&mut f).is_empty());
    assert_eq!(state(&f), before);
    // At the limit, the first chunk is taken and the rest asked for.
    f.handle_message(at(3), node_id(1), chunk(10, 1_024, 0, vec![0; 16]));
    let next = RaftBody::SnapshotResponse { index: 10, next_offset: 16, done: false };
    assert_eq!(
        outbox(&mut f).into_iter().map(|t| t.message).collect::<Vec<_>>(),
        vec![message(2, next)]
    );
}

#[test]
fn a_snapshot_chunk_overrunning_its_total_is_refused() {
    let mut f = follower(RaftConfig::default());
    let before = state(&f);
    // (total, offset, length); the last one covers nothing (index 0).
    let bad = [(10, 8, 4), (10, 0, 11), (10, u64::MAX, 1), (0, 0, 1)];
    for (k, (total, offset, len)) in bad.into_iter().enumerate() {
        f.handle_message(at(2), node_id(1), chunk(10, total, offset, vec![1; len]));
        assert_eq!(f.metrics().bad_messages, k as u64 + 1, "{total} {offset} {len}");
        assert!(outbox(&mut f).is_empty());
        assert_eq!(state(&f), before);
    }
    f.handle_message(at(2), node_id(1), chunk(0, 10, 0, vec![1; 10]));
    assert_eq!(f.metrics().bad_messages, 5);
    assert!(outbox(&mut f).is_empty());
    assert_eq!(state(&f), before);
}

#[test]
fn snapshot_bytes_that_do_not_decode_are_refused() {
    let mut f = follower(RaftConfig::default());
    let before = state(&f);
    let garbage = [0xff; 40];
    f.handle_message(at(2), node_id(1), chunk(10, 40, 0, garbage[..20].to_vec()));
    outbox(&mut f);
    f.handle_message(at(2), node_id(1), chunk(10, 40, 20, garbage[20..].to_vec()));
    assert_eq!(f.metrics().bad_messages, 1);
    assert_eq!(f.metrics().snapshots_installed, 0);
    assert!(outbox(&mut f).is_empty());
    assert!(reported(&mut f).is_empty());
    assert_eq!(state(&f), before);
    // A snapshot that decodes is installed (so the bytes above were refused for what they were).
    let state_bytes = encoding::try_encode(&BTreeMap::from([(1u8, 7u64)])).unwrap();
    let blob = snapshot_blob(state_bytes);
    f.handle_message(at(3), node_id(1), chunk(10, blob.len() as u64, 0, blob));
    assert_eq!(f.metrics().snapshots_installed, 1);
    assert_eq!((f.log().snapshot_point().index, f.commit_index(), f.applied_index()), (10, 10, 10));
    assert_eq!(f.state_machine().map, BTreeMap::from([(1, 7)]));
    assert_eq!(reported(&mut f), vec![RaftEvent::SnapshotInstalled { index: 10 }]);
}

#[test]
fn a_snapshot_the_state_machine_cannot_restore_changes_nothing() {
    let kv = Arc::new(MemoryKv::new());
    let mut f = follower_on(RaftConfig::default(), &kv);
    let before = state(&f);
    // The snapshot decodes, but its state is not one the state machine takes.
    let blob = snapshot_blob(vec![0xff; 3]);
    f.handle_message(at(2), node_id(1), chunk(10, blob.len() as u64, 0, blob));
    assert_eq!(f.metrics().snapshots_installed, 0);
    assert!(f.metrics().bad_messages >= 1);
    assert_eq!(state(&f), before);
    // The node still opens from its store.
    drop(f);
    let reopened =
        Raft::open(setup(2, three(), RaftConfig::default()), kv.clone(), KvMachine::default());
    assert!(reopened.is_ok(), "the node does not reopen: {:?}", reopened.err());
}

// ----- Arbitrary bytes -----

/// One valid message of every kind, encoded.
fn corpus() -> Vec<Vec<u8>> {
    let (leader, _) = new_leader(RaftConfig::default());
    let blob = snapshot_blob(encoding::try_encode(&BTreeMap::from([(1u8, 7u64)])).unwrap());
    let messages = vec![
        message(
            1,
            RaftBody::Append {
                prev_index: 0,
                prev_term: 0,
                entries: vec![wire(1, 1), wire(2, 1)],
                commit: 1,
                certificate: vec![ack_of(&leader, 2, 1)],
            },
        ),
        message(1, append(0, 0, vec![wire(1, 1), wire(2, 1)], 1)),
        message(2, append(1, 1, vec![wire(2, 2)], 2)),
        message(1, RaftBody::Heartbeat { commit: 1 }),
        message(2, RaftBody::PreVote { last_index: 1, last_term: 1 }),
        message(2, RaftBody::PreVoteResponse { granted: true }),
        message(2, vote(1, 1)),
        message(1, RaftBody::VoteResponse { granted: true }),
        accepted(&leader, 2, 1),
        message(
            1,
            RaftBody::AppendResponse(AppendResult::Rejected {
                rejected: 1,
                hint_index: 0,
                hint_term: 0,
            }),
        ),
        message(1, RaftBody::HeartbeatResponse { last_index: 1 }),
        chunk(1, blob.len() as u64, 0, blob),
        message(1, RaftBody::SnapshotResponse { index: 1, next_offset: 0, done: false }),
        message(1, RaftBody::TimeoutNow),
    ];
    messages.iter().map(|m| encoding::try_encode(m).unwrap()).collect()
}

/// Bytes off the network: random, random after the right group id, valid messages with a
/// few bytes flipped, and valid messages cut short with random bytes after.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let corpus = Arc::new(corpus());
    let n = corpus.len();
    let (flipped, cut) = (corpus.clone(), corpus);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        prop::collection::vec(any::<u8>(), 0..128).prop_map(|tail| [
            group().as_bytes().as_slice(),
            &tail
        ]
        .concat()),
        (0..n, prop::collection::vec((any::<Index>(), 1..=255u8), 1..4)).prop_map(
            move |(k, flips)| {
                let mut b = flipped[k].clone();
                for (i, x) in flips {
                    let at = i.index(b.len());
                    b[at] ^= x;
                }
                b
            }
        ),
        (0..n, any::<Index>(), prop::collection::vec(any::<u8>(), 0..16)).prop_map(
            move |(k, i, tail)| {
                let b = &cut[k];
                [&b[..i.index(b.len())], &tail[..]].concat()
            }
        ),
    ]
}

/// Feeds `m` from `from` to a node at `now`, lets its timers run, and checks what must hold
/// whatever it was fed.
fn feed(node: &mut Core, now: Time, from: u8, m: RaftMessage) -> Result<(), TestCaseError> {
    let term = node.term();
    node.handle_message(now, node_id(from), m);
    node.handle_timeout(now);
    outbox(node);
    reported(node);
    prop_assert!(node.term() >= term, "the term went back");
    prop_assert!(node.applied_index() <= node.commit_index());
    prop_assert!(node.commit_index() <= node.log().last_index());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(
        inputs in prop::collection::vec((wire_bytes(), prop::sample::select(vec![1u8, 2, 3, 9])), 1..16)
    ) {
        let (mut leader, mut now) = new_leader(RaftConfig::default());
        let mut follower = follower(RaftConfig::default());
        for (bytes, from) in inputs {
            let Ok(m) = encoding::decode_with_limit::<RaftMessage>(&bytes, 1 << 16) else {
                continue;
            };
            now += ms(20);
            feed(&mut leader, now, from, m.clone())?;
            feed(&mut follower, now, from, m)?;
        }
    }
}

/// Numbers a message may carry, the extremes included.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![0..4u64, Just(u64::MAX - 1), Just(u64::MAX), any::<u64>()]
}

/// Messages of every kind with arbitrary fields.
fn any_message() -> impl Strategy<Value = RaftMessage> {
    let body = prop_oneof![
        (number(), number())
            .prop_map(|(last_index, last_term)| RaftBody::PreVote { last_index, last_term }),
        any::<bool>().prop_map(|granted| RaftBody::PreVoteResponse { granted }),
        (number(), number(), any::<bool>()).prop_map(|(last_index, last_term, transfer)| {
            RaftBody::Vote { last_index, last_term, transfer }
        }),
        any::<bool>().prop_map(|granted| RaftBody::VoteResponse { granted }),
        (number(), number(), prop::collection::vec((0..4u64, 0..4u64), 0..3), number()).prop_map(
            |(prev_index, prev_term, entries, commit)| {
                let entries = entries.into_iter().map(|(i, t)| wire(i, t)).collect();
                append(prev_index, prev_term, entries, commit)
            }
        ),
        number().prop_map(|index| RaftBody::AppendResponse(AppendResult::Accepted {
            index,
            ack: None
        })),
        (number(), number(), number()).prop_map(|(rejected, hint_index, hint_term)| {
            RaftBody::AppendResponse(AppendResult::Rejected { rejected, hint_index, hint_term })
        }),
        number().prop_map(|commit| RaftBody::Heartbeat { commit }),
        number().prop_map(|last_index| RaftBody::HeartbeatResponse { last_index }),
        (number(), number(), number(), prop::collection::vec(any::<u8>(), 0..8)).prop_map(
            |(index, total, offset, data)| {
                let point = SnapshotPoint { index, term: 1, chain: ChainHash::from_bytes([5; 32]) };
                RaftBody::Snapshot(SnapshotChunk { point, total, offset, data })
            }
        ),
        (number(), number(), any::<bool>()).prop_map(|(index, next_offset, done)| {
            RaftBody::SnapshotResponse { index, next_offset, done }
        }),
        Just(RaftBody::TimeoutNow),
    ];
    (prop_oneof![0..4u64, Just(u64::MAX - 1), Just(u64::MAX)], body)
        .prop_map(|(term, body)| message(term, body))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_messages_never_panic(
        inputs in prop::collection::vec((any_message(), prop::sample::select(vec![1u8, 2, 3, 9])), 1..16)
    ) {
        let (mut leader, mut now) = new_leader(RaftConfig::default());
        let mut follower = follower(RaftConfig::default());
        for (m, from) in inputs {
            now += ms(40);
            feed(&mut leader, now, from, m.clone())?;
            feed(&mut follower, now, from, m)?;
        }
    }
}

// ----- Evidence -----

/// Delivers the messages among `nodes` (test node `k + 1` at position `k`) until none is left.
fn exchange(nodes: &mut [Core], now: Time) {
    for _ in 0..100 {
        let mut moved = false;
        for k in 0..nodes.len() {
            for t in outbox(&mut nodes[k]) {
                if let Some(to) = (0..nodes.len()).find(|j| node_id(*j as u8 + 1) == t.to) {
                    nodes[to].handle_message(now, node_id(k as u8 + 1), t.message);
                    moved = true;
                }
            }
        }
        if !moved {
            return;
        }
    }
    panic!("the nodes do not settle");
}

#[test]
fn evidence_of_a_commit_verifies_and_a_flipped_byte_breaks_it() {
    let mut nodes: Vec<Core> = (1..=3)
        .map(|i| {
            open_node(
                setup(i, three(), RaftConfig::default()),
                &Arc::new(MemoryKv::new()),
                Time::ZERO,
            )
        })
        .collect();
    let t = nodes[0].poll_timeout().unwrap();
    nodes[0].handle_timeout(t);
    exchange(&mut nodes, t);
    assert_eq!(nodes[0].role(), Role::Leader);
    let command = put(3, 9);
    let (index, term) = nodes[0].propose(t, command.clone()).unwrap();
    exchange(&mut nodes, t);
    let membership: Membership = nodes[0].membership().unwrap();
    let entry = entry_bytes(&EntryKind::Command(command));
    let mut evidence = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        assert_eq!(node.commit_index(), index, "node {}", k + 1);
        let e = node.evidence(index).unwrap_or_else(|| panic!("node {} has no evidence", k + 1));
        let certified = e.verify(&membership, &federation()).unwrap();
        assert_eq!((certified.index, certified.term, &certified.entry), (index, term, &entry));
        assert_eq!(certified.chain, node.log().chain_at(index).unwrap().unwrap());
        assert!(certified.signers.len() >= membership.quorum());
        // It proves nothing to another federation.
        assert!(e.verify(&membership, &FederationId::from_name("another-federation")).is_err());
        evidence.push((e, certified));
    }
    // Nothing proves an entry that is not committed.
    let (pending, _) = nodes[0].propose(t, put(4, 4)).unwrap();
    assert_eq!(nodes[0].evidence(pending), None);
    // One byte flipped anywhere: it does not decode, does not verify, or certifies something
    // else.
    for (e, certified) in evidence {
        let bytes = encoding::try_encode(&e).unwrap();
        let mut decoded = 0;
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut flipped = bytes.clone();
                flipped[i] ^= bit;
                if let Ok(e) = encoding::decode_with_limit::<Evidence>(&flipped, 1 << 16) {
                    decoded += 1;
                    assert_ne!(
                        e.verify(&membership, &federation()).ok(),
                        Some(certified.clone()),
                        "byte {i} bit {bit:#x}"
                    );
                }
            }
        }
        assert!(decoded < bytes.len(), "most flips do not even decode ({decoded})");
    }
}
