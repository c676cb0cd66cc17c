//! The `xos-vmm` command line end to end: real KVM, the example images
//! built by the normal build, real stdin/stdout/exit codes.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use support::{kvm_available, text, xos};

#[track_caller]
fn expect(out: &Output, code: i32, stdout: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), stdout, "stderr: {}", text(&out.stderr));
}

fn image(name: &str) -> String {
    xos_images::find(name)
        .unwrap_or_else(|| panic!("image {name} was not built"))
        .path
        .to_owned()
}

fn run(name: &str, args: &[&str], stdin: &[u8]) -> Output {
    let path = image(name);
    let mut all = vec!["run", "--icf", "virtine", path.as_str(), "--"];
    all.extend_from_slice(args);
    xos(&all, stdin)
}

#[test]
fn hello_prints_its_arguments_in_c_and_rust() {
    if !kvm_available() {
        return;
    }
    for name in ["hello-c", "hello-rs"] {
        expect(
            &run(name, &["a", "b c", "-x"], b""),
            0,
            "hello from a virtine: a b c -x\n",
        );
        expect(&run(name, &[], b""), 0, "hello from a virtine:\n");
    }
}

#[test]
fn built_in_images_are_named_with_an_at_sign() {
    if !kvm_available() {
        return;
    }
    let out = xos(&["run", "@hello-c", "--", "hi"], b"");
    expect(&out, 0, "hello from a virtine: hi\n");
    let out = xos(&["run", "@nope"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no built-in image named 'nope'"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn sum_adds_numbers_from_stdin() {
    if !kvm_available() {
        return;
    }
    for name in ["sum-c", "sum-rs"] {
        expect(&run(name, &[], b"1 2 3\n-4\t10\n"), 0, "12\n");
        expect(&run(name, &[], b""), 0, "0\n");
        let out = run(name, &[], b"1 two 3");
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(
            text(&out.stderr).contains("two"),
            "{name}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn sum_reads_input_larger_than_the_stdin_buffer() {
    if !kvm_available() {
        return;
    }
    // 200,000 numbers (~1.3 MB): several READ_STDIN refills.
    let input: String = (1..=200_000u64).map(|i| format!("{i}\n")).collect();
    let expected = format!("{}\n", 200_000u64 * 200_001 / 2);
    for name in ["sum-c", "sum-rs"] {
        expect(&run(name, &[], input.as_bytes()), 0, &expected);
    }
}

#[test]
fn wc_matches_the_host_wc() {
    if !kvm_available() {
        return;
    }
    let input = b"one two  three\nfour\n\n  five six\nno newline at end";
    let mut host = Command::new("wc")
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wc");
    host.stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    let expected = text(&host.wait_with_output().expect("wc").stdout);
    for name in ["wc-c", "wc-rs"] {
        expect(&run(name, &[], input), 0, &expected);
    }
}

#[test]
fn echo_copies_a_large_binary_stream_exactly() {
    if !kvm_available() {
        return;
    }
    let input: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let out = run("echo-c", &[], &input);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        out.stdout == input,
        "output differs ({} bytes vs {})",
        out.stdout.len(),
        input.len()
    );
}

#[test]
fn the_guest_exit_code_becomes_the_process_exit_code() {
    if !kvm_available() {
        return;
    }
    expect(&run("faults-c", &["exit", "7"], b""), 7, "");
    expect(&run("faults-c", &["exit", "0"], b""), 0, "");
    expect(&run("faults-c", &["exit", "255"], b""), 255, "");
}

#[track_caller]
fn expect_crash(out: &Output, code: i32, message: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stderr: {}",
        text(&out.stderr)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains(message),
        "expected '{message}' in stderr:\n{err}"
    );
    assert!(err.contains("rip="), "registers missing:\n{err}");
}

#[test]
fn guest_faults_are_reported_with_their_kind_and_registers() {
    if !kvm_available() {
        return;
    }
    expect_crash(
        &run("faults-c", &["null"], b""),
        139,
        "null pointer dereference",
    );
    expect_crash(
        &run("faults-c", &["unmapped"], b""),
        139,
        "outside guest memory",
    );
    expect_crash(
        &run("faults-c", &["system"], b""),
        139,
        "supervisor-only system area",
    );
    expect_crash(&run("faults-c", &["stack"], b""), 139, "stack overflow");
    expect_crash(&run("faults-c", &["ud"], b""), 132, "#UD invalid opcode");
    expect_crash(&run("faults-c", &["div0"], b""), 136, "#DE divide error");
    expect_crash(
        &run("faults-c", &["gp"], b""),
        139,
        "#GP general protection fault",
    );
}

#[test]
fn aborts_and_panics_are_reported_as_sigabrt() {
    if !kvm_available() {
        return;
    }
    let out = run("faults-c", &["abort"], b"");
    assert_eq!(out.status.code(), Some(134));
    assert!(
        text(&out.stderr).contains("abort() called"),
        "{}",
        text(&out.stderr)
    );
    let out = run("panic-rs", &[], b"");
    assert_eq!(out.status.code(), Some(134));
    assert!(
        text(&out.stderr).contains("deliberate panic: 42"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_endless_loop_is_stopped_at_the_timeout_with_124() {
    if !kvm_available() {
        return;
    }
    let path = image("faults-c");
    let start = std::time::Instant::now();
    let out = xos(&["run", "--timeout", "300ms", &path, "--", "loop"], b"");
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("timed out after 300ms"),
        "{}",
        text(&out.stderr)
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn bad_pointers_in_hypercalls_return_an_error_to_the_guest() {
    if !kvm_available() {
        return;
    }
    expect(
        &run("faults-c", &["badptr"], b""),
        0,
        "write returned -14\n",
    );
}

#[test]
fn output_larger_than_the_buffer_is_delivered_whole() {
    if !kvm_available() {
        return;
    }
    let out = run("faults-c", &["bigout"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 300_001);
    assert!(out.stdout[..300_000].iter().all(|&b| b == b'x'));
}

#[test]
fn mem_bounds_guest_memory() {
    if !kvm_available() {
        return;
    }
    let path = image("hello-c");
    let out = xos(&["run", "--mem", "1M", &path], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("too small"),
        "{}",
        text(&out.stderr)
    );
    let out = xos(&["run", "--mem", "lots", &path], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a size"),
        "{}",
        text(&out.stderr)
    );
    expect(
        &xos(&["run", "--mem", "6M", &path], b""),
        0,
        "hello from a virtine:\n",
    );
}

fn temp_dir() -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("xos-cli-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .elapsed()
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish()
}

#[track_caller]
fn expect_bad_file(path: &Path, message: &str) {
    let p = path.to_str().expect("utf-8 path");
    let out = xos(&["run", "--icf", "virtine", p], b"");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{p}: {err}");
    assert!(err.contains(p), "the message must name the file: {err}");
    assert!(err.contains(message), "expected '{message}': {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn every_bad_file_gets_its_own_clear_error_and_exit_code_2() {
    use xos_vmm::vmm::elf_writer::{code_image, write_elf, SegmentSpec};
    let dir = temp_dir();
    let good = code_image(&[0xf4; 32]);
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    let patched = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    expect_bad_file(&write("empty.elf", b""), "the file is empty");
    expect_bad_file(
        &write("script.elf", b"#!/bin/sh\necho hi\n"),
        "not an ELF file",
    );
    expect_bad_file(
        &write("short.elf", &good[..30]),
        "shorter than an ELF64 header",
    );
    expect_bad_file(
        &write("cut.elf", &good[..good.len() - 8]),
        "the file is truncated",
    );
    expect_bad_file(&write("elf32.elf", &patched(&|b| b[4] = 1)), "32-bit ELF");
    expect_bad_file(
        &write(
            "arm.elf",
            &patched(&|b| b[18..20].copy_from_slice(&183u16.to_le_bytes())),
        ),
        "built for AArch64",
    );
    expect_bad_file(
        &write(
            "lib.so",
            &patched(&|b| b[16..18].copy_from_slice(&3u16.to_le_bytes())),
        ),
        "shared object",
    );
    expect_bad_file(
        &write(
            "entry.elf",
            &patched(&|b| b[24..32].copy_from_slice(&0x50_0000u64.to_le_bytes())),
        ),
        "entry point 0x500000 is not inside an executable segment",
    );
    let huge_bss = write_elf(
        0x10_0000,
        &[
            SegmentSpec {
                addr: 0x10_0000,
                data: vec![0xf4; 16],
                memsz: 16,
                flags: 5,
            },
            SegmentSpec {
                addr: 0x10_1000,
                data: vec![0; 16],
                memsz: 64 << 20,
                flags: 6,
            },
        ],
    );
    let big = write("big.elf", &huge_bss);
    expect_bad_file(&big, "raise --mem");
    // The same image fits with more memory (and then runs into hlt: #GP).
    let out = xos(&["run", "--mem", "128M", big.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(139), "{}", text(&out.stderr));
    expect_bad_file(&dir, "is a directory");
    expect_bad_file(&dir.join("missing.elf"), "no such file");
    // A real shared object built by gcc.
    let src = write("lib.c", b"int f(void) { return 1; }\n");
    let so = dir.join("real.so");
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-nostdlib", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(status.success());
    expect_bad_file(&so, "shared object");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_factories_list_the_registered_ones() {
    let out = xos(&["run", "--icf", "nosuch", "@hello-c"], b"");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown isolation context factory 'nosuch'; registered: virtine"),
        "{err}"
    );
}

#[test]
fn icfs_lists_the_virtine_factory_and_its_availability() {
    let out = xos(&["icfs"], b"");
    assert_eq!(out.status.code(), Some(0));
    let table = text(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.starts_with("virtine"))
        .expect("virtine row");
    if kvm_available() {
        assert!(line.contains("available"), "{line}");
    }
    for icf in ["process", "thread"] {
        assert!(table.lines().any(|l| l.starts_with(icf)), "{table}");
    }
}

#[test]
fn usage_errors_exit_with_2() {
    let out = xos(&["run"], b"");
    assert_eq!(out.status.code(), Some(2));
    let out = xos(&["run", "--timeout", "soon", "@hello-c"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not a duration"));
    let out = xos(&["frobnicate"], b"");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_timeout_stops_a_guest_waiting_for_stdin_or_a_full_stdout() {
    if !kvm_available() {
        return;
    }
    // stdin that never delivers: the monitor blocks reading it for the guest.
    let mut child = Command::new(env!("CARGO_BIN_EXE_xos-vmm"))
        .args(["run", "--timeout", "300ms", &image("wc-rs")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Keep the write end open (wait() would close it: end of input).
    let held_stdin = child.stdin.take();
    let start = std::time::Instant::now();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(124));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    drop(held_stdin);
    // stdout nobody reads: the monitor blocks writing the guest's output.
    let big = std::env::temp_dir().join(format!("xos-8m-{}", std::process::id()));
    std::fs::write(&big, vec![b'x'; 8 << 20]).expect("input file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xos-vmm"))
        .args(["run", "--timeout", "300ms", &image("echo-c")])
        .stdin(std::fs::File::open(&big).expect("open"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let unread_stdout = child.stdout.take();
    let start = std::time::Instant::now();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(124));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    drop(unread_stdout);
    let _ = std::fs::remove_file(&big);
}

#[test]
fn an_absurd_timeout_is_a_usage_error_not_a_crash() {
    let out = xos(&["run", "--timeout", "1e20", "@hello-c"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not a duration"));
}
