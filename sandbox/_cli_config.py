"""``sandbox run``'s options → a ``SandboxConfig``, and the one warning line about limits no
cgroup will hold. Split from ``sandbox/_cli.py`` (its option table and commands) to keep each
module short; like every ``_cli_*`` module it imports only the public ``sandbox`` package.

The docker/bwrap habits live here: ``-e NAME`` (the caller's value), ``--env-file``,
``-v SRC:DEST[:ro]``. Every mistake is a ``ConfigError``: one line, exit 2.
"""

from __future__ import annotations

import os

from sandbox import ConfigError, Limits, MountSpec, SandboxConfig

TYPE_CHECKING = False  # no typing import at run time (CLI start)
if TYPE_CHECKING:
    from sandbox._cli_options import Args

LIMIT_OPTIONS = ("memory", "pids", "cpu_time", "wall_time", "output_limit", "tmpfs_size",
                 "nofile", "fsize", "cpus")
# What each limit a cgroup would hold becomes without one (README: "Limits and defaults")
WITHOUT_CGROUP = {"cpus": "is not enforced at all", "memory": "is an address-space rlimit",
                  "pids": "is an RLIMIT_NPROC", "cpu_time": "is RLIMIT_CPU and a watch"}


def config_from_args(a: Args) -> SandboxConfig:
    limits = Limits.parse(**{k: getattr(a, k) for k in LIMIT_OPTIONS if getattr(a, k) is not None})
    mounts = [MountSpec.parse(kind, arg) for kind in ("ro-bind", "bind", "overlay", "tmpfs")
              for arg in getattr(a, kind.replace("-", "_"))]
    mounts += [volume(arg) for arg in a.volume]
    cfg = SandboxConfig(limits=limits, network=a.net, mounts=mounts, cwd=a.cwd, env=env_from(a),
                        hostname=a.hostname, require_cgroup=a.require_cgroup, id_map=a.id_map,
                        landlock=a.landlock, image=a.image, hosts=hosts_from(a.add_host),
                        allow_hosts=tuple(a.allow_host))
    if a.seccomp is not None:
        cfg.seccomp = a.seccomp
    if a.uid is not None:
        cfg.uid = a.uid
    if a.gid is not None:
        cfg.gid = a.gid
    return cfg.validate()


def _passed(name: str, what: str) -> str:
    """``-e NAME``: the caller's own value of NAME; unset, it is an error rather than an empty
    or missing variable the program would trip over later."""
    value = os.environ.get(name)
    if value is None:
        raise ConfigError(f"{what}: {name} is not set here, so there is no value to pass; "
                          f"give {name}=VALUE")
    return value


def hosts_from(items: list[str]) -> dict[str, str]:
    hosts: dict[str, str] = {}
    for item in items:
        name, sep, addr = item.partition(":")
        if not sep:
            raise ConfigError(f"--add-host {item!r}: use NAME:IP (e.g. db:10.89.0.2)")
        hosts[name] = addr
    return hosts


def env_from(a: Args) -> dict[str, str]:
    """``--env-file`` files in order, then ``--env`` (docker's precedence: -e wins)."""
    env: dict[str, str] = {}
    for path in a.env_file:
        env.update(read_env_file(path))
    for item in a.env:
        name, sep, value = item.partition("=")
        if not name or any(c.isspace() for c in name):
            raise ConfigError(f"--env {item!r}: use NAME=VALUE, or NAME to pass your value")
        env[name] = value if sep else _passed(name, f"--env {item!r}")
    return env


def read_env_file(path: str) -> dict[str, str]:
    """docker's ``--env-file`` format: ``NAME=VALUE`` lines taken verbatim (no quotes, no
    expansion), ``#`` comment lines, blank lines, ``NAME`` alone = the caller's value."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"--env-file {path!r}: {e.strerror}; give a readable file of "
                          "NAME=VALUE lines") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--env-file {path!r}: not UTF-8 text; give NAME=VALUE lines") from None
    env: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        text = line.lstrip()
        if not text or text.startswith("#"):
            continue
        name, sep, value = text.partition("=")
        if not name or any(c.isspace() for c in name) or "\0" in line:
            raise ConfigError(f"--env-file {path}:{n}: {line!r} is not NAME=VALUE (no spaces "
                              "in NAME)")
        env[name] = value if sep else _passed(name, f"--env-file {path}:{n}")
    return env


def volume(arg: str) -> MountSpec:
    """docker's ``-v SRC:DEST[:ro|rw]`` → a bind (``rw``, the default) or a read-only bind."""
    parts = arg.split(":")
    mode = parts.pop() if len(parts) > 1 and parts[-1] in ("ro", "rw") else "rw"
    if len(parts) > 2 or not parts[0] or any(p == "" for p in parts):
        raise ConfigError(f"-v {arg!r}: use SRC:DEST, SRC:DEST:ro or SRC:DEST:rw")
    return MountSpec.parse("ro-bind" if mode == "ro" else "bind", ":".join(parts))


def unheld_warning(a: Args, cfg: SandboxConfig) -> str:
    """One line for the limits the user set that no cgroup will hold here ("" if none): the
    run falls back to rlimits, which hold them differently, and ``--cpus`` not at all. Only
    for limits given on the command line (the defaults' fallback is documented, and a warning
    on every run would be noise), never with ``--require-cgroup`` (that is already an error).
    The check opens this process's cgroup subtree, as the box's start would next."""
    given = [k for k in WITHOUT_CGROUP if getattr(a, k) is not None]
    if not given or cfg.require_cgroup:
        return ""
    import sandbox

    reasons = sandbox.cgroup_fallbacks(cfg)
    by_reason: dict[str, list[str]] = {}
    for k in given:
        if k in reasons:
            opt = "--" + k.replace("_", "-")
            by_reason.setdefault(reasons[k], []).append(f"{opt} {getattr(a, k)} "
                                                        f"{WITHOUT_CGROUP[k]}")
    if not by_reason:
        return ""
    what = "; ".join(f"{', '.join(v)} (no cgroup: {why})" for why, v in by_reason.items())
    return (f"sandbox: warning: {what}; --require-cgroup makes this an error, -q hides "
            "this line\n")
