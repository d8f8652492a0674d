//! Benchmark of the local versioned graph: commits (in memory and durable on redb),
//! materialization, pattern queries and the size of the indexed state.
//!
//! ```text
//! cargo run --release -p llmkg-examples --bin bench-graph -- [--json] [--triples N] [--commit-size N]
//! ```
#![allow(unsafe_code)] // the counting global allocator below
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use llmkg_examples::bench::{Case, Report, quantile, round};
use llmkg_examples::synthetic::{Generator, PREDICATES};
use llmkg_federation_core::{
    BranchName, ChangeSet, GraphState, ManualClock, MemoryStore, NodeKeypair, OrgId, Pattern,
    RedbStore, Repository, Store, Timestamp, Triple,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Counts live heap bytes, to measure the size of the indexed state exactly.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Args {
    json: bool,
    triples: usize,
    commit_size: usize,
    queries: usize,
}

fn args() -> Args {
    let mut a = Args { json: false, triples: 1_000_000, commit_size: 1_000, queries: 20_000 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| fail(&format!("{name} needs a number")))
        };
        match arg.as_str() {
            "--json" => a.json = true,
            "--triples" => a.triples = num("--triples"),
            "--commit-size" => a.commit_size = num("--commit-size").max(1),
            "--queries" => a.queries = num("--queries").max(1),
            "-h" | "--help" => {
                println!(
                    "bench-graph [--json] [--triples N (1000000)] [--commit-size N (1000)] [--queries N (20000)]"
                );
                std::process::exit(0);
            }
            other => fail(&format!("unknown argument {other}")),
        }
    }
    a
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-graph: {msg}");
    std::process::exit(2)
}

fn progress(json: bool, msg: &str) {
    if !json {
        eprintln!("  .. {msg}");
    }
}

fn repo<S: Store>(store: S) -> Repository<S> {
    Repository::new(
        store,
        NodeKeypair::from_secret_bytes([42; 32]),
        OrgId::new("bench").unwrap(),
        ManualClock::new(Timestamp::from_micros(1_700_000_000_000_000)),
    )
}

/// Commits every batch to `main`; returns the throughput in triples per second. The change
/// sets are built before the clock starts: what is timed is `Repository::commit` alone.
fn commit_all<S: Store>(repo: &mut Repository<S>, batches: &[Vec<Triple>]) -> (f64, usize) {
    let main = BranchName::new("main").unwrap();
    let changes: Vec<ChangeSet> =
        batches.iter().map(|b| ChangeSet::adding(b.iter().cloned())).collect();
    let total = changes.iter().map(|c| c.added().len()).sum::<usize>();
    let start = Instant::now();
    for c in changes {
        repo.commit(&main, c, "bench batch").unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    (total as f64 / elapsed, total)
}

fn latencies(state: &GraphState, patterns: &[Pattern]) -> (f64, f64, f64) {
    let mut samples = Vec::with_capacity(patterns.len());
    let mut results = 0usize;
    for p in patterns {
        let start = Instant::now();
        let page: Vec<_> = state.matching(p).take(100).collect();
        let dt = start.elapsed();
        results += page.len();
        samples.push(dt.as_secs_f64() * 1e6);
    }
    let mean_results = results as f64 / patterns.len() as f64;
    (quantile(&mut samples, 0.5), quantile(&mut samples, 0.99), mean_results)
}

fn main() {
    let a = args();
    let mut report = Report::new("graph", a.json);
    progress(a.json, &format!("generating {} triples", a.triples));
    let mut generator = Generator::new(1, "https://data.example.org/bench/");
    let all = generator.take(a.triples);
    let batches: Vec<Vec<Triple>> = all.chunks(a.commit_size).map(|c| c.to_vec()).collect();
    drop(all);

    progress(a.json, "commit-memory");
    let mut mem = repo(MemoryStore::new());
    let (mem_tps, total) = commit_all(&mut mem, &batches);
    report.push(
        Case::new("commit-memory")
            .param("triples", total)
            .param("commit_size", a.commit_size)
            .metric("triples_per_s", round(mem_tps, 0)),
    );
    drop(mem);

    progress(a.json, "commit-redb");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.redb");
    let mut durable = repo(RedbStore::open(&path).unwrap());
    let (redb_tps, _) = commit_all(&mut durable, &batches);
    let head = durable.head(&BranchName::new("main").unwrap()).unwrap().unwrap();
    drop(durable);
    let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    report.push(
        Case::new("commit-redb")
            .param("triples", total)
            .param("commit_size", a.commit_size)
            .metric("triples_per_s", round(redb_tps, 0))
            .metric("file_bytes", file_bytes)
            .metric("vs_memory_ratio", round(redb_tps / mem_tps, 3)),
    );
    drop(batches);

    progress(a.json, "materialize");
    let mut reopened = repo(RedbStore::open(&path).unwrap());
    let start = Instant::now();
    let state = reopened.materialize(head).unwrap();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    drop(reopened);
    report.push(
        Case::new("materialize")
            .param("triples", state.len())
            .param("commits", total.div_ceil(a.commit_size))
            .metric("ms", round(ms, 1))
            .metric("triples_per_s", round(state.len() as f64 / (ms / 1e3), 0)),
    );

    progress(a.json, "queries");
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let sample: Vec<Triple> = {
        let all: Vec<_> = state.iter().collect();
        (0..a.queries).map(|_| all[rng.random_range(0..all.len())].to_triple()).collect()
    };
    let by = |f: fn(&Triple) -> Pattern| sample.iter().map(f).collect::<Vec<_>>();
    for (case, patterns) in [
        ("query-s", by(|t| Pattern::any().with_subject(t.subject().clone()))),
        ("query-p", by(|t| Pattern::any().with_predicate(t.predicate().clone()))),
        ("query-o", by(|t| Pattern::any().with_object(t.object().clone()))),
    ] {
        let (p50, p99, mean) = latencies(&state, &patterns);
        report.push(
            Case::new(case)
                .param("queries", patterns.len())
                .param("page", 100)
                .metric("p50_us", round(p50, 3))
                .metric("p99_us", round(p99, 3))
                .metric("mean_results", round(mean, 1)),
        );
    }

    progress(a.json, "state-size");
    // Sizes are measured by cloning (a clone allocates exactly its nodes and entries, without
    // spare capacity), counting live heap bytes with the global allocator above; so caches
    // of the store or the repository do not count.
    let before = LIVE.load(Ordering::Relaxed);
    let copy = state.clone();
    let state_bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    drop(copy);
    let before = LIVE.load(Ordering::Relaxed);
    let merkle = state.merkle().clone();
    let merkle_bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    drop(merkle);
    let n = state.len().max(1) as f64;
    let index_and_dict = state_bytes.saturating_sub(merkle_bytes);
    report.push(
        Case::new("state-size")
            .param("triples", state.len())
            .param("terms", state.term_count())
            .param("predicates", PREDICATES)
            .metric("bytes_per_triple", round(index_and_dict as f64 / n, 1))
            .metric("merkle_bytes_per_triple", round(merkle_bytes as f64 / n, 1))
            .metric("total_bytes_per_triple", round(state_bytes as f64 / n, 1)),
    );
    report.finish();
}
