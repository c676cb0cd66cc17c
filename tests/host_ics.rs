//! The process and thread ICFs run the same images as the virtine ICF, in a host
//! process or a thread of the monitor, with the same results: output, input, exit codes, faults,
//! time limits.

mod support;

use std::time::{Duration, Instant};
use support::{text, xos};
use xos_vmm::icf::process::Helper;
use xos_vmm::icf::Registry;
use xos_vmm::vmm::GuestExit;
use xos_vmm::Function;

fn run(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut all = vec!["run", "--icf", "process"];
    all.extend_from_slice(args);
    xos(&all, stdin)
}

#[test]
fn the_same_images_run_in_a_host_process() {
    for image in ["@hello-c", "@hello-rs"] {
        let out = run(&[image, "--", "a", "b c"], b"");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hello from a virtine: a b c\n");
    }
    for image in ["@sum-c", "@sum-rs"] {
        let out = run(&[image], b"1 2 3\n-4");
        assert_eq!(text(&out.stdout), "2\n");
    }
    let out = run(&["@faults-c", "--", "exit", "7"], b"");
    assert_eq!(out.status.code(), Some(7));
    let out = run(&["@faults-c", "--", "bigout"], b"");
    assert_eq!(out.stdout.len(), 300_001);
    let input: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 255) as u8).collect();
    let out = run(&["@echo-c"], &input);
    assert!(out.stdout == input, "echo differs");
}

#[test]
fn faults_and_time_limits_are_reported_like_virtines() {
    let out = run(&["@faults-c", "--", "null"], b"");
    assert_eq!(out.status.code(), Some(139));
    assert!(
        text(&out.stderr).contains("null pointer dereference"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["@faults-c", "--", "ud"], b"");
    assert_eq!(out.status.code(), Some(132));
    let out = run(&["@faults-c", "--", "div0"], b"");
    assert_eq!(out.status.code(), Some(136));
    let out = run(&["@faults-c", "--", "abort"], b"");
    assert_eq!(out.status.code(), Some(134));
    let start = Instant::now();
    let out = run(&["--timeout", "300ms", "@faults-c", "--", "loop"], b"");
    assert_eq!(out.status.code(), Some(124));
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn the_embedding_api_runs_process_ics_with_captured_io() {
    let registry = Registry::with_process_helper(Some(Helper {
        program: env!("CARGO_BIN_EXE_xos-vmm").into(),
        args: vec!["__process-ic".into()],
    }));
    let sum = xos_images::find("sum-c").expect("sum-c");
    let f = Function::from_elf(sum.bytes)
        .expect("image")
        .on(&registry, "process")
        .expect("process ICF available");
    for i in 0..5u64 {
        let r = f.call(format!("{i} {i} 1").as_bytes()).expect("call");
        assert_eq!(r.exit, GuestExit::Exited(0));
        assert_eq!(r.stdout, format!("{}\n", 2 * i + 1).into_bytes());
    }
    let faults = xos_images::find("faults-c").expect("faults-c");
    let looping = Function::from_elf(faults.bytes)
        .expect("image")
        .on(&registry, "process")
        .expect("process")
        .args(["faults", "loop"])
        .timeout(Duration::from_millis(200));
    let r = looping.call(b"").expect("call");
    assert!(matches!(r.exit, GuestExit::TimedOut { .. }), "{}", r.exit);
}

#[test]
fn without_a_helper_the_process_icf_says_why_it_is_unavailable() {
    let registry = Registry::builtin();
    let info = registry
        .get_icfs()
        .into_iter()
        .find(|i| i.name == "process")
        .expect("registered");
    match info.availability {
        xos_vmm::icf::Availability::Unavailable(reason) => {
            assert!(reason.contains("no process helper"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_same_images_run_in_a_thread_of_the_monitor() {
    for image in ["@hello-c", "@hello-rs"] {
        let out = xos(&["run", "--icf", "thread", image, "--", "x"], b"");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hello from a virtine: x\n");
    }
    let out = xos(&["run", "--icf", "thread", "@sum-rs"], b"40 2");
    assert_eq!(text(&out.stdout), "42\n");
    let out = xos(&["run", "--icf", "thread", "@faults-c", "--", "null"], b"");
    assert_eq!(out.status.code(), Some(139));
    assert!(text(&out.stderr).contains("null pointer dereference"));
    let out = xos(&["run", "--icf", "thread", "@faults-c", "--", "ud"], b"");
    assert_eq!(out.status.code(), Some(132));
    let start = Instant::now();
    let out = xos(
        &[
            "run",
            "--icf",
            "thread",
            "--timeout",
            "300ms",
            "@faults-c",
            "--",
            "loop",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(124));
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn thread_ics_run_one_at_a_time_and_keep_the_monitor_alive() {
    let registry = Registry::builtin();
    let faults = xos_images::find("faults-c").expect("faults-c");
    let f = Function::from_elf(faults.bytes)
        .expect("image")
        .on(&registry, "thread")
        .expect("thread ICF")
        .host_fn("twice", |input| Ok([input, input].concat()))
        .timeout(Duration::from_secs(5));
    // Host functions run in-process; a fault in one thread IC leaves the
    // monitor (this test process) running.
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let f = f.clone();
            std::thread::spawn(move || {
                let r = f
                    .clone()
                    .args(["faults", "hostcall", "twice", &format!("ab{i}")])
                    .call(b"")
                    .expect("call");
                assert_eq!(
                    String::from_utf8(r.stdout).unwrap(),
                    format!("ret=6 out=ab{i}ab{i}\n")
                );
                let r = f.clone().args(["faults", "null"]).call(b"").expect("call");
                assert_eq!(r.exit.exit_code(), 139, "{}", r.exit);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("caller");
    }
}

/// Host ICs map the image like a VM's page tables do (W^X): a guest that
/// writes code into its data and calls it faults instead of running it,
/// in every kind of IC. Without the protection the same program exits 7.
#[test]
fn code_written_into_data_does_not_run_in_any_kind() {
    use xos_vmm::vmm::elf_writer::code_image;
    let registry = Registry::with_process_helper(Some(Helper {
        program: env!("CARGO_BIN_EXE_xos-vmm").into(),
        args: vec!["__process-ic".into()],
    }));
    let mut code = vec![
        0xc6, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, 0xc3, // mov byte [0x200000], 0xc3 (ret)
        0xb8, 0x00, 0x00, 0x20, 0x00, // mov eax, 0x200000
        0xff, 0xd0, // call rax
        // mov qword [BootInfo.hypercall.args[0]], 7
        0x48, 0xc7, 0x04, 0x25,
    ];
    code.extend_from_slice(&(0x20000u32 + 144).to_le_bytes());
    code.extend_from_slice(&7u32.to_le_bytes());
    code.push(0xb8); // mov eax, EXIT
    code.extend_from_slice(&1u32.to_le_bytes());
    code.push(0xa3); // movabs [DOORBELL], eax
    code.extend_from_slice(&xos_abi::DOORBELL.to_le_bytes());
    let image = code_image(&code);
    let kinds: &[&str] = if support::kvm_available() {
        &["process", "thread", "virtine", "vm"]
    } else {
        &["process", "thread"]
    };
    for kind in kinds {
        let f = Function::from_elf(image.clone())
            .expect("image")
            .on(&registry, kind)
            .expect("ICF available");
        let r = f.call(b"").expect("call");
        assert!(
            matches!(r.exit, GuestExit::Faulted { .. }),
            "{kind}: the code written into data ran: {}",
            r.exit
        );
    }
}

/// The same from C: a buffer filled with a `ret` and called, and a store
/// over `main`, fault with a page fault in every kind of IC.
#[test]
fn c_guests_cannot_run_their_data_or_write_their_code_in_any_kind() {
    let registry = Registry::with_process_helper(Some(Helper {
        program: env!("CARGO_BIN_EXE_xos-vmm").into(),
        args: vec!["__process-ic".into()],
    }));
    let faults = xos_images::find("faults-c").expect("faults-c");
    let kinds: &[&str] = if support::kvm_available() {
        &["process", "thread", "virtine", "vm", "ept-view"]
    } else {
        &["process", "thread"]
    };
    for kind in kinds {
        for mode in ["exec-data", "write-code"] {
            let f = Function::from_elf(faults.bytes)
                .expect("image")
                .on(&registry, kind)
                .expect("ICF available")
                .args(["faults", mode]);
            let r = f.call(b"").expect("call");
            assert!(
                matches!(r.exit, GuestExit::Faulted { .. }),
                "{kind} {mode}: {} ({})",
                r.exit,
                String::from_utf8_lossy(&r.stderr)
            );
        }
    }
}
