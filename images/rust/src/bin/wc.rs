//! `wc`: counts the lines, words and bytes of stdin and prints them as GNU
//! `wc` does for a pipe in the C locale:
//! `format!("{:7} {:7} {:7}\n", lines, words, bytes)`, e.g.
//! "      2       3       6\n" for "a b\nc\n".
//!
//! Same rules as `images/c/wc.c`: a word is a maximal run of bytes that are
//! not white space and contains at least one printable ASCII character;
//! other bytes neither start nor end a word. Lines are `\n` bytes.
#![no_std]
#![no_main]

use xos_guest::{eprintln, io, println};

xos_guest::entry!(main);

#[derive(Default)]
struct Counts {
    lines: u64,
    words: u64,
    bytes: u64,
    in_word: bool,
}

impl Counts {
    fn add(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        for &b in data {
            match b {
                b'\n' => {
                    self.lines += 1;
                    self.in_word = false;
                }
                b' ' | b'\t' | b'\x0b' | b'\x0c' | b'\r' => self.in_word = false,
                0x21..=0x7e if !self.in_word => {
                    self.in_word = true;
                    self.words += 1;
                }
                _ => {}
            }
        }
    }
}

fn main() -> i32 {
    let mut stdin = io::stdin();
    let mut counts = Counts::default();
    let mut buf = [0u8; 4096];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => counts.add(&buf[..n]),
            Err(e) => {
                eprintln!("wc: read error: {e}");
                return 1;
            }
        }
    }
    println!("{:7} {:7} {:7}", counts.lines, counts.words, counts.bytes);
    0
}
