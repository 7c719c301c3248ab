"""The fork-server: a small single-threaded process that clones every box for a supervisor.

Why it exists: trio runs worker threads, and cloning from a multi-threaded process copies one
thread and leaves every lock another thread held locked forever in the child. The launcher is
started once per supervisor (``python -m sandbox.launcher FD PPID``), never imports trio or
pyroute2, keeps its module state warm (seccomp filters compiled once, rootfs plans cached),
and talks over one ``SOCK_SEQPACKET`` socket (protocol in docs/architecture.md):

* spawn requests arrive as JSON with stdio/status fds attached (SCM_RIGHTS);
* the box's pidfd goes back the same way, so the supervisor can kill it directly;
* the launcher is the box init's parent, so it reaps it and reports the wait status and the
  rusage (which covers every process the box ever had: init reaped them all).

If the supervisor goes away (socket EOF, or PDEATHSIG), every box is killed and reaped.
"""

from __future__ import annotations

import array
import dataclasses
import json
import os
import selectors
import signal
import socket
import sys

from sandbox import _syscalls as sc
from sandbox import contain, spawn
from sandbox.config import SandboxConfig

MAX_MSG = 1 << 20
MAX_FDS = 8


def recv_msg(sock: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    # close-on-exec: an fd a box must not hold (its status pipe) never reaches its payload
    msg, anc, _flags, _addr = sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(MAX_FDS * fds.itemsize),
                                           socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds)


def send_msg(sock: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([json.dumps(obj).encode()], anc)


class Launcher:
    """Serves spawn requests; keeps a small pool of pre-warmed boxes for the config in use.

    Warm pool: after serving a request for config K, the launcher pre-builds up to
    ``pool_size`` boxes for K (clone + namespaces + rootfs run in those children, on another
    core, while the supervisor is busy with the current box). The next request for K only
    hands argv and fds to a waiting init, which hardens and execs: the clone and setup leave
    the latency path. Boxes using a cgroup are always built cold (the leaf and the cgroup
    namespace must exist before the box is), and a new config evicts the old pool.

    Refills are idle work: cloning a box takes this process ~0.4 ms and the new box's setup
    another core's ~3 ms, which would compete with the box just handed out (2-core machines:
    its exec waited for a CPU). So a refill waits until no request is pending and either no
    box is running or the pool ran dry (then the next request needs it more than anything).
    """

    def __init__(self, sock: socket.socket, pool_size: int = 0) -> None:
        self.sock = sock
        self.boxes: dict[int, int] = {}  # pid → pidfd, boxes handed to the supervisor
        self.cache: dict[str, contain.Prepared] = {}
        self.pool_size = pool_size
        self.pool_key: str | None = None
        self.pool: list[spawn.WarmBox] = []
        self.warm_pids: set[int] = set()
        self.want_pool: tuple[str, contain.Prepared] | None = None

    def prepared(self, cfg_json: dict, argv: list[str], cgroup_enforced: list[str]) -> contain.Prepared:
        key = self.key(cfg_json, cgroup_enforced)
        prep = self.cache.get(key)
        if prep is None:
            cfg = SandboxConfig.from_dict(cfg_json).validate()
            prep = contain.prepare(cfg, argv, cgroup_enforced=frozenset(cgroup_enforced))
            if len(self.cache) > 64:
                self.cache.clear()
            self.cache[key] = prep
        return dataclasses.replace(prep, target=argv)

    @staticmethod
    def key(cfg_json: dict, cgroup_enforced: list[str]) -> str:
        return json.dumps([cfg_json, sorted(cgroup_enforced)], sort_keys=True)

    def take_warm(self, key: str, argv: list[str], fds: list[int]) -> tuple[int, int] | None:
        """Hand the request to a warm box for this config, if one is waiting."""
        while self.pool_key == key and self.pool:
            wb = self.pool.pop()
            self.warm_pids.discard(wb.pid)
            try:
                send_msg(socket.socket(fileno=os.dup(wb.ctl)), {"argv": argv}, fds[:4])
            except OSError:
                self.discard(wb)
                continue
            os.close(wb.ctl)
            return wb.pid, wb.pidfd
        return None

    def refill_due(self) -> bool:
        return self.want_pool is not None and (not self.boxes or not self.pool
                                               or self.pool_key != self.want_pool[0])

    def refill_one(self) -> None:
        """One unit of idle work: evict a stale pool, or pre-build one box."""
        assert self.want_pool is not None
        key, prep = self.want_pool
        if self.pool_key != key:
            for wb in self.pool:
                self.discard(wb)
            self.pool, self.pool_key = [], key
        try:
            wb = spawn.spawn_warm(dataclasses.replace(prep, target=[]))
        except OSError:
            self.want_pool = None  # out of processes or memory: retry after the next request
            return
        self.pool.append(wb)
        self.warm_pids.add(wb.pid)
        if len(self.pool) >= self.pool_size:
            self.want_pool = None

    def discard(self, wb: spawn.WarmBox) -> None:
        """Closing the request socket makes a waiting warm init exit; the reaper collects it."""
        os.close(wb.ctl)
        os.close(wb.pidfd)
    def spawn(self, req: dict, fds: list[int]) -> None:
        rid = req.get("id")
        try:
            if len(fds) < 4:
                raise OSError(22, "spawn request without stdio/status fds")
            prep = self.prepared(req["config"], [str(a) for a in req["argv"]],
                                 req.get("cgroup_enforced", []))
            cgroup_fd = fds[4] if req.get("cgroup") and len(fds) > 4 else None
            key = self.key(req["config"], req.get("cgroup_enforced", []))
            warm = None if cgroup_fd is not None else self.take_warm(key, prep.target, fds)
            if warm is not None:
                box = spawn.BoxProcess(*warm)
            else:
                box = spawn.spawn_box(prep, stdin=fds[0], stdout=fds[1], stderr=fds[2],
                                      status_w=fds[3], cgroup_fd=cgroup_fd)
        except Exception as e:  # noqa: BLE001 - every failure becomes an XX verdict upstream
            err = e.errno if isinstance(e, OSError) else None
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            send_msg(self.sock, {"op": "error", "id": rid, "error": msg, "errno": err,
                                 "step": "prepare" if not isinstance(e, OSError) else "clone"})
            return
        finally:
            for fd in fds:
                os.close(fd)
        self.boxes[box.pid] = box.pidfd
        send_msg(self.sock, {"op": "spawned", "id": rid, "pid": box.pid,
                             "enforcement": prep.enforcement, "seccomp": prep.seccomp_desc,
                             "landlock": prep.landlock}, [box.pidfd])
        if cgroup_fd is None and self.pool_size and (self.pool_key != key
                                                      or len(self.pool) < self.pool_size):
            self.want_pool = (key, prep)

    def reap(self) -> None:
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.warm_pids:  # a pooled box that died unused: nobody to tell
                self.warm_pids.discard(pid)
                self.pool = [wb for wb in self.pool if wb.pid != pid or self.discard(wb)]
                continue
            pidfd = self.boxes.pop(pid, -1)
            if pidfd >= 0:
                os.close(pidfd)
            send_msg(self.sock, {"op": "exited", "pid": pid, "wait_status": status,
                                 "cpu_time": ru.ru_utime + ru.ru_stime,
                                 "max_rss": ru.ru_maxrss * 1024})

    def kill_all(self) -> None:
        for wb in self.pool:
            self.discard(wb)
        self.pool = []
        for pidfd in self.boxes.values():
            try:
                sc.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
        for pid in [*self.boxes, *self.warm_pids]:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    def serve(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        try:
            while True:
                events = sel.select(0 if self.refill_due() else None)
                if not events and self.refill_due():
                    self.refill_one()
                for key, _ in events:
                    if key.fileobj is self.sock:
                        msg, fds = recv_msg(self.sock)
                        if not msg:
                            for fd in fds:
                                os.close(fd)
                            return
                        req = json.loads(msg)
                        if req.get("op") == "spawn":
                            self.spawn(req, fds)
                    else:
                        try:
                            os.read(wake_r, 4096)
                        except BlockingIOError:
                            pass
                        self.reap()
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
