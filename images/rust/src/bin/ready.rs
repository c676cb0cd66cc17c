//! `ready`: the Rust twin of `images/c/ready.c`, for snapshots. It builds a
//! table (its "initialisation"), calls `xos_guest::ready()`, then reads
//! stdin and prints
//! `inits=<N> restored=<0|1> table=<checksum> input=<INPUT UPPERCASED>`.
#![no_std]
#![no_main]

extern crate alloc;

use xos_guest::{io, println};

xos_guest::entry!(main);

static mut INITS: u32 = 0;

fn main() -> i32 {
    // SAFETY: the guest is single-threaded; nothing else touches INITS.
    let inits = unsafe {
        INITS += 1;
        INITS
    };
    let mut x: u64 = 88172645463325252;
    let table: alloc::vec::Vec<u64> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect();
    let restored = xos_guest::ready();
    let sum: u64 = table.iter().map(|v| v >> 40).sum();
    let mut input = alloc::vec::Vec::new();
    if io::stdin().read_to_end(&mut input).is_err() {
        return 2;
    }
    let upper = alloc::string::String::from_utf8_lossy(&input).to_uppercase();
    println!(
        "inits={inits} restored={} table={sum} input={upper}",
        u8::from(restored)
    );
    0
}
