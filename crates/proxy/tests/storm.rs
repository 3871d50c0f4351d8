//! Memory given back after a storm of client connections closes, from the process's
//! resident set (`/proc/self/statm`): client, proxy and upstream share the process, and
//! all of their connections close, so what stays is what the allocator kept.

mod common;

use std::time::Duration;

use common::*;

/// Client connections of the storm in [`memory_comes_back_after_a_connection_storm`].
const STORM: usize = 2_000;

/// What the process may keep of the storm once its connections closed: the storm itself
/// peaks at well over 100 MB here (client, proxy and upstream connections), and without
/// the trim stayed there.
const KEPT_AFTER_STORM: usize = 32 * 1024 * 1024;

/// A metric's value in the proxy's OpenMetrics text.
fn metric(h: &Harness, name: &str) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &h.proxy.registry()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// One client connection of the storm, held open while its sender lives.
enum Held {
    Http1(#[allow(dead_code)] hyper::client::conn::http1::SendRequest<Body>),
    Http2(#[allow(dead_code)] hyper::client::conn::http2::SendRequest<Body>),
}

/// One storm connection, `kind` of four: HTTP/1.1 or HTTP/2, idle or after one request.
async fn storm_connection(h: &Harness, kind: usize) -> Held {
    match kind % 4 {
        0 => Held::Http1(h.h1().await),
        1 => {
            let mut sender = h.h1().await;
            assert_eq!(send(&mut sender, get("/")).await.0, http::StatusCode::OK);
            Held::Http1(sender)
        }
        2 => Held::Http2(h.h2().await),
        _ => {
            let mut sender = h.h2().await;
            let request = http::Request::get(format!("http://{}/", h.addr()))
                .body(full(""))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), http::StatusCode::OK);
            Held::Http2(sender)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_comes_back_after_a_connection_storm() {
    myelin_proxy::fd_limit::raise_open_file_limit().unwrap();
    let h = Harness::with(
        upstream().await,
        |c| c.limits.max_connections_per_source = Some(STORM * 2),
        |u| snapshot(1, u, vec![]),
    )
    .await;
    // Warm up lazily built state (allocator arenas, pools), with too few connections (under
    // 64) to trim.
    let warm: Vec<Held> = futures::future::join_all((0..48).map(|i| storm_connection(&h, i))).await;
    drop(warm);
    wait_for_closed(&h).await;
    let before = resident_bytes();
    assert_eq!(metric(&h, "myelin_proxy_memory_trims_total"), 0);

    let mut held = Vec::with_capacity(STORM);
    for batch in 0..STORM / 100 {
        let opened =
            futures::future::join_all((0..100).map(|i| storm_connection(&h, batch * 100 + i)));
        held.extend(opened.await);
    }
    let peak = resident_bytes();
    assert_eq!(metric(&h, "myelin_proxy_connections"), STORM as u64);
    drop(held);
    wait_for_closed(&h).await;
    // The trims run on a blocking thread, one after another, as the connections close: give
    // them until the process is back within the bound (a minute at most, for a loaded
    // machine). What the last few dozen connections freed waits for the next storm's trims.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut after = resident_bytes();
    while after.saturating_sub(before) > KEPT_AFTER_STORM && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = resident_bytes();
    }
    assert!(metric(&h, "myelin_proxy_memory_trims_total") > 0);
    eprintln!(
        "{STORM} connections: {} MB before, {} MB at the peak, {} MB after",
        before >> 20,
        peak >> 20,
        after >> 20
    );
    assert!(
        after.saturating_sub(before) <= KEPT_AFTER_STORM,
        "{} MB before the storm, {} MB at its peak, {} MB after it",
        before >> 20,
        peak >> 20,
        after >> 20
    );
}

/// Waits until the proxy counts no open client connection (a minute at most).
async fn wait_for_closed(h: &Harness) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let open = metric(h, "myelin_proxy_connections");
        if open == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} client connections still open a minute after their clients closed them"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
