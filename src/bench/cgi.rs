//! The `baseline.cgi_rps` server: HTTP where every request starts a
//! process, like CGI. Each request body goes to a fresh process of a static
//! native program as stdin; its stdout is the response (200 if it exited 0,
//! 500 otherwise). Keep-alive connections are served like `xos-vmm serve`
//! serves them, so the comparison is about isolation cost, not HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Serves `program` on `listener` until the process is killed.
pub fn serve(listener: TcpListener, program: &Path) -> std::io::Result<()> {
    for stream in listener.incoming() {
        let stream = stream?;
        let program = program.to_owned();
        std::thread::spawn(move || {
            let _ = connection(stream, &program);
        });
    }
    Ok(())
}

fn connection(stream: TcpStream, program: &PathBuf) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower == "connection: close" {
                close = true;
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let mut child = Command::new(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&body);
        }
        let output = child.wait_with_output()?;
        let status = if output.status.success() {
            "200 OK"
        } else {
            "500 Internal Server Error"
        };
        // One write per response: a separate header write would stall
        // each request ~40 ms on Nagle's algorithm and delayed ACKs.
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
            output.stdout.len()
        )
        .into_bytes();
        response.extend_from_slice(&output.stdout);
        writer.write_all(&response)?;
        if close {
            return Ok(());
        }
    }
}
