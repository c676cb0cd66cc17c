//! The virtine factory: every run of an IC happens in a fresh micro-VM
//! (one vCPU, guest code at CPL3, the xos hypercall ABI), created when the
//! run starts and torn down off the caller's path when it ends.

use crate::error::IcfError;
use crate::factory::{Availability, IcSpec, IsolationContext, IsolationContextFactory};
use vmm::{GuestIo, Interrupter, RunConfig, RunOutcome};

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
        Ok(Box::new(Virtine {
            config: RunConfig {
                mem_size: spec.mem_size,
                args: spec.args,
                env: spec.env,
                timeout: spec.timeout,
                host_functions: spec.host_functions,
                seccomp: true,
            },
            program: spec.program,
            interrupter: Interrupter::new(),
        }))
    }
}

/// One virtine IC.
pub struct Virtine {
    program: vmm::Program,
    config: RunConfig,
    interrupter: Interrupter,
}

impl IsolationContext for Virtine {
    fn kind(&self) -> &'static str {
        NAME
    }

    fn run(&mut self, io: GuestIo) -> Result<RunOutcome, IcfError> {
        // A fresh handle per run: a kill aimed at an earlier run must not
        // stop this one.
        let interrupter = std::mem::take(&mut self.interrupter);
        let result = vmm::run_program(&self.program, &self.config, io, &interrupter);
        self.interrupter = Interrupter::new();
        Ok(result?)
    }

    fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }
}
