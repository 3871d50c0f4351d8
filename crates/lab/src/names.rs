//! How the lab names what it creates. Every name carries the lab's name, so
//! that `lab down` removes exactly what this lab created, even after a crash.

use std::path::PathBuf;

/// Prefix of every network namespace a lab creates.
pub const NETNS_PREFIX: &str = "ml-";

/// Where labs keep their state, sockets, logs and bpffs.
pub const RUN_ROOT: &str = "/run/myelin/labs";

/// The most nodes a lab runs (each runs an agent and a proxy; node numbers
/// pick pod CIDRs and underlay addresses, so they stay well below 255).
pub const MAX_NODES: u8 = 16;

/// The network namespace holding the lab's underlay bridge is
/// `ml-<lab>_underlay`; no node may take that name, nor one of the run
/// directory's own entries (a node's directory is named after it).
const RESERVED_NODE_NAMES: [&str; 5] = ["underlay", "bpf", "tls", "pods", "etcd"];

/// The name of the lab's `index`th node, as `lab up --nodes` names them.
pub fn node_name(index: u8) -> String {
    format!("node{index}")
}

/// Checks a node name: a DNS-1123 label of at most 32 characters, not one
/// of the lab's reserved names.
pub fn validate_node_name(name: &str) -> Result<(), String> {
    let label = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !label {
        return Err(format!(
            "invalid node name {name:?}: use 1 to 32 of a-z, 0-9 and '-', starting and ending \
             with a letter or digit"
        ));
    }
    if RESERVED_NODE_NAMES.contains(&name) {
        return Err(format!(
            "node name {name:?} is reserved by the lab ({}); pick another",
            RESERVED_NODE_NAMES.join(", ")
        ));
    }
    Ok(())
}

/// Checks a lab name: 1 to 16 of `[a-z0-9-]`, starting with a letter or digit.
pub fn validate_lab_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 16
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid lab name {name:?}: use 1 to 16 of a-z, 0-9 and '-', not starting with '-'"
        ))
    }
}

/// The names of one lab's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabNames {
    /// The lab's name.
    pub lab: String,
}

impl LabNames {
    /// Names for the lab `lab` (validated by the caller).
    pub fn new(lab: &str) -> Self {
        Self {
            lab: lab.to_string(),
        }
    }

    /// The lab's run directory.
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from(RUN_ROOT).join(&self.lab)
    }

    /// The supervisor's socket.
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("lab.sock")
    }

    /// The observer API of the lab's relay (every node's flows).
    pub fn relay_socket(&self) -> PathBuf {
        self.run_dir().join("relay.sock")
    }

    /// The lab's etcd: its members' data, logs and client sockets.
    pub fn etcd_dir(&self) -> PathBuf {
        self.run_dir().join("etcd")
    }

    /// The directory of a node's agent and proxy (sockets, state, logs).
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.run_dir().join(node)
    }

    /// The Hubble-compatible observer socket of a node's agent.
    pub fn observer_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("hubble.sock")
    }

    /// The bpffs mount of the lab.
    pub fn bpffs(&self) -> PathBuf {
        self.run_dir().join("bpf")
    }

    /// The token the service map pages of the lab's agents require.
    pub fn servicemap_token(&self) -> PathBuf {
        self.run_dir().join("servicemap-token")
    }

    /// The lab's observer PKI: the CA, the agents' server certificate and
    /// the client certificate `observe` and `hubble` present over TCP.
    pub fn observer_tls(&self) -> ObserverTlsFiles {
        let dir = self.run_dir().join("tls");
        ObserverTlsFiles {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            dir,
        }
    }

    /// The prefix shared by every network namespace of this lab.
    pub fn netns_prefix(&self) -> String {
        format!("{NETNS_PREFIX}{}_", self.lab)
    }

    /// The network namespace of a node.
    pub fn node_netns(&self, node: &str) -> String {
        format!("{}{node}", self.netns_prefix())
    }

    /// The network namespace of the lab's underlay: a bridge every node
    /// joins with a veth.
    pub fn underlay_netns(&self) -> String {
        format!("{}underlay", self.netns_prefix())
    }

    /// The network namespace of a pod. `_` cannot occur in Kubernetes
    /// names, so the parts cannot run into each other.
    pub fn pod_netns(&self, namespace: &str, pod: &str) -> String {
        format!("{}{namespace}_{pod}", self.netns_prefix())
    }
}

/// Where a lab keeps its observer PKI (PEM files, readable by root only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObserverTlsFiles {
    /// The directory holding them.
    pub dir: PathBuf,
    /// The lab's CA certificate: it signed the other two.
    pub ca: PathBuf,
    /// The agents' server certificate (localhost, 127.0.0.1, ::1).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The client certificate the observer's TCP port requires.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// The underlay's bridge, in the underlay's namespace.
pub const UNDERLAY_BRIDGE: &str = "underlay";

/// A node's end of its underlay veth, in the node's namespace.
pub const NODE_UNDERLAY_LINK: &str = "underlay";

/// The underlay's end of node `index`'s veth, a port of the bridge in the
/// underlay's namespace (links never enter this machine's own namespace).
pub fn underlay_port(index: u8) -> String {
    format!("ul{index}")
}

/// The host-side veth name of a pod: `ml` and 11 hex digits of a hash of the
/// pod's namespace and name (interface names have at most 15 characters).
pub fn host_veth(namespace: &str, pod: &str) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in namespace.bytes().chain([b'/']).chain(pod.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("ml{:011x}", hash & 0xfff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_short() {
        let names = LabNames::new("demo");
        assert_eq!(names.node_netns("node1"), "ml-demo_node1");
        assert_eq!(names.pod_netns("default", "xwing"), "ml-demo_default_xwing");
        assert!(names.pod_netns("a", "b").starts_with(&names.netns_prefix()));
        assert_eq!(names.underlay_netns(), "ml-demo_underlay");
        assert_eq!(underlay_port(12), "ul12");
        let a = host_veth("default", "xwing");
        assert_eq!(a.len(), 13);
        assert_ne!(a, host_veth("default", "tiefighter"));
        assert_eq!(a, host_veth("default", "xwing"));
    }

    #[test]
    fn node_names_are_checked() {
        assert_eq!(node_name(3), "node3");
        assert!(validate_node_name("node3").is_ok());
        assert!(validate_node_name("edge-a").is_ok());
        assert!(validate_node_name("Node3").is_err());
        assert!(validate_node_name("-a").is_err());
        assert!(validate_node_name(&"a".repeat(33)).is_err());
        let reserved = validate_node_name("underlay").expect_err("reserved");
        assert!(reserved.contains("reserved"), "{reserved}");
        assert!(validate_node_name("bpf").is_err());
    }

    #[test]
    fn lab_names_are_checked() {
        assert!(validate_lab_name("demo-1").is_ok());
        assert!(validate_lab_name("").is_err());
        assert!(validate_lab_name("Demo").is_err());
        assert!(validate_lab_name("a_b").is_err());
        assert!(validate_lab_name(&"a".repeat(17)).is_err());
    }
}
