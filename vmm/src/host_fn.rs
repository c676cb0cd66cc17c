//! Host functions an embedder offers to guests (`HOST_CALL`).

use std::collections::HashMap;
use std::sync::Arc;

/// A host function: bytes in, bytes out, or an error message.
pub type HostFn = dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync;

/// Host functions by name. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct HostFunctions {
    map: HashMap<String, Arc<HostFn>>,
}

impl std::fmt::Debug for HostFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.map.keys()).finish()
    }
}

impl HostFunctions {
    /// No functions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` as `name`, replacing an earlier one of that name.
    pub fn register<F>(&mut self, name: impl Into<String>, f: F)
    where
        F: Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    {
        self.map.insert(name.into(), Arc::new(f));
    }

    /// The function named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<HostFn>> {
        self.map.get(name)
    }

    /// Registered names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }
}
