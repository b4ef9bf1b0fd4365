#!/usr/bin/env bash
# Installs what the VM lab needs on a Debian 12 (bookworm) machine, as root, unattended.
#
#   host packages : busybox-static cpio rpcbind nfs-ganesha nfs-ganesha-vfs libnfs-utils tgt
#                   qemu-system-x86 qemu-block-extra (from bookworm-backports, see below)
#   guest debs    : the Debian kernel image and kmod, only *downloaded* into
#                   $TWINFILER_LAB_CACHE/debs (build-guest.sh unpacks them with dpkg -x);
#                   neither is installed on the host.
#
# Idempotent: when every package is installed and the debs are present it does no network
# access at all and returns in well under a second.
#
# Why backports through private lists: the machine ships qemu-utils 10.x from
# bookworm-backports; bookworm's own qemu-system-x86 (7.2) would force qemu-utils back down.
# We resolve qemu-system-x86 against a private copy of the Debian sources plus
# bookworm-backports, with its own package lists under the cache dir, so /etc/apt is untouched.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${TWINFILER_LAB_CACHE:-$repo/target/lab}
apt_dir=$cache/apt
debs_dir=$cache/debs

# Bounds: the dpkg lock may be held by another apt run on a shared machine.
dpkg_lock_wait_s=300
apt_step_timeout_s=1200

host_packages="busybox-static cpio libkmod2 rpcbind nfs-ganesha nfs-ganesha-vfs libnfs-utils tgt"
backports_packages="qemu-system-x86 qemu-block-extra"

export DEBIAN_FRONTEND=noninteractive
log() { printf 'install-deps: %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
command -v apt-get >/dev/null || { log "needs a Debian (apt) machine"; exit 1; }

is_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

missing_host=""
for p in $host_packages; do is_installed "$p" || missing_host="$missing_host $p"; done
missing_bpo=""
for p in $backports_packages; do is_installed "$p" || missing_bpo="$missing_bpo $p"; done
have_debs=1
for pattern in 'linux-image-*-amd64_*.deb' 'kmod_*.deb'; do
  compgen -G "$debs_dir/$pattern" >/dev/null || have_debs=0
done

if [ -z "$missing_host$missing_bpo" ] && [ "$have_debs" = 1 ]; then
  log "everything present (cache $cache)"
  exit 0
fi

# Private apt configuration: the machine's Debian sources + bookworm-backports.
mkdir -p "$apt_dir/lists/partial" "$apt_dir/sources.list.d"
if [ ! -s "$apt_dir/sources.list.d/backports.sources" ]; then
  if [ -f /etc/apt/sources.list ]; then
    grep -h '^deb ' /etc/apt/sources.list > "$apt_dir/sources.list.d/system.list" || true
  fi
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$apt_dir/sources.list.d/"
  fi
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $3 ~ /^bookworm$/{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  cat > "$apt_dir/sources.list.d/backports.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi
lab_apt() {
  timeout "$apt_step_timeout_s" apt-get -q -o DPkg::Lock::Timeout="$dpkg_lock_wait_s" \
    -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$apt_dir/sources.list.d" \
    -o Dir::State::Lists="$apt_dir/lists" "$@"
}

t0=$(date +%s)
daemons_before=$(pgrep -x ganesha.nfsd; pgrep -x rpcbind; pgrep -x tgtd) || true
log "apt-get update (private lists in $apt_dir)"
lab_apt update >/dev/null

if [ -n "$missing_host" ]; then
  log "installing$missing_host"
  # shellcheck disable=SC2086 # a list of package names
  lab_apt install -y --no-install-recommends $missing_host >/dev/null
fi
if [ -n "$missing_bpo" ]; then
  log "installing$missing_bpo from bookworm-backports"
  # shellcheck disable=SC2086 # a list of package names
  lab_apt install -y --no-install-recommends -t bookworm-backports $missing_bpo >/dev/null
fi

if [ "$have_debs" = 0 ]; then
  # The kernel ABI package that the linux-image-amd64 meta package points at today.
  kernel_pkg=$(lab_apt -o Debug::NoLocking=1 install -s linux-image-amd64 2>/dev/null \
    | awk '$1=="Inst" && $2 ~ /^linux-image-[0-9].*-amd64$/{print $2; exit}')
  [ -n "$kernel_pkg" ] || kernel_pkg=$(apt-cache -o Dir::Etc::SourceList=/dev/null \
    -o Dir::Etc::SourceParts="$apt_dir/sources.list.d" -o Dir::State::Lists="$apt_dir/lists" \
    depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$kernel_pkg" ] || { log "cannot resolve the Debian kernel package"; exit 1; }
  log "downloading $kernel_pkg kmod into $debs_dir"
  mkdir -p "$debs_dir"
  # Download into a scratch dir first so a half-finished download never looks complete.
  tmp=$(mktemp -d "$cache/debs.tmp.XXXXXX")
  (cd "$tmp" && lab_apt -o APT::Sandbox::User=root download "$kernel_pkg" kmod >/dev/null)
  chmod 644 "$tmp"/*.deb
  mv "$tmp"/*.deb "$debs_dir/"
  rmdir "$tmp"
fi

# The packages' maintainer scripts may have started daemons (sysv init scripts on machines
# without systemd). rpcbind and ganesha hold ports 111/2049 that our own node also wants, tgtd
# holds 3260; the tests start what they need themselves.
for pid in $(pgrep -x ganesha.nfsd; pgrep -x rpcbind; pgrep -x tgtd); do
  case " ${daemons_before//$'\n'/ } " in *" $pid "*) continue ;; esac
  log "stopping $(cat "/proc/$pid/comm" 2>/dev/null) (pid $pid), started by its package install"
  kill "$pid" 2>/dev/null || true
done

log "done in $(( $(date +%s) - t0 )) s"
