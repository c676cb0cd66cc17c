//! The virtio channel device: a virtio-mmio (version 2) device for VM ICs
//! whose two split virtqueues carry messages between the guest and a host
//! channel endpoint (any [`Channel`]: a ring to another IC, a pipe, ...).
//!
//! Queue 0 (transmit): each descriptor chain the driver makes available
//! is one message, the concatenation of its device-readable buffers.
//! Queue 1 (receive): the driver makes device-writable buffers available;
//! each incoming message fills one chain, and the used length says how
//! long it is ([`TOO_LARGE`] when it did not fit: it is dropped).
//!
//! A device thread serves both queues. It polls while there is traffic
//! (and tells the driver not to notify, `VRING_USED_F_NO_NOTIFY`), so a
//! call costs the guest no exit; after [`SPIN`] without traffic it allows
//! notifications again and sleeps until the driver writes `QueueNotify` or
//! [`NAP`] passes (to look at the host endpoint). It sleeps in an
//! `event-manager` epoll loop on two eventfds: one KVM signals itself on a
//! `QueueNotify` write (an ioeventfd, so the notify costs the guest no exit
//! to the monitor) and one for stop requests.
//!
//! The guest is not trusted: queue addresses and every buffer must lie in
//! memory the guest itself may access at CPL3 (the rule hypercall pointers
//! follow), so a driver cannot make the device write its page tables; the
//! queue layout is validated by `virtio-queue`. A violation puts the device
//! in `DEVICE_NEEDS_RESET` and stops it.
//!
//! Config space (offset 0x100): `u32` 1 once the host endpoint is gone,
//! `u32` the largest message the device takes.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{Channel, ChannelError};

/// `DeviceID`: not a device type of the virtio specification (there is no
/// message-channel type); a vendor-specific one, with [`VENDOR_ID`].
pub const DEVICE_ID: u32 = 0xfff1;
/// `VendorID`: "XOSV".
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"XOSV");
/// Largest number of descriptors per queue.
pub const QUEUE_MAX: u16 = 256;
/// Largest message either way (16 MiB).
pub const MAX_MESSAGE: u32 = 16 << 20;
/// Used length of a receive chain whose message did not fit (dropped).
pub const TOO_LARGE: u32 = u32::MAX;
/// Longest wait of one read of the `WAIT` config register.
pub const MAX_GUEST_WAIT: Duration = Duration::from_millis(1);
/// How long the device thread polls without traffic before it sleeps.
pub const SPIN: Duration = Duration::from_micros(250);
/// Longest sleep of the device thread.
pub const NAP: Duration = Duration::from_millis(1);

const MAGIC: u32 = 0x7472_6976; // "virt"
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_NEEDS_RESET: u32 = 0x40;
const VRING_DESC_F_WRITE: u16 = 2;

/// Register offsets (virtio-mmio version 2).
mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG_PEER_GONE: u64 = 0x100;
    pub const CONFIG_MAX_MESSAGE: u64 = 0x104;
    /// Config space: reading it waits (see [`super::Shared::wait_for_used`]).
    pub const CONFIG_WAIT: u64 = 0x108;
}

/// The driver-visible register state.
struct Registers {
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: [Queue; 2],
    status: u32,
}

impl Registers {
    fn new() -> Registers {
        let queue = || Queue::new(QUEUE_MAX).unwrap_or_else(|_| unreachable!("a valid size"));
        Registers {
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues: [queue(), queue()],
            status: 0,
        }
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }
}

/// What the MMIO handler and the device thread share.
struct Shared {
    regs: Mutex<Registers>,
    mem: Mutex<Option<GuestMemoryMmap>>,
    mem_size: AtomicU32,
    /// Work for the device thread; `None` while it idles. The thread is
    /// started with the device, not by the guest's `DRIVER_OK` write:
    /// that write is handled on the vCPU thread, whose seccomp filter
    /// forbids starting threads.
    job: Mutex<Option<Job>>,
    changed: Condvar,
    /// Set to end the current job; the thread clears `busy` when it has.
    stop: AtomicBool,
    busy: AtomicBool,
    shutdown: AtomicBool,
    /// Signalled by KVM when the guest writes `QueueNotify` (an ioeventfd,
    /// see [`vmm::mmio::MmioDevice::doorbell`]), or by the MMIO path where
    /// that write reaches the monitor.
    notify: EventFd,
    /// Signalled to make the device thread look at `stop`/`shutdown`.
    wake: EventFd,
    /// How the guest's notifies arrived (see [`Notifies`]).
    notifies: Arc<NotifyCounts>,
    peer_gone: AtomicBool,
    needs_reset: AtomicBool,
    /// Bumped and signalled whenever the device puts entries in a used
    /// ring: a guest waiting in a `WAIT` read wakes up.
    used: Mutex<u64>,
    used_changed: Condvar,
}

/// The queues and memory of one driver session.
struct Job {
    tx: Queue,
    rx: Queue,
    mem: GuestMemoryMmap,
    mem_size: u64,
}

/// Counters behind [`Notifies`].
#[derive(Default)]
struct NotifyCounts {
    /// Signals the device thread read from the notify eventfd (both ways).
    signalled: AtomicU64,
    /// `QueueNotify` writes that reached the monitor.
    by_exit: AtomicU64,
}

/// How the guest's `QueueNotify` writes reached the device so far; a
/// diagnostic (and what the tests check): with KVM's ioeventfd in place
/// none should take the exit to the monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notifies {
    /// Signalled by KVM in the kernel (the guest resumed at once). Counted
    /// when the device thread reads the eventfd, so it may lag by the
    /// writes it has not yet woken up for.
    pub by_ioeventfd: u64,
    /// Taken as an exit to the monitor, which signalled the device.
    pub by_exit: u64,
}

/// A non-blocking eventfd.
fn eventfd() -> Result<EventFd, ChannelError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|source| ChannelError::Setup {
        mechanism: "virtio",
        what: "create an eventfd",
        source,
    })
}

/// Adds one to an eventfd's counter (it cannot overflow in practice; a
/// full counter already wakes the reader).
fn signal(event: &EventFd) {
    let _ = event.write(1);
}

/// What the idle device thread waits for, as an `event-manager`
/// subscriber: either eventfd readable ends the wait; the counters are
/// drained so the next wait blocks again.
struct Wakeups {
    notify: EventFd,
    wake: EventFd,
    counts: Arc<NotifyCounts>,
}

impl MutEventSubscriber for Wakeups {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.notify.as_raw_fd() {
            if let Ok(n) = self.notify.read() {
                self.counts.signalled.fetch_add(n, Ordering::Relaxed);
            }
        }
        if events.fd() == self.wake.as_raw_fd() {
            let _ = self.wake.read();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for event in [&self.notify, &self.wake] {
            // A failed registration leaves the thread waking every NAP.
            if let Err(e) = ops.add(Events::new(event, EventSet::IN)) {
                tracing::warn!("virtio device: cannot wait on an eventfd: {e}");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A virtio channel device (see the module documentation). Give it to a
/// VM IC with [`crate::IcSpec::virtio`]; dropping the last handle stops
/// its thread and closes the host endpoint.
pub struct VirtioChannel {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for VirtioChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioChannel").finish_non_exhaustive()
    }
}

impl VirtioChannel {
    /// A device whose guest talks to `endpoint`, with its thread.
    pub fn new(endpoint: Box<dyn Channel>) -> Result<Arc<VirtioChannel>, ChannelError> {
        let shared = Arc::new(Shared {
            regs: Mutex::new(Registers::new()),
            mem: Mutex::new(None),
            mem_size: AtomicU32::new(0),
            job: Mutex::new(None),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            notify: eventfd()?,
            wake: eventfd()?,
            notifies: Arc::default(),
            peer_gone: AtomicBool::new(false),
            needs_reset: AtomicBool::new(false),
            used: Mutex::new(0),
            used_changed: Condvar::new(),
        });
        let setup = |what, source| ChannelError::Setup {
            mechanism: "virtio",
            what,
            source,
        };
        let mut waits = EventManager::<Wakeups>::new().map_err(|e| {
            setup(
                "create its epoll loop",
                std::io::Error::other(e.to_string()),
            )
        })?;
        waits.add_subscriber(Wakeups {
            notify: shared
                .notify
                .try_clone()
                .map_err(|e| setup("dup an eventfd", e))?,
            wake: shared
                .wake
                .try_clone()
                .map_err(|e| setup("dup an eventfd", e))?,
            counts: Arc::clone(&shared.notifies),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("xos-virtio-chan".into())
            .spawn(move || worker.work(endpoint, waits))
            .map_err(|source| ChannelError::Setup {
                mechanism: "virtio",
                what: "start the device thread",
                source,
            })?;
        Ok(Arc::new(VirtioChannel {
            shared,
            thread: Some(thread),
        }))
    }

    /// How the guest's notifies have reached the device so far.
    pub fn notifies(&self) -> Notifies {
        let by_exit = self.shared.notifies.by_exit.load(Ordering::Relaxed);
        let signalled = self.shared.notifies.signalled.load(Ordering::Relaxed);
        Notifies {
            by_ioeventfd: signalled.saturating_sub(by_exit),
            by_exit,
        }
    }

    /// The device as the monitor attaches it to a VM.
    pub fn device(&self) -> vmm::mmio::Device {
        vmm::mmio::Device(Arc::new(Handle(self.shared.clone())))
    }
}

impl Drop for VirtioChannel {
    fn drop(&mut self) {
        // The thread ends and drops the endpoint: the peer sees PeerGone.
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.stop_thread();
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    /// Ends the device thread's current job, if any, and waits until it
    /// has.
    fn stop_thread(&self) {
        let mut job = lock(&self.job);
        job.take();
        self.stop.store(true, Ordering::SeqCst);
        signal(&self.wake);
        while self.busy.load(Ordering::SeqCst) {
            job = self
                .changed
                .wait_timeout(job, Duration::from_millis(1))
                .map_or_else(|p| p.into_inner().0, |(g, _)| g);
        }
        self.stop.store(false, Ordering::SeqCst);
    }

    /// The device thread: serves one driver session at a time.
    fn work(self: Arc<Self>, mut channel: Box<dyn Channel>, mut waits: EventManager<Wakeups>) {
        loop {
            let job = {
                let mut slot = lock(&self.job);
                loop {
                    if self.shutdown.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Some(job) = slot.take() {
                        self.busy.store(true, Ordering::SeqCst);
                        break job;
                    }
                    slot = self.changed.wait(slot).unwrap_or_else(|p| p.into_inner());
                }
            };
            let mut device = DeviceThread {
                shared: &self,
                mem: job.mem,
                mem_size: job.mem_size,
                tx: job.tx,
                rx: job.rx,
                channel,
                waits,
            };
            device.serve();
            channel = device.channel;
            waits = device.waits;
            self.busy.store(false, Ordering::SeqCst);
            self.changed.notify_all();
        }
    }

    /// Hands the driver's queues to the device thread once it is done
    /// setting up.
    fn start(&self) {
        // One session at a time, and none after a failure until a reset.
        if self.busy.load(Ordering::SeqCst)
            || self.needs_reset.load(Ordering::SeqCst)
            || lock(&self.job).is_some()
        {
            self.fail();
            return;
        }
        // The device thread works on copies; the registers keep theirs.
        let queues = {
            let regs = lock(&self.regs);
            [
                Queue::try_from(regs.queues[0].state()),
                Queue::try_from(regs.queues[1].state()),
            ]
        };
        let [Ok(tx), Ok(rx)] = queues else {
            self.fail();
            return;
        };

        let Some(mem) = lock(&self.mem).clone() else {
            return;
        };
        let mem_size = u64::from(self.mem_size.load(Ordering::SeqCst)) << 12;
        let queue_ok = |q: &Queue| {
            q.ready()
                && q.is_valid(&mem)
                && user_range(q.desc_table(), 16 * u64::from(q.size()), mem_size)
                && user_range(q.avail_ring(), 6 + 2 * u64::from(q.size()), mem_size)
                && vmm::arch::paging::user_writable(
                    &mem,
                    q.used_ring(),
                    6 + 8 * u64::from(q.size()),
                    mem_size,
                )
        };
        if !(queue_ok(&tx) && queue_ok(&rx)) {
            self.fail();
            return;
        }
        *lock(&self.job) = Some(Job {
            tx,
            rx,
            mem,
            mem_size,
        });
        self.changed.notify_all();
    }

    /// Tells a guest waiting in a `WAIT` read that a used ring moved.
    fn used_moved(&self) {
        *lock(&self.used) += 1;
        self.used_changed.notify_all();
    }

    /// A `WAIT` read: the guest has nothing to do until the device uses
    /// more of its buffers. It set each queue's `used_event` (in its avail
    /// ring) to the used index it has seen; sleep until either used index
    /// differs from it, the host end is gone, or [`MAX_GUEST_WAIT`] passes,
    /// so a waiting guest gives its CPU to the device thread and the peer
    /// instead of spinning. Runs on the vCPU thread (futex waits only).
    fn wait_for_used(&self) {
        let deadline = Instant::now() + MAX_GUEST_WAIT;
        let Some(mem) = lock(&self.mem).clone() else {
            return;
        };
        let rings: Vec<(u64, u64, u64)> = {
            let regs = lock(&self.regs);
            regs.queues
                .iter()
                .map(|q| (q.avail_ring(), q.used_ring(), u64::from(q.size())))
                .collect()
        };
        let mem_size = u64::from(self.mem_size.load(Ordering::SeqCst)) << 12;
        // Each queue: used_event at avail + 4 + 2 * size, used idx at
        // used + 2; only read where the guest may read itself.
        let pending = || {
            rings.iter().any(|&(avail, used, size)| {
                let (Some(event), Some(idx)) =
                    (avail.checked_add(4 + 2 * size), used.checked_add(2))
                else {
                    return true;
                };
                if !user_range(event, 2, mem_size) || !user_range(idx, 2, mem_size) {
                    return true;
                }
                let seen: u16 = mem.read_obj(vm_memory::GuestAddress(event)).unwrap_or(0);
                let now: u16 = mem.read_obj(vm_memory::GuestAddress(idx)).unwrap_or(1);
                seen != now
            })
        };
        let mut generation = lock(&self.used);
        while !pending()
            && !self.peer_gone.load(Ordering::SeqCst)
            && !self.needs_reset.load(Ordering::SeqCst)
            && !vmm::interrupt::stop_requested()
        {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let seen = *generation;
            let (g, _) = self
                .used_changed
                .wait_timeout_while(generation, deadline - now, |g| *g == seen)
                .unwrap_or_else(|p| p.into_inner());
            generation = g;
        }
    }

    /// The driver broke the rules: the device stops serving it.
    fn fail(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
    }
}

/// Whether `[addr, addr+len)` is guest user memory (as for hypercall
/// pointers).
fn user_range(addr: u64, len: u64, mem_size: u64) -> bool {
    vmm::arch::paging::user_accessible(addr, len, mem_size)
}

/// The device as the MMIO path sees it.
struct Handle(Arc<Shared>);

impl vmm::mmio::MmioDevice for Handle {
    fn activate(&self, mem: GuestMemoryMmap) {
        self.0.activate(mem)
    }

    fn read(&self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data)
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if self.0.write(offset, data) {
            self.0.start();
        }
    }

    fn deactivate(&self) {
        self.0.stop_thread();
        *lock(&self.0.mem) = None;
    }

    fn doorbell(&self) -> Option<vmm::mmio::Doorbell> {
        // Without a copy of the eventfd the write still reaches `write`.
        let event = self.0.notify.try_clone().ok()?;
        Some(vmm::mmio::Doorbell {
            offset: reg::QUEUE_NOTIFY,
            event,
        })
    }
}

impl Shared {
    fn activate(&self, mem: GuestMemoryMmap) {
        // A new run of the IC: a new guest, a device reset.
        self.stop_thread();
        let size = vm_memory::GuestMemoryBackend::iter(&mem)
            .next()
            .map(vm_memory::GuestMemoryRegion::len)
            .unwrap_or(0);
        self.mem_size.store((size >> 12) as u32, Ordering::SeqCst);
        *lock(&self.mem) = Some(mem);
        *lock(&self.regs) = Registers::new();
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset == reg::CONFIG_WAIT {
            self.wait_for_used();
            data.fill(0);
            return;
        }
        let regs = lock(&self.regs);
        let value: u32 = match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => 2,
            reg::DEVICE_ID => DEVICE_ID,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match regs.device_features_sel {
                1 => (VIRTIO_F_VERSION_1 >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => u32::from(QUEUE_MAX),
            reg::QUEUE_READY => regs
                .queues
                .get(regs.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => 0,
            reg::STATUS => {
                regs.status
                    | if self.needs_reset.load(Ordering::SeqCst) {
                        STATUS_NEEDS_RESET
                    } else {
                        0
                    }
            }
            reg::CONFIG_GENERATION => 0,
            reg::CONFIG_PEER_GONE => u32::from(self.peer_gone.load(Ordering::SeqCst)),
            reg::CONFIG_MAX_MESSAGE => MAX_MESSAGE,
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        for b in &mut data[n..] {
            *b = 0;
        }
    }

    /// A register write; true when it completed the driver's set-up, so
    /// the device thread should start.
    fn write(&self, offset: u64, data: &[u8]) -> bool {
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(bytes);
        if offset == reg::QUEUE_NOTIFY {
            self.notifies.by_exit.fetch_add(1, Ordering::Relaxed);
            signal(&self.notify);
            return false;
        }
        let mut regs = lock(&self.regs);
        // Queue set-up is accepted only before the driver is done.
        let configuring = regs.status & STATUS_DRIVER_OK == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => regs.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => regs.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                let shift = if regs.driver_features_sel == 1 { 32 } else { 0 };
                let mask = !(0xffff_ffffu64 << shift);
                regs.driver_features = (regs.driver_features & mask) | (u64::from(value) << shift);
            }
            reg::QUEUE_SEL => regs.queue_sel = value,
            reg::QUEUE_NUM if configuring => {
                if let Some(q) = regs.queue() {
                    q.set_size(value as u16);
                }
            }
            reg::QUEUE_READY if configuring => {
                if let Some(q) = regs.queue() {
                    q.set_ready(value == 1);
                }
            }
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH if configuring => {
                let (lo, hi) = split(offset == reg::QUEUE_DESC_LOW, value);
                if let Some(q) = regs.queue() {
                    q.set_desc_table_address(lo, hi);
                }
            }
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH if configuring => {
                let (lo, hi) = split(offset == reg::QUEUE_DRIVER_LOW, value);
                if let Some(q) = regs.queue() {
                    q.set_avail_ring_address(lo, hi);
                }
            }
            reg::QUEUE_DEVICE_LOW | reg::QUEUE_DEVICE_HIGH if configuring => {
                let (lo, hi) = split(offset == reg::QUEUE_DEVICE_LOW, value);
                if let Some(q) = regs.queue() {
                    q.set_used_ring_address(lo, hi);
                }
            }
            reg::STATUS => {
                if value == 0 {
                    // Reset.
                    drop(regs);
                    self.stop_thread();
                    *lock(&self.regs) = Registers::new();
                    self.needs_reset.store(false, Ordering::SeqCst);
                    return false;
                }
                let was_ok = regs.status & STATUS_DRIVER_OK != 0;
                regs.status = value;
                if value & STATUS_DRIVER_OK != 0 && !was_ok {
                    if regs.driver_features & VIRTIO_F_VERSION_1 == 0 {
                        drop(regs);
                        self.fail();
                        return false;
                    }
                    return true;
                }
            }
            _ => {}
        }
        false
    }
}

fn split(low: bool, value: u32) -> (Option<u32>, Option<u32>) {
    if low {
        (Some(value), None)
    } else {
        (None, Some(value))
    }
}

/// The serving side, on its own thread.
struct DeviceThread<'a> {
    shared: &'a Shared,
    mem: GuestMemoryMmap,
    mem_size: u64,
    tx: Queue,
    rx: Queue,
    channel: Box<dyn Channel>,
    /// Where it sleeps when idle (see [`Wakeups`]).
    waits: EventManager<Wakeups>,
}

impl DeviceThread<'_> {
    fn serve(&mut self) {
        self.channel.set_timeout(Some(Duration::ZERO));
        let mut idle_since = Instant::now();
        // Polling from the start: the driver need not notify.
        let _ = self.tx.disable_notification(&self.mem);
        let _ = self.rx.disable_notification(&self.mem);
        let mut notifying = false;
        let mut message = Vec::new();
        while !self.shared.stop.load(Ordering::SeqCst)
            && !self.shared.shutdown.load(Ordering::SeqCst)
        {
            let moved = match self.pump(&mut message) {
                Ok(moved) => moved,
                Err(()) => {
                    self.shared.fail();
                    break;
                }
            };
            if moved {
                idle_since = Instant::now();
                if notifying {
                    let _ = self.tx.disable_notification(&self.mem);
                    let _ = self.rx.disable_notification(&self.mem);
                    notifying = false;
                }
                continue;
            }
            if idle_since.elapsed() < SPIN {
                // Yield rather than spin: the guest's vCPU and the host
                // endpoint's thread poll too, and this machine may have
                // fewer CPUs than pollers.
                std::thread::yield_now();
                continue;
            }
            if !notifying {
                // More may have come in meanwhile: look once more first.
                let more = self.tx.enable_notification(&self.mem).unwrap_or(true)
                    | self.rx.enable_notification(&self.mem).unwrap_or(true);
                notifying = true;
                if more {
                    continue;
                }
            }
            // Until the guest notifies (KVM signals the ioeventfd), a stop,
            // or NAP (the host endpoint has no fd to wait on).
            if let Err(e) = self.waits.run_with_timeout(NAP.as_millis() as i32) {
                tracing::warn!("virtio device: epoll wait failed: {e}");
                std::thread::sleep(NAP);
            }
        }
    }

    /// One pass over both directions; whether anything moved. `Err` when
    /// the driver broke the rules.
    fn pump(&mut self, message: &mut Vec<u8>) -> Result<bool, ()> {
        let mut moved = false;
        // virtio-queue's iterator stops silently on an avail index more
        // than a queue ahead; that is a broken driver, not an empty queue.
        Self::pending(&self.tx, &self.mem)?;
        while let Some(chain) = self.tx.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            self.refuse_indirect(&self.tx, head)?;
            message.clear();
            for desc in chain {
                let len = u64::from(desc.len());
                if desc.is_write_only()
                    || !user_range(desc.addr().0, len, self.mem_size)
                    || message.len() as u64 + len > u64::from(MAX_MESSAGE)
                {
                    return Err(());
                }
                let start = message.len();
                message.resize(start + len as usize, 0);
                self.mem
                    .read_slice(&mut message[start..], desc.addr())
                    .map_err(|_| ())?;
            }
            self.tx.add_used(&self.mem, head, 0).map_err(|_| ())?;
            self.shared.used_moved();
            if !self.shared.peer_gone.load(Ordering::SeqCst) {
                if let Err(e) = self.channel.send(message) {
                    self.note(e);
                }
            }
            moved = true;
        }
        if self.shared.peer_gone.load(Ordering::SeqCst) {
            return Ok(moved);
        }
        // Receive only into a buffer the driver already offered.
        let offered = Self::pending(&self.rx, &self.mem)? != 0;
        if offered {
            match self.channel.recv(message) {
                Ok(()) => {
                    self.deliver(message)?;
                    moved = true;
                }
                Err(ChannelError::Timeout { .. }) => {}
                Err(e) => self.note(e),
            }
        }
        Ok(moved)
    }

    /// How many chains the driver has made available and the device not yet
    /// taken; `Err` when that is more than the queue holds (the driver
    /// moved its avail index past what it can have written).
    fn pending(queue: &Queue, mem: &GuestMemoryMmap) -> Result<u16, ()> {
        let avail = queue.avail_idx(mem, Ordering::Acquire).map_err(|_| ())?;
        let pending = avail.0.wrapping_sub(queue.next_avail());
        if pending > queue.size() {
            return Err(());
        }
        Ok(pending)
    }

    /// Writes `message` into the next receive chain.
    fn deliver(&mut self, message: &[u8]) -> Result<(), ()> {
        let chain = self.rx.pop_descriptor_chain(&self.mem).ok_or(())?;
        let head = chain.head_index();
        self.refuse_indirect(&self.rx, head)?;
        let mut descs = Vec::new();
        let mut room = 0u64;
        for desc in chain {
            let len = u64::from(desc.len());
            // The device writes there: a page the guest itself may write
            // (never its code, W^X).
            if desc.flags() & VRING_DESC_F_WRITE == 0
                || !vmm::arch::paging::user_writable(&self.mem, desc.addr().0, len, self.mem_size)
            {
                return Err(());
            }
            room += len;
            descs.push(desc);
        }
        let used = if message.len() as u64 > room {
            TOO_LARGE
        } else {
            let mut rest = message;
            for desc in descs {
                let n = rest.len().min(desc.len() as usize);
                self.mem
                    .write_slice(&rest[..n], desc.addr())
                    .map_err(|_| ())?;
                rest = &rest[n..];
            }
            message.len() as u32
        };
        self.rx.add_used(&self.mem, head, used).map_err(|_| ())?;
        self.shared.used_moved();
        Ok(())
    }

    /// `Err` when descriptor `head` of `queue` points to an indirect table:
    /// the device does not offer `VIRTIO_F_INDIRECT_DESC`, and following
    /// one would read a table the guest may have placed anywhere.
    fn refuse_indirect(&self, queue: &Queue, head: u16) -> Result<(), ()> {
        const VRING_DESC_F_INDIRECT: u16 = 4;
        let at = queue
            .desc_table()
            .checked_add(16 * u64::from(head) + 12)
            .ok_or(())?;
        let flags: u16 = self
            .mem
            .read_obj(vm_memory::GuestAddress(at))
            .map_err(|_| ())?;
        if flags & VRING_DESC_F_INDIRECT != 0 {
            return Err(());
        }
        Ok(())
    }

    fn note(&self, e: ChannelError) {
        self.shared.used_moved();
        tracing::debug!("virtio channel: host endpoint: {e}");
        if !matches!(
            e,
            ChannelError::Timeout { .. } | ChannelError::TooLarge { .. }
        ) {
            self.shared.peer_gone.store(true, Ordering::SeqCst);
        }
    }
}
