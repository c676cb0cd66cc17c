//! The process baselines, measured in a clean process.
//!
//! `fork` costs more in a process with several threads that have run on
//! several CPUs (copy-on-write protection of the parent's pages then needs
//! TLB shoot-downs on the other CPUs, which are VM exits on this machine):
//! once the monitor's executor and reaper threads exist, `fork+_exit+wait`
//! here goes from ~160 µs to ~240 µs. A launcher that starts processes is
//! usually not such a process, and the bars should compare virtines with
//! the *cheaper* way of starting a process. So, before anything starts a
//! thread, `xos-vmm bench` forks a single-threaded helper that runs the
//! baselines on request (over two pipes), interleaved with the KVM
//! benchmarks that run in the parent.

use super::measure;
use anyhow::{bail, Context};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

/// A baseline the helper can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Baseline {
    /// `baseline.fork_wait`.
    ForkWait = 1,
    /// `baseline.fork_exec_wait`.
    ForkExecWait = 2,
    /// `baseline.thread_spawn_join`.
    ThreadSpawnJoin = 3,
}

impl Baseline {
    fn from_u8(v: u8) -> Option<Baseline> {
        match v {
            1 => Some(Baseline::ForkWait),
            2 => Some(Baseline::ForkExecWait),
            3 => Some(Baseline::ThreadSpawnJoin),
            _ => None,
        }
    }

    /// Measures `samples` samples in this process.
    pub fn measure_here(self, samples: usize) -> anyhow::Result<Vec<u64>> {
        match self {
            Baseline::ForkWait => measure::measure_fork_wait(samples),
            Baseline::ForkExecWait => measure::measure_fork_exec_wait(samples),
            Baseline::ThreadSpawnJoin => measure::measure_thread_spawn_join(samples),
        }
    }
}

struct Helper {
    requests: File,
    replies: File,
    pid: libc::pid_t,
}

static HELPER: OnceLock<Mutex<Option<Helper>>> = OnceLock::new();

/// Starts the helper process. Call it first thing, while this process has a
/// single thread; otherwise (or if `fork` fails) it returns `false` and the
/// baselines run in this process.
pub fn start() -> bool {
    let mut started = false;
    HELPER.get_or_init(|| {
        let helper = spawn_helper().ok().flatten();
        started = helper.is_some();
        Mutex::new(helper)
    });
    started
}

/// Whether the helper runs.
pub fn running() -> bool {
    HELPER
        .get()
        .is_some_and(|h| h.lock().map(|h| h.is_some()).unwrap_or(false))
}

fn pipe() -> anyhow::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2 failed");
    }
    // SAFETY: pipe2 succeeded: both fds are open and owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((File::from(r), File::from(w)))
}

fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().nth(17)?.parse::<usize>().ok()
        })
        == Some(1)
}

fn spawn_helper() -> anyhow::Result<Option<Helper>> {
    if !single_threaded() {
        return Ok(None);
    }
    let (req_r, req_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    // SAFETY: this process has a single thread (checked above), so the child
    // is an ordinary copy of it and may run any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Ok(None);
    }
    if pid == 0 {
        drop(req_w);
        drop(rep_r);
        serve(req_r, rep_w);
        // SAFETY: ends the helper without running the parent's exit
        // handlers or flushing its copied stdio buffers.
        unsafe { libc::_exit(0) }
    }
    drop(req_r);
    drop(rep_w);
    Ok(Some(Helper {
        requests: req_w,
        replies: rep_r,
        pid,
    }))
}

/// The helper's loop: one request (kind, samples) at a time, until the
/// parent closes the pipe.
fn serve(mut requests: File, mut replies: File) {
    let mut req = [0u8; 9];
    while requests.read_exact(&mut req).is_ok() {
        let samples = u64::from_le_bytes(req[1..9].try_into().unwrap_or_default()) as usize;
        let result = match Baseline::from_u8(req[0]) {
            Some(kind) => kind.measure_here(samples),
            None => Err(anyhow::anyhow!("unknown baseline {}", req[0])),
        };
        let reply = match result {
            Ok(ns) => {
                let mut r = vec![0u8];
                r.extend_from_slice(&(ns.len() as u64).to_le_bytes());
                ns.iter()
                    .for_each(|v| r.extend_from_slice(&v.to_le_bytes()));
                r
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let mut r = vec![1u8];
                r.extend_from_slice(&(msg.len() as u64).to_le_bytes());
                r.extend_from_slice(msg.as_bytes());
                r
            }
        };
        if replies.write_all(&reply).is_err() {
            return;
        }
    }
}

fn ask(helper: &mut Helper, kind: Baseline, samples: usize) -> anyhow::Result<Vec<u64>> {
    let mut req = vec![kind as u8];
    req.extend_from_slice(&(samples as u64).to_le_bytes());
    helper
        .requests
        .write_all(&req)
        .context("cannot send a request to the baseline helper process")?;
    let mut head = [0u8; 9];
    helper
        .replies
        .read_exact(&mut head)
        .context("the baseline helper process did not answer")?;
    let len = u64::from_le_bytes(head[1..9].try_into().unwrap_or_default()) as usize;
    match head[0] {
        0 => {
            let mut body = vec![0u8; len * 8];
            helper
                .replies
                .read_exact(&mut body)
                .context("short answer from the baseline helper process")?;
            Ok(body
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect())
        }
        _ => {
            let mut body = vec![0u8; len];
            helper
                .replies
                .read_exact(&mut body)
                .context("short answer from the baseline helper process")?;
            bail!("{}", String::from_utf8_lossy(&body))
        }
    }
}

/// Measures `samples` samples of `kind` in the helper process if it runs,
/// else in this process.
pub fn measure(kind: Baseline, samples: usize) -> anyhow::Result<Vec<u64>> {
    if let Some(lock) = HELPER.get() {
        let mut guard = lock
            .lock()
            .map_err(|_| anyhow::anyhow!("the baseline helper's lock is poisoned"))?;
        if let Some(helper) = guard.as_mut() {
            return ask(helper, kind, samples);
        }
    }
    kind.measure_here(samples)
}

/// Stops the helper process (closes its pipe and reaps it).
pub fn stop() {
    let Some(lock) = HELPER.get() else { return };
    let Ok(mut guard) = lock.lock() else { return };
    if let Some(helper) = guard.take() {
        let pid = helper.pid;
        drop(helper);
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
}
