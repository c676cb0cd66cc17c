//! A VM whose EPT views host several ICs (the `ept-view` ICF): one vCPU on
//! a thread of its own runs one view at a time; a view's execution flow
//! calls its peer view through the trampoline, which moves the vCPU into
//! the peer's memory for the call and back (`crate::view`).
//!
//! Every view is an IC with its own image, memory, registers and run
//! (standard streams, host functions, time limit). A view that serves
//! (`xos_view_serve`) parks: its run stays open, and the monitor enters it
//! only through the trampoline, for calls; once its caller is gone its
//! run resumes with `EPIPE` from `view_serve` and goes on to its end.
//!
//! The monitor checks every switch on this fallback path: it must come
//! from the trampoline's doorbell (RIP), go from a view to its connected
//! peer while that peer is parked, and come back to the caller; a callee
//! makes no hypercall inside a call. A callee that faults, or breaks
//! these rules inside a call, fails alone: the caller's call returns
//! `EPIPE` with scrubbed vector registers, and the callee's own run ends
//! with the fault.

use crate::arch::cpu::Privilege;
use crate::exit::{Fault, GuestExit, GuestRegs, RunStats};
use crate::hypercall::Hypercalls;
use crate::interrupt::{install_handler, Interrupter, StopReason};
use crate::io::{GuestInput, GuestIo};
use crate::layout::{BootSetup, GuestLayout};
use crate::loader::Program;
use crate::machine::{Machine, MachineError};
use crate::pivot::EfState;
use crate::runner::{
    run_loop_hooked, wait_for_result, ExitHook, HookAction, LoopControl, RunConfig, RunError,
    RunOutcome,
};
use crate::view::{
    clean_xsave, switch_target, trampoline_for, SwitchSetup, Switching, Trampoline, ViewError,
    ViewMachine, ViewTable,
};
use crate::window::SharedWindow;
use std::sync::{mpsc, Arc};
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress, GuestRegionMmap};
use xos_abi::layout::{BOOT_INFO, STACK_TOP, VIEW_CONTROL};
use xos_abi::{err, nr, ViewControl};

/// Errors of a VM with views that hosts ICs.
#[derive(Debug, thiserror::Error)]
pub enum ViewHostError {
    /// The views themselves.
    #[error(transparent)]
    View(#[from] ViewError),
    /// Every view of this VM has been handed out.
    #[error("all {0} views of this VM are in use; ICs go to another VM")]
    Full(usize),
    /// The view's IC already ended; a view runs one execution flow.
    #[error("view {view}'s execution flow already ended ({how}); create a new IC")]
    Ended {
        /// The view.
        view: usize,
        /// How it ended.
        how: String,
    },
    /// The view is running or parked already.
    #[error("view {0} is already running (one run at a time per IC)")]
    Busy(usize),
    /// Views are connected before their first run.
    #[error("view {0} has run already; connect views before they run")]
    Started(usize),
    /// The VM's thread is gone.
    #[error("the views' vCPU thread is gone (it panicked: a bug in xos-vmm or a host function)")]
    ThreadLost,
}

/// A view's saved vCPU state.
struct Saved {
    regs: kvm_bindings::kvm_regs,
    sregs: kvm_bindings::kvm_sregs,
    xsave: Box<kvm_bindings::kvm_xsave>,
}

/// One run of a view, waiting or going on.
struct PendingRun {
    io: GuestIo,
    config: RunConfig,
    interrupter: Interrupter,
    reply: mpsc::SyncSender<Result<RunOutcome, RunError>>,
}

/// Where a view's execution flow is.
enum State {
    /// Not handed out yet.
    Free,
    /// An image loaded, never run.
    Loaded { entry: u64 },
    /// Stopped between runs (at its ready point or a safe point).
    Stopped(Box<Saved>),
    /// Carried over from another IC, never run here (its `SAFE_POINT`
    /// already answered in memory).
    Restored(Box<Saved>),
    /// Serving: parked in `view_serve`, its run still open.
    Parked(Box<Saved>, PendingRun),
    /// In a run that called a peer which is not serving yet.
    WaitingForPeer(Box<Saved>, PendingRun, usize),
    /// Done: it exited, faulted or was removed.
    Ended(String),
}

struct Slot {
    state: State,
    layout: Option<GuestLayout>,
    /// The view's channel window, for the window hypercalls.
    window: Option<SharedWindow>,
}

/// What a view starts from.
pub enum ViewSource {
    /// An image, from its entry point.
    Image(Program),
    /// An execution flow stopped at a safe point in another IC: its
    /// pending `SAFE_POINT` answers 1.
    State(Box<EfState>),
}

enum Request {
    Add {
        source: ViewSource,
        args: Vec<Vec<u8>>,
        env: Vec<Vec<u8>>,
        window: Option<(SharedWindow, Arc<GuestRegionMmap>)>,
        reply: mpsc::SyncSender<Result<usize, ViewHostError>>,
    },
    Capture {
        view: usize,
        reply: mpsc::SyncSender<Result<EfState, ViewHostError>>,
    },
    Connect {
        caller: usize,
        callee: usize,
        reply: mpsc::SyncSender<Result<(), ViewHostError>>,
    },
    Run(usize, PendingRun),
    Remove(usize),
}

/// A VM with views hosting up to [`crate::view::MAX_VIEWS`] ICs.
pub struct ViewHost {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    mem_size: u64,
    switching: Switching,
}

impl std::fmt::Debug for ViewHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewHost")
            .field("mem_size", &self.mem_size)
            .field("switching", &self.switching)
            .finish_non_exhaustive()
    }
}

/// Standard input with nothing buffered at load: a view reads through
/// `READ_STDIN` during its runs.
struct NothingYet;

impl GuestInput for NothingYet {
    fn prefill(&mut self, _: &mut [u8]) -> std::io::Result<(usize, bool)> {
        Ok((0, false))
    }
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Ok(0)
    }
}

impl ViewHost {
    /// A VM with `views` views of `mem_size` bytes each and its vCPU
    /// thread (under the vCPU seccomp filter when `seccomp`).
    pub fn new(views: usize, mem_size: u64, seccomp: bool) -> Result<ViewHost, RunError> {
        Self::with_switching(views, mem_size, seccomp, None)
    }

    /// Like [`ViewHost::new`], switching as `switching` says; `None`
    /// picks [`Switching::Vmfunc`] for a pair when `vmfunc-kmod` is loaded
    /// and usable ([`crate::vmfunc::VmfuncDevice::open_usable`]), else [`Switching::Memslot`].
    pub fn with_switching(
        views: usize,
        mem_size: u64,
        seccomp: bool,
        switching: Option<Switching>,
    ) -> Result<ViewHost, RunError> {
        install_handler()?;
        crate::reaper::start();
        let view_error = |e| RunError::from(ViewHostError::View(e));
        let setup = match switching {
            Some(Switching::Memslot) => SwitchSetup::Memslot,
            Some(Switching::EmulatedVmfunc) => SwitchSetup::EmulatedVmfunc,
            Some(Switching::Vmfunc) => SwitchSetup::Vmfunc(
                crate::vmfunc::VmfuncDevice::open_usable()
                    .map_err(|source| view_error(ViewError::Vmfunc { op: "open", source }))?,
            ),
            None if views == 2 => match crate::vmfunc::VmfuncDevice::open_usable() {
                Ok(device) => SwitchSetup::Vmfunc(device),
                Err(_) => SwitchSetup::Memslot,
            },
            None => SwitchSetup::Memslot,
        };
        let mut vm = ViewMachine::with_switching(views, mem_size, Privilege::User, setup)
            .map_err(view_error)?;
        let switching = vm.switching();
        vm.machine().report_registers_on_exit();
        let mem_size = vm.machine().mem_size();
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("xos-views".into())
            .spawn(move || {
                if seccomp {
                    if let Err(e) = crate::seccomp::apply_vcpu_filter() {
                        let _ = ready_tx.send(Err(RunError::from(e)));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(()));
                Host::new(vm).serve(rx);
            })
            .map_err(RunError::Spawn)?;
        ready_rx.recv().map_err(|_| RunError::VcpuThreadLost)??;
        Ok(ViewHost {
            requests: Some(tx),
            thread: Some(thread),
            mem_size,
            switching,
        })
    }

    /// How this VM's views take turns.
    pub fn switching(&self) -> Switching {
        self.switching
    }

    /// Size of each view's memory.
    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    fn send(&self, request: Request) -> Result<(), ViewHostError> {
        self.requests
            .as_ref()
            .ok_or(ViewHostError::ThreadLost)?
            .send(request)
            .map_err(|_| ViewHostError::ThreadLost)
    }

    /// Loads `program` with `args` and `env` into a free view; returns its
    /// number.
    pub fn add(
        &self,
        program: &Program,
        args: &[Vec<u8>],
        env: &[Vec<u8>],
    ) -> Result<usize, ViewHostError> {
        self.add_from(ViewSource::Image(program.clone()), args, env, None)
    }

    /// Puts `source` into a free view, with `window` (one side of a ring
    /// channel) as its channel window; returns the view's number.
    pub fn add_from(
        &self,
        source: ViewSource,
        args: &[Vec<u8>],
        env: &[Vec<u8>],
        window: Option<SharedWindow>,
    ) -> Result<usize, ViewHostError> {
        // Mapped here: the vCPU thread's filter forbids dup and mmap of a
        // file.
        let window = match window {
            Some(w) => {
                let region = w
                    .region()
                    .map_err(|e| ViewHostError::View(ViewError::MessageArea(e.to_string())))?;
                Some((w, region))
            }
            None => None,
        };
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Request::Add {
            source,
            args: args.to_vec(),
            env: env.to_vec(),
            window,
            reply,
        })?;
        answer.recv().map_err(|_| ViewHostError::ThreadLost)?
    }

    /// The execution flow of view `view`, stopped at a safe point, for
    /// another IC to continue (`mutate`); the view ends.
    pub fn capture(&self, view: usize) -> Result<EfState, ViewHostError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Request::Capture { view, reply })?;
        answer.recv().map_err(|_| ViewHostError::ThreadLost)?
    }

    /// Lets view `caller` call view `callee` (each view has one peer).
    pub fn connect(&self, caller: usize, callee: usize) -> Result<(), ViewHostError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Request::Connect {
            caller,
            callee,
            reply,
        })?;
        answer.recv().map_err(|_| ViewHostError::ThreadLost)?
    }

    /// Runs view `view` until its execution flow stops (exit, fault, time
    /// limit, ready point, safe point; a serving view when its caller is
    /// gone and it ended).
    pub fn run(
        &self,
        view: usize,
        io: GuestIo,
        config: &RunConfig,
        interrupter: &Interrupter,
    ) -> Result<RunOutcome, RunError> {
        let (reply, result) = mpsc::sync_channel(1);
        self.send(Request::Run(
            view,
            PendingRun {
                io,
                config: config.clone(),
                interrupter: interrupter.clone(),
                reply,
            },
        ))?;
        wait_for_result(&result, config.timeout, interrupter)
    }

    /// Ends view `view`'s IC (a parked run ends as killed); its peer's
    /// calls fail with `EPIPE` from now on.
    pub fn remove(&self, view: usize) {
        let _ = self.send(Request::Remove(view));
    }
}

impl Drop for ViewHost {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// The vCPU thread's side.
struct Host {
    vm: ViewMachine,
    slots: Vec<Slot>,
    tramp: Trampoline,
}

impl Host {
    fn new(vm: ViewMachine) -> Host {
        let slots = (0..vm.count())
            .map(|_| Slot {
                state: State::Free,
                layout: None,
                window: None,
            })
            .collect();
        let tramp = trampoline_for(vm.switching());
        Host { vm, slots, tramp }
    }

    fn serve(mut self, requests: mpsc::Receiver<Request>) {
        loop {
            let waiting = self
                .slots
                .iter()
                .any(|s| matches!(s.state, State::Parked(..) | State::WaitingForPeer(..)));
            let next = if waiting {
                requests.recv_timeout(SETTLE_PERIOD)
            } else {
                requests
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            };
            let request = match next {
                Ok(request) => request,
                // Now and then: a parked or waiting run may have been
                // stopped by its owner.
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.settle();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            match request {
                Request::Add {
                    source,
                    args,
                    env,
                    window,
                    reply,
                } => {
                    let _ = reply.send(self.add(source, &args, &env, window));
                }
                Request::Capture { view, reply } => {
                    let _ = reply.send(self.capture(view));
                }
                Request::Connect {
                    caller,
                    callee,
                    reply,
                } => {
                    let fresh = |v: usize| {
                        matches!(
                            self.slots.get(v).map(|s| &s.state),
                            Some(State::Loaded { .. })
                        )
                    };
                    let result = if fresh(caller) && fresh(callee) {
                        self.vm.connect(caller, callee).map_err(Into::into)
                    } else {
                        Err(ViewHostError::Started(if fresh(caller) {
                            callee
                        } else {
                            caller
                        }))
                    };
                    let _ = reply.send(result);
                }
                Request::Run(view, run) => self.start(view, run),
                Request::Remove(view) => self.remove(view),
            }
            self.settle();
        }
        // Parked runs end with the VM.
        for view in 0..self.slots.len() {
            self.remove(view);
        }
        // The VM and the active view's memory go to the low-priority
        // reaper, off the path of whatever runs next; KVM's MMU notifier
        // makes unmapping the other views here safe whatever the order.
        let (machine, table) = self.vm.into_parts();
        crate::reaper::dispose(machine);
        drop(table);
    }

    fn add(
        &mut self,
        source: ViewSource,
        args: &[Vec<u8>],
        env: &[Vec<u8>],
        window: Option<(SharedWindow, Arc<GuestRegionMmap>)>,
    ) -> Result<usize, ViewHostError> {
        let view = self
            .slots
            .iter()
            .position(|s| matches!(s.state, State::Free))
            .ok_or(ViewHostError::Full(self.slots.len()))?;
        let mem_size = self.vm.machine().mem_size();
        let failed = |how: String| ViewHostError::Ended { view, how };
        let (layout, state) = {
            let mem = self.vm.view(view)?;
            match &source {
                ViewSource::Image(program) => {
                    let setup = BootSetup { program, args, env };
                    let layout = GuestLayout::prepare(mem, mem_size, true, &setup, &mut NothingYet)
                        .map_err(|e| failed(format!("its image could not be loaded: {e}")))?;
                    (
                        layout,
                        State::Loaded {
                            entry: program.entry(),
                        },
                    )
                }
                ViewSource::State(ef) => {
                    if ef.mem_size != mem_size {
                        return Err(failed(format!(
                            "its state has {} bytes of memory, this VM's views {mem_size}",
                            ef.mem_size
                        )));
                    }
                    ef.restore_into(mem)
                        .and_then(|()| ef.protect_code(mem))
                        .map_err(|e| failed(format!("its state could not be restored: {e}")))?;
                    let layout = GuestLayout::read(mem, mem_size)
                        .map_err(|e| failed(format!("its state has no usable layout: {e}")))?;
                    (layout, State::Restored(Box::new(saved_from(&ef.regs))))
                }
            }
        };
        crate::layout::write_devices(self.vm.view(view)?, xos_abi::DEVICE_VIEWS).map_err(|e| {
            ViewHostError::Ended {
                view,
                how: format!("its boot information could not be written: {e}"),
            }
        })?;
        let window = match window {
            Some((w, region)) => {
                self.vm.attach_window(view, &w, region)?;
                Some(w)
            }
            None => None,
        };
        self.slots[view] = Slot {
            state,
            layout: Some(layout),
            window,
        };
        Ok(view)
    }

    fn capture(&mut self, view: usize) -> Result<EfState, ViewHostError> {
        let mut regs = match self.slots.get(view).map(|s| &s.state) {
            Some(State::Stopped(saved)) => GuestRegs::from_kvm(&saved.regs, &saved.sregs),
            _ => {
                return Err(ViewHostError::Ended {
                    view,
                    how: "it is not stopped at a safe point".into(),
                })
            }
        };
        // Stopped in the trampoline's hypercall stub (every hypercall of a
        // view goes through it): its `ret` is done here, since the IC the
        // flow goes to has no trampoline page.
        if regs.rip == self.tramp.hypercall_landing {
            let mem_size = self.vm.machine().mem_size();
            if regs.rsp % 8 != 0 || !crate::arch::paging::user_accessible(regs.rsp, 8, mem_size) {
                return Err(ViewHostError::Ended {
                    view,
                    how: format!(
                        "it stopped in the hypercall stub with its stack at {:#x}, not in its user memory",
                        regs.rsp
                    ),
                });
            }
            let back: u64 = self
                .vm
                .view(view)?
                .read_obj(GuestAddress(regs.rsp))
                .map_err(|e| ViewHostError::Ended {
                    view,
                    how: format!("its stack at {:#x} cannot be read: {e}", regs.rsp),
                })?;
            if back >= 1 << 47 {
                return Err(ViewHostError::Ended {
                    view,
                    how: format!("its hypercall stub would return to {back:#x}"),
                });
            }
            regs.rip = back;
            regs.rsp += 8;
        }
        let mem_size = self.vm.machine().mem_size();
        let state = EfState::capture(self.vm.view(view)?, mem_size, regs).map_err(|e| {
            ViewHostError::Ended {
                view,
                how: format!("its state could not be captured: {e}"),
            }
        })?;
        self.slots[view].state = State::Ended("moved to another IC".into());
        Ok(state)
    }

    fn remove(&mut self, view: usize) {
        let Some(slot) = self.slots.get_mut(view) else {
            return;
        };
        match std::mem::replace(&mut slot.state, State::Ended("removed".into())) {
            State::Parked(_, run) | State::WaitingForPeer(_, run, _) => {
                self.unpark(view, &run);
                let _ = run.reply.send(Ok(RunOutcome {
                    exit: GuestExit::Killed,
                    stats: RunStats::default(),
                    guest_time: std::time::Duration::ZERO,
                    snapshot: None,
                    pivot: None,
                }));
            }
            State::Free => slot.state = State::Free,
            _ => {}
        }
    }

    /// A parked view stops serving: with `VMFUNC` its gate closes (calls
    /// bounce off it) and its stop no longer needs to close it.
    fn unpark(&mut self, view: usize, run: &PendingRun) {
        run.interrupter.set_stop_hook(None);
        if self.vm.switching() != Switching::Memslot {
            let (machine, table) = self.vm.parts();
            let _ = table.set_gate(machine, view, false);
        }
    }

    /// A view parks in `view_serve`: with `VMFUNC` its gate opens, and a
    /// stop of its run (its owner's kill or time limit) closes it at once,
    /// from whatever thread stops it, so the next call bounces.
    fn open_gate(&mut self, view: usize, run: &PendingRun) -> Result<(), ViewError> {
        if self.vm.switching() == Switching::Memslot {
            return Ok(());
        }
        let (machine, table) = self.vm.parts();
        // Parked means not inside a call, whatever the view wrote.
        table.quiesce(machine, view)?;
        table.set_gate(machine, view, true)?;
        let close = table.gate_closer(machine, view)?;
        run.interrupter.set_stop_hook(Some(Box::new(close)));
        Ok(())
    }

    fn is_parked(&self, view: usize) -> bool {
        matches!(
            self.slots.get(view).map(|s| &s.state),
            Some(State::Parked(..))
        )
    }

    fn is_gone(&self, view: usize) -> bool {
        matches!(
            self.slots.get(view).map(|s| &s.state),
            Some(State::Ended(_)) | None
        )
    }

    /// Whether the run of a parked or waiting view was asked to stop.
    fn stop_requested(&self, view: usize) -> bool {
        match self.slots.get(view).map(|s| &s.state) {
            Some(State::Parked(_, run) | State::WaitingForPeer(_, run, _)) => {
                run.interrupter.reason() != StopReason::None
            }
            _ => false,
        }
    }

    /// Ends a parked or waiting run whose owner stopped it (its time limit
    /// or a kill): it does not go on, and its peer's calls fail.
    fn end_stopped(&mut self, view: usize) {
        let state = std::mem::replace(
            &mut self.slots[view].state,
            State::Ended("stopped while serving or waiting for its peer".into()),
        );
        if let State::Parked(saved, run) | State::WaitingForPeer(saved, run, _) = state {
            self.unpark(view, &run);
            let exit = match run.interrupter.reason() {
                StopReason::Kill => GuestExit::Killed,
                _ => GuestExit::TimedOut {
                    limit: run.config.timeout.unwrap_or_default(),
                    regs: Box::new(GuestRegs::from_kvm(&saved.regs, &saved.sregs)),
                },
            };
            let _ = run.reply.send(Ok(RunOutcome {
                exit,
                stats: RunStats::default(),
                guest_time: std::time::Duration::ZERO,
                snapshot: None,
                pivot: None,
            }));
        }
    }

    /// With VMFUNC nothing but a view's own state keeps its peer from
    /// entering it: every view that is not running, parked or waiting
    /// (ended, stopped, not started) takes no entry. Done before any view
    /// goes on (a run that ended inside its trampoline must not take a
    /// reply its peer makes up).
    fn quiesce_idle_views(&mut self) {
        if self.vm.switching() == Switching::Memslot {
            return;
        }
        for view in 0..self.slots.len() {
            if !matches!(
                self.slots[view].state,
                State::Parked(..) | State::WaitingForPeer(..)
            ) {
                let (machine, table) = self.vm.parts();
                let _ = table.quiesce(machine, view);
            }
        }
    }

    /// After any change: stopped parked or waiting runs end; callers
    /// waiting for a peer that now serves go on; waiting callers whose
    /// peer is gone get `EPIPE`; servers whose caller is gone resume to
    /// their end.
    fn settle(&mut self) {
        loop {
            // Every turn: a run resumed below may have taken a while, and
            // a parked or waiting run's owner may have stopped it meanwhile.
            for view in 0..self.slots.len() {
                if self.stop_requested(view) {
                    self.end_stopped(view);
                }
            }
            self.quiesce_idle_views();
            let mut progressed = false;
            for view in 0..self.slots.len() {
                let action = match &self.slots[view].state {
                    State::WaitingForPeer(_, _, peer)
                        if self.is_parked(*peer) && !self.stop_requested(*peer) =>
                    {
                        Some(true)
                    }
                    State::WaitingForPeer(_, _, peer) if self.is_gone(*peer) => Some(false),
                    State::Parked(..) => match self.vm.table().caller_of(view) {
                        Some(caller) if self.is_gone(caller) => Some(false),
                        _ => None,
                    },
                    _ => None,
                };
                let Some(peer_serves) = action else { continue };
                let state = std::mem::replace(&mut self.slots[view].state, State::Free);
                match state {
                    State::WaitingForPeer(saved, run, peer) if peer_serves => {
                        self.resume(view, *saved, run, Resume::IntoCall(peer));
                    }
                    State::WaitingForPeer(saved, run, _) => {
                        self.resume(view, *saved, run, Resume::CallFailed);
                    }
                    State::Parked(saved, run) => {
                        self.unpark(view, &run);
                        self.resume(view, *saved, run, Resume::ServeEnded);
                    }
                    other => self.slots[view].state = other,
                }
                // A run went on (and may have ended): look at every view
                // again, idle ones quiesced first.
                progressed = true;
                break;
            }
            if !progressed {
                return;
            }
        }
    }

    fn start(&mut self, view: usize, run: PendingRun) {
        let state = match self.slots.get_mut(view) {
            Some(slot) => std::mem::replace(&mut slot.state, State::Free),
            None => {
                let _ = run
                    .reply
                    .send(Err(ViewHostError::View(ViewError::NoSuchView {
                        view,
                        count: self.slots.len(),
                    })
                    .into()));
                return;
            }
        };
        match state {
            State::Loaded { entry } => {
                let (machine, table) = self.vm.parts();
                if let Err(e) = load_fresh(machine, table, view, entry) {
                    self.slots[view].state = State::Ended(e.to_string());
                    let _ = run.reply.send(Err(e));
                    return;
                }
                self.run(view, run, None);
            }
            State::Stopped(saved) => self.resume(view, *saved, run, Resume::Continue),
            State::Restored(saved) => self.resume(view, *saved, run, Resume::Restored),
            State::Ended(how) => {
                self.slots[view].state = State::Ended(how.clone());
                let _ = run
                    .reply
                    .send(Err(ViewHostError::Ended { view, how }.into()));
            }
            State::Free => {
                let _ = run
                    .reply
                    .send(Err(ViewHostError::View(ViewError::NoSuchView {
                        view,
                        count: self.slots.len(),
                    })
                    .into()));
            }
            busy @ (State::Parked(..) | State::WaitingForPeer(..)) => {
                self.slots[view].state = busy;
                let _ = run.reply.send(Err(ViewHostError::Busy(view).into()));
            }
        }
    }

    /// Puts `view`'s saved state on the vCPU and runs it.
    fn resume(&mut self, view: usize, mut saved: Saved, run: PendingRun, how: Resume) {
        let mut in_call = None;
        let vmfunc = self.vm.switching() != Switching::Memslot;
        match how {
            Resume::Continue => {}
            // With VMFUNC the caller waits after its trampoline's
            // `VIEW_WAIT` and calls again itself.
            Resume::IntoCall(_) if vmfunc => {}
            Resume::IntoCall(peer) => in_call = Some(peer),
            Resume::CallFailed => {
                saved.regs.rip = self.tramp.fail_landing;
                saved.regs.rdi = err::EPIPE as u64;
            }
            Resume::ServeEnded | Resume::Restored => {}
        }
        let (machine, table) = self.vm.parts();
        let loaded = (|| -> Result<(), RunError> {
            table
                .switch(machine, view)
                .map_err(|e| RunError::from(ViewHostError::View(e)))?;
            if matches!(how, Resume::Restored) {
                // Segment state as for any entry at CPL3, on this vCPU's base.
                saved.sregs =
                    crate::arch::cpu::initial_sregs(&machine.kvm_registers()?.1, Privilege::User);
            }
            if matches!(how, Resume::ServeEnded) {
                write_ret(machine, err::EPIPE)?;
            } else if matches!(how, Resume::Continue) {
                write_ret(machine, 0)?;
            }
            machine.set_state(&saved.regs, &saved.sregs, &saved.xsave, &[])?;
            if let Some(peer) = in_call {
                table
                    .switch(machine, peer)
                    .map_err(|e| RunError::from(ViewHostError::View(e)))?;
            }
            Ok(())
        })();
        if let Err(e) = loaded {
            self.slots[view].state = State::Ended(e.to_string());
            let _ = run.reply.send(Err(e));
            return;
        }
        self.run(view, run, in_call);
    }

    /// Runs `view` (already on the vCPU, its memory active, or its
    /// peer's when `in_call`) until its run stops, and records where it
    /// stopped.
    fn run(&mut self, view: usize, run: PendingRun, in_call: Option<usize>) {
        let parked: Vec<bool> = (0..self.slots.len())
            .map(|v| self.is_parked(v) && !self.stop_requested(v))
            .collect();
        // A parked callee's owner may stop it while this run goes on: each
        // call into it looks first.
        let stops: Vec<Option<Interrupter>> = self
            .slots
            .iter()
            .map(|s| match &s.state {
                State::Parked(_, run) => Some(run.interrupter.clone()),
                _ => None,
            })
            .collect();
        let Some(layout) = self.slots[view].layout else {
            let _ = run.reply.send(Err(ViewHostError::Ended {
                view,
                how: "it has no image".into(),
            }
            .into()));
            return;
        };
        let PendingRun {
            io,
            config,
            interrupter,
            reply,
        } = run;
        let mut hypercalls = Hypercalls::new(layout, io, config.host_functions.clone())
            .with_output_limit(config.output_limit)
            .with_window(self.slots[view].window.clone());
        let mut options = LoopControl {
            timeout: config.timeout,
            stop_at_ready: false,
            on_resume: None,
            device: None,
        };
        let (machine, table) = self.vm.parts();
        if let Err(e) = table.enter() {
            let e = RunError::from(ViewHostError::View(e));
            self.slots[view].state = State::Ended(e.to_string());
            let _ = reply.send(Err(e));
            return;
        }
        let mut hook = ViewHook {
            switching: table.switching(),
            table,
            tramp: &self.tramp,
            own: view,
            parked,
            stops,
            call: in_call,
            serving: false,
            waiting_for: None,
            failed: Vec::new(),
        };
        let attached = interrupter.attach(machine.immediate_exit_ptr());
        let start = Instant::now();
        let result = run_loop_hooked(
            machine,
            &mut hypercalls,
            &interrupter,
            &mut options,
            &mut hook,
        );
        let guest_time = start.elapsed();
        drop(attached);
        // A run that ended inside a call (time limit, kill) leaves the
        // callee mid-call: it fails, and the vCPU goes back to the caller.
        if let Some(callee) = hook.call.take() {
            hook.failed.push((callee, CALLER_STOPPED.into()));
            let _ = hook.table.switch(machine, view);
        }
        let serving = hook.serving;
        let waiting_for = hook.waiting_for;
        let failed = std::mem::take(&mut hook.failed);
        let outcome = result.map(|(exit, exits)| RunOutcome {
            exit,
            stats: RunStats {
                exits,
                hypercalls: hypercalls.count,
            },
            guest_time,
            snapshot: None,
            pivot: None,
        });
        for (callee, how) in failed {
            self.fail_callee(callee, how);
        }
        let pending = |reply| PendingRun {
            io: hypercalls.into_io(),
            config: config.clone(),
            interrupter: interrupter.clone(),
            reply,
        };
        match outcome {
            Ok(o) if serving || waiting_for.is_some() => match save(self.vm.machine()) {
                Ok(saved) => {
                    let run = pending(reply);
                    if waiting_for.is_none() {
                        if let Err(e) = self.open_gate(view, &run) {
                            let e = RunError::from(ViewHostError::View(e));
                            self.slots[view].state = State::Ended(e.to_string());
                            let _ = run.reply.send(Err(e));
                            return;
                        }
                    }
                    self.slots[view].state = match waiting_for {
                        Some(peer) => State::WaitingForPeer(Box::new(saved), run, peer),
                        None => State::Parked(Box::new(saved), run),
                    };
                    let _ = o;
                }
                Err(e) => {
                    self.slots[view].state = State::Ended(e.to_string());
                    let _ = reply.send(Err(e));
                }
            },
            Ok(o) if matches!(o.exit, GuestExit::Ready | GuestExit::SafePoint) => {
                match save(self.vm.machine()) {
                    Ok(saved) => self.slots[view].state = State::Stopped(Box::new(saved)),
                    Err(e) => self.slots[view].state = State::Ended(e.to_string()),
                }
                let _ = reply.send(Ok(o));
            }
            Ok(o) => {
                self.slots[view].state = State::Ended(o.exit.to_string());
                let _ = reply.send(Ok(o));
            }
            Err(e) => {
                self.slots[view].state = State::Ended(e.to_string());
                let _ = reply.send(Err(e));
            }
        }
    }

    /// A callee that failed inside a call: its parked run ends with the
    /// failure.
    fn fail_callee(&mut self, callee: usize, how: String) {
        let state = std::mem::replace(&mut self.slots[callee].state, State::Ended(how.clone()));
        if let State::Parked(_, run) | State::WaitingForPeer(_, run, _) = state {
            self.unpark(callee, &run);
            // Interrupted by its caller's stop, it broke no rule: it was
            // killed. Anything else is its own doing.
            let exit = if how == CALLER_STOPPED {
                GuestExit::Killed
            } else {
                GuestExit::Faulted {
                    fault: Fault::ViewProtocol(how),
                    regs: Box::<GuestRegs>::default(),
                    mem_size: self.vm.machine().mem_size(),
                }
            };
            let _ = run.reply.send(Ok(RunOutcome {
                exit,
                stats: RunStats::default(),
                guest_time: std::time::Duration::ZERO,
                snapshot: None,
                pivot: None,
            }));
        }
    }
}

/// How a saved view goes on.
#[derive(Clone, Copy)]
enum Resume {
    /// After its ready point or a safe point (the hypercall answers 0).
    Continue,
    /// Its call to `peer`, which now serves, goes through.
    IntoCall(usize),
    /// Its call fails: the peer is gone.
    CallFailed,
    /// Its service is over: `view_serve` returns `EPIPE`.
    ServeEnded,
    /// Carried over from another IC: its memory already holds the answer.
    Restored,
}

fn load_fresh(
    machine: &mut Machine,
    table: &mut ViewTable,
    view: usize,
    entry: u64,
) -> Result<(), RunError> {
    table
        .switch(machine, view)
        .map_err(|e| RunError::from(ViewHostError::View(e)))?;
    machine.set_state(
        &crate::arch::cpu::initial_regs(entry, STACK_TOP, BOOT_INFO),
        &crate::arch::cpu::initial_sregs(&machine.kvm_registers()?.1, Privilege::User),
        &clean_xsave(),
        &[],
    )?;
    Ok(())
}

/// The vCPU state that continues an execution flow with `regs` at CPL3.
fn saved_from(regs: &GuestRegs) -> Saved {
    let g = regs.gpr;
    let mut k = crate::arch::cpu::initial_regs(regs.rip, regs.rsp, 0);
    (k.rax, k.rbx, k.rcx, k.rdx, k.rsi, k.rdi, k.rbp) = (g[0], g[1], g[2], g[3], g[4], g[5], g[6]);
    (k.r8, k.r9, k.r10, k.r11, k.r12, k.r13, k.r14, k.r15) =
        (g[7], g[8], g[9], g[10], g[11], g[12], g[13], g[14]);
    k.rflags = crate::pivot::user_rflags(regs.rflags);
    Saved {
        regs: k,
        // Replaced at resume, on the vCPU's own base (`Resume::Restored`).
        sregs: kvm_bindings::kvm_sregs::default(),
        xsave: clean_xsave(),
    }
}

fn write_ret(machine: &Machine, value: i64) -> Result<(), RunError> {
    let at = BOOT_INFO
        + (std::mem::offset_of!(xos_abi::BootInfo, hypercall)
            + std::mem::offset_of!(xos_abi::Hypercall, ret)) as u64;
    machine
        .memory()
        .write_obj(value, GuestAddress(at))
        .map_err(|source| {
            RunError::Machine(MachineError::Arch(crate::arch::ArchError::Write {
                addr: at,
                source,
            }))
        })
}

fn save(machine: &mut Machine) -> Result<Saved, RunError> {
    machine.complete_pending_io()?;
    let (regs, sregs) = machine.kvm_registers()?;
    Ok(Saved {
        regs,
        sregs,
        xsave: Box::new(machine.xsave()?),
    })
}

/// How often the vCPU thread looks at parked and waiting runs when no
/// request comes (a stop of one of them is seen within this).
const SETTLE_PERIOD: std::time::Duration = std::time::Duration::from_millis(50);

/// How a callee ends when its caller's run is stopped in the middle of a
/// call (reported as killed: not its fault).
const CALLER_STOPPED: &str = "its caller's run was stopped during a call";

/// RFLAGS.TF.
const TRAP_FLAG: u64 = 1 << 8;

/// The switch rules, seen by the run loop of one view's run.
struct ViewHook<'a> {
    /// How the views switch (with `VMFUNC` the monitor sees no switch and
    /// learns where the vCPU is at each exit).
    switching: Switching,
    table: &'a mut ViewTable,
    tramp: &'a Trampoline,
    /// The view whose run this is.
    own: usize,
    /// Which views serve: parked when the run began, and not failed since.
    parked: Vec<bool>,
    /// The parked views' own stop handles (their owners' kill or time limit).
    stops: Vec<Option<Interrupter>>,
    /// The callee while a call is in progress.
    call: Option<usize>,
    /// The run parked in `view_serve`.
    serving: bool,
    /// The run called a peer that is not serving yet.
    waiting_for: Option<usize>,
    /// Callees that failed inside a call, and how.
    failed: Vec<(usize, String)>,
}

impl ViewHook<'_> {
    fn protocol(machine: &Machine, what: String) -> HookAction {
        let regs = machine.registers().unwrap_or_default();
        HookAction::End(GuestExit::Faulted {
            fault: Fault::ViewProtocol(what),
            regs: Box::new(regs),
            mem_size: machine.mem_size(),
        })
    }

    /// The callee failed inside the call: back to the caller, whose call
    /// returns `EPIPE`.
    fn abandon_call(
        &mut self,
        machine: &mut Machine,
        callee: usize,
        how: String,
    ) -> Result<(), RunError> {
        self.failed.push((callee, how));
        self.leave_call(machine, callee)
    }

    /// Back to the caller, whose call returns `EPIPE`; the callee serves
    /// no more calls in this run.
    fn leave_call(&mut self, machine: &mut Machine, callee: usize) -> Result<(), RunError> {
        if let Some(p) = self.parked.get_mut(callee) {
            *p = false;
        }
        self.call = None;
        let view_error = |e| RunError::from(ViewHostError::View(e));
        if self.switching != Switching::Memslot {
            self.table.quiesce(machine, callee).map_err(view_error)?;
        }
        let mut regs = crate::arch::cpu::initial_regs(self.tramp.fail_landing, STACK_TOP, 0);
        regs.rdi = err::EPIPE as u64; // the call's result
                                      // Loaded now (ioctls), not with the next entry: a run stopped here
                                      // reports these, the caller's, not the callee's.
        let sregs = crate::arch::cpu::initial_sregs(&machine.kvm_registers()?.1, Privilege::User);
        machine.set_state(&regs, &sregs, &clean_xsave(), &[])?;
        self.table.switch(machine, self.own).map_err(view_error)?;
        Ok(())
    }

    /// With `VMFUNC`: a switch outside the call protocol. Either view of
    /// the pair may have made it (a view can jump to any `VMFUNC` of its
    /// trampoline with any registers, and no monitor saw the switch), so
    /// both end; the registers are not reported (they may be the other
    /// view's).
    fn end_both(&mut self, machine: &mut Machine, what: &str) -> Result<HookAction, RunError> {
        let what = format!(
            "{what} (with VMFUNC the monitor cannot tell which view of the pair did it, so both end)"
        );
        let other = self
            .table
            .peer_of(self.own)
            .or_else(|| self.table.caller_of(self.own));
        if let Some(other) = other {
            self.failed.push((other, what.clone()));
            if let Some(p) = self.parked.get_mut(other) {
                *p = false;
            }
            self.table
                .quiesce(machine, other)
                .map_err(|e| RunError::from(ViewHostError::View(e)))?;
        }
        self.call = None;
        Ok(HookAction::End(GuestExit::Faulted {
            fault: Fault::ViewProtocol(what),
            regs: Box::default(),
            mem_size: machine.mem_size(),
        }))
    }

    /// Whether `view` serves now (parked, and its owner did not stop it).
    fn serves(&self, view: usize) -> bool {
        let stopped = self
            .stops
            .get(view)
            .and_then(Option::as_ref)
            .is_some_and(|i| i.reason() != StopReason::None);
        !stopped && self.parked.get(view).copied().unwrap_or(false)
    }

    /// The doorbell with `VMFUNC` switching: the monitor checks no switch
    /// (the trampoline does), it sees where the vCPU is ([`Self::call`],
    /// kept by `after_exit`) and serves the trampoline's own requests.
    fn vmfunc_doorbell(
        &mut self,
        machine: &mut Machine,
        value: u32,
    ) -> Result<HookAction, RunError> {
        let regs = machine.exit_registers();
        let rip = regs.rip;
        let view_error = |e| RunError::from(ViewHostError::View(e));
        if self.switching == Switching::EmulatedVmfunc
            && self.tramp.landings.contains(&rip)
            && switch_target(value).is_some()
        {
            // The index as VMFUNC reads it: all of ecx.
            let index = regs.rcx & 0xffff_ffff;
            if index == 0 {
                // The base: nothing of either view, every landing there
                // ends in VIEW_BAD_ENTRY (as with the module).
                return self.end_both(machine, "a VMFUNC to the base entry");
            }
            // What the CPU does: any index with a view, no check.
            let Some(view) = self.table.view_at_index(index) else {
                let what = format!("VMFUNC to EPTP-list entry {index}, which is empty (#UD)");
                return match self.call {
                    Some(callee) => {
                        self.abandon_call(
                            machine,
                            callee,
                            format!("it made a {what} inside a call"),
                        )?;
                        Ok(HookAction::Resume)
                    }
                    None => Ok(Self::protocol(machine, what)),
                };
            };
            if regs.rflags & TRAP_FLAG != 0 {
                return self.end_both(machine, "a view switched with the trap flag set");
            }
            self.table.switch(machine, view).map_err(view_error)?;
            self.call = (view != self.own).then_some(view);
            return Ok(HookAction::Resume);
        }
        if value == nr::VIEW_BAD_ENTRY && rip == self.tramp.bad_entry {
            return self.end_both(
                machine,
                "a view was entered where it expected nothing (not serving, not waiting for a reply)",
            );
        }
        if let Some(callee) = self.call {
            let how = format!("it made hypercall {value} inside a call");
            self.abandon_call(machine, callee, how)?;
            return Ok(HookAction::Resume);
        }
        if !self.tramp.contains(rip) {
            // What VMFUNC views do to a doorbell write from anywhere else:
            // KVM decodes it from the base's memory, finds no code there
            // and gives the guest #PF.
            return Ok(Self::protocol(
                machine,
                format!("a doorbell write from outside the trampoline (at {rip:#x}; with VMFUNC every hypercall goes through the trampoline's stub)"),
            ));
        }
        match value {
            nr::VIEW_WAIT if rip == self.tramp.wait_landing => {
                let Some(peer) = self.table.peer_of(self.own) else {
                    return Ok(Self::protocol(machine, "VIEW_WAIT without a peer".into()));
                };
                if self.serves(peer) {
                    // The peer serves: the call goes again. (Either side
                    // may have got here: a callee that turns calls away,
                    // or a caller jumping to this doorbell itself; neither
                    // is blamed, and a loop ends with the caller's own
                    // time limit.)
                    return Ok(HookAction::Resume);
                }
                self.waiting_for = Some(peer);
                Ok(HookAction::End(GuestExit::Ready))
            }
            nr::VIEW_SERVE => self.serve(machine, rip),
            _ if switch_target(value).is_some()
                || value == nr::VIEW_WAIT
                || value == nr::VIEW_BAD_ENTRY =>
            {
                Ok(Self::protocol(
                machine,
                format!("hypercall {value:#x} from outside the trampoline (VIEW_SWITCH, VIEW_WAIT and VIEW_BAD_ENTRY are the trampoline's)"),
            ))
            }
            _ => Ok(HookAction::Pass),
        }
    }

    /// `VIEW_SERVE` from the run's own view.
    fn serve(&mut self, machine: &mut Machine, rip: u64) -> Result<HookAction, RunError> {
        if rip != self.tramp.serve_landing {
            return Ok(Self::protocol(
                machine,
                "VIEW_SERVE from outside the trampoline".into(),
            ));
        }
        if self.table.caller_of(self.own).is_none() {
            return Ok(Self::protocol(
                machine,
                "view_serve in a view that serves nobody (connect it as a callee)".into(),
            ));
        }
        let control: ViewControl = machine
            .memory()
            .read_obj(GuestAddress(VIEW_CONTROL))
            .unwrap_or_default();
        if !crate::arch::paging::user_accessible(control.handler, 1, machine.mem_size()) {
            return Ok(Self::protocol(
                machine,
                format!(
                    "view_serve with handler {:#x}, not in user memory",
                    control.handler
                ),
            ));
        }
        self.serving = true;
        Ok(HookAction::End(GuestExit::Ready))
    }
}

impl ExitHook for ViewHook<'_> {
    fn after_exit(&mut self, machine: &mut Machine) -> Result<HookAction, RunError> {
        if self.switching == Switching::Vmfunc {
            let active = self
                .table
                .sync(machine)
                .map_err(|e| RunError::from(ViewHostError::View(e)))?;
            let Some(active) = active else {
                return self.end_both(
                    machine,
                    "the vCPU was found in neither view of the pair (a VMFUNC to the base entry, or KVM moved it out of its view)",
                );
            };
            self.call = (active != self.own).then_some(active);
        }
        Ok(HookAction::Pass)
    }

    fn doorbell(&mut self, machine: &mut Machine, value: u32) -> Result<HookAction, RunError> {
        if self.switching != Switching::Memslot {
            return self.vmfunc_doorbell(machine, value);
        }
        let regs = machine.exit_registers();
        let rip = regs.rip;
        // A switch with the trap flag set would single-step the other
        // side's first instruction (a #DB there): the switching side's doing.
        let trapping = regs.rflags & TRAP_FLAG != 0;
        if value == nr::VIEW_SERVE {
            if let Some(callee) = self.call {
                let how = "it called view_serve inside a call".to_string();
                self.abandon_call(machine, callee, how)?;
                return Ok(HookAction::Resume);
            }
            return self.serve(machine, rip);
        }
        let Some(target) = switch_target(value) else {
            if let Some(callee) = self.call {
                let how = format!("it made hypercall {value} inside a call");
                self.abandon_call(machine, callee, how)?;
                return Ok(HookAction::Resume);
            }
            return Ok(HookAction::Pass);
        };
        match self.call {
            None => {
                if trapping {
                    return Ok(Self::protocol(
                        machine,
                        format!("VIEW_SWITCH to view {target} with the trap flag set"),
                    ));
                }
                if rip != self.tramp.call_landing {
                    return Ok(Self::protocol(
                        machine,
                        format!("VIEW_SWITCH to view {target} from outside the trampoline's call"),
                    ));
                }
                if regs.rdi > xos_abi::view::MSG_SIZE || regs.rsi > xos_abi::view::MSG_SIZE {
                    return Ok(Self::protocol(
                        machine,
                        format!(
                            "a call of {} bytes (room {}) into a {}-byte message area",
                            regs.rdi,
                            regs.rsi,
                            xos_abi::view::MSG_SIZE
                        ),
                    ));
                }
                if self.table.peer_of(self.own) != Some(target) {
                    return Ok(Self::protocol(
                        machine,
                        format!(
                            "view {} called view {target}, which is not its peer",
                            self.own
                        ),
                    ));
                }
                let stopped = self
                    .stops
                    .get(target)
                    .and_then(Option::as_ref)
                    .is_some_and(|i| i.reason() != StopReason::None);
                if stopped || !self.parked.get(target).copied().unwrap_or(false) {
                    // The peer has not started serving, or its owner stopped
                    // it: the caller waits (the host ends a stopped peer,
                    // and the wait then fails with EPIPE).
                    self.waiting_for = Some(target);
                    return Ok(HookAction::End(GuestExit::Ready));
                }
                self.table
                    .switch(machine, target)
                    .map_err(|e| RunError::from(ViewHostError::View(e)))?;
                self.call = Some(target);
                Ok(HookAction::Resume)
            }
            Some(callee) => {
                // The way back goes to the caller whatever view number the
                // register holds (the caller could have planted another in
                // its control block to get its callee blamed).
                if trapping || rip != self.tramp.return_landing {
                    let how = format!(
                        "it switched to view {target} from {rip:#x}, not back to its caller through the trampoline"
                    );
                    self.abandon_call(machine, callee, how)?;
                    return Ok(HookAction::Resume);
                }
                self.table
                    .switch(machine, self.own)
                    .map_err(|e| RunError::from(ViewHostError::View(e)))?;
                self.call = None;
                Ok(HookAction::Resume)
            }
        }
    }

    fn fault(&mut self, machine: &mut Machine, fault: &GuestExit) -> Result<HookAction, RunError> {
        if self.switching != Switching::Memslot {
            // A #DB right after a VMFUNC: the switch was made with the
            // trap flag set, by either view.
            if let GuestExit::Faulted {
                fault: Fault::Exception(e),
                regs,
                ..
            } = fault
            {
                if e.vector == 1 && self.tramp.landings.contains(&regs.rip) {
                    return self.end_both(machine, "a view switched with the trap flag set");
                }
            }
        }
        let Some(callee) = self.call else {
            return Ok(HookAction::Pass);
        };
        self.abandon_call(machine, callee, format!("it failed inside a call: {fault}"))?;
        Ok(HookAction::Resume)
    }

    fn interrupted(&mut self, machine: &mut Machine) -> Result<(), RunError> {
        // Back in the caller's view with the caller's registers (its call
        // returning EPIPE) before the run's end is reported: what the
        // caller's owner sees is the caller's, never the callee's.
        if let Some(callee) = self.call {
            self.abandon_call(machine, callee, CALLER_STOPPED.to_string())?;
        }
        Ok(())
    }
}
