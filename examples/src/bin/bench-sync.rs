//! Benchmark of replication: set reconciliation against negentropy, batching over TCP,
//! bandwidth against shipping the whole state, and per-node cost as the federation grows.
//!
//! ```text
//! cargo run --release -p llmkg-examples --bin bench-sync -- [--json] [--case NAME]
//!     [--commits N] [--triples N]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use llmkg_examples::bench::Report;
use llmkg_examples::sync_cases;

struct Args {
    json: bool,
    only: Option<String>,
    commits: usize,
    triples: u64,
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-sync: {msg}");
    std::process::exit(2)
}

fn number(v: Option<String>, what: &str) -> u64 {
    v.and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or_else(|| fail(&format!("{what} needs a number")))
}

fn args() -> Args {
    let mut a = Args { json: false, only: None, commits: 10_000, triples: 1_000_000 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--case" => a.only = Some(it.next().unwrap_or_else(|| fail("--case needs a name"))),
            "--commits" => a.commits = number(it.next(), "--commits") as usize,
            "--triples" => a.triples = number(it.next(), "--triples"),
            "-h" | "--help" => {
                println!(
                    "bench-sync [--json] [--case reconcile-ids|sync-batching|sync-bandwidth|sync-scaling] [--commits N] [--triples N]"
                );
                std::process::exit(0);
            }
            other => fail(&format!("unknown argument {other}")),
        }
    }
    a
}

fn main() {
    let a = args();
    let wants = |case: &str| a.only.as_deref().is_none_or(|o| o == case);
    let mut report = Report::new("sync", a.json);
    if wants("sync-batching") {
        report.push(sync_cases::sync_batching(a.commits));
    }
    if wants("sync-bandwidth") {
        report.push(sync_cases::sync_bandwidth(a.triples, 10));
    }
    if wants("sync-scaling") {
        for n in [4, 16, 64] {
            report.push(sync_cases::sync_scaling(n, 4, 1));
        }
    }
    report.finish();
}
