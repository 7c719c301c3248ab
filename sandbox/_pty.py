"""A terminal of the box's own, for a caller at a terminal (``sandbox run -t``).

Why not hand the caller's terminal in: the box could push keystrokes into it (TIOCSTI), change
its modes and size for good, write to it past every output cap, and learn its host path. So a
pty pair is made here and the box gets only its slave side, as stdin and stdout. init makes it
the program's controlling terminal (``_payload.fork_exec``'s login_tty), so a shell shows its
prompt and has job control, and Ctrl-C is the box's own line discipline's SIGINT for the box's
foreground job, not the end of the box.

We relay: our terminal → the master through ``_direct.StdinFeed``, the master → our stdout
through the capped stdout buffer (a terminal has one output stream: stderr is merged, as with
``docker run -t``; init's own stderr stays a pipe). The slave starts with our terminal's modes
and size; every SIGWINCH we get copies the size again (the kernel then sends SIGWINCH to the
box's foreground job). Our terminal is raw for the run: every key goes to the box, but for a
Ctrl-Z nothing in the box could act on (``keys``): that one stops the whole box, as without -t. Its modes
are put back on every way out a process can see: return, exception, a stop (SIGTSTP: back to
the user's modes while stopped, raw again after SIGCONT), SIGTERM/SIGHUP (passed on, the run
ends normally). A SIGKILL of the CLI leaves it raw: ``reset`` (or ``stty sane``) repairs it.
"""

from __future__ import annotations

import _signal
import fcntl
import os
import struct
import termios

RAW_OFF_LFLAG = termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN
TIOCGSID = 0x5429  # the session a terminal belongs to (not in Python's termios)


def foreground(fd: int) -> bool:
    """Whether the terminal ``fd`` is ours to use: our process group is its foreground one."""
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False


class Terminal:
    """The box's pty (``master``, ``slave``) and our terminal ``host`` (fd), raw until close."""

    def __init__(self, host: int) -> None:
        self.host = host
        self.saved = termios.tcgetattr(host)
        self.master, self.slave = os.openpty()  # (glibc opens the slave O_NOCTTY: never ours)
        try:
            termios.tcsetattr(self.slave, termios.TCSANOW, self.saved)
            self.copy_size()
            self.raw(True)
        except BaseException:
            self.close()
            raise

    def copy_size(self) -> None:
        """Our window size onto the box's terminal (at start, and on SIGWINCH)."""
        try:
            size = fcntl.ioctl(self.host, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
        except OSError:
            pass

    def raw(self, on: bool) -> None:
        """Raw (cfmakeraw's flags) or the user's own modes again; TCSADRAIN: after what we
        already wrote, so nothing printed in one mode is shown in the other."""
        if not on:
            termios.tcsetattr(self.host, termios.TCSADRAIN, self.saved)
            return
        mode = termios.tcgetattr(self.host)
        mode[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                     | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
        mode[1] &= ~termios.OPOST
        mode[2] = (mode[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        mode[3] &= ~RAW_OFF_LFLAG
        mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
        termios.tcsetattr(self.host, termios.TCSADRAIN, mode)

    def keys(self, chunk: bytes) -> bytes:
        """What the user typed, on its way to the box. Ctrl-Z suspends the whole box (and us)
        when nothing in the box has job control to use it: the terminal's foreground group is
        its session leader's own (a bare program, not a shell's job), whose SIGTSTP the kernel
        would discard (an orphaned group: its parent, init, is of another session). A shell's
        job gets the key as usual."""
        if _signal.getsignal(_signal.SIGTSTP) in (_signal.SIG_DFL, _signal.SIG_IGN, None):
            return chunk  # nobody would stop the box first (no _fgsignals.Forwarder)
        try:
            mode = termios.tcgetattr(self.master)  # (the slave's: the box's line discipline)
            susp = mode[6][termios.VSUSP]
            if not mode[3] & termios.ISIG or susp not in chunk or susp == b"\0":
                return chunk
            sid = struct.unpack("i", fcntl.ioctl(self.master, TIOCGSID, b"\0" * 4))[0]
            if os.tcgetpgrp(self.master) != sid:
                return chunk
        except (OSError, termios.error):
            return chunk
        os.kill(os.getpid(), _signal.SIGTSTP)  # _fgsignals: the box stops, then we do
        return chunk.replace(susp, b"")

    def on_stop(self, stopping: bool) -> None:
        """``_fgsignals.Forwarder``'s hook around a stop: the user's modes while we are stopped;
        raw again only if we came back in the foreground (``bg``: a background job changing
        the terminal's modes would be stopped again by SIGTTOU, and they are the shell's). A
        stop in the background (SIGTTIN/SIGTTOU) leaves the modes alone for the same reason."""
        if not foreground(self.host):
            return
        try:
            self.raw(not stopping)
        except termios.error:
            pass

    def close(self) -> None:
        """Our terminal as it was; the pty's fds closed (idempotent)."""
        try:
            termios.tcsetattr(self.host, termios.TCSADRAIN, self.saved)
        except termios.error:
            pass
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1
