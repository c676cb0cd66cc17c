//! EPT views by memory-slot switching (`vmm::view`): one guest-physical
//! address reads different bytes in each view, a switch keeps the
//! registers, and a switch to a view that does not exist is refused.
mod support;
use support::*;
use vmm::arch::cpu::Privilege;
use vmm::view::{Step, ViewError, ViewMachine};
use xos_abi::layout::{BOOT_INFO, IMAGE_BASE, STACK_TOP};
use xos_abi::nr::VIEW_SWITCH;

/// Where each view keeps its own marker (user memory, inside the image
/// area, away from the code).
const MARKER: u64 = IMAGE_BASE + 0x1000;

/// `mov eax, [abs64 addr]`
fn load(addr: u64) -> Vec<u8> {
    let mut c = vec![0xa1];
    c.extend_from_slice(&addr.to_le_bytes());
    c
}

/// `mov [DOORBELL], eax` with eax = `value`
fn doorbell(value: u32) -> Vec<u8> {
    hypercall(value)
}

/// `mov [DOORBELL], eax` (eax as it is)
fn report() -> Vec<u8> {
    let mut c = vec![0xa3];
    c.extend_from_slice(&xos_abi::DOORBELL.to_le_bytes());
    c
}

fn views(count: usize) -> ViewMachine {
    ViewMachine::new(count, 4 << 20, Privilege::User).expect("a VM with views")
}

#[test]
fn one_address_reads_each_views_own_bytes() {
    if !kvm_available() {
        return;
    }
    let mut vm = views(3);
    // The same code at the same address in every view (the trampoline
    // rule), different markers.
    let mut code = Vec::new();
    for view in [1u32, 2, 0] {
        code.extend(load(MARKER));
        code.extend(report());
        code.extend(doorbell(VIEW_SWITCH | view << 16));
    }
    code.extend(load(MARKER));
    code.extend(report());
    for view in 0..3 {
        vm.write_code(view, IMAGE_BASE, &code).unwrap();
        vm.write(
            view,
            MARKER,
            &(0x1111_1111u32 * (view as u32 + 1)).to_le_bytes(),
        )
        .unwrap();
    }
    vm.machine().set_entry(IMAGE_BASE, STACK_TOP, BOOT_INFO);
    let mut seen = Vec::new();
    for _ in 0..7 {
        seen.push(vm.step().unwrap());
    }
    assert_eq!(
        seen,
        [
            Step::Doorbell(0x1111_1111),
            Step::Switched(1),
            Step::Doorbell(0x2222_2222),
            Step::Switched(2),
            Step::Doorbell(0x3333_3333),
            Step::Switched(0),
            Step::Doorbell(0x1111_1111),
        ]
    );
    assert_eq!(vm.active(), 0);
}

#[test]
fn a_view_writes_only_its_own_memory() {
    if !kvm_available() {
        return;
    }
    let mut vm = views(2);
    // mov dword [MARKER], 0x5a5a5a5a via eax; switch; switch back.
    let mut code = vec![0xb8];
    code.extend_from_slice(&0x5a5a_5a5au32.to_le_bytes());
    code.push(0xa3);
    code.extend_from_slice(&MARKER.to_le_bytes());
    code.extend(doorbell(VIEW_SWITCH | 1 << 16));
    code.extend(load(MARKER));
    code.extend(report());
    for view in 0..2 {
        vm.write_code(view, IMAGE_BASE, &code).unwrap();
    }
    vm.machine().set_entry(IMAGE_BASE, STACK_TOP, BOOT_INFO);
    // The store runs in view 0, the switch (its code is the same in view 1)
    // happens, and view 1's marker is still zero.
    assert_eq!(vm.step().unwrap(), Step::Switched(1));
    assert_eq!(vm.step().unwrap(), Step::Doorbell(0));
    let mut v0 = [0u8; 4];
    vm.view(0)
        .map(|m| vm_memory::Bytes::read_slice(m, &mut v0, vm_memory::GuestAddress(MARKER)).unwrap())
        .unwrap();
    assert_eq!(u32::from_le_bytes(v0), 0x5a5a_5a5a);
}

#[test]
fn a_switch_to_a_missing_view_is_refused() {
    if !kvm_available() {
        return;
    }
    let mut vm = views(2);
    let code = doorbell(VIEW_SWITCH | 7 << 16);
    for view in 0..2 {
        vm.write_code(view, IMAGE_BASE, &code).unwrap();
    }
    vm.machine().set_entry(IMAGE_BASE, STACK_TOP, BOOT_INFO);
    let e = vm.step().unwrap_err();
    assert!(
        matches!(e, ViewError::NoSuchView { view: 7, count: 2 }),
        "{e}"
    );
    assert!(e.to_string().contains("no view 7"), "{e}");
    assert_eq!(vm.active(), 0);
}
