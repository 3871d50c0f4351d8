//! The HTTP endpoint that serves a process's Prometheus registry at `GET /metrics`,
//! and its health for probes: `GET /healthz` (the process answers) and `GET /readyz`
//! (it said it is ready, see [`Readiness`]).
//!
//! The agent and the proxy each serve their own registry (each metric family is
//! defined once and served by one process); both use this one endpoint. A DaemonSet's
//! liveness and readiness probes ask the same port.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The content type of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long the endpoint pauses after a failed accept (out of descriptors, for one), so
/// that a lasting failure does not spin a core.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Whether the process is ready for work, for `GET /readyz`: false until the process
/// calls [`Readiness::set_ready`] (the agent: once its datapath is loaded and its API
/// serves). Clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A process not ready yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A process ready from the start (one with nothing to wait for).
    pub fn ready() -> Self {
        let readiness = Self::default();
        readiness.set_ready();
        readiness
    }

    /// From now on `/readyz` answers 200.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`Readiness::set_ready`] was called.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Encodes the registry as OpenMetrics text (what Prometheus scrapes).
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `listener` until the task is
/// dropped. A failed accept is logged and retried, never fatal: metrics must not stop
/// because the process ran short of descriptors for a moment.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, readiness: Readiness) {
    loop {
        let (stream, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "metrics accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let registry = registry.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let answer = answer(&registry, &readiness, request.uri().path());
                async move { Ok::<_, Infallible>(answer) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "metrics connection ended with an error");
            }
        });
    }
}

/// The answer to a `GET` of `path`.
fn answer(registry: &Registry, readiness: &Readiness, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => match encode(registry) {
            Ok(text) => (StatusCode::OK, OPENMETRICS_CONTENT_TYPE, text),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "metrics encoding failed\n".to_owned(),
            ),
        },
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if readiness.is_ready() => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "starting: not ready yet\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; metrics are at /metrics, health at /healthz and /readyz\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    fn registry_with_one_counter() -> Registry {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        counter.inc();
        registry.register("scrapes_seen", "A counter for the test", counter);
        registry
    }

    #[test]
    fn metrics_are_openmetrics_text() {
        let answer = answer(&registry_with_one_counter(), &Readiness::new(), "/metrics");
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(
            answer.headers()[header::CONTENT_TYPE],
            OPENMETRICS_CONTENT_TYPE
        );
    }

    #[test]
    fn other_paths_are_not_found() {
        let answer = answer(&registry_with_one_counter(), &Readiness::new(), "/");
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn healthz_answers_while_readyz_waits_for_ready() {
        let registry = registry_with_one_counter();
        let readiness = Readiness::new();
        assert_eq!(
            answer(&registry, &readiness, "/healthz").status(),
            StatusCode::OK
        );
        assert_eq!(
            answer(&registry, &readiness, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.clone().set_ready();
        assert_eq!(
            answer(&registry, &readiness, "/readyz").status(),
            StatusCode::OK
        );
    }

    #[test]
    fn encoding_names_every_family() {
        let text = encode(&registry_with_one_counter()).expect("encodes");
        assert!(text.contains("scrapes_seen_total 1"), "{text}");
    }
}
