//! Map keys and values, shared by the kernel programs and user space.
//!
//! Addresses are 16 bytes in network byte order; an IPv4 address occupies
//! the first four bytes and `family` says which one it is. Ports are in host
//! byte order unless a field says otherwise.

/// Address family tag of IPv4 keys ([`IpKey::family`], [`CtKey::family`], ...).
pub const FAMILY_IPV4: u8 = 4;
/// Address family tag of IPv6 keys.
pub const FAMILY_IPV6: u8 = 6;

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
/// the endpoints map is keyed by that veth's ifindex, the by-address map by
/// each of the pod's addresses.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// The agent's endpoint id.
    pub endpoint_id: u32,
    /// The pod's security identity.
    pub identity: u32,
    /// The pod's IPv4 address, network byte order; all zero when it has none.
    pub ipv4: [u8; 4],
    /// Reserved, written as 0. Enforcement is per policy, not per endpoint
    /// record ([`EndpointPolicy::flags`]), so that re-registering an endpoint
    /// (an agent restart) can never switch enforcement off.
    pub flags: u32,
    /// The pod's IPv6 address; all zero when it has none.
    pub ipv6: [u8; 16],
    /// Ifindex of the pod's host-side veth in the node (the endpoints map's
    /// key); written by the datapath on registration. 0: unknown.
    pub ifindex: u32,
    /// MAC address of the pod's own interface (`eth0`, in the pod's network
    /// namespace). All zero: unknown, and packets to the pod go through the
    /// node's IP stack instead of being handed over by `bpf_redirect_peer`.
    pub mac: [u8; 6],
    /// MAC address of the host-side veth (the source of frames the node
    /// sends into the pod). All zero: unknown, as for [`Self::mac`].
    pub host_mac: [u8; 6],
}

impl EndpointInfo {
    /// True when the kernel can deliver packets to this endpoint itself
    /// (host routing): its host veth and both MAC addresses are known.
    pub fn host_routable(&self) -> bool {
        self.ifindex != 0 && self.mac != [0; 6] && self.host_mac != [0; 6]
    }
}

/// Key of the endpoints-by-address and ipcache-style exact maps.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpKey {
    /// The address (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Explicit padding, zero.
    pub _pad: [u8; 3],
}

/// Ingress (to the pod) is enforced: traffic not allowed by the policy is dropped.
pub const POLICY_FLAG_INGRESS: u32 = 1;
/// Egress (from the pod) is enforced.
pub const POLICY_FLAG_EGRESS: u32 = 2;

/// The policy in force for one endpoint: which generation of policy entries
/// the programs read and which directions are enforced. Written in one map
/// update, so a new policy takes effect all at once.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointPolicy {
    /// Generation of the entries in force ([`PolicyKey::generation`]).
    pub generation: u32,
    /// [`POLICY_FLAG_INGRESS`] | [`POLICY_FLAG_EGRESS`].
    pub flags: u32,
}

/// Data of the policy LPM key, compared bit by bit from the first byte: the
/// fixed part (endpoint, generation, direction, peer) is always matched in
/// full; protocol and port may be wildcarded by a shorter prefix.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyKey {
    /// Endpoint id, big endian (so the prefix compares it whole).
    pub endpoint_id: [u8; 4],
    /// Policy generation, big endian.
    pub generation: [u8; 4],
    /// [`Direction`] as u8: 0 egress (from the pod), 1 ingress (to the pod).
    pub direction: u8,
    /// Peer identity, big endian; 0 matches any peer.
    pub peer_identity: [u8; 4],
    /// IP protocol; matched only when the prefix covers it.
    pub protocol: u8,
    /// Destination port, big endian; matched up to the prefix.
    pub port: [u8; 2],
}

/// Prefix length (bits) of a policy key matching any protocol and port.
pub const POLICY_PREFIX_ANY_PROTOCOL: u32 = 104;
/// Prefix length (bits) of a policy key matching one protocol, any port.
pub const POLICY_PREFIX_ANY_PORT: u32 = 112;
/// Prefix length (bits) of a policy key matching one protocol and one port.
pub const POLICY_PREFIX_FULL: u32 = 128;

/// What a policy entry does to the traffic it matches.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyAction {
    /// Forward.
    Allow = 1,
    /// Drop ("Policy denied by denylist").
    Deny = 2,
    /// Hand the connection to the node's L7 proxy on `proxy_port`.
    Redirect = 3,
}

impl PolicyAction {
    /// Decodes the wire value.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Allow),
            2 => Some(Self::Deny),
            3 => Some(Self::Redirect),
            _ => None,
        }
    }
}

/// Hubble's policy match type: which parts of a policy entry matched a
/// packet, as the policy map's entries carry it and policy-verdict events
/// report it (`Flow.policy_match_type`).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMatch {
    /// No rule matched (default deny).
    None = 0,
    /// Matched on the peer only.
    L3Only = 1,
    /// Matched on peer and port.
    L3L4 = 2,
    /// Matched on port only.
    L4Only = 3,
    /// Allow-all rule.
    All = 4,
    /// Matched on peer and protocol.
    L3Proto = 5,
    /// Matched on protocol only.
    ProtoOnly = 6,
}

impl PolicyMatch {
    /// Decodes the wire value; `None` for a value no program writes.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::None),
            1 => Some(Self::L3Only),
            2 => Some(Self::L3L4),
            3 => Some(Self::L4Only),
            4 => Some(Self::All),
            5 => Some(Self::L3Proto),
            6 => Some(Self::ProtoOnly),
            _ => None,
        }
    }

    /// Cilium's name of the match type, as Hubble prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::L3Only => "L3-Only",
            Self::L3L4 => "L3-L4",
            Self::L4Only => "L4-Only",
            Self::All => "all",
            Self::L3Proto => "L3-Proto",
            Self::ProtoOnly => "Proto-Only",
        }
    }
}

/// Value of the policy map.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyEntry {
    /// The rule that produced the entry, reported in policy-verdict events.
    pub rule_id: u32,
    /// Proxy port (host order) for [`PolicyAction::Redirect`], else 0.
    pub proxy_port: u16,
    /// [`PolicyAction`] as u8.
    pub action: u8,
    /// [`PolicyMatch`] of the entry as u8.
    pub match_type: u8,
}

/// Data of the ipcache LPM key: the family byte first, so IPv4 and IPv6
/// prefixes live in one trie (prefix length = 8 + the IP prefix length).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpcacheKey {
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// The address (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// Explicit padding, zero; beyond every prefix.
    pub _pad: [u8; 3],
}

/// Value of the ipcache: the identity of a prefix.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpcacheEntry {
    /// Security identity of the addresses under the prefix.
    pub identity: u32,
}

/// Key of the services map: a frontend (VIP, port, protocol) and a slot.
/// Slot 0 holds the frontend's backend count and reverse-NAT index; slots
/// 1..=count hold backend ids.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ServiceKey {
    /// The service address (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// Service port, host order.
    pub port: u16,
    /// 0 for the frontend record, 1..=count for backends.
    pub slot: u16,
    /// IP protocol (6 TCP, 17 UDP).
    pub protocol: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Explicit padding, zero.
    pub _pad: [u8; 2],
}

impl ServiceKey {
    /// The marker of a cluster IP: port 0, protocol 0, slot 0 (no frontend
    /// has them). Present while some frontend uses the address; a new flow
    /// to any other port or protocol of it is refused instead of being
    /// tracked and routed.
    pub const fn cluster_ip(addr: [u8; 16], family: u8) -> Self {
        ServiceKey {
            addr,
            port: 0,
            slot: 0,
            protocol: 0,
            family,
            _pad: [0; 2],
        }
    }

    /// True for a [`Self::cluster_ip`] marker.
    pub const fn is_cluster_ip(&self) -> bool {
        self.protocol == 0 && self.port == 0 && self.slot == 0
    }
}

/// Value of the services map (see [`ServiceKey`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServiceEntry {
    /// Backend id (slots >= 1). In the frontend record (slot 0), where no
    /// backend id belongs, the ClientIP session affinity timeout in seconds
    /// (0: no affinity; see [`Self::affinity_timeout_s`]). Sharing the field
    /// keeps the record's size, so maps pinned by builds before affinity
    /// (their frontends hold 0) are reused as they are.
    pub backend_id: u32,
    /// Number of backends (slot 0).
    pub count: u16,
    /// Reverse-NAT index of the frontend (slot 0).
    pub rev_nat_index: u16,
}

impl ServiceEntry {
    /// A frontend record (slot 0).
    pub const fn frontend(count: u16, rev_nat_index: u16, affinity_timeout_s: u32) -> Self {
        ServiceEntry {
            backend_id: affinity_timeout_s,
            count,
            rev_nat_index,
        }
    }

    /// A frontend record's ClientIP session affinity timeout in seconds; 0
    /// when the service has none.
    pub const fn affinity_timeout_s(&self) -> u32 {
        self.backend_id
    }
}

/// Key of the session affinity map: a client of a frontend. Clients are
/// told apart by address only, as Kubernetes' ClientIP affinity does.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AffinityKey {
    /// The client's address (IPv4 in the first four bytes).
    pub client: [u8; 16],
    /// The frontend's reverse-NAT index (its id in this node's maps).
    pub rev_nat_index: u16,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Explicit padding, zero.
    pub _pad: u8,
}

/// Value of the session affinity map: the backend a client's new
/// connections go to while the entry is fresh.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AffinityEntry {
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC) of the client's last new
    /// connection to the frontend; the entry is stale once the frontend's
    /// affinity timeout has passed since.
    pub last_used_ns: u64,
    /// The backend id.
    pub backend_id: u32,
    /// Explicit padding, zero.
    pub _pad: u32,
}

/// An address and port: a backend, or a frontend in the reverse-NAT map.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L4Addr {
    /// The address (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// Port, host order.
    pub port: u16,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Explicit padding, zero.
    pub _pad: u8,
}

/// Conntrack scope of entries created where a pod sends (from-container).
pub const CT_SCOPE_EGRESS: u8 = 0;
/// Conntrack scope of entries created where a pod receives (to-container).
pub const CT_SCOPE_INGRESS: u8 = 1;
/// Conntrack scope of service entries: the client's tuple to the VIP,
/// remembering the chosen backend.
pub const CT_SCOPE_SERVICE: u8 = 2;

/// Conntrack key: the tuple of the flow's first packet (its originator's
/// view). A reply is found by swapping addresses and ports. For ICMP echo
/// the identifier is the source port of requests and the destination port
/// of replies.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtKey {
    /// Source address.
    pub saddr: [u8; 16],
    /// Destination address.
    pub daddr: [u8; 16],
    /// Source port, host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// IP protocol.
    pub protocol: u8,
    /// [`CT_SCOPE_EGRESS`], [`CT_SCOPE_INGRESS`] or [`CT_SCOPE_SERVICE`].
    pub scope: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Explicit padding, zero.
    pub _pad: u8,
}

/// A RST was seen, or a FIN in both directions: the entry only lingers for
/// the close timeout (a new SYN on the tuple starts afresh).
pub const CT_FLAG_CLOSING: u8 = 1;
/// The responder has answered (a reply was seen).
pub const CT_FLAG_REPLIED: u8 = 2;
/// The flow was opened by the L7 proxy (its packets carry the proxy's mark): replies go back
/// to the proxy's socket, also when they are addressed to a pod of this node (an upstream
/// connection that keeps its client's address).
pub const CT_FLAG_FROM_PROXY: u8 = 4;

/// Conntrack value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC) after which the entry is dead.
    pub expires_ns: u64,
    /// When a trace event was last reported for the flow (aggregation).
    pub last_report_ns: u64,
    /// Packets seen, both directions.
    pub packets: u64,
    /// Bytes seen, both directions.
    pub bytes: u64,
    /// Identity of the peer the policy was evaluated against.
    pub peer_identity: u32,
    /// Rule id of the policy entry that allowed the flow (0: none/enforcement off).
    pub rule_id: u32,
    /// Backend id chosen for the connection ([`CT_SCOPE_SERVICE`] entries).
    pub backend_id: u32,
    /// Reverse-NAT index to apply to replies (0: none).
    pub rev_nat_index: u16,
    /// Proxy port when the verdict is a redirect.
    pub proxy_port: u16,
    /// [`PolicyAction`] as u8 (Allow or Redirect; denied flows get no entry).
    pub verdict: u8,
    /// TCP flags seen from the originator (OR of all).
    pub flags_forward: u8,
    /// TCP flags seen from the responder (OR of all).
    pub flags_reply: u8,
    /// [`CT_FLAG_CLOSING`] | [`CT_FLAG_REPLIED`] | [`CT_FLAG_FROM_PROXY`].
    pub state: u8,
    /// The policy revision ([`names::POLICY_REVISION`]) the verdict was
    /// decided under; a flow decided under an older one is checked again on
    /// its next packet from the originator.
    pub policy_revision: u32,
}

/// Timeout of a TCP flow that has not completed its handshake.
pub const CT_TIMEOUT_SYN_NS: u64 = 60 * 1_000_000_000;
/// Timeout of an established TCP flow (idle).
pub const CT_TIMEOUT_TCP_NS: u64 = 21_600 * 1_000_000_000;
/// Timeout of a closing TCP flow (FIN both ways, or RST).
pub const CT_TIMEOUT_CLOSE_NS: u64 = 10 * 1_000_000_000;
/// Timeout of UDP and ICMP flows (idle).
pub const CT_TIMEOUT_OTHER_NS: u64 = 60 * 1_000_000_000;
/// A busy established flow reports a trace event at most this often.
pub const TRACE_REPORT_INTERVAL_NS: u64 = 5 * 1_000_000_000;
/// Drop events each CPU may report per second, sustained: every drop is
/// reported (none is aggregated), and this bucket only keeps a flood of
/// drops from filling the event ring. Drops past it are counted in
/// [`names::DROPS_SUPPRESSED`].
pub const DROP_EVENTS_PER_SECOND: u64 = 1_000;
/// Drop events a CPU may report at once before [`DROP_EVENTS_PER_SECOND`]
/// applies (the bucket's size).
pub const DROP_EVENT_BURST: u64 = 2_000;

/// Packets carrying this mark (under [`PROXY_MARK_MASK`]) come from the L7
/// proxy: never redirected again. Bits 16..31 may carry the source identity
/// of the endpoint the proxy acts for.
pub const PROXY_MARK_EGRESS: u32 = 0xb00;
/// Mark set on packets handed to the proxy; the node's policy routing
/// (`fwmark 0x200/0xf00 lookup 2004`) delivers them locally.
pub const PROXY_MARK_TO_PROXY: u32 = 0x200;
/// Mask of the proxy marks.
pub const PROXY_MARK_MASK: u32 = 0xf00;

/// The mark (under [`PROXY_MARK_MASK`]) `from_overlay` gives a packet that
/// arrived through the overlay: bits 16..31 carry the sender's security
/// identity taken from the VXLAN VNI, so that the receiving pod's
/// `to_container` decides its ingress policy with it (as Cilium's
/// `MARK_MAGIC_IDENTITY`). It matches neither proxy mark, so the node's
/// proxy routing (`fwmark 0x200/0xf00`) leaves such packets alone.
pub const MARK_OVERLAY_IDENTITY: u32 = 0xf00;

/// [`DatapathConfig::routing_mode`]: no encapsulation; packets to other
/// nodes' pods go to the node's stack, which routes them over the underlay;
/// receivers take the source identity from their ipcache. The value of a
/// fresh (zeroed) config: a single node behaves as before the overlay.
pub const ROUTING_NATIVE: u32 = 0;
/// [`DatapathConfig::routing_mode`]: packets to a pod CIDR of the tunnel
/// endpoints map are encapsulated (VXLAN, the sender's identity in the VNI)
/// and sent to [`DatapathConfig::overlay_ifindex`].
pub const ROUTING_TUNNEL: u32 = 1;

/// The node-wide settings the programs read (index 0 of [`names::CONFIG`]),
/// written by the agent through the datapath.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// [`ROUTING_NATIVE`] or [`ROUTING_TUNNEL`].
    pub routing_mode: u32,
    /// Ifindex of the node's VXLAN device (collect-metadata mode) in the
    /// node's network namespace; 0: none (tunnel mode then encapsulates
    /// nothing and packets take the stack, as in native mode).
    pub overlay_ifindex: u32,
}

/// Value of the tunnel endpoints map (LPM, keyed by [`IpcacheKey`] like the
/// ipcache: a remote node's pod CIDR): the underlay address of the node
/// that owns the CIDR, where its VXLAN packets go.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunnelEndpoint {
    /// The node's underlay address (IPv4 in the first four bytes), network
    /// byte order.
    pub addr: [u8; 16],
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`]: the underlay's family, which may
    /// differ from the pod CIDR's (IPv6 pods over an IPv4 underlay).
    pub family: u8,
    /// Explicit padding, zero.
    pub _pad: [u8; 3],
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
    // SAFETY (all): repr(C), integers and byte arrays only, padding explicit.
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::IpKey {}
    unsafe impl aya::Pod for super::EndpointPolicy {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyEntry {}
    unsafe impl aya::Pod for super::IpcacheKey {}
    unsafe impl aya::Pod for super::IpcacheEntry {}
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceEntry {}
    unsafe impl aya::Pod for super::L4Addr {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityEntry {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::PacketStats {}
    unsafe impl aya::Pod for super::StatsKey {}
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::TunnelEndpoint {}
}

/// Names of the maps, shared so the loader and the pins agree.
pub mod names {
    /// ifindex → [`super::EndpointInfo`].
    pub const ENDPOINTS: &str = "MYELIN_ENDPOINTS";
    /// [`super::IpKey`] → [`super::EndpointInfo`]: local pods by address.
    pub const ENDPOINTS_BY_IP: &str = "MYELIN_EP_BY_IP";
    /// endpoint id → [`super::EndpointPolicy`].
    pub const ENDPOINT_POLICY: &str = "MYELIN_EP_POLICY";
    /// LPM [`super::PolicyKey`] → [`super::PolicyEntry`].
    pub const POLICY: &str = "MYELIN_POLICY";
    /// LPM [`super::IpcacheKey`] → [`super::IpcacheEntry`].
    pub const IPCACHE: &str = "MYELIN_IPCACHE";
    /// [`super::ServiceKey`] → [`super::ServiceEntry`].
    pub const SERVICES: &str = "MYELIN_SERVICES";
    /// backend id → [`super::L4Addr`].
    pub const BACKENDS: &str = "MYELIN_BACKENDS";
    /// reverse-NAT index (u32) → [`super::L4Addr`] of the frontend.
    pub const REV_NAT: &str = "MYELIN_REV_NAT";
    /// LRU [`super::AffinityKey`] → [`super::AffinityEntry`]: the backend of
    /// each client of a frontend with ClientIP session affinity.
    pub const AFFINITY: &str = "MYELIN_AFFINITY";
    /// Array of one u32: the policy revision, bumped by user space on every
    /// policy change.
    pub const POLICY_REVISION: &str = "MYELIN_POLICY_REV";
    /// LRU [`super::CtKey`] → [`super::CtEntry`].
    pub const CONNTRACK: &str = "MYELIN_CT";
    /// [`super::StatsKey`] → [`super::PacketStats`] per CPU.
    pub const STATS: &str = "MYELIN_STATS";
    /// Array of one [`super::DatapathConfig`]: the routing mode and the
    /// overlay device.
    pub const CONFIG: &str = "MYELIN_CONFIG";
    /// LPM [`super::IpcacheKey`] → [`super::TunnelEndpoint`]: remote nodes'
    /// pod CIDRs and the underlay address to tunnel them to.
    pub const TUNNEL_ENDPOINTS: &str = "MYELIN_TUNNEL";
    /// The event ring buffer.
    pub const EVENTS: &str = "MYELIN_EVENTS";
    /// Per-CPU counter of events the ring had no room for (index 0).
    pub const LOST: &str = "MYELIN_LOST";
    /// Per-CPU counter (index 0) of drops whose event the rate limit
    /// ([`super::DROP_EVENTS_PER_SECOND`]) suppressed.
    pub const DROPS_SUPPRESSED: &str = "MYELIN_DROPS_SUPPRESSED";
}

#[cfg(test)]
mod tests {
    use super::PolicyMatch;

    #[test]
    fn a_policy_match_decodes_from_the_number_it_is_written_as() {
        let all = [
            PolicyMatch::None,
            PolicyMatch::L3Only,
            PolicyMatch::L3L4,
            PolicyMatch::L4Only,
            PolicyMatch::All,
            PolicyMatch::L3Proto,
            PolicyMatch::ProtoOnly,
        ];
        for matched in all {
            assert_eq!(PolicyMatch::from_u8(matched as u8), Some(matched));
        }
        assert_eq!(PolicyMatch::from_u8(7), None);
    }
}
