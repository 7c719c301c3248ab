"""Running Python inside a box from the pytest process, and getting data back safely.

The box is cloned from the pytest process itself (``sandbox.direct.run_direct`` with a callable
target), so the test module is not re-imported and fixtures/closures are simply there. Results
come back through a memfd the box writes and the host reads *after* the box is dead, at most
``MAX_CHANNEL`` bytes, and parsed as JSON only.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from sandbox import SandboxConfig
from sandbox.config import MountSpec
from sandbox.direct import run_direct
from sandbox.result import Result

MAX_CHANNEL = 32 * 1024 * 1024


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def run_in_box(body: Callable[[int], None], cfg: SandboxConfig,
               pass_fds: Sequence[int] = ()) -> tuple[Result, bytes | None]:
    """Run ``body(channel_fd)`` in a fresh box; return (verdict, channel bytes or None if the
    channel overflowed)."""
    ch = os.memfd_create("sandbox-channel", os.MFD_CLOEXEC)
    try:
        def target() -> int:
            body(ch)
            return 0

        result = run_direct(target, cfg, pass_fds=[ch, *pass_fds])
        os.lseek(ch, 0, os.SEEK_SET)
        data = bytearray()
        while len(data) <= MAX_CHANNEL and (chunk := os.read(ch, 1 << 20)):
            data += chunk
        return result, (bytes(data) if len(data) <= MAX_CHANNEL else None)
    finally:
        os.close(ch)


def capture_fds(config: Any) -> list[int]:
    """fds pytest's own output capture uses (tmpfiles and saved originals): the test's prints
    must land in them inside the box, exactly as without the sandbox."""
    fds: list[int] = []
    capman = config.pluginmanager.getplugin("capturemanager")
    mc = getattr(capman, "_global_capturing", None)
    for cap in (getattr(mc, "in_", None), getattr(mc, "out", None), getattr(mc, "err", None)):
        fd = getattr(cap, "targetfd_save", None)
        if isinstance(fd, int) and fd > 2:
            fds.append(fd)
        tmp = getattr(cap, "tmpfile", None)
        try:
            fd = tmp.fileno() if tmp is not None else -1
        except (OSError, ValueError, AttributeError):
            fd = -1
        if fd > 2:
            fds.append(fd)
    return sorted(set(fds))


def pytest_mounts(config: Any) -> tuple[list[MountSpec], str]:
    """What a sandboxed test sees of the host: its project (rootdir) and pytest's temp base as
    overlays (readable, writes vanish), nothing else. Returns (mounts, cwd)."""
    mounts: list[MountSpec] = []
    root = str(config.rootpath)
    targets: set[str] = set()
    for path in (root, _basetemp(config)):
        if path and os.path.isdir(path) and path not in targets and path != "/":
            mounts.append(MountSpec("overlay", path, path))
            targets.add(path)
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


def parse_reports(data: bytes | None, config: Any, nodeid: str) -> list[Any] | None:
    """Strictly rebuild TestReports from the box's JSON; None for anything unexpected."""
    if not data:
        return None
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, list) or not 1 <= len(raw) <= 3:
        return None
    reports = []
    for d in raw:
        if not (isinstance(d, dict) and d.get("nodeid") == nodeid
                and d.get("when") in ("setup", "call", "teardown")
                and d.get("outcome") in ("passed", "failed", "skipped")
                and d.get("$report_type") == "TestReport"):
            return None
        try:
            rep = config.hook.pytest_report_from_serializable(config=config, data=d)
        except Exception:  # noqa: BLE001 - any malformed field means "invalid report"
            return None
        if rep is None:
            return None
        if isinstance(rep.longrepr, list):  # JSON has no tuples; skips carry (path, line, msg)
            if len(rep.longrepr) != 3:
                return None
            rep.longrepr = tuple(rep.longrepr)
        reports.append(rep)
    return reports


def scratch_dir() -> str:
    d = tempfile.mkdtemp(prefix="sandbox-fixture-")
    os.chmod(d, 0o755)
    return d
