//! Channels: the one API execution flows in two ICs use to exchange
//! messages, whatever mechanism carries them underneath.
//!
//! Every channel is a bidirectional, ordered, message-preserving pipe
//! between two endpoints:
//!
//! * [`Channel::send`] / [`Channel::recv`]: one message each way, boundaries
//!   kept (a 3-byte send is a 3-byte recv, never merged or split);
//! * [`Channel::call`]: send a request and wait for the reply (the peer
//!   answers with `recv` then `send`);
//! * [`Channel::acquire`] / [`Channel::commit`]: zero-copy sends for large
//!   messages; the sender fills the slice in place (in the shared ring
//!   itself when the mechanism has one) and commits how much it wrote.
//!
//! A peer that closes its endpoint or dies ends every pending and later
//! operation with [`ChannelError::PeerGone`]: a caller never hangs on a dead
//! peer. Mechanisms: [`ring`] (a shared-memory ring in a memfd, polling or
//! sleeping on a futex) and [`stream`] (pipes, Unix sockets, TCP on
//! loopback: the xOS prototype's host mechanisms).

pub mod ring;
pub mod stream;
pub mod virtio;

use std::time::Duration;

use vm_memory::VolatileSlice;

use crate::com::ComMechanism;

/// Default upper bound on one message: a header claiming more is refused
/// rather than allocated, so a corrupt or hostile peer cannot exhaust memory.
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 20;

/// What went wrong on a channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The other endpoint was closed, or its process died.
    #[error("the peer of the {mechanism} channel is gone during {op} ({why}); the message was not delivered")]
    PeerGone {
        /// The mechanism's short name.
        mechanism: &'static str,
        /// `send`, `recv`, `call`, `acquire` or `commit`.
        op: &'static str,
        /// How it was seen to be gone (closed its end, its process ended,
        /// the connection closed).
        why: String,
    },
    /// A message longer than the channel allows.
    #[error("a {len}-byte message exceeds this {mechanism} channel's limit of {max} bytes; split it or raise the limit with with_max_message()")]
    TooLarge {
        /// The mechanism's short name.
        mechanism: &'static str,
        /// The message length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No message arrived within the timeout set by [`Channel::set_timeout`].
    #[error("no message on the {mechanism} channel within {timeout:?}")]
    Timeout {
        /// The mechanism's short name.
        mechanism: &'static str,
        /// The timeout.
        timeout: Duration,
    },
    /// The IC whose host function was waiting on the channel is being
    /// stopped (its time limit passed or it was killed).
    #[error(
        "stopped while waiting on the {mechanism} channel (during {op}): the IC's run was stopped"
    )]
    Stopped {
        /// The mechanism's short name.
        mechanism: &'static str,
        /// The operation.
        op: &'static str,
    },
    /// `commit` without a matching `acquire`, or of more bytes than acquired.
    #[error("commit({committed}) does not match the preceding acquire({acquired:?}); call acquire(len) first and commit at most len bytes")]
    BadCommit {
        /// Bytes the caller tried to commit.
        committed: usize,
        /// Bytes acquired, if any.
        acquired: Option<usize>,
    },
    /// The shared state breaks the channel's invariants: the peer wrote
    /// garbage into shared memory. The channel is unusable afterwards.
    #[error("the {mechanism} channel's shared state is corrupt ({what}); the peer is misbehaving, close the channel")]
    Corrupt {
        /// The mechanism's short name.
        mechanism: &'static str,
        /// Which invariant broke.
        what: String,
    },
    /// Setting the channel up failed.
    #[error("cannot set up a {mechanism} channel: {what}: {source}")]
    Setup {
        /// The mechanism's short name.
        mechanism: &'static str,
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// An I/O error other than the peer going away.
    #[error("{op} on the {mechanism} channel failed: {source}")]
    Io {
        /// The mechanism's short name.
        mechanism: &'static str,
        /// The operation.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Result of channel operations.
pub type Result<T> = std::result::Result<T, ChannelError>;

/// One endpoint of a bidirectional message channel between two ICs.
pub trait Channel: Send {
    /// Which mechanism carries the messages.
    fn mechanism(&self) -> ComMechanism;

    /// Send one message; blocks while the channel is full.
    fn send(&mut self, msg: &[u8]) -> Result<()>;

    /// Receive one message into `buf` (its old contents are replaced);
    /// blocks until a message arrives, the peer goes away, or the timeout.
    fn recv(&mut self, buf: &mut Vec<u8>) -> Result<()>;

    /// Send `request` and receive the reply into `reply`.
    fn call(&mut self, request: &[u8], reply: &mut Vec<u8>) -> Result<()> {
        self.send(request)?;
        self.recv(reply)
    }

    /// Reserve room for a message of up to `len` bytes and return it to be
    /// filled in place; nothing is sent until [`Channel::commit`].
    fn acquire(&mut self, len: usize) -> Result<VolatileSlice<'_>>;

    /// Send the first `len` bytes of the slice from the last `acquire`.
    fn commit(&mut self, len: usize) -> Result<()>;

    /// Bound how long `recv` waits (`None`: wait until a message or the
    /// peer's death).
    fn set_timeout(&mut self, timeout: Option<Duration>);

    /// Close this process's copy of an endpoint that now lives in another
    /// process (handed over across `fork`) without telling the peer it
    /// closed: the other process keeps using it.
    fn hand_over(self: Box<Self>) {}
}

/// Makes channel endpoint `channel` reachable from the IC built from `spec`
/// as three host functions (the hypercall relay: each call is one exit to
/// the monitor, or one trap for a thread IC):
///
/// * `NAME.send` (input: the message; output: empty),
/// * `NAME.recv` (input ignored; output: the next message),
/// * `NAME.call` (input: the request; output: the reply);
/// * `NAME.reply_recv` (input: the reply to the last request; output: the
///   next request): a server's loop in one exit per call instead of two,
///   as seL4's `ReplyRecv`.
///
/// A channel error (peer gone, timeout, ...) fails the host call with the
/// error's text, so the guest sees `XOS_EHOSTFN` instead of hanging.
pub fn attach(spec: &mut crate::IcSpec, name: &str, channel: Box<dyn Channel>) {
    use std::sync::{Arc, Mutex};
    let channel = Arc::new(Mutex::new(channel));
    type Shared = Arc<Mutex<Box<dyn Channel>>>;
    // A panic while holding the lock can only come from a host function of
    // this same channel; the channel's state is still consistent.
    fn lock(c: &Shared) -> std::sync::MutexGuard<'_, Box<dyn Channel>> {
        c.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    let ch = Arc::clone(&channel);
    spec.host_functions
        .register(format!("{name}.send"), move |msg: &[u8]| {
            lock(&ch)
                .send(msg)
                .map(|()| Vec::new())
                .map_err(|e| e.to_string())
        });
    let ch = Arc::clone(&channel);
    spec.host_functions
        .register(format!("{name}.recv"), move |_: &[u8]| {
            let mut buf = Vec::new();
            lock(&ch).recv(&mut buf).map_err(|e| e.to_string())?;
            Ok(buf)
        });
    let ch = Arc::clone(&channel);
    spec.host_functions
        .register(format!("{name}.reply_recv"), move |reply: &[u8]| {
            let mut next = Vec::new();
            let mut ch = lock(&ch);
            ch.send(reply).map_err(|e| e.to_string())?;
            ch.recv(&mut next).map_err(|e| e.to_string())?;
            Ok(next)
        });
    spec.host_functions
        .register(format!("{name}.call"), move |request: &[u8]| {
            let mut reply = Vec::new();
            lock(&channel)
                .call(request, &mut reply)
                .map_err(|e| e.to_string())?;
            Ok(reply)
        });
}
