#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The federated branch end to end, in one process: organizations' nodes on the paved path
//! (Raft, eventual sync, the governance security manager) over the in-process transport.

use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::consensus::{ConsensusProposal, Outcome, ProposalId, ProposalKind};
use llmkg_federation_core::federated::{
    BranchSource, Consent, ConsentVerdict, FederatedBranchRequest, FederatedMergePolicy,
};
use llmkg_federation_core::security::{
    BranchRef, Operation, SealError, SecurityLevel, SecurityManager,
};
use llmkg_federation_core::system::{FederatedBranchingSystem, FederationError, NodeIdentity};
use llmkg_federation_core::{
    BranchName, ChangeSet, Clock, FederationId, GraphState, MemoryKv, NodeCertificate, NodeKeypair,
    OrgId, OrgKeypair, Role, Signed, SystemClock, Term, Timestamp, Triple,
};
use llmkg_governance::access::{AccessPolicy, PrincipalPattern, Rule};
use llmkg_governance::audit::LogSigner;
use llmkg_governance::keys::{EncryptionKeyCertificate, OrgEncryptionKeypair};
use llmkg_governance::manager::{FederatedSecurityManager, GovernanceOptions, SignedPolicy};
use llmkg_governance::paved::{PavedBackend, paved_system};
use llmkg_governance::trust::TrustLevel;
use llmkg_transport::{InProcessNetwork, TokioTimer};

fn fed() -> FederationId {
    FederationId::from_name("federation-e2e")
}

struct Org {
    id: OrgId,
    root: OrgKeypair,
    seed: u8,
}

impl Org {
    fn new(name: &str, seed: u8) -> Self {
        Org { id: OrgId::new(name).unwrap(), root: OrgKeypair::from_secret_bytes([seed; 32]), seed }
    }
    fn enc(&self) -> OrgEncryptionKeypair {
        OrgEncryptionKeypair::from_secret_bytes([self.seed + 1; 32])
    }
    fn cert(&self, node: &NodeKeypair, serial: u64) -> NodeCertificate {
        let now = SystemClock.now().as_micros();
        let day = 86_400_000_000;
        self.root
            .certify(
                self.id.clone(),
                node.node_id(),
                [Role::Admin],
                Timestamp::from_micros(now - day),
                Timestamp::from_micros(now + 30 * day),
                serial,
            )
            .unwrap()
    }
    fn policy(&self) -> SignedPolicy {
        let p = AccessPolicy::new(
            self.id.clone(),
            1,
            vec![
                Rule::permit("admins", PrincipalPattern::Role(Role::Admin), Operation::ALL)
                    .unwrap(),
            ],
        )
        .unwrap();
        SignedPolicy::sign(&p, &self.root).unwrap()
    }
    fn refusing(&self) -> SignedPolicy {
        let p = AccessPolicy::new(
            self.id.clone(),
            2,
            vec![
                Rule::permit("own", PrincipalPattern::Org(self.id.clone()), Operation::ALL)
                    .unwrap(),
            ],
        )
        .unwrap();
        SignedPolicy::sign(&p, &self.root).unwrap()
    }
}

struct Node {
    key: NodeKeypair,
    cert: NodeCertificate,
    system: FederatedBranchingSystem,
    security: Arc<FederatedSecurityManager<MemoryKv>>,
    /// The security manager's store (its audit log and the key epochs kept beside it).
    audit: MemoryKv,
}

/// The security manager's options of node `i`, of `org`.
fn options(org: &Org, key: &NodeKeypair, i: usize) -> GovernanceOptions {
    GovernanceOptions {
        org: org.id.clone(),
        signer: Arc::new(NodeKeypair::from_secret_bytes(key.secret_bytes())),
        encryption: org.enc(),
        log_signer: LogSigner::new(
            &format!("{}.example/audit", org.id),
            ed25519_dalek::SigningKey::from_bytes(&[org.seed + 2; 32]),
        )
        .unwrap(),
        seed: [i as u8; 32],
    }
}

fn now() -> Timestamp {
    SystemClock.now()
}

/// `placement[i]` is the organization of node `i`; the systems know the first `known` nodes
/// (every security manager trusts them all).
fn federation(orgs: &[Org], placement: &[usize], known: usize) -> Vec<Node> {
    let timer = Arc::new(TokioTimer::new());
    let network = InProcessNetwork::new(timer.clone());
    let keys: Vec<NodeKeypair> =
        (0..placement.len()).map(|i| NodeKeypair::from_secret_bytes([100 + i as u8; 32])).collect();
    let certs: Vec<NodeCertificate> = keys
        .iter()
        .zip(placement)
        .enumerate()
        .map(|(i, (k, o))| orgs[*o].cert(k, i as u64 + 1))
        .collect();
    let mut nodes = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let org = &orgs[placement[i]];
        let options = options(org, key, i);
        let audit = MemoryKv::new();
        let security = Arc::new(FederatedSecurityManager::new(options, audit.clone()).unwrap());
        for o in orgs {
            security.pin(o.id.clone(), o.root.root_key(), TrustLevel::Full, now()).unwrap();
            let enc = EncryptionKeyCertificate::issue(
                &o.root,
                o.id.clone(),
                o.enc().public_key(),
                1,
                now(),
            )
            .unwrap();
            security.register_encryption_key(enc, now()).unwrap();
            security.publish_policy(&o.policy(), now()).unwrap();
        }
        for c in &certs {
            security.add_certificate(c.clone(), now()).unwrap();
        }
        let transport: Arc<dyn llmkg_federation_core::Transport> =
            Arc::new(network.join(key.node_id()).unwrap());
        let identity = NodeIdentity {
            keypair: NodeKeypair::from_secret_bytes(key.secret_bytes()),
            certificate: certs[i].clone(),
        };
        let spawn: llmkg_governance::paved::Spawner = Arc::new(|task| {
            tokio::spawn(task);
        });
        let backend = PavedBackend::new(
            &identity,
            fed(),
            MemoryKv::new(),
            transport.clone(),
            timer.clone(),
            spawn,
        );
        let system =
            paved_system(identity, fed(), transport, security.clone(), backend, timer.clone());
        for c in certs.iter().take(known) {
            system.add_node(c.clone());
        }
        nodes.push(Node {
            key: NodeKeypair::from_secret_bytes(key.secret_bytes()),
            cert: certs[i].clone(),
            system,
            security,
            audit,
        });
    }
    nodes
}

fn triple(s: &str, p: &str, o: &str) -> Triple {
    Triple::new(
        Term::iri(format!("https://ex.org/{s}")).unwrap(),
        Term::iri(format!("https://ex.org/{p}")).unwrap(),
        Term::string(o).unwrap(),
    )
    .unwrap()
}

fn source(n: usize) -> (Vec<Triple>, BranchSource) {
    let triples: Vec<Triple> = (0..n).map(|i| triple(&format!("s{i}"), "p", "seed")).collect();
    let mut state = GraphState::new();
    for t in &triples {
        state.insert(t).unwrap();
    }
    let src = BranchSource::of_state("seed", &mut state);
    (triples, src)
}

fn name(s: &str) -> BranchName {
    BranchName::new(s).unwrap()
}

async fn roots(nodes: &[&Node], branch: &BranchName) -> Vec<llmkg_federation_core::StateRoot> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(n.system.replica(branch).unwrap().status().await.unwrap().state_root);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_write_merge_refuse_leave_join() {
    let orgs = [Org::new("acme", 10), Org::new("globex", 20), Org::new("initech", 30)];
    // Nodes 0..4: acme, globex, initech, globex; node 4: a third globex node, known to the
    // others only later, that joins the running branch.
    let nodes = federation(&orgs, &[0, 1, 2, 1, 1], 4);
    let all: Vec<OrgId> = orgs.iter().map(|o| o.id.clone()).collect();

    // Create: every participant consents; every replica holds the source snapshot.
    let (seed, src) = source(200);
    let root = src.root();
    let request =
        FederatedBranchRequest::new(fed(), name("shared"), nodes[0].key.node_id(), all.clone())
            .with_source(src);
    let branch = tokio::time::timeout(
        Duration::from_secs(60),
        nodes[0].system.create_federated_branch(request, seed),
    )
    .await
    .expect("creation timed out")
    .expect("creation");
    assert_eq!(branch.organizations, all);
    assert_eq!(branch.members.len(), 4);
    let everyone: Vec<&Node> = nodes[..4].iter().collect();
    let digests: Vec<[u8; 32]> =
        everyone.iter().map(|n| n.system.registry(&name("shared")).unwrap().digest()).collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "registries differ");
    assert!(roots(&everyone, &name("shared")).await.iter().all(|r| *r == root));

    // Concurrent writes on every node converge.
    for (i, n) in everyone.iter().enumerate() {
        let changes = ChangeSet::adding([triple(&format!("w{i}"), "p", "write")]);
        n.system.write(&name("shared"), changes, "write").await.unwrap();
    }
    let result = nodes[1].system.converge(&name("shared")).await.unwrap();
    let r = roots(&everyone, &name("shared")).await;
    assert!(r.iter().all(|x| *x == result.state_root), "{r:?}");

    // A second branch of acme and globex, merged into the first with everyone's consent.
    let side_req = FederatedBranchRequest::new(
        fed(),
        name("side"),
        nodes[0].key.node_id(),
        [all[0].clone(), all[1].clone()],
    );
    nodes[0].system.create_federated_branch(side_req, Vec::new()).await.expect("side");
    nodes[1]
        .system
        .write(&name("side"), ChangeSet::adding([triple("m", "p", "merged")]), "side")
        .await
        .unwrap();
    nodes[0].system.converge(&name("side")).await.unwrap();
    let merged = nodes[0]
        .system
        .merge_federated_branches(&name("side"), &name("shared"), FederatedMergePolicy::default())
        .await
        .expect("merge");
    assert_eq!(merged.added, 1);
    assert_eq!(merged.approved_by, all);
    let after = nodes[2].system.converge(&name("shared")).await.unwrap();
    let r = roots(&everyone, &name("shared")).await;
    assert!(r.iter().all(|x| *x == after.state_root));

    // A stale and a forged consent count for nothing.
    let shared = nodes[0].system.registry(&name("shared")).unwrap();
    let group = shared.group();
    let forged_consent = |heads, cert: NodeCertificate, signer: &NodeKeypair, id| {
        let consent = Consent {
            proposal: id,
            heads,
            org: cert.org().clone(),
            verdict: ConsentVerdict::Approve,
            certificate: cert,
        };
        let p = ConsensusProposal {
            group,
            kind: ProposalKind::Consent(consent),
            proposed_at: now(),
            deadline: now(),
            nonce: 1,
        };
        Signed::sign_crate_kind(signer, &fed(), p).unwrap()
    };
    let replayed = forged_consent(vec![], nodes[1].cert.clone(), &nodes[1].key, merged.proposal);
    let out = nodes[0].system.submit(&name("shared"), replayed).await.unwrap();
    assert!(matches!(out, Outcome::Rejected { .. }), "{out:?}");
    // Another node's certificate under this node's signature.
    let stolen = forged_consent(
        vec![],
        nodes[1].cert.clone(),
        &nodes[2].key,
        ProposalId::from_bytes([1; 32]),
    );
    let out = nodes[0].system.submit(&name("shared"), stolen).await.unwrap();
    assert!(matches!(out, Outcome::Rejected { .. }), "{out:?}");

    // Initech's node leaves at acme's request; the others agree on the registry.
    let left = nodes[0].system.leave(&name("shared"), nodes[2].key.node_id()).await.expect("leave");
    assert!(matches!(left.kind, ProposalKind::NodeLeave(_)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in [&nodes[0], &nodes[1], &nodes[3]] {
        let reg = n.system.registry(&name("shared")).unwrap();
        assert_eq!(reg.members().len(), 3);
        assert!(!reg.branch().unwrap().organizations.contains(&all[2]));
    }
    assert!(nodes[2].system.branches().is_empty(), "the departed node still hosts the branch");
    // What is written after the leave does not reach the departed node.
    nodes[1]
        .system
        .write(&name("shared"), ChangeSet::adding([triple("after", "p", "leave")]), "after")
        .await
        .unwrap();
    assert!(nodes[2].system.replica(&name("shared")).is_err());

    // A new globex node joins and catches up.
    nodes[0].system.add_node(nodes[4].cert.clone());
    let joined = nodes[0].system.join(&name("shared"), nodes[4].key.node_id()).await.expect("join");
    assert!(matches!(joined.kind, ProposalKind::NodeJoin(_)));
    let stay: Vec<&Node> = [&nodes[0], &nodes[1], &nodes[3], &nodes[4]].into_iter().collect();
    let end = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(r) = nodes[0].system.converge(&name("shared")).await {
                let rs = roots(&stay, &name("shared")).await;
                if rs.iter().all(|x| *x == r.state_root) {
                    return r;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the joined node caught up");
    let reg = nodes[4].system.registry(&name("shared")).unwrap();
    assert_eq!(reg.digest(), nodes[0].system.registry(&name("shared")).unwrap().digest());
    assert_eq!(reg.members().len(), 4);
    let joined_root = nodes[4].system.replica(&name("shared")).unwrap().status().await.unwrap();
    assert_eq!(joined_root.state_root, end.state_root);

    // A node shut down hosts nothing; the others (three of four voters) go on.
    nodes[4].system.shutdown();
    assert!(nodes[4].system.branches().is_empty());
    let refused = nodes[4]
        .system
        .write(&name("shared"), ChangeSet::adding([triple("x", "p", "y")]), "x")
        .await;
    assert!(matches!(refused, Err(FederationError::UnknownBranch(_))), "{refused:?}");
    nodes[0]
        .system
        .write(&name("shared"), ChangeSet::adding([triple("after", "p", "shutdown")]), "after")
        .await
        .expect("a write acknowledged without the stopped node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_and_change_nothing() {
    let orgs = [Org::new("acme", 10), Org::new("globex", 20)];
    let nodes = federation(&orgs, &[0, 1], 2);
    // Globex's policy lets only its own nodes act: its node declines acme's creation.
    nodes[1].security.publish_policy(&orgs[1].refusing(), now()).unwrap();
    let request = FederatedBranchRequest::new(
        fed(),
        name("declined"),
        nodes[0].key.node_id(),
        [orgs[0].id.clone(), orgs[1].id.clone()],
    )
    .with_level(SecurityLevel::Internal);
    let err = nodes[0].system.create_federated_branch(request, Vec::new()).await.unwrap_err();
    assert!(matches!(err, FederationError::Rejected(_)), "{err:?}");
    assert!(nodes[0].system.branches().is_empty());
    assert!(nodes[1].system.branches().is_empty());
    // A branch this node does not host.
    let err = nodes[0]
        .system
        .write(&name("nowhere"), ChangeSet::adding([triple("a", "b", "c")]), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, FederationError::UnknownBranch(_)), "{err:?}");
}

/// A confidential branch ships its commits sealed under the federation's data key: the members
/// read them, an organization that left reads nothing written after, and the key epochs
/// survive a restart of the security manager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_branch_ships_sealed_and_a_departed_organization_reads_nothing_after() {
    let orgs = [Org::new("acme", 10), Org::new("globex", 20), Org::new("initech", 30)];
    let nodes = federation(&orgs, &[0, 1, 2, 1], 4);
    let all: Vec<OrgId> = orgs.iter().map(|o| o.id.clone()).collect();
    let secret = name("secret");
    let branch_ref = BranchRef { federation: fed(), branch: secret.clone() };
    let (seed, src) = source(50);
    let request =
        FederatedBranchRequest::new(fed(), secret.clone(), nodes[0].key.node_id(), all.clone())
            .with_source(src)
            .with_level(SecurityLevel::Confidential);
    tokio::time::timeout(
        Duration::from_secs(60),
        nodes[0].system.create_federated_branch(request, seed),
    )
    .await
    .expect("creation timed out")
    .expect("creation");
    let everyone: Vec<&Node> = nodes.iter().collect();
    let converged = |members: Vec<&'static str>, among: Vec<usize>| {
        let nodes = &nodes;
        let secret = secret.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(60), async {
                loop {
                    let list: Vec<&Node> = among.iter().map(|i| &nodes[*i]).collect();
                    let rs = roots(&list, &secret).await;
                    if rs.windows(2).all(|w| w[0] == w[1]) {
                        let (_, state) =
                            nodes[among[0]].system.replica(&secret).unwrap().state().await.unwrap();
                        let held = members.iter().all(|m| {
                            state.iter().any(|t| t.to_triple().object().to_string().contains(m))
                        });
                        if held {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{members:?} did not reach {among:?}"));
        }
    };

    // Written by initech's node, it reaches every member: sealed on the way, opened by each.
    let written = nodes[2]
        .system
        .write(&secret, ChangeSet::adding([triple("i", "p", "initech-before")]), "w")
        .await
        .unwrap();
    converged(vec!["initech-before"], vec![0, 1, 2, 3]).await;
    let shipped_before =
        nodes[0].system.replica(&secret).unwrap().shipped(written).await.unwrap().unwrap();
    let shipped = shipped_before.clone();
    assert!(
        !shipped.windows(14).any(|w| w == b"initech-before"),
        "the commit travels in the clear"
    );
    let opened =
        nodes[3].security.envelope_seal(&branch_ref).unwrap().unwrap().open(&shipped, now());
    assert!(opened.is_ok(), "a member cannot open it: {opened:?}");
    assert!(roots(&everyone, &secret).await.windows(2).all(|w| w[0] == w[1]));

    // Initech's only node leaves: its organization leaves, the data key rotates without it.
    let epochs_before = nodes[0].security.key_epochs(&fed()).len();
    nodes[0].system.leave(&secret, nodes[2].key.node_id()).await.expect("leave");
    let after = nodes[1]
        .system
        .write(&secret, ChangeSet::adding([triple("g", "p", "globex-after")]), "w")
        .await
        .unwrap();
    converged(vec!["globex-after"], vec![0, 1, 3]).await;
    assert_eq!(nodes[0].security.key_epochs(&fed()).len(), epochs_before + 1, "one new epoch");
    let shipped = nodes[1].system.replica(&secret).unwrap().shipped(after).await.unwrap().unwrap();
    let departed = nodes[2].security.envelope_seal(&branch_ref).unwrap().unwrap();
    let refused = departed.open(&shipped, now());
    assert!(
        matches!(refused, Err(SealError::NoKey { .. })),
        "the departed organization opens a commit written after it left: {refused:?}"
    );
    let member = nodes[0].security.envelope_seal(&branch_ref).unwrap().unwrap();
    assert!(member.open(&shipped, now()).is_ok());
    // What was shipped to it before it left it can still read; the same commit shipped now
    // is sealed under the new epoch.
    assert!(departed.open(&shipped_before, now()).is_ok());
    let again = nodes[0].system.replica(&secret).unwrap().shipped(written).await.unwrap().unwrap();
    assert!(matches!(departed.open(&again, now()), Err(SealError::NoKey { .. })));

    // The key epochs are kept beside the audit log: a manager opened again on the same store
    // holds the same chain, without asking anyone.
    let reopened =
        FederatedSecurityManager::new(options(&orgs[1], &nodes[1].key, 1), nodes[1].audit.clone())
            .expect("reopen");
    assert_eq!(reopened.key_epochs(&fed()), nodes[1].security.key_epochs(&fed()));
}
