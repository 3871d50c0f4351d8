//! Pod addresses of the node's pod CIDRs, for the CNI plugin's ADDs: one
//! per family, never one that is in use. What is in use is what the agent
//! persisted before it wired a pod (see `state::CniState`), so a restarted
//! agent never hands out an address twice.
//!
//! The first host address of each CIDR is the node's (the pods' IPv4
//! gateway, as in the lab); pods get the ones after it.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why no address could be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The agent was started without a pod CIDR.
    #[error(
        "this node has no pod CIDR to give addresses from; start the agent with --pod-cidr \
         (one per family)"
    )]
    NoPodCidr,
    /// Every address of a CIDR is taken.
    #[error("pod CIDR {0} has no free address left; delete pods or give the node a larger CIDR")]
    Exhausted(IpNet),
}

/// A pod's addresses: one per family the node has a pod CIDR of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddresses {
    /// IPv4.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6.
    pub ipv6: Option<Ipv6Addr>,
}

/// The node's pod CIDRs, at most one per family (the first of each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodCidrs {
    v4: Option<Ipv4Net>,
    v6: Option<Ipv6Net>,
}

impl PodCidrs {
    /// The first CIDR of each family in `cidrs`.
    pub fn new(cidrs: &[IpNet]) -> Self {
        let v4 = cidrs.iter().find_map(|c| match c {
            IpNet::V4(net) => Some(net.trunc()),
            IpNet::V6(_) => None,
        });
        let v6 = cidrs.iter().find_map(|c| match c {
            IpNet::V6(net) => Some(net.trunc()),
            IpNet::V4(_) => None,
        });
        Self { v4, v6 }
    }

    /// Whether there is any CIDR to give addresses from.
    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }

    /// The pods' IPv4 gateway: the CIDR's first host address, the node's.
    pub fn gateway_v4(&self) -> Option<Ipv4Addr> {
        self.v4.map(|net| nth_v4(net, 1))
    }

    /// The lowest free address of each family, none of them in `used`.
    pub fn allocate(&self, used: &BTreeSet<IpAddr>) -> Result<PodAddresses, IpamError> {
        if self.is_empty() {
            return Err(IpamError::NoPodCidr);
        }
        let ipv4 = self
            .v4
            .map(|net| {
                // The network's address, the gateway and the broadcast are not pods'.
                let hosts = (1u64 << (32 - u32::from(net.prefix_len()))).saturating_sub(1);
                (2..hosts)
                    .map(|n| nth_v4(net, n))
                    .find(|a| !used.contains(&IpAddr::V4(*a)))
                    .ok_or(IpamError::Exhausted(IpNet::V4(net)))
            })
            .transpose()?;
        let ipv6 = self
            .v6
            .map(|net| {
                let bits = 128 - u32::from(net.prefix_len());
                // At most as many tries as addresses in use, plus one.
                let hosts = if bits >= 64 { u64::MAX } else { 1u64 << bits };
                (2..hosts)
                    .map(|n| nth_v6(net, n))
                    .find(|a| !used.contains(&IpAddr::V6(*a)))
                    .ok_or(IpamError::Exhausted(IpNet::V6(net)))
            })
            .transpose()?;
        Ok(PodAddresses { ipv4, ipv6 })
    }
}

fn nth_v4(net: Ipv4Net, n: u64) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(n as u32))
}

fn nth_v6(net: Ipv6Net, n: u64) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()).wrapping_add(u128::from(n)))
}

/// The MAC address of a pod's interface: `0a:58` and its IPv4 address (the
/// convention of Kubernetes' network plugins), or its IPv6 address's last
/// four bytes; locally administered either way.
pub fn pod_mac(addresses: &PodAddresses) -> [u8; 6] {
    let tail = match (addresses.ipv4, addresses.ipv6) {
        (Some(v4), _) => v4.octets(),
        (None, Some(v6)) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
        (None, None) => [0, 0, 0, 1],
    };
    [0x0a, 0x58, tail[0], tail[1], tail[2], tail[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(text: &[&str]) -> PodCidrs {
        let nets: Vec<IpNet> = text.iter().map(|t| t.parse().expect("cidr")).collect();
        PodCidrs::new(&nets)
    }

    #[test]
    fn addresses_start_after_the_gateway_and_skip_those_in_use() {
        let pool = cidrs(&["10.244.7.0/24", "fd00:10:244:7::/64"]);
        assert_eq!(pool.gateway_v4(), Some(Ipv4Addr::new(10, 244, 7, 1)));
        let first = pool.allocate(&BTreeSet::new()).expect("free");
        assert_eq!(first.ipv4, Some(Ipv4Addr::new(10, 244, 7, 2)));
        assert_eq!(first.ipv6, Some("fd00:10:244:7::2".parse().expect("v6")));
        let used: BTreeSet<IpAddr> = [
            IpAddr::V4(Ipv4Addr::new(10, 244, 7, 2)),
            IpAddr::V4(Ipv4Addr::new(10, 244, 7, 3)),
            "fd00:10:244:7::2".parse().expect("v6"),
        ]
        .into();
        let next = pool.allocate(&used).expect("free");
        assert_eq!(next.ipv4, Some(Ipv4Addr::new(10, 244, 7, 4)));
        assert_eq!(next.ipv6, Some("fd00:10:244:7::3".parse().expect("v6")));
    }

    #[test]
    fn a_full_cidr_is_an_error_naming_it_and_no_cidr_says_what_to_give() {
        let pool = cidrs(&["10.0.0.0/30"]);
        let used: BTreeSet<IpAddr> = [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))].into();
        let error = pool.allocate(&used).expect_err("full");
        assert_eq!(
            error,
            IpamError::Exhausted("10.0.0.0/30".parse().expect("cidr"))
        );
        assert!(error.to_string().contains("10.0.0.0/30"), "{error}");
        let none = PodCidrs::new(&[]).allocate(&BTreeSet::new());
        assert_eq!(none, Err(IpamError::NoPodCidr));
    }

    #[test]
    fn one_family_alone_gives_addresses_of_that_family() {
        let pool = cidrs(&["fd00:1::/120"]);
        let only = pool.allocate(&BTreeSet::new()).expect("free");
        assert_eq!(only.ipv4, None);
        assert_eq!(only.ipv6, Some("fd00:1::2".parse().expect("v6")));
        assert_eq!(pod_mac(&only), [0x0a, 0x58, 0, 0, 0, 2]);
    }

    #[test]
    fn macs_carry_the_ipv4_address() {
        let addresses = PodAddresses {
            ipv4: Some(Ipv4Addr::new(10, 244, 1, 5)),
            ipv6: None,
        };
        assert_eq!(pod_mac(&addresses), [0x0a, 0x58, 10, 244, 1, 5]);
    }
}
