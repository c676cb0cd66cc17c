//! Guest images: validation and loading of static x86-64 ELF executables.
//!
//! linux-loader copies the segments but checks little (not the class, not
//! the machine, not whether segments fit), so every image is validated here
//! first, once, when it is parsed; a [`Program`] is then known to be safe to
//! load into any guest memory large enough for it.

use linux_loader::elf;
use linux_loader::loader::{elf::Elf, KernelLoader};
use std::io::Cursor;
use std::ops::Range;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xos_abi::layout;

/// Size of an ELF64 file header.
const EHDR_SIZE: usize = 64;
/// Size of an ELF64 program header.
const PHDR_SIZE: usize = 56;
/// Largest image file accepted.
pub const MAX_IMAGE_SIZE: u64 = 1 << 30;
/// Largest number of program headers accepted.
const MAX_PHDRS: usize = 64;

/// What is wrong with an image. Messages say what to do about it; the caller
/// adds the file name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    /// Zero bytes.
    #[error("the file is empty; expected a static x86-64 ELF executable (build one with xos-cc)")]
    Empty,
    /// Shorter than an ELF header.
    #[error("the file is {0} bytes, shorter than an ELF64 header (64 bytes): truncated or not an ELF file")]
    TruncatedHeader(usize),
    /// No ELF magic.
    #[error("not an ELF file (it starts with {0:02x?}); expected a static x86-64 ELF executable")]
    NotElf([u8; 4]),
    /// 32-bit ELF.
    #[error("a 32-bit ELF (ELFCLASS32); xos images must be 64-bit x86-64 executables")]
    Elf32,
    /// Unknown ELF class.
    #[error("unknown ELF class {0}; xos images must be 64-bit x86-64 executables")]
    BadClass(u8),
    /// Big-endian ELF.
    #[error("a big-endian ELF; xos images must be little-endian x86-64 executables")]
    BigEndian,
    /// Not built for x86-64.
    #[error("built for {name} (e_machine {machine}); xos images must be built for x86-64")]
    WrongMachine {
        /// `e_machine`.
        machine: u16,
        /// A readable name for it.
        name: &'static str,
    },
    /// A shared object or position-independent executable.
    #[error("a shared object or position-independent executable (ET_DYN) has no fixed load address; link with -static -no-pie and guest-runtime/xos-guest.ld (xos-cc does this)")]
    SharedObject,
    /// Not an executable at all.
    #[error("ELF type {0} is not an executable (ET_EXEC)")]
    NotExecutable(u16),
    /// Program header table broken.
    #[error("the program header table is invalid: {0}")]
    BadProgramHeaders(String),
    /// Dynamically linked.
    #[error("the image is dynamically linked (it has a {0} segment); link it statically (-static, as xos-cc does)")]
    Dynamic(&'static str),
    /// No loadable segment.
    #[error("the image has no loadable (PT_LOAD) segment")]
    NoLoadSegments,
    /// A segment's file bytes go past the end of the file.
    #[error("segment {index} needs file bytes {start:#x}..{end:#x} but the file has only {file_len:#x} bytes: the file is truncated")]
    TruncatedSegment {
        /// Segment index in the program header table.
        index: usize,
        /// First file byte.
        start: u64,
        /// End of the file bytes.
        end: u64,
        /// File length.
        file_len: u64,
    },
    /// `p_filesz > p_memsz`.
    #[error("segment {index} has more file bytes ({filesz:#x}) than memory bytes ({memsz:#x})")]
    FileszExceedsMemsz {
        /// Segment index.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// Physical and virtual address differ (guest memory is identity mapped).
    #[error("segment {index} has p_paddr {paddr:#x} != p_vaddr {vaddr:#x}; xos guests are identity mapped, link without AT()")]
    AddressMismatch {
        /// Segment index.
        index: usize,
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_paddr`.
        paddr: u64,
    },
    /// Segment below the image base.
    #[error("segment {index} starts at {vaddr:#x}, below the image base {base:#x} reserved for the runtime; link with guest-runtime/xos-guest.ld", base = layout::IMAGE_BASE)]
    BelowImageBase {
        /// Segment index.
        index: usize,
        /// `p_vaddr`.
        vaddr: u64,
    },
    /// Segment size absurd or overflowing.
    #[error("segment {index} at {vaddr:#x} with size {memsz:#x} does not fit in the 16 GiB guest address space")]
    SegmentTooLarge {
        /// Segment index.
        index: usize,
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// Two segments overlap.
    #[error("segments {a} and {b} overlap in memory")]
    Overlap {
        /// First segment index.
        a: usize,
        /// Second segment index.
        b: usize,
    },
    /// A segment both writable and executable.
    #[error("segment {index} at {vaddr:#x} is both writable and executable; xos-vmm keeps code and data on separate pages (W^X), so code cannot be rewritten at run time: link with guest-runtime/xos-guest.ld (xos-cc and the Rust image build do)")]
    WritableAndExecutable {
        /// Segment index.
        index: usize,
        /// `p_vaddr`.
        vaddr: u64,
    },
    /// Two segments with different permissions share a page.
    #[error("segments {a} and {b} have different permissions (read, write, execute) but share the page at {page:#x}; xos-vmm maps each page with one set of permissions (W^X): link with guest-runtime/xos-guest.ld, which page-aligns each segment")]
    SharedPage {
        /// The first segment's index.
        a: usize,
        /// The second segment's index.
        b: usize,
        /// The shared page.
        page: u64,
    },
    /// The code holds the bytes of `VMFUNC`, refused where ICs are EPT
    /// views.
    #[error("the image's code holds the bytes of VMFUNC (0f 01 d4) at {first:#x} ({count} place(s) in all); in an EPT-view IC that instruction would switch views without the monitor's trampoline, so such images are refused there. The bytes may be part of another instruction or of data in the code segment: rebuild (another optimization level, or moving constants to .rodata) so that they disappear")]
    Vmfunc {
        /// The first guest address holding them.
        first: u64,
        /// How many places hold them.
        count: usize,
    },
    /// Entry point not in an executable segment.
    #[error("the entry point {0:#x} is not inside an executable segment")]
    EntryOutside(u64),
    /// The file is larger than we accept.
    #[error("the file is {0} bytes; images larger than 1 GiB are not accepted")]
    TooLarge(u64),
    /// The image does not fit the configured memory.
    #[error("segment {index} ends at {end:#x}, but with {mem_mib} MiB of guest memory the image must end below {limit:#x} (the heap, arguments and I/O buffers sit above it); raise --mem")]
    DoesNotFit {
        /// Segment index.
        index: usize,
        /// End of the segment.
        end: u64,
        /// Highest allowed end.
        limit: u64,
        /// Guest memory in MiB.
        mem_mib: u64,
    },
    /// linux-loader failed after validation passed (should not happen).
    #[error("loading the image into guest memory failed: {0}")]
    Load(String),
}

/// One loadable segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest address (identity mapped).
    pub addr: u64,
    /// Bytes taken from the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is `.bss`, zeroed).
    pub memsz: u64,
    /// Offset of the file bytes.
    pub offset: u64,
    /// Executable.
    pub exec: bool,
    /// Writable (never together with `exec`).
    pub writable: bool,
}

impl Segment {
    /// A code segment of `len` bytes at `addr` (for hand-assembled code).
    pub fn code(addr: u64, len: usize) -> Segment {
        Segment {
            addr,
            filesz: len as u64,
            memsz: len as u64,
            offset: 0,
            exec: true,
            writable: false,
        }
    }

    /// Guest addresses the segment occupies.
    pub fn range(&self) -> Range<u64> {
        self.addr..self.addr + self.memsz
    }
}

/// A validated image, ready to be loaded into any guest memory where it
/// fits. Cheap to share: the bytes are reference counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    bytes: std::sync::Arc<[u8]>,
    entry: u64,
    segments: Vec<Segment>,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn machine_name(m: u16) -> &'static str {
    match m {
        3 => "i386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        40 => "ARM",
        62 => "x86-64",
        183 => "AArch64",
        243 => "RISC-V",
        258 => "LoongArch",
        _ => "another architecture",
    }
}

impl Program {
    /// Validates `bytes` as an xos guest image.
    pub fn parse(bytes: impl Into<std::sync::Arc<[u8]>>) -> Result<Program, ImageError> {
        let bytes: std::sync::Arc<[u8]> = bytes.into();
        let b = &bytes[..];
        if b.is_empty() {
            return Err(ImageError::Empty);
        }
        if b.len() as u64 > MAX_IMAGE_SIZE {
            return Err(ImageError::TooLarge(b.len() as u64));
        }
        if b.len() >= 4 && b[..4] != [0x7f, b'E', b'L', b'F'] {
            return Err(ImageError::NotElf([b[0], b[1], b[2], b[3]]));
        }
        if b.len() < EHDR_SIZE {
            if b.len() < 4 {
                let mut head = [0u8; 4];
                head[..b.len()].copy_from_slice(b);
                if head[..b.len()] != [0x7f, b'E', b'L', b'F'][..b.len()] {
                    return Err(ImageError::NotElf(head));
                }
            }
            return Err(ImageError::TruncatedHeader(b.len()));
        }
        match b[elf::EI_CLASS] {
            elf::ELFCLASS64 => {}
            1 => return Err(ImageError::Elf32),
            c => return Err(ImageError::BadClass(c)),
        }
        if b[elf::EI_DATA] != 1 {
            return Err(ImageError::BigEndian);
        }
        let e_type = u16_at(b, 16);
        let machine = u16_at(b, 18);
        if machine != elf::EM_X86_64 {
            return Err(ImageError::WrongMachine {
                machine,
                name: machine_name(machine),
            });
        }
        match e_type {
            elf::ET_EXEC => {}
            elf::ET_DYN => return Err(ImageError::SharedObject),
            t => return Err(ImageError::NotExecutable(t)),
        }
        let entry = u64_at(b, 24);
        let phoff = u64_at(b, 32);
        let phentsize = u16_at(b, 54) as usize;
        let phnum = u16_at(b, 56) as usize;
        if phentsize != PHDR_SIZE {
            return Err(ImageError::BadProgramHeaders(format!(
                "entry size {phentsize}, expected {PHDR_SIZE}"
            )));
        }
        if phnum == 0 {
            return Err(ImageError::NoLoadSegments);
        }
        if phnum > MAX_PHDRS {
            return Err(ImageError::BadProgramHeaders(format!(
                "{phnum} entries, at most {MAX_PHDRS} are accepted"
            )));
        }
        let table_end = phoff
            .checked_add((phnum * PHDR_SIZE) as u64)
            .filter(|&end| end <= b.len() as u64)
            .ok_or_else(|| {
                ImageError::BadProgramHeaders(format!(
                    "{phnum} entries at offset {phoff:#x} go past the end of the {}-byte file (truncated?)",
                    b.len()
                ))
            })?;
        let table = &b[phoff as usize..table_end as usize];

        let mut segments = Vec::new();
        for (index, ph) in table.chunks_exact(PHDR_SIZE).enumerate() {
            let p_type = u32_at(ph, 0);
            match p_type {
                elf::PT_INTERP => return Err(ImageError::Dynamic("PT_INTERP")),
                elf::PT_DYNAMIC => return Err(ImageError::Dynamic("PT_DYNAMIC")),
                elf::PT_LOAD => {}
                _ => continue,
            }
            let flags = u32_at(ph, 4);
            let offset = u64_at(ph, 8);
            let vaddr = u64_at(ph, 16);
            let paddr = u64_at(ph, 24);
            let filesz = u64_at(ph, 32);
            let memsz = u64_at(ph, 40);
            // Checked before anything else: a segment with file bytes but
            // no memory size would otherwise escape the checks below, and
            // linux-loader copies every segment with file bytes.
            if filesz > memsz {
                return Err(ImageError::FileszExceedsMemsz {
                    index,
                    filesz,
                    memsz,
                });
            }
            if memsz == 0 {
                continue;
            }
            let file_end = offset.checked_add(filesz);
            if file_end.is_none_or(|end| end > b.len() as u64) {
                return Err(ImageError::TruncatedSegment {
                    index,
                    start: offset,
                    end: file_end.unwrap_or(u64::MAX),
                    file_len: b.len() as u64,
                });
            }
            if vaddr != paddr {
                return Err(ImageError::AddressMismatch {
                    index,
                    vaddr,
                    paddr,
                });
            }
            if vaddr < layout::IMAGE_BASE {
                return Err(ImageError::BelowImageBase { index, vaddr });
            }
            if vaddr
                .checked_add(memsz)
                .is_none_or(|end| end > layout::MAX_MEM)
            {
                return Err(ImageError::SegmentTooLarge {
                    index,
                    vaddr,
                    memsz,
                });
            }
            segments.push((
                index,
                Segment {
                    addr: vaddr,
                    filesz,
                    memsz,
                    offset,
                    exec: flags & elf::PF_X != 0,
                    writable: flags & elf::PF_W != 0,
                },
            ));
            if flags & elf::PF_X != 0 && flags & elf::PF_W != 0 {
                return Err(ImageError::WritableAndExecutable { index, vaddr });
            }
        }
        if segments.is_empty() {
            return Err(ImageError::NoLoadSegments);
        }
        for (i, (ia, a)) in segments.iter().enumerate() {
            for (ib, s) in &segments[i + 1..] {
                if a.range().start < s.range().end && s.range().start < a.range().end {
                    return Err(ImageError::Overlap { a: *ia, b: *ib });
                }
            }
        }
        // Page permissions come from segments: two segments with different
        // permissions cannot share a page.
        let pages = |s: &Segment| {
            s.addr & !(layout::PAGE_SIZE - 1)..s.range().end.next_multiple_of(layout::PAGE_SIZE)
        };
        for (i, (ia, a)) in segments.iter().enumerate() {
            for (ib, b) in &segments[i + 1..] {
                let (pa, pb) = (pages(a), pages(b));
                if (a.exec, a.writable) != (b.exec, b.writable)
                    && pa.start < pb.end
                    && pb.start < pa.end
                {
                    return Err(ImageError::SharedPage {
                        a: *ia,
                        b: *ib,
                        page: pa.start.max(pb.start),
                    });
                }
            }
        }
        if !segments
            .iter()
            .any(|(_, s)| s.exec && s.range().contains(&entry))
        {
            return Err(ImageError::EntryOutside(entry));
        }
        Ok(Program {
            bytes,
            entry,
            segments: segments.into_iter().map(|(_, s)| s).collect(),
        })
    }

    /// The image file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The entry point.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// The loadable segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Guest addresses where the executable bytes hold the encoding of
    /// `VMFUNC` (`0f 01 d4`), at any byte offset (x86 code can be entered
    /// mid-instruction). An image with EPT views that hold any could switch
    /// views without the monitor's trampoline.
    pub fn vmfunc_sites(&self) -> Vec<u64> {
        const VMFUNC: [u8; 3] = [0x0f, 0x01, 0xd4];
        let mut sites = Vec::new();
        for s in self.segments.iter().filter(|s| s.exec) {
            // Validated: the file bytes lie inside the file.
            let Some(code) = self
                .bytes
                .get(s.offset as usize..(s.offset + s.filesz) as usize)
            else {
                continue;
            };
            sites.extend(
                code.windows(VMFUNC.len())
                    .enumerate()
                    .filter(|(_, w)| *w == VMFUNC)
                    .map(|(i, _)| s.addr + i as u64),
            );
        }
        // Across two executable segments that touch with no zero byte in
        // between (zeros break the sequence).
        let mut exec: Vec<&Segment> = self.segments.iter().filter(|s| s.exec).collect();
        exec.sort_by_key(|s| s.addr);
        for pair in exec.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.addr + a.memsz != b.addr || a.filesz != a.memsz {
                continue;
            }
            let tail = &self.bytes[(a.offset + a.filesz).saturating_sub(2.min(a.filesz)) as usize
                ..(a.offset + a.filesz) as usize];
            let head = &self.bytes[b.offset as usize..(b.offset + b.filesz.min(2)) as usize];
            let joined: Vec<u8> = tail.iter().chain(head).copied().collect();
            let start = b.addr - tail.len() as u64;
            for (i, w) in joined.windows(VMFUNC.len()).enumerate() {
                if w == VMFUNC {
                    sites.push(start + i as u64);
                }
            }
        }
        sites.sort_unstable();
        sites.dedup();
        sites
    }

    /// Writes the file bytes of the read-only segments (code, read-only
    /// data) into `mem` again and zeroes the rest of them: what an
    /// execution flow carried from another IC holds there is replaced by
    /// the image's own.
    pub fn reload_read_only(&self, mem: &GuestMemoryMmap) -> Result<(), ImageError> {
        for s in self.segments.iter().filter(|s| !s.writable) {
            let bytes = self
                .bytes
                .get(s.offset as usize..(s.offset + s.filesz) as usize)
                .ok_or_else(|| ImageError::Load("a segment outside the file".into()))?;
            mem.write_slice(bytes, GuestAddress(s.addr))
                .map_err(|e| ImageError::Load(format!("restoring code at {:#x}: {e}", s.addr)))?;
            zero(mem, s.addr + s.filesz, s.memsz - s.filesz)?;
        }
        Ok(())
    }

    /// Refuses an image whose code holds the bytes of `VMFUNC` (see
    /// [`Program::vmfunc_sites`]).
    pub fn refuse_vmfunc(&self) -> Result<(), ImageError> {
        let sites = self.vmfunc_sites();
        match sites.first() {
            Some(&first) => Err(ImageError::Vmfunc {
                first,
                count: sites.len(),
            }),
            None => Ok(()),
        }
    }

    /// First address above the image.
    pub fn end(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.range().end)
            .max()
            .unwrap_or(layout::IMAGE_BASE)
    }

    /// Checks that the image ends at or below `limit` in a guest of
    /// `mem_size` bytes.
    pub fn check_fits(&self, limit: u64, mem_size: u64) -> Result<(), ImageError> {
        let segments = self.segments.iter().enumerate();
        for (index, s) in segments {
            if s.range().end > limit {
                return Err(ImageError::DoesNotFit {
                    index,
                    end: s.range().end,
                    limit,
                    mem_mib: mem_size >> 20,
                });
            }
        }
        Ok(())
    }

    /// Copies the segments into `mem` with linux-loader and zeroes `.bss`.
    /// `fresh` says the memory is known to be all zeroes (a new anonymous
    /// mapping), so `.bss` needs no writes.
    pub fn load(&self, mem: &GuestMemoryMmap, fresh: bool) -> Result<(), ImageError> {
        let mut cursor = Cursor::new(&self.bytes[..]);
        // An explicit offset of 0 loads at p_paddr like `None` would, and
        // makes linux-loader skip parsing PT_NOTE for Xen PVH entry points,
        // which xos images do not use (a malformed note would otherwise
        // fail every load of an image that passed validation).
        let result = Elf::load(
            mem,
            Some(GuestAddress(0)),
            &mut cursor,
            Some(GuestAddress(layout::IMAGE_BASE)),
        )
        .map_err(|e| ImageError::Load(e.to_string()))?;
        if result.kernel_load.0 != self.entry {
            return Err(ImageError::Load(format!(
                "linux-loader reports entry {:#x}, the header says {:#x}",
                result.kernel_load.0, self.entry
            )));
        }
        if !fresh {
            for s in &self.segments {
                let bss = s.memsz - s.filesz;
                if bss > 0 {
                    zero(mem, s.addr + s.filesz, bss)?;
                }
            }
        }
        Ok(())
    }
}

fn zero(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<(), ImageError> {
    const CHUNK: usize = 64 << 10;
    let zeros = [0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        mem.write_slice(&zeros[..n], GuestAddress(addr + done))
            .map_err(|e| ImageError::Load(format!("zeroing .bss at {:#x}: {e}", addr + done)))?;
        done += n as u64;
    }
    Ok(())
}
