//! The C memory functions the compiler emits calls to (`memcpy`, `memmove`,
//! `memset`, `memcmp`, `bcmp`, and `strlen`, which `core::ffi::CStr` calls).
//!
//! On the x86_64-unknown-linux-gnu target they normally come from libc, and
//! compiler_builtins does not export them, so a libc-less guest must define
//! them. Their bodies must not be turned back into calls to themselves by
//! LLVM's idiom recognition (a byte-copy loop becomes `memcpy`): copies,
//! fills and `strlen` are single string instructions in inline asm (opaque
//! to LLVM; `rep movsb`/`rep stosb` are fast on CPUs with ERMS), and the
//! comparisons are word loops, which LLVM does not turn into `memcmp`
//! (checked with objdump when the images are built).
//!
//! The direction flag is clear at every call (System V ABI), as the
//! forward string instructions need; the backward copy in `memmove` sets it
//! and clears it again.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dest` (non-overlapping).
///
/// # Safety
/// As C `memcpy`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid.
    unsafe {
        asm!("rep movsb",
             inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// Copies `n` bytes from `src` to `dest`; the ranges may overlap.
///
/// # Safety
/// As C `memmove`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // dest is below src, or past the end of src: a forward copy never
        // overwrites bytes it has yet to read.
        // SAFETY: the caller guarantees both ranges are valid.
        unsafe {
            asm!("rep movsb",
                 inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
                 options(nostack, preserves_flags));
        }
    } else if n != 0 {
        // dest overlaps the end of src: copy backwards, from the last byte.
        // SAFETY: as above; DF is restored before returning.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _,
                 inout("rdi") dest.add(n - 1) => _,
                 inout("rsi") src.add(n - 1) => _,
                 options(nostack));
        }
    }
    dest
}

/// Sets `n` bytes at `dest` to `c as u8`.
///
/// # Safety
/// As C `memset`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid.
    unsafe {
        asm!("rep stosb",
             inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// Loads 8 bytes at `p` in memory order as a big-endian number, so that
/// comparing two such words compares the bytes lexicographically.
#[inline(always)]
unsafe fn load_be(p: *const u8) -> u64 {
    // SAFETY: the caller guarantees 8 readable bytes.
    u64::from_be(unsafe { p.cast::<u64>().read_unaligned() })
}

/// Compares `n` bytes: < 0, 0 or > 0 as the first differing byte of `a` is
/// smaller or larger (as unsigned) than that of `b`.
///
/// # Safety
/// As C `memcmp`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    // SAFETY: every access is below `n`, which the caller guarantees.
    unsafe {
        while i + 8 <= n {
            let (x, y) = (load_be(a.add(i)), load_be(b.add(i)));
            if x != y {
                return if x < y { -1 } else { 1 };
            }
            i += 8;
        }
        while i < n {
            let (x, y) = (*a.add(i), *b.add(i));
            if x != y {
                return x as i32 - y as i32;
            }
            i += 1;
        }
    }
    0
}

/// Returns 0 if the `n` bytes at `a` and `b` are equal, non-zero otherwise.
///
/// # Safety
/// As C `bcmp`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    // SAFETY: every access is below `n`, which the caller guarantees.
    unsafe {
        while i + 8 <= n {
            if a.add(i).cast::<u64>().read_unaligned() != b.add(i).cast::<u64>().read_unaligned() {
                return 1;
            }
            i += 8;
        }
        while i < n {
            if *a.add(i) != *b.add(i) {
                return 1;
            }
            i += 1;
        }
    }
    0
}

/// Length of the NUL-terminated string at `s`.
///
/// # Safety
/// As C `strlen`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let rest: usize;
    // `repne scasb` counts RCX down from usize::MAX past the NUL: it ends at
    // !(len + 1).
    // SAFETY: the caller guarantees a NUL-terminated string.
    unsafe {
        asm!("repne scasb",
             inout("rcx") usize::MAX => rest, inout("rdi") s => _, in("al") 0u8,
             options(nostack, readonly));
    }
    !rest - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_fills() {
        let mut a = [0u8; 40];
        let b: [u8; 40] = core::array::from_fn(|i| i as u8);
        unsafe {
            memcpy(a.as_mut_ptr(), b.as_ptr(), 40);
            assert_eq!(a, b);
            memset(a.as_mut_ptr().add(3), 0x1ff, 5);
            assert_eq!(&a[2..9], &[2, 0xff, 0xff, 0xff, 0xff, 0xff, 8]);
        }
    }

    #[test]
    fn memmove_overlapping_both_ways() {
        let mut a: [u8; 32] = core::array::from_fn(|i| i as u8);
        unsafe { memmove(a.as_mut_ptr().add(5), a.as_ptr(), 20) };
        let want: [u8; 32] = core::array::from_fn(|i| {
            if (5..25).contains(&i) {
                (i - 5) as u8
            } else {
                i as u8
            }
        });
        assert_eq!(a, want);
        let mut a: [u8; 32] = core::array::from_fn(|i| i as u8);
        unsafe { memmove(a.as_mut_ptr(), a.as_ptr().add(7), 20) };
        let want: [u8; 32] = core::array::from_fn(|i| if i < 20 { (i + 7) as u8 } else { i as u8 });
        assert_eq!(a, want);
        unsafe { memmove(a.as_mut_ptr().add(1), a.as_ptr(), 0) };
        assert_eq!(a, want);
    }

    #[test]
    fn compares() {
        let a = *b"abcdefghijklmnopq";
        let mut b = a;
        unsafe {
            assert_eq!(memcmp(a.as_ptr(), b.as_ptr(), 17), 0);
            assert_eq!(bcmp(a.as_ptr(), b.as_ptr(), 17), 0);
            for i in 0..17 {
                b = a;
                b[i] = 0xf0;
                assert!(memcmp(a.as_ptr(), b.as_ptr(), 17) < 0, "at {i}");
                assert!(memcmp(b.as_ptr(), a.as_ptr(), 17) > 0, "at {i}");
                assert_ne!(bcmp(a.as_ptr(), b.as_ptr(), 17), 0);
                assert_eq!(memcmp(a.as_ptr(), b.as_ptr(), i), 0);
            }
        }
    }

    #[test]
    fn strlen_counts_to_nul() {
        unsafe {
            assert_eq!(strlen(c"".as_ptr().cast()), 0);
            assert_eq!(strlen(b"hello\0world".as_ptr()), 5);
        }
    }
}
