"""seccomp argument tests at the kernel's width, and the payload against its own init.

Each attack is a real program in a real box (run as the unprivileged user in CI, and as root).
A seccomp rule on an ``int`` argument must look at the low 32 bits only: the kernel drops the
upper half, so a rule comparing all 64 bits is dodged with one high bit (CVE-2019-10063).
The box's init runs as the payload's uid: what may the payload do to it?
docs/threat-model.md has a row for each test here.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

import sandbox
from sandbox import Limits, SandboxConfig, Status, _contain, _seccomp
from sandbox._seccomp_rules import DEFAULT_RULES, EQ, MASKED_EQ, MEMFD_RULES, Rule, check_widths

if os.uname().machine != "x86_64":  # raw syscall numbers below are x86-64's
    pytest.skip("uses x86-64 syscall numbers", allow_module_level=True)

# Raw syscalls with 64-bit arguments exactly as given (ctypes.c_long of the two's complement),
# so a test can set the high bits the kernel ignores. → the return value, or the errno's name.
RAW64 = """
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *a):
    a = [ctypes.c_long(x - (1 << 64) if x >= 1 << 63 else x) for x in a]
    r = libc.syscall(ctypes.c_long(nr), *a)
    return r if r >= 0 else errno.errorcode[ctypes.get_errno()]
"""
PERSONALITY, SOCKET, PRLIMIT64, TGKILL, RT_SIGQUEUEINFO, MEMFD_SECRET = 135, 41, 302, 234, 129, 447
HIGH = (1 << 32, 0xFFFF_FFFF_0000_0000)  # garbage the kernel drops from an int argument


def box(code: str, **limits: object) -> sandbox.Result:
    cfg = SandboxConfig(limits=Limits.parse(**limits)) if limits else SandboxConfig()
    return sandbox.run_sync(["python3", "-c", RAW64 + textwrap.dedent(code)], cfg)


def test_personality_flags_are_refused_whatever_the_upper_bits(no_leftovers):
    """personality(0x80040000) is ADDR_NO_RANDOMIZE with bit 31 set: the old rule matched the
    flag only with bit 31 clear (to keep the query 0xffffffff), so exec'd programs ran without
    ASLR. Now: any flag but UNAME26, whatever bit 31 and the upper half hold, is EPERM; the
    query, PER_LINUX, PER_LINUX32 and UNAME26 still work."""
    r = box(f"""
        flags = (0x0040000, 0x0400000, 0x0100000, 0x0200000, 0x0800000, 0x8000000, 0x10000000)
        values = [f | h for f in flags for h in (0, 1 << 31, *{HIGH!r}, 0xFFFF_FFFF_8000_0000)]
        values += [1 << 31, 0xFFFFFFFE, 0x7FFFFFFF, 0x8000_0000_0004_0000]
        got = {{hex(v): call({PERSONALITY}, v) for v in values}}
        allowed = [call({PERSONALITY}, v) for v in (0, 8, 0, 0x20000, 0)]
        query = [call({PERSONALITY}, q) for q in (0xFFFFFFFF, 0x1_FFFF_FFFF)]
        print(json.dumps([got, allowed, query]), flush=True)
        os.execvp("cat", ["cat", "/proc/self/personality"])  # what an exec'd program runs with
        """)
    assert r.status == Status.OK, r
    line, persona = r.stdout.splitlines()
    got, allowed, query = json.loads(line)
    assert {v: e for v, e in got.items() if e != "EPERM"} == {}
    assert allowed == [0, 0, 8, 0, 0x20000]  # each returns the previous persona
    assert query == [0, 0] and persona == b"00000000"  # nothing got through: ASLR stays on


def test_socket_family_and_protocol_are_compared_on_32_bits(no_leftovers):
    """socket(AF_VSOCK | 1<<32) and socket(AF_NETLINK | 1<<32, ..., NETLINK_AUDIT) passed rules
    that compared all 64 bits; the kernel reads ``int family`` and created the sockets."""
    r = box(f"""
        def sock(*a):
            fd = call({SOCKET}, *a)
            if isinstance(fd, int):
                os.close(fd)
                return "ok"
            return fd
        denied = {{"vsock": (40, 1, 0), "audit": (16, 3, 9), "uevent": (16, 3, 15)}}
        denied.update({{f"netlink {{1 << k}}": (16, 3, 1 << k) for k in range(5)}})  # each bit
        for h in {HIGH!r}:
            denied.update({{f"vsock|{{h:#x}}": (40 | h, 1, 0), f"audit|{{h:#x}}": (16 | h, 3, 9),
                            f"uevent|{{h:#x}}": (16 | h, 3, 15),
                            f"audit proto|{{h:#x}}": (16, 3, 9 | h),
                            f"netfilter both|{{h:#x}}": (16 | h, 3, 12 | h)}})
        allowed = {{"route": (16, 3, 0), "route proto|high": (16, 3, 1 << 32),
                    "inet|high": (2 | 1 << 32, 1, 0), "unix": (1, 1, 0)}}
        print(json.dumps([{{k: sock(*a) for k, a in d.items()}} for d in (denied, allowed)]))
        """)
    denied, allowed = json.loads(r.stdout)
    assert {k: e for k, e in denied.items() if e != "EPERM"} == {}
    assert set(allowed.values()) == {"ok"}, allowed


def test_every_tested_argument_is_compared_at_its_kernel_width():
    """The guard behind the two tests above: a rule on an argument whose width is undeclared, or
    a 32-bit argument compared without a low-32-bit mask, does not compile."""
    check_widths(DEFAULT_RULES + MEMFD_RULES)
    for args in (((0, EQ, 40, 0),), ((0, MASKED_EQ, (1 << 32) - 1 << 1, 2),)):
        with pytest.raises(ValueError, match="32 bits wide"):
            _seccomp.build_filter(_seccomp.Policy("t", (Rule("socket", "t", args=args),)))
    with pytest.raises(ValueError, match="not declared"):
        check_widths((Rule("kill", "t", args=((0, EQ, 1, 0),)),))


FLOOD_INIT = """
    import signal, time
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # init forwards each one back to us
    def flood(seconds):
        end = time.time() + seconds
        while time.time() < end:
            try:
                os.kill(1, signal.SIGUSR1)
            except OSError:
                pass
"""


def test_prlimit_cannot_lower_inits_limits(no_leftovers):
    """prlimit(1, RLIMIT_CPU, 1), then signals for init to forward: init used to die at one
    second of CPU and the verdict was XX. Setting init's limits is refused, whatever the
    upper half of the pid holds; reading them, and prlimit on the program's own processes
    (0, getpid(), a child), work. The program's own verdict (exit 3) is what comes back."""
    r = box(FLOOD_INIT + f"""
    import resource
    out = {{}}
    def attempt(name, fn):
        try:
            fn()
            out[name] = "ok"
        except OSError as e:
            out[name] = errno.errorcode[e.errno]
    attempt("init cpu", lambda: resource.prlimit(1, resource.RLIMIT_CPU, (1, 1)))
    attempt("init as", lambda: resource.prlimit(1, resource.RLIMIT_AS, (1 << 20, 1 << 20)))
    lim = (ctypes.c_ulong * 2)(1, 1)
    out["raw init|high"] = call({PRLIMIT64}, 1 | 1 << 32, 0, ctypes.addressof(lim), 0)
    attempt("getpid", lambda: resource.prlimit(os.getpid(), resource.RLIMIT_CORE, (0, 0)))
    child = os.fork()
    if child == 0:
        time.sleep(5)
        os._exit(0)
    attempt("child", lambda: resource.prlimit(child, resource.RLIMIT_CPU, (1, 1)))
    os.kill(child, 9)
    os.waitpid(child, 0)
    attempt("read init", lambda: resource.prlimit(1, resource.RLIMIT_CPU))
    attempt("self 0", lambda: resource.prlimit(0, resource.RLIMIT_NOFILE, (512, 512)))
    attempt("setrlimit", lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))
    print(json.dumps(out), flush=True)
    flood(4)  # init spends about half of that forwarding: past 1 s, not near 20 s
    raise SystemExit(3)
    """, cpu_time="20s", wall_time="30s")
    assert (r.status, r.exit_code) == (Status.RE, 3), (r.error, r.reason, r.stderr[-500:])
    assert json.loads(r.stdout) == {"init cpu": "EPERM", "init as": "EPERM",
                                    "raw init|high": "EPERM", "getpid": "ok", "child": "ok",
                                    "read init": "ok", "self 0": "ok", "setrlimit": "ok"}


def test_a_signal_flood_on_init_is_a_cpu_verdict(no_leftovers):
    """Without prlimit: init holds the box's RLIMIT_CPU too (the payload inherits it from
    init), so flooders replacing each other as RLIMIT_CPU kills them make init burn its own
    budget forwarding signals, and the kernel SIGKILLs init at the hard limit. The box's CPU
    total is then past the limit: TO (as a cgroup would say), not XX."""
    r = box(FLOOD_INIT + """
    live, end = 0, time.time() + 25
    while time.time() < end:
        while live < 2:
            if os.fork() == 0:
                flood(25)
                os._exit(0)
            live += 1
        os.wait()
        live -= 1
    raise SystemExit(3)
    """, cpu_time="1s", wall_time="30s")
    assert r.status == Status.TO and r.error is None and "CPU time 1s" in (r.reason or ""), r
    assert r.wall_time < 20, r


def test_signals_and_scheduling_aimed_at_init_leave_the_verdict_alone(no_leftovers):
    """Every way to signal pid 1 from inside (kill, tgkill, a forged rt_sigqueueinfo, a pidfd,
    /proc/1 as a pidfd, SIGIO with F_SETSIG) reaches a pid-namespace init that ignores signals
    it has no handler for; a forwarded SIGTERM goes back to the payload. Lowering init's
    priority (nice 19, SCHED_IDLE, pinned to one CPU under spinners) only delays it."""
    r = box(f"""
        import fcntl, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for s in (signal.SIGKILL, signal.SIGSTOP, signal.SIGSEGV, signal.SIGXCPU, signal.SIGTERM):
            os.kill(1, s)
        print("tgkill", call({TGKILL}, 1, 1, signal.SIGKILL))
        info = (ctypes.c_int * 32)(signal.SIGKILL, 0, 0x80)  # si_code SI_KERNEL: forged
        print("sigqueue", call({RT_SIGQUEUEINFO}, 1, signal.SIGKILL, ctypes.addressof(info)))
        for fd in (os.pidfd_open(1), os.open("/proc/1", os.O_RDONLY | os.O_DIRECTORY)):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        rd, wr = os.pipe()
        fcntl.fcntl(rd, fcntl.F_SETOWN, 1)
        fcntl.fcntl(rd, 10, signal.SIGKILL)  # F_SETSIG
        fcntl.fcntl(rd, fcntl.F_SETFL, fcntl.fcntl(rd, fcntl.F_GETFL) | os.O_ASYNC)
        os.write(wr, b"x")
        cpu = min(os.sched_getaffinity(0))
        os.setpriority(os.PRIO_PROCESS, 1, 19)
        os.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0))
        os.sched_setaffinity(1, {{cpu}})
        for i in range(4):
            if os.fork() == 0:
                while True:
                    pass
        time.sleep(0.5)
        print("init", open("/proc/1/status").read().split("State:")[1].split()[0], flush=True)
        raise SystemExit(3)
        """, wall_time="20s")
    assert (r.status, r.exit_code) == (Status.RE, 3), (r.error, r.reason, r.stderr[-500:])
    assert r.stdout.split() == [b"tgkill", b"0", b"sigqueue", b"EPERM", b"init", b"S"], r
    assert r.wall_time < 10, r


HOLD_MEMFDS = f"""
    held, out = 0, {{}}
    try:
        while held < 768 << 20:  # 12 memfds of 64 MiB, under --memory 256M
            fd = os.memfd_create("hold")
            for _ in range(4):
                os.write(fd, b"x" * (16 << 20))
            held += 64 << 20
        out["memfd"] = "held 768 MiB"
    except OSError as e:
        out["memfd"] = errno.errorcode[e.errno]
    out["memfd_secret"] = call({MEMFD_SECRET}, 0)
    try:  # the fallback a program takes: an unnamed file in /tmp (the box's tmpfs)
        fd, n = os.open("/tmp", os.O_TMPFILE | os.O_RDWR), 0
        while n < 768:
            os.write(fd, b"x" * (1 << 20))
            n += 1
        out["tmpfile"] = "held 768 MiB"
    except OSError as e:
        out["tmpfile"] = errno.errorcode[e.errno]
    print(json.dumps(out))
"""


def test_memfds_cannot_hold_memory_past_the_limit(no_leftovers):
    """768 MiB held in memfds under --memory 256M used to exit 0: RLIMIT_AS counts mappings,
    not a memfd's pages. Under that fallback memfd_create/memfd_secret are ENOSYS and the
    verdict says so (``enforcement["memfd"] == "seccomp"``); a program's fallback to /tmp is
    bounded by --tmpfs-size. A memory cgroup charges memfd pages: there it is an ML."""
    r = box(HOLD_MEMFDS, memory="256M", tmpfs_size="64M", fsize="1G", wall_time="30s")
    if r.enforcement["memory"] == "cgroup":
        assert r.enforcement["memfd"] == "cgroup" and r.status == Status.ML, r
        return
    assert r.enforcement == {**r.enforcement, "memory": "rlimit", "memfd": "seccomp"}
    assert r.status == Status.OK and json.loads(r.stdout) == {
        "memfd": "ENOSYS", "memfd_secret": "ENOSYS", "tmpfile": "ENOSPC"}, r


@pytest.mark.parametrize("case", ["cgroup", "rlimit", "rlimit_seccomp_none", "rlimit_allowed"])
def test_memfd_enforcement_says_what_bounds_it(case):
    """Only the RLIMIT_AS fallback refuses memfds, and the verdict's enforcement names what
    bounds them: ``cgroup`` (charged), ``seccomp`` (refused) or ``none``."""
    cfg = SandboxConfig(seccomp="none" if case == "rlimit_seccomp_none" else "default",
                        seccomp_allow=["memfd"] if case == "rlimit_allowed" else [])
    cg = frozenset({"memory", "pids", "cpu_time"}) if case == "cgroup" else frozenset()
    prep = _contain.prepare(cfg, ["true"], cgroup_enforced=cg)
    want = {"cgroup": "cgroup", "rlimit": "seccomp"}.get(case, "none")
    assert prep.enforcement["memfd"] == want
    refused = _seccomp.compile_bpf(_seccomp.policy_for("default", memory_rlimit=True))
    assert (prep.seccomp_bpf == refused) == (case == "rlimit")
