//! `networking.k8s.io/v1` NetworkPolicy.

use serde::{Deserialize, Serialize};

use crate::meta::{Ignored, LabelSelector, Metadata};
use crate::workload::{IntOrString, Protocol};

/// A Kubernetes NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Object metadata; the namespace scopes selection.
    pub metadata: Metadata,
    /// The policy.
    #[serde(default)]
    pub spec: NetworkPolicySpec,
    #[serde(default, skip_serializing)]
    status: Option<Ignored>,
}

/// A NetworkPolicy's spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// Pods of the policy's namespace it applies to; `{}` selects all.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Directions the policy isolates; see [`NetworkPolicySpec::isolates`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<PolicyType>>,
    /// Ingress allow rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<NetworkPolicyIngressRule>>,
    /// Egress allow rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<NetworkPolicyEgressRule>>,
}

impl NetworkPolicySpec {
    /// Whether the policy isolates `direction`. Without `policyTypes`,
    /// Kubernetes sets Ingress always and Egress when there are egress rules.
    pub fn isolates(&self, direction: PolicyType) -> bool {
        match &self.policy_types {
            Some(types) => types.contains(&direction),
            None => match direction {
                PolicyType::Ingress => true,
                PolicyType::Egress => self.egress.as_ref().is_some_and(|e| !e.is_empty()),
            },
        }
    }
}

/// A direction of a NetworkPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyType {
    /// Traffic into the selected pods.
    Ingress,
    /// Traffic out of the selected pods.
    Egress,
}

/// An ingress rule: allowed when any peer and any port match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyIngressRule {
    /// Sources; absent or empty means every source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<NetworkPolicyPeer>,
    /// Ports; absent or empty means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
}

/// An egress rule: allowed when any peer and any port match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyEgressRule {
    /// Destinations; absent or empty means every destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<NetworkPolicyPeer>,
    /// Ports; absent or empty means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
}

/// A peer: pods (by pod and/or namespace labels) or an IP block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPeer {
    /// Pods, in the policy's namespace unless `namespaceSelector` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces by label; with `podSelector`, both must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// A CIDR with exceptions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    /// The prefix.
    #[serde(default)]
    pub cidr: String,
    /// Sub-prefixes carved out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// A port or range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPort {
    /// Protocol; TCP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// A number or a named container port; every port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// Last port of a range starting at `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}
