//! `FlowFilter.experimental.cel_expression`: CEL expressions over a flow, as
//! Hubble evaluates them. The flow is the variable `_flow` with the proto
//! field names (`_flow.source.pod_name`, `_flow.l4.TCP.destination_port`,
//! `_flow.IP.source`); enums are their numbers, unset messages read as their
//! defaults, as in proto. The flow's `time` is not exposed (the CEL library
//! is built without its time types). Because every field reads as present,
//! `has()` on a field of `_flow` is refused rather than answered true.

use std::collections::HashMap;

use cel::common::ast::{EntryExpr, Expr};
use cel::{Context, ExecutionError, IdedExpr, Program, Value};

use crate::proto::flow::{
    Endpoint, Flow, Layer4, Layer7, Policy, Service, TcpFlags, layer4, layer7,
};

/// Hubble's limit on the length of one expression.
const MAX_EXPRESSION_LEN: usize = 4096;

/// Why an expression is refused.
#[derive(Debug, thiserror::Error)]
pub enum CelError {
    /// Longer than Hubble accepts.
    #[error("CEL expression of {0} characters: at most 4096 are accepted")]
    TooLong(usize),
    /// Does not parse.
    #[error("CEL expression {expression:?} does not parse: {reason}")]
    Parse {
        /// The expression.
        expression: String,
        /// The parser's message.
        reason: String,
    },
    /// Tests a field of `_flow` with `has()`: every field reads as present
    /// here (unset messages as their defaults), so `has()` would be true
    /// where Hubble's is false.
    #[error(
        "CEL expression {expression:?} uses has() on {field}, which this server cannot answer as \
         Hubble does (an unset message or default value counts as present here); compare the \
         field with its default instead, e.g. _flow.l7.http.method != ''"
    )]
    Presence {
        /// The expression.
        expression: String,
        /// The tested field, as written (`_flow.l7.http`).
        field: String,
    },
    /// Names a field a flow does not have, or does not give a boolean.
    #[error("CEL expression {expression:?} is not a boolean expression over _flow: {reason}")]
    NotBoolean {
        /// The expression.
        expression: String,
        /// What evaluating it on an empty flow gave.
        reason: String,
    },
}

/// Compiled expressions of one filter; a flow matches when any is true.
pub struct CelFilter(Vec<Program>);

impl std::fmt::Debug for CelFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CelFilter({} expressions)", self.0.len())
    }
}

impl CelFilter {
    /// Compiles the expressions. Like Hubble's type check, each is tried on
    /// an empty flow: a field the flow does not have, or a result that is not
    /// a boolean, refuses the expression.
    pub fn new(expressions: &[String]) -> Result<Self, CelError> {
        let empty = flow_value(&Flow::default());
        let programs = expressions
            .iter()
            .map(|expression| {
                if expression.len() > MAX_EXPRESSION_LEN {
                    return Err(CelError::TooLong(expression.len()));
                }
                let program = Program::compile(expression).map_err(|e| CelError::Parse {
                    expression: expression.clone(),
                    reason: e.to_string(),
                })?;
                if let Some(field) = flow_presence_test(program.expression()) {
                    return Err(CelError::Presence {
                        expression: expression.clone(),
                        field,
                    });
                }
                let not_boolean = |reason: String| CelError::NotBoolean {
                    expression: expression.clone(),
                    reason,
                };
                match evaluate(&program, empty.clone()) {
                    Ok(Value::Bool(_)) => Ok(program),
                    Ok(other) => Err(not_boolean(format!("it gives {other:?}"))),
                    Err(
                        e @ (ExecutionError::NoSuchKey(_) | ExecutionError::UndeclaredReference(_)),
                    ) => Err(not_boolean(e.to_string())),
                    // Other errors can depend on the flow (a division by a
                    // zero field): the expression is kept, such flows fail it.
                    Err(_) => Ok(program),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self(programs))
    }

    /// Whether any expression is true for the flow; an error counts as false,
    /// as in Hubble.
    pub fn matches(&self, flow: &Flow) -> bool {
        let value = flow_value(flow);
        self.0
            .iter()
            .any(|p| matches!(evaluate(p, value.clone()), Ok(Value::Bool(true))))
    }
}

/// The first `has(_flow....)` in the expression, as a path.
fn flow_presence_test(expr: &IdedExpr) -> Option<String> {
    let children: Vec<&IdedExpr> = match &expr.expr {
        Expr::Select(select) => {
            if select.test
                && let Some(path) = flow_path(&select.operand)
            {
                return Some(format!("{path}.{}", select.field));
            }
            vec![&select.operand]
        }
        Expr::Call(call) => call
            .target
            .iter()
            .map(AsRef::as_ref)
            .chain(&call.args)
            .collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => map
            .entries
            .iter()
            .flat_map(|e| match &e.expr {
                EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        Expr::Struct(st) => st
            .entries
            .iter()
            .flat_map(|e| match &e.expr {
                EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => Vec::new(),
    };
    children.into_iter().find_map(flow_presence_test)
}

/// `_flow` or a field path below it (`_flow.l7.http`).
fn flow_path(expr: &IdedExpr) -> Option<String> {
    match &expr.expr {
        Expr::Ident(name) if name == "_flow" => Some(name.clone()),
        Expr::Select(select) if !select.test => {
            flow_path(&select.operand).map(|p| format!("{p}.{}", select.field))
        }
        _ => None,
    }
}

fn evaluate(program: &Program, flow: Value) -> Result<Value, ExecutionError> {
    let mut context = Context::default();
    context.add_variable_from_value("_flow", flow);
    program.execute(&context)
}

/// A CEL map from field names to values.
fn map<const N: usize>(fields: [(&str, Value); N]) -> Value {
    let fields: HashMap<String, Value> = fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    fields.into()
}

fn strings(values: &[String]) -> Value {
    values.to_vec().into()
}

/// The policies that allowed or denied a flow (`ingress_allowed_by`, ...).
fn policies(list: &[Policy]) -> Value {
    let list: Vec<Value> = list
        .iter()
        .map(|p| {
            map([
                ("name", p.name.clone().into()),
                ("namespace", p.namespace.clone().into()),
                ("labels", strings(&p.labels)),
                ("revision", Value::UInt(p.revision)),
                ("kind", p.kind.clone().into()),
            ])
        })
        .collect();
    list.into()
}

fn endpoint(ep: Option<&Endpoint>) -> Value {
    let ep = ep.cloned().unwrap_or_default();
    let workloads: Vec<Value> = ep
        .workloads
        .iter()
        .map(|w| {
            map([
                ("name", w.name.clone().into()),
                ("kind", w.kind.clone().into()),
            ])
        })
        .collect();
    map([
        ("ID", Value::UInt(ep.id.into())),
        ("identity", Value::UInt(ep.identity.into())),
        ("cluster_name", ep.cluster_name.into()),
        ("namespace", ep.namespace.into()),
        ("labels", strings(&ep.labels)),
        ("pod_name", ep.pod_name.into()),
        ("workloads", workloads.into()),
    ])
}

fn service(svc: Option<&Service>) -> Value {
    let svc = svc.cloned().unwrap_or_default();
    map([
        ("name", svc.name.into()),
        ("namespace", svc.namespace.into()),
    ])
}

fn tcp_flags(f: Option<&TcpFlags>) -> Value {
    let f = f.copied().unwrap_or_default();
    map([
        ("FIN", f.fin.into()),
        ("SYN", f.syn.into()),
        ("RST", f.rst.into()),
        ("PSH", f.psh.into()),
        ("ACK", f.ack.into()),
        ("URG", f.urg.into()),
        ("ECE", f.ece.into()),
        ("CWR", f.cwr.into()),
        ("NS", f.ns.into()),
    ])
}

fn ports(source: u32, destination: u32) -> [(&'static str, Value); 2] {
    [
        ("source_port", Value::UInt(source.into())),
        ("destination_port", Value::UInt(destination.into())),
    ]
}

fn layer4(l4: Option<&Layer4>) -> Value {
    let protocol = l4.and_then(|l| l.protocol.as_ref());
    let (mut tcp, mut udp, mut sctp) = ((0, 0, None), (0, 0), (0, 0, 0));
    let (mut icmp4, mut icmp6) = ((0, 0), (0, 0));
    match protocol {
        Some(layer4::Protocol::Tcp(t)) => tcp = (t.source_port, t.destination_port, t.flags),
        Some(layer4::Protocol::Udp(u)) => udp = (u.source_port, u.destination_port),
        Some(layer4::Protocol::Sctp(s)) => sctp = (s.source_port, s.destination_port, s.chunk_type),
        Some(layer4::Protocol::IcmPv4(i)) => icmp4 = (i.r#type, i.code),
        Some(layer4::Protocol::IcmPv6(i)) => icmp6 = (i.r#type, i.code),
        None => {}
    }
    let icmp = |(t, c): (u32, u32)| {
        map([
            ("type", Value::UInt(t.into())),
            ("code", Value::UInt(c.into())),
        ])
    };
    let [tsp, tdp] = ports(tcp.0, tcp.1);
    let [usp, udp_] = ports(udp.0, udp.1);
    let [ssp, sdp] = ports(sctp.0, sctp.1);
    map([
        ("TCP", map([tsp, tdp, ("flags", tcp_flags(tcp.2.as_ref()))])),
        ("UDP", map([usp, udp_])),
        (
            "SCTP",
            map([ssp, sdp, ("chunk_type", Value::Int(sctp.2.into()))]),
        ),
        ("ICMPv4", icmp(icmp4)),
        ("ICMPv6", icmp(icmp6)),
    ])
}

fn layer7(l7: Option<&Layer7>) -> Value {
    let l7 = l7.cloned().unwrap_or_default();
    let (mut dns, mut http, mut kafka) = (None, None, None);
    match l7.record {
        Some(layer7::Record::Dns(d)) => dns = Some(d),
        Some(layer7::Record::Http(h)) => http = Some(h),
        Some(layer7::Record::Kafka(k)) => kafka = Some(k),
        None => {}
    }
    let dns = dns.unwrap_or_default();
    let http = http.unwrap_or_default();
    let kafka = kafka.unwrap_or_default();
    let headers: Vec<Value> = http
        .headers
        .iter()
        .map(|h| {
            map([
                ("key", h.key.clone().into()),
                ("value", h.value.clone().into()),
            ])
        })
        .collect();
    map([
        ("type", Value::Int(l7.r#type.into())),
        ("latency_ns", Value::UInt(l7.latency_ns)),
        (
            "dns",
            map([
                ("query", dns.query.into()),
                ("ips", strings(&dns.ips)),
                ("ttl", Value::UInt(dns.ttl.into())),
                ("cnames", strings(&dns.cnames)),
                ("observation_source", dns.observation_source.into()),
                ("rcode", Value::UInt(dns.rcode.into())),
                ("qtypes", strings(&dns.qtypes)),
                ("rrtypes", strings(&dns.rrtypes)),
            ]),
        ),
        (
            "http",
            map([
                ("code", Value::UInt(http.code.into())),
                ("method", http.method.into()),
                ("url", http.url.into()),
                ("protocol", http.protocol.into()),
                ("headers", headers.into()),
            ]),
        ),
        (
            "kafka",
            map([
                ("error_code", Value::Int(kafka.error_code.into())),
                ("api_version", Value::Int(kafka.api_version.into())),
                ("api_key", kafka.api_key.into()),
                ("correlation_id", Value::Int(kafka.correlation_id.into())),
                ("topic", kafka.topic.into()),
            ]),
        ),
    ])
}

/// The flow as CEL sees it (`_flow`).
fn flow_value(flow: &Flow) -> Value {
    let ip = flow.ip.clone().unwrap_or_default();
    let ethernet = flow.ethernet.clone().unwrap_or_default();
    let event_type = flow.event_type.unwrap_or_default();
    let interface = flow.interface.clone().unwrap_or_default();
    let trace_id = flow
        .trace_context
        .as_ref()
        .and_then(|t| t.parent.as_ref())
        .map(|p| p.trace_id.clone())
        .unwrap_or_default();
    map([
        ("uuid", flow.uuid.clone().into()),
        ("verdict", Value::Int(flow.verdict.into())),
        ("drop_reason", Value::UInt(flow.drop_reason.into())),
        ("auth_type", Value::Int(flow.auth_type.into())),
        (
            "ethernet",
            map([
                ("source", ethernet.source.into()),
                ("destination", ethernet.destination.into()),
            ]),
        ),
        (
            "IP",
            map([
                ("source", ip.source.into()),
                ("source_xlated", ip.source_xlated.into()),
                ("destination", ip.destination.into()),
                ("ipVersion", Value::Int(ip.ip_version.into())),
                ("encrypted", ip.encrypted.into()),
            ]),
        ),
        ("l4", layer4(flow.l4.as_ref())),
        ("source", endpoint(flow.source.as_ref())),
        ("destination", endpoint(flow.destination.as_ref())),
        ("Type", Value::Int(flow.r#type.into())),
        ("node_name", flow.node_name.clone().into()),
        ("node_labels", strings(&flow.node_labels)),
        ("source_names", strings(&flow.source_names)),
        ("destination_names", strings(&flow.destination_names)),
        ("l7", layer7(flow.l7.as_ref())),
        ("reply", flow.reply.into()),
        ("is_reply", flow.is_reply.into()),
        (
            "event_type",
            map([
                ("type", Value::Int(event_type.r#type.into())),
                ("sub_type", Value::Int(event_type.sub_type.into())),
            ]),
        ),
        ("source_service", service(flow.source_service.as_ref())),
        (
            "destination_service",
            service(flow.destination_service.as_ref()),
        ),
        (
            "traffic_direction",
            Value::Int(flow.traffic_direction.into()),
        ),
        (
            "policy_match_type",
            Value::UInt(flow.policy_match_type.into()),
        ),
        (
            "trace_observation_point",
            Value::Int(flow.trace_observation_point.into()),
        ),
        ("trace_reason", Value::Int(flow.trace_reason.into())),
        ("drop_reason_desc", Value::Int(flow.drop_reason_desc.into())),
        (
            "interface",
            map([
                ("index", Value::UInt(interface.index.into())),
                ("name", interface.name.into()),
            ]),
        ),
        ("proxy_port", Value::UInt(flow.proxy_port.into())),
        (
            "trace_context",
            map([("parent", map([("trace_id", trace_id.into())]))]),
        ),
        ("sock_xlate_point", Value::Int(flow.sock_xlate_point.into())),
        ("socket_cookie", Value::UInt(flow.socket_cookie)),
        ("cgroup_id", Value::UInt(flow.cgroup_id)),
        ("Summary", flow.summary.clone().into()),
        ("egress_allowed_by", policies(&flow.egress_allowed_by)),
        ("ingress_allowed_by", policies(&flow.ingress_allowed_by)),
        ("egress_denied_by", policies(&flow.egress_denied_by)),
        ("ingress_denied_by", policies(&flow.ingress_denied_by)),
    ])
}
