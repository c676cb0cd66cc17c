//! Where a run's pieces go in guest memory, and writing them there before
//! entry: the BootInfo page, arguments and environment, the first chunk of
//! stdin. See `docs/ABI.md` for the map.

use crate::io::GuestInput;
use crate::loader::{ImageError, Program};
use std::mem::offset_of;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xos_abi::{
    align_up, layout, BootInfo, OutputState, StdinState, WindowInfo, ABI_VERSION, BOOT_MAGIC,
};

/// Errors preparing a run's memory.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The image does not fit.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The image's page permissions could not be set.
    #[error(transparent)]
    Arch(#[from] crate::arch::ArchError),
    /// Arguments plus environment are too large.
    #[error("the arguments and environment take {size} bytes; at most {max} bytes are supported", max = layout::MAX_ARGS_SIZE)]
    ArgsTooLarge {
        /// Bytes needed.
        size: u64,
    },
    /// A restored guest's BootInfo is not usable.
    #[error("the snapshot's boot information is invalid: {0}")]
    BadBootInfo(String),
    /// An argument or environment string contains a NUL byte.
    #[error("{what} {index} contains a NUL byte, which C strings cannot carry")]
    NulInString {
        /// "argument" or "environment entry".
        what: &'static str,
        /// Its index.
        index: usize,
    },
    /// Reading standard input failed.
    #[error("cannot read standard input for the guest: {0}")]
    Stdin(std::io::Error),
    /// Writing guest memory failed (memory smaller than the layout).
    #[error("cannot write the guest's {what} at {addr:#x}: {source}")]
    Write {
        /// What was written.
        what: &'static str,
        /// Where.
        addr: u64,
        /// What vm-memory reported.
        source: vm_memory::GuestMemoryError,
    },
}

/// The addresses of one run's regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    /// Guest memory size.
    pub mem_size: u64,
    /// Start of the argument/environment block (also the heap's end).
    pub args: u64,
    /// Size of the argument block (page multiple).
    pub args_size: u64,
    /// Output buffer.
    pub output: u64,
    /// Output buffer capacity.
    pub output_cap: u64,
    /// Stdin buffer.
    pub stdin: u64,
    /// Stdin buffer capacity.
    pub stdin_cap: u64,
    /// First heap byte.
    pub heap_start: u64,
}

/// Guest address of a BootInfo field.
pub fn boot_field(offset: usize) -> GuestAddress {
    GuestAddress(layout::BOOT_INFO + offset as u64)
}

/// Offset of `stdin` in BootInfo.
pub const STDIN_OFFSET: usize = offset_of!(BootInfo, stdin);
/// Offset of `output` in BootInfo.
pub const OUTPUT_OFFSET: usize = offset_of!(BootInfo, output);
/// Offset of `hypercall` in BootInfo.
pub const HYPERCALL_OFFSET: usize = offset_of!(BootInfo, hypercall);
/// Offset of `hypercall.ret` in BootInfo.
pub const HYPERCALL_RET_OFFSET: usize = HYPERCALL_OFFSET + offset_of!(xos_abi::Hypercall, ret);

/// Tells the guest where its channel window is (`BootInfo.window`).
pub fn write_window_info(mem: &GuestMemoryMmap, info: &WindowInfo) -> Result<(), LayoutError> {
    let at = boot_field(offset_of!(BootInfo, window));
    mem.write_obj(*info, at)
        .map_err(|source| LayoutError::Write {
            what: "channel window description",
            addr: at.0,
            source,
        })
}

/// Tells the guest which devices it has (`BootInfo.devices`).
pub fn write_devices(mem: &GuestMemoryMmap, devices: u64) -> Result<(), LayoutError> {
    let at = boot_field(offset_of!(BootInfo, devices));
    mem.write_obj(devices, at)
        .map_err(|source| LayoutError::Write {
            what: "device list",
            addr: at.0,
            source,
        })
}

/// Arguments and environment, encoded for the guest.
struct ArgBlock {
    bytes: Vec<u8>,
    argc: u64,
    envp_offset: u64,
}

fn encode_args(base: u64, args: &[Vec<u8>], env: &[Vec<u8>]) -> Result<ArgBlock, LayoutError> {
    for (what, list) in [("argument", args), ("environment entry", env)] {
        if let Some(index) = list.iter().position(|s| s.contains(&0)) {
            return Err(LayoutError::NulInString { what, index });
        }
    }
    let pointers = (args.len() + 1 + env.len() + 1) as u64 * 8;
    let strings: u64 = args.iter().chain(env).map(|s| s.len() as u64 + 1).sum();
    let size = pointers + strings;
    if size > layout::MAX_ARGS_SIZE {
        return Err(LayoutError::ArgsTooLarge { size });
    }
    let mut ptrs = Vec::with_capacity(pointers as usize);
    let mut text = Vec::with_capacity(strings as usize);
    let mut put = |list: &[Vec<u8>], ptrs: &mut Vec<u8>| {
        for s in list {
            let addr = base + pointers + text.len() as u64;
            ptrs.extend_from_slice(&addr.to_le_bytes());
            text.extend_from_slice(s);
            text.push(0);
        }
        ptrs.extend_from_slice(&0u64.to_le_bytes());
    };
    put(args, &mut ptrs);
    put(env, &mut ptrs);
    let envp_offset = (args.len() as u64 + 1) * 8;
    ptrs.extend_from_slice(&text);
    Ok(ArgBlock {
        bytes: ptrs,
        argc: args.len() as u64,
        envp_offset,
    })
}

fn write(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), LayoutError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| LayoutError::Write { what, addr, source })
}

/// Everything a run needs in memory before entry.
pub struct BootSetup<'a> {
    /// The image (already loaded by the caller or loaded here).
    pub program: &'a Program,
    /// argv, including argv[0].
    pub args: &'a [Vec<u8>],
    /// "KEY=VALUE" entries.
    pub env: &'a [Vec<u8>],
}

impl GuestLayout {
    /// Computes the layout for `program` with an argument block of
    /// `args_size` bytes, checking that the image fits.
    fn compute(mem_size: u64, args_size: u64, program: &Program) -> Result<Self, LayoutError> {
        let stdin = mem_size - layout::STDIN_BUF_SIZE;
        let output = stdin - layout::OUTPUT_BUF_SIZE;
        let args_size = align_up(args_size.max(1), layout::PAGE_SIZE);
        let args = output - args_size;
        program.check_fits(args, mem_size)?;
        Ok(GuestLayout {
            mem_size,
            args,
            args_size,
            output,
            output_cap: layout::OUTPUT_BUF_SIZE,
            stdin,
            stdin_cap: layout::STDIN_BUF_SIZE,
            heap_start: align_up(program.end(), layout::PAGE_SIZE),
        })
    }

    /// Loads the image and writes BootInfo, arguments and the first chunk
    /// of stdin into `mem`. `fresh` says `mem` is all zeroes.
    pub fn prepare(
        mem: &GuestMemoryMmap,
        mem_size: u64,
        fresh: bool,
        setup: &BootSetup<'_>,
        stdin: &mut dyn GuestInput,
    ) -> Result<GuestLayout, LayoutError> {
        // The block's address depends on its size, so encode twice only if
        // needed: first at a provisional base to learn the size.
        let provisional = encode_args(0, setup.args, setup.env)?;
        let layout = GuestLayout::compute(mem_size, provisional.bytes.len() as u64, setup.program)?;
        let block = encode_args(layout.args, setup.args, setup.env)?;
        setup.program.load(mem, fresh)?;
        // A VM's memory holds its page tables: give the image's pages its
        // segments' permissions there (host ICs map theirs themselves).
        if vm_memory::GuestMemoryBackend::address_in_range(
            mem,
            GuestAddress(crate::arch::system::PT_LOW),
        ) {
            crate::arch::paging::protect_image(mem, setup.program.segments())?;
        }
        write(mem, "argument block", layout.args, &block.bytes)?;

        let mut chunk = vec![0u8; layout.stdin_cap as usize];
        let (len, eof) = stdin.prefill(&mut chunk).map_err(LayoutError::Stdin)?;
        if len > 0 {
            write(mem, "stdin buffer", layout.stdin, &chunk[..len])?;
        }

        let info = BootInfo {
            magic: BOOT_MAGIC,
            abi_version: ABI_VERSION,
            flags: 0,
            mem_size,
            argc: block.argc,
            argv: layout.args,
            envp: layout.args + block.envp_offset,
            heap_start: layout.heap_start,
            heap_end: layout.args,
            stack_top: layout::STACK_TOP,
            stack_bottom: layout::STACK_BOTTOM,
            stdin: StdinState {
                buf: layout.stdin,
                cap: layout.stdin_cap,
                len: len as u64,
                eof: u64::from(eof),
            },
            output: OutputState {
                buf: layout.output,
                cap: layout.output_cap,
                used: 0,
                reserved: 0,
            },
            hypercall: Default::default(),
            window: WindowInfo::default(),
            devices: 0,
        };
        mem.write_obj(info, GuestAddress(layout::BOOT_INFO))
            .map_err(|source| LayoutError::Write {
                what: "boot information",
                addr: layout::BOOT_INFO,
                source,
            })?;
        Ok(layout)
    }
}

impl GuestLayout {
    /// Reads the layout of a guest that already ran (restored from a
    /// snapshot, or an execution flow carried over from another IC) from
    /// its BootInfo, checking that every region is guest user memory.
    pub fn read(mem: &GuestMemoryMmap, mem_size: u64) -> Result<GuestLayout, LayoutError> {
        let bad = |m: String| LayoutError::BadBootInfo(m);
        let info: BootInfo = mem
            .read_obj(GuestAddress(layout::BOOT_INFO))
            .map_err(|source| LayoutError::Write {
                what: "boot information",
                addr: layout::BOOT_INFO,
                source,
            })?;
        if info.magic != BOOT_MAGIC || info.abi_version != ABI_VERSION {
            return Err(bad(format!(
                "magic {:#x}, ABI version {}",
                info.magic, info.abi_version
            )));
        }
        if info.mem_size != mem_size {
            return Err(bad(format!(
                "it says {} bytes of memory, the VM has {mem_size}",
                info.mem_size
            )));
        }
        let user = |what: &str, addr: u64, len: u64| {
            if len == 0 || !crate::arch::paging::user_accessible(addr, len, mem_size) {
                Err(bad(format!(
                    "the {what} {addr:#x}+{len:#x} is not guest user memory"
                )))
            } else {
                Ok(())
            }
        };
        user("stdin buffer", info.stdin.buf, info.stdin.cap)?;
        user("output buffer", info.output.buf, info.output.cap)?;
        Ok(GuestLayout {
            mem_size,
            args: info.heap_end,
            args_size: info.output.buf.saturating_sub(info.heap_end),
            output: info.output.buf,
            output_cap: info.output.cap,
            stdin: info.stdin.buf,
            stdin_cap: info.stdin.cap,
            heap_start: info.heap_start,
        })
    }

    /// Reads the layout of a guest restored from a snapshot (see
    /// [`GuestLayout::read`]), then prepares the guest to continue at its
    /// ready point: the first chunk of new stdin in the stdin buffer, an
    /// empty output buffer, and 1 as the result of the pending `READY`
    /// hypercall.
    pub fn resume(
        mem: &GuestMemoryMmap,
        mem_size: u64,
        stdin: &mut dyn GuestInput,
    ) -> Result<GuestLayout, LayoutError> {
        let layout = Self::read(mem, mem_size)?;
        let mut chunk = vec![0u8; layout.stdin_cap.min(layout::STDIN_BUF_SIZE) as usize];
        let (len, eof) = stdin.prefill(&mut chunk).map_err(LayoutError::Stdin)?;
        write(mem, "stdin buffer", layout.stdin, &chunk[..len])?;
        let stdin_state = StdinState {
            buf: layout.stdin,
            cap: chunk.len() as u64,
            len: len as u64,
            eof: u64::from(eof),
        };
        let output_state = OutputState {
            buf: layout.output,
            cap: layout.output_cap,
            used: 0,
            reserved: 0,
        };
        let put = |what: &'static str, offset: usize, bytes: &[u8]| {
            write(mem, what, layout::BOOT_INFO + offset as u64, bytes)
        };
        put(
            "stdin state",
            STDIN_OFFSET,
            vm_memory::ByteValued::as_slice(&stdin_state),
        )?;
        put(
            "output state",
            OUTPUT_OFFSET,
            vm_memory::ByteValued::as_slice(&output_state),
        )?;
        put(
            "hypercall result",
            HYPERCALL_RET_OFFSET,
            &1i64.to_le_bytes(),
        )?;
        Ok(GuestLayout {
            stdin_cap: chunk.len() as u64,
            ..layout
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_block_points_at_its_strings() {
        let args = vec![b"prog".to_vec(), b"a b".to_vec()];
        let env = vec![b"K=V".to_vec()];
        let block = encode_args(0x1000, &args, &env).unwrap();
        assert_eq!(block.argc, 2);
        let ptr = |i: usize| u64::from_le_bytes(block.bytes[i * 8..i * 8 + 8].try_into().unwrap());
        // argv[0], argv[1], NULL, envp[0], NULL, then strings.
        assert_eq!(ptr(0), 0x1000 + 40);
        assert_eq!(ptr(1), 0x1000 + 45);
        assert_eq!(ptr(2), 0);
        assert_eq!(ptr(3), 0x1000 + 49);
        assert_eq!(ptr(4), 0);
        assert_eq!(&block.bytes[40..], b"prog\0a b\0K=V\0");
        assert_eq!(block.envp_offset, 24);
    }

    #[test]
    fn nul_bytes_and_huge_blocks_are_refused() {
        let bad = vec![b"a\0b".to_vec()];
        assert!(matches!(
            encode_args(0, &bad, &[]),
            Err(LayoutError::NulInString { index: 0, .. })
        ));
        let huge = vec![vec![b'x'; 2 << 20]];
        assert!(matches!(
            encode_args(0, &huge, &[]),
            Err(LayoutError::ArgsTooLarge { .. })
        ));
    }
}
