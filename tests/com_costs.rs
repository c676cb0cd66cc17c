//! `xos-vmm icfs --com`: the pair table with measured costs and the
//! runtime's choice, measured once and then read from the cache.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use support::{kvm_available, scratch, text};

fn icfs_com(cache: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xos-vmm"))
        .args(["icfs", "--com"])
        .args(extra)
        .env("XOS_CACHE_DIR", cache)
        .output()
        .expect("run xos-vmm icfs --com")
}

/// The cost column of the `a b mechanism` row, in µs.
fn cost(table: &str, a: &str, b: &str, mechanism: &str) -> Option<f64> {
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 4 && f[0] == a && f[1] == b && f[2] == mechanism)
            .then(|| f[3].parse().ok())
            .flatten()
    })
}

#[test]
fn costs_are_measured_once_cached_and_chosen() {
    let dir = scratch("com-costs");
    let _ = std::fs::remove_dir_all(&dir);
    let first = icfs_com(&dir, &[]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let (table, err) = (text(&first.stdout), text(&first.stderr));
    assert!(err.contains("measuring the communication costs"), "{err}");
    let thread = cost(&table, "host", "thread", "hypercall").expect("host/thread cost");
    assert!(thread > 0.0, "{table}");
    // Exactly one mechanism of the pair is chosen: the cheapest measured.
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[0] == "host" && f[1] == "thread"
        })
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    let chosen: Vec<&&str> = rows.iter().filter(|r| r.contains(" * ")).collect();
    assert_eq!(chosen.len(), 1, "{table}");
    // The table prints two decimals: mechanisms that print the same lowest
    // cost are tied there (the choice used the unrounded numbers).
    let mechanisms = ["hypercall", "shm-poll", "shm-futex"];
    let lowest = mechanisms
        .iter()
        .filter_map(|m| cost(&table, "host", "thread", m))
        .fold(f64::INFINITY, f64::min);
    let chosen_mechanism = chosen[0].split_whitespace().nth(2).unwrap_or_default();
    assert_eq!(
        cost(&table, "host", "thread", chosen_mechanism),
        Some(lowest),
        "the chosen mechanism is not (one of) the cheapest: {table}"
    );
    if kvm_available() {
        let virtine = cost(&table, "host", "virtine", "hypercall").expect("host/virtine cost");
        // A VM exit costs far more than a trap within the process.
        assert!(virtine > thread, "{table}");
    }
    let cache = dir.join("com-costs.json");
    let cached = std::fs::read_to_string(&cache).expect("the cache was written");
    assert!(cached.contains("\"mechanism\": \"hypercall\""), "{cached}");

    // Second run: from the cache, the same numbers.
    let second = icfs_com(&dir, &[]);
    assert!(second.status.success());
    let err = text(&second.stderr);
    assert!(
        err.contains("costs from") && !err.contains("measuring"),
        "{err}"
    );
    assert_eq!(
        cost(&text(&second.stdout), "host", "thread", "hypercall"),
        Some(thread)
    );

    // --remeasure measures again.
    let third = icfs_com(&dir, &["--remeasure"]);
    assert!(third.status.success());
    assert!(
        text(&third.stderr).contains("cached in"),
        "{}",
        text(&third.stderr)
    );
}

#[test]
fn a_corrupt_or_foreign_cache_is_measured_again() {
    for (name, content) in [
        ("garbage", "this is not json".to_owned()),
        (
            "foreign",
            r#"{"format":1,"machine":"some other box","costs":[]}"#.to_owned(),
        ),
        (
            "future",
            r#"{"format":99,"machine":"x","costs":[]}"#.to_owned(),
        ),
    ] {
        let dir = scratch(&format!("com-costs-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("com-costs.json"), content).unwrap();
        let out = icfs_com(&dir, &[]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(
            err.contains("is not usable") && err.contains("measuring again"),
            "{name}: {err}"
        );
        assert!(cost(&text(&out.stdout), "host", "thread", "hypercall").is_some());
        // And it was replaced by a good one.
        let again = icfs_com(&dir, &[]);
        assert!(text(&again.stderr).contains("costs from"), "{name}");
    }
}

#[test]
fn remeasure_needs_com() {
    let out = Command::new(env!("CARGO_BIN_EXE_xos-vmm"))
        .args(["icfs", "--remeasure"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--com"), "{}", text(&out.stderr));
}
