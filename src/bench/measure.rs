//! The measurements, shared by `xos-vmm bench` and the criterion benches.
//!
//! Every function returns one duration in nanoseconds per sample and does
//! its own unmeasured warm-up. Errors carry context; nothing panics.

use anyhow::{bail, ensure, Context};
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm::arch::cpu::Privilege;
use vmm::machine::Machine;
use vmm::runner::{PreparedRun, RunConfig, RunOutcome};
use vmm::{GuestExit, GuestIo, Interrupter, Program};
use xos_abi::layout::{BOOT_INFO, IMAGE_BASE, STACK_TOP};
use xos_abi::DOORBELL;

/// The image of the cold-start benchmark (its `main` returns 0).
pub const TRIVIAL_IMAGE: &str = "trivial-c";
/// The image of the hypercall benchmark (argv[1] = N NOP hypercalls).
pub const HCLOOP_IMAGE: &str = "hcloop-c";
/// The trivial function with a ready point (`xos_ready()`, then return 0),
/// for the warm-pool and snapshot benchmarks.
pub const NOOP_IMAGE: &str = "noop-c";
/// Unmeasured calls that warm a pool instance up (first writes to each
/// page fault once, see `vmm::pool`).
const WARM_CALL_WARMUP: usize = 20;
/// Round trips performed and discarded before the kept ones (the first
/// entries fault in the guest's pages and the monitor's code paths).
pub const ROUNDTRIP_WARMUP: usize = 20;

/// Nanoseconds of a duration, saturating.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The bytes of a built-in guest image.
pub fn image_bytes(name: &str) -> anyhow::Result<&'static [u8]> {
    let image = xos_images::find(name)
        .with_context(|| format!("the built-in image '{name}' does not exist in xos-images"))?;
    Ok(image.bytes)
}

/// Path of the static native executable of the trivial function.
pub fn native_trivial_path() -> &'static str {
    xos_images::NATIVE_TRIVIAL
}

fn check_exit(what: &str, outcome: &RunOutcome, stderr: &vmm::SharedBuffer) -> anyhow::Result<()> {
    if outcome.exit != GuestExit::Exited(0) {
        bail!(
            "{what}: the guest ended with {:?} instead of exit code 0 (its stderr: {:?})",
            outcome.exit,
            String::from_utf8_lossy(&stderr.contents())
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// virtine.cold

/// How `virtine.cold` samples are spaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacing {
    /// Before the next sample, wait until the previous sample's VM is torn
    /// down in the background (its fds closed, its memory unmapped): each
    /// sample then measures a cold start that competes with no tear-down.
    AfterTeardown,
    /// Back to back: the previous VMs' background tear-downs may overlap
    /// the next sample (at most [`MAX_PENDING_TEARDOWNS`] of them: beyond
    /// that the next sample waits, so they cannot pile up).
    BackToBack,
}

/// With [`Pacing::BackToBack`], how many tear-downs may still be running
/// when the next sample starts.
pub const MAX_PENDING_TEARDOWNS: usize = 4;

/// What one series of cold starts measured, in nanoseconds per sample.
#[derive(Clone, Debug, Default)]
pub struct ColdSamples {
    /// Parse + create + run on the vCPU thread + result (the benchmark).
    pub total: Vec<u64>,
    /// Of that, parse + `PreparedRun::new` ([`ColdPath::Sequential`] only).
    pub create: Vec<u64>,
    /// Of that, the guest's own time: first `KVM_RUN` to its exit
    /// hypercall served ([`RunOutcome::guest_time`]).
    pub guest: Vec<u64>,
    /// With [`Pacing::AfterTeardown`]: from the result until the VM's fds
    /// are closed and its memory unmapped (the background tear-down),
    /// measured by polling every 20 µs.
    pub teardown_wait: Vec<u64>,
}

/// Which code path a cold start takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColdPath {
    /// [`vmm::run_program`], the path the VIC layer (`icf::virtine`) uses:
    /// the executor creates the vCPU while the caller sets up memory.
    Pipelined,
    /// [`PreparedRun::new`] then [`PreparedRun::run`]: every step one after
    /// the other (for comparison).
    Sequential,
}

/// The timings of one cold start.
#[derive(Clone, Copy, Debug)]
pub struct ColdSample {
    /// Parse + create + run + result: the benchmark's sample.
    pub total: Duration,
    /// With [`ColdPath::Sequential`]: parse + `PreparedRun::new` (VM
    /// creation and loading); zero with [`ColdPath::Pipelined`].
    pub create: Duration,
    /// The guest's own time ([`RunOutcome::guest_time`]: first `KVM_RUN`
    /// until its exit hypercall is served).
    pub guest: Duration,
}

/// One cold start of `bytes` by `path`: parse, create the VM, run it on its
/// vCPU thread, collect the result (checked: exit code 0).
pub fn cold_once(
    bytes: &'static [u8],
    config: &RunConfig,
    path: ColdPath,
) -> anyhow::Result<ColdSample> {
    let start = Instant::now();
    let program = Program::parse(bytes).context("cannot parse the image")?;
    let (io, _stdout, stderr) = GuestIo::capture(Vec::new());
    let (outcome, create) = match path {
        ColdPath::Pipelined => {
            let outcome = vmm::run_program(&program, config, io, &Interrupter::new())
                .context("cannot run the guest")?;
            (outcome, Duration::ZERO)
        }
        ColdPath::Sequential => {
            let run = PreparedRun::new(&program, config, io).context("cannot create the VM")?;
            let create = start.elapsed();
            let outcome = run
                .run(&Interrupter::new())
                .context("cannot run the guest")?;
            (outcome, create)
        }
    };
    let total = start.elapsed();
    check_exit("cold start", &outcome, &stderr)?;
    Ok(ColdSample {
        total,
        create,
        guest: outcome.guest_time,
    })
}

/// The configuration of the cold-start runs (defaults, 10 s time limit).
pub fn cold_config() -> RunConfig {
    RunConfig {
        timeout: Some(Duration::from_secs(10)),
        ..RunConfig::default()
    }
}

/// What live VMs hold in this process: their fds (VM, vCPU), and the VMs
/// still queued for the reaper thread. Background tear-downs are tracked
/// through these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Open file descriptors.
    pub fds: usize,
    /// VMs waiting for the reaper thread ([`vmm::reaper::backlog`]).
    pub pending_teardowns: usize,
}

/// This process's [`Footprint`] now (lists `/proc/self/fd`: some
/// microseconds).
pub fn footprint() -> anyhow::Result<Footprint> {
    let fds = std::fs::read_dir("/proc/self/fd")
        .context("cannot list /proc/self/fd")?
        .count();
    Ok(Footprint {
        fds,
        pending_teardowns: vmm::reaper::backlog(),
    })
}

/// Waits until at most `pending` VMs are still being torn down in the
/// background, compared with `idle` (the footprint with no VM alive): each
/// live VM holds 2 fds until the reaper is done with it. Returns how long
/// that took.
/// If the footprint does not come back within a second (something else in
/// the process changed), it says so on stderr and goes on.
pub fn wait_for_teardown(idle: Footprint, pending: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let max_fds = idle.fds + 2 * pending;
    let max_pending = idle.pending_teardowns + pending;
    loop {
        let now = footprint()?;
        if now.fds <= max_fds && now.pending_teardowns <= max_pending {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "warning: waited 1 s for VM tear-downs: {now:?}, expected at most {max_fds} fds \
                 and {max_pending} queued tear-downs; going on"
            );
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// Runs one unmeasured cold start (it opens `/dev/kvm`, builds the seccomp
/// filter, installs the kick handler and may start a vCPU thread: once-per-
/// process costs), waits for its tear-down, and returns the footprint with
/// no VM alive.
fn warm_up_cold(
    bytes: &'static [u8],
    config: &RunConfig,
    path: ColdPath,
) -> anyhow::Result<Footprint> {
    vmm::kvm::probe().context("KVM is not usable")?;
    let idle = footprint()?;
    cold_once(bytes, config, path).context("warm-up")?;
    wait_for_teardown(idle, 0)?;
    Ok(idle)
}

/// `samples` cold starts of `trivial-c` spaced as `pacing` says, after one
/// unmeasured warm-up (see [`warm_up_cold`]).
pub fn cold_series(samples: usize, pacing: Pacing, path: ColdPath) -> anyhow::Result<ColdSamples> {
    let bytes = image_bytes(TRIVIAL_IMAGE)?;
    let config = cold_config();
    let idle = warm_up_cold(bytes, &config, path)?;
    let mut out = ColdSamples {
        total: Vec::with_capacity(samples),
        create: Vec::with_capacity(samples),
        guest: Vec::with_capacity(samples),
        teardown_wait: Vec::with_capacity(samples),
    };
    for _ in 0..samples {
        let sample = cold_once(bytes, &config, path)?;
        out.total.push(nanos(sample.total));
        out.create.push(nanos(sample.create));
        out.guest.push(nanos(sample.guest));
        match pacing {
            Pacing::AfterTeardown => out.teardown_wait.push(nanos(wait_for_teardown(idle, 0)?)),
            Pacing::BackToBack => {
                wait_for_teardown(idle, MAX_PENDING_TEARDOWNS)?;
            }
        }
    }
    // Leave no background tear-down behind for whatever runs next.
    wait_for_teardown(idle, 0)?;
    Ok(out)
}

/// `virtine.cold`: `samples` cold starts of `trivial-c` through
/// [`vmm::run_program`] (the VIC layer's path), back to back like the
/// process baselines (see [`Pacing::BackToBack`]): earlier VMs' background
/// tear-down may overlap a sample, as it would in a server.
pub fn measure_cold(samples: usize) -> anyhow::Result<Vec<u64>> {
    Ok(cold_series(samples, Pacing::BackToBack, ColdPath::Pipelined)?.total)
}

/// `virtine.cold_after_teardown`: like [`measure_cold`], but each sample
/// starts only once the previous VM is completely torn down (see
/// [`Pacing::AfterTeardown`]); the CPU is then often idle, and colder,
/// when the sample starts.
pub fn measure_cold_after_teardown(samples: usize) -> anyhow::Result<Vec<u64>> {
    Ok(cold_series(samples, Pacing::AfterTeardown, ColdPath::Pipelined)?.total)
}

// ---------------------------------------------------------------------------
// virtine.hypercall_roundtrip

/// `virtine.hypercall_roundtrip`: runs `hcloop-c` with
/// `samples + ROUNDTRIP_WARMUP + 1` NOP hypercalls on the real path
/// (vCPU thread, seccomp, hypercall server) and returns the time between
/// consecutive resume-hook calls, without the warm-up ones.
pub fn measure_hypercall_roundtrip(samples: usize) -> anyhow::Result<Vec<u64>> {
    let program = Program::parse(image_bytes(HCLOOP_IMAGE)?)
        .with_context(|| format!("cannot parse {HCLOOP_IMAGE}"))?;
    let calls = samples + ROUNDTRIP_WARMUP + 1;
    let config = RunConfig {
        args: vec![b"hcloop".to_vec(), calls.to_string().into_bytes()],
        // ~50 µs per round trip here; generous for slow machines.
        timeout: Some(Duration::from_secs(30) + Duration::from_millis(calls as u64)),
        ..RunConfig::default()
    };
    let deltas = Arc::new(Mutex::new(Vec::with_capacity(calls)));
    let sink = Arc::clone(&deltas);
    let mut last: Option<Instant> = None;
    let hook = Box::new(move || {
        let now = Instant::now();
        if let Some(prev) = last.replace(now) {
            if let Ok(mut v) = sink.lock() {
                v.push(nanos(now - prev));
            }
        }
    });
    let (io, _stdout, stderr) = GuestIo::capture(Vec::new());
    vmm::kvm::probe().context("KVM is not usable")?;
    let idle = footprint()?;
    let mut run = PreparedRun::new(&program, &config, io).context("cannot create the VM")?;
    run.on_resume(hook);
    let outcome = run
        .run(&Interrupter::new())
        .context("cannot run the guest")?;
    check_exit(HCLOOP_IMAGE, &outcome, &stderr)?;
    // Do not leave the VM's background tear-down to whatever runs next.
    wait_for_teardown(idle, 0)?;
    let mut deltas = std::mem::take(
        &mut *deltas
            .lock()
            .map_err(|_| anyhow::anyhow!("the sample buffer's lock is poisoned"))?,
    );
    ensure!(
        deltas.len() == calls - 1,
        "expected {} round trips, the resume hook saw {}",
        calls - 1,
        deltas.len()
    );
    Ok(deltas.split_off(ROUNDTRIP_WARMUP))
}

// ---------------------------------------------------------------------------
// kvm.exit_roundtrip

/// The CPL3 loop of `kvm.exit_roundtrip`, to be placed at `IMAGE_BASE`:
///
/// ```text
///  0: b8 07 00 00 00          mov  eax, 7          ; xos_abi::nr::NOP
///  5: a3 <DOORBELL: 8 bytes>  movabs [DOORBELL], eax
/// 14: eb f5                   jmp  5               ; 5 - 16 = -11
/// ```
pub fn exit_loop_code() -> Vec<u8> {
    let mut code = vec![0xb8];
    code.extend_from_slice(&xos_abi::nr::NOP.to_le_bytes());
    let store = code.len();
    code.push(0xa3);
    code.extend_from_slice(&DOORBELL.to_le_bytes());
    let next = code.len() + 2;
    let disp = i8::try_from(store as isize - next as isize).unwrap_or(i8::MIN);
    code.push(0xeb);
    code.push(disp as u8);
    code
}

fn fingerprint<T: std::hash::Hash>(value: &T) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(value)
}

/// `kvm.exit_roundtrip`: the floor under a hypercall. A bare machine (16
/// MiB, CPL3) runs [`exit_loop_code`]; this thread loops on `KVM_RUN` and
/// records the time between consecutive doorbell exits, doing nothing
/// else. Returns `samples` round trips after `ROUNDTRIP_WARMUP` discarded
/// ones.
pub fn measure_exit_roundtrip(samples: usize) -> anyhow::Result<Vec<u64>> {
    let mut machine = Machine::new(vmm::memory::DEFAULT_MEM_SIZE, Privilege::User)
        .context("cannot create the VM")?;
    machine
        .write_code(IMAGE_BASE, &exit_loop_code())
        .context("cannot write the loop into guest memory")?;
    machine.set_entry(IMAGE_BASE, STACK_TOP, BOOT_INFO);

    // The first exit must be the doorbell write; later exits are compared
    // with it by variant (the root crate does not depend on kvm-ioctls, so
    // the variant cannot be named here). Hashing a discriminant costs a few
    // nanoseconds.
    let doorbell_exit = {
        let exit = machine.run().context("KVM_RUN failed")?;
        let desc = format!("{exit:?}");
        ensure!(
            desc.starts_with(&format!("MmioWrite({DOORBELL}, [7, 0, 0, 0]")),
            "the exit loop's first exit is {desc}, not a write of 7 to the doorbell"
        );
        fingerprint(&std::mem::discriminant(&exit))
    };

    let total = ROUNDTRIP_WARMUP + samples;
    let mut deltas = Vec::with_capacity(total);
    let mut last = Instant::now();
    for i in 0..total {
        let exit = machine.run().context("KVM_RUN failed")?;
        let now = Instant::now();
        if fingerprint(&std::mem::discriminant(&exit)) != doorbell_exit {
            bail!(
                "exit {} of the exit loop is {exit:?}, not the doorbell",
                i + 1
            );
        }
        deltas.push(nanos(now - last));
        last = now;
    }
    Ok(deltas.split_off(ROUNDTRIP_WARMUP))
}

// ---------------------------------------------------------------------------
// Baselines

/// Waits for child `pid`; returns its raw wait status.
fn wait_child(pid: libc::pid_t) -> anyhow::Result<libc::c_int> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("waitpid failed");
        }
    }
}

fn describe_status(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status:#x}")
    }
}

/// Forks; the child runs `child` (which must only make async-signal-safe
/// calls, and should end the process; if it returns, the child
/// `_exit(127)`s); the parent waits for it and checks exit code 0.
fn fork_and_wait(child: impl Fn()) -> anyhow::Result<Duration> {
    let start = Instant::now();
    // SAFETY: the child only runs `child`, which makes async-signal-safe
    // calls (execve, _exit) and never returns, as fork in a multi-threaded
    // process requires.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        child();
        // SAFETY: _exit is async-signal-safe and ends the child.
        unsafe { libc::_exit(127) }
    }
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork failed");
    }
    let status = wait_child(pid)?;
    let elapsed = start.elapsed();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("the child ended with {}", describe_status(status));
    }
    Ok(elapsed)
}

fn repeat(
    samples: usize,
    warmup: usize,
    mut once: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<Vec<u64>> {
    for _ in 0..warmup {
        once()?;
    }
    (0..samples).map(|_| once().map(nanos)).collect()
}

/// `baseline.fork_wait`: `fork`, the child `_exit(0)`s, the parent
/// `waitpid`s.
pub fn measure_fork_wait(samples: usize) -> anyhow::Result<Vec<u64>> {
    repeat(samples, 5, || {
        fork_and_wait(|| {
            // SAFETY: _exit is async-signal-safe and ends the child.
            unsafe { libc::_exit(0) }
        })
    })
}

/// `baseline.fork_exec_wait`: `fork`, the child `execve`s the native
/// trivial executable (`_exit(127)` if that fails), the parent `waitpid`s
/// and checks exit code 0.
pub fn measure_fork_exec_wait(samples: usize) -> anyhow::Result<Vec<u64>> {
    let path = native_trivial_path();
    let meta = std::fs::metadata(path)
        .with_context(|| format!("the native trivial executable {path} is missing"))?;
    ensure!(meta.is_file(), "{path} is not a file");
    let c_path =
        CString::new(path).with_context(|| format!("the path {path:?} contains a NUL byte"))?;
    // Everything the child touches is prepared before fork.
    let argv: [*const libc::c_char; 2] = [c_path.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    repeat(samples, 5, || {
        fork_and_wait(|| {
            // SAFETY: path, argv and envp are NUL-terminated and were built
            // before fork; execve and _exit are async-signal-safe.
            unsafe {
                libc::execve(c_path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127)
            }
        })
        .with_context(|| format!("running {path} (exit code 127: exec failed)"))
    })
}

/// `baseline.thread_spawn_join`: `std::thread::spawn(|| 0).join()`.
pub fn measure_thread_spawn_join(samples: usize) -> anyhow::Result<Vec<u64>> {
    repeat(samples, 20, || {
        let start = Instant::now();
        let handle = std::thread::Builder::new()
            .spawn(|| 0)
            .context("cannot spawn a thread")?;
        let value = handle
            .join()
            .map_err(|_| anyhow::anyhow!("the thread panicked"))?;
        let elapsed = start.elapsed();
        std::hint::black_box(value);
        Ok(elapsed)
    })
}

// ---------------------------------------------------------------------------
// virtine.warm_call and virtine.restore_from_file

/// The `noop-c` guest's state at its ready point.
fn noop_snapshot() -> anyhow::Result<vmm::snapshot::Snapshot> {
    let program = Program::parse(image_bytes(NOOP_IMAGE)?)
        .with_context(|| format!("cannot parse {NOOP_IMAGE}"))?;
    let config = RunConfig {
        stop_at_ready: true,
        ..RunConfig::default()
    };
    let (io, _stdout, stderr) = GuestIo::capture(Vec::new());
    let outcome = vmm::run_program(&program, &config, io, &Interrupter::new())
        .context("cannot run noop-c to its ready point")?;
    match (outcome.exit, outcome.snapshot) {
        (GuestExit::Ready, Some(s)) => Ok(*s),
        (exit, _) => bail!(
            "noop-c did not stop at its ready point: {exit}; stderr: {}",
            String::from_utf8_lossy(&stderr.take())
        ),
    }
}

/// `virtine.warm_call`: calls of the trivial `noop-c` in a one-instance
/// warm pool, from the caller's `call` to its result, the instance's reset
/// included (the pool resets before it answers).
pub fn measure_warm_call(samples: usize) -> anyhow::Result<Vec<u64>> {
    vmm::kvm::probe().context("KVM is not usable")?;
    let config = vmm::pool::PoolConfig {
        max_instances: 1,
        timeout: Some(Duration::from_secs(10)),
        ..vmm::pool::PoolConfig::default()
    };
    let pool = vmm::pool::WarmPool::new(Arc::new(noop_snapshot()?), config)
        .context("cannot create the warm pool")?;
    let mut out = Vec::with_capacity(samples);
    for i in 0..WARM_CALL_WARMUP + samples {
        let start = Instant::now();
        let r = pool.call(b"").context("warm call")?;
        let t = nanos(start.elapsed());
        ensure!(
            r.exit == GuestExit::Exited(0),
            "noop-c ended with {}",
            r.exit
        );
        if i >= WARM_CALL_WARMUP {
            out.push(t);
        }
    }
    Ok(out)
}

/// `virtine.restore_from_file`: read a snapshot file of `noop-c`, validate
/// it, restore it into a fresh VM and run the call to its end.
pub fn measure_restore_from_file(samples: usize) -> anyhow::Result<Vec<u64>> {
    vmm::kvm::probe().context("KVM is not usable")?;
    let path = std::env::temp_dir().join(format!("xos-bench-{}.snap", std::process::id()));
    std::fs::write(&path, noop_snapshot()?.encode()).context("cannot write the snapshot file")?;
    let config = RunConfig::default();
    let mut out = Vec::with_capacity(samples);
    let result = (|| {
        for _ in 0..samples {
            let start = Instant::now();
            let bytes = std::fs::read(&path).context("cannot read the snapshot file")?;
            let snapshot = vmm::snapshot::Snapshot::decode(&bytes).context("bad snapshot")?;
            let (io, _o, _e) = GuestIo::capture(Vec::new());
            let outcome = PreparedRun::from_snapshot(&snapshot, &config, io)
                .context("cannot restore")?
                .run(&Interrupter::new())
                .context("cannot run")?;
            out.push(nanos(start.elapsed()));
            ensure!(
                outcome.exit == GuestExit::Exited(0),
                "noop-c ended with {}",
                outcome.exit
            );
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result.map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_loop_jumps_back_to_the_store() {
        let code = exit_loop_code();
        assert_eq!(code.len(), 16);
        assert_eq!(&code[..5], &[0xb8, 7, 0, 0, 0]);
        assert_eq!(code[5], 0xa3);
        assert_eq!(&code[6..14], &DOORBELL.to_le_bytes());
        assert_eq!(&code[14..], &[0xeb, 0xf5]);
    }

    #[test]
    fn footprint_sees_an_open_file() {
        let before = footprint().unwrap();
        let file = std::fs::File::open("/proc/self/maps").unwrap();
        let during = footprint().unwrap();
        assert!(during.fds > before.fds, "{before:?} {during:?}");
        drop(file);
    }
}
