//! The `vm` ICF: one long-lived VM per IC, booted at create, whose
//! execution flow keeps running across runs.

mod support;

use std::time::{Duration, Instant};

use support::kvm_available;
use xos_vmm::icf::channel::ring::{Notify, RingChannel};
use xos_vmm::icf::channel::Channel;
use xos_vmm::icf::{IcSpec, Registry};
use xos_vmm::vmm::{GuestExit, GuestIo, Program};

fn spec(image: &str, args: &[&str]) -> IcSpec {
    let image = xos_images::find(image).expect("the image is built");
    let mut spec = IcSpec::new(Program::parse(image.bytes).expect("parses"));
    spec.args = args.iter().map(|a| a.as_bytes().to_vec()).collect();
    spec.timeout = Some(Duration::from_secs(30));
    spec
}

#[test]
fn the_same_images_run_in_a_vm_ic() {
    if !kvm_available() {
        return;
    }
    let vm = Registry::builtin()
        .resolve("vm")
        .expect("the vm ICF is available");
    let mut ic = vm.create(spec("sum-c", &["sum"])).expect("boot");
    let (io, out, _) = GuestIo::capture(b"1 2 3\n4\n".to_vec());
    assert_eq!(ic.run(io).unwrap().exit, GuestExit::Exited(0));
    assert_eq!(String::from_utf8_lossy(&out.contents()), "10\n");
    // The guest ended, and a VM runs one execution flow: a clear error.
    let (io, _, _) = GuestIo::capture(Vec::new());
    let e = ic.run(io).expect_err("ended").to_string();
    assert!(
        e.contains("already ended") && e.contains("create a new VM IC"),
        "{e}"
    );

    // Faults and time limits end the VM's guest as they end a virtine.
    let mut ic = vm.create(spec("faults-c", &["faults", "null"])).unwrap();
    let (io, _, _) = GuestIo::capture(Vec::new());
    assert!(matches!(
        ic.run(io).unwrap().exit,
        GuestExit::Faulted { .. }
    ));
    let mut s = spec("faults-c", &["faults", "loop"]);
    s.timeout = Some(Duration::from_millis(200));
    let mut ic = vm.create(s).unwrap();
    let (io, _, _) = GuestIo::capture(Vec::new());
    let t = Instant::now();
    assert!(matches!(
        ic.run(io).unwrap().exit,
        GuestExit::TimedOut { .. }
    ));
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_vm_ic_keeps_its_guest_running_across_runs() {
    if !kvm_available() {
        return;
    }
    // The counter stops at a safe point when asked, and the next run goes
    // on in the same VM: the count continues and it never "moved".
    let (mut peer, end) = RingChannel::pair(4096, Notify::Futex).unwrap();
    let mut s = spec("counter-c", &["counter", "300"]);
    s.window = Some(end.into_guest_end().unwrap());
    let mut ic = Registry::builtin()
        .resolve("vm")
        .unwrap()
        .create(s)
        .unwrap();
    let handle = std::sync::Arc::new(std::sync::Mutex::new(ic.interrupter()));
    let talker_handle = std::sync::Arc::clone(&handle);
    let talker = std::thread::spawn(move || {
        let mut reply = Vec::new();
        for i in 1..=300u64 {
            if i % 100 == 0 {
                talker_handle.lock().unwrap().request_safe_point();
            }
            peer.send(&i.to_le_bytes()).unwrap();
            peer.recv(&mut reply).unwrap();
            assert_eq!(u64::from_le_bytes(reply[..8].try_into().unwrap()), i);
            // Same IC throughout: the safe points answer 0.
            assert_eq!(u64::from_le_bytes(reply[8..].try_into().unwrap()), 0);
        }
    });
    let mut stops = 0;
    loop {
        let (io, out, err) = GuestIo::capture(Vec::new());
        let outcome = ic.run(io).expect("run");
        match outcome.exit {
            GuestExit::SafePoint => {
                stops += 1;
                *handle.lock().unwrap() = ic.interrupter();
            }
            GuestExit::Exited(0) => {
                assert_eq!(
                    String::from_utf8_lossy(&out.contents()),
                    "counted 300, moved 0 times\n"
                );
                break;
            }
            other => panic!("{other:?}: {}", String::from_utf8_lossy(&err.contents())),
        }
    }
    assert!(stops >= 2, "{stops} stops");
    talker.join().unwrap();
}

#[test]
fn vm_ics_talk_through_windows_and_take_part_in_mutate() {
    if !kvm_available() {
        return;
    }
    let registry = Registry::builtin();
    // vm <-> virtine through a window.
    let (near, far) = RingChannel::pair(4096, Notify::Poll).unwrap();
    let mut server_spec = spec("chan-c", &["chan", "serve"]);
    server_spec.window = Some(far.into_guest_end().unwrap());
    let mut server = registry
        .resolve("virtine")
        .unwrap()
        .create(server_spec)
        .unwrap();
    let served = std::thread::spawn(move || {
        let (io, _, _) = GuestIo::capture(Vec::new());
        server.run(io).unwrap().exit
    });
    let mut caller_spec = spec("chan-c", &["chan", "call", "100", "4096"]);
    caller_spec.window = Some(near.into_guest_end().unwrap());
    let mut caller = registry.resolve("vm").unwrap().create(caller_spec).unwrap();
    let (io, _, err) = GuestIo::capture(Vec::new());
    let called = caller.run(io).unwrap().exit;
    assert_eq!(
        called,
        GuestExit::Exited(0),
        "{}",
        String::from_utf8_lossy(&err.contents())
    );
    drop(caller);
    assert_eq!(served.join().unwrap(), GuestExit::Exited(0));

    // A counter moves vm -> virtine -> vm.
    let (mut peer, end) = RingChannel::pair(4096, Notify::Poll).unwrap();
    let mut s = spec("counter-c", &["counter", "3"]);
    s.window = Some(end.into_guest_end().unwrap());
    let mut ic = registry.resolve("vm").unwrap().create(s).unwrap();
    let mut reply = Vec::new();
    for (i, next) in [(1u64, Some("virtine")), (2, Some("vm")), (3, None)] {
        if next.is_some() {
            ic.interrupter().request_safe_point();
        }
        let handle = std::thread::spawn(move || {
            let (io, out, _) = GuestIo::capture(Vec::new());
            let exit = ic.run(io).unwrap().exit;
            (ic, exit, out.contents())
        });
        peer.send(&i.to_le_bytes()).unwrap();
        peer.recv(&mut reply).unwrap();
        assert_eq!(u64::from_le_bytes(reply[..8].try_into().unwrap()), i);
        assert_eq!(u64::from_le_bytes(reply[8..].try_into().unwrap()), i - 1);
        let (done, exit, out) = handle.join().unwrap();
        match next {
            Some(kind) => {
                assert_eq!(exit, GuestExit::SafePoint);
                ic = registry.mutate(done, kind).unwrap();
                assert_eq!(ic.kind(), kind);
            }
            None => {
                assert_eq!(exit, GuestExit::Exited(0));
                assert_eq!(String::from_utf8_lossy(&out), "counted 3, moved 2 times\n");
                break;
            }
        }
    }
}
