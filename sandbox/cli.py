"""``sandbox`` command line: a thin layer over the public API.

Usage errors print ONE line naming the bad value and what would be valid, and exit 2 — never a
traceback. ``sandbox run`` exit codes: the program's own code; 128+N when it died of signal N;
124 wall/CPU time exceeded (like timeout(1)); 137 memory limit; 141 output limit; 125 the
sandbox itself failed; 126/127 the command could not be executed / was not found (like docker).

Cold start is measured (``sandbox run -- /bin/true``), so the options are parsed by a small
table-driven parser rather than argparse (which pulls in gettext, warnings, re and enum: ~6 ms),
and ``json`` is only imported when ``--json`` or ``--meta`` asks for it. Options are spelled
as in bubblewrap/docker: ``--opt value`` or ``--opt=value``; ``--`` or the first word that is
not an option starts the command, and everything after it is passed through untouched.
"""

from __future__ import annotations

import os
import sys

from sandbox.config import ConfigError, Limits, SandboxConfig, parse_mount_arg

TYPE_CHECKING = False  # no typing/collections.abc import at run time (CLI start)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

STATUS_EXIT = {"TO": 124, "ML": 137, "OL": 141}
RUN_USAGE = "sandbox run [options] -- COMMAND [ARG...]"
COMMANDS = (("run", "run a command in a fresh sandbox"),
            ("doctor", "check this host and user can run sandboxes"),
            ("grade", "grade untrusted submissions with a trusted pytest suite"))
HELP_WIDTH = 79  # fixed: help text does not depend on COLUMNS or the terminal


class UsageError(Exception):
    pass


class _Opt:
    """One row of an option table: spelling, kind ("str", "int", "list" = repeatable, "flag"),
    default, and what ``--help`` and the error messages show for it."""

    __slots__ = ("names", "dest", "kind", "metavar", "help", "default", "choices")

    def __init__(self, names: str, kind: str = "str", metavar: str = "", help: str = "",
                 default: object = None, choices: tuple[str, ...] = ()) -> None:
        self.names = tuple(names.split())
        self.dest = self.names[0].lstrip("-").replace("-", "_")
        self.kind, self.help, self.default, self.choices = kind, help, default, choices
        self.metavar = metavar or ("{" + ",".join(choices) + "}" if choices else self.dest.upper())

    def store(self, ns: Args, name: str, value: str) -> None:
        if self.kind == "list":
            getattr(ns, self.dest).append(value)
            return
        if self.choices and value not in self.choices:
            raise UsageError(f"{name} {value!r}: choose one of {', '.join(self.choices)}")
        if self.kind == "int":
            try:
                setattr(ns, self.dest, int(value))
            except ValueError:
                raise UsageError(f"{name} {value!r} is not a number; use {name} "
                                 f"{self.metavar}, e.g. {name} 1000") from None
            return
        setattr(ns, self.dest, value)


_HELP = _Opt("-h --help", "flag", help="show this help message and exit")
RUN_GROUPS: tuple[tuple[str, tuple[_Opt, ...]], ...] = (
    ("limits (defaults in README: 'Limits and defaults')", (
        _Opt("--memory", metavar="SIZE", help="memory limit, e.g. 256M (default 512M)"),
        _Opt("--pids", metavar="N", help="max processes (default 256)"),
        _Opt("--cpu-time", metavar="DUR", help="CPU time limit, e.g. 10s (default 60s)"),
        _Opt("--wall-time", metavar="DUR", help="wall-clock limit, e.g. 5s (default 60s)"),
        _Opt("--output-limit", metavar="SIZE", help="cap per output stream (default 16M)"),
        _Opt("--tmpfs-size", metavar="SIZE", help="all writable space (default 256M)"),
        _Opt("--nofile", metavar="N", help="max open files (default 1024)"),
        _Opt("--fsize", metavar="SIZE", help="max file size written (default 256M)"),
        _Opt("--cpus", metavar="N", help="CPU share, e.g. 0.5 (cgroup v2 only)"),
    )),
    ("box", (
        _Opt("--net", default="none", help="none (default: loopback only) or host"),
        *(_Opt(f"--{kind}", "list", "SRC[:DEST]", f"{kind} a host path into the box")
          for kind in ("ro-bind", "bind", "overlay")),
        _Opt("--tmpfs", "list", "DEST[:SIZE]"),
        _Opt("--cwd", default="/tmp", help="working directory inside (default /tmp)"),
        _Opt("--env", "list", "NAME=VALUE"),
        _Opt("--uid", "int", help="uid inside the box (default 1000)"),
        _Opt("--gid", "int", help="gid inside the box (default 1000)"),
        _Opt("--hostname", default="sandbox"),
        _Opt("--id-map", default="auto", choices=("auto", "single", "range"),
             help="uid/gid map: single id (unprivileged default), or a 65536-id range "
                  "(root: a high host block; users: /etc/subuid via newuidmap)"),
        _Opt("--seccomp",
             help="default (the default) or none (debugging only: see docs/threat-model.md)"),
        _Opt("--landlock", "flag",
             help="also confine writes with Landlock to /tmp, /dev, /proc and writable mounts"),
        _Opt("--systemd-scope", "flag",
             help="re-run inside `systemd-run --user --scope -p Delegate=yes` to get a "
                  "delegated cgroup v2 subtree from the systemd user manager"),
        _Opt("--require-cgroup", "flag",
             help="fail instead of falling back to rlimits without a delegated cgroup"),
    )),
    ("verdict", (
        _Opt("--json", "flag", help="print the verdict (with captured output) as JSON on stdout"),
        _Opt("--meta", metavar="FILE", help="write the verdict as JSON to FILE"),
        _Opt("--quiet -q", "flag", help="no verdict line on stderr"),
    )),
)
DOCTOR_GROUPS: tuple[tuple[str, tuple[_Opt, ...]], ...] = (
    ("options", (_Opt("--json", "flag", help="print the checks as JSON on stdout"),)),
)
RUN_EPILOG = ("Options end at `--` or at the first word that is not an option; the rest is "
              "the command, passed through untouched. Exit status: the command's own; 128+N "
              "if killed by signal N; 124 time limit, 137 memory limit, 141 output limit; "
              "125 sandbox failure; 126/127 command not executable / not found.")


class Args:
    """Parsed options: one attribute per option ``dest`` (``--cpu-time`` → ``cpu_time``),
    plus ``cmd`` (the command and its arguments) and ``argv`` (what was parsed)."""

    cmd: list[str]
    argv: list[str]

    def __init__(self, groups: tuple[tuple[str, tuple[_Opt, ...]], ...], argv: list[str]) -> None:
        for _, opts in groups:
            for o in opts:
                setattr(self, o.dest, [] if o.kind == "list" else
                        False if o.kind == "flag" else o.default)
        self.cmd, self.argv = [], argv

    def __getattr__(self, name: str) -> Any:  # for type checkers: attributes come from a table
        raise AttributeError(name)


class _HelpRequested(Exception):
    pass


def _is_option(word: str) -> bool:
    """A word that starts with '-' and is not a negative number (``--uid -1``) nor '-'."""
    return word.startswith("-") and word != "-" and not word[1:].replace(".", "", 1).isdigit()


def parse_options(argv: list[str], groups: tuple[tuple[str, tuple[_Opt, ...]], ...],
                  prog: str, command: bool) -> Args:
    """Parse ``argv`` against the table ``groups``. With ``command``, ``--`` or the first
    non-option word ends the options and the rest becomes ``Args.cmd`` verbatim."""
    table = {n: o for _, opts in groups for o in opts for n in o.names}
    table.update(dict.fromkeys(_HELP.names, _HELP))
    ns = Args(groups, argv)
    i = 0
    while i < len(argv):
        word = argv[i]
        if command and (word == "--" or not _is_option(word)):
            ns.cmd = argv[i + (word == "--"):]
            break
        name, eq, value = word.partition("=")
        opt = table.get(name)
        if opt is None:
            near = [n for n in table if n.startswith(name) and len(name) > 2]
            hint = f"; did you mean {near[0]}?" if len(near) == 1 else ""
            what = "option" if _is_option(word) or word == "--" else "argument"
            raise UsageError(f"unknown {what} {word!r} for {prog}{hint} (see {prog} --help)")
        if opt.kind == "flag":
            if eq:
                raise UsageError(f"{name} is a flag and takes no value (got {word!r}); "
                                 f"use plain {name}")
            if opt is _HELP:
                raise _HelpRequested
            setattr(ns, opt.dest, True)
        else:
            if not eq:
                i += 1
                if i == len(argv) or _is_option(argv[i]):
                    hint = f" — {opt.help}" if opt.help else ""
                    raise UsageError(f"{name} needs a value: {name} {opt.metavar} or "
                                     f"{name}={opt.metavar}{hint}")
                value = argv[i]
            opt.store(ns, name, value)
        i += 1
    return ns


def _wrap(text: str, indent: int, first: int | None = None) -> str:
    """Greedy word wrap to HELP_WIDTH (textwrap would import re just for ``--help``)."""
    lines: list[str] = []
    line = ""
    for w in text.split():
        if line and len(line) + 1 + len(w) > HELP_WIDTH - indent:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    lines.append(line)
    pad = " " * indent
    return pad[:indent if first is None else first] + f"\n{pad}".join(lines)


def format_help(usage: str, description: str,
                groups: tuple[tuple[str, tuple[_Opt, ...]], ...], epilog: str = "") -> str:
    """argparse-like help: usage, description, then each group's options with METAVARs."""
    rows = [(", ".join(_HELP.names), _HELP.help, "options")]
    for title, opts in groups:
        for o in opts:
            inv = ", ".join(n if o.kind == "flag" else f"{n} {o.metavar}" for n in o.names)
            rows.append((inv, o.help, title))
    col = min(max(len(inv) for inv, _, _ in rows) + 4, 24)
    out = [f"usage: {usage}\n\n{_wrap(description, 0)}\n"]
    title = ""
    for inv, text, group in rows:
        if group != title:
            title = group
            out.append(f"\n{title}:\n")
        if not text:
            out.append(f"  {inv}\n")
        elif len(inv) + 4 <= col:
            out.append(f"  {inv:<{col - 2}}{_wrap(text, col, 0)}\n")
        else:
            out.append(f"  {inv}\n{_wrap(text, col)}\n")
    if epilog:
        out.append(f"\n{_wrap(epilog, 0)}\n")
    return "".join(out)


def _top_help() -> str:
    rows = "".join(f"  {name:<8}{text}\n" for name, text in COMMANDS)
    return ("usage: sandbox {run,doctor,grade} ...\n\nRootless Linux sandbox for untrusted "
            f"code.\n\ncommands:\n{rows}\noptions:\n  -h, --help  show this help message and "
            "exit\n\nSee `sandbox COMMAND --help` for a command's options.\n")


def config_from_args(a: Args) -> SandboxConfig:
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


def _cmd_run(a: Args) -> int:
    cmd = a.cmd
    if not cmd:
        raise UsageError(f"missing command: {RUN_USAGE}")
    cfg = config_from_args(a)
    if a.systemd_scope and not os.environ.get("SANDBOX_IN_SYSTEMD_SCOPE"):
        _reexec_in_scope(["run", *a.argv])
    meta_fd = _open_meta(a.meta) if a.meta else -1
    try:
        from sandbox.direct import run_direct

        stream = None if a.json else _write_through
        result = run_direct(cmd, cfg, stdin_from=0, on_output=stream)
        if a.json or a.meta:
            import json  # only here: json (and the re it imports) is ~2 ms of every start

            verdict = result.to_dict(include_output=a.json)
            if meta_fd >= 0:
                with open(meta_fd, "w") as f:
                    meta_fd = -1  # the file object owns it now
                    json.dump(verdict, f, indent=2)
            if a.json:
                json.dump(verdict, sys.stdout, indent=2)
                sys.stdout.write("\n")
    finally:
        if meta_fd >= 0:
            os.close(meta_fd)
    if not a.json and not a.quiet and result.status != "OK" and result.status != "RE":
        sys.stderr.write(f"sandbox: {result.status}: {result.reason or result.error}\n")
    code = STATUS_EXIT.get(result.status.value)
    return code if code is not None else result.cli_exit_code()


def _open_meta(path: str) -> int:
    """Open the --meta file before the box runs: a path we cannot write is a usage error
    (one line, exit 2), not a traceback after the run. Never through a symlink: the verdict
    would be written wherever it points."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                       | os.O_CLOEXEC, 0o644)
    except OSError as e:
        why = "is a symlink (not followed)" if e.errno == 40 else e.strerror  # ELOOP
        raise UsageError(f"--meta {path!r}: {why}; give a regular file path you can "
                         "write") from None


def _reexec_in_scope(argv: Sequence[str]) -> None:
    """Ask the systemd user manager for a scope with cgroup delegation, then run again in it.

    ``argv`` is re-run unchanged: SANDBOX_IN_SYSTEMD_SCOPE makes the second run ignore
    ``--systemd-scope``, and the command's own words stay untouched."""
    import shutil

    tool = shutil.which("systemd-run")
    if tool is None or not os.environ.get("XDG_RUNTIME_DIR"):
        raise UsageError("--systemd-scope: no systemd user manager reachable (systemd-run "
                         "missing or no XDG_RUNTIME_DIR); see `sandbox doctor` for other ways")
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
    names = ", ".join(name for name, _ in COMMANDS)
    try:
        if not argv:
            raise UsageError(f"missing command; use one of: {names} (see sandbox --help)")
        if argv[0] in _HELP.names:
            sys.stdout.write(_top_help())
            return 0
        try:
            if argv[0] == "run":
                return _cmd_run(parse_options(argv[1:], RUN_GROUPS, "sandbox run", True))
            if argv[0] == "doctor":
                a = parse_options(argv[1:], DOCTOR_GROUPS, "sandbox doctor", False)
                from sandbox.doctor import main as doctor_main

                return doctor_main([], a.json)
        except _HelpRequested:
            if argv[0] == "run":
                text = format_help(RUN_USAGE, COMMANDS[0][1], RUN_GROUPS, RUN_EPILOG)
            else:
                text = format_help("sandbox doctor [--json]", COMMANDS[1][1], DOCTOR_GROUPS)
            sys.stdout.write(text)
            return 0
        what = "option" if _is_option(argv[0]) else "command"
        raise UsageError(f"unknown {what} {argv[0]!r}; use one of: {names} (see sandbox --help)")
    except (UsageError, ConfigError) as e:
        sys.stderr.write(f"sandbox: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `sandbox run --json ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def entry() -> None:
    """The ``sandbox`` command: ``main()``, then, for ``sandbox run``, a quick exit.

    Tearing the interpreter down (every module's globals, ctypes state, a full collection) is
    ~4 ms of a ~22 ms ``sandbox run -- /bin/true``, and frees nothing the kernel would not.
    So: flush stdout/stderr, run the ``atexit`` handlers (the cgroup subtree's removal is one),
    then ``os._exit`` with main's code. Every box resource is already released by then:
    run_direct closes and reaps everything in its ``finally``, and ``run`` starts no thread.

    The cyclic garbage collector is off for ``run`` (bin/sandbox turns it off before the first
    import): the process runs one box, and the collections the imports would trigger (~1 ms)
    find nothing worth freeing. ``grade`` and ``doctor`` (a whole pytest session, threads)
    get the collector back and the interpreter's normal exit."""
    import gc

    if sys.argv[1:2] != ["run"]:
        gc.enable()
        sys.exit(main())
    gc.disable()
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # `sandbox run --json ... | head`: the reader left
        code = code or 141
    except OSError:
        code = code or 1
    try:
        sys.stderr.flush()
    except OSError:
        pass
    atexit = sys.modules.get("atexit")  # not imported: nobody can have registered a handler
    if atexit is not None:             # (importing it just to run none is ~0.05 ms)
        atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    entry()
