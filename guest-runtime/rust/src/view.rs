//! Cross-view calls in an `ept-view` IC (docs/ABI.md, "EPT views"): thin
//! wrappers around the monitor's trampoline page, which switches views and
//! scrubs registers; the same calls as the C runtime's `xos_view_*`.
//!
//! A connected pair of views shares one message area: a caller puts its
//! request there and [`call`]s; the callee, parked in [`serve`], gets its
//! handler run with the request's length, writes the reply over the
//! request and returns the reply's length.

use core::ptr::{addr_of, addr_of_mut};

use xos_abi::{err, layout::VIEW_CONTROL, view, ViewControl, DEVICE_VIEWS};

use crate::boot::get;

/// What this IC is in a VM with views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not a view, or a view without a peer.
    None,
    /// Connected to a peer it calls.
    Caller,
    /// Connected to a peer that calls it.
    Callee,
}

/// A handler for [`serve`]: `handler(len, cap)` finds the request in the
/// first `len` bytes of the message area ([`message_area`]), writes the
/// reply there (at most `cap` bytes) and returns the reply's length.
pub type Handler = extern "C" fn(len: u64, cap: u64) -> u64;

const CONTROL: *mut ViewControl = VIEW_CONTROL as *mut ViewControl;

/// This IC's role. The control block is mapped only in a VM with views
/// (`BootInfo.devices`), so nothing is read elsewhere.
pub fn role() -> Role {
    if get!(devices) & DEVICE_VIEWS == 0 {
        return Role::None;
    }
    // SAFETY: in a VM with views the control block page is mapped, user
    // readable; the monitor writes these fields before the run.
    let (addr, size, peer) = unsafe {
        (
            addr_of!((*CONTROL).msg_addr).read_volatile(),
            addr_of!((*CONTROL).msg_size).read_volatile(),
            addr_of!((*CONTROL).peer).read_volatile(),
        )
    };
    match (addr, size, peer) {
        (0, _, _) | (_, 0, _) => Role::None,
        (_, _, view::NO_PEER) => Role::Callee,
        _ => Role::Caller,
    }
}

/// The message area shared with the peer (empty without one).
///
/// # Safety
///
/// The peer reads and writes the area during calls: use the slice only
/// where no call is in flight (before [`call`], after it returns, or in a
/// handler), and do not keep it across one.
pub unsafe fn message_area() -> &'static mut [u8] {
    if role() == Role::None {
        return &mut [];
    }
    // SAFETY: the monitor maps `msg_size` bytes at `msg_addr`, user
    // read/write, in both views of the pair; the caller keeps to the rules
    // above.
    unsafe {
        let addr = addr_of!((*CONTROL).msg_addr).read_volatile();
        let size = addr_of!((*CONTROL).msg_size).read_volatile();
        core::slice::from_raw_parts_mut(addr as *mut u8, size as usize)
    }
}

/// Calls the peer with `request`; its reply is copied into `reply`.
/// Returns the reply's length, or a negative `xos_abi::err` value:
/// `EINVAL` if this IC is not a caller, `E2BIG` if the request does not fit
/// the message area or the reply does not fit `reply` (the peer's answer
/// is checked, not trusted), `EPIPE` if the peer is gone or failed.
pub fn call(request: &[u8], reply: &mut [u8]) -> Result<usize, i64> {
    if role() != Role::Caller {
        return Err(err::EINVAL);
    }
    // SAFETY: no call is in flight; the slice is dropped before the call.
    let size = unsafe { message_area() }.len();
    if request.len() > size {
        return Err(err::E2BIG);
    }
    // SAFETY: as above.
    let area = unsafe { message_area() };
    area[..request.len()].copy_from_slice(request);
    // SAFETY: `view::CALL` is the trampoline's `long view_call(u64 len,
    // u64 cap)`, a System V function the monitor maps in every view; it
    // keeps the callee-saved registers and returns on this stack.
    let n = unsafe {
        let view_call: extern "C" fn(u64, u64) -> i64 =
            core::mem::transmute(view::CALL as usize);
        view_call(request.len() as u64, size as u64)
    };
    if n < 0 {
        return Err(n);
    }
    let n = n as usize;
    if n > size || n > reply.len() {
        return Err(err::E2BIG);
    }
    // SAFETY: the call has returned.
    let area = unsafe { message_area() };
    reply[..n].copy_from_slice(&area[..n]);
    Ok(n)
}

/// Serves the peer's calls with `handler` until the peer is gone; returns
/// `EPIPE` then, or `EINVAL` if this IC is not a callee.
pub fn serve(handler: Handler) -> i64 {
    if role() != Role::Callee {
        return err::EINVAL;
    }
    // SAFETY: the control block is mapped, user writable; `handler` is
    // where the trampoline calls, and `view::SERVE` is its `long
    // view_serve(void)`, returning here once the service is over.
    unsafe {
        addr_of_mut!((*CONTROL).handler).write_volatile(handler as usize as u64);
        let view_serve: extern "C" fn() -> i64 = core::mem::transmute(view::SERVE as usize);
        view_serve()
    }
}
