//! Where a guest's standard input comes from and its output goes.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex};

/// A guest's standard input.
pub trait GuestInput: Send {
    /// Fills `buf` with input that is available *without blocking*, before
    /// the guest starts. Returns the bytes stored and whether the input is
    /// known to end there.
    fn prefill(&mut self, buf: &mut [u8]) -> io::Result<(usize, bool)>;
    /// Blocks until some input or the end of input (0) is available.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

/// Input from a byte buffer (embedding, tests, benchmarks).
#[derive(Clone, Debug, Default)]
pub struct BytesInput {
    data: Arc<[u8]>,
    pos: usize,
}

impl BytesInput {
    /// Input consisting of `data`.
    pub fn new(data: impl Into<Arc<[u8]>>) -> Self {
        BytesInput {
            data: data.into(),
            pos: 0,
        }
    }
}

impl GuestInput for BytesInput {
    fn prefill(&mut self, buf: &mut [u8]) -> io::Result<(usize, bool)> {
        let n = GuestInput::read(self, buf)?;
        Ok((n, self.pos == self.data.len()))
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.data[self.pos..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// The monitor process's own standard input (fd 0).
#[derive(Debug, Default)]
pub struct HostStdin;

fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process (we never close
    // it), so a 'static borrow is sound.
    unsafe { BorrowedFd::borrow_raw(0) }
}

fn is_regular_file(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: fstat writes into the zeroed struct we pass; fd is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    rc == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFREG
}

/// Waits until `fd` is ready for `events` or `timeout_ms` passes; true
/// when ready (or in error, which the following call reports).
fn poll_fd(fd: BorrowedFd<'_>, events: i16, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    rc > 0
}

fn readable_now(fd: BorrowedFd<'_>) -> bool {
    poll_fd(fd, libc::POLLIN, 0)
}

/// The error host I/O returns when the run it serves is being stopped.
fn stopped() -> io::Error {
    io::Error::other("the guest is being stopped")
}

/// How long blocking host I/O waits before it checks again whether the
/// run is being stopped (the kick signal usually ends the wait at once;
/// this bounds the case where it arrived just before the wait began).
const STOP_CHECK_MS: i32 = 100;

/// Blocks until `fd` is ready for `events`, giving up with an error if the
/// run is stopped meanwhile.
fn wait_ready(fd: BorrowedFd<'_>, events: i16) -> io::Result<()> {
    loop {
        if crate::interrupt::stop_requested() {
            return Err(stopped());
        }
        if poll_fd(fd, events, STOP_CHECK_MS) {
            return Ok(());
        }
    }
}

fn read_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        wait_ready(fd, libc::POLLIN)?;
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if !matches!(
            e.kind(),
            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
        ) {
            return Err(e);
        }
    }
}

impl GuestInput for HostStdin {
    fn prefill(&mut self, buf: &mut [u8]) -> io::Result<(usize, bool)> {
        let fd = stdin_fd();
        let regular = is_regular_file(fd);
        let mut filled = 0;
        while filled < buf.len() {
            if !regular && !readable_now(fd) {
                return Ok((filled, false));
            }
            match read_fd(fd, &mut buf[filled..]) {
                Ok(0) => return Ok((filled, true)),
                Ok(n) => filled += n,
                // A closed or unusable stdin is treated as empty input.
                Err(e) if e.raw_os_error() == Some(libc::EBADF) => return Ok((filled, true)),
                Err(e) => return Err(e),
            }
        }
        Ok((filled, false))
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match read_fd(stdin_fd(), buf) {
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(0),
            r => r,
        }
    }
}

/// Output to a host file descriptor (1 or 2), written with plain `write`
/// calls so nothing is buffered in the monitor.
#[derive(Debug)]
pub struct HostFd(pub i32);

impl Write for HostFd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: the fd is the caller's (1 or 2), open for the process's
        // life; the borrow does not outlive this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.0) };
        loop {
            wait_ready(fd, libc::POLLOUT)?;
            // SAFETY: buf is valid for buf.len() bytes.
            let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if !matches!(
                e.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
            ) {
                return Err(e);
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Output collected in memory; clones share the buffer.
#[derive(Clone, Debug, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }
    /// A copy of what was written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
    /// Takes what was written so far, leaving the buffer empty.
    pub fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("output buffer lock poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The three standard streams of a guest.
pub struct GuestIo {
    /// Standard input.
    pub stdin: Box<dyn GuestInput>,
    /// Standard output.
    pub stdout: Box<dyn Write + Send>,
    /// Standard error.
    pub stderr: Box<dyn Write + Send>,
    /// The streams are the monitor process's own (so an IC in another
    /// process can simply inherit them).
    inherited: bool,
}

impl GuestIo {
    /// The monitor process's own stdin, stdout and stderr.
    pub fn inherit() -> Self {
        GuestIo {
            stdin: Box::new(HostStdin),
            stdout: Box::new(HostFd(1)),
            stderr: Box::new(HostFd(2)),
            inherited: true,
        }
    }

    /// Streams of the caller's choosing.
    pub fn new(
        stdin: Box<dyn GuestInput>,
        stdout: Box<dyn Write + Send>,
        stderr: Box<dyn Write + Send>,
    ) -> Self {
        GuestIo {
            stdin,
            stdout,
            stderr,
            inherited: false,
        }
    }

    /// True for [`GuestIo::inherit`]: the monitor process's own streams.
    pub fn inherited(&self) -> bool {
        self.inherited
    }

    /// Input from `input`; output captured in the returned buffers
    /// (stdout, stderr).
    pub fn capture(input: impl Into<Arc<[u8]>>) -> (Self, SharedBuffer, SharedBuffer) {
        let out = SharedBuffer::new();
        let err = SharedBuffer::new();
        (
            GuestIo::new(
                Box::new(BytesInput::new(input)),
                Box::new(out.clone()),
                Box::new(err.clone()),
            ),
            out,
            err,
        )
    }
}

impl Read for BytesInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        GuestInput::read(self, buf)
    }
}
