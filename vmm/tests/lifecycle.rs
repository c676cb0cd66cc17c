//! Many runs leave nothing behind: VMs are torn down by the reaper thread,
//! executor threads stay few, file descriptors return to where they were.
mod support;
use std::time::{Duration, Instant};
use support::*;
use vmm::{GuestExit, GuestIo, Interrupter, Program, RunConfig};

fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn back_to_back_runs_are_reaped_and_reuse_few_threads() {
    if !kvm_available() {
        return;
    }
    let mut code = store(0x20000 + 144, 0);
    code.extend(hypercall(1));
    let program = Program::parse(code_image(&code)).expect("image");
    let run = || {
        let (io, _, _) = GuestIo::capture(Vec::new());
        vmm::run_program(&program, &RunConfig::default(), io, &Interrupter::new())
            .expect("run")
            .exit
    };
    assert_eq!(run(), GuestExit::Exited(0));
    let settle = |what: &str, done: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what} did not settle"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    settle("reaper backlog", &|| vmm::reaper::backlog() == 0);
    let fds = open_fds();
    for _ in 0..40 {
        assert_eq!(run(), GuestExit::Exited(0));
    }
    assert!(
        thread_names().iter().any(|n| n == "xos-reaper"),
        "the reaper thread is not running: {:?}",
        thread_names()
    );
    assert!(
        vmm::executor::threads() <= 5,
        "{} executor threads",
        vmm::executor::threads()
    );
    settle("reaper backlog", &|| vmm::reaper::backlog() == 0);
    // Other tests in this binary run in parallel and may hold fds briefly.
    settle("file descriptors", &|| open_fds() <= fds + 2);
}
