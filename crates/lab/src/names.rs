//! How the lab names what it creates. Every name carries the lab's name, so
//! that `lab down` removes exactly what this lab created, even after a crash.

use std::path::PathBuf;

/// Prefix of every network namespace a lab creates.
pub const NETNS_PREFIX: &str = "ml-";

/// Where labs keep their state, sockets, logs and bpffs.
pub const RUN_ROOT: &str = "/run/myelin/labs";

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
        let a = host_veth("default", "xwing");
        assert_eq!(a.len(), 13);
        assert_ne!(a, host_veth("default", "tiefighter"));
        assert_eq!(a, host_veth("default", "xwing"));
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
