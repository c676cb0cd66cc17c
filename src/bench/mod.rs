//! Benchmarks (see `docs/BENCHMARKS.md`).
//!
//! `xos-vmm bench [--json] [FILTER]` runs the benchmarks whose name contains
//! FILTER and prints a table (or, with `--json`, one JSON array) of
//! per-sample statistics, followed by the ratios against the project's
//! bars. The measurement functions live in [`measure`] so that the criterion
//! benches (`benches/virtine.rs`) time exactly the same code.
//!
//! The six benchmarks:
//! - `virtine.cold`: parse the `trivial-c` image, create the VM, run it on
//!   its vCPU thread, collect the result (through [`vmm::run_program`], the
//!   path the VIC layer takes);
//! - `virtine.cold_after_teardown`: the same, each sample waiting until
//!   the previous VM is completely torn down;
//! - `virtine.warm_call`: the trivial `noop-c` called in a warm pool, the
//!   instance's reset included;
//! - `virtine.restore_from_file`: read, validate and restore a snapshot
//!   file into a fresh VM, and run the call;
//! - `virtine.hypercall_roundtrip`: one NOP hypercall of `hcloop-c`, as the
//!   time between consecutive resume-hook calls;
//! - `kvm.exit_roundtrip`: the floor: a bare CPL3 loop writing the doorbell,
//!   as the time between consecutive `KVM_RUN` returns;
//! - `kvm.memslot_switch`, `eptview.call_fallback`: EPT views without
//!   VMFUNC (see [`eptview`]).
//! - `baseline.fork_wait`, `baseline.fork_exec_wait`,
//!   `baseline.thread_spawn_join`: what a process or thread costs.
//!
//! - `channel.<mechanism>.<bytes>`: one call (request and reply) between
//!   two host threads over each channel mechanism (see [`channels`]).
//!
//! - `xic.<caller>.<callee>.<mechanism>.<bytes>` and `create.<icf>`:
//!   cross-IC calls and IC creation through the VIC layer (see [`xic`]).
//! - `mutate.<from>.<to>`: moving a running execution flow into a new IC
//!   of another kind (see [`mutate`]).
//!
//! Benchmarks named `breakdown.*` take the cold start apart (see
//! [`breakdown`]); they run only when FILTER starts with `breakdown`.

pub mod breakdown;
pub mod cgi;
pub mod channels;
pub mod eptview;
pub mod measure;
pub mod mutate;
pub mod plot;
pub mod server;
pub mod throughput;
pub mod xic;

use anyhow::Context;
use std::io::Write;

pub use measure::{
    measure_cold, measure_exit_roundtrip, measure_fork_exec_wait, measure_fork_wait,
    measure_hypercall_roundtrip, measure_thread_spawn_join,
};
pub use server::Baseline;

/// Arguments of `xos-vmm bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Print one JSON array of records instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also draw the latencies as an SVG chart into this file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
    /// Only run benchmarks whose name contains this.
    pub filter: Option<String>,
}

/// Samples per round (see [`ROUNDS`]) for `virtine.cold`.
pub const COLD_SAMPLES: usize = 6;
/// Round trips kept per round for the two exit benchmarks: each round runs
/// one `hcloop-c` with this many NOP hypercalls plus the warm-up ones (and
/// one bare loop as long).
pub const ROUNDTRIP_SAMPLES: usize = 400;
/// Samples per round for `virtine.warm_call`.
pub const WARM_SAMPLES: usize = 100;
/// Samples per round for the process baselines.
pub const PROCESS_SAMPLES: usize = 10;
/// Samples per round for the cross-IC host calls.
pub const XIC_SAMPLES: usize = 100;
/// Samples per round (batches of 64 calls) for the virtio calls.
pub const VIRTIO_SAMPLES: usize = 4;
/// Samples per round for the host channel calls.
pub const CHANNEL_SAMPLES: usize = 100;
/// Samples per round for `mutate.*` (each a move there and back).
pub const MUTATE_SAMPLES: usize = 4;
/// Samples per round for the thread baseline.
pub const THREAD_SAMPLES: usize = 100;

/// Summary statistics of one benchmark (the `--json` record): latencies in
/// nanoseconds, or for throughput benchmarks `value` in requests per
/// second (their latency fields are 0 and left out of the JSON).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Benchmark name.
    pub name: String,
    /// Median sample.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub median_ns: u64,
    /// 10th percentile.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub p10_ns: u64,
    /// 90th percentile.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub p90_ns: u64,
    /// Throughput in requests per second (throughput benchmarks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Number of samples (requests, for throughput benchmarks).
    pub samples: usize,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Record {
    /// Summarizes `samples` (nanoseconds). `None` if there are none.
    pub fn from_samples(name: &str, samples: &[u64]) -> Option<Record> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Some(Record {
            name: name.to_owned(),
            median_ns: percentile(&sorted, 50),
            p10_ns: percentile(&sorted, 10),
            p90_ns: percentile(&sorted, 90),
            value: None,
            samples: sorted.len(),
        })
    }

    /// A throughput record.
    pub fn throughput(name: &str, rps: f64, requests: u64) -> Record {
        Record {
            name: name.to_owned(),
            median_ns: 0,
            p10_ns: 0,
            p90_ns: 0,
            value: Some(rps),
            samples: requests as usize,
        }
    }
}

/// The `pct`th percentile of sorted, non-empty `sorted` (nearest rank; for
/// an even count the median is the mean of the two middle samples).
pub fn percentile(sorted: &[u64], pct: u32) -> u64 {
    let n = sorted.len();
    if pct == 50 && n.is_multiple_of(2) {
        let (a, b) = (sorted[n / 2 - 1], sorted[n / 2]);
        return a / 2 + b / 2 + (a % 2 + b % 2) / 2;
    }
    let rank = (pct as usize * n).div_ceil(100).clamp(1, n);
    sorted[rank - 1]
}

/// Whether a benchmark needs `/dev/kvm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    Kvm,
    Nothing,
}

/// A measurement: `samples` in, one duration in nanoseconds per sample out.
type Measure = fn(usize) -> anyhow::Result<Vec<u64>>;

/// A throughput measurement: requests per second and requests served.
type ThroughputMeasure = fn() -> anyhow::Result<(f64, u64)>;

/// One benchmark of the command line.
struct Bench {
    name: &'static str,
    needs: Needs,
    samples: usize,
    run: Measure,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "virtine.cold",
        needs: Needs::Kvm,
        samples: COLD_SAMPLES,
        run: measure_cold,
    },
    Bench {
        name: "virtine.cold_after_teardown",
        needs: Needs::Kvm,
        samples: COLD_SAMPLES,
        run: measure::measure_cold_after_teardown,
    },
    Bench {
        name: "virtine.warm_call",
        needs: Needs::Kvm,
        samples: WARM_SAMPLES,
        run: measure::measure_warm_call,
    },
    Bench {
        name: "virtine.restore_from_file",
        needs: Needs::Kvm,
        samples: COLD_SAMPLES,
        run: measure::measure_restore_from_file,
    },
    Bench {
        name: "virtine.hypercall_roundtrip",
        needs: Needs::Kvm,
        samples: ROUNDTRIP_SAMPLES,
        run: measure_hypercall_roundtrip,
    },
    Bench {
        name: "kvm.exit_roundtrip",
        needs: Needs::Kvm,
        samples: ROUNDTRIP_SAMPLES,
        run: measure_exit_roundtrip,
    },
    Bench {
        name: "kvm.memslot_switch",
        needs: Needs::Kvm,
        samples: ROUNDTRIP_SAMPLES,
        run: eptview::measure_memslot_switch,
    },
    Bench {
        name: "eptview.call_fallback",
        needs: Needs::Kvm,
        samples: ROUNDTRIP_SAMPLES,
        run: eptview::measure_call_fallback,
    },
    Bench {
        name: "baseline.fork_wait",
        needs: Needs::Nothing,
        samples: PROCESS_SAMPLES,
        run: |n| server::measure(Baseline::ForkWait, n),
    },
    Bench {
        name: "baseline.fork_exec_wait",
        needs: Needs::Nothing,
        samples: PROCESS_SAMPLES,
        run: |n| server::measure(Baseline::ForkExecWait, n),
    },
    Bench {
        name: "baseline.thread_spawn_join",
        needs: Needs::Nothing,
        samples: THREAD_SAMPLES,
        run: |n| server::measure(Baseline::ThreadSpawnJoin, n),
    },
    Bench {
        name: "channel.shm-poll.8",
        needs: Needs::Nothing,
        samples: CHANNEL_SAMPLES,
        run: |n| channels::measure_channel_call(icf::ComMechanism::ShmRingPoll, 8, n),
    },
    Bench {
        name: "channel.shm-poll.4096",
        needs: Needs::Nothing,
        samples: CHANNEL_SAMPLES,
        run: |n| channels::measure_channel_call(icf::ComMechanism::ShmRingPoll, 4096, n),
    },
    Bench {
        name: "channel.shm-futex.8",
        needs: Needs::Nothing,
        samples: CHANNEL_SAMPLES,
        run: |n| channels::measure_channel_call(icf::ComMechanism::ShmRingFutex, 8, n),
    },
    Bench {
        name: "channel.shm-futex.4096",
        needs: Needs::Nothing,
        samples: CHANNEL_SAMPLES,
        run: |n| channels::measure_channel_call(icf::ComMechanism::ShmRingFutex, 4096, n),
    },
    Bench {
        name: "channel.pipe.8",
        needs: Needs::Nothing,
        samples: CHANNEL_SAMPLES,
        run: |n| channels::measure_channel_call(icf::ComMechanism::Pipe, 8, n),
    },
    Bench {
        name: "channel.pipe.4096",
        needs: Needs::Nothing,
        samples: CHANNEL_SAMPLES,
        run: |n| channels::measure_channel_call(icf::ComMechanism::Pipe, 4096, n),
    },
    Bench {
        name: "channel.unix.8",
        needs: Needs::Nothing,
        samples: CHANNEL_SAMPLES,
        run: |n| channels::measure_channel_call(icf::ComMechanism::UnixSocket, 8, n),
    },
    Bench {
        name: "channel.unix.4096",
        needs: Needs::Nothing,
        samples: CHANNEL_SAMPLES,
        run: |n| channels::measure_channel_call(icf::ComMechanism::UnixSocket, 4096, n),
    },
    Bench {
        name: "channel.tcp.8",
        needs: Needs::Nothing,
        samples: CHANNEL_SAMPLES,
        run: |n| channels::measure_channel_call(icf::ComMechanism::Tcp, 8, n),
    },
    Bench {
        name: "channel.tcp.4096",
        needs: Needs::Nothing,
        samples: CHANNEL_SAMPLES,
        run: |n| channels::measure_channel_call(icf::ComMechanism::Tcp, 4096, n),
    },
    Bench {
        name: "create.virtine",
        needs: Needs::Kvm,
        samples: COLD_SAMPLES,
        run: |n| xic::measure_create("virtine", n),
    },
    Bench {
        name: "create.process",
        needs: Needs::Nothing,
        samples: COLD_SAMPLES,
        run: |n| xic::measure_create("process", n),
    },
    Bench {
        name: "create.thread",
        needs: Needs::Nothing,
        samples: COLD_SAMPLES,
        run: |n| xic::measure_create("thread", n),
    },
];

/// The selected benchmarks run in this many rounds, round-robin, each
/// round taking every benchmark's per-round samples. This machine's
/// speed drifts over seconds (a VM exit costs ~25 µs for a while, then
/// ~30-35 µs); interleaving exposes every benchmark to the same drift, so
/// the ratios compare like with like.
pub const ROUNDS: usize = 50;

/// A ratio between two benchmarks' medians and the bar it must meet.
pub struct Bar {
    /// Numerator benchmark.
    pub numerator: &'static str,
    /// Denominator benchmark.
    pub denominator: &'static str,
    /// The bound on the ratio.
    pub limit: f64,
    /// Whether the ratio must be at most or at least `limit`.
    pub kind: BarKind,
}

/// Which side of its limit a bar's ratio must be on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// Latency: the ratio must be at most the limit.
    AtMost,
    /// Throughput: the ratio must be at least the limit.
    AtLeast,
}

/// The project's bars.
pub const BARS: &[Bar] = &[
    Bar {
        numerator: "virtine.cold",
        denominator: "baseline.fork_exec_wait",
        limit: 1.0,
        kind: BarKind::AtMost,
    },
    Bar {
        numerator: "virtine.hypercall_roundtrip",
        denominator: "kvm.exit_roundtrip",
        limit: 1.1,
        kind: BarKind::AtMost,
    },
    Bar {
        numerator: "virtine.warm_call",
        denominator: "kvm.exit_roundtrip",
        limit: 1.5,
        kind: BarKind::AtMost,
    },
    Bar {
        numerator: "virtine.warm_call",
        denominator: "baseline.fork_exec_wait",
        limit: 0.2,
        kind: BarKind::AtMost,
    },
    Bar {
        numerator: "xic.virtine.virtine.hypercall.8",
        denominator: "kvm.exit_roundtrip",
        limit: 2.2,
        kind: BarKind::AtMost,
    },
    Bar {
        numerator: "xic.virtine.virtine.shm-poll.8",
        denominator: "channel.shm-poll.8",
        limit: 2.0,
        kind: BarKind::AtMost,
    },
    Bar {
        numerator: "eptview.call_fallback",
        denominator: "kvm.exit_roundtrip+kvm.memslot_switch",
        limit: 1.5,
        kind: BarKind::AtMost,
    },
    Bar {
        numerator: "serve.rps",
        denominator: "baseline.cgi_rps",
        limit: 3.0,
        kind: BarKind::AtLeast,
    },
];

/// How one bar came out in a run.
#[derive(Clone, Debug, PartialEq)]
pub enum BarResult {
    /// Both benchmarks ran: the ratio of their medians (what the bar is
    /// about) and, for context, of their 10th percentiles.
    Ratio {
        /// Median / median.
        median: f64,
        /// p10 / p10.
        p10: f64,
    },
    /// One of them did not run (filtered out or skipped).
    NotRun,
}

/// The bar's result from `records`.
pub fn bar_result(bar: &Bar, records: &[Record]) -> BarResult {
    let find = |name: &str| records.iter().find(|r| r.name == name);
    if bar.denominator.contains('+') {
        return sum_bar_result(bar, records);
    }
    match (find(bar.numerator), find(bar.denominator)) {
        (Some(n), Some(d)) => match (n.value, d.value) {
            (Some(nv), Some(dv)) if dv > 0.0 => BarResult::Ratio {
                median: nv / dv,
                p10: nv / dv,
            },
            (None, None) if d.median_ns > 0 && d.p10_ns > 0 => BarResult::Ratio {
                median: n.median_ns as f64 / d.median_ns as f64,
                p10: n.p10_ns as f64 / d.p10_ns as f64,
            },
            _ => BarResult::NotRun,
        },
        _ => BarResult::NotRun,
    }
}

/// A latency bar whose denominator is a sum of records (`a+b`): one
/// operation that costs both.
fn sum_bar_result(bar: &Bar, records: &[Record]) -> BarResult {
    let find = |name: &str| records.iter().find(|r| r.name == name && r.value.is_none());
    let Some(n) = find(bar.numerator) else {
        return BarResult::NotRun;
    };
    let (mut median, mut p10) = (0u64, 0u64);
    for part in bar.denominator.split('+') {
        let Some(d) = find(part) else {
            return BarResult::NotRun;
        };
        median += d.median_ns;
        p10 += d.p10_ns;
    }
    if median == 0 || p10 == 0 {
        return BarResult::NotRun;
    }
    BarResult::Ratio {
        median: n.median_ns as f64 / median as f64,
        p10: n.p10_ns as f64 / p10 as f64,
    }
}

fn selected(name: &str, filter: Option<&str>) -> bool {
    filter.is_none_or(|f| name.contains(f))
}

/// Runs `xos-vmm bench`.
pub fn main(args: &BenchArgs) -> anyhow::Result<()> {
    // First, while this process has one thread: the baselines' helper.
    if server::start() {
        eprintln!(
            "the baselines run in a single-threaded helper process (see src/bench/server.rs)"
        );
    } else {
        eprintln!("note: the baselines run in this (multi-threaded) process");
    }
    let result = run_main(args);
    server::stop();
    result
}

fn run_main(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.plot {
        // Fail before minutes of measuring, not after.
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        anyhow::ensure!(
            dir.is_dir(),
            "cannot write the chart to {}: {} is not a directory",
            path.display(),
            dir.display()
        );
    }
    let filter = args.filter.as_deref();
    let kvm = vmm::kvm::probe();
    let mut plan: Vec<Planned> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for bench in BENCHES.iter().filter(|b| selected(b.name, filter)) {
        match (&kvm, bench.needs) {
            (Err(_), Needs::Kvm) => skipped.push(bench.name.to_owned()),
            _ => plan.push((bench.name.to_owned(), bench.samples, Box::new(bench.run))),
        }
    }
    // Moving an execution flow between every two kinds.
    for (name, run) in mutate_benches() {
        if selected(&name, filter) {
            match &kvm {
                Err(_) => skipped.push(name),
                Ok(()) => plan.push((name, MUTATE_SAMPLES, run)),
            }
        }
    }
    // The cross-IC matrix: every pair and mechanism the registry offers.
    for (name, run) in xic::matrix(&crate::binary_registry()) {
        if selected(&name, filter) {
            match &kvm {
                Err(_) => skipped.push(name),
                Ok(()) => {
                    // A virtio call costs ~0.3 ms here (wake-ups through
                    // the outer hypervisor): fewer batches per round.
                    let samples = if name.contains(".virtio.") {
                        VIRTIO_SAMPLES
                    } else {
                        XIC_SAMPLES
                    };
                    plan.push((name, samples, run))
                }
            }
        }
    }
    let breakdown = filter.is_some_and(|f| f.starts_with("breakdown"));
    if breakdown {
        for &(name, run) in breakdown::BENCHES {
            if selected(name, filter) {
                match &kvm {
                    Err(_) => skipped.push(name.to_owned()),
                    Ok(()) => plan.push((name.to_owned(), breakdown::SAMPLES, Box::new(run))),
                }
            }
        }
    }
    if let (Err(e), false) = (&kvm, skipped.is_empty()) {
        eprintln!("KVM is not usable, skipping the KVM benchmarks: {e}");
    }
    let throughput_selected = ["serve.rps", "baseline.cgi_rps"]
        .iter()
        .any(|n| selected(n, filter));
    if plan.is_empty() && skipped.is_empty() && !throughput_selected {
        let mut names: Vec<String> = BENCHES.iter().map(|b| b.name.to_owned()).collect();
        names.extend(
            xic::matrix(&crate::binary_registry())
                .into_iter()
                .chain(mutate_benches())
                .map(|(name, _)| name),
        );
        names.extend(["serve.rps".to_owned(), "baseline.cgi_rps".to_owned()]);
        anyhow::bail!(
            "no benchmark matches '{}'; the benchmarks are: {}, and breakdown.* \
             (with a filter starting with 'breakdown')",
            filter.unwrap_or_default(),
            names.join(", ")
        );
    }

    let mut records = run_plan(&plan)?;
    let throughput: [(&str, ThroughputMeasure); 2] = [
        ("serve.rps", throughput::serve_rps),
        ("baseline.cgi_rps", throughput::cgi_rps),
    ];
    for (name, measure) in throughput {
        if !selected(name, filter) {
            continue;
        }
        if name == "serve.rps" && kvm.is_err() {
            skipped.push(name.to_owned());
            continue;
        }
        if !throughput::wrk_available() {
            eprintln!("{name}: skipped, wrk is not installed (apt-get install wrk)");
            continue;
        }
        eprintln!("{name}: {} s under wrk", throughput::DURATION.as_secs());
        let (rps, requests) = measure().with_context(|| format!("{name} failed"))?;
        records.push(Record::throughput(name, rps, requests));
    }

    if let Some(path) = &args.plot {
        let title = format!(
            "xos-vmm bench {}",
            args.filter.as_deref().unwrap_or("(all)")
        );
        plot::write_svg(&records, path, &title)?;
        eprintln!("chart written to {}", path.display());
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &records).context("cannot write the JSON records")?;
        writeln!(out)?;
        for line in bar_lines(&records) {
            eprintln!("{line}");
        }
    } else {
        write!(out, "{}", table(&records))?;
        for name in &skipped {
            writeln!(out, "{name:<34} skipped (KVM not usable)")?;
        }
        writeln!(out)?;
        for line in bar_lines(&records) {
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Runs the plan in [`ROUNDS`] interleaved rounds and summarizes.
/// `mutate.<from>.<to>` for every two kinds `mutate` connects.
fn mutate_benches() -> Vec<(String, xic::MatrixRun)> {
    let mut out: Vec<(String, xic::MatrixRun)> = Vec::new();
    for from in mutate::KINDS {
        for to in mutate::KINDS {
            out.push((
                format!("mutate.{from}.{to}"),
                Box::new(move |n| mutate::measure_mutate(from, to, n)),
            ));
        }
    }
    out
}

/// A benchmark to run: name, samples per round, measurement.
type Planned = (
    String,
    usize,
    Box<dyn Fn(usize) -> anyhow::Result<Vec<u64>>>,
);

fn run_plan(plan: &[Planned]) -> anyhow::Result<Vec<Record>> {
    let mut samples: Vec<Vec<u64>> = plan
        .iter()
        .map(|p| Vec::with_capacity(p.1 * ROUNDS))
        .collect();
    let start = std::time::Instant::now();
    for round in 0..ROUNDS {
        eprint!("round {}/{ROUNDS}:", round + 1);
        for ((name, per_round, run), got) in plan.iter().zip(samples.iter_mut()) {
            eprint!(" {name}");
            got.extend(run(*per_round).with_context(|| format!("benchmark {name} failed"))?);
        }
        eprintln!();
    }
    eprintln!("done in {:.1} s", start.elapsed().as_secs_f64());
    plan.iter()
        .zip(&samples)
        .map(|((name, _, _), got)| {
            Record::from_samples(name, got)
                .with_context(|| format!("benchmark {name} produced no samples"))
        })
        .collect()
}

/// Nanoseconds as microseconds with two decimals.
fn micros(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1000.0)
}

/// The result table.
pub fn table(records: &[Record]) -> String {
    let mut s = format!(
        "{:<34} {:>11} {:>11} {:>11} {:>8}\n",
        "benchmark", "median µs", "p10 µs", "p90 µs", "samples"
    );
    for r in records.iter().filter(|r| r.value.is_none()) {
        s += &format!(
            "{:<34} {:>11} {:>11} {:>11} {:>8}\n",
            r.name,
            micros(r.median_ns),
            micros(r.p10_ns),
            micros(r.p90_ns),
            r.samples
        );
    }
    let throughput: Vec<_> = records.iter().filter(|r| r.value.is_some()).collect();
    if !throughput.is_empty() {
        s += &format!(
            "\n{:<34} {:>11} {:>11}\n",
            "throughput", "requests/s", "requests"
        );
        for r in throughput {
            s += &format!(
                "{:<34} {:>11.0} {:>11}\n",
                r.name,
                r.value.unwrap_or_default(),
                r.samples
            );
        }
    }
    s
}

/// One line per bar: the ratio of medians and whether the bar is met.
pub fn bar_lines(records: &[Record]) -> Vec<String> {
    BARS.iter()
        .map(|bar| {
            let what = format!("{} / {}", bar.numerator, bar.denominator);
            match bar_result(bar, records) {
                BarResult::Ratio { median, p10 } => {
                    let (met, op) = match bar.kind {
                        BarKind::AtMost => (median <= bar.limit, "<="),
                        BarKind::AtLeast => (median >= bar.limit, ">="),
                    };
                    let verdict = if met { "bar met" } else { "bar MISSED" };
                    let limit = bar.limit;
                    match bar.kind {
                        BarKind::AtMost => format!(
                            "{what} = {median:.3} (bar {op} {limit:.1}): {verdict}  [p10 ratio {p10:.3}]"
                        ),
                        BarKind::AtLeast => {
                            format!("{what} = {median:.3} (bar {op} {limit:.1}): {verdict}")
                        }
                    }
                }
                BarResult::NotRun => format!("{what}: not measured in this run"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&v, 10), 1);
        assert_eq!(percentile(&v, 50), 5); // (5 + 6) / 2 rounded down
        assert_eq!(percentile(&v, 90), 9);
        assert_eq!(percentile(&[7], 90), 7);
        let odd = [3, 1, 2];
        let r = Record::from_samples("x", &odd).unwrap();
        assert_eq!((r.p10_ns, r.median_ns, r.p90_ns, r.samples), (1, 2, 3, 3));
        assert!(Record::from_samples("x", &[]).is_none());
    }

    #[test]
    fn bars() {
        let rec = |name: &str, median_ns| Record {
            name: name.into(),
            median_ns,
            p10_ns: 100,
            p90_ns: 0,
            value: None,
            samples: 1,
        };
        let records = vec![
            rec("virtine.cold", 500),
            rec("baseline.fork_exec_wait", 1000),
            rec("virtine.hypercall_roundtrip", 60),
        ];
        assert_eq!(
            bar_result(&BARS[0], &records),
            BarResult::Ratio {
                median: 0.5,
                p10: 1.0
            }
        );
        assert_eq!(bar_result(&BARS[1], &records), BarResult::NotRun);
        let lines = bar_lines(&records);
        assert!(lines[0].contains(": bar met"), "{}", lines[0]);
        assert!(lines[1].contains("not measured"), "{}", lines[1]);
    }

    #[test]
    fn filter() {
        assert!(selected("virtine.cold", None));
        assert!(selected("virtine.cold", Some("cold")));
        assert!(!selected("kvm.exit_roundtrip", Some("cold")));
    }
}
