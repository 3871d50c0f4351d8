//! Flow filters with Hubble's semantics: the fields of one `FlowFilter` are
//! ANDed, the values within one field are ORed, filters in a list are ORed,
//! and a flow passes when it matches the whitelist (or it is empty) and does
//! not match the blacklist.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;

use crate::cel_filter::{CelError, CelFilter};
use crate::flows;
use crate::proto::flow::{
    Endpoint, EventTypeFilter, Flow, FlowFilter, Http, HttpHeader, IpVersion, L7FlowType,
    NetworkInterface, TcpFlags, Verdict, Workload, layer4, layer7,
};

/// A filter field holds a value Hubble would reject.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// An address or CIDR that does not parse.
    #[error(
        "invalid IP or CIDR {value:?} in {field}: expected an address like 10.0.0.1 or a prefix like 10.0.0.0/24"
    )]
    Ip {
        /// The filter field.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A port that is not a number from 0 to 65535.
    #[error("invalid port {value:?} in {field}: expected a number from 0 to 65535")]
    Port {
        /// The filter field.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A regular expression that does not compile.
    #[error("invalid regular expression {value:?} in {field}: {reason}")]
    Regex {
        /// The filter field.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// Why it does not compile.
        reason: String,
    },
    /// An HTTP status code filter other than "NNN", "NN+", "N+".
    #[error(
        "invalid HTTP status code filter {0:?}: expected a code like 404 or a prefix like 4+ or 40+"
    )]
    HttpStatus(String),
    /// A label selector that does not parse.
    #[error("invalid label selector {value:?}: {reason}")]
    Label {
        /// The rejected selector.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A pod, service or node name filter that is empty.
    #[error("empty value in {0}: give a name, a prefix or `namespace/`")]
    Empty(&'static str),
    /// A filter field this agent cannot fill, so that matching on it would
    /// be a guess.
    #[error(
        "filter {field} is not supported: {reason}; remove the flag that sets it (hubble {flag})"
    )]
    Unsupported {
        /// The FlowFilter field.
        field: &'static str,
        /// The hubble flag that sets it.
        flag: &'static str,
        /// Why the agent cannot honour it.
        reason: &'static str,
    },
    /// A CEL expression that cannot be used.
    #[error(transparent)]
    Cel(#[from] CelError),
    /// A node name or FQDN pattern Hubble would reject.
    #[error("invalid pattern {value:?} in {field}: {reason}")]
    Pattern {
        /// The filter field.
        field: &'static str,
        /// The rejected pattern.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A protocol name Hubble does not know.
    #[error(
        "unknown protocol {0:?}: expected tcp, udp, sctp, icmp, icmpv4, icmpv6, http, dns or kafka"
    )]
    Protocol(String),
}

/// Whitelist and blacklist, compiled once per request.
#[derive(Debug, Default)]
pub struct FilterSet {
    whitelist: Vec<CompiledFilter>,
    blacklist: Vec<CompiledFilter>,
}

impl FilterSet {
    /// Compiles the lists of a GetFlows request.
    pub fn new(whitelist: &[FlowFilter], blacklist: &[FlowFilter]) -> Result<Self, FilterError> {
        Ok(Self {
            whitelist: whitelist
                .iter()
                .map(CompiledFilter::new)
                .collect::<Result<_, _>>()?,
            blacklist: blacklist
                .iter()
                .map(CompiledFilter::new)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether the flow passes: in the whitelist (if any) and not in the blacklist.
    pub fn matches(&self, flow: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|f| f.matches(flow)))
            && !self.blacklist.iter().any(|f| f.matches(flow))
    }
}

/// `ns/prefix` as Hubble parses pod and service filters; an empty namespace
/// (`/`, `/prefix`, what `--all-namespaces` sends) means any namespace.
#[derive(Debug)]
struct NamePattern {
    namespace: String,
    prefix: String,
}

impl NamePattern {
    fn parse(value: &str, field: &'static str) -> Result<Self, FilterError> {
        if value.is_empty() {
            return Err(FilterError::Empty(field));
        }
        // Without a namespace Hubble means the "default" namespace.
        Ok(match value.split_once('/') {
            Some((ns, prefix)) => Self {
                namespace: ns.to_string(),
                prefix: prefix.to_string(),
            },
            None => Self {
                namespace: "default".to_string(),
                prefix: value.to_string(),
            },
        })
    }

    fn matches(&self, namespace: &str, name: &str) -> bool {
        if namespace.is_empty() && name.is_empty() {
            return false;
        }
        (self.namespace.is_empty() || namespace == self.namespace) && name.starts_with(&self.prefix)
    }
}

/// One requirement of a Kubernetes label selector.
#[derive(Debug)]
enum Requirement {
    In(LabelKey, Vec<String>),
    NotIn(LabelKey, Vec<String>),
    Exists(LabelKey),
    NotExists(LabelKey),
}

/// A selector key, optionally restricted to a label source ("k8s:app").
#[derive(Debug)]
struct LabelKey {
    source: Option<String>,
    key: String,
}

/// Label sources Cilium prefixes to label keys.
const LABEL_SOURCES: [&str; 8] = [
    "k8s",
    "reserved",
    "container",
    "cidr",
    "fqdn",
    "unspec",
    "any",
    "cilium-generated",
];

impl LabelKey {
    fn parse(raw: &str) -> Self {
        if let Some((source, key)) = raw.split_once(':')
            && LABEL_SOURCES.contains(&source)
        {
            let source = (source != "any").then(|| source.to_string());
            return Self {
                source,
                key: key.to_string(),
            };
        }
        Self {
            source: None,
            key: raw.to_string(),
        }
    }

    /// Values of the matching labels of an endpoint.
    fn values<'a>(&'a self, labels: &'a [Label]) -> impl Iterator<Item = &'a str> + 'a {
        labels.iter().filter_map(move |l| {
            let source_ok = self.source.as_deref().is_none_or(|s| s == l.source);
            (source_ok && l.key == self.key).then_some(l.value.as_str())
        })
    }
}

/// A flow label split into source, key and value.
struct Label {
    source: String,
    key: String,
    value: String,
}

fn split_label(raw: &str) -> Label {
    let (source, rest) = match raw.split_once(':') {
        Some((source, rest)) if LABEL_SOURCES.contains(&source) => (source, rest),
        _ => ("unspec", raw),
    };
    let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
    Label {
        source: source.to_string(),
        key: key.to_string(),
        value: value.to_string(),
    }
}

/// A parsed Kubernetes label selector: every requirement must hold.
#[derive(Debug)]
struct Selector(Vec<Requirement>);

fn label_error(value: &str, reason: &str) -> FilterError {
    FilterError::Label {
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Splits a selector at commas that are not inside parentheses.
fn split_requirements(selector: &str) -> Result<Vec<&str>, FilterError> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(label_error(selector, "unbalanced parenthesis"));
        }
    }
    if depth != 0 {
        return Err(label_error(selector, "unbalanced parenthesis"));
    }
    parts.push(&selector[start..]);
    Ok(parts)
}

fn parse_set(selector: &str, rest: &str) -> Result<Vec<String>, FilterError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| label_error(selector, "expected a value list in parentheses"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}

impl Selector {
    fn parse(selector: &str) -> Result<Self, FilterError> {
        let mut requirements = Vec::new();
        for part in split_requirements(selector)? {
            let part = part.trim();
            if part.is_empty() {
                return Err(label_error(selector, "empty requirement"));
            }
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(LabelKey::parse(key.trim()))
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotIn(LabelKey::parse(key.trim()), vec![value.trim().to_string()])
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                Requirement::In(LabelKey::parse(key.trim()), vec![value.trim().to_string()])
            } else if let Some((key, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(LabelKey::parse(key.trim()), parse_set(selector, rest)?)
            } else if let Some((key, rest)) = part.split_once(" in ") {
                Requirement::In(LabelKey::parse(key.trim()), parse_set(selector, rest)?)
            } else if part.contains(char::is_whitespace) {
                return Err(label_error(
                    selector,
                    "expected key, key=value, key!=value, key in (..) or key notin (..)",
                ));
            } else {
                Requirement::Exists(LabelKey::parse(part))
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    fn matches(&self, raw_labels: &[String]) -> bool {
        let labels: Vec<Label> = raw_labels.iter().map(|l| split_label(l)).collect();
        self.0.iter().all(|req| match req {
            Requirement::In(key, values) => {
                key.values(&labels).any(|v| values.iter().any(|w| w == v))
            }
            Requirement::NotIn(key, values) => {
                !key.values(&labels).any(|v| values.iter().any(|w| w == v))
            }
            Requirement::Exists(key) => key.values(&labels).next().is_some(),
            Requirement::NotExists(key) => key.values(&labels).next().is_none(),
        })
    }
}

/// An HTTP status filter: exact code or code prefix ("4+", "40+").
#[derive(Debug)]
struct StatusPattern {
    digits: String,
    prefix: bool,
}

impl StatusPattern {
    fn parse(value: &str) -> Result<Self, FilterError> {
        let (digits, prefix) = match value.strip_suffix('+') {
            Some(d) => (d, true),
            None => (value, false),
        };
        let valid_len = if prefix {
            (1..=2).contains(&digits.len())
        } else {
            digits.len() == 3
        };
        if !valid_len || !digits.chars().all(|c| c.is_ascii_digit()) || digits.starts_with('0') {
            return Err(FilterError::HttpStatus(value.to_string()));
        }
        Ok(Self {
            digits: digits.to_string(),
            prefix,
        })
    }

    fn matches(&self, code: u32) -> bool {
        let text = code.to_string();
        if self.prefix {
            text.len() == 3 && text.starts_with(&self.digits)
        } else {
            text == self.digits
        }
    }
}

/// Protocols a filter can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv4,
    Icmpv6,
    Http,
    Dns,
    Kafka,
}

impl Protocol {
    fn parse(value: &str) -> Result<Self, FilterError> {
        Ok(match value.to_ascii_lowercase().as_str() {
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "sctp" => Self::Sctp,
            "icmp" => Self::Icmp,
            "icmpv4" => Self::Icmpv4,
            "icmpv6" => Self::Icmpv6,
            "http" => Self::Http,
            "dns" => Self::Dns,
            "kafka" => Self::Kafka,
            _ => return Err(FilterError::Protocol(value.to_string())),
        })
    }

    fn matches(self, flow: &Flow) -> bool {
        let l4 = flow.l4.as_ref().and_then(|l| l.protocol.as_ref());
        let l7 = flow.l7.as_ref().and_then(|l| l.record.as_ref());
        match self {
            Self::Tcp => matches!(l4, Some(layer4::Protocol::Tcp(_))),
            Self::Udp => matches!(l4, Some(layer4::Protocol::Udp(_))),
            Self::Sctp => matches!(l4, Some(layer4::Protocol::Sctp(_))),
            Self::Icmp => matches!(
                l4,
                Some(layer4::Protocol::IcmPv4(_) | layer4::Protocol::IcmPv6(_))
            ),
            Self::Icmpv4 => matches!(l4, Some(layer4::Protocol::IcmPv4(_))),
            Self::Icmpv6 => matches!(l4, Some(layer4::Protocol::IcmPv6(_))),
            Self::Http => matches!(l7, Some(layer7::Record::Http(_))),
            Self::Dns => matches!(l7, Some(layer7::Record::Dns(_))),
            Self::Kafka => matches!(l7, Some(layer7::Record::Kafka(_))),
        }
    }
}

/// A glob with `*` wildcards, used for cluster names.
#[derive(Debug)]
struct Glob(Regex);

impl Glob {
    fn parse(value: &str, field: &'static str) -> Result<Self, FilterError> {
        if value.is_empty() {
            return Err(FilterError::Empty(field));
        }
        let pattern = value
            .split('*')
            .map(regex::escape)
            .collect::<Vec<_>>()
            .join("[^/]*");
        let pattern = format!("^{pattern}$");
        Regex::new(&pattern)
            .map(Self)
            .map_err(|e| FilterError::Regex {
                field,
                value: value.to_string(),
                reason: e.to_string(),
            })
    }
}

/// Hubble's node name pattern: `[cluster/]node`, each part an FQDN pattern
/// (`*` spans letters, digits, `-` and `.`; an empty part matches any name),
/// matched against `cluster/node`, where a flow's node name without a
/// cluster is in the cluster `default`.
#[derive(Debug)]
struct NodePattern(Regex);

/// Any FQDN, as Hubble's pattern for an empty part.
const ANY_FQDN: &str = r"(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)";

/// Appends Hubble's FQDN pattern `part` (of the filter value `value`) as a
/// regular expression: trimmed, one trailing dot dropped, lower case; `*`
/// spans letters, digits, `-` and `.`. An empty part matches any FQDN.
fn push_fqdn_pattern(
    out: &mut String,
    field: &'static str,
    value: &str,
    part: &str,
) -> Result<(), FilterError> {
    let part = part.trim();
    let part = part.strip_suffix('.').unwrap_or(part).to_ascii_lowercase();
    if part.is_empty() {
        out.push_str(ANY_FQDN);
        return Ok(());
    }
    if part.ends_with('.') {
        return Err(FilterError::Pattern {
            field,
            value: value.to_string(),
            reason: "more than one trailing dot",
        });
    }
    for c in part.chars() {
        match c {
            '.' => out.push_str(r"\."),
            '*' => out.push_str("[-.0-9a-z]*"),
            '-' | '_' | '0'..='9' | 'a'..='z' => out.push(c),
            _ => {
                return Err(FilterError::Pattern {
                    field,
                    value: value.to_string(),
                    reason: if field == "node_name" {
                        "only letters, digits, '-', '_', '.', '*' and one '/' are allowed"
                    } else {
                        "only letters, digits, '-', '_', '.' and '*' are allowed"
                    },
                });
            }
        }
    }
    Ok(())
}

/// Hubble's FQDN filter (`--fqdn "*.cilium.io"`): one FQDN pattern over the
/// whole name; an empty pattern is refused.
fn fqdn_pattern(value: &str, field: &'static str) -> Result<Regex, FilterError> {
    let canonical = value.trim();
    if canonical.strip_suffix('.').unwrap_or(canonical).is_empty() {
        return Err(FilterError::Empty(field));
    }
    let mut pattern = String::from(r"\A");
    push_fqdn_pattern(&mut pattern, field, value, value)?;
    pattern.push_str(r"\z");
    Regex::new(&pattern).map_err(|e| FilterError::Regex {
        field,
        value: value.to_string(),
        reason: e.to_string(),
    })
}

impl NodePattern {
    fn parse(value: &str) -> Result<Self, FilterError> {
        if value.is_empty() {
            return Err(FilterError::Empty("node_name"));
        }
        let (cluster, node) = match value.split('/').collect::<Vec<_>>()[..] {
            [node] => ("", node),
            [cluster, node] => (cluster, node),
            _ => {
                return Err(FilterError::Pattern {
                    field: "node_name",
                    value: value.to_string(),
                    reason: "more than one '/'",
                });
            }
        };
        let mut pattern = String::from(r"\A");
        push_fqdn_pattern(&mut pattern, "node_name", value, cluster)?;
        pattern.push('/');
        push_fqdn_pattern(&mut pattern, "node_name", value, node)?;
        pattern.push_str(r"\z");
        Regex::new(&pattern)
            .map(Self)
            .map_err(|e| FilterError::Regex {
                field: "node_name",
                value: value.to_string(),
                reason: e.to_string(),
            })
    }

    fn matches(&self, node_name: &str) -> bool {
        if node_name.is_empty() {
            return false;
        }
        if node_name.contains('/') {
            self.0.is_match(node_name)
        } else {
            self.0.is_match(&format!("{DEFAULT_CLUSTER}/{node_name}"))
        }
    }
}

/// Cilium's default cluster name, which Hubble puts in front of node names
/// that carry none.
const DEFAULT_CLUSTER: &str = "default";

fn compile_regexes(values: &[String], field: &'static str) -> Result<Vec<Regex>, FilterError> {
    values
        .iter()
        .map(|v| {
            Regex::new(v).map_err(|e| FilterError::Regex {
                field,
                value: v.clone(),
                reason: e.to_string(),
            })
        })
        .collect()
}

fn parse_nets(values: &[String], field: &'static str) -> Result<Vec<IpNet>, FilterError> {
    values
        .iter()
        .map(|v| {
            v.parse::<IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| FilterError::Ip {
                    field,
                    value: v.clone(),
                })
        })
        .collect()
}

fn parse_ports(values: &[String], field: &'static str) -> Result<Vec<u32>, FilterError> {
    values
        .iter()
        .map(|v| {
            v.parse::<u16>()
                .map(u32::from)
                .map_err(|_| FilterError::Port {
                    field,
                    value: v.clone(),
                })
        })
        .collect()
}

fn parse_names(values: &[String], field: &'static str) -> Result<Vec<NamePattern>, FilterError> {
    values
        .iter()
        .map(|v| NamePattern::parse(v, field))
        .collect()
}

fn parse_selectors(values: &[String]) -> Result<Vec<Selector>, FilterError> {
    values.iter().map(|v| Selector::parse(v)).collect()
}

/// One FlowFilter, ready to test flows against.
#[derive(Debug)]
struct CompiledFilter {
    raw: FlowFilter,
    source_ip: Vec<IpNet>,
    destination_ip: Vec<IpNet>,
    source_pod: Vec<NamePattern>,
    destination_pod: Vec<NamePattern>,
    source_service: Vec<NamePattern>,
    destination_service: Vec<NamePattern>,
    source_label: Vec<Selector>,
    destination_label: Vec<Selector>,
    source_fqdn: Vec<Regex>,
    destination_fqdn: Vec<Regex>,
    source_port: Vec<u32>,
    destination_port: Vec<u32>,
    protocol: Vec<Protocol>,
    http_status: Vec<StatusPattern>,
    http_path: Vec<Regex>,
    http_url: Vec<Regex>,
    dns_query: Vec<Regex>,
    node_name: Vec<NodePattern>,
    node_labels: Vec<Selector>,
    source_cluster: Vec<Glob>,
    destination_cluster: Vec<Glob>,
    cel: Option<CelFilter>,
}

/// FlowFilter fields this agent has no data for: refused, never ignored.
fn refuse_unsupported(raw: &FlowFilter) -> Result<(), FilterError> {
    if !raw.source_ip_xlated.is_empty() {
        return Err(FilterError::Unsupported {
            field: "source_ip_xlated",
            flag: "--snat-ip",
            reason: "the datapath does not report addresses after SNAT",
        });
    }
    if !raw.ip_trace_id.is_empty() {
        return Err(FilterError::Unsupported {
            field: "ip_trace_id",
            flag: "--ip-trace-id",
            reason: "the datapath does not read IP option trace ids",
        });
    }
    Ok(())
}

/// Cluster names as Hubble's `--cluster` help shows them (`prod-*`): a name
/// without `*` matches exactly, as Cilium's server matches every name; `*`
/// spans any characters but `/` (a cluster name has no `*` of its own, so a pattern
/// Cilium would take literally matches nothing there).
fn cluster_patterns(values: &[String], field: &'static str) -> Result<Vec<Glob>, FilterError> {
    values.iter().map(|v| Glob::parse(v, field)).collect()
}

/// An endpoint without a cluster (world, host, CIDR) matches no pattern, `*`
/// included.
fn cluster_matches(patterns: &[Glob], cluster: &str) -> bool {
    patterns.is_empty() || (!cluster.is_empty() && patterns.iter().any(|g| g.0.is_match(cluster)))
}

/// As Hubble: a zero index or an empty name in a filter matches any.
fn interface_matches(filters: &[NetworkInterface], flow: &Flow) -> bool {
    filters.is_empty()
        || flow.interface.as_ref().is_some_and(|have| {
            filters.iter().any(|f| {
                (f.index == 0 || f.index == have.index)
                    && (f.name.is_empty() || f.name == have.name)
            })
        })
}

fn ip_matches(nets: &[IpNet], addr: Option<&str>) -> bool {
    nets.is_empty()
        || addr
            .and_then(|a| a.parse::<IpAddr>().ok())
            .is_some_and(|a| nets.iter().any(|n| n.contains(&a)))
}

fn ports(flow: &Flow) -> Option<(u32, u32)> {
    match flow.l4.as_ref()?.protocol.as_ref()? {
        layer4::Protocol::Tcp(t) => Some((t.source_port, t.destination_port)),
        layer4::Protocol::Udp(u) => Some((u.source_port, u.destination_port)),
        layer4::Protocol::Sctp(s) => Some((s.source_port, s.destination_port)),
        layer4::Protocol::IcmPv4(_) | layer4::Protocol::IcmPv6(_) => None,
    }
}

fn workload_matches(filters: &[Workload], workloads: &[Workload]) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| {
            workloads.iter().any(|w| {
                (f.name.is_empty() || f.name == w.name) && (f.kind.is_empty() || f.kind == w.kind)
            })
        })
}

/// As Hubble: one header of the HTTP record must match one filter, by exact
/// key and exact value, an empty key or value matching any.
fn http_headers_match(filters: &[HttpHeader], http: Option<&Http>) -> bool {
    filters.is_empty()
        || http.is_some_and(|h| {
            h.headers.iter().any(|have| {
                filters.iter().any(|f| {
                    (f.key.is_empty() || f.key == have.key)
                        && (f.value.is_empty() || f.value == have.value)
                })
            })
        })
}

fn event_type_matches(filters: &[EventTypeFilter], flow: &Flow) -> bool {
    filters.is_empty()
        || flow.event_type.as_ref().is_some_and(|et| {
            filters
                .iter()
                .any(|f| f.r#type == et.r#type && (!f.match_sub_type || f.sub_type == et.sub_type))
        })
}

fn tcp_flags_match(filters: &[TcpFlags], flow: &Flow) -> bool {
    if filters.is_empty() {
        return true;
    }
    let Some(layer4::Protocol::Tcp(tcp)) = flow.l4.as_ref().and_then(|l| l.protocol.as_ref())
    else {
        return false;
    };
    let Some(flags) = &tcp.flags else {
        return false;
    };
    let bits = |f: &TcpFlags| [f.fin, f.syn, f.rst, f.psh, f.ack, f.urg, f.ece, f.cwr, f.ns];
    let have = bits(flags);
    filters.iter().any(|f| {
        bits(f)
            .iter()
            .zip(have.iter())
            .all(|(want, has)| !want || *has)
    })
}

/// The path of an HTTP URL ("http://host/a?b" -> "/a").
fn url_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = if url.contains("://") {
        after_scheme.find('/').map_or("", |i| &after_scheme[i..])
    } else {
        after_scheme
    };
    path.split(['?', '#']).next().unwrap_or(path)
}

impl CompiledFilter {
    fn new(raw: &FlowFilter) -> Result<Self, FilterError> {
        refuse_unsupported(raw)?;
        let cel_expressions = raw
            .experimental
            .as_ref()
            .map(|e| e.cel_expression.as_slice())
            .unwrap_or_default();
        Ok(Self {
            source_ip: parse_nets(&raw.source_ip, "source_ip")?,
            destination_ip: parse_nets(&raw.destination_ip, "destination_ip")?,
            source_pod: parse_names(&raw.source_pod, "source_pod")?,
            destination_pod: parse_names(&raw.destination_pod, "destination_pod")?,
            source_service: parse_names(&raw.source_service, "source_service")?,
            destination_service: parse_names(&raw.destination_service, "destination_service")?,
            source_label: parse_selectors(&raw.source_label)?,
            destination_label: parse_selectors(&raw.destination_label)?,
            source_fqdn: raw
                .source_fqdn
                .iter()
                .map(|v| fqdn_pattern(v, "source_fqdn"))
                .collect::<Result<_, _>>()?,
            destination_fqdn: raw
                .destination_fqdn
                .iter()
                .map(|v| fqdn_pattern(v, "destination_fqdn"))
                .collect::<Result<_, _>>()?,
            source_port: parse_ports(&raw.source_port, "source_port")?,
            destination_port: parse_ports(&raw.destination_port, "destination_port")?,
            protocol: raw
                .protocol
                .iter()
                .map(|p| Protocol::parse(p))
                .collect::<Result<_, _>>()?,
            http_status: raw
                .http_status_code
                .iter()
                .map(|s| StatusPattern::parse(s))
                .collect::<Result<_, _>>()?,
            http_path: compile_regexes(&raw.http_path, "http_path")?,
            http_url: compile_regexes(&raw.http_url, "http_url")?,
            dns_query: compile_regexes(&raw.dns_query, "dns_query")?,
            node_name: raw
                .node_name
                .iter()
                .map(|v| NodePattern::parse(v))
                .collect::<Result<_, _>>()?,
            node_labels: parse_selectors(&raw.node_labels)?,
            source_cluster: cluster_patterns(&raw.source_cluster_name, "source_cluster_name")?,
            destination_cluster: cluster_patterns(
                &raw.destination_cluster_name,
                "destination_cluster_name",
            )?,
            cel: if cel_expressions.is_empty() {
                None
            } else {
                Some(CelFilter::new(cel_expressions)?)
            },
            raw: raw.clone(),
        })
    }

    fn matches(&self, flow: &Flow) -> bool {
        let raw = &self.raw;
        let empty = Endpoint::default();
        let src = flow.source.as_ref().unwrap_or(&empty);
        let dst = flow.destination.as_ref().unwrap_or(&empty);
        let ip = flow.ip.as_ref();
        let http = match flow.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(layer7::Record::Http(h)) => Some(h),
            _ => None,
        };
        let dns = match flow.l7.as_ref().and_then(|l| l.record.as_ref()) {
            Some(layer7::Record::Dns(d)) => Some(d),
            _ => None,
        };
        let svc_matches = |patterns: &[NamePattern], svc: Option<&crate::proto::flow::Service>| {
            patterns.is_empty()
                || svc.is_some_and(|s| patterns.iter().any(|p| p.matches(&s.namespace, &s.name)))
        };
        let fqdn_matches = |patterns: &[Regex], names: &[String]| {
            patterns.is_empty() || names.iter().any(|n| patterns.iter().any(|p| p.is_match(n)))
        };
        (raw.uuid.is_empty() || raw.uuid.contains(&flow.uuid))
            && ip_matches(&self.source_ip, ip.map(|i| i.source.as_str()))
            && ip_matches(&self.destination_ip, ip.map(|i| i.destination.as_str()))
            && (self.source_pod.is_empty()
                || self.source_pod.iter().any(|p| p.matches(&src.namespace, &src.pod_name)))
            && (self.destination_pod.is_empty()
                || self
                    .destination_pod
                    .iter()
                    .any(|p| p.matches(&dst.namespace, &dst.pod_name)))
            && svc_matches(&self.source_service, flow.source_service.as_ref())
            && svc_matches(&self.destination_service, flow.destination_service.as_ref())
            && (self.source_label.is_empty() || self.source_label.iter().any(|s| s.matches(&src.labels)))
            && (self.destination_label.is_empty()
                || self.destination_label.iter().any(|s| s.matches(&dst.labels)))
            && fqdn_matches(&self.source_fqdn, &flow.source_names)
            && fqdn_matches(&self.destination_fqdn, &flow.destination_names)
            && workload_matches(&raw.source_workload, &src.workloads)
            && workload_matches(&raw.destination_workload, &dst.workloads)
            && (raw.source_identity.is_empty() || raw.source_identity.contains(&src.identity))
            && (raw.destination_identity.is_empty() || raw.destination_identity.contains(&dst.identity))
            && (self.source_port.is_empty()
                || ports(flow).is_some_and(|(s, _)| self.source_port.contains(&s)))
            && (self.destination_port.is_empty()
                || ports(flow).is_some_and(|(_, d)| self.destination_port.contains(&d)))
            && (self.protocol.is_empty() || self.protocol.iter().any(|p| p.matches(flow)))
            && (raw.verdict.is_empty() || raw.verdict.contains(&flow.verdict))
            // As Hubble: a drop reason is only looked at on dropped flows.
            && (raw.drop_reason_desc.is_empty()
                || (flow.verdict == Verdict::Dropped as i32
                    && raw.drop_reason_desc.contains(&flow.drop_reason_desc)))
            && event_type_matches(&raw.event_type, flow)
            && (raw.traffic_direction.is_empty() || raw.traffic_direction.contains(&flow.traffic_direction))
            // An absent is_reply counts as "not a reply", as Hubble does for drops.
            && (raw.reply.is_empty() || raw.reply.contains(&flow.is_reply.unwrap_or(false)))
            && (self.http_status.is_empty()
                || http.is_some_and(|h| {
                    flow.l7.as_ref().is_some_and(|l| l.r#type == L7FlowType::Response as i32)
                        && self.http_status.iter().any(|s| s.matches(h.code))
                }))
            && (raw.http_method.is_empty()
                || http.is_some_and(|h| raw.http_method.iter().any(|m| m.eq_ignore_ascii_case(&h.method))))
            && (self.http_path.is_empty()
                || http.is_some_and(|h| self.http_path.iter().any(|r| r.is_match(url_path(&h.url)))))
            // As Hubble: the whole URL, and a record without one never matches.
            && (self.http_url.is_empty()
                || http.is_some_and(|h| !h.url.is_empty() && self.http_url.iter().any(|r| r.is_match(&h.url))))
            && http_headers_match(&raw.http_header, http)
            && (self.dns_query.is_empty()
                || dns.is_some_and(|d| self.dns_query.iter().any(|r| r.is_match(&d.query))))
            && tcp_flags_match(&raw.tcp_flags, flow)
            && (self.node_name.is_empty() || self.node_name.iter().any(|p| p.matches(&flow.node_name)))
            && (self.node_labels.is_empty() || self.node_labels.iter().any(|s| s.matches(&flow.node_labels)))
            && cluster_matches(&self.source_cluster, &src.cluster_name)
            && cluster_matches(&self.destination_cluster, &dst.cluster_name)
            && interface_matches(&raw.interface, flow)
            && (raw.encrypted.is_empty() || raw.encrypted.contains(&ip.is_some_and(|i| i.encrypted)))
            // As Hubble: a flow without an IP header has IP_NOT_USED.
            && (raw.ip_version.is_empty()
                || raw
                    .ip_version
                    .contains(&ip.map_or(IpVersion::IpNotUsed as i32, |i| i.ip_version)))
            && (raw.trace_id.is_empty()
                || flow
                    .trace_context
                    .as_ref()
                    .and_then(|t| t.parent.as_ref())
                    .is_some_and(|p| raw.trace_id.contains(&p.trace_id)))
            // Last: the costliest test, as Hubble advises.
            && self.cel.as_ref().is_none_or(|c| c.matches(flow))
    }
}

/// Monitor message type for a Hubble `--type` name ("drop", "trace", ...).
pub fn event_type_code(name: &str) -> Option<i32> {
    Some(match name {
        "drop" => flows::MESSAGE_TYPE_DROP,
        "debug" => flows::MESSAGE_TYPE_DEBUG,
        "capture" => flows::MESSAGE_TYPE_CAPTURE,
        "trace" => flows::MESSAGE_TYPE_TRACE,
        "policy-verdict" => flows::MESSAGE_TYPE_POLICY_VERDICT,
        "trace-sock" => flows::MESSAGE_TYPE_TRACE_SOCK,
        "l7" => flows::MESSAGE_TYPE_ACCESS_LOG,
        "agent" => flows::MESSAGE_TYPE_AGENT,
        _ => return None,
    })
}
