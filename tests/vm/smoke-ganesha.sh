#!/usr/bin/env bash
# End-to-end smoke test of the VM lab: a real Linux NFSv3 client (the guest's kernel) mounts an
# export of NFS-Ganesha (VFS FSAL) on the host *through the portmapper*, with no port options:
#
#   host : rpcbind on port 111, ganesha.nfsd on 127.0.0.1 (NFS 2049, MOUNT on a port that
#          only rpcbind knows)
#   guest: mount -t nfs -o vers=3 10.0.2.2:/export /mnt     (10.0.2.2 = host loopback, user net)
#          writes a file of known content, reads one the host wrote, checks both checksums
#   host : checks the checksum of the guest's file in the exported directory
#
# Needs root and ports 111 and 2049 free. Starts and stops its own daemons (also on failure),
# so a later test can bind 111/2049 itself. Every wait is bounded.
# usage: smoke-ganesha.sh        env: TWINFILER_LAB_CACHE, SMOKE_MOUNT_OPTS (default vers=3),
#                                     GUEST_TIMEOUT_S (guest run bound, default 300)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export TWINFILER_LAB_CACHE=${TWINFILER_LAB_CACHE:-$repo/target/lab}
cache=$TWINFILER_LAB_CACHE

daemon_ready_wait_ms=30000
daemon_stop_wait_ms=10000
poll_interval_ms=100
mount_opts=${SMOKE_MOUNT_OPTS:-vers=3}
file_lines=100000   # `seq 1 N` is the known content: 588,895 bytes for N = 100,000

log() { printf 'smoke-ganesha: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (ganesha's VFS FSAL uses open_by_handle_at)"
for tool in rpcbind rpcinfo ganesha.nfsd qemu-system-x86_64 ss; do
  command -v "$tool" >/dev/null || die "$tool missing: run tests/vm/install-deps.sh"
done
for port in 111 2049; do
  holder=$(ss -Htlnp "sport = :$port" | head -1)
  [ -z "$holder" ] || die "port $port is in use ($holder); this test needs it free"
done

mkdir -p "$cache"
work=$(mktemp -d "$cache/smoke-ganesha.XXXXXX")
export_dir=$work/export
mkdir -p "$export_dir" "$work/recovery" "$work/rpcbind"
rpcbind_pid=""
ganesha_pid=""

# wait_ready PID CMD...: waits (bounded) until CMD succeeds; 1 on timeout or if PID died.
wait_ready() {
  local pid=$1 waited_ms=0
  shift
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || return 1
    [ "$waited_ms" -lt "$daemon_ready_wait_ms" ] || return 1
    sleep "0.$(printf '%03d' "$poll_interval_ms")"
    waited_ms=$((waited_ms + poll_interval_ms))
  done
}
# Stops one process we started: SIGTERM, bounded wait, then SIGKILL.
stop_pid() {
  local pid=$1 waited_ms=0
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$waited_ms" -lt "$daemon_stop_wait_ms" ]; do
    sleep 0.1
    waited_ms=$((waited_ms + 100))
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  # ganesha first, so it can unregister from the rpcbind we are about to stop.
  stop_pid "$ganesha_pid"
  stop_pid "$rpcbind_pid"
  # rpcbind leaves its unix socket behind when killed; a stale one would confuse the next one.
  [ -z "$rpcbind_pid" ] || rm -f /run/rpcbind.sock
  # Whatever we started must be gone: a later test (our own portmapper) needs 111 and 2049.
  for port in 111 2049; do
    if [ -n "$(ss -Htln "sport = :$port")" ]; then
      log "FAIL: port $port still in use after stopping our daemons"
      rc=1
    fi
  done
  if [ "$rc" = 0 ]; then rm -rf "$work"; else log "kept $work for inspection"; fi
  exit "$rc"
}
trap cleanup EXIT

t_start=$(date +%s.%N)
elapsed() { echo "$(date +%s.%N) - $1" | bc | cut -c1-6; }

# The guest first, so the daemons do not run during a cold build.
guest_dir=$("$here/build-guest.sh")
log "guest ready in $(elapsed "$t_start") s ($guest_dir)"

# rpcbind in the foreground so we own its pid. Not "-h 127.0.0.1": Debian's rpcbind
# 1.2.6 aborts with a double free with -h, so it listens on all addresses while the test runs.
t_daemons=$(date +%s.%N)
mkdir -p /run/rpcbind
# -d logs every lookup: the proof that the guest asked the portmapper. -f is still needed:
# -d alone daemonizes (and sends the log to /dev/null).
rpcbind -f -d > "$work/rpcbind.log" 2>&1 &
rpcbind_pid=$!
wait_ready "$rpcbind_pid" rpcinfo -p 127.0.0.1 ||
  { cat "$work/rpcbind.log" >&2; die "rpcbind did not come up within ${daemon_ready_wait_ms} ms"; }

cat > "$work/ganesha.conf" <<EOF
# NFSv3 only, loopback only; MOUNT gets whatever port ganesha picks and registers with
# rpcbind, so the client can only find it through the portmapper.
NFS_CORE_PARAM {
    Protocols = 3;
    Bind_addr = 127.0.0.1;
    NFS_Port = 2049;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Mount_Path_Pseudo = true;
}
NFSV4 {
    Graceless = true;
    RecoveryRoot = "$work/recovery";
}
EXPORT {
    Export_Id = 1;
    Path = "$export_dir";
    Pseudo = "/export";
    Protocols = 3;
    Transports = TCP;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    FSAL { Name = VFS; }
}
LOG { Default_Log_Level = EVENT; }
EOF
ganesha.nfsd -F -f "$work/ganesha.conf" -L "$work/ganesha.log" -p "$work/ganesha.pid" \
  > "$work/ganesha.out" 2>&1 &
ganesha_pid=$!
registered() { rpcinfo -p 127.0.0.1 | awk '$1==100003 {n=1} $1==100005 {m=1} END {exit !(n && m)}'; }
wait_ready "$ganesha_pid" registered || { tail -20 "$work/ganesha.log" >&2; die "ganesha did not register NFS and MOUNT"; }
log "rpcbind + ganesha up in $(elapsed "$t_daemons") s; registrations:"
rpcinfo -p 127.0.0.1 | sed 's/^/  /' >&2

seq 1 "$file_lines" > "$export_dir/from-host.txt"
expected_sha=$(seq 1 "$file_lines" | sha256sum | cut -d' ' -f1)

cat > "$work/guest.sh" <<EOF
modprobe nfsv3
mkdir -p /mnt
t0=\$(cut -d' ' -f1 /proc/uptime)
mount -t nfs -o $mount_opts 10.0.2.2:/export /mnt || { dmesg | tail -15; exit 1; }
echo "guest: mount took \$(echo "\$(cut -d' ' -f1 /proc/uptime) - \$t0" | bc) s"
echo "guest: \$(grep ' /mnt ' /proc/mounts)"
seq 1 $file_lines > /mnt/from-guest.txt
sync
got=\$(sha256sum < /mnt/from-host.txt | cut -d' ' -f1)
echo "guest: from-host.txt sha256 \$got"
[ "\$got" = "$expected_sha" ]
umount /mnt
echo "guest: unmounted"
EOF

t_guest=$(date +%s.%N)
guest_rc=0
GUEST_LOG=$work/console.log "$here/run-guest.sh" "$work/guest.sh" || guest_rc=$?
log "guest run (boot + mount + IO + poweroff) took $(elapsed "$t_guest") s, rc $guest_rc"
sed -n 's/^\(twinfiler-guest\|guest\): /  guest console: /p' "$work/console.log" >&2
[ "$guest_rc" = 0 ] || { tail -30 "$work/console.log" >&2; die "guest script failed (rc $guest_rc)"; }

# The guest had to ask rpcbind for MOUNT (100005, on a port ganesha picked at random) and NFS
# (100003); rpcbind's debug log names each lookup with its caller (slirp: 127.0.0.1).
lookups=$(grep -E '(GETADDR|GETPORT|GETVERSADDR).*\((100005|100003), 3' "$work/rpcbind.log" || true)
printf '%s\n' "$lookups" | sed 's/^/  rpcbind: /' >&2
for prog in 100005 100003; do
  grep -q "($prog, 3" <<< "$lookups" || die "the guest never asked rpcbind for program $prog"
done

host_sha=$(sha256sum < "$export_dir/from-guest.txt" | cut -d' ' -f1)
[ "$host_sha" = "$expected_sha" ] || die "from-guest.txt sha256 $host_sha, expected $expected_sha"
log "from-guest.txt sha256 matches ($host_sha)"
log "PASS in $(elapsed "$t_start") s (mount options: $mount_opts)"
