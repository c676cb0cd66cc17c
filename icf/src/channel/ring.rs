//! A shared-memory ring channel: two single-producer/single-consumer byte
//! rings in one memfd, mapped by both endpoints (two threads, two
//! processes, or later a VM's guest memory and the host).
//!
//! Messages are framed as a 4-byte little-endian length and the bytes, so a
//! message may be larger than the ring: it streams through in pieces. A
//! waiting side either spins ([`Notify::Poll`], lowest latency, burns a
//! core; it sleeps only once it sees itself preempted on a busy host) or
//! spins briefly and sleeps on a futex in the shared page
//! ([`Notify::Futex`]); the other side wakes it only when it announced
//! that it sleeps.
//!
//! Everything in the shared mapping is reached through `vm-memory`
//! (bounds-checked slices and atomics): the peer may be hostile, so every
//! index read from it is validated before use.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory, VolatileSlice};

use super::{Channel, ChannelError, Result, DEFAULT_MAX_MESSAGE};
use crate::com::ComMechanism;

use xos_abi::ring as abi;

// The layout is part of the guest ABI (`xos_abi::ring`): a guest maps the
// same memfd as its channel window.
const MAGIC: u32 = abi::MAGIC;
const HEADER: usize = abi::HEADER as usize;
const CONTROL: usize = abi::CONTROL as usize;
const OFF_MAGIC: usize = abi::OFF_MAGIC as usize;
const OFF_CAPACITY: usize = abi::OFF_CAPACITY as usize;
const OFF_PID: [usize; 2] = [abi::OFF_PID[0] as usize, abi::OFF_PID[1] as usize];
const OFF_CLOSED: [usize; 2] = [abi::OFF_CLOSED[0] as usize, abi::OFF_CLOSED[1] as usize];
const fn ring_field(k: usize, field: u64) -> usize {
    abi::field(k as u64, field) as usize
}
const HEAD: u64 = abi::HEAD;
const TAIL: u64 = abi::TAIL;
const CONSUMER_SLEEPS: u64 = abi::CONSUMER_SLEEPS;
const PRODUCER_SLEEPS: u64 = abi::PRODUCER_SLEEPS;

/// How long a futex waiter spins before it sleeps. A wake-up costs ~100 µs
/// on this machine (the sleeping vCPU needs an IPI); with a window shorter
/// than that, each side outwaits the other's wake-up and both end up
/// sleeping on every call (measured: 50 µs gives a 110 µs median call,
/// 250 µs gives 0.9 µs; `xos-vmm bench channel.shm-futex`). A peer idle for
/// longer costs one wake-up, not a spinning core.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(250);
/// A gap this long between two looks of a spinning waiter means the
/// scheduler took its CPU away: the host has more runnable threads than
/// CPUs, and the peer may be waiting for ours. A polling waiter that saw
/// one sleeps on the futex like [`Notify::Futex`] (the peer's publish
/// wakes it) instead of spinning on: a spinner that never gives way makes
/// every hand-off cost a time slice (measured: 5,000 calls between two
/// threads sharing one CPU took 40 s spinning, 0.07 s this way;
/// `tests/contention.rs`). `sched_yield` is no cure: under EEVDF each
/// yield pushes the yielder's deadline a slice back, and a waiter that
/// yields often starves beside busy threads.
const PREEMPTED_GAP: Duration = Duration::from_micros(500);
/// Spins before a polling waiter that was preempted (in this wait or
/// lately) sleeps. A wait the peer ends within these spins, without a
/// preemption, returns the endpoint to pure spinning.
const SPINS_WHEN_PREEMPTED: u32 = 64;
/// Every this many early-sleeping waits, one spins [`SPIN_BEFORE_SLEEP`]
/// first (a probe): if the peer answers meanwhile, it runs and is merely
/// slower than [`SPINS_WHEN_PREEMPTED`], and the endpoint spins again; a
/// peer that cannot run while we spin costs that once per this many.
const PROBE_EVERY: u32 = 64;
/// How often a waiter looks whether the peer process still lives.
const LIVENESS_PERIOD: Duration = Duration::from_millis(20);

/// How a waiting endpoint waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// Spin on the shared indices; sleep on a futex only once the
    /// scheduler is seen to take the CPU away (a busy host), so spinning
    /// never starves the peer it waits for.
    Poll,
    /// Spin briefly, then sleep on a futex in the shared page.
    Futex,
}

impl Notify {
    fn mechanism(self) -> ComMechanism {
        match self {
            Notify::Poll => ComMechanism::ShmRingPoll,
            Notify::Futex => ComMechanism::ShmRingFutex,
        }
    }
}

/// One endpoint of a shared-memory ring channel. `side` 0 sends on ring 0
/// and receives on ring 1; side 1 the other way round.
pub struct RingChannel {
    region: MmapRegion<()>,
    memfd: File,
    side: usize,
    capacity: u32,
    notify: Notify,
    max_message: usize,
    timeout: Option<Duration>,
    acquired: Option<Acquired>,
    staging: Vec<u8>,
    /// Whether dropping this endpoint marks its side closed in the shared
    /// page (not for a mapping that failed validation).
    announce_close: bool,
    /// Polling: 0 while waits spin; after a preempted wait, 1 + the number
    /// of waits since that sleep early (see [`PREEMPTED_GAP`],
    /// [`PROBE_EVERY`]).
    sleepy: AtomicU32,
}

/// Where an `acquire`d message is being built.
#[derive(Clone, Copy, Debug)]
enum Acquired {
    /// In the ring itself, payload at this data offset.
    InRing { len: usize },
    /// In `staging` (it did not fit contiguously): one copy on commit.
    Staged { len: usize },
}

fn setup(notify: Notify, what: &'static str, source: std::io::Error) -> ChannelError {
    ChannelError::Setup {
        mechanism: notify.mechanism().name(),
        what,
        source,
    }
}

fn futex(word: &AtomicU32, op: i32, val: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, 4-byte aligned atomic in a mapping both
    // sides keep for the call's duration; the shared (non-private) futex op
    // is what lets another process's waiter on the same memfd page be woken.
    // Errors (EAGAIN when the value changed, ETIMEDOUT, EINTR) all mean
    // "look again", which every caller does.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            val,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Whether process `pid` has ended (exited or killed, zombie included).
fn process_ended(pid: i32) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    // SAFETY: pidfd_open just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd array of length 1; a pidfd polls
    // readable once its process has terminated.
    unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
}

/// This process's id, cached: a ring endpoint checks it on every send and
/// receive (it may have crossed a `fork`), and `getpid` on a monitor
/// thread under seccomp costs ~0.3 µs, four times per relayed call.
static OWN_PID: AtomicU32 = AtomicU32::new(0);

/// Run in the child of every `fork` (glibc's atfork list): the cached id
/// is the parent's there.
extern "C" fn forget_own_pid() {
    OWN_PID.store(0, Ordering::Relaxed);
}

/// Whether the atfork handler is in place, so the cache may be filled.
static PID_CACHE_USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn own_pid() -> u32 {
    let cached = OWN_PID.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let usable = *PID_CACHE_USABLE.get_or_init(|| {
        // SAFETY: registers a plain function that only stores to an
        // atomic, which is async-signal-safe as a fork child handler must
        // be. If registration fails (ENOMEM) the cache stays empty and
        // every call asks the kernel.
        unsafe { libc::pthread_atfork(None, None, Some(forget_own_pid)) == 0 }
    });
    let pid = std::process::id();
    if usable {
        OWN_PID.store(pid, Ordering::Relaxed);
    }
    pid
}

impl RingChannel {
    /// A connected pair of endpoints on a new memfd whose two rings hold
    /// `capacity` bytes each (rounded up to a power of two, at least 4 KiB).
    /// Both start in this process; one may move to a thread, or to a child
    /// process across `fork` (it claims its side on first use).
    pub fn pair(capacity: usize, notify: Notify) -> Result<(RingChannel, RingChannel)> {
        let capacity = capacity.clamp(4096, 1 << 30).next_power_of_two();
        let size = CONTROL + 2 * capacity;
        let name = c"xos-ring";
        // SAFETY: memfd_create reads a NUL-terminated name and returns a new
        // fd or -1.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(setup(
                notify,
                "memfd_create",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: memfd_create just returned this fd and nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(size as u64)
            .map_err(|e| setup(notify, "size the memfd", e))?;
        let a = Self::map(&file, size, 0, notify)?;
        a.init(capacity as u32)?;
        let b = Self::map(&file, size, 1, notify)?;
        Ok((a, b))
    }

    /// Map side `side` of an existing ring memfd (e.g. one received from
    /// another process), validating its header.
    pub fn from_memfd(file: &File, side: usize, notify: Notify) -> Result<RingChannel> {
        let size = file
            .metadata()
            .map_err(|e| setup(notify, "stat the memfd", e))?
            .len() as usize;
        if side > 1 || size < CONTROL + 2 * 4096 {
            return Err(ChannelError::Corrupt {
                mechanism: notify.mechanism().name(),
                what: format!("side {side} of a {size}-byte memfd"),
            });
        }
        let mut ch = Self::map(file, size, side, notify)?;
        let magic = ch.word(OFF_MAGIC)?.load(Ordering::Acquire);
        let capacity = ch.word(OFF_CAPACITY)?.load(Ordering::Acquire);
        if magic != MAGIC || capacity != ch.capacity || !capacity.is_power_of_two() {
            let what =
                format!("header magic {magic:#x}, capacity {capacity} in a {size}-byte memfd");
            // Not a ring of ours: leave its memory alone on the way out.
            ch.announce_close = false;
            return Err(ChannelError::Corrupt {
                mechanism: notify.mechanism().name(),
                what,
            });
        }
        Ok(ch)
    }

    fn map(file: &File, size: usize, side: usize, notify: Notify) -> Result<RingChannel> {
        // Fill the pid cache here, on a thread that may still allocate,
        // rather than first on a monitor thread under seccomp.
        own_pid();
        let dup = file
            .try_clone()
            .map_err(|e| setup(notify, "dup the memfd", e))?;
        let region = MmapRegion::from_file(FileOffset::new(dup, 0), size).map_err(|e| {
            setup(
                notify,
                "mmap the memfd",
                std::io::Error::other(e.to_string()),
            )
        })?;
        Ok(RingChannel {
            region,
            memfd: file
                .try_clone()
                .map_err(|e| setup(notify, "dup the memfd", e))?,
            side,
            capacity: ((size - CONTROL) / 2) as u32,
            notify,
            max_message: DEFAULT_MAX_MESSAGE,
            timeout: None,
            acquired: None,
            staging: Vec::new(),
            announce_close: true,
            sleepy: AtomicU32::new(0),
        })
    }

    fn init(&self, capacity: u32) -> Result<()> {
        self.word(OFF_CAPACITY)?.store(capacity, Ordering::Relaxed);
        for off in OFF_PID {
            self.word(off)?.store(own_pid(), Ordering::Relaxed);
        }
        self.word(OFF_MAGIC)?.store(MAGIC, Ordering::Release);
        Ok(())
    }

    /// Change the largest message this endpoint sends or accepts.
    pub fn with_max_message(mut self, max: usize) -> Self {
        self.max_message = max.min(u32::MAX as usize);
        self
    }

    /// The memfd holding the rings, to hand to another process, which maps
    /// the other side with [`RingChannel::from_memfd`].
    pub fn memfd(&self) -> &File {
        &self.memfd
    }

    /// Which side of the ring this endpoint is (0 or 1).
    pub fn side(&self) -> usize {
        self.side
    }

    /// Unmap this endpoint without marking its side closed, because the
    /// same side is (re)opened elsewhere with [`RingChannel::from_memfd`].
    pub fn hand_over_in_process(mut self) {
        self.announce_close = false;
    }

    /// Bytes each direction's ring holds.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    fn name(&self) -> &'static str {
        self.notify.mechanism().name()
    }

    fn corrupt(&self, what: String) -> ChannelError {
        ChannelError::Corrupt {
            mechanism: self.name(),
            what,
        }
    }

    fn word(&self, offset: usize) -> Result<&AtomicU32> {
        self.region
            .get_atomic_ref::<AtomicU32>(offset)
            .map_err(|e| self.corrupt(format!("control word at {offset}: {e}")))
    }

    /// The data area of ring `k`.
    fn data(&self, k: usize) -> Result<VolatileSlice<'_>> {
        self.region
            .get_slice(CONTROL + k * self.capacity as usize, self.capacity as usize)
            .map_err(|e| self.corrupt(format!("data of ring {k}: {e}")))
    }

    /// Record this process as the owner of our side, so the peer can tell
    /// when it dies (the endpoint may have crossed a `fork`).
    fn claim(&self) -> Result<()> {
        let pid = self.word(OFF_PID[self.side])?;
        if pid.load(Ordering::Relaxed) != own_pid() {
            pid.store(own_pid(), Ordering::SeqCst);
        }
        Ok(())
    }

    /// Whether the peer closed its end or its process (if another) ended.
    fn peer_gone(&self) -> Result<bool> {
        let peer = 1 - self.side;
        if self.word(OFF_CLOSED[peer])?.load(Ordering::SeqCst) != 0 {
            return Ok(true);
        }
        let pid = self.word(OFF_PID[peer])?.load(Ordering::SeqCst);
        Ok(pid != own_pid() && pid != 0 && process_ended(pid as i32))
    }

    fn gone(&self, op: &'static str) -> ChannelError {
        let peer = 1 - self.side;
        let closed = self
            .word(OFF_CLOSED[peer])
            .map(|w| w.load(Ordering::SeqCst))
            .unwrap_or(0);
        let pid = self
            .word(OFF_PID[peer])
            .map(|w| w.load(Ordering::SeqCst))
            .unwrap_or(0);
        let why = if closed != 0 {
            format!("it closed its end; its side's process id is {pid}")
        } else {
            format!("its process {pid} ended (this is process {})", own_pid())
        };
        ChannelError::PeerGone {
            mechanism: self.name(),
            op,
            why,
        }
    }

    /// Wait until `ready()` holds, sleeping on `word` (futex mode after a
    /// spin; poll mode once preempted, see [`PREEMPTED_GAP`]), whose change
    /// is what makes `ready` true, with `sleeps` as our flag.
    fn wait(
        &self,
        op: &'static str,
        word_off: usize,
        sleeps_off: usize,
        deadline: Option<Instant>,
        ready: impl Fn(u32) -> bool,
    ) -> Result<u32> {
        let word = self.word(word_off)?;
        let mut spins = 0u32;
        let start = Instant::now();
        let mut last_look = start;
        let mut next_check = start + LIVENESS_PERIOD;
        let mut may_sleep = false;
        let poll = self.notify == Notify::Poll;
        let sleepy = if poll {
            self.sleepy.load(Ordering::Relaxed)
        } else {
            0
        };
        let probe = sleepy > 0 && sleepy.is_multiple_of(PROBE_EVERY);
        let mut preempted = false;
        let mut slept = false;
        loop {
            let seen = word.load(Ordering::SeqCst);
            if ready(seen) {
                // A wait that ends before its first spin says nothing: the
                // peer may have answered while we were not running.
                if poll && spins > 0 {
                    let next = if preempted {
                        1
                    } else if sleepy > 0 && slept {
                        sleepy.saturating_add(1)
                    } else {
                        // The peer answered while we spun: keep spinning.
                        0
                    };
                    self.sleepy.store(next, Ordering::Relaxed);
                }
                return Ok(seen);
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) || may_sleep {
                let now = Instant::now();
                may_sleep = if poll {
                    preempted |= now - last_look >= PREEMPTED_GAP;
                    if probe && !preempted {
                        now - start >= SPIN_BEFORE_SLEEP
                    } else {
                        (preempted || sleepy > 0) && spins >= SPINS_WHEN_PREEMPTED
                    }
                } else {
                    now - start >= SPIN_BEFORE_SLEEP
                };
                last_look = now;
                if deadline.is_some_and(|d| now >= d) {
                    // A peer that closed its end is reported as such even
                    // to a caller polling with a zero timeout.
                    if self.word(OFF_CLOSED[1 - self.side])?.load(Ordering::SeqCst) != 0
                        && !ready(word.load(Ordering::SeqCst))
                    {
                        return Err(self.gone(op));
                    }
                    return Err(ChannelError::Timeout {
                        mechanism: self.name(),
                        timeout: self.timeout.unwrap_or_default(),
                    });
                }
                if vmm::interrupt::stop_requested() {
                    return Err(ChannelError::Stopped {
                        mechanism: self.name(),
                        op,
                    });
                }
                if now >= next_check || may_sleep {
                    if self.peer_gone()? {
                        // A last message may have landed before the close.
                        let seen = word.load(Ordering::SeqCst);
                        return if ready(seen) {
                            Ok(seen)
                        } else {
                            Err(self.gone(op))
                        };
                    }
                    next_check = now + LIVENESS_PERIOD;
                }
            }
            if may_sleep {
                let sleeps = self.word(sleeps_off)?;
                sleeps.store(1, Ordering::SeqCst);
                if word.load(Ordering::SeqCst) == seen {
                    let mut nap = LIVENESS_PERIOD;
                    if let Some(d) = deadline {
                        nap = nap.min(d.saturating_duration_since(Instant::now()));
                    }
                    futex(word, libc::FUTEX_WAIT, seen, Some(nap));
                    slept = true;
                }
                sleeps.store(0, Ordering::SeqCst);
                last_look = Instant::now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Publish a new value of a ring index and wake the other side if it
    /// said it sleeps.
    fn publish(&self, word_off: usize, value: u32, sleeps_off: usize) -> Result<()> {
        let word = self.word(word_off)?;
        word.store(value, Ordering::SeqCst);
        // Both modes: a polling peer sleeps too once it finds itself
        // preempted (one load of a line the peer rarely writes).
        if self.word(sleeps_off)?.load(Ordering::SeqCst) != 0 {
            futex(word, libc::FUTEX_WAKE, 1, None);
        }
        Ok(())
    }

    /// Used bytes of ring `k`, validated against the capacity.
    fn used(&self, head: u32, tail: u32) -> Result<u32> {
        let used = head.wrapping_sub(tail);
        if used > self.capacity {
            return Err(self.corrupt(format!(
                "head {head} and tail {tail} are {used} bytes apart in a {}-byte ring",
                self.capacity
            )));
        }
        Ok(used)
    }

    /// Copy `parts` (concatenated) into our outgoing ring, publishing as
    /// space allows; a small frame goes out with a single publish.
    fn write_parts(&self, parts: &[&[u8]], op: &'static str) -> Result<()> {
        self.claim()?;
        let k = self.side;
        let data = self.data(k)?;
        let cap = self.capacity;
        let tail_off = ring_field(k, TAIL);
        let head_off = ring_field(k, HEAD);
        let mut head = self.word(head_off)?.load(Ordering::Relaxed);
        let (mut part, mut pos) = (0usize, 0usize);
        while part < parts.len() {
            let tail = self.wait(op, tail_off, ring_field(k, PRODUCER_SLEEPS), None, |tail| {
                head.wrapping_sub(tail) < cap
            })?;
            let mut free = cap - self.used(head, tail)?;
            while free > 0 && part < parts.len() {
                let src = &parts[part][pos..];
                let n = src.len().min(free as usize);
                self.copy_in(&data, head, &src[..n])?;
                head = head.wrapping_add(n as u32);
                free -= n as u32;
                pos += n;
                if pos == parts[part].len() {
                    part += 1;
                    pos = 0;
                }
            }
            self.publish(head_off, head, ring_field(k, CONSUMER_SLEEPS))?;
        }
        Ok(())
    }

    /// Copy `src` into ring data at stream position `at`, wrapping.
    fn copy_in(&self, data: &VolatileSlice<'_>, at: u32, src: &[u8]) -> Result<()> {
        let start = (at & (self.capacity - 1)) as usize;
        let first = src.len().min(self.capacity as usize - start);
        data.write_slice(&src[..first], start)
            .and_then(|()| data.write_slice(&src[first..], 0))
            .map_err(|e| self.corrupt(format!("ring write: {e}")))
    }

    /// Copy ring data at stream position `at` into `dst`, wrapping.
    fn copy_out(&self, data: &VolatileSlice<'_>, at: u32, dst: &mut [u8]) -> Result<()> {
        let start = (at & (self.capacity - 1)) as usize;
        let first = dst.len().min(self.capacity as usize - start);
        let (a, b) = dst.split_at_mut(first);
        data.read_slice(a, start)
            .and_then(|()| data.read_slice(b, 0))
            .map_err(|e| self.corrupt(format!("ring read: {e}")))
    }

    /// Fill `dst` from our incoming ring, waiting for the bytes.
    fn read_exact(&self, dst: &mut [u8], deadline: Option<Instant>) -> Result<()> {
        let k = 1 - self.side;
        let data = self.data(k)?;
        let head_off = ring_field(k, HEAD);
        let tail_off = ring_field(k, TAIL);
        let mut tail = self.word(tail_off)?.load(Ordering::Relaxed);
        let mut done = 0;
        while done < dst.len() {
            let head = self.wait(
                "recv",
                head_off,
                ring_field(k, CONSUMER_SLEEPS),
                deadline,
                |head| head != tail,
            )?;
            let avail = self.used(head, tail)? as usize;
            let n = avail.min(dst.len() - done);
            self.copy_out(&data, tail, &mut dst[done..done + n])?;
            tail = tail.wrapping_add(n as u32);
            done += n;
            self.publish(tail_off, tail, ring_field(k, PRODUCER_SLEEPS))?;
        }
        Ok(())
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len > self.max_message {
            return Err(ChannelError::TooLarge {
                mechanism: self.name(),
                len,
                max: self.max_message,
            });
        }
        Ok(())
    }
}

impl Channel for RingChannel {
    fn mechanism(&self) -> ComMechanism {
        self.notify.mechanism()
    }

    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.check_len(msg.len())?;
        self.acquired = None;
        let header = (msg.len() as u32).to_le_bytes();
        self.write_parts(&[&header, msg], "send")
    }

    fn recv(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        self.claim()?;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut header = [0u8; HEADER];
        self.read_exact(&mut header, deadline)?;
        let len = u32::from_le_bytes(header) as usize;
        if len > self.max_message {
            return Err(self.corrupt(format!(
                "the peer announced a {len}-byte message, over the {}-byte limit",
                self.max_message
            )));
        }
        buf.clear();
        buf.resize(len, 0);
        // The header is in, so the body follows: no timeout mid-message.
        self.read_exact(buf, None)
    }

    fn acquire(&mut self, len: usize) -> Result<VolatileSlice<'_>> {
        self.check_len(len)?;
        self.claim()?;
        let k = self.side;
        let cap = self.capacity;
        let head = self.word(ring_field(k, HEAD))?.load(Ordering::Relaxed);
        let start = (head & (cap - 1)) as usize;
        let fits_unwrapped = start + HEADER + len <= cap as usize;
        if fits_unwrapped {
            // Wait for the room, then hand out the ring bytes themselves.
            let need = (HEADER + len) as u32;
            self.wait(
                "acquire",
                ring_field(k, TAIL),
                ring_field(k, PRODUCER_SLEEPS),
                None,
                |tail| cap - head.wrapping_sub(tail).min(cap) >= need,
            )?;
            self.acquired = Some(Acquired::InRing { len });
            return self
                .data(k)?
                .subslice(start + HEADER, len)
                .map_err(|e| self.corrupt(format!("acquire: {e}")));
        }
        self.staging.clear();
        self.staging.resize(len, 0);
        self.acquired = Some(Acquired::Staged { len });
        Ok(VolatileSlice::from(&mut self.staging[..]))
    }

    fn commit(&mut self, len: usize) -> Result<()> {
        match self.acquired.take() {
            Some(Acquired::InRing { len: acquired }) if len <= acquired => {
                let k = self.side;
                let head_off = ring_field(k, HEAD);
                let head = self.word(head_off)?.load(Ordering::Relaxed);
                let data = self.data(k)?;
                self.copy_in(&data, head, &(len as u32).to_le_bytes())?;
                let head = head.wrapping_add((HEADER + len) as u32);
                self.publish(head_off, head, ring_field(k, CONSUMER_SLEEPS))
            }
            Some(Acquired::Staged { len: acquired }) if len <= acquired => {
                let staging = std::mem::take(&mut self.staging);
                let header = (len as u32).to_le_bytes();
                let r = self.write_parts(&[&header, &staging[..len]], "commit");
                self.staging = staging;
                r
            }
            acquired => Err(ChannelError::BadCommit {
                committed: len,
                acquired: acquired.map(|a| match a {
                    Acquired::InRing { len } | Acquired::Staged { len } => len,
                }),
            }),
        }
    }

    fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    fn hand_over(mut self: Box<Self>) {
        self.announce_close = false;
    }
}

impl RingChannel {
    /// Marks our side closed in the shared page and wakes the peer
    /// wherever it may sleep on our account.
    fn announce_closed(&self) {
        if let Ok(closed) = self.word(OFF_CLOSED[self.side]) {
            closed.store(1, Ordering::SeqCst);
        }
        for k in 0..2 {
            for field in [HEAD, TAIL] {
                if let Ok(w) = self.word(ring_field(k, field)) {
                    futex(w, libc::FUTEX_WAKE, i32::MAX as u32, None);
                }
            }
        }
    }

    /// Gives this endpoint to an IC: its guest will use this side of the
    /// ring through its channel window (`xos_abi::WINDOW`), spinning
    /// (`Notify::Poll`) or sleeping (`Notify::Futex`) like this endpoint.
    /// Put the result in [`crate::IcSpec::window`]. The ring must fit a
    /// window: at most `xos_abi::MAX_WINDOW_SIZE` bytes, so a capacity of
    /// at most 512 KiB.
    pub fn into_guest_end(self) -> Result<GuestEnd> {
        let size = CONTROL as u64 + 2 * u64::from(self.capacity);
        if size > xos_abi::MAX_WINDOW_SIZE {
            return Err(ChannelError::Setup {
                mechanism: self.name(),
                what: "give a ring to an IC",
                source: std::io::Error::other(format!(
                    "its {size} bytes exceed the {}-byte channel window; make the ring's capacity at most 512 KiB",
                    xos_abi::MAX_WINDOW_SIZE
                )),
            });
        }
        // The view closes the side when the last handle on it goes, too: an
        // IC dropped without running must not leave its peer waiting.
        Ok(GuestEnd {
            view: Arc::new(self),
        })
    }
}

/// One side of a ring channel that an IC's guest uses through its channel
/// window (see [`RingChannel::into_guest_end`]). The monitor keeps a view
/// of that side: to tell the guest when its peer is gone, and to close the
/// side when the IC's run ends, whatever way it ends.
#[derive(Clone)]
pub struct GuestEnd {
    view: Arc<RingChannel>,
}

impl std::fmt::Debug for GuestEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestEnd")
            .field("side", &self.view.side)
            .field("capacity", &self.view.capacity)
            .field("notify", &self.view.notify)
            .finish()
    }
}

impl GuestEnd {
    /// The mechanism the guest uses.
    pub fn mechanism(&self) -> ComMechanism {
        self.view.notify.mechanism()
    }

    /// Which side of the ring the guest is.
    pub fn side(&self) -> usize {
        self.view.side
    }

    /// The ring's memfd (to hand to a process IC).
    pub fn memfd(&self) -> &File {
        &self.view.memfd
    }

    /// The window to map into the IC.
    pub fn window(&self) -> std::result::Result<vmm::SharedWindow, vmm::window::WindowError> {
        let flags = match self.view.notify {
            Notify::Poll => 0,
            Notify::Futex => xos_abi::WINDOW_MAY_SLEEP,
        };
        let view = Arc::clone(&self.view);
        Ok(vmm::SharedWindow::new(
            Arc::new(self.view.memfd.try_clone().map_err(|source| {
                vmm::window::WindowError::Io {
                    what: "dup",
                    source,
                }
            })?),
            self.view.side as u32,
            flags,
        )?
        .with_peer_check(Arc::new(move || view.peer_gone().unwrap_or(true))))
    }

    /// The IC's run is starting in process `pid`: its side is open (again)
    /// and owned by `pid` (so the peer sees it die).
    pub fn run_starting(&self, pid: u32) {
        if let Ok(w) = self.view.word(OFF_PID[self.view.side]) {
            w.store(pid, Ordering::SeqCst);
        }
        if let Ok(w) = self.view.word(OFF_CLOSED[self.view.side]) {
            w.store(0, Ordering::SeqCst);
        }
    }

    /// The IC's run stopped at a safe point and its execution flow will go
    /// on in another IC: the side stays open, held by this process until
    /// the next IC's run claims it.
    pub fn run_paused(&self) {
        if let Ok(w) = self.view.word(OFF_PID[self.view.side]) {
            w.store(own_pid(), Ordering::SeqCst);
        }
    }

    /// The IC's run ended (exit, fault, kill or time limit): its side is
    /// closed, and a peer waiting on it gets `PeerGone` instead of a hang.
    pub fn run_ended(&self) {
        self.view.announce_closed();
    }
}

impl Drop for RingChannel {
    fn drop(&mut self) {
        if self.announce_close {
            self.announce_closed();
        }
    }
}
