//! Channels over kernel byte streams: pipes, Unix sockets and TCP on
//! loopback, the xOS prototype's host mechanisms. Each message is framed as
//! a 4-byte little-endian length and the bytes, written with one syscall.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vm_memory::VolatileSlice;

use super::{Channel, ChannelError, Result, DEFAULT_MAX_MESSAGE};
use crate::com::ComMechanism;

const HEADER: usize = 4;

/// One endpoint of a stream channel: `R` is read from, `W` written to (the
/// same socket twice, or the two ends of two pipes).
pub struct StreamChannel<R, W> {
    mechanism: ComMechanism,
    reader: R,
    writer: W,
    /// Frame being built: header then payload, so a send is one write.
    staging: Vec<u8>,
    acquired: Option<usize>,
    max_message: usize,
    timeout: Option<Duration>,
}

/// A pipe channel endpoint: reads one pipe, writes the other.
pub type PipeChannel = StreamChannel<File, File>;
/// A Unix-socket channel endpoint.
pub type UnixChannel = StreamChannel<UnixStream, UnixStream>;
/// A TCP-on-loopback channel endpoint.
pub type TcpChannel = StreamChannel<TcpStream, TcpStream>;

impl<R, W> StreamChannel<R, W>
where
    R: Read + AsFd + Send,
    W: Write + Send,
{
    fn new(mechanism: ComMechanism, reader: R, writer: W) -> Self {
        StreamChannel {
            mechanism,
            reader,
            writer,
            staging: Vec::new(),
            acquired: None,
            max_message: DEFAULT_MAX_MESSAGE,
            timeout: None,
        }
    }

    /// Change the largest message this endpoint sends or accepts.
    pub fn with_max_message(mut self, max: usize) -> Self {
        self.max_message = max.min(u32::MAX as usize);
        self
    }

    fn name(&self) -> &'static str {
        self.mechanism.name()
    }

    fn io_error(&self, op: &'static str, e: std::io::Error) -> ChannelError {
        match e.kind() {
            ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof => ChannelError::PeerGone {
                mechanism: self.name(),
                op,
                why: e.to_string(),
            },
            _ => ChannelError::Io {
                mechanism: self.name(),
                op,
                source: e,
            },
        }
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

    /// Write the frame in `staging[..HEADER + len]`, header filled here.
    fn write_staged(&mut self, len: usize, op: &'static str) -> Result<()> {
        self.staging[..HEADER].copy_from_slice(&(len as u32).to_le_bytes());
        let mut done = 0;
        while done < HEADER + len {
            match self.writer.write(&self.staging[done..HEADER + len]) {
                Ok(0) => {
                    return Err(ChannelError::PeerGone {
                        mechanism: self.name(),
                        op,
                        why: "the connection accepts no more bytes".into(),
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => self.check_stop(op)?,
                Err(e) => return Err(self.io_error(op, e)),
            }
        }
        Ok(())
    }

    /// After a blocking call was interrupted: give up if the IC's run is
    /// being stopped (see [`vmm::interrupt::stop_requested`]).
    fn check_stop(&self, op: &'static str) -> Result<()> {
        if vmm::interrupt::stop_requested() {
            return Err(ChannelError::Stopped {
                mechanism: self.name(),
                op,
            });
        }
        Ok(())
    }

    /// Wait until the reader has bytes (or EOF), honouring the timeout.
    fn wait_readable(&self, deadline: Option<Instant>) -> Result<()> {
        let Some(deadline) = deadline else {
            return Ok(());
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ChannelError::Timeout {
                    mechanism: self.name(),
                    timeout: self.timeout.unwrap_or_default(),
                });
            }
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            self.check_stop("recv")?;
            if poll_readable(self.reader.as_fd(), ms).map_err(|e| self.io_error("recv", e))? {
                return Ok(());
            }
        }
    }

    fn read_exact(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            self.wait_readable(deadline)?;
            match self.reader.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(ChannelError::PeerGone {
                        mechanism: self.name(),
                        op: "recv",
                        why: "the connection was closed".into(),
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => self.check_stop("recv")?,
                Err(e) => return Err(self.io_error("recv", e)),
            }
        }
        Ok(())
    }
}

/// `poll(2)` one fd for input; true when readable or hung up.
fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid, exclusively borrowed pollfd array of length 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    match rc {
        -1 => {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

impl<R, W> Channel for StreamChannel<R, W>
where
    R: Read + AsFd + Send,
    W: Write + Send,
{
    fn mechanism(&self) -> ComMechanism {
        self.mechanism
    }

    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.check_len(msg.len())?;
        self.acquired = None;
        self.staging.clear();
        self.staging.extend_from_slice(&[0; HEADER]);
        self.staging.extend_from_slice(msg);
        self.write_staged(msg.len(), "send")
    }

    fn recv(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut header = [0u8; HEADER];
        self.read_exact(&mut header, deadline)?;
        let len = u32::from_le_bytes(header) as usize;
        if len > self.max_message {
            return Err(ChannelError::Corrupt {
                mechanism: self.name(),
                what: format!(
                    "the peer announced a {len}-byte message, over the {}-byte limit",
                    self.max_message
                ),
            });
        }
        buf.clear();
        buf.resize(len, 0);
        self.read_exact(buf, deadline)
    }

    fn acquire(&mut self, len: usize) -> Result<VolatileSlice<'_>> {
        self.check_len(len)?;
        self.staging.clear();
        self.staging.resize(HEADER + len, 0);
        self.acquired = Some(len);
        Ok(VolatileSlice::from(&mut self.staging[HEADER..]))
    }

    fn commit(&mut self, len: usize) -> Result<()> {
        match self.acquired.take() {
            Some(acquired) if len <= acquired => self.write_staged(len, "commit"),
            acquired => Err(ChannelError::BadCommit {
                committed: len,
                acquired,
            }),
        }
    }

    fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }
}

fn setup(mechanism: ComMechanism, what: &'static str, source: std::io::Error) -> ChannelError {
    ChannelError::Setup {
        mechanism: mechanism.name(),
        what,
        source,
    }
}

/// Two ends of a new pipe (close-on-exec).
fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((File::from(r), File::from(w)))
}

/// A connected pair of pipe channel endpoints (two pipes, one per direction).
pub fn pipe_pair() -> Result<(PipeChannel, PipeChannel)> {
    let m = ComMechanism::Pipe;
    let (a_read, b_write) = pipe().map_err(|e| setup(m, "pipe2", e))?;
    let (b_read, a_write) = pipe().map_err(|e| setup(m, "pipe2", e))?;
    Ok((
        StreamChannel::new(m, a_read, a_write),
        StreamChannel::new(m, b_read, b_write),
    ))
}

/// A connected pair of Unix-socket channel endpoints.
pub fn unix_pair() -> Result<(UnixChannel, UnixChannel)> {
    let m = ComMechanism::UnixSocket;
    let (a, b) = UnixStream::pair().map_err(|e| setup(m, "socketpair", e))?;
    let a2 = a.try_clone().map_err(|e| setup(m, "dup", e))?;
    let b2 = b.try_clone().map_err(|e| setup(m, "dup", e))?;
    Ok((StreamChannel::new(m, a, a2), StreamChannel::new(m, b, b2)))
}

/// A connected pair of TCP channel endpoints on 127.0.0.1 (Nagle off, so
/// small messages go out at once).
pub fn tcp_pair() -> Result<(TcpChannel, TcpChannel)> {
    let m = ComMechanism::Tcp;
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| setup(m, "bind 127.0.0.1:0", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| setup(m, "local_addr", e))?;
    let a = TcpStream::connect(addr).map_err(|e| setup(m, "connect", e))?;
    let (b, _) = listener.accept().map_err(|e| setup(m, "accept", e))?;
    let mut ends = Vec::with_capacity(2);
    for s in [a, b] {
        s.set_nodelay(true)
            .map_err(|e| setup(m, "TCP_NODELAY", e))?;
        let w = s.try_clone().map_err(|e| setup(m, "dup", e))?;
        ends.push(StreamChannel::new(m, s, w));
    }
    let b = ends
        .pop()
        .ok_or_else(|| setup(m, "accept", ErrorKind::Other.into()))?;
    let a = ends
        .pop()
        .ok_or_else(|| setup(m, "connect", ErrorKind::Other.into()))?;
    Ok((a, b))
}
