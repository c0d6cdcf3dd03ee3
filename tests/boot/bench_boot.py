#!/usr/bin/env python3
"""Benchmark (not a test): what node-agent costs at boot beside what cloud-init costs, measured in one run
on the boot test's Debian 12 rootfs (issue 24).

    tests/boot/bench_boot.py --agent BINARY [--boots 5] [--runs 5] [--module final_message]
                             [--config user-data|file] [--keep]

As root (systemd-nspawn, overlay mounts), with what tests/boot/run needs (systemd-container, debootstrap,
moto). For the shipped binary: `tests/boot/bench_boot.py --agent "$(bake/static-build)"`.

node-agent: the boot test's rig (tests/boot/boot_test.py: the cached rootfs, `node-agent install --root
LAYER --enable`, moto and the IMDSv2 emulator on loopback) boots a bootnode machine BOOTS times with
systemd-nspawn -b. Its configuration is only in user-data (`--config user-data`, the default: the
`#node-agent` TOML of the boot test's userdata scenario, with the installed default config.toml) or only
in /etc/node-agent/config.toml (`--config file`, for an agent that does not read user-data). Per boot,
from systemd's own monotonic timestamps of node-agent.service (systemctl show):
  - run start to READY: ExecMainStartTimestampMonotonic (systemd forks `node-agent run`) to
    ActiveEnterTimestampMonotonic (the agent's sd_notify READY=1; Type=notify);
  - unit start to READY: InactiveExitTimestampMonotonic (ExecStartPre=+`node-agent prepare` starts) to
    READY, i.e. prepare + run;
  - CPU: the `run` process's user + system time when the unit is first seen active (up to READY, plus at
    most one 0.1 s poll of health checks);
  - peak RSS: VmHWM of the `run` process once READY (from the host's /proc; `prepare` has exited by then
    and is not measured).
READY comes once the role's child runs and answers its first health check, so the time includes the
child's own start: here the bootnode stand-in, a Python script (tests/standins), not the real bootnode.
The first boot also creates the log group and streams in moto; the median over the boots is reported.

cloud-init: Debian 12's cloud-init (apt, cached as a layer over the same base rootfs in
/var/cache/node-agent-boot/cloud-init-KEY), in a fresh overlay, not booted (systemd-nspawn running one
command), with a NoCloud seed and `datasource_list: [NoCloud, None]` so that nothing probes the network.
GNU time -v (inside the container) measures wall time, CPU (user + system) and peak RSS of, RUNS times
each:
  - `cloud-init --version` (the interpreter and cloud-init's imports: the floor of every stage);
  - `cloud-init single --name MODULE --frequency always` (one module run as a stage runs it; the default
    final_message is the final stage's last module).
A booted instance runs four stages (init-local, init, modules:config, modules:final), each at least
`--version`'s cost; `four_stages_floor_*` in the JSON is four times the median `--version` (an estimate,
labelled as such, not a measurement).

The last boot's journal lines from run's start to READY are printed with their offsets (where the time goes).

Output: a table, then one final line of JSON (machine-readable, for bench/report.py):
  {"bench": "boot", "agent": {"boots": N, "config": "user-data", "role": "bootnode",
   "run_to_ready_ms": {"median", "min", "max", "each"}, "unit_to_ready_ms": {...}, "cpu_ms": {...},
   "peak_rss_kib": {...}}, "cloud_init": {"version": "22.4.2", "runs": N, "version_cmd": {"argv",
   "wall_ms": {...}, "cpu_ms": {...}, "peak_rss_kib": {...}}, "single": {..., "module": M},
   "four_stages_floor_wall_ms": F, "four_stages_floor_rss_kib": R}, "rootfs": "rootfs-KEY", "machine": "..."}
Times in milliseconds, sizes in KiB; each {...} is {"median", "min", "max", "each"}.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import boot_test as bt  # noqa: E402

CLOUD_INIT_PACKAGES = ["cloud-init", "time"]
CLOUD_INIT_RECIPE = "1"
ROLE = bt.USER_DATA_ROLE


def stats(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1), "each": [round(v, 1) for v in values]}


# ---------------------------------------------------------------------------------------------------------
# node-agent: boots of a bootnode machine


def bench_agent(rig: bt.Rig, boots: int, config: str) -> dict:
    health_port, bootnode_port = [p for p in bt.free_ports(8) if p not in rig.ports.values()][:2]
    tags = {"Role": ROLE, "Environment": bt.ENVIRONMENT, "Name": "bench-boot"}
    if config == "user-data":
        m = rig.machine("bench", tags, bt.user_data_text(health_port, bootnode_port))
        (m.root / "etc/node-agent/config.toml").write_text(rig.installed_config)
    else:
        m = rig.machine("bench", tags)
        health_port = rig.ports["health"]
    run_ms, unit_ms, rss, cpu = [], [], [], []
    tick = os.sysconf("SC_CLK_TCK")
    for i in range(boots):
        m.boot()
        u = m.wait_active(120)
        # The run process's CPU (user + system) as soon as the unit is seen active: its work up to READY
        # plus at most one poll interval (0.1 s) of health checks.
        stat = Path(f"/proc/{m.host_pid(int(u['MainPID']))}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        cpu.append((int(fields[11]) + int(fields[12])) * 1000 / tick)
        m.wait_healthy()
        props = m.exec(["systemctl", "show", bt.UNIT, "-p", "InactiveExitTimestampMonotonic,"
                        "ExecMainStartTimestampMonotonic,ActiveEnterTimestampMonotonic,MainPID"]).stdout
        p = dict(line.split("=", 1) for line in props.splitlines() if "=" in line)
        start, main, ready = (int(p[k]) for k in ("InactiveExitTimestampMonotonic",
                                                  "ExecMainStartTimestampMonotonic",
                                                  "ActiveEnterTimestampMonotonic"))
        bt.expect(0 < start <= main < ready, f"timestamps out of order: {p}")
        run_ms.append((ready - main) / 1000)
        unit_ms.append((ready - start) / 1000)
        hwm = bt.proc_status(m.host_pid(int(p["MainPID"]))).get("VmHWM", "0 kB").split()[0]
        rss.append(float(hwm))
        bt.log(f"  boot {i + 1}: run start -> READY {run_ms[-1]:.1f} ms, unit start (prepare) -> READY "
               f"{unit_ms[-1]:.1f} ms, run's CPU {cpu[-1]:.0f} ms, run's peak RSS {int(hwm) / 1024:.1f} MiB")
        if i == boots - 1:
            log_phases(m, main, ready)
        m.poweroff()
    m.destroy()
    return {"boots": boots, "config": config, "role": ROLE, "run_to_ready_ms": stats(run_ms),
            "unit_to_ready_ms": stats(unit_ms), "cpu_ms": stats(cpu), "peak_rss_kib": stats(rss)}


def log_phases(m: bt.Machine, main: int, ready: int) -> None:
    """Where the last boot's time went: the unit's journal lines from `run`'s start to READY, each with its
    offset from that start (journal and systemd use the same monotonic clock)."""
    out = m.exec(["journalctl", "-u", bt.UNIT, "-b", "-o", "json", "--no-pager", "--output-fields",
                  "MESSAGE,__MONOTONIC_TIMESTAMP"]).stdout
    bt.log("  last boot, from `node-agent run`'s start (journal):")
    for line in out.splitlines():
        e = json.loads(line)
        t = int(e["__MONOTONIC_TIMESTAMP"])
        if main <= t <= ready + 50_000 and isinstance(e.get("MESSAGE"), str):
            bt.log(f"    +{(t - main) / 1000:7.1f} ms  {e['MESSAGE'].strip()[:110]}")
    bt.log(f"    +{(ready - main) / 1000:7.1f} ms  READY (systemd: active)")


# ---------------------------------------------------------------------------------------------------------
# cloud-init: a layer with it over the same base rootfs


def ensure_cloud_init_layer(base: Path) -> Path:
    key = hashlib.sha256(json.dumps({"base": base.name, "packages": CLOUD_INIT_PACKAGES,
                                     "recipe": CLOUD_INIT_RECIPE}).encode()).hexdigest()[:16]
    final = bt.CACHE / f"cloud-init-{key}"
    with open(bt.CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "usr/bin/cloud-init").exists():
            bt.log(f"cloud-init layer: cached {final}")
            return final
        bt.log(f"cloud-init layer: building {final} (apt-get install {' '.join(CLOUD_INIT_PACKAGES)})")
        tmp = bt.CACHE / f"cloud-init-{key}.tmp"
        merged = tmp / "merged"
        if merged.exists() and bt.is_mounted(merged):
            bt.unmount(merged)
        shutil.rmtree(tmp, ignore_errors=True)
        bt.mount_overlay([base], tmp / "upper", tmp / "work", merged)
        try:
            p = nspawn(merged, "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                       f"--no-install-recommends {' '.join(CLOUD_INIT_PACKAGES)} && apt-get clean && "
                       "rm -rf /var/lib/apt/lists/*", timeout=900, resolv=True)
            if p.returncode != 0:
                raise RuntimeError(f"apt-get in the cloud-init layer failed:\n{(p.stdout + p.stderr)[-3000:]}")
        finally:
            bt.unmount(merged)
        os.rename(tmp / "upper", final)
        shutil.rmtree(tmp, ignore_errors=True)
        for old in bt.CACHE.glob("cloud-init-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final


def nspawn(root: Path, script: str, timeout: float = 120, resolv: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--timezone=off",
                           f"--resolv-conf={'copy-host' if resolv else 'off'}", "-D", str(root),
                           "sh", "-c", script], capture_output=True, text=True, timeout=timeout)


SEED_CFG = """# bench_boot.py: no datasource probing (no network, no metadata service): NoCloud from the seed below.
datasource_list: [NoCloud, None]
"""


def gnu_time(root: Path, argv: str) -> tuple[float, float, float, str]:
    """(wall ms, CPU ms, peak RSS KiB, output) of one command in the container, measured by GNU time -v
    there."""
    p = nspawn(root, f"/usr/bin/time -v -o /root/time.out {argv} >/root/cmd.out 2>&1; echo rc=$?; "
               "cat /root/cmd.out; cat /root/time.out")
    out = p.stdout
    rc = re.search(r"^rc=(\d+)$", out, re.M)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", out)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out)
    if not (rc and wall and rss) or rc.group(1) != "0":
        raise RuntimeError(f"`{argv}` in the cloud-init rootfs: {out[-2000:]} {p.stderr[-1000:]}")
    h, mnt, sec = wall.groups()
    ms = ((int(h or 0) * 60 + int(mnt)) * 60 + float(sec)) * 1000
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", out)) * 1000
    return ms, cpu, float(rss.group(1)), out


def bench_cloud_init(base: Path, work: Path, runs: int, module: str) -> dict:
    layer = ensure_cloud_init_layer(base)
    root = work / "cloud-init" / "root"
    bt.mount_overlay([layer, base], work / "cloud-init" / "upper", work / "cloud-init" / "work", root)
    try:
        (root / "etc/cloud/cloud.cfg.d/99-bench.cfg").write_text(SEED_CFG)
        seed = root / "var/lib/cloud/seed/nocloud"
        seed.mkdir(parents=True)
        (seed / "meta-data").write_text("instance-id: i-0bench0000000000\nlocal-hostname: bench\n")
        (seed / "user-data").write_text("#cloud-config\n{}\n")
        version = nspawn(root, "cloud-init --version 2>&1").stdout.strip().split()[-1]
        # The datasource found once (as the init stage would), so that `single` runs the module alone.
        init = nspawn(root, "cloud-init init --local >/root/init.out 2>&1; echo rc=$?; tail -n 5 /root/init.out")
        bt.log(f"  cloud-init {version}: init --local for the datasource: {init.stdout.splitlines()[0]}")
        rows = {}
        for name, argv in (("version_cmd", "cloud-init --version"),
                           ("single", f"cloud-init single --name {module} --frequency always")):
            wall, cpu, rss = [], [], []
            for i in range(runs):
                ms, cpu_ms, kib, out = gnu_time(root, argv)
                # The module really ran: final_message prints "Cloud-init v. X finished at ...".
                if name == "single" and module == "final_message" and "finished at" not in out:
                    raise RuntimeError(f"`{argv}` did not run the module: {out[-1500:]}")
                wall.append(ms)
                cpu.append(cpu_ms)
                rss.append(kib)
            bt.log(f"  `{argv}`: wall {statistics.median(wall):.0f} ms, CPU {statistics.median(cpu):.0f} ms, "
                   f"peak RSS {statistics.median(rss) / 1024:.1f} MiB (median of {runs})")
            rows[name] = {"argv": argv, "wall_ms": stats(wall), "cpu_ms": stats(cpu), "peak_rss_kib": stats(rss)}
        rows["single"]["module"] = module
        floor_ms = 4 * rows["version_cmd"]["wall_ms"]["median"]
        return {"version": version, "runs": runs, **rows, "four_stages_floor_wall_ms": round(floor_ms, 1),
                "four_stages_floor_rss_kib": rows["version_cmd"]["peak_rss_kib"]["median"]}
    finally:
        bt.unmount(root)


# ---------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", required=True, type=Path)
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--module", default="final_message")
    ap.add_argument("--config", choices=["user-data", "file"], default="user-data")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        bt.log("bench_boot: needs root")
        return 1

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    rig = bt.Rig(args.agent.resolve(), args.keep, want_ethstats=False)
    try:
        rig.setup()
        bt.log(f"node-agent: {args.boots} boots of a {ROLE} (configuration in {args.config})")
        agent = bench_agent(rig, args.boots, args.config)
        bt.log(f"cloud-init: {args.runs} runs of each command, same base rootfs ({rig.base.name})")
        cloud = bench_cloud_init(rig.base, rig.work, args.runs, args.module)
    finally:
        rig.teardown()
    a, c = agent, cloud
    mib = 1024
    rows = [
        ("node-agent: run start -> READY (sd_notify)", f"{a['run_to_ready_ms']['median']:.0f} ms",
         f"{a['cpu_ms']['median']:.0f} ms", f"{a['peak_rss_kib']['median'] / mib:.1f} MiB"),
        ("node-agent: unit start (prepare + run) -> READY", f"{a['unit_to_ready_ms']['median']:.0f} ms", "", ""),
        ("cloud-init --version", f"{c['version_cmd']['wall_ms']['median']:.0f} ms",
         f"{c['version_cmd']['cpu_ms']['median']:.0f} ms", f"{c['version_cmd']['peak_rss_kib']['median'] / mib:.1f} MiB"),
        (f"cloud-init single --name {c['single']['module']}", f"{c['single']['wall_ms']['median']:.0f} ms",
         f"{c['single']['cpu_ms']['median']:.0f} ms", f"{c['single']['peak_rss_kib']['median'] / mib:.1f} MiB"),
        ("cloud-init: 4 stages, floor (4 x --version; estimate)", f"{c['four_stages_floor_wall_ms']:.0f} ms", "",
         f"{c['four_stages_floor_rss_kib'] / mib:.1f} MiB each"),
    ]
    bt.log(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}; "
           f"medians of {a['boots']} boots / {c['runs']} runs\n")
    bt.log("| what | wall time | CPU | peak RSS |\n|---|---:|---:|---:|")
    for r in rows:
        bt.log(f"| {' | '.join(r)} |")
    doc = {"bench": "boot", "agent": agent, "cloud_init": cloud, "rootfs": rig.base.name,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}"}
    print(json.dumps(doc, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
