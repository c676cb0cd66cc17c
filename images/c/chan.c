/* chan call N SIZE [BATCH] | chan slow-call N SIZE SPINS | chan serve: one end of a cross-IC channel,
 * whichever way the monitor provides it: a channel window mapped into the
 * guest (xos_chan_*, no exit per message) when there is one, else a virtio
 * channel device (xos_vchan_*, no exit per message while its device thread
 * polls), else, in an ept-view IC with a peer view, a cross-view call
 * through the trampoline (xos_view_*, no copy through the monitor), else
 * the host functions of icf::channel::attach ("chan.call",
 * "chan.recv", "chan.reply_recv"), one exit per call.
 *
 *   chan call N SIZE [BATCH]  makes N calls with SIZE-byte requests and
 *                     checks each reply is the request with every byte plus
 *                     one; with BATCH, reads the time stamp counter before
 *                     the first call and after every BATCH calls and prints
 *                     the differences as "tsc D1 D2 ..." at the end
 *                     (benchmarks time window calls that way: no exit);
 *                     it then fills the request once and checks only the
 *                     first and last byte of each reply;
 *   chan slow-call N SIZE SPINS  like call, with SPINS `pause`
 *                     instructions before each call (a caller that works
 *                     between calls: a polling device has gone to sleep
 *                     by then, so the guest has to notify it);
 *   chan serve        answers every request that way until the channel
 *                     fails (the peer closed it), then exits 0.
 *
 * Exits 1 when a call fails or a reply is wrong, 2 on bad usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xos_guest.h>

#define MAX_SIZE 65536
static unsigned char request[MAX_SIZE];
static unsigned char reply[MAX_SIZE];

static int parse(const char *s, unsigned long long *out)
{
    char *end;
    *out = strtoull(s, &end, 10);
    return end != s && !*end;
}

/* One exit per request: the reply and the wait for the next request are
 * one host call (chan.reply_recv). */
/* An EPT view's handler: the request is in the message area; the reply
 * (each byte plus one) replaces it. */
static unsigned long view_handler(unsigned long len, unsigned long cap)
{
    size_t size;
    unsigned char *area = xos_view_buffer(&size);
    (void)cap;
    for (unsigned long i = 0; i < len; i++)
        area[i]++;
    return len;
}

static int serve(void)
{
    if (xos_view_role() == 2)
        return xos_view_serve(view_handler) == XOS_EPIPE ? 0 : 1;
    if (xos_chan_window() || xos_vchan_available()) {
        int window = xos_chan_window();
        long n;
        while ((n = window ? xos_chan_recv(request, MAX_SIZE)
                           : xos_vchan_recv(request, MAX_SIZE)) >= 0) {
            for (long i = 0; i < n; i++)
                request[i]++;
            if ((window ? xos_chan_send(request, (size_t)n)
                        : xos_vchan_send(request, (size_t)n)) < 0)
                break;
        }
        return 0; /* the peer is gone: done */
    }
    long n = xos_host_call("chan.recv", 0, 0, request, MAX_SIZE);
    while (n >= 0) {
        for (long i = 0; i < n; i++)
            request[i]++;
        memcpy(reply, request, (size_t)n);
        n = xos_host_call("chan.reply_recv", reply, (size_t)n, request,
                          MAX_SIZE);
    }
    return 0; /* the peer is gone: done */
}

#define MAX_BATCHES 4096
static unsigned long long batch_tsc[MAX_BATCHES + 1];

static unsigned long long tsc(void)
{
    unsigned lo, hi;
    __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
    return ((unsigned long long)hi << 32) | lo;
}

static unsigned long long spins_between_calls;

static int call(unsigned long long n, unsigned long long size,
                unsigned long long batch)
{
    int window = xos_chan_window();
    int vchan = !window && xos_vchan_available();
    int view = !window && !vchan && xos_view_role() == 1;
    unsigned long long stamps = 0;
    for (unsigned long long i = 0; i < n; i++) {
        for (unsigned long long k = 0; k < spins_between_calls; k++)
            __builtin_ia32_pause();
        if (batch && i % batch == 0 && stamps <= MAX_BATCHES)
            batch_tsc[stamps++] = tsc();
        /* Timed runs fill the request once and check the reply's ends
         * only, so that a call's time is the transport's, as in the host
         * channel benchmarks. */
        if (!batch || i == 0)
            for (unsigned long long j = 0; j < size; j++)
                request[j] = (unsigned char)(i + j);
        unsigned long long base = batch ? 0 : i;
        long r = window  ? xos_chan_call(request, size, reply, MAX_SIZE)
                 : vchan ? xos_vchan_call(request, size, reply, MAX_SIZE)
                 : view  ? xos_view_call(request, size, reply, MAX_SIZE)
                         : xos_host_call("chan.call", request, size, reply,
                                         MAX_SIZE);
        if (r != (long)size) {
            fprintf(stderr, "chan: call %llu returned %ld, expected %llu\n", i,
                    r, size);
            return 1;
        }
        for (unsigned long long j = 0; j < size; j++) {
            if (batch && j == 1 && size > 2)
                j = size - 1;
            if (reply[j] != (unsigned char)(base + j + 1)) {
                fprintf(stderr, "chan: call %llu: wrong byte %llu\n", i, j);
                return 1;
            }
        }
    }
    if (batch && stamps <= MAX_BATCHES) {
        batch_tsc[stamps++] = tsc();
        printf("tsc");
        for (unsigned long long b = 1; b < stamps; b++)
            printf(" %llu", batch_tsc[b] - batch_tsc[b - 1]);
        printf("\n");
    }
    return 0;
}

int main(int argc, char **argv)
{
    unsigned long long n, size, batch = 0;
    if (argc == 2 && !strcmp(argv[1], "serve"))
        return serve();
    if ((argc == 4 || argc == 5) && !strcmp(argv[1], "call") &&
        parse(argv[2], &n) && parse(argv[3], &size) && size <= MAX_SIZE &&
        (argc == 4 || (parse(argv[4], &batch) && batch > 0)))
        return call(n, size, batch);
    if (argc == 5 && !strcmp(argv[1], "slow-call") && parse(argv[2], &n) &&
        parse(argv[3], &size) && size <= MAX_SIZE &&
        parse(argv[4], &spins_between_calls))
        return call(n, size, 0);
    fprintf(stderr,
            "usage: chan call N SIZE(<=%d) [BATCH] | chan slow-call N SIZE "
            "SPINS | chan serve\n",
            MAX_SIZE);
    return 2;
}
