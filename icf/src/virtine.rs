//! The virtine factory: every run of an IC happens in a fresh micro-VM
//! (one vCPU, guest code at CPL3, the xos hypercall ABI), created when the
//! run starts and torn down off the caller's path when it ends.
//!
//! A virtine starts either from its image or from a snapshot taken at the
//! guest's ready point (`ic_dump` takes one, `ic_restore` reads one), so
//! initialisation is paid once.

use crate::channel::ring::GuestEnd;
use crate::error::IcfError;
use crate::factory::{
    Availability, IcSpec, IsolationContext, IsolationContextFactory, ProcessImage,
};
use std::sync::Arc;
use vmm::pivot::EfState;
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
        let program = spec.program.clone();
        Ok(Box::new(Virtine::with_start(Start::Image(program), spec)?))
    }

    fn convert_from_process(
        &self,
        image: ProcessImage,
    ) -> Result<Box<dyn IsolationContext>, IcfError> {
        if let Availability::Unavailable(reason) = self.init() {
            return Err(IcfError::Unavailable { icf: NAME, reason });
        }
        image.validate()?;
        let start = Start::Pivot(Box::new(image.state.with_code(&image.spec.program)));
        Ok(Box::new(Virtine::with_start(start, image.spec)?))
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
    /// Where an execution flow carried over from another IC stopped.
    Pivot(Box<EfState>),
}

/// One virtine IC.
pub struct Virtine {
    start: Start,
    config: RunConfig,
    interrupter: Interrupter,
    /// The ring side behind the channel window, closed after every run.
    window_end: Option<GuestEnd>,
    /// Its virtio channel device, if any.
    virtio: Option<Arc<crate::channel::virtio::VirtioChannel>>,
    /// The image the execution flow came from (none from a snapshot).
    program: Option<vmm::Program>,
    /// The execution flow, when the last run stopped at a safe point.
    stopped_at: Option<Box<EfState>>,
}

impl Virtine {
    fn with_start(start: Start, spec: IcSpec) -> Result<Virtine, IcfError> {
        let window = spec
            .window
            .as_ref()
            .map(|end| end.window())
            .transpose()
            .map_err(vmm::RunError::from)?;
        Ok(Virtine {
            config: RunConfig {
                mem_size: spec.mem_size,
                args: spec.args,
                env: spec.env,
                timeout: spec.timeout,
                host_functions: spec.host_functions,
                output_limit: spec.output_limit,
                window,
                device: spec.virtio.as_ref().map(|v| v.device()),
                ..RunConfig::default()
            },
            start,
            interrupter: Interrupter::new(),
            window_end: spec.window,
            virtio: spec.virtio,
            program: Some(spec.program),
            stopped_at: None,
        })
    }

    /// A virtine whose runs start from `snapshot`; of `config` only the
    /// timeout, host functions and seccomp setting apply.
    pub fn from_snapshot(snapshot: Arc<Snapshot>, config: RunConfig) -> Self {
        Virtine {
            start: Start::Snapshot(snapshot),
            config,
            interrupter: Interrupter::new(),
            window_end: None,
            virtio: None,
            program: None,
            stopped_at: None,
        }
    }

    /// The guest's state at its ready point: the snapshot it starts from,
    /// or, for a virtine starting from its image, a run up to `READY`
    /// (with empty stdin) captured there.
    pub fn ready_snapshot(&self) -> Result<Arc<Snapshot>, IcfError> {
        let program = match &self.start {
            Start::Snapshot(s) => return Ok(s.clone()),
            Start::Image(p) => p,
            Start::Pivot(_) => {
                return Err(IcfError::Unsupported {
                    icf: NAME,
                    operation: "ic_dump of an execution flow carried over from another IC",
                })
            }
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
            Start::Pivot(state) => {
                vmm::runner::run_from_state(state, &self.config, io, &interrupter)
            }
        };
        self.interrupter = Interrupter::new();
        let mut outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                if let Some(end) = &self.window_end {
                    end.run_ended();
                }
                return Err(e.into());
            }
        };
        self.stopped_at = outcome.pivot.take();
        if let Some(end) = &self.window_end {
            if self.stopped_at.is_some() {
                // The execution flow goes on elsewhere: keep its side open.
                end.run_paused();
            } else {
                end.run_ended();
            }
        }
        Ok(outcome)
    }

    fn into_process_image(self: Box<Self>) -> Result<ProcessImage, IcfError> {
        let (Some(state), Some(program)) = (self.stopped_at, self.program) else {
            return Err(IcfError::NotAtSafePoint { icf: NAME });
        };
        let c = self.config;
        Ok(ProcessImage {
            state: *state,
            spec: IcSpec {
                program,
                mem_size: c.mem_size,
                args: c.args,
                env: c.env,
                timeout: c.timeout,
                host_functions: c.host_functions,
                output_limit: c.output_limit,
                window: self.window_end,
                virtio: self.virtio,
            },
        })
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
