//! What the store holds about nodes and endpoints (stored as JSON).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use myelin_policy::Identity;
use serde::{Deserialize, Serialize};

/// A node of the cluster, under the node's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The node's name (`node1`).
    pub name: String,
    /// Its underlay addresses.
    pub addresses: Vec<IpAddr>,
    /// Its pod CIDRs, at most one per family.
    pub pod_cidrs: Vec<IpNet>,
    /// Where other nodes send its pods' encapsulated traffic (an underlay address).
    pub tunnel_endpoint: Option<IpAddr>,
    /// Where its Hubble observer API listens (`unix:///path` or `host:port`), for the
    /// peer service and the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer_address: Option<String>,
}

/// A pod's address, under its node's lease: what other nodes' ipcache needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The address.
    pub ip: IpAddr,
    /// Its security identity.
    pub identity: Identity,
    /// The node it runs on.
    pub node: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// Named TCP container ports (`http` → 80), for policies that name ports.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_ports: BTreeMap<String, u16>,
    /// Named UDP container ports (`dns` → 53).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_udp_ports: BTreeMap<String, u16>,
    /// Whether the pod is ready to serve: only ready pods back services, on
    /// every node. Records written before readiness was published read as
    /// ready.
    #[serde(default = "ready_by_default")]
    pub ready: bool,
}

fn ready_by_default() -> bool {
    true
}
