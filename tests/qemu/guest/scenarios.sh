#!/bin/sh
# The storage scenarios, run inside the guest by /init, in order; each step builds on the one before.
# The host serves NFSv4.1 (nfs-ganesha) and IMDS (the emulator) at 10.0.2.100, ports 2049 and 80, and
# starts the NFS server only after it reads "NA-QEMU: WAITING-FOR-SERVER" on the console.
# Reports "NA-QEMU: PASS name" / "NA-QEMU: FAIL name: why" lines and a final "NA-QEMU: DONE" line.
PATH=/bin:/usr/local/bin
export AWS_EC2_METADATA_SERVICE_ENDPOINT=http://10.0.2.100:80
export NODE_AGENT_LOG=info
DATADIR=/var/lib/node-agent/data
FS=fs-0123456789abcdef0
NAME=$FS.efs.eu-central-1.amazonaws.com
OTHER=fs-0fedcba9876543210.efs.eu-central-1.amazonaws.com
passed=0
failed=0

pass() { passed=$((passed + 1)); echo "NA-QEMU: PASS $1"; }
fail() {
  failed=$((failed + 1))
  echo "NA-QEMU: FAIL $1: $2"
  [ -n "$3" ] && sed 's/^/NA-QEMU:   | /' "$3"
}

# Every NFS mount at the datadir, "fstype source" one a line, the visible one last.
mounts_at() {
  awk -v mp="$1" '$5 == mp { for (i = 7; i <= NF; i++) if ($i == "-") print $(i + 1), $(i + 2) }' /proc/self/mountinfo
}
is_mountpoint() { [ -n "$(mounts_at "$1")" ]; }

start_agent() { # config log
  node-agent run --config "$1" >/dev/null 2>"$2" &
  AGENT=$!
}
# Storage is done once geth has started on it. (READY=1 needs geth to answer JSON-RPC, which this shell
# stand-in does not: readiness is proven by the agent's own tests with the full stand-in.)
wait_ready() { # log seconds
  i=0
  while [ $i -lt $(($2 * 5)) ]; do
    grep -q ' started child=geth' "$1" && return 0
    kill -0 "$AGENT" 2>/dev/null || return 1
    sleep 0.2
    i=$((i + 1))
  done
  return 1
}
stop_agent() {
  kill -TERM "$AGENT"
  wait "$AGENT"
}
inits() { [ -f /tmp/geth-inits ] && wc -l </tmp/geth-inits || echo 0; }
error_line() { grep '^node-agent: error:' "$1"; }

# A run that must be refused: exit 1, the error naming $2 (and $3), nothing mounted, geth not started.
expect_refusal() { # name config want [want2]
  name=$1
  log=/tmp/$name.log
  before=$(inits)
  rm -f /tmp/geth.pid
  node-agent run --config "$2" >/dev/null 2>"$log"
  rc=$?
  line=$(error_line "$log")
  if [ $rc -ne 1 ]; then
    fail "$name" "exit $rc, expected 1" "$log"
  elif ! echo "$line" | grep -qF "$3" || ! echo "$line" | grep -qF "${4:-$3}"; then
    fail "$name" "error does not name '$3' and '${4:-$3}'" "$log"
  elif is_mountpoint $DATADIR; then
    fail "$name" "$DATADIR left mounted: $(mounts_at $DATADIR)" "$log"
  elif [ -f /tmp/geth.pid ] || [ "$(inits)" != "$before" ]; then
    fail "$name" "geth ran" "$log"
  else
    pass "$name"
    grep 'not ready yet' "$log" | sed 's/^.*WARN/NA-QEMU:   retry:/'
    echo "NA-QEMU:   $line"
  fi
}

# 1. First boot, nothing ready: DNS does not resolve the file system's name yet; then the mount target
#    does not answer (the NFS server is down: the kernel keeps retrying inside mount(2) until the agent
#    kills the attempt at 30 s and tries again); then it comes up, with no /staging/rpc directory.
s=first-boot-creates-the-directory-and-survives-a-late-server
start_agent /etc/node-agent/rpc.toml /tmp/$s.log
sleep 4
echo "10.0.2.100 $NAME $OTHER fs-0bbbbbbbbbbbbbbbb.efs.eu-central-1.amazonaws.com" >>/etc/hosts
echo "NA-QEMU: WAITING-FOR-SERVER"
if ! wait_ready /tmp/$s.log 240; then
  fail $s "agent not ready" /tmp/$s.log
else
  why=""
  [ "$(mounts_at $DATADIR)" = "nfs4 $NAME:/staging/rpc" ] || why="mounted: '$(mounts_at $DATADIR)'"
  [ "$(stat -c '%u:%g %a' $DATADIR)" = "1000:1000 750" ] || why="$why; owner/mode $(stat -c '%u:%g %a' $DATADIR)"
  grep -q "\"file_system_id\": \"$FS\"" $DATADIR/.node-agent-storage.json &&
    grep -q '"role": "rpc"' $DATADIR/.node-agent-storage.json || why="$why; sentinel wrong or missing"
  [ -d $DATADIR/geth/chaindata ] || why="$why; geth init did not run on the mount"
  [ -f /tmp/geth.pid ] || why="$why; geth not running"
  grep 'not ready yet' /tmp/$s.log | grep -q 'cannot resolve' || why="$why; no DNS retry logged"
  grep 'not ready yet' /tmp/$s.log | grep -q 'no answer from the mount target within 30s' ||
    why="$why; no killed attempt logged"
  grep -q "creating the role's directory" /tmp/$s.log || why="$why; directory not created by the agent"
  is_mountpoint /run/.node-agent-efs-root && why="$why; root mount left behind"
  if stop_agent; then :; else why="$why; exit $? after SIGTERM"; fi
  if [ -z "$why" ]; then pass $s; else fail $s "$why" /tmp/$s.log; fi
fi
grep 'not ready yet' /tmp/$s.log | sed 's/^.*WARN/NA-QEMU:   retry:/' | head -n 12

# 2. The agent restarts while the file system is mounted: nothing to do, no second mount.
s=restart-finds-it-already-mounted
start_agent /etc/node-agent/rpc.toml /tmp/$s.log
if ! wait_ready /tmp/$s.log 60; then
  fail $s "agent not ready" /tmp/$s.log
else
  why=""
  grep -q 'already mounted' /tmp/$s.log || why="no 'already mounted'"
  [ "$(mounts_at $DATADIR | wc -l)" = 1 ] || why="$why; mounts: $(mounts_at $DATADIR)"
  [ "$(inits)" = 1 ] || why="$why; geth init ran $(inits) times"
  stop_agent || why="$why; exit $? after SIGTERM"
  if [ -z "$why" ]; then pass $s; else fail $s "$why" /tmp/$s.log; fi
fi

# 3. A reboot: the existing subdirectory is mounted again, not created; the sentinel matches.
s=reboot-mounts-the-existing-subdirectory
sum=$(md5sum <$DATADIR/.node-agent-storage.json)
umount $DATADIR
start_agent /etc/node-agent/rpc.toml /tmp/$s.log
if ! wait_ready /tmp/$s.log 60; then
  fail $s "agent not ready" /tmp/$s.log
else
  why=""
  grep -q 'INFO mounted target=' /tmp/$s.log || why="no 'mounted'"
  [ "$(md5sum <$DATADIR/.node-agent-storage.json)" = "$sum" ] || why="$why; sentinel changed"
  grep -q "creating the role's directory" /tmp/$s.log && why="$why; created it again"
  grep -q 'sentinel written' /tmp/$s.log && why="$why; wrote the sentinel again"
  [ "$(mounts_at $DATADIR)" = "nfs4 $NAME:/staging/rpc" ] || why="$why; mounted: '$(mounts_at $DATADIR)'"
  stop_agent || why="$why; exit $? after SIGTERM"
  if [ -z "$why" ]; then pass $s; else fail $s "$why" /tmp/$s.log; fi
fi
umount $DATADIR

# 4. An rpc host pointed at the sealer's directory (the host seeded it with the sealer's sentinel).
expect_refusal rpc-on-the-sealers-directory-is-refused /etc/node-agent/rpc-on-sealer.toml \
  "role sealer" "this host is environment staging, role rpc"

# 5. Another file system id whose name reaches the same data: the sentinel names the real one.
expect_refusal another-file-system-id-is-refused /etc/node-agent/other-fs.toml \
  "file system $FS, but" "file system fs-0fedcba9876543210"

# 6. Something else mounted at the datadir.
s=a-foreign-mount-at-the-datadir-is-refused
mount -t tmpfs impostor $DATADIR
before=$(inits)
node-agent run --config /etc/node-agent/rpc.toml >/dev/null 2>/tmp/$s.log
rc=$?
if [ $rc -eq 1 ] && error_line /tmp/$s.log | grep -qF "is a mount of impostor (tmpfs), not of $NAME:/staging/rpc" &&
  [ "$(inits)" = "$before" ] && [ ! -f /tmp/geth.pid ]; then
  pass $s
  echo "NA-QEMU:   $(error_line /tmp/$s.log)"
else
  fail $s "exit $rc" /tmp/$s.log
fi
umount $DATADIR

# 7. A file system that never becomes reachable: fail at the deadline naming the target; no fallback.
start=$(date +%s)
expect_refusal an-unreachable-file-system-fails-at-the-deadline /etc/node-agent/unreachable.toml \
  "fs-0aaaaaaaaaaaaaaaa.efs.eu-central-1.amazonaws.com:/staging/rpc not mountable" "cannot resolve"
echo "NA-QEMU:   (gave up after $(($(date +%s) - start)) s)"

# 8. A mount target that accepts connections and never answers (port 2050: the host forwards it to a
#    process that only sleeps): the hanging mount(2) is killed at the deadline.
start=$(date +%s)
expect_refusal a-silent-mount-target-is-abandoned-at-the-deadline /etc/node-agent/silent.toml \
  "fs-0bbbbbbbbbbbbbbbb.efs.eu-central-1.amazonaws.com:/staging/rpc not mountable" "no answer from the mount target within"
echo "NA-QEMU:   (gave up after $(($(date +%s) - start)) s)"

# 9. The sealer's lease is fenced. The host switches the Role tag to sealer, then, on CUT-SERVER, makes the
#    NFS server silent (it keeps the connections, answers nothing). Within two lease checks the agent
#    SIGKILLs geth and says so (FENCED); status still answers within a second and calls the storage not
#    answering. Once the server's NFS lease for this client expired, the host's second holder takes the
#    lock and names itself in the lease file; then the server answers again. geth must stay dead while
#    the second holder has the lease (STILL-FENCED), and start again only after it let go (REHELD).
s=sealer-loses-its-lease-geth-is-fenced-until-it-is-held-again
SEALER_CONF=/etc/node-agent/sealer.toml
echo "NA-QEMU: ROLE-SEALER"
sleep 3
rm -f /tmp/geth.pid
start_agent $SEALER_CONF /tmp/$s.log
why=""
if ! wait_ready /tmp/$s.log 90; then
  fail $s "sealer not started" /tmp/$s.log
else
  first_geth=$(cat /tmp/geth.pid)
  grep -q ' pid ' $DATADIR/.node-agent-sealer.lease || why="lease file not written"
  echo "NA-QEMU: CUT-SERVER"
  # Item: the agent never freezes on storage. The probe runs every 2 s and gives 1 s.
  sleep 5
  if timeout 1 node-agent status --json --config $SEALER_CONF >/tmp/$s.status 2>&1; then :; fi
  grep -q '"check_ok": false' /tmp/$s.status && grep -q 'storage not answering' /tmp/$s.status ||
    why="$why; status did not answer within 1 s saying the storage is not answering: $(head -c 300 /tmp/$s.status)"
  i=0
  while ! grep -q 'killed (SIGKILL): fenced' /tmp/$s.log && [ $i -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
  if grep -q 'killed (SIGKILL): fenced' /tmp/$s.log; then
    echo "NA-QEMU: FENCED"
    kill -0 "$first_geth" 2>/dev/null && why="$why; geth $first_geth still alive after the fence"
  else
    why="$why; geth not fenced within 20 s of the cut"
  fi
  # The host restores the server once the second holder has the lease: reading the lease file waits
  # for that (a hard mount), and then names the second holder.
  i=0
  while ! grep -q 'i-0second' $DATADIR/.node-agent-sealer.lease 2>/dev/null && [ $i -lt 240 ]; do sleep 0.5; i=$((i + 1)); done
  grep -q 'i-0second' $DATADIR/.node-agent-sealer.lease || why="$why; the second holder never showed in the lease file"
  sleep 6
  node-agent status --json --config $SEALER_CONF >/tmp/$s.status2 2>&1
  grep -q '"state": "fenced"' /tmp/$s.status2 || why="$why; not fenced while another holds the lease: $(head -c 400 /tmp/$s.status2)"
  [ "$(grep -c ' started child=geth' /tmp/$s.log)" = 1 ] || why="$why; geth started again while another held the lease"
  echo "NA-QEMU: STILL-FENCED"
  i=0
  while ! grep -q 'sealer lease held again' /tmp/$s.log && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
  grep -q 'sealer lease held again' /tmp/$s.log || why="$why; the lease was never held again"
  i=0
  while [ "$(grep -c ' started child=geth' /tmp/$s.log)" -lt 2 ] && [ $i -lt 40 ]; do sleep 0.5; i=$((i + 1)); done
  [ "$(grep -c ' started child=geth' /tmp/$s.log)" = 2 ] || why="$why; geth not started again after the lease came back"
  echo "NA-QEMU: REHELD"
  stop_agent || why="$why; exit $? after SIGTERM"
  if [ -z "$why" ]; then pass $s; else fail $s "$why" /tmp/$s.log; fi
  grep -E 'lease|fenced|storage' /tmp/$s.log | sed 's/^/NA-QEMU:   /' | head -n 12
fi

echo "NA-QEMU: DONE passed=$passed failed=$failed"
