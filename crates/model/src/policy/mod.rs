//! Network policy kinds: `cilium.io/v2` CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy, `networking.k8s.io/v1` NetworkPolicy.
//!
//! Decoding is as lenient as Cilium's (ports as strings or numbers,
//! protocols in any case, a bare address as a host CIDR, `description` at
//! the top level); validation rejects, by name, every field Myelin does not
//! enforce yet, so that no rule is silently weaker than its author meant.
//!
//! The helpers here ([`PortSpec::parse`], [`parse_cidr`], [`full_match`],
//! [`icmp_type`], [`split_source`]) are the single place these notations are
//! interpreted; the policy crate resolves with them.

pub mod cilium;
pub mod k8s;
mod validate;

use std::net::IpAddr;

pub use cilium::{
    Authentication, CidrRule, CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy,
    DefaultDenyConfig, EgressDenyRule, EgressRule, Entity, FqdnSelector, HeaderMatch, HttpRule,
    IcmpField, IcmpRule, IngressDenyRule, IngressRule, K8sServiceName, K8sServiceSelector, L4Proto,
    L7Rules, MismatchAction, PortDenyRule, PortProtocol, PortRule, Rule, ServicePeer,
};
use ipnet::IpNet;
pub use k8s::{
    IpBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec, PolicyType,
};
pub(crate) use validate::{validate_cilium, validate_network_policy};

use crate::workload::IntOrString;

/// A port as a policy names it, after decoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortSpec {
    /// Every port (`0`, empty or absent).
    All,
    /// A port or an inclusive range.
    Range(u16, u16),
    /// A named container port, resolved against the pods.
    Named(String),
}

impl PortSpec {
    /// Interprets `port` and `endPort` as Cilium and Kubernetes do: a number
    /// written as a string is a number, `0` or nothing is every port, any
    /// other string is a port name.
    pub fn parse(port: Option<&IntOrString>, end_port: Option<i64>) -> Result<PortSpec, String> {
        let start = match port {
            None => None,
            Some(IntOrString::Int(n)) => Some(port_number(*n)?),
            Some(IntOrString::String(s)) if s.is_empty() => None,
            Some(IntOrString::String(s)) => match s.parse::<i64>() {
                Ok(n) => Some(port_number(n)?),
                Err(_) => {
                    if end_port.is_some() {
                        return Err("endPort cannot be combined with a named port".into());
                    }
                    if !is_port_name(s) {
                        return Err(format!(
                            "`{s}` is neither a port number (0-65535) nor a valid port name (1-15 lower-case letters, digits and '-', with at least one letter)"
                        ));
                    }
                    return Ok(PortSpec::Named(s.clone()));
                }
            },
        };
        match (start, end_port) {
            (None | Some(0), None) => Ok(PortSpec::All),
            (None | Some(0), Some(_)) => {
                Err("endPort needs a non-zero `port` to start the range".into())
            }
            (Some(p), None) => Ok(PortSpec::Range(p, p)),
            (Some(p), Some(end)) => {
                let end = port_number(end)?;
                if end < p {
                    return Err(format!("endPort {end} is lower than port {p}"));
                }
                Ok(PortSpec::Range(p, end))
            }
        }
    }
}

fn port_number(n: i64) -> Result<u16, String> {
    u16::try_from(n).map_err(|_| format!("port {n} is outside 0-65535"))
}

/// Whether `name` is a valid port name (IANA service name syntax, as
/// Kubernetes requires of container port names).
pub fn is_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Parses a CIDR; an address alone is its host prefix, as Cilium accepts
/// it. Host bits set below the prefix are cleared (Cilium masks them too).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "`{text}` is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32, nor an address"
    ))
}

/// Compiles `pattern` so that it must match the whole input, as Cilium's
/// HTTP rules (Envoy safe_regex) do: `/v1/` does not match `/v1/x`.
///
/// The pattern must be a regular expression by itself: `GET)|(.*` parses only
/// once wrapped in the anchoring group, which it would then escape to match
/// anything.
pub fn full_match(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(pattern)?;
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

/// The number of an ICMP type given as a number or a name, for `IPv4` or
/// `IPv6` (the names Cilium's `ICMPField` accepts).
pub fn icmp_type(value: &IntOrString, ipv6: bool) -> Result<u8, String> {
    let text = match value {
        IntOrString::Int(n) => {
            return u8::try_from(*n).map_err(|_| format!("ICMP type {n} is outside 0-255"));
        }
        IntOrString::String(s) => s,
    };
    if let Ok(n) = text.parse::<i64>() {
        return u8::try_from(n).map_err(|_| format!("ICMP type {n} is outside 0-255"));
    }
    let v4: &[(&str, u8)] = &[
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Redirect", 5),
        ("EchoRequest", 8),
        ("RouterAdvertisement", 9),
        ("RouterSelection", 10),
        ("TimeExceeded", 11),
        ("ParameterProblem", 12),
        ("Timestamp", 13),
        ("TimestampReply", 14),
        ("Photuris", 40),
        ("ExtendedEchoRequest", 42),
        ("ExtendedEchoReply", 43),
    ];
    let v6: &[(&str, u8)] = &[
        ("DestinationUnreachable", 1),
        ("PacketTooBig", 2),
        ("TimeExceeded", 3),
        ("ParameterProblem", 4),
        ("EchoRequest", 128),
        ("EchoReply", 129),
        ("MulticastListenerQuery", 130),
        ("MulticastListenerReport", 131),
        ("MulticastListenerDone", 132),
        ("RouterSolicitation", 133),
        ("RouterAdvertisement", 134),
        ("NeighborSolicitation", 135),
        ("NeighborAdvertisement", 136),
        ("RedirectMessage", 137),
        ("RouterRenumbering", 138),
        ("ICMPNodeInformationQuery", 139),
        ("ICMPNodeInformationResponse", 140),
        ("InverseNeighborDiscoverySolicitation", 141),
        ("InverseNeighborDiscoveryAdvertisement", 142),
        ("HomeAgentAddressDiscoveryRequest", 144),
        ("HomeAgentAddressDiscoveryReply", 145),
        ("MobilePrefixSolicitation", 146),
        ("MobilePrefixAdvertisement", 147),
        ("DuplicateAddressRequestCodeSuffix", 157),
        ("DuplicateAddressConfirmationCodeSuffix", 158),
        ("ExtendedEchoRequest", 160),
        ("ExtendedEchoReply", 161),
    ];
    let table = if ipv6 { v6 } else { v4 };
    table
        .iter()
        .find(|(name, _)| *name == text)
        .map(|(_, n)| *n)
        .ok_or_else(|| {
            format!(
                "`{text}` is not an ICMP{} type name; use a number or one of {}",
                if ipv6 { "v6" } else { "" },
                table.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            )
        })
}

/// Splits a Cilium selector key into its label source and key:
/// `k8s:org` → (`Some("k8s")`, `org`); `org` → (`None`, `org`), which
/// Cilium reads as source `any`.
pub fn split_source(key: &str) -> (Option<&str>, &str) {
    match key.split_once(':') {
        Some((source, rest)) if !source.is_empty() && !source.contains('/') => (Some(source), rest),
        _ => (None, key),
    }
}

/// Whether `text` is a DNS name Cilium's `matchName` accepts (letters,
/// digits, `-`, `_`, `.`; an optional trailing dot), or with `pattern`, a
/// `matchPattern` (which may also hold `*`).
pub fn is_fqdn(text: &str, pattern: bool) -> bool {
    !text.is_empty()
        && text.len() <= 255
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') || (pattern && b == b'*')
        })
}

#[cfg(test)]
mod tests {
    use super::full_match;

    /// Found by the proxy's `rules` fuzz target; the model validates the same patterns
    /// first: one that parses only inside `^(?:…)$` escapes the group (`GET)|(.*` became
    /// `^(?:GET)|(.*)$`, matching anything) and must be rejected.
    #[test]
    fn patterns_that_escape_the_anchoring_group_are_rejected() {
        for pattern in [")(", "GET)|(.*", "/public)|(.*", "a)|(?:b"] {
            assert!(full_match(pattern).is_err(), "{pattern:?} was accepted");
        }
        let path = full_match("/v1/.*|/v2").unwrap();
        assert!(path.is_match("/v1/x") && path.is_match("/v2"));
        assert!(!path.is_match("/v2/x") && !path.is_match("/x/v1/"));
    }
}
