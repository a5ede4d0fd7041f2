#!/usr/bin/env bash
# Installs Azurite (Microsoft's Azure Storage emulator, npm package `azurite`) into
# <repo>/.tools/azurite with `npm install --prefix`, once, and prints the path of its
# `azurite-blob` binary (the Blob service only; the Azure target plugin tests use it).
#
#   scripts/azurite.sh            # install if missing, print the binary's path
#   AZURITE_VERSION=3.37.0 scripts/azurite.sh
#
# Idempotent: a second run finds the installed version and installs nothing. Needs
# node (>= 18) and npm; everything else comes from the npm registry. Progress goes to
# stderr, so `bin=$(scripts/azurite.sh)` captures only the path.
set -euo pipefail

version="${AZURITE_VERSION:-3.37.0}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$root/.tools/azurite"
bin="$prefix/node_modules/.bin/azurite-blob"
stamp="$prefix/.installed-$version"

if ! command -v npm >/dev/null 2>&1; then
    echo "azurite.sh: npm not found; install Node.js 18 or newer (apt-get install nodejs npm)" >&2
    exit 1
fi

if [[ ! -x "$bin" || ! -e "$stamp" ]]; then
    echo "azurite.sh: installing azurite@$version into $prefix" >&2
    mkdir -p "$prefix"
    # A lock so concurrent test binaries do not install twice into the same folder.
    exec 9>"$prefix/.lock"
    flock 9
    if [[ ! -x "$bin" || ! -e "$stamp" ]]; then
        npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
            "azurite@$version" >&2
        rm -f "$prefix"/.installed-*
        touch "$stamp"
    fi
fi
echo "$bin"
