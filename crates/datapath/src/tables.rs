//! Typed views of the datapath's maps: what the agent writes (endpoints,
//! ipcache, policy, services) and what `myelin bpf` shows (the same, plus
//! conntrack). Everything here is plain Rust values; the `#[repr(C)]` layouts
//! stay in `myelin-common`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use myelin_common::maps::{
    CT_FLAG_CLOSING, CT_FLAG_FROM_PROXY, CT_FLAG_REPLIED, CT_SCOPE_INGRESS, CT_SCOPE_SERVICE,
    FAMILY_IPV4, FAMILY_IPV6, POLICY_FLAG_EGRESS, POLICY_FLAG_INGRESS, POLICY_PREFIX_ANY_PORT,
    POLICY_PREFIX_ANY_PROTOCOL,
};
use myelin_common::{
    CtEntry, CtKey, Direction, EndpointInfo, IpKey, L4Addr, PolicyAction, PolicyEntry, PolicyKey,
    PolicyMatch,
};

use crate::error::DatapathError;

/// Which side of an endpoint a policy rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyDirection {
    /// Traffic into the endpoint.
    Ingress,
    /// Traffic out of the endpoint.
    Egress,
}

impl PolicyDirection {
    pub(crate) fn wire(self) -> u8 {
        match self {
            Self::Ingress => Direction::ToContainer as u8,
            Self::Egress => Direction::FromContainer as u8,
        }
    }

    fn from_wire(value: u8) -> Self {
        if value == Direction::ToContainer as u8 {
            Self::Ingress
        } else {
            Self::Egress
        }
    }
}

impl std::fmt::Display for PolicyDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// What a rule does to the traffic it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleAction {
    /// Forward.
    Allow,
    /// Drop; wins over every allow and redirect that also matches.
    Deny,
    /// Hand the connection to the node's L7 proxy on this port (TCP only).
    Redirect {
        /// The proxy's transparent listener port.
        proxy_port: u16,
    },
}

impl RuleAction {
    fn rank(self) -> u8 {
        match self {
            Self::Deny => 3,
            Self::Redirect { .. } => 2,
            Self::Allow => 1,
        }
    }
}

impl std::fmt::Display for RuleAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Allow => f.write_str("allow"),
            Self::Deny => f.write_str("deny"),
            Self::Redirect { proxy_port } => write!(f, "redirect:{proxy_port}"),
        }
    }
}

/// One L3/L4 rule of an endpoint's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    /// Ingress or egress.
    pub direction: PolicyDirection,
    /// The peer's security identity; 0 matches any peer.
    pub peer_identity: u32,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6); 0 matches any
    /// protocol (and then `ports` must be `None`).
    pub protocol: u8,
    /// Destination port range, inclusive; `None` matches any port.
    pub ports: Option<(u16, u16)>,
    /// What matching traffic gets.
    pub action: RuleAction,
    /// The id reported in policy-verdict events for this rule.
    pub rule_id: u32,
}

/// The complete L3/L4 policy of one endpoint, replaced as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyTable {
    /// Ingress is enforced (default deny); otherwise all ingress is allowed.
    pub ingress_enforced: bool,
    /// Egress is enforced (default deny); otherwise all egress is allowed.
    pub egress_enforced: bool,
    /// The rules.
    pub rules: Vec<PolicyRule>,
}

/// One policy map entry as the kernel sees it (for `myelin bpf policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    /// Ingress or egress.
    pub direction: PolicyDirection,
    /// Peer identity, 0 for any.
    pub peer_identity: u32,
    /// IP protocol, 0 for any.
    pub protocol: u8,
    /// Port range covered by the entry (0-65535 for any).
    pub ports: (u16, u16),
    /// The action (after deny/redirect folding).
    pub action: RuleAction,
    /// Rule id.
    pub rule_id: u32,
    /// Hubble's match type name ("L3-L4", "L4-Only", ...).
    pub match_type: &'static str,
}

/// A registered endpoint (for `myelin bpf endpoint list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    /// Host-side veth ifindex.
    pub ifindex: u32,
    /// Endpoint id.
    pub endpoint_id: u32,
    /// Security identity.
    pub identity: u32,
    /// IPv4 address, if any.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address, if any.
    pub ipv6: Option<Ipv6Addr>,
    /// MAC address of the pod's interface, if registered.
    pub mac: Option<[u8; 6]>,
    /// MAC address of the host-side veth, if known.
    pub host_mac: Option<[u8; 6]>,
    /// Packets from other pods of the node are handed straight into this
    /// pod (`bpf_redirect_peer`) instead of crossing the node's IP stack.
    pub host_routed: bool,
    /// Ingress policy enforced.
    pub ingress_enforced: bool,
    /// Egress policy enforced.
    pub egress_enforced: bool,
    /// Generation of the policy in force (0: none installed).
    pub policy_generation: u32,
}

/// An ipcache entry (for `myelin bpf ipcache list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcacheRecord {
    /// Prefix address.
    pub address: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Identity of the prefix.
    pub identity: u32,
}

/// Transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl ServiceProtocol {
    pub(crate) fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    fn from_number(value: u8) -> Option<Self> {
        match value {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            _ => None,
        }
    }
}

impl std::fmt::Display for ServiceProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// A ClusterIP frontend and its ready backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// VIP and port.
    pub frontend: SocketAddr,
    /// TCP or UDP.
    pub protocol: ServiceProtocol,
    /// Ready backends (same address family as the frontend). Empty: clients
    /// are refused with a "Service backend not found" drop.
    pub backends: Vec<SocketAddr>,
    /// ClientIP session affinity: a client's new connections go to the
    /// backend of its previous ones until it has opened none for this many
    /// seconds (1..=86400). `None`: every connection picks a backend.
    pub affinity_timeout_s: Option<u32>,
}

/// A backend as the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRecord {
    /// Backend id (conntrack entries remember it).
    pub id: u32,
    /// Address and port.
    pub address: SocketAddr,
}

/// A service as the kernel sees it (for `myelin bpf service list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// VIP and port.
    pub frontend: SocketAddr,
    /// TCP or UDP.
    pub protocol: ServiceProtocol,
    /// Reverse-NAT index.
    pub rev_nat_index: u16,
    /// ClientIP session affinity timeout in seconds; `None`: no affinity.
    pub affinity_timeout_s: Option<u32>,
    /// Backends in slot order.
    pub backends: Vec<BackendRecord>,
}

/// Which program created a conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtScope {
    /// A flow a local pod started (from-container).
    Egress,
    /// A flow into a local pod (to-container, or admitted by a local sender).
    Ingress,
    /// A client's connection to a service VIP, with its chosen backend.
    Service,
}

impl std::fmt::Display for CtScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
            Self::Service => "service",
        })
    }
}

/// A conntrack entry (for `myelin bpf ct list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtRecord {
    /// Which program created it.
    pub scope: CtScope,
    /// IP protocol.
    pub protocol: u8,
    /// Originator (for ICMP echo the port is the echo id).
    pub source: SocketAddr,
    /// Responder.
    pub destination: SocketAddr,
    /// Time left; `None` when expired (awaiting GC or LRU eviction).
    pub expires_in: Option<Duration>,
    /// Packets, both directions.
    pub packets: u64,
    /// Bytes, both directions.
    pub bytes: u64,
    /// Allow or redirect (denied flows have no entry).
    pub verdict: RuleAction,
    /// Identity of the peer the policy was evaluated against.
    pub peer_identity: u32,
    /// Rule that allowed the flow (0: none / not enforced).
    pub rule_id: u32,
    /// Chosen backend (service entries).
    pub backend_id: u32,
    /// Reverse NAT applied to replies (0: none).
    pub rev_nat_index: u16,
    /// TCP flags seen from the originator.
    pub flags_forward: u8,
    /// TCP flags seen from the responder.
    pub flags_reply: u8,
    /// A reply was seen.
    pub replied: bool,
    /// The TCP connection is closing (RST, or FIN both ways).
    pub closing: bool,
    /// The L7 proxy opened the flow (an upstream connection): replies go back to it.
    pub from_proxy: bool,
}

pub(crate) fn family_of(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => FAMILY_IPV4,
        IpAddr::V6(_) => FAMILY_IPV6,
    }
}

pub(crate) fn addr_bytes(addr: &IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

pub(crate) fn ip_from(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

pub(crate) fn ip_key(addr: &IpAddr) -> IpKey {
    IpKey {
        addr: addr_bytes(addr),
        family: family_of(addr),
        _pad: [0; 3],
    }
}

pub(crate) fn l4_addr(addr: &SocketAddr) -> L4Addr {
    L4Addr {
        addr: addr_bytes(&addr.ip()),
        port: addr.port(),
        family: family_of(&addr.ip()),
        _pad: 0,
    }
}

pub(crate) fn socket_from(l4: &L4Addr) -> SocketAddr {
    SocketAddr::new(ip_from(l4.family, &l4.addr), l4.port)
}

/// The by-address keys of an endpoint record.
pub(crate) fn endpoint_addresses(info: &EndpointInfo) -> Vec<IpAddr> {
    let mut out = Vec::new();
    if info.ipv4 != [0; 4] {
        out.push(IpAddr::V4(Ipv4Addr::from(info.ipv4)));
    }
    if info.ipv6 != [0; 16] {
        out.push(IpAddr::V6(Ipv6Addr::from(info.ipv6)));
    }
    out
}

pub(crate) fn policy_flags(table: &PolicyTable) -> u32 {
    let mut flags = 0;
    if table.ingress_enforced {
        flags |= POLICY_FLAG_INGRESS;
    }
    if table.egress_enforced {
        flags |= POLICY_FLAG_EGRESS;
    }
    flags
}

/// An entry of the compiled policy: (direction, peer, protocol, port, port
/// prefix bits) with its action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Slot {
    direction: u8,
    peer: u32,
    /// None: any protocol.
    protocol: Option<u8>,
    port: u16,
    /// Bits of `port` that must match (0 = any port).
    port_bits: u8,
}

impl Slot {
    /// Whether every packet matched by `self` is also matched by `other`.
    fn within(&self, other: &Slot) -> bool {
        if self.direction != other.direction || self.peer != other.peer {
            return false;
        }
        match (other.protocol, self.protocol) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) if a != b => false,
            (Some(_), Some(_)) => {
                if other.port_bits > self.port_bits {
                    return false;
                }
                let mask = prefix_mask(other.port_bits);
                self.port & mask == other.port & mask
            }
        }
    }

    fn prefix_len(&self) -> u32 {
        match self.protocol {
            None => POLICY_PREFIX_ANY_PROTOCOL,
            Some(_) => POLICY_PREFIX_ANY_PORT + u32::from(self.port_bits),
        }
    }

    fn match_type(&self) -> PolicyMatch {
        let l3 = self.peer != 0;
        match (l3, self.protocol, self.port_bits) {
            (true, None, _) => PolicyMatch::L3Only,
            (true, Some(_), 0) => PolicyMatch::L3Proto,
            (true, Some(_), _) => PolicyMatch::L3L4,
            (false, None, _) => PolicyMatch::All,
            (false, Some(_), 0) => PolicyMatch::ProtoOnly,
            (false, Some(_), _) => PolicyMatch::L4Only,
        }
    }
}

fn prefix_mask(bits: u8) -> u16 {
    if bits == 0 {
        0
    } else {
        u16::MAX << (16 - u32::from(bits))
    }
}

/// Splits an inclusive port range into aligned prefix blocks.
fn port_blocks(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut start = u32::from(lo);
    let end = u32::from(hi);
    while start <= end {
        // The largest aligned block starting at `start` that fits.
        let mut size_bits = if start == 0 {
            16
        } else {
            start.trailing_zeros().min(16)
        };
        while start + (1 << size_bits) - 1 > end {
            size_bits -= 1;
        }
        out.push((start as u16, 16 - size_bits as u8));
        start += 1 << size_bits;
    }
    out
}

/// Compiles a policy table into map entries: port ranges become prefixes,
/// duplicates keep the strongest action, and each entry covered by a wider
/// deny (or redirect) of the same peer takes that action, because the LPM
/// lookup only returns the longest match.
pub(crate) fn compile_policy(
    table: &PolicyTable,
) -> Result<BTreeMap<Slot, (RuleAction, u32)>, DatapathError> {
    let mut slots: BTreeMap<Slot, (RuleAction, u32)> = BTreeMap::new();
    for (index, rule) in table.rules.iter().enumerate() {
        let invalid = |reason: &str| DatapathError::InvalidPolicy {
            rule: index,
            rule_id: rule.rule_id,
            reason: reason.to_string(),
        };
        let blocks = match (rule.protocol, rule.ports) {
            (0, Some(_)) => return Err(invalid("a port needs a protocol (protocol 0 is any)")),
            (_, Some((lo, hi))) if lo > hi => {
                return Err(invalid("port range is inverted (first > last)"));
            }
            (_, Some((lo, hi))) => port_blocks(lo, hi),
            (_, None) => vec![(0, 0)],
        };
        if matches!(rule.action, RuleAction::Redirect { .. }) && rule.protocol != 6 {
            return Err(invalid(
                "redirect to the proxy needs protocol TCP (6): the proxy takes TCP connections only",
            ));
        }
        for (port, port_bits) in blocks {
            let slot = Slot {
                direction: rule.direction.wire(),
                peer: rule.peer_identity,
                protocol: (rule.protocol != 0).then_some(rule.protocol),
                port,
                port_bits,
            };
            let candidate = (rule.action, rule.rule_id);
            slots
                .entry(slot)
                .and_modify(|existing| {
                    if candidate.0.rank() > existing.0.rank() {
                        *existing = candidate;
                    }
                })
                .or_insert(candidate);
        }
    }
    let snapshot: Vec<(Slot, (RuleAction, u32))> = slots.iter().map(|(s, a)| (*s, *a)).collect();
    for (slot, action) in slots.iter_mut() {
        for (wider, wider_action) in &snapshot {
            if wider != slot && slot.within(wider) && wider_action.0.rank() > action.0.rank() {
                *action = *wider_action;
            }
        }
    }
    Ok(slots)
}

pub(crate) fn policy_key(endpoint_id: u32, generation: u32, slot: &Slot) -> PolicyKey {
    PolicyKey {
        endpoint_id: endpoint_id.to_be_bytes(),
        generation: generation.to_be_bytes(),
        direction: slot.direction,
        peer_identity: slot.peer.to_be_bytes(),
        protocol: slot.protocol.unwrap_or(0),
        port: slot.port.to_be_bytes(),
    }
}

pub(crate) fn policy_prefix(slot: &Slot) -> u32 {
    slot.prefix_len()
}

pub(crate) fn policy_entry(slot: &Slot, action: RuleAction, rule_id: u32) -> PolicyEntry {
    let (action, proxy_port) = match action {
        RuleAction::Allow => (PolicyAction::Allow, 0),
        RuleAction::Deny => (PolicyAction::Deny, 0),
        RuleAction::Redirect { proxy_port } => (PolicyAction::Redirect, proxy_port),
    };
    PolicyEntry {
        rule_id,
        proxy_port,
        action: action as u8,
        match_type: slot.match_type() as u8,
    }
}

pub(crate) fn policy_record(prefix_len: u32, key: &PolicyKey, entry: &PolicyEntry) -> PolicyRecord {
    let any_protocol = prefix_len <= POLICY_PREFIX_ANY_PROTOCOL;
    let port_bits = prefix_len.saturating_sub(POLICY_PREFIX_ANY_PORT).min(16) as u8;
    let port = u16::from_be_bytes(key.port);
    let mask = prefix_mask(port_bits);
    let lo = port & mask;
    let hi = lo | !mask;
    PolicyRecord {
        direction: PolicyDirection::from_wire(key.direction),
        peer_identity: u32::from_be_bytes(key.peer_identity),
        protocol: if any_protocol { 0 } else { key.protocol },
        ports: (lo, hi),
        action: action_from(entry.action, entry.proxy_port),
        rule_id: entry.rule_id,
        match_type: PolicyMatch::from_u8(entry.match_type)
            .unwrap_or(PolicyMatch::None)
            .name(),
    }
}

fn action_from(action: u8, proxy_port: u16) -> RuleAction {
    match PolicyAction::from_u8(action) {
        Some(PolicyAction::Deny) => RuleAction::Deny,
        Some(PolicyAction::Redirect) => RuleAction::Redirect { proxy_port },
        _ => RuleAction::Allow,
    }
}

pub(crate) fn service_protocol(value: u8) -> Option<ServiceProtocol> {
    ServiceProtocol::from_number(value)
}

pub(crate) fn ct_record(key: &CtKey, entry: &CtEntry, now_ns: u64) -> CtRecord {
    CtRecord {
        scope: match key.scope {
            CT_SCOPE_INGRESS => CtScope::Ingress,
            CT_SCOPE_SERVICE => CtScope::Service,
            // CT_SCOPE_EGRESS; nothing else is ever written.
            _ => CtScope::Egress,
        },
        protocol: key.protocol,
        source: SocketAddr::new(ip_from(key.family, &key.saddr), key.sport),
        destination: SocketAddr::new(ip_from(key.family, &key.daddr), key.dport),
        expires_in: entry
            .expires_ns
            .checked_sub(now_ns)
            .map(Duration::from_nanos),
        packets: entry.packets,
        bytes: entry.bytes,
        verdict: action_from(entry.verdict, entry.proxy_port),
        peer_identity: entry.peer_identity,
        rule_id: entry.rule_id,
        backend_id: entry.backend_id,
        rev_nat_index: entry.rev_nat_index,
        flags_forward: entry.flags_forward,
        flags_reply: entry.flags_reply,
        replied: entry.state & CT_FLAG_REPLIED != 0,
        closing: entry.state & CT_FLAG_CLOSING != 0,
        from_proxy: entry.state & CT_FLAG_FROM_PROXY != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(peer: u32, protocol: u8, ports: Option<(u16, u16)>, action: RuleAction) -> PolicyRule {
        PolicyRule {
            direction: PolicyDirection::Ingress,
            peer_identity: peer,
            protocol,
            ports,
            action,
            rule_id: 7,
        }
    }

    #[test]
    fn port_ranges_become_aligned_prefixes() {
        assert_eq!(port_blocks(80, 80), vec![(80, 16)]);
        assert_eq!(port_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(port_blocks(8080, 8081), vec![(8080, 15)]);
        let blocks = port_blocks(1000, 2000);
        let covered: u32 = blocks.iter().map(|(_, bits)| 1u32 << (16 - bits)).sum();
        assert_eq!(covered, 1001);
        for (port, bits) in blocks {
            assert!((1000..=2000).contains(&port));
            assert_eq!(port & !prefix_mask(bits), 0, "aligned");
        }
    }

    #[test]
    fn a_wider_deny_of_the_same_peer_overrides_narrower_allows() {
        let table = PolicyTable {
            ingress_enforced: true,
            egress_enforced: false,
            rules: vec![
                rule(5, 6, Some((80, 80)), RuleAction::Allow),
                rule(5, 0, None, RuleAction::Deny),
                rule(6, 6, Some((80, 80)), RuleAction::Allow),
            ],
        };
        let slots = compile_policy(&table).expect("valid");
        let actions: Vec<(u32, RuleAction)> =
            slots.iter().map(|(s, (a, _))| (s.peer, *a)).collect();
        assert!(actions.contains(&(6, RuleAction::Allow)));
        assert!(!actions.contains(&(5, RuleAction::Allow)));
    }

    #[test]
    fn invalid_rules_are_refused_with_their_index() {
        let table = PolicyTable {
            rules: vec![rule(0, 0, Some((1, 2)), RuleAction::Allow)],
            ..PolicyTable::default()
        };
        assert!(matches!(
            compile_policy(&table),
            Err(DatapathError::InvalidPolicy { rule: 0, .. })
        ));
        let table = PolicyTable {
            rules: vec![rule(0, 17, None, RuleAction::Redirect { proxy_port: 1 })],
            ..PolicyTable::default()
        };
        assert!(compile_policy(&table).is_err());
    }

    #[test]
    fn records_show_the_port_range_of_a_prefix() {
        let slot = Slot {
            direction: 1,
            peer: 0,
            protocol: Some(6),
            port: 8080,
            port_bits: 15,
        };
        let key = policy_key(1, 1, &slot);
        let entry = policy_entry(&slot, RuleAction::Allow, 3);
        let record = policy_record(policy_prefix(&slot), &key, &entry);
        assert_eq!(record.ports, (8080, 8081));
        assert_eq!(record.match_type, "L4-Only");
    }

    #[test]
    fn each_kind_of_entry_carries_its_match_type_to_the_record() {
        let cases = [
            (7, None, 0, "L3-Only"),
            (7, Some(6), 0, "L3-Proto"),
            (7, Some(6), 16, "L3-L4"),
            (0, None, 0, "all"),
            (0, Some(17), 0, "Proto-Only"),
            (0, Some(17), 16, "L4-Only"),
        ];
        for (peer, protocol, port_bits, name) in cases {
            let slot = Slot {
                direction: 1,
                peer,
                protocol,
                port: 53,
                port_bits,
            };
            let entry = policy_entry(&slot, RuleAction::Allow, 1);
            let record = policy_record(policy_prefix(&slot), &policy_key(1, 1, &slot), &entry);
            assert_eq!(
                record.match_type, name,
                "peer {peer}, protocol {protocol:?}, port bits {port_bits}"
            );
        }
    }
}
