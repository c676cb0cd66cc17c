//! Inside a process IC: maps the guest layout at its fixed addresses in
//! this (fresh, single-threaded) process, loads the image, and jumps to
//! it. The guest's doorbell write hits a page mapped with no access; the
//! SIGSEGV handler decodes the write, serves the hypercall with the same
//! server the monitor uses for VMs, and resumes the guest after the
//! instruction. Any other fatal signal ends the IC as a fault.
//!
//! Results go to the parent on the status fd as one line: `exit N`,
//! `abort MESSAGE`, `fault TEXT`, `safepoint` (the execution flow's state
//! is then in the pivot memfd) or `signal SIG ADDR RIP RSP RFLAGS` and
//! the 15 general registers in `GuestRegs` order (rax, rbx, rcx, rdx, rsi,
//! rdi, rbp, r8..r15).

use crate::channel::ring::{Notify, RingChannel};
use crate::trap::{decode_doorbell_write, load_into_context, map_guest, regs_from_context, GREGS};
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::hypercall::{Hypercalls, Next};
use vmm::layout::{BootSetup, GuestLayout};
use vmm::pivot::EfState;
use vmm::{GuestIo, HostFunctions, Program};
use xos_abi::{layout, DOORBELL};

/// The fd the parent passes the image on.
pub const IMAGE_FD: i32 = 3;
/// The fd the child reports its result on.
pub const STATUS_FD: i32 = 4;
/// The channel window's memfd, when the IC has one (`--window SIDE NOTIFY`).
pub const WINDOW_FD: i32 = 5;
/// A memfd for the execution flow's state: read at start with `--resume`,
/// written when the run stops at a safe point.
pub const PIVOT_FD: i32 = 6;
/// The signal the parent sends to ask for a stop at the next safe point.
pub const SAFE_POINT_SIGNAL: i32 = libc::SIGUSR2;

/// Set by [`SAFE_POINT_SIGNAL`]'s handler.
static SAFE_POINT_WANTED: AtomicBool = AtomicBool::new(false);

/// What the signal handler needs.
struct Child {
    mem: GuestMemoryMmap,
    hypercalls: Hypercalls,
    mem_size: u64,
    /// The window's side, to hand it back to the parent at a safe point.
    window_side: Option<usize>,
    /// Registers of a carried-over execution flow, loaded by the handler
    /// of the fault that entering at address 0 raises.
    resume_regs: Option<vmm::GuestRegs>,
}

static CHILD: AtomicPtr<Child> = AtomicPtr::new(ptr::null_mut());

/// Reports `line` to the parent and ends the process with `code`.
fn finish(line: &str, code: i32) -> ! {
    // SAFETY: STATUS_FD was dup'ed for us by the parent; it is not used
    // elsewhere in this process. ManuallyDrop: _exit follows anyway.
    let mut status = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(STATUS_FD) });
    let _ = status.write_all(format!("{}\n", line.replace('\n', " ")).as_bytes());
    // SAFETY: ends the process without running destructors or atexit
    // handlers, which is what a guest's exit means here.
    unsafe { libc::_exit(code) }
}

fn fail(what: &str) -> ! {
    finish(&format!("error {what}"), 1)
}

/// Runs the IC. `args` are the helper's arguments after its subcommand:
/// `--mem BYTES [--env K=V]... -- ARGV...`.
pub fn main(args: Vec<std::ffi::OsString>) -> ! {
    use std::os::unix::ffi::OsStringExt;
    let mut mem_size = vmm::memory::DEFAULT_MEM_SIZE;
    let mut env = Vec::new();
    let mut argv = Vec::new();
    let mut window = None;
    let mut resume = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--mem") => {
                mem_size = it
                    .next()
                    .and_then(|v| v.to_str()?.parse().ok())
                    .unwrap_or_else(|| fail("--mem needs a number"));
            }
            Some("--env") => env.push(it.next().unwrap_or_default().into_vec()),
            Some("--resume") => resume = true,
            Some("--window") => {
                let side = it.next().and_then(|v| v.to_str()?.parse().ok());
                let notify = match it.next().as_ref().and_then(|v| v.to_str()) {
                    Some("poll") => Some(Notify::Poll),
                    Some("futex") => Some(Notify::Futex),
                    _ => None,
                };
                match (side, notify) {
                    (Some(side), Some(notify)) => window = Some((side, notify)),
                    _ => fail("--window needs a side (0 or 1) and poll or futex"),
                }
            }
            Some("--") => {
                argv = it.by_ref().map(OsStringExt::into_vec).collect();
                break;
            }
            _ => fail("unknown argument"),
        }
    }
    let mut image = Vec::new();
    // SAFETY: IMAGE_FD was dup'ed for us by the parent and is ours.
    let mut file = unsafe { std::fs::File::from_raw_fd(IMAGE_FD) };
    if let Err(e) = file.read_to_end(&mut image) {
        fail(&format!("cannot read the image: {e}"));
    }
    drop(file);
    let program = Program::parse(image).unwrap_or_else(|e| fail(&e.to_string()));
    let state = resume.then(read_state);
    let mem_size = match &state {
        Some(state) => state.mem_size,
        None => vmm::memory::checked_size(mem_size).unwrap_or_else(|e| fail(&e.to_string())),
    };
    let mem = map_guest(mem_size).unwrap_or_else(|e: String| fail(&e));

    let layout = match &state {
        Some(state) => {
            state
                .restore_into(&mem)
                .unwrap_or_else(|e| fail(&e.to_string()));
            // Code is always the image's own (W^X).
            program
                .reload_read_only(&mem)
                .unwrap_or_else(|e| fail(&e.to_string()));
            GuestLayout::read(&mem, mem_size).unwrap_or_else(|e| fail(&e.to_string()))
        }
        None => {
            let setup = BootSetup {
                program: &program,
                args: &argv,
                env: &env,
            };
            let mut stdin = vmm::io::HostStdin;
            GuestLayout::prepare(&mem, mem_size, true, &setup, &mut stdin)
                .unwrap_or_else(|e| fail(&e.to_string()))
        }
    };
    crate::trap::protect_image(program.segments()).unwrap_or_else(|e| fail(&e));
    let window_side = window.map(|(side, _)| side);
    let (mem, window) = match window {
        None => (mem, None),
        Some((side, notify)) => {
            let w = open_window(side, notify).unwrap_or_else(|e| fail(&e));
            vmm::layout::write_window_info(&mem, &w.info())
                .unwrap_or_else(|e| fail(&e.to_string()));
            let (mem, mapping) = w
                .map_at_fixed_address(mem)
                .unwrap_or_else(|e| fail(&e.to_string()));
            // Mapped until the process ends.
            std::mem::forget(mapping);
            (mem, Some(w))
        }
    };
    let child = Box::new(Child {
        mem,
        hypercalls: Hypercalls::new(layout, GuestIo::inherit(), HostFunctions::new())
            .with_read_only(program.segments())
            .with_window(window),
        mem_size,
        window_side,
        resume_regs: state.as_ref().map(|s| s.regs),
    });
    CHILD.store(Box::into_raw(child), Ordering::SeqCst);
    install_handlers();
    // A carried-over execution flow enters at 0, whose fault loads its
    // registers (see `on_signal`).
    enter(if state.is_some() { 0 } else { program.entry() })
}

/// The execution flow to continue, from [`PIVOT_FD`].
fn read_state() -> EfState {
    // SAFETY: PIVOT_FD was dup'ed for us by the parent and is ours; it
    // stays open (ManuallyDrop) for the state written at a safe point.
    let mut file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(PIVOT_FD) });
    let mut bytes = Vec::new();
    if let Err(e) = file.read_to_end(&mut bytes) {
        fail(&format!("cannot read the execution flow's state: {e}"));
    }
    EfState::decode(&bytes).unwrap_or_else(|e| fail(&e.to_string()))
}

/// Stops at a safe point: the state goes to [`PIVOT_FD`] for the parent,
/// the window's side back to the parent (this process is about to end),
/// and the run ends with `safepoint`.
fn stop_at_safe_point(child: &Child, regs: vmm::GuestRegs) -> ! {
    use std::os::unix::fs::FileExt;
    let state =
        EfState::capture(&child.mem, child.mem_size, regs).unwrap_or_else(|e| fail(&e.to_string()));
    // SAFETY: as in `read_state`.
    let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(PIVOT_FD) });
    if let Err(e) = file
        .set_len(0)
        .and_then(|()| file.write_all_at(&state.encode(), 0))
    {
        fail(&format!("cannot save the execution flow's state: {e}"));
    }
    if let Some(side) = child.window_side {
        let pid_at = xos_abi::WINDOW + xos_abi::ring::OFF_PID[side];
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() } as u32;
        let _ = child.mem.write_obj(parent, GuestAddress(pid_at));
    }
    finish("safepoint", 0)
}

/// The channel window from the memfd at [`WINDOW_FD`], side `side`.
fn open_window(side: usize, notify: Notify) -> Result<vmm::SharedWindow, String> {
    // SAFETY: WINDOW_FD was dup'ed for us by the parent and is ours.
    let file = unsafe { std::fs::File::from_raw_fd(WINDOW_FD) };
    let end = RingChannel::from_memfd(&file, side, notify)
        .and_then(RingChannel::into_guest_end)
        .map_err(|e| e.to_string())?;
    end.window().map_err(|e| e.to_string())
}

fn install_handlers() {
    const STACK: usize = 256 << 10;
    // SAFETY: a fresh anonymous mapping used only as the signal stack.
    let stack = unsafe {
        libc::mmap(
            ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        fail("cannot map the signal stack");
    }
    let ss = libc::stack_t {
        ss_sp: stack,
        ss_flags: 0,
        ss_size: STACK,
    };
    // SAFETY: `ss` describes the mapping above.
    unsafe { libc::sigaltstack(&ss, ptr::null_mut()) };
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_safe_point_request as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(SAFE_POINT_SIGNAL, &sa, ptr::null_mut());
        // The parent spawned us with it blocked; a request sent meanwhile
        // is delivered now.
        let mut unblock: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut unblock);
        libc::sigaddset(&mut unblock, SAFE_POINT_SIGNAL);
        libc::sigprocmask(libc::SIG_UNBLOCK, &unblock, ptr::null_mut());
    }
    for sig in [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGTRAP,
    ] {
        // SAFETY: installs `on_signal` (an extern "C" handler with the
        // SA_SIGINFO signature) on the alternate stack.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, ptr::null_mut());
        }
    }
}

/// Jumps to the guest's entry at CPL3 in this process, with the ABI's entry
/// state (RSP at the stack top, RDI = BootInfo). Never returns: the guest
/// leaves through a hypercall or a fault.
fn enter(entry: u64) -> ! {
    // SAFETY: the guest's memory is mapped, loaded and set up; from here on
    // this thread runs guest code until the process ends.
    unsafe {
        std::arch::asm!(
            "mov rsp, {stack}",
            "xor ebp, ebp",
            "jmp {entry}",
            stack = in(reg) layout::STACK_TOP,
            entry = in(reg) entry,
            in("rdi") layout::BOOT_INFO,
            options(noreturn)
        )
    }
}

extern "C" fn on_safe_point_request(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SAFE_POINT_WANTED.store(true, Ordering::SeqCst);
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo and ucontext to an
    // SA_SIGINFO handler; CHILD is set before the guest starts and never
    // freed; this process has one thread (the guest's), which is the one
    // interrupted, so nothing else uses the server meanwhile.
    unsafe {
        let addr = (*info).si_addr() as u64;
        let uc = &mut *(ctx as *mut libc::ucontext_t);
        let gregs = &mut uc.uc_mcontext.gregs;
        let rip = gregs[libc::REG_RIP as usize] as u64;
        let child = CHILD.load(Ordering::SeqCst);
        let report = |gregs: &[libc::greg_t; 23]| {
            let r = |i: libc::c_int| gregs[i as usize] as u64;
            let gprs = [
                libc::REG_RAX,
                libc::REG_RBX,
                libc::REG_RCX,
                libc::REG_RDX,
                libc::REG_RSI,
                libc::REG_RDI,
                libc::REG_RBP,
                libc::REG_R8,
                libc::REG_R9,
                libc::REG_R10,
                libc::REG_R11,
                libc::REG_R12,
                libc::REG_R13,
                libc::REG_R14,
                libc::REG_R15,
            ]
            .map(|i| r(i).to_string())
            .join(" ");
            format!(
                "signal {sig} {addr} {rip} {} {} {gprs}",
                r(libc::REG_RSP),
                r(libc::REG_EFL)
            )
        };
        if sig == libc::SIGSEGV && rip == 0 && !child.is_null() {
            if let Some(regs) = (*child).resume_regs.take() {
                // The entry jumped to 0 on purpose: continue the carried-
                // over execution flow with all its registers.
                load_into_context(gregs, &regs);
                return;
            }
        }
        if sig != libc::SIGSEGV || child.is_null() || addr & !0xfff != DOORBELL {
            finish(&report(gregs), 128 + sig);
        }
        let child = &mut *child;
        let mut code = [0u8; 15];
        let decoded = child
            .mem
            .read_slice(&mut code, GuestAddress(rip))
            .ok()
            .and_then(|()| decode_doorbell_write(&code));
        let Some((reg, len)) = decoded else {
            finish(&report(gregs), 128 + sig);
        };
        let number = gregs[GREGS[reg]] as u32;
        match child.hypercalls.handle(&child.mem, number) {
            Ok(Next::Resume) => {}
            Ok(Next::Ready) => {
                // No snapshots of process ICs (yet): READY answers 0.
                if let Err(e) = child.hypercalls.ret(&child.mem, 0) {
                    finish(&format!("error {e}"), 1);
                }
            }
            Ok(Next::SafePoint) if SAFE_POINT_WANTED.load(Ordering::SeqCst) => {
                let mut regs = regs_from_context(gregs, 0);
                regs.rip = rip + len as u64;
                stop_at_safe_point(child, regs)
            }
            Ok(Next::SafePoint) => {
                if let Err(e) = child.hypercalls.ret(&child.mem, 0) {
                    finish(&format!("error {e}"), 1);
                }
            }
            Ok(Next::Exit(code)) => finish(&format!("exit {code}"), i32::from(code)),
            Ok(Next::Abort(message)) => finish(&format!("abort {message}"), 134),
            Ok(Next::Fault(fault)) => finish(&format!("fault {fault:?}"), 139),
            Err(e) => finish(&format!("error {e}"), 1),
        }
        gregs[libc::REG_RIP as usize] = (rip + len as u64) as i64;
    }
}
