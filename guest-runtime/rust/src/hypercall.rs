//! Hypercalls: the guest's only way to reach the monitor.
//!
//! A hypercall stores its arguments in `BootInfo.hypercall.args`, writes its
//! number as a 4-byte value to the doorbell address (`xos_abi::DOORBELL`,
//! which no memory backs, so the write exits to the monitor as MMIO; port
//! I/O is refused at CPL3 on some KVM backends), and finds the result in
//! `BootInfo.hypercall.ret` when the monitor resumes the guest.
//! Every hypercall is a VM exit (~50 µs), so the runtime makes as few as it
//! can: output is buffered (see `io`), stdin arrives pre-filled.

use core::arch::asm;
use core::fmt;

use xos_abi::{err, nr, view, DEVICE_VIEWS, DOORBELL};

use crate::boot::{get, BOOT};

/// Issues hypercall `nr` with `args` (missing arguments are passed as 0) and
/// returns `BootInfo.hypercall.ret`: >= 0 on success, a negative
/// `xos_abi::err` code on failure. More than 6 arguments give `EINVAL`
/// without a hypercall.
///
/// # Safety
///
/// The monitor reads and writes guest memory named by pointer arguments
/// (e.g. `HOST_CALL`'s output buffer, `READ_STDIN` refills the stdin buffer)
/// behind the compiler's back: the caller must make sure such memory may be
/// read or written at this point (no live Rust reference forbids it).
pub unsafe fn hypercall(nr: u32, args: &[u64]) -> i64 {
    if args.len() > 6 {
        return err::EINVAL;
    }
    // SAFETY: BOOT is the always-mapped BootInfo page.
    let slots = unsafe { core::ptr::addr_of_mut!((*BOOT).hypercall.args) }.cast::<u64>();
    for i in 0..6 {
        let value = args.get(i).copied().unwrap_or(0);
        // SAFETY: i < 6, inside the args array; volatile, so the store is
        // done before the doorbell write below.
        unsafe { slots.add(i).write_volatile(value) };
    }
    // No `nomem`: the monitor reads and writes guest memory during the exit
    // (the argument block, the output buffer, stdin, host-call buffers), so
    // this asm is a compiler memory barrier. A `mov` leaves the flags alone.
    // SAFETY: the doorbell is not memory: the write only exits to the
    // monitor, which resumes at the next instruction.
    if get!(devices) & DEVICE_VIEWS != 0 {
        // In a VM with EPT views, through the trampoline's stub: when views
        // switch with VMFUNC, KVM decodes the doorbell write from the
        // base's memory, where only the trampoline page is the same. The
        // call's push stays below the red zone.
        // SAFETY: the stub is `mov [DOORBELL], eax; ret` in the trampoline
        // page, which the monitor maps in every view; it clobbers nothing.
        unsafe {
            asm!("sub rsp, 128", "call {stub}", "add rsp, 128",
                 stub = in(reg) view::HYPERCALL, in("eax") nr);
        }
    } else {
        unsafe {
            asm!("mov dword ptr [{doorbell}], eax", doorbell = in(reg) DOORBELL, in("eax") nr,
                 options(nostack, preserves_flags));
        }
    }
    get!(hypercall.ret)
}

/// Ends the run with exit code `code` (the monitor keeps the low 8 bits).
/// Buffered output is delivered first: the monitor writes pending output
/// before it handles any hypercall.
pub fn exit(code: i32) -> ! {
    // SAFETY: EXIT takes no pointer.
    unsafe { hypercall(nr::EXIT, &[code as u32 as u64]) };
    // The monitor never resumes after EXIT; if it did, stop hard (#UD).
    unsafe { asm!("ud2", options(noreturn, nomem, nostack)) }
}

/// Ends the run as aborted (like SIGABRT, `xos-vmm run` exits 134) with
/// `msg` as the reason (the monitor keeps up to 4096 bytes). Buffered output
/// is delivered first.
pub fn abort(msg: &str) -> ! {
    // SAFETY: the monitor only reads `msg`.
    unsafe { hypercall(nr::ABORT, &[msg.as_ptr() as u64, msg.len() as u64]) };
    unsafe { asm!("ud2", options(noreturn, nomem, nostack)) }
}

/// The cheapest possible round trip to the monitor (hypercall `NOP`); useful
/// to measure the cost of an exit. Also delivers buffered output.
pub fn nop() {
    // SAFETY: NOP takes no pointer.
    unsafe { hypercall(nr::NOP, &[]) };
}

/// Marks the end of initialisation: `xos-vmm snapshot` takes its snapshot
/// here, and every run restored from it continues from here with new stdin.
/// Returns `false` in the run that called it, `true` in a restored run.
/// Call it before reading stdin.
pub fn ready() -> bool {
    // SAFETY: READY takes no pointer.
    unsafe { hypercall(nr::READY, &[]) == 1 }
}

/// Why a [`host_call`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCallError {
    /// No host function of that name is registered (`ENOENT`).
    NotFound,
    /// The host function's output is larger than the output buffer
    /// (`E2BIG`).
    OutputTooBig,
    /// The host function itself reported a failure (`EHOSTFN`).
    Failed,
    /// The monitor rejected a buffer address (`EFAULT`); a runtime bug.
    BadAddress,
    /// The monitor rejected the request (`EINVAL`, e.g. a name it refuses).
    Invalid,
    /// The host could not complete the I/O (`EIO`).
    Io,
    /// Any other (negative) code from the monitor.
    Other(i64),
}

impl HostCallError {
    /// Maps a negative hypercall result to the error.
    pub fn from_code(code: i64) -> Self {
        match code {
            err::ENOENT => Self::NotFound,
            err::E2BIG => Self::OutputTooBig,
            err::EHOSTFN => Self::Failed,
            err::EFAULT => Self::BadAddress,
            err::EINVAL => Self::Invalid,
            err::EIO => Self::Io,
            other => Self::Other(other),
        }
    }

    /// The ABI error code (negative).
    pub fn code(self) -> i64 {
        match self {
            Self::NotFound => err::ENOENT,
            Self::OutputTooBig => err::E2BIG,
            Self::Failed => err::EHOSTFN,
            Self::BadAddress => err::EFAULT,
            Self::Invalid => err::EINVAL,
            Self::Io => err::EIO,
            Self::Other(code) => code,
        }
    }
}

impl fmt::Display for HostCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => f.write_str("no host function of that name"),
            Self::OutputTooBig => f.write_str("host function output larger than the buffer"),
            Self::Failed => f.write_str("the host function failed"),
            Self::BadAddress => f.write_str("buffer not in guest user memory"),
            Self::Invalid => f.write_str("invalid host call"),
            Self::Io => f.write_str("host I/O error"),
            Self::Other(code) => write!(f, "host call error {code}"),
        }
    }
}

/// Calls the embedder's host function `name` with `input`; its output is
/// copied into `out`. Returns the output length (<= `out.len()`).
pub fn host_call(name: &str, input: &[u8], out: &mut [u8]) -> Result<usize, HostCallError> {
    let args = [
        name.as_ptr() as u64,
        name.len() as u64,
        input.as_ptr() as u64,
        input.len() as u64,
        out.as_mut_ptr() as u64,
        out.len() as u64,
    ];
    // SAFETY: the monitor reads `name` and `input` and writes at most
    // `out.len()` bytes into `out`, which we borrow mutably for the call.
    let ret = unsafe { hypercall(nr::HOST_CALL, &args) };
    if ret < 0 {
        Err(HostCallError::from_code(ret))
    } else {
        Ok((ret as u64).min(out.len() as u64) as usize)
    }
}
