#!/bin/sh
# Installs the pinned interop packages (Baileys, libsignal) once; tests that
# drive node call this first so a fresh checkout needs no manual step.
set -eu
cd "$(dirname "$0")"
command -v node >/dev/null || { echo "node is required for the interop tests" >&2; exit 1; }
[ -d node_modules/baileys ] || npm ci --no-audit --no-fund >&2
