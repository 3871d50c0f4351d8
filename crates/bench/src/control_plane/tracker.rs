//! Which changes of a churn round every agent has seen, and when.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use myelin_policy::Identity;

/// One churn round: the entries it writes and when each agent saw them.
#[derive(Debug, Default)]
pub struct Round {
    /// Address → (identity it gets, index of the change).
    expected: HashMap<IpAddr, (Identity, usize)>,
    /// When each change's first write started (monotonic ns).
    issued: Vec<AtomicU64>,
    /// When the last agent saw each change.
    last_seen: Vec<AtomicU64>,
    /// Agent × change sightings so far.
    observations: AtomicUsize,
    /// Each sighting's delay from the change's issue, in ns.
    delays: Mutex<Vec<u64>>,
}

impl Round {
    /// A round writing `changes` (address, identity), in this order.
    pub fn new(changes: &[(IpAddr, Identity)]) -> Self {
        Self {
            expected: changes
                .iter()
                .enumerate()
                .map(|(i, (ip, id))| (*ip, (*id, i)))
                .collect(),
            issued: changes.iter().map(|_| AtomicU64::new(0)).collect(),
            last_seen: changes.iter().map(|_| AtomicU64::new(0)).collect(),
            observations: AtomicUsize::new(0),
            delays: Mutex::new(Vec::new()),
        }
    }

    /// Change `index`'s first write starts now.
    pub fn issue(&self, index: usize, at: u64) {
        if let Some(slot) = self.issued.get(index) {
            slot.store(at, Ordering::Release);
        }
    }

    /// Sightings so far.
    pub fn observations(&self) -> usize {
        self.observations.load(Ordering::Acquire)
    }

    /// The changes written.
    pub fn len(&self) -> usize {
        self.issued.len()
    }

    /// Per change: from its issue until the last agent had it (ns).
    pub fn all_agents_delays(&self) -> Vec<u64> {
        self.issued
            .iter()
            .zip(&self.last_seen)
            .map(|(i, l)| {
                l.load(Ordering::Acquire)
                    .saturating_sub(i.load(Ordering::Acquire))
            })
            .collect()
    }

    /// When the last sighting of the round happened (monotonic ns).
    pub fn last_sighting(&self) -> u64 {
        self.last_seen
            .iter()
            .map(|l| l.load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }

    /// Every sighting's delay (ns).
    pub fn sighting_delays(&self) -> Vec<u64> {
        self.delays.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

/// The current round, shared by every agent's watch.
#[derive(Debug, Default)]
pub struct Tracker {
    round: RwLock<Arc<Round>>,
}

impl Tracker {
    /// Starts following `round`.
    pub fn start(&self, round: Arc<Round>) {
        if let Ok(mut current) = self.round.write() {
            *current = round;
        }
    }

    /// An agent has `ip` at `identity` since `at` (monotonic ns).
    pub fn saw(&self, ip: IpAddr, identity: Identity, at: u64) {
        let Ok(round) = self.round.read().map(|r| r.clone()) else {
            return;
        };
        let Some(&(wanted, index)) = round.expected.get(&ip) else {
            return;
        };
        if wanted != identity {
            return;
        }
        round.last_seen[index].fetch_max(at, Ordering::AcqRel);
        let issued = round.issued[index].load(Ordering::Acquire);
        if let Ok(mut delays) = round.delays.lock() {
            delays.push(at.saturating_sub(issued));
        }
        round.observations.fetch_add(1, Ordering::AcqRel);
    }
}
