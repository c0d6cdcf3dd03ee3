#!/usr/bin/env python3
"""The boot test: node-agent installed the way the bake installs it, booted under a real systemd PID 1.

Run it through tests/boot/run (which installs the tools and picks the agent binary); README "Boot test"
says what it proves. Outline:

- A Debian 12 rootfs (debootstrap --variant=minbase) cached outside the clone under CACHE, keyed by a
  hash of its inputs and rebuilt when missing.
- Per run, an "installed" overlay layer on top of it: `node-agent install --root LAYER --enable` (the
  bake's step), the geth/bootnode stand-ins in place of the pinned programs, the real ethstats server
  (tests/ethstats/prepare; the stand-in when its fixture is absent) laid out as the install lays it out, a
  unit drop-in that points the AWS SDK at the emulators, and /etc/node-agent/config.toml (local storage,
  free ports, short timeouts).
- Per machine, one more overlay layer, booted with systemd-nspawn -b on the host's network (no private
  network: the emulators listen on the host's loopback). Each machine gets its own cgroup, so that
  everything it started can be found and killed.
- The userdata scenario (issue 24): a bootnode whose only configuration is user-data (`#node-agent` and
  TOML, served by the IMDS emulator at /latest/user-data) over the config.toml `node-agent install` wrote
  (the defaults), then with no config.toml at all; the base rootfs has no cloud-init, which the scenario
  checks. Other machines get no user-data (404), except the bootnode: a cloud-init shell script, which the
  agent must leave alone.
- Checks run from the host: systemctl/journalctl/node-agent status through nsenter into the container,
  process facts from the host's /proc, files from the overlay's upper directory (everything the machine
  wrote to disk is there, and nothing else).

Everything it starts (emulators, containers, mounts, cgroups) is torn down on exit, on failure and on
SIGINT/SIGTERM; a run that was SIGKILLed is cleaned up by the next one.

Python 3.11 standard library plus boto3 (which moto brings).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import hashlib
import json
import os
import re
import secrets as pysecrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("NODE_AGENT_BOOT_CACHE", "/var/cache/node-agent-boot"))
RUNS = Path(os.environ.get("NODE_AGENT_BOOT_RUNS", "/var/tmp/node-agent-boot"))
MIRROR = os.environ.get("NODE_AGENT_BOOT_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
# python3: the stand-ins are Python scripts. ca-certificates: every Debian 12 AMI has it, and the agent
# (rustls with native roots) panics without any CA certificate. nodejs: the real ethstats server runs on
# Debian's Node.js, as on a baked host (docs/install-and-bake.md, "Pins").
PACKAGES = ["systemd", "dbus", "python3", "ca-certificates", "nodejs"]
# Bump when the way the rootfs is made changes (it is part of the cache key).
ROOTFS_RECIPE = "1"

REGION = "eu-central-1"
ENVIRONMENT = "dev"
UNIT = "node-agent.service"
CGROUP_GROUP = "node-agent-boot"
# The whole test must stay under 10 minutes on a 2-core machine (issue 10); this is the hard stop.
DEADLINE_SECS = 600

# Short timeouts: a bad setup must fail in seconds, a stop must not wait two minutes.
STOP_SECS = 10
INITIAL_BACKOFF_MS = 2000


def log(msg: str) -> None:
    print(msg, flush=True)


class CheckFailed(Exception):
    """One expectation did not hold; the message says what was seen."""


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def wait_for(what: str, timeout: float, fn, interval: float = 0.1):
    """Polls fn until it returns something truthy; fails naming `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > end:
            raise CheckFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def run(argv: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise CheckFailed(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    return p


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the process is SIGKILLed when this driver dies, however it dies."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_ports(n: int) -> list[int]:
    """n distinct ports free on loopback for both TCP and UDP right now."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("0.0.0.0", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


# ---------------------------------------------------------------------------------------------------------
# Process and cgroup facts from the host's /proc


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = v.strip()
    except OSError:
        return {}
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def cgroup_hierarchies() -> list[tuple[Path, str]]:
    """(mount point, this process's path) for each cgroup hierarchy systemd uses: the unified one and,
    on a hybrid host, name=systemd."""
    mounts = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fields, post_f = pre.split(), post.split()
        fstype, opts = post_f[0], post_f[2] if len(post_f) > 2 else ""
        if fstype == "cgroup2":
            mounts["v2"] = Path(fields[4])
        elif fstype == "cgroup" and "name=systemd" in opts:
            mounts["name=systemd"] = Path(fields[4])
    out = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, ctrl, path = line.split(":", 2)
        key = "v2" if hid == "0" else ctrl
        if key in mounts:
            out.append((mounts[key], path.lstrip("/")))
    return out


def cgroup_pids(root: Path) -> list[int]:
    pids = []
    if not root.is_dir():
        return pids
    for d, _, files in os.walk(root):
        if "cgroup.procs" in files:
            try:
                pids += [int(x) for x in Path(d, "cgroup.procs").read_text().split()]
            except OSError:
                pass
    return sorted(set(pids))


def remove_cgroup_tree(root: Path) -> None:
    if not root.is_dir():
        return
    for d, _, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
        try:
            os.rmdir(d)
        except OSError:
            pass


def kill_cgroup_tree(roots: list[Path]) -> None:
    for _ in range(50):
        pids = [p for r in roots for p in cgroup_pids(r)]
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)
    for r in roots:
        remove_cgroup_tree(r)


def is_mounted(path: Path) -> bool:
    p = str(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4] == p:
            return True
    return False


def unmount(path: Path) -> None:
    for _ in range(20):
        if not is_mounted(path):
            return
        subprocess.run(["umount", "-R", str(path)], capture_output=True)
        if is_mounted(path):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
            time.sleep(0.1)


# ---------------------------------------------------------------------------------------------------------
# The cached Debian 12 rootfs


def rootfs_key() -> str:
    inputs = json.dumps(
        {"suite": SUITE, "variant": "minbase", "mirror": MIRROR, "packages": PACKAGES, "recipe": ROOTFS_RECIPE},
        sort_keys=True,
    )
    return hashlib.sha256(inputs.encode()).hexdigest()[:16]


def ensure_rootfs() -> Path:
    """The base rootfs for this key, built with debootstrap when missing (under a lock, atomically)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    key = rootfs_key()
    final = CACHE / f"rootfs-{key}"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "etc/os-release").exists():
            log(f"rootfs: cached {final}")
            return final
        tmp = CACHE / f"rootfs-{key}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        log(f"rootfs: building {final} (debootstrap {SUITE} minbase + {','.join(PACKAGES)}; about 1.5 minutes)")
        start = time.monotonic()
        p = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(tmp), MIRROR],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if p.returncode != 0:
            tail = "\n".join((p.stdout + p.stderr).splitlines()[-20:])
            raise RuntimeError(f"debootstrap failed ({p.returncode}):\n{tail}")
        # A fresh machine id per machine is written later; the image itself must not carry one.
        (tmp / "etc/machine-id").write_text("")
        os.rename(tmp, final)
        # Older keys are dead weight (~300 MB each).
        for old in CACHE.glob("rootfs-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        log(f"rootfs: built in {time.monotonic() - start:.0f}s")
        return final


# ---------------------------------------------------------------------------------------------------------
# Emulators on the host's loopback


class Moto:
    """moto (Secrets Manager, CloudWatch Logs) on a free loopback port."""

    def __init__(self, workdir: Path):
        self.port = free_ports(1)[0]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=open(workdir / "moto.log", "w"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        wait_for("moto to listen", 30, self._listening)
        import boto3  # noqa: PLC0415 (only here: the rest of the driver runs without it)

        kw = dict(
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.sm = boto3.client("secretsmanager", **kw)
        self.logs = boto3.client("logs", **kw)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"moto exited with {self.proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def put_secret(self, name: str, value: str) -> None:
        self.sm.create_secret(Name=name, SecretString=value)

    def log_lines(self, group: str, stream: str) -> list[str]:
        lines: list[str] = []
        token = None
        while True:
            kw = dict(logGroupName=group, logStreamName=stream, startFromHead=True)
            if token:
                kw["nextToken"] = token
            try:
                r = self.logs.get_log_events(**kw)
            except self.logs.exceptions.ResourceNotFoundException:
                return lines
            lines += [e["message"] for e in r["events"]]
            if not r["events"] or r.get("nextForwardToken") == token:
                return lines
            token = r.get("nextForwardToken")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Imds:
    """tests/rig/imds_emulator.py for one machine; its config is re-read on every request."""

    def __init__(self, workdir: Path, name: str, config: dict):
        self.config_path = workdir / f"imds-{name}.json"
        self.write(config)
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests/rig/imds_emulator.py"), "--config", str(self.config_path),
             "--host", "127.0.0.1", "--port", "0", "--log", str(workdir / f"imds-{name}.log")],
            stdout=subprocess.PIPE,
            stderr=open(workdir / f"imds-{name}.err", "w"),
            stdin=subprocess.DEVNULL,
            text=True,
            preexec_fn=die_with_parent,
        )
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"IMDS emulator did not start: {line!r}")
        self.port = int(line)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write(self, config: dict) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config))
        os.replace(tmp, self.config_path)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def imds_config(tags: dict | None, user_data: str | None = None) -> dict:
    """The emulator's config for one machine; user_data: served at /latest/user-data (None: 404)."""
    return {
        "instance_id": "i-" + pysecrets.token_hex(9)[:17],
        "region": REGION,
        "availability_zone": REGION + "a",
        "local_ipv4": "127.0.0.1",
        "public_ipv4": "127.0.0.1",
        "tags": tags,
        "iam_role": "node-agent-boot-test",
        "credentials": {"AccessKeyId": "ASIABOOTTEST", "SecretAccessKey": "boot-test", "Token": "boot-test-token"},
        "user_data": user_data,
    }


# ---------------------------------------------------------------------------------------------------------
# Layers and machines


def mount_overlay(lowers: list[Path], upper: Path, work: Path, merged: Path) -> None:
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
    run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)])


STANDINS = ["_standin.py", "geth", "bootnode", "ethstats-server"]

# Boot test only: the geth stand-in, optionally slow to open its IPC endpoint (a datadir that takes a
# while to open), so the test can watch systemd hold the unit in "activating" until the agent's READY.
GETH_WRAPPER = """#!/bin/sh
# node-agent boot test: the geth stand-in (tests/standins/geth) in place of the pinned geth.
case " $* " in
*" version "* | *" init "*) ;;
*) d=$(cat /etc/node-agent-boot/geth-start-delay 2>/dev/null) && sleep "$d" ;;
esac
exec /opt/node-agent-standins/geth "$@"
"""

# Without the ethstats-server fixture only: what `node-agent install --ethstats-source` lays out, with the
# stand-in in place of `node app.js`.
ETHSTATS_STANDIN_WRAPPER = """#!/bin/sh
# node-agent boot test: the ethstats-server stand-in in place of the pinned app (see node-agent install).
cd /opt/ethstats-server || exit 1
exec /opt/node-agent-standins/ethstats-server
"""

# The real ethstats server: the app prepared by tests/ethstats/prepare (its cache, ~160 MB, mostly
# node_modules) is bound read-only into every machine here, and /opt/ethstats-server holds copies of
# everything but node_modules, which links into the bind (see Rig.install_ethstats).
ETHSTATS_APP_BIND = "/opt/node-agent-boot/ethstats-app"
LAYOUT_RS = REPO / "agent/src/cmd/install/layout.rs"


def install_ethstats_wrapper() -> str:
    """The wrapper `node-agent install` writes (layout.rs's ETHSTATS_WRAPPER), read from the source so
    that the test runs exactly the installed one."""
    m = re.search(r'^const ETHSTATS_WRAPPER: &str = "(.*?)";$', LAYOUT_RS.read_text(), re.S | re.M)
    if not m or "\\" in m.group(1) or "exec node app.js" not in m.group(1):
        raise RuntimeError(f"no plain ETHSTATS_WRAPPER string running `node app.js` in {LAYOUT_RS}")
    return m.group(1)


def prepare_ethstats() -> Path | None:
    """tests/ethstats/prepare: the prepared app directory, or None when the fixture archive is absent."""
    p = subprocess.run([str(REPO / "tests/ethstats/prepare")], capture_output=True, text=True, timeout=900)
    for line in p.stderr.strip().splitlines()[-5:]:
        log(f"  {line}")
    if p.returncode == 3:
        return None
    if p.returncode != 0 or not p.stdout.strip():
        raise RuntimeError(f"tests/ethstats/prepare exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    app = Path(p.stdout.strip().splitlines()[-1])
    if not (app / "app.js").is_file() or not (app / "node_modules").is_dir():
        raise RuntimeError(f"tests/ethstats/prepare printed {app}, which holds no app.js and node_modules")
    return app


NO_REAL_ETHSTATS = ("NOTE: no ethstats-server fixture (tests/ethstats/prepare exited 3): the ethstats role "
                    "runs the Python stand-in; the REAL ethstats server was NOT tested")


class Rig:
    """One run: work directory, emulators, the installed layer, and every machine booted."""

    def __init__(self, agent: Path, keep: bool, want_ethstats: bool = True):
        self.agent = agent
        self.keep = keep
        self.want_ethstats = want_ethstats
        # The prepared real ethstats server (tests/ethstats/prepare); None: the stand-in runs instead.
        self.ethstats_app: Path | None = None
        self.ethstats_missing = False  # tests/ethstats/prepare said the fixture is absent
        self.work = RUNS / f"run-{os.getpid()}"
        self.machines: list[Machine] = []
        self.moto: Moto | None = None
        self.hierarchies = cgroup_hierarchies()
        self.ports = dict(zip(["p2p", "http", "authrpc", "bootnode", "ethstats", "health"], free_ports(6)))

    # -- setup and teardown

    def setup(self) -> None:
        clean_stale_runs()
        self.work.mkdir(parents=True)
        (self.work / "pid").write_text(str(os.getpid()))
        self.base = ensure_rootfs()
        if self.want_ethstats:
            self.ethstats_app = prepare_ethstats()
            self.ethstats_missing = self.ethstats_app is None
            log(f"ethstats: the real server from {self.ethstats_app}" if self.ethstats_app else NO_REAL_ETHSTATS)
        self.moto = Moto(self.work)
        self.seed_secrets()
        self.install_layer()

    def teardown(self) -> None:
        for m in reversed(self.machines):
            m.destroy()
        if self.moto:
            self.moto.stop()
        # Whatever a half-made machine left behind (its constructor failed before it was listed).
        for mount, path in self.hierarchies:
            for cg in (mount / path / CGROUP_GROUP).glob(f"{self.work.name}-*"):
                kill_cgroup_tree([cg])
            try:
                os.rmdir(mount / path / CGROUP_GROUP)
            except OSError:
                pass  # absent, or another run still uses it
        for merged in self.work.glob("*/root"):
            unmount(merged)
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            log(f"kept {self.work}")

    # -- fixtures

    def fixture(self, name: str) -> str:
        return (REPO / "tests/fixtures/secrets/dev" / name).read_text()

    def secret_values(self) -> list[str]:
        """The byte strings that must never reach a disk: each secret value, or for the keystore its
        ciphertext and MAC."""
        ks = json.loads(self.fixture("sealer/keystore"))
        crypto = ks.get("crypto") or ks.get("Crypto")
        vals = [
            self.fixture("sealer/password").strip(),
            self.fixture("bootnode/nodekey").strip(),
            self.fixture("ethstats/ws-secret").strip(),
            crypto["ciphertext"],
            crypto["mac"],
        ]
        return [v for v in vals if len(v) >= 8]

    def seed_secrets(self) -> None:
        for name in ["sealer/keystore", "sealer/password", "bootnode/nodekey", "ethstats/ws-secret"]:
            self.moto.put_secret(f"{ENVIRONMENT}/{name}", self.fixture(name))
        # "incomplete": the sealer's keystore is there, its password is not.
        self.moto.put_secret("incomplete/sealer/keystore", self.fixture("sealer/keystore"))
        self.moto.put_secret("incomplete/ethstats/ws-secret", self.fixture("ethstats/ws-secret"))

    def config_toml(self) -> str:
        p = self.ports
        return f"""# node-agent boot test (tests/boot): local storage, free ports, short timeouts.
[chain]
ethstats = "127.0.0.1:{p['ethstats']}"

[storage]
kind = "local"

[ports]
p2p = {p['p2p']}
http = {p['http']}
authrpc = {p['authrpc']}
bootnode = {p['bootnode']}
ethstats = {p['ethstats']}

[restart]
initial_backoff_ms = {INITIAL_BACKOFF_MS}
max_backoff_secs = 10

[timeouts]
imds_secs = 30
secrets_secs = 10
stop_secs = {STOP_SECS}
sealer_lease_secs = 5

[health]
interval_secs = 1
listen = "127.0.0.1:{p['health']}"
"""

    def install_layer(self) -> None:
        """The bake's install step into an overlay over the base, plus the stand-ins and the config."""
        layer = self.work / "installed"
        root = layer / "root"
        mount_overlay([self.base], layer / "upper", layer / "work", root)
        p = run([str(self.agent), "install", "--root", str(root), "--enable"], timeout=120)
        (self.work / "install.log").write_text(p.stdout + p.stderr)
        standins = root / "opt/node-agent-standins"
        standins.mkdir(parents=True)
        for f in STANDINS:
            shutil.copy2(REPO / "tests/standins" / f, standins / f)
        bin_ = root / "usr/local/bin"
        (bin_ / "geth").write_text(GETH_WRAPPER)
        (bin_ / "geth").chmod(0o755)
        (bin_ / "bootnode").symlink_to("/opt/node-agent-standins/bootnode")
        self.install_ethstats(root)
        (root / "etc/node-agent-boot").mkdir()
        # What `node-agent install` itself put there (the built-in defaults), before the test's config
        # replaces it: the user-data scenario boots with only this.
        self.installed_config = (root / "etc/node-agent/config.toml").read_text()
        (root / "etc/node-agent/config.toml").write_text(self.config_toml())
        unmount(root)
        self.installed = layer / "upper"

    def install_ethstats(self, root: Path) -> None:
        """What `node-agent install --ethstats-source` lays out (layout.rs, ethstats_layout): the app in
        /opt/ethstats-server, ws_secret.json in it a link to the file the agent writes, and the wrapper
        /usr/local/bin/ethstats-server. app.js resolves ./ws_secret.json (and ./lib) from its own real path,
        so it and everything else are copies; node_modules alone links into the read-only bind of the
        prepared app, which keeps 150 MB out of the layer (and out of the secret scan)."""
        app = root / "opt/ethstats-server"
        wrapper = root / "usr/local/bin/ethstats-server"
        if self.ethstats_app is None:
            app.mkdir(parents=True)
            wrapper.write_text(ETHSTATS_STANDIN_WRAPPER)
        else:
            shutil.copytree(self.ethstats_app, app, symlinks=True,
                            ignore=lambda d, names: ["node_modules"] if Path(d) == self.ethstats_app else [])
            (app / "node_modules").symlink_to(f"{ETHSTATS_APP_BIND}/node_modules")
            (root / ETHSTATS_APP_BIND.lstrip("/")).mkdir(parents=True)  # the bind's mount point
            wrapper.write_text(install_ethstats_wrapper())
        wrapper.chmod(0o755)
        (app / "ws_secret.json").symlink_to("/run/node-agent/secrets/ws_secret.json")

    def passwd(self, user: str) -> tuple[int, int]:
        for line in (self.installed / "etc/passwd").read_text().splitlines():
            f = line.split(":")
            if f[0] == user:
                return int(f[2]), int(f[3])
        raise CheckFailed(f"user {user} not in the installed /etc/passwd (systemd-sysusers)")

    def machine(self, name: str, tags: dict | None, user_data: str | None = None) -> Machine:
        m = Machine(self, name, tags, user_data)
        self.machines.append(m)
        return m


def clean_stale_runs() -> None:
    """Tears down what a run that died without cleaning up (SIGKILL, power loss) left behind."""
    if not RUNS.is_dir():
        return
    for d in RUNS.glob("run-*"):
        try:
            pid = int((d / "pid").read_text())
        except (OSError, ValueError):
            pid = 0
        argv = " ".join(cmdline(pid)) if pid else ""
        if pid and pid != os.getpid() and ("boot_test.py" in argv or "bench_boot.py" in argv):
            continue  # another run is alive
        log(f"cleaning up a stale run: {d}")
        for mount, path in cgroup_hierarchies():
            for cg in (mount / path / CGROUP_GROUP).glob(f"{d.name}-*"):
                kill_cgroup_tree([cg])
        for merged in list(d.glob("*/root")):
            unmount(merged)
        shutil.rmtree(d, ignore_errors=True)


class Machine:
    """One container: an overlay layer over the installed layer, booted with systemd-nspawn -b."""

    def __init__(self, rig: Rig, name: str, tags: dict | None, user_data: str | None = None):
        self.rig = rig
        self.name = name
        self.dir = rig.work / name
        self.upper = self.dir / "upper"
        self.root = self.dir / "root"
        self.imds = Imds(rig.work, name, imds_config(tags, user_data))
        self.instance_id = json.loads(self.imds.config_path.read_text())["instance_id"]
        self.cgroups = [m / p / CGROUP_GROUP / f"{rig.work.name}-{name}" for m, p in rig.hierarchies]
        self.nspawn: subprocess.Popen | None = None
        self.leader = 0
        self.boots = 0
        mount_overlay([rig.installed, rig.base], self.upper, self.dir / "work", self.root)
        (self.root / "etc/machine-id").write_text(pysecrets.token_hex(16) + "\n")
        dropin = self.root / "etc/systemd/system/node-agent.service.d"
        dropin.mkdir(parents=True)
        (dropin / "boot-test.conf").write_text(
            "# node-agent boot test: the AWS SDK talks to the emulators on the host's loopback.\n"
            "[Service]\n"
            f"Environment=AWS_ENDPOINT_URL={rig.moto.endpoint}\n"
            f"Environment=AWS_EC2_METADATA_SERVICE_ENDPOINT={self.imds.endpoint}\n"
        )

    # -- lifecycle

    def boot(self) -> None:
        for cg in self.cgroups:
            cg.mkdir(parents=True, exist_ok=True)
        procs = [str(cg / "cgroup.procs") for cg in self.cgroups]

        def enter():
            die_with_parent()
            for p in procs:
                with open(p, "w") as f:
                    f.write("0")

        self.boots += 1
        console = open(self.dir / f"console-{self.boots}.log", "w")
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "-q", "-D", str(self.root), "-M", f"boot-{self.name}", "--register=no",
             "--keep-unit", "--console=read-only", "--link-journal=no", "--resolv-conf=off",
             "--timezone=off", *self.binds(), "-b"],
            stdout=console,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=enter,
        )
        self.leader = wait_for("the container's PID 1", 20, self._find_leader, 0.05)
        wait_for("systemd in the container to answer", 30, self._systemd_answers)

    def binds(self) -> list[str]:
        app = self.rig.ethstats_app
        return [f"--bind-ro={app}:{ETHSTATS_APP_BIND}"] if app else []

    def _find_leader(self) -> int:
        if self.nspawn.poll() is not None:
            raise CheckFailed(f"systemd-nspawn exited {self.nspawn.returncode}: {self.console()[-1500:]}")
        for pid in cgroup_pids(self.cgroups[0]):
            st = proc_status(pid)
            if st.get("NSpid", "").split()[-1:] == ["1"] and st.get("Name") == "systemd":
                return pid
        return 0

    def _systemd_answers(self) -> bool:
        p = self.exec(["systemctl", "show", "-P", "Version"], check=False, timeout=10)
        return p.returncode == 0

    def console(self) -> str:
        try:
            return (self.dir / f"console-{self.boots}.log").read_text(errors="replace")
        except OSError:
            return ""

    def poweroff(self, timeout: float = 60) -> None:
        self.exec(["systemctl", "poweroff", "--no-block"], check=False)
        try:
            self.nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"{self.name}: the container did not power off within {timeout:.0f}s") from None
        self.leader = 0

    def destroy(self) -> None:
        """Kills whatever is left of the container and removes its mount and cgroups; never raises."""
        try:
            if self.leader and proc_status(self.leader):
                os.kill(self.leader, signal.SIGKILL)
            if self.nspawn and self.nspawn.poll() is None:
                try:
                    self.nspawn.wait(10)
                except subprocess.TimeoutExpired:
                    self.nspawn.kill()
                    self.nspawn.wait()
            kill_cgroup_tree(self.cgroups)
            unmount(self.root)
            self.imds.stop()
        except Exception as e:  # noqa: BLE001 (teardown goes on whatever failed)
            log(f"  (teardown of {self.name}: {e})")

    # -- looking inside

    def exec(self, argv: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        if not self.leader:
            raise CheckFailed(f"{self.name} is not running")
        return run(["nsenter", "-t", str(self.leader), "-a", "--", *argv], check=check, timeout=timeout)

    def unit(self, unit: str = UNIT) -> dict[str, str]:
        props = ["ActiveState", "SubState", "Result", "MainPID", "NRestarts", "ExecMainStatus", "Type",
                 "ActiveEnterTimestampMonotonic", "InactiveExitTimestampMonotonic", "StatusText"]
        out = self.exec(["systemctl", "show", unit, "-p", ",".join(props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str = UNIT) -> list[dict]:
        out = self.exec(["journalctl", "-u", unit, "-o", "json", "--no-pager", "--output-fields",
                         "MESSAGE,_PID,_BOOT_ID,_COMM"], timeout=30).stdout
        entries = []
        for line in out.splitlines():
            e = json.loads(line)
            if isinstance(e.get("MESSAGE"), list):  # non-UTF-8 bytes
                e["MESSAGE"] = bytes(e["MESSAGE"]).decode(errors="replace")
            entries.append(e)
        return entries

    def journal_text(self, unit: str = UNIT) -> str:
        return "\n".join(e.get("MESSAGE", "") for e in self.journal(unit))

    def status(self) -> tuple[int, dict]:
        p = self.exec(["/usr/local/bin/node-agent", "status", "--json"], check=False)
        try:
            return p.returncode, json.loads(p.stdout)
        except json.JSONDecodeError:
            raise CheckFailed(f"status --json printed no JSON (exit {p.returncode}): {p.stdout!r} {p.stderr!r}")

    def host_pid(self, container_pid: int) -> int:
        for pid in cgroup_pids(self.cgroups[0]):
            if proc_status(pid).get("NSpid", "").split()[-1:] == [str(container_pid)]:
                return pid
        raise CheckFailed(f"no process with container pid {container_pid} in {self.name}")

    def service_pids(self) -> list[int]:
        """Host pids of everything in node-agent.service's cgroup."""
        return cgroup_pids(self.cgroups[0] / "payload/system.slice" / UNIT)

    def wait_active(self, timeout: float = 60) -> dict[str, str]:
        def active():
            u = self.unit()
            if u.get("ActiveState") == "active":
                return u
            if u.get("Result") not in ("success", None):
                raise CheckFailed(f"{UNIT} failed ({u}):\n{self.journal_text()[-3000:]}")
            return None

        return wait_for(f"{UNIT} to become active in {self.name}", timeout, active, 0.1)

    def wait_healthy(self, timeout: float = 30) -> dict:
        def healthy():
            rc, doc = self.status()
            return doc if rc == 0 and doc.get("overall") == "healthy" else None

        try:
            return wait_for(f"node-agent status to report healthy in {self.name}", timeout, healthy, 0.3)
        except CheckFailed as e:
            rc, doc = self.status()
            raise CheckFailed(f"{e}; last status: exit {rc}, {json.dumps(doc)[:1500]}") from None

    def child(self, doc: dict, name: str) -> dict:
        for c in doc.get("children", []):
            if c["name"] == name:
                return c
        raise CheckFailed(f"no child {name} in status: {doc.get('children')}")


# ---------------------------------------------------------------------------------------------------------
# Checks shared by every role


ROLES = {
    # role: (child name, service user, secret files expected in the tmpfs)
    "sealer": ("geth", "node-agent", {"keystore/signer.json", "sealer-password", "geth-ethstats.toml"}),
    "rpc": ("geth", "node-agent", {"geth-ethstats.toml"}),
    "bootnode": ("bootnode", "node-agent", {"bootnode-nodekey"}),
    "ethstats": ("ethstats", "node-agent", {"ws_secret.json"}),
}
SECRETS_DIR = "run/node-agent/secrets"


def check_runs_unprivileged(m: Machine, role: str, doc: dict) -> str:
    """The agent and its child run as the role's user: all four uids/gids, no groups, no capabilities."""
    child_name, user, _ = ROLES[role]
    uid, gid = m.rig.passwd(user)
    agent = m.host_pid(doc["agent"]["pid"])
    child = m.host_pid(m.child(doc, child_name)["pid"])
    for what, pid in (("agent", agent), (child_name, child)):
        st = proc_status(pid)
        expect(st["Uid"].split() == [str(uid)] * 4, f"{what} Uid {st['Uid']!r}, want {uid} ({user}) x4")
        expect(st["Gid"].split() == [str(gid)] * 4, f"{what} Gid {st['Gid']!r}, want {gid} x4")
        # systemd's initgroups() lists the user's own primary group; anything else is an extra group.
        extra = set(st.get("Groups", "").split()) - {str(gid)}
        expect(not extra, f"{what} has supplementary groups {sorted(extra)}")
        for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            expect(int(st[cap], 16) == 0, f"{what} {cap} = {st[cap]}")
        expect(st.get("NoNewPrivs") == "1", f"{what} NoNewPrivs = {st.get('NoNewPrivs')}")
    return (f"agent pid {agent} and {child_name} pid {child}: uid/gid {uid}:{gid} ({user}) x4, no other groups, "
            f"CapInh/Prm/Eff/Amb 0, CapBnd {proc_status(child)['CapBnd']}, NoNewPrivs 1")


def check_secrets(m: Machine, role: str, doc: dict) -> str:
    """Secrets are 0400 files of the service user in a 0700 directory on a tmpfs, and no secret value is
    anywhere on the machine's disk or elsewhere in its tmpfs mounts."""
    _, user, expected = ROLES[role]
    uid, _ = m.rig.passwd(user)
    agent = m.host_pid(doc["agent"]["pid"])
    # In the machine's mount namespace (where `prepare`, ExecStartPre=+, works) and in the unit's.
    for ns_pid, where in ((m.leader, "the machine"), (agent, "the unit")):
        mnt, fs = containing_mount(ns_pid, "/" + SECRETS_DIR)
        expect(fs == "tmpfs", f"/{SECRETS_DIR} in {where} is on {fs} ({mnt}), want tmpfs")
    d = Path(f"/proc/{agent}/root") / SECRETS_DIR
    st = d.stat()
    expect(st.st_mode & 0o7777 == 0o700 and st.st_uid == uid,
           f"/{SECRETS_DIR} is {oct(st.st_mode & 0o7777)} uid {st.st_uid}, want 0700 uid {uid}")
    found = set()
    for f in d.rglob("*"):
        s = f.lstat()
        if f.is_dir():
            continue
        rel = str(f.relative_to(d))
        found.add(rel)
        expect(s.st_mode & 0o7777 == 0o400 and s.st_uid == uid,
               f"secret file {rel} is {oct(s.st_mode & 0o7777)} uid {s.st_uid}, want 0400 uid {uid}")
    expect(expected <= found, f"secret files {sorted(found)}, want at least {sorted(expected)}")
    # The scan must be able to see what it looks for: the secrets directory itself holds the values.
    control = files_holding([d], [v.encode() for v in m.rig.secret_values()])
    expect(control, f"the secret scan finds nothing even in /{SECRETS_DIR}: it cannot be trusted")
    leaks = scan_for_secrets(m)
    expect(not leaks, f"secret values found outside the secrets directory: {leaks}")
    mnt, _ = containing_mount(m.leader, "/" + SECRETS_DIR)
    return (f"{len(found)} files 0400 uid {uid} in a 0700 directory on the tmpfs at {mnt}; no value on disk "
            "(upper layers) nor elsewhere in /run, /tmp, /var/tmp, /dev/shm")


def containing_mount(pid: int, path: str) -> tuple[str, str]:
    """(mount point, file system type) of the mount holding `path` in `pid`'s mount namespace."""
    best = ("", "")
    for ln in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        point, fstype = ln.split()[4], ln.split(" - ")[1].split()[0]
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):  # later lines stack on earlier ones
            best = (point, fstype)
    return best


def files_holding(roots: list[Path], needles: list[bytes], skip: Path | None = None) -> list[str]:
    found = []
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            if skip is not None and Path(dirpath) == skip:
                dirs[:] = []
                continue
            for f in files:
                p = Path(dirpath, f)
                try:
                    if p.is_symlink() or not p.is_file():
                        continue
                    data = p.read_bytes()
                except OSError:
                    continue
                found += [f"{p} holds secret #{i}" for i, n in enumerate(needles) if n in data]
    return found


def scan_for_secrets(m: Machine) -> list[str]:
    """Files holding a secret value: on disk (everything the install and the machine wrote is in the two
    upper layers; the base is read-only), and in the machine's tmpfs mounts outside the secrets directory."""
    needles = [v.encode() for v in m.rig.secret_values()]
    leaks = files_holding([m.rig.installed, m.upper], needles)
    root = Path(f"/proc/{m.leader}/root")
    tmpfs = [root / d for d in ("run", "tmp", "var/tmp", "dev/shm")]
    leaks += files_holding(tmpfs, needles, skip=root / SECRETS_DIR)
    return leaks


def check_status_healthy(m: Machine, role: str, health_port: int | None = None) -> tuple[str, dict]:
    doc = m.wait_healthy()
    rc, doc = m.status()
    expect(rc == 0 and doc["overall"] == "healthy", f"status exit {rc}, overall {doc.get('overall')}")
    expect(doc["host"]["role"] == role and doc["host"]["instance_id"] == m.instance_id,
           f"status host {doc['host']}, want role {role} instance {m.instance_id}")
    child = m.child(doc, ROLES[role][0])
    expect(child["state"] == "ready", f"child state {child['state']}")
    storage = doc.get("storage", {})
    expect(storage.get("kind") == "local" and storage.get("check_ok") is not False,
           f"status storage {storage}, want kind local and its check not failed")
    # The load balancer's view agrees: GET /ready on the health endpoint, as a target group asks. It
    # answers from the agent's last 500 ms tick, so it may trail the document by that much.
    port = health_port or m.rig.ports["health"]

    def get_ready() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    deadline = time.monotonic() + 5
    ready = get_ready()
    while ready[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        ready = get_ready()
    expect(ready == (200, '{"ready":true}'), f"GET /ready answered {ready}")
    expect((doc.get("endpoint") or {}).get("ready") is True, f"status endpoint {doc.get('endpoint')}")
    return (f"status --json exit 0, overall healthy, {child['name']} ready (pid {child['pid']}), "
            f"storage {storage.get('kind')} check_ok {storage.get('check_ok')}, GET /ready 200 on :{port}"), doc


def shipping(doc: dict) -> bool:
    """Whether this agent ships its logs to CloudWatch (status.logs.streams[].shipping)."""
    logs = doc.get("logs")
    return isinstance(logs, dict) and any(st.get("shipping") for st in logs.get("streams", []))


# The writer's timestamp in front of each line of a log file; CloudWatch events carry it as their time.
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def read_log(m: Machine, child: str) -> list[str]:
    """The lines of the child's current log file, without the writer's timestamps."""
    p = m.upper / "var/log/node-agent" / f"{child}.log"
    try:
        return [STAMP.sub("", ln) for ln in p.read_text(errors="replace").splitlines() if ln]
    except OSError:
        return []


def shipped_lines(m: Machine, role: str, child: str) -> list[str]:
    return [STAMP.sub("", ln.rstrip("\n")) for ln in
            m.rig.moto.log_lines(f"/node-agent/{ENVIRONMENT}/{role}", f"{m.instance_id}/{child}")]


def wait_shipped(m: Machine, role: str, child: str, timeout: float = 30) -> tuple[list[str], list[str]]:
    """Waits until every line of the child's log file is in CloudWatch; (local lines, shipped lines)."""
    def caught_up():
        local, cw = read_log(m, child), shipped_lines(m, role, child)
        missing = Counter(local) - Counter(cw)
        return (local, cw) if local and not missing else None

    try:
        return wait_for(f"{child}'s lines in CloudWatch Logs", timeout, caught_up, 0.5)
    except CheckFailed:
        local, cw = read_log(m, child), shipped_lines(m, role, child)
        missing = list((Counter(local) - Counter(cw)).elements())
        raise CheckFailed(f"{len(missing)} of {len(local)} lines of {child} not in CloudWatch after "
                          f"{timeout:.0f}s, e.g. {missing[:3]}") from None


def duplicate_runs(local: list[str], cw: list[str]) -> list[list[int]]:
    """Positions of shipped events that are extra copies of a line (more copies than the file has), grouped
    into runs of consecutive positions: one run is one batch sent twice."""
    budget = Counter(local)
    extra = []
    for i, line in enumerate(cw):
        if budget[line] > 0:
            budget[line] -= 1
        else:
            extra.append(i)
    runs: list[list[int]] = []
    for i in extra:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def check_cloudwatch(m: Machine, role: str, doc: dict) -> str:
    child = ROLES[role][0]
    local, cw = wait_shipped(m, role, child)
    return f"all {len(local)} lines of {child}.log in /node-agent/{ENVIRONMENT}/{role} / {m.instance_id}/{child}"


# ---------------------------------------------------------------------------------------------------------
# Scenarios


class Results:
    def __init__(self):
        self.passed = 0
        self.failed: list[str] = []
        self.skipped: list[str] = []

    def check(self, name: str, fn, *args):
        start = time.monotonic()
        try:
            detail = fn(*args)
        except CheckFailed as e:
            self.failed.append(name)
            log(f"FAIL {name} ({time.monotonic() - start:.1f}s): {e}")
            raise
        self.passed += 1
        log(f"ok   {name} ({time.monotonic() - start:.1f}s){': ' + detail if detail else ''}")

    def skip(self, name: str, why: str):
        self.skipped.append(name)
        log(f"skip {name}: {why}")


# The bootnode's user-data: the cloud-init launch script of before issue 24 (README "Launch"), which an
# image without cloud-init never runs and node-agent must leave alone.
SHELL_USER_DATA = """#!/bin/sh
printf '[storage]\\nkind = "efs"\\n' > /etc/node-agent/config.toml
"""
NOT_NODE_AGENT_LINE = "user-data is not node-agent configuration"


def boot_role(rig: Rig, r: Results, role: str, name: str | None = None) -> tuple[Machine, dict]:
    """Boots one role and runs the checks every role must pass. Returns the machine, still running."""
    user_data = SHELL_USER_DATA if role == "bootnode" else None
    m = rig.machine(name or role, {"Role": role, "Environment": ENVIRONMENT, "Name": f"boot-test-{role}"},
                    user_data)
    if role == "sealer":
        r.check(f"{role}: unit reaches active only after READY, not when the agent starts",
                scenario_ready_gate, m)
    else:
        def boot_active():
            m.boot()
            u = m.wait_active()
            return f"active (Type={u['Type']}) in {m.name}"

        r.check(f"{role}: boots to an active {UNIT}", boot_active)
    holder = {}

    def status():
        detail, holder["doc"] = check_status_healthy(m, role)
        return detail

    r.check(f"{role}: node-agent status --json reports healthy, exit 0", status)
    doc = holder["doc"]
    if user_data is not None:
        def shell_user_data_left_alone():
            lines = [ln for ln in m.journal_text().splitlines() if NOT_NODE_AGENT_LINE in ln]
            expect(lines, f"no '{NOT_NODE_AGENT_LINE}' line in the journal")
            expect(all(" INFO " in f" {ln} " or ln.lstrip().startswith("INFO") for ln in lines),
                   f"not info lines: {lines}")
            text = (m.root / "etc/node-agent/config.toml").read_text()
            expect(text == rig.config_toml(), "/etc/node-agent/config.toml changed: something ran the script")
            return f"{len(lines)} info line(s) ({lines[0].strip()[:110]}); config.toml untouched"

        r.check(f"{role}: a shell script as user-data (a cloud-init launch) is left alone with an info line",
                shell_user_data_left_alone)
    r.check(f"{role}: agent and child run as the service user with no capabilities",
            check_runs_unprivileged, m, role, doc)
    r.check(f"{role}: secrets are 0400 on tmpfs and nowhere else", check_secrets, m, role, doc)
    if role == "ethstats":
        scenario_ethstats(r, m)
    if shipping(doc):
        r.check(f"{role}: the child's lines arrive in CloudWatch Logs", check_cloudwatch, m, role, doc)
    else:
        r.skip(f"{role}: the child's lines arrive in CloudWatch Logs",
               "this build does not ship logs (status.logs is empty)")
    return m, doc


def scenario_ethstats(r: Results, m: Machine) -> None:
    """The ethstats server the role runs, checked through its own protocol: the real one (goerli/ethstats-server
    on the machine's Node.js) when tests/ethstats/prepare had the fixture, else the stand-in's fake login."""
    if m.rig.ethstats_app is None:
        log(NO_REAL_ETHSTATS)
        r.check("ethstats (stand-in): a node logs in with the WS secret the agent wrote, a wrong one is refused",
                check_ethstats_standin_login, m)
        r.skip("ethstats: the REAL ethstats server runs and takes a node's login over its websocket API",
               "no ethstats-server fixture (tests/ethstats/prepare exited 3); the REAL server was NOT tested")
        return
    r.check("ethstats: the real server runs as `node app.js` in /opt/ethstats-server and serves its dashboard",
            check_ethstats_real_server, m)
    session = EthstatsSession(m)
    try:
        r.check("ethstats: a node logging in over /api with the WS secret the agent wrote gets 'ready' and "
                "is on the dashboard", session.good_login)
        r.check("ethstats: a node offering a wrong secret is refused ('Closed - wrong auth')", session.bad_login)
        try:
            r.check("ethstats: node-agent status --json lists the logged-in node as reporting",
                    session.agent_reports)
        except CheckFailed:
            pass  # counted as failed; the checks below (CloudWatch) still run
    finally:
        session.close()


def check_ethstats_real_server(m: Machine) -> str:
    """The ethstats child is the installed wrapper exec'ing Node on app.js from the installed app directory,
    whose ws_secret.json is the install's link; the machine's Node serves the dashboard page."""
    rc, doc = m.status()
    pid = m.host_pid(m.child(doc, "ethstats")["pid"])
    argv = cmdline(pid)
    cwd = os.readlink(f"/proc/{pid}/cwd")
    expect(argv == ["node", "app.js"], f"the ethstats child runs {argv}, want ['node', 'app.js']")
    expect(cwd.endswith("/opt/ethstats-server"), f"the ethstats child runs in {cwd}, want /opt/ethstats-server")
    exe = m.exec(["readlink", "-f", f"/proc/{m.child(doc, 'ethstats')['pid']}/exe"], check=False).stdout.strip()
    version = m.exec(["node", "--version"]).stdout.strip()
    link = m.exec(["readlink", "/opt/ethstats-server/ws_secret.json"]).stdout.strip()
    expect(link == "/run/node-agent/secrets/ws_secret.json", f"/opt/ethstats-server/ws_secret.json -> {link!r}")
    real_app = m.exec(["stat", "-c", "%F", "/opt/ethstats-server/app.js"]).stdout.strip()
    expect(real_app == "regular file", f"/opt/ethstats-server/app.js is a {real_app}, want a regular file")
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(f"http://127.0.0.1:{m.rig.ports['ethstats']}/", timeout=10) as resp:
        page = resp.read().decode(errors="replace")
        status = resp.status
    expect(status == 200 and "<html" in page.lower(), f"GET / answered {status}: {page[:200]!r}")
    log(f"     ethstats server: node {version} ({exe or 'node'}) in the machine runs /opt/ethstats-server/app.js")
    return (f"pid {pid}: `node app.js` in /opt/ethstats-server, Node.js {version}; ws_secret.json -> {link}; "
            f"GET / 200 ({len(page)} bytes of dashboard)")


# The node that logs in, as geth's ethstats client introduces itself (hello's info).
ETHSTATS_NODE = "boot-test-node"
ETHSTATS_INTRUDER = "boot-test-intruder"


def standin_ws():
    """The websocket and primus helpers of tests/standins/_standin.py (host side)."""
    sys.path.insert(0, str(REPO / "tests/standins"))
    import _standin  # noqa: PLC0415

    missing = [n for n in ("WsClient", "WsError", "WsClosed", "primus_emit", "primus_pong", "ethstats_dashboard")
               if not hasattr(_standin, n)]
    if missing:
        raise CheckFailed(f"tests/standins/_standin.py has no {', '.join(missing)} (the websocket helpers of "
                          "branch standin-ethstats)")
    return _standin


def hello(node: str, secret: str) -> dict:
    return {"id": node, "secret": secret,
            "info": {"name": node, "node": "Geth/v1.13.15-stable-c5ba367e/linux-amd64/go1.21.6", "port": 30303,
                     "net": "1337", "protocol": "eth/68", "api": "No", "os": "linux", "os_v": "amd64",
                     "client": "0.1.1", "canUpdateHistory": True}}


class Ended(Exception):
    """The server ended the websocket connection."""


def recv(ws, timeout: float):
    """The next message that is not a primus heartbeat (answered, like the primus client does); raises
    Ended when the server closed the connection, TimeoutError when nothing came."""
    S = standin_ws()
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            msg = ws.recv_json(left)
        except S.WsClosed as e:
            raise Ended(str(e)) from None
        except S.WsError as e:
            raise CheckFailed(f"websocket: {e}") from None
        if not S.primus_pong(ws, msg):
            return msg


def ws_connect(port: int, path: str):
    """A websocket to the machine's ethstats server; raises unless it answers 101 Switching Protocols."""
    S = standin_ws()
    try:
        return S.WsClient().connect("127.0.0.1", port, path, timeout=10)
    except (S.WsError, OSError) as e:
        raise CheckFailed(f"websocket handshake on {path}: {e}") from None


class EthstatsSession:
    """Logins over the server's primus websocket at /api, as geth's ethstats client does. Two connections
    in all: the server refuses more than about 5 new /api connections per 30 s."""

    def __init__(self, m: Machine):
        self.m = m
        self.port = m.rig.ports["ethstats"]
        self.secret = m.rig.fixture("ethstats/ws-secret").strip()
        self.ws = None  # the good node's connection, open until close()

    def dashboard(self) -> dict[str, dict]:
        S = standin_ws()
        try:
            nodes = S.ethstats_dashboard("127.0.0.1", self.port, timeout=5)
        except (S.WsError, TimeoutError, OSError) as e:
            raise CheckFailed(f"the dashboard feed (/primus): {e}") from None
        return {n.get("id"): n for n in nodes}

    def good_login(self) -> str:
        S = standin_ws()
        self.ws = ws_connect(self.port, "/api")
        S.primus_emit(self.ws, "hello", hello(ETHSTATS_NODE, self.secret))
        seen = []
        end = time.monotonic() + 10
        while True:
            try:
                msg = recv(self.ws, end - time.monotonic())
            except TimeoutError:
                raise CheckFailed(f"no {{'emit': ['ready']}} within 10 s of hello; got {seen}; ethstats.log: "
                                  f"{read_log(self.m, 'ethstats')[-5:]}") from None
            except Ended as e:
                raise CheckFailed(f"the server ended the connection after hello with the stored secret ({e}); "
                                  f"got {seen}; ethstats.log: {read_log(self.m, 'ethstats')[-5:]}") from None
            if msg == {"emit": ["ready"]}:
                break
            seen.append(msg)
        wait_for("'Connected: N boot-test-node' in ethstats.log", 10, lambda: any(
            re.search(rf"\bConnected: \d+ {ETHSTATS_NODE}$", ln) for ln in read_log(self.m, "ethstats")), 0.2)
        nodes = self.dashboard()
        node = nodes.get(ETHSTATS_NODE)
        expect(node is not None, f"{ETHSTATS_NODE} is not in the dashboard's node list: {sorted(map(str, nodes))}")
        expect(node.get("info", {}).get("name") == ETHSTATS_NODE, f"dashboard info {node.get('info')}")
        expect(node.get("stats", {}).get("active") is True, f"dashboard stats.active {node.get('stats')}")
        return (f"101 on /api, hello with the stored secret answered {{'emit': ['ready']}}, 'Connected' in "
                f"ethstats.log, and the dashboard (/primus) lists {ETHSTATS_NODE} active")

    def bad_login(self) -> str:
        S = standin_ws()
        ws = ws_connect(self.port, "/api")
        try:
            S.primus_emit(ws, "hello", hello(ETHSTATS_INTRUDER, "not-the-secret"))
            got = []
            try:
                while True:
                    msg = recv(ws, 10)
                    got.append(msg)
                    expect(msg != {"emit": ["ready"]}, "a wrong secret got {'emit': ['ready']}")
            except TimeoutError:
                raise CheckFailed(f"the server kept the connection open 10 s after a wrong secret; got {got}") \
                    from None
            except Ended as e:
                how = f"{got[-1]!r}, then the connection closed" if got else f"connection closed ({e})"
        finally:
            ws.close()
        # The server logs the refused hello's data after the words, over several lines (util.inspect).
        refused = re.compile(rf"Closed - wrong auth \{{\s*id: '{ETHSTATS_INTRUDER}'")
        wait_for("'Closed - wrong auth { id: ...' in ethstats.log", 10,
                 lambda: refused.search("\n".join(read_log(self.m, "ethstats"))), 0.2)
        nodes = self.dashboard()
        expect(ETHSTATS_INTRUDER not in nodes, f"the refused node is on the dashboard: {nodes.get(ETHSTATS_INTRUDER)}")
        expect(ETHSTATS_NODE in nodes, f"{ETHSTATS_NODE} left the dashboard: {sorted(map(str, nodes))}")
        return f"ended by the server: {how}; 'Closed - wrong auth' in ethstats.log; not on the dashboard"

    def agent_reports(self) -> str:
        """The agent reads the dashboard (/primus) too and reports it on the ethstats child."""
        want = ("children[ethstats].ethstats = {\"server\": \"127.0.0.1:%d\", \"answered\": true, "
                "\"reporting\": [..., \"%s\"], ...}" % (self.port, ETHSTATS_NODE))
        child: dict = {}
        start = time.monotonic()

        def reporting():
            nonlocal child
            child = self.m.child(self.m.status()[1], "ethstats")
            if "ethstats" not in child and time.monotonic() - start > 5:
                raise CheckFailed(f"node-agent status --json has no `ethstats` field on the ethstats child (it has "
                                  f"{sorted(child)}); expected {want}: this agent does not report the "
                                  "dashboard yet")
            last = child.get("ethstats")
            return isinstance(last, dict) and ETHSTATS_NODE in (last.get("reporting") or [])

        try:
            wait_for(f"{ETHSTATS_NODE} in the status's ethstats reporting list", 15, reporting, 0.5)
        except CheckFailed as e:
            if "ethstats" not in child:
                raise
            raise CheckFailed(f"status --json's ethstats child has ethstats = {json.dumps(child['ethstats'])} "
                              f"after 15 s; expected {want}") from e
        last = child["ethstats"]
        expect(last.get("answered") is True, f"ethstats.answered {last.get('answered')!r}, want true")
        expect(last.get("server") == f"127.0.0.1:{self.port}", f"ethstats.server {last.get('server')!r}")
        expect(ETHSTATS_INTRUDER not in (last.get("reporting") or []) + (last.get("inactive") or []),
               f"the refused node is in the agent's report: {last}")
        return f"ethstats = {json.dumps(last)}"

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # noqa: BLE001
                pass
            self.ws = None


def check_ethstats_standin_login(m: Machine) -> str:
    """Without the fixture: the stand-in reads ws_secret.json through the install's link into the secrets
    directory; a node offering the stored secret is accepted (and logged), one offering another is refused
    (through the stand-in's fake POST /standin/hello, not the real websocket protocol)."""
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    def hello(node: str, secret: str) -> int:
        body = json.dumps({"id": node, "secret": secret, "info": {"name": node}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{m.rig.ports['ethstats']}/standin/hello", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    good = hello("boot-test-node", m.rig.fixture("ethstats/ws-secret").strip())
    bad = hello("boot-test-intruder", "not-the-secret")
    expect(good == 200, f"login with the stored WS secret answered {good}, want 200")
    expect(bad == 403, f"login with a wrong secret answered {bad}, want 403")
    wait_for("the login in ethstats.log", 10,
             lambda: any("Connected boot-test-node" in ln for ln in read_log(m, "ethstats")), 0.2)
    return "stored secret: 200 and 'Connected boot-test-node' in ethstats.log; wrong secret: 403"


def scenario_ready_gate(m: Machine) -> str:
    """geth's stand-in takes DELAY seconds to open its IPC endpoint: while it does, the unit must be
    'activating' with the child already running; it turns 'active' only once the agent says READY."""
    delay = 3
    (m.root / "etc/node-agent-boot/geth-start-delay").write_text(f"{delay}\n")
    m.boot()
    seen_activating_with_child = False
    deadline = time.monotonic() + 60
    while True:
        u = m.unit()
        if u["ActiveState"] == "active":
            break
        if u["Result"] != "success":
            raise CheckFailed(f"unit failed before READY: {u}\n{m.journal_text()[-3000:]}")
        if u["ActiveState"] == "activating" and u["SubState"] == "start":
            kids = [p for p in m.service_pids() if "/usr/local/bin/geth" in " ".join(cmdline(p))
                    and "init" not in cmdline(p) and "version" not in cmdline(p)]
            seen_activating_with_child |= bool(kids)
        if time.monotonic() > deadline:
            raise CheckFailed(f"not active after 60s: {u}")
        time.sleep(0.1)
    (m.root / "etc/node-agent-boot/geth-start-delay").unlink()
    expect(u["Type"] == "notify", f"unit Type={u['Type']}")
    expect(seen_activating_with_child, "never saw the unit activating while geth was already running")
    waited = (int(u["ActiveEnterTimestampMonotonic"]) - int(u["InactiveExitTimestampMonotonic"])) / 1e6
    expect(waited >= delay, f"active {waited:.1f}s after start, less than geth's {delay}s start delay")
    text = m.journal_text()
    for line in ("started", "serving", "ready"):
        expect(re.search(rf"\b{line}\b", text), f"no agent line '{line}' in the journal")
    return f"activating with geth running, active {waited:.1f}s after start (geth opened IPC after {delay}s)"


def scenario_sealer_faults(rig: Rig, r: Results, m: Machine, doc: dict) -> None:
    child0 = m.child(doc, "geth")
    main0 = m.unit()["MainPID"]

    def kill_child():
        victim = m.host_pid(child0["pid"])
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def restarted():
            rc, d = m.status()
            c = m.child(d, "geth")
            if c["pid"] and c["pid"] != child0["pid"] and c["state"] == "ready":
                return d
            return None

        d = wait_for("geth to be restarted and ready", 30, restarted, 0.1)
        took = time.monotonic() - killed_at
        c = m.child(d, "geth")
        expect(c["restarts"] == child0["restarts"] + 1, f"restarts {c['restarts']}, want {child0['restarts'] + 1}")
        expect(c["last_exit"] == "killed by SIGKILL", f"last_exit {c['last_exit']!r}")
        expect(took >= 0.8 * INITIAL_BACKOFF_MS / 1000,
               f"restarted {took:.2f}s after the kill: no backoff (initial {INITIAL_BACKOFF_MS} ms)")
        u = m.unit()
        expect(u["MainPID"] == main0 and u["ActiveState"] == "active", f"the agent itself was restarted: {u}")
        expect("child exited; restarting" in m.journal_text(), "no 'child exited; restarting' line in the journal")
        return f"new pid {c['pid']} after {took:.1f}s (backoff {INITIAL_BACKOFF_MS} ms), restarts {c['restarts']}, last_exit {c['last_exit']!r}"

    r.check("sealer: a killed child is restarted with backoff, status shows it", kill_child)

    def hostile_plant_and_restart():
        """What a compromised child could do as node-agent: plant links (to a root-owned 0600 canary, to a
        directory, to /dev/zero) and a FIFO in the secrets tmpfs, then kill the agent (same uid). Through
        ExecStopPost=+cleanup, Restart= and prepare, root must neither follow nor print any of it."""
        marker = f"CANARY-{os.getpid()}-{time.monotonic_ns()}"
        m.exec(["sh", "-c", f"umask 077; echo {marker} > /root/canary"])
        before = m.exec(["stat", "-c", "%u:%g %a", "/root/canary", "/etc"]).stdout
        main = m.unit()["MainPID"]
        as_agent = ["setpriv", "--reuid=node-agent", "--regid=node-agent", "--clear-groups", "sh", "-euc"]
        m.exec(as_agent + ["cd /run/node-agent/secrets; ln -sfn /root/canary x; ln -sfn /root/canary sealer-password.new;"
                           " ln -sfn /etc etc; ln -sfn /dev/zero zero; mkfifo fifo;"
                           f" kill -9 {main}"])

        def restarted():
            u = m.unit()
            return u if u["ActiveState"] == "active" and u["MainPID"] not in (main, "0") else None

        u = wait_for("the unit to restart the killed agent", 60, restarted, 0.2)
        m.wait_healthy()
        after = m.exec(["stat", "-c", "%u:%g %a", "/root/canary", "/etc"]).stdout
        expect(after == before, f"root changed what the service user pointed at: {before!r} -> {after!r}")
        content = m.exec(["cat", "/root/canary"]).stdout.strip()
        expect(content == marker, "the canary's content changed")
        left = m.exec(["ls", "-A", "/run/node-agent/secrets"]).stdout.split()
        planted = {"x", "sealer-password.new", "etc", "zero", "fifo"} & set(left)
        expect(not planted, f"planted entries survived the restart: {sorted(planted)}")
        status = m.exec(["/usr/local/bin/node-agent", "status"], check=False).stdout
        text = m.journal_text()
        expect(marker not in text + status, "the canary's content was printed")
        expect("secrets directory emptied" in text, "ExecStopPost cleanup did not run after the kill")
        return (f"agent {main} killed, restarted as {u['MainPID']}: canary {after.split()[0]} unchanged, "
                f"planted links and FIFO gone, cleanup ran")

    r.check("sealer: links and a FIFO planted by the service user are never followed across a restart",
            hostile_plant_and_restart)

    def restart_unit():
        start = time.monotonic()
        m.exec(["systemctl", "restart", UNIT], timeout=60)
        took = time.monotonic() - start
        u = m.wait_active()
        expect(u["MainPID"] != main0, "systemctl restart kept the same agent pid")
        m.wait_healthy()
        inits = m.journal_text().count("initialising the chain from the genesis (geth init)")
        expect(inits == 1, f"geth init ran {inits} times over a restart, want once")
        return f"active again in {took:.1f}s, geth init ran once in all"

    r.check("sealer: systemctl restart is idempotent (no second geth init)", restart_unit)

    def stop_unit():
        _, d = m.status()
        child_pid = m.host_pid(m.child(d, "geth")["pid"])
        before = len(m.journal())
        start = time.monotonic()
        m.exec(["systemctl", "stop", UNIT], timeout=STOP_SECS + 60)
        took = time.monotonic() - start
        u = m.unit()
        expect(u["ActiveState"] == "inactive" and u["Result"] == "success", f"after stop: {u}")
        expect(not proc_status(child_pid), "geth still runs after the stop")
        expect(not m.service_pids(), f"processes left in the unit's cgroup: {m.service_pids()}")
        expect(took < STOP_SECS, f"stop took {took:.1f}s, not under the child's {STOP_SECS}s timeout")
        tail = "\n".join(e.get("MESSAGE", "") for e in m.journal()[before:])
        expect("stopping (SIGTERM)" in tail, f"no 'stopping (SIGTERM)' line: {tail[-1500:]}")
        expect("exited with code 0" in tail, f"geth did not exit 0 on SIGTERM: {tail[-1500:]}")
        expect("SIGKILL" not in tail, f"a child needed SIGKILL: {tail[-1500:]}")
        geth_log = "\n".join(read_log(m, "geth"))
        expect("Got interrupt, shutting down..." in geth_log, "geth's log has no graceful shutdown line")
        return f"stopped in {took:.1f}s (timeout {STOP_SECS}s): SIGTERM, geth exit 0, cgroup empty, result success"

    r.check("sealer: systemctl stop stops the child gracefully within the timeout", stop_unit)

    def second_boot():
        m.poweroff()
        m.boot()
        m.wait_active()
        doc2 = m.wait_healthy()
        boots = m.exec(["journalctl", "--list-boots", "--no-pager", "-q"]).stdout.strip().splitlines()
        expect(len(boots) == 2, f"journal lists {len(boots)} boots, want 2")
        inits = m.journal_text().count("initialising the chain from the genesis (geth init)")
        expect(inits == 1, f"geth init ran {inits} times over two boots, want once")
        head = m.child(doc2, "geth")["chain"]
        detail = f"second boot healthy, head #{head['head'] if head else '?'}, geth init ran once over both boots"
        if shipping(doc2):
            # One stream has seen a child kill, an agent SIGKILL, a restart, a stop and a reboot: every line
            # once, give or take one batch sent again (only the agent's SIGKILL can cause one).
            local, cw = wait_shipped(m, "sealer", "geth")
            runs = duplicate_runs(local, cw)
            expect(len(runs) <= 1, f"{len(runs)} runs of duplicated lines in CloudWatch (more than one batch): "
                                   f"{[cw[r[0]] for r in runs][:3]}")
            detail += f"; CloudWatch has all {len(local)} lines of geth.log, {sum(map(len, runs))} duplicated"
        return detail

    r.check("sealer: a second boot of the same rootfs is idempotent", second_boot)


# ---------------------------------------------------------------------------------------------------------
# The configuration only in user-data, on a rootfs without cloud-init (issue 24)

USER_DATA_ROLE = "bootnode"  # the cheapest role that still runs a child, secrets and a health endpoint
USER_DATA_RETENTION = 7  # logs.retention_days: the default is 30
CLOUD_INIT_UNITS = ("cloud-init-local.service", "cloud-init.service", "cloud-config.service",
                    "cloud-final.service")


def user_data_text(health_port: int, bootnode_port: int) -> str:
    """The whole configuration of the user-data machine: the marker line, then TOML. Every value the test
    checks differs from both the built-in default and the rig's config file (which this machine lacks)."""
    return f"""#node-agent
# node-agent boot test (tests/boot, scenario userdata): this host's only configuration besides the
# installed defaults; no cloud-init reads it.
[storage]
kind = "local"

[ports]
bootnode = {bootnode_port}

[restart]
initial_backoff_ms = {INITIAL_BACKOFF_MS}
max_backoff_secs = 10

[timeouts]
imds_secs = 30
secrets_secs = 10
stop_secs = {STOP_SECS}

[health]
interval_secs = 1
listen = "127.0.0.1:{health_port}"

[logs]
group_template = "/node-agent/{{environment}}/{{role}}/from-user-data"
retention_days = {USER_DATA_RETENTION}
"""


# The keys user-data sets that `check --json` must attribute to it (each differs from its default).
USER_DATA_KEYS = ("storage.kind", "ports.bootnode", "health.listen", "logs.group_template", "logs.retention_days",
                  "timeouts.stop_secs", "restart.initial_backoff_ms")


def find_key(doc, key: str):
    """The first value of `key` anywhere in a JSON document (depth first), or None."""
    if isinstance(doc, dict):
        if key in doc:
            return doc[key]
        doc = list(doc.values())
    if isinstance(doc, list):
        for v in doc:
            found = find_key(v, key)
            if found is not None:
                return found
    return None


def check_no_cloud_init(m: Machine) -> str:
    """The machine's rootfs has no cloud-init at all, and the unit's ordering after cloud-final.service is
    only an ordering: no Wants/Requires/Requisite/BindsTo/PartOf/Upholds on any cloud-init unit."""
    q = m.exec(["dpkg-query", "-W", "-f", "${Status}", "cloud-init"], check=False)
    expect(q.returncode != 0 or "not-installed" in q.stdout or "config-files" in q.stdout,
           f"dpkg knows cloud-init: {q.stdout!r}")
    which = m.exec(["sh", "-c", "command -v cloud-init cloud-id 2>/dev/null; ls -d /etc/cloud /var/lib/cloud "
                    "/usr/lib/python3/dist-packages/cloudinit 2>/dev/null"], check=False).stdout.split()
    expect(not which, f"cloud-init files in the rootfs: {which}")
    states = {}
    for unit in CLOUD_INIT_UNITS:
        states[unit] = m.exec(["systemctl", "show", unit, "-P", "LoadState"]).stdout.strip()
    expect(set(states.values()) == {"not-found"}, f"cloud-init units known to systemd: {states}")
    deps = m.exec(["systemctl", "show", UNIT, "-p", "After,Wants,Requires,Requisite,BindsTo,PartOf,Upholds"]).stdout
    props = dict(line.split("=", 1) for line in deps.splitlines() if "=" in line)
    expect("cloud-final.service" in props.get("After", "").split(), f"{UNIT} After= lacks cloud-final.service: "
                                                                   f"{props.get('After')}")
    pulls = {k: v for k, v in props.items() if k != "After" and "cloud" in v}
    expect(not pulls, f"{UNIT} pulls in cloud-init: {pulls}")
    return (f"no cloud-init package, binary, /etc/cloud or /var/lib/cloud; {', '.join(CLOUD_INIT_UNITS)} "
            f"not-found; {UNIT} After=...cloud-final.service with no Wants/Requires/BindsTo on it")


def check_only_installed_config(m: Machine) -> str:
    etc = m.root / "etc/node-agent"
    entries = sorted(p.name for p in etc.iterdir())
    text = (etc / "config.toml").read_text()
    example = (REPO / "resources/config.example.toml").read_text()
    expect(entries == ["config.toml"], f"/etc/node-agent holds {entries}, want only the installed config.toml")
    expect(text == m.rig.installed_config == example,
           "/etc/node-agent/config.toml is not what `node-agent install` wrote (resources/config.example.toml)")
    return "/etc/node-agent holds only config.toml, byte for byte what `node-agent install` wrote (the defaults)"


def check_user_data_settings(m: Machine, health_port: int, bootnode_port: int) -> str:
    """Settings only user-data can have given are in effect, and `check --json` names user-data as their
    source."""
    env = ["env", "-i", "PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           f"AWS_EC2_METADATA_SERVICE_ENDPOINT={m.imds.endpoint}", f"AWS_ENDPOINT_URL={m.rig.moto.endpoint}"]
    p = m.exec(env + ["/usr/local/bin/node-agent", "check", "--json"], check=False)
    expect(p.returncode == 0, f"node-agent check --json exited {p.returncode}: {p.stderr.strip()[-1500:]}")
    doc = json.loads(p.stdout)
    sources = find_key(doc, "sources")
    expect(isinstance(sources, dict), f"check --json has no `sources` object: keys {sorted(doc)}")
    wrong = {k: sources.get(k) for k in USER_DATA_KEYS if sources.get(k) != "user-data"}
    expect(not wrong, f"check --json sources for user-data's keys: {wrong} (all: {sources})")
    # In effect: the bootnode's discovery port, the health endpoint (GET /ready answered there already).
    rc, st = m.status()
    argv = " ".join(cmdline(m.host_pid(m.child(st, "bootnode")["pid"])))
    expect(f"-addr :{bootnode_port}" in argv, f"the bootnode runs `{argv}`, want -addr :{bootnode_port}")
    detail = (f"check --json sources say user-data for {', '.join(USER_DATA_KEYS)}; bootnode -addr "
              f":{bootnode_port}; GET /ready on :{health_port}")
    if shipping(st):
        group = f"/node-agent/{ENVIRONMENT}/{USER_DATA_ROLE}/from-user-data"

        def made():
            gs = m.rig.moto.logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
            return next((g for g in gs if g["logGroupName"] == group), None)

        g = wait_for(f"log group {group} in CloudWatch Logs", 30, made, 0.5)
        expect(g.get("retentionInDays") == USER_DATA_RETENTION,
               f"{group} has retention {g.get('retentionInDays')}, want {USER_DATA_RETENTION} (user-data)")
        detail += f"; log group {group} with retention {USER_DATA_RETENTION} days"
    return detail


def scenario_user_data(rig: Rig, r: Results) -> None:
    role = USER_DATA_ROLE
    health_port, bootnode_port = [p for p in free_ports(8) if p not in rig.ports.values()][:2]
    m = rig.machine("userdata", {"Role": role, "Environment": ENVIRONMENT, "Name": "boot-test-userdata"},
                    user_data_text(health_port, bootnode_port))
    # Only the installed defaults: the rig's config file (the installed layer's) replaced by what
    # `node-agent install` wrote, i.e. resources/config.example.toml.
    (m.root / "etc/node-agent/config.toml").write_text(rig.installed_config)
    r.check("userdata: /etc/node-agent has only the installed default config.toml", check_only_installed_config, m)

    def boot_active():
        m.boot()
        u = m.wait_active()
        return f"active (Type={u['Type']}) with only the installed defaults in /etc and the configuration in user-data"

    try:
        r.check(f"userdata: a {role} boots to an active {UNIT} with its configuration only in user-data",
                boot_active)
    except CheckFailed:
        # Still say what the rootfs lacks: that part does not depend on the agent.
        if m.leader:
            r.check("userdata: no cloud-init in the rootfs; the unit only orders itself after cloud-final",
                    check_no_cloud_init, m)
        raise
    r.check("userdata: no cloud-init in the rootfs; the unit only orders itself after cloud-final",
            check_no_cloud_init, m)
    holder = {}

    def status():
        detail, holder["doc"] = check_status_healthy(m, role, health_port)
        return detail

    r.check("userdata: node-agent status --json reports healthy, GET /ready on user-data's port", status)
    r.check("userdata: settings only user-data gives are in effect, and check --json says they come from it",
            check_user_data_settings, m, health_port, bootnode_port)
    r.check("userdata: agent and child run as the service user with no capabilities",
            check_runs_unprivileged, m, role, holder["doc"])
    r.check("userdata: secrets are 0400 on tmpfs and nowhere else", check_secrets, m, role, holder["doc"])

    def without_file():
        m.poweroff()
        (m.root / "etc/node-agent/config.toml").unlink()
        m.boot()
        m.wait_active()
        detail, _ = check_status_healthy(m, role, health_port)
        expect(not (m.root / "etc/node-agent/config.toml").exists(), "a config.toml appeared")
        return f"second boot, no /etc/node-agent/config.toml: active; {detail}"

    r.check("userdata: boots again with no /etc/node-agent/config.toml at all (built-in defaults + user-data)",
            without_file)
    m.poweroff()
    m.destroy()


def scenario_bad_user_data(rig: Rig, r: Results) -> None:
    """User-data marked #node-agent with an unknown key: a failed unit whose journal line names user-data
    and the line."""
    text = "#node-agent\n[storage]\nkind = \"local\"\n[logs]\nretention_dayz = 7\n"

    def bad():
        m = rig.machine("bad-user-data", {"Role": USER_DATA_ROLE, "Environment": ENVIRONMENT}, text)
        (m.root / "etc/node-agent/config.toml").write_text(rig.installed_config)
        m.boot()
        want = "user-data line 5: unknown field `retention_dayz`"

        def failed():
            u = m.unit()
            t = m.journal_text()
            return (u, t) if u["Result"] == "exit-code" and want in t else None

        try:
            u, t = wait_for(f"{UNIT} to fail with '{want}'", 30, failed, 0.2)
        except CheckFailed as e:
            raise CheckFailed(f"{e}; journal: {m.journal_text()[-1500:]}") from None
        expect(int(u["ActiveEnterTimestampMonotonic"]) == 0, f"the unit was active at some point: {u}")
        line = next(ln for ln in t.splitlines() if want in ln)
        expect(line.startswith("node-agent: error: "), f"not the agent's one-line error: {line}")
        m.poweroff()
        m.destroy()
        return f"failed (exit-code, never active): {line[:160]}"

    r.check("userdata: a bad key in user-data ends in a failed unit naming user-data and the line", bad)


def plant_foreign_sentinel(m: Machine) -> None:
    """The sealer's local datadir already holds data of the staging environment's sealer."""
    uid, gid = m.rig.passwd("node-agent")
    parent = m.root / "var/lib/node-agent/local" / ENVIRONMENT
    datadir = parent / "sealer"
    datadir.mkdir(parents=True, mode=0o755)
    os.chmod(parent, 0o755)
    os.chmod(datadir, 0o750)
    os.chown(datadir, uid, gid)
    sentinel = {"file_system_id": None, "environment": "staging", "role": "sealer",
                "path": "/var/lib/node-agent/local/staging/sealer", "created_by": "i-0staging0000000000",
                "created_at": int(time.time())}
    (datadir / ".node-agent-storage.json").write_text(json.dumps(sentinel))
    os.chown(datadir / ".node-agent-storage.json", uid, gid)


def scenario_bad_setup(rig: Rig, r: Results, name: str, tags: dict | None, expect_line: str,
                       prepare=None) -> None:
    def bad():
        m = rig.machine(name, tags)
        if prepare:
            prepare(m)
        m.boot()

        def failed():
            u = m.unit()
            text = m.journal_text()
            # systemd's own line may reach the journal a moment after the unit's Result changed.
            if u["Result"] == "exit-code" and expect_line in text and "Failed with result" in text:
                return u, text
            return None

        u, text = wait_for(f"{UNIT} to fail with '{expect_line}'", 60, failed, 0.2)
        expect(int(u["ActiveEnterTimestampMonotonic"]) == 0, f"the unit was active at some point: {u}")
        expect(f"{UNIT}: Failed with result 'exit-code'" in text, "no systemd 'Failed with result' line")
        line = next(ln for ln in text.splitlines() if expect_line in ln)
        expect(line.startswith("node-agent: error: "), f"the error line is not the agent's one-line error: {line}")
        m.poweroff()
        m.destroy()
        return f"failed (result exit-code, never active): {line}"

    r.check(f"bad setup: {name} ends in a failed unit with a clear journal line", bad)


# ---------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", required=True, type=Path, help="the node-agent binary to install")
    ap.add_argument("--keep", action="store_true", help="keep the run's directory (layers, logs) afterwards")
    ap.add_argument("--only", default="", help="comma-separated scenarios: sealer,rpc,bootnode,ethstats,bad,userdata")
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("boot test: needs root")
        return 1
    scenarios = {"sealer", "rpc", "bootnode", "ethstats", "bad", "userdata"}
    only = set(filter(None, args.only.split(","))) or scenarios
    if only - scenarios:
        ap.error(f"unknown scenario(s) {sorted(only - scenarios)}; choose from {sorted(scenarios)}")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError(f"over {DEADLINE_SECS}s")))
    signal.alarm(DEADLINE_SECS)

    started = time.monotonic()
    rig = Rig(args.agent.resolve(), args.keep, want_ethstats="ethstats" in only)
    r = Results()
    try:
        rig.setup()
        log(f"setup done in {time.monotonic() - started:.0f}s (agent {args.agent}, work {rig.work})")
        for role in ("sealer", "rpc", "bootnode", "ethstats"):
            if role not in only:
                continue
            try:
                m, doc = boot_role(rig, r, role)
                if role == "sealer":
                    scenario_sealer_faults(rig, r, m, doc)
                if m.leader:
                    m.poweroff()
                m.destroy()
            except CheckFailed:
                dump(rig.machines[-1])
        if "userdata" in only:
            for scenario in (scenario_user_data, scenario_bad_user_data):
                try:
                    scenario(rig, r)
                except CheckFailed:
                    dump(rig.machines[-1])
        if "bad" in only:
            sealer = {"Role": "sealer", "Environment": ENVIRONMENT}
            for name, tags, line, prepare in [
                ("no-role-tag", {"Environment": ENVIRONMENT}, "instance tag Role: missing", None),
                ("missing-secret", {"Role": "sealer", "Environment": "incomplete"},
                 "secret incomplete/sealer/password (environment incomplete) does not exist in Secrets Manager",
                 None),
                ("wrong-sentinel", sealer, "says this data belongs to environment staging, role sealer",
                 plant_foreign_sentinel),
            ]:
                try:
                    scenario_bad_setup(rig, r, name, tags, line, prepare)
                except CheckFailed:
                    dump(rig.machines[-1])
    except (KeyboardInterrupt, TimeoutError) as e:
        log(f"boot test: stopped: {e}")
        r.failed.append(f"interrupted: {e}")
    except Exception:  # noqa: BLE001 (the rig itself broke: say so, then clean up)
        log("boot test: the rig failed:\n" + traceback.format_exc())
        r.failed.append("rig")
    finally:
        signal.alarm(0)
        rig.teardown()
    log(f"\nboot test: {time.monotonic() - started:.0f}s")
    if rig.ethstats_missing:
        log(NO_REAL_ETHSTATS)
    log(f"{r.passed} passed, {len(r.failed)} failed" + (f", {len(r.skipped)} skipped" if r.skipped else ""))
    return 1 if r.failed else 0


def dump(m: Machine) -> None:
    """What a failure needs to be understood: the unit's journal and the console."""
    try:
        if m.leader:
            log(f"--- {m.name}: journalctl -u {UNIT} (last 40 lines)")
            log("\n".join(m.journal_text().splitlines()[-40:]))
    except Exception as e:  # noqa: BLE001
        log(f"(no journal: {e})")
    log(f"--- {m.name}: console (last 20 lines)")
    log("\n".join(m.console().splitlines()[-20:]))


if __name__ == "__main__":
    sys.exit(main())
