/* ready: a function with an expensive initialisation, for snapshots.
 *
 * It builds a 64 KiB table (the "initialisation"), calls xos_ready(), then
 * serves one invocation: reads stdin and prints
 *   "inits=<N> restored=<0|1> table=<checksum> input=<INPUT UPPERCASED>"
 * Run normally it prints inits=1 restored=0. Every run restored from a
 * snapshot taken at xos_ready() prints inits=1 restored=1: the
 * initialisation ran once, before the snapshot, and never again. */
#include <stdio.h>
#include <ctype.h>
#include <unistd.h>
#include <xos_guest.h>

static unsigned long table[8192];
static int inits;

int main(void)
{
    inits++;
    unsigned long x = 88172645463325252ul;
    for (unsigned i = 0; i < sizeof table / sizeof table[0]; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        table[i] = x;
    }
    int restored = xos_ready();

    unsigned long sum = 0;
    for (unsigned i = 0; i < sizeof table / sizeof table[0]; i++)
        sum += table[i] >> 40;
    static char input[4096];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof input - 1 && (n = read(0, input + len, sizeof input - 1 - len)) > 0)
        len += (size_t)n;
    input[len] = 0;
    for (size_t i = 0; i < len; i++)
        input[i] = (char)toupper((unsigned char)input[i]);
    printf("inits=%d restored=%d table=%lu input=%s\n", inits, restored, sum, input);
    return 0;
}
