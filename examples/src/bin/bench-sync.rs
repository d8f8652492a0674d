//! Benchmark of replica sync:
//!
//! - `reconcile-ids`: the ids two sets of `n` 32-byte ids (1,000,000 by default) do not
//!   share, for 10 to 10,000 planted differences laid out at random or in one contiguous run
//!   of the sorted ids, with the rateless IBLT exchange of `llmkg_sync::riblt` and with the
//!   `negentropy` crate as the yardstick, in the same run;
//! - `sync-batching`: 10,000 commits to an empty replica over TCP + Noise, by the
//!   anti-entropy protocol and by one request per commit, in the same run;
//! - `sync-bandwidth`: two replicas of a 1,000,000-triple branch that differ in 1% of the
//!   triples: the bytes the protocol moves against shipping the whole state;
//! - `sync-scaling`: messages and bytes per node per converged write at 4, 16 and 64 nodes
//!   in the simulator (deterministic).
//!
//! ```text
//! cargo run --release -p llmkg-examples --bin bench-sync -- [--json] [--case NAME] [--n N]
//!     [--commits N] [--triples N]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use llmkg_examples::bench::{Cli, Report};
use llmkg_examples::reconcile::reconcile_ids_cases;
use llmkg_examples::sync_cases;

struct Args {
    json: bool,
    only: Option<String>,
    n: usize,
    commits: usize,
    triples: u64,
}

fn args() -> Args {
    let names: Vec<&str> = CASES.iter().map(|(n, _)| *n).collect();
    let cli = Cli::parse(
        "bench-sync",
        &names,
        &[("--n", 1_000_000.0), ("--commits", 10_000.0), ("--triples", 1_000_000.0)],
    );
    Args {
        json: cli.json,
        only: cli.only.clone(),
        n: cli.get("--n") as usize,
        commits: cli.get("--commits") as usize,
        triples: cli.get("--triples") as u64,
    }
}

type CaseFn = fn(&Args, &mut Report);

const CASES: &[(&str, CaseFn)] = &[
    ("reconcile-ids", |a, r| {
        for case in reconcile_ids_cases(a.n, &[10, 100, 1_000, 10_000]) {
            r.push(case);
        }
    }),
    ("sync-batching", |a, r| r.push(sync_cases::sync_batching(a.commits))),
    ("sync-bandwidth", |a, r| r.push(sync_cases::sync_bandwidth(a.triples, 10))),
    ("sync-scaling", |_, r| {
        for n in [4, 16, 64] {
            r.push(sync_cases::sync_scaling(n, 4, 1, None));
        }
        // The same with every difference found by set reconciliation over commit ids.
        for n in [4, 16, 64] {
            r.push(sync_cases::sync_scaling(n, 4, 1, Some(0)));
        }
    }),
];

fn main() {
    let a = args();
    let mut report = Report::new("sync", a.json);
    for (name, run) in CASES {
        if a.only.as_deref().is_some_and(|only| only != *name) {
            continue;
        }
        if !a.json {
            eprintln!("  .. {name}");
        }
        run(&a, &mut report);
    }
    report.finish();
}
