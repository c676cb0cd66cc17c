//! Snapshots of a stopped guest (`ic_dump` / `ic_restore`): its registers,
//! FPU/SSE state, the MSRs that matter, and every guest memory page that is
//! not all zeroes.
//!
//! The file format (version 1, all integers little endian; the payload
//! holds the general registers, the special registers field by field, the
//! 4 KiB XSAVE area, the MSRs, then the page addresses and contents):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `"XOSSNAP1"` |
//! | 4 | format version (1) |
//! | 4 | guest ABI version the guest was started with |
//! | 8 | guest memory size |
//! | 8 | number of memory pages stored |
//! | 8 | payload length |
//! | 4 | CRC-32 of the payload |
//! | 4 | CRC-32 of the 44 header bytes before it |
//! | ... | payload: registers, special registers, FPU, MSRs, page addresses, page contents |
//!
//! Every field is validated when a file is read: a truncated, corrupted,
//! foreign or other-version file is refused with a message saying which,
//! before anything is restored.

use crate::arch::cpu::Privilege;
use crate::machine::{Machine, MachineError};
use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs, kvm_xsave};
use vm_memory::{Bytes, GuestAddress};
use xos_abi::layout::PAGE_SIZE;

/// File magic.
pub const MAGIC: [u8; 8] = *b"XOSSNAP1";
/// Format version written and accepted. 2: guests are W^X (EFER.NXE,
/// page tables with NX data pages); version-1 guests ran without.
pub const FORMAT_VERSION: u32 = 2;
/// Size of the header.
pub const HEADER_SIZE: usize = 48;

/// MSRs saved with a guest: the ones a CPL3 guest can influence or that
/// syscall-capable guest kernels set. FS/GS bases travel in the segments.
pub const SAVED_MSRS: [u32; 6] = [
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SYSCALL_MASK
    0xc000_0102, // KERNEL_GS_BASE
    0x0000_0277, // PAT
];

/// What is wrong with a snapshot, or why taking or restoring one failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not a snapshot file.
    #[error("not an xos-vmm snapshot (the file starts with {0:02x?}, expected \"XOSSNAP1\")")]
    Foreign([u8; 8]),
    /// Shorter than its header or its payload says.
    #[error("the snapshot is truncated: {need} bytes needed, {have} present")]
    Truncated {
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// Another format version.
    #[error("snapshot format version {0}; this xos-vmm reads version {FORMAT_VERSION} only (take the snapshot again with this version)")]
    Version(u32),
    /// Another guest ABI version.
    #[error("the snapshot's guest uses ABI version {0}; this xos-vmm speaks version {abi}", abi = xos_abi::ABI_VERSION)]
    AbiVersion(u32),
    /// The header's checksum does not match.
    #[error("the snapshot header is corrupted (checksum mismatch)")]
    CorruptHeader,
    /// The payload's checksum does not match.
    #[error("the snapshot is corrupted (payload checksum mismatch)")]
    CorruptPayload,
    /// The payload parsed but a value is impossible.
    #[error("the snapshot is invalid: {0}")]
    Invalid(String),
    /// Extra bytes after the payload.
    #[error("the snapshot has {0} unexpected bytes after its payload")]
    TrailingBytes(u64),
    /// Reading or writing the VM's state failed.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// A KVM ioctl failed while saving or restoring.
    #[error("{op} failed: {source}")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// errno from the kernel.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be read or written.
    #[error("guest memory at {addr:#x}: {source}")]
    Memory {
        /// Address.
        addr: u64,
        /// What vm-memory reported.
        source: vm_memory::GuestMemoryError,
    },
}

/// A stopped guest's complete state.
#[derive(Clone)]
pub struct Snapshot {
    /// Guest ABI version the guest was started with.
    pub abi_version: u32,
    /// Guest memory size.
    pub mem_size: u64,
    /// General registers.
    pub regs: kvm_regs,
    /// Special registers.
    pub sregs: kvm_sregs,
    /// x87/SSE state: the 4 KiB standard-format XSAVE area (the guests
    /// have no other XSAVE features).
    pub xsave: Box<[u32; 1024]>,
    /// Saved MSRs: (index, value).
    pub msrs: Vec<(u32, u64)>,
    /// Non-zero memory pages: (guest address, contents), sorted by address.
    pub pages: Vec<(u64, Box<[u8]>)>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("mem_size", &self.mem_size)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("pages", &self.pages.len())
            .finish()
    }
}

impl Snapshot {
    /// Captures the state of `machine`, which must be stopped (not inside
    /// `KVM_RUN`). Pages that are all zeroes are not stored.
    pub fn capture(machine: &Machine) -> Result<Snapshot, SnapshotError> {
        let (regs, sregs) = machine.kvm_registers()?;
        let xsave = Box::new(machine.xsave()?.region);
        let msrs = machine.msrs(&SAVED_MSRS)?;
        let mut pages = Vec::new();
        let mut page = vec![0u8; PAGE_SIZE as usize];
        let mut addr = 0;
        while addr < machine.mem_size() {
            machine
                .memory()
                .read_slice(&mut page, GuestAddress(addr))
                .map_err(|source| SnapshotError::Memory { addr, source })?;
            if page.iter().any(|&b| b != 0) {
                pages.push((addr, page.clone().into_boxed_slice()));
            }
            addr += PAGE_SIZE;
        }
        Ok(Snapshot {
            abi_version: xos_abi::ABI_VERSION,
            mem_size: machine.mem_size(),
            regs,
            sregs,
            xsave,
            msrs,
            pages,
        })
    }

    /// A fresh machine in exactly the captured state.
    pub fn restore(&self) -> Result<Machine, SnapshotError> {
        let privilege = if self.sregs.cs.dpl == 3 {
            Privilege::User
        } else {
            Privilege::Kernel
        };
        let mut machine = Machine::new(self.mem_size, privilege)?;
        self.restore_into(&mut machine)?;
        Ok(machine)
    }

    /// Writes the captured state into `machine`, whose memory must be all
    /// zeroes apart from what the snapshot overwrites (a fresh machine).
    pub fn restore_into(&self, machine: &mut Machine) -> Result<(), SnapshotError> {
        if machine.mem_size() != self.mem_size {
            return Err(SnapshotError::Invalid(format!(
                "the machine has {} bytes of memory, the snapshot {}",
                machine.mem_size(),
                self.mem_size
            )));
        }
        for (addr, data) in &self.pages {
            machine
                .memory()
                .write_slice(data, GuestAddress(*addr))
                .map_err(|source| SnapshotError::Memory {
                    addr: *addr,
                    source,
                })?;
        }
        let xsave = kvm_xsave {
            region: *self.xsave,
            ..Default::default()
        };
        machine.set_state(&self.regs, &self.sregs, &xsave, &self.msrs)?;
        Ok(())
    }

    /// The file form.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Encoder::default();
        encode_regs(&mut p, &self.regs);
        encode_sregs(&mut p, &self.sregs);
        for v in self.xsave.iter() {
            p.u32(*v);
        }
        p.u32(self.msrs.len() as u32);
        for (index, value) in &self.msrs {
            p.u32(*index);
            p.u64(*value);
        }
        for (addr, _) in &self.pages {
            p.u64(*addr);
        }
        for (_, data) in &self.pages {
            p.bytes(data);
        }
        let payload = p.0;

        let mut h = Encoder::default();
        h.bytes(&MAGIC);
        h.u32(FORMAT_VERSION);
        h.u32(self.abi_version);
        h.u64(self.mem_size);
        h.u64(self.pages.len() as u64);
        h.u64(payload.len() as u64);
        h.u32(crc32fast::hash(&payload));
        let header_crc = crc32fast::hash(&h.0);
        h.u32(header_crc);
        debug_assert_eq!(h.0.len(), HEADER_SIZE);
        let mut out = h.0;
        out.extend_from_slice(&payload);
        out
    }

    /// Parses and validates a snapshot file.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        if bytes.len() >= 8 && bytes[..8] != MAGIC {
            let mut head = [0u8; 8];
            head.copy_from_slice(&bytes[..8]);
            return Err(SnapshotError::Foreign(head));
        }
        if bytes.len() < HEADER_SIZE {
            if bytes.len() < 8 && !MAGIC.starts_with(bytes) {
                let mut head = [0u8; 8];
                head[..bytes.len()].copy_from_slice(bytes);
                return Err(SnapshotError::Foreign(head));
            }
            return Err(SnapshotError::Truncated {
                need: HEADER_SIZE as u64,
                have: bytes.len() as u64,
            });
        }
        let mut h = Decoder::new(&bytes[8..HEADER_SIZE]);
        let version = h.u32()?;
        let abi_version = h.u32()?;
        let mem_size = h.u64()?;
        let page_count = h.u64()?;
        let payload_len = h.u64()?;
        let payload_crc = h.u32()?;
        let header_crc = h.u32()?;
        if crc32fast::hash(&bytes[..HEADER_SIZE - 4]) != header_crc {
            return Err(SnapshotError::CorruptHeader);
        }
        if version != FORMAT_VERSION {
            return Err(SnapshotError::Version(version));
        }
        if abi_version != xos_abi::ABI_VERSION {
            return Err(SnapshotError::AbiVersion(abi_version));
        }
        let have = (bytes.len() - HEADER_SIZE) as u64;
        if have < payload_len {
            return Err(SnapshotError::Truncated {
                need: HEADER_SIZE as u64 + payload_len,
                have: bytes.len() as u64,
            });
        }
        if have > payload_len {
            return Err(SnapshotError::TrailingBytes(have - payload_len));
        }
        let payload = &bytes[HEADER_SIZE..];
        if crc32fast::hash(payload) != payload_crc {
            return Err(SnapshotError::CorruptPayload);
        }
        crate::memory::checked_size(mem_size)
            .ok()
            .filter(|&s| s == mem_size)
            .ok_or_else(|| SnapshotError::Invalid(format!("guest memory size {mem_size}")))?;
        if page_count > mem_size / PAGE_SIZE {
            return Err(SnapshotError::Invalid(format!(
                "{page_count} pages in {mem_size} bytes of memory"
            )));
        }

        let mut p = Decoder::new(payload);
        let regs = decode_regs(&mut p)?;
        let sregs = decode_sregs(&mut p)?;
        // Long mode with NX on, exactly as the monitor sets it: a file
        // cannot turn W^X off.
        if sregs.efer != crate::arch::cpu::EFER {
            return Err(SnapshotError::Invalid(format!(
                "EFER {:#x} (xos guests run with {:#x}: long mode, no-execute enabled)",
                sregs.efer,
                crate::arch::cpu::EFER
            )));
        }
        let mut xsave = kvm_xsave::default();
        for v in &mut xsave.region {
            *v = p.u32()?;
        }
        let legacy = crate::machine::xsave_is_legacy(&xsave);
        let xsave = Box::new(xsave.region);
        if !legacy {
            return Err(SnapshotError::Invalid(
                "the x87/SSE state uses XSAVE features these guests do not have".into(),
            ));
        }
        let msr_count = p.u32()?;
        if msr_count as usize > SAVED_MSRS.len() {
            return Err(SnapshotError::Invalid(format!("{msr_count} MSRs")));
        }
        let mut msrs = Vec::with_capacity(msr_count as usize);
        for _ in 0..msr_count {
            let index = p.u32()?;
            if !SAVED_MSRS.contains(&index) {
                return Err(SnapshotError::Invalid(format!(
                    "MSR {index:#x} is not restorable"
                )));
            }
            msrs.push((index, p.u64()?));
        }
        let mut addrs = Vec::with_capacity(page_count as usize);
        for _ in 0..page_count {
            let addr = p.u64()?;
            let ordered = addrs.last().is_none_or(|&last| addr > last);
            if addr % PAGE_SIZE != 0 || addr >= mem_size || !ordered {
                return Err(SnapshotError::Invalid(format!(
                    "page address {addr:#x} (pages must be aligned, ascending, inside memory)"
                )));
            }
            addrs.push(addr);
        }
        let mut pages = Vec::with_capacity(addrs.len());
        for addr in addrs {
            pages.push((addr, p.take(PAGE_SIZE as usize)?.into()));
        }
        if p.remaining() != 0 {
            return Err(SnapshotError::Invalid(format!(
                "{} bytes left over in the payload",
                p.remaining()
            )));
        }
        Ok(Snapshot {
            abi_version,
            mem_size,
            regs,
            sregs,
            xsave,
            msrs,
            pages,
        })
    }
}

#[derive(Default)]
struct Encoder(Vec<u8>);

impl Encoder {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn new(data: &'a [u8]) -> Self {
        Decoder { data, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(SnapshotError::Invalid(format!(
                "the payload ends inside a field at offset {}",
                self.pos
            )));
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
}

fn regs_array(r: &kvm_regs) -> [u64; 18] {
    [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ]
}

fn encode_regs(e: &mut Encoder, r: &kvm_regs) {
    for v in regs_array(r) {
        e.u64(v);
    }
}

fn decode_regs(d: &mut Decoder<'_>) -> Result<kvm_regs, SnapshotError> {
    let mut v = [0u64; 18];
    for x in &mut v {
        *x = d.u64()?;
    }
    Ok(kvm_regs {
        rax: v[0],
        rbx: v[1],
        rcx: v[2],
        rdx: v[3],
        rsi: v[4],
        rdi: v[5],
        rsp: v[6],
        rbp: v[7],
        r8: v[8],
        r9: v[9],
        r10: v[10],
        r11: v[11],
        r12: v[12],
        r13: v[13],
        r14: v[14],
        r15: v[15],
        rip: v[16],
        rflags: v[17],
    })
}

fn encode_segment(e: &mut Encoder, s: &kvm_segment) {
    e.u64(s.base);
    e.u32(s.limit);
    e.u16(s.selector);
    for b in [
        s.type_, s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl, s.unusable,
    ] {
        e.u8(b);
    }
}

fn decode_segment(d: &mut Decoder<'_>) -> Result<kvm_segment, SnapshotError> {
    Ok(kvm_segment {
        base: d.u64()?,
        limit: d.u32()?,
        selector: d.u16()?,
        type_: d.u8()?,
        present: d.u8()?,
        dpl: d.u8()?,
        db: d.u8()?,
        s: d.u8()?,
        l: d.u8()?,
        g: d.u8()?,
        avl: d.u8()?,
        unusable: d.u8()?,
        padding: 0,
    })
}

fn encode_sregs(e: &mut Encoder, s: &kvm_sregs) {
    for seg in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt] {
        encode_segment(e, seg);
    }
    for t in [&s.gdt, &s.idt] {
        e.u64(t.base);
        e.u16(t.limit);
    }
    for v in [s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer, s.apic_base] {
        e.u64(v);
    }
    for v in s.interrupt_bitmap {
        e.u64(v);
    }
}

fn decode_sregs(d: &mut Decoder<'_>) -> Result<kvm_sregs, SnapshotError> {
    let mut segs = [kvm_segment::default(); 8];
    for s in &mut segs {
        *s = decode_segment(d)?;
    }
    let mut tables = [kvm_dtable::default(); 2];
    for t in &mut tables {
        t.base = d.u64()?;
        t.limit = d.u16()?;
    }
    let mut cr = [0u64; 7];
    for c in &mut cr {
        *c = d.u64()?;
    }
    let mut bitmap = [0u64; 4];
    for b in &mut bitmap {
        *b = d.u64()?;
    }
    Ok(kvm_sregs {
        cs: segs[0],
        ds: segs[1],
        es: segs[2],
        fs: segs[3],
        gs: segs[4],
        ss: segs[5],
        tr: segs[6],
        ldt: segs[7],
        gdt: tables[0],
        idt: tables[1],
        cr0: cr[0],
        cr2: cr[1],
        cr3: cr[2],
        cr4: cr[3],
        cr8: cr[4],
        efer: cr[5],
        apic_base: cr[6],
        interrupt_bitmap: bitmap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let mut xsave = Box::new([0u32; 1024]);
        xsave[6] = 0x1f80; // MXCSR
        xsave[52] = 7; // xmm3
        xsave[128] = 0x2; // XSTATE_BV: SSE
        Snapshot {
            abi_version: xos_abi::ABI_VERSION,
            mem_size: 4 << 20,
            regs: kvm_regs {
                rip: 0x10_0123,
                rax: 42,
                rflags: 2,
                ..Default::default()
            },
            sregs: crate::arch::cpu::initial_sregs(&kvm_sregs::default(), Privilege::User),
            xsave,
            msrs: vec![(0xc000_0102, 0x1234)],
            pages: vec![
                (0x1000, vec![1u8; 4096].into()),
                (0x10_0000, vec![0x90u8; 4096].into()),
            ],
        }
    }

    #[test]
    fn a_snapshot_survives_encoding() {
        let s = sample();
        let d = Snapshot::decode(&s.encode()).unwrap();
        assert_eq!(d.regs, s.regs);
        assert_eq!(d.sregs, s.sregs);
        assert_eq!(d.xsave, s.xsave);
        assert_eq!(d.msrs, s.msrs);
        assert_eq!(d.pages, s.pages);
        assert_eq!(d.mem_size, s.mem_size);
    }

    #[test]
    fn damaged_files_are_refused_with_the_reason() {
        let good = sample().encode();
        let err = |b: &[u8]| Snapshot::decode(b).unwrap_err().to_string();
        assert!(err(b"\x7fELF\x02\x01\x01\0more").contains("not an xos-vmm snapshot"));
        assert!(err(b"").contains("truncated"));
        assert!(err(&good[..30]).contains("truncated"));
        assert!(err(&good[..good.len() - 1]).contains("truncated"));
        let mut extra = good.clone();
        extra.push(0);
        assert!(err(&extra).contains("unexpected bytes"));
        let mut flipped = good.clone();
        flipped[HEADER_SIZE + 100] ^= 1;
        assert!(err(&flipped).contains("payload checksum"));
        let mut header = good.clone();
        header[20] ^= 1;
        assert!(err(&header).contains("header is corrupted"));
        // Another version (1: before W^X), with a correct header checksum.
        let mut v1 = good.clone();
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32fast::hash(&v1[..HEADER_SIZE - 4]);
        v1[HEADER_SIZE - 4..HEADER_SIZE].copy_from_slice(&crc.to_le_bytes());
        assert!(err(&v1).contains("format version 1"));
    }

    #[test]
    fn impossible_contents_are_refused_even_with_valid_checksums() {
        let mut s = sample();
        s.pages[1].0 = 0x1_0000_0000; // beyond memory
        assert!(Snapshot::decode(&s.encode())
            .unwrap_err()
            .to_string()
            .contains("inside memory"));
        let mut s = sample();
        s.pages.swap(0, 1); // not ascending
        assert!(Snapshot::decode(&s.encode()).is_err());
        let mut s = sample();
        s.msrs = vec![(0x10, 0)]; // TSC: not restorable
        assert!(Snapshot::decode(&s.encode())
            .unwrap_err()
            .to_string()
            .contains("not restorable"));
        let mut s = sample();
        s.sregs.efer = 0x500; // no-execute off: W^X gone
        assert!(Snapshot::decode(&s.encode())
            .unwrap_err()
            .to_string()
            .contains("no-execute"));
        let mut s = sample();
        s.xsave[128] = 0x7; // AVX state
        assert!(Snapshot::decode(&s.encode())
            .unwrap_err()
            .to_string()
            .contains("XSAVE features"));
    }
}
