//! The `xos-vmm` command line.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use xos_vmm::icf::{
    Availability, IcSpec, IcfError, IsolationContextFactory, Registry, RegistryError,
};
use xos_vmm::units::{parse_duration, parse_size};
use xos_vmm::vmm::{GuestExit, GuestIo};

/// Writes a diagnostic line to stderr; a closed stderr (`2>&- `, a pipe to
/// `head`) must not turn into a panic.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

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
    /// Run a guest image up to its ready point (xos_ready()) and write its
    /// complete state to a snapshot file, for `run --from-snapshot`.
    Snapshot(SnapshotArgs),
    /// Serve a function over HTTP: each request body is its stdin, its
    /// stdout the response body, its exit status the HTTP status.
    Serve(ServeArgs),
    /// List the registered isolation context factories and their availability.
    Icfs {
        /// Also print the communication mechanisms registered per pair of
        /// kinds, their measured cost, and the one the runtime chooses.
        #[arg(long)]
        com: bool,
        /// Measure the costs again instead of using the cached ones.
        #[arg(long, requires = "com")]
        remeasure: bool,
    },
    /// List the example images built into this binary (usable as @NAME).
    Images,
    /// Measure start-up and call costs against process and thread baselines.
    Bench(xos_vmm::bench::BenchArgs),
    /// Run a group of built-in checks with real guests and print TAP
    /// (`ept-view`: the EPT-view ICF's; the Bochs stage runs it).
    Selftest {
        /// Which checks: `ept-view`.
        #[arg(value_parser = ["ept-view"])]
        what: String,
        /// How a pair's views switch: `auto` (VMFUNC where vmfunc-kmod is
        /// usable, else the memory-slot fallback), `memslot`, `vmfunc`
        /// (fails without the module), or `emulated` (the VMFUNC
        /// trampoline with VMFUNC emulated by the monitor).
        #[arg(long, default_value = "auto", value_parser = ["auto", "memslot", "vmfunc", "emulated"])]
        switching: String,
    },
    /// The benchmark's process-per-request HTTP server (baseline.cgi_rps).
    #[command(hide = true)]
    CgiBaseline {
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The static native program run for every request.
        program: PathBuf,
    },
}

/// Options every command that starts a guest takes.
#[derive(Args)]
struct GuestOptions {
    /// Isolation context factory to run in (see `xos-vmm icfs`).
    #[arg(long, value_name = "NAME", default_value = "virtine")]
    icf: String,
    /// Guest memory limit, e.g. 16M, 256MiB, 1G (rounded up to 2 MiB; 4 MiB..16 GiB).
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    mem: Option<u64>,
    /// Add KEY=VALUE to the guest's environment (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    guest: GuestOptions,
    /// Stop the guest after this long (exit code 124), e.g. 500ms, 5s.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    timeout: Option<Duration>,
    /// Print exits, hypercalls and timings to stderr when the guest ends.
    #[arg(long)]
    stats: bool,
    /// Start from a snapshot file (made by `xos-vmm snapshot`) instead of an
    /// image: the guest continues at its ready point with this run's stdin.
    #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["mem", "env"])]
    from_snapshot: Option<PathBuf>,
    /// The guest image: a static ELF built by xos-cc, or @NAME for a built-in example.
    #[arg(required_unless_present = "from_snapshot")]
    file: Option<String>,
    /// Arguments passed to the guest (after `--`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    guest: GuestOptions,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0: any free port).
    #[arg(long, value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// Warm instances at most (requests beyond wait for one).
    #[arg(long, value_name = "N", default_value_t = 4)]
    instances: usize,
    /// Stop a request's guest after this long (HTTP 504).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, default_value = "10s")]
    timeout: Duration,
    /// Largest request body accepted (HTTP 413 beyond).
    #[arg(long, value_name = "SIZE", value_parser = size_arg, default_value = "1M")]
    max_input: u64,
    /// Largest response a guest may produce (HTTP 502 beyond).
    #[arg(long, value_name = "SIZE", value_parser = size_arg, default_value = "16M")]
    max_output: u64,
    /// The guest image (a static ELF built by xos-cc, or @NAME).
    file: String,
    /// Arguments passed to the guest (after `--`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

#[derive(Args)]
struct SnapshotArgs {
    #[command(flatten)]
    guest: GuestOptions,
    /// Stop the guest if it has not reached its ready point after this long.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    timeout: Option<Duration>,
    /// Where to write the snapshot.
    #[arg(short, long, value_name = "SNAPSHOT")]
    output: PathBuf,
    /// The guest image (it must call xos_ready()).
    file: String,
    /// Arguments passed to the guest (after `--`); they are part of the snapshot.
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

const PROCESS_IC: &str = xos_vmm::PROCESS_IC_ARG;

/// The registry, with this program as the process factory's helper.
fn registry() -> Registry {
    xos_vmm::binary_registry()
}

/// `xos-vmm selftest ept-view`: TAP on stdout, exit 1 if a check failed.
fn selftest(switching: &str) -> Result<ExitCode, Failure> {
    let switching = xos_vmm::selftest::parse_switching(switching)
        .map_err(|e| Failure::from(anyhow::anyhow!(e)))?;
    println!(
        "# ept-view pairs switch: {}",
        switching.map_or(
            "auto (VMFUNC if vmfunc-kmod is usable, else memory slots)".to_string(),
            |s| format!("{s:?}")
        )
    );
    let checks = xos_vmm::selftest::ept_view(switching);
    Ok(if xos_vmm::selftest::print_tap(&checks) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new(PROCESS_IC)) {
        xos_vmm::icf::process::child::main(args.collect());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("XOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Snapshot(args) => snapshot(args),
        Command::Serve(args) => serve(args),
        Command::Icfs { com, remeasure } => icfs(com, remeasure),
        Command::Images => images(),
        Command::Selftest { switching, .. } => selftest(&switching),
        Command::CgiBaseline { listen, program } => cgi_baseline(listen, &program),
        Command::Bench(args) => xos_vmm::bench::main(&args)
            .map(|()| ExitCode::SUCCESS)
            .map_err(Failure::from),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            note!("xos-vmm: {:#}", f.error);
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

fn resolve(
    registry: &Registry,
    icf: &str,
) -> Result<std::sync::Arc<dyn IsolationContextFactory>, Failure> {
    registry.resolve(icf).map_err(|e| match e {
        RegistryError::Unknown { .. } => usage(e),
        _ => Failure::from(e),
    })
}

/// The IC spec for an image file (or @NAME) with the command line's options.
fn spec_for(
    file: &str,
    mem: Option<u64>,
    timeout: Option<Duration>,
    env: Vec<String>,
    args: Vec<OsString>,
) -> Result<IcSpec, Failure> {
    let (program, argv0) = load(file)?;
    let mut spec = IcSpec::new(program);
    if let Some(mem) = mem {
        xos_vmm::vmm::memory::checked_size(mem).map_err(usage)?;
        spec.mem_size = mem;
    }
    spec.timeout = timeout;
    spec.args = std::iter::once(argv0.into_bytes())
        .chain(args.into_iter().map(OsStringExt::into_vec))
        .collect();
    if let Some(entry) = env.iter().find(|e| !e.contains('=')) {
        return Err(usage(anyhow::anyhow!("--env {entry}: expected KEY=VALUE")));
    }
    spec.env = env.into_iter().map(String::into_bytes).collect();
    Ok(spec)
}

/// Maps a failed IC operation to an exit code: problems with what the user
/// gave (an image too large for --mem, arguments too long, a bad snapshot,
/// a guest without a ready point) are usage errors (2), the rest host
/// failures (1).
fn ic_failure(what: &str, e: IcfError) -> Failure {
    use xos_vmm::vmm::RunError;
    match e {
        // Host-side I/O and memory failures are not the user's input.
        IcfError::Run(RunError::Layout(
            e @ (xos_vmm::vmm::layout::LayoutError::Stdin(_)
            | xos_vmm::vmm::layout::LayoutError::Write { .. }),
        )) => Failure::from(anyhow::anyhow!(e)),
        IcfError::Run(RunError::Layout(e)) => usage(anyhow::anyhow!("{what}: {e}")),
        IcfError::Snapshot(e) | IcfError::Run(RunError::Snapshot(e)) => {
            usage(anyhow::anyhow!("{what}: {e}"))
        }
        e @ IcfError::NotReady { .. } => usage(anyhow::anyhow!("{what}: {e}")),
        e => Failure::from(e),
    }
}

fn cgi_baseline(
    listen: std::net::SocketAddr,
    program: &std::path::Path,
) -> Result<ExitCode, Failure> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    note!(
        "xos-vmm: process per request for {} on http://{}",
        program.display(),
        listener.local_addr()?
    );
    xos_vmm::bench::cgi::serve(listener, program)?;
    Ok(ExitCode::SUCCESS)
}

fn serve(args: ServeArgs) -> Result<ExitCode, Failure> {
    use xos_vmm::serve::{serve, shutdown_signal, Backend, ServeConfig};
    let registry = registry();
    resolve(&registry, &args.guest.icf)?;
    let spec = spec_for(&args.file, args.guest.mem, None, args.guest.env, args.args)?;
    if args.instances == 0 {
        return Err(usage(anyhow::anyhow!("--instances must be at least 1")));
    }
    let function = xos_vmm::Function::from_program(spec.program.clone())
        .and_then(|f| f.on(&registry, &args.guest.icf))
        .map_err(Failure::from)?
        .args(spec.args)
        .env(spec.env)
        .mem(spec.mem_size)
        .timeout(args.timeout)
        .output_limit(args.max_output);
    let backend = Backend::for_function(&function, args.instances).map_err(|e| match e {
        xos_vmm::Error::Icf(e) => ic_failure(&args.file, e),
        e => Failure::from(e),
    })?;
    let how = backend.describe();
    let config = ServeConfig {
        listen: args.listen,
        max_input: usize::try_from(args.max_input).unwrap_or(usize::MAX),
        instances: args.instances,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    let file = args.file.clone();
    runtime
        .block_on(serve(backend, config, shutdown_signal(), |addr| {
            note!("xos-vmm: serving {file} on http://{addr} ({how})");
        }))
        .with_context(|| format!("cannot serve on {}", args.listen))?;
    note!("xos-vmm: stopped; in-flight requests finished");
    Ok(ExitCode::SUCCESS)
}

fn snapshot(args: SnapshotArgs) -> Result<ExitCode, Failure> {
    let registry = registry();
    let factory = resolve(&registry, &args.guest.icf)?;
    let spec = spec_for(
        &args.file,
        args.guest.mem,
        args.timeout,
        args.guest.env,
        args.args,
    )?;
    let ic = factory.create(spec)?;
    let state = ic.dump().map_err(|e| ic_failure(&args.file, e))?;
    std::fs::write(&args.output, &state)
        .with_context(|| format!("cannot write the snapshot to {}", args.output.display()))?;
    note!(
        "xos-vmm: {}: snapshot at the ready point written to {} ({} bytes)",
        args.file,
        args.output.display(),
        state.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let registry = registry();
    let factory = resolve(&registry, &args.guest.icf)?;
    let (mut ic, what) = match (&args.from_snapshot, args.file) {
        (Some(path), file) => {
            if file.is_some() || !args.args.is_empty() {
                return Err(usage(anyhow::anyhow!(
                    "no image or arguments can be given with --from-snapshot: they are part of the snapshot"
                )));
            }
            let what = path.display().to_string();
            let bytes = std::fs::read(path)
                .map_err(|e| usage(anyhow::anyhow!("{what}: cannot read the snapshot: {e}")))?;
            let ic = factory.restore(&bytes).map_err(|e| ic_failure(&what, e))?;
            (ic, what)
        }
        (None, Some(file)) => {
            let spec = spec_for(
                &file,
                args.guest.mem,
                args.timeout,
                args.guest.env,
                args.args,
            )?;
            (factory.create(spec)?, file)
        }
        (None, None) => {
            return Err(usage(anyhow::anyhow!(
                "give an image FILE or --from-snapshot"
            )))
        }
    };
    ic.set_timeout(args.timeout);
    let outcome = ic
        .run(GuestIo::inherit())
        .map_err(|e| ic_failure(&what, e))?;
    if args.stats {
        note!(
            "xos-vmm: {} exits, {} hypercalls, guest time {:?}",
            outcome.stats.exits,
            outcome.stats.hypercalls,
            outcome.guest_time
        );
    }
    match &outcome.exit {
        GuestExit::Exited(_) => {}
        other => note!("xos-vmm: {what}: {other}"),
    }
    Ok(ExitCode::from(outcome.exit.exit_code().clamp(0, 255) as u8))
}

fn icfs(com: bool, remeasure: bool) -> Result<ExitCode, Failure> {
    let registry = registry();
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
        if let Some(mode) = &info.mode {
            println!("{:<10} {:<12} mode: {mode}", "", "");
        }
    }
    if com {
        let report =
            xos_vmm::com_costs::costs(&registry, remeasure, &mut |line| note!("xos-vmm: {line}"));
        if report.from_cache {
            if let Some(p) = &report.cache {
                note!(
                    "xos-vmm: costs from {} (--remeasure to measure again)",
                    p.display()
                );
            }
        }
        println!();
        println!(
            "{:<10} {:<10} {:<12} {:>12}  {:<6}  HOW",
            "KIND A", "KIND B", "MECHANISM", "COST/CALL", "CHOSEN"
        );
        for (a, b, mechanisms) in registry.com().pairs() {
            let chosen = registry
                .com()
                .choose(a, b, &report.costs, None)
                .ok()
                .map(|c| c.mechanism);
            for &m in mechanisms {
                let cost = report.costs.get(a, b, m).map_or_else(
                    || "unmeasured".to_owned(),
                    |c| format!("{:.2} µs", c.as_nanos() as f64 / 1000.0),
                );
                let mark = if chosen == Some(m) { "*" } else { "" };
                println!(
                    "{a:<10} {b:<10} {:<12} {cost:>12}  {mark:<6}  {}",
                    m.name(),
                    m.description()
                );
            }
        }
        for (a, b, m, why) in &report.unmeasured {
            note!("xos-vmm: {a} <-> {b} over {} not measured: {why}", m.name());
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
