"""The grading journal: one JSON line per finished submission, appended and fsynced as each one
finishes, next to ``--out`` (``results.json.journal``). A Ctrl-C, a crash of the grader or its
machine, or a run deadline then lose only the submissions in flight, and ``--resume`` continues
from it.

Each entry is keyed by a hash of the submission's content, of the teacher's test folder (every
file: a data file a test reads counts) and of the grading config (limits, timeouts, the grader's
version): a submission whose key changed is graded again, so a resumed run gives what an
uninterrupted one would. The journal is our own (trusted) file, yet read defensively: a line cut
short by a crash, or anything that is not an entry, is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from typing import Any

MAX_JOURNAL = 1 << 30
SKIP = {"__pycache__", ".pytest_cache"}


def tree_hash(path: str) -> str:
    """A folder's (or file's) content: relative names, file bytes, symlink targets — the
    symlinks themselves, never followed (a submission's link could point anywhere)."""
    h = hashlib.sha256()

    def add(rel: str, full: str) -> None:
        try:
            st = os.lstat(full)
        except OSError as e:
            h.update(f"E {rel} {e.errno}\n".encode())
            return
        if stat.S_ISLNK(st.st_mode):
            h.update(f"L {rel} {os.readlink(full)}\n".encode(errors="surrogateescape"))
        elif stat.S_ISREG(st.st_mode):
            h.update(f"F {rel} {st.st_size} {st.st_mode & 0o111 != 0}\n".encode(errors="surrogateescape"))
            try:
                with open(full, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            except OSError as e:
                h.update(f"E {e.errno}\n".encode())
        elif stat.S_ISDIR(st.st_mode):
            h.update(f"D {rel}\n".encode(errors="surrogateescape"))
            try:
                names = sorted(os.listdir(full))
            except OSError as e:
                h.update(f"E {e.errno}\n".encode())
                return
            for n in names:
                if n not in SKIP:
                    add(f"{rel}/{n}", os.path.join(full, n))

    add(".", path)
    return h.hexdigest()


def run_key(tests: str, config: dict[str, Any]) -> str:
    """What every submission's grade depends on besides itself."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("pytest-sandbox-box")
    except PackageNotFoundError:
        ours = "unknown"
    here = tree_hash(os.path.dirname(os.path.abspath(__file__)))  # the grader's own code
    blob = json.dumps({"tests": tree_hash(tests), "config": config, "version": ours, "grader": here},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def entry_key(submission: str, run: str) -> str:
    return hashlib.sha256(f"{tree_hash(submission)} {run}".encode()).hexdigest()


class Journal:
    """Append-only; ``resume=False`` starts it afresh."""

    def __init__(self, path: str, resume: bool) -> None:
        self.path = path
        self.entries = self._load() if resume else {}
        self._f = open(path, "a" if resume else "w")  # noqa: SIM115 - open for the whole run
        if resume and self._f.tell() and not self._ends_a_line():
            self._f.write("\n")  # a line a crash cut short: the next entry starts a line of its own

    def _load(self) -> dict[str, tuple[str, dict[str, Any]]]:
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_JOURNAL)
        except OSError:
            return out
        for line in data.splitlines():
            try:
                e = json.loads(line)
                key, row = e["key"], e["row"]
                if isinstance(key, str) and isinstance(row, dict) and isinstance(row.get("name"), str):
                    out[row["name"]] = (key, row)
            except (ValueError, KeyError, TypeError):
                continue  # cut short by a crash, or not ours
        return out

    def _ends_a_line(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def done(self, name: str, key: str) -> dict[str, Any] | None:
        """The journaled row of ``name`` if it was graded with this very key."""
        got = self.entries.get(name)
        return got[1] if got is not None and got[0] == key else None

    def append(self, key: str, row: dict[str, Any]) -> None:
        self._f.write(json.dumps({"key": key, "row": row}) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()
