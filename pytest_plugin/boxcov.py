"""Coverage measured inside boxes, handed to the host's coverage (pytest-cov, ``coverage run``).

Why this exists: a box is a clone of the pytest process, so coverage's tracer is still running
in it and records every line the test executes, but into the clone's memory, which dies with
the box: ``pytest --cov=pkg --sandbox-all`` used to report 25 % for code its tests cover fully.

In the box (``start``/``finish``, called by ``boxed._child`` around the test's protocol): the
collector's pending data (the host's, collected before the clone) is dropped and the collector
is pointed at a fresh ``Recorder`` (plain dicts behind the four calls the collector makes on
its ``CoverageData``), so nothing in the box ever touches a data file (the host's SQLite descriptor is closed in the box, and coverage, noticing
the new pid, would start a file in the project's overlay, where it vanishes). After the test
the collector is flushed and what it holds (per context: lines or arcs per file, file
tracers, the source packages first imported in the box) goes to the host as one JSON line on
the report channel: ``{"$coverage": {...}}``. Data crosses as JSON only, never as a database.

On the host (``receive``): the message is validated strictly (shape, sizes, integer line
numbers), and only files the box could have run are kept: absolute, normalized paths under the
project, the Python prefixes, the system directories or ``sys.path``. (Coverage's reports read
the files they name: a box must not make the host's HTML report quote a host file the box
could not see.) It is gathered in a host-side ``Recorder``, turned into an in-memory
``CoverageData`` with coverage's public API (``set_context``, ``add_lines``/``add_arcs``,
``add_file_tracers``) and merged into the host's data with ``CoverageData.update`` when the
test loop ends, before
pytest-cov stops, saves, combines and reports (our ``pytest_runtestloop`` wrapper is
innermost); under xdist each worker merges its boxes' data before pytest-cov sends it on.

A box that is killed (time or memory limit, a crash) sends nothing: its coverage is lost, as a
killed process's is without the sandbox. Internals of coverage.py this relies on (the
collector, ``_inorout``) are used only where coverage has no public API, each guarded: if they
change, boxed tests run as before and their coverage is missing, with a warning.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import Any

import pytest

from pytest_plugin.reportcheck import InvalidReport

KEY = "$coverage"
MAX_FILES = 100_000
MAX_CONTEXTS = 10_000
MAX_NAME = 4096
LINE_MAX = 1 << 31
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # a box's root has them
_ACC = pytest.StashKey[list[Any]]()  # [the host's Coverage, a Recorder of the boxes' data]


class InvalidCoverage(InvalidReport):
    """The box's coverage message is not what ``finish`` sends (the test then fails as any
    box that sent an invalid report does)."""


class Recorder:
    """Stands in for a ``CoverageData``: the four calls coverage's collector makes on it
    (``set_context``, ``add_lines``, ``add_arcs``, ``add_file_tracers``), kept in dicts. In the
    box it receives the collector's flushes; on the host it gathers every box's data until the
    merge. (An in-memory SQLite ``CoverageData`` per box cost several ms per test.)"""

    def __init__(self, context: str | None = None) -> None:
        self.context = context
        self.arcs: bool | None = None  # None: nothing measured yet
        self.data: dict[str, dict[str, set[Any]]] = {}  # context -> file -> lines or arcs
        self.tracers: dict[str, str] = {}

    def set_context(self, context: str | None) -> str | None:
        old, self.context = self.context, context
        return old

    def add_lines(self, line_data: Mapping[str, Collection[int]]) -> None:
        self._add(line_data, False)

    def add_arcs(self, arc_data: Mapping[str, Collection[tuple[int, int]]]) -> None:
        self._add(arc_data, True)

    def add_file_tracers(self, file_tracers: Mapping[str, str]) -> None:
        self.tracers.update(file_tracers)

    def _add(self, data: Mapping[str, Collection[Any]], arcs: bool) -> None:
        if not data:
            return
        if self.arcs is not None and self.arcs != arcs:
            raise InvalidCoverage("coverage: line and branch data mixed")
        self.arcs = arcs
        per_file = self.data.setdefault(self.context or "", {})
        for f, got in data.items():
            per_file.setdefault(f, set()).update(got)

    def to_json(self) -> dict[str, Any]:
        """{"arcs": bool, "contexts": [[name, {file: sorted lines or [from, to] arcs}]],
        "tracers": {file: plugin}}"""
        return {"arcs": bool(self.arcs), "tracers": self.tracers,
                "contexts": [[ctx, {f: sorted(got) for f, got in per_file.items() if got}]
                             for ctx, per_file in self.data.items()]}

    def to_coverage_data(self) -> Any:
        from coverage import CoverageData

        out = CoverageData(no_disk=True)
        for ctx, per_file in self.data.items():
            out.set_context(ctx)
            out.add_arcs(per_file) if self.arcs else out.add_lines(per_file)
        if self.tracers:
            out.add_file_tracers(self.tracers)
        return out


# ---- inside the box -------------------------------------------------------------------------

State = tuple[Any, Any, Recorder, list[str]]  # (Coverage, its collector, ours, unmatched pkgs)


def start() -> State | None:
    """Point the running coverage's collector at a fresh ``Recorder``; returns what ``finish``
    needs, or None when coverage is not measuring in this process."""
    cov_mod = sys.modules.get("coverage")
    if cov_mod is None:
        return None
    try:
        cov = cov_mod.Coverage.current()
        collector = getattr(cov, "_collector", None)
        if collector is None:
            return None
        old = collector.covdata
        context = old.set_context(None)  # returns the previous one (coverage >= 7.16)
        old.set_context(context)
        collector.covdata = Recorder()
        collector.flush_data()  # the host's pending lines, into a throwaway
        collector.covdata = fresh = Recorder(context)
        unmatched = list(getattr(getattr(cov, "_inorout", None), "source_pkgs_unmatched", []))
        return cov, collector, fresh, unmatched
    except Exception as e:  # noqa: BLE001 - a coverage we do not know: the test runs anyway
        _warn(f"cannot measure coverage inside the box ({type(e).__name__}: {e})")
        return None


def finish(state: State | None, send: Callable[[Any], None]) -> None:
    """Flush the collector and send what the box measured."""
    if state is None:
        return
    cov, collector, data, unmatched_before = state
    try:
        collector.flush_data()
        still = set(getattr(getattr(cov, "_inorout", None), "source_pkgs_unmatched", []))
        msg = data.to_json()
        msg["pkgs"] = [p for p in unmatched_before if p not in still]
    except Exception as e:  # noqa: BLE001
        _warn(f"cannot read the coverage measured inside the box ({type(e).__name__}: {e})")
        return
    send({KEY: msg})


# ---- on the host ----------------------------------------------------------------------------

def receive(config: pytest.Config, msg: Any) -> None:
    """Validate one box's coverage message and add it to this session's box data. Raises
    InvalidCoverage for anything ``finish`` would not have sent."""
    body = msg.get(KEY) if isinstance(msg, dict) and set(msg) == {KEY} else None
    if not isinstance(body, dict) or set(body) != {"arcs", "contexts", "tracers", "pkgs"}:
        raise InvalidCoverage("coverage: expected exactly the keys arcs, contexts, tracers, pkgs")
    arcs, contexts, tracers, pkgs = body["arcs"], body["contexts"], body["tracers"], body["pkgs"]
    if not isinstance(arcs, bool):
        raise InvalidCoverage("coverage.arcs: expected a bool")
    if not isinstance(contexts, list) or len(contexts) > MAX_CONTEXTS:
        raise InvalidCoverage("coverage.contexts: expected a list")
    checked: list[tuple[str, dict[str, Any]]] = []
    roots = _roots(config)
    for i, entry in enumerate(contexts):
        if not (isinstance(entry, list) and len(entry) == 2 and _name(entry[0], empty=True)
                and isinstance(entry[1], dict) and len(entry[1]) <= MAX_FILES):
            raise InvalidCoverage(f"coverage.contexts[{i}]: expected [context, {{file: data}}]")
        per_file = {}
        for f, got in entry[1].items():
            if not _name(f) or not _measures(got, arcs):
                raise InvalidCoverage(f"coverage.contexts[{i}]: bad data for {f[:200]!r}")
            if _may_name(f, roots):
                per_file[f] = [tuple(a) for a in got] if arcs else got
        checked.append((entry[0], per_file))
    if not (isinstance(tracers, dict) and len(tracers) <= MAX_FILES
            and all(_name(f) and _name(t) for f, t in tracers.items())):
        raise InvalidCoverage("coverage.tracers: expected {file: plugin name}")
    if not (isinstance(pkgs, list) and len(pkgs) <= MAX_FILES and all(_name(p) for p in pkgs)):
        raise InvalidCoverage("coverage.pkgs: expected a list of names")
    cov = sys.modules["coverage"].Coverage.current() if "coverage" in sys.modules else None
    if cov is None:
        return  # nothing measures on the host (it stopped): nobody to hand the data to
    acc = _accumulator(config, cov)
    for ctx, per_file in checked:
        acc.set_context(ctx)
        acc.add_arcs(per_file) if arcs else acc.add_lines(per_file)
    acc.add_file_tracers({f: t for f, t in tracers.items() if _may_name(f, roots)})
    unmatched = getattr(getattr(cov, "_inorout", None), "source_pkgs_unmatched", None)
    for p in pkgs:  # imported first in a box: not "never imported" (coverage's warning)
        if isinstance(unmatched, list) and p in unmatched:
            unmatched.remove(p)


def _name(v: Any, *, empty: bool = False) -> bool:
    return isinstance(v, str) and (empty or v != "") and len(v) <= MAX_NAME and "\0" not in v


def _int(v: Any) -> bool:
    return type(v) is int and -LINE_MAX < v < LINE_MAX


def _measures(got: Any, arcs: bool) -> bool:
    if not isinstance(got, list) or len(got) > LINE_MAX:
        return False
    if arcs:
        return all(isinstance(a, list) and len(a) == 2 and _int(a[0]) and _int(a[1]) for a in got)
    return all(_int(n) and n > 0 for n in got)


_ROOTS = pytest.StashKey[tuple[str, ...]]()


def _roots(config: pytest.Config) -> tuple[str, ...]:
    """Where the box could have run files from: the project, Python's prefixes and
    ``sys.path``, the system directories (each with a trailing slash)."""
    roots = config.stash.get(_ROOTS, None)
    if roots is None:
        paths = [str(config.rootpath), *SYSTEM_DIRS, sys.prefix, sys.base_prefix,
                 sys.exec_prefix, sys.base_exec_prefix, *sys.path]
        roots = config.stash[_ROOTS] = tuple(
            p.rstrip("/") + "/" for p in paths if p and os.path.isabs(p) and p != "/")
    return roots


def _may_name(f: str, roots: tuple[str, ...]) -> bool:
    return os.path.isabs(f) and os.path.normpath(f) == f and f.startswith(roots)


def _accumulator(config: pytest.Config, cov: Any) -> Recorder:
    held = config.stash.get(_ACC, None)
    if held is None or held[0] is not cov:
        merge(config)  # a new Coverage on the host: the old one gets what it measured
        held = config.stash[_ACC] = [cov, Recorder()]
    return held[1]


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtestloop(session: pytest.Session) -> Any:
    """Innermost: the boxes' data joins the host's before pytest-cov (an outer wrapper) saves
    and reports it."""
    try:
        return (yield)
    finally:
        merge(session.config)


def merge(config: pytest.Config) -> None:
    held = config.stash.get(_ACC, None)
    if held is None:
        return
    del config.stash[_ACC]
    cov, acc = held
    try:
        target = getattr(cov, "_data", None)
        if target is None:
            target = cov.get_data()
        target.update(acc.to_coverage_data())
    except Exception as e:  # noqa: BLE001
        _warn(f"the coverage measured inside boxes could not be merged ({type(e).__name__}: {e})")


def _warn(text: str) -> None:
    warnings.warn(f"sandbox: {text}", pytest.PytestWarning, stacklevel=2)
