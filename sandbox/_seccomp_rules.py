"""The default seccomp policy's rules, as data: each denied syscall, the argument tests, and why.

Compiled by ``sandbox._seccomp`` with libseccomp. Argument tests compare 64-bit registers, but
many syscalls declare an argument as a 32-bit ``int``/``unsigned int`` and the kernel drops the
upper half (the syscall wrappers cast the register). A rule that compares all 64 bits is then
dodged by setting any high bit: the kernel still sees the value the rule was meant to catch
(CVE-2019-10063, TIOCSTI with high garbage bits). So every argument a rule tests is declared
in ``ARG_BITS`` with its width from the kernel's prototype, and ``check_widths`` (run on every
compile) refuses a 32-bit argument tested by anything but a mask within the low 32 bits.

Kernel prototypes of what is tested here (x86-64 and aarch64 alike):

* ``clone(unsigned long flags, ...)``: 64 bits, of which ``kernel_clone`` uses the low 32
  (``lower_32_bits``); the CLONE_NEW* masks lie in the low word, so either width is safe.
* ``ioctl(unsigned int fd, unsigned int cmd, unsigned long arg)``: ``cmd`` is 32 bits.
* ``personality(unsigned int persona)``: 32 bits; ``0xffffffff`` queries without setting.
* ``socket(int family, int type, int protocol)``: 32 bits each (``type`` is not tested).
* ``prlimit64(pid_t pid, unsigned int resource, const struct rlimit64 *new, ...)``: ``pid``
  is 32 bits, ``new`` a 64-bit pointer.

Not every rule is about the kernel's surface: inotify and fanotify are refused because a box's
/dev nodes can only be the host's own inodes (a user namespace can make no device node, and a
filesystem it mounts is nodev), so a watch on /dev/null saw host processes use it. No argument
tells a device from a file (the path is in memory), hence the whole of it; ``seccomp_allow=
("inotify",)`` gives file watching back to a box that needs it, with that channel.

libseccomp allows one test per argument in a rule, and only a masked ``==`` can ignore the
upper half, so "low 32 bits != X" takes one rule per bit (personality's bit-31 rules).
"""

from __future__ import annotations

import errno

from sandbox._record import record

# libseccomp's argument comparisons (enum scmp_compare; checked against pyseccomp's when
# compiling): the policy is plain data, and pyseccomp is imported only to compile it.
NE, EQ, MASKED_EQ = 1, 4, 7
LOW32 = 0xFFFFFFFF
BIT31 = 1 << 31

EPERM, ENOSYS, EINVAL = errno.EPERM, errno.ENOSYS, errno.EINVAL
CLONE_NEW_FLAGS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000,
                   "CLONE_NEWUTS": 0x04000000, "CLONE_NEWIPC": 0x08000000,
                   "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                   "CLONE_NEWNET": 0x40000000, "CLONE_NEWTIME": 0x00000080}
# personality(2): the low byte is the execution domain (PER_LINUX 0, PER_LINUX32 8); above it
# are flags, nearly all of which weaken memory protection (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC,
# MMAP_PAGE_ZERO, the ADDR_LIMIT_* layouts ...). Only UNAME26 (a fake 2.6 uname) is allowed;
# every other flag bit, the ones the kernel does not define yet included, is refused.
UNAME26 = 0x0020000
PERSONALITY_DENIED_FLAGS = tuple(1 << b for b in range(8, 31) if 1 << b != UNAME26)
AF_NETLINK, AF_VSOCK = 16, 40
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
F_NOTIFY = 1026  # dnotify: fcntl(dir_fd, F_NOTIFY, events)

Arg = tuple[int, int, int, int]  # (argument index, pyseccomp op, datum_a, datum_b)

# (syscall, argument index) → width in bits of the kernel's parameter (see the docstring)
ARG_BITS = {("clone", 0): 64, ("ioctl", 1): 32, ("personality", 0): 32, ("socket", 0): 32,
            ("socket", 2): 32, ("prlimit64", 0): 32, ("prlimit64", 2): 64, ("fcntl", 1): 32}


@record(frozen=True)
class Rule:
    """One denied syscall (optionally only for some argument values), and why. Denied when
    every test in ``args`` holds, or with ``cases``, when every test of any one case holds
    (compiled as one libseccomp rule per case)."""

    syscall: str
    why: str
    errno: int = EPERM
    args: tuple[Arg, ...] = ()
    group: str = ""  # name used by allow=/deny= to relax or add (defaults to the syscall)
    cases: tuple[tuple[Arg, ...], ...] = ()

    @property
    def key(self) -> str:
        return self.group or self.syscall

    @property
    def alternatives(self) -> tuple[tuple[Arg, ...], ...]:
        return self.cases or (self.args,)


def check_widths(rules: tuple[Rule, ...]) -> None:
    """Every tested argument has a declared width, and a 32-bit one is only ever compared
    through a mask within the low 32 bits (so high garbage bits cannot dodge the rule)."""
    for r in rules:
        for i, op, a, b in (arg for case in r.alternatives for arg in case):
            bits = ARG_BITS.get((r.syscall, i))
            if bits is None:
                raise ValueError(f"seccomp rule {r.syscall} tests argument {i}, whose width "
                                 "is not declared in ARG_BITS")
            if bits == 32 and not (op == MASKED_EQ and a <= LOW32 and b & ~a == 0):
                raise ValueError(f"seccomp rule {r.syscall}: argument {i} is 32 bits wide "
                                 "and must be compared masked to its low 32 bits")


def _deny(names: str, why: str, err: int = EPERM, group: str = "") -> list[Rule]:
    return [Rule(n, why, err, group=group) for n in names.split()]


DEFAULT_RULES: tuple[Rule, ...] = tuple(
    _deny("keyctl add_key request_key", "kernel keyrings are not namespaced: shared with the "
          "host user, and a long CVE history")
    + _deny("bpf", "eBPF verifier bugs are a recurring root exploit path")
    + _deny("perf_event_open", "kernel pointer/side-channel leaks and exploit history")
    + _deny("userfaultfd", "used to widen race windows in kernel exploits")
    + _deny("io_uring_setup io_uring_enter io_uring_register", "io_uring: huge attack surface, "
            "and its operations are not seen by seccomp; ENOSYS so runtimes fall back", ENOSYS)
    + _deny("kexec_load kexec_file_load reboot", "replace or stop the host kernel")
    + _deny("init_module finit_module delete_module create_module get_kernel_syms query_module",
            "kernel modules")
    + _deny("acct swapon swapoff syslog quotactl quotactl_fd lookup_dcookie nfsservctl uselib "
            "ustat sysfs _sysctl vhangup iopl ioperm vm86 vm86old", "host administration, "
            "obsolete or hardware-level calls no test needs (docker's default profile denies them)")
    + _deny("settimeofday clock_settime clock_adjtime adjtimex stime", "the clock is not "
            "namespaced: a box must never move the host's time")
    # A box's /dev nodes are the host's inodes (no other can exist: mknod is EPERM in a user
    # namespace, and a filesystem it mounts is nodev), so a watch on /dev/null reported every
    # host process opening, reading, writing or closing it. Seccomp sees no path, and every
    # event kind is one a host process makes on /dev/null, so no narrower test exists: refuse
    # the watch fds as a kernel without CONFIG_INOTIFY_USER/FANOTIFY does (tail -f then polls).
    + _deny("inotify_init inotify_init1 fanotify_init", "a watch on a /dev node (the host's "
            "own inode) reports host processes' opens and writes; ENOSYS so programs poll",
            ENOSYS, group="inotify")
    # dnotify, inotify's ancestor, watches directories: a writable --bind is a host directory
    + [Rule("fcntl", "F_NOTIFY (dnotify) on a shared host directory reports host processes' "
            "changes in it, as inotify would", EINVAL, ((1, MASKED_EQ, LOW32, F_NOTIFY),),
            group="inotify")]
    + _deny("open_by_handle_at name_to_handle_at", "file handles bypass path-based confinement "
            "(the 'shocker' container escape)")
    + _deny("ptrace process_vm_readv process_vm_writev pidfd_getfd", "debugging other "
            "processes; before Linux 4.8 ptrace could even bypass seccomp", group="ptrace")
    + _deny("mount umount2 pivot_root chroot unshare setns open_tree move_mount fsopen fsmount "
            "fsconfig fspick mount_setattr", "reshaping the box's namespaces or mounts")
    + [Rule("clone", f"clone with {name}: no nested namespaces (nested user namespaces are a "
            "large kernel attack surface)", EPERM, ((0, MASKED_EQ, bit, bit),))
       for name, bit in CLONE_NEW_FLAGS.items() if name != "CLONE_NEWTIME"]
    + _deny("clone3", "its flags live in memory, which seccomp cannot inspect; ENOSYS makes "
            "libc fall back to clone(), whose flags the rules above check", ENOSYS)
    # personality: a flag with bit 31 clear; or bit 31 set and any other bit clear, i.e. any
    # value with bit 31 but the query 0xffffffff (the kernel takes bit 31 as just another bit)
    + [Rule("personality", "personality flags that disable ASLR or make data executable",
            cases=tuple(((0, MASKED_EQ, bit | BIT31, bit),) for bit in PERSONALITY_DENIED_FLAGS)),
       Rule("personality", "personality with bit 31 set is a flag, not the query 0xffffffff",
            cases=tuple(((0, MASKED_EQ, BIT31 | 1 << k, BIT31),) for k in range(31)))]
    + [Rule("socket", "AF_VSOCK reaches the hypervisor/host side", EPERM,
            ((0, MASKED_EQ, LOW32, AF_VSOCK),))]
    # netlink_create() itself refuses a protocol < 0 or >= MAX_LINKS (32): any other protocol
    # but NETLINK_ROUTE (0) has one of bits 0-4 set, one rule each
    + [Rule("socket", "AF_NETLINK other than NETLINK_ROUTE (audit, uevents, netfilter ...)",
            cases=tuple(((0, MASKED_EQ, LOW32, AF_NETLINK), (2, MASKED_EQ, 1 << k, 1 << k))
                        for k in range(5)))]
    + [Rule("ioctl", f"{name}: inject keystrokes into / control the terminal (CVE-2019-10063: "
            "matched on the low 32 bits, so high garbage bits cannot dodge the rule)", EPERM,
            ((1, MASKED_EQ, LOW32, req),), group=name.lower())
       for name, req in (("TIOCSTI", TIOCSTI), ("TIOCLINUX", TIOCLINUX))]
    # The box's init runs as the payload's uid, so prlimit() could lower init's limits (an
    # RLIMIT_CPU of 1 s, then a flood of signals for init to forward: init dies, no verdict).
    # Every other process in the box is the payload's own: only pid 1 is protected. Reading
    # init's limits (new == NULL) stays allowed, like /proc/1/limits.
    + [Rule("prlimit64", "prlimit() setting the limits of the box's init (pid 1)", EPERM,
            ((0, MASKED_EQ, LOW32, 1), (2, NE, 0, 0)), group="prlimit")]
)

# Under the RLIMIT_AS memory fallback (no memory cgroup): memfd pages are not address space
# until mapped, so memfds could hold any amount of memory past --memory. ENOSYS, as on a
# kernel without them, so programs fall back to files in /tmp or /dev/shm (the box's tmpfs,
# bounded by --tmpfs-size). A memory cgroup charges memfd pages: there, they stay allowed.
MEMFD_RULES: tuple[Rule, ...] = tuple(_deny(
    "memfd_create memfd_secret", "memory the RLIMIT_AS fallback cannot bound (no memory "
    "cgroup); ENOSYS so programs fall back to the box's size-capped tmpfs", ENOSYS,
    group="memfd"))
