//! The LLMKG Federation demo: four organizations hold one knowledge graph together.
//!
//! Each organization runs its own node — its own key, certificate, security manager and audit
//! log, and its own redb store in a temporary directory — and the nodes talk over TCP with
//! Noise on loopback. On real published vocabularies (fetched by `scripts/fetch-data.sh`):
//!
//! 1. W3C proposes a federated branch of all four, starting from PROV-O; every organization
//!    consents (a signed approval through the branch's Raft log) before it exists;
//! 2. three organizations import their vocabularies at once and the replicas converge;
//! 3. QUDT and DBpedia hold a second branch with QUDT units; it is merged into the first
//!    with the consent of all four organizations; a replayed approval counts for nothing;
//! 4. ICA's node leaves; the branch is confidential, so its commits travel sealed under the
//!    federation's data key, which rotates without ICA: what is written afterwards neither
//!    reaches ICA nor could be read by it;
//! 5. a second QUDT node joins and catches up;
//! 6. every organization's audit log is exported with a checkpoint cosigned by the other
//!    organizations and checked by an independent verifier (`scripts/verify-audit.py`,
//!    SHA-256 and ed25519 only).
//!
//! ```text
//! ./scripts/demo.sh     # fetches the data if needed, then runs this binary
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use llmkg_examples::local::{LocalNode, local_federation};
use llmkg_federation_core::consensus::{ConsensusProposal, Outcome, ProposalKind};
use llmkg_federation_core::federated::{
    BranchSource, Consent, ConsentVerdict, FederatedBranchRequest, FederatedMergePolicy,
};
use llmkg_federation_core::rdf::{
    BlankNodeScope, Format, GraphName, GraphSelection, ImportOptions, read,
};
use llmkg_federation_core::security::{BranchRef, SealError, SecurityLevel, SecurityManager};
use llmkg_federation_core::{
    BranchName, ChangeSet, Clock, FederationId, GraphState, NodeKeypair, OrgId, Signed,
    SystemClock, Triple,
};
use llmkg_governance::audit::export::build_export;
use llmkg_governance::audit::witness::{Witness, WitnessKey};

type Res<T> = Result<T, Box<dyn Error>>;

fn data_dir() -> Res<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let ontologies = root.join("rdf-vocabularies/package/ontologies");
    if !ontologies.is_dir() || !root.join("vocabulary-unit/package/unit.nq").is_file() {
        return Err(format!(
            "the demo needs the published vocabularies in {}: run ./scripts/fetch-data.sh",
            root.display()
        )
        .into());
    }
    Ok(root)
}

/// The triples of one publisher's graph in an N-Quads file.
fn vocabulary(file: &Path, graph: &str) -> Res<Vec<Triple>> {
    let options = ImportOptions::new()
        .graphs(GraphSelection::Only(GraphName::named(graph)?))
        .blank_nodes(BlankNodeScope::Graph);
    let reader = BufReader::with_capacity(1 << 16, File::open(file)?);
    Ok(read(reader, Format::NQuads, options)?.into_triples())
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn name(s: &str) -> BranchName {
    BranchName::new(s).unwrap()
}

async fn show_replicas(nodes: &[&LocalNode], branch: &BranchName) -> Res<()> {
    for n in nodes {
        let s = n.system.replica(branch)?.status().await?;
        println!(
            "   {:<8} node {}  {:>7} triples  {:>3} commits  state root {:.16}",
            n.org,
            n.id.short(),
            thousands(s.triples),
            s.commits,
            s.state_root.to_string()
        );
    }
    Ok(())
}

async fn write_chunks(
    node: &LocalNode,
    branch: &BranchName,
    triples: Vec<Triple>,
    what: &str,
) -> Res<u64> {
    let mut commits = 0;
    for chunk in triples.chunks(20_000) {
        node.system
            .write(branch, ChangeSet::adding(chunk.iter().cloned()), what.to_string())
            .await?;
        commits += 1;
    }
    Ok(commits)
}

fn main() -> Res<()> {
    let data = data_dir()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(demo(data))
}

async fn demo(data: PathBuf) -> Res<()> {
    let started = Instant::now();
    let ontologies = data.join("rdf-vocabularies/package/ontologies");
    let federation = FederationId::from_name("llmkg-federation demo");
    let orgs: Vec<OrgId> =
        ["w3c", "ica", "dbpedia", "qudt"].into_iter().map(OrgId::new).collect::<Result<_, _>>()?;
    step("Four organizations, five nodes (TCP + Noise on loopback, redb stores)");
    let dir = tempfile::tempdir()?;
    // Nodes 0..4: one per organization; node 4, a second QUDT node, is made known later.
    let nodes = local_federation(federation, &orgs, &[0, 1, 2, 3, 3], 4, dir.path()).await?;
    for n in &nodes {
        println!("   {:<8} node {}", n.org, n.id.short());
    }
    let [w3c, ica, dbpedia, qudt, qudt2] = &nodes[..] else { unreachable!() };

    step("W3C proposes a federated branch of all four, starting from PROV-O");
    let prov = vocabulary(&ontologies.join("prov.nq"), "http://www.w3.org/ns/prov#")?;
    let mut state = GraphState::new();
    for t in &prov {
        state.insert(t)?;
    }
    let vocab = name("vocabularies");
    // Confidential: its commits travel sealed under the federation's data key.
    let request = FederatedBranchRequest::new(federation, vocab.clone(), w3c.id, orgs.clone())
        .with_source(BranchSource::of_state("PROV-O", &mut state))
        .with_level(SecurityLevel::Confidential);
    let t = Instant::now();
    let branch = w3c.system.create_federated_branch(request, prov.clone()).await?;
    let registry = w3c.system.registry(&vocab)?;
    let creation = &registry.history()[0];
    println!(
        "   consented by {} (log entries 1..{}), group {:.16}, {} members, in {:?}",
        creation.approved_by.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        creation.index,
        branch.group.to_string(),
        branch.members.len(),
        t.elapsed()
    );
    println!("   every replica holds the {} triples of PROV-O:", thousands(prov.len() as u64));
    show_replicas(&[w3c, ica, dbpedia, qudt], &vocab).await?;

    step("ICA, DBpedia and W3C write at the same time; the replicas converge");
    let rico =
        vocabulary(&ontologies.join("rico.nq"), "https://www.ica.org/standards/RiC/ontology#")?;
    let dbo = vocabulary(&ontologies.join("dbo.nq"), "http://dbpedia.org/ontology/")?;
    let dcat = vocabulary(&ontologies.join("dcat.nq"), "http://www.w3.org/ns/dcat#")?;
    println!(
        "   ICA imports RiC-O ({} triples), DBpedia its ontology ({}), W3C DCAT ({}) ...",
        thousands(rico.len() as u64),
        thousands(dbo.len() as u64),
        thousands(dcat.len() as u64)
    );
    let t = Instant::now();
    let (a, b, c) = tokio::join!(
        write_chunks(ica, &vocab, rico, "RiC-O"),
        write_chunks(dbpedia, &vocab, dbo, "DBpedia ontology"),
        write_chunks(w3c, &vocab, dcat, "DCAT"),
    );
    println!(
        "   written: {} + {} + {} commits in {:?}; synchronizing ...",
        a?,
        b?,
        c?,
        t.elapsed()
    );
    let t = Instant::now();
    let result = dbpedia.system.converge(&vocab).await?;
    println!(
        "   converged in {:?}: every replica has state root {:.16}",
        t.elapsed(),
        result.state_root.to_string()
    );
    show_replicas(&[w3c, ica, dbpedia, qudt], &vocab).await?;

    step("QUDT and DBpedia hold the QUDT units; the branch is merged into the first");
    // The first units of the vocabulary (whole units, about 6,000 triples): a merge's change
    // set travels in one consensus entry, at most 1 MiB.
    let mut all_units =
        vocabulary(&data.join("vocabulary-unit/package/unit.nq"), "http://qudt.org/vocab/unit/")?;
    all_units.sort();
    let mut units = Vec::new();
    for t in all_units {
        if units.len() >= 6_000 && units.last().is_some_and(|l: &Triple| l.subject() != t.subject())
        {
            break;
        }
        units.push(t);
    }
    let mut state = GraphState::new();
    for t in &units {
        state.insert(t)?;
    }
    let unit_branch = name("units");
    let request = FederatedBranchRequest::new(
        federation,
        unit_branch.clone(),
        qudt.id,
        [orgs[2].clone(), orgs[3].clone()],
    )
    .with_source(BranchSource::of_state("QUDT units", &mut state));
    qudt.system.create_federated_branch(request, units.clone()).await?;
    println!(
        "   `units` created by QUDT with DBpedia's consent: {} triples of QUDT units",
        thousands(units.len() as u64)
    );
    let t = Instant::now();
    let merged = dbpedia
        .system
        .merge_federated_branches(&unit_branch, &vocab, FederatedMergePolicy::default())
        .await?;
    println!(
        "   merge proposed by DBpedia, approved by {} at log entry {}: {} triples added, in {:?}",
        merged.approved_by.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        merged.index,
        thousands(merged.added),
        t.elapsed()
    );
    let after = w3c.system.converge(&vocab).await?;
    println!(
        "   every replica reaches the merged state root {:.16}:",
        after.state_root.to_string()
    );
    show_replicas(&[w3c, ica, dbpedia, qudt], &vocab).await?;

    step("A replayed approval counts for nothing");
    let key = NodeKeypair::from_secret_bytes([150 + 1; 32]);
    let replay = Consent {
        proposal: merged.proposal,
        heads: Vec::new(),
        org: ica.org.clone(),
        verdict: ConsentVerdict::Approve,
        certificate: ica.system.certificate().clone(),
    };
    let now = SystemClock.now();
    let proposal = ConsensusProposal {
        group: branch.group,
        kind: ProposalKind::Consent(replay),
        proposed_at: now,
        deadline: now,
        nonce: 1,
    };
    let signed = Signed::sign_crate_kind(&key, &federation, proposal)?;
    match w3c.system.submit(&vocab, signed).await? {
        Outcome::Rejected { reason } => {
            println!("   ICA's approval of the merge, submitted again: rejected ({reason})")
        }
        other => return Err(format!("a replayed approval was not rejected: {other:?}").into()),
    }

    step("ICA's node leaves the branch at W3C's request");
    let before = ica.system.replica(&vocab)?.status().await?;
    w3c.system.leave(&vocab, ica.id).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let notes: Vec<Triple> = (0..100)
        .map(|i| {
            Triple::new(
                llmkg_federation_core::Term::iri(format!("https://w3c.example/notes/{i}")).unwrap(),
                llmkg_federation_core::Term::iri("http://www.w3.org/2000/01/rdf-schema#comment")
                    .unwrap(),
                llmkg_federation_core::Term::string(format!("written after ICA left ({i})"))
                    .unwrap(),
            )
            .unwrap()
        })
        .collect();
    let written = w3c.system.write(&vocab, ChangeSet::adding(notes), "after the leave").await?;
    let after = w3c.system.converge(&vocab).await?;
    println!(
        "   members now: {}; W3C writes 100 triples; the others converge on {:.16}",
        w3c.system
            .registry(&vocab)?
            .branch()
            .map(|b| b.organizations.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        after.state_root.to_string()
    );
    println!(
        "   ICA's node hosts the branch: {}; it kept what it had ({} triples) and received nothing after",
        ica.system.replica(&vocab).is_ok(),
        thousands(before.triples)
    );
    // What travels between the replicas is sealed: the data key rotated when ICA left.
    let shipped = w3c.system.replica(&vocab)?.shipped(written).await?.ok_or("not held")?;
    let vocab_ref = BranchRef { federation, branch: vocab.clone() };
    let now = SystemClock.now();
    let opened = |node: &LocalNode| -> Res<Result<Vec<u8>, SealError>> {
        let seal = node.security.envelope_seal(&vocab_ref)?.ok_or("the branch is not sealed")?;
        Ok(seal.open(&shipped, now))
    };
    let (by_dbpedia, by_ica) = (opened(dbpedia)?, opened(ica)?);
    if by_dbpedia.is_err() || by_ica.is_ok() {
        return Err(format!("sealing: DBpedia {by_dbpedia:?}, ICA {by_ica:?}").into());
    }
    println!(
        "   W3C's commit as it travels ({} bytes, sealed): DBpedia opens it; ICA cannot: {}",
        thousands(shipped.len() as u64),
        by_ica.err().map(|e| e.to_string()).unwrap_or_default()
    );

    step("A second QUDT node joins and catches up");
    w3c.system.add_node(qudt2.system.certificate().clone());
    let t = Instant::now();
    let joined = w3c.system.join(&vocab, qudt2.id).await?;
    let target = w3c.system.replica(&vocab)?.status().await?.state_root;
    loop {
        if let Ok(r) = qudt2.system.replica(&vocab)
            && r.status().await?.state_root == target
        {
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            return Err("the joining node did not catch up".into());
        }
        let _ = w3c.system.converge(&vocab).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "   join decided at log entry {}; the new node caught up in {:?}:",
        joined.index,
        t.elapsed()
    );
    show_replicas(&[w3c, dbpedia, qudt, qudt2], &vocab).await?;

    step("Every organization's audit log, cosigned by the others, checked independently");
    let witnesses: Vec<WitnessKey> = (0..orgs.len())
        .map(|i| {
            WitnessKey::new(
                &format!("{}.example/witness", orgs[i]),
                ed25519_dalek::SigningKey::from_bytes(&[60 + i as u8; 32]),
            )
            .unwrap()
        })
        .collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/verify-audit.py");
    for n in [w3c, ica, dbpedia, qudt] {
        let mut note = n.security.checkpoint()?;
        let origin = note.body().lines().next().unwrap_or_default().to_string();
        let mut cosigners = Vec::new();
        for (i, key) in witnesses.iter().enumerate() {
            if orgs[i] == n.org {
                continue;
            }
            let mut witness = Witness::new(WitnessKey::new(
                key.name(),
                ed25519_dalek::SigningKey::from_bytes(&[60 + i as u8; 32]),
            )?);
            witness.add_log(&origin, n.security.log_verifier());
            let ts = SystemClock.now().as_micros() as u64 / 1_000_000;
            note.add_signature(witness.cosign(&note, &[], ts)?);
            cosigners.push(witness.verifier());
        }
        let size = n.security.audit_size();
        let inclusion: Vec<u64> = vec![0, size / 2, size - 1];
        let verifier = n.security.log_verifier();
        let export = n
            .security
            .with_audit(|log| build_export(log, &verifier, &note, &cosigners, &[], &inclusion))?;
        let file = dir.path().join(format!("audit-{}.json", n.org));
        std::fs::write(&file, export.to_json())?;
        let out = std::process::Command::new("python3").arg(&script).arg(&file).output()?;
        println!(
            "   {:<8} {:>4} entries, cosigned by 3 organizations: {}",
            n.org,
            size,
            if out.status.success() {
                "verified by verify-audit.py".to_string()
            } else {
                format!("REFUSED: {}", String::from_utf8_lossy(&out.stderr).trim())
            }
        );
        if !out.status.success() {
            return Err("an audit export did not verify".into());
        }
    }
    println!("\ndone in {:?}", started.elapsed());
    Ok(())
}
