//! Catching up from a snapshot, and deepening a replica that started from one.
//!
//! ```text
//!  joining node J (empty replica)                      provider P (any peer)
//!    ── SnapshotFetch { session, part: None } ─────────►  P: Replica::snapshot, split in parts
//!    ◄── SnapshotHead { session, header or None } ──────  (None: no head qualifies; J asks
//!                                                          another peer, or syncs history)
//!    ── SnapshotFetch { session, part: Some(i) } ──────►  at most `window` parts in flight
//!    ◄── SnapshotPart { session, part: i, data } ───────
//!  J: Replica::install_snapshot (verified: the head's signature, its signed state root),
//!     then ordinary anti-entropy brings the commits after the head.
//! ```
//!
//! Until its snapshot is installed, a joining node neither asks for nor applies commits:
//! a replica is a snapshot or a history, never half of each. When a commit concurrent with
//! the base arrives ([`ReceiveError::BeforeBase`]), the node asks peers for the base's
//! commits ([`SyncBody::Want`], at most [`MAX_WANT`] per message) and deepens the replica
//! once it has them all. In a sealed replica set the head and every part travel sealed, like
//! commits. Everything a peer controls is bounded: the declared sizes by
//! [`SyncConfig::max_snapshot_triples`] and [`SyncConfig::max_snapshot_commits`], each part
//! by the frame, the number of snapshots a node serves at once by [`MAX_SERVING`].
//!
//! [`ReceiveError::BeforeBase`]: crate::replica::ReceiveError::BeforeBase
//! [`SyncConfig::max_snapshot_triples`]: super::SyncConfig::max_snapshot_triples
//! [`SyncConfig::max_snapshot_commits`]: super::SyncConfig::max_snapshot_commits

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use llmkg_federation_core::kv::KvStore;
use llmkg_federation_core::snapshot::{Snapshot, SnapshotManifest, SnapshotReceiver};
use llmkg_federation_core::{CommitId, NodeId, SignedCommit, Time};
use rand::RngExt;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use super::{MAX_WANT, SyncBody, SyncCore, SyncEvent};
use crate::replica::{BaseSnapshot, SnapshotError};
use crate::vv::VersionVector;

/// Most snapshots a node keeps ready for peers at once; a further request is answered with
/// none (the asker tries another peer).
pub const MAX_SERVING: usize = 2;

/// How many times a joining node asks every peer up for a snapshot before it syncs the whole
/// history instead.
pub(super) const JOIN_PASSES: u32 = 3;

/// How many snapshots a joining node lets go because they could not be taken yet (see
/// `Joining::waits`) before it syncs the whole history instead.
const MAX_WAITS: u32 = 40;

/// A snapshot's description, sent before its parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The head's envelope (sealed in a sealed replica set).
    pub head: Vec<u8>,
    /// Per author, its commits in the head's past.
    pub vv: Vec<(NodeId, u64)>,
    /// The head's generation at the provider.
    pub generation: u64,
    /// How many commit ids of the base the first `id_parts` parts carry.
    pub ids: u64,
    /// How many parts carry ids; the others are the state's chunks, in the manifest's order.
    pub id_parts: u32,
    /// The state's [`SnapshotManifest`], encoded: its root, count and cut.
    pub manifest: Vec<u8>,
}

/// A snapshot kept ready for one peer: its header and its parts, encoded (and sealed).
pub(super) struct Serving {
    session: u64,
    header: SnapshotHeader,
    parts: Vec<Vec<u8>>,
    made_at: Time,
    last_used: Time,
}

/// What is known of the snapshot being fetched.
struct Fetching {
    header: SnapshotHeader,
    /// Its parts: id parts, then one per cut entry.
    parts: u32,
    ids: BTreeMap<u32, Vec<CommitId>>,
    chunks: SnapshotReceiver,
    /// Parts received (of either kind).
    received: HashSet<u32>,
    /// The next part to ask for.
    next: u32,
}

/// A snapshot being fetched.
pub(super) struct Joining {
    /// The peer asked, the session, and when it last answered.
    asked: Option<(NodeId, u64, Time)>,
    /// Peers that had no snapshot, or whose snapshot was refused.
    tried: HashSet<NodeId>,
    fetching: Option<Box<Fetching>>,
    /// Times every peer up was asked without success.
    passes: u32,
    /// Snapshots that could not be taken yet: sealed under an epoch whose key has not arrived
    /// here, or refused by the host's policy (whose registry may still be catching up).
    waits: u32,
}

impl Joining {
    pub(super) fn new() -> Self {
        Self { asked: None, tried: HashSet::new(), fetching: None, passes: 0, waits: 0 }
    }

    fn reset(&mut self) {
        self.asked = None;
        self.fetching = None;
    }
}

/// The base's commits being gathered to deepen the replica.
pub(super) struct Deepening {
    missing: HashSet<CommitId>,
    got: HashMap<CommitId, Vec<u8>>,
    asked_at: Time,
}

impl<K: KvStore> SyncCore<K> {
    /// Makes this core catch up from a snapshot when its replica holds nothing: it asks a
    /// peer for one before any commit (see [`catchup`](self)), and falls back to the whole
    /// history when no peer has one.
    #[must_use]
    pub fn joining(mut self) -> Self {
        if self.replica.is_empty() {
            self.joining = Some(Joining::new());
        }
        self
    }

    /// True while the core waits for its snapshot.
    pub fn is_joining(&self) -> bool {
        self.joining.is_some()
    }

    /// What the peers other than `asker` were last known to hold: the version vectors of
    /// their reported heads (those held here), which a snapshot's head must lie below. A
    /// peer that reported no head holds nothing to write after, and bounds nothing.
    fn stable_bounds(&self, asker: NodeId) -> Vec<VersionVector> {
        self.peers
            .iter()
            .filter(|(id, _)| **id != asker)
            .filter_map(|(_, p)| p.heads.as_ref())
            .filter(|(heads, _, _)| !heads.is_empty())
            .map(|(heads, _, _)| self.replica.version_vector_of(heads))
            .collect()
    }

    pub(super) fn on_snapshot_fetch(&mut self, from: NodeId, session: u64, part: Option<u32>) {
        let now = self.now;
        match part {
            None => {
                let header = self.serve(from, session);
                self.send(from, SyncBody::SnapshotHead { session, header: header.map(Box::new) });
            }
            Some(i) => {
                let Some(s) = self.serving.get_mut(&from).filter(|s| s.session == session) else {
                    return;
                };
                s.last_used = now;
                let Some(data) = s.parts.get(i as usize).cloned() else {
                    self.malformed(from, "snapshot part out of range");
                    return;
                };
                self.metrics.snapshot_parts_sent += 1;
                self.send(from, SyncBody::SnapshotPart { session, part: i, data });
            }
        }
    }

    /// Prepares a snapshot for `to`; its header, or `None` if there is none to give.
    fn serve(&mut self, to: NodeId, session: u64) -> Option<SnapshotHeader> {
        // A peer asking again soon gets the snapshot already made (asking costs it a message,
        // making one costs a pass over the state).
        let now = self.now;
        if let Some(s) = self.serving.get_mut(&to)
            && now.saturating_since(s.made_at) < self.config.stream_timeout
        {
            s.session = session;
            s.last_used = now;
            return Some(s.header.clone());
        }
        self.serving.remove(&to);
        if self.joining.is_some() || self.serving.len() >= MAX_SERVING {
            return None;
        }
        // A head below what every other writer holds, so that their next commits descend
        // from it; failing that, any head (a commit concurrent with it makes the joiner
        // deepen); failing that, a checkpoint commit joining the heads becomes one.
        let mut stable = self.stable_bounds(to);
        if !self.replica.can_snapshot(&stable) {
            stable.clear();
            if !self.replica.can_snapshot(&stable) {
                let wall = self.wall(self.now);
                self.replica.checkpoint(wall).ok()?;
                self.metrics.checkpoints += 1;
                self.announce();
            }
        }
        let snapshot = self.replica.snapshot(&stable).ok()?;
        let BaseSnapshot { head, vv, generation, ids, state } = snapshot?;
        let head = self.seal_bytes(head)?;
        // The ids, in parts of at most the frame's bytes; the state, in its checked chunks.
        let per_part = (self.max_batch_bytes / 33).max(1);
        let mut parts = Vec::new();
        for chunk in ids.chunks(per_part) {
            let bytes = postcard::to_allocvec(chunk).ok()?;
            parts.push(self.seal_bytes(bytes)?);
        }
        let id_parts = u32::try_from(parts.len()).ok()?;
        let built = Snapshot::build(&state, self.max_batch_bytes).ok()?;
        let (manifest, chunks) = built.into_parts();
        let chunks: Vec<Vec<u8>> = chunks.map(|c| c.encode()).collect();
        drop(state);
        for chunk in chunks {
            parts.push(self.seal_bytes(chunk)?);
        }
        let header = SnapshotHeader {
            head,
            vv,
            generation,
            ids: ids.len() as u64,
            id_parts,
            manifest: manifest.encode(),
        };
        self.metrics.snapshots_served += 1;
        let made = Serving { session, header: header.clone(), parts, last_used: now, made_at: now };
        self.serving.insert(to, made);
        Some(header)
    }

    fn seal_bytes(&self, bytes: Vec<u8>) -> Option<Vec<u8>> {
        match &self.seal {
            None => Some(bytes),
            Some(seal) => seal.seal(&bytes).ok(),
        }
    }

    fn open_bytes(&self, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        match &self.seal {
            None => Ok(bytes),
            Some(seal) => seal.open(&bytes, self.wall(self.now)).map_err(|e| e.to_string()),
        }
    }

    pub(super) fn on_snapshot_head(
        &mut self,
        from: NodeId,
        session: u64,
        header: Option<Box<SnapshotHeader>>,
    ) {
        let Some(j) = self.joining.as_mut() else { return };
        if j.asked.is_none_or(|(p, s, _)| p != from || s != session) || j.fetching.is_some() {
            return;
        }
        let Some(header) = header else {
            // This peer has none; the next round asks another.
            j.tried.insert(from);
            j.asked = None;
            return;
        };
        let Ok(head) = self.open_bytes(header.head.clone()) else {
            self.wait_for_keys();
            return;
        };
        let (max_ids, max_triples) =
            (self.config.max_snapshot_commits, self.config.max_snapshot_triples);
        let checked = (|| {
            let head =
                SignedCommit::decode(&head, None).map_err(|_| "snapshot head does not verify")?;
            let manifest = SnapshotManifest::decode(&header.manifest)
                .map_err(|_| "snapshot manifest does not decode")?;
            if header.ids > max_ids || manifest.count() > max_triples {
                return Err("snapshot header beyond the limits");
            }
            // Each id part holds at least one id. (How many is the provider's frame size,
            // which need not be this node's.)
            if u64::from(header.id_parts) > header.ids {
                return Err("snapshot header declares more id parts than ids");
            }
            let parts = u32::try_from(manifest.cut().len())
                .ok()
                .and_then(|n| n.checked_add(header.id_parts))
                .ok_or("snapshot header declares too many parts")?;
            let chunks = SnapshotReceiver::new(manifest, &head.commit().state_root())
                .map_err(|_| "snapshot manifest is not for its head's state root")?;
            Ok((parts, chunks))
        })();
        let (parts, chunks) = match checked {
            Ok(c) => c,
            Err(reason) => {
                self.abandon(from, reason);
                return;
            }
        };
        let Some(j) = self.joining.as_mut() else { return };
        j.fetching = Some(Box::new(Fetching {
            header: *header,
            parts,
            ids: BTreeMap::new(),
            chunks,
            received: HashSet::new(),
            next: 0,
        }));
        j.asked = Some((from, session, self.now));
        self.fetch_parts();
    }

    /// Asks for parts while fewer than `window` are in flight.
    fn fetch_parts(&mut self) {
        let window = self.config.window.max(1) as u32;
        let mut asks = Vec::new();
        if let Some(j) = self.joining.as_mut()
            && let (Some((peer, session, _)), Some(f)) = (j.asked, j.fetching.as_mut())
        {
            let received = f.received.len() as u32;
            while f.next < f.parts && f.next < received + window {
                asks.push((peer, session, f.next));
                f.next += 1;
            }
        }
        for (peer, session, part) in asks {
            self.send(peer, SyncBody::SnapshotFetch { session, part: Some(part) });
        }
        if self
            .joining
            .as_ref()
            .and_then(|j| j.fetching.as_ref())
            .is_some_and(|f| f.received.len() as u32 == f.parts)
            && let Some((peer, _, _)) = self.joining.as_ref().and_then(|j| j.asked)
        {
            self.install(peer);
        }
    }

    pub(super) fn on_snapshot_part(
        &mut self,
        from: NodeId,
        session: u64,
        part: u32,
        data: Vec<u8>,
    ) {
        let now = self.now;
        let Some(j) = self.joining.as_ref() else { return };
        let Some(f) = &j.fetching else { return };
        if j.asked.is_none_or(|(p, s, _)| p != from || s != session)
            || part >= f.parts
            || f.received.contains(&part)
        {
            return;
        }
        let Ok(plain) = self.open_bytes(data) else {
            self.wait_for_keys();
            return;
        };
        let Some(f) = self.joining.as_mut().and_then(|j| j.fetching.as_mut()) else { return };
        let outcome = if part < f.header.id_parts {
            match postcard::from_bytes::<Vec<CommitId>>(&plain) {
                Ok(ids) => {
                    let held: u64 = f.ids.values().map(|v| v.len() as u64).sum();
                    if held + ids.len() as u64 > f.header.ids {
                        Err("snapshot parts hold more ids than their header declares")
                    } else {
                        f.ids.insert(part, ids);
                        Ok(())
                    }
                }
                Err(_) => Err("snapshot id part does not decode"),
            }
        } else {
            // Checked against the manifest's cut, so against the head's signed root.
            f.chunks.receive(&plain).map_err(|_| "snapshot chunk refused")
        };
        if let Err(reason) = outcome {
            self.abandon(from, reason);
            return;
        }
        f.received.insert(part);
        self.metrics.snapshot_parts_received += 1;
        if let Some(j) = self.joining.as_mut() {
            j.asked = Some((from, session, now));
        }
        self.fetch_parts();
    }

    /// Drops the snapshot being fetched from `from` (it broke a bound) and tries elsewhere.
    fn abandon(&mut self, from: NodeId, reason: &'static str) {
        if let Some(j) = self.joining.as_mut() {
            j.tried.insert(from);
            j.reset();
        }
        self.malformed(from, reason);
    }

    /// Every part is here: assemble, verify and install.
    fn install(&mut self, from: NodeId) {
        let Some(f) = self.joining.as_mut().and_then(|j| j.fetching.take()) else { return };
        let Fetching { header, ids, chunks, .. } = *f;
        let ids: Vec<CommitId> = ids.into_values().flatten().collect();
        if ids.len() as u64 != header.ids {
            self.abandon(from, "snapshot parts hold fewer ids than their header declares");
            return;
        }
        let state = match chunks.finish() {
            Ok(state) => state,
            Err(_) => {
                self.abandon(from, "snapshot chunks do not give the manifest's state");
                return;
            }
        };
        let Ok(head) = self.open_bytes(header.head) else {
            self.wait_for_keys();
            return;
        };
        let triples = state.len() as u64;
        let snapshot = BaseSnapshot {
            head,
            vv: header.vv,
            generation: header.generation,
            ids,
            state: Cow::Owned(state),
        };
        let wall = self.wall(self.now);
        match self.replica.install_snapshot(wall, snapshot) {
            Ok(()) => {
                self.joining = None;
                self.metrics.snapshots_installed += 1;
                self.events.push_back(SyncEvent::SnapshotInstalled { from, triples });
                // What came after the head follows by ordinary anti-entropy, at once.
                self.send_summary(from, true);
            }
            Err(error) => {
                let transient = matches!(error, SnapshotError::Refused { .. });
                if let Some(j) = self.joining.as_mut() {
                    j.reset();
                    if transient {
                        j.waits += 1;
                    } else {
                        j.tried.insert(from);
                    }
                }
                self.events.push_back(SyncEvent::SnapshotRefused { from, error });
                self.give_up_after_waits();
            }
        }
    }

    /// A snapshot did not open here (its epoch's key has not arrived yet): ask again in a
    /// later round.
    fn wait_for_keys(&mut self) {
        if let Some(j) = self.joining.as_mut() {
            j.reset();
            j.waits += 1;
        }
        self.give_up_after_waits();
    }

    fn give_up_after_waits(&mut self) {
        if self.joining.as_ref().is_some_and(|j| j.waits >= MAX_WAITS) {
            self.joining = None;
            self.events.push_back(SyncEvent::SnapshotUnavailable);
        }
    }

    /// The catch-up part of a round: snapshots kept for peers that stopped asking go; a
    /// joining node asks a peer that has not failed it yet (after [`JOIN_PASSES`] passes in
    /// which every peer failed it, it syncs the whole history instead); a deepening that
    /// stalled asks another peer.
    pub(super) fn catchup_round(&mut self, now: Time) {
        let timeout = self.config.stream_timeout;
        self.serving.retain(|_, s| now.saturating_since(s.last_used) < timeout * 4);
        let up: Vec<NodeId> = self.peers.iter().filter(|(_, p)| p.up).map(|(id, _)| *id).collect();
        // A joining node sends nothing else, so its links may not be up yet: asking a peer
        // that is not known to be up is what brings the link up.
        let pool: Vec<NodeId> =
            if up.is_empty() { self.peers.keys().copied().collect() } else { up.clone() };
        if let Some(j) = self.joining.as_mut() {
            if let Some((peer, _, at)) = j.asked
                && now.saturating_since(at) >= timeout
            {
                j.tried.insert(peer);
                j.reset();
            }
            if j.asked.is_none() {
                let fresh: Vec<NodeId> =
                    pool.iter().filter(|p| !j.tried.contains(p)).copied().collect();
                if let Some(&peer) = fresh.choose(&mut self.rng) {
                    let session = self.rng.random::<u64>();
                    j.asked = Some((peer, session, now));
                    self.send(peer, SyncBody::SnapshotFetch { session, part: None });
                } else if !pool.is_empty() {
                    // Every peer was asked. While writers are busy no commit may qualify as
                    // a head; ask them all again a few rounds later, then give up.
                    j.passes += 1;
                    j.tried.clear();
                    if j.passes >= JOIN_PASSES {
                        self.joining = None;
                        self.events.push_back(SyncEvent::SnapshotUnavailable);
                    }
                }
            }
        }
        if let Some(d) = &self.deepening
            && now.saturating_since(d.asked_at) >= timeout
            && let Some(&peer) = pool.choose(&mut self.rng)
        {
            self.ask_base(peer);
        }
    }

    /// A commit concurrent with the base arrived from `from`: gather the base's commits.
    pub(super) fn start_deepening(&mut self, from: NodeId) {
        self.metrics.before_base += 1;
        if self.deepening.is_some() || !self.replica.is_shallow() {
            return;
        }
        let missing: HashSet<CommitId> = self.replica.base_ids().into_iter().collect();
        self.deepening = Some(Deepening { missing, got: HashMap::new(), asked_at: self.now });
        // A base whose head is a root has no commits to fetch.
        if !self.finish_deepening() {
            self.ask_base(from);
        }
    }

    /// Asks `peer` for the base's commits still missing.
    fn ask_base(&mut self, peer: NodeId) {
        let Some(d) = self.deepening.as_mut() else { return };
        d.asked_at = self.now;
        let mut ids: Vec<CommitId> = d.missing.iter().copied().collect();
        ids.sort();
        for chunk in ids.chunks(MAX_WANT) {
            self.metrics.requests_sent += 1;
            self.send(peer, SyncBody::Want { ids: chunk.to_vec() });
        }
    }

    /// Keeps `bytes` if it is one of the base's commits being gathered (true), deepening the
    /// replica once all are here.
    pub(super) fn gather(&mut self, bytes: &[u8]) -> bool {
        let Some(d) = self.deepening.as_mut() else { return false };
        // The claim is checked when the replica deepens (each commit decoded and verified).
        let Some(id) = SignedCommit::claimed_id(bytes) else { return false };
        if !d.missing.remove(&id) {
            return false;
        }
        d.got.insert(id, bytes.to_vec());
        d.asked_at = self.now;
        self.finish_deepening();
        true
    }

    /// Deepens the replica if every commit of the base is here; true if it tried.
    fn finish_deepening(&mut self) -> bool {
        if !self.deepening.as_ref().is_some_and(|d| d.missing.is_empty()) {
            return false;
        }
        let Some(d) = self.deepening.take() else { return false };
        let commits = d.got.len() as u64;
        match self.replica.deepen(d.got.into_values().collect()) {
            Ok(()) => {
                self.metrics.deepened += 1;
                self.events.push_back(SyncEvent::Deepened { commits });
            }
            // The next commit concurrent with the base starts over.
            Err(error) => self.events.push_back(SyncEvent::DeepenFailed { error }),
        }
        true
    }
}
