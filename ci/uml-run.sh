#!/bin/bash
# ci/uml-run.sh — run one command in a throw-away User-Mode Linux guest whose cgroup
# hierarchy is pure v2 (cpu io memory pids enabled) with a subtree delegated to a normal user.
#
#   ci/uml-run.sh [--user UID[:GID]] [--mem 1G] [--cwd DIR] [--cow DIR]... -- COMMAND [ARG...]
#
# Why: hosts like our CI machines are cgroup v1/v2 hybrids (no v2 controllers), and KVM guests
# do not boot there. UML is a Linux kernel running as a normal process: it boots in ~3 s.
# Needs: apt-get install user-mode-linux busybox-static
#
# Guest: host / read-only (hostfs) under a tmpfs overlay (writes vanish); fresh tmpfs on /tmp,
# /run, /var/tmp, /dev/shm; --cow DIR (and the cwd, if under one of those) stays visible
# copy-on-write. cgroup2 at /sys/fs/cgroup; $SANDBOX_UML_CGROUP (/sys/fs/cgroup/delegated) is
# owned by the user; the command starts in $SANDBOX_UML_CGROUP/main.
# Exit status: the command's; 125 when the guest itself failed (its console log is printed).
set -u

if [ "$$" != 1 ] || [ -z "${sbx_uml_dir:-}" ]; then
  # ------------------------------------------------------------------- host side
  user=1001; mem=1G; cwd=$PWD; cow=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --user) user=$2; shift 2;;
      --mem) mem=$2; shift 2;;
      --cwd) cwd=$(readlink -f "$2"); shift 2;;
      --cow) cow+=("$(readlink -f "$2")"); shift 2;;
      --) shift; break;;
      *) echo "uml-run: unknown option $1" >&2; exit 125;;
    esac
  done
  [ $# -gt 0 ] || { echo "usage: $0 [opts] -- command..." >&2; exit 125; }
  command -v linux.uml >/dev/null || { echo "uml-run: apt-get install user-mode-linux busybox-static" >&2; exit 125; }
  [ -x /bin/busybox ] || { echo "uml-run: apt-get install busybox-static" >&2; exit 125; }
  self=$(readlink -f "$0")
  d=$(mktemp -d /tmp/uml-run.XXXXXX) || exit 125
  chmod 700 "$d"
  cow+=("$cwd")
  {
    export -p | grep -v -E '^declare -x (HOME|USER|LOGNAME|PWD|OLDPWD|SHLVL|_)='
    CMD=("$@"); declare -p CMD
    printf 'G_USER=%q\nG_CWD=%q\n' "$user" "$cwd"
    declare -p cow | sed 's/^declare -a cow=/G_COW=/'
  } > "$d/env"
  # The guest console goes to a log; its tty1/tty2 carry the command's stdout/stderr.
  linux.uml mem="$mem" umid="sbx$$" uml_dir="$d" rootfstype=hostfs rootflags=/ ro quiet \
    init="$self" sbx_uml_dir="$d" con=null con0=null,fd:3 con1=null,fd:1 con2=null,fd:2 ssl=null \
    3>"$d/console.log" </dev/null &
  pid=$!
  trap 'kill -KILL -- -$pid $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$d"; exit 124' INT TERM HUP
  wait $pid
  trap - INT TERM HUP
  rc=125
  [ -s "$d/rc" ] && rc=$(cat "$d/rc")
  if [ "$rc" = 125 ]; then echo "uml-run: guest failed; console log:" >&2; tail -n 40 "$d/console.log" >&2; fi
  rm -rf "$d"
  exit "$rc"
fi

# --------------------------------------------------------------------- guest side (pid 1)
# Static busybox applets only: every dynamic exec costs 30-150 ms under UML.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
for c in mount umount mkdir chown chmod stty pivot_root ip insmod poweroff sync; do
  eval "$c() { /bin/busybox $c \"\$@\"; }"
done
OUT=$sbx_uml_dir; unset sbx_uml_dir
fail() { echo "uml-run(guest): $*" >&2; echo 125 > "$OUT/rc"; sync; poweroff -f; }
mount -t proc proc /proc
read -r kver < /proc/sys/kernel/osrelease
M=/mnt
mount -t tmpfs -o mode=700 tmpfs $M || fail "tmpfs"
mkdir -p $M/up $M/work $M/root $M/out
mount -t hostfs -o "$OUT" none $M/out || fail "result dir"
OUT=$M/out
. $OUT/env || fail "env"
insmod /usr/lib/uml/modules/$kver/kernel/fs/overlayfs/overlay.ko 2>/dev/null
mount -t overlay overlay -o lowerdir=/,upperdir=$M/up,workdir=$M/work $M/root || fail "overlay root"
R=$M/root
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t cgroup2 -o nsdelegate cgroup2 $R/sys/fs/cgroup || fail "cgroup2"
mount -t devtmpfs devtmpfs $R/dev || fail "devtmpfs"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
for t in /dev/shm /tmp /var/tmp /run; do mount -t tmpfs -o mode=1777 tmpfs $R$t; done
mkdir -p -m 700 $R/run/uml-out
mount -o move $OUT $R/run/uml-out || fail "move out"
OUT=/run/uml-out
i=0
for p in "${G_COW[@]}"; do  # dirs hidden by the fresh tmpfs mounts, copy-on-write
  case "$p/" in /tmp/?*|/run/?*|/var/tmp/?*|/dev/shm/?*) ;; *) continue;; esac
  i=$((i+1)); mkdir -p $M/c$i/l $M/c$i/u $M/c$i/w "$R$p"
  mount -r -t hostfs -o "$p" none $M/c$i/l || fail "hostfs $p"
  mount -t overlay overlay -o lowerdir=$M/c$i/l,upperdir=$M/c$i/u,workdir=$M/c$i/w "$R$p" || fail "cow $p"
done
ip link set lo up
uid=${G_USER%%:*}; gid=${G_USER#*:}; [ "$gid" = "$G_USER" ] && gid=$uid
export HOME=/tmp USER=u$uid LOGNAME=u$uid SANDBOX_UML_CGROUP=/sys/fs/cgroup/delegated
CG=$R/sys/fs/cgroup
mkdir $CG/init.scope && echo $$ > $CG/init.scope/cgroup.procs
echo "+cpu +io +memory +pids" > $CG/cgroup.subtree_control || fail "enable controllers"
mkdir $CG/delegated $CG/delegated/main
for x in $CG/delegated $CG/delegated/main; do
  chown $uid:$gid $x $x/cgroup.procs $x/cgroup.threads $x/cgroup.subtree_control || fail "chown $x"
done
mkdir -p $R/run/oldroot
cd $R && pivot_root . run/oldroot || fail "pivot_root"   # chroot would forbid user namespaces
cd /; umount -l /run/oldroot
stty -F /dev/tty1 raw -echo; stty -F /dev/tty2 raw -echo
(
  echo $BASHPID > /sys/fs/cgroup/delegated/main/cgroup.procs || exit 125
  cd "$G_CWD" || exit 125
  if [ "$uid" = 0 ]; then exec "${CMD[@]}"; fi
  exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "${CMD[@]}"
) </dev/null >/dev/tty1 2>/dev/tty2
echo $? > $OUT/rc
sync
poweroff -f
