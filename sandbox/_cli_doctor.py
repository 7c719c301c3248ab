"""``sandbox doctor``: prints what ``sandbox.diagnose()`` found, as text or JSON.

Exit 0 when boxes can run here, 1 when a check failed: scripts (CI set-up, a judge's install
check) can gate on it without parsing the text."""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict

import sandbox


def main(json_out: bool) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `sandbox doctor | head` ends quietly
    checks = sandbox.diagnose()
    can_run = all(c.status != "fail" for c in checks)
    if json_out:
        json.dump({"can_run": can_run, "checks": [asdict(c) for c in checks]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for c in checks:
            sys.stdout.write(f"{c.status.upper():4} {c.name}: {c.detail}\n")
            if c.fix:
                sys.stdout.write(f"     fix: {c.fix}\n")
        sys.stdout.write("sandboxes can run here\n" if can_run else "sandboxes cannot run here\n")
    return 0 if can_run else 1
