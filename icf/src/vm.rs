//! The `vm` factory: an IC is one long-lived VM (`vmm::vm`), booted when
//! the IC is created and kept until it is dropped. Its execution flow keeps
//! running across runs: a run ends at the guest's exit, or at a safe point
//! or its ready point, after which the next run continues it in the same
//! VM. Where a virtine pays a VM per call, a VM IC pays it once; it is the
//! kind that will host a guest kernel.

use crate::channel::ring::GuestEnd;
use crate::error::IcfError;
use crate::factory::{
    Availability, IcSpec, IsolationContext, IsolationContextFactory, ProcessImage,
};
use vmm::pivot::EfState;
use vmm::vm::{BootSource, LongLivedVm};
use vmm::{GuestIo, Interrupter, RunConfig, RunOutcome};

/// Name of the kind.
pub const NAME: &str = "vm";

/// Creates VM ICs.
#[derive(Clone, Copy, Debug, Default)]
pub struct VmFactory;

impl IsolationContextFactory for VmFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "a long-lived VM booted at create: its execution flow keeps running across runs (one vCPU, CPL3)"
    }

    fn init(&self) -> Availability {
        match vmm::kvm::probe() {
            Ok(()) => Availability::Available,
            Err(e) => Availability::Unavailable(e.to_string()),
        }
    }

    fn create(&self, spec: IcSpec) -> Result<Box<dyn IsolationContext>, IcfError> {
        let program = spec.program.clone();
        Ok(Box::new(VmIc::boot(BootSource::Image(&program), spec)?))
    }

    fn convert_from_process(
        &self,
        image: ProcessImage,
    ) -> Result<Box<dyn IsolationContext>, IcfError> {
        image.validate()?;
        let ProcessImage { state, spec } = image;
        let state = state.with_code(&spec.program);
        Ok(Box::new(VmIc::boot(BootSource::State(&state), spec)?))
    }
}

/// One VM IC.
pub struct VmIc {
    vm: Option<LongLivedVm>,
    spec: IcSpec,
    config: RunConfig,
    interrupter: Interrupter,
    /// The execution flow, when the last run stopped at a safe point.
    stopped_at: Option<Box<EfState>>,
}

impl VmIc {
    fn boot(source: BootSource<'_>, spec: IcSpec) -> Result<VmIc, IcfError> {
        if let Availability::Unavailable(reason) = VmFactory.init() {
            return Err(IcfError::Unavailable { icf: NAME, reason });
        }
        let window = spec
            .window
            .as_ref()
            .map(GuestEnd::window)
            .transpose()
            .map_err(vmm::RunError::from)?;
        let config = RunConfig {
            mem_size: spec.mem_size,
            args: spec.args.clone(),
            env: spec.env.clone(),
            timeout: spec.timeout,
            host_functions: spec.host_functions.clone(),
            output_limit: spec.output_limit,
            window,
            device: spec.virtio.as_ref().map(|v| v.device()),
            ..RunConfig::default()
        };
        if let Some(end) = &spec.window {
            end.run_starting(std::process::id());
        }
        let vm = LongLivedVm::boot(source, &config)?;
        Ok(VmIc {
            vm: Some(vm),
            spec,
            config,
            interrupter: Interrupter::new(),
            stopped_at: None,
        })
    }
}

impl IsolationContext for VmIc {
    fn kind(&self) -> &'static str {
        NAME
    }

    fn run(&mut self, io: GuestIo) -> Result<RunOutcome, IcfError> {
        let interrupter = std::mem::take(&mut self.interrupter);
        self.interrupter = Interrupter::new();
        let vm = self.vm.as_ref().ok_or(IcfError::Unsupported {
            icf: NAME,
            operation: "run after its execution flow moved to another IC",
        })?;
        let result = vm.run(io, &self.config, &interrupter);
        let mut outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                if let Some(end) = &self.spec.window {
                    end.run_ended();
                }
                return Err(e.into());
            }
        };
        self.stopped_at = outcome.pivot.take();
        let paused = matches!(
            outcome.exit,
            vmm::GuestExit::SafePoint | vmm::GuestExit::Ready
        );
        if let Some(end) = &self.spec.window {
            if paused {
                end.run_paused();
            } else {
                end.run_ended();
            }
        }
        Ok(outcome)
    }

    fn into_process_image(mut self: Box<Self>) -> Result<ProcessImage, IcfError> {
        let Some(state) = self.stopped_at.take() else {
            return Err(IcfError::NotAtSafePoint { icf: NAME });
        };
        // The execution flow leaves: the VM goes.
        self.vm = None;
        Ok(ProcessImage {
            state: *state,
            spec: self.spec,
        })
    }

    fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    fn set_timeout(&mut self, timeout: Option<std::time::Duration>) {
        self.spec.timeout = timeout;
        self.config.timeout = timeout;
    }

    fn set_host_functions(&mut self, functions: vmm::HostFunctions) {
        self.spec.host_functions = functions.clone();
        self.config.host_functions = functions;
    }
}
