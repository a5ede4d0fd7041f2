#!/usr/bin/env bash
# Builds lifeboat-vcsim (scripts/vcsim/main.go: govmomi's vSphere simulator served on
# loopback over TLS) into <repo>/.tools/vcsim, once per source change, and prints the
# binary's path. Offline: Go and govmomi come from Debian (golang-go,
# golang-github-vmware-govmomi-dev 0.24.2, which depends on golang-github-google-uuid-dev),
# built in GOPATH mode with no module proxy. `cargo xtask setup` installs those packages.
#
#   bin=$(scripts/vcsim.sh)
#
# Progress goes to stderr, so the command substitution captures only the path.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/scripts/vcsim/main.go"
out="$root/.tools/vcsim"
bin="$out/lifeboat-vcsim"
gocode=/usr/share/gocode

if ! command -v go >/dev/null 2>&1 || [[ ! -d "$gocode/src/github.com/vmware/govmomi/simulator" ]]; then
    echo "vcsim.sh: needs Debian's golang-go and golang-github-vmware-govmomi-dev (cargo xtask setup installs them)" >&2
    exit 1
fi
sum="$(sha256sum "$src" | cut -c1-16)-$(dpkg-query -W -f='${Version}' golang-github-vmware-govmomi-dev 2>/dev/null || echo unknown)"
stamp="$out/.built-$sum"
if [[ ! -x "$bin" || ! -e "$stamp" ]]; then
    mkdir -p "$out/gopath/src/lifeboat-vcsim" "$out/gocache"
    exec 9>"$out/.lock"
    flock 9
    if [[ ! -x "$bin" || ! -e "$stamp" ]]; then
        echo "vcsim.sh: building $bin from $src (GOPATH mode, offline)" >&2
        cp "$src" "$out/gopath/src/lifeboat-vcsim/main.go"
        (cd "$out/gopath/src/lifeboat-vcsim" &&
            GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$out/gopath:$gocode" \
                GOCACHE="$out/gocache" go build -trimpath -o "$bin.tmp" .)
        mv "$bin.tmp" "$bin"
        rm -f "$out"/.built-*
        touch "$stamp"
    fi
fi
echo "$bin"
