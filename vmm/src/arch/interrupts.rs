//! The IDT and the exception stubs.
//!
//! Every vector goes to a tiny CPL0 stub that saves RAX and RDX on the
//! exception stack and reports its vector number on [`FAULT_PORT`]; the
//! monitor then reads the exception frame from guest memory. The stubs are
//! a handful of instructions because CPL0 code is emulated on the project's
//! KVM backend; they only run when the guest has already failed.

use super::{system, write_bytes, ArchError};
use vm_memory::GuestMemoryMmap;
use xos_abi::FAULT_PORT;

/// Bytes per stub.
pub const STUB_SIZE: u64 = 16;
/// Number of architecturally defined exception vectors (each gets a stub).
pub const EXCEPTION_VECTORS: u64 = 32;
/// Vector reported by the generic stub that serves vectors 32..255.
pub const GENERIC_VECTOR: u8 = 0xff;
/// Bytes of stub code (one stub per exception vector, then the generic one).
pub const STUBS_SIZE: u64 = (EXCEPTION_VECTORS + 1) * STUB_SIZE;

/// Bytes the stub pushed below the CPU's exception frame (RAX, then RDX).
pub const STUB_PUSHED: u64 = 16;

/// Machine code of one stub:
/// `push rax; push rdx; mov al, vector; mov dx, FAULT_PORT; out dx, al; jmp $`.
fn stub(vector: u8) -> [u8; STUB_SIZE as usize] {
    let port = FAULT_PORT.to_le_bytes();
    let mut code = [0x90u8; STUB_SIZE as usize]; // nop padding
    let body = [
        0x50, // push rax
        0x52, // push rdx
        0xb0, vector, // mov al, vector
        0x66, 0xba, port[0], port[1], // mov dx, FAULT_PORT
        0xee,    // out dx, al
        0xeb, 0xfe, // jmp $ (never resumed)
    ];
    code[..body.len()].copy_from_slice(&body);
    code
}

/// Address of the stub that serves `vector`.
pub fn stub_address(vector: u8) -> u64 {
    let index = if u64::from(vector) < EXCEPTION_VECTORS {
        u64::from(vector)
    } else {
        EXCEPTION_VECTORS
    };
    system::STUBS + index * STUB_SIZE
}

/// A 64-bit interrupt gate to `handler`, DPL0 (so `int n` from CPL3 raises
/// #GP instead of entering the handler).
fn gate(handler: u64) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&super::gdt::KERNEL_CS.to_le_bytes());
    g[4] = 0; // no IST
    g[5] = 0x8e; // present, DPL0, 64-bit interrupt gate
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

/// True for the vectors where the CPU pushes an error code.
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Writes the stubs and the IDT.
pub fn write(mem: &GuestMemoryMmap) -> Result<(), ArchError> {
    let mut stubs = Vec::with_capacity(((EXCEPTION_VECTORS + 1) * STUB_SIZE) as usize);
    for v in 0..EXCEPTION_VECTORS as u8 {
        stubs.extend_from_slice(&stub(v));
    }
    stubs.extend_from_slice(&stub(GENERIC_VECTOR));
    write_bytes(mem, system::STUBS, &stubs)?;

    let mut idt = Vec::with_capacity(256 * 16);
    for v in 0..=255u8 {
        idt.extend_from_slice(&gate(stub_address(v)));
    }
    write_bytes(mem, system::IDT, &idt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stubs_fit_and_gates_point_at_them() {
        assert_eq!(stub_address(0), system::STUBS);
        assert_eq!(stub_address(14), system::STUBS + 14 * 16);
        assert_eq!(stub_address(200), system::STUBS + 32 * 16);
        let g = gate(0x1234_5678_9abc);
        assert_eq!(&g[0..2], &[0xbc, 0x9a]);
        assert_eq!(&g[6..8], &[0x78, 0x56]);
        assert_eq!(&g[8..12], &[0x34, 0x12, 0, 0]);
        assert_eq!(stub(14)[3], 14);
        assert!(has_error_code(14) && !has_error_code(6));
    }
}
