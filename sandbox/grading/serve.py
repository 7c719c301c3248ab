"""``submission.serve(argv, port=...)``: a student's server, reached by the teacher's test.

A web-server or client/server assignment is graded by talking to it. The server runs in a box
of its own, on a network of its own (``sandbox.Network``: a bridge with no route anywhere, so
the server reaches nothing, not even the host's loopback), over the submission's files as
submitted (its own overlay of the folder: what the test's ``run`` calls wrote is not there).
The teacher's test, on the trusted side, reaches that one port through ``server.url``
(``http://127.0.0.1:N/``, for urllib or httpx) or ``server.connect()`` (a socket).

``serve`` returns once the server accepts connections on the port; a server that ends first, or
does not listen within ``ready_timeout``, fails the test with its verdict and output. A
server that ended on its own (a crash) counts in the test's verdict; one still running when the
test ends is stopped, which counts as nothing.
"""

from __future__ import annotations

import time

from sandbox import Box, Network, Result, SandboxConfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence
    from typing import Any

POLL = 0.02


class ServerError(Exception):
    """The server did not come up: it ended first (``result``) or did not listen in time."""

    def __init__(self, message: str, result: Result | None = None) -> None:
        super().__init__(message)
        self.result = result


class Server:
    """A student's server program, running in its own box (``Submission.serve``)."""

    def __init__(self, config: SandboxConfig, argv: Sequence[str], port: int, ready_timeout: float,
                 exec_limits: dict[str, Any]) -> None:
        self.port = port
        self.result: Result | None = None  # once it ended (after stop(), or a crash)
        self._net = Network().open()
        try:
            self._box = Box(config, network=self._net, name="server").open()
            self._proc = self._box.start(list(argv), **exec_limits)
            self._wait_ready(ready_timeout)
            self.url = self._box.url(port)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ended = self._proc.poll()
            if ended is not None:
                why = ended.reason or f"exit code {ended.exit_code}"
                tail = ended.stderr[-2000:].decode("utf-8", "replace")
                raise ServerError(f"the server ended ({ended.status}: {why}) before it listened on "
                                  f"port {self.port}\n{tail}", ended)
            try:
                self._box.connect(self.port, timeout=1.0).close()
                return
            except (ConnectionRefusedError, TimeoutError):
                if time.monotonic() > deadline:
                    raise ServerError(f"the server did not listen on port {self.port} within {timeout:g}s") from None
                time.sleep(POLL)

    def connect(self, timeout: float | None = 10.0) -> socket.socket:
        """A TCP connection to the server's port (``Box.connect``)."""
        return self._box.connect(self.port, timeout)

    @property
    def running(self) -> bool:
        return self.result is None and self._proc.poll() is None

    def stop(self) -> Result | None:
        """End the server and its box and network; its verdict if it had ended on its own
        (None when it was still serving: being stopped is not the student's fault)."""
        crashed = None
        try:
            proc = getattr(self, "_proc", None)
            if proc is not None and self.result is None:
                crashed = proc.poll()
                if crashed is None:
                    proc.kill()
                    self.result = proc.wait(10)
                else:
                    self.result = crashed
        finally:  # the box and the network (its hub process) go whatever happened above
            box = getattr(self, "_box", None)
            try:
                if box is not None:
                    box.close()
            finally:
                self._net.close()
        return crashed
