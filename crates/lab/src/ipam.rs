//! Address plans: a node's pod CIDRs and the cluster's service CIDRs.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IPv4 pod CIDR of node `index` is 10.244.<index>.0/24.
pub fn node_router_v4(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, index, 1)
}

/// The IPv6 pod CIDR of node `index` is fd00:10:244:<index>::/64.
pub fn node_router_v6(index: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(index), 0, 0, 0, 1)
}

/// The IPv4 and IPv6 pod CIDRs of a node, as text.
pub fn node_pod_cidrs(index: u8) -> [String; 2] {
    [
        format!("10.244.{index}.0/24"),
        format!("fd00:10:244:{index}::/64"),
    ]
}

/// The underlay's IPv4 prefix length: node `index` has 10.250.0.<index>/24.
pub const UNDERLAY_V4_PREFIX: u8 = 24;

/// The underlay's IPv6 prefix length: node `index` has fd00:10:250::<index>/64.
pub const UNDERLAY_V6_PREFIX: u8 = 64;

/// Node `index`'s IPv4 address on the underlay (the bridge joining the
/// nodes): 10.250.0.<index>.
pub fn node_underlay_v4(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, 0, index)
}

/// Node `index`'s IPv6 address on the underlay: fd00:10:250::<index>.
pub fn node_underlay_v6(index: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x250, 0, 0, 0, 0, u16::from(index))
}

/// The cluster's service CIDRs, as text.
pub const SERVICE_CIDRS: [&str; 2] = ["10.96.0.0/16", "fd00:10:96::/112"];

/// The next free pod address pair on node `index`: host numbers 2..=254,
/// the same number in both families.
pub fn next_pod_addresses(index: u8, used: &BTreeSet<IpAddr>) -> Option<(Ipv4Addr, Ipv6Addr)> {
    (2u8..=254).find_map(|host| {
        let v4 = Ipv4Addr::new(10, 244, index, host);
        let v6 = Ipv6Addr::new(
            0xfd00,
            0x10,
            0x244,
            u16::from(index),
            0,
            0,
            0,
            u16::from(host),
        );
        (!used.contains(&IpAddr::V4(v4)) && !used.contains(&IpAddr::V6(v6))).then_some((v4, v6))
    })
}

/// The next free service address pair, from 10.96.0.10 / fd00:10:96::a up,
/// the same offset in both families.
pub fn next_service_addresses(used: &BTreeSet<IpAddr>) -> Option<(Ipv4Addr, Ipv6Addr)> {
    (10u16..=0xfffe).find_map(|offset| {
        let v4 = Ipv4Addr::new(10, 96, (offset >> 8) as u8, offset as u8);
        let v6 = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, offset);
        (!used.contains(&IpAddr::V4(v4)) && !used.contains(&IpAddr::V6(v6))).then_some((v4, v6))
    })
}

/// Whether `ip` lies in the service CIDRs (for a user-chosen clusterIP).
pub fn in_service_cidr(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[..2] == [10, 96],
        IpAddr::V6(v6) => v6.segments()[..7] == [0xfd00, 0x10, 0x96, 0, 0, 0, 0],
    }
}

/// The MAC address of a pod's `eth0`: `0a:58` and its IPv4 address (the
/// convention of Kubernetes' bridge plugins): locally administered, unicast,
/// unique in the lab. The lab gives it to the veth when it creates it and to
/// the agent with the endpoint, so the datapath can deliver into the pod.
pub fn pod_mac(ipv4: Ipv4Addr) -> String {
    let [a, b, c, d] = ipv4.octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_paired_addresses_and_skip_used_ones() {
        let mut used = BTreeSet::new();
        let (v4, v6) = next_pod_addresses(1, &used).expect("free");
        assert_eq!(
            (v4.to_string(), v6.to_string()),
            ("10.244.1.2".into(), "fd00:10:244:1::2".into())
        );
        used.insert(IpAddr::V4(v4));
        let (v4, _) = next_pod_addresses(1, &used).expect("free");
        assert_eq!(v4.to_string(), "10.244.1.3");
        let full: BTreeSet<IpAddr> = (2u8..=254)
            .map(|h| IpAddr::V4(Ipv4Addr::new(10, 244, 1, h)))
            .collect();
        assert_eq!(next_pod_addresses(1, &full), None);
    }

    #[test]
    fn nodes_have_an_underlay_address_per_family_apart_from_the_pod_cidrs() {
        assert_eq!(node_underlay_v4(3).to_string(), "10.250.0.3");
        assert_eq!(node_underlay_v6(3).to_string(), "fd00:10:250::3");
        assert_eq!(
            node_pod_cidrs(3),
            [
                "10.244.3.0/24".to_string(),
                "fd00:10:244:3::/64".to_string()
            ]
        );
    }

    #[test]
    fn services_start_at_ten() {
        let (v4, v6) = next_service_addresses(&BTreeSet::new()).expect("free");
        assert_eq!(
            (v4.to_string(), v6.to_string()),
            ("10.96.0.10".into(), "fd00:10:96::a".into())
        );
        assert!(in_service_cidr(IpAddr::V4(v4)));
        assert!(in_service_cidr(IpAddr::V6(v6)));
        assert!(!in_service_cidr("10.97.0.1".parse().expect("ip")));
    }

    #[test]
    fn pod_macs_are_local_unicast_and_follow_the_address() {
        assert_eq!(pod_mac(Ipv4Addr::new(10, 244, 1, 5)), "0a:58:0a:f4:01:05");
        assert_ne!(
            pod_mac(Ipv4Addr::new(10, 244, 1, 5)),
            pod_mac(Ipv4Addr::new(10, 244, 1, 6))
        );
    }
}
