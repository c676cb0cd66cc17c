/* Internal declarations of the xos C guest runtime. Not installed.
 *
 * format.c, malloc.c, string.c, stdlib.c and ctype.c are "pure": they use
 * nothing from the ABI but __xos_fatal (and the heap range handed to
 * __xos_heap_init), so selftest.sh can compile them into a native host
 * program and compare them against the host libc. io.c is tested the same
 * way, built with -DXOS_HOSTED_TEST against a simulated monitor. */
#ifndef XOS_INTERNAL_H
#define XOS_INTERNAL_H

#include "../xos_guest.h"

/* Ends the run as aborted with `msg` (ABORT hypercall). */
XOS_NORETURN void __xos_fatal(const char *msg);

/* Hands [start, end) to the allocator; called once before main. */
void __xos_heap_init(uintptr_t start, uintptr_t end);

/* Receives formatted output: `n` bytes at `s`. */
typedef void (*xos_sink_fn)(void *ctx, const char *s, size_t n);

/* The printf engine: formats into `sink` and returns the number of bytes
 * produced (clamped to INT32_MAX). */
int __xos_vformat(xos_sink_fn sink, void *ctx, const char *fmt, va_list ap);

/* ---- guest-only (start.c, io.c) ---------------------------------------- */

/* The BootInfo the monitor passed in RDI; set first thing in __xos_start. */
extern struct xos_boot_info *__xos_bi;

/* Issues hypercall `nr` with the arguments already stored in
 * __xos_bi->hypercall.args and returns hypercall.ret: a 4-byte write of the
 * number to the doorbell page (XOS_DOORBELL), which no memory backs, so it
 * exits to the monitor as MMIO. The "memory" clobber makes the compiler
 * store pending writes to guest memory (arguments, output records) before
 * the exit and reload what the monitor wrote (ret, stdin, output.used)
 * after it. */
#ifndef XOS_HOSTED_TEST
static inline long __xos_hc(unsigned nr)
{
    if (__xos_bi->devices & XOS_DEVICE_VIEWS) {
        /* In a VM with EPT views, through the trampoline's stub: when views
         * switch with VMFUNC, KVM decodes the doorbell write from the base's
         * memory, where only the trampoline page is the same (docs/ABI.md,
         * "EPT views"). No red zone to spare: built with -mno-red-zone. */
        __asm__ volatile("call *%1"
                         :
                         : "a"(nr), "r"((uint64_t)XOS_VIEW_HYPERCALL)
                         : "memory");
    } else {
        __asm__ volatile("movl %0, (%1)"
                         :
                         : "a"(nr), "d"((uint64_t)XOS_DOORBELL)
                         : "memory");
    }
    return (long)__xos_bi->hypercall.ret;
}
#else
/* selftest.sh runs io.c natively against a simulated monitor. */
void __xos_test_hc(unsigned nr);
static inline long __xos_hc(unsigned nr)
{
    __xos_test_hc(nr);
    return (long)__xos_bi->hypercall.ret;
}
#endif

#endif
