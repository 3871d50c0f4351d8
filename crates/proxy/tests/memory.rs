//! Memory held per idle client connection, from the process's resident set
//! (`/proc/self/statm`); client and proxy share the process, so the figure is an upper
//! bound for the proxy's share. (The storm is in `storm.rs`: a test binary of its own, so
//! that neither measures the other's connections.)

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections opened for the measurement.
const CONNECTIONS: usize = 500;

/// What one idle HTTP/2 connection may cost the proxy at most (with hyper's default
/// 1 MiB windows and per-connection buffers it was several times this).
const MAX_BYTES_PER_CONNECTION: usize = 48 * 1024;

/// Opens an HTTP/2 connection, sends one request, and leaves the connection idle.
async fn idle_h2(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // The server's SETTINGS: the proxy has taken the connection into hyper.
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.unwrap();
    stream
}

#[tokio::test]
async fn an_idle_connection_holds_little_memory() {
    // Every connection comes from 127.0.0.1: lift the per-source share.
    let h = Harness::with(
        upstream().await,
        |c| c.limits.max_connections_per_source = Some(CONNECTIONS * 2),
        |u| snapshot(1, u, vec![]),
    )
    .await;
    let addr = h.addr();
    // Warm up allocator arenas and lazily built state.
    let warm: Vec<TcpStream> = futures::future::join_all((0..50).map(|_| idle_h2(addr))).await;
    let before = resident_bytes();
    let mut held = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        held.push(idle_h2(addr).await);
    }
    let per_connection = resident_bytes().saturating_sub(before) / CONNECTIONS;
    eprintln!("{per_connection} bytes per idle HTTP/2 connection");
    assert!(
        per_connection <= MAX_BYTES_PER_CONNECTION,
        "{per_connection} bytes per idle connection"
    );
    drop((warm, held));
}
