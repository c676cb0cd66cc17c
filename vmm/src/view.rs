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
//! Every view has the same layout: its own copy of the system area (page
//! tables, GDT, IDT), its own image, stack, heap and control block
//! (`xos_abi::ViewControl`). Two connected views also share a message
//! area: guest-physical memory above the views (slot 1), which only those
//! two views' page tables map (at `xos_abi::WINDOW`).

use crate::arch;
use crate::arch::cpu::Privilege;
use crate::machine::{prepare_memory, Machine, MachineError};
use crate::memory;
use kvm_bindings::kvm_userspace_memory_region;
use std::sync::Arc;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion,
};
use xos_abi::layout::{BOOT_INFO, VIEW_CONTROL, VIEW_TRAMPOLINE};
use xos_abi::view::{MSG_SIZE, NO_PEER, ZERO_FXSAVE};
use xos_abi::{BootInfo, Hypercall, ViewControl, DOORBELL};

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
        if count == 0 || count > MAX_VIEWS {
            return Err(ViewError::Count(count));
        }
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
            },
        };
        let page = trampoline().page;
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
        Ok(vm)
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
        for (view, peer) in [(caller, callee as u64), (callee, NO_PEER)] {
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

/// The trampoline page and where its doorbell writes are.
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
    assert!(a.0.len() <= ZERO_FXSAVE as usize, "view_serve overflows");
    let mut page = a.0;
    page.resize(xos_abi::layout::PAGE_SIZE as usize, 0xcc);
    // The zeroed FXSAVE image: default FCW and MXCSR, everything else 0.
    let fx = ZERO_FXSAVE as usize;
    page[fx..fx + 512].fill(0);
    page[fx..fx + 2].copy_from_slice(&0x037fu16.to_le_bytes());
    page[fx + 24..fx + 28].copy_from_slice(&0x1f80u32.to_le_bytes());
    Trampoline {
        page,
        call_landing,
        return_landing,
        serve_landing,
    }
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
