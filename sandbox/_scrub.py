"""What the box's init wipes of its caller's memory right after the clone: argv and environment.

init is a clone of whoever asked for the box (the CLI, the launcher, a pytest process), so its
memory starts as a copy of the caller's, and two parts of that copy were readable in the box:

* the argv block: ``/proc/1/cmdline`` is readable by every process in the box whatever init's
  dumpable flag (the kernel makes no ptrace check for it), and it was the host's command line
  (host paths, bind sources, ``--env`` values);
* the environment: a callable payload (a ``@pytest.mark.sandboxed`` test body) is a fork of
  init and can read its own memory, where the caller's environment block, the copies setenv()
  made and ``os.environ``'s bytes objects still held the host's variables (a CI secret) after
  ``os.environ`` was replaced: freeing an object does not erase its bytes.

All of it is overwritten in place. The blocks' bounds are the kernel's own (``/proc/self/stat``
fields 48-51: arg_start, arg_end, env_start, env_end); afterwards ``/proc/1/cmdline`` reads
``sandbox-init`` and NULs (the block cannot be shortened: PR_SET_MM needs CAP_SYS_RESOURCE in
the host's user namespace). python-prctl's ``set_proctitle`` is not used for the argv block:
it covers argv only, and finds it by walking back from ``environ[0]``, which crashes the
process (SIGSEGV) once the caller removed any variable (``os.environ.clear()``, ``del
os.environ[k]``). (``/proc/1/comm``, the executable's name, is left as it is.)
"""

from __future__ import annotations

import posix

from sandbox import _syscalls as sc

TITLE = b"sandbox-init"
# Where a bytes object's data starts (PyBytesObject.ob_sval: the struct's size minus its NUL)
_BYTES_DATA = bytes.__basicsize__ - 1


def _blocks() -> tuple[int, ...]:
    fields = sc.read_file("/proc/self/stat").rpartition(")")[2].split()
    return tuple(int(f) for f in fields[45:49])


# Read here, in the caller: the blocks stay where execve put them for the process's life, and
# a clone has the same addresses (in the clone, the read costs ~0.3 ms of first-touch faults).
BLOCKS = _blocks()


def wipe_caller_image() -> None:
    """Zero the argv and environment blocks (the title goes at arg_start), every C environment
    string, and the values of ``os.environ`` (``posix.environ``: bytes objects made from the
    block at start-up), then empty ``os.environ``: init needs none of it (the box's
    environment was computed in the parent, ``Prepared.env``)."""
    arg_start, arg_end, env_start, env_end = BLOCKS
    sc.zero_memory(arg_start, arg_end - arg_start)
    sc.zero_memory(env_start, env_end - env_start)
    title = TITLE[:max(0, arg_end - arg_start - 1)]
    if title:
        sc.copy_to_memory(arg_start, title)
    sc.wipe_c_environment()
    for value in posix.environ.values():
        if len(value) > 1:  # b"" and the one-byte values are shared singletons (no secret)
            sc.zero_memory(id(value) + _BYTES_DATA, len(value))
    posix.environ.clear()  # os.environ's own dict (os.environb shares it)
