#!/bin/sh
# Installs what the tests need beyond cargo: the npm packages of the interop
# tests (Baileys, libsignal) and grpcurl.
set -eu
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "node is required for the interop tests" >&2; exit 1; }
tests/interop/ensure.sh
scripts/ensure-grpcurl.sh >/dev/null
