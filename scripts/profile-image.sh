#!/usr/bin/env bash
# Where the image pipeline spends its time, as Wasm (precompiled tier, named
# through Wasmtime's perf map: LIMES_PERF_MAP=1) and as the native build of
# the same crate: `perf record -e cpu-clock` over the same number of runs of
# each, then samples per function side by side (samples ~ time; both sides
# include process start-up). Run on an idle machine; needs linux-perf.
# Writes bench-results/image-profile.md.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-20}"
target="${CARGO_TARGET_DIR:-target}"
out="$(pwd)/${BENCH_OUT:-bench-results}"
work=$(mktemp -d)
export LIMES_TRUST_DIR="$work/trust"
trap 'rm -rf "$work"' EXIT
cargo build --release --locked -p limes -p limes-pack
limes="$target/release/limes"
pack="$target/release/limes-pack"
"$pack" keygen --dir "$work/key" >/dev/null
"$pack" build packs/image --sign "$work/key/limes.key" --out-dir "$work/out" --no-microvm --quiet
"$limes" --store "$work/store" install "$work"/out/image-*.limes --trust "$work/key/limes.pub" >/dev/null
native=$("$pack" native packs/image 2>/dev/null | tail -n 1)
input=packs/image/testdata/input-1024x768.jpg
# One request frame (see wit/README.md) for the native executable.
python3 - "$input" "$work/req.frame" <<'PY'
import struct, sys
body = open(sys.argv[1], 'rb').read()
p = struct.pack('<I', len(body)) + body + struct.pack('<I', 0xFFFFFFFF) + struct.pack('<I', 0)
open(sys.argv[2], 'wb').write(b'LMQ1' + struct.pack('<I', len(p)) + p)
PY
LIMES_PERF_MAP=1 perf record -q -e cpu-clock -F 2000 -o "$work/wasm.data" -- \
    sh -c "for i in \$(seq $runs); do '$limes' --store '$work/store' run image --input '$input' >/dev/null; done"
perf record -q -e cpu-clock -F 2000 -o "$work/native.data" -- \
    sh -c "for i in \$(seq $runs); do '$native' < '$work/req.frame' >/dev/null; done"
for side in wasm native; do
    perf report -i "$work/$side.data" --no-children --sort sym -q -g none -n -w 0,0,400 2>/dev/null >"$work/$side.txt"
done
mkdir -p "$out"
python3 - "$work/wasm.txt" "$work/native.txt" "$runs" >"$out/image-profile.md" <<'PY'
import re, subprocess, sys
def v0(syms):
    # Rust's v0 mangling (`_R...`, rustc >= 1.9x): binutils' c++filt reads
    # it; the crate hashes it prints (`image[7c70...]`) are dropped so that
    # the Wasm names match the native ones. Names the name section cut
    # short do not demangle and stay as they are.
    out = subprocess.run(['c++filt'], input='\n'.join(syms), capture_output=True, text=True).stdout.splitlines()
    # (and `3: usize` in const generics, which perf prints as `3`).
    return {s: re.sub(r'(\d+): [iu](?:size|8|16|32|64)\b', r'\1', re.sub(r'\[[0-9a-f]{16}\]', '', d)) for s, d in zip(syms, out)}
def unprefixed(sym):
    return re.sub(r'^wasm\[0\]::function\[\d+\]::', '', sym)
def demangle(sym):
    sym = unprefixed(sym)
    if sym.startswith('_R'):
        return V0.get(sym, sym)
    # perf may cut long names: the hash suffix is optional.
    m = re.match(r'_ZN(.*?)(?:17h[0-9a-f]{16}E)?$', sym)
    if not m:
        return sym
    s, out, i = m.group(1), [], 0
    while i < len(s) and s[i].isdigit():
        j = i
        while j < len(s) and s[j].isdigit():
            j += 1
        n = int(s[i:j]); out.append(s[j:j + n].lstrip('_')); i = j + n
    return '::'.join(out).replace('$LT$', '<').replace('$GT$', '>').replace('$u20$', ' ').replace('..', '::')
def names(path):
    return [unprefixed(l.split(']', 1)[1].strip()) for l in open(path) if ']' in l]
V0 = v0([n for n in names(sys.argv[1]) + names(sys.argv[2]) if n.startswith('_R')])
def load(path):
    d = {}
    for line in open(path):
        parts = line.split()
        if len(parts) < 4 or not parts[1].isdigit():
            continue
        name = demangle(line.split(']', 1)[1].strip()) + (' [kernel]' if '[k]' in line else '')
        d[name] = d.get(name, 0) + int(parts[1])
    return d
w, n = load(sys.argv[1]), load(sys.argv[2])
tw, tn = sum(w.values()), sum(n.values())
print(f"# Image pipeline: where Wasm loses\n\n{sys.argv[3]} runs each, `perf record -e cpu-clock` samples "
      f"(2 kHz), same machine, same run. Total: Wasm {tw}, native {tn} ({tw / tn:.2f}x).\n")
print("| function | Wasm samples | native samples | Wasm - native |\n|---|---|---|---|")
rows = sorted(set(w) | set(n), key=lambda k: (-(w.get(k, 0) - n.get(k, 0)), k))  # ties by name: the same page every run
for k in rows[:20]:
    print(f"| `{k[:90]}` | {w.get(k, 0)} | {n.get(k, 0)} | {w.get(k, 0) - n.get(k, 0):+d} |")
PY
cat "$out/image-profile.md"
