"""Tests of the geth / bootnode / ethstats-server stand-ins.

Run: python3 -m unittest discover -s tests/standins -p 'test_*.py'
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _standin as S  # noqa: E402

GETH = os.path.join(HERE, "geth")
BOOTNODE = os.path.join(HERE, "bootnode")
ETHSTATS = os.path.join(HERE, "ethstats-server")
REFERENCE_FLAGS = "/work/shared/reference/geth-1.13.15-flags.txt"

SIGNER_KEY = "b71c71a67e1177ad4e901695e1b4b9ee17ae16c6668d313eac2f96dbcda3f291"
SIGNER = "0x71562b71999873db5b286df957af199ec94617f7"


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def genesis(chain_id=4242, period=5, signers=(SIGNER,), **extra):
    g = {
        "config": {"chainId": chain_id, "homesteadBlock": 0, "eip150Block": 0, "eip155Block": 0, "eip158Block": 0,
                   "byzantiumBlock": 0, "constantinopleBlock": 0, "petersburgBlock": 0, "istanbulBlock": 0,
                   "berlinBlock": 0, "londonBlock": 0, "clique": {"period": period, "epoch": 30000}},
        "difficulty": "1",
        "gasLimit": "0x1c9c380",
        "extraData": "0x" + "00" * 32 + "".join(s[2:] for s in signers) + "00" * 65,
        "alloc": {SIGNER[2:]: {"balance": "0x56bc75e2d63100000"}},
    }
    g.update(extra)
    return g


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="standin-")
        self.addCleanup(self.tmp.cleanup)
        self.dir = self.tmp.name
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def write(self, name, content, mode=None):
        p = self.path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            f.write(content if isinstance(content, str) else json.dumps(content))
        if mode is not None:
            os.chmod(p, mode)
        return p

    def run_cmd(self, prog, *args, env=None, timeout=10):
        e = dict(os.environ)
        e.update(env or {})
        return subprocess.run([prog, *args], capture_output=True, text=True, env=e, timeout=timeout, cwd=self.dir)

    def spawn(self, prog, *args, env=None):
        e = dict(os.environ)
        e.update(env or {})
        p = subprocess.Popen([prog, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, cwd=self.dir)
        self.procs.append(p)
        return p

    def wait_for(self, cond, timeout=5.0, what="condition"):
        end = time.time() + timeout
        while time.time() < end:
            v = cond()
            if v:
                return v
            time.sleep(0.03)
        self.fail("timed out waiting for " + what)

    def finish(self, p, timeout=5):
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err


class GethHelpers(Base):
    def init_datadir(self, name="d", g=None):
        gpath = self.write(name + "-genesis.json", g or genesis())
        datadir = self.path(name)
        r = self.run_cmd(GETH, "init", "--datadir", datadir, gpath)
        self.assertEqual(r.returncode, 0, r.stderr)
        return datadir

    def add_signer_key(self, datadir, password="pw"):
        self.write(os.path.join(os.path.basename(datadir), "keystore", "signer.json"),
                   {"address": SIGNER[2:], "crypto": {}, "id": "x", "version": 3, "standin_password": password})
        return self.write("password.txt", password + "\n")

    def start_node(self, datadir, *args, env=None, period="0.2"):
        e = {"STANDIN_GETH_PERIOD": period}
        e.update(env or {})
        p = self.spawn(GETH, "--datadir", datadir, "--authrpc.port", str(free_port()), *args, env=e)

        def ready():
            if p.poll() is not None:
                self.fail("geth stand-in exited early: rc=%s\n%s" % (p.returncode, p.stderr.read()))
            try:
                with open(os.path.join(datadir, "standin-status.json")) as f:
                    return json.load(f).get("status") == "running"
            except (OSError, ValueError):
                return False

        self.wait_for(ready, what="node start")
        return p

    @staticmethod
    def http_rpc(port, payload, headers=None):
        req = urllib.request.Request("http://127.0.0.1:%d/" % port, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json", **(headers or {})})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read()), dict(r.headers)

    @staticmethod
    def ipc_rpc(path, payload):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(json.dumps(payload).encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf)

    @staticmethod
    def call(method, *params, id=1):
        return {"jsonrpc": "2.0", "id": id, "method": method, "params": list(params)}


class GethCommandLineTest(GethHelpers):
    def test_version_output_is_the_real_format(self):
        r = self.run_cmd(GETH, "version")
        self.assertEqual(r.returncode, 0)
        lines = r.stdout.splitlines()
        self.assertEqual(lines[:7], ["Geth", "Version: 1.13.15-stable",
                                     "Git Commit: c5ba367eb6232e3eddd7d6226bfd374449c63164",
                                     "Git Commit Date: 20240417", "Architecture: amd64", "Go Version: go1.21.6",
                                     "Operating System: linux"])
        self.assertTrue(lines[7].startswith("GOPATH=") and lines[8].startswith("GOROOT="))
        r = self.run_cmd(GETH, "version", env={"STANDIN_GETH_VERSION": "1.14.0"})
        self.assertIn("Version: 1.14.0-stable\n", r.stdout)
        r = self.run_cmd(GETH, "--version")
        self.assertEqual(r.stdout, "geth version 1.13.15-stable-c5ba367e\n")

    def test_unknown_flag_is_rejected_like_urfave_cli(self):
        r = self.run_cmd(GETH, "--datadir", self.dir, "--rpc")
        self.assertEqual(r.returncode, 1)
        self.assertTrue(r.stdout.startswith("Incorrect Usage: flag provided but not defined: -rpc\n\n"), r.stdout[:80])
        self.assertEqual(r.stderr, "flag provided but not defined: -rpc\n")
        # init has its own flag set: global flags after the subcommand are unknown there
        r = self.run_cmd(GETH, "init", "--networkid", "5", "g.json")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr, "flag provided but not defined: -networkid\n")

    def test_boolean_flags_take_no_separate_value(self):
        for args in (["--mine", "--http", "--ipcdisable", "version"], ["-mine=true", "--http=false", "version"]):
            r = self.run_cmd(GETH, *args)
            self.assertEqual(r.returncode, 0, (args, r.stderr))
        r = self.run_cmd(GETH, "--mine", "true")  # "true" becomes the command
        self.assertEqual((r.returncode, r.stderr), (1, 'invalid command: "true"\n'))
        r = self.run_cmd(GETH, "--mine=yes")
        self.assertEqual(r.stderr, 'invalid boolean value "yes" for -mine: parse error\n')
        r = self.run_cmd(GETH, "--port", "abc")
        self.assertEqual(r.stderr, 'invalid value "abc" for flag -port: parse error\n')
        r = self.run_cmd(GETH, "--syncmode", "fast")
        self.assertEqual(r.stderr, 'invalid value "fast" for flag -syncmode: unknown sync mode "fast"\n')
        r = self.run_cmd(GETH, "--datadir")
        self.assertEqual(r.stderr, "flag needs an argument: -datadir\n")

    @unittest.skipUnless(os.path.exists(REFERENCE_FLAGS), "reference flag list not present")
    def test_accepted_flags_match_the_reference_list(self):
        sys.path.insert(0, HERE)
        import importlib.machinery
        import importlib.util

        loader = importlib.machinery.SourceFileLoader("geth_standin", GETH)
        spec = importlib.util.spec_from_loader("geth_standin", loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
        glob, init, section = set(), set(), "global"
        with open(REFERENCE_FLAGS) as f:
            for line in f:
                if line.startswith("# geth init flags"):
                    section = "init"
                elif line.startswith("# bootnode"):
                    section = "bootnode"
                elif line.startswith("# geth v1.13.15 subcommands"):
                    section = "cmds"
                if line.startswith("#") or not line.strip():
                    continue
                if section in ("global", "init"):
                    names = [w.lstrip("-") for w in line.split() if w.startswith("-")]
                    (glob if section == "global" else init).update(names)
        extra = {"help", "h", "version", "v", "generate-bash-completion"}
        self.assertEqual(set(mod.build_specs(mod.GLOBAL_FLAG_NAMES)), glob | extra)
        self.assertEqual(set(mod.build_specs(mod.INIT_FLAG_NAMES)), init | {"help", "h"})

    def test_init_same_genesis_twice_then_incompatible(self):
        datadir = self.init_datadir()
        r = self.run_cmd(GETH, "init", "--datadir", datadir, self.path("d-genesis.json"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Successfully wrote genesis state", r.stderr)
        other = self.write("other.json", genesis(chain_id=99))
        r = self.run_cmd(GETH, "init", "--datadir", datadir, other)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"Fatal: Failed to write genesis block: database contains incompatible genesis "
                                   r"\(have [0-9a-f]{64}, new [0-9a-f]{64}\)")

    def test_running_without_init_stores_mainnet_so_init_fails_later(self):
        datadir = self.path("fresh")
        p = self.start_node(datadir, "--networkid", "4242")
        p.send_signal(signal.SIGTERM)
        self.assertEqual(self.finish(p)[0], 0)
        g = self.write("g.json", genesis())
        r = self.run_cmd(GETH, "init", "--datadir", datadir, g)
        self.assertEqual(r.returncode, 1)
        self.assertIn("incompatible genesis (have d4e56740f876aef8c010b86a40d5f56745a118d0906a34e69aec8c0db1cb8fa3, new ", r.stderr)

    def test_init_rejects_bad_genesis_and_misplaced_flags(self):
        bad = genesis()
        del bad["alloc"]
        r = self.run_cmd(GETH, "init", "--datadir", self.path("x"), self.write("bad.json", bad))
        self.assertIn("Fatal: invalid genesis file: missing required field 'alloc' for Genesis", r.stderr)
        r = self.run_cmd(GETH, "init", "--datadir", self.path("x"), self.write("bad2.json", genesis(extraData="00")))
        self.assertIn("hex string without 0x prefix", r.stderr)
        r = self.run_cmd(GETH, "init", self.write("ok.json", genesis()), "--datadir", self.path("x"))
        self.assertEqual((r.returncode, r.stderr.strip()), (1, "Fatal: need genesis.json file as the only argument"))


class GethNodeTest(GethHelpers):
    def test_http_and_ipc_json_rpc_head_advances_and_api_restriction(self):
        datadir = self.init_datadir()
        port = free_port()
        p = self.start_node(datadir, "--networkid", "4242", "--http", "--http.port", str(port),
                            "--http.corsdomain", "https://app.example", "--http.vhosts", "localhost,node.internal")
        ipc = os.path.join(datadir, "geth.ipc")
        r, _ = self.http_rpc(port, self.call("eth_blockNumber"))
        first = int(r["result"], 16)
        self.wait_for(lambda: int(self.http_rpc(port, self.call("eth_blockNumber"))[0]["result"], 16) >= first + 2,
                      what="head to advance")
        batch, _ = self.http_rpc(port, [self.call("eth_chainId", id=1), self.call("net_version", id=2),
                                        self.call("net_peerCount", id=3), self.call("eth_syncing", id=4),
                                        self.call("web3_clientVersion", id=5), self.call("admin_nodeInfo", id=6),
                                        self.call("clique_getSigners", id=7),
                                        self.call("eth_getBlockByNumber", "latest", False, id=8)])
        by_id = {x["id"]: x for x in batch}
        self.assertEqual(by_id[1]["result"], hex(4242))
        self.assertEqual(by_id[2]["result"], "4242")
        self.assertEqual(by_id[3]["result"], "0x1")
        self.assertIs(by_id[4]["result"], False)
        self.assertEqual(by_id[5]["result"], "Geth/v1.13.15-stable-c5ba367e/linux-amd64/go1.21.6")
        self.assertEqual(by_id[6]["error"], {"code": -32601, "message": "the method admin_nodeInfo does not exist/is not available"})
        self.assertEqual(by_id[7]["error"]["code"], -32601)
        blk = by_id[8]["result"]
        for k in ("number", "hash", "parentHash", "timestamp", "miner"):
            self.assertIn(k, blk)
        self.assertLess(abs(int(blk["timestamp"], 16) - time.time()), 5)
        # IPC exposes every API
        self.assertEqual(self.ipc_rpc(ipc, self.call("clique_getSigners"))["result"], [SIGNER])
        info = self.ipc_rpc(ipc, self.call("admin_nodeInfo"))["result"]
        self.assertTrue(info["enode"].startswith("enode://") and info["enode"].endswith("@127.0.0.1:30303"))
        self.assertEqual(self.ipc_rpc(ipc, self.call("eth_getBlockByNumber", "latest"))["error"],
                         {"code": -32602, "message": "missing value for required argument 1"})
        # vhosts: IPs always pass, names must be listed
        with self.assertRaises(urllib.error.HTTPError) as cm:
            self.http_rpc(port, self.call("eth_blockNumber"), {"Host": "evil.example:%d" % port})
        self.assertEqual(cm.exception.code, 403)
        self.assertEqual(cm.exception.read(), b"invalid host specified\n")
        _, hdrs = self.http_rpc(port, self.call("eth_blockNumber"), {"Host": "node.internal"})
        # CORS
        _, hdrs = self.http_rpc(port, self.call("eth_blockNumber"), {"Origin": "https://app.example"})
        self.assertEqual(hdrs.get("Access-Control-Allow-Origin"), "https://app.example")
        _, hdrs = self.http_rpc(port, self.call("eth_blockNumber"), {"Origin": "https://other.example"})
        self.assertNotIn("Access-Control-Allow-Origin", hdrs)
        pre = urllib.request.Request("http://127.0.0.1:%d/" % port, method="OPTIONS",
                                     headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": "content-type"})
        with urllib.request.urlopen(pre, timeout=5) as resp:
            self.assertEqual(resp.status, 200)
            self.assertEqual(resp.headers["Access-Control-Allow-Origin"], "https://app.example")
        # health-check GET and content-type enforcement
        with urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=5) as resp:
            self.assertEqual((resp.status, resp.read()), (200, b""))
        bad = urllib.request.Request("http://127.0.0.1:%d/" % port, data=b"{}", headers={"Content-Type": "text/plain"})
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(bad, timeout=5)
        self.assertEqual(cm.exception.code, 415)
        p.send_signal(signal.SIGTERM)
        rc, _, err = self.finish(p)
        self.assertEqual(rc, 0)
        self.assertIn("HTTP server started                      endpoint=127.0.0.1:%d auth=false prefix= cors=https://app.example vhosts=localhost,node.internal" % port, err)
        self.assertIn("Imported new chain segment", err)

    def test_sealer_seals_then_sigterm_exits_0_quickly_and_releases_the_lock(self):
        datadir = self.init_datadir()
        pw = self.add_signer_key(datadir)
        p = self.start_node(datadir, "--networkid", "4242", "--mine", "--miner.etherbase", SIGNER,
                            "--unlock", SIGNER, "--password", pw)
        ipc = os.path.join(datadir, "geth.ipc")
        self.wait_for(lambda: int(self.ipc_rpc(ipc, self.call("eth_blockNumber"))["result"], 16) >= 2, what="sealing")
        self.assertIs(self.ipc_rpc(ipc, self.call("eth_mining"))["result"], True)
        t0 = time.time()
        p.send_signal(signal.SIGTERM)
        rc, _, err = self.finish(p)
        self.assertEqual(rc, 0)
        self.assertLess(time.time() - t0, 1.0)
        self.assertIn("Unlocked account                         address=0x71562b71999873DB5b286dF957af199Ec94617F7", err)
        self.assertIn("Successfully sealed new block", err)
        self.assertIn("Commit new sealing work", err)
        self.assertIn("Got interrupt, shutting down...", err)
        self.assertFalse(os.path.exists(ipc))
        import fcntl

        with open(os.path.join(datadir, "geth", "LOCK")) as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held

    def test_second_node_on_the_same_datadir_fails(self):
        datadir = self.init_datadir()
        self.start_node(datadir, "--networkid", "4242")
        r = self.run_cmd(GETH, "--datadir", datadir, "--networkid", "4242", "--authrpc.port", str(free_port()))
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.splitlines()[-1], "Fatal: Failed to create the protocol stack: datadir already used by another process")
        r = self.run_cmd(GETH, "init", "--datadir", datadir, self.path("d-genesis.json"))
        self.assertIn("datadir already used by another process", r.stderr)

    def test_account_and_mining_fatals(self):
        datadir = self.init_datadir()
        pw = self.add_signer_key(datadir)
        auth = ["--authrpc.port", str(free_port())]
        r = self.run_cmd(GETH, "--datadir", datadir, *auth, "--http", "--http.port", str(free_port()), "--unlock", SIGNER, "--password", pw)
        self.assertEqual((r.returncode, r.stderr.splitlines()[-1]), (1, "Fatal: Account unlock with HTTP access is forbidden!"))
        other = "0x" + "ab" * 20
        r = self.run_cmd(GETH, "--datadir", datadir, *auth, "--unlock", other, "--password", pw)
        self.assertEqual(r.stderr.splitlines()[-1], "Fatal: Failed to unlock account %s (no key for given address or file)" % other)
        r = self.run_cmd(GETH, "--datadir", datadir, *auth, "--unlock", SIGNER, "--password", self.path("nope"))
        self.assertEqual(r.stderr.splitlines()[-1], "Fatal: Failed to read password file: open %s: no such file or directory" % self.path("nope"))
        wrong = self.write("wrong.txt", "nope\n")
        r = self.run_cmd(GETH, "--datadir", datadir, *auth, "--unlock", SIGNER, "--password", wrong)
        self.assertIn("(could not decrypt key with given password)", r.stderr)
        r = self.run_cmd(GETH, "--datadir", datadir, *auth, "--mine")
        self.assertEqual(r.stderr.splitlines()[-1], "Fatal: Failed to start mining: etherbase missing: etherbase must be explicitly specified")
        r = self.run_cmd(GETH, "--datadir", datadir, *auth, "--mine", "--miner.etherbase", other)
        self.assertEqual(r.stderr.splitlines()[-1], "Fatal: Failed to start mining: signer missing: unknown account")
        r = self.run_cmd(GETH, "--datadir", datadir, *auth, "--bootnodes", "enode://abcd@10.0.0.1:30301")
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr.splitlines()[-1], r"^CRIT \[.*\] Bootstrap URL invalid +enode=enode://abcd@10.0.0.1:30301 "
                                                    r"err=\"invalid public key \(wrong length, want 128 hex chars\)\"$")

    def test_crash_after_and_exit_code(self):
        datadir = self.init_datadir()
        t0 = time.time()
        r = self.run_cmd(GETH, "--datadir", datadir, "--authrpc.port", str(free_port()),
                         env={"STANDIN_GETH_CRASH_AFTER": "0.5", "STANDIN_GETH_EXIT_CODE": "3"})
        self.assertEqual(r.returncode, 3)
        self.assertLess(time.time() - t0, 3)
        self.assertIn("Fatal: standin: injected crash after 0.5s", r.stderr)

    def test_faults_file_ignore_sigterm_peers_and_stall(self):
        datadir = self.init_datadir()
        p = self.start_node(datadir, "--networkid", "4242")
        ipc = os.path.join(datadir, "geth.ipc")
        self.write(os.path.join("d", "standin-faults.json"), {"ignore_sigterm": True, "peers": 0, "stall_head_after": 0})
        self.wait_for(lambda: self.ipc_rpc(ipc, self.call("net_peerCount"))["result"] == "0x0", what="faults file")
        head = self.ipc_rpc(ipc, self.call("eth_blockNumber"))["result"]
        p.send_signal(signal.SIGTERM)
        time.sleep(0.8)
        self.assertIsNone(p.poll(), "ignore_sigterm: must survive SIGTERM")
        self.assertEqual(self.ipc_rpc(ipc, self.call("eth_blockNumber"))["result"], head)
        p.kill()
        self.assertEqual(p.wait(), -signal.SIGKILL)

    def test_json_logs_config_toml_ethstats_and_record(self):
        es_port = free_port()  # nothing listens there: geth's dial error
        datadir = self.init_datadir()
        cfg = self.write("geth.toml", '[Eth]\nNetworkId = 777\n\n[Ethstats]\nURL = "sealer-1:s3cret@127.0.0.1:%d"\n' % es_port)
        record = self.path("record.jsonl")
        logfile = self.path("geth.log")
        p = self.start_node(datadir, "--config", cfg, "--log.format", "json", "--log.file", logfile,
                            env={"STANDIN_GETH_RECORD": record, "GETH_NOT_A_FLAG": "1"})
        ipc = os.path.join(datadir, "geth.ipc")
        self.assertEqual(self.ipc_rpc(ipc, self.call("net_version"))["result"], "777")
        unreachable = {"lvl": "warn", "msg": "Stats server unreachable",
                       "err": "dial tcp 127.0.0.1:%d: connect: connection refused" % es_port}

        def warned():
            with open(logfile) as f:
                return unreachable in [{k: x.get(k) for k in unreachable} for x in map(json.loads, [ln for ln in f if ln.endswith("\n")])]

        self.wait_for(warned, what="the ethstats dial error")
        p.send_signal(signal.SIGTERM)
        rc, _, err = self.finish(p)
        self.assertEqual(rc, 0)
        lines = [json.loads(x) for x in err.splitlines()]
        self.assertEqual(list(lines[0])[:3], ["t", "lvl", "msg"])
        self.assertIn({"lvl": "info", "msg": "Stats daemon started"}, [{"lvl": x["lvl"], "msg": x["msg"]} for x in lines])
        self.assertIn("Starting Geth on Ethereum mainnet...", [x["msg"] for x in lines])  # no --networkid flag
        with open(record) as f:
            rec = json.loads(f.readline())
        self.assertEqual(rec["argv"][1:3], ["--datadir", datadir])
        self.assertIn("STANDIN_GETH_RECORD", rec["env_keys"])
        self.assertNotIn("s3cret", " ".join(rec["argv"]))
        # unknown TOML fields are fatal, with geth's message
        bad = self.write("bad.toml", '[Ethstats]\nurl = "x:y@h:1"\n')
        r = self.run_cmd(GETH, "--datadir", datadir, "--config", bad)
        self.assertEqual(r.stderr.splitlines()[-1], "Fatal: %s, line 2: field 'url' is not defined in main.ethstatsConfig" % bad)


def _http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


REPO = os.path.dirname(os.path.dirname(HERE))
_PREPARED = []


def prepare_real_ethstats():
    """tests/ethstats/prepare, once per run: (returncode, app dir, stderr)."""
    if not _PREPARED:
        r = subprocess.run([os.path.join(REPO, "tests", "ethstats", "prepare")], capture_output=True, text=True,
                           cwd=REPO, timeout=1800)
        _PREPARED.append((r.returncode, r.stdout.strip(), r.stderr.strip()))
    return _PREPARED[0]


def note(line):
    """A line tests/run prints after all tests (a skip, an artifact): unittest keeps skip reasons quiet."""
    path = os.environ.get("NODE_AGENT_TEST_NOTES")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write("standins: " + line + "\n")


class RealEthstatsTest(GethHelpers):
    """The geth stand-in against the real goerli/ethstats-server (node app.js), one server per test:
    the server takes at most ~5 new /api connections per 30 s (app.js C_LIMIT)."""

    def setUp(self):
        super().setUp()
        rc, app, err = prepare_real_ethstats()
        if rc == 3:
            why = ("REAL ETHSTATS SERVER NOT TESTED: the ethstats-server fixture archive is missing "
                   "(tests/ethstats/prepare exit 3: %s)" % err)
            note(why)
            self.skipTest(why)
        self.assertEqual(rc, 0, "tests/ethstats/prepare failed: " + err)
        self.app = app

    def start_server(self, secrets=("s3cret",)):
        """A temporary copy of the prepared app (app.js copied: it requires ./ws_secret.json beside
        its real path), listening on a free port; returns (process, port, output file)."""
        appdir = self.path("ethstats-app")
        os.makedirs(appdir)
        shutil.copy(os.path.join(self.app, "app.js"), appdir)
        for name in ("lib", "node_modules", "dist", "package.json", "bin"):
            os.symlink(os.path.join(self.app, name), os.path.join(appdir, name))
        with open(os.path.join(appdir, "ws_secret.json"), "w") as f:
            json.dump(list(secrets), f)
        port = free_port()
        out = self.path("ethstats.out")
        with open(out, "w") as f:
            env = {k: v for k, v in os.environ.items() if k not in ("WS_SECRET", "NODE_ENV")}
            env["PORT"] = str(port)
            p = subprocess.Popen([shutil.which("node") or "node", "app.js"], cwd=appdir, env=env, stdout=f,
                                 stderr=subprocess.STDOUT)
        self.procs.append(p)

        def listening():
            if p.poll() is not None:
                self.fail("ethstats server exited: rc=%s\n%s" % (p.returncode, self.read(out)))
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        self.wait_for(listening, timeout=20, what="ethstats server to listen")
        return p, port, out

    @staticmethod
    def read(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def test_node_reports_to_the_real_server_and_leaves_on_stop(self):
        _srv, port, out = self.start_server()
        datadir = self.init_datadir(g=genesis(period=1))
        log = self.path("geth.log")
        p = self.start_node(datadir, "--networkid", "4242", "--log.file", log,
                            "--ethstats", "node-a:s3cret@127.0.0.1:%d" % port)

        def reported():
            nodes = {n["id"]: n for n in S.ethstats_dashboard("127.0.0.1", port)}
            n = nodes.get("node-a")
            return n if n and n["stats"]["active"] and n["stats"]["block"]["number"] > 0 else None

        node = self.wait_for(reported, timeout=10, what="node-a active with a block on the dashboard")
        self.assertEqual(node["info"]["name"], "node-a")
        self.assertEqual(node["info"]["net"], "4242")
        self.assertEqual(node["info"]["protocol"], "eth/68, snap/1")
        self.assertTrue(node["info"]["node"].startswith("Geth/v1.13.15-stable-c5ba367e/"))
        self.assertEqual(node["info"]["canUpdateHistory"], True)
        blk = node["stats"]["block"]
        self.assertEqual(blk["miner"], SIGNER)  # clique's Author: the sealer, not the zero coinbase
        self.assertRegex(blk["hash"], r"^0x[0-9a-f]{64}$")
        self.assertEqual(node["stats"]["peers"], 1)
        r = self.ipc_rpc(os.path.join(datadir, "geth.ipc"), self.call("eth_getBlockByNumber", hex(blk["number"]), False))
        self.assertEqual(r["result"]["hash"], blk["hash"])
        self.wait_for(lambda: "Got history from: node-a" in self.read(out), what="the history answer")
        self.assertIn("Connected: 1 node-a", self.read(out))
        self.assertNotIn("Stats login failed", self.read(log))
        p.send_signal(signal.SIGTERM)
        rc, _, err = self.finish(p)
        self.assertEqual(rc, 0)
        self.assertIn("Stats daemon stopped", err)
        self.wait_for(lambda: "[API] [CON] Connection with:" in self.read(out), what="the server to see the node leave")
        nodes = S.ethstats_dashboard("127.0.0.1", port)
        self.assertEqual([(n["id"], n["stats"]["active"]) for n in nodes], [("node-a", False)])

    def test_wrong_secret_is_refused_like_geth(self):
        _srv, port, out = self.start_server()
        datadir = self.init_datadir()
        log = self.path("geth.log")
        p = self.start_node(datadir, "--networkid", "4242", "--log.file", log,
                            "--ethstats", "node-b:wrong@127.0.0.1:%d" % port)
        self.wait_for(lambda: re.search(r"(?m)^WARN .*\] Stats login failed +err=unauthorized$", self.read(log)),
                      what="Stats login failed")
        self.wait_for(lambda: "Closed - wrong auth" in self.read(out), what="the server's refusal")
        self.assertEqual(S.ethstats_dashboard("127.0.0.1", port), [])
        p.send_signal(signal.SIGTERM)
        self.assertEqual(self.finish(p)[0], 0)


# --- chain backups: block hashes, admin_exportChain, geth export / geth import

EMPTY_UNCLES = "1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347"
EMPTY_ROOT = "56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421"


def rlp_decode_all(data):
    """A small independent RLP decoder: the list of top-level items (bytes or nested lists) and,
    for each, its raw first-item (header) bytes. Raises ValueError on truncation."""

    def item(pos):
        b = data[pos]
        if b < 0x80:
            return data[pos:pos + 1], pos + 1
        if b < 0xB8:
            n, s = b - 0x80, pos + 1
        elif b < 0xC0:
            ln = b - 0xB7
            n, s = int.from_bytes(data[pos + 1:pos + 1 + ln], "big"), pos + 1 + ln
        elif b < 0xF8:
            n, s = b - 0xC0, pos + 1
        else:
            ln = b - 0xF7
            n, s = int.from_bytes(data[pos + 1:pos + 1 + ln], "big"), pos + 1 + ln
        if s + n > len(data):
            raise ValueError("truncated")
        if b < 0xC0:
            return data[s:s + n], s + n
        out, p = [], s
        while p < s + n:
            x, p = item(p)
            out.append(x)
        return out, s + n

    blocks, pos = [], 0
    while pos < len(data):
        start = pos
        blk, pos = item(pos)
        # the header's raw bytes: the first item inside the block list
        hb = data[start]
        hpos = start + 1 + (hb - 0xF7 if hb >= 0xF8 else 0)
        _h, hend = item(hpos)
        blocks.append((blk, data[hpos:hend]))
    return blocks


def decode_export(path):
    """[(number, hash hex, parentHash hex, header fields, body)] of an exported file (gzip by name)."""
    import gzip

    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    out = []
    for blk, raw in rlp_decode_all(data):
        header = blk[0]
        out.append((int.from_bytes(header[8], "big"), "0x" + S.keccak256(raw).hex(), "0x" + header[0].hex(), header, blk[1:]))
    return out


class GethBackupTest(GethHelpers):
    def chain_with_blocks(self, name="src", at_least=12):
        """An initialised datadir whose stand-in chain has >= at_least blocks, node stopped."""
        datadir = self.init_datadir(name)
        p = self.start_node(datadir, "--networkid", "4242", period="0.02")
        chain = os.path.join(datadir, "geth", "chaindata", "STANDIN-CHAIN.json")

        def head():
            try:
                with open(chain) as f:
                    return json.load(f)["head"]
            except (OSError, ValueError, KeyError):
                return 0

        self.wait_for(lambda: head() >= at_least, timeout=10, what="%d blocks" % at_least)
        p.send_signal(signal.SIGTERM)
        rc, _, _ = self.finish(p)
        self.assertEqual(rc, 0)
        return datadir, head()

    def head_of(self, datadir):
        with open(os.path.join(datadir, "geth", "chaindata", "STANDIN-CHAIN.json")) as f:
            return json.load(f)["head"]

    def test_block_hashes_are_keccak_of_the_legacy_header_and_never_change(self):
        g = genesis(period=5, timestamp="0x65000000")
        datadir = self.init_datadir(g=g)
        p = self.start_node(datadir, "--networkid", "4242", period="0.05")
        ipc = os.path.join(datadir, "geth.ipc")
        self.wait_for(lambda: int(self.ipc_rpc(ipc, self.call("eth_blockNumber"))["result"], 16) >= 4, what="4 blocks")
        blocks = [self.ipc_rpc(ipc, self.call("eth_getBlockByNumber", hex(n), False))["result"] for n in range(5)]
        for n in range(1, 5):
            b = blocks[n]
            self.assertEqual(b["parentHash"], blocks[n - 1]["hash"])
            self.assertEqual((b["sha3Uncles"], b["transactionsRoot"], b["receiptsRoot"]),
                             ("0x" + EMPTY_UNCLES, "0x" + EMPTY_ROOT, "0x" + EMPTY_ROOT))
            self.assertEqual(len(bytes.fromhex(b["extraData"][2:])), 97)
            header = [bytes.fromhex(b["parentHash"][2:]), bytes.fromhex(EMPTY_UNCLES), bytes(20),
                      bytes.fromhex(b["stateRoot"][2:]), bytes.fromhex(EMPTY_ROOT), bytes.fromhex(EMPTY_ROOT), bytes(256),
                      2, n, 0x1c9c380, 0, 0x65000000 + 5 * n, bytes.fromhex(b["extraData"][2:]), bytes(32), bytes(8)]
            self.assertEqual("0x" + S.keccak256(S.rlp_encode(header)).hex(), b["hash"], "block %d" % n)
            self.assertEqual(int(b["size"], 16), len(S.rlp_encode([header, [], []])))
            self.assertEqual(self.ipc_rpc(ipc, self.call("eth_getBlockByHash", b["hash"], False))["result"]["number"], hex(n))
        self.assertEqual(blocks[1]["parentHash"], blocks[0]["hash"])  # the genesis hash, as before
        p.send_signal(signal.SIGTERM)
        self.assertEqual(self.finish(p)[0], 0)
        head = self.head_of(datadir)
        cache = os.path.join(datadir, "geth", "chaindata", "STANDIN-HASHES.bin")
        self.assertGreaterEqual(os.path.getsize(cache), 32 + 32 * head)
        # later, and from a corrupted cache: the same hashes (the timestamp in the header is genesis + n * period)
        time.sleep(1.1)
        with open(cache, "r+b") as f:
            f.seek(-32, os.SEEK_END)
            f.write(b"\xff" * 32)
        p = self.start_node(datadir, "--networkid", "4242", "--verbosity", "2", period="5")
        again = [self.ipc_rpc(ipc, self.call("eth_getBlockByNumber", hex(n), False))["result"]["hash"] for n in range(5)]
        self.assertEqual(again, [b["hash"] for b in blocks])

    def test_admin_export_chain_ranges_refusals_and_gzip(self):
        datadir = self.init_datadir()
        p = self.start_node(datadir, "--networkid", "4242", period="0.05")
        ipc = os.path.join(datadir, "geth.ipc")
        self.wait_for(lambda: int(self.ipc_rpc(ipc, self.call("eth_blockNumber"))["result"], 16) >= 8, what="8 blocks")

        def export(*params):
            return self.ipc_rpc(ipc, self.call("admin_exportChain", *params))

        def hash_of(n):
            return self.ipc_rpc(ipc, self.call("eth_getBlockByNumber", hex(n), False))["result"]["hash"]

        f1 = self.path("seg-1-5.rlp")
        self.assertEqual(export(f1, 1, 5), {"jsonrpc": "2.0", "id": 1, "result": True})
        blocks = decode_export(f1)
        self.assertEqual([b[0] for b in blocks], [1, 2, 3, 4, 5])
        self.assertEqual([b[1] for b in blocks], [hash_of(n) for n in range(1, 6)])
        self.assertEqual(blocks[0][2], hash_of(0))
        for (n, h, parent, header, body) in blocks:
            self.assertEqual(len(header), 15)
            self.assertEqual(body, [[], []])
        umask = os.umask(0)
        os.umask(umask)
        self.assertEqual(os.stat(f1).st_mode & 0o777, 0o644 & ~umask)
        # refusals, with geth's texts
        self.assertEqual(export(f1, 1, 5)["error"], {"code": -32000, "message": "location would overwrite an existing file"})
        self.assertEqual(export(self.path("x.rlp"), None, 3)["error"]["message"], "last cannot be specified without first")
        self.assertFalse(os.path.exists(self.path("x.rlp")))
        self.assertEqual(export(self.path("y.rlp"), 5, 2)["error"]["message"], "export failed: first (5) is greater than last (2)")
        self.assertEqual(os.path.getsize(self.path("y.rlp")), 0)  # geth creates the file first
        r = export(self.path("z.rlp"), 1, 100000)["error"]["message"]
        self.assertRegex(r, r"^export failed on #(\d+): not found$")
        missing = int(re.search(r"#(\d+)", r).group(1))
        self.assertEqual([b[0] for b in decode_export(self.path("z.rlp"))], list(range(1, missing)))  # left behind, as geth
        self.assertEqual(export(self.path("w.rlp"), "0x1", 2)["error"],
                         {"code": -32602, "message": "invalid argument 1: json: cannot unmarshal string into Go value of type uint64"})
        self.assertEqual(export(self.path("w.rlp"), -1, 2)["error"]["message"],
                         "invalid argument 1: json: cannot unmarshal number -1 into Go value of type uint64")
        self.assertEqual(export()["error"]["message"], "missing value for required argument 0")
        self.assertIn("no such file or directory", export(self.path("no", "dir.rlp"), 1, 2)["error"]["message"])
        # first without last: up to the head; gzip by name; no range: from the genesis
        head = int(self.ipc_rpc(ipc, self.call("eth_blockNumber"))["result"], 16)
        self.assertIs(export(self.path("tail.rlp.gz"), 3)["result"], True)
        with open(self.path("tail.rlp.gz"), "rb") as f:
            self.assertEqual(f.read(2), b"\x1f\x8b")
        nums = [b[0] for b in decode_export(self.path("tail.rlp.gz"))]
        self.assertEqual(nums, list(range(3, nums[-1] + 1)))
        self.assertGreaterEqual(nums[-1], head)
        self.assertIs(export(self.path("all.rlp"))["result"], True)
        self.assertEqual(decode_export(self.path("all.rlp"))[0][0], 0)
        # admin is an IPC-only module by default
        # export_delay: a kill -9 mid-export leaves a partial file behind
        with open(os.path.join(datadir, "standin-faults.json"), "w") as f:
            json.dump({"export_delay": 0.3}, f)
        time.sleep(0.7)
        import threading

        t = threading.Thread(target=lambda: self.assertRaises(Exception, export, self.path("slow.rlp"), 1, 8), daemon=True)
        t.start()
        self.wait_for(lambda: os.path.exists(self.path("slow.rlp")) and os.path.getsize(self.path("slow.rlp")) > 0,
                      what="export to start")
        p.kill()
        p.wait()
        t.join(5)
        partial = decode_export(self.path("slow.rlp"))
        self.assertTrue(1 <= len(partial) < 8, len(partial))
        self.assertIn("Exporting batch of blocks                count=5", p.stderr.read())

    def test_geth_export_command(self):
        datadir, head = self.chain_with_blocks()
        out = self.path("all.rlp")
        r = self.run_cmd(GETH, "export", "--datadir", datadir, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"^Export done in \S+\n$")
        self.assertIn("Exporting blockchain                     file=" + out, r.stderr)
        self.assertIn("Exported blockchain                      file=" + out, r.stderr)
        self.assertEqual([b[0] for b in decode_export(out)], list(range(0, head + 1)))
        umask = os.umask(0)
        os.umask(umask)
        self.assertEqual(os.stat(out).st_mode & 0o777, 0o777 & ~umask)  # os.ModePerm
        # a range appends (twice -> twice the blocks); gzip by name
        seg = self.path("seg.rlp.gz")
        for _ in range(2):
            r = self.run_cmd(GETH, "--datadir", datadir, "export", seg, "2", "4")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("Exported blockchain to                   file=" + seg, r.stderr)
        self.assertEqual([b[0] for b in decode_export(seg)], [2, 3, 4, 2, 3, 4])
        # argument errors
        for args, text in ((["x.rlp", "a", "3"], "Export error in parsing parameters: block number not an integer"),
                           (["x.rlp", "-1", "3"], "Export error: block number must be greater than 0"),
                           (["x.rlp", "1", str(head + 5)], "Export error: block number %d larger than head block %d" % (head + 5, head)),
                           (["x.rlp", "4", "2"], "Export error: export failed: first (4) is greater than last (2)"),
                           ([], "This command requires an argument.")):
            r = self.run_cmd(GETH, "export", "--datadir", datadir, *args)
            self.assertEqual(r.returncode, 1, args)
            self.assertIn("Fatal: " + text + "\n", r.stderr)
        r = self.run_cmd(GETH, "export", "--datadir", datadir, self.path("no", "x.rlp"))
        self.assertIn("Fatal: Export error: open %s: no such file or directory\n\n" % self.path("no", "x.rlp"), r.stdout)
        r = self.run_cmd(GETH, "export", "--bogus", "x.rlp")
        self.assertEqual((r.returncode, r.stderr), (1, "flag provided but not defined: -bogus\n"))
        self.assertIn("geth export [command options] <filename> [<blockNumFirst> <blockNumLast>]", r.stdout)
        # the datadir lock
        self.start_node(datadir, "--networkid", "4242")
        r = self.run_cmd(GETH, "export", "--datadir", datadir, self.path("locked.rlp"))
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.splitlines()[-1], "Fatal: Failed to create the protocol stack: datadir already used by another process")

    def test_import_reproduces_the_head_and_refuses_gaps_other_genesis_and_a_running_node(self):
        src, head = self.chain_with_blocks()
        seg1, seg2 = self.path("seg1.rlp"), self.path("seg2.rlp.gz")
        for f, a, b in ((seg1, 1, 5), (seg2, 6, head)):
            self.assertEqual(self.run_cmd(GETH, "export", "--datadir", src, f, str(a), str(b)).returncode, 0)
        want = decode_export(seg2)[-1][1]
        # restore into a fresh, initialised datadir
        dst = self.init_datadir("dst")
        r = self.run_cmd(GETH, "import", "--datadir", dst, seg1, seg2)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Importing blockchain                     file=" + seg1, r.stderr)
        self.assertRegex(r.stderr, r"Imported new chain segment +number=5 hash=\w+\.\.\w+ blocks=5 txs=0 mgas=0\.000 ")
        self.assertRegex(r.stderr, r"Imported new chain segment +number=%d .*blocks=%d " % (head, head - 5))
        self.assertRegex(r.stdout, r"^Import done in \S+\.\n\n")
        self.assertIn("Compacting entire database...", r.stdout)
        self.assertEqual(self.head_of(dst), head)
        # importing again skips; the block 0 of a full export is ignored
        full = self.path("full.rlp")
        self.assertEqual(self.run_cmd(GETH, "export", "--datadir", src, full).returncode, 0)
        r = self.run_cmd(GETH, "import", "--datadir", dst, full)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Skipping batch as all blocks present     batch=0", r.stderr)
        # the restored node reports the same head hash and continues from head + 1
        p = self.start_node(dst, "--networkid", "4242", period="0.05")
        ipc = os.path.join(dst, "geth.ipc")
        self.assertEqual(self.ipc_rpc(ipc, self.call("eth_getBlockByNumber", hex(head), False))["result"]["hash"], want)
        self.wait_for(lambda: int(self.ipc_rpc(ipc, self.call("eth_blockNumber"))["result"], 16) >= head + 2, what="new blocks")
        # ... and holds the lock: an import now is refused like geth
        r = self.run_cmd(GETH, "import", "--datadir", dst, seg1)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.splitlines()[-1], "Fatal: Failed to create the protocol stack: datadir already used by another process")
        p.send_signal(signal.SIGTERM)
        rc, _, err = self.finish(p)
        self.assertEqual(rc, 0)
        imported = [int(n) for n in re.findall(r"Imported new chain segment +number=(\d+)", err)]
        self.assertEqual(imported[:2], [head + 1, head + 2])
        # a gap: the second segment alone
        gap = self.init_datadir("gap")
        r = self.run_cmd(GETH, "import", "--datadir", gap, seg2)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.splitlines()[-1], "invalid block 6: unknown ancestor")
        self.assertIn('Import error                             err="invalid block 6: unknown ancestor"', r.stderr)
        self.assertIn("########## BAD BLOCK #########\nBlock: 6 (", r.stderr)
        self.assertIn("Import done in", r.stdout)
        self.assertEqual(self.head_of(gap) if os.path.exists(os.path.join(gap, "geth", "chaindata", "STANDIN-CHAIN.json")) else 0, 0)
        # several files: a failure does not stop the next one; the error still fails the command
        r = self.run_cmd(GETH, "import", "--datadir", gap, seg2, seg1)
        self.assertEqual(r.returncode, 1)
        self.assertIn('Import error                             file=%s err="invalid block 6: unknown ancestor"' % seg2, r.stderr)
        self.assertEqual(self.head_of(gap), 5)
        # another genesis, and a datadir never initialised (mainnet)
        other = self.init_datadir("other", g=genesis(chain_id=4343))
        r = self.run_cmd(GETH, "import", "--datadir", other, seg1)
        self.assertEqual((r.returncode, r.stderr.splitlines()[-1]), (1, "invalid block 1: unknown ancestor"))
        fresh = self.path("fresh")
        r = self.run_cmd(GETH, "import", "--datadir", fresh, seg1)
        self.assertEqual((r.returncode, r.stderr.splitlines()[-1]), (1, "invalid block 1: unknown ancestor"))
        self.assertIn("Writing default main-net genesis block", r.stderr)
        # a truncated file fails while reading its batch: nothing of it is imported
        with open(seg1, "rb") as f:
            data = f.read()
        cut = self.path("cut.rlp")
        with open(cut, "wb") as f:
            f.write(data[:-10])
        trunc = self.init_datadir("trunc")
        r = self.run_cmd(GETH, "import", "--datadir", trunc, cut)
        self.assertEqual((r.returncode, r.stderr.splitlines()[-1]), (1, "at block 4: unexpected EOF"))
        r = self.run_cmd(GETH, "import", "--datadir", trunc)
        self.assertEqual(r.returncode, 1)
        self.assertIn("Fatal: This command requires an argument.", r.stderr)
        r = self.run_cmd(GETH, "import", "--datadir", trunc, self.path("nope.rlp"))
        self.assertEqual(r.stderr.splitlines()[-1], "open %s: no such file or directory" % self.path("nope.rlp"))

    def test_hashing_speed(self):
        """20,000 hashes: measured, not asserted tightly (pure-Python keccak; the datadir cache makes it once)."""
        hdr = S.rlp_encode([bytes(32), bytes(32), bytes(20), bytes(32), bytes(32), bytes(32), bytes(256), 2, 20000,
                            0x1c9c380, 0, 100000, bytes(97), bytes(32), bytes(8)])
        t = time.time()
        for _ in range(500):
            S.keccak256(hdr)
        per = (time.time() - t) / 500
        note("keccak256 of a %d-byte header: %.2f ms -> 20,000 hashes in %.1f s" % (len(hdr), per * 1000, per * 20000))
        self.assertLess(per, 0.01)


class WsClientTest(unittest.TestCase):
    """WsClient against a one-connection server of our own: ping/pong, fragments, 16/64-bit lengths, close."""

    def serve(self, script):
        import base64
        import hashlib
        import threading

        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        self.addCleanup(lsock.close)
        seen = {}

        def run():
            conn, _ = lsock.accept()
            with conn:
                req = b""
                while b"\r\n\r\n" not in req:
                    req += conn.recv(4096)
                seen["request"] = req.decode()
                key = re.search(r"(?im)^sec-websocket-key: *(\S+)", seen["request"]).group(1)
                accept = base64.b64encode(hashlib.sha1((key + S.WS_GUID).encode()).digest()).decode()
                script(conn, accept, seen)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.addCleanup(t.join, 5)
        seen["thread"] = t
        return lsock.getsockname()[1], seen

    @staticmethod
    def frame(opcode, payload, fin=True):
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([n])
        elif n < 65536:
            head += bytes([126]) + n.to_bytes(2, "big")
        else:
            head += bytes([127]) + n.to_bytes(8, "big")
        return head + payload

    @staticmethod
    def read_frame(conn):
        def exact(n):
            b = b""
            while len(b) < n:
                b += conn.recv(n - len(b))
            return b

        b0, b1 = exact(2)
        n = b1 & 0x7F
        n = int.from_bytes(exact(2 if n == 126 else 8), "big") if n >= 126 else n
        mask = exact(4) if b1 & 0x80 else None
        data = exact(n)
        return b0 & 0x0F, bool(b1 & 0x80), bytes(c ^ mask[i % 4] for i, c in enumerate(data)) if mask else data

    def test_frames_and_close(self):
        big = json.dumps({"x": "y" * 70000}).encode()

        def script(conn, accept, seen):
            conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
            conn.sendall(self.frame(0x9, b"hb") + self.frame(0x1, b'{"emit":["a",', fin=False)
                         + self.frame(0x0, b'"b"]}') + self.frame(0x1, json.dumps("z" * 300).encode())
                         + self.frame(0x1, big))
            seen["pong"] = self.read_frame(conn)
            seen["sent"] = self.read_frame(conn)
            conn.sendall(self.frame(0x8, (1000).to_bytes(2, "big") + b"bye"))
            seen["close"] = self.read_frame(conn)

        port, seen = self.serve(script)
        ws = S.WsClient().connect("127.0.0.1", port, "/api", 5)
        self.assertIn("GET /api HTTP/1.1\r\n", seen["request"])
        self.assertIn("Origin: http://localhost\r\n", seen["request"])
        self.assertEqual(ws.recv_json(5), {"emit": ["a", "b"]})
        self.assertEqual(ws.recv_json(5), "z" * 300)
        self.assertEqual(ws.recv_json(5), json.loads(big))
        S.primus_emit(ws, "hello", {"id": "n"})
        with self.assertRaises(S.WsClosed) as cm:
            ws.recv_json(5)
        self.assertEqual((cm.exception.code, str(cm.exception)), (1000, "websocket: close 1000 (normal): bye"))
        ws.close()
        seen["thread"].join(5)
        self.assertEqual(seen["pong"], (0xA, True, b"hb"))
        self.assertEqual(seen["sent"][:2], (0x1, True))  # client frames are masked
        self.assertEqual(json.loads(seen["sent"][2]), {"emit": ["hello", {"id": "n"}]})
        self.assertEqual(seen["close"][0], 0x8)

    def test_bad_handshake_and_timeout(self):
        def script(conn, accept, seen):
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: wrong\r\n\r\n")

        port, _ = self.serve(script)
        with self.assertRaisesRegex(S.WsError, "^websocket: bad handshake$"):
            S.WsClient().connect("127.0.0.1", port, "/", 5)

        def quiet(conn, accept, seen):
            conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Accept: %s\r\n\r\n" % accept).encode() + self.frame(0x1, b'"primus"')[:4])
            self.read_frame(conn)  # the client's close
            seen["done"] = True

        port, seen = self.serve(quiet)
        ws = S.WsClient().connect("127.0.0.1", port, "/", 5)
        with self.assertRaises(TimeoutError):
            ws.recv_json(0.2)
        ws.close()
        with self.assertRaisesRegex(S.WsError, "connect: connection refused$"):
            S.WsClient().connect("127.0.0.1", free_port(), "/", 5)


class CryptoTest(unittest.TestCase):
    def test_keccak_and_secp256k1_vectors(self):
        self.assertEqual(S.keccak256(b"").hex(), "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")
        self.assertEqual(S.keccak256(b"abc").hex(), "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45")
        one = S.pubkey_from_priv((1).to_bytes(32, "big")).hex()
        self.assertEqual(one, "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
                              "483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8")
        two = S.pubkey_from_priv((2).to_bytes(32, "big")).hex()
        self.assertEqual(two, "c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5"
                              "1ae168fea63dc339a3c58419466ceaeef7f632653266d0e1236431a950cfe52a")
        three = S.pubkey_from_priv((3).to_bytes(32, "big")).hex()
        self.assertTrue(three.startswith("f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9"))
        # web3.js docs account and geth's own test key
        pub = S.pubkey_from_priv(bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"))
        self.assertEqual(S.checksum_address(S.address_from_pub(pub)), "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23")
        pub = S.pubkey_from_priv(bytes.fromhex(SIGNER_KEY))
        self.assertEqual(S.checksum_address(S.address_from_pub(pub)), "0x71562b71999873DB5b286dF957af199Ec94617F7")

    def test_rlp_and_keccak_reproduce_the_mainnet_genesis_hash(self):
        # the 15-field legacy header of Ethereum mainnet's block 0 -> its well-known hash
        header = [bytes(32), bytes.fromhex(EMPTY_UNCLES), bytes(20),
                  bytes.fromhex("d7f8974fb5ac78d9ac099b9ad5018bedc2ce0a72dad1827a1709da30580f0544"),
                  bytes.fromhex(EMPTY_ROOT), bytes.fromhex(EMPTY_ROOT), bytes(256), 17179869184, 0, 5000, 0, 0,
                  bytes.fromhex("11bbe8db4e347b4e8c937c1c8370e4b5ed33adb3db69cbdb7a38e1e50b1b82fa"), bytes(32),
                  (0x42).to_bytes(8, "big")]
        self.assertEqual(S.keccak256(S.rlp_encode(header)).hex(),
                         "d4e56740f876aef8c010b86a40d5f56745a118d0906a34e69aec8c0db1cb8fa3")
        self.assertEqual(S.rlp_encode([b"", b"\x01", b"\x80", [], 1024]).hex(), "c880018180c0820400")
        for n in list(range(0, 300)) + [4096]:  # every padding case, against the bytes-at-a-time reference below
            data = bytes((i * 7 + n) & 0xFF for i in range(n))
            self.assertEqual(S.keccak256(data), _keccak_reference(data), n)


def _keccak_reference(data):
    """Keccak-256 written the slow, obvious way (the stand-in's is generated straight-line code)."""
    rc, r = [], 1
    for _ in range(24):
        c = 0
        for j in range(7):
            r = ((r << 1) ^ ((r >> 7) * 0x71)) % 256
            if r & 2:
                c ^= 1 << ((1 << j) - 1)
        rc.append(c)
    rot = lambda v, n: ((v << n) | (v >> (64 - n))) & (2**64 - 1) if n else v  # noqa: E731
    offs = [[0] * 5 for _ in range(5)]
    x, y = 1, 0
    for t in range(24):
        offs[x][y] = ((t + 1) * (t + 2) // 2) % 64
        x, y = y, (2 * x + 3 * y) % 5
    msg = bytearray(data) + b"\x01"
    while len(msg) % 136:
        msg.append(0)
    msg[-1] |= 0x80
    a = [[0] * 5 for _ in range(5)]
    for off in range(0, len(msg), 136):
        for i in range(17):
            a[i % 5][i // 5] ^= int.from_bytes(msg[off + 8 * i:off + 8 * i + 8], "little")
        for rnd in range(24):
            c = [a[x][0] ^ a[x][1] ^ a[x][2] ^ a[x][3] ^ a[x][4] for x in range(5)]
            d = [c[(x - 1) % 5] ^ rot(c[(x + 1) % 5], 1) for x in range(5)]
            a = [[a[x][y] ^ d[x] for y in range(5)] for x in range(5)]
            b = [[0] * 5 for _ in range(5)]
            for x in range(5):
                for y in range(5):
                    b[y][(2 * x + 3 * y) % 5] = rot(a[x][y], offs[x][y])
            a = [[b[x][y] ^ ((~b[(x + 1) % 5][y]) & b[(x + 2) % 5][y]) for y in range(5)] for x in range(5)]
            a[0][0] ^= rc[rnd]
    return b"".join(a[i % 5][i // 5].to_bytes(8, "little") for i in range(4))


class BootnodeTest(Base):
    def test_genkey_and_writeaddress(self):
        key = self.path("boot.key")
        r = self.run_cmd(BOOTNODE, "-genkey", key)
        self.assertEqual((r.returncode, r.stdout), (0, ""))
        with open(key) as f:
            data = f.read()
        self.assertRegex(data, r"^[0-9a-f]{64}$")
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)
        r = self.run_cmd(BOOTNODE, "-nodekey", key, "-writeaddress")
        self.assertEqual(r.stdout, S.pubkey_from_priv(bytes.fromhex(data)).hex() + "\n")
        r = self.run_cmd(BOOTNODE, "--nodekeyhex=" + "00" * 31 + "01", "--writeaddress")
        self.assertEqual(r.stdout.strip()[:64], "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
        r = self.run_cmd(BOOTNODE, "-genkey", self.path("k2"), "-writeaddress")
        self.assertRegex(r.stdout, r"^[0-9a-f]{128}\n$")

    def test_flag_and_key_errors(self):
        r = self.run_cmd(BOOTNODE, "-foo")
        self.assertEqual(r.returncode, 2)
        self.assertTrue(r.stderr.startswith("flag provided but not defined: -foo\nUsage of %s:\n  -addr string\n" % BOOTNODE))
        r = self.run_cmd(BOOTNODE, "-nodekey", "a", "-nodekeyhex", "b")
        self.assertEqual((r.returncode, r.stderr), (1, "Fatal: Options -nodekey and -nodekeyhex are mutually exclusive\n"))
        r = self.run_cmd(BOOTNODE)
        self.assertEqual(r.stderr, "Fatal: Use -nodekey or -nodekeyhex to specify a private key\n")
        r = self.run_cmd(BOOTNODE, "-nodekey", self.path("missing"))
        self.assertEqual(r.stderr, "Fatal: -nodekey: open %s: no such file or directory\n" % self.path("missing"))
        r = self.run_cmd(BOOTNODE, "-nodekey", self.write("short", "abc"))
        self.assertEqual(r.stderr, "Fatal: -nodekey: key file too short, want 64 hex characters\n")
        r = self.run_cmd(BOOTNODE, "-nodekey", self.write("nl3", "11" * 32 + "\n\n\n"))
        self.assertEqual(r.stderr, "Fatal: -nodekey: key file too long, want 64 hex characters\n")
        r = self.run_cmd(BOOTNODE, "-nodekeyhex", "zz")
        self.assertEqual(r.stderr, "Fatal: -nodekeyhex: invalid hex character 'z' in private key\n")
        r = self.run_cmd(BOOTNODE, "-nodekeyhex", "11" * 32, "-nat", "extip")
        self.assertEqual(r.stderr, "Fatal: -nat: missing IP address\n")

    def test_running_prints_the_enode_and_dies_of_sigterm(self):
        key = self.write("k", "11" * 32 + "\n")
        port = free_port(socket.SOCK_DGRAM)
        p = self.spawn(BOOTNODE, "-nodekey", key, "-addr", ":%d" % port, "-nat", "extip:203.0.113.7")
        line = p.stdout.readline().strip()
        pub = S.pubkey_from_priv(bytes.fromhex("11" * 32)).hex()
        self.assertEqual(line, "enode://%s@203.0.113.7:0?discport=%d" % (pub, port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # the UDP port is really bound
            with self.assertRaises(OSError):
                s.bind(("0.0.0.0", port))
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(5), -signal.SIGTERM)
        p = self.spawn(BOOTNODE, "-nodekey", key, "-addr", "127.0.0.1:0",
                       env={"STANDIN_BOOTNODE_SIGTERM_EXIT0": "1", "STANDIN_BOOTNODE_RECORD": self.path("rec")})
        self.assertIn("@127.0.0.1:0?discport=", p.stdout.readline())
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(5), 0)
        with open(self.path("rec")) as f:
            self.assertEqual(json.loads(f.readline())["program"], "bootnode")


class EthstatsTest(Base):
    def start(self, env):
        port = free_port()
        e = {"PORT": str(port), "LISTEN": "127.0.0.1"}
        e.update(env)
        p = self.spawn(ETHSTATS, env=e)
        self.wait_for(lambda: _http_ok("http://127.0.0.1:%d/" % port) or p.poll() is not None, what="ethstats")
        return p, port

    @staticmethod
    def hello(port, secret, node_id="n1"):
        req = urllib.request.Request("http://127.0.0.1:%d/standin/hello" % port,
                                     data=json.dumps({"id": node_id, "secret": secret, "info": {}}).encode())
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def test_serves_and_reads_the_secret_from_env_or_ws_secret_json_only(self):
        p, port = self.start({"WS_SECRET": "a|b"})
        with urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=5) as r:
            self.assertIn(b"Ethereum Network Status", r.read())
        self.assertEqual([self.hello(port, "a"), self.hello(port, "b"), self.hello(port, "c")], [200, 200, 403])
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(5), -signal.SIGTERM)
        _, err = p.communicate()
        self.assertIn("[API] [CON] Closed - wrong auth", err)
        appdir = self.path("app")
        os.makedirs(appdir)
        self.write(os.path.join("app", "ws_secret.json"), ["from-file"])
        secret_file = self.write("secret", "from-secret-file")
        p, port = self.start({"STANDIN_ETHSTATS_APPDIR": appdir, "WS_SECRET_FILE": secret_file})
        self.assertEqual([self.hello(port, "from-file"), self.hello(port, "from-secret-file")], [200, 403])

    def test_the_dashboard_websocket_lists_the_nodes_logged_in_in_production_mode_too(self):
        for env in ({"WS_SECRET": "a"}, {"WS_SECRET": "a", "NODE_ENV": "production"}):
            p, port = self.start(env) if "NODE_ENV" not in env else self.start_quiet(env)
            self.assertEqual(S.ethstats_dashboard("127.0.0.1", port), [])
            self.assertEqual([self.hello(port, "a", "node-1"), self.hello(port, "b", "node-2")], [200, 403])
            nodes = S.ethstats_dashboard("127.0.0.1", port)
            self.assertEqual([(n["id"], n["stats"]["active"]) for n in nodes], [("node-1", True)])
            p.send_signal(signal.SIGTERM)
            p.wait(5)

    def start_quiet(self, env):
        """In production mode the stand-in answers no plain HTTP request: wait for the dashboard."""
        port = free_port()
        e = {"PORT": str(port), "LISTEN": "127.0.0.1"}
        e.update(env)
        p = self.spawn(ETHSTATS, env=e)

        def up():
            try:
                S.ethstats_dashboard("127.0.0.1", port, timeout=1)
                return True
            except Exception:  # noqa: BLE001 (not listening yet)
                return p.poll() is not None
        self.wait_for(up, what="ethstats dashboard")
        return p, port

    def test_no_secret_logs_and_crash_after(self):
        p, port = self.start({"STANDIN_ETHSTATS_APPDIR": self.dir, "STANDIN_ETHSTATS_CRASH_AFTER": "0.8",
                              "STANDIN_ETHSTATS_EXIT_CODE": "7"})
        self.assertEqual(p.wait(5), 7)
        _, err = p.communicate()
        self.assertRegex(err, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \[API\] WS_SECRET NOT SET!!!\n")


if __name__ == "__main__":
    unittest.main()
