//! A device on the guest's MMIO page at `xos_abi::VIRTIO_MMIO`: the
//! monitor forwards the guest's register reads and writes there to it.
//!
//! The page is mapped for user access with no memory behind it, like the
//! doorbell, so every access exits to the monitor (`KVM_EXIT_MMIO`); the
//! device sees the offset in the page and the bytes. Only VM ICs (virtines
//! and VMs) have such a device: it is how a guest drives a virtio device.

use std::sync::Arc;
use vm_memory::GuestMemoryMmap;
use xos_abi::layout::PAGE_SIZE;

/// A device the guest reaches through its MMIO page.
pub trait MmioDevice: Send + Sync {
    /// The guest's memory, before the guest first runs: the device reads
    /// and writes its queues there (through vm-memory, bounds-checked).
    fn activate(&self, mem: GuestMemoryMmap);
    /// A read of `data.len()` bytes at `offset` in the page; fill `data`.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// A write of `data` at `offset` in the page.
    fn write(&self, offset: u64, data: &[u8]);
    /// The guest is gone (its VM is being torn down): stop using its
    /// memory until the next `activate`.
    fn deactivate(&self) {}
    /// A register whose writes the device needs only as a wake-up (a
    /// virtio `QueueNotify`). The monitor registers it with KVM
    /// (`KVM_IOEVENTFD`), so KVM signals the eventfd itself and resumes the
    /// guest: such a write never reaches `write`, and costs the guest no
    /// trip through the monitor.
    fn doorbell(&self) -> Option<Doorbell> {
        None
    }
}

/// See [`MmioDevice::doorbell`].
pub struct Doorbell {
    /// Offset of the register in the device page.
    pub offset: u64,
    /// Signalled on every write to it.
    pub event: vmm_sys_util::eventfd::EventFd,
}

/// A shared device handle, as a run configuration holds it.
#[derive(Clone)]
pub struct Device(pub Arc<dyn MmioDevice>);

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Device")
    }
}

/// The offset of `addr` in the device page, if it is in it.
pub fn offset_in_page(addr: u64) -> Option<u64> {
    addr.checked_sub(xos_abi::VIRTIO_MMIO)
        .filter(|&o| o < PAGE_SIZE)
}
