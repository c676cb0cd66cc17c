//! Tearing VMs down when the machine has nothing better to do.
//!
//! Closing a VM costs ~0.3-0.6 ms of kernel work on the project's machines
//! (sometimes several ms), more than half of what starting one costs. Done
//! by the executor right after a run, it competes for the CPUs with the
//! next start. So finished machines go to a reaper thread scheduled with
//! `SCHED_IDLE`: the kernel runs it only on a CPU that would otherwise be
//! idle. The backlog is bounded, by count and by the guest memory the dead
//! VMs hold: when the reaper falls behind, executors tear down themselves.

use crate::machine::Machine;
use crate::seccomp::apply_vcpu_filter;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Mutex, OnceLock};

/// Dead machines waiting for the reaper at most.
const MAX_BACKLOG: usize = 32;
/// Guest memory held by dead machines waiting for the reaper at most
/// (their pages stay allocated until they are torn down).
const MAX_BACKLOG_BYTES: u64 = 1 << 30;

static BACKLOG: AtomicUsize = AtomicUsize::new(0);
static BACKLOG_BYTES: AtomicU64 = AtomicU64::new(0);

static REAPER: OnceLock<Mutex<SyncSender<Machine>>> = OnceLock::new();

/// Starts the reaper thread if it is not running. Call it from a thread
/// without the vCPU seccomp filter (the filter refuses thread creation);
/// the runner does, before it hands work to an executor.
pub fn start() {
    if REAPER.get().is_some() {
        return;
    }
    // Racing starters may both spawn; the loser's thread ends at once (its
    // sender is dropped) and the winner's stays.
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
                let bytes = machine.mem_size();
                drop(machine);
                BACKLOG_BYTES.fetch_sub(bytes, Ordering::SeqCst);
                BACKLOG.fetch_sub(1, Ordering::SeqCst);
            }
        });
    match spawned {
        Ok(_) => {
            let _ = REAPER.set(Mutex::new(tx));
        }
        // Not remembered: a later start (from a thread that may create
        // threads) tries again; meanwhile VMs are torn down inline.
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the VM reaper; VMs are torn down inline")
        }
    }
}

fn reaper() -> Option<&'static Mutex<SyncSender<Machine>>> {
    REAPER.get()
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
    let bytes = machine.mem_size();
    // Both counters are raised first (and lowered together by `undo`), so
    // they stay consistent whichever limit is hit.
    let queued = BACKLOG.fetch_add(1, Ordering::SeqCst);
    let queued_bytes = BACKLOG_BYTES.fetch_add(bytes, Ordering::SeqCst);
    let over = queued >= MAX_BACKLOG || queued_bytes + bytes > MAX_BACKLOG_BYTES;
    let undo = || {
        BACKLOG.fetch_sub(1, Ordering::SeqCst);
        BACKLOG_BYTES.fetch_sub(bytes, Ordering::SeqCst);
    };
    if over {
        undo();
        drop(machine);
        return;
    }
    let sender = reaper.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Err(mpsc::TrySendError::Full(m) | mpsc::TrySendError::Disconnected(m)) =
        sender.try_send(machine)
    {
        undo();
        drop(m);
    }
}

/// Machines waiting to be torn down (for tests and diagnostics).
pub fn backlog() -> usize {
    BACKLOG.load(Ordering::SeqCst)
}
