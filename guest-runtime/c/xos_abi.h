/* The xos guest ABI, version 1: C mirror of guest-runtime/abi/src/lib.rs.
 * docs/ABI.md is the prose version. tests/abi_c_mirror.rs checks that the
 * offsets and constants here match the Rust crate. */
#ifndef XOS_ABI_H
#define XOS_ABI_H

#include <stdint.h>

#define XOS_ABI_VERSION 1u
#define XOS_BOOT_MAGIC 0x31544f4f42534f58ull /* "XOSBOOT1" little endian */
/* A hypercall is a 4-byte write of its number to this address (MMIO exit). */
#define XOS_DOORBELL 0x400000000ull
#define XOS_FAULT_PORT 0x0511

#define XOS_BOOT_INFO_ADDR 0x20000ull
#define XOS_IMAGE_BASE 0x100000ull

#define XOS_HC_EXIT 1
#define XOS_HC_ABORT 2
#define XOS_HC_FLUSH 3
#define XOS_HC_READ_STDIN 4
#define XOS_HC_WRITE 5
#define XOS_HC_HOST_CALL 6
#define XOS_HC_NOP 7
#define XOS_HC_READY 8
#define XOS_HC_WINDOW_WAIT 9
#define XOS_HC_WINDOW_WAKE 10
#define XOS_HC_SAFE_POINT 11
#define XOS_HC_VIEW_SWITCH 12 /* doorbell value: 12 | view << 16 */
#define XOS_HC_VIEW_SERVE 13
#define XOS_HC_VIEW_WAIT 14      /* VMFUNC mode, trampoline only */
#define XOS_HC_VIEW_BAD_ENTRY 15 /* VMFUNC mode, trampoline only */

/* EPT views (abi::view): the trampoline page (the same in every view) and
 * each view's control block. */
#define XOS_VIEW_TRAMPOLINE 0x22000ull
#define XOS_VIEW_CONTROL 0x23000ull
#define XOS_VIEW_CALL XOS_VIEW_TRAMPOLINE
#define XOS_VIEW_SERVE (XOS_VIEW_TRAMPOLINE + 0x100ull)
#define XOS_VIEW_HYPERCALL (XOS_VIEW_TRAMPOLINE + 0x1e0ull) /* mov [DOORBELL], eax; ret */
#define XOS_VIEW_GATE (XOS_VIEW_TRAMPOLINE + 0xf00ull)
#define XOS_VIEW_ZERO_FXSAVE 0x200ull
#define XOS_VIEW_MSG_SIZE 0x10000ull
#define XOS_VIEW_NO_PEER 0xffffffffffffffffull
#define XOS_VIEW_NO_SLOT 0xffffffffull
#define XOS_VIEW_IN_CALL 2

/* The channel window (BootInfo.window): a shared-memory ring channel. */
#define XOS_WINDOW 0x500000000ull
#define XOS_MAX_WINDOW_SIZE 0x200000ull
#define XOS_WINDOW_MAY_SLEEP 1u

/* The virtio channel device (BootInfo.devices & XOS_DEVICE_VIRTIO_CHANNEL):
 * its virtio-mmio register page. */
#define XOS_VIRTIO_MMIO 0x600000000ull
#define XOS_DEVICE_VIRTIO_CHANNEL 1ull
/* An ept-view IC: the view trampoline and control block are mapped. */
#define XOS_DEVICE_VIEWS 2ull

/* Ring layout inside the window (abi::ring). */
#define XOS_RING_MAGIC 0x474e5258u /* "XRNG" little endian */
#define XOS_RING_CONTROL 4096u
#define XOS_RING_OFF_MAGIC 0u
#define XOS_RING_OFF_CAPACITY 4u
#define XOS_RING_OFF_PID(side) (64u + 64u * (side))
#define XOS_RING_OFF_CLOSED(side) (192u + 64u * (side))
#define XOS_RING_HEAD 0u
#define XOS_RING_TAIL 1u
#define XOS_RING_CONSUMER_SLEEPS 2u
#define XOS_RING_PRODUCER_SLEEPS 3u
#define XOS_RING_FIELD(k, field) (512u + 1024u * (k) + 128u * (field))
#define XOS_RING_HEADER 4u

#define XOS_EFAULT (-14)
#define XOS_EINVAL (-22)
#define XOS_ENOENT (-2)
#define XOS_E2BIG (-7)
#define XOS_EIO (-5)
#define XOS_EPIPE (-32)
#define XOS_EHOSTFN (-1000)

struct xos_output_record {
    uint32_t fd;
    uint32_t len;
};

struct xos_stdin_state {
    uint64_t buf, cap, len, eof;
};

struct xos_output_state {
    uint64_t buf, cap, used, reserved;
};

struct xos_hypercall {
    uint64_t args[6];
    int64_t ret;
    uint64_t reserved;
};

struct xos_window_info {
    uint64_t addr;
    uint64_t size;
    uint32_t side;
    uint32_t flags;
};

struct xos_view_control {
    uint64_t this_view;
    uint64_t peer;
    uint64_t handler;
    uint64_t serve_rsp;
    uint64_t saved_rsp;
    uint64_t msg_addr;
    uint64_t msg_size;
    uint64_t flags;       /* VMFUNC mode: XOS_VIEW_IN_CALL inside a call */
};

/* A view's gate at XOS_VIEW_GATE (in its copy of the trampoline page, so
 * read-only to the guest; the monitor writes it). */
struct xos_view_gate {
    uint64_t open;        /* VMFUNC mode: 1 while serving */
    uint64_t peer_slot;   /* VMFUNC mode: EPTP-list index of the peer */
    uint64_t caller_slot; /* VMFUNC mode: EPTP-list index of the caller */
};

struct xos_boot_info {
    uint64_t magic;
    uint32_t abi_version;
    uint32_t flags;
    uint64_t mem_size;
    uint64_t argc;
    uint64_t argv;
    uint64_t envp;
    uint64_t heap_start;
    uint64_t heap_end;
    uint64_t stack_top;
    uint64_t stack_bottom;
    struct xos_stdin_state stdin_state;
    struct xos_output_state output;
    struct xos_hypercall hypercall;
    struct xos_window_info window;
    uint64_t devices;
};

#endif
