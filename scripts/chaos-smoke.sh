#!/usr/bin/env bash
# Quick chaos run of the load tool (clients/load, --chaos): three gateways
# on one redis-server, a separate simulator, 12 sessions with traffic both
# ways while gateways are killed and restarted, one is frozen past its
# lease, and Redis restarts. Fails on any message lost or delivered twice,
# a sequence gap in Events, or two gateways fighting over one device.
#   scripts/chaos-smoke.sh [extra wagate-load options]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
cargo build --locked --quiet -p wagate -p wagate-load --bin wagate --bin wagate-load
# The tool bounds itself (--timeout-seconds); `timeout` is the backstop.
timeout 300 "$target_dir/debug/wagate-load" --chaos --quick \
    --wagate-bin "$target_dir/debug/wagate" --timeout-seconds 240 "$@"
echo "chaos smoke: nothing lost, nothing doubled"
