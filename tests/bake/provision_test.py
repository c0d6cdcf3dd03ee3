#!/usr/bin/env python3
"""The bake's checks, offline: bake/provision.sh run in a Debian 12 container with local copies.

Run it through tests/bake/run (which installs the tools and picks the agent binary); README "Pins" says
what it proves. Outline:

- A throwaway OpenPGP key (and a second one, "another signer") generated here in a temporary GNUPGHOME,
  a fake geth alltools archive (`geth` and `bootnode` scripts printing the pinned version) signed by it,
  and a pins file (versions.toml) naming that archive's sha256, that key and its fingerprint: the same
  checks as the release's pins, with test values (`node-agent install --pins`).
- The ethstats server from ../shared/vendor/ethstats-server-afaed67.tar.gz (or $ETHSTATS_SERVER_ARCHIVE),
  committed into a local git repository: the pins name that commit. Without that fixture, a minimal
  stand-in repository takes its place (said loudly): everything else is tested the same.
- The boot test's cached Debian 12 rootfs, plus a cached layer with the packages provision.sh wants
  (gpg, git, nodejs, npm, curl) and a small one over it with AMI_PACKAGES, under an overlay per builder. provision.sh runs in it with systemd-nspawn
  (not booted: a plain command), GETH_ARCHIVE/GETH_SIGNATURE/ETHSTATS_REPOSITORY pointing at the local
  copies instead of the downloads; everything after the download is the real bake's code path.
- The layer also has what Debian's AMI has that an image without cloud-init deals with: cloud-init (its
  dependencies installed as such), ifupdown and openssh-server; each builder gets a DHCP stanza for its
  network, as the AMI brings interfaces up.
- Refusals first, each of which must be exactly one line on stderr and leave no geth installed: a wrong
  sha256, a bad signature, a signature by another key, a shipped key that is not the pinned one, an
  ethstats commit the repository does not have, CLOUD_INIT neither true nor false, and CLOUD_INIT=false
  where nothing but cloud-init would bring the network up. Then the good case (CLOUD_INIT unset): geth,
  bootnode and the ethstats server (with its node_modules from npm ci, the dashboard built) installed, the
  server answering HTTP, cloud-init and the SSH host keys untouched.
- Then CLOUD_INIT=false (-var cloud_init=false) on a fresh builder: cloud-init purged with the packages
  only it needed and nothing else (provision's packages, ifupdown with its DHCP client, openssh-server
  stay), its state and units gone, the builder's SSH host keys removed and made anew by the drop-in's
  commands, node-agent installed and enabled the same.

npm's cache lives outside the clone (CACHE/npm, bound into the container), so a second run needs the
registry only for what changed; npm ci still rebuilds node_modules from it every time.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/boot"))
import boot_test  # noqa: E402  (the cached rootfs and overlay helpers)

CACHE = Path(os.environ.get("NODE_AGENT_BAKE_CACHE", "/var/cache/node-agent-bake"))
RUNS = Path(os.environ.get("NODE_AGENT_BAKE_RUNS", "/var/tmp/node-agent-bake"))
VENDOR = Path(
    os.environ.get("ETHSTATS_SERVER_ARCHIVE", REPO.parent / "shared/vendor/ethstats-server-afaed67.tar.gz")
)
# What provision.sh installs with apt on a real builder; preinstalled here so a run needs no apt.
PACKAGES = ["ca-certificates", "curl", "git", "gpg", "gpgv", "nodejs", "npm"]
# And what Debian's AMI has that CLOUD_INIT=false deals with: cloud-init itself (its dependencies
# installed as dependencies), ifupdown (which brings the network up without it, and recommends the DHCP
# client cloud-init also depends on) and openssh-server (host keys).
AMI_PACKAGES = ["cloud-init", "ifupdown", "openssh-server"]
LAYER_RECIPE = "1"
AMI_LAYER_RECIPE = "1"
# cloud-init's own dependencies that nothing else in the layer needs: CLOUD_INIT=false must purge them.
CLOUD_INIT_ONLY = ["python3-configobj", "python3-jinja2", "python3-jsonpatch", "python3-jsonschema",
                   "python3-oauthlib", "python3-serial", "python3-netifaces"]
# What must stay: provision's packages, and the DHCP client ifupdown recommends.
KEPT = PACKAGES + ["ifupdown", "isc-dhcp-client", "openssh-server", "python3"]
# The network configuration of the image under test (Debian's AMIs bring every interface up with DHCP).
NETWORK = "etc/network/interfaces.d/bake-test"
# Inside the container, where Packer would upload (bake/node-agent.pkr.hcl: local.staging).
# (Packer uploads to /tmp/node-agent-bake; systemd-nspawn mounts a fresh tmpfs on /tmp.)
STAGING = "/root/node-agent-bake"
LOCAL = "/root/local-copies"
GETH_VERSION = "1.13.15"

passed = 0
failed = 0


def log(msg: str) -> None:
    print(msg, flush=True)


def check(cond: bool, what: str, detail: str = "") -> None:
    global passed, failed
    if cond:
        passed += 1
        log(f"PASS {what}")
    else:
        failed += 1
        log(f"FAIL {what}" + (f"\n{detail}" if detail else ""))


def run(argv: list, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run([str(a) for a in argv], **kw)


def nspawn(merged: Path, argv: list, env: dict | None = None, binds: list | None = None, timeout=900):
    """Runs argv in the container (not booted; host network, the host's resolv.conf)."""
    cmd = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--resolv-conf=copy-host",
           "--timezone=off", "-D", merged]
    for k, v in (env or {}).items():
        cmd.append(f"--setenv={k}={v}")
    for b in binds or []:
        cmd.append(f"--bind={b}")
    return run(cmd + argv, check=False, timeout=timeout)


# ---------------------------------------------------------------------------------------------------------
# Cached layer: the base rootfs plus the packages provision.sh installs with apt


def ensure_packages_layer(base: Path) -> Path:
    key = hashlib.sha256(
        json.dumps({"base": base.name, "packages": PACKAGES, "recipe": LAYER_RECIPE}).encode()
    ).hexdigest()[:16]
    CACHE.mkdir(parents=True, exist_ok=True)
    final = CACHE / f"packages-{key}"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "usr/bin/npm").exists():
            log(f"packages layer: cached {final}")
            return final
        log(f"packages layer: building {final} (apt-get install {' '.join(PACKAGES)}; a minute or two)")
        start = time.monotonic()
        tmp = CACHE / f"packages-{key}.tmp"
        merged = tmp / "merged"
        if merged.exists() and boot_test.is_mounted(merged):
            boot_test.unmount(merged)
        shutil.rmtree(tmp, ignore_errors=True)
        boot_test.mount_overlay([base], tmp / "upper", tmp / "work", merged)
        try:
            p = nspawn(merged, ["sh", "-c", "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
                                "apt-get install -y -q --no-install-recommends " + " ".join(PACKAGES)
                                + " && apt-get clean"])
            if p.returncode != 0:
                raise RuntimeError(f"apt-get in the layer failed:\n{(p.stdout + p.stderr)[-3000:]}")
        finally:
            boot_test.unmount(merged)
        os.rename(tmp / "upper", final)
        shutil.rmtree(tmp, ignore_errors=True)
        for old in CACHE.glob("packages-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        log(f"packages layer: built in {time.monotonic() - start:.0f}s")
        return final


def ensure_ami_layer(packages: Path, base: Path) -> Path:
    """A small cached layer over the packages layer with AMI_PACKAGES (cloud-init and its dependencies,
    ifupdown, openssh-server), kept apart so that the packages layer stays shared with other checkouts."""
    key = hashlib.sha256(
        json.dumps({"below": packages.name, "packages": AMI_PACKAGES, "recipe": AMI_LAYER_RECIPE}).encode()
    ).hexdigest()[:16]
    final = CACHE / f"ami-{key}"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "usr/bin/cloud-init").exists():
            log(f"AMI layer: cached {final}")
            return final
        log(f"AMI layer: building {final} (apt-get install {' '.join(AMI_PACKAGES)}; a minute)")
        start = time.monotonic()
        tmp = CACHE / f"ami-{key}.tmp"
        merged = tmp / "merged"
        if merged.exists() and boot_test.is_mounted(merged):
            boot_test.unmount(merged)
        shutil.rmtree(tmp, ignore_errors=True)
        boot_test.mount_overlay([packages, base], tmp / "upper", tmp / "work", merged)
        try:
            p = nspawn(merged, ["sh", "-c", "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
                                "apt-get install -y -q --no-install-recommends " + " ".join(AMI_PACKAGES)
                                + " && apt-get clean"])
            if p.returncode != 0:
                raise RuntimeError(f"apt-get in the AMI layer failed:\n{(p.stdout + p.stderr)[-3000:]}")
        finally:
            boot_test.unmount(merged)
        os.rename(tmp / "upper", final)
        shutil.rmtree(tmp, ignore_errors=True)
        for old in CACHE.glob("ami-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        log(f"AMI layer: built in {time.monotonic() - start:.0f}s")
        return final


# ---------------------------------------------------------------------------------------------------------
# Fixtures: throwaway keys, a signed fake geth archive, a local ethstats repository


class Gpg:
    def __init__(self, home: Path):
        self.home = home
        home.mkdir(mode=0o700, parents=True)

    def __call__(self, *args, **kw) -> subprocess.CompletedProcess:
        return run(["gpg", "--batch", "--no-options", "--homedir", self.home, *args], **kw)

    def new_key(self, uid: str) -> str:
        """A fresh signing key without a passphrase; returns its fingerprint."""
        self("--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
        out = self("--with-colons", "--list-keys", uid).stdout
        return [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")][0]

    def sign(self, fpr: str, path: Path, out: Path) -> None:
        self("--local-user", fpr, "--armor", "--detach-sign", "--output", out, path)

    def stop(self) -> None:
        """Stops the gpg-agent that key generation started for this home."""
        run(["gpgconf", "--homedir", self.home, "--kill", "all"], check=False)


GETH = f"""#!/bin/sh
# Fake geth {GETH_VERSION} for the bake's tests (tests/bake): a signed test archive, not geth.
case "$1" in
version) printf 'Geth\\nVersion: {GETH_VERSION}-stable\\nGit Commit: test\\n' ;;
*) echo "fake geth: $*" >&2; exit 2 ;;
esac
"""

BOOTNODE = """#!/bin/sh
# Fake bootnode for the bake's tests (tests/bake).
echo "Usage of bootnode:" >&2
echo "  -nodekey string" >&2
echo "        private key filename" >&2
exit 2
"""


def make_fixtures(tmp: Path) -> dict:
    gpg = Gpg(tmp / "gnupg")
    try:
        return signed_fixtures(tmp, gpg)
    finally:
        gpg.stop()


def signed_fixtures(tmp: Path, gpg: Gpg) -> dict:
    signer = gpg.new_key("Bake Test Signer <bake-test@invalid>")
    other = gpg.new_key("Another Signer <another@invalid>")
    signer_key = tmp / "bake-test-signer.asc"
    other_key = tmp / "another-signer.asc"
    signer_key.write_text(gpg("--armor", "--export", signer).stdout)
    other_key.write_text(gpg("--armor", "--export", other).stdout)

    top = f"geth-alltools-linux-amd64-{GETH_VERSION}-test"
    src = tmp / "geth-src" / top
    src.mkdir(parents=True)
    for name, body in [("geth", GETH), ("bootnode", BOOTNODE)]:
        (src / name).write_text(body)
        (src / name).chmod(0o755)
    archive = tmp / f"{top}.tar.gz"
    run(["tar", "-czf", archive, "-C", src.parent, top])
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    good_sig = tmp / "good.asc"
    gpg.sign(signer, archive, good_sig)
    # A bad signature: the right key, made over other bytes.
    other_bytes = tmp / "other-bytes"
    other_bytes.write_bytes(archive.read_bytes() + b"\0")
    bad_sig = tmp / "bad.asc"
    gpg.sign(signer, other_bytes, bad_sig)
    other_sig = tmp / "other-key.asc"
    gpg.sign(other, archive, other_sig)

    # The ethstats server at a fixed commit (fixed author and dates: the same id every run): the real one
    # when its fixture is here, else a minimal stand-in repository (package.json and lockfile with no
    # modules, a dist script, an app.js serving HTTP), so the geth checks and the whole provision flow
    # still run.
    repo = tmp / "ethstats-server"
    repo.mkdir()
    if VENDOR.exists():
        run(["tar", "-xzf", VENDOR, "-C", repo, "--strip-components=1"])
    else:
        write_standin_ethstats(repo)
    genv = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t", "GIT_AUTHOR_DATE": "2025-12-02T00:00:00Z",
            "GIT_COMMITTER_DATE": "2025-12-02T00:00:00Z"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "ethstats-server afaed67 (test)"]):
        run(["git", "-C", repo, "-c", "commit.gpgsign=false", *args], env=genv)
    commit = run(["git", "-C", repo, "rev-parse", "HEAD"]).stdout.strip()
    return {"signer": signer, "other": other, "signer_key": signer_key, "other_key": other_key,
            "archive": archive, "sha256": sha256, "good_sig": good_sig, "bad_sig": bad_sig,
            "other_sig": other_sig, "repo": repo, "commit": commit}


def write_standin_ethstats(repo: Path) -> None:
    package = {"name": "ethstats-server", "version": "0.0.0", "private": True,
               "scripts": {"dist": "mkdir -p dist && echo dashboard > dist/index.html"}}
    lock = {"name": "ethstats-server", "version": "0.0.0", "lockfileVersion": 3, "requires": True,
            "packages": {"": {"name": "ethstats-server", "version": "0.0.0"}}}
    (repo / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    (repo / "package-lock.json").write_text(json.dumps(lock, indent=2) + "\n")
    (repo / "app.js").write_text(
        "require('http').createServer((q, r) => r.end('stand-in ethstats-server\\n'))"
        ".listen(Number(process.env.PORT || 3000));\n")


def pins_toml(sha256: str, fingerprint: str, commit: str) -> str:
    return f"""# tests/bake: pins for a throwaway-signed test archive (node-agent install --pins)
[geth]
version = "{GETH_VERSION}"
url = "https://example.invalid/builds/geth-alltools-linux-amd64-{GETH_VERSION}-test.tar.gz"
sha256 = "{sha256}"
signing_key = "bake-test-signer.asc"
signing_key_fingerprint = "{fingerprint}"
[ethstats]
name = "goerli/ethstats-server"
version = "test"
commit = "{commit}"
repository = "https://example.invalid/ethstats-server.git"
"""


# ---------------------------------------------------------------------------------------------------------


def installed_packages(merged: Path) -> set[str]:
    p = nspawn(merged, ["dpkg-query", "-W", "-f", "${Package} ${Status}\n"])
    return {ln.split()[0] for ln in p.stdout.splitlines() if ln.endswith(" installed")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True, type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    real_ethstats = VENDOR.exists()
    if not real_ethstats:
        log(f"NOTE: no ethstats-server fixture at {VENDOR} (a git archive of the pinned commit; set "
            "ETHSTATS_SERVER_ARCHIVE): the geth checks and the provision flow run in full, but with a minimal "
            "stand-in ethstats-server: its real modules and dashboard build are NOT tested")
    start = time.monotonic()
    RUNS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=RUNS))
    mounts: list[Path] = []
    try:
        base = boot_test.ensure_rootfs()
        layer = ensure_packages_layer(base)
        ami = ensure_ami_layer(layer, base)
        fx = make_fixtures(tmp / "fixtures")
        log(f"fixtures: test archive sha256 {fx['sha256']}, signer {fx['signer']}, ethstats commit {fx['commit']}")
        npm_cache = CACHE / "npm"
        npm_cache.mkdir(parents=True, exist_ok=True)

        def builder(name: str) -> Path:
            """A fresh builder: an overlay over the packages layer, with the local copies and provision.sh,
            and the image's network configuration (a DHCP stanza, as Debian's AMIs bring interfaces up)."""
            merged = tmp / name / "merged"
            boot_test.mount_overlay([ami, layer, base], tmp / name / "upper", tmp / name / "work", merged)
            mounts.append(merged)
            local = merged / LOCAL.lstrip("/")
            local.mkdir(parents=True)
            for key in ("archive", "good_sig", "bad_sig", "other_sig"):
                shutil.copy(fx[key], local / fx[key].name)
            shutil.copytree(fx["repo"], local / "ethstats-server")
            shutil.copy(REPO / "bake/provision.sh", merged / "root/provision.sh")
            (merged / NETWORK).parent.mkdir(parents=True, exist_ok=True)
            (merged / NETWORK).write_text("# bake test: the image's network, as Debian's AMIs have it\n"
                                          "allow-hotplug eth0\niface eth0 inet dhcp\n")
            return merged

        def provision(merged: Path, what: str, sig: str = "good_sig", key: str = "signer_key",
                      fpr: str | None = None, commit: str | None = None, cloud_init: str | None = None):
            staging = merged / STAGING.lstrip("/")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            shutil.copy(args.agent, staging / "node-agent")
            shutil.copy(REPO / "resources/genesis.json", staging / "genesis.json")
            shutil.copy(REPO / "resources/config.example.toml", staging / "config.toml")
            shutil.copy(fx[key], staging / "bake-test-signer.asc")
            pins = pins_toml(fx["sha256"] if what != "wrong sha256" else "0" * 64,
                             fpr or fx["signer"], commit or fx["commit"])
            (merged / "root/pins.toml").write_text(pins)
            env = {"STAGING": STAGING, "PINS": "/root/pins.toml",
                   "GETH_ARCHIVE": f"{LOCAL}/{fx['archive'].name}",
                   "GETH_SIGNATURE": f"{LOCAL}/{fx[sig].name}",
                   "ETHSTATS_REPOSITORY": f"{LOCAL}/ethstats-server",
                   "npm_config_cache": "/var/cache/bake-npm"}
            if cloud_init is not None:
                env["CLOUD_INIT"] = cloud_init
            t0 = time.monotonic()
            # provision.sh's own stderr, apart from systemd-nspawn's.
            err = merged / "root/provision.stderr"
            binds = [f"{npm_cache}:/var/cache/bake-npm"]
            # This host's way to the registry (a proxy, an intercepting CA), passed on to npm in the
            # container: test environment, not part of the bake.
            extra_ca = os.environ.get("NODE_EXTRA_CA_CERTS")
            if extra_ca and Path(extra_ca).is_file():
                binds.append(f"{Path(extra_ca).resolve()}:/etc/bake-test-extra-ca.crt")
                env["NODE_EXTRA_CA_CERTS"] = "/etc/bake-test-extra-ca.crt"
            for k in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
                if os.environ.get(k):
                    env[k] = os.environ[k]
            p = nspawn(merged, ["sh", "-c", "sh -eu /root/provision.sh 2>/root/provision.stderr"], env=env,
                       binds=binds)
            p.stderr = err.read_text() if err.exists() else f"(no {err}) {p.stderr}"
            log(f"  provision.sh ({what}): exit {p.returncode} in {time.monotonic() - t0:.1f}s")
            return p

        merged = builder("keep-cloud-init")
        geth = merged / "usr/local/bin/geth"
        refusals = [
            ("wrong sha256", {}, "is not the pinned geth.sha256"),
            ("bad signature", {"sig": "bad_sig"}, "BAD signature by"),
            ("signature by another key", {"sig": "other_sig"},
             f"signed by key {fx['other']}, not by geth.signing_key_fingerprint"),
            ("shipped key is not the pinned one", {"key": "other_key"},
             f"holds key {fx['other']}, not geth.signing_key_fingerprint {fx['signer']}"),
            ("ethstats commit not in the repository", {"commit": "0123456789" * 4},
             "has no commit 0123456789"),
            ("CLOUD_INIT neither true nor false", {"cloud_init": "no"},
             "CLOUD_INIT=no: true (keep cloud-init) or false (an image without it)"),
        ]
        for what, kw, says in refusals:
            p = provision(merged, what, **kw)
            lines = p.stderr.strip().splitlines()
            check(p.returncode != 0 and len(lines) == 1 and lines[0].startswith("bake: ") and says in lines[0],
                  f"{what}: refused with one line on stderr ({lines[-1] if lines else 'nothing'})",
                  p.stdout[-2000:] + p.stderr[-2000:])
            check(not geth.exists(), f"{what}: nothing installed")

        # CLOUD_INIT=false on an image where nothing but cloud-init would bring the network up.
        network = (merged / NETWORK).read_text()
        (merged / NETWORK).unlink()
        p = provision(merged, "CLOUD_INIT=false without a network configuration", cloud_init="false")
        lines = p.stderr.strip().splitlines()
        check(p.returncode != 0 and len(lines) == 1 and lines[0].startswith("bake: CLOUD_INIT=false: nothing "
                                                                           "would bring the network up"),
              f"CLOUD_INIT=false with no network configuration but cloud-init's: refused with one line "
              f"({lines[-1] if lines else 'nothing'})", p.stdout[-2000:] + p.stderr[-2000:])
        check(not geth.exists() and (merged / "usr/bin/cloud-init").exists(),
              "CLOUD_INIT=false refused: nothing installed, cloud-init untouched")
        (merged / NETWORK).write_text(network)

        keys_before = {f.name: f.read_bytes() for f in (merged / "etc/ssh").glob("ssh_host_*")}
        p = provision(merged, "good signature, right sha256 (CLOUD_INIT unset: keep)")
        check(p.returncode == 0, "good signature with the right sha256: provision.sh succeeds",
              p.stdout[-4000:] + p.stderr[-4000:])
        out = p.stdout
        check(f"geth: signature good, by {fx['signer']}" in out and "matches geth.sha256" in out,
              "the sha256 and the signature were both checked")
        check(f"ethstats: {LOCAL}/ethstats-server at {fx['commit']}" in out, "ethstats checked out at the pinned commit")
        v = nspawn(merged, ["/usr/local/bin/geth", "version"])
        check(f"Version: {GETH_VERSION}-stable" in v.stdout, "/usr/local/bin/geth is the signed archive's geth",
              v.stdout + v.stderr)
        b = nspawn(merged, ["sh", "-c", "/usr/local/bin/bootnode -h 2>&1"])
        check("-nodekey" in b.stdout, "/usr/local/bin/bootnode installed", b.stdout)
        app = merged / "opt/ethstats-server"
        modules = (app / "node_modules/primus").is_dir() and (app / "node_modules/express").is_dir()
        check((app / "app.js").is_file() and (modules or not real_ethstats) and not (app / ".git").exists(),
              "/opt/ethstats-server has app.js and node_modules (npm ci), no .git")
        check((app / "dist").is_dir(), "the dashboard was built (npm run dist)")
        check((merged / "usr/local/bin/ethstats-server").is_file(), "the ethstats-server wrapper installed")
        check(not (merged / STAGING.lstrip("/")).exists(), "the staging directory is removed")
        keys_after = {f.name: f.read_bytes() for f in (merged / "etc/ssh").glob("ssh_host_*")}
        check("cloud-init: kept (" in out and (merged / "usr/bin/cloud-init").exists()
              and "cloud-init" in installed_packages(merged) and keys_before and keys_after == keys_before
              and not (merged / "etc/systemd/system/ssh.service.d").exists(),
              "CLOUD_INIT unset: cloud-init kept, SSH host keys untouched (cloud-init replaces them per instance)")

        # The installed server runs under Debian's Node and serves the dashboard.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        smoke = f"""cd /opt/ethstats-server && (WS_SECRET=test PORT={port} node app.js >/tmp/es.log 2>&1 &) &&
for i in $(seq 100); do curl -fsS -o /dev/null http://127.0.0.1:{port}/ && echo served && break; sleep 0.2; done
node --version; tail -n 5 /tmp/es.log"""
        sm = nspawn(merged, ["sh", "-c", smoke], timeout=120)
        node = next((w for w in sm.stdout.split() if w.startswith("v") and w[1:2].isdigit()), "?")
        check("served" in sm.stdout, f"ethstats-server answers HTTP under Debian's node {node}", sm.stdout + sm.stderr)

        # -- An image without cloud-init (-var cloud_init=false), on a fresh builder (the first one's
        # layer, node_modules and all, deleted first unless --keep).
        boot_test.unmount(merged)
        if not args.keep:
            shutil.rmtree(merged.parent, ignore_errors=True)
        merged = builder("no-cloud-init")
        before = installed_packages(merged)
        missing = [pkg for pkg in ["cloud-init"] + CLOUD_INIT_ONLY + KEPT if pkg not in before]
        check(not missing, "the builder has cloud-init, its dependencies, ifupdown and openssh-server, as "
                           "Debian's AMI has them", f"missing from the layer: {missing}")
        p = provision(merged, "CLOUD_INIT=false", cloud_init="false")
        check(p.returncode == 0, "CLOUD_INIT=false: provision.sh succeeds", p.stdout[-4000:] + p.stderr[-4000:])
        out = p.stdout
        after = installed_packages(merged)
        gone = before - after
        prefix = "cloud-init: also purging what only it needed: "
        said = next((ln[len(prefix):].split() for ln in out.splitlines() if ln.startswith(prefix)), [])
        check("cloud-init" not in after and not (merged / "usr/bin/cloud-init").exists()
              and not (merged / "etc/cloud").exists() and not (merged / "var/lib/cloud").exists()
              and not any(any((merged / d).glob("cloud-*")) for d in ("etc/systemd/system", "usr/lib/systemd/system"))
              and "cloud-init: not in this image" in out,
              "CLOUD_INIT=false: cloud-init purged (no package, binary, /etc/cloud, /var/lib/cloud or unit)",
              out[-3000:])
        check(set(CLOUD_INIT_ONLY) <= gone, "CLOUD_INIT=false: what only cloud-init needed is purged too "
              f"({len(gone) - 1} packages: {' '.join(sorted(gone - {'cloud-init'}))})",
              f"still installed: {sorted(set(CLOUD_INIT_ONLY) - gone)}")
        check(gone == {"cloud-init"} | set(said) and not (set(KEPT) & gone),
              "CLOUD_INIT=false: nothing else removed (provision's packages, ifupdown and the DHCP client it "
              "recommends, openssh-server stay)",
              f"removed {sorted(gone)}; said {sorted(said)}; kept must be {KEPT}")
        check(not list((merged / "etc/ssh").glob("ssh_host_*"))
              and (merged / "etc/systemd/system/ssh.service.d/node-agent-host-keys.conf").is_file(),
              "CLOUD_INIT=false: the builder's SSH host keys removed, ssh.service makes the instance's own")
        # The drop-in's commands, as an instance's first boot runs them.
        # (/run/sshd: ssh.service's RuntimeDirectory=, made by systemd before ExecStartPre.)
        k = nspawn(merged, ["sh", "-c", "mkdir -p -m 0755 /run/sshd && /usr/bin/ssh-keygen -A && /usr/sbin/sshd -t "
                                        "&& ls /etc/ssh"])
        check(k.returncode == 0 and "ssh_host_ed25519_key" in k.stdout,
              "CLOUD_INIT=false: ssh-keygen -A then sshd -t succeed (first boot's host keys)", k.stdout + k.stderr)
        unit = (merged / "usr/local/lib/systemd/system/node-agent.service").read_text()
        v = nspawn(merged, ["/usr/local/bin/geth", "version"])
        e = nspawn(merged, ["systemctl", "is-enabled", "node-agent.service"])
        # systemd-analyze on the image (offline, --root), where cloud-final.service no longer exists; any
        # output fails, as in bake/check.
        a = run(["systemd-analyze", "verify", "--man=no", f"--root={merged}", "node-agent.service", "ssh.service"],
                check=False)
        check("cloud-final.service" in unit and f"Version: {GETH_VERSION}-stable" in v.stdout
              and e.stdout.strip() == "enabled" and a.returncode == 0 and not (a.stdout + a.stderr).strip(),
              "CLOUD_INIT=false: node-agent installed and enabled the same; its unit (After=cloud-final.service, "
              "gone now) and ssh.service with the host-key drop-in pass systemd-analyze verify on the image",
              f"geth {v.stdout!r}; is-enabled {e.stdout!r}; verify exit {a.returncode}: {a.stdout!r} {a.stderr!r}")
    finally:
        for m in mounts:
            if boot_test.is_mounted(m):
                boot_test.unmount(m)
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"tests/bake: {passed} passed, {failed} failed in {time.monotonic() - start:.0f}s")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
