//! Bounds on what one client can take from the proxy, the metrics endpoint that shows them,
//! the drain on shutdown, and answers to malformed requests; real sockets on 127.0.0.0/8.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::StatusCode;
use myelin_proxy::config::{Direction, Listener, ListenerUpstream, MissingPolicy};
use myelin_proxy::{Proxy, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(5);

/// GET `path` from `addr` over a raw HTTP/1.1 connection; the whole answer.
async fn raw_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The sample line of `series` in the proxy's served metrics.
async fn scraped(proxy: &Proxy, series: &str) -> String {
    let text = raw_get(proxy.metrics_addr().unwrap(), "/metrics").await;
    text.lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("{series} not served: {text}"))
        .to_owned()
}

/// Whether the proxy closed `stream` without answering (EOF or reset).
async fn closed_at_once(stream: &mut TcpStream) -> bool {
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(WAIT, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

fn with_metrics(config: &mut ProxyConfig) {
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
}

#[tokio::test]
async fn the_proxy_serves_its_metrics_on_the_configured_address() {
    let h = Harness::with(upstream().await, with_metrics, |u| snapshot(7, u, vec![])).await;
    assert_eq!(
        scraped(&h.proxy, "myelin_proxy_snapshot_version").await,
        "myelin_proxy_snapshot_version 7"
    );
    let limit = scraped(&h.proxy, "myelin_proxy_connection_limit").await;
    assert!(!limit.ends_with(" 0"), "{limit}");
    let other = raw_get(h.proxy.metrics_addr().unwrap(), "/").await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}

#[tokio::test]
async fn connections_opened_straight_to_a_transparent_listener_are_refused() {
    let upstream = upstream().await;
    let h = Harness::with(upstream, with_metrics, |u| {
        let mut s = snapshot(1, u, vec![]);
        s.listeners.push(Listener {
            name: "transparent".into(),
            address: "127.0.0.1:0".parse().unwrap(),
            upstream: ListenerUpstream::Transparent,
            direction: Direction::Ingress,
            missing_policy: MissingPolicy::Deny,
            original_source: false,
        });
        s
    })
    .await;
    let listener = h.proxy.listener_addr("transparent").unwrap();
    let mut direct = TcpStream::connect(listener).await.unwrap();
    assert!(closed_at_once(&mut direct).await);
    assert_eq!(
        scraped(
            &h.proxy,
            r#"myelin_proxy_connections_refused_total{reason="NotRedirected"}"#
        )
        .await,
        r#"myelin_proxy_connections_refused_total{reason="NotRedirected"} 1"#
    );
}

#[test]
fn a_handed_over_connection_is_told_from_one_to_the_proxy_port() {
    use myelin_proxy::socket::{is_handed_over, is_node_address};
    assert!(is_node_address("127.0.0.1".parse().unwrap()));
    // 192.0.2.0/24 (TEST-NET-1) is nobody's address here: a pod or service address.
    assert!(!is_node_address("192.0.2.1".parse().unwrap()));
    let node_proxy_port: SocketAddr = "127.0.0.1:15001".parse().unwrap();
    assert!(!is_handed_over(node_proxy_port, 15001), "dialled the proxy");
    assert!(is_handed_over("127.0.0.1:80".parse().unwrap(), 15001));
    assert!(
        is_handed_over("192.0.2.1:15001".parse().unwrap(), 15001),
        "a redirected server that listens on the proxy's port"
    );
    assert!(is_handed_over("192.0.2.1:80".parse().unwrap(), 15001));
}

#[tokio::test]
async fn one_source_holds_only_its_share_of_the_connections() {
    let h = Harness::with(
        upstream().await,
        |c: &mut ProxyConfig| {
            with_metrics(c);
            c.limits.max_connections_per_source = Some(2);
        },
        |u| snapshot(1, u, vec![]),
    )
    .await;
    let addr = h.addr();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = h1_on(connect_from("127.0.0.2", addr).await).await;
        assert_eq!(send(&mut c, get("/")).await.0, StatusCode::OK);
        held.push(c);
    }
    let mut third = connect_from("127.0.0.2", addr).await;
    assert!(closed_at_once(&mut third).await, "over the source's share");
    let mut other = h1_on(connect_from("127.0.0.3", addr).await).await;
    assert_eq!(send(&mut other, get("/")).await.0, StatusCode::OK);
    assert_eq!(
        scraped(
            &h.proxy,
            r#"myelin_proxy_connections_refused_total{reason="PerSource"}"#
        )
        .await,
        r#"myelin_proxy_connections_refused_total{reason="PerSource"} 1"#
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = h1_on(connect_from("127.0.0.2", addr).await).await;
    assert_eq!(
        send(&mut again, get("/")).await.0,
        StatusCode::OK,
        "slots came back"
    );
}

#[tokio::test]
async fn a_malformed_chunk_size_is_the_clients_fault() {
    let h = Harness::new(vec![]).await;
    let mut stream = TcpStream::connect(h.addr()).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test]
async fn draining_finishes_in_flight_requests_and_stops_accepting() {
    let h = Harness::new(vec![]).await;
    let addr = h.addr();
    let mut busy = h.h1().await;
    let idle = TcpStream::connect(addr).await.unwrap();
    let in_flight = tokio::spawn(async move { send(&mut busy, get("/slow")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    tokio::time::timeout(WAIT, h.proxy.drain()).await.unwrap();
    let (status, _, _) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "the in-flight request finished");
    let mut idle = idle;
    assert!(closed_at_once(&mut idle).await, "idle connections closed");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is gone"
    );
}
