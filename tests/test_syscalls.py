"""The two adapters in sandbox._syscalls over os/resource: prlimit in the kernel's spelling of
"unlimited", and wait4 in the units the verdict uses (CPU seconds, RSS bytes). Real calls on
real processes; each limit change happens in a forked child, not in pytest."""

from __future__ import annotations

import os
import resource
import time

from sandbox import _syscalls as sc


def in_child(fn) -> int:
    """Run ``fn`` in a forked child; its exit code (1 with the error on stderr if it raised)."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 - reported through the exit code
            os.write(2, f"{e!r}\n".encode())
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_prlimit_speaks_the_kernels_infinity():
    def child() -> None:
        inf = sc.RLIM_INFINITY
        before = resource.getrlimit(resource.RLIMIT_FSIZE)
        assert sc.prlimit(resource.RLIMIT_FSIZE) == tuple(v & inf for v in before)
        if before[1] == resource.RLIM_INFINITY:  # the usual case: raise the soft limit to it
            sc.prlimit(resource.RLIMIT_FSIZE, (inf, inf))
            assert resource.getrlimit(resource.RLIMIT_FSIZE) == (-1, -1)
            assert sc.prlimit(resource.RLIMIT_FSIZE, (1 << 20, inf)) == (inf, inf)
            assert resource.getrlimit(resource.RLIMIT_FSIZE) == (1 << 20, -1)

    assert in_child(child) == 0


def test_wait4_reports_status_cpu_seconds_and_rss_bytes():
    pid = os.fork()
    if pid == 0:
        block = bytearray(64 << 20)  # touched: 64 MiB resident
        for i in range(0, len(block), 4096):
            block[i] = 1
        end = time.process_time() + 0.3
        fd = os.open("/dev/zero", os.O_RDONLY)
        while time.process_time() < end:  # user and system time
            os.read(fd, 1 << 16)
        os._exit(7)
    status, cpu, rss = sc.wait4(pid)
    assert os.waitstatus_to_exitcode(status) == 7
    assert 0.3 <= cpu < 5, cpu
    assert 64 << 20 <= rss < 1 << 30, rss
