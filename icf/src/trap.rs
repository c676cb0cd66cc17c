//! What guests that run natively in a host process or thread (not in a VM)
//! need: their memory at its fixed addresses, and the decoding of their
//! hypercalls, which are writes to the doorbell page; that page has no
//! access, so the SIGSEGV a write raises carries the hypercall.

use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
use xos_abi::{layout, DOORBELL};

/// Lowest address of the guest mapping (`vm.mmap_min_addr` is 64 KiB).
pub const MAP_BASE: u64 = 0x1_0000;

/// `libc` indices of the general registers in `ucontext_t`, in the
/// instruction encoding's order (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi,
/// r8..r15).
pub const GREGS: [usize; 16] = [
    libc::REG_RAX as usize,
    libc::REG_RCX as usize,
    libc::REG_RDX as usize,
    libc::REG_RBX as usize,
    libc::REG_RSP as usize,
    libc::REG_RBP as usize,
    libc::REG_RSI as usize,
    libc::REG_RDI as usize,
    libc::REG_R8 as usize,
    libc::REG_R9 as usize,
    libc::REG_R10 as usize,
    libc::REG_R11 as usize,
    libc::REG_R12 as usize,
    libc::REG_R13 as usize,
    libc::REG_R14 as usize,
    libc::REG_R15 as usize,
];

/// Signal-context indices of [`vmm::GuestRegs::gpr`] (rax, rbx, rcx, rdx,
/// rsi, rdi, rbp, r8..r15).
const GPR_SLOTS: [usize; 15] = [
    libc::REG_RAX as usize,
    libc::REG_RBX as usize,
    libc::REG_RCX as usize,
    libc::REG_RDX as usize,
    libc::REG_RSI as usize,
    libc::REG_RDI as usize,
    libc::REG_RBP as usize,
    libc::REG_R8 as usize,
    libc::REG_R9 as usize,
    libc::REG_R10 as usize,
    libc::REG_R11 as usize,
    libc::REG_R12 as usize,
    libc::REG_R13 as usize,
    libc::REG_R14 as usize,
    libc::REG_R15 as usize,
];

/// The guest's registers in a signal context (`cr2` = the fault address).
pub fn regs_from_context(gregs: &[libc::greg_t; 23], addr: u64) -> vmm::GuestRegs {
    let mut regs = vmm::GuestRegs {
        rip: gregs[libc::REG_RIP as usize] as u64,
        rsp: gregs[libc::REG_RSP as usize] as u64,
        rflags: gregs[libc::REG_EFL as usize] as u64,
        cr2: addr,
        cpl: 3,
        ..Default::default()
    };
    for (slot, i) in regs.gpr.iter_mut().zip(GPR_SLOTS) {
        *slot = gregs[i] as u64;
    }
    regs
}

/// Makes the signal context return into `regs` (an execution flow carried
/// over from another IC): the kernel's signal return loads them all.
pub fn load_into_context(gregs: &mut [libc::greg_t; 23], regs: &vmm::GuestRegs) {
    gregs[libc::REG_RIP as usize] = regs.rip as i64;
    gregs[libc::REG_RSP as usize] = regs.rsp as i64;
    gregs[libc::REG_EFL as usize] = vmm::pivot::user_rflags(regs.rflags) as i64;
    for (value, i) in regs.gpr.iter().zip(GPR_SLOTS) {
        gregs[i] = *value as i64;
    }
}

/// Decodes the doorbell write at the start of `code`: `mov dword [reg],
/// r32` (opcode 0x89, optional REX, ModRM with any addressing form) or
/// `movabs [moffs64], eax` (0xa3). Returns the source register (encoding
/// order) and the instruction's length.
pub fn decode_doorbell_write(code: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    let mut rex = 0u8;
    if let Some(&b) = code.first() {
        if (0x40..=0x4f).contains(&b) {
            rex = b;
            i = 1;
        }
    }
    match *code.get(i)? {
        0xa3 => Some((0, i + 1 + 8)),
        0x89 => {
            let modrm = *code.get(i + 1)?;
            let md = modrm >> 6;
            let reg = ((modrm >> 3) & 7) as usize + if rex & 4 != 0 { 8 } else { 0 };
            let rm = modrm & 7;
            let mut len = i + 2;
            if md == 3 {
                return None; // a register destination is not a memory write
            }
            if rm == 4 {
                let sib = *code.get(len)?;
                len += 1;
                if md == 0 && sib & 7 == 5 {
                    len += 4;
                }
            } else if md == 0 && rm == 5 {
                len += 4; // RIP-relative
            }
            len += match md {
                1 => 1,
                2 => 4,
                _ => 0,
            };
            Some((reg, len))
        }
        _ => None,
    }
}

/// Maps the guest layout at its fixed addresses in this process:
/// `[MAP_BASE, mem_size)` readable and writable but not executable (like
/// guest memory in a VM; [`protect_image`] then makes the image's code
/// executable), the stack guard and the doorbell page with no access. Fails if anything is mapped there already (another
/// guest of this process, say).
pub fn map_guest(mem_size: u64) -> Result<GuestMemoryMmap, String> {
    let len = (mem_size - MAP_BASE) as usize;
    let fixed = |addr: u64, len: usize, prot: i32| -> Result<(), String> {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping;
        // the result is checked to be exactly the requested address.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                prot,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_NORESERVE
                    | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == addr as *mut libc::c_void {
            Ok(())
        } else {
            Err(format!(
                "cannot map guest memory at {addr:#x}: {}",
                std::io::Error::last_os_error()
            ))
        }
    };
    fixed(MAP_BASE, len, libc::PROT_READ | libc::PROT_WRITE)?;
    if let Err(e) = fixed(DOORBELL, layout::PAGE_SIZE as usize, libc::PROT_NONE) {
        // SAFETY: unmaps the range mapped just above.
        unsafe { libc::munmap(MAP_BASE as *mut libc::c_void, len) };
        return Err(e);
    }
    // SAFETY: the guard page lies inside the mapping made above.
    unsafe {
        libc::mprotect(
            layout::STACK_GUARD as *mut libc::c_void,
            layout::PAGE_SIZE as usize,
            libc::PROT_NONE,
        )
    };
    // SAFETY: the range is mapped above and stays mapped until
    // `unmap_guest`, which callers run only after dropping the memory
    // object (the region does not own the mapping).
    let region = unsafe {
        MmapRegion::build_raw(
            MAP_BASE as *mut u8,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        )
    }
    .map_err(|e| e.to_string())?;
    let region =
        GuestRegionMmap::new(region, GuestAddress(MAP_BASE)).ok_or("guest memory region")?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| e.to_string())
}

/// Gives the image's pages in the mapping of [`map_guest`] its segments'
/// permissions, as a VM's page tables do (W^X): code read and execute,
/// read-only data read; writable segments stay read and write. Call once
/// the image or a carried-over state is in place.
pub fn protect_image(segments: &[vmm::Segment]) -> Result<(), String> {
    for s in segments.iter().filter(|s| !s.writable) {
        let start = s.addr & !(layout::PAGE_SIZE - 1);
        let end = s.range().end.next_multiple_of(layout::PAGE_SIZE);
        // The limit VMs have (their page tables for 4 KiB permissions),
        // so that a flow here can always move into a VM.
        let limit = vmm::arch::paging::PROTECTED_LIMIT;
        if end > limit {
            return Err(vmm::arch::ArchError::ProtectedTooHigh { end, limit }.to_string());
        }
        let prot = if s.exec {
            libc::PROT_READ | libc::PROT_EXEC
        } else {
            libc::PROT_READ
        };
        // SAFETY: the loader placed every segment inside guest memory
        // (at or above the image base), which `map_guest` mapped; this
        // only changes the permissions of those pages.
        let r = unsafe { libc::mprotect(start as *mut libc::c_void, (end - start) as usize, prot) };
        if r != 0 {
            return Err(format!(
                "cannot protect the image's pages {start:#x}..{end:#x}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Unmaps what [`map_guest`] mapped.
pub fn unmap_guest(mem_size: u64) {
    // SAFETY: unmaps exactly what `map_guest` mapped; nothing refers to it
    // any more.
    unsafe {
        libc::munmap(
            MAP_BASE as *mut libc::c_void,
            (mem_size - MAP_BASE) as usize,
        );
        libc::munmap(DOORBELL as *mut libc::c_void, layout::PAGE_SIZE as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::decode_doorbell_write as d;

    #[test]
    fn doorbell_writes_decode_with_their_lengths() {
        assert_eq!(d(&[0x89, 0x02]), Some((0, 2))); // mov [rdx], eax
        assert_eq!(d(&[0x89, 0x01]), Some((0, 2))); // mov [rcx], eax
        assert_eq!(d(&[0x41, 0x89, 0x00]), Some((0, 3))); // mov [r8], eax
        assert_eq!(d(&[0x44, 0x89, 0x00]), Some((8, 3))); // mov [rax], r8d
        assert_eq!(d(&[0x89, 0x42, 0x10]), Some((0, 3))); // mov [rdx+0x10], eax
        assert_eq!(d(&[0x89, 0x04, 0x24]), Some((0, 3))); // mov [rsp], eax (SIB)
        assert_eq!(d(&[0x89, 0x04, 0x25, 0, 0, 0, 0]), Some((0, 7))); // [abs32]
        let mut movabs = vec![0xa3];
        movabs.extend_from_slice(&xos_abi::DOORBELL.to_le_bytes());
        assert_eq!(d(&movabs), Some((0, 9)));
        assert_eq!(d(&[0x8b, 0x02]), None); // a load, not a store
        assert_eq!(d(&[0x89, 0xc0]), None); // register to register
    }
}
