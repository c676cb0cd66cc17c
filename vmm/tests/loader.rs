//! Every kind of bad image gets its own clear error (no KVM needed).
mod support;
use support::*;
use vmm::{ImageError, Program};

fn good() -> Vec<u8> {
    code_image(&[0xf4; 16])
}

fn err(bytes: Vec<u8>) -> ImageError {
    Program::parse(bytes).expect_err("image should be rejected")
}

#[test]
fn a_minimal_valid_image_parses() {
    let p = Program::parse(good()).unwrap();
    assert_eq!(p.entry(), 0x10_0000);
    assert_eq!(p.segments().len(), 1);
}

#[test]
fn empty_file() {
    assert_eq!(err(vec![]), ImageError::Empty);
    assert!(ImageError::Empty.to_string().contains("empty"));
}

#[test]
fn not_elf() {
    let e = err(b"#!/bin/sh\necho hi\n".to_vec());
    assert!(matches!(e, ImageError::NotElf(_)));
    assert!(e.to_string().starts_with("not an ELF file"), "{e}");
}

#[test]
fn truncated_header() {
    let mut b = good();
    b.truncate(40);
    assert_eq!(err(b), ImageError::TruncatedHeader(40));
    let mut tiny = good();
    tiny.truncate(2);
    assert_eq!(err(tiny), ImageError::TruncatedHeader(2));
}

#[test]
fn truncated_segment() {
    let mut b = good();
    b.truncate(b.len() - 4);
    let e = err(b);
    assert!(
        matches!(e, ImageError::TruncatedSegment { index: 0, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn truncated_program_header_table() {
    let mut b = good();
    b.truncate(64 + 20);
    let e = err(b);
    assert!(matches!(e, ImageError::BadProgramHeaders(_)), "{e:?}");
}

#[test]
fn elf32() {
    let mut b = good();
    b[4] = 1;
    let e = err(b);
    assert_eq!(e, ImageError::Elf32);
    assert!(e.to_string().contains("32-bit"));
}

#[test]
fn big_endian() {
    let mut b = good();
    b[5] = 2;
    assert_eq!(err(b), ImageError::BigEndian);
}

#[test]
fn wrong_machine() {
    let mut b = good();
    b[18..20].copy_from_slice(&183u16.to_le_bytes());
    let e = err(b);
    assert!(matches!(e, ImageError::WrongMachine { machine: 183, .. }));
    assert!(e.to_string().contains("AArch64"), "{e}");
}

#[test]
fn shared_object() {
    let mut b = good();
    b[16..18].copy_from_slice(&3u16.to_le_bytes());
    let e = err(b);
    assert_eq!(e, ImageError::SharedObject);
    assert!(e.to_string().contains("-static -no-pie"));
}

#[test]
fn relocatable_object() {
    let mut b = good();
    b[16..18].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(err(b), ImageError::NotExecutable(1));
}

#[test]
fn entry_outside_any_segment() {
    let mut b = good();
    b[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
    assert_eq!(err(b), ImageError::EntryOutside(0x20_0000));
}

#[test]
fn entry_in_a_non_executable_segment() {
    let b = elf(
        0x10_0000,
        &[Seg {
            addr: 0x10_0000,
            data: vec![0; 16],
            memsz: 16,
            flags: 6, // RW, no X
        }],
    );
    assert_eq!(err(b), ImageError::EntryOutside(0x10_0000));
}

#[test]
fn segment_below_the_image_base() {
    let b = elf(
        0x8000,
        &[Seg {
            addr: 0x8000,
            data: vec![0xf4; 16],
            memsz: 16,
            flags: 5,
        }],
    );
    let e = err(b);
    assert_eq!(
        e,
        ImageError::BelowImageBase {
            index: 0,
            vaddr: 0x8000
        }
    );
    assert!(e.to_string().contains("xos-guest.ld"));
}

#[test]
fn overlapping_segments() {
    let seg = |addr| Seg {
        addr,
        data: vec![0xf4; 0x100],
        memsz: 0x2000,
        flags: 5,
    };
    let e = err(elf(0x10_0000, &[seg(0x10_0000), seg(0x10_1000)]));
    assert_eq!(e, ImageError::Overlap { a: 0, b: 1 });
}

#[test]
fn more_file_bytes_than_memory_bytes() {
    let b = elf(
        0x10_0000,
        &[Seg {
            addr: 0x10_0000,
            data: vec![0xf4; 64],
            memsz: 16,
            flags: 5,
        }],
    );
    assert!(matches!(err(b), ImageError::FileszExceedsMemsz { .. }));
}

#[test]
fn segment_larger_than_the_address_space() {
    let b = elf(
        0x10_0000,
        &[Seg {
            addr: 0x10_0000,
            data: vec![0xf4; 16],
            memsz: 1 << 40,
            flags: 5,
        }],
    );
    assert!(matches!(err(b), ImageError::SegmentTooLarge { .. }));
}

#[test]
fn dynamically_linked() {
    let mut b = good();
    // Turn the only program header into PT_INTERP.
    b[64..68].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(err(b), ImageError::Dynamic("PT_INTERP"));
}

#[test]
fn segment_beyond_the_configured_memory() {
    let b = elf(
        0x10_0000,
        &[Seg {
            addr: 0x10_0000,
            data: vec![0xf4; 16],
            memsz: 8 << 20,
            flags: 5,
        }],
    );
    let p = Program::parse(b).unwrap();
    let e = p.check_fits(3 << 20, 4 << 20).unwrap_err();
    assert!(matches!(
        e,
        ImageError::DoesNotFit {
            index: 0,
            mem_mib: 4,
            ..
        }
    ));
    assert!(e.to_string().contains("raise --mem"), "{e}");
}

#[test]
fn a_segment_with_file_bytes_but_no_memory_size_is_refused() {
    // Without this check such a segment skipped validation while the
    // loader still copied its bytes, here over the exception stubs.
    let b = elf(
        0x10_0000,
        &[
            Seg {
                addr: 0x10_0000,
                data: vec![0xf4; 16],
                memsz: 16,
                flags: 5,
            },
            Seg {
                addr: 0x3060,
                data: vec![0xcc; 64],
                memsz: 0,
                flags: 5,
            },
        ],
    );
    assert_eq!(
        err(b),
        ImageError::FileszExceedsMemsz {
            index: 1,
            filesz: 64,
            memsz: 0
        }
    );
}

#[test]
fn a_malformed_note_does_not_break_loading() {
    // A PT_NOTE whose contents are garbage: xos images have no PVH entry,
    // so the loader must not try to parse it.
    let mut b = good();
    let phnum = u16::from_le_bytes([b[56], b[57]]);
    assert_eq!(phnum, 1);
    let note_off = b.len() as u64;
    b.extend_from_slice(&[0xff; 12]);
    // Append a second program header (PT_NOTE) after the first.
    let mut ph = Vec::new();
    ph.extend_from_slice(&4u32.to_le_bytes()); // PT_NOTE
    ph.extend_from_slice(&4u32.to_le_bytes());
    for v in [note_off, 0, 0, 12, 12, 4] {
        ph.extend_from_slice(&v.to_le_bytes());
    }
    b[64 + 56..64 + 112].copy_from_slice(&ph);
    b[56..58].copy_from_slice(&2u16.to_le_bytes());
    let p = Program::parse(b).expect("a note is not a load segment");
    let mem =
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 4 << 20)])
            .unwrap();
    p.load(&mem, true).expect("the note is ignored");
}

#[test]
fn a_writable_and_executable_segment_is_refused() {
    let e = err(elf(
        0x10_0000,
        &[Seg {
            addr: 0x10_0000,
            data: vec![0xf4; 16],
            memsz: 16,
            flags: 7, // RWX
        }],
    ));
    assert_eq!(
        e,
        ImageError::WritableAndExecutable {
            index: 0,
            vaddr: 0x10_0000
        }
    );
    assert!(e.to_string().contains("W^X"), "{e}");
    assert!(e.to_string().contains("xos-guest.ld"), "{e}");
}

#[test]
fn code_and_data_on_one_page_are_refused() {
    let e = err(elf(
        0x10_0000,
        &[
            Seg {
                addr: 0x10_0000,
                data: vec![0xf4; 0x100],
                memsz: 0x100,
                flags: 5, // R X
            },
            Seg {
                addr: 0x10_0800,
                data: vec![0; 8],
                memsz: 0x2000,
                flags: 6, // R W
            },
        ],
    ));
    assert_eq!(
        e,
        ImageError::SharedPage {
            a: 0,
            b: 1,
            page: 0x10_0000
        }
    );
    assert!(e.to_string().contains("share the page at 0x100000"), "{e}");
    // On the next page they are fine.
    let ok = elf(
        0x10_0000,
        &[
            Seg {
                addr: 0x10_0000,
                data: vec![0xf4; 0x100],
                memsz: 0x100,
                flags: 5,
            },
            Seg {
                addr: 0x10_1000,
                data: vec![0; 8],
                memsz: 0x2000,
                flags: 6,
            },
        ],
    );
    Program::parse(ok).expect("separate pages");
}

#[test]
fn vmfunc_bytes_in_code_are_found_at_any_offset() {
    // nop; vmfunc; hlt; and the bytes again inside a mov's immediate.
    let mut code = vec![0x90, 0x0f, 0x01, 0xd4, 0xf4];
    code.extend_from_slice(&[0xb8, 0x0f, 0x01, 0xd4, 0x00]); // mov eax, 0xd4010f
    let p = Program::parse(code_image(&code)).expect("a valid image");
    assert_eq!(p.vmfunc_sites(), vec![0x10_0001, 0x10_0006]);
    let e = p.refuse_vmfunc().expect_err("refused");
    assert_eq!(
        e,
        ImageError::Vmfunc {
            first: 0x10_0001,
            count: 2
        }
    );
    assert!(e.to_string().contains("0f 01 d4"), "{e}");
    // Data segments are not code: the bytes there are no instruction.
    let data = elf(
        0x10_0000,
        &[
            Seg {
                addr: 0x10_0000,
                data: vec![0xf4; 16],
                memsz: 16,
                flags: 5,
            },
            Seg {
                addr: 0x10_1000,
                data: vec![0x0f, 0x01, 0xd4],
                memsz: 3,
                flags: 4,
            },
        ],
    );
    let p = Program::parse(data).expect("valid");
    assert!(p.vmfunc_sites().is_empty());
    p.refuse_vmfunc().expect("no VMFUNC in code");
}

#[test]
fn code_and_read_only_data_on_one_page_are_refused() {
    // Else the page would be executable with the data's bytes (never
    // scanned) or not executable with the code.
    let e = err(elf(
        0x10_0000,
        &[
            Seg {
                addr: 0x10_0000,
                data: vec![0xf4; 0x100],
                memsz: 0x100,
                flags: 5, // R X
            },
            Seg {
                addr: 0x10_0100,
                data: vec![0x0f, 0x01, 0xd4],
                memsz: 3,
                flags: 4, // R
            },
        ],
    ));
    assert_eq!(
        e,
        ImageError::SharedPage {
            a: 0,
            b: 1,
            page: 0x10_0000
        }
    );
}

#[test]
fn vmfunc_split_across_two_code_segments_is_found() {
    let p = Program::parse(elf(
        0x10_0000,
        &[
            Seg {
                addr: 0x10_0000,
                data: [vec![0xf4; 0xffe], vec![0x0f, 0x01]].concat(),
                memsz: 0x1000,
                flags: 5,
            },
            Seg {
                addr: 0x10_1000,
                data: vec![0xd4, 0xf4],
                memsz: 2,
                flags: 5,
            },
        ],
    ))
    .expect("valid");
    assert_eq!(p.vmfunc_sites(), vec![0x10_0ffe]);
}
