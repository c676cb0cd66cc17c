//! The virtine factory: every run of an IC happens in a fresh micro-VM
//! (one vCPU, guest code at CPL3, the xos hypercall ABI), created when the
//! run starts and torn down off the caller's path when it ends.
//!
//! A virtine starts either from its image or from a snapshot taken at the
//! guest's ready point (`ic_dump` takes one, `ic_restore` reads one), so
//! initialisation is paid once.

use crate::channel::ring::GuestEnd;
use crate::error::IcfError;
use crate::factory::{Availability, IcSpec, IsolationContext, IsolationContextFactory};
use std::sync::Arc;
use vmm::runner::PreparedRun;
use vmm::snapshot::Snapshot;
use vmm::{GuestExit, GuestIo, Interrupter, RunConfig, RunOutcome};

/// Name of the kind.
pub const NAME: &str = "virtine";

/// Creates virtines.
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtineFactory;

impl IsolationContextFactory for VirtineFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "a fresh micro-VM per run: one vCPU, the function at CPL3, hypercalls by MMIO doorbell"
    }

    fn init(&self) -> Availability {
        match vmm::kvm::probe() {
            Ok(()) => Availability::Available,
            Err(e) => Availability::Unavailable(e.to_string()),
        }
    }

    fn create(&self, spec: IcSpec) -> Result<Box<dyn IsolationContext>, IcfError> {
        if let Availability::Unavailable(reason) = self.init() {
            return Err(IcfError::Unavailable { icf: NAME, reason });
        }
        let window = spec
            .window
            .as_ref()
            .map(|end| end.window())
            .transpose()
            .map_err(vmm::RunError::from)?;
        Ok(Box::new(Virtine {
            config: RunConfig {
                mem_size: spec.mem_size,
                args: spec.args,
                env: spec.env,
                timeout: spec.timeout,
                host_functions: spec.host_functions,
                output_limit: spec.output_limit,
                window,
                ..RunConfig::default()
            },
            start: Start::Image(spec.program),
            interrupter: Interrupter::new(),
            window_end: spec.window,
        }))
    }

    fn restore(&self, state: &[u8]) -> Result<Box<dyn IsolationContext>, IcfError> {
        let snapshot = Snapshot::decode(state)?;
        Ok(Box::new(Virtine::from_snapshot(
            Arc::new(snapshot),
            RunConfig::default(),
        )))
    }
}

/// Where a virtine's runs start.
enum Start {
    /// From the image's entry point.
    Image(vmm::Program),
    /// From a snapshot taken at the guest's ready point.
    Snapshot(Arc<Snapshot>),
}

/// One virtine IC.
pub struct Virtine {
    start: Start,
    config: RunConfig,
    interrupter: Interrupter,
    /// The ring side behind the channel window, closed after every run.
    window_end: Option<GuestEnd>,
}

impl Virtine {
    /// A virtine whose runs start from `snapshot`; of `config` only the
    /// timeout, host functions and seccomp setting apply.
    pub fn from_snapshot(snapshot: Arc<Snapshot>, config: RunConfig) -> Self {
        Virtine {
            start: Start::Snapshot(snapshot),
            config,
            interrupter: Interrupter::new(),
            window_end: None,
        }
    }

    /// The guest's state at its ready point: the snapshot it starts from,
    /// or, for a virtine starting from its image, a run up to `READY`
    /// (with empty stdin) captured there.
    pub fn ready_snapshot(&self) -> Result<Arc<Snapshot>, IcfError> {
        let program = match &self.start {
            Start::Snapshot(s) => return Ok(s.clone()),
            Start::Image(p) => p,
        };
        let config = RunConfig {
            stop_at_ready: true,
            ..self.config.clone()
        };
        let (io, _stdout, stderr) = GuestIo::capture(Vec::new());
        let outcome = vmm::run_program(program, &config, io, &Interrupter::new())?;
        match (outcome.exit, outcome.snapshot) {
            (GuestExit::Ready, Some(snapshot)) => Ok(Arc::from(snapshot)),
            (exit, _) => Err(IcfError::NotReady {
                exit: Box::new(exit),
                stderr: String::from_utf8_lossy(&stderr.take()).into_owned(),
            }),
        }
    }
}

impl IsolationContext for Virtine {
    fn kind(&self) -> &'static str {
        NAME
    }

    fn run(&mut self, io: GuestIo) -> Result<RunOutcome, IcfError> {
        // A fresh handle per run: a kill aimed at an earlier run must not
        // stop this one.
        let interrupter = std::mem::take(&mut self.interrupter);
        if let Some(end) = &self.window_end {
            end.run_starting(std::process::id());
        }
        let result = match &self.start {
            Start::Image(program) => vmm::run_program(program, &self.config, io, &interrupter),
            Start::Snapshot(snapshot) => PreparedRun::from_snapshot(snapshot, &self.config, io)
                .and_then(|run| run.run(&interrupter)),
        };
        self.interrupter = Interrupter::new();
        if let Some(end) = &self.window_end {
            end.run_ended();
        }
        Ok(result?)
    }

    fn dump(&self) -> Result<Vec<u8>, IcfError> {
        Ok(self.ready_snapshot()?.encode())
    }

    fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    fn set_timeout(&mut self, timeout: Option<std::time::Duration>) {
        self.config.timeout = timeout;
    }

    fn set_host_functions(&mut self, functions: vmm::HostFunctions) {
        self.config.host_functions = functions;
    }
}
