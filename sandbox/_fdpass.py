"""JSON messages with file descriptors attached (SCM_RIGHTS) over unix sockets: the protocol
between supervisor, launcher and a warm box's init (docs/architecture.md).

Received fds are always close-on-exec (``MSG_CMSG_CLOEXEC``): over SCM_RIGHTS they otherwise
arrive inheritable, and a box's status pipe passed this way would reach its payload, which
could then forge init's report.
"""

from __future__ import annotations

import array
import json
import os
import socket

MAX_MSG = 1 << 20
MAX_FDS = 8


def rights(fds: list[int]) -> list[tuple[int, int, array.array]]:
    """Ancillary data carrying ``fds`` (none for an empty list)."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []


def fds_of(anc: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds in received ancillary data."""
    fds = array.array("i")
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def send(sock: socket.socket, obj: dict, fds: list[int] | None = None, flags: int = 0) -> None:
    sock.sendmsg([json.dumps(obj).encode()], rights(fds or []), flags)


def recv(sock: socket.socket, max_fds: int = MAX_FDS) -> tuple[bytes, list[int]]:
    """One message (b"" at EOF) and its fds, close-on-exec."""
    msg, anc, _flags, _addr = sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(max_fds * 4),
                                           socket.MSG_CMSG_CLOEXEC)
    return msg, fds_of(anc)


def send_dir_fd(sock_fd: int, path: str) -> None:
    """Send one message with an fd of the directory ``path`` on the socket ``sock_fd``, then
    close both: how a box's init hands the host an overlay upper in its own tmpfs."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    sock = socket.socket(fileno=sock_fd)
    try:
        send(sock, {"upper": True}, [fd])
    finally:
        sock.close()
        os.close(fd)
