"""No host path anywhere the grading worker (or the fixture's call worker) can read (issue 13).

The grading worker is a fresh interpreter exec'd in the submission's box that has seen nothing
of the teacher (test_clean_worker.py), but a clean process still carries *where it came from*:
the files it mapped (``/proc/self/maps``), its modules' ``__file__`` and code objects'
``co_filename`` (the checkout), ``sys.path`` and ``sys.prefix``, and whatever it was told of
the submission (its host directory). Those name the user, their home and the layout of the
grading machine to every submission.

A hostile submission reads every readable byte of its own address space, ``/proc/self/maps``,
``mountinfo``, ``environ``, ``cmdline``, the links of ``/proc/self/fd/*``, ``exe`` and
``cwd``, and walks every object the collector knows and the ``sys`` attributes, looking for
the venv's and the checkout's paths, the submission's host directory and the test's temp
directory (both named with a random marker), the grader's HOME (also marked) and the user's
name. The patterns it gets are regular expressions written one character class per
character, so the search text itself never holds the string it looks for; a control string
handed in as an argument must be found in memory (the scanner works).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import sandbox
from tests.escape._memscan import READABLE_MEMORY

CHECKOUT = os.path.dirname(os.path.dirname(os.path.realpath(sandbox.__file__)))

SCANNER = READABLE_MEMORY + r'''
import gc, os, re, sys

CHUNK = 1 << 20


def _texts_of_proc():
    out = {}
    for name in ("maps", "mountinfo", "environ", "cmdline"):
        for who in ("self", "1"):
            try:
                with open(f"/proc/{who}/{name}", "rb") as f:
                    out[f"{who}/{name}"] = f.read().decode("latin-1")
            except OSError:
                pass
    links = []
    for d in ("/proc/self/fd", "/proc/self/map_files"):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            try:
                links.append(os.readlink(f"{d}/{n}"))
            except OSError:
                pass
    for p in ("/proc/self/exe", "/proc/self/cwd", "/proc/self/root"):
        try:
            links.append(os.readlink(p))
        except OSError:
            pass
    out["links"] = "\n".join(links)
    return out


def _objects():
    """Strings of every object the collector tracks, code objects' file names and constants,
    modules' files and search paths, and the sys attributes that name places."""
    out = []
    for name in ("path", "prefix", "exec_prefix", "base_prefix", "base_exec_prefix",
                 "executable", "_base_executable", "argv", "orig_argv", "platlibdir",
                 "_stdlib_dir", "pycache_prefix"):
        out.append(repr(getattr(sys, name, None)))
    out.extend(repr(k) for k in list(sys.path_importer_cache))
    for mod in list(sys.modules.values()):
        for attr in ("__file__", "__path__", "__cached__"):
            out.append(repr(getattr(mod, attr, None)))
        spec = getattr(mod, "__spec__", None)
        if spec is not None:
            out.append(repr((spec.origin, spec.submodule_search_locations, spec.cached)))
    try:
        import linecache
        out.extend(repr(k) for k in list(linecache.cache))
    except Exception:
        pass
    for o in gc.get_objects():
        try:
            if o is out:
                continue
            if isinstance(o, dict):
                out.extend(x for x in [*o.keys(), *o.values()] if isinstance(x, str))
            elif isinstance(o, (list, tuple, set, frozenset)):
                out.extend(x for x in o if isinstance(x, str))
            elif hasattr(o, "__code__"):
                out.append(o.__code__.co_filename)
        except Exception:
            pass
    return "\n".join(out)


def _mem(rx):
    """Every readable mapping, searched as bytes (``readable_memory``)."""
    found = set()
    for data in readable_memory(CHUNK, 256):
        for name, r in rx:
            m = r.search(data)
            if m:
                found.add((name, m.group().decode("latin-1")))
    return found


def scan(patterns, control):
    """{channel: [[pattern name, what matched], ...]} for every channel where one matched;
    ``control`` (an argument, so in our memory) must be found by the memory scan."""
    rx = [(name, re.compile(p)) for name, p in patterns.items()]
    rx.append(("control", re.compile(re.escape(control[:8]) + "[0-9a-f]{16}")))
    found = {}
    texts = _texts_of_proc()
    texts["objects"] = _objects()
    for channel, text in texts.items():
        hits = {(name, m.group()) for name, r in rx if (m := r.search(text))}
        if hits:
            found[channel] = sorted(hits)
    mem = _mem([(name, re.compile(r.pattern.encode("latin-1"))) for name, r in rx])
    if mem:
        found["mem"] = sorted(mem)
    return {k: [list(h) for h in v] for k, v in found.items()}
'''


def _spelled(text: str) -> str:
    """A regex matching ``text`` whose own characters never hold ``text`` (one class per char)."""
    return "".join(f"[{re.escape(c)}]" for c in text)


def _patterns(marker: str, dirs: dict[str, str]) -> dict[str, str]:
    pats = {name: _spelled(path) for name, path in dirs.items()}
    pats["marker"] = _spelled(marker)
    user = getpass.getuser()
    if user != "root":  # (root's name is in every box's own /etc/passwd and "/oldroot")
        pats["user"] = rf"(?<![\w.-]){_spelled(user)}(?![\w.-])"
    return pats


def _host_dirs() -> dict[str, str]:
    dirs = {"checkout": CHECKOUT}
    for name, p in (("venv", sys.prefix), ("venv-real", os.path.realpath(sys.prefix))):
        if not (p == "/usr" or p.startswith("/usr/")):
            dirs[name] = p
    return dirs


def _leaks(found: dict[str, list[list[str]]]) -> dict[str, list[list[str]]]:
    out = {ch: [h for h in hits if h[0] != "control"] for ch, hits in found.items()}
    return {ch: hits for ch, hits in out.items() if hits}


def _summary(found: dict[str, list[list[str]]]) -> str:
    """channel: pattern names, then each match (for the failure message)."""
    leaks = _leaks(found)
    return "\n".join([*(f"{ch}: {sorted({h[0] for h in hits})}" for ch, hits in leaks.items()),
                      json.dumps(leaks)])


TEACHER = """
import json

PATTERNS = json.loads({patterns!r})
CONTROL = {control!r}


def test_scan(submission):
    found = submission.import_module("solution").scan(PATTERNS, CONTROL)
    with open({out!r}, "w") as f:  # (the teacher's own process: the host)
        json.dump(found, f)
"""


def test_graded_worker_holds_no_host_path(box_tmp: Path, no_leftovers):
    """``sandbox grade`` with HOME and TMPDIR under the marked tree: the teacher's test hands
    the patterns to the submission and writes what it found to a host file."""
    marker = f"hp{secrets.token_hex(6)}"
    control = f"CONTROL-{secrets.token_hex(8)}"
    subs = box_tmp / f"subs-{marker}"
    sub = subs / f"zz_{marker}"
    home = box_tmp / f"home-{marker}"
    tmp = box_tmp / f"tmp-{marker}"
    for d in (box_tmp / "tests", sub, home, tmp):
        d.mkdir(parents=True)
    dirs = {**_host_dirs(), "submission": str(sub), "box_tmp": str(box_tmp), "home": str(home)}
    (box_tmp / "tests" / "test_course.py").write_text(TEACHER.format(
        patterns=json.dumps(_patterns(marker, dirs)), control=control, out=str(box_tmp / "found.json")))
    (sub / "solution.py").write_text(SCANNER)
    for p in box_tmp.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp)}
    p = subprocess.run([sys.executable, "-m", "sandbox._cli", "grade", "--tests", str(box_tmp / "tests"),
                        "--submissions", str(subs), "-j", "1", "--call-timeout", "60",
                        "--wall-time", "90s", "--memory", "1G", "--no-progress",
                        "--out", str(box_tmp / "r.json")],
                       capture_output=True, text=True, env=env, timeout=900, cwd=str(tmp))
    assert p.returncode == 0, p.stderr[-3000:]
    (row,) = json.loads((box_tmp / "r.json").read_text())["submissions"]
    assert [t["outcome"] for t in row["tests"]] == ["passed"], row
    found = json.loads((box_tmp / "found.json").read_text())
    assert any(h[0] == "control" for h in found.get("mem", [])), found  # the scanner works
    assert _leaks(found) == {}, _summary(found)


FIXTURE_TEST = """
import json

import scanner

PATTERNS = json.loads({patterns!r})
CONTROL = {control!r}


def test_scan(sandbox):
    found = sandbox.call(scanner.scan, PATTERNS, CONTROL,
                         sandbox_options={{"memory": "1G", "wall_time": "90s"}})
    print("FOUND" + json.dumps(found))
"""


def test_fixture_call_worker_holds_no_host_path(box_tmp: Path, no_leftovers):
    """The fixture's ``call``: a fresh ``python -I -S -B -c BOOT`` in the box. The test's project
    (its rootdir) is overlaid at the neutral ``/project``; its host path, the checkout, the
    venv, HOME and the user's name are searched for."""
    marker = f"hp{secrets.token_hex(6)}"
    control = f"CONTROL-{secrets.token_hex(8)}"
    proj, home = box_tmp / f"proj-{marker}", box_tmp / f"home-{marker}"  # (HOME not in the project)
    proj.mkdir()
    home.mkdir()
    dirs = {**_host_dirs(), "home": str(home), "project": str(proj)}
    (proj / "scanner.py").write_text(SCANNER)
    (proj / "test_it.py").write_text(textwrap.dedent(FIXTURE_TEST.format(
        patterns=json.dumps(_patterns(marker, dirs)), control=control)))
    for p in [box_tmp, *box_tmp.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:pytest_isolate",
                        "-s", "-q", "--rootdir", str(proj), str(proj / "test_it.py")],
                       cwd=proj, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "HOME": str(home)})
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    line = next(ln for ln in p.stdout.splitlines() if "FOUND" in ln)
    found = json.loads(line[line.index("FOUND") + 5:])
    assert any(h[0] == "control" for h in found.get("mem", [])), found
    assert _leaks(found) == {}, _summary(found)
