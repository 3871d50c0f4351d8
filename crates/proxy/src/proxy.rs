//! The proxy process: snapshot state, listeners, the metrics endpoint, the control client,
//! and the drain on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admission::Admission;
use crate::config::{ListenerUpstream, Snapshot};
use crate::control::{SnapshotSink, run_client};
use crate::event::{EventSink, L7Event};
use crate::fd_limit::{connection_capacity, raise_open_file_limit};
use crate::listener::{accept_loop, server};
use crate::memory::MemoryTrim;
use crate::metrics::{ErrorKind, Metrics};
use crate::rules::CompiledSnapshot;
use crate::settings::ProxyConfig;
use crate::socket::bind_listener;
use crate::state::{Drain, Services};
use crate::upstream::Upstreams;

/// Errors that stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The proxy was already started.
    #[error("the proxy was already started")]
    AlreadyStarted,
    /// The metrics endpoint could not be bound.
    #[error("cannot bind the metrics endpoint {address}: {source} (choose another with --metrics)")]
    Metrics {
        /// The address asked for.
        address: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

struct ListenerTask {
    address: SocketAddr,
    transparent: bool,
    local: SocketAddr,
    cancel: CancellationToken,
}

/// The process's state: the services connections share, and what only the process
/// touches (its listeners, snapshot applies, the control client).
struct Shared {
    config: ProxyConfig,
    services: Arc<Services>,
    listeners: Mutex<HashMap<String, ListenerTask>>,
    apply_lock: Mutex<()>,
    cancel: CancellationToken,
    metrics_addr: Mutex<Option<SocketAddr>>,
}

impl Shared {
    /// The snapshot being served.
    fn current(&self) -> Option<Arc<CompiledSnapshot>> {
        self.services.current()
    }

    fn apply_snapshot(self: &Arc<Self>, snapshot: Snapshot) -> Result<(), String> {
        // One apply at a time: the disk copy, the listeners and the served snapshot must
        // describe the same version.
        let _guard = self
            .apply_lock
            .lock()
            .map_err(|_| "snapshot state poisoned".to_owned())?;
        let version = snapshot.version;
        if self.current().is_some_and(|s| s.source == snapshot) {
            return Ok(());
        }
        let compiled = match CompiledSnapshot::compile(snapshot) {
            Ok(compiled) => Arc::new(compiled),
            Err(e) => {
                self.services.metrics.error(ErrorKind::SnapshotRejected);
                warn!(version, error = %e, "rejecting snapshot; the previous one keeps serving");
                return Err(e.to_string());
            }
        };
        if let Err(e) = self.reconcile_listeners(&compiled) {
            self.services.metrics.error(ErrorKind::SnapshotRejected);
            warn!(version, error = %e, "rejecting snapshot; the previous one keeps serving");
            return Err(e);
        }
        self.services.snapshot.send_replace(Some(compiled.clone()));
        self.services
            .metrics
            .snapshot_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        info!(version, "serving snapshot");
        if let Some(path) = &self.config.snapshot_file
            && let Err(e) = persist(path, &compiled.source)
        {
            self.services.metrics.error(ErrorKind::Persist);
            warn!(path = %path.display(), error = %e, "could not persist the snapshot; a restart will wait for the agent");
        }
        Ok(())
    }

    /// Binds the listeners the snapshot adds and stops the ones it drops. All new binds
    /// happen before anything is stopped, so a failed bind leaves the old state intact.
    fn reconcile_listeners(self: &Arc<Self>, snapshot: &CompiledSnapshot) -> Result<(), String> {
        let mut tasks = self
            .listeners
            .lock()
            .map_err(|_| "listener state poisoned".to_owned())?;
        let mut bound = Vec::new();
        for listener in snapshot.listeners() {
            let transparent = listener.upstream == ListenerUpstream::Transparent;
            if tasks
                .get(&listener.name)
                .is_some_and(|t| t.address == listener.address && t.transparent == transparent)
            {
                continue;
            }
            match bind_listener(listener.address, transparent) {
                Ok(socket) => {
                    bound.push((listener.name.clone(), listener.address, transparent, socket))
                }
                Err(e) => {
                    return Err(format!(
                        "listener {:?}: cannot bind {}{}: {e}",
                        listener.name,
                        listener.address,
                        if transparent {
                            " (transparent listeners need CAP_NET_ADMIN)"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        tasks.retain(|name, task| {
            let keep = snapshot.listener(name).is_some() && !bound.iter().any(|(n, ..)| n == name);
            if !keep {
                // Only the accept loop stops: established connections finish on their own.
                task.cancel.cancel();
            }
            keep
        });
        for (name, address, transparent, socket) in bound {
            let local = socket.local_addr().unwrap_or(address);
            let cancel = self.cancel.child_token();
            info!(listener = %name, %local, transparent, "listening");
            tokio::spawn(accept_loop(
                self.services.clone(),
                name.clone(),
                socket,
                cancel.clone(),
            ));
            tasks.insert(
                name,
                ListenerTask {
                    address,
                    transparent,
                    local,
                    cancel,
                },
            );
        }
        Ok(())
    }
}

/// Applies snapshots from the control channel.
struct Applier(Arc<Shared>);

impl SnapshotSink for Applier {
    fn apply(&self, snapshot: Snapshot) -> Result<(), String> {
        self.0.apply_snapshot(snapshot)
    }

    fn version(&self) -> Option<u64> {
        self.0.current().map(|s| s.version())
    }
}

/// Writes the snapshot to a temporary file next to `path`, syncs it and renames it over
/// `path`, so a crash leaves either the old or the new snapshot, never half of one. Only
/// root reads it (mode 0600): it holds every L7 rule of the node.
fn persist(path: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt as _;
    let data = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&data)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // Sync the directory too, so the rename itself survives a power loss.
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

fn load(path: &Path) -> Result<Option<Snapshot>, String> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The L7 proxy.
///
/// ```no_run
/// # async fn f() -> Result<(), myelin_proxy::ProxyError> {
/// let proxy = myelin_proxy::Proxy::new(myelin_proxy::ProxyConfig::new("/run/myelin/proxy.sock"));
/// let registry = proxy.registry(); // also served on `ProxyConfig::metrics_addr`, if set
/// proxy.run().await
/// # }
/// ```
pub struct Proxy {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    events: Mutex<Option<tokio::sync::mpsc::Receiver<L7Event>>>,
}

impl Proxy {
    /// Creates the proxy and its metrics; nothing runs until [`Proxy::start`]. Raises the
    /// process's open-file limit to the hard limit and lowers the connection limit to what
    /// it allows ([`crate::fd_limit`]).
    pub fn new(config: ProxyConfig) -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let (events, receiver) = EventSink::new(config.event_queue, metrics.events_dropped.clone());
        let limits = config.limits.clone();
        let open_files = match raise_open_file_limit() {
            Ok(open_files) => open_files,
            Err(e) => {
                warn!(error = %e, "cannot read the open-file limit; assuming 1024");
                1024
            }
        };
        let max_connections = limits
            .max_connections
            .min(connection_capacity(open_files))
            .max(1);
        let (per_source, per_identity) = (
            limits.per_source(max_connections),
            limits.per_identity(max_connections),
        );
        info!(
            open_files,
            max_connections, per_source, per_identity, "connection limits"
        );
        metrics
            .connection_limit
            .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
        let services = Arc::new(Services {
            server: server(&limits),
            upstreams: Arc::new(Upstreams::new(&config)),
            connection_slots: Arc::new(Semaphore::new(max_connections)),
            admission: Arc::new(Admission::new(per_source, per_identity)),
            memory: Arc::new(MemoryTrim::new(metrics.memory_trims.clone())),
            max_connections,
            limits,
            snapshot: watch::Sender::new(None),
            metrics,
            events,
            drain: Drain::default(),
        });
        let shared = Arc::new(Shared {
            config,
            services,
            listeners: Mutex::new(HashMap::new()),
            apply_lock: Mutex::new(()),
            cancel: CancellationToken::new(),
            metrics_addr: Mutex::new(None),
        });
        Self {
            shared,
            registry: Arc::new(registry),
            events: Mutex::new(Some(receiver)),
        }
    }

    /// The metrics registry (also served on [`ProxyConfig::metrics_addr`]).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Serves the metrics (when configured), loads the persisted snapshot (if any), starts
    /// its listeners and connects to the agent. Returns once the persisted snapshot serves;
    /// the agent connection runs in the background.
    pub fn start(&self) -> Result<(), ProxyError> {
        let events = self
            .events
            .lock()
            .ok()
            .and_then(|mut e| e.take())
            .ok_or(ProxyError::AlreadyStarted)?;
        if let Some(address) = self.shared.config.metrics_addr {
            let listener = std::net::TcpListener::bind(address)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|source| ProxyError::Metrics { address, source })?;
            let local = listener.local_addr().unwrap_or(address);
            info!(address = %local, "serving metrics at /metrics");
            if let Ok(mut bound) = self.shared.metrics_addr.lock() {
                *bound = Some(local);
            }
            let registry = self.registry.clone();
            let cancel = self.shared.cancel.child_token();
            tokio::spawn(async move {
                tokio::select! {
                    () = myelin_metrics_endpoint::serve(listener, registry, myelin_metrics_endpoint::Readiness::ready()) => {}
                    () = cancel.cancelled() => {}
                }
            });
        }
        if let Some(path) = &self.shared.config.snapshot_file {
            match load(path) {
                Ok(Some(snapshot)) => match self.shared.apply_snapshot(snapshot) {
                    Ok(()) => {
                        info!(path = %path.display(), "serving the persisted snapshot until the agent answers")
                    }
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "persisted snapshot unusable; waiting for the agent")
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "persisted snapshot unreadable; waiting for the agent")
                }
            }
        }
        tokio::spawn(run_client(
            self.shared.config.control_socket.clone(),
            Arc::new(Applier(self.shared.clone())),
            events,
            self.shared.cancel.child_token(),
        ));
        Ok(())
    }

    /// Starts the proxy and serves until the returned future is dropped (which shuts the
    /// proxy down: the CLI selects it against its signal handler).
    pub async fn run(self) -> Result<(), ProxyError> {
        self.start()?;
        self.shared.cancel.cancelled().await;
        Ok(())
    }

    /// Drains the proxy: stops accepting, lets connections finish their in-flight requests
    /// (idle ones close at once) until [`crate::Limits::drain_timeout`], then closes the
    /// rest. Returns when every connection is closed.
    pub async fn drain(&self) {
        let deadline = Instant::now() + self.shared.services.limits.drain_timeout;
        self.shutdown();
        let services = &self.shared.services;
        services.drain.start(deadline);
        let everyone = u32::try_from(services.max_connections).unwrap_or(u32::MAX);
        // Every slot back: every connection (and tunnel) has ended. They end by the deadline
        // at the latest; the timeout only guards against a task that never runs again.
        let grace = std::time::Duration::from_secs(1);
        match tokio::time::timeout_at(
            deadline + grace,
            services.connection_slots.acquire_many(everyone),
        )
        .await
        {
            Ok(_) => info!("drained"),
            Err(_) => warn!("connections still open after the drain deadline"),
        }
    }

    /// Where the metrics are served, once started with [`ProxyConfig::metrics_addr`].
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.shared.metrics_addr.lock().ok().and_then(|a| *a)
    }

    /// Stops the control client, the metrics endpoint and every accept loop. Established
    /// connections finish on their own (see [`Proxy::drain`]).
    pub fn shutdown(&self) {
        self.shared.cancel.cancel();
        if let Ok(mut tasks) = self.shared.listeners.lock() {
            tasks.clear();
        }
    }

    /// Version of the snapshot being served.
    pub fn snapshot_version(&self) -> Option<u64> {
        self.shared.current().map(|s| s.version())
    }

    /// Waits until a snapshot of at least `version` serves.
    pub async fn wait_for_version(&self, version: u64) {
        let mut rx = self.shared.services.snapshot.subscribe();
        // The sender lives in `self.shared`, so `wait_for` cannot fail while we hold it.
        let _ = rx
            .wait_for(|s| s.as_ref().is_some_and(|s| s.version() >= version))
            .await;
    }

    /// The bound address of a listener (useful when it was configured with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared
            .listeners
            .lock()
            .ok()?
            .get(name)
            .map(|t| t.local)
    }

    /// Applies a snapshot directly, as if the agent had sent it (for embedding and tests).
    pub fn apply(&self, snapshot: Snapshot) -> Result<(), String> {
        self.shared.apply_snapshot(snapshot)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs a proxy with `config` until SIGTERM or SIGINT, then drains it: the entry point of
/// `myelin proxy`.
pub async fn run(config: ProxyConfig) -> Result<(), ProxyError> {
    use tokio::signal::unix::{SignalKind, signal};
    let proxy = Proxy::new(config);
    proxy.start()?;
    let stop = async {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                warn!("cannot install signal handlers; stopping on ctrl-c only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    stop.await;
    info!("stopping: draining connections");
    proxy.drain().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_file_is_readable_by_root_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("proxy-snapshot.json");
        persist(&path, &Snapshot::default()).expect("persist");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(&path), Ok(Some(Snapshot::default())));
    }
}
