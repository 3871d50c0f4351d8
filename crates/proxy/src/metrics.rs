//! The proxy's own metric families (`myelin_proxy_*`) and the endpoint that serves them.
//!
//! Hubble's `hubble_http_*` families are not here: the agent derives them from the L7
//! events the proxy sends (as Hubble derives them from flows), so each family has one
//! definition and one process that serves it.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Kinds of proxy errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum ErrorKind {
    /// Accepting a connection failed.
    Accept,
    /// A connection did not speak HTTP.
    NonHttp,
    /// A connection broke or timed out while serving.
    Connection,
    /// Connecting or talking to the upstream failed.
    Upstream,
    /// No policy for a redirected connection.
    MissingPolicy,
    /// A snapshot was rejected.
    SnapshotRejected,
    /// The last good snapshot could not be written to disk.
    Persist,
}

impl ErrorKind {
    const ALL: [Self; 7] = [
        Self::Accept,
        Self::NonHttp,
        Self::Connection,
        Self::Upstream,
        Self::MissingPolicy,
        Self::SnapshotRejected,
        Self::Persist,
    ];
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum RefusedReason {
    /// It was opened straight to a transparent listener's port, not handed over by the
    /// datapath.
    NotRedirected,
    /// Its client address held its share of the connection limit already.
    PerSource,
    /// The clients of its security identity held their share already.
    PerIdentity,
}

impl RefusedReason {
    const ALL: [Self; 3] = [Self::NotRedirected, Self::PerSource, Self::PerIdentity];
}

/// Labels of `myelin_proxy_errors_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    /// What failed.
    pub kind: ErrorKind,
}

/// Labels of `myelin_proxy_connections_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusedLabels {
    /// Which bound refused it.
    pub reason: RefusedReason,
}

/// All metrics of the proxy; cheap to clone (handles share their values).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `myelin_proxy_connections`: client connections open now.
    pub connections: Gauge,
    /// `myelin_proxy_connection_limit`: most client connections served at once.
    pub connection_limit: Gauge,
    /// `myelin_proxy_connections_refused_total`.
    pub refused: Family<RefusedLabels, Counter>,
    /// `myelin_proxy_errors_total`.
    pub errors: Family<ErrorLabels, Counter>,
    /// `myelin_proxy_snapshot_version`: version of the snapshot being served.
    pub snapshot_version: Gauge,
    /// `myelin_proxy_events_dropped_total`: L7 events lost because the agent was slow or away.
    pub events_dropped: Counter,
    /// `myelin_proxy_memory_trims_total`: times freed memory was handed back to the system
    /// after many connections closed.
    pub memory_trims: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them. Every label value starts at zero, so that
    /// rates exist before the first error.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            connections: Gauge::default(),
            connection_limit: Gauge::default(),
            refused: Family::default(),
            errors: Family::default(),
            snapshot_version: Gauge::default(),
            events_dropped: Counter::default(),
            memory_trims: Counter::default(),
        };
        for kind in ErrorKind::ALL {
            metrics
                .errors
                .get_or_create(&ErrorLabels { kind })
                .inc_by(0);
        }
        for reason in RefusedReason::ALL {
            metrics
                .refused
                .get_or_create(&RefusedLabels { reason })
                .inc_by(0);
        }
        registry.register(
            "myelin_proxy_connections",
            "Client connections open in the L7 proxy",
            metrics.connections.clone(),
        );
        registry.register(
            "myelin_proxy_connection_limit",
            "Most client connections the L7 proxy serves at once",
            metrics.connection_limit.clone(),
        );
        registry.register(
            "myelin_proxy_connections_refused",
            "Client connections closed at once, by the bound that refused them",
            metrics.refused.clone(),
        );
        registry.register(
            "myelin_proxy_errors",
            "L7 proxy errors by kind",
            metrics.errors.clone(),
        );
        registry.register(
            "myelin_proxy_snapshot_version",
            "Version of the configuration snapshot being served",
            metrics.snapshot_version.clone(),
        );
        registry.register(
            "myelin_proxy_events_dropped",
            "L7 events dropped because the agent did not read them in time",
            metrics.events_dropped.clone(),
        );
        registry.register(
            "myelin_proxy_memory_trims",
            "Times the L7 proxy handed freed memory back to the system after connections closed",
            metrics.memory_trims.clone(),
        );
        metrics
    }

    /// Counts one error.
    pub fn error(&self, kind: ErrorKind) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    /// Counts one refused connection.
    pub fn refused(&self, reason: RefusedReason) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }
}
