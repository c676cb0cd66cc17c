//! The virtio channel device: VM ICs (virtines and VMs) exchanging
//! messages through two virtqueues with a host thread or with each other.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::kvm_available;
use xos_vmm::icf::channel::ring::{Notify, RingChannel};
use xos_vmm::icf::channel::virtio::VirtioChannel;
use xos_vmm::icf::channel::Channel;
use xos_vmm::icf::{IcSpec, IcfError, Registry};
use xos_vmm::vmm::{GuestExit, GuestIo, Program, RunOutcome};

fn spec(image: &str, args: &[&str], device: Option<Arc<VirtioChannel>>) -> IcSpec {
    let image = xos_images::find(image).expect("the image is built");
    let mut spec = IcSpec::new(Program::parse(image.bytes).expect("parses"));
    spec.args = args.iter().map(|a| a.as_bytes().to_vec()).collect();
    spec.timeout = Some(Duration::from_secs(30));
    spec.virtio = device;
    spec
}

fn run(kind: &str, spec: IcSpec) -> (RunOutcome, String, String) {
    let mut ic = Registry::builtin()
        .resolve(kind)
        .unwrap()
        .create(spec)
        .expect("create");
    let (io, out, err) = GuestIo::capture(Vec::new());
    let outcome = ic.run(io).expect("run");
    (
        outcome,
        String::from_utf8_lossy(&out.contents()).into_owned(),
        String::from_utf8_lossy(&err.contents()).into_owned(),
    )
}

/// A host thread answering every message with its bytes plus one.
fn echo_plus_one(mut end: RingChannel) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut served = 0;
        while end.recv(&mut buf).is_ok() {
            for b in &mut buf {
                *b = b.wrapping_add(1);
            }
            if end.send(&buf).is_err() {
                break;
            }
            served += 1;
        }
        served
    })
}

#[test]
fn vm_ics_call_a_host_thread_through_the_device() {
    if !kvm_available() {
        return;
    }
    for kind in ["vm", "virtine"] {
        for (calls, size) in [(3000, "8"), (50, "4096"), (5, "65536"), (3, "0")] {
            let (host, device_end) = RingChannel::pair(64 << 10, Notify::Futex).unwrap();
            let server = echo_plus_one(host);
            let device = VirtioChannel::new(Box::new(device_end)).unwrap();
            let (outcome, _, err) = run(
                kind,
                spec(
                    "chan-c",
                    &["chan", "call", &calls.to_string(), size],
                    Some(device),
                ),
            );
            assert_eq!(outcome.exit, GuestExit::Exited(0), "{kind} {size}: {err}");
            assert_eq!(server.join().unwrap(), calls as usize);
        }
    }
}

#[test]
fn a_host_end_that_goes_away_mid_call_fails_the_call() {
    if !kvm_available() {
        return;
    }
    let (mut host, device_end) = RingChannel::pair(64 << 10, Notify::Poll).unwrap();
    let callee = std::thread::spawn(move || {
        let mut buf = Vec::new();
        host.recv(&mut buf).unwrap();
        buf.len()
    });
    let t = Instant::now();
    let device = VirtioChannel::new(Box::new(device_end)).unwrap();
    let (outcome, _, err) = run(
        "vm",
        spec("chan-c", &["chan", "call", "5", "8"], Some(device)),
    );
    assert_eq!(callee.join().unwrap(), 8);
    assert_eq!(outcome.exit, GuestExit::Exited(1), "{err}");
    assert!(err.contains("call 0 returned -32"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn a_driver_pointing_the_device_at_the_page_tables_is_refused() {
    if !kvm_available() {
        return;
    }
    let (_host, device_end) = RingChannel::pair(4096, Notify::Poll).unwrap();
    let device = VirtioChannel::new(Box::new(device_end)).unwrap();
    let (outcome, out, err) = run(
        "vm",
        spec("faults-c", &["faults", "virtio-evil"], Some(device)),
    );
    // The guest still runs at CPL3 with its page tables intact, and the
    // device reports DEVICE_NEEDS_RESET.
    assert_eq!(outcome.exit, GuestExit::Exited(0), "{err}");
    let status = u32::from_str_radix(out.trim().trim_start_matches("status="), 16).unwrap();
    assert_ne!(status & 0x40, 0, "{out}");
}

#[test]
fn an_avail_index_a_queue_ahead_fails_the_device() {
    if !kvm_available() {
        return;
    }
    let (_host_end, device_end) = RingChannel::pair(64 << 10, Notify::Poll).unwrap();
    let device = VirtioChannel::new(Box::new(device_end)).unwrap();
    let (outcome, out, err) = run(
        "vm",
        spec("faults-c", &["faults", "virtio-ahead"], Some(device)),
    );
    // Before the fix the device stalled silently: status stayed 0xf.
    assert_eq!(outcome.exit, GuestExit::Exited(0), "{err}");
    let status = u32::from_str_radix(out.trim().trim_start_matches("status="), 16).unwrap();
    assert_ne!(status & 0x40, 0, "{out}");
}

#[test]
fn only_vm_ics_take_a_device() {
    let registry = Registry::with_process_helper(Some(xos_vmm::icf::process::Helper {
        program: env!("CARGO_BIN_EXE_xos-vmm").into(),
        args: vec!["__process-ic".into()],
    }));
    for kind in ["thread", "process"] {
        let (_a, b) = RingChannel::pair(4096, Notify::Poll).unwrap();
        let device = VirtioChannel::new(Box::new(b)).unwrap();
        let e = registry
            .resolve(kind)
            .unwrap()
            .create(spec("chan-c", &["chan", "serve"], Some(device)))
            .err()
            .expect("refused");
        assert!(matches!(e, IcfError::Unsupported { .. }), "{kind}: {e}");
        assert!(e.to_string().contains("virtio device"), "{e}");
    }
}

#[test]
fn a_host_thread_calls_vm_ics_serving_through_the_device() {
    if !kvm_available() {
        return;
    }
    for kind in ["vm", "virtine"] {
        let (mut host, device_end) = RingChannel::pair(64 << 10, Notify::Futex).unwrap();
        let device = VirtioChannel::new(Box::new(device_end)).unwrap();
        let server =
            std::thread::spawn(move || run(kind, spec("chan-c", &["chan", "serve"], Some(device))));
        let mut reply = Vec::new();
        for i in 0..3000u32 {
            host.call(&i.to_le_bytes(), &mut reply)
                .unwrap_or_else(|e| panic!("{kind}: call {i}: {e}"));
            let expect: Vec<u8> = i.to_le_bytes().iter().map(|b| b.wrapping_add(1)).collect();
            assert_eq!(reply, expect, "{kind}: call {i}");
        }
        // Closing the host end ends the guest's serve loop (EPIPE).
        drop(host);
        let (served, _, err) = server.join().unwrap();
        assert_eq!(served.exit, GuestExit::Exited(0), "{kind}: {err}");
    }
}

#[test]
fn two_vms_call_each_other_through_two_devices() {
    if !kvm_available() {
        return;
    }
    for (caller, callee) in [("vm", "vm"), ("virtine", "virtine"), ("virtine", "vm")] {
        let (a, b) = RingChannel::pair(64 << 10, Notify::Futex).unwrap();
        let serving = VirtioChannel::new(Box::new(b)).unwrap();
        let server = std::thread::spawn(move || {
            run(callee, spec("chan-c", &["chan", "serve"], Some(serving)))
        });
        let calling = VirtioChannel::new(Box::new(a)).unwrap();
        let t = Instant::now();
        let (outcome, _, err) = run(
            caller,
            spec("chan-c", &["chan", "call", "1000", "4096"], Some(calling)),
        );
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        assert_eq!(outcome.exit, GuestExit::Exited(0), "{caller}: {err}");
        // The caller's IC (and its device) is gone: the server sees EPIPE
        // and ends.
        let (served, _, err) = server.join().unwrap();
        assert_eq!(served.exit, GuestExit::Exited(0), "{callee}: {err}");
    }
}

/// A guest that works between calls finds the device thread asleep and
/// must notify it (`QueueNotify`); that write is taken by KVM's ioeventfd
/// in the kernel: it never costs an exit to the monitor.
#[test]
fn notifies_reach_the_device_through_kvm_not_the_monitor() {
    if !kvm_available() {
        return;
    }
    for kind in ["vm", "virtine"] {
        let (host, device_end) = RingChannel::pair(64 << 10, Notify::Futex).unwrap();
        let server = echo_plus_one(host);
        let device = VirtioChannel::new(Box::new(device_end)).unwrap();
        // ~1-10 ms of `pause` before each call: far past the device's
        // 250 us of polling.
        let (outcome, _, err) = run(
            kind,
            spec(
                "chan-c",
                &["chan", "slow-call", "10", "8", "200000"],
                Some(device.clone()),
            ),
        );
        assert_eq!(outcome.exit, GuestExit::Exited(0), "{kind}: {err}");
        let notifies = device.notifies();
        assert!(
            notifies.by_ioeventfd > 0,
            "{kind}: the guest never had to notify the device: {notifies:?}"
        );
        assert_eq!(notifies.by_exit, 0, "{kind}: {notifies:?}");
        drop(device);
        assert_eq!(server.join().unwrap(), 10);
    }
}
