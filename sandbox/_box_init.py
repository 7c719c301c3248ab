"""The child half of a held box (``sandbox.Box``): its init serves commands until the host closes.

A one-shot box's init starts one payload and reports once. A held box's init does the same set-up
and the same hardening on itself (``contain``), and then, instead of a single payload, answers
requests on a SOCK_SEQPACKET socket whose other end only the host holds:

  → {"op": "exec", "id": N, "argv": [...], "env": {...}, "cwd": "/...", "rlimits": [...]}
    fds [stdin, stdout, stderr]                 start a process; ← {"op": "started", "id", "pid"}
                                                or ← {"op": "failed", "id", "step", "errno", "error"}
  → {"op": "kill", "id": N}                     SIGKILL that process's group
  ← {"op": "exited", "id", "wait_status", "cpu_time", "max_rss"}   (rusage of that process and
                                                the descendants it waited for)
  EOF on the socket                             init exits: the kernel kills the pid namespace

Why init and not the host starts each process: the host is outside the box's namespaces, and a
process entering them from outside (setns) starts as a copy of a trusted process with its
capabilities and fds; init is already inside, hardened (capabilities gone, no_new_privs,
seccomp), and starts every process the way a one-shot box starts its payload (posix_spawn with
setsid and default signals, or fork + prepared setrlimit/exec for per-process limits it cannot
hold itself, or a per-request CPU limit lower than the box's: the child cannot raise a hard
limit it inherited, only one it set itself).

Every message is ours to parse strictly: the socket is not reachable from inside the box (init
holds its end close-on-exec and is non-dumpable), so bad input means a bug, and init then exits.

Processes are grouped by their session (setsid: pid = sid = pgid). When a process ends, what is
left of its group is killed too, so an exec's helpers cannot keep its output pipes open; a
double fork with its own setsid escapes that and lives until the box closes (it still counts
toward every box-wide limit).
"""

from __future__ import annotations

import _signal
import os
import select

from sandbox import _init_signals as sigs
from sandbox import _payload, _rlimits, _statusline
from sandbox import _syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

    from sandbox._plan import Prepared

NULL_FDS = 3  # init's own 0/1/2 are /dev/null between requests


def split_limits(plan: _rlimits.Plan) -> tuple[_rlimits.Plan, _rlimits.Plan]:
    """→ (limits init holds, and its children inherit; per-process limits each child sets
    itself). As in a one-shot box, init holds them all unless it does not fit under the
    address-space limit (``_payload.split_as_limit``): a child that must set its own limits is
    a fork of init (a copy of the caller's whole image), where posix_spawn is not.

    init's own CPU time counts against the RLIMIT_CPU it holds. It blocks the soft limit's
    SIGXCPU (``_init_signals.HELD_BOX``), so only the hard limit ends it, and with it the box
    (a CPU-time verdict: init spent that time for the box, reaping and serving it)."""
    return _payload.split_as_limit(plan)


class BoxInit:
    """init's side of the request socket: the processes it started, by request id."""

    def __init__(self, prep: Prepared, sock: socket.socket, child_limits: _rlimits.Plan) -> None:
        self.prep, self.sock, self.child_limits = prep, sock, child_limits
        self.running: dict[int, int] = {}  # box pid → request id
        self.spawner_peak: dict[int, int] = {}  # box pid → our max RSS when we started it

    def send(self, obj: dict) -> None:
        from sandbox import _fdpass

        _fdpass.send(self.sock, obj)

    def end_strays(self) -> None:
        """Before a new process starts: SIGKILL every process of the box that is not in the
        session of one still running. A leftover of an earlier exec (a double fork with its own
        setsid) runs as the same user, so through /proc/PID/fd it could write into the next
        process's stdout or read its stdin, and fake that exec's output. Repeated until a pass
        finds none, since a stray may fork while we look (the pids limit bounds that)."""
        for _ in range(64):
            found = False
            for name in os.listdir("/proc"):
                if not name.isdigit() or name == "1":
                    continue
                try:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        fields = f.read(4096).rsplit(b")", 1)[1].split()
                    state, sid = fields[0], int(fields[3])
                except (OSError, ValueError, IndexError):
                    continue
                if state not in (b"Z", b"X") and sid not in self.running:
                    found = True
                    _kill_group(int(name))
            if not found:
                return

    def start(self, rid: int, req: dict, fds: list[int]) -> None:
        self.end_strays()
        argv = [str(a) for a in req["argv"]]
        env = dict(self.prep.env)
        env.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
        limits = _merge(self.child_limits, [tuple(int(v) for v in x) for x in req.get("rlimits") or []])
        step = "cwd"
        try:
            os.chdir(str(req.get("cwd") or self.prep.config.cwd))
            for i in range(3):
                os.dup2(fds[i], i, inheritable=True)
            step = "exec"
            pid, exec_r = _payload.start(argv, env, limits)
        except OSError as e:
            what = argv[0] if step == "exec" else str(req.get("cwd"))
            self.send({"op": "failed", "id": rid, "step": step, "errno": e.errno or 0,
                       "error": f"{what}: {e.strerror}"})
            return
        finally:
            for fd in fds:
                os.close(fd)
            null_stdio()
            os.chdir("/")
        if exec_r >= 0:  # fork + exec: the child reports a failed exec on this pipe
            err = os.read(exec_r, 64)
            os.close(exec_r)
            if err:
                os.waitpid(pid, 0)
                no = int(err.split(b":")[1] or 0)
                self.send({"op": "failed", "id": rid, "step": "exec", "errno": no,
                           "error": f"{argv[0]}: {os.strerror(no)}"})
                return
        self.running[pid] = rid
        self.spawner_peak[pid] = _statusline.own_peak_rss()
        self.send({"op": "started", "id": rid, "pid": pid})

    def kill(self, rid: int) -> None:
        for pid, r in self.running.items():
            if r == rid:
                _kill_group(pid)

    def reap(self) -> None:
        """Collect every child that ended (orphans of the box included: we are its pid 1)."""
        for pid, status, cpu, rss in sc.reap_ended():
            rid = self.running.pop(pid, None)
            if rid is not None:
                _kill_group(pid)
                peak = _statusline.program_peak(rss, self.spawner_peak.pop(pid, 0))  # 0: unknown
                self.send({"op": "exited", "id": rid, "wait_status": status,
                           "cpu_time": cpu, "max_rss": peak})


def _merge(base: _rlimits.Plan, extra: list) -> _rlimits.Plan:
    """Per-request limits replace the box's own for the same resource, never raise them."""
    out = {r: (s, h) for r, s, h in base}
    for r, s, h in extra:
        if r in out:
            s, h = min(s, out[r][0]), min(h, out[r][1])
        out[r] = (s, h)
    return [(r, s, h) for r, (s, h) in out.items()]


def _kill_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, _signal.SIGKILL)
        except OSError:
            pass


def null_stdio() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    for i in range(NULL_FDS):
        if fd != i:
            os.dup2(fd, i)
    if fd >= NULL_FDS:
        os.close(fd)


def serve(prep: Prepared, sock_fd: int, child_limits: _rlimits.Plan) -> int:
    """init's loop for a held box (already hardened). Returns when the host closes the socket."""
    import json
    import socket

    from sandbox import _fdpass

    sock = socket.socket(fileno=sock_fd)
    box = BoxInit(prep, sock, child_limits)
    sigs.block(sigs.HELD_BOX)  # a handler would nest under a flood of them (``_init_signals``)
    wake_r = sc.signalfd(sigs.HELD_BOX)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        for fd, _ev in poller.poll():
            if fd == wake_r:
                sigs.drain(wake_r)
                box.reap()
                continue
            msg, fds = _fdpass.recv(sock, max_fds=3)
            if not msg:
                return 0
            req = json.loads(msg)
            op, rid = req.get("op"), int(req.get("id", 0))
            if op == "exec" and len(fds) == 3:
                box.start(rid, req, fds)
                box.reap()  # a process that already ended (before we read its SIGCHLD)
            elif op == "kill":
                box.kill(rid)
            else:
                for f in fds:
                    os.close(f)
                return 1
