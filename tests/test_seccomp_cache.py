"""The compiled-filter caches: the install's (read-only) and the user's XDG cache.

The caches exist for the CLI's cold start (no pyseccomp, no libseccomp per box); what matters
is that they can never hand a box a filter other than the one its policy compiles to, that
only we (or root, for the install) can have written what is used, and that a user without a
writable HOME still gets a box."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from sandbox import _seccomp
from sandbox import _seccomp_cache as disk


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """An empty install directory and an empty XDG cache home, for this process and the
    fresh ones the tests start (``ENV`` carries both)."""
    install, xdg = tmp_path / "install", tmp_path / "xdg"
    install.mkdir()
    monkeypatch.setattr(disk, "INSTALL_DIR", str(install))
    monkeypatch.setattr(_seccomp, "_cache", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    return install, xdg / "sandbox"


REAL_INSTALL_DIR = disk.INSTALL_DIR  # what ci/install-venv.sh wrote (as the installing user)


def fresh(code: str, env: dict[str, str] | None = None, install: str | None = None) -> list[str]:
    """``code`` in a new process, with this process's INSTALL_DIR (or ``install``); its
    printed words."""
    code = (f"import sys; import sandbox._seccomp_cache as d; "
            f"d.INSTALL_DIR = {install or disk.INSTALL_DIR!r}\n"
            "import sandbox._seccomp as s\n" + code)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, **(env or {})})
    return out.stdout.split()


def fresh_compile(policy_expr: str = "s.policy_for('default')") -> list[str]:
    """compile_bpf in a new process: (pyseccomp imported?, BPF hex)."""
    return fresh(f"data = s.compile_bpf({policy_expr})\n"
                 "print('pyseccomp' in sys.modules, data.hex())")


def fresh_read(env: dict[str, str] | None = None, install: str | None = None) -> list[str]:
    """The disk read in a new process: (found?, libseccomp mapped in that process?)."""
    return fresh("found = d.read(s.policy_key(s.policy_for('default'))) is not None\n"
                 "print(found, '/libseccomp.so' in open('/proc/self/maps').read())", env, install)


def entry_name(policy) -> str:
    return disk.file_name(_seccomp.policy_key(policy))


def test_round_trip_in_the_user_cache_skips_pyseccomp(caches):
    install, user = caches
    policy = _seccomp.policy_for("default")
    bpf = _seccomp.compile_bpf(policy)
    (f,) = user.iterdir()
    header = _seccomp.policy_key(policy) + disk.libseccomp_line() + f"bpf {len(bpf)}\n".encode()
    assert f.name == entry_name(policy) and f.read_bytes() == header + bpf
    assert (stat.S_IMODE(f.stat().st_mode), stat.S_IMODE(user.stat().st_mode)) == (0o600, 0o700)
    assert list(install.iterdir()) == []  # the runtime never writes the install's directory
    imported, data = fresh_compile()
    assert imported == "False" and bytes.fromhex(data) == bpf


def test_the_install_step_writes_both_default_programs_and_is_read_first(caches):
    install, user = caches
    (install / "seccomp-00000000-1.bpf").write_bytes(b"stale")
    (install / "keep.txt").write_bytes(b"")
    install.chmod(0o700)
    # under a umask that would keep the programs from other users, they are still theirs to read
    subprocess.run([sys.executable, "-m", "sandbox._seccomp", str(install)], check=True,
                   preexec_fn=lambda: os.umask(0o077))
    plain = _seccomp.policy_for("default")
    fallback = _seccomp.policy_for("default", memory_rlimit=True)
    assert sorted(p.name for p in install.iterdir()) == sorted(
        ["keep.txt", entry_name(plain), entry_name(fallback)])
    assert stat.S_IMODE(install.stat().st_mode) == 0o755
    for policy in (plain, fallback):
        assert stat.S_IMODE((install / entry_name(policy)).stat().st_mode) == 0o644
        imported, data = fresh_compile(f"s.policy_for('default', memory_rlimit={policy is fallback})")
        assert imported == "False" and bytes.fromhex(data) == _seccomp._compile(policy)
    assert not user.exists()  # found in the install's directory: nothing cached for the user


def test_the_install_step_fails_loudly_on_a_directory_others_can_write(caches):
    install, _ = caches
    install.chmod(0o777)
    p = subprocess.run([sys.executable, "-m", "sandbox._seccomp", str(install)],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "only root or we can write" in p.stderr, p
    assert list(install.iterdir()) == []


def test_each_policy_has_its_own_entry(caches):
    _, user = caches
    a = _seccomp.compile_bpf(_seccomp.policy_for("default"))
    b = _seccomp.compile_bpf(_seccomp.policy_for("default", allow=("ptrace",)))
    assert a != b and len(list(user.iterdir())) == 2
    _, data = fresh_compile("s.policy_for('default', allow=('ptrace',))")
    assert bytes.fromhex(data) == b


def test_the_memory_fallback_variant_has_its_own_key(caches):
    """The memfd rules (RLIMIT_AS fallback only) change the program, so they change the key:
    a cached default program is never handed to a box that needs memfds refused, nor the
    reverse."""
    _, user = caches
    plain = _seccomp.policy_for("default")
    fallback = _seccomp.policy_for("default", memory_rlimit=True)
    assert _seccomp.policy_key(plain) != _seccomp.policy_key(fallback)
    a, b = _seccomp.compile_bpf(plain), _seccomp.compile_bpf(fallback)
    assert a != b and len(list(user.iterdir())) == 2
    _, data = fresh_compile("s.policy_for('default', memory_rlimit=True)")
    assert bytes.fromhex(data) == b


DAMAGE = ["other_key", "truncated", "cut_at_an_instruction", "empty_program", "symlink",
          "oversized", "hard_link", "group_writable", "world_writable_dir", "dir_symlink"]


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_file_that_is_not_exactly_ours_is_ignored(caches, tmp_path_factory, damage):
    """Each file is otherwise a valid entry for the default policy's key; evil is the
    allow-all program (a valid BPF). ``cut_at_an_instruction``: a torn write that still ends
    on whole instructions (a shorter program, ending in some earlier return)."""
    install, user = caches
    policy = _seccomp.policy_for("default")
    good = _seccomp._compile(policy)
    evil = _seccomp._compile(_seccomp.Policy("none"))
    pkey = _seccomp.policy_key(policy)
    key = pkey + disk.libseccomp_line()
    user.mkdir(parents=True, mode=0o700)
    path = user / entry_name(policy)
    elsewhere = tmp_path_factory.mktemp("elsewhere")

    def entry(data: bytes, length: int | None = None) -> bytes:
        return key + f"bpf {len(data) if length is None else length}\n".encode() + data

    if damage == "other_key":  # same file name, the header of another policy
        path.write_bytes(entry(evil).replace(b"keyctl", b"keyctX"))
    elif damage == "truncated":
        path.write_bytes(entry(good, len(good))[:-3])
    elif damage == "cut_at_an_instruction":
        path.write_bytes(entry(good, len(good))[:-8])
    elif damage == "empty_program":
        path.write_bytes(entry(b""))
    elif damage == "oversized":
        path.write_bytes(entry(evil * (disk.BPF_MAX // len(evil) + 1)))
    elif damage == "symlink":  # a symlink to a file with the right content is not followed
        (elsewhere / "f").write_bytes(entry(evil))
        os.symlink(elsewhere / "f", path)
    elif damage == "hard_link":  # nor a second name of a file written somewhere else
        (elsewhere / "f").write_bytes(entry(evil))
        os.link(elsewhere / "f", path)
    elif damage == "group_writable":
        path.write_bytes(entry(evil))
        path.chmod(0o620)
    elif damage == "world_writable_dir":
        path.write_bytes(entry(evil))
        user.chmod(0o777)
    else:  # the cache directory itself a symlink to a directory holding the file
        (elsewhere / path.name).write_bytes(entry(evil))
        user.rmdir()
        os.symlink(elsewhere, user)
    assert disk.read(pkey) is None
    imported, data = fresh_compile()
    assert imported == "True" and bytes.fromhex(data) == good


def test_a_sound_entry_is_used(caches):
    """The counterpart of the damage cases: the same construction, undamaged, is a hit (so
    each miss above is the damage's doing)."""
    _, user = caches
    policy = _seccomp.policy_for("default")
    good = _seccomp._compile(policy)
    user.mkdir(parents=True, mode=0o700)
    key = _seccomp.policy_key(policy) + disk.libseccomp_line()
    (user / entry_name(policy)).write_bytes(key + f"bpf {len(good)}\n".encode() + good)
    (user / entry_name(policy)).chmod(0o600)
    assert disk.read(_seccomp.policy_key(policy)) == good


def test_the_user_cache_counts_only_our_own_files(caches):
    """Valid programs owned by someone else (root's, from the install; as root, a copy given
    to nobody): read as the install's directory they count, as the *user's* cache they do
    not (only the install's directory trusts root)."""
    install, _ = caches
    if os.geteuid() == 0:
        subprocess.run([sys.executable, "-m", "sandbox._seccomp", str(install)], check=True)
        for p in install.iterdir():
            os.chown(p, 65534, 65534)
        theirs = str(install.parent / "sandbox")
        install.rename(theirs)
        install.mkdir()
        assert fresh_read({"XDG_CACHE_HOME": str(install.parent)})[0] == "False"
        for p in os.listdir(theirs):
            os.chown(os.path.join(theirs, p), 0, 0)  # ours again: used
        assert fresh_read({"XDG_CACHE_HOME": str(install.parent)})[0] == "True"
        return
    theirs = REAL_INSTALL_DIR
    entry = os.path.join(theirs, entry_name(_seccomp.policy_for("default")))
    if not os.path.exists(entry) or os.stat(entry).st_uid == os.geteuid():
        pytest.skip("needs the install's programs written by another user (ci/install-venv.sh as root)")
    assert os.path.basename(theirs) == "sandbox"
    assert fresh_read(install=theirs)[0] == "True"
    assert fresh_read({"XDG_CACHE_HOME": os.path.dirname(theirs)})[0] == "False"


def rewrite_libseccomp_line(user, **changes: str) -> None:
    """Edit the libseccomp line of the one cache file (fields: version, lib, lib_id, ld_id)."""
    (path,) = user.iterdir()
    raw = path.read_bytes()
    pkey = _seccomp.policy_key(_seccomp.policy_for("default"))
    end = raw.index(b"\n", len(pkey)) + 1
    _, version, lib, lib_id, _, ld_id = raw[len(pkey):end].decode().split()
    f = {"version": version, "lib": lib, "lib_id": lib_id, "ld_id": ld_id, **changes}
    line = f"libseccomp {f['version']} {f['lib']} {f['lib_id']} ld.so.cache {f['ld_id']}\n"
    path.write_bytes(pkey + line.encode() + raw[end:])


def test_unchanged_libseccomp_is_recognised_without_loading_it(caches):
    _seccomp.compile_bpf(_seccomp.policy_for("default"))
    assert fresh_read() == ["True", "False"]
    # the loader could be redirected: then the library is asked for its version
    assert fresh_read({"LD_LIBRARY_PATH": "/nonexistent"}) == ["True", "True"]


@pytest.mark.parametrize("change", ["lib_id", "ld_id"])
def test_a_changed_library_or_loader_cache_means_asking_the_library(caches, change):
    """An ldconfig run or a replaced library file: the version is then checked by loading
    libseccomp, and the cached program is used only if it is still the same version."""
    _, user = caches
    _seccomp.compile_bpf(_seccomp.policy_for("default"))
    rewrite_libseccomp_line(user, **{change: "1:2:3:4"})
    assert fresh_read() == ["True", "True"]
    rewrite_libseccomp_line(user, version="0.0.1")
    assert fresh_read() == ["False", "True"]
    imported, _ = fresh_compile()
    assert imported == "True"


def test_a_malformed_libseccomp_line_is_a_miss(caches):
    _, user = caches
    _seccomp.compile_bpf(_seccomp.policy_for("default"))
    rewrite_libseccomp_line(user, lib="two words")
    assert fresh_read() == ["False", "False"]


@pytest.mark.parametrize("env", [{"HOME": "/proc/self/nowhere"}, {"HOME": "relative"}, {},
                                 {"HOME": "/proc/self/nowhere", "XDG_CACHE_HOME": "relative"}],
                         ids=["unwritable", "relative", "unset", "relative_xdg"])
def test_without_a_usable_home_a_box_still_starts(tmp_path, env, no_leftovers):
    """No install programs, no writable cache: the CLI compiles the filter in memory, the box
    runs (seccomp on), and nothing is written anywhere (a relative HOME or XDG_CACHE_HOME is
    not taken relative to the working directory)."""
    code = ("import sys; import sandbox._seccomp_cache as d; d.INSTALL_DIR = '/nonexistent'\n"
            "sys.argv = ['sandbox', 'run', '--', 'grep', '^Seccomp:', '/proc/self/status']\n"
            "from sandbox._cli import entry\nentry()")
    base = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CACHE_HOME")}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**base, **env}, cwd=cwd, timeout=60)
    assert (p.returncode, p.stdout) == (0, "Seccomp:\t2\n"), p
    assert list(cwd.iterdir()) == []
