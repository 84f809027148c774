#!/bin/sh
# Runs every fuzz target (or the ones named) for a short while with libFuzzer:
#   scripts/fuzz-smoke.sh [target...]       FUZZ_SECONDS=10 by default
# Installs cargo-fuzz if missing. Stable toolchain, via RUSTC_BOOTSTRAP.
set -eu
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECONDS:-10}
export RUSTC_BOOTSTRAP=1
# The fuzz crate has its own target dir; never share the main one.
unset CARGO_TARGET_DIR
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets=${*:-$(cargo fuzz list)}
for t in $targets; do
    mkdir -p "corpus/$t"
    seeds=""
    [ -d "seeds/$t" ] && seeds="seeds/$t"
    echo "== $t (${secs}s)"
    # shellcheck disable=SC2086 # $seeds is empty or one path
    cargo fuzz run "$t" --sanitizer none "corpus/$t" $seeds -- \
        -max_total_time="$secs" -max_len=65536 -print_final_stats=1
done
echo "fuzz smoke: all targets ran ${secs}s without a crash"
