//! Criterion benches of EPT views without VMFUNC (`kvm.memslot_switch`
//! and `eptview.call_fallback` in `xos-vmm bench`, same code:
//! `xos_vmm::bench::eptview`), with the bare exit beside them for the
//! ratio (`eptview.call_fallback` against one exit plus one switch).
//!
//! `cargo bench --bench eptview`.

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;
use xos_vmm::bench::eptview::{measure_call_fallback, measure_memslot_switch};
use xos_vmm::bench::measure::measure_exit_roundtrip;

type Measure = fn(usize) -> anyhow::Result<Vec<u64>>;

fn eptview(c: &mut Criterion) {
    if let Err(e) = xos_vmm::vmm::kvm::probe() {
        eprintln!("KVM is not usable, skipping the EPT-view benchmarks: {e}");
        return;
    }
    let benches: [(&str, Measure); 3] = [
        ("kvm.exit_roundtrip", measure_exit_roundtrip),
        ("kvm.memslot_switch", measure_memslot_switch),
        ("eptview.call_fallback", measure_call_fallback),
    ];
    let mut g = c.benchmark_group("eptview");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for (name, measure) in benches {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let n = usize::try_from(iters).unwrap_or(usize::MAX).max(1);
                match measure(n) {
                    Ok(ns) => Duration::from_nanos(ns.iter().sum()),
                    Err(e) => {
                        eprintln!("benchmark eptview/{name} failed: {e:#}");
                        std::process::exit(1);
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, eptview);
criterion_main!(benches);
