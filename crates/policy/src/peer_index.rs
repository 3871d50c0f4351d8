//! Peer selectors indexed by the identities they can match, so that a new
//! identity is checked against the selectors that might select it instead
//! of every selector of every policy.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::labels::{NAMESPACE_LABEL, SOURCE_K8S};
use crate::resolve::{IdentityInfo, IdentityKind};
use crate::rules::{CompiledPolicy, PeerSelector, Peers, PolicyKey, Scope};

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
        }
        self.cidr.retain(|_, set| !set.is_empty());
        self.namespace.retain(|_, set| !set.is_empty());
    }

    /// The selectors that might select an identity (a superset of those
    /// that do).
    pub fn candidates(&self, info: &IdentityInfo) -> Vec<PeerRef> {
        let mut out: Vec<PeerRef> = self.any.iter().cloned().collect();
        match &info.kind {
            IdentityKind::Endpoint => {
                out.extend(self.pods.iter().cloned());
                let ns = info
                    .labels
                    .get(NAMESPACE_LABEL)
                    .filter(|(source, _)| *source == SOURCE_K8S)
                    .and_then(|(_, ns)| self.namespace.get(ns));
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
