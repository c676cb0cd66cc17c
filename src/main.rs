//! The `xos-vmm` command line.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use xos_vmm::icf::{Availability, IcSpec, Registry, RegistryError};
use xos_vmm::units::{parse_duration, parse_size};
use xos_vmm::vmm::{GuestExit, GuestIo};

/// Exit code for bad usage or a bad image file.
const EXIT_USAGE: u8 = 2;
/// Exit code for host-side failures.
const EXIT_HOST: u8 = 1;

#[derive(Parser)]
#[command(
    name = "xos-vmm",
    version,
    about = "A KVM virtual machine monitor with pluggable isolation (xOS isolation context factories)",
    after_help = "Guest images: build C guests with guest-runtime/c/xos-cc, Rust guests as in guest-runtime/rust/README.md.\nBuilt-in example images can be named as @NAME (see `xos-vmm images`).\nLogging: XOS_LOG=debug."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a guest image in a fresh isolation context.
    Run(RunArgs),
    /// List the registered isolation context factories and their availability.
    Icfs {
        /// Also print the communication mechanisms registered per pair of kinds.
        #[arg(long)]
        com: bool,
    },
    /// List the example images built into this binary (usable as @NAME).
    Images,
    /// Measure start-up and call costs against process and thread baselines.
    Bench(xos_vmm::bench::BenchArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Isolation context factory to run in (see `xos-vmm icfs`).
    #[arg(long, value_name = "NAME", default_value = "virtine")]
    icf: String,
    /// Guest memory limit, e.g. 16M, 256MiB, 1G (rounded up to 2 MiB; 4 MiB..16 GiB).
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    mem: Option<u64>,
    /// Stop the guest after this long (exit code 124), e.g. 500ms, 5s.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    timeout: Option<Duration>,
    /// Add KEY=VALUE to the guest's environment (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Print exits, hypercalls and timings to stderr when the guest ends.
    #[arg(long)]
    stats: bool,
    /// The guest image: a static ELF built by xos-cc, or @NAME for a built-in example.
    file: String,
    /// Arguments passed to the guest (after `--`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("the timeout must be greater than zero".into());
    }
    Ok(d)
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: EXIT_HOST,
            error: e.into(),
        }
    }
}

fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error: error.into(),
    }
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("XOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Icfs { com } => icfs(com),
        Command::Images => images(),
        Command::Bench(args) => xos_vmm::bench::main(&args)
            .map(|()| ExitCode::SUCCESS)
            .map_err(Failure::from),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("xos-vmm: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

fn load(file: &str) -> Result<(xos_vmm::vmm::Program, String), Failure> {
    if let Some(name) = file.strip_prefix('@') {
        let image = xos_images::find(name).ok_or_else(|| {
            let names: Vec<_> = xos_images::IMAGES.iter().map(|i| i.name).collect();
            usage(anyhow::anyhow!(
                "no built-in image named '{name}'; built-in images: {}",
                names.join(", ")
            ))
        })?;
        let program = xos_vmm::vmm::Program::parse(image.bytes)
            .with_context(|| format!("built-in image {name}"))
            .map_err(usage)?;
        return Ok((program, name.to_owned()));
    }
    let program = xos_vmm::load_image(&PathBuf::from(file)).map_err(usage)?;
    Ok((program, file.to_owned()))
}

fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let registry = Registry::builtin();
    let factory = registry.resolve(&args.icf).map_err(|e| match e {
        RegistryError::Unknown { .. } => usage(e),
        _ => Failure::from(e),
    })?;
    let (program, argv0) = load(&args.file)?;

    let mut spec = IcSpec::new(program);
    if let Some(mem) = args.mem {
        xos_vmm::vmm::memory::checked_size(mem).map_err(usage)?;
        spec.mem_size = mem;
    }
    spec.timeout = args.timeout;
    spec.args = std::iter::once(argv0.into_bytes())
        .chain(args.args.into_iter().map(OsStringExt::into_vec))
        .collect();
    for entry in &args.env {
        if !entry.contains('=') {
            return Err(usage(anyhow::anyhow!("--env {entry}: expected KEY=VALUE")));
        }
    }
    spec.env = args.env.into_iter().map(String::into_bytes).collect();

    let mut ic = factory.create(spec)?;
    let outcome = match ic.run(GuestIo::inherit()) {
        Ok(o) => o,
        Err(xos_vmm::icf::IcfError::Run(xos_vmm::vmm::RunError::Layout(e))) => {
            // Image too large for --mem, arguments too long: the user's to fix.
            return Err(usage(anyhow::anyhow!("{}: {e}", args.file)));
        }
        Err(e) => return Err(e.into()),
    };
    if args.stats {
        eprintln!(
            "xos-vmm: {} exits, {} hypercalls, guest time {:?}",
            outcome.stats.exits, outcome.stats.hypercalls, outcome.guest_time
        );
    }
    match &outcome.exit {
        GuestExit::Exited(_) => {}
        other => eprintln!("xos-vmm: {}: {other}", args.file),
    }
    Ok(ExitCode::from(outcome.exit.exit_code().clamp(0, 255) as u8))
}

fn icfs(com: bool) -> Result<ExitCode, Failure> {
    let registry = Registry::builtin();
    println!("{:<10} {:<12} DESCRIPTION", "ICF", "STATUS");
    for info in registry.get_icfs() {
        match &info.availability {
            Availability::Available => {
                println!("{:<10} {:<12} {}", info.name, "available", info.description)
            }
            Availability::Unavailable(reason) => println!(
                "{:<10} {:<12} {} (unavailable: {reason})",
                info.name, "unavailable", info.description
            ),
        }
    }
    if com {
        println!();
        println!("{:<10} {:<10} {:<12} HOW", "KIND A", "KIND B", "MECHANISM");
        for (a, b, mechanisms) in registry.com().pairs() {
            for m in mechanisms {
                println!("{a:<10} {b:<10} {:<12} {}", m.name(), m.description());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn images() -> Result<ExitCode, Failure> {
    println!("{:<14} {:<5} {:>8}  PATH", "NAME", "LANG", "BYTES");
    for image in xos_images::IMAGES {
        println!(
            "{:<14} {:<5} {:>8}  {}",
            format!("@{}", image.name),
            format!("{:?}", image.lang),
            image.bytes.len(),
            image.path
        );
    }
    Ok(ExitCode::SUCCESS)
}
