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

from sandbox import ConfigError
from sandbox._cli_config import config_from_args, unheld_warning  # noqa: F401 - re-exported
from sandbox._cli_options import (  # noqa: F401 - re-exported: the option table's users
    _HELP,
    Args,
    UsageError,
    _HelpRequested,
    _is_option,
    _Opt,
    _VersionRequested,
    format_help,
    parse_options,
)

TYPE_CHECKING = False  # no typing/collections.abc import at run time (CLI start)
if TYPE_CHECKING:
    from collections.abc import Sequence

STATUS_EXIT = {"TO": 124, "ML": 137, "OL": 141}
RUN_USAGE = "sandbox run [options] -- COMMAND [ARG...]"
COMMANDS = (("run", "run a command in a fresh sandbox"),
            ("shell", "an interactive shell in a fresh sandbox (sandbox run -t -- bash -i)"),
            ("doctor", "check this host and user can run sandboxes"),
            ("grade", "grade untrusted submissions with a trusted pytest suite"))
RUN_GROUPS: tuple[tuple[str, tuple[_Opt, ...]], ...] = (
    ("limits (defaults in README: 'Limits and defaults')", (
        _Opt("--memory", metavar="SIZE", help="memory limit, e.g. 256M (default 512M, "
             "at least 1M; a number alone is bytes)"),
        _Opt("--pids", metavar="N", help="max processes (default 256, at least 2: init and "
             "the program)"),
        _Opt("--cpu-time", metavar="DUR", help="CPU time limit, e.g. 10s (default 60s)"),
        _Opt("--wall-time", metavar="DUR", help="wall-clock limit, e.g. 5s (default 60s)"),
        _Opt("--output-limit", metavar="SIZE", help="cap per output stream (default 16M; 0 "
             "allows none)"),
        _Opt("--tmpfs-size", metavar="SIZE", help="all writable space (default 256M, at "
             "least 1M)"),
        _Opt("--nofile", metavar="N", help="max open files (default 1024)"),
        _Opt("--fsize", metavar="SIZE", help="max file size written (default 256M, at "
             "least 1K)"),
        _Opt("--cpus", metavar="N", help="CPU share, e.g. 0.5 (default: no throttle; cgroup "
             "v2 only: without one it is not enforced, and a warning says so)"),
    )),
    ("box", (
        _Opt("--net --network", default="none", help="none (default: loopback only) or host"),
        _Opt("--ro-bind", "list", "SRC[:DEST]", help="mount a host path read-only at DEST "
             "(default DEST: SRC made absolute)"),
        _Opt("--bind", "list", "SRC[:DEST]", help="mount a host path writable at DEST "
             "(default DEST: SRC made absolute)"),
        _Opt("--overlay", "list", "SRC[:DEST]", help="a host directory at DEST, writes "
             "kept in the box's tmpfs and lost at its end (default DEST: SRC made absolute)"),
        _Opt("--volume -v", "list", "SRC:DEST[:ro]", help="docker's spelling of --bind, or "
             "of --ro-bind with :ro (default: writable)"),
        _Opt("--tmpfs", "list", "DEST[:SIZE]", help="an extra tmpfs at DEST (default SIZE: "
             "--tmpfs-size)"),
        _Opt("--cwd --workdir -w", metavar="DIR", default="/tmp",
             help="working directory inside (default /tmp)"),
        _Opt("--image", metavar="NAME[:TAG]", help="the box's root: an image (sandbox image "
             "import; default: the host's /usr)"),
        _Opt("--commit", metavar="NAME[:TAG]", help="after an OK run, store the box's "
             "writable layer on top of --image as image NAME (default: not kept)"),
        _Opt("--env -e", "list", "NAME[=VALUE]", help="set NAME in the box; NAME alone "
             "passes your value (default: only TERM, LANG, LC_ALL, LC_CTYPE, TZ pass; PATH, "
             "HOME=/tmp, USER are the box's)"),
        _Opt("--env-file", "list", "FILE", help="NAME=VALUE lines (docker's format: # "
             "comments, blank lines, NAME alone passes your value), read before --env (default: none)"),
        _Opt("--uid", "int", help="uid inside the box (default 1000)"),
        _Opt("--gid", "int", help="gid inside the box (default 1000)"),
        _Opt("--hostname", default="sandbox", help="the box's hostname (default sandbox)"),
        _Opt("--allow-host", "list", "NAME:PORT", help="egress to NAME:PORT only, through a "
             "forwarder; every other attempt is refused and counted (repeatable; default: none)"),
        _Opt("--rate", metavar="RATE", help="shape the box's link to RATE (tc units: 500kbit, 1mbit; "
             "the box gets a network of its own; default: unshaped)"),
        _Opt("--latency", metavar="TIME", help="delay on the box's link (netem; default none)"),
        _Opt("--loss", metavar="PCT", help="packet loss on the box's link (netem; default none)"),
        _Opt("--add-host", "list", "NAME:IP", help="an /etc/hosts line in the box (docker's "
             "--add-host; repeatable; default: none)"),
        _Opt("--id-map", default="auto", choices=("auto", "single", "range"),
             help="uid/gid map (default auto): single id (unprivileged default), or a "
                  "65536-id range (root: a high host block; users: /etc/subuid via newuidmap)"),
        _Opt("--seccomp",
             help="default (the default) or none (debugging only: see docs/threat-model.md)"),
        _Opt("--landlock", "flag", help="also confine writes with Landlock to /tmp, /dev, "
             "/proc and writable mounts (default off)"),
        _Opt("--systemd-scope", "flag",
             help="re-run inside `systemd-run --user --scope -p Delegate=yes` to get a "
                  "delegated cgroup v2 subtree from the systemd user manager (default off)"),
        _Opt("--require-cgroup", "flag", help="fail instead of falling back to rlimits "
             "without a delegated cgroup (default: fall back)"),
    )),
    ("terminal and signals", (
        _Opt("--tty -t", "flag", help="give the box its own terminal (a pty relayed to "
             "yours; the default when stdin and stdout are terminals)"),
        _Opt("--no-tty -T", "flag", help="never a terminal: pipes, even on a terminal (default off)"),
        _Opt("--stop-timeout", metavar="DUR", help="after a SIGTERM/SIGHUP passed on to the "
             "program, kill the box if it has not ended in DUR (default 10s); a second "
             "SIGTERM kills it at once"),
        _Opt("--interactive -i", "flag", help="accepted for docker's habit (-it): stdin is "
             "always passed to the box, through a pipe, with or without it (by default too)"),
    )),
    ("verdict", (
        _Opt("--json", "flag", help="print the verdict (with captured output) as JSON on "
             "stdout instead of the output (default off)"),
        _Opt("--meta", metavar="FILE", help="write the verdict as JSON to FILE (default: "
             "none)"),
        _Opt("--quiet -q", "flag", help="no verdict line and no fallback warning on stderr "
             "(default off)"),
    )),
)
DOCTOR_GROUPS: tuple[tuple[str, tuple[_Opt, ...]], ...] = (
    ("options", (_Opt("--json", "flag", help="print the checks as JSON on stdout "
                      "(default: text)"),)),
)
RUN_EPILOG = ("Options end at `--` or at the first word that is not an option; the rest is "
              "the command, passed through untouched. Exit status: the command's own; 128+N "
              "if killed by signal N; 124 time limit, 137 memory limit, 141 output limit; "
              "125 sandbox failure; 126/127 command not executable / not found.")


def _top_help() -> str:
    rows = "".join(f"  {name:<8}{text}\n" for name, text in COMMANDS)
    return ("usage: sandbox {run,shell,doctor,grade} ...\n\nRootless Linux sandbox for untrusted "
            f"code.\n\ncommands:\n{rows}\noptions:\n  -h, --help  show this help message and "
            "exit\n  --version   print the version and exit\n\nSee `sandbox COMMAND --help` "
            "for a command's options.\n")


class SandboxFailure(Exception):
    """The sandbox itself cannot run (not the user's mistake): one line, exit 125 as a box's
    XX verdict would (a usage error's 2 would send the user to their command line)."""


def _version() -> str:
    import sandbox

    return f"sandbox {sandbox.__version__}\n"


def _cmd_run(a: Args) -> int:
    cmd = a.cmd
    if not cmd and not a.image:
        raise UsageError(f"missing command: {RUN_USAGE}")
    cfg = config_from_args(a)
    commit_to = None
    if a.commit:  # a usage error before any box (sandbox/_cli_commit.py)
        from sandbox._cli_commit import check_commit

        commit_to = check_commit(a)
    if a.image:  # its Entrypoint, then the command or its Cmd (docs/images.md)
        from sandbox import ImageStore

        if not (cmd := ImageStore().command(a.image, cmd)):
            raise UsageError(f"missing command: image {a.image!r} has no Cmd; {RUN_USAGE}")
    if a.systemd_scope and not os.environ.get("SANDBOX_IN_SYSTEMD_SCOPE"):
        _reexec_in_scope(["run", *a.argv])
    warning = "" if a.quiet else unheld_warning(a, cfg)  # before the run: cgroup-less limits
    if warning:  # (no empty write: with `stty tostop` a background job stops on any write)
        sys.stderr.write(warning)
    meta_fd = _open_meta(a.meta) if a.meta else -1
    try:
        from sandbox import run_sync
        from sandbox._cli_relay import OutputRelay

        relay = None if a.json else OutputRelay()
        try:
            # A terminal on both ends: the box gets one of its own (docker run -it's default)
            tty = not a.json and not a.no_tty and (a.tty or (os.isatty(0) and os.isatty(1)
                                                             and _in_foreground()))
            if tty and not os.isatty(0):
                raise UsageError("--tty: stdin is not a terminal; run from one, or drop -t")
            if commit_to is not None:  # a held box, its layer committed after an OK end
                from sandbox._cli_commit import run_and_commit

                result = run_and_commit(commit_to, cmd, cfg, relay, quiet=a.quiet)
            else:
                result = run_sync(cmd, cfg, stdin=0, on_output=relay, forward_signals=True, tty=tty,
                                  stop_timeout=a.stop_timeout if a.stop_timeout is not None else 10.0)
        finally:
            if relay is not None:
                relay.flush()
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
    piped_away = relay is not None and relay.gone and result.signal == 13  # SIGPIPE: as in a shell
    if not a.json and not a.quiet and result.status not in ("OK", "RE") and not piped_away:
        note = result.fallback_note()
        sys.stderr.write(f"sandbox: {result.status}: {result.reason or result.error}"
                         + (f" [{note}]" if note else "") + "\n")
    refused = (result.egress or {}).get("refused", 0)
    if refused and not a.json and not a.quiet:
        sys.stderr.write(f"sandbox: {refused} connection attempt(s) refused by --allow-host: "
                         + ", ".join(result.egress["refused_to"]) + "\n")  # type: ignore[index]
    code = STATUS_EXIT.get(result.status.value)
    return code if code is not None else result.cli_exit_code()


def _cmd_shell(a: Args) -> int:
    """`sandbox shell [IMAGE]`: `sandbox run -- bash -i` on the host's /usr (sh where there is
    no bash), or `sh -i` on an imported image; a terminal of its own when ours is one."""
    if len(a.cmd) > 1 or (a.cmd and a.image):
        raise UsageError(f"sandbox shell {' '.join(a.cmd)!r}: takes at most an IMAGE, no "
                         "command; use `sandbox run [options] -- COMMAND`")
    if a.cmd:
        a.image = a.cmd[0]
    on_host = not a.image
    a.cmd = ["bash" if on_host and os.path.exists("/usr/bin/bash") else "sh", "-i"]
    a.argv = [*a.argv, "--", *a.cmd]  # (what --systemd-scope runs again, as `sandbox run`)
    if a.image:
        a.argv = ["--image", a.image, *[w for w in a.argv if w != a.image]]
    return _cmd_run(a)


def _in_foreground() -> bool:
    """A background job (`sandbox run ... &`) gets pipes: a terminal of its own would need
    ours in raw mode, which is the shell's while we are in the background."""
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


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
        raise SandboxFailure("--systemd-scope: no systemd user manager reachable (systemd-run "
                             "missing or no XDG_RUNTIME_DIR); see `sandbox doctor` for other "
                             "ways to get a cgroup")
    env = {**os.environ, "SANDBOX_IN_SYSTEMD_SCOPE": "1"}
    try:
        os.execve(tool, [tool, "--user", "--scope", "--quiet", "-p", "Delegate=yes", "--",
                         sys.executable, "-m", "sandbox._cli", *argv], env)
    except OSError as e:
        raise SandboxFailure(f"--systemd-scope: cannot run {tool}: {e.strerror}") from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["grade"]:
        from sandbox._grade_cli import main as grade_main

        return grade_main(argv[1:])
    if argv[:1] == ["image"]:  # `sandbox image import|ls|inspect|rm` (sandbox/_cli_image.py)
        from sandbox._cli_image import main as image_main

        return image_main(argv[1:])
    names = ", ".join(name for name, _ in COMMANDS)
    try:
        if not argv:
            raise UsageError(f"missing command; use one of: {names} (see sandbox --help)")
        if argv[0] in _HELP.names:
            sys.stdout.write(_top_help())
            return 0
        if argv[0] == "--version":
            sys.stdout.write(_version())
            return 0
        try:
            if argv[0] == "run":
                return _cmd_run(parse_options(argv[1:], RUN_GROUPS, "sandbox run", True))
            if argv[0] == "shell":
                return _cmd_shell(parse_options(argv[1:], RUN_GROUPS, "sandbox shell", True))
            if argv[0] == "doctor":
                a = parse_options(argv[1:], DOCTOR_GROUPS, "sandbox doctor", False)
                from sandbox._cli_doctor import main as doctor_main

                return doctor_main(a.json)
        except _HelpRequested:
            if argv[0] in ("run", "shell"):
                text = (format_help(RUN_USAGE, COMMANDS[0][1], RUN_GROUPS, RUN_EPILOG)
                        if argv[0] == "run" else
                        format_help("sandbox shell [options] [IMAGE]", COMMANDS[1][1], RUN_GROUPS))
            else:
                text = format_help("sandbox doctor [--json]", COMMANDS[2][1], DOCTOR_GROUPS)
            sys.stdout.write(text)
            return 0
        except _VersionRequested:
            sys.stdout.write(_version())
            return 0
        what = "option" if _is_option(argv[0]) else "command"
        raise UsageError(f"unknown {what} {argv[0]!r}{_near(argv[0])}; use one of: {names} "
                         "(see sandbox --help)")
    except (UsageError, ConfigError) as e:
        sys.stderr.write(f"sandbox: error: {e}\n")
        return 2
    except SandboxFailure as e:
        sys.stderr.write(f"sandbox: error: {e}\n")
        return 125
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `sandbox run --json ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _near(word: str) -> str:
    """``sandbox rnu`` → "; did you mean run?" (difflib only on this error path)."""
    import difflib

    near = difflib.get_close_matches(word, [*(n for n, _ in COMMANDS), "--help", "--version"], 1)
    return f" (did you mean {near[0]}?)" if near else ""


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
