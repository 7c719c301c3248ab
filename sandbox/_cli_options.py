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
_VERSION = _Opt("--version", "flag", help="print the version (sandbox X.Y.Z) and exit")


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


class _VersionRequested(Exception):
    pass


def _is_option(word: str) -> bool:
    """A word that starts with '-' and is not a negative number (``--uid -1``) nor '-'."""
    return word.startswith("-") and word != "-" and not word[1:].replace(".", "", 1).isdigit()


def _names_an_option(word: str, table: dict[str, _Opt]) -> bool:
    """Whether ``word``, where an option's value is expected, is rather the next option:
    ``--memory --json`` lacks its value, but ``--memory -5M`` gives one (refused by the size's
    own check, which names it), as ``--cwd -x`` does (not absolute)."""
    if word == "--" or word.partition("=")[0] in table:
        return True
    if word.startswith("--"):
        return word[2:3].isalpha()  # a mistyped option (``--memroy``), not a value
    return len(word) > 1 and all(f"-{c}" in table for c in word[1:])  # -it


def _unknown(word: str, table: dict[str, _Opt], prog: str) -> UsageError:
    """One line naming the word, with the nearest option when one is close (difflib is only
    imported here, on the error path: it imports re)."""
    name = word.partition("=")[0]
    near = [n for n in table if n.startswith(name) and len(name) > 2]
    if len(near) != 1 and name.startswith("--"):
        import difflib

        near = difflib.get_close_matches(name, [n for n in table if n.startswith("--")], 1, 0.6)
    hint = f"; did you mean {near[0]}?" if len(near) == 1 else ""
    what = "option" if _is_option(word) or word == "--" else "argument"
    return UsageError(f"unknown {what} {word!r}{hint} (see {prog} --help)")


def parse_options(argv: list[str], groups: tuple[tuple[str, tuple[_Opt, ...]], ...],
                  prog: str, command: bool) -> Args:
    """Parse ``argv`` against the table ``groups``. With ``command``, ``--`` or the first
    non-option word ends the options and the rest becomes ``Args.cmd`` verbatim. Short flags
    combine as in getopt (``-it``; ``-eNAME=V``: a short option's value may follow it)."""
    table = {n: o for _, opts in groups for o in opts for n in o.names}
    for o in (_HELP, _VERSION):
        table.update(dict.fromkeys(o.names, o))
    ns = Args(groups, argv)
    i = 0
    while i < len(argv):
        word = argv[i]
        if command and (word == "--" or not _is_option(word)):
            ns.cmd = argv[i + (word == "--"):]
            break
        name, eq, value = word.partition("=")
        if name in table:
            items = [(name, table[name], value if eq else None)]
        elif word[:1] == "-" and word[1:2] != "-" and len(word) > 2:
            items = _cluster(word, table, prog)
        else:
            raise _unknown(word, table, prog)
        for name, opt, value in items:
            if opt.kind == "flag":
                if value is not None:
                    raise UsageError(f"{name} is a flag and takes no value (got {word!r}); "
                                     f"use plain {name}")
                if opt is _HELP:
                    raise _HelpRequested
                if opt is _VERSION:
                    raise _VersionRequested
                setattr(ns, opt.dest, True)
                continue
            if value is None:
                i += 1
                if i == len(argv) or _names_an_option(argv[i], table):
                    hint = f" — {opt.help}" if opt.help else ""
                    raise UsageError(f"{name} needs a value: {name} {opt.metavar} or "
                                     f"{name}={opt.metavar}{hint}")
                value = argv[i]
            opt.store(ns, name, value)
        i += 1
    return ns


def _cluster(word: str, table: dict[str, _Opt], prog: str) -> list[tuple[str, _Opt, str | None]]:
    """``-it`` → -i, -t; ``-qe`` → -q, then -e taking the next word; ``-eA=1`` → -e ``A=1``."""
    out: list[tuple[str, _Opt, str | None]] = []
    for j, ch in enumerate(word[1:], 2):
        opt = table.get(f"-{ch}")
        if opt is None:
            raise _unknown(word if j == 2 else f"-{ch}", table, prog)
        if opt.kind != "flag":
            out.append((f"-{ch}", opt, word[j:] or None))
            break
        out.append((f"-{ch}", opt, None))
    return out


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
    rows = [(", ".join(o.names), o.help, "options") for o in (_HELP, _VERSION)]
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
