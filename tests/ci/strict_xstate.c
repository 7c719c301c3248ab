/* Test double of an AMX host for tests/test_ci_guest.py: makes this host's kernel look like
 * one whose XSAVE area is 11008 bytes (AVX-512 + AMX) and that refuses a shorter
 * PTRACE_SETREGSET(NT_X86_XSTATE) with EFAULT, as such hosts do. Preloaded into linux.uml,
 * it makes Debian's UML 6.1 fail to boot here exactly as it does there ("ptrace set fp regs
 * failed, errno = 14"), so ci/uml-run.sh's detection and ci/uml-xstate-shim.c's fix are
 * tested on every machine. The extra bytes read back as zeros and are dropped on the way in. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

#define AMX_AREA 11008

typedef long (*ptrace_fn)(enum __ptrace_request, ...);
static ptrace_fn next;
static size_t real_size;

long ptrace(enum __ptrace_request req, ...) {
  va_list ap;
  va_start(ap, req);
  pid_t pid = va_arg(ap, pid_t);
  void *addr = va_arg(ap, void *);
  struct iovec *iov = va_arg(ap, void *);
  va_end(ap);
  if (!next) next = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
  if ((req != PTRACE_GETREGSET && req != PTRACE_SETREGSET) || (uintptr_t)addr != NT_X86_XSTATE || !iov)
    return next(req, pid, addr, iov);
  if (!real_size) {
    static unsigned char probe[64 * 1024];
    struct iovec whole = {probe, sizeof probe};
    if (next(PTRACE_GETREGSET, pid, addr, &whole) < 0) return -1;
    real_size = whole.iov_len;
  }
  if (real_size >= AMX_AREA) return next(req, pid, addr, iov);
  if (req == PTRACE_SETREGSET) {
    if (iov->iov_len < AMX_AREA) {
      errno = EFAULT;
      return -1;
    }
    struct iovec real = {iov->iov_base, real_size};
    return next(req, pid, addr, &real);
  }
  size_t want = iov->iov_len;
  if (next(req, pid, addr, iov) < 0) return -1;
  if (want >= AMX_AREA) {
    memset((unsigned char *)iov->iov_base + iov->iov_len, 0, AMX_AREA - iov->iov_len);
    iov->iov_len = AMX_AREA;
  }
  return 0;
}
