"""spawn_box(): one clone3 that creates a box's init in all its namespaces at once.

Must be called from a single-threaded process (the launcher, the trio-free CLI path, or a
pytest process before it starts threads): clone3 copies only the calling thread, and no Python
at-fork hooks run in the child, so any lock another thread held would stay locked forever.

The child never returns into the caller's Python frames: it runs ``_contain.init_main`` and
leaves through ``os._exit`` whatever happens.
"""

from __future__ import annotations

import _signal  # the C module: signal.py converts to enums (enum costs the CLI ~3 ms)
import gc
import os

from sandbox import _caps, _contain, _rootfs, _userns
from sandbox import _syscalls as sc
from sandbox._record import record

TYPE_CHECKING = False  # collections.abc imports collections: ~1 ms of the CLI start
if TYPE_CHECKING:
    from collections.abc import Sequence

# Only the namespaces that must come from clone: a pid namespace's first process is the one
# cloned into it, and the user namespace gives the child the capabilities to unshare the rest.
# The others (mount, net, IPC, UTS, cgroup) the child unshares itself (_contain.py, step
# "namespaces"): creating a net namespace costs ~0.5 ms and copying our mount table ~0.1 ms,
# work that would otherwise run in the single-threaded launcher and hold up other requests.
CLONE_FLAGS = sc.CLONE_NEWUSER | sc.CLONE_NEWPID


@record
class BoxProcess:
    """A box's init as the caller holds it: host pid and a pidfd (signals, exit)."""

    pid: int  # host pid of the box's init
    pidfd: int


def _reset_signals() -> None:
    """The child inherits our Python signal handlers, ignored signals (ignored dispositions
    even survive execve) and the wakeup fd; a box must start from the kernel defaults."""
    _signal.set_wakeup_fd(-1)
    for sig in _signal.valid_signals():
        if sig in (_signal.SIGKILL, _signal.SIGSTOP):
            continue
        try:
            if _signal.getsignal(sig) not in (_signal.SIG_DFL, None):
                _signal.signal(sig, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])


@record
class WarmBox:
    """A pre-built box waiting for its command on ``ctl`` (see spawn_warm)."""

    pid: int
    pidfd: int
    ctl: int  # our end of the request socket


def spawn_warm(prep: _contain.Prepared) -> WarmBox:
    """Pre-build a box (namespaces, rootfs, hostname, lo) that waits for its command.

    Handing a request to a warm box skips clone and setup (~4 ms) on the hot path; see
    _launcher.py. The box is identical to a cold one: same sequence, same hardening (all of it
    but rlimits and the final fd sweep done while it waits, the rest right before exec).
    ``ctl`` first receives init's ready message, then carries the request.
    """
    import socket

    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        box = spawn_box(prep, stdin=null, stdout=null, stderr=null, status_w=-1,
                        request_fd=child_end.fileno())
    finally:
        os.close(null)
        child_end.close()
    return WarmBox(box.pid, box.pidfd, parent_end.detach())


def spawn_box(prep: _contain.Prepared, *, stdin: int, stdout: int, stderr: int, status_w: int,
              pass_fds: Sequence[int] = (), cgroup_fd: int | None = None,
              request_fd: int = -1) -> BoxProcess:
    """Clone the box's init with stdio on 0/1/2; ``status_w`` receives init's JSON report.

    The caller keeps ownership of the fds it passed (close your copies after this returns).
    """
    if _multithreaded():
        return _spawn_via_fork(prep, stdin, stdout, stderr, status_w, pass_fds, cgroup_fd)
    # A pidfd of ourselves that the child polls to detect our death (see _caps.py).
    parent_pidfd = sc.pidfd_open(os.getpid())
    try:
        return _clone(prep, CLONE_FLAGS, parent_pidfd, stdin, stdout, stderr, status_w, pass_fds,
                      cgroup_fd, request_fd)
    finally:
        os.close(parent_pidfd)


def _multithreaded() -> bool:
    """Count the kernel's threads, not ``threading``'s: threads started with ``_thread`` (such
    as execnet's I/O thread in every pytest-xdist worker) are invisible to
    ``threading.active_count()``, and a clone while one of them holds a lock (malloc's, an
    import lock) copies a lock nobody in the box will ever release."""
    try:
        return len(os.listdir("/proc/self/task")) > 1
    except OSError:
        import threading

        return threading.active_count() > 1


def _spawn_via_fork(prep: _contain.Prepared, stdin: int, stdout: int, stderr: int,
                    status_w: int, pass_fds: Sequence[int], cgroup_fd: int | None) -> BoxProcess:
    """From a multi-threaded caller (e.g. a pytest-xdist worker, whose execnet I/O thread may
    hold the malloc lock), first os.fork(): libc and Python run their at-fork handlers, so the
    child is a sane single-threaded process. It clones the box, waits for it and exits; the
    box's init dies with it (PDEATHSIG), and its rusage includes the box's.

    The helper dies with the caller (PDEATHSIG again: an orphaned helper would keep a box whose
    wall clock nobody enforces), and closes every fd but the box's: a copy of, say, the caller's
    end of a socket pair would keep the box from ever seeing EOF when the caller closes it."""
    caller = sc.pidfd_open(os.getpid())
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _caps.set_parent_death_signal(_signal.SIGKILL, caller)
            # 0-2 stay: the box's fds are dup2'd onto them in the clone, and a pidfd opened
            # into a free slot there would be overwritten
            keep = {0, 1, 2, stdin, stdout, stderr, status_w, *pass_fds,
                    *_rootfs.held_fds(prep.rootfs)}
            if cgroup_fd is not None:
                keep.add(cgroup_fd)
            _contain._close_fds_except(sorted(keep))
            box = spawn_box(prep, stdin=stdin, stdout=stdout, stderr=stderr, status_w=status_w,
                            pass_fds=pass_fds, cgroup_fd=cgroup_fd)
            _, status = os.waitpid(box.pid, 0)
            code = os.waitstatus_to_exitcode(status) & 0xFF
        except BaseException:  # noqa: BLE001 - the box never started: init's report says why
            _contain._report(status_w, {"ok": False, "step": "clone", "errno": 0,
                                        "error": "could not start the box from a forked helper"})
        finally:
            os._exit(code)
    os.close(caller)
    return BoxProcess(pid, sc.pidfd_open(pid))


def _clone(prep: _contain.Prepared, flags: int, parent_pidfd: int, stdin: int, stdout: int,
           stderr: int, status_w: int, pass_fds: Sequence[int], cgroup_fd: int | None,
           request_fd: int) -> BoxProcess:
    sync_r = sync_w = -1
    if prep.ids.parent_writes:
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    # The child starts as a copy-on-write image of us: every page it writes is copied. A
    # garbage collection in it would walk (and write to) every object we own; frozen objects
    # are skipped. We unfreeze right after, so our own collections are unchanged. A caller that
    # froze objects itself keeps them frozen: we neither add to nor undo its freeze (the child
    # then has the caller's gc state, which a clone's payload may restore: the pytest plugin).
    ours = gc.get_freeze_count() == 0
    if ours:
        gc.freeze()
    try:
        pid, pidfd = sc.clone3(flags, exit_signal=_signal.SIGCHLD, cgroup_fd=cgroup_fd)
    except BaseException:  # EMFILE (the pidfd), EAGAIN (RLIMIT_NPROC): no child, no sync pipe
        if ours:
            gc.unfreeze()
        for fd in (sync_r, sync_w):
            if fd >= 0:
                os.close(fd)
        raise
    if pid != 0 and ours:
        gc.unfreeze()
    if pid == 0:  # ---- child: never return
        code = 1
        try:
            _reset_signals()
            os.setsid()  # out of the caller's session: its terminal's signals reach us only via it
            # dup above everything first so the dup2s cannot clobber each other (fd 1 → 0 ...)
            hi = [os.dup(fd) for fd in (stdin, stdout, stderr)]
            for i, fd in enumerate(hi):
                os.dup2(fd, i, inheritable=True)
            for fd in pass_fds:
                os.set_inheritable(fd, True)
            if sync_w >= 0:
                os.close(sync_w)
            code = _contain.init_main(prep, status_fd=status_w, sync_fd=sync_r,
                                      parent_pidfd=parent_pidfd, pass_fds=pass_fds,
                                      request_fd=request_fd)
        except BaseException as e:  # noqa: BLE001 - report anything, never unwind into caller
            _contain._report(status_w, {"ok": False, "step": "init", "errno": 0,
                                        "error": repr(e)[:200]})
        finally:
            os._exit(code)
    if sync_w >= 0:  # ---- parent: range maps are ours to write
        os.close(sync_r)
        try:
            _userns.write_maps_for(pid, prep.ids)
            os.write(sync_w, b"1")
        except (OSError, Exception):
            sc.pidfd_send_signal(pidfd, _signal.SIGKILL)
        finally:
            os.close(sync_w)
    return BoxProcess(pid, pidfd)
