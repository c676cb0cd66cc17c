//! The channel window: a memfd shared between an IC and its peer (another
//! IC or a host thread), mapped into the IC at the fixed guest address
//! `xos_abi::WINDOW` so the two exchange messages through memory, without
//! an exit per message.
//!
//! The monitor knows only that the window is shared memory: what is in it
//! (a ring channel, `xos_abi::ring`) is between the two ends. It does three
//! things with it: maps it (a second KVM memory slot for a VM, a fixed
//! shared mapping for a thread or process IC), tells the guest where it is
//! (`BootInfo.window`), and serves the two window hypercalls, which let a
//! guest sleep on and wake a word of the window (futexes on the shared
//! memfd page, so a host thread waiting on the same word is woken too) and
//! learn when its peer is gone.

use std::fs::File;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap, MmapRegion,
    VolatileMemory,
};
use xos_abi::{layout, WindowInfo, MAX_WINDOW_SIZE, WINDOW};

/// Longest sleep of one `WINDOW_WAIT`: the guest looks again after it, so
/// a stop request or a dead peer is noticed within this time.
pub const MAX_WAIT: Duration = Duration::from_millis(20);

/// Errors setting up a channel window.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// The memfd's size cannot be a window.
    #[error("a channel window of {size} bytes cannot be mapped: it must be a non-zero multiple of 4 KiB, at most {max} bytes", max = MAX_WINDOW_SIZE)]
    BadSize {
        /// The memfd's size.
        size: u64,
    },
    /// `side` is not 0 or 1.
    #[error("channel window side {0} does not exist; a ring has sides 0 and 1")]
    BadSide(u32),
    /// The memfd could not be inspected or mapped.
    #[error("cannot {what} the channel window: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A window cannot be combined with the requested run.
    #[error("a run with a channel window cannot {0}: the window is shared memory that no snapshot can capture")]
    Unsupported(&'static str),
}

/// Tells whether the window's peer is gone (closed its end, ended or died).
pub type PeerCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// A memfd to map as an IC's channel window, and which end of it the IC is.
#[derive(Clone)]
pub struct SharedWindow {
    file: Arc<File>,
    size: u64,
    side: u32,
    flags: u32,
    peer_gone: Option<PeerCheck>,
}

impl std::fmt::Debug for SharedWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWindow")
            .field("size", &self.size)
            .field("side", &self.side)
            .field("flags", &self.flags)
            .finish()
    }
}

impl SharedWindow {
    /// The whole of `file` as a window, the IC being end `side`, with
    /// `flags` (`xos_abi::WINDOW_MAY_SLEEP` or 0) passed to the guest.
    pub fn new(file: Arc<File>, side: u32, flags: u32) -> Result<Self, WindowError> {
        let size = file
            .metadata()
            .map_err(|source| WindowError::Io {
                what: "stat",
                source,
            })?
            .len();
        if size == 0 || size > MAX_WINDOW_SIZE || !size.is_multiple_of(layout::PAGE_SIZE) {
            return Err(WindowError::BadSize { size });
        }
        if side > 1 {
            return Err(WindowError::BadSide(side));
        }
        Ok(SharedWindow {
            file,
            size,
            side,
            flags,
            peer_gone: None,
        })
    }

    /// Lets `WINDOW_WAIT` report `EPIPE` once `check` says the peer is gone.
    pub fn with_peer_check(mut self, check: PeerCheck) -> Self {
        self.peer_gone = Some(check);
        self
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The memfd.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// What the guest finds in `BootInfo.window`.
    pub fn info(&self) -> WindowInfo {
        WindowInfo {
            addr: WINDOW,
            size: self.size,
            side: self.side,
            flags: self.flags,
        }
    }

    /// Whether the peer is known to be gone.
    pub fn peer_gone(&self) -> bool {
        self.peer_gone.as_ref().is_some_and(|check| check())
    }

    /// A VM's guest memory with the window added as a region at `WINDOW`
    /// (registered as its own KVM memory slot) and mapped by the page
    /// tables.
    pub fn add_to_vm_memory(&self, mem: GuestMemoryMmap) -> Result<GuestMemoryMmap, WindowError> {
        let region = self.region()?;
        crate::arch::paging::write_window(&mem, self.size).map_err(|e| WindowError::Io {
            what: "write the page tables of",
            source: std::io::Error::other(e.to_string()),
        })?;
        mem.insert_region(region).map_err(|e| WindowError::Io {
            what: "add guest memory for",
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// The window mapped in this process, as a guest memory region at
    /// `WINDOW` (a dup of the memfd and an mmap: do it before a seccomp
    /// filter forbids them).
    pub fn region(&self) -> Result<Arc<GuestRegionMmap>, WindowError> {
        let dup = self.file.try_clone().map_err(|source| WindowError::Io {
            what: "dup",
            source,
        })?;
        let region =
            MmapRegion::from_file(FileOffset::new(dup, 0), self.size as usize).map_err(|e| {
                WindowError::Io {
                    what: "mmap",
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
        let region =
            GuestRegionMmap::new(region, GuestAddress(WINDOW)).ok_or_else(|| WindowError::Io {
                what: "place",
                source: std::io::Error::other("the window overflows the guest address space"),
            })?;
        Ok(Arc::new(region))
    }

    /// Maps the window at `WINDOW` in this process (for ICs whose guest
    /// addresses are the host's: thread and process ICs) and adds it to
    /// `mem`. Fails if anything is mapped there already. Unmapped when the
    /// returned [`FixedMapping`] is dropped, which must happen after the
    /// returned memory object is gone.
    pub fn map_at_fixed_address(
        &self,
        mem: GuestMemoryMmap,
    ) -> Result<(GuestMemoryMmap, FixedMapping), WindowError> {
        use std::os::fd::AsRawFd;
        let len = self.size as usize;
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping;
        // the result is checked to be exactly the requested address.
        let p = unsafe {
            libc::mmap(
                WINDOW as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE,
                self.file.as_raw_fd(),
                0,
            )
        };
        if p != WINDOW as *mut libc::c_void {
            let source = std::io::Error::last_os_error();
            if p != libc::MAP_FAILED {
                // SAFETY: an older kernel placed it elsewhere; undo that.
                unsafe { libc::munmap(p, len) };
            }
            return Err(WindowError::Io {
                what: "map at its fixed address",
                source,
            });
        }
        let mapping = FixedMapping { len };
        // SAFETY: the range was just mapped and stays mapped until
        // `mapping` is dropped, which callers do after dropping the memory
        // object (the region does not own the mapping).
        let region = unsafe {
            MmapRegion::build_raw(
                WINDOW as *mut u8,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
            )
        }
        .map_err(|e| WindowError::Io {
            what: "describe",
            source: std::io::Error::other(e.to_string()),
        })?;
        let region =
            GuestRegionMmap::new(region, GuestAddress(WINDOW)).ok_or_else(|| WindowError::Io {
                what: "place",
                source: std::io::Error::other("the window overflows the address space"),
            })?;
        let mem = mem
            .insert_region(Arc::new(region))
            .map_err(|e| WindowError::Io {
                what: "add guest memory for",
                source: std::io::Error::other(e.to_string()),
            })?;
        Ok((mem, mapping))
    }
}

/// A window mapped at its fixed address in this process; unmapped on drop.
#[derive(Debug)]
pub struct FixedMapping {
    len: usize,
}

impl Drop for FixedMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map_at_fixed_address` mapped; the
        // memory objects describing it are gone (see there).
        unsafe { libc::munmap(WINDOW as *mut libc::c_void, self.len) };
    }
}

/// The 4-byte word at window offset `offset` of `mem`, if the window is
/// there and the offset is aligned and inside it.
pub fn word(mem: &GuestMemoryMmap, size: u64, offset: u64) -> Option<&AtomicU32> {
    if !offset.is_multiple_of(4) || offset.checked_add(4)? > size {
        return None;
    }
    let slice = mem.get_slice(GuestAddress(WINDOW + offset), 4).ok()?;
    // The slice borrows `mem`'s region, which lives as long as `mem`.
    let word: &AtomicU32 = slice.get_atomic_ref::<AtomicU32>(0).ok()?;
    // SAFETY: `get_atomic_ref` checked alignment and bounds; the region
    // behind the slice is owned by `mem` (an Arc'd region list), so the
    // word lives as long as the borrow of `mem` this function returns.
    Some(unsafe { &*(word as *const AtomicU32) })
}

/// Sleeps while `word` holds `seen`, at most `timeout` (a shared futex, so
/// a waker in another process mapping the same memfd reaches it). Returns
/// early on a wake-up, a change or a signal; callers look again.
pub fn futex_wait(word: &AtomicU32, seen: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, 4-byte aligned atomic in a shared mapping;
    // the timespec outlives the call. Errors (EAGAIN, ETIMEDOUT, EINTR) all
    // mean "look again".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes up to `count` sleepers on `word`.
pub fn futex_wake(word: &AtomicU32, count: u32) {
    // SAFETY: `word` is a live, 4-byte aligned atomic; FUTEX_WAKE only
    // reads its address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            count,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}
