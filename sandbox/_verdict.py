"""Kernel facts → ``Result``. One function, used by every runner, so verdicts never diverge.

Inputs are things the boxed program cannot forge: the wait status and rusage of init (from
``wait4`` in the box's parent), the status line from init (our code; the payload never holds
that pipe and cannot ptrace a non-dumpable init), cgroup counters, and the supervisor's own
byte counts and timers. One thing printed by the program is consulted, and only to choose
between two failures: under the RLIMIT_AS fallback, a MemoryError as the last line of stderr
of an exit 1 is ML instead of RE (``_refused_allocation``).
"""

from __future__ import annotations

import _signal  # not signal.py: its enum conversions cost the CLI ~3 ms
import os

from sandbox import _statusline
from sandbox._config import Limits
from sandbox._record import field, record
from sandbox._result import Result, Status

TYPE_CHECKING = False  # no typing import at run time (CLI start)
if TYPE_CHECKING:
    from typing import Any

TAIL = 4096  # bytes of stderr the verdict may read (its last line)
CPU_RLIMIT = ("rlimit", "rlimit+supervisor")  # enforcement["cpu_time"] where RLIMIT_CPU is set
KILL_REASONS = {"wall": Status.TO, "cpu": Status.TO, "output": Status.OL, "memory": Status.ML}


@record
class Facts:
    """What the supervisor learned from the kernel about one box, for build_result."""

    limits: Limits
    enforcement: dict[str, Any]
    wall_time: float
    fallback_reasons: dict[str, str] = field(default_factory=dict)  # limit → why no cgroup holds it
    init_wait_status: int | None = None
    cpu_time: float = 0.0  # the box's CPU seconds: init's rusage, or the CPU watch's if more
    max_rss: int | None = None  # bytes
    status_line: bytes = b""
    killed_for: str | None = None  # "wall" | "output" | "cpu" | "memory" | "stop" (supervisor kills)
    stop_after: tuple[float, bool] | None = None  # "stop": (grace seconds, by a second SIGTERM)
    cgroup: dict[str, Any] | None = None
    seccomp_policy: str | None = None
    landlock: bool = False
    cwd: str | None = None  # the box's working directory: named when init cannot enter it


def signal_name(n: int) -> str:
    """``SIGSEGV`` for 11; of aliases the alphabetically first, as ``signal.Signals`` picks."""
    names = sorted(k for k, v in vars(_signal).items()
                   if v == n and k.startswith("SIG") and not k.startswith("SIG_") and k.isupper())
    return names[0] if names else str(n)


def _fmt_size(n: int) -> str:
    for unit, f in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= f and n % f == 0:
            return f"{n // f}{unit}"
    return f"{n}B"


def _fmt_time(t: float) -> str:
    return f"{t:g}s"


def _init_hit_its_cpu_rlimit(facts: Facts, cpu: float, ws: int | None) -> bool:
    """Under the RLIMIT_CPU fallback init holds the limit too (the payload inherits it), and
    the payload can make init spend CPU (signals for it to forward, orphans to reap): at the
    hard limit the kernel SIGKILLs init. Then the box's total CPU (init's rusage) is past the
    limit: that is a CPU verdict, not a sandbox failure. (prlimit() on init is denied by
    seccomp, so init's limit is never below the box's.)"""
    lim = facts.limits.cpu_time
    return (lim is not None and facts.enforcement.get("cpu_time") in CPU_RLIMIT and cpu > lim
            and ws is not None and os.WIFSIGNALED(ws) and os.WTERMSIG(ws) == _signal.SIGKILL)


def _refused_allocation(facts: Facts, exit_code: int | None, stderr: bytes, truncated: bool) -> bool:
    """Whether the program ended because the RLIMIT_AS fallback refused an allocation.

    The kernel keeps no count of refused mmap/brk calls, and a single refused allocation
    leaves the peak far below the limit (``bytearray(500_000_000)`` under 128M peaks at ~9 MB),
    so the peak rule cannot see it. What is left is Python's own report: an uncaught
    MemoryError exits 1 with ``MemoryError`` (or ``MemoryError: ...``) as the last line of its
    traceback. Only where the address-space limit is in force (``memory == "rlimit"``): with a
    cgroup, or no memory limit, nothing refuses allocations for the box and a MemoryError is
    the program's own error (RE). The line is the box's to print, so a program can fake it:
    that turns its own failure (exit 1, RE) into another failure (ML), never a pass into a
    failure or a failure into a pass. A cut stderr (OL) is never read."""
    if (facts.limits.memory is None or facts.enforcement.get("memory") != "rlimit"
            or exit_code != 1 or truncated):
        return False
    last = stderr[-TAIL:].rstrip().rpartition(b"\n")[2].strip()
    return last == b"MemoryError" or last.startswith(b"MemoryError: ")


def build_result(facts: Facts, stdout: bytes = b"", stderr: bytes = b"",
                 stdout_truncated: bool = False, stderr_truncated: bool = False,
                 stderr_tail: bytes | None = None, sizes: tuple[int, int] | None = None) -> Result:
    """``stderr_tail``: the end of stderr when it was streamed away rather than kept;
    ``sizes``: the bytes of stdout and stderr within the cap, where streamed ones were not kept
    (``Result.stdout_bytes``: without it a streamed run said 0)."""
    lim = facts.limits
    cg = facts.cgroup or {}
    cpu = cg.get("cpu_usec", 0) / 1e6 if "cpu_usec" in cg else facts.cpu_time
    peak = cg.get("memory_peak") or facts.max_rss
    r = Result(Status.XX, wall_time=facts.wall_time, cpu_time=cpu, peak_memory=peak,
               stdout=stdout, stderr=stderr, stdout_truncated=stdout_truncated,
               stderr_truncated=stderr_truncated, enforcement=dict(facts.enforcement),
               seccomp_policy=facts.seccomp_policy, landlock=facts.landlock,
               cgroup=facts.cgroup, fallback_reasons=dict(facts.fallback_reasons),
               stdout_bytes=None if sizes is None else sizes[0],
               stderr_bytes=None if sizes is None else sizes[1])
    report = _statusline.parse(facts.status_line)
    if report and "max_rss" in report and not cg.get("memory_peak"):
        # init's own word on the payload: our wait4(init) counts init, a clone of its caller
        r.peak_memory = peak = report["max_rss"] or None
    if report and report["ok"]:
        ws = report["wait_status"]
        if os.WIFEXITED(ws):
            r.exit_code = os.WEXITSTATUS(ws)
        elif os.WIFSIGNALED(ws):
            r.signal = os.WTERMSIG(ws)
    if facts.killed_for in KILL_REASONS:
        r.status = KILL_REASONS[facts.killed_for]
        r.reason = {
            "wall": f"wall time {_fmt_time(lim.wall_time or 0)} exceeded",
            "cpu": f"CPU time {_fmt_time(lim.cpu_time or 0)} exceeded (all the box's processes)",
            "output": f"output limit {_fmt_size(lim.output_limit)} exceeded",
            "memory": f"memory limit {_fmt_size(lim.memory or 0)} exceeded",
        }[facts.killed_for]
        return r
    if facts.killed_for == "stop":  # the caller was told to stop (sandbox._fgsignals)
        grace, second = facts.stop_after or (0.0, False)
        r.status, r.signal, r.exit_code = Status.SG, _signal.SIGKILL, None
        r.reason = ("killed by a second SIGTERM" if second else
                    f"killed: still running {_fmt_time(grace)} after SIGTERM/SIGHUP (stop timeout)")
        return r
    oom = int(cg.get("oom_kill", 0) or 0) > 0
    if oom:  # memory.oom.group kills the whole box, init included: no report to expect
        r.status, r.reason = Status.ML, f"memory limit {_fmt_size(lim.memory or 0)} exceeded (OOM kill)"
        return r
    if report is None:
        ws = facts.init_wait_status
        if _init_hit_its_cpu_rlimit(facts, cpu, ws):
            r.status = Status.TO
            r.reason = f"CPU time {_fmt_time(lim.cpu_time or 0)} exceeded (init reached its RLIMIT_CPU)"
            return r
        how = "unknown"
        if ws is not None and os.WIFSIGNALED(ws):
            how = f"signal {os.WTERMSIG(ws)}"
        elif ws is not None and os.WIFEXITED(ws):
            how = f"exit {os.WEXITSTATUS(ws)}"
        r.error = r.reason = f"init: the box died without a status report ({how})"
        r.error_step = "init"
        return r
    if not report["ok"]:
        r.error_step = str(report.get("step", "init"))[:64]
        r.errno = report.get("errno") if isinstance(report.get("errno"), int) else None
        msg = str(report.get("error", ""))[:500]
        if r.error_step == "cwd" and facts.cwd and facts.cwd not in msg:
            msg = f"{facts.cwd}: {msg}"  # init reports the errno; the path is ours to name
        r.error = r.reason = f"{r.error_step}: {msg}" + (f" (errno {r.errno})" if r.errno else "")
        return r
    if lim.cpu_time is not None and (r.signal == _signal.SIGXCPU or cpu > lim.cpu_time):
        r.status, r.reason = Status.TO, f"CPU time {_fmt_time(lim.cpu_time)} exceeded"
        if r.signal == _signal.SIGXCPU:
            r.reason += " (SIGXCPU: a process reached its RLIMIT_CPU)"
    elif (lim.memory is not None and facts.enforcement.get("memory") == "rlimit"
          and (r.exit_code or r.signal) and peak and peak >= 0.9 * lim.memory):
        r.status, r.reason = Status.ML, f"memory limit {_fmt_size(lim.memory)} exceeded (rlimit)"
    elif _refused_allocation(facts, r.exit_code, stderr if stderr_tail is None else stderr_tail,
                             stderr_truncated):
        r.status = Status.ML
        r.reason = (f"memory limit {_fmt_size(lim.memory or 0)}: allocation refused by the "
                    "address-space limit (MemoryError)")
    elif r.signal is not None:
        r.status = Status.SG
        r.reason = f"killed by signal {r.signal} ({signal_name(r.signal)})"
        if r.signal == _signal.SIGPIPE:
            r.reason += ": it wrote to a pipe nobody reads any more"
        if r.signal == _signal.SIGXFSZ:
            r.reason += f": file size limit {_fmt_size(lim.fsize or 0)}"
    elif r.exit_code == 0:
        r.status = Status.OK
    else:
        r.status, r.reason = Status.RE, f"exit code {r.exit_code}"
    return r
