//! `panic`: panics on purpose, to test that a Rust panic ends the run as
//! aborted with the message ("panicked at src/bin/panic.rs:L:C:\n
//! deliberate panic: 42").
#![no_std]
#![no_main]

xos_guest::entry!(main);

fn main() {
    panic!("deliberate panic: {}", 42);
}
