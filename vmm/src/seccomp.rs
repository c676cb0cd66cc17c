//! The vCPU thread's syscall filter.
//!
//! A vCPU thread runs guest code and handles its exits; if a guest ever
//! found a bug in exit handling, the filter limits what the compromised
//! thread can do to the syscalls that running a guest needs. Anything else
//! fails with EPERM (refused, not killed, so an embedder's host function
//! that strays gets an error it can report instead of a dead process).

use seccompiler::{
    apply_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error, Clone)]
pub enum SeccompError {
    /// The filter did not compile (a bug in the rules).
    #[error("cannot build the vCPU seccomp filter: {0}")]
    Build(String),
    /// The kernel refused the filter.
    #[error("cannot install the vCPU seccomp filter: {0}")]
    Install(String),
}

/// `_IOC` request numbers of the KVM ioctls (type 0xAE), as in <linux/kvm.h>.
const fn kvm_ioctl(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// ioctls a vCPU thread issues. On the cold path the vCPU thread creates
/// its vCPU and registers the guest memory the caller prepared (in parallel
/// with the caller's work); then it runs the guest and reads registers when
/// a run ends in a fault, saving or loading the whole vCPU state for
/// snapshots, and reading the dirty log to reset pooled instances. Registering memory can only map memory this
/// process already owns into its own VM, so it widens nothing a
/// compromised vCPU thread could not already reach.
const VCPU_IOCTLS: [u64; 12] = [
    kvm_ioctl(0, 0x41, 0), // KVM_CREATE_VCPU
    kvm_ioctl(
        IOC_WRITE,
        0x46,
        size_of::<kvm_bindings::kvm_userspace_memory_region>(),
    ), // KVM_SET_USER_MEMORY_REGION
    kvm_ioctl(0, 0x80, 0), // KVM_RUN
    kvm_ioctl(IOC_READ, 0x81, size_of::<kvm_bindings::kvm_regs>()), // KVM_GET_REGS
    kvm_ioctl(IOC_READ, 0x83, size_of::<kvm_bindings::kvm_sregs>()), // KVM_GET_SREGS
    kvm_ioctl(IOC_WRITE, 0x82, size_of::<kvm_bindings::kvm_regs>()), // KVM_SET_REGS
    kvm_ioctl(IOC_WRITE, 0x84, size_of::<kvm_bindings::kvm_sregs>()), // KVM_SET_SREGS
    kvm_ioctl(IOC_READ, 0xa4, size_of::<kvm_bindings::kvm_xsave>()), // KVM_GET_XSAVE
    kvm_ioctl(IOC_WRITE, 0xa5, size_of::<kvm_bindings::kvm_xsave>()), // KVM_SET_XSAVE
    kvm_ioctl(
        IOC_READ | IOC_WRITE,
        0x88,
        size_of::<kvm_bindings::kvm_msrs>(),
    ), // KVM_GET_MSRS
    kvm_ioctl(IOC_WRITE, 0x89, size_of::<kvm_bindings::kvm_msrs>()), // KVM_SET_MSRS
    kvm_ioctl(IOC_WRITE, 0x42, size_of::<kvm_bindings::kvm_dirty_log>()), // KVM_GET_DIRTY_LOG
];

/// Syscalls allowed without conditions.
const ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_readv,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rseq,
    // A host function waiting on a shared-memory channel checks whether
    // the peer process still lives (icf::channel::ring): it opens a pidfd
    // and polls it, nothing else.
    libc::SYS_pidfd_open,
    // Capturing an execution flow at a safe point (`pivot`) asks which
    // guest pages the host ever backed, to skip the rest.
    libc::SYS_mincore,
];

fn build() -> Result<BpfProgram, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError::Build(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    // The EPT-view host's vCPU thread, with vmfunc-kmod, asks where the
    // vCPU is and puts it into a view (only on /dev/xos-vmfunc, whose
    // module checks that the VM is this process's).
    let module_ioctls = [crate::vmfunc::VCPU_STATUS, crate::vmfunc::SET_VCPU_VIEW];
    let ioctl_rules = VCPU_IOCTLS
        .iter()
        .chain(module_ioctls.iter())
        .map(|&request| {
            SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                request,
            )
            .map_err(err)?])
            .map_err(err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    // Signals only to this process's own threads (a panic's abort, the
    // runtime's own kicks), never to other processes.
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    rules.insert(
        libc::SYS_tgkill,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            pid,
        )
        .map_err(err)?])
        .map_err(err)?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

/// The compiled filter (built once per process; it names this process's
/// pid, which a forked child does not share: children never run guests).
fn program() -> Result<&'static BpfProgram, SeccompError> {
    static PROGRAM: OnceLock<Result<BpfProgram, SeccompError>> = OnceLock::new();
    PROGRAM.get_or_init(build).as_ref().map_err(Clone::clone)
}

/// Installs the filter on the calling thread; it cannot be removed.
pub fn apply_vcpu_filter() -> Result<(), SeccompError> {
    apply_filter(program()?).map_err(|e| SeccompError::Install(e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(super::VCPU_IOCTLS[0], 0xae41);
        assert_eq!(super::VCPU_IOCTLS[1], 0x4020_ae46);
        assert_eq!(super::VCPU_IOCTLS[2], 0xae80);
        assert_eq!(super::VCPU_IOCTLS[3], 0x8090_ae81);
        assert_eq!(super::VCPU_IOCTLS[4], 0x8138_ae83);
        assert_eq!(super::VCPU_IOCTLS[5], 0x4090_ae82);
        assert_eq!(super::VCPU_IOCTLS[6], 0x4138_ae84);
        assert_eq!(super::VCPU_IOCTLS[7], 0x9000_aea4);
        assert_eq!(super::VCPU_IOCTLS[8], 0x5000_aea5);
        assert_eq!(super::VCPU_IOCTLS[9], 0xc008_ae88);
        assert_eq!(super::VCPU_IOCTLS[10], 0x4008_ae89);
        assert_eq!(super::VCPU_IOCTLS[11], 0x4010_ae42);
    }

    #[test]
    fn filter_builds() {
        super::build().expect("filter compiles");
    }
}
