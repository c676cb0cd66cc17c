//! xos-vmm: a KVM virtual machine monitor with pluggable isolation (the
//! xOS Virtual Isolation Context layer).
//!
//! This crate is the facade other programs embed, and the `xos-vmm`
//! command line. The pieces:
//! - [`vmm`]: the monitor (KVM, guest memory, ELF loading, exits,
//!   hypercalls, seccomp);
//! - [`icf`]: the VIC layer (factories, registry, communication table);
//! - [`Function`]: the embedding API: load a guest function once, call it
//!   many times, each call in a fresh isolation context.
//!
//! Load a function once, then serve calls from a bounded warm pool: each
//! call runs in an instance restored at the guest's ready point and reset
//! after it (this runs in the test suite, on real KVM):
//!
//! ```
//! use std::time::Duration;
//! use xos_vmm::Function;
//! # if !xos_vmm::vmm::kvm::available_for_tests() { return Ok(()); }
//! // Any static image built with xos-cc works; this one ships with xos-vmm.
//! let image = xos_images::find("ready-c").expect("built-in example");
//! let pool = Function::from_elf(image.bytes)?
//!     .timeout(Duration::from_secs(1))
//!     .output_limit(1 << 20)
//!     .pool(2)?;
//! let result = pool.call(b"hello")?;
//! assert_eq!(
//!     result.stdout,
//!     b"inits=1 restored=1 table=68933650521 input=HELLO\n"
//! );
//!
//! // Host functions the guest may call by name (bytes in, bytes out).
//! let secret = xos_images::find("secret-c").expect("built-in example");
//! let f = Function::from_elf(secret.bytes)?
//!     .host_fn("shout", |input| Ok(input.to_ascii_uppercase()));
//! let result = f.call(b"call shout")?;
//! assert_eq!(result.stdout, b"ret=0 out=\n"); // "shout" got empty input
//! # Ok::<(), xos_vmm::Error>(())
//! ```
#![deny(missing_docs)]

pub mod bench;
pub mod com_costs;
pub mod selftest;
pub mod serve;
pub mod units;

pub use icf;
pub use vmm;

/// The hidden first argument that turns the `xos-vmm` binary into a process
/// IC (see `icf::process`).
pub const PROCESS_IC_ARG: &str = "__process-ic";

/// The registry of the `xos-vmm` binary: every built-in factory, with this
/// executable (run as `EXE __process-ic`) as the process factory's helper.
/// Only meaningful inside the `xos-vmm` binary, whose `main` answers that
/// argument; other embedders pass their own helper to
/// [`Registry::with_process_helper`].
pub fn binary_registry() -> Registry {
    let helper = std::env::current_exe()
        .ok()
        .map(|program| icf::process::Helper {
            program,
            args: vec![PROCESS_IC_ARG.into()],
        });
    Registry::with_process_helper(helper)
}

use icf::{IcSpec, IsolationContext, IsolationContextFactory, Registry, RegistryError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vmm::{GuestExit, GuestIo, Program};

/// Errors of the embedding API. Messages name the file and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image file could not be read.
    #[error("{}: {}", path.display(), describe_io(source))]
    ReadImage {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The image is not a valid guest image.
    #[error("{}: {source}", path.display())]
    BadImage {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// What is wrong.
        source: vmm::ImageError,
    },
    /// The factory could not be resolved.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Creating or running the IC failed on the host side.
    #[error(transparent)]
    Icf(#[from] icf::IcfError),
    /// A warm pool failed.
    #[error(transparent)]
    Pool(#[from] vmm::pool::PoolError),
    /// The input is larger than the function's input limit.
    #[error(
        "the input is {len} bytes, more than the {limit}-byte input limit (Function::input_limit)"
    )]
    InputTooLarge {
        /// Input size.
        len: usize,
        /// The limit.
        limit: u64,
    },
    /// A snapshot file is not usable.
    #[error("{}: {source}", path.display())]
    BadSnapshot {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// What is wrong.
        source: vmm::snapshot::SnapshotError,
    },
}

fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "is a directory, not an image file".into(),
        _ => e.to_string(),
    }
}

/// Reads and validates a guest image file.
pub fn load_image(path: &Path) -> Result<Program, Error> {
    let read_err = |source| Error::ReadImage {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.is_dir() {
        return Err(read_err(std::io::Error::from(
            std::io::ErrorKind::IsADirectory,
        )));
    }
    if meta.len() > vmm::loader::MAX_IMAGE_SIZE {
        return Err(Error::BadImage {
            path: path.to_owned(),
            source: vmm::ImageError::TooLarge(meta.len()),
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    Program::parse(bytes).map_err(|source| Error::BadImage {
        path: path.to_owned(),
        source,
    })
}

/// What one call returned.
#[derive(Debug)]
pub struct CallResult {
    /// How the guest ended.
    pub exit: GuestExit,
    /// What it wrote to stdout.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr.
    pub stderr: Vec<u8>,
}

/// A guest function, validated once and called any number of times; each
/// call runs in a fresh isolation context of the chosen kind (by default a
/// virtine), started either from the image or from a snapshot taken at the
/// guest's ready point ([`Function::snapshot_at_ready`]), which pays the
/// guest's initialisation once instead of on every call.
#[derive(Clone)]
pub struct Function {
    factory: Arc<dyn IsolationContextFactory>,
    source: Source,
    timeout: Option<Duration>,
    host_functions: vmm::HostFunctions,
    output_limit: u64,
    input_limit: u64,
}

/// Output a call may produce by default (stdout and stderr together); see
/// [`Function::output_limit`].
pub const DEFAULT_OUTPUT_LIMIT: u64 = 16 << 20;
/// Input a call may take by default; see [`Function::input_limit`].
pub const DEFAULT_INPUT_LIMIT: u64 = 16 << 20;

fn check_input(input: &[u8], limit: u64) -> Result<(), Error> {
    if input.len() as u64 > limit {
        return Err(Error::InputTooLarge {
            len: input.len(),
            limit,
        });
    }
    Ok(())
}

/// Where a function's calls start.
#[derive(Clone)]
enum Source {
    /// The image, with its arguments, environment and memory size.
    Image(IcSpec),
    /// A snapshot at the guest's ready point.
    Snapshot(Arc<vmm::snapshot::Snapshot>),
}

impl Function {
    /// A function from an image in memory.
    pub fn from_elf(bytes: impl Into<Arc<[u8]>>) -> Result<Self, Error> {
        let program = Program::parse(bytes).map_err(|source| Error::BadImage {
            path: PathBuf::from("<memory>"),
            source,
        })?;
        Self::from_program(program)
    }

    /// A function from an image file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::from_program(load_image(path.as_ref())?)
    }

    /// A function from an already validated program.
    pub fn from_program(program: Program) -> Result<Self, Error> {
        Self::with_source(Source::Image(IcSpec::new(program)))
    }

    fn with_source(source: Source) -> Result<Self, Error> {
        Ok(Function {
            factory: Registry::builtin().resolve(icf::virtine::NAME)?,
            source,
            timeout: None,
            host_functions: vmm::HostFunctions::new(),
            output_limit: DEFAULT_OUTPUT_LIMIT,
            input_limit: DEFAULT_INPUT_LIMIT,
        })
    }

    /// A function from a snapshot file's contents (`xos-vmm snapshot`,
    /// [`Function::snapshot_bytes`]); calls continue at the guest's ready
    /// point in a fresh virtine. Arguments, environment and memory size are
    /// the snapshot's: [`Function::args`], [`Function::env`] and
    /// [`Function::mem`] do not change them.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, Error> {
        Self::snapshot_from(bytes, Path::new("<memory>"))
    }

    /// A function from a snapshot file.
    pub fn from_snapshot_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::ReadImage {
            path: path.to_owned(),
            source,
        })?;
        Self::snapshot_from(&bytes, path)
    }

    fn snapshot_from(bytes: &[u8], path: &Path) -> Result<Self, Error> {
        let snapshot =
            vmm::snapshot::Snapshot::decode(bytes).map_err(|source| Error::BadSnapshot {
                path: path.to_owned(),
                source,
            })?;
        Self::with_source(Source::Snapshot(Arc::new(snapshot)))
    }

    /// Runs the function once up to its ready point (`xos_ready()` /
    /// `xos_guest::ready()`) and returns a function whose calls start
    /// there, with the same time limit and host functions. Fails if the
    /// guest ends before it gets there.
    pub fn snapshot_at_ready(&self) -> Result<Self, Error> {
        let mut f = Self::with_source(Source::Snapshot(self.ready_snapshot()?))?;
        f.timeout = self.timeout;
        f.host_functions = self.host_functions.clone();
        f.output_limit = self.output_limit;
        f.input_limit = self.input_limit;
        Ok(f)
    }

    /// The guest's state at its ready point: the snapshot this function
    /// starts from, or one taken by running it there.
    fn ready_snapshot(&self) -> Result<Arc<vmm::snapshot::Snapshot>, Error> {
        let spec = match &self.source {
            Source::Snapshot(s) => return Ok(s.clone()),
            Source::Image(spec) => spec,
        };
        let mut spec = spec.clone();
        spec.timeout = self.timeout;
        spec.host_functions = self.host_functions.clone();
        let ic = icf::virtine::VirtineFactory.create(spec)?;
        let state = ic.dump()?;
        let snapshot =
            vmm::snapshot::Snapshot::decode(&state).map_err(|source| Error::BadSnapshot {
                path: PathBuf::from("<memory>"),
                source,
            })?;
        Ok(Arc::new(snapshot))
    }

    /// The snapshot calls start from, in the file format, if this function
    /// starts from one.
    pub fn snapshot_bytes(&self) -> Option<Vec<u8>> {
        match &self.source {
            Source::Snapshot(s) => Some(s.encode()),
            Source::Image(_) => None,
        }
    }

    /// Uses the factory named `icf` from `registry` instead of virtines
    /// (for functions that start from an image).
    pub fn on(mut self, registry: &Registry, icf: &str) -> Result<Self, Error> {
        self.factory = registry.resolve(icf)?;
        Ok(self)
    }

    fn spec_mut(&mut self) -> Option<&mut IcSpec> {
        match &mut self.source {
            Source::Image(spec) => Some(spec),
            Source::Snapshot(_) => None,
        }
    }

    /// Sets argv (argv[0] included).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Vec<u8>>,
    {
        if let Some(spec) = self.spec_mut() {
            spec.args = args.into_iter().map(Into::into).collect();
        }
        self
    }

    /// Sets the environment ("KEY=VALUE" entries).
    pub fn env<I, S>(mut self, env: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Vec<u8>>,
    {
        if let Some(spec) = self.spec_mut() {
            spec.env = env.into_iter().map(Into::into).collect();
        }
        self
    }

    /// Sets the memory limit in bytes (rounded up to 2 MiB; 4 MiB..16 GiB).
    pub fn mem(mut self, bytes: u64) -> Self {
        if let Some(spec) = self.spec_mut() {
            spec.mem_size = bytes;
        }
        self
    }

    /// Ends a call whose guest writes more than `bytes` of output (stdout
    /// and stderr together; default [`DEFAULT_OUTPUT_LIMIT`]) with a fault:
    /// output is collected in memory, so a guest must not be able to
    /// exhaust the embedder's.
    pub fn output_limit(mut self, bytes: u64) -> Self {
        self.output_limit = bytes;
        self
    }

    /// Refuses calls whose input is larger than `bytes` (default
    /// [`DEFAULT_INPUT_LIMIT`]) with [`Error::InputTooLarge`], before
    /// anything runs.
    pub fn input_limit(mut self, bytes: u64) -> Self {
        self.input_limit = bytes;
        self
    }

    /// Stops a call that runs longer than `limit`.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Offers a host function the guest may call by name (`HOST_CALL`).
    /// It runs on the vCPU thread, under its seccomp filter.
    pub fn host_fn<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    {
        self.host_functions.register(name, f);
        self
    }

    /// Calls the function with `input` as its stdin, in a fresh IC.
    pub fn call(&self, input: &[u8]) -> Result<CallResult, Error> {
        check_input(input, self.input_limit)?;
        let mut ic: Box<dyn IsolationContext> = match &self.source {
            Source::Snapshot(snapshot) => Box::new(icf::virtine::Virtine::from_snapshot(
                snapshot.clone(),
                vmm::RunConfig {
                    output_limit: Some(self.output_limit),
                    ..vmm::RunConfig::default()
                },
            )),
            Source::Image(spec) => {
                let mut spec = spec.clone();
                spec.output_limit = Some(self.output_limit);
                self.factory.create(spec)?
            }
        };
        ic.set_timeout(self.timeout);
        ic.set_host_functions(self.host_functions.clone());
        let (io, stdout, stderr) = GuestIo::capture(input.to_vec());
        let outcome = ic.run(io)?;
        Ok(CallResult {
            exit: outcome.exit,
            stdout: stdout.take(),
            stderr: stderr.take(),
        })
    }
}

impl Function {
    /// A pool of at most `max_instances` warm instances of this function,
    /// shared by any number of caller threads: each call runs in an
    /// instance restored at the guest's ready point and reset there after
    /// the call, so nothing of one call reaches the next. A function that
    /// starts from its image is first run to its ready point
    /// ([`Function::snapshot_at_ready`]).
    pub fn pool(&self, max_instances: usize) -> Result<FunctionPool, Error> {
        let snapshot = self.ready_snapshot()?;
        let config = vmm::pool::PoolConfig {
            max_instances,
            timeout: self.timeout,
            host_functions: self.host_functions.clone(),
            output_limit: Some(self.output_limit),
        };
        Ok(FunctionPool {
            pool: vmm::pool::WarmPool::new(snapshot, config)?,
            input_limit: self.input_limit,
        })
    }
}

/// A bounded pool of warm instances of a [`Function`] ([`Function::pool`]).
pub struct FunctionPool {
    pool: vmm::pool::WarmPool,
    input_limit: u64,
}

impl FunctionPool {
    /// Calls the function with `input` as its stdin in a warm instance.
    pub fn call(&self, input: &[u8]) -> Result<CallResult, Error> {
        self.call_with(input, &vmm::Interrupter::new())
    }

    /// Like [`FunctionPool::call`]; `kill` stops the call from another
    /// thread, also while the guest waits in a host function. Use a new
    /// interrupter for every call.
    pub fn call_with(&self, input: &[u8], kill: &vmm::Interrupter) -> Result<CallResult, Error> {
        check_input(input, self.input_limit)?;
        let o = self.pool.call_with(input, kill)?;
        Ok(CallResult {
            exit: o.exit,
            stdout: o.stdout,
            stderr: o.stderr,
        })
    }

    /// Instances alive now.
    pub fn instances(&self) -> usize {
        self.pool.instances()
    }
}
