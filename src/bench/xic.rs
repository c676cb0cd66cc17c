//! Cross-IC calls and IC creation, through the VIC layer:
//!
//! - `xic.<icf>.host.hypercall.<bytes>`: an IC of kind `<icf>` calls the
//!   host function `echo` with `<bytes>` bytes and gets them back (the
//!   `hcloop-c` image), relayed by the monitor (a VM exit for a virtine, a
//!   trap for a thread IC). A sample is the time between two consecutive
//!   calls as seen by the host function: one whole round trip, the guest's
//!   loop included.
//! - `xic.<caller>.<callee>.hypercall.<bytes>`: an IC calls another IC
//!   (the `chan-c` image at both ends) over a channel attached to each as
//!   host functions ([`icf::channel::attach`]): the caller exits to its
//!   monitor thread, which hands the request over a shared-memory ring to
//!   the callee's monitor thread, which returns it from the callee's
//!   pending `chan.recv`; the reply goes back the same way. A sample is the
//!   time between two consecutive calls seen by the caller's monitor.
//! - `create.<icf>`: from a parsed image to the IC's result: `create`, then
//!   run the trivial image to its exit (for a virtine the same path as
//!   `virtine.cold`; for a process IC fork+exec of the helper included).

use anyhow::{ensure, Context};
use icf::channel::ring::{Notify, RingChannel};
use icf::{IcSpec, IsolationContextFactory, Registry};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm::{GuestExit, GuestIo, Program};

/// The image at both ends of an IC-to-IC call.
pub const CHAN_IMAGE: &str = "chan-c";

use super::measure::{
    footprint, image_bytes, nanos, wait_for_teardown, HCLOOP_IMAGE, ROUNDTRIP_WARMUP, TRIVIAL_IMAGE,
};

fn factory(
    registry: &Registry,
    icf: &str,
    what: &str,
) -> anyhow::Result<Arc<dyn IsolationContextFactory>> {
    registry
        .resolve(icf)
        .with_context(|| format!("{what}: no usable '{icf}' ICF"))
}

fn run_to_exit(
    factory: &dyn IsolationContextFactory,
    icf: &str,
    spec: IcSpec,
    what: &str,
) -> anyhow::Result<()> {
    let (io, _stdout, stderr) = GuestIo::capture(Vec::new());
    let mut ic = factory
        .create(spec)
        .with_context(|| format!("{what}: cannot create the {icf} IC"))?;
    let outcome = ic
        .run(io)
        .with_context(|| format!("{what}: cannot run the {icf} IC"))?;
    ensure!(
        outcome.exit == GuestExit::Exited(0),
        "{what}: the {icf} IC ended with {:?} instead of exit code 0 (its stderr: {:?})",
        outcome.exit,
        String::from_utf8_lossy(&stderr.contents())
    );
    Ok(())
}

/// `samples` echo calls of `bytes` bytes from an IC of kind `icf` to the
/// host.
pub fn measure_host_call(icf: &str, bytes: usize, samples: usize) -> anyhow::Result<Vec<u64>> {
    let program = Program::parse(image_bytes(HCLOOP_IMAGE)?)
        .with_context(|| format!("cannot parse {HCLOOP_IMAGE}"))?;
    let calls = samples + ROUNDTRIP_WARMUP + 1;
    let deltas = Arc::new(Mutex::new(Vec::with_capacity(calls)));
    let sink = Arc::clone(&deltas);
    let last: Mutex<Option<Instant>> = Mutex::new(None);
    let mut spec = IcSpec::new(program);
    spec.args = vec![
        b"hcloop".to_vec(),
        calls.to_string().into_bytes(),
        bytes.to_string().into_bytes(),
    ];
    spec.timeout = Some(Duration::from_secs(30) + Duration::from_millis(calls as u64));
    spec.host_functions.register("echo", move |input: &[u8]| {
        let now = Instant::now();
        let mut last = last.lock().map_err(|_| "poisoned".to_owned())?;
        if let Some(prev) = last.replace(now) {
            if let Ok(mut v) = sink.lock() {
                v.push(nanos(now - prev));
            }
        }
        Ok(input.to_vec())
    });
    let idle = footprint()?;
    let factory = factory(&Registry::builtin(), icf, "xic")?;
    run_to_exit(factory.as_ref(), icf, spec, "xic")?;
    if icf == "virtine" {
        // Do not leave the VM's background tear-down to whatever runs next.
        wait_for_teardown(idle, 0)?;
    }
    let mut deltas = std::mem::take(
        &mut *deltas
            .lock()
            .map_err(|_| anyhow::anyhow!("the sample buffer's lock is poisoned"))?,
    );
    ensure!(
        deltas.len() == calls - 1,
        "expected {} echo round trips, the host function saw {}",
        calls - 1,
        deltas.len()
    );
    Ok(deltas.split_off(ROUNDTRIP_WARMUP))
}

/// `samples` calls of `bytes` bytes from an IC of kind `caller` to one of
/// kind `callee`, both running `chan-c`.
pub fn measure_ic_call(
    caller: &str,
    callee: &str,
    bytes: usize,
    samples: usize,
) -> anyhow::Result<Vec<u64>> {
    let program = Program::parse(image_bytes(CHAN_IMAGE)?)
        .with_context(|| format!("cannot parse {CHAN_IMAGE}"))?;
    let registry = Registry::builtin();
    let caller_factory = factory(&registry, caller, "xic")?;
    let callee_factory = factory(&registry, callee, "xic")?;
    let (near, far) = RingChannel::pair(64 << 10, Notify::Futex)?;
    let calls = samples + ROUNDTRIP_WARMUP + 1;
    let timeout = Some(Duration::from_secs(30) + Duration::from_millis(calls as u64));

    let mut callee_spec = IcSpec::new(program.clone());
    callee_spec.args = vec![b"chan".to_vec(), b"serve".to_vec()];
    callee_spec.timeout = timeout;
    icf::channel::attach(&mut callee_spec, "chan", Box::new(far));
    let callee_kind = callee.to_owned();
    let server = std::thread::Builder::new()
        .name("xic-callee".into())
        .spawn(move || {
            run_to_exit(
                callee_factory.as_ref(),
                &callee_kind,
                callee_spec,
                "xic callee",
            )
        })
        .context("cannot start the callee's thread")?;

    let mut spec = IcSpec::new(program);
    spec.args = vec![
        b"chan".to_vec(),
        b"call".to_vec(),
        calls.to_string().into_bytes(),
        bytes.to_string().into_bytes(),
    ];
    spec.timeout = timeout;
    icf::channel::attach(&mut spec, "chan", Box::new(near));
    // Time each call where the caller's monitor sees it.
    let inner = spec
        .host_functions
        .get("chan.call")
        .cloned()
        .context("attach() registered no chan.call")?;
    let deltas = Arc::new(Mutex::new(Vec::with_capacity(calls)));
    let sink = Arc::clone(&deltas);
    let last: Mutex<Option<Instant>> = Mutex::new(None);
    spec.host_functions
        .register("chan.call", move |request: &[u8]| {
            let now = Instant::now();
            if let Ok(mut last) = last.lock() {
                if let Some(prev) = last.replace(now) {
                    if let Ok(mut v) = sink.lock() {
                        v.push(nanos(now - prev));
                    }
                }
            }
            inner(request)
        });
    let idle = footprint()?;
    let called = run_to_exit(caller_factory.as_ref(), caller, spec, "xic caller");
    // The caller's end is gone with its IC, so the callee's next recv fails
    // and it exits.
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("the callee's thread panicked"))?;
    called?;
    served?;
    if caller == "virtine" || callee == "virtine" {
        wait_for_teardown(idle, 0)?;
    }
    let mut deltas = std::mem::take(
        &mut *deltas
            .lock()
            .map_err(|_| anyhow::anyhow!("the sample buffer's lock is poisoned"))?,
    );
    ensure!(
        deltas.len() == calls - 1,
        "expected {} calls, the caller's monitor saw {}",
        calls - 1,
        deltas.len()
    );
    Ok(deltas.split_off(ROUNDTRIP_WARMUP))
}

/// `samples` creations of an IC of kind `icf`, each run to its exit.
/// Uses [`crate::binary_registry`]: inside the `xos-vmm` binary only (the
/// process ICF execs it).
pub fn measure_create(icf: &str, samples: usize) -> anyhow::Result<Vec<u64>> {
    let program = Program::parse(image_bytes(TRIVIAL_IMAGE)?)
        .with_context(|| format!("cannot parse {TRIVIAL_IMAGE}"))?;
    let factory = factory(&crate::binary_registry(), icf, "create")?;
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples + 1 {
        let idle = footprint()?;
        let spec = IcSpec::new(program.clone());
        let t = Instant::now();
        run_to_exit(factory.as_ref(), icf, spec, "create")?;
        if i > 0 {
            out.push(nanos(t.elapsed()));
        }
        if icf == "virtine" {
            wait_for_teardown(idle, 0)?;
        }
    }
    Ok(out)
}

/// Calls per sample of a window call: the guest reads the time stamp
/// counter around each batch, so a sample is a batch's mean.
pub const WINDOW_BATCH: usize = 64;
/// Batches run before the measured ones (caches, page faults, the peer
/// getting on a CPU).
const WINDOW_WARMUP: usize = 2;

/// Time stamp counter ticks per nanosecond on this machine, measured once
/// against the monotonic clock.
fn tsc_per_ns() -> f64 {
    static RATE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *RATE.get_or_init(|| {
        // SAFETY: rdtsc has no preconditions on x86-64.
        let read = || unsafe { core::arch::x86_64::_rdtsc() };
        let (t0, c0) = (Instant::now(), read());
        std::thread::sleep(Duration::from_millis(50));
        let (t1, c1) = (Instant::now(), read());
        (c1 - c0) as f64 / (t1 - t0).as_nanos() as f64
    })
}

/// `samples` batches of [`WINDOW_BATCH`] calls of `bytes` bytes from an
/// IC of kind `caller` to `callee` (an IC kind, or `"host"`: a thread of
/// the monitor) through one ring mapped into both as channel windows: no
/// exit per call. The `chan-c` caller reads the time stamp counter around
/// each batch and prints the differences; a sample is a batch's mean call.
pub fn measure_window_call(
    caller: &str,
    callee: &str,
    mechanism: icf::ComMechanism,
    bytes: usize,
    samples: usize,
) -> anyhow::Result<Vec<u64>> {
    // Windows map the ring itself; a virtio device forwards to it.
    let notify = match mechanism {
        icf::ComMechanism::ShmRingPoll => Notify::Poll,
        icf::ComMechanism::ShmRingFutex | icf::ComMechanism::Virtio => Notify::Futex,
        m => anyhow::bail!("{} connects no ICs without exits", m.name()),
    };
    let virtio = mechanism == icf::ComMechanism::Virtio;
    let program = Program::parse(image_bytes(CHAN_IMAGE)?)
        .with_context(|| format!("cannot parse {CHAN_IMAGE}"))?;
    let registry = crate::binary_registry();
    let caller_factory = factory(&registry, caller, "xic")?;
    let (near, far) = RingChannel::pair(64 << 10, notify)?;
    let batches = samples + WINDOW_WARMUP;
    let calls = batches * WINDOW_BATCH;
    let timeout = Some(Duration::from_secs(30) + Duration::from_millis(calls as u64));

    let server = if callee == "host" {
        let mut far = far;
        std::thread::Builder::new()
            .name("xic-host-callee".into())
            .spawn(move || {
                use icf::channel::Channel;
                let mut buf = Vec::new();
                while far.recv(&mut buf).is_ok() {
                    for b in &mut buf {
                        *b = b.wrapping_add(1);
                    }
                    if far.send(&buf).is_err() {
                        break;
                    }
                }
                Ok(())
            })
    } else {
        let callee_factory = factory(&registry, callee, "xic")?;
        let mut spec = IcSpec::new(program.clone());
        spec.args = vec![b"chan".to_vec(), b"serve".to_vec()];
        spec.timeout = timeout;
        if virtio {
            spec.virtio = Some(icf::channel::virtio::VirtioChannel::new(Box::new(far))?);
        } else {
            spec.window = Some(far.into_guest_end()?);
        }
        let kind = callee.to_owned();
        std::thread::Builder::new()
            .name("xic-callee".into())
            .spawn(move || run_to_exit(callee_factory.as_ref(), &kind, spec, "xic callee"))
    }
    .context("cannot start the callee's thread")?;

    let mut spec = IcSpec::new(program);
    spec.args = vec![
        b"chan".to_vec(),
        b"call".to_vec(),
        calls.to_string().into_bytes(),
        bytes.to_string().into_bytes(),
        WINDOW_BATCH.to_string().into_bytes(),
    ];
    spec.timeout = timeout;
    if virtio {
        spec.virtio = Some(icf::channel::virtio::VirtioChannel::new(Box::new(near))?);
    } else {
        spec.window = Some(near.into_guest_end()?);
    }
    let idle = footprint()?;
    let (io, stdout, stderr) = GuestIo::capture(Vec::new());
    let started = Instant::now();
    // The caller's IC (and a device of it) goes before the callee is
    // joined: its end closing is what ends the callee.
    let called = caller_factory
        .create(spec)
        .and_then(|mut ic| ic.run(io))
        .with_context(|| format!("xic: cannot run the {caller} caller"));
    let wall = started.elapsed();
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("the callee's thread panicked"))?;
    let outcome = called?;
    served?;
    ensure!(
        outcome.exit == GuestExit::Exited(0),
        "xic: the {caller} caller ended with {:?} (its stderr: {:?})",
        outcome.exit,
        String::from_utf8_lossy(&stderr.contents())
    );
    if caller == "virtine" || callee == "virtine" {
        wait_for_teardown(idle, 0)?;
    }
    per_call_from_tsc(&stdout.contents(), batches, WINDOW_BATCH, wall)
}

/// `samples` batches of [`WINDOW_BATCH`] calls of `bytes` bytes between
/// two `ept-view` ICs of one VM, connected as a pair: each call enters the
/// callee's view through the trampoline and comes back (here, without
/// VMFUNC: an exit and a memory-slot switch each way). Timed inside the
/// caller like the window calls.
pub fn measure_view_call(bytes: usize, samples: usize) -> anyhow::Result<Vec<u64>> {
    let program = Program::parse(image_bytes(CHAN_IMAGE)?)
        .with_context(|| format!("cannot parse {CHAN_IMAGE}"))?;
    let batches = samples + WINDOW_WARMUP;
    let calls = batches * VIEW_BATCH;
    let timeout = Some(Duration::from_secs(30) + Duration::from_millis(calls as u64));
    let mut callee = IcSpec::new(program.clone());
    callee.args = vec![b"chan".to_vec(), b"serve".to_vec()];
    callee.timeout = timeout;
    let mut caller = IcSpec::new(program);
    caller.args = vec![
        b"chan".to_vec(),
        b"call".to_vec(),
        calls.to_string().into_bytes(),
        bytes.to_string().into_bytes(),
        VIEW_BATCH.to_string().into_bytes(),
    ];
    caller.timeout = timeout;
    let factory = icf::ept_view::EptViewFactory;
    let (mut caller_ic, mut callee_ic) = factory
        .create_pair(caller, callee)
        .context("xic: cannot create a pair of ept-view ICs")?;
    let server = std::thread::Builder::new()
        .name("xic-view-callee".into())
        .spawn(move || {
            let (io, _, stderr) = GuestIo::capture(Vec::new());
            let outcome = callee_ic.run(io);
            (outcome, stderr.contents())
        })
        .context("cannot start the callee's thread")?;
    let (io, stdout, stderr) = GuestIo::capture(Vec::new());
    let started = Instant::now();
    let called = caller_ic
        .run(io)
        .context("xic: cannot run the ept-view caller");
    let wall = started.elapsed();
    // The caller's view goes: the callee's service ends and it exits.
    drop(caller_ic);
    let (served, served_err) = server
        .join()
        .map_err(|_| anyhow::anyhow!("the callee's thread panicked"))?;
    let outcome = called?;
    ensure!(
        outcome.exit == GuestExit::Exited(0),
        "xic: the ept-view caller ended with {:?} (its stderr: {:?})",
        outcome.exit,
        String::from_utf8_lossy(&stderr.contents())
    );
    let served = served.context("xic: cannot run the ept-view callee")?;
    ensure!(
        served.exit == GuestExit::Exited(0),
        "xic: the ept-view callee ended with {:?} (its stderr: {:?})",
        served.exit,
        String::from_utf8_lossy(&served_err)
    );
    per_call_from_tsc(&stdout.contents(), batches, VIEW_BATCH, wall)
}

/// Calls per timed batch between EPT views: without VMFUNC a call costs
/// hundreds of microseconds here, so batches are short.
const VIEW_BATCH: usize = 8;

/// The caller's "tsc D1 D2 ..." line turned into per-call nanoseconds,
/// checked against the run's wall time; the warm-up batches dropped.
fn per_call_from_tsc(
    stdout: &[u8],
    batches: usize,
    batch: usize,
    wall: Duration,
) -> anyhow::Result<Vec<u64>> {
    let text = String::from_utf8_lossy(stdout).into_owned();
    let ticks: Vec<u64> = text
        .lines()
        .find_map(|l| l.strip_prefix("tsc"))
        .context("the caller printed no time stamps")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("the caller's time stamps do not parse")?;
    ensure!(
        ticks.len() == batches,
        "expected {batches} timed batches, the caller printed {}",
        ticks.len()
    );
    let rate = tsc_per_ns();
    let per_call: Vec<u64> = ticks
        .iter()
        .map(|&t| (t as f64 / rate / batch as f64) as u64)
        .collect();
    // The guest's counter must agree with the host's clock: all batches
    // together cannot have taken longer than the whole run.
    let timed: u64 = per_call.iter().sum::<u64>() * batch as u64;
    ensure!(
        timed <= nanos(wall),
        "the guest's time stamps add up to {timed} ns, more than the run's {} ns: the guest's TSC runs at another rate than the host's",
        nanos(wall)
    );
    Ok(per_call[WINDOW_WARMUP..].to_vec())
}

/// One measurement of the matrix.
pub type MatrixRun = Box<dyn Fn(usize) -> anyhow::Result<Vec<u64>>>;

/// Message sizes of the matrix.
pub const MATRIX_BYTES: [usize; 2] = [8, 4096];

/// The cross-IC call matrix: for every pair of kinds `registry` connects
/// and every mechanism registered for it, a benchmark
/// `xic.<caller>.<callee>.<mechanism>.<bytes>` per order of the pair (an
/// IC calls the host, never the other way round) and message size.
pub fn matrix(registry: &Registry) -> Vec<(String, MatrixRun)> {
    let mut out: Vec<(String, MatrixRun)> = Vec::new();
    for (a, b, mechanisms) in registry.com().pairs() {
        let orders: Vec<(String, String)> = match (a, b) {
            ("host", ic) | (ic, "host") => vec![(ic.to_owned(), "host".to_owned())],
            (a, b) if a == b => vec![(a.to_owned(), b.to_owned())],
            (a, b) => vec![(a.to_owned(), b.to_owned()), (b.to_owned(), a.to_owned())],
        };
        for (caller, callee) in orders {
            for &mechanism in mechanisms {
                for bytes in MATRIX_BYTES {
                    let name = format!("xic.{caller}.{callee}.{}.{bytes}", mechanism.name());
                    let (caller, callee) = (caller.clone(), callee.clone());
                    let run: MatrixRun = match mechanism {
                        icf::ComMechanism::HypercallRelay if callee == "host" => {
                            Box::new(move |n| measure_host_call(&caller, bytes, n))
                        }
                        icf::ComMechanism::HypercallRelay => {
                            Box::new(move |n| measure_ic_call(&caller, &callee, bytes, n))
                        }
                        icf::ComMechanism::ShmRingPoll
                        | icf::ComMechanism::ShmRingFutex
                        | icf::ComMechanism::Virtio => Box::new(move |n| {
                            measure_window_call(&caller, &callee, mechanism, bytes, n)
                        }),
                        icf::ComMechanism::ViewCall => {
                            Box::new(move |n| measure_view_call(bytes, n))
                        }
                        // Host-only mechanisms (pipes, sockets) connect no
                        // ICs yet; `channel.*` measures them between threads.
                        _ => continue,
                    };
                    out.push((name, run));
                }
            }
        }
    }
    out
}
