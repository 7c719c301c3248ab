"""``sandbox grade --scheduler``: one Dask task per submission, graded on a worker's own host;
and the workers' admission, ``dask worker --preload sandbox.grading.cluster``.

Each task carries its submission's files (and the teacher's tests, a task of their own) as
bytes, so no shared filesystem is needed; the worker unpacks them into a temp dir and grades
the submission with the very runner ``-j N`` uses (``sandbox.grading.runner``: a pytest run
whose every use of the submission is a box). The worker returns the runner's events — plain
JSON-able dicts that came as JSON lines from the run's log — and the machine running ``sandbox
grade`` replays them into its own sink: progress, rows and the journal stay there, written by
one process, so a submission Dask retried is recorded once.

Dask re-runs a task whose worker died (SIGKILL, a lost host) elsewhere; a task that killed
``distributed.scheduler.allowed-failures`` + 1 workers raises ``KilledWorker`` and its row
says so instead of being retried for ever. Pickled tasks cross between the grader and the
workers only (trusted hosts, see docs/grading-cluster.md); nothing from a box is ever unpickled.

Admission (``dask_setup``, Dask's preload hook): a worker that cannot make boxes would take
submissions and fail every one of them (each row blaming the host, not the student), so before
it joins it runs the doctor's trials (``sandbox.diagnose``) and, when a required one fails,
exits naming the cause. Logging alone is not enough: Dask logs an exception raised in a preload
and lets the worker join anyway, so the refusal closes the worker (and its nanny) and ends the
process with ``EXIT_REFUSED``. An admitted worker advertises ``sandbox=N`` (boxes graded at
once: its threads) and ``cgroup=1`` where cgroup v2 limits are real; every task asks for
``sandbox=1``, so a worker started without this preload is never given a submission.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any

MAX_TREE = 64 * 1024 * 1024  # bytes of files per packed submission (or tests) folder
ALLOWED_FAILURES = 2  # local:N; a tcp:// scheduler uses its own config
EXIT_REFUSED = 78  # EX_CONFIG: this host's configuration cannot run boxes
MODULE = "sandbox.grading.cluster"  # dask worker --preload MODULE; the grading child: -m MODULE
Packed = list[tuple[str, str, Any]]  # (relative path, "d" | "f" | "l", mode+bytes | target)
log = logging.getLogger(MODULE)


def check(spec: str, image: str | None = None) -> None:
    """``--scheduler``'s value (with ``--image``) and ``distributed`` itself, before anything is
    graded. ``--image`` goes with ``local:N`` only: its workers are on this host and read its
    image store; a remote worker has its own store (or none), so its boxes would silently have
    another root than the one the journal keys the results by."""
    if spec.startswith("local:"):
        n = spec.removeprefix("local:")
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--scheduler {spec}: local:N needs a number of workers N >= 1")
    elif not spec.startswith(("tcp://", "tls://")) or ":" not in spec.split("://", 1)[1]:
        raise ValueError(f"--scheduler {spec}: expected local:N or tcp://HOST:PORT (or tls://HOST:PORT)")
    elif image is not None:
        raise ValueError(f"--image {image} cannot be combined with --scheduler {spec} yet: images "
                         "are in this host's store, not on the workers' hosts (use local:N or no --image)")
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ValueError(f"--scheduler {spec}: Dask distributed is not installed "
                         "(pip install 'pytest-sandbox-box[cluster]')") from None


def pack(root: str) -> Packed:
    """A folder's (or file's) dirs, files and symlinks — links kept as links, never followed."""
    out: Packed = []
    total = 0
    if not os.path.isdir(root):
        with open(root, "rb") as f:
            data = f.read(MAX_TREE + 1)
        return [(os.path.basename(root), "f", (os.stat(root).st_mode & 0o777, data))]
    for d, dirs, files in os.walk(root):
        dirs.sort()
        rel_d = os.path.relpath(d, root)
        for n in sorted(dirs + files):
            full, rel = os.path.join(d, n), os.path.normpath(os.path.join(rel_d, n))
            st = os.lstat(full)
            if n in ("__pycache__", ".pytest_cache"):
                continue
            if stat.S_ISLNK(st.st_mode):
                out.append((rel, "l", os.readlink(full)))
            elif stat.S_ISDIR(st.st_mode):
                out.append((rel, "d", st.st_mode & 0o777))
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as f:
                    data = f.read(MAX_TREE + 1 - total)
                total += len(data)
                if total > MAX_TREE:
                    raise ValueError(f"{root}: more than {MAX_TREE >> 20} MiB of files")
                out.append((rel, "f", (st.st_mode & 0o777, data)))
        dirs[:] = [x for x in dirs if not os.path.islink(os.path.join(d, x))]
    return out


def unpack(items: Packed, dest: str) -> None:
    """Recreate ``pack``'s output under ``dest`` (created), never writing through a link."""
    os.mkdir(dest, 0o755)
    for rel, kind, val in items:
        if os.path.isabs(rel) or ".." in rel.split(os.sep):
            raise ValueError(f"bad packed path {rel!r}")
        full = os.path.join(dest, rel)
        if kind == "d":
            os.mkdir(full)
            os.chmod(full, val)
        elif kind == "l":
            os.symlink(val, full)
        else:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(val[1])
            os.chmod(full, val[0])


class _Events:
    """The runner's sink on a worker: records what the grader's own sink is to be told."""

    def __init__(self) -> None:
        self.events: list[list[Any]] = []

    def collected(self, tests: dict[str, list[list[Any]]]) -> None:
        self.events.append(["collected", tests])

    def started(self, name: str) -> None:
        self.events.append(["started", name])

    def test(self, line: dict[str, Any]) -> None:
        self.events.append(["test", line])

    def finished(self, name: str, error: str | None) -> None:
        self.events.append(["finished", name, error])


def grade_one(name: str, sub: Packed, tests: tuple[str, Packed], opts: dict[str, Any]) -> dict[str, Any]:
    """The Dask task: grade one submission on this worker's host, as ``-j 1`` would, in a child
    process that dies with the worker: a SIGKILLed worker leaves no grading run behind (the
    child's parent-death signal stops its runs and removes its temp dir) and Dask re-runs the
    task elsewhere. The job crosses to our own child pickled (trusted), the answer comes back
    as JSON."""
    import json
    import pickle
    import subprocess

    p = subprocess.run([sys.executable, "-m", MODULE, str(os.getpid())],
                       input=pickle.dumps((name, sub, tests, opts)), capture_output=True, check=False)
    try:
        return dict(json.loads(p.stdout))
    except ValueError:
        raise RuntimeError(f"the grading child failed (exit {p.returncode}): "
                           f"{p.stderr.decode(errors='replace')[-300:]}") from None


def _child(name: str, sub: Packed, tests: tuple[str, Packed], opts: dict[str, Any]) -> dict[str, Any]:
    from sandbox.grading import runner

    sink = _Events()
    with tempfile.TemporaryDirectory(prefix="grade-task-") as tmp:
        os.chmod(tmp, 0o755)
        tests_name, tests_items = tests
        unpack(tests_items, os.path.join(tmp, "t"))
        t = os.path.join(tmp, "t", tests_name)
        if not os.path.exists(t):  # a tests folder: its items are relative to it
            os.rename(os.path.join(tmp, "t"), os.path.join(tmp, "tt"))
            os.mkdir(os.path.join(tmp, "t"), 0o755)
            os.rename(os.path.join(tmp, "tt"), t)
        os.mkdir(os.path.join(tmp, "s"), 0o755)
        path = os.path.join(tmp, "s", name)
        unpack(sub, path)
        a = SimpleNamespace(**opts, tests=t, jobs=1, run_timeout=None)
        work = os.path.join(tmp, "w")
        os.mkdir(work, 0o755)
        try:
            why = runner.run([(name, path)], a, work, sink)
        except runner.TeacherError as e:
            return {"teacher_error": e.info}
    return {"events": sink.events, "why": why, "host": os.uname().nodename}


def _child_main(parent: int) -> None:
    import ctypes
    import json
    import pickle
    import signal

    stopping: list[bool] = []

    def stop(*_: Any) -> None:
        # The parent-death signal comes once per thread of the dying worker: the kernel
        # reparents us to its next thread and signals again. Only the first one unwinds
        # runner.run (its runs killed) and the temp dir; a second SystemExit raised in that
        # cleanup would abandon it half done.
        if not stopping:
            stopping.append(True)
            raise SystemExit(143)

    signal.signal(signal.SIGTERM, stop)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        raise SystemExit(143)  # the worker died before the signal was armed
    job = pickle.loads(sys.stdin.buffer.read())  # from our own worker process, not a box
    sys.stdout.write(json.dumps(_child(*job)))


def admission() -> tuple[list[str], dict[str, float]]:
    """The reasons this host cannot make boxes (empty: it can), and the resources it offers."""
    from sandbox import diagnose

    checks = diagnose()
    why = [f"{c.name}: {c.detail}" + (f" (fix: {c.fix})" if c.fix else "")
           for c in checks if c.status == "fail"]
    res: dict[str, float] = {}
    if any(c.name == "cgroup v2" and c.status == "ok" for c in checks):
        res["cgroup"] = 1
    return why, res


async def dask_setup(worker: Any) -> None:
    """Dask's preload hook: runs in the worker process before it registers with the scheduler."""
    why, res = admission()
    if why:
        text = f"{MODULE}: this worker refuses to join: boxes cannot be made here: " + "; ".join(why)
        log.error("%s", text)
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
        # A nanny would restart a worker that merely died: tell it to close too, then end.
        try:
            if getattr(worker, "nanny", None):
                await worker.close(nanny=True, reason=f"{MODULE}: boxes cannot be made here")
        finally:
            os._exit(EXIT_REFUSED)
    res["sandbox"] = float(worker.state.nthreads)
    for k, v in res.items():  # before registration: the scheduler learns them when it joins
        worker.state.total_resources[k] = v
        worker.state.available_resources[k] = v
    log.info("%s: admitted; resources %s", MODULE, res)


def _same(x: Any) -> Any:
    return x


def _client(spec: str, tmp: str) -> tuple[Any, Any]:
    import dask
    from distributed import Client, LocalCluster

    if not spec.startswith("local:"):
        return Client(spec, timeout=30), None
    # The workers' scratch space in the run's temp dir: removed with it, even after a SIGKILL.
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                          "temporary-directory": tmp}):
        cluster = LocalCluster(n_workers=int(spec[6:]), threads_per_worker=1, processes=True,
                               dashboard_address=None, preload=[MODULE],
                               silence_logs=40)
    return Client(cluster), cluster


def run(subs: list[tuple[str, str]], a: Any, tmp: str, sink: Any) -> str | None:
    """``runner.run``'s contract over a cluster: grade ``subs`` into ``sink``; None when all
    were graded, else why not (``--run-timeout``). TeacherError and Ctrl-C propagate."""
    from distributed import as_completed
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    from sandbox.grading import runner

    opts = {k: getattr(a, k) for k in ("call_timeout", "memory", "wall_time", "timeout", "image")}
    deadline = None if a.run_timeout is None else time.monotonic() + a.run_timeout
    client, cluster = _client(a.scheduler, tmp)
    lost = False
    try:
        # The tests as a task of their own (not scattered data): a result lost with its workers
        # is computed again, scattered data would be gone and cancel every submission.
        tests = client.submit(_same, (os.path.basename(os.path.abspath(a.tests)), pack(a.tests)),
                              key="grade-tests", pure=False)
        todo = list(enumerate(subs))[::-1]
        futs: dict[Any, tuple[int, tuple[str, str], bool]] = {}  # -> (i, sub, graded alone)
        suspects: list[tuple[int, tuple[str, str]]] = []
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done = as_completed(timeout=left)
        _feed(client, todo, futs, done, tests, opts, suspects)
        try:
            for fut in done:
                i, sub, alone = futs.pop(fut)
                suspect = not alone and _killed(fut, KilledWorker)
                if suspect:
                    suspects.append((i, sub))  # once more, alone (_feed)
                _feed(client, todo, futs, done, tests, opts, suspects)
                if suspect:
                    continue
                name = sub[0]
                if not _replay(name, fut, sink, KilledWorker, FutureCancelledError,
                               runner.TeacherError):
                    lost = True  # Dask cancelled every future: the rest are not graded
                    return (f"not graded: the connection to the scheduler {a.scheduler} was lost; "
                            "`sandbox grade --resume` grades it once the scheduler is back")
        except TimeoutError:
            return f"not graded: the run reached --run-timeout {a.run_timeout:g}s"
        return None
    finally:
        _close(client, quiet=lost)
        if cluster is not None:
            cluster.close()


def _feed(client: Any, todo: list[tuple[int, tuple[str, str]]],
          futs: dict[Any, tuple[int, tuple[str, str], bool]], done: Any, tests: Any,
          opts: dict[str, Any], suspects: list[tuple[int, tuple[str, str]]]) -> None:
    """Submit from ``todo`` until as many submissions are out as the cluster has boxes.

    Dask sends every task it is given to a worker at once (tasks with resources are not held
    back on the scheduler), and a worker that dies counts against every task it held, running
    or only waiting: with all submissions out, three worker deaths caused by one submission
    also mark the innocent ones that were waiting on those workers as killers. Out only as
    many as there are ``sandbox`` slots, a task waits on a worker only while the cluster is
    short of one that died. It also keeps the packed files of the rest on this machine, not
    in the scheduler's memory.

    That still leaves a submission that only waited on workers that died (the cluster was
    short of one) marked with the killer. So a submission Dask gave up on (``suspects``) is
    graded once more, alone: nothing else is out until it is done, so its verdict is its own
    (a killer kills again and is reported; an innocent one is graded)."""
    def submit(i: int, sub: tuple[str, str], alone: bool) -> None:
        name, path = sub
        fut = client.submit(grade_one, name, pack(path), tests, opts, resources={"sandbox": 1},
                            key=f"grade-{i}-{name}" + ("-alone" if alone else ""), pure=False)
        futs[fut] = (i, sub, alone)
        done.add(fut)

    if suspects:
        if not futs:
            submit(*suspects.pop(), alone=True)
        return
    info = client.scheduler_info()["workers"].values()
    slots = sum(int(w.get("resources", {}).get("sandbox", 0)) for w in info)
    while todo and len(futs) < max(1, slots):
        submit(*todo.pop(), alone=False)


def _killed(fut: Any, killed: type) -> bool:
    return fut.status == "error" and isinstance(fut.exception(), killed)


def _close(client: Any, quiet: bool) -> None:
    """Close the client; after a lost scheduler, without the traceback Dask logs when its
    reconnection attempt is cancelled (the rows already say what happened)."""
    logger = logging.getLogger("distributed.client")
    level = logger.level
    if quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        client.close()
    finally:
        logger.setLevel(level)


def _replay(name: str, fut: Any, sink: Any, killed: type, cancelled: type, teacher: type) -> bool:
    """Tell ``sink`` how ``fut`` ended; False (nothing told) when the scheduler was lost."""
    try:
        res = fut.result()
    except killed as e:
        sink.started(name)
        sink.finished(name, f"not graded: it was running on every worker that died ({e}), "
                            "also when graded alone; not retried again")
        return True
    except cancelled as e:
        if getattr(e, "reason", None) == "scheduler-connection-lost":
            return False
        sink.started(name)
        sink.finished(name, "not graded: its task was cancelled")
        return True
    except Exception as e:  # the worker's own failure (never a box's: those are rows)
        sink.started(name)
        sink.finished(name, f"not graded: the worker failed: {type(e).__name__}: {e}"[:300])
        return True
    if "teacher_error" in res:
        raise teacher({str(k): str(v) for k, v in dict(res["teacher_error"]).items()})
    for ev in res["events"]:
        getattr(sink, ev[0])(*ev[1:])
    return True


if __name__ == "__main__":
    _child_main(int(sys.argv[1]))
