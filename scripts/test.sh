#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/shoal-target}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests start several daemons each; one test at a time keeps
# their liveness bounds meaningful on a 2-core machine.
cargo test --workspace -- --test-threads=1
