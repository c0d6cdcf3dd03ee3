#!/usr/bin/env python3
"""A fault-injecting HTTP proxy in front of moto, for AWS JSON-protocol services (Secrets Manager,
CloudWatch Logs): requests pass through unchanged unless a rule matches their X-Amz-Target, in which
case the proxy answers with the rule's AWS error instead (AccessDeniedException, ThrottlingException, ...).
moto cannot produce these on its own.

    python3 tests/rig/aws_fault_proxy.py --upstream http://127.0.0.1:PORT --rules FILE [--log FILE]

Prints the port it listens on, then serves. FILE is JSON, re-read on every request:
    [{"target": "secretsmanager.GetSecretValue", "status": 400,
      "type": "ThrottlingException", "message": "Rate exceeded", "times": 2}]
"times" limits how often a rule fires (omit for always); counts are kept per rule index.
"target": "*" matches every request. {"target": ..., "drop": true} closes the connection without an
answer instead (the service unreachable).
"""
import argparse
import http.client
import http.server
import json
import sys
import threading
import urllib.parse

FIRED = {}
LOCK = threading.Lock()


def load_rules(path):
    try:
        with open(path) as f:
            rules = json.load(f)
    except FileNotFoundError:
        return []
    if not isinstance(rules, list):
        raise ValueError("rules file must hold a JSON list")
    return rules


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        pass

    def _log(self, line):
        if self.server.log_path:
            with LOCK, open(self.server.log_path, "a") as f:
                f.write(line + "\n")

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = self.headers.get("X-Amz-Target", "")
        for i, rule in enumerate(load_rules(self.server.rules_path)):
            if rule.get("target") not in (target, "*"):
                continue
            with LOCK:
                fired = FIRED.get(i, 0)
                if "times" in rule and fired >= rule["times"]:
                    continue
                FIRED[i] = fired + 1
            if rule.get("drop"):
                self._log(f"{target} dropped")
                self.close_connection = True
                return
            payload = json.dumps({"__type": rule["type"], "message": rule.get("message", rule["type"])}).encode()
            self.send_response(int(rule.get("status", 400)))
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("x-amzn-ErrorType", rule["type"])
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self._log(f"{target} {rule['type']}")
            return
        up = urllib.parse.urlsplit(self.server.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()
        self._log(f"{target} {resp.status}")

    do_GET = do_POST = do_PUT = do_DELETE = _handle


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--rules", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log")
    args = ap.parse_args()
    server = http.server.ThreadingHTTPServer((args.host, args.port), Proxy)
    server.daemon_threads = True
    server.upstream = args.upstream
    server.rules_path = args.rules
    server.log_path = args.log
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
