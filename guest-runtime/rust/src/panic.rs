//! The panic handler: a panic ends the run as aborted (`ABORT` hypercall,
//! `xos-vmm run` exits 134) with the panic message and location as the
//! reason, e.g. `panicked at src/main.rs:9:5:\ndeliberate panic: 42`.
//!
//! The message is formatted into a fixed buffer on the stack, so the handler
//! does not allocate (the panic may come from the allocator, or from running
//! out of heap); a panic while panicking (e.g. in a `Display` impl of the
//! message) aborts at once with a fixed message instead of recursing.

use core::fmt::{self, Write};

/// A `fmt::Write` into a fixed array that truncates (at a UTF-8 boundary)
/// when full.
#[cfg_attr(test, allow(dead_code))]
pub(crate) struct FixedBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> FixedBuf<N> {
    pub(crate) const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only whole UTF-8 sequences are ever copied in.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> Write for FixedBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            Err(fmt::Error) // full: stop formatting
        } else {
            Ok(())
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::sync::atomic::{AtomicBool, Ordering::Relaxed};
    /// The monitor keeps up to 4096 bytes of an abort message.
    const MSG_CAP: usize = 4096;
    static PANICKING: AtomicBool = AtomicBool::new(false);
    if PANICKING.swap(true, Relaxed) {
        crate::abort("xos-guest: panicked while handling a panic");
    }
    let mut msg = FixedBuf::<MSG_CAP>::new();
    let _ = match info.location() {
        Some(loc) => write!(
            msg,
            "panicked at {}:{}:{}:\n{}",
            loc.file(),
            loc.line(),
            loc.column(),
            info.message()
        ),
        None => write!(msg, "panicked:\n{}", info.message()),
    };
    crate::abort(msg.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_buf_truncates_at_char_boundary() {
        let mut b = FixedBuf::<5>::new();
        assert!(write!(b, "ab").is_ok());
        assert!(write!(b, "cé€").is_err()); // "c" + "é" = 3 bytes fit, "€" not
        assert_eq!(b.as_str(), "abcé");
        assert!(write!(b, "x").is_err());
        assert_eq!(b.as_str(), "abcé");
    }
}

/// Never called: the prebuilt `core`/`alloc` are compiled with unwinding,
/// so their cleanup paths reference `_Unwind_Resume` even though with
/// `panic = "abort"` no unwind ever starts. The guest has no unwinder (and
/// no libgcc), so this stub resolves the symbol; reaching it is a bug.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    crate::abort("xos-guest: _Unwind_Resume called, but guests do not unwind")
}

/// Never called, like `_Unwind_Resume`: the unwind tables of the prebuilt
/// `core`/`alloc` name this personality routine, which unoptimized (non-LTO)
/// builds keep references to.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn rust_eh_personality() -> ! {
    crate::abort("xos-guest: rust_eh_personality called, but guests do not unwind")
}
