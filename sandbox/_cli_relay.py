"""The CLI's copy of a box's output to its own stdout/stderr, which must never stall the box's
supervision.

The caller's stdout may be a pipe whose reader stops (``| less`` left open), a terminal that
stopped reading (Ctrl-S, a paused pager, a slow ssh link), a socket, or a non-blocking file
description shared with another process. A blocking write there would hold up the poll loop
that enforces the wall time (a box ran 12× its limit while the CLI sat in write), and a
non-blocking one fails with EAGAIN and loses bytes. Asking poll first is not enough: only a
pipe promises that a write of PIPE_BUF bytes fits when POLLOUT is set (pipe(7)); a terminal
reports POLLOUT while it has *any* room and n_tty then blocks until the whole write fits, and a
socket's POLLOUT is a free-space threshold. We cannot make the file description non-blocking
either: it is shared (the shell's terminal), so the shell would see EAGAIN after we exit.

So the writes happen in one writer thread, the only place that may block; the poll loop only
queues. One queue for both streams keeps their interleaving as the box wrote it. What is queued
is bounded by the output cap, since the supervisor never passes on more than that. After the
verdict, ``flush`` waits for the queue to drain, as long as the reader needs: nothing the box
printed within its cap is lost. The thread is started at the first output, after the box was
cloned (a box is cloned from a single-threaded process: ``sandbox._spawn``), and is built on
``_thread``/``_queue`` (``threading`` imports functools and collections on every start).
"""

from __future__ import annotations

import _thread
import os
import select

TYPE_CHECKING = False  # (typing itself is not imported on the run path)
if TYPE_CHECKING:
    from _queue import SimpleQueue

    Queue = SimpleQueue["tuple[int, bytes] | None"]


class OutputRelay:
    """``relay(1|2, chunk)`` → False once that stream's reader is gone (``gone``): the box's
    pipe is then closed and the program gets SIGPIPE on its next write, as it would writing to
    the pipe itself (``yes | head -1`` ends at once instead of writing on to the cap)."""

    def __init__(self) -> None:
        self.gone: set[int] = set()
        self._queue: Queue | None = None  # (fd, chunk) for the writer; None ends it
        self._done = _thread.allocate_lock()  # held by the writer until its queue is drained

    def __call__(self, fd: int, chunk: bytes) -> bool:
        if fd in self.gone or _reader_gone(fd):
            self.gone.add(fd)
            return False
        if self._queue is None:
            import _queue

            self._queue = _queue.SimpleQueue()
            self._done.acquire()
            _thread.start_new_thread(self._writer, (self._queue,))
        self._queue.put((fd, chunk))
        return True

    def flush(self) -> None:
        """Wait until everything queued reached its reader (or the reader went away)."""
        if self._queue is not None:
            self._queue.put(None)
            self._done.acquire()
            self._done.release()

    def _writer(self, queue: Queue) -> None:
        try:
            while (item := queue.get()) is not None:
                fd, chunk = item
                if fd not in self.gone and not _write_all(fd, chunk):
                    self.gone.add(fd)  # EPIPE or the like: what is still queued for it goes
        finally:
            self._done.release()


def _reader_gone(fd: int) -> bool:
    """Whether nobody reads ``fd`` any more (POLLERR: a pipe whose reader closed), asked before
    queueing so the box's pipe closes at once, not after the writer's next EPIPE."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    events = poller.poll(0)
    return bool(events and events[0][1] & (select.POLLERR | select.POLLHUP | select.POLLNVAL))


def _write_all(fd: int, chunk: bytes) -> bool:
    """Write all of ``chunk``, blocking as long as the reader needs (EINTR is retried by
    Python); False when the reader is gone."""
    view = memoryview(chunk)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:  # a non-blocking description someone else shares: wait for room
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            events = poller.poll()
            if events and events[0][1] & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                return False
            continue
        except OSError:
            return False
        view = view[n:]
    return True
