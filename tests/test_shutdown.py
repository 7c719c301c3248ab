"""Ctrl-C / SIGTERM of a supervisor: every box dies, nothing is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import descendants

SUPERVISOR_SCRIPT = textwrap.dedent("""
    import sys, trio, sandbox
    async def main():
        async with sandbox.Supervisor() as sup:
            async with trio.open_nursery() as n:
                for _ in range(3):
                    n.start_soon(sup.run, ["sh", "-c", "sleep 1000 & sleep 1000"])
                await trio.sleep(0.5)
                print("ready", flush=True)
    trio.run(main)
""")

CLI = [sys.executable, "-m", "sandbox._cli", "run", "--", "sh", "-c", "echo ready; sleep 1000 & sleep 1000"]


def _wait_gone(pids: set[int], timeout: float = 5.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {p for p in pids if os.path.exists(f"/proc/{p}") and not _zombie(p)}
        if not alive:
            return set()
        time.sleep(0.05)
    return alive


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _default_sigint() -> None:
    """A shell's background job (`.ci/run &`) starts with SIGINT ignored, and ignored
    dispositions are inherited: the process under test would then rightly ignore Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("who", ["supervisor", "cli"])
def test_signal_kills_every_box(sig, who):
    argv = [sys.executable, "-c", SUPERVISOR_SCRIPT] if who == "supervisor" else CLI
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         preexec_fn=_default_sigint)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == b"ready"
    # "ready" comes before the box's shell forks its sleeps: wait for them (a loaded machine
    # can take a while), so the test checks the processes it means to
    deadline = time.monotonic() + 10
    while len(boxed := descendants(p.pid)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(boxed) >= 3  # init, payload, its background sleep (+ launcher)
    p.send_signal(sig)
    p.wait(timeout=10)
    assert _wait_gone(boxed) == set(), "box processes outlived their supervisor"
