//! `xos-vmm bench --json` on the host channel benchmarks (no KVM needed):
//! the records a plotting or regression script reads.

mod support;

use support::{kvm_available, text, xos};

/// Runs `xos-vmm bench --json FILTER`, checks that exactly `expected`
/// records came out, each with sane statistics over `samples` samples.
fn bench_records(filter: &str, expected: &[&str], samples: u64) {
    let out = xos(&["bench", "--json", filter], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("bench --json prints one JSON array");
    let names: Vec<&str> = records
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, expected);
    for r in &records {
        let (p10, median, p90) = (
            r["p10_ns"].as_u64().unwrap_or(0),
            r["median_ns"].as_u64().unwrap_or(0),
            r["p90_ns"].as_u64().unwrap_or(0),
        );
        assert!(0 < p10 && p10 <= median && median <= p90, "{r}");
        assert_eq!(r["samples"].as_u64(), Some(samples), "{r}");
    }
}

#[test]
fn bench_json_has_one_record_per_selected_channel_benchmark() {
    bench_records(
        "channel.pipe",
        &["channel.pipe.8", "channel.pipe.4096"],
        5000,
    );
}

#[test]
fn bench_measures_thread_ic_host_calls_and_creation() {
    bench_records(
        "xic.thread.host.hypercall",
        &[
            "xic.thread.host.hypercall.8",
            "xic.thread.host.hypercall.4096",
        ],
        5000,
    );
    bench_records("create.thread", &["create.thread"], 300);
}

#[test]
fn bench_measures_virtine_host_calls() {
    if !kvm_available() {
        return;
    }
    bench_records(
        "xic.virtine.host.hypercall",
        &[
            "xic.virtine.host.hypercall.8",
            "xic.virtine.host.hypercall.4096",
        ],
        5000,
    );
    bench_records(
        "xic.virtine.virtine.hypercall",
        &[
            "xic.virtine.virtine.hypercall.8",
            "xic.virtine.virtine.hypercall.4096",
        ],
        5000,
    );
}

#[test]
fn bench_measures_window_calls_between_every_kind() {
    if !kvm_available() {
        return;
    }
    // A sample is the mean of a batch of calls timed inside the caller;
    // the host threads' ring comes along (the VM<->VM bar's baseline).
    // Every pair the registry connects with a window, in both orders (an
    // IC calls the host, not the other way round).
    let registry = xos_vmm::icf::Registry::builtin();
    let mut expected = vec!["channel.shm-poll.8".to_owned()];
    for (a, b, mechanisms) in registry.com().pairs() {
        if !mechanisms.contains(&xos_vmm::icf::ComMechanism::ShmRingPoll) {
            continue;
        }
        let orders = match (a, b) {
            ("host", ic) | (ic, "host") => vec![(ic, "host")],
            (a, b) if a == b => vec![(a, b)],
            (a, b) => vec![(a, b), (b, a)],
        };
        for (caller, callee) in orders {
            expected.push(format!("xic.{caller}.{callee}.shm-poll.8"));
        }
    }
    assert!(expected.len() >= 12, "{expected:?}");
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    bench_records("shm-poll.8", &expected, 5000);
}

#[test]
fn bench_with_an_unknown_filter_lists_the_benchmarks() {
    let out = xos(&["bench", "no-such-benchmark"], b"");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("no benchmark matches 'no-such-benchmark'"),
        "{err}"
    );
    assert!(err.contains("channel.shm-poll.8"), "{err}");
}

#[test]
fn bench_plot_writes_an_svg_chart_of_the_records() {
    let dir = support::scratch("bench-plot");
    let svg = dir.join("chart.svg");
    let out = xos(
        &[
            "bench",
            "--json",
            "--plot",
            svg.to_str().unwrap(),
            "channel.unix",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let chart = std::fs::read_to_string(&svg).expect("the chart was written");
    assert!(
        chart.starts_with("<svg"),
        "{}",
        &chart[..chart.len().min(200)]
    );
    for label in ["channel.unix.8", "channel.unix.4096", "log scale"] {
        assert!(chart.contains(label), "{label} missing from the chart");
    }
    // Two bars (one per record).
    assert!(chart.matches("<rect").count() >= 3, "{chart}");
}

#[test]
fn bench_plot_into_a_missing_directory_is_a_clear_error() {
    let out = xos(
        &[
            "bench",
            "--plot",
            "/nonexistent-dir/chart.svg",
            "channel.unix.8",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("/nonexistent-dir/chart.svg"), "{err}");
}
