"""Worker admission for ``sandbox grade --scheduler``: ``dask worker --preload sandbox.cluster``.

A Dask worker that cannot make boxes would take submissions and fail every one of them (each
row blaming the host, not the student), so before it joins it runs the doctor's trials
(``sandbox.diagnose``) and, when a required one fails, exits naming the cause. Logging alone is
not enough: Dask logs an exception raised in a preload and lets the worker join anyway, so the
refusal closes the worker (and its nanny) and ends the process with ``EXIT_REFUSED``.

A worker that is admitted advertises its resources: ``sandbox=N`` (boxes graded at once: its
threads) and ``cgroup=1`` where cgroup v2 limits are real, so that tasks asking for them land
only where they hold. ``sandbox grade --scheduler`` asks every task for ``sandbox=1``: a worker
started without this preload is never given a submission.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

EXIT_REFUSED = 78  # EX_CONFIG: this host's configuration cannot run boxes
log = logging.getLogger("sandbox.cluster")


def admission() -> tuple[list[str], dict[str, float]]:
    """The reasons this host cannot make boxes (empty: it can), and the resources it offers."""
    from sandbox import diagnose

    checks = diagnose()
    why = [f"{c.name}: {c.detail}" + (f" (fix: {c.fix})" if c.fix else "")
           for c in checks if c.status == "fail"]
    res: dict[str, float] = {}
    if any(c.name == "cgroup v2" and c.status == "ok" for c in checks):
        res["cgroup"] = 1
    return why, res


async def dask_setup(worker: Any) -> None:
    """Dask's preload hook: runs in the worker process before it registers with the scheduler."""
    why, res = admission()
    if why:
        text = "sandbox.cluster: this worker refuses to join: boxes cannot be made here: " + "; ".join(why)
        log.error("%s", text)
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
        # A nanny would restart a worker that merely died: tell it to close too, then end.
        try:
            if getattr(worker, "nanny", None):
                await worker.close(nanny=True, reason="sandbox.cluster: boxes cannot be made here")
        finally:
            os._exit(EXIT_REFUSED)
    res["sandbox"] = float(worker.state.nthreads)
    for k, v in res.items():  # before registration: the scheduler learns them when it joins
        worker.state.total_resources[k] = v
        worker.state.available_resources[k] = v
    log.info("sandbox.cluster: admitted; resources %s", res)
