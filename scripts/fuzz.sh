#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# Needs cargo-fuzz (`cargo install cargo-fuzz`). On a stable toolchain the
# sanitizer flags need RUSTC_BOOTSTRAP=1, which this script sets.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/shoal-target}-fuzz"
# Seed the Compose target with the parser's fixtures.
mkdir -p corpus/compose
for f in ../cli/tests/compose/*/*.y*ml; do
    cp "$f" "corpus/compose/$(basename "$(dirname "$f")")-$(basename "$f")"
done
cargo fuzz build -O
for t in "${targets[@]}"; do
    echo "== $t ($seconds s)"
    cargo fuzz run -O "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 | tail -3
done
