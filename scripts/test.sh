#!/usr/bin/env bash
# The whole test suite: unit, property, simulation and end-to-end tests of every crate.
#
# Works on a fresh machine: the tests that need JavaScript reference implementations (the
# `ipfs-unixfs-importer` CID parity test, the Helia bitswap interop test) install their own npm
# packages through scripts/setup-js.sh. Benches are compiled (not run) so they cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked "$@"
cargo test --workspace --locked --benches --no-run
