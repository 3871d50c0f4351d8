//! The lab's underlay: a bridge in a namespace of the lab's own
//! (`ml-<lab>_underlay`) that every node joins with a veth, as machines
//! join a switch. Node N has 10.250.0.N/24 and fd00:10:250::N/64 on its end;
//! nothing routes out of 10.250.0.0/24 and fd00:10:250::/64, and no
//! namespace has a default route. The underlay's namespace itself speaks no
//! IP: it only switches frames between the nodes.
//!
//! Between nodes the lab routes natively: each node routes every other
//! node's pod CIDRs via that node's underlay address. (The VXLAN overlay is
//! another routing mode over the same underlay.)

use anyhow::Context as _;

use crate::ipam;
use crate::names::{LabNames, NODE_UNDERLAY_LINK, UNDERLAY_BRIDGE, underlay_port};
use crate::net;
use crate::state::NodeRecord;

/// Creates the underlay's namespace and its bridge.
pub fn create(names: &LabNames) -> anyhow::Result<()> {
    let netns = names.underlay_netns();
    net::add_netns(&netns)?;
    // Frames of both families cross the bridge; the namespace sends none of its own.
    net::sysctls(
        &netns,
        &[
            ("net/ipv6/conf/all/disable_ipv6", "1"),
            ("net/ipv6/conf/default/disable_ipv6", "1"),
        ],
    )?;
    net::ip(&[
        "-n",
        &netns,
        "link",
        "add",
        UNDERLAY_BRIDGE,
        "type",
        "bridge",
    ])?;
    net::ip(&["-n", &netns, "link", "set", UNDERLAY_BRIDGE, "up"])
}

/// Joins `node` (whose namespace exists) to the underlay: a veth from a
/// bridge port to the node's `underlay` link, with the node's underlay
/// addresses.
pub fn join(names: &LabNames, node: &NodeRecord) -> anyhow::Result<()> {
    let underlay = names.underlay_netns();
    let port = underlay_port(node.index);
    let netns = node.netns.as_str();
    net::ip(&[
        "-n",
        &underlay,
        "link",
        "add",
        &port,
        "type",
        "veth",
        "peer",
        "name",
        NODE_UNDERLAY_LINK,
        "netns",
        netns,
    ])
    .with_context(|| format!("joining node {} to the underlay", node.name))?;
    net::ip(&[
        "-n",
        &underlay,
        "link",
        "set",
        &port,
        "master",
        UNDERLAY_BRIDGE,
        "up",
    ])?;
    let v4 = format!(
        "{}/{}",
        ipam::node_underlay_v4(node.index),
        ipam::UNDERLAY_V4_PREFIX
    );
    let v6 = format!(
        "{}/{}",
        ipam::node_underlay_v6(node.index),
        ipam::UNDERLAY_V6_PREFIX
    );
    net::ip(&["-n", netns, "addr", "add", &v4, "dev", NODE_UNDERLAY_LINK])?;
    net::ip(&[
        "-n",
        netns,
        "addr",
        "add",
        &v6,
        "dev",
        NODE_UNDERLAY_LINK,
        "nodad",
    ])?;
    net::ip(&["-n", netns, "link", "set", NODE_UNDERLAY_LINK, "up"])
}

/// Removes node `index`'s veth from the underlay, by its port's name (its
/// other end goes with it); absent is fine.
pub fn leave(names: &LabNames, index: u8) -> anyhow::Result<()> {
    let underlay = names.underlay_netns();
    if !net::list_netns().contains(&underlay) {
        return Ok(());
    }
    let port = underlay_port(index);
    if net::ip(&["-n", &underlay, "link", "show", "dev", &port]).is_err() {
        return Ok(());
    }
    net::ip(&["-n", &underlay, "link", "delete", "dev", &port])
}

/// Native routing: `node` routes `peer`'s pod CIDRs (both families) via
/// `peer`'s underlay addresses.
pub fn route_to(node: &NodeRecord, peer: &NodeRecord) -> anyhow::Result<()> {
    let [v4_cidr, v6_cidr] = ipam::node_pod_cidrs(peer.index);
    let via_v4 = ipam::node_underlay_v4(peer.index).to_string();
    let via_v6 = ipam::node_underlay_v6(peer.index).to_string();
    let netns = node.netns.as_str();
    net::ip(&[
        "-n",
        netns,
        "route",
        "replace",
        &v4_cidr,
        "via",
        &via_v4,
        "dev",
        NODE_UNDERLAY_LINK,
    ])
    .with_context(|| format!("routing {}'s pods from {}", peer.name, node.name))?;
    net::ip(&[
        "-n",
        netns,
        "-6",
        "route",
        "replace",
        &v6_cidr,
        "via",
        &via_v6,
        "dev",
        NODE_UNDERLAY_LINK,
    ])
    .with_context(|| format!("routing {}'s pods from {}", peer.name, node.name))
}

/// Takes back [`route_to`]: `node` no longer routes `peer`'s pod CIDRs.
/// Routes that are gone already are fine.
pub fn unroute(node: &NodeRecord, peer: &NodeRecord) -> anyhow::Result<()> {
    let netns = node.netns.as_str();
    for (family, cidr) in ["-4", "-6"]
        .into_iter()
        .zip(ipam::node_pod_cidrs(peer.index))
    {
        let present = std::process::Command::new("ip")
            .args(["-n", netns, family, "route", "show", "exact", &cidr])
            .output()
            .context("running `ip`")?;
        if !present.stdout.is_empty() {
            net::ip(&["-n", netns, family, "route", "delete", &cidr])?;
        }
    }
    Ok(())
}
