/* ci/uml-xstate-shim.c: LD_PRELOAD library that lets Debian's User-Mode Linux 6.1 boot on
 * hosts whose x86 XSAVE area is larger than the 832 bytes that UML reserves for it.
 *
 * Why: UML saves and restores each guest thread's FPU state with
 * ptrace(PTRACE_GETREGSET / PTRACE_SETREGSET, pid, NT_X86_XSTATE, iov) on an 832-byte buffer.
 * On AVX-512 / AMX hosts (2696-11008 bytes) some host kernels refuse a SETREGSET shorter than
 * the whole area with EFAULT, and the guest's init panics with "userspace - ptrace set fp regs
 * failed, errno = 14". Clearing the components UML cannot hold would not do: glibc in the
 * guest uses the wide registers (memcpy, strlen), so their contents must survive every switch
 * between guest threads.
 *
 * How: for every buffer UML uses (one per guest thread) we keep a private copy of the whole
 * area. GETREGSET fills our copy and hands UML its first bytes; SETREGSET lays UML's bytes
 * (which it may have changed: signal frames, exec) over our copy and gives the kernel the
 * whole area. Every other ptrace request goes straight to glibc's.
 *
 * Used only where a boot without it fails that way (ci/uml-run.sh decides). Build:
 *   gcc -shared -fPIC -O2 -o uml-xstate-shim.so ci/uml-xstate-shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef long (*ptrace_fn)(enum __ptrace_request, ...);

#define MAX_AREA (64 * 1024)  /* larger than any x86 XSAVE area (AMX: 11008 bytes) */
#define BUFFERS 16384         /* guest threads whose state we keep (open addressing) */

struct saved {
  const void *buffer;  /* UML's buffer: the key */
  unsigned char *area; /* the whole XSAVE area for it, or NULL until first seen */
};

static ptrace_fn glibc_ptrace;
static size_t whole_size; /* the host's XSAVE area size, learned from the kernel */
static struct saved saved[BUFFERS];
static unsigned char spare[MAX_AREA]; /* when the table is full: state is then not kept */

/* The copy kept for UML's buffer; *fresh says it holds nothing yet. */
static unsigned char *area_for(const void *buffer, int *fresh) {
  size_t i = ((uintptr_t)buffer >> 4) % BUFFERS;
  for (size_t n = 0; n < BUFFERS; n++, i = (i + 1) % BUFFERS) {
    if (saved[i].buffer == buffer && saved[i].area) {
      *fresh = 0;
      return saved[i].area;
    }
    if (!saved[i].buffer) {
      unsigned char *area = malloc(whole_size);
      if (!area) break;
      saved[i].buffer = buffer;
      saved[i].area = area;
      *fresh = 1;
      return area;
    }
  }
  *fresh = 1;
  return spare;
}

static long short_regset(enum __ptrace_request req, pid_t pid, void *addr, struct iovec *uml) {
  if (!whole_size) {
    struct iovec probe = {spare, sizeof spare};
    if (glibc_ptrace(PTRACE_GETREGSET, pid, addr, &probe) < 0) return -1;
    whole_size = probe.iov_len; /* the kernel says how much it wrote: the whole area */
  }
  if (uml->iov_len >= whole_size) return glibc_ptrace(req, pid, addr, uml);
  int fresh;
  unsigned char *area = area_for(uml->iov_base, &fresh);
  struct iovec whole = {area, whole_size};
  if (req == PTRACE_GETREGSET || fresh) {
    /* a SETREGSET for a buffer never saved (a new guest thread): start from the tracee's */
    if (glibc_ptrace(PTRACE_GETREGSET, pid, addr, &whole) < 0) return -1;
  }
  if (req == PTRACE_GETREGSET) {
    memcpy(uml->iov_base, area, uml->iov_len);
    return 0;
  }
  memcpy(area, uml->iov_base, uml->iov_len);
  return glibc_ptrace(PTRACE_SETREGSET, pid, addr, &whole);
}

long ptrace(enum __ptrace_request req, ...) {
  va_list ap;
  va_start(ap, req);
  pid_t pid = va_arg(ap, pid_t);
  void *addr = va_arg(ap, void *);
  void *data = va_arg(ap, void *);
  va_end(ap);
  if (!glibc_ptrace) glibc_ptrace = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
  if ((req == PTRACE_GETREGSET || req == PTRACE_SETREGSET) &&
      (uintptr_t)addr == NT_X86_XSTATE && data)
    return short_regset(req, pid, addr, data);
  return glibc_ptrace(req, pid, addr, data);
}
