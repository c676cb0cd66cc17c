/* xos_guest.h: the public header of the xos C guest runtime (libxos.a).
 *
 * A C guest is an ordinary `int main(int argc, char **argv)` linked with
 * crt0.o + libxos.a + libgcc and guest-runtime/xos-guest.ld (use `xos-cc`).
 * The runtime implements a small libc subset on top of the xos guest ABI v1
 * (docs/ABI.md): output is buffered in guest memory and handed to the monitor
 * at the next hypercall (normally the final EXIT), stdin is read from the
 * buffer the monitor filled before entry, and the heap is
 * [BootInfo.heap_start, BootInfo.heap_end).
 *
 * The standard headers in guest-runtime/c/include (stdio.h, stdlib.h,
 * string.h, ctype.h, unistd.h, errno.h, assert.h, limits.h, inttypes.h) all
 * include this file, so ordinary C sources compile unchanged. */
#ifndef XOS_GUEST_H
#define XOS_GUEST_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "xos_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

#define XOS_NORETURN __attribute__((noreturn))
#define XOS_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))

/* ---- xos extras -------------------------------------------------------- */

/* The BootInfo the monitor passed at entry (valid from before main on). */
const struct xos_boot_info *xos_boot_info(void);

/* Issues hypercall `nr` (XOS_HC_*) with up to six arguments and returns
 * BootInfo.hypercall.ret (>= 0 success, < 0 one of the XOS_E* errors).
 * Pending buffered output is written out by the monitor first. EXIT and
 * ABORT do not return. */
long xos_hypercall(unsigned nr, uint64_t a0, uint64_t a1, uint64_t a2,
                   uint64_t a3, uint64_t a4, uint64_t a5);

/* Calls the embedder's host function `name` with `in_len` bytes at `in`; its
 * output is copied to `out` (capacity `out_cap`). Returns the output length,
 * or a negative XOS_E* error (XOS_ENOENT: no such function, XOS_E2BIG:
 * output larger than out_cap, XOS_EHOSTFN: the function failed, ...). */
long xos_host_call(const char *name, const void *in, size_t in_len, void *out,
                   size_t out_cap);

/* Hands all buffered stdout/stderr output to the monitor now (one exit). */
void xos_flush(void);

/* Marks the end of initialisation: `xos-vmm snapshot` takes its snapshot
 * here, and every run restored from it continues from here with new stdin.
 * Returns 0 in the run that called it, 1 in a restored run. Call it before
 * reading stdin. */
int xos_ready(void);

/* A safe point between messages: the monitor may carry this execution flow
 * into another kind of IC here (mutate), keeping its memory and general
 * registers. Returns 0 when it goes on in the same IC, 1 in a new one. One
 * exit (or trap) per call. */
int xos_safe_point(void);

/* ---- channel window ---------------------------------------------------- */
/* When the monitor gave this IC one end of a shared-memory ring channel
 * (BootInfo.window), messages go through memory: no exit per message, only
 * when a side sleeps or wakes the other (docs/ABI.md, "Channel window").
 * Each call returns a negative XOS_E* error: XOS_EINVAL without a window,
 * XOS_EPIPE when the peer is gone, XOS_EIO when the window is corrupt,
 * XOS_E2BIG when a message does not fit `cap` (it is consumed). */

/* 1 when a usable channel window is mapped, else 0. */
int xos_chan_window(void);
/* Sends `len` bytes as one message; 0 on success. */
long xos_chan_send(const void *msg, size_t len);
/* Receives the next message into `buf`; returns its length. */
long xos_chan_recv(void *buf, size_t cap);
/* Sends `request`, then receives the reply into `reply`. */
long xos_chan_call(const void *request, size_t len, void *reply, size_t cap);

/* ---- virtio channel device --------------------------------------------- */
/* When the monitor gave this VM a virtio channel device (BootInfo.devices),
 * messages go through two virtqueues in guest memory (docs/ABI.md,
 * "Virtio channel device"): set-up costs ~30 exits, then none per message
 * while the device polls. Messages up to 64 KiB. Errors as for the window:
 * XOS_EINVAL without a device, XOS_EPIPE when the host end is gone, XOS_EIO
 * when the device stopped serving, XOS_E2BIG (consumed). */
int xos_vchan_available(void);
long xos_vchan_send(const void *msg, size_t len);
long xos_vchan_recv(void *buf, size_t cap);
long xos_vchan_call(const void *request, size_t len, void *reply, size_t cap);

/* ---- EPT views ---------------------------------------------------------- */
/* In an ept-view IC connected to a peer view (docs/ABI.md, "EPT views"), a
 * call moves this vCPU into the peer's memory through the trampoline: the
 * request goes through a message area mapped in both views, the peer's
 * handler runs on the peer's own stack, and the reply comes back the same
 * way. No copy through the monitor; one VMFUNC each way where the CPU has
 * it, else one exit each way. A handler makes no hypercall (no printf). */

/* 1 when this view calls a peer, 2 when it serves a caller, else 0. */
int xos_view_role(void);
/* The message area and its size (NULL without a peer). */
void *xos_view_buffer(size_t *size);
/* Calls the peer with `len` bytes of `request`; the reply (at most `cap`
 * bytes) lands in `reply`. Returns the reply's length, XOS_EPIPE when the
 * peer is gone or failed, XOS_E2BIG when something does not fit,
 * XOS_EINVAL without a peer. */
long xos_view_call(const void *request, size_t len, void *reply, size_t cap);
/* A handler: the request is the first `len` bytes of the message area
 * (`cap` bytes in all); it writes the reply there and returns its length. */
typedef unsigned long (*xos_view_handler)(unsigned long len, unsigned long cap);
/* Serves calls with `handler` until the caller is gone; returns XOS_EPIPE
 * then (XOS_EINVAL when this view serves nobody). */
long xos_view_serve(xos_view_handler handler);

/* ---- errno ------------------------------------------------------------- */

extern int errno;
#define EPERM 1
#define ENOENT 2
#define EIO 5
#define E2BIG 7
#define EBADF 9
#define ENOMEM 12
#define EFAULT 14
#define EINVAL 22
#define ENOSPC 28
#define ESPIPE 29
#define EDOM 33
#define ERANGE 34
#define ENOSYS 38

/* ---- unistd ------------------------------------------------------------ */

typedef long ssize_t;

#define STDIN_FILENO 0
#define STDOUT_FILENO 1
#define STDERR_FILENO 2

/* fd 0 only: consumes the stdin buffer, refilling it with READ_STDIN when
 * it is empty and the monitor has not reported end of input. Returns the
 * number of bytes read, 0 at end of input, -1 (errno set) on error. */
ssize_t read(int fd, void *buf, size_t n);
/* fd 1/2 only: appends to the output buffer (or uses the WRITE hypercall for
 * data larger than the buffer). Returns n, or -1 (errno set) on error. */
ssize_t write(int fd, const void *buf, size_t n);
/* Ends the run immediately with `code & 0xff` (no atexit handlers; the
 * monitor still writes out buffered output). */
XOS_NORETURN void _exit(int code);

/* ---- stdlib ------------------------------------------------------------ */

#define EXIT_SUCCESS 0
#define EXIT_FAILURE 1
#define RAND_MAX 0x7fffffff

extern char **environ;

void *malloc(size_t size);
void *calloc(size_t n, size_t size);
void *realloc(void *ptr, size_t size);
void free(void *ptr);

/* Runs atexit handlers (last registered first), then EXIT; the monitor
 * writes out the buffered output as part of EXIT. */
XOS_NORETURN void exit(int code);
/* Ends the run as aborted (ABORT hypercall, message "abort() called"). */
XOS_NORETURN void abort(void);
int atexit(void (*fn)(void));
char *getenv(const char *name);

long strtol(const char *s, char **end, int base);
unsigned long strtoul(const char *s, char **end, int base);
long long strtoll(const char *s, char **end, int base);
unsigned long long strtoull(const char *s, char **end, int base);
int atoi(const char *s);
long atol(const char *s);
long long atoll(const char *s);
int abs(int v);
long labs(long v);
long long llabs(long long v);
void qsort(void *base, size_t n, size_t size,
           int (*cmp)(const void *, const void *));
int rand(void);
void srand(unsigned seed);

/* ---- string ------------------------------------------------------------ */

void *memcpy(void *__restrict dst, const void *__restrict src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
void *memchr(const void *s, int c, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strcpy(char *__restrict dst, const char *__restrict src);
char *strncpy(char *__restrict dst, const char *__restrict src, size_t n);
char *strcat(char *__restrict dst, const char *__restrict src);
char *strncat(char *__restrict dst, const char *__restrict src, size_t n);
char *strchr(const char *s, int c);
char *strrchr(const char *s, int c);
char *strstr(const char *hay, const char *needle);
char *strpbrk(const char *s, const char *accept);
size_t strspn(const char *s, const char *accept);
size_t strcspn(const char *s, const char *reject);
char *strdup(const char *s);
char *strndup(const char *s, size_t n);
char *strerror(int err);

/* ---- ctype ------------------------------------------------------------- */

int isspace(int c);
int isdigit(int c);
int isalpha(int c);
int isalnum(int c);
int isupper(int c);
int islower(int c);
int isxdigit(int c);
int isprint(int c);
int isgraph(int c);
int ispunct(int c);
int iscntrl(int c);
int isblank(int c);
int toupper(int c);
int tolower(int c);

/* ---- stdio ------------------------------------------------------------- */

#define EOF (-1)
#define BUFSIZ 4096

/* FILE objects are tokens for the three standard streams; there are no
 * files. stdout and stderr share the output buffer (records keep their
 * order); nothing is line buffered: output reaches the host at the next
 * hypercall (exit, xos_flush, fflush, a full buffer, a stdin refill). */
typedef struct xos_file FILE;
extern FILE *stdin;
extern FILE *stdout;
extern FILE *stderr;

XOS_PRINTF(1, 2) int printf(const char *fmt, ...);
XOS_PRINTF(2, 3) int fprintf(FILE *f, const char *fmt, ...);
XOS_PRINTF(2, 3) int sprintf(char *buf, const char *fmt, ...);
XOS_PRINTF(3, 4) int snprintf(char *buf, size_t cap, const char *fmt, ...);
XOS_PRINTF(1, 0) int vprintf(const char *fmt, va_list ap);
XOS_PRINTF(2, 0) int vfprintf(FILE *f, const char *fmt, va_list ap);
XOS_PRINTF(2, 0) int vsprintf(char *buf, const char *fmt, va_list ap);
XOS_PRINTF(3, 0)
int vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap);

int puts(const char *s);
int fputs(const char *s, FILE *f);
int putchar(int c);
int fputc(int c, FILE *f);
int putc(int c, FILE *f);
size_t fwrite(const void *p, size_t size, size_t n, FILE *f);
int fflush(FILE *f);

int getchar(void);
int fgetc(FILE *f);
int getc(FILE *f);
int ungetc(int c, FILE *f);
char *fgets(char *buf, int cap, FILE *f);
size_t fread(void *p, size_t size, size_t n, FILE *f);
int feof(FILE *f);
int ferror(FILE *f);
void clearerr(FILE *f);

#ifdef __cplusplus
}
#endif

#endif
