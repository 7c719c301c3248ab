"""Running Python inside a box from the pytest process, and getting data back safely.

The box is cloned from the pytest process itself (``sandbox.run_sync`` with a callable
target), so the test module is not re-imported and fixtures/closures are simply there.

Data comes back through a *memfd* rather than a pipe: the host reads it only after the box is
dead, so a box can neither block on a full pipe (a plain ``run_sync`` call has nobody reading
a pipe meanwhile) nor stall the host with a slow trickle. The host reads at most a fixed bound
and the box cannot grow the memfd past its file-size rlimit. Whatever is read is untrusted
bytes, parsed only as JSON by the callers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import sandbox
from sandbox import MountSpec, Plan, Result, SandboxConfig

OutputSink = Callable[[int, bytes], None]


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def memfd(name: str) -> int:
    return os.memfd_create(name, os.MFD_CLOEXEC)


def read_memfd(fd: int, limit: int) -> bytes | None:
    """Up to ``limit`` bytes from the start of a memfd; None if it holds more than that."""
    os.lseek(fd, 0, os.SEEK_SET)
    data = bytearray()
    while len(data) <= limit and (chunk := os.read(fd, min(1 << 20, limit + 1 - len(data)))):
        data += chunk
    return bytes(data) if len(data) <= limit else None


_PLANS: dict[int, tuple[SandboxConfig, Plan]] = {}


def _plan(cfg: SandboxConfig) -> Plan:
    """The parent-side plan of a box (rootfs, rlimits, seccomp program) for a config we reuse
    (``plugin.box_config`` caches them), computed once: ~0.5 ms of every sandboxed test. Where
    a cgroup is in use, each box is planned afresh by the library (the plan depends on what
    its leaf holds)."""
    hit = _PLANS.get(id(cfg))
    if hit is None or hit[0] is not cfg:
        hit = _PLANS[id(cfg)] = (cfg, sandbox.prepare(cfg))
    return hit[1]


def run_in_box(body: Callable[[int], None], cfg: SandboxConfig, pass_fds: Sequence[int] = (),
               *, limit: int, on_output: OutputSink | None = None) -> tuple[Result, bytes | None]:
    """Run ``body(channel_fd)`` in a fresh box; return (verdict, channel bytes, or None when
    the box wrote more than ``limit``)."""
    ch = memfd("sandbox-channel")
    try:
        def target() -> int:
            body(ch)
            return 0

        result = sandbox.run_sync(target, cfg, pass_fds=[ch, *pass_fds], on_output=on_output,
                                  plan=_plan(cfg))
        return result, read_memfd(ch, limit)
    finally:
        os.close(ch)


def unspool(spool: int, dest: int, limit: int) -> None:
    """Copy what a box left in a capture spool (at most ``limit`` bytes, then a note that the
    rest was dropped) to pytest's own capture file, where it would have gone unsandboxed."""
    data = os.pread(spool, limit + 1, 0)
    if len(data) > limit:
        data = data[:limit] + f"\n[sandbox: captured output past {limit} bytes dropped]\n".encode()
    try:
        write_all(dest, data)
    except OSError:
        pass


def capture_plan(config: Any) -> tuple[list[int], list[tuple[int, int]]]:
    """How pytest's fd-level output capture works inside the box.

    Returns (fds to hand to the box, [(saved_fd, std_fd)] to re-point inside it). The capture
    tmpfiles are shared, so a test's prints land in them exactly as without the sandbox. The
    *saved originals* (the real terminal / stdin that capture restores between phases) are
    NOT handed over: inside the box those numbers are re-pointed at the box's own stdin
    (/dev/null) and output pipes, which the host echoes to its terminal within the output cap.
    """
    share: list[int] = []
    adopt: list[tuple[int, int]] = []
    capman = config.pluginmanager.getplugin("capturemanager")
    mc = getattr(capman, "_global_capturing", None)
    for std, cap in enumerate((getattr(mc, "in_", None), getattr(mc, "out", None),
                               getattr(mc, "err", None))):
        saved = getattr(cap, "targetfd_save", None)
        if isinstance(saved, int) and saved > 2:
            adopt.append((saved, std))
        tmp = getattr(cap, "tmpfile", None)
        try:
            fd = tmp.fileno() if tmp is not None else -1
        except (OSError, ValueError, AttributeError):
            fd = -1
        if fd > 2 and std > 0:  # stdin's "tmpfile" is /dev/null: the box has its own
            share.append(fd)
        elif fd > 2:
            adopt.append((fd, 0))
    return sorted(set(share)), adopt


def echo_output(which: int, data: bytes) -> None:
    """Box output that missed pytest's capture goes where it would have gone unsandboxed: the
    terminal (between tests pytest's global capture is suspended)."""
    try:
        write_all(which, data)
    except OSError:
        pass


TMP_FIXTURES = frozenset({"tmp_path", "tmpdir", "tmp_path_factory", "tmpdir_factory"})


def pytest_mounts(config: Any, *, temp: bool = True) -> tuple[list[MountSpec], str]:
    """What a sandboxed test sees of the host: its project (rootdir) as an overlay (readable,
    writes vanish) and, for tests that use pytest's temporary directories (``temp``), an empty
    tmpfs at pytest's temp base, where ``tmp_path`` & co. make their directories (nothing
    the host has there is needed: every fixture is made afresh in the box; and as root, where
    the box is an unprivileged uid, pytest's 0700 temp base could not even be overlaid).
    Parents are mounted before what they contain. Returns (mounts, cwd)."""
    root = str(config.rootpath)
    mounts = [MountSpec("overlay", root, root)] if root != "/" and os.path.isdir(root) else []
    base = _basetemp(config) if temp else None
    if base and base != root:
        mounts.append(MountSpec("tmpfs", base))
    mounts.sort(key=lambda m: m.target.count("/"))
    targets = [m.target for m in mounts]
    cwd = os.getcwd()
    cwd = cwd if any(cwd == t or cwd.startswith(t + "/") for t in targets) else root
    return mounts, cwd


def _basetemp(config: Any) -> str | None:
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None:
        return None
    try:
        return str(factory.getbasetemp())
    except OSError:
        return None


