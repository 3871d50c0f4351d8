//! GetFlowsResponse in proto3 JSON as the hubble CLI prints it: original
//! proto field names (Cilium marshals with `UseProtoNames`), enums by name,
//! 64-bit integers as strings, default values left out, wrappers unwrapped
//! and timestamps in RFC 3339.

use prost_types::Timestamp;
use serde_json::{Map, Value};

use crate::proto::flow::{AgentEvent, AgentEventType, ServiceUpsertNotificationAddr, agent_event};
use crate::proto::flow::{
    AuthType, CiliumEventType, DebugCapturePoint, DropReason, Endpoint, Flow, FlowType, IpVersion,
    L7FlowType, Layer4, Layer7, LostEvent, LostEventSource, Policy, SocketTranslationPoint,
    TcpFlags, TraceObservationPoint, TraceReason, TrafficDirection, Verdict, layer4, layer7,
};
use crate::proto::observer::{GetAgentEventsResponse, GetFlowsResponse, get_flows_response};
use crate::proto::relay::NodeState;

/// RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, as protojson writes it.
pub fn timestamp(ts: &Timestamp) -> String {
    let Some(t) = u32::try_from(ts.nanos)
        .ok()
        .and_then(|n| chrono::DateTime::from_timestamp(ts.seconds, n))
    else {
        return String::new();
    };
    let base = t.format("%Y-%m-%dT%H:%M:%S");
    let nanos = ts.nanos;
    if nanos == 0 {
        format!("{base}Z")
    } else if nanos % 1_000_000 == 0 {
        format!("{base}.{:03}Z", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!("{base}.{:06}Z", nanos / 1_000)
    } else {
        format!("{base}.{nanos:09}Z")
    }
}

/// A JSON object that leaves out proto3 default values.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn string(mut self, key: &str, value: &str) -> Self {
        if !value.is_empty() {
            self.0.insert(key.into(), Value::from(value));
        }
        self
    }
    fn u32(mut self, key: &str, value: u32) -> Self {
        if value != 0 {
            self.0.insert(key.into(), Value::from(value));
        }
        self
    }
    fn i32(mut self, key: &str, value: i32) -> Self {
        if value != 0 {
            self.0.insert(key.into(), Value::from(value));
        }
        self
    }
    fn u64(mut self, key: &str, value: u64) -> Self {
        if value != 0 {
            self.0.insert(key.into(), Value::from(value.to_string()));
        }
        self
    }
    fn i64(mut self, key: &str, value: i64) -> Self {
        if value != 0 {
            self.0.insert(key.into(), Value::from(value.to_string()));
        }
        self
    }
    fn bool(mut self, key: &str, value: bool) -> Self {
        if value {
            self.0.insert(key.into(), Value::from(true));
        }
        self
    }
    /// An enum field: its name, or its number when unknown to us.
    fn enumeration(mut self, key: &str, raw: i32, name: Option<&'static str>) -> Self {
        if raw != 0 {
            let value = name.map_or_else(|| Value::from(raw), Value::from);
            self.0.insert(key.into(), value);
        }
        self
    }
    fn strings(mut self, key: &str, values: &[String]) -> Self {
        if !values.is_empty() {
            self.0.insert(key.into(), Value::from(values.to_vec()));
        }
        self
    }
    fn value(mut self, key: &str, value: Option<Value>) -> Self {
        if let Some(value) = value {
            self.0.insert(key.into(), value);
        }
        self
    }
    fn list(mut self, key: &str, values: Vec<Value>) -> Self {
        if !values.is_empty() {
            self.0.insert(key.into(), Value::Array(values));
        }
        self
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn endpoint(ep: &Endpoint) -> Value {
    Obj::default()
        .u32("ID", ep.id)
        .u32("identity", ep.identity)
        .string("cluster_name", &ep.cluster_name)
        .string("namespace", &ep.namespace)
        .strings("labels", &ep.labels)
        .string("pod_name", &ep.pod_name)
        .list(
            "workloads",
            ep.workloads
                .iter()
                .map(|w| {
                    Obj::default()
                        .string("name", &w.name)
                        .string("kind", &w.kind)
                        .done()
                })
                .collect(),
        )
        .done()
}

fn tcp_flags(f: &TcpFlags) -> Value {
    Obj::default()
        .bool("FIN", f.fin)
        .bool("SYN", f.syn)
        .bool("RST", f.rst)
        .bool("PSH", f.psh)
        .bool("ACK", f.ack)
        .bool("URG", f.urg)
        .bool("ECE", f.ece)
        .bool("CWR", f.cwr)
        .bool("NS", f.ns)
        .done()
}

fn ports(src: u32, dst: u32) -> Obj {
    Obj::default()
        .u32("source_port", src)
        .u32("destination_port", dst)
}

fn layer4(l4: &Layer4) -> Value {
    let obj = Obj::default();
    match &l4.protocol {
        Some(layer4::Protocol::Tcp(t)) => obj.value(
            "TCP",
            Some(
                ports(t.source_port, t.destination_port)
                    .value("flags", t.flags.as_ref().map(tcp_flags))
                    .done(),
            ),
        ),
        Some(layer4::Protocol::Udp(u)) => {
            obj.value("UDP", Some(ports(u.source_port, u.destination_port).done()))
        }
        Some(layer4::Protocol::Sctp(s)) => obj.value(
            "SCTP",
            Some(ports(s.source_port, s.destination_port).done()),
        ),
        Some(layer4::Protocol::IcmPv4(i)) => obj.value(
            "ICMPv4",
            Some(
                Obj::default()
                    .u32("type", i.r#type)
                    .u32("code", i.code)
                    .done(),
            ),
        ),
        Some(layer4::Protocol::IcmPv6(i)) => obj.value(
            "ICMPv6",
            Some(
                Obj::default()
                    .u32("type", i.r#type)
                    .u32("code", i.code)
                    .done(),
            ),
        ),
        None => obj,
    }
    .done()
}

fn layer7(l7: &Layer7) -> Value {
    let obj = Obj::default()
        .enumeration(
            "type",
            l7.r#type,
            L7FlowType::try_from(l7.r#type)
                .ok()
                .map(|t| t.as_str_name()),
        )
        .u64("latency_ns", l7.latency_ns);
    match &l7.record {
        Some(layer7::Record::Http(h)) => obj.value(
            "http",
            Some(
                Obj::default()
                    .u32("code", h.code)
                    .string("method", &h.method)
                    .string("url", &h.url)
                    .string("protocol", &h.protocol)
                    .list(
                        "headers",
                        h.headers
                            .iter()
                            .map(|hd| {
                                Obj::default()
                                    .string("key", &hd.key)
                                    .string("value", &hd.value)
                                    .done()
                            })
                            .collect(),
                    )
                    .done(),
            ),
        ),
        Some(layer7::Record::Dns(d)) => obj.value(
            "dns",
            Some(
                Obj::default()
                    .string("query", &d.query)
                    .strings("ips", &d.ips)
                    .u32("ttl", d.ttl)
                    .strings("cnames", &d.cnames)
                    .string("observation_source", &d.observation_source)
                    .u32("rcode", d.rcode)
                    .strings("qtypes", &d.qtypes)
                    .strings("rrtypes", &d.rrtypes)
                    .done(),
            ),
        ),
        Some(layer7::Record::Kafka(k)) => obj.value(
            "kafka",
            Some(
                Obj::default()
                    .i32("error_code", k.error_code)
                    .i32("api_version", k.api_version)
                    .string("api_key", &k.api_key)
                    .i32("correlation_id", k.correlation_id)
                    .string("topic", &k.topic)
                    .done(),
            ),
        ),
        None => obj,
    }
    .done()
}

fn event_type(e: &CiliumEventType) -> Value {
    Obj::default()
        .i32("type", e.r#type)
        .i32("sub_type", e.sub_type)
        .done()
}

fn policies(list: &[Policy]) -> Vec<Value> {
    list.iter()
        .map(|p| {
            Obj::default()
                .string("name", &p.name)
                .string("namespace", &p.namespace)
                .strings("labels", &p.labels)
                .u64("revision", p.revision)
                .string("kind", &p.kind)
                .done()
        })
        .collect()
}

fn service(s: &crate::proto::flow::Service) -> Value {
    Obj::default()
        .string("name", &s.name)
        .string("namespace", &s.namespace)
        .done()
}

/// A Flow in proto3 JSON with proto field names.
pub fn flow_to_json(f: &Flow) -> Value {
    Obj::default()
        .value("time", f.time.as_ref().map(|t| Value::from(timestamp(t))))
        .string("uuid", &f.uuid)
        .enumeration(
            "verdict",
            f.verdict,
            Verdict::try_from(f.verdict).ok().map(|v| v.as_str_name()),
        )
        .u32("drop_reason", f.drop_reason)
        .enumeration(
            "auth_type",
            f.auth_type,
            AuthType::try_from(f.auth_type)
                .ok()
                .map(|v| v.as_str_name()),
        )
        .value(
            "ethernet",
            f.ethernet.as_ref().map(|e| {
                Obj::default()
                    .string("source", &e.source)
                    .string("destination", &e.destination)
                    .done()
            }),
        )
        .value(
            "IP",
            f.ip.as_ref().map(|ip| {
                Obj::default()
                    .string("source", &ip.source)
                    .string("destination", &ip.destination)
                    .enumeration(
                        "ipVersion",
                        ip.ip_version,
                        IpVersion::try_from(ip.ip_version)
                            .ok()
                            .map(|v| v.as_str_name()),
                    )
                    .bool("encrypted", ip.encrypted)
                    .done()
            }),
        )
        .value("l4", f.l4.as_ref().map(layer4))
        .value("source", f.source.as_ref().map(endpoint))
        .value("destination", f.destination.as_ref().map(endpoint))
        .enumeration(
            "Type",
            f.r#type,
            FlowType::try_from(f.r#type).ok().map(|v| v.as_str_name()),
        )
        .string("node_name", &f.node_name)
        .strings("node_labels", &f.node_labels)
        .strings("source_names", &f.source_names)
        .strings("destination_names", &f.destination_names)
        .value("l7", f.l7.as_ref().map(layer7))
        .bool("reply", f.reply)
        .value("event_type", f.event_type.as_ref().map(event_type))
        .value("source_service", f.source_service.as_ref().map(service))
        .value(
            "destination_service",
            f.destination_service.as_ref().map(service),
        )
        .enumeration(
            "traffic_direction",
            f.traffic_direction,
            TrafficDirection::try_from(f.traffic_direction)
                .ok()
                .map(|v| v.as_str_name()),
        )
        .u32("policy_match_type", f.policy_match_type)
        .enumeration(
            "trace_observation_point",
            f.trace_observation_point,
            TraceObservationPoint::try_from(f.trace_observation_point)
                .ok()
                .map(|v| v.as_str_name()),
        )
        .enumeration(
            "trace_reason",
            f.trace_reason,
            TraceReason::try_from(f.trace_reason)
                .ok()
                .map(|v| v.as_str_name()),
        )
        .value(
            "file",
            f.file.as_ref().map(|fi| {
                Obj::default()
                    .string("name", &fi.name)
                    .u32("line", fi.line)
                    .done()
            }),
        )
        .enumeration(
            "drop_reason_desc",
            f.drop_reason_desc,
            DropReason::try_from(f.drop_reason_desc)
                .ok()
                .map(|v| v.as_str_name()),
        )
        .value("is_reply", f.is_reply.map(Value::from))
        .enumeration(
            "debug_capture_point",
            f.debug_capture_point,
            DebugCapturePoint::try_from(f.debug_capture_point)
                .ok()
                .map(|v| v.as_str_name()),
        )
        .value(
            "interface",
            f.interface.as_ref().map(|i| {
                Obj::default()
                    .u32("index", i.index)
                    .string("name", &i.name)
                    .done()
            }),
        )
        .u32("proxy_port", f.proxy_port)
        .value(
            "trace_context",
            f.trace_context.as_ref().map(|t| {
                Obj::default()
                    .value(
                        "parent",
                        t.parent
                            .as_ref()
                            .map(|p| Obj::default().string("trace_id", &p.trace_id).done()),
                    )
                    .done()
            }),
        )
        .enumeration(
            "sock_xlate_point",
            f.sock_xlate_point,
            SocketTranslationPoint::try_from(f.sock_xlate_point)
                .ok()
                .map(|v| v.as_str_name()),
        )
        .u64("socket_cookie", f.socket_cookie)
        .u64("cgroup_id", f.cgroup_id)
        .string("Summary", &f.summary)
        .list("egress_allowed_by", policies(&f.egress_allowed_by))
        .list("ingress_allowed_by", policies(&f.ingress_allowed_by))
        .list("egress_denied_by", policies(&f.egress_denied_by))
        .list("ingress_denied_by", policies(&f.ingress_denied_by))
        .done()
}

fn lost_to_json(l: &LostEvent) -> Value {
    Obj::default()
        .enumeration(
            "source",
            l.source,
            LostEventSource::try_from(l.source)
                .ok()
                .map(|v| v.as_str_name()),
        )
        .u64("num_events_lost", l.num_events_lost)
        .value("cpu", l.cpu.map(Value::from))
        .done()
}

/// A GetFlowsResponse in proto3 JSON with proto field names.
pub fn response_to_json(resp: &GetFlowsResponse) -> Value {
    let obj = match &resp.response_types {
        Some(get_flows_response::ResponseTypes::Flow(f)) => {
            Obj::default().value("flow", Some(flow_to_json(f)))
        }
        Some(get_flows_response::ResponseTypes::LostEvents(l)) => {
            Obj::default().value("lost_events", Some(lost_to_json(l)))
        }
        Some(get_flows_response::ResponseTypes::NodeStatus(s)) => Obj::default().value(
            "node_status",
            Some(
                Obj::default()
                    .enumeration(
                        "state_change",
                        s.state_change,
                        NodeState::try_from(s.state_change)
                            .ok()
                            .map(|v| v.as_str_name()),
                    )
                    .strings("node_names", &s.node_names)
                    .string("message", &s.message)
                    .done(),
            ),
        ),
        None => Obj::default(),
    };
    obj.string("node_name", &resp.node_name)
        .value(
            "time",
            resp.time.as_ref().map(|t| Value::from(timestamp(t))),
        )
        .done()
}

fn service_addr(a: &ServiceUpsertNotificationAddr) -> Value {
    Obj::default()
        .string("ip", &a.ip)
        .u32("port", a.port)
        .done()
}

/// An AgentEvent in proto3 JSON with proto field names.
pub fn agent_event_to_json(e: &AgentEvent) -> Value {
    use agent_event::Notification;
    let obj = Obj::default().enumeration(
        "type",
        e.r#type,
        AgentEventType::try_from(e.r#type)
            .ok()
            .map(|t| t.as_str_name()),
    );
    let (key, value) = match &e.notification {
        None => return obj.done(),
        Some(Notification::Unknown(u)) => (
            "unknown",
            Obj::default()
                .string("type", &u.r#type)
                .string("notification", &u.notification),
        ),
        Some(Notification::AgentStart(t)) => (
            "agent_start",
            Obj::default().value("time", t.time.as_ref().map(|t| Value::from(timestamp(t)))),
        ),
        Some(Notification::PolicyUpdate(p)) => (
            "policy_update",
            Obj::default()
                .strings("labels", &p.labels)
                .u64("revision", p.revision)
                .i64("rule_count", p.rule_count),
        ),
        Some(Notification::EndpointRegenerate(r)) => (
            "endpoint_regenerate",
            Obj::default()
                .u64("id", r.id)
                .strings("labels", &r.labels)
                .string("error", &r.error),
        ),
        Some(Notification::EndpointUpdate(u)) => (
            "endpoint_update",
            Obj::default()
                .u64("id", u.id)
                .strings("labels", &u.labels)
                .string("error", &u.error)
                .string("pod_name", &u.pod_name)
                .string("namespace", &u.namespace),
        ),
        Some(Notification::IpcacheUpdate(i)) => (
            "ipcache_update",
            Obj::default()
                .string("cidr", &i.cidr)
                .u32("identity", i.identity)
                .value("old_identity", i.old_identity.map(Value::from))
                .string("host_ip", &i.host_ip)
                .string("old_host_ip", &i.old_host_ip)
                .u32("encrypt_key", i.encrypt_key)
                .string("namespace", &i.namespace)
                .string("pod_name", &i.pod_name),
        ),
        Some(Notification::ServiceUpsert(u)) => (
            "service_upsert",
            Obj::default()
                .u32("id", u.id)
                .value(
                    "frontend_address",
                    u.frontend_address.as_ref().map(service_addr),
                )
                .list(
                    "backend_addresses",
                    u.backend_addresses.iter().map(service_addr).collect(),
                )
                .string("type", &u.r#type)
                .string("traffic_policy", &u.traffic_policy)
                .string("name", &u.name)
                .string("namespace", &u.namespace)
                .string("ext_traffic_policy", &u.ext_traffic_policy)
                .string("int_traffic_policy", &u.int_traffic_policy),
        ),
        Some(Notification::ServiceDelete(d)) => ("service_delete", Obj::default().u32("id", d.id)),
    };
    obj.value(key, Some(value.done())).done()
}

/// A GetAgentEventsResponse in proto3 JSON with proto field names, as
/// `hubble observe agent-events -o jsonpb` prints it.
pub fn agent_event_response_to_json(resp: &GetAgentEventsResponse) -> Value {
    Obj::default()
        .value(
            "agent_event",
            resp.agent_event.as_ref().map(agent_event_to_json),
        )
        .string("node_name", &resp.node_name)
        .value(
            "time",
            resp.time.as_ref().map(|t| Value::from(timestamp(t))),
        )
        .done()
}
