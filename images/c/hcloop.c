/* hcloop N: performs N NOP hypercalls in a tight loop, then exits 0
 * (hypercall round-trip benchmark). Exits 1 if a NOP returns an error. */
#include <stdio.h>
#include <stdlib.h>
#include <xos_guest.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: hcloop N\n");
        return 2;
    }
    char *end;
    unsigned long long n = strtoull(argv[1], &end, 10);
    if (end == argv[1] || *end) {
        fprintf(stderr, "hcloop: not a count: '%s'\n", argv[1]);
        return 2;
    }
    for (unsigned long long i = 0; i < n; i++) {
        long r = xos_hypercall(XOS_HC_NOP, 0, 0, 0, 0, 0, 0);
        if (r != 0) {
            fprintf(stderr, "hcloop: NOP returned %ld at iteration %llu\n", r,
                    i);
            return 1;
        }
    }
    return 0;
}
