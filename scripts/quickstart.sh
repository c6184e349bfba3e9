#!/usr/bin/env bash
# The main job on a reference pack: build the Mandelbrot function into a
# signed bundle, verify it, install it into a local store and run it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build -p limes-pack -p limes
bin="${CARGO_TARGET_DIR:-target}/debug"
work="${CARGO_TARGET_DIR:-target}/quickstart"
mkdir -p "$work"
# The device's trusted keys and publisher pins, kept outside its store.
export LIMES_TRUST_DIR="$work/trust"
[ -f "$work/limes.key" ] || "$bin/limes-pack" keygen --dir "$work" --name limes
"$bin/limes-pack" build packs/mandelbrot --sign "$work/limes.key" --out-dir "$work"
"$bin/limes-pack" verify "$work/mandelbrot-0.1.0.limes" --key "$work/limes.pub"
# --force: re-running the quick start after a change replaces the earlier
# build of the same version (a device would refuse that without it).
"$bin/limes" --store "$work/store" install "$work/mandelbrot-0.1.0.limes" --trust "$work/limes.pub" --force
"$bin/limes" --store "$work/store" run mandelbrot --data output=checksum --timings
