//! Guest faults end a run with a typed error carrying the guest's
//! registers; timeouts and kills stop guests that never exit.
mod support;
use std::time::{Duration, Instant};
use support::*;
use vmm::exit::Exception;
use vmm::{Fault, GuestExit, GuestIo, Interrupter, Program, RunConfig};

/// BootInfo.hypercall.args[0] and .ret.
const ARG0: u32 = 0x20000 + 144;
const RET: u32 = 0x20000 + 192;

fn run_code(code: &[u8], config: RunConfig) -> GuestExit {
    let program = Program::parse(code_image(code)).unwrap();
    let (io, _out, _err) = GuestIo::capture(Vec::new());
    vmm::run_program(&program, &config, io, &Interrupter::new())
        .expect("host-side failure")
        .exit
}

fn exception(exit: &GuestExit) -> (u8, u64, u64) {
    match exit {
        GuestExit::Faulted {
            fault: Fault::Exception(Exception { vector, .. }),
            regs,
            ..
        } => (*vector, regs.cr2, regs.rip),
        other => panic!("expected an exception, got {other}"),
    }
}

#[test]
fn null_pointer_read_is_a_page_fault_at_zero() {
    if !kvm_available() {
        return;
    }
    // mov rax, [0]
    let exit = run_code(&[0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0], RunConfig::default());
    let (vector, cr2, rip) = exception(&exit);
    assert_eq!((vector, cr2, rip), (14, 0, 0x10_0000));
    let text = exit.to_string();
    assert!(text.contains("null pointer dereference"), "{text}");
    assert!(text.contains("read of address 0x0"), "{text}");
    assert_eq!(exit.exit_code(), 139);
}

#[test]
fn access_beyond_guest_memory_is_a_page_fault() {
    if !kvm_available() {
        return;
    }
    // mov rax, 0x100000000 (4 GiB, beyond 16 MiB of memory); mov [rax], rax
    let code = [
        0x48, 0xb8, 0, 0, 0, 0, 1, 0, 0, 0, // movabs rax, 0x1_0000_0000
        0x48, 0x89, 0x00, // mov [rax], rax
    ];
    let exit = run_code(&code, RunConfig::default());
    let (vector, cr2, rip) = exception(&exit);
    assert_eq!((vector, cr2, rip), (14, 0x1_0000_0000, 0x10_000a));
    assert!(
        exit.to_string()
            .contains("write of address 0x100000000, outside guest memory"),
        "{exit}"
    );
}

#[test]
fn the_system_area_is_not_accessible_to_the_guest() {
    if !kvm_available() {
        return;
    }
    // mov qword [0x4000], 0  (the page tables)
    let exit = run_code(&store(0x4000, 0), RunConfig::default());
    let (vector, cr2, _) = exception(&exit);
    assert_eq!((vector, cr2), (14, 0x4000));
    assert!(
        exit.to_string().contains("supervisor-only system area"),
        "{exit}"
    );
}

#[test]
fn stack_overflow_hits_the_guard_page() {
    if !kvm_available() {
        return;
    }
    // call self, forever
    let exit = run_code(&[0xe8, 0xfb, 0xff, 0xff, 0xff], RunConfig::default());
    let (vector, cr2, _) = exception(&exit);
    assert_eq!(vector, 14);
    assert!((0x30000..0x31000).contains(&cr2), "cr2 {cr2:#x}");
    assert!(exit.to_string().contains("stack overflow"), "{exit}");
}

#[test]
fn invalid_opcode_is_reported_as_sigill() {
    if !kvm_available() {
        return;
    }
    let exit = run_code(&[0x90, 0x0f, 0x0b], RunConfig::default()); // nop; ud2
    let (vector, _, rip) = exception(&exit);
    assert_eq!((vector, rip), (6, 0x10_0001));
    assert_eq!(exit.exit_code(), 132);
}

#[test]
fn divide_error_is_reported_as_sigfpe() {
    if !kvm_available() {
        return;
    }
    // xor ecx, ecx; div ecx
    let exit = run_code(&[0x31, 0xc9, 0xf7, 0xf1], RunConfig::default());
    assert_eq!(exception(&exit).0, 0);
    assert_eq!(exit.exit_code(), 136);
}

#[test]
fn privileged_instructions_and_port_io_are_general_protection_faults() {
    if !kvm_available() {
        return;
    }
    for code in [&[0xf4][..], &[0xfa], &[0xe6, 0x80]] {
        // hlt, cli, out 0x80, al
        let exit = run_code(code, RunConfig::default());
        assert_eq!(exception(&exit).0, 13, "{code:02x?}: {exit}");
        assert_eq!(exit.exit_code(), 139);
    }
    // Software interrupts through DPL0 gates fault too (hardware raises
    // #GP; PVM, which reserves `int` for its own use, raises #UD).
    for vector in [0x41, 0x80] {
        let exit = run_code(&[0xcd, vector], RunConfig::default());
        assert!(
            matches!(exception(&exit).0, 6 | 13),
            "int {vector:#x}: {exit}"
        );
    }
}

#[test]
fn general_registers_are_reported_at_the_fault() {
    if !kvm_available() {
        return;
    }
    // mov eax, 0x1234; mov edx, 0x5678; mov ebx, 0x9abc; ud2
    let code = [
        0xb8, 0x34, 0x12, 0, 0, 0xba, 0x78, 0x56, 0, 0, 0xbb, 0xbc, 0x9a, 0, 0, 0x0f, 0x0b,
    ];
    match run_code(&code, RunConfig::default()) {
        GuestExit::Faulted { regs, .. } => {
            assert_eq!(regs.gpr[0], 0x1234, "rax");
            assert_eq!(regs.gpr[3], 0x5678, "rdx");
            assert_eq!(regs.gpr[1], 0x9abc, "rbx");
            assert_eq!(regs.rsp, 0x10_0000);
            assert_eq!(regs.cpl, 3);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn reading_the_doorbell_is_an_unmapped_access() {
    if !kvm_available() {
        return;
    }
    // movabs eax, [DOORBELL]
    let mut code = vec![0xa1];
    code.extend_from_slice(&xos_abi::DOORBELL.to_le_bytes());
    match run_code(&code, RunConfig::default()) {
        GuestExit::Faulted {
            fault: Fault::UnmappedAccess { addr, write: false },
            ..
        } => assert_eq!(addr, xos_abi::DOORBELL),
        other => panic!("{other}"),
    }
}

#[test]
fn an_endless_loop_is_stopped_at_its_timeout() {
    if !kvm_available() {
        return;
    }
    let config = RunConfig {
        timeout: Some(Duration::from_millis(200)),
        ..RunConfig::default()
    };
    let start = Instant::now();
    let exit = run_code(&[0xeb, 0xfe], config); // jmp $
    let took = start.elapsed();
    match &exit {
        GuestExit::TimedOut { limit, regs } => {
            assert_eq!(*limit, Duration::from_millis(200));
            assert_eq!(regs.rip, 0x10_0000);
        }
        other => panic!("{other}"),
    }
    assert_eq!(exit.exit_code(), 124);
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn kill_stops_a_running_guest_from_another_thread() {
    if !kvm_available() {
        return;
    }
    let program = Program::parse(code_image(&[0xeb, 0xfe])).unwrap();
    let interrupter = Interrupter::new();
    let killer = interrupter.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        killer.kill();
    });
    let (io, _o, _e) = GuestIo::capture(Vec::new());
    let outcome = vmm::run_program(&program, &RunConfig::default(), io, &interrupter).unwrap();
    t.join().unwrap();
    assert_eq!(outcome.exit, GuestExit::Killed);
}

#[test]
fn a_kill_before_the_run_stops_it_at_once() {
    if !kvm_available() {
        return;
    }
    let program = Program::parse(code_image(&[0xeb, 0xfe])).unwrap();
    let interrupter = Interrupter::new();
    interrupter.kill();
    let (io, _o, _e) = GuestIo::capture(Vec::new());
    let outcome = vmm::run_program(&program, &RunConfig::default(), io, &interrupter).unwrap();
    assert_eq!(outcome.exit, GuestExit::Killed);
}

#[test]
fn triple_fault_is_reported_as_such() {
    if !kvm_available() {
        return;
    }
    // A kernel-mode guest with no IDT: ud2 escalates to a triple fault.
    use vmm::arch::cpu::Privilege;
    use vmm::machine::Machine;
    let mut m = Machine::new(4 << 20, Privilege::Kernel).unwrap();
    m.write_code(0x10_0000, &[0x0f, 0x0b]).unwrap();
    m.set_entry(0x10_0000, 0x10_0000, 0);
    let exit = m.run().unwrap();
    assert!(matches!(exit, kvm_ioctls::VcpuExit::Shutdown), "{exit:?}");
    let exit = GuestExit::Faulted {
        fault: Fault::TripleFault,
        regs: Box::new(m.registers().unwrap()),
        mem_size: m.mem_size(),
    };
    assert!(exit.to_string().contains("triple fault"));
    assert_eq!(exit.exit_code(), 139);
}

#[test]
fn hypercalls_with_bad_pointers_return_efault() {
    if !kvm_available() {
        return;
    }
    // WRITE(fd=1, buf=0x1000 (system area), len=8); then EXIT(ret).
    let mut code = store(ARG0, 1);
    code.extend(store(ARG0 + 8, 0x1000));
    code.extend(store(ARG0 + 16, 8));
    code.extend(hypercall(5));
    code.extend([0x48, 0x8b, 0x04, 0x25]); // mov rax, [RET]
    code.extend(RET.to_le_bytes());
    code.extend([0x48, 0x89, 0x04, 0x25]); // mov [ARG0], rax
    code.extend(ARG0.to_le_bytes());
    code.extend(hypercall(1));
    let exit = run_code(&code, RunConfig::default());
    assert_eq!(exit, GuestExit::Exited((-14i64) as u8), "{exit}");
}

#[test]
fn an_unknown_hypercall_returns_einval() {
    if !kvm_available() {
        return;
    }
    let mut code = hypercall(999);
    code.extend([0x48, 0x8b, 0x04, 0x25]);
    code.extend(RET.to_le_bytes());
    code.extend([0x48, 0x89, 0x04, 0x25]);
    code.extend(ARG0.to_le_bytes());
    code.extend(hypercall(1));
    assert_eq!(
        run_code(&code, RunConfig::default()),
        GuestExit::Exited((-22i64) as u8)
    );
}

#[test]
fn the_vcpu_thread_cannot_make_forbidden_syscalls() {
    if !kvm_available() {
        return;
    }
    use std::sync::{Arc, Mutex};
    // The host function runs on the vCPU thread, under its seccomp filter.
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let mut config = RunConfig::default();
    config.host_functions.register("probe", move |_| {
        // SAFETY: plain syscall wrappers with valid arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        *seen2.lock().unwrap() = Some((fd, errno));
        Ok(Vec::new())
    });
    // HOST_CALL(name="probe" at 0x20800, ...) then EXIT.
    let mut code = Vec::new();
    // mov dword [0x20800], 'prob'; mov byte [0x20804], 'e'
    code.extend([0xc7, 0x04, 0x25, 0x00, 0x08, 0x02, 0x00]);
    code.extend(b"prob");
    code.extend([0xc6, 0x04, 0x25, 0x04, 0x08, 0x02, 0x00, b'e']);
    code.extend(store(ARG0, 0x20800));
    code.extend(store(ARG0 + 8, 5));
    code.extend(store(ARG0 + 16, 0x20900));
    code.extend(store(ARG0 + 24, 0));
    code.extend(store(ARG0 + 32, 0x20900));
    code.extend(store(ARG0 + 40, 16));
    code.extend(hypercall(6));
    code.extend(store(ARG0, 0));
    code.extend(hypercall(1));
    let exit = run_code(&code, config);
    assert_eq!(exit, GuestExit::Exited(0), "{exit}");
    let (fd, errno) = seen.lock().unwrap().expect("host function ran");
    assert_eq!(fd, -1, "socket() must be refused on the vCPU thread");
    assert_eq!(errno, Some(libc::EPERM));
    // The same call on this (unfiltered) thread works.
    // SAFETY: as above; the fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
}

#[test]
fn data_pages_are_not_executable() {
    if !kvm_available() {
        return;
    }
    // mov byte [0x200000], 0xc3 (ret); mov eax, 0x200000; call rax
    let code = [
        0xc6, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, 0xc3, // mov byte [0x200000], 0xc3
        0xb8, 0x00, 0x00, 0x20, 0x00, // mov eax, 0x200000
        0xff, 0xd0, // call rax
    ];
    let exit = run_code(&code, RunConfig::default());
    let (vector, cr2, rip) = exception(&exit);
    assert_eq!((vector, cr2, rip), (14, 0x20_0000, 0x20_0000));
    let text = exit.to_string();
    assert!(
        text.contains("instruction fetch of address 0x200000"),
        "{text}"
    );
    assert!(text.contains("not executable (W^X"), "{text}");
    // The stack is data too: push a ret, jump to it.
    let code = [
        0x6a, 0xc3, // push 0xffffffffffffffc3 (its low byte: ret)
        0xff, 0xe4, // jmp rsp
    ];
    let exit = run_code(&code, RunConfig::default());
    let (vector, _, rip) = exception(&exit);
    assert_eq!(vector, 14);
    assert!(rip < 0x10_0000, "it faulted on the stack: {rip:#x}");
}

#[test]
fn code_pages_are_read_only() {
    if !kvm_available() {
        return;
    }
    // mov byte [0x100000], 0x90: the first byte of this very code.
    let exit = run_code(
        &[0xc6, 0x04, 0x25, 0x00, 0x00, 0x10, 0x00, 0x90],
        RunConfig::default(),
    );
    let (vector, cr2, rip) = exception(&exit);
    assert_eq!((vector, cr2, rip), (14, 0x10_0000, 0x10_0000));
    let text = exit.to_string();
    assert!(text.contains("write of address 0x100000"), "{text}");
    assert!(text.contains("read-only"), "{text}");
}

#[test]
fn code_too_high_for_its_page_tables_is_a_clear_error() {
    if !kvm_available() {
        return;
    }
    // 9 MiB of code (mostly .bss in an executable segment): its pages
    // above 8 MiB could not get their own permissions.
    let program = Program::parse(elf(
        0x10_0000,
        &[Seg {
            addr: 0x10_0000,
            data: vec![0xf4; 16],
            memsz: 9 << 20,
            flags: 5,
        }],
    ))
    .expect("a valid ELF");
    let (io, _out, _err) = GuestIo::capture(Vec::new());
    let config = RunConfig {
        mem_size: 64 << 20,
        ..RunConfig::default()
    };
    let e = vmm::run_program(&program, &config, io, &Interrupter::new())
        .expect_err("refused before it runs");
    let text = e.to_string();
    assert!(text.contains("W^X"), "{text}");
    assert!(text.contains("0x800000"), "{text}");
}

/// The monitor writes a host function's result through its own mapping,
/// where the guest's page tables do not apply: it must refuse a result
/// buffer in the image's code (W^X), or a guest could get code written.
#[test]
fn a_host_call_cannot_write_its_result_into_code() {
    if !kvm_available() {
        return;
    }
    let run_with_out = |out_ptr: u32| {
        // HOST_CALL("f", in = the name, out = out_ptr, cap 8); EXIT(ret).
        let name_at = 0x10_0000u32 + 200; // inside the code page, readable
        let mut code = store(ARG0, name_at);
        code.extend(store(ARG0 + 8, 1));
        code.extend(store(ARG0 + 16, name_at));
        code.extend(store(ARG0 + 24, 1));
        code.extend(store(ARG0 + 32, out_ptr));
        code.extend(store(ARG0 + 40, 8));
        code.extend(hypercall(6));
        code.extend([0x48, 0x8b, 0x04, 0x25]); // mov rax, [RET]
        code.extend(RET.to_le_bytes());
        code.extend([0x48, 0x89, 0x04, 0x25]); // mov [ARG0], rax
        code.extend(ARG0.to_le_bytes());
        code.extend(hypercall(1));
        code.resize(200, 0xf4);
        code.push(b'f');
        let mut functions = vmm::HostFunctions::new();
        functions.register("f", |_: &[u8]| Ok(vec![0x90; 8]));
        let config = RunConfig {
            host_functions: functions,
            ..RunConfig::default()
        };
        run_code(&code, config)
    };
    // Into the code page: EFAULT, nothing written.
    assert_eq!(run_with_out(0x10_0000), GuestExit::Exited((-14i64) as u8));
    // Into data (above the image): 8 bytes.
    assert_eq!(run_with_out(0x20_0000), GuestExit::Exited(8));
}
