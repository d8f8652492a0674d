//! A node being fed new commits by one peer is not pushed the same commits by another, and
//! asks no other peer for them; once the feed stops, the others push and it asks again.

use std::time::Duration;

use crate::common::triple;
use llmkg_federation_core::consensus::GroupId;
use llmkg_federation_core::{
    ChangeSet, HostInfo, MemoryKv, NodeId, NodeKeypair, OrgId, Protocol, Time, Timestamp,
};
use llmkg_sync::protocol::{SyncBody, SyncConfig, SyncCore, SyncMessage};
use llmkg_sync::replica::{Replica, ReplicaConfig};

const WALL: i64 = 1_700_000_000_000_000;

fn key(seed: u8) -> NodeKeypair {
    NodeKeypair::from_secret_bytes([seed; 32])
}

fn id(seed: u8) -> NodeId {
    key(seed).node_id()
}

fn config() -> SyncConfig {
    SyncConfig::new(GroupId::from_bytes([3; 32]), Timestamp::from_micros(WALL))
}

/// Node `seed` of the set {1, 2, 3}, holding `commits`.
fn node(seed: u8, commits: &[Vec<u8>]) -> SyncCore<MemoryKv> {
    let mut replica = Replica::open(
        MemoryKv::new(),
        key(seed),
        OrgId::new("o").unwrap(),
        ReplicaConfig::default(),
    )
    .unwrap();
    for c in commits {
        replica.receive(Timestamp::from_micros(WALL), c).unwrap();
    }
    let peers: Vec<NodeId> = [1, 2, 3].into_iter().filter(|s| *s != seed).map(id).collect();
    let mut core = SyncCore::new(replica, config(), peers, u64::from(seed));
    core.handle_start(Time::ZERO, HostInfo::new(16 << 20));
    // Start-up messages (round summaries) are not part of the scenario.
    while core.poll_transmit().is_some() {}
    core
}

fn sent(core: &mut SyncCore<MemoryKv>) -> Vec<(NodeId, SyncBody)> {
    std::iter::from_fn(|| core.poll_transmit()).map(|t| (t.to, t.message.body)).collect()
}

fn summary_of(core: &SyncCore<MemoryKv>, reply: bool) -> SyncMessage {
    let mut heads = core.replica().heads();
    heads.sort();
    let mut state = core.replica().state().clone();
    SyncMessage {
        group: config().group,
        body: SyncBody::Summary {
            heads,
            truncated: false,
            root: state.state_root(),
            commits: core.replica().len() as u64,
            reply,
            fed_by: None,
        },
    }
}

#[test]
fn a_fed_node_is_left_to_its_feeder() {
    // Commits c1 and c2 by node 9 (outside the set); nodes 1 and 2 hold both.
    let mut writer =
        Replica::open(MemoryKv::new(), key(9), OrgId::new("o").unwrap(), ReplicaConfig::default())
            .unwrap();
    let wall = Timestamp::from_micros(WALL);
    let c1 = writer.write(wall, ChangeSet::adding([triple(1)]), "c1").unwrap().encode();
    let c2 = writer.write(wall, ChangeSet::adding([triple(2)]), "c2").unwrap().encode();
    let mut feeder = node(1, &[c1.clone(), c2.clone()]);
    let mut other = node(2, &[c1.clone(), c2.clone()]);
    let mut fed = node(3, &[]);
    let t = Time::ZERO + Duration::from_millis(10);

    // Node 1's heads are known to nodes 2 and 3 (its summary reached both).
    fed.handle_message(t, id(1), summary_of(&feeder, false));
    other.handle_message(t, id(1), summary_of(&feeder, false));
    let _ = (sent(&mut fed), sent(&mut other));
    // Node 1 streams c1 to node 3: node 1 is its feeder.
    let batch = SyncMessage {
        group: config().group,
        body: SyncBody::Batch { stream: 1, seq: 0, commits: vec![c1.clone()] },
    };
    fed.handle_message(t, id(1), batch);
    assert_eq!(fed.feeder(), Some(id(1)));
    let _ = sent(&mut fed);

    // Node 2 announces its heads: node 3 answers with a summary naming its feeder, and asks
    // node 2 for nothing.
    fed.handle_message(t, id(2), summary_of(&other, true));
    let out = sent(&mut fed);
    assert!(out.iter().all(|(_, b)| !matches!(b, SyncBody::Need { .. } | SyncBody::Want { .. })));
    let reply = out
        .into_iter()
        .find_map(|(to, b)| (to == id(2) && matches!(b, SyncBody::Summary { .. })).then_some(b))
        .expect("node 3 answers node 2's summary");
    assert!(matches!(&reply, SyncBody::Summary { fed_by: Some(f), .. } if *f == id(1)));

    // Node 2, which could push c2, leaves it to node 1, which holds it.
    let reply = SyncMessage { group: config().group, body: reply };
    other.handle_message(t, id(3), reply.clone());
    assert!(sent(&mut other).iter().all(|(_, b)| !matches!(b, SyncBody::Batch { .. })));
    assert_eq!(other.metrics().deferred_to_feeder, 1);

    // A commit the feeder is not known to hold is pushed all the same.
    let mut writer2 = node(2, &[c1.clone(), c2.clone()]);
    writer2.handle_message(t, id(1), summary_of(&feeder, false));
    writer2.write(t, ChangeSet::adding([triple(3)]), "c3").unwrap();
    let _ = sent(&mut writer2);
    writer2.handle_message(t, id(3), reply.clone());
    assert!(
        sent(&mut writer2)
            .iter()
            .any(|(to, b)| *to == id(3) && matches!(b, SyncBody::Batch { .. }))
    );

    // The feeder itself is not held back by its own name.
    feeder.handle_message(t, id(3), reply);
    assert!(
        sent(&mut feeder).iter().any(|(to, b)| *to == id(3) && matches!(b, SyncBody::Batch { .. }))
    );

    // Once the feed has been quiet for half the stream timeout, node 3 has no feeder: its
    // summary names none, and node 2 pushes what it lacks.
    let later = t + config().stream_timeout / 2;
    fed.handle_timeout(later);
    assert_eq!(fed.feeder(), None);
    let _ = sent(&mut fed);
    other.handle_timeout(later);
    let _ = sent(&mut other);
    other.handle_message(later, id(3), summary_of(&fed, false));
    assert!(
        sent(&mut other).iter().any(|(to, b)| *to == id(3) && matches!(b, SyncBody::Batch { .. }))
    );
}

#[test]
fn a_node_lacking_commits_claims_the_first_peer_that_shows_them() {
    let mut writer =
        Replica::open(MemoryKv::new(), key(9), OrgId::new("o").unwrap(), ReplicaConfig::default())
            .unwrap();
    let c1 = writer
        .write(Timestamp::from_micros(WALL), ChangeSet::adding([triple(1)]), "c1")
        .unwrap()
        .encode();
    let peer1 = node(1, std::slice::from_ref(&c1));
    let peer2 = node(2, std::slice::from_ref(&c1));
    let mut lacking = node(3, &[]);
    let t = Time::ZERO + Duration::from_millis(10);
    // The first summary showing commits it lacks makes that peer its feeder; a second
    // peer's summary then gets a reply naming the first, and no request.
    lacking.handle_message(t, id(1), summary_of(&peer1, true));
    assert_eq!(lacking.feeder(), Some(id(1)));
    let _ = sent(&mut lacking);
    lacking.handle_message(t, id(2), summary_of(&peer2, true));
    let out = sent(&mut lacking);
    assert!(out.iter().all(|(_, b)| !matches!(b, SyncBody::Need { .. })));
    assert!(out.iter().any(|(to, b)| *to == id(2)
        && matches!(b, SyncBody::Summary { fed_by: Some(f), .. } if *f == id(1))));
    // A peer showing a head the feeder did not is asked all the same.
    let mut peer3 = node(1, std::slice::from_ref(&c1));
    peer3.write(t, ChangeSet::adding([triple(5)]), "c5").unwrap();
    lacking.handle_message(t, id(2), summary_of(&peer3, true));
    assert!(
        sent(&mut lacking).iter().any(|(to, b)| *to == id(2) && matches!(b, SyncBody::Need { .. }))
    );
}
