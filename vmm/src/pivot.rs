//! The state of an execution flow stopped at a safe point, in the form every
//! kind of IC can take it from and continue it in (the `mutate` pivot).
//!
//! Every kind of IC lays the guest out at the same addresses (`xos_abi::
//! layout`), so an EF's state is its user memory and its registers, nothing
//! else: the monitor's own pages (system area, resume page) are rebuilt by
//! whatever runs it next. A safe point is the `SAFE_POINT` hypercall, a
//! function call: by the C calling convention no vector register is live
//! across it, so none is carried; the general registers are.
//!
//! The encoded form crosses into a process IC's helper, so decoding
//! validates everything: every region must be whole pages of guest user
//! memory.

use crate::exit::GuestRegs;
use crate::loader::Program;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xos_abi::layout;

const MAGIC: u64 = u64::from_le_bytes(*b"XOSPIVT1");
const PAGE: u64 = layout::PAGE_SIZE;

/// Errors capturing, decoding or restoring an EF's state.
#[derive(Debug, thiserror::Error)]
pub enum PivotError {
    /// Guest memory could not be read or written.
    #[error("cannot {what} guest memory at {addr:#x}: {source}")]
    Memory {
        /// "read" or "write".
        what: &'static str,
        /// Address.
        addr: u64,
        /// What vm-memory reported.
        source: vm_memory::GuestMemoryError,
    },
    /// The encoded state is not usable.
    #[error("the execution flow's saved state is invalid: {0}")]
    Invalid(String),
}

/// An execution flow's state at a safe point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EfState {
    /// Guest memory size (the next IC gets the same).
    pub mem_size: u64,
    /// Non-zero pages of guest user memory: address and contents (page
    /// multiples, page aligned).
    pub regions: Vec<(u64, Vec<u8>)>,
    /// General registers, RIP just past the `SAFE_POINT` doorbell write.
    pub regs: GuestRegs,
    /// The image the flow runs, whose code and read-only data an IC
    /// restoring this state copies again and protects (W^X:
    /// [`EfState::protect_code`]). Not captured: the IC that continues
    /// the flow sets it from its spec ([`EfState::with_code`]).
    pub code: Option<Program>,
}

/// The user-memory ranges an EF owns: the BootInfo page, and everything
/// from the stack up (stack, image, heap, buffers).
fn user_ranges(mem_size: u64) -> [(u64, u64); 2] {
    [
        (layout::BOOT_INFO, layout::BOOT_INFO + PAGE),
        (layout::STACK_BOTTOM, mem_size),
    ]
}

fn in_user_memory(addr: u64, len: u64, mem_size: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    addr.is_multiple_of(PAGE)
        && len.is_multiple_of(PAGE)
        && len > 0
        && user_ranges(mem_size)
            .iter()
            .any(|&(start, stop)| addr >= start && end <= stop)
}

impl EfState {
    /// Captures the EF in `mem` (`mem_size` bytes) with registers `regs`.
    /// Runs of non-zero pages become one region each.
    pub fn capture(
        mem: &GuestMemoryMmap,
        mem_size: u64,
        regs: GuestRegs,
    ) -> Result<EfState, PivotError> {
        let mut regions: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut page = vec![0u8; PAGE as usize];
        for (start, stop) in user_ranges(mem_size) {
            // Pages the host never backed are zero: skip them without
            // touching them (reading 16 MiB page by page costs ~7 ms of
            // page faults, most guests touch a few hundred KiB).
            let resident = resident_pages(mem, start, stop);
            let mut addr = start;
            while addr < stop {
                let index = ((addr - start) / PAGE) as usize;
                if resident
                    .as_ref()
                    .is_some_and(|r| r.get(index) == Some(&false))
                {
                    addr += PAGE;
                    continue;
                }
                mem.read_slice(&mut page, GuestAddress(addr))
                    .map_err(|source| PivotError::Memory {
                        what: "read",
                        addr,
                        source,
                    })?;
                if page.iter().any(|&b| b != 0) {
                    match regions.last_mut() {
                        Some((at, bytes)) if *at + bytes.len() as u64 == addr => {
                            bytes.extend_from_slice(&page)
                        }
                        _ => regions.push((addr, page.clone())),
                    }
                }
                addr += PAGE;
            }
        }
        Ok(EfState {
            mem_size,
            regions,
            regs,
            code: None,
        })
    }

    /// Writes the EF's memory into `mem` (fresh guest memory of the same
    /// size with the monitor's pages in place) and sets the result of its
    /// pending `SAFE_POINT` to 1: "you continue in another IC".
    pub fn restore_into(&self, mem: &GuestMemoryMmap) -> Result<(), PivotError> {
        self.validate()?;
        for (addr, bytes) in &self.regions {
            mem.write_slice(bytes, GuestAddress(*addr))
                .map_err(|source| PivotError::Memory {
                    what: "write",
                    addr: *addr,
                    source,
                })?;
        }
        // The new IC says itself which window and devices it has.
        let clear = |offset: usize, len: usize| {
            let at = crate::layout::boot_field(offset);
            mem.write_slice(&vec![0u8; len], at)
                .map_err(|source| PivotError::Memory {
                    what: "write",
                    addr: at.0,
                    source,
                })
        };
        clear(
            xos_abi::offsets::WINDOW,
            core::mem::size_of::<xos_abi::WindowInfo>(),
        )?;
        clear(xos_abi::offsets::DEVICES, 8)?;
        let ret = GuestAddress(crate::layout::boot_field(crate::layout::HYPERCALL_RET_OFFSET).0);
        mem.write_obj(1i64, ret)
            .map_err(|source| PivotError::Memory {
                what: "write",
                addr: ret.0,
                source,
            })
    }

    /// The state continuing `program` (see [`EfState::code`]).
    pub fn with_code(mut self, program: &Program) -> EfState {
        self.code = Some(program.clone());
        self
    }

    /// Copies the image's code and read-only data again over the restored
    /// memory (what the flow wrote there in a host IC, which can change
    /// its own page permissions, is not carried: code is always the
    /// image's own) and, in a VM's memory, gives those pages their
    /// permissions (code read-only and executable; everything else stays
    /// not executable). Call after [`EfState::restore_into`].
    pub fn protect_code(&self, mem: &GuestMemoryMmap) -> Result<(), PivotError> {
        let Some(program) = &self.code else {
            return Err(PivotError::Invalid(
                "the state names no image, so its code cannot be restored (set it with EfState::with_code)".into(),
            ));
        };
        program
            .reload_read_only(mem)
            .map_err(|e| PivotError::Invalid(format!("its code cannot be restored: {e}")))?;
        if vm_memory::GuestMemoryBackend::address_in_range(
            mem,
            GuestAddress(crate::arch::system::PT_LOW),
        ) {
            crate::arch::paging::protect_image(mem, program.segments())
                .map_err(|e| PivotError::Invalid(format!("its code cannot be mapped: {e}")))?;
        }
        Ok(())
    }

    /// Checks the memory size and that every region is user memory.
    pub fn validate(&self) -> Result<(), PivotError> {
        crate::memory::checked_size(self.mem_size)
            .ok()
            .filter(|&s| s == self.mem_size)
            .ok_or_else(|| PivotError::Invalid(format!("memory size {}", self.mem_size)))?;
        for (addr, bytes) in &self.regions {
            if !in_user_memory(*addr, bytes.len() as u64, self.mem_size) {
                return Err(PivotError::Invalid(format!(
                    "a region {addr:#x}+{:#x} outside guest user memory",
                    bytes.len()
                )));
            }
        }
        Ok(())
    }

    /// The state as bytes (for a process IC's helper).
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self.regions.iter().map(|(_, b)| 16 + b.len()).sum();
        let mut out = Vec::with_capacity(8 * 24 + size);
        let mut put = |v: u64| out.extend_from_slice(&v.to_le_bytes());
        put(MAGIC);
        put(self.mem_size);
        put(self.regs.rip);
        put(self.regs.rsp);
        put(self.regs.rflags);
        for g in self.regs.gpr {
            put(g);
        }
        put(self.regions.len() as u64);
        for (addr, bytes) in &self.regions {
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    /// Parses and validates [`EfState::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<EfState, PivotError> {
        let mut r = Reader { bytes, at: 0 };
        if r.u64()? != MAGIC {
            return Err(PivotError::Invalid("not a saved execution flow".into()));
        }
        let mem_size = r.u64()?;
        let mut regs = GuestRegs {
            rip: r.u64()?,
            rsp: r.u64()?,
            rflags: r.u64()?,
            cpl: 3,
            ..GuestRegs::default()
        };
        for g in regs.gpr.iter_mut() {
            *g = r.u64()?;
        }
        let count = r.u64()?;
        let mut regions = Vec::new();
        for _ in 0..count {
            let addr = r.u64()?;
            let len = r.u64()?;
            if !in_user_memory(addr, len, mem_size) {
                return Err(PivotError::Invalid(format!(
                    "a region {addr:#x}+{len:#x} outside guest user memory"
                )));
            }
            regions.push((addr, r.take(len as usize)?.to_vec()));
        }
        if r.at != bytes.len() {
            return Err(PivotError::Invalid(format!(
                "{} bytes after the last region",
                bytes.len() - r.at
            )));
        }
        let state = EfState {
            mem_size,
            regions,
            regs,
            code: None,
        };
        state.validate()?;
        Ok(state)
    }
}

/// Which pages of guest range `[start, stop)` the host has backed
/// (`mincore`), or `None` when that cannot be told (then every page is
/// read).
fn resident_pages(mem: &GuestMemoryMmap, start: u64, stop: u64) -> Option<Vec<bool>> {
    use vm_memory::GuestMemoryBackend;
    let len = usize::try_from(stop.checked_sub(start)?).ok()?;
    // The whole range must be one contiguous host mapping.
    let slice = mem.get_slice(GuestAddress(start), len).ok()?;
    let host = slice.ptr_guard().as_ptr();
    let mut vec = vec![0u8; len.div_ceil(PAGE as usize)];
    // SAFETY: `host` starts a mapping of `len` bytes (the slice above),
    // page aligned because guest pages are; mincore only fills `vec`, one
    // byte per page.
    let r = unsafe { libc::mincore(host.cast_mut().cast(), len, vec.as_mut_ptr()) };
    (r == 0).then(|| vec.iter().map(|b| b & 1 != 0).collect())
}

/// Reads the encoded form front to back.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PivotError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| PivotError::Invalid(format!("truncated at byte {}", self.at)))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u64(&mut self) -> Result<u64, PivotError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

/// RFLAGS as a resumed EF may have them: its arithmetic flags and DF, bit 1
/// set, nothing else (no trap flag, no interrupt or I/O privilege bits).
pub fn user_rflags(rflags: u64) -> u64 {
    (rflags & 0xcd5) | 0x2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> EfState {
        EfState {
            mem_size: 16 << 20,
            regions: vec![
                (layout::BOOT_INFO, vec![1; PAGE as usize]),
                (layout::IMAGE_BASE, vec![2; 2 * PAGE as usize]),
            ],
            regs: GuestRegs {
                rip: 0x10_1234,
                rsp: 0xf_f000,
                rflags: 0x246,
                gpr: [7; 15],
                cpl: 3,
                ..GuestRegs::default()
            },
            code: None,
        }
    }

    #[test]
    fn states_round_trip_and_bad_ones_are_refused() {
        let s = state();
        assert_eq!(EfState::decode(&s.encode()).unwrap(), s);
        let bytes = s.encode();
        assert!(EfState::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = s.clone();
        bad.regions.push((0x1000, vec![0; PAGE as usize])); // the system area
        assert!(EfState::decode(&bad.encode()).is_err());
        let mut bad = s.clone();
        bad.regions.push((16 << 20, vec![0; PAGE as usize])); // past memory
        assert!(EfState::decode(&bad.encode()).is_err());
        let mut bad = s;
        bad.regions
            .push((layout::IMAGE_BASE + 1, vec![0; PAGE as usize]));
        assert!(EfState::decode(&bad.encode()).is_err());
        assert!(EfState::decode(b"garbage").is_err());
    }

    #[test]
    fn rflags_keep_only_user_flags() {
        assert_eq!(user_rflags(0xffff_ffff), 0xcd7);
        assert_eq!(user_rflags(0), 0x2);
    }
}
