//! Policies of the three kinds compiled into one internal form: subjects,
//! sections (one per ingress/egress/deny rule) with peers and ports.
//!
//! Semantics follow <https://docs.cilium.io/en/stable/policy/language/> and
//! <https://kubernetes.io/docs/concepts/services-networking/network-policies/>;
//! the places where the two differ are commented where they are handled.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;
use myelin_model::Resource;
use myelin_model::manifest::DEFAULT_NAMESPACE;
use myelin_model::meta::LabelSelector;
use myelin_model::policy::{
    CidrRule, CiliumNetworkPolicy, Entity, FqdnSelector, HttpRule, IcmpRule, L4Proto,
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, PolicyType, PortDenyRule, PortProtocol,
    PortSpec, ServicePeer, icmp_type, parse_cidr,
};
use myelin_model::workload::Protocol;
use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::labels::{NAMESPACE_LABEL, SOURCE_RESERVED, Selector};

/// The policy kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyKind {
    /// `cilium.io/v2` CiliumNetworkPolicy.
    CiliumNetworkPolicy,
    /// `cilium.io/v2` CiliumClusterwideNetworkPolicy.
    CiliumClusterwideNetworkPolicy,
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
}

/// Which policy: kind, namespace (empty when cluster-wide) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyKey {
    /// The kind.
    pub kind: PolicyKind,
    /// The namespace; empty for CiliumClusterwideNetworkPolicy.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl PolicyKey {
    /// The key of a policy resource; `None` for other kinds.
    pub fn of(resource: &myelin_model::Resource) -> Option<Self> {
        use myelin_model::Resource;
        let kind = match resource {
            Resource::CiliumNetworkPolicy(_) => PolicyKind::CiliumNetworkPolicy,
            Resource::CiliumClusterwideNetworkPolicy(_) => {
                PolicyKind::CiliumClusterwideNetworkPolicy
            }
            Resource::NetworkPolicy(_) => PolicyKind::NetworkPolicy,
            _ => return None,
        };
        let key = resource.key();
        Some(Self {
            kind,
            namespace: key.namespace,
            name: key.name,
        })
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{:?} {}", self.kind, self.name)
        } else {
            write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Where an entry came from: the policy and the rule's field path
/// (`spec.ingress[0]`, `specs[1].egressDeny[2]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Provenance {
    /// The policy.
    pub policy: PolicyKey,
    /// The rule's field path in the manifest.
    pub rule: String,
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.policy, self.rule)
    }
}

/// Traffic direction, seen from the selected endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    /// Into the endpoint.
    Ingress,
    /// Out of the endpoint.
    Egress,
}

/// Who a section allows or denies.
#[derive(Debug, Clone)]
pub(crate) enum Peers {
    /// Every peer (identity 0 in entries).
    Any,
    /// The union of these selectors; empty selects nobody.
    Some(Vec<PeerSelector>),
}

/// One peer selector of a section.
#[derive(Debug, Clone)]
pub(crate) enum PeerSelector {
    /// Identities whose labels match.
    Labels { selector: Selector, scope: Scope },
    /// A reserved class.
    Entity(Entity),
    /// CIDR identities inside `net` and outside every exception.
    Cidr { net: IpNet, except: Vec<IpNet> },
    /// Pods backing services (by name or label) of a namespace (any when `None`).
    Service {
        namespace: Option<String>,
        name: Option<String>,
        selector: Option<Selector>,
    },
}

/// The identities a label selector can match at most (it requires the
/// labels that say so); the engine indexes peers by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Pods of this namespace.
    Namespace(String),
    /// Pods of any namespace.
    Pods,
    /// Any identity.
    Any,
}

/// The protocol of a policy entry. In entries, `Any` covers every protocol
/// (L3 rules); in rules, `Any` with a port means TCP and UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Proto {
    /// Every protocol.
    Any,
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP (1); the port range holds the ICMP type.
    Icmp,
    /// ICMPv6 (58); the port range holds the ICMPv6 type.
    Icmpv6,
}

impl Proto {
    /// The IP protocol number, 0 for `Any`.
    pub fn number(self) -> u8 {
        match self {
            Proto::Any => 0,
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => 1,
            Proto::Icmpv6 => 58,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Any => "ANY",
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Icmp => "ICMP",
            Proto::Icmpv6 => "ICMPv6",
        })
    }
}

/// One port (or ICMP type) of a section, with its L7 rules.
#[derive(Debug, Clone)]
pub(crate) struct PortItem {
    pub spec: PortSpec,
    pub proto: Proto,
    pub l7: Option<Arc<L7Spec>>,
}

/// L7 rules of one port rule.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum L7Spec {
    Http(Vec<HttpRule>),
    Dns(Vec<FqdnSelector>),
}

/// One ingress, ingressDeny, egress or egressDeny rule.
#[derive(Debug, Clone)]
pub(crate) struct Section {
    pub direction: Direction,
    pub deny: bool,
    pub provenance: Provenance,
    pub peers: Peers,
    /// `None`: every protocol and port (an L3 rule).
    pub ports: Option<Vec<PortItem>>,
}

/// One rule of a policy: whom it selects and what it says.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub subject: Selector,
    /// Whether selection puts ingress into default deny; `None` when the
    /// rule says nothing about ingress.
    pub ingress_default_deny: Option<bool>,
    /// Same for egress.
    pub egress_default_deny: Option<bool>,
    pub sections: Vec<Section>,
}

/// A policy compiled for resolution.
#[derive(Debug, Clone)]
pub(crate) struct CompiledPolicy {
    pub key: PolicyKey,
    pub rules: Vec<CompiledRule>,
}

impl CompiledPolicy {
    /// Every CIDR the policy names (with exceptions): each needs an identity.
    pub fn prefixes(&self) -> BTreeSet<IpNet> {
        let mut out = BTreeSet::new();
        for section in self.rules.iter().flat_map(|r| &r.sections) {
            if let Peers::Some(peers) = &section.peers {
                for p in peers {
                    if let PeerSelector::Cidr { net, except } = p {
                        out.insert(*net);
                        out.extend(except.iter().copied());
                    }
                }
            }
        }
        out
    }

    /// Whether some peer depends on the set of services.
    pub fn uses_services(&self) -> bool {
        self.rules.iter().flat_map(|r| &r.sections).any(|s| {
            matches!(&s.peers, Peers::Some(p) if p.iter().any(|p| matches!(p, PeerSelector::Service { .. })))
        })
    }

    /// Whether some port is named (its number depends on the pods).
    pub fn uses_named_ports(&self) -> bool {
        self.rules
            .iter()
            .flat_map(|r| &r.sections)
            .flat_map(|s| s.ports.iter().flatten())
            .any(|p| matches!(p.spec, PortSpec::Named(_)))
    }
}

/// Compiles a validated policy resource.
pub(crate) fn compile(resource: &Resource) -> Result<CompiledPolicy, PolicyError> {
    match resource {
        Resource::CiliumNetworkPolicy(p) => Ok(compile_cilium(p, false)),
        Resource::CiliumClusterwideNetworkPolicy(p) => Ok(compile_cilium(p, true)),
        Resource::NetworkPolicy(p) => Ok(compile_network_policy(p)),
        other => Err(PolicyError::NotAPolicy(other.key().to_string())),
    }
}

/// A Cilium endpoint selector as a peer. In a namespaced policy Cilium adds
/// the policy's namespace unless the selector names the namespace label
/// itself or selects reserved identities
/// (<https://docs.cilium.io/en/stable/policy/kubernetes/#namespaces>).
fn cilium_peer(selector: &LabelSelector, namespace: Option<&str>) -> PeerSelector {
    let compiled = Selector::cilium(selector);
    match namespace {
        Some(ns)
            if !compiled.mentions(NAMESPACE_LABEL)
                && !compiled.mentions_source(SOURCE_RESERVED) =>
        {
            PeerSelector::Labels {
                selector: compiled.and(Selector::in_namespace(ns)),
                scope: Scope::Namespace(ns.to_string()),
            }
        }
        _ => PeerSelector::Labels {
            selector: compiled,
            scope: Scope::Any,
        },
    }
}

fn cidr_peers(cidrs: Option<&[String]>, sets: Option<&[CidrRule]>, out: &mut Vec<PeerSelector>) {
    // Validation has parsed every CIDR already; a failure here cannot happen
    // for a validated manifest, and skipping keeps the rule narrower, not wider.
    for c in cidrs.into_iter().flatten() {
        if let Ok(net) = parse_cidr(c) {
            out.push(PeerSelector::Cidr {
                net,
                except: Vec::new(),
            });
        }
    }
    for set in sets.into_iter().flatten() {
        if let Some(Ok(net)) = set.cidr.as_deref().map(parse_cidr) {
            let except = set
                .except
                .iter()
                .filter_map(|e| parse_cidr(e).ok())
                .collect();
            out.push(PeerSelector::Cidr { net, except });
        }
    }
}

/// The peer fields of one Cilium rule.
struct CiliumPeerFields<'a> {
    endpoints: Option<&'a [LabelSelector]>,
    entities: Option<&'a [Entity]>,
    cidrs: Option<&'a [String]>,
    cidr_sets: Option<&'a [CidrRule]>,
    services: Option<&'a [ServicePeer]>,
    fqdns: bool,
}

impl CiliumPeerFields<'_> {
    /// Cilium's peer semantics: absent fields do not constrain; a rule with
    /// no peer field at all but with ports is L4-only (every peer); `[]`
    /// selects nobody and `[{}]` everybody in scope
    /// (<https://docs.cilium.io/en/stable/policy/language/#layer-3-examples>).
    fn compile(&self, namespace: Option<&str>, has_ports: bool) -> Peers {
        let any_field = self.endpoints.is_some()
            || self.entities.is_some()
            || self.cidrs.is_some()
            || self.cidr_sets.is_some()
            || self.services.is_some()
            || self.fqdns;
        if !any_field {
            return if has_ports {
                Peers::Any
            } else {
                Peers::Some(Vec::new())
            };
        }
        let mut out = Vec::new();
        for s in self.endpoints.into_iter().flatten() {
            let peer = cilium_peer(s, namespace);
            if matches!(&peer, PeerSelector::Labels { selector, .. } if selector.is_wildcard()) {
                // `{}` in a cluster-wide policy is Cilium's wildcard selector:
                // every identity, reserved and CIDR ones included.
                return Peers::Any;
            }
            out.push(peer);
        }
        for e in self.entities.into_iter().flatten() {
            if *e == Entity::All {
                return Peers::Any;
            }
            out.push(PeerSelector::Entity(*e));
        }
        cidr_peers(self.cidrs, self.cidr_sets, &mut out);
        for s in self.services.into_iter().flatten() {
            if let Some(n) = &s.k8s_service {
                out.push(PeerSelector::Service {
                    namespace: n.namespace.clone().or(namespace.map(str::to_string)),
                    name: Some(n.service_name.clone()),
                    selector: None,
                });
            }
            if let Some(sel) = &s.k8s_service_selector {
                out.push(PeerSelector::Service {
                    namespace: sel.namespace.clone().or(namespace.map(str::to_string)),
                    name: None,
                    selector: Some(Selector::pods(&sel.selector)),
                });
            }
        }
        // toFQDNs adds no peer until DNS policy lands: the names resolve to
        // no address yet, exactly as in Cilium before the first lookup.
        Peers::Some(out)
    }
}

fn l4(proto: L4Proto) -> Proto {
    match proto {
        L4Proto::Tcp => Proto::Tcp,
        L4Proto::Udp => Proto::Udp,
        // Validation rejects the others; ANY is the fallback for them.
        _ => Proto::Any,
    }
}

/// The `toPorts` of one rule: each entry's ports and its L7 rules (none for deny rules).
type PortLists<'a> = Vec<(&'a [PortProtocol], Option<Arc<L7Spec>>)>;

/// The port lists of a deny rule's `toPorts` (deny rules carry no L7); `None` when absent or
/// empty, i.e. every port.
fn deny_ports(to_ports: Option<&[PortDenyRule]>) -> Option<PortLists<'_>> {
    to_ports
        .filter(|p| !p.is_empty())
        .map(|p| p.iter().map(|pr| (pr.ports.as_slice(), None)).collect())
}

fn port_items(ports: &[PortProtocol], l7: Option<Arc<L7Spec>>, out: &mut Vec<PortItem>) {
    if ports.is_empty() {
        out.push(PortItem {
            spec: PortSpec::All,
            proto: Proto::Any,
            l7,
        });
        return;
    }
    for p in ports {
        let end = p.end_port.as_ref().and_then(|e| match e {
            myelin_model::workload::IntOrString::Int(n) => Some(*n),
            myelin_model::workload::IntOrString::String(s) => s.parse().ok(),
        });
        if let Ok(spec) = PortSpec::parse(p.port.as_ref(), end) {
            out.push(PortItem {
                spec,
                proto: l4(p.protocol.unwrap_or(L4Proto::Any)),
                l7: l7.clone(),
            });
        }
    }
}

fn icmp_items(icmps: Option<&[IcmpRule]>, out: &mut Vec<PortItem>) {
    for f in icmps.into_iter().flatten().flat_map(|r| &r.fields) {
        let v6 = f.family.as_deref() == Some("IPv6");
        if let Ok(t) = icmp_type(&f.icmp_type, v6) {
            out.push(PortItem {
                spec: PortSpec::Range(u16::from(t), u16::from(t)),
                proto: if v6 { Proto::Icmpv6 } else { Proto::Icmp },
                l7: None,
            });
        }
    }
}

fn l7_of(rules: Option<&myelin_model::policy::L7Rules>) -> Option<Arc<L7Spec>> {
    let rules = rules?;
    if let Some(http) = &rules.http {
        return Some(Arc::new(L7Spec::Http(http.clone())));
    }
    rules
        .dns
        .as_ref()
        .map(|dns| Arc::new(L7Spec::Dns(dns.clone())))
}

fn compile_cilium(p: &CiliumNetworkPolicy, clusterwide: bool) -> CompiledPolicy {
    let namespace = (!clusterwide).then(|| {
        p.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
    });
    let ns = namespace.as_deref();
    let key = PolicyKey {
        kind: if clusterwide {
            PolicyKind::CiliumClusterwideNetworkPolicy
        } else {
            PolicyKind::CiliumNetworkPolicy
        },
        namespace: namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone(),
    };
    let mut rules = Vec::new();
    for (at, rule) in p.rules() {
        let mut subject = rule
            .endpoint_selector
            .as_ref()
            .map(Selector::cilium)
            .unwrap_or_default();
        if let Some(ns) = ns {
            // A namespaced policy only ever selects endpoints of its namespace.
            subject = subject.and(Selector::in_namespace(ns));
        }
        let provenance = |rule: String| Provenance {
            policy: key.clone(),
            rule,
        };
        let mut sections = Vec::new();
        let has = |ports: bool, icmps: bool| ports || icmps;
        // Each rule kind lists (ports, L7 rules) of its `toPorts`; deny rules carry no L7.
        let mut add = |direction,
                       deny,
                       path: String,
                       fields: CiliumPeerFields<'_>,
                       ports: Option<PortLists<'_>>,
                       icmps: Option<&[IcmpRule]>| {
            let icmps = icmps.filter(|i| !i.is_empty());
            let restricted = has(ports.is_some(), icmps.is_some());
            let mut items = Vec::new();
            for (list, l7) in ports.into_iter().flatten() {
                port_items(list, l7, &mut items);
            }
            icmp_items(icmps, &mut items);
            sections.push(Section {
                direction,
                deny,
                provenance: provenance(path),
                peers: fields.compile(ns, restricted),
                ports: restricted.then_some(items),
            });
        };
        for (i, r) in rule.ingress.iter().flatten().enumerate() {
            let fields = CiliumPeerFields {
                endpoints: r.from_endpoints.as_deref(),
                entities: r.from_entities.as_deref(),
                cidrs: r.from_cidr.as_deref(),
                cidr_sets: r.from_cidr_set.as_deref(),
                services: None,
                fqdns: false,
            };
            let ports = r.to_ports.as_deref().filter(|p| !p.is_empty()).map(|p| {
                p.iter()
                    .map(|pr| (pr.ports.as_slice(), l7_of(pr.rules.as_ref())))
                    .collect()
            });
            add(
                Direction::Ingress,
                false,
                format!("{at}.ingress[{i}]"),
                fields,
                ports,
                r.icmps.as_deref(),
            );
        }
        for (i, r) in rule.ingress_deny.iter().flatten().enumerate() {
            let fields = CiliumPeerFields {
                endpoints: r.from_endpoints.as_deref(),
                entities: r.from_entities.as_deref(),
                cidrs: r.from_cidr.as_deref(),
                cidr_sets: r.from_cidr_set.as_deref(),
                services: None,
                fqdns: false,
            };
            let ports = deny_ports(r.to_ports.as_deref());
            add(
                Direction::Ingress,
                true,
                format!("{at}.ingressDeny[{i}]"),
                fields,
                ports,
                r.icmps.as_deref(),
            );
        }
        for (i, r) in rule.egress.iter().flatten().enumerate() {
            let fields = CiliumPeerFields {
                endpoints: r.to_endpoints.as_deref(),
                entities: r.to_entities.as_deref(),
                cidrs: r.to_cidr.as_deref(),
                cidr_sets: r.to_cidr_set.as_deref(),
                services: r.to_services.as_deref(),
                fqdns: r.to_fqdns.is_some(),
            };
            let ports = r.to_ports.as_deref().filter(|p| !p.is_empty()).map(|p| {
                p.iter()
                    .map(|pr| (pr.ports.as_slice(), l7_of(pr.rules.as_ref())))
                    .collect()
            });
            add(
                Direction::Egress,
                false,
                format!("{at}.egress[{i}]"),
                fields,
                ports,
                r.icmps.as_deref(),
            );
        }
        for (i, r) in rule.egress_deny.iter().flatten().enumerate() {
            let fields = CiliumPeerFields {
                endpoints: r.to_endpoints.as_deref(),
                entities: r.to_entities.as_deref(),
                cidrs: r.to_cidr.as_deref(),
                cidr_sets: r.to_cidr_set.as_deref(),
                services: r.to_services.as_deref(),
                fqdns: false,
            };
            let ports = deny_ports(r.to_ports.as_deref());
            add(
                Direction::Egress,
                true,
                format!("{at}.egressDeny[{i}]"),
                fields,
                ports,
                r.icmps.as_deref(),
            );
        }
        // A direction is enforced when the rule has at least one rule for it
        // (`ingress: [{}]` is the default-deny idiom; `ingress: []` is not),
        // unless enableDefaultDeny turns it off
        // (<https://docs.cilium.io/en/stable/security/policy-creation/#default-deny>).
        let defaults = rule.enable_default_deny.unwrap_or_default();
        let ingress = rule.ingress.as_ref().is_some_and(|v| !v.is_empty())
            || rule.ingress_deny.as_ref().is_some_and(|v| !v.is_empty());
        let egress = rule.egress.as_ref().is_some_and(|v| !v.is_empty())
            || rule.egress_deny.as_ref().is_some_and(|v| !v.is_empty());
        rules.push(CompiledRule {
            subject,
            ingress_default_deny: ingress.then(|| defaults.ingress.unwrap_or(true)),
            egress_default_deny: egress.then(|| defaults.egress.unwrap_or(true)),
            sections,
        });
    }
    CompiledPolicy { key, rules }
}

/// A NetworkPolicy peer. Kubernetes: podSelector alone selects pods of the
/// policy's namespace; namespaceSelector alone, every pod of the matching
/// namespaces; both in one peer, pods matching both; ipBlock, addresses
/// (<https://kubernetes.io/docs/concepts/services-networking/network-policies/#behavior-of-to-and-from-selectors>).
fn np_peer(peer: &NetworkPolicyPeer, namespace: &str) -> Option<PeerSelector> {
    if let Some(block) = &peer.ip_block {
        let net = parse_cidr(&block.cidr).ok()?;
        let except = block
            .except
            .iter()
            .filter_map(|e| parse_cidr(e).ok())
            .collect();
        return Some(PeerSelector::Cidr { net, except });
    }
    let pods = peer.pod_selector.as_ref().map(Selector::pods);
    let (selector, scope) = match (&peer.namespace_selector, pods) {
        (Some(ns), Some(pods)) => (Selector::namespaces(ns).and(pods), Scope::Pods),
        (Some(ns), None) => (Selector::namespaces(ns), Scope::Pods),
        (None, Some(pods)) => (
            pods.and(Selector::in_namespace(namespace)),
            Scope::Namespace(namespace.to_string()),
        ),
        (None, None) => return None,
    };
    Some(PeerSelector::Labels { selector, scope })
}

fn np_ports(ports: &[NetworkPolicyPort]) -> Option<Vec<PortItem>> {
    // No ports: every port and protocol.
    if ports.is_empty() {
        return None;
    }
    Some(
        ports
            .iter()
            .filter_map(|p| {
                let spec = PortSpec::parse(p.port.as_ref(), p.end_port.map(i64::from)).ok()?;
                let proto = match p.protocol.unwrap_or_default() {
                    Protocol::Udp => Proto::Udp,
                    _ => Proto::Tcp,
                };
                Some(PortItem {
                    spec,
                    proto,
                    l7: None,
                })
            })
            .collect(),
    )
}

fn compile_network_policy(p: &NetworkPolicy) -> CompiledPolicy {
    let namespace = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let key = PolicyKey {
        kind: PolicyKind::NetworkPolicy,
        namespace: namespace.clone(),
        name: p.metadata.name.clone(),
    };
    let mut sections = Vec::new();
    let ingress = p.spec.isolates(PolicyType::Ingress);
    let egress = p.spec.isolates(PolicyType::Egress);
    // Rules of a direction the policy does not isolate have no effect
    // (policyTypes governs), so they are not compiled.
    if ingress {
        for (i, r) in p.spec.ingress.iter().flatten().enumerate() {
            sections.push(Section {
                direction: Direction::Ingress,
                deny: false,
                provenance: Provenance {
                    policy: key.clone(),
                    rule: format!("spec.ingress[{i}]"),
                },
                // `from` absent or empty: every source, in and out of the cluster.
                peers: if r.from.is_empty() {
                    Peers::Any
                } else {
                    Peers::Some(
                        r.from
                            .iter()
                            .filter_map(|peer| np_peer(peer, &namespace))
                            .collect(),
                    )
                },
                ports: np_ports(&r.ports),
            });
        }
    }
    if egress {
        for (i, r) in p.spec.egress.iter().flatten().enumerate() {
            sections.push(Section {
                direction: Direction::Egress,
                deny: false,
                provenance: Provenance {
                    policy: key.clone(),
                    rule: format!("spec.egress[{i}]"),
                },
                peers: if r.to.is_empty() {
                    Peers::Any
                } else {
                    Peers::Some(
                        r.to.iter()
                            .filter_map(|peer| np_peer(peer, &namespace))
                            .collect(),
                    )
                },
                ports: np_ports(&r.ports),
            });
        }
    }
    let subject = Selector::pods(&p.spec.pod_selector).and(Selector::in_namespace(&namespace));
    CompiledPolicy {
        key,
        rules: vec![CompiledRule {
            subject,
            ingress_default_deny: ingress.then_some(true),
            egress_default_deny: egress.then_some(true),
            sections,
        }],
    }
}

/// The entry protocols of a rule protocol.
pub(crate) fn protos(proto: Proto, all_ports: bool) -> &'static [Proto] {
    match proto {
        // ANY with every port is an L3 rule; with a port, Cilium expands it
        // to each port protocol (TCP, UDP; SCTP does not exist here).
        Proto::Any if all_ports => &[Proto::Any],
        Proto::Any => &[Proto::Tcp, Proto::Udp],
        Proto::Tcp => &[Proto::Tcp],
        Proto::Udp => &[Proto::Udp],
        Proto::Icmp => &[Proto::Icmp],
        Proto::Icmpv6 => &[Proto::Icmpv6],
    }
}
