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
