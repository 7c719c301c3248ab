"""The CLI's copy of the box's output to its own stdout (sandbox/_cli_relay.py): a slow, stalled or
non-blocking reader neither loses bytes nor suspends the box's wall time."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time

SANDBOX = [sys.executable, "-m", "sandbox._cli"]


def _start(args: list[str], stdout_fd: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*SANDBOX, *args], stdin=subprocess.DEVNULL, stdout=stdout_fd,
                            stderr=subprocess.PIPE)


def _read_all(fd: int, pause: float = 0.0) -> bytes:
    got = bytearray()
    while chunk := os.read(fd, 1 << 16):
        got += chunk
        if pause:
            time.sleep(pause)
    return bytes(got)


def test_a_non_blocking_stdout_gets_every_byte(no_leftovers):
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    p = _start(["run", "--", "head", "-c", "10000000", "/dev/zero"], w)
    os.close(w)
    try:
        got = _read_all(r, pause=0.001)  # slower than the box writes: EAGAIN on the way
    finally:
        os.close(r)
    assert p.wait(timeout=60) == 0, p.stderr.read() if p.stderr else b""
    p.stderr.close()
    assert len(got) == 10_000_000 and not got.strip(b"\0")


def test_a_stalled_reader_does_not_suspend_the_wall_time(tmp_path, no_leftovers):
    meta = tmp_path / "m.json"
    r, w = os.pipe()
    p = _start(["run", "--meta", str(meta), "--wall-time", "1s", "--", "sh", "-c",
                "head -c 300000 /dev/zero; sleep 30"], w)
    os.close(w)
    try:
        time.sleep(4)  # nobody reads: the pipe (64 KiB) is full after the first writes
        got = _read_all(r)
    finally:
        os.close(r)
    _assert_timed_out_on_time(p, meta)
    assert len(got) == 300_000  # and what it printed within the cap still arrives


def test_a_stalled_terminal_does_not_suspend_the_wall_time(tmp_path, no_leftovers):
    """A terminal says POLLOUT while it has any room, but a write larger than that room blocks
    (n_tty waits for room for all of it): a stopped terminal (Ctrl-S, a paused pager) must not
    hold up the wall time either."""
    meta = tmp_path / "m.json"
    master, slave = os.openpty()
    p = _start(["run", "-T", "--meta", str(meta), "--wall-time", "1s", "--", "sh", "-c",
                "head -c 300000 /dev/zero; while :; do head -c 100 /dev/zero; sleep 0.02; done"],
               slave)  # (it goes on printing: each new chunk is a write the terminal may block)
    os.close(slave)
    got = bytearray()
    try:
        for _ in range(8):  # a reader that takes a little now and then (a pager, a slow ssh):
            time.sleep(0.5)  # the terminal has some room again, less than one relay write
            got += os.read(master, 512)
        while p.poll() is None or _readable(master):
            try:
                got += os.read(master, 1 << 16)
            except OSError:  # EIO: the last writer is gone
                break
    finally:
        os.close(master)
    _assert_timed_out_on_time(p, meta)
    assert got.count(b"\0") >= 300_000  # and what it printed within the cap still arrives


def _assert_timed_out_on_time(p, meta) -> None:
    """The 1s wall time held although nobody read: TO (exit 124) well before 2.5s."""
    assert p.wait(timeout=60) == 124
    p.stderr.close()
    verdict = json.loads(meta.read_text())
    assert verdict["status"] == "TO" and verdict["wall_time"] < 2.5, verdict


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0.5)[0])
