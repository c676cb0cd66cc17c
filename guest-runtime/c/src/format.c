/* The printf engine and the string variants (snprintf, sprintf, ...).
 *
 * Supported: flags "-+ #0", field width and precision (numbers or '*'),
 * length modifiers hh h l ll z j t L, conversions d i u o x X c s p % and
 * the floating-point conversions f F e E g G (exact: digits are computed
 * from the binary value with big-integer arithmetic and rounded half to
 * even, like glibc). Not supported: %a/%A and %n (the argument is consumed
 * and the conversion printed literally / ignored), wide characters. */
#include "internal.h"

#include <limits.h>

struct spec {
    int left, plus, space, alt, zero;
    int width;
    int prec; /* -1: none */
};

struct out {
    xos_sink_fn sink;
    void *ctx;
    size_t count;
};

static const char spaces[32] = "                                ";
static const char zeros[32] = "00000000000000000000000000000000";

static void emit(struct out *o, const char *s, size_t n)
{
    if (n) {
        o->sink(o->ctx, s, n);
        o->count += n;
    }
}

static void pad(struct out *o, char c, size_t n)
{
    const char *src = c == '0' ? zeros : spaces;
    while (n) {
        size_t k = n < sizeof(spaces) ? n : sizeof(spaces);
        emit(o, src, k);
        n -= k;
    }
}

static size_t slen(const char *s, size_t max)
{
    size_t n = 0;
    while (n < max && s[n])
        n++;
    return n;
}

/* Emits prefix, `zext` zeros, then body, padded to the field width. Zero
 * padding (the '0' flag) goes between prefix and body when allowed. */
static void field(struct out *o, const struct spec *sp, const char *prefix,
                  size_t plen, size_t zext, const char *body, size_t blen,
                  int zero_ok)
{
    size_t total = plen + zext + blen;
    size_t padn = sp->width > 0 && (size_t)sp->width > total
                      ? (size_t)sp->width - total
                      : 0;
    int zpad = sp->zero && zero_ok && !sp->left;
    if (!sp->left && !zpad)
        pad(o, ' ', padn);
    emit(o, prefix, plen);
    if (zpad)
        pad(o, '0', padn);
    pad(o, '0', zext);
    emit(o, body, blen);
    if (sp->left)
        pad(o, ' ', padn);
}

/* Writes the digits of v backwards ending at `end`; returns their count. */
static size_t utoa(char *end, unsigned long long v, unsigned base, int upper)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    size_t n = 0;
    do {
        *--end = digits[v % base];
        v /= base;
        n++;
    } while (v);
    return n;
}

static void fmt_int(struct out *o, const struct spec *sp, char conv,
                    unsigned long long mag, int neg)
{
    char buf[32];
    char *end = buf + sizeof(buf);
    unsigned base = conv == 'o' ? 8 : (conv == 'x' || conv == 'X') ? 16 : 10;
    size_t n = 0;
    if (!(sp->prec == 0 && mag == 0))
        n = utoa(end, mag, base, conv == 'X');
    size_t zext = sp->prec > 0 && (size_t)sp->prec > n ? (size_t)sp->prec - n : 0;
    char prefix[2];
    size_t plen = 0;
    if (conv == 'd' || conv == 'i') {
        if (neg)
            prefix[plen++] = '-';
        else if (sp->plus)
            prefix[plen++] = '+';
        else if (sp->space)
            prefix[plen++] = ' ';
    } else if (sp->alt) {
        if (conv == 'o') {
            if (zext == 0 && (n == 0 || end[-(long)n] != '0'))
                zext = 1;
        } else if (base == 16 && mag != 0) {
            prefix[plen++] = '0';
            prefix[plen++] = conv;
        }
    }
    field(o, sp, prefix, plen, zext, end - n, n, sp->prec < 0);
}

/* ---- floating point ----------------------------------------------------- */

/* A big unsigned integer, 32-bit limbs, least significant first. The
 * largest value needed is 2^53 * 5^1074 (about 2^2548). */
#define BIG_LIMBS 82
struct big {
    uint32_t l[BIG_LIMBS];
    int n;
};

static void big_mul_small(struct big *b, uint32_t m)
{
    uint64_t carry = 0;
    for (int i = 0; i < b->n; i++) {
        uint64_t t = (uint64_t)b->l[i] * m + carry;
        b->l[i] = (uint32_t)t;
        carry = t >> 32;
    }
    if (carry)
        b->l[b->n++] = (uint32_t)carry;
}

static void big_shl(struct big *b, int bits)
{
    int limbs = bits / 32, r = bits % 32;
    if (r) {
        uint32_t carry = 0;
        for (int i = 0; i < b->n; i++) {
            uint32_t v = b->l[i];
            b->l[i] = (v << r) | carry;
            carry = v >> (32 - r);
        }
        if (carry)
            b->l[b->n++] = carry;
    }
    if (limbs) {
        for (int i = b->n - 1; i >= 0; i--)
            b->l[i + limbs] = b->l[i];
        for (int i = 0; i < limbs; i++)
            b->l[i] = 0;
        b->n += limbs;
    }
}

/* Divides b by 1e9 in place and returns the remainder. */
static uint32_t big_divmod_1e9(struct big *b)
{
    uint64_t rem = 0;
    for (int i = b->n - 1; i >= 0; i--) {
        uint64_t cur = (rem << 32) | b->l[i];
        b->l[i] = (uint32_t)(cur / 1000000000u);
        rem = cur % 1000000000u;
    }
    while (b->n > 0 && b->l[b->n - 1] == 0)
        b->n--;
    return (uint32_t)rem;
}

/* Decimal digits of a finite double > 0: v = 0.d[0]d[1]...d[n-1] * 10^e10,
 * d[0] != 0, no trailing zeros. Returns n (at most DIGITS_MAX). */
#define DIGITS_MAX 800
static int exact_digits(uint64_t mant, int exp2, char *d, int *e10)
{
    struct big b;
    b.l[0] = (uint32_t)mant;
    b.l[1] = (uint32_t)(mant >> 32);
    b.n = b.l[1] ? 2 : 1;
    int k = 0; /* value = b * 10^-k */
    if (exp2 >= 0) {
        big_shl(&b, exp2);
    } else {
        /* m * 2^-k = m * 5^k / 10^k */
        k = -exp2;
        int left = k;
        while (left >= 13) {
            big_mul_small(&b, 1220703125u); /* 5^13 */
            left -= 13;
        }
        uint32_t p = 1;
        while (left-- > 0)
            p *= 5;
        big_mul_small(&b, p);
    }
    /* Base 1e9 chunks, least significant first. */
    uint32_t chunks[(DIGITS_MAX + 8) / 9];
    int nc = 0;
    while (b.n > 0)
        chunks[nc++] = big_divmod_1e9(&b);
    int n = 0;
    char tmp[10];
    /* Top chunk without leading zeros. */
    size_t tn = utoa(tmp + sizeof(tmp), chunks[nc - 1], 10, 0);
    memcpy(d, tmp + sizeof(tmp) - tn, tn);
    n = (int)tn;
    for (int i = nc - 2; i >= 0; i--) {
        uint32_t c = chunks[i];
        for (int j = 8; j >= 0; j--) {
            d[n + j] = (char)('0' + c % 10);
            c /= 10;
        }
        n += 9;
    }
    *e10 = n - k;
    while (n > 1 && d[n - 1] == '0')
        n--;
    return n;
}

/* Rounds the digit string to `keep` significant digits, half to even.
 * Returns the new digit count (0 if the value rounds to zero). */
static int round_digits(char *d, int n, int keep, int *e10)
{
    if (keep >= n)
        return n;
    if (keep < 0)
        return 0;
    int up;
    char c = d[keep];
    if (c > '5') {
        up = 1;
    } else if (c < '5') {
        up = 0;
    } else {
        up = 0;
        for (int i = keep + 1; i < n; i++)
            if (d[i] != '0')
                up = 1;
        if (!up) /* exact tie: to even */
            up = keep > 0 && ((d[keep - 1] - '0') & 1);
    }
    n = keep;
    if (up) {
        int i = keep - 1;
        while (i >= 0 && d[i] == '9')
            i--;
        if (i < 0) {
            d[0] = '1';
            *e10 += 1;
            return 1;
        }
        d[i]++;
        n = i + 1;
    }
    while (n > 0 && d[n - 1] == '0')
        n--;
    return n;
}

/* Emits the sign, padding and `body_len` bytes produced by the caller. */
static void float_pad_pre(struct out *o, const struct spec *sp, char sign,
                          size_t body_len, size_t *post)
{
    size_t total = body_len + (sign ? 1 : 0);
    size_t padn = sp->width > 0 && (size_t)sp->width > total
                      ? (size_t)sp->width - total
                      : 0;
    *post = sp->left ? padn : 0;
    if (!sp->left && !sp->zero)
        pad(o, ' ', padn);
    if (sign)
        emit(o, &sign, 1);
    if (!sp->left && sp->zero)
        pad(o, '0', padn);
}

static void emit_digits(struct out *o, const char *d, int n, int from, int count)
{
    /* digits [from, from+count) of the expansion, '0' outside [0, n) */
    while (count > 0 && from < 0) {
        int k = -from < count ? -from : count;
        pad(o, '0', (size_t)k);
        from += k;
        count -= k;
    }
    if (count > 0 && from < n) {
        int k = n - from < count ? n - from : count;
        emit(o, d + from, (size_t)k);
        from += k;
        count -= k;
    }
    if (count > 0)
        pad(o, '0', (size_t)count);
}

static void render_fixed(struct out *o, const struct spec *sp, char sign,
                         const char *d, int n, int e10, int frac, int point)
{
    int intlen = e10 > 0 ? e10 : 1;
    int dot = frac > 0 || point;
    size_t post;
    float_pad_pre(o, sp, sign, (size_t)intlen + (size_t)dot + (size_t)frac,
                  &post);
    if (e10 > 0)
        emit_digits(o, d, n, 0, e10);
    else
        emit(o, "0", 1);
    if (dot)
        emit(o, ".", 1);
    emit_digits(o, d, n, e10, frac);
    pad(o, ' ', post);
}

static void render_exp(struct out *o, const struct spec *sp, char sign,
                       const char *d, int n, int x, int frac, int point,
                       int upper)
{
    char ebuf[8];
    char *eend = ebuf + sizeof(ebuf);
    unsigned ax = (unsigned)(x < 0 ? -x : x);
    size_t en = utoa(eend, ax, 10, 0);
    if (en < 2) {
        *(eend - 2) = '0';
        en = 2;
    }
    *(eend - en - 1) = x < 0 ? '-' : '+';
    *(eend - en - 2) = upper ? 'E' : 'e';
    en += 2;
    int dot = frac > 0 || point;
    size_t post;
    float_pad_pre(o, sp, sign, 1 + (size_t)dot + (size_t)frac + en, &post);
    emit_digits(o, d, n, 0, 1);
    if (dot)
        emit(o, ".", 1);
    emit_digits(o, d, n, 1, frac);
    emit(o, eend - en, en);
    pad(o, ' ', post);
}

static void fmt_float(struct out *o, const struct spec *sp0, char conv,
                      double v)
{
    struct spec sp = *sp0;
    uint64_t bits;
    memcpy(&bits, &v, sizeof(bits));
    int negative = (int)(bits >> 63);
    int bexp = (int)((bits >> 52) & 0x7ff);
    uint64_t frac_bits = bits & ((1ull << 52) - 1);
    int upper = conv == 'F' || conv == 'E' || conv == 'G';
    char sign = negative ? '-' : sp.plus ? '+' : sp.space ? ' ' : 0;

    if (bexp == 0x7ff) {
        const char *s = frac_bits ? (upper ? "NAN" : "nan")
                                  : (upper ? "INF" : "inf");
        size_t post;
        sp.zero = 0;
        float_pad_pre(o, &sp, sign, 3, &post);
        emit(o, s, 3);
        pad(o, ' ', post);
        return;
    }

    char d[DIGITS_MAX + 2];
    int n, e10;
    if (bexp == 0 && frac_bits == 0) {
        n = 0;
        e10 = 1;
    } else if (bexp == 0) {
        n = exact_digits(frac_bits, -1074, d, &e10);
    } else {
        n = exact_digits(frac_bits | (1ull << 52), bexp - 1075, d, &e10);
    }
    int prec = sp.prec < 0 ? 6 : sp.prec;
    char lc = (char)(conv | 0x20);

    if (lc == 'f') {
        n = round_digits(d, n, e10 + prec, &e10);
        if (n == 0)
            e10 = 1;
        render_fixed(o, &sp, sign, d, n, e10, prec, sp.alt);
    } else if (lc == 'e') {
        n = round_digits(d, n, prec + 1, &e10);
        int x = n == 0 ? 0 : e10 - 1;
        render_exp(o, &sp, sign, d, n, x, prec, sp.alt, upper);
    } else { /* g */
        int p = prec == 0 ? 1 : prec;
        n = round_digits(d, n, p, &e10);
        int x = n == 0 ? 0 : e10 - 1;
        if (n == 0)
            e10 = 1;
        if (p > x && x >= -4) {
            int frac = p - 1 - x;
            if (!sp.alt) {
                int have = n - e10; /* significant fraction digits */
                if (have < 0)
                    have = 0;
                if (frac > have)
                    frac = have;
            }
            render_fixed(o, &sp, sign, d, n, e10, frac, sp.alt);
        } else {
            int frac = p - 1;
            if (!sp.alt && frac > n - 1)
                frac = n > 0 ? n - 1 : 0;
            render_exp(o, &sp, sign, d, n, x, frac, sp.alt, upper);
        }
    }
}

/* ---- the engine --------------------------------------------------------- */

enum len { L_NONE, L_HH, L_H, L_L, L_LL, L_Z, L_J, L_T, L_BIG_L };

int __xos_vformat(xos_sink_fn sink, void *ctx, const char *fmt, va_list ap)
{
    struct out o = {sink, ctx, 0};
    va_list args;
    va_copy(args, ap);
    const char *p = fmt;
    while (*p) {
        if (*p != '%') {
            const char *q = p;
            while (*q && *q != '%')
                q++;
            emit(&o, p, (size_t)(q - p));
            p = q;
            continue;
        }
        const char *start = p++;
        struct spec sp = {0, 0, 0, 0, 0, 0, -1};
        for (;; p++) {
            if (*p == '-')
                sp.left = 1;
            else if (*p == '+')
                sp.plus = 1;
            else if (*p == ' ')
                sp.space = 1;
            else if (*p == '#')
                sp.alt = 1;
            else if (*p == '0')
                sp.zero = 1;
            else
                break;
        }
        if (*p == '*') {
            int w = va_arg(args, int);
            if (w < 0) {
                sp.left = 1;
                w = w == INT_MIN ? INT_MAX : -w;
            }
            sp.width = w;
            p++;
        } else {
            while (*p >= '0' && *p <= '9') {
                if (sp.width < INT_MAX / 10)
                    sp.width = sp.width * 10 + (*p - '0');
                p++;
            }
        }
        if (*p == '.') {
            p++;
            sp.prec = 0;
            if (*p == '*') {
                int pr = va_arg(args, int);
                sp.prec = pr < 0 ? -1 : pr;
                p++;
            } else {
                while (*p >= '0' && *p <= '9') {
                    if (sp.prec < INT_MAX / 10)
                        sp.prec = sp.prec * 10 + (*p - '0');
                    p++;
                }
            }
        }
        enum len len = L_NONE;
        switch (*p) {
        case 'h':
            len = p[1] == 'h' ? L_HH : L_H;
            p += p[1] == 'h' ? 2 : 1;
            break;
        case 'l':
            len = p[1] == 'l' ? L_LL : L_L;
            p += p[1] == 'l' ? 2 : 1;
            break;
        case 'q':
            len = L_LL;
            p++;
            break;
        case 'z':
            len = L_Z;
            p++;
            break;
        case 'j':
            len = L_J;
            p++;
            break;
        case 't':
            len = L_T;
            p++;
            break;
        case 'L':
            len = L_BIG_L;
            p++;
            break;
        default:
            break;
        }
        char conv = *p;
        if (conv == 0) { /* a lone '%' at the end: print it */
            emit(&o, start, (size_t)(p - start));
            break;
        }
        p++;
        switch (conv) {
        case 'd':
        case 'i': {
            long long v;
            switch (len) {
            case L_HH:
                v = (signed char)va_arg(args, int);
                break;
            case L_H:
                v = (short)va_arg(args, int);
                break;
            case L_L:
            case L_Z:
            case L_T:
                v = va_arg(args, long);
                break;
            case L_LL:
            case L_J:
            case L_BIG_L:
                v = va_arg(args, long long);
                break;
            default:
                v = va_arg(args, int);
                break;
            }
            unsigned long long mag =
                v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
            fmt_int(&o, &sp, conv, mag, v < 0);
            break;
        }
        case 'u':
        case 'o':
        case 'x':
        case 'X': {
            unsigned long long v;
            switch (len) {
            case L_HH:
                v = (unsigned char)va_arg(args, unsigned);
                break;
            case L_H:
                v = (unsigned short)va_arg(args, unsigned);
                break;
            case L_L:
            case L_Z:
            case L_T:
                v = va_arg(args, unsigned long);
                break;
            case L_LL:
            case L_J:
            case L_BIG_L:
                v = va_arg(args, unsigned long long);
                break;
            default:
                v = va_arg(args, unsigned);
                break;
            }
            fmt_int(&o, &sp, conv, v, 0);
            break;
        }
        case 'p': {
            void *ptr = va_arg(args, void *);
            if (!ptr) {
                struct spec s2 = sp;
                s2.zero = 0;
                field(&o, &s2, "", 0, 0, "(nil)", 5, 0);
            } else {
                struct spec s2 = sp;
                s2.alt = 1;
                fmt_int(&o, &s2, 'x', (unsigned long long)(uintptr_t)ptr, 0);
            }
            break;
        }
        case 'c': {
            char c = (char)va_arg(args, int);
            field(&o, &sp, "", 0, 0, &c, 1, 0);
            break;
        }
        case 's': {
            const char *s = va_arg(args, const char *);
            if (!s)
                s = sp.prec < 0 || sp.prec >= 6 ? "(null)" : "";
            size_t n = slen(s, sp.prec < 0 ? (size_t)-1 : (size_t)sp.prec);
            field(&o, &sp, "", 0, 0, s, n, 0);
            break;
        }
        case '%':
            emit(&o, "%", 1);
            break;
        case 'f':
        case 'F':
        case 'e':
        case 'E':
        case 'g':
        case 'G': {
            double v = len == L_BIG_L ? (double)va_arg(args, long double)
                                      : va_arg(args, double);
            fmt_float(&o, &sp, conv, v);
            break;
        }
        case 'a':
        case 'A':
            if (len == L_BIG_L)
                (void)va_arg(args, long double);
            else
                (void)va_arg(args, double);
            emit(&o, start, (size_t)(p - start));
            break;
        case 'n':
            (void)va_arg(args, void *); /* deliberately not supported */
            break;
        default: /* unknown conversion: print it as written */
            emit(&o, start, (size_t)(p - start));
            break;
        }
    }
    va_end(args);
    return o.count > (size_t)INT_MAX ? INT_MAX : (int)o.count;
}

/* ---- string variants ---------------------------------------------------- */

struct sbuf {
    char *buf;
    size_t cap; /* bytes available for characters (excludes the NUL) */
    size_t pos;
};

static void sbuf_sink(void *ctx, const char *s, size_t n)
{
    struct sbuf *b = ctx;
    if (b->pos < b->cap) {
        size_t k = b->cap - b->pos < n ? b->cap - b->pos : n;
        memcpy(b->buf + b->pos, s, k);
        b->pos += k;
    }
}

int vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap)
{
    struct sbuf b = {buf, cap ? cap - 1 : 0, 0};
    int n = __xos_vformat(sbuf_sink, &b, fmt, ap);
    if (cap)
        buf[b.pos] = 0;
    return n;
}

int snprintf(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return n;
}

int vsprintf(char *buf, const char *fmt, va_list ap)
{
    return vsnprintf(buf, (size_t)INT_MAX + 1, fmt, ap);
}

int sprintf(char *buf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsprintf(buf, fmt, ap);
    va_end(ap);
    return n;
}
