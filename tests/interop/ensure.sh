#!/bin/sh
# Installs the pinned interop packages (Baileys, libsignal) once; tests that
# drive node call this first so a fresh checkout needs no manual step.
# Concurrent callers (parallel tests) wait on a lock held on this script.
set -eu
cd "$(dirname "$0")"
command -v node >/dev/null || { echo "node is required for the interop tests" >&2; exit 1; }
exec 9<ensure.sh
flock 9
[ -d node_modules/baileys ] || npm ci --no-audit --no-fund >&2
