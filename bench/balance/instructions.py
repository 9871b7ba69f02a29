#!/usr/bin/env python3
"""User-space instructions per request of uphold and HAProxy, counted by valgrind's
callgrind: a figure that does not move with machine load (CPU time per request moves
±15% on a shared machine). Kernel work is not counted; run.sh's CPU time includes it.
Each balancer runs under callgrind once idle (start-up and health checks only) and once
under wrk; the difference divided by the requests served is the per-request cost.

    sudo python3 bench/balance/instructions.py            # keepalive, close, tcp
    SCENARIOS="keepalive" UPHOLD_BIN=target/release/uphold python3 bench/balance/instructions.py

Uses bench.py's backends and configs (same setup as run.sh, one worker thread each)."""

import glob
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

SCENARIOS = os.environ.get("SCENARIOS", "keepalive close tcp").split()
SECONDS = int(os.environ.get("DURATION", "8"))


def instructions(kind, mode, close, load, d, backends):
    b = bench.Uphold(d, backends, mode) if kind == "uphold" else bench.Haproxy(d, backends, mode)
    conf = b.write_config()
    out = os.path.join(d, f"cg-{kind}-{mode}-{int(close)}-{int(load)}.out")
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + b.argv(conf)
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        bench.wait(f"{kind} under valgrind", lambda: bench.port_open(b.port), limit=120)
        time.sleep(2)
        n = 0
        if load:
            args = ["wrk", "-t1", "-c8", f"-d{SECONDS}s", f"http://127.0.0.1:{b.port}/small"]
            if close:
                args[4:4] = ["-H", "Connection: close"]
            text = subprocess.run(args, capture_output=True, text=True).stdout
            n = int([line for line in text.splitlines() if "requests in" in line][0].split()[0])
        else:
            time.sleep(SECONDS)
    finally:
        os.killpg(p.pid, 15)
        p.wait()
    total = 0
    for f in glob.glob(out + "*"):
        with open(f) as fh:
            for line in fh:
                if line.startswith(("summary:", "totals:")):
                    total += int(line.split()[1])
                    break
    return total, n


def main():
    bench.UPHOLD = os.environ.get("UPHOLD_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "uphold")
    d = tempfile.mkdtemp(prefix="uphold-bench-instr-")
    backends = bench.Backends(d)
    rows = []
    try:
        for scenario in SCENARIOS:
            mode, close = {"keepalive": ("http", False), "close": ("http", True),
                           "tcp": ("tcp", False)}[scenario]
            per = {}
            for kind in ("uphold", "haproxy"):
                idle, _ = instructions(kind, mode, close, False, d, backends)
                busy, n = instructions(kind, mode, close, True, d, backends)
                per[kind] = (busy - idle) / max(n, 1)
                bench.log(f"{scenario} {kind}: {n} requests, {per[kind]:.0f} instructions each")
            rows.append((scenario, per["uphold"], per["haproxy"]))
    finally:
        bench.stop(backends.proc)
        subprocess.run(["rm", "-rf", d])
    print("\n| scenario | uphold instructions/request | HAProxy | uphold / HAProxy |")
    print("|---|---|---|---|")
    for scenario, u, h in rows:
        print(f"| {scenario} | {u:,.0f} | {h:,.0f} | {u / h:.2f} |")


if __name__ == "__main__":
    main()
