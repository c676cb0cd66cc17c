/* counter N: an execution flow that keeps a count while its peer talks to
 * it through the channel window, and offers a safe point after every
 * message, where the monitor may carry it into another kind of IC (mutate).
 * With N = 0 it counts until the peer closes the channel.
 *
 * For each of N requests it replies with 16 bytes: the number of requests
 * answered so far including this one, and how many times it has moved to a
 * new IC (both little-endian u64). The count lives on its stack and the
 * moves in .bss: both must survive every move. At the end it prints
 * "counted N, moved M times". Exits 1 when the channel fails, 2 on bad
 * usage or without a window. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xos_guest.h>

static unsigned long long moves;

int main(int argc, char **argv)
{
    char *end;
    unsigned long long n = argc == 2 ? strtoull(argv[1], &end, 10) : 0;
    if (argc != 2 || end == argv[1] || *end) {
        fprintf(stderr, "usage: counter N\n");
        return 2;
    }
    if (!xos_chan_window()) {
        fprintf(stderr, "counter: this IC has no channel window\n");
        return 2;
    }
    unsigned long long count = 0;
    unsigned char request[64];
    while (n == 0 || count < n) {
        long r = xos_chan_recv(request, sizeof request);
        if (r == XOS_EPIPE && n == 0)
            break; /* the peer is done */
        if (r < 0) {
            fprintf(stderr, "counter: receive failed (%ld) after %llu\n", r,
                    count);
            return 1;
        }
        count++;
        unsigned long long reply[2] = {count, moves};
        if (xos_chan_send(reply, sizeof reply) < 0) {
            fprintf(stderr, "counter: send failed after %llu\n", count);
            return 1;
        }
        moves += (unsigned long long)xos_safe_point();
    }
    printf("counted %llu, moved %llu times\n", count, moves);
    return 0;
}
