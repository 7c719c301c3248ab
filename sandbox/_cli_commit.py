"""``sandbox run --commit NAME[:TAG] --image BASE -- CMD``: a setup step (``pip install``, a
build) run once, its result kept as an image to run every later box on.

The command runs as the one process of a held ``Box`` (not ``run_sync``'s one-shot box) so
that, after it ends, the box's writable layer still exists to be committed by the same
machinery as ``Box.commit`` (``sandbox/_commit.py``: whiteouts and opaque directories kept,
the tar re-read through the import's extraction). Only a command that ended OK is committed:
a failed install must not become the image every submission is graded on.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from sandbox import Result, SandboxConfig
    from sandbox._cli_options import Args


def check_commit(a: Args) -> str:
    """The normalized target name, or a usage error (exit 2) before any box starts."""
    from sandbox import ImageError, ImageStore
    from sandbox._cli_options import UsageError

    if not a.image:
        raise UsageError(f"--commit {a.commit!r}: needs --image BASE (the image the new one "
                         "is layered on)")
    if a.tty:
        raise UsageError("--commit: the command runs without a terminal; drop -t")
    try:
        return ImageStore.normalize(a.commit)
    except ImageError as e:
        raise UsageError(f"--commit: {e}") from None


def run_and_commit(target: str, cmd: list[str], cfg: SandboxConfig,
                   on_output: Callable[[int, bytes], bool | None] | None, *, quiet: bool) -> Result:
    """Run ``cmd`` in a held box on ``cfg``'s image; commit its writable layer as ``target``
    (``check_commit``'s) if it ended OK. Its stdin is empty (a setup step reads none; a box
    never gets our terminal)."""
    from sandbox import Box, ImageError, LayerError
    from sandbox._cli import SandboxFailure

    with Box(cfg) as box:
        result = box.exec(cmd, stdin=b"", on_output=on_output)  # type: ignore[arg-type]
        if result.status != "OK":
            if not quiet:
                sys.stderr.write(f"sandbox: --commit {target}: not committed: the command "
                                 f"ended {result.status.value} (only an OK run is committed)\n")
            return result
        try:
            box.commit(target)
        except (ImageError, LayerError) as e:
            raise SandboxFailure(f"--commit {target}: not committed: {e}") from None
    if not quiet:
        sys.stderr.write(f"sandbox: committed {target}\n")
    return result
