/* Cross-view calls in an ept-view IC (docs/ABI.md, "EPT views"): thin
 * wrappers around the monitor's trampoline page, which does the switching
 * and the register scrubbing. */
#include <string.h>
#include <xos_guest.h>

static volatile struct xos_view_control *control(void)
{
    return (volatile struct xos_view_control *)(uintptr_t)XOS_VIEW_CONTROL;
}

/* The control block exists only in a VM with views (BootInfo.devices);
 * elsewhere its page is not mapped. */
int xos_view_role(void)
{
    if (!(xos_boot_info()->devices & XOS_DEVICE_VIEWS))
        return 0;
    volatile struct xos_view_control *c = control();
    if (c->msg_size == 0 || c->msg_addr == 0)
        return 0;
    return c->peer == XOS_VIEW_NO_PEER ? 2 : 1;
}

void *xos_view_buffer(size_t *size)
{
    if (!xos_view_role()) {
        *size = 0;
        return NULL;
    }
    *size = (size_t)control()->msg_size;
    return (void *)(uintptr_t)control()->msg_addr;
}

long xos_view_call(const void *request, size_t len, void *reply, size_t cap)
{
    if (xos_view_role() != 1)
        return XOS_EINVAL;
    size_t size;
    unsigned char *area = xos_view_buffer(&size);
    if (len > size)
        return XOS_E2BIG;
    memcpy(area, request, len);
    long (*call)(unsigned long, unsigned long) =
        (long (*)(unsigned long, unsigned long))(uintptr_t)XOS_VIEW_CALL;
    long n = call(len, size);
    if (n < 0)
        return n;
    /* The peer's answer is checked, not trusted. */
    if ((unsigned long)n > size || (size_t)n > cap)
        return XOS_E2BIG;
    memcpy(reply, area, (size_t)n);
    return n;
}

long xos_view_serve(xos_view_handler handler)
{
    if (xos_view_role() != 2)
        return XOS_EINVAL;
    control()->handler = (uint64_t)(uintptr_t)handler;
    long (*serve)(void) = (long (*)(void))(uintptr_t)XOS_VIEW_SERVE;
    return serve();
}
