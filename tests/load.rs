//! `xos-vmm serve` under a real load generator (wrk, from Debian) on
//! loopback for a fixed time: every request must succeed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn serve_survives_wrk_with_zero_failed_requests() {
    if !xos_vmm::vmm::kvm::available_for_tests() {
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        if std::env::var("XOS_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("wrk is not installed (scripts/test installs Debian's wrk)");
        }
        eprintln!("\n!!! SKIPPING THE LOAD TEST: wrk is not installed\n");
        return;
    }
    let mut server = Command::new(env!("CARGO_BIN_EXE_xos-vmm"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--instances",
            "2",
            "@ready-c",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xos-vmm serve");
    let mut lines = BufReader::new(server.stderr.take().expect("stderr")).lines();
    let line = lines.next().expect("server line").expect("readable");
    std::thread::spawn(move || for _ in lines {});
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("address")
        .to_owned();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.body = \"load test body\"\n",
    )
    .expect("lua script");
    let out = Command::new("wrk")
        .args(["-t2", "-c16", "-d5s", "-s"])
        .arg(&script)
        .arg(format!("http://{addr}/"))
        .output()
        .expect("wrk");
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(out.status.success(), "wrk failed: {text}");
    assert!(!text.contains("Non-2xx"), "failed requests:\n{text}");
    assert!(!text.contains("Socket errors"), "socket errors:\n{text}");
    let requests: u64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .expect("request count");
    assert!(requests > 1000, "only {requests} requests in 5 s");
}
