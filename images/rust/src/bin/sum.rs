//! `sum`: reads whitespace-separated signed 64-bit integers from stdin until
//! the end of input and prints their sum and a newline. A token that is not
//! an integer (or does not fit in 64 bits), or a sum that overflows, is
//! reported on stderr and the exit code is 1. The messages are the C
//! image's: "sum: not an integer: 'TOKEN'" (tokens longer than 64 bytes cut
//! to 64 and followed by "..."), "sum: overflow adding TOKEN".
#![no_std]
#![no_main]

use xos_guest::{eprintln, io, println};

xos_guest::entry!(main);

/// Longest token kept; longer ones cannot be 64-bit integers anyway.
const TOKEN_MAX: usize = 64;

/// C `isspace` in the C locale (includes \v, unlike `is_ascii_whitespace`).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// The current token: its first `TOKEN_MAX` bytes and its full length.
struct Token {
    bytes: [u8; TOKEN_MAX],
    len: usize,
}

impl Token {
    fn push(&mut self, data: &[u8]) {
        if self.len < TOKEN_MAX {
            let n = data.len().min(TOKEN_MAX - self.len);
            self.bytes[self.len..self.len + n].copy_from_slice(&data[..n]);
        }
        self.len += data.len();
    }

    fn kept(&self) -> &[u8] {
        &self.bytes[..self.len.min(TOKEN_MAX)]
    }
}

/// Why the input is rejected.
enum Failure {
    NotInteger,
    Overflow,
    Read(io::Error),
}

/// Adds the token to `sum` and empties it (nothing if it is empty).
fn end_token(sum: &mut i64, token: &mut Token) -> Result<(), Failure> {
    if token.len == 0 {
        return Ok(());
    }
    if token.len > TOKEN_MAX {
        return Err(Failure::NotInteger);
    }
    // `i64::from_str` accepts what C `strtoll(s, &end, 10)` accepts for a
    // whole token without white space: an optional sign and digits, in range.
    let value: i64 = core::str::from_utf8(token.kept())
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Failure::NotInteger)?;
    *sum = sum.checked_add(value).ok_or(Failure::Overflow)?;
    token.len = 0;
    Ok(())
}

fn run(sum: &mut i64, token: &mut Token) -> Result<(), Failure> {
    let mut stdin = io::stdin();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stdin.read(&mut chunk).map_err(Failure::Read)?;
        if n == 0 {
            return end_token(sum, token);
        }
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            match rest.iter().position(|&b| is_space(b)) {
                Some(i) => {
                    token.push(&rest[..i]);
                    end_token(sum, token)?;
                    rest = &rest[i + 1..];
                }
                None => {
                    token.push(rest);
                    rest = &[];
                }
            }
        }
    }
}

fn main() -> i32 {
    let mut sum = 0i64;
    let mut token = Token {
        bytes: [0; TOKEN_MAX],
        len: 0,
    };
    let failure = match run(&mut sum, &mut token) {
        Ok(()) => {
            println!("{sum}");
            return 0;
        }
        Err(failure) => failure,
    };
    // The token is written as bytes, like C's "%s", whatever its encoding.
    let mut err = io::stderr();
    let _ = match failure {
        Failure::NotInteger => err
            .write_all(b"sum: not an integer: '")
            .and_then(|_| err.write_all(token.kept()))
            .and_then(|_| {
                err.write_all(if token.len > TOKEN_MAX {
                    b"...'\n"
                } else {
                    b"'\n"
                })
            }),
        Failure::Overflow => err
            .write_all(b"sum: overflow adding ")
            .and_then(|_| err.write_all(token.kept()))
            .and_then(|_| err.write_all(b"\n")),
        Failure::Read(e) => {
            eprintln!("sum: read error: {e}");
            Ok(())
        }
    };
    1
}
