/* faults MODE [ARGS]: misbehaves on purpose, for the monitor's tests.
 *
 *   null               read address 0 (null guard page)          -> #PF
 *   unmapped           write 0x4000000000, beyond guest memory   -> #PF
 *   system             write 0x1000, the supervisor-only area    -> #PF
 *   ud                 execute ud2                               -> #UD
 *   div0               integer division by zero                  -> #DE
 *   gp                 execute hlt (privileged at CPL3)          -> #GP
 *   loop               spin forever (for --timeout)
 *   stack              unbounded recursion into the stack guard  -> #PF
 *   exec-data          write a `ret` into a static buffer and call it:
 *                      data is not executable (W^X)              -> #PF
 *   write-code         write a byte over its own main(): code is
 *                      read-only (W^X)                           -> #PF
 *   abort              abort()                                   -> ABORT
 *   exit N             exit(N)
 *   badptr             WRITE hypercall with a pointer outside guest memory;
 *                      prints "write returned <ret>" (expect -14, EFAULT)
 *   bigout             prints 300000 'x' and a newline (output flushes)
 *   hostcall NAME IN   xos_host_call(NAME, IN) with a 4096-byte output
 *                      buffer; prints "ret=<ret> out=<output>"
 *   virtio-evil        sets up the virtio channel device with its queues
 *                      in the supervisor-only system area (where the page
 *                      tables are) and offers a receive buffer there, then
 *                      prints "status=<hex>" (the device must refuse:
 *                      0x40, DEVICE_NEEDS_RESET, set)
 *   virtio-ahead       sets up the device properly, then moves the send
 *                      queue's avail index 100 entries ahead of an
 *                      8-entry queue and prints "status=<hex>" once the
 *                      device reports DEVICE_NEEDS_RESET (or after ~2 s)
 *
 * EPT-view modes (an ept-view IC; see tests/ept_view.rs):
 *   view-crash         serves with a handler that dereferences NULL
 *   view-print         serves with a handler that makes a hypercall
 *                      (inside a call: refused)
 *   view-secret        puts "TOPSECRET" in a static buffer, then serves
 *                      with a handler that answers "ok"
 *   view-peek          calls its peer once, then prints the reply and
 *                      whether its own copy of that static buffer holds
 *                      the secret ("peek: reply=ok mine=clean")
 *   view-call          calls its peer once; prints "call=<result>"
 *   view-jump-return   jumps to the trampoline's way-back switch (the
 *                      second one) with its peer as the target, while in
 *                      no call; prints "returned" if it comes back
 *   view-fake-wait     calls once, then jumps to the trampoline's own
 *                      VIEW_WAIT; prints "first=A fake=B"
 *   view-reopen        sets up a handler and opens its own gate (read-only:
 *                      faults), prints "reopened"
 *   view-tagged N      calls N times with requests "REQ<i>"
 *   view-zombie        serves; once its caller is gone, jumps to the way
 *                      back's switch aiming at it; prints what the message
 *                      area holds then
 *   view-jump-base     jumps to the call's switch aiming at view 0 /
 *                      EPTP-list entry 0; prints "returned" if it comes back
 *   view-switch N      writes VIEW_SWITCH to view N from its own code
 *                      (outside the trampoline)
 *   view-crash-once    serves with a handler that crashes on its first
 *                      call and answers "ALIVE" after
 *   view-spin          serves with a handler that buffers a line of
 *                      output ("CALLEE-SECRET") and spins forever
 *   view-call2         calls its peer twice; prints "first=A second=B"
 *   view-liar          writes another view number into its own control
 *                      block, then calls; prints "call=<result>"
 *   view-biglen        enters the trampoline with a 1 MiB length
 *   view-flags         serves with a handler that answers "df=D mxcsr=M"
 *                      (its direction flag and MXCSR as it found them)
 *   view-dirty         calls its peer with the direction flag set and
 *                      every SSE exception unmasked, entering the
 *                      trampoline at its switch (skipping the caller-side
 *                      scrub); prints the reply
 *
 * A fault mode that does not fault prints "faults: MODE did not fault" to
 * stderr and exits 3. Bad usage exits 2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xos_guest.h>

#define FAR_AWAY 0x4000000000ull /* 256 GiB: above any guest memory size */

static volatile int sink;
static char secret[64];

static unsigned long crash_handler(unsigned long len, unsigned long cap)
{
    (void)len;
    (void)cap;
    return (unsigned long)*(volatile int *)0;
}

static unsigned long print_handler(unsigned long len, unsigned long cap)
{
    (void)cap;
    /* Any hypercall, inside the call. */
    xos_hypercall(XOS_HC_NOP, 0, 0, 0, 0, 0, 0);
    return len;
}

static unsigned long crash_once_handler(unsigned long len, unsigned long cap)
{
    static int calls;
    size_t size;
    char *area = xos_view_buffer(&size);
    (void)len;
    (void)cap;
    if (calls++ == 0)
        return (unsigned long)*(volatile int *)0;
    memcpy(area, "ALIVE", 5);
    return 5;
}

static unsigned long spin_handler(unsigned long len, unsigned long cap)
{
    (void)len;
    (void)cap;
    printf("CALLEE-SECRET\n"); /* buffered in this view's memory */
    while (sink >= 0)
        sink = (sink + 1) & 0x7fffffff;
    return 0;
}

static unsigned long flags_handler(unsigned long len, unsigned long cap)
{
    size_t size;
    char *area = xos_view_buffer(&size);
    unsigned long flags;
    unsigned mxcsr;
    (void)len;
    (void)cap;
    __asm__ volatile("pushfq; popq %0; stmxcsr %1" : "=r"(flags), "=m"(mxcsr));
    char text[48];
    int n = snprintf(text, sizeof text, "df=%lu mxcsr=%x", (flags >> 10) & 1,
                     mxcsr);
    /* No string instructions here: they would run backwards with DF set. */
    for (int i = 0; i < n; i++)
        area[i] = text[i];
    return (unsigned long)n;
}

/* The trampoline's first switch: "a3" and the doorbell address. */
static volatile struct xos_view_control *view_control(void)
{
    return (volatile struct xos_view_control *)(uintptr_t)XOS_VIEW_CONTROL;
}

static volatile struct xos_view_gate *view_gate(void)
{
    return (volatile struct xos_view_gate *)(uintptr_t)XOS_VIEW_GATE;
}

/* The n-th (from 0) view switch in the trampoline page, as this monitor
 * switches: the VIEW_SWITCH doorbell (memory-slot fallback), or, when the
 * views have EPTP-list indexes, "xor eax, eax; vmfunc" or the emulated
 * VMFUNC ("mov eax, ecx; shl eax, 16; ..." then the doorbell). */
static uintptr_t switch_site(int n)
{
    const unsigned char *t = (const unsigned char *)(uintptr_t)XOS_VIEW_CALL;
    volatile struct xos_view_gate *g = view_gate();
    int vmfunc = g->peer_slot != XOS_VIEW_NO_SLOT || g->caller_slot != XOS_VIEW_NO_SLOT;
    static const unsigned char door[9] = {0xa3, 0, 0, 0, 0, 0x04, 0, 0, 0};
    static const unsigned char real[5] = {0x31, 0xc0, 0x0f, 0x01, 0xd4};
    static const unsigned char emulated[5] = {0x89, 0xc8, 0xc1, 0xe0, 0x10};
    for (int i = 0; i + 9 <= 4096; i++) {
        int hit = vmfunc ? !memcmp(t + i, real, 5) || !memcmp(t + i, emulated, 5)
                         : !memcmp(t + i, door, 9);
        if (hit && n-- == 0)
            return (uintptr_t)t + (uintptr_t)i;
    }
    return 0;
}

static uint64_t dirty_door, dirty_value, dirty_slot;
static unsigned dirty_mxcsr; /* every SSE exception unmasked */

static long dirty_call(void)
{
    volatile struct xos_view_control *c = view_control();
    dirty_door = switch_site(0);
    if (!dirty_door)
        return -1;
    dirty_value = XOS_HC_VIEW_SWITCH | (unsigned)c->peer << 16;
    dirty_slot = view_gate()->peer_slot;
    c->flags = XOS_VIEW_IN_CALL; /* what view_call's VMFUNC path sets */
    unsigned saved_mxcsr;
    long r;
    __asm__ volatile("stmxcsr %0" : "=m"(saved_mxcsr));
    /* What view_call does up to its switch, minus the scrub, plus a dirty
     * direction flag and MXCSR. The trampoline's way back restores rbx,
     * rbp and r12-r15 from this stack and returns after "call 2f". */
    __asm__ volatile("call 2f\n\t"
                     "jmp 3f\n"
                     "2:\n\t"
                     "push %%rbx; push %%rbp; push %%r12\n\t"
                     "push %%r13; push %%r14; push %%r15\n\t"
                     "mov %%rsp, %c[saved]\n\t"
                     "mov %c[self], %%r12\n\t"
                     "ldmxcsr %[mx]\n\t"
                     "mov $1, %%edi\n\t"
                     "mov $65536, %%esi\n\t"
                     "mov %[value], %%eax\n\t"
                     "mov %[slot], %%ecx\n\t"
                     "std\n\t"
                     "jmp *%[door]\n"
                     "3:\n\t"
                     "cld"
                     : "=a"(r)
                     : [saved] "i"(XOS_VIEW_CONTROL + 32),
                       [self] "i"(XOS_VIEW_CONTROL + 0), [mx] "m"(dirty_mxcsr),
                       [value] "m"(dirty_value), [slot] "m"(dirty_slot),
                       [door] "m"(dirty_door)
                     : "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11",
                       "memory", "cc");
    __asm__ volatile("ldmxcsr %0" : : "m"(saved_mxcsr));
    return r;
}


/* Address of the trampoline's own "mov eax, VIEW_WAIT; mov [DOORBELL],
 * eax" (b8 0e 00 00 00 a3), or 0. */
static uintptr_t wait_site(void)
{
    const unsigned char *t = (const unsigned char *)(uintptr_t)XOS_VIEW_CALL;
    static const unsigned char pat[6] = {0xb8, XOS_HC_VIEW_WAIT, 0, 0, 0, 0xa3};
    for (int i = 0; i + 6 <= 4096; i++)
        if (!memcmp(t + i, pat, 6))
            return (uintptr_t)t + (uintptr_t)i;
    return 0;
}

static uint64_t jump_door, jump_slot;

/* Enters the trampoline like view_call (callee-saved registers pushed, the
 * stack pointer saved, so its way back returns here) but jumps to
 * jump_door with ecx = jump_slot, edx = 0, edi = 2. */
static long jump_like_a_call(void)
{
    long r;
    __asm__ volatile("call 2f\n\t"
                     "jmp 3f\n"
                     "2:\n\t"
                     "push %%rbx; push %%rbp; push %%r12\n\t"
                     "push %%r13; push %%r14; push %%r15\n\t"
                     "mov %%rsp, %c[saved]\n\t"
                     "mov %[slot], %%ecx\n\t"
                     "xor %%edx, %%edx\n\t"
                     "mov $2, %%edi\n\t"
                     "jmp *%[door]\n"
                     "3:\n\t"
                     : "=a"(r)
                     : [saved] "i"(XOS_VIEW_CONTROL + 32), [door] "m"(jump_door),
                       [slot] "m"(jump_slot)
                     : "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11",
                       "memory", "cc");
    return r;
}

static unsigned char reopen_stack[16384] __attribute__((aligned(16)));

static unsigned long ok_handler(unsigned long len, unsigned long cap)
{
    size_t size;
    char *area = xos_view_buffer(&size);
    (void)len;
    (void)cap;
    memcpy(area, "ok", 2);
    return 2;
}

__attribute__((noinline)) static int recurse(volatile char *up, int depth)
{
    volatile char frame[1024];
    frame[0] = up ? up[0] : 0;
    if (depth == -1) /* never: keeps the recursion formally finite */
        return frame[0];
    return recurse(frame, depth + 1) + frame[1];
}

static int usage(void)
{
    fprintf(stderr,
            "usage: faults null|unmapped|system|ud|div0|gp|loop|stack|exec-data|"
            "write-code|abort|"
            "badptr|bigout | exit N | hostcall NAME INPUT\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    const char *m = argv[1];
    if (!strcmp(m, "null")) {
        sink = *(volatile int *)0;
    } else if (!strcmp(m, "unmapped")) {
        *(volatile char *)FAR_AWAY = 1;
    } else if (!strcmp(m, "system")) {
        *(volatile char *)0x1000 = 1;
    } else if (!strcmp(m, "ud")) {
        __asm__ volatile("ud2");
    } else if (!strcmp(m, "div0")) {
        volatile int a = 1, b = 0;
        sink = a / b;
    } else if (!strcmp(m, "gp")) {
        __asm__ volatile("hlt");
    } else if (!strcmp(m, "loop")) {
        for (;;)
            __asm__ volatile("" ::: "memory");
    } else if (!strcmp(m, "stack")) {
        sink = recurse(NULL, 0);
    } else if (!strcmp(m, "exec-data")) {
        static volatile unsigned char code[16];
        code[0] = 0xc3; /* ret */
        ((void (*)(void))(unsigned long)code)();
    } else if (!strcmp(m, "write-code")) {
        *(volatile unsigned char *)(unsigned long)main = 0xc3;
    } else if (!strcmp(m, "abort")) {
        abort();
    } else if (!strcmp(m, "exit")) {
        if (argc != 3)
            return usage();
        exit(atoi(argv[2]));
    } else if (!strcmp(m, "badptr")) {
        long r = xos_hypercall(XOS_HC_WRITE, 1, FAR_AWAY, 16, 0, 0, 0);
        printf("write returned %ld\n", r);
        return 0;
    } else if (!strcmp(m, "bigout")) {
        for (int i = 0; i < 300000; i++)
            putchar('x');
        putchar('\n');
        return 0;
    } else if (!strcmp(m, "hostcall")) {
        if (argc != 4)
            return usage();
        static char out[4096];
        long r = xos_host_call(argv[2], argv[3], strlen(argv[3]), out,
                               sizeof(out));
        printf("ret=%ld out=%.*s\n", r, r > 0 ? (int)r : 0, out);
        return 0;
    } else if (!strcmp(m, "virtio-evil")) {
        volatile uint32_t *r = (volatile uint32_t *)(uintptr_t)XOS_VIRTIO_MMIO;
        if (!(xos_boot_info()->devices & XOS_DEVICE_VIRTIO_CHANNEL))
            return usage();
        r[0x70 / 4] = 0;
        r[0x70 / 4] = 3;
        r[0x24 / 4] = 1;
        r[0x20 / 4] = 1; /* VIRTIO_F_VERSION_1 */
        r[0x70 / 4] = 0xb;
        for (uint32_t q = 0; q < 2; q++) {
            r[0x30 / 4] = q;
            r[0x38 / 4] = 8;
            r[0x80 / 4] = 0x4000; /* the PML4 */
            r[0x84 / 4] = 0;
            r[0x90 / 4] = 0x5000;
            r[0x94 / 4] = 0;
            r[0xa0 / 4] = 0x6000;
            r[0xa4 / 4] = 0;
            r[0x44 / 4] = 1;
        }
        r[0x70 / 4] = 0xf; /* DRIVER_OK */
        printf("status=%x\n", r[0x70 / 4]);
        return 0;
    } else if (!strcmp(m, "view-crash") || !strcmp(m, "view-print") ||
               !strcmp(m, "view-secret")) {
        xos_view_handler h = m[5] == 'c' ? crash_handler
                             : m[5] == 'p' ? print_handler
                                           : ok_handler;
        if (h == ok_handler)
            strcpy(secret, "TOPSECRET");
        long r = xos_view_serve(h);
        printf("serve=%ld\n", r);
        return 0;
    } else if (!strcmp(m, "view-crash-once") || !strcmp(m, "view-spin")) {
        long r = xos_view_serve(m[5] == 'c' ? crash_once_handler : spin_handler);
        printf("serve=%ld\n", r);
        return 0;
    } else if (!strcmp(m, "view-call2")) {
        char reply[16] = {0};
        long a = xos_view_call("x", 1, reply, sizeof reply - 1);
        long b = xos_view_call("x", 1, reply, sizeof reply - 1);
        printf("first=%ld second=%ld\n", a, b);
        return 0;
    } else if (!strcmp(m, "view-liar")) {
        ((volatile struct xos_view_control *)(uintptr_t)XOS_VIEW_CONTROL)
            ->this_view = 3;
        char reply[16] = {0};
        printf("call=%ld\n", xos_view_call("x", 1, reply, sizeof reply - 1));
        return 0;
    } else if (!strcmp(m, "view-biglen")) {
        long (*call)(unsigned long, unsigned long) =
            (long (*)(unsigned long, unsigned long))(uintptr_t)XOS_VIEW_CALL;
        printf("call=%ld\n", call(1ul << 20, 1ul << 20));
        return 0;
    } else if (!strcmp(m, "view-flags")) {
        printf("serve=%ld\n", xos_view_serve(flags_handler));
        return 0;
    } else if (!strcmp(m, "view-dirty")) {
        size_t size;
        char *area = xos_view_buffer(&size);
        long r = dirty_call();
        if (r > 0 && r < 48) {
            area[r] = 0;
            printf("reply: %s\n", area);
        } else {
            printf("call=%ld\n", r);
        }
        return 0;
    } else if (!strcmp(m, "view-peek") || !strcmp(m, "view-call")) {
        char reply[16] = {0};
        long r = xos_view_call("hello", 5, reply, sizeof reply - 1);
        if (m[5] == 'c') {
            printf("call=%ld\n", r);
            return 0;
        }
        printf("peek: reply=%s mine=%s\n", r > 0 ? reply : "none",
               strstr(secret, "TOPSECRET") ? "SECRET" : "clean");
        return 0;
    } else if (!strcmp(m, "view-fake-wait")) {
        /* A caller that calls once, then jumps to the trampoline's own
         * VIEW_WAIT doorbell (no switch at all) while its callee serves. */
        char reply[16] = {0};
        long a = xos_view_call("x", 1, reply, sizeof reply - 1);
        jump_door = wait_site();
        if (!jump_door)
            return usage();
        long b = jump_like_a_call();
        printf("first=%ld fake=%ld\n", a, b);
        return 0;
    } else if (!strcmp(m, "view-reopen")) {
        /* A callee that sets itself up to serve without view_serve and
         * opens its own gate, then ends. */
        volatile struct xos_view_control *c = view_control();
        c->handler = (uint64_t)(uintptr_t)ok_handler;
        c->serve_rsp = (uint64_t)(uintptr_t)(reopen_stack + sizeof reopen_stack - 64);
        view_gate()->open = 1;
        printf("reopened\n");
        return 0;
    } else if (!strcmp(m, "view-tagged") && argc == 3) {
        /* Calls its peer N times, request i being "REQ<i>". */
        long n = atol(argv[2]), ok = 0, fail = 0;
        char reply[16], req[16];
        for (long i = 0; i < n; i++) {
            int l = snprintf(req, sizeof req, "REQ%ld", i);
            long r = xos_view_call(req, (size_t)l, reply, sizeof reply - 1);
            if (r == 2)
                ok++;
            else {
                fail = r;
                break;
            }
        }
        printf("ok=%ld fail=%ld\n", ok, fail);
        return 0;
    } else if (!strcmp(m, "view-zombie")) {
        /* Serves; once its caller is gone, jumps to the way back's switch
         * aiming at the caller, as if returning from a call, and prints
         * what the message area holds then. */
        size_t size;
        char *area = xos_view_buffer(&size);
        long r = xos_view_serve(ok_handler);
        memcpy(area, "ZZZZZZZZ", 8);
        jump_door = switch_site(1);
        jump_slot = view_gate()->caller_slot;
        long z = jump_like_a_call();
        printf("serve=%ld zombie=%ld area=%.8s\n", r, z, area);
        return 0;
    } else if (!strcmp(m, "view-jump-return") || !strcmp(m, "view-jump-base")) {
        /* view-jump-return: the way back's switch, taken by a caller that
         * is in no call, with the registers of a call into its peer.
         * view-jump-base: the call's switch to view 0 / EPTP-list entry 0
         * (the base, which is no view with VMFUNC). */
        volatile struct xos_view_control *c = view_control();
        int base = m[10] == 'b';
        uintptr_t at = switch_site(base ? 0 : 1);
        uint32_t value = XOS_HC_VIEW_SWITCH | (base ? 0u : (unsigned)c->peer << 16);
        uint32_t slot = base ? 0u : (uint32_t)view_gate()->peer_slot;
        if (!at || xos_view_role() != 1)
            return usage();
        __asm__ volatile("mov %0, %%eax\n\t"
                         "mov %1, %%ecx\n\t"
                         "xor %%edi, %%edi\n\t"
                         "xor %%esi, %%esi\n\t"
                         "jmp *%2"
                         :
                         : "m"(value), "m"(slot), "r"(at)
                         : "rax", "rcx", "rdi", "rsi", "memory");
        printf("returned\n");
        return 0;
    } else if (!strcmp(m, "view-switch") && argc == 3) {
        unsigned view = (unsigned)strtoul(argv[2], NULL, 10);
        *(volatile uint32_t *)(uintptr_t)XOS_DOORBELL =
            XOS_HC_VIEW_SWITCH | view << 16;
        printf("switched\n");
        return 0;
    } else if (!strcmp(m, "virtio-ahead")) {
        /* Queue memory in ordinary user memory: only the index is wrong. */
        static struct {
            uint8_t desc[8 * 16] __attribute__((aligned(16)));
            uint16_t avail[2 + 8 + 1] __attribute__((aligned(2)));
            uint8_t used[4 + 8 * 8 + 2] __attribute__((aligned(4)));
        } q[2];
        volatile uint32_t *r = (volatile uint32_t *)(uintptr_t)XOS_VIRTIO_MMIO;
        if (!(xos_boot_info()->devices & XOS_DEVICE_VIRTIO_CHANNEL))
            return usage();
        r[0x70 / 4] = 0;
        r[0x70 / 4] = 3;
        r[0x24 / 4] = 1;
        r[0x20 / 4] = 1; /* VIRTIO_F_VERSION_1 */
        r[0x70 / 4] = 0xb;
        for (uint32_t i = 0; i < 2; i++) {
            r[0x30 / 4] = i;
            r[0x38 / 4] = 8;
            r[0x80 / 4] = (uint32_t)(uintptr_t)q[i].desc;
            r[0x84 / 4] = (uint32_t)((uintptr_t)q[i].desc >> 32);
            r[0x90 / 4] = (uint32_t)(uintptr_t)q[i].avail;
            r[0x94 / 4] = (uint32_t)((uintptr_t)q[i].avail >> 32);
            r[0xa0 / 4] = (uint32_t)(uintptr_t)q[i].used;
            r[0xa4 / 4] = (uint32_t)((uintptr_t)q[i].used >> 32);
            r[0x44 / 4] = 1;
        }
        r[0x70 / 4] = 0xf; /* DRIVER_OK */
        ((volatile uint16_t *)q[0].avail)[1] = 100; /* avail.idx */
        r[0x50 / 4] = 0; /* QueueNotify */
        uint32_t status = 0;
        /* Each read is an exit (~25 us): ~2 s at most. */
        for (int i = 0; i < 80000 && !(status & 0x40); i++)
            status = r[0x70 / 4];
        printf("status=%x\n", status);
        return 0;
    } else {
        return usage();
    }
    fprintf(stderr, "faults: %s did not fault\n", m);
    return 3;
}
