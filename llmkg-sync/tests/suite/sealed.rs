#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! A sealed replica set (`SyncCore::with_seal`): commits travel sealed and are opened on
//! arrival; a replica that holds no key for a commit's epoch refuses it and does not change;
//! nothing is sent while the current epoch has not arrived; no triple comparison is answered.
//! The seal here is a stand-in with the same contract as the governance one (which is tested
//! with real keys in `llmkg-governance`): it only has to be reversible and keyed by epoch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use llmkg_federation_core::consensus::GroupId;
use llmkg_federation_core::security::{EnvelopeSeal, SealError};
use llmkg_federation_core::{
    ChangeSet, HostInfo, MemoryKv, NodeId, NodeKeypair, OrgId, Protocol, Term, Time, Timestamp,
    Triple, TripleId,
};
use llmkg_sync::protocol::{SyncBody, SyncConfig, SyncCore, SyncEvent, SyncMessage};
use llmkg_sync::replica::{ReceiveError, Replica, ReplicaConfig};

const WALL: i64 = 1_700_000_000_000_000;
const SECRET: &[u8] = b"only-the-members-read-this";

/// Epoch byte, then the envelope XORed with the epoch's key byte.
struct ToySeal {
    epoch: u8,
    ready: AtomicBool,
}

impl ToySeal {
    fn new(epoch: u8, ready: bool) -> Arc<Self> {
        Arc::new(Self { epoch, ready: AtomicBool::new(ready) })
    }
    fn key(epoch: u8) -> u8 {
        epoch.wrapping_mul(37) | 1
    }
}

impl EnvelopeSeal for ToySeal {
    fn seal(&self, envelope: &[u8]) -> Result<Vec<u8>, SealError> {
        if !self.ready.load(Ordering::SeqCst) {
            return Err(SealError::EpochPending);
        }
        let k = Self::key(self.epoch);
        Ok(std::iter::once(self.epoch).chain(envelope.iter().map(|b| b ^ k)).collect())
    }

    fn open(&self, sealed: &[u8], _now: Timestamp) -> Result<Vec<u8>, SealError> {
        let (&epoch, body) = sealed.split_first().ok_or(SealError::Unreadable("empty".into()))?;
        if epoch != self.epoch {
            return Err(SealError::NoKey { epoch: u64::from(epoch) });
        }
        Ok(body.iter().map(|b| b ^ Self::key(epoch)).collect())
    }
}

fn key(i: u8) -> NodeKeypair {
    NodeKeypair::from_secret_bytes([i + 1; 32])
}

fn core(i: u8, peers: &[u8], seal: Arc<ToySeal>) -> SyncCore<MemoryKv> {
    let replica = Replica::open(
        MemoryKv::new(),
        key(i),
        OrgId::new("org").unwrap(),
        ReplicaConfig::default(),
    )
    .unwrap();
    let config = SyncConfig::new(GroupId::from_bytes([3; 32]), Timestamp::from_micros(WALL));
    let mut c =
        SyncCore::new(replica, config, peers.iter().map(|p| key(*p).node_id()), u64::from(i))
            .with_seal(seal);
    c.handle_start(Time::ZERO, HostInfo::new(16 << 20));
    c
}

fn secret_triple() -> Triple {
    Triple::new(
        Term::iri("https://example.org/s").unwrap(),
        Term::iri("https://example.org/p").unwrap(),
        Term::string(String::from_utf8(SECRET.to_vec()).unwrap()).unwrap(),
    )
    .unwrap()
}

/// Delivers every message until none is left; returns the batches' commit bytes seen on the
/// wire and each core's events.
fn exchange(cores: &mut [SyncCore<MemoryKv>], now: Time) -> (Vec<Vec<u8>>, Vec<Vec<SyncEvent>>) {
    let ids: Vec<NodeId> = cores.iter().map(|c| c.replica().node_id()).collect();
    let mut wire = Vec::new();
    let mut events: Vec<Vec<SyncEvent>> = cores.iter().map(|_| Vec::new()).collect();
    loop {
        let mut moved = false;
        for from in 0..cores.len() {
            while let Some(t) = cores[from].poll_transmit() {
                moved = true;
                if let SyncBody::Batch { commits, .. } = &t.message.body {
                    wire.extend(commits.iter().cloned());
                }
                if let Some(to) = ids.iter().position(|id| *id == t.to) {
                    cores[to].handle_message(now, ids[from], t.message);
                }
            }
        }
        for (i, c) in cores.iter_mut().enumerate() {
            while let Some(e) = c.poll_event() {
                events[i].push(e);
            }
        }
        if !moved {
            return (wire, events);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn members_read_sealed_commits_and_a_replica_without_the_epoch_refuses_them() {
    // 0 and 1 hold epoch 2; 2 left after epoch 1 and holds only that one.
    let mut cores = vec![
        core(0, &[1, 2], ToySeal::new(2, true)),
        core(1, &[0, 2], ToySeal::new(2, true)),
        core(2, &[0, 1], ToySeal::new(1, true)),
    ];
    let before = cores[2].replica_mut().state_root();
    let now = Time::ZERO + Duration::from_millis(1);
    cores[0].write(now, ChangeSet::adding([secret_triple()]), "w").unwrap();
    cores[0].sync_now(now, &[]);
    let (wire, events) = exchange(&mut cores, now);

    assert!(!wire.is_empty(), "no commit travelled");
    assert!(wire.iter().all(|c| !contains(c, SECRET)), "a commit travelled in the clear");
    assert_eq!(cores[1].replica().heads(), cores[0].replica().heads(), "the member caught up");
    assert!(cores[0].metrics().commits_sealed > 0);
    let refused: Vec<&ReceiveError> = events[2]
        .iter()
        .filter_map(|e| match e {
            SyncEvent::Refused { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    assert!(!refused.is_empty(), "the replica without the key did not refuse");
    assert!(
        refused.iter().all(|e| matches!(e, ReceiveError::Sealed(SealError::NoKey { epoch: 2 }))),
        "{refused:?}"
    );
    assert_eq!(cores[2].replica_mut().state_root(), before, "the refused commit changed it");
    assert!(cores[2].replica().is_empty());

    // What a member ships now is what travelled: sealed.
    let id = cores[0].replica().heads()[0];
    let shipped = cores[0].shipped(&id).unwrap().unwrap();
    assert!(!contains(&shipped, SECRET));
    assert_eq!(shipped[0], 2, "sealed under the current epoch");
}

#[test]
fn nothing_is_sent_until_the_current_epoch_arrives() {
    let pending = ToySeal::new(2, false);
    let mut cores = vec![core(0, &[1], Arc::clone(&pending)), core(1, &[0], ToySeal::new(2, true))];
    let mut now = Time::ZERO + Duration::from_millis(1);
    cores[0].write(now, ChangeSet::adding([secret_triple()]), "w").unwrap();
    cores[0].sync_now(now, &[]);
    let (wire, _) = exchange(&mut cores, now);
    assert!(wire.is_empty(), "a commit was sent without its epoch's key");
    assert!(cores[0].metrics().seal_waits > 0);
    assert!(cores[1].replica().is_empty());

    // The epoch arrives; the rounds that follow ship the commit.
    pending.ready.store(true, Ordering::SeqCst);
    for _ in 0..50 {
        if cores[1].replica().heads() == cores[0].replica().heads() {
            break;
        }
        now = [cores[0].poll_timeout(), cores[1].poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap()
            .max(now);
        for c in cores.iter_mut() {
            c.handle_timeout(now);
        }
        exchange(&mut cores, now);
    }
    assert_eq!(cores[1].replica().heads(), cores[0].replica().heads(), "the commit never left");
}

#[test]
fn a_sealed_replica_set_answers_no_triple_fetch() {
    let mut c = core(0, &[1], ToySeal::new(1, true));
    let now = Time::ZERO + Duration::from_millis(1);
    c.write(now, ChangeSet::adding([secret_triple()]), "w").unwrap();
    while c.poll_transmit().is_some() {}
    let id = TripleId::of(&secret_triple());
    let fetch = SyncMessage {
        group: GroupId::from_bytes([3; 32]),
        body: SyncBody::FetchTriples { session: 9, ids: vec![id] },
    };
    c.handle_message(now, key(1).node_id(), fetch);
    while let Some(t) = c.poll_transmit() {
        assert!(
            !matches!(t.message.body, SyncBody::Triples { .. }),
            "triples were sent in the clear"
        );
    }
    assert!(c.metrics().messages_dropped > 0);
}
