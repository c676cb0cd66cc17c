/* The channel window: one end of a shared-memory ring channel that the
 * monitor mapped into this guest (BootInfo.window; docs/ABI.md, "Channel
 * window"). Messages go through memory, so a call costs no exit unless a
 * side sleeps.
 *
 * The peer may be hostile: every position read from the window is checked
 * against the capacity and every data index is masked, so a corrupt window
 * gives XOS_EIO, never an access outside it. */
#include <string.h>
#include <xos_guest.h>

/* Spins between looks at the peer's closed flag. */
#define CHECK_EVERY 1024u
/* Spin mode: spins between WINDOW_WAIT(0) calls, which ask the monitor
 * whether the peer still lives (it may have died without closing). */
#define ASK_EVERY (1u << 16)
/* May-sleep mode: spins before sleeping (~250 us), like the host side. */
#define SLEEP_AFTER (1u << 13)
/* Spin mode: a gap this long (TSC cycles, ~0.3-1 ms) between two looks
 * means the host took this vCPU's CPU away: it has more runnable threads
 * than CPUs and the peer may wait for ours. Such a waiter sleeps like
 * may-sleep mode (the peer wakes it) instead of spinning on, because a
 * spinner that never gives way makes each hand-off cost a time slice. */
#define PREEMPTED_GAP (1ull << 20)
/* Spin mode: spins before a preempted waiter (in this wait or lately)
 * sleeps; a wait the peer ends sooner, unpreempted, returns to spinning. */
#define SPINS_WHEN_PREEMPTED 64u
/* Spin mode: every this many early-sleeping waits, one spins SLEEP_AFTER
 * first (a probe); if the peer answers meanwhile it is merely slow, and
 * waits spin again. */
#define PROBE_EVERY 64u
/* Longest sleep per WINDOW_WAIT, in microseconds (the monitor caps it). */
#define NAP_US 20000u

static struct {
    int state; /* 0 not looked at yet, 1 usable, -1 no usable window */
    uint8_t *base;
    uint32_t cap;
    uint32_t side;
    int may_sleep;
    /* spin mode: 0 while waits spin; after a preempted wait, 1 + the
     * number of waits since that sleep early */
    uint32_t sleepy;
} ring;

static uint64_t tsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static uint32_t *word(uint32_t off) { return (uint32_t *)(ring.base + off); }

static uint32_t load(uint32_t off)
{
    return __atomic_load_n(word(off), __ATOMIC_ACQUIRE);
}

/* For the sleeps-flag handshake (store flag, then load word; store word,
 * then load flag): both loads must be sequentially consistent with the
 * stores, or a wake-up can be missed (a plain mov on x86 either way). */
static uint32_t load_sc(uint32_t off)
{
    return __atomic_load_n(word(off), __ATOMIC_SEQ_CST);
}

static void store(uint32_t off, uint32_t v)
{
    __atomic_store_n(word(off), v, __ATOMIC_SEQ_CST);
}

int xos_chan_window(void)
{
    if (ring.state)
        return ring.state > 0;
    ring.state = -1;
    const struct xos_window_info *w = &xos_boot_info()->window;
    if (!w->addr || w->size < XOS_RING_CONTROL + 2 * 4096 || w->side > 1)
        return 0;
    ring.base = (uint8_t *)(uintptr_t)w->addr;
    uint32_t cap = load(XOS_RING_OFF_CAPACITY);
    if (load(XOS_RING_OFF_MAGIC) != XOS_RING_MAGIC || cap < 4096 ||
        (cap & (cap - 1)) || XOS_RING_CONTROL + 2ull * cap > w->size)
        return 0;
    ring.cap = cap;
    ring.side = w->side;
    ring.may_sleep = (w->flags & XOS_WINDOW_MAY_SLEEP) != 0;
    ring.state = 1;
    return 1;
}

static int peer_closed(void)
{
    return load(XOS_RING_OFF_CLOSED(1 - ring.side)) != 0;
}

/* Waits until the word at `off` no longer holds `seen`, announcing sleeps
 * in the flag at `sleeps_off`. Returns the new value, or XOS_EPIPE when
 * the peer is gone and the word did not change. */
static long wait_change(uint32_t off, uint32_t seen, uint32_t sleeps_off)
{
    uint32_t spins = 0;
    uint32_t sleepy = ring.may_sleep ? 0 : ring.sleepy;
    int probe = sleepy && sleepy % PROBE_EVERY == 0;
    int preempted = 0, slept = 0;
    uint64_t last_look = tsc();
    for (;;) {
        uint32_t v = load(off);
        if (v != seen) {
            /* A wait that ends before its first spin says nothing: the
             * peer may have answered while this vCPU did not run. */
            if (!ring.may_sleep && spins)
                ring.sleepy = preempted         ? 1
                              : sleepy && slept ? sleepy + 1
                                                : 0;
            return v;
        }
        spins++;
        if (spins % CHECK_EVERY == 0 && peer_closed()) {
            v = load(off); /* a last message may have landed first */
            return v != seen ? (long)v : XOS_EPIPE;
        }
        int sleep;
        if (ring.may_sleep) {
            sleep = spins >= SLEEP_AFTER;
        } else {
            if (spins % 64 == 0) {
                uint64_t now = tsc();
                if (now - last_look >= PREEMPTED_GAP)
                    preempted = 1;
                last_look = now;
            }
            if (probe && !preempted)
                sleep = spins >= SLEEP_AFTER;
            else
                sleep = (preempted || sleepy) && spins >= SPINS_WHEN_PREEMPTED;
        }
        if (sleep || spins % ASK_EVERY == 0) {
            long r = 0;
            if (sleep)
                store(sleeps_off, 1);
            if (load_sc(off) == seen) {
                r = xos_hypercall(XOS_HC_WINDOW_WAIT, off, seen,
                                  sleep ? NAP_US : 0, 0, 0, 0);
                slept |= sleep;
            }
            if (sleep)
                store(sleeps_off, 0);
            last_look = tsc();
            if (r == XOS_EPIPE) {
                v = load(off);
                return v != seen ? (long)v : XOS_EPIPE;
            }
            if (r < 0)
                return r;
        } else {
            __builtin_ia32_pause();
        }
    }
}

/* Publishes a new position and wakes the peer if it said it sleeps. */
static void publish(uint32_t off, uint32_t value, uint32_t peer_sleeps_off)
{
    store(off, value);
    if (load_sc(peer_sleeps_off))
        xos_hypercall(XOS_HC_WINDOW_WAKE, off, 0, 0, 0, 0, 0);
}

/* Appends the concatenation of two byte strings to our outgoing ring. */
static long put(const uint8_t *a, uint32_t alen, const uint8_t *b,
                uint32_t blen)
{
    uint32_t k = ring.side, cap = ring.cap;
    uint8_t *data = ring.base + XOS_RING_CONTROL + (uint64_t)k * cap;
    uint32_t head_off = XOS_RING_FIELD(k, XOS_RING_HEAD);
    uint32_t tail_off = XOS_RING_FIELD(k, XOS_RING_TAIL);
    uint32_t head = load(head_off);
    const uint8_t *src[2] = {a, b};
    uint32_t len[2] = {alen, blen};
    int p = 0;
    uint32_t pos = 0;
    while (p < 2) {
        uint32_t tail = load(tail_off);
        uint32_t used = head - tail;
        if (used > cap)
            return XOS_EIO;
        if (used == cap) {
            long r = wait_change(tail_off, tail,
                                 XOS_RING_FIELD(k, XOS_RING_PRODUCER_SLEEPS));
            if (r < 0)
                return r;
            continue;
        }
        uint32_t room = cap - used;
        while (p < 2 && (room || pos == len[p])) {
            uint32_t n = len[p] - pos;
            if (n > room)
                n = room;
            uint32_t at = head & (cap - 1);
            uint32_t first = n < cap - at ? n : cap - at;
            memcpy(data + at, src[p] + pos, first);
            memcpy(data, src[p] + pos + first, n - first);
            head += n;
            room -= n;
            pos += n;
            if (pos == len[p]) {
                p++;
                pos = 0;
            }
        }
        publish(head_off, head, XOS_RING_FIELD(k, XOS_RING_CONSUMER_SLEEPS));
    }
    return 0;
}

/* Takes `n` bytes from our incoming ring into `dst` (NULL: discard). */
static long get(uint8_t *dst, uint32_t n)
{
    uint32_t k = 1 - ring.side, cap = ring.cap;
    const uint8_t *data = ring.base + XOS_RING_CONTROL + (uint64_t)k * cap;
    uint32_t head_off = XOS_RING_FIELD(k, XOS_RING_HEAD);
    uint32_t tail_off = XOS_RING_FIELD(k, XOS_RING_TAIL);
    uint32_t tail = load(tail_off);
    uint32_t done = 0;
    while (done < n) {
        uint32_t head = load(head_off);
        if (head == tail) {
            long r = wait_change(head_off, tail,
                                 XOS_RING_FIELD(k, XOS_RING_CONSUMER_SLEEPS));
            if (r < 0)
                return r;
            continue;
        }
        uint32_t avail = head - tail;
        if (avail > cap)
            return XOS_EIO;
        uint32_t m = n - done < avail ? n - done : avail;
        if (dst) {
            uint32_t at = tail & (cap - 1);
            uint32_t first = m < cap - at ? m : cap - at;
            memcpy(dst + done, data + at, first);
            memcpy(dst + done + first, data, m - first);
        }
        tail += m;
        done += m;
        publish(tail_off, tail, XOS_RING_FIELD(k, XOS_RING_PRODUCER_SLEEPS));
    }
    return 0;
}

long xos_chan_send(const void *msg, size_t len)
{
    if (!xos_chan_window())
        return XOS_EINVAL;
    if (len > UINT32_MAX)
        return XOS_E2BIG;
    uint8_t header[XOS_RING_HEADER];
    uint32_t n = (uint32_t)len;
    memcpy(header, &n, sizeof header);
    return put(header, sizeof header, msg, n);
}

long xos_chan_recv(void *buf, size_t cap)
{
    if (!xos_chan_window())
        return XOS_EINVAL;
    uint8_t header[XOS_RING_HEADER];
    long r = get(header, sizeof header);
    if (r < 0)
        return r;
    uint32_t n;
    memcpy(&n, header, sizeof n);
    if (n > cap) {
        r = get(NULL, n); /* consumed, like a host call's E2BIG */
        return r < 0 ? r : XOS_E2BIG;
    }
    r = get(buf, n);
    return r < 0 ? r : (long)n;
}

long xos_chan_call(const void *request, size_t len, void *reply, size_t cap)
{
    long r = xos_chan_send(request, len);
    return r < 0 ? r : xos_chan_recv(reply, cap);
}
