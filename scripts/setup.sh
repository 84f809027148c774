#!/bin/sh
# Installs what the tests need beyond cargo: make (jemalloc's build), the npm
# packages of the interop tests (Baileys, libsignal), grpcurl, Chromium (the
# REST shim's console test drives it headless) and redis-server (the shim's
# Redis rate limit tests start their own).
set -eu
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "node is required for the interop tests" >&2; exit 1; }
tests/interop/ensure.sh
scripts/ensure-grpcurl.sh >/dev/null

# Debian package name, then the command it provides.
missing=""
command -v make >/dev/null || missing="$missing make"
command -v chromium >/dev/null || missing="$missing chromium"
command -v redis-server >/dev/null || missing="$missing redis-server"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        # shellcheck disable=SC2086 # one word per package
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        echo "not root: cannot install$missing; the tests that need them are skipped (run this script as root to install them)" >&2
    fi
fi
