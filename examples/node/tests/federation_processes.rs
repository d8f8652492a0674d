#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Four organizations, five `llmkg-node` processes over TCP + Noise, each durable on redb,
//! sharing published vocabularies (the real N-Quads files the data script fetches).
//!
//! 1. `org` ×4 (acme, globex, initech, umbrella), `init` ×5 (acme runs two nodes), every node
//!    `trust`s every other, all five `run`.
//! 2. The federated branch `vocab` of all four organizations is created from PROV-O; then
//!    every node writes at once (four vocabularies imported, synthetic triples written).
//! 3. `sync`: every replica reports the same state root, the one computed here from the
//!    acknowledged writes alone.
//! 4. The second branch `curated` (globex, initech), confidential (its commits travel sealed
//!    under the federation's data key), is created from SOSA and written to.
//!    Both branches are left to age past their creations' decision deadline (the nodes are
//!    initialized with `--decision-timeout 15`), as branches are when nodes restart or join. Then initech-1 is killed with
//!    SIGKILL while globex-1's import of RiC-O spreads, and a `sync` started then runs across
//!    the outage; writes go on on both branches; initech-1 restarts on its data (`restored 2`), the sync that ran across the
//!    kill converges, and both branches catch up.
//! 5. `curated` is merged into `vocab` with the approval of all four organizations.
//! 6. Forged and stale consents, signed here with the nodes' own keys, are relayed with
//!    `submit`: a consent to the decided merge, one with wrong heads, one carrying another
//!    node's certificate, one naming another organization than its certificate's, one for
//!    another group, one signed for another federation, and replays. Every one is refused, a
//!    well-formed consent is counted (the control), and every member's registry digest is the
//!    same afterwards.
//! 7. acme-2 is taken out of `vocab` by acme-1; it stops hosting it, a later write does not
//!    reach it, and it cannot write there.
//! 8. umbrella-1 joins `curated` (a new organization for that branch: the key rotates to
//!    include it), catches up from a member's snapshot (the history before it known by id
//!    only), and its write reaches the others. Then it leaves (the key rotates without
//!    umbrella): a commit globex-1 writes after is shipped sealed, initech-1 opens it,
//!    umbrella-1 cannot ("no data key here for epoch …"). acme-2 joins `vocab` again.
//! 9. Every replica of each branch holds exactly the acknowledged writes (state roots and
//!    triple counts computed here with `GraphState` from the same files); every node's audit
//!    checkpoint is a signed note verified with the node's key, growing over the run; after
//!    the processes are stopped, each node's audit log on disk proves every checkpoint seen
//!    during the run (also the one taken just before the SIGKILL) to be a prefix of it.
//!
//! Throughout (after 3, 6 and 9), every node's checkpoint is cosigned by the nodes of the
//! other organizations (`prove` on the log's node, `cosign` on the witness's, which checks the
//! consistency proof from the last checkpoint it cosigned, kept across initech-1's SIGKILL);
//! a forked checkpoint and a rolled-back one, signed here with globex-1's key, are refused;
//! at the end every cosigned checkpoint carries a valid cosignature of its witness's node key
//! and is a prefix of its log on disk.
//!
//! Defects the scenario can run through are collected where they are checked (each marked
//! `BUG:`) and fail the test at the end, after everything else was exercised.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use llmkg_federation_core::consensus::{
    ConsensusProposal, GroupId, PolicyUpdate, ProposalId, ProposalKind,
};
use llmkg_federation_core::encoding::hex;
use llmkg_federation_core::federated::{Consent, ConsentVerdict};
use llmkg_federation_core::rdf::{
    BlankNodeScope, Format, GraphName, GraphSelection, ImportOptions, read,
};
use llmkg_federation_core::{
    Clock, CommitId, FederationId, GraphState, NodeCertificate, NodeKeypair, OrgId, RedbKv, Signed,
    SystemClock, Term, Timestamp, Triple,
};
use llmkg_governance::audit::LogSigner;
use llmkg_governance::audit::checkpoint::{Checkpoint, LogVerifier, NoteSignature, SignedNote};
use llmkg_governance::audit::log::AuditLog;
use llmkg_governance::audit::merkle::verify_consistency;
use llmkg_governance::audit::witness::CosignatureVerifier;
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_llmkg-node");
const ONTOLOGIES: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/rdf-vocabularies/package/ontologies");
const FEDERATION: &str = "llmkg-process-test";
const VOCAB: &str = "vocab";
const CURATED: &str = "curated";
/// How old the branches are when a node restarts or joins: past the creation's decision
/// deadline, plus a margin.
const BRANCH_AGE: Duration = Duration::from_secs(DECISION_TIMEOUT_SECS + 3);

/// The nodes' decision deadline (`init --decision-timeout`): shorter than the default 60 s so
/// that the branches age past it sooner.
const DECISION_TIMEOUT_SECS: u64 = 15;

/// (label, organization) of the five nodes; acme runs two.
const NODES: [(&str, &str); 5] = [
    ("acme-1", "acme"),
    ("acme-2", "acme"),
    ("globex-1", "globex"),
    ("initech-1", "initech"),
    ("umbrella-1", "umbrella"),
];
const ORGS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];
const ACME1: usize = 0;
const ACME2: usize = 1;
const GLOBEX: usize = 2;
const INITECH: usize = 3;
const UMBRELLA: usize = 4;

// -----------------------------------------------------------------------------------------
// The expected state: every acknowledged write, computed here from the same inputs
// -----------------------------------------------------------------------------------------

/// One acknowledged write: what it was and its triples, read as the node reads them and,
/// for the blank-node check, with the document's blank nodes scoped to the document.
#[derive(Clone)]
struct Acked {
    what: String,
    triples: Vec<Triple>,
    scoped: Vec<Triple>,
}

#[derive(Default)]
struct Model {
    branches: BTreeMap<&'static str, Vec<Acked>>,
}

impl Model {
    fn ack(&mut self, branch: &'static str, write: Acked) {
        self.branches.entry(branch).or_default().push(write);
    }

    /// The state root (as the nodes print it) and size of the union of `branch`'s writes.
    fn expected(&self, branch: &str) -> (String, u64) {
        let mut state = GraphState::new();
        for w in self.branches.get(branch).into_iter().flatten() {
            for t in &w.triples {
                state.insert(t).unwrap();
            }
        }
        (state.state_root().to_string(), state.len() as u64)
    }

    /// The size of the union when each document's blank nodes are its own.
    fn expected_scoped_len(&self, branch: &str) -> u64 {
        let all: BTreeSet<&Triple> =
            self.branches.get(branch).into_iter().flatten().flat_map(|w| &w.scoped).collect();
        all.len() as u64
    }
}

fn ontology(file: &str) -> String {
    format!("{ONTOLOGIES}/{file}")
}

/// A vocabulary file's triples as `llmkg-node` reads them (all graphs, or `graph`), and
/// with its blank nodes scoped to the file.
fn vocabulary(file: &str, graph: Option<&str>) -> Acked {
    let parse = |scope: Option<&str>| {
        let mut options = ImportOptions::new();
        if let Some(g) = graph {
            options = options.graphs(GraphSelection::Only(GraphName::named(g).unwrap()));
        }
        if let Some(s) = scope {
            options = options.blank_nodes(BlankNodeScope::Named(s.to_string()));
        }
        let reader = BufReader::new(fs::File::open(ontology(file)).unwrap());
        read(reader, Format::NQuads, options).unwrap().into_triples()
    };
    // The node scopes a document's blank nodes by its file name; so does the model.
    Acked { what: file.to_string(), triples: parse(Some(file)), scoped: parse(Some(file)) }
}

/// The triples `llmkg-node write --prefix P --count N` writes.
fn synthetic(prefix: &str, count: usize) -> Acked {
    let triples: Vec<Triple> = (0..count)
        .map(|i| {
            Triple::new(
                Term::iri(format!("{prefix}/s{i}")).unwrap(),
                Term::iri(format!("{prefix}/p")).unwrap(),
                Term::string(i.to_string()).unwrap(),
            )
            .unwrap()
        })
        .collect();
    Acked { what: format!("{prefix} x{count}"), scoped: triples.clone(), triples }
}

fn blank_labels(triples: &[Triple]) -> BTreeSet<String> {
    triples
        .iter()
        .flat_map(|t| [t.subject().to_string(), t.object().to_string()])
        .filter(|s| s.starts_with("_:"))
        .collect()
}

// -----------------------------------------------------------------------------------------
// The processes
// -----------------------------------------------------------------------------------------

struct Node {
    label: &'static str,
    org: &'static str,
    dir: PathBuf,
    id: String,
    child: Option<Child>,
}

/// An admin command running in the background; killed if still running when dropped.
struct Background(Option<Child>);

impl Background {
    fn running(&mut self) -> bool {
        self.0.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    fn finish(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cluster {
    nodes: Vec<Node>,
    started: Instant,
    last_step: Instant,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    /// Every node process is killed on every exit path (before the directory goes).
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(c) = n.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim();
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn setup(exe_args: &[&str]) {
    let out = Command::new(EXE).args(exe_args).output().unwrap();
    assert!(
        out.status.success(),
        "llmkg-node {exe_args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    fn step(&mut self, what: &str) {
        let now = Instant::now();
        eprintln!(
            "[{:6.1}s] (+{:5.1}s) {what}",
            now.duration_since(self.started).as_secs_f64(),
            now.duration_since(self.last_step).as_secs_f64()
        );
        self.last_step = now;
    }

    fn dir(&self, i: usize) -> &Path {
        &self.nodes[i].dir
    }

    fn log_tail(&self, i: usize) -> String {
        let text = fs::read_to_string(self.dir(i).join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Starts node `i` (`run`) and waits for `ready <id> restored <n>`; returns `n`.
    fn start(&mut self, i: usize) -> u64 {
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir(i).join("stderr.log"))
            .unwrap();
        let mut child = Command::new(EXE)
            .arg("run")
            .arg("--dir")
            .arg(self.dir(i))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        self.nodes[i].child = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            panic!(
                "{} printed no ready line within 60 s; its log:\n{}",
                self.nodes[i].label,
                self.log_tail(i)
            )
        });
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["ready", id, "restored", n] => {
                assert_eq!(*id, self.nodes[i].id, "{} is another node", self.nodes[i].label);
                n.parse().unwrap()
            }
            _ => panic!("{}: unexpected first line {line:?}", self.nodes[i].label),
        }
    }

    /// SIGKILLs node `i`.
    fn kill(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().expect("the node runs");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn command(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new(EXE);
        c.arg(args[0]).arg("--dir").arg(self.dir(i)).args(&args[1..]);
        c
    }

    /// An admin command at node `i`: its JSON reply, or the error it printed.
    fn admin(&self, i: usize, args: &[&str]) -> Result<Value, String> {
        let out = self.command(i, args).output().unwrap();
        parse_reply(&out)
    }

    /// An admin command that must succeed.
    fn ok(&self, i: usize, args: &[&str]) -> Value {
        self.admin(i, args).unwrap_or_else(|e| {
            panic!("{}: {args:?} failed: {e}\nits log:\n{}", self.nodes[i].label, self.log_tail(i))
        })
    }

    fn background(&self, i: usize, args: &[&str]) -> Background {
        let child =
            self.command(i, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        Background(Some(child))
    }

    fn status(&self, i: usize) -> Value {
        self.ok(i, &["status"])
    }

    fn branch_status(&self, i: usize, branch: &str) -> Option<Value> {
        branch_of(&self.status(i), branch)
    }

    /// Polls until every node in `nodes` hosts `branch` with the same state root and
    /// registry digest; returns their common (state root, triples, registry digest).
    fn await_agreement(
        &self,
        branch: &str,
        nodes: &[usize],
        within: Duration,
    ) -> (String, u64, String) {
        let deadline = Instant::now() + within;
        loop {
            let seen: Vec<Option<Value>> =
                nodes.iter().map(|&i| self.branch_status(i, branch)).collect();
            let keys: Vec<Option<(String, u64, String)>> = seen
                .iter()
                .map(|s| {
                    s.as_ref().map(|s| {
                        (
                            s["state_root"].as_str().unwrap().to_string(),
                            s["triples"].as_u64().unwrap(),
                            s["registry"].as_str().unwrap().to_string(),
                        )
                    })
                })
                .collect();
            if keys.iter().all(|k| k.is_some() && *k == keys[0]) {
                return keys[0].clone().unwrap();
            }
            if Instant::now() > deadline {
                let report: Vec<String> = nodes
                    .iter()
                    .zip(&seen)
                    .map(|(&i, s)| format!("{}: {s:?}", self.nodes[i].label))
                    .collect();
                panic!("{branch}: no agreement within {within:?}:\n{}", report.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Checks that `branch` on each of `nodes` holds exactly the acknowledged writes.
    fn assert_holds(
        &self,
        model: &Model,
        branch: &str,
        nodes: &[usize],
        within: Duration,
    ) -> String {
        let (root, triples, registry) = self.await_agreement(branch, nodes, within);
        let (expected_root, expected_len) = model.expected(branch);
        assert_eq!(
            (root.as_str(), triples),
            (expected_root.as_str(), expected_len),
            "{branch}: the replicas agree, but not on the acknowledged writes"
        );
        registry
    }

    /// Members of `branch` as node `i` sees them, as indexes.
    fn members(&self, i: usize, branch: &str) -> Vec<usize> {
        let b = self.branch_status(i, branch).expect("hosted");
        let ids: BTreeSet<&str> =
            b["members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
        (0..self.nodes.len()).filter(|&n| ids.contains(self.nodes[n].id.as_str())).collect()
    }

    fn sync(&self, i: usize, branch: &str, model: &Model) {
        let reply = self.ok(i, &["sync", "--branch", branch]);
        assert_eq!(
            reply["converged"],
            Value::Bool(true),
            "{branch} at {}: {reply}",
            self.nodes[i].label
        );
        assert_eq!(
            reply["state_root"].as_str().unwrap(),
            model.expected(branch).0,
            "{branch}: sync at {} converged on another state than the acknowledged writes",
            self.nodes[i].label
        );
    }

    // --- what a node's directory holds: its key, certificate and federation ------------

    fn config(&self, i: usize) -> Value {
        serde_json::from_str(&fs::read_to_string(self.dir(i).join("config.json")).unwrap()).unwrap()
    }

    fn secret(&self, i: usize) -> [u8; 32] {
        unhex(&fs::read_to_string(self.dir(i).join("node.key")).unwrap()).try_into().unwrap()
    }

    fn keypair(&self, i: usize) -> NodeKeypair {
        NodeKeypair::from_secret_bytes(self.secret(i))
    }

    fn certificate(&self, i: usize) -> NodeCertificate {
        let hex = self.config(i)["me"]["certificate"].as_str().unwrap().to_string();
        NodeCertificate::decode(&unhex(&hex)).unwrap()
    }

    fn federation(&self, i: usize) -> FederationId {
        FederationId::from_name(self.config(i)["federation"].as_str().unwrap())
    }

    /// Verifies node `i`'s checkpoint with the node's key; returns it.
    fn checkpoint(&self, i: usize, status: &Value) -> Checkpoint {
        let text = status["checkpoint"].as_str().unwrap();
        let note = SignedNote::parse(text.as_bytes())
            .unwrap_or_else(|e| panic!("{}: checkpoint {text:?}: {e}", self.nodes[i].label));
        assert_eq!(note.signatures().len(), 1, "{}: one signature", self.nodes[i].label);
        let name = note.signatures()[0].name().to_string();
        let key = ed25519_dalek::SigningKey::from_bytes(&self.secret(i)).verifying_key();
        let verifier = LogVerifier::new(&name, key).unwrap();
        let checkpoint = verifier
            .verify_origin(&note, &name)
            .unwrap_or_else(|e| panic!("{}: checkpoint does not verify: {e}", self.nodes[i].label));
        assert!(name.contains(self.nodes[i].org), "{name}: the log of {}", self.nodes[i].org);
        assert_eq!(
            Some(checkpoint.size()),
            status["audit_size"].as_u64(),
            "{}: the checkpoint is of the audit log's size",
            self.nodes[i].label
        );
        checkpoint
    }

    /// Every node's current checkpoint is witnessed by every node of the other organizations:
    /// the log's node proves it consistent with the last one that witness cosigned, the
    /// witness cosigns. Each cosignature is verified with the witness's node key and kept.
    fn cosign_round(&self, cosigned: &mut Vec<Cosigned>) {
        for i in 0..self.nodes.len() {
            let status = self.status(i);
            let size = self.checkpoint(i, &status).size();
            let text = status["checkpoint"].as_str().unwrap();
            for j in (0..self.nodes.len()).filter(|&j| self.nodes[j].org != self.nodes[i].org) {
                let last = cosigned.iter().rfind(|w| w.log == i && w.witness == j);
                let proof = match last {
                    Some(w) => {
                        let (from, to) = (w.size.to_string(), size.to_string());
                        let reply = self.ok(i, &["prove", "--from", &from, "--to", &to]);
                        let hashes: Vec<&str> = reply["proof"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|h| h.as_str().unwrap())
                            .collect();
                        hashes.join(",")
                    }
                    None => String::new(),
                };
                let reply = self.ok(j, &["cosign", "--note", text, "--proof", &proof]);
                let line = NoteSignature::parse_line(reply["cosignature"].as_str().unwrap())
                    .unwrap_or_else(|e| panic!("{}: a cosignature line: {e}", self.nodes[j].label));
                let verifier = self.witness_verifier(j);
                let mut note = SignedNote::parse(text.as_bytes()).unwrap();
                assert!(
                    verifier.verify_line(note.body(), &line).is_some(),
                    "{}'s cosignature of {}'s checkpoint does not verify with its node key",
                    self.nodes[j].label,
                    self.nodes[i].label
                );
                note.add_signature(line);
                cosigned.push(Cosigned { log: i, witness: j, size, note });
            }
        }
    }

    /// Node `j`'s witness verifier, from its node key and the witness name `llmkg-node` gives.
    fn witness_verifier(&self, j: usize) -> CosignatureVerifier {
        let node = &self.nodes[j];
        let name = format!("{}.llmkg.example/witness/{}", node.org, &node.id[..16]);
        let key = ed25519_dalek::SigningKey::from_bytes(&self.secret(j)).verifying_key();
        CosignatureVerifier::new(&name, key).unwrap()
    }
}

/// A checkpoint of node `log`'s audit log, cosigned by node `witness` (of another
/// organization).
struct Cosigned {
    log: usize,
    witness: usize,
    size: u64,
    note: SignedNote,
}

fn parse_reply(out: &Output) -> Result<Value, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    let reply: Option<Value> = serde_json::from_str(&text).ok();
    match (out.status.success(), reply) {
        (true, Some(v)) if v.get("error").is_none() => Ok(v),
        (true, other) => panic!("a successful command printed {other:?} ({text:?})"),
        (false, Some(v)) => Err(v["error"].as_str().unwrap_or("?").to_string()),
        (false, None) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

fn branch_of(status: &Value, branch: &str) -> Option<Value> {
    status["branches"].as_array().unwrap().iter().find(|b| b["branch"] == branch).cloned()
}

fn now_plus(secs: i64) -> Timestamp {
    Timestamp::from_micros(SystemClock.now().as_micros() + secs * 1_000_000)
}

/// A proposal of `kind` for `group`, signed with `keypair` for `federation`, hex-encoded as
/// `submit --proposal` takes it.
fn signed_hex(
    keypair: &NodeKeypair,
    federation: &FederationId,
    group: GroupId,
    kind: ProposalKind,
    nonce: u64,
) -> (String, ProposalId) {
    let proposal = ConsensusProposal {
        group,
        kind,
        proposed_at: SystemClock.now(),
        deadline: now_plus(60),
        nonce,
    };
    let signed = Signed::sign_crate_kind(keypair, federation, proposal).unwrap();
    (hex(&signed.encode().unwrap()), ProposalId::of(&signed).unwrap())
}

fn expect_rejected(reply: &Value, because: &str, what: &str) {
    assert_eq!(reply["outcome"], "rejected", "{what}: {reply}");
    let reason = reply["reason"].as_str().unwrap_or("");
    assert!(reason.contains(because), "{what}: rejected for {reason:?}, expected {because:?}");
}

// -----------------------------------------------------------------------------------------
// The scenario
// -----------------------------------------------------------------------------------------

#[test]
fn four_organizations_five_node_processes_sigkill_merge_consents_leave_join() {
    assert!(
        Path::new(&ontology("prov.nq")).exists(),
        "the published vocabularies are missing ({ONTOLOGIES}): run ./scripts/fetch-data.sh first"
    );
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut bugs: Vec<String> = Vec::new();
    let mut model = Model::default();
    // Checkpoints seen over the run, per node, to check growth and (at the end) consistency.
    let mut checkpoints: Vec<Vec<Checkpoint>> = vec![Vec::new(); NODES.len()];
    // Checkpoints cosigned by the other organizations' nodes, checked against the logs at the end.
    let mut cosigned: Vec<Cosigned> = Vec::new();

    // 1. Organizations, nodes, trust, run.
    let ports = free_ports(2 * NODES.len());
    for org in ORGS {
        setup(&["org", "--dir", dir.path().join(org).to_str().unwrap(), "--name", org]);
    }
    let mut nodes = Vec::new();
    for (i, (label, org)) in NODES.iter().enumerate() {
        let node_dir = dir.path().join(label);
        setup(&[
            "init",
            "--dir",
            node_dir.to_str().unwrap(),
            "--org",
            dir.path().join(org).to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{}", ports[2 * i]),
            "--admin",
            &format!("127.0.0.1:{}", ports[2 * i + 1]),
            "--federation",
            FEDERATION,
            "--decision-timeout",
            &DECISION_TIMEOUT_SECS.to_string(),
        ]);
        let public: Value =
            serde_json::from_str(&fs::read_to_string(node_dir.join("public.json")).unwrap())
                .unwrap();
        nodes.push(Node {
            label,
            org,
            dir: node_dir,
            id: public["node"].as_str().unwrap().to_string(),
            child: None,
        });
    }
    let mut c = Cluster { nodes, started, last_step: started, _dir: dir };
    for i in 0..NODES.len() {
        let dir = c.dir(i).to_str().unwrap().to_string();
        let mut args = vec!["trust".to_string(), "--dir".into(), dir];
        for j in (0..NODES.len()).filter(|&j| j != i) {
            args.push(c.dir(j).join("public.json").to_str().unwrap().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        setup(&args);
    }
    for i in 0..NODES.len() {
        assert_eq!(c.start(i), 0, "a new node restores nothing");
    }
    c.step("1. four organizations, five nodes trusting each other, all running");

    // 2. The federated branch of all four, from PROV-O; then a write on every node at once.
    let prov = vocabulary("prov.nq", Some("http://www.w3.org/ns/prov#"));
    let created = c.ok(
        ACME1,
        &[
            "create",
            "--branch",
            VOCAB,
            "--orgs",
            &ORGS.join(","),
            "--source",
            &ontology("prov.nq"),
            "--graph",
            "http://www.w3.org/ns/prov#",
        ],
    );
    assert_eq!(created["members"], 5, "every node of the four organizations: {created}");
    let vocab_group: GroupId = created["group"].as_str().unwrap().parse().unwrap();
    model.ack(VOCAB, prov);
    c.step("2a. branch vocab created from prov.nq on all five nodes");
    let writes: Vec<(usize, Vec<String>, Acked)> = vec![
        (ACME1, vec!["import".into(), ontology("org.nq")], vocabulary("org.nq", None)),
        (ACME2, vec!["import".into(), ontology("skos.nq")], vocabulary("skos.nq", None)),
        (GLOBEX, vec!["import".into(), ontology("time.nq")], vocabulary("time.nq", None)),
        (INITECH, vec!["import".into(), ontology("foaf.nq")], vocabulary("foaf.nq", None)),
        (
            UMBRELLA,
            ["write", "--prefix", "urn:x:umbrella", "--count", "300"].map(String::from).to_vec(),
            synthetic("urn:x:umbrella", 300),
        ),
    ];
    let replies: Vec<Result<Value, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = writes
            .iter()
            .map(|(i, args, _)| {
                let c = &c;
                s.spawn(move || {
                    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
                    args.splice(1..1, ["--branch", VOCAB]);
                    c.admin(*i, &args)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((i, _, acked), reply) in writes.into_iter().zip(replies) {
        let reply =
            reply.unwrap_or_else(|e| panic!("{}: {} failed: {e}", c.nodes[i].label, acked.what));
        assert_eq!(reply["written"].as_u64(), Some(acked.triples.len() as u64), "{reply}");
        model.ack(VOCAB, acked);
    }
    c.step("2b. a write on every node at once: four vocabularies and synthetic triples");

    // 3. Convergence.
    c.sync(ACME1, VOCAB, &model);
    let all: Vec<usize> = (0..NODES.len()).collect();
    c.assert_holds(&model, VOCAB, &all, Duration::from_secs(30));
    for (i, seen) in checkpoints.iter_mut().enumerate() {
        seen.push(c.checkpoint(i, &c.status(i)));
    }
    c.cosign_round(&mut cosigned);
    let (_, size) = model.expected(VOCAB);
    c.step(&format!(
        "3. converged: all five hold the {size} acknowledged triples; {} checkpoints cosigned \
         across organizations",
        cosigned.len()
    ));
    // BUG: `llmkg-node create --source` and `import` read with the default blank-node scope
    // (the branch), so the generic labels of the vocabularies (`_:c14n0`, ...) of two
    // documents become one node: prov.nq's and time.nq's `_:c14n18` are two different OWL
    // restrictions but one node in the branch, and triples of distinct documents collapse.
    // The rdf module says such documents should be imported with `BlankNodeScope::Named` or
    // `Graph`. Checked here; the rest of the scenario models what the node does today (once
    // the node scopes blank nodes per document, `vocabulary` must read with the same scope).
    {
        let docs = &model.branches[VOCAB];
        let mut shared = Vec::new();
        for (a, da) in docs.iter().enumerate() {
            for db in &docs[a + 1..] {
                let n = blank_labels(&da.triples).intersection(&blank_labels(&db.triples)).count();
                if n > 0 {
                    shared.push(format!("{} and {}: {n} labels", da.what, db.what));
                }
            }
        }
        let (scoped, as_is) = (model.expected_scoped_len(VOCAB), size);
        if scoped != as_is || !shared.is_empty() {
            bugs.push(format!(
                "BUG: blank nodes of different documents are merged in branch {VOCAB}: it holds {as_is} \
                 triples where the documents, each with its own blank nodes, have {scoped}; \
                 shared labels: {}",
                shared.join("; ")
            ));
        }
    }

    // 4. The second branch (globex, initech) is created now and written to (merged in step 5),
    //    so that both branches are older than their creations' decision deadline (15 s here)
    //    when a node restarts and when a node joins: a node drops a branch whose
    //    creation it finds unapproved past that deadline, so a restored or joining node must
    //    have its registry caught up by then.
    let sosa = vocabulary("sosa.nq", None);
    let created = c.ok(
        GLOBEX,
        &[
            "create",
            "--branch",
            CURATED,
            "--orgs",
            "globex,initech",
            "--source",
            &ontology("sosa.nq"),
            "--level",
            "confidential",
        ],
    );
    let curated_created = Instant::now();
    assert_eq!(created["members"], 2, "{created}");
    let curated_group: GroupId = created["group"].as_str().unwrap().parse().unwrap();
    model.ack(CURATED, sosa);
    let ldp = vocabulary("ldp.nq", None);
    let reply = c.ok(INITECH, &["import", "--branch", CURATED, &ontology("ldp.nq")]);
    assert_eq!(reply["written"].as_u64(), Some(ldp.triples.len() as u64));
    model.ack(CURATED, ldp);
    let reply = c.ok(
        GLOBEX,
        &["write", "--branch", CURATED, "--prefix", "urn:x:globex/curated", "--count", "150"],
    );
    assert_eq!(reply["written"], 150);
    model.ack(CURATED, synthetic("urn:x:globex/curated", 150));
    c.sync(GLOBEX, CURATED, &model);
    c.assert_holds(&model, CURATED, &[GLOBEX, INITECH], Duration::from_secs(30));
    c.step("4a. branch curated (globex, initech) created from sosa.nq, written on both, converged");
    let aged = curated_created + BRANCH_AGE;
    std::thread::sleep(aged.saturating_duration_since(Instant::now()));
    c.step(&format!("4b. waited until both branches are older than {BRANCH_AGE:?}"));

    //    SIGKILL initech-1 while globex-1's import of RiC-O spreads, and sync across it; writes go on
    //    on both branches; initech-1 restarts on its data and catches up.
    let rico = vocabulary("rico.nq", None);
    let reply = c.ok(GLOBEX, &["import", "--branch", VOCAB, &ontology("rico.nq")]);
    assert_eq!(reply["written"].as_u64(), Some(rico.triples.len() as u64));
    model.ack(VOCAB, rico);
    // The last checkpoint before the kill: the log after the restart must extend it.
    let before_kill = c.checkpoint(INITECH, &c.status(INITECH));
    checkpoints[INITECH].push(before_kill);
    // The kill lands while RiC-O is still spreading to the replicas, and the admin sync
    // started right after it runs across the whole outage: it cannot finish before the
    // node is back (started before the kill, it could legitimately finish on a summary the
    // node sent just before dying).
    c.kill(INITECH);
    let mut sync = c.background(GLOBEX, &["sync", "--branch", VOCAB]);
    std::thread::sleep(Duration::from_millis(150));
    let mid_sync = sync.running();
    c.step(&format!(
        "4c. initech-1 SIGKILLed while rico.nq spreads; globex-1's sync runs (running: {mid_sync})"
    ));
    assert!(mid_sync, "the sync finished while a member was down");
    let dcat = ontology("dcat.nq");
    let while_down: [(usize, &'static str, Vec<&str>, Acked); 3] = [
        (
            ACME1,
            VOCAB,
            vec!["write", "--prefix", "urn:x:acme/down", "--count", "200"],
            synthetic("urn:x:acme/down", 200),
        ),
        (UMBRELLA, VOCAB, vec!["import", dcat.as_str()], vocabulary("dcat.nq", None)),
        (
            GLOBEX,
            CURATED,
            vec!["write", "--prefix", "urn:x:globex/down", "--count", "100"],
            synthetic("urn:x:globex/down", 100),
        ),
    ];
    for (i, branch, mut args, acked) in while_down {
        args.splice(1..1, ["--branch", branch]);
        let reply = c.ok(i, &args);
        assert_eq!(reply["written"].as_u64(), Some(acked.triples.len() as u64));
        model.ack(branch, acked);
    }
    assert!(sync.running(), "the sync cannot converge while a member is down");
    c.step(
        "4d. written on acme-1, umbrella-1 (vocab) and globex-1 (curated) while initech-1 is down",
    );
    let restored = c.start(INITECH);
    assert_eq!(restored, 2, "the restarted node restores both branches it hosts");
    c.step(&format!("4e. initech-1 restarted on its data: restored {restored}"));
    let out = sync.finish();
    let reply =
        parse_reply(&out).unwrap_or_else(|e| panic!("the sync running across the kill: {e}"));
    assert_eq!(reply["converged"], Value::Bool(true), "{reply}");
    c.sync(INITECH, VOCAB, &model);
    c.assert_holds(&model, VOCAB, &all, Duration::from_secs(30));
    c.sync(INITECH, CURATED, &model);
    c.assert_holds(&model, CURATED, &[GLOBEX, INITECH], Duration::from_secs(30));
    c.step("4f. the sync that ran across the kill converged; both branches hold every acknowledged write");

    // 5. curated merged into vocab, with the approval of all four organizations.
    let merge = c.ok(GLOBEX, &["merge", "--source", CURATED, "--target", VOCAB]);
    let approved: Vec<&str> =
        merge["approved_by"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
    assert_eq!(approved, ORGS.to_vec(), "the merge needs all four organizations: {merge}");
    let merged: Vec<Acked> = model.branches[CURATED]
        .iter()
        .map(|w| Acked { what: format!("{} (merged from {CURATED})", w.what), ..w.clone() })
        .collect();
    for w in merged {
        model.ack(VOCAB, w);
    }
    assert_eq!(merge["state_root"].as_str().unwrap(), model.expected(VOCAB).0, "{merge}");
    let merge_proposal: ProposalId = merge["proposal"].as_str().unwrap().parse().unwrap();
    c.sync(GLOBEX, VOCAB, &model);
    c.assert_holds(&model, VOCAB, &all, Duration::from_secs(30));
    c.step(&format!(
        "5. curated merged into vocab (+{} triples, approved by {}); all five agree",
        merge["added"],
        approved.join(", ")
    ));

    // 6. Forged and stale consents, relayed as they are: all refused, the registries equal.
    let federation = c.federation(GLOBEX);
    let (globex_key, globex_cert) = (c.keypair(GLOBEX), c.certificate(GLOBEX));
    let org = |name: &str| OrgId::new(name).unwrap();
    let consent =
        |proposal: ProposalId, heads: Vec<CommitId>, org: OrgId, cert: &NodeCertificate| {
            ProposalKind::Consent(Consent {
                proposal,
                heads,
                org,
                verdict: ConsentVerdict::Approve,
                certificate: cert.clone(),
            })
        };
    let mut nonce = SystemClock.now().as_micros() as u64;
    let mut next_nonce = || {
        nonce += 1;
        nonce
    };
    let submit = |at: usize, hex: &str| c.ok(at, &["submit", "--branch", VOCAB, "--proposal", hex]);
    // A consent to the merge, decided already: a replayed approval.
    let (stale, _) = signed_hex(
        &globex_key,
        &federation,
        vocab_group,
        consent(merge_proposal, Vec::new(), org("globex"), &globex_cert),
        next_nonce(),
    );
    expect_rejected(
        &submit(ACME1, &stale),
        "no pending proposal",
        "a consent to the decided merge",
    );
    // A pending operation to consent to: a policy update acme-1 proposes (signed with its key).
    let (update, update_id) = signed_hex(
        &c.keypair(ACME1),
        &federation,
        vocab_group,
        ProposalKind::PolicyUpdate(PolicyUpdate {
            policy: "process-test".into(),
            version: 2,
            document: b"nothing".to_vec(),
        }),
        next_nonce(),
    );
    let reply = submit(ACME2, &update);
    assert_eq!(reply["outcome"], "pending", "the policy update waits for approvals: {reply}");
    expect_rejected(&submit(INITECH, &update), "replay", "the same proposal entered again");
    let forgeries = [
        (
            "a consent made against other heads",
            consent(update_id, vec![CommitId::from_bytes([7; 32])], org("globex"), &globex_cert),
            "other heads",
        ),
        (
            "a consent carrying another node's certificate",
            consent(update_id, Vec::new(), org("initech"), &c.certificate(INITECH)),
            "not the signing node's",
        ),
        (
            "a consent naming another organization than its certificate's",
            consent(update_id, Vec::new(), org("initech"), &globex_cert),
            "the certificate is of globex, not initech",
        ),
        (
            "a consent to a proposal of another group",
            consent(update_id, Vec::new(), org("globex"), &globex_cert),
            "another group",
        ),
    ];
    for (n, (what, kind, because)) in forgeries.into_iter().enumerate() {
        let group = if n == 3 { curated_group } else { vocab_group };
        let (hex, _) = signed_hex(&globex_key, &federation, group, kind, next_nonce());
        match c.admin(UMBRELLA, &["submit", "--branch", VOCAB, "--proposal", &hex]) {
            Ok(reply) => expect_rejected(&reply, because, what),
            // The engine refuses a proposal of another group before it reaches the log.
            Err(e) => assert!(n == 3, "{what}: {e}"),
        }
    }
    // Signed for another federation: not even decoded.
    let (elsewhere, _) = signed_hex(
        &globex_key,
        &FederationId::from_name("elsewhere"),
        vocab_group,
        consent(update_id, Vec::new(), org("globex"), &globex_cert),
        next_nonce(),
    );
    let refused = c.admin(ACME1, &["submit", "--branch", VOCAB, "--proposal", &elsewhere]);
    assert!(refused.is_err(), "a proposal of another federation: {refused:?}");
    // The control: a well-formed consent is counted, and the same organization only once.
    let (good, _) = signed_hex(
        &globex_key,
        &federation,
        vocab_group,
        consent(update_id, Vec::new(), org("globex"), &globex_cert),
        next_nonce(),
    );
    let reply = submit(INITECH, &good);
    assert_eq!(reply["outcome"], "approved", "a well-formed consent counts: {reply}");
    let (again, _) = signed_hex(
        &globex_key,
        &federation,
        vocab_group,
        consent(update_id, Vec::new(), org("globex"), &globex_cert),
        next_nonce(),
    );
    expect_rejected(&submit(ACME1, &again), "already answered", "a second consent of globex");
    // umbrella refuses: the update is rejected on every member (nothing stays pending).
    let (refusal, _) = signed_hex(
        &c.keypair(UMBRELLA),
        &federation,
        vocab_group,
        ProposalKind::Consent(Consent {
            proposal: update_id,
            heads: Vec::new(),
            org: org("umbrella"),
            verdict: ConsentVerdict::Refuse { reason: "a test of the rule of consent".into() },
            certificate: c.certificate(UMBRELLA),
        }),
        next_nonce(),
    );
    assert_eq!(submit(UMBRELLA, &refusal)["outcome"], "approved", "umbrella's refusal counts");
    expect_rejected(
        &submit(ACME2, &good),
        "no pending proposal",
        "globex's consent to the update refused meanwhile",
    );
    let registry = c.assert_holds(&model, VOCAB, &all, Duration::from_secs(20));
    for (i, seen) in checkpoints.iter_mut().enumerate() {
        seen.push(c.checkpoint(i, &c.status(i)));
    }
    // The witnesses (initech's restarted from its disk) follow the logs across the run; a
    // log that shows a witness another history, or an older checkpoint, is refused.
    c.cosign_round(&mut cosigned);
    {
        let last = cosigned.iter().rfind(|w| w.log == GLOBEX && w.witness == INITECH).unwrap();
        let origin = last.note.body().lines().next().unwrap().to_string();
        let signer =
            LogSigner::new(&origin, ed25519_dalek::SigningKey::from_bytes(&c.secret(GLOBEX)))
                .unwrap();
        let forked = signer.sign(&Checkpoint::new(&origin, last.size, [0x66; 32]).unwrap());
        let reply = c.admin(INITECH, &["cosign", "--note", &forked.to_text()]);
        let refused = reply.expect_err("a forked checkpoint of globex's log is cosigned");
        assert!(refused.contains("equivocated"), "the fork is refused as such: {refused}");
        let first = cosigned.iter().find(|w| w.log == GLOBEX && w.witness == INITECH).unwrap();
        let text = first.note.body().to_string();
        let older = signer.sign(&Checkpoint::parse_body(&text).unwrap());
        let reply = c.admin(INITECH, &["cosign", "--note", &older.to_text()]);
        let refused = reply.expect_err("an older checkpoint of globex's log is cosigned");
        assert!(refused.contains("older than the last seen"), "a rollback: {refused}");
    }
    c.step(&format!(
        "6. forged, stale and replayed consents refused; registry {} on all five",
        &registry[..16]
    ));

    // 7. acme-2 is taken out of vocab by acme-1: it stops hosting it, later writes miss it.
    let left = c.ok(ACME1, &["leave", "--branch", VOCAB, "--node", &c.nodes[ACME2].id]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.branch_status(ACME2, VOCAB).is_some() {
        assert!(
            Instant::now() < deadline,
            "acme-2 still hosts {VOCAB} 20 s after it was taken out ({left})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let remaining = c.members(ACME1, VOCAB);
    assert_eq!(remaining, vec![ACME1, GLOBEX, INITECH, UMBRELLA], "the members after the leave");
    let after_leave = synthetic("urn:x:initech/after-leave", 100);
    let reply = c.ok(
        INITECH,
        &["write", "--branch", VOCAB, "--prefix", "urn:x:initech/after-leave", "--count", "100"],
    );
    assert_eq!(reply["written"], 100);
    model.ack(VOCAB, after_leave);
    c.sync(INITECH, VOCAB, &model);
    c.assert_holds(&model, VOCAB, &remaining, Duration::from_secs(30));
    assert!(c.branch_status(ACME2, VOCAB).is_none(), "acme-2 hosts {VOCAB} again");
    let refused = c
        .admin(ACME2, &["write", "--branch", VOCAB, "--prefix", "urn:x:acme/late", "--count", "1"]);
    assert!(refused.is_err(), "acme-2 wrote to a branch it left: {refused:?}");
    c.step(
        "7. acme-2 left vocab: no longer hosted there, the write after the leave did not reach it",
    );

    // 8. umbrella-1 joins curated (its organization is new there) and catches up; acme-2
    //    joins vocab again and catches up.
    let joined = c.ok(INITECH, &["join", "--branch", CURATED, "--node", &c.nodes[UMBRELLA].id]);
    assert!(joined["index"].as_u64().is_some(), "{joined}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.branch_status(UMBRELLA, CURATED).is_none() {
        assert!(Instant::now() < deadline, "umbrella-1 does not host {CURATED} after joining");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.sync(UMBRELLA, CURATED, &model);
    let curated_members = [GLOBEX, INITECH, UMBRELLA];
    c.assert_holds(&model, CURATED, &curated_members, Duration::from_secs(30));
    // It caught up from a member's snapshot: the history before it is known by id only.
    let joined_status = c.branch_status(UMBRELLA, CURATED).unwrap();
    assert_eq!(joined_status["shallow"], Value::Bool(true), "{joined_status}");
    let base_commits = joined_status["base_commits"].as_u64().unwrap();
    let held = joined_status["commits"].as_u64().unwrap();
    let provider_commits = c.branch_status(GLOBEX, CURATED).unwrap()["commits"].as_u64().unwrap();
    assert!(base_commits > 0 && held < provider_commits, "{joined_status}");
    let reply = c.ok(
        UMBRELLA,
        &["write", "--branch", CURATED, "--prefix", "urn:x:umbrella/curated", "--count", "50"],
    );
    assert_eq!(reply["written"], 50);
    model.ack(CURATED, synthetic("urn:x:umbrella/curated", 50));
    c.sync(GLOBEX, CURATED, &model);
    c.assert_holds(&model, CURATED, &curated_members, Duration::from_secs(30));
    c.step(&format!(
        "8a. umbrella-1 joined curated from a snapshot ({base_commits} commits known by id, \
         {held} held), caught up, and its write reached the others"
    ));

    //    curated is confidential: its commits travel sealed under the federation's data key.
    //    umbrella-1 (all of umbrella there) leaves it; the key rotates without umbrella, and
    //    it cannot open a commit written after, while a member can.
    let left = c.ok(INITECH, &["leave", "--branch", CURATED, "--node", &c.nodes[UMBRELLA].id]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.branch_status(UMBRELLA, CURATED).is_some() {
        assert!(Instant::now() < deadline, "umbrella-1 still hosts {CURATED} ({left})");
        std::thread::sleep(Duration::from_millis(200));
    }
    let curated_members = [GLOBEX, INITECH];
    let reply = c.ok(
        GLOBEX,
        &["write", "--branch", CURATED, "--prefix", "urn:x:globex/sealed", "--count", "20"],
    );
    let sealed_commit = reply["ids"][0].as_str().unwrap().to_string();
    model.ack(CURATED, synthetic("urn:x:globex/sealed", 20));
    c.sync(GLOBEX, CURATED, &model);
    c.assert_holds(&model, CURATED, &curated_members, Duration::from_secs(30));
    let shipped = c.ok(GLOBEX, &["shipped", "--branch", CURATED, "--commit", &sealed_commit]);
    assert_eq!(shipped["sealed"], Value::Bool(true), "{shipped}");
    let bytes = shipped["bytes"].as_str().unwrap().to_string();
    assert!(
        !bytes.contains(&hex_of("urn:x:globex/sealed")),
        "the shipped commit carries its triples in the clear"
    );
    let opened = c.ok(INITECH, &["open", "--branch", CURATED, "--bytes", &bytes]);
    assert_eq!(opened["commit"].as_str(), Some(sealed_commit.as_str()), "{opened}");
    assert_eq!(opened["added"], 20, "{opened}");
    let refused = c
        .admin(UMBRELLA, &["open", "--branch", CURATED, "--bytes", &bytes])
        .expect_err("umbrella opened a commit written after it left curated");
    assert!(refused.contains("no data key here for epoch"), "{refused}");
    c.step(&format!(
        "8b. umbrella-1 left confidential curated: initech-1 opens what globex-1 wrote after, \
         umbrella-1 cannot ({})",
        refused.trim()
    ));
    let rejoined = c.ok(ACME1, &["join", "--branch", VOCAB, "--node", &c.nodes[ACME2].id]);
    assert!(rejoined["index"].as_u64().is_some(), "{rejoined}");
    // It hosts the branch when it consents; a moment later it must still host it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.branch_status(ACME2, VOCAB).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let vocab_members: Vec<usize> = if c.branch_status(ACME2, VOCAB).is_some() {
        c.sync(ACME2, VOCAB, &model);
        c.assert_holds(&model, VOCAB, &all, Duration::from_secs(30));
        c.step("8c. acme-2 joined vocab again and caught up, the write it missed included");
        all.clone()
    } else {
        // BUG: a node that joins a branch it left does not host it. Its consent makes it host
        // the branch with a fresh registry; replaying the group's log from the start, it
        // executes its own earlier NodeLeave (`FederatedBranchingSystem::execute`:
        // `if l.node == me { self.unhost(..) }`), which stops and forgets the branch again,
        // although the join that follows in the log makes it a member. The group then counts
        // a member that serves nothing. acme-2 is taken out again so that the rest of the
        // scenario runs with the nodes that do host the branch.
        let members = c.members(ACME1, VOCAB);
        bugs.push(format!(
            "BUG: acme-2 re-joined {VOCAB} (join executed: {rejoined}) and is a member again \
             (members at acme-1: {:?}), but does not host it 2 s later: replaying the log it \
             executes its own earlier leave and drops the branch",
            members.iter().map(|&m| c.nodes[m].label).collect::<Vec<_>>()
        ));
        c.ok(ACME1, &["leave", "--branch", VOCAB, "--node", &c.nodes[ACME2].id]);
        assert_eq!(c.members(ACME1, VOCAB), remaining, "acme-2 taken out again");
        c.step("8c. BUG: acme-2 joined vocab again but does not host it; taken out again");
        remaining.clone()
    };

    // 9. Every replica holds exactly the acknowledged writes; the audit logs.
    assert_eq!(c.members(GLOBEX, VOCAB), vocab_members);
    assert_eq!(c.members(GLOBEX, CURATED), curated_members.to_vec());
    c.assert_holds(&model, VOCAB, &vocab_members, Duration::from_secs(10));
    c.assert_holds(&model, CURATED, &curated_members, Duration::from_secs(10));
    for (i, seen) in checkpoints.iter_mut().enumerate() {
        let status = c.status(i);
        let hosted: BTreeSet<&str> = status["branches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["branch"].as_str().unwrap())
            .collect();
        let expected: BTreeSet<&str> =
            [(VOCAB, &vocab_members[..]), (CURATED, &curated_members[..])]
                .into_iter()
                .filter(|(_, members)| members.contains(&i))
                .map(|(b, _)| b)
                .collect();
        assert_eq!(hosted, expected, "{}: the branches it hosts", c.nodes[i].label);
        seen.push(c.checkpoint(i, &status));
        let sizes: Vec<u64> = seen.iter().map(Checkpoint::size).collect();
        assert!(
            sizes.windows(2).all(|w| w[0] <= w[1]) && sizes[0] < sizes[sizes.len() - 1],
            "{}: the audit log's checkpoints do not grow over the run: {sizes:?}",
            c.nodes[i].label
        );
    }
    let sizes: Vec<String> = checkpoints
        .iter()
        .enumerate()
        .map(|(i, seen)| {
            let sizes: Vec<String> = seen.iter().map(|cp| cp.size().to_string()).collect();
            format!("{} {}", c.nodes[i].label, sizes.join("->"))
        })
        .collect();
    c.cosign_round(&mut cosigned);
    c.step(&format!(
        "9a. every replica holds the acknowledged writes; audit sizes {}; {} cosigned checkpoints",
        sizes.join(", "),
        cosigned.len()
    ));
    for i in 0..NODES.len() {
        c.kill(i);
    }
    let mut replayed = Vec::new();
    for (i, seen) in checkpoints.iter().enumerate() {
        let label = c.nodes[i].label;
        let log = AuditLog::open(RedbKv::open(c.dir(i).join("data/audit.redb")).unwrap()).unwrap();
        // Its own checkpoints, and those the other organizations cosigned.
        let witnessed = cosigned.iter().filter(|w| w.log == i).map(|w| {
            let verifier = c.witness_verifier(w.witness);
            assert!(
                verifier.verify(&w.note).unwrap().is_some(),
                "{}'s cosignature is on the note",
                c.nodes[w.witness].label
            );
            Checkpoint::parse_body(w.note.body()).unwrap()
        });
        for cp in seen.iter().cloned().chain(witnessed) {
            assert!(log.size() >= cp.size(), "{label}: the log lost entries");
            let proof = log.consistency_proof(cp.size(), log.size()).unwrap();
            verify_consistency(cp.size(), log.size(), cp.root(), &log.root(), &proof)
                .unwrap_or_else(|e| {
                    panic!("{label}: the checkpoint of size {} is not a prefix: {e}", cp.size())
                });
        }
        // Each decision of a group is recorded once (the event table: "the branch's consensus
        // group decided a proposal").
        let mut decisions: BTreeMap<(String, u64, String, String), u64> = BTreeMap::new();
        for entry in log.entries(0..log.size()).unwrap() {
            let event: Value = serde_json::from_slice(&entry).unwrap();
            if event["event"] == "consensus-decision" {
                let key = ["group", "proposal", "outcome"]
                    .map(|k| event[k].as_str().unwrap().to_string());
                let [group, proposal, outcome] = key;
                *decisions
                    .entry((group, event["index"].as_u64().unwrap(), proposal, outcome))
                    .or_default() += 1;
            }
        }
        let twice: Vec<String> = decisions
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|((g, index, _, outcome), n)| {
                format!("group {} index {index} {outcome:?} x{n}", &g[..8])
            })
            .collect();
        if !twice.is_empty() {
            replayed.push(format!(
                "{label}: {} decisions recorded more than once, e.g. {}",
                twice.len(),
                twice[0]
            ));
        }
    }
    c.step(
        "9b. every checkpoint seen, and every one the other organizations cosigned, is a \
         prefix of its node's audit log on disk",
    );
    // BUG: a node that restarts (or joins a branch again) replays its groups' logs from the
    // start, and the pump records every decision in the audit trail again, with the time of
    // the replay: the trail says the creation, the merge, ... were decided again.
    if !replayed.is_empty() {
        bugs.push(format!(
            "BUG: consensus decisions are recorded again in the audit trail when a node replays a \
             group's log (restart, re-join): {}",
            replayed.join("; ")
        ));
    }
    eprintln!("total {:.1}s", started.elapsed().as_secs_f64());
    assert!(bugs.is_empty(), "the scenario ran through, but found:\n- {}", bugs.join("\n- "));
}

/// The hex of a string's bytes (how it would show in a hex dump of what travels).
fn hex_of(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}
