//! Errors of the VIC layer.

use vmm::{ImageError, RunError};

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
    /// An IC was handed to a factory of another kind.
    #[error("an IC of kind {got} was given to the {expected} factory")]
    WrongKind {
        /// The factory's kind.
        expected: &'static str,
        /// The IC's kind.
        got: &'static str,
    },
}
