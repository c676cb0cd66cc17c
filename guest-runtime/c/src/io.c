/* read/write and the stdio subset for xos C guests.
 *
 * Output: records {fd, len} + bytes appended to the output buffer
 * (docs/ABI.md, "Output buffer"). Consecutive writes to the same fd extend
 * the last record in place, so printf/putchar sequences cost no per-call
 * header. When the buffer is full the runtime issues FLUSH and continues;
 * data larger than the buffer goes out with one WRITE hypercall. The
 * monitor writes everything out at the next hypercall, at the latest EXIT.
 *
 * Input: the monitor fills the stdin buffer before entry; read() consumes
 * it and asks for more with READ_STDIN once it is empty, unless the monitor
 * has already reported end of input. */
#include "internal.h"

struct xos_file {
    int fd;
    int eof;
    int err;
    int unget; /* pushed-back byte or -1 */
};

static struct xos_file files[3] = {
    {0, 0, 0, -1},
    {1, 0, 0, -1},
    {2, 0, 0, -1},
};

FILE *stdin = &files[0];
FILE *stdout = &files[1];
FILE *stderr = &files[2];

/* ---- output ------------------------------------------------------------ */

/* The record this runtime appended last, as offsets in the output buffer.
 * It may be extended only while output.used is still last_end: every
 * hypercall resets used to 0. */
static uint64_t last_off, last_end;

static inline uint64_t align8(uint64_t v)
{
    return (v + 7) & ~(uint64_t)7;
}

static uint64_t out_cap(const struct xos_output_state *o)
{
    uint64_t cap = o->cap & ~(uint64_t)7;
    return cap > 0x40000000u ? 0x40000000u : cap; /* record len is a u32 */
}

void xos_flush(void)
{
    if (__xos_bi->output.used != 0)
        __xos_hc(XOS_HC_FLUSH);
}

int xos_ready(void)
{
    return (int)__xos_hc(XOS_HC_READY);
}

int xos_safe_point(void)
{
    return (int)__xos_hc(XOS_HC_SAFE_POINT);
}

/* Appends n bytes for fd, flushing whenever the buffer fills up. */
static void out_buffered(int fd, const char *p, size_t n)
{
    struct xos_output_state *o = &__xos_bi->output;
    char *buf = (char *)(uintptr_t)o->buf;
    uint64_t cap = out_cap(o);
    while (n > 0) {
        uint64_t used = o->used;
        struct xos_output_record *rec =
            (struct xos_output_record *)(buf + last_off);
        uint64_t k = 0;
        if (used != 0 && used == last_end && rec->fd == (uint32_t)fd) {
            uint64_t end = last_off + sizeof(*rec) + rec->len;
            k = cap - end < n ? cap - end : n;
            memcpy(buf + end, p, k);
            rec->len += (uint32_t)k;
            o->used = last_end = align8(end + k);
        } else {
            uint64_t start = align8(used);
            if (start + sizeof(*rec) < cap) {
                uint64_t room = cap - start - sizeof(*rec);
                k = room < n ? room : n;
                rec = (struct xos_output_record *)(buf + start);
                rec->fd = (uint32_t)fd;
                rec->len = (uint32_t)k;
                memcpy(buf + start + sizeof(*rec), p, k);
                last_off = start;
                o->used = last_end = align8(start + sizeof(*rec) + k);
            }
        }
        p += k;
        n -= k;
        if (n > 0) {
            __xos_hc(XOS_HC_FLUSH);
            if (o->used != 0) /* would loop forever */
                __xos_fatal("xos C runtime: FLUSH left output.used != 0");
        }
    }
}

ssize_t write(int fd, const void *data, size_t n)
{
    if (fd != 1 && fd != 2) {
        errno = EBADF;
        return -1;
    }
    if (n == 0)
        return 0;
    uint64_t cap = out_cap(&__xos_bi->output);
    if (cap > sizeof(struct xos_output_record) &&
        n <= cap - sizeof(struct xos_output_record)) {
        out_buffered(fd, data, n);
        return (ssize_t)n;
    }
    /* Larger than the buffer: one WRITE (the monitor writes out the pending
     * records first, so the order is kept). */
    const char *p = data;
    size_t done = 0;
    while (done < n) {
        long r = xos_hypercall(XOS_HC_WRITE, (uint64_t)fd,
                               (uint64_t)(uintptr_t)(p + done), n - done, 0,
                               0, 0);
        if (r <= 0) {
            errno = r < 0 ? (int)-r : EIO;
            return done ? (ssize_t)done : -1;
        }
        done += (size_t)r;
    }
    return (ssize_t)n;
}

/* ---- input ------------------------------------------------------------- */

static uint64_t in_pos; /* bytes of stdin.buf already consumed */

#ifdef XOS_HOSTED_TEST
/* selftest: a new simulated run starts with fresh stdin. */
void __xos_test_reset_stdin(void);
void __xos_test_reset_stdin(void)
{
    in_pos = 0;
    files[0].unget = -1;
}
#endif

ssize_t read(int fd, void *data, size_t n)
{
    if (fd != 0) {
        errno = EBADF;
        return -1;
    }
    if (n == 0)
        return 0;
    struct xos_stdin_state *s = &__xos_bi->stdin_state;
    for (;;) {
        if (in_pos < s->len) {
            uint64_t avail = s->len - in_pos;
            size_t k = avail < n ? (size_t)avail : n;
            memcpy(data, (const char *)(uintptr_t)s->buf + in_pos, k);
            in_pos += k;
            return (ssize_t)k;
        }
        if (s->eof)
            return 0;
        long r = __xos_hc(XOS_HC_READ_STDIN);
        in_pos = 0;
        if (r < 0) {
            errno = (int)-r;
            return -1;
        }
        if (r == 0) /* end of input */
            return 0;
    }
}

/* ---- stdio ------------------------------------------------------------- */

static int is_out(FILE *f)
{
    return f == stdout || f == stderr;
}

size_t fwrite(const void *p, size_t size, size_t n, FILE *f)
{
    if (!is_out(f)) {
        errno = EBADF;
        return 0;
    }
    if (size == 0 || n == 0)
        return 0;
    size_t total = size * n; /* cannot overflow for an object in memory */
    if (write(f->fd, p, total) < 0) {
        f->err = 1;
        return 0;
    }
    return n;
}

int fputc(int c, FILE *f)
{
    unsigned char ch = (unsigned char)c;
    return fwrite(&ch, 1, 1, f) == 1 ? ch : EOF;
}

int putc(int c, FILE *f)
{
    return fputc(c, f);
}

int putchar(int c)
{
    return fputc(c, stdout);
}

int fputs(const char *s, FILE *f)
{
    size_t n = strlen(s);
    if (n == 0)
        return is_out(f) ? 0 : EOF;
    return fwrite(s, 1, n, f) == n ? 0 : EOF;
}

int puts(const char *s)
{
    if (fputs(s, stdout) == EOF || fputc('\n', stdout) == EOF)
        return EOF;
    return 0;
}

int fflush(FILE *f)
{
    if (f == NULL || is_out(f))
        xos_flush();
    return 0;
}

static void file_sink(void *ctx, const char *s, size_t n)
{
    FILE *f = ctx;
    if (write(f->fd, s, n) < 0)
        f->err = 1;
}

int vfprintf(FILE *f, const char *fmt, va_list ap)
{
    if (!is_out(f)) {
        errno = EBADF;
        return -1;
    }
    int err = f->err;
    f->err = 0;
    int n = __xos_vformat(file_sink, f, fmt, ap);
    int failed = f->err;
    f->err |= err;
    return failed ? -1 : n;
}

int fprintf(FILE *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vfprintf(f, fmt, ap);
    va_end(ap);
    return n;
}

int vprintf(const char *fmt, va_list ap)
{
    return vfprintf(stdout, fmt, ap);
}

int printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vfprintf(stdout, fmt, ap);
    va_end(ap);
    return n;
}

int fgetc(FILE *f)
{
    if (f != stdin) {
        errno = EBADF;
        return EOF;
    }
    if (f->unget >= 0) {
        int c = f->unget;
        f->unget = -1;
        return c;
    }
    unsigned char c;
    ssize_t r = read(0, &c, 1);
    if (r == 1)
        return c;
    if (r == 0)
        f->eof = 1;
    else
        f->err = 1;
    return EOF;
}

int getc(FILE *f)
{
    return fgetc(f);
}

int getchar(void)
{
    return fgetc(stdin);
}

int ungetc(int c, FILE *f)
{
    if (f != stdin || c == EOF || f->unget >= 0)
        return EOF;
    f->unget = (unsigned char)c;
    f->eof = 0;
    return (unsigned char)c;
}

char *fgets(char *buf, int cap, FILE *f)
{
    if (cap <= 0)
        return NULL;
    int i = 0;
    while (i < cap - 1) {
        int c = fgetc(f);
        if (c == EOF)
            break;
        buf[i++] = (char)c;
        if (c == '\n')
            break;
    }
    if (i == 0)
        return NULL;
    buf[i] = 0;
    return buf;
}

size_t fread(void *p, size_t size, size_t n, FILE *f)
{
    if (f != stdin) {
        errno = EBADF;
        return 0;
    }
    if (size == 0 || n == 0)
        return 0;
    size_t total = size * n, done = 0;
    char *d = p;
    if (f->unget >= 0) {
        d[done++] = (char)f->unget;
        f->unget = -1;
    }
    while (done < total) {
        ssize_t r = read(0, d + done, total - done);
        if (r == 0) {
            f->eof = 1;
            break;
        }
        if (r < 0) {
            f->err = 1;
            break;
        }
        done += (size_t)r;
    }
    return done / size;
}

int feof(FILE *f)
{
    return f->eof;
}

int ferror(FILE *f)
{
    return f->err;
}

void clearerr(FILE *f)
{
    f->eof = 0;
    f->err = 0;
}
