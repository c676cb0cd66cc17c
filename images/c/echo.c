/* echo: copies stdin to stdout byte for byte, in 4096-byte chunks. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
    static char buf[4096];
    ssize_t n;
    while ((n = read(0, buf, sizeof(buf))) > 0) {
        ssize_t done = 0;
        while (done < n) {
            ssize_t w = write(1, buf + done, (size_t)(n - done));
            if (w <= 0) {
                fprintf(stderr, "echo: write error: %s\n", strerror(errno));
                return 1;
            }
            done += w;
        }
    }
    if (n < 0) {
        fprintf(stderr, "echo: read error: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}
