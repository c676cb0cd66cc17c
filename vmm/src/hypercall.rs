//! Serving the guest's hypercalls (ABI v1, `docs/ABI.md`).
//!
//! Arguments and results travel through the BootInfo page, never through
//! vCPU registers, so a hypercall costs one `KVM_RUN` round trip and no
//! other ioctl. Every guest pointer is checked against what the guest
//! itself may access before the monitor touches it; a bad request gets an
//! error code, never a host failure.

use crate::arch::paging::user_accessible;
use crate::exit::Fault;
use crate::host_fn::HostFunctions;
use crate::io::GuestIo;
use crate::layout::{
    boot_field, GuestLayout, HYPERCALL_OFFSET, HYPERCALL_RET_OFFSET, OUTPUT_OFFSET, STDIN_OFFSET,
};
use crate::window::{self, SharedWindow};
use std::io::Write;
use std::sync::atomic::Ordering;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xos_abi::{err, nr, Hypercall, OutputRecord, OutputState, StdinState, OUTPUT_RECORD_SIZE};

/// Longest abort message kept.
pub const MAX_ABORT_MESSAGE: u64 = 4096;
/// Longest host function name.
pub const MAX_HOST_FN_NAME: u64 = 256;
/// Largest host function input or direct write handled in one hypercall.
pub const MAX_TRANSFER: u64 = 64 << 20;

/// Errors that end a run on the host side (not the guest's fault).
#[derive(Debug, thiserror::Error)]
pub enum HypercallError {
    /// Writing guest output to the host failed.
    #[error("cannot write the guest's {stream}: {source}")]
    Output {
        /// "stdout" or "stderr".
        stream: &'static str,
        /// The host error.
        source: std::io::Error,
    },
    /// Guest memory the layout guarantees was not accessible (a monitor bug).
    #[error("guest memory access at {addr:#x} failed: {source}")]
    Memory {
        /// Address.
        addr: u64,
        /// What vm-memory reported.
        source: vm_memory::GuestMemoryError,
    },
}

/// What the run loop does after a hypercall.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Resume the guest.
    Resume,
    /// The guest exited with this code.
    Exit(u8),
    /// The guest reached its ready point (`READY`); the run loop decides
    /// whether to stop there or to answer 0 and resume.
    Ready,
    /// The guest aborted with this message.
    Abort(String),
    /// The guest is at a safe point (`SAFE_POINT`); the run loop stops there
    /// if a mutation was requested, else answers 0 and resumes.
    SafePoint,
    /// The guest broke the protocol.
    Fault(Fault),
}

/// The per-run hypercall server.
pub struct Hypercalls {
    mem_size: u64,
    layout: GuestLayout,
    io: GuestIo,
    host_fns: HostFunctions,
    scratch: Vec<u8>,
    /// Output bytes delivered so far, and the most allowed.
    output_total: u64,
    output_limit: Option<u64>,
    /// Guest ranges the monitor wrote besides BootInfo and the stdin
    /// buffer (host-call results), for warm-pool resets.
    host_written: Vec<(u64, u64)>,
    /// The channel window, when the run has one.
    window: Option<SharedWindow>,
    /// The image's read-only pages (code, read-only data): never written
    /// by the monitor for the guest. A VM's page tables say the same
    /// ([`crate::arch::paging::user_writable`]); host ICs have none.
    read_only: Vec<std::ops::Range<u64>>,
    /// Hypercalls served.
    pub count: u64,
}

fn mem_err(addr: u64) -> impl FnOnce(vm_memory::GuestMemoryError) -> HypercallError {
    move |source| HypercallError::Memory { addr, source }
}

impl Hypercalls {
    /// A server for a guest laid out as `layout`.
    pub fn new(layout: GuestLayout, io: GuestIo, host_fns: HostFunctions) -> Self {
        Hypercalls {
            mem_size: layout.mem_size,
            layout,
            io,
            host_fns,
            scratch: Vec::new(),
            output_total: 0,
            output_limit: None,
            host_written: Vec::new(),
            window: None,
            read_only: Vec::new(),
            count: 0,
        }
    }

    /// Never writes into the pages of `segments` that are not writable
    /// (W^X: the monitor must not write code for the guest). For host
    /// ICs, whose memory holds no page tables to ask.
    pub fn with_read_only(mut self, segments: &[crate::loader::Segment]) -> Self {
        self.read_only = segments
            .iter()
            .filter(|s| !s.writable)
            .map(|s| {
                let page = xos_abi::layout::PAGE_SIZE;
                s.addr & !(page - 1)..s.range().end.next_multiple_of(page)
            })
            .collect();
        self
    }

    /// Whether the monitor may write `[addr, addr+len)` for the guest: the
    /// guest itself could.
    fn writable(&self, mem: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
        crate::arch::paging::user_writable(mem, addr, len, self.mem_size)
            && !self
                .read_only
                .iter()
                .any(|r| len > 0 && addr < r.end && r.start < addr + len)
    }

    /// Ends the run with [`Fault::OutputLimit`] once the guest has written
    /// more than `limit` bytes to stdout and stderr together.
    pub fn with_output_limit(mut self, limit: Option<u64>) -> Self {
        self.output_limit = limit;
        self
    }

    /// Serves the window hypercalls for `window`, which the caller has
    /// mapped into the guest's memory.
    pub fn with_window(mut self, window: Option<SharedWindow>) -> Self {
        self.window = window;
        self
    }

    /// Takes the list of guest ranges the monitor wrote besides BootInfo
    /// and the stdin buffer.
    pub fn host_writes(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.host_written)
    }

    /// Counts `n` more output bytes; `Err` with the fault when that passes
    /// the limit (nothing of the offending write is delivered).
    fn charge_output(&mut self, n: u64) -> Result<(), Fault> {
        let total = self.output_total.saturating_add(n);
        match self.output_limit {
            Some(limit) if total > limit => Err(Fault::OutputLimit { limit }),
            _ => {
                self.output_total = total;
                Ok(())
            }
        }
    }

    /// Gives back the guest's I/O streams.
    pub fn into_io(self) -> GuestIo {
        self.io
    }

    /// Serves hypercall `number`.
    pub fn handle(&mut self, mem: &GuestMemoryMmap, number: u32) -> Result<Next, HypercallError> {
        self.count += 1;
        if let Err(fault) = self.drain_output(mem)? {
            return Ok(Next::Fault(fault));
        }
        if number == nr::NOP {
            return self.ret(mem, 0);
        }
        let hc: Hypercall = mem
            .read_obj(boot_field(HYPERCALL_OFFSET))
            .map_err(mem_err(boot_field(HYPERCALL_OFFSET).0))?;
        let a = hc.args;
        match number {
            nr::EXIT => Ok(Next::Exit(a[0] as u8)),
            nr::READY => Ok(Next::Ready),
            nr::SAFE_POINT => Ok(Next::SafePoint),
            nr::ABORT => Ok(Next::Abort(self.abort_message(mem, a[0], a[1]))),
            nr::FLUSH => self.ret(mem, 0),
            nr::READ_STDIN => {
                let r = self.read_stdin(mem)?;
                self.ret(mem, r)
            }
            nr::WRITE => match self.write(mem, a[0], a[1], a[2])? {
                Ok(r) => self.ret(mem, r),
                Err(fault) => Ok(Next::Fault(fault)),
            },
            nr::HOST_CALL => {
                let r = self.host_call(mem, a)?;
                self.ret(mem, r)
            }
            nr::WINDOW_WAIT => {
                let r = self.window_wait(mem, a[0], a[1], a[2]);
                self.ret(mem, r)
            }
            nr::WINDOW_WAKE => {
                let r = self.window_wake(mem, a[0]);
                self.ret(mem, r)
            }
            _ => self.ret(mem, err::EINVAL),
        }
    }

    /// Stores `value` as the result of the current hypercall.
    pub fn ret(&mut self, mem: &GuestMemoryMmap, value: i64) -> Result<Next, HypercallError> {
        let at = boot_field(HYPERCALL_RET_OFFSET);
        mem.write_obj(value, at).map_err(mem_err(at.0))?;
        Ok(Next::Resume)
    }

    /// `WINDOW_WAIT`: sleep (at most [`window::MAX_WAIT`]) while the
    /// window word at `offset` holds `seen`; `EPIPE` once the peer is gone.
    fn window_wait(&self, mem: &GuestMemoryMmap, offset: u64, seen: u64, micros: u64) -> i64 {
        let Some(w) = &self.window else {
            return err::EINVAL;
        };
        let Some(word) = window::word(mem, w.size(), offset) else {
            return err::EINVAL;
        };
        if w.peer_gone() {
            return err::EPIPE;
        }
        let nap = std::time::Duration::from_micros(micros).min(window::MAX_WAIT);
        if !nap.is_zero() && word.load(Ordering::SeqCst) == seen as u32 {
            window::futex_wait(word, seen as u32, nap);
        }
        0
    }

    /// `WINDOW_WAKE`: wake the sleepers on the window word at `offset`.
    fn window_wake(&self, mem: &GuestMemoryMmap, offset: u64) -> i64 {
        let Some(w) = &self.window else {
            return err::EINVAL;
        };
        match window::word(mem, w.size(), offset) {
            Some(word) => {
                window::futex_wake(word, u32::MAX >> 1);
                0
            }
            None => err::EINVAL,
        }
    }

    fn readable(&self, addr: u64, len: u64) -> bool {
        user_accessible(addr, len, self.mem_size)
    }

    /// Writes pending output records to the host and empties the buffer.
    /// `Ok(Err(fault))` when the records do not parse.
    pub fn drain_output(
        &mut self,
        mem: &GuestMemoryMmap,
    ) -> Result<Result<(), Fault>, HypercallError> {
        let at = boot_field(OUTPUT_OFFSET);
        let state: OutputState = mem.read_obj(at).map_err(mem_err(at.0))?;
        if state.used == 0 {
            return Ok(Ok(()));
        }
        if state.buf != self.layout.output || state.cap != self.layout.output_cap {
            return Ok(Err(Fault::CorruptOutput(format!(
                "the output buffer moved to {:#x}+{:#x}; it must stay at {:#x}+{:#x}",
                state.buf, state.cap, self.layout.output, self.layout.output_cap
            ))));
        }
        if state.used > state.cap {
            return Ok(Err(Fault::CorruptOutput(format!(
                "{} bytes used in a {}-byte buffer",
                state.used, state.cap
            ))));
        }
        let used = state.used as usize;
        self.scratch.resize(used, 0);
        mem.read_slice(&mut self.scratch, GuestAddress(state.buf))
            .map_err(mem_err(state.buf))?;
        let mut off = 0usize;
        while off < used {
            if used - off < OUTPUT_RECORD_SIZE as usize {
                return Ok(Err(Fault::CorruptOutput(format!(
                    "a truncated record header at offset {off}"
                ))));
            }
            let mut header = [0u8; 8];
            header.copy_from_slice(&self.scratch[off..off + 8]);
            let rec = OutputRecord {
                fd: u32::from_le_bytes([header[0], header[1], header[2], header[3]]),
                len: u32::from_le_bytes([header[4], header[5], header[6], header[7]]),
            };
            let start = off + 8;
            let end = start + rec.len as usize;
            if end > used {
                return Ok(Err(Fault::CorruptOutput(format!(
                    "the record at offset {off} claims {} bytes but only {} remain",
                    rec.len,
                    used - start
                ))));
            }
            let stream = match rec.fd {
                1 => "stdout",
                2 => "stderr",
                fd => {
                    return Ok(Err(Fault::CorruptOutput(format!(
                        "the record at offset {off} is for fd {fd}; only 1 and 2 exist"
                    ))))
                }
            };
            if let Err(fault) = self.charge_output(rec.len as u64) {
                return Ok(Err(fault));
            }
            let sink: &mut dyn Write = match rec.fd {
                1 => &mut *self.io.stdout,
                _ => &mut *self.io.stderr,
            };
            sink.write_all(&self.scratch[start..end])
                .map_err(|source| HypercallError::Output { stream, source })?;
            off = xos_abi::align_up(end as u64, 8) as usize;
        }
        let used_at = boot_field(OUTPUT_OFFSET + std::mem::offset_of!(OutputState, used));
        mem.write_obj(0u64, used_at).map_err(mem_err(used_at.0))?;
        Ok(Ok(()))
    }

    fn abort_message(&mut self, mem: &GuestMemoryMmap, addr: u64, len: u64) -> String {
        let len = len.min(MAX_ABORT_MESSAGE);
        if !self.readable(addr, len) {
            return format!("(the abort message at {addr:#x}+{len} is outside guest memory)");
        }
        let mut buf = vec![0u8; len as usize];
        match mem.read_slice(&mut buf, GuestAddress(addr)) {
            Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
            Err(e) => format!("(the abort message could not be read: {e})"),
        }
    }

    fn read_stdin(&mut self, mem: &GuestMemoryMmap) -> Result<i64, HypercallError> {
        let at = boot_field(STDIN_OFFSET);
        let mut state: StdinState = mem.read_obj(at).map_err(mem_err(at.0))?;
        if state.eof != 0 {
            state.len = 0;
            mem.write_obj(state, at).map_err(mem_err(at.0))?;
            return Ok(0);
        }
        // The buffer comes from BootInfo, which the guest may have changed
        // before a move into this IC: never a read-only page.
        if !self.writable(mem, self.layout.stdin, self.layout.stdin_cap) {
            return Ok(err::EFAULT);
        }
        self.scratch.resize(self.layout.stdin_cap as usize, 0);
        let n = match self.io.stdin.read(&mut self.scratch) {
            Ok(n) => n,
            Err(_) => return Ok(err::EIO),
        };
        mem.write_slice(&self.scratch[..n], GuestAddress(self.layout.stdin))
            .map_err(mem_err(self.layout.stdin))?;
        // The guest may have scribbled on buf/cap; restore the truth.
        state = StdinState {
            buf: self.layout.stdin,
            cap: self.layout.stdin_cap,
            len: n as u64,
            eof: u64::from(n == 0),
        };
        mem.write_obj(state, at).map_err(mem_err(at.0))?;
        Ok(n as i64)
    }

    fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        fd: u64,
        addr: u64,
        len: u64,
    ) -> Result<Result<i64, Fault>, HypercallError> {
        if fd != 1 && fd != 2 {
            return Ok(Ok(err::EINVAL));
        }
        if !self.readable(addr, len) {
            return Ok(Ok(err::EFAULT));
        }
        let len = len.min(MAX_TRANSFER);
        if let Err(fault) = self.charge_output(len) {
            return Ok(Err(fault));
        }
        let (sink, stream): (&mut dyn Write, _) = if fd == 1 {
            (&mut *self.io.stdout, "stdout")
        } else {
            (&mut *self.io.stderr, "stderr")
        };
        let mut done = 0u64;
        const CHUNK: u64 = 1 << 20;
        while done < len {
            let n = (len - done).min(CHUNK) as usize;
            self.scratch.resize(n, 0);
            mem.read_slice(&mut self.scratch[..n], GuestAddress(addr + done))
                .map_err(mem_err(addr + done))?;
            sink.write_all(&self.scratch[..n])
                .map_err(|source| HypercallError::Output { stream, source })?;
            done += n as u64;
        }
        Ok(Ok(len as i64))
    }

    fn host_call(&mut self, mem: &GuestMemoryMmap, a: [u64; 6]) -> Result<i64, HypercallError> {
        let [name_ptr, name_len, in_ptr, in_len, out_ptr, out_cap] = a;
        if name_len > MAX_HOST_FN_NAME || in_len > MAX_TRANSFER {
            return Ok(err::EINVAL);
        }
        if !self.readable(name_ptr, name_len)
            || !self.readable(in_ptr, in_len)
            || !self.writable(mem, out_ptr, out_cap)
        {
            return Ok(err::EFAULT);
        }
        let mut name = vec![0u8; name_len as usize];
        mem.read_slice(&mut name, GuestAddress(name_ptr))
            .map_err(mem_err(name_ptr))?;
        let Ok(name) = String::from_utf8(name) else {
            return Ok(err::EINVAL);
        };
        let Some(f) = self.host_fns.get(&name).cloned() else {
            return Ok(err::ENOENT);
        };
        let mut input = vec![0u8; in_len as usize];
        mem.read_slice(&mut input, GuestAddress(in_ptr))
            .map_err(mem_err(in_ptr))?;
        // The embedder's function must not take the vCPU thread down with
        // it: a panic is reported to the guest as a failure.
        let output = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&input))) {
            Ok(Ok(out)) => out,
            Ok(Err(message)) => {
                tracing::debug!(function = %name, %message, "host function failed");
                return Ok(err::EHOSTFN);
            }
            Err(_) => {
                tracing::warn!(function = %name, "host function panicked");
                return Ok(err::EHOSTFN);
            }
        };
        if output.len() as u64 > out_cap {
            return Ok(err::E2BIG);
        }
        mem.write_slice(&output, GuestAddress(out_ptr))
            .map_err(mem_err(out_ptr))?;
        self.host_written.push((out_ptr, output.len() as u64));
        Ok(output.len() as i64)
    }
}
