#!/usr/bin/env bash
# The whole test suite: unit tests, the seeded cluster simulation (10000 seeds by
# default; UPHOLD_SIM_SEEDS changes it) and the end-to-end suites (real daemons
# in network namespaces; those need root and are skipped with a message
# otherwise, or fail when CI=true). Ends with one line totalling every test.
set -euo pipefail
cd "$(dirname "$0")"
export UPHOLD_SIM_SEEDS="${UPHOLD_SIM_SEEDS:-10000}"
# The end-to-end suites run the binaries of several crates.
cargo build --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "total: %d passed, %d failed\n", passed, failed }' \
    "$log"
exit "$status"
