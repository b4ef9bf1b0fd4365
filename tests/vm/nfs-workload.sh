#!/bin/sh
# Guest side of nfs-kernel.sh: POSIX workload steps run by the kernel NFSv3 client, one step
# per call, driven from the host through the command channel (twl-agent):
#
#   sh /run/fw_cfg/workload STEP [ARGS]
#
# Busybox ash only. Every step prints "step STEP: ..." lines and exits non-zero on the first
# failed check with a line "FAIL: <what>" naming the exact check. Files the host verifies
# afterwards are listed with their sha256 in $work/manifest.sha256 (paths relative to the
# export root).
#
# The export is mounted at /mnt with root_squash: root in the guest is "nobody" (65534) on
# the server, so the workload lives in /mnt/work, a directory the host made world-writable.
# -e: any command that fails ends the step (the EXIT trap names it); checks name themselves.
# shellcheck disable=SC2164 # cd failing ends the step through -e
set -eu

mnt=/mnt
work=$mnt/work
user_uid=1000
user_name=tester
nobody_uid=65534
holder_wait_s=600        # how long the restart holder waits for the host's go
holder_result_wait_s=300 # how long hold_check waits for the holder's verdict
big_file_mib_default=1024
dir_entries=10000

step=${1:?usage: nfs-workload.sh STEP}
shift
say() { echo "step $step: $*"; }
reported=0
fail() { echo "FAIL: step $step: $*"; reported=1; exit 1; }
on_exit() {
  rc=$?
  [ "$rc" = 0 ] || [ "$reported" = 1 ] || echo "FAIL: step $step: a command failed (exit $rc), see above"
}
trap on_exit EXIT
# check DESCRIPTION COMMAND...: runs COMMAND, fails the step naming DESCRIPTION if it fails.
check() {
  what=$1
  shift
  "$@" || fail "$what"
}
# eq DESCRIPTION GOT EXPECTED
eq() { [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
since() { echo "$(uptime_s) - $1" | bc; }
# Runs a command as the unprivileged test user (busybox su, as root, asks no password).
as_user() { su -s /bin/sh "$user_name" -c "$1"; }
manifest() { (cd "$mnt" && sha256sum "$@") >> "$work/manifest.sha256"; }

case $step in
prepare)
  # twinfiler: / is exported without root squash; make $work there for the squashed mount.
  modprobe nfsv3
  mkdir -p /admin
  mount -t nfs -o vers=3 10.0.2.2:/ /admin || { dmesg | tail -15; fail "mount -o vers=3 10.0.2.2:/"; }
  mkdir -p /admin/export/work
  chmod 1777 /admin/export/work
  eq "mode of /admin/export/work" "$(stat -c %a /admin/export/work)" 1777
  umount /admin
  say ok
  ;;

mount)
  # No port options: the kernel asks the server's portmapper for MOUNT and NFS.
  modprobe nfsv3
  mkdir -p $mnt
  t0=$(uptime_s)
  opts=${1:-vers=3}
  mount -t nfs -o "$opts" 10.0.2.2:/export $mnt || { dmesg | tail -15; fail "mount -o $opts 10.0.2.2:/export"; }
  say "mounted in $(since "$t0") s: $(grep " $mnt " /proc/mounts)"
  check "$work exists (the host prepares it)" test -d $work
  grep -q "^$user_name:" /etc/passwd ||
    echo "$user_name:x:$user_uid:$user_uid::/tmp:/bin/sh" >> /etc/passwd
  grep -q "^$user_name:" /etc/group || echo "$user_name:x:$user_uid:" >> /etc/group
  : > $work/manifest.sha256
  ;;

files)
  cd $work
  mkdir files && cd files
  # create / write / read
  echo hello > a
  eq "read back a" "$(cat a)" hello
  # append
  echo world >> a
  eq "append: line count" "$(wc -l < a)" 2
  eq "append: second line" "$(sed -n 2p a)" world
  # truncate down, then up (the new tail reads as zeros)
  truncate -s 3 a
  eq "truncate -s 3: size" "$(stat -c %s a)" 3
  eq "truncate -s 3: content" "$(cat a)" hel
  truncate -s 100000 a
  eq "truncate -s 100000: size" "$(stat -c %s a)" 100000
  eq "truncate up: zero tail" "$(tail -c 99997 a | tr -d '\0' | wc -c)" 0
  # overwrite in the middle without truncating
  printf XYZ | dd of=a bs=1 seek=50000 conv=notrunc 2>/dev/null
  eq "overwrite in place: size" "$(stat -c %s a)" 100000
  eq "overwrite in place: bytes" "$(dd if=a bs=1 skip=50000 count=3 2>/dev/null)" XYZ
  # O_TRUNC on an existing file
  echo short > a
  eq "O_TRUNC rewrite" "$(cat a)" short
  # a multi-block file of known content
  seq 1 200000 > seq.txt
  eq "seq.txt size" "$(stat -c %s seq.txt)" 1288895
  manifest work/files/a work/files/seq.txt
  say ok
  ;;

dirs)
  cd $work
  mkdir -p d1/d2/d3
  check "mkdir -p d1/d2/d3" test -d d1/d2/d3
  echo x > d1/d2/d3/f
  if rmdir d1/d2/d3 2>/dev/null; then fail "rmdir of a non-empty directory succeeded"; fi
  rm d1/d2/d3/f
  rmdir d1/d2/d3 d1/d2
  check "rmdir d1/d2/d3 d1/d2" test ! -e d1/d2
  if mkdir d1 2>/dev/null; then fail "mkdir of an existing name succeeded"; fi
  rmdir d1
  check "rmdir d1" test ! -e d1
  say ok
  ;;

rename)
  cd $work
  mkdir ren && cd ren
  echo A > r1
  echo B > r2
  mv r1 r2
  check "rename source gone" test ! -e r1
  eq "rename over an existing file" "$(cat r2)" A
  mkdir src dst
  echo C > src/f
  mv src/f dst/g
  eq "rename across directories" "$(cat dst/g)" C
  mkdir src/sub
  echo D > src/sub/h
  mv src/sub dst/sub
  eq "rename of a directory" "$(cat dst/sub/h)" D
  check "renamed directory left its parent" test ! -e src/sub
  mkdir empty
  mv empty dst/sub2
  check "rename a directory over nothing" test -d dst/sub2
  manifest work/ren/r2 work/ren/dst/g work/ren/dst/sub/h
  say ok
  ;;

links)
  cd $work
  mkdir links && cd links
  echo linked > orig
  ln orig hard
  eq "hard link count" "$(stat -c %h orig)" 2
  eq "hard link same inode" "$(stat -c %i hard)" "$(stat -c %i orig)"
  echo more >> hard
  eq "write through a hard link" "$(cat orig)" "$(printf 'linked\nmore')"
  rm orig
  eq "hard link after unlink of the other name" "$(stat -c %h hard)" 1
  eq "content after unlink of the other name" "$(head -1 hard)" linked
  ln -s hard soft
  eq "readlink" "$(readlink soft)" hard
  eq "read through a symlink" "$(head -1 soft)" linked
  check "symlink is a link" test -L soft
  ln -s /nonexistent/target dangling
  eq "dangling symlink target" "$(readlink dangling)" /nonexistent/target
  check "dangling symlink does not resolve" test ! -e dangling
  mkdir realdir
  echo in > realdir/f
  ln -s realdir dirlink
  eq "read through a directory symlink" "$(cat dirlink/f)" in
  manifest work/links/hard
  say ok
  ;;

perms_root)
  # root_squash: root here is nobody there.
  cd $work
  mkdir perms && cd perms
  echo r > rootfile
  eq "file created by root is owned by nobody (root_squash)" "$(stat -c %u rootfile)" $nobody_uid
  chmod 600 rootfile
  eq "chmod 600 by the (squashed) owner" "$(stat -c %a rootfile)" 600
  chmod 644 rootfile
  # chown to root: refused, or (as nfs-ganesha does) the new owner is squashed too; never
  # a file owned by root.
  chown 0 rootfile 2>/dev/null || true
  eq "owner after chown 0 by a squashed root" "$(stat -c %u rootfile)" $nobody_uid
  if chown $user_uid rootfile 2>/dev/null; then fail "chown to $user_uid succeeded for a squashed root"; fi
  eq "owner unchanged after the failed chown" "$(stat -c %u rootfile)" $nobody_uid
  chmod 777 $work/perms
  say ok
  ;;

perms_user)
  cd $work/perms
  out=$(as_user "
    set -e
    cd $work/perms
    echo u > userfile
    stat -c %u userfile
    chmod 640 userfile
    stat -c %a userfile
    if chown 0 userfile 2>/dev/null; then echo chown-succeeded; fi
    if echo x >> rootfile 2>/dev/null; then echo write-to-foreign-file-succeeded; fi
    if chmod 666 rootfile 2>/dev/null; then echo chmod-of-foreign-file-succeeded; fi
    mkdir private
    chmod 700 private
    echo secret > private/s
  ") || fail "user script: $out"
  eq "user: owner, mode, refusals" "$(echo "$out" | tr '\n' ' ')" "$user_uid 640 "
  # root is squashed, so the user's private directory is closed to it as well.
  if cat private/s 2>/dev/null; then fail "squashed root read a 0700 directory of another user"; fi
  eq "user file gid" "$(stat -c %g userfile)" $user_uid
  say ok
  ;;

bigdir)
  cd $work
  mkdir bigdir && cd bigdir
  t0=$(uptime_s)
  i=0
  while [ $i -lt $dir_entries ]; do
    : > "entry-$i"
    i=$((i + 1))
  done
  say "created $dir_entries files in $(since "$t0") s"
  cd /
  echo 3 > /proc/sys/vm/drop_caches   # list from the server, not from the dentry cache
  t0=$(uptime_s)
  # shellcheck disable=SC2012 # ls is the point: the count a user sees
  n=$(ls $work/bigdir | wc -l)
  eq "ls count of bigdir" "$n" $dir_entries
  # shellcheck disable=SC2010 # ls -l is the point: READDIRPLUS plus a stat of every entry
  n=$(ls -l $work/bigdir | grep -c ' entry-')
  eq "ls -l count of bigdir" "$n" $dir_entries
  say "listed twice in $(since "$t0") s"
  ;;

bigfile)
  mib=${1:-$big_file_mib_default}
  cd $work
  t0=$(uptime_s)
  dd if=/dev/urandom of=big.bin bs=1M count="$mib" 2>/dev/null
  sync
  t_w=$(since "$t0")
  eq "big.bin size" "$(stat -c %s big.bin)" $((mib * 1048576))
  echo 3 > /proc/sys/vm/drop_caches   # read back from the server
  t0=$(uptime_s)
  manifest work/big.bin
  say "$mib MiB: write+sync $t_w s, read+sha256 $(since "$t0") s"
  ;;

hold_start)
  # A process keeps a file open and its cwd inside the mount across a node restart.
  cd $work
  mkdir restart && cd restart
  dd if=/dev/urandom of=held.bin bs=64k count=64 2>/dev/null
  echo before > before.txt
  sync
  sha256sum < held.bin | cut -d' ' -f1 > /tmp/held.sha
  rm -f /tmp/holder.state /tmp/holder.result /tmp/go
  cat > /tmp/holder.sh <<EOF
# -e: any command that fails ends the step (the EXIT trap names it); checks name themselves.
# shellcheck disable=SC2164 # cd failing ends the step through -e
set -eu
cd $work/restart || { echo "FAIL: cd"; exit 1; }
exec 3< held.bin
echo ready > /tmp/holder.state
i=0
while [ ! -e /tmp/go ] && [ \$i -lt $((holder_wait_s * 10)) ]; do sleep 0.1; i=\$((i + 1)); done
[ -e /tmp/go ] || { echo "FAIL: no go from the host in $holder_wait_s s"; exit 1; }
echo 3 > /proc/sys/vm/drop_caches
sha256sum <&3 > /tmp/held.got || { echo "FAIL: read from the open fd"; exit 1; }
got=\$(cut -d' ' -f1 /tmp/held.got)
[ "\$got" = "\$(cat /tmp/held.sha)" ] || { echo "FAIL: open fd content \$got"; exit 1; }
echo after > after.txt || { echo "FAIL: write in cwd"; exit 1; }
[ "\$(cat after.txt)" = after ] || { echo "FAIL: read back in cwd"; exit 1; }
[ "\$(cat before.txt)" = before ] || { echo "FAIL: read of a file written before the restart"; exit 1; }
[ "\$(ls | sort | tr '\n' ' ')" = "after.txt before.txt held.bin " ] || { echo "FAIL: ls in cwd: \$(ls | tr '\n' ' ')"; exit 1; }
[ "\$(pwd)" = "$work/restart" ] || { echo "FAIL: pwd"; exit 1; }
echo PASS
EOF
  (sh /tmp/holder.sh > /tmp/holder.result 2>&1; echo "rc=$?" >> /tmp/holder.result) &
  i=0
  while [ ! -e /tmp/holder.state ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  check "holder started" test -e /tmp/holder.state
  say "holder ready (fd open on $work/restart/held.bin, cwd $work/restart)"
  ;;

hold_check)
  touch /tmp/go
  i=0
  while ! grep -q '^rc=' /tmp/holder.result 2>/dev/null && [ $i -lt $((holder_result_wait_s * 10)) ]; do
    sleep 0.1
    i=$((i + 1))
  done
  cat /tmp/holder.result || fail "the holder left no result"
  grep -q '^PASS' /tmp/holder.result || fail "holder after the restart: $(grep FAIL /tmp/holder.result)"
  if dmesg | grep -qi stale; then fail "kernel log mentions a stale handle: $(dmesg | grep -i stale | tail -3)"; fi
  # The whole tree is still reachable by path after the restart.
  eq "seq.txt after the restart" "$(sha256sum < $work/files/seq.txt | cut -d' ' -f1)" \
    "$(seq 1 200000 | sha256sum | cut -d' ' -f1)"
  manifest work/restart/after.txt work/restart/held.bin
  say ok
  ;;

umount)
  cd /
  umount $mnt || fail "umount"
  say ok
  ;;

*)
  fail "unknown step"
  ;;
esac
