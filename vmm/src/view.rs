//! EPT views without VMFUNC: several guest memories of one size take turns
//! behind one VM's memory slot, so one guest-physical address reads
//! different bytes in each view (the `ept-view` ICF's fallback).
//!
//! With the `vmfunc-kmod` module on an Intel host, a guest switches views
//! itself (`VMFUNC` leaf 0, no exit). Without it the guest asks the monitor
//! (`VIEW_SWITCH`, a doorbell exit) and the monitor deletes memory slot 0
//! and adds it back over the other view's memory
//! (`KVM_SET_USER_MEMORY_REGION` twice): KVM drops every translation of the
//! old view, so nothing of it stays reachable. Registers are left as they
//! are, as `VMFUNC` leaves them, so code that switches must sit at the same
//! address in every view: the trampoline page ([`trampoline`]).
//!
//! With the module ([`Switching::Vmfunc`], a pair of views on an Intel
//! host with `vmfunc-kmod` loaded), view 0 is the base view (KVM's memory
//! slot 0) and view 1's memory also sits in a KVM slot of its own, above
//! everything else ([`VMFUNC_SOURCE_GPA`]); a module view maps it at
//! guest-physical 0, with the pair's message area, so that the guest's
//! `VMFUNC` changes what guest-physical 0 reads. Nothing checks a switch
//! there: the trampoline ([`trampoline_for`]) checks every entry against
//! the entered view's own state.
//!
//! Every view has the same layout: its own copy of the system area (page
//! tables, GDT, IDT), its own image, stack, heap and control block
//! (`xos_abi::ViewControl`). Two connected views also share a message
//! area: guest-physical memory above the views (slot 1), which only those
//! two views' page tables map (at `xos_abi::WINDOW`).

use crate::arch;
use crate::arch::cpu::Privilege;
use crate::machine::{prepare_memory, Machine, MachineError};
use crate::memory;
use crate::vmfunc::{Prot, VmfuncDevice, VmfuncError};
use kvm_bindings::kvm_userspace_memory_region;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion,
};
use xos_abi::layout::{BOOT_INFO, VIEW_CONTROL, VIEW_TRAMPOLINE};
use xos_abi::view::{IN_CALL, MSG_SIZE, NO_PEER, NO_SLOT, ZERO_FXSAVE};
use xos_abi::{nr, BootInfo, Hypercall, ViewControl, ViewGate, DOORBELL};

/// The most views one VM holds (a `VMFUNC` EPTP list has 512 slots; the
/// kernel module offers fewer, and so does this fallback).
pub const MAX_VIEWS: usize = 16;

/// Guest-physical address of the message areas (one [`MSG_SIZE`] area per
/// connected pair), above any guest memory.
pub const MSG_GPA: u64 = 0x7_0000_0000;

/// Guest-physical address of view 0's channel window (view `k`'s is
/// `k * xos_abi::MAX_WINDOW_SIZE` above).
pub const WINDOW_GPA: u64 = 0x8_0000_0000;

/// KVM memory slot of the message areas (slot 0 is the active view).
const MSG_SLOT: u32 = 1;

/// [`Switching::Vmfunc`]: guest-physical address of view `k`'s memory in
/// KVM's memory slots is this plus `k * MAX_MEM` (view 0's is 0): above
/// the doorbell, the message areas and the windows, and never mapped by a
/// view's page tables.
pub const VMFUNC_SOURCE_GPA: u64 = 0x10_0000_0000;

/// [`Switching::Vmfunc`]: KVM memory slot of view `k`'s memory is this
/// plus `k` (slots `2 + k` are the channel windows).
const VMFUNC_SOURCE_SLOT: u32 = 2 + MAX_VIEWS as u32;

/// The vCPU every view runs on.
const VCPU_ID: u32 = 0;

fn source_gpa(view: usize) -> u64 {
    VMFUNC_SOURCE_GPA + view as u64 * xos_abi::layout::MAX_MEM
}

/// How the views of a VM take turns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switching {
    /// The guest asks the monitor (`VIEW_SWITCH`), which moves memory slot
    /// 0 to the other view's memory: an exit and two memory-slot changes.
    Memslot,
    /// The guest switches itself with `VMFUNC` (EPTP switching through
    /// `vmfunc-kmod`): no exit.
    Vmfunc,
    /// For tests on machines without VMX: the [`Switching::Vmfunc`]
    /// trampoline and rules, with each `VMFUNC` replaced by a doorbell the
    /// monitor serves exactly as the CPU would (no check: any EPTP-list
    /// index with a view, from the trampoline's switch sites only, as
    /// `VMFUNC` exists only there). View `k` is index `k + 1`; index 0 is
    /// the base, as with the module. The monitor then sees switches, but
    /// uses nothing of them: what the trampoline checks is tested.
    EmulatedVmfunc,
}

/// What [`ViewMachine::with_switching`] sets up.
#[derive(Debug)]
pub enum SwitchSetup {
    /// [`Switching::Memslot`].
    Memslot,
    /// [`Switching::Vmfunc`] through this open, usable module (two views).
    Vmfunc(VmfuncDevice),
    /// [`Switching::EmulatedVmfunc`] (two views).
    EmulatedVmfunc,
}

/// The module's side of a [`Switching::Vmfunc`] VM.
struct VmfuncViews {
    device: VmfuncDevice,
    /// EPTP-list index of each view (entry 0, the base, is none of them).
    slots: Vec<u32>,
    /// The base's memory (KVM's slot 0), kept for the VM's lifetime.
    _base: GuestMemoryMmap,
}

impl std::fmt::Debug for VmfuncViews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmfuncViews")
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

/// A clean x87/SSE state (what a fresh vCPU has).
pub(crate) fn clean_xsave() -> Box<kvm_bindings::kvm_xsave> {
    let mut x = Box::new(kvm_bindings::kvm_xsave::default());
    x.region[0] = 0x037f; // FCW
    x.region[6] = 0x1f80; // MXCSR
    x.region[128] = 0x3; // XSTATE_BV: x87, SSE
    x
}

/// Errors of a VM with views.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// Setting up the VM or a view's memory failed.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// Too few or too many views asked for.
    #[error("a VM with views holds 1 to {MAX_VIEWS} views, not {0}")]
    Count(usize),
    /// The guest (or the caller) named a view that does not exist.
    #[error("no view {view}: this VM has {count}")]
    NoSuchView {
        /// The view asked for.
        view: usize,
        /// How many views there are.
        count: usize,
    },
    /// A view can call one peer and serve one caller.
    #[error("view {view} is already connected ({what}); connect each view to one peer")]
    AlreadyConnected {
        /// The view.
        view: usize,
        /// Which side is taken.
        what: &'static str,
    },
    /// KVM refused a memory slot change.
    #[error("switching to view {view}: {op} failed: {source}")]
    Switch {
        /// The view switched to.
        view: usize,
        /// The step that failed.
        op: &'static str,
        /// errno from the kernel.
        source: kvm_ioctls::Error,
    },
    /// The message areas could not be set up.
    #[error("cannot set up the views' message areas: {0}")]
    MessageArea(String),
    /// The module refused a step of setting up or switching views.
    #[error("VMFUNC views (vmfunc-kmod): {op}: {source}")]
    Vmfunc {
        /// The step.
        op: &'static str,
        /// What the module said.
        source: VmfuncError,
    },
    /// The module's views are fixed once made.
    #[error("{0} (a VM whose views switch with VMFUNC has its memory slots fixed when its views are made)")]
    VmfuncLayout(&'static str),
    /// The module reported a view this VM did not make.
    #[error("the vCPU is in EPTP-list entry {0}, which is none of this VM's views")]
    UnknownSlot(u32),
}

fn vmfunc_error(op: &'static str) -> impl FnOnce(VmfuncError) -> ViewError {
    move |source| ViewError::Vmfunc { op, source }
}

/// The views of one VM: the active one is the machine's memory, the
/// others wait here.
pub struct ViewTable {
    /// `None` at the active view's index.
    inactive: Vec<Option<GuestMemoryMmap>>,
    active: usize,
    /// Per view: the view it calls, the view it serves.
    calls: Vec<Option<usize>>,
    serves: Vec<Option<usize>>,
    pairs: usize,
    /// Per view: whether it has a channel window.
    windows: Vec<bool>,
    /// The message areas (kept for the lifetime of the VM's slot 1).
    _messages: Arc<GuestRegionMmap>,
    /// The module's views, in [`Switching::Vmfunc`] mode.
    vmfunc: Option<VmfuncViews>,
    /// [`Switching::EmulatedVmfunc`] (EPTP-list index `k` is view `k`).
    emulated: bool,
}

/// A VM whose guest memory is one of several views.
pub struct ViewMachine {
    // Field order is drop order: the machine (its VM references the slots)
    // goes before the views' memory.
    machine: Machine,
    table: ViewTable,
}

impl std::fmt::Debug for ViewMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewMachine")
            .field("views", &self.table.count())
            .field("active", &self.table.active)
            .field("vmfunc", &self.table.vmfunc)
            .finish()
    }
}

fn area_error(e: impl std::fmt::Display) -> ViewError {
    ViewError::MessageArea(e.to_string())
}

impl ViewMachine {
    /// A VM with `count` views of `mem_size` bytes each (checked like any
    /// guest memory), each with its own system area, the trampoline page
    /// and a control block; view 0 is active.
    pub fn new(count: usize, mem_size: u64, privilege: Privilege) -> Result<Self, ViewError> {
        Self::with_switching(count, mem_size, privilege, SwitchSetup::Memslot)
    }

    /// Like [`ViewMachine::new`], switching as `setup` says; the `VMFUNC`
    /// kinds take a pair (two views).
    pub fn with_switching(
        count: usize,
        mem_size: u64,
        privilege: Privilege,
        setup: SwitchSetup,
    ) -> Result<Self, ViewError> {
        if count == 0 || count > MAX_VIEWS {
            return Err(ViewError::Count(count));
        }
        let switching = match (&setup, count) {
            (SwitchSetup::Memslot, _) => Switching::Memslot,
            (SwitchSetup::Vmfunc(_), 2) => Switching::Vmfunc,
            (SwitchSetup::EmulatedVmfunc, 2) => Switching::EmulatedVmfunc,
            _ => {
                return Err(ViewError::VmfuncLayout(
                    "VMFUNC switching takes exactly two views",
                ))
            }
        };
        let mem_size = memory::checked_size(mem_size).map_err(MachineError::from)?;
        let mut machine = Machine::new(mem_size, privilege)?;
        let messages = MmapRegion::new(MAX_VIEWS * MSG_SIZE as usize).map_err(area_error)?;
        let messages = Arc::new(
            GuestRegionMmap::new(messages, GuestAddress(MSG_GPA))
                .ok_or_else(|| area_error("the message areas overflow the address space"))?,
        );
        let slot = kvm_userspace_memory_region {
            slot: MSG_SLOT,
            flags: 0,
            guest_phys_addr: MSG_GPA,
            memory_size: messages.len(),
            userspace_addr: messages.as_ptr() as u64,
        };
        // SAFETY: the range is the message areas' mapping, kept alive by
        // the view table, which drops after the machine (and its VM).
        unsafe { machine.vm().set_user_memory_region(slot) }.map_err(|source| {
            ViewError::Machine(MachineError::Ioctl {
                op: "KVM_SET_USER_MEMORY_REGION (message areas)",
                source,
            })
        })?;
        let mut view0 = machine
            .memory()
            .insert_region(Arc::clone(&messages))
            .map_err(area_error)?;
        machine.swap_memory(&mut view0);
        let mut inactive = vec![None];
        for _ in 1..count {
            let mem = prepare_memory(mem_size)?
                .insert_region(Arc::clone(&messages))
                .map_err(area_error)?;
            inactive.push(Some(mem));
        }
        let vm = ViewMachine {
            machine,
            table: ViewTable {
                inactive,
                active: 0,
                calls: vec![None; count],
                serves: vec![None; count],
                pairs: 0,
                windows: vec![false; count],
                _messages: messages,
                vmfunc: None,
                emulated: false,
            },
        };
        let mut vm = vm;
        let page = trampoline_for(switching).page;
        for view in 0..count {
            arch::paging::map_view_pages(vm.view(view)?)
                .map_err(|e| ViewError::Machine(MachineError::from(e)))?;
            vm.write(view, VIEW_TRAMPOLINE, &page)?;
            vm.write_control(
                view,
                &ViewControl {
                    this: view as u64,
                    peer: NO_PEER,
                    ..ViewControl::default()
                },
            )?;
        }
        match setup {
            SwitchSetup::Vmfunc(device) => vm.setup_vmfunc(device, privilege)?,
            SwitchSetup::EmulatedVmfunc => vm.table.emulated = true,
            SwitchSetup::Memslot => {}
        }
        Ok(vm)
    }

    /// [`Switching::Vmfunc`]: view `k > 0`'s memory in a KVM slot of its
    /// own, a module view mapping it at guest-physical 0, the vCPU enabled
    /// and run once (KVM builds its root then, which the module needs
    /// before it can put the vCPU into a view).
    fn setup_vmfunc(
        &mut self,
        device: VmfuncDevice,
        privilege: Privilege,
    ) -> Result<(), ViewError> {
        let mem_size = self.machine.mem_size();
        let tramp = trampoline_for(Switching::Vmfunc);
        // The base (KVM's own memory at guest-physical 0, EPTP-list entry
        // 0): a memory of the monitor's with nothing of either view, so
        // that a VMFUNC to entry 0, or KVM putting the vCPU back on its
        // own root, finds nothing to read and only exits: its trampoline's
        // landings see a closed, unconnected control block.
        let limbo = prepare_memory(mem_size)?;
        let arch_error = |e| ViewError::Machine(MachineError::from(e));
        arch::paging::map_view_pages(&limbo).map_err(arch_error)?;
        arch::write_bytes(&limbo, VIEW_TRAMPOLINE, &tramp.page).map_err(arch_error)?;
        limbo
            .write_obj(
                ViewControl {
                    this: NO_PEER,
                    peer: NO_PEER,
                    ..ViewControl::default()
                },
                GuestAddress(VIEW_CONTROL),
            )
            .map_err(|source| {
                ViewError::Machine(MachineError::Arch(arch::ArchError::Write {
                    addr: VIEW_CONTROL,
                    source,
                }))
            })?;
        let set_slot = |machine: &Machine, slot: u32, gpa: u64, size: u64, host: u64| {
            let region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: host,
            };
            // SAFETY: `host` is 0 (a deletion) or a view's or the base's
            // memory, owned by the view table, which drops after the
            // machine's VM.
            unsafe { machine.vm().set_user_memory_region(region) }.map_err(|source| {
                ViewError::Machine(MachineError::Ioctl {
                    op: "KVM_SET_USER_MEMORY_REGION (VMFUNC views)",
                    source,
                })
            })
        };
        // Every view's memory in a slot of its own, above everything else.
        for view in 0..self.count() {
            let region = self
                .view(view)?
                .find_region(GuestAddress(0))
                .ok_or_else(|| self.table.no_such(view))?;
            set_slot(
                &self.machine,
                VMFUNC_SOURCE_SLOT + view as u32,
                source_gpa(view),
                region.len(),
                region.as_ptr() as u64,
            )?;
        }
        // Slot 0 (view 0's memory until now) becomes the base.
        let base = limbo
            .find_region(GuestAddress(0))
            .ok_or_else(|| ViewError::MessageArea("the base memory has no region".into()))?;
        set_slot(&self.machine, 0, 0, 0, 0)?;
        set_slot(&self.machine, 0, 0, base.len(), base.as_ptr() as u64)?;
        device
            .attach(self.machine.vm().as_raw_fd())
            .map_err(vmfunc_error("ATTACH"))?;
        let mut slots = Vec::new();
        for view in 0..self.count() {
            let index = device
                .create_view(true)
                .map_err(vmfunc_error("CREATE_VIEW"))?;
            device
                .map(index, Prot::ALL, 0, mem_size, source_gpa(view))
                .map_err(vmfunc_error("MAP (a view's memory)"))?;
            // The pair's message area (the first one; such a VM holds one
            // pair), mapped now: `connect` runs on the vCPU thread, whose
            // seccomp filter allows the module only VCPU_STATUS and
            // SET_VCPU_VIEW.
            device
                .map(index, Prot::READ | Prot::WRITE, MSG_GPA, MSG_SIZE, MSG_GPA)
                .map_err(vmfunc_error("MAP (the message area)"))?;
            slots.push(index);
        }
        device
            .enable_vcpu(VCPU_ID)
            .map_err(vmfunc_error("ENABLE_VCPU"))?;
        // One entry, in the base, that exits at its first instruction (the
        // trampoline's `prime`: a doorbell write): KVM builds its root,
        // which the module needs before it can put the vCPU into a view.
        let mut regs = crate::arch::cpu::initial_regs(tramp.prime, xos_abi::layout::STACK_TOP, 0);
        regs.rax = u64::from(nr::NOP);
        let sregs = crate::arch::cpu::initial_sregs(&self.machine.kvm_registers()?.1, privilege);
        self.machine.set_state(&regs, &sregs, &clean_xsave(), &[])?;
        let primed = match self.machine.run() {
            Ok(kvm_ioctls::VcpuExit::MmioWrite(DOORBELL, _)) => Ok(()),
            Ok(other) => Err(format!("{other:?}")),
            Err(e) => Err(e.to_string()),
        };
        primed.map_err(|exit| {
            ViewError::MessageArea(format!(
                "the vCPU's first entry (to let KVM build its EPT root) ended with {exit}, not at the trampoline's doorbell"
            ))
        })?;
        self.machine.complete_pending_io()?;
        self.table.vmfunc = Some(VmfuncViews {
            device,
            slots,
            _base: limbo,
        });
        Ok(())
    }

    /// How this VM's views take turns.
    pub fn switching(&self) -> Switching {
        self.table.switching()
    }

    /// The VM and its vCPU; its memory is the active view's.
    pub fn machine(&mut self) -> &mut Machine {
        &mut self.machine
    }

    /// The machine and the view table, apart, to tear down (the machine
    /// first: its VM references the table's memory).
    pub fn into_parts(self) -> (Machine, ViewTable) {
        (self.machine, self.table)
    }

    /// The machine and the view table, borrowed apart (a run loop holds
    /// the machine while a switch needs both).
    pub fn parts(&mut self) -> (&mut Machine, &mut ViewTable) {
        (&mut self.machine, &mut self.table)
    }

    /// How many views there are.
    pub fn count(&self) -> usize {
        self.table.count()
    }

    /// Which views are connected, and which is active.
    pub fn table(&self) -> &ViewTable {
        &self.table
    }

    /// The view the guest sees now.
    pub fn active(&self) -> usize {
        self.table.active
    }

    /// View `view`'s memory, to load an image into it or read it.
    pub fn view(&self, view: usize) -> Result<&GuestMemoryMmap, ViewError> {
        self.table.memory(&self.machine, view)
    }

    /// Makes `view` the memory the guest sees from its next instruction.
    pub fn switch(&mut self, view: usize) -> Result<(), ViewError> {
        self.table.switch(&mut self.machine, view)
    }

    /// Writes `bytes` at guest-physical `addr` of view `view`.
    pub fn write(&self, view: usize, addr: u64, bytes: &[u8]) -> Result<(), ViewError> {
        arch::write_bytes(self.view(view)?, addr, bytes)
            .map_err(|e| ViewError::Machine(MachineError::from(e)))
    }

    /// Writes hand-assembled code at `addr` of view `view` and maps its
    /// pages read-only and executable there.
    pub fn write_code(&self, view: usize, addr: u64, code: &[u8]) -> Result<(), ViewError> {
        self.write(view, addr, code)?;
        arch::paging::protect_image(
            self.view(view)?,
            &[crate::loader::Segment::code(addr, code.len())],
        )
        .map_err(|e| ViewError::Machine(MachineError::from(e)))
    }

    fn write_control(&self, view: usize, control: &ViewControl) -> Result<(), ViewError> {
        self.view(view)?
            .write_obj(*control, GuestAddress(VIEW_CONTROL))
            .map_err(|source| {
                ViewError::Machine(MachineError::Arch(arch::ArchError::Write {
                    addr: VIEW_CONTROL,
                    source,
                }))
            })
    }

    /// Maps `window` (one side of a ring channel) into view `view` at
    /// `xos_abi::WINDOW`, as the channel window of a VM is mapped: KVM sees
    /// it at a guest-physical address of this view's own (slot `2 +
    /// view`), which only this view's page tables reach; the monitor's
    /// memory object of the view has it at `WINDOW`, where the guest sees
    /// it and where the window hypercalls look for it.
    pub fn attach_window(
        &mut self,
        view: usize,
        window: &crate::window::SharedWindow,
        region: Arc<GuestRegionMmap>,
    ) -> Result<(), ViewError> {
        if self.table.switching() != Switching::Memslot {
            return Err(ViewError::VmfuncLayout(
                "a channel window needs a memory slot of its own",
            ));
        }
        if self.table.calls[view].is_some() || self.table.serves[view].is_some() {
            return Err(ViewError::AlreadyConnected {
                view,
                what: "its message area is where a channel window would go",
            });
        }
        let gpa = WINDOW_GPA + view as u64 * xos_abi::MAX_WINDOW_SIZE;
        let mem = self.view(view)?.clone();
        crate::layout::write_window_info(&mem, &window.info())
            .map_err(|e| ViewError::MessageArea(e.to_string()))?;
        let mem = mem.insert_region(region).map_err(area_error)?;
        arch::paging::write_window_at(&mem, window.size(), gpa)
            .map_err(|e| ViewError::Machine(MachineError::from(e)))?;
        let region = mem
            .find_region(GuestAddress(xos_abi::WINDOW))
            .ok_or_else(|| area_error("the window's region is missing"))?;
        let slot = kvm_userspace_memory_region {
            slot: 2 + view as u32,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the range is the window's mapping, held by the view's
        // memory object, which the view table drops after the machine.
        unsafe { self.machine.vm().set_user_memory_region(slot) }.map_err(|source| {
            ViewError::Machine(MachineError::Ioctl {
                op: "KVM_SET_USER_MEMORY_REGION (channel window)",
                source,
            })
        })?;
        let mut mem = mem;
        if view == self.table.active {
            self.machine.swap_memory(&mut mem);
        } else {
            self.table.inactive[view] = Some(mem);
        }
        self.table.windows[view] = true;
        Ok(())
    }

    /// Lets view `caller` call view `callee` (each side once): a fresh
    /// message area mapped at `xos_abi::WINDOW` in both, and both control
    /// blocks filled in.
    pub fn connect(&mut self, caller: usize, callee: usize) -> Result<(), ViewError> {
        for view in [caller, callee] {
            self.view(view)?;
        }
        if caller == callee {
            return Err(ViewError::AlreadyConnected {
                view: caller,
                what: "a view cannot call itself",
            });
        }
        if self.table.calls[caller].is_some() || self.table.serves[caller].is_some() {
            return Err(ViewError::AlreadyConnected {
                view: caller,
                what: "it already has a peer",
            });
        }
        if self.table.serves[callee].is_some() || self.table.calls[callee].is_some() {
            return Err(ViewError::AlreadyConnected {
                view: callee,
                what: "it already has a peer",
            });
        }
        for view in [caller, callee] {
            if self.table.windows[view] {
                return Err(ViewError::AlreadyConnected {
                    view,
                    what: "it has a channel window where the message area would go",
                });
            }
        }
        if self.table.pairs >= MAX_VIEWS {
            return Err(area_error("all message areas are in use"));
        }
        let gpa = MSG_GPA + self.table.pairs as u64 * MSG_SIZE;
        if self.table.switching() != Switching::Memslot && self.table.pairs > 0 {
            return Err(ViewError::VmfuncLayout(
                "a VM of views that switch with VMFUNC holds one pair",
            ));
        }
        let slot = |view: usize| match &self.table.vmfunc {
            Some(v) => v.slots.get(view).map_or(NO_SLOT, |&s| u64::from(s)),
            None if self.table.emulated => view as u64 + 1,
            None => NO_SLOT,
        };
        let (caller_slot, callee_slot) = (slot(caller), slot(callee));
        for (view, peer, gate) in [
            (
                caller,
                callee as u64,
                ViewGate {
                    peer_slot: callee_slot,
                    ..ViewGate::default()
                },
            ),
            (
                callee,
                NO_PEER,
                ViewGate {
                    caller_slot,
                    ..ViewGate::default()
                },
            ),
        ] {
            let mem = self.view(view)?;
            arch::paging::write_window_at(mem, MSG_SIZE, gpa)
                .map_err(|e| ViewError::Machine(MachineError::from(e)))?;
            self.write_control(
                view,
                &ViewControl {
                    this: view as u64,
                    peer,
                    msg_addr: xos_abi::WINDOW,
                    msg_size: MSG_SIZE,
                    ..ViewControl::default()
                },
            )?;
            self.table.write_gate(&self.machine, view, &gate)?;
        }
        self.table.pairs += 1;
        self.table.calls[caller] = Some(callee);
        self.table.serves[callee] = Some(caller);
        Ok(())
    }
}

impl ViewTable {
    /// How many views there are.
    pub fn count(&self) -> usize {
        self.inactive.len()
    }

    /// How the views take turns.
    pub fn switching(&self) -> Switching {
        if self.vmfunc.is_some() {
            Switching::Vmfunc
        } else if self.emulated {
            Switching::EmulatedVmfunc
        } else {
            Switching::Memslot
        }
    }

    /// The view at EPTP-list index `index` (what `VMFUNC` with that index
    /// switches to), in the `VMFUNC` kinds.
    pub fn view_at_index(&self, index: u64) -> Option<usize> {
        match &self.vmfunc {
            Some(v) => v.slots.iter().position(|&s| u64::from(s) == index),
            None if self.emulated => usize::try_from(index)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .filter(|&v| v < self.count()),
            None => None,
        }
    }

    /// [`Switching::Vmfunc`]: which view the vCPU is in now (the guest may
    /// have switched since the monitor last looked); the monitor's memory
    /// object follows. `None`: in the base, which is no view (a `VMFUNC`
    /// to entry 0, or KVM reloaded its MMU). The active view otherwise.
    pub fn sync(&mut self, machine: &mut Machine) -> Result<Option<usize>, ViewError> {
        let Some(v) = &self.vmfunc else {
            return Ok(Some(self.active));
        };
        let status = v
            .device
            .vcpu_status(VCPU_ID)
            .map_err(vmfunc_error("VCPU_STATUS"))?;
        let view = match status.current_view {
            crate::vmfunc::VIEW_KVM | 0 => return Ok(None),
            index => v
                .slots
                .iter()
                .position(|&s| s == index)
                .ok_or(ViewError::UnknownSlot(index))?,
        };
        self.follow(machine, view)?;
        Ok(Some(view))
    }

    /// [`Switching::Vmfunc`]: puts the vCPU into the active view again
    /// before a run (KVM puts it back on its own root whenever it reloads
    /// its MMU).
    pub fn enter(&self) -> Result<(), ViewError> {
        match &self.vmfunc {
            Some(v) => v
                .device
                .set_vcpu_view(VCPU_ID, v.slots[self.active])
                .map_err(vmfunc_error("SET_VCPU_VIEW")),
            None => Ok(()),
        }
    }

    /// The monitor's memory object becomes view `view`'s (the vCPU is
    /// there already).
    fn follow(&mut self, machine: &mut Machine, view: usize) -> Result<(), ViewError> {
        if view == self.active {
            return Ok(());
        }
        let missing = self.no_such(view);
        let mut next = self
            .inactive
            .get_mut(view)
            .and_then(Option::take)
            .ok_or(missing)?;
        machine.swap_memory(&mut next);
        self.inactive[self.active] = Some(next);
        self.active = view;
        Ok(())
    }

    /// Writes view `view`'s gate (`xos_abi::view::GATE`, in its copy of
    /// the trampoline page: the guest cannot write it).
    fn write_gate(&self, machine: &Machine, view: usize, gate: &ViewGate) -> Result<(), ViewError> {
        self.memory(machine, view)?
            .write_obj(*gate, GuestAddress(xos_abi::view::GATE))
            .map_err(|source| {
                ViewError::Machine(MachineError::Arch(arch::ArchError::Write {
                    addr: xos_abi::view::GATE,
                    source,
                }))
            })
    }

    /// Opens or closes view `view`'s gate ([`ViewGate::open`]): with
    /// `VMFUNC` calls enter a view only while it is open.
    pub fn set_gate(&self, machine: &Machine, view: usize, open: bool) -> Result<(), ViewError> {
        let at = xos_abi::view::GATE + std::mem::offset_of!(ViewGate, open) as u64;
        self.memory(machine, view)?
            .store(
                u64::from(open),
                GuestAddress(at),
                std::sync::atomic::Ordering::SeqCst,
            )
            .map_err(|source| {
                ViewError::Machine(MachineError::Arch(arch::ArchError::Write {
                    addr: at,
                    source,
                }))
            })
    }

    /// Something that closes view `view`'s gate from any thread (a stop
    /// of its parked run: the next call finds it closed).
    pub fn gate_closer(
        &self,
        machine: &Machine,
        view: usize,
    ) -> Result<impl Fn() + Send + 'static, ViewError> {
        let mem = self.memory(machine, view)?.clone();
        let at = xos_abi::view::GATE + std::mem::offset_of!(ViewGate, open) as u64;
        Ok(move || {
            let _ = mem.store(0u64, GuestAddress(at), std::sync::atomic::Ordering::SeqCst);
        })
    }

    /// A view that is not running, parked or waiting: its gate closed and
    /// its in-call flag cleared, so that no landing accepts an entry into
    /// it (its peer jumping to a switch must not resume its code: a view
    /// stopped inside its trampoline would otherwise still take a reply).
    pub fn quiesce(&self, machine: &Machine, view: usize) -> Result<(), ViewError> {
        self.set_gate(machine, view, false)?;
        let at = VIEW_CONTROL + std::mem::offset_of!(ViewControl, flags) as u64;
        self.memory(machine, view)?
            .store(0u64, GuestAddress(at), std::sync::atomic::Ordering::SeqCst)
            .map_err(|source| {
                ViewError::Machine(MachineError::Arch(arch::ArchError::Write {
                    addr: at,
                    source,
                }))
            })
    }

    /// The view the guest sees now.
    pub fn active(&self) -> usize {
        self.active
    }

    /// The view `view` calls, if connected.
    pub fn peer_of(&self, view: usize) -> Option<usize> {
        self.calls.get(view).copied().flatten()
    }

    /// The view `view` serves, if connected.
    pub fn caller_of(&self, view: usize) -> Option<usize> {
        self.serves.get(view).copied().flatten()
    }

    fn no_such(&self, view: usize) -> ViewError {
        ViewError::NoSuchView {
            view,
            count: self.count(),
        }
    }

    /// View `view`'s memory (the machine's if it is the active one).
    pub fn memory<'a>(
        &'a self,
        machine: &'a Machine,
        view: usize,
    ) -> Result<&'a GuestMemoryMmap, ViewError> {
        if view == self.active {
            return Ok(machine.memory());
        }
        self.inactive
            .get(view)
            .and_then(Option::as_ref)
            .ok_or_else(|| self.no_such(view))
    }

    /// Makes `view` the memory the guest sees from its next instruction:
    /// slot 0 deleted, then added over the view's memory, which becomes
    /// the machine's. Switching to the active view does nothing.
    pub fn switch(&mut self, machine: &mut Machine, view: usize) -> Result<(), ViewError> {
        if let Some(v) = &self.vmfunc {
            let index = *v.slots.get(view).ok_or_else(|| self.no_such(view))?;
            v.device
                .set_vcpu_view(VCPU_ID, index)
                .map_err(vmfunc_error("SET_VCPU_VIEW"))?;
            return self.follow(machine, view);
        }
        if view == self.active {
            return Ok(());
        }
        let missing = self.no_such(view);
        let mut next = self
            .inactive
            .get_mut(view)
            .and_then(Option::take)
            .ok_or(missing)?;
        let (host, size) = match next.find_region(GuestAddress(0)) {
            Some(region) => (region.as_ptr() as u64, region.len()),
            None => {
                self.inactive[view] = Some(next);
                return Err(self.no_such(view));
            }
        };
        let removed = kvm_userspace_memory_region {
            slot: 0,
            ..Default::default()
        };
        // SAFETY: a zero-sized region deletes slot 0; no host memory is
        // named.
        let deleted = unsafe { machine.vm().set_user_memory_region(removed) };
        let added = deleted.and_then(|()| {
            let region = kvm_userspace_memory_region {
                slot: 0,
                flags: 0,
                guest_phys_addr: 0,
                memory_size: size,
                userspace_addr: host,
            };
            // SAFETY: the range is view `view`'s memory, owned by this
            // table, which drops after the machine's VM; only one view is
            // in slot 0 at a time.
            unsafe { machine.vm().set_user_memory_region(region) }
        });
        if let Err(source) = added {
            self.inactive[view] = Some(next);
            return Err(ViewError::Switch {
                view,
                op: "KVM_SET_USER_MEMORY_REGION (slot 0)",
                source,
            });
        }
        machine.swap_memory(&mut next);
        self.inactive[self.active] = Some(next);
        self.active = view;
        Ok(())
    }
}

/// What one [`ViewMachine::step`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The guest asked for view `0` (`VIEW_SWITCH`) and now sees it.
    Switched(usize),
    /// The guest wrote this value to the doorbell (any other hypercall).
    Doorbell(u32),
    /// Any other exit, described.
    Other(String),
}

impl ViewMachine {
    /// Runs the vCPU to its next exit and serves a `VIEW_SWITCH` there,
    /// without the checks of a real run (for benchmarks and tests of the
    /// switch itself). A switch to a view that does not exist is an error.
    pub fn step(&mut self) -> Result<Step, ViewError> {
        let value = match self.machine.run() {
            Ok(kvm_ioctls::VcpuExit::MmioWrite(addr, data)) if addr == DOORBELL => {
                let mut v = [0u8; 4];
                let n = data.len().min(4);
                v[..n].copy_from_slice(&data[..n]);
                u32::from_le_bytes(v)
            }
            Ok(other) => return Ok(Step::Other(format!("{other:?}"))),
            Err(source) => {
                return Err(ViewError::Machine(MachineError::Ioctl {
                    op: "KVM_RUN",
                    source,
                }))
            }
        };
        match switch_target(value) {
            Some(view) => {
                self.switch(view)?;
                Ok(Step::Switched(view))
            }
            None => Ok(Step::Doorbell(value)),
        }
    }
}

/// The view a `VIEW_SWITCH` doorbell value names, if it is one.
pub fn switch_target(doorbell: u32) -> Option<usize> {
    (doorbell & 0xffff == xos_abi::nr::VIEW_SWITCH).then_some((doorbell >> 16) as usize)
}

/// The trampoline page and where its switches land.
pub struct Trampoline {
    /// The page's bytes (code, then the zeroed FXSAVE image).
    pub page: Vec<u8>,
    /// Guest address right after the caller's switch (the guest's RIP at
    /// the `VIEW_SWITCH` exit of a call).
    pub call_landing: u64,
    /// Guest address right after the callee's switch back.
    pub return_landing: u64,
    /// Guest address right after `view_serve`'s `VIEW_SERVE`.
    pub serve_landing: u64,
    /// Where the monitor resumes a caller whose call failed, with the
    /// result (`-EPIPE`) in `rdi`: `view_call` returns it.
    pub fail_landing: u64,
    /// [`Switching::Vmfunc`]: guest address right after `VIEW_WAIT`
    /// (resumed there, the caller calls again). 0 otherwise.
    pub wait_landing: u64,
    /// [`Switching::Vmfunc`]: a doorbell write the vCPU's first entry
    /// runs into. 0 otherwise.
    pub prime: u64,
    /// [`Switching::Vmfunc`]: the address right after each `VMFUNC`
    /// (where a switched-to view goes on, and where a switch made with
    /// the trap flag set traps). Empty otherwise.
    pub landings: Vec<u64>,
    /// [`Switching::Vmfunc`]: guest address right after `VIEW_BAD_ENTRY`.
    /// 0 otherwise.
    pub bad_entry: u64,
    /// Guest address right after the hypercall stub's doorbell write
    /// (`xos_abi::view::HYPERCALL`).
    pub hypercall_landing: u64,
}

impl Trampoline {
    /// Whether `rip` is in the trampoline page.
    pub fn contains(&self, rip: u64) -> bool {
        (VIEW_TRAMPOLINE..VIEW_TRAMPOLINE + xos_abi::layout::PAGE_SIZE).contains(&rip)
    }
}

/// Builds the trampoline page for `switching` ([`trampoline`] is the
/// memory-slot one).
pub fn trampoline_for(switching: Switching) -> Trampoline {
    match switching {
        Switching::Memslot => trampoline(),
        Switching::Vmfunc => vmfunc_trampoline(false),
        Switching::EmulatedVmfunc => vmfunc_trampoline(true),
    }
}

/// A tiny x86-64 emitter for the trampoline: absolute 32-bit addresses
/// (everything it touches is below 2 GiB) and the doorbell.
struct Asm(Vec<u8>);

impl Asm {
    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    /// An instruction whose last operand is an absolute 32-bit address.
    fn abs(&mut self, opcode: &[u8], addr: u64) -> &mut Self {
        debug_assert!(addr < 1 << 31);
        self.0.extend_from_slice(opcode);
        self.0.extend_from_slice(&(addr as u32).to_le_bytes());
        self
    }
    /// Offset in the page of the next byte.
    fn here(&self) -> usize {
        self.0.len()
    }
    /// Guest address of the next byte.
    fn addr(&self) -> u64 {
        VIEW_TRAMPOLINE + self.0.len() as u64
    }
    /// Fills with `int3` up to `offset`.
    fn pad_to(&mut self, offset: u64) -> &mut Self {
        assert!(
            self.0.len() <= offset as usize,
            "trampoline code overlaps {offset:#x}"
        );
        self.0.resize(offset as usize, 0xcc);
        self
    }
    /// `mov qword [addr], imm32`.
    fn store_imm(&mut self, addr: u64, value: u32) -> &mut Self {
        self.abs(&[0x48, 0xc7, 0x04, 0x25], addr)
            .raw(&value.to_le_bytes())
    }
    /// `cmp qword [addr], imm8`.
    fn cmp_imm(&mut self, addr: u64, value: u8) -> &mut Self {
        self.abs(&[0x48, 0x83, 0x3c, 0x25], addr).raw(&[value])
    }
    /// `xor eax, eax; vmfunc` (leaf 0, the index in ecx), or when
    /// `emulate` the doorbell `VIEW_SWITCH | ecx << 16`
    /// ([`Switching::EmulatedVmfunc`]); records and returns the address
    /// after it.
    fn vmfunc(&mut self, emulate: bool, landings: &mut Vec<u64>) -> u64 {
        if emulate {
            self.raw(&[0x89, 0xc8]) // mov eax, ecx
                .raw(&[0xc1, 0xe0, 0x10]) // shl eax, 16
                .raw(&[0x83, 0xc8, nr::VIEW_SWITCH as u8]); // or eax, VIEW_SWITCH
            self.doorbell();
        } else {
            self.raw(&[0x31, 0xc0, 0x0f, 0x01, 0xd4]);
        }
        let after = self.addr();
        landings.push(after);
        after
    }
    /// A near conditional jump (`0f <op>`) to be patched; returns where.
    fn jcc(&mut self, op: u8) -> usize {
        self.raw(&[0x0f, op, 0, 0, 0, 0]);
        self.0.len() - 4
    }
    /// A near jump to be patched; returns where.
    fn jmp(&mut self) -> usize {
        self.raw(&[0xe9, 0, 0, 0, 0]);
        self.0.len() - 4
    }
    /// Points the jump whose displacement is at `at` to offset `target`.
    fn patch(&mut self, at: usize, target: usize) {
        let rel = target as i64 - (at as i64 + 4);
        let rel = i32::try_from(rel).expect("a jump within the page");
        self.0[at..at + 4].copy_from_slice(&rel.to_le_bytes());
    }
    /// The hypercall stub at `xos_abi::view::HYPERCALL`: `mov [DOORBELL],
    /// eax; ret`; returns the address after the doorbell write.
    fn hypercall_stub(&mut self) -> u64 {
        self.pad_to(xos_abi::view::HYPERCALL - VIEW_TRAMPOLINE);
        let after = self.doorbell();
        self.raw(&[0xc3]);
        after
    }
    /// `mov [DOORBELL], eax`; returns the address after it.
    fn doorbell(&mut self) -> u64 {
        self.0.push(0xa3);
        self.0.extend_from_slice(&DOORBELL.to_le_bytes());
        VIEW_TRAMPOLINE + self.0.len() as u64
    }
    fn push_callee_saved(&mut self) -> &mut Self {
        // push rbx, rbp, r12, r13, r14, r15
        self.raw(&[0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57])
    }
    fn pop_callee_saved(&mut self) -> &mut Self {
        // pop r15, r14, r13, r12, rbp, rbx
        self.raw(&[0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41, 0x5c, 0x5d, 0x5b])
    }
    /// The sending side, before a switch: loads the zeroed x87/SSE image
    /// and clears the scratch registers that are not arguments, so that
    /// nothing of its data crosses in a register.
    fn scrub(&mut self) -> &mut Self {
        self.abs(&[0x0f, 0xae, 0x0c, 0x25], VIEW_TRAMPOLINE + ZERO_FXSAVE)
            // xor ebx,ebx; xor ebp,ebp; xor ecx,ecx; xor edx,edx
            .raw(&[0x31, 0xdb, 0x31, 0xed, 0x31, 0xc9, 0x31, 0xd2])
            // xor r8d..r11d, r14d, r15d
            .raw(&[0x45, 0x31, 0xc0, 0x45, 0x31, 0xc9, 0x45, 0x31, 0xd2])
            .raw(&[0x45, 0x31, 0xdb, 0x45, 0x31, 0xf6, 0x45, 0x31, 0xff])
    }
    /// The receiving side, on its own stack right after a switch: RFLAGS
    /// to a known state (direction flag clear, as the C ABI requires) and
    /// the default x87/SSE control words, whatever the other side left:
    /// it cannot turn this side's string copies backwards or unmask its
    /// floating-point exceptions.
    fn sanitize(&mut self) -> &mut Self {
        self.raw(&[0x6a, 0x02, 0x9d]) // push 2; popfq
            .abs(&[0x0f, 0xae, 0x0c, 0x25], VIEW_TRAMPOLINE + ZERO_FXSAVE)
    }
    /// eax = VIEW_SWITCH | view << 16, the view in r12d or r13d.
    fn switch_value(&mut self, from_r13: bool) -> &mut Self {
        let mov = if from_r13 { 0xe8 } else { 0xe0 };
        self.raw(&[0x44, 0x89, mov]) // mov eax, r13d / r12d
            .raw(&[0xc1, 0xe0, 0x10]) // shl eax, 16
            .raw(&[0x83, 0xc8, xos_abi::nr::VIEW_SWITCH as u8]) // or eax, VIEW_SWITCH
    }
}

/// Builds the trampoline page (`xos_abi::view` has the entry points):
///
/// `view_call(len, cap)`: saves the caller's callee-saved registers on its
/// stack and its stack pointer in its control block, scrubs, switches to
/// the peer named in its control block; there (same address, the peer's
/// memory) takes the peer's parked stack, pushes the caller's view number,
/// calls the peer's handler with (len, cap), scrubs, switches back to the
/// caller, takes the caller's stack back, restores and returns the reply
/// length. `view_serve()`: saves the callee-saved registers, records the
/// stack pointer as where calls run, parks (`VIEW_SERVE`); returns the
/// hypercall's result once the monitor resumes it.
pub fn trampoline() -> Trampoline {
    let ctrl = |field: usize| VIEW_CONTROL + field as u64;
    let this = ctrl(std::mem::offset_of!(ViewControl, this));
    let peer = ctrl(std::mem::offset_of!(ViewControl, peer));
    let handler = ctrl(std::mem::offset_of!(ViewControl, handler));
    let serve_rsp = ctrl(std::mem::offset_of!(ViewControl, serve_rsp));
    let saved_rsp = ctrl(std::mem::offset_of!(ViewControl, saved_rsp));
    let ret = BOOT_INFO
        + (std::mem::offset_of!(BootInfo, hypercall) + std::mem::offset_of!(Hypercall, ret)) as u64;

    let mut a = Asm(Vec::new());
    // view_call
    a.push_callee_saved()
        .abs(&[0x48, 0x89, 0x24, 0x25], saved_rsp) // mov [saved_rsp], rsp
        .abs(&[0x4c, 0x8b, 0x24, 0x25], this) // mov r12, [this]
        .abs(&[0x4c, 0x8b, 0x2c, 0x25], peer) // mov r13, [peer]
        .scrub()
        .switch_value(true);
    let call_landing = a.doorbell();
    // In the callee: its own stack first (the caller's rsp means nothing
    // here and must not be written through), then sanitize.
    a.abs(&[0x48, 0x8b, 0x24, 0x25], serve_rsp) // mov rsp, [serve_rsp]
        .sanitize()
        .raw(&[0x45, 0x31, 0xed]) // xor r13d, r13d
        .raw(&[0x41, 0x54]) // push r12 (the caller's view; keeps 16-byte alignment)
        .abs(&[0xff, 0x14, 0x25], handler) // call [handler]
        .raw(&[0x41, 0x5c]) // pop r12
        .raw(&[0x48, 0x89, 0xc7]) // mov rdi, rax (the reply length)
        .scrub()
        .raw(&[0x31, 0xf6, 0x45, 0x31, 0xed]) // xor esi, esi; xor r13d, r13d
        .switch_value(false);
    let return_landing = a.doorbell();
    a.abs(&[0x48, 0x8b, 0x24, 0x25], saved_rsp) // mov rsp, [saved_rsp]
        .sanitize()
        .raw(&[0x48, 0x89, 0xf8]) // mov rax, rdi
        .raw(&[0x31, 0xff, 0x45, 0x31, 0xe4]) // xor edi, edi; xor r12d, r12d
        .pop_callee_saved()
        .raw(&[0xc3]); // ret
    let serve_at = (xos_abi::view::SERVE - VIEW_TRAMPOLINE) as usize;
    assert!(a.0.len() <= serve_at, "view_call overflows into view_serve");
    a.0.resize(serve_at, 0xcc);
    // view_serve
    a.push_callee_saved()
        .abs(&[0x48, 0x89, 0x24, 0x25], serve_rsp) // mov [serve_rsp], rsp
        .raw(&[0xb8])
        .raw(&xos_abi::nr::VIEW_SERVE.to_le_bytes()); // mov eax, VIEW_SERVE
    let serve_landing = a.doorbell();
    a.abs(&[0x48, 0x8b, 0x04, 0x25], ret) // mov rax, [hypercall.ret]
        .pop_callee_saved()
        .raw(&[0xc3]);
    let hypercall_landing = a.hypercall_stub();
    assert!(a.0.len() <= ZERO_FXSAVE as usize, "view_serve overflows");
    let mut page = a.0;
    page.resize(xos_abi::layout::PAGE_SIZE as usize, 0xcc);
    write_zero_fxsave(&mut page);
    Trampoline {
        page,
        call_landing,
        return_landing,
        serve_landing,
        fail_landing: return_landing,
        wait_landing: 0,
        prime: 0,
        landings: Vec::new(),
        bad_entry: 0,
        hypercall_landing,
    }
}

/// Where in the page the `VMFUNC` trampoline puts the code that does not
/// fit before `view_serve` (after the zeroed FXSAVE image).
const VMFUNC_MORE: usize = 0x400;

/// Builds the [`Switching::Vmfunc`] trampoline page. No monitor sees a
/// switch, and a view may jump to any `VMFUNC` in its page with any
/// registers, so every landing checks the entered view's own control
/// block before it does anything with the registers it found:
///
/// - after the call's switch: the view must be open (the monitor opened
///   it when it parked in `view_serve`, and closes it when its run ends
///   or its owner stops it) and not inside a call; then its own stack, a
///   sanitized RFLAGS and x87/SSE state, the length clamped to the message
///   area, and its handler. Otherwise back to the view it serves with
///   `edx = 1` ("not serving"), or `VIEW_BAD_ENTRY` if it serves none.
/// - after the way back (and after a bounce): the view must be inside a
///   call; then its own stack, sanitized state, and either the reply
///   length or, on "not serving", `VIEW_WAIT` (the monitor resumes it
///   when the peer serves, and it calls again). Otherwise `VIEW_BAD_ENTRY`.
///
/// The sending side scrubs its registers before every switch, as in the
/// memory-slot trampoline. `VMFUNC` takes the EPTP-list index in `ecx`
/// from the sender's control block; an index with no view is a #UD in
/// the sender's own view.
fn vmfunc_trampoline(emulate: bool) -> Trampoline {
    let ctrl = |field: usize| VIEW_CONTROL + field as u64;
    let handler = ctrl(std::mem::offset_of!(ViewControl, handler));
    let serve_rsp = ctrl(std::mem::offset_of!(ViewControl, serve_rsp));
    let saved_rsp = ctrl(std::mem::offset_of!(ViewControl, saved_rsp));
    let gate = |field: usize| xos_abi::view::GATE + field as u64;
    let peer_slot = gate(std::mem::offset_of!(ViewGate, peer_slot));
    let caller_slot = gate(std::mem::offset_of!(ViewGate, caller_slot));
    let open = gate(std::mem::offset_of!(ViewGate, open));
    let flags = ctrl(std::mem::offset_of!(ViewControl, flags));
    let ret = BOOT_INFO
        + (std::mem::offset_of!(BootInfo, hypercall) + std::mem::offset_of!(Hypercall, ret)) as u64;
    let mut landings = Vec::new();

    let mut a = Asm(Vec::new());
    // view_call(len, cap)
    a.push_callee_saved()
        .abs(&[0x48, 0x89, 0x24, 0x25], saved_rsp); // mov [saved_rsp], rsp
    let retry = a.here();
    a.store_imm(flags, IN_CALL as u32)
        .scrub()
        .raw(&[0x45, 0x31, 0xe4, 0x45, 0x31, 0xed]) // xor r12d, r12d; xor r13d, r13d
        .abs(&[0x8b, 0x0c, 0x25], peer_slot); // mov ecx, [peer_slot]
    let call_landing = a.vmfunc(emulate, &mut landings);
    let to_callee = a.jmp();
    a.pad_to(xos_abi::view::SERVE - VIEW_TRAMPOLINE);
    // view_serve(): as in the memory-slot trampoline; the monitor opens
    // the gate when it accepts the park.
    a.push_callee_saved()
        .abs(&[0x48, 0x89, 0x24, 0x25], serve_rsp) // mov [serve_rsp], rsp
        .raw(&[0xb8])
        .raw(&nr::VIEW_SERVE.to_le_bytes()); // mov eax, VIEW_SERVE
    let serve_landing = a.doorbell();
    a.abs(&[0x48, 0x8b, 0x04, 0x25], ret) // mov rax, [hypercall.ret]
        .pop_callee_saved()
        .raw(&[0xc3]);
    let prime = a.addr();
    a.doorbell();
    a.raw(&[0x0f, 0x0b]); // ud2
    let hypercall_landing = a.hypercall_stub();
    assert!(a.0.len() <= ZERO_FXSAVE as usize, "view_serve overflows");
    a.pad_to(VMFUNC_MORE as u64);

    // In the entered view, after the call's switch.
    a.patch(to_callee, a.here());
    a.cmp_imm(open, 1);
    let not_open = a.jcc(0x85); // jne
    a.cmp_imm(flags, 0);
    let busy = a.jcc(0x85); // jne
    a.store_imm(flags, IN_CALL as u32)
        .abs(&[0x48, 0x8b, 0x24, 0x25], serve_rsp) // mov rsp, [serve_rsp]
        .sanitize()
        .raw(&[0xb8])
        .raw(&(MSG_SIZE as u32).to_le_bytes()) // mov eax, MSG_SIZE
        .raw(&[0x48, 0x39, 0xc7]) // cmp rdi, rax
        .raw(&[0x48, 0x0f, 0x47, 0xf8]) // cmova rdi, rax
        .raw(&[0x48, 0x89, 0xc6]) // mov rsi, rax
        .raw(&[0x48, 0x83, 0xec, 0x08]) // sub rsp, 8 (16-byte alignment at the call)
        .abs(&[0xff, 0x14, 0x25], handler) // call [handler]
        .raw(&[0x48, 0x89, 0xc7]) // mov rdi, rax (the reply length)
        .store_imm(flags, 0)
        .scrub()
        .raw(&[0x31, 0xf6]) // xor esi, esi
        .raw(&[0x45, 0x31, 0xe4, 0x45, 0x31, 0xed]) // xor r12d, r12d; xor r13d, r13d
        .abs(&[0x8b, 0x0c, 0x25], caller_slot); // mov ecx, [caller_slot]
    let return_landing = a.vmfunc(emulate, &mut landings);
    // In the entered view, after the way back or a bounce.
    let check_return = a.here();
    a.cmp_imm(flags, IN_CALL as u8);
    let not_calling = a.jcc(0x85); // jne
    a.abs(&[0x48, 0x8b, 0x24, 0x25], saved_rsp) // mov rsp, [saved_rsp]
        .sanitize()
        .raw(&[0x85, 0xd2]); // test edx, edx
    let bounced = a.jcc(0x85); // jnz
    let done = a.here();
    a.store_imm(flags, 0)
        .raw(&[0x48, 0x89, 0xf8]) // mov rax, rdi
        .raw(&[0x31, 0xff]) // xor edi, edi
        .pop_callee_saved()
        .raw(&[0xc3]); // ret
    let fail_landing = a.addr();
    a.abs(&[0x48, 0x8b, 0x24, 0x25], saved_rsp) // mov rsp, [saved_rsp]
        .sanitize();
    let to_done = a.jmp();
    a.patch(to_done, done);
    // The peer did not serve: the monitor parks this run until it does.
    a.patch(bounced, a.here());
    a.store_imm(flags, 0)
        .raw(&[0xb8])
        .raw(&nr::VIEW_WAIT.to_le_bytes()); // mov eax, VIEW_WAIT
    let wait_landing = a.doorbell();
    let again = a.jmp();
    a.patch(again, retry);
    // The entered view does not serve now: back to the view it serves.
    a.patch(not_open, a.here());
    a.patch(busy, a.here());
    a.abs(&[0x8b, 0x0c, 0x25], caller_slot) // mov ecx, [caller_slot]
        .raw(&[0x81, 0xf9, 0xff, 0x01, 0x00, 0x00]); // cmp ecx, 511
    let no_caller = a.jcc(0x87); // ja
    a.raw(&[0xba, 0x01, 0x00, 0x00, 0x00]); // mov edx, 1
    a.vmfunc(emulate, &mut landings);
    let to_check = a.jmp();
    a.patch(to_check, check_return);
    // Entered where nothing was expected.
    a.patch(not_calling, a.here());
    a.patch(no_caller, a.here());
    a.raw(&[0xb8]).raw(&nr::VIEW_BAD_ENTRY.to_le_bytes()); // mov eax, VIEW_BAD_ENTRY
    let bad_entry = a.doorbell();
    a.raw(&[0x0f, 0x0b]); // ud2
    let mut page = a.0;
    assert!(
        page.len() <= xos_abi::layout::PAGE_SIZE as usize,
        "the trampoline overflows its page"
    );
    page.resize(xos_abi::layout::PAGE_SIZE as usize, 0xcc);
    write_zero_fxsave(&mut page);
    Trampoline {
        page,
        call_landing,
        return_landing,
        serve_landing,
        fail_landing,
        wait_landing,
        prime,
        landings,
        bad_entry,
        hypercall_landing,
    }
}

/// The page's data: the zeroed FXSAVE image (default FCW and MXCSR,
/// everything else 0) and a closed, unconnected gate.
fn write_zero_fxsave(page: &mut [u8]) {
    let gate = ViewGate::default();
    let at = (xos_abi::view::GATE - VIEW_TRAMPOLINE) as usize;
    for (i, field) in [gate.open, gate.peer_slot, gate.caller_slot]
        .iter()
        .enumerate()
    {
        page[at + 8 * i..at + 8 * i + 8].copy_from_slice(&field.to_le_bytes());
    }
    let fx = ZERO_FXSAVE as usize;
    page[fx..fx + 512].fill(0);
    page[fx..fx + 2].copy_from_slice(&0x037fu16.to_le_bytes());
    page[fx + 24..fx + 28].copy_from_slice(&0x1f80u32.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbell_values_name_views() {
        assert_eq!(switch_target(xos_abi::nr::VIEW_SWITCH), Some(0));
        assert_eq!(switch_target(xos_abi::nr::VIEW_SWITCH | 3 << 16), Some(3));
        assert_eq!(switch_target(xos_abi::nr::NOP), None);
    }

    #[test]
    fn the_view_count_is_bounded() {
        for count in [0, MAX_VIEWS + 1] {
            let e = ViewMachine::new(count, 4 << 20, Privilege::User).err();
            assert!(
                matches!(e, Some(ViewError::Count(c)) if c == count),
                "{e:?}"
            );
        }
    }

    /// Where the bytes of VMFUNC occur in a page.
    fn vmfunc_bytes(page: &[u8]) -> Vec<u64> {
        page.windows(3)
            .enumerate()
            .filter(|(_, w)| *w == [0x0f, 0x01, 0xd4])
            .map(|(i, _)| VIEW_TRAMPOLINE + i as u64)
            .collect()
    }

    #[test]
    fn vmfunc_occurs_in_the_vmfunc_trampoline_only_where_meant() {
        let t = trampoline_for(Switching::Vmfunc);
        assert_eq!(t.page.len(), 4096);
        // Three switches: the call, the way back, the bounce; a landing
        // right after each, and no VMFUNC hidden in any other bytes (a
        // view could jump into the middle of an instruction).
        assert_eq!(t.landings.len(), 3);
        let sites: Vec<u64> = t.landings.iter().map(|l| l - 3).collect();
        assert_eq!(vmfunc_bytes(&t.page), sites);
        assert_eq!(t.landings[0], t.call_landing);
        assert_eq!(t.landings[1], t.return_landing);
        // The entry points of the ABI, and the zeroed FXSAVE image.
        assert_eq!(t.page[0], 0x53, "view_call starts with push rbx");
        assert_eq!(t.page[0x100], 0x53, "view_serve starts with push rbx");
        assert_eq!(&t.page[0x200..0x202], &[0x7f, 0x03]);
        for addr in [
            t.serve_landing,
            t.wait_landing,
            t.bad_entry,
            t.fail_landing,
            t.prime,
        ] {
            assert!(
                (VIEW_TRAMPOLINE..VIEW_TRAMPOLINE + 4096).contains(&addr),
                "{addr:#x}"
            );
        }
        // No other trampoline holds VMFUNC.
        assert!(vmfunc_bytes(&trampoline().page).is_empty());
        let emulated = trampoline_for(Switching::EmulatedVmfunc);
        assert!(vmfunc_bytes(&emulated.page).is_empty());
        assert_eq!(emulated.landings.len(), 3);
        for landing in emulated.landings {
            // Each emulated VMFUNC is a doorbell write right before it.
            let at = (landing - VIEW_TRAMPOLINE) as usize;
            assert_eq!(t.page.len(), 4096);
            assert_eq!(emulated.page[at - 9], 0xa3);
        }
    }

    #[test]
    fn vmfunc_switching_takes_a_pair() {
        let e =
            ViewMachine::with_switching(3, 4 << 20, Privilege::User, SwitchSetup::EmulatedVmfunc)
                .err();
        assert!(matches!(e, Some(ViewError::VmfuncLayout(_))), "{e:?}");
    }

    #[test]
    fn the_trampoline_fits_and_lands_after_its_doorbells() {
        let t = trampoline();
        assert_eq!(t.page.len(), 4096);
        for landing in [t.call_landing, t.return_landing, t.serve_landing] {
            let at = (landing - VIEW_TRAMPOLINE) as usize;
            // a3 <DOORBELL as 8 bytes> right before the landing.
            assert_eq!(t.page[at - 9], 0xa3);
            assert_eq!(t.page[at - 8..at], DOORBELL.to_le_bytes());
        }
        assert_eq!(&t.page[0x200..0x202], &[0x7f, 0x03]);
    }
}
