//! Program start: [`entry!`](crate::entry) and what runs before `main`.
//!
//! `entry!(main)` expands, in the image crate, to `_start` (in section
//! `.text._start`, which the linker script puts first at 0x100000) and to a
//! start function that calls [`start`]. Emitting `_start` in the image crate
//! rather than in this library makes sure it is always linked: nothing
//! references `_start`, so an object of an rlib holding it could be left
//! out by the linker. It also lets `start` call `main` directly, with no
//! symbol to resolve at link time.
//!
//! `_start` receives RDI = the BootInfo address and RSP = the stack top. It
//! clears RBP (the end of frame-pointer chains), aligns the stack to 16 and
//! calls the start function with RDI unchanged; a `ud2` follows in case it
//! ever returned.

use xos_abi::BootInfo;

use crate::args::Args;
use crate::boot::get;

/// A function `entry!` can call: `fn main() -> i32`, `fn main(Args) -> i32`,
/// `fn main()` or `fn main(Args)`. The `i32` is the exit code (low 8 bits
/// kept); returning `()` exits with 0.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the main function of an xos guest",
    note = "use `fn main() -> i32`, `fn main(args: xos_guest::Args) -> i32`, `fn main()` or `fn main(args: xos_guest::Args)`"
)]
pub trait Main<Marker> {
    /// Runs the function and returns the exit code.
    fn call_main(self) -> i32;
}

/// Marker types selecting an implementation of [`Main`]; not used directly.
#[doc(hidden)]
pub mod markers {
    pub struct NoArgs;
    pub struct WithArgs;
    pub struct NoArgsUnit;
    pub struct WithArgsUnit;
}

impl<F: FnOnce() -> i32> Main<markers::NoArgs> for F {
    fn call_main(self) -> i32 {
        self()
    }
}

impl<F: FnOnce(Args) -> i32> Main<markers::WithArgs> for F {
    fn call_main(self) -> i32 {
        self(crate::args())
    }
}

impl<F: FnOnce()> Main<markers::NoArgsUnit> for F {
    fn call_main(self) -> i32 {
        self();
        0
    }
}

impl<F: FnOnce(Args)> Main<markers::WithArgsUnit> for F {
    fn call_main(self) -> i32 {
        self(crate::args());
        0
    }
}

/// Runs an image: checks BootInfo (aborting with a clear message if the
/// monitor speaks another ABI), sets up the heap, runs `main`, and exits
/// with its code. Called by the code `entry!` generates.
pub fn start<M>(boot: *const BootInfo, main: impl Main<M>) -> ! {
    if let Err(msg) = crate::boot::check(boot) {
        crate::abort(msg);
    }
    crate::heap::init(get!(heap_start), get!(heap_end));
    let code = main.call_main();
    crate::exit(code)
}

/// Declares the image's main function and generates the entry point
/// (`_start`) that runs it.
///
/// ```ignore
/// #![no_std]
/// #![no_main]
/// xos_guest::entry!(main);
/// fn main(args: xos_guest::Args) -> i32 { 0 }
/// ```
///
/// `main` may be `fn() -> i32`, `fn(Args) -> i32`, `fn()` or `fn(Args)`
/// (see [`Main`]). Use the macro exactly once, in the binary crate; the
/// crate needs `#![no_std]` and `#![no_main]`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// Called by `_start` with RDI = the BootInfo address.
        #[doc(hidden)]
        #[unsafe(link_section = ".text.xos_start")]
        extern "C" fn __xos_guest_start(boot: *const $crate::abi::BootInfo) -> ! {
            $crate::__private::start(boot, $main)
        }

        ::core::arch::global_asm!(
            ".pushsection .text._start, \"ax\", @progbits",
            ".globl _start",
            ".type _start, @function",
            "_start:",
            "xor ebp, ebp",
            "and rsp, -16",
            "call {start}",
            "ud2",
            ".size _start, . - _start",
            ".popsection",
            start = sym __xos_guest_start,
        );
    };
}
