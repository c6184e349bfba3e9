#!/usr/bin/env bash
# Install what building and testing limes-pack needs on a fresh Debian
# machine with rustup: the Rust targets and the Debian tools the tests use.
# Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The toolchain this repository pins (rust-toolchain.toml: Wasmtime 50 needs
# Rust 1.97). rustup installs a pinned toolchain on first use only where
# auto-install is on; CI machines turn it off (RUSTUP_AUTO_INSTALL=0), so it
# is installed here, with its components and targets, before any cargo runs.
pinned=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup toolchain list | grep -q "^$pinned-"; then
    rustup toolchain install "$pinned" --profile minimal -c rustfmt -c clippy \
        -t wasm32-wasip2,x86_64-unknown-linux-musl,x86_64-unknown-none,aarch64-unknown-linux-musl
fi

# x86_64-unknown-none: the Hermit boot loader (no_std, stable).
# aarch64-unknown-linux-musl: the static loader for ARM64 devices.
need_targets=(wasm32-wasip2 x86_64-unknown-linux-musl x86_64-unknown-none aarch64-unknown-linux-musl)
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
    [musl-gcc]=musl-tools      # static builds: microVM images, the device loader (its C: ring, mimalloc, zstd)
    [qemu-system-x86_64]=qemu-system-x86   # boots microVM images (TCG when KVM cannot)
    [docker-registry]=docker-registry      # a real OCI registry for push/pull tests
    [htpasswd]=apache2-utils               # its basic-auth variant
    [zstd]=zstd                            # `tar --zstd` in the interop tests
    [kill]=procps                          # signals to `limes serve` in tests
    [protoc]=protobuf-compiler             # containerd-shim-wasm's ttrpc/CRI codegen
    [pkg-config]=pkg-config                # finds libseccomp for the shim
    [aarch64-linux-gnu-gcc]=gcc-aarch64-linux-gnu  # the aarch64 loader's C (ring, mimalloc, zstd) and its link (.cargo/config.toml)
    [qemu-aarch64-static]=qemu-user-static  # runs the aarch64 loader in the tests
)
# Checked by package name: the libraries the containerd shim links, and
# runc (containerd's runtime for the pod sandbox; in /usr/sbin, which a
# non-root PATH may not search).
# python3-venv: scripts/fetch-wasmtime.sh installs the pinned Wasmtime CLI
# wheel (the benchmark smoke run's `wasmtime serve`) into a venv.
# libc6-dev-arm64-cross: the headers the aarch64 C dependencies compile
# against (Rust's musl target links its own libc).
libs=(libseccomp-dev libdbus-1-dev runc python3-venv libc6-dev-arm64-cross)
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

# aarch64 executables run through qemu-user (binfmt_misc), as on a CI
# runner set up for multi-arch builds: the aarch64 loader's `serve` starts
# its workers as the same executable, which the kernel must know how to run.
# Needs root (this machine's CI runs as root); skipped when registered.
binfmt=/proc/sys/fs/binfmt_misc
if [ ! -e "$binfmt/qemu-aarch64" ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    [ -e "$binfmt/register" ] || $SUDO mount -t binfmt_misc binfmt_misc "$binfmt"
    # Debian's rule: flags F (the interpreter is opened now, so it works
    # in other mount namespaces), O, P (argv[0] kept).
    $SUDO sh -c "cat /usr/lib/binfmt.d/qemu-aarch64.conf > $binfmt/register"
fi

# A stock Debian kernel for microVM tests (downloaded, not installed).
"$(dirname "$0")/fetch-kernel.sh" >/dev/null
# containerd 1.7 for the containerd-shim tests (Debian 13's package, unpacked).
"$(dirname "$0")/fetch-containerd.sh" >/dev/null
