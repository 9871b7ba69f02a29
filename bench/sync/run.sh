#!/usr/bin/env bash
# File sync benchmark: uphold and lsyncd 2.2.3 (delay = 0, default.rsync to an rsync
# daemon) side by side on loopback, interleaved repetitions, medians and ratios.
# Bytes on the wire go through a counting relay for both. Not a CI test. See README.md.
#
# Environment:
#   REPS=3        repetitions per scenario and tool
#   QUICK=1       smaller sizes (2,000-file burst, 64 MiB file, 20,000-file start-up)
#   SCENARIOS="write burst bigfile rename delete startup"
#   WORK=DIR      scratch directory (default /tmp/uphold-bench-sync; needs ~2 GiB)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}

missing=()
command -v lsyncd >/dev/null 2>&1 || missing+=(lsyncd)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
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

(cd "$root" && cargo build --release -p uphold && cargo build --release -p uphold-testkit --bin uphold-relay)

# Each tool gets a fresh ext4 filesystem of its own (a loop device): file creation on
# ext4 slows down sharply after many recent deletions (the inode allocator skips
# recently deleted inodes one by one), so trees left by earlier runs or by the other
# tool would make the figures depend on history. Without root, plain directories.
WORK=${WORK:-/tmp/uphold-bench-sync}
export WORK
mounted=()
cleanup() {
    for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    rm -f "$WORK"/*.img
}
trap cleanup EXIT
mkdir -p "$WORK"
if [ "$(id -u)" = 0 ] && [ "${NO_LOOP:-0}" != 1 ]; then
    for tool in uphold lsyncd; do
        umount "$WORK/$tool" 2>/dev/null || true
        rm -rf "${WORK:?}/$tool" "$WORK/$tool.img"
        mkdir -p "$WORK/$tool"
        truncate -s "${FS_SIZE:-6G}" "$WORK/$tool.img"
        mkfs.ext4 -q -F -N 1200000 "$WORK/$tool.img"
        mount -o loop "$WORK/$tool.img" "$WORK/$tool"
        mounted+=("$WORK/$tool")
    done
fi
UPHOLD_BIN=$target/release/uphold RELAY_BIN=$target/release/uphold-relay python3 "$root/bench/sync/bench.py"
