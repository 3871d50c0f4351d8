//! Workload kinds: Namespace, Pod, Deployment, Service.
//!
//! Fields Myelin acts on are typed; fields a real cluster manifest carries but
//! that do not concern the network (resources, probes, volumes, ...) are
//! accepted and ignored by name, so an unknown field is still an error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::{Ignored, LabelSelector, Metadata, is_dns1123_subdomain};

/// A namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    /// Object metadata.
    pub metadata: Metadata,
    #[serde(default, skip_serializing)]
    spec: Option<Ignored>,
    #[serde(default, skip_serializing)]
    status: Option<Ignored>,
}

impl Namespace {
    /// A namespace with this name and no labels.
    pub fn named(name: &str) -> Self {
        Self {
            metadata: Metadata::named(name, None, BTreeMap::new()),
            spec: None,
            status: None,
        }
    }
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pod {
    /// Object metadata.
    pub metadata: Metadata,
    /// What runs in the pod.
    pub spec: PodSpec,
    #[serde(default, skip_serializing)]
    status: Option<Ignored>,
}

impl Pod {
    /// A pod built from a template, as a Deployment's controller does.
    pub fn from_template(metadata: Metadata, spec: PodSpec) -> Self {
        Self {
            metadata,
            spec,
            status: None,
        }
    }
}

/// What runs in a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    /// The containers; at least one.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Host networking is not supported: a pod on the host network is outside the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    #[serde(default, skip_serializing)]
    restart_policy: Option<Ignored>,
    #[serde(default, skip_serializing)]
    termination_grace_period_seconds: Option<Ignored>,
    #[serde(default, skip_serializing)]
    dns_policy: Option<Ignored>,
    /// The pod's service account; the namespace's `default` when absent.
    #[serde(
        default,
        deserialize_with = "service_account_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_account_name: Option<String>,
    /// Deprecated alias of `serviceAccountName`, used when that is absent.
    #[serde(
        default,
        deserialize_with = "service_account_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_account: Option<String>,
    #[serde(default, skip_serializing)]
    security_context: Option<Ignored>,
    #[serde(default, skip_serializing)]
    scheduler_name: Option<Ignored>,
    /// The node the pod must run on (a DNS-1123 subdomain); the scheduler's choice when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Labels a node must carry for the pod to run there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing)]
    tolerations: Option<Ignored>,
    #[serde(default, skip_serializing)]
    affinity: Option<Ignored>,
    #[serde(default, skip_serializing)]
    volumes: Option<Ignored>,
    #[serde(default, skip_serializing)]
    image_pull_secrets: Option<Ignored>,
    #[serde(default, skip_serializing)]
    priority_class_name: Option<Ignored>,
    #[serde(default, skip_serializing)]
    enable_service_links: Option<Ignored>,
    #[serde(default, skip_serializing)]
    automount_service_account_token: Option<Ignored>,
}

impl PodSpec {
    /// The pod's service account: `serviceAccountName`, else the deprecated
    /// `serviceAccount`; `None` means the namespace's `default`.
    pub fn service_account(&self) -> Option<&str> {
        self.service_account_name
            .as_deref()
            .or(self.service_account.as_deref())
    }

    /// The node named by `nodeName`; `None` when absent or empty (as Kubernetes reads it).
    pub fn pinned_node(&self) -> Option<&str> {
        self.node_name.as_deref().filter(|n| !n.is_empty())
    }
}

/// Reads a service account name, which Kubernetes requires to be a DNS-1123
/// subdomain; empty means none given.
fn service_account_name<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let name = Option::<String>::deserialize(deserializer)?;
    match name {
        Some(name) if name.is_empty() => Ok(None),
        Some(name) if !is_dns1123_subdomain(&name) => Err(serde::de::Error::custom(format!(
            "service account {name:?} must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"
        ))),
        name => Ok(name),
    }
}

/// A container of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    /// Container name.
    #[serde(default)]
    pub name: String,
    /// Image reference; the lab maps images it knows to programs it ships.
    #[serde(default)]
    pub image: String,
    /// Entry point, replacing the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Arguments, replacing the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Environment variables with literal values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Ports the container listens on; named ones can be referred to by policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing)]
    image_pull_policy: Option<Ignored>,
    #[serde(default, skip_serializing)]
    resources: Option<Ignored>,
    #[serde(default, skip_serializing)]
    volume_mounts: Option<Ignored>,
    #[serde(default, skip_serializing)]
    readiness_probe: Option<Ignored>,
    #[serde(default, skip_serializing)]
    liveness_probe: Option<Ignored>,
    #[serde(default, skip_serializing)]
    startup_probe: Option<Ignored>,
    #[serde(default, skip_serializing)]
    security_context: Option<Ignored>,
    #[serde(default, skip_serializing)]
    working_dir: Option<Ignored>,
    #[serde(default, skip_serializing)]
    termination_message_path: Option<Ignored>,
    #[serde(default, skip_serializing)]
    termination_message_policy: Option<Ignored>,
    #[serde(default, skip_serializing)]
    stdin: Option<Ignored>,
    #[serde(default, skip_serializing)]
    tty: Option<Ignored>,
}

/// An environment variable with a literal value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Its value; `valueFrom` is not supported.
    #[serde(default)]
    pub value: String,
}

/// A port a container listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    /// Port number.
    pub container_port: u16,
    /// Name, for named-port references from services and policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Protocol; TCP when absent.
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing)]
    host_port: Option<Ignored>,
    #[serde(default, skip_serializing)]
    host_ip: Option<Ignored>,
}

/// A transport protocol as Kubernetes names it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP: parsed so the error can say this kernel has no SCTP.
    Sctp,
}

impl Protocol {
    /// The protocol, if the datapath can carry it (TCP, UDP); SCTP is refused.
    pub fn supported(self) -> Result<Self, UnsupportedProtocol> {
        match self {
            Protocol::Tcp | Protocol::Udp => Ok(self),
            Protocol::Sctp => Err(UnsupportedProtocol(self)),
        }
    }

    /// The name as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol Kubernetes names but this kernel cannot carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not supported (this kernel has no {0}); use TCP or UDP")]
pub struct UnsupportedProtocol(pub Protocol);

/// A Deployment: `replicas` pods made from one template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deployment {
    /// Object metadata.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: DeploymentSpec,
    #[serde(default, skip_serializing)]
    status: Option<Ignored>,
}

/// A Deployment's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentSpec {
    /// Number of pods; 1 when absent.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Which pods belong to the Deployment; must match the template's labels.
    pub selector: LabelSelector,
    /// The pod template.
    pub template: PodTemplate,
    #[serde(default, skip_serializing)]
    strategy: Option<Ignored>,
    #[serde(default, skip_serializing)]
    revision_history_limit: Option<Ignored>,
    #[serde(default, skip_serializing)]
    min_ready_seconds: Option<Ignored>,
    #[serde(default, skip_serializing)]
    progress_deadline_seconds: Option<Ignored>,
    #[serde(default, skip_serializing)]
    paused: Option<Ignored>,
}

fn one() -> u32 {
    1
}

/// A pod template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodTemplate {
    /// Labels (and annotations) every pod gets.
    #[serde(default)]
    pub metadata: Metadata,
    /// What runs in every pod.
    pub spec: PodSpec,
}

/// A Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Object metadata.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing)]
    status: Option<Ignored>,
}

/// A Service's desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// Service type; only `ClusterIP` is supported.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub service_type: Option<String>,
    /// Ports the service exposes.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Pods that back the service; a service without a selector has no backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// A fixed cluster IP, or `None` for a headless service.
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs", skip_serializing)]
    cluster_ips: Option<Ignored>,
    /// `None` (the default) or `ClientIP`: a client's new connections go to the backend
    /// its previous ones went to, until it has opened none for the timeout
    /// ([`Self::client_ip_affinity_timeout`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    /// The ClientIP affinity's settings; only with `sessionAffinity: ClientIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    #[serde(default, skip_serializing)]
    ip_families: Option<Ignored>,
    #[serde(default, skip_serializing)]
    ip_family_policy: Option<Ignored>,
    #[serde(default, skip_serializing)]
    internal_traffic_policy: Option<Ignored>,
    #[serde(default, skip_serializing)]
    publish_not_ready_addresses: Option<Ignored>,
}

/// Timeout of ClientIP session affinity when the manifest gives none (Kubernetes' default, 3 h).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;
/// Longest ClientIP session affinity timeout Kubernetes accepts (one day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;

impl ServiceSpec {
    /// The ClientIP session affinity timeout in seconds, `None` without affinity. Valid once
    /// the manifest passed validation: then the timeout is 1..=86400.
    pub fn client_ip_affinity_timeout(&self) -> Option<u32> {
        if self.session_affinity.as_deref() != Some("ClientIP") {
            return None;
        }
        let configured = self
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        Some(configured.map_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS, |t| {
            // Validation keeps t within 1..=86400; clamp rather than trust it blindly.
            t.clamp(1, i64::from(MAX_AFFINITY_TIMEOUT_SECONDS)) as u32
        }))
    }
}

/// A Service's `sessionAffinityConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionAffinityConfig {
    /// Settings of ClientIP affinity.
    #[serde(default, rename = "clientIP", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpConfig>,
}

/// `sessionAffinityConfig.clientIP`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientIpConfig {
    /// How long a client keeps its backend after its last new connection;
    /// [`DEFAULT_AFFINITY_TIMEOUT_SECONDS`] when absent. Wider than valid so that a bad
    /// value is refused with its field rather than as unreadable YAML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port name; required when a service has more than one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port clients connect to on the cluster IP.
    pub port: u16,
    /// The backend port: a number, or the name of a container port; `port` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// Protocol; TCP when absent.
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing)]
    node_port: Option<Ignored>,
    #[serde(default, skip_serializing)]
    app_protocol: Option<Ignored>,
}

/// A Kubernetes int-or-string value (a port number or a port name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A name (or a number written as a string).
    String(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Resource, parse_str};

    fn pod(spec_extra: &str) -> crate::Parsed {
        parse_str(
            "pod.yaml",
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers: [{{name: c, image: nginx}}]\n{spec_extra}"
            ),
        )
    }

    fn service_account(spec_extra: &str) -> Option<String> {
        let parsed = pod(spec_extra);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        match &parsed.documents[0].resource {
            Resource::Pod(p) => p.spec.service_account().map(str::to_string),
            other => panic!("a pod, not {other:?}"),
        }
    }

    #[test]
    fn a_pod_names_its_service_account_or_the_deprecated_alias() {
        assert_eq!(
            service_account("  serviceAccountName: empire\n").as_deref(),
            Some("empire")
        );
        assert_eq!(
            service_account("  serviceAccount: rebels\n").as_deref(),
            Some("rebels")
        );
        assert_eq!(
            service_account("  serviceAccountName: empire\n  serviceAccount: rebels\n").as_deref(),
            Some("empire")
        );
        assert_eq!(service_account("  serviceAccountName: ''\n"), None);
        assert_eq!(service_account(""), None);
    }

    #[test]
    fn a_service_account_must_be_a_dns_subdomain() {
        let parsed = pod("  serviceAccountName: Death_Star\n");
        assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
        let error = &parsed.errors[0];
        assert_eq!(error.field, "spec.serviceAccountName");
        assert!(error.message.contains("DNS-1123 subdomain"), "{error}");
    }

    #[test]
    fn a_pod_may_name_its_node_and_select_nodes_by_label() {
        let parsed = pod("  nodeName: node2\n  nodeSelector: {kubernetes.io/hostname: node2}\n");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let Resource::Pod(p) = &parsed.documents[0].resource else {
            panic!("a pod");
        };
        assert_eq!(p.spec.pinned_node(), Some("node2"));
        assert_eq!(
            p.spec
                .node_selector
                .get("kubernetes.io/hostname")
                .map(String::as_str),
            Some("node2")
        );
        let parsed = pod("  nodeName: ''\n");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let Resource::Pod(p) = &parsed.documents[0].resource else {
            panic!("a pod");
        };
        assert_eq!(p.spec.pinned_node(), None);
    }

    #[test]
    fn a_bad_node_name_or_selector_is_refused_with_its_field() {
        let parsed = pod("  nodeName: Node_2\n");
        assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
        assert_eq!(parsed.errors[0].field, "spec.nodeName");
        let parsed = pod("  nodeSelector: {kubernetes.io/hostname: 'no de'}\n");
        assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
        assert_eq!(
            parsed.errors[0].field,
            "spec.nodeSelector.kubernetes.io/hostname"
        );
    }

    #[test]
    fn sctp_is_named_and_refused() {
        assert_eq!(Protocol::Udp.supported(), Ok(Protocol::Udp));
        let refused = Protocol::Sctp.supported().expect_err("SCTP");
        assert_eq!(
            refused.to_string(),
            "SCTP is not supported (this kernel has no SCTP); use TCP or UDP"
        );
        assert_eq!(Protocol::Tcp.to_string(), "TCP");
    }
}
