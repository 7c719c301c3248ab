"""Init's one-line report to the box's parent: the format, both ways, in one place.

Init (pid 1 of the box) writes one line on a pipe only it and the parent hold: how the payload
ended (``{"ok": true, "wait_status": N}``) or which setup step failed and why (``{"ok": false,
"step": ..., "errno": ..., "error": ...}``). JSON, never pickle; bounded; parsed strictly, and
anything else counts as no report. Neither side imports ``json`` on the normal path: json
brings ``re`` and ``enum`` (~4 ms of the CLI's start), and inside the box, after pivot_root, a
Python installed outside the exposed paths has no stdlib left to import — a report that could
not be written would be a verdict lost. The peak memory it carries is worked out here too
(``own_peak_rss``, ``program_peak``).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STATUS_MAX = 64 * 1024
_EXIT_HEAD = b'{"ok": true, "wait_status": '


_PEAK = b', "max_rss": '


def encode_exit(wait_status: int, max_rss: int | None = None) -> bytes:
    """The normal report; ``parse`` reads exactly this shape without json. ``max_rss``: the
    payload's own peak in bytes as init saw it (0: unknown, see ``program_peak``)."""
    if max_rss is None:
        return _EXIT_HEAD + b"%d}\n" % wait_status
    return _EXIT_HEAD + b"%d%s%d}\n" % (wait_status, _PEAK, max_rss)


def encode_failure(obj: dict[str, Any]) -> bytes:
    """A failure report: flat str/int/bool/None values, ASCII JSON (all else ``\\uXXXX``,
    lone surrogates from undecodable paths included: json.loads gives back the same str)."""
    parts = []
    for key, value in obj.items():
        if value is None or isinstance(value, bool):
            text = {None: "null", True: "true", False: "false"}[value]
        elif isinstance(value, int):
            text = str(value)
        else:
            text = _json_str(str(value))
        parts.append(f"{_json_str(str(key))}: {text}")
    return ("{" + ", ".join(parts) + "}\n").encode("ascii")[:STATUS_MAX]


def _json_str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        elif o > 0xFFFF:
            o -= 0x10000
            out.append(f"\\u{0xD800 + (o >> 10):04x}\\u{0xDC00 + (o & 0x3FF):04x}")
        else:
            out.append(f"\\u{o:04x}")
    out.append('"')
    return "".join(out)


def read(fd: int) -> bytes:
    """What init wrote on the status pipe (after it exited), at most STATUS_MAX + 1 bytes: one
    more than a valid line may have, so an overlong one is seen as such and refused."""
    out = b""
    while len(out) <= STATUS_MAX:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        out += chunk
    return out[: STATUS_MAX + 1]


def parse(raw: bytes) -> dict[str, Any] | None:
    """Strictly parse init's line; anything else (too long, not JSON, wrong shape) is None."""
    if not raw or len(raw) > STATUS_MAX:
        return None
    line = raw.split(b"\n", 1)[0]
    digits, _, peak = line[len(_EXIT_HEAD):-1].partition(_PEAK)
    if (line.startswith(_EXIT_HEAD) and line.endswith(b"}") and digits.isdigit()
            and (peak.isdigit() or not _) and len(digits) <= 5 and len(peak) <= 18):
        obj = {"ok": True, "wait_status": int(digits), **({"max_rss": int(peak)} if _ else {})}
        return obj if obj["wait_status"] < 1 << 16 else None
    import json  # host side, failures only

    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        return None
    if obj["ok"] and not _uint(obj.get("wait_status"), 1 << 16):  # os.WIF* take 16 bits
        return None
    if "max_rss" in obj and not _uint(obj["max_rss"], 1 << 63):  # the verdict compares it
        return None
    return obj


def _uint(v: object, bound: int) -> bool:
    """A JSON integer in [0, bound): never a bool (True is an int to isinstance), a float
    or a string, none of which the verdict's arithmetic and os.WIF* calls accept."""
    return type(v) is int and 0 <= v < bound


def own_peak_rss(forked: int = 0) -> int:
    """Our max RSS (a vfork'd child's exec records it: exec_mmap), or a ``forked`` child's RSS just
    after the fork, where its high-water mark starts (dup_mm: file pages are not copied), ours if
    it is a zombie already. A ``ru_maxrss`` at or below this says nothing of the program."""
    import resource  # loaded already: os.wait4 builds its rusage with it

    for who in [str(forked), "self"] if forked else []:  # (the box's /proc: a payload runs)
        with open(f"/proc/{who}/statm", "rb") as f:
            if rss := int(f.read().split()[1]) * os.sysconf("SC_PAGESIZE"):
                return rss
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def program_peak(max_rss: int, spawner_peak: int, grown: bool = False) -> int:
    """The program's own peak, or 0 (unknown, at most ``spawner_peak``) when its rusage shows no
    more than what it inherited from the process that started it (``own_peak_rss``).

    ``grown``: a forked function (the plugin's ``@sandboxed`` test), whose image *is* its
    caller's: its figure is what it grew beyond that image, which is what its limits hold (its
    RLIMIT_AS counts on top of the image, ``_rlimits.on_top_of_current_image``; a cgroup leaf is
    charged only the pages it touches). Its whole RSS made every failing test of a 200 MiB
    pytest under ``memory=128M`` an ML."""
    if max_rss <= spawner_peak:
        return 0
    return max_rss - spawner_peak if grown else max_rss
