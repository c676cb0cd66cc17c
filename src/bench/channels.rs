//! `channel.<mechanism>.<bytes>`: the round-trip time of one call between
//! two host threads over each channel mechanism (8-byte and 4 KiB
//! messages). This is the host thread↔thread baseline that cross-IC calls
//! between VMs are compared with.

use anyhow::Context;
use icf::channel::ring::{Notify, RingChannel};
use icf::channel::stream::{pipe_pair, tcp_pair, unix_pair};
use icf::{Channel, ComMechanism};
use std::time::Instant;

/// Calls made before timing starts in each round (page faults, wake-ups).
const WARMUP: usize = 50;

fn pair(m: ComMechanism) -> anyhow::Result<(Box<dyn Channel>, Box<dyn Channel>)> {
    fn boxed<C: Channel + 'static>(
        p: Result<(C, C), icf::ChannelError>,
    ) -> anyhow::Result<(Box<dyn Channel>, Box<dyn Channel>)> {
        let (a, b) = p?;
        Ok((Box::new(a), Box::new(b)))
    }
    match m {
        ComMechanism::ShmRingPoll => boxed(RingChannel::pair(64 << 10, Notify::Poll)),
        ComMechanism::ShmRingFutex => boxed(RingChannel::pair(64 << 10, Notify::Futex)),
        ComMechanism::Pipe => boxed(pipe_pair()),
        ComMechanism::UnixSocket => boxed(unix_pair()),
        ComMechanism::Tcp => boxed(tcp_pair()),
        ComMechanism::HypercallRelay | ComMechanism::Virtio | ComMechanism::ViewCall => {
            anyhow::bail!("{} is not a channel between host threads", m.name())
        }
    }
}

/// `samples` timed calls of `bytes` bytes each way between this thread and
/// an echo thread over mechanism `m`.
pub fn measure_channel_call(
    m: ComMechanism,
    bytes: usize,
    samples: usize,
) -> anyhow::Result<Vec<u64>> {
    let (mut caller, mut callee) = pair(m)?;
    let echo = std::thread::Builder::new()
        .name("bench-echo".into())
        .spawn(move || {
            let mut buf = Vec::new();
            while callee.recv(&mut buf).is_ok() && callee.send(&buf).is_ok() {}
        })
        .context("cannot start the echo thread")?;
    let request = vec![0x5a; bytes];
    let mut reply = Vec::with_capacity(bytes);
    let mut out = Vec::with_capacity(samples);
    for i in 0..WARMUP + samples {
        let t = Instant::now();
        caller
            .call(&request, &mut reply)
            .with_context(|| format!("{} call failed", m.name()))?;
        if i >= WARMUP {
            out.push(t.elapsed().as_nanos() as u64);
        }
        anyhow::ensure!(reply.len() == bytes, "{}: short echo", m.name());
    }
    drop(caller);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))?;
    Ok(out)
}
