//! The xos monitor: KVM virtual machines set up to run guest images at
//! CPL3, with the xos hypercall ABI (`docs/ABI.md`).
//!
//! This crate knows nothing of isolation context factories; `icf` builds
//! them on top of it.
//!
//! - [`kvm`]: the process-wide `/dev/kvm` handle and its probe.
//! - [`memory`], [`arch`], [`machine`]: guest memory, long-mode set-up, the
//!   VM and its vCPU.
//! - [`loader`]: validating and loading ELF images; [`elf_writer`] makes
//!   tiny ones for tests and benchmarks.
//! - [`layout`], [`hypercall`], [`io`], [`host_fn`]: the ABI.
//! - [`snapshot`]: a stopped guest's complete state, to a file and back;
//!   [`pool`]: warm instances of a snapshot, reset after every call.
//! - [`runner`], [`executor`], [`reaper`], [`interrupt`], [`seccomp`], [`exit`]: running
//!   a guest to its end on a filtered vCPU thread and reporting how it ended.
//! - [`mmio`]: a device on the guest's MMIO page (the virtio channel).
//! - [`view`]: EPT views by memory-slot switching (the `ept-view`
//!   fallback where there is no `VMFUNC`); [`view_host`]: ICs as the
//!   views of one VM, calling each other through the trampoline.
//! - [`vm`]: a long-lived VM (booted once, run many times; the `vm` ICF).
//! - [`vmfunc`]: the ioctl ABI of `vmfunc-kmod` (EPTP switching, VMFUNC) and a safe wrapper.
//! - [`pivot`]: an execution flow's state at a safe point, which every
//!   kind of IC can continue (`mutate`).
//! - [`window`]: memory shared with a peer, mapped into the guest (the
//!   channel window).
#![deny(missing_docs)]

pub mod arch;
pub mod elf_writer;
pub mod executor;
pub mod exit;
pub mod host_fn;
pub mod hypercall;
pub mod interrupt;
pub mod io;
pub mod kvm;
pub mod layout;
pub mod loader;
pub mod machine;
pub mod memory;
pub mod mmio;
pub mod pivot;
pub mod pool;
pub mod reaper;
pub mod runner;
pub mod seccomp;
pub mod snapshot;
pub mod view;
pub mod view_host;
pub mod vm;
pub mod vmfunc;
pub mod window;

pub use exit::{Fault, GuestExit, GuestRegs, RunStats};
pub use host_fn::HostFunctions;
pub use interrupt::Interrupter;
pub use io::{GuestIo, SharedBuffer};
pub use loader::{ImageError, Program, Segment};
pub use runner::{run_program, RunConfig, RunError, RunOutcome};
pub use window::SharedWindow;
