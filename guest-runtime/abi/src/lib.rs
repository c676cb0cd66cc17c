//! The xos guest ABI, version 1: the contract between the monitor and code
//! running inside an isolation context. `docs/ABI.md` is the prose version;
//! `guest-runtime/c/xos_abi.h` mirrors these definitions for C (a test checks
//! that both agree).
//!
//! Design goal: a typical run costs as few VM exits as possible, because each
//! exit from CPL3 costs ~50 µs on the project's machines. Arguments,
//! environment and the first chunk of stdin are in guest memory before entry;
//! output is buffered in guest memory and handed over at the next hypercall
//! (typically the final `EXIT`).
//!
//! This crate is `no_std` so the guest runtime and the host share it.
#![no_std]

/// Version of this ABI; stored in [`BootInfo::abi_version`].
pub const ABI_VERSION: u32 = 1;

/// `BootInfo::magic`: "XOSBOOT1" as a little-endian u64.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"XOSBOOT1");

/// The hypercall doorbell: a guest issues a hypercall by writing its number
/// as a 4-byte value to this guest address (`mov dword [DOORBELL], eax`).
/// No memory backs it, so the write exits to the monitor as MMIO.
///
/// Why MMIO and not `out`: KVM backends that run guest user mode on the
/// host's ring 3 (PVM, the project's machines) force RFLAGS.IOPL to 0 and
/// refuse port I/O from CPL3 with #GP, while an MMIO exit costs the same
/// (~50 us here) and works on every backend.
pub const DOORBELL: u64 = 0x4_0000_0000;
/// I/O port used only by the monitor's CPL0 exception stubs (guest code at
/// CPL3 cannot use ports at all).
pub const FAULT_PORT: u16 = 0x0511;

/// Where the monitor maps an IC's channel window, when it has one: memory
/// shared with a peer IC or the host (a memfd), user readable and writable,
/// described by [`BootInfo::window`]. It lies above the largest guest
/// memory and the doorbell, and is never a valid hypercall pointer.
pub const WINDOW: u64 = 0x5_0000_0000;
/// The register page of the IC's virtio channel device, when it has one
/// ([`BootInfo::devices`] & [`DEVICE_VIRTIO_CHANNEL`]): a virtio-mmio
/// (version 2) device whose two queues carry messages. Every register
/// access exits to the monitor.
pub const VIRTIO_MMIO: u64 = 0x6_0000_0000;
/// [`BootInfo::devices`]: a virtio channel device is at [`VIRTIO_MMIO`].
pub const DEVICE_VIRTIO_CHANNEL: u64 = 1;
/// [`BootInfo::devices`] bit of an `ept-view` IC: the view trampoline and
/// control block are mapped ([`view`]); elsewhere those pages are not.
pub const DEVICE_VIEWS: u64 = 2;

/// Largest channel window (the monitor maps it with one page table).
pub const MAX_WINDOW_SIZE: u64 = 2 << 20;
/// [`WindowInfo::flags`]: the peer may sleep, so a waiting guest should
/// sleep too (`WINDOW_WAIT` with a time) and wake a sleeping peer
/// (`WINDOW_WAKE`); without it, a guest spins, and sleeps only once it
/// sees its vCPU preempted (a busy host; docs/ABI.md, "Channel window").
pub const WINDOW_MAY_SLEEP: u32 = 1;

/// Guest memory layout: guest-physical equals guest-virtual (identity map).
pub mod layout {
    /// Size of a small page.
    pub const PAGE_SIZE: u64 = 0x1000;
    /// Page 0 is never mapped: a null pointer dereference faults.
    pub const NULL_GUARD: u64 = 0x0;
    /// Start of the monitor's supervisor-only area (GDT, TSS, IDT, exception
    /// stubs, page tables, exception stack). Guest code cannot touch it.
    pub const SYSTEM_START: u64 = 0x1000;
    /// End (exclusive) of the supervisor-only area.
    pub const SYSTEM_END: u64 = 0x2_0000;
    /// The [`crate::BootInfo`] page (user read/write).
    pub const BOOT_INFO: u64 = 0x2_0000;
    /// The monitor's resume page: readable and executable by the guest, not
    /// writable. Warm pools keep the snapshot's x87/SSE state and a resume
    /// trampoline here.
    pub const RESUME_PAGE: u64 = 0x2_1000;
    /// The EPT-view trampoline page: the same code in every view of a VM
    /// with views (the `ept-view` ICF), readable and executable by the
    /// guest, not writable; see [`crate::view`]. Not mapped elsewhere
    /// ([`crate::DEVICE_VIEWS`] says which).
    pub const VIEW_TRAMPOLINE: u64 = 0x2_2000;
    /// The view's control block ([`crate::ViewControl`], user read/write):
    /// each view has its own at this address (views only).
    pub const VIEW_CONTROL: u64 = 0x2_3000;
    /// Unmapped page below the stack: a stack overflow faults here.
    pub const STACK_GUARD: u64 = 0x3_0000;
    /// Lowest stack address (inclusive).
    pub const STACK_BOTTOM: u64 = 0x3_1000;
    /// Initial stack pointer (the stack grows down from here).
    pub const STACK_TOP: u64 = 0x10_0000;
    /// Lowest address an image segment may occupy; images are linked here.
    pub const IMAGE_BASE: u64 = 0x10_0000;
    /// Granularity of guest memory sizes (one large page).
    pub const MEM_ALIGN: u64 = 0x20_0000;
    /// Smallest guest memory accepted.
    pub const MIN_MEM: u64 = 0x40_0000;
    /// Largest guest memory accepted (16 GiB).
    pub const MAX_MEM: u64 = 16 << 30;
    /// Default size of the stdin buffer near the top of guest memory.
    pub const STDIN_BUF_SIZE: u64 = 64 << 10;
    /// Default size of the output buffer near the top of guest memory.
    pub const OUTPUT_BUF_SIZE: u64 = 64 << 10;
    /// Largest argument + environment block accepted.
    pub const MAX_ARGS_SIZE: u64 = 1 << 20;
}

/// Hypercall numbers (the value written to [`DOORBELL`]).
pub mod nr {
    /// Flush pending output, then end the run with exit code `args[0] & 0xff`.
    pub const EXIT: u32 = 1;
    /// Flush pending output, then end the run as aborted with the UTF-8
    /// message at `args[0]`, length `args[1]` (at most 4096 bytes are kept).
    pub const ABORT: u32 = 2;
    /// Flush pending output. `ret` = 0.
    pub const FLUSH: u32 = 3;
    /// Refill the stdin buffer: the monitor reads up to `stdin.cap` bytes
    /// (blocking), stores them at `stdin.buf`, sets `stdin.len` (0 at end of
    /// input) and `stdin.eof`. `ret` = `stdin.len`.
    pub const READ_STDIN: u32 = 4;
    /// Write `args[2]` bytes at `args[1]` to fd `args[0]` (1 or 2) directly,
    /// after flushing pending output. `ret` = bytes written.
    pub const WRITE: u32 = 5;
    /// Call the embedder's host function named by (`args[0]`, `args[1]`)
    /// with input (`args[2]`, `args[3]`); its output is copied to
    /// `args[4]`, capacity `args[5]`. `ret` = output length.
    pub const HOST_CALL: u32 = 6;
    /// Does nothing but return 0: the cheapest possible round trip.
    pub const NOP: u32 = 7;
    /// The guest finished its initialisation: the monitor may take a
    /// snapshot here (`xos-vmm snapshot`). `ret` = 0 in the run that made
    /// the call; 1 in every run restored from a snapshot taken at it, which
    /// starts with fresh stdin and an empty output buffer. Call it before
    /// reading stdin.
    pub const READY: u32 = 8;
    /// Wait on the channel window: sleep until the 4-byte word at window
    /// offset `args[0]` (4-byte aligned) no longer holds `args[1]`, at most
    /// `args[2]` microseconds (the monitor caps it at 20 ms; 0 = do not
    /// sleep, only ask). `ret` = 0, or `EPIPE` when the window's peer is
    /// gone (closed its end, ended, or died).
    pub const WINDOW_WAIT: u32 = 9;
    /// Wake whoever sleeps on the window word at offset `args[0]` (a
    /// `WINDOW_WAIT` of the peer IC, or a host thread's futex wait). `ret`
    /// = 0.
    pub const WINDOW_WAKE: u32 = 10;
    /// A safe point: the execution flow is between messages, with nothing
    /// in flight, so the monitor may end the run here to carry it into
    /// another kind of IC (`mutate`). `ret` = 0 when it goes on in the same
    /// IC; 1 when it goes on in a new IC, with its memory and general
    /// registers (vector registers are not carried: it is a call).
    pub const SAFE_POINT: u32 = 11;
    /// Switch this VM's memory to EPT view `value >> 16` (the doorbell
    /// value is `VIEW_SWITCH | view << 16`) and go on at the next
    /// instruction with the same registers: what `VMFUNC` leaf 0 does,
    /// done by the monitor where the CPU or KVM cannot (the `ept-view`
    /// fallback). No arguments in guest memory: the memory changes under
    /// the call. Only in a VM with views; a bad view number is a fault.
    pub const VIEW_SWITCH: u32 = 12;
    /// This view serves cross-view calls from now on (the trampoline's
    /// `view_serve`): its run parks here, the monitor enters it only for
    /// calls, and resumes it here with `ret` = [`super::err::EPIPE`] once
    /// its caller is gone.
    pub const VIEW_SERVE: u32 = 13;
    /// `VMFUNC` mode, from the trampoline only: the peer this view called
    /// does not serve (yet); the monitor resumes the caller once it does
    /// (the trampoline then calls again), or with `EPIPE` once it is gone.
    pub const VIEW_WAIT: u32 = 14;
    /// `VMFUNC` mode, from the trampoline only: a view was entered at a
    /// point it did not expect (not serving, not waiting for a reply): a
    /// switch outside the call protocol, which ends both views of the
    /// pair (the monitor cannot tell which of them made it).
    pub const VIEW_BAD_ENTRY: u32 = 15;
}

/// Negative values a hypercall stores in [`Hypercall::ret`] on failure.
pub mod err {
    /// A pointer/length pair is not inside guest user memory.
    pub const EFAULT: i64 = -14;
    /// An argument is invalid (bad fd, bad hypercall number, bad UTF-8 name).
    pub const EINVAL: i64 = -22;
    /// No host function with that name is registered.
    pub const ENOENT: i64 = -2;
    /// The host function's output does not fit the guest's buffer.
    pub const E2BIG: i64 = -7;
    /// The host could not complete the I/O.
    pub const EIO: i64 = -5;
    /// The channel window's peer is gone.
    pub const EPIPE: i64 = -32;
    /// The host function reported a failure.
    pub const EHOSTFN: i64 = -1000;
}

/// Cross-view calls between the ICs of a VM with views (the `ept-view`
/// ICF): a caller view enters its peer view through the trampoline at
/// [`layout::VIEW_TRAMPOLINE`], the same code in every view, which
/// switches the memory view (`VMFUNC`, or the `VIEW_SWITCH` hypercall
/// where there is none) and calls the peer's handler on the peer's own
/// stack. Messages go through a message area mapped in both views at
/// [`ViewControl::msg_addr`]. `docs/ABI.md` has the protocol.
pub mod view {
    use super::layout::VIEW_TRAMPOLINE;

    /// `long view_call(u64 len, u64 cap)`: the request is the first `len`
    /// bytes of the message area; returns the reply's length (the reply
    /// replaced the request) or a negative [`super::err`] value.
    pub const CALL: u64 = VIEW_TRAMPOLINE;
    /// `long view_serve(void)`: serve calls with [`ViewControl::handler`]
    /// until the caller is gone; returns [`super::err::EPIPE`] then.
    pub const SERVE: u64 = VIEW_TRAMPOLINE + 0x100;
    /// `hypercall_stub`: `mov [DOORBELL], eax; ret`. In a VM with views
    /// (`BootInfo.devices & DEVICE_VIEWS`) every hypercall goes through it:
    /// when views switch with `VMFUNC`, KVM decodes an MMIO write (the
    /// doorbell) from the base's memory, where only the trampoline page is
    /// the same as in the views; a doorbell write elsewhere faults there.
    pub const HYPERCALL: u64 = VIEW_TRAMPOLINE + 0x1e0;
    /// The view's [`super::ViewGate`], in its copy of the trampoline page.
    pub const GATE: u64 = VIEW_TRAMPOLINE + 0xf00;
    /// Offset in the trampoline page of the zeroed FXSAVE image that the
    /// trampoline loads at every switch, so that no x87/SSE register value
    /// crosses between views.
    pub const ZERO_FXSAVE: u64 = 0x200;
    /// Bytes of message area per pair of views.
    pub const MSG_SIZE: u64 = 64 << 10;
    /// [`ViewControl::peer`] of a view that calls nobody.
    pub const NO_PEER: u64 = u64::MAX;
    /// [`ViewGate::peer_slot`] / [`ViewGate::caller_slot`] of a view
    /// without that side (above the EPTP list's 512 entries).
    pub const NO_SLOT: u64 = 0xffff_ffff;
    /// [`ViewControl::flags`]: inside a call.
    pub const IN_CALL: u64 = 2;
}

/// A view's control block at [`layout::VIEW_CONTROL`]. The monitor writes
/// `this`, `peer`, `msg_addr` and `msg_size`; the guest sets `handler`
/// before `view_serve`; the trampoline keeps the two stack pointers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewControl {
    /// This view's number.
    pub this: u64,
    /// The view this one calls ([`view::NO_PEER`] for none).
    pub peer: u64,
    /// `u64 handler(u64 len, u64 cap)`: serves one call (request and reply
    /// in the message area), returns the reply's length.
    pub handler: u64,
    /// The stack pointer `view_serve` parked with (calls run below it).
    pub serve_rsp: u64,
    /// The caller's stack pointer during a call.
    pub saved_rsp: u64,
    /// Guest address of the message area (0 without a peer or caller).
    pub msg_addr: u64,
    /// Its size in bytes.
    pub msg_size: u64,
    /// `VMFUNC` mode: [`view::IN_CALL`] while this view is inside a call
    /// (the caller waiting for the reply, or the callee running its
    /// handler). Kept by the trampoline; the monitor clears it whenever
    /// the view is not running, parked or waiting.
    pub flags: u64,
}

/// A view's gate at [`view::GATE`], in its copy of the trampoline page:
/// written only by the monitor, read-only to the guest (the page is its
/// code), read by the `VMFUNC` trampoline at every entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewGate {
    /// 1 while this view serves calls (parked in `view_serve`, its run
    /// and its owner's limits intact).
    pub open: u64,
    /// The EPTP-list index of the view this one calls
    /// ([`view::NO_SLOT`] for none).
    pub peer_slot: u64,
    /// The EPTP-list index of the view this one serves
    /// ([`view::NO_SLOT`] for none).
    pub caller_slot: u64,
}

impl Default for ViewGate {
    fn default() -> Self {
        ViewGate {
            open: 0,
            peer_slot: view::NO_SLOT,
            caller_slot: view::NO_SLOT,
        }
    }
}

/// Output record header in the output buffer: a record is this header
/// followed by `len` bytes, and the next record starts at the next multiple
/// of 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputRecord {
    /// 1 = stdout, 2 = stderr.
    pub fd: u32,
    /// Payload length in bytes.
    pub len: u32,
}

/// Size of [`OutputRecord`].
pub const OUTPUT_RECORD_SIZE: u64 = 8;

/// State of the stdin buffer, shared by monitor and guest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StdinState {
    /// Guest address of the buffer.
    pub buf: u64,
    /// Capacity of the buffer.
    pub cap: u64,
    /// Bytes the monitor stored, starting at `buf`.
    pub len: u64,
    /// 1 when the monitor knows no input follows `len` bytes.
    pub eof: u64,
}

/// State of the output buffer: the guest appends records and advances
/// `used`; at every hypercall the monitor writes them out and sets `used`
/// to 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputState {
    /// Guest address of the buffer.
    pub buf: u64,
    /// Capacity of the buffer.
    pub cap: u64,
    /// Bytes of records pending.
    pub used: u64,
    /// Reserved, 0.
    pub reserved: u64,
}

/// The hypercall argument block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hypercall {
    /// Arguments, meaning per hypercall number.
    pub args: [u64; 6],
    /// Result: >= 0 success, < 0 one of [`err`].
    pub ret: i64,
    /// Reserved, 0.
    pub reserved: u64,
}

/// The page at [`layout::BOOT_INFO`], written by the monitor before entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// Reserved, 0.
    pub flags: u32,
    /// Size of guest memory in bytes.
    pub mem_size: u64,
    /// Number of arguments.
    pub argc: u64,
    /// Guest address of `argc + 1` pointers (the last is 0) to NUL-terminated
    /// strings.
    pub argv: u64,
    /// Guest address of a 0-terminated pointer array of "KEY=VALUE" strings.
    pub envp: u64,
    /// First byte of the heap (page aligned, after the image).
    pub heap_start: u64,
    /// End (exclusive) of the heap.
    pub heap_end: u64,
    /// Initial stack pointer.
    pub stack_top: u64,
    /// Lowest usable stack address.
    pub stack_bottom: u64,
    /// Standard input.
    pub stdin: StdinState,
    /// Buffered standard output and error.
    pub output: OutputState,
    /// The hypercall argument block.
    pub hypercall: Hypercall,
    /// The channel window (all zero when the IC has none).
    pub window: WindowInfo,
    /// Devices the IC has ([`DEVICE_VIRTIO_CHANNEL`]), 0 for none.
    pub devices: u64,
}

/// Where an IC's channel window is and how to use it (see [`WINDOW`]).
/// The window holds a shared-memory ring channel; `docs/ABI.md` gives its
/// layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowInfo {
    /// Guest address ([`WINDOW`]), or 0 without a window.
    pub addr: u64,
    /// Size in bytes (a multiple of 4 KiB, at most [`MAX_WINDOW_SIZE`]).
    pub size: u64,
    /// Which end of the ring this IC is: 0 sends on ring 0 and receives on
    /// ring 1; 1 the other way round.
    pub side: u32,
    /// [`WINDOW_MAY_SLEEP`] or 0.
    pub flags: u32,
}

/// Layout of the shared-memory ring channel that a channel window holds
/// (and that `icf::channel::ring` maps on the host side). Two
/// single-producer/single-consumer byte rings follow a control page; side
/// `s` produces on ring `s` and consumes ring `1 - s`. Positions are free-
/// running `u32` byte counts (the data index is `pos & (capacity - 1)`);
/// a message is a little-endian `u32` length and that many bytes, and may
/// be larger than the ring.
pub mod ring {
    /// Control word at [`OFF_MAGIC`]: "XRNG" little-endian.
    pub const MAGIC: u32 = u32::from_le_bytes(*b"XRNG");
    /// Size of the control page; ring 0's data follows it, then ring 1's.
    pub const CONTROL: u64 = 4096;
    /// Offset of the magic word.
    pub const OFF_MAGIC: u64 = 0;
    /// Offset of the capacity of each ring (a power of two, >= 4096).
    pub const OFF_CAPACITY: u64 = 4;
    /// Offsets of each side's owner pid (0 or the monitor's pid for ICs).
    pub const OFF_PID: [u64; 2] = [64, 128];
    /// Offsets of each side's closed flag (non-zero: that side is gone).
    pub const OFF_CLOSED: [u64; 2] = [192, 256];
    /// Field of a ring: the producer's position.
    pub const HEAD: u64 = 0;
    /// Field of a ring: the consumer's position.
    pub const TAIL: u64 = 1;
    /// Field of a ring: non-zero while its consumer sleeps.
    pub const CONSUMER_SLEEPS: u64 = 2;
    /// Field of a ring: non-zero while its producer sleeps.
    pub const PRODUCER_SLEEPS: u64 = 3;
    /// Offset of `field` of ring `k` (each on its own 128-byte line).
    pub const fn field(k: u64, field: u64) -> u64 {
        512 + k * 1024 + field * 128
    }
    /// Size of a message's length prefix.
    pub const HEADER: u64 = 4;
}

/// Byte offsets of the fields the C mirror must match.
pub mod offsets {
    use super::BootInfo;
    use core::mem::offset_of;
    /// Offset of `argc`.
    pub const ARGC: usize = offset_of!(BootInfo, argc);
    /// Offset of `heap_start`.
    pub const HEAP_START: usize = offset_of!(BootInfo, heap_start);
    /// Offset of `stdin`.
    pub const STDIN: usize = offset_of!(BootInfo, stdin);
    /// Offset of `output`.
    pub const OUTPUT: usize = offset_of!(BootInfo, output);
    /// Offset of `hypercall`.
    pub const HYPERCALL: usize = offset_of!(BootInfo, hypercall);
    /// Offset of `window`.
    pub const WINDOW: usize = offset_of!(BootInfo, window);
    /// Offset of `devices`.
    pub const DEVICES: usize = offset_of!(BootInfo, devices);
    /// Size of the whole struct.
    pub const SIZE: usize = core::mem::size_of::<BootInfo>();
}

/// Rounds `v` up to a multiple of `align` (a power of two).
pub const fn align_up(v: u64, align: u64) -> u64 {
    (v + align - 1) & !(align - 1)
}

#[cfg(feature = "vm-memory")]
mod byte_valued {
    use super::{
        BootInfo, Hypercall, OutputRecord, OutputState, StdinState, ViewControl, ViewGate,
        WindowInfo,
    };
    // SAFETY: each type is `#[repr(C)]`, made only of integer fields laid out
    // without padding (sizes are multiples of 8, or two u32s), so every byte
    // pattern is a valid value and no byte is uninitialised.
    unsafe impl vm_memory::ByteValued for BootInfo {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for Hypercall {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for OutputRecord {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for OutputState {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for StdinState {}
    // SAFETY: as above (two u64s, then two u32s).
    unsafe impl vm_memory::ByteValued for WindowInfo {}
    // SAFETY: as above (eight u64s).
    unsafe impl vm_memory::ByteValued for ViewControl {}
    // SAFETY: as above (three u64s).
    unsafe impl vm_memory::ByteValued for ViewGate {}
}
