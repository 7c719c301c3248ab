"""`sandbox run` at a terminal: the box gets a pty of its own (never ours), with a prompt, job
control, Ctrl-C for the program, the window size, and our terminal's modes exactly as before
on the way out. Driven through a real pty (``pty.fork``), as a user's terminal would."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

SANDBOX = [sys.executable, "-m", "sandbox._cli"]
TIOCGPTN = 0x80045430  # the pty number of a master (not in Python's termios)


class Session:
    """The CLI on the slave side of a pty of ours; we are the user's terminal (the master)."""

    def __init__(self, *args: str, rows: int = 0, cols: int = 0, command: str = "run") -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: its controlling terminal is the pty's slave
            try:
                os.execv(sys.executable, [*SANDBOX, command, *args])
            finally:
                os._exit(127)
        if rows:
            self.resize(rows, cols)
        self.out = b""

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def expect(self, what: bytes, timeout: float = 20) -> bytes:
        end = time.monotonic() + timeout
        while what not in self.out:
            left = end - time.monotonic()
            assert left > 0, f"no {what!r} in {self.out!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: the CLI (and so the terminal's last user) is gone
                    chunk = b""
                assert chunk, f"ended before {what!r}: {self.out!r}"
                self.out += chunk
        return self.out

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def finish(self, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                self.out += chunk
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        raise AssertionError(f"the CLI did not end: {self.out!r}")


def test_a_shell_gets_a_prompt_and_a_terminal_and_its_exit_code(no_leftovers):
    s = Session("--", "sh", "-i")
    s.expect(b"$ ")
    s.send(b"test -t 0 && test -t 1 && echo term-$((40+2)) $(tty)\r")
    s.expect(b"term-42 /dev/console")  # ttyname finds the box's pty
    s.send(b"exit 4\r")
    assert s.finish() == 4


def test_sandbox_shell_is_an_interactive_shell_in_a_box(no_leftovers):
    s = Session(command="shell")
    s.expect(b"$ ")
    s.send(b"echo $((6*7)) $(id -u) $(hostname)\r")
    s.expect(b"42 1000 sandbox")
    s.send(b"exit\r")
    assert s.finish() == 0


def test_sandbox_shell_takes_at_most_an_image():
    p = subprocess.run([*SANDBOX, "shell", "alpine", "ls"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "'alpine ls'" in p.stderr, p.stderr


def test_ctrl_c_interrupts_the_program_not_the_box(no_leftovers):
    s = Session("--", "python3", "-q")
    s.expect(b">>> ")
    s.send(b"import time; time.sleep(60)\r")
    time.sleep(1)
    s.send(b"\x03")  # the box's line discipline: SIGINT to the REPL, which carries on
    s.expect(b"KeyboardInterrupt")
    s.send(b"print('still', 'here')\r")
    s.expect(b"still here\r\n>>> ")
    s.send(b"exit()\r")
    assert s.finish() == 0


def test_job_control_inside_the_box(no_leftovers):
    """^Z reaches the box's shell's foreground job (a group of that shell's session), which
    the shell then reports stopped and can resume."""
    s = Session("--", "sh", "-i")
    s.expect(b"$ ")
    s.send(b"sleep 60\r")
    time.sleep(1)
    s.send(b"\x1a")
    s.expect(b"Stopped")
    s.send(b"kill -9 %1; echo killed-$((1+1))\r")
    s.expect(b"killed-2")
    s.send(b"exit\r")  # "You have stopped jobs" (the killed one is not reaped yet)
    s.expect(b"exit\r\n")
    time.sleep(0.5)
    s.send(b"exit\r")  # the second time it exits
    assert s.finish() == 0


def test_our_terminal_is_raw_during_the_run(no_leftovers):
    """Every key goes to the box (its own line discipline makes ^C a SIGINT there)."""
    s = Session("--", "sh", "-c", "echo started; sleep 1")
    s.expect(b"started")
    during = termios.tcgetattr(s.fd)  # (the master reads the slave's modes: the CLI's terminal)
    assert not during[3] & (termios.ECHO | termios.ICANON | termios.ISIG), during[3]
    assert s.finish() == 0


def test_modes_after_exit_equal_modes_before(no_leftovers):
    """`stty -echo` in the box changes the box's pty, never ours: after the run our terminal's
    modes are exactly what they were."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            mode = termios.tcgetattr(0)
            subprocess.run([*SANDBOX, "run", "--", "sh", "-c", "stty -echo; exit 3"])
            os._exit(0 if termios.tcgetattr(0) == mode else 1)
        finally:
            os._exit(2)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out


def test_the_window_size_is_the_terminals_and_follows_a_resize(no_leftovers):
    code = ("import os, signal, time\n"
            "signal.signal(signal.SIGWINCH, lambda *a: os.write(1, b'now %d %d\\n' % tuple(os.get_terminal_size())))\n"
            "print('size', *os.get_terminal_size(), flush=True)\n"
            "time.sleep(10)\n")
    s = Session("--", "python3", "-c", code, rows=24, cols=91)
    s.expect(b"size 91 24")
    s.resize(40, 132)  # the kernel sends SIGWINCH to the CLI (our foreground job)
    s.expect(b"now 132 40")
    os.kill(s.pid, 15)
    s.finish()


def test_the_box_never_holds_our_terminal(no_leftovers):
    s = Session("--", "sh", "-c", "readlink /proc/self/fd/0 /proc/self/fd/1 /proc/self/fd/2")
    n = struct.unpack("I", fcntl.ioctl(s.fd, TIOCGPTN, b"\0" * 4))[0]
    assert s.finish() == 0
    ours = f"/dev/pts/{n}".encode()
    links = [line.strip() for line in s.out.splitlines() if line.startswith(b"/")]
    assert len(links) == 3 and ours not in links and len(set(links)) == 1, (ours, s.out)


def test_tty_without_a_terminal_is_a_usage_error():
    p = subprocess.run([*SANDBOX, "run", "-t", "--", "true"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--tty" in p.stderr, p.stderr


def test_no_tty_at_a_terminal_gives_pipes(no_leftovers):
    s = Session("-T", "--", "sh", "-c", "test -t 0 || test -t 1 || echo pipes")
    assert s.finish() == 0 and b"pipes" in s.out, s.out


JOB_SHELL = r"""
import os, signal, sys, time
signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a shell moves the terminal between its jobs
child = os.fork()
if child == 0:  # the job: a process group of its own, in the terminal's foreground
    os.setpgid(0, 0)
    os.tcsetpgrp(0, os.getpgrp())
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    os.execv(sys.argv[1], sys.argv[1:])
os.setpgid(child, child)
os.write(1, b"cli=%d\n" % child)
while True:
    pid, status = os.waitpid(child, os.WUNTRACED)
    if os.WIFSTOPPED(status):  # Ctrl-Z: the job stopped; `fg` it a moment later
        os.tcsetpgrp(0, os.getpgrp())
        os.write(1, b"STOPPED\n")
        time.sleep(float(os.environ["FG_AFTER"]))
        os.tcsetpgrp(0, child)
        os.killpg(child, signal.SIGCONT)
        continue
    os._exit(os.waitstatus_to_exitcode(status))
"""


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def test_ctrl_z_on_a_program_without_job_control_stops_the_whole_box(no_leftovers):
    """With -t every key goes to the box, but a bare program has nobody to stop it (its group
    is orphaned: the kernel drops its terminal's SIGTSTP). So Ctrl-Z then stops the whole box
    and `sandbox run`, as without -t; `fg` resumes both, and no wall time passed meanwhile."""
    code = "import time\nfor i in range(30):\n    print('tick', i, flush=True)\n    time.sleep(0.1)\n"
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.environ["FG_AFTER"] = "6.5"  # longer than the wall time
            os.execv(sys.executable, [sys.executable, "-c", JOB_SHELL, *SANDBOX,
                                      "run", "--wall-time", "6s", "--", "python3", "-c", code])
        finally:
            os._exit(127)
    s = Session.__new__(Session)
    s.pid, s.fd, s.out = pid, fd, b""
    cli = int(s.expect(b"tick 2").split(b"cli=")[1].split(b"\n")[0])
    s.send(b"\x1a")
    s.expect(b"STOPPED")
    kids = [int(k) for k in open(f"/proc/{cli}/task/{cli}/children").read().split()]
    init_kids = [int(k) for k in open(f"/proc/{kids[0]}/task/{kids[0]}/children").read().split()]
    end = time.monotonic() + 10  # init stops the program on its own time, just after
    while [_state(p) for p in init_kids] != ["T"] and time.monotonic() < end:
        time.sleep(0.02)
    assert _state(cli) == "T" and [_state(p) for p in init_kids] == ["T"], init_kids
    assert s.finish() == 0, s.out  # 3 s of ticks + 6.5 s stopped under a 6 s wall time
    assert b"tick 29" in s.out


def test_ctrl_c_at_a_terminal_without_tty_reaches_the_program_once(no_leftovers):
    """With -T the terminal's SIGINT goes to `sandbox run`'s group, which passes it on; init
    is out of that group (its own session), or the program got it twice."""
    code = ("import signal, time\nn = []\nsignal.signal(signal.SIGINT, lambda *a: n.append(1))\n"
            "print('ready', flush=True)\ntime.sleep(2)\nprint('total', len(n), flush=True)\n")
    s = Session("-T", "--", "python3", "-c", code)
    s.expect(b"ready")
    s.send(b"\x03")
    assert s.finish() == 0 and b"total 1" in s.out, s.out



BACKGROUND_SHELL = r"""
import os, signal, sys, termios, time
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
mode = termios.tcgetattr(0)
mode[3] |= termios.TOSTOP  # `stty tostop`: a background job writing the terminal is stopped
termios.tcsetattr(0, termios.TCSANOW, mode)
child = os.fork()
if child == 0:  # `sandbox run ... &`: a job of its own, not the terminal's foreground one
    os.setpgid(0, 0)
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    os.execv(sys.argv[1], sys.argv[1:])
os.setpgid(child, child)
os.write(1, b"cli=%d\n" % child)
while True:
    pid, status = os.waitpid(child, os.WUNTRACED)
    if os.WIFSTOPPED(status):  # it wrote to the terminal from the background: `fg` it later
        os.write(1, b"STOPPED %d\n" % os.WSTOPSIG(status))
        time.sleep(float(os.environ["FG_AFTER"]))
        os.tcsetpgrp(0, child)
        os.killpg(child, signal.SIGCONT)
        continue
    os._exit(os.waitstatus_to_exitcode(status))
"""


def test_a_background_run_stopped_by_its_terminal_stops_with_its_box(no_leftovers):
    """A background job writing its terminal under `stty tostop` gets SIGTTOU, whose default
    stops only that process: the box would run on against its wall time with nobody reading
    it. Like Ctrl-Z, it stops the whole box; `fg` resumes both, the stopped time is no wall
    time, and nothing printed is lost."""
    code = "import time\nfor i in range(30):\n    print('tick', i, flush=True)\n    time.sleep(0.1)\n"
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.environ["FG_AFTER"] = "4.5"  # longer than the wall time
            os.execv(sys.executable, [sys.executable, "-c", BACKGROUND_SHELL, *SANDBOX, "run",
                                      "-T", "--wall-time", "4s", "--", "python3", "-c", code])
        finally:
            os._exit(127)
    s = Session.__new__(Session)
    s.pid, s.fd, s.out = pid, fd, b""
    cli = int(s.expect(b"STOPPED %d" % signal.SIGTTOU).split(b"cli=")[1].split(b"\n")[0])
    kids = [int(k) for k in open(f"/proc/{cli}/task/{cli}/children").read().split()]
    init_kids = [int(k) for k in open(f"/proc/{kids[0]}/task/{kids[0]}/children").read().split()]
    end = time.monotonic() + 10
    while [_state(p) for p in init_kids] != ["T"] and time.monotonic() < end:
        time.sleep(0.02)
    assert _state(cli) == "T" and [_state(p) for p in init_kids] == ["T"], init_kids
    assert s.finish() == 0, s.out  # 4.5 s stopped under a 4 s wall time
    assert s.out.count(b"tick ") == 30, s.out
