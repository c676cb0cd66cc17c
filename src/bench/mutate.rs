//! `mutate.<from>.<to>`: what moving an execution flow from an IC of one
//! kind into a new IC of another costs, as its peer sees it.
//!
//! A `counter-c` EF answers a host thread over its channel window and
//! offers a safe point after every reply. The EF goes back and forth
//! between the two kinds; for every move from `<from>` to `<to>` a sample
//! is the gap between the peer's two replies around it: the stop at the
//! safe point, the capture of the EF's memory and registers, `mutate`, and
//! the new IC's start up to its first reply. (The moves back are not
//! timed.)

use anyhow::{ensure, Context};
use icf::channel::ring::{Notify, RingChannel};
use icf::channel::Channel;
use icf::{IcSpec, IsolationContext};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm::{GuestExit, GuestIo, Interrupter, Program};

use super::measure::{image_bytes, nanos};

/// The image that is moved.
pub const COUNTER_IMAGE: &str = "counter-c";

/// The kinds `mutate` connects (every pair, in both orders).
pub const KINDS: [&str; 5] = ["virtine", "vm", "process", "thread", "ept-view"];

/// Messages at least between a move and the next request.
const SPACING: u64 = 4;
/// Most messages a move may take: a request reaches a process IC as a
/// signal, so the EF may answer some more messages before it stops.
const MAX_LAG: u64 = 1_000_000;

/// `samples` moves of the counter EF from `from` to `to`.
pub fn measure_mutate(from: &str, to: &str, samples: usize) -> anyhow::Result<Vec<u64>> {
    let registry = crate::binary_registry();
    let program = Program::parse(image_bytes(COUNTER_IMAGE)?)
        .with_context(|| format!("cannot parse {COUNTER_IMAGE}"))?;
    // There and back for every sample.
    let legs = 2 * samples;
    let messages = (legs as u64 + 1) * MAX_LAG;
    let (mut peer, end) = RingChannel::pair(4096, Notify::Poll)?;
    let mut spec = IcSpec::new(program);
    // Counting until the peer closes: the peer stops once every move is
    // done.
    spec.args = vec![b"counter".to_vec(), b"0".to_vec()];
    spec.timeout = Some(Duration::from_secs(60));
    spec.window = Some(end.into_guest_end()?);
    let mut ic: Box<dyn IsolationContext> = registry
        .resolve(from)
        .with_context(|| format!("mutate: no usable '{from}' ICF"))?
        .create(spec)
        .context("mutate: cannot create the first IC")?;
    let current: Arc<Mutex<(usize, Interrupter)>> = Arc::new(Mutex::new((0, ic.interrupter())));

    // The peer: a message at a time; asks the current IC to stop every
    // SPACING messages once the previous move is done; records when each
    // reply arrived and how many moves it reports.
    let leg = Arc::clone(&current);
    let talker = std::thread::Builder::new()
        .name("mutate-peer".into())
        .spawn(move || -> anyhow::Result<Vec<(Instant, u64)>> {
            let mut replies = Vec::with_capacity(legs * 64);
            let (mut requested, mut moved, mut last_move) = (0usize, 0u64, 0u64);
            let mut reply = Vec::new();
            for i in 1..=messages {
                if requested < legs && i >= last_move + SPACING && moved == requested as u64 {
                    loop {
                        let (running, handle) = &*leg
                            .lock()
                            .map_err(|_| anyhow::anyhow!("poisoned leg lock"))?;
                        if *running == requested {
                            handle.request_safe_point();
                            break;
                        }
                    }
                    requested += 1;
                }
                peer.send(&i.to_le_bytes())?;
                peer.recv(&mut reply)?;
                ensure!(reply.len() == 16, "reply {i} has {} bytes", reply.len());
                let count = u64::from_le_bytes(reply[..8].try_into()?);
                let now_moved = u64::from_le_bytes(reply[8..].try_into()?);
                ensure!(count == i, "reply {i} counts {count}");
                if now_moved != moved {
                    last_move = i;
                    moved = now_moved;
                }
                replies.push((Instant::now(), moved));
                if moved == legs as u64 && i >= last_move + SPACING {
                    // Every move is done: closing ends the EF.
                    return Ok(replies);
                }
            }
            anyhow::bail!("not every move happened within {messages} messages")
        })
        .context("cannot start the peer thread")?;

    let kinds = [from, to];
    for k in 1..=legs {
        let (io, _out, err) = GuestIo::capture(Vec::new());
        let outcome = ic.run(io).context("mutate: run")?;
        ensure!(
            outcome.exit == GuestExit::SafePoint,
            "mutate: leg {k} ended with {:?} (stderr: {:?})",
            outcome.exit,
            String::from_utf8_lossy(&err.contents())
        );
        ic = registry
            .mutate(ic, kinds[k % 2])
            .context("mutate: mutate")?;
        *current
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned leg lock"))? = (k, ic.interrupter());
    }
    // The last leg answers until the peer closes.
    let (io, _out, err) = GuestIo::capture(Vec::new());
    let outcome = ic.run(io).context("mutate: last run")?;
    ensure!(
        outcome.exit == GuestExit::Exited(0),
        "mutate: the last leg ended with {:?} (stderr: {:?})",
        outcome.exit,
        String::from_utf8_lossy(&err.contents())
    );
    let replies = talker
        .join()
        .map_err(|_| anyhow::anyhow!("the peer thread panicked"))??;
    // The gap before the first reply of each odd-numbered leg (from -> to).
    let mut out = Vec::with_capacity(samples);
    for w in replies.windows(2) {
        let ((t0, m0), (t1, m1)) = (w[0], w[1]);
        if m1 == m0 + 1 && m1 % 2 == 1 {
            out.push(nanos(t1 - t0));
        }
    }
    ensure!(
        out.len() == samples,
        "expected {samples} timed moves, saw {}",
        out.len()
    );
    Ok(out)
}
