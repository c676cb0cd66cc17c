//! x86-64 set-up without boot code: the monitor writes the descriptor
//! tables, the page tables and the exception stubs straight into guest
//! memory and sets the vCPU's registers so that the first instruction the
//! guest executes is the image's entry point, in long mode at CPL3.
//!
//! Why no boot code: on the project's KVM backend CPL0 code is emulated
//! instruction by instruction (see `platform-facts.md`), so every
//! instruction the guest does not have to run at CPL0 is time saved.

pub mod cpu;
pub mod gdt;
pub mod interrupts;
pub mod paging;

use vm_memory::GuestMemoryMmap;

/// Addresses inside the supervisor-only system area
/// (`xos_abi::layout::SYSTEM_START..SYSTEM_END`).
pub mod system {
    /// Global descriptor table.
    pub const GDT: u64 = 0x1000;
    /// Task state segment (holds the exception stack pointer RSP0).
    pub const TSS: u64 = 0x1080;
    /// Interrupt descriptor table (256 gates of 16 bytes).
    pub const IDT: u64 = 0x2000;
    /// Exception stubs, one per vector 0..31, then the generic stub.
    pub const STUBS: u64 = 0x3000;
    /// Top-level page table.
    pub const PML4: u64 = 0x4000;
    /// Page directory pointer table.
    pub const PDPT: u64 = 0x5000;
    /// 4 KiB page table for the first 2 MiB (guards and supervisor pages).
    pub const PT_LOW: u64 = 0x6000;
    /// First page directory; one per GiB of guest memory follows.
    pub const PD_BASE: u64 = 0x7000;
    /// Largest number of page directories (16 GiB of guest memory).
    pub const MAX_PDS: u64 = 16;
    /// Page directory mapping the hypercall doorbell (after the largest
    /// possible set of memory page directories).
    pub const PD_DOORBELL: u64 = PD_BASE + MAX_PDS * 0x1000;
    /// Page directory of the channel window (`xos_abi::WINDOW`).
    pub const PD_WINDOW: u64 = PD_DOORBELL + 0x1000;
    /// Page table of the channel window (4 KiB pages, up to 2 MiB).
    pub const PT_WINDOW: u64 = PD_WINDOW + 0x1000;
    /// Page directory mapping the virtio device page (`xos_abi::VIRTIO_MMIO`).
    pub const PD_VIRTIO: u64 = PT_WINDOW + 0x1000;
    /// Page tables for the 2 MiB regions above the first 2 MiB that hold
    /// code or read-only data ([`IMAGE_PTS`] of them): those need 4 KiB
    /// pages for their permissions (see `paging::protect_image`).
    pub const PT_IMAGE: u64 = PD_VIRTIO + 0x1000;
    /// How many [`PT_IMAGE`] tables there are: code and read-only data
    /// must end below 2 MiB + this many 2 MiB regions (8 MiB).
    pub const IMAGE_PTS: u64 = 3;
    /// Top of the CPL0 stack used while an exception stub runs.
    pub const EXCEPTION_STACK_TOP: u64 = 0x2_0000;
}

/// Errors while writing the system area.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// The system area could not be written; guest memory is too small or
    /// not mapped where the layout expects it.
    #[error("cannot write the guest's system area at {addr:#x}: {source}")]
    Write {
        /// Guest address of the failed write.
        addr: u64,
        /// What vm-memory reported.
        source: vm_memory::GuestMemoryError,
    },
    /// More memory than the page tables can map.
    #[error("guest memory of {0} bytes is more than the {max} GiB the page tables map", max = system::MAX_PDS)]
    TooMuchMemory(u64),
    /// Code or read-only data too high for the image page tables.
    #[error("the image's code or read-only data reaches {end:#x}; xos-vmm maps them with their own permissions (W^X) only below {limit:#x}: link the image's code and read-only data lower (xos-guest.ld puts them first)")]
    ProtectedTooHigh {
        /// End of the segment.
        end: u64,
        /// The limit.
        limit: u64,
    },
    /// A channel window of an unusable size.
    #[error("a channel window of {0} bytes cannot be mapped: it must be a non-zero multiple of 4 KiB, at most {max} bytes", max = xos_abi::MAX_WINDOW_SIZE)]
    BadWindow(u64),
}

/// Writes everything in the system area: GDT and TSS, IDT and stubs, page
/// tables. After this, a vCPU with [`cpu::initial_sregs`] can run user code.
pub fn write_system_area(mem: &GuestMemoryMmap, mem_size: u64) -> Result<(), ArchError> {
    gdt::write(mem)?;
    interrupts::write(mem)?;
    paging::write(mem, mem_size)?;
    Ok(())
}

pub(crate) fn write_bytes(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) -> Result<(), ArchError> {
    use vm_memory::{Bytes, GuestAddress};
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| ArchError::Write { addr, source })
}
