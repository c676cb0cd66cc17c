//! Guest memory: one anonymous mapping starting at guest-physical 0.
//!
//! All monitor access to guest memory goes through vm-memory's
//! bounds-checked accessors; hypercall pointers are additionally checked
//! against what the guest itself may access
//! ([`crate::arch::paging::user_accessible`]).

use vm_memory::{GuestAddress, GuestMemoryMmap};
use xos_abi::layout;

/// Errors about guest memory size or allocation.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is below the minimum.
    #[error("guest memory of {requested} bytes is too small: at least {min} bytes (4 MiB) are needed", min = layout::MIN_MEM)]
    TooSmall {
        /// What was asked for.
        requested: u64,
    },
    /// The requested size is above the maximum.
    #[error("guest memory of {requested} bytes is too large: at most {max} bytes (16 GiB) are supported", max = layout::MAX_MEM)]
    TooLarge {
        /// What was asked for.
        requested: u64,
    },
    /// The host could not map the memory.
    #[error("cannot allocate {size} bytes of guest memory: {source}")]
    Allocate {
        /// Size of the mapping.
        size: u64,
        /// What vm-memory reported.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Default guest memory size (16 MiB).
pub const DEFAULT_MEM_SIZE: u64 = 16 << 20;

/// Rounds `requested` up to the 2 MiB granularity and checks the limits.
pub fn checked_size(requested: u64) -> Result<u64, MemoryError> {
    if requested < layout::MIN_MEM {
        return Err(MemoryError::TooSmall { requested });
    }
    if requested > layout::MAX_MEM {
        return Err(MemoryError::TooLarge { requested });
    }
    Ok(xos_abi::align_up(requested, layout::MEM_ALIGN))
}

/// Allocates `size` bytes (already checked) of zeroed guest memory.
pub fn allocate(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
        .map_err(|source| MemoryError::Allocate { size, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_rounded_and_bounded() {
        assert_eq!(checked_size(4 << 20).unwrap(), 4 << 20);
        assert_eq!(checked_size((4 << 20) + 1).unwrap(), 6 << 20);
        assert!(matches!(
            checked_size(1 << 20),
            Err(MemoryError::TooSmall { .. })
        ));
        assert!(matches!(
            checked_size(17 << 30),
            Err(MemoryError::TooLarge { .. })
        ));
    }
}
