//! The LLMKG Federation demo: two organizations version one knowledge graph together.
//!
//! Each organization runs its own node with its own durable store (an embedded redb file in
//! a temporary directory) and its own ed25519 identity. They exchange signed commits — here
//! by handing the encoded bytes over, as a transport would — and every received commit is
//! verified (id, signature, state root) before it is stored. The demo shows branches per
//! organization, a diff, a three-way merge and queries over the merged graph.
//!
//! ```text
//! cargo run --release -p llmkg-examples --bin federation-demo
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error;

use llmkg_examples::synthetic::Generator;
use llmkg_federation_core::{
    BranchName, ChangeSet, CommitId, Iri, Literal, MergeOutcome, NodeKeypair, OrgId, Pattern,
    RedbStore, Repository, Store, SystemClock, Term, Triple,
};

type Repo = Repository<RedbStore>;

fn node(dir: &std::path::Path, org: &str, seed: u8) -> Result<Repo, Box<dyn Error>> {
    let store = RedbStore::open(dir.join(format!("{org}.redb")))?;
    Ok(Repository::new(
        store,
        NodeKeypair::from_secret_bytes([seed; 32]),
        OrgId::new(org)?,
        SystemClock,
    ))
}

/// Sends every commit reachable from `head` that `to` does not have yet, oldest first.
fn replicate(from: &mut Repo, to: &mut Repo, head: CommitId) -> Result<usize, Box<dyn Error>> {
    let mut missing = Vec::new();
    for c in from.log(head, usize::MAX)? {
        if !to.store().contains_object(&c.id().into())? {
            missing.push(c);
        }
    }
    for c in missing.iter().rev() {
        to.receive(c.as_bytes())?;
    }
    Ok(missing.len())
}

fn t(s: &str, p: &str, o: Term) -> Triple {
    Triple::new(Term::iri(s).unwrap(), Term::iri(p).unwrap(), o).unwrap()
}

const EX: &str = "https://kg.example.org/";
const LABEL: &str = "http://www.w3.org/2000/01/rdf-schema#label";
const TYPE: &str = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type";
const SEE_ALSO: &str = "http://www.w3.org/2000/01/rdf-schema#seeAlso";

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    println!("LLMKG Federation demo: two organizations, one versioned knowledge graph\n");

    let mut acme = node(dir.path(), "acme-research", 1)?;
    let mut globex = node(dir.path(), "globex-labs", 2)?;
    println!("  node {} for org acme-research (store: acme-research.redb)", acme.node_id().short());
    println!(
        "  node {} for org globex-labs   (store: globex-labs.redb)\n",
        globex.node_id().short()
    );

    // 1. Acme publishes a shared base graph.
    let main = BranchName::new("main")?;
    let mut base = Generator::new(7, "https://kg.example.org/shared/").take(5_000);
    base.push(t(&format!("{EX}protein/p53"), TYPE, Term::iri(format!("{EX}Protein"))?));
    base.push(t(
        &format!("{EX}protein/p53"),
        LABEL,
        Literal::language("tumor protein p53", "en")?.into(),
    ));
    let c0 = acme.commit(&main, ChangeSet::adding(base), "shared base graph")?;
    let sent = replicate(&mut acme, &mut globex, c0)?;
    globex.create_branch(&main, c0)?;
    println!(
        "1. acme commits the shared base on `main` ({c0:.8}), globex receives {sent} commit(s) and verifies them"
    );
    println!(
        "   base: {} triples, state root {:.8}\n",
        acme.state(&main)?.len(),
        acme.load_commit(c0)?.commit().state_root()
    );

    // 2. Each organization works on its own branch.
    let acme_branch = BranchName::new("acme/curation")?;
    let globex_branch = BranchName::new("globex/enrichment")?;
    acme.create_branch(&acme_branch, c0)?;
    globex.create_branch(&globex_branch, c0)?;

    let p53 = format!("{EX}protein/p53");
    let old_label = t(&p53, LABEL, Literal::language("tumor protein p53", "en")?.into());
    acme.commit(
        &acme_branch,
        ChangeSet::new(
            [t(&p53, LABEL, Literal::language("cellular tumor antigen p53", "en")?.into())],
            [old_label],
        )?,
        "curate: correct the p53 label",
    )?;
    let a2 = acme.commit(
        &acme_branch,
        ChangeSet::adding(Generator::new(11, "https://kg.example.org/acme/").take(1_000)),
        "curate: add assay results",
    )?;
    globex.commit(
        &globex_branch,
        ChangeSet::adding([
            t(&p53, SEE_ALSO, Term::iri("https://www.uniprot.org/uniprotkb/P04637")?),
            t(&p53, LABEL, Literal::language("Tumorsuppressor p53", "de")?.into()),
        ]),
        "enrich: cross-references and German label",
    )?;
    let g2 = globex.commit(
        &globex_branch,
        ChangeSet::adding(Generator::new(13, "https://kg.example.org/globex/").take(800)),
        "enrich: add literature links",
    )?;
    println!("2. parallel work on per-organization branches");
    for (repo, branch) in [(&mut acme, &acme_branch), (&mut globex, &globex_branch)] {
        let head = repo.head(branch)?.expect("branch exists");
        for c in repo.log(head, 2)? {
            let commit = c.commit();
            println!(
                "   {branch:<18} {:.8}  by {} ({})  +{:<5} -{:<3} {}",
                c.id(),
                commit.org(),
                commit.author().short(),
                commit.changes().added().len(),
                commit.changes().removed().len(),
                commit.message()
            );
        }
    }

    // 3. Globex sends its branch to Acme; Acme looks at the difference.
    let sent = replicate(&mut globex, &mut acme, g2)?;
    acme.create_branch(&globex_branch, g2)?;
    let diff = acme.diff(a2, g2)?;
    println!(
        "\n3. globex sends {sent} commit(s); acme verifies them and diffs its branch against globex's"
    );
    println!(
        "   acme/curation -> globex/enrichment: +{} -{} triples",
        diff.added().len(),
        diff.removed().len()
    );
    let about_p53 = |ts: &[Triple]| {
        ts.iter().filter(|t| t.subject().to_string().contains("p53")).cloned().collect::<Vec<_>>()
    };
    for t in about_p53(diff.added()) {
        println!("     + {t}");
    }
    for t in about_p53(diff.removed()) {
        println!("     - {t}");
    }

    // 4. Three-way merge into a federated integration branch.
    let integration = BranchName::new("federated/main")?;
    acme.create_branch(&integration, a2)?;
    let bases = acme.merge_bases(a2, g2)?;
    let outcome = acme.merge(&integration, g2, "merge globex enrichment into acme curation")?;
    let MergeOutcome::Merged(m) = outcome else {
        return Err(format!("expected a merge commit, got {outcome:?}").into());
    };
    let merged = acme.load_commit(m)?;
    println!(
        "\n4. three-way merge on `federated/main` (merge base {:.8})",
        bases.first().map(|b| b.to_string()).unwrap_or_default()
    );
    println!(
        "   merge commit {m:.8} with parents {:.8} + {:.8}, {} triples, state root {:.8}",
        merged.commit().parents()[0],
        merged.commit().parents()[1],
        acme.state(&integration)?.len(),
        merged.commit().state_root()
    );
    let labels: Vec<String> = acme
        .state(&integration)?
        .matching(
            &Pattern::any()
                .with_subject(Term::iri(&p53)?)
                .with_predicate(Term::Iri(Iri::new(LABEL)?)),
        )
        .map(|t| t.object.to_string())
        .collect();
    println!("   labels of p53 after the merge: {}", labels.join(", "));

    // 5. Globex receives the merge and arrives at the very same state.
    let sent = replicate(&mut acme, &mut globex, m)?;
    globex.create_branch(&integration, m)?;
    let mut mine = globex.materialize(m)?;
    println!(
        "\n5. globex receives {sent} commit(s) and re-verifies the whole history from its own store"
    );
    println!(
        "   globex state root {:.8} == acme state root {:.8}: {}",
        mine.state_root(),
        merged.commit().state_root(),
        mine.state_root() == merged.commit().state_root()
    );
    println!("\nbranches at acme:");
    for (name, head) in acme.branches()? {
        println!("   {name:<18} -> {head:.8}");
    }
    Ok(())
}
