"""The compiled-filter cache beside the byte code, and pyseccomp imported without its extras.

The cache exists for the CLI's cold start (no pyseccomp, no libseccomp per box); what matters
is that it can never hand a box a filter other than the one its policy compiles to."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sandbox import seccomp


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(seccomp, "CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(seccomp, "_cache", {})
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    return tmp_path


def fresh_compile(cache_dir, policy_expr: str = "s.policy_for('default')") -> list[str]:
    """compile_bpf in a new process: (pyseccomp imported?, BPF hex)."""
    code = ("import sys; import sandbox.seccomp as s\n"
            f"s.CACHE_DIR = {str(cache_dir)!r}\n"
            f"data = s.compile_bpf({policy_expr})\n"
            "print('pyseccomp' in sys.modules, data.hex())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    return out.stdout.split()


def test_round_trip_skips_pyseccomp(cache_dir):
    policy = seccomp.policy_for("default")
    bpf = seccomp.compile_bpf(policy)
    files = list(cache_dir.iterdir())
    assert len(files) == 1 and files[0].read_bytes() == seccomp._cache_key(policy) + bpf
    assert oct(files[0].stat().st_mode & 0o777) == "0o644"
    imported, data = fresh_compile(cache_dir)
    assert imported == "False" and bytes.fromhex(data) == bpf


def test_each_policy_has_its_own_entry(cache_dir):
    a = seccomp.compile_bpf(seccomp.policy_for("default"))
    b = seccomp.compile_bpf(seccomp.policy_for("default", allow=("ptrace",)))
    assert a != b and len(list(cache_dir.iterdir())) == 2
    _, data = fresh_compile(cache_dir, "s.policy_for('default', allow=('ptrace',))")
    assert bytes.fromhex(data) == b


@pytest.mark.parametrize("damage", ["other_key", "truncated", "empty_program", "symlink",
                                    "oversized"])
def test_a_file_that_is_not_exactly_ours_is_ignored(cache_dir, tmp_path_factory, damage):
    policy = seccomp.policy_for("default")
    key = seccomp._cache_key(policy)
    good = seccomp._compile(policy)
    path = seccomp._cache_path(key)
    evil = seccomp._compile(seccomp.Policy("none"))  # allow-all program, a valid BPF
    if damage == "other_key":  # same file name, the header of another policy
        open(path, "wb").write(key.replace(b"keyctl", b"keyctX") + evil)
    elif damage == "truncated":
        open(path, "wb").write(key + good[:-3])
    elif damage == "empty_program":
        open(path, "wb").write(key)
    elif damage == "oversized":
        open(path, "wb").write(key + evil * (seccomp.BPF_MAX // len(evil) + 1))
    else:  # a symlink to a file with the right content is still not followed
        target = tmp_path_factory.mktemp("elsewhere") / "f"
        target.write_bytes(key + evil)
        os.symlink(target, path)
    assert seccomp._read_cached(key) is None
    imported, data = fresh_compile(cache_dir)
    assert imported == "True" and bytes.fromhex(data) == good


def test_not_written_when_byte_code_is_not(cache_dir, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    seccomp.compile_bpf(seccomp.policy_for("default"))
    assert list(cache_dir.iterdir()) == []


def test_precompile_command_replaces_stale_entries(tmp_path):
    (tmp_path / "seccomp-00000000-1.bpf").write_bytes(b"stale")
    (tmp_path / "keep.pyc").write_bytes(b"")
    subprocess.run([sys.executable, "-m", "sandbox.seccomp", str(tmp_path)], check=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "keep.pyc" and len(names) == 2 and names[1].startswith("seccomp-")
    key = seccomp._cache_key(seccomp.policy_for("default"))
    assert (tmp_path / names[1]).read_bytes()[:len(key)] == key


def test_pyseccomp_imports_without_typing_weakref_or_ctypes_util():
    code = """
import gc, sys
from sandbox._imports import Finalize, import_pyseccomp
s = import_pyseccomp()
leaked = [m for m in ("typing", "weakref", "ctypes.util") if m in sys.modules]
f = s.SyscallFilter(s.ALLOW)
f.reset(s.ALLOW)  # detaches the first finalizer, makes a second
released = []
f._finalizer._func = lambda *a: released.append(a)
pending = len(Finalize._pending)
del f
gc.collect()
print(leaked, pending, len(Finalize._pending), len(released))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "1", "0", "1"], out.stderr
