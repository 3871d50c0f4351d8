//! Conntrack garbage collection, off the state owner: the datapath's
//! collector has a handle of its own on the pinned conntrack map, so its walk
//! holds nothing that flows or API calls wait for, and it walks the map once
//! per round (counting the entries for the map-pressure metric on the way).

use myelin_datapath::ConntrackCollector;

use crate::metrics::AgentMetrics;

/// Removes expired conntrack entries every 30 s (a full table also degrades
/// by LRU eviction, so this only keeps it tidy), on a blocking thread.
pub async fn collect_garbage(mut conntrack: ConntrackCollector, metrics: AgentMetrics) {
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
