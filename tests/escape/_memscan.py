"""Source of the in-box memory reader the hostile scanners embed (``READABLE_MEMORY``).

A hostile submission searches every readable byte of its own address space for what a clone of
the grader would hold. Not through /proc/self/mem (a non-dumpable process does not own its /proc
files): the kernel copies each chunk into a file with write(2), which fails with EFAULT on an
unreadable page instead of crashing. Chunks overlap, so a match may span a boundary.
"""

READABLE_MEMORY = r'''
def readable_memory(chunk=1 << 20, overlap=64):
    """Every readable mapping of this process, as overlapping byte chunks."""
    import ctypes, os

    sink = os.open("/tmp", os.O_RDWR | os.O_TMPFILE)  # (memfds are denied under an rlimit)
    try:
        with open("/proc/self/maps") as f:
            maps = f.read().splitlines()
        for line in maps:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if "r" not in parts[1] or line.endswith(("[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            addr = lo
            while addr < hi:
                n = min(chunk + overlap, hi - addr)
                try:
                    got = os.pwrite(sink, (ctypes.c_char * n).from_address(addr), 0)
                except OSError:
                    addr += 4096
                    continue
                yield os.pread(sink, got, 0)
                addr += max(got - overlap, 4096) if got < n else chunk
    finally:
        os.close(sink)
'''
