#!/usr/bin/env bash
# Boots the test guest under qemu (TCG), runs SCRIPT inside it and exits with SCRIPT's exit code.
#
# usage: run-guest.sh SCRIPT [extra qemu args...]
#   SCRIPT runs in the guest as `sh -e SCRIPT` (busybox ash) from /root, as root. Extra files
#   for the guest: -fw_cfg name=opt/twinfiler/NAME,file=PATH  ->  /run/fw_cfg/NAME in the guest.
#
# env:
#   TWINFILER_LAB_CACHE  cache root (default <repo>/target/lab); the guest is built on demand
#   GUEST_TIMEOUT_S      whole-run bound, boot included (default 300)
#   GUEST_MEM_MB         guest memory (default 512)       GUEST_SMP   vCPUs (default 1)
#   GUEST_NET            user (default): qemu user networking, the host's 127.0.0.1 is 10.0.2.2
#                        in the guest, the guest is 10.0.2.15; none: no NIC (pass your own, e.g.
#                        -netdev tap,... -device virtio-net-pci,netdev=... plus GUEST_APPEND=twl.ip=...)
#   GUEST_APPEND         extra kernel command line (twl.ip=A/P, twl.gw=A, twl.shell)
#   GUEST_LOG            serial console log (default $cache/logs/guest-<time>-<pid>.log)
#   TWINFILER_LAB_ACCEL  tcg (default) or kvm. /dev/kvm on PVM hosts (kvm_pvm) hangs a stock
#                        kernel, so kvm is only used when asked for explicitly.
#
# exit: the script's exit code; 125 when the guest never reported one (panic, hang, timeout,
# qemu failed to start). The console log path and the wall time go to stderr.
set -uo pipefail

guest_lost_rc=125
console_logs_kept=50   # default-named console logs kept in $cache/logs (the newest ones)
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export TWINFILER_LAB_CACHE=${TWINFILER_LAB_CACHE:-$repo/target/lab}
cache=$TWINFILER_LAB_CACHE

log() { printf 'run-guest: %s\n' "$*" >&2; }
[ $# -ge 1 ] && [ -f "$1" ] || { log "usage: run-guest.sh SCRIPT [qemu args...]"; exit 2; }
script=$1
shift

timeout_s=${GUEST_TIMEOUT_S:-300}
mem_mb=${GUEST_MEM_MB:-512}
smp=${GUEST_SMP:-1}
accel=${TWINFILER_LAB_ACCEL:-tcg}
cpu=max
[ "$accel" = kvm ] && cpu=host

guest_dir=$("$here/build-guest.sh") || { log "guest build failed"; exit "$guest_lost_rc"; }
mkdir -p "$cache/logs"
# shellcheck disable=SC2012 # our own file names: no spaces or newlines
ls -1t "$cache"/logs/guest-*.log 2>/dev/null | tail -n +"$console_logs_kept" | xargs -r rm -f
console_log=${GUEST_LOG:-$cache/logs/guest-$(date +%Y%m%d-%H%M%S)-$$.log}
: > "$console_log"

net_args=()
case ${GUEST_NET:-user} in
  user) net_args=(-netdev "user,id=net0" -device "virtio-net-pci,netdev=net0") ;;
  none) ;;
  *) log "GUEST_NET must be user or none"; exit 2 ;;
esac

t0=$(date +%s.%N)
# -k: qemu gets SIGKILL 5 s after the SIGTERM of the timeout, so a wedged qemu cannot hang CI.
# Run in the background so that a TERM/INT sent to this script reaches qemu too (timeout
# forwards it): a caller that kills run-guest.sh must not leave an orphaned qemu behind.
timeout -k 5 "$timeout_s" qemu-system-x86_64 \
  -accel "$accel" -cpu "$cpu" -machine q35 -m "$mem_mb" -smp "$smp" \
  -nodefaults -no-user-config -display none -monitor none \
  -serial "file:$console_log" \
  -kernel "$guest_dir/vmlinuz" -initrd "$guest_dir/initramfs.cpio.gz" \
  -append "console=ttyS0 panic=-1 quiet loglevel=3 ${GUEST_APPEND:-}" -no-reboot \
  -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
  -fw_cfg "name=opt/twinfiler/script,file=$script" \
  "${net_args[@]}" "$@" </dev/null &
qemu_pid=$!
trap 'kill -TERM "$qemu_pid" 2>/dev/null' TERM INT HUP
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
# A trapped signal interrupts wait (status > 128); then wait for qemu's real exit.
while kill -0 "$qemu_pid" 2>/dev/null; do wait "$qemu_pid" && qemu_rc=0 || qemu_rc=$?; done
wall_s=$(echo "$(date +%s.%N) - $t0" | bc | cut -c1-6)

# The console marker is authoritative; isa-debug-exit's status is a cross-check only.
guest_rc=$(sed -n 's/^TWINFILER_GUEST_EXIT=\([0-9]*\).*/\1/p' "$console_log" | tail -1)
if [ -z "$guest_rc" ]; then
  reason="qemu exit $qemu_rc"
  [ "$qemu_rc" = 124 ] && reason="timeout after ${timeout_s} s"
  log "guest never reported an exit code ($reason, ${wall_s} s); last console lines:"
  tail -n 30 "$console_log" | sed 's/^/  | /' >&2
  log "console log: $console_log"
  exit "$guest_lost_rc"
fi
if [ "$qemu_rc" != $(( ((guest_rc << 1) | 1) & 255 )) ]; then
  log "warning: qemu exit $qemu_rc does not match guest exit $guest_rc"
fi
log "accel=$accel guest_rc=$guest_rc wall=${wall_s}s console=$console_log"
exit "$guest_rc"
