//! `xos-guest`: the runtime for Rust functions that run inside an xos
//! isolation context (a "virtine": a tiny VM, entered at CPL3), guest ABI v1.
//!
//! The guest has no kernel and no libc: everything a run needs (arguments,
//! environment, the first chunk of stdin, a heap range) is in guest memory
//! before entry, described by the `BootInfo` page (`docs/ABI.md`), and the
//! only way out is a hypercall (a write to the doorbell address, an MMIO
//! exit). This crate turns that
//! into the familiar pieces of a Rust program: an entry point, `args`/`env`,
//! `print!`/`println!` and a stdin reader, a heap for `alloc`, a panic
//! handler, and the `mem*` symbols the compiler expects.
//!
//! A minimal image:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use xos_guest::println;
//!
//! xos_guest::entry!(main);
//!
//! fn main(args: xos_guest::Args) -> i32 {
//!     println!("{} arguments", args.len());
//!     0
//! }
//! ```
//!
//! Building needs the linker settings of `images/rust` (see README.md).
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

/// The ABI definitions (BootInfo, hypercall numbers, error codes, layout).
pub use xos_abi as abi;

pub mod args;
mod boot;
pub mod env;
mod heap;
pub mod hypercall;
pub mod io;
mod mem;
mod output;
mod panic;
mod start;
pub mod view;

pub use args::{args, args_bytes, Args, ArgsBytes};
pub use hypercall::{abort, exit, host_call, ready, HostCallError};
pub use start::Main;

/// Implementation details used by the macros of this crate; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::io::_print;
    pub use crate::start::start;
}
