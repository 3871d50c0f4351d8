//! Hubble metric families move with flows and are served as OpenMetrics text.

mod common;

use std::sync::Arc;

use common::*;
use myelin_observe::metrics::{self, Metrics};
use myelin_observe::proto::flow::LostEventSource;
use myelin_observe::{Observer, ObserverConfig};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

#[tokio::test]
async fn counters_move_with_flows() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let mut config = ObserverConfig::new("node-1");
    config.metrics = Some(metrics);
    let observer = Observer::new(config);

    for flow in demo() {
        observer.push(flow);
    }
    observer.push(xwing_drop());
    observer.record_lost(LostEventSource::PerfEventRingBuffer, 5);
    let text = metrics::encode(&registry).expect("encode");

    let expect = [
        (
            r#"hubble_flows_processed_total{type="Drop",subtype="",verdict="DROPPED"}"#,
            2.0,
        ),
        (
            r#"hubble_flows_processed_total{type="Trace",subtype="to-endpoint",verdict="FORWARDED"}"#,
            1.0,
        ),
        (
            r#"hubble_flows_processed_total{type="L7",subtype="HTTP",verdict="FORWARDED"}"#,
            3.0,
        ),
        (
            r#"hubble_flows_processed_total{type="PolicyVerdict",subtype="",verdict="DROPPED"}"#,
            1.0,
        ),
        (
            r#"hubble_drop_total{reason="POLICY_DENIED",protocol="TCP"}"#,
            3.0,
        ),
        (
            r#"hubble_drop_total{reason="DROP_REASON_UNKNOWN",protocol="HTTP"}"#,
            1.0,
        ),
        (
            r#"hubble_tcp_flags_total{flag="SYN-ACK",family="IPv4"}"#,
            1.0,
        ),
        (
            r#"hubble_policy_verdicts_total{direction="ingress",match="l3-l4",action="forwarded"}"#,
            1.0,
        ),
        (
            r#"hubble_policy_verdicts_total{direction="ingress",match="none",action="dropped"}"#,
            1.0,
        ),
        (
            r#"hubble_lost_events_total{source="perf_event_ring_buffer"}"#,
            5.0,
        ),
        (
            r#"hubble_http_requests_total{method="POST",protocol="HTTP/1.1",status="200",reporter="server"}"#,
            1.0,
        ),
        (
            r#"hubble_http_requests_total{method="PUT",protocol="HTTP/1.1",status="403",reporter="server"}"#,
            1.0,
        ),
        (
            r#"hubble_port_distribution_total{protocol="TCP",port="80"}"#,
            1.0,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(text.contains("# TYPE hubble_http_request_duration_seconds histogram"));
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );

    observer.push(xwing_drop());
    let text = metrics::encode(&registry).expect("encode");
    assert_eq!(
        sample(
            &text,
            r#"hubble_drop_total{reason="POLICY_DENIED",protocol="TCP"}"#
        ),
        Some(4.0)
    );
}

#[tokio::test]
async fn metrics_endpoint_serves_openmetrics() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    metrics.observe_flow(&xwing_drop());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(metrics::serve_metrics(
        listener,
        Arc::new(registry),
        metrics::Readiness::ready(),
    ));

    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains(metrics::OPENMETRICS_CONTENT_TYPE));
    assert!(response.contains(r#"hubble_drop_total{reason="POLICY_DENIED",protocol="TCP"} 1"#));
    server.abort();
}

/// With `promtool` installed (Debian: prometheus), the exposition must pass
/// `promtool check metrics` (apart from the HELP naming lint explained below); CI sets MYELIN_REQUIRE_PROMTOOL=1 to make a
/// missing promtool a failure rather than a skip.
#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let Ok(promtool) = which::which("promtool") else {
        assert!(
            std::env::var_os("MYELIN_REQUIRE_PROMTOOL").is_none(),
            "MYELIN_REQUIRE_PROMTOOL is set but promtool is not installed (apt-get install prometheus)"
        );
        eprintln!("promtool not installed; skipping the promtool check");
        return;
    };
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    for flow in demo() {
        metrics.observe_flow(&flow);
    }
    let text = metrics::encode(&registry).expect("encode");
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("promtool output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // promtool reads the classic text format, where a counter's HELP names the
    // sample (`x_total`); OpenMetrics names the family (`x`) instead. That
    // lint, and only that lint, is expected; parse errors are not.
    let unexpected: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|line| !line.trim().is_empty())
        .filter(|line| {
            let family = line
                .strip_suffix(" no help text")
                .and_then(|sample| sample.strip_suffix("_total"));
            !family.is_some_and(|family| text.contains(&format!("# HELP {family} ")))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "promtool rejected the metrics ({}):\n{}",
        output.status,
        unexpected.join("\n")
    );
}
