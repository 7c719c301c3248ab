"""Strict validation of the test reports a box sends back, before pytest ever sees them.

Why this exists: pytest's own ``pytest_report_from_serializable`` trusts its input (it was
written for xdist workers, which are trusted). Fed crafted JSON it builds reports whose fields
have the wrong types, or whose extra keys shadow report *methods* through the instance dict,
and pytest then crashes later while printing them. So every field is checked against the
exact shape pytest produces (types, allowed values, sizes) first; after rebuilding, the report
is rendered once as a trial. Anything unexpected → ``InvalidReport``, and the caller turns
that into a plain failure ("sandbox: test process sent an invalid report").
"""

from __future__ import annotations

import json
import keyword
import math
import re
from collections.abc import Callable
from typing import Any

import pytest

MAX_CHANNEL = 32 * 1024 * 1024  # bytes read from the box's report channel, at most
MAX_ITEMS = 100_000  # entries in any one list (traceback lines, sections, keywords)
MAX_VALUES = 2_000_000  # JSON values and keys on the channel, at most (see _values)
STYLES = ("long", "short", "line", "no", "native", "value", "auto")
PHASES = ("setup", "call", "teardown")
KNOWN = {"nodeid", "location", "keywords", "outcome", "longrepr", "when", "user_properties",
         "sections", "duration", "start", "stop", "$report_type", "wasxfail"}
SCALAR = (str, int, float, bool, type(None))
SUBTEST_TYPE = "SubTestReport"  # pytest's subtests plugin marks its reports so (``_report_type``)
SUBTEST_KEYS = {"_report_type", "_subtest.context"}
MAX_SUBTESTS = 10_000  # subtest reports accepted from one test


class InvalidReport(ValueError):
    """The box's report data is not exactly what pytest would have produced."""


Check = Callable[[Any, str], None]


def _fail(where: str, what: str) -> None:
    raise InvalidReport(f"{where}: {what}")


def is_(*types: type) -> Check:
    def check(v: Any, where: str) -> None:
        # bool is an int subclass: accept it only where bool itself is allowed
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            _fail(where, f"expected {'/'.join(t.__name__ for t in types)}")
        if isinstance(v, float) and not math.isfinite(v):
            _fail(where, "not a finite number")
    return check


def one_of(*values: str) -> Check:
    def check(v: Any, where: str) -> None:
        if v not in values:
            _fail(where, f"expected one of {values}")
    return check


def list_of(item: Check, *, length: int | None = None) -> Check:
    def check(v: Any, where: str) -> None:
        if not isinstance(v, list) or len(v) > MAX_ITEMS or (length is not None and len(v) != length):
            _fail(where, "expected a list" + (f" of {length}" if length is not None else ""))
        for i, x in enumerate(v):
            item(x, f"{where}[{i}]")
    return check


def tuple_of(*items: Check) -> Check:
    def check(v: Any, where: str) -> None:
        if not isinstance(v, list) or len(v) != len(items):
            _fail(where, f"expected a list of {len(items)}")
        for i, (x, c) in enumerate(zip(v, items, strict=True)):
            c(x, f"{where}[{i}]")
    return check


def obj(fields: dict[str, Check]) -> Check:
    def check(v: Any, where: str) -> None:
        if not isinstance(v, dict) or set(v) != set(fields):
            _fail(where, f"expected exactly the keys {sorted(fields)}")
        for k, c in fields.items():
            c(v[k], f"{where}.{k}")
    return check


def maybe(inner: Check) -> Check:
    def check(v: Any, where: str) -> None:
        if v is not None:
            inner(v, where)
    return check


STR, INT, NUM = is_(str), is_(int), is_(int, float)
CRASH = obj({"path": STR, "lineno": INT, "message": STR})
LINES = list_of(STR)
ENTRY_DATA = obj({"lines": LINES, "reprfuncargs": maybe(obj({"args": list_of(tuple_of(STR, is_(*SCALAR)))})),
                  "reprlocals": maybe(obj({"lines": LINES})), "reprfileloc": maybe(CRASH),
                  "style": one_of(*STYLES)})


def _entry(v: Any, where: str) -> None:
    if not isinstance(v, dict) or set(v) != {"type", "data"}:
        _fail(where, "expected a traceback entry")
    if v["type"] == "ReprEntry":
        ENTRY_DATA(v["data"], where + ".data")
    elif v["type"] == "ReprEntryNative":
        obj({"lines": LINES})(v["data"], where + ".data")
    else:
        _fail(where, "unknown traceback entry type")


TRACEBACK = obj({"reprentries": list_of(_entry), "extraline": maybe(STR), "style": one_of(*STYLES)})
SECTION = tuple_of(STR, STR)


def _exc_section(v: Any, where: str) -> None:
    (tuple_of(STR, STR, STR) if isinstance(v, list) and len(v) == 3 else SECTION)(v, where)


EXC_LONGREPR = obj({"reprcrash": maybe(CRASH), "reprtraceback": TRACEBACK,
                    "sections": list_of(_exc_section),
                    "chain": maybe(list_of(tuple_of(TRACEBACK, maybe(CRASH), maybe(STR))))})


def _longrepr(v: Any, where: str) -> None:
    if v is None or isinstance(v, str):
        return
    if isinstance(v, list):  # a skip: (path, lineno, reason); JSON has no tuples
        tuple_of(STR, maybe(INT), STR)(v, where)
    elif isinstance(v, dict):
        EXC_LONGREPR(v, where)
    else:
        _fail(where, "unexpected type")


FIELDS: dict[str, Check] = {
    "nodeid": STR, "location": tuple_of(STR, maybe(INT), STR),
    "keywords": lambda v, w: (isinstance(v, dict) and len(v) <= MAX_ITEMS
                              and all(isinstance(x, SCALAR) for x in v.values())) or _fail(w, "bad keywords"),
    "outcome": one_of("passed", "failed", "skipped"), "longrepr": _longrepr,
    "when": one_of(*PHASES), "user_properties": list_of(tuple_of(STR, is_(*SCALAR))),
    "sections": list_of(SECTION), "duration": NUM, "start": NUM, "stop": NUM,
    "$report_type": one_of("TestReport"), "wasxfail": STR,
}
_REPORT_ATTRS = set(dir(pytest.TestReport))


def _extra_ok(key: str, value: Any) -> bool:
    """A plugin-added report attribute (``rep.foo = 1``) survives only as a plain scalar whose
    name cannot shadow anything a report has (``_get_verbose_word_with_markup``...)."""
    return (key.isidentifier() and not keyword.iskeyword(key) and not key.startswith("_")
            and key not in _REPORT_ATTRS and len(key) <= 64 and isinstance(value, SCALAR)
            and not (isinstance(value, str) and len(value) > 65536))


def _context(v: Any, where: str) -> None:
    """A subtest's ``msg`` and ``kwargs``: pytest turns every kwarg value into its repr (a str)."""
    obj({"msg": lambda m, w: isinstance(m, SCALAR) and not (isinstance(m, str) and len(m) > 65536)
         or _fail(w, "expected a scalar"),
         "kwargs": lambda k, w: (isinstance(k, dict) and len(k) <= 1000
                                 and all(isinstance(x, str) and len(x) <= 65536 for x in k.values()))
         or _fail(w, "expected an object of strings")})(v, where)


def claims_subtest(d: Any) -> bool:
    """A serialized report that says it is a subtest's (``check_report`` holds it to that)."""
    return isinstance(d, dict) and "_report_type" in d


def check_report(d: Any, nodeid: str, location: tuple[str, int | None, str], when: str) -> dict[str, Any]:
    """Validate one serialized report of the test at ``nodeid`` and ``location`` (the failure
    header, ``-v``'s line and JUnit's file and line are the location's, so a box could name
    another test there); returns the dict with unsafe extras dropped. A subtest
    report (``claims_subtest``) has exactly the shape pytest's subtests plugin gives it: a "call"
    report without ``$report_type``, marked ``_report_type: SubTestReport``, with a context."""
    if not isinstance(d, dict):
        _fail("report", "not an object")
    expected = KNOWN - {"wasxfail"}
    if claims_subtest(d):
        if d["_report_type"] != SUBTEST_TYPE or "$report_type" in d:
            _fail("_report_type", f"expected {SUBTEST_TYPE!r} (and no $report_type)")
        _context(d.get("_subtest.context"), "_subtest.context")
        expected = (expected - {"$report_type"}) | SUBTEST_KEYS
    missing = expected - set(d)
    if missing:
        _fail("report", f"missing {sorted(missing)}")
    for key, check in FIELDS.items():
        if key in d:
            check(d[key], key)
    if d["nodeid"] != nodeid:
        _fail("nodeid", f"{d['nodeid'][:200]!r} is not this test")
    if d["location"] != list(location):
        _fail("location", f"{str(d['location'])[:200]} is not this test's")
    if d["when"] != when:
        _fail("when", f"expected the {when} phase")
    # pytest's skip summary and JUnit writer assert these shapes: anything else crashed the host
    if d["outcome"] == "skipped" and "wasxfail" not in d and not isinstance(d["longrepr"], list):
        _fail("longrepr", "a skip's is [path, lineno, reason]")
    if d["outcome"] == "failed" and d["longrepr"] is None:
        _fail("longrepr", "a failure has one")
    return {k: v for k, v in d.items() if k in expected or k == "wasxfail" or _extra_ok(k, v)}


def _no_constants(name: str) -> float:
    raise InvalidReport(f"{name} is not valid in a report")


# one match: a run of strings and other non-structural bytes (possessive: no backtracking), then
# the structural byte that ends it (an unpaired quote, or the end of the data)
_VALUE = re.compile(rb'(?:[^,:\[{\n"]++|"[^"]*+")*+(?:[,:\[{\n"]|\Z)')


def _values(data: bytes) -> int:
    """An upper bound on the values and keys the channel's JSON would parse into, counted
    before parsing (up to just over MAX_VALUES): ``[{},{},...]`` is 3 bytes a value on the
    channel but some 60 bytes of Python objects, so the size cap alone let 32 MiB of channel
    cost the host most of a GiB. Every value or key follows a ``,``, ``:``, ``[``, ``{`` or
    (a line's first) a newline. The raw count of those bytes also counts the ones inside
    strings; a channel over the limit is counted again outside its strings (escaped
    backslashes and quotes removed first: in JSON that parses, the quotes left delimit its
    strings). Linear in the data, in C but for one step per value counted."""
    n = sum(data.count(b) for b in (b",", b":", b"[", b"{", b"\n")) + 1
    if n <= MAX_VALUES:
        return n
    n = 0
    for n, _ in enumerate(_VALUE.finditer(data.replace(b"\\\\", b"").replace(b'\\"', b"")), 1):
        if n > MAX_VALUES:
            break
    return n


def parse_lines(data: bytes) -> list[Any]:
    """The channel holds one JSON value per line; parse them (no NaN/Infinity)."""
    if len(data) > MAX_CHANNEL:
        raise InvalidReport(f"more than {MAX_CHANNEL >> 20} MiB")
    if _values(data) > MAX_VALUES:
        raise InvalidReport(f"more than {MAX_VALUES} JSON values")
    out = []
    for line in data.split(b"\n"):
        if line.strip():
            try:
                out.append(json.loads(line, parse_constant=_no_constants))
            except (ValueError, RecursionError) as e:
                raise InvalidReport(f"not JSON ({str(e)[:80]})") from None
    return out


def rebuild(config: Any, d: dict[str, Any]) -> pytest.TestReport:
    """Validated dict → TestReport, then a trial rendering so printing it later cannot fail."""
    try:
        rep = config.hook.pytest_report_from_serializable(config=config, data=d)
        if not isinstance(rep, pytest.TestReport):
            _fail("report", "not rebuilt as a TestReport")
        if claims_subtest(d) != (type(rep).__name__ == "SubtestReport"):
            _fail("report", "not rebuilt as the report type it claims")
        if claims_subtest(d):  # rebuilding repr()s the kwargs' reprs again: i='1' for i=1
            object.__setattr__(rep.context, "kwargs", dict(d["_subtest.context"]["kwargs"]))
        rep.location = tuple(rep.location)
        if isinstance(rep.longrepr, list):
            rep.longrepr = tuple(rep.longrepr)
        rep.user_properties = [tuple(p) for p in rep.user_properties]
        rep.sections = [tuple(s) for s in rep.sections]
        if rep.longrepr is not None:
            rep.longreprtext  # noqa: B018 - renders the whole longrepr once
        rep.head_line  # noqa: B018 - a subtest's renders its context
    except InvalidReport:
        raise
    except Exception as e:  # noqa: BLE001 - whatever pytest chokes on is an invalid report
        raise InvalidReport(f"pytest cannot use it ({type(e).__name__})") from None
    return rep
