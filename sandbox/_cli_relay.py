"""The CLI's copy of a box's output to its own stdout/stderr, which must never stall the box's
supervision.

The caller's stdout may be a pipe whose reader stops (``| less`` left open, a terminal on
XOFF) or a non-blocking file description shared with another process. A plain blocking write
there would hold up the poll loop that enforces the wall time (a box ran 12× its limit while
the CLI sat in write), and a non-blocking one fails with EAGAIN and loses bytes silently. So
during the run we write only what poll says fits without blocking (at most PIPE_BUF bytes per
ready pipe) and keep the rest; what is pending then is bounded by the output cap, since the
supervisor never passes on more than that. After the verdict, ``flush`` writes it all, waiting
as long as the reader needs: nothing the box printed within its cap is lost.
"""

from __future__ import annotations

import errno
import os
import select

PIPE_BUF = 4096  # a write this small to a pipe with POLLOUT set never blocks (pipe(7))


class OutputRelay:
    """``relay(1|2, chunk)`` → False once that stream's reader is gone (``gone``): the box's
    pipe is then closed and the program gets SIGPIPE on its next write, as it would writing to
    the pipe itself (``yes | head -1`` ends at once instead of writing on to the cap)."""

    def __init__(self) -> None:
        self.pending: dict[int, bytearray] = {}
        self.gone: set[int] = set()

    def __call__(self, fd: int, chunk: bytes) -> bool:
        if fd in self.gone:
            return False
        buf = self.pending.setdefault(fd, bytearray())
        buf += chunk
        return self._drain(fd, buf, wait=False)

    def flush(self) -> None:
        for fd, buf in self.pending.items():
            self._drain(fd, buf, wait=True)

    def _drain(self, fd: int, buf: bytearray, *, wait: bool) -> bool:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        while buf:
            events = poller.poll(None if wait else 0)
            if not events:
                return True  # the reader is slow: keep the rest for later
            if events[0][1] & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                break  # nobody reads any more (EPIPE): nothing left to deliver
            try:
                n = os.write(fd, buf[:PIPE_BUF])
            except BlockingIOError:
                continue
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                break
            del buf[:n]
        else:
            return True
        buf.clear()
        self.gone.add(fd)
        return False
