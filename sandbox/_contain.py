"""The in-child sequence, top to bottom: what the box's init (pid 1) and payload (pid 2) do.

Read this file to know what happens inside a box, in order. A failing step is reported on the
status pipe as ``{"ok": false, "step": NAME, "errno": N, "error": "..."}`` and init exits: a
failure never hangs or leaves a half-made box running (the pid namespace dies with init).

init (clone3'd with NEWUSER|NEWPID, maybe INTO_CGROUP):
  0. scrub      wipe the caller's argv and environment from our copy of its memory (they were
                /proc/1/cmdline, and readable by a callable payload: sandbox._scrub)
  1. fds        close every inherited fd except the ones we were handed (runc CVE-2024-21626)
  2. pdeathsig  die with the parent
  3. userns     write our own id map (unprivileged) or wait for the parent to write it
  4. namespaces unshare mount, IPC, UTS, cgroup [and net] namespaces with our new
                capabilities; the cgroup one now that we sit in our leaf: the box sees it as "/"
  5. rootfs     sandbox._rootfs.build_rootfs (tmpfs, overlays, /dev, /proc, pivot_root)
  6. hostname   in the new UTS namespace
  7. network    loopback up in the new net namespace
  7b. boxuser   (single-id map) a nested user namespace where we are the box user (userns)
  8. dumpable   init becomes non-dumpable (the payload cannot ptrace it or read its memory)
  (a warm box now hardens itself — all of the list below but rlimits and fds — and waits for
  its command; then) start the payload, forward signals, reap everything, report.
hardening, in order (exec targets: init applies it to itself, the payload inherits it; callable
targets: the forked payload applies it):
  rlimits       core 0, nofile, fsize, and the fallback memory/cpu/nproc limits
  caps          empty the bounding/ambient sets, lock securebits (needs CAP_SETPCAP: before ids)
  ids           (range maps only) switch to the box user
  caps          empty permitted/effective/inheritable; cwd; no_new_privs
  fds           close all fds but 0/1/2 (+ requested ones)
  pdeathsig     set again: the credential change above cleared it
  landlock      (--landlock) writes only to the box's own tmpfs and binds
  seccomp       load the precompiled filter — last, so our own setup is not constrained by it
payload start: posix_spawn with setsid (no controlling tty: no TIOCSTI) and default signals;
exec errors come back as XX with the errno.
"""

from __future__ import annotations

import _signal  # the C module: signal.py converts to enums (enum costs the CLI ~3 ms)
import os

from sandbox import _caps, _net, _payload, _rlimits, _rootfs, _scrub, _statusline, _userns
from sandbox import _init_signals as sigs
from sandbox import _syscalls as sc
from sandbox._plan import Prepared, prepare  # noqa: F401 - the parent half, re-exported
from sandbox._record import replace

TYPE_CHECKING = False  # collections.abc imports collections: ~1 ms of the CLI start
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    Target = Sequence[str] | Callable[[], int]  # argv, or (tests, launcher) a function


class StepError(Exception):
    def __init__(self, step: str, err: OSError) -> None:
        super().__init__(step)
        self.step, self.err = step, err


def _step(name: str, fn: Callable[[], object]) -> Any:
    try:
        return fn()
    except OSError as e:
        raise StepError(name, e) from e


def _report(fd: int, obj: dict) -> None:
    _write_status(fd, _statusline.encode_failure(obj))


def _write_status(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass


def _close_fds_except(keep: Sequence[int]) -> None:
    prev = -1
    for fd in sorted(set(keep)):
        if fd > prev + 1:
            sc.close_range(prev + 1, fd - 1)
        prev = fd
    sc.close_range(prev + 1, 0xFFFFFFFF)


def init_main(prep: Prepared, *, status_fd: int, sync_fd: int, parent_pidfd: int,
              pass_fds: Sequence[int], request_fd: int = -1) -> int:
    """Body of the box's pid 1. Returns only through os._exit in _spawn.py.

    With ``request_fd`` the box is *pre-warmed*: the whole setup runs ahead of time and init
    then waits for the command and its stdio/status fds on that socket (launcher warm pool).
    A setup failure is held and reported on the status pipe that comes with the request.
    """
    failure: StepError | None = None
    mnt_ns = tmpfs_fd = -1
    try:
        _step("scrub", _scrub.wipe_caller_image)
        keep = (0, 1, 2, status_fd, sync_fd, parent_pidfd, request_fd, *pass_fds,
                *_rootfs.held_fds(prep.rootfs))
        _step("fds", lambda: _close_fds_except([f for f in keep if f >= 0]))
        _step("pdeathsig", lambda: _caps.set_parent_death_signal(_signal.SIGKILL, parent_pidfd))
        _step("userns", lambda: _setup_ids(prep, sync_fd))
        if prep.ids.parent_writes:  # setresuid() just cleared PDEATHSIG (prctl(2)): set it again
            _step("pdeathsig", lambda: _caps.set_parent_death_signal(_signal.SIGKILL, parent_pidfd))
        _step("namespaces", lambda: sc.unshare(_unshared_namespaces(prep)))
        if request_fd >= 0:
            mnt_ns = _own_mount_namespace()
        tmpfs_fd = _step("rootfs", lambda: _rootfs.build_rootfs(prep.rootfs))
        _step("hostname", lambda: sc.sethostname(prep.config.hostname))
        if prep.config.network == "none":
            _step("network", _net.loopback_up)
        _step("boxuser", lambda: _userns.enter_box_user(prep.ids))
        _step("dumpable", lambda: _caps.set_dumpable(False))
    except StepError as e:
        failure = e
    ahead = False
    if request_fd >= 0:
        if failure is None:  # harden now, off the latency path; what needs the request waits
            try:
                for name, fn in _exec_hardening(prep, (), parent_pidfd, prep.rlimits):
                    if name not in AFTER_REQUEST:
                        _step(name, fn)
                ahead = True
            except StepError as e:
                failure = e
        status_fd, argv = _await_request(request_fd, mnt_ns)
        if status_fd < 0:
            return 0  # evicted from the pool before use
        prep = replace(prep, target=argv)
    if failure is not None:
        _report(status_fd, {"ok": False, "step": failure.step, "errno": failure.err.errno,
                            "error": failure.err.strerror or str(failure.err)})
        return 1
    if prep.serve:
        return _serve_requests(prep, status_fd, pass_fds[0], parent_pidfd, tmpfs_fd)
    return _supervise_payload(prep, status_fd, pass_fds, parent_pidfd, ahead)


def _serve_requests(prep: Prepared, status_fd: int, sock_fd: int, parent_pidfd: int,
                    tmpfs_fd: int) -> int:
    """A held box (``sandbox.Box``): the same hardening as an exec payload's, applied to init
    for the box's whole life, then hand the host our ``/`` and tmpfs and serve its requests
    (``sandbox._box_init``)."""
    from sandbox import _box_init, _fdpass

    root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    own, per_child = _box_init.split_limits(prep.rlimits)
    keep = [status_fd, sock_fd, root_fd, tmpfs_fd]
    if not _harden(_exec_hardening(prep, keep, parent_pidfd, own), status_fd):
        return 1
    os.close(parent_pidfd)
    # spawn_box made it inheritable for the clone: every process init starts would hold it
    # and could speak for init (forge a verdict) or take the host's requests.
    os.set_inheritable(sock_fd, False)
    import socket

    sock = socket.socket(fileno=sock_fd)
    _fdpass.send(sock, {"op": "ready"}, [root_fd, tmpfs_fd])
    sock.detach()
    for fd in (root_fd, tmpfs_fd, status_fd):
        os.close(fd)
    _box_init.null_stdio()
    return _box_init.serve(prep, sock_fd, per_child)


def _own_mount_namespace() -> int:
    try:
        return os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _await_request(request_fd: int, mnt_ns: int) -> tuple[int, list[str]]:
    """Warm box: say we are ready, then block for ``{"argv": [...]}`` + fds [stdin, stdout,
    stderr, status_w]; returns (status_w, argv), or (-1, []) when evicted.

    The ready message carries a handle on our mount namespace for the launcher to hold:
    when init exits, the last reference to a mount namespace unmounts its whole tree (tmpfs,
    overlays, /proc, /dev) synchronously in the exiting task, ~0.4 ms between the payload's
    end and the verdict. With the launcher holding it, that work happens in the launcher's
    idle time instead. (It cannot take the handle itself: we are non-dumpable by now, which
    denies it /proc/PID/ns/mnt and the pidfd namespace ioctls.)"""
    import socket

    from sandbox import _fdpass

    sock = socket.socket(fileno=request_fd)
    try:
        _fdpass.send(sock, {"ready": True}, [mnt_ns] if mnt_ns >= 0 else [])
        if mnt_ns >= 0:
            os.close(mnt_ns)
        msg, fds = _fdpass.recv(sock, max_fds=4)
    except OSError:
        return -1, []
    finally:
        sock.close()
    if not msg or len(fds) != 4:
        return -1, []
    for i in range(3):
        os.dup2(fds[i], i, inheritable=True)
        os.close(fds[i])
    import json  # the launcher's: already loaded, no I/O
    # fds[3] is close-on-exec (MSG_CMSG_CLOEXEC): the payload must not write our report
    return fds[3], [str(a) for a in json.loads(msg)["argv"]]


def _unshared_namespaces(prep: Prepared) -> int:
    flags = sc.CLONE_NEWNS | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS | sc.CLONE_NEWCGROUP
    return flags | (sc.CLONE_NEWNET if prep.config.network == "none" else 0)


def _setup_ids(prep: Prepared, sync_fd: int) -> None:
    if prep.ids.parent_writes:
        if os.read(sync_fd, 1) != b"1":  # parent wrote our maps (or died: b"")
            raise OSError(1, "parent did not write the id maps")
        _userns.become_inside_root(prep.ids)
    else:
        _userns.write_own_maps(prep.ids)
    if sync_fd >= 0:
        os.close(sync_fd)


# Hardening a warm box's init leaves for after the request: the fds it closes include the ones
# the request brings, and a small RLIMIT_NOFILE could make receiving them fail.
AFTER_REQUEST = ("rlimits", "fds")


def _exec_hardening(prep: Prepared, keep_fds: Sequence[int], parent_pidfd: int,
                    plan: _rlimits.Plan) -> list[tuple[str, Callable[[], object]]]:
    """What init applies to itself before it starts an exec payload. Switching to the box user
    changes credentials, which clears PDEATHSIG (prctl(2)): it is set again after that, and
    checked against the parent's pidfd, before seccomp may constrain prctl."""
    steps = _hardening_steps(prep, [parent_pidfd, *keep_fds], plan)
    at = [name for name, _ in steps].index("fds") + 1
    steps.insert(at, ("pdeathsig", lambda: _caps.set_parent_death_signal(_signal.SIGKILL, parent_pidfd)))
    return steps


def _hardening_steps(prep: Prepared, keep_fds: Sequence[int], plan: _rlimits.Plan | None = None,
                     ) -> list[tuple[str, Callable[[], object]]]:
    """Steps 2-7 of the payload sequence (see the module docstring), in order."""
    limits = prep.rlimits if plan is None else plan
    steps: list[tuple[str, Callable[[], object]]] = [
        ("rlimits", lambda: _rlimits.apply_rlimits(limits)),
        ("caps", _caps.drop_bounding_set),
        ("ids", lambda: _userns.become_inside_ids(prep.ids)),
        ("caps", _caps.clear_capabilities),
        ("cwd", lambda: os.chdir(prep.config.cwd)),
        ("no_new_privs", _caps.set_no_new_privs),
        ("fds", lambda: _close_fds_except([0, 1, 2, *keep_fds])),
    ]
    if prep.landlock:
        from sandbox import _landlock  # imported by prepare() in the parent

        steps.append(("landlock", lambda: _landlock.restrict_writes(prep.landlock_writable,
                                                                    prep.landlock_abi)))
    if prep.seccomp_bpf is not None:
        from sandbox import _seccomp  # already imported by prepare() in the parent: no I/O

        steps.append(("seccomp", lambda: _seccomp.load_bpf(prep.seccomp_bpf or b"")))
    return steps


def _harden(steps: list[tuple[str, Callable[[], object]]], status_fd: int) -> bool:
    """Apply ``steps`` to init itself, in order; the first that fails is reported on the status
    pipe (as its step) and stops the rest."""
    for name, fn in steps:
        try:
            fn()
        except OSError as e:
            _report(status_fd, {"ok": False, "step": name, "errno": e.errno or 0,
                                "error": e.strerror or str(e)})
            return False
    return True


def _supervise_payload(prep: Prepared, status_fd: int, pass_fds: Sequence[int],
                       parent_pidfd: int, ahead: bool = False) -> int:
    """Start the payload, forward signals, reap everything, report the payload's wait status.

    Exec targets: init hardens *itself* (it needs no privilege after the setup) and starts the
    payload with posix_spawn (vfork+exec: no copy of our Python address space — a fork here
    costs ~1.5 ms, most of a box's start-up). The payload inherits every limit, the empty
    capability sets, no_new_privs and the seccomp filter, and gets its own session (setsid:
    no controlling tty to push keystrokes into with TIOCSTI) and default signal dispositions.
    Callable targets (the pytest plugin) need Python in the payload, so they fork.

    The RLIMIT_AS fallback is the exception (see ``sandbox._payload``).

    ``ahead``: a warm box already applied every step but ``AFTER_REQUEST`` while it waited.
    """
    # Signals for the payload (our own death would kill the box) are blocked from before it
    # starts, so none is lost, and taken one at a time once it runs (``sandbox._init_signals``).
    sigs.block()
    if callable(prep.target):
        os.close(parent_pidfd)
        pid, exec_r = _fork_callable(prep, status_fd, pass_fds)
    else:
        argv = list(prep.target)
        own, as_limit = _payload.split_as_limit(prep.rlimits)
        steps = _exec_hardening(prep, [status_fd, *pass_fds], parent_pidfd, own)
        if ahead:
            steps = [step for step in steps if step[0] in AFTER_REQUEST]
        if not _harden(steps, status_fd):
            return 1
        os.close(parent_pidfd)
        try:
            pid, exec_r = _payload.start(argv, prep.env, as_limit)
        except OSError as e:
            _report(status_fd, {"ok": False, "step": "exec", "errno": e.errno or 0,
                                "error": f"{argv[0]}: {e.strerror}"})
            return 1
    fork = callable(prep.target)  # fork: its growth past its RSS at the fork is the figure
    spawner = _statusline.own_peak_rss(forked=pid if fork else 0)
    status, ru = sigs.forward_until_exit(pid)
    peak = _statusline.program_peak(ru.ru_maxrss * 1024, spawner, grown=fork) if ru else 0
    _payload.end_the_rest()
    exec_err = os.read(exec_r, 4096) if exec_r >= 0 else b""
    if exec_err:
        step, _, rest = exec_err.decode(errors="replace").partition(":")
        errno_s, _, msg = rest.partition(":")
        if step == "exec" and not msg and not callable(prep.target):
            msg = f"{prep.target[0]}: {os.strerror(int(errno_s or 0))}"
        _report(status_fd, {"ok": False, "step": step, "errno": int(errno_s or 0), "error": msg})
        return 1
    _write_status(status_fd, _statusline.encode_exit(status, peak))
    return 0


def _fork_callable(prep: Prepared, status_fd: int, pass_fds: Sequence[int]) -> tuple[int, int]:
    exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 126
        try:
            os.close(exec_r)
            os.close(status_fd)
            os.setsid()
            for sig in (*sigs.FORWARDED_SIGNALS, *sigs.JOB_CONTROL):
                _signal.signal(sig, _signal.SIG_DFL)  # whatever init inherited is not the function's
            sigs.unblock_all()
            plan = _rlimits.on_top_of_current_image(prep.rlimits)
            for name, fn in _hardening_steps(prep, [exec_w, *pass_fds], plan):
                try:
                    fn()
                except OSError as e:
                    os.write(exec_w, f"{name}:{e.errno or 0}:{e.strerror or e}".encode())
                    os._exit(126)
            os.close(exec_w)
            code = _call_target(prep)
        finally:
            os._exit(code)
    os.close(exec_w)
    return pid, exec_r


def _call_target(prep: Prepared) -> int:
    """Run the in-box function. Its Python image is a copy of the caller's, so the caller's
    environment (tokens, credentials in CI variables) is replaced by the box's clean one."""
    assert callable(prep.target)
    os.environ.clear()
    os.environ.update(prep.env)
    try:
        return int(prep.target() or 0)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - show it like Python would, then fail
        import traceback

        traceback.print_exc()
        return 1

