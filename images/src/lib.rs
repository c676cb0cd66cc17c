//! The xos guest images, built reproducibly by this crate's `build.rs` during
//! the normal `cargo build`:
//!
//! - C images from `images/c/*.c`, compiled with `guest-runtime/c/xos-cc`
//!   against the C guest runtime: `hello-c`, `sum-c`, `wc-c`, `trivial-c`,
//!   `faults-c`, `hcloop-c`, `echo-c`, `chan-c`;
//! - Rust images from the cargo workspace `images/rust` (no_std, on the
//!   Rust guest runtime): `hello-rs`, `sum-rs`, `wc-rs` (and `panic-rs`
//!   when that workspace has it);
//! - a native static executable of the trivial function,
//!   [`NATIVE_TRIVIAL`], as the baseline for fork+exec+wait.
//!
//! Every guest image is a static, non-PIE ELF64 x86-64 executable linked at
//! 0x100000 (`docs/ABI.md`); `build.rs` checks that before listing it.
//!
//! ```
//! let hello = xos_images::find("hello-c").expect("hello-c is always built");
//! assert_eq!(hello.lang, xos_images::Lang::C);
//! assert_eq!(&hello.bytes[..4], b"\x7fELF");
//! ```
#![deny(missing_docs)]

use std::fmt;

/// The language a guest image is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lang {
    /// C, built with `guest-runtime/c/xos-cc` (libc subset of the C runtime).
    C,
    /// Rust (`#![no_std]`), built in `images/rust` on the Rust guest runtime.
    Rust,
}

/// A guest image built by `build.rs`.
pub struct Image {
    /// Name: the source's name plus `-c` or `-rs`, e.g. `hello-c`.
    pub name: &'static str,
    /// The language it is written in.
    pub lang: Lang,
    /// Absolute path of the ELF file (in this crate's build output
    /// directory), e.g. for `xos-vmm run <path>`.
    pub path: &'static str,
    /// The ELF file's contents, embedded at compile time.
    pub bytes: &'static [u8],
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image")
            .field("name", &self.name)
            .field("lang", &self.lang)
            .field("path", &self.path)
            .field("bytes", &format_args!("[{} bytes]", self.bytes.len()))
            .finish()
    }
}

include!(concat!(env!("OUT_DIR"), "/images.rs"));

/// The image called `name` (e.g. `"hello-c"`, `"sum-rs"`), if it was built.
pub fn find(name: &str) -> Option<&'static Image> {
    IMAGES.iter().find(|image| image.name == name)
}

/// Absolute path of the native baseline: `images/native/trivial.c` built
/// with `gcc -O2 -static`, an ordinary Linux executable (not a guest image)
/// that does nothing and exits 0.
pub const NATIVE_TRIVIAL: &str = env!("XOS_IMAGES_NATIVE_TRIVIAL");

/// Absolute path of `guest-runtime/c/xos-cc`, the compiler driver for C
/// guest images (`xos-cc fn.c -o fn.elf`).
pub const XOS_CC: &str = env!("XOS_IMAGES_XOS_CC");

/// The directory where `build.rs` built the C runtime (`crt0.o`,
/// `libxos.a`); pass it to `xos-cc` as `XOS_BUILD_DIR` to reuse that build.
pub const RUNTIME_BUILD_DIR: &str = env!("XOS_IMAGES_RUNTIME_BUILD_DIR");

/// Absolute path of `guest-runtime/xos-guest.ld`, the linker script of all
/// guest images.
pub const LINKER_SCRIPT: &str = env!("XOS_IMAGES_LINKER_SCRIPT");

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const REQUIRED: &[&str] = &[
        "hello-c",
        "sum-c",
        "wc-c",
        "trivial-c",
        "faults-c",
        "hcloop-c",
        "echo-c",
        "chan-c",
    ];

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn required_images_exist() {
        for name in REQUIRED {
            let image = find(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(image.lang, Lang::C);
        }
        if Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rust/Cargo.toml")).exists() {
            for name in ["hello-rs", "sum-rs", "wc-rs"] {
                let image = find(name).unwrap_or_else(|| panic!("{name} missing"));
                assert_eq!(image.lang, Lang::Rust);
            }
        }
        assert!(find("no-such-image").is_none());
    }

    #[test]
    fn images_are_static_exec_elves_at_the_image_base() {
        for image in IMAGES {
            let b = image.bytes;
            assert_eq!(
                std::fs::read(image.path).unwrap(),
                b,
                "{}: file differs from bytes",
                image.name
            );
            assert_eq!(&b[..4], b"\x7fELF", "{}", image.name);
            assert_eq!(b[4], 2, "{}: ELFCLASS64", image.name);
            assert_eq!(u16_at(b, 16), 2, "{}: ET_EXEC", image.name);
            assert_eq!(u16_at(b, 18), 62, "{}: EM_X86_64", image.name);
            assert!(
                u64_at(b, 24) >= 0x10_0000,
                "{}: entry below the image base",
                image.name
            );
            let (phoff, phnum) = (u64_at(b, 32) as usize, usize::from(u16_at(b, 56)));
            for i in 0..phnum {
                let kind = u32::from_le_bytes(b[phoff + i * 56..][..4].try_into().unwrap());
                assert!(
                    kind != 2 && kind != 3,
                    "{}: PT_DYNAMIC or PT_INTERP",
                    image.name
                );
            }
        }
    }

    #[test]
    fn tools_and_runtime_are_where_the_constants_say() {
        assert!(Path::new(XOS_CC).is_file());
        assert!(Path::new(LINKER_SCRIPT).is_file());
        assert!(Path::new(RUNTIME_BUILD_DIR).join("libxos.a").is_file());
        assert!(Path::new(RUNTIME_BUILD_DIR).join("crt0.o").is_file());
    }

    #[test]
    fn native_trivial_runs() {
        let status = std::process::Command::new(NATIVE_TRIVIAL).status().unwrap();
        assert!(status.success());
    }
}
