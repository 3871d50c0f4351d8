//! The proxy process: configuration, snapshot state, listeners, the control client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ListenerUpstream, Snapshot};
use crate::control::{SnapshotSink, run_client};
use crate::event::{EventSink, L7Event};
use crate::http::{Engine, accept_loop};
use crate::metrics::{ErrorKind, Metrics};
use crate::rules::CompiledSnapshot;
use crate::socket::bind_listener;

/// The mark the proxy puts on its upstream sockets by default; it must not match the
/// datapath's redirect mark `0x200/0xf00` (see the L7 redirect recipe).
pub const DEFAULT_MARK: u32 = 0xb00;

/// Bounds that keep one client from pinning the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most client connections served at once; further connections wait in the kernel's
    /// accept queue until a slot frees up.
    pub max_connections: usize,
    /// Largest HTTP/1 request head (request line and headers) in bytes, and the HTTP/2 header
    /// list size. Values under 8 KiB are raised to 8 KiB (hyper's minimum buffer).
    pub max_header_bytes: usize,
    /// Most headers in one HTTP/1 request.
    pub max_headers: usize,
    /// Time a client has to send the first bytes and then a complete request head. On
    /// HTTP/1.1 the timer also runs while a keep-alive connection waits for its next request
    /// (hyper's behaviour), so it is the keep-alive idle limit there too.
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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_idle_timeout: Duration::from_secs(90),
            max_concurrent_streams: 256,
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

/// Errors that stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The proxy was already started.
    #[error("the proxy was already started")]
    AlreadyStarted,
}

struct ListenerTask {
    address: SocketAddr,
    transparent: bool,
    local: SocketAddr,
    cancel: CancellationToken,
}

/// State shared by the listeners, connections and the control client.
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    pub(crate) snapshot: watch::Sender<Option<Arc<CompiledSnapshot>>>,
    pub(crate) metrics: Metrics,
    pub(crate) events: EventSink,
    pub(crate) connection_slots: Arc<Semaphore>,
    pub(crate) engine: Engine,
    listeners: Mutex<HashMap<String, ListenerTask>>,
    apply_lock: Mutex<()>,
    cancel: CancellationToken,
}

impl Shared {
    /// The snapshot being served.
    pub(crate) fn current(&self) -> Option<Arc<CompiledSnapshot>> {
        self.snapshot.borrow().clone()
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
                self.metrics.error(ErrorKind::SnapshotRejected);
                warn!(version, error = %e, "rejecting snapshot; the previous one keeps serving");
                return Err(e.to_string());
            }
        };
        if let Err(e) = self.reconcile_listeners(&compiled) {
            self.metrics.error(ErrorKind::SnapshotRejected);
            warn!(version, error = %e, "rejecting snapshot; the previous one keeps serving");
            return Err(e);
        }
        self.snapshot.send_replace(Some(compiled.clone()));
        self.metrics
            .snapshot_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        info!(version, "serving snapshot");
        if let Some(path) = &self.config.snapshot_file
            && let Err(e) = persist(path, &compiled.source)
        {
            self.metrics.error(ErrorKind::Persist);
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
                self.clone(),
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
/// `path`, so a crash leaves either the old or the new snapshot, never half of one.
fn persist(path: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    use std::io::Write;
    let data = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
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
/// let registry = proxy.registry(); // serve it on the metrics endpoint
/// proxy.run().await
/// # }
/// ```
pub struct Proxy {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    events: Mutex<Option<tokio::sync::mpsc::Receiver<L7Event>>>,
}

impl Proxy {
    /// Creates the proxy and its metrics; nothing runs until [`Proxy::start`].
    pub fn new(config: ProxyConfig) -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let (events, receiver) = EventSink::new(config.event_queue, metrics.events_dropped.clone());
        let engine = Engine::new(&config);
        let shared = Arc::new(Shared {
            connection_slots: Arc::new(Semaphore::new(config.limits.max_connections.max(1))),
            config,
            snapshot: watch::Sender::new(None),
            metrics,
            events,
            engine,
            listeners: Mutex::new(HashMap::new()),
            apply_lock: Mutex::new(()),
            cancel: CancellationToken::new(),
        });
        Self {
            shared,
            registry: Arc::new(registry),
            events: Mutex::new(Some(receiver)),
        }
    }

    /// The metrics registry, to be served by the caller.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Loads the persisted snapshot (if any), starts its listeners and connects to the agent.
    /// Returns once the persisted snapshot serves; the agent connection runs in the
    /// background.
    pub fn start(&self) -> Result<(), ProxyError> {
        let events = self
            .events
            .lock()
            .ok()
            .and_then(|mut e| e.take())
            .ok_or(ProxyError::AlreadyStarted)?;
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

    /// Stops the control client and every accept loop. Established connections finish on
    /// their own.
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
        let mut rx = self.shared.snapshot.subscribe();
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

/// Runs a proxy with `config` until it fails to start; the entry point of `myelin proxy`
/// for callers that do not serve metrics.
pub async fn run(config: ProxyConfig) -> Result<(), ProxyError> {
    Proxy::new(config).run().await
}
