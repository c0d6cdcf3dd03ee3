#!/usr/bin/env python3
"""Benchmark: `node-agent get-secret` against the seed's get_secret.py approach (boto3
get_secret_value, print SecretString), side by side against the same moto server, several runs each.
Prints median wall time, median CPU time and median peak RSS of both, and the ratios.

    python3 tests/bench/get_secret.py [--runs 15] [--binary target/release/node-agent]

Needs GNU time (/usr/bin/time, Debian package `time`). Builds the release binary first unless --binary
is given. Not a test: numbers depend on the machine.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The seed's approach, as get_secret.py did it.
BOTO3_SCRIPT = """
import sys, boto3
client = boto3.session.Session().client(service_name="secretsmanager")
print(client.get_secret_value(SecretId=sys.argv[1])["SecretString"])
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(cmd, env, rss_file):
    """Runs cmd once; returns (wall s, cpu s, peak RSS KiB).

    Peak RSS comes from GNU time's %M: wait4's ru_maxrss would count the pages of this Python process
    that the child inherits between fork and exec. CPU is wait4's (GNU time's own share is negligible)."""
    start = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss_file] + cmd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"benchmark command failed: {' '.join(cmd)}\n{err}")
    with open(rss_file) as f:
        rss = int(f.read().split()[-1])
    return wall, usage.ru_utime + usage.ru_stime, rss


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--binary")
    args = ap.parse_args()

    binary = args.binary
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=REPO, check=True)
        binary = os.path.join(REPO, "target/release/node-agent")

    port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_REGION="eu-central-1",
                   AWS_DEFAULT_REGION="eu-central-1", AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true")
        import boto3  # noqa: E402 (only needed here, to seed the secret)
        boto3.session.Session().client("secretsmanager", endpoint_url=env["AWS_ENDPOINT_URL"],
                                       region_name="eu-central-1", aws_access_key_id="testing",
                                       aws_secret_access_key="testing").create_secret(
            Name="bench/secret", SecretString="x" * 64)

        commands = {
            "get_secret.py (boto3)": [sys.executable, "-c", BOTO3_SCRIPT, "bench/secret"],
            "node-agent get-secret": [binary, "get-secret", "bench/secret"],
        }
        results = {name: [] for name in commands}
        rss_file = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"get-secret-bench-{os.getpid()}.rss")
        for _ in range(args.runs):  # interleaved, so both see the same machine
            for name, cmd in commands.items():
                results[name].append(measure(cmd, env, rss_file))
    finally:
        moto.kill()
        moto.wait()

    med = {name: [statistics.median(r[i] for r in runs) for i in range(3)] for name, runs in results.items()}
    py, na = med["get_secret.py (boto3)"], med["node-agent get-secret"]
    print(f"get-secret benchmark, {args.runs} runs each, medians, against moto on loopback")
    print(f"| {'':24} | {'wall ms':>8} | {'CPU ms':>8} | {'peak RSS MiB':>12} |")
    print(f"|{'-' * 26}|{'-' * 10}|{'-' * 10}|{'-' * 14}|")
    for name, (wall, cpu, rss) in med.items():
        print(f"| {name:24} | {wall * 1000:8.1f} | {cpu * 1000:8.1f} | {rss / 1024:12.1f} |")
    print(f"| {'ratio node-agent/python':24} | {na[0] / py[0]:8.3f} | {na[1] / py[1]:8.3f} | {na[2] / py[2]:12.3f} |")
    print("targets: wall ratio <= 0.05, RSS ratio <= 0.33")


if __name__ == "__main__":
    main()
