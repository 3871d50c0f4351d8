//! The request layer: per request the policy verdict, the L7 events, then streaming
//! forwarding through the upstream layer to the routed destination.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::{Instrument, debug, warn};

use crate::admission::Slot;
use crate::config::{Direction, Listener, MissingPolicy, PolicyKey};
use crate::event::{HeaderPair, HttpInfo, L7Event, L7EventKind, Peer, Verdict, now_unix_nanos};
use crate::h2c;
use crate::io::{Activity, Rewind};
use crate::metrics::ErrorKind;
use crate::rules::{CompiledSnapshot, Decision, RequestView};
use crate::state::Services;
use crate::upstream::{ConnectionUpstreams, UpstreamError};

/// The body the proxy answers with: the upstream's, streamed, or a short local one.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The body of a policy denial, exactly as Cilium answers.
pub const ACCESS_DENIED: &str = "Access denied\r\n";

/// Hop-by-hop headers (RFC 9110 §7.6.1) that a proxy must not forward.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The per-connection context: what every request of one client connection shares.
pub(crate) struct Connection {
    services: Arc<Services>,
    /// The client.
    source: SocketAddr,
    /// The upstream address the routing layer chose (the original destination, or a
    /// cluster endpoint).
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
    activity: Arc<Activity>,
    upstreams: ConnectionUpstreams,
    /// Shared with any upgraded tunnel, so the slot is given back only when both are done.
    _slot: Arc<Slot>,
}

impl Connection {
    /// The context of a client connection from `source` to `destination`, accepted by
    /// `listener`, keyed `key`.
    pub(crate) fn new(
        services: Arc<Services>,
        source: SocketAddr,
        destination: SocketAddr,
        key: PolicyKey,
        listener: &Listener,
        activity: Arc<Activity>,
        slot: Slot,
    ) -> Self {
        let destination_text = destination.to_string();
        let upstreams = ConnectionUpstreams::new(
            services.upstreams.clone(),
            destination,
            listener.original_source.then(|| source.ip()),
        );
        Self {
            services,
            source,
            destination,
            authority: Authority::try_from(destination_text.as_str()).ok(),
            destination_text,
            key,
            missing_policy: listener.missing_policy,
            http1_upstream: false,
            activity,
            upstreams,
            _slot: Arc::new(slot),
        }
    }

    /// The hyper service that handles the connection's requests.
    pub(crate) fn service(
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
            services: self.services.clone(),
            source: self.source,
            destination: self.destination,
            authority: self.authority.clone(),
            destination_text: self.destination_text.clone(),
            key: self.key,
            missing_policy: self.missing_policy,
            http1_upstream: true,
            activity: self.activity.clone(),
            upstreams: self.upstreams.fresh(),
            _slot: self._slot.clone(),
        }
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

pub(crate) fn non_http_event(
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

    /// Emits the response event (the agent derives `hubble_http_*` from it).
    fn respond(&self, connection: &Connection, status: StatusCode, headers: &HeaderMap) {
        // The request's headers first: readers take the first value of a name.
        let mut reported = self.carried.clone();
        reported.extend(
            event_headers(&self.snapshot, headers)
                .into_iter()
                .filter(|h| !self.carried.contains(h)),
        );
        connection.services.events.emit(self.event(
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
    let shared = &connection.services;
    let started = Instant::now();
    connection.activity.request_arrived();
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
    let upstreams = &connection.upstreams;
    let on_behalf = upstreams.upstream_for(
        exchange
            .snapshot
            .identity(connection.source.ip())
            .map_or(0, |i| i.identity),
    );
    let upstream = if http2 {
        upstreams
            .send_h2(on_behalf, request)
            .await
            .map_err(UpstreamError::Client)
    } else {
        upstreams.send_h1(on_behalf, request).await
    };
    drop(in_flight);
    let mut response = match upstream {
        Ok(response) => response,
        Err(e) if e.caused_by_client() => {
            // The client's body broke off or was malformed (a bad chunk size, say): its
            // fault, not the upstream's.
            shared.metrics.error(ErrorKind::Connection);
            debug!(error = %e, "the client's request body could not be read");
            let response = local_response(StatusCode::BAD_REQUEST, "Bad request\r\n");
            exchange.respond(&connection, response.status(), response.headers());
            return response;
        }
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
    let shared = connection.services.clone();
    let limits = &shared.limits;
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
        .server
        .serve_connection(TokioIo::new(io), upgraded.service());
    tokio::select! {
        result = served => if let Err(e) = result {
            shared.metrics.error(ErrorKind::Connection);
            debug!(error = %e, "h2c connection ended with an error");
        },
        () = connection.activity.idle(limits.idle_timeout) => debug!("closing idle h2c connection"),
        () = shared.drain.deadline() => debug!("closing an h2c connection at the drain deadline"),
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
            connection.services.metrics.error(ErrorKind::Connection);
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
        () = connection.activity.idle(connection.services.limits.idle_timeout) => {
            debug!("closing idle upgraded connection");
        }
        () = connection.services.drain.deadline() => {
            debug!("closing an upgraded connection at the drain deadline");
        }
    }
}
