//! The `ept-view` factory: ICs as EPT views of one VM (`vmm::view_host`).
//! Each IC has its own image, memory and registers; ICs of one VM share
//! its vCPU, so they run one at a time, and two connected ICs call each
//! other through the trampoline, the vCPU moving into the callee's memory
//! for the call ([`EptViewFactory::create_pair`], mechanism `view-call`).
//!
//! Where the CPU has VMFUNC and `vmfunc-kmod` is loaded, a pair's switch
//! is one `VMFUNC` instruction, no exit; elsewhere it is the fallback: an
//! exit and a memory-slot switch each way. The factory says which and why
//! in [`IsolationContextFactory::mode`].

use crate::channel::ring::GuestEnd;
use crate::error::IcfError;
use crate::factory::{
    Availability, IcSpec, IsolationContext, IsolationContextFactory, ProcessImage,
};
use std::sync::Arc;
use vmm::pivot::EfState;
use vmm::view::Switching;
use vmm::view_host::{ViewHost, ViewHostError, ViewSource};
use vmm::{GuestIo, Interrupter, RunConfig, RunOutcome};

/// Name of the kind.
pub const NAME: &str = "ept-view";

/// A connected pair: the caller's IC, then the callee's.
pub type IcPair = (Box<dyn IsolationContext>, Box<dyn IsolationContext>);

/// Creates EPT-view ICs: a standalone IC is the one view of its VM, a
/// connected pair the two views of one VM. ICs of one VM share its vCPU
/// and run one at a time, so ICs that could wait for each other by other
/// means (a channel window) never share one.
#[derive(Clone, Copy, Debug, Default)]
pub struct EptViewFactory;

/// Why the fallback is in use.
fn why_no_vmfunc() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    if !flags.split_whitespace().any(|f| f == "vmx") {
        let vendor = cpuinfo
            .lines()
            .find(|l| l.starts_with("vendor_id"))
            .and_then(|l| l.split(':').nth(1))
            .map_or("unknown", str::trim)
            .to_owned();
        return format!(
            "this CPU ({vendor}) shows no VMX to this kernel, and VMFUNC is an Intel VMX feature"
        );
    }
    match vmm::vmfunc::VmfuncDevice::open() {
        Err(e) => e.to_string(),
        Ok(device) if device.info().missing != 0 => format!(
            "vmfunc-kmod is loaded but this CPU lacks EPTP switching (missing capability bits {:#x})",
            device.info().missing
        ),
        Ok(_) => "vmfunc-kmod is loaded and usable".to_owned(),
    }
}

impl EptViewFactory {
    fn check(spec: &IcSpec) -> Result<(), IcfError> {
        if let Availability::Unavailable(reason) = vmm::kvm::probe()
            .map(|()| Availability::Available)
            .unwrap_or_else(|e| Availability::Unavailable(e.to_string()))
        {
            return Err(IcfError::Unavailable { icf: NAME, reason });
        }
        // Only the trampoline may switch views. (W^X page tables, which
        // keep a guest from writing the bytes at run time, come next.)
        spec.program.refuse_vmfunc()?;
        spec.check_no_virtio(NAME)
    }

    /// Puts `spec`'s IC, from its image or from a carried-over execution
    /// flow, into a free view of `host`.
    fn place(
        host: &Arc<ViewHost>,
        spec: &IcSpec,
        state: Option<&EfState>,
    ) -> Result<EptViewIc, IcfError> {
        let window = spec
            .window
            .as_ref()
            .map(GuestEnd::window)
            .transpose()
            .map_err(vmm::RunError::from)?;
        let source = match state {
            Some(ef) => ViewSource::State(Box::new(ef.clone())),
            None => ViewSource::Image(spec.program.clone()),
        };
        let view = host
            .add_from(source, &spec.args, &spec.env, window)
            .map_err(vmm::RunError::from)?;
        if let Some(end) = &spec.window {
            end.run_starting(std::process::id());
        }
        Ok(EptViewIc::new(Arc::clone(host), view, spec.clone()))
    }

    fn alone(spec: &IcSpec, state: Option<&EfState>) -> Result<EptViewIc, IcfError> {
        let host = Arc::new(ViewHost::new(1, spec.mem_size, true)?);
        Self::place(&host, spec, state)
    }

    /// Two ICs as views of one VM, `caller` connected to `callee`: the
    /// caller's `xos_view_call` enters the callee's `xos_view_serve`
    /// handler. Run the callee (it parks serving) and the caller, from
    /// two threads or in either order: a call waits until its callee
    /// serves, and the callee's run ends once the caller is gone.
    pub fn create_pair(&self, caller: IcSpec, callee: IcSpec) -> Result<IcPair, IcfError> {
        self.create_pair_switching(caller, callee, None)
    }

    /// [`EptViewFactory::create_pair`] with the views switching as
    /// `switching` says (`None`: `VMFUNC` where `vmfunc-kmod` is usable,
    /// else the fallback; [`Switching::EmulatedVmfunc`] tests the `VMFUNC`
    /// trampoline on machines without VMX).
    pub fn create_pair_switching(
        &self,
        caller: IcSpec,
        callee: IcSpec,
        switching: Option<Switching>,
    ) -> Result<IcPair, IcfError> {
        Self::check(&caller)?;
        Self::check(&callee)?;
        if vmm::memory::checked_size(caller.mem_size).ok()
            != vmm::memory::checked_size(callee.mem_size).ok()
        {
            return Err(IcfError::Unsupported {
                icf: NAME,
                operation:
                    "a pair of views with different memory sizes (views of one VM have one size)",
            });
        }
        let host = Arc::new(ViewHost::with_switching(
            2,
            caller.mem_size,
            true,
            switching,
        )?);
        let a = Self::place(&host, &caller, None)?;
        let b = Self::place(&host, &callee, None)?;
        host.connect(a.view, b.view).map_err(vmm::RunError::from)?;
        Ok((Box::new(a), Box::new(b)))
    }
}

impl IsolationContextFactory for EptViewFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "ICs as EPT views of one VM (own image, memory, registers); connected views call each other through a trampoline (VMFUNC, else an exit and a memory-slot switch)"
    }

    fn init(&self) -> Availability {
        match vmm::kvm::probe() {
            Ok(()) => Availability::Available,
            Err(e) => Availability::Unavailable(e.to_string()),
        }
    }

    fn mode(&self) -> Option<String> {
        Some(match vmm::vmfunc::VmfuncDevice::open_usable() {
            Ok(device) => format!(
                "vmfunc: a pair's views switch with VMFUNC, no exit (vmfunc-kmod ABI {}, {} views per VM); a standalone IC is the one view of its VM",
                device.info().abi_version,
                device.info().max_views
            ),
            Err(_) => format!(
                "fallback: a view switch is an exit and a memory-slot switch, because {}",
                why_no_vmfunc()
            ),
        })
    }

    fn create(&self, spec: IcSpec) -> Result<Box<dyn IsolationContext>, IcfError> {
        Self::check(&spec)?;
        Ok(Box::new(Self::alone(&spec, None)?))
    }

    fn convert_from_process(
        &self,
        image: ProcessImage,
    ) -> Result<Box<dyn IsolationContext>, IcfError> {
        image.validate()?;
        Self::check(&image.spec)?;
        let ProcessImage { state, spec } = image;
        let state = state.with_code(&spec.program);
        Ok(Box::new(Self::alone(&spec, Some(&state))?))
    }
}

/// One EPT-view IC: a view of a shared VM.
pub struct EptViewIc {
    host: Arc<ViewHost>,
    view: usize,
    spec: IcSpec,
    config: RunConfig,
    interrupter: Interrupter,
    /// Its execution flow moved to another IC.
    moved: bool,
}

impl EptViewIc {
    fn new(host: Arc<ViewHost>, view: usize, spec: IcSpec) -> Self {
        let config = RunConfig {
            mem_size: spec.mem_size,
            args: spec.args.clone(),
            env: spec.env.clone(),
            timeout: spec.timeout,
            host_functions: spec.host_functions.clone(),
            output_limit: spec.output_limit,
            ..RunConfig::default()
        };
        EptViewIc {
            host,
            view,
            spec,
            config,
            interrupter: Interrupter::new(),
            moved: false,
        }
    }

    /// This IC's view number in its VM.
    pub fn view(&self) -> usize {
        self.view
    }
}

impl Drop for EptViewIc {
    fn drop(&mut self) {
        self.host.remove(self.view);
        if let Some(end) = &self.spec.window {
            if !self.moved {
                end.run_ended();
            }
        }
    }
}

impl IsolationContext for EptViewIc {
    fn kind(&self) -> &'static str {
        NAME
    }

    fn run(&mut self, io: GuestIo) -> Result<RunOutcome, IcfError> {
        let interrupter = std::mem::take(&mut self.interrupter);
        self.interrupter = Interrupter::new();
        let result = self.host.run(self.view, io, &self.config, &interrupter);
        if let Some(end) = &self.spec.window {
            match &result {
                Ok(o) if matches!(o.exit, vmm::GuestExit::SafePoint | vmm::GuestExit::Ready) => {
                    end.run_paused()
                }
                _ => end.run_ended(),
            }
        }
        Ok(result?)
    }

    fn into_process_image(mut self: Box<Self>) -> Result<ProcessImage, IcfError> {
        let state = self.host.capture(self.view).map_err(|e| match e {
            ViewHostError::Ended { .. } => IcfError::NotAtSafePoint { icf: NAME },
            other => IcfError::from(vmm::RunError::from(other)),
        })?;
        self.moved = true;
        Ok(ProcessImage {
            state,
            spec: self.spec.clone(),
        })
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
