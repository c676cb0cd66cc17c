/* sum: reads whitespace-separated signed decimal integers from stdin until
 * end of input and prints their sum followed by a newline. A token that is
 * not an integer (or does not fit in 64 bits), or a sum that overflows,
 * is reported on stderr and the exit code is 1. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TOKEN_MAX 64

static char token[TOKEN_MAX + 1];
static size_t token_len;  /* bytes seen in the current token */
static long long sum;

static void bad_token(void)
{
    if (token_len > TOKEN_MAX)
        fprintf(stderr, "sum: not an integer: '%s...'\n", token);
    else
        fprintf(stderr, "sum: not an integer: '%s'\n", token);
    exit(1);
}

static void end_token(void)
{
    if (token_len == 0)
        return;
    if (token_len > TOKEN_MAX)
        bad_token();
    token[token_len] = 0;
    char *end;
    errno = 0;
    long long v = strtoll(token, &end, 10);
    if (end == token || *end != 0 || errno == ERANGE)
        bad_token();
    if (__builtin_add_overflow(sum, v, &sum)) {
        fprintf(stderr, "sum: overflow adding %s\n", token);
        exit(1);
    }
    token_len = 0;
}

int main(void)
{
    static char buf[4096];
    ssize_t n;
    while ((n = read(0, buf, sizeof(buf))) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)buf[i];
            if (isspace(c)) {
                end_token();
            } else {
                if (token_len < TOKEN_MAX)
                    token[token_len] = (char)c;
                else
                    token[TOKEN_MAX] = 0;
                token_len++;
            }
        }
    }
    if (n < 0) {
        fprintf(stderr, "sum: read error: %s\n", strerror(errno));
        return 1;
    }
    end_token();
    printf("%lld\n", sum);
    return 0;
}
