//! `mutate`: an execution flow carried from one kind of IC to another at
//! safe points, through the process pivot, keeping its memory and
//! registers, while a peer keeps talking to it over its channel window.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::kvm_available;
use xos_vmm::icf::channel::ring::{Notify, RingChannel};
use xos_vmm::icf::channel::Channel;
use xos_vmm::icf::process::Helper;
use xos_vmm::icf::{IcSpec, IcfError, IsolationContext, Registry};
use xos_vmm::vmm::{GuestExit, GuestIo, Program};

fn registry() -> Registry {
    Registry::with_process_helper(Some(Helper {
        program: env!("CARGO_BIN_EXE_xos-vmm").into(),
        args: vec!["__process-ic".into()],
    }))
}

fn counter_spec(n: u64, end: RingChannel) -> IcSpec {
    let image = xos_images::find("counter-c").expect("the counter-c image is built");
    let mut spec = IcSpec::new(Program::parse(image.bytes).expect("counter-c parses"));
    spec.args = vec![b"counter".to_vec(), n.to_string().into_bytes()];
    spec.timeout = Some(Duration::from_secs(30));
    spec.window = Some(end.into_guest_end().expect("the ring fits a window"));
    spec
}

/// Runs the counter EF through the kinds in `path`, asking for a move once
/// the messages numbered in `moves_at` (one fewer than `path`) are reached,
/// while a host thread sends it `n` messages and checks every reply: the
/// count goes on exactly, and the EF knows how often it moved.
fn count_across(path: &[&str], moves_at: &[u64], n: u64, notify: Notify) {
    assert_eq!(path.len(), moves_at.len() + 1);
    let registry = registry();
    let (mut peer, end) = RingChannel::pair(4096, notify).unwrap();
    let factory = registry.resolve(path[0]).expect("usable ICF");
    let mut ic: Box<dyn IsolationContext> = factory.create(counter_spec(n, end)).expect("create");
    // Which leg of the path runs now, and its handle.
    let current = Arc::new(Mutex::new((0usize, ic.interrupter())));

    let leg = Arc::clone(&current);
    let thresholds = moves_at.to_vec();
    let talker = std::thread::spawn(move || {
        let mut reply = Vec::new();
        let (mut requested, mut moved_seen) = (0usize, 0u64);
        for i in 1..=n {
            // Once past its threshold, ask the IC of the current leg to stop
            // at its next safe point; the EF then moves after some reply.
            if requested < thresholds.len()
                && i >= thresholds[requested]
                && moved_seen == requested as u64
            {
                loop {
                    let (running, handle) = &*leg.lock().unwrap();
                    if *running == requested {
                        handle.request_safe_point();
                        break;
                    }
                }
                requested += 1;
            }
            peer.send(&i.to_le_bytes()).unwrap();
            peer.recv(&mut reply).unwrap();
            assert_eq!(reply.len(), 16, "reply {i}");
            let count = u64::from_le_bytes(reply[..8].try_into().unwrap());
            let moved = u64::from_le_bytes(reply[8..].try_into().unwrap());
            // Exact: not one message lost or counted twice, whatever IC
            // the EF is in.
            assert_eq!(count, i, "the count skipped or repeated");
            // Moves happen one at a time, and only when asked for.
            assert!(
                moved == moved_seen || (moved == moved_seen + 1 && moved <= requested as u64),
                "reply {i}: {moved} moves after {moved_seen}, {requested} requested"
            );
            moved_seen = moved;
        }
        assert_eq!(
            moved_seen,
            thresholds.len() as u64,
            "not every requested move happened within {n} messages"
        );
    });

    for (k, next) in path.iter().enumerate().skip(1) {
        let (io, _out, err) = GuestIo::capture(Vec::new());
        let outcome = ic.run(io).expect("run");
        assert_eq!(
            outcome.exit,
            GuestExit::SafePoint,
            "leg {} in a {} IC: {}",
            k - 1,
            path[k - 1],
            String::from_utf8_lossy(&err.contents())
        );
        ic = registry.mutate(ic, next).expect("mutate");
        assert_eq!(ic.kind(), *next);
        *current.lock().unwrap() = (k, ic.interrupter());
    }
    let (io, out, err) = GuestIo::capture(Vec::new());
    let outcome = ic.run(io).expect("run");
    assert_eq!(
        outcome.exit,
        GuestExit::Exited(0),
        "last leg in a {} IC: {}",
        path[path.len() - 1],
        String::from_utf8_lossy(&err.contents())
    );
    assert_eq!(
        String::from_utf8_lossy(&out.contents()),
        format!("counted {n}, moved {} times\n", moves_at.len())
    );
    talker.join().expect("every reply was right");
}

#[test]
fn a_counter_keeps_its_count_from_virtine_to_process_to_thread_to_virtine() {
    if !kvm_available() {
        return;
    }
    count_across(
        &["virtine", "process", "thread", "virtine"],
        &[100, 200, 300],
        20_000,
        Notify::Poll,
    );
}

#[test]
fn every_kind_converts_to_and_from_every_other() {
    if !kvm_available() {
        return;
    }
    count_across(
        &[
            "thread", "process", "virtine", "thread", "virtine", "process", "process", "thread",
        ],
        &[10, 20, 30, 40, 50, 60, 70],
        20_000,
        Notify::Futex,
    );
}

#[test]
fn a_counter_moves_into_and_out_of_ept_views() {
    if !kvm_available() {
        return;
    }
    count_across(
        &[
            "virtine", "ept-view", "process", "ept-view", "thread", "ept-view", "vm", "ept-view",
            "ept-view",
        ],
        &[10, 20, 30, 40, 50, 60, 70, 80],
        20_000,
        Notify::Poll,
    );
}

#[test]
fn mutate_needs_a_safe_point_and_a_known_kind() {
    if !kvm_available() {
        return;
    }
    let registry = registry();
    for kind in ["virtine", "process", "thread", "ept-view"] {
        // Runs to its end: no safe point was requested.
        let (mut peer, end) = RingChannel::pair(4096, Notify::Poll).unwrap();
        let talker = std::thread::spawn(move || {
            let mut reply = Vec::new();
            peer.send(b"x").unwrap();
            peer.recv(&mut reply).unwrap();
        });
        let mut ic = registry
            .resolve(kind)
            .unwrap()
            .create(counter_spec(1, end))
            .unwrap();
        let (io, _, _) = GuestIo::capture(Vec::new());
        assert_eq!(ic.run(io).unwrap().exit, GuestExit::Exited(0), "{kind}");
        talker.join().unwrap();
        let target = if kind == "virtine" {
            "thread"
        } else {
            "virtine"
        };
        match registry.mutate(ic, target) {
            Err(e) => assert!(
                matches!(
                    &e,
                    xos_vmm::icf::registry::MutateError::Icf(IcfError::NotAtSafePoint { .. })
                ),
                "{kind}: {e}"
            ),
            Ok(_) => panic!("{kind}: mutated without a safe point"),
        }
    }
    // A kind nobody registered.
    let (_peer, end) = RingChannel::pair(4096, Notify::Poll).unwrap();
    let ic = registry
        .resolve("virtine")
        .unwrap()
        .create(counter_spec(1, end))
        .unwrap();
    let e = registry.mutate(ic, "enclave").err().expect("unknown kind");
    assert!(e.to_string().contains("'enclave'"), "{e}");
}
