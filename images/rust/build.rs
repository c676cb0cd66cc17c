//! Link arguments for xos guest images: a static, non-PIE executable without
//! C start files or libraries, laid out by guest-runtime/xos-guest.ld (entry
//! `_start` first in .text at 0x100000, .eh_frame discarded). `-z norelro`:
//! nothing is relocated at load time, so no PT_GNU_RELRO over .data.
//! `--defsym=__xos_require_start=_start` references `_start`, so a binary
//! without `xos_guest::entry!` fails to link ("undefined symbol: _start")
//! instead of getting an entry point in the middle of nowhere.
//!
//! Emitted here rather than in .cargo/config.toml so that the linker script
//! is named by an absolute path (whatever directory the linker runs in) and
//! so that the arguments apply to the guest images only, not to build
//! scripts (which link normally against libc).

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let script = manifest_dir.join("../../guest-runtime/xos-guest.ld");
    let script = script
        .canonicalize()
        .unwrap_or_else(|e| panic!("linker script {}: {e}", script.display()));
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");

    // The code generation flags from .cargo/config.toml must be in effect:
    // without them rustc links a PIE, which the monitor rejects.
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split('\x1f').collect();
    // Accepts both `-C flag` (two arguments) and `-Cflag`.
    let has = |flag: &str| {
        flags
            .iter()
            .any(|f| f.strip_prefix("-C").unwrap_or(f) == flag)
    };
    if !has("relocation-model=static") || !has("target-feature=+crt-static") {
        panic!(
            "xos guest images need `-C relocation-model=static -C target-feature=+crt-static` \
             (images/rust/.cargo/config.toml); got rustflags {flags:?}. Run cargo with images/rust \
             as the current directory and without RUSTFLAGS / CARGO_ENCODED_RUSTFLAGS in the environment."
        );
    }

    // `rustc-link-arg` applies to every linked target of this package (the
    // binaries and examples; all are guest images), never to build scripts.
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,-z,norelro",
        "-Wl,--defsym=__xos_require_start=_start",
        "-T",
    ] {
        println!("cargo:rustc-link-arg={arg}");
    }
    println!("cargo:rustc-link-arg={}", script.display());
}
