//! Stopping a running guest from another thread.
//!
//! KVM_RUN only returns when the guest exits or a signal arrives. To stop a
//! guest that never exits (an endless loop), the interrupter sets the
//! vCPU's `immediate_exit` flag (so a KVM_RUN that is just about to start
//! returns at once) and then signals the vCPU thread (so one already in the
//! guest returns with EINTR). The flag closes the race where the signal
//! lands between the monitor's check and the ioctl.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// Why a guest was interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Not interrupted.
    None = 0,
    /// Its time limit passed.
    Timeout = 1,
    /// An explicit kill.
    Kill = 2,
}

/// Errors installing the kick signal handler.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// `sigaction` failed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Handler(String),
}

/// The real-time signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN() + 2
}

thread_local! {
    /// Set by the kick handler on the vCPU thread it interrupts. Constant
    /// initialisation, no destructor: safe to touch from a signal handler.
    static KICKED: Cell<bool> = const { Cell::new(false) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // KVM_RUN returns with EINTR by itself; the flag tells host I/O that
    // the monitor was blocked in (reading stdin, writing to a full pipe)
    // that the run is being stopped.
    KICKED.with(|k| k.set(true));
}

/// True when the current run on this vCPU thread is being stopped (a
/// timeout or a kill reached it). Host I/O done on behalf of the guest
/// checks it whenever a blocking call is interrupted.
pub fn stop_requested() -> bool {
    KICKED.with(Cell::get)
}

/// Marks the current run on this thread as being stopped, for runtimes
/// that stop guests with their own signal (the thread ICF): host waits done
/// on the guest's behalf then give up as they do after a kick.
/// Async-signal-safe.
pub fn request_stop_here() {
    KICKED.with(|k| k.set(true));
}

/// Clears [`request_stop_here`] (and a kick) before this thread's next run.
pub fn clear_stop_request() {
    KICKED.with(|k| k.set(false));
}

/// Installs the kick handler once per process.
pub fn install_handler() -> Result<(), InterruptError> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.to_string()))
        .clone()
        .map_err(InterruptError::Handler)
}

/// Where the running vCPU is: its `immediate_exit` byte and its thread.
struct Target {
    immediate_exit: *mut u8,
    thread: libc::pthread_t,
}

// SAFETY: the pointer is only dereferenced while the mutex is held and the
// vCPU it points into is alive: the vCPU thread clears the target under the
// same mutex before it drops the vCPU (the `Attached` guard, dropped before
// the machine even when the thread unwinds); pthread_t is a plain thread id.
unsafe impl Send for Target {}

struct Inner {
    target: Mutex<Option<Target>>,
    reason: AtomicU8,
    safe_point: AtomicBool,
    /// Tells a guest outside this process about a safe-point request.
    safe_point_hook: Mutex<Option<SafePointHook>>,
    /// Tells whoever holds a parked guest's gate about a stop.
    stop_hook: Mutex<Option<StopHook>>,
}

/// Called when the run is stopped (see [`Interrupter::set_stop_hook`]).
pub type StopHook = Box<dyn Fn() + Send>;

/// Called when a safe point is requested (see
/// [`Interrupter::set_safe_point_hook`]).
pub type SafePointHook = Box<dyn Fn() + Send>;

/// A cloneable handle that stops one guest run.
#[derive(Clone)]
pub struct Interrupter {
    inner: Arc<Inner>,
}

impl Default for Interrupter {
    fn default() -> Self {
        Self::new()
    }
}

impl Interrupter {
    /// A handle not yet attached to a running vCPU.
    pub fn new() -> Self {
        Interrupter {
            inner: Arc::new(Inner {
                target: Mutex::new(None),
                reason: AtomicU8::new(StopReason::None as u8),
                safe_point: AtomicBool::new(false),
                safe_point_hook: Mutex::new(None),
                stop_hook: Mutex::new(None),
            }),
        }
    }

    fn target(&self) -> MutexGuard<'_, Option<Target>> {
        // A poisoned lock only means another thread panicked while holding
        // it; the data (a pointer and a thread id) is still consistent.
        self.inner
            .target
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Stops the guest because of `reason`. Works before the run starts
    /// (the run then ends at once), during it, and after it (no effect on
    /// that run). The reason sticks: use one interrupter per run.
    pub fn stop(&self, reason: StopReason) {
        let _ = self.inner.reason.compare_exchange(
            StopReason::None as u8,
            reason as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        if let Some(t) = self.target().as_ref() {
            // SAFETY: the target is set only while the vCPU (and so its
            // kvm_run mapping) is alive, and we hold the lock that its
            // removal takes. A volatile write: KVM reads the byte.
            unsafe { std::ptr::write_volatile(t.immediate_exit, 1) };
            // SAFETY: the thread id belongs to the vCPU thread, which is
            // alive while the target is set; the signal has a handler.
            unsafe { libc::pthread_kill(t.thread, kick_signal()) };
        }
        if let Some(hook) = self.stop_hook().as_ref() {
            hook();
        }
    }

    /// Has `hook` called on every later [`Interrupter::stop`] (`None`
    /// removes it), and once now if the run was stopped already: a guest
    /// parked without a vCPU of its own (an EPT view serving calls that
    /// switch with `VMFUNC`, no monitor in between) closes its gate this
    /// way, so that its owner's kill or time limit holds at the next call.
    pub fn set_stop_hook(&self, hook: Option<StopHook>) {
        let mut slot = self.stop_hook();
        *slot = hook;
        if let (Some(hook), true) = (slot.as_ref(), self.reason() != StopReason::None) {
            hook();
        }
    }

    fn stop_hook(&self) -> MutexGuard<'_, Option<StopHook>> {
        // As for `target`: a poisoned lock still holds a usable value.
        self.inner
            .stop_hook
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Stops the guest: an explicit kill.
    pub fn kill(&self) {
        self.stop(StopReason::Kill)
    }

    /// Asks the execution flow to stop at its next safe point (the
    /// `SAFE_POINT` hypercall), so that it can be carried into another IC
    /// (`mutate`). Unlike a stop it does not interrupt the guest: it ends
    /// the run only where the guest says it may.
    pub fn request_safe_point(&self) {
        self.inner.safe_point.store(true, Ordering::SeqCst);
        if let Some(hook) = self.safe_point_hook().as_ref() {
            hook();
        }
    }

    /// Has `hook` called on every later [`Interrupter::request_safe_point`]
    /// (`None` removes it), and once now if one was requested already: a
    /// guest in another process learns of requests this way.
    pub fn set_safe_point_hook(&self, hook: Option<SafePointHook>) {
        let mut slot = self.safe_point_hook();
        *slot = hook;
        if let (Some(hook), true) = (slot.as_ref(), self.safe_point_requested()) {
            hook();
        }
    }

    fn safe_point_hook(&self) -> MutexGuard<'_, Option<SafePointHook>> {
        // As for `target`: a poisoned lock still holds a usable value.
        self.inner
            .safe_point_hook
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Whether [`Interrupter::request_safe_point`] was called.
    pub fn safe_point_requested(&self) -> bool {
        self.inner.safe_point.load(Ordering::SeqCst)
    }

    /// Why the guest was stopped, if it was.
    pub fn reason(&self) -> StopReason {
        match self.inner.reason.load(Ordering::SeqCst) {
            1 => StopReason::Timeout,
            2 => StopReason::Kill,
            _ => StopReason::None,
        }
    }

    /// Called on the vCPU thread before entering the guest; the returned
    /// guard detaches when dropped, also when the thread unwinds, so the
    /// handle never points into a vCPU that is gone.
    pub(crate) fn attach(&self, immediate_exit: *mut u8) -> Attached<'_> {
        KICKED.with(|k| k.set(false));
        let mut target = self.target();
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        *target = Some(Target {
            immediate_exit,
            thread,
        });
        if self.reason() != StopReason::None {
            // SAFETY: the pointer comes from the live vCPU of this thread.
            unsafe { std::ptr::write_volatile(immediate_exit, 1) };
        }
        Attached { interrupter: self }
    }

    fn detach(&self) {
        *self.target() = None;
    }
}

/// Keeps an [`Interrupter`] attached to the running vCPU; detaches on drop.
pub(crate) struct Attached<'a> {
    interrupter: &'a Interrupter,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.interrupter.detach();
    }
}

/// Unblocks the kick signal on the calling thread: threads inherit their
/// creator's signal mask, and an embedder that blocks signals would
/// otherwise make timeouts and kills of guests impossible.
pub fn unblock_kick_signal() {
    // SAFETY: the set is initialised by sigemptyset before use; the calls
    // only change this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}
