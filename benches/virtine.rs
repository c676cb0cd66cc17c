//! Criterion benches of the six `xos-vmm bench` measurements (same code:
//! `xos_vmm::bench::measure`). Each iteration's time comes from the library
//! function (`iter_custom`), so the VM creation around the round-trip
//! benchmarks and the pacing between cold starts are not counted.
//!
//! As in `xos-vmm bench`, the process baselines run in a single-threaded
//! helper process started before anything else. Criterion measures each
//! benchmark in one block (not interleaved like `xos-vmm bench`), so its
//! ratios drift with this machine's speed; `xos-vmm bench` is the reference
//! for the bars (`docs/BENCHMARKS.md`).
//!
//! `cargo bench --bench virtine` takes under a minute once built;
//! `cargo bench --bench virtine -- virtine/cold` runs one.

use criterion::{criterion_group, BenchmarkGroup, Criterion};
use std::time::Duration;
use xos_vmm::bench::{measure, server, Baseline};

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Registers `name` in `group`, timed by `measure(iters)` (nanoseconds per
/// iteration). A failure ends the process with the error: a benchmark that
/// fails half-way has no meaningful result.
fn bench(group: &mut Group<'_>, name: &str, measure: fn(usize) -> anyhow::Result<Vec<u64>>) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let samples = usize::try_from(iters).unwrap_or(usize::MAX).max(1);
            match measure(samples) {
                Ok(ns) => Duration::from_nanos(ns.iter().sum()),
                Err(e) => {
                    eprintln!("benchmark {}/{name} failed: {e:#}", group_name(name));
                    std::process::exit(1);
                }
            }
        })
    });
}

fn group_name(name: &str) -> &'static str {
    match name {
        "cold" | "hypercall_roundtrip" => "virtine",
        "exit_roundtrip" => "kvm",
        _ => "baseline",
    }
}

fn kvm_usable() -> bool {
    match xos_vmm::vmm::kvm::probe() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("KVM is not usable, skipping the KVM benchmarks: {e}");
            false
        }
    }
}

fn virtine(c: &mut Criterion) {
    if !kvm_usable() {
        return;
    }
    let mut g = c.benchmark_group("virtine");
    // ~1 ms per cold start plus the wait for its tear-down.
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    bench(&mut g, "cold", measure::measure_cold);
    bench(
        &mut g,
        "restore_from_file",
        measure::measure_restore_from_file,
    );
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    bench(&mut g, "warm_call", measure::measure_warm_call);
    bench(
        &mut g,
        "hypercall_roundtrip",
        measure::measure_hypercall_roundtrip,
    );
    g.finish();

    let mut g = c.benchmark_group("kvm");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    bench(&mut g, "exit_roundtrip", measure::measure_exit_roundtrip);
    g.finish();
}

fn baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("baseline");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    bench(&mut g, "fork_wait", |n| {
        server::measure(Baseline::ForkWait, n)
    });
    bench(&mut g, "fork_exec_wait", |n| {
        server::measure(Baseline::ForkExecWait, n)
    });
    bench(&mut g, "thread_spawn_join", |n| {
        server::measure(Baseline::ThreadSpawnJoin, n)
    });
    g.finish();
}

criterion_group!(benches, virtine, baseline);

fn main() {
    // Before criterion or the monitor start any thread: the process
    // baselines run in a single-threaded helper (see src/bench/server.rs).
    if !server::start() {
        eprintln!("note: the baselines run in the (multi-threaded) bench process");
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    server::stop();
}
