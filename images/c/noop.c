/* noop: the trivial function for warm-pool benchmarks: it reaches its
 * ready point at once and, in every call restored there, returns 0. */
#include <xos_guest.h>

int main(void)
{
    xos_ready();
    return 0;
}
