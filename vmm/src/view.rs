//! EPT views without VMFUNC: several guest memories of one size take turns
//! behind one VM's memory slot, so one guest-physical address reads
//! different bytes in each view (the `ept-view` fallback).
//!
//! With the `vmfunc-kmod` module on an Intel host, a guest switches views
//! itself (`VMFUNC` leaf 0, no exit). Without it the guest asks the monitor
//! (`VIEW_SWITCH`, a doorbell exit) and the monitor deletes memory slot 0
//! and adds it back over the other view's memory
//! (`KVM_SET_USER_MEMORY_REGION` twice): KVM drops every translation of the
//! old view, so nothing of it stays reachable. Registers are left as they
//! are, as `VMFUNC` leaves them: code that switches must sit at the same
//! address in every view (a trampoline).
//!
//! Every view has the same layout: its own copy of the system area (page
//! tables, GDT, IDT), its own image, stack and heap. A view never sees
//! another view's memory.

use crate::arch;
use crate::arch::cpu::Privilege;
use crate::machine::{prepare_memory, Machine, MachineError};
use crate::memory;
use kvm_bindings::kvm_userspace_memory_region;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// The most views one VM holds (the size of a `VMFUNC` EPTP list is 512;
/// the kernel module offers fewer, and so does this fallback).
pub const MAX_VIEWS: usize = 16;

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
    #[error("no view {view}: this VM has {count} (0 to {last})", last = count - 1)]
    NoSuchView {
        /// The view asked for.
        view: usize,
        /// How many views there are.
        count: usize,
    },
    /// KVM refused to move the memory slot.
    #[error("switching to view {view}: {op} failed: {source}")]
    Switch {
        /// The view switched to.
        view: usize,
        /// The step that failed.
        op: &'static str,
        /// errno from the kernel.
        source: kvm_ioctls::Error,
    },
}

/// A VM whose guest memory is one of several views.
pub struct ViewMachine {
    // Field order is drop order: the machine (its VM still references one
    // of the views) goes before the extra views' memory.
    machine: Machine,
    /// Views 1.. (view 0 is the machine's own memory).
    extra: Vec<GuestMemoryMmap>,
    active: usize,
}

impl std::fmt::Debug for ViewMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewMachine")
            .field("views", &self.count())
            .field("active", &self.active)
            .finish()
    }
}

impl ViewMachine {
    /// A VM with `count` views of `mem_size` bytes each (checked like any
    /// guest memory), each with its own system area; view 0 is active.
    pub fn new(count: usize, mem_size: u64, privilege: Privilege) -> Result<Self, ViewError> {
        if count == 0 || count > MAX_VIEWS {
            return Err(ViewError::Count(count));
        }
        let mem_size = memory::checked_size(mem_size).map_err(MachineError::from)?;
        let machine = Machine::new(mem_size, privilege)?;
        let extra = (1..count)
            .map(|_| prepare_memory(mem_size))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ViewMachine {
            machine,
            extra,
            active: 0,
        })
    }

    /// The VM and its vCPU (its memory is the active view's only while
    /// view 0 is active: use [`ViewMachine::view`] for the others).
    pub fn machine(&mut self) -> &mut Machine {
        &mut self.machine
    }

    /// How many views there are.
    pub fn count(&self) -> usize {
        self.extra.len() + 1
    }

    /// The view the guest sees now.
    pub fn active(&self) -> usize {
        self.active
    }

    /// View `view`'s memory, to load an image into it or read it.
    pub fn view(&self, view: usize) -> Result<&GuestMemoryMmap, ViewError> {
        match view {
            0 => Ok(self.machine.memory()),
            v if v < self.count() => Ok(&self.extra[v - 1]),
            _ => Err(ViewError::NoSuchView {
                view,
                count: self.count(),
            }),
        }
    }

    /// Makes `view` the memory the guest sees from its next instruction:
    /// slot 0 deleted, then added over the view's memory. Switching to the
    /// active view does nothing.
    pub fn switch(&mut self, view: usize) -> Result<(), ViewError> {
        if view == self.active {
            return Ok(());
        }
        let (host, size) = {
            let mem = self.view(view)?;
            let region = mem.iter().next().ok_or(ViewError::NoSuchView {
                view,
                count: self.count(),
            })?;
            (region.as_ptr() as u64, region.len())
        };
        let vm = self.machine.vm();
        let removed = kvm_userspace_memory_region {
            slot: 0,
            ..Default::default()
        };
        // SAFETY: a zero-sized region deletes slot 0; no host memory is
        // named.
        unsafe { vm.set_user_memory_region(removed) }.map_err(|source| ViewError::Switch {
            view,
            op: "KVM_SET_USER_MEMORY_REGION (delete slot 0)",
            source,
        })?;
        let added = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: the range is view `view`'s memory, owned by this
        // machine, which drops its VM before any view's memory; only one
        // view is in a slot at a time.
        unsafe { vm.set_user_memory_region(added) }.map_err(|source| ViewError::Switch {
            view,
            op: "KVM_SET_USER_MEMORY_REGION (add slot 0)",
            source,
        })?;
        self.active = view;
        Ok(())
    }

    /// Writes `bytes` at guest-physical `addr` of view `view`.
    pub fn write(&self, view: usize, addr: u64, bytes: &[u8]) -> Result<(), ViewError> {
        use vm_memory::Bytes;
        self.view(view)?
            .write_slice(bytes, vm_memory::GuestAddress(addr))
            .map_err(|source| {
                ViewError::Machine(MachineError::Arch(arch::ArchError::Write { addr, source }))
            })
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
    /// Runs the vCPU to its next exit and serves a `VIEW_SWITCH` there.
    /// A switch to a view that does not exist is an error (the caller
    /// ends the guest: it is a fault, as `VMFUNC` to an empty list slot
    /// is a `#UD`).
    pub fn step(&mut self) -> Result<Step, ViewError> {
        let value = match self.machine.run() {
            Ok(kvm_ioctls::VcpuExit::MmioWrite(addr, data)) if addr == xos_abi::DOORBELL => {
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
}
