#!/usr/bin/env python3
"""Auto Scaling stand-in for node-agent's tests: the Query-protocol endpoint, `CompleteLifecycleAction` only.

    python3 asg_responder.py --access-key AKID --secret-key SECRET [--session-token TOKEN]
                             [--host 127.0.0.1] [--port 0] [--record FILE] [--log FILE] [--exit-with-stdin]
    python3 asg_responder.py --self-check

Prints the bound port and a newline on stdout once it accepts connections, then serves until killed.
Every request is checked the way Auto Scaling checks it: POST with a form body, `Action` and
`Version=2011-01-01`, the call's required parameters, and a SigV4 signature recomputed from the
credentials given on the command line (service `autoscaling`, region from the credential scope,
`X-Amz-Date` at most 5 minutes off). An accepted call is appended to the record file as one JSON line
and answered with the success XML; anything else gets Auto Scaling's error XML. Reference:
tests/rig/README.md.

Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import http.server
import json
import os
import re
import socket
import sys
import tempfile
import threading
import urllib.parse
import uuid
from datetime import datetime, timedelta, timezone
from xml.sax.saxutils import escape

API_VERSION = "2011-01-01"
XMLNS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
SERVICE = "autoscaling"
ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = timedelta(minutes=5)
FORM = "application/x-www-form-urlencoded"
REQUIRED = ("AutoScalingGroupName", "LifecycleHookName", "LifecycleActionResult")
OPTIONAL = ("InstanceId", "LifecycleActionToken")
RESULTS = ("CONTINUE", "ABANDON")
AMZ_DATE = re.compile(r"^\d{8}T\d{6}Z$")
AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<credential>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})$")


class ApiError(Exception):
    """An error Auto Scaling would answer with: HTTP status, error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message

    def xml(self, request_id: str) -> str:
        kind = "Receiver" if self.status >= 500 else "Sender"
        return (f'<ErrorResponse xmlns="{XMLNS}"><Error><Type>{kind}</Type><Code>{escape(self.code)}</Code>'
                f"<Message>{escape(self.message)}</Message></Error><RequestId>{request_id}</RequestId>"
                "</ErrorResponse>")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def uri_encode(text: str, safe: str) -> str:
    """RFC 3986 percent-encoding as SigV4 wants it: unreserved characters kept, everything else %XX."""
    return urllib.parse.quote(text, safe=safe + "-_.~")


def canonical_request(method: str, raw_path: str, headers: dict[str, list[str]], signed: list[str],
                      body: bytes) -> str:
    """The SigV4 canonical request. `headers` maps lower-case names to every value sent under that name."""
    split = urllib.parse.urlsplit(raw_path)
    # Services other than S3 normalise the path and encode each segment twice (once as sent, once here).
    path = "/" + "/".join(uri_encode(seg, "") for seg in split.path.split("/") if seg not in ("", "."))
    if split.path.endswith("/") and path != "/":
        path += "/"
    pairs = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
    query = "&".join(f"{uri_encode(k, '')}={uri_encode(v, '')}" for k, v in sorted(pairs))
    lines = []
    for name in signed:
        values = [" ".join(v.split()) for v in headers.get(name, [])]
        lines.append(f"{name}:{','.join(values)}\n")
    return "\n".join([method, path, query, "".join(lines), ";".join(signed), sha256_hex(body)])


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signature(secret: str, amz_date: str, scope: str, canonical: str) -> str:
    date, region, service, _ = scope.split("/")
    to_sign = "\n".join([ALGORITHM, amz_date, scope, sha256_hex(canonical.encode())])
    return hmac.new(signing_key(secret, date, region, service), to_sign.encode(), hashlib.sha256).hexdigest()


class Credentials:
    def __init__(self, access_key: str, secret_key: str, session_token: str | None) -> None:
        self.access_key, self.secret_key, self.session_token = access_key, secret_key, session_token


def verify_signature(creds: Credentials, method: str, raw_path: str, headers: dict[str, list[str]],
                     body: bytes, now: datetime) -> dict:
    """Checks the request's SigV4 signature; returns {access_key, region, signed_headers} or raises ApiError."""
    auth = (headers.get("authorization") or [""])[0]
    if not auth:
        raise ApiError(403, "MissingAuthenticationToken", "Request is missing Authentication Token")
    m = AUTHORIZATION.match(auth)
    if not m:
        raise ApiError(403, "IncompleteSignature", f"Authorization header is not a SigV4 header: {auth[:80]}")
    parts = m["credential"].split("/")
    if len(parts) != 5 or parts[3] != SERVICE or parts[4] != "aws4_request":
        raise ApiError(403, "SignatureDoesNotMatch",
                       f"Credential should be scoped to a valid region and to the service '{SERVICE}': "
                       f"{m['credential']}")
    access_key, date, region = parts[0], parts[1], parts[2]
    if access_key != creds.access_key:
        raise ApiError(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
    amz_date = (headers.get("x-amz-date") or [""])[0]
    if not AMZ_DATE.match(amz_date):
        raise ApiError(400, "IncompleteSignature", "Missing or malformed X-Amz-Date header")
    if amz_date[:8] != date:
        raise ApiError(403, "SignatureDoesNotMatch",
                       f"Credential should be scoped to a valid date: {date} is not the date of {amz_date}")
    sent = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    if abs(now - sent) > MAX_SKEW:
        raise ApiError(403, "SignatureDoesNotMatch",
                       f"Signature expired: {amz_date} is now earlier than "
                       f"{(now - MAX_SKEW).strftime('%Y%m%dT%H%M%SZ')} ({now.strftime('%Y%m%dT%H%M%SZ')} - 5 min.)")
    token = (headers.get("x-amz-security-token") or [None])[0]
    if creds.session_token is not None and token != creds.session_token:
        raise ApiError(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
    signed = m["signed"].split(";")
    if signed != sorted(signed) or "host" not in signed or "x-amz-date" not in signed:
        raise ApiError(403, "SignatureDoesNotMatch",
                       f"SignedHeaders must be sorted and include host and x-amz-date: {m['signed']}")
    if token is not None and "x-amz-security-token" not in signed:
        raise ApiError(403, "SignatureDoesNotMatch", "x-amz-security-token is sent but not signed")
    missing = [h for h in signed if h not in headers]
    if missing:
        raise ApiError(403, "SignatureDoesNotMatch", f"signed headers not in the request: {missing}")
    canonical = canonical_request(method, raw_path, headers, signed, body)
    expected = signature(creds.secret_key, amz_date, "/".join(parts[1:]), canonical)
    if not hmac.compare_digest(expected, m["signature"]):
        raise ApiError(403, "SignatureDoesNotMatch",
                       "The request signature we calculated does not match the signature you provided. "
                       "Check your AWS Secret Access Key and signing method. Consult the service documentation "
                       "for details.")
    return {"access_key": access_key, "region": region, "signed_headers": signed}


def parse_call(method: str, headers: dict[str, list[str]], body: bytes) -> dict[str, str]:
    """The form parameters of a CompleteLifecycleAction call, or ApiError."""
    if method != "POST":
        raise ApiError(400, "MalformedQueryString", f"asg_responder accepts only POST with a form body, not {method}")
    content_type = (headers.get("content-type") or [""])[0].split(";")[0].strip().lower()
    if content_type != FORM:
        raise ApiError(400, "MalformedQueryString", f"Content-Type must be {FORM}, not {content_type or 'absent'}")
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError) as err:
        raise ApiError(400, "MalformedQueryString", f"the body is not a form: {err}") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise ApiError(400, "MalformedQueryString", f"parameter {key} given twice")
        params[key] = value
    action = params.pop("Action", None)
    version = params.pop("Version", None)
    if not action:
        raise ApiError(400, "MissingAction", "The request must contain the parameter Action")
    if action != "CompleteLifecycleAction" or version != API_VERSION:
        raise ApiError(400, "InvalidAction", f"Could not find operation {action} for version {version}")
    unknown = sorted(set(params) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ApiError(400, "ValidationError", f"Unknown parameters for CompleteLifecycleAction: {unknown}")
    for key in REQUIRED:
        if not params.get(key):
            member = key[0].lower() + key[1:]
            raise ApiError(400, "ValidationError",
                           f"1 validation error detected: Value null at '{member}' failed to satisfy constraint: "
                           "Member must not be null")
    if not params.get("InstanceId") and not params.get("LifecycleActionToken"):
        raise ApiError(400, "ValidationError", "Either InstanceId or LifecycleActionToken must be specified")
    if params["LifecycleActionResult"] not in RESULTS:
        raise ApiError(400, "ValidationError",
                       f"Invalid LifecycleActionResult {params['LifecycleActionResult']!r}: must be CONTINUE or "
                       "ABANDON")
    return {"action": action, **params}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: "ResponderServer"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: the --log file records requests instead

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self.handle_request()

    def do_GET(self) -> None:  # noqa: N802
        self.handle_request()

    def do_PUT(self) -> None:  # noqa: N802
        self.handle_request()

    def handle_request(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        request_id = str(uuid.uuid4())
        now = datetime.now(timezone.utc)
        try:
            # Authentication first, as AWS does: an unsigned or tampered call learns nothing about its params.
            auth = verify_signature(self.server.creds, self.command, self.path, headers, body, now)
            call = parse_call(self.command, headers, body)
        except ApiError as err:
            self.server.log(f"{self.command} {self.path} {err.status} {err.code}")
            return self.reply(err.status, err.xml(request_id))
        action = call.pop("action")
        self.server.record({"action": action, "params": call, **auth,
                            "time": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")})
        self.server.log(f"{self.command} {self.path} 200 {action}")
        self.reply(200, f'<{action}Response xmlns="{XMLNS}"><{action}Result/><ResponseMetadata>'
                        f"<RequestId>{request_id}</RequestId></ResponseMetadata></{action}Response>")

    def reply(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class ResponderServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, creds: Credentials, record_path: str | None,
                 log_path: str | None) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)
        self.creds = creds
        self.record_path, self.log_path = record_path, log_path
        self._lock = threading.Lock()

    def _append(self, path: str | None, line: str) -> None:
        if path:
            with self._lock, open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def record(self, entry: dict) -> None:
        # Written before the answer leaves, so a caller that has its 200 finds the line.
        self._append(self.record_path, json.dumps(entry, separators=(",", ":")))

    def log(self, line: str) -> None:
        self._append(self.log_path, line)

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


def sign_for_check(creds: Credentials, host: str, body: str, when: datetime, region: str = "eu-central-1",
                   secret: str | None = None, content_type: str = FORM + "; charset=utf-8",
                   method: str = "POST") -> dict[str, str]:
    """Headers of a request signed as an SDK signs it (for the self-check; the test suite also checks botocore's)."""
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    headers = {"content-type": content_type, "host": host, "x-amz-date": amz_date}
    if creds.session_token:
        headers["x-amz-security-token"] = creds.session_token
    signed = sorted(headers)
    canonical = canonical_request(method, "/", {k: [v] for k, v in headers.items()}, signed, body.encode())
    scope = f"{amz_date[:8]}/{region}/{SERVICE}/aws4_request"
    sig = signature(secret or creds.secret_key, amz_date, scope, canonical)
    headers["authorization"] = (f"{ALGORITHM} Credential={creds.access_key}/{scope}, "
                                f"SignedHeaders={';'.join(signed)}, Signature={sig}")
    return headers


def self_check() -> int:
    """Signs requests over real HTTP against an in-process server; returns the exit code."""
    results: list[tuple[str, str | None]] = []
    workdir = tempfile.mkdtemp(prefix="asg-responder-check-")
    record_path = os.path.join(workdir, "calls.jsonl")
    creds = Credentials("ASIACHECK", "check-secret", "check-token")
    server = ResponderServer("127.0.0.1", 0, creds, record_path, os.path.join(workdir, "requests.log"))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    good = ("Action=CompleteLifecycleAction&Version=2011-01-01&AutoScalingGroupName=fleet-rpc"
            "&LifecycleHookName=terminate&InstanceId=i-0check&LifecycleActionResult=CONTINUE")

    def post(body: str, headers: dict[str, str], method: str = "POST") -> tuple[int, str]:
        conn = http.client.HTTPConnection(host, timeout=5)
        conn.request(method, "/", body=body.encode(), headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode()
        conn.close()
        return resp.status, text

    def records() -> list[dict]:
        try:
            with open(record_path, encoding="utf-8") as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []

    def expect_error(body: str, headers: dict[str, str], status: int, code: str, method: str = "POST") -> None:
        before = len(records())
        got = post(body, headers, method)
        assert got[0] == status and f"<Code>{code}</Code>" in got[1], got
        assert "<Type>Sender</Type>" in got[1] and "<RequestId>" in got[1], got
        assert len(records()) == before, "a refused call was recorded"

    def now() -> datetime:
        return datetime.now(timezone.utc)

    def check(name: str, fn) -> None:
        try:
            fn()
            results.append((name, None))
        except Exception as err:  # noqa: BLE001 - report every failing check
            results.append((name, f"{type(err).__name__}: {err}"))

    def known_vector() -> None:
        # aws-sig-v4-test-suite "get-vanilla": the canonicalisation and key derivation match AWS's own example.
        headers = {"host": ["example.amazonaws.com"], "x-amz-date": ["20150830T123600Z"]}
        canonical = canonical_request("GET", "/", headers, ["host", "x-amz-date"], b"")
        sig = signature("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830T123600Z",
                        "20150830/us-east-1/service/aws4_request", canonical)
        assert sig == "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31", sig

    def accepted_and_recorded() -> None:
        status, text = post(good, sign_for_check(creds, host, good, now()))
        assert status == 200, text
        assert text.startswith(f'<CompleteLifecycleActionResponse xmlns="{XMLNS}"><CompleteLifecycleActionResult/>')
        rec = records()[-1]
        assert rec["action"] == "CompleteLifecycleAction" and rec["access_key"] == "ASIACHECK", rec
        assert rec["params"] == {"AutoScalingGroupName": "fleet-rpc", "LifecycleHookName": "terminate",
                                 "InstanceId": "i-0check", "LifecycleActionResult": "CONTINUE"}, rec
        assert rec["region"] == "eu-central-1" and "x-amz-security-token" in rec["signed_headers"], rec

    def tampered_body() -> None:
        headers = sign_for_check(creds, host, good, now())
        expect_error(good.replace("CONTINUE", "ABANDON"), headers, 403, "SignatureDoesNotMatch")

    def wrong_secret_key_token_and_date() -> None:
        expect_error(good, sign_for_check(creds, host, good, now(), secret="not-it"), 403, "SignatureDoesNotMatch")
        other = Credentials("ASIAOTHER", creds.secret_key, creds.session_token)
        expect_error(good, sign_for_check(other, host, good, now()), 403, "InvalidClientTokenId")
        stale_token = Credentials(creds.access_key, creds.secret_key, "old-token")
        expect_error(good, sign_for_check(stale_token, host, good, now()), 403, "InvalidClientTokenId")
        expect_error(good, sign_for_check(creds, host, good, now() - timedelta(minutes=6)), 403,
                     "SignatureDoesNotMatch")
        headers = sign_for_check(creds, host, good, now())
        del headers["authorization"]
        expect_error(good, headers, 403, "MissingAuthenticationToken")

    def request_shape() -> None:
        for drop in ("&LifecycleHookName=terminate", "&LifecycleActionResult=CONTINUE", "&InstanceId=i-0check"):
            body = good.replace(drop, "")
            expect_error(body, sign_for_check(creds, host, body, now()), 400, "ValidationError")
        body = good.replace("CONTINUE", "continue")
        expect_error(body, sign_for_check(creds, host, body, now()), 400, "ValidationError")
        body = good.replace("CompleteLifecycleAction", "DescribeAutoScalingGroups")
        expect_error(body, sign_for_check(creds, host, body, now()), 400, "InvalidAction")
        body = good.replace("2011-01-01", "2010-08-01")
        expect_error(body, sign_for_check(creds, host, body, now()), 400, "InvalidAction")
        body = good.replace("Action=CompleteLifecycleAction&", "")
        expect_error(body, sign_for_check(creds, host, body, now()), 400, "MissingAction")
        headers = sign_for_check(creds, host, good, now(), content_type="application/json")
        expect_error(good, headers, 400, "MalformedQueryString")
        headers = sign_for_check(creds, host, "", now(), method="GET")
        expect_error("", headers, 400, "MalformedQueryString", method="GET")

    for name, fn in [("known_vector", known_vector), ("accepted_and_recorded", accepted_and_recorded),
                     ("tampered_body", tampered_body),
                     ("wrong_secret_key_token_and_date", wrong_secret_key_token_and_date),
                     ("request_shape", request_shape)]:
        check(name, fn)
    server.shutdown()
    server.server_close()
    failed = [(name, err) for name, err in results if err]
    for name, err in failed:
        print(f"FAILED {name}: {err}")
    print(f"self-check: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Auto Scaling CompleteLifecycleAction stand-in for node-agent tests")
    parser.add_argument("--access-key", help="the only access key id accepted")
    parser.add_argument("--secret-key", help="its secret, to recompute signatures with")
    parser.add_argument("--session-token", help="required in X-Amz-Security-Token when given")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--record", help="append one JSON line per accepted call to this file")
    parser.add_argument("--log", help="append 'METHOD PATH STATUS CODE-OR-ACTION' per request to this file")
    parser.add_argument("--exit-with-stdin", action="store_true",
                        help="exit when stdin reaches EOF (the parent test process died)")
    parser.add_argument("--self-check", action="store_true", help="test the responder itself and exit")
    args = parser.parse_args()
    if args.self_check:
        return self_check()
    if not args.access_key or not args.secret_key:
        parser.error("--access-key and --secret-key are required")
    creds = Credentials(args.access_key, args.secret_key, args.session_token)
    server = ResponderServer(args.host, args.port, creds, args.record, args.log)
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
