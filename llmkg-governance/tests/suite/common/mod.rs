//! Shared by the governance test suites: organizations with roots, an admin and a writer
//! node, encryption keys and a default policy, and managers that trust them.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use llmkg_federation_core::kv::{KvBatch, KvError, KvPair, KvStore};
use llmkg_federation_core::security::{
    BranchRef, FederatedBranchRequest, Operation, SecurityLevel,
};
use llmkg_federation_core::{
    BranchName, ChangeSet, FederationId, MemoryKv, NodeCertificate, NodeId, NodeKeypair, OrgId,
    OrgKeypair, Role, Term, Timestamp, Triple,
};
use llmkg_governance::access::{AccessPolicy, PrincipalPattern, Rule};
use llmkg_governance::audit::LogSigner;
use llmkg_governance::keys::{EncryptionKeyCertificate, FederationKeyring, OrgEncryptionKeypair};
use llmkg_governance::manager::{FederatedSecurityManager, GovernanceOptions, SignedPolicy};
use llmkg_governance::trust::TrustLevel;

pub fn t(s: i64) -> Timestamp {
    Timestamp::from_micros(1_700_000_000_000_000 + s * 1_000_000)
}

pub fn federation() -> FederationId {
    FederationId::from_name("review")
}

pub struct Org {
    pub id: OrgId,
    pub root: OrgKeypair,
    pub admin: u8,
    pub writer: u8,
    pub enc: u8,
}

impl Org {
    pub fn new(name: &str, seed: u8) -> Self {
        Org {
            id: OrgId::new(name).unwrap(),
            root: OrgKeypair::from_secret_bytes([seed; 32]),
            admin: seed + 1,
            writer: seed + 2,
            enc: seed + 3,
        }
    }
    pub fn node(&self, which: u8) -> NodeKeypair {
        NodeKeypair::from_secret_bytes([which; 32])
    }
    pub fn admin_id(&self) -> NodeId {
        self.node(self.admin).node_id()
    }
    pub fn writer_id(&self) -> NodeId {
        self.node(self.writer).node_id()
    }
    pub fn cert(&self, node: NodeId, roles: &[Role], serial: u64) -> NodeCertificate {
        self.root
            .certify(self.id.clone(), node, roles.iter().copied(), t(0), t(10_000), serial)
            .unwrap()
    }
    pub fn enc_keypair(&self) -> OrgEncryptionKeypair {
        OrgEncryptionKeypair::from_secret_bytes([self.enc; 32])
    }
    pub fn enc_cert(&self) -> EncryptionKeyCertificate {
        EncryptionKeyCertificate::issue(
            &self.root,
            self.id.clone(),
            self.enc_keypair().public_key(),
            1,
            t(0),
        )
        .unwrap()
    }
    /// A keyring of this organization outside any manager (what its nodes hold).
    pub fn keyring(&self) -> FederationKeyring {
        FederationKeyring::new(federation(), self.id.clone(), self.enc_keypair())
    }
    /// Admins do everything; writers read and commit; nobody touches `/secret/`.
    pub fn policy(&self, version: u64) -> SignedPolicy {
        let p = AccessPolicy::new(
            self.id.clone(),
            version,
            vec![
                Rule::permit("admins", PrincipalPattern::Role(Role::Admin), Operation::ALL)
                    .unwrap(),
                Rule::permit(
                    "writers",
                    PrincipalPattern::Role(Role::Writer),
                    [Operation::Read, Operation::Commit],
                )
                .unwrap(),
                Rule::forbid(
                    "no-secret",
                    PrincipalPattern::Any,
                    [Operation::Commit, Operation::Read],
                )
                .unwrap()
                .in_namespace("https://ex.org/secret/"),
            ],
        )
        .unwrap();
        SignedPolicy::sign(&p, &self.root).unwrap()
    }
    /// Only this organization's own nodes may do anything.
    pub fn own_only(&self, version: u64) -> SignedPolicy {
        let p = AccessPolicy::new(
            self.id.clone(),
            version,
            vec![
                Rule::permit("own", PrincipalPattern::Org(self.id.clone()), Operation::ALL)
                    .unwrap(),
            ],
        )
        .unwrap();
        SignedPolicy::sign(&p, &self.root).unwrap()
    }
    pub fn options(&self) -> GovernanceOptions {
        GovernanceOptions {
            org: self.id.clone(),
            signer: Arc::new(self.node(self.admin)),
            encryption: self.enc_keypair(),
            log_signer: LogSigner::new(
                &format!("{}.example/audit", self.id),
                ed25519_dalek::SigningKey::from_bytes(&[self.enc + 100; 32]),
            )
            .unwrap(),
            seed: [self.enc; 32],
        }
    }
    /// Pins `o` at `level` with its two certificates, its encryption key and its policy.
    pub fn admit<K: KvStore>(m: &FederatedSecurityManager<K>, o: &Org, level: TrustLevel) {
        m.pin(o.id.clone(), o.root.root_key(), level, t(0)).unwrap();
        m.add_certificate(o.cert(o.admin_id(), &[Role::Admin], 1), t(1)).unwrap();
        m.add_certificate(o.cert(o.writer_id(), &[Role::Writer], 2), t(1)).unwrap();
        m.register_encryption_key(o.enc_cert(), t(1)).unwrap();
        m.publish_policy(&o.policy(1), t(1)).unwrap();
    }
    pub fn manager_on<K: KvStore>(&self, all: &[&Org], kv: K) -> FederatedSecurityManager<K> {
        let m = FederatedSecurityManager::new(self.options(), kv).unwrap();
        for o in all {
            Org::admit(&m, o, TrustLevel::Full);
        }
        m
    }
    pub fn manager(&self, all: &[&Org]) -> FederatedSecurityManager<MemoryKv> {
        self.manager_on(all, MemoryKv::new())
    }
}

pub fn orgs() -> (Org, Org, Org) {
    (Org::new("acme", 10), Org::new("globex", 20), Org::new("initech", 30))
}

pub fn branch(name: &str) -> BranchRef {
    BranchRef { federation: federation(), branch: BranchName::new(name).unwrap() }
}

pub fn request(
    by: &Org,
    name: &str,
    members: &[&Org],
    level: SecurityLevel,
) -> FederatedBranchRequest {
    FederatedBranchRequest::new(
        federation(),
        BranchName::new(name).unwrap(),
        by.admin_id(),
        members.iter().map(|o| o.id.clone()),
    )
    .with_level(level)
}

pub fn last_event<K: KvStore>(m: &FederatedSecurityManager<K>) -> serde_json::Value {
    let bytes = m.with_audit(|log| log.entry(log.size() - 1).unwrap());
    serde_json::from_slice(&bytes).unwrap()
}

pub fn triple(p: &str, o: &str) -> Triple {
    Triple::new(
        Term::iri("https://ex.org/s").unwrap(),
        Term::iri(p).unwrap(),
        Term::string(o).unwrap(),
    )
    .unwrap()
}

pub fn changes(o: &str) -> ChangeSet {
    ChangeSet::adding([triple("https://ex.org/name", o)])
}

/// A store whose writes fail while `fail` is set (the audit log's storage going away).
pub struct Flaky {
    pub inner: MemoryKv,
    pub fail: Arc<AtomicBool>,
}

impl Flaky {
    pub fn new() -> (Self, Arc<AtomicBool>) {
        let fail = Arc::new(AtomicBool::new(false));
        (Flaky { inner: MemoryKv::new(), fail: Arc::clone(&fail) }, fail)
    }
}

impl KvStore for Flaky {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get(key)
    }
    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KvPair>, KvError> {
        self.inner.scan(start, end, limit)
    }
    fn write(&self, batch: KvBatch) -> Result<(), KvError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(KvError::backend("injected: store unavailable"));
        }
        self.inner.write(batch)
    }
}
