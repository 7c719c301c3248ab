"""Output a killed box would take with it: sys-level capture and the log capture, teed to memfds.

With pytest's default fd capture a test's prints land in capture files the host reads after the
box, even when the kernel killed it. Two captures live only in the test process's memory, and
die with it: ``--capture=sys`` (``sys.stdout`` is a ``CaptureIO``) and the logging plugin's
per-phase handler ("Captured log call"). So a test killed by a signal or a limit showed one line
and nothing of what it had printed or logged. Inside the box each of those writes is also
copied, as it happens, into a memfd the host made; each report the box sends empties them, so
they hold only the phase that never finished, and the host shows them with its failure.

The memfds hold untrusted bytes: the host reads a bounded head, decodes with replacement, and
only shows them as text. The box cannot grow them past its file-size limit.
"""

from __future__ import annotations

import os
from typing import Any

from pytest_plugin import boxrun

READ_MAX = 1 << 20
TEES: dict[str, int] = {}  # set inside a box only: section name → memfd


def make(config: Any) -> dict[str, int]:
    """The memfds this run's captures need (none under fd capture without logging)."""
    names = []
    capman = config.pluginmanager.getplugin("capturemanager")
    if getattr(capman, "_method", None) in ("sys", "tee-sys"):
        names += ["stdout", "stderr"]
    if config.pluginmanager.getplugin("logging-plugin") is not None:
        names.append("log")
    return {name: boxrun.memfd(f"sandbox-tee-{name}") for name in names}


def install(config: Any, tees: dict[str, int]) -> None:
    """Inside the box: copy every captured write into its memfd too."""
    TEES.update(tees)
    if "stdout" in tees:
        capman = config.pluginmanager.getplugin("capturemanager")
        mc = getattr(capman, "_global_capturing", None)
        for name in ("stdout", "stderr"):
            tmp = getattr(getattr(mc, name[3:], None), "tmpfile", None)
            if tmp is not None:
                tmp.write = _teed(tmp.write, tees[name])
    if "log" in tees:
        handler = config.pluginmanager.getplugin("logging-plugin").report_handler
        emit = handler.emit

        def teed_emit(record: Any) -> None:
            emit(record)
            _copy(tees["log"], handler.format(record) + "\n")

        handler.emit = teed_emit


def _teed(write: Any, fd: int) -> Any:
    def teed(s: str) -> int:
        n = write(s)
        _copy(fd, s)
        return int(n)
    return teed


def _copy(fd: int, text: str) -> None:
    try:
        boxrun.write_all(fd, text.encode("utf-8", "replace"))
    except OSError:  # the file-size limit: the capture itself goes on
        pass


def reset() -> None:
    """Inside the box, after a phase's report went out: that phase's output is in it."""
    for fd in TEES.values():
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)


def sections(tees: dict[str, int]) -> list[tuple[str, str]]:
    """On the host, after the box: (name, text) of what the unfinished phase had written."""
    out = []
    for name, fd in tees.items():
        data = os.pread(fd, READ_MAX, 0).decode("utf-8", "replace").strip("\n")
        if data:
            out.append((name, data))
    return out
