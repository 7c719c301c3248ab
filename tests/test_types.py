"""The public types without dataclasses/enum/re (cold start): they must behave as those did.

``sandbox._record`` stands in for ``dataclasses``, ``Status`` for an ``enum.StrEnum`` and the
size/duration parsers for two regular expressions; each is checked here against what it
replaced, on the same inputs."""

from __future__ import annotations

import json
import pickle
import re

import pytest

from sandbox import ConfigError, Limits, MountSpec, Result, SandboxConfig, Status, _record
from sandbox._config import parse_duration, parse_size


@_record.record
class Point:
    """test record"""

    x: int
    y: int = 2
    tags: list[str] = _record.field(default_factory=list)


@_record.record(frozen=True)
class Key:
    """test frozen record"""

    name: str
    parts: tuple[int, ...] = ()


def test_record_construction_defaults_and_factories():
    assert Point(1) == Point(x=1, y=2, tags=[])
    assert Point(1, 3).y == 3 and Point(1, y=4).y == 4
    a, b = Point(1), Point(1)
    a.tags.append("t")
    assert b.tags == []  # a fresh list per instance
    assert repr(Point(1)) == "Point(x=1, y=2, tags=[])"
    assert Point(1) != Point(2) and Point(1) != (1, 2, [])
    for bad in (lambda: Point(), lambda: Point(1, x=1), lambda: Point(1, 2, [], 4),
                lambda: Point(1, z=3)):
        with pytest.raises(TypeError):
            bad()
    with pytest.raises(TypeError):
        hash(Point(1))  # mutable: compared by value, so unhashable (as a dataclass)


def test_frozen_record_is_immutable_and_hashable():
    k = Key("a", (1, 2))
    with pytest.raises(AttributeError):
        k.name = "b"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del k.name
    assert hash(k) == hash(Key("a", (1, 2))) and {k: 1}[Key("a", (1, 2))] == 1
    assert k != Key("a", (1, 3))


def test_record_helpers():
    p = Point(1, tags=["a"])
    assert _record.fields(Point) == ("x", "y", "tags") == _record.fields(p)
    assert _record.replace(p, y=5) == Point(1, 5, ["a"]) and p.y == 2
    assert _record.asdict(SandboxConfig(mounts=[MountSpec("tmpfs", "/d")]))["mounts"] == [
        {"kind": "tmpfs", "target": "/d", "source": None, "size": None, "fd": None, "upper_to": None}]
    cfg = SandboxConfig(env={"A": "1"}, limits=Limits(memory=1 << 20))
    assert SandboxConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_status_is_a_str_with_one_instance_per_value():
    assert list(Status) == [Status.OK, Status.RE, Status.SG, Status.TO, Status.ML, Status.OL,
                            Status.XX]
    assert Status("TO") is Status.TO and Status.TO == "TO" and "TO" in Status
    assert (Status.TO.value, Status.TO.name, str(Status.TO), f"{Status.TO}") == ("TO",) * 4
    assert repr(Status.ML) == "<Status.ML: 'ML'>" and len(Status) == 7
    assert json.dumps({"s": Status.SG}) == '{"s": "SG"}'
    assert pickle.loads(pickle.dumps(Status.OL)) is Status.OL
    with pytest.raises(ValueError):
        Status("ok")
    assert Result(Status.OK).ok and not Result(Status.RE).ok


# The regular expressions the hand-written parsers replaced (sandbox/_config.py before).
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
TIME_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
NUMBERS = ["0", "1", "12", "1.5", "0.25", "1.", ".5", "1..2", "1.2.3", "-1", "+1", "1e3", "",
           " ", "x", "١٢"]
SUFFIXES = ["", "k", "K", "m", "M", "g", "G", "t", "T", "b", "B", "kb", "KB", "kiB", "KiB",
            "MiB", "Mi", "iB", "ib", "x", "ms", "s", "h", "S", "MS", "mm", "sec"]


@pytest.mark.parametrize("num", NUMBERS)
def test_size_and_duration_parsers_match_the_old_regexes(num):
    if not num.isascii():  # re's \d took any Unicode digit; ASCII digits only now
        for bad in (num, f"{num}M", f"{num}s"):
            with pytest.raises(ConfigError):
                parse_size(bad, "--x")
            with pytest.raises(ConfigError):
                parse_duration(bad, "--x")
        return
    for suffix in SUFFIXES:
        for text in (f"{num}{suffix}", f" {num} {suffix} ", f"{num} {suffix}"):
            m = SIZE_RE.match(text)
            want = int(float(m.group(1)) * SIZE_UNITS[m.group(2).lower()]) if m else None
            if want is not None and want <= 0:
                want = None
            try:
                got = parse_size(text, "--x") if text.strip().lower() not in (
                    "none", "unlimited") else None
            except ConfigError:
                got = None
            assert got == want, text
            m = TIME_RE.match(text)
            want_t = float(m.group(1)) * TIME_UNITS[m.group(2)] if m else None
            if want_t is not None and want_t <= 0:
                want_t = None
            try:
                got_t = parse_duration(text, "--x")
            except ConfigError:
                got_t = None
            assert got_t == want_t, text


def test_hostname_rule_unchanged():
    for ok in ("sandbox", "a-b.c", "X9"):
        SandboxConfig(hostname=ok).validate()
    for bad in ("", "a b", "a_b", "ä", "a" * 65, "a/b"):
        with pytest.raises(ConfigError):
            SandboxConfig(hostname=bad).validate()


@pytest.mark.parametrize("text", ["plain", 'quo"te \\ back', "new\nline\ttab\x00nul\x7f",
                                  "ümlaut ☃ 𝄞", "bad \udcff bytes", ""])
def test_inits_failure_report_is_json_without_the_json_module(text):
    """init writes its failure report by hand (no json import in the box): every string a
    step error can carry must come back unchanged through json.loads and _statusline.parse."""
    from sandbox._statusline import encode_failure
    from sandbox._statusline import parse as parse_status_line

    obj = {"ok": False, "step": text, "errno": 13, "error": text, "x": None, "y": True}
    raw = encode_failure(obj)
    assert raw.isascii() and raw.count(b"\n") == 1 and raw.endswith(b"\n")
    assert json.loads(raw) == obj and parse_status_line(raw) == obj
    assert parse_status_line(b'{"ok": true, "wait_status": 256}\n') == {"ok": True,
                                                                        "wait_status": 256}


@pytest.mark.parametrize("raw", [
    b'{"ok": true, "wait_status": 0, "max_rss": "9e9"}', b'{"ok": true, "wait_status": 0, "max_rss": -5}',
    b'{"ok": true, "wait_status": 0, "max_rss": 1.5}', b'{"ok": true, "wait_status": 0, "max_rss": true}',
    b'{"ok": false, "step": "x", "max_rss": [1]}', b'{"ok": true, "wait_status": true}',
    b'{"ok": true, "wait_status": -1}', b'{"ok": true, "wait_status": 99999999999999999999}',
    b'{"ok": true, "wait_status": 0, "max_rss": }', b'{"ok": true, "wait_status": 65536}',
    b'{"ok": true, "wait_status": 0, "max_rss": 9999999999999999999}'])
def test_a_status_line_of_the_wrong_shape_is_no_report(raw):
    """The verdict compares max_rss with the memory limit and hands wait_status to os.WIF*: a
    line that json reads but whose values are not such integers is refused (no report, an XX
    verdict), never a TypeError or OverflowError in build_result."""
    from sandbox import Limits, _statusline, _verdict

    assert _statusline.parse(raw + b"\n") is None
    facts = _verdict.Facts(Limits.parse(memory="64M"), {"memory": "rlimit"}, 0.0,
                           status_line=raw + b"\n", init_wait_status=0)
    assert _verdict.build_result(facts).status.name == "XX"
    good = _statusline.encode_exit(256, 5 << 20)
    assert _statusline.parse(good) == {"ok": True, "wait_status": 256, "max_rss": 5 << 20}


# -- bad arguments fail in the caller, never inside the box -------------------------------------

def test_limits_take_what_users_write_and_refuse_the_rest_in_the_caller():
    assert Limits(memory="256M", wall_time="2s") == Limits.parse(memory="256M", wall_time="2s")
    assert Limits(memory="256M").memory == 256 << 20 and Limits(wall_time="500ms").wall_time == 0.5
    for bad, needle in ((dict(memory=[1]), "--memory: [1]"), (dict(pids="x"), "--pids: 'x'"),
                        (dict(wall_time=-1), "--wall-time: -1"), (dict(tmpfs_size=None), "--tmpfs-size")):
        with pytest.raises(ConfigError, match=re.escape(needle)):
            Limits(**bad)
    with pytest.raises(ConfigError, match="unknown limit 'memroy'"):
        Limits.parse(memroy="1G")


@pytest.mark.parametrize("argv,needle", [
    ("echo hi", "not a string: 'echo hi' (e.g. ['echo', 'hi']"),
    ([], "empty command"), (["echo", 3], "argument 3"), (["a\0b"], "NUL"), (5, "not int")])
def test_a_bad_command_is_one_error_in_the_caller(argv, needle):
    import trio

    import sandbox

    with pytest.raises(ConfigError, match=re.escape(needle)):
        sandbox.run_sync(argv)

    async def via_supervisor() -> None:
        async with sandbox.Supervisor() as sup:
            await sup.run(argv)

    with pytest.raises(ConfigError, match=re.escape(needle)):
        trio.run(via_supervisor)


def test_help_shows_the_fields_and_the_package_is_typed():
    import inspect
    import os

    import pytest_plugin
    import sandbox

    sig = inspect.signature(SandboxConfig)
    assert list(sig.parameters)[:3] == ["limits", "network", "mounts"]
    assert sig.parameters["cwd"].default == "/tmp"
    assert "memory: 'int | None' = 536870912" in str(inspect.signature(Limits))
    for pkg in (sandbox, pytest_plugin):  # PEP 561 marker, shipped as package data
        assert os.path.exists(os.path.join(os.path.dirname(pkg.__file__), "py.typed"))
    with open(os.path.join(os.path.dirname(os.path.dirname(sandbox.__file__)), "pyproject.toml")) as f:
        assert 'sandbox = ["py.typed"]' in f.read()
