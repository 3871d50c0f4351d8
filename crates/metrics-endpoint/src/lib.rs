//! The HTTP endpoint that serves a process's Prometheus registry at `GET /metrics`.
//!
//! The agent and the proxy each serve their own registry (each metric family is
//! defined once and served by one process); both use this one endpoint.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
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

/// Encodes the registry as OpenMetrics text (what Prometheus scrapes).
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Serves `GET /metrics` on `listener` until the task is dropped. A failed accept is
/// logged and retried, never fatal: metrics must not stop because the process ran
/// short of descriptors for a moment.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
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
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let answer = scrape(&registry, request.uri().path());
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

/// The answer to a scrape of `path`.
fn scrape(registry: &Registry, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if path != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; metrics are at /metrics\n".to_owned(),
        )
    } else {
        match encode(registry) {
            Ok(text) => (StatusCode::OK, OPENMETRICS_CONTENT_TYPE, text),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "metrics encoding failed\n".to_owned(),
            ),
        }
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
        let answer = scrape(&registry_with_one_counter(), "/metrics");
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(
            answer.headers()[header::CONTENT_TYPE],
            OPENMETRICS_CONTENT_TYPE
        );
    }

    #[test]
    fn other_paths_are_not_found() {
        let answer = scrape(&registry_with_one_counter(), "/");
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn encoding_names_every_family() {
        let text = encode(&registry_with_one_counter()).expect("encodes");
        assert!(text.contains("scrapes_seen_total 1"), "{text}");
    }
}
