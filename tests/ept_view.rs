//! The `ept-view` ICF: ICs as EPT views of one VM, on this machine's
//! fallback (memory-slot switching). The same images run as in the other
//! ICFs; a connected pair calls through the trampoline; a callee that
//! fails or cheats fails alone; nothing of one view is visible in another.

mod support;

use std::time::{Duration, Instant};
use support::{kvm_available, text, xos};
use xos_vmm::icf::ept_view::EptViewFactory;
use xos_vmm::icf::{IcSpec, IcfError, IsolationContext, IsolationContextFactory, Registry};
use xos_vmm::vmm::view::Switching;
use xos_vmm::vmm::{Fault, GuestExit, GuestIo, Program};

/// The ways views switch that this machine runs: the memory-slot fallback,
/// and the VMFUNC trampoline and rules with each VMFUNC emulated by the
/// monitor (real VMFUNC runs in the Bochs stage: `selftest ept-view`).
const MODES: [Switching; 2] = [Switching::Memslot, Switching::EmulatedVmfunc];

fn pair(
    mode: Switching,
    caller: IcSpec,
    callee: IcSpec,
) -> (Box<dyn IsolationContext>, Box<dyn IsolationContext>) {
    EptViewFactory
        .create_pair_switching(caller, callee, Some(mode))
        .expect("a pair")
}

fn spec(image: &str, args: &[&str]) -> IcSpec {
    let image = xos_images::find(image).expect("the image is built");
    let mut spec = IcSpec::new(Program::parse(image.bytes).expect("parses"));
    spec.args = args.iter().map(|a| a.as_bytes().to_vec()).collect();
    spec.timeout = Some(Duration::from_secs(30));
    spec
}

fn run(ic: &mut Box<dyn IsolationContext>) -> (GuestExit, String, String) {
    let (io, out, err) = GuestIo::capture(Vec::new());
    let exit = ic.run(io).expect("runs").exit;
    (exit, text(&out.contents()), text(&err.contents()))
}

/// Runs the callee on a thread and the caller here; the caller's IC is
/// dropped when it ends (which ends the callee's service).
fn call_pair(
    mode: Switching,
    caller: IcSpec,
    callee: IcSpec,
) -> ((GuestExit, String, String), (GuestExit, String, String)) {
    let (mut a, mut b) = pair(mode, caller, callee);
    let served = std::thread::spawn(move || run(&mut b));
    let called = run(&mut a);
    drop(a);
    (called, served.join().expect("the callee's thread"))
}

#[test]
fn the_same_images_run_in_an_ept_view_ic() {
    if !kvm_available() {
        return;
    }
    for image in ["@hello-c", "@hello-rs"] {
        let out = xos(&["run", "--icf", "ept-view", image, "--", "a", "b c"], b"");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hello from a virtine: a b c\n");
    }
    let out = xos(&["run", "--icf", "ept-view", "@sum-c"], b"1 2 3\n-4");
    assert_eq!(text(&out.stdout), "2\n");
    let out = xos(
        &["run", "--icf", "ept-view", "@faults-c", "--", "exit", "7"],
        b"",
    );
    assert_eq!(out.status.code(), Some(7));
    let out = xos(
        &["run", "--icf", "ept-view", "@faults-c", "--", "null"],
        b"",
    );
    assert_eq!(out.status.code(), Some(139), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("null pointer"),
        "{}",
        text(&out.stderr)
    );
    let input: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 255) as u8).collect();
    let out = xos(&["run", "--icf", "ept-view", "@echo-c"], &input);
    assert!(out.stdout == input, "echo differs");
    let t = Instant::now();
    let out = xos(
        &[
            "run",
            "--icf",
            "ept-view",
            "--timeout",
            "300ms",
            "@faults-c",
            "--",
            "loop",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn icfs_says_which_mode_and_why() {
    let out = xos(&["icfs"], b"");
    let listing = text(&out.stdout);
    assert!(listing.contains("ept-view"), "{listing}");
    assert!(listing.contains("mode: fallback"), "{listing}");
    assert!(listing.contains("because"), "{listing}");
}

#[test]
fn a_pair_calls_through_the_trampoline_with_every_reply_right() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        for size in ["1", "100", "65536"] {
            let ((exit, _, err), (served, _, serr)) = call_pair(
                mode,
                spec("chan-c", &["chan", "call", "300", size]),
                spec("chan-c", &["chan", "serve"]),
            );
            assert_eq!(exit, GuestExit::Exited(0), "{size}: {err}");
            assert_eq!(served, GuestExit::Exited(0), "{size}: {serr}");
        }
        // Too large for the message area: a clean error in the caller.
        let ((exit, _, err), (served, _, _)) = call_pair(
            mode,
            spec("chan-c", &["chan", "call", "1", "65537"]),
            spec("chan-c", &["chan", "serve"]),
        );
        assert_eq!(exit, GuestExit::Exited(2), "{err}");
        assert_eq!(served, GuestExit::Exited(0));
    }
}

/// A callee's own time limit holds also when its caller started first
/// (and so was resumed by the view host when the callee parked): the
/// monitor reports it (not the owner's fallback after a grace period),
/// and the busy caller's calls then fail.
#[test]
fn a_stopped_callee_stops_serving_a_caller_that_started_first() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        let mut callee = spec("chan-c", &["chan", "serve"]);
        callee.timeout = Some(Duration::from_millis(300));
        let mut caller = spec("chan-c", &["chan", "call", "1000000", "8"]);
        caller.timeout = Some(Duration::from_secs(20));
        let (mut a, mut b) = pair(mode, caller, callee);
        let caller = std::thread::spawn(move || {
            let t = Instant::now();
            let r = run(&mut a);
            drop(a);
            (r, t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let (served, _, _) = run(&mut b);
        let took = t.elapsed();
        match &served {
            GuestExit::TimedOut { regs, .. } => {
                assert_ne!(regs.rip, 0, "{mode:?}: a fallback report")
            }
            other => panic!("{mode:?}: {other:?}"),
        }
        assert!(took < Duration::from_millis(1500), "{mode:?}: {took:?}");
        let ((exit, _, err), caller_took) = caller.join().unwrap();
        assert_eq!(exit, GuestExit::Exited(1), "{mode:?}: {err}");
        assert!(err.contains("returned -32"), "{mode:?}: {err}");
        assert!(
            caller_took < Duration::from_secs(5),
            "{mode:?}: {caller_took:?}"
        );
    }
}

/// The Rust runtime's `xos_guest::view` speaks the same trampoline as the
/// C runtime: Rust and C views call each other, either way round.
#[test]
fn rust_and_c_views_call_each_other() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        for (caller, callee) in [
            (
                spec("view-rs", &["view", "call", "50", "100"]),
                spec("chan-c", &["chan", "serve"]),
            ),
            (
                spec("chan-c", &["chan", "call", "50", "100"]),
                spec("view-rs", &["view", "serve"]),
            ),
            (
                spec("view-rs", &["view", "call", "20", "65536"]),
                spec("view-rs", &["view", "serve"]),
            ),
        ] {
            let ((exit, _, err), (served, _, serr)) = call_pair(mode, caller, callee);
            assert_eq!(exit, GuestExit::Exited(0), "{mode:?}: {err}");
            assert_eq!(served, GuestExit::Exited(0), "{mode:?}: {serr}");
        }
        // Outside a pair the calls say so.
        let f = EptViewFactory;
        let mut lone = f.create(spec("view-rs", &["view", "serve"])).unwrap();
        let (exit, _, err) = run(&mut lone);
        assert_eq!(exit, GuestExit::Exited(2), "{err}");
        assert!(err.contains("usage"), "{err}");
    }
}

#[test]
fn a_caller_that_starts_first_waits_for_its_callee() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        let (mut a, mut b) = pair(
            mode,
            spec("chan-c", &["chan", "call", "50", "8"]),
            spec("chan-c", &["chan", "serve"]),
        );
        let caller = std::thread::spawn(move || {
            let r = run(&mut a);
            drop(a);
            r
        });
        std::thread::sleep(Duration::from_millis(300));
        let served = run(&mut b);
        let (exit, _, err) = caller.join().unwrap();
        assert_eq!(exit, GuestExit::Exited(0), "{err}");
        assert_eq!(served.0, GuestExit::Exited(0), "{}", served.2);
    }
}

#[test]
fn nothing_of_the_callee_is_visible_to_the_caller() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        let ((exit, out, err), (served, sout, _)) = call_pair(
            mode,
            spec("faults-c", &["faults", "view-peek"]),
            spec("faults-c", &["faults", "view-secret"]),
        );
        assert_eq!(exit, GuestExit::Exited(0), "{err}");
        // Same image, same address: the caller sees its own (clean) buffer,
        // and only the reply crosses.
        assert_eq!(out, "peek: reply=ok mine=clean\n");
        assert_eq!(served, GuestExit::Exited(0));
        assert_eq!(sout, "serve=-32\n");
    }
}

#[test]
fn a_callee_that_crashes_or_cheats_inside_a_call_fails_alone() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        for how_it_fails in ["view-crash", "view-print"] {
            let ((exit, out, err), (served, _, _)) = call_pair(
                mode,
                spec("faults-c", &["faults", "view-call"]),
                spec("faults-c", &["faults", how_it_fails]),
            );
            // The caller's call returns EPIPE and the caller goes on.
            assert_eq!(exit, GuestExit::Exited(0), "{mode:?} {how_it_fails}: {err}");
            assert_eq!(out, "call=-32\n", "{mode:?} {how_it_fails}");
            match served {
                GuestExit::Faulted {
                    fault: Fault::ViewProtocol(how),
                    ..
                } => assert!(
                    how.contains("inside a call"),
                    "{mode:?} {how_it_fails}: {how}"
                ),
                other => panic!("{mode:?} {how_it_fails}: the callee ended with {other:?}"),
            }
        }
    }
}

#[test]
fn a_switch_from_outside_the_trampoline_is_a_fault() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        let ((exit, out, _), _) = call_pair(
            mode,
            spec("faults-c", &["faults", "view-switch", "1"]),
            spec("chan-c", &["chan", "serve"]),
        );
        assert_eq!(out, "", "the guest went on after its switch");
        match exit {
            GuestExit::Faulted {
                fault: Fault::ViewProtocol(how),
                ..
            } => assert!(how.contains("outside the trampoline"), "{how}"),
            other => panic!("{other:?}"),
        }
        // A view with no peer has nothing to call.
        let f = Registry::builtin().resolve("ept-view").unwrap();
        let mut lone = f
            .create(spec("faults-c", &["faults", "view-call"]))
            .unwrap();
        let (exit, out, _) = run(&mut lone);
        assert_eq!(exit, GuestExit::Exited(0));
        assert_eq!(out, "call=-22\n");
    }
}

#[test]
fn a_callee_that_ends_without_serving_fails_the_waiting_call() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        let ((exit, out, err), (served, _, _)) = call_pair(
            mode,
            spec("faults-c", &["faults", "view-call"]),
            spec("faults-c", &["faults", "exit", "3"]),
        );
        assert_eq!(served, GuestExit::Exited(3));
        assert_eq!(exit, GuestExit::Exited(0), "{err}");
        assert_eq!(out, "call=-32\n");
    }
}

#[test]
fn devices_and_mixed_sizes_are_refused() {
    let f = EptViewFactory;
    let (_a, b) = xos_vmm::icf::channel::ring::RingChannel::pair(
        4096,
        xos_vmm::icf::channel::ring::Notify::Poll,
    )
    .unwrap();
    let mut s = spec("chan-c", &["chan", "serve"]);
    s.virtio = Some(xos_vmm::icf::channel::virtio::VirtioChannel::new(Box::new(b)).unwrap());
    let e = f.create(s).err().expect("refused");
    assert!(matches!(e, IcfError::Unsupported { .. }), "{e}");
    let mut big = spec("chan-c", &["chan", "serve"]);
    big.mem_size = 64 << 20;
    let e = f
        .create_pair(spec("chan-c", &["chan", "call", "1", "8"]), big)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("different memory sizes"), "{e}");
}

#[test]
fn a_caller_cannot_hand_its_callee_a_dirty_direction_flag_or_mxcsr() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        // The caller skips the trampoline's own scrub and switches with DF set
        // and every SSE exception unmasked: the callee still starts clean.
        let ((exit, out, err), (served, sout, _)) = call_pair(
            mode,
            spec("faults-c", &["faults", "view-dirty"]),
            spec("faults-c", &["faults", "view-flags"]),
        );
        assert_eq!(exit, GuestExit::Exited(0), "{err}");
        assert_eq!(out, "reply: df=0 mxcsr=1f80\n");
        assert_eq!(served, GuestExit::Exited(0));
        assert_eq!(sout, "serve=-32\n");
    }
}

#[test]
fn a_callee_that_failed_is_not_entered_again() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        let ((exit, out, err), (served, _, _)) = call_pair(
            mode,
            spec("faults-c", &["faults", "view-call2"]),
            spec("faults-c", &["faults", "view-crash-once"]),
        );
        assert_eq!(exit, GuestExit::Exited(0), "{err}");
        assert_eq!(out, "first=-32 second=-32\n");
        assert!(matches!(served, GuestExit::Faulted { .. }), "{served:?}");
    }
}

#[test]
fn a_caller_stopped_inside_a_call_reports_only_its_own_state() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        let mut caller = spec("faults-c", &["faults", "view-call"]);
        caller.timeout = Some(Duration::from_millis(500));
        let ((exit, out, err), (served, sout, _)) =
            call_pair(mode, caller, spec("faults-c", &["faults", "view-spin"]));
        match &exit {
            GuestExit::TimedOut { regs, .. } => {
                // The caller's registers (its call returning), not the
                // callee's spinning handler.
                assert!(
                    (0x2_2000u64..0x2_2000u64 + 4096).contains(&regs.rip),
                    "rip {:#x}",
                    regs.rip
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !out.contains("CALLEE") && !err.contains("CALLEE"),
            "{out} {err}"
        );
        assert!(
            !sout.contains("CALLEE"),
            "the callee's buffered line: {sout}"
        );
        // Interrupted mid-call through no fault of its own: killed, not blamed.
        assert_eq!(served, GuestExit::Killed);
    }
}

#[test]
fn a_busy_caller_cannot_keep_a_stopped_callee_serving() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        let mut callee = spec("chan-c", &["chan", "serve"]);
        callee.timeout = Some(Duration::from_millis(300));
        let (mut a, mut b) = pair(
            mode,
            spec("chan-c", &["chan", "call", "1000000", "8"]),
            callee,
        );
        let caller = std::thread::spawn(move || {
            let r = run(&mut a);
            drop(a);
            r
        });
        let t = Instant::now();
        let (served, _, _) = run(&mut b);
        let took = t.elapsed();
        // Its own limit, reported by the monitor (not the owner's fallback
        // after a grace period), while the caller still wants to call.
        match &served {
            GuestExit::TimedOut { regs, .. } => assert_ne!(regs.rip, 0, "a fallback report"),
            other => panic!("{other:?}"),
        }
        assert!(took < Duration::from_millis(1500), "{took:?}");
        let (exit, _, err) = caller.join().unwrap();
        assert_eq!(exit, GuestExit::Exited(1), "{err}");
        assert!(err.contains("returned -32"), "{err}");
    }
}

#[test]
fn a_caller_cannot_get_its_callee_blamed() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        // A caller that lies about its own view number still gets its reply,
        // and the callee goes on.
        let ((exit, out, err), (served, sout, _)) = call_pair(
            mode,
            spec("faults-c", &["faults", "view-liar"]),
            spec("faults-c", &["faults", "view-secret"]),
        );
        assert_eq!(exit, GuestExit::Exited(0), "{err}");
        assert_eq!(out, "call=2\n");
        assert_eq!(served, GuestExit::Exited(0));
        assert_eq!(sout, "serve=-32\n");
        let ((exit, out, err), (served, _, _)) = call_pair(
            mode,
            spec("faults-c", &["faults", "view-biglen"]),
            spec("chan-c", &["chan", "serve"]),
        );
        if mode == Switching::Memslot {
            // A length past the message area is the caller's fault, seen
            // by the monitor before the callee runs.
            assert!(
                matches!(&exit, GuestExit::Faulted { fault: Fault::ViewProtocol(how), .. } if how.contains("bytes")),
                "{exit:?}"
            );
        } else {
            // No monitor sees a VMFUNC call: the callee's landing clamps
            // the length to the message area, and the call goes through.
            assert_eq!(exit, GuestExit::Exited(0), "{err}");
            assert_eq!(out, "call=65536\n");
        }
        assert_eq!(served, GuestExit::Exited(0));
    }
}

/// A caller that jumps to the trampoline's way-back switch while in no
/// call, aiming at its peer: refused. On the fallback the monitor sees a
/// switch from the wrong place and the caller alone fails; with VMFUNC
/// the callee's landing finds itself in no call and both end (no monitor
/// saw who switched).
#[test]
fn a_jump_to_the_way_back_outside_a_call_is_refused() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        let (mut a, mut b) = pair(
            mode,
            spec("faults-c", &["faults", "view-jump-return"]),
            spec("faults-c", &["faults", "view-secret"]),
        );
        let served = std::thread::spawn(move || {
            let (io, out, _) = GuestIo::capture(Vec::new());
            (b.run(io), text(&out.contents()))
        });
        let (exit, out, _) = run(&mut a);
        drop(a);
        let (served, sout) = served.join().expect("the callee's thread");
        assert_eq!(out, "", "{mode:?}: the caller went on");
        match &exit {
            GuestExit::Faulted {
                fault: Fault::ViewProtocol(how),
                regs,
                ..
            } => {
                if mode == Switching::Memslot {
                    assert!(how.contains("outside the trampoline"), "{how}");
                } else {
                    assert!(how.contains("both end"), "{how}");
                    // Nothing of either side's registers is reported.
                    assert_eq!(regs.rip, 0, "{how}");
                }
            }
            other => panic!("{mode:?}: {other:?}"),
        }
        assert!(!sout.contains("TOPSECRET"), "{sout}");
        match (mode, served) {
            (Switching::Memslot, Ok(o)) => assert_eq!(o.exit, GuestExit::Exited(0)),
            // Ended while serving, or before its run began.
            (_, Ok(o)) => assert!(
                matches!(&o.exit, GuestExit::Faulted { fault: Fault::ViewProtocol(how), .. } if how.contains("both end")),
                "{:?}",
                o.exit
            ),
            (_, Err(e)) => assert!(e.to_string().contains("both end"), "{mode:?}: {e}"),
        }
    }
}

/// A caller that jumps to the trampoline's own `VIEW_WAIT` while its
/// callee serves does not get the callee blamed: the call just goes again.
#[test]
fn a_caller_faking_a_bounce_gets_no_one_blamed() {
    if !kvm_available() {
        return;
    }
    let ((exit, out, err), (served, sout, _)) = call_pair(
        Switching::EmulatedVmfunc,
        spec("faults-c", &["faults", "view-fake-wait"]),
        spec("faults-c", &["faults", "view-secret"]),
    );
    assert_eq!(exit, GuestExit::Exited(0), "{err}");
    assert_eq!(out, "first=2 fake=2\n");
    assert_eq!(served, GuestExit::Exited(0));
    assert_eq!(sout, "serve=-32\n");
}

/// The gate is the monitor's: a view cannot open its own (it is in its
/// copy of the trampoline page, read-only to it), so a view that never
/// served, or ended, takes no call.
#[test]
fn a_view_cannot_open_its_own_gate() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        let (mut a, mut b) = pair(
            mode,
            spec("faults-c", &["faults", "view-call"]),
            spec("faults-c", &["faults", "view-reopen"]),
        );
        let (served, sout, _) = run(&mut b);
        assert!(
            matches!(&served, GuestExit::Faulted { fault: Fault::Exception(e), .. } if e.vector == 14),
            "{mode:?}: {served:?}"
        );
        assert_eq!(sout, "");
        let (exit, out, err) = run(&mut a);
        assert_eq!(exit, GuestExit::Exited(0), "{mode:?}: {err}");
        assert_eq!(out, "call=-32\n", "{mode:?}");
    }
}

/// A caller whose run ended (here by its time limit, possibly inside its
/// trampoline) takes no more entries: its callee, jumping to the way back
/// as if returning, cannot resume the caller's code and read what it would
/// have sent next.
#[test]
fn an_ended_caller_cannot_be_resumed_by_its_callee() {
    if !kvm_available() {
        return;
    }
    for trial in 0..8 {
        let mut caller = spec("faults-c", &["faults", "view-tagged", "100000000"]);
        caller.timeout = Some(Duration::from_millis(150));
        let (mut a, mut b) = pair(
            Switching::EmulatedVmfunc,
            caller,
            spec("faults-c", &["faults", "view-zombie"]),
        );
        let served = std::thread::spawn(move || {
            let (io, out, _) = GuestIo::capture(Vec::new());
            (b.run(io), text(&out.contents()))
        });
        let (exit, _, _) = run(&mut a);
        drop(a);
        let (served, sout) = served.join().expect("the callee's thread");
        assert!(
            matches!(exit, GuestExit::TimedOut { .. }),
            "{trial}: {exit:?}"
        );
        assert!(!sout.contains("area=REQ"), "{trial}: {sout}");
        let served = served.map(|o| o.exit).map_err(|e| e.to_string());
        // Killed when the caller's limit struck inside a call, else ended
        // at its jump.
        assert!(
            matches!(&served, Ok(GuestExit::Killed))
                || matches!(&served, Ok(GuestExit::Faulted { fault: Fault::ViewProtocol(how), .. }) if how.contains("both end")),
            "{trial}: {served:?} {sout}"
        );
    }
}

/// A caller that switches to view 0 / EPTP-list entry 0 from the
/// trampoline: on the fallback that is itself, not its peer (refused by the
/// monitor); with VMFUNC entry 0 is the base, which holds nothing of either
/// view, so its landing ends both.
#[test]
fn a_switch_to_the_base_entry_finds_nothing() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        let (mut a, mut b) = pair(
            mode,
            spec("faults-c", &["faults", "view-jump-base"]),
            spec("faults-c", &["faults", "view-secret"]),
        );
        let served = std::thread::spawn(move || {
            let (io, out, _) = GuestIo::capture(Vec::new());
            (b.run(io), text(&out.contents()))
        });
        let (exit, out, _) = run(&mut a);
        drop(a);
        let (_, sout) = served.join().expect("the callee's thread");
        assert_eq!(out, "", "{mode:?}: the caller went on");
        assert!(!sout.contains("TOPSECRET"), "{sout}");
        match &exit {
            GuestExit::Faulted {
                fault: Fault::ViewProtocol(how),
                ..
            } => {
                let expected = if mode == Switching::Memslot {
                    "not its peer"
                } else {
                    "base entry"
                };
                assert!(how.contains(expected), "{mode:?}: {how}");
            }
            other => panic!("{mode:?}: {other:?}"),
        }
    }
}

#[test]
fn a_caller_stopped_while_waiting_does_not_harm_its_callee() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        let mut caller = spec("chan-c", &["chan", "call", "5", "8"]);
        caller.timeout = Some(Duration::from_millis(300));
        let (mut a, mut b) = pair(mode, caller, spec("chan-c", &["chan", "serve"]));
        let (exit, _, _) = run(&mut a);
        assert!(matches!(exit, GuestExit::TimedOut { .. }), "{exit:?}");
        drop(a);
        // The callee starts serving only now: its caller is gone, so it ends
        // normally.
        let (served, _, err) = run(&mut b);
        assert_eq!(served, GuestExit::Exited(0), "{err}");
    }
}

#[test]
fn a_parked_server_is_stopped_by_its_own_time_limit() {
    if !kvm_available() {
        return;
    }
    for mode in MODES {
        let mut server = spec("chan-c", &["chan", "serve"]);
        server.timeout = Some(Duration::from_millis(300));
        let (a, mut b) = pair(mode, spec("chan-c", &["chan", "call", "1", "8"]), server);
        let t = Instant::now();
        let (exit, _, _) = run(&mut b);
        assert!(matches!(exit, GuestExit::TimedOut { .. }), "{exit:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        drop(a);
    }
}

#[test]
fn the_selftest_passes_here_as_in_bochs() {
    if !kvm_available() {
        return;
    }
    // As the Bochs stage runs it before the module (the fallback here),
    // and with the VMFUNC trampoline, VMFUNC emulated.
    for switching in ["auto", "emulated"] {
        let out = xos(&["selftest", "ept-view", "--switching", switching], b"");
        let tap = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{tap}{}", text(&out.stderr));
        assert!(!tap.contains("not ok"), "{tap}");
        assert!(tap.ends_with("1..12\n"), "{tap}");
    }
    // Without the module, asking for VMFUNC fails the pair checks clearly.
    let out = xos(&["selftest", "ept-view", "--switching", "vmfunc"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("/dev/xos-vmfunc"),
        "{}",
        text(&out.stdout)
    );
}

/// Only the monitor's trampoline may switch views: an image whose code
/// holds the bytes of VMFUNC is refused by the ept-view ICF (the same
/// image is fine as a virtine, where VMFUNC switches nothing).
#[test]
fn an_image_with_vmfunc_in_its_code_is_refused_as_a_view() {
    if !kvm_available() {
        return;
    }
    use xos_vmm::vmm::elf_writer::code_image;
    use xos_vmm::vmm::ImageError;
    // vmfunc; hlt
    let program = Program::parse(code_image(&[0x0f, 0x01, 0xd4, 0xf4])).expect("valid ELF");
    let registry = Registry::builtin();
    let err = registry
        .resolve("ept-view")
        .expect("ept-view")
        .create(IcSpec::new(program.clone()))
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            IcfError::Image(ImageError::Vmfunc {
                first: 0x10_0000,
                count: 1
            })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("0f 01 d4"), "{err}");
    let pair = EptViewFactory.create_pair(
        IcSpec::new(program.clone()),
        IcSpec::new(Program::parse(code_image(&[0xf4])).expect("valid")),
    );
    assert!(
        matches!(pair, Err(IcfError::Image(ImageError::Vmfunc { .. }))),
        "a pair with it is refused too"
    );
    registry
        .resolve("virtine")
        .expect("virtine")
        .create(IcSpec::new(program))
        .expect("a virtine may hold the bytes");
}
