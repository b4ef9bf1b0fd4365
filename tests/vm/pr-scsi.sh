#!/usr/bin/env bash
# SCSI-3 persistent reservations against a real target, with our code (cluster::reserve::scsi).
#
# tgtd on the host exports one LUN on 127.0.0.1; one guest sees it through two qemu iSCSI
# initiators (two scsi-block paths with different initiator names = two I_T nexuses, i.e. two
# "nodes"), and runs `pr-tool scenario` (cluster/examples/pr-tool.rs, built static for musl):
# reserve, conflict, write fenced, preempt, unit attention, conflict after preemption, release.
#
# usage: tests/vm/pr-scsi.sh            (root; needs tgt, qemu-system-x86, rustup target
#                                        x86_64-unknown-linux-musl; the guest is built on demand)
# env:   PR_ISCSI_PORT (default 3262), PR_TGT_CONTROL_PORT (default 62): a private tgtd that does
#        not collide with a system one on 3260 / control port 0.
# exit:  0 all checks passed; 1 a check failed; 2 setup missing; 125 the guest never reported.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
port=${PR_ISCSI_PORT:-3262}
ctl=${PR_TGT_CONTROL_PORT:-62}
iqn=iqn.2026-01.twinfiler.test:pr-shared
tgtd_ready_tries_max=50   # x 0.1 s
log() { printf 'pr-scsi: %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "needs root (tgtd)"; exit 2; }
for t in tgtd tgtadm qemu-system-x86_64 cargo; do
  command -v "$t" >/dev/null || { log "missing $t (apt-get install tgt qemu-system-x86)"; exit 2; }
done
# Debian ships qemu's iSCSI driver as a loadable module in qemu-block-extra.
if ! compgen -G "/usr/lib/*/qemu/block-iscsi.so" >/dev/null; then
  log "qemu lacks the iscsi block driver (install qemu-block-extra, from bookworm-backports to match qemu)"
  exit 2
fi
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  log "missing Rust target (rustup target add x86_64-unknown-linux-musl)"
  exit 2
fi

work=$(mktemp -d /tmp/pr-scsi.XXXXXX)
tgtd_pid=
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
  if [ -n "$tgtd_pid" ]; then
    # tgtd ignores SIGTERM and, in the foreground, outlives `--op delete --mode system`: take
    # it offline (no new logins), then kill it; its LUN is a scratch file.
    tgtadm -C "$ctl" --op update --mode sys --name State -v offline >/dev/null 2>&1 || true
    kill -KILL "$tgtd_pid" 2>/dev/null || true
    wait "$tgtd_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# 1. Our test binary, static so the busybox guest can run it.
log "building pr-tool (x86_64-unknown-linux-musl)"
(cd "$repo" && cargo build -q --release -p cluster --example pr-tool \
  --target x86_64-unknown-linux-musl --config 'profile.release.strip="symbols"')
tool="${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-musl/release/examples/pr-tool"
[ -x "$tool" ] || { log "pr-tool not built at $tool"; exit 2; }

# fw_cfg blobs are read through port IO byte by byte (minutes for a few MiB under TCG): hand
# the binary over as a raw virtio disk instead, and its size in the guest script.
tool_bytes=$(stat -c %s "$tool")
cp "$tool" "$work/tool.img"
truncate -s %1M "$work/tool.img"

# 2. The target: one 64 MiB LUN backed by a file.
truncate -s 64M "$work/lun.img"
tgtd -f -C "$ctl" --iscsi "portal=127.0.0.1:$port" >"$work/tgtd.log" 2>&1 &
tgtd_pid=$!
for i in $(seq 1 "$tgtd_ready_tries_max"); do
  tgtadm -C "$ctl" --op show --mode sys >/dev/null 2>&1 && break
  [ "$i" = "$tgtd_ready_tries_max" ] && { log "tgtd did not start"; cat "$work/tgtd.log" >&2; exit 2; }
  sleep 0.1
done
tgtadm -C "$ctl" --lld iscsi --op new --mode target --tid 1 -T "$iqn"
tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$work/lun.img"
tgtadm -C "$ctl" --lld iscsi --op bind --mode target --tid 1 -I ALL

# 3. The guest side: find the two paths, run the scenario.
{ echo "tool_bytes=$tool_bytes"; cat <<'GUEST'
devof() { ls "/sys/bus/scsi/devices/0:0:$1:0/block/"; }
A=/dev/$(devof 0)
B=/dev/$(devof 1)
echo "path A=$A path B=$B"
head -c "$tool_bytes" /dev/vda > /tmp/pr-tool
chmod +x /tmp/pr-tool
/tmp/pr-tool scenario "$A" "$B"
GUEST
} > "$work/guest.sh"

path() {
  echo "driver=iscsi,node-name=$1,transport=tcp,portal=127.0.0.1:$port,target=$iqn,lun=1,initiator-name=iqn.2026-01.twinfiler.test:$2,cache.direct=on"
}
rc=0
GUEST_NET=none GUEST_TIMEOUT_S=${GUEST_TIMEOUT_S:-180} "$here/run-guest.sh" "$work/guest.sh" \
  -drive "file=$work/tool.img,format=raw,if=virtio,readonly=on" \
  -device virtio-scsi-pci,id=scsi0 \
  -blockdev "$(path pa node-a)" -blockdev "$(path pb node-b)" \
  -device scsi-block,bus=scsi0.0,drive=pa,scsi-id=0,lun=0,share-rw=on,werror=report,rerror=report \
  -device scsi-block,bus=scsi0.0,drive=pb,scsi-id=1,lun=0,share-rw=on,werror=report,rerror=report \
  || rc=$?
log "guest exit $rc"
exit "$rc"
