#!/usr/bin/env bash
# Failover benchmark: uphold and keepalived side by side on the same faults and
# under the same host pressures, in a network-namespace lab (3 nodes + client on
# a private bridge). Prints markdown tables with ratios. Root only; not a CI
# test. See README.md.
#
# Environment:
#   REPS=5                 repetitions per (fault, implementation)
#   IDLE_SECS=30           idle CPU/RSS window per implementation (0 = skip)
#   IMPLS="uphold uphold-400ms keepalived-1s keepalived-fast"
#                          (uphold-400ms: lease 400 ms, Raft heartbeat 50 ms)
#   FAULTS="link-down service-kill daemon-kill leader-owner-kill partition pause sigterm partial-partition"
#   PRESSURES="disk-flush small-fsyncs cpu memory"   (empty = no stress rows)
#   STRESS_SECS=600        how long each pressure runs (the issue's 10 minutes)
#   STRESS_IMPLS="$IMPLS"  implementations run under the pressures
#   STRESS_SECS_OTHERS=$STRESS_SECS  the same for every implementation but
#                          `uphold` (a shorter run of the others saves hours)
#   STRESS_REPS=1          stress runs per (pressure, implementation)
#   DD_MIB=3000            disk-flush: MiB per dd round
#   UPHOLD_BIN=PATH        benchmark this uphold binary instead of building one
#                          (e.g. a release build of another commit)
#   BIN_DIR=DIR            take uphold-lab, uphold-testsvc and uphold from DIR
#                          and build nothing (a saved build keeps measuring
#                          while the tree changes)
#   OUT=DIR                where results go (default target/bench-failover/<time>)
#   KEEP_LOGS=1            keep every lab directory (configs, daemon logs, traces)
set -euo pipefail

REPS=${REPS:-5}
IDLE_SECS=${IDLE_SECS:-30}
IMPLS=${IMPLS:-"uphold uphold-400ms keepalived-1s keepalived-fast"}
FAULTS=${FAULTS-"link-down service-kill daemon-kill leader-owner-kill partition pause sigterm partial-partition"}
PRESSURES=${PRESSURES-"disk-flush small-fsyncs cpu memory"}
STRESS_SECS=${STRESS_SECS:-600}
STRESS_REPS=${STRESS_REPS:-1}
STRESS_IMPLS=${STRESS_IMPLS:-$IMPLS}
STRESS_SECS_OTHERS=${STRESS_SECS_OTHERS:-$STRESS_SECS}
DD_MIB=${DD_MIB:-3000}

root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/release
out=${OUT:-$target/bench-failover/$(date +%Y%m%d-%H%M%S)}

if [ "$(id -u)" != 0 ]; then
    echo "run.sh: must run as root (it creates network namespaces)" >&2
    exit 1
fi

missing=()
command -v keepalived >/dev/null 2>&1 || [ -x /usr/sbin/keepalived ] || missing+=(keepalived)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from Debian" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if [ -n "${BIN_DIR:-}" ]; then
    bin=$BIN_DIR
else
    (cd "$root" && cargo build --release -p uphold-testkit)
fi
# Built separately so a broken uphold build still leaves the keepalived columns.
uphold=${UPHOLD_BIN:-$bin/uphold}
if [ -z "${UPHOLD_BIN:-}" ] && [ -z "${BIN_DIR:-}" ]; then
    case " $IMPLS " in
    *" uphold"*) (cd "$root" && cargo build --release -p uphold) || echo "run.sh: uphold failed to build" >&2 ;;
    esac
fi

lab=$bin/uphold-lab
extra=()
if [ "${KEEP_LOGS:-0}" = 1 ]; then extra+=(--keep-logs); fi
impls=()
for impl in $IMPLS; do
    if [ "${impl#uphold}" != "$impl" ] && [ ! -x "$uphold" ]; then
        echo "run.sh: $uphold not built; skipping uphold" >&2
        continue
    fi
    impls+=("$impl")
done

mkdir -p "$out"
results=$out/results.jsonl
idle=$out/idle.jsonl
stress=$out/stress.jsonl
: >"$results"
: >"$idle"
: >"$stress"
echo "results in $out ($(keepalived --version 2>&1 | head -1); uphold: $uphold)" >&2

# Interleaved (rep, fault, impl) so slow drift of the machine hits every
# implementation alike.
for rep in $(seq 1 "$REPS"); do
    for fault in $FAULTS; do
        for impl in "${impls[@]}"; do
            echo "[$rep/$REPS] $fault $impl" >&2
            "$lab" failover --impl "$impl" --fault "$fault" --reps 1 --json \
                --uphold-bin "$uphold" "${extra[@]}" >>"$results" 2>>"$out/stderr.log" ||
                echo "  failed; see $out/stderr.log" >&2
        done
    done
done

# Stress after the faults: the disk pressures leave dirty pages and a busy
# journal behind that would otherwise land in the fault rows.
for rep in $(seq 1 "$STRESS_REPS"); do
    for pressure in $PRESSURES; do
        for impl in "${impls[@]}"; do
            case " $STRESS_IMPLS " in *" $impl "*) ;; *) continue ;; esac
            secs=$STRESS_SECS
            [ "$impl" = uphold ] || secs=$STRESS_SECS_OTHERS
            echo "[stress $rep/$STRESS_REPS] $pressure $impl (${secs} s)" >&2
            "$lab" stress --impl "$impl" --pressure "$pressure" --seconds "$secs" \
                --dd-mib "$DD_MIB" --json --uphold-bin "$uphold" "${extra[@]}" \
                >>"$stress" 2>>"$out/stderr.log" ||
                echo "  failed; see $out/stderr.log" >&2
        done
    done
done

if [ "$IDLE_SECS" -gt 0 ]; then
    for impl in "${impls[@]}"; do
        echo "idle $impl (${IDLE_SECS} s)" >&2
        "$lab" idle --impl "$impl" --seconds "$IDLE_SECS" --json \
            --uphold-bin "$uphold" >>"$idle" 2>>"$out/stderr.log" ||
            echo "  failed; see $out/stderr.log" >&2
    done
fi

"$lab" report "$results" "$idle" "$stress" | tee "$out/table.md"
