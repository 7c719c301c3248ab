"""``Box``: a box you hold. Its namespaces, root filesystem and writable layer live until you close
it; every ``exec`` in it has its own wall time, output cap and verdict.

The host half of a held box (the child half is ``sandbox._box_init``). Opening one is a one-shot
box's whole set-up (``_contain.prepare``, ``_spawn.spawn_box``, the same init sequence and
hardening) with a request socket instead of a payload. The host then:

* starts processes by sending argv and three fresh pipe ends (never a fd of its own: what a
  box holds of ours is only ever a pipe);
* reads and writes the box's files itself (``sandbox._box_files``: through fds init sent,
  never following a link the box planted);
* watches the box's init: when it dies (memory.oom.group kills the whole box, or a box-wide
  limit was spent) every running process ends with that verdict and the box is closed.
"""

from __future__ import annotations

import os
import select
import time

from sandbox import _box_init, _fdpass, _statusline, _verdict  # noqa: F401 - _box_init: loaded before the clone (the box has no checkout)
from sandbox._box_files import GET_MAX, BoxFiles, Changes, Checkpoint
from sandbox._box_proc import Process, exec_limits
from sandbox._boxlife import BoxError, BoxLife, Usage
from sandbox._config import ConfigError, SandboxConfig, command_argv, parse_duration
from sandbox._result import Result

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Sequence
    from typing import Any

    from sandbox import _spawn
    from sandbox._network import Network

READY_TIMEOUT = 30.0


class Box:
    """A held box. ``with Box(config) as box: box.exec([...])`` (see the README).

    Not thread-safe: use one Box from one thread (the trio API runs each call in a worker thread
    for you)."""

    def __init__(self, config: SandboxConfig | None = None, *, network: Network | None = None,
                 name: str | None = None) -> None:
        self.config = (config or SandboxConfig()).validate()
        if name is not None and network is None:
            raise ConfigError(f"name {name!r}: a box has a name only on a network (network=)")
        self.network, self.name = network, name or (f"box{id(self):x}" if network else None)
        self.address: str | None = None  # on its network
        self.usage: Usage | None = None
        self._sock: socket.socket | None = None
        self._procs: dict[int, Process] = {}
        self._init: _spawn.BoxProcess | None = None
        self._watch: Any = None
        self._guard: Any = None  # _cpuwatch.Guard: the budget's thread while there is one
        self._cpu_spent = False
        self._peak: int | None = None  # the largest max RSS an exec's process tree reached
        self._next_id = 0
        self._dead = False

    # ---------------------------------------------------------------- lifecycle --
    def __enter__(self) -> Box:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        """A box dropped without ``close``: end it now rather than at our exit (PDEATHSIG)."""
        if getattr(self, "_sock", None) is not None and self.usage is None:
            try:
                self.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown: the kernel cleans up
                pass

    def open(self) -> Box:
        import socket

        if self._sock is not None:
            raise BoxError("this box is already open")
        # CPU: each exec holds RLIMIT_CPU, the box-wide budget is the watch (BoxLife: cpu_per_exec)
        self._life = life = BoxLife(self.config, (), serve=True, cpu_per_exec=True,
                                    network=(self.network, self.name) if self.network else None)
        self._prep, self._fallback = life.prep, life.fallback
        try:  # EMFILE (or Ctrl-C) from here on must not leave the leaf, or any fd, behind
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        except BaseException:
            life.end()
            raise
        self._sock, self._status_r = ours, -1
        fds: list[int] = []
        try:
            null = st_w = -1
            try:
                self._status_r, st_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
                null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
                self._init = life.spawn(stdin=null, stdout=null, stderr=null, status_w=st_w,
                                        pass_fds=[theirs.fileno()])
                self.address = life.address
            finally:
                for fd in (null, st_w):
                    if fd >= 0:
                        os.close(fd)
                theirs.close()
            # Box-wide: the config's CPU time holds for the box's whole life (each exec also has
            # it, or its own smaller one, as RLIMIT_CPU), kept by a thread between our calls.
            self._set_watch(life.watch(self.config.limits.cpu_time))
            msg, fds = self._recv(READY_TIMEOUT)
            if not msg or len(fds) != 2:
                result = self._startup_failure()
                raise BoxError(result.error or "the box did not start", result)
            st = os.fstat(fds[0])  # the box's / belongs to its root: our ids for it, mapped
            owner = (st.st_uid + self.config.uid, st.st_gid + self.config.gid) if self._prep.ids.parent_writes else None
            self._files = BoxFiles(fds[0], fds[1], owner, (self.config.uid, self.config.gid),
                                   self._prep.rootfs.ops, self._prep.rootfs.image)
        except BaseException:  # a failed start, or Ctrl-C while it started: nothing left behind
            if getattr(self, "_files", None) is None:
                for fd in fds:
                    os.close(fd)
            self.close()
            raise
        return self

    def close(self) -> Usage:
        """End every process and the box; returns (and keeps in ``usage``) the box's totals."""
        if self.usage is not None:
            return self.usage
        if self._sock is None:
            raise BoxError("this box was never opened")
        self._set_watch(self._watch, keep=False)  # the guard is stopped: init is ours alone
        if self._watch is not None and not self._dead and self._watch() is None:
            # A last sample: what the box spent since the guard's last one would otherwise die
            # unwaited-for (init's exit kills the rest), in no total.
            self._cpu_spent = True
        for p in list(self._procs.values()):
            p._box_gone()
        if self.network is not None and self.address:
            self.network.close_relays(self.address)  # (its url()s: the address may be reused)
        self._sock.close()
        if getattr(self, "_files", None) is not None:
            self._files.close()
        if self._status_r >= 0:  # (-1: never made, or closed by an earlier, interrupted close)
            os.close(self._status_r)
            self._status_r = -1
        cpu = 0.0
        if self._life.init is not None:  # (None: the clone itself failed)
            _status, cpu, _rss = self._life.reap(kill=True)  # its namespace dies with it
        # init's own max RSS is that of a clone of its caller (pytest's, say): not the box's use.
        # Without a cgroup the peak is the largest any of its processes reached.
        u = Usage(cpu, self._peak, time.monotonic() - self._life.t0, self._next_id,
                  enforcement=dict(self._prep.enforcement), fallback_reasons=dict(self._fallback),
                  cpu_exceeded=self._cpu_spent)
        u.egress = self._life.egress
        if self._watch is not None:  # the box-wide budget's holder (each exec's is RLIMIT_CPU)
            u.enforcement["cpu_time"] = self._watch.mechanism
        stats = self._life.stats()
        if stats is not None:
            u.cpu_time = stats.get("cpu_usec", 0) / 1e6 if "cpu_usec" in stats else cpu
            u.peak_memory = stats.get("memory_peak") or self._peak
            u.memory_exceeded = int(stats.get("oom_kill", 0) or 0) > 0
        self._life.end()
        self.usage, self._dead, self._init = u, True, None
        return u

    @property
    def alive(self) -> bool:
        """Open, and its init still running (init's news is taken first, without waiting):
        False once a box-wide limit or its memory ended it, or after ``close``."""
        if self._sock is None or self._dead:
            return False
        self._wait_events([], 0)
        return not self._dead

    def _startup_failure(self) -> Result:
        if select.select([self._init.pidfd], [], [], 5.0)[0]:
            line = _statusline.read(self._status_r)
        else:
            line = b""
        facts = _verdict.Facts(self.config.limits, self._prep.enforcement, 0.0, status_line=line)
        r = _verdict.build_result(facts)
        if r.error is None:
            r.error = "init: the box did not report ready"
        return r

    # ---------------------------------------------------------------- processes --
    def exec(self, argv: Sequence[str], *, stdin: bytes | None = None, cwd: str | None = None,
             env: dict[str, str] | None = None, wall_time: float | str | None = None,
             cpu_time: float | str | None = None, output_limit: int | str | None = None,
             on_output: Callable[[int, bytes], None] | None = None) -> Result:
        """Run ``argv`` in this box to its end: its verdict. ``wall_time``, ``cpu_time`` and
        ``output_limit`` default to the config's limits; ``on_output(1|2, chunk)`` sees output
        as it arrives, within the cap."""
        proc = self.start(argv, cwd=cwd, env=env, wall_time=wall_time, cpu_time=cpu_time,
                          output_limit=output_limit)
        try:
            return proc.communicate(stdin, on_output)
        except BaseException:  # Ctrl-C, or the caller's own exception from on_output
            proc.abandon()
            raise

    def start(self, argv: Sequence[str], *, cwd: str | None = None,
              env: dict[str, str] | None = None, wall_time: float | str | None = None,
              cpu_time: float | str | None = None,
              output_limit: int | str | None = None, stdout: str = "capture") -> Process:
        """Start ``argv`` in the background: a ``Process`` with ``stdin`` (a pipe of ours),
        ``wait()``, ``kill()`` and its output. ``stdout="pipe"``: its stdout is not collected
        but handed to you as ``process.stdout``, a pipe to read as it comes (with
        ``process.wait_stdout(timeout)``) and to close; ``"capture"`` (the default) collects
        it into the verdict, capped, like stderr."""
        self._check_open()
        if stdout not in ("capture", "pipe"):
            raise ConfigError(f"stdout {stdout!r}: must be 'capture' or 'pipe'")
        argv = command_argv(argv)
        lim, env, rl = exec_limits(self.config.limits, cwd, env, wall_time, cpu_time, output_limit)
        self._next_id += 1
        proc = Process(self, self._next_id, argv, lim, pipe_stdout=stdout == "pipe")
        in_r, out_w, err_w = proc._pipes()
        try:
            _fdpass.send(self._sock, {"op": "exec", "id": proc.id, "argv": argv, "env": env or {},
                                      "cwd": cwd or self.config.cwd, "rlimits": rl},
                         [in_r, out_w, err_w])
        except OSError as e:
            proc._close_all()
            if proc.stdout is not None:
                proc.stdout.close()
            self._box_died()
            raise BoxError(f"the box is gone: {e.strerror}") from None
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        self._procs[proc.id] = proc
        proc.t0 = time.monotonic()
        while proc.state == "starting":
            self._wait_events([], None)
        return proc

    def cpu_budget(self, seconds: float | str | None) -> None:
        """From now on, all the box's processes together may spend at most ``seconds`` more CPU
        time (None: no box-wide budget from now on). It replaces the config's ``cpu_time``
        budget; past it the box is killed as on that one (``usage.cpu_exceeded``, the verdict
        TO). For a box that serves many steps, each with its own budget: a grader's tests."""
        limit = None if seconds is None else parse_duration(seconds, "cpu_time")
        self._check_open()
        self._set_watch(None)  # the old budget's guard first: no kill for it after this
        self._check_open(turn=True)  # (closed: the old budget was spent)
        self._set_watch(None if limit is None else self._life.watch_more(limit))

    def _set_watch(self, watch: Any, *, keep: bool = True) -> None:
        """Stop the guard, then make ``watch`` the budget, guarded unless ``keep=False``."""
        if self._guard is not None:
            self._guard.stop()
            self._cpu_spent = self._cpu_spent or self._guard.spent
            self._guard = None
        self._watch = watch
        if keep and watch is not None:
            from sandbox._cpuwatch import Guard

            self._guard = Guard(watch, self._life.kill)

    def _enforcement(self) -> dict[str, Any]:
        """What holds each limit of a process's verdict: the plan's, and the box-wide CPU
        budget's holder while there is one."""
        if self._watch is None:
            return self._prep.enforcement
        return {**self._prep.enforcement, "cpu_time": self._watch.mechanism}

    def _check_open(self, *, turn: bool = False) -> None:
        """``turn``: first take init's news and the CPU budget's turn without waiting (a file
        call then also ends a box whose budget a background process spent meanwhile)."""
        if turn and self._sock is not None and not self._dead:
            self._wait_events([], 0)
        if self._sock is None or self._dead:
            raise BoxError("this box is closed" if self._sock is not None else "this box is not open: use `with Box(config) as box:` or box.open()")

    def _recv(self, timeout: float | None) -> tuple[bytes, list[int]]:
        assert self._sock is not None
        r = select.select([self._sock, self._init.pidfd], [], [], timeout)[0]
        return _fdpass.recv(self._sock, max_fds=2) if self._sock in r else (b"", [])

    def _wait_events(self, fds: list[int], timeout: float | None) -> list[int]:
        """Wait for one of ``fds`` (returned when ready), init's news or death (handled)."""
        assert self._sock is not None
        watch = [*fds, self._init.pidfd] + ([] if self._dead else [self._sock.fileno()])
        ready = select.select(watch, [], [], timeout)[0]
        if (self._cpu_spent or self._guard is not None and self._guard.spent) and not self._dead:
            # Spent: the guard killed the box. What init reported before (a process that ended
            # on its own while we were not reading) keeps its own verdict: read up to init's EOF.
            self._cpu_spent = True
            while not self._dead and select.select([self._sock], [], [], READY_TIMEOUT)[0]:
                self._on_message()
            if not self._dead:
                self._box_died()
            return []
        if not self._dead and self._sock.fileno() in ready:
            self._on_message()
        elif self._init.pidfd in ready and not self._dead:
            self._box_died()
        return [fd for fd in ready if fd in fds]

    def _on_message(self) -> None:
        """One message from init (readable on the socket): a process's news, or EOF."""
        import json

        assert self._sock is not None
        try:
            msg, extra = _fdpass.recv(self._sock, max_fds=2)
        except ConnectionResetError:
            # init died with a request of ours unread: once; what it sent is read next, then EOF
            return
        for fd in extra:
            os.close(fd)
        if not msg:
            self._box_died()
            return
        try:  # init's, and only init's (our code): anything else is a broken box
            m = json.loads(msg)
            p = self._procs.get(int(m["id"])) if isinstance(m, dict) else None
            if p is not None:
                p._message(m)
        except (ValueError, TypeError, KeyError):
            self.kill_box()
            self._box_died()

    def _kill(self, proc: Process) -> None:
        if not self._dead:
            try:
                _fdpass.send(self._sock, {"op": "kill", "id": proc.id})
            except OSError:
                self._box_died()

    def _box_died(self) -> None:
        """init is gone (OOM group kill, a box-wide limit, or killed): so is every process."""
        self._dead = True
        self._cpu_spent = self._cpu_spent or (self._guard is not None and self._guard.spent)
        why = "memory" if self._life.oom_killed() else "cpu" if self._cpu_spent else None
        box_cpu = self._watch.used - self._watch.base if self._cpu_spent else None
        stats = self._life.stats() if why == "memory" else None  # the OOM kill, in figures
        for p in list(self._procs.values()):
            p._box_gone(why, box_cpu, stats)
        self._procs.clear()

    def kill_box(self) -> None:
        """SIGKILL the box's init (and so everything in it); the box is then closed."""
        self._life.kill()

    def connect(self, port: int, timeout: float | None = 10.0) -> socket.socket:
        """A TCP connection from here to ``port`` of this box on its network (no other way in)."""
        return self._on_network().connect(self.address or "", port, timeout)

    def url(self, port: int, scheme: str = "http") -> str:
        """``http://127.0.0.1:N/`` for HTTP clients here: a loopback port of the host relayed
        to ``connect(port)`` until the box or its network closes (``sandbox._portrelay``)."""
        return self._on_network().url(self.address or "", port, scheme)

    def _on_network(self) -> Network:
        self._check_open()
        if self.network is None or self.address is None:
            raise BoxError("this box is on no network: Box(config, network=net, name=...)")
        return self.network

    # -------------------------------------------------------------------- files --
    def put(self, path: str, data: bytes | os.PathLike[str], *, mode: int = 0o644) -> None:
        """Write a file into the box: ``data`` bytes, or a ``pathlib.Path`` of a host file to copy.
        Parent directories are made; an existing file is replaced, a link is never followed."""
        self._check_open(turn=True)
        self._files.put(path, data, mode=mode)

    def get(self, path: str, max_bytes: int = GET_MAX) -> bytes:
        """A file of the box, at most ``max_bytes``; refuses links, FIFOs and devices."""
        self._check_open(turn=True)
        return self._files.get(path, max_bytes)

    def checkpoint(self) -> Checkpoint:
        """The box's files now, to compare with later: ``changes(since=checkpoint)``."""
        self._check_open(turn=True)
        return self._files.checkpoint()

    def changes(self, since: Checkpoint | None = None) -> Changes:
        """Created / modified / deleted since the box started, or since ``since`` (a
        ``checkpoint()`` of this box): files and links; directories only when made or removed."""
        self._check_open(turn=True)
        return self._files.changes(since)

    def commit(self, name: str) -> str:  # the writable layer as image NAME[:TAG]: docs/images.md
        return __import__("sandbox._commit", fromlist=["commit"]).commit(self, name)
