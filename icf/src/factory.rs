//! The interface every isolation context factory implements (the VIC
//! interface of the xOS paper), and the isolation contexts they create.

use crate::error::IcfError;
use std::time::Duration;
use vmm::{GuestIo, HostFunctions, Interrupter, Program, RunOutcome};

/// Whether a factory can be used on this machine, from its `init` probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Ready.
    Available,
    /// Not usable; the reason says what is missing and what to do.
    Unavailable(String),
}

impl Availability {
    /// True when available.
    pub fn is_available(&self) -> bool {
        matches!(self, Availability::Available)
    }
}

/// What an IC is created from: the image and how to run it.
#[derive(Clone, Debug)]
pub struct IcSpec {
    /// The validated image.
    pub program: Program,
    /// Memory limit in bytes.
    pub mem_size: u64,
    /// argv, including argv[0].
    pub args: Vec<Vec<u8>>,
    /// "KEY=VALUE" environment entries.
    pub env: Vec<Vec<u8>>,
    /// Time limit of one run.
    pub timeout: Option<Duration>,
    /// Host functions the IC may call.
    pub host_functions: HostFunctions,
    /// Most output bytes a run may produce (`None`: no limit).
    pub output_limit: Option<u64>,
    /// One end of a ring channel the IC's guest uses through its channel
    /// window (`xos_chan_*` in the C runtime): messages through memory,
    /// no exit per message.
    pub window: Option<crate::channel::ring::GuestEnd>,
    /// A virtio channel device for the guest (VM ICs only: virtine, vm):
    /// the C runtime's `xos_vchan_*` drive it.
    pub virtio: Option<std::sync::Arc<crate::channel::virtio::VirtioChannel>>,
}

impl IcSpec {
    /// A spec with default memory, no arguments beyond argv[0] = "guest",
    /// no time limit and no host functions.
    pub fn new(program: Program) -> Self {
        IcSpec {
            program,
            mem_size: vmm::memory::DEFAULT_MEM_SIZE,
            args: vec![b"guest".to_vec()],
            env: Vec::new(),
            timeout: None,
            host_functions: HostFunctions::new(),
            output_limit: None,
            window: None,
            virtio: None,
        }
    }
}

/// An execution flow in the pivot form used by `mutate`: its state at a
/// safe point (memory and registers, the same for every kind because every
/// kind lays the guest out at the same addresses) and how its IC ran (its
/// original image, limits, host functions, channel window), which the next
/// IC takes over.
#[derive(Clone, Debug)]
pub struct ProcessImage {
    /// Memory and registers at the safe point.
    pub state: vmm::pivot::EfState,
    /// How the IC ran.
    pub spec: IcSpec,
}

impl IcSpec {
    /// Refuses a virtio device for a kind that is not a VM.
    pub fn check_no_virtio(&self, icf: &'static str) -> Result<(), IcfError> {
        match self.virtio {
            Some(_) => Err(IcfError::Unsupported {
                icf,
                operation: "a virtio device (only VM ICs, virtine and vm, have devices)",
            }),
            None => Ok(()),
        }
    }
}

impl ProcessImage {
    /// Checks the state (every region in guest user memory) and that it
    /// fits the spec's memory size: a state can come from a process IC's
    /// helper, whose guest could have written it.
    pub fn validate(&self) -> Result<(), IcfError> {
        self.state.validate().map_err(vmm::RunError::from)?;
        let spec_size = vmm::memory::checked_size(self.spec.mem_size)
            .map_err(|e| vmm::RunError::from(vmm::machine::MachineError::from(e)))?;
        if spec_size != self.state.mem_size {
            return Err(vmm::RunError::from(vmm::pivot::PivotError::Invalid(format!(
                "it has {} bytes of memory, its IC had {spec_size}",
                self.state.mem_size
            )))
            .into());
        }
        Ok(())
    }
}

/// One isolation context: an instance of an isolation domain in which an
/// execution flow runs.
pub trait IsolationContext: Send {
    /// The kind (the name of the factory that created it).
    fn kind(&self) -> &'static str;

    /// Runs the IC's execution flow until it ends, with `io` as its
    /// standard streams.
    fn run(&mut self, io: GuestIo) -> Result<RunOutcome, IcfError>;

    /// A handle that stops the running execution flow from another thread.
    fn interrupter(&self) -> Interrupter;

    /// Limits each later run to `timeout` (`None`: no limit).
    fn set_timeout(&mut self, timeout: Option<Duration>);

    /// Replaces the host functions the IC's execution flow may call.
    fn set_host_functions(&mut self, functions: HostFunctions);

    /// `ic_switch_in`: the scheduler is putting an execution flow of this IC
    /// on a CPU. Kinds whose CPUs the host kernel schedules need nothing.
    fn switch_in(&mut self) -> Result<(), IcfError> {
        Ok(())
    }

    /// `ic_switch_out`: the scheduler took an execution flow of this IC off
    /// a CPU.
    fn switch_out(&mut self) -> Result<(), IcfError> {
        Ok(())
    }

    /// The `mutate` pivot's source: the execution flow, if the IC's last
    /// run ended at a safe point ([`vmm::GuestExit::SafePoint`]).
    fn into_process_image(self: Box<Self>) -> Result<ProcessImage, IcfError> {
        Err(IcfError::Unsupported {
            icf: self.kind(),
            operation: "mutate to process",
        })
    }

    /// `ic_dump`: the IC's complete state as bytes.
    fn dump(&self) -> Result<Vec<u8>, IcfError> {
        Err(IcfError::Unsupported {
            icf: self.kind(),
            operation: "ic_dump",
        })
    }
}

/// A factory of isolation contexts of one kind (`virtine`, `vm`, `process`,
/// ...). Factories register with the [`crate::Registry`].
pub trait IsolationContextFactory: Send + Sync {
    /// The kind's name, as used by `--icf`.
    fn name(&self) -> &'static str;

    /// One line saying what an IC of this kind is.
    fn description(&self) -> &'static str;

    /// `ic_init`: checks that the hardware and kernel features this kind
    /// needs exist. Cheap to call again.
    fn init(&self) -> Availability;

    /// How the factory works on this machine, where it has more than one
    /// way (`xos-vmm icfs` prints it): which mode is in use, and why.
    fn mode(&self) -> Option<String> {
        None
    }

    /// `ic_create`: a new IC from `spec`.
    fn create(&self, spec: IcSpec) -> Result<Box<dyn IsolationContext>, IcfError>;

    /// `ic_restore`: an IC from bytes produced by [`IsolationContext::dump`].
    fn restore(&self, _state: &[u8]) -> Result<Box<dyn IsolationContext>, IcfError> {
        Err(IcfError::Unsupported {
            icf: self.name(),
            operation: "ic_restore",
        })
    }

    /// The `mutate` pivot, outbound: converts an IC of this kind, stopped
    /// at a safe point, into a process image.
    fn convert_to_process(&self, ic: Box<dyn IsolationContext>) -> Result<ProcessImage, IcfError> {
        if ic.kind() != self.name() {
            return Err(IcfError::WrongKind {
                expected: self.name(),
                got: ic.kind(),
            });
        }
        ic.into_process_image()
    }

    /// The `mutate` pivot, inbound: an IC of this kind from a process
    /// image; its first run continues the execution flow where it stopped
    /// (its `xos_safe_point()` returns 1).
    fn convert_from_process(
        &self,
        _image: ProcessImage,
    ) -> Result<Box<dyn IsolationContext>, IcfError> {
        Err(IcfError::Unsupported {
            icf: self.name(),
            operation: "mutate from process",
        })
    }
}
