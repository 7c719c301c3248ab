"""``Process``: one program started in a held ``Box`` — its pipes, its limits, its verdict.

Its stdin, stdout and stderr are pipes the host made for it alone (the box never receives one of
the caller's fds). Its verdict comes from the same ``_verdict.build_result`` as a one-shot box's,
with the facts init reported for this process (its wait status and the rusage of it and the
descendants it waited for) and the host's own timers and byte counts.
"""

from __future__ import annotations

import os
import select
import time

from sandbox import _statusline, _verdict
from sandbox._direct import CHUNK, CappedBuffer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from sandbox._box import Box
    from sandbox._config import Limits
    from sandbox._result import Result

KILL_GRACE = 2.0  # init answers a kill at once; if it does not, the whole box is killed


def exec_limits(box_limits: Limits, cwd: str | None, env: dict[str, str] | None,
                wall_time: float | str | None, cpu_time: float | str | None,
                output_limit: int | str | None) -> tuple[Limits, dict[str, str] | None, list[list[int]]]:
    """One exec's limits (the box's, with the exec's own), its env, and its RLIMIT_CPU."""
    from sandbox._config import ConfigError, parse_duration, parse_size
    from sandbox._record import replace

    lim = box_limits
    changes: dict[str, Any] = {}
    if wall_time is not None:
        changes["wall_time"] = parse_duration(wall_time, "wall_time")
    if cpu_time is not None:
        changes["cpu_time"] = parse_duration(cpu_time, "cpu_time")
    if output_limit is not None:
        changes["output_limit"] = parse_size(output_limit, "output_limit")
    if changes:
        lim = replace(lim, **changes)
    if cwd is not None and not cwd.startswith("/"):
        raise ConfigError(f"cwd {cwd!r}: must be an absolute path in the box")
    if env is not None:
        env = {str(k): str(v) for k, v in env.items()}
    rl = []
    if "cpu_time" in changes:
        box_cpu = box_limits.cpu_time
        if box_cpu is not None and changes["cpu_time"] > box_cpu:
            raise ConfigError(f"cpu_time {cpu_time!r}: more than the box's own {box_cpu:g}s")
        soft = max(1, int(-(-changes["cpu_time"] // 1)))  # RLIMIT_CPU counts whole seconds
        rl.append([0, soft, soft + 1])
    return lim, env, rl


class Process:
    """A program running in a held box (``Box.start``). ``stdin`` is a binary pipe (close it for
    EOF); ``wait()`` collects the output (capped) and returns the ``Result``."""

    def __init__(self, box: Box, pid_id: int, argv: list[str], limits: Limits,
                 pipe_stdout: bool = False) -> None:
        self.box, self.id, self.argv, self.limits = box, pid_id, argv, limits
        self.pid: int | None = None  # in the box's pid namespace
        self.state = "starting"  # → running → exited (output may remain) → done
        self.result: Result | None = None
        self.stdin: Any = None
        # With ``stdout="pipe"``: the read end of its stdout, ours to read (not collected) and
        # to close; the caller reads it as a stream (a protocol, a server's log).
        self.stdout: Any = None
        self._pipe_stdout, self._stdout_ready = pipe_stdout, False
        self.t0 = time.monotonic()
        self._facts: dict[str, Any] = {}
        self._killed_for: str | None = None
        self._kill_sent = 0.0
        self._out = CappedBuffer(limits.output_limit, 1)
        self._err = CappedBuffer(limits.output_limit, 2)
        self._open: dict[int, CappedBuffer] = {}
        self._on_output: Callable[[int, bytes], None] | None = None
        self._abandoned = False
        self._feed: memoryview | None = None  # stdin bytes still to write (communicate/begin)

    def _pipes(self) -> tuple[int, int, int]:
        made: list[int] = []
        try:  # EMFILE part-way: none of them stays open
            for _ in range(3):
                made += os.pipe2(os.O_CLOEXEC)
        except BaseException:
            for fd in made:
                os.close(fd)
            raise
        in_r, in_w, out_r, out_w, err_r, err_w = made
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self._open = {out_r: self._out, err_r: self._err}
        if self._pipe_stdout:
            del self._open[out_r]
            os.set_blocking(out_r, True)
            self.stdout = open(out_r, "rb", buffering=0)  # noqa: SIM115 - the caller's to close
        self.stdin = open(in_w, "wb", buffering=0)  # noqa: SIM115 - closed by wait/kill
        return in_r, out_w, err_w

    # ------------------------------------------------------------ from the box --
    def _message(self, m: dict[str, Any]) -> None:
        op = m.get("op")
        if op == "started":
            self.pid, self.state = int(m["pid"]), "running"
        elif op == "failed":
            self._facts = {"status_line": _statusline.encode_failure(
                {"ok": False, "step": str(m.get("step")), "errno": int(m.get("errno") or 0),
                 "error": str(m.get("error"))})}
            self._finish()
        elif op == "exited":
            self._facts = {"status_line": _statusline.encode_exit(int(m["wait_status"])),
                           "cpu_time": float(m["cpu_time"]), "max_rss": int(m["max_rss"]) or None}
            if self._facts["max_rss"]:  # (None: no more than init's own, see _statusline.program_peak)
                self.box._peak = max(self.box._peak or 0, self._facts["max_rss"])
            self._finish()
        if self.state == "exited" and self._abandoned:
            self._build()

    def abandon(self) -> None:
        """Kill it and stop collecting (its ``exec`` was interrupted): its pipes close now,
        and the box forgets it once init reports its end."""
        self._abandoned = True
        self.kill("wall")
        self._close_all()
        if self.stdout is not None:
            self.stdout.close()
        if self.state == "exited":
            self._build()

    def _box_gone(self, why: str | None = None, box_cpu: float | None = None,
                  cgroup: dict[str, Any] | None = None) -> None:
        """The box died (or is closing): this process died with it. ``box_cpu``: the box's
        CPU total when its budget ran out (what the verdict's CPU time then reports);
        ``cgroup``: the leaf's figures when its memory limit ended the box (its verdict's)."""
        if self.state == "done":
            return
        if self.state == "exited":  # its end came, its output was not taken yet
            self._drain()
            self._build()
            return
        if why and self._killed_for is None:
            self._killed_for = why
        if not self._facts:
            self._facts = {"status_line": b"" if why is None and self._killed_for is None
                           else _statusline.encode_exit(9)}
            if box_cpu is not None:
                self._facts["cpu_time"] = box_cpu
            if cgroup is not None:
                self._facts["cgroup"] = cgroup
        self._finish()
        self._drain()
        self._build()

    def _finish(self) -> None:
        self.state = "exited"
        self.wall_time = time.monotonic() - self.t0

    # -------------------------------------------------------------- from us --
    def kill(self, why: str | None = None) -> None:
        """SIGKILL this process (and what is left of its process group)."""
        if self.state in ("starting", "running") and not self._kill_sent:
            self._killed_for = self._killed_for or why
            self._kill_sent = time.monotonic()
            self.box._kill(self)

    def poll(self) -> Result | None:
        """The verdict if the process has ended and its output is in, else None (no waiting)."""
        if self.state != "done":
            self._step(0)
        return self.result

    def communicate(self, stdin: bytes | None = None,
                    on_output: Callable[[int, bytes], None] | None = None) -> Result:
        """Feed ``stdin`` (then EOF), collect the output, wait for the end: the verdict."""
        self.begin(stdin, on_output)
        result = self.wait()
        assert result is not None
        return result

    def begin(self, stdin: bytes | None = None,
              on_output: Callable[[int, bytes], None] | None = None) -> None:
        """What ``communicate`` feeds and reports, set up without waiting (``wait`` moves it)."""
        self._on_output = on_output
        if stdin:
            self._feed = memoryview(bytes(stdin))
            os.set_blocking(self.stdin.fileno(), False)
        else:
            self._close_stdin()

    def wait(self, timeout: float | None = None) -> Result | None:
        """Wait for the end (at most ``timeout`` seconds: None if still running then)."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.state != "done":
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._step(left)
        return self.result

    def wait_stdout(self, timeout: float | None) -> bool:
        """``stdout="pipe"``: wait (at most ``timeout`` seconds) until ``stdout`` can be read
        without blocking — data, or EOF — while still collecting stderr, taking the box's news
        and holding the wall time, as ``wait`` does. False when the time ran out first."""
        if self.stdout is None:
            raise ValueError("wait_stdout: this process was not started with stdout='pipe'")
        end = None if timeout is None else time.monotonic() + timeout
        fd = self.stdout.fileno()
        while True:
            if select.select([fd], [], [], 0)[0]:
                return True
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            if self.state == "done":  # no more events: only the pipe itself can still change
                return bool(select.select([fd], [], [], left)[0])
            self._stdout_ready = False
            self._step(left)
            if self._stdout_ready:
                return True

    def _step(self, timeout: float | None) -> None:
        now = time.monotonic()
        deadline = None if self.limits.wall_time is None else self.t0 + self.limits.wall_time
        waits = [t for t in (timeout, None if deadline is None or self._kill_sent else deadline - now,
                             KILL_GRACE - (now - self._kill_sent) if self._kill_sent else None)
                 if t is not None]
        wait = max(0.0, min(waits)) if waits else None
        if self.state == "exited":
            self._drain()
            self._build()
            return
        fds = list(self._open)
        if self._feed is not None and self.stdin is not None:
            self._write_stdin()
        out = self.stdout.fileno() if self.stdout is not None and not self.stdout.closed else -1
        ready = self.box._wait_events(fds + ([out] if out >= 0 else []), wait)
        for fd in ready:
            if fd == out:
                self._stdout_ready = True
            elif fd in self._open:  # (not when the box died in that wait: its end drained them)
                self._read(fd)
        now = time.monotonic()
        if deadline is not None and now >= deadline and self.state == "running":
            self.kill("wall")
        if self._kill_sent and self.state == "running" and now - self._kill_sent > KILL_GRACE:
            self.box.kill_box()

    def _write_stdin(self) -> None:
        try:
            while self._feed:
                self._feed = self._feed[os.write(self.stdin.fileno(), self._feed):]
        except BlockingIOError:
            return
        except OSError:
            pass
        self._close_stdin()

    def _close_stdin(self) -> None:
        if self.stdin is not None:
            self.stdin.close()
            self.stdin = None
        self._feed = None

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            os.close(fd)
            del self._open[fd]
        elif not self._take(fd, chunk):
            self.kill("output")

    def _take(self, fd: int, chunk: bytes) -> bool:
        """Keep ``chunk`` within the cap (and show it to ``on_output``); False once over it."""
        buf = self._open[fd]
        before = buf.size
        ok = buf.feed(chunk)
        if self._on_output is not None and buf.size > before:
            self._on_output(buf.which, chunk[: buf.size - before])
        return ok

    def _drain(self) -> None:
        """After the end: take what is already in the pipes (a leftover that escaped the
        process group cannot hold us: we stop at the first empty read)."""
        for fd in list(self._open):
            while fd in self._open:
                try:
                    chunk = os.read(fd, CHUNK)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                if not self._take(fd, chunk):
                    self._killed_for = self._killed_for or "output"
                    break
        self._close_all()

    def _close_all(self) -> None:
        for fd in list(self._open):
            os.close(fd)
        self._open.clear()
        self._close_stdin()

    def _build(self) -> None:
        if self.state == "done":
            return
        facts = _verdict.Facts(self.limits, self.box._enforcement(), self.wall_time,
                               status_line=self._facts.get("status_line", b""),
                               cpu_time=self._facts.get("cpu_time", 0.0),
                               max_rss=self._facts.get("max_rss"), killed_for=self._killed_for,
                               seccomp_policy=self.box._prep.seccomp_desc,
                               landlock=self.box._prep.landlock, init_wait_status=0,
                               fallback_reasons=self.box._fallback,
                               cgroup=self._facts.get("cgroup"))
        self.result = _verdict.build_result(facts, self._out.value(), self._err.value(),
                                            self._out.exceeded, self._err.exceeded)
        self.state = "done"
        self.box._procs.pop(self.id, None)  # the box keeps only what still runs
