//! [`FederatedBranchingSystem`]: one node's federation — the three planes composed.
//!
//! The system holds the federated branches this node hosts. For each one it runs, through
//! the host's [`BranchBackend`], a [`ConsensusEngine`] whose log the branch's
//! [`Registry`] applies (the control plane) and a [`SyncStrategy`] replica (the data plane),
//! and it consults its [`SecurityManager`] before proposing, when consenting, on every
//! commit received, and records every decision of the log in the audit trail (the security
//! plane). Each operation is one call:
//!
//! | call | what happens |
//! |------|--------------|
//! | [`create_federated_branch`](FederatedBranchingSystem::create_federated_branch) | local security check; the participating nodes are resolved from known certificates; the group is formed (its id is the hash of the creation); the creation is proposed, every participant's node is asked for its organization's signed consent (approving nodes start hosting); once all consented the source snapshot is written and every replica reaches it |
//! | [`synchronize_federated_branch`](FederatedBranchingSystem::synchronize_federated_branch) | the branch's sync strategy runs with every member; what moved is reported |
//! | [`merge_federated_branches`](FederatedBranchingSystem::merge_federated_branches) | the merge's change set is computed from both states, proposed in the target's group, and the consents its rules demand are collected from the organizations of both branches; the proposal carries the merge's one commit, signed under a key of the merge's own, and every target replica adopts exactly that commit |
//! | [`join`](FederatedBranchingSystem::join) / [`leave`](FederatedBranchingSystem::leave) | a membership change of the group, consented like the rest; a joining node catches up as a learner, then votes |
//!
//! Consents are collected by the proposer: it asks a node of each organization whose
//! approval counts (a request on the control channel); that node evaluates the operation with
//! its own security manager and answers with a [`Consent`] signed by itself, which the
//! proposer submits to the log. The registry counts it only if it is bound to that proposal
//! and its heads and carries a valid certificate of the organization, so the proposer cannot
//! forge, reuse or stale-date anyone's approval.
//!
//! Nothing is spawned by this module: the backend's [`BranchBackend::spawn`] runs the
//! system's tasks (the control-channel server, one log pump and one membership reconciler
//! per hosted branch) on the host's executor.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use event_listener::Event;
use futures_util::future::select;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::certificate::{CommitPolicy, CommitRefusal, NodeCertificate, OrgRootKey};
use crate::consensus::{
    BranchCreation, ConsensusEngine, ConsensusError, ConsensusProposal, ConsensusStrategy,
    FederatedMerge, GroupChannels, GroupId, Member, Membership, MergeCommit, NodeJoin, NodeLeave,
    Outcome, ProposalId, ProposalKind,
};
use crate::encoding;
use crate::federated::{
    Consent, ConsentVerdict, Directory, FederatedBranch, FederatedBranchRequest,
    FederatedMergePolicy, FederatedMergeResult, MergeConflict, MergeSide, bounded_reason,
    merge_heads,
};
use crate::federation::FederationId;
use crate::graph::{GraphState, Pattern};
use crate::identity::{NodeId, NodeKeypair, OrgId, Signed};
use crate::registry::{ExecutedOperation, Registry, RegistryEvent, SharedRegistry};
use crate::security::{
    BranchRef, CrossFederationMerge, DecisionRecord, EnvelopeSeal, MembershipChange, SealError,
    SecurityDecision, SecurityError, SecurityManager, Verdict,
};
use crate::store::BranchName;
use crate::sync::{
    FederatedSyncOptions, FederatedSyncResult, FederatedSyncStrategy, SyncError, SyncStrategy,
};
use crate::term::{ChangeSet, Term, Triple};
use crate::time::{Clock, Timestamp};
use crate::transport::{BoxFuture, ChannelId, Incoming, Timer, Transport, TransportError};
use crate::{CommitId, StateRoot};

/// The largest control message accepted.
pub const MAX_CONTROL_LEN: usize = 8 << 20;

/// Domain of the derivation of a merge commit's key.
const MERGE_KEY_DOMAIN: &[u8] = b"llmkg/federation/merge-commit-key/v1";

/// At most this many bytes of triples go into one commit when a source snapshot is written
/// into a new branch (less if the transport carries smaller messages: a commit travels as
/// one message). The first commit lands in an empty state on every replica, which loads it
/// in bulk, so it is as large as this allows (the 100,000-triple source of
/// `bench-federation` is one commit).
pub const SEED_COMMIT_BYTES: usize = 16 << 20;

/// At most this many triples go into each commit of a source snapshot after the first: each
/// replica applies those onto the state the first built (term by term, far slower per
/// triple than the bulk load of the first), and a batch is acknowledged only once applied,
/// within the sync stream's timeout.
pub const SEED_CHUNK: usize = 20_000;

/// A bound on the encoded size of `t`: its text, and for each term a variant tag, a length
/// and a literal's kind (each at most 5 bytes, written as varints).
fn encoded_len_bound(t: &Triple) -> usize {
    fn term(t: &Term) -> usize {
        16 + match t {
            Term::Iri(iri) => iri.as_str().len(),
            Term::Blank(b) => b.label().len(),
            Term::Literal(l) => {
                l.value().len() + l.datatype().len() + l.language_tag().map_or(0, str::len)
            }
        }
    }
    term(t.subject()) + term(t.predicate()) + term(t.object())
}

/// Splits `triples` into consecutive runs of at most `budget` bytes by
/// [`encoded_len_bound`], each of at least one triple, and each after the first of at most
/// `later` triples.
fn seed_chunks(triples: &[Triple], budget: usize, later: usize) -> Vec<&[Triple]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, t) in triples.iter().enumerate() {
        let len = encoded_len_bound(t);
        let full = bytes + len > budget || (!chunks.is_empty() && i - start >= later.max(1));
        if i > start && full {
            chunks.extend(triples.get(start..i));
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < triples.len() {
        chunks.extend(triples.get(start..));
    }
    chunks
}

/// What one federated branch runs on a node, as the system asks a [`BranchBackend`] for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// The federation.
    pub federation: FederationId,
    /// The branch.
    pub branch: BranchName,
    /// Its group.
    pub group: GroupId,
    /// Its transport channels.
    pub channels: GroupChannels,
    /// The group's first membership, for a founding member; `None` for a node that joins a
    /// running group (it learns the membership from the group).
    pub bootstrap: Option<Membership>,
    /// The nodes its replica exchanges commits with, to start with.
    pub peers: Vec<NodeId>,
    /// The consensus protocol.
    pub consensus: ConsensusStrategy,
    /// The sync strategy.
    pub sync: FederatedSyncStrategy,
}

/// A backend could not start what was asked; nothing is left running.
#[derive(Debug, Error)]
#[error("backend: {0}")]
pub struct BackendError(pub String);

/// Starts the per-branch machinery of a node and runs its tasks: the host's consensus
/// backend, sync strategy, storage and executor behind one trait. The paved path of
/// `llmkg-governance` (Raft, eventual sync, redb, any transport) implements it.
pub trait BranchBackend: Send + Sync {
    /// Starts (or, after a restart, reopens from storage) the consensus engine of `spec`'s
    /// group, applying its log to `machine`.
    fn start_consensus(
        &self,
        spec: &GroupSpec,
        machine: SharedRegistry,
    ) -> Result<Arc<dyn ConsensusEngine>, BackendError>;

    /// Starts (or reopens) `spec`'s replica, checking every commit received with `policy`.
    /// For a branch of a level that seals, `seal` seals every commit the replica ships and
    /// opens every commit it receives: the replica must not send or accept commits in the
    /// clear then.
    fn start_sync(
        &self,
        spec: &GroupSpec,
        policy: Arc<dyn CommitPolicy>,
        seal: Option<Arc<dyn EnvelopeSeal>>,
    ) -> Result<Arc<dyn SyncStrategy>, BackendError>;

    /// Stops what runs for `group` (this node left it).
    fn stop(&self, group: &GroupId);

    /// Durably records (before returning) that this node hosts the branch whose signed
    /// creation entry is `creation`, so that a restarted system hosts it again.
    fn remember(&self, group: &GroupId, creation: &[u8]) -> Result<(), BackendError>;

    /// Forgets a branch this node no longer hosts.
    fn forget(&self, group: &GroupId) -> Result<(), BackendError>;

    /// The creation entries of the branches this node hosts, as remembered.
    fn remembered(&self) -> Result<Vec<Vec<u8>>, BackendError>;

    /// The last log index of `group` whose decision this node recorded in its audit trail
    /// (0 if none), durably kept so that a replayed log is not recorded twice.
    fn recorded(&self, group: &GroupId) -> Result<u64, BackendError>;

    /// Durably sets what [`recorded`](Self::recorded) answers for `group`.
    fn set_recorded(&self, group: &GroupId, index: u64) -> Result<(), BackendError>;

    /// Runs `task` to completion on the host's executor.
    fn spawn(&self, task: BoxFuture<'static, ()>);
}

/// How a [`FederatedBranchingSystem`] behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SystemConfig {
    /// The channel of the system's control requests (consent requests). Default 0.
    pub control: ChannelId,
    /// Channels a branch may use; each branch takes two. Default 1 to 15.
    pub branch_channels: Vec<u8>,
    /// How long a proposal may wait for its approvals. Default 60 s.
    pub decision_timeout: Duration,
    /// How long a consent request waits for its answer. Default 10 s.
    pub request_timeout: Duration,
    /// How long the creation and a merge wait for every replica to be ready. Default 120 s.
    pub ready_timeout: Duration,
    /// How often each branch's membership is reconciled with its registry. Default 200 ms.
    pub reconcile_every: Duration,
}

impl Default for SystemConfig {
    fn default() -> Self {
        Self {
            control: ChannelId::DEFAULT,
            branch_channels: (1..16).collect(),
            decision_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(120),
            reconcile_every: Duration::from_millis(200),
        }
    }
}

/// A federation operation failed. Each variant says what changed: unless stated otherwise,
/// nothing did.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FederationError {
    /// This node's security manager refused the operation (audited there).
    #[error("not authorized: {0}")]
    NotAuthorized(SecurityDecision),
    /// The security manager could not decide or act.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The group's registry rejected the operation (a refusal, missing approvals at the
    /// deadline, a proposer outside the group, ...): the same on every member, and audited.
    #[error("rejected by the federation: {0}")]
    Rejected(String),
    /// No branch of that name is hosted here.
    #[error("branch {0:?} is not hosted on this node")]
    UnknownBranch(BranchName),
    /// A branch of that name is already hosted here.
    #[error("branch {0:?} already exists on this node")]
    AlreadyExists(BranchName),
    /// No node of this organization is known, so it cannot take part.
    #[error("no node of {0} is known")]
    NoNodes(OrgId),
    /// Every channel pair for branches is taken on this node.
    #[error("no free transport channels for another branch")]
    NoFreeChannel,
    /// The request is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// This node may not do this (it is not a member, or the policy does not let its
    /// organization).
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// The operation was proposed but not decided in time; it may still be decided.
    #[error("not decided within {0:?}; it may still be decided")]
    Timeout(Duration),
    /// Consensus failed.
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    /// The replica failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// One node's identity in a federation.
pub struct NodeIdentity {
    /// Its key.
    pub keypair: NodeKeypair,
    /// Its certificate, issued by its organization's root.
    pub certificate: NodeCertificate,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node", &self.keypair.node_id())
            .field("org", self.certificate.org())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Control {
    /// Asks for the receiver's organization's consent to a proposal of `group`; `creation` is
    /// the group's creation entry, for a receiver that does not host the group yet.
    Consent {
        #[serde(with = "crate::encoding::bytes")]
        proposal: Vec<u8>,
        #[serde(with = "crate::encoding::bytes")]
        creation: Vec<u8>,
    },
    /// Asks a member of a sealed branch's group for the data-key epochs it holds.
    KeyEpochs { group: GroupId },
}

#[derive(Debug, Serialize, Deserialize)]
enum ControlReply {
    /// The receiver's signed consent (approving or refusing).
    Consent(#[serde(with = "crate::encoding::bytes")] Vec<u8>),
    /// The receiver could not evaluate the request.
    Error(String),
    /// The data-key epochs the receiver holds, encoded, oldest first.
    KeyEpochs(#[serde(with = "crate::encoding::bytes::list")] Vec<Vec<u8>>),
}

/// Most key epochs one answer carries.
const MAX_KEY_EPOCHS: usize = 4096;

/// The envelope seal of a sealed branch, resolved from the security manager once the branch's
/// security context exists (it does not when the node starts hosting a branch whose creation
/// is still being decided): until then nothing is sealed or opened.
struct BranchSeal {
    security: Arc<dyn SecurityManager>,
    branch: BranchRef,
    resolved: std::sync::OnceLock<Arc<dyn EnvelopeSeal>>,
}

impl BranchSeal {
    fn get(&self) -> Option<&Arc<dyn EnvelopeSeal>> {
        if let Some(seal) = self.resolved.get() {
            return Some(seal);
        }
        let seal = self.security.envelope_seal(&self.branch).ok().flatten()?;
        Some(self.resolved.get_or_init(|| seal))
    }
}

impl EnvelopeSeal for BranchSeal {
    fn seal(&self, envelope: &[u8]) -> Result<Vec<u8>, SealError> {
        self.get().ok_or(SealError::EpochPending)?.seal(envelope)
    }

    fn open(&self, sealed: &[u8], now: Timestamp) -> Result<Vec<u8>, SealError> {
        match self.get() {
            Some(seal) => seal.open(sealed, now),
            None => Err(SealError::Unreadable(
                "the branch's security context is not set up here yet".into(),
            )),
        }
    }
}

/// A branch this node hosts.
struct Hosted {
    spec: GroupSpec,
    creation: Signed<ConsensusProposal>,
    registry: SharedRegistry,
    engine: Arc<dyn ConsensusEngine>,
    sync: Arc<dyn SyncStrategy>,
    changed: Event,
    state: Mutex<HostedState>,
}

#[derive(Default)]
struct HostedState {
    /// Rejection reasons of pending operations, by proposal (bounded).
    rejected: BTreeMap<ProposalId, String>,
    /// The source snapshot to write once the creation is executed (the creator's).
    seed: Option<Vec<Triple>>,
    /// Merges executed on this replica.
    merged: BTreeSet<ProposalId>,
    /// Stopped (left the group).
    stopped: bool,
    /// The security context was ensured after the creation executed.
    context_ready: bool,
    /// The join of this node it consented to, while this node replays the log up to it.
    joining: Option<ProposalId>,
    /// Hosted because this node was invited to the creation (not restored, not joined).
    invited: bool,
    /// The last log index whose decision is in the audit trail (the backend keeps it
    /// durably; read once when hosting starts).
    recorded: u64,
}

impl Hosted {
    fn state(&self) -> MutexGuard<'_, HostedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn branch(&self) -> Option<FederatedBranch> {
        self.registry.lock().branch().cloned()
    }
}

struct Inner {
    identity: NodeIdentity,
    federation: FederationId,
    transport: Arc<dyn Transport>,
    security: Arc<dyn SecurityManager>,
    backend: Arc<dyn BranchBackend>,
    clock: Arc<dyn Clock>,
    timer: Arc<dyn Timer>,
    config: SystemConfig,
    known: Mutex<BTreeMap<NodeId, NodeCertificate>>,
    branches: Mutex<BTreeMap<BranchName, Arc<Hosted>>>,
    nonce: Mutex<u64>,
    /// Set by [`FederatedBranchingSystem::shutdown`]: nothing is hosted or answered after.
    shut: std::sync::atomic::AtomicBool,
}

/// One node's federation; see the [module documentation](self).
#[derive(Clone)]
pub struct FederatedBranchingSystem {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FederatedBranchingSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederatedBranchingSystem")
            .field("node", &self.inner.identity.keypair.node_id())
            .field("federation", &self.inner.federation)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FederatedBranchingSystem {
    /// A node's federation over these planes. It starts serving consent requests on the
    /// control channel (through `backend.spawn`). `known` are the certificates of the other
    /// nodes it may federate with (more with [`add_node`](Self::add_node)).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        identity: NodeIdentity,
        federation: FederationId,
        transport: Arc<dyn Transport>,
        security: Arc<dyn SecurityManager>,
        backend: Arc<dyn BranchBackend>,
        clock: Arc<dyn Clock>,
        timer: Arc<dyn Timer>,
        config: SystemConfig,
    ) -> Self {
        let me = identity.keypair.node_id();
        let mut known = BTreeMap::new();
        known.insert(me, identity.certificate.clone());
        let system = Self {
            inner: Arc::new(Inner {
                identity,
                federation,
                transport,
                security,
                backend: Arc::clone(&backend),
                clock,
                timer,
                config,
                known: Mutex::new(known),
                branches: Mutex::new(BTreeMap::new()),
                nonce: Mutex::new(0),
                shut: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        let server = system.clone();
        backend.spawn(Box::pin(async move { server.serve().await }));
        system
    }

    /// Hosts again the branches the backend remembers (after a restart): each engine and
    /// replica reopens from its storage. Returns the branches, or the first failure.
    pub fn restore(&self) -> Result<Vec<BranchName>, FederationError> {
        let me = self.node_id();
        let mut restored = Vec::new();
        for bytes in self.inner.backend.remembered()? {
            let creation = Signed::<ConsensusProposal>::decode(&bytes, &self.inner.federation)
                .map_err(|e| FederationError::Invalid(format!("a remembered creation: {e}")))?;
            let founding = match creation.open(&self.inner.federation).map(|p| &p.kind) {
                Ok(ProposalKind::BranchCreation(c)) => {
                    // The security context is the manager's memory: recreate it before the
                    // replica replays its commits through the branch's commit policy (an
                    // existing one is kept).
                    let _ = self.inner.security.create_security_context(&c.request, self.now());
                    c.members.iter().any(|m| m.node == me)
                }
                _ => return Err(FederationError::Invalid("a remembered non-creation".into())),
            };
            let hosted = self.host(&creation, founding)?;
            restored.push(hosted.spec.branch.clone());
        }
        Ok(restored)
    }

    /// This node.
    pub fn node_id(&self) -> NodeId {
        self.inner.identity.keypair.node_id()
    }

    /// This node's certificate.
    pub fn certificate(&self) -> &NodeCertificate {
        &self.inner.identity.certificate
    }

    /// This node's organization.
    pub fn org(&self) -> &OrgId {
        self.inner.identity.certificate.org()
    }

    /// Lets this node federate with the holder of `certificate` (its organization's root is
    /// taken from it; the security manager decides separately whether it is trusted).
    pub fn add_node(&self, certificate: NodeCertificate) {
        lock(&self.inner.known).insert(certificate.node(), certificate);
    }

    /// The branches this node hosts, as their registries hold them.
    pub fn branches(&self) -> Vec<FederatedBranch> {
        let hosted: Vec<Arc<Hosted>> = lock(&self.inner.branches).values().cloned().collect();
        hosted.iter().filter_map(|h| h.branch()).collect()
    }

    /// A copy of `branch`'s registry.
    pub fn registry(&self, branch: &BranchName) -> Result<Registry, FederationError> {
        Ok(self.hosted(branch)?.registry.lock().clone())
    }

    /// `branch`'s replica.
    pub fn replica(&self, branch: &BranchName) -> Result<Arc<dyn SyncStrategy>, FederationError> {
        Ok(Arc::clone(&self.hosted(branch)?.sync))
    }

    /// `branch`'s consensus engine.
    pub fn engine(&self, branch: &BranchName) -> Result<Arc<dyn ConsensusEngine>, FederationError> {
        Ok(Arc::clone(&self.hosted(branch)?.engine))
    }

    fn hosted(&self, branch: &BranchName) -> Result<Arc<Hosted>, FederationError> {
        lock(&self.inner.branches)
            .get(branch)
            .cloned()
            .ok_or_else(|| FederationError::UnknownBranch(branch.clone()))
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn next_nonce(&self) -> u64 {
        let mut n = lock(&self.inner.nonce);
        *n += 1;
        // Distinct across restarts too: the clock's microseconds lead.
        (self.now().as_micros() as u64).wrapping_shl(16) ^ *n
    }

    fn sign(
        &self,
        group: GroupId,
        kind: ProposalKind,
        wait: Duration,
    ) -> Result<Signed<ConsensusProposal>, FederationError> {
        let now = self.now();
        let deadline = now.saturating_add(wait);
        let proposal =
            ConsensusProposal { group, kind, proposed_at: now, deadline, nonce: self.next_nonce() };
        Signed::sign_crate_kind(&self.inner.identity.keypair, &self.inner.federation, proposal)
            .map_err(|e| FederationError::Invalid(format!("cannot sign the proposal: {e}")))
    }

    // ---------------------------------------------------------------------------------
    // Creation
    // ---------------------------------------------------------------------------------

    /// Creates the federated branch `request` describes, starting from `source` (the
    /// triples whose state `request.source` names; empty for an empty source), and returns
    /// it once every participant consented and every participant's replica holds the
    /// source state.
    ///
    /// Refused before anything is proposed when this node's security manager refuses
    /// ([`FederationError::NotAuthorized`]), when a participant has no known node
    /// ([`FederationError::NoNodes`]) or when `source` does not match `request.source`.
    /// Once proposed, a participant's refusal or a missing consent at the deadline rejects
    /// it on every member ([`FederationError::Rejected`]).
    pub async fn create_federated_branch(
        &self,
        mut request: FederatedBranchRequest,
        source: Vec<Triple>,
    ) -> Result<FederatedBranch, FederationError> {
        let me = self.node_id();
        if request.requester != me {
            return Err(FederationError::Invalid("the requester must be this node".into()));
        }
        if request.federation != self.inner.federation {
            return Err(FederationError::Invalid("the request is for another federation".into()));
        }
        if !request.participants.contains(self.org()) {
            request.participants.push(self.org().clone());
        }
        request.participants.sort();
        request.participants.dedup();
        request.check_bounds().map_err(FederationError::Invalid)?;
        if lock(&self.inner.branches).contains_key(&request.branch) {
            return Err(FederationError::AlreadyExists(request.branch.clone()));
        }
        if GraphState::root_of(&source) != request.source.root() {
            return Err(FederationError::Invalid(
                "the source triples do not have the state root the request names".into(),
            ));
        }
        let decision = self.inner.security.validate_branch_request(&request, self.now())?;
        if decision.is_refused() {
            return Err(FederationError::NotAuthorized(decision));
        }
        // Resolve the participating nodes and their organizations' roots.
        let known: Vec<NodeCertificate> = lock(&self.inner.known).values().cloned().collect();
        let mut members = Vec::new();
        let mut directory: Directory = Vec::new();
        for org in &request.participants {
            let certs: Vec<&NodeCertificate> = known.iter().filter(|c| c.org() == org).collect();
            let Some(first) = certs.first() else {
                return Err(FederationError::NoNodes(org.clone()));
            };
            if certs.iter().any(|c| c.root() != first.root()) {
                return Err(FederationError::Invalid(format!(
                    "{org}'s nodes name different roots"
                )));
            }
            directory.push((org.clone(), first.root()));
            members.extend(certs.iter().map(|c| Member { node: c.node(), org: org.clone() }));
        }
        members.sort();
        let channels = self.free_channels()?;
        let creation = BranchCreation {
            request: request.clone(),
            members: members.clone(),
            directory,
            channels,
            nonce: self.next_nonce(),
        };
        let group = creation
            .group_id()
            .map_err(|e| FederationError::Invalid(format!("cannot encode the creation: {e}")))?;
        let timeout = self.inner.config.decision_timeout;
        let signed = self.sign(group, ProposalKind::BranchCreation(creation.clone()), timeout)?;
        let hosted = self.host(&signed, true)?;
        hosted.state().seed = Some(source);
        let id = proposal_id(&signed)?;
        // Every participating node is asked first: each that approves starts hosting, so the
        // group can decide. A refusal or a silent organization ends the creation before
        // anything is proposed (the approving nodes drop the branch at its deadline).
        let asked: Vec<Member> = members.iter().filter(|m| m.node != me).cloned().collect();
        let needed: BTreeSet<OrgId> = request.participants.iter().cloned().collect();
        let gathered = self.gather(&hosted, &signed, &signed, &asked, &needed).await;
        let (answers, why) = match gathered {
            Ok(a) => a,
            Err(e) => {
                self.unhost(&request.branch);
                return Err(e);
            }
        };
        let refusal = answers.iter().find_map(|(org, c)| match c.open(&self.inner.federation) {
            Ok(ConsensusProposal {
                kind:
                    ProposalKind::Consent(Consent {
                        verdict: ConsentVerdict::Refuse { reason }, ..
                    }),
                ..
            }) => Some(format!("{org} declined: {reason}")),
            _ => None,
        });
        let missing: Vec<String> =
            needed.iter().filter(|o| !answers.contains_key(*o)).map(ToString::to_string).collect();
        if refusal.is_some() || !missing.is_empty() {
            self.unhost(&request.branch);
            let reason = refusal.unwrap_or_else(|| {
                format!(
                    "no consent from {} ({})",
                    missing.join(", "),
                    why.unwrap_or_else(|| "no node answered".into())
                )
            });
            return Err(FederationError::Rejected(reason));
        }
        let proposed = async {
            self.propose(&hosted, signed.clone()).await?;
            self.submit_all(&hosted, answers.values()).await?;
            self.await_executed(&hosted, &id).await
        };
        if let Err(e) = proposed.await {
            self.unhost(&request.branch);
            return Err(e);
        }
        // The creator's pump writes the source snapshot; wait until every replica holds it.
        self.await_seeded(&hosted).await?;
        self.await_ready(&hosted, Some(request.source.root())).await?;
        hosted.branch().ok_or_else(|| FederationError::Rejected("the branch vanished".into()))
    }

    /// The transport channels the hosted branches use.
    fn used_channels(&self) -> BTreeSet<u8> {
        lock(&self.inner.branches)
            .values()
            .flat_map(|h| [h.spec.channels.consensus, h.spec.channels.sync])
            .collect()
    }

    fn free_channels(&self) -> Result<GroupChannels, FederationError> {
        let used = self.used_channels();
        let control = self.inner.config.control.index() as u8;
        let free: Vec<u8> = self
            .inner
            .config
            .branch_channels
            .iter()
            .copied()
            .filter(|c| *c != control && !used.contains(c) && ChannelId::new(*c).is_some())
            .collect();
        match free.as_slice() {
            [a, b, ..] => Ok(GroupChannels { consensus: *a, sync: *b }),
            _ => Err(FederationError::NoFreeChannel),
        }
    }

    /// Starts hosting the branch `creation` founds: its engine, replica, pump and
    /// reconciler. `founding`: this node is one of the creation's members (else it joins).
    fn host(
        &self,
        creation: &Signed<ConsensusProposal>,
        founding: bool,
    ) -> Result<Arc<Hosted>, FederationError> {
        let value = creation
            .open(&self.inner.federation)
            .map_err(|_| FederationError::Invalid("a creation of another federation".into()))?;
        let ProposalKind::BranchCreation(c) = &value.kind else {
            return Err(FederationError::Invalid("not a creation entry".into()));
        };
        if c.group_id().ok() != Some(value.group) {
            return Err(FederationError::Invalid("the group is not the creation's hash".into()));
        }
        let branch = c.request.branch.clone();
        if let Some(h) = lock(&self.inner.branches).get(&branch) {
            if h.spec.group == value.group {
                return Ok(Arc::clone(h));
            }
            return Err(FederationError::AlreadyExists(branch));
        }
        let used = self.used_channels();
        if used.contains(&c.channels.consensus) || used.contains(&c.channels.sync) {
            return Err(FederationError::NoFreeChannel);
        }
        let bootstrap = if founding {
            Some(
                Membership::new(value.group, c.members.clone(), Vec::new())
                    .map_err(|e| FederationError::Invalid(e.to_string()))?,
            )
        } else {
            None
        };
        let me = self.node_id();
        let spec = GroupSpec {
            federation: self.inner.federation,
            branch: branch.clone(),
            group: value.group,
            channels: c.channels,
            bootstrap,
            peers: c.members.iter().map(|m| m.node).filter(|n| *n != me).collect(),
            consensus: c.request.consensus.clone(),
            sync: c.request.sync.clone(),
        };
        let registry = SharedRegistry::new(Registry::new(self.inner.federation, value.group));
        let policy: Arc<dyn CommitPolicy> = Arc::new(MemberPolicy {
            registry: registry.clone(),
            security: Arc::clone(&self.inner.security),
            branch: BranchRef { federation: self.inner.federation, branch: branch.clone() },
        });
        self.inner.backend.remember(&spec.group, &encoded(creation)?)?;
        let recorded = self.inner.backend.recorded(&spec.group)?;
        let seal: Option<Arc<dyn EnvelopeSeal>> =
            c.request.policy.security_level.seals().then(|| {
                Arc::new(BranchSeal {
                    security: Arc::clone(&self.inner.security),
                    branch: BranchRef { federation: self.inner.federation, branch: branch.clone() },
                    resolved: std::sync::OnceLock::new(),
                }) as Arc<dyn EnvelopeSeal>
            });
        let started =
            self.inner.backend.start_consensus(&spec, registry.clone()).and_then(|engine| {
                self.inner.backend.start_sync(&spec, policy, seal).map(|sync| (engine, sync))
            });
        let (engine, sync) = match started {
            Ok(both) => both,
            Err(e) => {
                // Nothing is left running or remembered.
                self.inner.backend.stop(&spec.group);
                let _ = self.inner.backend.forget(&spec.group);
                return Err(e.into());
            }
        };
        let hosted = Arc::new(Hosted {
            spec,
            creation: creation.clone(),
            registry,
            engine,
            sync,
            changed: Event::new(),
            state: Mutex::new(HostedState { recorded, ..HostedState::default() }),
        });
        {
            let mut branches = lock(&self.inner.branches);
            if self.is_shut() {
                drop(branches);
                self.inner.backend.stop(&hosted.spec.group);
                return Err(FederationError::Rejected("this node is shut down".into()));
            }
            branches.insert(branch, Arc::clone(&hosted));
        }
        let (pump, h) = (self.clone(), Arc::clone(&hosted));
        self.inner.backend.spawn(Box::pin(async move { pump.pump(h).await }));
        let (rec, h) = (self.clone(), Arc::clone(&hosted));
        self.inner.backend.spawn(Box::pin(async move { rec.reconcile(h).await }));
        Ok(hosted)
    }

    /// Stops this node: every hosted branch's consensus and sync tasks end, and the system
    /// hosts nothing afterwards (calls naming a branch fail with
    /// [`FederationError::UnknownBranch`]). The branches stay remembered, so a system built
    /// again on the same storage [`restore`](Self::restore)s them, as after a crash. For a host
    /// that stops a node, or runs several systems one after another in one process.
    pub fn shutdown(&self) {
        let hosted = {
            let mut branches = lock(&self.inner.branches);
            self.inner.shut.store(true, std::sync::atomic::Ordering::SeqCst);
            std::mem::take(&mut *branches)
        };
        for h in hosted.into_values() {
            h.state().stopped = true;
            self.inner.backend.stop(&h.spec.group);
            h.changed.notify(usize::MAX);
        }
    }

    fn is_shut(&self) -> bool {
        self.inner.shut.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn unhost(&self, branch: &BranchName) {
        if let Some(h) = lock(&self.inner.branches).remove(branch) {
            h.state().stopped = true;
            self.inner.backend.stop(&h.spec.group);
            let _ = self.inner.backend.forget(&h.spec.group);
            h.changed.notify(usize::MAX);
        }
    }

    // ---------------------------------------------------------------------------------
    // Proposals and consents
    // ---------------------------------------------------------------------------------

    async fn propose(
        &self,
        hosted: &Hosted,
        signed: Signed<ConsensusProposal>,
    ) -> Result<Outcome, FederationError> {
        let result = hosted.engine.propose(signed, self.inner.config.decision_timeout).await?;
        match result.outcome {
            Outcome::Rejected { reason } => Err(FederationError::Rejected(reason)),
            other => Ok(other),
        }
    }

    /// Asks each of `asked` for its organization's consent to `proposal` (this node's own
    /// organization answers here), keeping the first answer of each organization in
    /// `needed`. Returns the answers, and why the organizations that did not answer did not.
    async fn gather(
        &self,
        hosted: &Hosted,
        proposal: &Signed<ConsensusProposal>,
        creation: &Signed<ConsensusProposal>,
        asked: &[Member],
        needed: &BTreeSet<OrgId>,
    ) -> Result<(BTreeMap<OrgId, Signed<ConsensusProposal>>, Option<String>), FederationError> {
        let mut answers = BTreeMap::new();
        if needed.contains(self.org()) {
            answers.insert(self.org().clone(), self.evaluate(proposal, Some(hosted), creation)?);
        }
        let message = encoding::try_encode(&Control::Consent {
            proposal: encoded(proposal)?,
            creation: encoded(creation)?,
        })
        .map_err(|e| FederationError::Invalid(e.to_string()))?;
        // Every node is asked at once; the answers are taken in the order of `asked`.
        let requests = asked.iter().map(|m| {
            self.inner.transport.request_on(
                self.inner.config.control,
                m.node,
                message.clone(),
                self.inner.config.request_timeout,
            )
        });
        let mut replies = futures_util::future::join_all(requests).await;
        // A link that went down (a peer restarting, a connection being replaced) is tried
        // again, twice, before the node counts as silent.
        for _ in 0..2 {
            let failed: Vec<usize> = (0..replies.len())
                .filter(|i| {
                    matches!(
                        replies[*i],
                        Err(TransportError::Disconnected(_) | TransportError::UnknownPeer(_))
                    )
                })
                .collect();
            if failed.is_empty() {
                break;
            }
            let pause = self.inner.timer.now() + Duration::from_millis(200);
            self.inner.timer.sleep_until(pause).await;
            for i in failed {
                replies[i] = self
                    .inner
                    .transport
                    .request_on(
                        self.inner.config.control,
                        asked[i].node,
                        message.clone(),
                        self.inner.config.request_timeout,
                    )
                    .await;
            }
        }
        let mut last_error = None;
        for (m, reply) in asked.iter().zip(replies) {
            let decoded =
                reply.map(|r| encoding::decode_with_limit::<ControlReply>(&r, MAX_CONTROL_LEN));
            let consent = match decoded {
                Ok(Ok(ControlReply::Consent(c))) => {
                    match Signed::<ConsensusProposal>::decode(&c, &self.inner.federation) {
                        Ok(c) => c,
                        Err(e) => {
                            last_error = Some(format!("{}: a bad consent: {e}", m.node));
                            continue;
                        }
                    }
                }
                Ok(Ok(ControlReply::Error(e))) => {
                    last_error = Some(format!("{}: {e}", m.node));
                    continue;
                }
                Ok(Ok(ControlReply::KeyEpochs(_))) => {
                    last_error = Some(format!("{}: an answer that is not a consent", m.node));
                    continue;
                }
                Ok(Err(e)) => {
                    last_error = Some(format!("{}: a malformed reply: {e}", m.node));
                    continue;
                }
                Err(e) => {
                    last_error = Some(format!("{}: {e}", m.node));
                    continue;
                }
            };
            let org = match consent.open(&self.inner.federation) {
                Ok(ConsensusProposal { kind: ProposalKind::Consent(c), .. })
                    if consent.signer() == m.node =>
                {
                    c.org.clone()
                }
                _ => {
                    last_error = Some(format!("{}: an answer that is not its consent", m.node));
                    continue;
                }
            };
            if needed.contains(&org) {
                answers.entry(org).or_insert(consent);
            }
        }
        Ok((answers, last_error))
    }

    /// Proposes `proposal` to `hosted`'s group, gathers the consents it needs from `asked`,
    /// submits them, and waits for the registry to execute it.
    async fn decide(
        &self,
        hosted: &Hosted,
        proposal: Signed<ConsensusProposal>,
        asked: &[Member],
    ) -> Result<ExecutedOperation, FederationError> {
        let id = proposal_id(&proposal)?;
        self.propose(hosted, proposal.clone()).await?;
        let needed = hosted.registry.lock().pending_operation(&id).map(|p| p.involved.clone());
        if let Some(needed) = needed {
            let (answers, why) =
                self.gather(hosted, &proposal, &hosted.creation, asked, &needed).await?;
            // Refusals too: they reject the operation on every member, and are audited. All
            // at once: the group appends them together.
            self.submit_all(hosted, answers.values()).await?;
            let missing: Vec<String> = needed
                .iter()
                .filter(|o| !answers.contains_key(*o))
                .map(ToString::to_string)
                .collect();
            let still_pending = hosted.registry.lock().pending_operation(&id).is_some();
            if !missing.is_empty() && still_pending {
                return Err(FederationError::Rejected(format!(
                    "no consent from {} ({}); the proposal stays pending until its deadline",
                    missing.join(", "),
                    why.unwrap_or_else(|| "no node answered".into())
                )));
            }
        }
        self.await_executed(hosted, &id).await
    }

    /// Submits a signed proposal (a consent an organization's node made, say) to `branch`'s
    /// log as it is, and returns the registry's outcome for it: how a host relays consents
    /// it collected itself, and how tests show that forged, stale or replayed ones count for
    /// nothing.
    pub async fn submit(
        &self,
        branch: &BranchName,
        consent: Signed<ConsensusProposal>,
    ) -> Result<Outcome, FederationError> {
        let hosted = self.hosted(branch)?;
        let result = hosted.engine.propose(consent, self.inner.config.decision_timeout).await?;
        Ok(result.outcome)
    }

    async fn submit_all(
        &self,
        hosted: &Hosted,
        consents: impl Iterator<Item = &Signed<ConsensusProposal>>,
    ) -> Result<(), FederationError> {
        let timeout = self.inner.config.decision_timeout;
        let proposals = consents.map(|c| hosted.engine.propose(c.clone(), timeout));
        for result in futures_util::future::join_all(proposals).await {
            result?;
        }
        Ok(())
    }

    /// This node's organization's answer to `proposal`, signed: evaluated with the local
    /// security manager, given the branch if this node hosts it, and the creation entry of
    /// the proposal's group (how a node answers for a merge into a branch it does not host).
    /// A merge's change set is in the proposal: the answer covers exactly it.
    fn evaluate(
        &self,
        proposal: &Signed<ConsensusProposal>,
        hosted: Option<&Hosted>,
        creation: &Signed<ConsensusProposal>,
    ) -> Result<Signed<ConsensusProposal>, FederationError> {
        let value = proposal
            .open(&self.inner.federation)
            .map_err(|_| FederationError::Invalid("a proposal of another federation".into()))?;
        let id = proposal_id(proposal)?;
        let now = self.now();
        let requester = proposal.signer();
        let mut heads = Vec::new();
        let verdict = match &value.kind {
            ProposalKind::BranchCreation(c) => {
                let d = self.inner.security.validate_branch_request(&c.request, now)?;
                self.own_verdict(&d)
            }
            ProposalKind::FederatedMerge(m) => {
                heads = merge_heads(&m.source_heads, &m.target_heads);
                let target = match creation.open(&self.inner.federation).map(|c| (c.group, &c.kind))
                {
                    // The creation names the group, and the group is its hash.
                    Ok((group, ProposalKind::BranchCreation(c)))
                        if group == value.group && c.group_id().ok() == Some(value.group) =>
                    {
                        c.request.branch.clone()
                    }
                    _ => {
                        return Err(FederationError::Invalid(
                            "the creation is not the target's".into(),
                        ));
                    }
                };
                let merge = CrossFederationMerge {
                    requester,
                    source: BranchRef {
                        federation: self.inner.federation,
                        branch: m.source_branch.clone(),
                    },
                    target: BranchRef { federation: self.inner.federation, branch: target },
                    predicates: predicates_of(&m.changes),
                };
                let d = self.inner.security.validate_cross_federation_merge(&merge, now)?;
                self.own_verdict(&d)
            }
            ProposalKind::NodeJoin(j) => {
                let branch = hosted.and_then(Hosted::branch);
                match branch {
                    Some(b) if b.organizations.contains(&j.member.org) => ConsentVerdict::Approve,
                    Some(b) if j.member.node != self.node_id() => {
                        let change = MembershipChange {
                            requester,
                            branch: BranchRef { federation: b.federation, branch: b.branch },
                            org: j.member.org.clone(),
                            joins: true,
                            issuer: None,
                        };
                        let d = self.inner.security.validate_membership_change(&change, now)?;
                        self.own_verdict(&d)
                    }
                    // The joining node itself agrees to hold the branch.
                    _ if j.member.node == self.node_id() => ConsentVerdict::Approve,
                    _ => ConsentVerdict::Refuse { reason: "the branch is not known here".into() },
                }
            }
            ProposalKind::NodeLeave(l) => {
                let branch = hosted.and_then(Hosted::branch);
                match branch {
                    Some(b) => {
                        let org =
                            b.members.iter().find(|m| m.node == l.node).map(|m| m.org.clone());
                        let org_leaves = org
                            .as_ref()
                            .is_some_and(|o| b.members.iter().filter(|m| &m.org == o).count() == 1);
                        match org {
                            Some(org) if org_leaves => {
                                let change = MembershipChange {
                                    requester,
                                    branch: BranchRef {
                                        federation: b.federation,
                                        branch: b.branch,
                                    },
                                    org,
                                    joins: false,
                                    issuer: None,
                                };
                                let d =
                                    self.inner.security.validate_membership_change(&change, now)?;
                                self.own_verdict(&d)
                            }
                            Some(_) => ConsentVerdict::Approve,
                            None => ConsentVerdict::Refuse { reason: "not a member".into() },
                        }
                    }
                    None => {
                        ConsentVerdict::Refuse { reason: "the branch is not known here".into() }
                    }
                }
            }
            _ => ConsentVerdict::Refuse {
                reason: "this node does not evaluate such proposals".into(),
            },
        };
        let consent = Consent {
            proposal: id,
            heads,
            org: self.org().clone(),
            verdict,
            certificate: self.inner.identity.certificate.clone(),
        };
        self.sign(value.group, ProposalKind::Consent(consent), self.inner.config.decision_timeout)
    }

    fn own_verdict(&self, decision: &SecurityDecision) -> ConsentVerdict {
        let mine = decision.verdicts().iter().find(|v| &v.org == self.org());
        match mine.map(|v| &v.verdict) {
            Some(Verdict::Approved { .. }) => ConsentVerdict::Approve,
            Some(Verdict::Refused { reason, .. }) => {
                ConsentVerdict::Refuse { reason: bounded_reason(reason.clone()) }
            }
            Some(Verdict::Pending { reason }) => ConsentVerdict::Refuse {
                reason: bounded_reason(format!("not approved here: {reason}")),
            },
            None if decision.is_refused() => {
                ConsentVerdict::Refuse { reason: bounded_reason(decision.to_string()) }
            }
            None => ConsentVerdict::Approve,
        }
    }

    /// Waits until `check` answers (it is asked whenever the branch's registry or replica
    /// changes), or `timeout` passes.
    async fn until<T>(
        &self,
        hosted: &Hosted,
        timeout: Duration,
        check: impl Fn(&Hosted) -> Option<Result<T, FederationError>>,
    ) -> Result<T, FederationError> {
        let deadline = self.inner.timer.now() + timeout;
        loop {
            let listener = hosted.changed.listen();
            if let Some(answer) = check(hosted) {
                return answer;
            }
            if self.inner.timer.now() >= deadline {
                return Err(FederationError::Timeout(timeout));
            }
            let _ = select(listener, self.inner.timer.sleep_until(deadline)).await;
        }
    }

    async fn await_executed(
        &self,
        hosted: &Hosted,
        id: &ProposalId,
    ) -> Result<ExecutedOperation, FederationError> {
        self.until(hosted, self.inner.config.decision_timeout, |h| {
            if let Some(e) = h.registry.lock().executed(id).cloned() {
                return Some(Ok(e));
            }
            let st = h.state();
            if let Some(reason) = st.rejected.get(id) {
                return Some(Err(FederationError::Rejected(reason.clone())));
            }
            st.stopped.then(|| Err(FederationError::Rejected("this node left the branch".into())))
        })
        .await
    }

    async fn await_seeded(&self, hosted: &Hosted) -> Result<(), FederationError> {
        self.until(hosted, self.inner.config.ready_timeout, |h| {
            h.state().seed.is_none().then_some(Ok(()))
        })
        .await
    }

    /// Synchronizes with every member until all report the same state root (`root`, if
    /// given).
    async fn await_ready(
        &self,
        hosted: &Hosted,
        root: Option<StateRoot>,
    ) -> Result<FederatedSyncResult, FederationError> {
        let timeout = self.inner.config.ready_timeout;
        let deadline = self.inner.timer.now() + timeout;
        loop {
            let result = self.sync_once(hosted, Duration::from_secs(5)).await?;
            let agreed = result.failures.is_empty()
                && result.nodes.iter().all(|n| n.state_root == Some(result.state_root))
                && root.is_none_or(|r| r == result.state_root);
            if agreed {
                return Ok(result);
            }
            if self.inner.timer.now() >= deadline {
                return Err(FederationError::Timeout(timeout));
            }
            let pause = self.inner.timer.now() + Duration::from_millis(10);
            self.inner.timer.sleep_until(pause).await;
        }
    }

    async fn sync_once(
        &self,
        hosted: &Hosted,
        timeout: Duration,
    ) -> Result<FederatedSyncResult, FederationError> {
        let me = self.node_id();
        let peers: Vec<NodeId> =
            hosted.registry.lock().members().iter().map(|m| m.node).filter(|n| *n != me).collect();
        let options = FederatedSyncOptions::default().with_peers(peers).with_timeout(timeout);
        Ok(hosted.sync.synchronize(options).await?)
    }

    // ---------------------------------------------------------------------------------
    // Writes, sync, merges, membership
    // ---------------------------------------------------------------------------------

    /// Writes `changes` to `branch` on this node (durable when it returns); it reaches the
    /// other replicas through the branch's sync strategy. Refused unless this node is a
    /// member and the branch's policy lets its organization write.
    pub async fn write(
        &self,
        branch: &BranchName,
        changes: ChangeSet,
        message: impl Into<String>,
    ) -> Result<CommitId, FederationError> {
        let hosted = self.hosted(branch)?;
        let b = hosted
            .branch()
            .filter(|_| hosted.registry.lock().is_active())
            .ok_or_else(|| FederationError::NotPermitted("the branch is not active".into()))?;
        let me = self.node_id();
        if !b.members.iter().any(|m| m.node == me) {
            return Err(FederationError::NotPermitted("this node is not a member".into()));
        }
        if !b.policy.write.allows(self.org(), &b.organizations) {
            return Err(FederationError::NotPermitted(format!("{} may not write", self.org())));
        }
        Ok(hosted.sync.write(changes, message.into()).await?)
    }

    /// Runs `branch`'s sync strategy with every other member, for up to `timeout`, and
    /// reports what moved.
    pub async fn synchronize_federated_branch(
        &self,
        branch: &BranchName,
        timeout: Duration,
    ) -> Result<FederatedSyncResult, FederationError> {
        let hosted = self.hosted(branch)?;
        self.sync_once(&hosted, timeout).await
    }

    /// Synchronizes `branch` until every member reports the same state root (or the ready
    /// timeout passes).
    pub async fn converge(
        &self,
        branch: &BranchName,
    ) -> Result<FederatedSyncResult, FederationError> {
        let hosted = self.hosted(branch)?;
        self.await_ready(&hosted, None).await
    }

    /// Merges `source` into `target` (both hosted here): the change set is computed from the
    /// two states under `policy`, proposed in `target`'s group, and executed once the
    /// organizations of both branches consented as the target's rules demand. Returns when
    /// this node's replica holds the merge.
    pub async fn merge_federated_branches(
        &self,
        source: &BranchName,
        target: &BranchName,
        policy: FederatedMergePolicy,
    ) -> Result<FederatedMergeResult, FederationError> {
        let (s, t) = (self.hosted(source)?, self.hosted(target)?);
        let (sb, tb) = match (s.branch(), t.branch()) {
            (Some(sb), Some(tb)) => (sb, tb),
            _ => return Err(FederationError::NotPermitted("both branches must be active".into())),
        };
        let me = self.node_id();
        if !tb.members.iter().any(|m| m.node == me) {
            return Err(FederationError::NotPermitted(
                "this node is not a member of the target".into(),
            ));
        }
        let (source_heads, source_state) = s.sync.state().await?;
        let (target_heads, target_state) = t.sync.state().await?;
        let (changes, conflicts) = plan_merge(&source_state, &target_state, &policy);
        let mut result_state = target_state;
        result_state
            .apply(&changes)
            .map_err(|e| FederationError::Invalid(format!("the merge does not apply: {e}")))?;
        let result_root = result_state.state_root();
        let request = CrossFederationMerge {
            requester: me,
            source: BranchRef { federation: self.inner.federation, branch: source.clone() },
            target: BranchRef { federation: self.inner.federation, branch: target.clone() },
            predicates: predicates_of(&changes),
        };
        let decision = self.inner.security.validate_cross_federation_merge(&request, self.now())?;
        if decision.is_refused() {
            return Err(FederationError::NotAuthorized(decision));
        }
        let source_orgs: Directory = {
            let reg = s.registry.lock();
            sb.organizations
                .iter()
                .filter_map(|o| reg.directory().get(o).map(|r| (o.clone(), *r)))
                .collect()
        };
        let (added, removed) = (changes.added().len() as u64, changes.removed().len() as u64);
        let timestamp = t.sync.next_timestamp().await?;
        let mut merge = FederatedMerge {
            source_group: sb.group,
            source_branch: source.clone(),
            source_heads,
            target_heads,
            source_orgs,
            policy,
            changes,
            result_root,
            commit: MergeCommit {
                author: me,
                org: self.org().clone(),
                timestamp,
                signature: [0; 64],
            },
        };
        // The merge's commit, under a key of its own derived from this node's secret and
        // everything the commit says (distinct for every merge, reproducible).
        let merge_key = {
            let draft = encoding::try_encode(&merge)
                .map_err(|e| FederationError::Invalid(format!("the merge: {e}")))?;
            let mut material = self.inner.identity.keypair.secret_bytes().to_vec();
            material.extend_from_slice(&draft);
            NodeKeypair::from_secret_bytes(encoding::hash_bytes(MERGE_KEY_DOMAIN, &material))
        };
        merge
            .sign_commit(&merge_key)
            .map_err(|e| FederationError::Invalid(format!("the merge's commit: {e}")))?;
        let signed = self.sign(
            tb.group,
            ProposalKind::FederatedMerge(merge),
            self.inner.config.decision_timeout,
        )?;
        let id = proposal_id(&signed)?;
        // Ask one node per involved organization: members of either branch.
        let mut asked: Vec<Member> = Vec::new();
        let mut seen = BTreeSet::new();
        seen.insert(self.org().clone());
        for m in tb.members.iter().chain(&sb.members) {
            if m.node != me && seen.insert(m.org.clone()) {
                asked.push(m.clone());
            }
        }
        let executed = self.decide(&t, signed, &asked).await?;
        self.await_merged(&t, &id).await?;
        Ok(FederatedMergeResult {
            proposal: id,
            index: executed.index,
            approved_by: executed.approved_by,
            added,
            removed,
            conflicts,
            state_root: result_root,
        })
    }

    async fn await_merged(&self, hosted: &Hosted, id: &ProposalId) -> Result<(), FederationError> {
        self.until(hosted, self.inner.config.ready_timeout, |h| {
            h.state().merged.contains(id).then_some(Ok(()))
        })
        .await
    }

    /// Proposes that `node` (whose certificate this node knows) joins `branch`; returns once
    /// the registry executed it. The node starts hosting when it consents, catches up as a
    /// learner, and votes once caught up.
    pub async fn join(
        &self,
        branch: &BranchName,
        node: NodeId,
    ) -> Result<ExecutedOperation, FederationError> {
        let hosted = self.hosted(branch)?;
        let b = hosted.branch().ok_or_else(|| FederationError::UnknownBranch(branch.clone()))?;
        let cert = lock(&self.inner.known)
            .get(&node)
            .cloned()
            .ok_or_else(|| FederationError::Invalid(format!("no certificate known for {node}")))?;
        let org = cert.org().clone();
        let root: Option<OrgRootKey> = (!b.organizations.contains(&org)).then(|| cert.root());
        let join = NodeJoin { member: Member { node, org: org.clone() }, root };
        let signed =
            self.sign(b.group, ProposalKind::NodeJoin(join), self.inner.config.decision_timeout)?;
        let mut asked = vec![Member { node, org: org.clone() }];
        let mut seen: BTreeSet<OrgId> = [self.org().clone(), org].into_iter().collect();
        for m in &b.members {
            if m.node != self.node_id() && seen.insert(m.org.clone()) {
                asked.push(m.clone());
            }
        }
        self.decide(&hosted, signed, &asked).await
    }

    /// Proposes that `node` leaves `branch` (this node itself: at once, no approvals
    /// needed); returns once the registry executed it.
    pub async fn leave(
        &self,
        branch: &BranchName,
        node: NodeId,
    ) -> Result<ExecutedOperation, FederationError> {
        let hosted = self.hosted(branch)?;
        let b = hosted.branch().ok_or_else(|| FederationError::UnknownBranch(branch.clone()))?;
        let signed = self.sign(
            b.group,
            ProposalKind::NodeLeave(NodeLeave { node }),
            self.inner.config.decision_timeout,
        )?;
        let mut asked = Vec::new();
        if node != self.node_id() {
            let leaving_org = b.members.iter().find(|m| m.node == node).map(|m| m.org.clone());
            let mut seen: BTreeSet<OrgId> = [self.org().clone()].into_iter().collect();
            for m in &b.members {
                if m.node != self.node_id()
                    && m.node != node
                    && Some(&m.org) != leaving_org.as_ref()
                    && seen.insert(m.org.clone())
                {
                    asked.push(m.clone());
                }
            }
            // Another node of the leaving node's organization answers for it, if any.
            if let Some(o) = &leaving_org
                && let Some(m) = b
                    .members
                    .iter()
                    .find(|m| &m.org == o && m.node != node && m.node != self.node_id())
                && seen.insert(o.clone())
            {
                asked.push(m.clone());
            }
        }
        self.decide(&hosted, signed, &asked).await
    }

    // ---------------------------------------------------------------------------------
    // Background tasks
    // ---------------------------------------------------------------------------------

    async fn serve(&self) {
        loop {
            let incoming = match self.inner.transport.recv_on(self.inner.config.control).await {
                Ok(i) => i,
                Err(TransportError::Closed) => return,
                Err(_) => continue,
            };
            let Incoming::Request { from, id, payload } = incoming else {
                continue;
            };
            let reply = match self.answer(from, &payload) {
                Ok(reply) => reply,
                Err(e) => ControlReply::Error(bounded_reason(e.to_string())),
            };
            if let Ok(bytes) = encoding::try_encode(&reply) {
                let _ = self.inner.transport.respond(from, id, bytes).await;
            }
        }
    }

    /// Answers a control request from `from`.
    fn answer(&self, from: NodeId, payload: &[u8]) -> Result<ControlReply, FederationError> {
        if self.is_shut() {
            return Err(FederationError::Rejected("this node is shut down".into()));
        }
        match encoding::decode_with_limit::<Control>(payload, MAX_CONTROL_LEN)
            .map_err(|e| FederationError::Invalid(format!("malformed request: {e}")))?
        {
            Control::Consent { proposal, creation } => {
                self.answer_consent(from, proposal, creation).map(ControlReply::Consent)
            }
            Control::KeyEpochs { group } => self.answer_key_epochs(from, group),
        }
    }

    /// Hands the data-key epochs of a sealed branch to a member of its group (they are
    /// signed and wrapped for each member: only members can use them, but only members are
    /// told).
    fn answer_key_epochs(
        &self,
        from: NodeId,
        group: GroupId,
    ) -> Result<ControlReply, FederationError> {
        let hosted = lock(&self.inner.branches).values().find(|h| h.spec.group == group).cloned();
        let Some(hosted) = hosted else {
            return Err(FederationError::Invalid("this node does not host that group".into()));
        };
        if !hosted.registry.lock().members().iter().any(|m| m.node == from) {
            return Err(FederationError::NotPermitted("not a member of the group".into()));
        }
        let branch =
            BranchRef { federation: self.inner.federation, branch: hosted.spec.branch.clone() };
        let mut epochs = self.inner.security.key_epochs(&branch);
        let skip = epochs.len().saturating_sub(MAX_KEY_EPOCHS);
        epochs.drain(..skip);
        Ok(ControlReply::KeyEpochs(epochs))
    }

    /// Asks the other members of a sealed branch, one after another, for the data-key epoch
    /// this node waits for, until one answer brings it.
    async fn fetch_key_epochs(&self, hosted: &Hosted) {
        let branch =
            BranchRef { federation: self.inner.federation, branch: hosted.spec.branch.clone() };
        let me = self.node_id();
        let members: Vec<NodeId> =
            hosted.registry.lock().members().iter().map(|m| m.node).filter(|n| *n != me).collect();
        let Ok(message) = encoding::try_encode(&Control::KeyEpochs { group: hosted.spec.group })
        else {
            return;
        };
        for node in members {
            if !self.inner.security.awaits_key_epoch(&branch) {
                return;
            }
            let reply = self
                .inner
                .transport
                .request_on(
                    self.inner.config.control,
                    node,
                    message.clone(),
                    self.inner.config.request_timeout,
                )
                .await;
            let Ok(bytes) = reply else { continue };
            if let Ok(ControlReply::KeyEpochs(epochs)) =
                encoding::decode_with_limit::<ControlReply>(&bytes, MAX_CONTROL_LEN)
                && epochs.len() <= MAX_KEY_EPOCHS
            {
                // A refusal (an epoch for other members than this node knows yet) is audited
                // by the manager; another member, or the next round, is asked.
                let _ = self.inner.security.accept_key_epochs(&branch, &epochs, self.now());
            }
        }
    }

    /// Answers a consent request from `from`: evaluates it and, for a creation or a join of
    /// this node that it approves, starts hosting the branch.
    fn answer_consent(
        &self,
        from: NodeId,
        proposal: Vec<u8>,
        creation: Vec<u8>,
    ) -> Result<Vec<u8>, FederationError> {
        let fed = &self.inner.federation;
        let proposal = Signed::<ConsensusProposal>::decode(&proposal, fed)
            .map_err(|e| FederationError::Invalid(format!("bad proposal: {e}")))?;
        let creation = Signed::<ConsensusProposal>::decode(&creation, fed)
            .map_err(|e| FederationError::Invalid(format!("bad creation: {e}")))?;
        if proposal.signer() != from {
            return Err(FederationError::Invalid("the proposal is not the requester's".into()));
        }
        let value =
            proposal.open(fed).map_err(|_| FederationError::Invalid("federation".into()))?;
        let me = self.node_id();
        let hosted =
            lock(&self.inner.branches).values().find(|h| h.spec.group == value.group).cloned();
        match &value.kind {
            ProposalKind::BranchCreation(c) => {
                if proposal != creation {
                    return Err(FederationError::Invalid("the creation differs".into()));
                }
                if !c.members.iter().any(|m| m.node == me) {
                    return Err(FederationError::Invalid("this node is not a member".into()));
                }
                let consent = self.evaluate(&proposal, hosted.as_deref(), &creation)?;
                if approves(&consent, fed) && hosted.is_none() {
                    self.host(&creation, true)?.state().invited = true;
                }
                encoded(&consent)
            }
            ProposalKind::NodeJoin(j) if j.member.node == me && hosted.is_none() => {
                let consent = self.evaluate(&proposal, None, &creation)?;
                let joined = self.host(&creation, false)?;
                joined.state().joining = Some(proposal_id(&proposal)?);
                encoded(&consent)
            }
            // A merge may concern a target this node does not host (it answers for the
            // source's organization): it is evaluated against the creation sent along.
            _ => match &hosted {
                Some(h) => encoded(&self.evaluate(&proposal, Some(h), &h.creation)?),
                None => encoded(&self.evaluate(&proposal, None, &creation)?),
            },
        }
    }

    /// Follows `hosted`'s decided log: records every decision in the audit trail and carries
    /// out executed operations' effects on this node.
    async fn pump(&self, hosted: Arc<Hosted>) {
        loop {
            let entry = match hosted.engine.next_decided().await {
                Ok(e) => e,
                Err(ConsensusError::Lagged { .. }) => continue,
                Err(_) => return,
            };
            let now = self.now();
            let branch_ref =
                BranchRef { federation: self.inner.federation, branch: hosted.spec.branch.clone() };
            // A log replayed after a restart or a re-join is not decided again: record each
            // entry once (at most the last one again, after a crash between the two writes).
            let recorded = hosted.state().recorded;
            let fresh = entry.index > recorded;
            if fresh && let Ok(id) = ProposalId::of(&entry.proposal) {
                let outcome = match &entry.outcome {
                    Outcome::Approved => "approved".to_string(),
                    Outcome::Pending { awaiting } => format!(
                        "pending, awaiting {}",
                        awaiting.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ),
                    Outcome::Rejected { reason } => format!("rejected: {reason}"),
                };
                let record = DecisionRecord {
                    group: *hosted.spec.group.as_bytes(),
                    index: entry.index,
                    proposal: *id.as_bytes(),
                    outcome: format!(
                        "{}: {outcome}",
                        kind_name(&entry.proposal, &self.inner.federation)
                    ),
                };
                let _ = self.inner.security.record_decision(&branch_ref, &record, now);
            }
            let events = hosted.registry.lock().take_events();
            for event in events {
                self.on_event(&hosted, &branch_ref, event, recorded).await;
            }
            if fresh {
                hosted.state().recorded = entry.index;
                let _ = self.inner.backend.set_recorded(&hosted.spec.group, entry.index);
            }
            hosted.changed.notify(usize::MAX);
            if hosted.state().stopped {
                return;
            }
        }
    }

    /// Handles one registry event; decisions at indexes up to `recorded` were recorded
    /// before (a replayed log) and are not recorded again.
    async fn on_event(
        &self,
        hosted: &Arc<Hosted>,
        branch_ref: &BranchRef,
        event: RegistryEvent,
        recorded: u64,
    ) {
        let now = self.now();
        match event {
            RegistryEvent::Rejected { proposal, index, reason } => {
                let record = DecisionRecord {
                    group: *hosted.spec.group.as_bytes(),
                    index,
                    proposal: *proposal.as_bytes(),
                    outcome: format!("rejected: {reason}"),
                };
                if index > recorded {
                    let _ = self.inner.security.record_decision(branch_ref, &record, now);
                }
                let mut st = hosted.state();
                if st.rejected.len() >= 4096
                    && let Some(first) = st.rejected.keys().next().copied()
                {
                    st.rejected.remove(&first);
                }
                st.rejected.insert(proposal, reason);
            }
            RegistryEvent::Executed(op) => {
                let record = DecisionRecord {
                    group: *hosted.spec.group.as_bytes(),
                    index: op.index,
                    proposal: *op.proposal.as_bytes(),
                    outcome: format!(
                        "executed, approved by {}",
                        op.approved_by
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                if op.index > recorded {
                    let _ = self.inner.security.record_decision(branch_ref, &record, now);
                }
                self.execute(hosted, branch_ref, &op, op.index > recorded).await;
            }
            _ => {}
        }
    }

    /// Carries out an executed operation on this node; `fresh` is false for an operation
    /// replayed from the log (after a restart), whose effects elsewhere already happened.
    async fn execute(
        &self,
        hosted: &Arc<Hosted>,
        branch_ref: &BranchRef,
        op: &ExecutedOperation,
        fresh: bool,
    ) {
        let now = self.now();
        let me = self.node_id();
        match &op.kind {
            ProposalKind::BranchCreation(c) => {
                // Every node hosting it holds its security context (an existing one is kept).
                let _ = self.inner.security.create_security_context(&c.request, now);
                let seed = hosted.state().seed.take();
                if let Some(seed) = seed {
                    let budget =
                        SEED_COMMIT_BYTES.min(self.inner.transport.max_message_len() / 4).max(1);
                    for chunk in seed_chunks(&seed, budget, SEED_CHUNK) {
                        let changes = ChangeSet::adding(chunk.iter().cloned());
                        match hosted.sync.write(changes, "source snapshot".into()).await {
                            Ok(_) | Err(SyncError::NothingToCommit) => {}
                            Err(_) => break,
                        }
                    }
                    hosted.changed.notify(usize::MAX);
                }
            }
            ProposalKind::FederatedMerge(m) => {
                // Every replica takes the same commit, the one the merge carries (verified when
                // the registry admitted the proposal); a replica that lacks its parents still
                // keeps it until they arrive.
                let taken = match m.signed_commit() {
                    Ok(commit) => hosted.sync.adopt(commit.encode()).await.is_ok(),
                    Err(_) => false,
                };
                if taken {
                    hosted.state().merged.insert(op.proposal);
                }
            }
            ProposalKind::NodeJoin(j) => {
                let branch = hosted.branch();
                let org_is_new = branch.as_ref().is_some_and(|b| {
                    b.members.iter().filter(|m| m.org == j.member.org).count() == 1
                });
                // On the joining node too: its context, made from the creation entry, must
                // list its own organization (a sealed branch's key epoch for the new members
                // is accepted only if it does).
                if org_is_new {
                    let change = MembershipChange {
                        requester: op.proposer,
                        branch: branch_ref.clone(),
                        org: j.member.org.clone(),
                        joins: true,
                        issuer: fresh.then(|| epoch_issuer(&hosted.registry.lock(), op)),
                    };
                    let _ = self.inner.security.apply_membership_change(&change, now);
                }
            }
            ProposalKind::NodeLeave(l) => {
                if l.node == me {
                    // The reconciler drops the branch once the registry, caught up, no longer
                    // lists this node (a replayed leave followed by a re-join must not).
                    hosted.changed.notify(usize::MAX);
                    return;
                }
                let org = hosted.org_of_member(&l.node);
                let still = hosted
                    .branch()
                    .is_some_and(|b| org.as_ref().is_some_and(|o| b.organizations.contains(o)));
                if let Some(org) = org.filter(|_| !still) {
                    let change = MembershipChange {
                        requester: op.proposer,
                        branch: branch_ref.clone(),
                        org,
                        joins: false,
                        issuer: fresh.then(|| epoch_issuer(&hosted.registry.lock(), op)),
                    };
                    let _ = self.inner.security.apply_membership_change(&change, now);
                }
            }
            _ => {}
        }
    }

    /// Keeps the group's consensus membership equal to the registry's members: the leader
    /// adds new members as learners, makes caught-up learners voters, and removes departed
    /// members.
    async fn reconcile(&self, hosted: Arc<Hosted>) {
        loop {
            if hosted.state().stopped {
                return;
            }
            let pause = self.inner.timer.now() + self.inner.config.reconcile_every;
            let listener = hosted.changed.listen();
            let _ = select(listener, self.inner.timer.sleep_until(pause)).await;
            // A branch whose creation was rejected is dropped, and so is one this node was
            // invited to whose creation never reached it by the deadline (a restored or a
            // joining node waits for its log however long it takes).
            let deadline = hosted.creation.open(&self.inner.federation).map(|p| p.deadline).ok();
            let creation_id = ProposalId::of(&hosted.creation).ok();
            let abandoned = {
                let st = hosted.state();
                let rejected = creation_id.is_some_and(|id| st.rejected.contains_key(&id));
                let unheard = st.invited
                    && hosted.registry.lock().applied() == 0
                    && deadline
                        .is_some_and(|d| self.now() > d.saturating_add(Duration::from_secs(1)));
                rejected || unheard
            };
            if abandoned {
                self.unhost(&hosted.spec.branch);
                return;
            }
            let request = match &hosted.creation.open(&self.inner.federation).map(|p| &p.kind) {
                Ok(ProposalKind::BranchCreation(c)) => Some(c.request.clone()),
                _ => None,
            };
            if hosted.registry.lock().is_active() && !hosted.state().context_ready {
                // After a restart from a snapshot no event recreates it: do it here (an
                // existing context is kept).
                if let Some(request) = request {
                    let _ = self.inner.security.create_security_context(&request, self.now());
                }
                hosted.state().context_ready = true;
            }
            if self.departed(&hosted) {
                self.unhost(&hosted.spec.branch);
                return;
            }
            let branch =
                BranchRef { federation: self.inner.federation, branch: hosted.spec.branch.clone() };
            if hosted.registry.lock().is_active() && self.inner.security.awaits_key_epoch(&branch) {
                self.fetch_key_epochs(&hosted).await;
            }
            if hosted.engine.health().leader != Some(self.node_id()) {
                continue;
            }
            let desired: Vec<Member> = hosted.registry.lock().members().to_vec();
            if desired.is_empty() {
                continue;
            }
            let current = hosted.engine.membership();
            let want: BTreeSet<NodeId> = desired.iter().map(|m| m.node).collect();
            let voters: BTreeSet<NodeId> = current.voters().iter().map(|m| m.node).collect();
            let learners: BTreeSet<NodeId> = current.learners().iter().map(|m| m.node).collect();
            if want == voters && learners.is_empty() {
                continue;
            }
            // First step: departed out, newcomers in as learners. Then: learners vote.
            let step_voters: Vec<Member> =
                desired.iter().filter(|m| voters.contains(&m.node)).cloned().collect();
            let step_learners: Vec<Member> =
                desired.iter().filter(|m| !voters.contains(&m.node)).cloned().collect();
            let needs_first = voters.iter().any(|v| !want.contains(v))
                || step_learners.iter().any(|m| !learners.contains(&m.node))
                || learners.iter().any(|l| !want.contains(l));
            let target = if needs_first && !step_voters.is_empty() {
                Membership::new(hosted.spec.group, step_voters, step_learners)
            } else {
                Membership::new(hosted.spec.group, desired.clone(), Vec::new())
            };
            if let Ok(target) = target {
                let _ = hosted.engine.change_membership(target).await;
            }
        }
    }
}

impl FederatedBranchingSystem {
    /// Whether this node is out of `hosted`'s group for good: the branch is active, this
    /// node is not a member, and no join of it is still to be decided.
    fn departed(&self, hosted: &Hosted) -> bool {
        let me = self.node_id();
        let reg = hosted.registry.lock();
        if !reg.is_active() || reg.members().iter().any(|m| m.node == me) {
            return false;
        }
        let joining = hosted.state().joining;
        match joining {
            None => true,
            Some(j) => reg.executed(&j).is_some() || hosted.state().rejected.contains_key(&j),
        }
    }
}

impl Hosted {
    /// The organization `node` was a member for (from the creation or its join): still known
    /// after it left.
    fn org_of_member(&self, node: &NodeId) -> Option<OrgId> {
        let reg = self.registry.lock();
        if let Some(m) = reg.members().iter().find(|m| m.node == *node) {
            return Some(m.org.clone());
        }
        reg.history().iter().rev().find_map(|e| match &e.kind {
            ProposalKind::NodeJoin(j) if j.member.node == *node => Some(j.member.org.clone()),
            ProposalKind::BranchCreation(c) => {
                c.members.iter().find(|m| m.node == *node).map(|m| m.org.clone())
            }
            _ => None,
        })
    }
}

/// Checks commits received for a hosted branch: the author has not left the branch before
/// the commit's time, and the security manager's commit policy for the branch admits it.
struct MemberPolicy {
    registry: SharedRegistry,
    security: Arc<dyn SecurityManager>,
    branch: BranchRef,
}

impl CommitPolicy for MemberPolicy {
    fn check(&self, commit: &crate::SignedCommit) -> Result<(), CommitRefusal> {
        let author = commit.commit().author();
        let refuse = |reason: &str| CommitRefusal::AccessDenied { author, reason: reason.into() };
        {
            // The registry knows who left, and when: what a departed node signs afterwards
            // is refused. Anyone else is judged by the security manager (certified by a
            // participant's root, permitted by the organizations whose data it touches) — also
            // while the registry is still being restored after a restart.
            let reg = self.registry.lock();
            let is_member = reg.members().iter().any(|m| m.node == author);
            let left_at = reg.history().iter().rev().find_map(|e| match &e.kind {
                ProposalKind::NodeLeave(l) if l.node == author => Some(e.executed_at),
                _ => None,
            });
            if !is_member && left_at.is_some_and(|at| commit.commit().timestamp() >= at) {
                return Err(refuse("written after its author left the branch"));
            }
            // A merge's own commit: admitted exactly as the executed merge names it, and not
            // before this node's registry executed it.
            if !is_member {
                let merge = reg.history().iter().find_map(|e| match &e.kind {
                    ProposalKind::FederatedMerge(m) if m.commit.author == author => Some(m),
                    _ => None,
                });
                if let Some(m) = merge {
                    let c = &m.commit;
                    let expected = m.unsigned_commit(c.author, c.org.clone(), c.timestamp);
                    return match expected {
                        Ok(e) if e.id() == commit.id() => Ok(()),
                        _ => Err(refuse("signed with a merge's key but not that merge's commit")),
                    };
                }
                let pending = reg.pending().any(|p| {
                    matches!(&p.kind, ProposalKind::FederatedMerge(m) if m.commit.author == author)
                });
                if pending {
                    return Err(refuse("the commit of a merge not executed here yet"));
                }
            }
        }
        let policy = self
            .security
            .commit_policy(&self.branch)
            .map_err(|e| refuse(&format!("no security context yet: {e}")))?;
        policy.check(commit)
    }
}

/// Who issues the data-key epoch of the membership change `op` of a sealed branch: its
/// proposer if it is a member afterwards, else the member with the lowest node id. The members
/// are those right after `op` in the registry's history — not the registry's current ones,
/// which may already be further on — so every member, and a node catching up, computes the
/// same from the same log.
fn epoch_issuer(registry: &Registry, op: &ExecutedOperation) -> NodeId {
    let mut members: Vec<NodeId> = Vec::new();
    for e in registry.history().iter().take_while(|e| e.index <= op.index) {
        match &e.kind {
            ProposalKind::BranchCreation(c) => members = c.members.iter().map(|m| m.node).collect(),
            ProposalKind::NodeJoin(j) if !members.contains(&j.member.node) => {
                members.push(j.member.node)
            }
            ProposalKind::NodeLeave(l) => members.retain(|n| *n != l.node),
            _ => {}
        }
    }
    if members.contains(&op.proposer) {
        return op.proposer;
    }
    members.into_iter().min().unwrap_or(op.proposer)
}

fn proposal_id(signed: &Signed<ConsensusProposal>) -> Result<ProposalId, FederationError> {
    ProposalId::of(signed).map_err(|e| FederationError::Invalid(format!("cannot encode: {e}")))
}

fn encoded(signed: &Signed<ConsensusProposal>) -> Result<Vec<u8>, FederationError> {
    signed.encode().map_err(|e| FederationError::Invalid(format!("cannot encode: {e}")))
}

fn approves(consent: &Signed<ConsensusProposal>, federation: &FederationId) -> bool {
    matches!(
        consent.open(federation),
        Ok(ConsensusProposal {
            kind: ProposalKind::Consent(Consent { verdict: ConsentVerdict::Approve, .. }),
            ..
        })
    )
}

fn kind_name(signed: &Signed<ConsensusProposal>, federation: &FederationId) -> &'static str {
    match signed.open(federation).map(|p| &p.kind) {
        Ok(ProposalKind::BranchCreation(_)) => "branch creation",
        Ok(ProposalKind::FederatedMerge(_)) => "federated merge",
        Ok(ProposalKind::NodeJoin(_)) => "node join",
        Ok(ProposalKind::NodeLeave(_)) => "node leave",
        Ok(ProposalKind::Consent(c)) => match c.verdict {
            ConsentVerdict::Approve => "consent (approve)",
            ConsentVerdict::Refuse { .. } => "consent (refuse)",
        },
        Ok(ProposalKind::PolicyUpdate(_)) => "policy update",
        Ok(ProposalKind::SynchronizationPlan(_)) => "synchronization plan",
        Err(_) => "unreadable proposal",
    }
}

/// The distinct predicate IRIs a change set touches.
fn predicates_of(changes: &ChangeSet) -> Vec<String> {
    let set: BTreeSet<String> = changes
        .added()
        .iter()
        .chain(changes.removed())
        .filter_map(|t| t.predicate().as_iri().map(|i| i.as_str().to_string()))
        .collect();
    set.into_iter().collect()
}

/// The change set merging `source` into `target` under `policy`, and its conflicts: every
/// source triple the target lacks is added, except that for a single-valued predicate whose
/// subject has other objects in the target, `policy.prefer` decides (the target's objects stay
/// and the source's are not added, or the source's replace them).
pub fn plan_merge(
    source: &GraphState,
    target: &GraphState,
    policy: &FederatedMergePolicy,
) -> (ChangeSet, Vec<MergeConflict>) {
    let single: BTreeSet<&str> = policy.single_valued.iter().map(String::as_str).collect();
    let mut add = Vec::new();
    let mut remove = Vec::new();
    let mut conflicts = Vec::new();
    let mut decided: BTreeSet<(crate::Term, crate::Term)> = BTreeSet::new();
    for t in source.iter() {
        let t = t.to_triple();
        if target.contains(&t) {
            continue;
        }
        let p = t.predicate();
        let is_single = p.as_iri().is_some_and(|i| single.contains(i.as_str()));
        if is_single {
            let pattern =
                Pattern::any().with_subject(t.subject().clone()).with_predicate(p.clone());
            let theirs: Vec<Triple> = target.matching(&pattern).map(|r| r.to_triple()).collect();
            if !theirs.is_empty() {
                let key = (t.subject().clone(), p.clone());
                if decided.insert(key) {
                    conflicts.push(MergeConflict {
                        subject: t.subject().clone(),
                        predicate: p.clone(),
                        kept: policy.prefer,
                    });
                    if policy.prefer == MergeSide::Source {
                        remove.extend(theirs);
                    }
                }
                if policy.prefer == MergeSide::Target {
                    continue;
                }
            }
        }
        add.push(t);
    }
    // Sorted and disjoint: additions are absent from the target, removals present in it.
    let changes = ChangeSet::new(add, remove).unwrap_or_default();
    (changes, conflicts)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::term::{Iri, Literal};
    use proptest::prelude::*;

    fn triple() -> impl Strategy<Value = Triple> {
        let iri = "https://e\\.org/[a-z\u{e9}\u{20ac}]{0,300}".prop_map(|s| Iri::new(s).unwrap());
        let object = prop_oneof![
            iri.clone().prop_map(Term::Iri),
            "\\PC{0,400}".prop_map(|v| Term::Literal(Literal::string(v).unwrap())),
            ("\\PC{0,40}", "[a-z]{2,8}")
                .prop_map(|(v, tag)| Term::Literal(Literal::language(v, &tag).unwrap())),
            ("[0-9]{0,20}", iri.clone())
                .prop_map(|(v, d)| Term::Literal(Literal::typed(v, d).unwrap())),
        ];
        (iri.clone(), iri, object).prop_map(|(s, p, o)| Triple::new(s, p, o).unwrap())
    }

    proptest! {
        /// The bound is a bound, and the seed's commits hold every triple once, in order,
        /// each within the budget unless it is a single triple, each after the first within
        /// the count, and the first as large as the budget allows.
        #[test]
        fn seed_chunks_cover_the_source_within_the_budget(
            triples in prop::collection::vec(triple(), 0..60),
            budget in 1usize..8000,
            later in 1usize..8,
        ) {
            for t in &triples {
                prop_assert!(crate::encoding::encode(t).len() <= encoded_len_bound(t));
            }
            let chunks = seed_chunks(&triples, budget, later);
            let joined: Vec<Triple> = chunks.iter().flat_map(|c| c.iter().cloned()).collect();
            prop_assert_eq!(joined, triples.clone());
            for (i, c) in chunks.iter().enumerate() {
                prop_assert!(!c.is_empty());
                let bytes: usize = c.iter().map(encoded_len_bound).sum();
                prop_assert!(c.len() == 1 || bytes <= budget, "{} triples, {bytes} bytes", c.len());
                prop_assert!(i == 0 || c.len() <= later);
            }
            if let (Some(first), Some(second)) = (chunks.first(), chunks.get(1)) {
                let bytes: usize = first.iter().map(encoded_len_bound).sum();
                prop_assert!(bytes + encoded_len_bound(&second[0]) > budget);
            }
        }
    }
}
