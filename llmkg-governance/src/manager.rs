//! The federated security manager: one node's security plane.
//!
//! [`FederatedSecurityManager`] composes the [`trust`](crate::trust) store, the published
//! [`access`](crate::access) policies, the federation [`keys`](crate::keys) and the
//! [`audit`](crate::audit) log, and implements core's [`SecurityManager`]. Every decision it
//! makes, approval or refusal, is appended to its audit log before the call returns; if the
//! log cannot be written the call fails closed (refuses) and changes nothing. Its state other
//! than the audit log (pins, certificates, policies, contexts, keyrings) lives in memory: a
//! host rebuilds it on start from the signed documents it keeps, which verify again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use llmkg_federation_core::encoding::{self, hex};
use llmkg_federation_core::kv::KvStore;
use llmkg_federation_core::security::{
    BranchRef, CrossFederationMerge, DecisionRecord, EnvelopeSeal, FederatedBranchRequest,
    MembershipChange, Operation, OrgVerdict, SealError, SecurityContext, SecurityDecision,
    SecurityError, SecurityManager, Verdict,
};
use llmkg_federation_core::{
    BranchName, ChangeSet, CommitPolicy, CommitRefusal, FederationId, NodeCertificate, NodeId,
    OrgId, OrgKeypair, OrgRootKey, Revocation, Role, SignError, Signed, SignedCommit, Signer,
    Timestamp,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use thiserror::Error;

use crate::access::{AccessControl, AccessPolicy, Ask, MAX_NAMESPACE_LEN, PolicyError};
use crate::audit::{
    AuditError, AuditLog, Checkpoint, CheckpointError, LogSigner, LogVerifier, SIDE_PREFIX,
    SignedNote,
};
use crate::event::{AuditEvent, AuditKind, VerdictRecord};
use crate::keys::{
    Accepted, EncryptionKeyCertificate, FederationKeyring, KeyEpoch, KeyError,
    OrgEncryptionKeypair, SealedChangeSet,
};
use crate::trust::{
    NodeKeyRotation, Principal, RootEndorsement, RootRotation, TrustError, TrustLevel, TrustStore,
};

const POLICY_CONTEXT: &str = "llmkg-governance/access-policy/v1";
/// Longest policy document accepted, in bytes.
pub const MAX_POLICY_LEN: usize = 16 * 1024 * 1024;

/// A governance operation was refused or failed. Nothing changed, and the refusal itself was
/// recorded in the audit log (unless the log is what failed).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GovernanceError {
    /// A certificate, revocation, node-key or root rotation was refused.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The operation was not approved by every organization whose consent it needs.
    #[error("not approved: {0}")]
    NotApproved(SecurityDecision),
    /// A policy was malformed, stale, or not signed by its organization's pinned root.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A policy document is not signed by the pinned root of the organization it names.
    #[error("policy of {0} is not signed by its pinned root")]
    PolicyNotSigned(OrgId),
    /// A key operation failed: no key for an epoch (not a member then), tampered data, a
    /// forged epoch, an unverifiable encryption key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The branch has no security context here.
    #[error("no security context for {0:?}")]
    UnknownBranch(BranchName),
    /// A member organization of a sealed branch has registered no encryption key.
    #[error("organization {0} has no registered encryption key")]
    NoEncryptionKey(OrgId),
    /// The issuer of a key epoch may not administer.
    #[error("node {node} may not issue key epochs: {reason}")]
    NotAnAdministrator {
        /// The issuing node.
        node: NodeId,
        /// Why not.
        reason: String,
    },
    /// The audit log could not be written; the operation was not performed.
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    /// The request is malformed (a namespace claim that is not an IRI prefix, claimed twice
    /// or by a non-participant; a branch left without members).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The branch already has a security context; a membership change is the way to alter it.
    #[error("branch {0:?} already has a security context")]
    AlreadyExists(BranchName),
    /// Sealed branches of one federation share its data key, so they must have the same
    /// members; this request would make them differ.
    #[error("federation {0} already has a sealed branch with other members")]
    SealedMembershipConflict(FederationId),
    /// The branch is not sealed, or the key epoch of its latest membership change has not
    /// arrived yet: nothing can be sealed for it now.
    #[error("no current data key for branch {0:?}")]
    KeyEpochPending(BranchName),
    /// A checkpoint could not be made (an origin the checkpoint format refuses).
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl From<GovernanceError> for SecurityError {
    fn from(e: GovernanceError) -> Self {
        match e {
            GovernanceError::NotApproved(d) => SecurityError::NotApproved(d),
            GovernanceError::UnknownBranch(b) => SecurityError::UnknownBranch(b),
            e @ (GovernanceError::InvalidRequest(_)
            | GovernanceError::AlreadyExists(_)
            | GovernanceError::SealedMembershipConflict(_)) => {
                SecurityError::InvalidRequest(e.to_string())
            }
            GovernanceError::Trust(TrustError::NoCertificate(n)) => {
                SecurityError::UnknownRequester(n)
            }
            other => SecurityError::Internal(other.to_string()),
        }
    }
}

/// An organization's access policy, signed by its root: the only form in which a manager
/// accepts another organization's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPolicy {
    document: Vec<u8>,
    signature: [u8; 64],
}

impl SignedPolicy {
    /// Signs `policy` with its organization's root.
    pub fn sign(policy: &AccessPolicy, root: &OrgKeypair) -> Result<Self, SignError> {
        let document = policy.to_json();
        let signature = root.sign_statement(POLICY_CONTEXT, &document)?;
        Ok(Self { document, signature })
    }

    /// A policy document and its root signature as received (checked when published).
    pub fn from_parts(document: Vec<u8>, signature: [u8; 64]) -> Self {
        Self { document, signature }
    }

    /// The JSON document.
    pub fn document(&self) -> &[u8] {
        &self.document
    }

    /// The root's signature over it.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
}

/// What a manager is and signs with.
pub struct GovernanceOptions {
    /// The organization this node belongs to.
    pub org: OrgId,
    /// This node's signing key (issues key epochs).
    pub signer: Arc<dyn Signer>,
    /// The organization's encryption keypair (opens its copy of federation data keys).
    pub encryption: OrgEncryptionKeypair,
    /// Signs the audit log's checkpoints.
    pub log_signer: LogSigner,
    /// Seeds the manager's RNG (data keys, nonces): a fixed seed replays exactly; a host
    /// seeds it from the operating system.
    pub seed: [u8; 32],
}

/// Who must consent to touching `iris` of a branch, and about which of them: the owner of
/// the longest declared namespace matching an IRI is asked about it; an IRI outside every
/// namespace is all members' data. An empty `iris` is the whole branch: every member and
/// namespace owner is asked about all of it.
fn asks<'a>(context: &'a SecurityContext, iris: &[&'a str]) -> BTreeMap<OrgId, Vec<Ask<'a>>> {
    let branch = &context.branch.branch;
    let mut asks: BTreeMap<OrgId, Vec<Ask<'a>>> = BTreeMap::new();
    let mut ask = |org: &OrgId, iri: Option<&'a str>| {
        let list = asks.entry(org.clone()).or_insert_with(|| vec![Ask { branch, iris: vec![] }]);
        if let (Some(iri), Some(a)) = (iri, list.first_mut()) {
            a.iris.push(iri);
        }
    };
    if iris.is_empty() {
        for org in &context.members {
            ask(org, None);
        }
        for c in &context.namespaces {
            ask(&c.owner, None);
        }
        return asks;
    }
    for iri in iris {
        let claim = context
            .namespaces
            .iter()
            .filter(|c| iri.starts_with(c.prefix.as_str()))
            .max_by_key(|c| c.prefix.len());
        match claim {
            Some(c) => ask(&c.owner, Some(iri)),
            None => {
                for org in &context.members {
                    ask(org, Some(iri));
                }
            }
        }
    }
    asks
}

/// Checks a branch request's shape: namespace claims are IRI prefixes (with a scheme, not
/// empty, bounded), claimed once, by participants.
fn check_request(
    request: &FederatedBranchRequest,
    members: &BTreeSet<OrgId>,
) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for c in &request.namespaces {
        let scheme_end = c.prefix.find(':').unwrap_or(0);
        let scheme_ok = scheme_end > 0
            && c.prefix[..scheme_end]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        if !scheme_ok || c.prefix.len() <= scheme_end + 1 || c.prefix.len() > MAX_NAMESPACE_LEN {
            return Err(format!(
                "namespace claim {:?} is not an IRI prefix with a scheme and a path",
                c.prefix.chars().take(80).collect::<String>()
            ));
        }
        if !seen.insert(c.prefix.as_str()) {
            return Err(format!("namespace {:?} is claimed twice", c.prefix));
        }
        if !members.contains(&c.owner) {
            return Err(format!("namespace owner {} is not a participant", c.owner));
        }
    }
    Ok(())
}

/// A key rotation prepared on copies, not yet in force.
struct Rotation {
    federation: FederationId,
    keyring: FederationKeyring,
    rng: ChaCha20Rng,
    epoch: Signed<KeyEpoch>,
    number: u64,
    event: Option<AuditKind>,
}

struct State<K: KvStore> {
    org: OrgId,
    signer: Arc<dyn Signer>,
    encryption_secret: zeroize::Zeroizing<[u8; 32]>,
    trust: TrustStore,
    access: AccessControl,
    contexts: BTreeMap<BranchRef, SecurityContext>,
    encryption_keys: BTreeMap<OrgId, EncryptionKeyCertificate>,
    keyrings: BTreeMap<FederationId, FederationKeyring>,
    epochs: BTreeMap<FederationId, Vec<Signed<KeyEpoch>>>,
    audit: AuditLog<K>,
    log_signer: LogSigner,
    rng: ChaCha20Rng,
}

/// One node's security plane over an audit log kept in `K` (see the [module](self) docs).
///
/// ```
/// use std::sync::Arc;
/// use llmkg_federation_core::security::{FederatedBranchRequest, SecurityLevel, SecurityManager, Operation};
/// use llmkg_federation_core::{BranchName, FederationId, MemoryKv, NodeKeypair, OrgId, OrgKeypair, Role, Timestamp};
/// use llmkg_governance::access::{AccessPolicy, PrincipalPattern, Rule};
/// use llmkg_governance::audit::LogSigner;
/// use llmkg_governance::keys::OrgEncryptionKeypair;
/// use llmkg_governance::manager::{FederatedSecurityManager, GovernanceOptions, SignedPolicy};
/// use llmkg_governance::trust::TrustLevel;
///
/// let t = |s: i64| Timestamp::from_micros(s * 1_000_000);
/// let acme = OrgId::new("acme")?;
/// let root = OrgKeypair::from_secret_bytes([1; 32]);
/// let node = NodeKeypair::from_secret_bytes([2; 32]);
/// let node_id = node.node_id();
/// let manager = FederatedSecurityManager::new(GovernanceOptions {
///     org: acme.clone(),
///     signer: Arc::new(node),
///     encryption: OrgEncryptionKeypair::from_secret_bytes([3; 32]),
///     log_signer: LogSigner::new("acme.example/audit", ed25519_dalek::SigningKey::from_bytes(&[4; 32]))?,
///     seed: [5; 32],
/// }, MemoryKv::new())?;
/// manager.pin(acme.clone(), root.root_key(), TrustLevel::Full, t(0))?;
/// manager.add_certificate(root.certify(acme.clone(), node_id, [Role::Admin], t(0), t(100), 1)?, t(1))?;
/// let policy = AccessPolicy::new(acme.clone(), 1, vec![
///     Rule::permit("admins", PrincipalPattern::Role(Role::Admin), [Operation::Administer])?,
/// ])?;
/// manager.publish_policy(&SignedPolicy::sign(&policy, &root)?, t(1))?;
///
/// let request = FederatedBranchRequest::new(
///     FederationId::from_name("research"),
///     BranchName::new("shared")?,
///     node_id,
///     [acme.clone()],
/// )
/// .with_level(SecurityLevel::Internal);
/// let decision = manager.validate_branch_request(&request, t(2))?;
/// assert!(decision.is_approved(), "{decision}");
/// let context = manager.create_security_context(&request, t(2))?;
/// assert_eq!(context.members, vec![acme]);
/// assert!(manager.audit_size() >= 5); // pin, certificate, policy, two decisions, context
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FederatedSecurityManager<K: KvStore> {
    state: Arc<Mutex<State<K>>>,
}

impl<K: KvStore> Clone for FederatedSecurityManager<K> {
    fn clone(&self) -> Self {
        Self { state: Arc::clone(&self.state) }
    }
}

fn lock<K: KvStore>(state: &Mutex<State<K>>) -> MutexGuard<'_, State<K>> {
    // A panic while holding the lock cannot leave the state half-changed: every mutation
    // is computed first and applied last, so the poisoned state is still consistent.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn branch_label(b: &BranchRef) -> (String, String) {
    (b.federation.to_string(), b.branch.as_str().to_string())
}

fn decision_event(
    branch: &BranchRef,
    node: &NodeId,
    op: Operation,
    decision: &SecurityDecision,
) -> AuditKind {
    let (federation, branch) = branch_label(branch);
    AuditKind::AccessDecision {
        federation,
        branch,
        node: node.to_string(),
        operation: op.to_string(),
        approved: decision.is_approved(),
        verdicts: verdict_records(decision),
    }
}

fn verdict_records(d: &SecurityDecision) -> Vec<VerdictRecord> {
    d.verdicts()
        .iter()
        .map(|v| match &v.verdict {
            Verdict::Approved { rule } => VerdictRecord {
                org: v.org.to_string(),
                verdict: "approved",
                rule: rule.clone(),
                reason: None,
            },
            Verdict::Refused { rule, reason } => VerdictRecord {
                org: v.org.to_string(),
                verdict: "refused",
                rule: rule.clone(),
                reason: Some(reason.clone()),
            },
            Verdict::Pending { reason } => VerdictRecord {
                org: v.org.to_string(),
                verdict: "pending",
                rule: None,
                reason: Some(reason.clone()),
            },
            _ => VerdictRecord {
                org: v.org.to_string(),
                verdict: "unknown",
                rule: None,
                reason: None,
            },
        })
        .collect()
}

/// The distinct predicates a change set touches, in order. Collected through a hash set: a
/// large change set names few predicates many times, and ordering each occurrence in a tree
/// compared strings again and again. The predicates are a peer's choice, so the hasher is
/// seeded per process.
fn predicates(changes: &ChangeSet) -> Vec<String> {
    let set: std::collections::HashSet<&str, foldhash::quality::RandomState> = changes
        .added()
        .iter()
        .chain(changes.removed())
        .filter_map(|t| t.predicate().as_iri().map(|i| i.as_str()))
        .collect();
    let mut out: Vec<String> = set.into_iter().map(str::to_string).collect();
    out.sort_unstable();
    out
}

impl<K: KvStore> State<K> {
    fn record(&mut self, now: Timestamp, kind: AuditKind) -> Result<u64, AuditError> {
        let event = AuditEvent { at: now.as_micros(), by: self.org.to_string(), kind };
        self.audit.append(&event.to_bytes())
    }

    /// Records several events in one atomic append.
    fn record_all(&mut self, now: Timestamp, kinds: Vec<AuditKind>) -> Result<(), AuditError> {
        self.record_all_with(now, kinds, Vec::new())
    }

    /// Records several events and writes `side` records (the key epochs they accept or
    /// issue) in one atomic write.
    fn record_all_with(
        &mut self,
        now: Timestamp,
        kinds: Vec<AuditKind>,
        side: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), AuditError> {
        let by = self.org.to_string();
        let entries: Vec<Vec<u8>> = kinds
            .into_iter()
            .map(|kind| AuditEvent { at: now.as_micros(), by: by.clone(), kind }.to_bytes())
            .collect();
        self.audit.append_batch_with(&entries, side).map(|_| ())
    }

    /// Records the refusal of a request that never reached a decision (unknown branch,
    /// malformed request, missing key material) and returns `error`.
    fn refuse_request<T>(
        &mut self,
        now: Timestamp,
        branch: &BranchRef,
        node: &NodeId,
        op: Operation,
        error: GovernanceError,
    ) -> Result<T, GovernanceError> {
        let (federation, b) = branch_label(branch);
        self.refuse(
            now,
            AuditKind::RequestRefused {
                federation,
                branch: b,
                node: node.to_string(),
                operation: op.to_string(),
                reason: error.to_string(),
            },
            error,
        )
    }

    /// Records a refusal and returns the error that caused it (or the audit failure).
    fn refuse<T>(
        &mut self,
        now: Timestamp,
        kind: AuditKind,
        error: GovernanceError,
    ) -> Result<T, GovernanceError> {
        self.record(now, kind)?;
        Err(error)
    }

    /// Applies `change` to a copy of the trust store; records `accepted` and puts the copy in
    /// force, or records `refused` with the reason and changes nothing.
    fn change_trust<T>(
        &mut self,
        now: Timestamp,
        change: impl FnOnce(&mut TrustStore) -> Result<T, TrustError>,
        accepted: impl FnOnce(&T) -> AuditKind,
        refused: impl FnOnce(String) -> AuditKind,
    ) -> Result<T, GovernanceError> {
        let mut trial = self.trust.clone();
        match change(&mut trial) {
            Ok(value) => {
                self.record(now, accepted(&value))?;
                self.trust = trial;
                Ok(value)
            }
            Err(e) => self.refuse(now, refused(e.to_string()), e.into()),
        }
    }

    fn principal(&self, node: &NodeId, at: Timestamp) -> Result<Principal, TrustError> {
        self.trust.principal(node, at)
    }

    /// The verdict of this node's own trust in the principal's organization, if it caps `op`.
    fn trust_cap(&self, principal: &Principal, op: Operation) -> Option<OrgVerdict> {
        let level = self.trust.level(principal.org());
        let allowed = level.is_some_and(|l| l.allows(op));
        (!allowed).then(|| {
            OrgVerdict::new(
                self.org.clone(),
                Verdict::Refused {
                    rule: Some("trust-level".into()),
                    reason: match level {
                        Some(l) => format!(
                            "{} is trusted at level {l} here, which does not allow {op}",
                            principal.org()
                        ),
                        None => format!("{} is not pinned here", principal.org()),
                    },
                },
            )
        })
    }

    /// The owners' verdicts on `asks`, with this node's trust cap on the principal's
    /// organization and, for every organization in `holders` not trusted here to hold data
    /// (below [`TrustLevel::Reader`]), a refusal by rule `trust-level`.
    fn decide<'h>(
        &self,
        principal: &Principal,
        op: Operation,
        asks: &BTreeMap<OrgId, Vec<Ask<'_>>>,
        holders: impl IntoIterator<Item = &'h OrgId>,
    ) -> SecurityDecision {
        let decision = self.access.decide_each(principal, op, asks);
        let untrusted = holders
            .into_iter()
            .filter(|o| self.trust.level(o).is_none_or(|l| l < TrustLevel::Reader))
            .map(|o| {
                let reason = format!("{o} is not trusted to hold data here");
                OrgVerdict::new(
                    o.clone(),
                    Verdict::Refused { rule: Some("trust-level".into()), reason },
                )
            });
        let extra: Vec<OrgVerdict> = untrusted.chain(self.trust_cap(principal, op)).collect();
        if extra.is_empty() {
            return decision;
        }
        let mut all = decision.verdicts().to_vec();
        all.extend(extra);
        SecurityDecision::new(all)
    }

    fn record_decision(
        &mut self,
        now: Timestamp,
        branch: &BranchRef,
        node: &NodeId,
        op: Operation,
        decision: &SecurityDecision,
    ) -> Result<(), AuditError> {
        self.record(now, decision_event(branch, node, op, decision)).map(|_| ())
    }

    /// Records `events` (and the rotation's) in one append, then puts the rotation and the
    /// branch's new context in force.
    fn apply_context(
        &mut self,
        now: Timestamp,
        mut events: Vec<AuditKind>,
        mut rotation: Option<Rotation>,
        context: SecurityContext,
    ) -> Result<(), AuditError> {
        if let Some(event) = rotation.as_mut().and_then(|r| r.event.take()) {
            events.push(event);
        }
        let side = rotation.iter().filter_map(|r| epoch_record(&r.epoch)).collect();
        self.record_all_with(now, events, side)?;
        if let Some(r) = rotation {
            self.commit_rotation(r);
        }
        self.contexts.insert(context.branch.clone(), context);
        Ok(())
    }

    /// The requester as a principal, recording the refusal if it has no valid certificate.
    fn requester(
        &mut self,
        node: &NodeId,
        branch: &BranchRef,
        op: Operation,
        now: Timestamp,
    ) -> Result<Principal, GovernanceError> {
        match self.principal(node, now) {
            Ok(p) => Ok(p),
            Err(e) => {
                let refusal = SecurityDecision::new(vec![OrgVerdict::new(
                    self.org.clone(),
                    Verdict::Refused { rule: Some("identity".into()), reason: e.to_string() },
                )]);
                self.record_decision(now, branch, node, op, &refusal)?;
                Err(GovernanceError::Trust(e))
            }
        }
    }

    fn keyring(&mut self, federation: FederationId) -> &mut FederationKeyring {
        let (org, secret) = (self.org.clone(), *self.encryption_secret);
        self.keyrings.entry(federation).or_insert_with(|| {
            FederationKeyring::new(federation, org, OrgEncryptionKeypair::from_secret_bytes(secret))
        })
    }

    /// Prepares the next key epoch of `federation` for `members`, changing nothing: the
    /// rotated keyring, the RNG after it, the signed epoch and its audit event. The caller
    /// records the event, then [`commit_rotation`](Self::commit_rotation)s.
    fn prepare_rotation(
        &mut self,
        federation: FederationId,
        members: &[OrgId],
    ) -> Result<Rotation, GovernanceError> {
        let mut recipients = Vec::with_capacity(members.len());
        for org in members {
            let Some(cert) = self.encryption_keys.get(org) else {
                return Err(GovernanceError::NoEncryptionKey(org.clone()));
            };
            recipients.push((org.clone(), cert.key()));
        }
        let signer = Arc::clone(&self.signer);
        let mut rng = self.rng.clone();
        let mut keyring = self.keyring(federation).duplicate();
        let epoch = keyring.rotate(&mut rng, signer.as_ref(), &recipients)?;
        let number = epoch.open(&federation).map(|e| e.epoch()).unwrap_or_default();
        let event = AuditKind::KeyEpoch {
            federation: federation.to_string(),
            epoch: number,
            members: members.iter().map(ToString::to_string).collect(),
            issued_here: true,
        };
        Ok(Rotation { federation, keyring, rng, epoch, number, event: Some(event) })
    }

    /// Takes back the key epochs this node issued or accepted before it stopped (kept beside
    /// the audit events that recorded them): they were checked when they were accepted, and
    /// are checked again as a chain, so the data keys of the epochs this organization is a
    /// member of are usable again without asking anyone.
    fn restore_epochs(&mut self) -> Result<(), GovernanceError> {
        let records = self.audit.side_records(&[SIDE_PREFIX, EPOCH_RECORD])?;
        for (key, bytes) in records {
            let federation = key
                .get(2..34)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(FederationId::from_bytes)
                .ok_or_else(|| {
                    GovernanceError::Audit(AuditError::Corrupt("a key epoch record's key".into()))
                })?;
            let epoch = KeyEpoch::decode_signed(&bytes, &federation)?;
            self.keyring(federation).accept(&epoch)?;
            self.epochs.entry(federation).or_default().push(epoch);
        }
        Ok(())
    }

    /// The current epoch of `federation` if it is for exactly `members`.
    fn adoptable_epoch(&self, federation: FederationId, members: &[OrgId]) -> Option<u64> {
        let last = self.epochs.get(&federation)?.last()?;
        let value = last.open(&federation).ok()?;
        let of: Vec<&OrgId> = value.members().collect();
        (of.len() == members.len() && members.iter().all(|m| of.contains(&m)))
            .then_some(value.epoch())
    }

    /// Puts a recorded rotation in force.
    fn commit_rotation(&mut self, r: Rotation) {
        self.keyrings.insert(r.federation, r.keyring);
        self.rng = r.rng;
        self.epochs.entry(r.federation).or_default().push(r.epoch);
    }

    /// The members of the sealed branches of `federation` known here (they share its data
    /// key, so they must be the same), or `None` if there is none.
    fn sealed_members(&self, federation: FederationId) -> Option<&[OrgId]> {
        self.contexts
            .values()
            .find(|c| c.branch.federation == federation && c.level.seals())
            .map(|c| c.members.as_slice())
    }

    fn context(&self, branch: &BranchRef) -> Result<&SecurityContext, GovernanceError> {
        self.contexts
            .get(branch)
            .ok_or_else(|| GovernanceError::UnknownBranch(branch.branch.clone()))
    }

    /// Whether `branch` is sealed and its current epoch is in force here: what sealing needs.
    fn sealing_ready(&self, branch: &BranchRef) -> Result<(), GovernanceError> {
        let context = self.context(branch)?;
        let current =
            self.keyrings.get(&branch.federation).and_then(FederationKeyring::current_epoch);
        if !context.level.seals() || context.key_epoch.is_none() || context.key_epoch != current {
            return Err(GovernanceError::KeyEpochPending(branch.branch.clone()));
        }
        Ok(())
    }

    fn seal_envelope(
        &mut self,
        branch: &BranchRef,
        envelope: &[u8],
    ) -> Result<Vec<u8>, GovernanceError> {
        self.sealing_ready(branch)?;
        let mut rng = self.rng.clone();
        let sealed =
            self.keyring(branch.federation).seal_envelope(&mut rng, &branch.branch, envelope)?;
        self.rng = rng;
        Ok(sealed.encode()?)
    }

    /// Opens a sealed envelope of `branch`; a refusal is audited.
    fn open_envelope(
        &mut self,
        branch: &BranchRef,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<Vec<u8>, GovernanceError> {
        let sealed = SealedChangeSet::decode(bytes);
        let epoch = sealed.as_ref().map(SealedChangeSet::epoch).unwrap_or_default();
        let result = match sealed {
            Ok(sealed) if self.contexts.contains_key(branch) => {
                self.keyring(branch.federation).open_envelope(&branch.branch, &sealed)
            }
            Ok(_) => return Err(GovernanceError::UnknownBranch(branch.branch.clone())),
            Err(e) => Err(e),
        };
        result.or_else(|e| {
            let (federation, b) = branch_label(branch);
            let kind = AuditKind::SealedReadRefused {
                federation,
                branch: b,
                epoch,
                reason: e.to_string(),
            };
            self.refuse(now, kind, e.into())
        })
    }
}

impl<K: KvStore> FederatedSecurityManager<K> {
    /// A manager for `options.org`, trusting no one yet, recording into an audit log kept in
    /// `audit_store` (reopened if it holds one).
    pub fn new(options: GovernanceOptions, audit_store: K) -> Result<Self, GovernanceError> {
        let audit = AuditLog::open(audit_store)?;
        let state = State {
            org: options.org,
            signer: options.signer,
            encryption_secret: zeroize::Zeroizing::new(options.encryption.secret_bytes()),
            trust: TrustStore::new(),
            access: AccessControl::new(),
            contexts: BTreeMap::new(),
            encryption_keys: BTreeMap::new(),
            keyrings: BTreeMap::new(),
            epochs: BTreeMap::new(),
            audit,
            log_signer: options.log_signer,
            rng: ChaCha20Rng::from_seed(options.seed),
        };
        let mut state = state;
        state.restore_epochs()?;
        Ok(Self { state: Arc::new(Mutex::new(state)) })
    }

    fn state(&self) -> MutexGuard<'_, State<K>> {
        lock(&self.state)
    }

    /// Pins `org`'s root at a trust level (the act of trusting it). Audited.
    pub fn pin(
        &self,
        org: OrgId,
        root: OrgRootKey,
        level: TrustLevel,
        now: Timestamp,
    ) -> Result<(), GovernanceError> {
        let mut s = self.state();
        s.record(
            now,
            AuditKind::Pin {
                org: org.to_string(),
                root: root.to_string(),
                level: level.to_string(),
            },
        )?;
        s.trust.pin(org, root, level);
        Ok(())
    }

    /// Accepts a node certificate after verifying it at `now` against the pins. Audited,
    /// accepted or refused.
    pub fn add_certificate(
        &self,
        certificate: NodeCertificate,
        now: Timestamp,
    ) -> Result<(), GovernanceError> {
        let (org, node, serial) =
            (certificate.org().to_string(), certificate.node().to_string(), certificate.serial());
        let (o, n) = (org.clone(), node.clone());
        self.state().change_trust(
            now,
            |t| t.add_certificate(certificate, now),
            |()| AuditKind::CertificateAccepted { org, node, serial },
            |reason| AuditKind::CertificateRefused { org: o, node: n, serial, reason },
        )
    }

    /// Accepts a revocation signed by its organization's pinned root. Audited.
    pub fn add_revocation(
        &self,
        revocation: &Revocation,
        now: Timestamp,
    ) -> Result<(), GovernanceError> {
        let org = revocation.org().to_string();
        let o = org.clone();
        self.state().change_trust(
            now,
            |t| t.add_revocation(revocation),
            |()| AuditKind::Revocation { org, serials: revocation.serials().to_vec() },
            |reason| AuditKind::RevocationRefused { org: o, reason },
        )
    }

    /// Replaces a node key (new certificate and revocation of the old serial, both by the
    /// organization's root). Audited.
    pub fn rotate_node_key(
        &self,
        rotation: &NodeKeyRotation,
        now: Timestamp,
    ) -> Result<(), GovernanceError> {
        let org = rotation.certificate.org().to_string();
        let o = org.clone();
        self.state().change_trust(
            now,
            |t| t.rotate_node_key(rotation, now),
            |()| AuditKind::NodeKeyRotated {
                org,
                node: rotation.certificate.node().to_string(),
                serial: rotation.certificate.serial(),
                revoked: rotation.revocation.serials().to_vec(),
            },
            |reason| AuditKind::NodeKeyRotationRefused { org: o, reason },
        )
    }

    /// Installs another root for an organization, given endorsements from a majority of the
    /// other voting members. Audited.
    pub fn rotate_root(
        &self,
        rotation: &RootRotation,
        endorsements: &[RootEndorsement],
        now: Timestamp,
    ) -> Result<(), GovernanceError> {
        let org = rotation.org().to_string();
        let o = org.clone();
        self.state()
            .change_trust(
                now,
                |t| t.rotate_root(rotation, endorsements),
                |endorsers: &Vec<OrgId>| AuditKind::RootRotated {
                    org,
                    old_root: rotation.old_root().to_string(),
                    new_root: rotation.new_root().to_string(),
                    sequence: rotation.sequence(),
                    endorsers: endorsers.iter().map(ToString::to_string).collect(),
                },
                |reason| AuditKind::RootRotationRefused { org: o, reason },
            )
            .map(|_| ())
    }

    /// Installs an organization's access policy, signed by its pinned root; its version must
    /// exceed the one held. Audited.
    pub fn publish_policy(
        &self,
        policy: &SignedPolicy,
        now: Timestamp,
    ) -> Result<(), GovernanceError> {
        let mut s = self.state();
        if policy.document.len() > MAX_POLICY_LEN {
            let e = PolicyError::Document(format!(
                "{} bytes exceed the limit of {MAX_POLICY_LEN}",
                policy.document.len()
            ));
            return s.refuse(
                now,
                AuditKind::PolicyRefused { org: String::new(), reason: e.to_string() },
                e.into(),
            );
        }
        let parsed = match AccessPolicy::from_json(&policy.document) {
            Ok(p) => p,
            Err(e) => {
                return s.refuse(
                    now,
                    AuditKind::PolicyRefused { org: String::new(), reason: e.to_string() },
                    e.into(),
                );
            }
        };
        let org = parsed.org().clone();
        let signed = s.trust.root(&org).is_some_and(|r| {
            r.verify_statement(POLICY_CONTEXT, &policy.document, &policy.signature)
        });
        if !signed {
            let e = GovernanceError::PolicyNotSigned(org.clone());
            return s.refuse(
                now,
                AuditKind::PolicyRefused { org: org.to_string(), reason: e.to_string() },
                e,
            );
        }
        let (version, rules) = (parsed.version(), parsed.rules().len());
        let mut trial = s.access.clone();
        match trial.set_policy(parsed) {
            Ok(()) => {
                s.record(now, AuditKind::PolicyInstalled { org: org.to_string(), version, rules })?;
                s.access = trial;
                Ok(())
            }
            Err(e) => s.refuse(
                now,
                AuditKind::PolicyRefused { org: org.to_string(), reason: e.to_string() },
                e.into(),
            ),
        }
    }

    /// Registers an organization's encryption key, certified by its pinned root. Audited.
    pub fn register_encryption_key(
        &self,
        certificate: EncryptionKeyCertificate,
        now: Timestamp,
    ) -> Result<(), GovernanceError> {
        let mut s = self.state();
        let org = certificate.org().to_string();
        match certificate.verified_key(s.trust.anchors()) {
            Ok(key) => {
                s.record(now, AuditKind::EncryptionKey { org, key: hex(key.as_bytes()) })?;
                s.encryption_keys.insert(certificate.org().clone(), certificate);
                Ok(())
            }
            Err(e) => s.refuse(
                now,
                AuditKind::EncryptionKeyRefused { org, reason: e.to_string() },
                e.into(),
            ),
        }
    }

    /// Whether `node` may perform `op` on `branch`, touching the resources `iris` (empty: the
    /// whole branch): every organization whose data it touches must permit it, and this
    /// node's trust in the node's organization must allow it. Audited; `Err(NotApproved)`
    /// unless approved.
    pub fn authorize(
        &self,
        node: &NodeId,
        op: Operation,
        branch: &BranchRef,
        iris: &[&str],
        now: Timestamp,
    ) -> Result<SecurityDecision, GovernanceError> {
        let mut s = self.state();
        let principal = s.requester(node, branch, op, now)?;
        let decision = match s.contexts.get(branch) {
            Some(context) => s.decide(&principal, op, &asks(context, iris), []),
            None => {
                let e = GovernanceError::UnknownBranch(branch.branch.clone());
                return s.refuse_request(now, branch, node, op, e);
            }
        };
        s.record_decision(now, branch, node, op, &decision)?;
        if decision.is_approved() {
            Ok(decision)
        } else {
            Err(GovernanceError::NotApproved(decision))
        }
    }

    /// Lets `org` into a branch, as `requester` asked (a membership change decided by the
    /// branch's group, applied on every member's node). The requester must be allowed to
    /// administer the branch by every organization whose data it holds, `org` must be trusted
    /// here to hold data, and for a sealed level the federation's data key rotates into a new
    /// epoch wrapped for the new members — issued by the requester's node; the others accept
    /// it when it arrives ([`accept_key_epoch`](Self::accept_key_epoch)) and cannot seal until
    /// then. Audited, approved or refused; on error nothing changed.
    pub fn add_member(
        &self,
        requester: &NodeId,
        branch: &BranchRef,
        org: OrgId,
        now: Timestamp,
    ) -> Result<SecurityContext, GovernanceError> {
        self.change_members(requester, Some(requester), branch, now, Some(org), None, false)
            .map(|(_, c)| c)
    }

    /// Takes `org` out of a branch, as `requester` asked (see [`add_member`](Self::add_member)
    /// for who may; the consent of `org` itself is not needed). Its namespace claims go with it (that data becomes all remaining
    /// members'), and for a sealed level the data key rotates into a new epoch it cannot
    /// open, so it cannot read anything sealed afterwards. Audited; on error nothing changed.
    pub fn remove_member(
        &self,
        requester: &NodeId,
        branch: &BranchRef,
        org: &OrgId,
        now: Timestamp,
    ) -> Result<SecurityContext, GovernanceError> {
        self.change_members(requester, Some(requester), branch, now, None, Some(org), false)
            .map(|(_, c)| c)
    }

    /// `issuer` is the node that issues the new data-key epoch of a sealed branch (see
    /// [`MembershipChange::issuer`]).
    #[allow(clippy::too_many_arguments)]
    fn change_members(
        &self,
        requester: &NodeId,
        issuer: Option<&NodeId>,
        branch: &BranchRef,
        now: Timestamp,
        add: Option<OrgId>,
        remove: Option<&OrgId>,
        dry_run: bool,
    ) -> Result<(SecurityDecision, SecurityContext), GovernanceError> {
        let mut s = self.state();
        let op = Operation::Administer;
        let principal = s.requester(requester, branch, op, now)?;
        let Some(current) = s.contexts.get(branch).cloned() else {
            let e = GovernanceError::UnknownBranch(branch.branch.clone());
            return s.refuse_request(now, branch, requester, op, e);
        };
        let mut context = current.clone();
        let unchanged = match (&add, remove) {
            (Some(org), _) if context.members.contains(org) => {
                Some(format!("{org} is already a member"))
            }
            (_, Some(org)) if !context.members.contains(org) => {
                Some(format!("{org} is not a member"))
            }
            _ => None,
        };
        if let Some(reason) = unchanged {
            let e = GovernanceError::InvalidRequest(reason);
            return s.refuse_request(now, branch, requester, op, e);
        }
        if let Some(org) = &add {
            context.members.push(org.clone());
            context.members.sort();
        }
        if let Some(org) = remove {
            context.members.retain(|o| o != org);
            context.namespaces.retain(|c| &c.owner != org);
        }
        // Everyone whose data the branch holds, and the newcomer, must allow it; an
        // organization's consent is not needed to remove it (a member could otherwise never
        // be expelled).
        let mut before = asks(&current, &[]);
        if let Some(org) = &add {
            before
                .entry(org.clone())
                .or_insert_with(|| vec![Ask { branch: &branch.branch, iris: vec![] }]);
        }
        if let Some(org) = remove {
            before.remove(org);
        }
        let decision = s.decide(&principal, op, &before, add.as_ref());
        drop(before);
        if dry_run {
            s.record_decision(now, branch, requester, op, &decision)?;
            return Ok((decision, current));
        }
        if !decision.is_approved() {
            s.record_decision(now, branch, requester, op, &decision)?;
            return Err(GovernanceError::NotApproved(decision));
        }
        if context.members.is_empty() {
            let e = GovernanceError::InvalidRequest("a branch needs at least one member".into());
            return s.refuse_request(now, branch, requester, op, e);
        }
        let mut rotation = None;
        if context.level.seals() {
            let others_sealed = s.contexts.values().any(|c| {
                c.branch != *branch && c.branch.federation == branch.federation && c.level.seals()
            });
            if others_sealed {
                let e = GovernanceError::SealedMembershipConflict(branch.federation);
                return s.refuse_request(now, branch, requester, op, e);
            }
            if let Some(epoch) = s.adoptable_epoch(branch.federation, &context.members) {
                // The epoch for exactly these members exists (a replayed change): no rotation.
                context.key_epoch = Some(epoch);
            } else if issuer.is_some_and(|i| *i == s.signer.node_id()) {
                match s.prepare_rotation(branch.federation, &context.members) {
                    Ok(r) => {
                        context.key_epoch = Some(r.number);
                        rotation = Some(r);
                    }
                    Err(e) => return s.refuse_request(now, branch, requester, op, e),
                }
            } else {
                // The issuer's node issues the epoch; until it arrives, nothing is sealed.
                context.key_epoch = None;
            }
        }
        let (federation, b) = branch_label(branch);
        let events = vec![
            decision_event(branch, requester, op, &decision),
            AuditKind::MembershipChanged {
                federation,
                branch: b,
                members: context.members.iter().map(ToString::to_string).collect(),
                key_epoch: context.key_epoch,
            },
        ];
        s.apply_context(now, events, rotation, context.clone())?;
        Ok((decision, context))
    }

    /// The key epochs this node issued or accepted for `federation`, oldest first, to ship to
    /// other members.
    pub fn key_epochs(&self, federation: &FederationId) -> Vec<Signed<KeyEpoch>> {
        self.state().epochs.get(federation).cloned().unwrap_or_default()
    }

    /// Accepts one key epoch issued by another member's administrator: the same as
    /// [`accept_key_epochs`](Self::accept_key_epochs) with a chain of one.
    pub fn accept_key_epoch(
        &self,
        epoch: &Signed<KeyEpoch>,
        now: Timestamp,
    ) -> Result<Accepted, GovernanceError> {
        let mut accepted = self.accept_key_epochs(std::slice::from_ref(epoch), now)?;
        // A chain of one yields one answer.
        Ok(accepted.pop().unwrap_or(Accepted::NotMember { epoch: 0 }))
    }

    /// Accepts a run of key epochs of one federation, oldest first (an organization that joins
    /// catches up on the whole chain; it is a member of none of the earlier epochs). Every
    /// epoch must be signed by a node holding a valid certificate with the [`Role::Admin`]
    /// role of an organization trusted here to administer, and continue the chain (next
    /// number, previous digest). The newest must be the epoch of the federation's sealed
    /// branch as it is here: its members exactly the branch's members, its issuer's
    /// organization one of them — so no one can wrap the key for an organization the branch
    /// does not have, or re-key itself in after its removal. Epochs already held are skipped.
    /// Returns, per epoch, whether this organization is a member of it. Audited (one entry per
    /// epoch accepted, or one refusal); on error nothing changed.
    pub fn accept_key_epochs(
        &self,
        chain: &[Signed<KeyEpoch>],
        now: Timestamp,
    ) -> Result<Vec<Accepted>, GovernanceError> {
        let mut s = self.state();
        let Some(last) = chain.last() else { return Ok(Vec::new()) };
        let federation = last.federation();
        let held = s.epochs.get(&federation).cloned().unwrap_or_default();
        let refused = |e: &Signed<KeyEpoch>, reason: String| AuditKind::KeyEpochRefused {
            federation: federation.to_string(),
            epoch: e.open(&e.federation()).map(|v| v.epoch()).unwrap_or_default(),
            issuer: e.signer().to_string(),
            reason,
        };
        let mut keyring = s.keyring(federation).duplicate();
        let mut accepted = Vec::with_capacity(chain.len());
        let mut fresh = Vec::new();
        let mut events = Vec::new();
        for (position, epoch) in chain.iter().enumerate() {
            let value = match epoch.open(&federation) {
                Ok(v) => v,
                Err(e) => {
                    let reason = format!("epoch of another federation: {e}");
                    return s.refuse(now, refused(epoch, reason), KeyError::from(e).into());
                }
            };
            let number = value.epoch();
            if held.contains(epoch) {
                accepted.push(if keyring.is_member(number) {
                    Accepted::Member { epoch: number }
                } else {
                    Accepted::NotMember { epoch: number }
                });
                continue;
            }
            let issuer = epoch.signer();
            let members: Vec<OrgId> = value.members().cloned().collect();
            let newest = position + 1 == chain.len();
            let check = match s.principal(&issuer, now) {
                Err(e) => Err(e.to_string()),
                Ok(p) if !p.roles().contains(&Role::Admin) => Err("no admin role".to_string()),
                Ok(p) => match (s.trust.level(p.org()), s.sealed_members(federation)) {
                    (None, _) => Err(format!("{} is not pinned", p.org())),
                    (Some(l), _) if !l.allows(Operation::Administer) => {
                        Err(format!("{} is not trusted to administer", p.org()))
                    }
                    (_, None) => Err("no sealed branch of this federation is known here".into()),
                    (_, Some(current)) if newest && !current.contains(p.org()) => {
                        Err(format!("{} is not a member of the sealed branch", p.org()))
                    }
                    (_, Some(current)) if newest && current != members.as_slice() => Err(format!(
                        "the epoch is for {members:?}, the sealed branch's members are \
                             {current:?}"
                    )),
                    _ => Ok(()),
                },
            };
            if let Err(reason) = check {
                return s.refuse(
                    now,
                    refused(epoch, reason.clone()),
                    GovernanceError::NotAnAdministrator { node: issuer, reason },
                );
            }
            match keyring.accept(epoch) {
                Ok(a) => accepted.push(a),
                Err(e) => return s.refuse(now, refused(epoch, e.to_string()), e.into()),
            }
            events.push(AuditKind::KeyEpoch {
                federation: federation.to_string(),
                epoch: number,
                members: members.iter().map(ToString::to_string).collect(),
                issued_here: false,
            });
            fresh.push(epoch.clone());
        }
        if events.is_empty() {
            return Ok(accepted);
        }
        let side = fresh.iter().filter_map(epoch_record).collect();
        s.record_all_with(now, events, side)?;
        let current = keyring.current_epoch();
        s.keyrings.insert(federation, keyring);
        s.epochs.entry(federation).or_default().extend(fresh);
        for (b, context) in s.contexts.iter_mut() {
            if b.federation == federation && context.level.seals() {
                context.key_epoch = current;
            }
        }
        Ok(accepted)
    }

    /// Seals `changes` for `branch` (which must be of a sealed level) under its federation's
    /// current data key. Refused with [`GovernanceError::KeyEpochPending`] while the epoch of
    /// the branch's latest membership change has not arrived.
    pub fn seal(
        &self,
        branch: &BranchRef,
        changes: &ChangeSet,
    ) -> Result<SealedChangeSet, GovernanceError> {
        let mut s = self.state();
        s.sealing_ready(branch)?;
        let mut rng = s.rng.clone();
        let sealed = s.keyring(branch.federation).seal(&mut rng, &branch.branch, changes)?;
        s.rng = rng;
        Ok(sealed)
    }

    /// Opens a sealed change set of `branch` (which must have a context here). A refusal (no
    /// key for its epoch because this organization was not a member when it was written,
    /// tampering, an unknown branch) is audited.
    pub fn open(
        &self,
        branch: &BranchRef,
        sealed: &SealedChangeSet,
        now: Timestamp,
    ) -> Result<ChangeSet, GovernanceError> {
        let mut s = self.state();
        if !s.contexts.contains_key(branch) {
            let me = s.signer.node_id();
            let e = GovernanceError::UnknownBranch(branch.branch.clone());
            return s.refuse_request(now, branch, &me, Operation::Read, e);
        }
        let result = s.keyring(branch.federation).open(&branch.branch, sealed);
        match result {
            Ok(c) => Ok(c),
            Err(e) => {
                let (federation, b) = branch_label(branch);
                s.refuse(
                    now,
                    AuditKind::SealedReadRefused {
                        federation,
                        branch: b,
                        epoch: sealed.epoch(),
                        reason: e.to_string(),
                    },
                    e.into(),
                )
            }
        }
    }

    /// Records a decision of a branch's consensus group.
    pub fn record_consensus_decision(
        &self,
        group: &[u8; 32],
        index: u64,
        proposal: &[u8; 32],
        outcome: &str,
        now: Timestamp,
    ) -> Result<u64, GovernanceError> {
        let mut s = self.state();
        Ok(s.record(
            now,
            AuditKind::ConsensusDecision {
                group: hex(group),
                index,
                proposal: hex(proposal),
                outcome: outcome.to_string(),
            },
        )?)
    }

    /// The number of audit entries.
    pub fn audit_size(&self) -> u64 {
        self.state().audit.size()
    }

    /// A checkpoint of the audit log at its current size, signed by the log's key.
    pub fn checkpoint(&self) -> Result<SignedNote, GovernanceError> {
        let s = self.state();
        let checkpoint = Checkpoint::new(s.log_signer.name(), s.audit.size(), s.audit.root())?;
        Ok(s.log_signer.sign(&checkpoint))
    }

    /// The key that verifies this manager's checkpoints (its name is the log's origin), for
    /// witnesses and auditors.
    pub fn log_verifier(&self) -> LogVerifier {
        self.state().log_signer.verifier()
    }

    /// Runs `f` on the audit log (proofs, entries, export).
    pub fn with_audit<R>(&self, f: impl FnOnce(&AuditLog<K>) -> R) -> R {
        f(&self.state().audit)
    }

    /// The security context of `branch`, if known here.
    pub fn context(&self, branch: &BranchRef) -> Option<SecurityContext> {
        self.state().contexts.get(branch).cloned()
    }

    /// Decides a branch request and, if `create`, creates its context: all under one lock,
    /// recorded in one atomic append.
    fn branch_request(
        &self,
        request: &FederatedBranchRequest,
        now: Timestamp,
        create: bool,
    ) -> Result<(SecurityDecision, Option<SecurityContext>), GovernanceError> {
        let mut s = self.state();
        let op = Operation::Administer;
        let node = &request.requester;
        let branch = BranchRef { federation: request.federation, branch: request.branch.clone() };
        let principal = s.requester(node, &branch, op, now)?;
        let mut members: BTreeSet<OrgId> = request.participants.iter().cloned().collect();
        members.insert(principal.org().clone());
        if let Err(reason) = check_request(request, &members) {
            return s.refuse_request(
                now,
                &branch,
                node,
                op,
                GovernanceError::InvalidRequest(reason),
            );
        }
        if s.contexts.contains_key(&branch) {
            let e = GovernanceError::AlreadyExists(branch.branch.clone());
            return s.refuse_request(now, &branch, node, op, e);
        }
        let members: Vec<OrgId> = members.into_iter().collect();
        let mut namespaces = request.namespaces.clone();
        namespaces.sort();
        let mut context = SecurityContext {
            branch: branch.clone(),
            members,
            level: request.security_level(),
            namespaces,
            key_epoch: None,
            created_at: now,
        };
        // Sealed branches of a federation share its data key, hence its members.
        let mut rotation = None;
        if create && context.level.seals() {
            match s.sealed_members(branch.federation) {
                Some(m) if m != context.members.as_slice() => {
                    let e = GovernanceError::SealedMembershipConflict(branch.federation);
                    return s.refuse_request(now, &branch, node, op, e);
                }
                Some(_) => {
                    context.key_epoch = s
                        .keyrings
                        .get(&branch.federation)
                        .and_then(FederationKeyring::current_epoch);
                }
                // Epochs kept from before a restart: the current one is the branch's if it
                // is for exactly its members; else the branch waits for the epoch of its
                // latest membership change (replayed, or fetched from another member).
                None if s.epochs.get(&branch.federation).is_some_and(|e| !e.is_empty()) => {
                    context.key_epoch = s.adoptable_epoch(branch.federation, &context.members);
                }
                // The requester's node issues the first epoch; the others accept it
                // (`accept_key_epoch`) when it reaches them.
                None if *node == s.signer.node_id() => {
                    match s.prepare_rotation(branch.federation, &context.members) {
                        Ok(r) => {
                            context.key_epoch = Some(r.number);
                            rotation = Some(r);
                        }
                        Err(e) => return s.refuse_request(now, &branch, node, op, e),
                    }
                }
                None => {}
            }
        }
        let owners = asks(&context, &[]);
        let decision = s.decide(&principal, op, &owners, owners.keys());
        drop(owners);
        let mut events = vec![decision_event(&branch, node, op, &decision)];
        if !create || !decision.is_approved() {
            s.record_all(now, events)?;
            return Ok((decision, None));
        }
        let (federation, b) = branch_label(&branch);
        events.push(AuditKind::ContextCreated {
            federation,
            branch: b,
            level: format!("{:?}", context.level).to_lowercase(),
            members: context.members.iter().map(ToString::to_string).collect(),
            key_epoch: context.key_epoch,
        });
        s.apply_context(now, events, rotation, context.clone())?;
        Ok((decision, Some(context)))
    }
}

fn security_error(e: GovernanceError, requester: NodeId) -> SecurityError {
    match e {
        GovernanceError::Trust(TrustError::Certificate(error)) => {
            SecurityError::Identity { node: requester, error }
        }
        other => other.into(),
    }
}

impl<K: KvStore + 'static> SecurityManager for FederatedSecurityManager<K> {
    fn validate_branch_request(
        &self,
        request: &FederatedBranchRequest,
        now: Timestamp,
    ) -> Result<SecurityDecision, SecurityError> {
        self.branch_request(request, now, false)
            .map(|(d, _)| d)
            .map_err(|e| security_error(e, request.requester))
    }

    fn create_security_context(
        &self,
        request: &FederatedBranchRequest,
        now: Timestamp,
    ) -> Result<SecurityContext, SecurityError> {
        match self.branch_request(request, now, true) {
            Ok((_, Some(context))) => Ok(context),
            Ok((decision, None)) => Err(SecurityError::NotApproved(decision)),
            Err(e) => Err(security_error(e, request.requester)),
        }
    }

    fn validate_cross_federation_merge(
        &self,
        merge: &CrossFederationMerge,
        now: Timestamp,
    ) -> Result<SecurityDecision, SecurityError> {
        let mut s = self.state();
        let op = Operation::Merge;
        let node = &merge.requester;
        let principal =
            s.requester(node, &merge.target, op, now).map_err(|e| security_error(e, *node))?;
        let iris: Vec<&str> = merge.predicates.iter().map(String::as_str).collect();
        // The target's owners consent on the target branch, the source's on theirs. A node
        // that holds only one of the two contexts answers for that side: the other side's
        // organizations consent through the target's log, each on its own node.
        let decision = match (s.contexts.get(&merge.target), s.contexts.get(&merge.source)) {
            (None, None) => {
                let e = GovernanceError::UnknownBranch(merge.target.branch.clone());
                return s
                    .refuse_request(now, &merge.target, node, op, e)
                    .map_err(|e| security_error(e, *node));
            }
            (target, source) => {
                let mut all = BTreeMap::new();
                for context in [target, source].into_iter().flatten() {
                    for (org, list) in asks(context, &iris) {
                        all.entry(org).or_insert_with(Vec::new).extend(list);
                    }
                }
                s.decide(&principal, op, &all, [])
            }
        };
        s.record_decision(now, &merge.target, node, op, &decision)
            .map_err(|e| SecurityError::Internal(e.to_string()))?;
        Ok(decision)
    }

    fn validate_membership_change(
        &self,
        change: &MembershipChange,
        now: Timestamp,
    ) -> Result<SecurityDecision, SecurityError> {
        self.membership_change(change, now, true).map(|(d, _)| d)
    }

    fn apply_membership_change(
        &self,
        change: &MembershipChange,
        now: Timestamp,
    ) -> Result<SecurityContext, SecurityError> {
        self.membership_change(change, now, false).map(|(_, c)| c)
    }

    fn record_decision(
        &self,
        _branch: &BranchRef,
        record: &DecisionRecord,
        now: Timestamp,
    ) -> Result<(), SecurityError> {
        self.record_consensus_decision(
            &record.group,
            record.index,
            &record.proposal,
            &record.outcome,
            now,
        )
        .map(|_| ())
        .map_err(|e| SecurityError::Internal(e.to_string()))
    }

    fn commit_policy(&self, branch: &BranchRef) -> Result<Arc<dyn CommitPolicy>, SecurityError> {
        self.state().context(branch).map_err(SecurityError::from)?;
        Ok(Arc::new(GovernanceCommitPolicy {
            state: Arc::clone(&self.state),
            branch: branch.clone(),
        }))
    }

    fn envelope_seal(
        &self,
        branch: &BranchRef,
    ) -> Result<Option<Arc<dyn EnvelopeSeal>>, SecurityError> {
        let level = self.state().context(branch).map_err(SecurityError::from)?.level;
        if !level.seals() {
            return Ok(None);
        }
        Ok(Some(Arc::new(GovernanceEnvelopeSeal {
            state: Arc::clone(&self.state),
            branch: branch.clone(),
        })))
    }

    fn key_epochs(&self, branch: &BranchRef) -> Vec<Vec<u8>> {
        let s = self.state();
        if !s.contexts.get(branch).is_some_and(|c| c.level.seals()) {
            return Vec::new();
        }
        let epochs = s.epochs.get(&branch.federation).map(Vec::as_slice).unwrap_or_default();
        epochs.iter().filter_map(|e| encoding::try_encode(e).ok()).collect()
    }

    fn accept_key_epochs(
        &self,
        branch: &BranchRef,
        epochs: &[Vec<u8>],
        now: Timestamp,
    ) -> Result<usize, SecurityError> {
        let mut chain = Vec::with_capacity(epochs.len());
        for bytes in epochs {
            let epoch = KeyEpoch::decode_signed(bytes, &branch.federation)
                .map_err(|e| SecurityError::InvalidRequest(format!("a key epoch: {e}")))?;
            chain.push(epoch);
        }
        let before = self.state().epochs.get(&branch.federation).map_or(0, Vec::len);
        self.accept_key_epochs(&chain, now).map_err(SecurityError::from)?;
        let after = self.state().epochs.get(&branch.federation).map_or(0, Vec::len);
        Ok(after.saturating_sub(before))
    }

    fn awaits_key_epoch(&self, branch: &BranchRef) -> bool {
        let s = self.state();
        s.contexts.get(branch).is_some_and(|c| c.level.seals()) && s.sealing_ready(branch).is_err()
    }
}

/// The envelope seal of one sealed branch under a [`FederatedSecurityManager`]: its
/// replicas' commits are shipped sealed under the federation's current data key, and a
/// sealed envelope this organization holds no key for is refused (audited as
/// `sealed-read-refused`).
pub struct GovernanceEnvelopeSeal<K: KvStore> {
    state: Arc<Mutex<State<K>>>,
    branch: BranchRef,
}

impl<K: KvStore> EnvelopeSeal for GovernanceEnvelopeSeal<K> {
    fn seal(&self, envelope: &[u8]) -> Result<Vec<u8>, SealError> {
        lock(&self.state).seal_envelope(&self.branch, envelope).map_err(seal_error)
    }

    fn open(&self, sealed: &[u8], now: Timestamp) -> Result<Vec<u8>, SealError> {
        lock(&self.state).open_envelope(&self.branch, sealed, now).map_err(seal_error)
    }
}

fn seal_error(e: GovernanceError) -> SealError {
    match e {
        GovernanceError::KeyEpochPending(_) => SealError::EpochPending,
        GovernanceError::Key(
            KeyError::NoKeyForEpoch { epoch } | KeyError::UnknownEpoch { epoch },
        ) => SealError::NoKey { epoch },
        GovernanceError::Key(e) => SealError::Unreadable(e.to_string()),
        GovernanceError::UnknownBranch(b) => {
            SealError::Unreadable(format!("no security context for branch {b}"))
        }
        other => SealError::Internal(other.to_string()),
    }
}

/// The second key byte of a stored key epoch: `[SIDE_PREFIX, EPOCH_RECORD, federation (32),
/// epoch (8, big-endian)]`, so that a scan returns each federation's chain in order.
const EPOCH_RECORD: u8 = b'k';

/// The side record that keeps `epoch` beside the audit event that accepts or issues it.
fn epoch_record(epoch: &Signed<KeyEpoch>) -> Option<(Vec<u8>, Vec<u8>)> {
    let federation = epoch.federation();
    let number = epoch.open(&federation).ok()?.epoch();
    let mut key = Vec::with_capacity(42);
    key.extend_from_slice(&[SIDE_PREFIX, EPOCH_RECORD]);
    key.extend_from_slice(federation.as_bytes());
    key.extend_from_slice(&number.to_be_bytes());
    Some((key, encoding::try_encode(epoch).ok()?))
}

impl<K: KvStore + 'static> FederatedSecurityManager<K> {
    /// Decides (`dry_run`) or applies a membership change the branch's group decided.
    fn membership_change(
        &self,
        change: &MembershipChange,
        now: Timestamp,
        dry_run: bool,
    ) -> Result<(SecurityDecision, SecurityContext), SecurityError> {
        let (add, remove) = membership_sides(change);
        let issuer = change.issuer.as_ref();
        self.change_members(&change.requester, issuer, &change.branch, now, add, remove, dry_run)
            .map_err(|e| security_error(e, change.requester))
    }
}

fn membership_sides(change: &MembershipChange) -> (Option<OrgId>, Option<&OrgId>) {
    if change.joins { (Some(change.org.clone()), None) } else { (None, Some(&change.org)) }
}

/// The commit policy of one branch under a [`FederatedSecurityManager`]: the author holds a
/// certificate valid at the commit's timestamp from a pinned root, of the commit's
/// organization; this node's trust in that organization allows committing; and every
/// organization whose data the commit's predicates touch permits the author to commit them.
/// Refusals are audited.
pub struct GovernanceCommitPolicy<K: KvStore> {
    state: Arc<Mutex<State<K>>>,
    branch: BranchRef,
}

impl<K: KvStore> CommitPolicy for GovernanceCommitPolicy<K> {
    fn check(&self, commit: &SignedCommit) -> Result<(), CommitRefusal> {
        let mut s = lock(&self.state);
        let c = commit.commit();
        let author = c.author();
        let refusal = (|| {
            let principal = s.principal(&author, c.timestamp()).map_err(|e| match e {
                TrustError::Certificate(error) => {
                    CommitRefusal::InvalidCertificate { author, error }
                }
                _ => CommitRefusal::NoCertificate { author },
            })?;
            if principal.org() != c.org() {
                return Err(CommitRefusal::OrgMismatch {
                    author,
                    commit_org: c.org().clone(),
                    certified_org: principal.org().clone(),
                });
            }
            let preds = predicates(c.changes());
            let iris: Vec<&str> = preds.iter().map(String::as_str).collect();
            let context =
                s.context(&self.branch).map_err(|e| CommitRefusal::Other(e.to_string()))?;
            let d = s.decide(&principal, Operation::Commit, &asks(context, &iris), []);
            if d.is_approved() {
                Ok(())
            } else {
                Err(CommitRefusal::AccessDenied { author, reason: d.to_string() })
            }
        })();
        if let Err(r) = &refusal {
            let (federation, branch) = branch_label(&self.branch);
            let kind = AuditKind::CommitRefused {
                federation,
                branch,
                commit: commit.id().to_string(),
                author: author.to_string(),
                reason: r.to_string(),
            };
            if s.record(c.timestamp(), kind).is_err() {
                return Err(CommitRefusal::Other("audit log unavailable".into()));
            }
        }
        refusal
    }
}
