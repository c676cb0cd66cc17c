//! The VIC interface of the virtine factory: what works, and the typed
//! `Unsupported` errors of what does not yet.

use icf::{
    Availability, IcSpec, IcfError, IsolationContext, IsolationContextFactory, ProcessImage,
    Registry,
};
use std::sync::Arc;
use vmm::{GuestExit, GuestIo, Program};

/// Runs KVM tests, or skips them loudly (fails under `XOS_REQUIRE_KVM=1`).
fn kvm_available() -> bool {
    vmm::kvm::available_for_tests()
}

/// A guest that exits with code 9: mov [args0], 9; EXIT.
fn exit9() -> Program {
    let mut code = vec![0x48, 0xc7, 0x04, 0x25];
    code.extend_from_slice(&(0x20000u32 + 144).to_le_bytes());
    code.extend_from_slice(&9u32.to_le_bytes());
    code.extend_from_slice(&[0xb8, 1, 0, 0, 0, 0xa3]);
    code.extend_from_slice(&xos_abi::DOORBELL.to_le_bytes());
    Program::parse(vmm::elf_writer::code_image(&code)).expect("valid")
}

#[test]
fn the_virtine_factory_creates_runnable_ics() {
    if !kvm_available() {
        return;
    }
    let registry = Registry::builtin();
    let factory = registry.resolve("virtine").expect("available");
    assert_eq!(factory.init(), Availability::Available);
    let mut ic = factory.create(IcSpec::new(exit9())).expect("create");
    assert_eq!(ic.kind(), "virtine");
    ic.switch_in().expect("switch_in is a no-op for virtines");
    for _ in 0..3 {
        let (io, _, _) = GuestIo::capture(Vec::new());
        assert_eq!(ic.run(io).expect("run").exit, GuestExit::Exited(9));
    }
    ic.switch_out().expect("switch_out");
}

fn unsupported_by(e: IcfError, kind: &str, operation: &str) {
    match e {
        IcfError::Unsupported { icf, operation: op } => {
            assert_eq!((icf, op), (kind, operation));
        }
        other => panic!("expected Unsupported {operation}, got {other}"),
    }
}

/// A guest that computes in its initialisation, calls READY, then exits
/// with `xmm3 + ret(READY)`: 40 in the first run, 41 when restored.
fn ready_then_exit() -> Program {
    let mut c = vec![0x48, 0xc7, 0xc0, 40, 0, 0, 0]; // mov rax, 40
    c.extend([0x66, 0x48, 0x0f, 0x6e, 0xd8]); // movq xmm3, rax
    c.extend([0xb8, 8, 0, 0, 0, 0xa3]); // READY
    c.extend(xos_abi::DOORBELL.to_le_bytes());
    c.extend([0x66, 0x48, 0x0f, 0x7e, 0xdb]); // movq rbx, xmm3
    c.extend([0x48, 0x03, 0x1c, 0x25]); // add rbx, [ret]
    c.extend((0x20000u32 + 192).to_le_bytes());
    c.extend([0x48, 0x89, 0x1c, 0x25]); // mov [args0], rbx
    c.extend((0x20000u32 + 144).to_le_bytes());
    c.extend([0xb8, 1, 0, 0, 0, 0xa3]); // EXIT
    c.extend(xos_abi::DOORBELL.to_le_bytes());
    Program::parse(vmm::elf_writer::code_image(&c)).expect("valid")
}

#[test]
fn dump_and_restore_resume_at_the_ready_point() {
    if !kvm_available() {
        return;
    }
    let factory = Registry::builtin().resolve("virtine").expect("available");
    let mut ic = factory
        .create(IcSpec::new(ready_then_exit()))
        .expect("create");
    let (io, _, _) = GuestIo::capture(Vec::new());
    assert_eq!(ic.run(io).expect("run").exit, GuestExit::Exited(40));
    let state = ic.dump().expect("dump");
    let mut restored = factory.restore(&state).expect("restore");
    for _ in 0..3 {
        let (io, _, _) = GuestIo::capture(Vec::new());
        assert_eq!(restored.run(io).expect("run").exit, GuestExit::Exited(41));
    }
    // A restored IC dumps the same state again.
    assert_eq!(restored.dump().expect("dump again"), state);
}

#[test]
fn operations_not_implemented_yet_are_typed_errors() {
    if !kvm_available() {
        return;
    }
    let registry = Registry::builtin();
    let factory = registry.resolve("virtine").expect("available");
    let ic = factory.create(IcSpec::new(exit9())).expect("create");
    // This guest never calls READY: there is no ready point to dump.
    assert!(matches!(ic.dump(), Err(IcfError::NotReady { .. })));
    // Bytes that are not a snapshot are refused with the reason.
    assert!(matches!(
        factory.restore(b"state"),
        Err(IcfError::Snapshot(_))
    ));
    // A virtine that never stopped at a safe point has no execution flow
    // to carry over.
    assert!(matches!(
        factory.convert_to_process(ic),
        Err(IcfError::NotAtSafePoint { icf: "virtine" })
    ));
    // A process image whose memory is outside guest user memory is refused.
    let bad = ProcessImage {
        state: xos_vmm_pivot_bad_state(),
        spec: IcSpec::new(exit9()),
    };
    let e = factory.convert_from_process(bad).err().expect("refused");
    assert!(e.to_string().contains("outside guest user memory"), "{e}");
    // So is one whose memory size is not its IC's.
    let mut state = xos_vmm_pivot_bad_state();
    state.regions.clear();
    state.mem_size = 32 << 20;
    let e = factory
        .convert_from_process(ProcessImage {
            state,
            spec: IcSpec::new(exit9()),
        })
        .err()
        .expect("refused");
    assert!(e.to_string().contains("its IC had"), "{e}");
}

fn xos_vmm_pivot_bad_state() -> vmm::pivot::EfState {
    vmm::pivot::EfState {
        mem_size: 16 << 20,
        regions: vec![(0x1000, vec![0xcc; 4096])],
        regs: vmm::GuestRegs::default(),
        code: None,
    }
}

struct FakeProcess;
impl IsolationContextFactory for FakeProcess {
    fn name(&self) -> &'static str {
        "process"
    }
    fn description(&self) -> &'static str {
        "test stand-in for the pivot kind"
    }
    fn init(&self) -> Availability {
        Availability::Available
    }
    fn create(&self, _: IcSpec) -> Result<Box<dyn IsolationContext>, IcfError> {
        Err(IcfError::Unsupported {
            icf: "process",
            operation: "ic_create",
        })
    }
}

#[test]
fn mutate_goes_through_the_pivot_and_reports_what_is_missing() {
    if !kvm_available() {
        return;
    }
    let mut registry = Registry::new();
    registry
        .register(Arc::new(icf::virtine::VirtineFactory))
        .expect("register");
    registry.register(Arc::new(FakeProcess)).expect("register");
    let factory = registry.resolve("virtine").expect("virtine");
    let ic = factory.create(IcSpec::new(exit9())).expect("create");
    // Unknown target kind.
    let e = registry.mutate(ic, "enclave").err().expect("unknown");
    assert!(
        e.to_string()
            .contains("unknown isolation context factory 'enclave'"),
        "{e}"
    );
    // Virtine -> process needs the virtine stopped at a safe point.
    let ic = factory.create(IcSpec::new(exit9())).expect("create");
    let e = registry
        .mutate(ic, "process")
        .err()
        .expect("not at a safe point");
    assert!(e.to_string().contains("not stopped at a safe point"), "{e}");
    // A factory without an inbound pivot says so.
    let image = ProcessImage {
        state: xos_vmm_pivot_bad_state(),
        spec: IcSpec::new(exit9()),
    };
    unsupported_by(
        FakeProcess
            .convert_from_process(image)
            .err()
            .expect("unsupported"),
        "process",
        "mutate from process",
    );
}
