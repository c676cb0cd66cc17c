//! Global descriptor table and task state segment.
//!
//! The TSS exists only for RSP0: when guest code at CPL3 takes an exception
//! the CPU switches to the supervisor stack named there, so a guest with a
//! broken stack pointer still reaches the exception stubs.

use super::{system, write_bytes, ArchError};
use vm_memory::GuestMemoryMmap;

/// Selector of the 64-bit kernel code segment.
pub const KERNEL_CS: u16 = 0x08;
/// Selector of the kernel data segment.
pub const KERNEL_DS: u16 = 0x10;
/// Selector of the 64-bit user code segment (RPL 3).
pub const USER_CS: u16 = 0x18 | 3;
/// Selector of the user data segment (RPL 3).
pub const USER_DS: u16 = 0x20 | 3;
/// Selector of the TSS.
pub const TSS_SELECTOR: u16 = 0x28;
/// Size of the TSS (no I/O permission bitmap: guest code never uses ports).
const TSS_SIZE: usize = 104;
/// Limit of the TSS.
pub const TSS_LIMIT: u32 = TSS_SIZE as u32 - 1;
/// Number of 8-byte GDT slots (the TSS descriptor takes two).
pub const GDT_ENTRIES: usize = 7;

/// Encodes a code/data segment descriptor from its access byte and flags
/// nibble (base 0, limit 0xfffff with 4 KiB granularity).
const fn segment(access: u64, flags: u64) -> u64 {
    0xffff | (0xf << 48) | (access << 40) | (flags << 52)
}

/// The descriptors, in selector order.
pub fn entries() -> [u64; GDT_ENTRIES] {
    let base = system::TSS;
    let limit = u64::from(TSS_LIMIT);
    // 64-bit TSS descriptor, type 0x9 (available), present.
    let tss_low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    let tss_high = base >> 32;
    [
        0,
        segment(0x9b, 0xa), // kernel code: present, DPL0, exec/read, L=1, G=1
        segment(0x93, 0xc), // kernel data: present, DPL0, read/write, D/B=1, G=1
        segment(0xfb, 0xa), // user code: present, DPL3, exec/read, L=1, G=1
        segment(0xf3, 0xc), // user data: present, DPL3, read/write, D/B=1, G=1
        tss_low,
        tss_high,
    ]
}

/// The TSS; it exists for RSP0, the exception stack. The I/O map base
/// points past the limit: there is no I/O permission bitmap, so with IOPL=0
/// every port access from CPL3 raises #GP.
fn tss() -> [u8; TSS_SIZE] {
    let mut tss = [0u8; TSS_SIZE];
    tss[4..12].copy_from_slice(&system::EXCEPTION_STACK_TOP.to_le_bytes());
    tss[102..104].copy_from_slice(&(TSS_SIZE as u16).to_le_bytes());
    tss
}

/// Writes the GDT and the TSS.
pub fn write(mem: &GuestMemoryMmap) -> Result<(), ArchError> {
    let bytes: Vec<u8> = entries().iter().flat_map(|e| e.to_le_bytes()).collect();
    write_bytes(mem, system::GDT, &bytes)?;
    write_bytes(mem, system::TSS, &tss())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_architectural_encodings() {
        let e = entries();
        assert_eq!(e[1], 0x00af_9b00_0000_ffff);
        assert_eq!(e[2], 0x00cf_9300_0000_ffff);
        assert_eq!(e[3], 0x00af_fb00_0000_ffff);
        assert_eq!(e[4], 0x00cf_f300_0000_ffff);
        // TSS at 0x1080: base bits 0..23 at 16..39, type 0x89, limit 0x67.
        assert_eq!(e[5], 0x0000_8900_1080_0067);
        assert_eq!(e[6], 0);
    }
}
