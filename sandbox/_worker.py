"""The box half of ``sandbox.Worker``: untrusted Python runs in a FRESH interpreter, never a clone.

Grading proxies (``submission.import_module("solution").add(2, 3)``) and the pytest fixture's
``sandbox.call(func, ...)`` used to run the untrusted code in a fork of the trusted caller.
A fork keeps everything: the teacher's stack frames and globals (the expected values),
``linecache`` (the test's source), ``sys.modules`` (the grading plugin's results of the other
submissions), ``sys.argv`` and, even after ``os.environ`` is cleared, the environment block in
memory. A hostile submission read all of that (tests/escape/test_clean_worker.py). Now the
worker is ``python -I -S -B -c BOOT``, a program the box's init execs like any other
(``Box.start``), and it is a fork server: it imports nothing of the code it serves, and each
``fork`` request gets a child that does (fresh module state for a grader's next test, at the
price of a fork rather than of an interpreter's start-up).

How the worker's code gets into the box: this module and ``sandbox._codec`` (they need only
the standard library), compiled here, are the first frame on the worker's stdin, and BOOT, a
few lines in ``-c``, turns them into modules. Chosen over mounting the package into the box
because the project may be installed editable from a directory that is not in the box, and a
mount would show the box a host path and all of our code. The code is ours and public:
nothing in it is the caller's, and its code objects are named ``<sandbox.NAME>``, no host file.

Interpreter flags: ``-I`` (no PYTHON* variables, no user site, no script directory on the
path), ``-S`` (no ``site``: .pth files run code at start-up and an editable install's import
hook holds host paths; the caller's site-packages directories are put on ``sys.path`` as plain
entries instead, so a submission can import what the grader's Python has installed), ``-B``
(no ``__pycache__`` written into the submission's directory: ``changes()`` would list it).
The binary is the caller's interpreter with symlinks resolved (``/usr/bin/python3.11``, not a
venv's ``bin/python`` link), as the box sees it: the box exposes /usr and the running Python's
prefixes at neutral paths (``sandbox._pyprefix.box_paths``: /opt/python, and /opt/venv for the
fixture's call), so no host path of them is handed in.

Protocol: see ``sandbox._worker_host`` (the host half). Requests come on stdin, replies go on
the stdout the worker was started with; the submission's code gets /dev/null and stderr in
their place. The worker shares its process with the untrusted code, so the host treats every
reply as hostile.

JSON inside the box comes from the ``_json`` C accelerator directly: the ``json`` package
imports ``re`` (and with it ``enum``, ``functools``, ``collections``), ~10 ms of every start.
"""

from __future__ import annotations

import _json
import os
import sys

from sandbox import _codec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_FRAME = 8 * 1024 * 1024
FORBIDDEN_NAMES = ("__",)  # no dunder traversal: only the submission's own public names
FLAGS = ("-I", "-S", "-B")

BOOT = """\
import sys

def boot(fd=0):
    import marshal, os
    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                os._exit(0)
            buf += chunk
        return buf
    main, code = marshal.loads(read(int.from_bytes(read(4), "big")))
    for name, obj in code:
        mod = sys.modules[name] = type(sys)(name)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, mod)
        exec(obj, mod.__dict__)
    main = sys.modules[main]
    for name, _ in code:
        del sys.modules[name]
    del code, obj
    main.serve()
boot()
"""

# ---------------------------------------------------------------------------- host side --

_sources: bytes | None = None
_site: list[str] | None = None


def command(expose_python: bool | str = True) -> list[str]:
    """The worker's argv, talking on its stdin/stdout, run as the box sees our interpreter
    (``/opt/python/bin/python3.11`` for one outside /usr)."""
    from sandbox import _pyprefix

    exe = os.path.realpath(sys.executable)
    return [*(_pyprefix.box_paths([exe], expose_python) or [exe]), *FLAGS, "-c", BOOT]


def boot_frame() -> bytes:
    """BOOT's frame: (main module, [(module name, code), ...]) as marshal data, compiled once
    per process from our installed sources (compiling them in every box cost ~2.4 ms; marshal
    is the interpreter's own format, and the box runs this same interpreter binary). The data
    goes into the box, never out: nothing from a box is ever unmarshalled."""
    global _sources
    if _sources is None:
        import marshal

        here = os.path.dirname(os.path.abspath(__file__))
        code = [("sandbox", compile("", "<sandbox>", "exec"))]
        for name in ("_codec", "_worker"):
            with open(os.path.join(here, name + ".py"), encoding="utf-8") as f:
                code.append(("sandbox." + name, compile(f.read(), f"<sandbox.{name}>", "exec")))
        data = marshal.dumps(("sandbox._worker", code))
        _sources = len(data).to_bytes(4, "big") + data
    return _sources


def site_dirs() -> list[str]:
    """The caller's site-packages directories (venv or system), as plain ``sys.path`` entries
    (host paths: ``_pyprefix.box_paths`` says where a box sees them)."""
    global _site
    if _site is None:
        _site = [p for p in sys.path
                 if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]
    return list(_site)


# ------------------------------------------------------------------ inside the box (stdlib) --

class _Scanner:
    """The context ``_json.make_scanner`` reads: json.loads' defaults (NaN and ±Infinity accepted,
    as ``_codec.encode`` writes them)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


def _unencodable(o: object) -> object:
    raise _codec.CodecError(f"{type(o).__name__} cannot cross the sandbox boundary")


_scan = _json.make_scanner(_Scanner())
_encode = _json.make_encoder(None, _unencodable, _json.encode_basestring_ascii, None, ":", ",",
                             False, False, True)


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _receive(fd: int) -> Any:
    """The host's next message (trusted: it comes from our own code), or None at EOF."""
    head = _read_exact(fd, 4)
    data = _read_exact(fd, int.from_bytes(head, "big")) if head else None
    if data is None:
        return None
    text = data.decode()
    value, end = _scan(text, 0)
    if end != len(text):
        raise ValueError("trailing data after the host's message")
    return _codec.untag(value)


def _frame(msg: Any) -> bytes:
    data = "".join(_encode(_codec.tag(msg), 0)).encode()
    if len(data) > MAX_FRAME:
        raise _codec.CodecError(f"reply of {len(data)} bytes exceeds the {MAX_FRAME}-byte limit")
    return len(data).to_bytes(4, "big") + data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _describe(e: BaseException) -> dict[str, str]:
    """An exception as text: type name, message, and the traceback from the first frame that is
    not the worker's own (the caller sees the submission's frames, not ours)."""
    import traceback

    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_globals is globals():
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(e), e, tb))
    return {"type": type(e).__name__, "message": str(e)[:10000], "traceback": text[-20000:]}


def _answer(req: dict[str, Any], modules: dict[str, Any]) -> Any:
    name = req["module"]
    if name not in modules:
        __import__(name)  # (importlib.import_module: one more import, ~0.4 ms, for the same)
        modules[name] = sys.modules[name]
    obj = modules[name]
    for part in req.get("path", []):
        if part.startswith(FORBIDDEN_NAMES):
            raise AttributeError(f"access to {part!r} is not allowed")
        obj = getattr(obj, part)
    if req["op"] == "import":
        return None
    if req["op"] == "call":
        return obj(*req.get("args", ()), **req.get("kwargs", {}))
    return obj


def serve() -> None:
    """The worker process: requests on the stdin and replies on the stdout it was started with
    (the host's pipes, ``Box.start(stdout="pipe")``). The submission's code gets /dev/null as
    its stdin and stderr as its stdout, so a stray ``print`` lands in the captured stderr
    instead of corrupting our stream (hostile code can still write anything there: the host
    decodes each reply as hostile). This process imports nothing of a submission: each
    ``fork`` request makes a child that serves calls — with fresh module state — until
    ``end``, and we report how that child ended."""
    rfd, wfd = os.dup(0), os.dup(1)  # (PEP 446: not inherited by the submission's programs)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # keep lines as they come (the host caps what it collects)
            stream.reconfigure(line_buffering=True)
    setup = _receive(rfd)
    if setup is None:
        os._exit(0)
    sys.path[:0] = [str(p) for p in setup["path"]]
    del setup
    # Warm what every fork's first import would set up on its own, each time: the path
    # entries' finders (directory listings, refreshed when a directory changes) and the
    # compiler's first use. Neither runs any code of the path's modules.
    from importlib.machinery import PathFinder

    PathFinder.find_spec("__sandbox_warm_up__")
    compile("pass", "<warm-up>", "exec")
    _write_all(wfd, _frame({"ready": True}))
    while True:
        req = _receive(rfd)
        if req is None or req.get("op") != "fork":
            os._exit(0)
        if req.get("alone"):  # the fork starts alone: every other process of the box is killed
            try:              # (kill(-1) spares init and us; the kernel keeps it in our pid ns)
                os.kill(-1, 9)
            except OSError:  # nothing to kill
                pass
            _await_alone()
        try:
            pid = os.fork()
        except OSError as e:  # the box's pids limit, say: the host's call fails with this
            _write_all(wfd, _frame({"exited": -1, "error": str(e)}))
            continue
        if pid == 0:
            _answer_calls(rfd, wfd)
        _, status, ru = os.wait4(pid, 0)
        try:
            _write_all(wfd, _frame({"exited": status, "cpu_time": ru.ru_utime + ru.ru_stime,
                                    "max_rss": ru.ru_maxrss * 1024}))
        except OSError:
            os._exit(0)


def _answer_calls(rfd: int, wfd: int) -> None:
    """A fork's life: "ready", then one reply per request until ``end`` (or EOF), then exit."""
    _write_all(wfd, _frame({"ready": True}))
    modules: dict[str, Any] = {}
    while True:
        req = _receive(rfd)
        if req is None or req.get("op") == "end":
            break
        try:
            reply = _frame({"ok": _answer(req, modules)})
        except BaseException as e:  # noqa: BLE001 - described, never shipped as an object
            reply = _frame({"error": _describe(e)})
        del req
        try:
            _write_all(wfd, reply)
        except OSError:
            break
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)  # no interpreter teardown: nothing the kernel would not free, and faster


def _await_alone() -> None:
    """Until init has reaped what we killed (a bounded wait): a zombie is still a process, and
    the fork must find no earlier test's process in the box, not even one being reaped."""
    import time

    for _ in range(2000):
        if all(int(p) in (1, os.getpid()) for p in os.listdir("/proc") if p.isdigit()):
            return
        time.sleep(0.001)
