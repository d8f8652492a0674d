//! The LLMKG Federation demo: four organizations version published vocabularies together.
//!
//! Each organization runs its own node — its own ed25519 identity and its own durable store
//! (an embedded redb file in a temporary directory) — and contributes one publisher's
//! vocabulary, imported from the publisher's named graph in real published N-Quads (fetched
//! by `scripts/fetch-data.sh`). A consortium node receives their signed commits over the TCP
//! transport (loopback, Noise-encrypted, every peer authenticated by its node key), verifies
//! every one (id, signature, state root) and merges them into `federation/main`. Then QUDT
//! publishes a new release of its unit vocabulary: the re-import records exactly what
//! changed, the diff shows it, and a three-way merge brings it into the federation branch.
//!
//! ```text
//! ./scripts/demo.sh     # fetches the data if needed, then runs this binary
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error;
use std::fs::File;
use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use llmkg_federation_core::rdf::{
    BlankNodeScope, ExportOptions, Format, GraphName, GraphSelection, ImportMode, ImportOptions,
    ImportReport, Progress,
};
use llmkg_federation_core::{
    BranchName, CommitId, Incoming, MergeOutcome, NodeId, NodeKeypair, OrgId, Pattern, RedbStore,
    Repository, Store, SystemClock, Term, Transport, Triple,
};
use llmkg_transport::{FederationId, TcpConfig, TcpTransport, Trust};

type Repo = Repository<RedbStore>;

const RDFS_LABEL: &str = "http://www.w3.org/2000/01/rdf-schema#label";
const RDF_TYPE: &str = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type";
const QUDT_UNIT: &str = "http://qudt.org/schema/qudt/Unit";

/// One organization and the publisher graph it contributes.
struct Member {
    org: &'static str,
    file: &'static str,
    graph: &'static str,
    what: &'static str,
}

const MEMBERS: [Member; 4] = [
    Member {
        org: "w3c",
        file: "prov.nq",
        graph: "http://www.w3.org/ns/prov#",
        what: "PROV-O provenance ontology",
    },
    Member {
        org: "ica",
        file: "rico.nq",
        graph: "https://www.ica.org/standards/RiC/ontology#",
        what: "Records in Contexts ontology",
    },
    Member {
        org: "dbpedia",
        file: "dbo.nq",
        graph: "http://dbpedia.org/ontology/",
        what: "DBpedia ontology",
    },
    Member {
        org: "qudt",
        file: "unit.nq",
        graph: "http://qudt.org/vocab/unit/",
        what: "QUDT units of measure",
    },
];

fn data_dir() -> Result<PathBuf, Box<dyn Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let ontologies = root.join("rdf-vocabularies/package/ontologies");
    let unit = root.join("vocabulary-unit/package/unit.nq");
    if !ontologies.is_dir() || !unit.is_file() {
        return Err(format!(
            "the demo needs the published vocabularies in {}: run ./scripts/fetch-data.sh \
             (./scripts/demo.sh does that for you)",
            root.display()
        )
        .into());
    }
    Ok(root)
}

fn node(dir: &Path, org: &str, seed: u8) -> Result<Repo, Box<dyn Error>> {
    let store = RedbStore::open(dir.join(format!("{org}.redb")))?;
    Ok(Repository::new(
        store,
        NodeKeypair::from_secret_bytes([seed; 32]),
        OrgId::new(org)?,
        SystemClock,
    ))
}

/// The demo's network: every node has a real TCP endpoint on loopback — Noise-encrypted,
/// each side authenticated by its node key — on one tokio runtime.
struct Net {
    rt: tokio::runtime::Runtime,
    federation: FederationId,
}

impl Net {
    fn new() -> Result<Self, Box<dyn Error>> {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        Ok(Self { rt, federation: FederationId::from_name("llmkg-federation demo consortium") })
    }

    /// An endpoint for the node with secret `seed` (as in [`node`]) that accepts `trusted`.
    fn endpoint(&self, seed: u8, trusted: &[NodeId]) -> Result<TcpTransport, Box<dyn Error>> {
        let mut config =
            TcpConfig::new(NodeKeypair::from_secret_bytes([seed; 32]), self.federation);
        config.trust = Trust::AllowList(trusted.iter().copied().collect());
        config.max_message_len = 64 << 20;
        Ok(self.rt.block_on(TcpTransport::bind(config))?)
    }
}

const OFFER: u8 = 0;
const COMMIT: u8 = 1;
const DONE: u8 = 2;

/// Sends `to` the commits of `head`'s history it lacks, over the network: the sender offers
/// the ids (oldest first), the receiver answers with those it lacks, then each missing commit
/// goes over as a request that the receiver answers only after verifying it (id, signature,
/// state root) and storing it. Returns how many commits were sent.
fn replicate(
    net: &Net,
    (from, from_net): (&mut Repo, &TcpTransport),
    (to, to_net): (&mut Repo, &TcpTransport),
    head: CommitId,
) -> Result<usize, Box<dyn Error>> {
    let mut history = from.log(head, usize::MAX)?;
    history.reverse();
    let to_id = to_net.local_id();
    let timeout = Duration::from_secs(60);
    net.rt.block_on(async {
        let sender = async {
            let mut offer = vec![OFFER];
            history.iter().for_each(|c| offer.extend_from_slice(c.id().as_bytes()));
            let wanted = from_net.request(to_id, offer, timeout).await?;
            let mut sent = 0;
            for c in history.iter().filter(|c| wanted.chunks(32).any(|w| w == c.id().as_bytes())) {
                let mut payload = vec![COMMIT];
                payload.extend_from_slice(c.as_bytes());
                let answer = from_net.request(to_id, payload, timeout).await?;
                if answer != b"ok" {
                    return Err(String::from_utf8_lossy(&answer).into_owned().into());
                }
                sent += 1;
            }
            from_net.send(to_id, vec![DONE]).await?;
            Ok::<usize, Box<dyn Error>>(sent)
        };
        let receiver = async {
            loop {
                let (peer, id, payload) = match to_net.recv().await? {
                    Incoming::Request { from, id, payload } => (from, id, payload),
                    Incoming::Message { payload, .. } if payload == [DONE] => {
                        return Ok::<(), Box<dyn Error>>(());
                    }
                    _ => continue,
                };
                let answer = match payload.split_first() {
                    Some((&OFFER, ids)) => {
                        let mut lacking = Vec::new();
                        for chunk in ids.chunks_exact(32) {
                            let bytes: [u8; 32] = chunk.try_into()?;
                            if !to.store().contains_object(&CommitId::from_bytes(bytes).into())? {
                                lacking.extend_from_slice(chunk);
                            }
                        }
                        lacking
                    }
                    Some((&COMMIT, bytes)) => match to.receive(bytes) {
                        Ok(_) => b"ok".to_vec(),
                        Err(e) => format!("refused: {e}").into_bytes(),
                    },
                    _ => b"refused: unknown request".to_vec(),
                };
                to_net.respond(peer, id, answer).await?;
            }
        };
        let (sent, received) = tokio::join!(sender, receiver);
        received?;
        sent
    })
}

fn progress_bar(label: String, total: u64) -> impl FnMut(Progress) {
    let live = std::io::stdout().is_terminal();
    move |p: Progress| {
        let done = p.bytes_read >= total;
        if !live && !done {
            return;
        }
        let fraction = if total == 0 { 1.0 } else { p.bytes_read as f64 / total as f64 };
        let filled = ((fraction.min(1.0)) * 24.0).round() as usize;
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(24 - filled));
        let mut out = std::io::stdout().lock();
        let _ = write!(
            out,
            "\r   {label} [{bar}] {:>3}%  {:>7} statements",
            (fraction * 100.0).round() as u64,
            thousands(p.statements)
        );
        if done {
            let _ = writeln!(out);
        }
        let _ = out.flush();
    }
}

fn thousands(n: impl Into<u64>) -> String {
    let s = n.into().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Imports one publisher graph of an N-Quads file into `branch`, with a progress bar.
fn import_graph(
    repo: &mut Repo,
    branch: &BranchName,
    file: &Path,
    graph: &str,
    mode: ImportMode,
    bar: Option<String>,
) -> Result<ImportReport, Box<dyn Error>> {
    let total = std::fs::metadata(file)?.len();
    let mut options = ImportOptions::new()
        .graphs(GraphSelection::Only(GraphName::named(graph)?))
        .blank_nodes(BlankNodeScope::Graph)
        .mode(mode)
        .message(format!("import {graph} from {}", file.file_name().unwrap().to_string_lossy()));
    if let Some(label) = bar {
        options = options.on_progress(progress_bar(label, total));
    }
    let reader = BufReader::with_capacity(1 << 16, File::open(file)?);
    Ok(repo.import(branch, reader, Format::NQuads, options)?)
}

fn units(repo: &mut Repo, branch: &BranchName) -> Result<usize, Box<dyn Error>> {
    let pattern =
        Pattern::any().with_predicate(Term::iri(RDF_TYPE)?).with_object(Term::iri(QUDT_UNIT)?);
    Ok(repo.state(branch)?.matching(&pattern).count())
}

fn label_changes(ts: &[Triple], sign: char, max: usize) {
    for t in ts
        .iter()
        .filter(|t| t.predicate().as_iri().is_some_and(|p| p.as_str() == RDFS_LABEL))
        .filter(|t| t.subject().to_string().contains("/vocab/unit/"))
        .take(max)
    {
        println!("     {sign} {t}");
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let data = data_dir()?;
    let ontologies = data.join("rdf-vocabularies/package/ontologies");
    let dir = tempfile::tempdir()?;
    println!("LLMKG Federation demo: four organizations version published vocabularies together\n");
    println!(
        "data: @zazuko/rdf-vocabularies 2023.1.19 (N-Quads, one named graph per publisher) and"
    );
    println!("      @vocabulary/unit 2.0.0 (the current release of QUDT's units), in data/\n");

    // 1. Every organization imports its publisher's graph on its own node and branch.
    println!("1. each organization imports its publisher's named graph into its own branch");
    let mut nodes = Vec::new();
    for (i, m) in MEMBERS.iter().enumerate() {
        let mut repo = node(dir.path(), m.org, 10 + i as u8)?;
        let branch = BranchName::new(format!("{}/vocabulary", m.org))?;
        let label = format!("{:<8} {:<8}", m.org, m.file);
        let report = import_graph(
            &mut repo,
            &branch,
            &ontologies.join(m.file),
            m.graph,
            ImportMode::Add,
            Some(label),
        )?;
        let head = report.commit.ok_or("the import made no commit")?;
        println!(
            "   {:<8} {:<19} +{} triples, commit {head:.8} by node {} ({})",
            "",
            branch.to_string(),
            thousands(report.added as u64),
            repo.node_id().short(),
            m.what
        );
        nodes.push((m, repo, branch, head));
    }

    // 2. The consortium receives and verifies every contribution and merges them.
    let mut consortium = node(dir.path(), "consortium", 99)?;
    let net = Net::new()?;
    let member_ids: Vec<NodeId> = nodes.iter().map(|(_, repo, ..)| repo.node_id()).collect();
    let consortium_net = net.endpoint(99, &member_ids)?;
    let mut member_nets = Vec::new();
    for (i, _) in MEMBERS.iter().enumerate() {
        let endpoint = net.endpoint(10 + i as u8, &[])?;
        endpoint.add_peer(consortium.node_id(), consortium_net.local_addr())?;
        member_nets.push(endpoint);
    }
    let federation = BranchName::new("federation/main")?;
    println!("\n2. the consortium node verifies each contribution and merges it into {federation}");
    println!(
        "   (commits travel over TCP on loopback: Noise XX, every peer authenticated by its node key)"
    );
    for ((m, repo, branch, head), endpoint) in nodes.iter_mut().zip(&member_nets) {
        let sent = replicate(&net, (repo, endpoint), (&mut consortium, &consortium_net), *head)?;
        consortium.create_branch(branch, *head)?;
        let outcome = if consortium.head(&federation)?.is_none() {
            consortium.create_branch(&federation, *head)?;
            "starts the branch".to_owned()
        } else {
            match consortium.merge(&federation, *head, &format!("merge {}", m.org))? {
                MergeOutcome::Merged(id) => format!("merge commit {id:.8}"),
                other => format!("{other:?}"),
            }
        };
        println!(
            "   {:<8} {sent} commit received and verified (id, signature, state root); {outcome}",
            m.org
        );
    }
    let merged = consortium.state(&federation)?;
    let c14n0: std::collections::BTreeSet<&str> = merged
        .iter()
        .flat_map(|t| [t.subject, t.object])
        .filter_map(|t| match t {
            Term::Blank(b) if b.label().ends_with("_c14n0") => Some(b.label()),
            _ => None,
        })
        .collect();
    println!(
        "   {federation}: {} triples from {} publishers",
        thousands(merged.len() as u64),
        MEMBERS.len()
    );
    println!(
        "   blank nodes are scoped per publisher graph: _:c14n0 of w3c and of ica are {} nodes",
        c14n0.len()
    );

    // 3. QUDT publishes a new release; re-importing it replaces the old one in one commit.
    let qudt_index = MEMBERS.iter().position(|m| m.org == "qudt").ok_or("qudt member")?;
    let (_, qudt, qudt_branch, old_head) = &mut nodes[qudt_index];
    let old_units = units(qudt, qudt_branch)?;
    println!("\n3. QUDT publishes a new release of its unit vocabulary; qudt re-imports it");
    let new_release = data.join("vocabulary-unit/package/unit.nq");
    let unit_graph = "http://qudt.org/vocab/unit/";
    let label = Some(format!("{:<8} {:<8}", "qudt", "unit.nq"));
    let report =
        import_graph(qudt, qudt_branch, &new_release, unit_graph, ImportMode::Replace, label)?;
    let new_head = report.commit.ok_or("the new release changed nothing")?;
    println!(
        "   commit {new_head:.8}: +{} -{} triples; units of measure {} -> {}",
        thousands(report.added as u64),
        thousands(report.removed as u64),
        thousands(old_units as u64),
        thousands(units(qudt, qudt_branch)? as u64)
    );
    let again =
        import_graph(qudt, qudt_branch, &new_release, unit_graph, ImportMode::Replace, None)?;
    println!(
        "   importing the same file again: {}",
        match again.commit {
            None => "no change, no commit".to_owned(),
            Some(c) => format!("unexpected commit {c:.8}"),
        }
    );
    let diff = qudt.diff(*old_head, new_head)?;
    println!(
        "   diff {old_head:.8}..{new_head:.8}: +{} -{} triples, for example:",
        thousands(diff.added().len() as u64),
        thousands(diff.removed().len() as u64)
    );
    label_changes(diff.removed(), '-', 2);
    label_changes(diff.added(), '+', 3);

    // 4. Three-way merge of the new release into the federation branch.
    let sent = replicate(
        &net,
        (qudt, &member_nets[qudt_index]),
        (&mut consortium, &consortium_net),
        new_head,
    )?;
    consortium.merge(qudt_branch, new_head, "fast-forward")?;
    let bases = consortium.merge_bases(consortium.head(&federation)?.ok_or("head")?, new_head)?;
    let outcome = consortium.merge(&federation, new_head, "merge the new QUDT release")?;
    let MergeOutcome::Merged(m) = outcome else {
        return Err(format!("expected a merge commit, got {outcome:?}").into());
    };
    let merge = consortium.load_commit(m)?;
    println!(
        "\n4. the consortium receives {sent} commit and merges it (three-way, merge base {:.8})",
        bases.first().map(|b| b.to_string()).unwrap_or_default()
    );
    println!(
        "   merge commit {m:.8}: +{} -{} triples, {federation} now {} triples, state root {:.8}",
        thousands(merge.commit().changes().added().len() as u64),
        thousands(merge.commit().changes().removed().len() as u64),
        thousands(consortium.state(&federation)?.len() as u64),
        merge.commit().state_root()
    );

    // 5. Export and re-import (labels kept as stored): the same state root.
    let mut exported = Vec::new();
    let graph = GraphName::named("https://consortium.example/federation/main")?;
    consortium.export(m, &mut exported, Format::NQuads, &ExportOptions::new().graph(graph))?;
    let check = BranchName::new("check/reimport")?;
    consortium.import(&check, exported.as_slice(), Format::NQuads, ImportOptions::new())?;
    let head = consortium.head(&check)?.ok_or("re-import made no commit")?;
    let root = consortium.load_commit(head)?.commit().state_root();
    println!(
        "\n5. export {federation} as N-Quads ({:.1} MB) and re-import it: state root {root:.8} {}",
        exported.len() as f64 / 1e6,
        if root == merge.commit().state_root() { "(identical)" } else { "(DIFFERENT)" }
    );

    println!("\nbranches at the consortium node:");
    for (name, head) in consortium.branches()? {
        println!("   {name:<20} -> {head:.8}");
    }
    let stats = consortium_net.stats();
    println!(
        "\nconsortium network: {} connections accepted, {} encrypted frames in ({:.1} MB), {} out",
        stats.connections_accepted,
        stats.frames_in,
        stats.bytes_in as f64 / 1e6,
        stats.frames_out
    );
    net.rt.block_on(async {
        for endpoint in member_nets.iter().chain([&consortium_net]) {
            endpoint.close().await;
        }
    });
    Ok(())
}
