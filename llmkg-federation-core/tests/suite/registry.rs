#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The federation registry: the rules of consent, scenario by scenario, then random logs of
//! valid and invalid entries checked against an independent model of those rules, replayed
//! on twin registries, and cut by snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use std::time::Duration;

use llmkg_federation_core::consensus::{
    BranchCreation, ConsensusProposal, DecisionMachine, FederatedMerge, GroupChannels, GroupId,
    Member, MergeCommit, NodeJoin, NodeLeave, Outcome, PolicyUpdate, ProposalId, ProposalKind,
    SynchronizationPlan,
};
use llmkg_federation_core::federated::{
    ApprovalRule, Consent, ConsentVerdict, Directory, FederatedBranchRequest, FederatedMergePolicy,
    FederationPolicy, GovernanceRules, GovernedOperation, MAX_REASON_LEN, Orgs, Quorum,
    merge_heads,
};
use llmkg_federation_core::registry::{Registry, RegistryEvent, SharedRegistry};
use llmkg_federation_core::security::NamespaceClaim;
use llmkg_federation_core::sync::FederatedSyncStrategy;
use llmkg_federation_core::{
    BranchName, ChangeSet, CommitId, FederationId, NodeCertificate, NodeId, NodeKeypair, OrgId,
    OrgKeypair, OrgRootKey, Role, Signed, StateRoot, Timestamp,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Fixture: five organizations with their roots and certified nodes, a forger, a stranger.
// ---------------------------------------------------------------------------------------------

/// The start of every log, in microseconds since the epoch.
const T0: i64 = 1_700_000_000_000_000;
const SEC: i64 = 1_000_000;
const DAY: i64 = 86_400;
/// `expiring` certificates are valid until `at(EXPIRES)`.
const EXPIRES: i64 = 300;
/// `late` certificates are valid from `at(LATE)`.
const LATE: i64 = 600;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_micros(T0 + secs * SEC)
}

fn commit(n: u64) -> CommitId {
    let mut bytes = [0xC0; 32];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    CommitId::from_bytes(bytes)
}

const ACME: usize = 0;
const GLOBEX: usize = 1;
const INITECH: usize = 2;
/// Not a founder: joins later, naming its root.
const NEWCO: usize = 3;
/// Not a founder: the source organization of merges.
const UMBRELLA: usize = 4;

/// acme 0 and 1, globex 0, initech 0 to 2 found the branch; acme 2 and globex 1 are certified
/// but outside the group; the other nodes may join.
const FOUNDERS: &[(usize, &[usize])] = &[(ACME, &[0, 1]), (GLOBEX, &[0]), (INITECH, &[0, 1, 2])];

struct Org {
    id: OrgId,
    root: OrgKeypair,
    nodes: Vec<NodeKeypair>,
    /// Valid from a day before the logs start to 30 days after.
    valid: Vec<NodeCertificate>,
    /// Valid until `at(EXPIRES)`.
    expiring: Vec<NodeCertificate>,
    /// Valid from `at(LATE)`.
    late: Vec<NodeCertificate>,
    /// Signed by the forger's root, claiming this organization.
    forged: Vec<NodeCertificate>,
}

impl Org {
    fn new(index: usize, name: &str, size: usize, forger: &OrgKeypair) -> Self {
        let id = OrgId::new(name).unwrap();
        let root = OrgKeypair::from_secret_bytes([0xA0 + index as u8; 32]);
        let nodes: Vec<NodeKeypair> = (0..size)
            .map(|j| {
                let mut secret = [0x11; 32];
                secret[0] = index as u8 + 1;
                secret[1] = j as u8 + 1;
                NodeKeypair::from_secret_bytes(secret)
            })
            .collect();
        let certify = |by: &OrgKeypair, j: usize, from: i64, to: i64, kind: u64| {
            let node = nodes[j].node_id();
            by.certify(id.clone(), node, [Role::Admin], at(from), at(to), j as u64 * 4 + kind)
                .unwrap()
        };
        let each = |by: &OrgKeypair, from: i64, to: i64, kind: u64| -> Vec<NodeCertificate> {
            (0..size).map(|j| certify(by, j, from, to, kind)).collect()
        };
        let valid = each(&root, -DAY, 30 * DAY, 0);
        let expiring = each(&root, -DAY, EXPIRES, 1);
        let late = each(&root, LATE, 30 * DAY, 2);
        let forged = each(forger, -DAY, 30 * DAY, 3);
        Self { id, root, nodes, valid, expiring, late, forged }
    }

    fn member(&self, j: usize) -> Member {
        Member { node: self.nodes[j].node_id(), org: self.id.clone() }
    }

    fn root_key(&self) -> OrgRootKey {
        self.root.root_key()
    }
}

struct Fixture {
    federation: FederationId,
    orgs: Vec<Org>,
    forger: OrgKeypair,
    stranger: NodeKeypair,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let forger = OrgKeypair::from_secret_bytes([0xF0; 32]);
    let orgs = [("acme", 5), ("globex", 3), ("initech", 4), ("newco", 3), ("umbrella", 2)]
        .iter()
        .enumerate()
        .map(|(i, (name, size))| Org::new(i, name, *size, &forger))
        .collect();
    Fixture {
        federation: FederationId::from_name("registry-tests"),
        orgs,
        forger,
        stranger: NodeKeypair::from_secret_bytes([0xEE; 32]),
    }
});

fn fx() -> &'static Fixture {
    &FIXTURE
}

impl Fixture {
    fn node(&self, org: usize, j: usize) -> &NodeKeypair {
        &self.orgs[org].nodes[j]
    }

    fn org_id(&self, org: usize) -> OrgId {
        self.orgs[org].id.clone()
    }

    fn org_index(&self, id: &OrgId) -> usize {
        self.orgs.iter().position(|o| &o.id == id).unwrap()
    }

    /// Every node key, the stranger last.
    fn keys(&self) -> Vec<&NodeKeypair> {
        self.orgs.iter().flat_map(|o| o.nodes.iter()).chain([&self.stranger]).collect()
    }

    fn key(&self, node: NodeId) -> &NodeKeypair {
        self.keys().into_iter().find(|k| k.node_id() == node).unwrap()
    }

    /// The creation of a branch held by `founders` (organization, its founding nodes); the
    /// first founder requests it.
    fn creation(
        &self,
        founders: &[(usize, &[usize])],
        rules: GovernanceRules,
        policy: FederationPolicy,
        nonce: u64,
    ) -> BranchCreation {
        let (first, first_nodes) = founders[0];
        let request = FederatedBranchRequest::new(
            self.federation,
            BranchName::new("shared").unwrap(),
            self.node(first, first_nodes[0]).node_id(),
            founders.iter().map(|(o, _)| self.org_id(*o)),
        )
        .with_rules(rules)
        .with_policy(policy);
        BranchCreation {
            request,
            members: founders
                .iter()
                .flat_map(|(o, nodes)| nodes.iter().map(|j| self.orgs[*o].member(*j)))
                .collect(),
            directory: founders
                .iter()
                .map(|(o, _)| (self.org_id(*o), self.orgs[*o].root_key()))
                .collect(),
            channels: GroupChannels { consensus: 1, sync: 2 },
            nonce,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn sign(
    signer: &NodeKeypair,
    federation: &FederationId,
    group: GroupId,
    kind: ProposalKind,
    proposed_at: Timestamp,
    deadline: Timestamp,
    nonce: u64,
) -> Signed<ConsensusProposal> {
    let kind = match kind {
        ProposalKind::FederatedMerge(m) => ProposalKind::FederatedMerge(with_commit(signer, m)),
        other => other,
    };
    let proposal = ConsensusProposal { group, kind, proposed_at, deadline, nonce };
    Signed::sign_crate_kind(signer, federation, proposal).unwrap()
}

/// `merge` with its commit made as its proposer `signer` makes it: of the signer's
/// organization, under a key of the merge's own (derived from everything else it says). A
/// merge whose commit a test set already (its author is not the placeholder) is left as is.
fn with_commit(signer: &NodeKeypair, mut merge: FederatedMerge) -> FederatedMerge {
    if merge.commit.author != PLACEHOLDER.node_id() {
        return merge;
    }
    let org = fx()
        .orgs
        .iter()
        .find(|o| o.nodes.iter().any(|n| n.node_id() == signer.node_id()))
        .map_or_else(|| fx().org_id(0), |o| o.id.clone());
    merge.commit.org = org;
    let seed = blake3::hash(&postcard::to_stdvec(&merge).unwrap());
    merge.sign_commit(&NodeKeypair::from_secret_bytes(*seed.as_bytes())).unwrap();
    merge
}

/// The author of a merge commit not made yet.
static PLACEHOLDER: LazyLock<NodeKeypair> =
    LazyLock::new(|| NodeKeypair::from_secret_bytes([0xA5; 32]));

fn unsigned_commit() -> MergeCommit {
    MergeCommit {
        author: PLACEHOLDER.node_id(),
        org: fx().org_id(0),
        timestamp: at(0),
        signature: [0; 64],
    }
}

fn id(entry: &Signed<ConsensusProposal>) -> ProposalId {
    ProposalId::of(entry).unwrap()
}

/// The heads a consent to `entry` must name.
fn heads_of(entry: &Signed<ConsensusProposal>) -> Vec<CommitId> {
    match &entry.open(&fx().federation).unwrap().kind {
        ProposalKind::FederatedMerge(m) => merge_heads(&m.source_heads, &m.target_heads),
        _ => Vec::new(),
    }
}

fn rules_with(rules: &[(GovernedOperation, Quorum, i64)]) -> GovernanceRules {
    rules.iter().fold(GovernanceRules::default(), |r, (op, quorum, secs)| {
        r.with(ApprovalRule::new(*op, quorum.clone(), Duration::from_secs(*secs as u64)))
    })
}

fn orgs(list: &[usize]) -> Vec<OrgId> {
    let mut ids: Vec<OrgId> = list.iter().map(|o| fx().org_id(*o)).collect();
    ids.sort();
    ids
}

fn named(list: &[usize]) -> Quorum {
    Quorum::Named(list.iter().map(|o| fx().org_id(*o)).collect())
}

fn merge_from(source_group: GroupId, source_orgs: Directory, n: u64) -> ProposalKind {
    ProposalKind::FederatedMerge(FederatedMerge {
        source_group,
        source_branch: BranchName::new("upstream").unwrap(),
        source_heads: vec![commit(n)],
        target_heads: vec![commit(n + 1)],
        source_orgs,
        policy: FederatedMergePolicy::default(),
        changes: ChangeSet::default(),
        result_root: StateRoot::from_bytes([0; 32]),
        commit: unsigned_commit(),
    })
}

const UPSTREAM: GroupId = GroupId::from_bytes([9; 32]);

/// A merge from another group whose organizations are `sources` (with their true roots).
fn merge(sources: &[usize], n: u64) -> ProposalKind {
    let sources = sources.iter().map(|o| (fx().org_id(*o), fx().orgs[*o].root_key())).collect();
    merge_from(UPSTREAM, sources, n)
}

fn policy_update(version: u64) -> ProposalKind {
    ProposalKind::PolicyUpdate(PolicyUpdate {
        policy: "retention".into(),
        version,
        document: vec![version as u8],
    })
}

fn join(org: usize, j: usize, root: Option<OrgRootKey>) -> ProposalKind {
    ProposalKind::NodeJoin(NodeJoin { member: fx().orgs[org].member(j), root })
}

fn leave(org: usize, j: usize) -> ProposalKind {
    ProposalKind::NodeLeave(NodeLeave { node: fx().node(org, j).node_id() })
}

fn executed(events: &[RegistryEvent]) -> Vec<ProposalId> {
    events
        .iter()
        .filter_map(|e| match e {
            RegistryEvent::Executed(op) => Some(op.proposal),
            _ => None,
        })
        .collect()
}

fn rejections(events: &[RegistryEvent]) -> Vec<(ProposalId, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            RegistryEvent::Rejected { proposal, reason, .. } => Some((*proposal, reason.clone())),
            _ => None,
        })
        .collect()
}

fn is_rejected(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Rejected { .. })
}

fn pending(awaiting: &[usize]) -> Outcome {
    Outcome::Pending { awaiting: orgs(awaiting) }
}

// ---------------------------------------------------------------------------------------------
// A scenario driver: one registry, its log position and a clock in seconds.
// ---------------------------------------------------------------------------------------------

struct Run {
    reg: Registry,
    index: u64,
    now: i64,
    nonce: u64,
}

impl Run {
    /// Applies `creation` (signed by its requester) at index 1, at time 0.
    fn create(creation: BranchCreation) -> (Self, Signed<ConsensusProposal>, Outcome) {
        let group = creation.group_id().unwrap();
        let mut run =
            Run { reg: Registry::new(fx().federation, group), index: 0, now: 0, nonce: 0 };
        let requester = fx().key(creation.request.requester);
        let (entry, outcome) = run.submit(requester, ProposalKind::BranchCreation(creation));
        (run, entry, outcome)
    }

    /// A branch of `founders` whose creation every founder approved (with its node 0).
    fn active(
        founders: &[(usize, &[usize])],
        rules: GovernanceRules,
        policy: FederationPolicy,
    ) -> (Self, Signed<ConsensusProposal>) {
        let (mut run, creation, _) = Run::create(fx().creation(founders, rules, policy, 1));
        for (org, _) in founders {
            assert_eq!(run.approve(*org, 0, &creation), Outcome::Approved);
        }
        assert!(run.reg.is_active());
        run.reg.take_events();
        (run, creation)
    }

    fn trio(rules: GovernanceRules) -> Self {
        Run::active(FOUNDERS, rules, FederationPolicy::default()).0
    }

    fn group(&self) -> GroupId {
        self.reg.group()
    }

    /// An entry made now, with a deadline a day later.
    fn entry(&mut self, signer: &NodeKeypair, kind: ProposalKind) -> Signed<ConsensusProposal> {
        self.entry_until(signer, kind, self.now + DAY)
    }

    fn entry_until(
        &mut self,
        signer: &NodeKeypair,
        kind: ProposalKind,
        deadline: i64,
    ) -> Signed<ConsensusProposal> {
        self.nonce += 1;
        let (fed, group) = (fx().federation, self.group());
        sign(signer, &fed, group, kind, at(self.now), at(deadline), self.nonce)
    }

    fn apply(&mut self, entry: &Signed<ConsensusProposal>) -> Outcome {
        self.index += 1;
        self.reg.apply(self.index, entry)
    }

    fn submit(
        &mut self,
        signer: &NodeKeypair,
        kind: ProposalKind,
    ) -> (Signed<ConsensusProposal>, Outcome) {
        let entry = self.entry(signer, kind);
        let outcome = self.apply(&entry);
        (entry, outcome)
    }

    /// A consent to `proposal` for `org`, signed by `signer` carrying `certificate`.
    fn consent_entry(
        &mut self,
        signer: &NodeKeypair,
        org: usize,
        certificate: &NodeCertificate,
        proposal: &Signed<ConsensusProposal>,
        heads: Vec<CommitId>,
        verdict: ConsentVerdict,
    ) -> Signed<ConsensusProposal> {
        let consent = Consent {
            proposal: id(proposal),
            heads,
            org: fx().org_id(org),
            verdict,
            certificate: certificate.clone(),
        };
        self.entry(signer, ProposalKind::Consent(consent))
    }

    /// A genuine consent of `org` by its node `j`.
    fn genuine(
        &mut self,
        org: usize,
        j: usize,
        proposal: &Signed<ConsensusProposal>,
        verdict: ConsentVerdict,
    ) -> Signed<ConsensusProposal> {
        let o = &fx().orgs[org];
        self.consent_entry(&o.nodes[j], org, &o.valid[j], proposal, heads_of(proposal), verdict)
    }

    fn approve(&mut self, org: usize, j: usize, proposal: &Signed<ConsensusProposal>) -> Outcome {
        let entry = self.genuine(org, j, proposal, ConsentVerdict::Approve);
        self.apply(&entry)
    }

    fn refuse(
        &mut self,
        org: usize,
        j: usize,
        proposal: &Signed<ConsensusProposal>,
        reason: &str,
    ) -> Outcome {
        let entry =
            self.genuine(org, j, proposal, ConsentVerdict::Refuse { reason: reason.into() });
        self.apply(&entry)
    }

    /// Moves the clock `secs` on and applies an entry made then (a member's consent to nothing,
    /// rejected), so that the registry's time follows.
    fn tick(&mut self, secs: i64) {
        self.now += secs;
        let acme = &fx().orgs[ACME];
        let consent = Consent {
            proposal: ProposalId::from_bytes([0x5A; 32]),
            heads: Vec::new(),
            org: acme.id.clone(),
            verdict: ConsentVerdict::Approve,
            certificate: acme.valid[0].clone(),
        };
        let entry = self.entry(&acme.nodes[0], ProposalKind::Consent(consent));
        assert!(is_rejected(&self.apply(&entry)));
        assert_eq!(self.reg.time(), at(self.now));
    }

    /// Applies `entry` (made no later than the registry's time) and checks that it is rejected
    /// and changes nothing: the registry ends as a copy of it would after an entry of another
    /// group at the same position (every entry advances the log position, nothing else).
    fn quietly_rejected(&mut self, entry: &Signed<ConsensusProposal>) -> String {
        assert!(entry.open(&entry.federation()).unwrap().proposed_at <= self.reg.time());
        self.reg.take_events();
        let mut control = self.reg.clone();
        self.index += 1;
        let elsewhere = sign(
            &fx().stranger,
            &fx().federation,
            GroupId::from_bytes([0xAB; 32]),
            policy_update(0),
            at(self.now),
            at(self.now),
            0,
        );
        assert!(is_rejected(&control.apply(self.index, &elsewhere)));
        let outcome = self.reg.apply(self.index, entry);
        let Outcome::Rejected { reason } = outcome else {
            panic!("expected a rejection, got {outcome:?}");
        };
        assert_eq!(self.reg.take_events(), Vec::new(), "a rejected entry ({reason}) has no effect");
        assert_eq!(
            self.reg.digest(),
            control.digest(),
            "a rejected entry ({reason}) changed the state"
        );
        reason
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios: the creation.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_creation_is_pending_until_every_participant_consents() {
    let creation =
        fx().creation(FOUNDERS, GovernanceRules::default(), FederationPolicy::default(), 1);
    let (mut run, entry, outcome) = Run::create(creation.clone());
    let c = id(&entry);
    assert_eq!(outcome, pending(&[ACME, GLOBEX, INITECH]));
    assert_eq!(
        run.reg.take_events(),
        vec![RegistryEvent::Pending {
            proposal: c,
            index: 1,
            awaiting: orgs(&[ACME, GLOBEX, INITECH])
        }]
    );
    assert!(!run.reg.is_active());
    let branch = run.reg.branch().unwrap();
    assert_eq!(branch.organizations, orgs(&[ACME, GLOBEX, INITECH]));
    assert_eq!(branch.members.len(), 6);
    assert!(branch.members.windows(2).all(|w| w[0] < w[1]), "members are sorted");
    assert_eq!(branch.created_at, at(0));
    assert_eq!(branch.expires_at, None);
    assert_eq!(run.reg.directory().len(), 3);
    assert_eq!(run.reg.directory()[&fx().org_id(GLOBEX)], fx().orgs[GLOBEX].root_key());
    // The creation waits at most the default deadline, whatever its entry says.
    assert_eq!(run.reg.pending_operation(&c).unwrap().deadline, at(300));

    assert_eq!(run.approve(ACME, 1, &entry), Outcome::Approved);
    assert_eq!(
        run.reg.take_events(),
        vec![RegistryEvent::Approved { proposal: c, org: fx().org_id(ACME), index: 2 }]
    );
    assert_eq!(run.reg.pending_operation(&c).unwrap().awaiting(), orgs(&[GLOBEX, INITECH]));
    assert!(!run.reg.is_active());
    // A second node of the same organization answers nothing new.
    let again = run.genuine(ACME, 0, &entry, ConsentVerdict::Approve);
    assert!(run.quietly_rejected(&again).contains("already answered"));
    assert_eq!(run.approve(INITECH, 2, &entry), Outcome::Approved);
    assert!(!run.reg.is_active());
    assert!(run.reg.history().is_empty());

    assert_eq!(run.approve(GLOBEX, 0, &entry), Outcome::Approved);
    assert!(run.reg.is_active());
    let events = run.reg.take_events();
    assert_eq!(executed(&events), vec![c]);
    let done = run.reg.executed(&c).unwrap();
    assert_eq!((done.proposed_at_index, done.index), (1, run.index));
    assert_eq!(done.approved_by, orgs(&[ACME, GLOBEX, INITECH]));
    assert_eq!(done.kind, ProposalKind::BranchCreation(creation));
    assert_eq!(run.reg.pending().count(), 0);
    assert_eq!(run.reg.membership_version(), 0);

    // Once decided, the creation is neither entered again nor answered again.
    assert!(run.quietly_rejected(&entry).contains("replay"));
    let late = run.genuine(INITECH, 0, &entry, ConsentVerdict::Approve);
    assert!(run.quietly_rejected(&late).contains("no pending proposal"));
}

#[test]
fn proposals_before_the_creation_is_approved_are_rejected() {
    // An empty registry decides nothing but a creation.
    let creation =
        fx().creation(FOUNDERS, GovernanceRules::default(), FederationPolicy::default(), 7);
    let mut empty = Run {
        reg: Registry::new(fx().federation, creation.group_id().unwrap()),
        index: 0,
        now: 0,
        nonce: 0,
    };
    let e = empty.entry(fx().node(ACME, 0), policy_update(1));
    let Outcome::Rejected { reason } = empty.apply(&e) else { panic!("decided before a creation") };
    assert!(reason.contains("not created"), "{reason}");
    assert!(empty.reg.branch().is_none());
    assert!(empty.reg.take_events().is_empty());

    let (mut run, entry, _) = Run::create(creation);
    assert_eq!(run.approve(ACME, 0, &entry), Outcome::Approved);
    let acme = fx().node(ACME, 0);
    let plan = ProposalKind::SynchronizationPlan(SynchronizationPlan {
        strategy: FederatedSyncStrategy::StrongConsistency,
        interval_ms: 0,
    });
    for kind in [
        merge(&[UMBRELLA], 1),
        policy_update(1),
        plan,
        join(NEWCO, 0, Some(fx().orgs[NEWCO].root_key())),
        join(ACME, 3, None),
        leave(INITECH, 1),
        leave(ACME, 0),
    ] {
        let e = run.entry(acme, kind);
        assert!(run.quietly_rejected(&e).contains("not created"));
    }
    assert_eq!(run.reg.members().len(), 6);
    assert_eq!(run.reg.pending().count(), 1);
}

#[test]
fn a_refused_or_late_creation_never_activates() {
    // A refusal.
    let creation =
        fx().creation(FOUNDERS, GovernanceRules::default(), FederationPolicy::default(), 2);
    let (mut run, entry, _) = Run::create(creation);
    assert_eq!(run.approve(ACME, 0, &entry), Outcome::Approved);
    assert_eq!(run.refuse(GLOBEX, 0, &entry, "not with them"), Outcome::Approved);
    let rejected = rejections(&run.reg.take_events());
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].0, id(&entry));
    assert!(rejected[0].1.contains("globex refused: not with them"), "{}", rejected[0].1);
    assert!(!run.reg.is_active());
    let e = run.genuine(INITECH, 0, &entry, ConsentVerdict::Approve);
    assert!(run.quietly_rejected(&e).contains("no pending proposal"));
    let e = run.entry(fx().node(ACME, 0), policy_update(1));
    assert!(run.quietly_rejected(&e).contains("not created"));

    // A deadline: the entry's own, when it is earlier than the default.
    let creation =
        fx().creation(FOUNDERS, GovernanceRules::default(), FederationPolicy::default(), 3);
    let group = creation.group_id().unwrap();
    let mut run = Run { reg: Registry::new(fx().federation, group), index: 0, now: 0, nonce: 0 };
    let requester = fx().node(ACME, 0);
    let entry = run.entry_until(requester, ProposalKind::BranchCreation(creation), 100);
    assert!(matches!(run.apply(&entry), Outcome::Pending { .. }));
    assert_eq!(run.reg.pending_operation(&id(&entry)).unwrap().deadline, at(100));
    assert_eq!(run.approve(ACME, 0, &entry), Outcome::Approved);
    run.now = 100;
    assert_eq!(run.approve(GLOBEX, 0, &entry), Outcome::Approved);
    run.now = 101;
    assert!(is_rejected(&run.approve(INITECH, 0, &entry)));
    let rejected = rejections(&run.reg.take_events());
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].1.contains("deadline passed awaiting initech"), "{}", rejected[0].1);
    assert!(!run.reg.is_active());
    assert!(run.reg.history().is_empty());
}

#[test]
fn malformed_creations_are_rejected() {
    let good = fx().creation(FOUNDERS, GovernanceRules::default(), FederationPolicy::default(), 4);
    let acme = fx().node(ACME, 0);
    let try_creation = |c: BranchCreation, signer: &NodeKeypair, group: Option<GroupId>| {
        let group = group.unwrap_or_else(|| c.group_id().unwrap());
        let mut reg = Registry::new(fx().federation, group);
        let entry = sign(
            signer,
            &fx().federation,
            group,
            ProposalKind::BranchCreation(c),
            at(0),
            at(DAY),
            1,
        );
        let outcome = reg.apply(1, &entry);
        assert!(reg.branch().is_none());
        assert!(!reg.is_active());
        assert_eq!(reg.pending().count(), 0);
        assert!(reg.take_events().is_empty());
        match outcome {
            Outcome::Rejected { reason } => reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    };
    // Not signed by its requester.
    assert!(try_creation(good.clone(), fx().node(GLOBEX, 0), None).contains("requester"));
    // Entered into a group that is not its hash.
    let other = GroupId::from_bytes([3; 32]);
    assert!(try_creation(good.clone(), acme, Some(other)).contains("not the hash"));
    // A participant without its root, or a root named twice.
    let mut c = good.clone();
    c.directory.pop();
    assert!(try_creation(c, acme, None).contains("directory"));
    let mut c = good.clone();
    c.directory.push(c.directory[0].clone());
    assert!(try_creation(c, acme, None).contains("directory"));
    // A member of an organization that does not participate.
    let mut c = good.clone();
    c.members.push(fx().orgs[NEWCO].member(0));
    assert!(try_creation(c, acme, None).contains("not a participant"));
    // A member named twice.
    let mut c = good.clone();
    c.members.push(c.members[0].clone());
    assert!(try_creation(c, acme, None).contains("twice"));
    // A participant without a node.
    let mut c = good.clone();
    c.members.retain(|m| m.org != fx().org_id(GLOBEX));
    assert!(try_creation(c, acme, None).contains("no node"));
    // A requester outside the group.
    let mut c = good.clone();
    c.members.retain(|m| m.node != acme.node_id());
    assert!(try_creation(c, acme, None).contains("requester is not one"));
    // One channel for consensus and sync.
    let mut c = good.clone();
    c.channels.sync = c.channels.consensus;
    assert!(try_creation(c, acme, None).contains("channels"));
    // No participant at all.
    let mut c = good.clone();
    c.request.participants.clear();
    assert!(try_creation(c, acme, None).contains("participants"));
    // Signed for another federation.
    let group = good.group_id().unwrap();
    let mut reg = Registry::new(fx().federation, group);
    let elsewhere = FederationId::from_name("elsewhere");
    let entry =
        sign(acme, &elsewhere, group, ProposalKind::BranchCreation(good), at(0), at(DAY), 1);
    assert!(is_rejected(&reg.apply(1, &entry)));
    assert!(reg.branch().is_none());
}

// ---------------------------------------------------------------------------------------------
// Scenarios: quorums.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_merge_under_quorum_all_waits_for_every_involved_organization() {
    let mut run = Run::trio(GovernanceRules::default());
    let (m, outcome) = run.submit(fx().node(ACME, 0), merge(&[UMBRELLA], 10));
    // The source's organizations are involved too.
    assert_eq!(outcome, pending(&[ACME, GLOBEX, INITECH, UMBRELLA]));
    let op = run.reg.pending_operation(&id(&m)).unwrap();
    assert_eq!(op.heads, vec![commit(10), commit(11)]);
    assert_eq!(op.heads, heads_of(&m));
    assert_eq!(op.quorum, Quorum::All);
    assert_eq!(op.deadline, at(300));
    assert_eq!(op.roots.get(&fx().org_id(UMBRELLA)), Some(&fx().orgs[UMBRELLA].root_key()));
    for org in [ACME, GLOBEX, INITECH] {
        assert_eq!(run.approve(org, 0, &m), Outcome::Approved);
        assert!(executed(&run.reg.take_events()).is_empty());
    }
    assert_eq!(run.reg.pending_operation(&id(&m)).unwrap().awaiting(), orgs(&[UMBRELLA]));
    // umbrella's node is no member of the group; its certificate is checked against the root
    // the proposal names for it.
    assert_eq!(run.approve(UMBRELLA, 1, &m), Outcome::Approved);
    assert_eq!(executed(&run.reg.take_events()), vec![id(&m)]);
    let done = run.reg.executed(&id(&m)).unwrap();
    assert_eq!(done.approved_by, orgs(&[ACME, GLOBEX, INITECH, UMBRELLA]));
    assert_eq!(done.proposed_at_index, 5);
    // A merge does not pin the source's roots in the branch.
    assert!(!run.reg.directory().contains_key(&fx().org_id(UMBRELLA)));
    assert_eq!(run.reg.branch().unwrap().organizations, orgs(&[ACME, GLOBEX, INITECH]));
}

#[test]
fn a_merge_under_at_least_n_executes_at_the_nth_distinct_approval() {
    // (n, how many approvals it takes among the 4 involved organizations)
    for (n, needed) in [(0, 1), (1, 1), (2, 2), (3, 3), (4, 4), (9, 4)] {
        let rules = rules_with(&[(GovernedOperation::Merge, Quorum::AtLeast(n), 60)]);
        let mut run = Run::trio(rules);
        let (m, outcome) = run.submit(fx().node(GLOBEX, 0), merge(&[UMBRELLA], 20));
        assert_eq!(outcome, pending(&[ACME, GLOBEX, INITECH, UMBRELLA]));
        let order = [UMBRELLA, INITECH, ACME, GLOBEX];
        for (k, org) in order.iter().enumerate() {
            assert_eq!(run.approve(*org, 0, &m), Outcome::Approved, "AtLeast({n})");
            let events = run.reg.take_events();
            if k + 1 < needed {
                assert!(executed(&events).is_empty(), "AtLeast({n}) after {} approvals", k + 1);
                // The same organization again does not count twice.
                let again = run.genuine(*org, 1, &m, ConsentVerdict::Approve);
                assert!(run.quietly_rejected(&again).contains("already answered"));
            } else {
                assert_eq!(executed(&events), vec![id(&m)], "AtLeast({n})");
                assert_eq!(run.reg.executed(&id(&m)).unwrap().approved_by, orgs(&order[..needed]));
                // Later consents find nothing pending.
                if let Some(next) = order.get(k + 1) {
                    let late = run.genuine(*next, 0, &m, ConsentVerdict::Approve);
                    assert!(run.quietly_rejected(&late).contains("no pending proposal"));
                }
                break;
            }
        }
    }
}

#[test]
fn a_merge_under_a_named_quorum_waits_only_for_the_named() {
    let rules = rules_with(&[(GovernedOperation::Merge, named(&[GLOBEX, UMBRELLA, NEWCO]), 60)]);
    let mut run = Run::trio(rules);
    let (m, outcome) = run.submit(fx().node(ACME, 0), merge(&[UMBRELLA], 30));
    // newco is named but not involved: only the named involved ones are awaited.
    assert_eq!(outcome, pending(&[GLOBEX, UMBRELLA]));
    // An involved organization that is not named may answer; its approval decides nothing.
    assert_eq!(run.approve(ACME, 0, &m), Outcome::Approved);
    assert!(executed(&run.reg.take_events()).is_empty());
    assert_eq!(run.approve(UMBRELLA, 0, &m), Outcome::Approved);
    assert!(executed(&run.reg.take_events()).is_empty());
    assert_eq!(run.reg.pending_operation(&id(&m)).unwrap().awaiting(), orgs(&[GLOBEX]));
    // newco is not asked at all.
    let e = run.genuine(NEWCO, 0, &m, ConsentVerdict::Approve);
    assert!(run.quietly_rejected(&e).contains("not asked"));
    assert_eq!(run.approve(GLOBEX, 0, &m), Outcome::Approved);
    assert_eq!(executed(&run.reg.take_events()), vec![id(&m)]);

    // A rule naming no involved organization falls back to every involved one.
    let rules = rules_with(&[(GovernedOperation::Merge, named(&[NEWCO]), 60)]);
    let mut run = Run::trio(rules);
    let (m, outcome) = run.submit(fx().node(ACME, 0), merge(&[UMBRELLA], 30));
    assert_eq!(outcome, pending(&[ACME, GLOBEX, INITECH, UMBRELLA]));
    for org in [ACME, GLOBEX, INITECH] {
        run.approve(org, 0, &m);
    }
    assert!(executed(&run.reg.take_events()).is_empty());
    run.approve(UMBRELLA, 0, &m);
    assert_eq!(executed(&run.reg.take_events()), vec![id(&m)]);
}

#[test]
fn policy_changes_follow_their_own_rule() {
    let rules = rules_with(&[(GovernedOperation::PolicyChange, Quorum::AtLeast(1), 60)]);
    let mut run = Run::trio(rules);
    let plan = ProposalKind::SynchronizationPlan(SynchronizationPlan {
        strategy: FederatedSyncStrategy::StrongConsistency,
        interval_ms: 500,
    });
    let (p, outcome) = run.submit(fx().node(INITECH, 2), plan);
    assert_eq!(outcome, pending(&[ACME, GLOBEX, INITECH]));
    let (u, _) = run.submit(fx().node(GLOBEX, 0), policy_update(2));
    // Merges keep the default rule: every organization.
    let (m, _) = run.submit(fx().node(GLOBEX, 0), merge(&[GLOBEX], 40));
    assert_eq!(run.reg.pending_operation(&id(&m)).unwrap().quorum, Quorum::All);
    assert_eq!(run.approve(ACME, 0, &p), Outcome::Approved);
    assert_eq!(run.approve(GLOBEX, 0, &u), Outcome::Approved);
    assert_eq!(run.approve(ACME, 0, &m), Outcome::Approved);
    assert_eq!(executed(&run.reg.take_events()), vec![id(&p), id(&u)]);
    assert_eq!(run.reg.pending().map(|o| o.proposal).collect::<Vec<_>>(), vec![id(&m)]);
    // A merge whose only source is a member organization involves just the members.
    assert_eq!(run.reg.pending_operation(&id(&m)).unwrap().awaiting(), orgs(&[GLOBEX, INITECH]));
}

#[test]
fn the_policy_decides_who_may_propose() {
    let policy = FederationPolicy::default()
        .with_merge(Orgs::only([fx().org_id(ACME)]))
        .with_propose(Orgs::Nobody);
    let (mut run, _) = Run::active(FOUNDERS, GovernanceRules::default(), policy);
    let e = run.entry(fx().node(GLOBEX, 0), merge(&[UMBRELLA], 50));
    assert!(run.quietly_rejected(&e).contains("may not propose merges"));
    let (_, outcome) = run.submit(fx().node(ACME, 1), merge(&[UMBRELLA], 50));
    assert!(matches!(outcome, Outcome::Pending { .. }));
    for kind in [
        policy_update(3),
        join(ACME, 3, None),
        leave(INITECH, 0),
        ProposalKind::SynchronizationPlan(SynchronizationPlan {
            strategy: FederatedSyncStrategy::EventualConsistency,
            interval_ms: 0,
        }),
    ] {
        let e = run.entry(fx().node(ACME, 0), kind);
        assert!(run.quietly_rejected(&e).contains("may not propose"));
    }
    // Leaving of one's own accord needs no permission.
    let (_, outcome) = run.submit(fx().node(INITECH, 0), leave(INITECH, 0));
    assert_eq!(outcome, Outcome::Approved);
}

#[test]
fn malformed_merges_are_rejected() {
    let mut run = Run::trio(GovernanceRules::default());
    let acme = fx().node(ACME, 0);
    let sources = |list: &[(usize, OrgRootKey)]| -> Directory {
        list.iter().map(|(o, r)| (fx().org_id(*o), *r)).collect()
    };
    let umbrella = fx().orgs[UMBRELLA].root_key();
    let group = run.group();
    // Into itself.
    let e = run.entry(acme, merge_from(group, sources(&[(UMBRELLA, umbrella)]), 1));
    assert!(run.quietly_rejected(&e).contains("itself"));
    // Naming another root for a member organization.
    let e = run.entry(acme, merge_from(UPSTREAM, sources(&[(GLOBEX, fx().forger.root_key())]), 1));
    assert!(run.quietly_rejected(&e).contains("another root"));
    // No source organization.
    let e = run.entry(acme, merge_from(UPSTREAM, Vec::new(), 1));
    assert!(run.quietly_rejected(&e).contains("source organizations"));
    // Too many heads.
    let ProposalKind::FederatedMerge(mut big) = merge(&[UMBRELLA], 1) else { unreachable!() };
    big.source_heads = (0..60).map(commit).collect();
    big.target_heads = (100..105).map(commit).collect();
    let e = run.entry(acme, ProposalKind::FederatedMerge(big));
    assert!(run.quietly_rejected(&e).contains("heads"));
    // The merge's commit: a signature that does not verify.
    let merge_of = |n| match merge(&[UMBRELLA], n) {
        ProposalKind::FederatedMerge(m) => m,
        _ => unreachable!(),
    };
    let mut forged = with_commit(acme, merge_of(2));
    forged.commit.signature[0] ^= 1;
    let e = run.entry(acme, ProposalKind::FederatedMerge(forged));
    assert!(run.quietly_rejected(&e).contains("the merge's commit"));
    // A commit made for another result than the merge's.
    let mut swapped = with_commit(acme, merge_of(2));
    swapped.result_root = StateRoot::from_bytes([1; 32]);
    let e = run.entry(acme, ProposalKind::FederatedMerge(swapped));
    assert!(run.quietly_rejected(&e).contains("the merge's commit"));
    // Made in another organization's name.
    let key = NodeKeypair::from_secret_bytes([7; 32]);
    let mut other_org = merge_of(3);
    other_org.commit.org = fx().org_id(GLOBEX);
    other_org.sign_commit(&key).unwrap();
    let e = run.entry(acme, ProposalKind::FederatedMerge(other_org));
    assert!(run.quietly_rejected(&e).contains("another organization"));
    // Signed with a member's node key: its node's own commits would equivocate with it.
    let mut members_key = merge_of(4);
    members_key.commit.org = fx().org_id(ACME);
    members_key.sign_commit(acme).unwrap();
    let e = run.entry(acme, ProposalKind::FederatedMerge(members_key));
    assert!(run.quietly_rejected(&e).contains("a member's key"));
    // A key that another merge (pending here) used already.
    let mut first = merge_of(5);
    first.commit.org = fx().org_id(ACME);
    first.sign_commit(&key).unwrap();
    let (_, outcome) = run.submit(acme, ProposalKind::FederatedMerge(first));
    assert!(matches!(outcome, Outcome::Pending { .. }), "{outcome:?}");
    let mut again = merge_of(6);
    again.commit.org = fx().org_id(ACME);
    again.sign_commit(&key).unwrap();
    let e = run.entry(acme, ProposalKind::FederatedMerge(again));
    assert!(run.quietly_rejected(&e).contains("used before"));
}

// ---------------------------------------------------------------------------------------------
// Scenarios: consents that count for nothing, refusals, deadlines.
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_consents_are_rejected_and_change_nothing() {
    let rules = rules_with(&[(GovernedOperation::Merge, Quorum::All, DAY)]);
    let mut run = Run::trio(rules);
    let (m, _) = run.submit(fx().node(ACME, 0), merge(&[UMBRELLA], 60));
    assert_eq!(run.approve(ACME, 0, &m), Outcome::Approved);
    let heads = heads_of(&m);
    let o = |org: usize| &fx().orgs[org];
    let approve = ConsentVerdict::Approve;

    // Stale: other heads, fewer heads, reordered heads, heads for a proposal that has none.
    for stale in [vec![commit(99), commit(61)], heads[..1].to_vec(), vec![heads[1], heads[0]]] {
        let e = run.consent_entry(
            &o(GLOBEX).nodes[0],
            GLOBEX,
            &o(GLOBEX).valid[0],
            &m,
            stale,
            approve.clone(),
        );
        assert!(run.quietly_rejected(&e).contains("stale"));
    }
    // Unknown proposal.
    let mut e_consent = Consent {
        proposal: ProposalId::from_bytes([1; 32]),
        heads: heads.clone(),
        org: o(GLOBEX).id.clone(),
        verdict: approve.clone(),
        certificate: o(GLOBEX).valid[0].clone(),
    };
    let e = run.entry(&o(GLOBEX).nodes[0], ProposalKind::Consent(e_consent.clone()));
    assert!(run.quietly_rejected(&e).contains("no pending proposal"));
    // A second answer of acme, by another node, approving or refusing.
    let e = run.genuine(ACME, 1, &m, approve.clone());
    assert!(run.quietly_rejected(&e).contains("already answered"));
    let e = run.genuine(ACME, 2, &m, ConsentVerdict::Refuse { reason: "changed my mind".into() });
    assert!(run.quietly_rejected(&e).contains("already answered"));
    // The certificate of another node of the same organization.
    let e = run.consent_entry(
        &o(GLOBEX).nodes[0],
        GLOBEX,
        &o(GLOBEX).valid[1],
        &m,
        heads.clone(),
        approve.clone(),
    );
    assert!(run.quietly_rejected(&e).contains("not the signing node's"));
    // Someone else entirely carrying globex's certificate.
    let e = run.consent_entry(
        &fx().stranger,
        GLOBEX,
        &o(GLOBEX).valid[0],
        &m,
        heads.clone(),
        approve.clone(),
    );
    assert!(run.quietly_rejected(&e).contains("not the signing node's"));
    // The signer's own certificate, of another organization than the one it answers for.
    let e = run.consent_entry(
        &o(INITECH).nodes[0],
        GLOBEX,
        &o(INITECH).valid[0],
        &m,
        heads.clone(),
        approve.clone(),
    );
    assert!(run.quietly_rejected(&e).contains("the certificate is of initech, not globex"));
    // A certificate from a root that is not the one pinned for globex.
    let e = run.consent_entry(
        &o(GLOBEX).nodes[0],
        GLOBEX,
        &o(GLOBEX).forged[0],
        &m,
        heads.clone(),
        approve.clone(),
    );
    assert!(run.quietly_rejected(&e).contains("does not check out"));
    // ... nor the one the proposal names for umbrella.
    let e = run.consent_entry(
        &o(UMBRELLA).nodes[0],
        UMBRELLA,
        &o(UMBRELLA).forged[0],
        &m,
        heads.clone(),
        approve.clone(),
    );
    assert!(run.quietly_rejected(&e).contains("does not check out"));
    // An organization with no root in the branch nor in the proposal is not asked.
    let e = run.genuine(NEWCO, 0, &m, approve.clone());
    assert!(run.quietly_rejected(&e).contains("not asked"));
    // Signed for another federation.
    let elsewhere = sign(
        &o(GLOBEX).nodes[0],
        &FederationId::from_name("elsewhere"),
        run.group(),
        ProposalKind::Consent(Consent { proposal: id(&m), ..e_consent.clone() }),
        at(run.now),
        at(run.now + DAY),
        77,
    );
    assert!(run.quietly_rejected(&elsewhere).contains("another federation"));
    // A certificate not yet valid at the registry's time...
    let e = run.consent_entry(
        &o(GLOBEX).nodes[0],
        GLOBEX,
        &o(GLOBEX).late[0],
        &m,
        heads.clone(),
        approve.clone(),
    );
    assert!(run.quietly_rejected(&e).contains("not valid before"));
    // ... and one expired at the registry's time, even in an entry that claims an earlier one.
    run.tick(EXPIRES + 1);
    let e = run.consent_entry(
        &o(GLOBEX).nodes[0],
        GLOBEX,
        &o(GLOBEX).expiring[0],
        &m,
        heads.clone(),
        approve.clone(),
    );
    assert!(run.quietly_rejected(&e).contains("expired"));
    run.now = EXPIRES - 10;
    let e = run.consent_entry(
        &o(GLOBEX).nodes[0],
        GLOBEX,
        &o(GLOBEX).expiring[0],
        &m,
        heads.clone(),
        approve.clone(),
    );
    assert!(run.quietly_rejected(&e).contains("expired"));
    run.now = EXPIRES + 1;

    // None of that counted.
    let op = run.reg.pending_operation(&id(&m)).unwrap();
    assert_eq!(op.approved, [fx().org_id(ACME)].into());
    assert_eq!(op.awaiting(), orgs(&[GLOBEX, INITECH, UMBRELLA]));

    // Genuine consents do, then the decided proposal takes no more answers.
    let globex = run.genuine(GLOBEX, 0, &m, approve.clone());
    assert_eq!(run.apply(&globex), Outcome::Approved);
    assert_eq!(run.approve(INITECH, 1, &m), Outcome::Approved);
    assert_eq!(run.approve(UMBRELLA, 0, &m), Outcome::Approved);
    assert_eq!(executed(&run.reg.take_events()), vec![id(&m)]);
    // The same consent entry again (a replay), a fresh one, and a refusal: nothing pending.
    assert!(run.quietly_rejected(&globex).contains("no pending proposal"));
    let e = run.genuine(GLOBEX, 0, &m, approve.clone());
    assert!(run.quietly_rejected(&e).contains("no pending proposal"));
    e_consent.proposal = id(&m);
    e_consent.verdict = ConsentVerdict::Refuse { reason: "too late".into() };
    let e = run.entry(&o(GLOBEX).nodes[0], ProposalKind::Consent(e_consent));
    assert!(run.quietly_rejected(&e).contains("no pending proposal"));
    assert_eq!(run.reg.history().len(), 2);
}

#[test]
fn a_refusal_rejects_the_pending_operation() {
    let rules = rules_with(&[(GovernedOperation::Merge, Quorum::AtLeast(2), 60)]);
    let mut run = Run::trio(rules);
    let (m, _) = run.submit(fx().node(ACME, 0), merge(&[UMBRELLA], 70));
    let (other, _) = run.submit(fx().node(ACME, 0), merge(&[UMBRELLA], 72));
    assert_eq!(run.approve(GLOBEX, 0, &m), Outcome::Approved);
    run.reg.take_events();
    // Any involved organization's refusal ends it, even one approval short of the quorum. The
    // reason is kept, cut to its bound (on a character boundary).
    let reason = "€".repeat(MAX_REASON_LEN);
    assert_eq!(run.refuse(UMBRELLA, 1, &m, &reason), Outcome::Approved);
    let events = run.reg.take_events();
    assert_eq!(events.len(), 1);
    let RegistryEvent::Rejected { proposal, index, reason } = &events[0] else {
        panic!("{events:?}");
    };
    assert_eq!((*proposal, *index), (id(&m), run.index));
    assert!(reason.starts_with("umbrella refused: €"));
    assert!(reason.len() <= MAX_REASON_LEN + "umbrella refused: ".len());
    assert!(run.reg.pending_operation(&id(&m)).is_none());
    assert!(run.reg.executed(&id(&m)).is_none());
    let e = run.genuine(ACME, 0, &m, ConsentVerdict::Approve);
    assert!(run.quietly_rejected(&e).contains("no pending proposal"));
    // Only that operation.
    assert!(run.reg.pending_operation(&id(&other)).is_some());
    assert_eq!(run.approve(ACME, 0, &other), Outcome::Approved);
    assert_eq!(run.approve(INITECH, 0, &other), Outcome::Approved);
    assert_eq!(executed(&run.reg.take_events()), vec![id(&other)]);
}

#[test]
fn a_deadline_passing_rejects_the_pending_operation() {
    let rules = rules_with(&[(GovernedOperation::Merge, Quorum::All, 60)]);
    let mut run = Run::trio(rules);
    let (m, _) = run.submit(fx().node(ACME, 0), merge(&[UMBRELLA], 80));
    assert_eq!(run.reg.pending_operation(&id(&m)).unwrap().deadline, at(60));
    // The entry's own deadline, when earlier than the rule's.
    let p_entry = run.entry_until(fx().node(GLOBEX, 0), policy_update(4), 30);
    assert!(matches!(run.apply(&p_entry), Outcome::Pending { .. }));
    assert_eq!(run.reg.pending_operation(&id(&p_entry)).unwrap().deadline, at(30));
    assert_eq!(run.approve(ACME, 0, &m), Outcome::Approved);
    // At the deadline it is still in time.
    run.now = 30;
    assert_eq!(run.approve(ACME, 0, &p_entry), Outcome::Approved);
    // An entry whose clock is behind does not move the registry's time back.
    run.now = 10;
    assert_eq!(run.approve(GLOBEX, 0, &p_entry), Outcome::Approved);
    assert_eq!(run.reg.time(), at(30));
    run.reg.take_events();
    // The first entry after it rejects it, whatever that entry is.
    run.now = 31;
    assert!(is_rejected(&run.approve(INITECH, 0, &p_entry)));
    let rejected = rejections(&run.reg.take_events());
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].0, id(&p_entry));
    assert!(rejected[0].1.contains("deadline passed awaiting initech"), "{}", rejected[0].1);

    run.now = 60;
    assert_eq!(run.approve(GLOBEX, 0, &m), Outcome::Approved);
    run.reg.take_events();
    run.now = 61;
    let (fresh, outcome) = run.submit(fx().node(INITECH, 0), merge(&[UMBRELLA], 82));
    assert!(matches!(outcome, Outcome::Pending { .. }));
    let events = run.reg.take_events();
    let RegistryEvent::Rejected { proposal, reason, .. } = &events[0] else { panic!("{events:?}") };
    assert_eq!(*proposal, id(&m));
    assert!(reason.contains("initech, umbrella"), "{reason}");
    assert!(
        matches!(&events[1], RegistryEvent::Pending { proposal, .. } if *proposal == id(&fresh))
    );
    let e = run.genuine(INITECH, 0, &m, ConsentVerdict::Approve);
    assert!(run.quietly_rejected(&e).contains("no pending proposal"));
    assert!(run.reg.executed(&id(&m)).is_none());
}

#[test]
fn a_proposal_by_a_node_outside_the_group_is_rejected() {
    let mut run = Run::trio(GovernanceRules::default());
    let newco_root = Some(fx().orgs[NEWCO].root_key());
    // A stranger, a certified node of a member organization outside the group, a node of the
    // merge's source, a node of an organization that would join.
    let cases = [
        (&fx().stranger, merge(&[UMBRELLA], 90)),
        (fx().node(ACME, 2), merge(&[UMBRELLA], 90)),
        (fx().node(ACME, 2), leave(ACME, 2)),
        (fx().node(GLOBEX, 1), policy_update(5)),
        (fx().node(UMBRELLA, 0), merge(&[UMBRELLA], 90)),
        (fx().node(NEWCO, 0), join(NEWCO, 0, newco_root)),
    ];
    for (signer, kind) in cases {
        let e = run.entry(signer, kind);
        assert!(run.quietly_rejected(&e).contains("not a member"));
    }
    assert_eq!(run.reg.pending().count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Scenarios: membership.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_node_leaving_of_its_own_accord_leaves_at_once() {
    let mut run = Run::trio(GovernanceRules::default());
    let node = fx().node(INITECH, 1).node_id();
    let (l, outcome) = run.submit(fx().node(INITECH, 1), leave(INITECH, 1));
    assert_eq!(outcome, Outcome::Approved);
    let events = run.reg.take_events();
    assert_eq!(executed(&events), vec![id(&l)]);
    let done = run.reg.executed(&id(&l)).unwrap();
    assert!(done.approved_by.is_empty());
    assert_eq!((done.proposed_at_index, done.index), (run.index, run.index));
    assert!(run.reg.members().iter().all(|m| m.node != node));
    assert_eq!(run.reg.members().len(), 5);
    assert_eq!(run.reg.branch().unwrap().organizations, orgs(&[ACME, GLOBEX, INITECH]));
    assert_eq!(run.reg.membership_version(), 1);
    // It is gone: it can neither leave again nor propose.
    let e = run.entry(fx().node(INITECH, 1), leave(INITECH, 1));
    assert!(run.quietly_rejected(&e).contains("not a member"));
    let e = run.entry(fx().node(ACME, 0), leave(INITECH, 1));
    assert!(run.quietly_rejected(&e).contains("not a member"));

    // The last member cannot leave.
    let (mut solo, _) =
        Run::active(&[(ACME, &[0])], GovernanceRules::default(), FederationPolicy::default());
    let e = solo.entry(fx().node(ACME, 0), leave(ACME, 0));
    assert!(solo.quietly_rejected(&e).contains("last member"));
}

#[test]
fn an_organization_whose_last_node_leaves_is_removed() {
    let claims = vec![
        NamespaceClaim { prefix: "https://globex.example/".into(), owner: fx().org_id(GLOBEX) },
        NamespaceClaim { prefix: "https://acme.example/".into(), owner: fx().org_id(ACME) },
    ];
    let mut creation =
        fx().creation(FOUNDERS, GovernanceRules::default(), FederationPolicy::default(), 9);
    creation.request = creation.request.with_namespaces(claims.clone());
    let (mut run, entry, _) = Run::create(creation);
    for org in [ACME, GLOBEX, INITECH] {
        run.approve(org, 0, &entry);
    }
    assert!(run.reg.is_active());
    let (_, outcome) = run.submit(fx().node(GLOBEX, 0), leave(GLOBEX, 0));
    assert_eq!(outcome, Outcome::Approved);
    let branch = run.reg.branch().unwrap();
    assert_eq!(branch.organizations, orgs(&[ACME, INITECH]));
    assert_eq!(branch.namespaces, claims[1..].to_vec());
    // It is no longer involved in what follows.
    let (m, outcome) = run.submit(fx().node(ACME, 0), merge(&[UMBRELLA], 100));
    assert_eq!(outcome, pending(&[ACME, INITECH, UMBRELLA]));
    let e = run.genuine(GLOBEX, 0, &m, ConsentVerdict::Approve);
    assert!(run.quietly_rejected(&e).contains("not asked"));

    // initech's nodes go one by one; the last one is taken out by acme, and initech has no
    // say in that.
    run.submit(fx().node(INITECH, 0), leave(INITECH, 0));
    run.submit(fx().node(INITECH, 1), leave(INITECH, 1));
    assert_eq!(run.reg.branch().unwrap().organizations, orgs(&[ACME, INITECH]));
    let (l, outcome) = run.submit(fx().node(ACME, 1), leave(INITECH, 2));
    assert_eq!(outcome, pending(&[ACME]));
    let e = run.genuine(INITECH, 2, &l, ConsentVerdict::Refuse { reason: "no".into() });
    assert!(run.quietly_rejected(&e).contains("not asked"));
    assert_eq!(run.approve(ACME, 0, &l), Outcome::Approved);
    assert_eq!(executed(&run.reg.take_events()), vec![id(&l)]);
    let branch = run.reg.branch().unwrap();
    assert_eq!(branch.organizations, orgs(&[ACME]));
    assert_eq!(branch.nodes(), {
        let mut nodes = vec![fx().node(ACME, 0).node_id(), fx().node(ACME, 1).node_id()];
        nodes.sort();
        nodes
    });
    assert_eq!(run.reg.membership_version(), 4);
}

#[test]
fn a_leave_of_another_node_needs_the_others_approval() {
    let rules = rules_with(&[(GovernedOperation::Leave, Quorum::All, 120)]);
    let mut run = Run::trio(rules);
    // initech keeps other nodes, so it is asked too.
    let (l, outcome) = run.submit(fx().node(GLOBEX, 0), leave(INITECH, 2));
    assert_eq!(outcome, pending(&[ACME, GLOBEX, INITECH]));
    assert_eq!(run.reg.pending_operation(&id(&l)).unwrap().deadline, at(120));
    run.approve(ACME, 0, &l);
    run.approve(GLOBEX, 0, &l);
    assert!(executed(&run.reg.take_events()).is_empty());
    assert_eq!(run.approve(INITECH, 0, &l), Outcome::Approved);
    assert_eq!(executed(&run.reg.take_events()), vec![id(&l)]);
    assert_eq!(run.reg.members().len(), 5);
    assert_eq!(run.reg.membership_version(), 1);
}

#[test]
fn a_join_of_a_new_organization_needs_its_root_and_its_consent() {
    let mut run = Run::trio(GovernanceRules::default());
    let newco = &fx().orgs[NEWCO];
    let globex = fx().node(GLOBEX, 0);
    let e = run.entry(globex, join(NEWCO, 0, None));
    assert!(run.quietly_rejected(&e).contains("root is needed"));
    let e = run.entry(globex, join(ACME, 3, Some(fx().forger.root_key())));
    assert!(run.quietly_rejected(&e).contains("another root"));
    let e = run.entry(globex, join(ACME, 0, None));
    assert!(run.quietly_rejected(&e).contains("already a member"));

    let (j, outcome) = run.submit(globex, join(NEWCO, 0, Some(newco.root_key())));
    assert_eq!(outcome, pending(&[ACME, GLOBEX, INITECH, NEWCO]));
    let op = run.reg.pending_operation(&id(&j)).unwrap();
    assert_eq!(op.roots, [(newco.id.clone(), newco.root_key())].into());
    for org in [ACME, GLOBEX, INITECH] {
        run.approve(org, 0, &j);
    }
    assert!(executed(&run.reg.take_events()).is_empty());
    assert!(!run.reg.directory().contains_key(&newco.id));
    // A certificate from another root does not speak for newco.
    let e = run.consent_entry(
        &newco.nodes[0],
        NEWCO,
        &newco.forged[0],
        &j,
        Vec::new(),
        ConsentVerdict::Approve,
    );
    assert!(run.quietly_rejected(&e).contains("does not check out"));
    // Any node newco certified does (here one that is not joining).
    assert_eq!(run.approve(NEWCO, 1, &j), Outcome::Approved);
    assert_eq!(executed(&run.reg.take_events()), vec![id(&j)]);
    assert!(run.reg.members().contains(&newco.member(0)));
    assert_eq!(run.reg.branch().unwrap().organizations, orgs(&[ACME, GLOBEX, INITECH, NEWCO]));
    assert_eq!(run.reg.directory()[&newco.id], newco.root_key());
    assert_eq!(run.reg.membership_version(), 1);
    // The new member may propose, and newco's root is now held: no need to name it again.
    let (_, outcome) = run.submit(&newco.nodes[0], join(NEWCO, 2, None));
    assert_eq!(outcome, pending(&[ACME, GLOBEX, INITECH, NEWCO]));
    // A join of a member organization's node involves the members only.
    let (_, outcome) = run.submit(globex, join(ACME, 3, Some(fx().orgs[ACME].root_key())));
    assert_eq!(outcome, pending(&[ACME, GLOBEX, INITECH, NEWCO]));
}

#[test]
fn the_federation_ends_when_its_duration_passes() {
    let rules = rules_with(&[(GovernedOperation::Merge, Quorum::All, DAY)]);
    let policy = FederationPolicy::default().with_duration(Duration::from_secs(1000));
    let (mut run, _) = Run::active(FOUNDERS, rules, policy);
    assert_eq!(run.reg.branch().unwrap().expires_at, Some(at(1000)));
    run.now = 990;
    let (m, outcome) = run.submit(fx().node(ACME, 0), merge(&[UMBRELLA], 110));
    assert!(matches!(outcome, Outcome::Pending { .. }));
    run.now = 1000;
    assert_eq!(run.approve(GLOBEX, 0, &m), Outcome::Approved);
    let (_, outcome) = run.submit(fx().node(INITECH, 0), leave(INITECH, 0));
    assert_eq!(outcome, Outcome::Approved);
    run.reg.take_events();
    run.now = 1001;
    assert!(is_rejected(&run.approve(ACME, 0, &m)));
    let rejected = rejections(&run.reg.take_events());
    assert_eq!(rejected, vec![(id(&m), "the federation's duration ended".to_string())]);
    for (signer, kind) in [
        (fx().node(ACME, 0), merge(&[UMBRELLA], 112)),
        (fx().node(ACME, 0), policy_update(6)),
        (fx().node(INITECH, 1), leave(INITECH, 1)),
        (fx().node(GLOBEX, 0), join(ACME, 3, None)),
    ] {
        let e = run.entry(signer, kind);
        assert!(run.quietly_rejected(&e).contains("duration ended"));
    }
    assert!(run.reg.is_active(), "the branch stays as it was, closed to changes");
}

#[test]
fn entries_of_another_federation_or_group_change_nothing_but_the_position() {
    let mut run = Run::trio(GovernanceRules::default());
    let (m, _) = run.submit(fx().node(ACME, 0), merge(&[UMBRELLA], 120));
    let time = run.reg.time();
    let acme = fx().node(ACME, 0);
    let group = run.group();
    let far = at(100 * DAY);
    run.reg.take_events();
    for entry in [
        sign(acme, &FederationId::from_name("elsewhere"), group, policy_update(1), far, far, 1),
        sign(acme, &fx().federation, GroupId::from_bytes([4; 32]), policy_update(1), far, far, 1),
    ] {
        let before = run.reg.clone();
        assert!(is_rejected(&run.apply(&entry)));
        assert_eq!(run.reg.time(), time);
        assert_eq!(run.reg.applied(), run.index);
        assert!(run.reg.take_events().is_empty());
        assert!(run.reg.pending_operation(&id(&m)).is_some());
        assert_eq!(run.reg.history(), before.history());
        assert_eq!(run.reg.members(), before.members());
    }
}

#[test]
fn the_module_documentation_example_holds() {
    let pair: &[(usize, &[usize])] = &[(ACME, &[0]), (GLOBEX, &[0])];
    let creation = fx().creation(pair, GovernanceRules::default(), FederationPolicy::default(), 1);
    let (mut run, c, outcome) = Run::create(creation);
    assert_eq!(outcome, pending(&[ACME, GLOBEX]));
    assert_eq!(run.approve(ACME, 0, &c), Outcome::Approved);
    assert_eq!(run.approve(GLOBEX, 0, &c), Outcome::Approved);
    assert!(run.reg.is_active());
    let (m, outcome) = run.submit(fx().node(ACME, 0), merge(&[GLOBEX], 130));
    assert_eq!(outcome, pending(&[ACME, GLOBEX]));
    let g = &fx().orgs[GLOBEX];
    let stale = run.consent_entry(
        &g.nodes[0],
        GLOBEX,
        &g.valid[0],
        &m,
        vec![commit(1)],
        ConsentVerdict::Approve,
    );
    assert!(is_rejected(&run.apply(&stale)));
    assert_eq!(run.approve(GLOBEX, 0, &m), Outcome::Approved);
    assert_eq!(run.approve(ACME, 0, &m), Outcome::Approved);
    assert_eq!(run.index, 7);
    let done = run.reg.executed(&id(&m)).unwrap();
    assert_eq!((done.proposed_at_index, done.index), (4, 7));
    assert_eq!(run.reg.applied(), 7);
}

// ---------------------------------------------------------------------------------------------
// Scenarios: snapshots.
// ---------------------------------------------------------------------------------------------

#[test]
fn hostile_snapshots_are_refused_and_change_nothing() {
    let mut run = Run::trio(GovernanceRules::default());
    let (m, _) = run.submit(fx().node(ACME, 0), merge(&[UMBRELLA], 140));
    run.approve(ACME, 0, &m);
    let snapshot = DecisionMachine::snapshot(&run.reg);
    let before = run.reg.digest();

    let mut other_group = Registry::new(fx().federation, GroupId::from_bytes([8; 32]));
    let mut other_federation = Registry::new(FederationId::from_name("elsewhere"), run.group());
    let mut longer = snapshot.clone();
    longer.push(0);
    let mut flipped = snapshot.clone();
    flipped[snapshot.len() / 2] ^= 0x40;
    let garbage: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0; 7],
        vec![0xFF; 300],
        snapshot[..snapshot.len() - 1].to_vec(),
        snapshot[..snapshot.len() / 2].to_vec(),
        longer,
        DecisionMachine::snapshot(&other_group),
        DecisionMachine::snapshot(&other_federation),
    ];
    for bytes in &garbage {
        assert!(run.reg.restore(bytes).is_err(), "{} bytes", bytes.len());
        assert_eq!(run.reg.digest(), before);
    }
    // A flipped bit may decode (into another state of this group) or not; if not, nothing
    // changed.
    let mut copy = run.reg.clone();
    if copy.restore(&flipped).is_err() {
        assert_eq!(copy.digest(), before);
    }
    // This group's snapshot is another group's garbage.
    let empty = other_group.digest();
    assert!(other_group.restore(&snapshot).unwrap_err().contains("another federation or group"));
    assert_eq!(other_group.digest(), empty);
    assert!(other_federation.restore(&snapshot).is_err());

    // A fresh registry restored from it continues exactly like the original, through the
    // shared handle as well.
    let fresh = Registry::new(fx().federation, run.group());
    let mut shared = SharedRegistry::new(fresh);
    shared.restore(&snapshot).unwrap();
    assert_eq!(shared.lock().digest(), before);
    assert!(shared.lock().take_events().is_empty());
    let consent = run.genuine(GLOBEX, 0, &m, ConsentVerdict::Approve);
    let index = run.index + 1;
    assert_eq!(run.apply(&consent), Outcome::Approved);
    assert_eq!(shared.decide(index, &consent), Outcome::Approved);
    assert_eq!(shared.lock().digest(), run.reg.digest());
    assert_eq!(DecisionMachine::snapshot(&shared), DecisionMachine::snapshot(&run.reg));
}

// ---------------------------------------------------------------------------------------------
// Library bugs, shown by failing tests.
// ---------------------------------------------------------------------------------------------

#[test]
fn bug_a_replayed_proposal_is_decided_again() {
    let mut run = Run::trio(GovernanceRules::default());
    let (m, _) = run.submit(fx().node(ACME, 0), merge(&[GLOBEX], 150));
    let consents: Vec<_> = [ACME, GLOBEX, INITECH]
        .iter()
        .map(|org| run.genuine(*org, 0, &m, ConsentVerdict::Approve))
        .collect();
    for c in &consents {
        assert_eq!(run.apply(c), Outcome::Approved);
    }
    assert_eq!(executed(&run.reg.take_events()), vec![id(&m)]);
    // The log carries the same entries again.
    let again = run.apply(&m);
    for c in &consents {
        run.apply(c);
    }
    let times = run.reg.history().iter().filter(|e| e.proposal == id(&m)).count();
    assert_eq!(times, 1, "the merge was executed {times} times");
    assert!(is_rejected(&again), "a replayed proposal is {again:?}");
}

#[test]
fn bug_replaying_a_pending_proposal_discards_its_approvals() {
    let mut run = Run::trio(GovernanceRules::default());
    let (m, _) = run.submit(fx().node(ACME, 0), merge(&[GLOBEX], 160));
    assert_eq!(run.approve(ACME, 0, &m), Outcome::Approved);
    assert_eq!(run.approve(GLOBEX, 0, &m), Outcome::Approved);
    let before = run.reg.pending_operation(&id(&m)).unwrap().clone();
    let outcome = run.apply(&m);
    let after = run.reg.pending_operation(&id(&m)).unwrap();
    assert_eq!(after.approved, before.approved, "approvals lost to a replay ({outcome:?})");
    assert!(is_rejected(&outcome), "a replayed proposal is {outcome:?}");
}

#[test]
fn bug_a_pending_join_can_replace_a_root_another_join_pinned() {
    let mut run = Run::trio(GovernanceRules::default());
    let newco = &fx().orgs[NEWCO];
    let impostor = &fx().forger;
    // Two joins while newco is new to the branch: its node 0 under its true root, its node 1
    // under the impostor's root.
    let (a, _) = run.submit(fx().node(ACME, 0), join(NEWCO, 0, Some(newco.root_key())));
    let (b, _) = run.submit(fx().node(ACME, 0), join(NEWCO, 1, Some(impostor.root_key())));
    run.approve(ACME, 0, &a);
    run.approve(GLOBEX, 0, &a);
    run.approve(INITECH, 0, &a);
    run.approve(ACME, 0, &b);
    run.approve(GLOBEX, 0, &b);
    // The impostor's consent for newco counts against the root the second join names.
    let e = run.consent_entry(
        &newco.nodes[1],
        NEWCO,
        &newco.forged[1],
        &b,
        Vec::new(),
        ConsentVerdict::Approve,
    );
    assert_eq!(run.apply(&e), Outcome::Approved);
    // newco approves its own node: the first join executes and pins newco's true root.
    assert_eq!(run.approve(NEWCO, 0, &a), Outcome::Approved);
    assert_eq!(run.reg.directory()[&newco.id], newco.root_key());
    // The last approval of the second join, which names another root for newco.
    run.approve(INITECH, 0, &b);
    assert_eq!(
        run.reg.directory()[&newco.id],
        newco.root_key(),
        "newco's pinned root was replaced by the impostor's"
    );
    assert!(run.reg.executed(&id(&b)).is_none(), "a join naming another root for newco executed");
}

#[test]
fn bug_two_pending_joins_make_a_node_a_member_twice() {
    let mut run = Run::trio(GovernanceRules::default());
    let (a, _) = run.submit(fx().node(ACME, 0), join(ACME, 3, None));
    let (b, _) = run.submit(fx().node(GLOBEX, 0), join(ACME, 3, None));
    for j in [&a, &b] {
        for org in [ACME, GLOBEX, INITECH] {
            run.approve(org, 0, j);
        }
    }
    let node = fx().node(ACME, 3).node_id();
    let times = run.reg.members().iter().filter(|m| m.node == node).count();
    assert_eq!(times, 1, "the node is a member {times} times");
}

#[test]
fn bug_pending_leaves_can_remove_every_member() {
    let pair: &[(usize, &[usize])] = &[(ACME, &[0]), (GLOBEX, &[0])];
    let (mut run, _) = Run::active(pair, GovernanceRules::default(), FederationPolicy::default());
    // Each takes the other out; the organization of the node taken out has no say.
    let (a, outcome) = run.submit(fx().node(ACME, 0), leave(GLOBEX, 0));
    assert_eq!(outcome, pending(&[ACME]));
    let (b, outcome) = run.submit(fx().node(GLOBEX, 0), leave(ACME, 0));
    assert_eq!(outcome, pending(&[GLOBEX]));
    assert_eq!(run.approve(ACME, 0, &a), Outcome::Approved);
    assert_eq!(run.reg.members().len(), 1);
    // globex's node still holds a valid certificate of globex, whose root the branch keeps.
    run.approve(GLOBEX, 0, &b);
    assert!(!run.reg.members().is_empty(), "the group has no member left");
}

#[test]
fn bug_an_entry_from_outside_the_group_moves_the_registry_time() {
    let mut run = Run::trio(GovernanceRules::default());
    let (m, _) = run.submit(fx().node(ACME, 0), merge(&[GLOBEX], 170));
    run.approve(ACME, 0, &m);
    // A stranger's proposal dated a year ahead: rejected, it is not a member.
    let (fed, group) = (fx().federation, run.group());
    let far = at(365 * DAY);
    let stranger = sign(&fx().stranger, &fed, group, policy_update(9), far, far, 1);
    assert!(is_rejected(&run.apply(&stranger)));
    assert!(run.reg.pending_operation(&id(&m)).is_some(), "the pending merge was rejected");
    assert_eq!(run.approve(GLOBEX, 0, &m), Outcome::Approved, "a valid consent was refused");
}

// ---------------------------------------------------------------------------------------------
// The model: the rules of the module documentation, written independently of the registry. It
// never touches a signature or a certificate: each entry comes with a description of what it
// carries (who signed, which certificate of whom under which root, valid when), and the model
// decides from that description alone.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Setup {
    /// (operation, quorum, deadline in seconds)
    rules: Vec<(GovernedOperation, Quorum, i64)>,
    merge_only_acme: bool,
    duration: Option<i64>,
}

impl Setup {
    fn governance(&self) -> GovernanceRules {
        rules_with(&self.rules)
    }

    fn policy(&self) -> FederationPolicy {
        let mut policy = FederationPolicy::default();
        if self.merge_only_acme {
            policy = policy.with_merge(Orgs::only([fx().org_id(ACME)]));
        }
        if let Some(secs) = self.duration {
            policy = policy.with_duration(Duration::from_secs(secs as u64));
        }
        policy
    }

    /// The rule of `op`: the last one given, or every involved organization in 300 seconds.
    fn rule(&self, op: GovernedOperation) -> (Quorum, i64) {
        self.rules
            .iter()
            .rev()
            .find(|(o, _, _)| *o == op)
            .map(|(_, q, d)| (q.clone(), *d))
            .unwrap_or((Quorum::All, 300))
    }
}

#[derive(Debug, Clone)]
enum What {
    Merge { into_itself: bool, sources: Vec<(OrgId, OrgRootKey)>, heads: Vec<CommitId> },
    Policy,
    Join { member: Member, root: Option<OrgRootKey> },
    Leave { node: NodeId },
}

#[derive(Debug, Clone)]
struct ConsentDesc {
    proposal: ProposalId,
    heads: Vec<CommitId>,
    org: OrgId,
    signer: NodeId,
    cert_node: NodeId,
    cert_org: OrgId,
    cert_root: OrgRootKey,
    valid_from: Timestamp,
    valid_to: Timestamp,
    approve: bool,
}

#[derive(Debug, Clone)]
enum Desc {
    /// Signed for another federation or group.
    Foreign,
    Creation {
        members: Vec<Member>,
        directory: Vec<(OrgId, OrgRootKey)>,
    },
    Propose {
        proposer: NodeId,
        what: What,
    },
    Consent(ConsentDesc),
}

/// One log entry: what the registry applies, and what the model reads.
#[derive(Debug, Clone)]
struct Entry {
    signed: Signed<ConsensusProposal>,
    desc: Desc,
    proposed_at: Timestamp,
    deadline: Timestamp,
    id: ProposalId,
}

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Pending(ProposalId, Vec<OrgId>),
    Approved(ProposalId, OrgId),
    Executed(ProposalId),
    Rejected(ProposalId),
}

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Approved,
    Rejected,
    Pending(Vec<OrgId>),
}

fn expect_of(outcome: &Outcome) -> Expect {
    match outcome {
        Outcome::Approved => Expect::Approved,
        Outcome::Rejected { .. } => Expect::Rejected,
        Outcome::Pending { awaiting } => Expect::Pending(awaiting.clone()),
    }
}

fn evs_of(events: &[RegistryEvent]) -> Vec<Ev> {
    events
        .iter()
        .map(|e| match e {
            RegistryEvent::Pending { proposal, awaiting, .. } => {
                Ev::Pending(*proposal, awaiting.clone())
            }
            RegistryEvent::Approved { proposal, org, .. } => Ev::Approved(*proposal, org.clone()),
            RegistryEvent::Executed(op) => Ev::Executed(op.proposal),
            RegistryEvent::Rejected { proposal, .. } => Ev::Rejected(*proposal),
            other => panic!("unexpected event {other:?}"),
        })
        .collect()
}

#[derive(Debug, Clone)]
enum OpKind {
    Creation,
    Other,
    Join(Member),
    Leave(NodeId),
}

#[derive(Debug, Clone)]
struct ModelOp {
    kind: OpKind,
    involved: BTreeSet<OrgId>,
    quorum: Quorum,
    heads: Vec<CommitId>,
    deadline: Timestamp,
    approved: BTreeSet<OrgId>,
    roots: BTreeMap<OrgId, OrgRootKey>,
}

/// Whether `approved` meets `quorum` over `involved`.
fn model_met(quorum: &Quorum, approved: &BTreeSet<OrgId>, involved: &BTreeSet<OrgId>) -> bool {
    let all = || involved.iter().all(|o| approved.contains(o));
    match quorum {
        Quorum::All => all(),
        Quorum::AtLeast(n) => {
            let needed = (*n as usize).max(1).min(involved.len().max(1));
            involved.iter().filter(|o| approved.contains(*o)).count() >= needed
        }
        Quorum::Named(names) => {
            let needed: Vec<&OrgId> = involved.iter().filter(|o| names.contains(*o)).collect();
            if needed.is_empty() { all() } else { needed.iter().all(|o| approved.contains(*o)) }
        }
    }
}

/// Whose approval still counts.
fn model_awaiting(
    quorum: &Quorum,
    approved: &BTreeSet<OrgId>,
    involved: &BTreeSet<OrgId>,
) -> Vec<OrgId> {
    let only = match quorum {
        Quorum::Named(names) if involved.iter().any(|o| names.contains(o)) => Some(names),
        _ => None,
    };
    involved
        .iter()
        .filter(|o| !approved.contains(*o) && only.is_none_or(|n| n.contains(*o)))
        .cloned()
        .collect()
}

fn plus(t: Timestamp, secs: i64) -> Timestamp {
    Timestamp::from_micros(t.as_micros() + secs * SEC)
}

#[derive(Debug, Clone)]
struct Model {
    setup: Setup,
    created: bool,
    active: bool,
    ends: Option<Timestamp>,
    time: Timestamp,
    members: BTreeMap<NodeId, OrgId>,
    directory: BTreeMap<OrgId, OrgRootKey>,
    pending: BTreeMap<ProposalId, ModelOp>,
    executed: Vec<ProposalId>,
    membership_changes: u64,
    /// Every proposal that was pending once: its quorum and involved organizations.
    asked: BTreeMap<ProposalId, (Quorum, BTreeSet<OrgId>)>,
    /// Proposals entered, until their deadline passes (a replay is refused).
    seen: BTreeMap<ProposalId, Timestamp>,
}

impl Model {
    fn new(setup: Setup) -> Self {
        Self {
            setup,
            created: false,
            active: false,
            ends: None,
            time: Timestamp::default(),
            members: BTreeMap::new(),
            directory: BTreeMap::new(),
            pending: BTreeMap::new(),
            executed: Vec::new(),
            membership_changes: 0,
            asked: BTreeMap::new(),
            seen: BTreeMap::new(),
        }
    }

    fn orgs(&self) -> BTreeSet<OrgId> {
        self.members.values().cloned().collect()
    }

    fn ended(&self) -> bool {
        self.ends.is_some_and(|end| self.time > end)
    }

    fn apply(&mut self, entry: &Entry) -> (Expect, Vec<Ev>) {
        let mut evs = Vec::new();
        if let Desc::Foreign = entry.desc {
            return (Expect::Rejected, evs);
        }
        // Only members (before the creation: its requester) move the registry's time.
        let signer = entry.signed.signer();
        let moves = if self.created {
            self.members.contains_key(&signer)
        } else {
            matches!(entry.desc, Desc::Creation { .. })
        };
        if moves {
            self.time = self.time.max(entry.proposed_at);
        }
        let now = self.time;
        self.seen.retain(|_, d| *d >= now);
        let ended = self.ended();
        let late: Vec<ProposalId> = self
            .pending
            .iter()
            .filter(|(_, op)| ended || self.time > op.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.pending.remove(&id);
            evs.push(Ev::Rejected(id));
        }
        let proposes = !matches!(entry.desc, Desc::Consent(_));
        if proposes && (self.seen.contains_key(&entry.id) || entry.deadline < self.time) {
            return (Expect::Rejected, evs);
        }
        let expect = match &entry.desc {
            Desc::Foreign => unreachable!(),
            Desc::Creation { members, directory } => {
                self.create(entry, members, directory, &mut evs)
            }
            Desc::Propose { proposer, what } => self.propose(entry, *proposer, what, &mut evs),
            Desc::Consent(consent) => self.consent(consent, entry.proposed_at, &mut evs),
        };
        if proposes && expect != Expect::Rejected {
            self.seen.insert(entry.id, entry.deadline);
        }
        (expect, evs)
    }

    fn create(
        &mut self,
        entry: &Entry,
        members: &[Member],
        directory: &[(OrgId, OrgRootKey)],
        evs: &mut Vec<Ev>,
    ) -> Expect {
        if self.created {
            return Expect::Rejected;
        }
        self.created = true;
        self.members = members.iter().map(|m| (m.node, m.org.clone())).collect();
        self.directory = directory.iter().cloned().collect();
        self.ends = self.setup.duration.map(|d| plus(entry.proposed_at, d));
        let deadline = entry.deadline.min(plus(entry.proposed_at, 300));
        let op = ModelOp {
            kind: OpKind::Creation,
            involved: self.orgs(),
            quorum: Quorum::All,
            heads: Vec::new(),
            deadline,
            approved: BTreeSet::new(),
            roots: BTreeMap::new(),
        };
        self.enqueue(entry.id, op, evs)
    }

    fn enqueue(&mut self, id: ProposalId, op: ModelOp, evs: &mut Vec<Ev>) -> Expect {
        let awaiting = model_awaiting(&op.quorum, &op.approved, &op.involved);
        evs.push(Ev::Pending(id, awaiting.clone()));
        self.asked.insert(id, (op.quorum.clone(), op.involved.clone()));
        self.pending.insert(id, op);
        Expect::Pending(awaiting)
    }

    fn propose(
        &mut self,
        entry: &Entry,
        proposer: NodeId,
        what: &What,
        evs: &mut Vec<Ev>,
    ) -> Expect {
        if !self.active || self.ended() {
            return Expect::Rejected;
        }
        let Some(proposer_org) = self.members.get(&proposer).cloned() else {
            return Expect::Rejected;
        };
        let mut involved = self.orgs();
        let mut roots = BTreeMap::new();
        let mut heads = Vec::new();
        let (kind, operation) = match what {
            What::Merge { into_itself, sources, heads: named_heads } => {
                if self.setup.merge_only_acme && proposer_org != fx().org_id(ACME) {
                    return Expect::Rejected;
                }
                if *into_itself || sources.is_empty() {
                    return Expect::Rejected;
                }
                for (org, root) in sources {
                    match self.directory.get(org) {
                        Some(known) if known != root => return Expect::Rejected,
                        Some(_) => {}
                        None => {
                            roots.insert(org.clone(), *root);
                        }
                    }
                    involved.insert(org.clone());
                }
                heads = named_heads.clone();
                (OpKind::Other, GovernedOperation::Merge)
            }
            What::Policy => (OpKind::Other, GovernedOperation::PolicyChange),
            What::Join { member, root } => {
                if self.members.contains_key(&member.node) {
                    return Expect::Rejected;
                }
                match (self.directory.get(&member.org), root) {
                    (Some(known), Some(root)) if known != root => return Expect::Rejected,
                    (Some(_), _) => {}
                    (None, Some(root)) => {
                        roots.insert(member.org.clone(), *root);
                    }
                    (None, None) => return Expect::Rejected,
                }
                involved.insert(member.org.clone());
                (OpKind::Join(member.clone()), GovernedOperation::Join)
            }
            What::Leave { node } => {
                let Some(org) = self.members.get(node).cloned() else {
                    return Expect::Rejected;
                };
                if self.members.len() == 1 {
                    return Expect::Rejected;
                }
                if *node == proposer {
                    self.members.remove(node);
                    self.membership_changes += 1;
                    self.executed.push(entry.id);
                    evs.push(Ev::Executed(entry.id));
                    return Expect::Approved;
                }
                if !self.members.iter().any(|(n, o)| *o == org && n != node) {
                    involved.remove(&org);
                }
                (OpKind::Leave(*node), GovernedOperation::Leave)
            }
        };
        let (quorum, secs) = self.setup.rule(operation);
        let deadline = entry.deadline.min(plus(entry.proposed_at, secs));
        let op =
            ModelOp { kind, involved, quorum, heads, deadline, approved: BTreeSet::new(), roots };
        self.enqueue(entry.id, op, evs)
    }

    fn consent(&mut self, c: &ConsentDesc, dated: Timestamp, evs: &mut Vec<Ev>) -> Expect {
        let time = self.time;
        let Some(op) = self.pending.get_mut(&c.proposal) else {
            return Expect::Rejected;
        };
        if dated > op.deadline {
            return Expect::Rejected;
        }
        let root = self.directory.get(&c.org).or_else(|| op.roots.get(&c.org));
        let counts = c.heads == op.heads
            && op.involved.contains(&c.org)
            && !op.approved.contains(&c.org)
            && c.cert_node == c.signer
            && c.cert_org == c.org
            && root == Some(&c.cert_root)
            && c.valid_from <= time
            && time <= c.valid_to;
        if !counts {
            return Expect::Rejected;
        }
        if !c.approve {
            self.pending.remove(&c.proposal);
            evs.push(Ev::Rejected(c.proposal));
            return Expect::Approved;
        }
        op.approved.insert(c.org.clone());
        evs.push(Ev::Approved(c.proposal, c.org.clone()));
        if model_met(&op.quorum, &op.approved, &op.involved) {
            let op = self.pending.remove(&c.proposal).unwrap();
            // Re-checked at execution: what executed meanwhile may conflict.
            let conflicting_root = op
                .roots
                .iter()
                .any(|(org, root)| self.directory.get(org).is_some_and(|known| known != root));
            let stale = conflicting_root
                || match &op.kind {
                    OpKind::Join(member) => self.members.contains_key(&member.node),
                    OpKind::Leave(node) => {
                        !self.members.contains_key(node) || self.members.len() <= 1
                    }
                    OpKind::Creation | OpKind::Other => false,
                };
            if stale {
                evs.push(Ev::Rejected(c.proposal));
                return Expect::Approved;
            }
            match op.kind {
                OpKind::Creation => self.active = true,
                OpKind::Other => {}
                OpKind::Join(member) => {
                    self.members.insert(member.node, member.org);
                    for (org, root) in op.roots {
                        self.directory.entry(org).or_insert(root);
                    }
                    self.membership_changes += 1;
                }
                OpKind::Leave(node) => {
                    self.members.remove(&node);
                    self.membership_changes += 1;
                }
            }
            self.executed.push(c.proposal);
            evs.push(Ev::Executed(c.proposal));
        }
        Expect::Approved
    }
}

// ---------------------------------------------------------------------------------------------
// Random logs: abstract steps, made concrete against the fixture (choosing targets with a look
// at the model, never deciding outcomes with it).
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum CertUse {
    Own,
    OtherNode,
    OtherOrg,
    Forged,
    Expiring,
    Late,
}

#[derive(Debug, Clone)]
enum Action {
    Consent {
        target: u8,
        org: u8,
        signer: u8,
        cert: CertUse,
        stale: bool,
        refuse: bool,
    },
    Merge {
        proposer: u8,
        variant: u8,
    },
    Policy {
        proposer: u8,
        plan: bool,
    },
    Join {
        proposer: u8,
        who: u8,
        root: u8,
    },
    Leave {
        proposer: u8,
        target: u8,
        own: bool,
    },
    /// An earlier consent entry, entered again.
    Replay {
        which: u16,
    },
    /// The creation entry, entered again.
    Recreate,
    Foreign {
        federation: bool,
    },
}

#[derive(Debug, Clone)]
struct Step {
    action: Action,
    /// Seconds from the previous entry's clock (negative: a clock behind, which does not
    /// move the log's clock).
    jump: i64,
    window: u8,
}

fn cert_use() -> impl Strategy<Value = CertUse> {
    prop_oneof![
        20 => Just(CertUse::Own),
        1 => Just(CertUse::OtherNode),
        1 => Just(CertUse::OtherOrg),
        1 => Just(CertUse::Forged),
        1 => Just(CertUse::Expiring),
        1 => Just(CertUse::Late),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    let few = || prop::bool::weighted(0.06);
    prop_oneof![
        12 => (any::<u8>(), any::<u8>(), any::<u8>(), cert_use(), few(), few()).prop_map(
            |(target, org, signer, cert, stale, refuse)| Action::Consent {
                target, org, signer, cert, stale, refuse
            }
        ),
        4 => (any::<u8>(), any::<u8>()).prop_map(|(proposer, variant)| Action::Merge { proposer, variant }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(proposer, plan)| Action::Policy { proposer, plan }),
        3 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(proposer, who, root)| Action::Join { proposer, who, root }),
        2 => (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(proposer, target, own)| Action::Leave { proposer, target, own }),
        1 => any::<u16>().prop_map(|which| Action::Replay { which }),
        1 => prop_oneof![Just(Action::Recreate), any::<bool>().prop_map(|federation| Action::Foreign { federation })],
    ]
}

fn any_step() -> impl Strategy<Value = Step> {
    let jump = prop_oneof![6 => Just(0i64), 6 => 1i64..30, 1 => 60i64..400, 1 => -90i64..0];
    (action(), jump, any::<u8>()).prop_map(|(action, jump, window)| Step { action, jump, window })
}

/// A log after the creation; mostly starting with the founders' genuine approvals of it, so
/// that most logs reach the active branch.
fn any_log(max: usize) -> impl Strategy<Value = Vec<Step>> {
    (prop::bool::weighted(0.85), prop::collection::vec(any_step(), 1..max)).prop_map(
        |(activate, mut steps)| {
            if activate {
                let approve = Action::Consent {
                    target: 0,
                    org: 0,
                    signer: 0,
                    cert: CertUse::Own,
                    stale: false,
                    refuse: false,
                };
                let step = Step { action: approve, jump: 0, window: 0 };
                steps.splice(0..0, std::iter::repeat_n(step, FOUNDERS.len()));
            }
            steps
        },
    )
}

fn quorum() -> impl Strategy<Value = Quorum> {
    let names = vec![ACME, GLOBEX, INITECH, NEWCO, UMBRELLA];
    prop_oneof![
        2 => Just(Quorum::All),
        2 => (0u32..6).prop_map(Quorum::AtLeast),
        2 => prop::sample::subsequence(names, 0..=3).prop_map(|s| named(&s)),
    ]
}

fn any_setup() -> impl Strategy<Value = Setup> {
    (
        (quorum(), prop::sample::select(vec![60i64, 90, 300])),
        quorum(),
        quorum(),
        prop::option::of(quorum()),
        prop::bool::weighted(0.25),
        prop::option::weighted(0.3, 500i64..3000),
    )
        .prop_map(
            |((merge_q, merge_d), join_q, leave_q, policy_q, merge_only_acme, duration)| {
                let mut rules = vec![
                    (GovernedOperation::Merge, merge_q, merge_d),
                    (GovernedOperation::Join, join_q, 200),
                    (GovernedOperation::Leave, leave_q, 120),
                ];
                if let Some(q) = policy_q {
                    rules.push((GovernedOperation::PolicyChange, q, 300));
                }
                Setup { rules, merge_only_acme, duration }
            },
        )
}

/// Nodes that may join (each is proposed at most once per log).
const JOINABLE: &[(usize, usize)] =
    &[(ACME, 3), (ACME, 4), (GLOBEX, 2), (INITECH, 3), (NEWCO, 0), (NEWCO, 1), (NEWCO, 2)];

/// Founders that never leave (so the group keeps members).
fn protected() -> [NodeId; 3] {
    [fx().node(ACME, 0).node_id(), fx().node(ACME, 1).node_id(), fx().node(GLOBEX, 0).node_id()]
}

struct Gen {
    setup: Setup,
    group: GroupId,
    clock: i64,
    nonce: u64,
    creation: Entry,
    heads: BTreeMap<ProposalId, Vec<CommitId>>,
    /// The deadline each proposal's rule gives it.
    deadlines: BTreeMap<ProposalId, Timestamp>,
    submitted: Vec<ProposalId>,
    consents: Vec<Entry>,
    joined: BTreeSet<NodeId>,
}

impl Gen {
    fn proposer(&self, sel: u8, model: &Model) -> &'static NodeKeypair {
        let members: Vec<NodeId> = model.members.keys().copied().collect();
        if sel < 190 && !members.is_empty() {
            fx().key(members[usize::from(sel) % members.len()])
        } else {
            let keys = fx().keys();
            keys[usize::from(sel) % keys.len()]
        }
    }

    fn sign(
        &mut self,
        signer: &NodeKeypair,
        kind: ProposalKind,
        proposed_at: Timestamp,
        deadline: Timestamp,
    ) -> Signed<ConsensusProposal> {
        self.nonce += 1;
        sign(signer, &fx().federation, self.group, kind, proposed_at, deadline, self.nonce)
    }

    #[allow(clippy::too_many_arguments)]
    fn proposal(
        &mut self,
        signer: &NodeKeypair,
        kind: ProposalKind,
        what: What,
        operation: GovernedOperation,
        heads: Vec<CommitId>,
        proposed_at: Timestamp,
        deadline: Timestamp,
    ) -> Entry {
        let signed = self.sign(signer, kind, proposed_at, deadline);
        let id = id(&signed);
        self.heads.insert(id, heads);
        let secs = self.setup.rule(operation).1;
        self.deadlines.insert(id, deadline.min(plus(proposed_at, secs)));
        self.submitted.push(id);
        let desc = Desc::Propose { proposer: signer.node_id(), what };
        Entry { signed, desc, proposed_at, deadline, id }
    }

    fn resolve(&mut self, step: &Step, model: &Model) -> Entry {
        let t = self.clock + step.jump;
        if step.jump > 0 {
            self.clock = t;
        }
        let proposed_at = at(t);
        let deadline = at(t + [20, 90, 400, 100_000][usize::from(step.window % 4)]);
        match step.action {
            Action::Replay { which } if !self.consents.is_empty() => {
                self.consents[usize::from(which) % self.consents.len()].clone()
            }
            Action::Replay { .. } | Action::Recreate => self.creation.clone(),
            Action::Foreign { federation } => {
                let signer = fx().node(ACME, 0);
                self.nonce += 1;
                let (fed, group) = if federation {
                    (FederationId::from_name("elsewhere"), self.group)
                } else {
                    (fx().federation, GroupId::from_bytes([0x77; 32]))
                };
                let kind = policy_update(self.nonce);
                let signed = sign(signer, &fed, group, kind, proposed_at, deadline, self.nonce);
                let id = id(&signed);
                Entry { signed, desc: Desc::Foreign, proposed_at, deadline, id }
            }
            Action::Merge { proposer, variant } => {
                let signer = self.proposer(proposer, model);
                let n = self.nonce * 2 + 1000;
                let root = |o: usize| (fx().org_id(o), fx().orgs[o].root_key());
                let (source_group, sources) = match variant % 10 {
                    5 => (self.group, vec![root(UMBRELLA)]),
                    6 => (UPSTREAM, vec![(fx().org_id(ACME), fx().forger.root_key())]),
                    7 => (UPSTREAM, vec![root(GLOBEX), root(UMBRELLA)]),
                    8 => (UPSTREAM, Vec::new()),
                    9 => (UPSTREAM, vec![root(NEWCO)]),
                    _ => (UPSTREAM, vec![root(UMBRELLA)]),
                };
                let kind = merge_from(source_group, sources.clone(), n);
                let heads = vec![commit(n), commit(n + 1)];
                let into_itself = source_group == self.group;
                let what = What::Merge { into_itself, sources, heads: heads.clone() };
                let op = GovernedOperation::Merge;
                self.proposal(signer, kind, what, op, heads, proposed_at, deadline)
            }
            Action::Policy { proposer, plan } => {
                let signer = self.proposer(proposer, model);
                let kind = if plan {
                    ProposalKind::SynchronizationPlan(SynchronizationPlan {
                        strategy: FederatedSyncStrategy::StrongConsistency,
                        interval_ms: self.nonce,
                    })
                } else {
                    policy_update(self.nonce)
                };
                let op = GovernedOperation::PolicyChange;
                self.proposal(signer, kind, What::Policy, op, Vec::new(), proposed_at, deadline)
            }
            Action::Join { proposer, who, root } => {
                let signer = self.proposer(proposer, model);
                let start = usize::from(who) % JOINABLE.len();
                let fresh = (0..JOINABLE.len())
                    .map(|k| JOINABLE[(start + k) % JOINABLE.len()])
                    .find(|(o, j)| !self.joined.contains(&fx().node(*o, *j).node_id()));
                let (member, root) = match fresh {
                    Some((o, j)) if who < 220 => {
                        let member = fx().orgs[o].member(j);
                        self.joined.insert(member.node);
                        let true_root = Some(fx().orgs[o].root_key());
                        let root = match (o, root % 4) {
                            (NEWCO, 0) => None,
                            (NEWCO, _) => true_root,
                            (_, 0) => true_root,
                            (_, 1) => Some(fx().forger.root_key()),
                            _ => None,
                        };
                        (member, root)
                    }
                    _ => {
                        // A node that is a member already.
                        let members: Vec<(&NodeId, &OrgId)> = model.members.iter().collect();
                        let (node, org) = members[usize::from(who) % members.len()];
                        (Member { node: *node, org: org.clone() }, None)
                    }
                };
                let kind = ProposalKind::NodeJoin(NodeJoin { member: member.clone(), root });
                let what = What::Join { member, root };
                let op = GovernedOperation::Join;
                self.proposal(signer, kind, what, op, Vec::new(), proposed_at, deadline)
            }
            Action::Leave { proposer, target, own } => {
                let protected = protected();
                let eligible: Vec<NodeId> =
                    model.members.keys().filter(|n| !protected.contains(n)).copied().collect();
                let (signer, node) = if own && !eligible.is_empty() {
                    let node = eligible[usize::from(target) % eligible.len()];
                    (fx().key(node), node)
                } else {
                    let signer = self.proposer(proposer, model);
                    let node = if target < 200 && !eligible.is_empty() {
                        eligible[usize::from(target) % eligible.len()]
                    } else {
                        let pool: Vec<NodeId> = fx()
                            .keys()
                            .iter()
                            .map(|k| k.node_id())
                            .filter(|n| !protected.contains(n))
                            .collect();
                        pool[usize::from(target) % pool.len()]
                    };
                    (signer, node)
                };
                let kind = ProposalKind::NodeLeave(NodeLeave { node });
                let op = GovernedOperation::Leave;
                let what = What::Leave { node };
                self.proposal(signer, kind, what, op, Vec::new(), proposed_at, deadline)
            }
            Action::Consent { target, org, signer, cert, stale, refuse } => {
                let pending: Vec<ProposalId> = model.pending.keys().copied().collect();
                let proposal = if target < 200 && !pending.is_empty() {
                    pending[usize::from(target) % pending.len()]
                } else if target < 240 && !self.submitted.is_empty() {
                    self.submitted[usize::from(target) % self.submitted.len()]
                } else {
                    ProposalId::from_bytes([target; 32])
                };
                let mut heads = self.heads.get(&proposal).cloned().unwrap_or_default();
                // Mostly an organization the proposal awaits, sometimes any involved one, or any.
                let org_index = match model.pending.get(&proposal) {
                    Some(op) if org < 200 => {
                        let awaiting = model_awaiting(&op.quorum, &op.approved, &op.involved);
                        let pool: Vec<&OrgId> = if org < 150 && !awaiting.is_empty() {
                            awaiting.iter().collect()
                        } else {
                            op.involved.iter().collect()
                        };
                        fx().org_index(pool[usize::from(org) % pool.len()])
                    }
                    _ => usize::from(org) % fx().orgs.len(),
                };
                let o = &fx().orgs[org_index];
                let j = usize::from(signer) % o.nodes.len();
                let (key, certificate) = match cert {
                    CertUse::Own => (&o.nodes[j], &o.valid[j]),
                    CertUse::OtherNode => (&o.nodes[j], &o.valid[(j + 1) % o.nodes.len()]),
                    CertUse::OtherOrg => {
                        let other = &fx().orgs[(org_index + 1 + usize::from(signer) % 4) % 5];
                        let k = usize::from(signer) % other.nodes.len();
                        (&other.nodes[k], &other.valid[k])
                    }
                    CertUse::Forged => (&o.nodes[j], &o.forged[j]),
                    CertUse::Expiring => (&o.nodes[j], &o.expiring[j]),
                    CertUse::Late => (&o.nodes[j], &o.late[j]),
                };
                if stale {
                    match heads.last_mut() {
                        Some(last) => *last = commit(0xDEAD),
                        None => heads.push(commit(0xDEAD)),
                    }
                }
                let verdict = if refuse {
                    ConsentVerdict::Refuse { reason: "not now".into() }
                } else {
                    ConsentVerdict::Approve
                };
                let consent = Consent {
                    proposal,
                    heads: heads.clone(),
                    org: o.id.clone(),
                    verdict,
                    certificate: certificate.clone(),
                };
                let signed = self.sign(key, ProposalKind::Consent(consent), proposed_at, deadline);
                let desc = Desc::Consent(ConsentDesc {
                    proposal,
                    heads,
                    org: o.id.clone(),
                    signer: key.node_id(),
                    cert_node: certificate.node(),
                    cert_org: certificate.org().clone(),
                    cert_root: certificate.root(),
                    valid_from: certificate.not_before(),
                    valid_to: certificate.not_after(),
                    approve: !refuse,
                });
                let id = id(&signed);
                let entry = Entry { signed, desc, proposed_at, deadline, id };
                self.consents.push(entry.clone());
                entry
            }
        }
    }
}

struct Built {
    group: GroupId,
    entries: Vec<Entry>,
    expected: Vec<(Expect, Vec<Ev>)>,
    model: Model,
    deadlines: BTreeMap<ProposalId, Timestamp>,
    heads: BTreeMap<ProposalId, Vec<CommitId>>,
}

/// The log of `steps` after the creation, and what the model makes of each entry.
fn build(setup: &Setup, steps: &[Step]) -> Built {
    let creation = fx().creation(FOUNDERS, setup.governance(), setup.policy(), 1);
    let group = creation.group_id().unwrap();
    let desc =
        Desc::Creation { members: creation.members.clone(), directory: creation.directory.clone() };
    let requester = fx().key(creation.request.requester);
    let (proposed_at, deadline) = (at(0), at(1000));
    let signed = sign(
        requester,
        &fx().federation,
        group,
        ProposalKind::BranchCreation(creation),
        proposed_at,
        deadline,
        0,
    );
    let creation = Entry { id: id(&signed), signed, desc, proposed_at, deadline };
    let mut generator = Gen {
        setup: setup.clone(),
        group,
        clock: 0,
        nonce: 0,
        creation: creation.clone(),
        heads: [(creation.id, Vec::new())].into(),
        deadlines: [(creation.id, at(300))].into(),
        submitted: vec![creation.id],
        consents: Vec::new(),
        joined: BTreeSet::new(),
    };
    let mut model = Model::new(setup.clone());
    let mut expected = vec![model.apply(&creation)];
    let mut entries = vec![creation];
    for step in steps {
        let entry = generator.resolve(step, &model);
        expected.push(model.apply(&entry));
        entries.push(entry);
    }
    Built {
        group,
        entries,
        expected,
        model,
        deadlines: generator.deadlines,
        heads: generator.heads,
    }
}

/// Applies `entries[from..]` (entry `i` at index `i + 1`): outcome, events, time after each.
fn replay(
    reg: &mut Registry,
    entries: &[Entry],
    from: usize,
) -> Vec<(Outcome, Vec<RegistryEvent>, Timestamp)> {
    (from..entries.len())
        .map(|i| {
            let outcome = reg.apply(i as u64 + 1, &entries[i].signed);
            (outcome, reg.take_events(), reg.time())
        })
        .collect()
}

/// From the registry's events alone: every approval it counted came from a genuine consent
/// (the signer's certificate, of that organization, under its true root, valid then, naming
/// the proposal's heads) in time, and every executed operation had a quorum of them.
fn check_approvals(built: &Built, results: &[(Outcome, Vec<RegistryEvent>, Timestamp)]) {
    let mut approvals: BTreeMap<ProposalId, BTreeSet<OrgId>> = BTreeMap::new();
    let mut decided: BTreeSet<ProposalId> = BTreeSet::new();
    for (i, (_, events, time)) in results.iter().enumerate() {
        let entry = &built.entries[i];
        for event in events {
            match event {
                RegistryEvent::Approved { proposal, org, index } => {
                    assert_eq!(*index, i as u64 + 1);
                    assert!(!decided.contains(proposal), "an approval after the decision");
                    let Desc::Consent(c) = &entry.desc else {
                        panic!("an approval counted at a non-consent entry {i}")
                    };
                    let true_root = fx().orgs[fx().org_index(org)].root_key();
                    assert!(
                        c.approve
                            && c.proposal == *proposal
                            && c.org == *org
                            && c.signer == c.cert_node
                            && c.cert_org == *org
                            && c.cert_root == true_root
                            && c.valid_from <= *time
                            && *time <= c.valid_to
                            && c.heads == built.heads[proposal],
                        "entry {} counted as {org}'s approval: {c:?}",
                        i + 1
                    );
                    assert!(*time <= built.deadlines[proposal], "an approval after the deadline");
                    assert!(approvals.entry(*proposal).or_default().insert(org.clone()));
                }
                RegistryEvent::Executed(op) => {
                    assert!(decided.insert(op.proposal), "executed twice, or after rejection");
                    let approved = approvals.remove(&op.proposal).unwrap_or_default();
                    assert_eq!(op.approved_by, approved.iter().cloned().collect::<Vec<_>>());
                    let own_leave = matches!(
                        (&entry.desc, &op.kind),
                        (Desc::Propose { proposer, what: What::Leave { node } }, ProposalKind::NodeLeave(_))
                            if entry.id == op.proposal && proposer == node
                    );
                    if own_leave {
                        assert!(approved.is_empty());
                        continue;
                    }
                    let (quorum, involved) = &built.model.asked[&op.proposal];
                    assert!(
                        model_met(quorum, &approved, involved),
                        "{:?} executed with {approved:?} of {involved:?} under {quorum:?}",
                        op.proposal
                    );
                    assert!(*time <= built.deadlines[&op.proposal], "executed after its deadline");
                }
                RegistryEvent::Rejected { proposal, .. } => {
                    assert!(decided.insert(*proposal), "rejected after its decision");
                }
                _ => {}
            }
        }
    }
}

/// Proposals that were rejected, as the outcomes and events of a log say it.
fn rejected_set<'a>(
    entries: &[Entry],
    results: impl Iterator<Item = (&'a Expect, &'a [Ev])>,
) -> BTreeSet<ProposalId> {
    let mut set = BTreeSet::new();
    for (entry, (expect, evs)) in entries.iter().zip(results) {
        if matches!(entry.desc, Desc::Propose { .. }) && *expect == Expect::Rejected {
            set.insert(entry.id);
        }
        for ev in evs {
            if let Ev::Rejected(id) = ev {
                set.insert(*id);
            }
        }
    }
    set
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_registry_decides_as_the_model_does(setup in any_setup(), steps in any_log(48)) {
        let built = build(&setup, &steps);
        let mut reg = Registry::new(fx().federation, built.group);
        let results = replay(&mut reg, &built.entries, 0);
        let got: Vec<(Expect, Vec<Ev>)> =
            results.iter().map(|(o, e, _)| (expect_of(o), evs_of(e))).collect();
        for (i, (got, want)) in got.iter().zip(&built.expected).enumerate() {
            prop_assert_eq!(got, want, "entry {}: {:?}", i + 1, built.entries[i].desc);
        }
        let model = &built.model;
        // Executed and rejected proposals are the model's.
        let history: Vec<ProposalId> = reg.history().iter().map(|e| e.proposal).collect();
        prop_assert_eq!(&history, &model.executed);
        let rejected = rejected_set(&built.entries, got.iter().map(|(x, e)| (x, e.as_slice())));
        let expected_rejected =
            rejected_set(&built.entries, built.expected.iter().map(|(x, e)| (x, e.as_slice())));
        prop_assert_eq!(rejected, expected_rejected);
        // So is everything else the registry holds.
        let pending: Vec<ProposalId> = reg.pending().map(|p| p.proposal).collect();
        prop_assert_eq!(pending, model.pending.keys().copied().collect::<Vec<_>>());
        for op in reg.pending() {
            let want = &model.pending[&op.proposal];
            prop_assert_eq!(&op.approved, &want.approved);
            prop_assert_eq!(&op.involved, &want.involved);
            prop_assert_eq!(&op.quorum, &want.quorum);
            prop_assert_eq!(op.deadline, want.deadline);
            prop_assert_eq!(&op.heads, &want.heads);
        }
        let members: Vec<Member> =
            model.members.iter().map(|(n, o)| Member { node: *n, org: o.clone() }).collect();
        prop_assert_eq!(reg.members(), members.as_slice());
        prop_assert_eq!(
            &reg.branch().unwrap().organizations,
            &model.orgs().into_iter().collect::<Vec<_>>()
        );
        prop_assert_eq!(reg.directory(), &model.directory);
        prop_assert_eq!(reg.is_active(), model.active);
        prop_assert_eq!(reg.time(), model.time);
        prop_assert_eq!(reg.membership_version(), model.membership_changes);
        prop_assert_eq!(reg.applied(), built.entries.len() as u64);
        // No operation executed without a quorum of genuine approvals before its deadline.
        check_approvals(&built, &results);
        // Another registry applying the same log ends in the same state.
        let mut twin = Registry::new(fx().federation, built.group);
        replay(&mut twin, &built.entries, 0);
        prop_assert_eq!(twin.digest(), reg.digest());
    }

    #[test]
    fn a_snapshot_taken_midway_continues_to_the_same_state(
        setup in any_setup(),
        steps in any_log(40),
        cut in any::<prop::sample::Index>(),
        truncate in any::<prop::sample::Index>(),
        garbage in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let built = build(&setup, &steps);
        let (fed, group) = (fx().federation, built.group);
        let mut whole = Registry::new(fed, group);
        let all = replay(&mut whole, &built.entries, 0);

        let cut = cut.index(built.entries.len() + 1);
        let mut first = Registry::new(fed, group);
        replay(&mut first, &built.entries[..cut], 0);
        let snapshot = DecisionMachine::snapshot(&first);
        let midway = first.digest();

        // Garbage, a cut snapshot, one with a byte more, another group's or federation's:
        // refused, and the registry (midway or fresh) is unchanged.
        let mut fresh = Registry::new(fed, group);
        let empty = fresh.digest();
        let other_group = DecisionMachine::snapshot(&Registry::new(fed, GroupId::from_bytes([0x42; 32])));
        let other_fed = DecisionMachine::snapshot(&Registry::new(FederationId::from_name("elsewhere"), group));
        let mut longer = snapshot.clone();
        longer.push(garbage.first().copied().unwrap_or(0));
        let hostile = [
            garbage.clone(),
            snapshot[..truncate.index(snapshot.len())].to_vec(),
            longer,
            other_group,
            other_fed,
        ];
        for bytes in &hostile {
            prop_assert!(first.restore(bytes).is_err());
            prop_assert_eq!(first.digest(), midway);
            prop_assert!(fresh.restore(bytes).is_err());
            prop_assert_eq!(fresh.digest(), empty);
        }
        let mut elsewhere = Registry::new(fed, GroupId::from_bytes([0x42; 32]));
        let before = elsewhere.digest();
        prop_assert!(elsewhere.restore(&snapshot).is_err());
        prop_assert_eq!(elsewhere.digest(), before);

        // The snapshot restored into a fresh registry continues exactly like the original.
        fresh.restore(&snapshot).unwrap();
        prop_assert_eq!(fresh.digest(), midway);
        let rest = replay(&mut fresh, &built.entries, cut);
        let rest_first = replay(&mut first, &built.entries, cut);
        prop_assert_eq!(fresh.digest(), whole.digest());
        prop_assert_eq!(first.digest(), whole.digest());
        for (k, ((o, e, _), (wo, we, _))) in rest.iter().zip(&all[cut..]).enumerate() {
            prop_assert_eq!(o, wo, "entry {}", cut + k + 1);
            prop_assert_eq!(e, we, "entry {}", cut + k + 1);
        }
        prop_assert_eq!(rest.len(), rest_first.len());
        prop_assert_eq!(DecisionMachine::snapshot(&fresh), DecisionMachine::snapshot(&whole));
    }
}
