#!/usr/bin/env bash
# Fetch containerd 1.7 for the Kubernetes-path tests, without installing
# it: Debian 12's containerd (1.6.20) cannot run images whose layers are
# not filesystems (runwasi needs 1.6.25+/1.7.7+), so take the pinned Debian 13
# package with `apt-get download` from a private trixie source list (the
# system's apt sources are not touched) and unpack it with `dpkg-deb -x`.
# It runs with Debian 12's runc. Prints the directory holding `containerd`
# and `ctr`. Kept in $LIMES_CONTAINERD_DIR (default /var/tmp/limes-containerd).
set -euo pipefail
version="1.7.24~ds1-6+deb13u1"
dir="${LIMES_CONTAINERD_DIR:-/var/tmp/limes-containerd}"
bin="$dir/$version/usr/bin"
if [ -x "$bin/containerd" ] && [ -x "$bin/ctr" ]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/apt/lists/partial" "$tmp/apt/cache/archives/partial" "$tmp/dl"
cat >"$tmp/apt/sources.list" <<LIST
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security trixie-security main
LIST
opts=(-o "Dir::Etc::SourceList=$tmp/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$tmp/apt/lists" -o "Dir::Cache=$tmp/apt/cache" -o Dir::State::status=/dev/null
      -o APT::Sandbox::User=root)
apt-get "${opts[@]}" update -qq
(cd "$tmp/dl" && apt-get "${opts[@]}" download -q "containerd=$version" >/dev/null)
dpkg-deb -x "$tmp"/dl/containerd_*.deb "$tmp/root"
rm -rf "${dir:?}/$version"
mv "$tmp/root" "$dir/$version"
"$bin/containerd" --version >/dev/null
echo "$bin"
