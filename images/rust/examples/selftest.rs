//! `selftest`: exercises the xos-guest API so that a monitor (or a test
//! harness) can check it end to end. Prints one line per check to stdout
//! and a line to stderr in between (to check ordering), echoes stdin line
//! by line with line numbers, and exits with the number of arguments.
//!
//! Behaviour by argument (argv[1]):
//! - `big`: writes 100000 bytes of 'x' then a newline in one write (larger
//!   than the output buffer: the WRITE path), then "done".
//! - `many`: prints 20000 numbered lines (fills the buffer: FLUSH path).
//! - `host NAME INPUT`: calls host function NAME with INPUT, prints the
//!   result or the error.
//! - `oom`: allocates until the heap runs out (must abort, not hang).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use xos_guest::{env, eprintln, io, print, println};

xos_guest::entry!(main);

fn main(args: xos_guest::Args) -> i32 {
    let argc = args.len();
    let all: Vec<&str> = args.collect();
    println!("argc={argc} argv={all:?}");
    println!(
        "HOME={:?} XOS_TEST={:?}",
        env::var("HOME"),
        env::var("XOS_TEST")
    );
    let n = env::vars().count();
    println!("env entries: {n}");
    eprintln!("to stderr");
    let v: Vec<u64> = (0..1000).collect();
    let s: u64 = v.iter().sum();
    let text = alloc::format!("{s}-{}", String::from("abc").repeat(3));
    println!("alloc: {text}");
    // Slice comparisons call bcmp/memcmp; CStr::from_ptr calls strlen.
    let a = alloc::format!("{}{}", text, all.len()).into_bytes();
    let b = alloc::format!("{}{}", text, argc).into_bytes();
    let c = alloc::format!("{}{}", text, argc + 1).into_bytes();
    let mut nul_terminated = String::from(all[0]).into_bytes();
    nul_terminated.push(0);
    // SAFETY: `nul_terminated` ends with the NUL pushed just above and
    // outlives `cstr`.
    let cstr = unsafe { core::ffi::CStr::from_ptr(nul_terminated.as_ptr().cast()) };
    println!(
        "cmp: {} {:?} {:?} {}",
        a == b,
        a.cmp(&c),
        c.as_slice().cmp(&b[..b.len() - 1]),
        cstr.to_bytes().len()
    );
    match all.get(1).copied() {
        Some("big") => {
            let big = alloc::vec![b'x'; 100_000];
            let _ = io::stdout().write_all(&big);
            println!();
            println!("done");
        }
        Some("many") => {
            for i in 0..20_000 {
                println!("line {i}");
            }
        }
        Some("host") => {
            let mut out = [0u8; 64];
            match xos_guest::host_call(
                all.get(2).copied().unwrap_or(""),
                all.get(3).unwrap_or(&"").as_bytes(),
                &mut out,
            ) {
                Ok(n) => println!("host: {:?}", core::str::from_utf8(&out[..n])),
                Err(e) => println!("host error: {e} ({})", e.code()),
            }
        }
        Some("oom") => {
            let mut keep: Vec<Vec<u8>> = Vec::new();
            loop {
                keep.push(alloc::vec![1u8; 1 << 20]);
            }
        }
        _ => {}
    }
    let _ = io::flush();
    let mut stdin = io::stdin();
    let mut line = String::new();
    let mut no = 0;
    while stdin.read_line(&mut line).unwrap_or(0) > 0 {
        no += 1;
        print!("{no}: {line}");
        line.clear();
    }
    println!("eof after {no} lines");
    argc as i32
}
