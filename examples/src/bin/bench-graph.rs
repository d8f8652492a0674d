//! Benchmark of the local versioned graph: commits (in memory and durable on redb),
//! materialization (a full replay from the root), reopening a durable branch to its first
//! query, receiving commits in order onto a large branch, pattern queries, the size of the indexed state, and importing real
//! N-Triples (`import-ntriples`, which needs the data of `./scripts/fetch-data.sh`).
//!
//! `import-ntriples`, `commit-memory` and `state-size` also measure oxigraph (its in-memory
//! store, the Rust RDF store users would otherwise pick) on exactly the same input in the same
//! run, and report our ratio against it.
//!
//! ```text
//! cargo run --release -p llmkg-examples --bin bench-graph -- [--json] [--triples N] [--commit-size N]
//! ```
#![allow(unsafe_code)] // the counting global allocator below
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use llmkg_examples::bench::{Case, Report, peak_rss_bytes, quantile, round};
use llmkg_examples::synthetic::{Generator, PREDICATES};
use llmkg_federation_core::rdf::{self, BlankNodeScope, ExportOptions, Format, ImportOptions};
use llmkg_federation_core::{
    BranchName, ChangeSet, GraphState, LiteralKind, ManualClock, MemoryStore, NodeKeypair, OrgId,
    Pattern, RedbStore, Repository, Store, Term, Timestamp, Triple,
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
    import_runs: usize,
    /// Run only this case (`import-ntriples` or `commit-memory`), for profiling.
    case: Option<String>,
    /// Internal: import this N-Triples file and print the measurements (one child process
    /// per run, so that its peak RSS is the import's alone).
    import_child: Option<PathBuf>,
    /// Internal: the same for oxigraph's in-memory bulk loader.
    oxigraph_import_child: Option<PathBuf>,
    /// Write the import-ntriples input file there and exit (for profiling).
    write_corpus: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        json: false,
        triples: 1_000_000,
        commit_size: 1_000,
        queries: 20_000,
        import_runs: 3,
        case: None,
        import_child: None,
        oxigraph_import_child: None,
        write_corpus: None,
    };
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
            "--import-runs" => a.import_runs = num("--import-runs").max(1),
            "--case" => {
                let case = it.next().unwrap_or_else(|| fail("--case needs a name"));
                if !["import-ntriples", "commit-memory"].contains(&case.as_str()) {
                    fail("--case runs import-ntriples or commit-memory alone; without it, all run");
                }
                a.case = Some(case);
            }
            "--import-child" => {
                a.import_child = Some(
                    it.next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| fail("--import-child needs a path")),
                )
            }
            "--oxigraph-import-child" => {
                a.oxigraph_import_child = Some(
                    it.next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| fail("--oxigraph-import-child needs a path")),
                )
            }
            "--write-corpus" => {
                a.write_corpus = Some(
                    it.next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| fail("--write-corpus needs a path")),
                )
            }
            "-h" | "--help" => {
                println!(
                    "bench-graph [--json] [--triples N (1000000)] [--commit-size N (1000)] [--queries N (20000)] [--import-runs N (3)] [--case import-ntriples|commit-memory]"
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

/// Opens the redb file at `path`, reaches the state of `main` and answers one query: the
/// time from nothing in memory to the first answer, in ms. Checks the state is `expected`'s.
fn reopen_to_first_query(path: &Path, expected: &GraphState) -> f64 {
    let probe = expected.iter().next().map(|t| t.to_triple()).unwrap();
    let start = Instant::now();
    let mut reopened = repo(RedbStore::open(path).unwrap());
    let state = reopened.state(&BranchName::new("main").unwrap()).unwrap();
    let hits = state.matching(&Pattern::any().with_subject(probe.subject().clone())).count();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    assert!(hits >= 1);
    assert_eq!(state.len(), expected.len());
    ms
}

/// What `receive_onto` measured.
struct Received {
    /// Triples per second received (and verified, stored, fast-forwarded to).
    receive_tps: f64,
    /// Triples per second the sender committed, onto the same branch, durably.
    sender_tps: f64,
    /// Triples sent.
    triples: usize,
}

/// `receive-redb`: a sender holding a copy of the branch at `path` commits as many new
/// triples as the branch holds on top of it (timed: `commit-onto-redb`, the same work done
/// locally on a branch of the same size); the branch's own repository, with its state in
/// memory, then receives those commits in order and fast-forwards to the last.
fn receive_onto(path: &Path, sender_path: &Path, generator: &mut Generator, a: &Args) -> Received {
    let main = BranchName::new("main").unwrap();
    std::fs::copy(path, sender_path).unwrap();
    let more = generator.take(a.triples);
    let (envelopes, sender_tps): (Vec<Vec<u8>>, f64) = {
        let mut sender = repo(RedbStore::open(sender_path).unwrap());
        sender.state(&main).unwrap();
        let batches: Vec<ChangeSet> =
            more.chunks(a.commit_size).map(|b| ChangeSet::adding(b.iter().cloned())).collect();
        let start = Instant::now();
        let mut ids = Vec::new();
        for batch in batches {
            ids.push(sender.commit(&main, batch, "more").unwrap());
        }
        let tps = more.len() as f64 / start.elapsed().as_secs_f64();
        (ids.iter().map(|id| sender.store().object(&(*id).into()).unwrap().unwrap()).collect(), tps)
    };
    let mut receiver = repo(RedbStore::open(path).unwrap());
    receiver.state(&main).unwrap();
    let start = Instant::now();
    let mut last = None;
    for e in &envelopes {
        last = Some(receiver.receive(e).unwrap());
    }
    let outcome = receiver.merge(&main, last.unwrap(), "take the received commits").unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert!(matches!(outcome, llmkg_federation_core::MergeOutcome::FastForward(_)));
    assert!(receiver.state(&main).unwrap().len() > more.len());
    Received { receive_tps: more.len() as f64 / elapsed, sender_tps, triples: more.len() }
}

/// The live heap bytes of the texts `state`'s terms hold (an IRI, a label, a literal's value
/// and its datatype or language tag), each allocation once however many terms share it:
/// copies of them in the same shared form, counted by the global allocator.
fn term_text_bytes(state: &GraphState) -> usize {
    let mut seen: HashSet<*const u8> = HashSet::new();
    let mut texts: Vec<&str> = Vec::new();
    for t in state.iter() {
        for term in [t.subject, t.predicate, t.object] {
            let (text, qualifier) = match term {
                Term::Iri(iri) => (iri.as_str(), None),
                Term::Blank(b) => (b.label(), None),
                Term::Literal(l) => (
                    l.value(),
                    match l.kind() {
                        LiteralKind::String => None,
                        LiteralKind::Typed(dt) => Some(dt.as_str()),
                        LiteralKind::Language(tag) => Some(tag.as_str()),
                    },
                ),
            };
            // Texts are told apart by where they live: equal texts held apart count twice.
            for text in std::iter::once(text).chain(qualifier) {
                if seen.insert(text.as_ptr()) {
                    texts.push(text);
                }
            }
        }
    }
    drop(seen);
    let mut copies: Vec<std::sync::Arc<str>> = Vec::with_capacity(texts.len());
    let before = LIVE.load(Ordering::Relaxed);
    copies.extend(texts.iter().map(|t| std::sync::Arc::from(*t)));
    LIVE.load(Ordering::Relaxed).saturating_sub(before)
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

/// The N-Quads files of the benchmark corpus (see `scripts/fetch-data.sh`): every
/// vocabulary of `@zazuko/rdf-vocabularies` 2023.1.19 and the current release of QUDT's unit
/// vocabulary (`@vocabulary/unit` 2.0.0).
fn rdf_corpus() -> Result<Vec<PathBuf>, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let dir = root.join("rdf-vocabularies/package/ontologies");
    let hint = "the import-ntriples case needs the real RDF data: run ./scripts/fetch-data.sh";
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{hint} ({}: {e})", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "nq"))
        .collect();
    files.sort();
    let unit = root.join("vocabulary-unit/package/unit.nq");
    if files.len() < 80 || !unit.is_file() {
        return Err(format!("{hint} (incomplete data in {})", root.display()));
    }
    files.push(unit);
    Ok(files)
}

/// Converts the corpus to one N-Triples file of distinct triples, in file order (blank nodes
/// scoped per publisher graph, so that generic labels of different publishers stay apart).
/// Returns the number of triples written.
fn write_corpus_ntriples(files: &[PathBuf], out: &Path) -> usize {
    let mut seen: HashSet<Triple> = HashSet::new();
    let mut writer = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    for f in files {
        let reader = std::io::BufReader::new(std::fs::File::open(f).unwrap());
        let options = ImportOptions::new().blank_nodes(BlankNodeScope::Graph);
        let dataset = rdf::read(reader, Format::NQuads, options)
            .unwrap_or_else(|e| fail(&format!("{}: {e}", f.display())));
        let mut state = GraphState::new();
        for (_, triples) in dataset.iter() {
            for t in triples {
                if seen.insert(t.clone()) {
                    state.insert(t).unwrap();
                }
            }
        }
        rdf::write(&state, &mut writer, Format::NTriples, &ExportOptions::new()).unwrap();
    }
    std::io::Write::flush(&mut writer).unwrap();
    seen.len()
}

/// The child side of `import-ntriples`: parse only, then import into a fresh in-memory
/// repository; prints `parse_s import_s triples peak_rss_bytes`.
fn import_child(path: &Path) {
    let open = || std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let start = Instant::now();
    let parsed = rdf::read(open(), Format::NTriples, ImportOptions::new()).unwrap();
    let parse_s = start.elapsed().as_secs_f64();
    let n = parsed.len();
    drop(parsed);
    let mut mem = repo(MemoryStore::new());
    let main = BranchName::new("main").unwrap();
    let start = Instant::now();
    let report = mem.import(&main, open(), Format::NTriples, ImportOptions::new()).unwrap();
    let import_s = start.elapsed().as_secs_f64();
    assert_eq!(report.added, n);
    println!("{parse_s} {import_s} {n} {}", peak_rss_bytes().unwrap_or(0));
}

/// The child side of `import-ntriples` for oxigraph: its bulk loader into a fresh in-memory
/// store, from the same file; prints `0 import_s triples peak_rss_bytes` (the same shape as
/// [`import_child`], without a parse-only run).
fn oxigraph_import_child(path: &Path) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let start = Instant::now();
    let store = oxigraph::store::Store::new().unwrap();
    let mut loader = store.bulk_loader();
    loader.load_from_reader(oxigraph::io::RdfFormat::NTriples, file).unwrap();
    loader.commit().unwrap();
    let import_s = start.elapsed().as_secs_f64();
    let n = store.len().unwrap();
    println!("0 {import_s} {n} {}", peak_rss_bytes().unwrap_or(0));
}

/// Runs `runs` child processes of this binary with `flag path`; returns the run with the
/// median import time as `(parse_s, import_s, peak_rss_bytes, triples_in_store)`.
///
/// Oxigraph's store keeps typed literals of the XSD numeric, boolean and date types by value,
/// so lexical variants of one value (`"01"` and `"1"` as `xsd:integer`) become one triple:
/// its store may hold a few triples fewer than the file (3 of the 240,857 here). Both sides
/// parse and load the same file; the rates are over the file's triples.
fn import_runs(flag: &str, path: &Path, runs: usize, triples: usize) -> (f64, f64, u64, usize) {
    let exe = std::env::current_exe().unwrap();
    let mut out_runs: Vec<(f64, f64, u64, usize)> = Vec::new();
    for _ in 0..runs {
        let out = std::process::Command::new(&exe).arg(flag).arg(path).output().unwrap();
        if !out.status.success() {
            fail(&format!("import child failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<f64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        let [parse_s, import_s, n, rss] = f[..] else {
            fail(&format!("bad child output {text:?}"))
        };
        // A few fewer (see above), never more.
        if n as usize > triples || (n as usize) < triples - triples / 1000 {
            fail(&format!("{flag}: the child loaded {n} triples, expected {triples}"));
        }
        out_runs.push((parse_s, import_s, rss as u64, n as usize));
    }
    out_runs.sort_by(|x, y| x.1.total_cmp(&y.1));
    out_runs[out_runs.len() / 2]
}

fn import_ntriples(a: &Args, files: &[PathBuf], report: &mut Report) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.nt");
    let triples = write_corpus_ntriples(files, &path);
    let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let (parse_s, import_s, rss, loaded) =
        import_runs("--import-child", &path, a.import_runs, triples);
    assert_eq!(loaded, triples);
    let (_, ox_s, ox_rss, ox_loaded) =
        import_runs("--oxigraph-import-child", &path, a.import_runs, triples);
    let ox_tps = triples as f64 / ox_s;
    report.push(
        Case::new("import-ntriples")
            .param("triples", triples)
            .param("files", files.len())
            .param("file_bytes", file_bytes)
            .param("runs", a.import_runs)
            .metric("triples_per_s", round(triples as f64 / import_s, 0))
            .metric("ms", round(import_s * 1e3, 1))
            .metric("parse_only_triples_per_s", round(triples as f64 / parse_s, 0))
            .metric("parse_share_ratio", round(parse_s / import_s, 3))
            .metric("peak_rss_bytes", rss)
            .metric("peak_rss_bytes_per_triple", round(rss as f64 / triples as f64, 1))
            .metric("oxigraph_triples_per_s", round(ox_tps, 0))
            .metric("oxigraph_peak_rss_bytes", ox_rss)
            .metric("oxigraph_triples_in_store", ox_loaded)
            .metric("vs_oxigraph_ratio", round(triples as f64 / import_s / ox_tps, 3))
            .metric("rss_vs_oxigraph_ratio", round(rss as f64 / ox_rss.max(1) as f64, 3)),
    );
}

/// Oxigraph's in-memory store taking the same change sets, one transaction each: returns
/// its throughput in triples per second, and the live heap bytes of the store holding them
/// all (counted by the global allocator, like our `state-size`). The batches are converted
/// to oxigraph's terms (through N-Triples) before the clock starts.
fn oxigraph_commits(batches: &[Vec<Triple>]) -> (f64, usize) {
    use oxigraph::io::{RdfFormat, RdfParser};
    let quads: Vec<Vec<oxigraph::model::Quad>> = batches
        .iter()
        .map(|batch| {
            let text: String = batch.iter().map(|t| format!("{t}\n")).collect();
            RdfParser::from_format(RdfFormat::NTriples)
                .for_slice(text.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap()
        })
        .collect();
    let total: usize = quads.iter().map(Vec::len).sum();
    let before = LIVE.load(Ordering::Relaxed);
    let store = oxigraph::store::Store::new().unwrap();
    let start = Instant::now();
    for batch in &quads {
        let mut transaction = store.start_transaction().unwrap();
        transaction.extend(batch);
        transaction.commit().unwrap();
    }
    let tps = total as f64 / start.elapsed().as_secs_f64();
    let bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    // Lexical variants of one typed value are one triple in oxigraph (see `import_runs`).
    assert!(store.len().unwrap() <= total && store.len().unwrap() >= total - total / 1000);
    (tps, bytes)
}

fn main() {
    let a = args();
    if let Some(path) = &a.import_child {
        import_child(path);
        return;
    }
    if let Some(path) = &a.oxigraph_import_child {
        oxigraph_import_child(path);
        return;
    }
    let corpus = rdf_corpus().unwrap_or_else(|e| fail(&e));
    if let Some(path) = &a.write_corpus {
        let n = write_corpus_ntriples(&corpus, path);
        eprintln!("wrote {n} triples to {}", path.display());
        return;
    }
    let mut report = Report::new("graph", a.json);
    if a.case.as_deref() != Some("commit-memory") {
        progress(a.json, "import-ntriples");
        import_ntriples(&a, &corpus, &mut report);
        if a.case.is_some() {
            report.finish();
            return;
        }
    }
    progress(a.json, &format!("generating {} triples", a.triples));
    let mut generator = Generator::new(1, "https://data.example.org/bench/");
    let all = generator.take(a.triples);
    let batches: Vec<Vec<Triple>> = all.chunks(a.commit_size).map(|c| c.to_vec()).collect();
    drop(all);

    progress(a.json, "commit-memory");
    let mut mem = repo(MemoryStore::new());
    let (mem_tps, total) = commit_all(&mut mem, &batches);
    drop(mem);
    progress(a.json, "commit-memory (oxigraph)");
    let (ox_commit_tps, ox_state_bytes) = oxigraph_commits(&batches);
    report.push(
        Case::new("commit-memory")
            .param("triples", total)
            .param("commit_size", a.commit_size)
            .metric("triples_per_s", round(mem_tps, 0))
            .metric("oxigraph_triples_per_s", round(ox_commit_tps, 0))
            .metric("vs_oxigraph_ratio", round(mem_tps / ox_commit_tps, 3)),
    );
    if a.case.is_some() {
        report.finish();
        return;
    }

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

    // Reopening as after a crash: only the checkpoints written on the way are there.
    progress(a.json, "reopen-after-crash");
    let crash_ms = reopen_to_first_query(&path, &state);
    report.push(
        Case::new("reopen-after-crash")
            .param("triples", state.len())
            .metric("ms", round(crash_ms, 1))
            .metric("vs_materialize_ratio", round(crash_ms / ms, 3)),
    );
    // A clean shutdown checkpoints the head first.
    progress(a.json, "checkpoint");
    let (checkpoint_ms, chunks) = {
        let mut closing = repo(RedbStore::open(&path).unwrap());
        closing.state_at(head).unwrap();
        let start = Instant::now();
        let chunks = closing.checkpoint(head).unwrap();
        (start.elapsed().as_secs_f64() * 1e3, chunks)
    };
    report.push(
        Case::new("checkpoint")
            .param("triples", state.len())
            .metric("ms", round(checkpoint_ms, 1))
            .metric("chunks_written", chunks),
    );
    progress(a.json, "reopen");
    let reopen_ms = reopen_to_first_query(&path, &state);
    report.push(
        Case::new("reopen")
            .param("triples", state.len())
            .metric("ms", round(reopen_ms, 1))
            .metric("vs_materialize_ratio", round(reopen_ms / ms, 3)),
    );

    progress(a.json, "receive-redb");
    let Received { receive_tps, sender_tps, triples: received } =
        receive_onto(&path, &dir.path().join("sender.redb"), &mut generator, &a);
    report.push(
        Case::new("commit-onto-redb")
            .param("triples", received)
            .param("commit_size", a.commit_size)
            .param("branch_triples", state.len())
            .metric("triples_per_s", round(sender_tps, 0))
            .metric("vs_commit_ratio", round(sender_tps / redb_tps, 3)),
    );
    report.push(
        Case::new("receive-redb")
            .param("triples", received)
            .param("commit_size", a.commit_size)
            .param("branch_triples", state.len())
            .metric("triples_per_s", round(receive_tps, 0))
            .metric("vs_commit_ratio", round(receive_tps / redb_tps, 3))
            .metric("vs_commit_onto_ratio", round(receive_tps / sender_tps, 3)),
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
    // of the store or the repository do not count. A clone shares its terms' text with the
    // original, so the text is measured apart (`term_text_bytes`).
    let before = LIVE.load(Ordering::Relaxed);
    let copy = state.clone();
    let structure_bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    drop(copy);
    let state_bytes = structure_bytes + term_text_bytes(&state);
    let before = LIVE.load(Ordering::Relaxed);
    let merkle = state.merkle().clone();
    let merkle_bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    drop(merkle);
    let n = state.len().max(1) as f64;
    let index_and_dict = state_bytes.saturating_sub(merkle_bytes);
    let ox_per_triple = ox_state_bytes as f64 / total.max(1) as f64;
    report.push(
        Case::new("state-size")
            .param("triples", state.len())
            .param("terms", state.term_count())
            .param("predicates", PREDICATES)
            .metric("bytes_per_triple", round(index_and_dict as f64 / n, 1))
            .metric("merkle_bytes_per_triple", round(merkle_bytes as f64 / n, 1))
            .metric("total_bytes_per_triple", round(state_bytes as f64 / n, 1))
            .metric("oxigraph_bytes_per_triple", round(ox_per_triple, 1))
            .metric("vs_oxigraph_ratio", round(state_bytes as f64 / n / ox_per_triple, 3)),
    );
    report.finish();
}
