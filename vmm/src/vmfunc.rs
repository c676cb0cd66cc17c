//! The ioctl ABI of `/dev/xos-vmfunc` (the `vmfunc-kmod` kernel module) and
//! a small safe API over it: EPTP switching (VMFUNC leaf 0) for the VMs of
//! an unmodified kvm_intel.
//!
//! `vmfunc-kmod/include/uapi/xos_vmfunc.h` is the definition; this module
//! mirrors it (`tests/vmfunc_abi.rs` compiles the header with gcc and
//! compares every size, offset and ioctl number). The module's guarantees
//! and limits are in `vmfunc-kmod/README.md`.
//!
//! ```no_run
//! use vmm::vmfunc::{Prot, VmfuncDevice};
//! # fn demo(vm_fd: std::os::fd::RawFd) -> Result<(), vmm::vmfunc::VmfuncError> {
//! let dev = VmfuncDevice::open()?;
//! dev.attach(vm_fd)?;
//! let view = dev.create_view(false)?;
//! dev.map(view, Prot::READ | Prot::EXEC, 0x8000, 0x1000, 0x9000)?;
//! dev.enable_vcpu(0)?; // not while the vCPU is in KVM_RUN: waits for it
//! # Ok(()) }
//! ```

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, RawFd};
use std::os::raw::{c_uint, c_ulong};
use std::os::unix::fs::OpenOptionsExt;
use vmm_sys_util::ioctl::{ioctl_expr, ioctl_with_mut_ref, ioctl_with_ref, _IOC_READ, _IOC_WRITE};

/// `XOS_VMFUNC_ABI_VERSION`: the ABI this mirror speaks.
pub const ABI_VERSION: u32 = 1;
/// `XOS_VMFUNC_DEVICE_NAME`: the misc device's name under `/dev`.
pub const DEVICE_NAME: &str = "xos-vmfunc";
/// The device path.
pub const DEVICE_PATH: &str = "/dev/xos-vmfunc";
/// `XOS_VMFUNC_MAX_VIEWS`: EPTP-list slots used, slot 0 (the base view) included.
pub const MAX_VIEWS: u32 = 16;
/// `XOS_VMFUNC_VIEW_KVM`: [`VcpuStatus::current_view`] when the vCPU runs on KVM's own root.
pub const VIEW_KVM: u32 = 0xffff_ffff;

/// `XOS_VMFUNC_CAP_*`: capabilities in [`Info::caps`].
pub mod cap {
    /// VMX with readable capability MSRs.
    pub const VMX: u64 = 1 << 0;
    /// "Enable VM functions" allowed in the secondary controls.
    pub const VMFUNC_CTL: u64 = 1 << 1;
    /// EPTP switching (VM function 0).
    pub const EPTP_SWITCH: u64 = 1 << 2;
    /// 4-level EPT walks.
    pub const EPT_4LEVEL: u64 = 1 << 3;
    /// Write-back EPT paging-structure memory type.
    pub const EPT_WB: u64 = 1 << 4;
    /// INVEPT with a usable type.
    pub const INVEPT: u64 = 1 << 5;
    /// INVEPT single-context.
    pub const INVEPT_SINGLE: u64 = 1 << 6;
    /// INVEPT all-context.
    pub const INVEPT_ALL: u64 = 1 << 7;
    /// Execute-only EPT entries.
    pub const EPT_EXEC_ONLY: u64 = 1 << 8;
    /// EPT accessed/dirty flags (informational).
    pub const EPT_AD: u64 = 1 << 9;
    /// `XOS_VMFUNC_CAPS_REQUIRED`.
    pub const REQUIRED: u64 = VMX | VMFUNC_CTL | EPTP_SWITCH | EPT_4LEVEL | EPT_WB | INVEPT;
}

/// `XOS_VMFUNC_INFO_USABLE`.
pub const INFO_USABLE: u32 = 1 << 0;
/// `XOS_VMFUNC_VIEW_EMPTY`: a view that starts with nothing mapped.
pub const VIEW_EMPTY: u32 = 1 << 0;
/// `XOS_VMFUNC_VCPU_ENABLED`.
pub const VCPU_ENABLED: u32 = 1 << 0;
/// `XOS_VMFUNC_VCPU_SWITCHING`.
pub const VCPU_SWITCHING: u32 = 1 << 1;

/// `XOS_VMFUNC_PROT_*`: permissions of a mapping (the EPT R/W/X bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prot(pub u32);

impl Prot {
    /// Readable.
    pub const READ: Prot = Prot(1 << 0);
    /// Writable (needs [`Prot::READ`]).
    pub const WRITE: Prot = Prot(1 << 1);
    /// Executable.
    pub const EXEC: Prot = Prot(1 << 2);
    /// Read, write and execute.
    pub const ALL: Prot = Prot(7);
}

impl std::ops::BitOr for Prot {
    type Output = Prot;
    fn bitor(self, rhs: Prot) -> Prot {
        Prot(self.0 | rhs.0)
    }
}

/// `struct xos_vmfunc_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Info {
    /// `XOS_VMFUNC_ABI_VERSION` of the loaded module.
    pub abi_version: u32,
    /// Slots used, slot 0 included.
    pub max_views: u32,
    /// [`cap`] bits found on this CPU.
    pub caps: u64,
    /// Required capabilities that are missing.
    pub missing: u64,
    /// [`INFO_USABLE`].
    pub flags: u32,
    /// Zero.
    pub reserved0: u32,
    /// Zero.
    pub reserved: [u64; 4],
}

/// `struct xos_vmfunc_attach`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attach {
    /// A KVM VM fd of the calling process.
    pub vm_fd: i32,
    /// Zero.
    pub flags: u32,
    /// Zero.
    pub reserved: [u64; 2],
}

/// `struct xos_vmfunc_view`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// CREATE: out; DESTROY: in.
    pub view: u32,
    /// CREATE: [`VIEW_EMPTY`] or 0; DESTROY: 0.
    pub flags: u32,
    /// Zero.
    pub reserved: [u64; 2],
}

/// `struct xos_vmfunc_map`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Map {
    /// A view made by CREATE_VIEW (not 0).
    pub view: u32,
    /// [`Prot`] bits (UNMAP: 0).
    pub prot: u32,
    /// First guest-physical address in the view.
    pub gpa: u64,
    /// Bytes, page aligned, > 0.
    pub size: u64,
    /// Guest-physical address of the source, inside the memslots (UNMAP: 0).
    pub source_gpa: u64,
    /// Zero.
    pub reserved: [u64; 2],
}

/// `struct xos_vmfunc_vcpu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vcpu {
    /// The id given to KVM_CREATE_VCPU.
    pub vcpu_id: u32,
    /// Zero.
    pub flags: u32,
    /// Zero.
    pub reserved: [u64; 2],
}

/// `struct xos_vmfunc_vcpu_status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuStatus {
    /// In: the vCPU.
    pub vcpu_id: u32,
    /// Out: [`VCPU_ENABLED`], [`VCPU_SWITCHING`].
    pub flags: u32,
    /// Out: the view the vCPU is in, or [`VIEW_KVM`].
    pub current_view: u32,
    /// Zero.
    pub reserved0: u32,
    /// Out: the VMCS field VM_FUNCTION_CONTROL.
    pub vm_function_control: u64,
    /// Zero.
    pub reserved: [u64; 2],
}

/// `struct xos_vmfunc_vcpu_view`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuView {
    /// The vCPU (as given to KVM_CREATE_VCPU).
    pub vcpu_id: u32,
    /// The EPTP-list entry: 0 (the base view) or an existing view.
    pub view: u32,
    /// Zero.
    pub reserved: u64,
}

/// `XOS_VMFUNC_IOC_MAGIC`.
pub const IOC_MAGIC: c_uint = 0xE5;

const fn ior(nr: c_uint, size: usize) -> c_ulong {
    ioctl_expr(_IOC_READ, IOC_MAGIC, nr, size as c_uint)
}
const fn iow(nr: c_uint, size: usize) -> c_ulong {
    ioctl_expr(_IOC_WRITE, IOC_MAGIC, nr, size as c_uint)
}
const fn iowr(nr: c_uint, size: usize) -> c_ulong {
    ioctl_expr(_IOC_READ | _IOC_WRITE, IOC_MAGIC, nr, size as c_uint)
}

/// `XOS_VMFUNC_GET_INFO`.
pub const GET_INFO: c_ulong = ior(0x00, size_of::<Info>());
/// `XOS_VMFUNC_ATTACH`.
pub const ATTACH: c_ulong = iow(0x01, size_of::<Attach>());
/// `XOS_VMFUNC_CREATE_VIEW`.
pub const CREATE_VIEW: c_ulong = iowr(0x02, size_of::<View>());
/// `XOS_VMFUNC_DESTROY_VIEW`.
pub const DESTROY_VIEW: c_ulong = iow(0x03, size_of::<View>());
/// `XOS_VMFUNC_MAP`.
pub const MAP: c_ulong = iow(0x04, size_of::<Map>());
/// `XOS_VMFUNC_UNMAP`.
pub const UNMAP: c_ulong = iow(0x05, size_of::<Map>());
/// `XOS_VMFUNC_ENABLE_VCPU`.
pub const ENABLE_VCPU: c_ulong = iow(0x06, size_of::<Vcpu>());
/// `XOS_VMFUNC_DISABLE_VCPU`.
pub const DISABLE_VCPU: c_ulong = iow(0x07, size_of::<Vcpu>());
/// `XOS_VMFUNC_VCPU_STATUS`.
pub const VCPU_STATUS: c_ulong = iowr(0x08, size_of::<VcpuStatus>());
/// `XOS_VMFUNC_SET_VCPU_VIEW`.
pub const SET_VCPU_VIEW: c_ulong = iow(0x09, size_of::<VcpuView>());

/// Why the module cannot be used, or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmfuncError {
    /// `/dev/xos-vmfunc` does not exist.
    #[error("/dev/xos-vmfunc: no such device (load vmfunc-kmod, see vmfunc-kmod/README.md)")]
    NotLoaded,
    /// The device exists but this user may not open it.
    #[error(
        "/dev/xos-vmfunc: permission denied (root only by default, see vmfunc-kmod/README.md)"
    )]
    Permission,
    /// The loaded module speaks another ABI.
    #[error("/dev/xos-vmfunc: the module speaks ABI {module}, this program ABI {expected} (rebuild one of them)")]
    AbiMismatch {
        /// The module's `abi_version`.
        module: u32,
        /// [`ABI_VERSION`].
        expected: u32,
    },
    /// The CPU lacks something EPTP switching needs.
    #[error("/dev/xos-vmfunc: EPTP switching is not available on this CPU (missing capability bits {missing:#x})")]
    Unsupported {
        /// Required [`cap`] bits that are missing.
        missing: u64,
    },
    /// An ioctl (or open) failed.
    #[error("/dev/xos-vmfunc: {op}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl VmfuncError {
    /// The errno of an [`VmfuncError::Io`], if that is what it is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            VmfuncError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// An open `/dev/xos-vmfunc`: at most one attached VM. Closing it (drop)
/// disables switching on every vCPU and frees every view.
#[derive(Debug)]
pub struct VmfuncDevice {
    file: File,
    info: Info,
}

impl VmfuncDevice {
    /// Opens the device and checks the module's ABI version.
    pub fn open() -> Result<Self, VmfuncError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(DEVICE_PATH)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => VmfuncError::NotLoaded,
                Some(libc::EACCES | libc::EPERM) => VmfuncError::Permission,
                _ => VmfuncError::Io {
                    op: "open",
                    source: e,
                },
            })?;
        let mut info = Info::default();
        // SAFETY: `file` is an open fd; GET_INFO writes exactly one `Info`
        // (its size is encoded in the request number) into `info`.
        let r = unsafe { ioctl_with_mut_ref(&file, GET_INFO, &mut info) };
        check(r, "GET_INFO")?;
        if info.abi_version != ABI_VERSION {
            return Err(VmfuncError::AbiMismatch {
                module: info.abi_version,
                expected: ABI_VERSION,
            });
        }
        Ok(VmfuncDevice { file, info })
    }

    /// Opens the device if the module is loaded and this CPU can switch
    /// EPT views: what a VMM that drives it needs to know first.
    pub fn open_usable() -> Result<Self, VmfuncError> {
        let device = Self::open()?;
        if device.info.flags & INFO_USABLE == 0 {
            return Err(VmfuncError::Unsupported {
                missing: device.info.missing,
            });
        }
        Ok(device)
    }

    /// What the module reported at open.
    pub fn info(&self) -> Info {
        self.info
    }

    /// Attaches the VM behind `vm_fd` (a KVM VM fd of this process).
    pub fn attach(&self, vm_fd: RawFd) -> Result<(), VmfuncError> {
        if self.info.flags & INFO_USABLE == 0 {
            return Err(VmfuncError::Unsupported {
                missing: self.info.missing,
            });
        }
        let arg = Attach {
            vm_fd,
            ..Attach::default()
        };
        // SAFETY: the request reads one `Attach` from `arg`, which lives
        // for the call; the fd is only a number to the module.
        let r = unsafe { ioctl_with_ref(&self.file, ATTACH, &arg) };
        check(r, "ATTACH")
    }

    /// Makes a view: a mirror of every memslot, or empty. Returns its slot.
    pub fn create_view(&self, empty: bool) -> Result<u32, VmfuncError> {
        let mut arg = View {
            flags: if empty { VIEW_EMPTY } else { 0 },
            ..View::default()
        };
        // SAFETY: the request reads and writes one `View` in `arg`.
        let r = unsafe { ioctl_with_mut_ref(&self.file, CREATE_VIEW, &mut arg) };
        check(r, "CREATE_VIEW")?;
        Ok(arg.view)
    }

    /// Destroys a view (no vCPU may be enabled).
    pub fn destroy_view(&self, view: u32) -> Result<(), VmfuncError> {
        let arg = View {
            view,
            ..View::default()
        };
        // SAFETY: the request reads one `View` from `arg`.
        let r = unsafe { ioctl_with_ref(&self.file, DESTROY_VIEW, &arg) };
        check(r, "DESTROY_VIEW")
    }

    /// In `view`, shows `[source_gpa, +size)` at `[gpa, +size)` with `prot`.
    pub fn map(
        &self,
        view: u32,
        prot: Prot,
        gpa: u64,
        size: u64,
        source_gpa: u64,
    ) -> Result<(), VmfuncError> {
        let arg = Map {
            view,
            prot: prot.0,
            gpa,
            size,
            source_gpa,
            ..Map::default()
        };
        // SAFETY: the request reads one `Map` from `arg`.
        let r = unsafe { ioctl_with_ref(&self.file, MAP, &arg) };
        check(r, "MAP")
    }

    /// Removes `[gpa, +size)` from `view`.
    pub fn unmap(&self, view: u32, gpa: u64, size: u64) -> Result<(), VmfuncError> {
        let arg = Map {
            view,
            gpa,
            size,
            ..Map::default()
        };
        // SAFETY: the request reads one `Map` from `arg`.
        let r = unsafe { ioctl_with_ref(&self.file, UNMAP, &arg) };
        check(r, "UNMAP")
    }

    /// Enables EPTP switching on a vCPU (again after a reset: idempotent).
    pub fn enable_vcpu(&self, vcpu_id: u32) -> Result<(), VmfuncError> {
        self.vcpu_op(ENABLE_VCPU, vcpu_id, "ENABLE_VCPU")
    }

    /// Disables EPTP switching on a vCPU; KVM's own root is back at its next run.
    pub fn disable_vcpu(&self, vcpu_id: u32) -> Result<(), VmfuncError> {
        self.vcpu_op(DISABLE_VCPU, vcpu_id, "DISABLE_VCPU")
    }

    /// Reads a vCPU's switching state from its VMCS.
    pub fn vcpu_status(&self, vcpu_id: u32) -> Result<VcpuStatus, VmfuncError> {
        let mut arg = VcpuStatus {
            vcpu_id,
            ..VcpuStatus::default()
        };
        // SAFETY: the request reads and writes one `VcpuStatus` in `arg`.
        let r = unsafe { ioctl_with_mut_ref(&self.file, VCPU_STATUS, &mut arg) };
        check(r, "VCPU_STATUS")?;
        Ok(arg)
    }

    /// Puts an enabled vCPU (not while it runs) into EPTP-list entry `view`
    /// (0 = the base view, or an existing view) for its next KVM_RUN, without
    /// the guest executing VMFUNC. EINVAL if the vCPU is not enabled or the
    /// view does not exist; EAGAIN if KVM has not loaded its root yet (run
    /// the vCPU once first). A later KVM MMU reload puts the vCPU back on
    /// KVM's own root.
    pub fn set_vcpu_view(&self, vcpu_id: u32, view: u32) -> Result<(), VmfuncError> {
        let arg = VcpuView {
            vcpu_id,
            view,
            ..VcpuView::default()
        };
        // SAFETY: `self.file` is the open device; SET_VCPU_VIEW reads one
        // `VcpuView` (its size is encoded in the request number) from `arg`,
        // which lives for the call, and writes nothing back.
        let r = unsafe { ioctl_with_ref(&self.file, SET_VCPU_VIEW, &arg) };
        check(r, "SET_VCPU_VIEW")
    }

    fn vcpu_op(&self, req: c_ulong, vcpu_id: u32, op: &'static str) -> Result<(), VmfuncError> {
        let arg = Vcpu {
            vcpu_id,
            ..Vcpu::default()
        };
        // SAFETY: ENABLE_VCPU and DISABLE_VCPU read one `Vcpu` from `arg`.
        let r = unsafe { ioctl_with_ref(&self.file, req, &arg) };
        check(r, op)
    }
}

impl AsRawFd for VmfuncDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn check(r: i32, op: &'static str) -> Result<(), VmfuncError> {
    if r < 0 {
        Err(VmfuncError::Io {
            op,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_encode_direction_size_and_magic() {
        // _IOR(0xE5, 0, 64 bytes)
        assert_eq!(GET_INFO, (2 << 30) | (64 << 16) | (0xE5 << 8));
        assert_eq!(ATTACH, (1 << 30) | (24 << 16) | (0xE5 << 8) | 1);
        assert_eq!(VCPU_STATUS, (3 << 30) | (40 << 16) | (0xE5 << 8) | 8);
        assert_eq!(SET_VCPU_VIEW, (1 << 30) | (16 << 16) | (0xE5 << 8) | 9);
    }

    #[test]
    fn missing_device_says_how_to_load_it() {
        let msg = VmfuncError::NotLoaded.to_string();
        assert!(msg.contains("vmfunc-kmod/README.md"), "{msg}");
    }

    #[test]
    fn open_without_the_module_is_not_loaded() {
        if std::path::Path::new(DEVICE_PATH).exists() {
            return;
        }
        assert!(matches!(VmfuncDevice::open(), Err(VmfuncError::NotLoaded)));
    }
}
