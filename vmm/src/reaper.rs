//! Tearing VMs down when the machine has nothing better to do.
//!
//! Closing a VM costs ~0.3-0.6 ms of kernel work on the project's machines
//! (sometimes several ms), more than half of what starting one costs. Done
//! by the executor right after a run, it competes for the CPUs with the
//! next start. So finished machines go to a reaper thread scheduled with
//! `SCHED_IDLE`: the kernel runs it only on a CPU that would otherwise be
//! idle. The backlog is bounded: when the reaper falls behind, executors
//! tear down themselves, so memory held by dead VMs stays bounded.

use crate::machine::Machine;
use crate::seccomp::apply_vcpu_filter;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Mutex, OnceLock};

/// Dead machines waiting for the reaper at most.
const MAX_BACKLOG: usize = 32;

static BACKLOG: AtomicUsize = AtomicUsize::new(0);

static REAPER: OnceLock<Option<Mutex<SyncSender<Machine>>>> = OnceLock::new();

/// Starts the reaper thread if it is not running. Call it from a thread
/// without the vCPU seccomp filter (the filter refuses thread creation);
/// the runner does, before it hands work to an executor.
pub fn start() {
    REAPER.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<Machine>(MAX_BACKLOG);
        let spawned = std::thread::Builder::new()
            .name("xos-reaper".into())
            .spawn(move || {
                lower_priority();
                if let Err(e) = apply_vcpu_filter() {
                    // Without its filter the reaper would be the least
                    // confined thread touching VM state: stop, and let
                    // executors tear down themselves.
                    tracing::warn!(error = %e, "VM reaper disabled");
                    return;
                }
                for machine in rx {
                    drop(machine);
                    BACKLOG.fetch_sub(1, Ordering::SeqCst);
                }
            });
        match spawned {
            Ok(_) => Some(Mutex::new(tx)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the VM reaper; VMs are torn down inline");
                None
            }
        }
    });
}

fn reaper() -> Option<&'static Mutex<SyncSender<Machine>>> {
    REAPER.get().and_then(Option::as_ref)
}

/// Makes the calling thread `SCHED_IDLE`; on failure it keeps its priority
/// (teardown still happens, only less politely).
fn lower_priority() {
    // SAFETY: sched_param is plain data; policy SCHED_IDLE requires
    // priority 0; pid 0 means the calling thread.
    let rc = unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "reaper keeps normal priority");
    }
}

/// Tears `machine` down in the background, or right here when the reaper
/// is behind, not started or unavailable.
pub fn dispose(machine: Machine) {
    let Some(reaper) = reaper() else {
        drop(machine);
        return;
    };
    if BACKLOG.fetch_add(1, Ordering::SeqCst) >= MAX_BACKLOG {
        BACKLOG.fetch_sub(1, Ordering::SeqCst);
        drop(machine);
        return;
    }
    let sender = reaper.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Err(mpsc::TrySendError::Full(m) | mpsc::TrySendError::Disconnected(m)) =
        sender.try_send(machine)
    {
        BACKLOG.fetch_sub(1, Ordering::SeqCst);
        drop(m);
    }
}

/// Machines waiting to be torn down (for tests and diagnostics).
pub fn backlog() -> usize {
    BACKLOG.load(Ordering::SeqCst)
}
