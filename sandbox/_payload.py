"""How the box's init starts an exec payload, once it has hardened itself.

The fast path is posix_spawn (vfork+exec: no copy of init's Python address space — a fork costs
~1.5 ms): the payload inherits every limit, the empty capability sets, no_new_privs and the
seccomp filter, and gets its own session (setsid: no controlling tty to push keystrokes into
with TIOCSTI) and default signal dispositions.

The RLIMIT_AS fallback (no cgroup memory controller) is the exception: the limit counts init's
own address space, a copy of the (large, multi-arena) caller's, and posix_spawn must map the
child's stack in it. When init does not fit under the limit it keeps no RLIMIT_AS itself and
forks a child that sets it just before exec (``sandbox run --memory 16M -- true`` must work).
"""

from __future__ import annotations

import _signal  # the C module: signal.py converts to enums (enum costs the CLI ~3 ms)
import os

from sandbox import _rlimits
from sandbox import _syscalls as sc
from sandbox._config import DEFAULT_PATH

SPAWN_SIGDEF = tuple(s for s in _signal.valid_signals() if s not in (_signal.SIGKILL, _signal.SIGSTOP))


def start(argv: list[str], env: dict[str, str], as_plan: _rlimits.Plan) -> tuple[int, int]:
    """→ (pid, fd of a pipe that carries ``exec:<errno>:`` if the exec failed, or -1).
    Raises OSError when posix_spawn itself reports the exec failure."""
    # posix_spawnp and execvpe search *our* PATH (not the one in the env they are given)
    os.environ["PATH"] = env.get("PATH", DEFAULT_PATH)
    tty = os.isatty(0) and os.isatty(1)  # the host gave us a pty of its own (``sandbox._pty``)
    if as_plan or tty:
        return fork_exec(argv, env, as_plan, tty)
    pid = os.posix_spawnp(argv[0], argv, env, setsid=True, setsigdef=SPAWN_SIGDEF, setsigmask=())
    return pid, -1


# Room init keeps under an RLIMIT_AS it shares with the payload it spawns: posix_spawn's child
# stack and init's few later allocations (the wait loop, the JSON report).
AS_HEADROOM = 16 << 20


def split_as_limit(plan: _rlimits.Plan) -> tuple[_rlimits.Plan, _rlimits.Plan]:
    """→ (limits init applies to itself, RLIMIT_AS to set in a forked child only)."""
    as_plan = [x for x in plan if x[0] == _rlimits.RLIMIT_AS]
    if not as_plan:
        return plan, []
    if _rlimits.address_space_size() + AS_HEADROOM <= as_plan[0][1]:
        return plan, []  # we fit: keep the cheap posix_spawn path
    return [x for x in plan if x[0] != _rlimits.RLIMIT_AS], as_plan


def fork_exec(argv: list[str], env: dict[str, str], as_plan: _rlimits.Plan,
              tty: bool = False) -> tuple[int, int]:
    """fork + setrlimit(RLIMIT_AS) + execvpe, doing by hand what posix_spawn does for us on the
    fast path (setsid, default signal dispositions, empty mask). With ``tty`` (stdin and stdout
    are the box's pty) the new session takes it as its controlling terminal (login_tty: setsid,
    TIOCSCTTY, fds 0–2 the terminal), which posix_spawn cannot do: job control, Ctrl-C as
    SIGINT to the foreground job, a shell's prompt. The child is a copy of init,
    possibly far above the limit, so the last two calls are prepared in C before the fork
    (``PreparedExec``). An exec error reaches init through a close-on-exec pipe as
    ``exec:<errno>:`` (init adds the words: the child cannot allocate them)."""
    do_exec = sc.PreparedExec(argv, env, _rlimits.clamped(as_plan))
    exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(exec_r)
            if tty:
                os.login_tty(0)
            else:
                os.setsid()
            for sig in SPAWN_SIGDEF:
                try:
                    _signal.signal(sig, _signal.SIG_DFL)
                except (OSError, ValueError):
                    pass  # signals Python refuses (glibc-internal ones) keep their default
            _signal.pthread_sigmask(_signal.SIG_SETMASK, [])
            err = do_exec()
            os.write(exec_w, b"exec:%d:" % err)
        finally:
            os._exit(127)
    os.close(exec_w)
    return pid, exec_r


def end_the_rest() -> None:
    """The payload is done: kill what it left running and reap it, before the report. The
    kernel would kill them when we exit, but unwaited-for (zap_pid_ns_processes): their CPU time
    would be in nobody's rusage, and the verdict would miss what they used."""
    try:
        os.kill(-1, _signal.SIGKILL)  # from a pid namespace's init: everyone in it but us
    except OSError:
        return  # ESRCH: nobody else
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def kill_quiet(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass

