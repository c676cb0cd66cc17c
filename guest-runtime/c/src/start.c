/* Process start and end for xos C guests: __xos_start (called by crt0's
 * _start), exit/_exit/atexit/abort, getenv, and the xos extras that are
 * plain hypercalls. */
#include "internal.h"

struct xos_boot_info *__xos_bi;
char **environ;

static char *empty_env[1];

extern int main(int argc, char **argv, char **envp);
XOS_NORETURN void __xos_start(struct xos_boot_info *bi);

XOS_NORETURN void __xos_fatal(const char *msg)
{
    struct xos_hypercall *hc = &__xos_bi->hypercall;
    hc->args[0] = (uint64_t)(uintptr_t)msg;
    hc->args[1] = strlen(msg);
    __xos_hc(XOS_HC_ABORT);
    for (;;) /* ABORT does not return; fault if a monitor lets it */
        __asm__ volatile("ud2");
}

XOS_NORETURN void __xos_start(struct xos_boot_info *bi)
{
    __xos_bi = bi;
    if (bi->magic != XOS_BOOT_MAGIC)
        __xos_fatal("xos C runtime: bad BootInfo magic (not started by an "
                    "xos monitor?)");
    if (bi->abi_version != XOS_ABI_VERSION) {
        /* Formatted by hand: snprintf would pull the whole printf engine
         * into every image, even `int main(void) { return 0; }`. */
        static const char head[] = "xos C runtime: BootInfo has ABI version ";
        static const char tail[] = ", this runtime speaks version 1";
        char msg[sizeof(head) + 10 + sizeof(tail)];
        char digits[10];
        int nd = 0;
        uint32_t v = bi->abi_version;
        do {
            digits[nd++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        char *p = msg;
        memcpy(p, head, sizeof(head) - 1);
        p += sizeof(head) - 1;
        while (nd > 0)
            *p++ = digits[--nd];
        memcpy(p, tail, sizeof(tail));
        __xos_fatal(msg);
    }
    __xos_heap_init((uintptr_t)bi->heap_start, (uintptr_t)bi->heap_end);
    environ = bi->envp ? (char **)(uintptr_t)bi->envp : empty_env;
    char **argv = bi->argv ? (char **)(uintptr_t)bi->argv : empty_env;
    exit(main((int)bi->argc, argv, environ));
}

const struct xos_boot_info *xos_boot_info(void)
{
    return __xos_bi;
}

long xos_hypercall(unsigned nr, uint64_t a0, uint64_t a1, uint64_t a2,
                   uint64_t a3, uint64_t a4, uint64_t a5)
{
    uint64_t *args = __xos_bi->hypercall.args;
    args[0] = a0;
    args[1] = a1;
    args[2] = a2;
    args[3] = a3;
    args[4] = a4;
    args[5] = a5;
    return __xos_hc(nr);
}

long xos_host_call(const char *name, const void *in, size_t in_len, void *out,
                   size_t out_cap)
{
    /* Empty buffers are passed as a valid pointer (the name) so that a
     * monitor checking every pointer against guest memory accepts them. */
    if (in_len == 0)
        in = name;
    if (out_cap == 0)
        out = (void *)name;
    return xos_hypercall(XOS_HC_HOST_CALL, (uint64_t)(uintptr_t)name,
                         strlen(name), (uint64_t)(uintptr_t)in, in_len,
                         (uint64_t)(uintptr_t)out, out_cap);
}

#define ATEXIT_MAX 32
static void (*atexit_fns[ATEXIT_MAX])(void);
static int atexit_count;

int atexit(void (*fn)(void))
{
    if (atexit_count >= ATEXIT_MAX)
        return -1;
    atexit_fns[atexit_count++] = fn;
    return 0;
}

XOS_NORETURN void exit(int code)
{
    /* A handler may call exit again: each handler runs at most once. */
    while (atexit_count > 0)
        atexit_fns[--atexit_count]();
    _exit(code);
}

XOS_NORETURN void _exit(int code)
{
    /* The monitor writes out buffered output as part of EXIT. */
    __xos_bi->hypercall.args[0] = (uint64_t)(int64_t)code;
    __xos_hc(XOS_HC_EXIT);
    for (;;)
        __asm__ volatile("ud2");
}

XOS_NORETURN void abort(void)
{
    __xos_fatal("abort() called");
}

char *getenv(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || strchr(name, '='))
        return NULL;
    for (char **e = environ; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

XOS_NORETURN void __xos_assert_fail(const char *expr, const char *file,
                                    int line, const char *func)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "%s:%d: %s: Assertion `%s' failed.", file,
             line, func, expr);
    __xos_fatal(msg);
}
