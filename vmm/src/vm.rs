//! A long-lived VM: booted once, then run as often as its execution flow
//! allows, its vCPU on a thread of its own that keeps the machine between
//! runs (the `vm` ICF; a virtine instead gets a fresh VM per run).
//!
//! The boot path is its own ([`BootSource`]), apart from the virtine's
//! pipelined cold start in `runner`: today it starts the guest at CPL3
//! with the xos ABI, from an image or from an execution flow carried over
//! from another IC; a guest kernel will boot through here later.
//!
//! A run ends where the guest stops: at its exit (the VM is then done), or
//! at its ready point or a safe point, after which the next run continues
//! the same guest in the same VM (the pending `READY` or `SAFE_POINT`
//! answers 0: still the same IC).

use crate::arch::cpu::Privilege;
use crate::exit::{GuestExit, RunStats};
use crate::hypercall::Hypercalls;
use crate::interrupt::{install_handler, Interrupter};
use crate::io::{GuestInput, GuestIo};
use crate::layout::{BootSetup, GuestLayout};
use crate::loader::Program;
use crate::machine::{create_vcpu, create_vm, prepare_memory, Machine, VmShell};
use crate::pivot::EfState;
use crate::runner::{run_loop, wait_for_result, LoopControl, RunConfig, RunError, RunOutcome};
use std::sync::mpsc;
use std::time::Instant;
use xos_abi::layout;

/// Errors of a long-lived VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The guest already ended; a VM runs one execution flow.
    #[error("the VM's guest already ended ({0}); create a new VM IC to run it again")]
    Ended(String),
    /// The VM's thread is gone (it panicked: a bug in xos-vmm or a host
    /// function).
    #[error("the VM's vCPU thread is gone; create a new VM IC")]
    ThreadLost,
}

/// What a long-lived VM boots.
pub enum BootSource<'a> {
    /// An image, from its entry point, with the config's arguments.
    Image(&'a Program),
    /// An execution flow stopped at a safe point in another IC.
    State(&'a EfState),
}

/// One request to the VM's thread.
struct Run {
    io: GuestIo,
    config: RunConfig,
    interrupter: Interrupter,
    reply: mpsc::SyncSender<Result<RunOutcome, RunError>>,
}

/// A booted VM and the thread that owns it.
pub struct LongLivedVm {
    runs: Option<mpsc::Sender<Run>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for LongLivedVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LongLivedVm").finish_non_exhaustive()
    }
}

/// Standard input with nothing buffered before the first run: the guest
/// reads from each run's stdin through `READ_STDIN`.
struct NothingYet;

impl GuestInput for NothingYet {
    fn prefill(&mut self, _: &mut [u8]) -> std::io::Result<(usize, bool)> {
        Ok((0, false))
    }
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Ok(0)
    }
}

/// Creates the VM and puts the guest in it: the VM boot path.
fn boot(source: &BootSource<'_>, config: &RunConfig) -> Result<(Machine, GuestLayout), RunError> {
    let mem_size = match source {
        BootSource::Image(_) => crate::memory::checked_size(config.mem_size)
            .map_err(crate::machine::MachineError::from)?,
        BootSource::State(state) => {
            state.validate()?;
            state.mem_size
        }
    };
    let vm = create_vm()?;
    crate::runner::attach_doorbell(&vm, config)?;
    let vcpu = create_vcpu(&vm)?;
    let mem = prepare_memory(mem_size)?;
    let layout = match source {
        BootSource::Image(program) => {
            let setup = BootSetup {
                program,
                args: &config.args,
                env: &config.env,
            };
            GuestLayout::prepare(&mem, mem_size, true, &setup, &mut NothingYet)?
        }
        BootSource::State(state) => {
            state.restore_into(&mem)?;
            state.protect_code(&mem)?;
            GuestLayout::read(&mem, mem_size)?
        }
    };
    let mem = crate::runner::attach_extras(mem, config)?;
    let shell = VmShell::register(vm, mem, mem_size)?;
    let mut machine = Machine::assemble(shell, vcpu, Privilege::User);
    match source {
        BootSource::Image(program) => {
            machine.set_entry(program.entry(), layout::STACK_TOP, layout::BOOT_INFO)
        }
        BootSource::State(state) => machine.set_user_registers(&state.regs),
    }
    Ok((machine, layout))
}

impl LongLivedVm {
    /// Boots a VM for `source` with `config` (memory size, arguments,
    /// window, seccomp) on a new thread, and returns once it is ready to
    /// run. The vCPU thread takes the seccomp filter after the boot, which
    /// needs VM ioctls the filter refuses.
    pub fn boot(source: BootSource<'_>, config: &RunConfig) -> Result<LongLivedVm, RunError> {
        install_handler()?;
        crate::reaper::start();
        let (machine, layout) = boot(&source, config)?;
        let (runs_tx, runs_rx) = mpsc::channel::<Run>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let seccomp = config.seccomp;
        let window = config.window.clone();
        let device = config.device.clone();
        let thread = std::thread::Builder::new()
            .name("xos-vm".into())
            .spawn(move || {
                if seccomp {
                    if let Err(e) = crate::seccomp::apply_vcpu_filter() {
                        let _ = ready_tx.send(Err(RunError::from(e)));
                        crate::reaper::dispose(machine);
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(()));
                serve(machine, layout, window, device, runs_rx);
            })
            .map_err(RunError::Spawn)?;
        ready_rx.recv().map_err(|_| RunError::VcpuThreadLost)??;
        Ok(LongLivedVm {
            runs: Some(runs_tx),
            thread: Some(thread),
        })
    }

    /// Runs the guest until it stops (see the module documentation), with
    /// `io` as its standard streams and `config`'s time limit, host
    /// functions and output limit.
    pub fn run(
        &self,
        io: GuestIo,
        config: &RunConfig,
        interrupter: &Interrupter,
    ) -> Result<RunOutcome, RunError> {
        let (reply, result) = mpsc::sync_channel(1);
        self.runs
            .as_ref()
            .ok_or(VmError::ThreadLost)?
            .send(Run {
                io,
                config: config.clone(),
                interrupter: interrupter.clone(),
                reply,
            })
            .map_err(|_| VmError::ThreadLost)?;
        wait_for_result(&result, config.timeout, interrupter)
    }
}

impl Drop for LongLivedVm {
    fn drop(&mut self) {
        // The thread ends when its queue closes, and hands the machine to
        // the reaper; a run still going was stopped by its caller's limit.
        self.runs.take();
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// The VM thread: runs the guest whenever asked, until it ends or the VM
/// is dropped.
fn serve(
    mut machine: Machine,
    layout: GuestLayout,
    window: Option<crate::window::SharedWindow>,
    device: Option<crate::mmio::Device>,
    runs: mpsc::Receiver<Run>,
) {
    let mut ended: Option<String> = None;
    let mut pending_answer = false;
    while let Ok(run) = runs.recv() {
        if let Some(exit) = &ended {
            let _ = run.reply.send(Err(VmError::Ended(exit.clone()).into()));
            continue;
        }
        let mut hypercalls = Hypercalls::new(layout, run.io, run.config.host_functions.clone())
            .with_output_limit(run.config.output_limit)
            .with_window(window.clone());
        if pending_answer {
            // The guest stopped in READY or SAFE_POINT: it goes on here, in
            // the same IC.
            if let Err(e) = hypercalls.ret(machine.memory(), 0) {
                let _ = run.reply.send(Err(e.into()));
                continue;
            }
        }
        let mut options = LoopControl {
            timeout: run.config.timeout,
            stop_at_ready: run.config.stop_at_ready,
            on_resume: None,
            device: device.clone(),
        };
        let attached = run.interrupter.attach(machine.immediate_exit_ptr());
        let start = Instant::now();
        let result = run_loop(
            &mut machine,
            &mut hypercalls,
            &run.interrupter,
            &mut options,
        );
        let guest_time = start.elapsed();
        drop(attached);
        let outcome = result.and_then(|(exit, exits)| {
            let pivot = if exit == GuestExit::SafePoint {
                machine.complete_pending_io()?;
                let regs = machine.registers()?;
                Some(Box::new(EfState::capture(
                    machine.memory(),
                    machine.mem_size(),
                    regs,
                )?))
            } else {
                None
            };
            Ok(RunOutcome {
                exit,
                stats: RunStats {
                    exits,
                    hypercalls: hypercalls.count,
                },
                guest_time,
                snapshot: None,
                pivot,
            })
        });
        match &outcome {
            Ok(o) if matches!(o.exit, GuestExit::Ready | GuestExit::SafePoint) => {
                pending_answer = true;
            }
            Ok(o) => ended = Some(o.exit.to_string()),
            Err(e) => ended = Some(e.to_string()),
        }
        let _ = run.reply.send(outcome);
    }
    if let Some(device) = &device {
        device.0.deactivate();
    }
    crate::reaper::dispose(machine);
}
