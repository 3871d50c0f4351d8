//! The lab supervisor's API, spoken by `myelin lab`, `myelin apply` and
//! `myelin delete`.

use std::net::IpAddr;

use crate::agent::AgentStatus;
use myelin_model::{Document, ResourceKey};
use serde::{Deserialize, Serialize};

/// A request to the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum LabRequest {
    /// Creates or updates resources as one transaction: all or nothing.
    Apply {
        /// Parsed, validated documents.
        documents: Vec<Document>,
    },
    /// Deletes resources by key; a missing one is reported, the rest deleted.
    Delete {
        /// What to delete.
        keys: Vec<ResourceKey>,
    },
    /// What the lab runs.
    Status,
    /// Adds a node to the running lab: its namespace, underlay link, routes,
    /// agent and proxy.
    NodeAdd {
        /// Its name; `node<N>` (N its number, the lowest free) when absent.
        name: Option<String>,
    },
    /// Drains a node (deletes its pods) and removes it.
    NodeDelete {
        /// Its name.
        name: String,
    },
    /// Tears the lab down and stops the supervisor.
    Down,
}

/// The supervisor's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum LabResponse {
    /// What became of each resource, once each, in the order they were
    /// handled (an apply: namespaces, services, policies, deployments, pods).
    Changes {
        /// One per resource.
        changes: Vec<Change>,
    },
    /// The lab's state.
    Status(LabStatus),
    /// A node was added.
    NodeAdded {
        /// Its name.
        name: String,
    },
    /// A node was drained and removed.
    NodeDeleted {
        /// Its name.
        name: String,
        /// The pods it ran, deleted with it (`namespace/name`).
        pods: Vec<String>,
        /// The pods made in their place for the Deployments that owned some
        /// (`namespace/name on node`).
        replaced: Vec<String>,
    },
    /// Done.
    Ok,
}

/// What became of one resource of an apply or a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The kind as kubectl prints it (`pod`, `deployment.apps`,
    /// `ciliumnetworkpolicy.cilium.io`).
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// What happened to it.
    pub outcome: Outcome,
}

/// What happened to a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// It is new.
    Created,
    /// It existed and changed.
    Configured,
    /// It existed as given.
    Unchanged,
    /// It was deleted.
    Deleted,
    /// A delete named it and the lab has no such resource.
    NotFound,
    /// It failed; with it the whole apply was undone.
    Failed {
        /// Why, and what to do.
        reason: String,
    },
    /// It was fine, but another resource of the same apply failed, so it
    /// was not applied (or was undone).
    NotApplied,
}

impl Outcome {
    /// Whether this outcome is an error the command must report.
    pub fn is_error(&self) -> bool {
        matches!(
            self,
            Self::NotFound | Self::Failed { .. } | Self::NotApplied
        )
    }
}

impl std::fmt::Display for Change {
    /// As kubectl prints it: `pod/xwing created`, `pod "xwing" deleted`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, name) = (&self.kind, &self.name);
        match &self.outcome {
            Outcome::Created => write!(f, "{kind}/{name} created"),
            Outcome::Configured => write!(f, "{kind}/{name} configured"),
            Outcome::Unchanged => write!(f, "{kind}/{name} unchanged"),
            Outcome::Deleted => write!(f, "{kind} \"{name}\" deleted"),
            Outcome::NotFound => write!(f, "{kind} \"{name}\" not found"),
            Outcome::Failed { reason } => write!(f, "{kind}/{name} failed: {reason}"),
            Outcome::NotApplied => write!(
                f,
                "{kind}/{name} not applied: another resource of this apply failed"
            ),
        }
    }
}

/// The lab as `lab status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabStatus {
    /// Lab name.
    pub lab: String,
    /// Nodes with their agents' view.
    pub nodes: Vec<NodeStatus>,
    /// Pods.
    pub pods: Vec<PodStatus>,
    /// Services.
    pub services: Vec<ServiceSummary>,
    /// The relay's services reachable from this machine (`observer` → 127.0.0.1:4245, ...).
    #[serde(default)]
    pub exposed: Vec<(Exposed, std::net::SocketAddr)>,
    /// Network policies applied (`CiliumNetworkPolicy default/rule1`, ...).
    #[serde(default)]
    pub policies: Vec<String>,
}

/// A service the lab's relay serves on this machine's loopback, on the port
/// each node's agent uses on the node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exposed {
    /// Hubble's observer gRPC API.
    Observer,
    /// The live service map page (Hubble UI's port).
    Servicemap,
}

impl Exposed {
    /// Every exposed service.
    pub const ALL: [Exposed; 2] = [Exposed::Observer, Exposed::Servicemap];

    /// Its port, on the node's loopback and on this machine's.
    pub fn port(self) -> u16 {
        match self {
            Exposed::Observer => 4245,
            Exposed::Servicemap => 12000,
        }
    }

    /// How `lab status` names it and where a user points a client: a URL
    /// for the page, `host:port` for the gRPC API.
    pub fn address_text(self, address: std::net::SocketAddr) -> String {
        match self {
            Exposed::Observer => address.to_string(),
            Exposed::Servicemap => format!("http://{address}/"),
        }
    }
}

impl std::fmt::Display for Exposed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Exposed::Observer => "observer",
            Exposed::Servicemap => "servicemap",
        })
    }
}

/// A node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Name.
    pub name: String,
    /// Network namespace.
    pub netns: String,
    /// Pod CIDRs.
    pub pod_cidrs: Vec<String>,
    /// Its addresses on the lab's underlay (the bridge joining the nodes).
    #[serde(default)]
    pub underlay: Vec<IpAddr>,
    /// The agent's status, or why it could not be read.
    pub agent: Result<AgentStatus, String>,
}

/// A pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodStatus {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Node.
    pub node: String,
    /// Addresses.
    pub addresses: Vec<IpAddr>,
    /// Phase.
    pub phase: String,
    /// Ready.
    pub ready: bool,
    /// Network namespace, for `ip netns exec`.
    pub netns: String,
}

/// A service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Cluster IPs.
    pub cluster_ips: Vec<IpAddr>,
    /// `port/PROTO` entries.
    pub ports: Vec<String>,
    /// ClientIP session affinity timeout in seconds; none without affinity.
    #[serde(default)]
    pub affinity_timeout_s: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_print_as_kubectl_prints_them() {
        let change = |kind: &str, outcome| Change {
            kind: kind.into(),
            name: "xwing".into(),
            outcome,
        };
        assert_eq!(
            change("pod", Outcome::Created).to_string(),
            "pod/xwing created"
        );
        assert_eq!(
            change("pod", Outcome::Deleted).to_string(),
            "pod \"xwing\" deleted"
        );
        let failed = change(
            "pod",
            Outcome::Failed {
                reason: "exited at once".into(),
            },
        );
        assert_eq!(failed.to_string(), "pod/xwing failed: exited at once");
        assert!(failed.outcome.is_error());
        assert!(!Outcome::Unchanged.is_error());
    }

    #[test]
    fn exposed_services_keep_their_names_and_ports() {
        let json = serde_json::to_string(&Exposed::ALL).expect("json");
        assert_eq!(json, r#"["observer","servicemap"]"#);
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], Exposed::Servicemap.port()));
        assert_eq!(
            Exposed::Servicemap.address_text(address),
            "http://127.0.0.1:12000/"
        );
        assert_eq!(Exposed::Observer.port(), 4245);
    }
}
