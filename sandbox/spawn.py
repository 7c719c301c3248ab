"""spawn_box(): one clone3 that creates a box's init in all its namespaces at once.

Must be called from a single-threaded process (the launcher, the trio-free CLI path, or a
pytest process before it starts threads): clone3 copies only the calling thread, and no Python
at-fork hooks run in the child, so any lock another thread held would stay locked forever.

The child never returns into the caller's Python frames: it runs ``contain.init_main`` and
leaves through ``os._exit`` whatever happens.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from sandbox import _syscalls as sc
from sandbox import contain, userns

BASE_FLAGS = (sc.CLONE_NEWUSER | sc.CLONE_NEWPID | sc.CLONE_NEWNS | sc.CLONE_NEWIPC
              | sc.CLONE_NEWUTS)


@dataclass
class BoxProcess:
    pid: int  # host pid of the box's init
    pidfd: int


_self_pidfd: tuple[int, int] = (-1, -1)


def _own_pidfd() -> int:
    """A pidfd of this process (cached per pid) that the child polls to detect our death."""
    global _self_pidfd
    if _self_pidfd[0] != os.getpid():
        _self_pidfd = (os.getpid(), sc.pidfd_open(os.getpid()))
    return _self_pidfd[1]


def spawn_box(prep: contain.Prepared, *, stdin: int, stdout: int, stderr: int, status_w: int,
              pass_fds: Sequence[int] = (), cgroup_fd: int | None = None) -> BoxProcess:
    """Clone the box's init with stdio on 0/1/2; ``status_w`` receives init's JSON report.

    The caller keeps ownership of the fds it passed (close your copies after this returns).
    """
    flags = BASE_FLAGS | (sc.CLONE_NEWNET if prep.config.network == "none" else 0)
    sync_r = sync_w = -1
    if prep.ids.parent_writes:
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    parent_pidfd = _own_pidfd()
    pid, pidfd = sc.clone3(flags, exit_signal=signal.SIGCHLD, cgroup_fd=cgroup_fd)
    if pid == 0:  # ---- child: never return
        code = 1
        try:
            # dup above everything first so the dup2s cannot clobber each other (fd 1 → 0 ...)
            hi = [os.dup(fd) for fd in (stdin, stdout, stderr)]
            for i, fd in enumerate(hi):
                os.dup2(fd, i, inheritable=True)
            for fd in pass_fds:
                os.set_inheritable(fd, True)
            if sync_w >= 0:
                os.close(sync_w)
            code = contain.init_main(prep, status_fd=status_w, sync_fd=sync_r,
                                     parent_pidfd=parent_pidfd, pass_fds=pass_fds)
        except BaseException as e:  # noqa: BLE001 - report anything, never unwind into caller
            contain._report(status_w, {"ok": False, "step": "init", "errno": 0,
                                       "error": repr(e)[:200]})
        finally:
            os._exit(code)
    if sync_w >= 0:  # ---- parent: range maps are ours to write
        os.close(sync_r)
        try:
            userns.write_maps_for(pid, prep.ids)
            os.write(sync_w, b"1")
        except (OSError, Exception):
            sc.pidfd_send_signal(pidfd, signal.SIGKILL)
        finally:
            os.close(sync_w)
    return BoxProcess(pid, pidfd)
