#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Real data: two organizations import the same published vocabulary separately (different
//! commits, identical triples) and each edits it; comparing their states by set
//! reconciliation over triple ids reports exactly the triples that differ. The vocabulary is
//! schema.org's, from the `@zazuko/rdf-vocabularies` package that `scripts/fetch-data.sh`
//! fetches into `data/`.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use llmkg_federation_core::consensus::GroupId;
use llmkg_federation_core::rdf::{Format, ImportOptions, read};
use llmkg_federation_core::sync::SyncStrategy;
use llmkg_federation_core::{ChangeSet, MemoryKv, NodeKeypair, OrgId, Term, Transport, Triple};
use llmkg_sync::engine::{EventualSync, SyncOptions};
use llmkg_transport::{InProcessNetwork, TokioTimer};

fn vocabulary(name: &str) -> Vec<Triple> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/rdf-vocabularies/package/ontologies")
        .join(format!("{name}.nq"));
    let file = File::open(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run ./scripts/fetch-data.sh to fetch the published vocabularies",
            path.display()
        )
    });
    let mut triples = read(file, Format::NQuads, ImportOptions::new()).unwrap().into_triples();
    triples.sort();
    triples.dedup();
    triples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_organizations_importing_the_same_vocabulary_differ_exactly_by_their_edits() {
    let vocab = vocabulary("schema");
    assert!(vocab.len() > 5_000, "schema.org has {} triples", vocab.len());

    let timer = Arc::new(TokioTimer::new());
    let network = InProcessNetwork::new(timer.clone());
    let keys = [NodeKeypair::from_secret_bytes([1; 32]), NodeKeypair::from_secret_bytes([2; 32])];
    let ids: Vec<_> = keys.iter().map(|k| k.node_id()).collect();
    let mut engines = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let transport: Arc<dyn Transport> = Arc::new(network.join(k.node_id()).unwrap());
        let mut options = SyncOptions::new(
            NodeKeypair::from_secret_bytes(k.secret_bytes()),
            OrgId::new(["acme", "globex"][i]).unwrap(),
            GroupId::from_bytes([4; 32]),
        );
        // The two states are built independently: no anti-entropy, each only answers.
        options.sync.fanout = 0;
        options.replica.max_commit_bytes = 64 << 20;
        let (engine, task) = EventualSync::start(
            options,
            MemoryKv::new(),
            vec![ids[1 - i]],
            transport,
            timer.clone(),
        )
        .unwrap();
        tokio::spawn(task);
        engines.push(engine);
    }
    // Each imports the vocabulary in its own commit: different commits, identical triples.
    let a = engines[0]
        .write(ChangeSet::adding(vocab.clone()), "import schema.org".into())
        .await
        .unwrap();
    let b = engines[1]
        .write(ChangeSet::adding(vocab.clone()), "import schema.org".into())
        .await
        .unwrap();
    assert_ne!(a, b);
    let roots: Vec<_> = [&engines[0], &engines[1]]
        .iter()
        .map(|e| e.with_core(|c| c.replica_mut().state_root()))
        .collect();
    assert_eq!(roots[0], roots[1], "identical triples, identical roots");
    let same = engines[0].compare_with(ids[1], Duration::from_secs(30)).await.expect("comparison");
    assert!(same.only_here.is_empty() && same.only_there.is_empty());

    // Each edits: acme drops 40 triples and adds a label; globex drops 25 others and adds 3.
    let label = |s: &str, v: &str| {
        Triple::new(
            Term::iri(format!("https://schema.org/{s}")).unwrap(),
            Term::iri("http://www.w3.org/2000/01/rdf-schema#comment").unwrap(),
            Term::string(v).unwrap(),
        )
        .unwrap()
    };
    let acme_removed: Vec<Triple> = vocab.iter().step_by(97).take(40).cloned().collect();
    let acme_added = vec![label("Person", "A human being, as acme sees it.")];
    let globex_removed: Vec<Triple> = vocab.iter().skip(13).step_by(89).take(25).cloned().collect();
    let globex_added = vec![
        label("Person", "A person."),
        label("Place", "Somewhere."),
        label("Thing", "Anything."),
    ];
    engines[0]
        .write(
            ChangeSet::new(acme_added.clone(), acme_removed.clone()).unwrap(),
            "acme edits".into(),
        )
        .await
        .unwrap();
    engines[1]
        .write(
            ChangeSet::new(globex_added.clone(), globex_removed.clone()).unwrap(),
            "globex edits".into(),
        )
        .await
        .unwrap();

    // What differs, from the states themselves.
    let state = |i: usize| -> BTreeSet<Triple> {
        engines[i].with_core(|c| c.replica().state().triples().into_iter().collect())
    };
    let (sa, sb) = (state(0), state(1));
    let expected_here: Vec<Triple> = sa.difference(&sb).cloned().collect();
    let expected_there: Vec<Triple> = sb.difference(&sa).cloned().collect();
    assert!(!expected_here.is_empty() && !expected_there.is_empty());

    // Reconciliation reports exactly those, from either side.
    let diff = engines[0].compare_with(ids[1], Duration::from_secs(30)).await.expect("comparison");
    assert_eq!(diff.only_here, expected_here);
    assert_eq!(diff.only_there, expected_there);
    let back = engines[1].compare_with(ids[0], Duration::from_secs(30)).await.expect("comparison");
    assert_eq!(back.only_here, expected_there);
    assert_eq!(back.only_there, expected_here);
    // The comparison applied nothing.
    assert_eq!(state(0), sa);
    assert_eq!(engines[0].status().await.unwrap().commits, 2);
    // And it cost a small fraction of either state.
    let stats = engines[0].driver_stats();
    let state_bytes: usize =
        sa.iter().map(|t| llmkg_federation_core::encoding::encode(t).len()).sum();
    assert!(
        (stats.bytes_sent + stats.bytes_received) * 10 < state_bytes as u64,
        "{} + {} bytes for a state of {state_bytes}",
        stats.bytes_sent,
        stats.bytes_received
    );
}
