"""The `sandbox` CLI as a user meets it: exit codes, one-line errors, verdict files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SANDBOX = [sys.executable, "-m", "sandbox.cli"]


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*SANDBOX, *args], input=stdin, capture_output=True, timeout=60)


def test_run_passes_output_and_exit_code():
    p = cli("run", "--memory", "256M", "--wall-time", "5s", "--net", "none", "--",
            "python3", "-c", "print(1)")
    assert (p.returncode, p.stdout, p.stderr) == (0, b"1\n", b"")
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
    assert p.returncode == 0 and b"--memory" in p.stdout and b"--wall-time" in p.stdout
    assert os.path.exists(SANDBOX[0])


def test_systemd_scope_without_a_user_manager_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    p = subprocess.run([*SANDBOX, "run", "--systemd-scope", "--", "true"], capture_output=True,
                       env=env, timeout=60)
    assert p.returncode == 2 and b"systemd" in p.stderr and len(p.stderr.splitlines()) == 1


def test_run_path_stays_light():
    """Cold start is a feature: the CLI's `run` path (CLI, direct runner, seccomp compiler)
    must not pull in trio, pyroute2, inspect (deferred under dataclasses by
    sandbox._imports), ctypes.util or subprocess (which pyseccomp's library search would)."""
    code = ("import sys, sandbox.cli, sandbox.direct, sandbox.seccomp, sandbox.launcher\n"
            "print(' '.join(m for m in ('trio', 'pyroute2', 'inspect', 'ctypes.util',"
            " 'subprocess') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
