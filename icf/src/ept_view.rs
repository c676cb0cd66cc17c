//! The `ept-view` factory: ICs as EPT views of one VM (`vmm::view_host`).
//! Each IC has its own image, memory and registers; ICs of one VM share
//! its vCPU, so they run one at a time, and two connected ICs call each
//! other through the trampoline, the vCPU moving into the callee's memory
//! for the call ([`EptViewFactory::create_pair`], mechanism `view-call`).
//!
//! Where the CPU has VMFUNC and `vmfunc-kmod` is loaded, the switch would
//! be one `VMFUNC` instruction; here (and on any machine without them) it
//! is the fallback: an exit and a memory-slot switch each way. The factory
//! says which and why in [`IsolationContextFactory::mode`].

use crate::error::IcfError;
use crate::factory::{Availability, IcSpec, IsolationContext, IsolationContextFactory};
use std::sync::{Arc, Mutex, Weak};
use vmm::view_host::{ViewHost, ViewHostError};
use vmm::{GuestIo, Interrupter, RunConfig, RunOutcome};

/// Name of the kind.
pub const NAME: &str = "ept-view";

/// Views per VM: the ICs of one VM share its vCPU.
const VIEWS_PER_VM: usize = vmm::view::MAX_VIEWS;

/// A connected pair: the caller's IC, then the callee's.
pub type IcPair = (Box<dyn IsolationContext>, Box<dyn IsolationContext>);

/// Creates EPT-view ICs, several per VM.
#[derive(Default)]
pub struct EptViewFactory {
    /// VMs with views handed out; a VM goes when its last IC does.
    hosts: Mutex<Vec<Weak<ViewHost>>>,
}

impl std::fmt::Debug for EptViewFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EptViewFactory").finish_non_exhaustive()
    }
}

/// Why the fallback is in use, or `None` when VMFUNC could be.
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
    if !std::path::Path::new("/dev/xos-vmfunc").exists() {
        return "/dev/xos-vmfunc is missing: vmfunc-kmod is not loaded (see vmfunc-kmod/README.md)"
            .to_owned();
    }
    "vmfunc-kmod is loaded, but the ICF does not drive it yet (the module is tested on its own, in Bochs)"
        .to_owned()
}

impl EptViewFactory {
    fn check(spec: &IcSpec) -> Result<(), IcfError> {
        if let Availability::Unavailable(reason) = vmm::kvm::probe()
            .map(|()| Availability::Available)
            .unwrap_or_else(|e| Availability::Unavailable(e.to_string()))
        {
            return Err(IcfError::Unavailable { icf: NAME, reason });
        }
        if spec.window.is_some() {
            return Err(IcfError::Unsupported {
                icf: NAME,
                operation: "a channel window (EPT views talk through view calls: create_pair)",
            });
        }
        spec.check_no_virtio(NAME)
    }

    /// A VM with room for `views` more ICs of `mem_size` bytes.
    fn host(&self, mem_size: u64, fresh: bool) -> Result<Arc<ViewHost>, IcfError> {
        let mut hosts = self.hosts.lock().map_err(|_| IcfError::Unsupported {
            icf: NAME,
            operation: "create after a panic in another create",
        })?;
        hosts.retain(|h| h.strong_count() > 0);
        if !fresh {
            let wanted = vmm::memory::checked_size(mem_size).unwrap_or(mem_size);
            if let Some(h) = hosts
                .iter()
                .rev()
                .filter_map(Weak::upgrade)
                .find(|h| h.mem_size() == wanted)
            {
                return Ok(h);
            }
        }
        let host = Arc::new(ViewHost::new(VIEWS_PER_VM, mem_size, true)?);
        hosts.push(Arc::downgrade(&host));
        Ok(host)
    }

    /// Adds `spec`'s IC to a VM (a new one if the last is full).
    fn place(&self, spec: &IcSpec, host: Option<Arc<ViewHost>>) -> Result<EptViewIc, IcfError> {
        let mut fresh = false;
        let mut host = match host {
            Some(h) => h,
            None => self.host(spec.mem_size, false)?,
        };
        loop {
            match host.add(&spec.program, &spec.args, &spec.env) {
                Ok(view) => return Ok(EptViewIc::new(host, view, spec.clone())),
                Err(ViewHostError::Full(_)) if !fresh => {
                    fresh = true;
                    host = self.host(spec.mem_size, true)?;
                }
                Err(e) => return Err(vmm::RunError::from(e).into()),
            }
        }
    }

    /// Two ICs as views of one VM, `caller` connected to `callee`: the
    /// caller's `xos_view_call` enters the callee's `xos_view_serve`
    /// handler. Run the callee (it parks serving) and the caller, from
    /// two threads or in either order: a call waits until its callee
    /// serves, and the callee's run ends once the caller is gone.
    pub fn create_pair(&self, caller: IcSpec, callee: IcSpec) -> Result<IcPair, IcfError> {
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
        let mut fresh = false;
        loop {
            let host = self.host(caller.mem_size, fresh)?;
            let a = self.place(&caller, Some(Arc::clone(&host)))?;
            let b = match self.place(&callee, Some(Arc::clone(&host))) {
                Ok(b) if Arc::ptr_eq(&a.host, &b.host) => b,
                // The VM filled up between the two: both go to a new one.
                Ok(_) | Err(_) if !fresh => {
                    fresh = true;
                    continue;
                }
                Ok(_) => {
                    return Err(IcfError::Unsupported {
                        icf: NAME,
                        operation: "a pair in one fresh VM (it has room for both)",
                    })
                }
                Err(e) => return Err(e),
            };
            a.host
                .connect(a.view, b.view)
                .map_err(vmm::RunError::from)?;
            return Ok((Box::new(a), Box::new(b)));
        }
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
        Some(format!(
            "fallback: a view switch is an exit and a memory-slot switch, because {}",
            why_no_vmfunc()
        ))
    }

    fn create(&self, spec: IcSpec) -> Result<Box<dyn IsolationContext>, IcfError> {
        Self::check(&spec)?;
        Ok(Box::new(self.place(&spec, None)?))
    }
}

/// One EPT-view IC: a view of a shared VM.
pub struct EptViewIc {
    host: Arc<ViewHost>,
    view: usize,
    config: RunConfig,
    interrupter: Interrupter,
}

impl EptViewIc {
    fn new(host: Arc<ViewHost>, view: usize, spec: IcSpec) -> Self {
        let config = RunConfig {
            mem_size: spec.mem_size,
            args: spec.args,
            env: spec.env,
            timeout: spec.timeout,
            host_functions: spec.host_functions,
            output_limit: spec.output_limit,
            ..RunConfig::default()
        };
        EptViewIc {
            host,
            view,
            config,
            interrupter: Interrupter::new(),
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
    }
}

impl IsolationContext for EptViewIc {
    fn kind(&self) -> &'static str {
        NAME
    }

    fn run(&mut self, io: GuestIo) -> Result<RunOutcome, IcfError> {
        let interrupter = std::mem::take(&mut self.interrupter);
        self.interrupter = Interrupter::new();
        Ok(self.host.run(self.view, io, &self.config, &interrupter)?)
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
