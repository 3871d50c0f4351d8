//! Proxy metrics: Hubble's `hubble_http_*` families and the proxy's own.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `hubble_http_requests_total`, as Hubble names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// Request method.
    pub method: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    /// `server` for ingress policy, `client` for egress.
    pub reporter: String,
    /// Response status code.
    pub status: String,
}

/// Labels of `hubble_http_request_duration_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DurationLabels {
    /// Request method.
    pub method: String,
    /// `server` or `client`.
    pub reporter: String,
}

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

/// Labels of `myelin_proxy_errors_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    /// What failed.
    pub kind: ErrorKind,
}

/// All metrics of the proxy; cheap to clone (handles share their values).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `hubble_http_requests_total`.
    pub http_requests: Family<RequestLabels, Counter>,
    /// `hubble_http_request_duration_seconds`.
    pub http_duration: Family<DurationLabels, Histogram>,
    /// `myelin_proxy_connections`: client connections open now.
    pub connections: Gauge,
    /// `myelin_proxy_errors_total`.
    pub errors: Family<ErrorLabels, Counter>,
    /// `myelin_proxy_snapshot_version`: version of the snapshot being served.
    pub snapshot_version: Gauge,
    /// `myelin_proxy_events_dropped_total`: L7 events lost because the agent was slow or away.
    pub events_dropped: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            connections: Gauge::default(),
            errors: Family::default(),
            snapshot_version: Gauge::default(),
            events_dropped: Counter::default(),
        };
        registry.register(
            "hubble_http_requests",
            "HTTP requests seen by the L7 proxy",
            metrics.http_requests.clone(),
        );
        registry.register(
            "hubble_http_request_duration_seconds",
            "Time from request to response headers",
            metrics.http_duration.clone(),
        );
        registry.register(
            "myelin_proxy_connections",
            "Client connections open in the L7 proxy",
            metrics.connections.clone(),
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
        metrics
    }

    /// Counts one error.
    pub fn error(&self, kind: ErrorKind) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }
}
