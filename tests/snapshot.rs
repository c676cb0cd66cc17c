//! `xos-vmm snapshot` and `xos-vmm run --from-snapshot` end to end, and the
//! clear refusal of every kind of bad snapshot file.

mod support;

use std::path::{Path, PathBuf};
use support::{kvm_available, scratch, text, xos};

fn take_snapshot(dir: &Path) -> PathBuf {
    let snap = dir.join("ready.snap");
    let out = xos(&["snapshot", "@ready-c", "-o", snap.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("snapshot at the ready point written"));
    snap
}

#[test]
fn runs_from_a_snapshot_skip_initialisation_and_get_fresh_input() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("snapshot-runs");
    let snap = take_snapshot(&dir);
    let snap = snap.to_str().unwrap();
    let direct = xos(&["run", "@ready-c"], b"abc");
    assert_eq!(
        text(&direct.stdout),
        "inits=1 restored=0 table=68933650521 input=ABC\n"
    );
    for input in ["first", "second call", ""] {
        let out = xos(&["run", "--from-snapshot", snap], input.as_bytes());
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            format!(
                "inits=1 restored=1 table=68933650521 input={}\n",
                input.to_uppercase()
            )
        );
    }
}

#[test]
fn rust_guests_have_the_same_ready_point() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("snapshot-rust");
    let snap = dir.join("ready-rs.snap");
    let out = xos(
        &["snapshot", "@ready-rs", "-o", snap.to_str().unwrap()],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for input in ["rust", "again"] {
        let out = xos(
            &["run", "--from-snapshot", snap.to_str().unwrap()],
            input.as_bytes(),
        );
        assert_eq!(
            text(&out.stdout),
            format!(
                "inits=1 restored=1 table=68933650521 input={}\n",
                input.to_uppercase()
            )
        );
    }
}

#[test]
fn a_guest_without_a_ready_point_cannot_be_snapshotted() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("snapshot-not-ready");
    let snap = dir.join("x.snap");
    let out = xos(&["snapshot", "@hello-c", "-o", snap.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("@hello-c: the guest ended before it called xos_ready()"),
        "{err}"
    );
    assert!(!snap.exists());
}

#[track_caller]
fn expect_refused(path: &Path, message: &str) {
    let p = path.to_str().unwrap();
    let out = xos(&["run", "--from-snapshot", p], b"");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(p), "the message must name the file: {err}");
    assert!(err.contains(message), "expected '{message}': {err}");
    assert!(
        out.stdout.is_empty(),
        "nothing may run: {}",
        text(&out.stdout)
    );
}

#[test]
fn bad_snapshot_files_are_refused_before_anything_runs() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("snapshot-bad");
    let good = std::fs::read(take_snapshot(&dir)).expect("snapshot");
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    expect_refused(&write("empty.snap", b""), "truncated");
    expect_refused(&write("short.snap", &good[..20]), "truncated");
    expect_refused(&write("cut.snap", &good[..good.len() / 2]), "truncated");
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x40;
    expect_refused(&write("corrupt.snap", &corrupt), "corrupted");
    let mut header = good.clone();
    header[16] ^= 1;
    expect_refused(&write("header.snap", &header), "header is corrupted");
    let elf = xos_images::find("hello-c").expect("hello-c").bytes;
    expect_refused(&write("foreign.snap", elf), "not an xos-vmm snapshot");
    let mut v9 = good.clone();
    v9[8..12].copy_from_slice(&9u32.to_le_bytes());
    let crc = crc32fast::hash(&v9[..44]);
    v9[44..48].copy_from_slice(&crc.to_le_bytes());
    expect_refused(&write("v9.snap", &v9), "format version 9");
    expect_refused(&dir.join("missing.snap"), "cannot read the snapshot");
    let out = xos(
        &[
            "run",
            "--from-snapshot",
            dir.join("x").to_str().unwrap(),
            "--",
            "arg",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("part of the snapshot"));
}
