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
    header = seccomp._policy_key(policy) + seccomp._libseccomp_line()
    assert len(files) == 1 and files[0].read_bytes() == header + bpf
    assert oct(files[0].stat().st_mode & 0o777) == "0o644"
    imported, data = fresh_compile(cache_dir)
    assert imported == "False" and bytes.fromhex(data) == bpf


def test_each_policy_has_its_own_entry(cache_dir):
    a = seccomp.compile_bpf(seccomp.policy_for("default"))
    b = seccomp.compile_bpf(seccomp.policy_for("default", allow=("ptrace",)))
    assert a != b and len(list(cache_dir.iterdir())) == 2
    _, data = fresh_compile(cache_dir, "s.policy_for('default', allow=('ptrace',))")
    assert bytes.fromhex(data) == b


def test_the_memory_fallback_variant_has_its_own_key(cache_dir):
    """The memfd rules (RLIMIT_AS fallback only) change the program, so they change the key:
    a cached default program is never handed to a box that needs memfds refused, nor the
    reverse."""
    plain = seccomp.policy_for("default")
    fallback = seccomp.policy_for("default", memory_rlimit=True)
    assert seccomp._policy_key(plain) != seccomp._policy_key(fallback)
    a, b = seccomp.compile_bpf(plain), seccomp.compile_bpf(fallback)
    assert a != b and len(list(cache_dir.iterdir())) == 2
    _, data = fresh_compile(cache_dir, "s.policy_for('default', memory_rlimit=True)")
    assert bytes.fromhex(data) == b


@pytest.mark.parametrize("damage", ["other_key", "truncated", "empty_program", "symlink",
                                    "oversized"])
def test_a_file_that_is_not_exactly_ours_is_ignored(cache_dir, tmp_path_factory, damage):
    policy = seccomp.policy_for("default")
    good = seccomp._compile(policy)
    pkey = seccomp._policy_key(policy)
    key = pkey + seccomp._libseccomp_line()
    path = seccomp._cache_path(pkey)
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
    assert seccomp._read_cached(pkey) is None
    imported, data = fresh_compile(cache_dir)
    assert imported == "True" and bytes.fromhex(data) == good


def fresh_read(cache_dir, env: dict[str, str] | None = None) -> list[str]:
    """_read_cached in a new process: (found?, libseccomp mapped in that process?)."""
    code = ("import sandbox.seccomp as s\n"
            f"s.CACHE_DIR = {str(cache_dir)!r}\n"
            "found = s._read_cached(s._policy_key(s.policy_for('default'))) is not None\n"
            "print(found, '/libseccomp.so' in open('/proc/self/maps').read())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
    return out.stdout.split()


def rewrite_libseccomp_line(cache_dir, **changes: str) -> None:
    """Edit the libseccomp line of the one cache file (fields: version, lib, lib_id, ld_id)."""
    (path,) = cache_dir.iterdir()
    raw = path.read_bytes()
    pkey = seccomp._policy_key(seccomp.policy_for("default"))
    end = raw.index(b"\n", len(pkey)) + 1
    _, version, lib, lib_id, _, ld_id = raw[len(pkey):end].decode().split()
    f = {"version": version, "lib": lib, "lib_id": lib_id, "ld_id": ld_id, **changes}
    line = f"libseccomp {f['version']} {f['lib']} {f['lib_id']} ld.so.cache {f['ld_id']}\n"
    path.write_bytes(pkey + line.encode() + raw[end:])


def test_unchanged_libseccomp_is_recognised_without_loading_it(cache_dir):
    seccomp.compile_bpf(seccomp.policy_for("default"))
    assert fresh_read(cache_dir) == ["True", "False"]
    # the loader could be redirected: then the library is asked for its version
    assert fresh_read(cache_dir, {"LD_LIBRARY_PATH": "/nonexistent"}) == ["True", "True"]


@pytest.mark.parametrize("change", ["lib_id", "ld_id"])
def test_a_changed_library_or_loader_cache_means_asking_the_library(cache_dir, change):
    """An ldconfig run or a replaced library file: the version is then checked by loading
    libseccomp, and the cached program is used only if it is still the same version."""
    seccomp.compile_bpf(seccomp.policy_for("default"))
    rewrite_libseccomp_line(cache_dir, **{change: "1:2:3:4"})
    assert fresh_read(cache_dir) == ["True", "True"]
    rewrite_libseccomp_line(cache_dir, version="0.0.1")
    assert fresh_read(cache_dir) == ["False", "True"]
    imported, _ = fresh_compile(cache_dir)
    assert imported == "True"


def test_a_malformed_libseccomp_line_is_a_miss(cache_dir):
    seccomp.compile_bpf(seccomp.policy_for("default"))
    rewrite_libseccomp_line(cache_dir, lib="two words")
    assert fresh_read(cache_dir) == ["False", "False"]


def test_not_written_when_byte_code_is_not(cache_dir, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    seccomp.compile_bpf(seccomp.policy_for("default"))
    assert list(cache_dir.iterdir()) == []


def test_precompile_command_replaces_stale_entries(tmp_path):
    (tmp_path / "seccomp-00000000-1.bpf").write_bytes(b"stale")
    (tmp_path / "keep.pyc").write_bytes(b"")
    subprocess.run([sys.executable, "-m", "sandbox.seccomp", str(tmp_path)], check=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "keep.pyc" and len(names) == 3  # with and without the memfd rules
    for policy in (seccomp.policy_for("default"), seccomp.policy_for("default", memory_rlimit=True)):
        key = seccomp._policy_key(policy)
        assert (tmp_path / os.path.basename(seccomp._cache_path(key))).read_bytes()[:len(key)] == key


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
