//! The connection to etcd: a client on the store's own runtime thread, with a timeout on
//! every call.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions, Txn, TxnResponse,
};
use tokio::runtime::Handle;

use crate::{Keys, StoreError};

/// Where etcd listens for clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAddress {
    /// `host:port` (or `http://host:port`) of one or more members; the client balances
    /// over them and skips members that are down.
    Tcp(Vec<String>),
    /// etcd's unix socket (see [`crate::server::EtcdMember::unix_socket`]): reachable from
    /// every network namespace that sees the file.
    Unix(PathBuf),
}

/// How to reach the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where etcd listens.
    pub address: StoreAddress,
    /// The cluster's name: every key lives under `/myelin/<cluster>/`.
    pub cluster: String,
    /// The limit on every call (a get, a put, a transaction, a keep-alive).
    pub timeout: Duration,
}

impl StoreConfig {
    /// The default per-call timeout: long enough for a leader election of a three-member
    /// cluster on a loaded machine, short enough that a caller notices an outage.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// A configuration with the default timeout.
    pub fn new(address: StoreAddress, cluster: &str) -> Self {
        Self {
            address,
            cluster: cluster.to_string(),
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

/// A thread running the store's own tokio runtime: the client's connections, the lease
/// keep-alive and the watchers live there, so they go on whatever the caller's threads
/// do, and synchronous callers can wait for a call without blocking the runtime that
/// serves it. Stops when the last handle is dropped.
#[derive(Debug)]
pub(crate) struct RuntimeThread {
    handle: Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RuntimeThread {
    fn start() -> Result<Self, StoreError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("myelin-store".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(runtime.handle().clone()));
                // Ends when the stop sender is sent to or dropped.
                let _ = runtime.block_on(stop_rx);
            })
            .map_err(|source| StoreError::Io {
                what: "start the store's runtime thread",
                path: PathBuf::new(),
                source,
            })?;
        let handle = ready_rx
            .recv()
            .map_err(|_| StoreError::Stopped)?
            .map_err(|source| StoreError::Io {
                what: "build the store's runtime",
                path: PathBuf::new(),
                source,
            })?;
        Ok(Self {
            handle,
            stop: Some(stop_tx),
        })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `future` on the store's runtime and waits for it on this thread. For
    /// synchronous callers: never call it from a task of the store's own runtime.
    pub(crate) fn block_on<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().map_err(|_| StoreError::Stopped)?
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The client with the cluster's keys and the call timeout; cheap to clone, used by the
/// store's tasks (which must not keep the runtime alive, so they do not hold it).
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) keys: Keys,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("root", &self.keys.root())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Awaits an etcd call within the timeout.
    pub(crate) async fn call<T>(
        &self,
        what: impl Into<String>,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        let what = what.into();
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(StoreError::etcd(what)),
            Err(_) => Err(StoreError::Timeout {
                what,
                secs: self.timeout.as_secs_f64(),
            }),
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut client = self.client.clone();
        let mut response = self
            .call(format!("get {key}"), client.get(key, None))
            .await?;
        Ok(response.take_kvs().into_iter().next())
    }

    /// Every key under `prefix` with the revision the listing is consistent at.
    pub(crate) async fn list(
        &self,
        prefix: &str,
        keys_only: bool,
    ) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let mut client = self.client.clone();
        let mut options = GetOptions::new().with_prefix();
        if keys_only {
            options = options.with_keys_only();
        }
        let mut response = self
            .call(format!("list {prefix}"), client.get(prefix, Some(options)))
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        Ok((response.take_kvs(), revision))
    }

    pub(crate) async fn put(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        lease: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        self.call(format!("put {key}"), client.put(key, value, options))
            .await?;
        Ok(())
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        self.call(format!("delete {key}"), client.delete(key, None))
            .await?;
        Ok(())
    }

    pub(crate) async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        self.call(
            format!("delete {prefix}*"),
            client.delete(prefix, Some(DeleteOptions::new().with_prefix())),
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse, StoreError> {
        let mut client = self.client.clone();
        self.call(what, client.txn(txn)).await
    }
}

/// A connection to the cluster store. Clones share the connection and the runtime.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) conn: Conn,
    pub(crate) runtime: Arc<RuntimeThread>,
}

impl Store {
    /// Connects (lazily: etcd may come up later; calls fail until it does, and the client
    /// reconnects by itself after an outage).
    pub fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        let keys = Keys::new(&config.cluster)?;
        let runtime = Arc::new(RuntimeThread::start()?);
        let address = config.address.clone();
        let timeout = config.timeout;
        let client = runtime.block_on(async move { connect_client(&address, timeout).await })?;
        Ok(Self {
            conn: Conn {
                client,
                keys,
                timeout,
            },
            runtime,
        })
    }

    /// The cluster's key layout.
    pub fn keys(&self) -> &Keys {
        &self.conn.keys
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.conn.timeout
    }

    /// Whether etcd answers a read now (a linearizable one: it needs a leader).
    pub async fn healthy(&self) -> bool {
        self.conn.get(&self.conn.keys.nodes()).await.is_ok()
    }
}

async fn connect_client(address: &StoreAddress, timeout: Duration) -> Result<Client, StoreError> {
    // HTTP/2 pings find a dead connection (an etcd killed without a FIN) well within a
    // lease's TTL; require_leader makes a member cut off from its peers cancel our watches
    // instead of leaving them silent.
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_keep_alive(Duration::from_secs(3), timeout)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    match address {
        StoreAddress::Tcp(endpoints) => {
            Client::connect(endpoints, Some(options))
                .await
                .map_err(StoreError::etcd(format!(
                    "connect to {}",
                    endpoints.join(",")
                )))
        }
        StoreAddress::Unix(path) => {
            let socket = path.clone();
            // The URI is required by tonic but unused: the connector dials the socket.
            let channel = tonic::transport::Endpoint::from_static("http://localhost")
                .connect_timeout(timeout)
                .http2_keep_alive_interval(Duration::from_secs(3))
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true)
                .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(socket).await?,
                        ))
                    }
                }));
            Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options))
                .await
                .map_err(StoreError::etcd(format!("connect to {}", path.display())))
        }
    }
}
