#!/usr/bin/env python3
"""Load-balancer benchmark: uphold, HAProxy and nginx (each with one worker thread) in
front of the same two nginx backends on loopback, in one run. wrk drives the HTTP
scenarios, curl the 100 MB bulk transfers. The gate figure is the balancer's own CPU
time (utime + stime of its processes, from /proc) per request or per GB. Rounds are
interleaved; the table shows medians and the uphold / HAProxy ratio. Driven by run.sh;
see README.md."""

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPS = int(os.environ.get("REPS", "5"))
DURATION = int(os.environ.get("DURATION", "5"))
CONNS = int(os.environ.get("CONNS", "64"))
BULK_N = int(os.environ.get("BULK_N", "10"))
SCENARIOS = os.environ.get("SCENARIOS", "keepalive tcp close bulk-http bulk-tcp").split()
TOOLS = os.environ.get("TOOLS", "uphold haproxy haproxy-always nginx direct").split()
UPHOLD = os.environ.get("UPHOLD_BIN", "")
OUT = os.environ.get("OUT", "")
KEEP = os.environ.get("KEEP") == "1"
SMALL_BYTES = 100
BIG_BYTES = 100 * 10**6
# Balancer on one CPU, wrk / curl / backends on the other, so the balancer's CPU is
# not taken by the load generator; on a one-CPU machine nothing is pinned.
PIN = os.environ.get("PIN", "1") == "1" and (os.cpu_count() or 1) >= 2
BALANCER_CPU = os.environ.get("BALANCER_CPU", "0")
CLIENT_CPU = os.environ.get("CLIENT_CPU", "1")
NGINX_MODULES = "/usr/lib/nginx/modules"
TICK = os.sysconf("SC_CLK_TCK")

# Which columns each scenario has; `direct` is wrk straight to one backend (no balancer).
COLUMNS = {
    "keepalive": ["uphold", "haproxy", "nginx", "direct"],
    "tcp": ["uphold", "haproxy", "nginx"],
    "close": ["uphold", "haproxy", "haproxy-always", "nginx", "direct"],
    "bulk-http": ["uphold", "haproxy", "nginx"],
    "bulk-tcp": ["uphold", "haproxy", "nginx"],
}
MODE = {"keepalive": "http", "tcp": "tcp", "close": "http", "bulk-http": "http", "bulk-tcp": "tcp"}

STARTED = []  # every Popen of a long-running process this run started


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait(what, cond, limit=20.0, step=0.01):
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {limit:g}s waiting for {what}")
        time.sleep(step)


def pinned(argv, cpu):
    return ["taskset", "-c", cpu] + argv if PIN else argv


_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup():
    # If this script dies without cleaning up (SIGKILL), its servers get SIGTERM.
    _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(argv, cpu, logfile):
    """A long-running server in a process group of its own (so nginx's workers can be
    stopped with their master), remembered for the clean-up."""
    with open(logfile, "ab") as out:
        p = subprocess.Popen(pinned(argv, cpu), stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=_child_setup)
    STARTED.append(p)
    return p


def stop(p):
    """SIGTERM to the process group, SIGKILL after 10 s. The group is signalled only
    while its leader is not yet reaped, so its id cannot belong to anyone else."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    if p in STARTED:
        STARTED.remove(p)


def stop_all():
    for p in list(STARTED):
        stop(p)


# ---- /proc ----

def proc_stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree(pid):
    """`pid` and its descendants (nginx: master and workers)."""
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(name)
            if fields:
                kids.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pid):
    """utime + stime of the process tree (all threads), in seconds."""
    ticks = 0
    for p in tree(pid):
        fields = proc_stat(p)
        if fields:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK


def memory_mib(pid, key):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


# ---- HTTP probe ----

def get(port, path="/small", timeout=2.0):
    """One HTTP/1.1 request on a new connection: (status, X-Backend, body length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    backend = ""
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "x-backend":
            backend = v.strip()
    return status, backend, len(body)


def wait_serving(port, what, limit=20.0):
    """Until requests through the balancer reach both backends: a balancer whose health
    checks have not yet marked a server up would otherwise send everything to one."""
    seen, last = set(), None
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            status, backend, n = get(port)
            last = f"status {status}, {n} body bytes"
            if status == 200 and n == SMALL_BYTES:
                seen.add(backend)
                if len(seen) >= 2:
                    return
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not serve from both backends within {limit:g}s (last: {last})")


# ---- backends ----

def nginx_common(d, name):
    return f"""pid {d}/{name}.pid;
error_log {d}/{name}.err warn;
user root;
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
"""


def nginx_temp_paths(d, name):
    return "".join(f"{k}_temp_path {d}/{name}-tmp/{k};\n"
                   for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


class Backends:
    """One nginx (one worker) with two servers on two ports, each adding X-Backend so the
    start-up probe can see that a balancer uses both. Pinned with the load generator."""

    def __init__(self, d):
        self.dir = d
        www = os.path.join(d, "www")
        os.makedirs(www)
        with open(os.path.join(www, "small"), "wb") as f:
            f.write(b"x" * (SMALL_BYTES - 1) + b"\n")
        with open(os.path.join(www, "big"), "wb") as f:
            block = os.urandom(10**6)
            for _ in range(BIG_BYTES // len(block)):
                f.write(block)
        self.ports = [free_port(), free_port()]
        servers = "".join(f"""  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {www};
    add_header X-Backend b{i + 1};
  }}
""" for i, port in enumerate(self.ports))
        conf = os.path.join(d, "backends.conf")
        with open(conf, "w") as f:
            f.write(nginx_common(d, "backends") + f"""events {{ worker_connections 16384; }}
http {{
  {nginx_temp_paths(d, "backends")}
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  default_type application/octet-stream;
{servers}}}
""")
        os.makedirs(os.path.join(d, "backends-tmp"))
        self.proc = spawn(["nginx", "-p", d + "/", "-e", f"{d}/backends.err", "-c", conf],
                          CLIENT_CPU, os.path.join(d, "backends.log"))
        for i, port in enumerate(self.ports):
            wait(f"backend b{i + 1}", lambda: self.proc.poll() is not None or port_open(port))
            if self.proc.poll() is not None:
                with open(f"{d}/backends.err", errors="replace") as f:
                    raise RuntimeError(f"the backend nginx exited: {f.read()[-2000:]}")
            st, backend, n = get(port)
            if st != 200 or n != SMALL_BYTES or backend != f"b{i + 1}":
                raise RuntimeError(f"backend b{i + 1} answers {st} with {n} bytes")


# ---- balancers ----

class Balancer:
    """One balancer process (tree), fresh for every measured run, so its peak RSS is
    that run's."""
    label = ""
    binary = ""

    def __init__(self, d, backends, mode):
        self.dir, self.backends, self.mode = d, backends, mode
        self.port = free_port()
        self.log = os.path.join(d, f"{self.name}-{mode}.log")
        self.proc = None

    def start(self):
        conf = self.write_config()
        open(self.log, "w").close()
        self.proc = spawn(self.argv(conf), BALANCER_CPU, self.log)
        wait(f"{self.name} to listen", lambda: self.proc.poll() is not None or port_open(self.port))
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
        wait_serving(self.port, self.name)

    def stop(self):
        if self.proc:
            stop(self.proc)
            self.proc = None

    def log_tail(self, n=15):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


class Uphold(Balancer):
    name = "uphold"

    def write_config(self):
        conf = os.path.join(self.dir, f"uphold-{self.mode}.toml")
        b1, b2 = self.backends.ports
        with open(conf, "w") as f:
            f.write(f"""[balancer]
threads = 1
api = "127.0.0.1:{free_port()}"

[[balance]]
name = "web"
listen = "127.0.0.1:{self.port}"
mode = "{self.mode}"
algorithm = "roundrobin"
[balance.check]
type = "tcp"
interval = "2s"
[[balance.server]]
name = "b1"
address = "127.0.0.1:{b1}"
[[balance.server]]
name = "b2"
address = "127.0.0.1:{b2}"
""")
        return conf

    def argv(self, conf):
        return [UPHOLD, "run", "--config", conf]


class Haproxy(Balancer):
    name = "haproxy"
    reuse = None  # stock: http-reuse safe

    def write_config(self):
        conf = os.path.join(self.dir, f"{self.name}-{self.mode}.cfg")
        b1, b2 = self.backends.ports
        reuse = f"    http-reuse {self.reuse}\n" if self.reuse else ""
        with open(conf, "w") as f:
            f.write(f"""global
    nbthread 1
    maxconn 4096

defaults
    mode {self.mode}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
{reuse}
listen web
    bind 127.0.0.1:{self.port}
    balance roundrobin
    server b1 127.0.0.1:{b1} check inter 2s
    server b2 127.0.0.1:{b2} check inter 2s
""")
        return conf

    def argv(self, conf):
        return ["haproxy", "-db", "-f", conf]


class HaproxyAlways(Haproxy):
    name = "haproxy-always"
    reuse = "always"


class Nginx(Balancer):
    name = "nginx"

    def write_config(self):
        conf = os.path.join(self.dir, f"nginx-{self.mode}.conf")
        b1, b2 = self.backends.ports
        name = f"nginx-{self.mode}"
        if self.mode == "http":
            body = f"""http {{
  {nginx_temp_paths(self.dir, name)}
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  # Buffer in memory only: a 100 MB response must not go through a temp file.
  proxy_max_temp_file_size 0;
  upstream web {{
    server 127.0.0.1:{b1};
    server 127.0.0.1:{b2};
    keepalive 64;
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location / {{
      proxy_pass http://web;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
            head = ""
        else:
            body = f"""stream {{
  upstream web {{
    server 127.0.0.1:{b1};
    server 127.0.0.1:{b2};
  }}
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    proxy_pass web;
  }}
}}
"""
            head = f"load_module {NGINX_MODULES}/ngx_stream_module.so;\n"
        with open(conf, "w") as f:
            f.write(head + nginx_common(self.dir, name) + "events { worker_connections 16384; }\n" + body)
        os.makedirs(os.path.join(self.dir, f"{name}-tmp"), exist_ok=True)
        return conf

    def argv(self, conf):
        return ["nginx", "-p", self.dir + "/", "-e", f"{self.dir}/nginx-{self.mode}.err", "-c", conf]


BALANCERS = {"uphold": Uphold, "haproxy": Haproxy, "haproxy-always": HaproxyAlways, "nginx": Nginx}


# ---- load ----

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def wrk(port, close):
    argv = ["wrk", "-t1", f"-c{CONNS}", f"-d{DURATION}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}/small")
    r = subprocess.run(pinned(argv, CLIENT_CPU), capture_output=True, text=True, timeout=DURATION + 60)
    out = r.stdout
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed ({r.returncode}): {r.stderr.strip() or out.strip()}")
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(\w+)", out, re.M)
    if not m:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    res = {"requests": int(m.group(1)), "rps": float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))}
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s*{pct}(?:\.000)?%\s+([\d.]+)(\w+)", out, re.M)
        res[key] = float(m.group(1)) * UNITS_MS[m.group(2)] if m else None
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    res["errors"] = errors
    return res


def bulk(port):
    """BULK_N sequential downloads of the 100 MB file, each on a new connection."""
    moved, t0 = 0, time.monotonic()
    for _ in range(BULK_N):
        r = subprocess.run(pinned(["curl", "-s", "-o", "/dev/null", "--max-time", "120",
                                   "-w", "%{http_code} %{size_download}",
                                   f"http://127.0.0.1:{port}/big"], CLIENT_CPU),
                           capture_output=True, text=True, timeout=180)
        status, size = (r.stdout.split() + ["0", "0"])[:2]
        if r.returncode != 0 or status != "200" or int(size) != BIG_BYTES:
            raise RuntimeError(f"curl: exit {r.returncode}, status {status}, {size} bytes")
        moved += int(size)
    secs = time.monotonic() - t0
    return moved, secs


def measure(d, backends, scenario, column):
    """One run: a fresh balancer (or none for `direct`), the load, its CPU and memory."""
    if column == "direct":
        return wrk(backends.ports[0], scenario == "close")
    bal = BALANCERS[column](d, backends, MODE[scenario])
    try:
        bal.start()
        cpu0 = cpu_seconds(bal.proc.pid)
        if scenario.startswith("bulk"):
            moved, secs = bulk(bal.port)
            cpu = cpu_seconds(bal.proc.pid) - cpu0
            res = {"cpu_s_per_gb": cpu / (moved / 1e9), "mb_s": moved / 1e6 / secs}
        else:
            res = wrk(bal.port, scenario == "close")
            cpu = cpu_seconds(bal.proc.pid) - cpu0
            res["cpu_us"] = cpu * 1e6 / max(res["requests"], 1)
        res["cpu_s"] = cpu
        res["rss_mib"] = memory_mib(bal.proc.pid, "VmRSS")
        res["hwm_mib"] = memory_mib(bal.proc.pid, "VmHWM")
        if bal.proc.poll() is not None:
            raise RuntimeError(f"{column} exited during the run")
        return res
    except Exception as e:
        tail = bal.log_tail()
        raise RuntimeError(f"{e}\n--- {column} log ---\n{tail}") from None
    finally:
        bal.stop()


def version(argv, pattern):
    try:
        r = subprocess.run(argv, capture_output=True, text=True)
        m = re.search(pattern, r.stdout + r.stderr)
        return m.group(1) if m else "?"
    except OSError:
        return "?"


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    d = tempfile.mkdtemp(prefix="uphold-bench-balance-")
    notes, failures = [], []
    results = {sc: {} for sc in SCENARIOS}
    tools = [t for t in TOOLS if t in BALANCERS or t == "direct"]
    try:
        backends = Backends(d)
        log(f"backends on 127.0.0.1:{backends.ports[0]} and :{backends.ports[1]}, temp dir {d}"
            + (f"; balancer on CPU {BALANCER_CPU}, wrk/curl/backends on CPU {CLIENT_CPU}" if PIN else "; not pinned"))
        if "uphold" in tools:
            # One try before the rounds: a binary that does not take the config yet leaves
            # the anchors' columns, with the reason in the notes.
            why = None
            if not UPHOLD or not os.access(UPHOLD, os.X_OK):
                why = f"no binary at {UPHOLD!r}"
            else:
                for mode in sorted({MODE[s] for s in SCENARIOS}):
                    u = Uphold(d, backends, mode)
                    try:
                        u.start()
                    except Exception as e:
                        said = [ln for ln in u.log_tail(5).splitlines() if ln.strip()]
                        why = f"mode {mode}: {str(e).splitlines()[0]}" + (f"; it said: {said[-1]}" if said else "")
                        break
                    finally:
                        u.stop()
            if why:
                log(f"uphold left out: {why}")
                notes.append(f"uphold was not run: {why}")
                tools.remove("uphold")
        for rep in range(REPS):
            for sc in SCENARIOS:
                cols = [c for c in COLUMNS[sc] if c in tools]
                k = rep % len(cols) if cols else 0
                for col in cols[k:] + cols[:k]:
                    log(f"round {rep + 1}/{REPS}: {sc} with {col}")
                    try:
                        res = measure(d, backends, sc, col)
                    except Exception as e:
                        log(f"   FAILED: {e}")
                        failures.append(f"round {rep + 1}, {sc}, {col}: {str(e).splitlines()[0]}")
                        continue
                    results[sc].setdefault(col, []).append(res)
                    log("   " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                           for k, v in res.items()}))
    finally:
        stop_all()
        if KEEP:
            log(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)
    if OUT:
        with open(OUT, "w") as f:
            json.dump(results, f, indent=1)
    print_table(results, notes, failures)


SCENARIO_LABEL = {
    "keepalive": "keep-alive",
    "tcp": "tcp",
    "close": "conn/request",
    "bulk-http": "bulk http",
    "bulk-tcp": "bulk tcp",
}
# (key, label, how the rounds combine, target for uphold / HAProxy)
ROWS_WRK = [
    ("cpu_us", "CPU per request (µs)", "median"),
    ("rps", "req/s", "median"),
    ("p50_ms", "latency p50 (ms)", "median"),
    ("p99_ms", "latency p99 (ms)", "median"),
    ("rss_mib", "RSS at end (MiB)", "median"),
    ("hwm_mib", "peak RSS (MiB)", "median"),
    ("errors", "wrk errors, all rounds", "sum"),
]
ROWS_BULK = [
    ("cpu_s_per_gb", "CPU-s per GB", "median"),
    ("mb_s", "throughput (MB/s)", "median"),
    ("rss_mib", "RSS at end (MiB)", "median"),
    ("hwm_mib", "peak RSS (MiB)", "median"),
]
TARGETS = {
    ("keepalive", "cpu_us"): 1.0, ("tcp", "cpu_us"): 1.0, ("close", "cpu_us"): 0.6,
    ("bulk-http", "cpu_s_per_gb"): 1.0, ("bulk-tcp", "cpu_s_per_gb"): 1.0,
    ("keepalive", "hwm_mib"): 1.0, ("tcp", "hwm_mib"): 1.0, ("close", "hwm_mib"): 1.0,
    ("bulk-http", "hwm_mib"): 1.0, ("bulk-tcp", "hwm_mib"): 1.0,
}


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def print_table(results, notes, failures):
    hv = version(["haproxy", "-v"], r"version (\d+\.\d+\.\d+)")
    nv = version(["nginx", "-v"], r"nginx/(\d+\.\d+\.\d+)")
    heads = [("uphold", "uphold"), ("haproxy", f"HAProxy {hv}"),
             ("haproxy-always", "HAProxy, http-reuse always"), ("nginx", f"nginx {nv}"),
             ("direct", "direct to a backend")]
    present = [(k, h) for k, h in heads if any(k in results[sc] for sc in results)]
    pin = f"balancer on CPU {BALANCER_CPU}, wrk/curl/backends on CPU {CLIENT_CPU}" if PIN else "not pinned"
    print(f"\nBalancers with one worker thread, wrk -t1 -c{CONNS} -d{DURATION}s on loopback, "
          f"two nginx backends, {BULK_N} x 100 MB for bulk; {pin}; "
          f"median of {REPS} interleaved rounds, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| scenario | figure | " + " | ".join(h for _, h in present) + " | uphold / HAProxy | target |")
    print("|---|---|" + "---|" * len(present) + "---|---|")
    for sc in SCENARIOS:
        rows = ROWS_BULK if sc.startswith("bulk") else ROWS_WRK
        for key, label, how in rows:
            vals = {}
            for k, _ in present:
                xs = [r[key] for r in results[sc].get(k, []) if r.get(key) is not None]
                if xs:
                    vals[k] = sum(xs) if how == "sum" else statistics.median(xs)
            if not vals:
                continue
            u, h = vals.get("uphold"), vals.get("haproxy")
            ratio = f"{u / h:.2f}" if u is not None and h and how != "sum" else "-"
            target = TARGETS.get((sc, key))
            tcell = ""
            if target is not None:
                tcell = f"≤ {target:.1f}"
                if ratio != "-":
                    tcell += " met" if u / h <= target else " NOT met"
            cells = " | ".join(fmt(vals.get(k)) for k, _ in present)
            print(f"| {SCENARIO_LABEL[sc]} | {label} | {cells} | {ratio} | {tcell} |")
    for n in notes:
        print(f"\nNote: {n}")
    if failures:
        print(f"\n{len(failures)} run(s) failed and are not in the medians:")
        for f in failures:
            print(f"- {f}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        # The clean-up has run (main's finally); no traceback for a Ctrl-C.
        sys.exit(130)
