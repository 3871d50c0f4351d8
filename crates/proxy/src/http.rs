//! The HTTP engine: per connection the policy key, per request the verdict, then streaming
//! forwarding to the original destination.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::config::{Direction, ListenerUpstream, MissingPolicy, PolicyKey};
use crate::event::{HeaderPair, HttpInfo, L7Event, L7EventKind, Peer, Verdict, now_unix_nanos};
use crate::h2c;
use crate::io::{Activity, ClientIo, Rewind, Sniff, sniff};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{DurationLabels, ErrorKind, RequestLabels};
use crate::proxy::{ProxyConfig, Shared};
use crate::rules::{CompiledSnapshot, Decision, RequestView};
use crate::socket::{canonical, connect_marked, original_destination};

/// The body the proxy answers with: the upstream's, streamed, or a short local one.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The body of a policy denial, exactly as Cilium answers.
pub const ACCESS_DENIED: &str = "Access denied\r\n";

/// Bytes read while deciding whether a connection speaks HTTP.
const SNIFF_BYTES: usize = 64;

/// hyper refuses HTTP/1 buffers smaller than this.
const MIN_HEADER_BYTES: usize = 8192;

/// Most `hubble_http_*` series a connection remembers (method × protocol × status).
const METRIC_CACHE_ENTRIES: usize = 8;

/// Hop-by-hop headers (RFC 9110 §7.6.1) that a proxy must not forward.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Connects upstream sockets to the address in the request URI, marked with the proxy mark.
#[derive(Debug, Clone)]
struct MarkedConnector {
    mark: u32,
    source: Option<IpAddr>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for MarkedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (mark, source, timeout) = (self.mark, self.source, self.timeout);
        Box::pin(async move {
            // The engine always writes the original destination as `ip:port` into the URI.
            let address: SocketAddr = uri
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default()
                .parse()
                .map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("upstream {uri}: {e}"))
                })?;
            connect_marked(address, mark, source, timeout)
                .await
                .map(TokioIo::new)
        })
    }
}

/// The server and client machinery, built once per proxy.
pub(crate) struct Engine {
    server: auto::Builder<TokioExecutor>,
    /// Pooled upstream HTTP/2 clients per client ([`UpstreamFor`]): the identity travels in
    /// the upstream socket's mark ([`Engine::mark_for`]) so the datapath applies the
    /// destination's policy to the client the proxy acts for, and connections of different
    /// clients never share a pool. (HTTP/1 requests use their client connection's own
    /// upstream connection, [`PinnedUpstream`].)
    h2_clients: std::sync::Mutex<std::collections::HashMap<UpstreamFor, H2Pool>>,
    /// Idle upstream HTTP/1.1 connections left by client connections that ended, per
    /// (client, destination), newest last: the next client connection to the same
    /// destination for the same client adopts one instead of connecting.
    idle_h1:
        std::sync::Mutex<std::collections::HashMap<(UpstreamFor, SocketAddr), Vec<IdleUpstream>>>,
    /// When [`Engine::sweep_if_due`] last dropped what clients left behind.
    last_sweep: std::sync::Mutex<Instant>,
    mark: u32,
    limits: crate::proxy::Limits,
}

impl Engine {
    pub(crate) fn new(config: &ProxyConfig) -> Self {
        let limits = &config.limits;
        let mut server = auto::Builder::new(TokioExecutor::new());
        server
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
            .max_headers(limits.max_headers)
            .keep_alive(true);
        server
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.max_concurrent_streams);
        Self {
            server,
            h2_clients: std::sync::Mutex::new(std::collections::HashMap::new()),
            idle_h1: std::sync::Mutex::new(std::collections::HashMap::new()),
            last_sweep: std::sync::Mutex::new(Instant::now()),
            mark: config.mark,
            limits: limits.clone(),
        }
    }

    /// The mark of upstream sockets opened on behalf of `identity` (0: unknown):
    /// `mark | identity << 16`, or no mark when the proxy marks nothing.
    fn mark_for(&self, identity: u32) -> u32 {
        if self.mark == 0 {
            0
        } else {
            self.mark | (identity << 16)
        }
    }

    /// Once per upstream idle timeout, drops the HTTP/2 pools no new client connection asked
    /// for within it and the parked HTTP/1.1 connections that idled out or closed, with the
    /// map entries of clients that did not come back. Keyed by client address (pods come
    /// and go), the maps would otherwise grow for as long as the proxy runs, and parked
    /// connections would stay open until their server closed them.
    fn sweep_if_due(&self) {
        let timeout = self.limits.upstream_idle_timeout;
        {
            let mut last = lock(&self.last_sweep);
            if last.elapsed() < timeout {
                return;
            }
            *last = Instant::now();
        }
        // Connections holding a pool's client keep using it; new ones build another.
        lock(&self.h2_clients).retain(|_, pool| pool.used.elapsed() < timeout);
        lock(&self.idle_h1).retain(|_, parked| {
            parked.retain(|p| !p.sender.is_closed() && p.since.elapsed() < timeout);
            !parked.is_empty()
        });
    }

    /// Keeps an upstream HTTP/1.1 connection whose client connection ended, if it can take
    /// another request, for [`Engine::adopt_h1`]. Connections idle longer than the upstream
    /// idle timeout, or closed by the upstream, are dropped here and there.
    fn park_h1(
        &self,
        upstream: UpstreamFor,
        destination: SocketAddr,
        sender: hyper::client::conn::http1::SendRequest<Incoming>,
    ) {
        if !sender.is_ready() {
            return;
        }
        self.sweep_if_due();
        let mut idle = lock(&self.idle_h1);
        let parked = idle.entry((upstream, destination)).or_default();
        let timeout = self.limits.upstream_idle_timeout;
        parked.retain(|p| !p.sender.is_closed() && p.since.elapsed() < timeout);
        if parked.len() >= MAX_IDLE_H1_PER_DESTINATION {
            parked.remove(0);
        }
        parked.push(IdleUpstream {
            since: Instant::now(),
            sender,
        });
    }

    /// The most recently parked usable upstream connection to `destination` for `upstream`.
    fn adopt_h1(
        &self,
        upstream: UpstreamFor,
        destination: SocketAddr,
    ) -> Option<hyper::client::conn::http1::SendRequest<Incoming>> {
        let mut idle = lock(&self.idle_h1);
        let key = (upstream, destination);
        let parked = idle.get_mut(&key)?;
        let timeout = self.limits.upstream_idle_timeout;
        let mut adopted = None;
        while let Some(candidate) = parked.pop() {
            if !candidate.sender.is_closed() && candidate.since.elapsed() < timeout {
                adopted = Some(candidate.sender);
                break;
            }
        }
        if parked.is_empty() {
            idle.remove(&key);
        }
        adopted
    }

    /// The pooled HTTP/2 upstream client for `upstream`.
    fn h2_client(&self, upstream: UpstreamFor) -> Client<MarkedConnector, Incoming> {
        self.sweep_if_due();
        let mut pools = lock(&self.h2_clients);
        let pool = pools.entry(upstream).or_insert_with(|| {
            let connector = MarkedConnector {
                mark: self.mark_for(upstream.identity),
                source: upstream.source,
                timeout: self.limits.upstream_connect_timeout,
            };
            H2Pool {
                client: Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .pool_idle_timeout(self.limits.upstream_idle_timeout)
                    .http2_only(true)
                    .build(connector),
                used: Instant::now(),
            }
        });
        pool.used = Instant::now();
        pool.client.clone()
    }
}

/// An upstream HTTP/2 client pool of [`Engine::h2_clients`], and when a client connection
/// last asked for it.
struct H2Pool {
    client: Client<MarkedConnector, Incoming>,
    used: Instant,
}

/// Whom upstream connections are opened for: the client's identity, which their socket mark
/// carries, and, when the listener keeps the client's address ([`Listener::original_source`]),
/// that address. Connections are shared only between requests of the same.
///
/// [`Listener::original_source`]: crate::config::Listener::original_source
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct UpstreamFor {
    identity: u32,
    source: Option<IpAddr>,
}

/// The HTTP/2 upstream client of a connection, remembered with whom it was chosen for so
/// that later requests skip the engine's shared map.
type CachedClient = (UpstreamFor, Client<MarkedConnector, Incoming>);

/// An upstream HTTP/1.1 connection kept for one client connection, with whom it was opened
/// for.
struct PinnedUpstream {
    upstream: UpstreamFor,
    sender: hyper::client::conn::http1::SendRequest<Incoming>,
}

/// An upstream HTTP/1.1 connection parked in [`Engine::park_h1`], since when.
struct IdleUpstream {
    since: Instant,
    sender: hyper::client::conn::http1::SendRequest<Incoming>,
}

/// Most idle upstream HTTP/1.1 connections kept per (client, destination).
const MAX_IDLE_H1_PER_DESTINATION: usize = 64;

/// `hubble_http_*` series a connection already looked up: (method, protocol, status) →
/// (request counter, duration histogram), so repeated requests neither allocate labels nor
/// hash them under the family's lock.
type MetricCache = Vec<(Method, &'static str, u16, Counter, Histogram)>;

/// Per-connection facts every request of the connection shares.
struct Connection {
    shared: Arc<Shared>,
    /// The client.
    source: SocketAddr,
    /// The original destination (or the chosen cluster endpoint).
    destination: SocketAddr,
    /// `destination` as the authority of upstream request URIs, built once.
    authority: Option<Authority>,
    /// `destination` as text, for URLs of requests without a host.
    destination_text: String,
    key: PolicyKey,
    missing_policy: MissingPolicy,
    /// Requests go upstream as HTTP/1.1 even when the client speaks HTTP/2: set for a
    /// connection upgraded with h2c, whose client did not know the server speaks HTTP/2.
    http1_upstream: bool,
    /// Upstream connections leave from the client's address (the listener's
    /// `original_source`).
    original_source: bool,
    activity: Arc<Activity>,
    /// The upstream client of the last HTTP/2 request (see [`CachedClient`]).
    h2_client: std::sync::Mutex<Option<CachedClient>>,
    /// The upstream HTTP/1.1 connection of this client connection: HTTP/1 requests of one
    /// client connection come one at a time, so they reuse one upstream connection of their
    /// own instead of checking one out of a shared pool per request.
    upstream_h1: std::sync::Mutex<Option<PinnedUpstream>>,
    /// See [`MetricCache`].
    metrics: std::sync::Mutex<MetricCache>,
    /// Held by the connection and any upgraded tunnel, so the slot and gauge are released
    /// only when both are done.
    _slot: Arc<Slot>,
}

impl Drop for Connection {
    /// Leaves the upstream HTTP/1.1 connection to the next client connection.
    fn drop(&mut self) {
        if let Some(pinned) = lock(&self.upstream_h1).take() {
            self.shared
                .engine
                .park_h1(pinned.upstream, self.destination, pinned.sender);
        }
    }
}

/// A connection slot: the semaphore permit and the connections gauge.
struct Slot {
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, shared: Arc<Shared>) -> Self {
        shared.metrics.connections.inc();
        Self {
            _permit: permit,
            shared,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.metrics.connections.dec();
    }
}

/// Accepts connections until `cancel` fires; waits for a free connection slot before each
/// accept so excess clients queue in the kernel instead of in our memory.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    name: String,
    listener: TcpListener,
    cancel: CancellationToken,
) {
    loop {
        let permit = tokio::select! {
            permit = shared.connection_slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = cancel.cancelled() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = cancel.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let span = info_span!("connection", listener = %name, client = %peer);
                let slot = Slot::new(permit, shared.clone());
                tokio::spawn(
                    serve(shared.clone(), name.clone(), stream, canonical(peer), slot)
                        .instrument(span),
                );
            }
            Err(e) => {
                shared.metrics.error(ErrorKind::Accept);
                warn!(listener = %name, error = %e, "accept failed");
                // Typically EMFILE: give other connections time to close.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve(
    shared: Arc<Shared>,
    name: String,
    mut stream: TcpStream,
    source: SocketAddr,
    slot: Slot,
) {
    let Some(snapshot) = shared.current() else {
        return;
    };
    let Some(listener) = snapshot.listener(&name) else {
        return;
    };
    let destination = match &listener.upstream {
        ListenerUpstream::Transparent => match original_destination(&stream) {
            Ok(destination) => destination,
            Err(e) => {
                shared.metrics.error(ErrorKind::Connection);
                warn!(error = %e, "no original destination");
                return;
            }
        },
        ListenerUpstream::Cluster(cluster) => match snapshot.pick_endpoint(cluster) {
            Some(endpoint) => endpoint,
            None => return,
        },
    };
    let key = PolicyKey {
        endpoint: match listener.direction {
            Direction::Ingress => destination.ip(),
            Direction::Egress => source.ip(),
        },
        port: destination.port(),
        direction: listener.direction,
    };
    let missing_policy = listener.missing_policy;
    let original_source = listener.original_source;
    let limits = &shared.config.limits;
    // Responses are written whole by hyper; do not let Nagle hold back the next one.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
    }

    // Sniff before handing the stream to hyper: non-HTTP bytes must be refused and reported,
    // not answered with a parse error or, worse, passed on.
    let mut prefix = BytesMut::with_capacity(SNIFF_BYTES);
    let deadline = Instant::now() + limits.header_read_timeout;
    loop {
        match sniff(&prefix) {
            Sniff::Http => break,
            Sniff::NotHttp => {
                shared.metrics.error(ErrorKind::NonHttp);
                debug!(%destination, "refusing non-HTTP connection");
                let event = non_http_event(&snapshot, source, destination, key.direction);
                shared.events.emit(event);
                return;
            }
            Sniff::NeedMore => {}
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut prefix)).await {
            Ok(Ok(0)) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "client read failed");
                return;
            }
            Err(_) => {
                shared.metrics.error(ErrorKind::Connection);
                debug!("client sent no request in time");
                return;
            }
        }
    }

    let activity = Arc::new(Activity::new());
    let io = ClientIo::new(prefix.freeze(), stream, activity.clone());
    let destination_text = destination.to_string();
    let connection = Arc::new(Connection {
        shared: shared.clone(),
        source,
        destination,
        authority: Authority::try_from(destination_text.as_str()).ok(),
        destination_text,
        key,
        missing_policy,
        http1_upstream: false,
        original_source,
        activity: activity.clone(),
        h2_client: std::sync::Mutex::new(None),
        upstream_h1: std::sync::Mutex::new(None),
        metrics: std::sync::Mutex::new(Vec::new()),
        _slot: Arc::new(slot),
    });
    let served = shared
        .engine
        .server
        .serve_connection_with_upgrades(TokioIo::new(io), connection.service());
    tokio::select! {
        result = served => if let Err(e) = result {
            shared.metrics.error(ErrorKind::Connection);
            debug!(error = %e, "client connection ended with an error");
        },
        () = activity.idle(limits.idle_timeout) => debug!("closing idle client connection"),
    }
}

impl Connection {
    /// The hyper service that handles the connection's requests.
    fn service(
        self: Arc<Self>,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send,
    > + Clone
    + Send
    + 'static {
        hyper::service::service_fn(move |request| {
            let connection = self.clone();
            async move { Ok::<_, Infallible>(handle(connection, request).await) }
        })
    }

    /// The same client connection after an h2c upgrade: HTTP/2 towards the client, HTTP/1.1
    /// upstream.
    fn h2c_upgraded(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            source: self.source,
            destination: self.destination,
            authority: self.authority.clone(),
            destination_text: self.destination_text.clone(),
            key: self.key,
            missing_policy: self.missing_policy,
            http1_upstream: true,
            original_source: self.original_source,
            activity: self.activity.clone(),
            h2_client: std::sync::Mutex::new(None),
            upstream_h1: std::sync::Mutex::new(None),
            metrics: std::sync::Mutex::new(Vec::new()),
            _slot: self._slot.clone(),
        }
    }

    /// Whom this connection's upstream connections for a client of `identity` are for.
    fn upstream_for(&self, identity: u32) -> UpstreamFor {
        UpstreamFor {
            identity,
            source: self.original_source.then(|| self.source.ip()),
        }
    }

    /// Sends an HTTP/2 `request` upstream with the pooled client for `upstream`: the one the
    /// previous request used when it fits, else the engine's (which is then remembered).
    fn send_h2(
        &self,
        upstream: UpstreamFor,
        request: Request<Incoming>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        let mut cached = lock(&self.h2_client);
        match &*cached {
            Some((chosen_for, client)) if *chosen_for == upstream => client.request(request),
            _ => {
                let client = self.shared.engine.h2_client(upstream);
                let response = client.request(request);
                *cached = Some((upstream, client));
                response
            }
        }
    }

    /// Opens a marked upstream HTTP/1.1 connection to the destination for `upstream`.
    async fn connect_h1(
        &self,
        upstream: UpstreamFor,
    ) -> Result<hyper::client::conn::http1::SendRequest<Incoming>, UpstreamError> {
        let engine = &self.shared.engine;
        let stream = connect_marked(
            self.destination,
            engine.mark_for(upstream.identity),
            upstream.source,
            engine.limits.upstream_connect_timeout,
        )
        .await
        .map_err(UpstreamError::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Http)?;
        tokio::spawn(
            async move {
                if let Err(e) = connection.with_upgrades().await {
                    debug!(error = %e, "upstream connection ended with an error");
                }
            }
            .in_current_span(),
        );
        Ok(sender)
    }

    /// Sends an HTTP/1.1 `request` upstream on this client connection's own upstream
    /// connection, opening one when there is none (or it closed, or it was opened for
    /// another client). A request the kept connection could not take because the upstream
    /// had just closed it is sent once more on a new connection.
    async fn send_h1(
        &self,
        upstream: UpstreamFor,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let kept = lock(&self.upstream_h1)
            .take()
            .filter(|p| p.upstream == upstream && !p.sender.is_closed())
            .map(|p| p.sender)
            .or_else(|| self.shared.engine.adopt_h1(upstream, self.destination));
        let (mut sender, reused) = match kept {
            Some(sender) => (sender, true),
            None => (self.connect_h1(upstream).await?, false),
        };
        let request = match sender.ready().await {
            Ok(()) => match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.keep_h1(upstream, sender, response)),
                Err(mut e) => match e.take_message() {
                    Some(request) if reused => request,
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            },
            Err(e) if !reused => return Err(UpstreamError::Http(e)),
            Err(_) => request,
        };
        let mut sender = self.connect_h1(upstream).await?;
        sender.ready().await.map_err(UpstreamError::Http)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Http)?;
        Ok(self.keep_h1(upstream, sender, response))
    }

    /// Keeps `sender` for the next request unless the response hands the connection over
    /// to an upgrade. Concurrent streams of an h2c-upgraded connection each hold an upstream
    /// connection of their own; one displaced from the slot is parked for other client
    /// connections once its response has been read, not closed.
    fn keep_h1(
        &self,
        upstream: UpstreamFor,
        sender: hyper::client::conn::http1::SendRequest<Incoming>,
        response: Response<Incoming>,
    ) -> Response<Incoming> {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let displaced = lock(&self.upstream_h1).replace(PinnedUpstream { upstream, sender });
            if let Some(PinnedUpstream {
                upstream,
                mut sender,
            }) = displaced
            {
                let shared = self.shared.clone();
                let destination = self.destination;
                tokio::spawn(async move {
                    if sender.ready().await.is_ok() {
                        shared.engine.park_h1(upstream, destination, sender);
                    }
                });
            }
        }
        response
    }

    /// The `hubble_http_*` series of one request, from the connection's cache when it was
    /// seen before.
    fn http_metrics(
        &self,
        method: &Method,
        protocol: &'static str,
        status: u16,
    ) -> (Counter, Histogram) {
        let mut cache = lock(&self.metrics);
        if let Some((.., counter, histogram)) = cache
            .iter()
            .find(|(m, p, s, ..)| m == method && *p == protocol && *s == status)
        {
            return (counter.clone(), histogram.clone());
        }
        let metrics = &self.shared.metrics;
        let reporter = match self.key.direction {
            Direction::Ingress => "server",
            Direction::Egress => "client",
        };
        let counter = metrics
            .http_requests
            .get_or_create(&RequestLabels {
                method: method.as_str().to_owned(),
                protocol: protocol.to_owned(),
                reporter: reporter.to_owned(),
                status: status.to_string(),
            })
            .clone();
        let histogram = metrics
            .http_duration
            .get_or_create(&DurationLabels {
                method: method.as_str().to_owned(),
                reporter: reporter.to_owned(),
            })
            .clone();
        if cache.len() >= METRIC_CACHE_ENTRIES {
            cache.remove(0);
        }
        cache.push((
            method.clone(),
            protocol,
            status,
            counter.clone(),
            histogram.clone(),
        ));
        (counter, histogram)
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn event_headers(snapshot: &CompiledSnapshot, headers: &HeaderMap) -> Vec<HeaderPair> {
    headers
        .iter()
        .filter(|(name, _)| snapshot.event_header_allowed(name))
        .map(|(name, value)| HeaderPair {
            key: name.as_str().to_owned(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        })
        .collect()
}

fn non_http_event(
    snapshot: &CompiledSnapshot,
    source: SocketAddr,
    destination: SocketAddr,
    direction: Direction,
) -> L7Event {
    L7Event {
        time_unix_nanos: now_unix_nanos(),
        kind: L7EventKind::NonHttp,
        verdict: Verdict::Dropped,
        direction,
        is_reply: false,
        source: Peer::new(source, snapshot.identity(source.ip())),
        destination: Peer::new(destination, snapshot.identity(destination.ip())),
        http: None,
        latency_ns: None,
        summary: Some("connection to an HTTP port did not speak HTTP".to_owned()),
    }
}

/// Request headers that name the exchange rather than describe one message. The response's
/// event carries the request's values (when `event_headers` lists them), as Cilium's access
/// log carries `x-request-id` over to the response, so that a response is found by its
/// request's trace or request id, whatever the server sends back.
const EXCHANGE_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("x-request-id"),
];

/// What a request's events and metrics need after the request itself has moved on.
struct Exchange {
    snapshot: Arc<CompiledSnapshot>,
    method: Method,
    url: String,
    protocol: &'static str,
    started: Instant,
    /// The request's reported `EXCHANGE_HEADERS`, for the response's event.
    carried: Vec<HeaderPair>,
}

impl Exchange {
    fn event(
        &self,
        connection: &Connection,
        reply: bool,
        verdict: Verdict,
        code: u16,
        headers: Vec<HeaderPair>,
    ) -> L7Event {
        let source = Peer::new(
            connection.source,
            self.snapshot.identity(connection.source.ip()),
        );
        let destination = Peer::new(
            connection.destination,
            self.snapshot.identity(connection.destination.ip()),
        );
        let (source, destination) = if reply {
            (destination, source)
        } else {
            (source, destination)
        };
        L7Event {
            time_unix_nanos: now_unix_nanos(),
            kind: if reply {
                L7EventKind::HttpResponse
            } else {
                L7EventKind::HttpRequest
            },
            verdict,
            direction: connection.key.direction,
            is_reply: reply,
            source,
            destination,
            http: Some(HttpInfo {
                code,
                method: self.method.as_str().to_owned(),
                url: self.url.clone(),
                protocol: self.protocol.to_owned(),
                headers,
            }),
            latency_ns: reply
                .then(|| u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)),
            summary: None,
        }
    }

    /// Emits the response event and records the `hubble_http_*` metrics.
    fn respond(&self, connection: &Connection, status: StatusCode, headers: &HeaderMap) {
        let shared = &connection.shared;
        let (requests, duration) =
            connection.http_metrics(&self.method, self.protocol, status.as_u16());
        requests.inc();
        duration.observe(self.started.elapsed().as_secs_f64());
        // The request's headers first: readers take the first value of a name.
        let mut reported = self.carried.clone();
        reported.extend(
            event_headers(&self.snapshot, headers)
                .into_iter()
                .filter(|h| !self.carried.contains(h)),
        );
        shared.events.emit(self.event(
            connection,
            true,
            Verdict::Forwarded,
            status.as_u16(),
            reported,
        ));
    }
}

fn local_response(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including those the `Connection` header names. An upgrade
/// keeps `Connection: upgrade` and `Upgrade`, which the upstream needs to agree to it; TE
/// keeps `trailers`, which gRPC needs.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade && let Some(value) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
}

async fn handle(
    connection: Arc<Connection>,
    mut request: Request<Incoming>,
) -> Response<ProxyBody> {
    let shared = &connection.shared;
    let started = Instant::now();
    let Some(snapshot) = shared.current() else {
        return local_response(StatusCode::SERVICE_UNAVAILABLE, "no configuration\r\n");
    };
    if h2c::is_upgrade_request(&request) {
        // The request itself is answered on stream 1 of the upgraded connection, where it
        // meets the policy like any HTTP/2 request.
        let replay = h2c::stream_one(&request);
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(serve_h2c(connection.clone(), upgrade, replay).in_current_span());
        return h2c::switching_protocols();
    }
    // Host header, else the URI's authority (HTTP/2 `:authority`); cheap clones of the
    // request's own buffers, not copies.
    let host_value = request.headers().get(header::HOST).cloned();
    let host_header = host_value.as_ref().and_then(|h| h.to_str().ok());
    let authority = request.uri().authority().cloned();
    let host = host_header
        .or_else(|| authority.as_ref().map(Authority::as_str))
        .unwrap_or_default();
    let path_and_query = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let path = path_and_query.as_str();
    let shown_host = if host.is_empty() {
        connection.destination_text.as_str()
    } else {
        host
    };
    let mut url = String::with_capacity("http://".len() + shown_host.len() + path.len());
    url.push_str("http://");
    url.push_str(shown_host);
    url.push_str(path);
    let request_headers = event_headers(&snapshot, request.headers());
    let exchange = Exchange {
        method: request.method().clone(),
        url,
        protocol: protocol(request.version()),
        started,
        snapshot: snapshot.clone(),
        carried: request_headers
            .iter()
            .filter(|h| EXCHANGE_HEADERS.iter().any(|name| name == h.key.as_str()))
            .cloned()
            .collect(),
    };
    let remote = match connection.key.direction {
        Direction::Ingress => connection.source.ip(),
        Direction::Egress => connection.destination.ip(),
    };
    let decision = match snapshot.policy(&connection.key) {
        Some(policy) => policy.evaluate(&RequestView {
            method: request.method(),
            path,
            host,
            headers: request.headers(),
            peer_identity: snapshot.identity(remote).map(|i| i.identity),
        }),
        None => match connection.missing_policy {
            MissingPolicy::Allow => Decision::allow(),
            MissingPolicy::Deny => {
                shared.metrics.error(ErrorKind::MissingPolicy);
                debug!(key = %crate::rules::KeyDisplay(connection.key), "no L7 policy for a redirected connection; denying");
                Decision::deny()
            }
        },
    };
    let verdict = if decision.allowed {
        Verdict::Forwarded
    } else {
        Verdict::Dropped
    };
    let mut event = exchange.event(&connection, false, verdict, 0, request_headers);
    if !decision.logged_mismatches.is_empty() {
        let names: Vec<&str> = decision
            .logged_mismatches
            .iter()
            .map(HeaderName::as_str)
            .collect();
        event.summary = Some(format!("header mismatch logged: {}", names.join(", ")));
        tracing::info!(headers = ?names, "L7 header mismatch (LOG)");
    }
    shared.events.emit(event);
    if !decision.allowed {
        let response = local_response(StatusCode::FORBIDDEN, ACCESS_DENIED);
        exchange.respond(&connection, response.status(), response.headers());
        return response;
    }
    decision.apply(request.headers_mut());

    // An h2c upgrade this proxy does not honour (see `h2c::is_upgrade_request`) continues as
    // HTTP/1.1 without it.
    let upgrade = request.version() == Version::HTTP_11
        && is_upgrade(request.headers())
        && !request
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"h2c"));
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    strip_hop_by_hop(request.headers_mut(), upgrade);
    let http2 = request.version() == Version::HTTP_2 && !connection.http1_upstream;
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = connection.authority.clone();
    parts.path_and_query = Some(path_and_query.clone());
    match Uri::from_parts(parts) {
        Ok(uri) => *request.uri_mut() = uri,
        Err(e) => {
            shared.metrics.error(ErrorKind::Upstream);
            warn!(error = %e, "cannot build the upstream URI");
            let response = local_response(StatusCode::BAD_REQUEST, "Bad request\r\n");
            exchange.respond(&connection, response.status(), response.headers());
            return response;
        }
    }
    if !http2
        && !request.headers().contains_key(header::HOST)
        && !host.is_empty()
        && let Ok(value) = HeaderValue::from_str(host)
    {
        request.headers_mut().insert(header::HOST, value);
    }
    *request.version_mut() = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    let in_flight = connection.activity.request();
    let on_behalf = connection.upstream_for(
        exchange
            .snapshot
            .identity(connection.source.ip())
            .map_or(0, |i| i.identity),
    );
    let upstream = if http2 {
        connection
            .send_h2(on_behalf, request)
            .await
            .map_err(UpstreamError::Client)
    } else {
        connection.send_h1(on_behalf, request).await
    };
    drop(in_flight);
    let mut response = match upstream {
        Ok(response) => response,
        Err(e) => {
            shared.metrics.error(ErrorKind::Upstream);
            warn!(destination = %connection.destination, error = %e, "upstream request failed");
            let response = local_response(StatusCode::BAD_GATEWAY, "Upstream unavailable\r\n");
            exchange.respond(&connection, response.status(), response.headers());
            return response;
        }
    };
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(
            tunnel(connection.clone(), client_upgrade, upstream_upgrade).in_current_span(),
        );
    }
    strip_hop_by_hop(response.headers_mut(), switching);
    exchange.respond(&connection, response.status(), response.headers());
    response.map(BodyExt::boxed)
}

/// Serves an h2c-upgraded client connection as HTTP/2, starting with the upgrade request
/// replayed as stream 1 (see [`h2c`]).
async fn serve_h2c(connection: Arc<Connection>, upgrade: hyper::upgrade::OnUpgrade, replay: Bytes) {
    let shared = connection.shared.clone();
    let limits = &shared.config.limits;
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            shared.metrics.error(ErrorKind::Connection);
            debug!(error = %e, "h2c upgrade failed");
            return;
        }
    };
    let mut io = TokioIo::new(upgraded);
    let preface =
        match tokio::time::timeout(limits.header_read_timeout, h2c::read_preface(&mut io)).await {
            Ok(Ok(preface)) => preface,
            Ok(Err(e)) => {
                shared.metrics.error(ErrorKind::Connection);
                debug!(error = %e, "h2c upgrade failed");
                return;
            }
            Err(_) => {
                shared.metrics.error(ErrorKind::Connection);
                debug!("no HTTP/2 preface in time after the h2c upgrade");
                return;
            }
        };
    let mut prefix = preface;
    prefix.extend_from_slice(&replay);
    let io = Rewind::new(prefix.freeze(), io);
    let upgraded = Arc::new(connection.h2c_upgraded());
    let served = shared
        .engine
        .server
        .serve_connection(TokioIo::new(io), upgraded.service());
    tokio::select! {
        result = served => if let Err(e) = result {
            shared.metrics.error(ErrorKind::Connection);
            debug!(error = %e, "h2c connection ended with an error");
        },
        () = connection.activity.idle(limits.idle_timeout) => debug!("closing idle h2c connection"),
    }
}

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("connecting: {0}")]
    Connect(io::Error),
    #[error(transparent)]
    Http(hyper::Error),
    #[error(transparent)]
    Client(hyper_util::client::legacy::Error),
}

/// Locks `mutex`; a panic elsewhere while it was held leaves data that is still usable here
/// (caches and connection handles), so poisoning is ignored.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Copies bytes both ways between an upgraded client connection and its upgraded upstream
/// (WebSocket and the like) until either side closes or the connection idles out.
async fn tunnel(
    connection: Arc<Connection>,
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            connection.shared.metrics.error(ErrorKind::Connection);
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => if let Err(e) = result {
            debug!(error = %e, "upgraded connection ended with an error");
        },
        () = connection.activity.idle(connection.shared.config.limits.idle_timeout) => {
            debug!("closing idle upgraded connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(last: u8) -> UpstreamFor {
        UpstreamFor {
            identity: 7,
            source: Some(IpAddr::from([10, 0, 0, last])),
        }
    }

    /// A ready upstream HTTP/1.1 connection over an in-memory pipe.
    async fn h1_sender() -> hyper::client::conn::http1::SendRequest<Incoming> {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(ours))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _keep_the_pipe_open = theirs;
            let _ = connection.await;
        });
        while !sender.is_ready() {
            tokio::task::yield_now().await;
        }
        sender
    }

    #[tokio::test(start_paused = true)]
    async fn what_clients_leave_behind_is_dropped_after_the_idle_timeout() {
        let mut config = ProxyConfig::new("/nonexistent/proxy.sock");
        config.limits.upstream_idle_timeout = Duration::from_secs(60);
        let engine = Engine::new(&config);
        let destination: SocketAddr = "10.0.1.1:80".parse().expect("address");
        for last in 0..50 {
            engine.h2_client(client(last));
            engine.park_h1(client(last), destination, h1_sender().await);
        }
        assert_eq!(lock(&engine.h2_clients).len(), 50);
        assert_eq!(lock(&engine.idle_h1).len(), 50);

        // Within the timeout nothing goes; after it, only what a client still uses stays.
        tokio::time::advance(Duration::from_secs(30)).await;
        engine.h2_client(client(0));
        assert_eq!(lock(&engine.h2_clients).len(), 50);
        tokio::time::advance(Duration::from_secs(31)).await;
        engine.h2_client(client(0));
        assert_eq!(lock(&engine.h2_clients).len(), 1, "client 0's pool stays");
        assert!(
            lock(&engine.idle_h1).is_empty(),
            "parked connections idled out"
        );
        assert!(engine.adopt_h1(client(1), destination).is_none());
    }
}
