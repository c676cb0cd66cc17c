//! The buffered output channel behind `print!`, `Stdout` and `Stderr`.
//!
//! Output goes into the output buffer in guest memory as records
//! (`{fd: u32, len: u32}` + bytes, each starting at a multiple of 8) and is
//! handed to the monitor at the next hypercall, typically the final `EXIT`:
//! a run that prints and exits costs one VM exit instead of one per write.
//! Consecutive writes to the same fd extend the last record instead of
//! adding one (a `println!` makes several small writes), so the buffer holds
//! payload, not headers. Interleaving of stdout and stderr is kept because
//! the monitor writes the records in order.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use xos_abi::{align_up, err, nr, OutputRecord, OUTPUT_RECORD_SIZE};

use crate::boot::{get, set};
use crate::hypercall::hypercall;

/// Offset of the header of the record this runtime appended last, if it is
/// still in the buffer (`u64::MAX` = none). Only trusted when it still ends
/// exactly at `output.used`: the monitor resets `used` to 0 whenever it
/// takes the records. (The guest is single-threaded; atomics are used only
/// to avoid `static mut`, relaxed loads and stores are plain moves.)
static LAST_RECORD: AtomicU64 = AtomicU64::new(u64::MAX);

/// What to do with `len` bytes for `fd`, given the buffer state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Append the bytes to the record whose header is at this offset.
    Extend(u64),
    /// Start a new record at this offset.
    Append(u64),
    /// Flush the buffer first, then plan again.
    Flush,
    /// Too big for the buffer: use the `WRITE` hypercall.
    Direct,
}

/// The last record, if it can be extended: `(header offset, fd, len)`.
type Last = Option<(u64, u32, u32)>;

/// Decides how to store `len` bytes for `fd`. Pure, so it is unit-tested.
fn plan(used: u64, cap: u64, last: Last, fd: u32, len: u64) -> Plan {
    if len > u32::MAX as u64 || cap < OUTPUT_RECORD_SIZE || len > cap - OUTPUT_RECORD_SIZE {
        return Plan::Direct;
    }
    if let Some((at, last_fd, last_len)) = last {
        if last_fd == fd
            && at + OUTPUT_RECORD_SIZE + last_len as u64 == used
            && used + len <= cap
            && last_len as u64 + len <= u32::MAX as u64
        {
            return Plan::Extend(at);
        }
    }
    let at = align_up(used, OUTPUT_RECORD_SIZE);
    if at <= cap && cap - at >= OUTPUT_RECORD_SIZE + len {
        Plan::Append(at)
    } else {
        Plan::Flush
    }
}

/// Reads the last record's header if it may still be in the buffer.
fn last_record(buf: u64, used: u64) -> Last {
    let at = LAST_RECORD.load(Relaxed);
    if at == u64::MAX || at.checked_add(OUTPUT_RECORD_SIZE)? > used {
        return None;
    }
    // SAFETY: [at, at + 8) is inside [0, used), which holds our records.
    let hdr = unsafe { ((buf + at) as *const OutputRecord).read_volatile() };
    Some((at, hdr.fd, hdr.len))
}

/// Writes `data` to `fd` (1 = stdout, 2 = stderr) through the output
/// buffer. Errors are negative ABI codes.
pub(crate) fn write(fd: u32, data: &[u8]) -> Result<(), i64> {
    if data.is_empty() {
        return Ok(());
    }
    let buf = get!(output.buf);
    let cap = get!(output.cap);
    let len = data.len() as u64;
    loop {
        let used = get!(output.used);
        match plan(used, cap, last_record(buf, used), fd, len) {
            Plan::Extend(at) => {
                // SAFETY: plan checked used + len <= cap; the header at `at`
                // is ours (it ends at `used`).
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        (buf + used) as *mut u8,
                        data.len(),
                    );
                    let hdr = (buf + at) as *mut OutputRecord;
                    let old = hdr.read_volatile();
                    hdr.write_volatile(OutputRecord {
                        fd,
                        len: old.len + len as u32,
                    });
                }
                set!(output.used = used + len);
                return Ok(());
            }
            Plan::Append(at) => {
                // SAFETY: plan checked at + 8 + len <= cap.
                unsafe {
                    ((buf + at) as *mut OutputRecord).write_volatile(OutputRecord {
                        fd,
                        len: len as u32,
                    });
                    core::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        (buf + at + OUTPUT_RECORD_SIZE) as *mut u8,
                        data.len(),
                    );
                }
                LAST_RECORD.store(at, Relaxed);
                set!(output.used = at + OUTPUT_RECORD_SIZE + len);
                return Ok(());
            }
            Plan::Flush => {
                flush()?;
                if get!(output.used) != 0 {
                    // The monitor did not take the records: do not loop.
                    return Err(err::EIO);
                }
            }
            Plan::Direct => return write_direct(fd, data),
        }
    }
}

/// `WRITE` hypercalls for data that does not fit the buffer; the monitor
/// writes pending records first, so order is kept.
fn write_direct(fd: u32, mut data: &[u8]) -> Result<(), i64> {
    while !data.is_empty() {
        // SAFETY: the monitor only reads `data`.
        let ret = unsafe {
            hypercall(
                nr::WRITE,
                &[fd as u64, data.as_ptr() as u64, data.len() as u64],
            )
        };
        if ret < 0 {
            return Err(ret);
        }
        if ret == 0 {
            return Err(err::EIO);
        }
        data = &data[(ret as u64).min(data.len() as u64) as usize..];
    }
    Ok(())
}

/// Hands pending records to the monitor now (a `FLUSH` hypercall); does
/// nothing if none are pending.
pub(crate) fn flush() -> Result<(), i64> {
    if get!(output.used) == 0 {
        return Ok(());
    }
    // SAFETY: FLUSH takes no pointer.
    let ret = unsafe { hypercall(nr::FLUSH, &[]) };
    if ret < 0 {
        Err(ret)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_record_goes_at_zero() {
        assert_eq!(plan(0, 64, None, 1, 5), Plan::Append(0));
    }

    #[test]
    fn new_records_start_8_aligned() {
        // A record of 5 bytes at 0 ends at 13; the next starts at 16.
        assert_eq!(plan(13, 64, None, 2, 5), Plan::Append(16));
        assert_eq!(plan(13, 64, Some((0, 1, 5)), 2, 5), Plan::Append(16));
    }

    #[test]
    fn same_fd_extends_the_last_record() {
        assert_eq!(plan(13, 64, Some((0, 1, 5)), 1, 3), Plan::Extend(0));
        // ...but not when it no longer ends at `used` (the monitor took it).
        assert_eq!(plan(0, 64, Some((0, 1, 5)), 1, 3), Plan::Append(0));
        // ...and not past the capacity.
        assert_eq!(plan(60, 64, Some((0, 1, 52)), 1, 5), Plan::Flush);
    }

    #[test]
    fn full_buffer_flushes_first() {
        assert_eq!(plan(50, 64, None, 1, 8), Plan::Flush);
        // Exactly fits: 56 + 8 + 0.. = 64.
        assert_eq!(plan(50, 64, None, 1, 0), Plan::Append(56));
        assert_eq!(plan(49, 64, None, 1, 7), Plan::Flush);
        assert_eq!(plan(40, 64, None, 1, 16), Plan::Append(40));
    }

    #[test]
    fn data_larger_than_the_buffer_goes_direct() {
        assert_eq!(plan(0, 64, None, 1, 57), Plan::Direct);
        assert_eq!(plan(0, 64, None, 1, 56), Plan::Append(0));
        assert_eq!(plan(0, 4, None, 1, 1), Plan::Direct);
        assert_eq!(plan(0, 0, None, 1, 1), Plan::Direct);
    }

    #[test]
    fn used_past_capacity_never_overflows() {
        assert_eq!(plan(70, 64, None, 1, 1), Plan::Flush);
    }
}
