#!/usr/bin/env bash
# The functions a one-shot run of the static x86_64 device loader executes,
# for LLD to place first in its text (loader/build.rs explains why).
#
#   scripts/hot-symbols.sh           rebuild the release device loader, run it
#                                    under callgrind and rewrite
#                                    loader/link/hot-symbols-x86_64-musl.txt
#   scripts/hot-symbols.sh --check   how many of the list's names the release
#                                    device loader has; fails under 90%
#                                    (a dependency bump renamed them: rewrite)
#
# Rewriting needs valgrind (apt-get install valgrind). The runs: `limes
# --version`, `limes run` of an installed no-op (text and --json), and
# `limes run BUNDLE --trust KEY` (verify, stage, run).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
list=loader/link/hot-symbols-x86_64-musl.txt
exe="$target/x86_64-unknown-linux-musl/release/limes"

defined() { nm --defined-only "$exe" | awk '$2 ~ /^[tTwW]$/ {print $3}' | sort -u; }

if [ "${1:-}" = "--check" ]; then
    test -x "$exe" || { echo "no $exe: cargo build --release -p limes --bin limes --target x86_64-unknown-linux-musl" >&2; exit 1; }
    want=$(grep -v '^#' "$list" | grep -c .)
    have=$(comm -12 <(grep -v '^#' "$list" | grep . | sort -u) <(defined) | wc -l)
    echo "hot-symbols: $have of $want names in $list are in $exe"
    if [ $((have * 100)) -lt $((want * 90)) ]; then
        echo "the list is stale (names changed with a dependency or the toolchain): run scripts/hot-symbols.sh" >&2
        exit 1
    fi
    exit 0
fi

command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install valgrind" >&2; exit 1; }
cargo build --release --locked -p limes --bin limes --target x86_64-unknown-linux-musl
cargo build --release --locked -p limes-pack
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export LIMES_TRUST_DIR="$work/trust"
pack="$target/release/limes-pack"
"$pack" keygen --dir "$work" --quiet >/dev/null
"$pack" build packs/noop --sign "$work/limes.key" --out-dir "$work/out" --no-microvm --quiet >/dev/null
"$exe" --store "$work/store" install "$work"/out/noop-*.limes --trust "$work/limes.pub" >/dev/null
printf hello >"$work/body"
n=0
grind() {
    n=$((n + 1))
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/cg.$n" "$exe" "$@" >/dev/null 2>&1
}
grind --version
grind --store "$work/store" run noop --input "$work/body"
grind --store "$work/store" --json run noop --input "$work/body"
grind --store "$work/store" run "$work"/out/noop-*.limes --trust "$work/limes.pub" --input "$work/body"
# Names sorted (a rewrite after a small change is a small diff; the order
# within the hot code matters little: it spans about 1.3 MB), kept only if
# the binary defines them.
tmp="$list.tmp"
{
    echo "# Written by scripts/hot-symbols.sh: the functions a one-shot run of the"
    echo "# release x86_64 device loader executes, laid out first by LLD (loader/build.rs)."
    for i in $(seq "$n"); do
        grep -ohE '^c?fn=\([0-9]+\) .*' "$work/cg.$i" | sed -E 's/^c?fn=\([0-9]+\) //'
    done | LC_ALL=C sort -u | grep -Fxf <(defined)
} >"$tmp"
mv "$tmp" "$list"
echo "wrote $list: $(grep -vc '^#' "$list") functions"
