mod support;
use support::*;
use vmm::{GuestExit, GuestIo, Interrupter, Program, RunConfig};

#[test]
fn exit_hypercall_ends_the_run_with_its_code() {
    if !kvm_available() {
        return;
    }
    // args[0] = 42 at BootInfo.hypercall.args[0] (0x20000 + 144), then EXIT.
    let mut code = store(0x20000 + 144, 42);
    code.extend(hypercall(1));
    let program = Program::parse(code_image(&code)).unwrap();
    let (io, _out, _err) = GuestIo::capture(Vec::new());
    let t = std::time::Instant::now();
    let outcome =
        vmm::run_program(&program, &RunConfig::default(), io, &Interrupter::new()).unwrap();
    eprintln!(
        "took {:?} guest {:?} stats {:?}",
        t.elapsed(),
        outcome.guest_time,
        outcome.stats
    );
    assert_eq!(outcome.exit, GuestExit::Exited(42), "{}", outcome.exit);
}
