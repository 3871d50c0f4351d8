//! The agent's own metrics, beside Hubble's: what the node runs and how full
//! the datapath's maps are.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label of the map-pressure family.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    /// The map: endpoints, ipcache, policy, services, conntrack.
    pub map: String,
}

/// The agent's metric families.
#[derive(Debug, Clone, Default)]
pub struct AgentMetrics {
    /// Endpoints on this node.
    pub endpoints: Gauge,
    /// Distinct security identities the node knows (ipcache).
    pub identities: Gauge,
    /// Policy revisions programmed into the datapath.
    pub policy_revision: Counter,
    /// Entries per datapath map.
    pub map_entries: Family<MapLabel, Gauge>,
    /// Drops the datapath counted but did not report as events (its per-CPU
    /// drop-event rate limit bit).
    pub drop_events_suppressed: Counter,
}

impl AgentMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "myelin_endpoints",
            "Endpoints on this node",
            metrics.endpoints.clone(),
        );
        registry.register(
            "myelin_identities",
            "Distinct security identities known to this node",
            metrics.identities.clone(),
        );
        registry.register(
            "myelin_policy_revision",
            "Policy revisions programmed into the datapath",
            metrics.policy_revision.clone(),
        );
        registry.register(
            "myelin_datapath_map_entries",
            "Entries in each datapath map",
            metrics.map_entries.clone(),
        );
        registry.register(
            "myelin_datapath_drop_events_suppressed",
            "Drops the datapath did not report as events because a CPU exceeded its drop-event rate (1,000/s after a burst of 2,000)",
            metrics.drop_events_suppressed.clone(),
        );
        metrics
    }

    /// Sets the entry count of one map.
    pub fn map_entries(&self, map: &str, entries: usize) {
        self.map_entries
            .get_or_create(&MapLabel {
                map: map.to_string(),
            })
            .set(entries as i64);
    }
}
