#!/usr/bin/env bash
# Log shipping benchmark (not a test): ships the same 1,000,000-line geth-like log file to the same moto
# server with node-agent and with a boto3 shipper (bench/py_shipper.py), one after the other, and prints
# wall time, CPU seconds (per million lines) and peak RSS of each, with the ratios.
#
#   bench/logs.sh [LINES]        (default 1000000; NODE_AGENT=path skips the release build)
#
# node-agent's CPU is its own process only (utime + stime from /proc at the moment its checkpoint
# reaches the end of the file); the Python shipper's is its own getrusage, interpreter start included.
# moto does the same work for both and is not counted. Needs python3 with moto[server] and boto3.
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${1:-1000000}
ROOT=$(pwd)

if [[ -z "${NODE_AGENT:-}" ]]; then
  cargo build --release --locked --quiet
  NODE_AGENT=$ROOT/target/release/node-agent
fi

WORK=$(mktemp -d)
MOTO_PID=""
AGENT_PID=""
cleanup() {
  [[ -n "$AGENT_PID" ]] && kill "$AGENT_PID" 2>/dev/null || true
  [[ -n "$MOTO_PID" ]] && kill "$MOTO_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m moto.server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break
  sleep 0.1
done

export AWS_REGION=eu-central-1 AWS_DEFAULT_REGION=eu-central-1 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=$WORK/none AWS_SHARED_CREDENTIALS_FILE=$WORK/none

# geth-like lines as node-agent writes them: a UTC stamp, then geth's terminal format. They start two
# hours ago, 7 ms apart, so CloudWatch (and moto) accept every one.
mkdir -p "$WORK/logs"
python3 - "$LINES" "$WORK/logs/bootnode.log" <<'PY'
import sys, time, datetime
n, path = int(sys.argv[1]), sys.argv[2]
start = time.time() - 2 * 3600
msgs = [
    "INFO [%s] Imported new chain segment               number=%d hash=0x%016x%016x blocks=1 txs=%d mgas=0.%03d elapsed=%d.%03dms mgasps=%d.%03d age=1s dirty=%d.%02dKiB",
    "INFO [%s] Successfully sealed new block            number=%d sealhash=0x%016x%016x hash=0x%016x... elapsed=%d.%03dms",
    "INFO [%s] Commit new sealing work                  number=%d sealhash=0x%016x%016x txs=%d gas=%d fees=0 elapsed=%d.%03dms",
    "DEBUG[%s] Served eth_blockNumber                   conn=127.0.0.1:%d reqid=%d duration=%d.%03dus",
]
with open(path, "w") as f:
    out = []
    for i in range(n):
        t = start + i * 0.007
        d = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
        stamp = d.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (d.microsecond // 1000)
        geth = d.strftime("%m-%d|%H:%M:%S.") + "%03d" % (d.microsecond // 1000)
        k = i % 4
        h = (i * 2654435761) & 0xFFFFFFFFFFFFFFFF
        if k == 0:
            m = msgs[0] % (geth, i, h, h ^ 0xABCDEF, i % 7, i % 1000, i % 9, i % 1000, i % 50, i % 1000, i % 900, i % 100)
        elif k == 1:
            m = msgs[1] % (geth, i, h, ~h & 0xFFFFFFFFFFFFFFFF, h >> 8, i % 9, i % 1000)
        elif k == 2:
            m = msgs[2] % (geth, i + 1, h, h >> 3, i % 7, (i * 21000) % 8000000, i % 9, i % 1000)
        else:
            m = msgs[3] % (geth, 40000 + i % 20000, i, i % 900, i % 1000)
        out.append(stamp + " " + m + "\n")
        if len(out) == 10000:
            f.write("".join(out)); out = []
    f.write("".join(out))
PY
SIZE=$(stat -c %s "$WORK/logs/bootnode.log")
cp "$WORK/logs/bootnode.log" "$WORK/input.log"

# node-agent in local mode, supervising a child that prints nothing; the prepared file is its log.
printf '#!/bin/sh\nexec sleep 1000000\n' >"$WORK/quiet"
chmod +x "$WORK/quiet"
cat >"$WORK/config.toml" <<TOML
[chain]
genesis = "$ROOT/resources/genesis.json"
[binaries]
bootnode = "$WORK/quiet"
[storage]
local_root = "$WORK/data"
runtime_dir = "$WORK/run"
[secrets]
local_dir = "$ROOT/tests/fixtures/secrets"
dir = "$WORK/run/secrets"
[logs]
dir = "$WORK/logs"
max_file_bytes = 4294967296
compress = false
[users]
# Started as root, the agent drops to this user; the prepared log file must be its own.
service = "nobody"
TOML
chmod 755 "$WORK"
if [[ $(id -u) -eq 0 ]]; then
  chown -R nobody: "$WORK/logs"
fi

TICK=$(getconf CLK_TCK)
T0=$(date +%s.%N)
NODE_AGENT_LOG=warn "$NODE_AGENT" run --local --role bootnode --environment dev --instance-id bench \
  --config "$WORK/config.toml" 2>"$WORK/agent.err" &
AGENT_PID=$!
CP=$WORK/logs/.checkpoints/bootnode.log.json
while :; do
  if ! kill -0 "$AGENT_PID" 2>/dev/null; then echo "node-agent exited:"; cat "$WORK/agent.err"; exit 1; fi
  OFF=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['offset'])" "$CP" 2>/dev/null || echo 0)
  [[ "$OFF" -ge "$SIZE" ]] && break
  sleep 0.2
done
T1=$(date +%s.%N)
read -r UT ST < <(awk '{print $14, $15}' "/proc/$AGENT_PID/stat")
HWM=$(awk '/VmHWM/ {print $2}' "/proc/$AGENT_PID/status")
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" || true; AGENT_PID=""

PY_JSON=$(python3 "$ROOT/bench/py_shipper.py" "$WORK/input.log" /bench/python boto3)

python3 - "$LINES" "$SIZE" "$UT" "$ST" "$TICK" "$T0" "$T1" "$HWM" "$PY_JSON" <<'PY'
import json, sys, boto3
lines, size = int(sys.argv[1]), int(sys.argv[2])
a_cpu = (int(sys.argv[3]) + int(sys.argv[4])) / int(sys.argv[5])
a_wall = float(sys.argv[7]) - float(sys.argv[6])
a_rss = int(sys.argv[8]) / 1024
py = json.loads(sys.argv[9])
p_cpu, p_wall, p_rss = py["cpu_s"], py["wall_s"], py["peak_rss_kib"] / 1024
logs = boto3.client("logs")
def stored(group, stream):
    s = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=stream)["logStreams"]
    return s[0]["storedBytes"] if s else 0
expected = size - 26 * lines
a_bytes, p_bytes = stored("/node-agent/dev/bootnode", "bench/bootnode"), stored("/bench/python", "boto3")
per = 1_000_000 / lines
print(f"{lines:,} lines, {size / 2**20:.1f} MiB; message bytes stored by moto: node-agent {a_bytes:,}, python {p_bytes:,} (expected {expected:,})")
print()
print("| shipper | wall s | CPU s | CPU s per 1M lines | peak RSS MiB |")
print("|---|---:|---:|---:|---:|")
print(f"| node-agent | {a_wall:.1f} | {a_cpu:.2f} | {a_cpu * per:.2f} | {a_rss:.1f} |")
print(f"| Python boto3 put_log_events | {p_wall:.1f} | {p_cpu:.2f} | {p_cpu * per:.2f} | {p_rss:.1f} |")
print(f"| ratio Python / node-agent | {p_wall / a_wall:.1f}x | {p_cpu / a_cpu:.1f}x | {p_cpu / a_cpu:.1f}x | {p_rss / a_rss:.1f}x |")
if a_bytes != expected or p_bytes != expected:
    print("WARNING: a shipper did not deliver every byte", file=sys.stderr)
    sys.exit(1)
PY
