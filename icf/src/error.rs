//! Errors of the VIC layer.

use vmm::snapshot::SnapshotError;
use vmm::{GuestExit, ImageError, RunError};

/// What went wrong in a VIC operation.
#[derive(Debug, thiserror::Error)]
pub enum IcfError {
    /// The factory does not implement this operation (yet).
    #[error("the {icf} isolation context factory does not support {operation}")]
    Unsupported {
        /// The factory.
        icf: &'static str,
        /// The VIC operation, e.g. "ic_dump".
        operation: &'static str,
    },
    /// The factory's `init` probe failed.
    #[error("the {icf} isolation context factory is unavailable: {reason}")]
    Unavailable {
        /// The factory.
        icf: &'static str,
        /// Why, from its probe.
        reason: String,
    },
    /// The image is not acceptable.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Running the IC failed on the host side.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A snapshot file is not usable.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// `ic_dump` ran the guest to its ready point, but it ended first.
    #[error("the guest ended before it called xos_ready(), so there is no ready point to snapshot ({exit}){}", if stderr.is_empty() { String::new() } else { format!("; its stderr: {}", stderr.trim_end()) })]
    NotReady {
        /// How it ended.
        exit: Box<GuestExit>,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// `mutate` needs the IC's execution flow stopped at a safe point.
    #[error("the {icf} IC's execution flow is not stopped at a safe point: call interrupter().request_safe_point() while it runs, and mutate it once run() returned GuestExit::SafePoint (the guest must call xos_safe_point() between messages)")]
    NotAtSafePoint {
        /// The IC's kind.
        icf: &'static str,
    },
    /// An IC was handed to a factory of another kind.
    #[error("an IC of kind {got} was given to the {expected} factory")]
    WrongKind {
        /// The factory's kind.
        expected: &'static str,
        /// The IC's kind.
        got: &'static str,
    },
}
