//! The benchmark's datapath as one node of two (the cross-node scenarios).
//!
//! The pieces the agent adds to a node's datapath when the node has peers,
//! in the agent's order: at start the routing mode with its device (tunnel:
//! the VXLAN device in collect-metadata mode, `from_overlay`/`to_overlay`
//! on it; native: `from_underlay` on the links holding the node's underlay
//! address); once the other node is known its pods' identities in the
//! ipcache and, in tunnel mode, its pod CIDR as a tunnel endpoint and as a
//! route into the overlay device.

use std::net::IpAddr;
use std::str::FromStr;

use anyhow::Context as _;
use myelin_datapath::{Datapath, OVERLAY_DEVICE, RoutingMode, TunnelRoute, links_holding, pod_mtu};

/// The underlay's MTU: the harness's underlay veth keeps the default, as
/// the agent assumes of a node's network.
const UNDERLAY_MTU: u32 = 1500;

/// A pod of another node, written `IP=IDENTITY`: what the agent learns of it
/// from the cluster store and writes into its ipcache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemotePod {
    ip: IpAddr,
    identity: u32,
}

/// Why a `--remote-pod` value is unusable.
#[derive(Debug, thiserror::Error)]
#[error("--remote-pod {0:?}: expected IP=IDENTITY, for example 10.244.1.2=10001")]
pub struct BadRemotePod(String);

impl FromStr for RemotePod {
    type Err = BadRemotePod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadRemotePod(s.into());
        let (ip, identity) = s.split_once('=').ok_or_else(bad)?;
        Ok(Self {
            ip: ip.parse().map_err(|_| bad())?,
            identity: identity.parse().map_err(|_| bad())?,
        })
    }
}

/// Another node, written `POD_CIDR=UNDERLAY_IP`: its pod CIDR and the
/// underlay address its VXLAN packets go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteNode {
    pod_cidr: ipnet::IpNet,
    underlay: IpAddr,
}

/// Why a `--remote-node` value is unusable.
#[derive(Debug, thiserror::Error)]
#[error("--remote-node {0:?}: expected POD_CIDR=UNDERLAY_IP, for example 10.244.2.0/24=192.0.2.2")]
pub struct BadRemoteNode(String);

impl FromStr for RemoteNode {
    type Err = BadRemoteNode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadRemoteNode(s.into());
        let (cidr, underlay) = s.split_once('=').ok_or_else(bad)?;
        Ok(Self {
            pod_cidr: cidr.parse().map_err(|_| bad())?,
            underlay: underlay.parse().map_err(|_| bad())?,
        })
    }
}

/// Arguments of `myelin-bench datapath` for a node with a peer. Without
/// `--routing` the datapath is a lone node, as in the single-node scenarios.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// How packets to the other node's pods travel: `tunnel` (VXLAN, the
    /// sender's identity in the VNI) or `native` (routed over the underlay).
    #[arg(long, requires = "node_address")]
    routing: Option<RoutingMode>,
    /// The node's underlay address (tunnel: its family sizes the pods' MTU;
    /// native: `from_underlay` goes on the links holding it).
    #[arg(long)]
    node_address: Option<IpAddr>,
    /// A pod of the other node, `IP=IDENTITY`, written into the ipcache;
    /// `--ingress` rules may name it as the peer by its IP.
    #[arg(long = "remote-pod")]
    remote_pods: Vec<RemotePod>,
    /// The other node, `POD_CIDR=UNDERLAY_IP` (tunnel mode only).
    #[arg(long = "remote-node")]
    remote_nodes: Vec<RemoteNode>,
}

/// What [`NodeArgs::join`] attached, for [`Joined::leave`].
#[derive(Debug, Default)]
pub struct Joined {
    routing: Option<RoutingMode>,
    underlay_links: Vec<String>,
}

impl NodeArgs {
    /// The identity of the other node's pod at `ip`.
    pub fn remote_identity(&self, ip: IpAddr) -> Option<u32> {
        self.remote_pods
            .iter()
            .find(|p| p.ip == ip)
            .map(|p| p.identity)
    }

    /// What the agent does at start, before any endpoint: the overlay device
    /// (tunnel) or `from_underlay` on the underlay links (native), then the
    /// routing mode. Nothing without `--routing`.
    pub fn join(&self, datapath: &mut Datapath) -> anyhow::Result<Joined> {
        let (Some(routing), Some(address)) = (self.routing, self.node_address) else {
            anyhow::ensure!(
                self.remote_nodes.is_empty(),
                "--remote-node needs --routing tunnel"
            );
            return Ok(Joined::default());
        };
        let mut joined = Joined {
            routing: Some(routing),
            underlay_links: Vec::new(),
        };
        match routing {
            RoutingMode::Tunnel => {
                datapath
                    .attach_overlay(OVERLAY_DEVICE, pod_mtu(UNDERLAY_MTU, address.is_ipv6()))
                    .context("the overlay device")?;
            }
            RoutingMode::Native => {
                anyhow::ensure!(
                    self.remote_nodes.is_empty(),
                    "--remote-node is for tunnel mode: under native routing the node's routes carry the other node's pod CIDR"
                );
                let links = links_holding(&[address]).context("the underlay links")?;
                anyhow::ensure!(!links.is_empty(), "no link holds {address}");
                for link in links {
                    datapath
                        .attach_underlay(&link)
                        .with_context(|| format!("from_underlay on {link}"))?;
                    joined.underlay_links.push(link);
                }
            }
        }
        datapath
            .set_routing_mode(routing)
            .context("setting the routing mode")?;
        Ok(joined)
    }

    /// What the agent does once the cluster told it of the other node: its
    /// pods' identities into the ipcache and, in tunnel mode, its pod CIDR
    /// as a tunnel endpoint and a route into the overlay device.
    pub fn program(&self, datapath: &mut Datapath) -> anyhow::Result<()> {
        for pod in &self.remote_pods {
            let prefix = if pod.ip.is_ipv4() { 32 } else { 128 };
            datapath
                .ipcache_upsert(pod.ip, prefix, pod.identity)
                .with_context(|| format!("the ipcache entry of {}", pod.ip))?;
        }
        if self.routing == Some(RoutingMode::Tunnel) {
            let routes: Vec<TunnelRoute> = self
                .remote_nodes
                .iter()
                .map(|node| TunnelRoute {
                    pod_cidr: node.pod_cidr.network(),
                    prefix_len: node.pod_cidr.prefix_len(),
                    endpoint: node.underlay,
                })
                .collect();
            datapath
                .sync_tunnel_endpoints(&routes)
                .context("the tunnel endpoints")?;
            datapath
                .route_into_overlay(OVERLAY_DEVICE, &routes)
                .context("the routes into the overlay")?;
        }
        Ok(())
    }
}

impl Joined {
    /// How the node routes to its peer, for the log: `tunnel`, `native` or
    /// `none` (a lone node).
    pub fn routing(&self) -> String {
        self.routing
            .map_or_else(|| "none".to_string(), |mode| mode.to_string())
    }

    /// Undoes [`NodeArgs::join`]: the overlay device goes (with its routes),
    /// `from_underlay` is detached, so the next scenario finds the node's
    /// namespace as the harness built it.
    pub fn leave(&self, datapath: &mut Datapath) -> anyhow::Result<()> {
        if self.routing == Some(RoutingMode::Tunnel) {
            datapath
                .detach_overlay(OVERLAY_DEVICE)
                .context("removing the overlay device")?;
        }
        for link in &self.underlay_links {
            datapath
                .detach_underlay(link)
                .with_context(|| format!("detaching from_underlay from {link}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_pods_parse() {
        let p: RemotePod = "10.244.1.2=10001".parse().expect("valid");
        assert_eq!(p.ip, "10.244.1.2".parse::<IpAddr>().expect("ip"));
        assert_eq!(p.identity, 10001);
        for bad in ["10.244.1.2", "10.244.1.2=x", "x=1", "=1"] {
            assert!(bad.parse::<RemotePod>().is_err(), "{bad}");
        }
    }

    #[test]
    fn remote_nodes_parse() {
        let n: RemoteNode = "10.244.2.0/24=192.0.2.2".parse().expect("valid");
        assert_eq!(n.pod_cidr.prefix_len(), 24);
        assert_eq!(n.underlay, "192.0.2.2".parse::<IpAddr>().expect("ip"));
        for bad in ["10.244.2.0/24", "10.244.2.0=192.0.2.2", "10.244.2.0/24=x"] {
            assert!(bad.parse::<RemoteNode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn remote_identities_are_found_by_address() {
        let args = NodeArgs {
            routing: None,
            node_address: None,
            remote_pods: vec!["10.244.1.2=10001".parse().expect("valid")],
            remote_nodes: Vec::new(),
        };
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(args.remote_identity(ip("10.244.1.2")), Some(10001));
        assert_eq!(args.remote_identity(ip("10.244.1.3")), None);
    }
}
