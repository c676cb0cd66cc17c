//! Shared helpers for the vmm integration tests: a tiny ELF writer (so
//! tests can make exactly the malformed images they need) and the KVM
//! presence policy.
#![allow(dead_code)]

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
