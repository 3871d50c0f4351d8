//! What the CNI plugin (`myelin-cni`) and the agent say to each other, and
//! the pod metadata the agent learns from its control plane: the runtime
//! names a pod only by namespace and name, its labels come from there.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// One attachment of a container to the network, as the runtime names it:
/// the spec's key for ADD, CHECK and DEL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentKey {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface inside the container.
    pub ifname: String,
}

/// An ADD: wire the container and register its pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAdd {
    /// Which attachment.
    pub key: AttachmentKey,
    /// `CNI_NETNS`: the container's network namespace file.
    pub netns: String,
    /// The pod's namespace (`K8S_POD_NAMESPACE` of `CNI_ARGS`).
    pub namespace: String,
    /// The pod's name (`K8S_POD_NAME` of `CNI_ARGS`).
    pub pod: String,
    /// The MTU of the pod's interface; the agent's own when absent.
    pub mtu: Option<u32>,
    /// How long the agent waits for the pod's metadata before it answers
    /// that it does not know the pod (milliseconds).
    pub wait_for_pod_ms: u64,
}

/// A container wired and registered: what ADD returns and CHECK verifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachment {
    /// Which attachment.
    pub key: AttachmentKey,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The container's network namespace file.
    pub netns: String,
    /// The node's end of the veth.
    pub host_veth: String,
    /// The MAC address of the container's interface.
    pub mac: String,
    /// The MTU of both ends.
    pub mtu: u32,
    /// The pod's IPv4 address (a /32), if the node has an IPv4 pod CIDR.
    pub ipv4: Option<Ipv4Addr>,
    /// The pod's IPv6 address (a /128), if the node has an IPv6 pod CIDR.
    pub ipv6: Option<Ipv6Addr>,
    /// The pod's IPv4 gateway (on-link, held by the node).
    pub gateway_v4: Option<Ipv4Addr>,
    /// The pod's IPv6 gateway (the node end's link-local address).
    pub gateway_v6: Option<Ipv6Addr>,
}

/// What the control plane says of a pod: enough to give it an identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMetadata {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its service account; `None` is the namespace's `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// Whether the agent can serve ADDs (CNI STATUS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniReadiness {
    /// Ready for ADDs: a pod CIDR to allocate from, the datapath loaded.
    pub ready: bool,
    /// Why not, when not.
    pub reason: Option<String>,
}

/// The node end of a container's veth: derived from the attachment alone,
/// so that the plugin finds it again when the agent is down (DEL). Fifteen
/// bytes at most, as the kernel requires: `myc` and 12 hex digits of a
/// hash (FNV-1a, 64 bits) of the container id and interface name.
pub fn host_veth_name(key: &AttachmentKey) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = key
        .container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(key.ifname.bytes());
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("myc{:012x}", hash >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, ifname: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: id.into(),
            ifname: ifname.into(),
        }
    }

    #[test]
    fn host_veth_names_fit_the_kernel_and_tell_attachments_apart() {
        let a = host_veth_name(&key("3f2a", "eth0"));
        assert_eq!(a.len(), 15, "{a}");
        assert!(a.starts_with("myc"));
        assert_eq!(a, host_veth_name(&key("3f2a", "eth0")), "stable");
        assert_ne!(a, host_veth_name(&key("3f2a", "eth1")));
        assert_ne!(a, host_veth_name(&key("3f2b", "eth0")));
        // The separator keeps `ab`+`c` apart from `a`+`bc`.
        assert_ne!(
            host_veth_name(&key("ab", "c")),
            host_veth_name(&key("a", "bc"))
        );
    }
}
