#!/usr/bin/env bash
# Fault soak: MINUTES (default 30) of concurrent clients and one fault
# at a time (SIGKILL and restart, SIGSTOP and SIGCONT, the leader killed
# during a rolling update, a follower killed during a snapshot install) on a
# local cluster of four daemons with the in-memory engine (no Docker needed),
# then the history and task checks. Writes the report (faults by kind,
# recovery times, operations, anomalies) to ${TMPDIR:-/tmp}/shoal-soak-report.md
# (or $SHOAL_SOAK_REPORT) and prints it. Exits non-zero if anything was found.
#   scripts/soak.sh [MINUTES]
# Run as root, each node runs in its own network namespace and partitions,
# one-way cuts, slow and lossy links and flapping links are among the faults
# (SHOAL_SOAK_NETWORK=0 keeps to crash faults on loopback).
# SHOAL_FAULT_SEED repeats a run's choices; SHOAL_SOAK_CLIENTS (default 4).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}"
report="${SHOAL_SOAK_REPORT:-${TMPDIR:-/tmp}/shoal-soak-report.md}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/shoal-target}"
status=0
SHOAL_SOAK_MINUTES="$minutes" SHOAL_SOAK_REPORT="$report" \
    cargo test --test faults_crash -- --ignored --exact soak --nocapture --test-threads=1 \
    || status=$?
if [ -f "$report" ]; then
    echo "== report: $report"
    cat "$report"
fi
exit "$status"
