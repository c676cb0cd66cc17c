//! The Virtual Isolation Context (VIC) layer of xOS: isolation context
//! factories (ICFs) register here and create isolation contexts (ICs);
//! communication mechanisms are registered per pair of ICF kinds.
//!
//! Where each VIC operation lives:
//!
//! | VIC operation | here |
//! |---|---|
//! | `ic_init` | [`IsolationContextFactory::init`] |
//! | `get_icfs` | [`Registry::get_icfs`] |
//! | `ic_create` | [`IsolationContextFactory::create`] |
//! | `ic_switch_in` / `ic_switch_out` | [`IsolationContext::switch_in`] / [`IsolationContext::switch_out`] |
//! | `ic_dump` / `ic_restore` | [`IsolationContext::dump`] / [`IsolationContextFactory::restore`] |
//! | `register_com(a, b)` | [`Registry::register_com`], table in [`com`] |
//! | `mutate(a, b)` | [`Registry::mutate`], through [`IsolationContextFactory::convert_to_process`] and [`IsolationContextFactory::convert_from_process`] |
//!
//! Factories: [`virtine`] (a fresh micro-VM per run), [`vm`] (a long-lived
//! VM whose execution flow keeps running across runs), [`process`] (a host
//! process running the same image, for comparison; the `mutate` pivot),
//! [`thread`] (a thread of the monitor), [`ept_view`] (EPT views of one
//! VM, calling each other through a trampoline).
#![deny(missing_docs)]

pub mod channel;
pub mod com;
pub mod ept_view;
pub mod error;
pub mod factory;
pub mod process;
pub mod registry;
pub mod thread;
pub mod trap;
pub mod virtine;
pub mod vm;

pub use channel::{Channel, ChannelError};
pub use com::{Choice, ChoiceReason, ComCosts, ComError, ComMechanism, ComTable};
pub use error::IcfError;
pub use factory::{Availability, IcSpec, IsolationContext, IsolationContextFactory, ProcessImage};
pub use registry::{IcfInfo, Registry, RegistryError};
