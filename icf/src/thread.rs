//! The thread factory: an IC is a thread of the monitor's own process that
//! runs the image natively at its fixed addresses. No isolation at all
//! (it shares the monitor's address space), which is the point: it is the
//! classic abstraction the others are compared with.
//!
//! How a guest thread enters and leaves: `xos_thread_ic_enter` saves the
//! host's callee-saved registers, MXCSR and x87 control word on the host
//! stack, remembers the stack pointer, and jumps to the guest's entry on
//! the guest's stack. The guest's doorbell writes fault (SIGSEGV on a page
//! with no access); the handler serves the hypercall in place and resumes
//! the guest, or, when the guest is done, rewrites the signal context so
//! that returning from the handler lands in `xos_thread_ic_resume`, which
//! restores the host registers and returns from `xos_thread_ic_enter`.
//! Stopping a running guest (time limit, kill) sends the thread a signal
//! whose handler does the same.
//!
//! The image's fixed layout can be mapped once per address space, so the
//! process runs one thread IC at a time; others wait their turn.

use crate::error::IcfError;
use crate::factory::{
    Availability, IcSpec, IsolationContext, IsolationContextFactory, ProcessImage,
};
use crate::trap::{
    decode_doorbell_write, load_into_context, map_guest, regs_from_context, unmap_guest, GREGS,
};
use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::exit::{Exception, GuestRegs, RunStats};
use vmm::hypercall::{Hypercalls, Next};
use vmm::interrupt::StopReason;
use vmm::layout::{BootSetup, GuestLayout};
use vmm::pivot::EfState;
use vmm::{Fault, GuestExit, GuestIo, Interrupter, RunOutcome};
use xos_abi::{layout, DOORBELL};

/// Name of the kind.
pub const NAME: &str = "thread";

std::arch::global_asm!(
    ".globl xos_thread_ic_enter",
    "xos_thread_ic_enter:",
    // rdi = entry, rsi = guest stack top, rdx = BootInfo, rcx = &host rsp
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "sub rsp, 8",
    "stmxcsr [rsp]",
    "fnstcw [rsp + 4]",
    "mov [rcx], rsp",
    "mov rsp, rsi",
    "mov rax, rdi",
    "mov rdi, rdx",
    "xor ebp, ebp",
    "jmp rax",
    ".globl xos_thread_ic_resume",
    "xos_thread_ic_resume:",
    "ldmxcsr [rsp]",
    "fldcw [rsp + 4]",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
);

extern "C" {
    fn xos_thread_ic_enter(entry: u64, stack: u64, boot_info: u64, host_rsp: *mut u64);
    fn xos_thread_ic_resume();
}

/// Creates thread ICs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadFactory;

impl IsolationContextFactory for ThreadFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "a thread of the monitor process running the image natively (no isolation; one at a time)"
    }

    fn init(&self) -> Availability {
        Availability::Available
    }

    fn create(&self, spec: IcSpec) -> Result<Box<dyn IsolationContext>, IcfError> {
        spec.check_no_virtio(NAME)?;
        Ok(Box::new(ThreadIc {
            spec,
            interrupter: Interrupter::new(),
            resume: None,
            stopped_at: None,
        }))
    }

    fn convert_from_process(
        &self,
        image: ProcessImage,
    ) -> Result<Box<dyn IsolationContext>, IcfError> {
        image.validate()?;
        image.spec.check_no_virtio(NAME)?;
        Ok(Box::new(ThreadIc {
            spec: image.spec,
            interrupter: Interrupter::new(),
            resume: Some(Box::new(image.state)),
            stopped_at: None,
        }))
    }
}

/// One thread IC.
pub struct ThreadIc {
    spec: IcSpec,
    interrupter: Interrupter,
    /// An execution flow carried over from another IC, continued by `run`.
    resume: Option<Box<EfState>>,
    /// The execution flow, when the last run stopped at a safe point.
    stopped_at: Option<Box<EfState>>,
}

/// The state of the guest running on this thread.
struct Running {
    mem: GuestMemoryMmap,
    hypercalls: Hypercalls,
    /// Host stack pointer saved by `xos_thread_ic_enter`.
    host_rsp: u64,
    /// How it ended (set by the handlers).
    exit: Option<GuestExit>,
    mem_size: u64,
    /// Set by the stopping thread; read by the stop signal's handler.
    stop: Arc<AtomicU8>,
    /// The run's handle: whether a safe-point stop was requested.
    control: Interrupter,
    /// Registers of a carried-over execution flow, loaded by the handler
    /// of the fault that entering at address 0 raises.
    resume_regs: Option<GuestRegs>,
    /// The execution flow, when it stopped at a safe point.
    pivot: Option<Box<EfState>>,
}

thread_local! {
    static RUNNING: Cell<*mut Running> = const { Cell::new(ptr::null_mut()) };
}

/// How often a stopping thread IC is signalled again.
const RESIGNAL: Duration = Duration::from_millis(10);

/// One thread IC per process at a time (the fixed layout).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Signal that stops a running thread IC.
fn stop_signal() -> i32 {
    vmm_sys_util_sigrtmin() + 3
}

fn vmm_sys_util_sigrtmin() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::__libc_current_sigrtmin() }
}

/// Handlers this module replaced, to pass on faults of other threads.
static mut PREVIOUS: [Option<libc::sigaction>; 32] = [None; 32];

fn install_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for sig in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
            stop_signal(),
        ] {
            // SAFETY: installs `on_signal` with the SA_SIGINFO signature,
            // on the alternate stack, remembering the previous handler;
            // done once, before any thread IC runs.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, &sa, &mut old);
                if (sig as usize) < 32 {
                    (*ptr::addr_of_mut!(PREVIOUS))[sig as usize] = Some(old);
                }
            }
        }
    });
}

/// Hands a fault of a thread that runs no guest to the handler that was
/// there before (Rust's stack-overflow detection, or the default action).
///
/// # Safety
/// Called from a signal handler with the kernel's arguments.
unsafe fn pass_on(sig: i32, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: PREVIOUS is written once before any handler can run.
    let previous = unsafe {
        (*ptr::addr_of!(PREVIOUS))
            .get(sig as usize)
            .copied()
            .flatten()
    };
    match previous {
        Some(old) if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN => {
            if old.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler has this signature.
                let f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(old.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: the previous handler has this signature.
                let f: extern "C" fn(i32) = unsafe { std::mem::transmute(old.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // SAFETY: restoring the default action and returning re-raises
            // the fault with its default effect.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
}

/// Ends the guest: returning from the handler resumes the host.
fn leave(running: &mut Running, gregs: &mut [libc::greg_t; 23], exit: GuestExit) {
    running.exit = Some(exit);
    gregs[libc::REG_RSP as usize] = running.host_rsp as i64;
    gregs[libc::REG_RIP as usize] = xos_thread_ic_resume as *const () as i64;
}

fn regs_of(gregs: &[libc::greg_t; 23], addr: u64) -> GuestRegs {
    regs_from_context(gregs, addr)
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let running = RUNNING.with(Cell::get);
    if running.is_null() {
        if sig != stop_signal() {
            // SAFETY: forwarding the kernel's arguments.
            unsafe { pass_on(sig, info, ctx) };
        }
        return;
    }
    // SAFETY: RUNNING points at this thread's live state while its guest
    // runs (set before entering, cleared after resuming); the context is
    // the kernel's for this SA_SIGINFO handler.
    unsafe {
        let running = &mut *running;
        let uc = &mut *(ctx as *mut libc::ucontext_t);
        let gregs = &mut uc.uc_mcontext.gregs;
        let rip = gregs[libc::REG_RIP as usize] as u64;
        if sig == stop_signal() {
            if rip >= running.mem_size {
                // Host code: a hypercall (maybe a host function waiting on
                // a channel) or the entry trampoline. Jumping out of it
                // would skip its destructors and locks; tell host waits to
                // give up instead. The doorbell path ends the run when the
                // hypercall returns, and the stopper repeats the signal
                // until the guest is gone.
                vmm::interrupt::request_stop_here();
                return;
            }
            let exit = stop_exit(running, gregs);
            let _ = running.hypercalls.drain_output(&running.mem);
            leave(running, gregs, exit);
            return;
        }
        let addr = (*info).si_addr() as u64;
        if sig == libc::SIGSEGV && rip == 0 {
            if let Some(regs) = running.resume_regs.take() {
                // The entry trampoline jumped to 0 on purpose: continue the
                // carried-over execution flow with all its registers.
                load_into_context(gregs, &regs);
                return;
            }
        }
        let fault = |gregs: &[libc::greg_t; 23]| {
            let fault = match sig {
                libc::SIGILL => Fault::Exception(Exception {
                    vector: 6,
                    error_code: None,
                }),
                libc::SIGFPE => Fault::Exception(Exception {
                    vector: 0,
                    error_code: None,
                }),
                s => Fault::Signal { signal: s, addr },
            };
            GuestExit::Faulted {
                fault,
                regs: Box::new(regs_of(gregs, addr)),
                mem_size: running.mem_size,
            }
        };
        if sig != libc::SIGSEGV || addr & !0xfff != DOORBELL {
            let exit = fault(gregs);
            let _ = running.hypercalls.drain_output(&running.mem);
            leave(running, gregs, exit);
            return;
        }
        let mut code = [0u8; 15];
        let decoded = running
            .mem
            .read_slice(&mut code, GuestAddress(rip))
            .ok()
            .and_then(|()| decode_doorbell_write(&code));
        let Some((reg, len)) = decoded else {
            let exit = fault(gregs);
            leave(running, gregs, exit);
            return;
        };
        let number = gregs[GREGS[reg]] as u32;
        let exit = match running.hypercalls.handle(&running.mem, number) {
            Ok(Next::Resume) => None,
            Ok(Next::SafePoint) if running.control.safe_point_requested() => {
                let mut regs = regs_of(gregs, 0);
                regs.rip = rip + len as u64;
                match EfState::capture(&running.mem, running.mem_size, regs) {
                    Ok(state) => {
                        running.pivot = Some(Box::new(state));
                        Some(GuestExit::SafePoint)
                    }
                    Err(e) => Some(fault_text(&e.to_string())),
                }
            }
            Ok(Next::SafePoint) => running
                .hypercalls
                .ret(&running.mem, 0)
                .err()
                .map(|e| fault_text(&e.to_string())),
            Ok(Next::Ready) => running
                .hypercalls
                .ret(&running.mem, 0)
                .err()
                .map(|e| fault_text(&e.to_string())),
            Ok(Next::Exit(code)) => Some(GuestExit::Exited(code)),
            Ok(Next::Abort(message)) => Some(GuestExit::Aborted(message)),
            Ok(Next::Fault(f)) => Some(GuestExit::Faulted {
                fault: f,
                regs: Box::new(regs_of(gregs, addr)),
                mem_size: running.mem_size,
            }),
            Err(e) => Some(fault_text(&e.to_string())),
        };
        let exit = match exit {
            // A stop that arrived while the hypercall was served.
            None if running.stop.load(Ordering::SeqCst) != 0 => {
                let _ = running.hypercalls.drain_output(&running.mem);
                Some(stop_exit(running, gregs))
            }
            e => e,
        };
        match exit {
            None => gregs[libc::REG_RIP as usize] = (rip + len as u64) as i64,
            Some(exit) => leave(running, gregs, exit),
        }
    }
}

/// How a stopped run ends: killed, or out of time.
fn stop_exit(running: &Running, gregs: &[libc::greg_t; 23]) -> GuestExit {
    match running.stop.load(Ordering::SeqCst) {
        2 => GuestExit::Killed,
        _ => GuestExit::TimedOut {
            limit: Duration::ZERO,
            regs: Box::new(regs_of(gregs, 0)),
        },
    }
}

fn fault_text(text: &str) -> GuestExit {
    GuestExit::Faulted {
        fault: Fault::UnexpectedExit(text.to_owned()),
        regs: Box::default(),
        mem_size: 0,
    }
}

/// Runs the guest on the calling thread until it ends.
fn run_on_this_thread(
    spec: &IcSpec,
    resume: Option<&EfState>,
    mut io: GuestIo,
    stop: Arc<AtomicU8>,
    control: Interrupter,
) -> Result<(GuestExit, Option<Box<EfState>>), String> {
    vmm::interrupt::clear_stop_request();
    let mem_size = match resume {
        Some(state) => state.mem_size,
        None => vmm::memory::checked_size(spec.mem_size).map_err(|e| e.to_string())?,
    };
    let mem = map_guest(mem_size)?;
    let setup = BootSetup {
        program: &spec.program,
        args: &spec.args,
        env: &spec.env,
    };
    let laid_out = match resume {
        Some(state) => state
            .restore_into(&mem)
            .map_err(|e| e.to_string())
            // Code is always the image's own (W^X).
            .and_then(|()| {
                spec.program
                    .reload_read_only(&mem)
                    .map_err(|e| e.to_string())
            })
            .and_then(|()| GuestLayout::read(&mem, mem_size).map_err(|e| e.to_string())),
        None => GuestLayout::prepare(&mem, mem_size, true, &setup, &mut *io.stdin)
            .map_err(|e| e.to_string()),
    };
    let laid_out = laid_out.and_then(|layout| {
        crate::trap::protect_image(spec.program.segments())?;
        Ok(layout)
    });
    let prepared = laid_out.and_then(|layout| {
        let Some(end) = &spec.window else {
            return Ok((layout, mem, None, None));
        };
        let window = end.window().map_err(|e| e.to_string())?;
        vmm::layout::write_window_info(&mem, &window.info()).map_err(|e| e.to_string())?;
        let (mem, mapping) = window
            .map_at_fixed_address(mem)
            .map_err(|e| e.to_string())?;
        Ok((layout, mem, Some(window), Some(mapping)))
    });
    let (layout, mem, window, window_mapping) = match prepared {
        Ok(p) => p,
        Err(e) => {
            unmap_guest(mem_size);
            return Err(e);
        }
    };
    let mut running = Box::new(Running {
        mem,
        hypercalls: Hypercalls::new(layout, io, spec.host_functions.clone())
            .with_read_only(spec.program.segments())
            .with_output_limit(spec.output_limit)
            .with_window(window),
        host_rsp: 0,
        exit: None,
        mem_size,
        stop,
        control,
        resume_regs: resume.map(|state| state.regs),
        pivot: None,
    });
    // An alternate stack for the handlers: the guest's stack is the
    // guest's business.
    const STACK: usize = 256 << 10;
    let mut alt = vec![0u8; STACK];
    let ss = libc::stack_t {
        ss_sp: alt.as_mut_ptr().cast(),
        ss_flags: 0,
        ss_size: STACK,
    };
    let mut old_ss: libc::stack_t = libc::stack_t {
        ss_sp: ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    };
    // SAFETY: `alt` outlives the guest's run; the old stack is restored below.
    unsafe { libc::sigaltstack(&ss, &mut old_ss) };
    let raw: *mut Running = &mut *running;
    RUNNING.with(|r| r.set(raw));
    // SAFETY: the guest's memory is mapped and set up; `host_rsp` lives in
    // the boxed state until after the guest has left through
    // `xos_thread_ic_resume`, which restores this frame.
    // A carried-over execution flow enters at 0, whose fault loads its
    // registers (see `on_signal`).
    let entry = if resume.is_some() {
        0
    } else {
        spec.program.entry()
    };
    unsafe {
        xos_thread_ic_enter(
            entry,
            layout::STACK_TOP,
            layout::BOOT_INFO,
            ptr::addr_of_mut!((*raw).host_rsp),
        )
    };
    RUNNING.with(|r| r.set(ptr::null_mut()));
    // SAFETY: restores the alternate stack this thread had.
    unsafe { libc::sigaltstack(&old_ss, ptr::null_mut()) };
    drop(alt);
    let exit = running.exit.take();
    let pivot = running.pivot.take();
    drop(running);
    drop(window_mapping);
    unmap_guest(mem_size);
    exit.map(|exit| (exit, pivot))
        .ok_or_else(|| "the guest left without a result".to_owned())
}

impl IsolationContext for ThreadIc {
    fn kind(&self) -> &'static str {
        NAME
    }

    fn run(&mut self, io: GuestIo) -> Result<RunOutcome, IcfError> {
        install_handlers();
        let interrupter = std::mem::take(&mut self.interrupter);
        self.interrupter = Interrupter::new();
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(end) = &self.spec.window {
            end.run_starting(std::process::id());
        }
        let start = Instant::now();
        let spec = self.spec.clone();
        let resume = self.resume.clone();
        let stop = Arc::new(AtomicU8::new(0));
        let thread_stop = stop.clone();
        let control = interrupter.clone();
        let handle = std::thread::Builder::new()
            .name("xos-thread-ic".into())
            .spawn(move || run_on_this_thread(&spec, resume.as_deref(), io, thread_stop, control))
            .map_err(|e| IcfError::Unavailable {
                icf: NAME,
                reason: format!("cannot start the thread: {e}"),
            })?;
        let deadline = self.spec.timeout.map(|t| start + t);
        let thread = {
            use std::os::unix::thread::JoinHandleExt;
            handle.as_pthread_t()
        };
        let mut last_signal: Option<Instant> = None;
        while !handle.is_finished() {
            let reason = match interrupter.reason() {
                StopReason::None if deadline.is_some_and(|d| Instant::now() >= d) => {
                    StopReason::Timeout
                }
                r => r,
            };
            if reason != StopReason::None && stop.load(Ordering::SeqCst) == 0 {
                stop.store(
                    if reason == StopReason::Kill { 2 } else { 1 },
                    Ordering::SeqCst,
                );
                last_signal = None;
            }
            // Signal until the thread is done: a signal that lands in host
            // code (a hypercall) only asks it to stop (see `on_signal`).
            if stop.load(Ordering::SeqCst) != 0
                && last_signal.is_none_or(|t: Instant| t.elapsed() >= RESIGNAL)
            {
                last_signal = Some(Instant::now());
                // SAFETY: the thread is alive (not finished); the signal's
                // handler is installed.
                unsafe { libc::pthread_kill(thread, stop_signal()) };
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let joined = handle.join();
        let paused = matches!(&joined, Ok(Ok((_, Some(_)))));
        if let Some(end) = &self.spec.window {
            if paused {
                end.run_paused();
            } else {
                end.run_ended();
            }
        }
        let result = joined.map_err(|_| IcfError::Unavailable {
            icf: NAME,
            reason: "the IC's thread panicked".into(),
        })?;
        let (mut exit, pivot) =
            result.map_err(|reason| IcfError::Unavailable { icf: NAME, reason })?;
        self.stopped_at = pivot;
        if let GuestExit::TimedOut { limit, .. } = &mut exit {
            *limit = self.spec.timeout.unwrap_or_default();
        }
        Ok(RunOutcome {
            exit,
            stats: RunStats::default(),
            guest_time: start.elapsed(),
            snapshot: None,
            pivot: None,
        })
    }

    fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.spec.timeout = timeout;
    }

    fn into_process_image(self: Box<Self>) -> Result<ProcessImage, IcfError> {
        match self.stopped_at {
            Some(state) => Ok(ProcessImage {
                state: *state,
                spec: self.spec,
            }),
            None => Err(IcfError::NotAtSafePoint { icf: NAME }),
        }
    }

    fn set_host_functions(&mut self, functions: vmm::HostFunctions) {
        self.spec.host_functions = functions;
    }
}
