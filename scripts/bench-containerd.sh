#!/usr/bin/env bash
# `ctr run` of the no-op bundle through containerd-shim-limes-v1 beside a
# native no-op under runc, on a containerd started for the run (needs root).
# Optimised build; writes bench-results/containerd.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo bench --locked -p containerd-shim-limes --bench ctr_run -- --out "$(pwd)/${BENCH_OUT:-bench-results}" "$@"
