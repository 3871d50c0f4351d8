//! The service map server over real HTTP on 127.0.0.1, fed through a real
//! observer with the Star Wars flows.

mod common;
mod servicemap_support;

use myelin_observe::printer::{PrintOptions, compact_line};
use myelin_observe::servicemap::{
    AccessToken, EdgeFlows, EdgeStatus, MapView, TOKEN_COOKIE, fetch_view, render_text,
};
use servicemap_support::{MapServer, TOKEN, edge_id, request, request_with, starwars_flows};

fn token() -> AccessToken {
    AccessToken::new(TOKEN.to_string())
}

#[tokio::test]
async fn only_holders_of_the_token_read_the_map() {
    let server = MapServer::start().await;
    for path in [
        "/",
        "/api/servicemap",
        "/api/edges/1/flows",
        "/servicemap.js",
    ] {
        let (status, headers, body) = request_with(server.addr, "GET", path, &[]).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert!(body.contains("myelin servicemap --url"), "{body}");
    }
    let (status, _, _) = request_with(server.addr, "GET", "/?token=guess", &[]).await;
    assert_eq!(status, 401);
    let wrong = fetch_view(&server.addr.to_string(), &AccessToken::new("guess".into()))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(wrong.contains("401"), "{wrong}");

    // The URL with the token sets a cookie the page's scripts cannot read;
    // the cookie alone is enough afterwards.
    let (status, headers, _) =
        request_with(server.addr, "GET", &format!("/?token={TOKEN}"), &[]).await;
    assert_eq!(status, 200);
    let cookie = headers["set-cookie"].to_str().unwrap_or_default();
    assert_eq!(
        cookie,
        format!("{TOKEN_COOKIE}={TOKEN}; HttpOnly; SameSite=Strict; Path=/")
    );
    let sent = format!("{TOKEN_COOKIE}={TOKEN}");
    let (status, _, body) =
        request_with(server.addr, "GET", "/api/servicemap", &[("cookie", &sent)]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn page_api_and_edge_flows() {
    let server = MapServer::start().await;
    let flows = starwars_flows();
    server.push_until(&flows, 3).await;

    // The page and everything it loads, from this server only.
    let (status, headers, page) = request(server.addr, "GET", "/").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"]
        .to_str()
        .unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        page.contains(r#"<script src="/servicemap.js" defer></script>"#),
        "{page}"
    );
    assert!(page.contains(r#"<link rel="stylesheet" href="/servicemap.css">"#));
    let (status, headers, script) = request(server.addr, "GET", "/servicemap.js").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert!(script.contains("/api/servicemap"));
    let (status, headers, style) = request(server.addr, "GET", "/servicemap.css").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/css; charset=utf-8");
    assert!(style.contains(".edge"));
    for asset in [&page, &script, &style] {
        // No CDN, no web font, nothing fetched from elsewhere.
        for line in asset.lines() {
            let external = line.contains("https://")
                || (line.contains("http://") && !line.contains("http://www.w3.org/2000/svg"));
            assert!(!external, "an asset refers outside the agent: {line}");
        }
    }

    // The map as JSON.
    let (status, headers, body) = request(server.addr, "GET", "/api/servicemap").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "no-store");
    let view: MapView = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let nodes: Vec<&str> = view.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        nodes,
        ["default/deathstar", "default/tiefighter", "default/xwing"]
    );
    let xwing = edge_id(&view, "default/xwing", "default/deathstar", "TCP");
    let http = edge_id(&view, "default/tiefighter", "default/deathstar", "HTTP");
    edge_id(&view, "default/tiefighter", "default/deathstar", "TCP");
    let by_id = |id| view.edges.iter().find(|e| e.id == id).cloned();
    let xwing_edge = by_id(xwing).unwrap_or_else(|| panic!("edge {xwing}"));
    assert_eq!(xwing_edge.status, EdgeStatus::Denied);
    assert_eq!((xwing_edge.dropped, xwing_edge.denied), (1, 1));
    let http_edge = by_id(http).unwrap_or_else(|| panic!("edge {http}"));
    assert_eq!(http_edge.status, EdgeStatus::Mixed);
    assert_eq!(http_edge.http_requests, 2);

    // An edge's recent flows: the compact lines `observe` prints.
    let (status, _, body) = request(server.addr, "GET", &format!("/api/edges/{xwing}/flows")).await;
    assert_eq!(status, 200);
    let answer: EdgeFlows = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let expected: Vec<String> = flows
        .iter()
        .filter(|f| f.source.as_ref().is_some_and(|s| s.pod_name == "xwing"))
        .map(|f| compact_line(f, &PrintOptions::default()))
        .collect();
    let lines: Vec<&str> = answer.flows.iter().map(|f| f.line.as_str()).collect();
    assert_eq!(lines, expected);
    assert_eq!(
        lines,
        [
            "May  4 13:23:47.852: default/xwing:42818 (ID:22654) <> default/deathstar-c74d84667-cx5kp:80 (ID:16530) policy-verdict:none INGRESS DENIED (TCP Flags: SYN)",
            "May  4 13:23:47.852: default/xwing:42818 (ID:22654) <> default/deathstar-c74d84667-cx5kp:80 (ID:16530) Policy denied DROPPED (TCP Flags: SYN)",
        ]
    );
    let verdicts: Vec<&str> = answer.flows.iter().map(|f| f.verdict.as_str()).collect();
    assert_eq!(verdicts, ["DENIED", "DROPPED"]);

    // Errors say what to do.
    let (status, _, body) = request(server.addr, "GET", "/api/edges/999999/flows").await;
    assert_eq!(status, 404);
    assert!(body.contains("no edge 999999"), "{body}");
    let (status, _, body) = request(server.addr, "GET", "/api/edges/abc/flows").await;
    assert_eq!(status, 400);
    assert!(body.contains("not a number"), "{body}");
    let (status, headers, _) = request(server.addr, "POST", "/api/servicemap").await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, HEAD");
    let (status, _, body) = request(server.addr, "GET", "/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("/api/servicemap"), "{body}");
    let (status, _, body) = request(server.addr, "HEAD", "/").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, ""));

    // What `myelin servicemap` fetches and prints.
    let fetched = fetch_view(&format!("http://{}/", server.addr), &token())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fetched.nodes, view.nodes);
    let text = render_text(&fetched);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 4, "{text}");
    assert!(
        rows[3].starts_with("default/xwing        ->   default/deathstar   TCP/80 "),
        "{text}"
    );
    assert!(rows[3].ends_with("   1       denied"), "{text}");
}

#[tokio::test]
async fn fetch_view_errors_name_the_server() {
    // A port nobody listens on: bind, note it, close.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    drop(listener);
    let error = fetch_view(&addr.to_string(), &token())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains(&format!("cannot reach the service map at {addr}")),
        "{error}"
    );

    // An address without a port.
    let error = fetch_view("127.0.0.1", &token())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("expected host:port"), "{error}");

    // A server with no traffic yet answers an empty map.
    let server = MapServer::start().await;
    let empty = fetch_view(&server.addr.to_string(), &token())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(empty.edges.is_empty() && empty.nodes.is_empty());
}
