/* trivial: does nothing; measures the bare cost of a run (cold start). */
int main(void)
{
    return 0;
}
