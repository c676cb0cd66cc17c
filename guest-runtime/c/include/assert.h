/* <assert.h> for xos C guests. A failed assertion aborts the run with the
 * message "file:line: function: Assertion `expr' failed." (ABORT). Like the
 * standard header, this one may be included again after changing NDEBUG. */
#include "../xos_guest.h"

#undef assert
#ifdef NDEBUG
#define assert(e) ((void)0)
#else
XOS_NORETURN void __xos_assert_fail(const char *expr, const char *file,
                                    int line, const char *func);
#define assert(e) \
    ((e) ? (void)0 : __xos_assert_fail(#e, __FILE__, __LINE__, __func__))
#endif

#if !defined(__cplusplus) && !defined(static_assert)
#define static_assert _Static_assert
#endif
