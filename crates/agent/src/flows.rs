//! Hubble flows from what the node sees: the kernel programs' events and the
//! proxy's L7 events, with the endpoints' identities, labels and names.

use std::net::{IpAddr, SocketAddr};

use myelin_common::event::{EVENT_FLAG_REPLY, EVENT_FLAG_SERVICE};
use myelin_common::{EventKind, ObservationPoint, PolicyMatch, TraceEvent};
use myelin_observe::proto::flow::{
    DropReason, Endpoint, Flow, Http, HttpHeader, IcmPv4, IcmPv6, Ip, IpVersion, L7FlowType,
    Layer4, Layer7, NetworkInterface, Policy, Service, Tcp, TcpFlags, TraceContext,
    TraceObservationPoint, TraceParent, TrafficDirection, Udp, Verdict, Workload, layer4, layer7,
};
use myelin_policy::labels::{CLUSTER_LABEL, SOURCE_K8S};
use myelin_proxy::event::{L7Event, L7EventKind};

use crate::l7::{FlowHeaders, TRACEPARENT};

/// What the agent knows of the endpoint behind an address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    /// Endpoint id (0 for addresses that are not local pods).
    pub id: u32,
    /// Security identity.
    pub identity: u32,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// The identity's labels (`k8s:app=x` ...).
    pub labels: Vec<String>,
    /// The Deployment (or other controller) the pod belongs to.
    pub workload: Option<String>,
}

impl EndpointMeta {
    /// The cluster of the endpoint, from its identity's cluster label as
    /// Cilium sets it on every pod; reserved and CIDR identities have none.
    fn cluster_name(&self) -> String {
        // Per flow, twice: matched in place, without building the prefix.
        self.labels
            .iter()
            .find_map(|label| {
                label
                    .strip_prefix(SOURCE_K8S)?
                    .strip_prefix(':')?
                    .strip_prefix(CLUSTER_LABEL)?
                    .strip_prefix('=')
            })
            .unwrap_or_default()
            .to_string()
    }

    /// Hubble's endpoint message.
    pub fn to_proto(&self) -> Endpoint {
        Endpoint {
            id: self.id,
            identity: self.identity,
            cluster_name: self.cluster_name(),
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            pod_name: self.pod.clone(),
            workloads: self
                .workload
                .iter()
                .map(|name| Workload {
                    name: name.clone(),
                    kind: "Deployment".to_string(),
                })
                .collect(),
        }
    }
}

/// The Deployment of a pod, from its full labels: a Deployment's pod is
/// named `<deployment>-<template hash>-<suffix>` and carries the
/// `pod-template-hash` label (which identities leave out, as volatile).
pub fn workload_of(
    pod: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    let hash = labels.get("pod-template-hash")?;
    pod.split_once(&format!("-{hash}-"))
        .map(|(name, _)| name.to_string())
}

fn ip_version(address: IpAddr) -> i32 {
    match address {
        IpAddr::V4(_) => IpVersion::IPv4 as i32,
        IpAddr::V6(_) => IpVersion::IPv6 as i32,
    }
}

fn tcp(source: SocketAddr, destination: SocketAddr) -> Layer4 {
    Layer4 {
        protocol: Some(layer4::Protocol::Tcp(Tcp {
            source_port: u32::from(source.port()),
            destination_port: u32::from(destination.port()),
            flags: None,
        })),
    }
}

/// What the node knows of a proxy event's peer; the proxy's own view of
/// the identity wins (the proxy saw the connection's real client).
fn peer_meta(peer: &myelin_proxy::event::Peer, context: &impl FlowContext) -> EndpointMeta {
    let mut meta = context.endpoint(peer.address.ip());
    if let Some(identity) = peer.identity
        && identity != meta.identity
    {
        meta.identity = identity;
        meta.labels = context.identity_labels(identity);
    }
    meta
}

/// The trace id of a W3C `traceparent` value (`version-traceid-parentid-flags`, all
/// lower-case hex), or `None` when the value is not valid trace context: a wrong length
/// or case, version `ff`, an all-zero trace or parent id, or anything after the flags of
/// version `00` (later versions may append fields).
fn trace_id(traceparent: &str) -> Option<&str> {
    let mut fields = traceparent.split('-');
    let mut field = |len: usize| {
        fields.next().filter(|f| {
            f.len() == len
                && f.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    };
    let version = field(2)?;
    let trace = field(32)?;
    let parent = field(16)?;
    field(2)?;
    let zero = |id: &str| id.bytes().all(|b| b == b'0');
    let extra = fields.next().is_some();
    let invalid = version == "ff" || (version == "00" && extra) || zero(trace) || zero(parent);
    (!invalid).then_some(trace)
}

/// The flow of one proxy event, showing the HTTP headers named in `headers`.
pub fn l7_flow(event: &L7Event, context: &impl FlowContext, headers: &FlowHeaders) -> Flow {
    let (source, destination) = (&event.source, &event.destination);
    let source_meta = peer_meta(source, context);
    let destination_meta = peer_meta(destination, context);
    let mut flow = Flow {
        time: Some(prost_types::Timestamp {
            seconds: (event.time_unix_nanos / 1_000_000_000) as i64,
            nanos: (event.time_unix_nanos % 1_000_000_000) as i32,
        }),
        verdict: match event.verdict {
            myelin_proxy::event::Verdict::Forwarded => Verdict::Forwarded as i32,
            myelin_proxy::event::Verdict::Dropped => Verdict::Dropped as i32,
        },
        ip: Some(Ip {
            source: source.address.ip().to_string(),
            destination: destination.address.ip().to_string(),
            ip_version: ip_version(source.address.ip()),
            ..Ip::default()
        }),
        l4: Some(tcp(source.address, destination.address)),
        source: Some(source_meta.to_proto()),
        destination: Some(destination_meta.to_proto()),
        is_reply: Some(event.is_reply),
        traffic_direction: match event.direction {
            myelin_proxy::config::Direction::Ingress => TrafficDirection::Ingress as i32,
            myelin_proxy::config::Direction::Egress => TrafficDirection::Egress as i32,
        },
        node_labels: context.node_labels(),
        ..Flow::default()
    };
    let l7_type = match event.kind {
        L7EventKind::HttpRequest => L7FlowType::Request,
        L7EventKind::HttpResponse => L7FlowType::Response,
        L7EventKind::NonHttp => L7FlowType::Request,
    };
    // The proxy reports a response with its request's traceparent first, so a response
    // belongs to the trace of the request it answers, whatever the server sent back.
    flow.trace_context = event
        .http
        .iter()
        .flat_map(|http| &http.headers)
        .find(|h| h.key == TRACEPARENT)
        .and_then(|h| trace_id(&h.value))
        .map(|id| TraceContext {
            parent: Some(TraceParent {
                trace_id: id.to_string(),
            }),
        });
    let record = event.http.as_ref().map(|http| {
        let mut shown: Vec<HttpHeader> = http
            .headers
            .iter()
            .filter(|h| headers.shows(&h.key))
            .map(|h| HttpHeader {
                key: h.key.clone(),
                value: h.value.clone(),
            })
            .collect();
        // Hubble lists headers by name; a stable sort keeps a name's values in order.
        shown.sort_by(|a, b| a.key.cmp(&b.key));
        layer7::Record::Http(Http {
            code: u32::from(http.code),
            method: http.method.clone(),
            url: http.url.clone(),
            protocol: http.protocol.clone(),
            headers: shown,
        })
    });
    myelin_observe::flows::mark_l7(
        &mut flow,
        Layer7 {
            r#type: l7_type as i32,
            latency_ns: event.latency_ns.unwrap_or(0),
            record,
        },
    );
    if let Some(summary) = &event.summary {
        flow.summary = summary.clone();
    }
    myelin_observe::flows::complete(&mut flow);
    flow
}

/// CLOCK_MONOTONIC in nanoseconds: the kernel programs' clock
/// (bpf_ktime_get_ns).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Converts the kernel's monotonic timestamps (bpf_ktime_get_ns) to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct KernelClock {
    offset_ns: i128,
}

impl KernelClock {
    /// The offset between the monotonic clock and the wall clock, now.
    pub fn now() -> Self {
        let monotonic = i128::from(monotonic_ns());
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Self {
            offset_ns: wall - monotonic,
        }
    }

    /// The wall-clock time of a kernel timestamp.
    pub fn timestamp(&self, ktime_ns: u64) -> prost_types::Timestamp {
        let ns = i128::from(ktime_ns) + self.offset_ns;
        prost_types::Timestamp {
            seconds: (ns / 1_000_000_000) as i64,
            nanos: (ns % 1_000_000_000) as i32,
        }
    }
}

fn address(bytes: &[u8; 16], version: u8) -> IpAddr {
    if version == 4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

/// What the node knows, for turning kernel events into flows.
pub trait FlowContext {
    /// The endpoint (or identity) behind an address.
    fn endpoint(&self, ip: IpAddr) -> EndpointMeta;
    /// The policy rule behind a rule id of a policy-verdict event.
    fn rule(&self, id: u32) -> Option<myelin_policy::Provenance>;
    /// The service (namespace, name) of a cluster IP and port.
    fn service(&self, frontend: SocketAddr) -> Option<(String, String)>;
    /// The labels of an identity.
    fn identity_labels(&self, identity: u32) -> Vec<String>;
    /// The pods of this node that carry `identity`, as one endpoint: the
    /// pod when there is one, the shared workload when there are several.
    fn local_identity(&self, identity: u32) -> Option<EndpointMeta>;
    /// The host-side interface (veth) of a pod of this node, by endpoint id;
    /// none known unless the context indexes them.
    fn interface_name(&self, _endpoint_id: u32) -> Option<String> {
        None
    }
    /// This node's labels, `key=value` (Flow.node_labels); none unless the
    /// context knows the node.
    fn node_labels(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The labels of node `name` that the agent knows to be true: those the
/// kubelet gives every node (Cilium reads them from the Node object, which
/// the lab's nodes do not have).
pub fn node_labels(name: &str) -> Vec<String> {
    vec![
        format!("kubernetes.io/hostname={name}"),
        "kubernetes.io/os=linux".to_string(),
    ]
}

/// The interface a kernel event was seen on: its index, and the pod's
/// veth name when the event names the pod behind it.
fn interface(event: &TraceEvent, context: &impl FlowContext) -> Option<NetworkInterface> {
    (event.ifindex != 0).then(|| NetworkInterface {
        index: event.ifindex,
        name: context
            .interface_name(event.endpoint_id)
            .unwrap_or_default(),
    })
}

fn l4(event: &TraceEvent) -> Option<layer4::Protocol> {
    let flags = event.tcp_flags;
    match event.protocol {
        6 => Some(layer4::Protocol::Tcp(Tcp {
            source_port: u32::from(event.source_port),
            destination_port: u32::from(event.destination_port),
            flags: Some(TcpFlags {
                fin: flags & 0x01 != 0,
                syn: flags & 0x02 != 0,
                rst: flags & 0x04 != 0,
                psh: flags & 0x08 != 0,
                ack: flags & 0x10 != 0,
                urg: flags & 0x20 != 0,
                ece: flags & 0x40 != 0,
                cwr: flags & 0x80 != 0,
                ns: false,
            }),
        })),
        17 => Some(layer4::Protocol::Udp(Udp {
            source_port: u32::from(event.source_port),
            destination_port: u32::from(event.destination_port),
        })),
        1 => Some(layer4::Protocol::IcmPv4(IcmPv4 {
            r#type: u32::from(event.icmp_type),
            code: u32::from(event.icmp_code),
        })),
        58 => Some(layer4::Protocol::IcmPv6(IcmPv6 {
            r#type: u32::from(event.icmp_type),
            code: u32::from(event.icmp_code),
        })),
        _ => None,
    }
}

fn policy_of(provenance: &myelin_policy::Provenance) -> Policy {
    Policy {
        name: provenance.policy.name.clone(),
        namespace: provenance.policy.namespace.clone(),
        kind: format!("{:?}", provenance.policy.kind),
        ..Policy::default()
    }
}

/// The flow of one kernel event. `None` for events without an IP header
/// (nothing a flow could show).
pub fn kernel_flow(
    event: &TraceEvent,
    clock: &KernelClock,
    context: &impl FlowContext,
) -> Option<Flow> {
    if event.ip_version != 4 && event.ip_version != 6 {
        return None;
    }
    let source = address(&event.source, event.ip_version);
    let destination = address(&event.destination, event.ip_version);
    // The datapath knows identities the address alone does not tell: a
    // cluster IP's backend after reverse NAT, the client behind the proxy.
    let with_identity = |meta: EndpointMeta, identity: u32| {
        if identity == 0 || identity == meta.identity {
            return meta;
        }
        // The proxy's upstream leaves from the node's address with the
        // client's identity: name the client's pod (or workload) by it.
        context.local_identity(identity).unwrap_or(EndpointMeta {
            identity,
            labels: context.identity_labels(identity),
            ..meta
        })
    };
    let source_meta = with_identity(context.endpoint(source), event.source_identity);
    let destination_meta = with_identity(context.endpoint(destination), event.destination_identity);
    let is_reply = event.flags & EVENT_FLAG_REPLY != 0;
    let direction = match event.traffic_direction {
        1 => TrafficDirection::Ingress,
        2 => TrafficDirection::Egress,
        _ => TrafficDirection::Unknown,
    };
    let verdict = match event.verdict {
        2 => Verdict::Dropped,
        5 => Verdict::Redirected,
        _ => Verdict::Forwarded,
    };
    let mut flow = Flow {
        time: Some(clock.timestamp(event.ktime_ns)),
        verdict: verdict as i32,
        ip: Some(Ip {
            source: source.to_string(),
            destination: destination.to_string(),
            ip_version: ip_version(source),
            ..Ip::default()
        }),
        l4: l4(event).map(|protocol| Layer4 {
            protocol: Some(protocol),
        }),
        source: Some(source_meta.to_proto()),
        destination: Some(destination_meta.to_proto()),
        traffic_direction: direction as i32,
        proxy_port: u32::from(event.proxy_port),
        node_labels: context.node_labels(),
        interface: interface(event, context),
        ..Flow::default()
    };
    let service = |ip: IpAddr, port: u16| {
        context
            .service(SocketAddr::new(ip, port))
            .map(|(namespace, name)| Service { name, namespace })
    };
    if event.flags & EVENT_FLAG_SERVICE != 0 && event.service_port != 0 {
        // The service is the side the client addressed: the destination of
        // a request, the source of its replies.
        let named = service(
            address(&event.service_address, event.ip_version),
            event.service_port,
        );
        if is_reply {
            flow.source_service = named;
        } else {
            flow.destination_service = named;
        }
    }
    // A cluster IP on either side (replies after reverse NAT) is named by
    // its service, as Hubble does, rather than shown as a bare address.
    if flow.source_service.is_none() {
        flow.source_service = service(source, event.source_port);
    }
    if flow.destination_service.is_none() {
        flow.destination_service = service(destination, event.destination_port);
    }
    match EventKind::from_u8(event.kind)? {
        EventKind::Trace => {
            let point = match ObservationPoint::from_u8(event.observation_point)? {
                ObservationPoint::ToEndpoint => TraceObservationPoint::ToEndpoint,
                ObservationPoint::ToStack => TraceObservationPoint::ToStack,
                ObservationPoint::ToProxy => TraceObservationPoint::ToProxy,
                ObservationPoint::ToOverlay => TraceObservationPoint::ToOverlay,
            };
            myelin_observe::flows::mark_trace(&mut flow, point);
            flow.is_reply = Some(is_reply);
            // A trace reports a packet that went on; Hubble prints
            // to-proxy FORWARDED, the redirect itself is the verdict's.
            flow.verdict = Verdict::Forwarded as i32;
        }
        EventKind::Drop => {
            let reason =
                DropReason::try_from(i32::from(event.drop_reason)).unwrap_or(DropReason::Unknown);
            myelin_observe::flows::mark_drop(&mut flow, reason);
        }
        EventKind::PolicyVerdict => {
            let matched = PolicyMatch::from_u8(event.match_type).unwrap_or(PolicyMatch::None);
            myelin_observe::flows::mark_policy_verdict(&mut flow, direction, matched, verdict);
            flow.is_reply = Some(false);
            if let Some(rule) = context.rule(event.rule_id) {
                let policies = vec![policy_of(&rule)];
                match (direction, verdict) {
                    (TrafficDirection::Ingress, Verdict::Dropped) => {
                        flow.ingress_denied_by = policies
                    }
                    (TrafficDirection::Ingress, _) => flow.ingress_allowed_by = policies,
                    (_, Verdict::Dropped) => flow.egress_denied_by = policies,
                    (_, _) => flow.egress_allowed_by = policies,
                }
            }
        }
    }
    myelin_observe::flows::complete(&mut flow);
    Some(flow)
}

/// A kernel event for tests: a TCP ACK from `source`:40000 to
/// `destination`:80, traced to the endpoint, on no interface.
#[cfg(test)]
pub(crate) fn tcp_to_endpoint(source: [u8; 4], destination: [u8; 4]) -> TraceEvent {
    let mut event = TraceEvent {
        ktime_ns: 0,
        ifindex: 0,
        len: 60,
        endpoint_id: 0,
        kind: EventKind::Trace as u8,
        observation_point: ObservationPoint::ToEndpoint as u8,
        drop_reason: 0,
        ip_version: 4,
        protocol: 6,
        tcp_flags: 0x10,
        icmp_code: 0,
        flags: 0,
        source_port: 40_000,
        destination_port: 80,
        source: [0; 16],
        destination: [0; 16],
        source_identity: 0,
        destination_identity: 0,
        rule_id: 0,
        service_address: [0; 16],
        service_port: 0,
        proxy_port: 0,
        verdict: 0,
        traffic_direction: 0,
        match_type: 0,
        icmp_type: 0,
        _pad: [0; 4],
    };
    event.source[..4].copy_from_slice(&source);
    event.destination[..4].copy_from_slice(&destination);
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use myelin_proxy::event::{HttpInfo, Peer};

    /// Two pods of the Star Wars demo, as a node would know them.
    struct Pods;

    impl FlowContext for Pods {
        fn endpoint(&self, ip: IpAddr) -> EndpointMeta {
            match ip.to_string().as_str() {
                "10.244.1.2" => EndpointMeta {
                    id: 7,
                    identity: 256,
                    namespace: "default".into(),
                    pod: "deathstar-57ncjppv6c-fdp7q".into(),
                    labels: vec![
                        "k8s:class=deathstar".into(),
                        "k8s:io.cilium.k8s.policy.cluster=default".into(),
                    ],
                    workload: Some("deathstar".into()),
                },
                "10.244.1.4" => EndpointMeta {
                    id: 3,
                    identity: 257,
                    namespace: "default".into(),
                    pod: "tiefighter".into(),
                    labels: vec![
                        "k8s:class=tiefighter".into(),
                        "k8s:io.cilium.k8s.policy.cluster=default".into(),
                    ],
                    workload: None,
                },
                _ => EndpointMeta {
                    identity: myelin_policy::identity::WORLD,
                    labels: vec!["reserved:world".into()],
                    ..EndpointMeta::default()
                },
            }
        }

        fn rule(&self, _: u32) -> Option<myelin_policy::Provenance> {
            None
        }

        fn service(&self, _: SocketAddr) -> Option<(String, String)> {
            None
        }

        fn identity_labels(&self, _: u32) -> Vec<String> {
            Vec::new()
        }

        fn local_identity(&self, _: u32) -> Option<EndpointMeta> {
            None
        }

        fn interface_name(&self, endpoint_id: u32) -> Option<String> {
            (endpoint_id == 7).then(|| "lxc-deathstar".to_string())
        }

        fn node_labels(&self) -> Vec<String> {
            vec!["kubernetes.io/hostname=node1".into()]
        }
    }

    /// A TCP packet from tiefighter to `destination`, seen on `ifindex`
    /// in front of endpoint `endpoint_id`.
    fn to_endpoint(destination: [u8; 4], ifindex: u32, endpoint_id: u32) -> TraceEvent {
        TraceEvent {
            ifindex,
            endpoint_id,
            ..tcp_to_endpoint([10, 244, 1, 4], destination)
        }
    }

    fn cluster_names(flow: &Flow) -> (String, String) {
        let name = |e: &Option<Endpoint>| e.as_ref().map(|e| e.cluster_name.clone());
        (
            name(&flow.source).unwrap_or_default(),
            name(&flow.destination).unwrap_or_default(),
        )
    }

    #[test]
    fn kernel_flows_carry_node_labels_interface_and_cluster_names() {
        let clock = KernelClock::now();
        let flow = kernel_flow(&to_endpoint([10, 244, 1, 2], 12, 7), &clock, &Pods)
            .expect("an IPv4 event makes a flow");
        assert_eq!(flow.node_labels, ["kubernetes.io/hostname=node1"]);
        assert_eq!(
            flow.interface,
            Some(NetworkInterface {
                index: 12,
                name: "lxc-deathstar".into(),
            })
        );
        assert_eq!(
            cluster_names(&flow),
            ("default".to_string(), "default".to_string())
        );

        // A veth of no known pod keeps its index; no ifindex, no interface.
        // World is in no cluster, as in Cilium.
        let flow = kernel_flow(&to_endpoint([8, 8, 8, 8], 5, 0), &clock, &Pods).expect("flow");
        assert_eq!(
            flow.interface,
            Some(NetworkInterface {
                index: 5,
                name: String::new(),
            })
        );
        assert_eq!(cluster_names(&flow), ("default".to_string(), String::new()));
        let flow = kernel_flow(&to_endpoint([10, 244, 1, 2], 0, 7), &clock, &Pods).expect("flow");
        assert_eq!(flow.interface, None);
    }

    #[test]
    fn a_policy_verdict_reports_the_match_type_the_kernel_wrote() {
        let clock = KernelClock::now();
        let event = TraceEvent {
            kind: EventKind::PolicyVerdict as u8,
            traffic_direction: 1,
            verdict: 1,
            match_type: PolicyMatch::L3L4 as u8,
            ..to_endpoint([10, 244, 1, 2], 12, 7)
        };
        let flow = kernel_flow(&event, &clock, &Pods).expect("flow");
        assert_eq!(flow.policy_match_type, PolicyMatch::L3L4 as u32);
        let unknown = TraceEvent {
            match_type: 99,
            ..event
        };
        let flow = kernel_flow(&unknown, &clock, &Pods).expect("flow");
        assert_eq!(flow.policy_match_type, PolicyMatch::None as u32);
    }

    #[test]
    fn proxy_flows_carry_node_labels_and_cluster_names() {
        let flow = l7_flow(
            &exchange(L7EventKind::HttpRequest, vec![]),
            &Pods,
            &FlowHeaders::default(),
        );
        assert_eq!(flow.node_labels, ["kubernetes.io/hostname=node1"]);
        assert_eq!(
            cluster_names(&flow),
            ("default".to_string(), "default".to_string())
        );
        // The node's --node-label and --cluster filters select it.
        let filters = myelin_observe::FilterSet::new(
            &[myelin_observe::proto::flow::FlowFilter {
                node_labels: vec!["kubernetes.io/hostname=node1".into()],
                source_cluster_name: vec!["default".into()],
                ..Default::default()
            }],
            &[],
        )
        .expect("filters");
        assert!(filters.matches(&flow));
    }

    fn peer(address: &str, identity: u32) -> Peer {
        Peer {
            address: address.parse().expect("address"),
            identity: Some(identity),
        }
    }

    #[test]
    fn a_denied_request_reads_like_hubble() {
        let event = L7Event {
            time_unix_nanos: 1_700_000_000_123_000_000,
            kind: L7EventKind::HttpRequest,
            verdict: myelin_proxy::event::Verdict::Dropped,
            direction: myelin_proxy::config::Direction::Ingress,
            is_reply: false,
            source: peer("10.244.1.4:42742", 257),
            destination: peer("10.244.1.2:80", 256),
            http: Some(HttpInfo {
                code: 0,
                method: "PUT".into(),
                url: "http://deathstar.default.svc.cluster.local/v1/exhaust-port".into(),
                protocol: "HTTP/1.1".into(),
                headers: vec![],
            }),
            latency_ns: None,
            summary: None,
        };
        let flow = l7_flow(&event, &Pods, &FlowHeaders::default());
        assert_eq!(flow.verdict, Verdict::Dropped as i32);
        assert_eq!(flow.destination.as_ref().map(|d| d.id), Some(7));
        let workloads = flow
            .destination
            .as_ref()
            .map(|d| d.workloads.clone())
            .unwrap_or_default();
        assert_eq!(workloads[0].name, "deathstar");
        assert_eq!(
            flow.summary,
            "HTTP/1.1 PUT http://deathstar.default.svc.cluster.local/v1/exhaust-port"
        );
        let line =
            myelin_observe::printer::compact_line(&flow, &myelin_observe::PrintOptions::default());
        assert!(
            line.contains("default/tiefighter:42742 (ID:257) -> default/deathstar-57ncjppv6c-fdp7q:80 (ID:256) http-request DROPPED"),
            "{line}"
        );
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const TRACEPARENT_VALUE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn trace_ids_of_valid_traceparent_values_only() {
        assert_eq!(trace_id(TRACEPARENT_VALUE), Some(TRACE));
        // A later version may append fields after the flags.
        assert_eq!(
            trace_id("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra"),
            Some(TRACE)
        );
        for invalid in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736x-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert_eq!(trace_id(invalid), None, "{invalid:?}");
        }
    }

    fn header(key: &str, value: &str) -> myelin_proxy::event::HeaderPair {
        myelin_proxy::event::HeaderPair {
            key: key.into(),
            value: value.into(),
        }
    }

    fn exchange(kind: L7EventKind, headers: Vec<myelin_proxy::event::HeaderPair>) -> L7Event {
        let reply = kind == L7EventKind::HttpResponse;
        let (client, server) = (peer("10.244.1.4:42742", 257), peer("10.244.1.2:80", 256));
        let (source, destination) = if reply {
            (server, client)
        } else {
            (client, server)
        };
        L7Event {
            time_unix_nanos: 1_700_000_000_123_000_000,
            kind,
            verdict: myelin_proxy::event::Verdict::Forwarded,
            direction: myelin_proxy::config::Direction::Ingress,
            is_reply: reply,
            source,
            destination,
            http: Some(HttpInfo {
                code: if reply { 200 } else { 0 },
                method: "POST".into(),
                url: "http://deathstar.default.svc.cluster.local/v1/request-landing".into(),
                protocol: "HTTP/1.1".into(),
                headers,
            }),
            latency_ns: reply.then_some(1_000_000),
            summary: None,
        }
    }

    fn trace_of(flow: &Flow) -> Option<&str> {
        flow.trace_context
            .as_ref()
            .and_then(|t| t.parent.as_ref())
            .map(|p| p.trace_id.as_str())
    }

    fn shown(flow: &Flow) -> Vec<(String, String)> {
        match flow.l7.as_ref().and_then(|l7| l7.record.as_ref()) {
            Some(layer7::Record::Http(http)) => http
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn requests_and_their_responses_carry_the_request_trace_context() {
        let request = exchange(
            L7EventKind::HttpRequest,
            vec![
                header("x-request-id", "42"),
                header("traceparent", TRACEPARENT_VALUE),
            ],
        );
        let flow = l7_flow(&request, &Pods, &FlowHeaders::default());
        assert_eq!(trace_of(&flow), Some(TRACE));
        assert_eq!(
            shown(&flow),
            [("traceparent".to_string(), TRACEPARENT_VALUE.to_string())],
            "only the headers named"
        );
        // The proxy puts the request's traceparent first; the server's own comes after.
        let response = exchange(
            L7EventKind::HttpResponse,
            vec![
                header("traceparent", TRACEPARENT_VALUE),
                header(
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
        );
        let flow = l7_flow(&response, &Pods, &FlowHeaders::default());
        assert_eq!(trace_of(&flow), Some(TRACE));
        assert_eq!(
            flow.l7.as_ref().map(|l7| l7.r#type),
            Some(L7FlowType::Response as i32)
        );
    }

    #[test]
    fn headers_shown_are_the_ones_named_sorted_and_trace_context_needs_no_listing() {
        let named = FlowHeaders::new(["X-Request-Id", "user-agent"]).expect("names");
        let request = exchange(
            L7EventKind::HttpRequest,
            vec![
                header("x-request-id", "42"),
                header("traceparent", TRACEPARENT_VALUE),
                header("user-agent", "curl/8"),
            ],
        );
        let flow = l7_flow(&request, &Pods, &named);
        assert_eq!(trace_of(&flow), Some(TRACE));
        assert_eq!(
            shown(&flow),
            [
                ("user-agent".to_string(), "curl/8".to_string()),
                ("x-request-id".to_string(), "42".to_string()),
            ]
        );
        // As Hubble's JSON output shows them.
        let json = myelin_observe::json::flow_to_json(&flow);
        assert_eq!(json["trace_context"]["parent"]["trace_id"], TRACE, "{json}");
        assert_eq!(
            json["l7"]["http"]["headers"][1]["key"], "x-request-id",
            "{json}"
        );
    }

    #[test]
    fn an_invalid_traceparent_gives_no_trace_context_but_is_still_shown() {
        let request = exchange(
            L7EventKind::HttpRequest,
            vec![header(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )],
        );
        let flow = l7_flow(&request, &Pods, &FlowHeaders::default());
        assert_eq!(flow.trace_context, None);
        assert_eq!(shown(&flow).len(), 1);
    }

    #[test]
    fn deployment_pods_name_their_workload() {
        let labels = [("pod-template-hash".to_string(), "57ncjppv6c".to_string())]
            .into_iter()
            .collect();
        assert_eq!(
            workload_of("deathstar-57ncjppv6c-fdp7q", &labels).as_deref(),
            Some("deathstar")
        );
        assert_eq!(workload_of("xwing", &Default::default()), None);
    }
}
