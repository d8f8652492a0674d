#!/usr/bin/env bash
# The main demo: four organizations version real published vocabularies together (redb
# stores in a temporary directory). Fetches the RDF data into data/ first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-data.sh
exec cargo run --release --quiet -p llmkg-examples --bin federation-demo -- "$@"
