//! Command-line arguments, read in place from the `argv` array the monitor
//! put in guest memory: no copy, no allocation. `argv[0]` is the image name,
//! as in C. The strings live as long as the run (`'static`).

use core::fmt;

use crate::boot::get;

/// Number of arguments, including `argv[0]`.
fn argc() -> usize {
    get!(argc) as usize
}

/// Argument `i` (< argc) as bytes, without its terminating NUL.
fn arg(i: usize) -> &'static [u8] {
    // SAFETY: the monitor provides argc + 1 pointers to NUL-terminated
    // strings in guest memory that stays untouched for the whole run.
    let argv = get!(argv) as *const *const u8;
    unsafe {
        let ptr = *argv.add(i);
        core::slice::from_raw_parts(ptr, crate::mem::strlen(ptr))
    }
}

/// Iterator over the arguments as bytes (`argv[0]` first); see
/// [`args_bytes`].
#[derive(Clone)]
pub struct ArgsBytes {
    next: usize,
    end: usize,
}

/// Returns the arguments as bytes, `argv[0]` (the image name) first.
pub fn args_bytes() -> ArgsBytes {
    ArgsBytes {
        next: 0,
        end: argc(),
    }
}

impl Iterator for ArgsBytes {
    type Item = &'static [u8];

    fn next(&mut self) -> Option<&'static [u8]> {
        if self.next == self.end {
            return None;
        }
        self.next += 1;
        Some(arg(self.next - 1))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.next;
        (n, Some(n))
    }

    fn nth(&mut self, n: usize) -> Option<&'static [u8]> {
        self.next = self.next.saturating_add(n).min(self.end);
        self.next()
    }
}

impl DoubleEndedIterator for ArgsBytes {
    fn next_back(&mut self) -> Option<&'static [u8]> {
        if self.next == self.end {
            return None;
        }
        self.end -= 1;
        Some(arg(self.end))
    }
}

impl ExactSizeIterator for ArgsBytes {}

impl fmt::Debug for ArgsBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rest = ArgsBytes {
            next: self.next,
            end: self.end,
        };
        f.debug_list()
            .entries(rest.map(alloc::string::String::from_utf8_lossy))
            .finish()
    }
}

/// Iterator over the arguments as `&str` (`argv[0]` first); see [`args`].
/// This is also what `main(args: Args)` receives.
#[derive(Clone)]
pub struct Args {
    inner: ArgsBytes,
}

/// Returns the arguments, `argv[0]` (the image name) first. Like
/// `std::env::args`, iterating panics on an argument that is not valid
/// UTF-8; use [`args_bytes`] to accept any bytes.
pub fn args() -> Args {
    Args {
        inner: args_bytes(),
    }
}

fn to_str(arg: &'static [u8]) -> &'static str {
    match core::str::from_utf8(arg) {
        Ok(s) => s,
        Err(_) => panic!("an argument is not valid UTF-8 (use xos_guest::args_bytes)"),
    }
}

impl Iterator for Args {
    type Item = &'static str;

    fn next(&mut self) -> Option<&'static str> {
        self.inner.next().map(to_str)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }

    fn nth(&mut self, n: usize) -> Option<&'static str> {
        self.inner.nth(n).map(to_str)
    }
}

impl DoubleEndedIterator for Args {
    fn next_back(&mut self) -> Option<&'static str> {
        self.inner.next_back().map(to_str)
    }
}

impl ExactSizeIterator for Args {}

impl fmt::Debug for Args {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}
