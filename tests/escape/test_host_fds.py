"""Nothing of the caller's own stdin/stdout/stderr crosses into a box (issue 13, escapes 4, 5).

`sandbox run` used to hand its fd 0 to the box. A file given as `< in.txt` could then be
reopened for writing through /proc/self/fd/0 (with the single-id map the box user owns it),
a terminal could be flooded past the output cap and have its modes, window size and TIOCEXCL
changed for good, and a socket's peer received whatever the box sent. The CLI now feeds the
box's stdin through a pipe of its own, so each of these reaches only that pipe.

The real `bin/sandbox` is driven as a user would: through a subprocess, with the terminal or
socket as its stdin.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

from tests.conftest import descendants
from tests.test_shutdown import _wait_gone

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "bin", "sandbox")
CLI = [sys.executable, SCRIPT, "run"]
TIOCGEXCL = 0x80045440  # _IOR('T', 0x40, int); not in Python's termios
MiB = 1 << 20

STDIN_REPORT = """
import os, stat, sys
st = os.fstat(0)
n = 0
while chunk := os.read(0, 1 << 20):
    n += len(chunk)
sys.stdout.write(f"{os.readlink('/proc/self/fd/0')} {stat.S_ISFIFO(st.st_mode)} {st.st_ino} {n}")
"""


def _py(code: str, *opts: str) -> list[str]:
    return [*CLI, *opts, "--", "python3", "-c", code]


def test_host_file_as_stdin_cannot_be_written_through_proc(tmp_path):
    """Escape 4: `sandbox run -- prog < in.txt`, and prog reopens /proc/self/fd/0 for append."""
    victim = tmp_path / "in.txt"
    victim.write_bytes(b"orig\n")
    code = ("import os\nprint(os.readlink('/proc/self/fd/0'), flush=True)\n"
            "try:\n    fd = os.open('/proc/self/fd/0', os.O_WRONLY | os.O_APPEND)\n"
            "    os.write(fd, b'pwned\\n')\n    os.close(fd)\n"
            "except OSError as e:\n    print('refused', e.errno)\n"
            "data = b''\nwhile chunk := os.read(0, 100):\n    data += chunk\n"
            "print(sorted(data.splitlines()))")
    with open(victim, "rb") as f:
        p = subprocess.run(_py(code), stdin=f, capture_output=True, timeout=60)
    assert victim.read_bytes() == b"orig\n", p
    link = p.stdout.split(b"\n", 1)[0]
    assert link.startswith(b"pipe:[") and str(tmp_path).encode() not in p.stdout, p
    # still read as input; the reopen is a write end of the box's own stdin pipe, so whatever
    # it wrote there comes back to it, and only to it (before or after the host's bytes); as
    # root the box user does not own the pipe, and the reopen is refused
    wrote = b"[b'orig']" if b"refused" in p.stdout else b"[b'orig', b'pwned']"
    assert p.returncode == 0 and p.stdout.splitlines()[-1] == wrote, p


@pytest.fixture
def terminal():
    """A pty whose master the test drains (counting what reaches the 'terminal')."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    got = [0]
    stop = threading.Event()

    def drain() -> None:
        while True:
            if not select.select([master], [], [], 0.05)[0]:
                if stop.is_set():
                    return
                continue
            try:
                got[0] += len(os.read(master, 1 << 16))
            except OSError:
                return

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    yield master, slave, got, stop
    stop.set()
    t.join(10)
    os.close(slave)
    os.close(master)


TTY_ATTACK = """
import errno, fcntl, os, struct, sys, termios
log = []
def attempt(name, f):
    try:
        f(); log.append(name + ":ok")
    except (OSError, termios.error) as e:
        no = e.args[0]
        log.append(name + ":" + errno.errorcode.get(no, str(no)))
def raw(fd):
    a = termios.tcgetattr(fd)
    a[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG)
    termios.tcsetattr(fd, termios.TCSANOW, a)
def flood(fd):
    for _ in range(48):
        os.write(fd, b"x" * 65536)
fds = {"0": 0, "1": 1, "2": 2}
for name, path in (("proc0", "/proc/self/fd/0"), ("proc1", "/proc/self/fd/1"),
                   ("devtty", "/dev/tty")):
    try:  # non-blocking: a reopened pipe of the box's own would just fill up
        fds[name] = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        log.append(name + ":open " + errno.errorcode.get(e.errno, str(e.errno)))
for name, fd in fds.items():
    attempt(name + ".modes", lambda: raw(fd))
    attempt(name + ".winsize", lambda: fcntl.ioctl(fd, termios.TIOCSWINSZ,
                                                   struct.pack("HHHH", 7, 9, 0, 0)))
    attempt(name + ".excl", lambda: fcntl.ioctl(fd, termios.TIOCEXCL))
for name in ("0", "proc0", "devtty"):
    if name in fds:
        attempt(name + ".flood", lambda: flood(fds[name]))
sys.stderr.write(" ".join(log) + "\\n"); sys.stderr.flush()
flood(1)  # the legitimate stream: cut at the output cap
"""


def test_terminal_as_stdin_and_stdout_is_not_handed_in(terminal):
    """Escape 5: the box cannot write to the terminal past the output cap, nor change its
    modes, window size or exclusive mode (through fd 0/1, /proc/self/fd reopens or /dev/tty)."""
    _, slave, got, stop = terminal
    modes, size = termios.tcgetattr(slave), fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8)
    p = subprocess.run(_py(TTY_ATTACK, "--output-limit", "1M"), stdin=slave, stdout=slave,
                       stderr=subprocess.PIPE, timeout=120)
    time.sleep(0.2)
    stop.set()
    assert termios.tcgetattr(slave) == modes, p.stderr
    assert fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8) == size, p.stderr
    assert struct.unpack("i", fcntl.ioctl(slave, TIOCGEXCL, b"\0" * 4))[0] == 0, p.stderr
    assert got[0] <= MiB, (got[0], p.stderr)
    assert p.returncode == 141 and b":ok" not in p.stderr.split(b"\n")[0], p.stderr


def test_socket_as_stdin_reaches_only_a_pipe(no_leftovers):
    """A socket as stdin: the box reads what was sent, but nothing it writes or sends on fd 0
    (bytes, or an fd of its own over SCM_RIGHTS) reaches the socket's peer."""
    host, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    code = ("import os, socket\nprint(os.read(0, 100), os.readlink('/proc/self/fd/0'))\n"
            "for f in (lambda: os.write(0, b'pwned'), lambda: socket.socket(fileno=0).sendmsg("
            "[b'x'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(4))])):\n"
            "    try:\n        f()\n    except OSError as e:\n        print('refused', e.errno)")
    try:
        with theirs:
            proc = subprocess.Popen(_py(code), stdin=theirs, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        host.sendall(b"hello\n")
        host.shutdown(socket.SHUT_WR)
        out, err = proc.communicate(timeout=60)
        host.settimeout(10)
        data, anc, _, _ = host.recvmsg(100, socket.CMSG_SPACE(16))
        for _, _, fds in anc:  # an fd the box sent would now be open here
            for fd in struct.unpack(f"{len(fds) // 4}i", fds):
                os.close(fd)
        assert (data, anc) == (b"", []), (data, anc, out, err)
        assert out.startswith(b"b'hello\\n' pipe:["), (out, err)
    finally:
        host.close()


# The CLI's own peak memory: wait4 on a child of pytest would not do, since exec folds the
# old address space's high-water mark into the process's ru_maxrss, and a child of pytest
# starts as a copy of pytest. This small parent forks the CLI, waits and reports its peak.
PEAK_RSS = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
os.write(2, b"%d %d" % (os.waitstatus_to_exitcode(status), usage.ru_maxrss))
"""


@pytest.mark.parametrize("how", ["file", "pipe"])
def test_large_stdin_streams_through_an_interposed_pipe(tmp_path, how, no_leftovers):
    """`sandbox run -- prog < big` and `producer | sandbox run -- prog` with 100 MiB: every
    byte arrives, through a pipe the CLI made (not the caller's own file or pipe), and the
    CLI never holds the stream in memory."""
    size = 100 * MiB
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(size - 1)
        f.seek(size - 1)
        f.write(b"!")
    argv = [sys.executable, "-c", PEAK_RSS, *_py(STDIN_REPORT)]
    if how == "file":
        with open(big, "rb") as src:
            theirs = os.fstat(src.fileno()).st_ino
            proc = subprocess.Popen(argv, stdin=src, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
    else:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        pipe, proc.stdin = proc.stdin, None  # the writer's, not communicate()'s to close
        assert pipe is not None
        theirs = os.fstat(pipe.fileno()).st_ino
        writer = threading.Thread(target=_write_and_close, args=(pipe, big))
        writer.start()
    out, err = proc.communicate(timeout=120)
    if how == "pipe":
        writer.join(10)
    link, fifo, ino, n = out.decode().split()
    code, peak_kib = map(int, err.split()[-2:])
    assert (code, fifo, n) == (0, "True", str(size)) and link.startswith("pipe:"), (out, err)
    assert int(ino) != theirs, "the box got the caller's own stdin"
    # ru_maxrss covers the CLI and everything it reaped (the box's init, hence the box)
    assert peak_kib * 1024 < 60 * MiB, peak_kib


def _write_and_close(pipe, path) -> None:
    with open(path, "rb") as f, pipe:
        while chunk := f.read(MiB):
            pipe.write(chunk)


def test_shell_pipelines_keep_working(tmp_path):
    data = b"line\n" * 200_000
    p = subprocess.run([*CLI, "--", "wc", "-c"], input=data, capture_output=True, timeout=60)
    assert (p.returncode, p.stdout.strip()) == (0, str(len(data)).encode()), p
    (tmp_path / "in").write_bytes(data)
    with open(tmp_path / "in", "rb") as f:
        p = subprocess.run([*CLI, "--", "cat"], stdin=f, capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stdout == data


def _close_stdin() -> None:
    os.close(0)


@pytest.mark.parametrize("how", ["devnull", "closed"])
def test_null_or_closed_stdin_is_eof(how):
    p = subprocess.run(_py("import os; print(os.read(0, 10))"), stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60,
                       preexec_fn=_close_stdin if how == "closed" else None)
    assert (p.returncode, p.stdout) == (0, b"b''\n"), p


def test_box_that_ignores_or_closes_stdin_does_not_hang_the_cli():
    """A stdin that never ends (nobody closes the write side) or that runs on forever: the
    CLI ends when the box does, and the producer sees the pipe close (SIGPIPE/EPIPE)."""
    p = subprocess.Popen([*CLI, "--", "true"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.wait(timeout=30) == 0
    finally:
        assert p.stdin is not None
        p.stdin.close()
        p.stdout.close()  # type: ignore[union-attr]
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        p = subprocess.run([*CLI, "--", "head", "-c", "10"], stdin=yes.stdout,
                           capture_output=True, timeout=60)
    finally:
        yes.stdout.close()  # type: ignore[union-attr]
        assert yes.wait(timeout=30) == -signal.SIGPIPE
    assert (p.returncode, p.stdout) == (0, b"y\ny\ny\ny\ny\n"), p


def _runs(pids: set[int], program: str) -> bool:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == program:
                    return True
        except OSError:
            continue
    return False


def test_ctrl_c_while_feeding_stdin_kills_the_box(tmp_path):
    """SIGINT while the CLI waits to push more input into a box that never reads it."""
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(8 * MiB)
    with open(big, "rb") as f:
        p = subprocess.Popen([*CLI, "--", "sh", "-c", "echo ready; sleep 1000"], stdin=f,
                             stdout=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stdout is not None
    if not select.select([p.stdout], [], [], 30)[0]:  # the CLI is stuck feeding stdin
        p.kill()
    assert p.stdout.readline() == b"ready\n"
    # Until sleep has exec'd, the shell's fork of it has the shell's SIGINT handler (dash
    # catches SIGINT under -c): a Ctrl-C then is absorbed, and dash waits on for the sleep.
    deadline = time.monotonic() + 10
    while not _runs(boxed := descendants(p.pid), "sleep") and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=10) == 130
    p.stdout.close()
    assert _wait_gone(boxed) == set(), "box processes outlived the CLI"


BACKGROUND_JOB = """
import os, select, sys
tty = os.open(sys.argv[1], os.O_RDWR)  # session leader: this becomes our controlling terminal
pid = os.fork()
if pid == 0:  # a background job of this 'shell': its own process group, stdin the terminal
    os.setpgid(0, 0)
    os.dup2(tty, 0)
    os.execv(sys.argv[2], sys.argv[2:])
os.write(1, b"started\\n")
_, status = os.waitpid(pid, os.WUNTRACED)
if os.WIFSTOPPED(status):
    os.kill(pid, 9)
    os.waitpid(pid, 0)
typed = os.read(tty, 100) if select.select([tty], [], [], 2)[0] else b""
print(os.WIFSTOPPED(status), os.waitstatus_to_exitcode(status) if not os.WIFSTOPPED(status)
      else None, typed)
"""


def test_background_job_leaves_the_terminal_to_the_shell(terminal):
    """`sandbox run -- job &` in an interactive shell: what the user types meanwhile is the
    shell's (the CLI reads its terminal only in the foreground), and the job is not stopped
    by SIGTTIN (which would leave its box unsupervised)."""
    master, slave, _, _ = terminal
    p = subprocess.Popen([sys.executable, "-c", BACKGROUND_JOB, os.ttyname(slave), *CLI, "--",
                          "sh", "-c", "sleep 1; echo done >&2"], start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    assert p.stdout.readline() == b"started\n"
    time.sleep(0.3)
    os.write(master, b"typed\n")  # the user types while the job runs in the background
    out, err = p.communicate(timeout=60)
    assert out == b"False 0 b'typed\\n'\n" and err == b"done\n", (out, err)
