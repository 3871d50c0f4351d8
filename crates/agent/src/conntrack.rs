//! Conntrack garbage collection, off the state owner: the collector opens a
//! handle of its own on the pinned conntrack map, so its walk holds nothing
//! that flows or API calls wait for, and it walks the map once per round
//! (counting the entries for the map-pressure metric on the way).

use std::path::Path;

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData, MapError};
use myelin_common::maps::names;
use myelin_common::{CtEntry, CtKey};

use crate::metrics::AgentMetrics;

/// The node's conntrack map.
pub struct Conntrack {
    map: HashMap<MapData, CtKey, CtEntry>,
}

/// What one collection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Entries in the map before the collection.
    pub entries: usize,
    /// Expired entries deleted.
    pub removed: usize,
}

impl Conntrack {
    /// Opens the conntrack map pinned under `bpffs` (by [`myelin_datapath::Datapath::load`]).
    pub fn open(bpffs: &Path) -> anyhow::Result<Self> {
        let pin = bpffs.join("maps").join(names::CONNTRACK);
        let context = || format!("opening the conntrack map pinned at {}", pin.display());
        let data = MapData::from_pin(&pin).with_context(context)?;
        let map = Map::from_map_data(data).with_context(context)?;
        Ok(Self {
            map: HashMap::try_from(map).with_context(context)?,
        })
    }

    /// Deletes the entries expired at `now_ns` (CLOCK_MONOTONIC, the
    /// kernel programs' clock), in one walk of the map.
    pub fn collect(&mut self, now_ns: u64) -> Result<Collected, MapError> {
        let mut entries = 0;
        let mut expired = Vec::new();
        for item in self.map.iter() {
            // An entry deleted under the walk (by LRU eviction) is skipped.
            let Ok((key, entry)) = item else { continue };
            entries += 1;
            if entry.expires_ns < now_ns {
                expired.push(key);
            }
        }
        let mut removed = 0;
        for key in &expired {
            match self.map.remove(key) {
                Ok(()) => removed += 1,
                // Evicted meanwhile: gone either way.
                Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Collected { entries, removed })
    }
}

/// Removes expired conntrack entries every 30 s (a full table also degrades
/// by LRU eviction, so this only keeps it tidy), on a blocking thread.
pub async fn collect_garbage(mut conntrack: Conntrack, metrics: AgentMetrics) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        every.tick().await;
        let round = tokio::task::spawn_blocking(move || {
            let result = conntrack.collect(crate::flows::monotonic_ns());
            (conntrack, result)
        })
        .await;
        let result;
        (conntrack, result) = match round {
            Ok(round) => round,
            Err(e) => {
                tracing::error!("conntrack garbage collection stopped: {e}");
                return;
            }
        };
        match result {
            Ok(collected) => {
                metrics.map_entries("conntrack", collected.entries);
                if collected.removed > 0 {
                    tracing::debug!(removed = collected.removed, "conntrack entries expired");
                }
            }
            Err(e) => tracing::warn!("conntrack garbage collection: {e}"),
        }
    }
}
