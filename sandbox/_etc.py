"""The box's /etc: a few files of the host's, copied (the parent half reads them: ``plan_files``),
synthesized passwd/group/hosts, and the host directories a program needs (certificates,
alternatives) shown through a read-only overlay (the child half: ``write_files``, ``mount_view``).

Why an overlay and not a bind: a bind shows the host's own inodes, so an inotify watch in the
box sees every access host processes make to them (a side channel); an overlay inode does not
get the events of the lower file it shows.
"""

from __future__ import annotations

import errno
import os
import stat

from sandbox import _syscalls as sc
from sandbox._config import SandboxConfig

ETC_COPY = ("ld.so.cache", "ld.so.conf", "host.conf", "protocols", "services", "debian_version",
            "mime.types", "localtime", "os-release", "timezone")
ETC_VIEW = ("alternatives", "ld.so.conf.d", "ssl", "ca-certificates")

def plan_files(cfg: SandboxConfig) -> dict[str, bytes | tuple[str, str]]:
    files: dict[str, bytes | tuple[str, str]] = {
        "passwd": (f"root:x:0:0:root:/root:/bin/sh\n"
                   f"sandbox:x:{cfg.uid}:{cfg.gid}:sandbox:/tmp:/bin/sh\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n").encode(),
        "group": (f"root:x:0:\nsandbox:x:{cfg.gid}:\nnogroup:x:65534:\n").encode(),
        "hostname": f"{cfg.hostname}\n".encode(),
        "hosts": (f"127.0.0.1 localhost{'' if cfg.hostname in cfg.hosts else ' ' + cfg.hostname}\n"
                  "::1 localhost ip6-localhost\n"
                  + "".join(f"{addr} {name}\n" for name, addr in cfg.hosts.items())).encode(),
        "nsswitch.conf": b"passwd: files\ngroup: files\nhosts: files dns\nservices: files\n",
    }
    names = ETC_COPY + (("resolv.conf",) if cfg.network == "host" else ())
    for name in names:
        got = host_file("/etc/" + name)
        if got is not None:
            files[name] = got
    return files


# path → (identity of the file when read, what we read); a grader plans hundreds of boxes
_ETC_CACHE: dict[str, tuple[tuple[int, ...], bytes]] = {}


def host_file(p: str) -> bytes | tuple[str, str] | None:
    """A host /etc file's bytes (or its symlink), re-read only when it changed.

    Opened with O_NOFOLLOW (a symlink is copied as a symlink: ELOOP) and O_NONBLOCK (a FIFO
    put there cannot hang the box start; anything but a regular file is skipped)."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno != errno.ELOOP:
            return None
        try:
            return ("symlink", os.readlink(p))
        except OSError:
            return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        ident = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        hit = _ETC_CACHE.get(p)
        if hit is not None and hit[0] == ident:
            return hit[1]
        got = os.read(fd, min(st.st_size, 1 << 20))  # small files; bounded all the same
    except OSError:
        return None
    finally:
        os.close(fd)
    _ETC_CACHE[p] = (ident, got)
    return got


def write_files(files: dict[str, bytes | tuple[str, str]]) -> None:
    for name, content in files.items():
        p = "/newroot/etc/" + name
        if isinstance(content, tuple):
            os.symlink(content[1], p)
            continue
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)


def mount_view() -> str:
    """Mount the read-only overlay of /etc that ``etc-view`` binds come from (no upper: two lower
    layers); returns where it is, or the host's /etc where the kernel refuses it."""
    os.mkdir("/scratch/empty")
    os.mkdir("/scratch/etc")
    try:
        sc.mount("overlay", "/scratch/etc", "overlay", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV,
                 "lowerdir=/oldroot/etc:/scratch/empty,userxattr")
    except OSError as e:  # as _overlay: refused on some kernels, a read-only bind instead
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        return "/oldroot/etc"
    return "/scratch/etc"
