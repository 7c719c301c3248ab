"""``sandbox`` command line: a thin layer over the public API.

Usage errors print ONE line naming the bad value and what would be valid, and exit 2 — never a
traceback. ``sandbox run`` exit codes: the program's own code; 128+N when it died of signal N;
124 wall/CPU time exceeded (like timeout(1)); 137 memory limit; 141 output limit; 125 the
sandbox itself failed; 126/127 the command could not be executed / was not found (like docker).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from sandbox.config import ConfigError, Limits, SandboxConfig, parse_mount_arg

STATUS_EXIT = {"TO": 124, "ML": 137, "OL": 141}


class UsageError(Exception):
    pass


class _Formatter(argparse.HelpFormatter):
    """argparse builds a formatter for every add_argument; its default width comes from
    shutil.get_terminal_size, and importing shutil (bz2, lzma, fnmatch) is ~2 ms of the CLI's
    start. Same answer, without the import."""

    def __init__(self, prog: str, **kw: object) -> None:
        if "width" not in kw:
            try:
                cols = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(2).columns
            except (ValueError, OSError):
                cols = 80
            kw["width"] = max(cols - 2, 20)
        super().__init__(prog, **kw)  # type: ignore[arg-type]


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: object, **kw: object) -> None:
        kw.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kw)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sandbox", description="Rootless Linux sandbox for untrusted code.")
    sub = p.add_subparsers(dest="command", metavar="{run,doctor,grade}")
    r = sub.add_parser("run", help="run a command in a fresh sandbox",
                       usage="sandbox run [options] -- COMMAND [ARG...]")
    lim = r.add_argument_group("limits (defaults in README: 'Limits and defaults')")
    lim.add_argument("--memory", metavar="SIZE", help="memory limit, e.g. 256M (default 512M)")
    lim.add_argument("--pids", metavar="N", help="max processes (default 256)")
    lim.add_argument("--cpu-time", metavar="DUR", help="CPU time limit, e.g. 10s (default 60s)")
    lim.add_argument("--wall-time", metavar="DUR", help="wall-clock limit, e.g. 5s (default 60s)")
    lim.add_argument("--output-limit", metavar="SIZE", help="cap per output stream (default 16M)")
    lim.add_argument("--tmpfs-size", metavar="SIZE", help="all writable space (default 256M)")
    lim.add_argument("--nofile", metavar="N", help="max open files (default 1024)")
    lim.add_argument("--fsize", metavar="SIZE", help="max file size written (default 256M)")
    lim.add_argument("--cpus", metavar="N", help="CPU share, e.g. 0.5 (cgroup v2 only)")
    box = r.add_argument_group("box")
    box.add_argument("--net", default="none", help="none (default: loopback only) or host")
    for kind in ("ro-bind", "bind", "overlay"):
        box.add_argument(f"--{kind}", action="append", default=[], metavar="SRC[:DEST]",
                         help=f"{kind} a host path into the box")
    box.add_argument("--tmpfs", action="append", default=[], metavar="DEST[:SIZE]")
    box.add_argument("--cwd", default="/tmp", help="working directory inside (default /tmp)")
    box.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    box.add_argument("--uid", type=int, default=None, help="uid inside the box (default 1000)")
    box.add_argument("--gid", type=int, default=None, help="gid inside the box (default 1000)")
    box.add_argument("--hostname", default="sandbox")
    box.add_argument("--id-map", default="auto", choices=("auto", "single", "range"),
                     help="uid/gid map: single id (unprivileged default), or a 65536-id range "
                          "(root: a high host block; users: /etc/subuid via newuidmap)")
    box.add_argument("--seccomp", default=None,
                     help="default (the default) or none (debugging only: see docs/threat-model.md)")
    box.add_argument("--landlock", action="store_true",
                     help="also confine writes with Landlock to /tmp, /dev, /proc and writable mounts")
    box.add_argument("--systemd-scope", action="store_true",
                     help="re-run inside `systemd-run --user --scope -p Delegate=yes` to get a "
                          "delegated cgroup v2 subtree from the systemd user manager")
    box.add_argument("--require-cgroup", action="store_true",
                     help="fail instead of falling back to rlimits without a delegated cgroup")
    out = r.add_argument_group("verdict")
    out.add_argument("--json", action="store_true",
                     help="print the verdict (with captured output) as JSON on stdout")
    out.add_argument("--meta", metavar="FILE", help="write the verdict as JSON to FILE")
    out.add_argument("--quiet", "-q", action="store_true", help="no verdict line on stderr")
    r.add_argument("cmd", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    d = sub.add_parser("doctor", help="check this host and user can run sandboxes")
    d.add_argument("--json", action="store_true")
    sub.add_parser("grade", help="grade untrusted submissions with a trusted pytest suite",
                   add_help=False)
    return p


def config_from_args(a: argparse.Namespace) -> SandboxConfig:
    limits = Limits.parse(**{k: getattr(a, k) for k in (
        "memory", "pids", "cpu_time", "wall_time", "output_limit", "tmpfs_size", "nofile",
        "fsize", "cpus") if getattr(a, k) is not None})
    env: dict[str, str] = {}
    for item in a.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--env {item!r}: use NAME=VALUE")
        env[name] = value
    mounts = [parse_mount_arg(kind, arg) for kind in ("ro-bind", "bind", "overlay", "tmpfs")
              for arg in getattr(a, kind.replace("-", "_"))]
    cfg = SandboxConfig(limits=limits, network=a.net, mounts=mounts, cwd=a.cwd, env=env,
                        hostname=a.hostname, require_cgroup=a.require_cgroup, id_map=a.id_map,
                        landlock=a.landlock)
    if a.seccomp is not None:
        cfg.seccomp = a.seccomp
    if a.uid is not None:
        cfg.uid = a.uid
    if a.gid is not None:
        cfg.gid = a.gid
    return cfg.validate()


def _cmd_run(a: argparse.Namespace) -> int:
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        raise UsageError("missing command: sandbox run [options] -- COMMAND [ARG...]")
    if cmd[0].startswith("-") and a.cmd[:1] != ["--"]:
        raise UsageError(f"unrecognized option {cmd[0]!r}; put the command after '--'")
    cfg = config_from_args(a)
    if a.systemd_scope and not os.environ.get("SANDBOX_IN_SYSTEMD_SCOPE"):
        _reexec_in_scope()
    from sandbox.direct import run_direct

    stream = None if a.json else _write_through
    result = run_direct(cmd, cfg, inherit_stdin=True, on_output=stream)
    verdict = result.to_dict(include_output=a.json)
    if a.meta:
        fd = os.open(a.meta, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        with open(fd, "w") as f:
            json.dump(verdict, f, indent=2)
    if a.json:
        json.dump(verdict, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not a.quiet and result.status != "OK" and result.status != "RE":
        sys.stderr.write(f"sandbox: {result.status}: {result.reason or result.error}\n")
    code = STATUS_EXIT.get(result.status.value)
    return code if code is not None else result.cli_exit_code()


def _reexec_in_scope() -> None:
    """Ask the systemd user manager for a scope with cgroup delegation, then run again in it."""
    import shutil

    tool = shutil.which("systemd-run")
    if tool is None or not os.environ.get("XDG_RUNTIME_DIR"):
        raise UsageError("--systemd-scope: no systemd user manager reachable (systemd-run "
                         "missing or no XDG_RUNTIME_DIR); see `sandbox doctor` for other ways")
    argv = [a for a in sys.argv[1:] if a != "--systemd-scope"]
    env = {**os.environ, "SANDBOX_IN_SYSTEMD_SCOPE": "1"}
    os.execve(tool, [tool, "--user", "--scope", "--quiet", "-p", "Delegate=yes", "--",
                     sys.executable, "-m", "sandbox.cli", *argv], env)


def _write_through(which: int, chunk: bytes) -> None:
    try:
        os.write(which, chunk)
    except OSError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["grade"]:
        from sandbox.grade_cli import main as grade_main

        return grade_main(argv[1:])
    try:
        a = _build_parser().parse_args(argv)
        if a.command == "run":
            return _cmd_run(a)
        if a.command == "doctor":
            from sandbox.doctor import main as doctor_main

            return doctor_main([], a.json)
        raise UsageError("missing command; use one of: run, doctor, grade (see sandbox --help)")
    except (UsageError, ConfigError) as e:
        sys.stderr.write(f"sandbox: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `sandbox run --json ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
