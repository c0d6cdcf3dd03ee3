#!/usr/bin/env python3
"""One benchmark report: runs every benchmark side by side in one run and prints one table of results and
ratios against their baselines and targets.

    python3 bench/report.py [--lines 1000000] [--runs 10]

- get-secret vs the seed's boto3 get_secret.py (tests/bench/get_secret.py): wall and peak RSS ratios;
- bootstrap: the agent's own CPU time from start to the child's exec (local mode, loopback only, a child
  that records its start), read from /proc/PID/schedstat (ns) the moment the child runs;
- log shipping vs a boto3 shipper (bench/logs.sh): CPU s per million lines and the ratio;
- steady-state RSS of the agent supervising the geth stand-in and shipping its lines to moto;
- the static binary's size;
- the health endpoint (health.listen on a free loopback port, the agent supervising the geth stand-in as an
  rpc node in local mode, logs not shipped): GET /ready latency and the agent's CPU, see health();
- the metrics path (the same kind of agent with health.interval_secs = 1): GET /metrics latency at a
  scrape's rate and in a burst, the CPU of EMF events + scrapes beside an agent with emf = false, and the
  RSS, see metrics(). (The steady-state RSS row above runs the default config: EMF on, every 10 s.)
Not a test: numbers depend on the machine, which the report prints. Needs moto[server], boto3, GNU time.

    python3 bench/report.py --only health [--only metrics] [--only boot]

runs only the health endpoint rows, the metrics rows, or both (no moto, boto3 or GNU time needed).

    python3 bench/report.py --against REV

also builds commit REV (in a temporary git worktree, sharing this checkout's target directory) and runs
every benchmark on both binaries in the same run, printing each figure side by side with the change
(this / baseline; for every row, above 1.10 is a regression of more than 10%).
"""
import argparse
import collections
import errno
import json
import os
import platform
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(cmd, **kw):
    return subprocess.run(cmd, cwd=REPO, check=True, text=True, capture_output=True, **kw).stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("moto did not start")


def config(work, geth, extra=""):
    path = os.path.join(work, "config.toml")
    with open(path, "w") as f:
        f.write(f"""[chain]
genesis = "{REPO}/resources/genesis.json"
[binaries]
geth = "{geth}"
[storage]
local_root = "{work}/data"
runtime_dir = "{work}/run"
[secrets]
local_dir = "{REPO}/tests/fixtures/secrets"
dir = "{work}/run/secrets"
[logs]
dir = "{work}/logs"
[users]
service = "nobody"
[ports]
p2p = {free_port()}
http = {free_port()}
authrpc = {free_port()}
{extra}""")
    os.chmod(work, 0o755)
    return path


def cpu_ns(pid):
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def bootstrap(binary, runs):
    """The agent's CPU time until its child runs: a stub geth (version, init, then a marker and sleep)."""
    results = []
    for _ in range(runs):
        work = tempfile.mkdtemp()
        # The child runs as the service user (nobody) when this runs as root: it needs a writable place.
        drop = os.path.join(work, "drop")
        os.mkdir(drop)
        os.chmod(drop, 0o1777)
        marker = os.path.join(drop, "child-started")
        stub = os.path.join(work, "geth")
        with open(stub, "w") as f:
            f.write(f"""#!/bin/sh
case "$1" in
  version) echo "Version: 1.13.15-stable"; exit 0 ;;
  init) mkdir -p "$3/geth/chaindata"; exit 0 ;;
esac
: > {marker}
exec sleep 1000
""")
        os.chmod(stub, 0o755)
        cfg = config(work, stub)
        agent = subprocess.Popen([binary, "run", "--local", "--role", "rpc", "--environment", "bench",
                                  "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=dict(os.environ, NODE_AGENT_LOG="warn"))
        while not os.path.exists(marker):
            if agent.poll() is not None:
                sys.exit("node-agent exited during the bootstrap benchmark")
            time.sleep(0.0005)
        results.append(cpu_ns(agent.pid) / 1e6)
        agent.terminate()
        agent.wait()
        shutil.rmtree(work, ignore_errors=True)
    return sorted(results)[len(results) // 2]


def steady_rss(binary, port, seconds=20):
    """VmRSS of the agent after `seconds` supervising the geth stand-in and shipping its lines to moto."""
    work = tempfile.mkdtemp()
    cfg = config(work, os.path.join(REPO, "tests/standins/geth"))
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_REGION="eu-central-1",
               AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", NODE_AGENT_LOG="warn")
    err = open(os.path.join(work, "agent.err"), "w+")
    agent = subprocess.Popen([binary, "run", "--local", "--role", "sealer", "--environment", "dev",
                              "--config", cfg], stdout=subprocess.DEVNULL, stderr=err, env=env)
    time.sleep(seconds)
    if agent.poll() is not None:
        err.seek(0)
        sys.exit("node-agent exited during the RSS benchmark:\n" + err.read())
    with open(f"/proc/{agent.pid}/status") as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024
    agent.terminate()
    agent.wait()
    shutil.rmtree(work, ignore_errors=True)
    return rss


def paced_get(port, path, rate, seconds, timeout=5.0):
    """GET `path` on 127.0.0.1:`port` at `rate` requests/s for `seconds`, open loop: request i is due at
    start + i/rate whatever the earlier ones are doing (a selector keeps any number in flight), each on a
    new TCP connection (connect, one request with `Connection: close`, read the whole response, close), as
    an ALB health check does. A request's latency runs from its scheduled time to the last byte of its
    body, so a stall (of the agent, or of this client) counts against every request it delays instead of
    being hidden by coordinated omission. A request that fails or takes longer than `timeout` counts as an
    infinite latency. Returns (sorted latencies in s, status codes, errors, sorted send lags in s)."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05
    latencies, lags = [], []
    codes, errors = collections.Counter(), collections.Counter()
    due = 0

    def finish(s, st, error=None):
        sel.unregister(s)
        s.close()
        if error:
            errors[error] += 1
            latencies.append(float("inf"))
        else:
            latencies.append(time.perf_counter() - st["due"])

    def complete(buf):
        head, sep, body = buf.partition(b"\r\n\r\n")
        if not sep:
            return None
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        return int(head.split(b" ", 2)[1]) if m and len(body) >= int(m.group(1)) else None

    while due < total or sel.get_map():
        now = time.perf_counter()
        while due < total and start + due / rate <= now:
            s = socket.socket()
            s.setblocking(False)
            st = {"due": start + due / rate, "buf": b"", "sent": False}
            lags.append(now - st["due"])
            due += 1
            err = s.connect_ex(("127.0.0.1", port))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                errors[os.strerror(err)] += 1
                latencies.append(float("inf"))
                continue
            sel.register(s, selectors.EVENT_WRITE, st)
        for key in list(sel.get_map().values()):
            if now - key.data["due"] > timeout:
                finish(key.fileobj, key.data, "timeout")
        wait = max(0.0, start + due / rate - time.perf_counter()) if due < total else 0.1
        for key, _ in sel.select(wait):
            s, st = key.fileobj, key.data
            try:
                if not st["sent"]:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        finish(s, st, os.strerror(err))
                        continue
                    s.send(request)
                    st["sent"] = True
                    sel.modify(s, selectors.EVENT_READ, st)
                    continue
                chunk = s.recv(4096)
            except OSError as e:
                finish(s, st, e.strerror or type(e).__name__)
                continue
            st["buf"] += chunk
            code = complete(st["buf"])
            if code is not None:
                codes[code] += 1
                finish(s, st)
            elif not chunk:
                finish(s, st, "closed before a whole response")
    sel.close()
    return sorted(latencies), codes, errors, sorted(lags)


def percentile(sorted_values, p):
    """Nearest rank."""
    return sorted_values[min(len(sorted_values) - 1, max(0, -(-len(sorted_values) * p // 100) - 1))]


def cpu_ticks(pid):
    """utime + stime of the whole process (every thread), in clock ticks, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def threads_ns(pid):
    """The run time of the process's live threads, in ns, summed from /proc/PID/task/*/schedstat: exact where
    utime + stime is counted in ticks (a cross-check; misses threads that ended in between)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += cpu_ns(f"{pid}/task/{tid}")
        except OSError:
            pass
    return total


def cpu_percent(pid, seconds, load=None):
    """The agent's CPU over `seconds` of wall time while `load` runs (or nothing: idle), in % of one core:
    its utime + stime delta / wall; and the same from its threads' schedstat."""
    t0, c0, n0 = time.perf_counter(), cpu_ticks(pid), threads_ns(pid)
    load() if load else time.sleep(seconds)
    t1, c1, n1 = time.perf_counter(), cpu_ticks(pid), threads_ns(pid)
    return 100 * (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0), 100 * (n1 - n0) / 1e9 / (t1 - t0)


def start_agent(binary, extra):
    """One agent, `run --local --role rpc --environment bench`, supervising the geth stand-in with logs in
    files (no AWS_* variables, so local mode ships nothing), `[health] listen` on a free loopback port plus
    the config lines `extra` (which go on under `[health]`). Returns (process, port, work dir, its stderr)."""
    work = tempfile.mkdtemp()
    port = free_port()
    cfg = config(work, os.path.join(REPO, "tests/standins/geth"),
                 f'[health]\nlisten = "127.0.0.1:{port}"\n{extra}')
    # No AWS_REGION: local mode then keeps the logs in files (no shipping in the figures).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["NODE_AGENT_LOG"] = "warn"
    err = open(os.path.join(work, "agent.err"), "w+")
    agent = subprocess.Popen([binary, "run", "--local", "--role", "rpc", "--environment", "bench",
                              "--config", cfg], stdout=subprocess.DEVNULL, stderr=err, env=env)
    return agent, port, work, err


def wait_ready(agents):
    """Waits until GET /ready says 200 on every (process, port, work, stderr) of `agents` (the stand-in's
    first block, ~10 s; at most 30 s, then it goes on with 503s). Returns None, or why one of them has no
    health endpoint (it exited, e.g. on a config it rejects; or it never answered): its last stderr line."""
    deadline, answered, ready = time.monotonic() + 30, set(), set()
    while True:
        for agent, port, _, err in agents:
            if agent.poll() is not None or (time.monotonic() > deadline and port not in answered):
                err.seek(0)
                why = err.read().strip().splitlines()
                status = agent.poll()
                why = why[-1] if why else f"exited {status}" if status is not None else "no answer in 30 s"
                return why
            if port not in ready:
                _, codes, _, _ = paced_get(port, "/ready", 1, 1, timeout=1)
                answered |= {port} if codes else set()
                ready |= {port} if 200 in codes else set()
        if len(ready) == len(agents) or time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def stop_agent(agent, _port, work, err):
    if agent.poll() is None:
        agent.terminate()
        agent.wait()
    err.close()
    shutil.rmtree(work, ignore_errors=True)


def health(binary, rate=200, seconds=10, cpu_rate=10, cpu_seconds=20):
    """The health endpoint under load: one agent (start_agent), once GET /ready says 200 (wait_ready) and
    after a short settle: its CPU idle for `cpu_seconds` (no checks), then its CPU while GET /ready comes at
    `cpu_rate`/s for as long, then GET /ready latency at `rate`/s for `seconds` (see paced_get: open loop, a
    new connection per request). Returns (latency p50 ms, p99 ms, CPU % of one core at cpu_rate, CPU % idle,
    detail text), or None when this binary rejects the config (one without health.listen) or never answers
    on it."""
    started = start_agent(binary, "")
    agent, port, _, err = started
    try:
        why = wait_ready([started])
        if why:
            return None, f"no health endpoint: {why}"
        time.sleep(2)
        idle, idle_ns = cpu_percent(agent.pid, cpu_seconds)
        checked = []
        busy, busy_ns = cpu_percent(agent.pid, cpu_seconds,
                           lambda: checked.append(paced_get(port, "/ready", cpu_rate, cpu_seconds)))
        lat, codes, errors, lags = paced_get(port, "/ready", rate, seconds)
        if agent.poll() is not None:
            err.seek(0)
            sys.exit("node-agent exited during the health endpoint benchmark:\n" + err.read())
        p50, p99 = (percentile(lat, p) * 1e3 for p in (50, 99))
        detail = (f"{len(lat)} GET /ready at {rate}/s, new connection each: p50 {p50:.2f} ms, "
                  f"p90 {percentile(lat, 90) * 1e3:.2f} ms, p99 {p99:.2f} ms, max {lat[-1] * 1e3:.2f} ms; "
                  f"answers {show(codes)}; errors {show(errors)}; this client's send lag p99 "
                  f"{percentile(lags, 99) * 1e3:.2f} ms, max {lags[-1] * 1e3:.2f} ms\n"
                  f"agent CPU over {cpu_seconds} s, % of one core, utime+stime (threads' schedstat): idle "
                  f"{idle:.3f}% ({idle_ns:.3f}%), at {cpu_rate} checks/s {busy:.3f}% ({busy_ns:.3f}%); "
                  f"answers {show(checked[0][1])}; errors {show(checked[0][2])}")
        return (p50, p99, busy, idle), detail
    finally:
        stop_agent(*started)


def vm_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def snapshot(pids):
    """(wall time, [utime + stime ticks], [threads' schedstat ns]) of every pid, for cpu_between."""
    return time.perf_counter(), [cpu_ticks(p) for p in pids], [threads_ns(p) for p in pids]


def cpu_between(a, b, i):
    """The CPU of the i-th pid between two snapshots, % of one core: by utime + stime, and by schedstat."""
    wall = b[0] - a[0]
    return (100 * (b[1][i] - a[1][i]) / os.sysconf("SC_CLK_TCK") / wall,
            100 * (b[2][i] - a[2][i]) / 1e9 / wall)


def metrics(binary, scrape_rate=1, scrape_seconds=20, burst_rate=50, burst_seconds=10):
    """The metrics path: two agents side by side (start_agent), both with `[health] interval_secs = 1` so
    that an EMF event per child goes to metrics.log every second: ON with the default `[metrics]` (emf =
    true), OFF with `[metrics] emf = false`. Once both say ready and after a short settle, over the same
    `scrape_seconds` window: GET /metrics on ON at `scrape_rate`/s (a Prometheus-like scrape; latency as
    paced_get, a new connection each) and nothing on OFF; the CPU of both (ON - OFF is the metrics path's
    own cost: EMF events + scrapes; the health checks every second are in both). Then GET /metrics on ON
    at `burst_rate`/s for `burst_seconds`, then both agents' VmRSS. Returns ((scrape p50 ms, p99, burst
    p50, p99, CPU ON, CPU OFF, ON - OFF, RSS ON), detail), or (None, why) when this binary rejects
    `[metrics]` (one before it existed) or does not serve GET /metrics."""
    on = start_agent(binary, "interval_secs = 1\n")
    off = start_agent(binary, "interval_secs = 1\n[metrics]\nemf = false\n")
    try:
        # The one with `[metrics]` first: a binary from before it exits on it at once.
        why = wait_ready([off, on])
        if why:
            return None, f"no metrics: {why}"
        time.sleep(2)
        port = on[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            answer = b"".join(iter(lambda: s.recv(65536), b""))
        head, _, body = answer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            return None, f"no GET /metrics: {head.splitlines()[0].decode(errors='replace')}"
        samples = sum(1 for l in body.decode().splitlines() if l and not l.startswith("#"))
        emf_log = lambda agent: os.path.join(agent[2], "logs", "metrics.log")
        events = lambda agent: sum(1 for _ in open(emf_log(agent))) if os.path.exists(emf_log(agent)) else 0
        pids = [on[0].pid, off[0].pid]
        e0, a = events(on), snapshot(pids)
        lat, codes, errors, lags = paced_get(port, "/metrics", scrape_rate, scrape_seconds)
        b, e1 = snapshot(pids), events(on)
        (cpu_on, ns_on), (cpu_off, ns_off) = cpu_between(a, b, 0), cpu_between(a, b, 1)
        blat, bcodes, berrors, blags = paced_get(port, "/metrics", burst_rate, burst_seconds)
        for agent in (on, off):
            if agent[0].poll() is not None:
                agent[3].seek(0)
                sys.exit("node-agent exited during the metrics benchmark:\n" + agent[3].read())
        rss_on, rss_off = vm_rss_mib(on[0].pid), vm_rss_mib(off[0].pid)
        p = lambda l, q: percentile(l, q) * 1e3
        line = lambda l, c, e, g, r, n: (
            f"{len(l)} GET /metrics at {r}/s over {n} s, new connection each: p50 {p(l, 50):.2f} ms, "
            f"p90 {p(l, 90):.2f} ms, p99 {p(l, 99):.2f} ms, max {l[-1] * 1e3:.2f} ms; answers {show(c)}; "
            f"errors {show(e)}; this client's send lag p50 {p(g, 50):.2f} ms, p99 {p(g, 99):.2f} ms, max {g[-1] * 1e3:.2f} ms\n")
        detail = (f"GET /metrics: {len(body)} bytes, {samples} samples\n"
                  + line(lat, codes, errors, lags, scrape_rate, scrape_seconds)
                  + line(blat, bcodes, berrors, blags, burst_rate, burst_seconds)
                  + f"agent CPU over the {scrape_seconds} s of scrapes, % of one core, utime+stime (threads' "
                  f"schedstat): EMF on + scraped {cpu_on:.3f}% ({ns_on:.3f}%), emf = false and not scraped "
                  f"{cpu_off:.3f}% ({ns_off:.3f}%), difference {cpu_on - cpu_off:.3f}% "
                  f"({ns_on - ns_off:.3f}%); EMF events written meanwhile: {e1 - e0} "
                  f"(metrics.log of emf = false: {events(off)} lines)\n"
                  f"VmRSS after the burst: EMF on + scraped {rss_on:.1f} MiB, emf = false and not scraped "
                  f"{rss_off:.1f} MiB")
        return (p(lat, 50), p(lat, 99), p(blat, 50), p(blat, 99), cpu_on, cpu_off, cpu_on - cpu_off,
                rss_on), detail
    finally:
        stop_agent(*on)
        stop_agent(*off)


def show(counter):
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items(), key=str)) or "none"


def ratio_row(text, label):
    m = re.search(r"\| " + re.escape(label) + r"\s*\|([^\n]*)", text)
    return [c.strip() for c in m.group(1).split("|") if c.strip()] if m else None


def static_build(tree, out):
    """Builds the shipped binary of `tree` (a checkout) and copies it to `out`: the target directory is
    shared, so the next build would overwrite it in place."""
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    subprocess.run(["bake/static-build"], cwd=tree, check=True, text=True, capture_output=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=target))
    # Where bake/static-build puts it (an older tree's script prints its own target directory).
    built = os.path.join(target, "x86_64-unknown-linux-gnu", "release", "node-agent")
    shutil.copy2(built, out)
    return out


def measure(binary, args):
    """Every figure for one binary, as (name, number or None for n/a, unit, target, lower is better), and
    the detail texts."""
    rows, details = [], []
    number = lambda v: float(str(v).rstrip("x"))
    sections = args.only or ["all"]
    if "all" in sections:
        gs = sh([sys.executable, "tests/bench/get_secret.py", "--runs", str(args.runs), "--binary", binary])
        gs_ratio = ratio_row(gs, "ratio node-agent/python")
        logs = sh(["bench/logs.sh", str(args.lines)], env=dict(os.environ, NODE_AGENT=binary))
        logs_agent = ratio_row(logs, "node-agent")
        logs_ratio = ratio_row(logs, "ratio Python / node-agent")
        boot_ms = bootstrap(binary, args.runs)
        moto, port = start_moto()
        try:
            rss = steady_rss(binary, port)
        finally:
            moto.kill()
            moto.wait()
        size = os.path.getsize(binary) / 2**20
        rows += [
            ("get-secret wall time vs boto3 script", number(gs_ratio[0]), "x", "<= 0.05x", True),
            ("get-secret peak RSS vs boto3 script", number(gs_ratio[2]), "x", "<= 0.33x", True),
            ("bootstrap: agent CPU from start to child exec", boot_ms, " ms", "<= 50 ms", True),
            ("log shipping CPU per 1M lines", number(logs_agent[2]), " s", "<= 1 s", True),
            ("log shipping CPU vs boto3 shipper", number(logs_ratio[1]), "x less", ">= 10x less", False),
            ("steady-state RSS supervising + shipping", rss, " MiB", "<= 15 MiB", True),
            ("static binary size", size, " MiB", "<= 10 MB", True),
        ]
        details += [("get-secret", gs), ("log shipping", logs)]
    if "all" in sections or "health" in sections:
        rows, details = health_rows(binary, rows, details)
    if "all" in sections or "metrics" in sections:
        figures, detail = metrics(binary)
        scrape50, scrape99, burst50, burst99, cpu_on, cpu_off, cost, rss = figures or (None,) * 8
        rows += [
            ("metrics GET /metrics p50 at 1/s (a scrape), new connection each", scrape50, " ms",
             "(reference)", True),
            ("metrics GET /metrics p99 at 1/s (a scrape), new connection each", scrape99, " ms",
             "(reference)", True),
            ("metrics GET /metrics p50 at 50/s (a burst), new connection each", burst50, " ms",
             "(p99 is the target)", True),
            ("metrics GET /metrics p99 at 50/s (a burst), new connection each", burst99, " ms",
             "<= 10 ms", True),
            ("metrics: agent CPU, EMF every 1 s + scraped 1/s, % of one core", cpu_on, "%",
             "(the difference is the target)", True),
            ("metrics: same agent, emf = false, not scraped, % of one core", cpu_off, "%", "(reference)",
             True),
            ("metrics path's own cost (the difference), % of one core", cost, "%", "<= 1%", True),
            ("RSS, EMF every 1 s + scraped, after the burst", rss, " MiB", "<= 15 MiB", True),
        ]
        details.append(("metrics", detail + "\n"))
    if "boot" in sections:
        rows, details = boot_rows(binary, rows, details, args.runs)
    return rows, details


def boot_rows(binary, rows, details, runs):
    """The agent's boot in the nspawn boot test beside cloud-init's stages, from tests/boot/bench_boot.py
    in the same run (root; systemd-nspawn): its final JSON line."""
    n = str(max(3, min(runs, 5)))
    out = subprocess.run([sys.executable, "tests/boot/bench_boot.py", "--agent", binary, "--boots", n,
                          "--runs", n], cwd=REPO, text=True, capture_output=True)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    try:
        b = json.loads(last)
        agent, ci = b["agent"], b["cloud_init"]
        figures = (agent["run_to_ready_ms"]["median"], agent["unit_to_ready_ms"]["median"],
                   agent["peak_rss_kib"]["median"] / 1024, ci["version_cmd"]["wall_ms"]["median"],
                   ci["single"]["wall_ms"]["median"], ci["four_stages_floor_wall_ms"],
                   ci["version_cmd"]["peak_rss_kib"]["median"] / 1024)
        detail = out.stdout
    except (ValueError, KeyError, TypeError):
        figures, detail = (None,) * 7, f"bench_boot.py failed (exit {out.returncode}):\n{out.stderr[-2000:]}"
    run, unit, rss, ci_version, ci_single, ci_floor, ci_rss = figures
    rows += [
        ("boot: node-agent run start to READY (nspawn, user-data config)", run, " ms", "(beside cloud-init)", True),
        ("boot: unit start (prepare + run) to READY", unit, " ms", "(beside cloud-init)", True),
        ("boot: node-agent peak RSS at READY", rss, " MiB", "<= 15 MiB", True),
        ("boot: cloud-init --version (floor of each of its 4 stages)", ci_version, " ms", "(reference)", True),
        ("boot: cloud-init single --name final_message", ci_single, " ms", "(reference)", True),
        ("boot: cloud-init's 4 stages, estimated as 4 x --version", ci_floor, " ms", "(reference)", True),
        ("boot: cloud-init --version peak RSS", ci_rss, " MiB", "(reference)", True),
    ]
    details.append(("boot", detail + "\n"))
    return rows, details


def health_rows(binary, rows, details):
    figures, detail = health(binary)
    p50, p99, busy, idle = figures or (None,) * 4
    rows += [
        ("health GET /ready p50 at 200/s, new connection each", p50, " ms", "(p99 is the target)", True),
        ("health GET /ready p99 at 200/s, new connection each", p99, " ms", "<= 5 ms", True),
        ("health: agent CPU at 10 checks/s, % of one core", busy, "%", "<= 1%", True),
        ("health: same agent idle (no checks), % of one core", idle, "%", "(reference)", True),
    ]
    details.append(("health endpoint", detail + "\n"))
    return rows, details


def fmt(v, unit):
    if v is None:
        return "n/a"
    return f"{v:.3f}{unit}" if v < 1 else f"{v:.1f}{unit}" if unit != "x" else f"{v:.2f}{unit}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--against", metavar="REV", help="also measure commit REV, side by side")
    ap.add_argument("--only", choices=["health", "metrics", "boot"], action="append",
                    help="run only these rows (the health endpoint's, the metrics path's; repeatable); "
                         "boot (root, systemd-nspawn) runs only when asked")
    args = ap.parse_args()

    # The binary the bake ships, for every measurement.
    work = tempfile.mkdtemp(prefix="node-agent-bench-")
    baseline = None
    if args.against:
        tree = os.path.join(work, "baseline")
        sh(["git", "worktree", "add", "--detach", tree, args.against])
        try:
            baseline = static_build(tree, os.path.join(work, "node-agent-baseline"))
        finally:
            sh(["git", "worktree", "remove", "--force", tree])
    binary = static_build(REPO, os.path.join(work, "node-agent"))

    rows, details = measure(binary, args)
    base_rows, base_details = measure(baseline, args) if baseline else (None, None)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}")
    print()
    if base_rows:
        print(f"| benchmark | node-agent | baseline {args.against} | change (worse when > 1.10) | target |")
        print("|---|---:|---:|---:|---:|")
        for (name, v, unit, target, lower), (_, b, _, _, _) in zip(rows, base_rows):
            change = f"{v / b if lower else b / v:.2f}" if b and v else "n/a"
            print(f"| {name} | {fmt(v, unit)} | {fmt(b, unit)} | {change} | {target} |")
    else:
        print("| benchmark | node-agent | target |")
        print("|---|---:|---:|")
        for name, v, unit, target, _ in rows:
            print(f"| {name} | {fmt(v, unit)} | {target} |")
    print()
    for name, text in details:
        print(f"{name} detail:\n{text}")
    for name, text in base_details or []:
        if name in ("health endpoint", "metrics", "boot"):
            print(f"{name} detail, baseline {args.against}:\n{text}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
