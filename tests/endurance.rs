//! 100,000 invocations across all pool threads leave the process's memory
//! and file descriptors where they were after warm-up: a leak of even a
//! few hundred bytes or one fd per call fails this test.

use std::sync::Arc;
use std::time::Duration;
use xos_vmm::vmm::GuestExit;
use xos_vmm::Function;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn a_hundred_thousand_pooled_calls_do_not_grow_memory_or_fds() {
    if !xos_vmm::vmm::kvm::available_for_tests() {
        return;
    }
    const THREADS: usize = 4;
    const CALLS: usize = 100_000;
    let image = xos_images::find("noop-c").expect("noop-c");
    let pool = Arc::new(
        Function::from_elf(image.bytes)
            .expect("image")
            .timeout(Duration::from_secs(10))
            .pool(THREADS)
            .expect("pool"),
    );
    let run = |calls: usize| {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    for _ in 0..calls / THREADS {
                        let r = pool.call(b"").expect("call");
                        assert_eq!(r.exit, GuestExit::Exited(0));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("caller");
        }
    };
    // Warm-up: every instance exists and has faulted in its pages.
    run(4_000);
    let (rss0, fds0) = (rss_kib(), fds());
    run(CALLS);
    let (rss1, fds1) = (rss_kib(), fds());
    eprintln!("RSS {rss0} KiB -> {rss1} KiB, fds {fds0} -> {fds1}");
    assert_eq!(fds1, fds0, "file descriptors leaked");
    assert!(
        rss1 <= rss0 + 8 * 1024,
        "RSS grew by {} KiB over {CALLS} calls",
        rss1 - rss0
    );
    assert!(pool.instances() <= THREADS);
}
