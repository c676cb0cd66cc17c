//! `xos-vmm serve` as a real server on loopback: status mapping, metrics,
//! limits, timeouts that do not disturb other requests, and a graceful
//! shutdown that finishes in-flight requests.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::{kvm_available, Server};

/// A parsed HTTP response.
struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("send head");
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read reply");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let headers = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn post(addr: SocketAddr, body: &str) -> Reply {
    request(addr, "POST", "/", body.as_bytes())
}

fn metric(addr: SocketAddr, name: &str) -> u64 {
    let r = request(addr, "GET", "/metrics", b"");
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).expect("utf-8");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn requests_run_in_fresh_instances_and_are_counted() {
    if !kvm_available() {
        return;
    }
    let server = Server::start(&["@ready-c"]);
    for i in 0..50 {
        let r = post(server.addr, &format!("request {i}"));
        assert_eq!(r.status, 200);
        assert!(r.headers.contains("x-xos-exit-code: 0"), "{}", r.headers);
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            format!("inits=1 restored=1 table=68933650521 input=REQUEST {i}\n")
        );
    }
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let addr = server.addr;
            std::thread::spawn(move || {
                for i in 0..20 {
                    let r = post(addr, &format!("t{t} r{i}"));
                    assert_eq!(r.status, 200);
                    assert!(String::from_utf8(r.body)
                        .unwrap()
                        .ends_with(&format!("input=T{t} R{i}\n")));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    assert_eq!(metric(server.addr, "xos_invocations_total"), 170);
    assert_eq!(metric(server.addr, "xos_errors_total"), 0);
    assert_eq!(
        metric(server.addr, "xos_invocation_duration_seconds_count"),
        170
    );
}

#[test]
fn no_request_sees_what_another_left_behind() {
    if !kvm_available() {
        return;
    }
    let server = Server::start(&["--instances", "1", "@secret-c"]);
    let r = post(server.addr, "putget CANARY");
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        "found in static heap stack xmm\n"
    );
    for i in 0..20 {
        assert_eq!(post(server.addr, &format!("put S{i}")).body, b"stored\n");
        assert_eq!(post(server.addr, &format!("get S{i}")).body, b"clean\n");
    }
}

#[test]
fn an_endless_request_times_out_while_others_are_served() {
    if !kvm_available() {
        return;
    }
    let server = Server::start(&["--timeout", "1s", "--instances", "2", "@secret-c"]);
    let addr = server.addr;
    let slow = std::thread::spawn(move || {
        let start = Instant::now();
        let r = post(addr, "spin X");
        (r, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..10 {
        let start = Instant::now();
        let r = post(addr, &format!("get T{i}"));
        assert_eq!(r.status, 200);
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
    }
    let (r, took) = slow.join().expect("slow client");
    assert_eq!(r.status, 504, "{}", r.headers);
    assert!(r
        .headers
        .contains("x-xos-error: the function ran past its time limit"));
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(metric(addr, "xos_timeouts_total"), 1);
}

#[test]
fn exit_statuses_and_limits_map_to_http_statuses() {
    if !kvm_available() {
        return;
    }
    // A non-zero exit (no ready point here: a fresh virtine per request).
    let server = Server::start(&["@faults-c", "--", "exit", "7"]);
    let r = post(server.addr, "");
    assert_eq!(r.status, 500);
    assert!(r.headers.contains("x-xos-exit-code: 7"), "{}", r.headers);
    // A fault.
    let server = Server::start(&["@faults-c", "--", "null"]);
    let r = post(server.addr, "");
    assert_eq!(r.status, 502);
    assert!(
        r.headers.contains("null pointer dereference"),
        "{}",
        r.headers
    );
    // Output beyond --max-output.
    let server = Server::start(&["--max-output", "64K", "@faults-c", "--", "bigout"]);
    let r = post(server.addr, "");
    assert_eq!(r.status, 502);
    assert!(
        r.headers.contains("output exceeded 65536 bytes"),
        "{}",
        r.headers
    );
    // Input beyond --max-input is refused before anything runs.
    let server = Server::start(&["--max-input", "1K", "@ready-c"]);
    let r = request(server.addr, "POST", "/", &vec![b'x'; 4096]);
    assert_eq!(r.status, 413);
    assert_eq!(metric(server.addr, "xos_invocations_total"), 0);
    assert_eq!(metric(server.addr, "xos_refused_total"), 1);
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    if !kvm_available() {
        return;
    }
    let mut server = Server::start(&["--timeout", "700ms", "@secret-c"]);
    let addr = server.addr;
    let in_flight = std::thread::spawn(move || post(addr, "spin X"));
    std::thread::sleep(Duration::from_millis(200));
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    // The request that was running when SIGTERM came got its answer.
    assert_eq!(in_flight.join().expect("client").status, 504);
    assert!(
        TcpStream::connect(addr).is_err(),
        "the server still accepts"
    );
}
