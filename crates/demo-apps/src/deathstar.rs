//! The deathstar: the HTTP service of the Star Wars demo.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The port the deathstar serves on.
pub const PORT: u16 = 80;

/// What `PUT /v1/exhaust-port` answers: the station does not survive it.
pub const EXPLOSION: &str = "Panic: deathstar exploded\n\ngoroutine 1 [running]:\nmain.HandleGarbage(0x2080c3f50, 0x2, 0x4, 0x425c0, 0x5, 0xa)\n\t/code/src/github.com/empire/deathstar/\ntemp/main.go:9 +0x64\nmain.main()\n\t/code/src/github.com/empire/deathstar/\ntemp/main.go:5 +0x85\n";

/// Serves the deathstar API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, hostname: String) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let hostname = hostname.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let hostname = hostname.clone();
                async move { Ok::<_, Infallible>(answer(&req, &hostname, peer)) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}

fn answer(req: &Request<Incoming>, hostname: &str, _peer: SocketAddr) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/v1" | "/v1/") => {
            let listing = serde_json::json!({
                "name": "Death Star",
                "hostname": hostname,
                "model": "DS-1 Orbital Battle Station",
                "manufacturer": "Imperial Department of Military Research, Sienar Fleet Systems",
                "cost_in_credits": "1000000000000",
                "length": "120000",
                "crew": "342953",
                "passengers": "843342",
                "cargo_capacity": "1000000000000",
                "hyperdrive_rating": "4.0",
                "starship_class": "Deep Space Mobile Battlestation",
                "api": [
                    "GET   /v1",
                    "GET   /v1/healthz",
                    "POST  /v1/request-landing",
                    "PUT   /v1/cargobay",
                    "GET   /v1/hyper-matter-reactor/status",
                    "PUT   /v1/exhaust-port"
                ]
            });
            let mut body = serde_json::to_string_pretty(&listing).unwrap_or_default();
            body.push('\n');
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
        (&Method::GET, "/v1/healthz") => text(StatusCode::OK, "OK\n"),
        (&Method::POST, "/v1/request-landing") => text(StatusCode::OK, "Ship landed\n"),
        (&Method::PUT, "/v1/cargobay") => text(StatusCode::OK, "Cargo bay opened\n"),
        (&Method::GET, "/v1/hyper-matter-reactor/status") => {
            text(StatusCode::OK, "Reactor stable\n")
        }
        (&Method::PUT, "/v1/exhaust-port") => text(StatusCode::SERVICE_UNAVAILABLE, EXPLOSION),
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn call(addr: SocketAddr, method: Method, path: &str) -> (StatusCode, String) {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "deathstar")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(req).await.expect("response");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_api_users_know() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, "deathstar-test".into()));
        assert_eq!(
            call(addr, Method::POST, "/v1/request-landing").await,
            (StatusCode::OK, "Ship landed\n".into())
        );
        let (status, body) = call(addr, Method::PUT, "/v1/exhaust-port").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("Panic: deathstar exploded"));
        let (status, body) = call(addr, Method::GET, "/v1").await;
        assert_eq!(status, StatusCode::OK);
        let listing: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(listing["hostname"], "deathstar-test");
        assert!(listing["api"].as_array().is_some_and(|a| a.len() == 6));
        assert_eq!(
            call(addr, Method::GET, "/nope").await.0,
            StatusCode::NOT_FOUND
        );
    }
}
