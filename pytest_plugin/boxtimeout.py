"""pytest-timeout and boxed tests: a timeout ends the test, not the session.

pytest-timeout arms its timer (SIGALRM, or a thread that calls ``os._exit(1)``) in the process
running the test's protocol: for a boxed test, the host waiting for its box. The alarm's
``pytest.fail`` escaped there as INTERNALERROR and ended the session (under xdist the worker
died and the test went unreported); the thread method would have ended the whole run. So:

* a whole-protocol timeout (pytest-timeout's default) becomes the box's wall time (the plugin's
  ``pytest_timeout_set_timer`` takes the host's timer over, ``plugin.box_config`` lowers the
  wall time): the kernel-side deadline stops the test however stuck it is, and ``explain``
  gives the failure pytest-timeout's own first line, naming the limit;
* a ``func_only`` timeout covers only the test function, which runs in the box: pytest-timeout
  arms it there, as unboxed. Its thread method ends the box with ``os._exit(1)``;
  ``arm_thread_timer`` arms the same timer but first leaves a line in the stack memfd, so the
  failure says it was the timeout rather than "exited with code 1". That line is the box's
  word: the value shown is the host's own reading of the test's timeout, and a test without a
  ``func_only`` thread timeout gets no such failure text whatever its box wrote.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from sandbox import Limits, Result, Status

MESSAGE = "Timeout (>%ss) from pytest-timeout."  # pytest-timeout's own failure line
FIRED = "sandbox: pytest-timeout fired"  # a line in the stack memfd (inside the box)
STACK_FD: int | None = None  # set inside a box only


def arm_thread_timer(item: Any, settings: Any) -> bool:
    """Inside the box: pytest-timeout's thread timer, marked in the stack memfd when it fires."""
    import pytest_timeout

    def fire() -> None:
        if STACK_FD is not None:
            try:
                os.write(STACK_FD, f"\n{FIRED}\n".encode())
            except OSError:
                pass
        pytest_timeout.timeout_timer(item, settings)  # dumps the stacks, then os._exit(1)

    timer = threading.Timer(settings.timeout, fire)
    timer.name = f"pytest_timeout {item.nodeid}"

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel
    timer.start()
    return True


def explain(item: Any, text: str, result: Result, lim: Limits, timeout: float | None,
            fired: bool) -> str:
    """The failure text of a box that did not end OK, when pytest-timeout's timeout ended it.
    ``timeout``: the host's whole-protocol timeout (then the box's wall time, if the lower);
    ``fired``: the box left a ``FIRED`` line."""
    if timeout is not None and timeout == lim.wall_time and result.status == Status.TO \
            and (result.reason or "").startswith("wall time"):
        return f"{MESSAGE % timeout}\n{text} (pytest-timeout's timeout is the box's wall time)"
    seconds = _thread_timeout(item) if fired else None
    if seconds is not None and result.status == Status.RE and result.exit_code == 1:
        return (f"{MESSAGE % seconds}\nsandbox: pytest-timeout's thread method ended the test "
                "process (os._exit(1)); its dump of the stacks is in the output")
    return text


def _thread_timeout(item: Any) -> float | None:
    """The test's func_only thread timeout, as pytest-timeout reads it on the host (from its
    marker and options), or None: the timer the box may say fired. pytest-timeout has no public
    reader of a test's settings; without its private one the box's line is ignored."""
    try:
        from pytest_timeout import _get_item_settings

        settings = _get_item_settings(item)
    except Exception:  # noqa: BLE001 - not installed, another version, or a bad marker
        return None
    if settings.func_only and settings.method == "thread" and (settings.timeout or 0) > 0:
        return float(settings.timeout)
    return None
