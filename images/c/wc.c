/* wc: counts the lines, words and bytes of stdin and prints them the way
 * GNU `wc` with no arguments does when stdin is a pipe, in the C locale:
 * "%7lu %7lu %7lu\n". A word is a maximal run of bytes that are not white
 * space and contains at least one printable character (GNU wc 9 in the C
 * locale: other bytes neither start nor end a word). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
    static unsigned char buf[4096];
    unsigned long lines = 0, words = 0, bytes = 0;
    int in_word = 0;
    ssize_t n;
    while ((n = read(0, buf, sizeof(buf))) > 0) {
        bytes += (unsigned long)n;
        for (ssize_t i = 0; i < n; i++) {
            unsigned char c = buf[i];
            switch (c) {
            case '\n':
                lines++;
                /* fall through */
            case ' ':
            case '\t':
            case '\v':
            case '\f':
            case '\r':
                in_word = 0;
                break;
            default:
                if (c > 0x20 && c < 0x7f && !in_word) {
                    in_word = 1;
                    words++;
                }
                break;
            }
        }
    }
    if (n < 0) {
        fprintf(stderr, "wc: read error: %s\n", strerror(errno));
        return 1;
    }
    printf("%7lu %7lu %7lu\n", lines, words, bytes);
    return 0;
}
