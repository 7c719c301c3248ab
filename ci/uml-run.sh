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
# Exit status: the command's; 125 when the guest itself failed: then one line
# `uml-run: guest failed: REASON` (from the console log) and the log's tail on stderr.
#
# AVX-512 / AMX hosts: Debian's UML 6.1 keeps 832 bytes of x86 XSAVE state where such CPUs have
# 2696-11008, and some host kernels then refuse UML's ptrace(SETREGSET) (console: "ptrace set
# fp regs failed, errno = 14", init panics). When a boot fails that way, this script builds
# ci/uml-xstate-shim.c (gcc) into ${XDG_CACHE_HOME:-~/.cache}/sandbox-uml/, boots again with it
# in LD_PRELOAD, and remembers for this host that the shim is needed. SANDBOX_UML_SHIM=always
# uses it from the first boot, =never never does.
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
  command -v linux.uml >/dev/null || { echo "uml-run: guest failed: no linux.uml (apt-get install user-mode-linux busybox-static)" >&2; exit 125; }
  [ -x /bin/busybox ] || { echo "uml-run: guest failed: no /bin/busybox (apt-get install busybox-static)" >&2; exit 125; }
  self=$(readlink -f "$0")
  src=$(dirname "$self")/uml-xstate-shim.c
  cache=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sandbox-uml
  # the shim decision holds for this CPU, host kernel and UML binary
  host_key=$( { uname -r; grep -m1 '^model name' /proc/cpuinfo; grep -m1 '^flags' /proc/cpuinfo
               stat -L -c '%s %Y' "$(command -v linux.uml)"; } | cksum | cut -d' ' -f1)
  shim_mode=${SANDBOX_UML_SHIM:-auto}
  build_shim() {  # prints the built library's path
    local so
    so="$cache/xstate-shim-$(cksum < "$src" | cut -d' ' -f1).so"
    if [ ! -s "$so" ]; then
      command -v gcc >/dev/null || { echo "uml-run: the XSAVE shim needs gcc (apt-get install gcc)" >&2; return 1; }
      mkdir -p "$cache" && gcc -shared -fPIC -O2 -o "$so.$$" "$src" -ldl && mv "$so.$$" "$so" || return 1
    fi
    echo "$so"
  }
  # One console line that says why a guest failed: the first known kernel complaint, else the
  # last line it printed.
  failure_reason() {
    local line
    local noise='^(SELinux|mmapper_init|Failed to initialize ubd|Checking )'
    line=$(grep -a -m1 -E 'errno = [0-9]+' "$1")
    [ -n "$line" ] || line=$(grep -a -v -E "$noise" "$1" | grep -a -m1 -E 'not syncing|failed|Out of memory|Unable to|cannot|No such')
    [ -n "$line" ] || line=$(grep -a -v '^[[:space:]]*$' "$1" | tail -n 1)
    # nothing on the console: linux.uml's own complaint (it writes to our stderr) if any
    [ -n "$line" ] || line=$(grep -a -v '^[[:space:]]*$' "$d/stderr.tail" 2>/dev/null | tail -n 1)
    [ -n "$line" ] || line="no console output (linux.uml exited $2)"
    printf '%s' "$line" | tr -d '\r' | cut -c1-200
  }
  d=$(mktemp -d /tmp/uml-run.XXXXXX) || exit 125
  chmod 700 "$d"
  cow+=("$cwd")
  {
    export -p | grep -v -E '^declare -x (HOME|USER|LOGNAME|PWD|OLDPWD|SHLVL|_|LD_PRELOAD)='
    CMD=("$@"); declare -p CMD
    printf 'G_USER=%q\nG_CWD=%q\n' "$user" "$cwd"
    declare -p cow | sed 's/^declare -a cow=/G_COW=/'
  } > "$d/env"
  boot() {  # $1: library to preload, or empty. Sets rc.
    rm -f "$d/rc" "$d/started"
    # The guest console goes to a log; its tty1/tty2 carry the command's stdout/stderr. Our
    # stderr is relayed through tee to keep its tail: linux.uml's own complaints land there.
    exec 4> >(tee >(tail -c 4096 > "$d/stderr.tail") >&2)
    relay=$!
    local preload=${LD_PRELOAD:-}
    [ -n "$1" ] && preload=$1${preload:+:$preload}
    LD_PRELOAD=$preload linux.uml mem="$mem" umid="sbx$$" uml_dir="$d" rootfstype=hostfs rootflags=/ ro quiet \
      init="$self" sbx_uml_dir="$d" con=null con0=null,fd:3 con1=null,fd:1 con2=null,fd:2 ssl=null \
      3>"$d/console.log" </dev/null 2>&4 &
    pid=$!
    trap 'kill -KILL -- -$pid $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$d"; exit 124' INT TERM HUP
    { wait $pid; } 2>/dev/null  # (no job report from bash: the reason line says it better)
    uml_rc=$?
    exec 4>&-
    wait $relay  # the relay has flushed
    trap - INT TERM HUP
    rc=125
    [ -s "$d/rc" ] && rc=$(cat "$d/rc")
  }
  shim=
  if [ "$shim_mode" = always ] || { [ "$shim_mode" = auto ] && [ -e "$cache/needs-shim-$host_key" ]; }; then
    shim=$(build_shim) || { echo "uml-run: guest failed: cannot build ci/uml-xstate-shim.c" >&2; rm -rf "$d"; exit 125; }
  fi
  boot "$shim"
  if [ "$rc" = 125 ] && [ ! -e "$d/started" ] && [ -z "$shim" ] && [ "$shim_mode" = auto ] &&
     grep -a -q 'ptrace set fp regs failed' "$d/console.log"; then
    # the AVX-512/AMX case above; the command never started, so booting again is safe
    if shim=$(build_shim); then
      echo "uml-run: this host's XSAVE area is too large for UML 6.1: booting with $shim" >&2
      boot "$shim"
      [ -e "$d/started" ] && { mkdir -p "$cache"; : > "$cache/needs-shim-$host_key"; }
    fi
  fi
  if [ "$rc" = 125 ] && [ ! -e "$d/started" ]; then
    echo "uml-run: guest failed: $(failure_reason "$d/console.log" "$uml_rc")" >&2
    tail -n 40 "$d/console.log" >&2
  fi
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
: > $OUT/started   # the guest booted: the host side must not boot it again
(
  echo $BASHPID > /sys/fs/cgroup/delegated/main/cgroup.procs || exit 125
  cd "$G_CWD" || exit 125
  if [ "$uid" = 0 ]; then exec "${CMD[@]}"; fi
  exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "${CMD[@]}"
) </dev/null >/dev/tty1 2>/dev/tty2
echo $? > $OUT/rc
sync
poweroff -f
