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
use crate::view::{switch_target, trampoline, Trampoline, ViewError, ViewMachine, ViewTable};
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
}

impl std::fmt::Debug for ViewHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewHost")
            .field("mem_size", &self.mem_size)
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
        install_handler()?;
        crate::reaper::start();
        let mut vm = ViewMachine::new(views, mem_size, Privilege::User)
            .map_err(|e| RunError::from(ViewHostError::View(e)))?;
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
        })
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

/// A clean x87/SSE state (what a fresh vCPU has).
fn clean_xsave() -> Box<kvm_bindings::kvm_xsave> {
    let mut x = Box::new(kvm_bindings::kvm_xsave::default());
    x.region[0] = 0x037f; // FCW
    x.region[6] = 0x1f80; // MXCSR
    x.region[128] = 0x3; // XSTATE_BV: x87, SSE
    x
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
        Host {
            vm,
            slots,
            tramp: trampoline(),
        }
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
        let regs = match self.slots.get(view).map(|s| &s.state) {
            Some(State::Stopped(saved)) => GuestRegs::from_kvm(&saved.regs, &saved.sregs),
            _ => {
                return Err(ViewHostError::Ended {
                    view,
                    how: "it is not stopped at a safe point".into(),
                })
            }
        };
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

    /// After any change: stopped parked or waiting runs end; callers
    /// waiting for a peer that now serves go on; waiting callers whose
    /// peer is gone get `EPIPE`; servers whose caller is gone resume to
    /// their end.
    fn settle(&mut self) {
        for view in 0..self.slots.len() {
            if self.stop_requested(view) {
                self.end_stopped(view);
            }
        }
        loop {
            let mut progressed = false;
            for view in 0..self.slots.len() {
                let action = match &self.slots[view].state {
                    State::WaitingForPeer(_, _, peer) if self.is_parked(*peer) => Some(true),
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
                        self.resume(view, *saved, run, Resume::ServeEnded);
                    }
                    other => self.slots[view].state = other,
                }
                progressed = true;
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
        match how {
            Resume::Continue => {}
            Resume::IntoCall(peer) => in_call = Some(peer),
            Resume::CallFailed => {
                saved.regs.rip = self.tramp.return_landing;
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
        let mut hook = ViewHook {
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
        if let State::Parked(_, run) = state {
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
        if let Some(p) = self.parked.get_mut(callee) {
            *p = false;
        }
        self.call = None;
        self.table
            .switch(machine, self.own)
            .map_err(|e| RunError::from(ViewHostError::View(e)))?;

        let mut regs = crate::arch::cpu::initial_regs(self.tramp.return_landing, STACK_TOP, 0);
        regs.rdi = err::EPIPE as u64; // the call's result
                                      // Loaded now (ioctls), not with the next entry: a run stopped here
                                      // reports these, the caller's, not the callee's.
        let sregs = crate::arch::cpu::initial_sregs(&machine.kvm_registers()?.1, Privilege::User);
        machine.set_state(&regs, &sregs, &clean_xsave(), &[])?;
        Ok(())
    }
}

impl ExitHook for ViewHook<'_> {
    fn doorbell(&mut self, machine: &mut Machine, value: u32) -> Result<HookAction, RunError> {
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
            if rip != self.tramp.serve_landing {
                return Ok(Self::protocol(
                    machine,
                    "VIEW_SERVE from outside the trampoline".into(),
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
            return Ok(HookAction::End(GuestExit::Ready));
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

    fn fault(&mut self, machine: &mut Machine, fault: &GuestExit) -> Result<bool, RunError> {
        let Some(callee) = self.call else {
            return Ok(false);
        };
        self.abandon_call(machine, callee, format!("it failed inside a call: {fault}"))?;
        Ok(true)
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
