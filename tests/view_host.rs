//! `vmm::view_host`: ICs as the views of one VM, calling each other
//! through the trampoline on the fallback path (memory-slot switching).

mod support;

use std::time::Duration;
use support::kvm_available;
use xos_vmm::vmm::view_host::ViewHost;
use xos_vmm::vmm::{GuestExit, GuestIo, Interrupter, Program, RunConfig};

fn program(image: &str) -> Program {
    Program::parse(xos_images::find(image).expect("built").bytes).expect("parses")
}

fn args(a: &[&str]) -> Vec<Vec<u8>> {
    a.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn config() -> RunConfig {
    RunConfig {
        timeout: Some(Duration::from_secs(20)),
        ..RunConfig::default()
    }
}

#[test]
fn a_view_calls_its_peer_view_through_the_trampoline() {
    if !kvm_available() {
        return;
    }
    let host = std::sync::Arc::new(ViewHost::new(4, 16 << 20, true).unwrap());
    let server = host
        .add(&program("chan-c"), &args(&["chan", "serve"]), &[])
        .unwrap();
    let client = host
        .add(
            &program("chan-c"),
            &args(&["chan", "call", "1000", "100"]),
            &[],
        )
        .unwrap();
    host.connect(client, server).unwrap();
    let h = std::sync::Arc::clone(&host);
    let served = std::thread::spawn(move || {
        let (io, out, err) = GuestIo::capture(Vec::new());
        let o = h.run(server, io, &config(), &Interrupter::new());
        (o, out.contents(), err.contents())
    });
    let (io, _out, err) = GuestIo::capture(Vec::new());
    let o = host
        .run(client, io, &config(), &Interrupter::new())
        .unwrap();
    assert_eq!(
        o.exit,
        GuestExit::Exited(0),
        "{}",
        String::from_utf8_lossy(&err.contents())
    );
    host.remove(client);
    let (s, _, serr) = served.join().unwrap();
    assert_eq!(
        s.unwrap().exit,
        GuestExit::Exited(0),
        "{}",
        String::from_utf8_lossy(&serr)
    );
}
