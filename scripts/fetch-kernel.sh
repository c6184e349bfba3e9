#!/usr/bin/env bash
# Fetch a stock Debian kernel for booting microVM images in tests and
# benchmarks, without installing it: `apt-get download` the newest
# linux-image-6.1.0-*-amd64 and unpack its bzImage. Prints the kernel path.
# The result is kept in $LIMES_KERNEL_DIR (default /var/tmp/limes-kernel).
set -euo pipefail
dir="${LIMES_KERNEL_DIR:-/var/tmp/limes-kernel}"
link="$dir/vmlinuz"
if [ -s "$link" ]; then
    echo "$link"
    exit 0
fi
mkdir -p "$dir"
pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -n 1)
if [ -z "$pkg" ]; then
    [ "$(id -u)" = 0 ] && apt-get update -qq
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -n 1)
fi
[ -n "$pkg" ] || { echo "no linux-image-6.1.0-*-amd64 package found (apt-get update?)" >&2; exit 1; }
tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1)
dpkg-deb --fsys-tarfile "$tmp"/*.deb | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*'
mv "$tmp"/boot/vmlinuz-* "$dir/"
ln -sfn "$(basename "$(ls "$dir"/vmlinuz-* | sort -V | tail -n 1)")" "$link"
echo "$link"
