#!/usr/bin/env bash
# Quick run of the load tool (clients/load): a separate `wagate sim` and
# `wagate serve` on loopback, 20 paired sessions, every measurement once
# with small counts (a group of 8 two-device members included). Checks
# that it completes and prints its table; it asserts no figure (timings
# on a shared CI machine mean nothing).
#   scripts/load-smoke.sh [extra wagate-load options]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
cargo build --locked --quiet -p wagate -p wagate-load --bin wagate --bin wagate-load
bin=$target_dir/debug/wagate
tool=$target_dir/debug/wagate-load
[ -x "$bin" ] || { echo "load-smoke: FAIL: no gateway binary at $bin" >&2; exit 1; }

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# The tool bounds itself (--timeout-seconds); `timeout` is the backstop.
timeout 300 "$tool" --quick --wagate-bin "$bin" --timeout-seconds 240 "$@" | tee "$out"
grep -q '^| Measure' "$out" || { echo "load-smoke: FAIL: no table printed" >&2; exit 1; }
grep -q 'Restart to all' "$out" || { echo "load-smoke: FAIL: the table has no restart row" >&2; exit 1; }
grep -q '^| Inbound group texts' "$out" || { echo "load-smoke: FAIL: the table has no group inbound row" >&2; exit 1; }
grep -q '^| Group of ' "$out" || { echo "load-smoke: FAIL: the table has no group row" >&2; exit 1; }
echo "load smoke: every step completed"
