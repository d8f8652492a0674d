#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! A hostile peer at the protocol level: forged, unparented, oversized and endlessly
//! repeated commits, malformed summaries and requests. Each gets a typed refusal, the
//! replica does not change, and nothing the peer sends grows our memory past a bound.

use std::time::Duration;

use llmkg_federation_core::consensus::GroupId;
use llmkg_federation_core::{
    ChangeSet, Commit, CommitId, GraphState, HostInfo, MemoryKv, NodeId, NodeKeypair, OrgId,
    Protocol, SignedCommit, StateRoot, Term, Time, Timestamp, Transmit, Triple,
};
use llmkg_sync::protocol::{
    MAX_BATCH_COMMITS, MAX_SUMMARY_HEADS, MAX_WANT, ReconcileTarget, SyncBody, SyncConfig,
    SyncCore, SyncEvent, SyncMessage,
};
use llmkg_sync::replica::{ReceiveError, Replica, ReplicaConfig, RuleViolation};
use llmkg_sync::riblt;

const WALL: i64 = 1_700_000_000_000_000;

fn group() -> GroupId {
    GroupId::from_bytes([1; 32])
}

fn triple(i: u32) -> Triple {
    Triple::new(
        Term::iri(format!("https://example.org/s{i}")).unwrap(),
        Term::iri("https://example.org/p").unwrap(),
        Term::string(format!("{i}")).unwrap(),
    )
    .unwrap()
}

fn core(config: ReplicaConfig) -> SyncCore<MemoryKv> {
    let replica = Replica::open(
        MemoryKv::new(),
        NodeKeypair::from_secret_bytes([1; 32]),
        OrgId::new("us").unwrap(),
        config,
    )
    .unwrap();
    let mut c = SyncCore::new(
        replica,
        SyncConfig::new(group(), Timestamp::from_micros(WALL)),
        [attacker().node_id()],
        1,
    );
    c.handle_start(Time::ZERO, HostInfo::new(16 << 20));
    c
}

fn attacker() -> NodeKeypair {
    NodeKeypair::from_secret_bytes([66; 32])
}

fn batch(commits: Vec<Vec<u8>>) -> SyncMessage {
    SyncMessage { group: group(), body: SyncBody::Batch { stream: 1, seq: 0, commits } }
}

/// A correctly signed commit by the attacker with these parents and changes, claiming
/// `root` (or the honest root from an empty past when `None`).
fn commit(
    parents: Vec<CommitId>,
    changes: ChangeSet,
    ts: i64,
    root: Option<StateRoot>,
) -> SignedCommit {
    let root = root.unwrap_or_else(|| {
        let mut s = GraphState::new();
        s.apply(&changes).unwrap();
        s.state_root()
    });
    let c = Commit::new(
        parents,
        changes,
        attacker().node_id(),
        OrgId::new("them").unwrap(),
        Timestamp::from_micros(ts),
        String::new(),
        root,
    )
    .unwrap();
    SignedCommit::sign(&attacker(), c).unwrap()
}

fn drain(c: &mut SyncCore<MemoryKv>) -> (Vec<Transmit<SyncMessage>>, Vec<SyncEvent>) {
    let mut out = Vec::new();
    while let Some(t) = c.poll_transmit() {
        out.push(t);
    }
    let mut events = Vec::new();
    while let Some(e) = c.poll_event() {
        events.push(e);
    }
    (out, events)
}

fn snapshot(c: &mut SyncCore<MemoryKv>) -> (StateRoot, Vec<CommitId>, usize) {
    let r = c.replica_mut();
    (r.state_root(), r.heads(), r.len())
}

fn refusals(events: &[SyncEvent]) -> Vec<&ReceiveError> {
    events
        .iter()
        .filter_map(|e| match e {
            SyncEvent::Refused { error, .. } => Some(error),
            _ => None,
        })
        .collect()
}

#[test]
fn forged_and_lying_commits_are_refused_and_change_nothing() {
    let mut c = core(ReplicaConfig::default());
    let from = attacker().node_id();
    let before = snapshot(&mut c);
    let good = commit(vec![], ChangeSet::adding([triple(1)]), WALL, None);
    // A flipped bit in the signature; random bytes; a commit whose state root lies; a
    // timestamp an hour ahead of our clock.
    let mut forged = good.as_bytes().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let lying =
        commit(vec![], ChangeSet::adding([triple(2)]), WALL, Some(GraphState::new().state_root()));
    let ahead = commit(vec![], ChangeSet::adding([triple(3)]), WALL + 3_600_000_000, None);
    c.handle_message(
        Time::ZERO,
        from,
        batch(vec![forged, vec![0xff; 100], lying.encode(), ahead.encode()]),
    );
    let (out, events) = drain(&mut c);
    let errors = refusals(&events);
    assert_eq!(errors.len(), 4, "{events:?}");
    assert!(matches!(errors[0], ReceiveError::Unverifiable(_)));
    assert!(matches!(errors[1], ReceiveError::Unverifiable(_)));
    assert!(matches!(
        errors[2],
        ReceiveError::Rule { violation: RuleViolation::StateRootMismatch { .. }, .. }
    ));
    assert!(matches!(errors[3], ReceiveError::Rule { violation: RuleViolation::Clock(_), .. }));
    assert_eq!(snapshot(&mut c), before);
    // The batch is still acknowledged (the stream goes on), and nothing else is said.
    assert!(matches!(
        out.as_slice(),
        [Transmit { message: SyncMessage { body: SyncBody::Ack { .. }, .. }, .. }]
    ));
    assert_eq!(c.metrics().commits_refused, 4);
    // The honest one is accepted.
    c.handle_message(Time::ZERO, from, batch(vec![good.encode()]));
    let (_, events) = drain(&mut c);
    assert!(matches!(events.as_slice(), [SyncEvent::Applied { .. }]));
}

#[test]
fn unparented_floods_stop_at_the_bound_and_repeats_cost_nothing() {
    let mut config = ReplicaConfig::default();
    config.max_pending = 32;
    let mut c = core(config);
    let from = attacker().node_id();
    // 200 commits whose parents we will never see.
    let ghost = CommitId::from_bytes([9; 32]);
    let flood: Vec<Vec<u8>> = (0..200)
        .map(|i| commit(vec![ghost], ChangeSet::adding([triple(i)]), WALL, None).encode())
        .collect();
    for chunk in flood.chunks(50) {
        c.handle_message(Time::ZERO, from, batch(chunk.to_vec()));
    }
    let (out, events) = drain(&mut c);
    assert_eq!(c.replica().pending(), 32);
    let full =
        refusals(&events).iter().filter(|e| matches!(e, ReceiveError::PendingFull { .. })).count();
    assert_eq!(full, 200 - 32);
    // We ask the sender for the missing parent, once per batch, naming at most MAX_WANT ids.
    assert!(
        out.iter()
            .any(|t| matches!(&t.message.body, SyncBody::Want { ids } if ids == &vec![ghost]))
    );
    // The same commits again and again: recognized by id, nothing grows.
    let before = snapshot(&mut c);
    for _ in 0..20 {
        c.handle_message(Time::ZERO, from, batch(flood[..32].to_vec()));
    }
    drain(&mut c);
    assert_eq!(c.replica().pending(), 32);
    assert_eq!(snapshot(&mut c), before);
    assert!(c.replica().metrics().duplicates >= 20 * 32);
    // The room does not stay blocked: a minute later the flood is let go to make room.
    let later = Time::from_micros(61_000_000);
    let honest = commit(
        vec![CommitId::from_bytes([8; 32])],
        ChangeSet::adding([triple(500)]),
        WALL + 61_000_000,
        None,
    );
    c.handle_message(later, from, batch(vec![honest.encode()]));
    let (_, events) = drain(&mut c);
    assert!(refusals(&events).is_empty(), "{events:?}");
    assert_eq!(c.replica().pending(), 1);
    assert_eq!(c.replica().metrics().expired, 32);
    assert_eq!(snapshot(&mut c), before);
}

#[test]
fn oversized_or_malformed_messages_are_dropped_with_a_reason() {
    let mut config = ReplicaConfig::default();
    config.max_commit_bytes = 4096;
    let mut c = core(config);
    let from = attacker().node_id();
    let before = snapshot(&mut c);
    // One commit larger than the replica accepts.
    let big: Vec<Triple> = (0..200).map(triple).collect();
    let big = commit(vec![], ChangeSet::adding(big), WALL, None);
    assert!(big.as_bytes().len() > 4096);
    c.handle_message(Time::ZERO, from, batch(vec![big.encode()]));
    let (_, events) = drain(&mut c);
    assert!(matches!(refusals(&events).as_slice(), [ReceiveError::TooLarge { .. }]));
    // Too many commits in one batch, too many heads, unsorted heads, too many wanted ids.
    let many = vec![vec![0u8; 1]; MAX_BATCH_COMMITS + 1];
    c.handle_message(Time::ZERO, from, batch(many));
    let heads: Vec<CommitId> = (0..=MAX_SUMMARY_HEADS as u32)
        .map(|i| CommitId::from_bytes([(i % 251) as u8; 32]))
        .collect();
    let summary = |heads: Vec<CommitId>| SyncMessage {
        group: group(),
        body: SyncBody::Summary {
            heads,
            truncated: false,
            root: GraphState::new().state_root(),
            commits: 0,
            reply: true,
            fed_by: None,
        },
    };
    c.handle_message(Time::ZERO, from, summary(heads));
    c.handle_message(
        Time::ZERO,
        from,
        summary(vec![CommitId::from_bytes([2; 32]), CommitId::from_bytes([1; 32])]),
    );
    let want = SyncMessage {
        group: group(),
        body: SyncBody::Want { ids: vec![CommitId::from_bytes([1; 32]); MAX_WANT + 1] },
    };
    c.handle_message(Time::ZERO, from, want);
    let (out, events) = drain(&mut c);
    let malformed = events.iter().filter(|e| matches!(e, SyncEvent::Malformed { .. })).count();
    assert_eq!(malformed, 4, "{events:?}");
    assert!(out.is_empty(), "{out:?}");
    // Another replica set's messages are dropped unread.
    let other =
        SyncMessage { group: GroupId::from_bytes([2; 32]), body: SyncBody::Want { ids: vec![] } };
    c.handle_message(Time::ZERO, from, other);
    assert_eq!(c.metrics().messages_dropped, 5);
    // Acks for streams that do not exist are ignored.
    c.handle_message(
        Time::ZERO,
        from,
        SyncMessage { group: group(), body: SyncBody::Ack { stream: 9, seq: 9 } },
    );
    assert!(drain(&mut c).0.is_empty());
    assert_eq!(snapshot(&mut c), before);
}

#[test]
fn a_stream_to_a_silent_peer_is_dropped() {
    let mut c = core(ReplicaConfig::default());
    let peer: NodeId = attacker().node_id();
    c.handle_peer(Time::ZERO, peer, llmkg_federation_core::LinkState::Up);
    for i in 0..20 {
        c.write(Time::ZERO, ChangeSet::adding([triple(i)]), "w").unwrap();
    }
    drain(&mut c);
    // The peer says it holds nothing: we stream, but it never acknowledges.
    let need = SyncMessage { group: group(), body: SyncBody::Need { vv: Default::default() } };
    c.handle_message(Time::ZERO, peer, need);
    let (out, _) = drain(&mut c);
    let batches = out.iter().filter(|t| matches!(t.message.body, SyncBody::Batch { .. })).count();
    assert!(batches >= 1);
    let mut now = Time::ZERO;
    for _ in 0..40 {
        now += Duration::from_millis(250);
        c.handle_timeout(now);
        drain(&mut c);
    }
    assert!(c.metrics().streams_dropped >= 1);
}

fn reconcile(session: u64, target: ReconcileTarget, step: riblt::Message) -> SyncMessage {
    SyncMessage { group: group(), body: SyncBody::Reconcile { session, target, step } }
}

#[test]
fn hostile_reconciliation_steps_are_bounded_and_refused() {
    let mut c = core(ReplicaConfig::default());
    let from = attacker().node_id();
    for i in 0..10 {
        c.write(Time::ZERO, ChangeSet::adding([triple(i)]), "w").unwrap();
    }
    drain(&mut c);
    let before = snapshot(&mut c);
    // Symbols nobody asked for, and steps of sessions that do not exist: ignored.
    let junk =
        riblt::Message::Symbols { estimate: 5, symbols: vec![riblt::CodedSymbol::EMPTY; 10] };
    c.handle_message(Time::ZERO, from, reconcile(1, ReconcileTarget::Commits, junk.clone()));
    c.handle_message(
        Time::ZERO,
        from,
        reconcile(1, ReconcileTarget::Triples, riblt::Message::More { count: 5 }),
    );
    c.handle_message(
        Time::ZERO,
        from,
        reconcile(1, ReconcileTarget::Commits, riblt::Message::Done),
    );
    assert!(drain(&mut c).0.is_empty());
    // An opening with a sketch of the wrong size is malformed.
    let bad = riblt::Message::Open {
        salt: 1,
        sketch: riblt::Sketch { set_size: 3, buckets: vec![1, 2, 3] },
    };
    c.handle_message(Time::ZERO, from, reconcile(2, ReconcileTarget::Triples, bad));
    let (out, events) = drain(&mut c);
    assert!(out.is_empty());
    assert!(matches!(events.as_slice(), [SyncEvent::Malformed { .. }]));
    // A valid opening is answered with symbols, bounded by the frame; asking again and
    // again for more stops at the session limit, and opening again replaces the session.
    let open = riblt::Requester::new(9, Vec::new(), riblt::DecodeLimits::default()).open();
    c.handle_message(Time::ZERO, from, reconcile(3, ReconcileTarget::Commits, open.clone()));
    let (out, _) = drain(&mut c);
    assert!(matches!(
        &out[..],
        [Transmit {
            message: SyncMessage {
                body: SyncBody::Reconcile { step: riblt::Message::Symbols { .. }, .. },
                ..
            },
            ..
        }]
    ));
    let mut symbols = 0usize;
    let mut malformed = 0;
    for _ in 0..100 {
        c.handle_message(
            Time::ZERO,
            from,
            reconcile(3, ReconcileTarget::Commits, riblt::Message::More { count: u64::MAX }),
        );
        let (out, events) = drain(&mut c);
        for t in &out {
            if let SyncBody::Reconcile {
                step: riblt::Message::Symbols { symbols: s, .. }, ..
            } = &t.message.body
            {
                assert!(s.len() * 37 <= (16 << 20) / 2 + 37, "one reply stays within half a frame");
                symbols += s.len();
            }
        }
        malformed += events.iter().filter(|e| matches!(e, SyncEvent::Malformed { .. })).count();
        if malformed > 0 {
            break;
        }
    }
    assert!(malformed == 1, "the session ends at its limit");
    assert!(symbols <= riblt::DecodeLimits::default().max_symbols);
    c.handle_message(Time::ZERO, from, reconcile(4, ReconcileTarget::Commits, open));
    assert_eq!(drain(&mut c).0.len(), 1);
    assert_eq!(snapshot(&mut c), before);
}

#[test]
fn a_peer_cannot_slip_unasked_triples_into_a_comparison() {
    let mut c = core(ReplicaConfig::default());
    let peer = attacker().node_id();
    c.write(Time::ZERO, ChangeSet::adding([triple(1), triple(2)]), "w").unwrap();
    drain(&mut c);
    c.compare_with(Time::ZERO, peer);
    let (out, _) = drain(&mut c);
    let (session, open) = match &out[..] {
        [
            Transmit {
                message: SyncMessage { body: SyncBody::Reconcile { session, step, .. }, .. },
                ..
            },
        ] => (*session, step.clone()),
        other => panic!("{other:?}"),
    };
    // The honest peer holds triple 1 and triple 3: it answers with its symbols.
    let theirs = [triple(1), triple(3)];
    let (_, reply) =
        riblt::Responder::accept(theirs.iter().map(|t| *t.id().as_bytes()), &open, 1 << 20)
            .unwrap();
    c.handle_message(Time::ZERO, peer, reconcile(session, ReconcileTarget::Triples, reply));
    let (out, _) = drain(&mut c);
    let asked = out
        .iter()
        .find_map(|t| match &t.message.body {
            SyncBody::FetchTriples { ids, .. } => Some(ids.clone()),
            _ => None,
        })
        .expect("asks for the triples only the peer has");
    assert_eq!(asked, vec![triple(3).id()]);
    // More triples than asked for: malformed, dropped, the fetch still waits.
    let answer = SyncMessage {
        group: group(),
        body: SyncBody::Triples { session, triples: vec![triple(3), triple(99)] },
    };
    c.handle_message(Time::ZERO, peer, answer);
    let (_, events) = drain(&mut c);
    assert!(matches!(events.as_slice(), [SyncEvent::Malformed { .. }]), "{events:?}");
    // One triple, but not the one asked for: dropped; the comparison ends without it.
    let answer = SyncMessage {
        group: group(),
        body: SyncBody::Triples { session, triples: vec![triple(99)] },
    };
    c.handle_message(Time::ZERO, peer, answer);
    let (_, events) = drain(&mut c);
    let (here, there) = events
        .iter()
        .find_map(|e| match e {
            SyncEvent::StateDiff { only_here, only_there, .. } => {
                Some((only_here.clone(), only_there.clone()))
            }
            _ => None,
        })
        .expect("the comparison ends");
    assert_eq!(here, vec![triple(2)]);
    assert!(there.is_empty(), "an unasked triple is dropped: {there:?}");
}
