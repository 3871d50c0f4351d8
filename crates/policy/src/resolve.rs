//! Resolution: for every endpoint, its effective ingress and egress policy
//! as entries (peer identity, protocol, port range) → allow / deny /
//! redirect, kept up to date incrementally with per-endpoint diffs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use myelin_model::Resource;
use myelin_model::policy::{Entity, FqdnSelector, HttpRule, PortSpec};
use myelin_model::workload::{Pod, Protocol, Service};
use serde::{Deserialize, Serialize};

use crate::contrib::{Contributed, Contribution, EndpointTables};
use crate::error::PolicyError;
use crate::identity::{
    ANY, Allocator, CLUSTER_MAX, CLUSTER_MIN, HEALTH, HOST, INGRESS, INIT, Identity, IdentityStore,
    KUBE_APISERVER, LocalIdentities, REMOTE_NODE, RESERVED, Retention, UNMANAGED, WORLD,
    cidr_labels, reserved_labels,
};
use crate::labels::{LabelSet, SOURCE_K8S, Selector};
use crate::peer_index::{IdentityIndex, PeerIndex};
use crate::rules::{
    CompiledPolicy, Direction, L7Spec, PeerSelector, Peers, PolicyKey, Proto, Provenance, Section,
    compile, protos,
};

/// An endpoint: a pod, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointKey {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
}

impl EndpointKey {
    /// The key of `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A named container port of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamedPort {
    /// The name policies use.
    pub name: String,
    /// The number.
    pub port: u16,
    /// TCP or UDP.
    pub proto: Proto,
}

/// What the engine needs to know of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod labels (all of them; the volatile ones are filtered here).
    pub labels: BTreeMap<String, String>,
    /// Addresses.
    pub ips: Vec<IpAddr>,
    /// Named container ports.
    pub ports: Vec<NamedPort>,
    /// Service account, part of the identity as in Cilium.
    pub service_account: Option<String>,
}

impl Endpoint {
    /// The endpoint of a pod with its addresses.
    pub fn from_pod(pod: &Pod, ips: Vec<IpAddr>) -> Self {
        let ports = pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    port: p.container_port,
                    proto: if p.protocol == Protocol::Udp {
                        Proto::Udp
                    } else {
                        Proto::Tcp
                    },
                })
            })
            .collect();
        Self {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| myelin_model::manifest::DEFAULT_NAMESPACE.to_string()),
            name: pod.metadata.name.clone(),
            labels: pod.metadata.labels.clone(),
            ips,
            ports,
            service_account: None,
        }
    }

    /// Its key.
    pub fn key(&self) -> EndpointKey {
        EndpointKey::new(&self.namespace, &self.name)
    }
}

/// What the engine needs to know of a Service (for `toServices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The service's own labels (for `k8sServiceSelector`).
    pub labels: BTreeMap<String, String>,
    /// Its pod selector; a service without one has no pods to allow.
    pub selector: Option<BTreeMap<String, String>>,
}

impl ServiceRecord {
    /// The record of a Service manifest.
    pub fn from_service(s: &Service) -> Self {
        Self {
            namespace: s
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| myelin_model::manifest::DEFAULT_NAMESPACE.to_string()),
            name: s.metadata.name.clone(),
            labels: s.metadata.labels.clone(),
            selector: s.spec.selector.clone(),
        }
    }
}

/// A pod of another node, as the cluster store publishes it: an address with
/// its identity. It takes part as a peer exactly as a local pod does (label
/// selectors match its identity's labels, the ipcache maps its address to
/// the identity) but has no policy tables here: its own node enforces its
/// policy.
///
/// A cluster holds many of them (100,000 and more), so what many share is
/// shared rather than copied: the names and port lists are reference-counted,
/// and whoever builds them may hand the same node name, namespace or port
/// list to every endpoint that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// The address.
    pub ip: IpAddr,
    /// Its cluster identity (the number its node allocated).
    pub identity: Identity,
    /// Named container ports, for egress rules that name the peer's ports.
    pub ports: Arc<[NamedPort]>,
    /// The node it runs on.
    pub node: Arc<str>,
    /// The pod's namespace.
    pub namespace: Arc<str>,
    /// The pod's name.
    pub pod: Arc<str>,
}

/// An inclusive port range; `0..=65535` is every port. For ICMP it holds
/// the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port.
    pub end: u16,
}

impl PortRange {
    /// Every port.
    pub const ALL: PortRange = PortRange {
        start: 0,
        end: u16::MAX,
    };

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }

    fn covers(&self, other: &PortRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == PortRange::ALL {
            f.write_str("*")
        } else if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// The key of a policy entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryKey {
    /// Peer identity; [`ANY`] (0) for every peer.
    pub peer: Identity,
    /// Protocol; `Any` for every protocol (then `ports` is every port).
    pub proto: Proto,
    /// Ports (or ICMP type).
    pub ports: PortRange,
}

impl EntryKey {
    fn matches(&self, peer: Identity, proto: Proto, port: u16) -> bool {
        (self.peer == ANY || self.peer == peer)
            && (self.proto == Proto::Any || self.proto == proto)
            && (self.proto == Proto::Any || self.ports.contains(port))
    }

    pub(crate) fn covers(&self, other: &EntryKey) -> bool {
        (self.peer == ANY || self.peer == other.peer)
            && (self.proto == Proto::Any || self.proto == other.proto)
            && (self.proto == Proto::Any || self.ports.covers(&other.ports))
    }
}

/// An HTTP rule with the policy rule it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcedHttpRule {
    /// The rule as written.
    pub rule: HttpRule,
    /// Where it came from.
    pub from: Provenance,
}

/// A DNS rule with the policy rule it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcedDnsRule {
    /// The rule as written.
    pub rule: FqdnSelector,
    /// Where it came from.
    pub from: Provenance,
}

/// L7 rules for a redirect: a request passes when `allow_all` is set or any
/// rule matches it (rules of several policies on one key are ORed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7Policy {
    /// HTTP rules.
    pub http: Vec<SourcedHttpRule>,
    /// DNS rules (carried for the DNS proxy; enforced when it lands).
    pub dns: Vec<SourcedDnsRule>,
    /// An L3/L4 allow overlaps this key, so every request passes (the
    /// proxy still sees it, as in Cilium).
    pub allow_all: bool,
}

impl L7Policy {
    pub(crate) fn merge(&mut self, other: L7Policy) {
        for r in other.http {
            if !self.http.contains(&r) {
                self.http.push(r);
            }
        }
        for r in other.dns {
            if !self.dns.contains(&r) {
                self.dns.push(r);
            }
        }
        self.allow_all |= other.allow_all;
    }
}

/// What an entry does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    /// Let through.
    Allow,
    /// Drop; wins over every allow and redirect.
    Deny,
    /// Hand to the L7 proxy with these rules.
    Redirect(L7Policy),
}

/// The value of a policy entry: its action and every rule behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryValue {
    /// The action.
    #[serde(flatten)]
    pub action: Action,
    /// The rules that produced it (only the deny rules, for a deny).
    /// Shared: an entry many policies produce is updated in place when one
    /// of them comes or goes, and a diff carrying it does not copy it.
    #[serde(with = "shared_set")]
    pub provenance: Arc<BTreeSet<Provenance>>,
}

/// Serde for a shared set: as the set itself.
mod shared_set {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::rules::Provenance;

    pub fn serialize<S: Serializer>(
        set: &Arc<BTreeSet<Provenance>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        set.as_ref().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<BTreeSet<Provenance>>, D::Error> {
        BTreeSet::deserialize(d).map(Arc::new)
    }
}

/// One entry, key and value together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key.
    #[serde(flatten)]
    pub key: EntryKey,
    /// The value.
    #[serde(flatten)]
    pub value: EntryValue,
}

/// The policy of one direction of one endpoint.
///
/// Lookup semantics (what the datapath implements): among the entries
/// matching (peer or [`ANY`], protocol or `Any`, port in range), any deny
/// wins; otherwise redirects win over allows (an overlapping allow sets
/// `allow_all`); otherwise an allow allows; with no match the packet is
/// dropped when `enforced`, allowed when not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectionPolicy {
    /// Whether unmatched traffic is dropped (default deny).
    pub enforced: bool,
    /// The entries.
    pub entries: BTreeMap<EntryKey, EntryValue>,
}

/// The decision of a lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Decision {
    /// Allowed at L3/L4.
    Allow,
    /// Denied by a deny rule.
    Deny,
    /// Denied because nothing allows it and the direction is enforced.
    DefaultDeny,
    /// Allowed because no policy selects the endpoint in this direction.
    NotEnforced,
    /// Allowed at L3/L4 and handed to the proxy with these rules.
    Redirect(L7Policy),
}

impl DirectionPolicy {
    /// Looks up a packet; returns the decision and the entries that decide it.
    pub fn lookup(&self, peer: Identity, proto: Proto, port: u16) -> (Decision, Vec<Entry>) {
        let matching: Vec<(&EntryKey, &EntryValue)> = self
            .entries
            .iter()
            .filter(|(k, _)| k.matches(peer, proto, port))
            .collect();
        let pick = |f: &dyn Fn(&Action) -> bool| -> Vec<Entry> {
            matching
                .iter()
                .filter(|(_, v)| f(&v.action))
                .map(|(k, v)| Entry {
                    key: **k,
                    value: (*v).clone(),
                })
                .collect()
        };
        let denies = pick(&|a| matches!(a, Action::Deny));
        if !denies.is_empty() {
            return (Decision::Deny, denies);
        }
        let redirects = pick(&|a| matches!(a, Action::Redirect(_)));
        let allows = pick(&|a| matches!(a, Action::Allow));
        if !redirects.is_empty() {
            let mut l7 = L7Policy {
                allow_all: !allows.is_empty(),
                ..L7Policy::default()
            };
            for e in &redirects {
                if let Action::Redirect(r) = &e.value.action {
                    l7.merge(r.clone());
                }
            }
            let mut deciding = redirects;
            deciding.extend(allows);
            return (Decision::Redirect(l7), deciding);
        }
        if !allows.is_empty() {
            return (Decision::Allow, allows);
        }
        if self.enforced {
            (Decision::DefaultDeny, Vec::new())
        } else {
            (Decision::NotEnforced, Vec::new())
        }
    }

    /// The entries as a list.
    pub fn entry_list(&self) -> Vec<Entry> {
        self.entries
            .iter()
            .map(|(k, v)| Entry {
                key: *k,
                value: v.clone(),
            })
            .collect()
    }

    fn diff(&self, old: Option<&DirectionPolicy>) -> DirectionDiff {
        let empty = BTreeMap::new();
        let before = old.map_or(&empty, |o| &o.entries);
        DirectionDiff {
            enforced: self.enforced,
            upsert: self
                .entries
                .iter()
                .filter(|(k, v)| before.get(k) != Some(v))
                .map(|(k, v)| Entry {
                    key: *k,
                    value: v.clone(),
                })
                .collect(),
            remove: before
                .keys()
                .filter(|k| !self.entries.contains_key(k))
                .copied()
                .collect(),
        }
    }
}

/// The resolved policy of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// The endpoint.
    pub endpoint: EndpointKey,
    /// Its identity.
    pub identity: Identity,
    /// Traffic into it.
    pub ingress: DirectionPolicy,
    /// Traffic out of it.
    pub egress: DirectionPolicy,
}

impl EndpointPolicy {
    /// One direction.
    pub fn direction(&self, direction: Direction) -> &DirectionPolicy {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Changes to one direction's entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionDiff {
    /// Whether the direction is enforced after the change.
    pub enforced: bool,
    /// Entries to add or replace.
    pub upsert: Vec<Entry>,
    /// Keys to delete.
    pub remove: Vec<EntryKey>,
}

/// What changed for one endpoint. The datapath applies a diff atomically
/// (or swaps in [`PolicyEngine::policy`], the whole new table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointChange {
    /// The endpoint's policy changed (or it is new).
    Updated {
        /// Its identity after the change.
        identity: Identity,
        /// Ingress changes.
        ingress: DirectionDiff,
        /// Egress changes.
        egress: DirectionDiff,
    },
    /// The endpoint is gone.
    Removed,
}

/// Changes to the ipcache (prefix → identity).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpCacheDiff {
    /// Prefixes to add or re-map.
    pub upsert: Vec<(IpNet, Identity)>,
    /// Prefixes to delete.
    pub remove: Vec<IpNet>,
}

/// Everything one change to the engine produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// Per-endpoint changes; endpoints not listed are unaffected.
    pub endpoints: BTreeMap<EndpointKey, EndpointChange>,
    /// ipcache changes.
    pub ipcache: IpCacheDiff,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
            && self.ipcache.upsert.is_empty()
            && self.ipcache.remove.is_empty()
    }
}

/// What an identity stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdentityKind {
    Reserved,
    Endpoint,
    Cidr(IpNet),
}

/// An identity known to the engine.
#[derive(Debug, Clone)]
pub(crate) struct IdentityInfo {
    pub labels: LabelSet,
    pub kind: IdentityKind,
}

#[derive(Debug, Clone)]
struct EndpointRecord {
    spec: Endpoint,
    identity: Identity,
    labels: LabelSet,
}

#[derive(Debug, Clone)]
struct PolicyState {
    compiled: CompiledPolicy,
    /// For every rule, section and peer: the identities it matches.
    matched: Vec<Vec<Vec<BTreeSet<Identity>>>>,
    /// Endpoints selected by some rule of the policy.
    selects: BTreeSet<EndpointKey>,
}

impl PolicyState {
    /// Every identity some peer of the policy matches.
    fn matched_ids(&self) -> BTreeSet<Identity> {
        self.matched
            .iter()
            .flatten()
            .flatten()
            .flatten()
            .copied()
            .collect()
    }
}

/// The policy engine: policies, endpoints, services and namespaces in;
/// per-endpoint policy and the ipcache out, updated incrementally.
///
/// A change costs what it touches: each endpoint's tables are kept as the
/// sum of what each policy contributes ([`crate::contrib`]), so a policy
/// change re-derives that policy's entries only; peer selectors are indexed
/// so a new identity is matched against the selectors that might select it;
/// the ipcache is updated at the prefixes the change touched.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    allocator: Allocator,
    local: LocalIdentities,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    endpoints: BTreeMap<EndpointKey, EndpointRecord>,
    members: BTreeMap<Identity, BTreeSet<EndpointKey>>,
    /// Endpoints by address (two pods may briefly share one).
    ip_owners: BTreeMap<IpAddr, BTreeSet<EndpointKey>>,
    /// Pods of other nodes, by address.
    remote: BTreeMap<IpAddr, RemoteEndpoint>,
    /// Addresses of remote endpoints by identity (with `members`, what keeps
    /// an endpoint identity known).
    remote_members: BTreeMap<Identity, BTreeSet<IpAddr>>,
    /// Other nodes' own addresses (the `remote-node` identity), by node.
    remote_nodes: BTreeMap<String, Vec<IpAddr>>,
    /// How many remote nodes claim each address.
    remote_node_ips: BTreeMap<IpAddr, usize>,
    services: BTreeMap<(String, String), ServiceRecord>,
    policies: BTreeMap<PolicyKey, PolicyState>,
    selected_by: BTreeMap<EndpointKey, BTreeSet<PolicyKey>>,
    /// The policies some peer of which matches an identity.
    matched_in: BTreeMap<Identity, BTreeSet<PolicyKey>>,
    peers: PeerIndex,
    identities: BTreeMap<Identity, IdentityInfo>,
    identity_index: IdentityIndex,
    tables: BTreeMap<EndpointKey, EndpointTables>,
    resolved: BTreeMap<EndpointKey, EndpointPolicy>,
    ipcache: BTreeMap<IpNet, Identity>,
    work: usize,
}

/// Work collected by one mutation, finished by [`PolicyEngine::finish`].
#[derive(Default)]
struct Pending {
    /// Policy contributions to endpoints to derive again.
    pairs: BTreeSet<(EndpointKey, PolicyKey)>,
    /// Policies whose matched peers changed: every endpoint they select.
    policies: BTreeSet<PolicyKey>,
    /// Endpoints that changed themselves: every policy contributing to or
    /// selecting them.
    endpoints: BTreeSet<EndpointKey>,
    removed: BTreeSet<EndpointKey>,
    /// ipcache prefixes to look at again.
    prefixes: BTreeSet<IpNet>,
    /// Selectors and identities visited on the way.
    work: usize,
}

/// The world identity's prefixes, always in the ipcache.
fn default_routes() -> [IpNet; 2] {
    [
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ]
}

impl PolicyEngine {
    /// An engine allocating cluster identities from `store`, holding them as `holder`
    /// (unique per agent sharing the store: the node name).
    pub fn new(store: Arc<dyn IdentityStore>, holder: impl Into<String>) -> Self {
        let identities: BTreeMap<Identity, IdentityInfo> = RESERVED
            .iter()
            .filter_map(|(id, _)| {
                Some((
                    *id,
                    IdentityInfo {
                        labels: reserved_labels(*id)?,
                        kind: IdentityKind::Reserved,
                    },
                ))
            })
            .collect();
        let mut identity_index = IdentityIndex::default();
        for (id, info) in &identities {
            identity_index.insert(*id, info);
        }
        Self {
            allocator: Allocator::new(store, holder),
            local: LocalIdentities::default(),
            namespaces: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            members: BTreeMap::new(),
            ip_owners: BTreeMap::new(),
            remote: BTreeMap::new(),
            remote_members: BTreeMap::new(),
            remote_nodes: BTreeMap::new(),
            remote_node_ips: BTreeMap::new(),
            services: BTreeMap::new(),
            policies: BTreeMap::new(),
            selected_by: BTreeMap::new(),
            matched_in: BTreeMap::new(),
            peers: PeerIndex::default(),
            identities,
            identity_index,
            tables: BTreeMap::new(),
            resolved: BTreeMap::new(),
            ipcache: default_routes().into_iter().map(|n| (n, WORLD)).collect(),
            work: 0,
        }
    }

    /// Applies a manifest resource: a policy, a Service (for `toServices`)
    /// or a Namespace (its labels, for namespace selectors). Other kinds
    /// change nothing here; pods come with addresses through
    /// [`Self::upsert_endpoint`].
    pub fn apply(&mut self, resource: &Resource) -> Result<Changes, PolicyError> {
        match resource {
            Resource::CiliumNetworkPolicy(_)
            | Resource::CiliumClusterwideNetworkPolicy(_)
            | Resource::NetworkPolicy(_) => self.upsert_policy(resource),
            Resource::Service(s) => Ok(self.upsert_service(ServiceRecord::from_service(s))),
            Resource::Namespace(n) => {
                self.set_namespace_labels(&n.metadata.name, n.metadata.labels.clone())
            }
            _ => Ok(Changes::default()),
        }
    }

    /// Adds or replaces a policy (validated by the model already).
    pub fn upsert_policy(&mut self, resource: &Resource) -> Result<Changes, PolicyError> {
        let compiled = compile(resource)?;
        let key = compiled.key.clone();
        let mut pending = Pending::default();
        // The new prefixes are acquired before the old ones are released, so
        // a prefix both name keeps its identity.
        for prefix in compiled.prefixes() {
            let (id, new) = self.local.acquire(prefix);
            pending.prefixes.insert(prefix);
            if new {
                self.add_identity(
                    id,
                    IdentityInfo {
                        labels: cidr_labels(&prefix),
                        kind: IdentityKind::Cidr(prefix),
                    },
                    &mut pending,
                );
            }
        }
        self.drop_policy(&key, &mut pending);
        let mut state = PolicyState {
            compiled,
            matched: Vec::new(),
            selects: BTreeSet::new(),
        };
        state.matched = self.match_all(&state.compiled, &mut pending.work);
        pending.work += self.endpoints.len();
        for id in state.matched_ids() {
            self.matched_in.entry(id).or_default().insert(key.clone());
        }
        for (ek, rec) in &self.endpoints {
            if state
                .compiled
                .rules
                .iter()
                .any(|r| r.subject.matches(&rec.labels))
            {
                state.selects.insert(ek.clone());
                self.selected_by
                    .entry(ek.clone())
                    .or_default()
                    .insert(key.clone());
            }
        }
        self.peers.insert(&state.compiled);
        pending.policies.insert(key.clone());
        self.policies.insert(key, state);
        Ok(self.finish(pending))
    }

    /// Identity garbage collection, run periodically by the agent: states to the store the
    /// cluster identities this engine's endpoints use now (letting go of the rest), then
    /// deletes the identities no agent has held for the retention's grace. Returns the
    /// deleted ones.
    pub fn collect_identities(
        &mut self,
        now: u64,
        retention: Retention,
    ) -> Result<Vec<Identity>, PolicyError> {
        let in_use: BTreeSet<Identity> = self
            .members
            .keys()
            .copied()
            .filter(|id| (CLUSTER_MIN..=CLUSTER_MAX).contains(id))
            .collect();
        self.allocator.refresh(&in_use, now)?;
        Ok(self.allocator.collect(now, retention)?)
    }

    /// Removes a policy; every other policy stays in force.
    pub fn remove_policy(&mut self, key: &PolicyKey) -> Changes {
        let mut pending = Pending::default();
        self.drop_policy(key, &mut pending);
        self.finish(pending)
    }

    /// Takes a policy out: its contributions to the endpoints it selected
    /// are subtracted at [`Self::finish`], its CIDR identities released.
    fn drop_policy(&mut self, key: &PolicyKey, pending: &mut Pending) {
        let Some(old) = self.policies.remove(key) else {
            return;
        };
        self.peers.remove(&old.compiled);
        for id in old.matched_ids() {
            if let Some(set) = self.matched_in.get_mut(&id) {
                set.remove(key);
                if set.is_empty() {
                    self.matched_in.remove(&id);
                }
            }
        }
        for ek in old.selects {
            if let Some(set) = self.selected_by.get_mut(&ek) {
                set.remove(key);
            }
            pending.pairs.insert((ek, key.clone()));
        }
        for prefix in old.compiled.prefixes() {
            if let Some(id) = self.local.release(&prefix) {
                pending.prefixes.insert(prefix);
                self.remove_identity(id, pending);
            }
        }
    }

    /// Adds or replaces an endpoint (new pod, label or address change).
    pub fn upsert_endpoint(&mut self, endpoint: Endpoint) -> Result<Changes, PolicyError> {
        let key = endpoint.key();
        let empty = BTreeMap::new();
        let ns_labels = self.namespaces.get(&endpoint.namespace).unwrap_or(&empty);
        let labels = LabelSet::for_pod(
            &endpoint.namespace,
            &endpoint.labels,
            ns_labels,
            endpoint.service_account.as_deref(),
        );
        let identity = self.allocator.allocate(&labels)?;
        let mut pending = Pending::default();
        let old = self.endpoints.get(&key).cloned();
        if let Some(old) = &old
            && old.identity == identity
            && old.spec == endpoint
        {
            return Ok(Changes::default());
        }
        let ports_changed = old
            .as_ref()
            .is_none_or(|o| o.spec.ports != endpoint.ports || o.identity != identity);
        if let Some(old) = &old {
            if ports_changed {
                self.named_port_peers_changed(old.identity, &mut pending);
            }
            self.leave_identity(&key, old.identity, &mut pending);
            self.forget_ips(&key, &old.spec.ips, &mut pending);
        }
        self.join_identity(&key, identity, labels.clone(), &mut pending);
        for ip in &endpoint.ips {
            self.ip_owners.entry(*ip).or_default().insert(key.clone());
            pending.prefixes.insert(IpNet::from(*ip));
        }
        self.endpoints.insert(
            key.clone(),
            EndpointRecord {
                spec: endpoint,
                identity,
                labels,
            },
        );
        if ports_changed {
            self.named_port_peers_changed(identity, &mut pending);
        }
        self.reselect(&key);
        pending.endpoints.insert(key);
        Ok(self.finish(pending))
    }

    /// Removes an endpoint.
    pub fn remove_endpoint(&mut self, key: &EndpointKey) -> Changes {
        let mut pending = Pending::default();
        let Some(old) = self.endpoints.remove(key) else {
            return Changes::default();
        };
        self.named_port_peers_changed(old.identity, &mut pending);
        self.leave_identity(key, old.identity, &mut pending);
        self.forget_ips(key, &old.spec.ips, &mut pending);
        for pk in self.selected_by.remove(key).unwrap_or_default() {
            if let Some(p) = self.policies.get_mut(&pk) {
                p.selects.remove(key);
            }
        }
        pending.removed.insert(key.clone());
        self.finish(pending)
    }

    /// Adds or replaces a pod of another node. Costs what it touches: a new
    /// identity is matched against the selectors the peer index gives for it,
    /// an identity already known only moves the address in the ipcache.
    /// `labels` are the identity's (from the store's identities), read only
    /// when the identity is new here: one number never means two label sets.
    pub fn upsert_remote_endpoint(
        &mut self,
        endpoint: RemoteEndpoint,
        labels: &LabelSet,
    ) -> Result<Changes, PolicyError> {
        if !(CLUSTER_MIN..=CLUSTER_MAX).contains(&endpoint.identity) {
            return Err(PolicyError::RemoteIdentity {
                ip: endpoint.ip,
                node: endpoint.node.to_string(),
                identity: endpoint.identity,
            });
        }
        let ip = endpoint.ip;
        let old = self.remote.get(&ip);
        if old == Some(&endpoint) {
            return Ok(Changes::default());
        }
        let mut pending = Pending::default();
        // Named ports resolve per identity: a pod moving to another identity
        // changes both identities' named ports, even with the same ports.
        let ports_changed =
            old.is_none_or(|o| o.ports != endpoint.ports || o.identity != endpoint.identity);
        if let Some(old) = self.remote.remove(&ip) {
            if ports_changed {
                self.named_port_peers_changed(old.identity, &mut pending);
            }
            self.leave_remote_identity(ip, old.identity, &mut pending);
        }
        let id = endpoint.identity;
        if !self.identity_in_use(id) {
            let info = IdentityInfo {
                labels: labels.clone(),
                kind: IdentityKind::Endpoint,
            };
            self.add_identity(id, info, &mut pending);
        }
        self.remote_members.entry(id).or_default().insert(ip);
        self.remote.insert(ip, endpoint);
        if ports_changed {
            self.named_port_peers_changed(id, &mut pending);
        }
        pending.prefixes.insert(IpNet::from(ip));
        Ok(self.finish(pending))
    }

    /// Removes a pod of another node.
    pub fn remove_remote_endpoint(&mut self, ip: IpAddr) -> Changes {
        let Some(old) = self.remote.remove(&ip) else {
            return Changes::default();
        };
        let mut pending = Pending::default();
        self.named_port_peers_changed(old.identity, &mut pending);
        self.leave_remote_identity(ip, old.identity, &mut pending);
        pending.prefixes.insert(IpNet::from(ip));
        self.finish(pending)
    }

    fn leave_remote_identity(&mut self, ip: IpAddr, id: Identity, pending: &mut Pending) {
        if let Some(members) = self.remote_members.get_mut(&id) {
            members.remove(&ip);
            if members.is_empty() {
                self.remote_members.remove(&id);
                if !self.identity_in_use(id) {
                    self.remove_identity(id, pending);
                }
            }
        }
    }

    /// Sets another node's own addresses: the ipcache maps each to
    /// `remote-node` (as Cilium does), unless a pod holds it.
    pub fn set_remote_node(&mut self, node: &str, addresses: Vec<IpAddr>) -> Changes {
        let mut pending = Pending::default();
        self.drop_remote_node(node, &mut pending);
        for ip in &addresses {
            *self.remote_node_ips.entry(*ip).or_default() += 1;
            pending.prefixes.insert(IpNet::from(*ip));
        }
        self.remote_nodes.insert(node.to_string(), addresses);
        self.finish(pending)
    }

    /// Forgets another node's own addresses (the node left).
    pub fn remove_remote_node(&mut self, node: &str) -> Changes {
        let mut pending = Pending::default();
        self.drop_remote_node(node, &mut pending);
        self.finish(pending)
    }

    fn drop_remote_node(&mut self, node: &str, pending: &mut Pending) {
        for ip in self.remote_nodes.remove(node).unwrap_or_default() {
            if let Some(n) = self.remote_node_ips.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.remote_node_ips.remove(&ip);
                }
            }
            pending.prefixes.insert(IpNet::from(ip));
        }
    }

    /// A pod of another node, by address.
    pub fn remote_endpoint(&self, ip: IpAddr) -> Option<&RemoteEndpoint> {
        self.remote.get(&ip)
    }

    /// Every pod of other nodes known, by address.
    pub fn remote_endpoints(&self) -> impl Iterator<Item = &RemoteEndpoint> {
        self.remote.values()
    }

    fn forget_ips(&mut self, key: &EndpointKey, ips: &[IpAddr], pending: &mut Pending) {
        for ip in ips {
            if let Some(owners) = self.ip_owners.get_mut(ip) {
                owners.remove(key);
                if owners.is_empty() {
                    self.ip_owners.remove(ip);
                }
            }
            pending.prefixes.insert(IpNet::from(*ip));
        }
    }

    /// Adds or replaces a service.
    pub fn upsert_service(&mut self, service: ServiceRecord) -> Changes {
        self.services
            .insert((service.namespace.clone(), service.name.clone()), service);
        self.services_changed()
    }

    /// Removes a service.
    pub fn remove_service(&mut self, namespace: &str, name: &str) -> Changes {
        self.services
            .remove(&(namespace.to_string(), name.to_string()));
        self.services_changed()
    }

    /// Sets a namespace's labels (Kubernetes adds
    /// `kubernetes.io/metadata.name`; so does this). Endpoints of the
    /// namespace get new identities.
    pub fn set_namespace_labels(
        &mut self,
        namespace: &str,
        mut labels: BTreeMap<String, String>,
    ) -> Result<Changes, PolicyError> {
        labels.insert(
            "kubernetes.io/metadata.name".to_string(),
            namespace.to_string(),
        );
        self.namespaces.insert(namespace.to_string(), labels);
        let members: Vec<Endpoint> = self
            .endpoints
            .values()
            .filter(|r| r.spec.namespace == namespace)
            .map(|r| r.spec.clone())
            .collect();
        let mut all = Changes::default();
        for ep in members {
            // New namespace labels give a new label set, hence a new
            // identity, so the upsert is not a no-op and yields a true diff.
            merge_changes(&mut all, self.upsert_endpoint(ep)?);
        }
        Ok(all)
    }

    /// Recomputes every endpoint from scratch (from every policy selecting
    /// it, not from the tallies kept) and returns what differs from the
    /// tables held (nothing, unless incremental updates went wrong); the
    /// recomputation replaces them.
    pub fn resolve_all(&mut self) -> Changes {
        let mut changes = Changes::default();
        let mut work = 0;
        let keys: Vec<EndpointKey> = self.endpoints.keys().cloned().collect();
        for key in keys {
            let Some(rec) = self.endpoints.get(&key) else {
                continue;
            };
            let mut tables = EndpointTables::default();
            for pk in self.selected_by.get(&key).into_iter().flatten() {
                work += tables.set(pk, self.contribution(pk, &key));
            }
            let mut new = EndpointPolicy {
                endpoint: key.clone(),
                identity: rec.identity,
                ingress: DirectionPolicy::default(),
                egress: DirectionPolicy::default(),
            };
            work += tables.settle(Direction::Ingress, &mut new.ingress).1;
            work += tables.settle(Direction::Egress, &mut new.egress).1;
            let old = self.resolved.get(&key);
            if old != Some(&new) {
                changes.endpoints.insert(
                    key.clone(),
                    EndpointChange::Updated {
                        identity: new.identity,
                        ingress: new.ingress.diff(old.map(|o| &o.ingress)),
                        egress: new.egress.diff(old.map(|o| &o.egress)),
                    },
                );
                self.resolved.insert(key.clone(), new);
            }
            self.tables.insert(key, tables);
        }
        self.work = work;
        changes
    }

    /// How many entries, table keys, peer selectors and identities the last
    /// change visited: a measure of its cost that does not depend on the
    /// machine (the benchmark prints it; a test pins that a policy delete
    /// does not visit more as the number of policies grows).
    pub fn last_change_work(&self) -> usize {
        self.work
    }

    /// The resolved policy of an endpoint.
    pub fn policy(&self, key: &EndpointKey) -> Option<&EndpointPolicy> {
        self.resolved.get(key)
    }

    /// Every resolved policy.
    pub fn policies(&self) -> impl Iterator<Item = &EndpointPolicy> {
        self.resolved.values()
    }

    /// The endpoint, as last upserted.
    pub fn endpoint(&self, key: &EndpointKey) -> Option<&Endpoint> {
        self.endpoints.get(key).map(|r| &r.spec)
    }

    /// The ipcache: every known prefix and its identity (endpoint addresses,
    /// CIDR peers and their exceptions, and the world defaults).
    pub fn ipcache(&self) -> &BTreeMap<IpNet, Identity> {
        &self.ipcache
    }

    /// The node this engine runs on: the name it holds identities as.
    pub fn node_name(&self) -> &str {
        self.allocator.holder()
    }

    /// The identity of an address: longest-prefix match in the ipcache,
    /// one look-up per prefix length (its prefixes are held with the host
    /// bits cleared), not a walk of every entry: with 100,000 remote pods
    /// the walk took milliseconds per address.
    pub fn identity_of_ip(&self, ip: IpAddr) -> Identity {
        let longest = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (0..=longest)
            .rev()
            .filter_map(|len| IpNet::new(ip, len).ok())
            .find_map(|net| self.ipcache.get(&net.trunc()).copied())
            .unwrap_or(WORLD)
    }

    /// The endpoint that owns an address.
    pub fn endpoint_of_ip(&self, ip: IpAddr) -> Option<EndpointKey> {
        self.endpoints
            .iter()
            .find(|(_, r)| r.spec.ips.contains(&ip))
            .map(|(k, _)| k.clone())
    }

    /// The labels of an identity known to the engine.
    pub fn identity_labels(&self, id: Identity) -> Option<&LabelSet> {
        self.identities.get(&id).map(|i| &i.labels)
    }

    /// Every identity known to the engine (reserved, endpoint and CIDR ones)
    /// with its labels, in order.
    pub fn identities(&self) -> impl Iterator<Item = (Identity, &LabelSet)> {
        self.identities.iter().map(|(id, info)| (*id, &info.labels))
    }

    /// Keys of the policies held.
    pub fn policy_keys(&self) -> impl Iterator<Item = &PolicyKey> {
        self.policies.keys()
    }

    fn join_identity(
        &mut self,
        key: &EndpointKey,
        id: Identity,
        labels: LabelSet,
        pending: &mut Pending,
    ) {
        let new = !self.identity_in_use(id);
        self.members.entry(id).or_default().insert(key.clone());
        if new {
            self.add_identity(
                id,
                IdentityInfo {
                    labels,
                    kind: IdentityKind::Endpoint,
                },
                pending,
            );
        }
    }

    fn leave_identity(&mut self, key: &EndpointKey, id: Identity, pending: &mut Pending) {
        if let Some(members) = self.members.get_mut(&id) {
            members.remove(key);
            if members.is_empty() {
                self.members.remove(&id);
                if !self.identity_in_use(id) {
                    self.remove_identity(id, pending);
                }
            }
        }
    }

    /// Whether a local or a remote endpoint carries `id`.
    fn identity_in_use(&self, id: Identity) -> bool {
        self.members.contains_key(&id) || self.remote_members.contains_key(&id)
    }

    /// A new identity: the selectors that might select it (from the peer
    /// index) are checked; the policies of those that do recompute.
    fn add_identity(&mut self, id: Identity, info: IdentityInfo, pending: &mut Pending) {
        let candidates = self.peers.candidates(&info);
        pending.work += candidates.len();
        for (pk, ri, si, pi) in candidates {
            let Some(state) = self.policies.get_mut(&pk) else {
                continue;
            };
            let Some(Peers::Some(peers)) = state
                .compiled
                .rules
                .get(ri)
                .and_then(|r| r.sections.get(si))
                .map(|s| &s.peers)
            else {
                continue;
            };
            let Some(peer) = peers.get(pi) else {
                continue;
            };
            if peer_matches(&self.services, peer, id, &info)
                && let Some(set) = state
                    .matched
                    .get_mut(ri)
                    .and_then(|r| r.get_mut(si))
                    .and_then(|s| s.get_mut(pi))
            {
                set.insert(id);
                self.matched_in.entry(id).or_default().insert(pk.clone());
                pending.policies.insert(pk);
            }
        }
        self.identity_index.insert(id, &info);
        self.identities.insert(id, info);
    }

    /// An identity gone: only the policies that matched it change.
    fn remove_identity(&mut self, id: Identity, pending: &mut Pending) {
        if let Some(info) = self.identities.remove(&id) {
            self.identity_index.remove(id, &info);
        }
        for pk in self.matched_in.remove(&id).unwrap_or_default() {
            let Some(state) = self.policies.get_mut(&pk) else {
                continue;
            };
            for set in state.matched.iter_mut().flatten().flatten() {
                pending.work += 1;
                set.remove(&id);
            }
            pending.policies.insert(pk);
        }
    }

    /// Egress named ports resolve against the peers' ports: when an
    /// identity's ports change, endpoints of policies with named ports that
    /// reach it recompute.
    fn named_port_peers_changed(&self, id: Identity, pending: &mut Pending) {
        for pk in self.matched_in.get(&id).into_iter().flatten() {
            if self
                .policies
                .get(pk)
                .is_some_and(|s| s.compiled.uses_named_ports())
            {
                pending.policies.insert(pk.clone());
            }
        }
    }

    fn services_changed(&mut self) -> Changes {
        let mut pending = Pending::default();
        let keys: Vec<PolicyKey> = self
            .policies
            .iter()
            .filter(|(_, s)| s.compiled.uses_services())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let matched = match self.policies.get(&key) {
                Some(state) => self.match_all(&state.compiled, &mut pending.work),
                None => continue,
            };
            let Some(state) = self.policies.get_mut(&key) else {
                continue;
            };
            if state.matched == matched {
                continue;
            }
            let before = state.matched_ids();
            state.matched = matched;
            let after = state.matched_ids();
            for id in before.difference(&after) {
                if let Some(set) = self.matched_in.get_mut(id) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.matched_in.remove(id);
                    }
                }
            }
            for id in after {
                self.matched_in.entry(id).or_default().insert(key.clone());
            }
            pending.policies.insert(key);
        }
        self.finish(pending)
    }

    /// For every peer of a policy, the identities it selects: checked
    /// among the candidates the identity index gives.
    fn match_all(
        &self,
        compiled: &CompiledPolicy,
        work: &mut usize,
    ) -> Vec<Vec<Vec<BTreeSet<Identity>>>> {
        compiled
            .rules
            .iter()
            .map(|rule| {
                rule.sections
                    .iter()
                    .map(|section| match &section.peers {
                        Peers::Any => Vec::new(),
                        Peers::Some(peers) => peers
                            .iter()
                            .map(|peer| {
                                let candidates = self.identity_index.candidates(peer);
                                *work += candidates.len();
                                candidates
                                    .into_iter()
                                    .filter(|id| {
                                        self.identities.get(id).is_some_and(|info| {
                                            peer_matches(&self.services, peer, *id, info)
                                        })
                                    })
                                    .collect()
                            })
                            .collect(),
                    })
                    .collect()
            })
            .collect()
    }

    fn reselect(&mut self, key: &EndpointKey) {
        let Some(rec) = self.endpoints.get(key) else {
            return;
        };
        let mut selected = BTreeSet::new();
        for (pk, state) in self.policies.iter_mut() {
            if state
                .compiled
                .rules
                .iter()
                .any(|r| r.subject.matches(&rec.labels))
            {
                state.selects.insert(key.clone());
                selected.insert(pk.clone());
            } else {
                state.selects.remove(key);
            }
        }
        self.selected_by.insert(key.clone(), selected);
    }

    /// Derives again the contributions the change touched, settles the
    /// touched keys of each endpoint's tables and the touched ipcache
    /// prefixes, and returns the diffs.
    fn finish(&mut self, mut pending: Pending) -> Changes {
        let mut changes = Changes::default();
        let mut work = pending.work;
        for key in &pending.removed {
            self.tables.remove(key);
            if self.resolved.remove(key).is_some() {
                changes
                    .endpoints
                    .insert(key.clone(), EndpointChange::Removed);
            }
        }
        let mut pairs = std::mem::take(&mut pending.pairs);
        for pk in &pending.policies {
            for ek in self.policies.get(pk).into_iter().flat_map(|s| &s.selects) {
                pairs.insert((ek.clone(), pk.clone()));
            }
        }
        for ek in &pending.endpoints {
            let selecting = self.selected_by.get(ek).into_iter().flatten();
            let contributing = self.tables.get(ek).into_iter().flat_map(|t| t.policies());
            for pk in selecting.chain(contributing) {
                pairs.insert((ek.clone(), pk.clone()));
            }
        }
        let mut touched = pending.endpoints;
        for (ek, pk) in pairs {
            if !self.endpoints.contains_key(&ek) {
                continue;
            }
            let contribution = self.contribution(&pk, &ek);
            work += self
                .tables
                .entry(ek.clone())
                .or_default()
                .set(&pk, contribution);
            touched.insert(ek);
        }
        for key in touched {
            let Some(rec) = self.endpoints.get(&key) else {
                continue;
            };
            let tables = self.tables.entry(key.clone()).or_default();
            let (policy, new) = match self.resolved.get_mut(&key) {
                Some(p) => (p, false),
                None => {
                    let fresh = EndpointPolicy {
                        endpoint: key.clone(),
                        identity: rec.identity,
                        ingress: DirectionPolicy::default(),
                        egress: DirectionPolicy::default(),
                    };
                    (self.resolved.entry(key.clone()).or_insert(fresh), true)
                }
            };
            let enforced = (policy.ingress.enforced, policy.egress.enforced);
            let renumbered = policy.identity != rec.identity;
            policy.identity = rec.identity;
            let (ingress, wi) = tables.settle(Direction::Ingress, &mut policy.ingress);
            let (egress, we) = tables.settle(Direction::Egress, &mut policy.egress);
            work += wi + we;
            let changed = new
                || renumbered
                || enforced != (ingress.enforced, egress.enforced)
                || [&ingress, &egress]
                    .iter()
                    .any(|d| !d.upsert.is_empty() || !d.remove.is_empty());
            if changed {
                changes.endpoints.insert(
                    key,
                    EndpointChange::Updated {
                        identity: rec.identity,
                        ingress,
                        egress,
                    },
                );
            }
        }
        for prefix in pending.prefixes {
            work += 1;
            let now = self.ipcache_entry(&prefix);
            if now == self.ipcache.get(&prefix).copied() {
                continue;
            }
            match now {
                Some(id) => {
                    self.ipcache.insert(prefix, id);
                    changes.ipcache.upsert.push((prefix, id));
                }
                None => {
                    self.ipcache.remove(&prefix);
                    changes.ipcache.remove.push(prefix);
                }
            }
        }
        self.work = work;
        changes
    }

    /// What the ipcache holds for a prefix: an endpoint's identity for its
    /// address (a pod's own identity wins over a CIDR identity for the same
    /// host prefix; of two pods sharing an address, the last by key), else
    /// the prefix's CIDR identity, else the world for the default routes.
    fn ipcache_entry(&self, prefix: &IpNet) -> Option<Identity> {
        let owner = (prefix.prefix_len() == prefix.max_prefix_len())
            .then(|| self.ip_owners.get(&prefix.addr()))
            .flatten()
            .and_then(|owners| owners.last())
            .and_then(|key| self.endpoints.get(key));
        let host = (prefix.prefix_len() == prefix.max_prefix_len()).then(|| prefix.addr());
        let remote = host.and_then(|ip| {
            self.remote.get(&ip).map(|r| r.identity).or_else(|| {
                self.remote_node_ips
                    .contains_key(&ip)
                    .then_some(REMOTE_NODE)
            })
        });
        owner
            .map(|rec| rec.identity)
            .or(remote)
            .or_else(|| self.local.get(prefix))
            .or_else(|| default_routes().contains(prefix).then_some(WORLD))
    }

    /// What one policy contributes to one endpoint: the entries of its
    /// rules that select the endpoint (nothing when it selects none).
    fn contribution(&self, pk: &PolicyKey, key: &EndpointKey) -> Contribution {
        let mut out = Contribution::default();
        let (Some(rec), Some(state)) = (self.endpoints.get(key), self.policies.get(pk)) else {
            return out;
        };
        if !state.selects.contains(key) {
            return out;
        }
        for (ri, rule) in state.compiled.rules.iter().enumerate() {
            if !rule.subject.matches(&rec.labels) {
                continue;
            }
            // Any selecting rule with default deny on enforces the
            // direction; rules with enableDefaultDeny false add their
            // entries without enforcing.
            out.ingress_enforced |= rule.ingress_default_deny == Some(true);
            out.egress_enforced |= rule.egress_default_deny == Some(true);
            for (si, section) in rule.sections.iter().enumerate() {
                let peers: BTreeSet<Identity> = match &section.peers {
                    Peers::Any => BTreeSet::from([ANY]),
                    Peers::Some(_) => state.matched[ri][si].iter().flatten().copied().collect(),
                };
                if peers.is_empty() {
                    continue;
                }
                self.add_section(&mut out.entries, section, &peers, rec);
            }
        }
        out
    }

    /// The entries one section gives an endpoint.
    fn add_section(
        &self,
        out: &mut Vec<Contributed>,
        section: &Section,
        peers: &BTreeSet<Identity>,
        rec: &EndpointRecord,
    ) {
        let from = &section.provenance;
        let Some(items) = &section.ports else {
            let action = if section.deny {
                Action::Deny
            } else {
                Action::Allow
            };
            for peer in peers {
                push(
                    out,
                    section.direction,
                    EntryKey {
                        peer: *peer,
                        proto: Proto::Any,
                        ports: PortRange::ALL,
                    },
                    action.clone(),
                    from,
                );
            }
            return;
        };
        for item in items {
            let action = if section.deny {
                Action::Deny
            } else if let Some(l7) = &item.l7 {
                Action::Redirect(l7_policy(l7, from))
            } else {
                Action::Allow
            };
            match &item.spec {
                PortSpec::All | PortSpec::Range(..) => {
                    let (all, ports) = match item.spec {
                        PortSpec::Range(a, b) => (false, PortRange { start: a, end: b }),
                        _ => (true, PortRange::ALL),
                    };
                    for proto in protos(item.proto, all) {
                        for peer in peers {
                            push(
                                out,
                                section.direction,
                                EntryKey {
                                    peer: *peer,
                                    proto: *proto,
                                    ports,
                                },
                                action.clone(),
                                from,
                            );
                        }
                    }
                }
                PortSpec::Named(name) => {
                    let fits = |p: &NamedPort| {
                        &p.name == name && (item.proto == Proto::Any || item.proto == p.proto)
                    };
                    match section.direction {
                        // Ingress: the name is one of this endpoint's ports.
                        Direction::Ingress => {
                            for p in rec.spec.ports.iter().filter(|p| fits(p)) {
                                for peer in peers {
                                    let ports = PortRange {
                                        start: p.port,
                                        end: p.port,
                                    };
                                    push(
                                        out,
                                        section.direction,
                                        EntryKey {
                                            peer: *peer,
                                            proto: p.proto,
                                            ports,
                                        },
                                        action.clone(),
                                        from,
                                    );
                                }
                            }
                        }
                        // Egress: the name is a port of each peer; peers
                        // that are not pods have no named ports.
                        Direction::Egress => {
                            for peer in peers {
                                let local = self.members.get(peer).into_iter().flatten();
                                let local = local
                                    .filter_map(|member| self.endpoints.get(member))
                                    .map(|m| &m.spec.ports[..]);
                                let remote = self.remote_members.get(peer).into_iter().flatten();
                                let remote = remote
                                    .filter_map(|ip| self.remote.get(ip))
                                    .map(|r| &r.ports[..]);
                                for ports in local.chain(remote) {
                                    for p in ports.iter().filter(|p| fits(p)) {
                                        let ports = PortRange {
                                            start: p.port,
                                            end: p.port,
                                        };
                                        push(
                                            out,
                                            section.direction,
                                            EntryKey {
                                                peer: *peer,
                                                proto: p.proto,
                                                ports,
                                            },
                                            action.clone(),
                                            from,
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds an entry to a contribution.
fn push(
    out: &mut Vec<Contributed>,
    direction: Direction,
    key: EntryKey,
    action: Action,
    from: &Provenance,
) {
    out.push(Contributed {
        direction,
        key,
        action,
        from: from.clone(),
    });
}

fn l7_policy(l7: &L7Spec, from: &Provenance) -> L7Policy {
    match l7 {
        L7Spec::Http(rules) => L7Policy {
            http: rules
                .iter()
                .map(|r| SourcedHttpRule {
                    rule: r.clone(),
                    from: from.clone(),
                })
                .collect(),
            ..L7Policy::default()
        },
        L7Spec::Dns(rules) => L7Policy {
            dns: rules
                .iter()
                .map(|r| SourcedDnsRule {
                    rule: r.clone(),
                    from: from.clone(),
                })
                .collect(),
            ..L7Policy::default()
        },
    }
}

fn merge_changes(into: &mut Changes, more: Changes) {
    into.endpoints.extend(more.endpoints);
    into.ipcache.upsert.extend(more.ipcache.upsert);
    into.ipcache.remove.extend(more.ipcache.remove);
}

/// Whether `peer` selects identity `id`.
fn peer_matches(
    services: &BTreeMap<(String, String), ServiceRecord>,
    peer: &PeerSelector,
    id: Identity,
    info: &IdentityInfo,
) -> bool {
    match peer {
        PeerSelector::Labels { selector, .. } => selector.matches(&info.labels),
        PeerSelector::Entity(entity) => entity_matches(*entity, id, info),
        PeerSelector::Cidr { net, except } => {
            // The world identity stands for the default routes, so
            // `0.0.0.0/0` selects it; a CIDR identity is selected when its
            // prefix lies inside `net` and outside every exception (each
            // exception has an identity of its own in the ipcache).
            let prefixes: Vec<IpNet> = match &info.kind {
                IdentityKind::Cidr(p) => vec![*p],
                IdentityKind::Reserved if id == WORLD => ["0.0.0.0/0", "::/0"]
                    .iter()
                    .filter_map(|d| d.parse().ok())
                    .collect(),
                _ => Vec::new(),
            };
            prefixes
                .iter()
                .any(|p| net.contains(p) && !except.iter().any(|e| e.contains(p)))
        }
        PeerSelector::Service {
            namespace,
            name,
            selector,
        } => {
            if info.kind != IdentityKind::Endpoint {
                return false;
            }
            services.values().any(|svc| {
                namespace.as_ref().is_none_or(|ns| *ns == svc.namespace)
                    && name.as_ref().is_none_or(|n| *n == svc.name)
                    && selector.as_ref().is_none_or(|sel| {
                        let mut labels = LabelSet::new();
                        for (k, v) in &svc.labels {
                            labels.insert(SOURCE_K8S, k, v);
                        }
                        sel.matches(&labels)
                    })
                    && svc.selector.as_ref().is_some_and(|pods| {
                        Selector::exact(pods)
                            .and(Selector::in_namespace(&svc.namespace))
                            .matches(&info.labels)
                    })
            })
        }
    }
}

/// Cilium's entities
/// (<https://docs.cilium.io/en/stable/policy/language/#entities-based>).
fn entity_matches(entity: Entity, id: Identity, info: &IdentityInfo) -> bool {
    match entity {
        Entity::All => true,
        Entity::None => false,
        // Every CIDR identity is part of the world.
        Entity::World => info.labels.get("world").is_some(),
        Entity::WorldIpv4 => id == WORLD || matches!(&info.kind, IdentityKind::Cidr(IpNet::V4(_))),
        Entity::WorldIpv6 => id == WORLD || matches!(&info.kind, IdentityKind::Cidr(IpNet::V6(_))),
        Entity::Cluster => {
            info.kind == IdentityKind::Endpoint
                || matches!(id, HOST | REMOTE_NODE | HEALTH | INIT | UNMANAGED | INGRESS)
        }
        Entity::Host => id == HOST,
        Entity::RemoteNode => id == REMOTE_NODE,
        Entity::KubeApiserver => id == KUBE_APISERVER,
        Entity::Health => id == HEALTH,
        Entity::Init => id == INIT,
        Entity::Ingress => id == INGRESS,
        Entity::Unmanaged => id == UNMANAGED,
    }
}
