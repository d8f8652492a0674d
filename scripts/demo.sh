#!/usr/bin/env bash
# The main demo on the embedded defaults (redb stores in a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --quiet -p llmkg-examples --bin federation-demo -- "$@"
