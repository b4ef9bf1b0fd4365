#!/usr/bin/env bash
# The Linux kernel NFSv3 client against a twinfiler node: a TCG guest mounts the node's export
# with no port options (through the node's portmapper), runs a POSIX workload
# (nfs-workload.sh, one step at a time over the guest's command channel), the host checks
# checksums and the big listing through another NFS client, then restarts the node while a
# guest process keeps a file open and its cwd in the mount; that process must carry on (no
# ESTALE). The host's client is twinfiler's own (server/examples/nfscat.rs), not libnfs'
# nfs-cat: that one mounts the file's parent directory, and a twinfiler export cannot be
# mounted below its root.
#
#   host : twinfiler node (release build) on 127.0.0.1: portmapper 111, MOUNT, NFS 2049;
#          export /export with root_squash (the workload), / without (the guest's "prepare"
#          step makes /export/work world-writable through it)
#   guest: mount -t nfs -o vers=3 10.0.2.2:/export /mnt    (10.0.2.2 = host loopback)
#
# usage: nfs-kernel.sh
# env  : NFS_KERNEL_SERVER   twinfiler (default) or ganesha (the same workload against
#                            nfs-ganesha's VFS FSAL: a reference for the test itself)
#        NFS_KERNEL_BIG_MIB  size of the big file (default 1024 = 1 GiB)
#        TWINFILER_BIN       node binary (default: cargo build --release, target/release);
#                            nfscat is taken from examples/ next to it
#        NFS_KERNEL_BREAK_HANDLES=1  twinfiler: swap the pair key during the restart, so every
#                            handle the guest holds turns stale: the restart step must then
#                            FAIL (a check that the test can catch ESTALE)
#        TWINFILER_LAB_CACHE, GUEST_TIMEOUT_S (whole guest run, default 1800)
# Needs root and ports 111 and 2049 free. Every wait is bounded; exits non-zero on the first
# failed step, naming it ("FAIL: step ...").
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export TWINFILER_LAB_CACHE=${TWINFILER_LAB_CACHE:-$repo/target/lab}
cache=$TWINFILER_LAB_CACHE
server_kind=${NFS_KERNEL_SERVER:-twinfiler}
big_mib=${NFS_KERNEL_BIG_MIB:-1024}
export GUEST_TIMEOUT_S=${GUEST_TIMEOUT_S:-1800}

daemon_ready_wait_ms=60000
daemon_stop_wait_ms=30000
poll_interval_ms=100
step_timeout_s=900
export_name=/export
nobody_uid=65534
node_disk_mib=$(( big_mib + 1024 ))   # per data disk (3): room for the big file and more

log() { printf 'nfs-kernel: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
elapsed() { echo "$(date +%s.%N) - $1" | bc | cut -c1-6; }

[ "$(id -u)" = 0 ] || die "must run as root (ports 111/2049, ganesha's open_by_handle_at)"
for tool in qemu-system-x86_64 ss rpcinfo python3 bc; do
  command -v "$tool" >/dev/null || die "$tool missing: run tests/vm/install-deps.sh"
done
for port in 111 2049; do
  holder=$(ss -Htlnp "sport = :$port" | head -1)
  [ -z "$holder" ] || die "port $port is in use ($holder); this test needs it free"
done

mkdir -p "$cache"
work=$(mktemp -d "$cache/nfs-kernel.XXXXXX")
sock=$work/agent.sock
server_pid=""
rpcbind_pid=""
guest_pid=""

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
# Stops one process we started: SIGTERM, bounded wait, then SIGKILL. Returns 1 if it had to
# be killed.
stop_pid() {
  local pid=$1 waited_ms=0
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$waited_ms" -lt "$daemon_stop_wait_ms" ]; do
    sleep 0.1
    waited_ms=$((waited_ms + 100))
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
  fi
  wait "$pid" 2>/dev/null || true
}

# ---- the server under test -------------------------------------------------------------

portmap_has_nfs() {
  rpcinfo -p 127.0.0.1 | awk '$1==100003 {n=1} $1==100005 {m=1} END {exit !(n && m)}'
}

# twinfiler: one standalone node; its state (disk files, nvlog) lives in $work/node and
# survives the restart.
# NVRAM stand-in: memory that survives the node process, as NVRAM would (removed at the end).
nvram_region=/dev/shm/twinfiler-nfs-kernel-$$.nvram
twinfiler_setup() {
  mkdir -p "$work/node"
  # A fresh key per run (mode 0600, as the node wants it).
  head -c 32 /dev/urandom > "$work/node/pair.key"
  chmod 600 "$work/node/pair.key"
  cat > "$work/node/node.toml" <<EOF
# Written by tests/vm/nfs-kernel.sh: a standalone node on loopback, standard ports, so the
# guest's kernel finds MOUNT and NFS through the portmapper.
name = "kernel-test"
state_dir = "$work/node/state"
pair_key_file = "$work/node/pair.key"

[aggregate]
disks_dir = "$work/node/disks"

[aggregate.create]
data_disks = 3
disk_mib = $node_disk_mib

[nvram]
region_path = "$nvram_region"
half_mib = 64

[nfs]
bind = "127.0.0.1"
portmap_port = 111
mount_port = 20048
nfs_port = 2049

# The guest's connections come through qemu's user network: from 127.0.0.1, unprivileged
# source ports (hence insecure). /export squashes root; / (no squash) lets the guest prepare
# /export/work for the squashed workload.
[[export]]
path = "$export_name"
rules = ["*(rw,root_squash,insecure)"]

[[export]]
path = "/"
rules = ["*(rw,no_root_squash,insecure)"]
EOF
}
twinfiler_start() {
  "$twinfiler_bin" node --config "$work/node/node.toml" >> "$work/node.log" 2>&1 &
  server_pid=$!
  wait_ready "$server_pid" portmap_has_nfs ||
    { tail -30 "$work/node.log" >&2; die "node did not serve portmap + MOUNT + NFS within ${daemon_ready_wait_ms} ms"; }
}
twinfiler_stop() { stop_pid "$server_pid" || die "node ignored SIGTERM for ${daemon_stop_wait_ms} ms"; server_pid=""; }
# The workload directory must be world-writable: root in the guest is squashed.
# (done by the guest through the no_root_squash export of /: step "prepare")
twinfiler_prepare() { :; }

# ganesha: rpcbind + ganesha.nfsd with the VFS FSAL on $work/export, as smoke-ganesha.sh.
ganesha_setup() {
  for tool in rpcbind rpcinfo ganesha.nfsd; do
    command -v "$tool" >/dev/null || die "$tool missing: run tests/vm/install-deps.sh"
  done
  mkdir -p "$work/export" "$work/recovery" /run/rpcbind
  rpcbind -f > "$work/rpcbind.log" 2>&1 &
  rpcbind_pid=$!
  wait_ready "$rpcbind_pid" rpcinfo -p 127.0.0.1 || die "rpcbind did not come up"
  cat > "$work/ganesha.conf" <<EOF
NFS_CORE_PARAM {
    Protocols = 3;
    Bind_addr = 127.0.0.1;
    NFS_Port = 2049;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Mount_Path_Pseudo = true;
}
NFSV4 { Graceless = true; RecoveryRoot = "$work/recovery"; }
EXPORT {
    Export_Id = 1;
    Path = "$work/export";
    Pseudo = "$export_name";
    Protocols = 3;
    Transports = TCP;
    Access_Type = RW;
    Squash = Root_Squash;
    Anonymous_uid = $nobody_uid;
    Anonymous_gid = $nobody_uid;
    SecType = sys;
    FSAL { Name = VFS; }
}
LOG { Default_Log_Level = EVENT; }
EOF
}
ganesha_start() {
  ganesha.nfsd -F -f "$work/ganesha.conf" -L "$work/ganesha.log" -p "$work/ganesha.pid" \
    >> "$work/ganesha.out" 2>&1 &
  server_pid=$!
  wait_ready "$server_pid" portmap_has_nfs || { tail -20 "$work/ganesha.log" >&2; die "ganesha did not register"; }
}
ganesha_stop() { stop_pid "$server_pid" || die "ganesha ignored SIGTERM"; server_pid=""; }
# ganesha exports a host directory: prepared on the host.
ganesha_prepare() {
  mkdir -p "$work/export/work"
  chmod 1777 "$work/export/work"
}

case $server_kind in
  twinfiler | ganesha) ;;
  *) die "NFS_KERNEL_SERVER must be twinfiler or ganesha" ;;
esac
server_setup() { "${server_kind}_setup"; }
server_start() { "${server_kind}_start"; }
server_stop() { "${server_kind}_stop"; }
server_prepare() { "${server_kind}_prepare"; }

cleanup() {
  local rc=$?
  [ -z "$guest_pid" ] || { kill -TERM "$guest_pid" 2>/dev/null || true; wait "$guest_pid" 2>/dev/null || true; }
  stop_pid "$server_pid" || true
  stop_pid "$rpcbind_pid" || true
  rm -f "$nvram_region"
  [ -z "$rpcbind_pid" ] || rm -f /run/rpcbind.sock
  for port in 111 2049; do
    if [ -n "$(ss -Htln "sport = :$port")" ]; then
      log "FAIL: port $port still in use after stopping our daemons"
      rc=1
    fi
  done
  if [ "$rc" = 0 ]; then rm -rf "$work"; else log "kept $work for inspection (node.log, console.log)"; fi
  exit "$rc"
}
trap cleanup EXIT

# ---- the run ------------------------------------------------------------------------

twinfiler_bin=${TWINFILER_BIN:-}
if [ -z "$twinfiler_bin" ]; then
  log "building the node and nfscat (cargo build --release -p twinfiler)"
  (cd "$repo" && cargo build -q --release -p twinfiler --bin twinfiler --example nfscat -j2) ||
    die "cargo build failed"
  twinfiler_bin=${CARGO_TARGET_DIR:-$repo/target}/release/twinfiler
fi
nfscat=$(dirname "$twinfiler_bin")/examples/nfscat
[ -x "$twinfiler_bin" ] || die "no node binary at $twinfiler_bin"
[ -x "$nfscat" ] || die "no nfscat at $nfscat (cargo build --release -p twinfiler --example nfscat)"

t_start=$(date +%s.%N)
"$here/install-deps.sh" >/dev/null 2>&1 || true   # no-op when everything is present
guest_dir=$("$here/build-guest.sh")
log "guest ready in $(elapsed "$t_start") s ($guest_dir)"
server_setup
t=$(date +%s.%N)
server_start
log "$server_kind up in $(elapsed "$t") s"
server_prepare

echo 'exec twl-agent' > "$work/agent.sh"
GUEST_LOG=$work/console.log "$here/run-guest.sh" "$work/agent.sh" \
  -fw_cfg "name=opt/twinfiler/workload,file=$here/nfs-workload.sh" \
  -serial "unix:$sock,server=on,wait=on" > "$work/run-guest.out" 2>&1 &
guest_pid=$!

# guest STEP [ARGS]: one workload step in the guest; its output goes to the log.
first_step=1
guest() {
  local t rc=0 ready=()
  t=$(date +%s.%N)
  [ "$first_step" = 1 ] && ready=(--ready)
  first_step=0
  python3 "$here/guest-agent.py" "${ready[@]}" --timeout-s "$step_timeout_s" "$sock" \
    "sh /run/fw_cfg/workload $*" > "$work/step.out" 2>&1 || rc=$?
  sed 's/^/  guest| /' "$work/step.out" >&2
  [ "$rc" = 0 ] || { tail -20 "$work/console.log" >&2; die "guest step '$*' failed (rc $rc)"; }
  log "step $1 done in $(elapsed "$t") s"
}
# host_sha PATH: sha256 of PATH (relative to the export) read by the host's NFS client.
host_sha() {
  local sum
  sum=$("$nfscat" 127.0.0.1 "$export_name" "$1" | sha256sum) || die "host: nfscat of $1 failed"
  echo "${sum%% *}"
}

[ "$server_kind" = twinfiler ] && guest prepare
guest mount
guest files
guest dirs
guest rename
guest links
guest perms_root
guest perms_user
guest bigdir
guest bigfile "$big_mib"

# Host side: the same bytes through another client.
t=$(date +%s.%N)
"$nfscat" 127.0.0.1 "$export_name" work/manifest.sha256 > "$work/manifest.sha256" ||
  die "host: nfscat of the manifest failed"
while read -r sha path; do
  got=$(host_sha "$path")
  [ "$got" = "$sha" ] || die "host: sha256 of $path is $got, the guest saw $sha"
done < "$work/manifest.sha256"
"$nfscat" --ls 127.0.0.1 "$export_name" work/bigdir > "$work/bigdir.ls" || die "host: listing work/bigdir failed"
n=$(grep -c '^entry-' "$work/bigdir.ls" || true)
[ "$n" = 10000 ] || die "host: READDIR of work/bigdir shows $n entries, expected 10000"
log "host: $(wc -l < "$work/manifest.sha256") checksums and the 10000-entry listing match ($(elapsed "$t") s)"

# Restart with a file open and the cwd in the mount.
guest hold_start
t=$(date +%s.%N)
server_stop
if [ "${NFS_KERNEL_BREAK_HANDLES:-0}" = 1 ] && [ "$server_kind" = twinfiler ]; then
  log "NFS_KERNEL_BREAK_HANDLES: new pair key, so the guest's handles go stale"
  head -c 32 /dev/urandom > "$work/node/pair.key"
fi
server_start
log "$server_kind restarted in $(elapsed "$t") s"
guest hold_check
"$nfscat" 127.0.0.1 "$export_name" work/manifest.sha256 > "$work/manifest.sha256" ||
  die "host: nfscat of the manifest after the restart failed"
for path in work/restart/after.txt work/restart/held.bin; do
  sha=$(awk -v p="$path" '$2 == p {print $1}' "$work/manifest.sha256")
  got=$(host_sha "$path")
  if [ -z "$sha" ] || [ "$got" != "$sha" ]; then
    die "host: sha256 of $path after the restart is $got, the guest saw '$sha'"
  fi
done
guest umount

python3 "$here/guest-agent.py" --quit "$sock" > /dev/null 2>&1 || die "guest agent did not quit"
rc=0
wait "$guest_pid" || rc=$?
guest_pid=""
[ "$rc" = 0 ] || { cat "$work/run-guest.out" >&2; die "guest exit $rc"; }
log "PASS against $server_kind in $(elapsed "$t_start") s (big file $big_mib MiB)"
