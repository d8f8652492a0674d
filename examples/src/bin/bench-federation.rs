//! Benchmarks of the federated branch end to end: organizations' nodes on the paved path
//! (Raft, eventual sync, the governance security manager, redb), each with its own TCP +
//! Noise transport on loopback, in one process.
//!
//! ```text
//! cargo run --release -p llmkg-examples --bin bench-federation -- --json
//! ```
//!
//! Cases (exact names):
//! - `create-branch`: 10 organizations, one node each; from the request to every replica
//!   holding a 100,000-triple source (`p50_ms`); the baseline (`baseline_sync_ms`) is the
//!   same triples written to an existing branch and synchronized to the same nine peers, and
//!   `empty_create_p50_ms` the creation of a branch without data (consents, consensus and
//!   hosting alone), both measured in the same run.
//! - `sync-converge`: after 1% of the triples changed on every node, until every replica
//!   agrees (`ms`).
//! - `merge`: from the merge proposal to the identical merged state on every replica
//!   (`p50_ms`); the baseline (`baseline_p50_ms`) writes the same change set directly and
//!   synchronizes it; `plan_p50_ms` is what one node spends computing the merge from its
//!   replicas (both states and the change set), the work the proposer and every consenting
//!   node each do (all in this one process here).
//! - `join`: a node joining a 1,000,000-triple branch, until it holds the same state (`ms`),
//!   catching up from a member's snapshot; the baseline (`history_ms`) is a second node
//!   joining the same branch right after from the whole history, and `vs_history_ratio` is
//!   `history_ms / ms`. Also: `decision_ms` and `history_decision_ms` (until each join was
//!   executed), `base_commits` and `commits_held` (what the first node knows by id and
//!   holds), `history_commits_held`, and `create_ms` (the branch's creation with its source).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use llmkg_examples::bench::{Case, Cli, Report, quantile, round};
use llmkg_examples::local::{LocalNode, local_federation};
use llmkg_federation_core::federated::{
    BranchSource, FederatedBranchRequest, FederatedMergePolicy,
};
use llmkg_federation_core::system::plan_merge;
use llmkg_federation_core::{
    BranchName, ChangeSet, FederationId, GraphState, OrgId, StateRoot, Term, Triple,
};

fn fed() -> FederationId {
    FederationId::from_name("bench-federation")
}

type Node = LocalNode;

async fn federation(n: usize, known: usize, dir: &std::path::Path) -> Vec<Node> {
    let orgs: Vec<OrgId> = (0..n).map(|i| OrgId::new(format!("org{i:02}")).unwrap()).collect();
    let placement: Vec<usize> = (0..n).collect();
    local_federation(fed(), &orgs, &placement, known, dir).await.unwrap()
}

fn triple(s: &str, i: usize) -> Triple {
    Triple::new(
        Term::iri(format!("https://bench.example/{s}/s{i}")).unwrap(),
        Term::iri(format!("https://bench.example/p{}", i % 16)).unwrap(),
        Term::string(format!("value {i}")).unwrap(),
    )
    .unwrap()
}

fn source(n: usize) -> (Vec<Triple>, BranchSource) {
    let triples: Vec<Triple> = (0..n).map(|i| triple("src", i)).collect();
    let mut state = GraphState::new();
    for t in &triples {
        state.insert(t).unwrap();
    }
    let src = BranchSource::of_state("synthetic", &mut state);
    (triples, src)
}

fn name(s: &str) -> BranchName {
    BranchName::new(s).unwrap()
}

fn orgs_of(nodes: &[Node]) -> Vec<OrgId> {
    nodes.iter().map(|n| n.system.org().clone()).collect()
}

async fn roots(nodes: &[Node], b: &BranchName) -> Vec<StateRoot> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(n.system.replica(b).unwrap().status().await.unwrap().state_root);
    }
    out
}

/// Until every node's replica of `b` has the same state root; returns it.
async fn agree(nodes: &[Node], b: &BranchName) -> StateRoot {
    loop {
        let _ = nodes[0].system.converge(b).await;
        let r = roots(nodes, b).await;
        if r.iter().all(|x| *x == r[0]) {
            return r[0];
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1e3, 1)
}

async fn create_branch(orgs: usize, triples: usize, runs: usize) -> Case {
    let (seed, src) = source(triples);
    let mut total = Vec::new();
    let mut baseline = Vec::new();
    let mut empty = Vec::new();
    for run in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let nodes = federation(orgs, orgs, dir.path()).await;
        let request =
            FederatedBranchRequest::new(fed(), name("bench"), nodes[0].id, orgs_of(&nodes))
                .with_source(src.clone());
        let started = Instant::now();
        nodes[0].system.create_federated_branch(request, seed.clone()).await.unwrap();
        total.push(ms(started.elapsed()));
        let r = roots(&nodes, &name("bench")).await;
        assert!(r.iter().all(|x| *x == src.root()), "a replica is not ready");
        // Baseline: the same triples written to an empty branch of the same nodes, synced.
        let plain = FederatedBranchRequest::new(fed(), name("plain"), nodes[0].id, orgs_of(&nodes));
        let started = Instant::now();
        nodes[0].system.create_federated_branch(plain, Vec::new()).await.unwrap();
        empty.push(ms(started.elapsed()));
        let started = Instant::now();
        for chunk in seed.chunks(20_000) {
            let changes = ChangeSet::adding(chunk.iter().cloned());
            nodes[0].system.write(&name("plain"), changes, "plain").await.unwrap();
        }
        agree(&nodes, &name("plain")).await;
        baseline.push(ms(started.elapsed()));
        eprintln!(
            "    run {run}: create {} ms, baseline {} ms, empty creation {} ms",
            total[run], baseline[run], empty[run]
        );
        // This run's nodes stop before the next run's start.
        for n in &nodes {
            n.system.shutdown();
        }
    }
    let p50 = quantile(&mut total, 0.5);
    let base = quantile(&mut baseline, 0.5);
    let empty = quantile(&mut empty, 0.5);
    Case::new("create-branch")
        .param("organizations", orgs as u64)
        .param("nodes", orgs as u64)
        .param("triples", triples as u64)
        .param("runs", runs as u64)
        .param("transport", "tcp+noise loopback")
        .metric("p50_ms", p50)
        .metric("baseline_sync_ms", base)
        .metric("ratio_to_baseline", round(p50 / base, 2))
        .metric("empty_create_p50_ms", empty)
}

async fn sync_and_merge(orgs: usize, triples: usize, merges: usize, report: &mut Report) {
    let dir = tempfile::tempdir().unwrap();
    let nodes = federation(orgs, orgs, dir.path()).await;
    let (seed, src) = source(triples);
    let request = FederatedBranchRequest::new(fed(), name("main"), nodes[0].id, orgs_of(&nodes))
        .with_source(src);
    nodes[0].system.create_federated_branch(request, seed).await.unwrap();
    // sync-converge: 1% of the triples changed on every node (half removed, half added).
    let per_node = (triples / 100).max(2);
    let started = Instant::now();
    for (k, n) in nodes.iter().enumerate() {
        let removed: Vec<Triple> =
            (0..per_node / 2).map(|i| triple("src", k * per_node + i)).collect();
        let added: Vec<Triple> =
            (0..per_node - per_node / 2).map(|i| triple(&format!("n{k}"), i)).collect();
        let changes = ChangeSet::new(added, removed).unwrap();
        n.system.write(&name("main"), changes, "change").await.unwrap();
    }
    agree(&nodes, &name("main")).await;
    let converge = ms(started.elapsed());
    report.push(
        Case::new("sync-converge")
            .param("organizations", orgs as u64)
            .param("triples", triples as u64)
            .param("changed_per_node", per_node as u64)
            .metric("ms", converge),
    );
    // merge: a side branch of every organization, merged with every approval.
    let side = FederatedBranchRequest::new(fed(), name("side"), nodes[0].id, orgs_of(&nodes));
    nodes[0].system.create_federated_branch(side, Vec::new()).await.unwrap();
    let plain = FederatedBranchRequest::new(fed(), name("plain"), nodes[0].id, orgs_of(&nodes));
    nodes[0].system.create_federated_branch(plain, Vec::new()).await.unwrap();
    let mut merge_ms = Vec::new();
    let mut base_ms = Vec::new();
    let mut plan_ms = Vec::new();
    for m in 0..merges {
        let batch: Vec<Triple> = (0..per_node).map(|i| triple(&format!("m{m}"), i)).collect();
        nodes[1 % orgs]
            .system
            .write(&name("side"), ChangeSet::adding(batch.clone()), "side")
            .await
            .unwrap();
        agree(&nodes, &name("side")).await;
        // One node's share of the work: both states and the change set.
        let started = Instant::now();
        let (_, source_state) =
            nodes[0].system.replica(&name("side")).unwrap().state().await.unwrap();
        let (_, target_state) =
            nodes[0].system.replica(&name("main")).unwrap().state().await.unwrap();
        let (planned, _) =
            plan_merge(&source_state, &target_state, &FederatedMergePolicy::default());
        plan_ms.push(ms(started.elapsed()));
        assert_eq!(planned.added().len(), per_node);
        let started = Instant::now();
        let result = nodes[0]
            .system
            .merge_federated_branches(&name("side"), &name("main"), FederatedMergePolicy::default())
            .await
            .unwrap();
        let root = agree(&nodes, &name("main")).await;
        merge_ms.push(ms(started.elapsed()));
        assert_eq!(result.approved_by.len(), orgs);
        assert_eq!(root, result.state_root, "every replica holds exactly the merged state");
        // Baseline: the same change set written directly and synchronized.
        let started = Instant::now();
        nodes[0].system.write(&name("plain"), ChangeSet::adding(batch), "plain").await.unwrap();
        agree(&nodes, &name("plain")).await;
        base_ms.push(ms(started.elapsed()));
        eprintln!(
            "    merge {m}: {} ms, baseline {} ms, one node's plan {} ms",
            merge_ms[m], base_ms[m], plan_ms[m]
        );
    }
    // The next case starts on a quiet process.
    for n in &nodes {
        n.system.shutdown();
    }
    let p50 = quantile(&mut merge_ms, 0.5);
    let base = quantile(&mut base_ms, 0.5);
    let plan = quantile(&mut plan_ms, 0.5);
    report.push(
        Case::new("merge")
            .param("organizations", orgs as u64)
            .param("merges", merges as u64)
            .param("triples_per_merge", per_node as u64)
            .metric("p50_ms", p50)
            .metric("baseline_p50_ms", base)
            .metric("ratio_to_baseline", round(p50 / base, 2))
            .metric("plan_p50_ms", plan),
    );
}

async fn join(orgs: usize, triples: usize) -> Case {
    let dir = tempfile::tempdir().unwrap();
    // The last two nodes are unknown to the others at creation, then join: the first from a
    // member's snapshot (the default), the second, the baseline, from the whole history.
    let nodes = federation(orgs + 2, orgs, dir.path()).await;
    let members = &nodes[..orgs];
    let (seed, src) = source(triples);
    let built = Instant::now();
    let request = FederatedBranchRequest::new(fed(), name("big"), nodes[0].id, orgs_of(members))
        .with_source(src);
    nodes[0].system.create_federated_branch(request, seed).await.unwrap();
    let create_ms = ms(built.elapsed());
    let target = roots(members, &name("big")).await[0];
    nodes[orgs + 1].backend.set_snapshot_joins(false);
    let mut took = Vec::new();
    let mut decided = Vec::new();
    let mut shallow = Vec::new();
    for joiner in &nodes[orgs..] {
        // The joining node's certificate, made known to the proposer.
        let started = Instant::now();
        nodes[0].system.add_node(joiner.system.certificate().clone());
        nodes[0].system.join(&name("big"), joiner.id).await.unwrap();
        decided.push(ms(started.elapsed()));
        let status = loop {
            if let Ok(r) = joiner.system.replica(&name("big"))
                && let Ok(status) = r.status().await
                && status.state_root == target
            {
                break status;
            }
            // Catching up runs on its own; polling must not slow it down.
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        took.push(ms(started.elapsed()));
        shallow.push((status.shallow, status.base_commits, status.commits));
    }
    for n in &nodes {
        n.system.shutdown();
    }
    assert!(shallow[0].0, "the first joiner did not start from a snapshot: {shallow:?}");
    assert!(!shallow[1].0, "the baseline joiner started from a snapshot: {shallow:?}");
    Case::new("join")
        .param("organizations", orgs as u64)
        .param("triples", triples as u64)
        .metric("ms", took[0])
        .metric("history_ms", took[1])
        .metric("decision_ms", decided[0])
        .metric("history_decision_ms", decided[1])
        .metric("vs_history_ratio", round(took[1] / took[0].max(f64::MIN_POSITIVE), 3))
        .metric("base_commits", shallow[0].1 as f64)
        .metric("commits_held", shallow[0].2 as f64)
        .metric("history_commits_held", shallow[1].2 as f64)
        .metric("create_ms", create_ms)
}

fn main() {
    let cli = Cli::parse(
        "bench-federation",
        &["create-branch", "sync-converge", "merge", "join"],
        &[
            ("--orgs", 10.0),
            ("--triples", 100_000.0),
            ("--runs", 5.0),
            ("--merges", 5.0),
            ("--join-orgs", 3.0),
            ("--join-triples", 1_000_000.0),
        ],
    );
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut report = Report::new("federation", cli.json);
    let orgs = cli.get("--orgs") as usize;
    let triples = cli.get("--triples") as usize;
    rt.block_on(async {
        if cli.runs("create-branch") {
            eprintln!("  .. create-branch");
            report.push(create_branch(orgs, triples, cli.get("--runs") as usize).await);
        }
        if cli.runs("sync-converge") || cli.runs("merge") {
            eprintln!("  .. sync-converge, merge");
            sync_and_merge(orgs, triples, cli.get("--merges") as usize, &mut report).await;
        }
        if cli.runs("join") {
            eprintln!("  .. join");
            report.push(
                join(cli.get("--join-orgs") as usize, cli.get("--join-triples") as usize).await,
            );
        }
    });
    report.finish();
}
