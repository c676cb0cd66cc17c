//! Criterion benches of the cross-IC calls and IC creation (`xic.*` and
//! `create.*` in `xos-vmm bench`, same code: `xos_vmm::bench::xic`).
//! `create.process` is left to `xos-vmm bench`: a process IC execs the
//! `xos-vmm` binary itself, which this bench binary is not.
//!
//! `cargo bench --bench xic`; `cargo bench --bench xic -- virtine.virtine`
//! runs one.

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;
use xos_vmm::bench::xic::{measure_create, measure_host_call, measure_ic_call};

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
    let mut benches: Vec<(String, Measure)> = Vec::new();
    for bytes in [8usize, 4096] {
        benches.push((
            format!("thread.host.hypercall.{bytes}"),
            Box::new(move |n| measure_host_call("thread", bytes, n)),
        ));
        if kvm {
            benches.push((
                format!("virtine.host.hypercall.{bytes}"),
                Box::new(move |n| measure_host_call("virtine", bytes, n)),
            ));
            for (a, b) in [
                ("virtine", "virtine"),
                ("virtine", "thread"),
                ("thread", "virtine"),
            ] {
                benches.push((
                    format!("{a}.{b}.hypercall.{bytes}"),
                    Box::new(move |n| measure_ic_call(a, b, bytes, n)),
                ));
            }
        }
    }
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
