//! EPT views without VMFUNC (`vmm::view`), against their floor:
//!
//! - `kvm.memslot_switch`: delete memory slot 0 and add it back over the
//!   other view's memory (two `KVM_SET_USER_MEMORY_REGION`), right after
//!   the guest ran in the old view, so KVM has translations to drop.
//! - `eptview.call_fallback`: one cross-view call transition on the
//!   fallback path, what one `VMFUNC` does on an Intel host with
//!   `vmfunc-kmod`: the guest's trampoline (the same code at the same
//!   address in both views) writes `VIEW_SWITCH` to the doorbell, the
//!   monitor switches the slot and resumes it in the other view, which
//!   switches back. A sample is the time between two consecutive switch
//!   exits: exit, slot switch, entry, the new view's first instructions.

use anyhow::{bail, ensure, Context};
use std::time::Instant;
use vmm::arch::cpu::Privilege;
use vmm::view::{Step, ViewMachine};
use xos_abi::layout::{BOOT_INFO, IMAGE_BASE, STACK_TOP};
use xos_abi::nr::{NOP, VIEW_SWITCH};
use xos_abi::DOORBELL;

use super::measure::{nanos, ROUNDTRIP_WARMUP};

/// `mov eax, value; mov [DOORBELL], eax`
fn doorbell(value: u32) -> Vec<u8> {
    let mut c = vec![0xb8];
    c.extend_from_slice(&value.to_le_bytes());
    c.push(0xa3);
    c.extend_from_slice(&DOORBELL.to_le_bytes());
    c
}

/// `jmp` back to the start of `code` (a short jump).
fn loop_back(mut code: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let disp = -(code.len() as isize + 2);
    let disp = i8::try_from(disp).context("loop body too long for a short jump")?;
    code.extend([0xeb, disp as u8]);
    Ok(code)
}

/// A two-view VM running `code` from the same address in both views.
fn two_views(code: &[u8]) -> anyhow::Result<ViewMachine> {
    let mut vm = ViewMachine::new(2, vmm::memory::DEFAULT_MEM_SIZE, Privilege::User)
        .context("cannot create a VM with two views")?;
    for view in 0..2 {
        vm.write_code(view, IMAGE_BASE, code)
            .context("cannot write the trampoline")?;
    }
    vm.machine().set_entry(IMAGE_BASE, STACK_TOP, BOOT_INFO);
    Ok(vm)
}

/// `kvm.memslot_switch`.
pub fn measure_memslot_switch(samples: usize) -> anyhow::Result<Vec<u64>> {
    // The guest only exits (a NOP hypercall in a loop): each run maps the
    // code page and the page-table walk into the active view.
    let mut vm = two_views(&loop_back(doorbell(NOP))?)?;
    let mut out = Vec::with_capacity(samples);
    for i in 0..ROUNDTRIP_WARMUP + samples {
        let step = vm.step().context("KVM_RUN failed")?;
        ensure!(
            step == Step::Doorbell(NOP),
            "the NOP loop's exit {i} is {step:?}"
        );
        let to = 1 - vm.active();
        let t = Instant::now();
        vm.switch(to)?;
        if i >= ROUNDTRIP_WARMUP {
            out.push(nanos(t.elapsed()));
        }
    }
    Ok(out)
}

/// `eptview.call_fallback`.
pub fn measure_call_fallback(samples: usize) -> anyhow::Result<Vec<u64>> {
    let mut code = doorbell(VIEW_SWITCH | 1 << 16);
    code.extend(doorbell(VIEW_SWITCH));
    let mut vm = two_views(&loop_back(code)?)?;
    let mut out = Vec::with_capacity(samples);
    let mut last = Instant::now();
    for i in 0..ROUNDTRIP_WARMUP + samples + 1 {
        let expected = (i + 1) % 2;
        let step = vm.step().context("KVM_RUN failed")?;
        let now = Instant::now();
        if step != Step::Switched(expected) {
            bail!("switch {i} of the trampoline loop is {step:?}, not to view {expected}");
        }
        if i > ROUNDTRIP_WARMUP {
            out.push(nanos(now - last));
        }
        last = now;
    }
    Ok(out)
}
