//! An embedder that blocks every signal (common in servers that handle
//! signals on one thread) can still time out and kill guests: executor
//! threads unblock the kick signal they need. Its own test binary, so the
//! executors are created by a thread with everything blocked.

use std::time::{Duration, Instant};
use xos_vmm::vmm::GuestExit;
use xos_vmm::Function;

#[test]
fn timeouts_work_when_the_embedder_blocks_all_signals() {
    if !xos_vmm::vmm::kvm::available_for_tests() {
        return;
    }
    // SAFETY: fills a sigset and changes only this thread's mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
    let image = xos_images::find("faults-c").expect("faults-c");
    let f = Function::from_elf(image.bytes)
        .expect("image")
        .args(["faults", "loop"])
        .timeout(Duration::from_millis(300));
    let start = Instant::now();
    let r = f.call(b"").expect("call");
    assert!(matches!(r.exit, GuestExit::TimedOut { .. }), "{}", r.exit);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}
