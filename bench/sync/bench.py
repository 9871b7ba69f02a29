#!/usr/bin/env python3
"""File sync benchmark: uphold and lsyncd (delay = 0, default.rsync to an rsync daemon)
side by side on the same machine, on loopback, in one run. Each tool replicates its own
source tree to its own target tree; both connections pass through a counting relay, so
bytes on the wire are measured the same way. Repetitions are interleaved; the table shows
medians and the uphold/lsyncd ratio. Driven by run.sh; see README.md."""

import atexit
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

REPS = int(os.environ.get("REPS", "3"))
QUICK = os.environ.get("QUICK") == "1"
WORK = os.environ.get("WORK", "/tmp/uphold-bench-sync")
UPHOLD = os.environ["UPHOLD_BIN"]
RELAY = os.environ["RELAY_BIN"]
SCENARIOS = os.environ.get("SCENARIOS", "write burst bigfile rename delete startup").split()
SMALL_WRITES = 20 if QUICK else 50
BURST_FILES = 2000 if QUICK else 10000
BIG_MIB = 64 if QUICK else 512
RENAME_FILES = 1000 if QUICK else 5000
START_FILES = 20000 if QUICK else 200000
LIMIT = 300.0  # seconds: deadline of any one wait


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what, cond, limit=LIMIT, step=0.002):
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {limit}s waiting for {what}")
        time.sleep(step)


def proc_stat(pid):
    """The fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def children_of():
    """ppid -> [pid] over the whole machine (this kernel has no /proc/PID/task/*/children)."""
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(name)
            if fields:
                kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def tree_cpu(pids):
    """utime + stime, in seconds, of `pids` and all their descendants: the live ones
    read directly, the exited ones through their parents' cutime + cstime (which the
    kernel adds when a child is reaped), so the sum never loses a short-lived rsync."""
    kids = children_of()
    ticks, todo, seen = 0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        fields = proc_stat(pid)
        if fields:
            ticks += sum(int(x) for x in fields[11:15])
            todo.extend(kids.get(pid, []))
    return ticks / os.sysconf("SC_CLK_TCK")


def descendants(pids):
    kids = children_of()
    out, todo = [], list(pids)
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def memory_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def read_chars(pid):
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Relay:
    """A counting TCP relay (uphold-relay, its own process) in front of a loopback port.
    `bytes` asks it for fresh counters (SIGUSR1) and waits until they are written."""

    def __init__(self, to_port, name):
        self.counters = os.path.join(WORK, f"relay-{name}.json")
        self.proc = subprocess.Popen(
            [RELAY, "--listen", "127.0.0.1:0", "--to", f"127.0.0.1:{to_port}",
             "--counters", self.counters, "--every-ms", "0"],
            stdout=subprocess.PIPE, text=True)
        RELAYS.append(self)
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            raise RuntimeError(f"uphold-relay did not start (said {line!r})")
        self.port = int(line[1].rsplit(":", 1)[1])
        self.seq = self._read()["seq"]

    def _read(self):
        with open(self.counters) as f:
            return json.loads(f.read())

    @property
    def bytes(self):
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while True:
            c = self._read()
            if c["seq"] > self.seq:
                self.seq = c["seq"]
                return c["total"]
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("uphold-relay did not write its counters")
            time.sleep(0.0005)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


RELAYS = []


def identical(a, b):
    """Full comparison: same names, sizes and contents (rsync -c dry run would do too)."""
    r = subprocess.run(["diff", "-rq", "--no-dereference", a, b], capture_output=True, text=True)
    return r.returncode == 0


class Tool:
    name = ""

    def __init__(self):
        self.src = os.path.join(WORK, self.name, "src")
        self.dst = os.path.join(WORK, self.name, "dst")

    def reset_trees(self):
        for d in (self.src, self.dst):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
        # A replicated root is never empty in practice, and uphold halts rather than
        # mirror an emptied root (an unmounted disk).
        with open(os.path.join(self.src, "README"), "w") as f:
            f.write("bench\n")

    def cpu(self):
        return tree_cpu(self.pids())

    def quiet(self):
        """Waits until the tool has no helper processes left (lsyncd's rsync runs and
        the daemon's per-connection children), so their CPU is in the count."""
        wait(f"{self.name} helpers to exit", lambda: not descendants(self.pids()), limit=60, step=0.01)

    def sender_pid(self):
        return self.pids()[0]


class Uphold(Tool):
    name = "uphold"

    def __init__(self):
        super().__init__()
        self.dir = os.path.join(WORK, "uphold")
        self.pa, self.pb, self.api_a, self.api_b = (free_port() for _ in range(4))
        self.relay = Relay(self.pb, "uphold")
        self.config = os.path.join(self.dir, "u.toml")
        os.makedirs(self.dir, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(f"""[cluster]
name = "bench"
state_dir = "{self.dir}/state/{{node}}"
tls_dir = "{self.dir}/tls"
[[cluster.member]]
name = "a"
address = "127.0.0.1:{self.pa}"
api = "127.0.0.1:{self.api_a}"
[[cluster.member]]
name = "b"
address = "127.0.0.1:{self.relay.port}"
listen = "127.0.0.1:{self.pb}"
api = "127.0.0.1:{self.api_b}"
[[sync]]
name = "bench"
source = "{self.src}"
target = "{self.dst}"
from = "a"
{os.environ.get("UPHOLD_SYNC_EXTRA", "")}
""")
        shutil.rmtree(os.path.join(self.dir, "tls"), ignore_errors=True)
        subprocess.run([UPHOLD, "init", "--config", self.config], check=True, capture_output=True)
        self.procs = []

    def start(self, wait_initial=True):
        shutil.rmtree(os.path.join(self.dir, "state"), ignore_errors=True)
        log = open(os.path.join(self.dir, "log"), "a")
        b = subprocess.Popen([UPHOLD, "run", "--config", self.config, "--node", "b"], stderr=log)
        self.procs = [b]  # stopped on the way out even if the start fails
        wait("uphold b to listen", lambda: port_open(self.pb), 30)
        t0 = time.monotonic()
        a = subprocess.Popen([UPHOLD, "run", "--config", self.config, "--node", "a"], stderr=log)
        self.procs = [a, b]
        watching = initial = None
        deadline = time.monotonic() + LIMIT
        while time.monotonic() < deadline and initial is None:
            s = self.status()
            if s and watching is None and s.get("watch"):
                watching = time.monotonic() - t0
            if s and s["targets"] and s["targets"][0]["initial_done"]:
                initial = time.monotonic() - t0
            time.sleep(0.005)
        if initial is None:
            raise TimeoutError("uphold: the start-up comparison did not finish")
        return watching, initial

    def status(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_a}/v1/status", timeout=2) as r:
                return json.load(r)["sync"]["sets"][0]
        except Exception:
            return None

    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


class Lsyncd(Tool):
    name = "lsyncd"

    def __init__(self):
        super().__init__()
        self.dir = os.path.join(WORK, "lsyncd")
        os.makedirs(self.dir, exist_ok=True)
        self.prd = free_port()
        self.relay = Relay(self.prd, "lsyncd")
        self.rsyncd_conf = os.path.join(self.dir, "rsyncd.conf")
        self.lua = os.path.join(self.dir, "lsyncd.lua")
        self.log = os.path.join(self.dir, "lsyncd.log")
        self.procs = []

    def write_configs(self):
        with open(self.rsyncd_conf, "w") as f:
            f.write(f"""use chroot = false
pid file = {self.dir}/rsyncd.pid
[dst]
path = {self.dst}
read only = false
uid = root
gid = root
""")
        with open(self.lua, "w") as f:
            f.write(f"""settings {{
    nodaemon = true,
    logfile = "{self.log}",
    statusFile = "{self.dir}/status",
    insist = true,
}}
sync {{
    default.rsync,
    source = "{self.src}/",
    target = "rsync://127.0.0.1:{self.relay.port}/dst/",
    delay = 0,
    rsync = {{ archive = true }},
}}
""")

    def start(self, wait_initial=True):
        self.write_configs()
        open(self.log, "w").close()
        d = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={self.rsyncd_conf}",
                              f"--port={self.prd}", "--address=127.0.0.1"],
                             stderr=subprocess.DEVNULL)
        self.procs = [d]  # stopped on the way out even if the start fails
        wait("rsync daemon to listen", lambda: port_open(self.prd), 30)
        t0 = time.monotonic()
        l = subprocess.Popen(["lsyncd", self.lua], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs = [l, d]
        watching = initial = None
        deadline = time.monotonic() + LIMIT
        while time.monotonic() < deadline and initial is None:
            text = open(self.log).read()
            if watching is None and "recursive startup rsync" in text:
                watching = time.monotonic() - t0
            if "Startup of" in text and "finished" in text:
                initial = time.monotonic() - t0
            time.sleep(0.005)
        if initial is None:
            raise TimeoutError("lsyncd: the start-up rsync did not finish")
        return watching, initial

    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


def port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def timed(tool, action, until, what):
    """Runs `action` and times it until `until` holds. Then waits for the trees to be
    identical (full comparison) and for the tool's helper processes to exit, so the CPU
    seconds and wire bytes returned cover all the work the change caused."""
    cpu0, wire0 = tool.cpu(), tool.relay.bytes
    t0 = time.monotonic()
    action()
    wait(what, until, step=0.001)
    secs = time.monotonic() - t0
    settle(tool)
    return secs, tool.cpu() - cpu0, tool.relay.bytes - wire0


def settle(tool):
    """Full comparison of source and target (polled: a tool may still be finishing),
    then no helper process of the tool left running."""
    wait(f"{tool.name} to settle", lambda: identical(tool.src, tool.dst), step=0.05)
    tool.quiet()


# ---- scenarios: each returns a dict of figures for one repetition ----

WRITE_ROUND = [0]


def sc_write(tool):
    """Each write creates a new 1 KiB file: rewriting a file of the same size within the
    same second would be invisible to rsync's quick check (size + whole-second mtime)."""
    WRITE_ROUND[0] += 1
    d = os.path.join(tool.src, "lat")
    os.makedirs(d, exist_ok=True)
    settle(tool)
    lat = []
    cpu0, wire0 = tool.cpu(), tool.relay.bytes
    for i in range(SMALL_WRITES):
        data = os.urandom(1024)
        name = f"r{WRITE_ROUND[0]}-{i}"
        t0 = time.monotonic()
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        target = os.path.join(tool.dst, "lat", name)

        def arrived():
            try:
                with open(target, "rb") as f:
                    return f.read() == data
            except OSError:
                return False
        wait("a small write", arrived, limit=30, step=0.0005)
        lat.append((time.monotonic() - t0) * 1000)
        time.sleep(0.05)  # spacing between writes (not part of any figure)
    settle(tool)
    lat.sort()
    return {"p50_ms": statistics.median(lat), "p95_ms": lat[math.ceil(len(lat) * 0.95) - 1],
            "cpu_ms_per_write": (tool.cpu() - cpu0) * 1000 / SMALL_WRITES,
            "wire_kib_per_write": (tool.relay.bytes - wire0) / 1024 / SMALL_WRITES}


def staging(kind, count, size):
    path = os.path.join(WORK, f"stage-{kind}-{count}")
    if not os.path.exists(path):
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for i in range(count):
            d = os.path.join(tmp, f"d{i % 100}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i}"), "wb") as f:
                f.write(os.urandom(size))
        os.rename(tmp, path)
    return path


def count_files(root):
    n = 0
    for _, _, files in os.walk(root):
        n += sum(1 for f in files if not f.startswith("."))
    return n


BURST_ROUND = [0]


def sc_burst(tool):
    """The burst is written by `cp -r` from a staging tree; `written_s` is how long cp
    itself took (no tool can finish before it), `after_s` the time from cp's end until
    every file is at the target."""
    BURST_ROUND[0] += 1
    stage = staging("burst", BURST_FILES, 4096)
    dest = os.path.join(tool.src, f"burst{BURST_ROUND[0]}")
    target = os.path.join(tool.dst, f"burst{BURST_ROUND[0]}")
    done = {}

    def write():
        t0 = time.monotonic()
        subprocess.run(["cp", "-r", stage, dest], check=True)
        done["cp"] = time.monotonic() - t0
    secs, cpu, wire = timed(tool, write, lambda: count_files(target) >= BURST_FILES, "the burst")
    # Not timed: the next repetition starts from the same tree.
    shutil.rmtree(dest)
    settle(tool)
    return {"seconds": secs, "written_s": done["cp"], "after_s": secs - done["cp"],
            "cpu_s": cpu, "wire_mib": wire / 2**20}


def sc_bigfile(tool):
    path = os.path.join(tool.src, "big.img")
    target = os.path.join(tool.dst, "big.img")
    size = BIG_MIB * 2**20
    if not os.path.exists(path) or os.path.getsize(path) != size:
        with open(path, "wb") as f:
            for _ in range(BIG_MIB):
                f.write(os.urandom(2**20))
    settle(tool)
    offset = size // 2 + 12345
    patch = os.urandom(4096)

    def change():
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(patch)

    def arrived():
        try:
            with open(target, "rb") as f:
                f.seek(offset)
                return f.read(4096) == patch and os.path.getsize(target) == size
        except OSError:
            return False
    receiver = tool.pids()[1]
    reads0 = read_chars(receiver) if tool.name == "uphold" else 0
    secs, cpu, wire = timed(tool, change, arrived, "the 4 KiB change")
    out = {"seconds": secs, "cpu_s": cpu, "wire_kib": wire / 1024}
    if tool.name == "uphold":
        out["target_reads"] = (read_chars(receiver) - reads0) / size
    return out


def sc_rename(tool):
    stage = staging("rename", RENAME_FILES, 4096)
    old = os.path.join(tool.src, "tree")
    new = os.path.join(tool.src, "tree-renamed")
    for p in (old, new):
        shutil.rmtree(p, ignore_errors=True)
    subprocess.run(["cp", "-r", stage, old], check=True)
    settle(tool)
    t_old, t_new = os.path.join(tool.dst, "tree"), os.path.join(tool.dst, "tree-renamed")
    secs, cpu, wire = timed(tool, lambda: os.rename(old, new),
                            lambda: not os.path.exists(t_old) and count_files(t_new) >= RENAME_FILES,
                            "the directory rename")
    return {"seconds": secs, "cpu_s": cpu, "wire_kib": wire / 1024}


def sc_delete(tool):
    victim = os.path.join(tool.src, "tree-renamed")
    if not os.path.exists(victim):
        subprocess.run(["cp", "-r", staging("rename", RENAME_FILES, 4096), victim], check=True)
    settle(tool)
    target = os.path.join(tool.dst, "tree-renamed")
    secs, cpu, wire = timed(tool, lambda: shutil.rmtree(victim),
                            lambda: not os.path.exists(target), "the deletion")
    return {"seconds": secs, "cpu_s": cpu, "wire_kib": wire / 1024}


def sc_startup(tool):
    """Both trees already identical (cp -a); measured from the sender's start."""
    tool.stop()
    tool.reset_trees()
    stage = os.path.join(WORK, f"stage-start-{START_FILES}")
    if not os.path.exists(stage):
        tmp = stage + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for i in range(START_FILES):
            d = os.path.join(tmp, f"d{i % 2000}")
            if i < 2000:
                os.makedirs(d)
            with open(os.path.join(d, f"f{i}"), "wb") as f:
                f.write(b"x" * 100)
        os.rename(tmp, stage)
    shutil.rmtree(tool.src)
    shutil.rmtree(tool.dst)
    subprocess.run(["cp", "-a", stage, tool.src], check=True)
    subprocess.run(["cp", "-a", stage, tool.dst], check=True)
    wire0 = tool.relay.bytes
    watching, initial = tool.start()
    sender = tool.sender_pid()
    out = {"watching_s": watching or 0.0, "initial_s": initial,
           "rss_mib": memory_kib(sender, "VmRSS") / 1024, "peak_mib": memory_kib(sender, "VmHWM") / 1024}
    # Fresh processes: all their CPU time so far is the start-up's.
    out["cpu_s"] = tool.cpu()
    settle(tool)
    out["wire_mib"] = (tool.relay.bytes - wire0) / 2**20
    tool.stop()
    tool.reset_trees()
    tool.start()
    return out


SCENARIOS_FN = {"write": sc_write, "burst": sc_burst, "bigfile": sc_bigfile,
                "rename": sc_rename, "delete": sc_delete, "startup": sc_startup}


def stop_relays():
    for r in RELAYS:
        r.stop()
    RELAYS.clear()


def main():
    os.makedirs(WORK, exist_ok=True)
    # SIGTERM (run.sh's trap, a kill of the run) takes the same way out as an error:
    # every process this run started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    atexit.register(stop_relays)
    tools = []
    results = {"uphold": {}, "lsyncd": {}}
    try:
        tools = [Uphold(), Lsyncd()]
        for t in tools:
            t.reset_trees()
            t.start()
        for rep in range(REPS):
            for sc in SCENARIOS:
                for t in (tools if rep % 2 == 0 else list(reversed(tools))):
                    print(f"rep {rep + 1}/{REPS}: {sc} with {t.name}", file=sys.stderr, flush=True)
                    figures = SCENARIOS_FN[sc](t)
                    results[t.name].setdefault(sc, []).append(figures)
                    print(f"   {json.dumps(figures)}", file=sys.stderr, flush=True)
    finally:
        for t in tools:
            t.stop()
        stop_relays()
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print_table(results)


ROWS = [
    ("write", "p50_ms", "one 1 KiB write until identical, p50 (ms)"),
    ("write", "p95_ms", "one 1 KiB write, p95 (ms)"),
    ("write", "cpu_ms_per_write", "CPU per small write, both sides (ms)"),
    ("write", "wire_kib_per_write", "on the wire per small write (KiB)"),
    ("burst", "seconds", f"{BURST_FILES} x 4 KiB in 100 new dirs, until all there (s)"),
    ("burst", "written_s", "... of which cp itself writing the files (s)"),
    ("burst", "after_s", "... from the last file written until all there (s)"),
    ("burst", "cpu_s", "burst: CPU, both sides (s)"),
    ("burst", "wire_mib", "burst: on the wire (MiB)"),
    ("bigfile", "seconds", f"4 KiB changed in a {BIG_MIB} MiB file (s)"),
    ("bigfile", "wire_kib", "... on the wire (KiB)"),
    ("bigfile", "cpu_s", "... CPU, both sides (s)"),
    ("bigfile", "target_reads", "... reads of the target file by the receiver (x file size)"),
    ("rename", "seconds", f"rename of a dir holding {RENAME_FILES} files (s)"),
    ("rename", "wire_kib", "... on the wire (KiB)"),
    ("rename", "cpu_s", "... CPU, both sides (s)"),
    ("delete", "seconds", f"delete {RENAME_FILES} files (s)"),
    ("delete", "wire_kib", "... on the wire (KiB)"),
    ("delete", "cpu_s", "... CPU, both sides (s)"),
    ("startup", "watching_s", f"start on {START_FILES} identical files: watching (s)"),
    ("startup", "initial_s", "... initial check done (s)"),
    ("startup", "rss_mib", "... sender RSS after (MiB)"),
    ("startup", "peak_mib", "... sender peak RSS (MiB)"),
    ("startup", "cpu_s", "... CPU until the initial check is done, both sides (s)"),
    ("startup", "wire_mib", "... on the wire (MiB)"),
]


def print_table(results):
    print(f"\nuphold vs lsyncd 2.2.3 (delay = 0, rsync daemon), median of {REPS}, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| scenario | uphold | lsyncd | uphold / lsyncd |")
    print("|---|---|---|---|")
    for sc, key, label in ROWS:
        vals = []
        for name in ("uphold", "lsyncd"):
            xs = [r[key] for r in results[name].get(sc, []) if key in r]
            vals.append(statistics.median(xs) if xs else None)
        fmt = lambda v: "-" if v is None else (f"{v:.3g}" if v < 100 else f"{v:.0f}")
        ratio = "-" if None in vals or not vals[1] else f"{vals[0] / vals[1]:.2f}"
        print(f"| {label} | {fmt(vals[0])} | {fmt(vals[1])} | {ratio} |")


if __name__ == "__main__":
    main()
