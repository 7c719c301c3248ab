"""The CLI's option parser: a table of ``_Opt`` rows, parsed by hand and rendered like
argparse's help. argparse itself costs ~6 ms of every ``sandbox run`` start (it imports re,
gettext and more); ``sandbox grade`` keeps argparse.
"""

from __future__ import annotations

TYPE_CHECKING = False  # no typing import at run time (CLI start)
if TYPE_CHECKING:
    from typing import Any

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
