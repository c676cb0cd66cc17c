//! `view call N SIZE | view serve`: one side of a pair of `ept-view` ICs,
//! with the Rust runtime's `xos_guest::view`, speaking `chan-c`'s protocol
//! so that Rust and C views call each other.
//!
//! - `view call N SIZE`: N calls with SIZE-byte requests (byte j of call i
//!   is `i + j`), each reply checked to be the request with every byte plus
//!   one; prints "calls: N" at the end.
//! - `view serve`: answers every call that way until the caller is gone,
//!   then exits 0.
//!
//! Exits 1 when a call fails or a reply is wrong, 2 on bad usage.
#![no_std]
#![no_main]

use xos_guest::view::{self, Role};
use xos_guest::{eprintln, println};

xos_guest::entry!(main);

/// The largest request (the message area's size).
const MAX: usize = 64 << 10;

extern "C" fn plus_one(len: u64, _cap: u64) -> u64 {
    // SAFETY: inside a handler the caller waits: the area is this side's.
    let area = unsafe { view::message_area() };
    let len = (len as usize).min(area.len());
    for b in &mut area[..len] {
        *b = b.wrapping_add(1);
    }
    len as u64
}

fn call(n: u64, size: usize) -> i32 {
    let mut request = alloc::vec![0u8; size];
    let mut reply = alloc::vec![0u8; MAX];
    for i in 0..n {
        for (j, b) in request.iter_mut().enumerate() {
            *b = (i as usize + j) as u8;
        }
        match view::call(&request, &mut reply) {
            Ok(got) if got == size => {}
            Ok(got) => {
                eprintln!("view: call {i} returned {got}, expected {size}");
                return 1;
            }
            Err(e) => {
                eprintln!("view: call {i} returned {e}");
                return 1;
            }
        }
        if let Some(j) = (0..size).find(|&j| reply[j] != (i as usize + j + 1) as u8) {
            eprintln!("view: call {i}: wrong byte {j}");
            return 1;
        }
    }
    println!("calls: {n}");
    0
}

extern crate alloc;

fn main(args: xos_guest::Args) -> i32 {
    let args: alloc::vec::Vec<&str> = args.collect();
    match args.as_slice() {
        [_, "serve"] if view::role() == Role::Callee => {
            if view::serve(plus_one) == xos_guest::abi::err::EPIPE {
                0
            } else {
                1
            }
        }
        [_, "call", n, size] if view::role() == Role::Caller => {
            match (n.parse::<u64>(), size.parse::<usize>()) {
                (Ok(n), Ok(size)) if size <= MAX => call(n, size),
                _ => {
                    eprintln!("usage: view call N SIZE (SIZE <= {MAX}) | view serve");
                    2
                }
            }
        }
        _ => {
            eprintln!("usage: view call N SIZE | view serve (in a connected ept-view pair)");
            2
        }
    }
}
