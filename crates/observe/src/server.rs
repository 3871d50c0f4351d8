//! The Hubble-compatible `observer.Observer` gRPC service over the ring, the
//! standard health service, and the listeners (unix socket, and TCP with
//! optional TLS).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use futures::Stream;
use prost_types::Timestamp;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tonic::transport::ServerTlsConfig;
use tonic::{Request, Response, Status};

use crate::filter::FilterSet;
use crate::observer::{AgentEventEntry, Event, Observer};
use crate::peer::PeerService;
use crate::proto::flow::{LostEvent, LostEventSource};
use crate::proto::observer::observer_server::{self, ObserverServer};
use crate::proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse,
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse,
    GetNodesRequest, GetNodesResponse, Namespace, Node, ServerStatusRequest, ServerStatusResponse,
    Tls, get_flows_response,
};
use crate::proto::peer::peer_server::PeerServer;
use crate::proto::relay::NodeState;
use crate::relay::RelayService;
use crate::tls::{ServerTls, TlsError};

/// The name the hubble CLI checks with the gRPC health service.
pub const HEALTH_SERVICE_NAME: &str = "hubble.server.Observer";
/// Hubble's default TCP address, on loopback.
pub const DEFAULT_TCP_ADDR: &str = "127.0.0.1:4245";
/// Responses buffered per GetFlows stream before the reader waits for the client.
const STREAM_BUFFER: usize = 256;
/// Longest a TLS handshake on the TCP listener may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding a listener failed.
    #[error(
        "cannot listen on {what}: {source}; is another agent running, or is the path or port wrong?"
    )]
    Bind {
        /// The address or path.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A TLS file could not be read or parsed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TLS files were read but do not make a server configuration
    /// (for example, the key does not belong to the certificate).
    #[error(
        "cannot use the TLS certificate {} with the key {}: {reason}",
        cert.display(),
        key.display()
    )]
    TlsSetup {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls reported, through tonic.
        reason: String,
    },
    /// The gRPC server failed.
    #[error("observer gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Where the observer API listens.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Unix socket path (created; a stale socket is replaced).
    pub unix_socket: Option<PathBuf>,
    /// TCP address. Plaintext unless [`BoundServer::with_tls`] is used:
    /// keep a plaintext listener on loopback.
    pub tcp: Option<SocketAddr>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            unix_socket: None,
            tcp: DEFAULT_TCP_ADDR.parse().ok(),
        }
    }
}

/// The tonic service implementing `observer.Observer` over an [`Observer`].
#[derive(Debug, Clone)]
pub struct ObserverService {
    observer: Observer,
    /// Whether this service is reached over TLS (reported by GetNodes).
    tls: bool,
}

impl ObserverService {
    /// Wraps an observer, served without TLS.
    pub fn new(observer: Observer) -> Self {
        Self {
            observer,
            tls: false,
        }
    }

    /// The same service, reporting in GetNodes that clients reach it over TLS.
    pub fn with_tls(self, tls: bool) -> Self {
        Self { tls, ..self }
    }
}

fn time_key(ts: Option<&Timestamp>) -> (i64, i32) {
    ts.map_or((0, 0), |t| (t.seconds, t.nanos))
}

fn event_time(event: &Event) -> (i64, i32) {
    match event {
        Event::Flow(flow) => time_key(flow.time.as_ref()),
        Event::Lost(_, at) => time_key(Some(&Timestamp::from(*at))),
    }
}

/// Everything from the request that decides which events a reader sends.
pub(crate) struct Selection {
    filters: FilterSet,
    since: Option<(i64, i32)>,
    until: Option<(i64, i32)>,
    mask: Vec<String>,
}

impl Selection {
    /// What a GetFlows request selects, or `InvalidArgument` naming what in it
    /// cannot be honoured (never a silent match-all). The relay checks its
    /// requests with this too, before asking any node.
    pub(crate) fn from_request(req: &GetFlowsRequest) -> Result<Self, Status> {
        if req.first && req.follow {
            return Err(Status::invalid_argument(
                "first cannot be combined with follow",
            ));
        }
        if let Some(extension) = req.extensions.first() {
            return Err(Status::invalid_argument(format!(
                "extensions are not supported (got {:?}): this server would ignore them; \
                 send the request without extensions",
                extension.type_url
            )));
        }
        let filters = FilterSet::new(&req.whitelist, &req.blacklist)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mask = req
            .field_mask
            .as_ref()
            .or(req
                .experimental
                .as_ref()
                .and_then(|e| e.field_mask.as_ref()))
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        for path in &mask {
            crate::wire_check::check_field_path("flow.Flow", path)
                .map_err(Status::invalid_argument)?;
        }
        Ok(Self {
            filters,
            since: req.since.as_ref().map(|t| time_key(Some(t))),
            until: req.until.as_ref().map(|t| time_key(Some(t))),
            mask,
        })
    }

    fn in_time(&self, key: (i64, i32)) -> bool {
        self.since.is_none_or(|s| key >= s) && self.until.is_none_or(|u| key <= u)
    }

    fn wants(&self, event: &Event) -> bool {
        self.in_time(event_time(event))
            && match event {
                Event::Flow(flow) => self.filters.matches(flow),
                // Lost-event notices are not flows: filters do not apply.
                Event::Lost(..) => true,
            }
    }
}

fn response(event: &Event, node_name: &str, mask: &[String]) -> GetFlowsResponse {
    match event {
        Event::Flow(flow) => GetFlowsResponse {
            time: flow.time,
            node_name: flow.node_name.clone(),
            response_types: Some(get_flows_response::ResponseTypes::Flow(crate::mask::apply(
                flow, mask,
            ))),
        },
        Event::Lost(lost, at) => lost_response(*lost, node_name, *at),
    }
}

fn lost_response(lost: LostEvent, node_name: &str, at: SystemTime) -> GetFlowsResponse {
    GetFlowsResponse {
        time: Some(Timestamp::from(at)),
        node_name: node_name.to_string(),
        response_types: Some(get_flows_response::ResponseTypes::LostEvents(lost)),
    }
}

/// Picks the history part of an answer, oldest first: Hubble's
/// number/first/follow/since rules, where only entries that `counts` says
/// are events count towards `number` (lost-event notices do not).
pub(crate) fn pick<T>(
    matching: impl Iterator<Item = T>,
    number: u64,
    first: bool,
    follow_only_new: bool,
    counts: impl Fn(&T) -> bool,
) -> Vec<T> {
    // Hubble: no number and no since with follow means "only new events".
    if follow_only_new {
        return Vec::new();
    }
    if number == 0 {
        return matching.collect();
    }
    let limit = usize::try_from(number).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut counted = 0usize;
    if first {
        for item in matching {
            if counted == limit {
                break;
            }
            counted += usize::from(counts(&item));
            out.push(item);
        }
    } else {
        let all: Vec<T> = matching.collect();
        for item in all.into_iter().rev() {
            if counted == limit {
                break;
            }
            counted += usize::from(counts(&item));
            out.push(item);
        }
        out.reverse();
    }
    out
}

/// Picks the history part of a GetFlows answer, oldest first.
fn select_history(history: Vec<Event>, selection: &Selection, req: &GetFlowsRequest) -> Vec<Event> {
    pick(
        history.into_iter().filter(|e| selection.wants(e)),
        req.number,
        req.first,
        req.number == 0 && req.since.is_none() && req.follow,
        |e| matches!(e, Event::Flow(_)),
    )
}

/// The stored agent events a GetAgentEvents request asks for, oldest first.
fn select_agent_events(
    history: Vec<AgentEventEntry>,
    since: Option<(i64, i32)>,
    until: Option<(i64, i32)>,
    req: &GetAgentEventsRequest,
) -> Vec<AgentEventEntry> {
    let in_time = |e: &AgentEventEntry| {
        let key = time_key(e.time.as_ref());
        since.is_none_or(|s| key >= s) && until.is_none_or(|u| key <= u)
    };
    pick(
        history.into_iter().filter(in_time),
        req.number,
        req.first,
        req.number == 0 && req.since.is_none() && req.follow,
        |_| true,
    )
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl observer_server::Observer for ObserverService {
    type GetFlowsStream = ReceiverStream<Result<GetFlowsResponse, Status>>;
    type GetAgentEventsStream = ResponseStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = ResponseStream<GetDebugEventsResponse>;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let req = request.into_inner();
        let selection = Selection::from_request(&req)?;
        let subscription = self.observer.subscribe(req.follow);
        let history = select_history(subscription.history, &selection, &req);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let observer = self.observer.clone();
        tokio::spawn(async move {
            let node = observer.config().node_name.clone();
            for event in &history {
                if tx
                    .send(Ok(response(event, &node, &selection.mask)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let Some(mut live) = subscription.live else {
                return;
            };
            loop {
                let event = match live.recv().await {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(lost)) => {
                        tracing::debug!(lost, "GetFlows follower fell behind");
                        observer.record_follower_lag(lost);
                        let notice = LostEvent {
                            source: LostEventSource::HubbleRingBuffer as i32,
                            num_events_lost: lost,
                            cpu: None,
                            first: None,
                            last: None,
                        };
                        if tx
                            .send(Ok(lost_response(notice, &node, SystemTime::now())))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if let Some(until) = selection.until
                    && event_time(&event) > until
                {
                    return;
                }
                if selection.wants(&event)
                    && tx
                        .send(Ok(response(&event, &node, &selection.mask)))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_agent_events(
        &self,
        request: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        let req = request.into_inner();
        if req.first && req.follow {
            return Err(Status::invalid_argument(
                "first cannot be combined with follow",
            ));
        }
        let since = req.since.as_ref().map(|t| time_key(Some(t)));
        let until = req.until.as_ref().map(|t| time_key(Some(t)));
        let subscription = self.observer.subscribe_agent_events(req.follow);
        let history = select_agent_events(subscription.history, since, until, &req);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            for event in history {
                if tx
                    .send(Ok(GetAgentEventsResponse::clone(&event)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let Some(mut live) = subscription.live else {
                return;
            };
            loop {
                let event = match live.recv().await {
                    Ok(event) => event,
                    // The response has no lost-events notice; the reader
                    // just goes on with what is still there.
                    Err(broadcast::error::RecvError::Lagged(lost)) => {
                        tracing::debug!(lost, "GetAgentEvents follower fell behind");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let key = time_key(event.time.as_ref());
                if until.is_some_and(|u| key > u) {
                    return;
                }
                if since.is_none_or(|s| key >= s)
                    && tx
                        .send(Ok(GetAgentEventsResponse::clone(&event)))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_debug_events(
        &self,
        _request: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        // The datapath emits no debug events: an empty stream.
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let status = self.observer.status();
        let config = self.observer.config();
        let node = Node {
            name: config.node_name.clone(),
            version: config.version.clone(),
            address: String::new(),
            state: NodeState::NodeConnected as i32,
            tls: Some(Tls {
                enabled: self.tls,
                server_name: String::new(),
            }),
            uptime_ns: u64::try_from(status.uptime.as_nanos()).unwrap_or(u64::MAX),
            num_flows: status.num_flows,
            max_flows: status.max_flows,
            seen_flows: status.seen_flows,
        };
        Ok(Response::new(GetNodesResponse { nodes: vec![node] }))
    }

    async fn get_namespaces(
        &self,
        _request: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let namespaces = self
            .observer
            .namespaces()
            .into_iter()
            .map(|namespace| Namespace {
                cluster: String::new(),
                namespace,
            })
            .collect();
        Ok(Response::new(GetNamespacesResponse { namespaces }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let status = self.observer.status();
        let flows_rate = self.observer.flows_rate(SystemTime::now());
        Ok(Response::new(ServerStatusResponse {
            num_flows: status.num_flows,
            max_flows: status.max_flows,
            seen_flows: status.seen_flows,
            uptime_ns: u64::try_from(status.uptime.as_nanos()).unwrap_or(u64::MAX),
            num_connected_nodes: None,
            num_unavailable_nodes: None,
            unavailable_nodes: Vec::new(),
            version: self.observer.config().version.clone(),
            flows_rate,
        }))
    }
}

/// What a server answers with.
#[derive(Debug)]
enum Api {
    /// A node's own observer, and the peer service when the node knows its
    /// cluster.
    Node {
        observer: Observer,
        peers: Option<PeerService>,
    },
    /// The relay, over every node's observer.
    Relay(RelayService),
}

/// Listeners bound and ready; [`BoundServer::run`] serves on them.
#[derive(Debug)]
pub struct BoundServer {
    api: Api,
    tcp: Option<TcpListener>,
    unix: Option<UnixListener>,
    tls: Option<ServerTlsConfig>,
    /// The TCP address actually bound (useful with port 0).
    pub tcp_addr: Option<SocketAddr>,
    /// The unix socket path.
    pub unix_path: Option<PathBuf>,
}

/// An error and its sources, joined with ": ".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads the TLS files and checks that they make a server configuration.
fn load_tls(tls: &ServerTls) -> Result<ServerTlsConfig, ServeError> {
    let config = tls.load()?.timeout(TLS_HANDSHAKE_TIMEOUT);
    // Building the acceptor now reports a key that does not fit the
    // certificate before anything listens.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|error| ServeError::TlsSetup {
            cert: tls.cert_file.clone(),
            key: tls.key_file.clone(),
            reason: error_chain(&error),
        })?;
    Ok(config)
}

/// Binds the listeners of `config` for a node's observer; the TCP listener
/// is plaintext until [`BoundServer::with_tls`].
pub async fn bind(observer: Observer, config: &ServeConfig) -> Result<BoundServer, ServeError> {
    bind_api(
        Api::Node {
            observer,
            peers: None,
        },
        config,
    )
    .await
}

/// Binds the listeners of `config` for the relay.
pub async fn bind_relay(
    relay: RelayService,
    config: &ServeConfig,
) -> Result<BoundServer, ServeError> {
    bind_api(Api::Relay(relay), config).await
}

async fn bind_api(api: Api, config: &ServeConfig) -> Result<BoundServer, ServeError> {
    let unix = match &config.unix_socket {
        Some(path) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| ServeError::Bind {
                    what: parent.display().to_string(),
                    source,
                })?;
            }
            // A socket left by a previous run would make bind fail.
            if std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(path);
            }
            Some(UnixListener::bind(path).map_err(|source| ServeError::Bind {
                what: path.display().to_string(),
                source,
            })?)
        }
        None => None,
    };
    let tcp = match config.tcp {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind {
                    what: addr.to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    let tcp_addr = match &tcp {
        Some(listener) => Some(listener.local_addr().map_err(|source| ServeError::Bind {
            what: "tcp listener".to_string(),
            source,
        })?),
        None => None,
    };
    Ok(BoundServer {
        api,
        tcp,
        unix,
        tls: None,
        tcp_addr,
        unix_path: config.unix_socket.clone(),
    })
}

impl BoundServer {
    /// Serves the TCP listener over TLS (mutual TLS when `tls` names client
    /// CA files); the unix socket stays plaintext. Reads and checks the
    /// files now, so that an unusable file is reported before serving.
    pub fn with_tls(self, tls: &ServerTls) -> Result<Self, ServeError> {
        Ok(Self {
            tls: Some(load_tls(tls)?),
            ..self
        })
    }

    /// Serves TCP on `listener`, a socket bound by another process (the
    /// lab's supervisor holds 127.0.0.1:4245 across relay restarts), in
    /// place of a TCP address of the config.
    pub fn with_tcp_listener(self, listener: std::net::TcpListener) -> Result<Self, ServeError> {
        let inherited = |source| ServeError::Bind {
            what: "the inherited TCP listener".to_string(),
            source,
        };
        listener.set_nonblocking(true).map_err(inherited)?;
        let tcp_addr = listener.local_addr().map_err(inherited)?;
        let tcp = TcpListener::from_std(listener).map_err(inherited)?;
        Ok(Self {
            tcp: Some(tcp),
            tcp_addr: Some(tcp_addr),
            ..self
        })
    }

    /// Serves the peer service beside the observer: the nodes `peers`
    /// names (a relay follows them). No effect on a relay's server.
    pub fn with_peers(mut self, peers: PeerService) -> Self {
        if let Api::Node { peers: slot, .. } = &mut self.api {
            *slot = Some(peers);
        }
        self
    }

    /// Serves the observer API (and the health service, and the peer
    /// service if given) until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let listeners = Listeners {
            tcp: self.tcp,
            tcp_addr: self.tcp_addr,
            unix: self.unix,
            unix_path: self.unix_path,
            tls: self.tls,
        };
        match self.api {
            Api::Node { observer, peers } => {
                let peers = peers.map(PeerService::into_server);
                listeners
                    .serve(
                        move |tls| {
                            ObserverServer::new(
                                ObserverService::new(observer.clone()).with_tls(tls),
                            )
                        },
                        peers,
                        shutdown,
                    )
                    .await
            }
            Api::Relay(relay) => {
                listeners
                    .serve(move |_| ObserverServer::new(relay.clone()), None, shutdown)
                    .await
            }
        }
    }
}

/// The bound listeners of a [`BoundServer`].
struct Listeners {
    tcp: Option<TcpListener>,
    tcp_addr: Option<SocketAddr>,
    unix: Option<UnixListener>,
    unix_path: Option<PathBuf>,
    tls: Option<ServerTlsConfig>,
}

impl Listeners {
    /// Serves `observer(tls)`, the health service and `peers` on every
    /// listener until `shutdown` completes.
    async fn serve<S>(
        self,
        observer: impl Fn(bool) -> S,
        peers: Option<PeerServer<PeerService>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError>
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<S>().await;
        health_reporter
            .set_service_status(HEALTH_SERVICE_NAME, tonic_health::ServingStatus::Serving)
            .await;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let tcp = match self.tcp {
            Some(listener) => {
                let tls = self.tls.is_some();
                tracing::info!(addr = ?self.tcp_addr, tls, "observer API listening on TCP");
                let mut builder = tonic::transport::Server::builder();
                if let Some(config) = self.tls {
                    builder = builder.tls_config(config)?;
                }
                Some(
                    builder
                        .add_service(health_service.clone())
                        .add_service(observer(tls))
                        .add_optional_service(peers.clone())
                        .serve_with_incoming_shutdown(
                            TcpListenerStream::new(listener),
                            stopped(stop_rx.clone()),
                        ),
                )
            }
            None => None,
        };
        let unix = self.unix.map(|listener| {
            tracing::info!(path = ?self.unix_path, "observer API listening on unix socket");
            tonic::transport::Server::builder()
                .add_service(health_service.clone())
                .add_service(observer(false))
                .add_optional_service(peers.clone())
                .serve_with_incoming_shutdown(
                    UnixListenerStream::new(listener),
                    stopped(stop_rx.clone()),
                )
        });
        match (tcp, unix) {
            (Some(tcp), Some(unix)) => {
                tokio::try_join!(tcp, unix)?;
            }
            (Some(tcp), None) => tcp.await?,
            (None, Some(unix)) => unix.await?,
            (None, None) => stopped(stop_rx).await,
        }
        Ok(())
    }
}

/// Binds and serves until the process ends or a listener fails.
pub async fn serve(observer: Observer, config: ServeConfig) -> Result<(), ServeError> {
    bind(observer, &config)
        .await?
        .run(std::future::pending())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observer::ObserverConfig;
    use crate::proto::flow::Flow;

    fn flow_of(resp: &GetFlowsResponse) -> Option<&Flow> {
        match &resp.response_types {
            Some(get_flows_response::ResponseTypes::Flow(f)) => Some(f),
            _ => None,
        }
    }

    fn numbered(n: u32) -> Flow {
        Flow {
            proxy_port: n,
            time: Some(Timestamp {
                seconds: i64::from(n),
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    fn pick(req: GetFlowsRequest) -> Vec<u32> {
        let observer = Observer::new(ObserverConfig::new("n"));
        for n in 1..=10 {
            observer.push(numbered(n));
        }
        let selection = Selection {
            filters: FilterSet::default(),
            since: req.since.as_ref().map(|t| time_key(Some(t))),
            until: req.until.as_ref().map(|t| time_key(Some(t))),
            mask: Vec::new(),
        };
        select_history(observer.subscribe(false).history, &selection, &req)
            .iter()
            .map(|e| response(e, "n", &[]))
            .filter_map(|r| flow_of(&r).map(|f| f.proxy_port))
            .collect()
    }

    #[tokio::test]
    async fn a_lagging_follower_is_told_how_many_it_lost() {
        use futures::StreamExt;
        use observer_server::Observer as _;
        let mut config = ObserverConfig::new("n");
        config.follower_buffer = 2;
        let observer = Observer::new(config);
        let service = ObserverService::new(observer.clone());
        let request = Request::new(GetFlowsRequest {
            follow: true,
            ..Default::default()
        });
        let mut stream = service
            .get_flows(request)
            .await
            .expect("GetFlows")
            .into_inner();
        // On this single-threaded runtime the reader task cannot run while
        // we push, so it falls 3 flows behind a buffer of 2.
        for n in 1..=5 {
            observer.push(numbered(n));
        }
        let first = stream.next().await.expect("item").expect("ok");
        match first.response_types {
            Some(get_flows_response::ResponseTypes::LostEvents(lost)) => {
                assert_eq!(lost.num_events_lost, 3);
                assert_eq!(lost.source, LostEventSource::HubbleRingBuffer as i32);
            }
            other => panic!("expected a lost-events notice, got {other:?}"),
        }
        let next = stream.next().await.expect("item").expect("ok");
        assert_eq!(flow_of(&next).map(|f| f.proxy_port), Some(4));
    }

    #[tokio::test]
    async fn last_first_since_until() {
        let last = pick(GetFlowsRequest {
            number: 3,
            ..Default::default()
        });
        assert_eq!(last, vec![8, 9, 10]);
        let first = pick(GetFlowsRequest {
            number: 2,
            first: true,
            ..Default::default()
        });
        assert_eq!(first, vec![1, 2]);
        let window = pick(GetFlowsRequest {
            since: Some(Timestamp {
                seconds: 4,
                nanos: 0,
            }),
            until: Some(Timestamp {
                seconds: 6,
                nanos: 0,
            }),
            ..Default::default()
        });
        assert_eq!(window, vec![4, 5, 6]);
    }
}
