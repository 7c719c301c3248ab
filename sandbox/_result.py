"""The verdict of one box: status, usage, and which mechanism enforced each limit.

Every field here is filled by the supervisor from kernel facts (wait status, rusage, cgroup
files, its own byte counters); nothing the boxed program says about itself is trusted.
"""

from __future__ import annotations

from sandbox._record import field, record

TYPE_CHECKING = False  # no typing import at run time (CLI start)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Literal

    # "seccomp": refused outright (memfd under the RLIMIT_AS fallback: nothing could count it)
    # "rlimit+supervisor": cpu_time under the fallback, RLIMIT_CPU per process and the
    # supervisor's watch of the whole box (sandbox/_cpuwatch.py)
    Mechanism = Literal["cgroup", "rlimit", "rlimit+supervisor", "supervisor", "tmpfs", "seccomp",
                        "none"]



class _StatusType(type):
    """Lets ``Status`` be iterated and tested like the enum it stands in for."""

    _members: dict[str, Status]

    def __iter__(cls) -> Iterator[Status]:
        return iter(cls._members.values())

    def __len__(cls) -> int:
        return len(cls._members)

    def __contains__(cls, value: object) -> bool:
        return value in cls._members


class Status(str, metaclass=_StatusType):
    """The verdict's status: a ``str`` (``Status.OK == "OK"``, JSON-ready) with one instance
    per value, so ``result.status is Status.OK`` holds. ``Status("OK")`` returns that instance
    and raises ValueError for anything else. Not an ``enum.StrEnum``: importing enum (with
    functools, collections, ...) is ~3 ms of the CLI's cold start. ``.value``/``.name`` and
    iteration behave as the enum's would."""

    __slots__ = ()
    OK: Status  # exited 0
    RE: Status  # exited non-zero
    SG: Status  # killed by a signal (not one of ours)
    TO: Status  # wall time or CPU time limit
    ML: Status  # memory limit
    OL: Status  # output limit
    XX: Status  # the sandbox itself failed (reason in Result.error)

    def __new__(cls, value: str) -> Status:
        try:
            return cls._members[value]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not a valid Status") from None

    @property
    def value(self) -> str:
        return str.__str__(self)

    @property
    def name(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"<Status.{str.__str__(self)}: {str.__repr__(self)}>"

    def __str__(self) -> str:
        return str.__str__(self)

    def __reduce__(self) -> tuple[type[Status], tuple[str]]:
        return (Status, (str.__str__(self),))


Status._members = {}
for _v in ("OK", "RE", "SG", "TO", "ML", "OL", "XX"):
    Status._members[_v] = str.__new__(Status, _v)
    setattr(Status, _v, Status._members[_v])
del _v


@record
class Result:
    """The verdict of one box (see the README): built from kernel facts by sandbox._verdict."""

    status: Status
    exit_code: int | None = None
    signal: int | None = None
    wall_time: float = 0.0
    cpu_time: float = 0.0
    peak_memory: int | None = None  # bytes
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    error: str | None = None  # XX reason: "step: message (errno N)"
    error_step: str | None = None
    errno: int | None = None
    reason: str | None = None  # human summary for non-OK statuses ("wall time 2s exceeded")
    enforcement: dict[str, Mechanism] = field(default_factory=dict)
    # limit → why no cgroup holds it, for each set limit a cgroup would hold (memory, pids,
    # cpus, cpu_time; memfd and kernel_buffers with memory) that fell back: empty when all held
    fallback_reasons: dict[str, str] = field(default_factory=dict)
    seccomp_policy: str | None = None
    landlock: bool = False
    cgroup: dict[str, Any] | None = None  # raw cgroup figures where a cgroup was used
    # bytes the program wrote to each stream within the output cap: also when they were
    # streamed (``on_output``, the CLI) and ``stdout``/``stderr`` kept none; None → their length
    stdout_bytes: int | None = None
    stderr_bytes: int | None = None
    # a box with allow_hosts: its connection attempts out, as the network's hub counted them
    # ({"allowed": N, "refused": N, "refused_to": ["NAME:PORT" | "udp IP:PORT", ...]})
    egress: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.stdout_bytes is None:
            self.stdout_bytes = len(self.stdout)
        if self.stderr_bytes is None:
            self.stderr_bytes = len(self.stderr)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def cli_exit_code(self) -> int:
        """Exit code for ``sandbox run``: the program's own, 128+signal, or docker-like 125/126/127."""
        if self.status is Status.XX:
            if self.error_step == "exec":
                return 127 if self.errno == 2 else 126
            return 125
        if self.exit_code is not None:
            return self.exit_code
        if self.signal is not None:
            return 128 + self.signal
        return 125

    def fallback_note(self) -> str:
        """For the CLI's verdict line: when the limit behind an ML or TO verdict was held by a
        fallback, which one and why no cgroup held it ("" otherwise)."""
        limit = {"ML": "memory", "TO": "cpu_time"}.get(self.status.value, "")
        if limit == "cpu_time" and "CPU time" not in (self.reason or ""):
            return ""  # a wall-time TO: the supervisor's timer, no fallback involved
        why = self.fallback_reasons.get(limit)
        return f"{limit} held by {self.enforcement.get(limit, 'none')}: {why}" if why else ""

    def to_dict(self, *, include_output: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "status": self.status.value,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "wall_time": round(self.wall_time, 6),
            "cpu_time": round(self.cpu_time, 6),
            "peak_memory": self.peak_memory,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
            "stdout_bytes": self.stdout_bytes,
            "stderr_bytes": self.stderr_bytes,
            "reason": self.reason,
            "error": self.error,
            "error_step": self.error_step,
            "errno": self.errno,
            "enforcement": dict(self.enforcement),
            "fallback_reasons": dict(self.fallback_reasons),
            "seccomp_policy": self.seccomp_policy,
            "landlock": self.landlock,
        }
        if self.cgroup is not None:
            d["cgroup"] = self.cgroup
        if self.egress is not None:
            d["egress"] = self.egress
        if include_output:
            for name, data in (("stdout", self.stdout), ("stderr", self.stderr)):
                d[name], d[f"{name}_encoding"] = _text(data)
        return d


def _text(data: bytes) -> tuple[str, str]:
    """A stream for JSON, losslessly: its text when it is valid UTF-8, else base64 (decoding
    with "replace" turned every invalid byte into U+FFFD: a binary output could not be had
    back). binascii, not base64: that module imports struct and re."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        import binascii

        return binascii.b2a_base64(data, newline=False).decode("ascii"), "base64"
