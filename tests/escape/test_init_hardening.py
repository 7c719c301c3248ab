"""Weak layers of the box's init and root filesystem (issue 13): what a box could learn about
the host, or hold outside its limits, through what init set up or left behind.

* tmpfs inodes: a million empty files grew host slab by ~1 GiB outside every limit;
* the caller's argv/environment in init's memory: /proc/1/cmdline showed the host command
  line, and a @sandboxed test body found the host's environment block in its own memory;
* SysV IPC: segments held outside RLIMIT_AS (768 MiB under --memory 256M);
* inotify on host directories bound into the box reported host processes' file accesses.

Run as the unprivileged user and as root (both id-map modes).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap

import pytest

import sandbox
from sandbox import Limits, MountSpec, SandboxConfig, Status
from tests.conftest import ROOT_MODE
from tests.escape._watch import watch

CLI = [sys.executable, "-m", "sandbox._cli"]


def py(code: str, **limits: str) -> sandbox.Result:
    cfg = SandboxConfig(limits=Limits.parse(**limits))
    return sandbox.run_sync(["python3", "-c", textwrap.dedent(code)], cfg)


# -- tmpfs inodes ---------------------------------------------------------------------------

FILL_INODES = """
    import errno, os, sys
    where, bound = sys.argv[1], int(sys.argv[2])
    os.makedirs(where, exist_ok=True)
    n = 0
    try:
        while n < bound:
            os.close(os.open(f"{where}/f{n}", os.O_CREAT | os.O_WRONLY, 0o600)); n += 1
        print("no-limit", n)
    except OSError as e:
        print(errno.errorcode[e.errno], n)
    sys.exit(3)
    """


@pytest.mark.parametrize("where", ["/tmp/many", "/ov/many", "/data/many"],
                         ids=["tmp", "overlay-upper", "user-tmpfs"])
def test_tmpfs_inodes_are_capped_and_the_verdict_is_the_programs(where, box_tmp, no_leftovers):
    """Empty files cost no size= bytes but ~1 KiB of kernel memory each: every tmpfs of the box
    (its own, which also holds the overlay uppers, and a --tmpfs mount) caps its inodes, the
    program gets ENOSPC, and the box still reports the program's own exit."""
    if where.startswith("/ov") and ROOT_MODE:
        pytest.skip("as root the box user owns nothing on the host: no overlay is writable")
    size = 64 << 20
    cap = max(4096, size // 8192)  # the documented policy (sandbox._rootfs.tmpfs_inodes)
    (box_tmp / "ov").mkdir()
    (box_tmp / "ov").chmod(0o777)  # writable by the box user in both modes
    cfg = SandboxConfig(limits=Limits(tmpfs_size=size), mounts=[
        MountSpec("tmpfs", "/data", size=size), MountSpec("overlay", "/ov", str(box_tmp / "ov"))])
    r = sandbox.run_sync(["python3", "-c", textwrap.dedent(FILL_INODES), where, str(4 * cap)],
                         cfg.validate())
    what, n = r.stdout.split()
    assert (r.status, r.exit_code, what) == (Status.RE, 3, b"ENOSPC"), r
    assert cap - 200 <= int(n) <= cap + 200, r  # the box's own skeleton takes a few


# -- the caller's argv and environment --------------------------------------------------------

def test_proc1_cmdline_and_environ_show_nothing_of_the_host(box_tmp, no_leftovers):
    """/proc/1/cmdline is readable whatever init's dumpable flag: it was the CLI's command line
    (host paths, bind sources, --env values). Now it is a title and NULs, and environ shows
    nothing either (unreadable: init is non-dumpable; and wiped)."""
    box_secret, host_secret = secrets.token_hex(8), secrets.token_hex(8)
    env = dict(os.environ, SBX_HOST_SECRET=host_secret)
    p = subprocess.run([*CLI, "run", "--env", f"BOX_SECRET={box_secret}", "--ro-bind",
                        f"{box_tmp}:/data", "--", "python3", "-c",
                        "import sys\nsys.stdout.buffer.write(open('/proc/1/cmdline', 'rb').read())\n"
                        "try: sys.stdout.buffer.write(b'|' + open('/proc/1/environ', 'rb').read())\n"
                        "except OSError as e: print('|', e.errno, end='')"],
                       env=env, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    cmdline, _, environ = p.stdout.partition(b"|")
    assert cmdline.rstrip(b"\0") == b"sandbox-init", p.stdout[:200]
    for leak in (box_secret, host_secret, str(box_tmp), "--env", "sandbox._cli"):
        assert leak.encode() not in p.stdout, leak
    assert environ in (b" 13", b""), environ  # EACCES


def test_run_sync_init_shows_no_launcher_command_line(no_leftovers):
    r = sandbox.run_sync(["cat", "/proc/1/cmdline"])
    assert r.stdout.rstrip(b"\0") == b"sandbox-init", r.stdout[:200]


# The body of a @sandboxed test that scans its own memory for the host's secret. The needle is
# kept XOR 0x5A so that the scanner's own copy of it never matches: only the plain secret does.
SCAN_TEST = """
    import ctypes, os
    import pytest

    XNEEDLE = bytes.fromhex({xneedle!r})
    TABLE = bytes(b ^ 0x5A for b in range(256))

    def regions_holding(xneedle):
        # Anonymous memory only (heap, stack, arenas): a file mapping can fault past its
        # file's end. /proc/self/mem is not an option: a non-dumpable process's is root's.
        hits = []
        with open("/proc/self/maps") as f:
            maps = f.read().splitlines()
        for line in maps:
            parts = line.split()
            if parts[1][0] != "r" or parts[4] != "0" or parts[-1] in ("[vvar]", "[vvar_vclock]",
                                                                       "[vsyscall]", "[vdso]"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if xneedle in ctypes.string_at(lo, hi - lo).translate(TABLE):
                hits.append(line)
        return hits

    @pytest.mark.sandboxed
    def test_boxed_body():
        assert "SBX_CI_SECRET" not in os.environ
        assert regions_holding(XNEEDLE) == []
        assert open("/proc/1/cmdline", "rb").read().rstrip(b"\\0") == b"sandbox-init"

    def test_unboxed_control():  # after the boxed one: its copies of memory stay in the heap
        assert regions_holding(XNEEDLE)  # the host process does hold it: the scan works
    """


def test_sandboxed_test_body_cannot_find_the_hosts_environment_in_memory(box_tmp, no_leftovers):
    """Escape 2 of issue 13: a CI secret in the host pytest's environment was readable from the
    @sandboxed test body's own memory (its environment block, os.environ's freed bytes), though
    os.environ was replaced. init wipes them right after the clone; the body is its fork."""
    secret = b"sbx-ci-" + secrets.token_hex(12).encode()
    (box_tmp / "test_scan.py").write_text(textwrap.dedent(SCAN_TEST.format(
        xneedle=bytes(b ^ 0x5A for b in secret).hex())))
    env = dict(os.environ, SBX_CI_SECRET=secret.decode())
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-p", "no:pytest_isolate", "test_scan.py"],
                       cwd=box_tmp, env=env, capture_output=True, timeout=120)
    assert p.returncode == 0 and b"2 passed" in p.stdout, p.stdout.decode()[-3000:]


# -- SysV and POSIX shared memory ---------------------------------------------------------------

SYSV_HOLD = """
    import ctypes, errno, os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    seg, held, err = 64 << 20, 0, "none"
    for _ in range(12):  # 768 MiB, detached one by one: no mapping left for RLIMIT_AS to count
        sid = libc.shmget(0, ctypes.c_size_t(seg), 0o1600)  # IPC_PRIVATE | IPC_CREAT
        if sid < 0:
            err = errno.errorcode[ctypes.get_errno()]; break
        addr = libc.shmat(sid, None, 0)
        ctypes.memset(addr, 1, seg)
        libc.shmdt(ctypes.c_void_p(addr))
        held += seg
    try:
        open("/proc/sys/kernel/shmall", "w").write("18446744073692774399")
        raised = "raised"
    except OSError as e:
        raised = errno.errorcode[e.errno]
    vals = [open(f"/proc/sys/kernel/{n}").read().split() for n in ("shmmax", "shmall", "msgmni")]
    print(held >> 20, err, raised, *(v[0] for v in vals))
    """


def test_sysv_shm_stays_within_the_memory_limit(no_leftovers):
    """Segments live in the IPC namespace: written and detached they hold memory no process
    maps. init caps the box's IPC namespace at its memory limit (shm, message queues,
    semaphores) before /proc/sys turns read-only; the box cannot raise them."""
    r = py(SYSV_HOLD, memory="256M", wall_time="20s")
    if r.enforcement["memory"] == "cgroup" and r.status == Status.ML:
        return  # charged to the box's memory cgroup: killed at memory.max
    assert len(r.stdout.split()) == 6, r
    held, err, raised, shmmax, shmall, msgmni = r.stdout.split()
    assert r.status == Status.OK, r
    assert int(held) <= 256 and err == b"ENOSPC", r.stdout
    assert (shmmax, shmall, msgmni) == (b"268435456", b"%d" % (256 << 20 >> 12), b"16384")
    assert raised == b"EROFS"


def test_posix_shm_is_on_the_capped_box_tmpfs(no_leftovers):
    """POSIX shm is files in /dev/shm: the box's own tmpfs, inside --tmpfs-size."""
    r = py("""
        import _posixshmem, errno, os
        fd = _posixshmem.shm_open("/big", os.O_CREAT | os.O_RDWR, 0o600)
        n = 0
        try:
            while n < (64 << 20):
                n += os.write(fd, b"x" * (1 << 20))
            print("no-limit", n >> 20)
        except OSError as e:
            print(errno.errorcode[e.errno], n >> 20)
        """, tmpfs_size="16M", memory="256M")
    what, mib = r.stdout.split()
    assert what == b"ENOSPC" and int(mib) <= 16, r


# -- host activity seen through inotify -----------------------------------------------------------

def _python_prefix() -> tuple[str, str]:
    """(host path, box path) of the running Python's installation in a `sandbox run` box."""
    from sandbox._pyprefix import exposed

    return (exposed(True) or [("/usr", "/usr")])[0]


@pytest.mark.parametrize("where", ["/etc/ssl", "/etc/alternatives", "/etc/ca-certificates",
                                   "/etc/ld.so.conf.d", "/usr/bin", "python-prefix"])
def test_inotify_in_the_box_sees_no_host_activity(where, no_leftovers):
    """A host directory bound into the box shares its inodes: a watch on /etc/ssl reported
    every host process that opened, listed or read something there. Every directory of the
    default box is an overlay's inode, so the host's accesses make no event in the box."""
    inside = where
    if where == "python-prefix":
        where, inside = _python_prefix()
    if not os.path.isdir(where):
        pytest.skip(f"{where} does not exist on this host")

    def touch() -> None:  # what any host process does there: list it, open and read its files
        for _ in range(3):
            for name in os.listdir(where)[:20]:
                try:
                    with open(os.path.join(where, name), "rb") as f:
                        f.read(4096)
                except OSError:
                    pass

    # inotify is refused by default (/dev's nodes are the host's: test_dev_nodes.py); this is
    # what stands when a box is given it back
    last = watch([inside], touch, SandboxConfig(seccomp_allow=("inotify",)))
    host_events, own_events = map(int, last.split())
    assert own_events > 0, last
    assert host_events == 0, f"{where}: the box saw {host_events} bytes of host events"
