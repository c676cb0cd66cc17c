//! IC-to-IC calls over channels attached as host functions
//! (`icf::channel::attach`): a virtine calling a virtine or a thread IC, and
//! a callee that goes away mid-call.

mod support;

use std::time::{Duration, Instant};

use support::kvm_available;
use xos_vmm::icf::channel::ring::{Notify, RingChannel};
use xos_vmm::icf::channel::{attach, Channel};
use xos_vmm::icf::{IcSpec, Registry};
use xos_vmm::vmm::{GuestExit, GuestIo, Program, RunOutcome};

fn chan_spec(args: &[&str], channel: Box<dyn Channel>) -> IcSpec {
    let image = xos_images::find("chan-c").expect("the chan-c image is built");
    let mut spec = IcSpec::new(Program::parse(image.bytes).expect("chan-c parses"));
    spec.args = std::iter::once("chan")
        .chain(args.iter().copied())
        .map(|a| a.as_bytes().to_vec())
        .collect();
    spec.timeout = Some(Duration::from_secs(30));
    attach(&mut spec, "chan", channel);
    spec
}

/// Runs `spec` in a `kind` IC, returning how it ended and its stderr.
fn run(kind: &str, spec: IcSpec) -> (RunOutcome, String) {
    let factory = Registry::builtin().resolve(kind).expect("usable ICF");
    let mut ic = factory.create(spec).expect("create");
    let (io, _out, err) = GuestIo::capture(Vec::new());
    let outcome = ic.run(io).expect("run");
    (
        outcome,
        String::from_utf8_lossy(&err.contents()).into_owned(),
    )
}

fn call_across(caller: &str, callee: &str) {
    let (near, far) = RingChannel::pair(64 << 10, Notify::Futex).unwrap();
    let callee_kind = callee.to_owned();
    let server =
        std::thread::spawn(move || run(&callee_kind, chan_spec(&["serve"], Box::new(far))));
    // 300 calls of 4 KiB: every reply is checked byte by byte in the guest.
    let (called, err) = run(caller, chan_spec(&["call", "300", "4096"], Box::new(near)));
    assert_eq!(
        called.exit,
        GuestExit::Exited(0),
        "{caller} -> {callee}: {err}"
    );
    let (served, err) = server.join().unwrap();
    assert_eq!(
        served.exit,
        GuestExit::Exited(0),
        "{callee} serving {caller}: {err}"
    );
}

#[test]
fn a_virtine_calls_a_virtine() {
    if !kvm_available() {
        return;
    }
    call_across("virtine", "virtine");
}

#[test]
fn a_virtine_and_a_thread_ic_call_each_other() {
    if !kvm_available() {
        return;
    }
    call_across("virtine", "thread");
    call_across("thread", "virtine");
}

#[test]
fn a_callee_that_goes_away_mid_call_fails_the_call_instead_of_hanging() {
    if !kvm_available() {
        return;
    }
    let (near, mut far) = RingChannel::pair(64 << 10, Notify::Futex).unwrap();
    // The callee takes the first request and disappears without replying.
    let callee = std::thread::spawn(move || {
        let mut buf = Vec::new();
        far.recv(&mut buf).unwrap();
        buf.len()
    });
    let t = Instant::now();
    let (called, err) = run("virtine", chan_spec(&["call", "5", "8"], Box::new(near)));
    assert_eq!(callee.join().unwrap(), 8);
    assert_eq!(called.exit, GuestExit::Exited(1), "{err}");
    assert!(err.contains("call 0 returned"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn a_callee_process_that_dies_mid_call_fails_the_call_instead_of_hanging() {
    if !kvm_available() {
        return;
    }
    let (near, far) = RingChannel::pair(64 << 10, Notify::Futex).unwrap();
    let mut far = Some(far);
    let mut buf = Vec::with_capacity(1 << 16);
    // SAFETY: the child only uses the ring (atomics, futex, a preallocated
    // buffer) and leaves with _exit, never returning into the harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        if let Some(mut far) = far.take() {
            let _ = far.recv(&mut buf);
            std::mem::forget(far); // die without closing: only the pid tells
        }
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    if let Some(far) = far.take() {
        far.hand_over_in_process();
    }
    let t = Instant::now();
    let (called, err) = run("virtine", chan_spec(&["call", "5", "8"], Box::new(near)));
    let mut status = 0;
    // SAFETY: reaps our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(called.exit, GuestExit::Exited(1), "{err}");
    assert!(err.contains("call 0 returned"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn a_guest_waiting_on_a_silent_peer_is_stopped_at_its_time_limit() {
    if !kvm_available() {
        return;
    }
    use xos_vmm::icf::channel::stream::pipe_pair;
    use xos_vmm::icf::ChannelError;
    let pairs: Vec<(Box<dyn Channel>, Box<dyn Channel>)> = vec![
        {
            let (a, b) = RingChannel::pair(64 << 10, Notify::Futex).unwrap();
            (Box::new(a), Box::new(b))
        },
        {
            let (a, b) = pipe_pair().unwrap();
            (Box::new(a), Box::new(b))
        },
    ];
    for (kind, (near, mut far)) in ["virtine", "thread"].into_iter().zip(pairs) {
        let name = format!("{kind} over {}", near.mechanism().name());
        // The peer stays alive and never sends: only the time limit helps.
        let mut spec = chan_spec(&["serve"], near);
        spec.timeout = Some(Duration::from_millis(300));
        let t = Instant::now();
        let (outcome, _) = run(kind, spec);
        assert!(
            matches!(outcome.exit, GuestExit::TimedOut { .. }),
            "{name}: {:?}",
            outcome.exit
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}: {:?}",
            t.elapsed()
        );
        // The vCPU thread really left the host function: the guest's end
        // of the channel is released, so the peer sees it gone.
        far.set_timeout(Some(Duration::from_secs(10)));
        match far.recv(&mut Vec::new()) {
            Err(ChannelError::PeerGone { .. }) => {}
            other => panic!("{name}: expected PeerGone, got {other:?}"),
        }
    }
}
