//! Communication mechanisms and the `register_com` table: which mechanisms
//! can connect ICs of which two kinds.

use std::collections::BTreeMap;
use std::time::Duration;

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
    /// A virtio channel device (two virtqueues) in a VM IC, served by a
    /// device thread that forwards to the peer over a shared-memory ring.
    Virtio,
    /// A call from one EPT view into its connected peer view through the
    /// trampoline (`ept-view` ICs of one VM).
    ViewCall,
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
            ComMechanism::Virtio => "virtio",
            ComMechanism::ViewCall => "view-call",
        }
    }

    /// Every mechanism, in a fixed order.
    pub const ALL: [ComMechanism; 8] = [
        ComMechanism::HypercallRelay,
        ComMechanism::ShmRingPoll,
        ComMechanism::ShmRingFutex,
        ComMechanism::Pipe,
        ComMechanism::UnixSocket,
        ComMechanism::Tcp,
        ComMechanism::Virtio,
        ComMechanism::ViewCall,
    ];

    /// The mechanism whose [`ComMechanism::name`] is `name`.
    pub fn from_name(name: &str) -> Option<ComMechanism> {
        Self::ALL.into_iter().find(|m| m.name() == name)
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
            ComMechanism::Virtio => {
                "a virtio-mmio device with two virtqueues in the VM; its device thread polls them and forwards over a shared-memory ring"
            }
            ComMechanism::ViewCall => {
                "the caller's vCPU moves into the callee's EPT view through a trampoline (VMFUNC, or an exit and a memory-slot switch each way) and runs its handler on the callee's stack"
            }
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

/// Measured round-trip cost of each mechanism per pair of IC kinds (see
/// [`ComTable::choose`]); filled by whoever measures, e.g. the CLI's cache.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ComCosts {
    costs: BTreeMap<(String, String, ComMechanism), Duration>,
}

impl ComCosts {
    /// Records the cost of one `mechanism` call between `a` and `b`.
    pub fn insert(&mut self, a: &str, b: &str, mechanism: ComMechanism, cost: Duration) {
        let (a, b) = key(a, b);
        self.costs.insert((a, b, mechanism), cost);
    }

    /// The recorded cost, if measured.
    pub fn get(&self, a: &str, b: &str, mechanism: ComMechanism) -> Option<Duration> {
        let (a, b) = key(a, b);
        self.costs.get(&(a, b, mechanism)).copied()
    }
}

/// Why [`ComTable::choose`] picked its mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChoiceReason {
    /// The caller asked for it.
    Requested,
    /// The cheapest measured one.
    Cheapest,
    /// Nothing was measured: the first registered one.
    Unmeasured,
}

/// The mechanism chosen for a pair of IC kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The mechanism.
    pub mechanism: ComMechanism,
    /// Its measured cost, if known.
    pub cost: Option<Duration>,
    /// Why it was chosen.
    pub reason: ChoiceReason,
}

/// Why no mechanism can connect two IC kinds.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ComError {
    /// Nothing is registered for the pair.
    #[error("no communication mechanism is registered between '{a}' and '{b}' ICs; `xos-vmm icfs --com` lists the pairs that have one")]
    NoMechanism {
        /// One kind.
        a: String,
        /// The other kind.
        b: String,
    },
    /// The caller asked for a mechanism the pair does not have.
    #[error("the {requested} mechanism cannot connect '{a}' and '{b}' ICs; registered for this pair: {}", registered.join(", "))]
    NotRegistered {
        /// One kind.
        a: String,
        /// The other kind.
        b: String,
        /// The mechanism asked for.
        requested: &'static str,
        /// The pair's mechanisms.
        registered: Vec<&'static str>,
    },
}

impl ComTable {
    /// The runtime's choice of mechanism between ICs of kinds `a` and `b`:
    /// `requested` if given (and registered for the pair), otherwise the
    /// cheapest one with a measured cost in `costs`, otherwise the first
    /// registered.
    pub fn choose(
        &self,
        a: &str,
        b: &str,
        costs: &ComCosts,
        requested: Option<ComMechanism>,
    ) -> Result<Choice, ComError> {
        let registered = self.between(a, b);
        if registered.is_empty() {
            return Err(ComError::NoMechanism {
                a: a.to_owned(),
                b: b.to_owned(),
            });
        }
        if let Some(m) = requested {
            if !registered.contains(&m) {
                return Err(ComError::NotRegistered {
                    a: a.to_owned(),
                    b: b.to_owned(),
                    requested: m.name(),
                    registered: registered.iter().map(ComMechanism::name).collect(),
                });
            }
            return Ok(Choice {
                mechanism: m,
                cost: costs.get(a, b, m),
                reason: ChoiceReason::Requested,
            });
        }
        let cheapest = registered
            .iter()
            .filter_map(|&m| costs.get(a, b, m).map(|c| (c, m)))
            .min();
        Ok(match cheapest {
            Some((cost, mechanism)) => Choice {
                mechanism,
                cost: Some(cost),
                reason: ChoiceReason::Cheapest,
            },
            None => Choice {
                mechanism: registered[0],
                cost: None,
                reason: ChoiceReason::Unmeasured,
            },
        })
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

    #[test]
    fn the_cheapest_measured_mechanism_wins_unless_one_is_requested() {
        let mut t = ComTable::default();
        t.register("thread", "thread", ComMechanism::Pipe);
        t.register("thread", "thread", ComMechanism::ShmRingFutex);
        t.register("thread", "thread", ComMechanism::Tcp);
        let mut costs = ComCosts::default();
        let unmeasured = t.choose("thread", "thread", &costs, None).unwrap();
        assert_eq!(unmeasured.mechanism, ComMechanism::Pipe);
        assert_eq!(unmeasured.reason, ChoiceReason::Unmeasured);

        costs.insert(
            "thread",
            "thread",
            ComMechanism::Pipe,
            Duration::from_micros(7),
        );
        costs.insert(
            "thread",
            "thread",
            ComMechanism::ShmRingFutex,
            Duration::from_micros(1),
        );
        let best = t.choose("thread", "thread", &costs, None).unwrap();
        assert_eq!(best.mechanism, ComMechanism::ShmRingFutex);
        assert_eq!(best.cost, Some(Duration::from_micros(1)));
        assert_eq!(best.reason, ChoiceReason::Cheapest);

        let asked = t
            .choose("thread", "thread", &costs, Some(ComMechanism::Tcp))
            .unwrap();
        assert_eq!(asked.mechanism, ComMechanism::Tcp);
        assert_eq!(asked.cost, None);
        assert_eq!(asked.reason, ChoiceReason::Requested);
    }

    #[test]
    fn impossible_choices_are_typed_errors() {
        let mut t = ComTable::default();
        t.register("virtine", "host", ComMechanism::HypercallRelay);
        let costs = ComCosts::default();
        let e = t
            .choose("virtine", "host", &costs, Some(ComMechanism::Pipe))
            .unwrap_err();
        assert_eq!(
            e,
            ComError::NotRegistered {
                a: "virtine".into(),
                b: "host".into(),
                requested: "pipe",
                registered: vec!["hypercall"],
            }
        );
        assert!(e
            .to_string()
            .contains("registered for this pair: hypercall"));
        assert!(matches!(
            t.choose("process", "virtine", &costs, None),
            Err(ComError::NoMechanism { .. })
        ));
    }

    #[test]
    fn names_round_trip() {
        for m in ComMechanism::ALL {
            assert_eq!(ComMechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(ComMechanism::from_name("carrier-pigeon"), None);
    }
}
