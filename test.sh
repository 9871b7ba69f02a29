#!/usr/bin/env bash
# The whole test suite: unit tests, the seeded cluster simulation, and the
# end-to-end suites (real daemons in network namespaces; those need root and
# are skipped with a message otherwise, or fail when CI=true).
set -euo pipefail
cd "$(dirname "$0")"
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
