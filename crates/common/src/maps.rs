//! Map keys and values.

/// Which way a packet crosses a pod's veth.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Leaving the pod (host-side veth ingress).
    FromContainer = 0,
    /// Entering the pod (host-side veth egress).
    ToContainer = 1,
}

/// What the agent tells the kernel about the pod behind a host-side veth;
/// the endpoints map is keyed by that veth's ifindex.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// The agent's endpoint id.
    pub endpoint_id: u32,
    /// The pod's security identity.
    pub identity: u32,
    /// The pod's IPv4 address, network byte order.
    pub ipv4: [u8; 4],
    /// Flags, reserved for the datapath issue's enforcement bits.
    pub flags: u32,
    /// The pod's IPv6 address.
    pub ipv6: [u8; 16],
}

/// Packet and byte counters of one endpoint and direction (per CPU).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketStats {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen.
    pub bytes: u64,
}

/// Key of the stats map: the veth's ifindex and the [`Direction`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsKey {
    /// Host-side veth ifindex.
    pub ifindex: u32,
    /// [`Direction`] as u32.
    pub direction: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (all three): repr(C), integers and byte arrays only, no implicit padding.
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::PacketStats {}
    unsafe impl aya::Pod for super::StatsKey {}
}

/// Names of the maps, shared so the loader and the pins agree.
pub mod names {
    /// ifindex → [`super::EndpointInfo`].
    pub const ENDPOINTS: &str = "MYELIN_ENDPOINTS";
    /// [`super::StatsKey`] → [`super::PacketStats`] per CPU.
    pub const STATS: &str = "MYELIN_STATS";
    /// The event ring buffer.
    pub const EVENTS: &str = "MYELIN_EVENTS";
    /// Per-CPU counter of events the ring had no room for (index 0).
    pub const LOST: &str = "MYELIN_LOST";
}
