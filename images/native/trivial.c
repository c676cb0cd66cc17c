/* The native baseline of images/c/trivial.c: a static Linux executable
 * that does nothing, for the fork+exec+wait benchmark. */
int main(void)
{
    return 0;
}
