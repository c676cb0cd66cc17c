//! The registry of isolation context factories (`get_icfs`), the
//! `register_com` table, and `mutate` through the process pivot.

use crate::com::{ComMechanism, ComTable};
use crate::error::IcfError;
use crate::factory::{Availability, IsolationContext, IsolationContextFactory};
use std::sync::Arc;

/// Errors resolving a factory by name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// No factory of that name.
    #[error("unknown isolation context factory '{name}'; registered: {}", known.join(", "))]
    Unknown {
        /// The name asked for.
        name: String,
        /// Registered names.
        known: Vec<String>,
    },
    /// The factory exists but its probe failed.
    #[error("the '{name}' isolation context factory is unavailable here: {reason}")]
    Unavailable {
        /// The factory.
        name: String,
        /// Its probe's reason.
        reason: String,
    },
    /// A factory of that name is already registered.
    #[error("an isolation context factory named '{0}' is already registered")]
    Duplicate(String),
}

/// A registered factory as `get_icfs` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IcfInfo {
    /// Name.
    pub name: &'static str,
    /// What its ICs are.
    pub description: &'static str,
    /// Its probe's result.
    pub availability: Availability,
    /// Which of its ways it uses here, and why ([`IsolationContextFactory::mode`]).
    pub mode: Option<String>,
}

/// The VIC layer's registry.
#[derive(Clone, Default)]
pub struct Registry {
    factories: Vec<Arc<dyn IsolationContextFactory>>,
    com: ComTable,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry with every factory built into xos-vmm and their
    /// communication mechanisms. The process factory needs a helper
    /// program ([`Registry::with_process_helper`]); without one it is
    /// registered but unavailable.
    pub fn builtin() -> Self {
        Self::with_process_helper(None)
    }

    /// Like [`Registry::builtin`], with the program process ICs exec.
    pub fn with_process_helper(helper: Option<crate::process::Helper>) -> Self {
        let mut r = Registry::new();
        // Registering distinct names into an empty registry cannot collide.
        let _ = r.register(Arc::new(crate::virtine::VirtineFactory));
        let _ = r.register(Arc::new(crate::vm::VmFactory));
        let process = match helper {
            Some(h) => crate::process::ProcessFactory::new(h),
            None => crate::process::ProcessFactory::default(),
        };
        let _ = r.register(Arc::new(process));
        let _ = r.register(Arc::new(crate::thread::ThreadFactory));
        let _ = r.register(Arc::new(crate::ept_view::EptViewFactory));
        // EPT views: a connected pair calls through the trampoline; a view
        // calls host functions like any VM.
        r.register_com("ept-view", "ept-view", ComMechanism::ViewCall);
        r.register_com("ept-view", "host", ComMechanism::HypercallRelay);
        // An EPT view maps a channel window like any VM (at a
        // guest-physical address of its own).
        for other in ["ept-view", "virtine", "vm", "thread", "process", "host"] {
            r.register_com("ept-view", other, ComMechanism::ShmRingPoll);
            r.register_com("ept-view", other, ComMechanism::ShmRingFutex);
        }
        // A process IC's hypercalls are served inside its own process: the
        // embedder's host functions are not reachable from it (yet).
        for kind in ["virtine", "vm", "thread"] {
            r.register_com(kind, "host", ComMechanism::HypercallRelay);
        }
        // IC to IC: each end's monitor relays over a channel attached as
        // host functions (`channel::attach`). Thread ICs run one at a time
        // per process, so never two at once.
        r.register_com("virtine", "virtine", ComMechanism::HypercallRelay);
        r.register_com("virtine", "thread", ComMechanism::HypercallRelay);
        // Channel windows: one ring whose sides are mapped into both ICs
        // (or one IC and a monitor thread), spinning or sleeping. Every
        // kind maps a window; two thread ICs never run at once.
        for (a, b) in [
            ("virtine", "virtine"),
            ("virtine", "vm"),
            ("virtine", "thread"),
            ("virtine", "process"),
            ("vm", "vm"),
            ("vm", "thread"),
            ("vm", "process"),
            ("thread", "process"),
            ("process", "process"),
            ("virtine", "host"),
            ("vm", "host"),
            ("thread", "host"),
            ("process", "host"),
        ] {
            r.register_com(a, b, ComMechanism::ShmRingPoll);
            r.register_com(a, b, ComMechanism::ShmRingFutex);
        }
        // The virtio channel device: VM ICs only, served by a device
        // thread of the monitor; between two VM ICs, two devices bridged
        // by a ring.
        for (a, b) in [
            ("virtine", "virtine"),
            ("virtine", "vm"),
            ("vm", "vm"),
            ("virtine", "host"),
            ("vm", "host"),
        ] {
            r.register_com(a, b, ComMechanism::Virtio);
        }
        r
    }

    /// Adds a factory. Names are unique.
    pub fn register(
        &mut self,
        factory: Arc<dyn IsolationContextFactory>,
    ) -> Result<(), RegistryError> {
        if self.factories.iter().any(|f| f.name() == factory.name()) {
            return Err(RegistryError::Duplicate(factory.name().to_owned()));
        }
        self.factories.push(factory);
        Ok(())
    }

    /// `register_com(a, b)`.
    pub fn register_com(&mut self, a: &str, b: &str, mechanism: ComMechanism) {
        self.com.register(a, b, mechanism);
    }

    /// The communication table.
    pub fn com(&self) -> &ComTable {
        &self.com
    }

    /// `get_icfs`: every registered factory with its availability, probed now.
    pub fn get_icfs(&self) -> Vec<IcfInfo> {
        self.factories
            .iter()
            .map(|f| IcfInfo {
                name: f.name(),
                description: f.description(),
                availability: f.init(),
                mode: f.mode(),
            })
            .collect()
    }

    /// The factory named `name`, if registered and available.
    pub fn resolve(&self, name: &str) -> Result<Arc<dyn IsolationContextFactory>, RegistryError> {
        let Some(f) = self.factories.iter().find(|f| f.name() == name) else {
            return Err(RegistryError::Unknown {
                name: name.to_owned(),
                known: self.factories.iter().map(|f| f.name().to_owned()).collect(),
            });
        };
        match f.init() {
            Availability::Available => Ok(f.clone()),
            Availability::Unavailable(reason) => Err(RegistryError::Unavailable {
                name: name.to_owned(),
                reason,
            }),
        }
    }

    /// `mutate(a, b)`: carries the execution flow of `ic`, stopped at a safe
    /// point, into a new IC of kind `to`, through the process pivot
    /// (`convert_to_process` of its factory, then `convert_from_process` of
    /// the target's). An IC not stopped at a safe point gives
    /// [`IcfError::NotAtSafePoint`]; kinds that cannot convert give
    /// [`IcfError::Unsupported`].
    pub fn mutate(
        &self,
        ic: Box<dyn IsolationContext>,
        to: &str,
    ) -> Result<Box<dyn IsolationContext>, MutateError> {
        let from = self.resolve(ic.kind())?;
        let target = self.resolve(to)?;
        // Also to the same kind: the execution flow goes on in a new IC.
        let image = from.convert_to_process(ic)?;
        Ok(target.convert_from_process(image)?)
    }
}

/// Errors of [`Registry::mutate`].
#[derive(Debug, thiserror::Error)]
pub enum MutateError {
    /// A kind could not be resolved.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A factory refused or failed the conversion.
    #[error(transparent)]
    Icf(#[from] IcfError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factory::IcSpec;

    struct Fake(&'static str, Availability);
    impl IsolationContextFactory for Fake {
        fn name(&self) -> &'static str {
            self.0
        }
        fn description(&self) -> &'static str {
            "test"
        }
        fn init(&self) -> Availability {
            self.1.clone()
        }
        fn create(&self, _: IcSpec) -> Result<Box<dyn IsolationContext>, IcfError> {
            Err(IcfError::Unsupported {
                icf: self.0,
                operation: "ic_create",
            })
        }
    }

    #[test]
    fn resolve_reports_unknown_and_unavailable_factories() {
        let mut r = Registry::new();
        r.register(Arc::new(Fake("a", Availability::Available)))
            .unwrap();
        r.register(Arc::new(Fake(
            "b",
            Availability::Unavailable("no /dev/b".into()),
        )))
        .unwrap();
        assert!(r.resolve("a").is_ok());
        let unknown = r.resolve("zzz").err().unwrap();
        assert_eq!(
            unknown.to_string(),
            "unknown isolation context factory 'zzz'; registered: a, b"
        );
        let unavailable = r.resolve("b").err().unwrap();
        assert!(
            unavailable.to_string().contains("no /dev/b"),
            "{unavailable}"
        );
        assert_eq!(
            r.register(Arc::new(Fake("a", Availability::Available))),
            Err(RegistryError::Duplicate("a".into()))
        );
        assert_eq!(r.get_icfs().len(), 2);
    }

    #[test]
    fn builtin_registers_the_virtine_factory_and_its_mechanism() {
        let r = Registry::builtin();
        assert!(r.get_icfs().iter().any(|i| i.name == "virtine"));
        assert_eq!(
            r.com().between("host", "virtine"),
            &[
                ComMechanism::HypercallRelay,
                ComMechanism::ShmRingPoll,
                ComMechanism::ShmRingFutex,
                ComMechanism::Virtio
            ]
        );
        // Every IC kind reaches every other through a window, except two
        // thread ICs (one runs at a time).
        for (a, b) in [
            ("process", "virtine"),
            ("thread", "process"),
            ("process", "host"),
        ] {
            assert!(r.com().between(a, b).contains(&ComMechanism::ShmRingPoll));
        }
        assert!(r.com().between("thread", "thread").is_empty());
    }
}
