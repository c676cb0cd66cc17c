//! The runtime's measured communication costs: the first time a machine
//! needs them, every registered (pair of IC kinds, mechanism) is timed with
//! a short run of the same measurements `xos-vmm bench` makes, and the
//! medians are cached on disk, so that [`icf::ComTable::choose`] can pick
//! the cheapest mechanism without measuring again.
//!
//! The cache is `com-costs.json` in `$XOS_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/xos-vmm`, else `~/.cache/xos-vmm`. It records which
//! machine and which xos-vmm version measured it; a cache from another
//! machine, version or format, or one that cannot be read, is measured
//! again (with a note on stderr) and rewritten.

use std::path::PathBuf;
use std::time::Duration;

use icf::{ComCosts, ComMechanism, Registry};
use serde::{Deserialize, Serialize};

/// Calls timed per mechanism: enough for a stable median, ~10 ms each.
const CALLS: usize = 200;
/// Batches of `xic::WINDOW_BATCH` calls measured for a channel window.
const WINDOW_BATCHES: usize = 8;
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct CacheFile {
    format: u32,
    machine: String,
    costs: Vec<CachedCost>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct CachedCost {
    a: String,
    b: String,
    mechanism: String,
    median_ns: u64,
}

/// What measuring or loading the costs found.
#[derive(Debug, Default)]
pub struct CostReport {
    /// The costs.
    pub costs: ComCosts,
    /// Pairs that could not be measured, with why.
    pub unmeasured: Vec<(String, String, ComMechanism, String)>,
    /// Where the cache is (or would be).
    pub cache: Option<PathBuf>,
    /// Whether the costs came from the cache.
    pub from_cache: bool,
}

/// The cache file's path, if a directory for it can be named.
pub fn cache_path() -> Option<PathBuf> {
    let dir = std::env::var_os("XOS_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("xos-vmm")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/xos-vmm")))?;
    Some(dir.join("com-costs.json"))
}

/// What identifies this machine for the cache: kernel, CPU model, CPU
/// count, and the xos-vmm version (mechanisms change between versions).
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "linux {} / {cpu} / {cpus} cpus / xos-vmm {}",
        kernel.trim(),
        env!("CARGO_PKG_VERSION")
    )
}

/// Times one mechanism between `a` and `b`: the median of [`CALLS`]
/// 8-byte round trips.
pub fn measure(a: &str, b: &str, mechanism: ComMechanism) -> anyhow::Result<Duration> {
    let samples = match mechanism {
        ComMechanism::HypercallRelay => match (a, b) {
            ("host", ic) | (ic, "host") => crate::bench::xic::measure_host_call(ic, 8, CALLS)?,
            (a, b) => crate::bench::xic::measure_ic_call(a, b, 8, CALLS)?,
        },
        ComMechanism::ShmRingPoll | ComMechanism::ShmRingFutex | ComMechanism::Virtio => {
            // An IC's end is its channel window: batches of calls timed
            // inside the caller (see `measure_window_call`).
            let (caller, callee) = match (a, b) {
                ("host", "host") => {
                    return finish(crate::bench::channels::measure_channel_call(
                        mechanism, 8, CALLS,
                    )?)
                }
                ("host", ic) | (ic, "host") => (ic, "host"),
                pair => pair,
            };
            crate::bench::xic::measure_window_call(caller, callee, mechanism, 8, WINDOW_BATCHES)?
        }
        ComMechanism::ViewCall => crate::bench::xic::measure_view_call(8, WINDOW_BATCHES)?,
        m => crate::bench::channels::measure_channel_call(m, 8, CALLS)?,
    };
    finish(samples)
}

/// The median of `samples`.
fn finish(mut samples: Vec<u64>) -> anyhow::Result<Duration> {
    samples.sort_unstable();
    Ok(Duration::from_nanos(crate::bench::percentile(&samples, 50)))
}

fn load(path: &PathBuf, registry: &Registry) -> Result<ComCosts, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let file: CacheFile =
        serde_json::from_str(&text).map_err(|e| format!("it is not a cost cache: {e}"))?;
    if file.format != FORMAT {
        return Err(format!(
            "it has format {}, this xos-vmm writes {FORMAT}",
            file.format
        ));
    }
    let here = machine();
    if file.machine != here {
        return Err(format!(
            "it was measured on '{}', this is '{here}'",
            file.machine
        ));
    }
    let mut costs = ComCosts::default();
    for c in file.costs {
        let m = ComMechanism::from_name(&c.mechanism)
            .ok_or_else(|| format!("it names an unknown mechanism '{}'", c.mechanism))?;
        costs.insert(&c.a, &c.b, m, Duration::from_nanos(c.median_ns));
    }
    // Every registered pair must be in it; otherwise measure afresh.
    for (a, b, mechanisms) in registry.com().pairs() {
        for &m in mechanisms {
            if costs.get(a, b, m).is_none() {
                return Err(format!("it lacks {a} <-> {b} over {}", m.name()));
            }
        }
    }
    Ok(costs)
}

fn save(path: &PathBuf, registry: &Registry, costs: &ComCosts) -> std::io::Result<()> {
    let mut entries = Vec::new();
    for (a, b, mechanisms) in registry.com().pairs() {
        for &m in mechanisms {
            if let Some(cost) = costs.get(a, b, m) {
                entries.push(CachedCost {
                    a: a.to_owned(),
                    b: b.to_owned(),
                    mechanism: m.name().to_owned(),
                    median_ns: u64::try_from(cost.as_nanos()).unwrap_or(u64::MAX),
                });
            }
        }
    }
    let file = CacheFile {
        format: FORMAT,
        machine: machine(),
        costs: entries,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Write then rename, so a concurrent reader never sees half a file.
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

/// The costs of every mechanism registered in `registry`: from the cache,
/// or measured now (and cached) when there is none, it does not fit, or
/// `remeasure` is set. Notes go to stderr through `note`.
pub fn costs(registry: &Registry, remeasure: bool, note: &mut dyn FnMut(String)) -> CostReport {
    let path = cache_path();
    let mut report = CostReport {
        cache: path.clone(),
        ..CostReport::default()
    };
    if let (Some(p), false) = (&path, remeasure) {
        match load(p, registry) {
            Ok(costs) => {
                report.costs = costs;
                report.from_cache = true;
                return report;
            }
            Err(why) if p.exists() => note(format!(
                "the cost cache {} is not usable ({why}); measuring again",
                p.display()
            )),
            Err(_) => note("measuring the communication costs on this machine (first use)".into()),
        }
    }
    for (a, b, mechanisms) in registry.com().pairs() {
        for &m in mechanisms {
            // Once more on failure: a busy machine can starve a measurement
            // (the guest and its peer both need a CPU).
            match measure(a, b, m).or_else(|_| measure(a, b, m)) {
                Ok(cost) => report.costs.insert(a, b, m, cost),
                Err(e) => report
                    .unmeasured
                    .push((a.to_owned(), b.to_owned(), m, format!("{e:#}"))),
            }
        }
    }
    if let Some(p) = &path {
        match save(p, registry, &report.costs) {
            Ok(()) => note(format!("communication costs cached in {}", p.display())),
            Err(e) => note(format!("cannot cache the costs in {}: {e}", p.display())),
        }
    }
    report
}
