//! A federation of organizations' nodes in one process, on the paved path (Raft, eventual
//! sync, the governance security manager, redb), each node with its own TCP + Noise
//! transport on loopback: what the main demo and `bench-federation` run.

use std::path::Path;
use std::sync::Arc;

use llmkg_federation_core::security::Operation;
use llmkg_federation_core::system::{FederatedBranchingSystem, NodeIdentity};
use llmkg_federation_core::{
    Clock, FederationId, MemoryKv, NodeCertificate, NodeId, NodeKeypair, OrgId, OrgKeypair, RedbKv,
    Role, SystemClock, Timestamp, Transport,
};
use llmkg_governance::access::{AccessPolicy, PrincipalPattern, Rule};
use llmkg_governance::audit::LogSigner;
use llmkg_governance::keys::{EncryptionKeyCertificate, OrgEncryptionKeypair};
use llmkg_governance::manager::{FederatedSecurityManager, GovernanceOptions, SignedPolicy};
use llmkg_governance::paved::{PavedBackend, Spawner, paved_system};
use llmkg_governance::trust::TrustLevel;
use llmkg_transport::{TcpConfig, TcpTransport, TokioTimer, Trust};

/// One node of a [`local_federation`].
pub struct LocalNode {
    /// Its id.
    pub id: NodeId,
    /// Its organization.
    pub org: OrgId,
    /// Its federation system.
    pub system: FederatedBranchingSystem,
    /// Its organization's security manager on this node (with its audit log).
    pub security: Arc<FederatedSecurityManager<MemoryKv>>,
    /// The backend its system runs branches on.
    pub backend: Arc<PavedBackend<RedbKv>>,
}

/// The keys of organization `i` of a local federation (fixed, for reproducible runs).
pub fn org_root(i: usize) -> OrgKeypair {
    OrgKeypair::from_secret_bytes([10 + i as u8; 32])
}

/// Starts nodes of the organizations `orgs`; `placement[k]` is the index in `orgs` of node
/// `k`'s organization. Every security manager trusts every organization (each permits its
/// administrators everything; every node is certified as an administrator); the
/// federation systems know the first `known` nodes (the others are made known later, to
/// join). Stores are redb files in `dir`. Must run inside a tokio runtime.
pub async fn local_federation(
    federation: FederationId,
    orgs: &[OrgId],
    placement: &[usize],
    known: usize,
    dir: &Path,
) -> Result<Vec<LocalNode>, Box<dyn std::error::Error>> {
    let roots: Vec<OrgKeypair> = (0..orgs.len()).map(org_root).collect();
    let encs: Vec<OrgEncryptionKeypair> = (0..orgs.len())
        .map(|i| OrgEncryptionKeypair::from_secret_bytes([80 + i as u8; 32]))
        .collect();
    let keys: Vec<NodeKeypair> =
        (0..placement.len()).map(|k| NodeKeypair::from_secret_bytes([150 + k as u8; 32])).collect();
    let now = SystemClock.now();
    let day = 86_400_000_000;
    let mut certs: Vec<NodeCertificate> = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        let o = placement[k];
        certs.push(roots[o].certify(
            orgs[o].clone(),
            key.node_id(),
            [Role::Admin],
            Timestamp::from_micros(now.as_micros() - day),
            Timestamp::from_micros(now.as_micros() + day),
            k as u64 + 1,
        )?);
    }
    let mut transports = Vec::new();
    for k in &keys {
        let mut config =
            TcpConfig::new(NodeKeypair::from_secret_bytes(k.secret_bytes()), federation);
        config.listen_addr = "127.0.0.1:0".parse()?;
        config.max_message_len = 64 << 20;
        config.trust = Trust::AllowList(keys.iter().map(NodeKeypair::node_id).collect());
        transports.push(Arc::new(TcpTransport::bind(config).await?));
    }
    for (i, tr) in transports.iter().enumerate() {
        for (j, other) in transports.iter().enumerate() {
            if i != j {
                tr.add_peer(keys[j].node_id(), other.local_addr())?;
            }
        }
    }
    let timer = Arc::new(TokioTimer::new());
    let mut nodes = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        let o = placement[k];
        let options = GovernanceOptions {
            org: orgs[o].clone(),
            signer: Arc::new(NodeKeypair::from_secret_bytes(key.secret_bytes())),
            encryption: OrgEncryptionKeypair::from_secret_bytes([80 + o as u8; 32]),
            log_signer: LogSigner::new(
                &format!("{}.example/audit/node{k}", orgs[o]),
                ed25519_dalek::SigningKey::from_bytes(&[200 + k as u8; 32]),
            )?,
            seed: [k as u8; 32],
        };
        let security = Arc::new(FederatedSecurityManager::new(options, MemoryKv::new())?);
        for (j, org) in orgs.iter().enumerate() {
            security.pin(org.clone(), roots[j].root_key(), TrustLevel::Full, now)?;
            let enc = EncryptionKeyCertificate::issue(
                &roots[j],
                org.clone(),
                encs[j].public_key(),
                1,
                now,
            )?;
            security.register_encryption_key(enc, now)?;
            let policy = AccessPolicy::new(
                org.clone(),
                1,
                vec![Rule::permit(
                    "administrators",
                    PrincipalPattern::Role(Role::Admin),
                    Operation::ALL,
                )?],
            )?;
            security.publish_policy(&SignedPolicy::sign(&policy, &roots[j])?, now)?;
        }
        for c in &certs {
            security.add_certificate(c.clone(), now)?;
        }
        let identity = NodeIdentity {
            keypair: NodeKeypair::from_secret_bytes(key.secret_bytes()),
            certificate: certs[k].clone(),
        };
        let store = RedbKv::open(dir.join(format!("node{k}.redb")))?;
        let spawn: Spawner = Arc::new(|task| {
            tokio::spawn(task);
        });
        let transport: Arc<dyn Transport> = transports[k].clone();
        let backend = PavedBackend::new(
            &identity,
            federation,
            store,
            transport.clone(),
            timer.clone(),
            spawn,
        );
        let system = paved_system(
            identity,
            federation,
            transport,
            security.clone(),
            backend.clone(),
            timer.clone(),
        );
        for c in certs.iter().take(known) {
            system.add_node(c.clone());
        }
        nodes.push(LocalNode {
            id: key.node_id(),
            org: orgs[o].clone(),
            system,
            security,
            backend,
        });
    }
    Ok(nodes)
}
