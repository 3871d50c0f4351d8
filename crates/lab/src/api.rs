//! The lab supervisor's API, spoken by `myelin lab` and `myelin apply`.

use std::net::IpAddr;

use myelin_agent::api::AgentStatus;
use myelin_model::{Document, ResourceKey};
use serde::{Deserialize, Serialize};

/// A request to the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum LabRequest {
    /// Creates or updates resources; all or nothing.
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
    /// Tears the lab down and stops the supervisor.
    Down,
}

/// The supervisor's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum LabResponse {
    /// One line per resource, as kubectl prints them (`pod/xwing created`).
    Changes {
        /// The lines.
        lines: Vec<String>,
    },
    /// The lab's state.
    Status(LabStatus),
    /// Done.
    Ok,
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
    /// Node services reachable from this machine (`observer` → 127.0.0.1:4245, ...).
    #[serde(default)]
    pub exposed: Vec<(String, std::net::SocketAddr)>,
    /// Network policies applied (`CiliumNetworkPolicy default/rule1`, ...).
    #[serde(default)]
    pub policies: Vec<String>,
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
