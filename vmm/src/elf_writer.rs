//! Writes minimal static x86-64 ELF executables from raw segments.
//!
//! Tests and benchmarks use it to run hand-assembled guests, and to make
//! exactly the malformed images they need (build a valid one, then patch a
//! field).

/// One loadable segment to write.
#[derive(Clone, Debug)]
pub struct SegmentSpec {
    /// Guest address (virtual = physical).
    pub addr: u64,
    /// File bytes.
    pub data: Vec<u8>,
    /// Memory size (>= `data.len()` for a valid image; the rest is `.bss`).
    pub memsz: u64,
    /// `p_flags`: 1 = X, 2 = W, 4 = R.
    pub flags: u32,
}

/// Offset of the program header table in written images.
pub const PHDR_OFFSET: usize = 64;

/// Builds an ELF64 `ET_EXEC` for x86-64 with `segments`, entry `entry`.
pub fn write_elf(entry: u64, segments: &[SegmentSpec]) -> Vec<u8> {
    let data_start = (PHDR_OFFSET + 56 * segments.len()).next_multiple_of(0x1000);
    let mut out = vec![0u8; PHDR_OFFSET];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // little endian
    out[6] = 1; // EV_CURRENT
    out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&(PHDR_OFFSET as u64).to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    let mut offset = data_start as u64;
    for s in segments {
        out.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        out.extend_from_slice(&s.flags.to_le_bytes());
        for field in [offset, s.addr, s.addr, s.data.len() as u64, s.memsz, 0x1000] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        offset += s.data.len() as u64;
    }
    out.resize(data_start, 0);
    for s in segments {
        out.extend_from_slice(&s.data);
    }
    out
}

/// An image whose only segment holds `code` at the image base, entry at its
/// first byte.
pub fn code_image(code: &[u8]) -> Vec<u8> {
    write_elf(
        xos_abi::layout::IMAGE_BASE,
        &[SegmentSpec {
            addr: xos_abi::layout::IMAGE_BASE,
            data: code.to_vec(),
            memsz: code.len() as u64,
            flags: 5,
        }],
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn written_images_parse() {
        let p = crate::Program::parse(super::code_image(&[0xf4])).unwrap();
        assert_eq!(p.entry(), 0x10_0000);
    }
}
