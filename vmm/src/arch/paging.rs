//! Identity-mapped page tables.
//!
//! The first 2 MiB use 4 KiB pages so that the null page and the stack guard
//! are unmapped and the system area is supervisor-only; the rest of guest
//! memory is mapped with 2 MiB user pages. User memory is writable and not
//! executable (EFER.NXE is on) except the image's pages, which follow its
//! segments once [`protect_image`] ran: code read-only and executable,
//! read-only data read-only (W^X: a guest cannot write code it then runs). Beyond guest memory only the
//! hypercall doorbell is mapped (a 2 MiB user page at `xos_abi::DOORBELL`
//! with no memory behind it, so writes there exit as MMIO); any other
//! stray access faults with the address in CR2.

use super::{system, write_bytes, ArchError};
use crate::loader::Segment;
use vm_memory::{Bytes, GuestMemoryMmap};
use xos_abi::layout;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const LARGE: u64 = 1 << 7;
/// Execute-disable (needs EFER.NXE, which `cpu::EFER` sets).
const NX: u64 = 1 << 63;
/// A user data page: readable, writable, not executable.
const USER_DATA: u64 = PRESENT | WRITABLE | USER | NX;

const TABLE: u64 = PRESENT | WRITABLE | USER;
const GIB: u64 = 1 << 30;
const LARGE_PAGE: u64 = 2 << 20;

/// How one 4 KiB page of the first 2 MiB is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowPage {
    /// Not present: any access faults.
    Unmapped,
    /// Present, writable, CPL0 only.
    Supervisor,
    /// Present, writable, user accessible.
    User,
    /// Present, user readable and executable, not writable (CR0.WP makes
    /// that hold at CPL0 too): the monitor's resume trampoline.
    UserReadOnly,
}

/// The mapping of the 4 KiB page at `addr` (`addr < 2 MiB`).
pub fn low_page(addr: u64) -> LowPage {
    match addr {
        a if a < layout::SYSTEM_START => LowPage::Unmapped,
        a if a < layout::SYSTEM_END => LowPage::Supervisor,
        a if a < layout::BOOT_INFO + layout::PAGE_SIZE => LowPage::User,
        a if a < layout::RESUME_PAGE + layout::PAGE_SIZE => LowPage::UserReadOnly,
        a if a < layout::STACK_BOTTOM => LowPage::Unmapped,
        _ => LowPage::User,
    }
}

/// Writes PML4, PDPT, the low page table and the page directories for
/// `mem_size` bytes (a multiple of 2 MiB).
pub fn write(mem: &GuestMemoryMmap, mem_size: u64) -> Result<(), ArchError> {
    let pds = mem_size.div_ceil(GIB);
    if pds > system::MAX_PDS {
        return Err(ArchError::TooMuchMemory(mem_size));
    }

    let mut pml4 = [0u64; 512];
    pml4[0] = system::PDPT | TABLE;
    write_table(mem, system::PML4, &pml4)?;

    let mut pdpt = [0u64; 512];
    for (i, entry) in pdpt.iter_mut().take(pds as usize).enumerate() {
        *entry = (system::PD_BASE + i as u64 * layout::PAGE_SIZE) | TABLE;
    }
    pdpt[(xos_abi::DOORBELL / GIB) as usize] = system::PD_DOORBELL | TABLE;
    write_table(mem, system::PDPT, &pdpt)?;

    let mut doorbell = [0u64; 512];
    doorbell[((xos_abi::DOORBELL % GIB) / LARGE_PAGE) as usize] =
        xos_abi::DOORBELL | USER_DATA | LARGE;
    write_table(mem, system::PD_DOORBELL, &doorbell)?;

    let mut pt = [0u64; 512];
    for (i, entry) in pt.iter_mut().enumerate() {
        let addr = i as u64 * layout::PAGE_SIZE;
        *entry = match low_page(addr) {
            LowPage::Unmapped => 0,
            LowPage::Supervisor => addr | PRESENT | WRITABLE,
            LowPage::User => addr | USER_DATA,
            LowPage::UserReadOnly => addr | PRESENT | USER,
        };
    }
    write_table(mem, system::PT_LOW, &pt)?;

    for pd_index in 0..pds {
        let mut pd = [0u64; 512];
        for (i, entry) in pd.iter_mut().enumerate() {
            let addr = pd_index * GIB + i as u64 * LARGE_PAGE;
            if addr >= mem_size {
                break;
            }
            *entry = if addr == 0 {
                system::PT_LOW | TABLE
            } else {
                addr | USER_DATA | LARGE
            };
        }
        write_table(mem, system::PD_BASE + pd_index * layout::PAGE_SIZE, &pd)?;
    }
    Ok(())
}

/// Maps the two pages of a VM with EPT views (`xos_abi::view`): the
/// trampoline (user read/execute) and the view's control block (user
/// read/write). Other VMs leave them unmapped.
pub fn map_view_pages(mem: &GuestMemoryMmap) -> Result<(), ArchError> {
    let entry = |page: u64| system::PT_LOW + (page / layout::PAGE_SIZE) * 8;
    let trampoline = layout::VIEW_TRAMPOLINE | PRESENT | USER;
    let control = layout::VIEW_CONTROL | USER_DATA;
    write_bytes(
        mem,
        entry(layout::VIEW_TRAMPOLINE),
        &trampoline.to_le_bytes(),
    )?;
    write_bytes(mem, entry(layout::VIEW_CONTROL), &control.to_le_bytes())
}

/// Maps the channel window: `size` bytes (a multiple of 4 KiB, at most
/// `xos_abi::MAX_WINDOW_SIZE`) at `xos_abi::WINDOW`, user readable and
/// writable, with 4 KiB pages so that nothing past its end is mapped. The
/// memory behind it is a separate KVM memory slot (see `crate::window`).
pub fn write_window(mem: &GuestMemoryMmap, size: u64) -> Result<(), ArchError> {
    write_window_at(mem, size, xos_abi::WINDOW)
}

/// Maps `size` bytes at `xos_abi::WINDOW` like [`write_window`], backed by
/// guest-physical memory from `gpa` on (page aligned): the message area of
/// a pair of EPT views lives elsewhere in guest-physical memory, and only
/// the two views' page tables reach it.
pub fn write_window_at(mem: &GuestMemoryMmap, size: u64, gpa: u64) -> Result<(), ArchError> {
    if !gpa.is_multiple_of(layout::PAGE_SIZE) {
        return Err(ArchError::BadWindow(size));
    }
    if size == 0 || size > xos_abi::MAX_WINDOW_SIZE || !size.is_multiple_of(layout::PAGE_SIZE) {
        return Err(ArchError::BadWindow(size));
    }
    let pdpt_entry = system::PDPT + (xos_abi::WINDOW / GIB) * 8;
    write_bytes(mem, pdpt_entry, &(system::PD_WINDOW | TABLE).to_le_bytes())?;
    let mut pd = [0u64; 512];
    pd[((xos_abi::WINDOW % GIB) / LARGE_PAGE) as usize] = system::PT_WINDOW | TABLE;
    write_table(mem, system::PD_WINDOW, &pd)?;
    let mut pt = [0u64; 512];
    for (i, entry) in pt
        .iter_mut()
        .take((size / layout::PAGE_SIZE) as usize)
        .enumerate()
    {
        *entry = (gpa + i as u64 * layout::PAGE_SIZE) | USER_DATA;
    }
    write_table(mem, system::PT_WINDOW, &pt)
}

/// Maps the virtio device page: the 2 MiB large page at
/// `xos_abi::VIRTIO_MMIO` for user access, no memory behind it, so every
/// access there exits as MMIO (like the doorbell).
pub fn write_virtio_page(mem: &GuestMemoryMmap) -> Result<(), ArchError> {
    let pdpt_entry = system::PDPT + (xos_abi::VIRTIO_MMIO / GIB) * 8;
    write_bytes(mem, pdpt_entry, &(system::PD_VIRTIO | TABLE).to_le_bytes())?;
    let mut pd = [0u64; 512];
    pd[((xos_abi::VIRTIO_MMIO % GIB) / LARGE_PAGE) as usize] =
        xos_abi::VIRTIO_MMIO | USER_DATA | LARGE;
    write_table(mem, system::PD_VIRTIO, &pd)
}

/// Code and read-only data must end at or below this address (8 MiB): up
/// to there the system area has page tables for 4 KiB permissions.
pub const PROTECTED_LIMIT: u64 = LARGE_PAGE * (1 + system::IMAGE_PTS);

/// Gives the image's pages its segments' permissions: code read-only and
/// executable, read-only data read-only and not executable; writable
/// segments keep the default (writable, not executable). Call after
/// [`write`] on memory the image is loaded into; segments must be W^X and
/// not share pages (the loader checks both). Pages above 2 MiB that need
/// other than the default get 4 KiB tables from `system::PT_IMAGE`.
pub fn protect_image(mem: &GuestMemoryMmap, segments: &[Segment]) -> Result<(), ArchError> {
    let limit = PROTECTED_LIMIT;
    // Tables an earlier call took stay taken.
    let mut next_pt = 0;
    for region in 1..=system::IMAGE_PTS {
        let mut b = [0u8; 8];
        let at = system::PD_BASE + region * 8;
        if mem.read_slice(&mut b, vm_memory::GuestAddress(at)).is_ok() {
            let e = u64::from_le_bytes(b);
            let table = e & 0x000f_ffff_ffff_f000;
            if e & PRESENT != 0
                && e & LARGE == 0
                && (system::PT_IMAGE..system::PT_IMAGE + system::IMAGE_PTS * layout::PAGE_SIZE)
                    .contains(&table)
            {
                next_pt = next_pt.max((table - system::PT_IMAGE) / layout::PAGE_SIZE + 1);
            }
        }
    }
    for s in segments.iter().filter(|s| !s.writable) {
        let end = s.range().end.next_multiple_of(layout::PAGE_SIZE);
        if end > limit {
            return Err(ArchError::ProtectedTooHigh { end, limit });
        }
        let flags = if s.exec {
            PRESENT | USER
        } else {
            PRESENT | USER | NX
        };
        let mut page = s.addr & !(layout::PAGE_SIZE - 1);
        while page < end {
            let table = if page < LARGE_PAGE {
                system::PT_LOW
            } else {
                large_page_table(mem, page, &mut next_pt)?
            };
            let entry = table + ((page % LARGE_PAGE) / layout::PAGE_SIZE) * 8;
            write_bytes(mem, entry, &(page | flags).to_le_bytes())?;
            page += layout::PAGE_SIZE;
        }
    }
    Ok(())
}

/// The 4 KiB page table of the 2 MiB region holding `page` (above the
/// first 2 MiB, below the limit `protect_image` checked): the one already
/// there, or a new one from `system::PT_IMAGE` with the large page's
/// mapping split into 4 KiB user data pages.
fn large_page_table(mem: &GuestMemoryMmap, page: u64, next_pt: &mut u64) -> Result<u64, ArchError> {
    let region = page & !(LARGE_PAGE - 1);
    // Below 1 GiB: the first page directory.
    let pd_entry = system::PD_BASE + (region / LARGE_PAGE) * 8;
    let mut bytes = [0u8; 8];
    mem.read_slice(&mut bytes, vm_memory::GuestAddress(pd_entry))
        .map_err(|source| ArchError::Write {
            addr: pd_entry,
            source,
        })?;
    let current = u64::from_le_bytes(bytes);
    if current & PRESENT != 0 && current & LARGE == 0 {
        return Ok(current & 0x000f_ffff_ffff_f000);
    }
    let table = system::PT_IMAGE + *next_pt * layout::PAGE_SIZE;
    *next_pt += 1;
    let mut pt = [0u64; 512];
    if current & PRESENT != 0 {
        for (i, entry) in pt.iter_mut().enumerate() {
            *entry = (region + i as u64 * layout::PAGE_SIZE) | USER_DATA;
        }
    }
    write_table(mem, table, &pt)?;
    write_bytes(mem, pd_entry, &(table | TABLE).to_le_bytes())?;
    Ok(table)
}

fn write_table(mem: &GuestMemoryMmap, addr: u64, entries: &[u64; 512]) -> Result<(), ArchError> {
    let mut bytes = [0u8; 4096];
    for (chunk, e) in bytes.chunks_exact_mut(8).zip(entries) {
        chunk.copy_from_slice(&e.to_le_bytes());
    }
    write_bytes(mem, addr, &bytes)
}

/// True when guest code at CPL3 can read and write every byte of
/// `[addr, addr+len)` in a guest with `mem_size` bytes of memory. The
/// monitor applies the same rule to hypercall pointers, so a guest cannot
/// make the host read or write anything the guest itself could not.
pub fn user_accessible(addr: u64, len: u64, mem_size: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    if end > mem_size {
        return false;
    }
    if len == 0 {
        return true;
    }
    let low_end = LARGE_PAGE.min(end);
    let mut page = addr & !(layout::PAGE_SIZE - 1);
    while page < low_end {
        if low_page(page) != LowPage::User {
            return false;
        }
        page += layout::PAGE_SIZE;
    }
    true
}

/// True when guest code at CPL3 may write every byte of `[addr, addr+len)`
/// in a VM whose page tables are in `mem`: [`user_accessible`], and every
/// page's mapping is writable (not the image's code or read-only data).
/// The monitor writes through its own mapping, where the guest's page
/// tables do not apply, so it checks them before writing where a guest
/// pointer says. For memory without the system area (a host IC's), only
/// [`user_accessible`] is checked: host ICs check their image's ranges.
pub fn user_writable(mem: &GuestMemoryMmap, addr: u64, len: u64, mem_size: u64) -> bool {
    if !user_accessible(addr, len, mem_size) {
        return false;
    }
    let read = |at: u64| -> Option<u64> {
        let mut b = [0u8; 8];
        mem.read_slice(&mut b, vm_memory::GuestAddress(at)).ok()?;
        Some(u64::from_le_bytes(b))
    };
    if read(system::PT_LOW).is_none() || len == 0 {
        return true;
    }
    let mut page = addr & !(layout::PAGE_SIZE - 1);
    while page < addr + len {
        let entry = if page < LARGE_PAGE {
            read(system::PT_LOW + (page / layout::PAGE_SIZE) * 8)
        } else {
            let pd = read(
                system::PD_BASE
                    + (page / GIB) * layout::PAGE_SIZE
                    + ((page % GIB) / LARGE_PAGE) * 8,
            );
            match pd {
                Some(e) if e & LARGE != 0 => Some(e),
                Some(e) if e & PRESENT != 0 => read(
                    (e & 0x000f_ffff_ffff_f000) + ((page % LARGE_PAGE) / layout::PAGE_SIZE) * 8,
                ),
                other => other,
            }
        };
        match entry {
            Some(e) if e & (PRESENT | WRITABLE | USER) == PRESENT | WRITABLE | USER => {}
            _ => return false,
        }
        page += layout::PAGE_SIZE;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_pages_follow_the_layout() {
        assert_eq!(low_page(0), LowPage::Unmapped);
        assert_eq!(low_page(system::GDT), LowPage::Supervisor);
        assert_eq!(low_page(system::PML4), LowPage::Supervisor);
        assert_eq!(low_page(0x1f000), LowPage::Supervisor);
        assert_eq!(low_page(layout::BOOT_INFO), LowPage::User);
        assert_eq!(low_page(layout::RESUME_PAGE), LowPage::UserReadOnly);
        assert_eq!(low_page(layout::RESUME_PAGE + 0x1000), LowPage::Unmapped);
        assert_eq!(low_page(layout::VIEW_CONTROL), LowPage::Unmapped);
        assert_eq!(low_page(layout::STACK_GUARD), LowPage::Unmapped);
        assert_eq!(low_page(layout::STACK_BOTTOM), LowPage::User);
        assert_eq!(low_page(layout::IMAGE_BASE), LowPage::User);
    }

    #[test]
    fn user_ranges_exclude_system_guards_and_beyond_memory() {
        let mem = 16 << 20;
        assert!(user_accessible(layout::IMAGE_BASE, 100, mem));
        assert!(user_accessible(layout::BOOT_INFO, 4096, mem));
        assert!(!user_accessible(layout::BOOT_INFO, 4097, mem));
        assert!(!user_accessible(layout::RESUME_PAGE, 8, mem));
        assert!(!user_accessible(0, 1, mem));
        assert!(!user_accessible(system::PML4, 8, mem));
        assert!(!user_accessible(layout::STACK_GUARD + 8, 8, mem));
        assert!(!user_accessible(mem - 4, 8, mem));
        assert!(!user_accessible(u64::MAX - 2, 8, mem));
        assert!(user_accessible(mem - 8, 8, mem));
    }
}
