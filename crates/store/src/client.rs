//! The connection to etcd: a client on the store's own runtime thread, with a timeout on
//! every call.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// etcd's unix sockets, one per member (see [`crate::server::EtcdMember::unix_socket`]):
    /// reachable from every network namespace that sees the files; the client balances over
    /// them and skips members that are down, as over TCP.
    Unix(Vec<PathBuf>),
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

/// Keys per answer of a listing: ~1 MB of endpoints, well under the client's 4 MiB limit
/// on one message. (etcd 3.4 walks the whole range's index for every page, so pages are
/// not made smaller than they need to be.)
const LIST_PAGE: i64 = 5000;

/// The end of the range of keys starting with `prefix` (etcd's range end is exclusive):
/// the prefix with its last byte below 0xff increased; `\0` (every key) when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One client per etcd member with the cluster's keys and the call timeout; cheap to
/// clone, used by the store's tasks (which must not keep the runtime alive, so they do
/// not hold it).
///
/// Calls go to one member at a time and move to the next when it does not answer (a
/// refused or broken connection, no leader, a timeout): a balanced channel over all
/// members would keep sending to a dead member and fail one call in N.
#[derive(Clone)]
pub(crate) struct Conn {
    clients: Arc<[Client]>,
    current: Arc<AtomicUsize>,
    pub(crate) keys: Keys,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("root", &self.keys.root())
            .field("members", &self.clients.len())
            .finish_non_exhaustive()
    }
}

/// Whether another member may answer where this one failed.
fn unreachable(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ),
        _ => false,
    }
}

impl Conn {
    /// Runs `op` against the current member within the timeout; when that member does not
    /// answer, against the next, each member at most once.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        what: impl Into<String>,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let what = what.into();
        let members = self.clients.len();
        let mut last = StoreError::Stopped;
        for _ in 0..members {
            let index = self.current.load(Ordering::Relaxed) % members;
            match tokio::time::timeout(self.timeout, op(self.clients[index].clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(source)) if members > 1 && unreachable(&source) => {
                    last = StoreError::Etcd {
                        what: what.clone(),
                        source,
                    };
                }
                Ok(Err(source)) => return Err(StoreError::Etcd { what, source }),
                Err(_) => {
                    last = StoreError::Timeout {
                        what: what.clone(),
                        secs: self.timeout.as_secs_f64(),
                    };
                }
            }
            // Move on, unless a concurrent call moved on already.
            let _ = self.current.compare_exchange(
                index,
                (index + 1) % members,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        Err(last)
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut response = self
            .call(format!("get {key}"), |mut c| {
                let key = key.to_string();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(response.take_kvs().into_iter().next())
    }

    /// Every key under `prefix` with the revision the listing is consistent at (see
    /// [`Listing`]).
    pub(crate) async fn list(
        &self,
        prefix: &str,
        keys_only: bool,
    ) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let mut listing = self.listing(prefix, keys_only);
        let mut kvs = Vec::new();
        while let Some(page) = listing.next_page().await? {
            kvs.extend(page);
        }
        Ok((kvs, listing.revision()))
    }

    /// A listing of every key under `prefix`, to be read page by page.
    pub(crate) fn listing<'a>(&'a self, prefix: &'a str, keys_only: bool) -> Listing<'a> {
        Listing {
            conn: self,
            prefix,
            end: prefix_end(prefix.as_bytes()),
            from: Some(prefix.as_bytes().to_vec()),
            page_keys: LIST_PAGE,
            revision: 0,
            keys_only,
        }
    }

    pub(crate) async fn put(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        lease: Option<i64>,
    ) -> Result<(), StoreError> {
        let value = value.into();
        self.call(format!("put {key}"), |mut c| {
            let (key, value) = (key.to_string(), value.clone());
            let options = lease.map(|id| PutOptions::new().with_lease(id));
            async move { c.put(key, value, options).await }
        })
        .await?;
        Ok(())
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.call(format!("delete {key}"), |mut c| {
            let key = key.to_string();
            async move { c.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    pub(crate) async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.call(format!("delete {prefix}*"), |mut c| {
            let prefix = prefix.to_string();
            async move {
                c.delete(prefix, Some(DeleteOptions::new().with_prefix()))
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// A transaction. Tried on another member only when the first did not answer: every
    /// transaction here compares before it writes, so one that did commit fails its
    /// compare when tried again and the caller reads what is there.
    pub(crate) async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.call(what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
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
        let clients = runtime.block_on(async move { connect_clients(&address, timeout).await })?;
        Ok(Self {
            conn: Conn {
                clients: clients.into(),
                current: Arc::new(AtomicUsize::new(0)),
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

async fn connect_clients(
    address: &StoreAddress,
    timeout: Duration,
) -> Result<Vec<Client>, StoreError> {
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
            let mut clients = Vec::new();
            for endpoint in endpoints {
                clients.push(
                    Client::connect([endpoint], Some(options.clone()))
                        .await
                        .map_err(StoreError::etcd(format!("connect to {endpoint}")))?,
                );
            }
            if clients.is_empty() {
                return Err(StoreError::NoAddress);
            }
            Ok(clients)
        }
        StoreAddress::Unix(paths) => {
            let mut clients = Vec::new();
            for path in paths {
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
                clients.push(
                    Client::from_channel(
                        etcd_client::Channel::Tonic(channel),
                        Some(options.clone()),
                    )
                    .await
                    .map_err(StoreError::etcd(format!("connect to {}", path.display())))?,
                );
            }
            if clients.is_empty() {
                return Err(StoreError::NoAddress);
            }
            Ok(clients)
        }
    }
}

/// Every key under a prefix, read in pages, every page at the first one's revision: one
/// answer may carry at most the client's 4 MiB message limit (100,000 endpoints are ~20
/// MB), and a reader that takes each page as it comes never holds the whole listing. A page
/// etcd finds too large for one answer (large values) is asked for again at half the keys.
pub(crate) struct Listing<'a> {
    conn: &'a Conn,
    prefix: &'a str,
    end: Vec<u8>,
    /// Where the next page starts; `None` once the last was read.
    from: Option<Vec<u8>>,
    page_keys: i64,
    revision: i64,
    keys_only: bool,
}

impl Listing<'_> {
    /// The next page; `None` after the last.
    pub(crate) async fn next_page(&mut self) -> Result<Option<Vec<KeyValue>>, StoreError> {
        let Some(from) = self.from.take() else {
            return Ok(None);
        };
        loop {
            let mut options = GetOptions::new()
                .with_range(self.end.clone())
                .with_limit(self.page_keys);
            if self.revision > 0 {
                options = options.with_revision(self.revision);
            }
            if self.keys_only {
                options = options.with_keys_only();
            }
            let answer = self
                .conn
                .call(format!("list {}", self.prefix), |mut c| {
                    let (from, options) = (from.clone(), options.clone());
                    async move { c.get(from, Some(options)).await }
                })
                .await;
            let mut response = match answer {
                Err(StoreError::Etcd {
                    source: etcd_client::Error::GRpcStatus(status),
                    ..
                }) if status.code() == tonic::Code::OutOfRange && self.page_keys > 1 => {
                    self.page_keys /= 2;
                    continue;
                }
                answer => answer?,
            };
            if self.revision == 0 {
                self.revision = response.header().map_or(0, |h| h.revision());
            }
            let page = response.take_kvs();
            if response.more()
                && let Some(last) = page.last()
            {
                // The next page starts just after the last key.
                let mut next = last.key().to_vec();
                next.push(0);
                self.from = Some(next);
            }
            return Ok((!page.is_empty()).then_some(page));
        }
    }

    /// The revision the listing is consistent at (known once a page was read).
    pub(crate) fn revision(&self) -> i64 {
        self.revision
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_just_after_its_last_key() {
        assert_eq!(
            prefix_end(b"/myelin/lab/endpoints/"),
            b"/myelin/lab/endpoints0"
        );
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
