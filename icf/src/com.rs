//! Communication mechanisms and the `register_com` table: which mechanisms
//! can connect ICs of which two kinds.

use std::collections::BTreeMap;

/// A way for execution flows in two ICs to exchange messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ComMechanism {
    /// The guest exits to the monitor, which relays the message (the
    /// hypercall ABI: `HOST_CALL` to a host function).
    HypercallRelay,
    /// A shared-memory ring (memfd) whose waiter spins.
    ShmRingPoll,
    /// A shared-memory ring (memfd) whose waiter sleeps on a futex.
    ShmRingFutex,
    /// A pair of pipes.
    Pipe,
    /// A Unix stream socket pair.
    UnixSocket,
    /// A TCP connection on 127.0.0.1.
    Tcp,
}

impl ComMechanism {
    /// Short name for tables and benchmark records.
    pub fn name(&self) -> &'static str {
        match self {
            ComMechanism::HypercallRelay => "hypercall",
            ComMechanism::ShmRingPoll => "shm-poll",
            ComMechanism::ShmRingFutex => "shm-futex",
            ComMechanism::Pipe => "pipe",
            ComMechanism::UnixSocket => "unix",
            ComMechanism::Tcp => "tcp",
        }
    }

    /// One line saying how it works.
    pub fn description(&self) -> &'static str {
        match self {
            ComMechanism::HypercallRelay => {
                "the guest's doorbell write (a VM exit, or a trap for a thread IC) reaches the monitor, which calls the peer and resumes the guest"
            }
            ComMechanism::ShmRingPoll => {
                "two rings in a shared memfd; the waiting side spins on the indices"
            }
            ComMechanism::ShmRingFutex => {
                "two rings in a shared memfd; the waiting side spins briefly, then sleeps on a futex"
            }
            ComMechanism::Pipe => "one pipe per direction, length-prefixed messages",
            ComMechanism::UnixSocket => "a Unix stream socket pair, length-prefixed messages",
            ComMechanism::Tcp => "a TCP connection on 127.0.0.1 without Nagle, length-prefixed messages",
        }
    }
}

/// Mechanisms registered per unordered pair of IC kinds. `"host"` names the
/// monitor process itself (the embedder).
#[derive(Clone, Debug, Default)]
pub struct ComTable {
    pairs: BTreeMap<(String, String), Vec<ComMechanism>>,
}

fn key(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl ComTable {
    /// `register_com(a, b)`: `mechanism` can connect ICs of kinds `a` and
    /// `b` (in either direction). Registering twice is harmless.
    pub fn register(&mut self, a: &str, b: &str, mechanism: ComMechanism) {
        let list = self.pairs.entry(key(a, b)).or_default();
        if !list.contains(&mechanism) {
            list.push(mechanism);
        }
    }

    /// Mechanisms registered between `a` and `b`.
    pub fn between(&self, a: &str, b: &str) -> &[ComMechanism] {
        self.pairs.get(&key(a, b)).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every registered pair with its mechanisms.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str, &[ComMechanism])> {
        self.pairs
            .iter()
            .map(|((a, b), m)| (a.as_str(), b.as_str(), m.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_unordered_and_deduplicated() {
        let mut t = ComTable::default();
        t.register("virtine", "host", ComMechanism::HypercallRelay);
        t.register("host", "virtine", ComMechanism::HypercallRelay);
        assert_eq!(
            t.between("host", "virtine"),
            &[ComMechanism::HypercallRelay]
        );
        assert_eq!(
            t.between("virtine", "host"),
            &[ComMechanism::HypercallRelay]
        );
        assert!(t.between("virtine", "virtine").is_empty());
        assert_eq!(t.pairs().count(), 1);
    }
}
