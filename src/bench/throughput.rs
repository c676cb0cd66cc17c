//! Throughput under a real load generator: `serve.rps` (`xos-vmm serve`
//! with a warm pool of the trivial `noop-c`) against `baseline.cgi_rps`
//! (a process per request running a static native build of the same
//! trivial function), both driven by `wrk` with the same threads,
//! connections and duration, on loopback.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long each server is loaded.
pub const DURATION: Duration = Duration::from_secs(5);
/// wrk's threads and connections (the same for both servers).
pub const WRK_THREADS: u32 = 2;
/// Concurrent connections.
pub const WRK_CONNECTIONS: u32 = 8;

/// A server child process, killed when dropped.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `xos-vmm ARGS`, which must print "... http://ADDR ..." on its
/// first stderr line once it listens.
fn start(args: &[&str]) -> anyhow::Result<ServerProcess> {
    let exe = std::env::current_exe().context("cannot find the xos-vmm executable")?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the server")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let line = lines
        .next()
        .context("the server ended before listening")?
        .context("cannot read the server's output")?;
    std::thread::spawn(move || for _ in lines {});
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .with_context(|| format!("no address in the server's first line: {line}"))?
        .parse()
        .with_context(|| format!("bad address in: {line}"))?;
    Ok(ServerProcess { child, addr })
}

/// Runs wrk against `addr` with POST requests with an empty body; returns
/// requests per second and the number of requests. Fails on any non-2xx
/// response or socket error.
fn wrk(addr: SocketAddr) -> anyhow::Result<(f64, u64)> {
    let script = std::env::temp_dir().join(format!("xos-wrk-{}.lua", std::process::id()));
    std::fs::write(&script, "wrk.method = \"POST\"\nwrk.body = \"\"\n")
        .context("cannot write the wrk script")?;
    let output = Command::new("wrk")
        .args([
            &format!("-t{WRK_THREADS}"),
            &format!("-c{WRK_CONNECTIONS}"),
            &format!("-d{}s", DURATION.as_secs()),
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://{addr}/"))
        .output();
    let _ = std::fs::remove_file(&script);
    let output = output.context("cannot run wrk (install Debian's wrk package)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("requests failed under load:\n{text}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("no request count in wrk's output:\n{text}"))?;
    Ok((rps, requests))
}

/// `serve.rps`: `xos-vmm serve @noop-c` with a warm pool of 2 instances.
pub fn serve_rps() -> anyhow::Result<(f64, u64)> {
    let server = start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--instances",
        "2",
        &format!("@{}", super::measure::NOOP_IMAGE),
    ])?;
    wrk(server.addr)
}

/// `baseline.cgi_rps`: a process per request running the static native
/// trivial program.
pub fn cgi_rps() -> anyhow::Result<(f64, u64)> {
    let server = start(&[
        "cgi-baseline",
        "--listen",
        "127.0.0.1:0",
        super::measure::native_trivial_path(),
    ])?;
    wrk(server.addr)
}

/// True when wrk can be run.
pub fn wrk_available() -> bool {
    Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}
