//! Polling channels on a busy host: when both ends of a `Notify::Poll`
//! ring share one CPU, a waiter that only spins burns its whole time
//! slice before its peer can answer, so every hand-off costs a slice
//! (measured: 20,000 calls between a virtine and a host thread took past
//! 30 s beside a parallel build). A waiter that has spun for a while
//! yields its CPU (host side: `sched_yield`; guest side: `WINDOW_WAIT(0)`,
//! which the monitor answers after yielding), so the peer runs at once.
//!
//! These tests pin both ends to one CPU, the worst case, and check that
//! the calls finish with every reply right, within a limit far above what
//! yielding needs (milliseconds) and far below what spinning needs
//! (a time slice per message). They run alone in this binary because
//! pinning is per thread and inherited by the threads a test creates.

mod support;

use std::time::{Duration, Instant};

use support::kvm_available;
use xos_vmm::icf::channel::ring::{Notify, RingChannel};
use xos_vmm::icf::channel::Channel;
use xos_vmm::icf::{IcSpec, Registry};
use xos_vmm::vmm::{GuestExit, GuestIo, Program};

/// Messages per test: at a 4 ms slice per hand-off, spinning would need
/// minutes; yielding needs well under a second.
const CALLS: u64 = 5_000;
/// The limit: generous for a loaded CI machine, yet a spinner cannot meet it.
const LIMIT: Duration = Duration::from_secs(15);

/// Pins the calling thread (and the threads it creates from now on) to
/// the first CPU it may run on.
fn pin_to_one_cpu() {
    // SAFETY: `set` is a plain bit set owned by this frame; the calls only
    // read and write it and change the calling thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0,
            "sched_getaffinity"
        );
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("some CPU is allowed");
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

/// Sends `CALLS` numbers and checks each reply holds the count so far.
fn talk(peer: &mut RingChannel) {
    let mut reply = Vec::new();
    for i in 1..=CALLS {
        peer.send(&i.to_le_bytes()).expect("send");
        peer.recv(&mut reply).expect("recv");
        assert_eq!(reply.len(), 16, "reply {i}");
        let count = u64::from_le_bytes(reply[..8].try_into().expect("8 bytes"));
        assert_eq!(count, i, "the count skipped or repeated");
    }
}

#[test]
fn polling_ends_sharing_one_cpu_still_make_progress() {
    pin_to_one_cpu();

    // Two host threads.
    let (mut a, mut b) = RingChannel::pair(4096, Notify::Poll).expect("ring");
    let start = Instant::now();
    let echo = std::thread::spawn(move || {
        let mut msg = Vec::new();
        for i in 1..=CALLS {
            b.recv(&mut msg).expect("recv");
            assert_eq!(msg, i.to_le_bytes(), "request {i}");
            let mut reply = i.to_le_bytes().to_vec();
            reply.extend_from_slice(&0u64.to_le_bytes());
            b.send(&reply).expect("send");
        }
    });
    talk(&mut a);
    echo.join().expect("the echo thread saw every request");
    let threads = start.elapsed();
    eprintln!("{CALLS} calls between two threads on one CPU: {threads:?}");
    assert!(
        threads < LIMIT,
        "{CALLS} polling calls between two threads on one CPU took {threads:?}"
    );

    // A virtine guest (the counter EF) and a host thread.
    if !kvm_available() {
        return;
    }
    let (mut peer, end) = RingChannel::pair(4096, Notify::Poll).expect("ring");
    let image = xos_images::find("counter-c").expect("the counter-c image is built");
    let mut spec = IcSpec::new(Program::parse(image.bytes).expect("counter-c parses"));
    spec.args = vec![b"counter".to_vec(), CALLS.to_string().into_bytes()];
    spec.timeout = Some(LIMIT);
    spec.window = Some(end.into_guest_end().expect("the ring fits a window"));
    let registry = Registry::builtin();
    let factory = registry.resolve("virtine").expect("the virtine ICF");
    let mut ic = factory.create(spec).expect("create");
    let talker = std::thread::spawn(move || talk(&mut peer));
    let (io, out, err) = GuestIo::capture(Vec::new());
    let start = Instant::now();
    let outcome = ic.run(io).expect("run");
    eprintln!(
        "{CALLS} calls between a virtine and a thread on one CPU: {:?}",
        start.elapsed()
    );
    assert_eq!(
        outcome.exit,
        GuestExit::Exited(0),
        "{CALLS} polling calls between a virtine and a thread on one CPU: {}",
        String::from_utf8_lossy(&err.contents())
    );
    assert_eq!(
        String::from_utf8_lossy(&out.contents()),
        format!("counted {CALLS}, moved 0 times\n")
    );
    talker.join().expect("every reply was right");
}
