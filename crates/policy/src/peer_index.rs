//! Peer selectors and identities indexed by each other: a new identity is
//! checked against the selectors that might select it, and a new policy's
//! selectors against the identities they might select, instead of every
//! selector of every policy or every identity.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::identity::Identity;
use crate::labels::{NAMESPACE_LABEL, SOURCE_K8S};
use crate::resolve::{IdentityInfo, IdentityKind};
use crate::rules::{CompiledPolicy, PeerSelector, Peers, PolicyKey, Scope};

/// The namespace of an endpoint identity.
fn namespace_of(info: &IdentityInfo) -> Option<&str> {
    info.labels
        .get(NAMESPACE_LABEL)
        .filter(|(source, _)| *source == SOURCE_K8S)
        .map(|(_, ns)| ns)
}

/// A peer selector: policy, rule, section and peer index.
pub(crate) type PeerRef = (PolicyKey, usize, usize, usize);

/// Every peer selector of the policies held, by what it can match.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerIndex {
    /// CIDR selectors by their prefix.
    cidr: BTreeMap<IpNet, BTreeSet<PeerRef>>,
    /// Label selectors confined to one namespace's pods.
    namespace: BTreeMap<String, BTreeSet<PeerRef>>,
    /// Selectors that match pods only (namespace selectors, services).
    pods: BTreeSet<PeerRef>,
    /// The rest (entities, unconfined label selectors): checked always.
    any: BTreeSet<PeerRef>,
}

/// Each peer selector of a policy with its reference.
fn peers(policy: &CompiledPolicy) -> impl Iterator<Item = (PeerRef, &PeerSelector)> {
    policy.rules.iter().enumerate().flat_map(move |(ri, rule)| {
        rule.sections
            .iter()
            .enumerate()
            .flat_map(move |(si, section)| {
                let list: &[PeerSelector] = match &section.peers {
                    Peers::Any => &[],
                    Peers::Some(list) => list,
                };
                list.iter()
                    .enumerate()
                    .map(move |(pi, peer)| ((policy.key.clone(), ri, si, pi), peer))
            })
    })
}

impl PeerIndex {
    fn bucket(&mut self, peer: &PeerSelector) -> &mut BTreeSet<PeerRef> {
        match peer {
            PeerSelector::Cidr { net, .. } => self.cidr.entry(*net).or_default(),
            PeerSelector::Labels {
                scope: Scope::Namespace(ns),
                ..
            } => self.namespace.entry(ns.clone()).or_default(),
            PeerSelector::Labels {
                scope: Scope::Pods, ..
            }
            | PeerSelector::Service { .. } => &mut self.pods,
            PeerSelector::Labels {
                scope: Scope::Any, ..
            }
            | PeerSelector::Entity(_) => &mut self.any,
        }
    }

    /// Indexes a policy's peers.
    pub fn insert(&mut self, policy: &CompiledPolicy) {
        for (r, peer) in peers(policy) {
            self.bucket(peer).insert(r);
        }
    }

    /// Forgets a policy's peers.
    pub fn remove(&mut self, policy: &CompiledPolicy) {
        for (r, peer) in peers(policy) {
            self.bucket(peer).remove(&r);
            match peer {
                PeerSelector::Cidr { net, .. }
                    if self.cidr.get(net).is_some_and(BTreeSet::is_empty) =>
                {
                    self.cidr.remove(net);
                }
                PeerSelector::Labels {
                    scope: Scope::Namespace(ns),
                    ..
                } if self.namespace.get(ns).is_some_and(BTreeSet::is_empty) => {
                    self.namespace.remove(ns);
                }
                _ => {}
            }
        }
    }

    /// The selectors that might select an identity (a superset of those
    /// that do).
    pub fn candidates(&self, info: &IdentityInfo) -> Vec<PeerRef> {
        let mut out: Vec<PeerRef> = self.any.iter().cloned().collect();
        match &info.kind {
            IdentityKind::Endpoint => {
                out.extend(self.pods.iter().cloned());
                let ns = namespace_of(info).and_then(|ns| self.namespace.get(ns));
                out.extend(ns.into_iter().flatten().cloned());
            }
            // A CIDR selector selects the prefixes inside its own: look up
            // every prefix containing this one.
            IdentityKind::Cidr(prefix) => {
                for len in 0..=prefix.prefix_len() {
                    if let Ok(net) = IpNet::new(prefix.network(), len) {
                        out.extend(self.cidr.get(&net.trunc()).into_iter().flatten().cloned());
                    }
                }
            }
            IdentityKind::Reserved => out.extend(self.cidr.values().flatten().cloned()),
        }
        out
    }
}

/// The identities known, by what selects them.
#[derive(Debug, Clone, Default)]
pub(crate) struct IdentityIndex {
    reserved: BTreeSet<Identity>,
    /// Endpoint identities by namespace.
    namespace: BTreeMap<String, BTreeSet<Identity>>,
    /// CIDR identities by prefix.
    cidr: BTreeMap<IpNet, Identity>,
}

impl IdentityIndex {
    /// Indexes an identity.
    pub fn insert(&mut self, id: Identity, info: &IdentityInfo) {
        match &info.kind {
            IdentityKind::Reserved => {
                self.reserved.insert(id);
            }
            IdentityKind::Endpoint => {
                let ns = namespace_of(info).unwrap_or_default().to_string();
                self.namespace.entry(ns).or_default().insert(id);
            }
            IdentityKind::Cidr(prefix) => {
                self.cidr.insert(*prefix, id);
            }
        }
    }

    /// Forgets an identity.
    pub fn remove(&mut self, id: Identity, info: &IdentityInfo) {
        match &info.kind {
            IdentityKind::Reserved => {
                self.reserved.remove(&id);
            }
            IdentityKind::Endpoint => {
                let ns = namespace_of(info).unwrap_or_default();
                if let Some(set) = self.namespace.get_mut(ns) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.namespace.remove(ns);
                    }
                }
            }
            IdentityKind::Cidr(prefix) => {
                self.cidr.remove(prefix);
            }
        }
    }

    /// The identities a selector might select (a superset of those it does).
    pub fn candidates(&self, peer: &PeerSelector) -> Vec<Identity> {
        let pods = || self.namespace.values().flatten().copied();
        match peer {
            // The reserved world identity stands for the default routes.
            PeerSelector::Cidr { net, .. } => {
                let (first, last) = match net {
                    IpNet::V4(n) => (
                        IpNet::V4(ipnet::Ipv4Net::new_assert(n.network(), 0)),
                        IpNet::V4(ipnet::Ipv4Net::new_assert(n.broadcast(), 32)),
                    ),
                    IpNet::V6(n) => (
                        IpNet::V6(ipnet::Ipv6Net::new_assert(n.network(), 0)),
                        IpNet::V6(ipnet::Ipv6Net::new_assert(n.broadcast(), 128)),
                    ),
                };
                let inside = self.cidr.range(first..=last).map(|(_, id)| *id);
                self.reserved.iter().copied().chain(inside).collect()
            }
            PeerSelector::Labels {
                scope: Scope::Namespace(ns),
                ..
            } => self
                .namespace
                .get(ns)
                .into_iter()
                .flatten()
                .copied()
                .collect(),
            PeerSelector::Labels {
                scope: Scope::Pods, ..
            }
            | PeerSelector::Service { .. } => pods().collect(),
            PeerSelector::Labels {
                scope: Scope::Any, ..
            }
            | PeerSelector::Entity(_) => self
                .reserved
                .iter()
                .copied()
                .chain(pods())
                .chain(self.cidr.values().copied())
                .collect(),
        }
    }
}
