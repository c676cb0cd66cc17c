//! Shared helpers for the vmm integration tests: a tiny ELF writer (so
//! tests can make exactly the malformed images they need) and the KVM
//! presence policy.
#![allow(dead_code)]

#[allow(unused_imports)] // each test binary uses a different part
pub use vmm::elf_writer::{code_image, SegmentSpec as Seg};

/// Builds a static x86-64 ELF64 executable with the given segments.
pub fn elf(entry: u64, segs: &[Seg]) -> Vec<u8> {
    vmm::elf_writer::write_elf(entry, segs)
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

/// Runs KVM tests, or skips them loudly (fails under `XOS_REQUIRE_KVM=1`).
pub fn kvm_available() -> bool {
    vmm::kvm::available_for_tests()
}
