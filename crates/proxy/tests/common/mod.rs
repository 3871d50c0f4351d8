//! Test harness: a real upstream server, a real agent-side control server and a real proxy.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use myelin_proxy::config::{
    Cluster, Direction, HttpRule, IdentityEntry, L7Policy, Listener, ListenerUpstream,
    MissingPolicy, PolicyKey, Snapshot,
};
use myelin_proxy::control::ControlServer;
use myelin_proxy::{Proxy, ProxyConfig};
use tokio::net::{TcpListener, TcpStream};

pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// A real HTTP/1.1 + HTTP/2 server standing for the original destination.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
}

pub async fn upstream() -> Upstream {
    upstream_on("127.0.0.1:0").await
}

pub async fn upstream_on(bind: &str) -> Upstream {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |r| upstream_handler(r, peer));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream { addr, connections }
}

async fn upstream_handler(
    mut request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    if path == "/peer" {
        // Who connected: the proxy's address, or the client's when the proxy keeps it.
        return Ok(Response::new(full(peer.ip().to_string())));
    }
    if path == "/ws" {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
            }
        });
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(full(""))
            .unwrap();
        return Ok(response);
    }
    if path == "/close" {
        // The upstream ends its side of the keep-alive connection after this response.
        let response = Response::builder()
            .header("connection", "close")
            .body(full("closing\n"))
            .unwrap();
        return Ok(response);
    }
    if path.starts_with("/slow") {
        // Keeps requests in flight long enough to overlap.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    if path == "/echo" {
        return Ok(Response::new(request.into_body().boxed()));
    }
    if path.starts_with("/pkg.Service/") {
        let collected = request.into_body().collect().await.unwrap();
        let trailers_in = collected.trailers().cloned();
        let mut data = b"reply:".to_vec();
        data.extend_from_slice(&collected.to_bytes());
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        if let Some(t) = trailers_in.and_then(|t| t.get("x-client-trailer").cloned()) {
            trailers.insert("x-client-trailer-seen", t);
        }
        let frames = vec![
            Ok::<_, hyper::Error>(Frame::data(Bytes::from(data))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures::stream::iter(frames)).boxed();
        let response = Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap();
        return Ok(response);
    }
    let mut text = format!(
        "{} {} {:?}\n",
        request.method(),
        request.uri().path_and_query().map_or("/", |p| p.as_str()),
        request.version()
    );
    for (name, value) in request.headers() {
        text.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
    }
    Ok(Response::new(full(text)))
}

/// Agent side, proxy and upstream, wired together over real sockets.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub agent: Option<ControlServer>,
    pub proxy: Proxy,
    pub upstream: Upstream,
    pub messages: tokio::sync::broadcast::Receiver<myelin_proxy::control::ProxyMessage>,
}

pub fn socket_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("proxy.sock")
}

pub fn snapshot_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("snapshot.json")
}

/// The key of the upstream's ingress policy.
pub fn key(upstream: &Upstream) -> PolicyKey {
    PolicyKey {
        endpoint: upstream.addr.ip(),
        port: upstream.addr.port(),
        direction: Direction::Ingress,
    }
}

/// A snapshot with one cluster listener in front of the upstream and the given rules.
pub fn snapshot(version: u64, upstream: &Upstream, rules: Vec<HttpRule>) -> Snapshot {
    Snapshot {
        version,
        listeners: vec![Listener {
            name: "ingress".into(),
            address: "127.0.0.1:0".parse().unwrap(),
            upstream: ListenerUpstream::Cluster("backend".into()),
            direction: Direction::Ingress,
            missing_policy: MissingPolicy::Deny,
            original_source: false,
        }],
        clusters: vec![Cluster {
            name: "backend".into(),
            endpoints: vec![upstream.addr],
        }],
        l7_policies: vec![L7Policy {
            key: key(upstream),
            http: rules,
        }],
        identities: vec![IdentityEntry {
            ip: upstream.addr.ip(),
            identity: 4242,
            labels: vec!["k8s:app=backend".into()],
            namespace: Some("default".into()),
            pod_name: Some("backend-0".into()),
        }],
        event_headers: vec!["x-visible".into()],
    }
}

pub fn config(dir: &tempfile::TempDir) -> ProxyConfig {
    let mut config = ProxyConfig::new(socket_path(dir));
    config.snapshot_file = Some(snapshot_path(dir));
    config
}

impl Harness {
    pub async fn new(rules: Vec<HttpRule>) -> Self {
        let upstream = upstream().await;
        Self::with(upstream, |_| {}, move |u| snapshot(1, u, rules)).await
    }

    pub async fn with(
        upstream: Upstream,
        tune: impl FnOnce(&mut ProxyConfig),
        make: impl FnOnce(&Upstream) -> Snapshot,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let agent = ControlServer::bind(socket_path(&dir)).unwrap();
        let messages = agent.subscribe();
        let mut config = config(&dir);
        tune(&mut config);
        let proxy = Proxy::new(config);
        proxy.start().unwrap();
        let snapshot = make(&upstream);
        let version = snapshot.version;
        agent.push(snapshot);
        agent.wait_for_ack(version).await.unwrap();
        Self {
            dir,
            agent: Some(agent),
            proxy,
            upstream,
            messages,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.proxy.listener_addr("ingress").unwrap()
    }

    pub fn agent(&self) -> &ControlServer {
        self.agent.as_ref().unwrap()
    }

    /// A fresh HTTP/1.1 connection to the proxy.
    pub async fn h1(&self) -> hyper::client::conn::http1::SendRequest<Body> {
        h1(self.addr()).await
    }

    /// A fresh HTTP/2 (prior knowledge) connection to the proxy.
    pub async fn h2(&self) -> hyper::client::conn::http2::SendRequest<Body> {
        let stream = TcpStream::connect(self.addr()).await.unwrap();
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        sender
    }
}

pub async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
    let stream = TcpStream::connect(addr).await.unwrap();
    h1_on(stream).await
}

/// An HTTP/1.1 connection to `addr` from the local address `from` (port chosen by the
/// kernel): another client, as far as the proxy can tell.
pub async fn h1_from(
    from: &str,
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Body> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    h1_on(socket.connect(addr).await.unwrap()).await
}

pub async fn h1_on(stream: TcpStream) -> hyper::client::conn::http1::SendRequest<Body> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection.with_upgrades());
    sender
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("host", "backend.default")
        .body(full(""))
        .unwrap()
}

pub async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Body>,
    request: Request<Body>,
) -> (StatusCode, http::HeaderMap, String) {
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub async fn status(harness: &Harness, request: Request<Body>) -> StatusCode {
    let mut sender = harness.h1().await;
    send(&mut sender, request).await.0
}

/// The process's resident set in bytes (`/proc/self/statm`).
pub fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}
