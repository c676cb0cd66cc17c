//! Where a cold start's time goes: its steps timed one by one
//! (`xos-vmm bench breakdown`; see `docs/BENCHMARKS.md`).
//!
//! The steps: `Program::parse`; VM creation (`KVM_CREATE_VM`, mmap of guest
//! memory, `KVM_SET_USER_MEMORY_REGION`, writing the system area,
//! `KVM_CREATE_VCPU`) and loading (image, arguments, BootInfo); handing the
//! run to a vCPU thread (whose seccomp filter costs a lot to install, so
//! the runner keeps such threads); the first `KVM_RUN` until the exit
//! hypercall; the result back to the caller. The VM's tear-down follows in
//! the background. `virtine.cold` takes the pipelined path
//! ([`vmm::run_program`]), `breakdown.cold_sequential` the step-by-step one
//! (`PreparedRun::new` then `run`).
//!
//! `KVM_SET_USER_MEMORY_REGION` cannot be timed alone from this crate (it
//! needs kvm-bindings' struct); it is what remains of `machine_new` after
//! the other steps.

use super::measure::{
    cold_config, cold_series, exit_loop_code, footprint, image_bytes, nanos, wait_for_teardown,
    ColdPath, Pacing, TRIVIAL_IMAGE,
};
use anyhow::Context;
use std::time::{Duration, Instant};
use vmm::arch::cpu::Privilege;
use vmm::machine::Machine;
use vmm::memory::DEFAULT_MEM_SIZE;
use vmm::runner::PreparedRun;
use vmm::{GuestIo, Interrupter, Program};
use xos_abi::layout::{BOOT_INFO, IMAGE_BASE, STACK_TOP};

/// Samples per breakdown step and round (`xos-vmm bench` runs 50 rounds).
pub const SAMPLES: usize = 4;

/// A breakdown benchmark: name and measurement (`samples` in, one
/// duration in nanoseconds per sample out).
pub type Step = (&'static str, fn(usize) -> anyhow::Result<Vec<u64>>);

/// The breakdown benchmarks (`xos-vmm bench breakdown`).
pub const BENCHES: &[Step] = &[
    ("breakdown.program_parse", program_parse),
    ("breakdown.kvm_create_vm", kvm_create_vm),
    ("breakdown.memory_mmap", memory_mmap),
    ("breakdown.system_area_write", system_area_write),
    ("breakdown.kvm_create_vcpu", kvm_create_vcpu),
    ("breakdown.machine_new", machine_new),
    ("breakdown.prepared_run_new", prepared_run_new),
    ("breakdown.thread_seccomp", thread_seccomp),
    ("breakdown.seccomp_install", seccomp_install),
    ("breakdown.first_exit_bare", first_exit_bare),
    ("breakdown.run_on_vcpu_thread", |n| {
        run_on_thread(n).map(|r| r.0)
    }),
    ("breakdown.guest_time", |n| run_on_thread(n).map(|r| r.1)),
    ("breakdown.run_here", |n| run_here(n).map(|r| r.0)),
    ("breakdown.teardown_machine_drop", |n| {
        run_here(n).map(|r| r.1)
    }),
    ("breakdown.vm_close_empty", vm_close_empty),
    ("breakdown.cold_guest_time", |n| {
        Ok(cold_series(n, Pacing::AfterTeardown, ColdPath::Pipelined)?.guest)
    }),
    ("breakdown.cold_teardown_wait", |n| {
        Ok(cold_series(n, Pacing::AfterTeardown, ColdPath::Pipelined)?.teardown_wait)
    }),
    ("breakdown.cold_back_to_back", |n| {
        Ok(cold_series(n, Pacing::BackToBack, ColdPath::Pipelined)?.total)
    }),
    ("breakdown.cold_sequential", |n| {
        Ok(cold_series(n, Pacing::AfterTeardown, ColdPath::Sequential)?.total)
    }),
    ("breakdown.cold_sequential_create", |n| {
        Ok(cold_series(n, Pacing::AfterTeardown, ColdPath::Sequential)?.create)
    }),
];

fn trivial() -> anyhow::Result<Program> {
    Program::parse(image_bytes(TRIVIAL_IMAGE)?).context("cannot parse trivial-c")
}

fn times(
    samples: usize,
    mut once: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<Vec<u64>> {
    once()?; // warm-up
    (0..samples).map(|_| once().map(nanos)).collect()
}

/// `Program::parse` of `trivial-c` (copy + ELF validation).
pub fn program_parse(samples: usize) -> anyhow::Result<Vec<u64>> {
    let bytes = image_bytes(TRIVIAL_IMAGE)?;
    times(samples, || {
        let start = Instant::now();
        let program = Program::parse(bytes).context("cannot parse trivial-c")?;
        let t = start.elapsed();
        drop(program);
        Ok(t)
    })
}

/// `KVM_CREATE_VM` alone (the VM is closed outside the timed region).
pub fn kvm_create_vm(samples: usize) -> anyhow::Result<Vec<u64>> {
    let kvm = vmm::kvm::kvm().context("KVM is not usable")?;
    times(samples, || {
        let start = Instant::now();
        let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
        let t = start.elapsed();
        drop(vm);
        Ok(t)
    })
}

/// Closing an empty VM's fd (`KVM_CREATE_VM` outside the timed region).
pub fn vm_close_empty(samples: usize) -> anyhow::Result<Vec<u64>> {
    let kvm = vmm::kvm::kvm().context("KVM is not usable")?;
    times(samples, || {
        let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
        let start = Instant::now();
        drop(vm);
        Ok(start.elapsed())
    })
}

/// Mapping 16 MiB of guest memory (lazy: pages are faulted in later).
pub fn memory_mmap(samples: usize) -> anyhow::Result<Vec<u64>> {
    times(samples, || {
        let start = Instant::now();
        let mem = vmm::memory::allocate(DEFAULT_MEM_SIZE).context("allocating guest memory")?;
        let t = start.elapsed();
        drop(mem);
        Ok(t)
    })
}

/// Writing GDT, IDT and stubs, page tables into fresh memory (includes the
/// page faults of first touching those pages).
pub fn system_area_write(samples: usize) -> anyhow::Result<Vec<u64>> {
    times(samples, || {
        let mem = vmm::memory::allocate(DEFAULT_MEM_SIZE).context("allocating guest memory")?;
        let start = Instant::now();
        vmm::arch::write_system_area(&mem, DEFAULT_MEM_SIZE).context("writing the system area")?;
        Ok(start.elapsed())
    })
}

/// `KVM_CREATE_VCPU` on a fresh VM with no memory.
pub fn kvm_create_vcpu(samples: usize) -> anyhow::Result<Vec<u64>> {
    let kvm = vmm::kvm::kvm().context("KVM is not usable")?;
    times(samples, || {
        let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
        let start = Instant::now();
        let vcpu = vm.create_vcpu(0).context("KVM_CREATE_VCPU")?;
        let t = start.elapsed();
        drop(vcpu);
        drop(vm);
        Ok(t)
    })
}

/// `Machine::new` (16 MiB, CPL3): all the VM-creation steps together.
pub fn machine_new(samples: usize) -> anyhow::Result<Vec<u64>> {
    times(samples, || {
        let start = Instant::now();
        let machine = Machine::new(DEFAULT_MEM_SIZE, Privilege::User).context("Machine::new")?;
        let t = start.elapsed();
        drop(machine);
        Ok(t)
    })
}

/// `PreparedRun::new` for `trivial-c`: `Machine::new` plus loading the
/// image, arguments and BootInfo.
pub fn prepared_run_new(samples: usize) -> anyhow::Result<Vec<u64>> {
    let program = trivial()?;
    let config = cold_config();
    times(samples, || {
        let (io, _, _) = GuestIo::capture(Vec::new());
        let start = Instant::now();
        let run = PreparedRun::new(&program, &config, io).context("PreparedRun::new")?;
        let t = start.elapsed();
        drop(run);
        Ok(t)
    })
}

/// Spawning a thread that installs the vCPU seccomp filter, and joining it.
pub fn thread_seccomp(samples: usize) -> anyhow::Result<Vec<u64>> {
    times(samples, || {
        let start = Instant::now();
        let handle = std::thread::Builder::new()
            .spawn(vmm::seccomp::apply_vcpu_filter)
            .context("cannot spawn a thread")?;
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("the thread panicked"))?
            .context("installing the seccomp filter")?;
        Ok(start.elapsed())
    })
}

/// Installing the vCPU seccomp filter alone, timed on a fresh thread.
pub fn seccomp_install(samples: usize) -> anyhow::Result<Vec<u64>> {
    times(samples, || {
        let handle = std::thread::Builder::new()
            .spawn(|| {
                let start = Instant::now();
                vmm::seccomp::apply_vcpu_filter().map(|()| start.elapsed())
            })
            .context("cannot spawn a thread")?;
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("the thread panicked"))?
            .context("installing the seccomp filter")
    })
}

/// The first `KVM_RUN` of a bare machine running [`exit_loop_code`] until
/// its first doorbell exit: entering a fresh vCPU, with the fewest pages
/// touched (code, no stack).
pub fn first_exit_bare(samples: usize) -> anyhow::Result<Vec<u64>> {
    let code = exit_loop_code();
    times(samples, || {
        let mut machine =
            Machine::new(DEFAULT_MEM_SIZE, Privilege::User).context("Machine::new")?;
        machine
            .write_code(IMAGE_BASE, &code)
            .context("writing the loop")?;
        machine.set_entry(IMAGE_BASE, STACK_TOP, BOOT_INFO);
        let start = Instant::now();
        machine.run().context("KVM_RUN failed")?;
        let t = start.elapsed();
        drop(machine);
        Ok(t)
    })
}

/// `PreparedRun::run` of a prepared `trivial-c` (thread spawn, seccomp,
/// guest, result), paced like `virtine.cold`; also returns the guest's
/// own time (first `KVM_RUN` to the exit hypercall served).
pub fn run_on_thread(samples: usize) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let program = trivial()?;
    let config = cold_config();
    vmm::kvm::probe().context("KVM is not usable")?;
    let idle = footprint()?;
    let mut total = Vec::with_capacity(samples);
    let mut guest = Vec::with_capacity(samples);
    for i in 0..=samples {
        let (io, _, _) = GuestIo::capture(Vec::new());
        let run = PreparedRun::new(&program, &config, io).context("PreparedRun::new")?;
        let start = Instant::now();
        let outcome = run.run(&Interrupter::new()).context("running trivial-c")?;
        let t = start.elapsed();
        wait_for_teardown(idle, 0)?;
        if i > 0 {
            total.push(nanos(t));
            guest.push(nanos(outcome.guest_time));
        }
    }
    Ok((total, guest))
}

/// `PreparedRun::run_here` of a prepared `trivial-c` on this thread (no
/// thread, no seccomp), and then the machine's drop (the tear-down that
/// `run` leaves to the vCPU thread).
pub fn run_here(samples: usize) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let program = trivial()?;
    let config = cold_config();
    let mut run_times = Vec::with_capacity(samples);
    let mut drops = Vec::with_capacity(samples);
    for i in 0..=samples {
        let (io, _, _) = GuestIo::capture(Vec::new());
        let run = PreparedRun::new(&program, &config, io).context("PreparedRun::new")?;
        let start = Instant::now();
        let (outcome, machine) = run.run_here(&Interrupter::new());
        let t = start.elapsed();
        outcome.context("running trivial-c")?;
        let start = Instant::now();
        drop(machine);
        let d = start.elapsed();
        if i > 0 {
            run_times.push(nanos(t));
            drops.push(nanos(d));
        }
    }
    Ok((run_times, drops))
}
