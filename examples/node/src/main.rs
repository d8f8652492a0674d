//! `llmkg-node`: a federation node as a process.
//!
//! ```text
//! llmkg-node org   --dir ORG --name acme                      an organization: root and encryption keys
//! llmkg-node init  --dir NODE --org ORG --listen 127.0.0.1:7001 [--federation NAME] [--admin 127.0.0.1:8001] [--decision-timeout 60]
//! llmkg-node trust --dir NODE OTHER_NODE/public.json ...     federate with other nodes (and their organizations)
//! llmkg-node run   --dir NODE                                 serve (prints "ready <node id>" when up)
//!
//! admin commands, sent to the running node over its local admin interface:
//! llmkg-node create --dir NODE --branch B --orgs acme,globex [--source FILE.nq [--graph IRI]] [--level internal]
//! llmkg-node import --dir NODE --branch B FILE.nq [--graph IRI]
//! llmkg-node write  --dir NODE --branch B --prefix urn:x:a --count 100
//! llmkg-node sync   --dir NODE --branch B
//! llmkg-node merge  --dir NODE --source S --target T
//! llmkg-node join   --dir NODE --branch B --node NODE_ID
//! llmkg-node leave  --dir NODE --branch B --node NODE_ID
//! llmkg-node submit --dir NODE --branch B --proposal HEX      relay a signed proposal as it is
//! llmkg-node status --dir NODE
//! llmkg-node prove  --dir NODE --from OLD_SIZE --to NEW_SIZE   consistency proof of the audit log
//! llmkg-node cosign --dir NODE --note CHECKPOINT [--proof H1,H2,...]   witness another node's checkpoint
//! llmkg-node shipped --dir NODE --branch B --commit ID         the commit as the replica ships it (hex)
//! llmkg-node open   --dir NODE --branch B --bytes HEX         open a shipped commit of a sealed branch
//! ```
//!
//! A branch created `--level confidential` (or `secret`) ships its commits sealed under the
//! federation's data key: `shipped` shows what travels, and `open` on a node of an
//! organization that left the branch before the commit was written fails ("no data key here
//! for epoch N").
//!
//! A node directory holds its key (`node.key`), its certificate and configuration
//! (`config.json`), what other nodes need to federate with it (`public.json`), the admin
//! interface's secret (`admin.token`) and its data (`data/`: one redb file for its branches,
//! one for its organization's audit log). The admin interface listens on loopback only and
//! answers only requests carrying the token: whoever can read the node directory administers
//! the node.
//!
//! Every node is also a witness of the other nodes' audit logs: `cosign` checks a checkpoint
//! signed by a trusted node and, after the first, a consistency proof from the last one it
//! cosigned for that log (`prove` on the log's node gives it), then returns its cosignature
//! (c2sp.org/tlog-cosignature, made with the node's key). It remembers the last checkpoint
//! per log in `data/witness.json` before answering, so a restarted witness still refuses a
//! log that rewrote its history.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::error::Error;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use llmkg_federation_core::consensus::{ConsensusProposal, Outcome};
use llmkg_federation_core::encoding::hex;
use llmkg_federation_core::federated::{
    BranchSource, FederatedBranchRequest, FederatedMergePolicy,
};
use llmkg_federation_core::rdf::{
    BlankNodeScope, Format, GraphName, GraphSelection, ImportOptions, read,
};
use llmkg_federation_core::security::{BranchRef, SecurityLevel, SecurityManager};
use llmkg_federation_core::system::{FederatedBranchingSystem, NodeIdentity, SystemConfig};
use llmkg_federation_core::{
    BranchName, ChangeSet, Clock, CommitId, FederationId, GraphState, NodeCertificate, NodeId,
    NodeKeypair, OrgId, OrgKeypair, RedbKv, Role, Signed, SignedCommit, SystemClock, Term,
    Timestamp, Transport, Triple,
};
use llmkg_governance::access::{AccessPolicy, PrincipalPattern, Rule};
use llmkg_governance::audit::LogSigner;
use llmkg_governance::audit::checkpoint::{LogVerifier, SignedNote};
use llmkg_governance::audit::witness::{Witness, WitnessError, WitnessKey};
use llmkg_governance::keys::{EncryptionKeyCertificate, OrgEncryptionKeypair};
use llmkg_governance::manager::{FederatedSecurityManager, GovernanceOptions, SignedPolicy};
use llmkg_governance::paved::{PavedBackend, Spawner};
use llmkg_governance::trust::TrustLevel;
use llmkg_transport::{TcpConfig, TcpTransport, TokioTimer, Trust};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// What other organizations need to know of one: its root, encryption key and policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct OrgInfo {
    name: String,
    root: String,
    enc_cert: String,
    policy: String,
    policy_signature: String,
}

/// What other nodes need to federate with one.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PublicInfo {
    node: String,
    addr: SocketAddr,
    certificate: String,
    org: OrgInfo,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Config {
    federation: String,
    listen: SocketAddr,
    admin: SocketAddr,
    me: PublicInfo,
    peers: Vec<PublicInfo>,
    /// How long a proposal of this node waits for its approvals, and how long an invited
    /// node waits for a creation to be decided before it drops the branch (seconds).
    #[serde(default = "default_decision_timeout")]
    decision_timeout_secs: u64,
}

fn default_decision_timeout() -> u64 {
    60
}

fn unhex(s: &str) -> Res<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return Err("not hexadecimal".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.into()))
        .collect()
}

fn unhex32(s: &str) -> Res<[u8; 32]> {
    unhex(s.trim())?.try_into().map_err(|_| "expected 32 bytes".into())
}

fn random32() -> [u8; 32] {
    rand::rng().random()
}

fn write_secret(path: &Path, bytes: &[u8]) -> Res<()> {
    fs::write(path, hex(bytes))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn now() -> Timestamp {
    SystemClock.now()
}

/// Parsed `--flag value` pairs and positional arguments.
struct Args {
    flags: BTreeMap<String, String>,
    rest: Vec<String>,
}

impl Args {
    fn parse(args: impl Iterator<Item = String>) -> Res<Self> {
        let (mut flags, mut rest) = (BTreeMap::new(), Vec::new());
        let mut args = args.peekable();
        while let Some(a) = args.next() {
            if let Some(name) = a.strip_prefix("--") {
                let value = args.next().ok_or_else(|| format!("--{name} needs a value"))?;
                flags.insert(name.to_string(), value);
            } else {
                rest.push(a);
            }
        }
        Ok(Self { flags, rest })
    }
    fn get(&self, name: &str) -> Res<&str> {
        self.flags
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("--{name} is required").into())
    }
    fn opt(&self, name: &str) -> Option<&str> {
        self.flags.get(name).map(String::as_str)
    }
    fn dir(&self) -> Res<PathBuf> {
        Ok(PathBuf::from(self.get("dir")?))
    }
}

fn main() {
    let mut argv = std::env::args().skip(1);
    let Some(command) = argv.next() else {
        eprintln!(
            "usage: llmkg-node <org|init|trust|run|create|import|write|sync|merge|join|leave|submit|status> --dir DIR ..."
        );
        std::process::exit(2);
    };
    let result = Args::parse(argv).and_then(|args| match command.as_str() {
        "org" => org(&args),
        "init" => init(&args),
        "trust" => trust(&args),
        "run" => run(&args),
        _ => admin_client(&command, &args),
    });
    if let Err(e) = result {
        eprintln!("llmkg-node {command}: {e}");
        std::process::exit(1);
    }
}

// -----------------------------------------------------------------------------------------
// Setup
// -----------------------------------------------------------------------------------------

fn org(args: &Args) -> Res<()> {
    let dir = args.dir()?;
    let name = OrgId::new(args.get("name")?)?;
    fs::create_dir_all(&dir)?;
    if dir.join("root.key").exists() {
        return Err(format!("{} already holds an organization", dir.display()).into());
    }
    let root = OrgKeypair::from_secret_bytes(random32());
    let enc = OrgEncryptionKeypair::from_secret_bytes(random32());
    write_secret(&dir.join("root.key"), &root.secret_bytes())?;
    write_secret(&dir.join("enc.key"), &enc.secret_bytes())?;
    fs::write(dir.join("name"), name.as_str())?;
    println!("organization {name}: root {}", hex(root.root_key().as_bytes()));
    Ok(())
}

fn org_info(org_dir: &Path) -> Res<(OrgId, OrgKeypair, OrgEncryptionKeypair, OrgInfo)> {
    let name = OrgId::new(fs::read_to_string(org_dir.join("name"))?.trim())?;
    let root =
        OrgKeypair::from_secret_bytes(unhex32(&fs::read_to_string(org_dir.join("root.key"))?)?);
    let enc = OrgEncryptionKeypair::from_secret_bytes(unhex32(&fs::read_to_string(
        org_dir.join("enc.key"),
    )?)?);
    let enc_cert =
        EncryptionKeyCertificate::issue(&root, name.clone(), enc.public_key(), 1, now())?;
    // The organization's policy: its administrators (every node this tool certifies) may do
    // everything on branches it takes part in.
    let policy = AccessPolicy::new(
        name.clone(),
        1,
        vec![Rule::permit(
            "administrators",
            PrincipalPattern::Role(Role::Admin),
            llmkg_federation_core::security::Operation::ALL,
        )?],
    )?;
    let signed = SignedPolicy::sign(&policy, &root)?;
    let info = OrgInfo {
        name: name.to_string(),
        root: hex(root.root_key().as_bytes()),
        enc_cert: hex(&postcard::to_allocvec(&enc_cert)?),
        policy: hex(signed.document()),
        policy_signature: hex(signed.signature()),
    };
    Ok((name, root, enc, info))
}

fn init(args: &Args) -> Res<()> {
    let dir = args.dir()?;
    let org_dir = PathBuf::from(args.get("org")?);
    let listen: SocketAddr = args.get("listen")?.parse()?;
    let admin: SocketAddr = match args.opt("admin") {
        Some(a) => a.parse()?,
        None => SocketAddr::from(([127, 0, 0, 1], listen.port().wrapping_add(1000))),
    };
    if !admin.ip().is_loopback() {
        return Err("the admin interface listens on loopback only".into());
    }
    let federation = args.opt("federation").unwrap_or("llmkg-federation").to_string();
    if dir.join("config.json").exists() {
        return Err(format!("{} is already a node", dir.display()).into());
    }
    fs::create_dir_all(dir.join("data"))?;
    let (name, root, enc, info) = org_info(&org_dir)?;
    let key = NodeKeypair::from_secret_bytes(random32());
    let start = now().as_micros();
    let year = 365 * 86_400_000_000i64;
    let serial = u64::from_le_bytes(random32()[..8].try_into()?) >> 1;
    let cert = root.certify(
        name.clone(),
        key.node_id(),
        [Role::Admin],
        Timestamp::from_micros(start - 3_600_000_000),
        Timestamp::from_micros(start + year),
        serial,
    )?;
    write_secret(&dir.join("node.key"), &key.secret_bytes())?;
    write_secret(&dir.join("enc.key"), &enc.secret_bytes())?;
    write_secret(&dir.join("admin.token"), &random32())?;
    let me = PublicInfo {
        node: hex(key.node_id().as_bytes()),
        addr: listen,
        certificate: hex(&cert.encode()),
        org: info,
    };
    let decision_timeout_secs = match args.opt("decision-timeout") {
        Some(t) => t.parse().map_err(|e| format!("--decision-timeout: {e}"))?,
        None => default_decision_timeout(),
    };
    if decision_timeout_secs == 0 {
        return Err("--decision-timeout must be at least 1 second".into());
    }
    let config = Config {
        federation,
        listen,
        admin,
        me: me.clone(),
        peers: Vec::new(),
        decision_timeout_secs,
    };
    fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    fs::write(dir.join("public.json"), serde_json::to_string_pretty(&me)?)?;
    println!("node {} of {name}: listens on {listen}, admin on {admin}", me.node);
    Ok(())
}

fn load(dir: &Path) -> Res<Config> {
    Ok(serde_json::from_str(&fs::read_to_string(dir.join("config.json"))?)?)
}

fn trust(args: &Args) -> Res<()> {
    let dir = args.dir()?;
    let mut config = load(&dir)?;
    for file in &args.rest {
        let info: PublicInfo = serde_json::from_str(&fs::read_to_string(file)?)?;
        if info.node == config.me.node {
            continue;
        }
        config.peers.retain(|p| p.node != info.node);
        println!("trusting {} of {} at {}", &info.node[..16], info.org.name, info.addr);
        config.peers.push(info);
    }
    fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    Ok(())
}

// -----------------------------------------------------------------------------------------
// Running
// -----------------------------------------------------------------------------------------

fn certificate(info: &PublicInfo) -> Res<NodeCertificate> {
    Ok(NodeCertificate::decode(&unhex(&info.certificate)?)?)
}

fn run(args: &Args) -> Res<()> {
    let dir = args.dir()?;
    let config = load(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(dir, config))
}

struct Node {
    system: FederatedBranchingSystem,
    security: Arc<FederatedSecurityManager<RedbKv>>,
    federation: FederationId,
    /// This node's witness of the other nodes' audit logs, and where it keeps what it saw.
    witness: std::sync::Mutex<Witness>,
    witness_origins: Vec<String>,
    witness_file: PathBuf,
}

/// The most bytes of one admin request (an import's triples travel in it).
const MAX_ADMIN_REQUEST: u64 = 256 << 20;

/// The origin of a node's audit log: its organization and the start of its id.
fn log_origin(org: &OrgId, node: &NodeId) -> String {
    format!("{org}.llmkg.example/audit/{}", &hex(node.as_bytes())[..16])
}

/// The witness of the logs of `peers`, restored from `file` (the last checkpoint cosigned
/// per log) if it exists.
fn open_witness(
    secret: &[u8; 32],
    me: &NodeCertificate,
    peers: &[NodeCertificate],
    file: &Path,
) -> Res<Witness> {
    let name = format!("{}.llmkg.example/witness/{}", me.org(), &hex(me.node().as_bytes())[..16]);
    let mut witness = Witness::new(WitnessKey::new(&name, SigningKey::from_bytes(secret))?);
    for peer in peers {
        let origin = log_origin(peer.org(), &peer.node());
        let key = VerifyingKey::from_bytes(peer.node().as_bytes())?;
        witness.add_log(&origin, LogVerifier::new(&origin, key)?);
    }
    if file.exists() {
        let seen: BTreeMap<String, String> = serde_json::from_str(&fs::read_to_string(file)?)?;
        for (origin, note) in seen {
            // A log no longer among the peers is forgotten with them.
            if let Err(e) = witness.restore(&origin, &SignedNote::parse(note.as_bytes())?)
                && !matches!(e, WitnessError::UnknownOrigin(_))
            {
                return Err(format!("{}: {origin}: {e}", file.display()).into());
            }
        }
    }
    Ok(witness)
}

/// Writes the witness's last checkpoint per log to `file`, durably (a new file renamed over
/// the old one).
fn save_witness(witness: &Witness, origins: &[String], file: &Path) -> Res<()> {
    let seen: BTreeMap<&String, String> =
        origins.iter().filter_map(|o| witness.latest(o).map(|note| (o, note.to_text()))).collect();
    let tmp = file.with_extension("json.tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(serde_json::to_string_pretty(&seen)?.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, file)?;
    if let Some(dir) = file.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

async fn serve(dir: PathBuf, config: Config) -> Res<()> {
    let federation = FederationId::from_name(&config.federation);
    let secret = unhex32(&fs::read_to_string(dir.join("node.key"))?)?;
    let token = fs::read_to_string(dir.join("admin.token"))?.trim().to_string();
    let my_cert = certificate(&config.me)?;
    let org = my_cert.org().clone();
    // The transport: Noise over TCP, only the configured peers.
    let mut tcp = TcpConfig::new(NodeKeypair::from_secret_bytes(secret), federation);
    tcp.listen_addr = config.listen;
    tcp.max_message_len = 64 << 20;
    let peers: Vec<NodeId> =
        config.peers.iter().map(|p| certificate(p).map(|c| c.node())).collect::<Res<_>>()?;
    tcp.trust = Trust::AllowList(peers.iter().copied().collect());
    let transport = Arc::new(TcpTransport::bind(tcp).await?);
    for (p, id) in config.peers.iter().zip(&peers) {
        transport.add_peer(*id, p.addr)?;
    }
    // The security plane: this organization's view, its audit log on disk.
    let enc = OrgEncryptionKeypair::from_secret_bytes(unhex32(&fs::read_to_string(
        dir.join("enc.key"),
    )?)?);
    let log_key = ed25519_dalek::SigningKey::from_bytes(&secret);
    let options = GovernanceOptions {
        org: org.clone(),
        signer: Arc::new(NodeKeypair::from_secret_bytes(secret)),
        encryption: enc,
        log_signer: LogSigner::new(
            &format!("{org}.llmkg.example/audit/{}", &config.me.node[..16]),
            log_key,
        )?,
        seed: random32(),
    };
    let audit = RedbKv::open(dir.join("data/audit.redb"))?;
    let security = Arc::new(FederatedSecurityManager::new(options, audit)?);
    let mut orgs: BTreeMap<String, OrgInfo> = BTreeMap::new();
    for p in std::iter::once(&config.me).chain(&config.peers) {
        orgs.insert(p.org.name.clone(), p.org.clone());
    }
    let t = now();
    for info in orgs.values() {
        let id = OrgId::new(info.name.as_str())?;
        let root = llmkg_federation_core::OrgRootKey::from_bytes(unhex32(&info.root)?)
            .map_err(|_| "an invalid root key")?;
        security.pin(id, root, TrustLevel::Full, t)?;
        let enc_cert: EncryptionKeyCertificate = postcard::from_bytes(&unhex(&info.enc_cert)?)?;
        security.register_encryption_key(enc_cert, t)?;
        let policy = SignedPolicy::from_parts(
            unhex(&info.policy)?,
            unhex(&info.policy_signature)?.try_into().map_err(|_| "signature")?,
        );
        security.publish_policy(&policy, t)?;
    }
    for p in std::iter::once(&config.me).chain(&config.peers) {
        security.add_certificate(certificate(p)?, t)?;
    }
    // The planes composed on the paved path, stored in one redb file.
    let store = RedbKv::open(dir.join("data/node.redb"))?;
    let timer = Arc::new(TokioTimer::new());
    let identity = NodeIdentity {
        keypair: NodeKeypair::from_secret_bytes(secret),
        certificate: my_cert.clone(),
    };
    let spawn: Spawner = Arc::new(|task| {
        tokio::spawn(task);
    });
    let transport: Arc<dyn Transport> = transport;
    let backend =
        PavedBackend::new(&identity, federation, store, transport.clone(), timer.clone(), spawn);
    let mut system_config = SystemConfig::default();
    system_config.decision_timeout = Duration::from_secs(config.decision_timeout_secs);
    let system = FederatedBranchingSystem::start(
        identity,
        federation,
        transport,
        security.clone(),
        backend,
        Arc::new(SystemClock),
        timer,
        system_config,
    );
    for p in &config.peers {
        system.add_node(certificate(p)?);
    }
    let restored = system.restore()?;
    let peer_certs: Vec<NodeCertificate> =
        config.peers.iter().map(certificate).collect::<Res<_>>()?;
    let witness_file = dir.join("data/witness.json");
    let witness = open_witness(&secret, &my_cert, &peer_certs, &witness_file)?;
    let node = Arc::new(Node {
        system,
        security,
        federation,
        witness: std::sync::Mutex::new(witness),
        witness_origins: peer_certs.iter().map(|c| log_origin(c.org(), &c.node())).collect(),
        witness_file,
    });
    let listener = tokio::net::TcpListener::bind(config.admin).await?;
    println!("ready {} restored {}", config.me.node, restored.len());
    std::io::stdout().flush()?;
    loop {
        let (stream, peer) = listener.accept().await?;
        if !peer.ip().is_loopback() {
            continue;
        }
        let (node, token) = (Arc::clone(&node), token.clone());
        tokio::spawn(async move {
            let _ = admin_connection(stream, node, token).await;
        });
    }
}

async fn admin_connection(
    stream: tokio::net::TcpStream,
    node: Arc<Node>,
    token: String,
) -> Res<()> {
    use tokio::io::AsyncReadExt;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (read, mut write) = stream.into_split();
    // One request per connection, at most MAX_ADMIN_REQUEST bytes (read before the token is
    // checked, so bounded for anyone who can connect).
    let mut lines = tokio::io::BufReader::new(read.take(MAX_ADMIN_REQUEST)).lines();
    let Some(line) = lines.next_line().await? else { return Ok(()) };
    let request: Value = serde_json::from_str(&line)?;
    let reply = if request.get("token").and_then(Value::as_str) != Some(token.as_str()) {
        json!({"error": "not authorized"})
    } else {
        match admin(&node, &request).await {
            Ok(v) => v,
            Err(e) => json!({"error": e.to_string()}),
        }
    };
    write.write_all(format!("{reply}\n").as_bytes()).await?;
    Ok(())
}

fn branch_arg(request: &Value, key: &str) -> Res<BranchName> {
    Ok(BranchName::new(
        request.get(key).and_then(Value::as_str).ok_or_else(|| format!("{key} is required"))?,
    )?)
}

fn triples_arg(request: &Value) -> Res<Vec<Triple>> {
    let Some(list) = request.get("triples").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    let text: String = list.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n");
    Ok(read(text.as_bytes(), Format::NTriples, ImportOptions::new())?.into_triples())
}

async fn admin(node: &Node, request: &Value) -> Res<Value> {
    let system = &node.system;
    let cmd = request.get("cmd").and_then(Value::as_str).unwrap_or("");
    match cmd {
        "status" => {
            let mut branches = Vec::new();
            for b in system.branches() {
                let status = system.replica(&b.branch)?.status().await?;
                let registry = system.registry(&b.branch)?;
                branches.push(json!({
                    "branch": b.branch.as_str(),
                    "organizations": b.organizations.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "members": b.members.iter().map(|m| hex(m.node.as_bytes())).collect::<Vec<_>>(),
                    "state_root": status.state_root.to_string(),
                    "commits": status.commits,
                    "triples": status.triples,
                    "shallow": status.shallow,
                    "base_commits": status.base_commits,
                    "registry": hex(&registry.digest()),
                    "applied": registry.applied(),
                }));
            }
            let checkpoint = node.security.checkpoint()?;
            Ok(json!({
                "node": hex(system.node_id().as_bytes()),
                "org": system.org().to_string(),
                "branches": branches,
                "audit_size": node.security.audit_size(),
                "checkpoint": checkpoint.to_text(),
            }))
        }
        "create" => {
            let branch = branch_arg(request, "branch")?;
            let orgs: Vec<OrgId> = request
                .get("orgs")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter().filter_map(Value::as_str).map(OrgId::new).collect::<Result<_, _>>()
                })
                .transpose()?
                .unwrap_or_default();
            let triples = triples_arg(request)?;
            let mut state = GraphState::new();
            for t in &triples {
                state.insert(t)?;
            }
            let source = if triples.is_empty() {
                BranchSource::Empty
            } else {
                BranchSource::of_state(
                    request.get("from").and_then(Value::as_str).unwrap_or("import"),
                    &mut state,
                )
            };
            let level = match request.get("level").and_then(Value::as_str).unwrap_or("internal") {
                "public" => SecurityLevel::Public,
                "internal" => SecurityLevel::Internal,
                "confidential" => SecurityLevel::Confidential,
                "secret" => SecurityLevel::Secret,
                other => return Err(format!("unknown level {other}").into()),
            };
            let request =
                FederatedBranchRequest::new(node.federation, branch, system.node_id(), orgs)
                    .with_source(source)
                    .with_level(level);
            let b = system.create_federated_branch(request, triples).await?;
            Ok(
                json!({"branch": b.branch.as_str(), "group": b.group.to_string(), "members": b.members.len()}),
            )
        }
        "write" => {
            let branch = branch_arg(request, "branch")?;
            let triples = triples_arg(request)?;
            let mut ids = Vec::new();
            for chunk in triples.chunks(20_000) {
                let id = system
                    .write(&branch, ChangeSet::adding(chunk.iter().cloned()), "write")
                    .await?;
                ids.push(id.to_string());
            }
            Ok(json!({"written": triples.len(), "commits": ids.len(), "ids": ids}))
        }
        "sync" => {
            let branch = branch_arg(request, "branch")?;
            let r = system.converge(&branch).await?;
            Ok(json!({
                "state_root": r.state_root.to_string(),
                "converged": r.failures.is_empty(),
                "nodes": r.nodes.len(),
                "commits_received": r.commits_received,
                "commits_sent": r.commits_sent,
            }))
        }
        "merge" => {
            let source = branch_arg(request, "source")?;
            let target = branch_arg(request, "target")?;
            let r = system
                .merge_federated_branches(&source, &target, FederatedMergePolicy::default())
                .await?;
            Ok(json!({
                "proposal": r.proposal.to_string(),
                "index": r.index,
                "approved_by": r.approved_by.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "added": r.added,
                "removed": r.removed,
                "state_root": r.state_root.to_string(),
            }))
        }
        "join" | "leave" => {
            let branch = branch_arg(request, "branch")?;
            let id = NodeId::from_bytes(unhex32(
                request.get("node").and_then(Value::as_str).ok_or("node is required")?,
            )?)?;
            let op = if cmd == "join" {
                system.join(&branch, id).await?
            } else {
                system.leave(&branch, id).await?
            };
            Ok(json!({"proposal": op.proposal.to_string(), "index": op.index}))
        }
        "submit" => {
            let branch = branch_arg(request, "branch")?;
            let bytes = unhex(
                request.get("proposal").and_then(Value::as_str).ok_or("proposal is required")?,
            )?;
            let proposal = Signed::<ConsensusProposal>::decode(&bytes, &node.federation)?;
            let outcome = system.submit(&branch, proposal).await?;
            Ok(match outcome {
                Outcome::Approved => json!({"outcome": "approved"}),
                Outcome::Pending { .. } => json!({"outcome": "pending"}),
                Outcome::Rejected { reason } => json!({"outcome": "rejected", "reason": reason}),
            })
        }
        "prove" => {
            let size = |key: &str| {
                request
                    .get(key)
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{key} is required"))?
                    .parse::<u64>()
                    .map_err(|e| format!("{key}: {e}"))
            };
            let (from, to) = (size("from")?, size("to")?);
            let proof = node.security.with_audit(|log| log.consistency_proof(from, to))?;
            Ok(
                json!({"from": from, "to": to, "proof": proof.iter().map(|h| hex(h)).collect::<Vec<_>>()}),
            )
        }
        "cosign" => {
            let text = request.get("note").and_then(Value::as_str).ok_or("note is required")?;
            let note = SignedNote::parse(text.as_bytes())?;
            let proof: Vec<[u8; 32]> = match request.get("proof").and_then(Value::as_str) {
                None | Some("") => Vec::new(),
                Some(list) => list.split(',').map(unhex32).collect::<Res<_>>()?,
            };
            let mut witness = node.witness.lock().map_err(|_| "the witness is poisoned")?;
            let micros = now().as_micros().max(0);
            let line = witness.cosign(&note, &proof, micros as u64 / 1_000_000)?;
            // Remembered on disk before anyone sees the cosignature.
            save_witness(&witness, &node.witness_origins, &node.witness_file)?;
            Ok(
                json!({"cosignature": line.to_line().trim_end(), "witness": witness.verifier().to_vkey()}),
            )
        }
        "shipped" => {
            let branch = branch_arg(request, "branch")?;
            let id: CommitId = request
                .get("commit")
                .and_then(Value::as_str)
                .ok_or("commit is required")?
                .parse()?;
            let bytes = system
                .replica(&branch)?
                .shipped(id)
                .await?
                .ok_or_else(|| format!("this replica does not hold commit {id}"))?;
            let sealed = node
                .security
                .envelope_seal(&BranchRef { federation: node.federation, branch })?
                .is_some();
            Ok(json!({"commit": id.to_string(), "sealed": sealed, "bytes": hex(&bytes)}))
        }
        "open" => {
            let branch = branch_arg(request, "branch")?;
            let bytes =
                unhex(request.get("bytes").and_then(Value::as_str).ok_or("bytes is required")?)?;
            let seal = node
                .security
                .envelope_seal(&BranchRef { federation: node.federation, branch: branch.clone() })?
                .ok_or_else(|| format!("branch {branch} is not sealed"))?;
            let envelope = seal.open(&bytes, now())?;
            let commit = SignedCommit::decode(&envelope, None)?;
            Ok(json!({
                "commit": commit.id().to_string(),
                "author": hex(commit.commit().author().as_bytes()),
                "added": commit.commit().changes().added().len(),
            }))
        }
        other => Err(format!("unknown command {other:?}").into()),
    }
}

// -----------------------------------------------------------------------------------------
// Admin client
// -----------------------------------------------------------------------------------------

/// Reads triples from an RDF file (N-Quads, N-Triples, Turtle, by extension), the named
/// graph `graph` only if given, as N-Triples lines; blank nodes are scoped by the file's name.
fn rdf_lines(file: &str, graph: Option<&str>) -> Res<Vec<String>> {
    let ext = Path::new(file).extension().and_then(|e| e.to_str()).unwrap_or("");
    let format = Format::from_extension(ext).ok_or_else(|| format!("unknown RDF format .{ext}"))?;
    // Blank nodes are the document's own: two files' `_:b0` are two nodes.
    let document = Path::new(file).file_name().and_then(|n| n.to_str()).unwrap_or(file);
    let mut options = ImportOptions::new().blank_nodes(BlankNodeScope::Named(document.to_string()));
    if let Some(g) = graph {
        options = options.graphs(GraphSelection::Only(GraphName::named(g)?));
    }
    let reader = BufReader::with_capacity(1 << 16, fs::File::open(file)?);
    let triples = read(reader, format, options)?.into_triples();
    Ok(triples
        .iter()
        .map(|t| format!("{} {} {} .", term(t.subject()), term(t.predicate()), term(t.object())))
        .collect())
}

fn term(t: &Term) -> String {
    t.to_string()
}

fn admin_client(command: &str, args: &Args) -> Res<()> {
    let dir = args.dir()?;
    let config = load(&dir)?;
    let token = fs::read_to_string(dir.join("admin.token"))?.trim().to_string();
    let mut request = json!({"cmd": command, "token": token});
    for (k, v) in &args.flags {
        if k != "dir" && k != "orgs" && k != "source" {
            request[k] = json!(v);
        }
    }
    if let Some(orgs) = args.opt("orgs") {
        request["orgs"] = json!(orgs.split(',').collect::<Vec<_>>());
    }
    match command {
        "create" => {
            if let Some(file) = args.opt("source") {
                request["triples"] = json!(rdf_lines(file, args.opt("graph"))?);
                request["from"] = json!(file);
            }
        }
        "merge" => {
            request["source"] = json!(args.get("source")?);
        }
        "import" => {
            let file = args.rest.first().ok_or("import needs a file")?;
            request["cmd"] = json!("write");
            request["triples"] = json!(rdf_lines(file, args.opt("graph"))?);
        }
        "write" => {
            let prefix = args.get("prefix")?;
            let count: usize = args.get("count")?.parse()?;
            let lines: Vec<String> =
                (0..count).map(|i| format!("<{prefix}/s{i}> <{prefix}/p> \"{i}\" .")).collect();
            request["triples"] = json!(lines);
        }
        _ => {}
    }
    let mut stream = std::net::TcpStream::connect(config.admin)
        .map_err(|e| format!("cannot reach the node's admin interface at {}: {e}", config.admin))?;
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let reply: Value = serde_json::from_str(&line)?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    if let Some(e) = reply.get("error") {
        return Err(e.as_str().unwrap_or("failed").to_string().into());
    }
    Ok(())
}
