"""SysV IPC limits of the box's IPC namespace, so that shared memory, message queues and
semaphores stay within the box's memory limit.

They live in the IPC namespace, not in any process: a shm segment written and detached keeps
its pages with no mapping left for RLIMIT_AS to count (768 MiB held under ``--memory 256M``
with the rlimit fallback, exit 0), and message queues and semaphore arrays are kernel memory.
A new IPC namespace starts from the kernel's defaults (shmall: no limit; 32000 queues of
16 KiB; 32000 arrays of 32000 semaphores), not from its parent's values. (A memory cgroup
charges all of these; without one these sysctls are the only bound.)

Who may write them: the kernel (6.1 and later) lets the IPC namespace's owner write its
``/proc/sys/kernel/{shm,msg,sem}*``, meaning a process whose euid is uid 0 *of the user
namespace owning it*. With a single-id map that maps only the box user (uid 1000), uid 0 is
unmapped and nobody in the box can (measured: EACCES). So init maps uid 0 itself and the
payload gets the box user in a nested user namespace (``userns``). Older kernels let only host
root write them: there the box keeps the defaults (EACCES/EPERM are not fatal; see the threat
model). The box's /proc/sys is read-only once they are set.
"""

from __future__ import annotations

import errno
import os

from sandbox._syscalls import write_file

SEM_BYTES = 64  # a struct sem is one cache line


def plan(memory: int | None) -> list[tuple[str, str]]:
    """``(name under /proc/sys, value)`` pairs capping each IPC total at ``memory`` bytes:
    shm in bytes and pages, queues at memory/msgmnb (16 KiB each), semaphores at memory/64.
    Unlimited memory: nothing to write."""
    if memory is None:
        return []
    page = os.sysconf("SC_PAGE_SIZE")
    sems = max(1, min(1024000000, memory // SEM_BYTES))
    return [("kernel/shmmax", str(memory)), ("kernel/shmall", str(max(1, memory // page))),
            ("kernel/msgmni", str(max(1, min(32000, memory // 16384)))),
            ("kernel/sem", f"32000 {sems} 500 {min(32000, sems)}")]


def write(proc_sys: str, sysctls: list[tuple[str, str]]) -> None:
    """In init, in its new IPC namespace, before /proc/sys turns read-only."""
    for name, value in sysctls:
        try:
            write_file(proc_sys + name, value)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.ENOENT):
                raise
