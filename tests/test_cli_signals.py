"""`sandbox run` in a shell's foreground: signals sent to the CLI reach the program, Ctrl-Z stops
the whole box, and a pipeline's reader going away ends the program as it would end a plain one
(SIGPIPE), not at the output cap. Real processes and signals; no terminal needed here (the
terminal's own tests are in test_cli_tty.py)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

SANDBOX = [sys.executable, "-m", "sandbox._cli"]
HEAD = "import os, signal, sys, time\n"
READY = "print('ready', flush=True)\n"  # after the handlers: a signal before them is fatal


def _start(code: str, *opts: str) -> subprocess.Popen[bytes]:
    """The CLI running python3 ``code`` (which prints READY once set up) in a box, in a process group of its own (job control:
    a stop signal to an orphaned group would be discarded by the kernel)."""
    p = subprocess.Popen([*SANDBOX, "run", *opts, "--", "python3", "-c", HEAD + code],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         process_group=0)
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n", p.stderr.read() if p.stderr else b""
    return p


def _finish(p: subprocess.Popen[bytes], timeout: float = 30) -> tuple[int, bytes, bytes]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def test_sigterm_reaches_the_programs_handler(no_leftovers):
    p = _start("signal.signal(signal.SIGTERM, lambda *a: (os.write(1, b'term\\n'), os._exit(3)))\n"
               + READY + "time.sleep(30)")
    p.send_signal(signal.SIGTERM)
    code, out, err = _finish(p)
    assert (code, out) == (3, b"term\n"), err


def test_sighup_sigusr1_and_sigint_are_passed_on_not_fatal_to_the_box(no_leftovers):
    p = _start("got = []\n"
               "for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGINT):\n"
               "    signal.signal(s, lambda n, f: got.append(n))\n"
               + READY + "while len(got) < 3:\n    time.sleep(0.05)\n"
               "print(sorted(got), flush=True)")
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGINT):
        p.send_signal(sig)
        time.sleep(0.2)
    code, out, err = _finish(p)
    want = sorted([signal.SIGHUP, signal.SIGUSR1, signal.SIGINT])
    assert code == 0 and out == f"{[int(s) for s in want]}\n".encode(), (code, out, err)


def test_after_sigterm_the_stop_timeout_then_kills_the_box(no_leftovers):
    p = _start("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + READY + "time.sleep(60)",
               "--stop-timeout", "1s")
    t = time.monotonic()
    p.send_signal(signal.SIGTERM)
    code, _out, err = _finish(p)
    assert code == 137 and 0.9 < time.monotonic() - t < 10, (code, err)
    assert b"after SIGTERM/SIGHUP" in err, err


def test_a_second_sigterm_kills_at_once(no_leftovers):
    p = _start("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + READY + "time.sleep(60)")  # 10 s grace
    p.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    t = time.monotonic()
    p.send_signal(signal.SIGTERM)
    code, _out, err = _finish(p)
    assert code == 137 and time.monotonic() - t < 5 and b"second SIGTERM" in err, (code, err)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def _wait_state(pid: int, want: str) -> None:
    end = time.monotonic() + 10
    while _state(pid) != want:
        assert time.monotonic() < end, f"{pid} is {_state(pid)}, not {want}"
        time.sleep(0.02)


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for tid in os.listdir(f"/proc/{p}/task"):
            with open(f"/proc/{p}/task/{tid}/children") as f:
                kids = [int(k) for k in f.read().split()]
            out += kids
            todo += kids
    return out


def test_ctrl_z_stops_the_whole_box_and_fg_resumes_it_without_spending_wall_time(no_leftovers):
    """SIGTSTP (what Ctrl-Z sends to the foreground job) stops the CLI *and* everything in the
    box: no output arrives while stopped. SIGCONT resumes both, and the stopped time is not
    wall time: a box stopped for longer than its wall limit still ends OK."""
    p = _start(READY + "for i in range(15):\n    print(i, flush=True)\n    time.sleep(0.1)",
               "--wall-time", "5s")  # room for a loaded machine; stopped for longer
    assert p.stdout is not None
    fd = p.stdout.fileno()
    try:
        p.send_signal(signal.SIGTSTP)
        _wait_state(p.pid, "T")
        time.sleep(0.3)  # what was on its way before the stop
        while select.select([fd], [], [], 0)[0]:
            os.read(fd, 4096)
        box = _descendants(p.pid)  # init (the box's pid 1, which stops the rest), the program
        assert len(box) == 2 and _state(box[-1]) == "T", [(pid, _state(pid)) for pid in box]
        time.sleep(5.5)  # longer than the wall limit
        assert not select.select([fd], [], [], 0)[0], "the box ran on while stopped"
    except BaseException:
        p.kill()  # the box dies with it (PDEATHSIG)
        p.wait()
        raise
    p.send_signal(signal.SIGCONT)
    code, out, err = _finish(p)
    assert code == 0, (code, err)
    assert out.split()[-1] == b"14"


def test_yes_into_head_ends_by_sigpipe_not_at_the_output_cap(no_leftovers):
    sh = subprocess.run(f"{' '.join(SANDBOX)} run --output-limit 1G -- yes | head -1; "
                        "echo \"${PIPESTATUS[0]}\"",
                        shell=True, executable="/bin/bash", capture_output=True, timeout=60)
    assert sh.stdout == b"y\n141\n", sh
    assert b"OL" not in sh.stderr and sh.stderr == b"", sh.stderr  # a shell says nothing either


def test_a_reader_gone_before_the_first_write_ends_the_program_at_its_next_write(no_leftovers):
    """`true` has exited before the box prints: the first chunk finds no reader; the box's
    pipe is closed, so the `echo b` after it dies of SIGPIPE (exit 141 as in a shell)."""
    sh = subprocess.run(f"{' '.join(SANDBOX)} run -- sh -c 'echo a; sleep .5; echo b; echo c >&2' "
                        "| true; echo \"${PIPESTATUS[0]}\"",
                        shell=True, executable="/bin/bash", capture_output=True, timeout=60)
    assert sh.stdout == b"141\n" and b"c" not in sh.stderr, sh
