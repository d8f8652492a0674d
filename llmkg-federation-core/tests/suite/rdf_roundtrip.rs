#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Round trips over real published vocabularies: every vocabulary of the
//! `@zazuko/rdf-vocabularies` package (fetched by `scripts/fetch-data.sh`, which
//! `scripts/test.sh` runs first) is imported, exported in each format and re-imported, and
//! must come back with the same state root. Importing a file twice must be a no-op.
//!
//! Without the data this test fails with instructions; it never passes vacuously.

use std::path::{Path, PathBuf};
use std::time::Instant;

use llmkg_federation_core::rdf::{BlankNodeScope, ExportOptions, Format, GraphName, ImportOptions};
use llmkg_federation_core::{
    BranchName, ManualClock, MemoryStore, NodeKeypair, OrgId, Repository, StateRoot, Timestamp,
};

fn vocabularies() -> Vec<PathBuf> {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/rdf-vocabularies/package/ontologies");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "the RDF round-trip test needs the published vocabularies in {}: {e}\n\
             run ./scripts/fetch-data.sh (it downloads them with npm into data/; \
             scripts/test.sh does this before the tests)",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "nq"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 80,
        "expected the 84 vocabularies of @zazuko/rdf-vocabularies in {}, found {}: \
         rerun ./scripts/fetch-data.sh after deleting data/rdf-vocabularies",
        dir.display(),
        files.len()
    );
    files
}

fn repo() -> Repository<MemoryStore> {
    Repository::new(
        MemoryStore::new(),
        NodeKeypair::from_secret_bytes([4; 32]),
        OrgId::new("roundtrip").unwrap(),
        ManualClock::new(Timestamp::from_micros(1_700_000_000_000_000)),
    )
}

fn b(name: &str) -> BranchName {
    BranchName::new(name).unwrap()
}

fn root(repo: &mut Repository<MemoryStore>, branch: &BranchName) -> StateRoot {
    let head = repo.head(branch).unwrap().expect("branch exists");
    repo.load_commit(head).unwrap().commit().state_root()
}

/// The single graph name of a vocabulary file (each is one publisher's named graph).
fn graph_of(bytes: &[u8]) -> GraphName {
    let dataset = llmkg_federation_core::rdf::read(bytes, Format::NQuads, ImportOptions::new())
        .expect("the published file parses");
    let names: Vec<GraphName> = dataset.graph_names().cloned().collect();
    names.into_iter().next().unwrap_or_default()
}

#[test]
fn every_vocabulary_round_trips_in_every_format() {
    let started = Instant::now();
    let files = vocabularies();
    let (mut statements, mut with_blank_nodes) = (0u64, 0usize);
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(file).unwrap();
        let graph = graph_of(&bytes);
        let mut repo = repo();
        let original = b("original");
        // Blank nodes scoped by the publisher's graph: the idempotent prefix must survive
        // every round trip below.
        let scope = || ImportOptions::new().blank_nodes(BlankNodeScope::Graph);
        let first = repo
            .import(&original, bytes.as_slice(), Format::NQuads, scope())
            .unwrap_or_else(|e| panic!("{name}: import failed: {e}"));
        statements += first.statements;
        assert!(first.commit.is_some() || first.triples == 0, "{name}: nothing committed");
        let Some(head) = repo.head(&original).unwrap() else { continue };
        let expected = root(&mut repo, &original);
        let state_len = repo.state(&original).unwrap().len();
        assert_eq!(first.added, state_len, "{name}");
        if repo.state(&original).unwrap().iter().any(|t| {
            matches!(t.subject, llmkg_federation_core::Term::Blank(_))
                || matches!(t.object, llmkg_federation_core::Term::Blank(_))
        }) {
            with_blank_nodes += 1;
        }

        // Importing the same file again is a no-op: no commit, same head.
        let again = repo.import(&original, bytes.as_slice(), Format::NQuads, scope()).unwrap();
        assert_eq!(again.commit, None, "{name}: second import made a commit");
        assert_eq!(repo.head(&original).unwrap(), Some(head), "{name}");

        for format in Format::ALL {
            let options = ExportOptions::new().graph(graph.clone());
            let mut exported = Vec::new();
            let written = repo.export(head, &mut exported, format, &options).unwrap();
            assert_eq!(written as usize, state_len, "{name} {format}");

            // Re-import into a fresh branch: the same state root.
            let branch = b(format.extension());
            let import_options = match format {
                Format::NQuads => scope(),
                _ => ImportOptions::new(),
            };
            repo.import(&branch, exported.as_slice(), format, import_options).unwrap_or_else(|e| {
                let text = String::from_utf8_lossy(&exported);
                panic!("{name}: re-import of the {format} export failed: {e}\n{text:.2000}")
            });
            assert_eq!(root(&mut repo, &branch), expected, "{name}: {format} round trip");

            // And re-importing the export into the original branch changes nothing.
            let again = repo.import(&original, exported.as_slice(), format, ImportOptions::new());
            assert_eq!(again.unwrap().commit, None, "{name}: {format} export is not a no-op");
        }
    }
    assert!(statements > 150_000, "only {statements} statements in the vocabularies");
    assert!(with_blank_nodes >= 20, "only {with_blank_nodes} vocabularies with blank nodes");
    eprintln!(
        "{} vocabularies, {statements} statements, {with_blank_nodes} with blank nodes: \
         round trips in {:.1} s",
        files.len(),
        started.elapsed().as_secs_f64()
    );
}
