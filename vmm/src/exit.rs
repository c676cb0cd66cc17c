//! How a guest run ends, typed, with the guest's registers so a user can
//! debug it.

use std::fmt;
use std::time::Duration;
use xos_abi::layout;

/// The guest's general registers at the moment a run ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags.
    pub rflags: u64,
    /// rax, rbx, rcx, rdx, rsi, rdi, rbp, r8..r15 in this order.
    pub gpr: [u64; 15],
    /// Page-fault address register.
    pub cr2: u64,
    /// Current privilege level (from CS).
    pub cpl: u8,
}

const GPR_NAMES: [&str; 15] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
    "r15",
];

impl GuestRegs {
    /// Builds the snapshot from KVM's register structs.
    pub fn from_kvm(regs: &kvm_bindings::kvm_regs, sregs: &kvm_bindings::kvm_sregs) -> Self {
        GuestRegs {
            rip: regs.rip,
            rsp: regs.rsp,
            rflags: regs.rflags,
            gpr: [
                regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.r8,
                regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
            ],
            cr2: sregs.cr2,
            cpl: sregs.cs.dpl,
        }
    }
}

impl fmt::Display for GuestRegs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rip={:#018x} rsp={:#018x} rflags={:#x} cr2={:#x} cpl={}",
            self.rip, self.rsp, self.rflags, self.cr2, self.cpl
        )?;
        for (i, (name, v)) in GPR_NAMES.iter().zip(self.gpr).enumerate() {
            let sep = if i % 4 == 0 { "\n  " } else { " " };
            write!(f, "{sep}{name:>3}={v:#018x}")?;
        }
        Ok(())
    }
}

/// A CPU exception the guest raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    /// Vector number (0..31; 255 for any other vector).
    pub vector: u8,
    /// Error code, for the vectors that push one.
    pub error_code: Option<u64>,
}

impl Exception {
    /// Mnemonic and name of the vector.
    pub fn name(&self) -> &'static str {
        match self.vector {
            0 => "#DE divide error",
            1 => "#DB debug",
            2 => "NMI",
            3 => "#BP breakpoint",
            4 => "#OF overflow",
            5 => "#BR bound range exceeded",
            6 => "#UD invalid opcode",
            7 => "#NM device not available",
            8 => "#DF double fault",
            10 => "#TS invalid TSS",
            11 => "#NP segment not present",
            12 => "#SS stack-segment fault",
            13 => "#GP general protection fault",
            14 => "#PF page fault",
            16 => "#MF x87 floating-point error",
            17 => "#AC alignment check",
            18 => "#MC machine check",
            19 => "#XM SIMD floating-point exception",
            20 => "#VE virtualization exception",
            21 => "#CP control protection",
            _ => "unexpected interrupt or reserved vector",
        }
    }
}

/// Why a guest failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A CPU exception reached the monitor's stubs.
    Exception(Exception),
    /// The guest accessed guest-physical memory with no memory behind it.
    UnmappedAccess {
        /// Guest-physical address.
        addr: u64,
        /// Write (true) or read.
        write: bool,
    },
    /// The vCPU shut down (triple fault).
    TripleFault,
    /// KVM could not emulate or handle an instruction.
    InternalError {
        /// KVM's sub-error code.
        suberror: u32,
    },
    /// KVM could not enter the guest (invalid state).
    FailedEntry {
        /// Hardware reason code.
        reason: u64,
    },
    /// The guest used an I/O port (guests have none; only the monitor's
    /// exception stubs report on the fault port).
    BadPort {
        /// The port.
        port: u16,
        /// Write (true) or read.
        write: bool,
    },
    /// The guest's output buffer did not parse.
    CorruptOutput(String),
    /// The guest wrote more output than the run allows.
    OutputLimit {
        /// The limit in bytes.
        limit: u64,
    },
    /// Any other exit the monitor does not expect from a guest.
    UnexpectedExit(String),
    /// An IC of a VM with EPT views broke the cross-view call protocol
    /// (a switch from outside the trampoline, to a view that is not its
    /// peer or not serving, a hypercall in the middle of a call).
    ViewProtocol(String),
    /// A guest running in a host process (or thread) received a fatal
    /// signal: SIGSEGV, SIGILL, SIGFPE, SIGBUS or SIGTRAP.
    Signal {
        /// The signal number.
        signal: i32,
        /// The faulting address, where the signal has one.
        addr: u64,
    },
}

/// How a guest run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest called `EXIT`.
    Exited(u8),
    /// The guest called `ABORT` (a panic, `abort()`).
    Aborted(String),
    /// The guest failed; `regs` are its registers at the fault.
    Faulted {
        /// What happened.
        fault: Fault,
        /// The guest's registers.
        regs: Box<GuestRegs>,
        /// Guest memory size, to explain addresses.
        mem_size: u64,
    },
    /// The guest ran past its time limit and was stopped.
    TimedOut {
        /// The limit.
        limit: Duration,
        /// Where it was.
        regs: Box<GuestRegs>,
    },
    /// Someone called [`crate::interrupt::Interrupter::kill`].
    Killed,
    /// The guest reached its ready point and was stopped there to take a
    /// snapshot ([`crate::RunConfig::stop_at_ready`]).
    Ready,
    /// The guest reached a safe point after one was requested
    /// ([`crate::Interrupter::request_safe_point`]) and was stopped there;
    /// [`crate::RunOutcome::pivot`] holds its state.
    SafePoint,
}

impl GuestExit {
    /// The exit code a command-line tool should report: the guest's own
    /// code, 124 for a timeout, and 128 + the signal a Linux process would
    /// have received for a crash.
    pub fn exit_code(&self) -> i32 {
        match self {
            GuestExit::Exited(c) => i32::from(*c),
            GuestExit::Aborted(_) => 128 + libc::SIGABRT,
            GuestExit::TimedOut { .. } => 124,
            GuestExit::Killed => 128 + libc::SIGKILL,
            GuestExit::Ready | GuestExit::SafePoint => 0,
            GuestExit::Faulted { fault, .. } => match fault {
                Fault::Exception(e) => match e.vector {
                    0 | 16 | 19 => 128 + libc::SIGFPE,
                    6 => 128 + libc::SIGILL,
                    1 | 3 => 128 + libc::SIGTRAP,
                    _ => 128 + libc::SIGSEGV,
                },
                Fault::Signal { signal, .. } => 128 + signal,
                _ => 128 + libc::SIGSEGV,
            },
        }
    }
}

/// Explains a faulting address in terms of the guest layout.
pub fn describe_address(addr: u64, mem_size: u64) -> &'static str {
    if addr < layout::PAGE_SIZE {
        "null pointer dereference"
    } else if addr < layout::SYSTEM_END {
        "the supervisor-only system area"
    } else if (layout::RESUME_PAGE..layout::RESUME_PAGE + layout::PAGE_SIZE).contains(&addr) {
        "the monitor's read-only resume page"
    } else if (layout::STACK_GUARD..layout::STACK_BOTTOM).contains(&addr) {
        "stack overflow (the stack guard page)"
    } else if addr < layout::STACK_BOTTOM {
        "an unmapped page below the stack"
    } else if (xos_abi::DOORBELL..xos_abi::DOORBELL + (2 << 20)).contains(&addr) {
        "the hypercall doorbell page (only a write of the hypercall number to its first byte is valid)"
    } else if addr >= mem_size {
        "outside guest memory"
    } else {
        "guest memory"
    }
}

impl fmt::Display for GuestExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestExit::Exited(c) => write!(f, "guest exited with code {c}"),
            GuestExit::Aborted(m) => write!(f, "guest aborted: {m}"),
            GuestExit::Killed => write!(f, "guest was killed"),
            GuestExit::Ready => write!(f, "guest stopped at its ready point"),
            GuestExit::SafePoint => write!(f, "guest stopped at a safe point to change IC"),
            GuestExit::TimedOut { limit, regs } => write!(
                f,
                "guest timed out after {limit:?} and was stopped at rip={:#x}",
                regs.rip
            ),
            GuestExit::Faulted {
                fault,
                regs,
                mem_size,
            } => {
                match fault {
                    Fault::Exception(e) => {
                        write!(f, "guest fault: {} at rip={:#x}", e.name(), regs.rip)?;
                        if let Some(code) = e.error_code {
                            write!(f, " (error code {code:#x})")?;
                        }
                        if e.vector == 14 {
                            let access = match e.error_code {
                                Some(c) if c & 0x10 != 0 => "instruction fetch",
                                Some(c) if c & 2 != 0 => "write",
                                _ => "read",
                            };
                            write!(
                                f,
                                ": {access} of address {:#x}, {}",
                                regs.cr2,
                                describe_address(regs.cr2, *mem_size)
                            )?;
                            // Bit 0: the page is present, so its permissions
                            // refused the access.
                            match e.error_code {
                                Some(c) if c & 0x11 == 0x11 => write!(
                                    f,
                                    ", which is not executable (W^X: only the image's code pages are)"
                                )?,
                                Some(c) if c & 0x3 == 0x3 => write!(
                                    f,
                                    ", which is read-only (the image's code or read-only data)"
                                )?,
                                _ => {}
                            }
                        }
                    }
                    Fault::UnmappedAccess { addr, write } => write!(
                        f,
                        "guest fault: {} of unmapped guest-physical address {addr:#x} ({}) at rip={:#x}",
                        if *write { "write" } else { "read" },
                        describe_address(*addr, *mem_size),
                        regs.rip
                    )?,
                    Fault::TripleFault => {
                        write!(f, "guest fault: triple fault (vCPU shut down) at rip={:#x}", regs.rip)?
                    }
                    Fault::InternalError { suberror } => write!(
                        f,
                        "guest fault: KVM internal error (suberror {suberror}: KVM could not emulate an instruction) at rip={:#x}",
                        regs.rip
                    )?,
                    Fault::FailedEntry { reason } => write!(
                        f,
                        "guest fault: KVM could not enter the guest (hardware reason {reason:#x}) at rip={:#x}",
                        regs.rip
                    )?,
                    Fault::BadPort { port, write } => write!(
                        f,
                        "guest fault: {} I/O port {port:#x} at rip={:#x}; guests have no I/O ports (hypercalls write to the doorbell at {:#x})",
                        if *write { "write to" } else { "read from" },
                        regs.rip,
                        xos_abi::DOORBELL
                    )?,
                    Fault::OutputLimit { limit } => write!(
                        f,
                        "guest fault: the guest wrote more than the {limit}-byte output limit of this run (rip={:#x})",
                        regs.rip
                    )?,
                    Fault::CorruptOutput(m) => {
                        write!(f, "guest fault: corrupt output buffer: {m} (rip={:#x})", regs.rip)?
                    }
                    Fault::Signal { signal, addr } => {
                        let name = match *signal {
                            libc::SIGSEGV => "SIGSEGV (memory fault)",
                            libc::SIGBUS => "SIGBUS (bus error)",
                            libc::SIGILL => "SIGILL (invalid instruction)",
                            libc::SIGFPE => "SIGFPE (arithmetic fault)",
                            libc::SIGTRAP => "SIGTRAP (trap)",
                            _ => "a fatal signal",
                        };
                        write!(f, "guest fault: {name} at rip={:#x}", regs.rip)?;
                        if *addr != 0 || *signal == libc::SIGSEGV {
                            write!(
                                f,
                                ", address {addr:#x} ({})",
                                describe_address(*addr, *mem_size)
                            )?;
                        }
                    }
                    Fault::UnexpectedExit(m) => {
                        write!(f, "guest fault: unexpected exit {m} at rip={:#x}", regs.rip)?
                    }
                    Fault::ViewProtocol(m) => write!(
                        f,
                        "guest fault: broke the EPT-view call protocol: {m} (rip={:#x}); switch views only through the trampoline (xos_view_call / xos_view_serve)",
                        regs.rip
                    )?,
                }
                write!(f, "\nregisters: {regs}")
            }
        }
    }
}

/// Counters about one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// `KVM_RUN` calls that returned to the monitor.
    pub exits: u64,
    /// Hypercalls handled.
    pub hypercalls: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_shell_conventions() {
        let regs = Box::<GuestRegs>::default();
        let fault = |vector| GuestExit::Faulted {
            fault: Fault::Exception(Exception {
                vector,
                error_code: None,
            }),
            regs: regs.clone(),
            mem_size: 16 << 20,
        };
        assert_eq!(GuestExit::Exited(7).exit_code(), 7);
        assert_eq!(GuestExit::Aborted("x".into()).exit_code(), 134);
        assert_eq!(fault(14).exit_code(), 139);
        assert_eq!(fault(6).exit_code(), 132);
        assert_eq!(fault(0).exit_code(), 136);
        assert_eq!(
            GuestExit::TimedOut {
                limit: Duration::from_secs(1),
                regs
            }
            .exit_code(),
            124
        );
    }

    #[test]
    fn addresses_are_explained() {
        let mem = 16 << 20;
        assert_eq!(describe_address(0, mem), "null pointer dereference");
        assert_eq!(
            describe_address(0x4000, mem),
            "the supervisor-only system area"
        );
        assert_eq!(
            describe_address(0x30008, mem),
            "stack overflow (the stack guard page)"
        );
        assert_eq!(describe_address(mem + 1, mem), "outside guest memory");
    }
}
