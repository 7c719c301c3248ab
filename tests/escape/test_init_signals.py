"""The payload against its init's signal handling (``sandbox._init_signals``).

init ran a Python handler for each signal it passes on, and a Python handler runs between the
bytecodes of whatever is running, another handler included: a payload flooding init with
signals nested them until init died of RecursionError (seen in CI: XX instead of the
program's exit 3). init now blocks what it acts on and takes the signals in its own loop. The
kernel's view of that in /proc/1/status is what these tests read: no handler (``SigCgt``) for
any of them, and, in a held box, ``SigBlk`` (a one-shot init waits in sigwaitinfo, which unblocks
the set it waits for while it waits). The payload itself must start with nothing blocked, on
every path init starts one.
"""

from __future__ import annotations

import signal
import textwrap

import sandbox
from sandbox import Box, Limits, SandboxConfig, Status

ONE_SHOT = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
            signal.SIGUSR2, signal.SIGTSTP, signal.SIGCONT, signal.SIGCHLD)
HELD = (signal.SIGCHLD, signal.SIGXCPU)

# → "<init's SigCgt> <init's SigBlk> <our SigBlk>" as hex masks (bit n-1 is signal n)
MASKS = textwrap.dedent("""
    def mask(pid, name):
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(name + ":"):
                return line.split()[1]
    print(mask(1, "SigCgt"), mask(1, "SigBlk"), mask("self", "SigBlk"), flush=True)
""")

# Three processes send init four kinds of signal for two seconds.
FLOOD = textwrap.dedent("""
    import os, signal, time
    kinds = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGCHLD)
    for s in kinds[:3]:
        signal.signal(s, signal.SIG_IGN)  # init passes these on to us
    kids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            end = time.time() + 2
            while time.time() < end:
                for s in kinds:
                    os.kill(1, s)
            os._exit(0)
        kids.append(pid)
    for k in kids:
        os.waitpid(k, 0)
    raise SystemExit(3)
""")


def bits(signals: tuple[int, ...]) -> int:
    return sum(1 << (s - 1) for s in signals)


def read_masks(stdout: bytes) -> tuple[int, int, int]:
    caught, blocked, own = (int(m, 16) for m in stdout.split())
    return caught, blocked, own


def test_a_one_shot_init_blocks_what_it_forwards_and_its_payload_blocks_nothing(no_leftovers):
    """posix_spawn (the plain path) and fork + exec (a memory limit init does not fit under, the
    RLIMIT_AS fallback, which is the mode here; with a memory cgroup it is posix_spawn again;
    the same path a tty takes): init has no handler for any signal it passes
    on or reaps by (they are blocked, and SIGTERM still reaches the program:
    test_seccomp_args); the program's mask is empty, or it would never see SIGTERM."""
    for limits in ({}, {"memory": "32M"}):
        cfg = SandboxConfig(limits=Limits.parse(**limits)) if limits else SandboxConfig()
        r = sandbox.run_sync(["python3", "-c", MASKS], cfg)
        assert r.status == Status.OK, (limits, r)
        caught, _, own = read_masks(r.stdout)
        assert caught & bits(ONE_SHOT) == 0, (limits, hex(caught))
        assert own == 0, (limits, hex(own))


def test_a_forked_function_starts_with_nothing_blocked(no_leftovers):
    """The callable path (the plugin's tests) forks from init: the fork inherits the mask."""
    def body() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("SigBlk:"):
                return 0 if int(line.split()[1], 16) == 0 else 7
        return 8

    r = sandbox.run_sync(body)
    assert (r.status, r.exit_code) == (Status.OK, 0), r


def test_a_flood_of_signals_leaves_the_programs_verdict(no_leftovers):
    """The flood that nested init's handlers: the verdict is the program's own exit 3."""
    r = sandbox.run_sync(["python3", "-c", FLOOD],
                         SandboxConfig(limits=Limits.parse(cpu_time="30s", wall_time="60s")))
    assert (r.status, r.exit_code) == (Status.RE, 3), (r.error, r.reason, r.stderr[-500:])


def test_a_held_box_takes_sigchld_from_a_signalfd(no_leftovers):
    """A held box's init waits on its request socket and a signalfd; a flood of SIGCHLD (which
    the payload may send it) reaches no handler, and the box serves the next command."""
    with Box(SandboxConfig(limits=Limits.parse(cpu_time="30s", wall_time="60s"))) as box:
        r = box.exec(["python3", "-c", MASKS])
        assert r.status == Status.OK, r
        caught, blocked, own = read_masks(r.stdout)
        assert (caught & bits(HELD), blocked & bits(HELD)) == (0, bits(HELD)), (hex(caught), hex(blocked))
        assert own == 0, hex(own)
        r = box.exec(["python3", "-c", FLOOD])
        assert (r.status, r.exit_code) == (Status.RE, 3), (r.error, r.reason)
        r = box.exec(["true"])
        assert r.status == Status.OK, r
