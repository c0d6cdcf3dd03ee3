#!/usr/bin/env python3
"""One benchmark report: runs every benchmark side by side in one run and prints one table of results and
ratios against their baselines and targets.

    python3 bench/report.py [--lines 1000000] [--runs 10]

- get-secret vs the seed's boto3 get_secret.py (tests/bench/get_secret.py): wall and peak RSS ratios;
- bootstrap: the agent's own CPU time from start to the child's exec (local mode, loopback only, a child
  that records its start), read from /proc/PID/schedstat (ns) the moment the child runs;
- log shipping vs a boto3 shipper (bench/logs.sh): CPU s per million lines and the ratio;
- steady-state RSS of the agent supervising the geth stand-in and shipping its lines to moto;
- the static binary's size.
Not a test: numbers depend on the machine, which the report prints. Needs moto[server], boto3, GNU time.

    python3 bench/report.py --against REV

also builds commit REV (in a temporary git worktree, sharing this checkout's target directory) and runs
every benchmark on both binaries in the same run, printing each figure side by side with the change
(this / baseline; for every row, above 1.10 is a regression of more than 10%).
"""
import argparse
import os
import platform
import re
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


def ratio_row(text, label):
    m = re.search(r"\| " + re.escape(label) + r"\s*\|([^\n]*)", text)
    return [c.strip() for c in m.group(1).split("|") if c.strip()] if m else None


def static_build(tree, out):
    """Builds the shipped binary of `tree` (a checkout) and copies it to `out`: the target directory is
    shared, so the next build would overwrite it in place."""
    target = os.path.join(REPO, "target")
    subprocess.run(["bake/static-build"], cwd=tree, check=True, text=True, capture_output=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=target))
    # Where bake/static-build puts it (an older tree's script prints its own target directory).
    built = os.path.join(target, "x86_64-unknown-linux-gnu", "release", "node-agent")
    shutil.copy2(built, out)
    return out


def measure(binary, args):
    """Every figure for one binary, as (name, number, unit, target, lower is better)."""
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
    number = lambda v: float(str(v).rstrip("x"))
    rows = [
        ("get-secret wall time vs boto3 script", number(gs_ratio[0]), "x", "<= 0.05x", True),
        ("get-secret peak RSS vs boto3 script", number(gs_ratio[2]), "x", "<= 0.33x", True),
        ("bootstrap: agent CPU from start to child exec", boot_ms, " ms", "<= 50 ms", True),
        ("log shipping CPU per 1M lines", number(logs_agent[2]), " s", "<= 1 s", True),
        ("log shipping CPU vs boto3 shipper", number(logs_ratio[1]), "x less", ">= 10x less", False),
        ("steady-state RSS supervising + shipping", rss, " MiB", "<= 15 MiB", True),
        ("static binary size", size, " MiB", "<= 10 MB", True),
    ]
    return rows, gs, logs


def fmt(v, unit):
    return f"{v:.3f}{unit}" if v < 1 else f"{v:.1f}{unit}" if unit != "x" else f"{v:.2f}{unit}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--against", metavar="REV", help="also measure commit REV, side by side")
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

    rows, gs, logs = measure(binary, args)
    base_rows = measure(baseline, args)[0] if baseline else None
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}")
    print()
    if base_rows:
        print(f"| benchmark | node-agent | baseline {args.against} | change (worse when > 1.10) | target |")
        print("|---|---:|---:|---:|---:|")
        for (name, v, unit, target, lower), (_, b, _, _, _) in zip(rows, base_rows):
            change = (v / b if lower else b / v) if b and v else float("nan")
            print(f"| {name} | {fmt(v, unit)} | {fmt(b, unit)} | {change:.2f} | {target} |")
    else:
        print("| benchmark | node-agent | target |")
        print("|---|---:|---:|")
        for name, v, unit, target, _ in rows:
            print(f"| {name} | {fmt(v, unit)} | {target} |")
    print()
    print("get-secret detail:\n" + gs)
    print("log shipping detail:\n" + logs)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
