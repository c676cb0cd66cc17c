/* malloc, calloc, realloc, free over [BootInfo.heap_start, heap_end).
 *
 * Boundary-tag allocator with immediate coalescing:
 * - a block is [b, b+size), size a multiple of 16 (at least 32); b is 8 mod
 *   16 so the payload at b+8 is 16-byte aligned;
 * - the 8-byte header at b holds size | CINUSE (this block is allocated) |
 *   PINUSE (the block before is allocated);
 * - a free block also holds next/prev free-list links at b+8/b+16 and its
 *   size in its last 8 bytes (the footer), so free() can merge backwards;
 * - free blocks sit in size-class bins (one per power of two) with a bitmap
 *   of the non-empty ones;
 * - the untouched rest of the heap is the "top" region [top, hi). It is
 *   carved on demand, so pages the program never needs are never written
 *   (which keeps memory resets after a run cheap). A block freed next to it
 *   merges into it; hence the block just below top is always in use. */
#include "internal.h"

#define CINUSE ((size_t)1)
#define PINUSE ((size_t)2)
#define FLAGS (CINUSE | PINUSE)
#define MIN_BLOCK ((size_t)32)
#define NBINS 64

struct block {
    size_t head;
    struct block *next; /* free blocks only */
    struct block *prev; /* free blocks only */
};

static uintptr_t heap_lo; /* first block */
static uintptr_t top;     /* start of the never-used region */
static uintptr_t heap_hi; /* end of the heap (8 mod 16) */
static struct block *bins[NBINS];
static uint64_t binmap;

static inline size_t bsize(const struct block *b)
{
    return b->head & ~FLAGS;
}

static inline struct block *at(uintptr_t a)
{
    return (struct block *)a;
}

static inline void set_footer(struct block *b, size_t size)
{
    *(size_t *)((uintptr_t)b + size - sizeof(size_t)) = size;
}

static inline unsigned bin_of(size_t size)
{
    /* floor(log2(size)) - 5: 32..63 -> 0, 64..127 -> 1, ... */
    return (unsigned)(63 - __builtin_clzll((unsigned long long)size)) - 5;
}

static void bin_insert(struct block *b)
{
    unsigned i = bin_of(bsize(b));
    b->prev = NULL;
    b->next = bins[i];
    if (bins[i])
        bins[i]->prev = b;
    bins[i] = b;
    binmap |= 1ull << i;
}

static void bin_remove(struct block *b)
{
    unsigned i = bin_of(bsize(b));
    if (b->prev)
        b->prev->next = b->next;
    else
        bins[i] = b->next;
    if (b->next)
        b->next->prev = b->prev;
    if (!bins[i])
        binmap &= ~(1ull << i);
}

void __xos_heap_init(uintptr_t start, uintptr_t end)
{
    for (int i = 0; i < NBINS; i++)
        bins[i] = NULL;
    binmap = 0;
    uintptr_t lo = ((start + 15) & ~(uintptr_t)15) + 8;
    uintptr_t hi = end >= 8 ? ((end - 8) & ~(uintptr_t)15) + 8 : 0;
    if (end < start || hi < lo)
        hi = lo; /* no usable heap: every allocation fails */
    heap_lo = lo;
    top = lo;
    heap_hi = hi;
}

/* Block size for a request of n payload bytes, or 0 if n is absurd. */
static size_t request_size(size_t n)
{
    if (n > ((size_t)-1 >> 1))
        return 0;
    size_t s = (n + sizeof(size_t) + 15) & ~(size_t)15;
    return s < MIN_BLOCK ? MIN_BLOCK : s;
}

static struct block *find_fit(size_t s)
{
    unsigned i = bin_of(s);
    for (struct block *b = bins[i]; b; b = b->next)
        if (bsize(b) >= s)
            return b;
    uint64_t higher = i + 1 < NBINS ? binmap & ~((2ull << i) - 1) : 0;
    if (!higher)
        return NULL;
    return bins[__builtin_ctzll(higher)];
}

/* Marks free block b (already out of its bin) allocated with size s,
 * returning any large enough remainder to a bin. */
static void take(struct block *b, size_t s)
{
    size_t size = bsize(b);
    size_t pflag = b->head & PINUSE;
    if (size - s >= MIN_BLOCK) {
        b->head = s | CINUSE | pflag;
        struct block *rem = at((uintptr_t)b + s);
        rem->head = (size - s) | PINUSE;
        set_footer(rem, size - s);
        bin_insert(rem);
        /* the block after rem keeps PINUSE clear */
    } else {
        b->head = size | CINUSE | pflag;
        struct block *next = at((uintptr_t)b + size);
        next->head |= PINUSE;
    }
}

void *malloc(size_t n)
{
    size_t s = request_size(n);
    if (!s) {
        errno = ENOMEM;
        return NULL;
    }
    struct block *b = find_fit(s);
    if (b) {
        bin_remove(b);
        take(b, s);
        return (char *)b + sizeof(size_t);
    }
    if (heap_hi - top < s) {
        errno = ENOMEM;
        return NULL;
    }
    b = at(top);
    b->head = s | CINUSE | PINUSE; /* the block below top is in use */
    top += s;
    return (char *)b + sizeof(size_t);
}

/* Frees allocated block b (validated by the caller), merging neighbours. */
static void release(struct block *b)
{
    size_t size = bsize(b);
    if (!(b->head & PINUSE)) {
        size_t psize = *(size_t *)((uintptr_t)b - sizeof(size_t));
        struct block *prev = at((uintptr_t)b - psize);
        bin_remove(prev);
        b = prev;
        size += psize;
    }
    uintptr_t next_addr = (uintptr_t)b + size;
    if (next_addr == top) {
        top = (uintptr_t)b;
        return;
    }
    struct block *next = at(next_addr);
    if (!(next->head & CINUSE)) {
        bin_remove(next);
        size += bsize(next);
    }
    b->head = size | PINUSE; /* a free block's predecessor is in use */
    set_footer(b, size);
    struct block *after = at((uintptr_t)b + size);
    after->head &= ~PINUSE;
    bin_insert(b);
}

static struct block *checked_block(void *p, const char *what)
{
    uintptr_t a = (uintptr_t)p - sizeof(size_t);
    struct block *b = at(a);
    if (((uintptr_t)p & 15) || a < heap_lo || a >= top ||
        !(b->head & CINUSE) || bsize(b) < MIN_BLOCK ||
        bsize(b) > top - a)
        __xos_fatal(what);
    return b;
}

void free(void *p)
{
    if (!p)
        return;
    release(checked_block(p, "free(): invalid pointer or double free"));
}

void *calloc(size_t n, size_t size)
{
    if (size && n > (size_t)-1 / size) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = malloc(n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

void *realloc(void *p, size_t n)
{
    if (!p)
        return malloc(n);
    if (n == 0) {
        free(p);
        return NULL;
    }
    struct block *b = checked_block(p, "realloc(): invalid pointer");
    size_t s = request_size(n);
    if (!s) {
        errno = ENOMEM;
        return NULL;
    }
    size_t cur = bsize(b);
    size_t pflag = b->head & PINUSE;
    if (s <= cur) {
        if (cur - s >= MIN_BLOCK) {
            b->head = s | CINUSE | pflag;
            struct block *rem = at((uintptr_t)b + s);
            rem->head = (cur - s) | CINUSE | PINUSE;
            release(rem);
        }
        return p;
    }
    uintptr_t next_addr = (uintptr_t)b + cur;
    if (next_addr == top) {
        if (heap_hi - (uintptr_t)b >= s) {
            b->head = s | CINUSE | pflag;
            top = (uintptr_t)b + s;
            return p;
        }
    } else {
        struct block *next = at(next_addr);
        if (!(next->head & CINUSE) && cur + bsize(next) >= s) {
            bin_remove(next);
            b->head = (cur + bsize(next)) | pflag;
            take(b, s);
            return p;
        }
    }
    void *q = malloc(n);
    if (!q)
        return NULL;
    memcpy(q, p, cur - sizeof(size_t));
    free(p);
    return q;
}
