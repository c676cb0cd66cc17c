//! A KVM virtual machine with one vCPU and one memory slot, set up for long
//! mode without boot code.
//!
//! Every step here is on the cold-start path, so it issues as few ioctls as
//! it can: no `KVM_GET_SUPPORTED_CPUID`/`KVM_SET_CPUID2` (a CPL3 function
//! needs no CPUID leaves beyond KVM's defaults), no `KVM_GET_SREGS`, and
//! the initial registers travel through the `kvm_run` page
//! (`KVM_CAP_SYNC_REGS`) with the first `KVM_RUN` instead of separate
//! `KVM_SET_REGS`/`KVM_SET_SREGS` calls (~5 µs each on the project's
//! machines).

use crate::arch::{self, cpu::Privilege, system};
use crate::exit::GuestRegs;
use crate::kvm::{kvm, KvmError};
use crate::memory::{self, MemoryError};
use kvm_bindings::{kvm_sregs, kvm_userspace_memory_region};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd, VmFd};
use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Errors creating or driving a machine. All are host-side failures.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// KVM is not usable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The system area could not be written.
    #[error(transparent)]
    Arch(#[from] arch::ArchError),
    /// A KVM ioctl failed.
    #[error("{op} failed: {source}")]
    Ioctl {
        /// The operation.
        op: &'static str,
        /// errno from the kernel.
        source: kvm_ioctls::Error,
    },
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> MachineError {
    move |source| MachineError::Ioctl { op, source }
}

/// A VM, its memory and its single vCPU.
pub struct Machine {
    // Field order is drop order: the vCPU goes before the VM, and the VM
    // (which references the memory slot) before the memory.
    vcpu: VcpuFd,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    mem_size: u64,
    privilege: Privilege,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("mem_size", &self.mem_size)
            .field("privilege", &self.privilege)
            .finish()
    }
}

/// True when `xsave` is a standard-format XSAVE area holding only x87 and
/// SSE state (XSTATE_BV within bits 0-1, XCOMP_BV zero) with a valid MXCSR.
pub fn xsave_is_legacy(xsave: &kvm_bindings::kvm_xsave) -> bool {
    let r = &xsave.region;
    let xstate_bv = u64::from(r[128]) | (u64::from(r[129]) << 32);
    let xcomp_bv = u64::from(r[130]) | (u64::from(r[131]) << 32);
    let mxcsr = r[6];
    xstate_bv & !0x3 == 0 && xcomp_bv == 0 && mxcsr & !0xffff == 0
}

/// Creates an empty KVM VM (`KVM_CREATE_VM`), shareable between the thread
/// that sets up its memory and the one that creates its vCPU.
pub fn create_vm() -> Result<Arc<VmFd>, MachineError> {
    let vm = kvm()?.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    Ok(Arc::new(vm))
}

/// Creates the VM's single vCPU (`KVM_CREATE_VCPU`).
pub fn create_vcpu(vm: &VmFd) -> Result<VcpuFd, MachineError> {
    vm.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))
}

/// A VM with its memory registered and the system area written, waiting
/// for its vCPU. Building it and creating the vCPU are independent, so a
/// cold start can do both at once on two threads.
pub struct VmShell {
    // Field order is drop order: the VM (which references the memory slot)
    // goes before the memory.
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    mem_size: u64,
}

/// Allocates `mem_size` bytes of guest memory (already checked by
/// [`memory::checked_size`]) and writes the system area into it. Needs no
/// VM, so it can run while the VM and its vCPU are being created.
pub fn prepare_memory(mem_size: u64) -> Result<GuestMemoryMmap, MachineError> {
    let mem = memory::allocate(mem_size)?;
    arch::write_system_area(&mem, mem_size)?;
    Ok(mem)
}

impl VmShell {
    /// Allocates `mem_size` bytes (already checked by
    /// [`memory::checked_size`]), writes the system area and registers the
    /// memory with `vm`.
    pub fn new(vm: Arc<VmFd>, mem_size: u64) -> Result<VmShell, MachineError> {
        VmShell::register(vm, prepare_memory(mem_size)?, mem_size)
    }

    /// Registers memory made by [`prepare_memory`] with `vm`.
    ///
    /// On the project's machines `KVM_CREATE_VCPU` and
    /// `KVM_SET_USER_MEMORY_REGION` on the same VM serialize in the kernel
    /// when they overlap, so the cold path issues them one after the other
    /// on the vCPU thread, vCPU first.
    pub fn register(
        vm: Arc<VmFd>,
        mem: GuestMemoryMmap,
        mem_size: u64,
    ) -> Result<VmShell, MachineError> {
        Self::register_with_flags(vm, mem, mem_size, 0)
    }

    fn register_with_flags(
        vm: Arc<VmFd>,
        mem: GuestMemoryMmap,
        mem_size: u64,
        flags: u32,
    ) -> Result<VmShell, MachineError> {
        for (slot, region) in mem.iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the host range belongs to `mem`, which the shell (and
            // the machine built from it) drops only after its VM handle, and
            // it is registered in no other slot. Should another handle keep
            // the VM alive longer, KVM's MMU notifier (KVM_CAP_SYNC_MMU)
            // unmaps the slot's pages with the mapping: no use after free.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(VmShell { vm, mem, mem_size })
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Size of guest memory in bytes.
    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }
}

impl Machine {
    /// Creates a VM with `mem_size` bytes (checked and rounded by
    /// [`memory::checked_size`]), writes the system area and creates the
    /// vCPU, one step after the other. Call [`Machine::set_entry`] before
    /// running it.
    pub fn new(mem_size: u64, privilege: Privilege) -> Result<Machine, MachineError> {
        let mem_size = memory::checked_size(mem_size)?;
        let vm = create_vm()?;
        // Same order as the cold path (`runner::run_program`): vCPU, then
        // memory.
        let vcpu = create_vcpu(&vm)?;
        let shell = VmShell::new(vm, mem_size)?;
        Ok(Machine::assemble(shell, vcpu, privilege))
    }

    /// Like [`Machine::new`], with dirty-page logging on guest memory in
    /// KVM's manual-protect mode: [`Machine::written_pages`] reports every
    /// page the guest has written since the machine was created, and a page
    /// is write-protected (one fault) only until its first write. Warm
    /// pools reset instances with it.
    pub fn new_logged(mem_size: u64, privilege: Privilege) -> Result<Machine, MachineError> {
        let mem_size = memory::checked_size(mem_size)?;
        let vm = create_vm()?;
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            args: [
                u64::from(kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE),
                0,
                0,
                0,
            ],
            ..Default::default()
        };
        vm.enable_cap(&cap)
            .map_err(ioctl("KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)"))?;
        let vcpu = create_vcpu(&vm)?;
        let shell = VmShell::register_with_flags(
            vm,
            prepare_memory(mem_size)?,
            mem_size,
            kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES,
        )?;
        Ok(Machine::assemble(shell, vcpu, privilege))
    }

    /// The bitmap (one bit per 4 KiB page, 64 pages per word) of the pages
    /// the guest wrote since the machine was created, for a machine made
    /// by [`Machine::new_logged`] (`KVM_GET_DIRTY_LOG`). Writes by the
    /// monitor through its own mapping are not in it.
    pub fn written_pages(&self) -> Result<Vec<u64>, MachineError> {
        self.vm
            .get_dirty_log(0, self.mem_size as usize)
            .map_err(ioctl("KVM_GET_DIRTY_LOG"))
    }

    /// A machine from a shell and a vCPU created for the shell's VM.
    pub fn assemble(shell: VmShell, vcpu: VcpuFd, privilege: Privilege) -> Machine {
        Machine {
            vcpu,
            vm: shell.vm,
            mem: shell.mem,
            mem_size: shell.mem_size,
            privilege,
        }
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Size of guest memory in bytes.
    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    /// Exchanges the memory this machine reads and writes (and hands to
    /// the hypercall server) with `other`, of the same size: a VM with EPT
    /// views keeps the active view here. The caller moves KVM's slot.
    pub(crate) fn swap_memory(&mut self, other: &mut GuestMemoryMmap) {
        std::mem::swap(&mut self.mem, other);
    }

    /// Has KVM copy the general registers into the `kvm_run` page at every
    /// exit, so [`Machine::exit_registers`] reads them without an ioctl.
    pub(crate) fn report_registers_on_exit(&mut self) {
        self.vcpu.set_sync_valid_reg(SyncReg::Register);
    }

    /// The general registers at the last exit (after
    /// [`Machine::report_registers_on_exit`]).
    pub(crate) fn exit_registers(&self) -> kvm_bindings::kvm_regs {
        self.vcpu.sync_regs().regs
    }

    /// The KVM VM.
    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// Sets the registers the guest starts with; they reach KVM with the
    /// next [`Machine::run`] (no ioctl now).
    pub fn set_entry(&mut self, entry: u64, stack_top: u64, arg: u64) {
        let mut sregs = arch::cpu::initial_sregs(&kvm_sregs::default(), self.privilege);
        if self.privilege == Privilege::Kernel {
            // A kernel brings its own IDT; until it loads one, any exception
            // escalates to a triple fault, which the monitor reports.
            sregs.idt.base = 0;
            sregs.idt.limit = 0;
        }
        let regs = arch::cpu::initial_regs(entry, stack_top, arg);
        let sync = self.vcpu.sync_regs_mut();
        sync.regs = regs;
        sync.sregs = sregs;
        self.vcpu.set_sync_dirty_reg(SyncReg::Register);
        self.vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
    }

    /// Sets up the vCPU to continue an execution flow at CPL3 with `regs`
    /// (general registers, RIP, RSP; RFLAGS reduced to the user flags).
    pub fn set_user_registers(&mut self, regs: &crate::exit::GuestRegs) {
        self.set_entry(regs.rip, regs.rsp, 0);
        let g = regs.gpr;
        let sync = self.vcpu.sync_regs_mut();
        let r = &mut sync.regs;
        (r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp) =
            (g[0], g[1], g[2], g[3], g[4], g[5], g[6]);
        (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15) =
            (g[7], g[8], g[9], g[10], g[11], g[12], g[13], g[14]);
        r.rflags = crate::pivot::user_rflags(regs.rflags);
        self.vcpu.set_sync_dirty_reg(SyncReg::Register);
    }

    /// Loads general and special registers with the next entry, through the
    /// `kvm_run` page (no ioctl); used to reset pooled instances.
    pub fn set_registers_on_entry(
        &mut self,
        regs: &kvm_bindings::kvm_regs,
        sregs: &kvm_bindings::kvm_sregs,
    ) {
        let sync = self.vcpu.sync_regs_mut();
        sync.regs = *regs;
        sync.sregs = *sregs;
        self.vcpu.set_sync_dirty_reg(SyncReg::Register);
        self.vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
    }

    /// Loads the x87/SSE state from a standard-format XSAVE area holding
    /// only x87 and SSE state (`KVM_SET_XSAVE`).
    pub fn set_xsave(&mut self, region: &[u32; 1024]) -> Result<(), MachineError> {
        let xsave = kvm_bindings::kvm_xsave {
            region: *region,
            ..Default::default()
        };
        if !xsave_is_legacy(&xsave) {
            return Err(MachineError::Ioctl {
                op: "KVM_SET_XSAVE",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
        // SAFETY: `xsave_is_legacy` checked that only the x87 and SSE
        // components (the 512-byte legacy region and the 64-byte header)
        // are in use, so the kernel reads within the 4096-byte region.
        unsafe { self.vcpu.set_xsave(&xsave) }.map_err(ioctl("KVM_SET_XSAVE"))
    }

    /// Enters the guest until the next exit.
    pub fn run(&mut self) -> Result<VcpuExit<'_>, kvm_ioctls::Error> {
        self.vcpu.run()
    }

    /// Completes the instruction of the last I/O or MMIO exit: KVM finishes
    /// it only when `KVM_RUN` is entered again, so before the vCPU state
    /// is read for a snapshot, enter with `immediate_exit` set (KVM
    /// completes the access and returns at once with EINTR).
    pub fn complete_pending_io(&mut self) -> Result<(), MachineError> {
        self.vcpu.set_kvm_immediate_exit(1);
        let result = self.vcpu.run().map(|_| ());
        self.vcpu.set_kvm_immediate_exit(0);
        match result {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Ok(()) => Ok(()),
            Err(source) => Err(MachineError::Ioctl {
                op: "KVM_RUN (completing I/O)",
                source,
            }),
        }
    }

    /// Pointer to the vCPU's `immediate_exit` byte, for the interrupter.
    pub(crate) fn immediate_exit_ptr(&mut self) -> *mut u8 {
        &mut self.vcpu.get_kvm_run().immediate_exit
    }

    /// Clears `immediate_exit` after an interrupted run.
    pub(crate) fn clear_immediate_exit(&mut self) {
        self.vcpu.set_kvm_immediate_exit(0);
    }

    /// KVM's sub-error after an internal-error exit.
    pub(crate) fn internal_suberror(&mut self) -> u32 {
        let run = self.vcpu.get_kvm_run();
        // SAFETY: read only after a KVM_EXIT_INTERNAL_ERROR exit, when the
        // kernel filled the `internal` member of the union.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }

    /// The raw KVM registers (one `KVM_GET_REGS` and one `KVM_GET_SREGS`).
    pub fn kvm_registers(
        &self,
    ) -> Result<(kvm_bindings::kvm_regs, kvm_bindings::kvm_sregs), MachineError> {
        let regs = self.vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        let sregs = self.vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        Ok((regs, sregs))
    }

    /// The x87/SSE state as an XSAVE area (`KVM_GET_XSAVE`). On the
    /// project's KVM backend `KVM_GET_FPU`/`KVM_SET_FPU` do not reflect the
    /// guest's state (MXCSR reads 0, set values are lost at the next entry);
    /// the XSAVE interface does.
    pub fn xsave(&self) -> Result<kvm_bindings::kvm_xsave, MachineError> {
        self.vcpu.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))
    }

    /// The values of `indices` that KVM can read (`KVM_GET_MSRS`).
    pub fn msrs(&self, indices: &[u32]) -> Result<Vec<(u32, u64)>, MachineError> {
        let entries: Vec<kvm_bindings::kvm_msr_entry> = indices
            .iter()
            .map(|&index| kvm_bindings::kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            kvm_bindings::Msrs::from_entries(&entries).map_err(|_| MachineError::Ioctl {
                op: "KVM_GET_MSRS",
                source: kvm_ioctls::Error::new(libc::E2BIG),
            })?;
        let read = self
            .vcpu
            .get_msrs(&mut msrs)
            .map_err(ioctl("KVM_GET_MSRS"))?;
        Ok(msrs.as_slice()[..read]
            .iter()
            .map(|e| (e.index, e.data))
            .collect())
    }

    /// Loads a complete register state (general, special, x87/SSE, MSRs)
    /// with ioctls; used when restoring a snapshot. The XSAVE area must be
    /// in the standard format with only x87 and SSE state
    /// ([`xsave_is_legacy`]), the only state these guests have.
    pub fn set_state(
        &mut self,
        regs: &kvm_bindings::kvm_regs,
        sregs: &kvm_bindings::kvm_sregs,
        xsave: &kvm_bindings::kvm_xsave,
        msrs: &[(u32, u64)],
    ) -> Result<(), MachineError> {
        if !xsave_is_legacy(xsave) {
            return Err(MachineError::Ioctl {
                op: "KVM_SET_XSAVE",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
        // A register load still pending in the kvm_run page would overwrite
        // these at the next entry.
        self.vcpu.clear_sync_dirty_reg(SyncReg::Register);
        self.vcpu.clear_sync_dirty_reg(SyncReg::SystemRegister);
        self.vcpu.set_sregs(sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        self.vcpu.set_regs(regs).map_err(ioctl("KVM_SET_REGS"))?;
        // SAFETY: the kernel reads as much of the area as the features in
        // its XSTATE_BV need; `xsave_is_legacy` checked that only x87 and
        // SSE (the 512-byte legacy region plus the 64-byte header) are in
        // use, so it reads within the 4096-byte `region`.
        unsafe { self.vcpu.set_xsave(xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
        if !msrs.is_empty() {
            let entries: Vec<kvm_bindings::kvm_msr_entry> = msrs
                .iter()
                .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                })
                .collect();
            let list =
                kvm_bindings::Msrs::from_entries(&entries).map_err(|_| MachineError::Ioctl {
                    op: "KVM_SET_MSRS",
                    source: kvm_ioctls::Error::new(libc::E2BIG),
                })?;
            let written = self.vcpu.set_msrs(&list).map_err(ioctl("KVM_SET_MSRS"))?;
            if written != entries.len() {
                return Err(MachineError::Ioctl {
                    op: "KVM_SET_MSRS",
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                });
            }
        }
        Ok(())
    }

    /// The guest's registers now, for error reports.
    pub fn registers(&self) -> Result<GuestRegs, MachineError> {
        let (regs, sregs) = self.kvm_registers()?;
        Ok(GuestRegs::from_kvm(&regs, &sregs))
    }

    /// Writes raw bytes into guest memory (for tests and benchmarks that run
    /// hand-assembled code).
    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), MachineError> {
        arch::write_bytes(&self.mem, addr, bytes).map_err(MachineError::from)
    }

    /// Writes hand-assembled code at `addr` and maps its pages read-only
    /// and executable (guest memory is otherwise not executable).
    pub fn write_code(&self, addr: u64, code: &[u8]) -> Result<(), MachineError> {
        self.write(addr, code)?;
        arch::paging::protect_image(&self.mem, &[crate::loader::Segment::code(addr, code.len())])
            .map_err(MachineError::from)
    }

    /// The address of the exception stack top (for reading fault frames).
    pub fn exception_stack_top() -> u64 {
        system::EXCEPTION_STACK_TOP
    }

    /// Reads a little-endian u64 from guest memory.
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        use vm_memory::Bytes;
        self.mem.read_obj::<u64>(GuestAddress(addr)).ok()
    }
}
