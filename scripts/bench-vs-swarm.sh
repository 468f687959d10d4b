#!/usr/bin/env bash
# Service benchmarks side by side with a single-node Docker Swarm on the local
# engine (benches/services.rs): builds the test image when missing, runs the
# bench, and leaves the swarm the bench created even when the bench fails or
# is killed. Knobs go to the bench: BENCH_ROUNDS, BENCH_WORKLOADS,
# BENCH_JOIN_ROLE, SHOAL_TEST_IMAGE.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/shoal-target}"

# The bench writes the id of the swarm node it created here.
marker="${TMPDIR:-/tmp}/shoal-bench-swarm"

cleanup() {
  if [ -f "$marker" ]; then
    node="$(docker info --format '{{.Swarm.NodeID}}' 2>/dev/null || true)"
    if [ -n "$node" ] && [ "$node" = "$(cat "$marker")" ]; then
      docker service ls -q --filter label=shoal-bench=1 | xargs -r docker service rm >/dev/null 2>&1 || true
      docker swarm leave --force >/dev/null 2>&1 || true
    fi
    rm -f "$marker"
  fi
  docker ps -aq --filter label=shoal-bench=1 | xargs -r docker rm -f >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/test-image.sh >/dev/null
cargo bench --bench services "$@"
