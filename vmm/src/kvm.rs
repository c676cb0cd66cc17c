//! The process-wide handle to `/dev/kvm`.
//!
//! Opening `/dev/kvm` and asking it about capabilities is done once per
//! process: the answer does not change, and every per-VM microsecond counts
//! for cold starts.

use kvm_ioctls::{Cap, Kvm};
use std::sync::OnceLock;

/// Why KVM cannot be used, phrased so that a user knows what to do.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvmError {
    /// `/dev/kvm` does not exist.
    #[error("/dev/kvm: no such device (load the kvm module, or run on a host with virtualization enabled)")]
    Missing,
    /// `/dev/kvm` exists but this user may not open it.
    #[error("/dev/kvm: permission denied (add your user to the 'kvm' group or run as root)")]
    PermissionDenied,
    /// Opening failed for another reason.
    #[error("/dev/kvm: cannot open: {0}")]
    Open(String),
    /// The KVM API version is not the stable one (12).
    #[error("/dev/kvm: KVM API version {0}, but 12 is required")]
    ApiVersion(i32),
    /// A capability the monitor relies on is missing.
    #[error("/dev/kvm: the capability {0} is missing")]
    MissingCap(&'static str),
}

static KVM: OnceLock<Result<Kvm, KvmError>> = OnceLock::new();

fn open() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::Missing,
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
        _ => KvmError::Open(e.to_string()),
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(KvmError::ApiVersion(version));
    }
    for (cap, name) in [
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        (Cap::SyncRegs, "KVM_CAP_SYNC_REGS"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// The shared KVM handle, opened and checked on first use.
pub fn kvm() -> Result<&'static Kvm, KvmError> {
    KVM.get_or_init(open).as_ref().map_err(Clone::clone)
}

/// Checks that KVM is usable, without creating a VM.
pub fn probe() -> Result<(), KvmError> {
    kvm().map(|_| ())
}

/// The KVM policy of the project's test suites: true when tests that need
/// KVM should run. Without usable KVM they skip with a loud message on
/// stderr, unless `XOS_REQUIRE_KVM=1` (CI), where a missing KVM is a
/// failure: this panics with the probe's reason.
pub fn available_for_tests() -> bool {
    match probe() {
        Ok(()) => true,
        Err(e) if std::env::var("XOS_REQUIRE_KVM").as_deref() == Ok("1") => {
            panic!("XOS_REQUIRE_KVM=1 but KVM is unusable: {e}")
        }
        Err(e) => {
            eprintln!(
                "\n!!! SKIPPING A KVM TEST: {e} (set XOS_REQUIRE_KVM=1 to make this a failure)\n"
            );
            false
        }
    }
}
