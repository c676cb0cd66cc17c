//! Access to the `BootInfo` page at its fixed address (0x20000).
//!
//! The monitor fills the page before entry and changes some fields while it
//! handles a hypercall (`stdin.len`/`stdin.eof`, `output.used`,
//! `hypercall.ret`); it also reads fields the guest writes (`output.used`,
//! `hypercall.args`). So every access goes through a volatile read or write:
//! the compiler must neither reuse a value read before a hypercall nor drop
//! or delay a store the monitor is about to read. Fields that never change
//! are read the same way, for uniformity; it costs nothing measurable.

use xos_abi::{layout, BootInfo, ABI_VERSION, BOOT_MAGIC};

/// The BootInfo page. It is always mapped (the ABI fixes its address), and
/// this runtime is the only code in the guest that touches it.
pub(crate) const BOOT: *mut BootInfo = layout::BOOT_INFO as *mut BootInfo;

/// Volatile read of a BootInfo field: `get!(stdin.len)`.
macro_rules! get {
    ($($field:ident).+) => {
        // SAFETY: BOOT points at the always-mapped BootInfo page and the
        // field path names a plain integer field inside it.
        unsafe { ::core::ptr::addr_of!((*$crate::boot::BOOT).$($field).+).read_volatile() }
    };
}

/// Volatile write of a BootInfo field: `set!(output.used = 0)`.
macro_rules! set {
    ($($field:ident).+ = $value:expr) => {{
        let value = $value;
        // SAFETY: as for `get!`; the page is user read/write.
        unsafe { ::core::ptr::addr_of_mut!((*$crate::boot::BOOT).$($field).+).write_volatile(value) }
    }};
}

pub(crate) use {get, set};

/// Checks that the monitor speaks this runtime's ABI. `entry` is the RDI
/// value `_start` received. Returns a message for `abort` otherwise.
pub(crate) fn check(entry: *const BootInfo) -> Result<(), &'static str> {
    if get!(magic) != BOOT_MAGIC {
        return Err("xos-guest: BootInfo magic is not \"XOSBOOT1\": \
                    this image does not run under an xos monitor of ABI v1");
    }
    if get!(abi_version) != ABI_VERSION {
        return Err("xos-guest: BootInfo.abi_version is not 1: \
                    the monitor and this image's runtime speak different ABI versions");
    }
    if entry as u64 != layout::BOOT_INFO {
        return Err("xos-guest: RDI at entry is not the BootInfo address 0x20000");
    }
    Ok(())
}
