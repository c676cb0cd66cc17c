//! Reusable vCPU threads.
//!
//! Starting a thread and installing its seccomp filter costs ~210 µs on the
//! project's machines (the filter alone ~125 µs), more than a third of a
//! whole cold virtine start. So guests run on executor threads that install
//! the vCPU filter once, when they start, and then serve one run after
//! another. A run's VM goes to the reaper ([`crate::reaper`]) after the
//! result has been handed back, off the caller's path. Idle executors
//! beyond a few exit, so a burst of concurrent runs does not leave threads
//! behind (slowly: idle executors wait for work one at a time, holding the
//! queue's lock, so extras leave one per linger period).

use crate::seccomp::{apply_vcpu_filter, SeccompError};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Work for an executor: runs a guest, reports, tears down.
pub type Job = Box<dyn FnOnce() + Send>;

/// Errors handing work to an executor.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// A new executor thread could not be started.
    #[error("cannot start a vCPU thread: {0}")]
    Spawn(std::io::Error),
    /// The filter could not be installed on a new executor.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// Idle executors kept for the next runs.
const KEEP_IDLE: usize = 4;
/// How long an extra idle executor waits before it exits.
const IDLE_LINGER: Duration = Duration::from_secs(5);

struct State {
    idle: usize,
    total: usize,
}

struct Pool {
    jobs: Mutex<Receiver<Job>>,
    submit: Mutex<Sender<Job>>,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Executors never panic while holding these locks (jobs run outside
    // them), so a poisoned lock still guards consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pool() -> &'static Arc<Pool> {
    static POOL: OnceLock<Arc<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        Arc::new(Pool {
            jobs: Mutex::new(rx),
            submit: Mutex::new(tx),
            state: Mutex::new(State { idle: 0, total: 0 }),
        })
    })
}

/// Runs `job` on an executor thread that has the vCPU seccomp filter
/// installed, starting one if none is idle.
pub fn submit(job: Job) -> Result<(), ExecutorError> {
    let pool = pool();
    let need_thread = {
        let mut s = lock(&pool.state);
        if s.idle > 0 {
            s.idle -= 1;
            false
        } else {
            s.total += 1;
            true
        }
    };
    if need_thread {
        if let Err(e) = start_executor(pool.clone()) {
            lock(&pool.state).total -= 1;
            return Err(e);
        }
    }
    // The receiver lives in the pool, which is never dropped: send succeeds.
    let _ = lock(&pool.submit).send(job);
    Ok(())
}

/// Starts an executor and waits until its filter is in place, so a failure
/// to install it is reported to the caller instead of being lost.
fn start_executor(pool: Arc<Pool>) -> Result<(), ExecutorError> {
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("xos-vcpu".into())
        .spawn(move || {
            crate::interrupt::unblock_kick_signal();
            if let Err(e) = apply_vcpu_filter() {
                let _ = ready_tx.send(Err(e));
                return;
            }
            let _ = ready_tx.send(Ok(()));
            executor_loop(&pool);
        })
        .map_err(ExecutorError::Spawn)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ExecutorError::Spawn(std::io::Error::other(
            "the vCPU thread ended during start-up",
        ))),
    }
}

fn executor_loop(pool: &Pool) {
    loop {
        let job = {
            let jobs = lock(&pool.jobs);
            jobs.recv_timeout(IDLE_LINGER)
        };
        match job {
            // A job that panics (a bug, or an embedder's code) loses its
            // own result, which its caller reports; the executor lives on.
            Ok(job) => {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let mut s = lock(&pool.state);
                if s.idle > KEEP_IDLE {
                    s.idle -= 1;
                    s.total -= 1;
                    return;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let mut s = lock(&pool.state);
        if s.idle >= KEEP_IDLE {
            s.total -= 1;
            return;
        }
        s.idle += 1;
    }
}

/// Executor threads alive now (for tests and diagnostics).
pub fn threads() -> usize {
    lock(&pool().state).total
}
