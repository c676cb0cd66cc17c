//! Guests that run natively in a host process or thread (not in a VM)
//! leave through a write to the doorbell page, which has no access: the
//! SIGSEGV it raises carries the hypercall. This module decodes that write.

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
