"""Signals at the box's init: blocked, and taken one at a time in init's own loop.

The kernel sends a pid namespace's init only the signals it handles *or blocks* (the rest are
dropped, even from the host), and the payload, which runs as init's uid, may send init as many
as it likes. A Python handler runs between the bytecodes of whatever init is doing, another
handler included: a flood of signals nested init's forwarding handler until RecursionError
killed init, and the verdict was XX instead of the program's own. So init blocks every signal it
acts on. Standard signals do not queue (one of each is pending at most), and init takes them
where it chooses: ``sigwaitinfo`` while it waits for the payload, a signalfd next to the request
socket in a held box. Nothing nests, and a flood costs init one wake-up per batch.

The half outside the box is ``sandbox._fgsignals``: what the host passes on to init.
"""

from __future__ import annotations

import _signal  # the C module: signal.py converts to enums (enum costs the CLI ~3 ms)
import os

from sandbox import _payload

TYPE_CHECKING = False
if TYPE_CHECKING:
    import resource

FORWARDED_SIGNALS = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGQUIT,
                     _signal.SIGUSR1, _signal.SIGUSR2)
GROUP_SIGNALS = (_signal.SIGINT, _signal.SIGQUIT)  # the payload is a session (and group) leader
# Ctrl-Z stops, and SIGCONT resumes, everyone in the box (init itself cannot be stopped)
JOB_CONTROL = {_signal.SIGTSTP: _signal.SIGSTOP, _signal.SIGCONT: _signal.SIGCONT}
TAKEN = (*FORWARDED_SIGNALS, *JOB_CONTROL, _signal.SIGCHLD)
HELD_BOX = (_signal.SIGCHLD, _signal.SIGXCPU)  # SIGXCPU: the soft RLIMIT_CPU must not kill init


def block(signals: tuple[int, ...] = TAKEN) -> None:
    """Before the payload starts: one sent while it starts stays pending until the wait loop.
    SIGCHLD's disposition is the default whatever init inherited: ignored, the kernel would
    reap our children itself and send no SIGCHLD, and the loop would wait for ever."""
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_BLOCK, signals)


def unblock_all() -> None:
    """In a child forked from init, before it runs anything of the payload: a blocked mask is
    inherited across fork and exec, and a program would never see SIGTERM."""
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])


def forward_until_exit(pid: int) -> tuple[int, resource.struct_rusage | None]:
    """Pass signals on to the payload ``pid`` and reap every child (orphans too: we are pid 1)
    until it ends → (its wait status, its rusage); (0, None) if it was never our child."""
    while True:
        while True:
            try:
                wpid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return 0, None
            if wpid == pid:
                return status, ru
            if wpid == 0:
                break
        sig = _signal.sigwaitinfo(TAKEN).si_signo
        if sig in JOB_CONTROL:
            _payload.kill_quiet(-1, JOB_CONTROL[sig])
        elif sig != _signal.SIGCHLD:  # Ctrl-C and Ctrl-\ to its whole group, as a terminal does
            _payload.kill_quiet(-pid if sig in GROUP_SIGNALS else pid, sig)


def drain(fd: int) -> None:
    """Empty a non-blocking fd whose bytes only say "a signal came" (init's signalfd: we reap
    every child anyway; the foreground caller's wakeup pipe: its handlers have run)."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
