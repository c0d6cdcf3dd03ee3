#!/usr/bin/env python3
"""IMDSv2-only stand-in for the EC2 instance metadata service, for node-agent's tests.

    python3 imds_emulator.py --config FILE [--host 127.0.0.1] [--port 0] [--log FILE] [--exit-with-stdin]
    python3 imds_emulator.py --self-check

Prints the bound port and a newline on stdout once it accepts connections, then serves until killed.
The JSON config is re-read on every request, so a test changes tags (or injects faults) by rewriting
it; write it atomically (temp file + rename). Unknown keys are an error (answered 500 and printed to
stderr), so a typo in a test's config never silently becomes a default. Schema: tests/rig/README.md.

Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import re
import secrets
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from datetime import datetime, timedelta, timezone

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL = 21600
CREDENTIALS_LIFETIME = timedelta(hours=6)

CONFIG_KEYS = {
    "instance_id", "region", "availability_zone", "local_ipv4", "public_ipv4", "account_id", "ami_id",
    "instance_type", "architecture", "mac", "pending_time", "user_data", "tags", "iam_role",
    "credentials", "extended_credentials", "faults", "lifecycle_state", "spot_instance_action",
}
FAULT_KEYS = {"delay_ms", "status", "token_epoch"}
CREDENTIAL_KEYS = {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}
SPOT_ACTION_KEYS = {"action", "time"}
# EC2 refuses to expose instance tags in metadata while any key falls outside this set.
TAG_KEY = re.compile(r"^[A-Za-z0-9+\-=.,_:@]{1,128}$")
STARTED = datetime.now(timezone.utc)


class ConfigError(Exception):
    """The config file is missing, not JSON, or does not fit the schema."""


def iso8601(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_config(path: str) -> dict:
    """Reads and validates the config; retries briefly so a non-atomic rewrite is not seen half-done."""
    last_error: Exception | None = None
    for _ in range(5):
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
            return normalise(raw)
        except (OSError, json.JSONDecodeError) as err:
            last_error = err
            time.sleep(0.02)
    raise ConfigError(f"cannot read config {path}: {last_error}")


def normalise(raw: object) -> dict:
    """Fills defaults and rejects unknown keys or wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    unknown = set(raw) - CONFIG_KEYS
    if unknown:
        raise ConfigError(f"unknown config keys: {sorted(unknown)}")

    def text(key: str, default: str | None) -> str | None:
        value = raw.get(key, default)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{key} must be a string or null")
        return value

    az = text("availability_zone", None)
    region = text("region", None) or (az[:-1] if az else "eu-central-1")
    cfg = {
        "instance_id": text("instance_id", "i-0123456789abcdef0"),
        "region": region,
        "availability_zone": az or region + "a",
        "local_ipv4": text("local_ipv4", "10.0.1.10"),
        "public_ipv4": text("public_ipv4", None),
        "account_id": text("account_id", "123456789012"),
        "ami_id": text("ami_id", "ami-0123456789abcdef0"),
        "instance_type": text("instance_type", "t2.micro"),
        "architecture": text("architecture", "x86_64"),
        "mac": text("mac", "02:00:00:00:00:01"),
        "pending_time": text("pending_time", iso8601(STARTED)),
        "user_data": text("user_data", None),
        "iam_role": text("iam_role", None),
        # Absent: the instance is not in an Auto Scaling group, and the path is 404 as on EC2.
        "lifecycle_state": text("lifecycle_state", None),
    }
    for key in ("instance_id", "region", "local_ipv4", "account_id", "ami_id", "instance_type"):
        if not cfg[key]:
            raise ConfigError(f"{key} must not be empty")
    if cfg["lifecycle_state"] == "":
        raise ConfigError("lifecycle_state must not be empty (null: not in an Auto Scaling group)")

    tags = raw.get("tags", {})
    if tags is not None:
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise ConfigError("tags must be an object of strings, or null (instance tags disabled)")
        bad = [k for k in tags if not TAG_KEY.match(k) or k in (".", "..", "_index")]
        if bad:
            raise ConfigError(f"tag keys EC2 cannot expose in metadata: {bad}")
    cfg["tags"] = tags

    creds = raw.get("credentials") or {}
    if not isinstance(creds, dict) or set(creds) - CREDENTIAL_KEYS:
        raise ConfigError(f"credentials must be an object with keys among {sorted(CREDENTIAL_KEYS)}")
    cfg["credentials"] = {
        "AccessKeyId": "ASIAEMULATOREXAMPLE1",
        "SecretAccessKey": "emulatorSecretAccessKeyEXAMPLE",
        "Token": "emulator-session-token",
        **creds,
    }

    extended = raw.get("extended_credentials", False)
    if not isinstance(extended, bool):
        raise ConfigError("extended_credentials must be true or false")
    cfg["extended_credentials"] = extended

    faults = raw.get("faults") or {}
    if not isinstance(faults, dict) or set(faults) - FAULT_KEYS:
        raise ConfigError(f"faults must be an object with keys among {sorted(FAULT_KEYS)}")
    delay_ms = faults.get("delay_ms") or 0
    status = faults.get("status")
    epoch = faults.get("token_epoch") or 0
    if not isinstance(delay_ms, int) or delay_ms < 0:
        raise ConfigError("faults.delay_ms must be a non-negative integer")
    if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
        raise ConfigError("faults.status must be an HTTP status code or null")
    if not isinstance(epoch, int):
        raise ConfigError("faults.token_epoch must be an integer")
    cfg["faults"] = {"delay_ms": delay_ms, "status": status, "token_epoch": epoch}

    spot = raw.get("spot_instance_action")
    if spot is not None:
        if (not isinstance(spot, dict) or set(spot) != SPOT_ACTION_KEYS
                or not all(isinstance(v, str) and v for v in spot.values())):
            raise ConfigError("spot_instance_action must be an object {action, time} of non-empty strings, or null")
    cfg["spot_instance_action"] = spot
    return cfg


def credentials_document(cfg: dict, extended: bool) -> str:
    now = datetime.now(timezone.utc)
    creds = cfg["credentials"]
    doc = {
        "Code": "Success",
        "LastUpdated": iso8601(now),
        "Type": "AWS-HMAC",
        "AccessKeyId": creds["AccessKeyId"],
        "SecretAccessKey": creds["SecretAccessKey"],
        "Token": creds["Token"],
        "Expiration": creds.get("Expiration") or iso8601(now + CREDENTIALS_LIFETIME),
    }
    if extended:
        doc["AccountId"] = cfg["account_id"]
    return json.dumps(doc, indent=2)


def metadata_tree(cfg: dict) -> dict:
    """The metadata as nested dicts (directories) and strings (leaves), as this instance would show it."""
    region = cfg["region"]
    domain = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
    local_hostname = "ip-" + cfg["local_ipv4"].replace(".", "-") + "." + domain
    # Inserted in EC2's (alphabetical) listing order.
    meta: dict = {"ami-id": cfg["ami_id"]}
    if cfg["lifecycle_state"] is not None:
        meta["autoscaling"] = {"target-lifecycle-state": cfg["lifecycle_state"]}
    meta["hostname"] = local_hostname
    role = cfg["iam_role"]
    if role:
        profile_arn = f"arn:aws:iam::{cfg['account_id']}:instance-profile/{role}"
        meta["iam"] = {
            "info": json.dumps({
                "Code": "Success",
                "LastUpdated": iso8601(datetime.now(timezone.utc)),
                "InstanceProfileArn": profile_arn,
                "InstanceProfileId": "AIPAEMULATOREXAMPLE01",
            }, indent=2),
            "security-credentials": {role: credentials_document(cfg, extended=False)},
        }
        if cfg["extended_credentials"]:
            meta["iam"]["security-credentials-extended"] = {role: credentials_document(cfg, extended=True)}
    meta.update({
        "instance-id": cfg["instance_id"],
        "instance-type": cfg["instance_type"],
        "local-hostname": local_hostname,
        "local-ipv4": cfg["local_ipv4"],
        "mac": cfg["mac"],
        "placement": {"availability-zone": cfg["availability_zone"], "region": region},
    })
    if cfg["public_ipv4"]:
        public_domain = "compute-1.amazonaws.com" if region == "us-east-1" else f"{region}.compute.amazonaws.com"
        meta["public-hostname"] = "ec2-" + cfg["public_ipv4"].replace(".", "-") + "." + public_domain
        meta["public-ipv4"] = cfg["public_ipv4"]
    spot = cfg["spot_instance_action"]
    if spot is not None:
        # Compact, `action` before `time`: {"action":"terminate","time":"2026-12-01T03:00:00Z"}.
        meta["spot"] = {"instance-action": json.dumps({"action": spot["action"], "time": spot["time"]},
                                                      separators=(",", ":"))}
    if cfg["tags"] is not None:
        # Sorted, so the listing does not depend on the key order of whoever wrote the config.
        meta["tags"] = {"instance": dict(sorted(cfg["tags"].items()))}

    identity = {
        "accountId": cfg["account_id"],
        "architecture": cfg["architecture"],
        "availabilityZone": cfg["availability_zone"],
        "billingProducts": None,
        "devpayProductCodes": None,
        "marketplaceProductCodes": None,
        "imageId": cfg["ami_id"],
        "instanceId": cfg["instance_id"],
        "instanceType": cfg["instance_type"],
        "kernelId": None,
        "pendingTime": cfg["pending_time"],
        "privateIp": cfg["local_ipv4"],
        "ramdiskId": None,
        "region": region,
        "version": "2017-09-30",
    }
    latest: dict = {
        "dynamic": {"instance-identity": {"document": json.dumps(identity, indent=2)}},
        "meta-data": meta,
    }
    if cfg["user_data"] is not None:
        latest["user-data"] = cfg["user_data"]
    return {"latest": latest}


def lookup(tree: dict, path: str) -> str | None:
    """Resolves a request path to a leaf's text or a directory listing; None means 404."""
    if not path.startswith("/"):
        return None
    rest = path[1:]
    wants_directory = rest.endswith("/")
    if wants_directory:
        rest = rest[:-1]
    node: dict | str = tree
    for segment in rest.split("/") if rest else []:
        if not isinstance(node, dict) or segment not in node:
            return None
        node = node[segment]
    if isinstance(node, str):
        return None if wants_directory else node
    # EC2 lists one entry a line, subdirectories with a trailing slash, and no final newline.
    return "\n".join(name + "/" if isinstance(child, dict) else name for name, child in node.items())


class Tokens:
    """Session tokens handed out by PUT /latest/api/token, with their expiry and epoch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[float, int]] = {}

    def issue(self, ttl: int, epoch: int) -> str:
        token = secrets.token_urlsafe(42)
        now = time.monotonic()
        with self._lock:
            self._tokens = {t: v for t, v in self._tokens.items() if v[0] > now}
            self._tokens[token] = (now + ttl, epoch)
        return token

    def valid(self, token: str | None, epoch: int) -> bool:
        if not token:
            return False
        with self._lock:
            entry = self._tokens.get(token)
        return entry is not None and entry[0] > time.monotonic() and entry[1] == epoch


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "EC2ws"
    # Headers and body leave in two writes; with Nagle on, a keep-alive client waits ~40 ms per request
    # for the delayed ACK.
    disable_nagle_algorithm = True
    server: "EmulatorServer"

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: the --log file records requests instead

    def do_PUT(self) -> None:  # noqa: N802 - stdlib naming
        self.handle_request()

    def do_GET(self) -> None:  # noqa: N802
        self.handle_request()

    def do_POST(self) -> None:  # noqa: N802
        self.handle_request()

    def do_DELETE(self) -> None:  # noqa: N802
        self.handle_request()

    def do_HEAD(self) -> None:  # noqa: N802
        self.handle_request()

    def do_PATCH(self) -> None:  # noqa: N802
        self.handle_request()

    def handle_request(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)  # keep the connection in step for keep-alive
        try:
            cfg = read_config(self.server.config_path)
        except ConfigError as err:
            if self.server.report_config_errors:
                print(f"imds_emulator: {err}", file=sys.stderr, flush=True)
            return self.reply(500, f"imds_emulator: {err}\n")
        faults = cfg["faults"]
        if faults["delay_ms"]:
            time.sleep(faults["delay_ms"] / 1000)
        if faults["status"] is not None:
            return self.reply(faults["status"], "")

        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if path == TOKEN_PATH:
            if self.command != "PUT":
                return self.reply(405, "")
            return self.issue_token(faults["token_epoch"])
        if self.command != "GET":
            return self.reply(405, "")
        if not self.server.tokens.valid(self.headers.get(TOKEN_HEADER), faults["token_epoch"]):
            return self.reply(401, "")
        body = lookup(metadata_tree(cfg), path)
        if body is None:
            return self.reply(404, "404 - Not Found\n")
        return self.reply(200, body)

    def issue_token(self, epoch: int) -> None:
        if self.headers.get("X-Forwarded-For") is not None:
            return self.reply(403, "")
        raw_ttl = self.headers.get(TTL_HEADER)
        try:
            ttl = int(raw_ttl) if raw_ttl is not None and raw_ttl.strip().isdigit() else 0
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= MAX_TTL:
            return self.reply(400, "")
        token = self.server.tokens.issue(ttl, epoch)
        return self.reply(200, token, {TTL_HEADER: str(ttl)})

    def reply(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8")
        # Logged before answering, so a test that has its response can already see the line.
        self.server.record(self.command, self.path, status)
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class EmulatorServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, config_path: str, log_path: str | None) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)
        self.config_path = config_path
        self.log_path = log_path
        self.tokens = Tokens()
        self.report_config_errors = True
        self._log_lock = threading.Lock()

    def record(self, method: str, path: str, status: int) -> None:
        if not self.log_path:
            return
        with self._log_lock, open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"{method} {path} {status}\n")

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client hanging up mid-request is normal in tests
        super().handle_error(request, client_address)


def exit_when_stdin_closes() -> None:
    """The parent holds our stdin open; EOF means it died without killing us."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)


def self_check() -> int:
    """Exercises the IMDSv2 rules over real HTTP against an in-process server; returns the exit code."""
    results: list[tuple[str, str | None]] = []
    workdir = tempfile.mkdtemp(prefix="imds-emulator-check-")
    config_path = os.path.join(workdir, "config.json")
    log_path = os.path.join(workdir, "requests.log")

    def write(cfg: dict) -> None:
        tmp = config_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(cfg, f)
        os.replace(tmp, config_path)

    base = {"instance_id": "i-0aaaaaaaaaaaaaaa1", "region": "eu-central-1",
            "tags": {"Role": "sealer", "Environment": "staging"}, "iam_role": "node-agent-sealer",
            "credentials": {"AccessKeyId": "ASIACHECK", "SecretAccessKey": "s", "Token": "t"}}
    write(base)
    server = EmulatorServer("127.0.0.1", 0, config_path, log_path)
    server.report_config_errors = False  # the bad-config check provokes one on purpose
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # one keep-alive connection

    def call(method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict]:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        declared = int(resp.getheader("Content-Length", "-1"))
        assert declared == len(body), f"Content-Length {declared} for {len(body)} bytes"
        return resp.status, body.decode(), {k.lower(): v for k, v in resp.getheaders()}

    def token(ttl: str = "60") -> str:
        status, body, _ = call("PUT", TOKEN_PATH, {TTL_HEADER: ttl})
        assert status == 200, status
        return body

    def get(path: str, tok: str) -> tuple[int, str]:
        status, body, _ = call("GET", path, {TOKEN_HEADER: tok})
        return status, body

    def check(name: str, fn) -> None:
        try:
            fn()
            results.append((name, None))
        except Exception as err:  # noqa: BLE001 - report every failing check
            results.append((name, f"{type(err).__name__}: {err}"))

    def token_rules() -> None:
        for ttl in (None, "0", "21601", "abc", "-5"):
            status, _, _ = call("PUT", TOKEN_PATH, {TTL_HEADER: ttl} if ttl else {})
            assert status == 400, (ttl, status)
        status, body, headers = call("PUT", TOKEN_PATH, {TTL_HEADER: "21600"})
        assert status == 200 and body, status
        assert headers["x-aws-ec2-metadata-token-ttl-seconds"] == "21600", headers
        assert headers["content-type"] == "text/plain", headers
        status, _, _ = call("PUT", TOKEN_PATH, {TTL_HEADER: "60", "X-Forwarded-For": "10.0.0.1"})
        assert status == 403, status
        status, _, _ = call("GET", TOKEN_PATH)
        assert status == 405, status

    def imdsv1_refused() -> None:
        assert call("GET", "/latest/meta-data/instance-id")[0] == 401
        assert get("/latest/meta-data/instance-id", "not-a-token")[0] == 401

    def metadata_paths() -> None:
        tok = token()
        assert get("/latest/meta-data/instance-id", tok) == (200, "i-0aaaaaaaaaaaaaaa1")
        assert get("/latest/meta-data/placement/region", tok) == (200, "eu-central-1")
        assert get("/latest/meta-data/placement/availability-zone", tok) == (200, "eu-central-1a")
        assert get("/latest/meta-data/tags/instance", tok) == (200, "Environment\nRole")
        assert get("/latest/meta-data/tags/instance/Role", tok) == (200, "sealer")
        assert get("/latest/meta-data/public-ipv4", tok)[0] == 404
        assert get("/latest/meta-data/no-such-thing", tok)[0] == 404
        assert get("/latest//meta-data/instance-id", tok)[0] == 404
        status, listing = get("/latest/meta-data/", tok)
        assert status == 200 and "tags/" in listing.split("\n") and "iam/" in listing.split("\n"), listing
        assert call("POST", "/latest/meta-data/instance-id", {TOKEN_HEADER: tok})[0] == 405
        doc = json.loads(get("/latest/dynamic/instance-identity/document", tok)[1])
        assert doc["instanceId"] == "i-0aaaaaaaaaaaaaaa1" and doc["version"] == "2017-09-30", doc
        assert doc["region"] == "eu-central-1" and doc["accountId"] == "123456789012", doc

    def iam_credentials() -> None:
        tok = token()
        assert get("/latest/meta-data/iam/security-credentials/", tok) == (200, "node-agent-sealer")
        status, body = get("/latest/meta-data/iam/security-credentials/node-agent-sealer", tok)
        creds = json.loads(body)
        assert status == 200 and creds["AccessKeyId"] == "ASIACHECK" and creds["Code"] == "Success"
        expiry = datetime.strptime(creds["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        assert timedelta(hours=5) < expiry - datetime.now(timezone.utc) <= CREDENTIALS_LIFETIME, expiry
        assert "AccountId" not in creds
        assert get("/latest/meta-data/iam/security-credentials-extended/", tok)[0] == 404
        write({**base, "extended_credentials": True})
        status, body = get("/latest/meta-data/iam/security-credentials-extended/node-agent-sealer", tok)
        assert status == 200 and json.loads(body)["AccountId"] == "123456789012", body
        write({**base, "iam_role": None})
        assert get("/latest/meta-data/iam/security-credentials/", tok)[0] == 404
        write(base)

    def tags_disabled_and_reload() -> None:
        tok = token()
        write({**base, "tags": None, "instance_id": "i-0bbbbbbbbbbbbbbb2"})
        assert get("/latest/meta-data/instance-id", tok) == (200, "i-0bbbbbbbbbbbbbbb2")
        assert get("/latest/meta-data/tags/instance", tok)[0] == 404
        assert get("/latest/meta-data/tags/instance/Role", tok)[0] == 404
        assert "tags/" not in get("/latest/meta-data/", tok)[1].split("\n")
        write(base)

    def empty_config_and_bad_config() -> None:
        tok = token()
        write({})
        assert get("/latest/meta-data/instance-id", tok) == (200, "i-0123456789abcdef0")
        assert get("/latest/meta-data/tags/instance", tok) == (200, "")
        write({"instance-id": "typo"})
        status, body = get("/latest/meta-data/instance-id", tok)
        assert status == 500 and "unknown config keys" in body, (status, body)
        write(base)

    def faults_and_token_expiry() -> None:
        tok = token()
        write({**base, "faults": {"status": 503}})
        assert call("PUT", TOKEN_PATH, {TTL_HEADER: "60"})[0] == 503
        assert get("/latest/meta-data/instance-id", tok)[0] == 503
        write({**base, "faults": {"delay_ms": 200}})
        started = time.monotonic()
        assert get("/latest/meta-data/instance-id", tok)[0] == 200
        assert time.monotonic() - started >= 0.2
        write({**base, "faults": {"token_epoch": 1}})
        assert get("/latest/meta-data/instance-id", tok)[0] == 401
        assert get("/latest/meta-data/instance-id", token())[0] == 200
        write(base)
        short = token("1")
        assert get("/latest/meta-data/instance-id", short)[0] == 200
        time.sleep(1.1)
        assert get("/latest/meta-data/instance-id", short)[0] == 401

    def lifecycle_and_spot() -> None:
        tok = token()
        assert get("/latest/meta-data/autoscaling/target-lifecycle-state", tok)[0] == 404
        assert get("/latest/meta-data/spot/instance-action", tok)[0] == 404
        listing = get("/latest/meta-data/", tok)[1].split("\n")
        assert "autoscaling/" not in listing and "spot/" not in listing, listing
        action = {"action": "terminate", "time": "2026-12-01T03:00:00Z"}
        write({**base, "lifecycle_state": "InService", "spot_instance_action": action})
        assert get("/latest/meta-data/autoscaling/target-lifecycle-state", tok) == (200, "InService")
        assert get("/latest/meta-data/autoscaling/", tok) == (200, "target-lifecycle-state")
        assert get("/latest/meta-data/spot/instance-action", tok) == (
            200, '{"action":"terminate","time":"2026-12-01T03:00:00Z"}')
        listing = get("/latest/meta-data/", tok)[1].split("\n")
        assert listing.index("ami-id") < listing.index("autoscaling/") < listing.index("hostname"), listing
        assert listing.index("placement/") < listing.index("spot/") < listing.index("tags/"), listing
        write({**base, "lifecycle_state": "Terminated", "spot_instance_action": None})
        assert get("/latest/meta-data/autoscaling/target-lifecycle-state", tok) == (200, "Terminated")
        assert get("/latest/meta-data/spot/instance-action", tok)[0] == 404
        for bad in ({"lifecycle_state": 3}, {"lifecycle_state": ""}, {"spot_instance_action": "terminate"},
                    {"spot_instance_action": {"action": "terminate"}},
                    {"spot_instance_action": {**action, "extra": "x"}},
                    {"spot_instance_action": {"action": 1, "time": "t"}}):
            write({**base, **bad})
            status, body = get("/latest/meta-data/instance-id", tok)
            assert status == 500 and "imds_emulator:" in body, (bad, status, body)
        write(base)

    def request_log() -> None:
        with open(log_path, encoding="utf-8") as log:
            lines = log.read().splitlines()
        assert f"PUT {TOKEN_PATH} 200" in lines and "GET /latest/meta-data/instance-id 401" in lines, lines[:5]

    for name, fn in [("token_rules", token_rules), ("imdsv1_refused", imdsv1_refused),
                     ("metadata_paths", metadata_paths), ("iam_credentials", iam_credentials),
                     ("tags_disabled_and_reload", tags_disabled_and_reload),
                     ("empty_config_and_bad_config", empty_config_and_bad_config),
                     ("faults_and_token_expiry", faults_and_token_expiry),
                     ("lifecycle_and_spot", lifecycle_and_spot), ("request_log", request_log)]:
        check(name, fn)
    server.shutdown()
    server.server_close()
    failed = [(name, err) for name, err in results if err]
    for name, err in failed:
        print(f"FAILED {name}: {err}")
    print(f"self-check: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description="IMDSv2 emulator for node-agent tests")
    parser.add_argument("--config", help="JSON config, re-read on every request")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--log", help="append 'METHOD PATH STATUS' lines to this file")
    parser.add_argument("--exit-with-stdin", action="store_true",
                        help="exit when stdin reaches EOF (the parent test process died)")
    parser.add_argument("--self-check", action="store_true", help="test the emulator itself and exit")
    args = parser.parse_args()
    if args.self_check:
        return self_check()
    if not args.config:
        parser.error("--config is required")
    try:
        read_config(args.config)
    except ConfigError as err:
        print(f"imds_emulator: {err}", file=sys.stderr)
        return 2
    server = EmulatorServer(args.host, args.port, args.config, args.log)
    print(server.server_address[1], flush=True)
    if args.exit_with_stdin:
        threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
