/* secret: an isolation probe for warm pools and snapshots.
 *
 * After xos_ready() it reads one command from stdin:
 *   put TOKEN     hides TOKEN in a static buffer, in a heap block, deep in
 *                 the stack and in xmm8-xmm15, then prints "stored"
 *   get TOKEN     looks for TOKEN in the static buffer, the whole heap, the
 *                 unused stack and xmm8-xmm15, and prints "clean" or
 *                 "found in <places>"
 *   putget TOKEN  does both in one call: must print "found in static heap
 *                 stack xmm" (shows the probe can see what it looks for)
 *   crash X       stores X, then dereferences a null pointer
 *   spin X        stores X, then loops forever
 *   call NAME     calls the host function NAME and prints "ret=<r> out=<o>"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xos_guest.h>

static char stash[256];
static char input[512];

static void xmm_store(const char *t)
{
    char block[16];
    memset(block, 0, sizeof block);
    strncpy(block, t, sizeof block);
    __asm__ volatile("movdqu %0, %%xmm8\n\tmovdqu %0, %%xmm9\n\tmovdqu %0, %%xmm10\n\t"
                     "movdqu %0, %%xmm11\n\tmovdqu %0, %%xmm12\n\tmovdqu %0, %%xmm13\n\t"
                     "movdqu %0, %%xmm14\n\tmovdqu %0, %%xmm15"
                     : : "m"(block) : "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",
                       "xmm14", "xmm15");
}

static int xmm_has(const char *t)
{
    char regs[8][16];
    __asm__ volatile("movdqu %%xmm8, %0\n\tmovdqu %%xmm9, %1\n\tmovdqu %%xmm10, %2\n\t"
                     "movdqu %%xmm11, %3\n\tmovdqu %%xmm12, %4\n\tmovdqu %%xmm13, %5\n\t"
                     "movdqu %%xmm14, %6\n\tmovdqu %%xmm15, %7"
                     : "=m"(regs[0]), "=m"(regs[1]), "=m"(regs[2]), "=m"(regs[3]),
                       "=m"(regs[4]), "=m"(regs[5]), "=m"(regs[6]), "=m"(regs[7]));
    size_t n = strlen(t) < 16 ? strlen(t) : 16;
    for (int i = 0; i < 8; i++)
        if (memcmp(regs[i], t, n) == 0)
            return 1;
    return 0;
}

__attribute__((noinline)) static void stack_store(const char *t)
{
    volatile char deep[16384];
    for (size_t i = 0; i + 64 < sizeof deep; i += 1024)
        for (size_t j = 0; t[j]; j++)
            deep[i + j] = t[j];
}

static int contains(const char *lo, const char *hi, const char *t)
{
    size_t n = strlen(t);
    for (const char *p = lo; p + n <= hi; p++)
        if (*p == t[0] && memcmp(p, t, n) == 0)
            return 1;
    return 0;
}

static void put(const char *t)
{
    strncpy(stash, t, sizeof stash - 1);
    char *h = malloc(4096);
    if (h)
        strcpy(h + 1000, t); /* leaked on purpose: it stays in the heap */
    stack_store(t);
    xmm_store(t);
}

static void get(const char *t)
{
    const struct xos_boot_info *bi = xos_boot_info();
    int in_static = contains(stash, stash + sizeof stash, t);
    int in_heap = contains((const char *)(uintptr_t)bi->heap_start,
                           (const char *)(uintptr_t)bi->heap_end, t);
    /* The unused stack: from its bottom up to a little below this frame. */
    uintptr_t sp = (uintptr_t)__builtin_frame_address(0) - 256;
    int in_stack = contains((const char *)(uintptr_t)bi->stack_bottom, (const char *)sp, t);
    int in_xmm = xmm_has(t);
    if (!in_static && !in_heap && !in_stack && !in_xmm) {
        printf("clean\n");
        return;
    }
    printf("found in%s%s%s%s\n", in_static ? " static" : "", in_heap ? " heap" : "",
           in_stack ? " stack" : "", in_xmm ? " xmm" : "");
}

int main(void)
{
    xos_ready();
    ssize_t n = read(0, input, sizeof input - 1);
    if (n <= 0)
        return 2;
    input[n] = 0;
    char *nl = strchr(input, '\n');
    if (nl)
        *nl = 0;
    char *token = strchr(input, ' ');
    if (!token || !token[1])
        return 2;
    *token++ = 0;
    if (!strcmp(input, "put")) {
        put(token);
        printf("stored\n");
    } else if (!strcmp(input, "get")) {
        get(token);
    } else if (!strcmp(input, "putget")) {
        put(token);
        get(token);
    } else if (!strcmp(input, "crash")) {
        put(token);
        return *(volatile int *)0;
    } else if (!strcmp(input, "call")) {
        static char out[256];
        long r = xos_host_call(token, "", 0, out, sizeof out - 1);
        printf("ret=%ld out=%s\n", r, r > 0 ? out : "");
    } else if (!strcmp(input, "spin")) {
        put(token);
        for (;;)
            __asm__ volatile("");
    } else {
        return 2;
    }
    return 0;
}
