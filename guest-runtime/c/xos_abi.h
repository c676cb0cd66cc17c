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

#define XOS_EFAULT (-14)
#define XOS_EINVAL (-22)
#define XOS_ENOENT (-2)
#define XOS_E2BIG (-7)
#define XOS_EIO (-5)
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
};

#endif
