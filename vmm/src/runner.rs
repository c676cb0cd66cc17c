//! Running a program to completion: the exit loop, timeouts, and the
//! division of a run's work between threads.
//!
//! The caller's thread creates the VM and prepares guest memory; an
//! executor thread (under the vCPU seccomp filter, see [`crate::executor`])
//! creates the vCPU meanwhile, registers the memory, runs the guest and
//! serves its hypercalls; the caller waits with the time limit. The result
//! goes back before the VM is handed to the reaper ([`crate::reaper`]) for
//! tear-down, so the ~0.3-0.6 ms (sometimes several ms) it takes to close a
//! VM is off the caller's path.

use crate::arch;
use crate::arch::cpu::Privilege;
use crate::arch::interrupts::{has_error_code, STUBS_SIZE, STUB_PUSHED};
use crate::executor::{self, ExecutorError};
use crate::exit::{Exception, Fault, GuestExit, GuestRegs, RunStats};
use crate::host_fn::HostFunctions;
use crate::hypercall::{HypercallError, Hypercalls, Next};
use crate::interrupt::{install_handler, InterruptError, Interrupter, StopReason};
use crate::io::GuestIo;
use crate::layout::{BootSetup, GuestLayout, LayoutError};
use crate::loader::Program;
use crate::machine::{create_vcpu, create_vm, prepare_memory, Machine, MachineError, VmShell};
use crate::pivot::{EfState, PivotError};
use crate::reaper;
use crate::seccomp::SeccompError;
use crate::snapshot::{Snapshot, SnapshotError};
use crate::window::{SharedWindow, WindowError};
use kvm_ioctls::VcpuExit;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;
use xos_abi::{layout, DOORBELL, FAULT_PORT};

/// Host-side failures of a run (the guest's own failures are
/// [`GuestExit`] values, not errors).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Creating the VM failed.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// Preparing guest memory failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Serving a hypercall failed on the host side.
    #[error(transparent)]
    Hypercall(#[from] HypercallError),
    /// The seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// No executor thread could run the guest.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// Taking or restoring a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The channel window could not be set up.
    #[error(transparent)]
    Window(#[from] WindowError),
    /// An execution flow's state could not be captured or restored.
    #[error(transparent)]
    Pivot(#[from] PivotError),
    /// A long-lived VM cannot run.
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    /// A VM with EPT views cannot do what was asked.
    #[error(transparent)]
    View(#[from] crate::view_host::ViewHostError),
    /// The kick signal could not be installed.
    #[error(transparent)]
    Interrupt(#[from] InterruptError),
    /// `KVM_RUN` failed.
    #[error("KVM_RUN failed: {0}")]
    Run(kvm_ioctls::Error),
    /// The vCPU thread could not be started.
    #[error("cannot start the vCPU thread: {0}")]
    Spawn(std::io::Error),
    /// The vCPU thread died without reporting.
    #[error("the vCPU thread ended without a result (it panicked: a bug in xos-vmm or in a host function)")]
    VcpuThreadLost,
}

/// What to run and how.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Guest memory in bytes (rounded up to 2 MiB).
    pub mem_size: u64,
    /// argv, including argv[0].
    pub args: Vec<Vec<u8>>,
    /// Environment, "KEY=VALUE".
    pub env: Vec<Vec<u8>>,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Functions the guest may call.
    pub host_functions: HostFunctions,
    /// End the run with a fault when the guest writes more than this many
    /// bytes of output (stdout and stderr together). Embedders that collect
    /// output in memory should set it.
    pub output_limit: Option<u64>,
    /// Stop at the guest's ready point (`READY`) and capture a snapshot
    /// there ([`RunOutcome::snapshot`]) instead of answering and resuming.
    pub stop_at_ready: bool,
    /// Run on a vCPU thread with the seccomp filter (on by default). Off
    /// runs on a fresh unfiltered thread, for host functions that need
    /// syscalls the filter refuses.
    pub seccomp: bool,
    /// Memory shared with a peer, mapped at `xos_abi::WINDOW` (the
    /// channel window). Not with `stop_at_ready` or snapshots.
    pub window: Option<SharedWindow>,
    /// A device on the MMIO page at `xos_abi::VIRTIO_MMIO` (the virtio
    /// channel). Not with snapshots.
    pub device: Option<crate::mmio::Device>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            mem_size: crate::memory::DEFAULT_MEM_SIZE,
            args: vec![b"guest".to_vec()],
            env: Vec::new(),
            timeout: None,
            host_functions: HostFunctions::new(),
            output_limit: None,
            stop_at_ready: false,
            seccomp: true,
            window: None,
            device: None,
        }
    }
}

/// The result of a run.
#[derive(Debug)]
pub struct RunOutcome {
    /// How the guest ended.
    pub exit: GuestExit,
    /// Counters.
    pub stats: RunStats,
    /// Wall time from entry to the guest's end.
    pub guest_time: Duration,
    /// The guest's state at its ready point, when the run was asked to stop
    /// there and it did.
    pub snapshot: Option<Box<Snapshot>>,
    /// The execution flow's state when the run ended at a safe point
    /// ([`GuestExit::SafePoint`]).
    pub pivot: Option<Box<EfState>>,
}

/// Called each time a hypercall has been served and the guest is about to
/// resume (benchmarks use it to time round trips on the real path).
pub type ResumeHook = Box<dyn FnMut() + Send>;

/// A machine with a program loaded, ready to enter.
pub struct PreparedRun {
    machine: Machine,
    hypercalls: Hypercalls,
    options: LoopControl,
    seccomp: bool,
}

/// How the exit loop behaves.
#[derive(Default)]
pub(crate) struct LoopControl {
    pub(crate) timeout: Option<Duration>,
    pub(crate) stop_at_ready: bool,
    pub(crate) on_resume: Option<ResumeHook>,
    pub(crate) device: Option<crate::mmio::Device>,
}

impl LoopControl {
    fn from_config(config: &RunConfig) -> Self {
        LoopControl {
            timeout: config.timeout,
            stop_at_ready: config.stop_at_ready,
            on_resume: None,
            device: config.device.clone(),
        }
    }
}

impl PreparedRun {
    /// Creates the VM and writes everything into guest memory.
    pub fn new(program: &Program, config: &RunConfig, mut io: GuestIo) -> Result<Self, RunError> {
        if config.window.is_some() || config.device.is_some() {
            return Err(WindowError::Unsupported("be prepared ahead (use run_program)").into());
        }
        let mut machine = Machine::new(config.mem_size, Privilege::User)?;
        let setup = BootSetup {
            program,
            args: &config.args,
            env: &config.env,
        };
        let layout = GuestLayout::prepare(
            machine.memory(),
            machine.mem_size(),
            true,
            &setup,
            &mut *io.stdin,
        )?;
        machine.set_entry(program.entry(), layout::STACK_TOP, layout::BOOT_INFO);
        Ok(PreparedRun {
            machine,
            hypercalls: Hypercalls::new(layout, io, config.host_functions.clone())
                .with_output_limit(config.output_limit),
            options: LoopControl::from_config(config),
            seccomp: config.seccomp,
        })
    }

    /// Restores `snapshot` (taken at the guest's ready point) into a fresh
    /// VM and prepares it to continue there with `io`: new stdin in the
    /// stdin buffer, an empty output buffer, and `READY` answering 1.
    /// `config.mem_size`, `args` and `env` are ignored: they are the
    /// snapshot's.
    pub fn from_snapshot(
        snapshot: &Snapshot,
        config: &RunConfig,
        mut io: GuestIo,
    ) -> Result<Self, RunError> {
        if config.window.is_some() || config.device.is_some() {
            return Err(WindowError::Unsupported("start from a snapshot").into());
        }
        let machine = snapshot.restore()?;
        let layout = GuestLayout::resume(machine.memory(), machine.mem_size(), &mut *io.stdin)?;
        Ok(PreparedRun {
            machine,
            hypercalls: Hypercalls::new(layout, io, config.host_functions.clone())
                .with_output_limit(config.output_limit),
            options: LoopControl::from_config(config),
            seccomp: config.seccomp,
        })
    }

    /// Installs a hook called whenever a hypercall has been served and the
    /// guest resumes.
    pub fn on_resume(&mut self, hook: ResumeHook) {
        self.options.on_resume = Some(hook);
    }

    /// Runs the guest on the calling thread until it ends. `interrupter`
    /// stops it from elsewhere. Returns the machine too, so the caller
    /// decides where it is torn down.
    pub fn run_here(
        mut self,
        interrupter: &Interrupter,
    ) -> (Result<RunOutcome, RunError>, Machine) {
        let attached = interrupter.attach(self.machine.immediate_exit_ptr());
        let start = Instant::now();
        let result = run_loop(
            &mut self.machine,
            &mut self.hypercalls,
            interrupter,
            &mut self.options,
        );
        let guest_time = start.elapsed();
        drop(attached);
        // A virtine's VM ends with its run: its device lets go of it.
        if let Some(device) = &self.options.device {
            device.0.deactivate();
        }
        let outcome = result.and_then(|(exit, exits)| {
            let snapshot = if exit == GuestExit::Ready {
                // The doorbell write is complete only once KVM_RUN is
                // re-entered; do that (returning at once) before capturing.
                self.machine.complete_pending_io()?;
                Some(Box::new(Snapshot::capture(&self.machine)?))
            } else {
                None
            };
            let pivot = if exit == GuestExit::SafePoint {
                // As above: RIP moves past the doorbell write.
                self.machine.complete_pending_io()?;
                let regs = self.machine.registers()?;
                Some(Box::new(EfState::capture(
                    self.machine.memory(),
                    self.machine.mem_size(),
                    regs,
                )?))
            } else {
                None
            };
            Ok(RunOutcome {
                exit,
                stats: RunStats {
                    exits,
                    hypercalls: self.hypercalls.count,
                },
                guest_time,
                snapshot,
                pivot,
            })
        });
        (outcome, self.machine)
    }

    /// Runs the guest on an executor thread (under the vCPU seccomp filter),
    /// waits for it with the time limit, and leaves the VM's tear-down to
    /// the reaper, after the result is back.
    pub fn run(self, interrupter: &Interrupter) -> Result<RunOutcome, RunError> {
        install_handler()?;
        reaper::start();
        let (tx, rx) = mpsc::sync_channel(1);
        let timeout = self.options.timeout;
        let thread_interrupter = interrupter.clone();
        dispatch(self.seccomp, move || {
            let (result, machine) = self.run_here(&thread_interrupter);
            let _ = tx.send(result);
            reaper::dispose(machine);
        })?;
        wait_for_result(&rx, timeout, interrupter)
    }
}

/// Registers the run's device doorbell, if it has one, with `vm`'s KVM
/// (`KVM_IOEVENTFD`), so the guest's notify writes signal the device's
/// eventfd in the kernel instead of exiting to the monitor.
pub(crate) fn attach_doorbell(vm: &kvm_ioctls::VmFd, config: &RunConfig) -> Result<(), RunError> {
    let Some(bell) = config.device.as_ref().and_then(|d| d.0.doorbell()) else {
        return Ok(());
    };
    let addr = kvm_ioctls::IoEventAddress::Mmio(xos_abi::VIRTIO_MMIO + bell.offset);
    vm.register_ioevent(&bell.event, &addr, kvm_ioctls::NoDatamatch)
        .map_err(|source| {
            RunError::from(MachineError::Ioctl {
                op: "KVM_IOEVENTFD (the virtio device's notify register)",
                source,
            })
        })
}

/// Adds the run's window and device to freshly laid-out guest memory:
/// page tables, `BootInfo` and, for the window, a memory region.
pub(crate) fn attach_extras(
    mem: GuestMemoryMmap,
    config: &RunConfig,
) -> Result<GuestMemoryMmap, RunError> {
    if let Some(device) = &config.device {
        arch::paging::write_virtio_page(&mem).map_err(MachineError::from)?;
        crate::layout::write_devices(&mem, xos_abi::DEVICE_VIRTIO_CHANNEL)?;
        device.0.activate(mem.clone());
    }
    Ok(match &config.window {
        Some(w) => {
            crate::layout::write_window_info(&mem, &w.info())?;
            w.add_to_vm_memory(mem)?
        }
        None => mem,
    })
}

/// Continues an execution flow stopped at a safe point (in any kind of
/// IC) in a fresh VM: its memory and registers from `state`, the pending
/// `SAFE_POINT` answering 1. Of `config`, the memory size and arguments
/// are ignored (they are the state's); the window, if any, is mapped again.
pub fn run_from_state(
    state: &EfState,
    config: &RunConfig,
    io: GuestIo,
    interrupter: &Interrupter,
) -> Result<RunOutcome, RunError> {
    install_handler()?;
    reaper::start();
    state.validate()?;
    let mem_size = state.mem_size;
    let vm = create_vm()?;
    attach_doorbell(&vm, config)?;
    let vcpu = create_vcpu(&vm)?;
    let mem = prepare_memory(mem_size)?;
    state.restore_into(&mem)?;
    state.protect_code(&mem)?;
    let layout = GuestLayout::read(&mem, mem_size)?;
    let mem = attach_extras(mem, config)?;
    let shell = VmShell::register(vm, mem, mem_size)?;
    let mut machine = Machine::assemble(shell, vcpu, Privilege::User);
    machine.set_user_registers(&state.regs);
    PreparedRun {
        machine,
        hypercalls: Hypercalls::new(layout, io, config.host_functions.clone())
            .with_output_limit(config.output_limit)
            .with_window(config.window.clone()),
        options: LoopControl::from_config(config),
        seccomp: config.seccomp,
    }
    .run(interrupter)
}

/// Runs `job` on a filtered executor thread, or on a fresh unfiltered thread
/// when `seccomp` is off.
fn dispatch(seccomp: bool, job: impl FnOnce() + Send + 'static) -> Result<(), RunError> {
    if seccomp {
        executor::submit(Box::new(job))?;
    } else {
        std::thread::Builder::new()
            .name("xos-vcpu-unfiltered".into())
            .spawn(move || {
                crate::interrupt::unblock_kick_signal();
                job()
            })
            .map_err(RunError::Spawn)?;
    }
    Ok(())
}

/// Waits for a run's result, stopping the guest when `timeout` passes.
pub(crate) fn wait_for_result(
    rx: &mpsc::Receiver<Result<RunOutcome, RunError>>,
    timeout: Option<Duration>,
    interrupter: &Interrupter,
) -> Result<RunOutcome, RunError> {
    let received = match timeout {
        Some(limit) => match rx.recv_timeout(limit) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                interrupter.stop(StopReason::Timeout);
                match rx.recv_timeout(STOP_GRACE) {
                    Ok(r) => Ok(r),
                    // Stuck in code the kick cannot interrupt (an
                    // embedder's host function): report the timeout now;
                    // the vCPU thread ends the run when that code returns.
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        return Ok(RunOutcome {
                            exit: GuestExit::TimedOut {
                                limit,
                                regs: Box::default(),
                            },
                            stats: RunStats::default(),
                            guest_time: limit + STOP_GRACE,
                            snapshot: None,
                            pivot: None,
                        })
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => Err(mpsc::RecvError),
                }
            }
            Ok(r) => Ok(r),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(mpsc::RecvError),
        },
        None => rx.recv(),
    };
    received.map_err(|_| RunError::VcpuThreadLost)?
}

/// How long a caller waits for a stopped guest's run to end before it
/// reports the timeout without it.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What the caller hands the executor once guest memory is ready.
enum Handover {
    /// Memory is prepared: register it, build the machine and run.
    Ready {
        mem: GuestMemoryMmap,
        layout: GuestLayout,
        io: GuestIo,
    },
    /// Preparing failed: drop the VM (off the caller's path).
    Abandon,
}

/// Creates a VM for `program`, runs it to completion on a vCPU thread, and
/// returns how it ended.
///
/// The cold path runs on two threads at once: right after `KVM_CREATE_VM`
/// an executor creates the vCPU while this thread allocates guest memory,
/// writes the system area and loads the image (no VM ioctl); then the
/// executor registers the memory, enters the guest, and tears the VM down
/// after the result is back.
pub fn run_program(
    program: &Program,
    config: &RunConfig,
    mut io: GuestIo,
    interrupter: &Interrupter,
) -> Result<RunOutcome, RunError> {
    install_handler()?;
    reaper::start();
    let mem_size = crate::memory::checked_size(config.mem_size).map_err(MachineError::from)?;
    if (config.window.is_some() || config.device.is_some()) && config.stop_at_ready {
        return Err(WindowError::Unsupported("stop at its ready point for a snapshot").into());
    }
    let window = config.window.clone();
    let vm = create_vm()?;
    attach_doorbell(&vm, config)?;
    let (handover_tx, handover_rx) = mpsc::sync_channel::<Handover>(1);
    let (result_tx, result_rx) = mpsc::sync_channel(1);
    let thread_interrupter = interrupter.clone();
    let entry = program.entry();
    let host_functions = config.host_functions.clone();
    let output_limit = config.output_limit;
    let timeout = config.timeout;
    let options = LoopControl::from_config(config);
    dispatch(config.seccomp, move || {
        let vcpu = create_vcpu(&vm);
        let Ok(Handover::Ready { mem, layout, io }) = handover_rx.recv() else {
            return;
        };
        let machine = vcpu.and_then(|vcpu| {
            let shell = VmShell::register(vm, mem, mem_size)?;
            Ok(Machine::assemble(shell, vcpu, Privilege::User))
        });
        let mut machine = match machine {
            Ok(m) => m,
            Err(e) => {
                let _ = result_tx.send(Err(e.into()));
                return;
            }
        };
        machine.set_entry(entry, layout::STACK_TOP, layout::BOOT_INFO);
        let run = PreparedRun {
            machine,
            hypercalls: Hypercalls::new(layout, io, host_functions)
                .with_output_limit(output_limit)
                .with_window(window),
            options,
            seccomp: true,
        };
        let (result, machine) = run.run_here(&thread_interrupter);
        let _ = result_tx.send(result);
        reaper::dispose(machine);
    })?;

    let setup = BootSetup {
        program,
        args: &config.args,
        env: &config.env,
    };
    let prepared = prepare_memory(mem_size)
        .map_err(RunError::from)
        .and_then(|mem| {
            let layout = GuestLayout::prepare(&mem, mem_size, true, &setup, &mut *io.stdin)?;
            Ok((attach_extras(mem, config)?, layout))
        });
    match prepared {
        Ok((mem, layout)) => {
            let _ = handover_tx.send(Handover::Ready { mem, layout, io });
        }
        Err(e) => {
            let _ = handover_tx.send(Handover::Abandon);
            return Err(e);
        }
    }
    wait_for_result(&result_rx, timeout, interrupter)
}

fn regs_or_default(machine: &Machine) -> Box<GuestRegs> {
    Box::new(machine.registers().unwrap_or_default())
}

fn faulted(machine: &Machine, fault: Fault) -> GuestExit {
    GuestExit::Faulted {
        fault,
        regs: regs_or_default(machine),
        mem_size: machine.mem_size(),
    }
}

/// The exit loop. Returns how the guest ended and the number of exits.
pub(crate) fn run_loop(
    machine: &mut Machine,
    hypercalls: &mut Hypercalls,
    interrupter: &Interrupter,
    options: &mut LoopControl,
) -> Result<(GuestExit, u64), RunError> {
    run_loop_hooked(machine, hypercalls, interrupter, options, &mut NoHook)
}

/// What an [`ExitHook`] did with a doorbell write.
pub(crate) enum HookAction {
    /// Not its business: the hypercall server handles it.
    Pass,
    /// Handled: resume the guest.
    Resume,
    /// The run ends here, with this exit.
    End(GuestExit),
}

/// A VM with more than the plain ABI (EPT views) sees the exits first.
pub(crate) trait ExitHook {
    /// A doorbell write, before the hypercall server.
    fn doorbell(&mut self, machine: &mut Machine, value: u32) -> Result<HookAction, RunError>;
    /// Every exit, before it is looked at (the guest may have changed
    /// something the monitor follows, such as its EPT view):
    /// [`HookAction::Pass`] to go on with the exit, [`HookAction::End`] to
    /// end the run instead, [`HookAction::Resume`] to resume the guest.
    fn after_exit(&mut self, machine: &mut Machine) -> Result<HookAction, RunError>;
    /// The guest faulted (exception, bad access, triple fault):
    /// [`HookAction::Resume`] when the hook recovered and the guest goes
    /// on, [`HookAction::Pass`] to end the run with `fault`,
    /// [`HookAction::End`] to end it otherwise.
    fn fault(&mut self, machine: &mut Machine, fault: &GuestExit) -> Result<HookAction, RunError>;
    /// The run is being stopped (time limit, kill), before its end is
    /// reported.
    fn interrupted(&mut self, machine: &mut Machine) -> Result<(), RunError>;
}

struct NoHook;

impl ExitHook for NoHook {
    fn doorbell(&mut self, _: &mut Machine, _: u32) -> Result<HookAction, RunError> {
        Ok(HookAction::Pass)
    }
    fn after_exit(&mut self, _: &mut Machine) -> Result<HookAction, RunError> {
        Ok(HookAction::Pass)
    }
    fn fault(&mut self, _: &mut Machine, _: &GuestExit) -> Result<HookAction, RunError> {
        Ok(HookAction::Pass)
    }
    fn interrupted(&mut self, _: &mut Machine) -> Result<(), RunError> {
        Ok(())
    }
}

/// [`run_loop`] with an [`ExitHook`].
pub(crate) fn run_loop_hooked(
    machine: &mut Machine,
    hypercalls: &mut Hypercalls,
    interrupter: &Interrupter,
    options: &mut LoopControl,
    hook: &mut dyn ExitHook,
) -> Result<(GuestExit, u64), RunError> {
    let mut exits = 0u64;
    loop {
        let exit = machine.run();
        exits += 1;
        // Classify without holding the borrow of the kvm_run page.
        let step = match exit {
            Ok(VcpuExit::MmioWrite(DOORBELL, data)) => Step::Hypercall(doorbell_value(data)),
            Ok(VcpuExit::IoOut(FAULT_PORT, data)) => {
                Step::Exception(data.first().copied().unwrap_or(0xff))
            }
            Ok(VcpuExit::IoOut(port, _)) => Step::Fault(Fault::BadPort { port, write: true }),
            Ok(VcpuExit::IoIn(port, _)) => Step::Fault(Fault::BadPort { port, write: false }),
            Ok(VcpuExit::MmioRead(addr, data)) => {
                match (&options.device, crate::mmio::offset_in_page(addr)) {
                    (Some(device), Some(offset)) => {
                        device.0.read(offset, data);
                        Step::Continue
                    }
                    _ => Step::Fault(Fault::UnmappedAccess { addr, write: false }),
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                match (&options.device, crate::mmio::offset_in_page(addr)) {
                    (Some(device), Some(offset)) => {
                        device.0.write(offset, data);
                        Step::Continue
                    }
                    _ => Step::Fault(Fault::UnmappedAccess { addr, write: true }),
                }
            }
            Ok(VcpuExit::Shutdown) => Step::Fault(Fault::TripleFault),
            Ok(VcpuExit::InternalError) => Step::InternalError,
            Ok(VcpuExit::FailEntry(reason, _)) => Step::Fault(Fault::FailedEntry { reason }),
            Ok(VcpuExit::Intr) => Step::Interrupted,
            Ok(other) => Step::Fault(Fault::UnexpectedExit(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR => Step::Interrupted,
            Err(e) if e.errno() == libc::EAGAIN => Step::Continue,
            Err(e) => return Err(RunError::Run(e)),
        };
        match hook.after_exit(machine)? {
            HookAction::Pass => {}
            HookAction::Resume => continue,
            HookAction::End(exit) => return Ok((exit, exits)),
        }
        match step {
            Step::Continue => {}
            Step::Hypercall(number) => match hook.doorbell(machine, number)? {
                HookAction::Resume => {}
                HookAction::End(exit) => return Ok((exit, exits)),
                HookAction::Pass => match hypercalls.handle(machine.memory(), number) {
                    // Host I/O interrupted because the run is being stopped.
                    Err(_) if interrupter.reason() != StopReason::None => {
                        hook.interrupted(machine)?;
                        return Ok((stopped(machine, hypercalls, interrupter, options), exits));
                    }
                    Err(e) => return Err(e.into()),
                    Ok(next) => match next {
                        Next::Resume => {
                            if let Some(hook) = options.on_resume.as_mut() {
                                hook();
                            }
                        }
                        Next::Ready if options.stop_at_ready => {
                            return Ok((GuestExit::Ready, exits))
                        }
                        Next::Ready => {
                            hypercalls.ret(machine.memory(), 0)?;
                        }
                        Next::SafePoint if interrupter.safe_point_requested() => {
                            return Ok((GuestExit::SafePoint, exits))
                        }
                        Next::SafePoint => {
                            hypercalls.ret(machine.memory(), 0)?;
                        }
                        Next::Exit(code) => return Ok((GuestExit::Exited(code), exits)),
                        Next::Abort(message) => return Ok((GuestExit::Aborted(message), exits)),
                        Next::Fault(fault) => {
                            let exit = faulted(machine, fault);
                            match hook.fault(machine, &exit)? {
                                HookAction::Resume => {}
                                HookAction::Pass => return Ok((exit, exits)),
                                HookAction::End(other) => return Ok((other, exits)),
                            }
                        }
                    },
                },
            },
            Step::Exception(vector) => {
                let exit = exception_exit(machine, vector);
                match hook.fault(machine, &exit)? {
                    HookAction::Resume => {}
                    HookAction::Pass => {
                        let _ = hypercalls.drain_output(machine.memory());
                        return Ok((exit, exits));
                    }
                    HookAction::End(other) => return Ok((other, exits)),
                }
            }
            Step::InternalError => {
                let suberror = machine.internal_suberror();
                let exit = faulted(machine, Fault::InternalError { suberror });
                match hook.fault(machine, &exit)? {
                    HookAction::Resume => {}
                    HookAction::Pass => return Ok((exit, exits)),
                    HookAction::End(other) => return Ok((other, exits)),
                }
            }
            Step::Fault(fault) => {
                let exit = faulted(machine, fault);
                match hook.fault(machine, &exit)? {
                    HookAction::Resume => {}
                    HookAction::Pass => {
                        // Deliver what the guest printed before it failed.
                        let _ = hypercalls.drain_output(machine.memory());
                        return Ok((exit, exits));
                    }
                    HookAction::End(other) => return Ok((other, exits)),
                }
            }
            Step::Interrupted => {
                // Clear first, then look: a stop that lands after the look
                // sets the flag again and is seen at the next KVM_RUN.
                machine.clear_immediate_exit();
                if interrupter.reason() != StopReason::None {
                    hook.interrupted(machine)?;
                    return Ok((stopped(machine, hypercalls, interrupter, options), exits));
                }
            }
        }
    }
}

/// How a run that is being stopped ends: timed out (with the guest's
/// registers and what it printed so far) or killed.
fn stopped(
    machine: &Machine,
    hypercalls: &mut Hypercalls,
    interrupter: &Interrupter,
    options: &LoopControl,
) -> GuestExit {
    match interrupter.reason() {
        StopReason::Kill => GuestExit::Killed,
        _ => {
            let _ = hypercalls.drain_output(machine.memory());
            GuestExit::TimedOut {
                limit: options.timeout.unwrap_or_default(),
                regs: regs_or_default(machine),
            }
        }
    }
}

enum Step {
    Continue,
    Hypercall(u32),
    Exception(u8),
    InternalError,
    Fault(Fault),
    Interrupted,
}

/// The value written to the doorbell (1, 2, 4 or 8 bytes; the low 32 bits
/// are the hypercall number).
fn doorbell_value(data: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    let n = data.len().min(4);
    v[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(v)
}

/// Builds the fault report after an exception stub reported `vector`: the
/// registers at the stub, corrected with what the CPU and the stub pushed on
/// the exception stack. The frame is read at the fixed place the stub
/// leaves it (the top of the monitor's exception stack), never at an
/// address taken from guest registers, and only if the vCPU really is
/// inside a stub with the stack pointer the stub produces.
fn exception_exit(machine: &Machine, vector: u8) -> GuestExit {
    let fallback = |machine: &Machine, fault| faulted(machine, fault);
    let Ok((kregs, ksregs)) = machine.kvm_registers() else {
        return fallback(
            machine,
            Fault::Exception(Exception {
                vector,
                error_code: None,
            }),
        );
    };
    let stubs = arch::system::STUBS..arch::system::STUBS + STUBS_SIZE;
    let with_code = has_error_code(vector);
    // SS, RSP, RFLAGS, CS, RIP, [error code], then the stub's RAX, RDX.
    let pushed = 5 * 8 + if with_code { 8 } else { 0 } + STUB_PUSHED;
    let frame_rsp = arch::system::EXCEPTION_STACK_TOP - pushed;
    if ksregs.cs.dpl != 0 || !stubs.contains(&kregs.rip) || kregs.rsp != frame_rsp {
        // Only the monitor's stubs report on the fault port, from exactly
        // this state; anything else is the guest misusing the port.
        return GuestExit::Faulted {
            fault: Fault::BadPort {
                port: FAULT_PORT,
                write: true,
            },
            regs: Box::new(GuestRegs::from_kvm(&kregs, &ksregs)),
            mem_size: machine.mem_size(),
        };
    }
    let mut regs = GuestRegs::from_kvm(&kregs, &ksregs);
    let read = |off: u64| machine.read_u64(frame_rsp + off);
    let error_code = if with_code { read(STUB_PUSHED) } else { None };
    let frame = STUB_PUSHED + if with_code { 8 } else { 0 };
    if let (Some(rdx), Some(rax), Some(rip), Some(cs), Some(rflags), Some(rsp)) = (
        read(0),
        read(8),
        read(frame),
        read(frame + 8),
        read(frame + 16),
        read(frame + 24),
    ) {
        regs.gpr[0] = rax;
        regs.gpr[3] = rdx;
        regs.rip = rip;
        regs.rflags = rflags;
        regs.rsp = rsp;
        regs.cpl = (cs & 3) as u8;
    }
    GuestExit::Faulted {
        fault: Fault::Exception(Exception { vector, error_code }),
        regs: Box::new(regs),
        mem_size: machine.mem_size(),
    }
}
