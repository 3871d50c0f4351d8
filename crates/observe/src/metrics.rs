//! Hubble's metric families computed from flows, with Hubble's names and
//! labels, and a small HTTP endpoint serving them as OpenMetrics text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::flows;
use crate::proto::flow::{
    DropReason, Flow, IpVersion, L7FlowType, LostEventSource, TrafficDirection, Verdict, layer4,
    layer7,
};

/// Labels of `hubble_flows_processed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    r#type: String,
    subtype: String,
    verdict: String,
}

/// Labels of `hubble_drop_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: String,
    protocol: String,
}

/// Labels of `hubble_tcp_flags_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpLabels {
    flag: String,
    family: String,
}

/// Labels of `hubble_port_distribution_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    protocol: String,
    port: String,
}

/// Labels of `hubble_policy_verdicts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    direction: String,
    r#match: String,
    action: String,
}

/// Labels of `hubble_lost_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LostLabels {
    source: String,
}

/// Labels of `hubble_http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    protocol: String,
    status: String,
    reporter: String,
}

/// Labels of `hubble_http_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpDurationLabels {
    method: String,
    reporter: String,
}

/// Handles to Hubble's metric families; cheap to clone, shared with the observer.
#[derive(Clone, Debug)]
pub struct Metrics {
    flows_processed: Family<FlowLabels, Counter>,
    drops: Family<DropLabels, Counter>,
    tcp_flags: Family<TcpLabels, Counter>,
    ports: Family<PortLabels, Counter>,
    policy_verdicts: Family<VerdictLabels, Counter>,
    lost_events: Family<LostLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<HttpDurationLabels, Histogram>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

impl Metrics {
    /// Creates the families and registers them as `hubble_*` in `registry`,
    /// next to whatever else the caller registers there.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            flows_processed: Family::default(),
            drops: Family::default(),
            tcp_flags: Family::default(),
            ports: Family::default(),
            policy_verdicts: Family::default(),
            lost_events: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(duration_histogram),
        };
        let hubble = registry.sub_registry_with_prefix("hubble");
        hubble.register(
            "flows_processed",
            "Total number of flows processed",
            metrics.flows_processed.clone(),
        );
        hubble.register("drop", "Number of drops", metrics.drops.clone());
        hubble.register(
            "tcp_flags",
            "TCP flag occurrences",
            metrics.tcp_flags.clone(),
        );
        hubble.register(
            "port_distribution",
            "Numbers of packets distributed by destination port",
            metrics.ports.clone(),
        );
        hubble.register(
            "policy_verdicts",
            "Number of policy verdicts",
            metrics.policy_verdicts.clone(),
        );
        hubble.register(
            "lost_events",
            "Number of lost events",
            metrics.lost_events.clone(),
        );
        hubble.register(
            "http_requests",
            "Count of HTTP requests",
            metrics.http_requests.clone(),
        );
        hubble.register(
            "http_request_duration_seconds",
            "Quantiles of HTTP request duration in seconds",
            metrics.http_duration.clone(),
        );
        metrics
    }

    /// Counts one flow in every family it belongs to.
    pub fn observe_flow(&self, flow: &Flow) {
        let verdict = enum_name(
            Verdict::try_from(flow.verdict).map(|v| v.as_str_name()),
            flow.verdict,
        );
        let event_type = flow.event_type.as_ref().map_or(0, |e| e.r#type);
        let sub_type = flow.event_type.as_ref().map_or(0, |e| e.sub_type);
        let (type_name, subtype) = match event_type {
            flows::MESSAGE_TYPE_ACCESS_LOG => (
                "L7".to_string(),
                match flow.l7.as_ref().and_then(|l| l.record.as_ref()) {
                    Some(layer7::Record::Dns(_)) => "DNS",
                    Some(layer7::Record::Http(_)) => "HTTP",
                    Some(layer7::Record::Kafka(_)) => "Kafka",
                    None => "",
                }
                .to_string(),
            ),
            flows::MESSAGE_TYPE_DROP => ("Drop".to_string(), String::new()),
            flows::MESSAGE_TYPE_CAPTURE => ("Capture".to_string(), String::new()),
            flows::MESSAGE_TYPE_TRACE => ("Trace".to_string(), flows::trace_subtype_name(sub_type)),
            flows::MESSAGE_TYPE_POLICY_VERDICT => ("PolicyVerdict".to_string(), String::new()),
            flows::MESSAGE_TYPE_TRACE_SOCK => ("SockTrace".to_string(), String::new()),
            other => ("Unknown".to_string(), other.to_string()),
        };
        self.flows_processed
            .get_or_create(&FlowLabels {
                r#type: type_name,
                subtype,
                verdict: verdict.clone(),
            })
            .inc();

        let protocol = flow_protocol(flow);
        if flow.verdict == Verdict::Dropped as i32 {
            let reason = enum_name(
                DropReason::try_from(flow.drop_reason_desc).map(|r| r.as_str_name()),
                flow.drop_reason_desc,
            );
            self.drops
                .get_or_create(&DropLabels {
                    reason,
                    protocol: protocol.clone(),
                })
                .inc();
        }

        if flow.verdict == Verdict::Forwarded as i32 {
            self.count_l4(flow);
        }

        if event_type == flows::MESSAGE_TYPE_POLICY_VERDICT {
            self.policy_verdicts
                .get_or_create(&VerdictLabels {
                    direction: direction_label(flow.traffic_direction),
                    r#match: flows::policy_match_text(flow.policy_match_type).to_lowercase(),
                    action: verdict.to_lowercase(),
                })
                .inc();
        } else if let Some(layer7::Record::Http(_)) =
            flow.l7.as_ref().and_then(|l| l.record.as_ref())
        {
            self.policy_verdicts
                .get_or_create(&VerdictLabels {
                    direction: direction_label(flow.traffic_direction),
                    r#match: "l7/http".to_string(),
                    action: verdict.to_lowercase(),
                })
                .inc();
        }

        self.count_http(flow);
    }

    /// TCP flags and destination port of forwarded L3/L4 flows.
    fn count_l4(&self, flow: &Flow) {
        let family = flow
            .ip
            .as_ref()
            .and_then(|ip| IpVersion::try_from(ip.ip_version).ok())
            .map_or("", |v| v.as_str_name())
            .to_string();
        if let Some(layer4::Protocol::Tcp(tcp)) = flow.l4.as_ref().and_then(|l| l.protocol.as_ref())
            && let Some(flags) = &tcp.flags
        {
            let mut names = Vec::new();
            if flags.syn {
                names.push(if flags.ack { "SYN-ACK" } else { "SYN" });
            }
            if flags.fin {
                names.push("FIN");
            }
            if flags.rst {
                names.push("RST");
            }
            for flag in names {
                self.tcp_flags
                    .get_or_create(&TcpLabels {
                        flag: flag.to_string(),
                        family: family.clone(),
                    })
                    .inc();
            }
        }
        // Hubble counts the server port of the first direction only.
        if flow.is_reply != Some(true)
            && flow.l7.is_none()
            && let Some((protocol, port)) = destination_port(flow)
        {
            self.ports
                .get_or_create(&PortLabels {
                    protocol,
                    port: port.to_string(),
                })
                .inc();
        }
    }

    /// HTTP request counts and latencies, from response flows.
    fn count_http(&self, flow: &Flow) {
        let Some(l7) = &flow.l7 else { return };
        let Some(layer7::Record::Http(http)) = &l7.record else {
            return;
        };
        if l7.r#type != L7FlowType::Response as i32 {
            return;
        }
        let reporter = match TrafficDirection::try_from(flow.traffic_direction) {
            Ok(TrafficDirection::Ingress) => "server",
            Ok(TrafficDirection::Egress) => "client",
            _ => "unknown",
        };
        self.http_requests
            .get_or_create(&HttpLabels {
                method: http.method.clone(),
                protocol: http.protocol.clone(),
                status: http.code.to_string(),
                reporter: reporter.to_string(),
            })
            .inc();
        // Precision loss only above 2^53 ns (104 days), irrelevant for latency.
        #[allow(clippy::cast_precision_loss)]
        let seconds = l7.latency_ns as f64 / 1e9;
        self.http_duration
            .get_or_create(&HttpDurationLabels {
                method: http.method.clone(),
                reporter: reporter.to_string(),
            })
            .observe(seconds);
    }

    /// Counts events lost at `source`.
    pub fn observe_lost(&self, source: LostEventSource, count: u64) {
        self.lost_events
            .get_or_create(&LostLabels {
                source: source.as_str_name().to_lowercase(),
            })
            .inc_by(count);
    }
}

fn enum_name(name: Result<&'static str, prost::UnknownEnumValue>, raw: i32) -> String {
    name.map_or_else(|_| raw.to_string(), str::to_string)
}

fn direction_label(direction: i32) -> String {
    TrafficDirection::try_from(direction)
        .map_or("unknown", |d| match d {
            TrafficDirection::Ingress => "ingress",
            TrafficDirection::Egress => "egress",
            TrafficDirection::Unknown => "unknown",
        })
        .to_string()
}

/// Hubble's protocol label: the L7 protocol if any, else the L4 one.
fn flow_protocol(flow: &Flow) -> String {
    match flow.l7.as_ref().and_then(|l| l.record.as_ref()) {
        Some(layer7::Record::Dns(_)) => return "DNS".to_string(),
        Some(layer7::Record::Http(_)) => return "HTTP".to_string(),
        Some(layer7::Record::Kafka(_)) => return "Kafka".to_string(),
        None => {}
    }
    match flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(_)) => "TCP",
        Some(layer4::Protocol::Udp(_)) => "UDP",
        Some(layer4::Protocol::Sctp(_)) => "SCTP",
        Some(layer4::Protocol::IcmPv4(_)) => "ICMPv4",
        Some(layer4::Protocol::IcmPv6(_)) => "ICMPv6",
        None => "Unknown",
    }
    .to_string()
}

fn destination_port(flow: &Flow) -> Option<(String, u32)> {
    match flow.l4.as_ref()?.protocol.as_ref()? {
        layer4::Protocol::Tcp(t) => Some(("TCP".to_string(), t.destination_port)),
        layer4::Protocol::Udp(u) => Some(("UDP".to_string(), u.destination_port)),
        layer4::Protocol::Sctp(s) => Some(("SCTP".to_string(), s.destination_port)),
        layer4::Protocol::IcmPv4(_) => Some(("ICMPv4".to_string(), 0)),
        layer4::Protocol::IcmPv6(_) => Some(("ICMPv6".to_string(), 0)),
    }
}

/// The endpoint that serves a registry (the agent serves its families with it).
pub use myelin_metrics_endpoint::{
    OPENMETRICS_CONTENT_TYPE, Readiness, encode, serve as serve_metrics,
};
