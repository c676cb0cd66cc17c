//! Warm pools: many calls on reused instances, each starting exactly at
//! the snapshot; nothing of one call is visible to the next; failures are
//! contained.

mod support;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::kvm_available;
use xos_vmm::vmm::pool::{PoolConfig, WarmPool};
use xos_vmm::vmm::snapshot::Snapshot;
use xos_vmm::vmm::GuestExit;
use xos_vmm::Function;

fn snapshot_of(image: &str) -> Arc<Snapshot> {
    let bytes = xos_images::find(image).expect("image built").bytes;
    let f = Function::from_elf(bytes)
        .expect("image")
        .snapshot_at_ready()
        .expect("ready point");
    Arc::new(Snapshot::decode(&f.snapshot_bytes().expect("snapshot")).expect("decode"))
}

fn pool(image: &str, max: usize) -> WarmPool {
    let config = PoolConfig {
        max_instances: max,
        timeout: Some(Duration::from_secs(5)),
        ..PoolConfig::default()
    };
    WarmPool::new(snapshot_of(image), config).expect("pool")
}

fn out(pool: &WarmPool, input: &str) -> String {
    let o = pool.call(input.as_bytes()).expect("call");
    assert_eq!(
        o.exit,
        GuestExit::Exited(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("utf-8")
}

#[test]
fn every_call_starts_from_the_snapshot() {
    if !kvm_available() {
        return;
    }
    let p = pool("ready-c", 1);
    for i in 0..200 {
        let input = format!("call {i}");
        assert_eq!(
            out(&p, &input),
            format!(
                "inits=1 restored=1 table=68933650521 input={}\n",
                input.to_uppercase()
            )
        );
    }
    assert_eq!(p.instances(), 1, "one reused instance served every call");
}

#[test]
fn nothing_of_one_call_is_visible_to_the_next() {
    if !kvm_available() {
        return;
    }
    let p = pool("secret-c", 1);
    // The probe can see a secret within one call...
    assert_eq!(
        out(&p, "putget CANARY-0"),
        "found in static heap stack xmm\n"
    );
    // ...and never across calls, on the same (only) instance.
    for i in 1..=50 {
        let token = format!("SECRET-{i}");
        assert_eq!(out(&p, &format!("put {token}")), "stored\n");
        assert_eq!(
            out(&p, &format!("get {token}")),
            "clean\n",
            "call after put {token}"
        );
    }
    assert_eq!(p.instances(), 1);
}

#[test]
fn a_crashed_or_timed_out_instance_is_replaced_not_reused() {
    if !kvm_available() {
        return;
    }
    let config = PoolConfig {
        max_instances: 1,
        timeout: Some(Duration::from_millis(300)),
        ..PoolConfig::default()
    };
    let p = WarmPool::new(snapshot_of("secret-c"), config).expect("pool");
    let crashed = p.call(b"crash LEFTOVER-1").expect("call");
    assert!(
        matches!(crashed.exit, GuestExit::Faulted { .. }),
        "{}",
        crashed.exit
    );
    assert_eq!(out(&p, "get LEFTOVER-1"), "clean\n");
    let start = Instant::now();
    let spun = p.call(b"spin LEFTOVER-2").expect("call");
    assert!(
        matches!(spun.exit, GuestExit::TimedOut { .. }),
        "{}",
        spun.exit
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(out(&p, "get LEFTOVER-2"), "clean\n");
}

#[test]
fn concurrent_callers_share_a_bounded_pool() {
    if !kvm_available() {
        return;
    }
    let p = Arc::new(pool("ready-c", 2));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                for i in 0..30 {
                    let input = format!("t{t} i{i}");
                    assert_eq!(
                        out(&p, &input),
                        format!(
                            "inits=1 restored=1 table=68933650521 input={}\n",
                            input.to_uppercase()
                        )
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("caller");
    }
    assert!(p.instances() <= 2, "{} instances", p.instances());
}

#[test]
fn instances_share_nothing() {
    if !kvm_available() {
        return;
    }
    // Two instances of the same snapshot: while one holds a secret (its
    // guest spins with it in memory and registers), the other finds none.
    let snapshot = snapshot_of("secret-c");
    let config = PoolConfig {
        max_instances: 1,
        timeout: Some(Duration::from_millis(800)),
        ..PoolConfig::default()
    };
    let a = Arc::new(WarmPool::new(snapshot.clone(), config.clone()).expect("pool a"));
    let b = WarmPool::new(snapshot, config).expect("pool b");
    let holder = {
        let a = a.clone();
        std::thread::spawn(move || a.call(b"spin SHARED-SECRET").expect("call"))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(out(&b, "get SHARED-SECRET"), "clean\n");
    let held = holder.join().expect("holder");
    assert!(
        matches!(held.exit, GuestExit::TimedOut { .. }),
        "{}",
        held.exit
    );
}
