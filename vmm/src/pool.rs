//! Warm pools: VMs restored once from a ready-point snapshot and reused for
//! call after call, reset to the snapshot after each.
//!
//! Each instance is owned by a worker thread (under the vCPU seccomp
//! filter). A call hands the worker its input, the worker runs the guest
//! from its ready point and hands the output back, then resets the
//! instance while the caller goes on:
//!
//! - **Memory.** Guest memory is registered with dirty logging in KVM's
//!   manual-protect mode and the log is never cleared, so it reports every
//!   page the guest has *ever* written; each reset copies all of those back
//!   from the snapshot (or zeroes them), plus the pages the monitor itself
//!   wrote (stdin, BootInfo, host-call results). A page costs one
//!   write-protect fault on its first write ever, none after, so a warm
//!   call takes no page faults. The guest cannot write a page without the
//!   log seeing it, so nothing written in one call survives into the next.
//! - **Registers.** General and special registers go back through the
//!   `kvm_run` page with the next entry (no ioctl), with RIP at a two-
//!   instruction trampoline on the guest's read-only resume page
//!   (`xos_abi::layout::RESUME_PAGE`): `fxrstor` of the snapshot's x87/SSE
//!   state, kept on that page, then a jump to the snapshot's RIP; neither
//!   touches a general register or a flag, and at CPL3 both run natively,
//!   where `KVM_SET_XSAVE` would cost an ioctl (~5-10 µs here) per call.
//!   Guests at CPL3 cannot change MSRs.
//! - **Hand-offs** spin briefly before they block when the pool is
//!   otherwise idle: waking a blocked thread costs ~30 µs on the project's
//!   machines, about one VM exit, so a lone caller gains a lot; under
//!   concurrent load spinning would only burn the CPUs the calls need, so
//!   then everyone blocks.
//!
//! An instance whose call ended in a fault, a timeout or a kill is not
//! reused at all: it is torn down and a fresh one is made when needed.

use crate::arch::cpu::Privilege;
use crate::exit::{GuestExit, RunStats};
use crate::host_fn::HostFunctions;
use crate::hypercall::Hypercalls;
use crate::interrupt::{Interrupter, StopReason};
use crate::io::GuestIo;
use crate::layout::GuestLayout;
use crate::machine::{Machine, MachineError};
use crate::runner::{run_loop, LoopControl, RunError};
use crate::seccomp::apply_vcpu_filter;
use crate::snapshot::{Snapshot, SnapshotError};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};
use xos_abi::layout::{self, PAGE_SIZE};

/// How long a worker spins for its next call before it blocks.
const WORKER_SPIN: Duration = Duration::from_micros(200);
/// How long a caller spins for its result before it blocks.
const CALLER_SPIN: Duration = Duration::from_micros(500);
/// How long a caller waits for a timed-out call before it reports the
/// timeout without it.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a caller waits for a killed call before it reports the kill
/// without it.
const KILL_GRACE: Duration = Duration::from_millis(50);

/// Resume page layout: the snapshot's 512-byte FXSAVE image (the legacy
/// part of its XSAVE area) at offset 0 (16-byte aligned, as `fxrstor`
/// wants), the snapshot's RIP at [`RESUME_RIP`], the trampoline at
/// [`RESUME_CODE`].
const RESUME_RIP: u64 = 512;
/// Offset of the trampoline in the resume page.
const RESUME_CODE: u64 = 576;

/// The resume page for `snapshot`.
fn resume_page(snapshot: &Snapshot) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for (chunk, word) in page[..512].chunks_exact_mut(4).zip(snapshot.xsave.iter()) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    page[RESUME_RIP as usize..RESUME_RIP as usize + 8]
        .copy_from_slice(&snapshot.regs.rip.to_le_bytes());
    let abs = |off: u64| ((layout::RESUME_PAGE + off) as u32).to_le_bytes();
    let mut code = vec![0x48, 0x0f, 0xae, 0x0c, 0x25]; // fxrstor64 [abs32]
    code.extend_from_slice(&abs(0));
    code.extend_from_slice(&[0xff, 0x24, 0x25]); // jmp qword [abs32]
    code.extend_from_slice(&abs(RESUME_RIP));
    page[RESUME_CODE as usize..RESUME_CODE as usize + code.len()].copy_from_slice(&code);
    page
}

/// Errors of a warm pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Making an instance failed.
    #[error("cannot create a pooled instance: {0}")]
    Machine(#[from] MachineError),
    /// Restoring the snapshot into an instance failed.
    #[error("cannot restore the snapshot into a pooled instance: {0}")]
    Snapshot(#[from] SnapshotError),
    /// The snapshot's guest is not at a ready point (its BootInfo is not
    /// usable).
    #[error(transparent)]
    Run(#[from] RunError),
    /// A worker thread could not be started.
    #[error("cannot start a pool worker thread: {0}")]
    Spawn(std::io::Error),
    /// A worker died without answering (a bug, or a host function that
    /// panicked in a way the runtime could not contain).
    #[error("a pool worker ended without a result")]
    WorkerLost,
    /// `max_instances` is 0.
    #[error("a warm pool needs at least one instance")]
    Empty,
}

/// How a pool runs its calls.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Instances at most (each is a VM with its worker thread).
    pub max_instances: usize,
    /// Time limit per call.
    pub timeout: Option<Duration>,
    /// Functions the guest may call.
    pub host_functions: HostFunctions,
    /// Output limit per call (stdout and stderr together).
    pub output_limit: Option<u64>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_instances: 4,
            timeout: None,
            host_functions: HostFunctions::new(),
            output_limit: Some(16 << 20),
        }
    }
}

/// What one pooled call produced.
#[derive(Debug)]
pub struct CallOutcome {
    /// How the guest ended.
    pub exit: GuestExit,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
    /// Counters.
    pub stats: RunStats,
}

/// A one-value mailbox between two threads: the receiver spins for a while
/// (cheap when the value comes soon), then blocks.
struct Handoff<T> {
    full: AtomicBool,
    slot: Mutex<Option<T>>,
    arrived: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent across a panic (plain
    // values moved in and out), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> Handoff<T> {
    fn new() -> Self {
        Handoff {
            full: AtomicBool::new(false),
            slot: Mutex::new(None),
            arrived: Condvar::new(),
        }
    }

    fn put(&self, value: T) {
        *lock(&self.slot) = Some(value);
        self.full.store(true, Ordering::Release);
        self.arrived.notify_one();
    }

    /// The value, waiting at most until `deadline`.
    fn take(&self, spin: Duration, deadline: Option<Instant>) -> Option<T> {
        let spin_until = Instant::now() + spin;
        while Instant::now() < spin_until {
            if self.full.load(Ordering::Acquire) {
                if let Some(v) = lock(&self.slot).take() {
                    self.full.store(false, Ordering::Release);
                    return Some(v);
                }
            }
            std::hint::spin_loop();
        }
        let mut slot = lock(&self.slot);
        loop {
            if let Some(v) = slot.take() {
                self.full.store(false, Ordering::Release);
                return Some(v);
            }
            slot = match deadline {
                None => self.arrived.wait(slot).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.arrived
                        .wait_timeout(slot, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

enum Request {
    Call {
        input: Vec<u8>,
        interrupter: Interrupter,
    },
    Stop,
}

struct Reply {
    result: Result<CallOutcome, RunError>,
    /// The instance was reset and can take another call.
    reusable: bool,
}

struct Worker {
    requests: Handoff<Request>,
    replies: Handoff<Reply>,
}

struct Shared {
    snapshot: Arc<Snapshot>,
    /// For each guest page, its index in `snapshot.pages` (or `u32::MAX`).
    page_index: Vec<u32>,
    config: PoolConfig,
    idle: Mutex<Vec<Arc<Worker>>>,
    freed: Condvar,
    live: AtomicUsize,
    /// Calls between their start and their result.
    in_flight: AtomicUsize,
}

impl Shared {
    /// `spin` when at most one call is in flight, else none.
    fn spin_if_alone(&self, spin: Duration) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) <= 1 {
            spin
        } else {
            Duration::ZERO
        }
    }
}

/// A pool of warm instances of one snapshot.
pub struct WarmPool {
    shared: Arc<Shared>,
}

impl WarmPool {
    /// A pool for `snapshot` (taken at the guest's ready point). One
    /// instance is made now, so configuration problems surface here; more
    /// are made on demand, up to `config.max_instances`.
    pub fn new(snapshot: Arc<Snapshot>, config: PoolConfig) -> Result<WarmPool, PoolError> {
        if config.max_instances == 0 {
            return Err(PoolError::Empty);
        }
        let pages = (snapshot.mem_size / PAGE_SIZE) as usize;
        let mut page_index = vec![u32::MAX; pages];
        for (i, (addr, _)) in snapshot.pages.iter().enumerate() {
            page_index[(addr / PAGE_SIZE) as usize] = i as u32;
        }
        let pool = WarmPool {
            shared: Arc::new(Shared {
                snapshot,
                page_index,
                config,
                idle: Mutex::new(Vec::new()),
                freed: Condvar::new(),
                live: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
            }),
        };
        pool.shared.live.fetch_add(1, Ordering::SeqCst);
        let first = pool.spawn_instance()?;
        lock(&pool.shared.idle).push(first);
        Ok(pool)
    }

    /// Instances alive now.
    pub fn instances(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Calls the function with `input` as stdin in a warm instance.
    pub fn call(&self, input: &[u8]) -> Result<CallOutcome, PoolError> {
        self.call_with(input, &Interrupter::new())
    }

    /// Like [`WarmPool::call`]; `interrupter` stops the call from another
    /// thread (a kill), also while the guest waits in a host function.
    pub fn call_with(
        &self,
        input: &[u8],
        interrupter: &Interrupter,
    ) -> Result<CallOutcome, PoolError> {
        crate::interrupt::install_handler().map_err(RunError::from)?;
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let result = self.call_in_flight(input, interrupter);
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        result
    }

    fn call_in_flight(
        &self,
        input: &[u8],
        interrupter: &Interrupter,
    ) -> Result<CallOutcome, PoolError> {
        let worker = self.acquire()?;
        worker.requests.put(Request::Call {
            input: input.to_vec(),
            interrupter: interrupter.clone(),
        });
        let timeout = self.shared.config.timeout;
        let spin = self.shared.spin_if_alone(CALLER_SPIN);
        let deadline = timeout.map(|t| Instant::now() + t);
        let reply = self.await_reply(&worker, spin, deadline, interrupter);
        let Some(reply) = reply else {
            // The worker is stuck in a host function; it ends the run
            // when that returns and then leaves the pool by itself.
            let exit = match interrupter.reason() {
                StopReason::Kill => GuestExit::Killed,
                _ => GuestExit::TimedOut {
                    limit: timeout.unwrap_or_default(),
                    regs: Box::default(),
                },
            };
            return Ok(CallOutcome {
                exit,
                stdout: Vec::new(),
                stderr: Vec::new(),
                stats: RunStats::default(),
            });
        };
        if reply.reusable {
            lock(&self.shared.idle).push(worker);
        }
        self.shared.freed.notify_one();
        Ok(reply.result?)
    }

    /// The worker's reply, stopping the call at `deadline` or when
    /// `interrupter` is told to. A stopped call gets [`STOP_GRACE`] to end;
    /// a call stuck in code the kick cannot interrupt (a host function that
    /// sleeps) is answered without its result, and its worker leaves the
    /// pool when that code returns.
    fn await_reply(
        &self,
        worker: &Worker,
        spin: Duration,
        deadline: Option<Instant>,
        interrupter: &Interrupter,
    ) -> Option<Reply> {
        // Wake up now and then to notice a kill: the interrupter cannot
        // signal this wait.
        const KILL_CHECK: Duration = Duration::from_millis(20);
        let mut spin = spin;
        loop {
            let now = Instant::now();
            match interrupter.reason() {
                StopReason::None => {}
                // A kill wants no partial output: a short grace.
                StopReason::Kill => {
                    return worker.replies.take(Duration::ZERO, Some(now + KILL_GRACE));
                }
                StopReason::Timeout => {
                    return worker.replies.take(Duration::ZERO, Some(now + STOP_GRACE));
                }
            }
            if deadline.is_some_and(|d| now >= d) {
                interrupter.stop(StopReason::Timeout);
                return worker.replies.take(Duration::ZERO, Some(now + STOP_GRACE));
            }
            let slice = now + KILL_CHECK;
            let until = deadline.map_or(slice, |d| d.min(slice));
            if let Some(r) = worker.replies.take(spin, Some(until)) {
                return Some(r);
            }
            spin = Duration::ZERO;
        }
    }

    /// An idle instance, a new one if the pool may grow, or the next one to
    /// become idle.
    fn acquire(&self) -> Result<Arc<Worker>, PoolError> {
        let mut idle = lock(&self.shared.idle);
        loop {
            if let Some(w) = idle.pop() {
                return Ok(w);
            }
            // Reserve the slot under the lock, so concurrent callers
            // cannot all grow the pool past its bound.
            if self.shared.live.load(Ordering::SeqCst) < self.shared.config.max_instances {
                self.shared.live.fetch_add(1, Ordering::SeqCst);
                drop(idle);
                return self.spawn_instance();
            }
            idle = self
                .shared
                .freed
                .wait(idle)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Makes an instance (on this thread: VM creation is not allowed on a
    /// filtered one) and starts its worker, in a slot of `live` the caller
    /// reserved; the slot is given back if that fails.
    fn spawn_instance(&self) -> Result<Arc<Worker>, PoolError> {
        let result = self.try_spawn_instance();
        if result.is_err() {
            self.shared.live.fetch_sub(1, Ordering::SeqCst);
            self.shared.freed.notify_one();
        }
        result
    }

    fn try_spawn_instance(&self) -> Result<Arc<Worker>, PoolError> {
        crate::reaper::start();
        let snapshot = &self.shared.snapshot;
        let mut machine = Machine::new_logged(snapshot.mem_size, Privilege::User)?;
        snapshot.restore_into(&mut machine)?;
        machine
            .memory()
            .write_slice(&resume_page(snapshot), GuestAddress(layout::RESUME_PAGE))
            .map_err(|source| SnapshotError::Memory {
                addr: layout::RESUME_PAGE,
                source,
            })?;
        let worker = Arc::new(Worker {
            requests: Handoff::new(),
            replies: Handoff::new(),
        });
        let shared = self.shared.clone();
        let thread_worker = worker.clone();
        let spawned = std::thread::Builder::new()
            .name("xos-pool".into())
            .spawn(move || {
                crate::interrupt::unblock_kick_signal();
                serve(&shared, &thread_worker, machine);
                shared.live.fetch_sub(1, Ordering::SeqCst);
                shared.freed.notify_one();
            });
        spawned.map_err(PoolError::Spawn)?;
        Ok(worker)
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        for w in lock(&self.shared.idle).drain(..) {
            w.requests.put(Request::Stop);
        }
    }
}

/// A worker: serves calls on its instance until told to stop or until a
/// call leaves the instance unfit for reuse.
fn serve(shared: &Shared, worker: &Worker, mut machine: Machine) {
    if let Err(e) = apply_vcpu_filter() {
        tracing::warn!(error = %e, "pool worker without its filter: not serving");
        drain_with_error(worker, RunError::from(e));
        return;
    }
    // Pages written by the guest in any call so far, plus those the
    // monitor always writes: restored after every call.
    let mut written = vec![0u64; shared.page_index.len().div_ceil(64)];
    mark(&mut written, layout::BOOT_INFO, PAGE_SIZE);
    while let Some(Request::Call { input, interrupter }) = worker
        .requests
        .take(shared.spin_if_alone(WORKER_SPIN), None)
    {
        let (result, host_writes) = run_call(shared, &mut machine, input, &interrupter);
        let fit = matches!(
            &result,
            Ok(o) if matches!(o.exit, GuestExit::Exited(_) | GuestExit::Aborted(_))
        );
        // Reset before answering: the caller should not get an instance
        // back before it is clean, and a failed reset must be reported.
        let reset = if fit {
            for (addr, len) in host_writes {
                mark(&mut written, addr, len);
            }
            reset(shared, &mut machine, &mut written)
        } else {
            Ok(())
        };
        let reusable = fit && reset.is_ok();
        let result = match (result, reset) {
            (Ok(outcome), Ok(())) => Ok(outcome),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
        };
        worker.replies.put(Reply { result, reusable });
        if !reusable {
            break;
        }
    }
    crate::reaper::dispose(machine);
}

/// Answers the one request that may be waiting with `error`.
fn drain_with_error(worker: &Worker, error: RunError) {
    if let Some(Request::Call { .. }) = worker.requests.take(Duration::ZERO, Some(Instant::now())) {
        worker.replies.put(Reply {
            result: Err(error),
            reusable: false,
        });
    }
}

/// Runs one call from the ready point. Returns the outcome and the guest
/// ranges the monitor wrote (to be reset too).
fn run_call(
    shared: &Shared,
    machine: &mut Machine,
    input: Vec<u8>,
    interrupter: &Interrupter,
) -> (Result<CallOutcome, RunError>, Vec<(u64, u64)>) {
    let (io, stdout, stderr) = GuestIo::capture(input);
    let mut io = io;
    let mem_size = machine.mem_size();
    let layout = match GuestLayout::resume(machine.memory(), mem_size, &mut *io.stdin) {
        Ok(l) => l,
        Err(e) => return (Err(e.into()), Vec::new()),
    };
    let mut host_writes = vec![(layout.stdin, layout.stdin_cap)];
    let mut hypercalls = Hypercalls::new(layout, io, shared.config.host_functions.clone())
        .with_output_limit(shared.config.output_limit);
    let mut control = LoopControl {
        timeout: shared.config.timeout,
        stop_at_ready: false,
        on_resume: None,
        device: None,
    };
    let attached = interrupter.attach(machine.immediate_exit_ptr());
    let result = run_loop(machine, &mut hypercalls, interrupter, &mut control);
    drop(attached);
    host_writes.extend(hypercalls.host_writes());
    let outcome = result.map(|(exit, exits)| CallOutcome {
        exit,
        stdout: stdout.take(),
        stderr: stderr.take(),
        stats: RunStats {
            exits,
            hypercalls: hypercalls.count,
        },
    });
    (outcome, host_writes)
}

/// Sets the bits of the pages `[addr, addr+len)` touches.
fn mark(bitmap: &mut [u64], addr: u64, len: u64) {
    if len == 0 {
        return;
    }
    let first = addr / PAGE_SIZE;
    let last = (addr.saturating_add(len) - 1) / PAGE_SIZE;
    for page in first..=last {
        if let Some(word) = bitmap.get_mut((page / 64) as usize) {
            *word |= 1 << (page % 64);
        }
    }
}

/// Brings the instance back to the snapshot: every page ever written,
/// then the registers.
fn reset(shared: &Shared, machine: &mut Machine, written: &mut [u64]) -> Result<(), RunError> {
    let logged = machine.written_pages()?;
    for (w, l) in written.iter_mut().zip(logged) {
        *w |= l;
    }
    let zero = [0u8; PAGE_SIZE as usize];
    for (word_index, &word) in written.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let page = word_index * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let Some(&index) = shared.page_index.get(page) else {
                continue;
            };
            let data: &[u8] = if index == u32::MAX {
                &zero
            } else {
                &shared.snapshot.pages[index as usize].1
            };
            let addr = page as u64 * PAGE_SIZE;
            machine
                .memory()
                .write_slice(data, GuestAddress(addr))
                .map_err(|source| SnapshotError::Memory { addr, source })?;
        }
    }
    let s = &shared.snapshot;
    let regs = kvm_bindings::kvm_regs {
        rip: layout::RESUME_PAGE + RESUME_CODE,
        ..s.regs
    };
    machine.set_registers_on_entry(&regs, &s.sregs);
    Ok(())
}
