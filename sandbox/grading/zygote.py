"""Clean box factories: a fresh interpreter per grading run, forked once per submission, that
clones the submission's test boxes.

Every test's box needs a worker interpreter that has seen nothing of the teacher (see
``sandbox._worker``). Exec'ing a fresh Python in every box works (the fixture's ``call`` does)
but costs each test ~9 ms of CPU for the interpreter's start-up, which on a 2-core machine
grading 2 submissions at a time is most of a test. The *factory* pays it once per grading run
(pytest process): it is exec'd by the grader — ``python -I -S -B``, a clean environment (the
allowlist a box gets anyway), no argv but its fds and our pid — and imports the box-making
code and ``sandbox._worker`` from code objects we send it, which name no host file
(``sandbox.grading._factory``: its maps, modules and ``sys.path`` name neither the checkout
nor the venv). It never reads anything of a submission: its only request is
"fork", which hands it a socket. The fork, a *zygote*, serves one submission on that socket:
it clones each of its test boxes, whose payload is a fork of that clean image running
``_worker.serve``. What such a worker can find in its memory is our code and its zygote's
requests: box configs of this one submission (limits, an alias of its directory: never its
host path, see ``Zygote._alias``) and fd numbers.
Never the teacher's frames, modules, argv or environment, and never another submission (the
factory that all zygotes are forks of has seen none). The grading plugin runs a submission's
tests one after another, so one zygote serves all of them (``pytest_collection_modifyitems``).

Zygote protocol (``SOCK_SEQPACKET``, ``sandbox._fdpass`` JSON + fds), in the order the grader sends:
  → ``{"op": "spawn", "config": {...}, "upper_to": [i, ...], "source_at": {i: alias},
    "cgroup_enforced": [...]}`` (each mount's source ``/`` in the config, its alias in
    ``source_at``) fds
    ``[worker socket, stdout, stderr, status_w, *upper sockets, (cgroup dir)]`` (the config's
    fd-holding overlays, by mount index, get the upper sockets; with ``"cgroup": true`` the
    box's cgroup leaf comes last, holding the ``cgroup_enforced`` limits: the grader made it
    in its own delegated subtree and removes it, the zygote only clones the box into it);
  ← ``{"op": "spawned", "pid": P, "enforcement": ..., "seccomp": ...}`` fds ``[pidfd]``, or
    ``{"op": "error", "error": "...", "errno": E}``, one per spawn, in order;
  ← ``{"op": "exited", "pid": P, "wait_status": S, "cpu_time": T, "max_rss": B}`` whenever a
    box's init was reaped. EOF: the zygote kills and reaps its boxes, and exits.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
from typing import Any

from sandbox import SandboxConfig, _fdpass, _record, _worker
from sandbox import _syscalls as sc

_factory: list[Any] = []  # [socket, Popen] of this process's factory, once started
ALIAS_TOP, ALIASES = "/tmp", "sandbox-grade-"  # where Zygote._alias makes its directory
_swept: list[bool] = []


def _sweep_aliases() -> None:
    """Once per process: remove the alias directories of our graders that died without
    closing their zygotes (``sandbox grade --timeout`` kills a run). A dead grader's own
    directory is the only state it leaves; its links lead to submissions, readable only
    through their own permissions."""

    if _swept:
        return
    _swept.append(True)
    remove_aliases()


def remove_aliases(of_pid: int | None = None) -> None:
    """Remove our alias directories of the grader ``of_pid`` (one we killed: ``sandbox grade
    --timeout``), or of every grader of ours that is gone."""
    import shutil

    try:
        names = [n for n in os.listdir(ALIAS_TOP) if n.startswith(ALIASES)]
    except OSError:
        return
    for name in names:
        path = os.path.join(ALIAS_TOP, name)
        try:
            pid = int(name[len(ALIASES):].split("-")[0])
            gone = pid == of_pid if of_pid is not None else not os.path.exists(f"/proc/{pid}")
            if gone and os.lstat(path).st_uid == os.geteuid():
                shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            continue


def _factory_socket() -> socket.socket:
    if _factory and _factory[1].poll() is not None:  # it died (killed?): start another
        stop_factory()
    if not _factory:
        import subprocess  # (not in the factory itself: what it imports, every box carries)

        from sandbox._boxcgroup import cgroup_manager

        # Our cgroup subtree first: opening it may move us into a leaf of our cgroup, which the
        # kernel refuses once another process (the factory) shares that cgroup. The factory is
        # then born next to us, where it may clone boxes into our leaves.
        cgroup_manager()

        from sandbox.grading import _factory as code_of

        code, exts = code_of.bundle()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = [code_of.memfd("sandbox", code)]
        try:
            ext_fds = {name: code_of.memfd(name, data) for name, data in exts.items()}
            fds += ext_fds.values()
            entry = code_of.ENTRY.format(code=fds[0], extensions=ext_fds, fd=theirs.fileno(),
                                 parent=os.getpid())
            env = {k: os.environ[k] for k in SandboxConfig().inherit_env if k in os.environ}
            proc = subprocess.Popen([os.path.realpath(sys.executable), *_worker.FLAGS, "-c", entry],
                                    env=env, pass_fds=[theirs.fileno(), *fds], cwd="/",
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        finally:
            theirs.close()
            for fd in fds:
                os.close(fd)
        _factory[:] = [ours, proc]
    return _factory[0]


def stop_factory() -> None:
    """The factory exits (its zygotes are already gone, or die with it)."""
    if _factory:
        sock, proc = _factory
        _factory.clear()
        sock.close()
        proc.wait()


class Zygote:
    """The grader's handle on one submission's zygote (see the module docstring)."""

    def __init__(self) -> None:
        self.users = 0  # open sessions whose box came from here
        self.alive = True  # until it stops answering: its spawns then fail, and a new one is made
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            _fdpass.send(_factory_socket(), {"op": "fork"}, [theirs.fileno()])
        except OSError:
            self.alive = False
        finally:
            theirs.close()
        self._sock = ours
        self._exits: dict[int, tuple[int | None, float, int | None]] = {}
        self._pending = 0  # spawns sent, answers not taken yet
        self._replies: list[tuple[dict[str, Any], list[int]]] = []
        self._links: str | None = None  # our directory of aliases (see _alias)
        self._aliases: dict[str, str] = {}  # host path → its alias

    def spawn(self, cfg: SandboxConfig, fds: list[int], cgroup_fd: int | None = None,
              cgroup_enforced: list[str] | None = None) -> None:
        """Ask for a box (``fds``: worker socket, stdout, stderr, status_w; ``cgroup_fd``: the
        box's cgroup leaf, holding ``cgroup_enforced``); ``spawned()`` reads the answer, so the
        zygote's start-up and the clone overlap the caller's own work."""
        held = [i for i, m in enumerate(cfg.mounts) if m.upper_to is not None]
        self._pending += 1
        try:
            aliases = {i: self._alias(m.source) for i, m in enumerate(cfg.mounts) if m.source}
        except OSError as e:  # (no alias directory in /tmp: the spawn fails, XX)
            self._replies.append(({"op": "error", "error": e.strerror, "errno": e.errno}, []))
            return
        plain = _record.replace(cfg, mounts=[
            _record.replace(m, upper_to=None, source="/" if i in aliases else m.source)
            for i, m in enumerate(cfg.mounts)])
        enforced = list(cgroup_enforced or []) if cgroup_fd is not None else []
        try:
            _fdpass.send(self._sock, {"op": "spawn", "config": plain.to_dict(), "upper_to": held,
                                      "source_at": {str(i): a for i, a in aliases.items()},
                                      "cgroup": cgroup_fd is not None, "cgroup_enforced": enforced},
                         [*fds, *(cfg.mounts[i].upper_to for i in held),
                          *([cgroup_fd] if cgroup_fd is not None else [])])
        except OSError as e:  # answered here: the spawn fails like one the zygote refused
            self.alive = False
            self._replies.append(({"op": "error", "error": e.strerror, "errno": e.errno}, []))

    def _alias(self, source: str) -> str:
        """A name for a mount's host source that says nothing of the host: a symlink of ours,
        ``/tmp/sandbox-grade-XXXXXXXX/N``, which the box's init follows in its own mount
        namespace (an fd would not do: a mount from another namespace is refused, EINVAL).
        Only the kernel reads the link's text. The zygote is sent only that name, so it never
        holds the submission's host path, and no worker it clones finds it in its memory.
        The directory is ours, 0711: others can neither list it nor change a link."""
        if source not in self._aliases:
            if self._links is None:
                import tempfile

                _sweep_aliases()
                self._links = tempfile.mkdtemp(prefix=f"{ALIASES}{os.getpid()}-", dir=ALIAS_TOP)
                os.chmod(self._links, 0o711)  # (root mode: the box's init is another uid)
            link = os.path.join(self._links, str(len(self._aliases)))
            # relative: init follows it under /oldroot, its own / being the box's tmpfs
            os.symlink(os.path.relpath(source, self._links), link)
            self._aliases[source] = link
        return self._aliases[source]

    def spawned(self) -> tuple[int, int, dict[str, Any]]:
        """(pid, pidfd, reply) of the oldest spawn not answered yet; OSError if it failed."""
        while not self._replies:
            self._next()
        msg, fds = self._replies.pop(0)
        self._pending -= 1
        if msg.get("op") != "spawned" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise OSError(msg.get("errno") or 0, f"box factory: {msg.get('error')}")
        return int(msg["pid"]), fds[0], msg

    def wait(self, pid: int) -> tuple[int | None, float, int | None]:
        """A box's wait status and rusage, once the zygote reaped it (None: the zygote is gone)."""
        while pid not in self._exits:
            try:
                self._next()
            except OSError:
                return None, 0.0, None
        return self._exits.pop(pid)

    def _next(self) -> None:
        """One message: an exit is filed by pid, a spawn's answer queued in order."""
        data, fds = _fdpass.recv(self._sock, max_fds=1)
        if not data:
            self.alive = False
            raise OSError(32, "the box factory exited")
        msg = json.loads(data)
        if msg.get("op") == "exited":
            self._exits[int(msg["pid"])] = (int(msg["wait_status"]), float(msg["cpu_time"]),
                                            int(msg["max_rss"]))
        else:
            self._replies.append((msg, fds))

    def close(self) -> None:
        """The zygote kills and reaps any box still running, then exits (the factory reaps it)."""
        while self._pending:
            try:
                os.close(self.spawned()[1])
            except OSError:
                break
        self._sock.close()
        self._aliases.clear()
        if self._links is not None:
            import shutil

            shutil.rmtree(self._links, ignore_errors=True)
            self._links = None


# ------------------------------------------------------------ the factory and its zygotes --

def factory_main(fd: int, parent: int) -> None:
    """Fork a zygote for each socket the grader sends; exit at EOF."""
    import prctl

    from sandbox import _contain, _spawn  # noqa: F401 - loaded once here, for every zygote

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the grader's to handle
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    _contain.prepare(SandboxConfig().validate(), ["true"])  # rootfs plan caches, seccomp program
    ctl = socket.socket(fileno=fd)
    zygotes: set[int] = set()
    while True:
        data, fds = _fdpass.recv(ctl, max_fds=1)
        if not data or len(fds) != 1:
            break
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ctl.close()
                prctl.set_pdeathsig(signal.SIGKILL)
                if os.getppid() == me:
                    _zygote_main(fds[0])
                    code = 0
            finally:
                os._exit(code)
        os.close(fds[0])
        zygotes.add(pid)
        for z in list(zygotes):  # reap the zygotes whose submission is done
            if os.waitpid(z, os.WNOHANG)[0]:
                zygotes.discard(z)
    for z in zygotes:  # grader gone: their sockets are at EOF too, or they die with us
        os.waitpid(z, 0)


def _zygote_main(fd: int) -> None:
    """One submission's zygote: clone the boxes asked for, report each one's exit."""
    sock = socket.socket(fileno=fd)
    boxes: dict[int, int] = {}  # pidfd → pid
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    try:
        while True:
            for ready, _ in poller.poll():
                if ready != sock.fileno():
                    pid = boxes.pop(ready)
                    poller.unregister(ready)
                    os.close(ready)
                    status, cpu, rss = sc.wait4(pid)
                    _fdpass.send(sock, {"op": "exited", "pid": pid, "wait_status": status,
                                        "cpu_time": cpu, "max_rss": rss})
                    continue
                data, fds = _fdpass.recv(sock)
                if not data:
                    return
                box = _spawn(sock, json.loads(data), fds)
                if box is not None:
                    boxes[box[1]] = box[0]
                    poller.register(box[1], select.POLLIN)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        for pidfd, pid in boxes.items():
            try:
                sc.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            sc.wait4(pid)


def _serve(fd: int, expose_python: bool | str) -> None:
    """In the box: the worker, its ``sys.path`` (the factory's: the stdlib) as the box sees it."""
    from sandbox import _pyprefix

    sys.path[:] = _pyprefix.box_paths(sys.path, expose_python)
    _worker.serve(fd)


def _spawn(sock: socket.socket, req: dict[str, Any], fds: list[int]) -> tuple[int, int] | None:
    """One box. Its mounts' sources come as aliases (``source_at``: ``Zygote._alias``), put in
    the plan after the config is validated with ``/`` in their place: validating resolves a
    source, which would bring the host path back into our memory."""
    from sandbox import _contain, _spawn

    try:
        cfg = SandboxConfig.from_dict(req["config"])
        uppers, rest = fds[4:4 + len(req["upper_to"])], fds[4 + len(req["upper_to"]):]
        for i, fd in zip(req["upper_to"], uppers, strict=True):
            cfg.mounts[i] = _record.replace(cfg.mounts[i], upper_to=fd)
        cgroup_fd = rest[0] if req.get("cgroup") and rest else None
        if req.get("cgroup") and cgroup_fd is None:
            raise OSError(22, "spawn request without the box's cgroup fd")
        cfg = cfg.validate()
        for i, alias in req.get("source_at", {}).items():
            cfg.mounts[int(i)] = _record.replace(cfg.mounts[int(i)], source=alias)
        box_fd = fds[0]
        expose = cfg.expose_python
        prep = _contain.prepare(cfg, lambda: _serve(box_fd, expose),
                                cgroup_enforced=frozenset(req.get("cgroup_enforced", [])))
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            box = _spawn.spawn_box(prep, stdin=null, stdout=fds[1], stderr=fds[2], status_w=fds[3],
                                   pass_fds=[box_fd], cgroup_fd=cgroup_fd)
        finally:
            os.close(null)
    except Exception as e:  # noqa: BLE001 - every failure becomes an XX verdict in the grader
        _fdpass.send(sock, {"op": "error", "error": getattr(e, "strerror", None) or str(e),
                            "errno": getattr(e, "errno", None)})
        return None
    finally:
        for fd in fds:
            os.close(fd)
    _fdpass.send(sock, {"op": "spawned", "pid": box.pid, "enforcement": prep.enforcement,
                        "seccomp": prep.seccomp_desc}, [box.pidfd])
    return box.pid, box.pidfd
