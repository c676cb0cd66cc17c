//! Shared helpers for the vmm integration tests: a tiny ELF writer (so
//! tests can make exactly the malformed images they need) and the KVM
//! presence policy.
#![allow(dead_code)]

/// One PT_LOAD segment of a test image.
pub struct Seg {
    pub addr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
    pub flags: u32,
}

/// Builds a static x86-64 ELF64 executable with the given segments and
/// entry. Fields can be patched afterwards to make broken images.
pub fn elf(entry: u64, segs: &[Seg]) -> Vec<u8> {
    let phoff = 64u64;
    let mut data_off = phoff + 56 * segs.len() as u64;
    data_off = (data_off + 0xfff) & !0xfff;
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // little endian
    out[6] = 1; // version
    out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&phoff.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
    let mut off = data_off;
    let mut payload = Vec::new();
    for s in segs {
        let mut ph = Vec::new();
        ph.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph.extend_from_slice(&s.flags.to_le_bytes());
        ph.extend_from_slice(&off.to_le_bytes());
        ph.extend_from_slice(&s.addr.to_le_bytes());
        ph.extend_from_slice(&s.addr.to_le_bytes());
        ph.extend_from_slice(&(s.data.len() as u64).to_le_bytes());
        ph.extend_from_slice(&s.memsz.to_le_bytes());
        ph.extend_from_slice(&0x1000u64.to_le_bytes());
        out.extend_from_slice(&ph);
        payload.extend_from_slice(&s.data);
        off += s.data.len() as u64;
    }
    out.resize(data_off as usize, 0);
    out.extend_from_slice(&payload);
    out
}

/// An image whose only segment holds `code` at 0x100000, entry at its start.
pub fn code_image(code: &[u8]) -> Vec<u8> {
    elf(
        0x10_0000,
        &[Seg {
            addr: 0x10_0000,
            data: code.to_vec(),
            memsz: code.len() as u64,
            flags: 5, // R+X
        }],
    )
}

/// `mov eax, nr; movabs [DOORBELL], eax`
pub fn hypercall(nr: u32) -> Vec<u8> {
    let mut c = vec![0xb8];
    c.extend_from_slice(&nr.to_le_bytes());
    c.push(0xa3);
    c.extend_from_slice(&xos_abi::DOORBELL.to_le_bytes());
    c
}

/// `mov qword [addr32], imm32` (sign-extended) for a BootInfo field.
pub fn store(addr: u32, value: u32) -> Vec<u8> {
    let mut c = vec![0x48, 0xc7, 0x04, 0x25];
    c.extend_from_slice(&addr.to_le_bytes());
    c.extend_from_slice(&value.to_le_bytes());
    c
}

/// True when tests that need KVM should run. Without /dev/kvm they skip
/// loudly, unless XOS_REQUIRE_KVM=1 (CI), where a missing KVM fails.
pub fn kvm_available() -> bool {
    match vmm::kvm::probe() {
        Ok(()) => true,
        Err(e) => {
            if std::env::var("XOS_REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("XOS_REQUIRE_KVM=1 but KVM is unusable: {e}");
            }
            eprintln!(
                "\n!!! SKIPPING KVM TEST: {e} (set XOS_REQUIRE_KVM=1 to make this a failure)\n"
            );
            false
        }
    }
}
