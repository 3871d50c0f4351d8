//! The Grafana dashboard (`dashboards/myelin.json`) next to the service map:
//! well-formed, laid out on Grafana's 24-column grid, and every metric and
//! label its queries use is one the agent's registry or a running proxy's
//! metrics endpoint serves, with no family served by both.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use myelin_observe::Metrics;
use myelin_observe::proto::flow::LostEventSource;
use prometheus_client::registry::Registry;
use serde_json::Value;

fn dashboard() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../dashboards/myelin.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Series names and their label names, from OpenMetrics text: samples as
/// they are, and families without samples expanded by their type.
fn series(text: &str, into: &mut BTreeMap<String, BTreeSet<String>>) {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let names: Vec<String> = match kind {
                "counter" => vec![format!("{name}_total")],
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{name}{s}"))
                    .collect(),
                _ => vec![name.to_string()],
            };
            for n in names {
                into.entry(n).or_default();
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let labels = into.entry(line[..name_end].to_string()).or_default();
            if let Some(inner) = line[name_end..]
                .strip_prefix('{')
                .and_then(|r| r.split_once('}'))
                .map(|(inner, _)| inner)
            {
                for pair in inner.split(',') {
                    if let Some((key, _)) = pair.split_once('=') {
                        labels.insert(key.trim().to_string());
                    }
                }
            }
        }
    }
}

/// What the agent's `/metrics` exposes: the registry the agent builds and serves,
/// with samples in every labelled family so that their label names are known. (The
/// agent's own `myelin_*` families are left out: a panel on them would fail here.)
fn agent_exposes() -> BTreeMap<String, BTreeSet<String>> {
    let mut agent = Registry::default();
    let metrics = Metrics::register(&mut agent);
    for flow in common::demo() {
        metrics.observe_flow(&flow);
    }
    metrics.observe_flow(&common::xwing_drop());
    metrics.observe_lost(LostEventSource::PerfEventRingBuffer, 1);
    let mut exposed = BTreeMap::new();
    let text = myelin_observe::metrics::encode(&agent).unwrap_or_else(|e| panic!("{e}"));
    series(&text, &mut exposed);
    exposed
}

/// What a running proxy serves on its metrics endpoint, scraped over HTTP; every
/// labelled family of the proxy has its label values from the start.
async fn proxy_serves() -> BTreeMap<String, BTreeSet<String>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = myelin_proxy::ProxyConfig::new("/nonexistent/myelin-dashboard-test.sock");
    config.metrics_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let proxy = myelin_proxy::Proxy::new(config);
    proxy.start().unwrap_or_else(|e| panic!("{e}"));
    let address = proxy
        .metrics_addr()
        .unwrap_or_else(|| panic!("the proxy serves no metrics"));
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("{address}: {e}"));
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not HTTP: {answer}"));
    let mut exposed = BTreeMap::new();
    series(body, &mut exposed);
    exposed
}

/// Every series the agent and the proxy serve; a family served by both is defined twice.
async fn exposed() -> BTreeMap<String, BTreeSet<String>> {
    let agent = agent_exposes();
    let proxy = proxy_serves().await;
    assert!(
        proxy.keys().any(|name| name.starts_with("myelin_proxy_")),
        "the proxy serves none of its families: {:?}",
        proxy.keys()
    );
    let twice: Vec<&String> = agent.keys().filter(|n| proxy.contains_key(*n)).collect();
    assert!(
        twice.is_empty(),
        "served by both the agent and the proxy (define each family once): {twice:?}"
    );
    agent.into_iter().chain(proxy).collect()
}

fn panels(dashboard: &Value) -> Vec<&Value> {
    dashboard["panels"]
        .as_array()
        .unwrap_or_else(|| panic!("no panels"))
        .iter()
        .collect()
}

fn exprs(panel: &Value) -> Vec<&str> {
    panel["targets"]
        .as_array()
        .map(|targets| targets.iter().filter_map(|t| t["expr"].as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn dashboard_is_well_formed() {
    let d = dashboard();
    assert_eq!(d["title"], "Myelin");
    assert!(
        d["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40)
    );
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let variables = d["templating"]["list"]
        .as_array()
        .unwrap_or_else(|| panic!("no template variables"));
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable, so the dashboard imports anywhere"
    );

    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for panel in panels(&d) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without title: {panel}");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "{title}: id {id} used twice");
        let grid = &panel["gridPos"];
        let (Some(x), Some(y), Some(w), Some(h)) = (
            grid["x"].as_u64(),
            grid["y"].as_u64(),
            grid["w"].as_u64(),
            grid["h"].as_u64(),
        ) else {
            panic!("{title}: gridPos needs x, y, w and h");
        };
        assert!(
            w > 0 && h > 0 && x + w <= 24,
            "{title}: outside the 24-column grid"
        );
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.to_string()) {
                    panic!("{title} overlaps {other} at ({cx}, {cy})");
                }
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.is_empty(), "{title}: a target without expr");
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{title}: unbalanced parentheses in {expr}"
            );
            let r = target["refId"].as_str().unwrap_or_default();
            assert!(refs.insert(r.to_string()), "{title}: refId {r:?} twice");
        }
    }
}

#[tokio::test]
async fn panels_use_exposed_metrics_and_labels() {
    let d = dashboard();
    let exposed = exposed().await;
    let metric =
        regex::Regex::new(r"\b((?:hubble|myelin)_[a-z_]+)\b").unwrap_or_else(|e| panic!("{e}"));
    let grouping = regex::Regex::new(r"\bby \(([^)]*)\)").unwrap_or_else(|e| panic!("{e}"));
    let matcher =
        regex::Regex::new(r#"([a-z_]+)\s*(?:=~|!~|!=|=)\s*""#).unwrap_or_else(|e| panic!("{e}"));
    // Labels Prometheus adds at scrape time or histograms carry.
    let implicit = ["job", "instance", "le"];
    let mut used = BTreeSet::new();
    for panel in panels(&d) {
        let title = panel["title"].as_str().unwrap_or_default();
        for expr in exprs(panel) {
            let names: Vec<&str> = metric
                .captures_iter(expr)
                .map(|c| c.get(1).map_or("", |m| m.as_str()))
                .collect();
            assert!(!names.is_empty(), "{title}: {expr} uses no Myelin metric");
            let mut labels = BTreeSet::new();
            for name in &names {
                let known = exposed.get(*name).unwrap_or_else(|| {
                    panic!(
                        "{title}: {name} is not exposed; exposed: {:?}",
                        exposed.keys()
                    )
                });
                labels.extend(known.iter().cloned());
                used.insert(name.to_string());
            }
            let referenced = grouping
                .captures_iter(expr)
                .flat_map(|c| {
                    c.get(1)
                        .map_or("", |m| m.as_str())
                        .split(',')
                        .map(|l| l.trim().to_string())
                        .collect::<Vec<_>>()
                })
                .chain(matcher.captures_iter(expr).map(|c| c[1].to_string()));
            for label in referenced {
                assert!(
                    implicit.contains(&label.as_str()) || labels.contains(&label),
                    "{title}: label {label:?} is not on {names:?} (it has {labels:?})"
                );
            }
        }
    }
    for family in [
        "hubble_flows_processed_total",
        "hubble_drop_total",
        "hubble_tcp_flags_total",
        "hubble_port_distribution_total",
        "hubble_policy_verdicts_total",
        "hubble_http_requests_total",
        "hubble_http_request_duration_seconds_bucket",
        "hubble_lost_events_total",
        "myelin_proxy_connections",
        "myelin_proxy_snapshot_version",
        "myelin_proxy_errors_total",
        "myelin_proxy_connection_limit",
        "myelin_proxy_connections_refused_total",
        "myelin_proxy_events_dropped_total",
    ] {
        assert!(used.contains(family), "no panel shows {family}");
    }
}
