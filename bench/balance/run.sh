#!/usr/bin/env bash
# Load-balancer benchmark: uphold, HAProxy 2.6 and nginx 1.22 (Debian), one worker thread
# each, in front of two nginx backends on loopback, driven by wrk and curl; interleaved
# rounds, medians, uphold / HAProxy ratios. Not a CI test. See README.md.
#
# Environment:
#   REPS=5         interleaved rounds
#   DURATION=5     seconds per wrk run
#   CONNS=64       wrk connections
#   BULK_N=10      100 MB downloads per bulk run
#   SCENARIOS="keepalive tcp close bulk-http bulk-tcp"
#   TOOLS="uphold haproxy haproxy-always nginx direct"
#   PIN=1          balancer on CPU $BALANCER_CPU (0), the rest on CPU $CLIENT_CPU (1); PIN=0: no pinning
#   UPHOLD_BIN=…   use this binary instead of building target/release/uphold
#   OUT=FILE       also write every round's figures as JSON
#   KEEP=1         keep the temporary directory (configs, logs)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}

missing=()
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "run.sh: please install ${missing[*]} (apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "installing ${missing[*]} from Debian" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
export PATH=$PATH:/usr/sbin

# A broken uphold build still leaves the HAProxy and nginx columns.
if [ -z "${UPHOLD_BIN:-}" ]; then
    if (cd "$root" && cargo build --release -p uphold); then
        UPHOLD_BIN=$target/release/uphold
    else
        echo "run.sh: uphold failed to build; its column is left out" >&2
        UPHOLD_BIN=
    fi
fi
export UPHOLD_BIN

ulimit -n 65536 2>/dev/null || true
exec python3 "$root/bench/balance/bench.py"
