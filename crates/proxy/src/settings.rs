//! How the proxy process is run: the `myelin proxy` command line and the bounds it enforces.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The mark the proxy puts on its upstream sockets by default: the one the datapath
/// knows as the proxy's own traffic and never redirects again (it must not match the
/// redirect mark `0x200/0xf00`; see the L7 redirect recipe).
pub const DEFAULT_MARK: u32 = myelin_common::maps::PROXY_MARK_EGRESS;

/// Where `myelin proxy` serves its metrics by default: loopback of the node's network
/// namespace, which pods (in namespaces of their own) cannot reach.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9966);

/// Bounds that keep one client from pinning the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most client connections served at once; the proxy lowers it further to what its
    /// open-file limit allows ([`crate::fd_limit`]). Further connections wait in the
    /// kernel's accept queue until a slot frees up.
    pub max_connections: usize,
    /// Most connections one client address holds at once; `None`: a sixteenth of the
    /// connection limit. Connections over it are closed at once.
    pub max_connections_per_source: Option<usize>,
    /// Most connections the clients of one security identity hold at once (identities the
    /// snapshot knows); `None`: a quarter of the connection limit.
    pub max_connections_per_identity: Option<usize>,
    /// Largest HTTP/1 request head (request line and headers) in bytes, and the HTTP/2 header
    /// list size. Values under 8 KiB are raised to 8 KiB (hyper's minimum buffer).
    pub max_header_bytes: usize,
    /// Most headers in one HTTP/1 request.
    pub max_headers: usize,
    /// Time a client has to send the first bytes and then a complete request head; an
    /// HTTP/2 client has it to send its first request. On HTTP/1.1 the timer also runs while
    /// a keep-alive connection waits for its next request (hyper's behaviour), so it is the
    /// keep-alive idle limit there too.
    pub header_read_timeout: Duration,
    /// A client connection that moves no byte for this long, with no request waiting for its
    /// upstream, is closed: idle HTTP/2 connections, stalled bodies, upgraded tunnels.
    pub idle_timeout: Duration,
    /// Time allowed to establish an upstream TCP connection.
    pub upstream_connect_timeout: Duration,
    /// How long an unused pooled upstream HTTP/2 connection is kept. (An HTTP/1 client
    /// connection's own upstream connection lives as long as the client connection.)
    pub upstream_idle_timeout: Duration,
    /// Most concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// On shutdown, how long in-flight requests get to finish before their connections are
    /// closed.
    pub drain_timeout: Duration,
}

/// Share of the connection limit one client address gets by default (1/16).
const SOURCE_SHARE: usize = 16;

/// Share of the connection limit one identity gets by default (1/4).
const IDENTITY_SHARE: usize = 4;

impl Limits {
    /// The per-source limit under a connection limit of `max_connections`.
    pub fn per_source(&self, max_connections: usize) -> usize {
        self.max_connections_per_source
            .unwrap_or(max_connections / SOURCE_SHARE)
            .max(1)
    }

    /// The per-identity limit under a connection limit of `max_connections`.
    pub fn per_identity(&self, max_connections: usize) -> usize {
        self.max_connections_per_identity
            .unwrap_or(max_connections / IDENTITY_SHARE)
            .max(1)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_source: None,
            max_connections_per_identity: None,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_idle_timeout: Duration::from_secs(90),
            max_concurrent_streams: 256,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// How the proxy process is run (the `myelin proxy` command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The agent's control socket; the proxy connects to it and reconnects when it goes away.
    pub control_socket: PathBuf,
    /// Where the last good snapshot is persisted (written atomically) and loaded from at
    /// start, so a restarted proxy serves before the agent answers. `None` disables it.
    pub snapshot_file: Option<PathBuf>,
    /// `SO_MARK` of upstream sockets, so the datapath does not redirect them again; 0 leaves
    /// sockets unmarked. Default [`DEFAULT_MARK`].
    pub mark: u32,
    /// Where `GET /metrics` is served (OpenMetrics text); `None`: nowhere. `myelin proxy`
    /// passes [`DEFAULT_METRICS_ADDR`] unless told otherwise.
    pub metrics_addr: Option<SocketAddr>,
    /// Connection and request bounds.
    pub limits: Limits,
    /// Most L7 events queued for the agent; more are dropped and counted.
    pub event_queue: usize,
    /// Threads of the runtime [`ProxyConfig::runtime`] builds; default: the number of CPUs.
    /// With 1 it is a current-thread runtime (no work stealing, no cross-thread wake-ups),
    /// the cheapest per request when the proxy is given one core.
    pub workers: usize,
}

impl ProxyConfig {
    /// A configuration with defaults for everything but the control socket.
    pub fn new(control_socket: impl Into<PathBuf>) -> Self {
        Self {
            control_socket: control_socket.into(),
            snapshot_file: None,
            mark: DEFAULT_MARK,
            metrics_addr: None,
            limits: Limits::default(),
            event_queue: 4096,
            workers: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        }
    }

    /// A tokio runtime for the proxy with [`ProxyConfig::workers`] threads: current-thread
    /// for one, multi-thread otherwise.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        if self.workers <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.workers)
                .enable_all()
                .build()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_and_identity_limits_are_fair_shares_unless_set() {
        let mut limits = Limits::default();
        assert_eq!(limits.per_source(10_000), 625);
        assert_eq!(limits.per_identity(10_000), 2_500);
        assert_eq!(limits.per_source(4), 1, "never zero");
        limits.max_connections_per_source = Some(3);
        assert_eq!(limits.per_source(10_000), 3);
    }
}
