"""The `sandbox` CLI as a user meets it: exit codes, one-line errors, verdict files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SANDBOX = [sys.executable, "-m", "sandbox._cli"]


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*SANDBOX, *args], input=stdin, capture_output=True, timeout=60)


def test_run_passes_output_and_exit_code():
    p = cli("run", "--memory", "256M", "--wall-time", "5s", "--net", "none", "--",
            "python3", "-c", "print(1)")
    assert (p.returncode, p.stdout) == (0, b"1\n")
    # nothing on stderr but, where no cgroup holds --memory, the one line saying so
    assert p.stderr == b"" or (p.stderr.startswith(b"sandbox: warning: --memory 256M ")
                               and p.stderr.count(b"\n") == 1), p.stderr
    p = cli("run", "--", "sh", "-c", "echo err >&2; exit 5")
    assert (p.returncode, p.stderr) == (5, b"err\n")
    p = cli("run", "--memory", "16M", "--", "sh", "-c", "echo small")  # below the CLI's own size
    assert (p.returncode, p.stdout) == (0, b"small\n"), p.stderr


def test_stdin_reaches_the_box():
    assert cli("run", "--", "cat", stdin=b"piped\n").stdout == b"piped\n"


def test_json_and_meta_verdicts(tmp_path):
    meta = tmp_path / "meta.json"
    p = cli("run", "--json", "--meta", str(meta), "--", "sh", "-c", "echo hi; exit 3")
    v = json.loads(p.stdout)
    assert v["status"] == "RE" and v["exit_code"] == 3 and v["stdout"] == "hi\n"
    assert v["enforcement"]["wall_time"] == "supervisor"
    assert json.loads(meta.read_text())["status"] == "RE"


def test_meta_refuses_to_follow_a_symlink(tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep")
    (tmp_path / "meta.json").symlink_to(target)
    p = cli("run", "--meta", str(tmp_path / "meta.json"), "--", "true")
    assert p.returncode != 0 and target.read_text() == "keep"
    assert p.returncode == 2 and p.stderr.count(b"\n") == 1 and b"symlink" in p.stderr, p


def test_unwritable_meta_path_is_a_usage_error_before_the_box_runs(tmp_path, no_leftovers):
    marker = tmp_path / "ran"
    p = cli("run", "--meta", str(tmp_path / "no" / "dir" / "m.json"), "--bind",
            f"{tmp_path}:/out", "--", "touch", "/out/ran")
    assert p.returncode == 2 and p.stderr.count(b"\n") == 1 and b"--meta" in p.stderr, p
    assert b"Traceback" not in p.stderr and not marker.exists()


@pytest.mark.parametrize("args,needle", [
    (["run", "--bogus", "--", "true"], b"--bogus"),
    (["run", "--memory", "banana", "--", "true"], b"'banana'"),
    (["run", "--wall-time", "soon", "--", "true"], b"'soon'"),
    (["run"], b"missing command"),
    (["run", "--ro-bind", "/nonexistent/src:/x", "--", "true"], b"/nonexistent/src"),
    (["run", "--net", "wifi", "--", "true"], b"'wifi'"),
    (["run", "--bind", "/etc:/proc/x", "--", "true"], b"/proc"),
    (["frobnicate"], b"frobnicate"),
])
def test_usage_errors_are_one_line_exit_2(args, needle):
    p = cli(*args)
    assert p.returncode == 2, p
    lines = p.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and needle.decode() in lines[0], p.stderr
    assert b"Traceback" not in p.stderr


def test_status_exit_codes():
    assert cli("run", "--wall-time", "0.3s", "--", "sleep", "10").returncode == 124
    assert cli("run", "--output-limit", "4K", "--", "sh", "-c", "yes").returncode == 141
    assert cli("run", "--", "/no/such/thing").returncode == 127
    assert cli("run", "--", "sh", "-c", "kill -9 $$").returncode == 137


def test_command_not_found_message_is_one_line():
    p = cli("run", "--", "no-such-cmd")
    assert p.returncode == 127 and b"no-such-cmd" in p.stderr
    assert len(p.stderr.decode().strip().splitlines()) == 1


def test_help_lists_limits():
    p = cli("run", "--help")
    assert p.returncode == 0
    for opt in (b"--memory", b"--pids", b"--cpu-time", b"--wall-time", b"--output-limit",
                b"--tmpfs-size", b"--nofile", b"--fsize", b"--cpus"):
        assert opt in p.stdout, opt


def test_systemd_scope_without_a_user_manager_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    p = subprocess.run([*SANDBOX, "run", "--systemd-scope", "--", "true"], capture_output=True,
                       env=env, timeout=60)
    # the sandbox cannot run as asked (125, as an XX verdict), not a usage error (2)
    assert p.returncode == 125 and b"systemd" in p.stderr and len(p.stderr.splitlines()) == 1


SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin",
                      "sandbox")
# What `sandbox run` must not load (cold start is measured against bubblewrap): each entry is
# a module some convenience would pull in, and what it would cost.
# (The ``resource`` and ``_socket`` extensions are allowed: ~0.3-0.45 ms each to load, below
# what a ctypes copy of their calls is worth keeping for; docs/architecture.md.)
HEAVY = ("re", "enum", "typing", "dataclasses", "inspect", "json", "argparse", "collections",
         "functools", "signal", "subprocess", "ctypes.util", "socket", "weakref",
         "struct", "types", "trio", "pyroute2", "difflib", "importlib.metadata", "binascii",
         "sandbox._cpuwatch")  # a box that ends before limit / CPUs never needs the CPU watch


def test_run_path_stays_light():
    """Run the real command script (bin/sandbox) under ``-X importtime`` and list everything a
    box start imported: none of HEAVY, and neither pyseccomp nor ctypes itself (sandbox._clib
    stands in for it) when the default policy's compiled filter was built at install
    (ci/install-venv.sh) or is in the user's cache."""
    from sandbox import _seccomp, _seccomp_cache

    p = subprocess.run([sys.executable, "-X", "importtime", SCRIPT, "run", "--", "true"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines()
              if line.startswith("import time:") and "|" in line}
    assert "sandbox._direct" in loaded and not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    if all(_seccomp_cache.read(_seccomp.policy_key(_seccomp.policy_for("default", memory_rlimit=m)))
           is not None for m in (False, True)):  # the cgroup and the RLIMIT_AS fallback variant
        assert not loaded & {"pyseccomp", "ctypes"}, sorted(loaded & {"pyseccomp", "ctypes"})


def test_entry_flushes_runs_atexit_and_keeps_the_exit_code(tmp_path):
    """entry() skips the interpreter's teardown (os._exit) but not what must happen: buffered
    stdout (the --json verdict) reaches a pipe, atexit handlers run, the code is main's."""
    code = ("import atexit, os, sys\n"
            "atexit.register(lambda: os.write(2, b'atexit ran'))\n"
            "sys.argv = ['sandbox', 'run', '--json', '--', 'sh', '-c', 'echo hi; exit 3']\n"
            "from sandbox._cli import entry\nentry()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert p.returncode == 3 and json.loads(p.stdout)["stdout"] == "hi\n", p
    assert p.stderr.endswith(b"atexit ran")
    p = subprocess.run(f"{sys.executable} {SCRIPT} run --json -- sh -c 'yes | head -c 200000'"
                       " | head -c 10", shell=True, capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stdout == b'{\n  "statu' and b"Traceback" not in p.stderr


# The hand-written option parser (sandbox/_cli.py: argparse costs ~6 ms of every cold start).

def test_equals_form_and_repeatable_options():
    p = cli("run", "-q", "--memory=256M", "--wall-time=5s", "--env=A=1=2", "--env", "B=3",
            "--ro-bind=/etc:/e1", "--ro-bind", "/usr:/u1", "--",
            "sh", "-c", "echo $A $B; test -d /e1/. && test -d /u1/bin && echo mounted")
    assert (p.returncode, p.stdout, p.stderr) == (0, b"1=2 3\nmounted\n", b"")


def test_first_word_starts_the_command_and_the_rest_passes_through():
    p = cli("run", "--quiet", "echo", "--memory", "-x", "--json", "--", "--help")
    assert (p.returncode, p.stdout) == (0, b"--memory -x --json -- --help\n"), p.stderr
    p = cli("run", "--", "echo", "--memory")
    assert (p.returncode, p.stdout) == (0, b"--memory\n"), p.stderr


def test_parse_options_in_process():
    from sandbox._cli import RUN_GROUPS, parse_options

    a = parse_options(["--memory", "1G", "--memory=2G", "-q", "--uid=7", "--cwd", "/",
                       "--tmpfs", "/scratch:1M", "--id-map=single", "ls", "-l", "--uid", "x"],
                      RUN_GROUPS, "sandbox run", True)
    assert (a.memory, a.quiet, a.uid, a.cwd, a.tmpfs, a.id_map) == (
        "2G", True, 7, "/", ["/scratch:1M"], "single")  # a repeated single option: last wins
    assert a.cmd == ["ls", "-l", "--uid", "x"] and a.json is False and a.env == []
    a = parse_options(["--", "-x", "--", "y"], RUN_GROUPS, "sandbox run", True)
    assert a.cmd == ["-x", "--", "y"]
    assert parse_options(["-", "a"], RUN_GROUPS, "sandbox run", True).cmd == ["-", "a"]


def test_defaults_match_the_library():
    from sandbox import SandboxConfig
    from sandbox._cli import RUN_GROUPS, config_from_args, parse_options

    a = parse_options(["true"], RUN_GROUPS, "sandbox run", True)
    assert (a.net, a.cwd, a.hostname, a.id_map, a.seccomp, a.uid) == (
        "none", "/tmp", "sandbox", "auto", None, None)
    assert config_from_args(a).to_dict() == SandboxConfig().validate().to_dict()


@pytest.mark.parametrize("args,needles", [
    (["run", "--memory"], ["--memory", "SIZE"]),  # option missing its value
    (["run", "--memory", "--", "true"], ["--memory", "SIZE"]),
    (["run", "--cwd", "--json", "true"], ["--cwd", "DIR"]),
    (["run", "--env"], ["--env", "NAME[=VALUE]"]),
    (["run", "--bogus", "--", "true"], ["'--bogus'", "sandbox run --help"]),
    (["run", "--mem", "1G", "true"], ["'--mem'", "--memory"]),  # no silent abbreviations
    (["run", "-x", "true"], ["'-x'", "sandbox run --help"]),
    (["run", "--uid", "banana", "true"], ["--uid", "'banana'"]),
    (["run", "--gid=", "true"], ["--gid", "''"]),
    (["run", "--id-map", "bad", "true"], ["'bad'", "auto, single, range"]),
    (["run", "--json=1", "true"], ["--json", "no value"]),
    (["run", "-q=yes", "true"], ["-q", "no value"]),
    (["run", "--help=1"], ["--help", "no value"]),
    (["run", "--"], ["missing command"]),
    ([], ["missing command", "run, shell, doctor, grade"]),
    (["frobnicate"], ["'frobnicate'", "run, shell, doctor, grade"]),
    (["--bogus"], ["'--bogus'", "run, shell, doctor, grade"]),
    (["doctor", "extra"], ["'extra'", "sandbox doctor --help"]),
    (["doctor", "--json=yes"], ["--json", "no value"]),
])
def test_parser_usage_errors_are_one_line_exit_2(args, needles):
    p = cli(*args)
    assert p.returncode == 2, p
    lines = p.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sandbox: error: "), p.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    assert p.stdout == b""


@pytest.mark.parametrize("args,needles", [
    (["--help"], ["usage: sandbox", "run", "doctor", "grade", "fresh sandbox"]),
    (["-h"], ["usage: sandbox", "run", "doctor", "grade"]),
    (["run", "--help"], ["usage: sandbox run", "limits (defaults in README", "\nbox:\n",
                         "\nverdict:\n", "--memory SIZE", "memory limit, e.g. 256M",
                         "--ro-bind SRC[:DEST]", "--tmpfs DEST[:SIZE]", "--env NAME[=VALUE]",
                         "--id-map {auto,single,range}", "--quiet, -q", "--systemd-scope",
                         "--meta FILE", "124"]),
    (["run", "-q", "-h"], ["usage: sandbox run"]),
    (["doctor", "--help"], ["usage: sandbox doctor", "--json"]),
])
def test_help_at_each_level(args, needles):
    p = cli(*args)
    assert (p.returncode, p.stderr) == (0, b""), p
    out = p.stdout.decode()
    assert all(n in out for n in needles), out
    assert max(len(line) for line in out.splitlines()) <= 79


def test_help_does_not_depend_on_columns():
    outs = {subprocess.run([*SANDBOX, "run", "--help"], capture_output=True, timeout=60,
                           env={**os.environ, "COLUMNS": c}).stdout for c in ("40", "200")}
    assert len(outs) == 1


def test_cli_module_imports_neither_argparse_nor_json():
    """argparse (+gettext, re, enum) and json are ~8 ms of the CLI's cold start; json is
    imported only for --json/--meta, and argparse stays in `sandbox grade` only."""
    code = ("import sys, sandbox._cli\n"
            "print(' '.join(m for m in ('argparse', 'json') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_entry_gives_grade_and_doctor_the_collector_and_a_normal_exit():
    """`sandbox grade` runs a whole pytest session in this process: it must not run with the
    collector off (bin/sandbox turns it off for `run`), nor skip the interpreter's exit."""
    code = ("import gc, sys\ngc.disable()\n"
            "sys.argv = ['sandbox', 'doctor', '--json']\n"
            "import sandbox._cli_doctor\n"
            "sandbox._cli_doctor.main = lambda as_json: print('gc', gc.isenabled()) or 0\n"
            "import atexit\natexit.register(lambda: print('normal exit'))\n"
            "from sandbox._cli import entry\nentry()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.split("\n")[:2] == ["gc True", "normal exit"], p
