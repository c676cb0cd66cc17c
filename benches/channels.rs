//! Criterion benches of the host channel calls (`channel.<mechanism>.<bytes>`
//! in `xos-vmm bench`, same code: `xos_vmm::bench::channels`): one request
//! and its reply between two host threads, 8 bytes and 4 KiB.
//!
//! `cargo bench --bench channels`; `cargo bench --bench channels -- shm-poll`
//! runs one mechanism.

use criterion::{criterion_group, criterion_main, Criterion};
use icf::ComMechanism;
use std::time::Duration;
use xos_vmm::bench::channels::measure_channel_call;

fn channels(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for m in [
        ComMechanism::ShmRingPoll,
        ComMechanism::ShmRingFutex,
        ComMechanism::Pipe,
        ComMechanism::UnixSocket,
        ComMechanism::Tcp,
    ] {
        for bytes in [8usize, 4096] {
            g.bench_function(format!("{}/{bytes}", m.name()), |b| {
                b.iter_custom(|iters| {
                    let n = usize::try_from(iters).unwrap_or(usize::MAX).max(1);
                    match measure_channel_call(m, bytes, n) {
                        Ok(ns) => Duration::from_nanos(ns.iter().sum()),
                        Err(e) => {
                            eprintln!("benchmark channel/{}/{bytes} failed: {e:#}", m.name());
                            std::process::exit(1);
                        }
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, channels);
criterion_main!(benches);
