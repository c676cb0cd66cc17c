//! IC-to-IC calls through channel windows: one ring channel whose two
//! sides are mapped into the two ICs (`IcSpec::window`), so messages move
//! through memory without an exit per message. Every kind of IC, both ways
//! of waiting, a host-thread peer, and peers that go away mid-call.

mod support;

use std::time::{Duration, Instant};

use support::kvm_available;
use xos_vmm::icf::channel::ring::{Notify, RingChannel};
use xos_vmm::icf::channel::Channel;
use xos_vmm::icf::process::Helper;
use xos_vmm::icf::{IcSpec, Registry};
use xos_vmm::vmm::{GuestExit, GuestIo, Program, RunOutcome};

fn registry() -> Registry {
    Registry::with_process_helper(Some(Helper {
        program: env!("CARGO_BIN_EXE_xos-vmm").into(),
        args: vec!["__process-ic".into()],
    }))
}

fn chan_spec(args: &[&str], end: Option<RingChannel>) -> IcSpec {
    let image = xos_images::find("chan-c").expect("the chan-c image is built");
    let mut spec = IcSpec::new(Program::parse(image.bytes).expect("chan-c parses"));
    spec.args = std::iter::once("chan")
        .chain(args.iter().copied())
        .map(|a| a.as_bytes().to_vec())
        .collect();
    spec.timeout = Some(Duration::from_secs(30));
    spec.window = end.map(|e| e.into_guest_end().expect("the ring fits a window"));
    spec
}

/// Runs `spec` in a `kind` IC, returning how it ended and its stderr.
fn run(kind: &str, spec: IcSpec) -> (RunOutcome, String) {
    let factory = registry().resolve(kind).expect("usable ICF");
    let mut ic = factory.create(spec).expect("create");
    let (io, _out, err) = GuestIo::capture(Vec::new());
    let outcome = ic.run(io).expect("run");
    (
        outcome,
        String::from_utf8_lossy(&err.contents()).into_owned(),
    )
}

/// `caller` makes checked calls of several sizes to `callee` (both
/// `chan-c`), through one ring mapped into both.
fn call_across(caller: &str, callee: &str, notify: Notify) {
    // A 4 KiB ring: the 10000-byte messages stream through it in pieces.
    for (calls, size) in [("200", "8"), ("50", "4096"), ("20", "10000"), ("5", "0")] {
        let (near, far) = RingChannel::pair(4096, notify).unwrap();
        let callee_kind = callee.to_owned();
        let server =
            std::thread::spawn(move || run(&callee_kind, chan_spec(&["serve"], Some(far))));
        let (called, err) = run(caller, chan_spec(&["call", calls, size], Some(near)));
        assert_eq!(
            called.exit,
            GuestExit::Exited(0),
            "{caller} -> {callee} ({notify:?}, {size} B): {err}"
        );
        // The caller's run ended, so its side is closed and the server's
        // next receive fails: it exits 0.
        let (served, err) = server.join().unwrap();
        assert_eq!(
            served.exit,
            GuestExit::Exited(0),
            "{callee} serving {caller} ({notify:?}): {err}"
        );
    }
}

#[test]
fn every_kind_of_ic_calls_every_other_through_a_window() {
    if !kvm_available() {
        return;
    }
    for (a, b) in [
        ("virtine", "virtine"),
        ("virtine", "thread"),
        ("thread", "virtine"),
        ("virtine", "process"),
        ("process", "virtine"),
        ("process", "process"),
        ("thread", "process"),
        ("ept-view", "ept-view"),
        ("ept-view", "virtine"),
        ("process", "ept-view"),
    ] {
        call_across(a, b, Notify::Poll);
    }
    call_across("ept-view", "thread", Notify::Futex);
}

#[test]
fn sleeping_windows_work_between_vms_and_with_host_threads() {
    if !kvm_available() {
        return;
    }
    call_across("virtine", "virtine", Notify::Futex);
    call_across("process", "virtine", Notify::Futex);

    // A host thread serves a virtine over a futex ring: it sleeps between
    // the guest's calls, and the guest wakes it with WINDOW_WAKE.
    for notify in [Notify::Poll, Notify::Futex] {
        let (mut host, guest) = RingChannel::pair(4096, notify).unwrap();
        let server = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut served = 0;
            while host.recv(&mut buf).is_ok() {
                for b in &mut buf {
                    *b = b.wrapping_add(1);
                }
                host.send(&buf).unwrap();
                served += 1;
            }
            served
        });
        let (called, err) = run("virtine", chan_spec(&["call", "100", "100"], Some(guest)));
        assert_eq!(called.exit, GuestExit::Exited(0), "{notify:?}: {err}");
        assert_eq!(server.join().unwrap(), 100, "{notify:?}");
    }
}

#[test]
fn a_peer_that_goes_away_mid_call_fails_the_call_instead_of_hanging() {
    if !kvm_available() {
        return;
    }
    for notify in [Notify::Poll, Notify::Futex] {
        // A host thread takes the first request and closes its end.
        let (mut host, guest) = RingChannel::pair(4096, notify).unwrap();
        let callee = std::thread::spawn(move || {
            let mut buf = Vec::new();
            host.recv(&mut buf).unwrap();
            buf.len()
        });
        let t = Instant::now();
        let (called, err) = run("virtine", chan_spec(&["call", "5", "8"], Some(guest)));
        assert_eq!(callee.join().unwrap(), 8);
        assert_eq!(called.exit, GuestExit::Exited(1), "{notify:?}: {err}");
        assert!(err.contains("call 0 returned -32"), "{notify:?}: {err}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }

    // The peer IC spins without ever answering and is stopped at its time
    // limit mid-call: the caller (a virtine, then a process IC) gets EPIPE
    // once the peer's run has ended, not a hang.
    for caller in ["virtine", "process"] {
        let (near, far) = RingChannel::pair(4096, Notify::Poll).unwrap();
        let image = xos_images::find("faults-c").expect("the faults-c image is built");
        let mut silent = IcSpec::new(Program::parse(image.bytes).expect("faults-c parses"));
        silent.args = vec![b"faults".to_vec(), b"loop".to_vec()];
        silent.timeout = Some(Duration::from_millis(300));
        silent.window = Some(far.into_guest_end().unwrap());
        let server = std::thread::spawn(move || run("virtine", silent));
        let t = Instant::now();
        let (called, err) = run(caller, chan_spec(&["call", "1", "8"], Some(near)));
        let (silent, _) = server.join().unwrap();
        assert!(
            matches!(silent.exit, GuestExit::TimedOut { .. }),
            "{:?}",
            silent.exit
        );
        assert_eq!(called.exit, GuestExit::Exited(1), "{caller}: {err}");
        assert!(err.contains("returned -32"), "{caller}: {err}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
}

#[test]
fn a_corrupt_window_gives_the_guest_an_error_not_a_crash() {
    if !kvm_available() {
        return;
    }
    // The "peer" announces a message and then moves its head far past the
    // capacity: the guest must report XOS_EIO (-5) and exit, never read
    // outside the window.
    let (host, guest) = RingChannel::pair(4096, Notify::Poll).unwrap();
    let memfd = host.memfd().try_clone().unwrap();
    host.hand_over_in_process();
    let region = {
        use std::os::fd::AsRawFd;
        let len = 4096 + 2 * 4096;
        // SAFETY: maps the ring's memfd, shared, for this test only.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                memfd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p as usize
    };
    let corrupt = std::thread::spawn(move || {
        let region = region as *mut u8;
        // The guest is side 1: it sends on ring 1 and receives on ring 0.
        let head1 = xos_abi::ring::field(1, xos_abi::ring::HEAD) as usize;
        let head0 = xos_abi::ring::field(0, xos_abi::ring::HEAD) as usize;
        // Wait for the guest's request (ring 1's head moves), then answer
        // with an impossible head on ring 0.
        let deadline = Instant::now() + Duration::from_secs(20);
        // SAFETY: the offsets are inside the mapping; atomics on a shared
        // mapping.
        let (req, rep) = unsafe {
            (
                &*(region.add(head1) as *const std::sync::atomic::AtomicU32),
                &*(region.add(head0) as *const std::sync::atomic::AtomicU32),
            )
        };
        while req.load(std::sync::atomic::Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        rep.store(0x7fff_0000, std::sync::atomic::Ordering::SeqCst);
    });
    let (called, err) = run("virtine", chan_spec(&["call", "1", "8"], Some(guest)));
    corrupt.join().unwrap();
    assert_eq!(called.exit, GuestExit::Exited(1), "{err}");
    assert!(err.contains("returned -5"), "{err}");
}

#[test]
fn rings_too_large_for_a_window_are_refused_with_a_clear_error() {
    let (a, _b) = RingChannel::pair(1 << 20, Notify::Poll).unwrap();
    let err = a.into_guest_end().unwrap_err().to_string();
    assert!(err.contains("at most 512 KiB"), "{err}");
}
