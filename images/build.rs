//! Builds every xos guest image during the normal `cargo build`:
//!
//! - C images: `images/c/*.c` with `guest-runtime/c/xos-cc` (which builds the
//!   C runtime into `$OUT_DIR/xos-guest`), as `$OUT_DIR/images/<name>-c.elf`;
//! - Rust images: the separate cargo workspace `images/rust` (its own
//!   `.cargo/config.toml` holds the guest flags), built with `cargo build
//!   --release` into `$OUT_DIR/rust-target` and copied to
//!   `$OUT_DIR/images/<name>-rs.elf`; skipped with a warning while
//!   `images/rust/Cargo.toml` does not exist;
//! - the native baseline `images/native/trivial.c` (`gcc -O2 -static`), as
//!   `$OUT_DIR/native-trivial`.
//!
//! Every image is checked (static non-PIE ELF64 x86-64 at >= 0x100000) and
//! listed in `$OUT_DIR/images.rs`, which `src/lib.rs` includes. A failure
//! prints the failing command and its output and fails the build.

use std::collections::BTreeMap;
use std::env;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// C images that must exist (`images/c/<name>.c`).
const REQUIRED_C: &[&str] = &[
    "chan", "counter", "echo", "faults", "hcloop", "hello", "noop", "ready", "secret", "sum",
    "trivial", "wc",
];
/// Binaries of `images/rust` that must be built.
const REQUIRED_RUST: &[&str] = &["hello", "ready", "sum", "view", "wc"];
/// Binaries of `images/rust` that are included when they exist.
const OPTIONAL_RUST: &[&str] = &["panic"];
/// Lowest address an image segment may use (`xos_abi::layout::IMAGE_BASE`).
const IMAGE_BASE: u64 = 0x10_0000;

type Result<T> = std::result::Result<T, String>;

fn main() {
    if let Err(e) = run() {
        eprintln!("\nerror: building the xos guest images failed:\n{e}");
        std::process::exit(1);
    }
}

/// Paths the build works with.
struct Paths {
    repo: PathBuf,
    images: PathBuf,
    runtime: PathBuf,
    xos_cc: PathBuf,
    linker_script: PathBuf,
    out: PathBuf,
    runtime_build: PathBuf,
    image_dir: PathBuf,
}

/// One built image, for images.rs.
struct Built {
    name: String,
    lang: &'static str,
    path: PathBuf,
}

fn run() -> Result<()> {
    let manifest = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let images = canonical(&manifest)?;
    let repo = images
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", images.display()))?
        .to_path_buf();
    let runtime = repo.join("guest-runtime/c");
    let out = PathBuf::from(env_var("OUT_DIR")?);
    let paths = Paths {
        xos_cc: canonical(&runtime.join("xos-cc"))?,
        linker_script: canonical(&repo.join("guest-runtime/xos-guest.ld"))?,
        runtime_build: out.join("xos-guest"),
        image_dir: out.join("images"),
        repo,
        images,
        runtime,
        out,
    };

    emit_rerun(&paths)?;

    // Start from an empty image directory so that removed images disappear.
    if paths.image_dir.exists() {
        fs::remove_dir_all(&paths.image_dir)
            .map_err(|e| format!("removing {}: {e}", paths.image_dir.display()))?;
    }
    fs::create_dir_all(&paths.image_dir)
        .map_err(|e| format!("creating {}: {e}", paths.image_dir.display()))?;

    let mut built = build_c_images(&paths)?;
    built.extend(build_rust_images(&paths)?);
    for image in &built {
        check_image(&image.path)?;
    }
    let native = build_native(&paths)?;

    write_images_rs(&paths, &built)?;
    for (key, value) in [
        ("XOS_IMAGES_NATIVE_TRIVIAL", &native),
        ("XOS_IMAGES_XOS_CC", &paths.xos_cc),
        ("XOS_IMAGES_RUNTIME_BUILD_DIR", &paths.runtime_build),
        ("XOS_IMAGES_LINKER_SCRIPT", &paths.linker_script),
    ] {
        println!("cargo:rustc-env={key}={}", utf8(value)?);
    }
    Ok(())
}

fn env_var(key: &str) -> Result<String> {
    env::var(key).map_err(|e| format!("environment variable {key}: {e}"))
}

fn canonical(p: &Path) -> Result<PathBuf> {
    p.canonicalize()
        .map_err(|e| format!("{}: {e}", p.display()))
}

fn utf8(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| {
        format!(
            "path is not UTF-8 (needed for include_bytes!): {}",
            p.display()
        )
    })
}

// ---- inputs ---------------------------------------------------------------

fn emit_rerun(paths: &Paths) -> Result<()> {
    let mut inputs = vec![
        paths.images.join("build.rs"),
        paths.images.join("Cargo.toml"),
        paths.linker_script.clone(),
        // directories: cargo rescans them, so added files are noticed
        paths.images.join("c"),
        paths.images.join("native"),
    ];
    // The C runtime, without its self-test (not an input of any image).
    for entry in read_dir_sorted(&paths.runtime)? {
        let name = entry.file_name().map(|n| n.to_string_lossy().into_owned());
        if !matches!(
            name.as_deref(),
            Some("selftest" | "selftest.sh" | "README.md")
        ) {
            inputs.push(entry);
        }
    }
    // The Rust image workspace and the crates it uses by path. Directories
    // named target (build output) are never inputs.
    let rust = paths.images.join("rust");
    if rust.join("Cargo.toml").exists() {
        for krate in [
            rust,
            paths.repo.join("guest-runtime/rust"),
            paths.repo.join("guest-runtime/abi"),
        ] {
            if krate.exists() {
                crate_inputs(&krate, &mut inputs)?;
            }
        }
    } else {
        // Not there yet: rerun once it appears.
        inputs.push(rust.join("Cargo.toml"));
    }
    for p in inputs {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    for var in ["XOS_GCC", "CARGO_NET_OFFLINE"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    Ok(())
}

/// The inputs of a crate: its top-level files, `.cargo/config.toml`, and
/// every directory except build output and hidden ones.
fn crate_inputs(dir: &Path, inputs: &mut Vec<PathBuf>) -> Result<()> {
    for entry in read_dir_sorted(dir)? {
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if entry.is_dir() {
            if name == ".cargo" {
                inputs.push(entry.join("config.toml"));
            } else if name != "target" && !name.starts_with('.') {
                inputs.push(entry);
            }
        } else if !name.starts_with('.') {
            inputs.push(entry);
        }
    }
    Ok(())
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = fs::read_dir(dir)
        .map_err(|e| format!("reading directory {}: {e}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| format!("reading directory {}: {e}", dir.display()))?;
    entries.sort();
    Ok(entries)
}

// ---- running commands -----------------------------------------------------

fn show(cmd: &Command) -> String {
    let mut s = String::new();
    if let Some(dir) = cmd.get_current_dir() {
        let _ = write!(s, "(in {}) ", dir.display());
    }
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            let _ = write!(s, "{}={} ", k.to_string_lossy(), v.to_string_lossy());
        }
    }
    let _ = write!(s, "{}", cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        let _ = write!(s, " {}", a.to_string_lossy());
    }
    s
}

/// Runs `cmd`, returning its output; a failure to start or a non-zero exit
/// is an error that shows the command and everything it printed.
fn run_cmd(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: could not run `{}`: {e}", show(cmd)))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n  command: {}\n--- stdout ---\n{}--- stderr ---\n{}",
            out.status,
            show(cmd),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

// ---- C images -------------------------------------------------------------

fn build_c_images(paths: &Paths) -> Result<Vec<Built>> {
    let c_dir = paths.images.join("c");
    let mut sources = BTreeMap::new();
    for p in read_dir_sorted(&c_dir)? {
        if p.is_file() && p.extension().is_some_and(|e| e == "c") {
            let stem = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            sources.insert(stem, p);
        }
    }
    for name in REQUIRED_C {
        if !sources.contains_key(*name) {
            return Err(format!(
                "required C image source {}/{name}.c is missing",
                c_dir.display()
            ));
        }
    }
    let mut built = Vec::new();
    for (stem, src) in &sources {
        let name = format!("{stem}-c");
        let path = paths.image_dir.join(format!("{name}.elf"));
        let mut cmd = Command::new("bash");
        cmd.arg(&paths.xos_cc)
            .args(["-Wall", "-Wextra", "-Werror"])
            .arg(src)
            .arg("-o")
            .arg(&path)
            .env("XOS_BUILD_DIR", &paths.runtime_build)
            // A jobserver inherited from an outer make would confuse the
            // runtime's make.
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("CARGO_MAKEFLAGS");
        run_cmd(
            &mut cmd,
            &format!("building C image {name} from {}", src.display()),
        )?;
        built.push(Built {
            name,
            lang: "C",
            path,
        });
    }
    Ok(built)
}

// ---- Rust images ----------------------------------------------------------

/// Environment variables of this build script that must not reach the
/// nested cargo: they would override images/rust/.cargo/config.toml, wrap
/// rustc (clippy), retarget the build, or describe this package.
const REMOVE_EXACT: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_LINKER",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_NAME",
];
const REMOVE_PREFIXES: &[&str] = &[
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
    "CARGO_BUILD_",   // CARGO_BUILD_RUSTFLAGS, _TARGET, _TARGET_DIR, ...
    "CARGO_TARGET_",  // CARGO_TARGET_<triple>_RUSTFLAGS / _LINKER, ...
    "CARGO_PROFILE_", // e.g. CARGO_PROFILE_RELEASE_PANIC
];

fn rust_command(paths: &Paths, rust_dir: &Path, offline: bool) -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(rust_dir).args(["build", "--release"]);
    if rust_dir.join("Cargo.lock").exists() {
        cmd.arg("--locked");
    }
    if offline {
        cmd.arg("--offline");
    }
    for (key, _) in env::vars_os() {
        let k = key.to_string_lossy();
        if REMOVE_EXACT.contains(&k.as_ref()) || REMOVE_PREFIXES.iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CARGO_TARGET_DIR", paths.out.join("rust-target"));
    cmd
}

fn build_rust_images(paths: &Paths) -> Result<Vec<Built>> {
    let rust_dir = paths.images.join("rust");
    if !rust_dir.join("Cargo.toml").exists() {
        println!(
            "cargo:warning=images/rust/Cargo.toml does not exist yet: the Rust guest images \
             (hello-rs, sum-rs, wc-rs) are not built"
        );
        return Ok(Vec::new());
    }
    let what = "building the Rust guest images (cargo build --release in images/rust)";
    // Offline first (no network needed when the dependencies are cached);
    // online again only if offline mode was the problem.
    let mut cmd = rust_command(paths, &rust_dir, true);
    let out = match cmd.output() {
        Ok(out) if out.status.success() => out,
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("offline") => {
            run_cmd(&mut rust_command(paths, &rust_dir, false), what)?
        }
        _ => run_cmd(&mut cmd, what)?,
    };
    // Shown with `cargo build -vv`; warnings also as cargo warnings.
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    for line in stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .take(10)
    {
        println!("cargo:warning=images/rust: {line}");
    }

    let release = paths.out.join("rust-target/release");
    let mut built = Vec::new();
    for bin in REQUIRED_RUST.iter().chain(OPTIONAL_RUST) {
        let src = release.join(bin);
        if !src.is_file() {
            if REQUIRED_RUST.contains(bin) {
                return Err(format!(
                    "{what}: cargo succeeded but did not produce {} (is `{bin}` a [[bin]] of \
                     images/rust/Cargo.toml?)",
                    src.display()
                ));
            }
            continue;
        }
        let name = format!("{bin}-rs");
        let path = paths.image_dir.join(format!("{name}.elf"));
        fs::copy(&src, &path)
            .map_err(|e| format!("copying {} to {}: {e}", src.display(), path.display()))?;
        built.push(Built {
            name,
            lang: "Rust",
            path,
        });
    }
    Ok(built)
}

// ---- native baseline ------------------------------------------------------

fn build_native(paths: &Paths) -> Result<PathBuf> {
    let src = paths.images.join("native/trivial.c");
    let dst = paths.out.join("native-trivial");
    let gcc = env::var_os("XOS_GCC").unwrap_or_else(|| OsString::from("gcc"));
    let mut cmd = Command::new(gcc);
    cmd.args(["-O2", "-static", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&dst)
        .arg(&src);
    run_cmd(
        &mut cmd,
        "building the native baseline images/native/trivial.c (a static link needs the C \
         library's static archive, e.g. Debian's libc6-dev)",
    )?;
    Ok(dst)
}

// ---- checks ---------------------------------------------------------------

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(v)
}

/// Checks what the monitor will check, so that a misbuilt image fails the
/// build rather than a test: a static, non-PIE ELF64 x86-64 executable,
/// every PT_LOAD at or above IMAGE_BASE, the entry in an executable PT_LOAD.
fn check_image(path: &Path) -> Result<()> {
    let b = fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let bad = |why: &str| {
        Err(format!(
            "{} is not a valid xos guest image: {why}",
            path.display()
        ))
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return bad("not an ELF file");
    }
    if b[4] != 2 || b[5] != 1 {
        return bad("not ELF64 little endian");
    }
    if u16_at(&b, 16) != 2 {
        return bad("not ET_EXEC (a PIE or shared object? the guest flags are missing)");
    }
    if u16_at(&b, 18) != 62 {
        return bad("not x86-64");
    }
    let entry = u64_at(&b, 24);
    let phoff = usize::try_from(u64_at(&b, 32)).unwrap_or(usize::MAX);
    let phentsize = usize::from(u16_at(&b, 54));
    let phnum = usize::from(u16_at(&b, 56));
    if phentsize < 56 || phoff.saturating_add(phnum.saturating_mul(phentsize)) > b.len() {
        return bad("program header table out of bounds");
    }
    let mut entry_ok = false;
    for i in 0..phnum {
        let ph = &b[phoff + i * phentsize..];
        let (kind, flags, vaddr, memsz) =
            (u32_at(ph, 0), u32_at(ph, 4), u64_at(ph, 16), u64_at(ph, 40));
        match kind {
            1 => {
                if vaddr < IMAGE_BASE {
                    return bad(&format!(
                        "a PT_LOAD segment at {vaddr:#x}, below {IMAGE_BASE:#x}"
                    ));
                }
                if flags & 1 != 0 && (vaddr..vaddr.saturating_add(memsz)).contains(&entry) {
                    entry_ok = true;
                }
            }
            2 => return bad("has PT_DYNAMIC (dynamically linked)"),
            3 => return bad("has PT_INTERP (dynamically linked)"),
            _ => {}
        }
    }
    if !entry_ok {
        return bad(&format!(
            "entry point {entry:#x} is not inside an executable PT_LOAD segment"
        ));
    }
    Ok(())
}

// ---- images.rs ------------------------------------------------------------

fn write_images_rs(paths: &Paths, built: &[Built]) -> Result<()> {
    let mut s = String::from(
        "/// Every guest image built by `build.rs`: the C images (`<name>-c`), then\n\
         /// the Rust images (`<name>-rs`) if `images/rust` exists.\n\
         pub static IMAGES: &[Image] = &[\n",
    );
    for image in built {
        let path = utf8(&image.path)?;
        let _ = writeln!(
            s,
            "    Image {{ name: {:?}, lang: Lang::{}, path: {path:?}, bytes: include_bytes!({path:?}) }},",
            image.name, image.lang
        );
    }
    s.push_str("];\n");
    let dst = paths.out.join("images.rs");
    // Rewrite only on change, so that the crate is not recompiled needlessly.
    if fs::read_to_string(&dst).ok().as_deref() != Some(s.as_str()) {
        fs::write(&dst, s).map_err(|e| format!("writing {}: {e}", dst.display()))?;
    }
    Ok(())
}
