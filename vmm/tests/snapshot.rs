//! A stopped guest captured into a snapshot file and restored into a fresh
//! VM continues exactly where it stopped: registers, SSE state, memory.
mod support;
use kvm_ioctls::VcpuExit;
use support::*;
use vmm::arch::cpu::Privilege;
use vmm::machine::Machine;
use vmm::snapshot::Snapshot;

const ARG0: u32 = 0x20000 + 144;

/// rax=5 → xmm3; [0x200000]=0x77; pause (NOP hypercall); then
/// EXIT(xmm3 + [0x200000] + rcx) with rcx set before the pause.
fn program() -> Vec<u8> {
    let mut c = vec![0x48, 0xc7, 0xc0, 5, 0, 0, 0]; // mov rax, 5
    c.extend([0x66, 0x48, 0x0f, 0x6e, 0xd8]); // movq xmm3, rax
    c.extend([0x48, 0xc7, 0xc1, 0x10, 0, 0, 0]); // mov rcx, 0x10
    c.extend(store(0x20_0000, 0x77)); // mov qword [0x200000], 0x77
    c.extend(hypercall(7)); // pause point
    c.extend([0x66, 0x48, 0x0f, 0x7e, 0xdb]); // movq rbx, xmm3
    c.extend([0x48, 0x03, 0x1c, 0x25, 0x00, 0x00, 0x20, 0x00]); // add rbx, [0x200000]
    c.extend([0x48, 0x01, 0xcb]); // add rbx, rcx
    c.extend([0x48, 0x89, 0x1c, 0x25]); // mov [ARG0], rbx
    c.extend(ARG0.to_le_bytes());
    c.extend(hypercall(1));
    c
}

fn run_to_doorbell(m: &mut Machine) -> u32 {
    match m.run().expect("KVM_RUN") {
        VcpuExit::MmioWrite(addr, data) if addr == xos_abi::DOORBELL => data[0] as u32,
        other => panic!("unexpected exit {other:?}"),
    }
}

#[test]
fn a_restored_guest_continues_where_it_stopped() {
    if !kvm_available() {
        return;
    }
    let mut m = Machine::new(4 << 20, Privilege::User).expect("machine");
    m.write_code(0x10_0000, &program()).expect("code");
    m.set_entry(0x10_0000, 0x10_0000, 0x20000);
    assert_eq!(run_to_doorbell(&mut m), 7);
    let file = Snapshot::capture(&m).expect("capture").encode();
    drop(m);

    let snapshot = Snapshot::decode(&file).expect("decode");
    assert!(snapshot.pages.iter().any(|(a, _)| *a == 0x20_0000));
    let mut restored = snapshot.restore().expect("restore");
    assert_eq!(run_to_doorbell(&mut restored), 1);
    assert_eq!(restored.read_u64(u64::from(ARG0)), Some(5 + 0x77 + 0x10));

    // The same file restores again, independently.
    let mut again = snapshot.restore().expect("restore again");
    assert_eq!(run_to_doorbell(&mut again), 1);
    assert_eq!(again.read_u64(u64::from(ARG0)), Some(5 + 0x77 + 0x10));
}
