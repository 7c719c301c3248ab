"""The command line people expect (docker/bwrap habits, --version, did-you-mean, minimums,
byte counts, lossless --json), through the real CLI: `python -m sandbox._cli`, or main() and
the parser in process where no box is needed."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

import sandbox
from sandbox import Limits, SandboxConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANDBOX = [sys.executable, "-m", "sandbox._cli"]


def cli(*args: str, cwd: str = ROOT, env: dict[str, str] | None = None,
        stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, **(env or {}), "PYTHONPATH": ROOT}  # this checkout, from any cwd
    return subprocess.run([*SANDBOX, *args], input=stdin, capture_output=True, timeout=60,
                          cwd=cwd, env=env)


def one_error(p: subprocess.CompletedProcess[bytes], code: int = 2) -> str:
    assert p.returncode == code, p
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1 and b"Traceback" not in p.stderr, p.stderr
    return lines[0]


def parse(*argv: str):  # noqa: ANN201 - the table's Args
    from sandbox._cli import RUN_GROUPS, parse_options

    return parse_options(list(argv), RUN_GROUPS, "sandbox run", True)


# 1. --version

@pytest.mark.parametrize("args", [["--version"], ["run", "--version"], ["run", "-q", "--version"]])
def test_version(args):
    p = cli(*args)
    assert (p.returncode, p.stdout, p.stderr) == (0, f"sandbox {sandbox.__version__}\n".encode(),
                                                  b"")


def test_version_is_the_package_metadata():
    from importlib.metadata import version

    assert sandbox.__version__ == version("pytest-sandbox-box")
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    assert 'dynamic = ["version"]' in text and 'attr = "sandbox.__version__"' in text


# 2. help text names every default

def test_every_option_says_its_default():
    from sandbox._cli import RUN_GROUPS

    for _, opts in RUN_GROUPS:
        for o in opts:
            assert "default" in o.help, o.names
    p = cli("run", "--help")
    out = p.stdout.decode()
    for needle in ("--tmpfs DEST[:SIZE]   an extra tmpfs", "--hostname HOSTNAME   the box's",
                   "-e NAME[=VALUE]", "--env-file FILE", "-v SRC:DEST[:ro]", "-w DIR",
                   "--network NET", "--interactive, -i", "--version"):
        assert needle in out, needle


# 3. unknown option: one line with the nearest spelling, exit 2

@pytest.mark.parametrize("word,near", [("--memroy", "--memory"), ("--netwrok", "--network"),
                                       ("--env-fil", "--env-file"), ("--wall_time", "--wall-time")])
def test_unknown_option_says_did_you_mean(word, near):
    line = one_error(cli("run", word, "1", "--", "true"))
    assert line == (f"sandbox: error: unknown option {word!r}; did you mean {near}? "
                    "(see sandbox run --help)")


def test_unknown_option_without_a_near_one_and_unknown_short_flags():
    assert "did you mean" not in one_error(cli("run", "--zzzzzz", "--", "true"))
    assert "'-xt'" in one_error(cli("run", "-xt", "--", "true"))
    assert "did you mean run?" in one_error(cli("rnu", "--", "true"))


# 4. a value that starts with '-' is the value; its own check names it. Minimums.

@pytest.mark.parametrize("args,line", [
    (["--memory", "-5M"], "--memory '-5M': must be a positive size like 256M"),
    (["--memory=-5M"], "--memory '-5M': must be a positive size like 256M"),
    (["--memory", "10"], "--memory '10': below the minimum of 1M; a number alone is bytes: "
                         "did you mean 10M?"),
    (["--tmpfs-size", "64K"], "--tmpfs-size '64K': below the minimum of 1M"),
    (["--fsize", "100"], "--fsize '100': below the minimum of 1K"),
    (["--pids", "1"], "--pids '1': below the minimum of 2 (the box's init and the program)"),
    (["--wall-time", "-1s"], "--wall-time: '-1s' must be a positive duration like 5s"),
    (["--cwd", "-x"], "--cwd '-x': must be an absolute path inside the box"),
])
def test_bad_values_are_named_by_their_own_check(args, line):
    assert one_error(cli("run", *args, "--", "true")).startswith(f"sandbox: error: {line}")


def test_an_option_where_a_value_belongs_still_needs_a_value():
    for args in (["--memory", "--json"], ["--memory", "-q"], ["--memory", "-it"],
                 ["--memory", "--memroy"]):
        assert "--memory needs a value" in one_error(cli("run", *args, "true")), args


def test_the_library_refuses_the_same_values():
    for kw, msg in ((dict(memory="10"), "below the minimum of 1M"),
                    (dict(memory="-5M"), "must be a positive size like 256M"),
                    (dict(pids=1), "below the minimum of 2"),
                    (dict(tmpfs_size="4K"), "below the minimum of 1M")):
        with pytest.raises(sandbox.ConfigError, match=msg):
            Limits.parse(**kw)
    assert Limits(output_limit=0).output_limit == 0 and Limits(output_limit="1K").output_limit == 1024


def test_the_minimums_are_enough_and_a_small_output_cap_holds():
    """The minimum pids is measured: init and the program (`--pids 1`: exec fails, EAGAIN)."""
    p = cli("run", "--pids", "2", "--memory", "16M", "--fsize", "1K", "--tmpfs-size", "1M",
            "-q", "--", "sh", "-c", "echo ok")
    assert (p.returncode, p.stdout) == (0, b"ok\n"), p
    assert cli("run", "--output-limit", "0", "--", "echo", "hi").returncode == 141
    p = cli("run", "--output-limit", "1K", "--", "echo", "hi")
    assert (p.returncode, p.stdout) == (0, b"hi\n")


# 5. --cwd names its path; SRC without DEST

def test_a_cwd_the_box_lacks_is_named():
    line = one_error(cli("run", "--cwd", "/nonexistent/dir", "--", "true"), 125)
    assert "/nonexistent/dir" in line and "No such file" in line, line
    r = sandbox.run_sync(["true"], SandboxConfig(cwd="/nonexistent/dir"))
    assert r.error is not None and "/nonexistent/dir" in r.error


def test_a_mount_without_dest_appears_at_its_absolute_source(box_tmp):
    tmp_path = box_tmp
    tmp_path.chmod(0o777)  # root mode: the box's high uid writes through --bind
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("here")
    p = cli("run", "--ro-bind", "data", "-w", str(tmp_path / "data"), "--", "cat", "f",
            cwd=str(tmp_path))
    assert (p.returncode, p.stdout) == (0, b"here"), p
    p = cli("run", "--bind", ".", "--", "sh", "-c", f"echo new > {tmp_path}/made", cwd=str(tmp_path))
    assert p.returncode == 0 and (tmp_path / "made").read_text() == "new\n", p
    m = sandbox.MountSpec.parse("ro-bind", "data")
    assert m.target == os.path.abspath("data") and m.source == "data"


# 6. docker/bwrap habits

def test_env_set_passed_through_and_unset(tmp_path):
    p = cli("run", "-e", "A=1", "-e", "HOSTVAR", "-eB=2", "--env=C=x=y", "--",
            "sh", "-c", "echo $A $HOSTVAR $B $C", env={"HOSTVAR": "from-host"})
    assert (p.returncode, p.stdout) == (0, b"1 from-host 2 x=y\n"), p
    env = {k: v for k, v in os.environ.items() if k != "NOT_SET_HERE"}
    line = one_error(subprocess.run([*SANDBOX, "run", "-e", "NOT_SET_HERE", "--", "true"],
                                    capture_output=True, env={**env, "PYTHONPATH": ROOT}))
    assert "NOT_SET_HERE is not set here" in line and "NOT_SET_HERE=VALUE" in line


def test_env_file_docker_format(tmp_path):
    f = tmp_path / "vars.env"
    f.write_text("# a comment\n\nA=1\n  B=two words\nHOSTVAR\nC=from-file\nQ='kept'\n")
    p = cli("run", "--env-file", str(f), "-e", "C=from-flag", "--",
            "sh", "-c", 'echo "$A|$B|$HOSTVAR|$C|$Q"', env={"HOSTVAR": "h"})
    assert (p.returncode, p.stdout) == (0, b"1|two words|h|from-flag|'kept'\n"), p
    assert f"{tmp_path}/none" in one_error(cli("run", "--env-file", f"{tmp_path}/none", "true"))
    f.write_text("A=1\nBAD NAME=2\n")
    assert f"{f}:2" in one_error(cli("run", "--env-file", str(f), "true"))
    f.write_text("UNSET_IN_FILE_X\n")
    assert "UNSET_IN_FILE_X is not set" in one_error(cli("run", "--env-file", str(f), "true"))


def test_workdir_volume_and_network(box_tmp):
    tmp_path = box_tmp
    tmp_path.chmod(0o777)  # root mode: the box's high uid writes through -v
    p = cli("run", "-w", "/usr", "--", "pwd")
    assert (p.returncode, p.stdout) == (0, b"/usr\n")
    p = cli("run", "--workdir=/usr", "--", "pwd")
    assert (p.returncode, p.stdout) == (0, b"/usr\n")
    p = cli("run", "-v", f"{tmp_path}:/out", "--", "sh", "-c", "echo w > /out/x")
    assert p.returncode == 0 and (tmp_path / "x").read_text() == "w\n", p
    p = cli("run", "-q", "-v", f"{tmp_path}:/out:ro", "--", "sh", "-c", "echo w > /out/y")
    assert p.returncode != 0 and not (tmp_path / "y").exists()
    assert ":/out:z': use SRC:DEST, SRC:DEST:ro" in one_error(cli("run", "-v", f"{tmp_path}:/out:z",
                                                                   "true"))
    for net in ("none", "host"):
        assert cli("run", "--network", net, "--", "true").returncode == 0
        assert cli("run", f"--network={net}", "--", "true").returncode == 0
    assert "'wifi'" in one_error(cli("run", "--network", "wifi", "true"))


def test_combined_short_flags_in_process():
    a = parse("-it", "-qe", "B=2", "-eA=1", "-w/x", "--memory", "-5M", "cmd", "-it")
    assert (a.interactive, a.tty, a.quiet, a.env, a.cwd, a.memory, a.cmd) == (
        True, True, True, ["B=2", "A=1"], "/x", "-5M", ["cmd", "-it"])
    assert parse("-ti", "x").tty and parse("-ti", "x").interactive
    a = parse("-qt", "x")
    assert a.quiet and a.tty and not a.interactive
    assert parse("-T", "x").no_tty


@pytest.mark.parametrize("flags", [["-i"], ["--interactive"], ["-qi"], ["-iT"]])
def test_docker_flags_are_accepted_and_stdin_still_flows(flags):
    p = cli("run", *flags, "--", "cat", stdin=b"in\n")
    assert (p.returncode, p.stdout) == (0, b"in\n"), p


@pytest.mark.parametrize("flags", [["-it"], ["-ti"], ["-qt"]])
def test_a_terminal_asked_for_without_one_is_refused_as_docker_does(flags):
    p = cli("run", *flags, "--", "cat", stdin=b"in\n")
    assert p.returncode == 2 and b"--tty: stdin is not a terminal" in p.stderr, p


# 7. a limit no cgroup holds: one warning line before the run, -q silences it

def test_unheld_limit_warns_once_before_the_run():
    cfg = SandboxConfig(limits=Limits(cpus=0.5))
    reasons = sandbox.cgroup_fallbacks(cfg)
    p = cli("run", "--cpus", "0.5", "--", "sh", "-c", "echo out >&2")
    lines = p.stderr.decode().splitlines()
    assert p.returncode == 0
    if "cpus" in reasons:
        assert len(lines) == 2 and lines[1] == "out", lines
        assert lines[0].startswith("sandbox: warning: --cpus 0.5 is not enforced at all")
        assert reasons["cpus"] in lines[0]
    else:
        assert lines == ["out"]
    p = cli("run", "-q", "--cpus", "0.5", "--", "sh", "-c", "echo out >&2")
    assert p.stderr == b"out\n"
    assert cli("run", "--", "true").stderr == b""  # no limit given: no check, no line


def test_cgroup_fallbacks_says_what_the_verdict_will():
    cfg = SandboxConfig(limits=Limits(cpus=0.5, memory="64M"))
    assert sandbox.cgroup_fallbacks(cfg) == sandbox.run_sync(["true"], cfg).fallback_reasons
    off = SandboxConfig(use_cgroup=False, limits=Limits(cpus=0.5))
    assert set(sandbox.cgroup_fallbacks(off)) >= {"cpus", "memory", "pids", "cpu_time"}
    assert "cgroup_fallbacks" in sandbox.__all__


# 9. byte counts of streamed output; 10. lossless --json

def test_meta_counts_streamed_bytes(tmp_path):
    meta = tmp_path / "m.json"
    p = cli("run", "--meta", str(meta), "--", "echo", "hello")
    v = json.loads(meta.read_text())
    assert p.stdout == b"hello\n" and (v["stdout_bytes"], v["stderr_bytes"]) == (6, 0)
    p = cli("run", "-q", "--output-limit", "1K", "--meta", str(meta), "--",
            "sh", "-c", "head -c 100000 /dev/zero >&2")
    v = json.loads(meta.read_text())
    assert p.returncode == 141 and len(p.stderr) == 1024
    assert (v["stderr_truncated"], v["stderr_bytes"], v["stdout_bytes"]) == (True, 1024, 0)
    v = json.loads(cli("run", "--json", "--", "echo", "hello").stdout)
    assert (v["stdout"], v["stdout_bytes"], v["stdout_encoding"]) == ("hello\n", 6, "utf-8")


def test_json_carries_non_utf8_output_as_base64():
    v = json.loads(cli("run", "--json", "--", "sh", "-c",
                       r"printf '\377\376ok'; printf 'h\303\251' >&2").stdout)
    assert v["stdout_encoding"] == "base64" and base64.b64decode(v["stdout"]) == b"\xff\xfeok"
    assert (v["stderr_encoding"], v["stderr"]) == ("utf-8", "hé")
    d = sandbox.Result(sandbox.Status.OK, stdout=b"\x80").to_dict(include_output=True)
    assert (d["stdout"], d["stdout_encoding"], d["stdout_bytes"]) == ("gA==", "base64", 1)


def test_cgroup_fallbacks_with_a_partly_delegated_subtree(monkeypatch):
    """Where a subtree is delegated (not on every test host): what it lacks falls back, with
    the manager's reason per controller; cpu_time is held by any box cgroup."""
    from sandbox import _boxcgroup

    class Manager:
        controllers = frozenset({"memory", "pids"})
        missing = {"cpu": "cpu controller not delegated to /x"}

    monkeypatch.setattr(_boxcgroup, "cgroup_manager", lambda: Manager())
    cfg = SandboxConfig(limits=Limits(cpus=0.5, memory="64M"))
    assert sandbox.cgroup_fallbacks(cfg) == {"cpus": "cpu controller not delegated to /x"}
    Manager.controllers = frozenset({"pids", "cpu"})
    Manager.missing = {"memory": "no memory"}
    assert sandbox.cgroup_fallbacks(cfg) == dict.fromkeys(("memory", "memfd", "kernel_buffers"),
                                                          "no memory")
