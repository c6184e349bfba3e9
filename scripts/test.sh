#!/usr/bin/env bash
# The whole test suite: unit tests, end-to-end tests of the real binaries
# (they build every reference pack, run it natively and under Wasmtime,
# sign, verify, tamper, install and run bundles).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --locked "$@"
