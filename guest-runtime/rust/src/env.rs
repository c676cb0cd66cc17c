//! The environment (`KEY=VALUE` strings), read in place from the `envp`
//! array the monitor put in guest memory: no copy, no allocation. Only what
//! the caller of the monitor chose to pass is there. Entries without `=`
//! are skipped, as `std::env::vars` does.

use crate::boot::get;

/// Environment entry `i`, or None past the end of `envp`.
fn entry(i: usize) -> Option<&'static [u8]> {
    let envp = get!(envp) as *const *const u8;
    if envp.is_null() {
        return None;
    }
    // SAFETY: the monitor provides a 0-terminated array of pointers to
    // NUL-terminated strings that stay untouched for the whole run, and
    // callers stop at the first null pointer.
    unsafe {
        let ptr = *envp.add(i);
        if ptr.is_null() {
            return None;
        }
        Some(core::slice::from_raw_parts(ptr, crate::mem::strlen(ptr)))
    }
}

fn split(entry: &'static [u8]) -> Option<(&'static [u8], &'static [u8])> {
    let eq = entry.iter().position(|&b| b == b'=')?;
    Some((&entry[..eq], &entry[eq + 1..]))
}

/// Iterator over `(name, value)` pairs as bytes; see [`vars_bytes`].
#[derive(Clone, Debug)]
pub struct VarsBytes {
    next: usize,
}

/// Returns the environment as `(name, value)` byte pairs.
pub fn vars_bytes() -> VarsBytes {
    VarsBytes { next: 0 }
}

impl Iterator for VarsBytes {
    type Item = (&'static [u8], &'static [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let e = entry(self.next)?;
            self.next += 1;
            if let Some(pair) = split(e) {
                return Some(pair);
            }
        }
    }
}

/// Iterator over `(name, value)` pairs as `&str`; see [`vars`].
#[derive(Clone, Debug)]
pub struct Vars {
    inner: VarsBytes,
}

/// Returns the environment as `(name, value)` pairs. Like
/// `std::env::vars`, iterating panics on an entry that is not valid UTF-8;
/// use [`vars_bytes`] to accept any bytes.
pub fn vars() -> Vars {
    Vars {
        inner: vars_bytes(),
    }
}

impl Iterator for Vars {
    type Item = (&'static str, &'static str);

    fn next(&mut self) -> Option<Self::Item> {
        let (k, v) = self.inner.next()?;
        match (core::str::from_utf8(k), core::str::from_utf8(v)) {
            (Ok(k), Ok(v)) => Some((k, v)),
            _ => panic!("an environment entry is not valid UTF-8 (use xos_guest::env::vars_bytes)"),
        }
    }
}

/// The value of environment variable `name` as bytes, if set.
pub fn var_bytes(name: &[u8]) -> Option<&'static [u8]> {
    vars_bytes().find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// The value of environment variable `name`, if it is set and valid UTF-8.
pub fn var(name: &str) -> Option<&'static str> {
    var_bytes(name.as_bytes()).and_then(|v| core::str::from_utf8(v).ok())
}
