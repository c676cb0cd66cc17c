// SPDX-License-Identifier: GPL-2.0
/*
 * xos_vmfunc - EPTP switching (VMFUNC leaf 0) for the VMs of an unmodified
 * kvm_intel (Linux 6.1).
 *
 * Upstream KVM enables "VM functions" in the secondary controls but leaves
 * VM_FUNCTION_CONTROL at 0, so a guest's VMFUNC exits and KVM injects #UD.
 * This module lets the VMM that owns a VM (attached through /dev/xos-vmfunc)
 * build extra EPT "views" of the VM's memory and install, per vCPU, an EPTP
 * list and VM_FUNCTION_CONTROL bit 0, so that the guest switches views with
 * VMFUNC without a VM exit.
 *
 * Safety design (see README.md for the user-facing version):
 *
 * - Every EPT table the list points to is owned by this module. Slot 0 is
 *   NOT KVM's own root: KVM frees and replaces its root whenever it reloads
 *   the MMU (memslot changes, CR0.PG toggles, SMM, resets), which this module
 *   cannot observe on an unmodified KVM; a list entry holding a freed root
 *   would let the guest walk freed memory. Slot 0 is instead the "base view",
 *   a module-owned mirror of all memslots (same GPA -> page mapping as KVM's
 *   root), built on first use and never modified. Slots 1..15 are user views:
 *   mirrors (or empty) with per-page overrides from XOS_VMFUNC_MAP.
 * - Views are built only from the VM's own memslots (GPA -> memslot -> host
 *   virtual address -> page), pinned with FOLL_LONGTERM in the VM owner's mm;
 *   userspace never passes host-physical addresses. A pinned page stays
 *   allocated until the view stops mapping it, so no view can point at freed
 *   memory whatever userspace does to its mappings.
 * - Memslot DELETE/MOVE: a KVM page-track notifier (track_flush_slot) unmaps
 *   every page that came from that memslot from every view (each leaf carries
 *   a tag of its memslot in the EPT-ignored bits 62:52), INVEPTs and unpins.
 *   Memslots created later are not in the views: ENABLE/CREATE/MAP then fail
 *   with ESTALE until every view is destroyed and made again.
 * - Any change of a live view is followed by INVEPT (single-context per
 *   view, all-context if that type is missing) on every CPU before the old
 *   pages are unpinned, so no CPU keeps stale translations (this also covers
 *   vCPU migration between CPUs). A new view is INVEPTed before its EPTP is
 *   put in the list (its pages may have been an EPT root before).
 * - VMCS fields are written with the module's own VMREAD/VMWRITE between
 *   vcpu_load and vcpu_put (under vcpu->mutex) with preemption disabled; a
 *   vCPU in guest mode (nested: the current VMCS is vmcs02) or in SMM is
 *   refused. Before any list or view page is freed, VM_FUNCTION_CONTROL is
 *   cleared on every enabled vCPU and, if its EPT_POINTER is a module view,
 *   kvm_mmu_reset_context() makes KVM load its own root before the next VM
 *   entry.
 * - Dirty logging is refused (EBUSY) while views are created, mapped or
 *   enabled: writes through a view are not seen by KVM's dirty tracking.
 * - Unload is blocked while attached (try_module_get on attach; the misc
 *   device's fops owner also pins the module while a file is open).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bitmap.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/kvm_host.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/uaccess.h>
#include <asm/asm.h>
#include <asm/kvm_page_track.h>
#include <asm/msr.h>
#include <asm/mtrr.h>
#include <asm/vmx.h>

#include "uapi/xos_vmfunc.h"

#define XV_PT_ENTRIES 512
#define XV_EPT_RWX 7ULL
/* Physical address bits of an EPT entry (51:12). */
#define XV_ADDR_MASK (GENMASK_ULL(51, 12))
/* EPT-ignored bits 62:52 of a leaf hold the tag of its source memslot. */
#define XV_TAG_SHIFT 52
#define XV_TAG_MASK (GENMASK_ULL(62, 52))
#define XV_NO_VIEW (-1)

/* One EPT view: a 4-level EPT owned by the module. */
struct xv_view {
	u64 *pml4; /* NULL: slot unused */
	u64 eptp;
};

/* A memslot as it was when the views were built. */
struct xv_slot {
	short id;
	bool readonly;
	u64 base_gfn;
	u64 npages;
	unsigned long hva;
};

/* Leaves taken out of views, unpinned after the INVEPT that follows. */
struct xv_garbage {
	u64 *leaves;
	size_t n;
	size_t cap;
};

/* One open /dev/xos-vmfunc: at most one attachment. */
struct xv_file {
	struct mutex lock; /* everything below */
	struct kvm *kvm; /* NULL until ATTACH; then a reference */
	struct kvm_page_track_notifier_node track;
	bool tracking;
	u64 *list; /* the EPTP list page (with the base view) */
	struct xv_view views[XOS_VMFUNC_MAX_VIEWS]; /* [0] = base view */
	struct xv_slot *slots; /* memslots the views mirror */
	unsigned int nslots;
	DECLARE_BITMAP(enabled, KVM_MAX_VCPUS); /* by vcpu_idx */
	unsigned int nr_enabled;
	bool leaked; /* teardown could not reach a VMCS: pages kept */
	struct page **pin_buf; /* XV_PT_ENTRIES entries */
};

static u64 xv_caps;
static u64 xv_max_gpa;

/* ---------------------------------------------------------------- VMX ops */

/*
 * The VMX instructions report failure in CF/ZF ("setna"); a fault (#UD when
 * the CPU is not in VMX operation) is caught by the exception table and
 * leaves the status at 2.
 */
static int xv_vmread(unsigned long field, u64 *value)
{
	unsigned long v = 0;
	u8 status = 2;

	asm volatile("1: vmread %[field], %[v]\n\t"
		     "setna %[status]\n\t"
		     "2:\n\t"
		     _ASM_EXTABLE(1b, 2b)
		     : [v] "+r"(v), [status] "+qm"(status)
		     : [field] "r"(field)
		     : "cc");
	*value = v;
	return status ? -EIO : 0;
}

static int xv_vmwrite(unsigned long field, u64 value)
{
	u8 status = 2;

	asm volatile("1: vmwrite %[value], %[field]\n\t"
		     "setna %[status]\n\t"
		     "2:\n\t"
		     _ASM_EXTABLE(1b, 2b)
		     : [status] "+qm"(status)
		     : [field] "r"(field), [value] "rm"(value)
		     : "cc");
	return status ? -EIO : 0;
}

static int xv_invept(unsigned long type, u64 eptp)
{
	struct {
		u64 eptp;
		u64 reserved;
	} desc = { eptp, 0 };
	u8 status = 2;

	asm volatile("1: invept %[desc], %[type]\n\t"
		     "setna %[status]\n\t"
		     "2:\n\t"
		     _ASM_EXTABLE(1b, 2b)
		     : [status] "+qm"(status)
		     : [desc] "m"(desc), [type] "r"(type)
		     : "cc", "memory");
	return status ? -EIO : 0;
}

struct xv_invept_req {
	u64 eptps[XOS_VMFUNC_MAX_VIEWS];
	unsigned int n;
	atomic_t failures;
};

static void xv_invept_cpu(void *data)
{
	struct xv_invept_req *req = data;
	unsigned int i;

	if (!(xv_caps & XOS_VMFUNC_CAP_INVEPT_SINGLE)) {
		if (xv_invept(VMX_EPT_EXTENT_GLOBAL, 0))
			atomic_inc(&req->failures);
		return;
	}
	for (i = 0; i < req->n; i++)
		if (xv_invept(VMX_EPT_EXTENT_CONTEXT, req->eptps[i]))
			atomic_inc(&req->failures);
}

/* Flush the translations of the given views on every CPU (waits). */
static void xv_invept_views(struct xv_file *xf, int only)
{
	struct xv_invept_req req = { .n = 0 };
	int i;

	atomic_set(&req.failures, 0);
	for (i = 0; i < XOS_VMFUNC_MAX_VIEWS; i++) {
		if (!xf->views[i].pml4 || (only != XV_NO_VIEW && i != only))
			continue;
		req.eptps[req.n++] = xf->views[i].eptp;
	}
	if (!req.n)
		return;
	on_each_cpu(xv_invept_cpu, &req, 1);
	if (atomic_read(&req.failures))
		pr_warn_ratelimited("INVEPT failed on %d CPU(s)\n",
				    atomic_read(&req.failures));
}

/* -------------------------------------------------------- capabilities */

static void xv_probe_caps(void)
{
	u64 ctls, ctls2, vmfunc, ept;
	u64 caps = 0;

	if (!boot_cpu_has(X86_FEATURE_VMX))
		goto done;
	if (rdmsrl_safe(MSR_IA32_VMX_PROCBASED_CTLS, &ctls) ||
	    !((ctls >> 32) & CPU_BASED_ACTIVATE_SECONDARY_CONTROLS) ||
	    rdmsrl_safe(MSR_IA32_VMX_PROCBASED_CTLS2, &ctls2))
		goto done;
	caps |= XOS_VMFUNC_CAP_VMX;
	/* Allowed-1 settings are the high dword. */
	if (((ctls2 >> 32) & SECONDARY_EXEC_ENABLE_VMFUNC) &&
	    ((ctls2 >> 32) & SECONDARY_EXEC_ENABLE_EPT)) {
		caps |= XOS_VMFUNC_CAP_VMFUNC_CTL;
		if (!rdmsrl_safe(MSR_IA32_VMX_VMFUNC, &vmfunc) &&
		    (vmfunc & VMX_VMFUNC_EPTP_SWITCHING))
			caps |= XOS_VMFUNC_CAP_EPTP_SWITCH;
	}
	if (((ctls2 >> 32) & SECONDARY_EXEC_ENABLE_EPT) &&
	    !rdmsrl_safe(MSR_IA32_VMX_EPT_VPID_CAP, &ept)) {
		if (ept & VMX_EPT_PAGE_WALK_4_BIT)
			caps |= XOS_VMFUNC_CAP_EPT_4LEVEL;
		if (ept & VMX_EPTP_WB_BIT)
			caps |= XOS_VMFUNC_CAP_EPT_WB;
		if (ept & VMX_EPT_INVEPT_BIT) {
			if (ept & VMX_EPT_EXTENT_CONTEXT_BIT)
				caps |= XOS_VMFUNC_CAP_INVEPT_SINGLE;
			if (ept & VMX_EPT_EXTENT_GLOBAL_BIT)
				caps |= XOS_VMFUNC_CAP_INVEPT_ALL;
			/* Usable only with a type we can issue. */
			if (caps & (XOS_VMFUNC_CAP_INVEPT_SINGLE |
				    XOS_VMFUNC_CAP_INVEPT_ALL))
				caps |= XOS_VMFUNC_CAP_INVEPT;
		}
		if (ept & VMX_EPT_EXECUTE_ONLY_BIT)
			caps |= XOS_VMFUNC_CAP_EPT_EXEC_ONLY;
		if (ept & VMX_EPT_AD_BIT)
			caps |= XOS_VMFUNC_CAP_EPT_AD;
	}
done:
	xv_caps = caps;
}

static bool xv_usable(void)
{
	return (xv_caps & XOS_VMFUNC_CAPS_REQUIRED) == XOS_VMFUNC_CAPS_REQUIRED;
}

/* An EPTP of ours: WB, 4-level, no A/D, reserved bits clear, in range. */
static bool xv_eptp_valid(u64 eptp)
{
	if ((eptp & 7) != VMX_EPTP_MT_WB || (eptp & 0x38) != VMX_EPTP_PWL_4)
		return false;
	if (eptp & GENMASK_ULL(11, 6))
		return false;
	return (eptp >> boot_cpu_data.x86_phys_bits) == 0;
}

/* KVM's root EPTP looks like an EPT pointer (WB, 4- or 5-level). */
static bool xv_kvm_eptp_plausible(u64 eptp)
{
	u64 walk = eptp & 0x38;

	return (eptp & 7) == VMX_EPTP_MT_WB &&
	       (walk == VMX_EPTP_PWL_4 || walk == VMX_EPTP_PWL_5) &&
	       (eptp & XV_ADDR_MASK) != 0;
}

/* ------------------------------------------------------------ EPT tables */

static u64 xv_tag(int slot_id)
{
	return ((u64)((unsigned int)slot_id % 2047U) + 1) << XV_TAG_SHIFT;
}

static struct page *xv_leaf_page(u64 leaf)
{
	return pfn_to_page((leaf & XV_ADDR_MASK) >> PAGE_SHIFT);
}

static void xv_unpin_leaf(u64 leaf)
{
	struct page *page = xv_leaf_page(leaf);

	unpin_user_pages_dirty_lock(&page, 1, leaf & XOS_VMFUNC_PROT_WRITE);
}

/*
 * The PT entry for gpa in a view, allocating missing tables when alloc is
 * set. NULL: not present (and !alloc); ERR_PTR(-ENOMEM).
 */
static u64 *xv_walk(u64 *pml4, u64 gpa, bool alloc)
{
	u64 *table = pml4;
	int level;

	for (level = 3; level >= 1; level--) {
		unsigned int idx = (gpa >> (PAGE_SHIFT + 9 * level)) & 511;
		u64 e = READ_ONCE(table[idx]);

		if (!(e & XV_EPT_RWX)) {
			u64 *next;

			if (!alloc)
				return NULL;
			next = (u64 *)get_zeroed_page(GFP_KERNEL_ACCOUNT);
			if (!next)
				return ERR_PTR(-ENOMEM);
			e = virt_to_phys(next) | XV_EPT_RWX;
			WRITE_ONCE(table[idx], e);
		}
		table = phys_to_virt(e & XV_ADDR_MASK);
	}
	return &table[(gpa >> PAGE_SHIFT) & 511];
}

static bool xv_garbage_add(struct xv_garbage *g, u64 leaf)
{
	if (g->n == g->cap) {
		size_t cap = g->cap ? g->cap * 2 : 64;
		u64 *n = kvrealloc(g->leaves, g->cap * sizeof(u64),
				   cap * sizeof(u64), GFP_KERNEL_ACCOUNT);

		if (!n)
			return false;
		g->leaves = n;
		g->cap = cap;
	}
	g->leaves[g->n++] = leaf;
	return true;
}

/* Unpin what was taken out; only after the INVEPT that followed. */
static void xv_garbage_release(struct xv_garbage *g)
{
	size_t i;

	for (i = 0; i < g->n; i++)
		xv_unpin_leaf(g->leaves[i]);
	kvfree(g->leaves);
	g->leaves = NULL;
	g->n = 0;
	g->cap = 0;
}

/*
 * Unpin every leaf and free every table of a view. The view must be out of
 * every VMCS and list and INVEPTed (or never used).
 */
static void xv_free_tables(u64 *pml4)
{
	int i, j, k, l;

	for (i = 0; i < XV_PT_ENTRIES; i++) {
		u64 *pdpt;

		if (!(pml4[i] & XV_EPT_RWX))
			continue;
		pdpt = phys_to_virt(pml4[i] & XV_ADDR_MASK);
		for (j = 0; j < XV_PT_ENTRIES; j++) {
			u64 *pd;

			if (!(pdpt[j] & XV_EPT_RWX))
				continue;
			pd = phys_to_virt(pdpt[j] & XV_ADDR_MASK);
			for (k = 0; k < XV_PT_ENTRIES; k++) {
				u64 *pt;

				if (!(pd[k] & XV_EPT_RWX))
					continue;
				pt = phys_to_virt(pd[k] & XV_ADDR_MASK);
				for (l = 0; l < XV_PT_ENTRIES; l++)
					if (pt[l] & XV_EPT_RWX)
						xv_unpin_leaf(pt[l]);
				free_page((unsigned long)pt);
			}
			free_page((unsigned long)pd);
		}
		free_page((unsigned long)pdpt);
	}
	free_page((unsigned long)pml4);
}

/* Take every leaf tagged with `tag` out of a view (into g). */
static bool xv_unmap_tag(u64 *pml4, u64 tag, struct xv_garbage *g)
{
	int i, j, k, l;

	for (i = 0; i < XV_PT_ENTRIES; i++) {
		u64 *pdpt;

		if (!(pml4[i] & XV_EPT_RWX))
			continue;
		pdpt = phys_to_virt(pml4[i] & XV_ADDR_MASK);
		for (j = 0; j < XV_PT_ENTRIES; j++) {
			u64 *pd;

			if (!(pdpt[j] & XV_EPT_RWX))
				continue;
			pd = phys_to_virt(pdpt[j] & XV_ADDR_MASK);
			for (k = 0; k < XV_PT_ENTRIES; k++) {
				u64 *pt;

				if (!(pd[k] & XV_EPT_RWX))
					continue;
				pt = phys_to_virt(pd[k] & XV_ADDR_MASK);
				for (l = 0; l < XV_PT_ENTRIES; l++) {
					u64 e = pt[l];

					if (!(e & XV_EPT_RWX) ||
					    (e & XV_TAG_MASK) != tag)
						continue;
					if (!xv_garbage_add(g, e))
						return false;
					WRITE_ONCE(pt[l], 0);
				}
			}
		}
	}
	return true;
}

static u64 xv_prot_to_ept(u32 prot)
{
	return prot & XV_EPT_RWX; /* XOS_VMFUNC_PROT_* are the EPT bits */
}

/*
 * Map [gpa, gpa + n pages) in a view to the pages behind gfns
 * [sgfn, sgfn + n) of one memslot, pinned in current->mm (the VM's mm).
 * Replaced leaves go to g. On error, what was mapped stays mapped.
 */
static int xv_map_from_slot(struct xv_file *xf, u64 *pml4, u64 gpa,
			    const struct kvm_memory_slot *slot, gfn_t sgfn,
			    unsigned long n, u32 prot, struct xv_garbage *g)
{
	bool writable = !(slot->flags & KVM_MEM_READONLY);
	unsigned int gup = FOLL_LONGTERM | (writable ? FOLL_WRITE : 0);

	while (n) {
		unsigned long hva = slot->userspace_addr +
				    ((sgfn - slot->base_gfn) << PAGE_SHIFT);
		unsigned long chunk = min_t(unsigned long, n, XV_PT_ENTRIES);
		long got = pin_user_pages_fast(hva, chunk, gup, xf->pin_buf);
		long i;

		if (got <= 0)
			return got ? (int)got : -EFAULT;
		for (i = 0; i < got; i++) {
			u64 *pte = xv_walk(pml4, gpa + ((u64)i << PAGE_SHIFT),
					   true);
			u64 old;

			if (IS_ERR(pte)) {
				unpin_user_pages(xf->pin_buf + i, got - i);
				return PTR_ERR(pte);
			}
			old = READ_ONCE(*pte);
			if ((old & XV_EPT_RWX) && !xv_garbage_add(g, old)) {
				unpin_user_pages(xf->pin_buf + i, got - i);
				return -ENOMEM;
			}
			WRITE_ONCE(*pte,
				   page_to_phys(xf->pin_buf[i]) |
					   xv_prot_to_ept(prot) |
					   (MTRR_TYPE_WRBACK
					    << VMX_EPT_MT_EPTE_SHIFT) |
					   VMX_EPT_IPAT_BIT | xv_tag(slot->id));
		}
		n -= got;
		gpa += (u64)got << PAGE_SHIFT;
		sgfn += got;
		cond_resched();
	}
	return 0;
}

static u32 xv_slot_prot(const struct kvm_memory_slot *slot)
{
	if (slot->flags & KVM_MEM_READONLY)
		return XOS_VMFUNC_PROT_READ | XOS_VMFUNC_PROT_EXEC;
	return XOS_VMFUNC_PROT_ALL;
}

static bool xv_slot_usable(const struct kvm_memory_slot *slot)
{
	return slot && slot->npages && !(slot->flags & KVM_MEMSLOT_INVALID);
}

/* Mirror every memslot of address space 0 into a view. kvm->srcu held. */
static int xv_mirror(struct xv_file *xf, u64 *pml4)
{
	struct kvm_memslots *slots = kvm_memslots(xf->kvm);
	struct kvm_memory_slot *slot;
	struct xv_garbage g = { NULL, 0, 0 };
	int bkt, ret = 0;

	kvm_for_each_memslot(slot, bkt, slots) {
		if (!xv_slot_usable(slot))
			continue;
		ret = xv_map_from_slot(xf, pml4, slot->base_gfn << PAGE_SHIFT,
				       slot, slot->base_gfn, slot->npages,
				       xv_slot_prot(slot), &g);
		if (ret)
			break;
	}
	/* A fresh view replaces nothing; g can only hold overlaps (none). */
	xv_garbage_release(&g);
	return ret;
}

/*
 * Memslots must be as the views saw them (ESTALE), none may log dirty
 * pages (EBUSY), none may be mid-update (EAGAIN), none may lie above what
 * a 4-level EPT maps (ERANGE). kvm->srcu held.
 */
static int xv_check_slots(struct xv_file *xf, bool against_snapshot)
{
	struct kvm_memslots *slots = kvm_memslots(xf->kvm);
	struct kvm_memory_slot *slot;
	int bkt;
	unsigned int i, count = 0;

	kvm_for_each_memslot(slot, bkt, slots) {
		bool found = false;

		if (slot->flags & KVM_MEMSLOT_INVALID)
			return -EAGAIN;
		if (slot->flags & KVM_MEM_LOG_DIRTY_PAGES)
			return -EBUSY;
		if (slot->base_gfn + slot->npages > (xv_max_gpa >> PAGE_SHIFT))
			return -ERANGE;
		count++;
		if (!against_snapshot)
			continue;
		for (i = 0; i < xf->nslots; i++) {
			const struct xv_slot *s = &xf->slots[i];

			if (s->id == slot->id && s->base_gfn == slot->base_gfn &&
			    s->npages == slot->npages &&
			    s->hva == slot->userspace_addr &&
			    s->readonly == !!(slot->flags & KVM_MEM_READONLY)) {
				found = true;
				break;
			}
		}
		if (!found)
			return -ESTALE;
	}
	if (against_snapshot && count != xf->nslots)
		return -ESTALE;
	return 0;
}

static int xv_snapshot_slots(struct xv_file *xf)
{
	struct kvm_memslots *slots = kvm_memslots(xf->kvm);
	struct kvm_memory_slot *slot;
	unsigned int n = 0;
	int bkt;

	kvm_for_each_memslot(slot, bkt, slots)
		n++;
	kfree(xf->slots);
	xf->slots = kcalloc(max(n, 1U), sizeof(*xf->slots), GFP_KERNEL_ACCOUNT);
	xf->nslots = 0;
	if (!xf->slots)
		return -ENOMEM;
	kvm_for_each_memslot(slot, bkt, slots) {
		struct xv_slot *s = &xf->slots[xf->nslots++];

		s->id = slot->id;
		s->readonly = !!(slot->flags & KVM_MEM_READONLY);
		s->base_gfn = slot->base_gfn;
		s->npages = slot->npages;
		s->hva = slot->userspace_addr;
	}
	return 0;
}

/* Allocate a view's PML4 and, unless empty, mirror the memslots. */
static int xv_view_build(struct xv_file *xf, struct xv_view *v, bool empty)
{
	int ret = 0;

	v->pml4 = (u64 *)get_zeroed_page(GFP_KERNEL_ACCOUNT);
	if (!v->pml4)
		return -ENOMEM;
	v->eptp = virt_to_phys(v->pml4) | VMX_EPTP_MT_WB | VMX_EPTP_PWL_4;
	if (!xv_eptp_valid(v->eptp))
		ret = -EIO;
	else if (!empty)
		ret = xv_mirror(xf, v->pml4);
	if (ret) {
		/* Never in a list or VMCS: no INVEPT needed. */
		xv_free_tables(v->pml4);
		v->pml4 = NULL;
		v->eptp = 0;
	}
	return ret;
}

/* Out of the list, INVEPT, unpin and free. No vCPU may be enabled. */
static void xv_view_destroy(struct xv_file *xf, int idx)
{
	struct xv_view *v = &xf->views[idx];

	if (!v->pml4)
		return;
	if (xf->list)
		WRITE_ONCE(xf->list[idx], 0);
	xv_invept_views(xf, idx);
	xv_free_tables(v->pml4);
	v->pml4 = NULL;
	v->eptp = 0;
}

/* Make the list page and the base view (slot 0) if missing. srcu held. */
static int xv_ensure_base(struct xv_file *xf)
{
	int ret;

	if (xf->views[0].pml4)
		return xv_check_slots(xf, true);
	ret = xv_check_slots(xf, false);
	if (ret)
		return ret;
	if (!xf->list) {
		xf->list = (u64 *)get_zeroed_page(GFP_KERNEL_ACCOUNT);
		if (!xf->list)
			return -ENOMEM;
	}
	ret = xv_snapshot_slots(xf);
	if (ret)
		return ret;
	ret = xv_view_build(xf, &xf->views[0], false);
	if (ret)
		return ret;
	xv_invept_views(xf, 0);
	WRITE_ONCE(xf->list[0], xf->views[0].eptp);
	return 0;
}

static int xv_view_of_eptp(struct xv_file *xf, u64 eptp)
{
	int i;

	for (i = 0; i < XOS_VMFUNC_MAX_VIEWS; i++)
		if (xf->views[i].pml4 && xf->views[i].eptp == eptp)
			return i;
	return XV_NO_VIEW;
}

/* ------------------------------------------------------------ vCPU VMCS */

static int xv_vcpu_begin(struct kvm_vcpu *vcpu, bool killable)
{
	if (killable) {
		if (mutex_lock_killable(&vcpu->mutex))
			return -EINTR;
	} else {
		mutex_lock(&vcpu->mutex);
	}
	vcpu_load(vcpu);
	return 0;
}

static void xv_vcpu_end(struct kvm_vcpu *vcpu)
{
	vcpu_put(vcpu);
	mutex_unlock(&vcpu->mutex);
}

/* Clear the fields of a loaded vCPU; leave KVM's root loaded. */
static int xv_vcpu_clear_loaded(struct xv_file *xf, struct kvm_vcpu *vcpu)
{
	u64 ctl = 0, cur = 0;
	int ret;

	if (vcpu->arch.hflags & HF_GUEST_MASK)
		return -EBUSY; /* vmcs02 is current; ours is vmcs01 */
	preempt_disable();
	ret = xv_vmread(VM_FUNCTION_CONTROL, &ctl);
	if (!ret)
		ret = xv_vmwrite(VM_FUNCTION_CONTROL,
				 ctl & ~(u64)VMX_VMFUNC_EPTP_SWITCHING);
	if (!ret)
		ret = xv_vmwrite(EPTP_LIST_ADDRESS, 0);
	if (!ret)
		ret = xv_vmread(EPT_POINTER, &cur);
	preempt_enable();
	if (ret)
		return ret;
	/* The guest was left in a module view: KVM reloads its own root. */
	if (xv_view_of_eptp(xf, cur) != XV_NO_VIEW)
		kvm_mmu_reset_context(vcpu);
	return 0;
}

static int xv_vcpu_disable(struct xv_file *xf, struct kvm_vcpu *vcpu,
			   bool killable)
{
	int ret;

	if (!test_bit(vcpu->vcpu_idx, xf->enabled))
		return 0;
	ret = xv_vcpu_begin(vcpu, killable);
	if (ret)
		return ret;
	ret = xv_vcpu_clear_loaded(xf, vcpu);
	xv_vcpu_end(vcpu);
	if (!ret) {
		clear_bit(vcpu->vcpu_idx, xf->enabled);
		xf->nr_enabled--;
	}
	return ret;
}

static int xv_vcpu_enable(struct xv_file *xf, struct kvm_vcpu *vcpu)
{
	u64 sec = 0, root = 0, ctl = 0;
	int ret;

	if (vcpu->vcpu_idx < 0 || vcpu->vcpu_idx >= KVM_MAX_VCPUS)
		return -EINVAL;
	ret = xv_vcpu_begin(vcpu, true);
	if (ret)
		return ret;
	if (vcpu->arch.hflags & (HF_GUEST_MASK | HF_SMM_MASK)) {
		ret = -EBUSY; /* nested guest running, or in SMM */
		goto out;
	}
	if (!test_and_set_bit(vcpu->vcpu_idx, xf->enabled))
		xf->nr_enabled++;
	preempt_disable();
	ret = xv_vmread(SECONDARY_VM_EXEC_CONTROL, &sec);
	if (!ret && (!(sec & SECONDARY_EXEC_ENABLE_VMFUNC) ||
		     !(sec & SECONDARY_EXEC_ENABLE_EPT)))
		ret = -EOPNOTSUPP;
	if (!ret)
		ret = xv_vmread(EPT_POINTER, &root);
	/* 0: KVM loads its root at the vCPU's first KVM_RUN. */
	if (!ret && root && !xv_kvm_eptp_plausible(root) &&
	    xv_view_of_eptp(xf, root) == XV_NO_VIEW)
		ret = -EOPNOTSUPP;
	if (!ret)
		ret = xv_vmwrite(EPTP_LIST_ADDRESS, virt_to_phys(xf->list));
	if (!ret)
		ret = xv_vmread(VM_FUNCTION_CONTROL, &ctl);
	if (!ret)
		ret = xv_vmwrite(VM_FUNCTION_CONTROL,
				 ctl | VMX_VMFUNC_EPTP_SWITCHING);
	preempt_enable();
	if (ret && !xv_vcpu_clear_loaded(xf, vcpu)) {
		clear_bit(vcpu->vcpu_idx, xf->enabled);
		xf->nr_enabled--;
	}
out:
	xv_vcpu_end(vcpu);
	return ret;
}

/*
 * Put an enabled vCPU into list entry `view` by writing its EPTP into
 * EPT_POINTER. No INVEPT: a view is flushed on every CPU whenever it
 * changes (and before it is first published), and cached translations are
 * tagged by EPTP, exactly as for the guest's own VMFUNC. xf->lock held: no
 * view can be destroyed meanwhile (DESTROY_VIEW is EBUSY while enabled).
 */
static int xv_vcpu_set_view(struct xv_file *xf, struct kvm_vcpu *vcpu,
			    int view)
{
	u64 cur = 0;
	int ret;

	ret = xv_vcpu_begin(vcpu, true);
	if (ret)
		return ret;
	if (vcpu->arch.hflags & (HF_GUEST_MASK | HF_SMM_MASK)) {
		ret = -EBUSY; /* nested guest running, or in SMM */
		goto out;
	}
	/* KVM writes EPT_POINTER at the next entry: our write would be lost. */
	if (!VALID_PAGE(vcpu->arch.mmu->root.hpa) ||
	    kvm_test_request(KVM_REQ_LOAD_MMU_PGD, vcpu) ||
	    kvm_test_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, vcpu)) {
		ret = -EAGAIN;
		goto out;
	}
	preempt_disable();
	ret = xv_vmread(EPT_POINTER, &cur);
	if (!ret && !xv_kvm_eptp_plausible(cur) &&
	    xv_view_of_eptp(xf, cur) == XV_NO_VIEW)
		ret = -EOPNOTSUPP;
	if (!ret)
		ret = xv_vmwrite(EPT_POINTER, xf->views[view].eptp);
	preempt_enable();
out:
	xv_vcpu_end(vcpu);
	return ret;
}

/* --------------------------------------------------- memslot notifier */

static void xv_track_flush_slot(struct kvm *kvm, struct kvm_memory_slot *slot,
				struct kvm_page_track_notifier_node *node)
{
	struct xv_file *xf = container_of(node, struct xv_file, track);
	struct xv_garbage g = { NULL, 0, 0 };
	bool complete = true;
	unsigned int i;
	int v;

	if (slot->as_id != 0)
		return;
	mutex_lock(&xf->lock);
	for (i = 0; i < xf->nslots; i++) {
		if (xf->slots[i].id == slot->id) {
			xf->slots[i] = xf->slots[--xf->nslots];
			break;
		}
	}
	for (v = 0; v < XOS_VMFUNC_MAX_VIEWS; v++)
		if (xf->views[v].pml4 &&
		    !xv_unmap_tag(xf->views[v].pml4, xv_tag(slot->id), &g))
			complete = false;
	if (g.n)
		xv_invept_views(xf, XV_NO_VIEW);
	xv_garbage_release(&g);
	mutex_unlock(&xf->lock);
	if (!complete)
		pr_warn("memslot %d removed: out of memory, some views still map its (pinned) pages\n",
			slot->id);
}

/* ------------------------------------------------------------- teardown */

/* Disable every vCPU, then free views and list. xf->lock held. */
static void xv_teardown(struct xv_file *xf)
{
	struct kvm_vcpu *vcpu;
	unsigned long i;
	int v;

	if (xf->nr_enabled) {
		kvm_for_each_vcpu(i, vcpu, xf->kvm) {
			int ret = xv_vcpu_disable(xf, vcpu, false);

			if (ret)
				pr_warn("vCPU %d: cannot clear VM_FUNCTION_CONTROL (%d)\n",
					vcpu->vcpu_id, ret);
		}
	}
	if (xf->nr_enabled) {
		/* A VMCS may still point at the list: keep every page. */
		pr_warn("leaking the EPTP list and views of a VM (a vCPU was in guest mode)\n");
		xf->leaked = true;
		return;
	}
	for (v = XOS_VMFUNC_MAX_VIEWS - 1; v >= 0; v--)
		xv_view_destroy(xf, v);
	if (xf->list)
		free_page((unsigned long)xf->list);
	xf->list = NULL;
	kfree(xf->slots);
	xf->slots = NULL;
	xf->nslots = 0;
}

/* --------------------------------------------------------------- ioctls */

static bool xv_zero(const u64 *r, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (r[i])
			return false;
	return true;
}

static long xv_get_info(void __user *arg)
{
	struct xos_vmfunc_info info;

	memset(&info, 0, sizeof(info));
	info.abi_version = XOS_VMFUNC_ABI_VERSION;
	info.max_views = XOS_VMFUNC_MAX_VIEWS;
	info.caps = xv_caps;
	info.missing = XOS_VMFUNC_CAPS_REQUIRED & ~xv_caps;
	info.flags = xv_usable() ? XOS_VMFUNC_INFO_USABLE : 0;
	return copy_to_user(arg, &info, sizeof(info)) ? -EFAULT : 0;
}

static long xv_attach(struct xv_file *xf, void __user *arg)
{
	struct xos_vmfunc_attach a;
	struct file *f;
	struct kvm *kvm;
	long ret = 0;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	if (a.flags || !xv_zero(a.reserved, ARRAY_SIZE(a.reserved)))
		return -EINVAL;
	if (!xv_usable())
		return -EOPNOTSUPP;
	f = fget(a.vm_fd);
	if (!f)
		return -EBADF;
	if (!file_is_kvm(f)) {
		ret = -EINVAL; /* not a KVM VM fd */
		goto out_fput;
	}
	kvm = f->private_data;
	if (!kvm || kvm->mm != current->mm) {
		ret = -EPERM; /* a VM of another process */
		goto out_fput;
	}
	mutex_lock(&xf->lock);
	if (xf->kvm) {
		ret = -EBUSY;
		goto out_unlock;
	}
	if (!kvm_get_kvm_safe(kvm)) {
		ret = -ENOENT;
		goto out_unlock;
	}
	if (!try_module_get(THIS_MODULE)) {
		kvm_put_kvm(kvm);
		ret = -ENODEV;
		goto out_unlock;
	}
	xf->kvm = kvm;
	xf->track.track_write = NULL;
	xf->track.track_flush_slot = xv_track_flush_slot;
	kvm_page_track_register_notifier(kvm, &xf->track);
	xf->tracking = true;
out_unlock:
	mutex_unlock(&xf->lock);
out_fput:
	fput(f);
	return ret;
}

static long xv_create_view(struct xv_file *xf, void __user *arg)
{
	struct xos_vmfunc_view a;
	int idx, srcu;
	long ret;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	if ((a.flags & ~XOS_VMFUNC_VIEW_EMPTY) || a.view ||
	    !xv_zero(a.reserved, ARRAY_SIZE(a.reserved)))
		return -EINVAL;
	for (idx = 1; idx < XOS_VMFUNC_MAX_VIEWS; idx++)
		if (!xf->views[idx].pml4)
			break;
	if (idx == XOS_VMFUNC_MAX_VIEWS)
		return -ENOSPC;
	srcu = srcu_read_lock(&xf->kvm->srcu);
	ret = xv_ensure_base(xf);
	if (!ret)
		ret = xv_view_build(xf, &xf->views[idx],
				    a.flags & XOS_VMFUNC_VIEW_EMPTY);
	srcu_read_unlock(&xf->kvm->srcu, srcu);
	if (ret)
		return ret;
	/* Its pages may have been an EPT root before: flush, then publish. */
	xv_invept_views(xf, idx);
	WRITE_ONCE(xf->list[idx], xf->views[idx].eptp);
	a.view = idx;
	if (copy_to_user(arg, &a, sizeof(a)))
		return -EFAULT; /* the view exists; DESTROY_VIEW or close frees it */
	return 0;
}

static long xv_destroy_view(struct xv_file *xf, void __user *arg)
{
	struct xos_vmfunc_view a;
	int i;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	if (a.flags || !xv_zero(a.reserved, ARRAY_SIZE(a.reserved)) ||
	    a.view == 0 || a.view >= XOS_VMFUNC_MAX_VIEWS ||
	    !xf->views[a.view].pml4)
		return -EINVAL;
	if (xf->nr_enabled)
		return -EBUSY; /* a vCPU may be running in it */
	xv_view_destroy(xf, a.view);
	for (i = 1; i < XOS_VMFUNC_MAX_VIEWS; i++)
		if (xf->views[i].pml4)
			return 0;
	/* No user view left: drop the base too, rebuilt on next use. */
	xv_view_destroy(xf, 0);
	kfree(xf->slots);
	xf->slots = NULL;
	xf->nslots = 0;
	return 0;
}

static long xv_map(struct xv_file *xf, void __user *arg, bool unmap)
{
	struct xos_vmfunc_map a;
	struct xv_garbage g = { NULL, 0, 0 };
	u64 *pml4;
	u64 end, send, gfn, pages;
	int srcu;
	long ret = 0;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	if (!xv_zero(a.reserved, ARRAY_SIZE(a.reserved)) || a.view == 0 ||
	    a.view >= XOS_VMFUNC_MAX_VIEWS || !xf->views[a.view].pml4)
		return -EINVAL;
	if (!a.size || !PAGE_ALIGNED(a.gpa) || !PAGE_ALIGNED(a.size) ||
	    !PAGE_ALIGNED(a.source_gpa) ||
	    check_add_overflow(a.gpa, a.size, &end) || end > xv_max_gpa ||
	    check_add_overflow(a.source_gpa, a.size, &send))
		return -EINVAL;
	if (unmap) {
		if (a.prot || a.source_gpa)
			return -EINVAL;
	} else {
		if (!a.prot || (a.prot & ~XOS_VMFUNC_PROT_ALL))
			return -EINVAL;
		/* Write-only is an EPT misconfiguration. */
		if ((a.prot & XOS_VMFUNC_PROT_WRITE) &&
		    !(a.prot & XOS_VMFUNC_PROT_READ))
			return -EINVAL;
		if (a.prot == XOS_VMFUNC_PROT_EXEC &&
		    !(xv_caps & XOS_VMFUNC_CAP_EPT_EXEC_ONLY))
			return -EINVAL;
	}
	pml4 = xf->views[a.view].pml4;
	pages = a.size >> PAGE_SHIFT;

	srcu = srcu_read_lock(&xf->kvm->srcu);
	ret = xv_check_slots(xf, true);
	if (ret)
		goto out_unlock;
	if (unmap) {
		for (gfn = 0; gfn < pages; gfn++) {
			u64 *pte = xv_walk(pml4, a.gpa + (gfn << PAGE_SHIFT),
					   false);

			if (!pte || !(*pte & XV_EPT_RWX))
				continue;
			if (!xv_garbage_add(&g, *pte)) {
				ret = -ENOMEM;
				break;
			}
			WRITE_ONCE(*pte, 0);
		}
		goto out_unlock;
	}
	/* The whole source range must lie in memslots before anything changes. */
	for (gfn = a.source_gpa >> PAGE_SHIFT; gfn < send >> PAGE_SHIFT;) {
		struct kvm_memory_slot *slot = gfn_to_memslot(xf->kvm, gfn);

		if (!xv_slot_usable(slot)) {
			ret = -EINVAL;
			goto out_unlock;
		}
		if ((a.prot & XOS_VMFUNC_PROT_WRITE) &&
		    (slot->flags & KVM_MEM_READONLY)) {
			ret = -EACCES;
			goto out_unlock;
		}
		gfn = slot->base_gfn + slot->npages;
	}
	for (gfn = a.source_gpa >> PAGE_SHIFT; gfn < send >> PAGE_SHIFT;) {
		struct kvm_memory_slot *slot = gfn_to_memslot(xf->kvm, gfn);
		u64 n = min_t(u64, slot->base_gfn + slot->npages,
			      send >> PAGE_SHIFT) - gfn;
		u64 off = (gfn << PAGE_SHIFT) - a.source_gpa;

		ret = xv_map_from_slot(xf, pml4, a.gpa + off, slot, gfn, n,
				       a.prot, &g);
		if (ret)
			break;
		gfn += n;
	}
out_unlock:
	srcu_read_unlock(&xf->kvm->srcu, srcu);
	/* Every CPU forgets the old translations before their pages go. */
	xv_invept_views(xf, a.view);
	xv_garbage_release(&g);
	return ret;
}

static struct kvm_vcpu *xv_vcpu_arg(struct xv_file *xf, void __user *arg,
				    struct xos_vmfunc_vcpu *a)
{
	if (copy_from_user(a, arg, sizeof(*a)))
		return ERR_PTR(-EFAULT);
	if (a->flags || !xv_zero(a->reserved, ARRAY_SIZE(a->reserved)) ||
	    a->vcpu_id > INT_MAX)
		return ERR_PTR(-EINVAL);
	return kvm_get_vcpu_by_id(xf->kvm, a->vcpu_id) ?: ERR_PTR(-ENOENT);
}

static long xv_enable(struct xv_file *xf, void __user *arg)
{
	struct xos_vmfunc_vcpu a;
	struct kvm_vcpu *vcpu = xv_vcpu_arg(xf, arg, &a);
	int srcu;
	long ret;

	if (IS_ERR(vcpu))
		return PTR_ERR(vcpu);
	srcu = srcu_read_lock(&xf->kvm->srcu);
	ret = xv_ensure_base(xf);
	srcu_read_unlock(&xf->kvm->srcu, srcu);
	if (ret)
		return ret;
	return xv_vcpu_enable(xf, vcpu);
}

static long xv_disable(struct xv_file *xf, void __user *arg)
{
	struct xos_vmfunc_vcpu a;
	struct kvm_vcpu *vcpu = xv_vcpu_arg(xf, arg, &a);

	if (IS_ERR(vcpu))
		return PTR_ERR(vcpu);
	return xv_vcpu_disable(xf, vcpu, true);
}

static long xv_status(struct xv_file *xf, void __user *arg)
{
	struct xos_vmfunc_vcpu_status a;
	struct kvm_vcpu *vcpu;
	u64 ctl = 0, cur = 0;
	int view, ret;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	if (a.flags || a.reserved0 || a.current_view || a.vm_function_control ||
	    !xv_zero(a.reserved, ARRAY_SIZE(a.reserved)) || a.vcpu_id > INT_MAX)
		return -EINVAL;
	vcpu = kvm_get_vcpu_by_id(xf->kvm, a.vcpu_id);
	if (!vcpu)
		return -ENOENT;
	ret = xv_vcpu_begin(vcpu, true);
	if (ret)
		return ret;
	if (vcpu->arch.hflags & HF_GUEST_MASK) {
		ret = -EBUSY;
	} else {
		preempt_disable();
		ret = xv_vmread(VM_FUNCTION_CONTROL, &ctl);
		if (!ret)
			ret = xv_vmread(EPT_POINTER, &cur);
		preempt_enable();
	}
	xv_vcpu_end(vcpu);
	if (ret)
		return ret;
	view = xv_view_of_eptp(xf, cur);
	a.current_view = view == XV_NO_VIEW ? XOS_VMFUNC_VIEW_KVM : view;
	a.vm_function_control = ctl;
	a.flags = (test_bit(vcpu->vcpu_idx, xf->enabled) ?
			   XOS_VMFUNC_VCPU_ENABLED : 0) |
		  ((ctl & VMX_VMFUNC_EPTP_SWITCHING) ?
			   XOS_VMFUNC_VCPU_SWITCHING : 0);
	return copy_to_user(arg, &a, sizeof(a)) ? -EFAULT : 0;
}

static long xv_set_view(struct xv_file *xf, void __user *arg)
{
	struct xos_vmfunc_vcpu_view a;
	struct kvm_vcpu *vcpu;

	if (copy_from_user(&a, arg, sizeof(a)))
		return -EFAULT;
	if (a.reserved || a.vcpu_id > INT_MAX)
		return -EINVAL;
	vcpu = kvm_get_vcpu_by_id(xf->kvm, a.vcpu_id);
	if (!vcpu)
		return -ENOENT;
	if (a.view >= XOS_VMFUNC_MAX_VIEWS || !xf->views[a.view].pml4 ||
	    !xf->list || READ_ONCE(xf->list[a.view]) != xf->views[a.view].eptp)
		return -EINVAL; /* an empty list entry */
	if (vcpu->vcpu_idx < 0 || vcpu->vcpu_idx >= KVM_MAX_VCPUS ||
	    !test_bit(vcpu->vcpu_idx, xf->enabled))
		return -EINVAL; /* not enabled: no list, no teardown of it */
	return xv_vcpu_set_view(xf, vcpu, a.view);
}

static long xv_ioctl(struct file *file, unsigned int cmd, unsigned long uarg)
{
	struct xv_file *xf = file->private_data;
	void __user *arg = (void __user *)uarg;
	long ret;

	if (cmd == XOS_VMFUNC_GET_INFO)
		return xv_get_info(arg);
	if (cmd == XOS_VMFUNC_ATTACH)
		return xv_attach(xf, arg);

	mutex_lock(&xf->lock);
	if (!xf->kvm) {
		ret = -ENOTCONN;
		goto out;
	}
	/* Pins are taken in current->mm: only the VM's owner may act. */
	if (xf->kvm->mm != current->mm) {
		ret = -EPERM;
		goto out;
	}
	if (xf->leaked) {
		ret = -EIO;
		goto out;
	}
	switch (cmd) {
	case XOS_VMFUNC_CREATE_VIEW:
		ret = xv_create_view(xf, arg);
		break;
	case XOS_VMFUNC_DESTROY_VIEW:
		ret = xv_destroy_view(xf, arg);
		break;
	case XOS_VMFUNC_MAP:
		ret = xv_map(xf, arg, false);
		break;
	case XOS_VMFUNC_UNMAP:
		ret = xv_map(xf, arg, true);
		break;
	case XOS_VMFUNC_ENABLE_VCPU:
		ret = xv_enable(xf, arg);
		break;
	case XOS_VMFUNC_DISABLE_VCPU:
		ret = xv_disable(xf, arg);
		break;
	case XOS_VMFUNC_VCPU_STATUS:
		ret = xv_status(xf, arg);
		break;
	case XOS_VMFUNC_SET_VCPU_VIEW:
		ret = xv_set_view(xf, arg);
		break;
	default:
		ret = -ENOTTY;
	}
out:
	mutex_unlock(&xf->lock);
	return ret;
}

static int xv_open(struct inode *inode, struct file *file)
{
	struct xv_file *xf = kzalloc(sizeof(*xf), GFP_KERNEL_ACCOUNT);

	if (!xf)
		return -ENOMEM;
	xf->pin_buf = kcalloc(XV_PT_ENTRIES, sizeof(*xf->pin_buf),
			      GFP_KERNEL_ACCOUNT);
	if (!xf->pin_buf) {
		kfree(xf);
		return -ENOMEM;
	}
	mutex_init(&xf->lock);
	file->private_data = xf;
	return nonseekable_open(inode, file);
}

static int xv_release(struct inode *inode, struct file *file)
{
	struct xv_file *xf = file->private_data;
	struct kvm *kvm = xf->kvm;

	if (kvm) {
		/* Not under xf->lock: the callback takes it inside track_srcu. */
		if (xf->tracking)
			kvm_page_track_unregister_notifier(kvm, &xf->track);
		mutex_lock(&xf->lock);
		xv_teardown(xf);
		xf->kvm = NULL;
		mutex_unlock(&xf->lock);
		kvm_put_kvm(kvm);
		module_put(THIS_MODULE);
	}
	kfree(xf->pin_buf);
	kfree(xf);
	return 0;
}

static const struct file_operations xv_fops = {
	.owner = THIS_MODULE,
	.open = xv_open,
	.release = xv_release,
	.unlocked_ioctl = xv_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = no_llseek,
};

static struct miscdevice xv_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = XOS_VMFUNC_DEVICE_NAME,
	.fops = &xv_fops,
	.mode = 0600,
};

static int __init xv_init(void)
{
	int ret;

	xv_probe_caps();
	xv_max_gpa = 1ULL << min_t(unsigned int, 48,
				   boot_cpu_data.x86_phys_bits);
	ret = misc_register(&xv_misc);
	if (ret)
		return ret;
	if (xv_usable())
		pr_info("EPTP switching available (caps %#llx)\n", xv_caps);
	else
		pr_info("EPTP switching NOT available (caps %#llx, missing %#llx); ATTACH will fail\n",
			xv_caps, XOS_VMFUNC_CAPS_REQUIRED & ~xv_caps);
	return 0;
}

static void __exit xv_exit(void)
{
	misc_deregister(&xv_misc);
}

module_init(xv_init);
module_exit(xv_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("EPTP switching (VMFUNC) for KVM VMs, for xos-vmm");
MODULE_SOFTDEP("pre: kvm_intel");
