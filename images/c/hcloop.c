/* hcloop N [SIZE]: performs N NOP hypercalls in a tight loop, then exits 0
 * (hypercall round-trip benchmark). With SIZE, each of the N calls is
 * instead a call to the host function "echo" with SIZE bytes in and the
 * same SIZE bytes expected back (cross-IC call benchmark). Exits 1 if a
 * call fails or an echo differs in length, 2 on bad usage. */
#include <stdio.h>
#include <stdlib.h>
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

int main(int argc, char **argv)
{
    unsigned long long n, size = 0;
    if (argc < 2 || argc > 3 || !parse(argv[1], &n) ||
        (argc == 3 && (!parse(argv[2], &size) || size > MAX_SIZE))) {
        fprintf(stderr, "usage: hcloop N [SIZE <= %d]\n", MAX_SIZE);
        return 2;
    }
    for (unsigned long long i = 0; i < size; i++)
        request[i] = (unsigned char)i;
    for (unsigned long long i = 0; i < n; i++) {
        long r = argc == 3
                     ? xos_host_call("echo", request, size, reply, size)
                     : xos_hypercall(XOS_HC_NOP, 0, 0, 0, 0, 0, 0);
        if (r != (argc == 3 ? (long)size : 0)) {
            fprintf(stderr, "hcloop: call returned %ld at iteration %llu\n", r,
                    i);
            return 1;
        }
    }
    return 0;
}
