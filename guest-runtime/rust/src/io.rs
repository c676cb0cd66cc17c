//! Standard input and output.
//!
//! Output (`print!`, `println!`, `eprint!`, `eprintln!`, [`Stdout`],
//! [`Stderr`]) is buffered in guest memory and delivered at the next
//! hypercall, at the latest when the program exits or aborts: printing costs
//! no VM exit until the 64 KiB buffer is full. Call [`flush`] to deliver
//! output early (e.g. before a long computation).
//!
//! Input ([`stdin`]) is read in place from the stdin buffer the monitor
//! filled before entry; only when it is used up and more input may follow
//! does the runtime ask the monitor for more (one exit per refill).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use xos_abi::{err, nr};

use crate::boot::get;
use crate::hypercall::hypercall;
use crate::output;

/// An I/O error: the negative ABI error code a hypercall returned
/// (`xos_abi::err`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error(i64);

impl Error {
    /// Wraps an ABI error code.
    pub fn from_code(code: i64) -> Self {
        Self(code)
    }

    /// The ABI error code (negative).
    pub fn code(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.0 {
            err::EFAULT => "bad address (EFAULT)",
            err::EINVAL => "invalid argument (EINVAL)",
            err::ENOENT => "not found (ENOENT)",
            err::E2BIG => "output too big (E2BIG)",
            err::EIO => "host I/O error (EIO)",
            err::EHOSTFN => "host function failed (EHOSTFN)",
            code => return write!(f, "I/O error {code}"),
        };
        f.write_str(what)
    }
}

/// Result of an I/O operation.
pub type Result<T> = core::result::Result<T, Error>;

/// Delivers buffered output now (a `FLUSH` hypercall if any is pending).
pub fn flush() -> Result<()> {
    output::flush().map_err(Error)
}

/// Handle to standard output (buffered; see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stdout;

/// Handle to standard error (buffered like stdout; the order of stdout and
/// stderr output is kept).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stderr;

/// Returns a handle to standard output.
pub fn stdout() -> Stdout {
    Stdout
}

/// Returns a handle to standard error.
pub fn stderr() -> Stderr {
    Stderr
}

macro_rules! impl_writer {
    ($ty:ty, $fd:expr) => {
        impl $ty {
            /// Writes all of `data`.
            pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
                output::write($fd, data).map_err(Error)
            }

            /// Delivers buffered output now (all of it, stdout and stderr).
            pub fn flush(&mut self) -> Result<()> {
                flush()
            }
        }

        impl fmt::Write for $ty {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                output::write($fd, s.as_bytes()).map_err(|_| fmt::Error)
            }
        }
    };
}

impl_writer!(Stdout, 1);
impl_writer!(Stderr, 2);

/// Backend of the print macros. Output errors are ignored, as C's `printf`
/// does: they can only come from the host side, which reports them itself.
#[doc(hidden)]
pub fn _print(fd: u32, args: fmt::Arguments<'_>) {
    struct Fd(u32);
    impl fmt::Write for Fd {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            output::write(self.0, s.as_bytes()).map_err(|_| fmt::Error)
        }
    }
    let _ = fmt::write(&mut Fd(fd), args);
}

/// Prints to standard output (buffered), like `std::print!`.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::__private::_print(1, ::core::format_args!($($arg)*))
    };
}

/// Prints to standard output with a newline (buffered), like
/// `std::println!`.
#[macro_export]
macro_rules! println {
    () => {
        $crate::__private::_print(1, ::core::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::__private::_print(1, ::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

/// Prints to standard error (buffered), like `std::eprint!`.
#[macro_export]
macro_rules! eprint {
    ($($arg:tt)*) => {
        $crate::__private::_print(2, ::core::format_args!($($arg)*))
    };
}

/// Prints to standard error with a newline (buffered), like
/// `std::eprintln!`.
#[macro_export]
macro_rules! eprintln {
    () => {
        $crate::__private::_print(2, ::core::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::__private::_print(2, ::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

/// How many bytes of the current stdin buffer contents were consumed.
/// Reset to 0 by every refill. (Atomic only to avoid `static mut`.)
static STDIN_POS: AtomicU64 = AtomicU64::new(0);

/// Handle to standard input. All handles share one position.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stdin;

/// Returns a handle to standard input.
pub fn stdin() -> Stdin {
    Stdin
}

impl Stdin {
    /// Makes unread input available: returns (address, length) of the
    /// unread part of the stdin buffer, refilling it if it is used up and
    /// more input may follow. Length 0 means end of input.
    fn fill(&mut self) -> Result<(u64, usize)> {
        let mut refilled = false;
        loop {
            let len = get!(stdin.len).min(get!(stdin.cap));
            let pos = STDIN_POS.load(Relaxed);
            if pos < len {
                return Ok((get!(stdin.buf) + pos, (len - pos) as usize));
            }
            if get!(stdin.eof) != 0 || refilled {
                return Ok((0, 0));
            }
            // SAFETY: the monitor overwrites the stdin buffer, which no Rust
            // reference points into: this module only makes short-lived
            // slices of it, never across this call.
            let ret = unsafe { hypercall(nr::READ_STDIN, &[]) };
            if ret < 0 {
                return Err(Error(ret));
            }
            STDIN_POS.store(0, Relaxed);
            // A refill that brings nothing is the end of input (for now: a
            // terminal may give more on the next read).
            refilled = true;
        }
    }

    /// Marks `n` bytes returned by `fill` as consumed.
    fn consume(&mut self, n: usize) {
        STDIN_POS.store(STDIN_POS.load(Relaxed) + n as u64, Relaxed);
    }

    /// Runs `f` on the unread input (an empty slice at end of input) and
    /// consumes as many bytes as `f` says.
    fn with_chunk<R>(&mut self, f: impl FnOnce(&[u8]) -> (usize, R)) -> Result<R> {
        let (addr, len) = self.fill()?;
        let chunk: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: [addr, addr + len) is inside the stdin buffer, which
            // nothing changes until the next READ_STDIN (after `f`).
            unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
        };
        let (used, ret) = f(chunk);
        self.consume(used.min(len));
        Ok(ret)
    }

    /// Reads up to `buf.len()` bytes; returns how many (0 at end of input).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.with_chunk(|chunk| {
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            (n, n)
        })
    }

    /// Appends all remaining input to `buf`; returns how many bytes.
    pub fn read_to_end(&mut self, buf: &mut Vec<u8>) -> Result<usize> {
        let mut total = 0;
        loop {
            let n = self.with_chunk(|chunk| {
                buf.extend_from_slice(chunk);
                (chunk.len(), chunk.len())
            })?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// Appends all remaining input to `buf` as text; invalid UTF-8 is
    /// replaced by U+FFFD. Returns how many bytes were read.
    pub fn read_to_string(&mut self, buf: &mut String) -> Result<usize> {
        let mut bytes = Vec::new();
        let n = self.read_to_end(&mut bytes)?;
        push_lossy(buf, bytes);
        Ok(n)
    }

    /// Appends bytes to `buf` up to and including `delim` (or to the end of
    /// input); returns how many bytes (0 at end of input).
    pub fn read_until(&mut self, delim: u8, buf: &mut Vec<u8>) -> Result<usize> {
        let mut total = 0;
        loop {
            let (n, done) =
                self.with_chunk(|chunk| match chunk.iter().position(|&b| b == delim) {
                    Some(i) => {
                        buf.extend_from_slice(&chunk[..=i]);
                        (i + 1, (i + 1, true))
                    }
                    None => {
                        buf.extend_from_slice(chunk);
                        (chunk.len(), (chunk.len(), chunk.is_empty()))
                    }
                })?;
            total += n;
            if done {
                return Ok(total);
            }
        }
    }

    /// Appends one line, including its `\n` if any, to `buf`, like
    /// `std::io::BufRead::read_line`; invalid UTF-8 is replaced by U+FFFD.
    /// Returns how many bytes were read (0 at end of input).
    pub fn read_line(&mut self, buf: &mut String) -> Result<usize> {
        let mut bytes = Vec::new();
        let n = self.read_until(b'\n', &mut bytes)?;
        push_lossy(buf, bytes);
        Ok(n)
    }

    /// The lines of the remaining input, without `\n` or `\r\n`, like
    /// `std::io::BufRead::lines` (invalid UTF-8 replaced by U+FFFD).
    pub fn lines(self) -> Lines {
        Lines { stdin: self }
    }
}

/// Appends `bytes` to `s`, replacing invalid UTF-8 by U+FFFD (copy-free when
/// `s` is empty and `bytes` are valid).
fn push_lossy(s: &mut String, bytes: Vec<u8>) {
    match String::from_utf8(bytes) {
        Ok(text) if s.is_empty() => *s = text,
        Ok(text) => s.push_str(&text),
        Err(e) => s.push_str(&String::from_utf8_lossy(e.as_bytes())),
    }
}

/// Iterator over the lines of standard input; see [`Stdin::lines`].
#[derive(Debug)]
pub struct Lines {
    stdin: Stdin,
}

impl Iterator for Lines {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        let mut line = String::new();
        match self.stdin.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.ends_with('\n') {
                    line.pop();
                    if line.ends_with('\r') {
                        line.pop();
                    }
                }
                Some(Ok(line))
            }
            Err(e) => Some(Err(e)),
        }
    }
}
