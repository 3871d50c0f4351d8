//! The lab's record of everything it created, written before each thing is
//! created, so that `lab down` can remove it all even after a crash.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::Context as _;
use myelin_datapath::RoutingMode;
use serde::{Deserialize, Serialize};

use myelin_model::workload::{Deployment, Pod, Service};

/// A process the lab started, identified beyond its PID by its start time,
/// so that a recycled PID is never signalled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Process id (also its process group id: the lab starts each in a group of its own).
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start_time: u64,
    /// What it is, for status and logs.
    pub what: String,
}

/// A node of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name.
    pub name: String,
    /// Node number, from 1; picks the node's pod CIDRs.
    pub index: u8,
    /// Network namespace.
    pub netns: String,
    /// The node's own IPv4 address in its pod CIDR (gateway and DNS).
    pub router_v4: Ipv4Addr,
    /// The node's own IPv6 address in its pod CIDR.
    pub router_v6: Ipv6Addr,
    /// The agent process.
    pub agent: Option<ProcessRecord>,
    /// The L7 proxy process.
    #[serde(default)]
    pub proxy: Option<ProcessRecord>,
}

/// The phase of a pod being deleted: its containers' exits are expected
/// then, not news for its agent (which has forgotten the pod).
pub const TERMINATING: &str = "Terminating";

/// A pod of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// The pod as applied (for Deployment pods, as generated).
    pub pod: Pod,
    /// The Deployment that owns it, if any.
    pub owner: Option<String>,
    /// Node it runs on.
    pub node: String,
    /// Its network namespace.
    pub netns: String,
    /// Host-side veth in the node.
    pub host_veth: String,
    /// IPv4 address.
    pub ipv4: Ipv4Addr,
    /// IPv6 address.
    pub ipv6: Ipv6Addr,
    /// MAC address of the pod's `eth0` (chosen by the lab; absent in the
    /// state of labs made before it chose one).
    #[serde(default)]
    pub mac: Option<String>,
    /// Its container processes.
    pub processes: Vec<ProcessRecord>,
    /// Running, Failed, ..., [`TERMINATING`] while it is deleted.
    pub phase: String,
    /// Ready to serve.
    pub ready: bool,
}

/// A Service and the cluster IPs the lab allocated for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The Service as applied.
    pub service: Service,
    /// Cluster IPs, IPv4 then IPv6.
    pub cluster_ips: Vec<IpAddr>,
}

/// Everything a lab holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    /// The lab's name.
    pub lab: String,
    /// The supervisor process.
    pub supervisor: Option<ProcessRecord>,
    /// Nodes.
    pub nodes: Vec<NodeRecord>,
    /// Namespaces.
    pub namespaces: BTreeSet<String>,
    /// The labels of namespaces applied with some (policies select
    /// namespaces by them); absent: none.
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Services by `namespace/name`.
    pub services: BTreeMap<String, ServiceRecord>,
    /// Deployments by `namespace/name`.
    pub deployments: BTreeMap<String, Deployment>,
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<String, PodRecord>,
    /// Network policies by their key's text.
    #[serde(default)]
    pub policies: BTreeMap<String, myelin_model::Document>,
    /// The MTU of every pod's `eth0` (and its node-side veth): 1500 under
    /// native routing; a routing mode that adds headers between nodes (a
    /// tunnel) sets it lower, so that nothing is dropped for size.
    #[serde(default = "default_pod_mtu")]
    pub pod_mtu: u16,
    /// The cluster store the agents share (absent in the state of labs made
    /// before the lab ran one).
    #[serde(default)]
    pub store: Option<StoreRecord>,
    /// The lab's Hubble Relay.
    #[serde(default)]
    pub relay: Option<ProcessRecord>,
    /// How packets between pods of different nodes travel.
    #[serde(default = "routing_of_older_labs")]
    pub routing: RoutingMode,
}

/// The routing mode of a lab whose saved state predates the overlay: native.
fn routing_of_older_labs() -> RoutingMode {
    RoutingMode::Native
}

/// The MTU of a lab's pods under `routing`: the underlay's 1500 bytes, less
/// VXLAN's overhead over the IPv4 underlay in tunnel mode.
pub fn pod_mtu(routing: RoutingMode) -> u16 {
    match routing {
        RoutingMode::Native => UNDERLAY_MTU,
        RoutingMode::Tunnel => {
            u16::try_from(myelin_datapath::pod_mtu(u32::from(UNDERLAY_MTU), false))
                .unwrap_or(UNDERLAY_MTU)
        }
    }
}

/// The MTU of the lab's underlay links.
const UNDERLAY_MTU: u16 = 1500;

/// The lab's etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRecord {
    /// Where the agents reach it (`unix://<socket>` of each member, comma-separated).
    pub address: String,
    /// Its members' processes.
    pub members: Vec<ProcessRecord>,
}

fn default_pod_mtu() -> u16 {
    1500
}

impl Default for LabState {
    fn default() -> Self {
        Self {
            lab: String::new(),
            supervisor: None,
            nodes: Vec::new(),
            namespaces: BTreeSet::new(),
            namespace_labels: BTreeMap::new(),
            services: BTreeMap::new(),
            deployments: BTreeMap::new(),
            pods: BTreeMap::new(),
            policies: BTreeMap::new(),
            pod_mtu: default_pod_mtu(),
            store: None,
            relay: None,
            routing: routing_of_older_labs(),
        }
    }
}

impl LabState {
    /// Loads the state file of a lab.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is corrupt", path.display()))
    }

    /// Saves atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        // The lab's state names every pod and process: root's only.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut file| file.write_all(&serde_json::to_vec_pretty(self)?))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// Every process the lab started, pods first.
    pub fn processes(&self) -> Vec<ProcessRecord> {
        let mut all: Vec<ProcessRecord> = self
            .pods
            .values()
            .flat_map(|p| p.processes.clone())
            .collect();
        all.extend(self.nodes.iter().filter_map(|n| n.proxy.clone()));
        all.extend(self.nodes.iter().filter_map(|n| n.agent.clone()));
        all.extend(self.relay.clone());
        // The store last: agents leaving still write to it.
        all.extend(self.store.iter().flat_map(|s| s.members.clone()));
        all
    }
}

/// `namespace/name`.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The start time of a live process, or `None` if it does not exist.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // Field 22 overall is the 20th after the command name.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A record of the live process `pid`.
pub fn record_process(pid: u32, what: impl Into<String>) -> ProcessRecord {
    ProcessRecord {
        pid,
        start_time: process_start_time(pid).unwrap_or(0),
        what: what.into(),
    }
}

impl ProcessRecord {
    /// Whether this very process still runs (same PID and start time).
    pub fn alive(&self) -> bool {
        process_start_time(self.pid).is_some_and(|t| t == self.start_time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_recognised_by_start_time() {
        let me = record_process(std::process::id(), "test");
        assert!(me.start_time > 0);
        assert!(me.alive());
        let recycled = ProcessRecord {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!recycled.alive());
    }

    #[test]
    fn the_state_file_is_readable_by_root_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        LabState::default().save(&path).expect("saved");
        let mode = std::fs::metadata(&path)
            .expect("saved")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    #[test]
    fn state_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let mut state = LabState {
            lab: "t".into(),
            ..LabState::default()
        };
        state.namespaces.insert("default".into());
        state.save(&path).expect("save");
        assert_eq!(LabState::load(&path).expect("load"), state);
    }
}
