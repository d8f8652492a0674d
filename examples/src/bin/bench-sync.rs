//! Benchmark of replica sync: `reconcile-ids` finds the ids two sets of `n` 32-byte ids
//! (1,000,000 by default) do not share, for 10 to 10,000 planted differences laid out at
//! random or in one contiguous run of the sorted ids, with the rateless IBLT exchange of
//! `llmkg_sync::riblt` and with the `negentropy` crate as the yardstick.
//!
//! ```text
//! cargo run --release -p llmkg-examples --bin bench-sync -- [--json] [--case NAME] [--n N]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use llmkg_examples::bench::Report;
use llmkg_examples::reconcile::reconcile_ids_cases;

struct Args {
    json: bool,
    only: Option<String>,
    n: usize,
}

fn args() -> Args {
    let mut a = Args { json: false, only: None, n: 1_000_000 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--n" => {
                a.n = it
                    .next()
                    .and_then(|v| v.replace('_', "").parse().ok())
                    .unwrap_or_else(|| fail("--n needs a number"))
            }
            "--case" => a.only = Some(it.next().unwrap_or_else(|| fail("--case needs a name"))),
            "-h" | "--help" => {
                let names: Vec<&str> = CASES.iter().map(|(n, _)| *n).collect();
                println!("bench-sync [--json] [--case {}] [--n N (1000000)]", names.join("|"));
                std::process::exit(0);
            }
            other => fail(&format!("unknown argument {other}")),
        }
    }
    if let Some(only) = &a.only
        && !CASES.iter().any(|(n, _)| n == only)
    {
        fail(&format!("unknown case {only}"));
    }
    a
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-sync: {msg}");
    std::process::exit(2)
}

type CaseFn = fn(&Args, &mut Report);

const CASES: &[(&str, CaseFn)] = &[("reconcile-ids", |a, r| {
    for case in reconcile_ids_cases(a.n, &[10, 100, 1_000, 10_000]) {
        r.push(case);
    }
})];

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
