#!/usr/bin/env bash
# Smoke test of the lab's second network mode and of the guest agent: the guest sits on a
# bridge (tap in a network namespace) with two "nodes" (namespaces a and b); a service
# address (VIP) moves from a to b with a gratuitous ARP, and the guest must reach the VIP at
# b's MAC at once, without waiting for its ARP entry to expire.
#
#   twl-br : bridge br0 + tap0 (qemu's NIC)        guest 192.0.2.30 (twl.ip=)
#   twl-a  : eth0 192.0.2.11 (+ VIP 192.0.2.100 at start)
#   twl-b  : eth0 192.0.2.12 (+ VIP after the move)
#
# All addresses live only inside these namespaces (192.0.2.0/24 is TEST-NET-1). Needs root.
# usage: smoke-bridge.sh          env: TWINFILER_LAB_CACHE, GUEST_TIMEOUT_S (default 300)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export TWINFILER_LAB_CACHE=${TWINFILER_LAB_CACHE:-$repo/target/lab}
cache=$TWINFILER_LAB_CACHE

net=192.0.2
vip=$net.100
guest_ip=$net.30
ns_prefix=twl-$$           # per-run names: two runs never share namespaces
garp_count=3
guest_stop_wait_s=30

log() { printf 'smoke-bridge: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"

mkdir -p "$cache"
work=$(mktemp -d "$cache/smoke-bridge.XXXXXX")
sock=$work/agent.sock
guest_pid=""
agent() { "$here/guest-agent.py" "$sock" "$@"; }
cleanup() {
  local rc=$?
  if [ -n "$guest_pid" ] && kill -0 "$guest_pid" 2>/dev/null; then
    timeout 5 "$here/guest-agent.py" "$sock" --quit 2>/dev/null || true
    timeout "$guest_stop_wait_s" tail --pid="$guest_pid" -f /dev/null || kill "$guest_pid" 2>/dev/null || true
  fi
  for n in a b br; do ip netns del "$ns_prefix-$n" 2>/dev/null || true; done
  if [ "$rc" = 0 ]; then rm -rf "$work"; else log "kept $work for inspection"; fi
  exit "$rc"
}
trap cleanup EXIT

"$here/build-guest.sh" >/dev/null

t0=$(date +%s.%N)
for n in br a b; do
  ip netns add "$ns_prefix-$n"
  ip -n "$ns_prefix-$n" link set lo up
done
ip -n "$ns_prefix-br" link add br0 type bridge
ip -n "$ns_prefix-br" link set br0 up
host_octet=10
for n in a b; do
  host_octet=$((host_octet + 1))
  ip link add "v-$n" netns "$ns_prefix-br" type veth peer name eth0 netns "$ns_prefix-$n"
  ip -n "$ns_prefix-br" link set "v-$n" master br0 up
  ip -n "$ns_prefix-$n" addr add "$net.$host_octet/24" dev eth0
  ip -n "$ns_prefix-$n" link set eth0 up
done
ip -n "$ns_prefix-br" tuntap add tap0 mode tap
ip -n "$ns_prefix-br" link set tap0 master br0 up
ip -n "$ns_prefix-a" addr add "$vip/24" dev eth0
mac_of() { ip -n "$ns_prefix-$1" -o link show eth0 | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p'; }
mac_a=$(mac_of a)
mac_b=$(mac_of b)
log "namespaces up in $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-5) s (a $mac_a, b $mac_b)"

echo 'exec twl-agent' > "$work/agent.sh"
ip netns exec "$ns_prefix-br" env GUEST_NET=none GUEST_APPEND="twl.ip=$guest_ip/24" \
  GUEST_LOG="$work/console.log" "$here/run-guest.sh" "$work/agent.sh" \
  -netdev tap,id=net0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=net0 \
  -serial "unix:$sock,server=on,wait=on" &
guest_pid=$!

guest_mac_for_vip() { agent "ip neigh show $vip" | awk '{for (i = 1; i < NF; i++) if ($i == "lladdr") print $(i+1)}'; }

agent --ready "ip -o addr show dev eth0" >&2
agent "ping -c 1 -W 5 $vip" >/dev/null || die "guest cannot reach the VIP on a"
seen=$(guest_mac_for_vip)
[ "$seen" = "$mac_a" ] || die "guest sees the VIP at '$seen', expected a's $mac_a"

# The move, as the cluster will do it: drop on a, raise on b, announce with gratuitous ARP.
# The kernel ignores ARP updates within locktime (1 s) of the last one, so the announcement
# is repeated, spaced (busybox arping -U sends one per second).
t_move=$(date +%s.%N)
ip -n "$ns_prefix-a" addr del "$vip/24" dev eth0
ip -n "$ns_prefix-b" addr add "$vip/24" dev eth0
ip netns exec "$ns_prefix-b" busybox arping -U -q -c "$garp_count" -I eth0 "$vip" || true
log "VIP moved to b, $garp_count gratuitous ARPs sent, in $(echo "$(date +%s.%N) - $t_move" | bc | cut -c1-5) s"

seen=$(guest_mac_for_vip)
[ "$seen" = "$mac_b" ] || die "after the move the guest sees the VIP at '$seen', expected b's $mac_b"
agent "ping -c 1 -W 5 $vip" >/dev/null || die "guest cannot reach the VIP on b"
agent --quit
wait "$guest_pid" || die "guest run failed"
guest_pid=""
log "PASS in $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-6) s"
