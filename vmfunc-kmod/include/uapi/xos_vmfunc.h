/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR Apache-2.0 */
/*
 * xos_vmfunc.h - ioctl ABI of /dev/xos-vmfunc (vmfunc-kmod).
 *
 * The module adds EPTP switching (VMFUNC leaf 0) to the VMs of an unmodified
 * kvm_intel. This header is the only definition of the ABI: the module, the
 * in-guest tests and the Rust mirror (vmm/src/vmfunc.rs, checked by
 * tests/vmfunc_abi.rs) all follow it. Every struct has a fixed layout
 * (naturally aligned, no implicit padding) and every reserved field must be
 * zero, otherwise the ioctl fails with EINVAL.
 *
 * Typical use (see vmfunc-kmod/README.md):
 *   fd = open("/dev/xos-vmfunc", O_RDWR);
 *   ioctl(fd, XOS_VMFUNC_GET_INFO, &info);     check abi_version, USABLE
 *   ioctl(fd, XOS_VMFUNC_ATTACH, &attach);     attach.vm_fd = a KVM VM fd
 *   ioctl(fd, XOS_VMFUNC_CREATE_VIEW, &view);  view.view = 1, 2, ...
 *   ioctl(fd, XOS_VMFUNC_MAP, &map);           remap/restrict GPAs in a view
 *   ioctl(fd, XOS_VMFUNC_ENABLE_VCPU, &vcpu);  per vCPU, not while it runs
 *   ioctl(fd, XOS_VMFUNC_SET_VCPU_VIEW, &vv);  optional: start in view vv.view
 *   ... guest: eax = 0, ecx = view; vmfunc ...
 *   close(fd);                                 disables and frees everything
 */
#ifndef _UAPI_XOS_VMFUNC_H
#define _UAPI_XOS_VMFUNC_H

#include <linux/types.h>
#include <linux/ioctl.h>

/* Bumped on every incompatible change of this header. */
#define XOS_VMFUNC_ABI_VERSION 1

/* Name of the misc device (under /dev) and of the module. */
#define XOS_VMFUNC_DEVICE_NAME "xos-vmfunc"

/*
 * EPTP-list slots the module uses: slot 0 is the base view (a mirror of the
 * VM's memslots, never modified); slots 1 .. XOS_VMFUNC_MAX_VIEWS - 1 are
 * the views made with XOS_VMFUNC_CREATE_VIEW. VMFUNC to any other slot
 * (up to 511) finds an empty entry and the guest gets #UD.
 */
#define XOS_VMFUNC_MAX_VIEWS 16

/* ---- capabilities (struct xos_vmfunc_info.caps) ---- */
/* The CPU has VMX and its VMX capability MSRs are readable. */
#define XOS_VMFUNC_CAP_VMX           (1ULL << 0)
/* IA32_VMX_PROCBASED_CTLS2 allows "enable VM functions" (bit 13). */
#define XOS_VMFUNC_CAP_VMFUNC_CTL    (1ULL << 1)
/* IA32_VMX_VMFUNC allows EPTP switching (leaf 0). */
#define XOS_VMFUNC_CAP_EPTP_SWITCH   (1ULL << 2)
/* IA32_VMX_EPT_VPID_CAP: 4-level EPT walks. */
#define XOS_VMFUNC_CAP_EPT_4LEVEL    (1ULL << 3)
/* IA32_VMX_EPT_VPID_CAP: write-back EPT paging-structure memory type. */
#define XOS_VMFUNC_CAP_EPT_WB        (1ULL << 4)
/* IA32_VMX_EPT_VPID_CAP: INVEPT, single-context and all-context types. */
#define XOS_VMFUNC_CAP_INVEPT        (1ULL << 5)
#define XOS_VMFUNC_CAP_INVEPT_SINGLE (1ULL << 6)
#define XOS_VMFUNC_CAP_INVEPT_ALL    (1ULL << 7)
/* IA32_VMX_EPT_VPID_CAP: execute-only EPT entries (XOS_VMFUNC_PROT_EXEC alone). */
#define XOS_VMFUNC_CAP_EPT_EXEC_ONLY (1ULL << 8)
/* IA32_VMX_EPT_VPID_CAP: EPT accessed/dirty flags (informational; views do not use them). */
#define XOS_VMFUNC_CAP_EPT_AD        (1ULL << 9)

/* What the module needs; info.missing = required & ~caps. */
#define XOS_VMFUNC_CAPS_REQUIRED                                         \
	(XOS_VMFUNC_CAP_VMX | XOS_VMFUNC_CAP_VMFUNC_CTL |                \
	 XOS_VMFUNC_CAP_EPTP_SWITCH | XOS_VMFUNC_CAP_EPT_4LEVEL |        \
	 XOS_VMFUNC_CAP_EPT_WB | XOS_VMFUNC_CAP_INVEPT)

/* info.flags: every required capability is present (ATTACH can work). */
#define XOS_VMFUNC_INFO_USABLE (1U << 0)

/* XOS_VMFUNC_GET_INFO (out). Works without an attachment. */
struct xos_vmfunc_info {
	__u32 abi_version;   /* XOS_VMFUNC_ABI_VERSION */
	__u32 max_views;     /* XOS_VMFUNC_MAX_VIEWS, slot 0 included */
	__u64 caps;          /* XOS_VMFUNC_CAP_* found on this CPU */
	__u64 missing;       /* required capabilities not found (why not USABLE) */
	__u32 flags;         /* XOS_VMFUNC_INFO_* */
	__u32 reserved0;     /* out: 0 */
	__u64 reserved[4];   /* out: 0 */
};

/* XOS_VMFUNC_ATTACH (in). One attachment per open file. */
struct xos_vmfunc_attach {
	__s32 vm_fd;         /* a KVM VM fd (KVM_CREATE_VM) of the calling process */
	__u32 flags;         /* 0 */
	__u64 reserved[2];   /* 0 */
};

/* XOS_VMFUNC_CREATE_VIEW flags: start empty instead of mirroring every memslot. */
#define XOS_VMFUNC_VIEW_EMPTY (1U << 0)

/* XOS_VMFUNC_CREATE_VIEW (in: flags; out: view), XOS_VMFUNC_DESTROY_VIEW (in). */
struct xos_vmfunc_view {
	__u32 view;          /* CREATE: out, 1 .. max_views - 1; DESTROY: in */
	__u32 flags;         /* CREATE: XOS_VMFUNC_VIEW_*; DESTROY: 0 */
	__u64 reserved[2];   /* 0 */
};

/* Permissions of a mapping (the EPT R/W/X bits). W needs R. */
#define XOS_VMFUNC_PROT_READ  (1U << 0)
#define XOS_VMFUNC_PROT_WRITE (1U << 1)
#define XOS_VMFUNC_PROT_EXEC  (1U << 2)
#define XOS_VMFUNC_PROT_ALL   (XOS_VMFUNC_PROT_READ | XOS_VMFUNC_PROT_WRITE | XOS_VMFUNC_PROT_EXEC)

/*
 * XOS_VMFUNC_MAP (in): in view `view`, guest-physical [gpa, gpa + size)
 * shows the guest memory at [source_gpa, source_gpa + size) with `prot`.
 * The source range must lie in the VM's memslots; the module finds and pins
 * the pages itself. All addresses and size are 4 KiB aligned, size > 0.
 * XOS_VMFUNC_UNMAP (in): same struct, prot and source_gpa 0: the range is
 * not mapped in the view any more.
 */
struct xos_vmfunc_map {
	__u32 view;
	__u32 prot;          /* XOS_VMFUNC_PROT_* (UNMAP: 0) */
	__u64 gpa;
	__u64 size;
	__u64 source_gpa;    /* UNMAP: 0 */
	__u64 reserved[2];   /* 0 */
};

/* XOS_VMFUNC_ENABLE_VCPU, XOS_VMFUNC_DISABLE_VCPU (in). */
struct xos_vmfunc_vcpu {
	__u32 vcpu_id;       /* as given to KVM_CREATE_VCPU */
	__u32 flags;         /* 0 */
	__u64 reserved[2];   /* 0 */
};

/* xos_vmfunc_vcpu_status.current_view when the vCPU runs on KVM's own EPT root. */
#define XOS_VMFUNC_VIEW_KVM 0xffffffffU
/* xos_vmfunc_vcpu_status.flags (out). */
#define XOS_VMFUNC_VCPU_ENABLED   (1U << 0) /* the module enabled this vCPU */
#define XOS_VMFUNC_VCPU_SWITCHING (1U << 1) /* VM_FUNCTION_CONTROL bit 0 is set in its VMCS */

/* XOS_VMFUNC_VCPU_STATUS (in: vcpu_id; out: the rest). */
struct xos_vmfunc_vcpu_status {
	__u32 vcpu_id;
	__u32 flags;         /* out: XOS_VMFUNC_VCPU_* */
	__u32 current_view;  /* out: view whose EPTP is in EPT_POINTER, or XOS_VMFUNC_VIEW_KVM */
	__u32 reserved0;     /* 0 */
	__u64 vm_function_control; /* out: the VMCS field */
	__u64 reserved[2];   /* 0 */
};

/*
 * XOS_VMFUNC_SET_VCPU_VIEW (in): put an ENABLED vCPU (not while it runs)
 * into EPTP-list entry `view` (0 = the base view, or an existing view
 * 1 .. max_views - 1): the module writes that entry into the vCPU's VMCS
 * EPT_POINTER, so the next KVM_RUN enters the guest in that view without the
 * guest executing VMFUNC. Errors: ENOTCONN not attached; ENOENT no such
 * vCPU; EINVAL reserved != 0, view empty or >= max_views, or the vCPU is not
 * enabled (XOS_VMFUNC_ENABLE_VCPU first); EBUSY the vCPU is in guest mode
 * (nested) or SMM; EAGAIN KVM has no current root for the vCPU or is about
 * to reload it (e.g. the vCPU never ran: run it once first), so the write
 * would be lost at the next KVM_RUN.
 * Limit (as for VMFUNC): whenever KVM later reloads its MMU or EPT pointer
 * for the vCPU (memslot changes, CR0/CR4/EFER changes through
 * KVM_SET_SREGS, SMM, resets), the vCPU is back on KVM's own root;
 * XOS_VMFUNC_VCPU_STATUS shows which view is current.
 */
struct xos_vmfunc_vcpu_view {
	__u32 vcpu_id;       /* as given to KVM_CREATE_VCPU */
	__u32 view;          /* 0 .. max_views - 1, an existing view */
	__u64 reserved;      /* 0 */
};

#define XOS_VMFUNC_IOC_MAGIC 0xE5

#define XOS_VMFUNC_GET_INFO     _IOR(XOS_VMFUNC_IOC_MAGIC, 0x00, struct xos_vmfunc_info)
#define XOS_VMFUNC_ATTACH       _IOW(XOS_VMFUNC_IOC_MAGIC, 0x01, struct xos_vmfunc_attach)
#define XOS_VMFUNC_CREATE_VIEW  _IOWR(XOS_VMFUNC_IOC_MAGIC, 0x02, struct xos_vmfunc_view)
#define XOS_VMFUNC_DESTROY_VIEW _IOW(XOS_VMFUNC_IOC_MAGIC, 0x03, struct xos_vmfunc_view)
#define XOS_VMFUNC_MAP          _IOW(XOS_VMFUNC_IOC_MAGIC, 0x04, struct xos_vmfunc_map)
#define XOS_VMFUNC_UNMAP        _IOW(XOS_VMFUNC_IOC_MAGIC, 0x05, struct xos_vmfunc_map)
#define XOS_VMFUNC_ENABLE_VCPU  _IOW(XOS_VMFUNC_IOC_MAGIC, 0x06, struct xos_vmfunc_vcpu)
#define XOS_VMFUNC_DISABLE_VCPU _IOW(XOS_VMFUNC_IOC_MAGIC, 0x07, struct xos_vmfunc_vcpu)
#define XOS_VMFUNC_VCPU_STATUS  _IOWR(XOS_VMFUNC_IOC_MAGIC, 0x08, struct xos_vmfunc_vcpu_status)
#define XOS_VMFUNC_SET_VCPU_VIEW _IOW(XOS_VMFUNC_IOC_MAGIC, 0x09, struct xos_vmfunc_vcpu_view)

#endif /* _UAPI_XOS_VMFUNC_H */
