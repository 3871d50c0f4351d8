//! Records written by the kernel programs to the event ring buffer.

/// What a record reports.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A packet was seen at an observation point and passed on.
    Trace = 4,
    /// A packet was dropped; `reason` says why.
    Drop = 1,
}

impl EventKind {
    /// Decodes the wire value; `None` for a value this build does not know.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            4 => Some(Self::Trace),
            1 => Some(Self::Drop),
            _ => None,
        }
    }
}

/// Where a packet was observed, numbered as Hubble's TraceObservationPoint.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservationPoint {
    /// Delivered to a local pod (the pod's veth, towards the pod).
    ToEndpoint = 4,
    /// Left a local pod into the node's stack (the pod's veth, from the pod).
    ToStack = 3,
    /// Handed to the node's L7 proxy.
    ToProxy = 1,
}

impl ObservationPoint {
    /// Decodes the wire value.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            4 => Some(Self::ToEndpoint),
            3 => Some(Self::ToStack),
            1 => Some(Self::ToProxy),
            _ => None,
        }
    }

    /// Hubble's name for the point.
    pub fn name(self) -> &'static str {
        match self {
            Self::ToEndpoint => "to-endpoint",
            Self::ToStack => "to-stack",
            Self::ToProxy => "to-proxy",
        }
    }
}

/// One packet event. Addresses are in network byte order; IPv4 addresses
/// occupy the first four bytes of the 16.
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
    /// [`ObservationPoint`] as u8, for traces.
    pub observation_point: u8,
    /// Drop reason, Cilium's numbering, for drops.
    pub drop_reason: u8,
    /// 4 or 6; 0 when the packet is not IP.
    pub ip_version: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    pub protocol: u8,
    /// TCP flags byte (FIN 0x01 .. CWR 0x80); ICMP type for ICMP.
    pub tcp_flags: u8,
    /// ICMP code for ICMP; 0 otherwise.
    pub icmp_code: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Source port (host byte order), 0 when not TCP/UDP.
    pub source_port: u16,
    /// Destination port (host byte order), 0 when not TCP/UDP.
    pub destination_port: u16,
    /// Source address.
    pub source: [u8; 16],
    /// Destination address.
    pub destination: [u8; 16],
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers and byte arrays only, padding explicit.
unsafe impl aya::Pod for TraceEvent {}
