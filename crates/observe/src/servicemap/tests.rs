//! Aggregation and rendering on hand-made flows, with time passed in.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::flows::{self, PolicyMatch};
use crate::proto::flow::{
    DropReason, Endpoint, Flow, Http, Ip, IpVersion, L7FlowType, Layer4, Layer7, Tcp,
    TraceObservationPoint, TrafficDirection, Verdict, Workload, layer4, layer7,
};

fn pod(name: &str, workload: Option<&str>, identity: u32) -> Endpoint {
    Endpoint {
        identity,
        namespace: "default".into(),
        pod_name: name.into(),
        workloads: workload
            .map(|w| Workload {
                name: w.into(),
                kind: "Deployment".into(),
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

fn deathstar() -> Endpoint {
    pod("deathstar-c74d84667-cx5kp", Some("deathstar"), 16530)
}
fn tiefighter() -> Endpoint {
    pod("tiefighter", None, 17143)
}
fn xwing() -> Endpoint {
    pod("xwing", None, 22654)
}

fn tcp_flow(src: Endpoint, dst: Endpoint, sport: u32, dport: u32) -> Flow {
    Flow {
        ip: Some(Ip {
            source: "10.0.1.1".into(),
            destination: "10.0.1.2".into(),
            ip_version: IpVersion::IPv4 as i32,
            encrypted: false,
            source_xlated: String::new(),
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: sport,
                destination_port: dport,
                flags: None,
            })),
        }),
        source: Some(src),
        destination: Some(dst),
        ..Default::default()
    }
}

fn trace(src: Endpoint, dst: Endpoint) -> Flow {
    let mut f = tcp_flow(src, dst, 40000, 80);
    f.is_reply = Some(false);
    f.verdict = Verdict::Forwarded as i32;
    flows::mark_trace(&mut f, TraceObservationPoint::ToEndpoint);
    f
}

fn policy_drop(src: Endpoint, dst: Endpoint) -> Flow {
    let mut f = tcp_flow(src, dst, 40001, 80);
    flows::mark_drop(&mut f, DropReason::PolicyDenied);
    f
}

fn denied_verdict(src: Endpoint, dst: Endpoint) -> Flow {
    let mut f = tcp_flow(src, dst, 40001, 80);
    flows::mark_policy_verdict(
        &mut f,
        TrafficDirection::Ingress,
        PolicyMatch::None,
        Verdict::Dropped,
    );
    f
}

fn http(kind: L7FlowType, code: u32) -> Layer7 {
    Layer7 {
        r#type: kind as i32,
        latency_ns: 0,
        record: Some(layer7::Record::Http(Http {
            code,
            method: "POST".into(),
            url: "http://deathstar/v1/request-landing".into(),
            protocol: "HTTP/1.1".into(),
            headers: vec![],
        })),
    }
}

/// An HTTP request (client to server) or response (server to client, a reply).
fn l7(l7: Layer7, verdict: Verdict) -> Flow {
    let response = l7.r#type == L7FlowType::Response as i32;
    let mut f = if response {
        tcp_flow(deathstar(), tiefighter(), 80, 40002)
    } else {
        tcp_flow(tiefighter(), deathstar(), 40002, 80)
    };
    f.is_reply = Some(response);
    f.verdict = verdict as i32;
    flows::mark_l7(&mut f, l7);
    f
}

fn response(code: u32) -> Flow {
    l7(http(L7FlowType::Response, code), Verdict::Forwarded)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn record(map: &mut ServiceMap, flow: Flow, at: u64) {
    map.record(Arc::new(flow), secs(at));
}

fn edge<'a>(view: &'a MapView, src: &str, dst: &str, proto: &str) -> &'a EdgeView {
    view.edges
        .iter()
        .find(|e| e.source == src && e.destination == dst && e.protocol == proto)
        .unwrap_or_else(|| panic!("no edge {src} -> {dst} {proto} in {view:#?}"))
}

fn demo_map() -> ServiceMap {
    let mut map = ServiceMap::new(ServiceMapConfig::default());
    record(&mut map, trace(tiefighter(), deathstar()), 0);
    // The SYN-ACK is a reply: it belongs to the tiefighter -> deathstar edge.
    let mut synack = tcp_flow(deathstar(), tiefighter(), 80, 40000);
    synack.is_reply = Some(true);
    synack.verdict = Verdict::Forwarded as i32;
    flows::mark_trace(&mut synack, TraceObservationPoint::ToEndpoint);
    record(&mut map, synack, 0);
    record(
        &mut map,
        l7(http(L7FlowType::Request, 0), Verdict::Forwarded),
        1,
    );
    record(&mut map, response(200), 1);
    record(
        &mut map,
        l7(http(L7FlowType::Request, 0), Verdict::Dropped),
        2,
    );
    record(&mut map, response(403), 2);
    record(&mut map, response(503), 3);
    record(&mut map, denied_verdict(xwing(), deathstar()), 3);
    record(&mut map, policy_drop(xwing(), deathstar()), 3);
    map
}

#[test]
fn counts_and_status_per_edge() {
    let view = demo_map().view(secs(3));
    let ids: Vec<&str> = view.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        ids,
        ["default/deathstar", "default/tiefighter", "default/xwing"]
    );
    assert_eq!(view.edges.len(), 3);

    let tcp = edge(&view, "default/tiefighter", "default/deathstar", "TCP");
    assert_eq!(
        (tcp.port, tcp.flows, tcp.forwarded, tcp.dropped),
        (80, 2, 2, 0)
    );
    assert_eq!(tcp.status, EdgeStatus::Forwarded);
    assert_eq!(tcp.error_ratio, None);

    let http = edge(&view, "default/tiefighter", "default/deathstar", "HTTP");
    assert_eq!(http.port, 80);
    assert_eq!(
        (http.flows, http.forwarded, http.dropped, http.denied),
        (5, 4, 1, 1)
    );
    assert_eq!((http.http_requests, http.http_errors), (3, 1));
    assert_eq!(http.status, EdgeStatus::Mixed);

    let xwing = edge(&view, "default/xwing", "default/deathstar", "TCP");
    // The policy-verdict notification does not count as a second drop.
    assert_eq!(
        (xwing.flows, xwing.forwarded, xwing.dropped, xwing.denied),
        (2, 0, 1, 1)
    );
    assert_eq!(xwing.status, EdgeStatus::Denied);
}

#[test]
fn rates_follow_the_window() {
    let config = ServiceMapConfig {
        window: secs(10),
        ..ServiceMapConfig::default()
    };
    let mut map = ServiceMap::new(config);
    // Two responses per second for 30 s, one in four a 500.
    for second in 0..30 {
        record(&mut map, response(200), second);
        record(
            &mut map,
            response(if second % 2 == 0 { 500 } else { 200 }),
            second,
        );
    }
    let view = map.view(secs(29));
    let e = edge(&view, "default/tiefighter", "default/deathstar", "HTTP");
    assert_eq!(view.window_seconds, 10);
    assert!((e.request_rate - 2.0).abs() < 1e-9, "{}", e.request_rate);
    assert!((e.flow_rate - 2.0).abs() < 1e-9);
    assert_eq!(e.error_ratio, Some(0.25));
    assert_eq!(e.http_requests, 60);

    // Five quiet seconds: half the window is empty.
    let e = map.view(secs(34)).edges[0].clone();
    assert!((e.request_rate - 1.0).abs() < 1e-9, "{}", e.request_rate);
    assert_eq!(e.idle_seconds, 5);
    // A whole window of silence: no rate, no error ratio, totals kept.
    let e = map.view(secs(40)).edges[0].clone();
    assert_eq!(e.request_rate, 0.0);
    assert_eq!(e.error_ratio, None);
    assert_eq!(e.http_requests, 60);
}

#[test]
fn young_edges_are_measured_over_their_life() {
    let mut map = ServiceMap::new(ServiceMapConfig::default());
    for _ in 0..3 {
        record(&mut map, response(200), 100);
    }
    let e = map.view(secs(100)).edges[0].clone();
    assert!((e.request_rate - 3.0).abs() < 1e-9, "{}", e.request_rate);
    let e = map.view(secs(102)).edges[0].clone();
    assert!((e.request_rate - 1.0).abs() < 1e-9, "{}", e.request_rate);
}

#[test]
fn recent_flows_are_bounded_and_ordered() {
    let config = ServiceMapConfig {
        flows_per_edge: 3,
        ..ServiceMapConfig::default()
    };
    let mut map = ServiceMap::new(config);
    for code in [200, 201, 202, 203, 204] {
        record(&mut map, response(code), 0);
    }
    let id = map.view(secs(0)).edges[0].id;
    let kept: Vec<u32> = map
        .edge_flows(id)
        .unwrap_or_default()
        .iter()
        .filter_map(|f| match f.l7.as_ref()?.record.as_ref()? {
            layer7::Record::Http(h) => Some(h.code),
            _ => None,
        })
        .collect();
    assert_eq!(kept, [202, 203, 204]);
    assert!(map.edge_flows(id + 100).is_none());
}

fn peer(n: u32) -> Endpoint {
    pod(&format!("client-{n}"), None, 1000 + n)
}

#[test]
fn edges_are_capped_least_recent_first() {
    let config = ServiceMapConfig {
        max_edges: 3,
        ..ServiceMapConfig::default()
    };
    let mut map = ServiceMap::new(config);
    for n in 0..5 {
        record(&mut map, trace(peer(n), deathstar()), u64::from(n));
    }
    // client-0 and client-1 made room for client-3 and client-4; client-2
    // talks again, so the next to go is client-3.
    record(&mut map, trace(peer(2), deathstar()), 10);
    record(&mut map, trace(peer(5), deathstar()), 11);
    let view = map.view(secs(11));
    let sources: Vec<&str> = view.edges.iter().map(|e| e.source.as_str()).collect();
    assert_eq!(
        sources,
        ["default/client-2", "default/client-4", "default/client-5"]
    );
    assert_eq!(view.evicted_edges, 3);
    // Nodes of evicted edges went with them.
    assert_eq!(view.nodes.len(), 4);
}

#[test]
fn nodes_are_capped_by_evicting_edges() {
    let config = ServiceMapConfig {
        max_nodes: 3,
        ..ServiceMapConfig::default()
    };
    let mut map = ServiceMap::new(config);
    record(&mut map, trace(peer(0), deathstar()), 0);
    record(&mut map, trace(peer(1), deathstar()), 1);
    record(&mut map, trace(peer(2), deathstar()), 2);
    let view = map.view(secs(2));
    let ids: Vec<&str> = view.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        ids,
        ["default/client-1", "default/client-2", "default/deathstar"]
    );
    assert_eq!(view.evicted_edges, 1);
}

#[test]
fn node_cap_holds_when_an_eviction_frees_a_reused_node() {
    let config = ServiceMapConfig {
        max_nodes: 3,
        ..ServiceMapConfig::default()
    };
    let mut map = ServiceMap::new(config);
    record(&mut map, trace(peer(0), deathstar()), 0);
    record(&mut map, trace(peer(1), deathstar()), 1);
    // client-0 calls a new server: evicting client-0 -> deathstar also drops
    // client-0, which this edge needs again, so a second eviction is due.
    record(&mut map, trace(peer(0), xwing()), 2);
    let view = map.view(secs(2));
    let ids: Vec<&str> = view.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["default/client-0", "default/xwing"]);
    assert_eq!(view.evicted_edges, 2);
}

#[test]
fn idle_edges_expire_with_their_nodes() {
    let config = ServiceMapConfig {
        idle_timeout: secs(10),
        ..ServiceMapConfig::default()
    };
    let mut map = ServiceMap::new(config);
    record(&mut map, trace(xwing(), deathstar()), 0);
    record(&mut map, trace(tiefighter(), deathstar()), 5);
    assert_eq!(map.view(secs(10)).edges.len(), 2);
    // Expired edges are hidden from a view even before expire() runs.
    let view = map.view(secs(11));
    assert_eq!(view.edges.len(), 1);
    map.expire(secs(11));
    let view = map.view(secs(11));
    let ids: Vec<&str> = view.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["default/deathstar", "default/tiefighter"]);
    assert!(
        map.edge_flows(1).is_none(),
        "the expired edge's flows are freed"
    );
    // An expired edge that comes back is a new edge with a new id.
    record(&mut map, trace(xwing(), deathstar()), 20);
    let view = map.view(secs(20));
    assert_eq!(view.edges.len(), 1);
    assert_eq!(view.edges[0].id, 3);
    assert_eq!(view.edges[0].flows, 1);
}

#[test]
fn nodes_are_named_by_workload_pod_reserved_identity_or_address() {
    let mut map = ServiceMap::new(ServiceMapConfig::default());
    let world = Endpoint {
        identity: 2,
        ..Default::default()
    };
    let host = Endpoint {
        identity: 7777,
        labels: vec!["reserved:host".into()],
        ..Default::default()
    };
    let cidr = Endpoint {
        identity: 16777217,
        ..Default::default()
    };
    record(&mut map, trace(world, deathstar()), 0);
    record(&mut map, trace(host, tiefighter()), 0);
    record(&mut map, trace(cidr, xwing()), 0);
    let mut bare = tcp_flow(Endpoint::default(), xwing(), 1, 53);
    bare.source = None;
    record(&mut map, bare.clone(), 0);
    bare.ip = None;
    record(&mut map, bare, 0);
    let view = map.view(secs(0));
    let nodes: Vec<(&str, &str, NodeKind)> = view
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.label.as_str(), n.kind))
        .collect();
    assert_eq!(
        nodes,
        [
            ("default/deathstar", "default/deathstar", NodeKind::Workload),
            ("default/tiefighter", "default/tiefighter", NodeKind::Pod),
            ("default/xwing", "default/xwing", NodeKind::Pod),
            ("identity:16777217", "identity 16777217", NodeKind::Identity),
            ("ip:10.0.1.1", "10.0.1.1", NodeKind::Address),
            ("reserved:host", "host", NodeKind::Reserved),
            ("reserved:world", "world", NodeKind::Reserved),
        ]
    );
    assert_eq!(view.unplaced_flows, 1);
}

fn demo_view() -> MapView {
    let mut view = demo_map().view(secs(3));
    // Fixed figures, so that the lines below do not depend on float formatting
    // of computed rates (rates are tested above).
    for e in &mut view.edges {
        e.flow_rate = e.flows as f64 / 4.0;
        e.request_rate = e.http_requests as f64 / 4.0;
    }
    view
}

#[test]
fn text_table_line_by_line() {
    let text = render_text(&demo_view());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "SOURCE                    DESTINATION         PROTO/PORT   FLOWS/S   REQ/S   ERR%    DROPS   STATUS",
            "default/tiefighter   ->   default/deathstar   HTTP/80      1.25      0.75    33.3%   1       partly denied",
            "default/tiefighter   ->   default/deathstar   TCP/80       0.50      0.00    -       0       forwarded",
            "default/xwing        ->   default/deathstar   TCP/80       0.50      0.00    -       1       denied",
        ]
    );
}

#[test]
fn text_table_says_what_was_missed() {
    let mut view = demo_view();
    view.edges.clear();
    view.nodes.clear();
    view.lost_flows = 12;
    view.evicted_edges = 3;
    assert_eq!(
        render_text(&view).lines().collect::<Vec<_>>(),
        [
            "SOURCE      DESTINATION   PROTO/PORT   FLOWS/S   REQ/S   ERR%   DROPS   STATUS",
            "(12 flows lost, 3 edges evicted)",
        ]
    );
}

#[test]
fn dot_line_by_line() {
    let dot = render_dot(&demo_view());
    let lines: Vec<&str> = dot.lines().collect();
    assert_eq!(
        lines,
        [
            "digraph servicemap {",
            "  rankdir=LR;",
            "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", fontname=\"Helvetica\"];",
            "  edge [fontname=\"Helvetica\", fontsize=10];",
            "  \"default/deathstar\" [label=\"default/deathstar\"];",
            "  \"default/tiefighter\" [label=\"default/tiefighter\"];",
            "  \"default/xwing\" [label=\"default/xwing\"];",
            "  \"default/tiefighter\" -> \"default/deathstar\" [label=\"HTTP/80\\n0.75 req/s, 33.3% err\\n1 drops\", color=orange, fontcolor=orange];",
            "  \"default/tiefighter\" -> \"default/deathstar\" [label=\"TCP/80\\n0.50 flows/s\"];",
            "  \"default/xwing\" -> \"default/deathstar\" [label=\"TCP/80\\n0.50 flows/s\\n1 drops\", color=red, fontcolor=red];",
            "}",
        ]
    );
}

#[test]
fn dot_quotes_names() {
    let mut view = demo_view();
    view.nodes[0].label = "we\"ird\\name".into();
    let dot = render_dot(&view);
    assert!(
        dot.contains("  \"default/deathstar\" [label=\"we\\\"ird\\\\name\"];"),
        "{dot}"
    );
}

#[test]
fn view_round_trips_through_json() {
    let view = demo_view();
    let json = serde_json::to_string(&view).unwrap_or_default();
    let back: MapView = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(back, view);
    assert!(json.contains("\"status\":\"denied\""), "{json}");
    assert!(json.contains("\"kind\":\"workload\""), "{json}");
}

#[tokio::test(start_paused = true)]
async fn shared_map_follows_the_observer_and_counts_lag() {
    let mut config = crate::ObserverConfig::new("node-1");
    config.follower_buffer = 2;
    let observer = crate::Observer::new(config);
    let map = SharedServiceMap::new(ServiceMapConfig::default());
    let task = map.follow(&observer);
    // Five flows before the follower runs: it can hold two, three are lost.
    for _ in 0..5 {
        observer.push(trace(tiefighter(), deathstar()));
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let view = map.view();
    assert_eq!(view.lost_flows, 3);
    assert_eq!(view.edges.len(), 1);
    assert_eq!(view.edges[0].flows, 2);
    // Flows pushed one by one while it keeps up are all counted.
    for _ in 0..4 {
        observer.push(trace(tiefighter(), deathstar()));
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(map.view().edges[0].flows, 6);
    // Time moves the rates: 6 flows in the first second.
    tokio::time::advance(Duration::from_secs(5)).await;
    let e = map.view().edges[0].clone();
    assert_eq!(e.idle_seconds, 5);
    assert!((e.flow_rate - 1.0).abs() < 1e-9, "{}", e.flow_rate);
    // The follower ends with the observer.
    drop(observer);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .unwrap_or_else(|_| panic!("the follower did not end"))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn cli_flags() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServiceMapArgs,
    }
    let parse = |argv: &[&str]| {
        Cli::try_parse_from(argv)
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    };
    let defaults = parse(&["servicemap"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(defaults.server, DEFAULT_SERVER);
    assert_eq!(defaults.output, MapFormat::Text);
    let dot = parse(&["servicemap", "-o", "dot", "--server", "http://127.0.0.1:9"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (dot.server.as_str(), dot.output),
        ("http://127.0.0.1:9", MapFormat::Dot)
    );
    assert!(parse(&["servicemap", "-o", "svg"]).is_err());
}
