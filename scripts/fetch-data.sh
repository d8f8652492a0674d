#!/usr/bin/env bash
# Fetches the real RDF data used by the federation demo, the RDF round-trip test, the W3C
# conformance test and the import benchmark into data/ (git-ignored; never committed). Idempotent:
# a package that is already unpacked is not fetched again.
#
#   data/rdf-vocabularies/  @zazuko/rdf-vocabularies 2023.1.19: 84 published vocabularies as
#                           N-Quads (package/ontologies/*.nq), one named graph per publisher
#   data/vocabulary-unit/   @vocabulary/unit 2.0.0: the current release of QUDT's unit
#                           vocabulary (package/unit.nq), a later release than the one above
#   data/w3c-rdf-tests/     the W3C RDF Working Group's conformance suites for N-Triples,
#                           N-Quads and Turtle ({ntriples,nquads,turtle}/, each a manifest.ttl
#                           with its test files; the W3C home of each suite is named in its
#                           README): no npm package ships them, so they are taken from the
#                           source distribution of rdflib 7.1.4 on PyPI, which keeps a copy of
#                           the W3C rdf-tests suites in test/data/suites/w3c/. Only those three
#                           directories and the suites' README and LICENSE are kept. Licence:
#                           the W3C Test Suite License and the W3C 3-clause BSD License (see
#                           turtle/LICENSE). Downloaded with pip, checked against the sha256
#                           below.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
    "@zazuko/rdf-vocabularies@2023.1.19 rdf-vocabularies"
    "@vocabulary/unit@2.0.0 vocabulary-unit"
)

# The W3C suites: the PyPI source distribution that carries them, its sha256, and the
# directories taken from it.
W3C_DIST="rdflib==7.1.4"
W3C_ARCHIVE="rdflib-7.1.4.tar.gz"
W3C_SHA256="fed46e24f26a788e2ab8e445f7077f00edcf95abb73bcef4b86cefa8b62dd174"
W3C_PREFIX="rdflib-7.1.4/test/data/suites/w3c"
W3C_SUITES=(ntriples nquads turtle)
W3C_DIR="w3c-rdf-tests"

fetch_w3c_suites() {
    [[ -f "data/$W3C_DIR/.complete" ]] && return 0
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
        echo "fetch-data: python3 with pip is required to download the W3C RDF test suites" >&2
        echo "fetch-data: ($W3C_DIST from PyPI). Install them (for example: apt-get install" >&2
        echo "fetch-data: python3-pip), then rerun ./scripts/fetch-data.sh" >&2
        exit 1
    fi
    echo "fetch-data: downloading $W3C_DIST (PyPI source distribution) for data/$W3C_DIR" >&2
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps --no-binary :all: \
        "$W3C_DIST" -d "$tmp/dist" >"$tmp/pip.log" 2>&1 || {
        cat "$tmp/pip.log" >&2
        echo "fetch-data: pip download $W3C_DIST failed" >&2
        exit 1
    }
    if [[ ! -f "$tmp/dist/$W3C_ARCHIVE" ]]; then
        echo "fetch-data: pip did not download $W3C_ARCHIVE" >&2
        exit 1
    fi
    python3 - "$tmp/dist/$W3C_ARCHIVE" "$W3C_SHA256" <<'PY' || exit 1
import hashlib, sys
path, expected = sys.argv[1], sys.argv[2]
digest = hashlib.sha256()
with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
if digest.hexdigest() != expected:
    sys.exit(f"fetch-data: sha256 mismatch for {path}: {digest.hexdigest()}, expected {expected}")
PY
    local members=("$W3C_PREFIX/README")
    for suite in "${W3C_SUITES[@]}"; do
        members+=("$W3C_PREFIX/$suite")
    done
    mkdir -p "$tmp/unpacked"
    tar -xzf "$tmp/dist/$W3C_ARCHIVE" -C "$tmp/unpacked" "${members[@]}"
    for suite in "${W3C_SUITES[@]}"; do
        if [[ ! -f "$tmp/unpacked/$W3C_PREFIX/$suite/manifest.ttl" ]]; then
            echo "fetch-data: $W3C_ARCHIVE has no $suite/manifest.ttl" >&2
            exit 1
        fi
    done
    mkdir -p data
    rm -rf "data/$W3C_DIR"
    mv "$tmp/unpacked/$W3C_PREFIX" "data/$W3C_DIR"
    touch "data/$W3C_DIR/.complete"
    rm -rf "$tmp"
    trap - EXIT
}

fetch_w3c_suites

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
