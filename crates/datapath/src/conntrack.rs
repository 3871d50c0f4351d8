//! Conntrack garbage collection: one walk of the map per round, and a handle
//! of its own on the pinned map so that the walk holds nothing the agent's
//! state owner, its flows or its API calls wait for.

use std::path::Path;

use aya::maps::{Map, MapData};
use myelin_common::maps::names;
use myelin_common::{CtEntry, CtKey};

use crate::error::DatapathError;
use crate::maps::{Hash, map_error, removed};

/// What one collection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Entries in the map before the collection.
    pub entries: usize,
    /// Expired entries deleted.
    pub removed: usize,
}

/// A handle on a node's pinned conntrack map, for its garbage collector.
pub struct ConntrackCollector {
    map: Hash<CtKey, CtEntry>,
}

impl ConntrackCollector {
    /// Opens the conntrack map pinned under `bpffs` (by [`crate::Datapath::load`]).
    pub fn open(bpffs: &Path) -> Result<Self, DatapathError> {
        let pin = bpffs.join("maps").join(names::CONNTRACK);
        let data = MapData::from_pin(&pin).map_err(map_error(names::CONNTRACK))?;
        let map = Map::from_map_data(data)
            .and_then(Hash::try_from)
            .map_err(map_error(names::CONNTRACK))?;
        Ok(Self { map })
    }

    /// Deletes the entries expired at `now_ns` (CLOCK_MONOTONIC, the kernel
    /// programs' clock).
    pub fn collect(&mut self, now_ns: u64) -> Result<Collected, DatapathError> {
        collect_expired(&mut self.map, now_ns)
    }
}

/// Deletes the entries of `map` expired at `now_ns`, in one walk.
pub(crate) fn collect_expired(
    map: &mut Hash<CtKey, CtEntry>,
    now_ns: u64,
) -> Result<Collected, DatapathError> {
    let mut entries = 0;
    let mut expired = Vec::new();
    for item in map.iter() {
        // An entry deleted under the walk (by LRU eviction) is skipped.
        let Ok((key, entry)) = item else { continue };
        entries += 1;
        if entry.expires_ns < now_ns {
            expired.push(key);
        }
    }
    for key in &expired {
        // One evicted meanwhile is gone either way.
        removed(map.remove(key), names::CONNTRACK)?;
    }
    Ok(Collected {
        entries,
        removed: expired.len(),
    })
}
