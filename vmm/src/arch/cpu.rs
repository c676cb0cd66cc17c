//! Initial vCPU register state: 64-bit long mode at CPL3.
//!
//! Values are architectural (see `platform-facts.md`, "Long-mode register
//! setup"): CR0 = PE|MP|ET|NE|WP|PG, CR4 = PAE|OSFXSR|OSXMMEXCPT (rustc
//! emits SSE even for integer code), EFER = LME|LMA.

use super::{gdt, system};
use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};

/// CR0: protection, monitor coprocessor, extension type, native FPU errors,
/// write protect, paging.
pub const CR0: u64 = 0x8001_0033;
/// CR4: PAE, OS supports FXSAVE/FXRSTOR and unmasked SSE exceptions.
pub const CR4: u64 = 0x620;
/// EFER: long mode enabled and active.
pub const EFER: u64 = 0xd00;
/// RFLAGS at entry: only the reserved bit 1. IOPL stays 0: hypercalls use
/// the MMIO doorbell (`xos_abi::DOORBELL`), because KVM backends that run
/// guest user mode on the host's ring 3 (PVM) force IOPL to 0 anyway.
pub const RFLAGS: u64 = 0x2;

fn code_segment(selector: u16, dpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: 0xb,
        present: 1,
        dpl,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn data_segment(selector: u16, dpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: 0x3,
        present: 1,
        dpl,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Privilege level the guest starts at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    /// CPL3: functions and programs (runs natively on every KVM backend).
    User,
    /// CPL0: trusted kernels that install their own descriptor tables.
    Kernel,
}

/// Special registers for long mode at the given privilege level, on top of
/// `base`, whose fields this does not set (APIC base, interrupt bitmap,
/// CR8) are kept.
pub fn initial_sregs(base: &kvm_sregs, privilege: Privilege) -> kvm_sregs {
    let mut sregs = *base;
    let (cs, ds) = match privilege {
        Privilege::User => (code_segment(gdt::USER_CS, 3), data_segment(gdt::USER_DS, 3)),
        Privilege::Kernel => (
            code_segment(gdt::KERNEL_CS, 0),
            data_segment(gdt::KERNEL_DS, 0),
        ),
    };
    sregs.cs = cs;
    sregs.ds = ds;
    sregs.es = ds;
    sregs.fs = ds;
    sregs.gs = ds;
    sregs.ss = ds;
    sregs.tr = kvm_segment {
        base: system::TSS,
        limit: gdt::TSS_LIMIT,
        selector: gdt::TSS_SELECTOR,
        type_: 0xb, // busy 64-bit TSS
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.gdt = kvm_dtable {
        base: system::GDT,
        limit: (gdt::GDT_ENTRIES * 8 - 1) as u16,
        padding: [0; 3],
    };
    sregs.idt = kvm_dtable {
        base: system::IDT,
        limit: 256 * 16 - 1,
        padding: [0; 3],
    };
    sregs.cr0 = CR0;
    sregs.cr3 = system::PML4;
    sregs.cr4 = CR4;
    sregs.efer = EFER;
    sregs
}

/// General registers at entry.
pub fn initial_regs(entry: u64, stack_top: u64, arg: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: stack_top,
        rdi: arg,
        rflags: RFLAGS,
        ..Default::default()
    }
}
