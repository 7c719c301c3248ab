"""The trio face of a held box: ``async with sup.box(config) as box: await box.exec([...])``.

Each call runs the sync ``Box`` method in a worker thread (``trio.to_thread``), one call at a
time per box (a lock: a ``Box`` is not thread-safe). The box's own work is waiting on pipes and
its init, so a thread per busy box is what it costs; the event loop is never blocked.
``on_output`` callbacks run in trio (``trio.from_thread``), so they may touch trio objects.
A started process (``start``) keeps running while other calls use the box.
"""

from __future__ import annotations

import functools

import trio

from sandbox._box import Box, Changes, Usage
from sandbox._box_proc import Process

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Sequence
    from typing import Any

    from sandbox._config import SandboxConfig
    from sandbox._result import Result


class AsyncProcess:
    """``Process`` for trio: ``await write(data)``, ``await close_stdin()``, ``await wait()``,
    ``await kill()``. Cancelling ``wait`` kills the process (and waits for it, shielded)."""

    def __init__(self, abox: AsyncBox, proc: Process) -> None:
        self._abox, self._proc = abox, proc

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    async def write(self, data: bytes) -> None:
        """Into its stdin, as it reads (never blocking a thread nor holding the box)."""
        import os

        if self._proc.stdin is None:
            raise BrokenPipeError("its stdin is closed")
        fd = self._proc.stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)

    async def close_stdin(self) -> None:
        self._proc._close_stdin()

    async def wait(self) -> Result:
        try:
            while True:  # short turns, so a cancellation is seen and other calls get the box
                result = await self._abox._call(self._proc.wait, WAIT_TURN)
                if result is not None:
                    return result
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._abox._call(self._proc.abandon)
            raise

    async def kill(self) -> None:
        await self._abox._call(self._proc.kill)


WAIT_TURN = 0.05


class AsyncBox:
    def __init__(self, config: SandboxConfig | None = None, **kw: Any) -> None:
        self._box = Box(config, **kw)  # network=, name=
        self._lock = trio.Lock()

    async def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        async with self._lock:
            return await trio.to_thread.run_sync(functools.partial(fn, *args, **kw))

    async def __aenter__(self) -> AsyncBox:
        await self._call(self._box.open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with trio.CancelScope(shield=True):  # a cancelled caller still gets its box closed
            await self._call(self._box.close)

    @property
    def usage(self) -> Usage | None:
        return self._box.usage

    async def exec(self, argv: Sequence[str], *, stdin: bytes | None = None,
                   on_output: Callable[[int, bytes], Any] | None = None, **kw: Any) -> Result:
        """``Box.exec``; ``on_output(1|2, chunk)`` is called in trio as output arrives.
        Cancelled, it kills the process."""
        sink = None
        if on_output is not None:
            def sink(which: int, chunk: bytes) -> None:
                trio.from_thread.run_sync(on_output, which, chunk)
        proc = await self._call(self._box.start, argv, **kw)
        await self._call(proc.begin, stdin, sink)
        return await AsyncProcess(self, proc).wait()

    async def start(self, argv: Sequence[str], **kw: Any) -> AsyncProcess:
        return AsyncProcess(self, await self._call(self._box.start, argv, **kw))

    async def put(self, path: str, data: Any, **kw: Any) -> None:
        await self._call(self._box.put, path, data, **kw)

    async def get(self, path: str, **kw: Any) -> bytes:
        return await self._call(self._box.get, path, **kw)

    async def changes(self) -> Changes:
        return await self._call(self._box.changes)

    @property
    def address(self) -> str | None:
        return self._box.address

    async def connect(self, port: int, timeout: float | None = 10.0) -> socket.socket:
        """``Box.connect``: a blocking socket (``trio.socket.from_stdlib_socket`` makes it trio's)."""
        return await self._call(self._box.connect, port, timeout)

    async def url(self, port: int, scheme: str = "http") -> str:
        """``Box.url``: ``http://127.0.0.1:N/`` relayed to the box's ``port``."""
        return await self._call(self._box.url, port, scheme)
