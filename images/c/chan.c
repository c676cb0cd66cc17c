/* chan call N SIZE | chan serve: one end of a cross-IC channel, reached
 * through the host functions the monitor attaches for it ("chan.call",
 * "chan.recv", "chan.reply_recv"; see icf::channel::attach).
 *
 *   chan call N SIZE  makes N calls with SIZE-byte requests and checks each
 *                     reply is the request with every byte plus one;
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
static int serve(void)
{
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

static int call(unsigned long long n, unsigned long long size)
{
    for (unsigned long long i = 0; i < n; i++) {
        for (unsigned long long j = 0; j < size; j++)
            request[j] = (unsigned char)(i + j);
        long r = xos_host_call("chan.call", request, size, reply, MAX_SIZE);
        if (r != (long)size) {
            fprintf(stderr, "chan: call %llu returned %ld, expected %llu\n", i,
                    r, size);
            return 1;
        }
        for (unsigned long long j = 0; j < size; j++) {
            if (reply[j] != (unsigned char)(i + j + 1)) {
                fprintf(stderr, "chan: call %llu: wrong byte %llu\n", i, j);
                return 1;
            }
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    unsigned long long n, size;
    if (argc == 2 && !strcmp(argv[1], "serve"))
        return serve();
    if (argc == 4 && !strcmp(argv[1], "call") && parse(argv[2], &n) &&
        parse(argv[3], &size) && size <= MAX_SIZE)
        return call(n, size);
    fprintf(stderr, "usage: chan call N SIZE(<=%d) | chan serve\n", MAX_SIZE);
    return 2;
}
