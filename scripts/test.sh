#!/bin/sh
# The whole test suite, from a fresh clone: set-up, then every test.
set -eu
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --locked
