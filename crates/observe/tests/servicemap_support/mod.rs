//! What the service map's HTTP and browser tests share: the Star Wars flows
//! with the deathstar as a Deployment, a running map server fed through a
//! real observer, and a plain HTTP/1.1 client.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{HeaderMap, StatusCode};
use hyper_util::rt::TokioIo;
use myelin_observe::proto::flow::{Flow, Workload};
use myelin_observe::servicemap::{
    AccessToken, MapView, ServiceMapConfig, SharedServiceMap, serve_servicemap,
};

/// The access token of every test server.
pub const TOKEN: &str = "test-token";
use myelin_observe::{Observer, ObserverConfig};

use crate::common;

/// The demo's flows as the agent makes them: the deathstar pod belongs to the
/// `deathstar` Deployment (the agent derives that from pod-template-hash).
pub fn starwars_flows() -> Vec<Flow> {
    common::demo()
        .into_iter()
        .map(|mut flow| {
            for ep in [flow.source.as_mut(), flow.destination.as_mut()]
                .into_iter()
                .flatten()
            {
                if ep.pod_name == common::DEATHSTAR_POD {
                    ep.workloads = vec![Workload {
                        name: "deathstar".into(),
                        kind: "Deployment".into(),
                    }];
                }
            }
            flow
        })
        .collect()
}

/// A map server on 127.0.0.1, fed by following an observer, as the agent runs it.
pub struct MapServer {
    pub addr: SocketAddr,
    pub observer: Observer,
    pub map: SharedServiceMap,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl MapServer {
    pub async fn start() -> Self {
        let observer = Observer::new(ObserverConfig::new("node-1"));
        let map = SharedServiceMap::new(ServiceMapConfig::default());
        let follower = map.follow(&observer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("binding 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local address: {e}"));
        let server = tokio::spawn({
            let map = map.clone();
            async move {
                let token = AccessToken::new(TOKEN.to_string());
                if let Err(e) = serve_servicemap(listener, map, token).await {
                    panic!("service map server failed: {e}");
                }
            }
        });
        Self {
            addr,
            observer,
            map,
            tasks: vec![follower, server],
        }
    }

    /// Pushes flows into the observer and waits until the map shows `edges` edges.
    pub async fn push_until(&self, flows: &[Flow], edges: usize) -> MapView {
        for flow in flows {
            self.observer.push(flow.clone());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let view = self.map.view();
            if view.edges.len() >= edges {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the map never reached {edges} edges: {view:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for MapServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One HTTP/1.1 request with the access token over a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> (StatusCode, HeaderMap, String) {
    let bearer = format!("Bearer {TOKEN}");
    request_with(addr, method, path, &[("authorization", &bearer)]).await
}

/// One HTTP/1.1 request with `headers` over a fresh connection.
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap_or_else(|e| panic!("handshake: {e}"));
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .unwrap_or_else(|e| panic!("request: {e}"));
    let answer = sender
        .send_request(request)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = answer.status();
    let headers = answer.headers().clone();
    let body = answer
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{method} {path} body: {e}"))
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// The edge from `source` to `destination` with `protocol`.
pub fn edge_id(view: &MapView, source: &str, destination: &str, protocol: &str) -> u64 {
    view.edges
        .iter()
        .find(|e| e.source == source && e.destination == destination && e.protocol == protocol)
        .map(|e| e.id)
        .unwrap_or_else(|| panic!("no edge {source} -> {destination} {protocol}: {view:#?}"))
}
