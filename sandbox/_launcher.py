"""The fork-server: a small single-threaded process that clones every box for a supervisor.

Why it exists: trio runs worker threads, and cloning from a multi-threaded process copies one
thread and leaves every lock another thread held locked forever in the child. The launcher is
started once per supervisor (``python -m sandbox._launcher FD PPID``), never imports trio or
pyroute2, keeps its module state warm (seccomp filters compiled once, rootfs plans cached),
and talks over one ``SOCK_SEQPACKET`` socket (protocol in docs/architecture.md):

* spawn requests arrive as JSON with stdio/status fds attached (SCM_RIGHTS);
* the box's pidfd goes back the same way, so the supervisor can kill it directly;
* the launcher is the box init's parent, so it reaps it and reports the wait status and the
  rusage (which covers every process the box ever had: init reaped them all);
* pre-built boxes are offered to the supervisor, which starts commands in them itself (see
  ``Launcher``).

If the supervisor goes away (socket EOF, or PDEATHSIG), every box is killed and reaped.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys

from sandbox import _contain, _fdpass, _record, _spawn
from sandbox import _syscalls as sc
from sandbox._config import SandboxConfig


class Launcher:
    """Serves spawn requests and keeps a small pool of pre-warmed boxes for the config in use.

    Warm pool: after a request for config K, the launcher pre-builds up to ``pool_size`` boxes
    for K (clone + namespaces + rootfs + hardening, in those children). A box that finished
    its setup says so on its request socket, and the launcher *offers* it to the supervisor
    (``warm`` message: pidfd + request socket). The supervisor then starts a command in it by
    writing argv and stdio fds straight to that socket and tells us ``taken``: the launcher is
    not on the latency path of a warm start at all. (Every clone leaves this process's pages
    copy-on-write shared with the child, so the launcher's next few hundred page writes fault:
    ~0.3 ms of Python on any path through here right after a refill.) Boxes using a cgroup are
    always built cold (the leaf and the cgroup namespace must exist before the box is), and
    a request for a new config retires the old pool: the supervisor closes the boxes it was
    offered, and their inits exit on EOF.

    Idle work — refills and the release of dead boxes' mount namespaces (see
    ``_contain._await_request``) — runs only when no request is pending, and a refill only when
    no box is running or the pool ran dry: cloning takes this process ~0.4 ms and the new
    box's setup another core's ~4 ms, which would compete with the box just started.
    """

    # Dead boxes' mount namespaces awaiting release; beyond this they are released at once. A
    # held namespace keeps the box's tmpfs pages (up to its --tmpfs-size) alive: keep it small.
    MAX_RETIRED = 2

    def __init__(self, sock: socket.socket, pool_size: int = 0) -> None:
        self.sock = sock
        self.sel = selectors.DefaultSelector()
        self.boxes: dict[int, int] = {}  # pid → pidfd: boxes the supervisor waits for
        self.cache: dict[str, _contain.Prepared] = {}
        self.pool_size = pool_size
        self.pool_key: str | None = None
        self.pool_prep: _contain.Prepared | None = None
        self.warm: dict[int, tuple[_spawn.WarmBox, str]] = {}  # built or offered, not taken
        self.reaped_warm: dict[int, tuple[int, float, int]] = {}  # died before "taken" came
        self.held: dict[int, int] = {}  # pid → the box's mount namespace
        self.retired: list[int] = []  # mount namespaces of dead boxes, to release when idle

    def prepared(self, key: str, cfg_json: dict, argv: list[str],
                 cgroup_enforced: list[str]) -> _contain.Prepared:
        prep = self.cache.get(key)
        if prep is None:
            cfg = SandboxConfig.from_dict(cfg_json).validate()
            prep = _contain.prepare(cfg, argv, cgroup_enforced=frozenset(cgroup_enforced))
            if len(self.cache) > 64:
                self.cache.clear()
            self.cache[key] = prep
        return _record.replace(prep, target=argv)

    def pool_count(self) -> int:
        return sum(1 for _, key in self.warm.values() if key == self.pool_key)

    def refill_due(self) -> bool:
        if self.pool_prep is None or self.pool_count() >= self.pool_size:
            return False
        offered = sum(1 for wb, key in self.warm.values() if key == self.pool_key and wb.ctl < 0)
        return not self.boxes or not offered

    def idle_work(self) -> None:
        """One unit: release a dead box's mounts, or pre-build one box."""
        if self.retired:
            os.close(self.retired.pop())
            return
        assert self.pool_prep is not None and self.pool_key is not None
        try:
            wb = _spawn.spawn_warm(_record.replace(self.pool_prep, target=[]))
        except OSError:
            self.pool_prep = None  # out of processes or memory: retry after the next request
            return
        self.warm[wb.pid] = (wb, self.pool_key)
        self.sel.register(wb.ctl, selectors.EVENT_READ, wb.pid)

    def offer(self, pid: int) -> None:
        """A pooled box reports ready: hold its mount namespace, hand it to the supervisor."""
        wb, key = self.warm[pid]
        if wb.ctl < 0:  # retired by a request handled earlier in this same round of events
            return
        self.sel.unregister(wb.ctl)
        ctl = socket.socket(fileno=wb.ctl)
        wb.ctl = -1
        try:
            try:
                msg, fds = _fdpass.recv(ctl)
            except OSError:
                return  # init died in its setup; the reaper collects it
            if fds:
                self.held[pid] = fds.pop(0)
            for fd in fds:
                os.close(fd)
            if msg and key == self.pool_key and self.pool_prep is not None:
                prep = self.pool_prep
                _fdpass.send(self.sock, {"op": "warm", "key": key, "pid": pid,
                                     "enforcement": prep.enforcement,
                                     "seccomp": prep.seccomp_desc, "landlock": prep.landlock},
                         [wb.pidfd, ctl.fileno()])
        finally:
            ctl.close()  # the supervisor has its own copy; a stale box sees EOF and exits

    def close_request_socket(self, wb: _spawn.WarmBox) -> None:
        """Our end of a not-yet-offered box's socket: closing it makes that init exit."""
        if wb.ctl >= 0:
            self.sel.unregister(wb.ctl)
            os.close(wb.ctl)
            wb.ctl = -1

    def taken(self, pid: int) -> None:
        entry = self.warm.pop(pid, None)
        if entry is not None:
            self.boxes[pid] = entry[0].pidfd
        elif pid in self.reaped_warm:  # it died in between: the supervisor still needs to know
            self.report_exit(pid, *self.reaped_warm.pop(pid))

    def spawn(self, req: dict, fds: list[int]) -> None:
        rid = req.get("id")
        cfg_json, enforced = req["config"], req.get("cgroup_enforced", [])
        key = req["key"]  # the supervisor's name for config + cgroup-enforced limits
        try:
            if len(fds) < 4:
                raise OSError(22, "spawn request without stdio/status fds")
            prep = self.prepared(key, cfg_json, [str(a) for a in req["argv"]], enforced)
            cgroup_fd = fds[4] if req.get("cgroup") and len(fds) > 4 else None
            box = _spawn.spawn_box(prep, stdin=fds[0], stdout=fds[1], stderr=fds[2],
                                   status_w=fds[3], cgroup_fd=cgroup_fd)
        except Exception as e:  # noqa: BLE001 - every failure becomes an XX verdict upstream
            err = e.errno if isinstance(e, OSError) else None
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            _fdpass.send(self.sock, {"op": "error", "id": rid, "error": msg, "errno": err,
                                 "step": "prepare" if not isinstance(e, OSError) else "clone"})
            return
        finally:
            for fd in fds:
                os.close(fd)
        self.boxes[box.pid] = box.pidfd
        _fdpass.send(self.sock, {"op": "spawned", "id": rid, "pid": box.pid,
                             "enforcement": prep.enforcement, "seccomp": prep.seccomp_desc,
                             "landlock": prep.landlock}, [box.pidfd])
        if cgroup_fd is None and self.pool_size:
            if key != self.pool_key:  # retire the old pool: not-yet-offered boxes get EOF now
                for wb, _k in self.warm.values():
                    self.close_request_socket(wb)
            self.pool_key, self.pool_prep = key, prep

    def report_exit(self, pid: int, status: int, cpu: float, rss: int) -> None:
        _fdpass.send(self.sock, {"op": "exited", "pid": pid, "wait_status": status,
                             "cpu_time": cpu, "max_rss": rss})

    def reap(self) -> None:
        for pid, status, cpu, rss in sc.reap_ended():
            usage = (status, cpu, rss)
            entry = self.warm.pop(pid, None)
            if entry is not None:  # a pooled box that died before anyone said "taken"
                wb, _key = entry
                self.close_request_socket(wb)
                os.close(wb.pidfd)
                self.reaped_warm[pid] = usage
                if len(self.reaped_warm) > 64:
                    del self.reaped_warm[next(iter(self.reaped_warm))]
            else:
                pidfd = self.boxes.pop(pid, -1)
                if pidfd >= 0:
                    os.close(pidfd)
                self.report_exit(pid, *usage)
            held = self.held.pop(pid, -1)
            if held >= 0:
                self.retired.append(held)
                if len(self.retired) > self.MAX_RETIRED:
                    os.close(self.retired.pop(0))

    def kill_all(self) -> None:
        pidfds = [wb.pidfd for wb, _key in self.warm.values()] + list(self.boxes.values())
        for pidfd in pidfds:
            try:
                sc.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
        for pid in [*self.boxes, *self.warm]:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        for fd in [*self.held.values(), *self.retired]:
            os.close(fd)

    def serve(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self.sock, selectors.EVENT_READ, "sock")
        self.sel.register(wake_r, selectors.EVENT_READ, "wake")
        try:
            while True:
                idle_due = bool(self.retired) or self.refill_due()
                events = self.sel.select(0 if idle_due else None)
                if not events and idle_due:
                    self.idle_work()
                for key, _ in events:
                    if key.data == "sock":
                        msg, fds = _fdpass.recv(self.sock)
                        if not msg:
                            for fd in fds:
                                os.close(fd)
                            return
                        req = json.loads(msg)
                        if req.get("op") == "spawn":
                            self.spawn(req, fds)
                        elif req.get("op") == "taken":
                            self.taken(int(req["pid"]))
                    elif key.data == "wake":
                        try:
                            os.read(wake_r, 4096)
                        except BlockingIOError:
                            pass
                        self.reap()
                    elif key.data in self.warm:
                        self.offer(key.data)
                self.reap()
        finally:
            self.kill_all()


def main() -> None:
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    pool_size = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor, which decides
    import prctl

    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    sock = socket.socket(fileno=fd)
    try:
        Launcher(sock, pool_size).serve()
    except (BrokenPipeError, ConnectionResetError):
        pass


if __name__ == "__main__":
    main()
