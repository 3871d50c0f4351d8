//! The filter flags of `observe` as `hubble observe` reads them: in
//! command-line order, each one into the whitelist, or into the blacklist
//! when `--not` comes right before it, and the FlowFilters built from each list.

use anyhow::{Context, bail};
use clap::{Arg, ArgAction, ArgMatches, error::ErrorKind};

use crate::filter;
use crate::flows;
use crate::printer;
use crate::proto::flow::{
    DropReason, EventTypeFilter, FlowFilter, HttpHeader, IpVersion, NetworkInterface, TcpFlags,
    TrafficDirection, Verdict, Workload,
};

/// One filter flag with its value, e.g. `--to-pod kube-system/` is
/// `FilterFlag { name: "to-pod", value: "kube-system/" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterFlag {
    /// The flag's long name without dashes ("pod", "from-ip", "verdict").
    pub name: &'static str,
    /// The value given to it.
    pub value: String,
}

/// The filter flags of one `observe` command line, split by `--not`.
///
/// As in hubble, `--not` negates the next filter flag only; every negated
/// flag goes into one blacklist, built with the same rules as the
/// whitelist. So `--not --pod a --not --verdict DROPPED` hides the dropped
/// flows of pod a, not every flow of pod a and every dropped flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterArgs {
    /// Flags that select flows, in command-line order.
    pub whitelist: Vec<FilterFlag>,
    /// Flags that came right after `--not`, in command-line order.
    pub blacklist: Vec<FilterFlag>,
}

impl FilterArgs {
    /// The GetFlows whitelist these flags make.
    pub fn whitelist_filters(&self) -> anyhow::Result<Vec<FlowFilter>> {
        build(&self.whitelist)
    }

    /// The GetFlows blacklist these flags make.
    pub fn blacklist_filters(&self) -> anyhow::Result<Vec<FlowFilter>> {
        build(&self.blacklist)
    }
}

/// Hubble CLI's two-sided filter: `left` (source side) OR `right`
/// (destination side). Flags naming both sides write source_X on the left
/// and destination_X on the right; every other flag writes both.
/// Namespaces are kept apart and put into the pod (or service) filters
/// when the filters are built, as hubble's namespace modifiers do.
#[derive(Default)]
struct Tracker {
    left: Option<FlowFilter>,
    right: Option<FlowFilter>,
    /// `--namespace`: source side on the left, destination side on the right.
    ns: Vec<String>,
    /// `--from-namespace`: source side of both.
    src_ns: Vec<String>,
    /// `--to-namespace`: destination side of both.
    dst_ns: Vec<String>,
    /// Flags given so far, for hubble's conflict groups.
    changed: Vec<&'static str>,
}

/// Hubble's groups of filter flags that cannot be combined in one list:
/// two different flags of one group are an error.
const CONFLICTS: &[&[&str]] = &[
    &[
        "from-fqdn",
        "from-ip",
        "ip",
        "fqdn",
        "from-namespace",
        "namespace",
        "from-all-namespaces",
        "all-namespaces",
    ],
    &["from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"],
    &[
        "to-fqdn",
        "to-ip",
        "ip",
        "fqdn",
        "to-namespace",
        "namespace",
        "to-all-namespaces",
        "all-namespaces",
    ],
    &["to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"],
    &["to-pod", "namespace", "all-namespaces"],
    &["from-pod", "namespace", "all-namespaces"],
    &["to-service", "namespace", "all-namespaces"],
    &["from-service", "namespace", "all-namespaces"],
    &["label", "from-label"],
    &["label", "to-label"],
    &["service", "from-service"],
    &["service", "to-service"],
    &["port", "to-port"],
    &["port", "from-port"],
    &["identity", "to-identity"],
    &["identity", "from-identity"],
    &["workload", "to-workload"],
    &["workload", "from-workload"],
    &["encrypted", "unencrypted"],
];

/// Hubble's namespace modifier for one side: an empty side becomes the
/// whole namespace, and names without a namespace get it.
fn add_namespaces(pods: &mut Vec<String>, services: &mut Vec<String>, namespaces: &[String]) {
    if pods.is_empty() && services.is_empty() {
        pods.push(String::new());
    }
    for names in [pods, services] {
        *names = names
            .iter()
            .flat_map(|name| {
                if name.contains('/') {
                    vec![name.clone()]
                } else {
                    namespaces
                        .iter()
                        .map(|ns| format!("{}/{name}", ns.trim_end_matches('/')))
                        .collect()
                }
            })
            .collect();
    }
}

fn add_source_namespaces(f: &mut FlowFilter, namespaces: &[String]) {
    add_namespaces(&mut f.source_pod, &mut f.source_service, namespaces);
}

fn add_destination_namespaces(f: &mut FlowFilter, namespaces: &[String]) {
    add_namespaces(
        &mut f.destination_pod,
        &mut f.destination_service,
        namespaces,
    );
}

/// The namespace of `ns/name`, if it names one.
fn namespace_of(name: &str) -> Option<&str> {
    name.split_once('/').map(|(ns, _)| ns)
}

impl Tracker {
    fn left(&mut self, update: impl FnOnce(&mut FlowFilter)) {
        update(self.left.get_or_insert_with(FlowFilter::default));
    }
    fn right(&mut self, update: impl FnOnce(&mut FlowFilter)) {
        update(self.right.get_or_insert_with(FlowFilter::default));
    }
    fn both(&mut self, update: impl Fn(&mut FlowFilter)) {
        self.left(&update);
        self.right(&update);
    }

    /// Records a flag and rejects it as hubble does when it conflicts with
    /// one given before.
    fn track(&mut self, name: &'static str) -> anyhow::Result<()> {
        if !self.changed.contains(&name) {
            self.changed.push(name);
        }
        // As hubble reports it: the group's first flag given, then the
        // first other one given, in the group's order.
        for group in CONFLICTS {
            let mut given = group.iter().filter(|flag| self.changed.contains(flag));
            if let (Some(flag), Some(other)) = (given.next(), given.next()) {
                bail!("filters --{flag} and --{other} cannot be combined");
            }
        }
        Ok(())
    }

    /// Hubble's namespace checks: a namespaced pod or service must be in
    /// the namespaces given, and a side's pods and services in one namespace.
    fn check_namespaces(&self) -> anyhow::Result<()> {
        for f in [&self.left, &self.right].into_iter().flatten() {
            for (namespaces, names) in [
                (&self.ns, &f.source_pod),
                (&self.ns, &f.source_service),
                (&self.ns, &f.destination_pod),
                (&self.ns, &f.destination_service),
                (&self.src_ns, &f.source_pod),
                (&self.src_ns, &f.source_service),
                (&self.dst_ns, &f.destination_pod),
                (&self.dst_ns, &f.destination_service),
            ] {
                for ns in namespaces {
                    if let Some(name) = names
                        .iter()
                        .find(|name| namespace_of(name).is_some_and(|n| n != ns))
                    {
                        bail!("namespace conflict: {ns:?} does not contain {name:?}");
                    }
                }
            }
            for (pods, services) in [
                (&f.source_pod, &f.source_service),
                (&f.destination_pod, &f.destination_service),
            ] {
                for pod_ns in pods.iter().filter_map(|p| namespace_of(p)) {
                    if let Some(service) = services.iter().find(|s| namespace_of(s) != Some(pod_ns))
                    {
                        bail!("namespace of service {service:?} conflict with pod {pod_ns:?}");
                    }
                }
            }
        }
        Ok(())
    }

    fn filters(self) -> anyhow::Result<Vec<FlowFilter>> {
        self.check_namespaces()?;
        let no_namespaces = self.ns.is_empty() && self.src_ns.is_empty() && self.dst_ns.is_empty();
        if self.left.is_none() && self.right.is_none() && no_namespaces {
            return Ok(Vec::new());
        }
        let mut left = self.left.unwrap_or_default();
        let mut right = self.right.unwrap_or_default();
        if !self.dst_ns.is_empty() {
            add_destination_namespaces(&mut left, &self.dst_ns);
            add_destination_namespaces(&mut right, &self.dst_ns);
        }
        if !self.src_ns.is_empty() {
            add_source_namespaces(&mut left, &self.src_ns);
            add_source_namespaces(&mut right, &self.src_ns);
        }
        if !self.ns.is_empty() {
            add_source_namespaces(&mut left, &self.ns);
            add_destination_namespaces(&mut right, &self.ns);
        }
        Ok(if left == right {
            vec![left]
        } else {
            vec![left, right]
        })
    }
}

/// A list field of FlowFilter that holds strings.
type Field = fn(&mut FlowFilter) -> &mut Vec<String>;

/// How a flag's value goes into the filters.
enum Rule {
    /// `--X`: the source field on the left, the destination field on the right.
    Either(Field, Field),
    /// `--from-X`, `--to-X` and flow properties: the field on both sides.
    Both(Field),
    /// A value that needs parsing first.
    Parsed(fn(&mut Tracker, &str) -> anyhow::Result<()>),
}

/// One filter flag of the command line.
struct Spec {
    name: &'static str,
    short: Option<char>,
    help: &'static str,
    rule: Rule,
    /// The value of a flag given without one (`--ipv4`); such a flag takes
    /// a value only as `--flag=value`.
    bare: Option<&'static str>,
}

const fn spec(name: &'static str, help: &'static str, rule: Rule) -> Spec {
    Spec {
        name,
        short: None,
        help,
        rule,
        bare: None,
    }
}

/// Every filter flag, in the order `--help` lists them.
const SPECS: &[Spec] = &[
    spec(
        "pod",
        "Flows from or to a pod ([namespace/]pod-prefix; namespace defaults to \"default\")",
        Rule::Either(|f| &mut f.source_pod, |f| &mut f.destination_pod),
    ),
    spec(
        "from-pod",
        "Flows from a pod ([namespace/]pod-prefix)",
        Rule::Both(|f| &mut f.source_pod),
    ),
    spec(
        "to-pod",
        "Flows to a pod ([namespace/]pod-prefix)",
        Rule::Both(|f| &mut f.destination_pod),
    ),
    Spec {
        short: Some('n'),
        ..spec(
            "namespace",
            "Flows from or to a namespace; names in --pod and --service without a namespace are taken in it",
            Rule::Parsed(|t, v| {
                t.ns.push(v.to_string());
                Ok(())
            }),
        )
    },
    spec(
        "from-namespace",
        "Flows from a namespace",
        Rule::Parsed(|t, v| {
            t.src_ns.push(v.to_string());
            Ok(())
        }),
    ),
    spec(
        "to-namespace",
        "Flows to a namespace",
        Rule::Parsed(|t, v| {
            t.dst_ns.push(v.to_string());
            Ok(())
        }),
    ),
    // Hubble's all-namespaces flags are the empty namespace, which the
    // server reads as any namespace ("/" alone, "/xwing" with --pod xwing).
    Spec {
        short: Some('A'),
        bare: Some(SWITCHED_ON),
        ..spec(
            "all-namespaces",
            "Flows from or to pods in any namespace (names in --pod and --service without a namespace are taken in any)",
            Rule::Parsed(|t, v| {
                switch(v)?;
                t.ns.push(String::new());
                Ok(())
            }),
        )
    },
    Spec {
        bare: Some(SWITCHED_ON),
        ..spec(
            "from-all-namespaces",
            "Flows from pods in any namespace",
            Rule::Parsed(|t, v| {
                switch(v)?;
                t.src_ns.push(String::new());
                Ok(())
            }),
        )
    },
    Spec {
        bare: Some(SWITCHED_ON),
        ..spec(
            "to-all-namespaces",
            "Flows to pods in any namespace",
            Rule::Parsed(|t, v| {
                switch(v)?;
                t.dst_ns.push(String::new());
                Ok(())
            }),
        )
    },
    Spec {
        short: Some('l'),
        ..spec(
            "label",
            "Flows from or to endpoints matching a label selector",
            Rule::Either(|f| &mut f.source_label, |f| &mut f.destination_label),
        )
    },
    spec(
        "from-label",
        "Flows from endpoints matching a label selector",
        Rule::Both(|f| &mut f.source_label),
    ),
    spec(
        "to-label",
        "Flows to endpoints matching a label selector",
        Rule::Both(|f| &mut f.destination_label),
    ),
    spec(
        "service",
        "Flows from or to a service ([namespace/]name)",
        Rule::Either(|f| &mut f.source_service, |f| &mut f.destination_service),
    ),
    spec(
        "from-service",
        "Flows from a service",
        Rule::Both(|f| &mut f.source_service),
    ),
    spec(
        "to-service",
        "Flows to a service",
        Rule::Both(|f| &mut f.destination_service),
    ),
    spec(
        "fqdn",
        "Flows from or to a DNS name (\"*.cilium.io\")",
        Rule::Either(|f| &mut f.source_fqdn, |f| &mut f.destination_fqdn),
    ),
    spec(
        "from-fqdn",
        "Flows from a DNS name",
        Rule::Both(|f| &mut f.source_fqdn),
    ),
    spec(
        "to-fqdn",
        "Flows to a DNS name",
        Rule::Both(|f| &mut f.destination_fqdn),
    ),
    spec(
        "identity",
        "Flows from or to a security identity (a number or a reserved name: world, host, ...)",
        Rule::Parsed(|t, v| {
            let id = parse_identity(v)?;
            t.left(|f| f.source_identity.push(id));
            t.right(|f| f.destination_identity.push(id));
            Ok(())
        }),
    ),
    spec(
        "from-identity",
        "Flows from a security identity",
        Rule::Parsed(|t, v| {
            let id = parse_identity(v)?;
            t.both(|f| f.source_identity.push(id));
            Ok(())
        }),
    ),
    spec(
        "to-identity",
        "Flows to a security identity",
        Rule::Parsed(|t, v| {
            let id = parse_identity(v)?;
            t.both(|f| f.destination_identity.push(id));
            Ok(())
        }),
    ),
    spec(
        "workload",
        "Flows from or to an endpoint of a workload ([kind/]name, e.g. deathstar, Deployment/deathstar, Deployment/)",
        Rule::Parsed(|t, v| {
            let workload = parse_workload(v)?;
            t.left(|f| f.source_workload.push(workload.clone()));
            t.right(|f| f.destination_workload.push(workload));
            Ok(())
        }),
    ),
    spec(
        "from-workload",
        "Flows from an endpoint of a workload ([kind/]name)",
        Rule::Parsed(|t, v| {
            let workload = parse_workload(v)?;
            t.both(|f| f.source_workload.push(workload.clone()));
            Ok(())
        }),
    ),
    spec(
        "to-workload",
        "Flows to an endpoint of a workload ([kind/]name)",
        Rule::Parsed(|t, v| {
            let workload = parse_workload(v)?;
            t.both(|f| f.destination_workload.push(workload.clone()));
            Ok(())
        }),
    ),
    spec(
        "ip",
        "Flows from or to an IP address or CIDR",
        Rule::Either(|f| &mut f.source_ip, |f| &mut f.destination_ip),
    ),
    spec(
        "from-ip",
        "Flows from an IP address or CIDR",
        Rule::Both(|f| &mut f.source_ip),
    ),
    spec(
        "to-ip",
        "Flows to an IP address or CIDR",
        Rule::Both(|f| &mut f.destination_ip),
    ),
    spec(
        "snat-ip",
        "Flows SNATed to an IP address or CIDR (sent to the server; a myelin agent refuses it: the datapath does not report addresses after SNAT)",
        Rule::Both(|f| &mut f.source_ip_xlated),
    ),
    spec(
        "port",
        "Flows with this L4 source or destination port",
        Rule::Either(|f| &mut f.source_port, |f| &mut f.destination_port),
    ),
    spec(
        "from-port",
        "Flows with this L4 source port",
        Rule::Both(|f| &mut f.source_port),
    ),
    spec(
        "to-port",
        "Flows with this L4 destination port",
        Rule::Both(|f| &mut f.destination_port),
    ),
    spec(
        "verdict",
        "Flows with this verdict (FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED)",
        Rule::Parsed(|t, v| {
            let verdict = parse_verdict(v)?;
            t.both(|f| f.verdict.push(verdict));
            Ok(())
        }),
    ),
    spec(
        "drop-reason-desc",
        "Dropped flows with this drop reason (POLICY_DENIED, CT_NO_MAP_FOUND, ...)",
        Rule::Parsed(|t, v| {
            let reason = parse_drop_reason(v)?;
            t.both(|f| f.drop_reason_desc.push(reason));
            Ok(())
        }),
    ),
    Spec {
        short: Some('t'),
        ..spec(
            "type",
            "Event types: TYPE[:SUBTYPE], e.g. drop, trace:to-endpoint, l7, policy-verdict",
            Rule::Parsed(|t, v| {
                let event_type = parse_event_type(v)?;
                t.both(|f| f.event_type.push(event_type));
                Ok(())
            }),
        )
    },
    spec(
        "protocol",
        "L4 or L7 protocol: tcp, udp, icmp, http, dns, ...",
        Rule::Both(|f| &mut f.protocol),
    ),
    spec(
        "http-status",
        "HTTP status code or prefix: 404, 4+, 5+",
        Rule::Both(|f| &mut f.http_status_code),
    ),
    spec(
        "http-method",
        "HTTP method",
        Rule::Both(|f| &mut f.http_method),
    ),
    spec(
        "http-path",
        "HTTP path regular expression",
        Rule::Both(|f| &mut f.http_path),
    ),
    spec(
        "http-url",
        "HTTP URL regular expression (\"http://.*cilium\\.io/page/\\d+\")",
        Rule::Both(|f| &mut f.http_url),
    ),
    spec(
        "http-header",
        "HTTP header KEY:VALUE, both exact (\"x-request-id:42\"); names are recorded in lower case",
        Rule::Parsed(|t, v| {
            let header = parse_http_header(v)?;
            t.both(|f| f.http_header.push(header.clone()));
            Ok(())
        }),
    ),
    spec(
        "trace-id",
        "Flows of this trace: the W3C trace id of the flow's trace context",
        Rule::Both(|f| &mut f.trace_id),
    ),
    spec(
        "ip-trace-id",
        "Flows with this IP option trace id, a number above 0 (sent to the server; a myelin agent refuses it: the datapath does not read IP options)",
        Rule::Parsed(|t, v| {
            let id = parse_ip_trace_id(v)?;
            t.both(|f| f.ip_trace_id.push(id));
            Ok(())
        }),
    ),
    spec(
        "uuid",
        "The flow with this unique identifier, if any",
        Rule::Both(|f| &mut f.uuid),
    ),
    spec(
        "tcp-flags",
        "TCP flags, comma-separated, all of which a flow must have (syn, ack, fin, rst, psh, urg, ece, cwr, ns)",
        Rule::Parsed(|t, v| {
            let flags = parse_tcp_flags(v)?;
            t.both(|f| f.tcp_flags.push(flags));
            Ok(())
        }),
    ),
    Spec {
        short: Some('4'),
        bare: Some("v4"),
        ..spec(
            "ipv4",
            "Only IPv4 flows",
            Rule::Parsed(|t, _| {
                t.both(|f| f.ip_version.push(IpVersion::IPv4 as i32));
                Ok(())
            }),
        )
    },
    Spec {
        short: Some('6'),
        bare: Some("v6"),
        ..spec(
            "ipv6",
            "Only IPv6 flows",
            Rule::Parsed(|t, _| {
                t.both(|f| f.ip_version.push(IpVersion::IPv6 as i32));
                Ok(())
            }),
        )
    },
    spec(
        "ip-version",
        "IP version: v4, v6 or none (flows without IP, e.g. ARP)",
        Rule::Parsed(|t, v| {
            let version = parse_ip_version(v)?;
            t.both(|f| f.ip_version.push(version));
            Ok(())
        }),
    ),
    spec(
        "traffic-direction",
        "Traffic direction: ingress or egress",
        Rule::Parsed(|t, v| {
            let direction = parse_direction(v)?;
            t.both(|f| f.traffic_direction.push(direction));
            Ok(())
        }),
    ),
    spec(
        "is-reply",
        "Only replies (true) or only requests (false)",
        Rule::Parsed(|t, v| {
            let reply: bool = v.parse().with_context(|| {
                format!("invalid --is-reply value {v:?}: expected true or false")
            })?;
            t.both(|f| f.reply.push(reply));
            Ok(())
        }),
    ),
    spec(
        "node-name",
        "Node name pattern (\"k8s*\", \"cluster/*\")",
        Rule::Both(|f| &mut f.node_name),
    ),
    spec(
        "node-label",
        "Flows seen on nodes matching a label selector (\"kubernetes.io/hostname=node1\")",
        Rule::Both(|f| &mut f.node_labels),
    ),
    spec(
        "cluster",
        "Flows from or to endpoints in a cluster (name or pattern: \"default\", \"prod-*\")",
        Rule::Either(
            |f| &mut f.source_cluster_name,
            |f| &mut f.destination_cluster_name,
        ),
    ),
    spec(
        "from-cluster",
        "Flows from endpoints in a cluster (name or pattern)",
        Rule::Both(|f| &mut f.source_cluster_name),
    ),
    spec(
        "to-cluster",
        "Flows to endpoints in a cluster (name or pattern)",
        Rule::Both(|f| &mut f.destination_cluster_name),
    ),
    spec(
        "interface",
        "Flows seen on a network interface, by name (a pod's host-side veth)",
        Rule::Parsed(|t, v| {
            let name = v.to_string();
            t.both(|f| {
                f.interface.push(NetworkInterface {
                    index: 0,
                    name: name.clone(),
                })
            });
            Ok(())
        }),
    ),
    Spec {
        bare: Some(SWITCHED_ON),
        ..spec(
            "encrypted",
            "Only encrypted flows (the myelin datapath encrypts none)",
            Rule::Parsed(|t, v| {
                switch(v)?;
                t.both(|f| f.encrypted.push(true));
                Ok(())
            }),
        )
    },
    Spec {
        bare: Some(SWITCHED_ON),
        ..spec(
            "unencrypted",
            "Only unencrypted flows",
            Rule::Parsed(|t, v| {
                switch(v)?;
                t.both(|f| f.encrypted.push(false));
                Ok(())
            }),
        )
    },
    spec(
        "cel-expression",
        "Flows for which a CEL expression over `_flow` is true (\"_flow.verdict == 2\")",
        Rule::Parsed(|t, v| {
            t.both(|f| {
                f.experimental
                    .get_or_insert_with(Default::default)
                    .cel_expression
                    .push(v.to_string())
            });
            Ok(())
        }),
    ),
];

/// The value clap gives a flag that takes none (`--encrypted`, `-A`).
const SWITCHED_ON: &str = "true";

/// A flag without value may only be written bare or as `--flag=true`:
/// Hubble ignores a value there, so `--encrypted=false` would mean
/// encrypted; refused instead.
fn switch(value: &str) -> anyhow::Result<()> {
    if value != SWITCHED_ON {
        bail!("takes no value (got {value:?}); write the flag alone");
    }
    Ok(())
}

/// Hubble's `--ip-trace-id`: a number above 0.
fn parse_ip_trace_id(value: &str) -> anyhow::Result<u64> {
    match value.parse::<u64>() {
        Ok(0) => bail!("invalid IP trace id 0: expected a number above 0"),
        Ok(id) => Ok(id),
        Err(_) => bail!("invalid IP trace id {value:?}: expected a number above 0"),
    }
}

/// Help heading of the filter flags in `--help`.
const HEADING: &str = "Filters";

/// Hubble's `--tcp-flags` value: comma-separated names, any case.
fn parse_tcp_flags(value: &str) -> anyhow::Result<TcpFlags> {
    let mut flags = TcpFlags::default();
    for name in value.split(',') {
        let flag = match name.to_ascii_uppercase().as_str() {
            "SYN" => &mut flags.syn,
            "FIN" => &mut flags.fin,
            "RST" => &mut flags.rst,
            "PSH" => &mut flags.psh,
            "ACK" => &mut flags.ack,
            "URG" => &mut flags.urg,
            "ECE" => &mut flags.ece,
            "CWR" => &mut flags.cwr,
            "NS" => &mut flags.ns,
            _ => bail!(
                "unknown tcp flag {name:?}: expected SYN, FIN, RST, PSH, ACK, URG, ECE, CWR or NS"
            ),
        };
        *flag = true;
    }
    Ok(flags)
}

/// Hubble's `--workload` value: `[kind/]name`, either part may be empty to
/// match any. A name with a slash could never match, so it is refused.
fn parse_workload(value: &str) -> anyhow::Result<Workload> {
    let (kind, name) = value.split_once('/').unwrap_or(("", value));
    if name.contains('/') {
        bail!("invalid workload {value:?}: expected [kind/]name, e.g. Deployment/deathstar");
    }
    Ok(Workload {
        name: name.to_string(),
        kind: kind.to_string(),
    })
}

/// Hubble's `--http-header` value: `key:value`, split at the first colon.
fn parse_http_header(value: &str) -> anyhow::Result<HttpHeader> {
    let (key, value) = value.split_once(':').with_context(|| {
        format!("invalid HTTP header {value:?}: expected KEY:VALUE, e.g. x-request-id:42")
    })?;
    Ok(HttpHeader {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// Hubble's `--drop-reason-desc` value: a DropReason name. Hubble wants it
/// in upper case; any case is taken here.
fn parse_drop_reason(value: &str) -> anyhow::Result<i32> {
    if value.is_empty() {
        bail!("empty drop reason: expected a name like POLICY_DENIED");
    }
    DropReason::from_str_name(&value.to_ascii_uppercase())
        .map(|r| r as i32)
        .with_context(|| {
            format!("unknown drop reason {value:?}: expected a name like POLICY_DENIED, CT_NO_MAP_FOUND or STALE_OR_UNROUTABLE_IP")
        })
}

/// Hubble's `--ip-version` spellings. Hubble reads anything else as
/// "none"; here it is an error.
fn parse_ip_version(value: &str) -> anyhow::Result<i32> {
    Ok(match value.to_ascii_lowercase().as_str() {
        "4" | "v4" | "ipv4" | "ip4" => IpVersion::IPv4 as i32,
        "6" | "v6" | "ipv6" | "ip6" => IpVersion::IPv6 as i32,
        "none" => IpVersion::IpNotUsed as i32,
        _ => bail!("unknown IP version {value:?}: expected v4, v6 or none"),
    })
}

fn parse_identity(value: &str) -> anyhow::Result<u32> {
    value
        .parse()
        .ok()
        .or_else(|| printer::reserved_identity(value))
        .with_context(|| {
            format!(
                "invalid security identity {value:?}: expected a number or one of {}",
                printer::RESERVED_IDENTITIES
                    .iter()
                    .map(|(_, name)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

fn parse_verdict(value: &str) -> anyhow::Result<i32> {
    Verdict::from_str_name(&value.to_ascii_uppercase())
        .map(|v| v as i32)
        .with_context(|| format!("unknown verdict {value:?}: expected FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED or TRANSLATED"))
}

fn parse_event_type(value: &str) -> anyhow::Result<EventTypeFilter> {
    let (name, sub) = match value.split_once(':') {
        Some((n, s)) => (n, Some(s)),
        None => (value, None),
    };
    let code = filter::event_type_code(name).with_context(|| {
        format!("unknown event type {name:?}: expected drop, trace, l7, policy-verdict, capture, trace-sock, debug or agent")
    })?;
    let mut f = EventTypeFilter {
        r#type: code,
        match_sub_type: false,
        sub_type: 0,
    };
    if let Some(sub) = sub {
        if code != flows::MESSAGE_TYPE_TRACE {
            bail!("event type {name:?} has no subtypes; only trace:SUBTYPE is supported");
        }
        f.sub_type = flows::trace_subtype_by_name(sub)
            .with_context(|| format!("unknown trace subtype {sub:?}: expected to-endpoint, to-proxy, to-stack, from-endpoint, ..."))?;
        f.match_sub_type = true;
    }
    Ok(f)
}

fn parse_direction(value: &str) -> anyhow::Result<i32> {
    match value.to_ascii_lowercase().as_str() {
        "ingress" => Ok(TrafficDirection::Ingress as i32),
        "egress" => Ok(TrafficDirection::Egress as i32),
        _ => bail!("unknown traffic direction {value:?}: expected ingress or egress"),
    }
}

/// The FlowFilters one list of flags makes, as hubble's filter tracker does.
fn build(flags: &[FilterFlag]) -> anyhow::Result<Vec<FlowFilter>> {
    let mut t = Tracker::default();
    for flag in flags {
        let spec = SPECS
            .iter()
            .find(|s| s.name == flag.name)
            .with_context(|| format!("--{} is not a filter flag", flag.name))?;
        let value = flag.value.as_str();
        t.track(spec.name)?;
        match spec.rule {
            Rule::Either(source, destination) => {
                t.left(|f| source(f).push(value.to_string()));
                t.right(|f| destination(f).push(value.to_string()));
            }
            Rule::Both(field) => t.both(|f| field(f).push(value.to_string())),
            Rule::Parsed(apply) => {
                apply(&mut t, value).with_context(|| format!("--{}", flag.name))?
            }
        }
    }
    t.filters()
}

impl clap::Args for FilterArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        // A flag without value, kept per occurrence (a counting flag keeps
        // only the last one's position).
        let not = Arg::new("not")
            .long("not")
            .action(ArgAction::Append)
            .num_args(0)
            .default_missing_value("true")
            .help_heading(HEADING)
            .help("Negate the next filter flag: flows it matches are left out (--not --verdict FORWARDED)");
        SPECS.iter().fold(cmd.arg(not), |cmd, spec| {
            let mut arg = Arg::new(spec.name)
                .long(spec.name)
                .action(ArgAction::Append)
                .value_name("FILTER")
                .help_heading(HEADING)
                .help(spec.help);
            if let Some(short) = spec.short {
                arg = arg.short(short);
            }
            if let Some(bare) = spec.bare {
                arg = arg
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value(bare);
            }
            cmd.arg(arg)
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for FilterArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        // Everything that decides a flag's list, by its position in argv:
        // `--not` (None) or a filter flag's value (Some).
        let mut events: Vec<(usize, Option<FilterFlag>)> = matches
            .indices_of("not")
            .into_iter()
            .flatten()
            .map(|index| (index, None))
            .collect();
        for spec in SPECS {
            let (Some(indices), Some(values)) = (
                matches.indices_of(spec.name),
                matches.get_many::<String>(spec.name),
            ) else {
                continue;
            };
            events.extend(indices.zip(values).map(|(index, value)| {
                let flag = FilterFlag {
                    name: spec.name,
                    value: value.clone(),
                };
                (index, Some(flag))
            }));
        }
        events.sort_by_key(|(index, _)| *index);

        let mut args = Self::default();
        let mut negate = false;
        for (_, event) in events {
            match event {
                None if negate => {
                    return Err(clap::Error::raw(
                        ErrorKind::ArgumentConflict,
                        "--not is given twice in a row: it negates the one filter flag that follows it",
                    ));
                }
                None => negate = true,
                Some(flag) if negate => {
                    args.blacklist.push(flag);
                    negate = false;
                }
                Some(flag) => args.whitelist.push(flag),
            }
        }
        if negate {
            return Err(clap::Error::raw(
                ErrorKind::MissingRequiredArgument,
                "--not must be followed by the filter flag it negates, e.g. --not --verdict FORWARDED",
            ));
        }
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        /// A flag that is not a filter, to check `--not` skips over it.
        #[arg(long)]
        last: Option<u64>,
        #[command(flatten)]
        filters: FilterArgs,
    }

    fn parse(argv: &[&str]) -> Result<FilterArgs, clap::Error> {
        Cmd::try_parse_from(std::iter::once("observe").chain(argv.iter().copied()))
            .map(|c| c.filters)
    }

    fn flag(name: &'static str, value: &str) -> FilterFlag {
        FilterFlag {
            name,
            value: value.to_string(),
        }
    }

    #[test]
    fn not_negates_the_next_filter_flag_only() {
        let args = parse(&[
            "--pod",
            "default/xwing",
            "--not",
            "--to-pod",
            "kube-system/",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.whitelist, [flag("pod", "default/xwing")]);
        assert_eq!(args.blacklist, [flag("to-pod", "kube-system/")]);

        let args = parse(&[
            "--not",
            "--last",
            "5",
            "-t",
            "drop",
            "--verdict=DROPPED",
            "--not",
            "--verdict",
            "FORWARDED",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            args.whitelist,
            [flag("verdict", "DROPPED")],
            "--not skips --last, takes -t"
        );
        assert_eq!(
            args.blacklist,
            [flag("type", "drop"), flag("verdict", "FORWARDED")]
        );
    }

    #[test]
    fn not_without_a_following_filter_is_an_error() {
        for argv in [
            &["--not"][..],
            &["--pod", "xwing", "--not"],
            &["--not", "--last", "3"],
        ] {
            let err = parse(argv).expect_err("trailing --not");
            assert!(
                err.to_string()
                    .contains("--not must be followed by the filter flag it negates"),
                "{argv:?}: {err}"
            );
        }
        let err = parse(&["--not", "--not", "--pod", "xwing"]).expect_err("--not --not");
        assert!(err.to_string().contains("twice in a row"), "{err}");
    }

    #[test]
    fn both_lists_are_built_like_hubble() {
        let args = parse(&[
            "--pod",
            "default/xwing",
            "--not",
            "--to-pod",
            "kube-system/",
            "--not",
            "--identity",
            "world",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let white = args.whitelist_filters().unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            white,
            [
                FlowFilter {
                    source_pod: vec!["default/xwing".into()],
                    ..Default::default()
                },
                FlowFilter {
                    destination_pod: vec!["default/xwing".into()],
                    ..Default::default()
                },
            ]
        );
        // One blacklist tracker: negated flags are ANDed as in hubble.
        let black = args.blacklist_filters().unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            black,
            [
                FlowFilter {
                    destination_pod: vec!["kube-system/".into()],
                    source_identity: vec![2],
                    ..Default::default()
                },
                FlowFilter {
                    destination_pod: vec!["kube-system/".into()],
                    destination_identity: vec![2],
                    ..Default::default()
                },
            ]
        );
    }

    #[test]
    fn every_flag_builds_a_filter() {
        let value = |name: &str| match name {
            "namespace" | "from-namespace" | "to-namespace" => "default",
            "identity" | "from-identity" | "to-identity" => "42",
            "verdict" => "DROPPED",
            "type" => "drop",
            "protocol" => "tcp",
            "http-status" => "404",
            "traffic-direction" => "ingress",
            "is-reply" => "true",
            "port" | "from-port" | "to-port" => "80",
            "ip" | "from-ip" | "to-ip" => "10.0.0.1",
            "tcp-flags" => "syn,ack",
            "ip-version" => "v6",
            "http-header" => "x-request-id:42",
            "drop-reason-desc" => "policy_denied",
            "snat-ip" => "10.0.0.1",
            "ip-trace-id" => "7",
            "cel-expression" => "_flow.verdict == 2",
            _ => "x",
        };
        for spec in SPECS {
            let argv = match spec.bare {
                Some(_) => vec![format!("--{}", spec.name)],
                None => vec![format!("--{}", spec.name), value(spec.name).to_string()],
            };
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let args = parse(&argv).unwrap_or_else(|e| panic!("{e}"));
            let filters = args.whitelist_filters().unwrap_or_else(|e| panic!("{e:#}"));
            assert!(
                !filters.is_empty() && filters.iter().all(|f| *f != FlowFilter::default()),
                "--{} made {filters:?}",
                spec.name
            );
            // Fields the agent has no data for go to the server, which
            // refuses them; every other one it evaluates.
            match filter::FilterSet::new(&filters, &[]) {
                Err(filter::FilterError::Unsupported { flag, .. }) => {
                    assert_eq!(flag.trim_start_matches('-'), spec.name)
                }
                other => {
                    other.unwrap_or_else(|e| panic!("--{}: {e}", spec.name));
                }
            }
        }
    }

    #[test]
    fn hubble_1_19_flags_build_hubbles_filters() {
        let any_ns = |source: bool| FlowFilter {
            source_pod: if source { vec!["/".into()] } else { vec![] },
            destination_pod: if source { vec![] } else { vec!["/".into()] },
            ..Default::default()
        };
        // -A is the empty namespace: "/" on each side, "/xwing" with --pod.
        for argv in [
            &["-A"][..],
            &["--all-namespaces"],
            &["--all-namespaces=true"],
        ] {
            assert_eq!(
                whitelist(argv).unwrap_or_default(),
                [any_ns(true), any_ns(false)],
                "{argv:?}"
            );
        }
        assert_eq!(
            whitelist(&["--pod", "xwing", "-A"]).unwrap_or_default(),
            [
                FlowFilter {
                    source_pod: vec!["/xwing".into()],
                    ..Default::default()
                },
                FlowFilter {
                    destination_pod: vec!["/xwing".into()],
                    ..Default::default()
                },
            ]
        );
        assert_eq!(
            whitelist(&["--from-all-namespaces", "--to-pod", "kube-system/"]).unwrap_or_default(),
            [FlowFilter {
                source_pod: vec!["/".into()],
                destination_pod: vec!["kube-system/".into()],
                ..Default::default()
            }]
        );
        assert_eq!(
            whitelist(&["--to-all-namespaces"]).unwrap_or_default(),
            [FlowFilter {
                destination_pod: vec!["/".into()],
                ..Default::default()
            }]
        );
        // A bare flag takes no separate value: what follows is not eaten.
        let args = parse(&["-A", "--last", "3"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.whitelist, [flag("all-namespaces", "true")]);
        let err = whitelist(&["--encrypted=false"]).expect_err("value on a switch");
        assert!(
            format!("{err:#}").starts_with("--encrypted: takes no value"),
            "{err:#}"
        );
        for (argv, message) in [
            (
                &["-A", "--to-pod", "xwing"][..],
                "filters --to-pod and --all-namespaces cannot be combined",
            ),
            (
                &["--from-ip", "10.0.0.1", "-A"],
                "filters --from-ip and --all-namespaces cannot be combined",
            ),
            (
                &["--to-all-namespaces", "--to-fqdn", "x.io"],
                "filters --to-fqdn and --to-all-namespaces cannot be combined",
            ),
            (
                &["--encrypted", "--unencrypted"],
                "filters --encrypted and --unencrypted cannot be combined",
            ),
            (
                &["-A", "--pod", "default/xwing"],
                "namespace conflict: \"\" does not contain \"default/xwing\"",
            ),
        ] {
            let err = whitelist(argv).expect_err("conflict");
            assert_eq!(format!("{err:#}"), message, "{argv:?}");
        }

        // --cluster is two-sided, --from/--to-cluster one field on both.
        assert_eq!(
            whitelist(&["--cluster", "c1"]).unwrap_or_default(),
            [
                FlowFilter {
                    source_cluster_name: vec!["c1".into()],
                    ..Default::default()
                },
                FlowFilter {
                    destination_cluster_name: vec!["c1".into()],
                    ..Default::default()
                },
            ]
        );
        assert_eq!(
            whitelist(&[
                "--from-cluster",
                "c1",
                "--to-cluster",
                "c2",
                "--node-label",
                "kubernetes.io/hostname=node1",
                "--interface",
                "lxc1",
                "--encrypted",
                "--cel-expression",
                "_flow.verdict == 2",
            ])
            .unwrap_or_default(),
            [FlowFilter {
                source_cluster_name: vec!["c1".into()],
                destination_cluster_name: vec!["c2".into()],
                node_labels: vec!["kubernetes.io/hostname=node1".into()],
                interface: vec![NetworkInterface {
                    index: 0,
                    name: "lxc1".into(),
                }],
                encrypted: vec![true],
                experimental: Some(crate::proto::flow::flow_filter::Experimental {
                    cel_expression: vec!["_flow.verdict == 2".into()],
                }),
                ..Default::default()
            }]
        );
        assert_eq!(
            whitelist(&["--unencrypted"]).unwrap_or_default()[0].encrypted,
            [false]
        );

        // --snat-ip and --ip-trace-id reach the request; the server decides.
        assert_eq!(
            whitelist(&["--snat-ip", "10.0.0.0/24", "--ip-trace-id", "42"]).unwrap_or_default(),
            [FlowFilter {
                source_ip_xlated: vec!["10.0.0.0/24".into()],
                ip_trace_id: vec![42],
                ..Default::default()
            }]
        );
        for bad in ["0", "18446744073709551616", "x"] {
            let err = whitelist(&["--ip-trace-id", bad]).expect_err("bad trace id");
            assert!(
                format!("{err:#}").starts_with("--ip-trace-id: invalid IP trace id"),
                "{err:#}"
            );
        }
    }

    fn whitelist(argv: &[&str]) -> anyhow::Result<Vec<FlowFilter>> {
        parse(argv)
            .map_err(anyhow::Error::from)?
            .whitelist_filters()
    }

    #[test]
    fn namespace_puts_pods_in_it_as_hubble_does() {
        let filters = whitelist(&["--namespace", "empire", "--pod", "deathstar"])
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            filters,
            [
                FlowFilter {
                    source_pod: vec!["empire/deathstar".into()],
                    ..Default::default()
                },
                FlowFilter {
                    destination_pod: vec!["empire/deathstar".into()],
                    ..Default::default()
                },
            ]
        );
        // Order does not matter, and a namespace alone is the whole namespace.
        assert_eq!(
            whitelist(&["--pod", "deathstar", "-n", "empire"]).unwrap_or_default(),
            filters
        );
        assert_eq!(
            whitelist(&["-n", "empire"]).unwrap_or_default(),
            [
                FlowFilter {
                    source_pod: vec!["empire/".into()],
                    ..Default::default()
                },
                FlowFilter {
                    destination_pod: vec!["empire/".into()],
                    ..Default::default()
                },
            ]
        );
        // --from-namespace with --pod: the pod's source side is in it, and
        // its destination side has flows from anywhere in the namespace.
        assert_eq!(
            whitelist(&["--from-namespace", "empire", "--pod", "deathstar"]).unwrap_or_default(),
            [
                FlowFilter {
                    source_pod: vec!["empire/deathstar".into()],
                    ..Default::default()
                },
                FlowFilter {
                    source_pod: vec!["empire/".into()],
                    destination_pod: vec!["deathstar".into()],
                    ..Default::default()
                },
            ]
        );
        // A pod in another namespace, or --namespace with --to-pod, is refused.
        let err = whitelist(&["-n", "empire", "--pod", "rebels/xwing"]).expect_err("conflict");
        assert_eq!(
            format!("{err:#}"),
            "namespace conflict: \"empire\" does not contain \"rebels/xwing\""
        );
        let err = whitelist(&["--to-pod", "xwing", "-n", "empire"]).expect_err("conflict");
        assert_eq!(
            format!("{err:#}"),
            "filters --to-pod and --namespace cannot be combined"
        );
        for argv in [
            &["--ip", "10.0.0.1", "--fqdn", "x.io"][..],
            &["--fqdn", "x.io", "--ip", "10.0.0.1"],
        ] {
            let err = whitelist(argv).expect_err("conflict");
            assert_eq!(
                format!("{err:#}"),
                "filters --ip and --fqdn cannot be combined"
            );
        }
        // Negated, the namespace goes with the blacklist's own pods only.
        let args =
            parse(&["--pod", "xwing", "--not", "-n", "empire"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            args.whitelist_filters().unwrap_or_default()[0].source_pod,
            ["xwing"]
        );
        assert_eq!(
            args.blacklist_filters().unwrap_or_default()[0].source_pod,
            ["empire/"]
        );
    }

    #[test]
    fn ip_version_tcp_flags_uuid_and_url() {
        let v4 = FlowFilter {
            ip_version: vec![IpVersion::IPv4 as i32],
            ..Default::default()
        };
        for argv in [
            &["-4"][..],
            &["--ipv4"],
            &["--ip-version", "ipv4"],
            &["--ip-version=4"],
        ] {
            assert_eq!(
                whitelist(argv).unwrap_or_default(),
                std::slice::from_ref(&v4),
                "{argv:?}"
            );
        }
        let both = whitelist(&["-4", "-6"]).unwrap_or_default();
        assert_eq!(
            both[0].ip_version,
            [IpVersion::IPv4 as i32, IpVersion::IPv6 as i32]
        );
        assert_eq!(
            whitelist(&["--ip-version", "none"]).unwrap_or_default()[0].ip_version,
            [IpVersion::IpNotUsed as i32]
        );
        // --ipv4 takes no separate value: what follows is not eaten.
        let args = parse(&["--ipv4", "--last", "3"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.whitelist, [flag("ipv4", "v4")]);
        assert!(whitelist(&["--ip-version", "v5"]).is_err());

        let flags =
            whitelist(&["--tcp-flags", "syn,ACK", "--tcp-flags", "fin"]).unwrap_or_default();
        assert_eq!(
            flags[0].tcp_flags,
            [
                TcpFlags {
                    syn: true,
                    ack: true,
                    ..Default::default()
                },
                TcpFlags {
                    fin: true,
                    ..Default::default()
                },
            ]
        );
        let err = whitelist(&["--tcp-flags", "syn,nope"]).expect_err("unknown flag");
        assert!(
            format!("{err:#}").starts_with("--tcp-flags: unknown tcp flag \"nope\""),
            "{err:#}"
        );

        let args = parse(&["--uuid", "u-1", "--not", "--http-url", "/admin"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            args.whitelist_filters().unwrap_or_default(),
            [FlowFilter {
                uuid: vec!["u-1".into()],
                ..Default::default()
            }]
        );
        assert_eq!(
            args.blacklist_filters().unwrap_or_default(),
            [FlowFilter {
                http_url: vec!["/admin".into()],
                ..Default::default()
            }]
        );
    }

    #[test]
    fn workload_header_trace_and_drop_reason_as_hubble() {
        let deployment = |kind: &str, name: &str| Workload {
            kind: kind.into(),
            name: name.into(),
        };
        // --workload is two-sided, [kind/]name as hubble splits it.
        assert_eq!(
            whitelist(&["--workload", "Deployment/deathstar"]).unwrap_or_default(),
            [
                FlowFilter {
                    source_workload: vec![deployment("Deployment", "deathstar")],
                    ..Default::default()
                },
                FlowFilter {
                    destination_workload: vec![deployment("Deployment", "deathstar")],
                    ..Default::default()
                },
            ]
        );
        // Both sides of --from-pod get --to-workload (hubble#1109).
        assert_eq!(
            whitelist(&["--from-pod", "xwing", "--to-workload", "deathstar"]).unwrap_or_default(),
            [FlowFilter {
                source_pod: vec!["xwing".into()],
                destination_workload: vec![deployment("", "deathstar")],
                ..Default::default()
            }]
        );
        assert_eq!(
            whitelist(&["--from-workload", "Deployment/"]).unwrap_or_default()[0].source_workload,
            [deployment("Deployment", "")]
        );
        let err = whitelist(&["--workload", "a", "--to-workload", "b"]).expect_err("conflict");
        assert_eq!(
            format!("{err:#}"),
            "filters --workload and --to-workload cannot be combined"
        );
        let err = whitelist(&["--to-workload", "Deployment/empire/deathstar"]).expect_err("slash");
        assert_eq!(
            format!("{err:#}"),
            "--to-workload: invalid workload \"Deployment/empire/deathstar\": expected [kind/]name, e.g. Deployment/deathstar"
        );

        // --http-header splits at the first colon: values may hold colons.
        let filters = whitelist(&[
            "--http-header",
            "x-request-id:42",
            "--http-header",
            "referer:http://a:8080/",
        ])
        .unwrap_or_default();
        assert_eq!(
            filters,
            [FlowFilter {
                http_header: vec![
                    HttpHeader {
                        key: "x-request-id".into(),
                        value: "42".into(),
                    },
                    HttpHeader {
                        key: "referer".into(),
                        value: "http://a:8080/".into(),
                    },
                ],
                ..Default::default()
            }]
        );
        let err = whitelist(&["--http-header", "x-request-id"]).expect_err("no colon");
        assert_eq!(
            format!("{err:#}"),
            "--http-header: invalid HTTP header \"x-request-id\": expected KEY:VALUE, e.g. x-request-id:42"
        );

        let args = parse(&["--not", "--trace-id", "4bf92f3577b34da6a3ce929d0e0e4736"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            args.blacklist_filters().unwrap_or_default(),
            [FlowFilter {
                trace_id: vec!["4bf92f3577b34da6a3ce929d0e0e4736".into()],
                ..Default::default()
            }]
        );

        assert_eq!(
            whitelist(&["--drop-reason-desc", "POLICY_DENIED"]).unwrap_or_default()[0]
                .drop_reason_desc,
            [DropReason::PolicyDenied as i32]
        );
        let err = whitelist(&["--drop-reason-desc", "TOO_LOUD"]).expect_err("unknown reason");
        assert!(
            format!("{err:#}").starts_with("--drop-reason-desc: unknown drop reason \"TOO_LOUD\""),
            "{err:#}"
        );
        let err = whitelist(&["--drop-reason-desc", ""]).expect_err("empty reason");
        assert!(
            format!("{err:#}").starts_with("--drop-reason-desc: empty drop reason"),
            "{err:#}"
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        let args = parse(&["--not", "--identity", "nobody"]).unwrap_or_else(|e| panic!("{e}"));
        let err = args.blacklist_filters().expect_err("unknown identity");
        let text = format!("{err:#}");
        assert!(
            text.starts_with("--identity: invalid security identity"),
            "{text}"
        );
        assert!(text.contains("world"), "{text}");
    }
}
