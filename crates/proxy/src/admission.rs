//! Per-source connection limits: one client address, or the clients of one security
//! identity, may hold only a share of the proxy's connection slots, so a pod that opens
//! thousands of idle connections cannot take the slots of every other pod.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::OwnedSemaphorePermit;

use crate::memory::MemoryTrim;
use crate::metrics::RefusedReason;

/// Connections held per client address and per identity.
#[derive(Debug)]
pub struct Admission {
    per_source: usize,
    per_identity: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    sources: HashMap<IpAddr, usize>,
    identities: HashMap<u32, usize>,
}

/// A connection admitted by [`Admission::admit`]; gives its share back when dropped.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    source: IpAddr,
    identity: Option<u32>,
}

impl Admission {
    /// Limits of `per_source` connections per client address and `per_identity` per
    /// identity.
    pub fn new(per_source: usize, per_identity: usize) -> Self {
        Self {
            per_source,
            per_identity,
            held: Mutex::new(Held::default()),
        }
    }

    /// Admits a connection from `source`, of `identity` when the snapshot knows it, or says
    /// which limit it is over.
    pub fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        identity: Option<u32>,
    ) -> Result<Admitted, RefusedReason> {
        let mut held = self.lock();
        if held.sources.get(&source).copied().unwrap_or(0) >= self.per_source {
            return Err(RefusedReason::PerSource);
        }
        if let Some(identity) = identity
            && held.identities.get(&identity).copied().unwrap_or(0) >= self.per_identity
        {
            return Err(RefusedReason::PerIdentity);
        }
        *held.sources.entry(source).or_default() += 1;
        if let Some(identity) = identity {
            *held.identities.entry(identity).or_default() += 1;
        }
        Ok(Admitted {
            admission: self.clone(),
            source,
            identity,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // The counts stay consistent under a panic elsewhere: each change is one statement.
        match self.held.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut held = self.admission.lock();
        release(&mut held.sources, self.source);
        if let Some(identity) = self.identity {
            release(&mut held.identities, identity);
        }
    }
}

/// Counts one connection less for `key`, forgetting keys that hold none (clients come and
/// go; the maps must not grow with every address ever seen).
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(count) = counts.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

/// A client connection's place in the proxy: its global connection slot, its share of its
/// source's and identity's limits, and its count in the connections gauge and in the
/// memory trim's tally. Held by the connection and any upgraded tunnel, so it is given back
/// when both are done.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    _admitted: Option<Admitted>,
    connections: Gauge,
    memory: Arc<MemoryTrim>,
}

impl Slot {
    /// Takes the slot, counting the connection in `connections` and `memory`.
    pub(crate) fn new(
        permit: OwnedSemaphorePermit,
        admitted: Option<Admitted>,
        connections: Gauge,
        memory: Arc<MemoryTrim>,
    ) -> Self {
        connections.inc();
        memory.opened();
        Self {
            _permit: permit,
            _admitted: admitted,
            connections,
            memory,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.dec();
        self.memory.closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_source_over_its_share_is_refused_and_others_are_not() {
        let admission = Arc::new(Admission::new(2, 3));
        let first = admission.admit(ip(1), Some(7)).expect("first");
        let _second = admission.admit(ip(1), Some(7)).expect("second");
        assert_eq!(
            admission.admit(ip(1), Some(7)).err(),
            Some(RefusedReason::PerSource)
        );
        let _third = admission
            .admit(ip(2), Some(7))
            .expect("another pod of the identity");
        assert_eq!(
            admission.admit(ip(3), Some(7)).err(),
            Some(RefusedReason::PerIdentity)
        );
        assert!(admission.admit(ip(3), Some(8)).is_ok(), "another identity");
        assert!(admission.admit(ip(3), None).is_ok(), "unknown identity");
        drop(first);
        assert!(admission.admit(ip(1), Some(7)).is_ok(), "a slot came back");
    }

    #[test]
    fn released_sources_are_forgotten() {
        let admission = Arc::new(Admission::new(1, 1));
        for last in 0..100 {
            drop(
                admission
                    .admit(ip(last), Some(u32::from(last)))
                    .expect("admit"),
            );
        }
        let held = admission.lock();
        assert!(held.sources.is_empty() && held.identities.is_empty());
    }
}
