//! A C guest and a Rust guest built the way the READMEs document
//! (`xos-cc`; a crate depending on `xos-guest` with the copied
//! `.cargo/config.toml` and `build.rs`), then run by `xos-vmm`.

mod support;

use std::path::Path;
use std::process::Command;
use support::{kvm_available, scratch};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn run_image(image: &Path, args: &[&str], stdin: &str) -> (i32, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_xos-vmm"))
        .arg("run")
        .arg(image)
        .arg("--")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("xos-vmm");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_c_guest_built_with_xos_cc_runs() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("c-guest");
    std::fs::write(
        dir.join("fn.c"),
        r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    char line[256];
    long total = 0;
    while (fgets(line, sizeof line, stdin)) total += strtol(line, NULL, 10);
    char *copy = malloc(64);
    snprintf(copy, 64, "%s", argc > 1 ? argv[1] : "none");
    printf("argc=%d first=%s total=%ld hex=%x\n", argc, copy, total, 255);
    free(copy);
    return 3;
}
"#,
    )
    .expect("write fn.c");
    let status = Command::new(xos_images::XOS_CC)
        .current_dir(&dir)
        .env("XOS_BUILD_DIR", dir.join("runtime"))
        .args(["fn.c", "-o", "fn.elf"])
        .status()
        .expect("xos-cc");
    assert!(status.success(), "xos-cc failed");
    let (code, out) = run_image(&dir.join("fn.elf"), &["alpha", "beta"], "40\n2\n");
    assert_eq!(code, 3);
    assert_eq!(out, "argc=3 first=alpha total=42 hex=ff\n");
}

#[test]
fn a_rust_guest_built_as_documented_runs() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("rust-guest");
    let runtime = Path::new(REPO).join("guest-runtime/rust");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "myfn"
version = "0.1.0"
edition = "2021"

[[bin]]
name = "myfn"
test = false

[dependencies]
xos-guest = {{ path = "{}" }}

[profile.release]
panic = "abort"
opt-level = "s"
lto = true
codegen-units = 1

[profile.dev]
panic = "abort"

[workspace]
"#,
            runtime.display()
        ),
    )
    .expect("Cargo.toml");
    std::fs::create_dir_all(dir.join("src")).expect("src");
    std::fs::write(
        dir.join("src/main.rs"),
        r#"#![no_std]
#![no_main]
extern crate alloc;
use xos_guest::{io, println};
xos_guest::entry!(main);
fn main(args: xos_guest::Args) -> i32 {
    let words: alloc::vec::Vec<&str> = args.skip(1).collect();
    let mut input = alloc::string::String::new();
    io::stdin().read_to_string(&mut input).unwrap();
    println!("{} | {}", words.join("+"), input.trim().to_uppercase());
    5
}
"#,
    )
    .expect("main.rs");
    // Step 2 and 3 of the README: copy the config and the build script,
    // pointing the build script at the linker script.
    std::fs::create_dir_all(dir.join(".cargo")).expect(".cargo");
    std::fs::copy(
        Path::new(REPO).join("images/rust/.cargo/config.toml"),
        dir.join(".cargo/config.toml"),
    )
    .expect("config.toml");
    let build_rs =
        std::fs::read_to_string(Path::new(REPO).join("images/rust/build.rs")).expect("build.rs");
    let linker_script = Path::new(REPO).join("guest-runtime/xos-guest.ld");
    let adjusted = build_rs.replace(
        "manifest_dir.join(\"../../guest-runtime/xos-guest.ld\")",
        &format!(
            "{{ let _ = &manifest_dir; PathBuf::from({:?}) }}",
            linker_script.display().to_string()
        ),
    );
    assert_ne!(
        adjusted, build_rs,
        "the README's build.rs step no longer matches"
    );
    std::fs::write(dir.join("build.rs"), adjusted).expect("build.rs");
    // Step 4: cargo build --release from the crate's directory.
    let lock = Path::new(REPO).join("images/rust/Cargo.lock");
    std::fs::copy(lock, dir.join("Cargo.lock")).expect("Cargo.lock");
    let status = Command::new(env!("CARGO"))
        .current_dir(&dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .args(["build", "--release", "--quiet"])
        .status()
        .expect("cargo");
    assert!(status.success(), "cargo build of the guest failed");
    let (code, out) = run_image(&dir.join("target/release/myfn"), &["a", "b"], "shout\n");
    assert_eq!(code, 5);
    assert_eq!(out, "a+b | SHOUT\n");
}
