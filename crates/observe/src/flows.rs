//! Helpers that make building correct Hubble flows easy for the agent: the
//! monitor message types, the texts Hubble derives from numeric codes, and
//! the `Summary` line of L3/L4 and L7 flows.

use crate::proto::flow::{
    CiliumEventType, DropReason, Flow, FlowType, Http, Layer4, Layer7, TcpFlags,
    TraceObservationPoint, TrafficDirection, Verdict, layer4, layer7,
};

/// Monitor message type of drop events (Cilium's `MessageTypeDrop`).
pub const MESSAGE_TYPE_DROP: i32 = 1;
/// Monitor message type of debug events.
pub const MESSAGE_TYPE_DEBUG: i32 = 2;
/// Monitor message type of debug capture events.
pub const MESSAGE_TYPE_CAPTURE: i32 = 3;
/// Monitor message type of trace events.
pub const MESSAGE_TYPE_TRACE: i32 = 4;
/// Monitor message type of policy verdict events.
pub const MESSAGE_TYPE_POLICY_VERDICT: i32 = 5;
/// Monitor message type of socket trace events.
pub const MESSAGE_TYPE_TRACE_SOCK: i32 = 7;
/// Monitor message type of L7 access log records (proxy events).
pub const MESSAGE_TYPE_ACCESS_LOG: i32 = 129;
/// Monitor message type of agent notifications.
pub const MESSAGE_TYPE_AGENT: i32 = 130;

/// Trace observation points with their datapath subtype code and Hubble name.
///
/// The subtype code is what the datapath puts in trace events and what
/// `EventTypeFilter.sub_type` matches; it differs from the proto enum value
/// for `to-endpoint` (code 0, enum 101).
const TRACE_POINTS: [(i32, TraceObservationPoint, &str); 14] = [
    (0, TraceObservationPoint::ToEndpoint, "to-endpoint"),
    (1, TraceObservationPoint::ToProxy, "to-proxy"),
    (2, TraceObservationPoint::ToHost, "to-host"),
    (3, TraceObservationPoint::ToStack, "to-stack"),
    (4, TraceObservationPoint::ToOverlay, "to-overlay"),
    (5, TraceObservationPoint::FromEndpoint, "from-endpoint"),
    (6, TraceObservationPoint::FromProxy, "from-proxy"),
    (7, TraceObservationPoint::FromHost, "from-host"),
    (8, TraceObservationPoint::FromStack, "from-stack"),
    (9, TraceObservationPoint::FromOverlay, "from-overlay"),
    (10, TraceObservationPoint::FromNetwork, "from-network"),
    (11, TraceObservationPoint::ToNetwork, "to-network"),
    (12, TraceObservationPoint::FromCrypto, "from-crypto"),
    (13, TraceObservationPoint::ToCrypto, "to-crypto"),
];

/// The datapath subtype code of a trace observation point.
pub fn trace_subtype(point: TraceObservationPoint) -> i32 {
    TRACE_POINTS
        .iter()
        .find(|(_, p, _)| *p == point)
        .map_or(0, |(code, _, _)| *code)
}

/// Hubble's name of a trace subtype code ("to-endpoint", "from-proxy", ...).
pub fn trace_subtype_name(code: i32) -> String {
    TRACE_POINTS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map_or_else(|| code.to_string(), |(_, _, name)| (*name).to_string())
}

/// The trace subtype code for a Hubble name, as `--type trace:NAME` uses it.
pub fn trace_subtype_by_name(name: &str) -> Option<i32> {
    TRACE_POINTS
        .iter()
        .find(|(_, _, n)| *n == name)
        .map(|(code, _, _)| *code)
}

/// The text Cilium prints for a drop reason code, e.g. "Policy denied" for 133.
pub fn drop_reason_text(code: u32) -> String {
    let text = match code {
        130 => "Invalid source mac",
        131 => "Invalid destination mac",
        132 => "Invalid source ip",
        133 => "Policy denied",
        134 => "Invalid packet",
        135 => "CT: Truncated or invalid header",
        136 => "CT: Missing TCP ACK flag",
        137 => "CT: Unknown L4 protocol",
        138 => "CT: Can't create entry from packet",
        139 => "Unsupported L3 protocol",
        140 => "Missed tail call",
        141 => "Error writing to packet",
        142 => "Unknown L4 protocol",
        143 => "Unknown ICMPv4 code",
        144 => "Unknown ICMPv4 type",
        145 => "Unknown ICMPv6 code",
        146 => "Unknown ICMPv6 type",
        147 => "Error retrieving tunnel key",
        148 => "Error retrieving tunnel options",
        149 => "Invalid Geneve option",
        150 => "Unknown L3 target address",
        151 => "Stale or unroutable IP",
        152 => "No matching local container found",
        153 => "Error while correcting L3 checksum",
        154 => "Error while correcting L4 checksum",
        155 => "CT: Map insertion failed",
        156 => "Invalid IPv6 extension header",
        157 => "IP fragmentation not supported",
        158 => "Service backend not found",
        160 => "No tunnel/encapsulation endpoint (datapath BUG!)",
        161 => "NAT 46/64 not enabled",
        162 => "Reached EDT rate-limiting drop horizon",
        163 => "Unknown connection tracking state",
        164 => "Local host is unreachable",
        165 => "No configuration available to perform policy decision",
        166 => "Unsupported L2 protocol",
        167 => "No mapping for NAT masquerade",
        168 => "Unsupported protocol for NAT masquerade",
        169 => "FIB lookup failed",
        170 => "Encapsulation traffic is prohibited",
        171 => "Invalid identity",
        172 => "Unknown sender",
        173 => "NAT not needed",
        174 => "Is a ClusterIP",
        175 => "First logical datagram fragment not found",
        176 => "Forbidden ICMPv6 message",
        177 => "Denied by LB src range check",
        178 => "Socket lookup failed",
        179 => "Socket assign failed",
        180 => "Proxy redirection not supported for protocol",
        181 => "Policy denied by denylist",
        182 => "VLAN traffic disallowed by VLAN filter",
        183 => "Incorrect VNI from VTEP",
        184 => "Failed to update or lookup TC buffer",
        185 => "No SID was found for the IP address",
        186 => "SRv6 state was removed during tail call",
        187 => "L3 translation from IPv4 to IPv6 failed (NAT46)",
        188 => "L3 translation from IPv6 to IPv4 failed (NAT64)",
        189 => "Authentication required",
        190 => "No conntrack map found",
        191 => "No nat map found",
        192 => "Invalid ClusterID",
        193 => "Unsupported packet protocol for DSR encapsulation",
        194 => "No egress gateway found",
        196 => "TTL exceeded",
        197 => "No node ID found",
        202 => "Host datapath not ready",
        203 => "Endpoint policy program not available",
        other => return other.to_string(),
    };
    text.to_string()
}

pub use myelin_common::PolicyMatch;

/// Cilium's name of a policy match type (`Flow.policy_match_type`).
pub fn policy_match_text(match_type: u32) -> &'static str {
    u8::try_from(match_type)
        .ok()
        .and_then(PolicyMatch::from_u8)
        .map_or("unknown", PolicyMatch::name)
}

/// Names of TCP flags in the order Hubble prints them.
pub fn tcp_flags_text(flags: &TcpFlags) -> String {
    let named = [
        (flags.syn, "SYN"),
        (flags.ack, "ACK"),
        (flags.rst, "RST"),
        (flags.fin, "FIN"),
        (flags.psh, "PSH"),
        (flags.urg, "URG"),
        (flags.ece, "ECE"),
        (flags.cwr, "CWR"),
        (flags.ns, "NS"),
    ];
    named
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// ICMPv4 type/code names as Go's gopacket prints them.
fn icmpv4_text(icmp_type: u32, code: u32) -> String {
    let name = match (icmp_type, code) {
        (0, _) => "EchoReply".to_string(),
        (3, 0) => "DestinationUnreachable(Net)".to_string(),
        (3, 1) => "DestinationUnreachable(Host)".to_string(),
        (3, 2) => "DestinationUnreachable(Protocol)".to_string(),
        (3, 3) => "DestinationUnreachable(Port)".to_string(),
        (3, 4) => "DestinationUnreachable(FragmentationNeeded)".to_string(),
        (3, c) => format!("DestinationUnreachable(Code: {c})"),
        (5, _) => "Redirect".to_string(),
        (8, _) => "EchoRequest".to_string(),
        (11, 0) => "TimeExceeded(TTLExceeded)".to_string(),
        (11, _) => "TimeExceeded".to_string(),
        (t, c) => format!("{t}(Code: {c})"),
    };
    format!("ICMPv4 {name}")
}

/// ICMPv6 type/code names as Go's gopacket prints them.
fn icmpv6_text(icmp_type: u32, code: u32) -> String {
    let name = match (icmp_type, code) {
        (1, 4) => "DestinationUnreachable(PortUnreachable)".to_string(),
        (1, _) => "DestinationUnreachable".to_string(),
        (2, _) => "PacketTooBig".to_string(),
        (3, _) => "TimeExceeded".to_string(),
        (128, _) => "EchoRequest".to_string(),
        (129, _) => "EchoReply".to_string(),
        (133, _) => "RouterSolicitation".to_string(),
        (134, _) => "RouterAdvertisement".to_string(),
        (135, _) => "NeighborSolicitation".to_string(),
        (136, _) => "NeighborAdvertisement".to_string(),
        (t, c) => format!("{t}(Code: {c})"),
    };
    format!("ICMPv6 {name}")
}

/// The summary of an L3/L4 flow: "TCP Flags: SYN", "UDP", "ICMPv4 EchoRequest".
pub fn l34_summary(l4: Option<&Layer4>) -> String {
    match l4.and_then(|l4| l4.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(tcp)) => match &tcp.flags {
            Some(flags) if !tcp_flags_text(flags).is_empty() => {
                format!("TCP Flags: {}", tcp_flags_text(flags))
            }
            _ => "TCP".to_string(),
        },
        Some(layer4::Protocol::Udp(_)) => "UDP".to_string(),
        Some(layer4::Protocol::Sctp(_)) => "SCTP".to_string(),
        Some(layer4::Protocol::IcmPv4(icmp)) => icmpv4_text(icmp.r#type, icmp.code),
        Some(layer4::Protocol::IcmPv6(icmp)) => icmpv6_text(icmp.r#type, icmp.code),
        None => "IP".to_string(),
    }
}

/// The summary of an HTTP request: "HTTP/1.1 POST http://host/path".
pub fn http_request_summary(http: &Http) -> String {
    format!("{} {} {}", http.protocol, http.method, http.url)
}

/// The summary of an HTTP response: "HTTP/1.1 200 3ms (GET http://host/path)".
pub fn http_response_summary(http: &Http, latency_ns: u64) -> String {
    format!(
        "{} {} {}ms ({} {})",
        http.protocol,
        http.code,
        latency_ns / 1_000_000,
        http.method,
        http.url
    )
}

/// The summary of an L7 record as Hubble's L7 parser writes it.
pub fn l7_summary(l7: &Layer7) -> String {
    let response = l7.r#type == crate::proto::flow::L7FlowType::Response as i32;
    match &l7.record {
        Some(layer7::Record::Http(http)) if response => http_response_summary(http, l7.latency_ns),
        Some(layer7::Record::Http(http)) => http_request_summary(http),
        Some(layer7::Record::Dns(dns)) => {
            let qtypes = dns.qtypes.join(",");
            if !response {
                format!("DNS Query {} {}", dns.query, qtypes)
            } else if dns.rcode != 0 {
                format!(
                    "DNS Answer RCode: {} TTL: {} (Query {} {})",
                    dns.rcode, dns.ttl, dns.query, qtypes
                )
            } else {
                let cnames = if dns.cnames.is_empty() {
                    String::new()
                } else {
                    format!(" CNAMEs: \"{}\"", dns.cnames.join(","))
                };
                format!(
                    "DNS Answer \"{}\"{} TTL: {} (Query {} {})",
                    dns.ips.join(","),
                    cnames,
                    dns.ttl,
                    dns.query,
                    qtypes
                )
            }
        }
        Some(layer7::Record::Kafka(kafka)) => format!(
            "Kafka {} topic '{}' version {} error {}",
            kafka.api_key, kafka.topic, kafka.api_version, kafka.error_code
        ),
        None => String::new(),
    }
}

/// Sets `event_type` and the type-specific fields of a trace flow.
pub fn mark_trace(flow: &mut Flow, point: TraceObservationPoint) {
    flow.event_type = Some(CiliumEventType {
        r#type: MESSAGE_TYPE_TRACE,
        sub_type: trace_subtype(point),
    });
    flow.trace_observation_point = point as i32;
    flow.r#type = FlowType::L3L4 as i32;
}

/// Sets `event_type`, verdict and drop reason fields of a drop flow.
pub fn mark_drop(flow: &mut Flow, reason: DropReason) {
    let code = reason as i32;
    flow.event_type = Some(CiliumEventType {
        r#type: MESSAGE_TYPE_DROP,
        sub_type: code,
    });
    flow.verdict = Verdict::Dropped as i32;
    flow.drop_reason_desc = code;
    // The deprecated numeric field still feeds older clients and printers.
    flow.drop_reason = u32::try_from(code).unwrap_or_default();
    flow.r#type = FlowType::L3L4 as i32;
}

/// Sets the fields of a policy verdict flow (direction, match type, verdict).
pub fn mark_policy_verdict(
    flow: &mut Flow,
    direction: TrafficDirection,
    matched: PolicyMatch,
    verdict: Verdict,
) {
    flow.event_type = Some(CiliumEventType {
        r#type: MESSAGE_TYPE_POLICY_VERDICT,
        sub_type: 0,
    });
    flow.traffic_direction = direction as i32;
    flow.policy_match_type = matched as u32;
    flow.verdict = verdict as i32;
    if verdict == Verdict::Dropped {
        flow.drop_reason_desc = DropReason::PolicyDenied as i32;
        flow.drop_reason = DropReason::PolicyDenied as u32;
    }
    flow.r#type = FlowType::L3L4 as i32;
}

/// Sets `event_type`, `Type` and `l7` of an L7 flow from the proxy.
pub fn mark_l7(flow: &mut Flow, l7: Layer7) {
    flow.event_type = Some(CiliumEventType {
        r#type: MESSAGE_TYPE_ACCESS_LOG,
        sub_type: 0,
    });
    flow.r#type = FlowType::L7 as i32;
    flow.l7 = Some(l7);
}

/// Fills what the agent may leave empty: the summary (from L7 or L4), the
/// deprecated `reply` flag (from `is_reply`) and `Type` (from L7 presence).
pub fn complete(flow: &mut Flow) {
    if flow.summary.is_empty() {
        flow.summary = match &flow.l7 {
            Some(l7) => l7_summary(l7),
            None => l34_summary(flow.l4.as_ref()),
        };
    }
    flow.reply = flow.is_reply.unwrap_or(false);
    if flow.r#type == FlowType::UnknownType as i32 {
        flow.r#type = if flow.l7.is_some() {
            FlowType::L7 as i32
        } else {
            FlowType::L3L4 as i32
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::flow::{L7FlowType, Tcp};

    #[test]
    fn policy_match_types_have_cilium_names_and_others_are_unknown() {
        let names: Vec<&str> = (0..=7).map(policy_match_text).collect();
        assert_eq!(
            names,
            [
                "none",
                "L3-Only",
                "L3-L4",
                "L4-Only",
                "all",
                "L3-Proto",
                "Proto-Only",
                "unknown"
            ]
        );
        assert_eq!(policy_match_text(256 + 2), "unknown");
    }

    #[test]
    fn tcp_flag_order_matches_hubble() {
        let flags = TcpFlags {
            fin: true,
            syn: true,
            ack: true,
            ..Default::default()
        };
        assert_eq!(tcp_flags_text(&flags), "SYN, ACK, FIN");
        let l4 = Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 1,
                destination_port: 2,
                flags: Some(flags),
            })),
        };
        assert_eq!(l34_summary(Some(&l4)), "TCP Flags: SYN, ACK, FIN");
    }

    #[test]
    fn trace_codes_round_trip() {
        assert_eq!(trace_subtype(TraceObservationPoint::ToEndpoint), 0);
        assert_eq!(trace_subtype_name(0), "to-endpoint");
        assert_eq!(trace_subtype_by_name("to-proxy"), Some(1));
        assert_eq!(drop_reason_text(133), "Policy denied");
        assert_eq!(drop_reason_text(181), "Policy denied by denylist");
    }

    #[test]
    fn http_summaries() {
        let http = Http {
            code: 200,
            method: "POST".into(),
            url: "http://deathstar.default.svc.cluster.local/v1/request-landing".into(),
            protocol: "HTTP/1.1".into(),
            headers: vec![],
        };
        let l7 = Layer7 {
            r#type: L7FlowType::Response as i32,
            latency_ns: 1_500_000,
            record: Some(layer7::Record::Http(http)),
        };
        assert_eq!(
            l7_summary(&l7),
            "HTTP/1.1 200 1ms (POST http://deathstar.default.svc.cluster.local/v1/request-landing)"
        );
    }
}
