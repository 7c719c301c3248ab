"""Sandbox configuration: typed, validated, and shippable as JSON to the launcher.

Everything a user can get wrong is checked here, before any namespace exists, so a bad value
becomes one clear line (``ConfigError``) instead of a half-made box. The same objects are turned
into plain dicts (``to_dict``/``from_dict``) to cross to the fork-server: JSON only, never pickle.
"""

from __future__ import annotations

import os

from sandbox._record import asdict, field, fields, record
from sandbox._units import (  # noqa: F401 - re-exported: this module was their home
    ConfigError,
    GiB,
    KiB,
    MiB,
    parse_count,
    parse_duration,
    parse_size,
)

TYPE_CHECKING = False  # typing costs ~5 ms of the CLI start; annotations are strings
if TYPE_CHECKING:
    from typing import Any, Literal

    MountKind = Literal["ro-bind", "bind", "overlay", "tmpfs"]
    NetworkMode = Literal["none", "host"]

# Defaults, documented in README ("Limits and defaults"). The output cap and the tmpfs size are
# never unlimited by default: a box must not be able to fill the host's memory through them.
DEFAULT_MEMORY = 512 * MiB
DEFAULT_PIDS = 256
DEFAULT_CPU_TIME = 60.0
DEFAULT_WALL_TIME = 60.0
DEFAULT_OUTPUT_LIMIT = 16 * MiB
DEFAULT_TMPFS_SIZE = 256 * MiB
DEFAULT_NOFILE = 1024
DEFAULT_FSIZE = 256 * MiB
DEFAULT_UID = 1000
DEFAULT_GID = 1000
DEFAULT_HOSTNAME = "sandbox"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"

# The smallest values a box can use. A size without a unit is bytes, so ``--memory 10`` (meant as
# 10M) asked for 10 bytes: the box then died as ML or SIGSEGV with nothing saying why. Below
# these the box cannot start its program, so the value is refused up front, naming the minimum.
# (The output cap has none: 0 or 1K is a real cap on what a program may print.)
MIN_MEMORY = 1 * MiB
MIN_TMPFS_SIZE = 1 * MiB  # /tmp, /dev/shm and every overlay's upper share it
MIN_FSIZE = 1 * KiB
MIN_PIDS = 2  # init and the program (measured: `--pids 1` fails the exec with EAGAIN)

_HOSTNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")


def command_argv(argv: Any) -> list[str]:
    """The command as a list of strings, or one ConfigError in the caller. A bare string is
    refused rather than iterated: ``run_sync("echo hi")`` used to run a program named ``e``."""
    if isinstance(argv, str | bytes):
        raise ConfigError(f"the command must be a list of arguments, not a string: {argv!r} "
                          f"(e.g. {str(argv).split()!r}, or ['sh', '-c', {argv!r}] for a shell line)")
    try:
        out = list(argv)
    except TypeError:
        raise ConfigError(f"the command must be a list of arguments, not {type(argv).__name__}") from None
    if not out:
        raise ConfigError("empty command: give the program to run, e.g. ['python3', '-c', 'print(1)']")
    for a in out:
        if not isinstance(a, str | bytes | os.PathLike) or "\0" in str(a):
            raise ConfigError(f"command argument {a!r} is not a string without NUL bytes")
    return [os.fsdecode(a) for a in out]


@record
class Limits:
    """Resource limits. ``None`` means unlimited where that is allowed."""

    memory: int | None = DEFAULT_MEMORY
    pids: int | None = DEFAULT_PIDS
    cpu_time: float | None = DEFAULT_CPU_TIME
    wall_time: float | None = DEFAULT_WALL_TIME
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    tmpfs_size: int = DEFAULT_TMPFS_SIZE
    nofile: int | None = DEFAULT_NOFILE
    fsize: int | None = DEFAULT_FSIZE
    cpus: float | None = None  # cgroup cpu.max share; None = no throttle
    swap: int = 0  # memory.swap.max when a cgroup enforces memory

    def __post_init__(self) -> None:
        """Accept what users write (``Limits(memory="256M", wall_time="2s")``) and refuse a value
        no box could use here, in the caller, as one ConfigError: a wrong type used to travel
        into the box and end as ``XX init: TypeError``."""
        for key in _LIMIT_FIELDS:
            setattr(self, key, _parse_limit(key, getattr(self, key)))

    @classmethod
    def parse(cls, **kw: Any) -> Limits:
        """Build from user-facing values (``memory="256M"``, ``wall_time="2s"``, ...); an unknown
        name is a ConfigError (the constructor would raise TypeError)."""
        for key in kw:
            if key not in _LIMIT_FIELDS:
                raise ConfigError(f"unknown limit {key!r}; valid: {', '.join(fields(cls))}")
        return cls(**kw)


_LIMIT_FIELDS = ("memory", "pids", "cpu_time", "wall_time", "output_limit", "tmpfs_size",
                 "nofile", "fsize", "cpus", "swap")


def _parse_limit(key: str, raw: Any) -> Any:
    what = "--" + key.replace("_", "-")
    if key == "swap" and raw in (0, None):
        return 0  # no swap: the default
    if key in ("memory", "fsize", "swap"):
        return parse_size(raw, what, minimum={"memory": MIN_MEMORY, "fsize": MIN_FSIZE}.get(key, 1))
    if key == "output_limit":  # 0 is a real cap (no output at all)
        return 0 if raw in (0, "0") else parse_size(raw, what, allow_none=False)
    if key == "tmpfs_size":
        return parse_size(raw, what, allow_none=False, minimum=MIN_TMPFS_SIZE)
    if key in ("cpu_time", "wall_time"):
        return parse_duration(raw, what)
    if key in ("pids", "nofile"):
        return parse_count(raw, what, minimum=MIN_PIDS if key == "pids" else 1)
    return _parse_cpus(raw)


def _parse_cpus(raw: Any) -> float | None:
    if raw is None:
        return None
    try:
        v = float(raw)
    except (TypeError, ValueError):
        v = -1.0
    if not 0.01 <= v <= 1024:
        raise ConfigError(f"--cpus {raw!r} is not a CPU share; use a number such as 0.5 or 2")
    return v


@record
class MountSpec:
    """One user-requested mount. ``source`` is a host path (None for tmpfs, or with ``fd``)."""

    kind: MountKind
    target: str
    source: str | None = None
    size: int | None = None  # tmpfs only
    # bind/ro-bind only, instead of ``source``: a directory fd the caller holds (a
    # sandbox._memdir tmpfs: writable space that outlives the box and touches no host disk)
    fd: int | None = None
    # overlay only: a unix socket (ours) on which the box's init sends an fd of the overlay's
    # upper directory, in the box's own tmpfs, so the host can list what the box changed
    # (sandbox.grading, through sandbox._safefs) with no upper on the host's disk
    upper_to: int | None = None

    @staticmethod
    def parse(kind: MountKind, arg: str) -> MountSpec:
        """What the CLI's ``--KIND ARG`` means: ``SRC[:DEST]``, or ``DEST[:SIZE]`` for tmpfs."""
        return parse_mount_arg(kind, arg)

    def validate(self) -> MountSpec:
        if self.kind not in ("ro-bind", "bind", "overlay", "tmpfs"):
            raise ConfigError(f"mount kind {self.kind!r} is not valid; use ro-bind, bind, overlay or tmpfs")
        target = _clean_box_path(self.target, f"--{self.kind} target")
        source = None
        if self.fd is not None:
            if self.kind not in ("ro-bind", "bind") or self.source is not None:
                raise ConfigError(f"--{self.kind} {target}: fd= is for binds without a source")
            _check_held_fd(self.fd, f"--{self.kind} {target}: fd", "a directory", 0o040000)
        elif self.kind != "tmpfs":
            if not self.source:
                raise ConfigError(f"--{self.kind}: a source path is required (SRC:DEST)")
            # Resolve the user's own path on the host once, here, so the child never follows a
            # symlink that could change between check and mount.
            source = os.path.realpath(os.path.expanduser(self.source))
            if not os.path.exists(source):
                raise ConfigError(f"--{self.kind} {self.source}: source does not exist on the host")
        if self.upper_to is not None:
            if self.kind != "overlay" or not os.path.isdir(source or ""):
                raise ConfigError(f"--{self.kind} {target}: upper_to= is for overlays of a directory")
            _check_held_fd(self.upper_to, f"--{self.kind} {target}: upper_to", "a unix socket", 0o140000)
        return MountSpec(self.kind, target, source, self.size, self.fd, self.upper_to)


def _check_held_fd(fd: object, what: str, kind: str, fmt: int) -> None:
    """A mount refers to a caller's fd: it must be open and of the file type ``fmt``."""
    try:
        ok = isinstance(fd, int) and not isinstance(fd, bool) and os.fstat(fd).st_mode & 0o170000 == fmt
    except OSError:
        ok = False
    if not ok:
        raise ConfigError(f"{what} {fd!r} must be an open file descriptor of {kind}")


def _clean_box_path(path: str, what: str) -> str:
    if not path or not path.startswith("/"):
        raise ConfigError(f"{what} {path!r}: must be an absolute path inside the box (e.g. /data)")
    norm = os.path.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if any(part == ".." for part in norm.split("/")):
        raise ConfigError(f"{what} {path!r}: '..' is not allowed")
    if norm in ("/", "/proc", "/dev") or norm.startswith(("/proc/", "/dev/")):
        raise ConfigError(f"{what} {path!r}: cannot mount over /, /proc or /dev (managed by the sandbox)")
    return norm


def _check_host(name: str, addr: str) -> None:
    import ipaddress

    if not name or len(name) > 64 or not _HOSTNAME_CHARS.issuperset(name):
        raise ConfigError(f"--add-host {name!r} is not a valid name; use letters, digits, '.' and '-' (max 64)")
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise ConfigError(f"--add-host {name}:{addr}: {addr!r} is not an IP address (e.g. 10.89.0.2)") from None


def split_host_port(item: str) -> tuple[str, int]:
    """``"NAME:PORT"`` of ``allow_hosts`` → (NAME, PORT), or a ConfigError naming it."""
    name, sep, port = str(item).rpartition(":")
    if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536 \
            or len(name) > 253 or not _HOSTNAME_CHARS.issuperset(name):
        raise ConfigError(f"--allow-host {item!r} is not valid; use NAME:PORT with a host name or "
                          "IPv4 address and a port from 1 to 65535 (e.g. pypi.org:443)")
    if name.startswith("127.") or name == "localhost":
        raise ConfigError(f"--allow-host {item!r}: that is the box's own loopback; allow a name "
                          "or address the host reaches instead")
    return name, int(port)


# The caller's variables a box may inherit (``SandboxConfig.inherit_env``'s default): none that
# could carry a secret (tokens, credentials, paths of the host).
ENV_ALLOWLIST = ("TERM", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


@record
class SandboxConfig:
    """Everything that defines one box. Build with keywords; call ``validate()`` (the entry points do)."""

    limits: Limits = field(default_factory=Limits)
    network: NetworkMode = "none"
    mounts: list[MountSpec] = field(default_factory=list)
    cwd: str = "/tmp"
    env: dict[str, str] = field(default_factory=dict)
    inherit_env: tuple[str, ...] = ENV_ALLOWLIST
    uid: int = DEFAULT_UID
    gid: int = DEFAULT_GID
    hostname: str = DEFAULT_HOSTNAME
    hosts: dict[str, str] = field(default_factory=dict)  # name → IP, added to /etc/hosts (--add-host)
    allow_hosts: tuple[str, ...] = ()  # "NAME:PORT" the box may connect to, nothing else (--allow-host)
    seccomp: str = "default"  # policy name: "default" | "none" (debugging only)
    seccomp_allow: tuple[str, ...] = ()  # syscalls to relax per box
    seccomp_deny: tuple[str, ...] = ()  # extra syscalls to deny per box
    landlock: bool = False
    # The running Python's prefixes outside /usr, read-only overlays (sandbox._pyprefix.exposed):
    # True the installation at /opt/python, "venv" a venv too at /opt/venv (no host path in
    # the mounts), "host" both at the host's own paths (a clone of the caller: @sandboxed)
    expose_python: bool | Literal["venv", "host"] = True
    require_cgroup: bool = False
    use_cgroup: bool = True
    id_map: Literal["auto", "single", "range"] = "auto"
    image: str | None = None  # NAME[:TAG] of the image store: the box's root (sandbox._image_root)

    def validate(self) -> SandboxConfig:
        if self.network not in ("none", "host"):
            raise ConfigError(f"--net {self.network!r} is not valid; use none or host")
        for what, v in (("uid", self.uid), ("gid", self.gid)):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 65534:
                raise ConfigError(f"--{what} {v!r} is not valid; use a number from 0 to 65533")
        if not self.hostname or len(self.hostname) > 64 or not _HOSTNAME_CHARS.issuperset(self.hostname):
            raise ConfigError(f"--hostname {self.hostname!r} is not valid; use letters, digits, '.' and '-' (max 64)")
        for name, addr in self.hosts.items():
            _check_host(name, addr)
        self.allow_hosts = tuple(self.allow_hosts)
        for item in self.allow_hosts:
            split_host_port(item)
        if self.allow_hosts and self.network != "none":
            raise ConfigError("--allow-host needs --net none (the default): with the host's network "
                              "every destination is open")
        if not self.cwd.startswith("/"):
            raise ConfigError(f"--cwd {self.cwd!r}: must be an absolute path inside the box")
        if self.expose_python not in (True, False, "venv", "host"):
            raise ConfigError(f"expose_python {self.expose_python!r} is not valid; use True (the "
                              "installation at /opt/python), 'venv' (and the venv at /opt/venv), "
                              "'host' (both at the host's paths) or False")
        if self.seccomp not in ("default", "none"):
            raise ConfigError(f"--seccomp {self.seccomp!r} is not valid; use default or none")
        for k in self.env:
            if not k or "=" in k or "\0" in k:
                raise ConfigError(f"--env {k!r}: not a valid variable name")
        if self.seccomp_allow or self.seccomp_deny:
            from sandbox._seccomp import policy_for  # pyseccomp: only when a box asks for it

            try:
                policy_for(self.seccomp, tuple(self.seccomp_allow), tuple(self.seccomp_deny))
            except ValueError as e:
                raise ConfigError(str(e)) from None
        mounts = [m.validate() for m in self.mounts]
        seen: dict[str, str] = {}
        for m in mounts:
            if m.target in seen:
                raise ConfigError(f"mount target {m.target} is used twice ({seen[m.target]} and --{m.kind}); give each mount its own target")
            seen[m.target] = f"--{m.kind}"
        self.mounts = mounts
        if self.image is not None:  # its Env and WorkingDir; an unknown image is a ConfigError
            from sandbox._image_root import apply_config

            apply_config(self)
        return self

    # -- JSON round trip (to the launcher; never pickle) --------------------------------------
    def holds_fds(self) -> bool:
        """Whether a mount holds one of our fds (``fd=``, ``upper_to=``): only this process can
        run such a box (no launcher: the numbers mean nothing in another process)."""
        return any(m.fd is not None or m.upper_to is not None for m in self.mounts)

    def to_dict(self) -> dict[str, Any]:
        if self.holds_fds():
            raise ConfigError("mounts holding file descriptors (fd=, upper_to=) only work in the "
                              "process that holds them (sandbox._direct, the pytest fixture, grading)")
        return asdict(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SandboxConfig:
        d = dict(d)
        d["limits"] = Limits(**d.get("limits", {}))
        d["mounts"] = [MountSpec(**m) for m in d.get("mounts", [])]
        for k in ("inherit_env", "seccomp_allow", "seccomp_deny", "allow_hosts"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def parse_mount_arg(kind: MountKind, arg: str) -> MountSpec:
    """CLI ``SRC[:DEST]`` (or ``DEST[:SIZE]`` for tmpfs) → MountSpec. Without DEST the source
    appears at its own absolute path, a relative one resolved against our cwd (as nsjail's
    ``-R .``): ``--ro-bind .`` used to ask for a mount at ``.``, refused as not absolute."""
    if kind == "tmpfs":
        dest, _, size = arg.partition(":")
        return MountSpec("tmpfs", dest, None, parse_size(size, "--tmpfs size") if size else None)
    src, sep, dest = arg.partition(":")
    if not sep and src:
        dest = os.path.abspath(os.path.expanduser(src))
    return MountSpec(kind, dest, src)
