//! The HTTP engine through real sockets: real hyper clients, the real proxy, a real upstream.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use myelin_proxy::config::{HeaderMatch, HttpRule, MismatchAction};
use myelin_proxy::control::ProxyMessage;
use myelin_proxy::event::{L7EventKind, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn rule(method: Option<&str>, path: Option<&str>) -> HttpRule {
    HttpRule {
        method: method.map(Into::into),
        path: path.map(Into::into),
        ..HttpRule::default()
    }
}

#[tokio::test]
async fn allowed_forwarded_denied_403_and_connection_reused() {
    let h = Harness::new(vec![rule(Some("GET"), Some("/public"))]).await;
    let mut c = h.h1().await;
    let (status, _, body) = send(&mut c, get("/public")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("GET /public HTTP/1.1\n"), "{body}");
    assert!(body.contains("host: backend.default\n"), "{body}");

    let (status, headers, body) = send(&mut c, get("/private")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, "Access denied\r\n");
    assert_eq!(headers.get("content-type").unwrap(), "text/plain");

    // Same connection, still usable after the deny.
    let (status, _, _) = send(&mut c, get("/public")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.upstream.connections.load(Ordering::SeqCst),
        1,
        "upstream connection is pooled"
    );
}

#[tokio::test]
async fn an_upstream_that_closes_its_connection_is_reconnected_for_the_next_request() {
    let h = Harness::new(vec![rule(Some("GET"), None)]).await;
    let mut c = h.h1().await;
    let (status, _, body) = send(&mut c, get("/close")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "closing\n"));
    // The client connection stays open; its next requests get a new upstream connection.
    for _ in 0..3 {
        let (status, _, body) = send(&mut c, get("/after")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(h.upstream.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_next_client_connection_adopts_the_upstream_connection_of_an_ended_one() {
    let h = Harness::new(vec![rule(Some("GET"), None)]).await;
    for round in 0..3 {
        let mut c = h.h1().await;
        let request = Request::get("/short")
            .header("host", "backend.default")
            .header("connection", "close")
            .body(full(""))
            .unwrap();
        assert_eq!(
            send(&mut c, request).await.0,
            StatusCode::OK,
            "round {round}"
        );
        drop(c);
        // Wait until the proxy has seen the client connection end.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &h.proxy.registry()).unwrap();
            if text.contains("myelin_proxy_connections 0") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{text}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(
        h.upstream.connections.load(Ordering::SeqCst),
        1,
        "one upstream connection served all three client connections"
    );
}

#[tokio::test]
async fn method_path_and_host_are_anchored() {
    let h = Harness::new(vec![HttpRule {
        method: Some("GET".into()),
        path: Some("/v1/.*".into()),
        host: Some("backend\\.default".into()),
        ..HttpRule::default()
    }])
    .await;
    let mut c = h.h1().await;
    assert_eq!(send(&mut c, get("/v1/ships")).await.0, StatusCode::OK);
    assert_eq!(
        send(&mut c, get("/x/v1/ships")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(send(&mut c, get("/v1")).await.0, StatusCode::FORBIDDEN);
    let post = Request::post("/v1/ships")
        .header("host", "backend.default")
        .body(full("x"))
        .unwrap();
    assert_eq!(send(&mut c, post).await.0, StatusCode::FORBIDDEN);
    let other_host = Request::get("/v1/ships")
        .header("host", "backend.default.evil")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&mut c, other_host).await.0, StatusCode::FORBIDDEN);
    let prefixed_host = Request::get("/v1/ships")
        .header("host", "xbackend.default")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&mut c, prefixed_host).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn several_rules_are_ored() {
    let h = Harness::new(vec![
        rule(Some("GET"), Some("/a")),
        rule(Some("PUT"), Some("/b")),
    ])
    .await;
    let mut c = h.h1().await;
    assert_eq!(send(&mut c, get("/a")).await.0, StatusCode::OK);
    let put = |p: &str| Request::put(p).header("host", "x").body(full("")).unwrap();
    assert_eq!(send(&mut c, put("/b")).await.0, StatusCode::OK);
    assert_eq!(send(&mut c, put("/a")).await.0, StatusCode::FORBIDDEN);
    assert_eq!(send(&mut c, get("/b")).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn headers_by_presence_and_exact_value() {
    let h = Harness::new(vec![HttpRule {
        headers: vec!["X-Present".into(), "X-Exact: yes".into()],
        ..HttpRule::default()
    }])
    .await;
    let mut c = h.h1().await;
    let req = |present: bool, exact: &str| {
        let mut b = Request::get("/")
            .header("host", "x")
            .header("x-exact", exact);
        if present {
            b = b.header("x-present", "whatever");
        }
        b.body(full("")).unwrap()
    };
    assert_eq!(send(&mut c, req(true, "yes")).await.0, StatusCode::OK);
    assert_eq!(
        send(&mut c, req(false, "yes")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(send(&mut c, req(true, "no")).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn header_match_actions_rewrite_what_the_upstream_sees() {
    let hm = |name: &str, value: &str, mismatch| HeaderMatch {
        name: name.into(),
        value: value.into(),
        mismatch,
    };
    let h = Harness::new(vec![HttpRule {
        header_matches: vec![
            hm("x-add", "added", Some(MismatchAction::Add)),
            hm("x-replace", "replaced", Some(MismatchAction::Replace)),
            hm("x-delete", "keep-only-this", Some(MismatchAction::Delete)),
            hm("x-log", "expected", Some(MismatchAction::Log)),
            hm("x-required", "must", None),
        ],
        ..HttpRule::default()
    }])
    .await;
    let mut c = h.h1().await;
    let request = Request::get("/")
        .header("host", "x")
        .header("x-replace", "old")
        .header("x-delete", "other")
        .header("x-log", "unexpected")
        .header("x-required", "must")
        .body(full(""))
        .unwrap();
    let (status, _, body) = send(&mut c, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("x-add: added\n"), "{body}");
    assert!(
        body.contains("x-replace: replaced\n") && !body.contains("x-replace: old"),
        "{body}"
    );
    assert!(!body.contains("x-delete"), "{body}");
    assert!(body.contains("x-log: unexpected\n"), "{body}");

    // Without the header that has no mismatch action, the rule does not match.
    let denied = Request::get("/")
        .header("host", "x")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&mut c, denied).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn grpc_over_h2_allowed_method_with_trailers_and_other_method_denied() {
    let h = Harness::new(vec![rule(Some("POST"), Some("/pkg\\.Service/Allowed"))]).await;
    let mut c = h.h2().await;
    let call = |method: &str| {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-client-trailer", "t1".parse().unwrap());
        let frames = vec![
            Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"ping"))),
            Ok(Frame::trailers(trailers)),
        ];
        Request::post(format!("http://backend.default/pkg.Service/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(StreamBody::new(futures::stream::iter(frames)).boxed())
            .unwrap()
    };
    let response = c.send_request(call("Allowed")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers forwarded");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("x-client-trailer-seen").unwrap(), "t1");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"reply:ping"));

    let response = c.send_request(call("Denied")).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from_static(b"Access denied\r\n"));

    // The h2 connection still works after the deny.
    let response = c.send_request(call("Allowed")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn http2_prior_knowledge_get() {
    let h = Harness::new(vec![rule(Some("GET"), None)]).await;
    let mut c = h.h2().await;
    let response = c
        .send_request(
            Request::get("http://backend.default/hello")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("GET /hello HTTP/2.0\n"), "{body}");
}

#[tokio::test]
async fn websocket_upgrade_echo_after_allowed_request() {
    let h = Harness::new(vec![rule(Some("GET"), Some("/ws"))]).await;
    let mut c = h.h1().await;
    let upgrade = |path: &str| {
        Request::get(path)
            .header("host", "x")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(full(""))
            .unwrap()
    };
    // A denied upgrade gets 403 and nothing is switched.
    assert_eq!(
        send(&mut c, upgrade("/not-ws")).await.0,
        StatusCode::FORBIDDEN
    );
    c.ready().await.unwrap();
    let response = c.send_request(upgrade("/ws")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    for message in [&b"hello"[..], b"world, again"] {
        io.write_all(message).await.unwrap();
        let mut buf = vec![0; message.len()];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, message);
    }
}

#[tokio::test]
async fn chunked_bodies_stream_without_buffering() {
    let h = Harness::new(vec![]).await;
    let mut c = h.h1().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(1);
    let body = StreamBody::new(tokio_stream_from(rx)).boxed();
    let request = Request::post("/echo")
        .header("host", "x")
        .body(body)
        .unwrap();
    c.ready().await.unwrap();
    let response_future = c.send_request(request);
    tx.send(Ok(Frame::data(Bytes::from_static(b"chunk-1"))))
        .await
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response_future)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // Each chunk comes back before the next one is sent: nothing waits for the whole body.
    for i in 1..=3 {
        if i > 1 {
            tx.send(Ok(Frame::data(Bytes::from(format!("chunk-{i}")))))
                .await
                .unwrap();
        }
        // Frames may arrive split; collect until this chunk is complete.
        let expected = format!("chunk-{i}");
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            got.extend_from_slice(&frame.into_data().unwrap());
        }
        assert_eq!(got, expected.as_bytes());
    }
    drop(tx);
    assert!(body.frame().await.is_none());
}

fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn non_http_bytes_are_refused_and_reported() {
    let mut h = Harness::new(vec![rule(Some("GET"), None)]).await;
    let mut stream = TcpStream::connect(h.addr()).await.unwrap();
    stream
        .write_all(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "connection closed without an answer");
    assert_eq!(
        h.upstream.connections.load(Ordering::SeqCst),
        0,
        "nothing passed upstream"
    );
    loop {
        match tokio::time::timeout(Duration::from_secs(5), h.messages.recv())
            .await
            .unwrap()
            .unwrap()
        {
            ProxyMessage::Event(event) if event.kind == L7EventKind::NonHttp => {
                assert_eq!(event.verdict, Verdict::Dropped);
                assert_eq!(event.destination.address, h.upstream.addr);
                break;
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let h = Harness::with(
        upstream().await,
        |c| c.limits.max_header_bytes = 16 * 1024,
        |u| snapshot(1, u, vec![]),
    )
    .await;
    let mut stream = TcpStream::connect(h.addr()).await.unwrap();
    let big = "a".repeat(64 * 1024);
    let request = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    // The proxy may close before reading everything; a write error is fine too.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert_eq!(h.upstream.connections.load(Ordering::SeqCst), 0);

    let mut stream = TcpStream::connect(h.addr()).await.unwrap();
    let mut request = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
    for i in 0..200 {
        request.push_str(&format!("x-h{i}: v\r\n"));
    }
    request.push_str("\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "too many headers: {answer}"
    );
}

#[tokio::test]
async fn events_and_metrics_describe_requests_and_responses() {
    let mut h = Harness::new(vec![rule(Some("GET"), Some("/public"))]).await;
    let mut c = h.h1().await;
    let visible = |p: &str| {
        Request::get(p)
            .header("host", "backend.default")
            .header("x-visible", "v")
            .header("authorization", "secret")
            .body(full(""))
            .unwrap()
    };
    assert_eq!(send(&mut c, visible("/public")).await.0, StatusCode::OK);
    assert_eq!(
        send(&mut c, visible("/private")).await.0,
        StatusCode::FORBIDDEN
    );
    let mut events = Vec::new();
    while events.len() < 4 {
        if let ProxyMessage::Event(event) =
            tokio::time::timeout(Duration::from_secs(5), h.messages.recv())
                .await
                .unwrap()
                .unwrap()
        {
            events.push(event);
        }
    }
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.verdict, e.http.as_ref().unwrap().code))
        .collect();
    assert_eq!(
        summary,
        vec![
            (L7EventKind::HttpRequest, Verdict::Forwarded, 0),
            (L7EventKind::HttpResponse, Verdict::Forwarded, 200),
            (L7EventKind::HttpRequest, Verdict::Dropped, 0),
            (L7EventKind::HttpResponse, Verdict::Forwarded, 403),
        ]
    );
    let request = &events[0];
    let http = request.http.as_ref().unwrap();
    assert_eq!(http.url, "http://backend.default/public");
    assert_eq!(http.method, "GET");
    assert_eq!(http.protocol, "HTTP/1.1");
    assert_eq!(
        http.headers.len(),
        1,
        "only allowed headers: {:?}",
        http.headers
    );
    assert_eq!(http.headers[0].key, "x-visible");
    assert_eq!(request.destination.identity, Some(4242));
    let response = &events[1];
    assert!(response.is_reply && response.latency_ns.is_some());
    assert_eq!(
        response.source.address, h.upstream.addr,
        "responses are sent by the server"
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &h.proxy.registry()).unwrap();
    assert!(
        !text.contains("hubble_http"),
        "the agent serves hubble_http_* from these events: {text}"
    );
    assert!(text.contains("myelin_proxy_snapshot_version 1"), "{text}");
    assert!(text.contains("myelin_proxy_connections 1"), "{text}");
}

#[tokio::test]
async fn a_response_event_carries_its_request_trace_and_request_id() {
    let rules = vec![rule(Some("GET"), Some("/public"))];
    let mut h = Harness::with(
        upstream().await,
        |_| {},
        move |u| {
            let mut snapshot = snapshot(1, u, rules);
            snapshot
                .event_headers
                .extend(["traceparent".into(), "x-request-id".into()]);
            snapshot
        },
    )
    .await;
    let mut c = h.h1().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = |p: &str| {
        Request::get(p)
            .header("host", "backend.default")
            .header("x-visible", "v")
            .header("traceparent", traceparent)
            .header("x-request-id", "42")
            .body(full(""))
            .unwrap()
    };
    // From the upstream, and answered by the proxy itself.
    assert_eq!(send(&mut c, traced("/public")).await.0, StatusCode::OK);
    assert_eq!(
        send(&mut c, traced("/private")).await.0,
        StatusCode::FORBIDDEN
    );
    let mut responses = Vec::new();
    while responses.len() < 2 {
        if let ProxyMessage::Event(event) =
            tokio::time::timeout(Duration::from_secs(5), h.messages.recv())
                .await
                .unwrap()
                .unwrap()
            && event.kind == L7EventKind::HttpResponse
        {
            responses.push(event);
        }
    }
    for response in responses {
        let headers: Vec<(String, String)> = response
            .http
            .unwrap()
            .headers
            .into_iter()
            .map(|h| (h.key, h.value))
            .collect();
        assert_eq!(
            headers,
            [
                ("traceparent".to_string(), traceparent.to_string()),
                ("x-request-id".to_string(), "42".to_string()),
            ],
            "the request's x-visible is the request's own"
        );
    }
}

#[tokio::test]
async fn egress_policy_is_keyed_by_the_source_endpoint() {
    let h = Harness::with(
        upstream().await,
        |_| {},
        |u| {
            let mut s = snapshot(1, u, vec![rule(Some("GET"), Some("/out"))]);
            s.listeners[0].direction = myelin_proxy::config::Direction::Egress;
            // Egress: the endpoint is the client (127.0.0.1 here), the port the destination's.
            s.l7_policies[0].key.direction = myelin_proxy::config::Direction::Egress;
            s
        },
    )
    .await;
    let mut c = h.h1().await;
    assert_eq!(send(&mut c, get("/out")).await.0, StatusCode::OK);
    assert_eq!(send(&mut c, get("/in")).await.0, StatusCode::FORBIDDEN);
}

/// Runs curl (a real h2c client: nghttp2 behind `--http2`) against the proxy; each URL's
/// result ends with a `<http_version> <status> <num_connects>` line.
async fn curl(args: &[&str]) -> String {
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args([
            "--write-out",
            "\n=%{http_version} %{http_code} %{num_connects}\n",
        ])
        .args(args)
        .output()
        .await
        .expect("curl is needed for the h2c tests (scripts/setup.sh installs it)");
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn h2c_upgrade_answers_on_stream_one_and_keeps_policing_the_connection() {
    let mut h = Harness::new(vec![rule(Some("GET"), Some("/public.*"))]).await;
    let base = format!("http://{}", h.addr());
    let allowed = format!("{base}/public?stream=1");
    let denied = format!("{base}/private");
    let again = format!("{base}/public/again");
    let out = curl(&[
        "--http2",
        "-H",
        "host: backend.default",
        &allowed,
        &denied,
        &again,
    ])
    .await;
    // The upgrade request is answered over HTTP/2 (stream 1); the next two reuse the
    // connection (stream 3 and 5). Upstream, the proxy speaks HTTP/1.1: the client never
    // learned whether the server speaks HTTP/2.
    let results: Vec<&str> = out.lines().filter(|l| l.starts_with('=')).collect();
    assert_eq!(results, vec!["=2 200 1", "=2 403 0", "=2 200 0"], "{out}");
    assert!(out.contains("GET /public?stream=1 HTTP/1.1\n"), "{out}");
    assert!(out.contains("host: backend.default\n"), "{out}");
    assert!(out.contains("Access denied\r\n"), "{out}");
    assert!(out.contains("GET /public/again HTTP/1.1\n"), "{out}");
    for hop in ["upgrade:", "http2-settings:", "connection:"] {
        assert!(
            !out.contains(hop),
            "{hop} must not reach the upstream: {out}"
        );
    }
    assert_eq!(h.upstream.connections.load(Ordering::SeqCst), 1);

    let mut requests = Vec::new();
    while requests.len() < 3 {
        if let ProxyMessage::Event(event) =
            tokio::time::timeout(Duration::from_secs(5), h.messages.recv())
                .await
                .unwrap()
                .unwrap()
            && event.kind == L7EventKind::HttpRequest
        {
            let http = event.http.unwrap();
            requests.push((http.url, http.protocol, event.verdict));
        }
    }
    assert_eq!(
        requests,
        vec![
            (
                "http://backend.default/public?stream=1".to_owned(),
                "HTTP/2".to_owned(),
                Verdict::Forwarded
            ),
            (
                "http://backend.default/private".to_owned(),
                "HTTP/2".to_owned(),
                Verdict::Dropped
            ),
            (
                "http://backend.default/public/again".to_owned(),
                "HTTP/2".to_owned(),
                Verdict::Forwarded
            ),
        ]
    );
}

#[tokio::test]
async fn concurrent_h2c_streams_leave_their_upstream_connections_parked() {
    let h = Harness::new(vec![rule(Some("GET"), Some("/slow.*"))]).await;
    // curl upgrades the first request and multiplexes the others on the same connection;
    // the upstream holds each request long enough that all four are in flight at once,
    // each on an upstream HTTP/1.1 connection of its own.
    let urls: Vec<String> = (0..4)
        .map(|i| format!("http://{}/slow/{i}", h.addr()))
        .collect();
    let mut args = vec!["--http2", "--parallel", "--parallel-max", "4"];
    args.extend(urls.iter().map(String::as_str));
    let out = curl(&args).await;
    let results: Vec<&str> = out.lines().filter(|l| l.starts_with('=')).collect();
    assert_eq!(
        results,
        vec!["=2 200 1", "=2 200 0", "=2 200 0", "=2 200 0"],
        "{out}"
    );
    assert_eq!(h.upstream.connections.load(Ordering::SeqCst), 4, "{out}");

    // All four were parked when the client left (given a moment to notice): four new
    // client connections in flight at once adopt them and open none.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let clients = (0..4).map(|i| {
        let addr = h.addr();
        tokio::spawn(async move {
            let mut c = h1(addr).await;
            send(&mut c, get(&format!("/slow/again/{i}"))).await.0
        })
    });
    for status in futures::future::join_all(clients).await {
        assert_eq!(status.expect("client task"), StatusCode::OK);
    }
    assert_eq!(h.upstream.connections.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn h2c_upgrade_request_that_is_denied_gets_403_on_stream_one() {
    let h = Harness::new(vec![rule(Some("GET"), Some("/public"))]).await;
    let out = curl(&["--http2", &format!("http://{}/private", h.addr())]).await;
    assert!(out.starts_with("Access denied\r\n"), "{out}");
    assert!(out.ends_with("=2 403 1\n"), "{out}");
    assert_eq!(h.upstream.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn h2c_upgrade_with_a_header_block_larger_than_one_frame() {
    let h = Harness::new(vec![rule(Some("GET"), None)]).await;
    let big = format!("x-big: {}", "b".repeat(40_000));
    let out = curl(&["--http2", "-H", &big, &format!("http://{}/big", h.addr())]).await;
    assert!(out.ends_with("=2 200 1\n"), "{out}");
    assert!(out.contains(&big), "the whole header arrives upstream");
}

#[tokio::test]
async fn h2c_upgrade_with_a_body_is_served_as_http1() {
    let h = Harness::new(vec![rule(Some("POST"), None)]).await;
    let mut c = h.h1().await;
    let request = Request::post("/echo")
        .header("host", "x")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
        .body(full("payload"))
        .unwrap();
    let (status, _, body) = send(&mut c, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "payload");
    let request = Request::get("/after")
        .header("host", "x")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
        .body(full(""))
        .unwrap();
    // A bodiless upgrade request on the same connection is still an upgrade.
    let (status, headers, _) = send(&mut c, request).await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(headers.get("upgrade").unwrap(), "h2c");
}

/// With the listener's `original_source`, upstream connections leave from the client's
/// address (the server sees who calls), and a client's parked upstream connection serves
/// only that client again, never another one.
#[tokio::test]
async fn upstream_connections_keep_the_client_address() {
    let h = Harness::with(
        upstream().await,
        |_| {},
        |u| {
            let mut snapshot = snapshot(1, u, vec![HttpRule::default()]);
            snapshot.listeners[0].original_source = true;
            snapshot
        },
    )
    .await;
    for client in ["127.0.0.2", "127.0.0.3", "127.0.0.2"] {
        let mut sender = h1_from(client, h.addr()).await;
        let (status, _, peer) = send(&mut sender, get("/peer")).await;
        assert_eq!((status, peer.as_str()), (StatusCode::OK, client));
        drop(sender);
        // The client connection ends and leaves its upstream connection parked.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        h.upstream.connections.load(Ordering::SeqCst),
        2,
        "one upstream connection per client, the first one's reused"
    );
}
