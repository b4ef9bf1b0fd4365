#!/usr/bin/env bash
# twinfiler vs NFS-Ganesha, the same NFSv3 client (ours: `twinfiler bench nfs`) against both in
# one run, then both sets of figures side by side with the ratio twinfiler / ganesha.
#
#   ganesha  : Debian's nfs-ganesha with the VFS FSAL on a directory of --dir's file system,
#              NFSv3 over TCP on 127.0.0.1, high fixed ports, export /export. Ganesha refuses
#              to start unless it can register with a portmapper: the one on port 111 is
#              used, or (port 111 free) an rpcbind of ours runs while ganesha does.
#   twinfiler: `twinfiler bench nfs` starts a node and its mirroring partner on loopback
#              (disk files under --dir), exporting its root
#
# usage: scripts/bench-vs-ganesha.sh [--quick]
# env  : BENCH_ROUNDS (default 3): alternating rounds, the table shows medians
#        TWINFILER_BIN (default: cargo build --release, then target/release/twinfiler),
#        TWINFILER_BASELINE_BIN (optional): another twinfiler build (e.g. before a change)
#          measured in the same rounds; the table gains its column and after/before ratio,
#        BENCH_DIR (default /var/tmp/twinfiler-bench: a disk file system, not tmpfs)
# Needs root (ganesha's VFS FSAL uses open_by_handle_at) and the packages nfs-ganesha and
# nfs-ganesha-vfs (tests/vm/install-deps.sh installs them). Prints the two sets and the
# ratios on stdout; the raw lines go to $BENCH_DIR/bench-vs-ganesha-<time>.txt as well.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
quick=()
[ "${1:-}" = --quick ] && quick=(--quick)
rounds=${BENCH_ROUNDS:-3}
bench_dir=${BENCH_DIR:-/var/tmp/twinfiler-bench}
ganesha_nfs_port=21302
ganesha_mount_port=21301
ready_wait_ms=30000
stop_wait_ms=10000

log() { printf 'bench-vs-ganesha: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (ganesha's VFS FSAL)"
command -v ganesha.nfsd >/dev/null || die "ganesha.nfsd missing: run tests/vm/install-deps.sh"
for port in $ganesha_nfs_port $ganesha_mount_port; do
  [ -z "$(ss -Htln "sport = :$port")" ] || die "port $port is in use"
done

bin=${TWINFILER_BIN:-}
if [ -z "$bin" ]; then
  (cd "$repo" && cargo build -q --release -p twinfiler -j2) || die "cargo build failed"
  bin=${CARGO_TARGET_DIR:-$repo/target}/release/twinfiler
fi
[ -x "$bin" ] || die "no twinfiler binary at $bin"
baseline_bin=${TWINFILER_BASELINE_BIN:-}
[ -z "$baseline_bin" ] || [ -x "$baseline_bin" ] || die "no baseline binary at $baseline_bin"

mkdir -p "$bench_dir"
work=$(mktemp -d "$bench_dir/vs-ganesha.XXXXXX")
ganesha_pid=""
rpcbind_pid=""
# Stops one process we started: SIGTERM, bounded wait, then SIGKILL.
stop_pid() {
  local pid=$1 waited_ms=0
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$waited_ms" -lt "$stop_wait_ms" ]; do
    sleep 0.1
    waited_ms=$((waited_ms + 100))
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  stop_pid "$ganesha_pid"
  if [ -n "$rpcbind_pid" ]; then
    stop_pid "$rpcbind_pid"
    rm -f /run/rpcbind.sock   # left behind when killed; would confuse the next rpcbind
  fi
  if [ "$rc" = 0 ]; then rm -rf "$work"; else log "kept $work (ganesha.log)"; fi
  exit "$rc"
}
trap cleanup EXIT

mkdir -p "$work/export" "$work/recovery"
if ! rpcinfo -p 127.0.0.1 >/dev/null 2>&1; then
  [ -z "$(ss -Htln "sport = :111")" ] || die "port 111 is taken by something that is not a portmapper"
  command -v rpcbind >/dev/null || die "rpcbind missing: run tests/vm/install-deps.sh"
  mkdir -p /run/rpcbind
  rpcbind -f > "$work/rpcbind.log" 2>&1 &
  rpcbind_pid=$!
  waited_ms=0
  until rpcinfo -p 127.0.0.1 >/dev/null 2>&1; do
    kill -0 "$rpcbind_pid" 2>/dev/null || die "rpcbind exited"
    [ "$waited_ms" -lt "$ready_wait_ms" ] || die "rpcbind did not answer within $ready_wait_ms ms"
    sleep 0.1
    waited_ms=$((waited_ms + 100))
  done
fi
cat > "$work/ganesha.conf" <<EOF
NFS_CORE_PARAM {
    Protocols = 3;
    Bind_addr = 127.0.0.1;
    NFS_Port = $ganesha_nfs_port;
    MNT_Port = $ganesha_mount_port;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Mount_Path_Pseudo = true;
    Enable_UDP = false;
}
NFSV4 { Graceless = true; RecoveryRoot = "$work/recovery"; }
EXPORT {
    Export_Id = 1;
    Path = "$work/export";
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
waited_ms=0
until [ -n "$(ss -Htln "sport = :$ganesha_nfs_port")" ] && [ -n "$(ss -Htln "sport = :$ganesha_mount_port")" ]; do
  kill -0 "$ganesha_pid" 2>/dev/null || { tail -20 "$work/ganesha.log" >&2; die "ganesha exited"; }
  [ "$waited_ms" -lt "$ready_wait_ms" ] || die "ganesha did not listen within $ready_wait_ms ms"
  sleep 0.1
  waited_ms=$((waited_ms + 100))
done

out=$bench_dir/bench-vs-ganesha-$(date +%Y%m%d-%H%M%S).txt
log "ganesha $(dpkg-query -W -f='${Version}' nfs-ganesha 2>/dev/null || echo '?') up"
# Rounds alternate the two servers, so a noisy neighbour on a shared machine hits both alike;
# the table shows the median of each figure over the rounds.
for round in $(seq 1 "$rounds"); do
  log "round $round/$rounds: ganesha"
  "$bin" bench nfs "${quick[@]}" --dir "$bench_dir" --label ganesha --server 127.0.0.1 \
    --mount-port "$ganesha_mount_port" --nfs-port "$ganesha_nfs_port" --export /export |
    tee -a "$work/ganesha.txt"
  log "round $round/$rounds: twinfiler (node + mirroring partner)"
  "$bin" bench nfs "${quick[@]}" --dir "$bench_dir" --label twinfiler | tee -a "$work/twinfiler.txt"
  if [ -n "$baseline_bin" ]; then
    log "round $round/$rounds: baseline twinfiler ($baseline_bin)"
    "$baseline_bin" bench nfs "${quick[@]}" --dir "$bench_dir" --label baseline |
      tee -a "$work/baseline.txt"
  fi
done
touch "$work/baseline.txt"
cat "$work/ganesha.txt" "$work/twinfiler.txt" "$work/baseline.txt" > "$out"

# Side by side: figure, ganesha, twinfiler (medians), ratio; with a baseline also its
# median and twinfiler / baseline.
echo
if [ -s "$work/baseline.txt" ]; then
  printf '%-26s %14s %14s %8s %14s %8s   (median of %s rounds, %s)\n' figure ganesha twinfiler ratio \
    baseline vs_base "$rounds" "$(date -u +%FT%TZ)"
else
  printf '%-26s %14s %14s %8s   (median of %s rounds, %s)\n' figure ganesha twinfiler ratio "$rounds" "$(date -u +%FT%TZ)"
fi
awk '
  function median(list,   v, n, i, j, x) {
    n = split(list, v, " ")
    for (i = 2; i <= n; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] + 0 > x + 0; j--) v[j + 1] = v[j]; v[j + 1] = x }
    return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  FILENAME == ARGV[1] { sub(/^ganesha\./, "", $1); if (!($1 in g)) order[++n] = $1; g[$1] = g[$1] " " $2; u[$1] = $3; next }
  FILENAME == ARGV[2] { sub(/^twinfiler\./, "", $1); t[$1] = t[$1] " " $2; next }
  { sub(/^baseline\./, "", $1); b[$1] = b[$1] " " $2; based = 1 }
  END {
    for (i = 1; i <= n; i++) {
      k = order[i]
      gm = median(g[k]); tm = (k in t) ? median(t[k]) : "-"
      r = (gm > 0 && (k in t)) ? sprintf("%.2fx", tm / gm) : "-"
      line = sprintf("%-26s %14.1f %14s %8s", k, gm, (k in t) ? sprintf("%.1f", tm) : "-", r)
      if (based) {
        bm = (k in b) ? median(b[k]) : "-"
        rb = ((k in b) && bm > 0 && (k in t)) ? sprintf("%.2fx", tm / bm) : "-"
        line = line sprintf(" %14s %8s", (k in b) ? sprintf("%.1f", bm) : "-", rb)
      }
      printf "%s  %s\n", line, u[k]
    }
  }' "$work/ganesha.txt" "$work/twinfiler.txt" "$work/baseline.txt" | tee -a "$out"
log "figures kept in $out"
