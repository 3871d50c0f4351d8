//! `cilium.io/v2` CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy, as
//! Cilium 1.19 decodes them (pkg/policy/api in cilium/cilium).
//!
//! Every field Cilium defines is declared here. Fields Myelin enforces are
//! typed; fields it does not support yet are captured as `Option<Ignored>`
//! only so that validation can reject them *by name* (an unknown field would
//! give a less helpful "unknown field" error, and silently dropping one would
//! change the policy's meaning).

use serde::{Deserialize, Serialize};

use crate::meta::{Ignored, LabelSelector, Metadata};
use crate::workload::IntOrString;

/// A namespaced `CiliumNetworkPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CiliumNetworkPolicy {
    /// Object metadata; the namespace scopes selection and peers.
    pub metadata: Metadata,
    /// Free text. Cilium's own examples put it at the top level (where the
    /// API server prunes it), so it is accepted there as well as in `spec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A single rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Rule>,
    /// Several rules; Cilium accepts `spec` and `specs` together and uses both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specs: Option<Vec<Rule>>,
    #[serde(default, skip_serializing)]
    status: Option<Ignored>,
}

/// A cluster-scoped `CiliumClusterwideNetworkPolicy`: same rules, no
/// namespace scoping of selectors.
pub type CiliumClusterwideNetworkPolicy = CiliumNetworkPolicy;

impl CiliumNetworkPolicy {
    /// The rules of the policy, `spec` first then `specs`, each with the
    /// field path it was read from (for errors and provenance).
    pub fn rules(&self) -> Vec<(String, &Rule)> {
        let mut out = Vec::new();
        if let Some(rule) = &self.spec {
            out.push(("spec".to_string(), rule));
        }
        for (i, rule) in self.specs.iter().flatten().enumerate() {
            out.push((format!("specs[{i}]"), rule));
        }
        out
    }
}

/// One policy rule (`api.Rule`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// The endpoints this rule applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<LabelSelector>,
    /// Allow rules for traffic into the selected endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// Deny rules for traffic into the selected endpoints; deny wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_deny: Option<Vec<IngressDenyRule>>,
    /// Allow rules for traffic out of the selected endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
    /// Deny rules for traffic out of the selected endpoints; deny wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_deny: Option<Vec<EgressDenyRule>>,
    /// Whether selecting an endpoint puts a direction into default deny
    /// (both `true` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDenyConfig>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Rule labels: metadata for tooling, no effect on traffic.
    #[serde(default, skip_serializing)]
    labels: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) node_selector: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) log: Option<Ignored>,
}

/// `enableDefaultDeny`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultDenyConfig {
    /// Ingress default deny; `true` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    /// Egress default deny; `true` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// An ingress allow rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// Peer endpoints. Absent: no constraint from this field; `[]`: none;
    /// `[{}]`: every endpoint (of the namespace, for a namespaced policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    /// Peer entities (`world`, `cluster`, `host`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<Entity>>,
    /// Peer CIDRs (an address alone is a host prefix).
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Option::is_none")]
    pub from_cidr: Option<Vec<String>>,
    /// Peer CIDRs with exceptions.
    #[serde(
        default,
        rename = "fromCIDRSet",
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Ports (and L7 rules) on the selected endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
    /// ICMP types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
    /// Mutual authentication requirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    #[serde(default, skip_serializing)]
    pub(crate) from_requires: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) from_nodes: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) from_groups: Option<Ignored>,
}

/// An ingress deny rule: peers and ports, no L7.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressDenyRule {
    /// Peer endpoints (as in [`IngressRule::from_endpoints`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    /// Peer entities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<Entity>>,
    /// Peer CIDRs.
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Option::is_none")]
    pub from_cidr: Option<Vec<String>>,
    /// Peer CIDRs with exceptions.
    #[serde(
        default,
        rename = "fromCIDRSet",
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortDenyRule>>,
    /// ICMP types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
    #[serde(default, skip_serializing)]
    pub(crate) from_requires: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) from_nodes: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) from_groups: Option<Ignored>,
}

/// An egress allow rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// Peer endpoints (as in [`IngressRule::from_endpoints`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    /// Peer entities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<Entity>>,
    /// Peer CIDRs.
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Option::is_none")]
    pub to_cidr: Option<Vec<String>>,
    /// Peer CIDRs with exceptions.
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Kubernetes services, by name or by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_services: Option<Vec<ServicePeer>>,
    /// DNS names; parsed and validated, enforced when DNS policy lands.
    #[serde(default, rename = "toFQDNs", skip_serializing_if = "Option::is_none")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    /// Ports (and L7 rules) on the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
    /// ICMP types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
    /// Mutual authentication requirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    #[serde(default, skip_serializing)]
    pub(crate) to_requires: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) to_nodes: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) to_groups: Option<Ignored>,
}

/// An egress deny rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressDenyRule {
    /// Peer endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    /// Peer entities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<Entity>>,
    /// Peer CIDRs.
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Option::is_none")]
    pub to_cidr: Option<Vec<String>>,
    /// Peer CIDRs with exceptions.
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Kubernetes services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_services: Option<Vec<ServicePeer>>,
    /// Ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortDenyRule>>,
    /// ICMP types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
    #[serde(default, skip_serializing)]
    pub(crate) to_requires: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) to_nodes: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) to_groups: Option<Ignored>,
}

/// A special class of peers Cilium names instead of selecting by label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Every peer, in and out of the cluster.
    All,
    /// Everything outside the cluster (including every CIDR peer).
    World,
    /// IPv4 addresses outside the cluster.
    #[serde(rename = "world-ipv4")]
    WorldIpv4,
    /// IPv6 addresses outside the cluster.
    #[serde(rename = "world-ipv6")]
    WorldIpv6,
    /// Every endpoint and node of the cluster.
    Cluster,
    /// The local node.
    Host,
    /// Other nodes of the cluster.
    RemoteNode,
    /// The Kubernetes API server.
    KubeApiserver,
    /// Health-check endpoints.
    Health,
    /// Endpoints whose identity is not resolved yet.
    Init,
    /// The ingress proxy.
    Ingress,
    /// Pods not managed by the mesh.
    Unmanaged,
    /// No peer at all.
    None,
}

/// A CIDR with exceptions (`fromCIDRSet` / `toCIDRSet`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrRule {
    /// The prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Sub-prefixes carved out of `cidr`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    #[serde(default, skip_serializing)]
    pub(crate) cidr_group_ref: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) cidr_group_selector: Option<Ignored>,
}

/// A `toServices` peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePeer {
    /// A service by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_service: Option<K8sServiceName>,
    /// Services by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_service_selector: Option<K8sServiceSelector>,
}

/// A service by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sServiceName {
    /// Service name.
    #[serde(default)]
    pub service_name: String,
    /// Its namespace; the policy's namespace when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Services by label.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sServiceSelector {
    /// Selector over the services' own labels.
    pub selector: LabelSelector,
    /// Their namespace; the policy's namespace when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `toPorts` entry of an allow rule: ports and optional L7 rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    /// Ports; empty or absent means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortProtocol>,
    /// L7 rules: traffic on these ports goes through the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
    #[serde(default, rename = "terminatingTLS", skip_serializing)]
    pub(crate) terminating_tls: Option<Ignored>,
    #[serde(default, rename = "originatingTLS", skip_serializing)]
    pub(crate) originating_tls: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) server_names: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) listener: Option<Ignored>,
}

/// `toPorts` entry of a deny rule: ports only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortDenyRule {
    /// Ports; empty or absent means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortProtocol>,
}

/// One port, range or named port with its protocol.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    /// A number (written as a string or a number), `0` or absent for every
    /// port, or the name of a container port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// Last port of a range starting at `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<IntOrString>,
    /// Protocol; `ANY` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<L4Proto>,
}

/// The protocols Cilium's schema names. Decoded case-insensitively, as
/// Cilium's `ParseL4Proto` does; validation rejects those this datapath
/// cannot enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum L4Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (this kernel has none).
    Sctp,
    /// ICMP (use `icmps` instead).
    Icmp,
    /// ICMPv6 (use `icmps` instead).
    #[serde(rename = "ICMPV6")]
    Icmpv6,
    /// VRRP.
    Vrrp,
    /// IGMP.
    Igmp,
    /// TCP and UDP.
    Any,
}

impl<'de> Deserialize<'de> for L4Proto {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.to_ascii_uppercase().as_str() {
            "TCP" => L4Proto::Tcp,
            "UDP" => L4Proto::Udp,
            "SCTP" => L4Proto::Sctp,
            "ICMP" => L4Proto::Icmp,
            "ICMPV6" => L4Proto::Icmpv6,
            "VRRP" => L4Proto::Vrrp,
            "IGMP" => L4Proto::Igmp,
            "ANY" | "" => L4Proto::Any,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "unknown protocol `{text}`; expected TCP, UDP or ANY"
                )));
            }
        })
    }
}

/// L7 rules of a port rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L7Rules {
    /// HTTP rules: a request is allowed when any rule matches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpRule>>,
    /// DNS rules (egress): parsed and validated, enforced when DNS policy lands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<FqdnSelector>>,
    #[serde(default, skip_serializing)]
    pub(crate) kafka: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) l7proto: Option<Ignored>,
    #[serde(default, skip_serializing)]
    pub(crate) l7: Option<Ignored>,
}

/// One HTTP rule; every field present must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRule {
    /// Method, a full-match regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path, a full-match regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Host, a full-match regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Headers that must be present (`Name`) or have a value (`Name: value`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Header matches with an action on mismatch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_matches: Vec<HeaderMatch>,
}

/// A header match (`headerMatches`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name.
    #[serde(default)]
    pub name: String,
    /// Expected value; presence only when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What to do when the header does not match; the request is denied
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<MismatchAction>,
    #[serde(default, skip_serializing)]
    pub(crate) secret: Option<Ignored>,
}

/// The action on a header mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MismatchAction {
    /// Log and let the request through.
    Log,
    /// Add the header with the value.
    Add,
    /// Delete the header.
    Delete,
    /// Replace the header's value.
    Replace,
}

/// A DNS name or pattern (`toFQDNs`, `rules.dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FqdnSelector {
    /// An exact name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    /// A pattern where `*` matches any run of DNS characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

/// `icmps` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpRule {
    /// ICMP types.
    #[serde(default)]
    pub fields: Vec<IcmpField>,
}

/// One ICMP type of one family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpField {
    /// `IPv4` (default) or `IPv6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// The type, as a number or a name such as `EchoRequest`.
    #[serde(rename = "type")]
    pub icmp_type: IntOrString,
}

/// `authentication`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authentication {
    /// `disabled`, `required` or `test-always-fail`.
    pub mode: String,
}
