/* hello: prints "hello from a virtine:" and its arguments (argv[1..]),
 * space-separated, then a newline. One exit in total: EXIT, which also
 * hands over the buffered output. */
#include <stdio.h>

int main(int argc, char **argv)
{
    printf("hello from a virtine:");
    for (int i = 1; i < argc; i++)
        printf(" %s", argv[i]);
    printf("\n");
    return 0;
}
