//! Shared helpers for the LLMKG Federation demos and benchmark binaries.
//!
//! The binaries are in `src/bin`: `federation-demo` (the main demo) and `bench-*` benchmarks,
//! each of which prints the benchmark JSON document described in `docs/BENCHMARKS.md` when
//! given `--json`.

pub mod bench;
pub mod local;
pub mod reconcile;
pub mod sync_cases;
pub mod synthetic;
