//! The datapath between nodes: the node's VXLAN device (collect-metadata
//! mode, the `from_overlay` program on its ingress), the tunnel endpoints
//! map (remote nodes' pod CIDRs → their underlay address) and the routing
//! mode the programs read.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;

use aya::maps::lpm_trie::Key;
use aya::programs::tc::TcAttachType;
use myelin_common::maps::{ROUTING_NATIVE, ROUTING_TUNNEL, names};
use myelin_common::{DatapathConfig, IpcacheKey, TunnelEndpoint};

use crate::error::DatapathError;
use crate::loader::{
    Attached, Datapath, PROGRAM_FROM_OVERLAY, PROGRAM_FROM_UNDERLAY, PROGRAM_TO_OVERLAY, unpin,
};
use crate::maps::{capacity, map_error, removed};
use crate::tables::{addr_bytes, family_of, ip_from};

/// The programs on the overlay device, and where.
const OVERLAY_HOOKS: [(&str, TcAttachType); 2] = [
    (PROGRAM_FROM_OVERLAY, TcAttachType::Ingress),
    (PROGRAM_TO_OVERLAY, TcAttachType::Egress),
];

/// The name Myelin gives the node's VXLAN device.
pub const OVERLAY_DEVICE: &str = "myelin_vxlan";

/// The overlay's UDP port: Cilium's VXLAN port (the kernel's default is
/// the IANA 4789).
pub const VXLAN_PORT: u16 = 8472;

/// Bytes the overlay adds to a pod's packet over an IPv4 underlay: outer
/// IPv4 header (20), UDP (8), VXLAN (8) and the inner Ethernet header (14).
pub const OVERLAY_OVERHEAD_IPV4: u32 = 50;

/// The same over an IPv6 underlay (outer IPv6 header: 40).
pub const OVERLAY_OVERHEAD_IPV6: u32 = 70;

/// The MTU that fits a pod's packets into the overlay: the underlay's MTU
/// less the overhead of its family (1450 for a 1500-byte IPv4 underlay).
/// Give it to the pods' interfaces (both ends of their veths) and to the
/// VXLAN device ([`Datapath::attach_overlay`]); then a pod never sends a
/// packet the overlay cannot carry, and a packet that is too big anyway
/// (a smaller underlay on the way) gets its ICMP answer from the kernel's
/// VXLAN driver (fragmentation needed / packet too big) instead of
/// vanishing.
pub const fn pod_mtu(underlay_mtu: u32, underlay_ipv6: bool) -> u32 {
    let overhead = if underlay_ipv6 {
        OVERLAY_OVERHEAD_IPV6
    } else {
        OVERLAY_OVERHEAD_IPV4
    };
    underlay_mtu.saturating_sub(overhead)
}

/// How packets to other nodes' pods travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// Encapsulated in VXLAN to the node owning the destination's pod CIDR
    /// ([`Datapath::sync_tunnel_endpoints`]), the sender's identity in the
    /// VNI; the receiver takes the source identity from the VNI.
    #[default]
    Tunnel,
    /// Not encapsulated: the node's routes carry pod CIDRs over the
    /// underlay; the receiver takes the source identity from its ipcache.
    Native,
}

impl RoutingMode {
    fn wire(self) -> u32 {
        match self {
            Self::Tunnel => ROUTING_TUNNEL,
            Self::Native => ROUTING_NATIVE,
        }
    }
}

impl std::fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tunnel => "tunnel",
            Self::Native => "native",
        })
    }
}

impl std::str::FromStr for RoutingMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "tunnel" => Ok(Self::Tunnel),
            "native" => Ok(Self::Native),
            other => Err(format!(
                "routing mode {other:?} is neither \"tunnel\" nor \"native\""
            )),
        }
    }
}

/// One remote node's pod CIDR and where its VXLAN packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TunnelRoute {
    /// The pod CIDR's address.
    pub pod_cidr: IpAddr,
    /// The pod CIDR's prefix length.
    pub prefix_len: u8,
    /// The owning node's underlay address (either family, whatever the
    /// pod CIDR's).
    pub endpoint: IpAddr,
}

impl std::fmt::Display for TunnelRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} via {}",
            self.pod_cidr, self.prefix_len, self.endpoint
        )
    }
}

/// The node's VXLAN device as [`Datapath::attach_overlay`] left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayDevice {
    /// Its name.
    pub name: String,
    /// Its ifindex in the node's network namespace.
    pub ifindex: u32,
    /// True when this call created it; false when it was found (an agent
    /// restart) and adopted.
    pub created: bool,
    /// True when `from_overlay` and `to_overlay` were already attached and
    /// were kept.
    pub readopted: bool,
}

/// The device's description as `ip -details -json link show` gives it.
fn describe(name: &str) -> Result<Option<serde_json::Value>, DatapathError> {
    let output = Command::new("ip")
        .args(["-details", "-json", "link", "show", "dev", name])
        .output()
        .map_err(|e| overlay_error(name, format!("cannot run `ip` (iproute2): {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("does not exist") {
            return Ok(None);
        }
        return Err(overlay_error(
            name,
            format!("`ip link show` failed: {}", stderr.trim()),
        ));
    }
    let mut links: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)
        .map_err(|e| overlay_error(name, format!("cannot read `ip -json` output: {e}")))?;
    Ok(links.pop())
}

/// Runs `ip ARGS` in the calling thread's network namespace.
fn ip(device: &str, args: &[&str]) -> Result<(), DatapathError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| overlay_error(device, format!("cannot run `ip` (iproute2): {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(overlay_error(
        device,
        format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    ))
}

fn overlay_error(device: &str, reason: String) -> DatapathError {
    DatapathError::Overlay {
        device: device.to_string(),
        reason,
    }
}

/// Why an existing device cannot serve as the overlay, if it cannot.
fn unfit(link: &serde_json::Value) -> Option<String> {
    let info = &link["linkinfo"];
    let kind = info["info_kind"].as_str().unwrap_or("none");
    if kind != "vxlan" {
        return Some(format!("it exists and is a {kind} device, not vxlan"));
    }
    let data = &info["info_data"];
    if data["external"].as_bool() != Some(true) {
        return Some("it exists as a vxlan device without collect-metadata (external) mode".into());
    }
    match data["port"].as_u64() {
        Some(port) if port == u64::from(VXLAN_PORT) => None,
        port => Some(format!(
            "it exists with UDP port {}, not {VXLAN_PORT}",
            port.map_or("unknown".to_string(), |p| p.to_string())
        )),
    }
}

/// The key of a CIDR in the tunnel endpoints map (the ipcache's layout).
fn cidr_key(address: &IpAddr, prefix_len: u8) -> Result<Key<IpcacheKey>, DatapathError> {
    crate::handles::prefix_key(address, prefix_len).ok_or_else(|| {
        DatapathError::InvalidTunnelEndpoint {
            cidr: format!("{address}/{prefix_len}"),
            reason: "the prefix is longer than the address".to_string(),
        }
    })
}

fn endpoint_value(address: &IpAddr) -> TunnelEndpoint {
    TunnelEndpoint {
        addr: addr_bytes(address),
        family: family_of(address),
        _pad: [0; 3],
    }
}

impl Datapath {
    /// Creates the node's VXLAN device `name` in the calling thread's
    /// network namespace (the node's, as for [`Datapath::attach_endpoint`])
    /// in collect-metadata mode on UDP port [`VXLAN_PORT`], without address
    /// learning or ARP (`arp off`, also on a device adopted), with `mtu` (the pods' MTU, [`pod_mtu`]), up; attaches
    /// `from_overlay` to its ingress and `to_overlay` to its egress and tells
    /// the programs its ifindex. The node's routes to the remote pod CIDRs
    /// should point into the device (`ip route add CIDR dev NAME`): packets
    /// too big for it then get the stack's ICMP answer, and what the node
    /// itself sends to remote pods takes the overlay too.
    /// Idempotent: a device of that name already fit for the job (an agent
    /// restart) is adopted, and programs already attached are kept.
    /// A device of that name that is something else is refused, untouched.
    pub fn attach_overlay(&mut self, name: &str, mtu: u32) -> Result<OverlayDevice, DatapathError> {
        let created = match describe(name)? {
            Some(link) => {
                if let Some(reason) = unfit(&link) {
                    return Err(overlay_error(
                        name,
                        format!("{reason}; remove it or choose another name"),
                    ));
                }
                false
            }
            None => {
                let port = VXLAN_PORT.to_string();
                ip(
                    name,
                    &[
                        "link",
                        "add",
                        name,
                        "type",
                        "vxlan",
                        "external",
                        "dstport",
                        &port,
                        "nolearning",
                    ],
                )?;
                true
            }
        };
        // No ARP: what the node's stack routes into the device (its own
        // packets, the proxy's answers to other nodes' clients) would
        // otherwise wait for a neighbour that never answers (an ARP request
        // has no tunnel key) and end in ICMP host unreachable. The
        // receiver's `from_overlay` ignores the inner MACs.
        ip(
            name,
            &[
                "link",
                "set",
                "dev",
                name,
                "mtu",
                &mtu.to_string(),
                "arp",
                "off",
                "up",
            ],
        )?;
        let ifindex =
            nix::net::if_::if_nametoindex(name).map_err(|source| DatapathError::Interface {
                name: name.to_string(),
                source,
            })?;
        let dir = self.overlay_pin_dir().join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|source| DatapathError::PinDirectory { path: dir, source })?;
        let mut readopted = true;
        for (program, attach_type) in OVERLAY_HOOKS {
            let pin = self.overlay_link_pin(name, program);
            let attached = self.attach_tc(name, program, attach_type, &pin)?;
            readopted &= matches!(attached, Attached::Kept);
        }
        let mut config = self.datapath_config()?;
        config.overlay_ifindex = ifindex;
        self.write_config(config)?;
        Ok(OverlayDevice {
            name: name.to_string(),
            ifindex,
            created,
            readopted,
        })
    }

    /// Removes the node's VXLAN device `name`: the programs stop sending to
    /// it (tunnel mode then passes packets to the stack), the programs are
    /// detached and the device deleted. Idempotent.
    pub fn detach_overlay(&mut self, name: &str) -> Result<(), DatapathError> {
        let mut config = self.datapath_config()?;
        config.overlay_ifindex = 0;
        self.write_config(config)?;
        for (program, _) in OVERLAY_HOOKS {
            let pin = self.overlay_link_pin(name, program);
            if pin.exists() {
                unpin(&pin)?;
            }
        }
        let _ = std::fs::remove_dir(self.overlay_pin_dir().join(name));
        match describe(name)? {
            Some(link) if unfit(&link).is_none() => ip(name, &["link", "del", "dev", name]),
            Some(_) => Err(overlay_error(
                name,
                "it is not Myelin's overlay device; left in place".into(),
            )),
            None => Ok(()),
        }
    }

    /// Attaches `from_underlay` to the ingress of `ifname`, a link of the
    /// calling thread's network namespace (the node's) that carries traffic
    /// from other nodes — in native routing, the link(s) holding the node's
    /// underlay address. A TCP flow from another node's pod to a pod of this
    /// node whose ingress policy redirects it is then handed to the node's
    /// proxy there (`bpf_sk_assign` works only at TC ingress; the pod's
    /// `to_container` could only drop it); all other packets pass
    /// untouched. The link is pinned at `<pin dir>/underlay/<ifname>/`.
    /// Idempotent: a live attachment of the same program is kept. Returns
    /// true when it was kept.
    pub fn attach_underlay(&mut self, ifname: &str) -> Result<bool, DatapathError> {
        let dir = self.underlay_pin_dir().join(ifname);
        std::fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDirectory {
            path: dir.clone(),
            source,
        })?;
        let pin = dir.join(PROGRAM_FROM_UNDERLAY);
        let attached =
            self.attach_tc(ifname, PROGRAM_FROM_UNDERLAY, TcAttachType::Ingress, &pin)?;
        Ok(matches!(attached, Attached::Kept))
    }

    /// Detaches `from_underlay` from `ifname` (its pinned link is removed).
    /// Idempotent.
    pub fn detach_underlay(&mut self, ifname: &str) -> Result<(), DatapathError> {
        let dir = self.underlay_pin_dir().join(ifname);
        let pin = dir.join(PROGRAM_FROM_UNDERLAY);
        if pin.exists() {
            unpin(&pin)?;
        }
        let _ = std::fs::remove_dir(dir);
        Ok(())
    }

    /// Sets how packets to other nodes' pods travel. A fresh datapath is in
    /// native mode (nothing is encapsulated until the agent says so).
    pub fn set_routing_mode(&mut self, mode: RoutingMode) -> Result<(), DatapathError> {
        let mut config = self.datapath_config()?;
        config.routing_mode = mode.wire();
        self.write_config(config)
    }

    /// The routing mode the programs follow.
    pub fn routing_mode(&self) -> Result<RoutingMode, DatapathError> {
        Ok(if self.datapath_config()?.routing_mode == ROUTING_TUNNEL {
            RoutingMode::Tunnel
        } else {
            RoutingMode::Native
        })
    }

    /// Programs the tunnel endpoints: `desired` is the whole set (every
    /// other node's pod CIDRs). All or nothing: the set is checked first
    /// (prefix lengths, one endpoint per CIDR, room in the map), then the
    /// differences are written and the CIDRs no longer listed removed; if
    /// a write fails, what was written is taken back and the map holds the
    /// old set.
    pub fn sync_tunnel_endpoints(&mut self, desired: &[TunnelRoute]) -> Result<(), DatapathError> {
        let mut wanted: BTreeMap<(IpAddr, u8), IpAddr> = BTreeMap::new();
        for route in desired {
            cidr_key(&route.pod_cidr, route.prefix_len)?;
            if let Some(other) = wanted.insert((route.pod_cidr, route.prefix_len), route.endpoint)
                && other != route.endpoint
            {
                return Err(DatapathError::InvalidTunnelEndpoint {
                    cidr: format!("{}/{}", route.pod_cidr, route.prefix_len),
                    reason: format!("listed with two endpoints, {other} and {}", route.endpoint),
                });
            }
        }
        let room = capacity(&self.maps.tunnel_endpoints, names::TUNNEL_ENDPOINTS)?;
        if wanted.len() > room {
            return Err(DatapathError::InvalidTunnelEndpoint {
                cidr: format!("{} CIDRs", wanted.len()),
                reason: format!("the map {} holds {room}", names::TUNNEL_ENDPOINTS),
            });
        }
        let current: BTreeMap<(IpAddr, u8), IpAddr> = self
            .tunnel_endpoints()?
            .into_iter()
            .map(|r| ((r.pod_cidr, r.prefix_len), r.endpoint))
            .collect();
        // (CIDR, what it held before) of every write done, for the undo.
        let mut done: Vec<((IpAddr, u8), Option<IpAddr>)> = Vec::new();
        let writes = wanted
            .iter()
            .filter(|(cidr, endpoint)| current.get(*cidr) != Some(*endpoint))
            .map(|(cidr, endpoint)| (*cidr, Some(*endpoint)))
            .chain(
                current
                    .keys()
                    .filter(|cidr| !wanted.contains_key(*cidr))
                    .map(|cidr| (*cidr, None)),
            )
            .collect::<Vec<_>>();
        for (cidr, endpoint) in writes {
            if let Err(e) = self.write_tunnel_endpoint(cidr, endpoint) {
                for (cidr, before) in done.into_iter().rev() {
                    let _ = self.write_tunnel_endpoint(cidr, before);
                }
                return Err(e);
            }
            done.push((cidr, current.get(&cidr).copied()));
        }
        Ok(())
    }

    /// Makes the node's routes into the overlay device `name` exactly the
    /// pod CIDRs of `routes` (both families): what the node's own stack
    /// sends to other nodes' pods, and the ICMP answers to what is too big
    /// for the overlay, go through the tunnel. Routes are replaced in place,
    /// never flushed first, so traffic on the routes kept never stops.
    pub fn route_into_overlay(
        &self,
        name: &str,
        routes: &[TunnelRoute],
    ) -> Result<(), DatapathError> {
        let wanted: BTreeSet<String> = routes
            .iter()
            .map(|r| format!("{}/{}", r.pod_cidr, r.prefix_len))
            .collect();
        let mut present = BTreeSet::new();
        for family in ["-4", "-6"] {
            let output = Command::new("ip")
                .args([family, "-json", "route", "show", "dev", name])
                .output()
                .map_err(|e| overlay_error(name, format!("cannot run `ip` (iproute2): {e}")))?;
            if !output.status.success() {
                return Err(overlay_error(
                    name,
                    format!(
                        "`ip route show` failed: {}",
                        String::from_utf8_lossy(&output.stderr).trim()
                    ),
                ));
            }
            let listed: Vec<serde_json::Value> =
                serde_json::from_slice(&output.stdout).unwrap_or_default();
            present.extend(
                listed
                    .iter()
                    .filter_map(|route| route["dst"].as_str())
                    .filter(|dst| dst.contains('/'))
                    .map(str::to_string),
            );
        }
        for cidr in wanted.difference(&present) {
            ip(name, &["route", "replace", cidr, "dev", name])?;
        }
        for cidr in present.difference(&wanted) {
            ip(name, &["route", "del", cidr, "dev", name])?;
        }
        Ok(())
    }

    /// The tunnel endpoints map, sorted by pod CIDR.
    pub fn tunnel_endpoints(&self) -> Result<Vec<TunnelRoute>, DatapathError> {
        let mut routes: Vec<TunnelRoute> = self
            .maps
            .tunnel_endpoints
            .iter()
            .filter_map(Result::ok)
            .map(|(key, value)| {
                let (pod_cidr, prefix_len) = crate::handles::key_prefix(&key);
                TunnelRoute {
                    pod_cidr,
                    prefix_len,
                    endpoint: ip_from(value.family, &value.addr),
                }
            })
            .collect();
        routes.sort();
        Ok(routes)
    }

    /// Writes (`Some`) or removes (`None`) one CIDR's endpoint.
    fn write_tunnel_endpoint(
        &mut self,
        (cidr, prefix_len): (IpAddr, u8),
        endpoint: Option<IpAddr>,
    ) -> Result<(), DatapathError> {
        let key = cidr_key(&cidr, prefix_len)?;
        let map = &mut self.maps.tunnel_endpoints;
        match endpoint {
            Some(endpoint) => map
                .insert(&key, endpoint_value(&endpoint), 0)
                .map_err(map_error(names::TUNNEL_ENDPOINTS)),
            None => removed(map.remove(&key), names::TUNNEL_ENDPOINTS),
        }
    }

    fn datapath_config(&self) -> Result<DatapathConfig, DatapathError> {
        self.maps
            .config
            .get(&0, 0)
            .map_err(map_error(names::CONFIG))
    }

    fn write_config(&mut self, config: DatapathConfig) -> Result<(), DatapathError> {
        self.maps
            .config
            .set(0, config, 0)
            .map_err(map_error(names::CONFIG))
    }
}

/// The links of the calling thread's network namespace that hold one of
/// `addresses` (the node's underlay address(es)), sorted, each once: where
/// [`Datapath::attach_underlay`] belongs.
pub fn links_holding(addresses: &[IpAddr]) -> Result<Vec<String>, DatapathError> {
    let all = nix::ifaddrs::getifaddrs().map_err(|e| DatapathError::Overlay {
        device: "underlay".to_string(),
        reason: format!("cannot list the node's addresses: {e}"),
    })?;
    let links: BTreeSet<String> = all
        .filter(|a| {
            a.address.as_ref().is_some_and(|sa| {
                let ip = sa
                    .as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())));
                ip.is_some_and(|ip| addresses.contains(&ip))
            })
        })
        .map(|a| a.interface_name)
        .collect();
    Ok(links.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_mtu_leaves_room_for_the_overlay_headers() {
        assert_eq!(pod_mtu(1500, false), 1450);
        assert_eq!(pod_mtu(1500, true), 1430);
        assert_eq!(pod_mtu(9000, false), 8950);
        assert_eq!(pod_mtu(40, false), 0);
    }

    #[test]
    fn a_routing_mode_reads_back_as_written() {
        for mode in [RoutingMode::Tunnel, RoutingMode::Native] {
            assert_eq!(mode.to_string().parse::<RoutingMode>(), Ok(mode));
        }
        let refused = "geneve".parse::<RoutingMode>().expect_err("no such mode");
        assert!(refused.contains("geneve"), "{refused}");
    }

    #[test]
    fn only_a_collect_metadata_vxlan_device_on_the_overlay_port_is_adopted() {
        let link = |kind: &str, external: bool, port: u16| {
            serde_json::json!({"linkinfo": {"info_kind": kind,
                "info_data": {"external": external, "port": port}}})
        };
        assert_eq!(unfit(&link("vxlan", true, VXLAN_PORT)), None);
        assert!(unfit(&link("veth", true, VXLAN_PORT)).is_some_and(|r| r.contains("veth")));
        assert!(unfit(&link("vxlan", false, VXLAN_PORT)).is_some_and(|r| r.contains("external")));
        assert!(unfit(&link("vxlan", true, 4789)).is_some_and(|r| r.contains("4789")));
    }
}
