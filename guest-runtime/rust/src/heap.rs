//! The global allocator, so that `alloc` (`Vec`, `String`, `Box`,
//! `format!`) works in guests.
//!
//! It is `talc` (crates.io): maintained, `no_std` on stable Rust, and fast
//! where virtines need it: allocation from segregated free lists and O(1)
//! free, unlike first-fit list allocators such as `linked_list_allocator`,
//! whose cost grows with fragmentation. The monitor gives one contiguous
//! range `[heap_start, heap_end)`; it is claimed once at start-up and never
//! grows (`Manual` source), so running out of heap is an allocation failure,
//! which Rust turns into a panic ("memory allocation of N bytes failed").

use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

use talc::lock_api::{GuardSend, RawMutex};
use talc::source::Manual;
use talc::TalcLock;

/// The lock `TalcLock` requires. A guest is one thread with interrupts off,
/// so the lock is never contended; it is only ever found taken if the
/// allocator is re-entered (a panic inside the allocator whose message
/// allocates): then it aborts instead of deadlocking.
pub(crate) struct GuestLock(AtomicBool);

// SAFETY: a single-threaded guest: `lock` gives exclusive access because
// nothing else can run until `unlock`, and re-entry aborts.
unsafe impl RawMutex for GuestLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = GuestLock(AtomicBool::new(false));
    type GuardMarker = GuardSend;

    fn lock(&self) {
        if !self.try_lock() {
            crate::abort("xos-guest: the allocator was re-entered (a panic inside an allocation?)");
        }
    }

    fn try_lock(&self) -> bool {
        // Plain load + store: no other thread exists, so no `lock xchg`.
        if self.0.load(Relaxed) {
            return false;
        }
        self.0.store(true, Relaxed);
        true
    }

    unsafe fn unlock(&self) {
        self.0.store(false, Relaxed);
    }
}

#[cfg_attr(not(test), global_allocator)]
static ALLOCATOR: TalcLock<GuestLock, Manual> = TalcLock::new(Manual);

/// Gives `[start, end)` to the allocator. A range too small for talc's
/// metadata is ignored: allocations then fail, and programs that do not
/// allocate still run.
pub(crate) fn init(start: u64, end: u64) {
    if end > start {
        // SAFETY: the monitor reserves [heap_start, heap_end) for the heap:
        // mapped, writable, used by nothing else.
        unsafe {
            let _ = ALLOCATOR
                .lock()
                .claim(start as *mut u8, (end - start) as usize);
        }
    }
}
