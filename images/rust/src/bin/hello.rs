//! `hello`: prints "hello from a virtine:" and the arguments after argv[0],
//! each preceded by one space, then a newline (same output as the C image):
//! `hello a b c` prints "hello from a virtine: a b c".
#![no_std]
#![no_main]

use xos_guest::io;

xos_guest::entry!(main);

fn main() -> i32 {
    let mut out = io::stdout();
    // Arguments are written as bytes, so non-UTF-8 ones come out unchanged.
    // All writes go into one output record, delivered with the exit.
    let _ = out.write_all(b"hello from a virtine:");
    for arg in xos_guest::args_bytes().skip(1) {
        let _ = out.write_all(b" ");
        let _ = out.write_all(arg);
    }
    let _ = out.write_all(b"\n");
    0
}
