//! Criterion benches of the cross-IC calls and IC creation (`xic.*` and
//! `create.*` in `xos-vmm bench`, same code: `xos_vmm::bench::xic`).
//! Process ICs (`create.process`, `xic.*.process.*`) are left to
//! `xos-vmm bench`: a process IC execs the `xos-vmm` binary itself, which
//! this bench binary is not. A window call's sample is the mean of a batch
//! of calls timed inside the caller, counted as one iteration.
//!
//! `cargo bench --bench xic`; `cargo bench --bench xic -- virtine.virtine`
//! runs one.

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;
use xos_vmm::bench::xic::{matrix, measure_create};
use xos_vmm::icf::Registry;

type Measure = Box<dyn Fn(usize) -> anyhow::Result<Vec<u64>>>;

fn kvm_usable() -> bool {
    match xos_vmm::vmm::kvm::probe() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("KVM is not usable, skipping the virtine benchmarks: {e}");
            false
        }
    }
}

fn xic(c: &mut Criterion) {
    let kvm = kvm_usable();
    // The same matrix as `xos-vmm bench`, from the registry's pairs and
    // mechanisms; without process ICs (see above) and, without KVM,
    // without virtines.
    let benches: Vec<(String, Measure)> = matrix(&Registry::builtin())
        .into_iter()
        .map(|(name, run)| (name.trim_start_matches("xic.").to_owned(), run))
        .filter(|(name, _)| {
            !name.contains("process")
                && (kvm
                    || !["virtine", "vm", "ept-view"]
                        .iter()
                        .any(|k| name.contains(k)))
        })
        .collect();
    let mut g = c.benchmark_group("xic");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for (name, measure) in &benches {
        g.bench_function(name.as_str(), |b| {
            b.iter_custom(|iters| {
                let n = usize::try_from(iters).unwrap_or(usize::MAX).max(1);
                match measure(n) {
                    Ok(ns) => Duration::from_nanos(ns.iter().sum()),
                    Err(e) => {
                        eprintln!("benchmark xic/{name} failed: {e:#}");
                        std::process::exit(1);
                    }
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("create");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    let kinds: &[&str] = if kvm {
        &["virtine", "thread"]
    } else {
        &["thread"]
    };
    for &kind in kinds {
        g.bench_function(kind, |b| {
            b.iter_custom(|iters| {
                let n = usize::try_from(iters).unwrap_or(usize::MAX).max(1);
                match measure_create(kind, n) {
                    Ok(ns) => Duration::from_nanos(ns.iter().sum()),
                    Err(e) => {
                        eprintln!("benchmark create/{kind} failed: {e:#}");
                        std::process::exit(1);
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, xic);
criterion_main!(benches);
