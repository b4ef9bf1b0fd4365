#!/usr/bin/env bash
# Builds the test guest: the Debian kernel and a small busybox initramfs carrying the kernel
# modules for virtio (net, blk, scsi), the NFSv3 client, CIFS, fw_cfg, ext4 and SCSI generic,
# plus an /init that runs a test script handed over through fw_cfg and reports its exit code.
#
# usage: build-guest.sh            prints the build directory (holding vmlinuz + initramfs.cpio.gz)
# env  : TWINFILER_LAB_CACHE       cache root (default: <repo>/target/lab)
#
# Inputs come from install-deps.sh: the kernel and kmod .debs in $cache/debs and the host's
# busybox-static and rpcbind. The build is cached in $cache/guest/<key>, the key being a hash of this
# script (module list and /init are in it) and of every input file, so a second run costs a
# few hashes and a rebuild happens only when something it is made of changed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${TWINFILER_LAB_CACHE:-$repo/target/lab}
debs_dir=$cache/debs
busybox=/bin/busybox
build_lock_wait_s=600
# rpcbind runs in the guest because the kernel's lockd registers NLM with the *local*
# portmapper at mount time: without one, a mount without "nolock" fails with ECONNREFUSED
# ("lockd_up: makesock failed, error=-111"). Taken from the host (Debian 12 = the guest's libc).
rpcbind_bin=/usr/sbin/rpcbind

log() { printf 'build-guest: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# Modules wanted in the guest; their dependency closure is computed with the kernel's own
# modules.dep. virtio_scsi/sd_mod/sg serve the shared-disk (SCSI reservation) tests, cifs the
# SMB tests; nfsv3 pulls nfs, lockd, sunrpc, grace, fscache, netfs.
modules_wanted="virtio_pci virtio_net virtio_blk virtio_scsi virtio_console sd_mod sg
  qemu_fw_cfg nfsv3 cifs ext4 crc32c_generic af_packet"
# CIFS asks for hashes/ciphers at mount time through request_module (-> /sbin/modprobe), not
# through modules.dep, so these directories ship whole.
module_dirs_whole="kernel/crypto kernel/arch/x86/crypto kernel/lib/crypto kernel/fs/nls"

kernel_deb=$(compgen -G "$debs_dir/linux-image-*-amd64_*.deb" | sort | tail -1 || true)
kmod_deb=$(compgen -G "$debs_dir/kmod_*.deb" | sort | tail -1 || true)
[ -n "$kernel_deb" ] && [ -n "$kmod_deb" ] && [ -x "$busybox" ] && [ -x "$rpcbind_bin" ] &&
  command -v cpio >/dev/null ||
  die "missing inputs (kernel/kmod .deb in $debs_dir, $busybox, $rpcbind_bin, cpio): run tests/vm/install-deps.sh as root"

# Cache key: names and sizes of the .debs (their names carry the Debian version) and the
# content of the small inputs. Hashing the 70 MB kernel .deb would add ~0.2 s to every run.
key=$( { sha256sum < "$0"; sha256sum < "$busybox"; sha256sum < "$rpcbind_bin"
         for f in "$kernel_deb" "$kmod_deb"; do echo "$(basename "$f") $(stat -c %s "$f")"; done
       } | sha256sum | cut -c1-16)
out=$cache/guest/$key
if [ -s "$out/initramfs.cpio.gz" ] && [ -s "$out/vmlinuz" ]; then
  echo "$out"
  exit 0
fi

# One builder at a time (parallel test runs share the cache); whoever waited finds it built.
mkdir -p "$cache/guest"
exec 9> "$cache/guest/.lock"
flock -w "$build_lock_wait_s" 9 || die "another build held $cache/guest/.lock for ${build_lock_wait_s} s"
if [ -s "$out/initramfs.cpio.gz" ] && [ -s "$out/vmlinuz" ]; then
  echo "$out"
  exit 0
fi

t0=$(date +%s.%N)
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "building guest $key (kernel $(basename "$kernel_deb"))"

dpkg -x "$kernel_deb" "$work/kernel"
dpkg -x "$kmod_deb" "$work/kmod"
kver=$(ls "$work/kernel/lib/modules")
[ "$(echo "$kver" | wc -l)" = 1 ] || die "expected one kernel version in $kernel_deb, got: $kver"
ksrc=$work/kernel/lib/modules/$kver
# kmod picks its personality from argv[0]; the .deb's own sbin links are absolute (/bin/kmod).
mkdir -p "$work/kmod/tools"
for tool in depmod modprobe; do ln -s ../bin/kmod "$work/kmod/tools/$tool"; done
depmod=$work/kmod/tools/depmod
modprobe=$work/kmod/tools/modprobe
[ -f "$ksrc/modules.dep" ] || "$depmod" -b "$work/kernel" "$kver"

root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,mnt,etc,root,lib/modules/"$kver"}

# busybox: applet links are made at boot (busybox --install -s), keeping the archive small.
cp "$busybox" "$root/bin/busybox"

# Module closure. `modprobe --show-depends` prints "insmod PATH" per needed file, in load order,
# and "builtin NAME" for what is compiled in.
for m in $modules_wanted; do
  "$modprobe" -d "$work/kernel" -S "$kver" --show-depends "$m" ||
    die "module $m not found in $kver"
done | awk '$1 == "insmod" {print $2}' | sort -u | while read -r ko; do
  rel=${ko#"$work/kernel/"}
  mkdir -p "$root/$(dirname "$rel")"
  cp "$ko" "$root/$rel"
done
for d in $module_dirs_whole; do
  [ -d "$ksrc/$d" ] || continue
  mkdir -p "$root/lib/modules/$kver/$d"
  cp -a "$ksrc/$d/." "$root/lib/modules/$kver/$d/"
done
cp "$ksrc"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kver/"
"$depmod" -b "$root" "$kver"

# rpcbind with the shared libraries it links (as resolved on the host) and what libtirpc and
# its privilege drop read: /etc/netconfig and a passwd entry for _rpc.
copy_with_libs() {
  local bin=$1 dest=$2 lib
  mkdir -p "$root/$(dirname "$dest")"
  cp -L "$bin" "$root/$dest"
  for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$root/$(dirname "$lib")"
    cp -L "$lib" "$root/$lib"
  done
}
copy_with_libs "$rpcbind_bin" /sbin/rpcbind
cp /etc/netconfig "$root/etc/netconfig"
# rpcbind looks up the "sunrpc" service by name: without it, it only opens its unix socket.
printf 'sunrpc\t111/tcp\tportmapper\nsunrpc\t111/udp\tportmapper\n' > "$root/etc/services"
printf 'ip\t0\tIP\ntcp\t6\tTCP\nudp\t17\tUDP\n' > "$root/etc/protocols"
# The kernel's rpcbind client tries /var/run/rpcbind.sock before 127.0.0.1:111.
mkdir -p "$root/var"
ln -s /run "$root/var/run"
printf 'root:x:0:0:root:/root:/bin/sh\n_rpc:x:102:65534::/run/rpcbind:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"

# /sbin/mount.nfs: busybox mount runs "mount.TYPE" helpers. Busybox has no NFS support of its
# own, it hands the option string to the kernel, and the kernel's text parser needs the server
# address as addr= (it resolves no host names). This helper adds addr= (from "HOST:/path")
# and calls mount again with -i (no helper). The kernel then asks the server's portmapper for
# the MOUNT and NFS ports when mountport=/port= are not given, as mount.nfs(8) would.
cat > "$root/sbin/mount.nfs" <<'EOF'
#!/bin/sh
# mount.nfs HOST:/PATH DIR [-o OPTIONS] (as called by busybox mount)
src=$1; dir=$2; shift 2
opts=""
while [ $# -gt 0 ]; do
  case $1 in
    -o) opts=$2; shift 2 ;;
    -o*) opts=${1#-o}; shift ;;
    *) shift ;;   # -s, -f, -n, -v: nothing to do for the kernel
  esac
done
host=${src%%:*}
case ",$opts," in
  *,addr=*) ;;
  *) opts="${opts:+$opts,}addr=$host" ;;
esac
exec mount -i -t nfs -o "$opts" "$src" "$dir"
EOF
chmod 755 "$root/sbin/mount.nfs"

# /sbin/twl-agent: a command channel on the second serial port (ttyS1), for tests that must
# act on the host between guest steps (restart a node, move an address). A test script that
# is just `exec twl-agent` hands the guest over to the host; guest-agent.py is the host side.
# Protocol, one command at a time: the host writes one line (a shell command); the guest runs
# it and writes its output, then the line "__TWL_RC__=<exit code>". The host line
# "__TWL_QUIT__" ends the agent (exit 0) after it answered "__TWL_BYE__" (the host must not
# close first: qemu drops input still queued in a socket the client has closed). The guest
# announces itself with "__TWL_READY__".
cat > "$root/sbin/twl-agent" <<'EOF'
#!/bin/sh
set +e          # a failing command is a result to report, not the end of the agent
port=/dev/ttyS1
stty -F $port raw -echo 115200
exec 3<>$port
echo "__TWL_READY__" >&3
while IFS= read -r cmd <&3; do
  if [ "$cmd" = "__TWL_QUIT__" ]; then echo "__TWL_BYE__" >&3; break; fi
  sh -c "$cmd" </dev/null >&3 2>&1
  rc=$?
  printf '\n__TWL_RC__=%d\n' "$rc" >&3
done
exit 0
EOF
chmod 755 "$root/sbin/twl-agent"

# /init: brings the guest up, runs the test script, reports its exit code twice:
#   - a marker line "TWINFILER_GUEST_EXIT=<rc>" on the serial console (authoritative), and
#   - isa-debug-exit at I/O port 0xf4: qemu then exits with status (rc << 1) | 1.
# Kernel command line knobs: twl.ip=ADDR/PREFIX (default 10.0.2.15/24, qemu user net),
# twl.gw=ADDR (default: no route, so the guest reaches only its own subnet), twl.shell
# (interactive shell on the console when no script is given).
cat > "$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
ln -s /bin/busybox /sbin/modprobe       # the kernel's request_module() calls /sbin/modprobe
export PATH=/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
uptime_s() { cut -d' ' -f1 /proc/uptime; }
arg() { sed -n "s/.*\\<$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }
echo "twinfiler-guest: init at $(uptime_s) s, kernel $(uname -r)"
for m in virtio_pci virtio_net virtio_blk virtio_scsi sd_mod sg qemu_fw_cfg af_packet; do
  modprobe "$m" 2>/dev/null || echo "twinfiler-guest: modprobe $m failed"
done
ip link set lo up
if ip link show eth0 >/dev/null 2>&1; then
  ip link set eth0 up
  ip addr add "$(arg twl.ip | grep . || echo 10.0.2.15/24)" dev eth0
  gw=$(arg twl.gw)
  [ -n "$gw" ] && ip route add default via "$gw"
fi
# A local portmapper, as on any NFS client host: lockd registers with it at mount time.
mkdir -p /run/rpcbind
chown _rpc /run/rpcbind
rpcbind || echo "twinfiler-guest: rpcbind failed to start"
# Every fw_cfg blob under opt/twinfiler/ is copied to /run/fw_cfg/ (the script and any files
# the host passes with -fw_cfg name=opt/twinfiler/NAME,file=...).
fw=/sys/firmware/qemu_fw_cfg/by_name/opt/twinfiler
mkdir -p /run/fw_cfg
if [ -d $fw ]; then
  for d in $fw/*; do cat "$d/raw" > "/run/fw_cfg/$(basename "$d")"; done
fi
if [ -f /run/fw_cfg/script ]; then
  echo "twinfiler-guest: running test script at $(uptime_s) s"
  cd /root
  sh -e /run/fw_cfg/script
  rc=$?
elif grep -q '\<twl.shell\>' /proc/cmdline; then
  setsid cttyhack sh
  rc=$?
else
  echo "twinfiler-guest: no test script (fw_cfg opt/twinfiler/script)"
  rc=99
fi
cd /
sync
echo "TWINFILER_GUEST_EXIT=$rc at $(uptime_s) s"
printf "\\$(printf %o $((rc & 255)))" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
poweroff -f
EOF
chmod 755 "$root/init"

# newc archive, gzip -1: the fastest to build and still quick for the kernel to unpack.
mkdir -p "$work/out"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) |
  gzip -1 > "$work/out/initramfs.cpio.gz"
cp "$work/kernel/boot/vmlinuz-$kver" "$work/out/vmlinuz"
cat > "$work/out/BUILD_INFO" <<EOF
key=$key
kernel=$kver ($(basename "$kernel_deb"))
kmod=$(basename "$kmod_deb")
busybox=$("$busybox" 2>&1 | head -1)
modules=$(find "$root/lib/modules" -name '*.ko' | wc -l)
initramfs_bytes=$(stat -c %s "$work/out/initramfs.cpio.gz")
EOF

# Publish; drop older builds (each is ~9 MB and useless once the key moved on).
rm -rf "$out"
mv "$work/out" "$out"
for old in "$cache"/guest/*; do
  [ "$old" = "$out" ] || rm -rf "$old"
done
log "built in $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-5) s: $(tr '\n' ' ' < "$out/BUILD_INFO")"
echo "$out"
