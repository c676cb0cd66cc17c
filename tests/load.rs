//! `xos-vmm serve` under a real load generator (wrk, from Debian) on
//! loopback for a fixed time: every request must succeed.

mod support;

use std::process::Command;

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
    let server = support::Server::start(&["--instances", "2", "@ready-c"]);
    let addr = server.addr;
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
    drop(server);
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
