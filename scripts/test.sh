#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, unit and integration tests
# (the service tests use the local Docker engine and the test image, which is
# built here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/shoal-target}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
scripts/test-image.sh >/dev/null
# The kernel-forwarding test writes nftables rules with `nft`.
if ! command -v nft >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null
fi
# Integration tests start several daemons each; one test at a time keeps
# their liveness bounds meaningful on a 2-core machine.
SHOAL_DOCKER_TESTS=1 cargo test --workspace -- --test-threads=1
