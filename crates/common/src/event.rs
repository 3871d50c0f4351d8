//! Records written by the kernel programs to the event ring buffer.
//!
//! Numbers follow Cilium's monitor and Hubble, so that flows read the same:
//! event kinds are monitor message types, observation points are the
//! datapath's trace codes (as `EventTypeFilter.sub_type` matches them), drop
//! reasons are Cilium's (`pkg/monitor/api/drop.go`), verdicts and traffic
//! directions are Hubble's `flow.Verdict` and `flow.TrafficDirection`.

/// What a record reports (Cilium's monitor message type).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A packet was dropped; `drop_reason` says why.
    Drop = 1,
    /// A packet was seen at an observation point and passed on.
    Trace = 4,
    /// A policy decision on the first packet of a flow.
    PolicyVerdict = 5,
}

impl EventKind {
    /// Decodes the wire value; `None` for a value this build does not know.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Drop),
            4 => Some(Self::Trace),
            5 => Some(Self::PolicyVerdict),
            _ => None,
        }
    }
}

/// Where a packet was observed: the datapath's trace code, which Hubble maps
/// to `TraceObservationPoint` (code 0 is `TO_ENDPOINT` = 101 in the proto).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservationPoint {
    /// Delivered to a local pod (the pod's veth, towards the pod).
    ToEndpoint = 0,
    /// Handed to the node's L7 proxy.
    ToProxy = 1,
    /// Left a local pod into the node's stack (the pod's veth, from the pod).
    ToStack = 3,
    /// Left a local pod into the overlay, to a pod of another node (the
    /// pod's veth, from the pod; tunnel mode).
    ToOverlay = 4,
}

impl ObservationPoint {
    /// Decodes the wire value.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::ToEndpoint),
            1 => Some(Self::ToProxy),
            3 => Some(Self::ToStack),
            4 => Some(Self::ToOverlay),
            _ => None,
        }
    }

    /// Hubble's name for the point.
    pub fn name(self) -> &'static str {
        match self {
            Self::ToEndpoint => "to-endpoint",
            Self::ToStack => "to-stack",
            Self::ToProxy => "to-proxy",
            Self::ToOverlay => "to-overlay",
        }
    }
}

/// Hubble's `flow.Verdict`.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Passed on.
    Forwarded = 1,
    /// Dropped.
    Dropped = 2,
    /// Handed to the L7 proxy.
    Redirected = 5,
}

/// Hubble's `flow.TrafficDirection`: of the endpoint an event was reported
/// for (see [`TraceEvent::traffic_direction`]).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficDirection {
    /// Into the endpoint (its ingress policy; a packet `to_container` sees).
    Ingress = 1,
    /// Out of the endpoint (its egress policy; a packet `from_container` sees).
    Egress = 2,
}

/// Cilium's drop reasons used by Myelin (`pkg/monitor/api/drop.go`).
pub mod drop_reason {
    /// The source address is not the sending endpoint's.
    pub const INVALID_SOURCE_IP: u8 = 132;
    /// No policy entry allows the flow (default deny).
    pub const POLICY_DENIED: u8 = 133;
    /// The L3 header is malformed (e.g. IPv4 IHL below 5).
    pub const INVALID_PACKET: u8 = 134;
    /// The L4 header is truncated, so the flow cannot be tracked.
    pub const CT_TRUNCATED_OR_INVALID_HEADER: u8 = 135;
    /// Rewriting the packet failed.
    pub const WRITE_ERROR: u8 = 141;
    /// Correcting the L3 checksum after NAT failed.
    pub const CSUM_L3: u8 = 153;
    /// Correcting the L4 checksum after NAT failed.
    pub const CSUM_L4: u8 = 154;
    /// The conntrack entry could not be created.
    pub const CT_MAP_INSERTION_FAILED: u8 = 155;
    /// Too many IPv6 extension headers, or one truncated.
    pub const INVALID_IPV6_EXTENSION_HEADER: u8 = 156;
    /// The service has no backend ("Service backend not found").
    pub const NO_SERVICE: u8 = 158;
    /// A later fragment of a datagram whose first fragment was not seen: its ports are
    /// unknown ("First logical datagram fragment not found").
    pub const FRAG_NOT_FOUND: u8 = 175;
    /// The proxy's socket was not found.
    pub const SOCKET_LOOKUP_FAILED: u8 = 178;
    /// `bpf_sk_assign` refused the proxy's socket.
    pub const SOCKET_ASSIGN_FAILED: u8 = 179;
    /// A redirect-to-proxy verdict for a protocol the proxy cannot take (not TCP).
    pub const PROXY_UNSUPPORTED_PROTOCOL: u8 = 180;
    /// A deny entry matched ("Policy denied by denylist").
    pub const POLICY_DENY: u8 = 181;
}

/// [`TraceEvent::flags`]: the packet is a reply of a tracked flow.
pub const EVENT_FLAG_REPLY: u8 = 1;
/// [`TraceEvent::flags`]: the flow goes through a service; `service_address`
/// and `service_port` hold its frontend (the VIP the client addressed). On
/// the request path the packet was DNAT'd from it, on replies reverse-NAT'd
/// to it.
pub const EVENT_FLAG_SERVICE: u8 = 2;
/// [`TraceEvent::flags`]: the packet is an ICMP error related to a tracked flow.
pub const EVENT_FLAG_RELATED: u8 = 4;
/// [`TraceEvent::flags`]: the packet is a non-first IP fragment (no L4 header).
pub const EVENT_FLAG_FRAGMENT: u8 = 8;
/// [`TraceEvent::flags`]: the packet came from the L7 proxy (mark 0xb00).
pub const EVENT_FLAG_FROM_PROXY: u8 = 16;

/// One event. Addresses are in network byte order; IPv4 addresses occupy the
/// first four bytes of the 16. Addresses and ports are those of the packet as
/// it leaves the program (after DNAT or reverse NAT).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEvent {
    /// Monotonic kernel time of the event (bpf_ktime_get_ns).
    pub ktime_ns: u64,
    /// Interface the program ran on (the pod's host-side veth).
    pub ifindex: u32,
    /// Length of the packet on the wire.
    pub len: u32,
    /// Endpoint id of the pod behind `ifindex`, 0 if unknown.
    pub endpoint_id: u32,
    /// [`EventKind`] as u8.
    pub kind: u8,
    /// [`ObservationPoint`] as u8 (traces and policy verdicts: where the
    /// program runs; drops: where the packet would have gone).
    pub observation_point: u8,
    /// Drop reason ([`drop_reason`]), 0 unless dropped.
    pub drop_reason: u8,
    /// 4 or 6; 0 when the packet is not IP or its IP header is invalid.
    pub ip_version: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    pub protocol: u8,
    /// TCP flags byte (FIN 0x01 .. CWR 0x80), 0 when not TCP.
    pub tcp_flags: u8,
    /// ICMP code, 0 when not ICMP.
    pub icmp_code: u8,
    /// `EVENT_FLAG_*` bits.
    pub flags: u8,
    /// Source port (host order), 0 when not TCP/UDP; the echo id for ICMP echo.
    pub source_port: u16,
    /// Destination port (host order), 0 when not TCP/UDP.
    pub destination_port: u16,
    /// Source address.
    pub source: [u8; 16],
    /// Destination address.
    pub destination: [u8; 16],
    /// Security identity of the source (0 unknown).
    pub source_identity: u32,
    /// Security identity of the destination (0 unknown).
    pub destination_identity: u32,
    /// Rule id of the policy entry that decided (policy verdicts, policy drops).
    pub rule_id: u32,
    /// The service frontend when [`EVENT_FLAG_SERVICE`] is set.
    pub service_address: [u8; 16],
    /// The service port (host order) when [`EVENT_FLAG_SERVICE`] is set.
    pub service_port: u16,
    /// The proxy port of a redirect, else 0.
    pub proxy_port: u16,
    /// [`Verdict`] as u8.
    pub verdict: u8,
    /// [`TrafficDirection`] as u8, as Cilium's Hubble gives it: a policy
    /// verdict's and a policy drop's is the policy side's; another drop's is
    /// the packet's at the endpoint the program ran for (egress leaving it,
    /// ingress entering it); a trace's is its connection's (a reply has its
    /// flow's direction: ingress for a pod's answer to a flow it accepted).
    /// Always set by this build (0 would be unknown).
    pub traffic_direction: u8,
    /// [`crate::maps::PolicyMatch`] as u8 (policy verdicts).
    pub match_type: u8,
    /// ICMP type, 0 when not ICMP.
    pub icmp_type: u8,
    /// Explicit padding, zero.
    pub _pad: [u8; 4],
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers and byte arrays only, padding explicit.
unsafe impl aya::Pod for TraceEvent {}
