//! Header-read and idle timeouts, on tokio's paused clock.

mod common;

use std::time::Duration;

use common::*;
use myelin_proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

async fn proxy(upstream: &Upstream) -> (tempfile::TempDir, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir);
    config.snapshot_file = None;
    config.limits.header_read_timeout = Duration::from_secs(10);
    config.limits.idle_timeout = Duration::from_secs(60);
    // No agent here: the snapshot is applied directly, so no reconnect timers run.
    let proxy = Proxy::new(config);
    proxy.apply(snapshot(1, upstream, vec![])).unwrap();
    (dir, proxy)
}

async fn closed_after(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    started.elapsed()
}

/// Sends `bytes` to a fresh connection and asserts the proxy closes it after the header
/// read timeout (10 s), well before the idle timeout (60 s).
async fn closed_by_the_header_read_timeout_after(bytes: &[u8]) {
    let upstream = upstream().await;
    let (_dir, proxy) = proxy(&upstream).await;
    let mut stream = TcpStream::connect(proxy.listener_addr("ingress").unwrap())
        .await
        .unwrap();
    stream.write_all(bytes).await.unwrap();
    let waited = closed_after(&mut stream).await;
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(60),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn silent_client_is_closed_after_the_header_read_timeout() {
    closed_by_the_header_read_timeout_after(b"").await;
}

#[tokio::test(start_paused = true)]
async fn slow_request_head_is_closed_after_the_header_read_timeout() {
    closed_by_the_header_read_timeout_after(b"GET / HTTP/1.1\r\nhost: x\r\n").await;
}

#[tokio::test(start_paused = true)]
async fn http2_client_that_sends_no_request_is_closed_after_the_header_read_timeout() {
    // The preface and an empty SETTINGS frame, then nothing.
    closed_by_the_header_read_timeout_after(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn idle_http1_keep_alive_is_closed_by_the_header_read_timeout() {
    // hyper starts the header-read timer as soon as it waits for the next request head, so
    // on HTTP/1.1 an idle keep-alive connection lasts `header_read_timeout`.
    let upstream = upstream().await;
    let (_dir, proxy) = proxy(&upstream).await;
    let mut stream = TcpStream::connect(proxy.listener_addr("ingress").unwrap())
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let waited = closed_after(&mut stream).await;
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(60),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_http2_connection_is_closed_after_the_idle_timeout() {
    let upstream = upstream().await;
    let (_dir, proxy) = proxy(&upstream).await;
    let stream = TcpStream::connect(proxy.listener_addr("ingress").unwrap())
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let response = sender
        .send_request(http::Request::get("http://x/").body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    let started = Instant::now();
    let _ = connection.await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(59) && waited < Duration::from_secs(120),
        "{waited:?}"
    );
}
