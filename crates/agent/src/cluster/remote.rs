//! What the node knows of the rest of the cluster, and the translation of
//! cluster events into policy engine changes: other nodes' endpoints become
//! remote endpoints once their identity's labels are known (an endpoint can
//! arrive before its identity: it waits here), other nodes' addresses
//! become `remote-node`, their pod CIDRs routes to their tunnel endpoint and
//! their observers peers of the Hubble peer service.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use myelin_observe::peer::{PeerMap, PeerNode};
use myelin_policy::labels::SOURCE_K8S;
use myelin_policy::{Changes, Identity, LabelSet, NamedPort, PolicyEngine, Proto, RemoteEndpoint};
use myelin_store::{Endpoint as StoreEndpoint, Node as StoreNode, Update};

use crate::api::{EndpointSpec, NamedPort as ApiNamedPort, Protocol};

use super::ClusterEvent;

/// What one event changed.
#[derive(Debug, Default)]
pub struct Touched {
    /// The policy engine's changes (for the datapath's reconcile).
    pub changes: Changes,
    /// Another node came, changed or left: routes and peers are derived again.
    pub nodes: bool,
    /// Another node's pod came, changed or left: services' backends are
    /// derived again.
    pub endpoints: bool,
    /// The addresses of other nodes' pods whose entry in the engine may have
    /// changed (the proxy's view looks at these again, not at every pod).
    pub addresses: Vec<IpAddr>,
}

/// Another node's endpoint as this node keeps it: what the engine and
/// services' backends need, with the names and port lists that many
/// endpoints share held once (see [`Shared`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Published {
    identity: Identity,
    node: Arc<str>,
    namespace: Arc<str>,
    pod: Arc<str>,
    /// Named TCP and UDP ports.
    ports: Arc<[NamedPort]>,
    ready: bool,
}

impl Published {
    /// The engine's form of the endpoint at `ip`: the same shared names.
    fn remote_endpoint(&self, ip: IpAddr) -> RemoteEndpoint {
        RemoteEndpoint {
            ip,
            identity: self.identity,
            ports: self.ports.clone(),
            node: self.node.clone(),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
        }
    }
}

/// One copy of each value many endpoints hold (node names, namespaces, port
/// lists): 100,000 endpoints of 1,000 nodes hold 1,000 node names. Values no
/// endpoint holds any more are dropped once the set has doubled since the
/// last sweep, so it stays within twice what is in use.
#[derive(Debug)]
struct Shared<T: ?Sized + Ord> {
    values: BTreeSet<Arc<T>>,
    swept_at: usize,
}

impl<T: ?Sized + Ord> Default for Shared<T> {
    fn default() -> Self {
        Self {
            values: BTreeSet::new(),
            swept_at: 0,
        }
    }
}

impl<T: ?Sized + Ord> Shared<T> {
    /// The shared copy of `value`, made from it when there is none.
    fn get<V: AsRef<T> + Into<Arc<T>>>(&mut self, value: V) -> Arc<T> {
        if let Some(shared) = self.values.get(value.as_ref()) {
            return shared.clone();
        }
        if self.values.len() >= 2 * self.swept_at.max(32) {
            self.values.retain(|v| Arc::strong_count(v) > 1);
            self.swept_at = self.values.len();
        }
        let shared: Arc<T> = value.into();
        self.values.insert(shared.clone());
        shared
    }
}

/// The other nodes, their endpoints and the cluster's identities.
#[derive(Debug)]
pub struct RemoteState {
    node: String,
    identities: BTreeMap<Identity, LabelSet>,
    /// Other nodes' endpoints as published, by address.
    endpoints: BTreeMap<IpAddr, Published>,
    /// Their addresses by identity, to find those waiting for an identity.
    by_identity: BTreeMap<Identity, BTreeSet<IpAddr>>,
    /// Other nodes by name.
    nodes: BTreeMap<String, StoreNode>,
    names: Shared<str>,
    port_lists: Shared<[NamedPort]>,
}

impl RemoteState {
    /// The view of node `node` (its own entries are not remote).
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_string(),
            identities: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            by_identity: BTreeMap::new(),
            nodes: BTreeMap::new(),
            names: Shared::default(),
            port_lists: Shared::default(),
        }
    }

    /// Applies one event to this view and to `engine`.
    pub fn apply(&mut self, event: ClusterEvent, engine: &mut PolicyEngine) -> Touched {
        let mut touched = Touched::default();
        match event {
            ClusterEvent::Identity(Update::Upsert(id, labels)) => {
                self.identities.insert(id, labels);
                let waiting: Vec<IpAddr> = self
                    .by_identity
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect();
                for ip in waiting {
                    self.to_engine(ip, engine, &mut touched.changes);
                    touched.addresses.push(ip);
                }
            }
            // Endpoints still carrying it keep the labels the engine knows;
            // the store deletes only identities nobody holds.
            ClusterEvent::Identity(Update::Delete(id)) => {
                self.identities.remove(&id);
            }
            ClusterEvent::Endpoint(Update::Upsert(ip, endpoint)) => {
                if endpoint.node == self.node {
                    return touched;
                }
                let endpoint = self.kept(endpoint);
                let identity = endpoint.identity;
                if let Some(old) = self.endpoints.insert(ip, endpoint) {
                    self.unindex(ip, old.identity);
                }
                self.by_identity.entry(identity).or_default().insert(ip);
                self.to_engine(ip, engine, &mut touched.changes);
                touched.endpoints = true;
                touched.addresses.push(ip);
            }
            ClusterEvent::Endpoint(Update::Delete(ip)) => {
                if let Some(old) = self.endpoints.remove(&ip) {
                    self.unindex(ip, old.identity);
                    merge(&mut touched.changes, engine.remove_remote_endpoint(ip));
                    touched.endpoints = true;
                    touched.addresses.push(ip);
                }
            }
            ClusterEvent::Node(Update::Upsert(name, node)) => {
                if name == self.node {
                    return touched;
                }
                if self.nodes.get(&name) != Some(&node) {
                    let changes = engine.set_remote_node(&name, node.addresses.clone());
                    merge(&mut touched.changes, changes);
                    self.nodes.insert(name, node);
                    touched.nodes = true;
                }
            }
            ClusterEvent::Node(Update::Delete(name)) => {
                if self.nodes.remove(&name).is_some() {
                    merge(&mut touched.changes, engine.remove_remote_node(&name));
                    touched.nodes = true;
                }
            }
            ClusterEvent::Identity(Update::Synced)
            | ClusterEvent::Endpoint(Update::Synced)
            | ClusterEvent::Node(Update::Synced) => {}
        }
        touched
    }

    /// An endpoint as published, in the form kept here.
    fn kept(&mut self, endpoint: StoreEndpoint) -> Published {
        let tcp = endpoint.named_ports.into_iter().map(|p| (p, Proto::Tcp));
        let udp = endpoint
            .named_udp_ports
            .into_iter()
            .map(|p| (p, Proto::Udp));
        let ports: Vec<NamedPort> = tcp
            .chain(udp)
            .map(|((name, port), proto)| NamedPort { name, port, proto })
            .collect();
        Published {
            identity: endpoint.identity,
            node: self.names.get(endpoint.node),
            namespace: self.names.get(endpoint.namespace),
            pod: endpoint.pod.into(),
            ports: self.port_lists.get(ports),
            ready: endpoint.ready,
        }
    }

    fn unindex(&mut self, ip: IpAddr, identity: Identity) {
        if let Some(set) = self.by_identity.get_mut(&identity) {
            set.remove(&ip);
            if set.is_empty() {
                self.by_identity.remove(&identity);
            }
        }
    }

    /// Hands the endpoint at `ip` to the engine when its identity's labels
    /// are known; takes it out while they are not (its identity changed to
    /// one not seen yet).
    fn to_engine(&self, ip: IpAddr, engine: &mut PolicyEngine, changes: &mut Changes) {
        let Some(endpoint) = self.endpoints.get(&ip) else {
            return;
        };
        let Some(labels) = self.identities.get(&endpoint.identity) else {
            merge(changes, engine.remove_remote_endpoint(ip));
            return;
        };
        match engine.upsert_remote_endpoint(endpoint.remote_endpoint(ip), labels) {
            Ok(more) => merge(changes, more),
            Err(error) => tracing::warn!(%error, "cluster store: endpoint ignored"),
        }
    }

    /// Other nodes' pod CIDRs and the tunnel endpoint that reaches each (the
    /// overlay's routes).
    pub fn tunnel_routes(&self) -> BTreeMap<IpNet, IpAddr> {
        self.nodes
            .values()
            .filter_map(|n| Some((n, n.tunnel_endpoint?)))
            .flat_map(|(n, endpoint)| n.pod_cidrs.iter().map(move |cidr| (*cidr, endpoint)))
            .collect()
    }

    /// Other nodes' pods as services' backends: one per pod, with its pod
    /// labels (its identity's `k8s:` labels, which Service selectors match),
    /// addresses, named ports and readiness. Pods whose identity's labels
    /// are not known yet are left out until they are.
    pub fn service_backends(&self) -> Vec<EndpointSpec> {
        let mut pods: BTreeMap<(&str, &str), EndpointSpec> = BTreeMap::new();
        for (ip, endpoint) in &self.endpoints {
            let Some(labels) = self.identities.get(&endpoint.identity) else {
                continue;
            };
            let spec = pods
                .entry((&endpoint.namespace, &endpoint.pod))
                .or_insert_with(|| EndpointSpec {
                    namespace: endpoint.namespace.to_string(),
                    pod: endpoint.pod.to_string(),
                    labels: labels.of_source(SOURCE_K8S),
                    service_account: None,
                    ifname: String::new(),
                    ipv4: None,
                    ipv6: None,
                    mac: None,
                    ports: endpoint
                        .ports
                        .iter()
                        .map(|p| ApiNamedPort {
                            name: Some(p.name.clone()),
                            port: p.port,
                            protocol: match p.proto {
                                Proto::Udp => Protocol::Udp,
                                _ => Protocol::Tcp,
                            },
                        })
                        .collect(),
                    ready: endpoint.ready,
                });
            match ip {
                IpAddr::V4(ip) => spec.ipv4 = Some(*ip),
                IpAddr::V6(ip) => spec.ipv6 = Some(*ip),
            }
            spec.ready &= endpoint.ready;
        }
        pods.into_values().collect()
    }

    /// The observers of the cluster: `own` and every other node that
    /// published one.
    pub fn peers(&self, own: Option<&PeerNode>) -> PeerMap {
        let others = self.nodes.values().filter_map(|n| {
            Some(PeerNode {
                name: n.name.clone(),
                address: n.observer_address.clone()?,
                tls_server_name: None,
            })
        });
        own.cloned()
            .into_iter()
            .chain(others)
            .map(|p| (p.name.clone(), p))
            .collect()
    }

    /// Other nodes' endpoints known, with or without their identity's labels.
    #[cfg(test)]
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }
}

fn merge(into: &mut Changes, more: Changes) {
    into.endpoints.extend(more.endpoints);
    into.ipcache.upsert.extend(more.ipcache.upsert);
    into.ipcache.remove.extend(more.ipcache.remove);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use myelin_policy::identity::REMOTE_NODE;
    use myelin_policy::{EndpointKey, MemoryStore};

    use super::*;
    use crate::testing::{allow, apply, engine_with, pod};

    fn labels(app: &str) -> LabelSet {
        LabelSet::for_pod(
            "default",
            &BTreeMap::from([("app".to_string(), app.to_string())]),
            &BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                "default".to_string(),
            )]),
            None,
        )
    }

    fn endpoint(ip: &str, identity: Identity, node: &str) -> StoreEndpoint {
        StoreEndpoint {
            ip: ip.parse().expect("ip"),
            identity,
            node: node.into(),
            namespace: "default".into(),
            pod: format!("pod-{ip}"),
            named_ports: BTreeMap::from([("http".to_string(), 80)]),
            named_udp_ports: BTreeMap::from([("dns".to_string(), 53)]),
            ready: true,
        }
    }

    fn node(name: &str, address: &str, cidr: &str) -> StoreNode {
        StoreNode {
            name: name.into(),
            addresses: vec![address.parse().expect("ip")],
            pod_cidrs: vec![cidr.parse().expect("cidr")],
            tunnel_endpoint: Some(address.parse().expect("ip")),
            observer_address: Some(format!("{address}:4244")),
        }
    }

    /// Node B: a `web` pod admitting `app: client` on 80.
    fn node_b() -> (RemoteState, PolicyEngine) {
        let mut engine = engine_with(&[(1, pod("web", "web", None, 10))]);
        apply(&mut engine, &allow("web", "client", "web", 80, None));
        (RemoteState::new("node-b"), engine)
    }

    #[test]
    fn an_endpoint_waits_for_its_identity_then_is_a_peer() {
        let (mut state, mut engine) = node_b();
        let ep = endpoint("10.244.7.5", 300, "node-a");
        let touched = state.apply(
            ClusterEvent::Endpoint(Update::Upsert(ep.ip, ep.clone())),
            &mut engine,
        );
        assert!(touched.changes.is_empty(), "no labels yet: {touched:?}");
        assert!(engine.remote_endpoint(ep.ip).is_none());
        let touched = state.apply(
            ClusterEvent::Identity(Update::Upsert(300, labels("client"))),
            &mut engine,
        );
        assert!(
            touched
                .changes
                .endpoints
                .contains_key(&EndpointKey::new("default", "web"))
        );
        assert_eq!(engine.identity_of_ip(ep.ip), 300);
        let remote = engine.remote_endpoint(ep.ip).expect("remote");
        assert_eq!(&*remote.node, "node-a");
        assert_eq!(remote.ports.len(), 2);
        assert!(
            remote
                .ports
                .iter()
                .any(|p| p.name == "dns" && p.proto == Proto::Udp)
        );
        let web = engine
            .policy(&EndpointKey::new("default", "web"))
            .expect("web");
        assert_eq!(
            web.ingress.lookup(300, Proto::Tcp, 80).0,
            myelin_policy::Decision::Allow
        );
        // Gone from the store: gone from the engine.
        let touched = state.apply(ClusterEvent::Endpoint(Update::Delete(ep.ip)), &mut engine);
        assert!(touched.changes.ipcache.remove.contains(&IpNet::from(ep.ip)));
        assert!(engine.remote_endpoint(ep.ip).is_none());
        assert_eq!(state.endpoint_count(), 0);
    }

    #[test]
    fn the_nodes_own_entries_are_not_remote() {
        let mut engine = PolicyEngine::new(Arc::new(MemoryStore::new()), "node-b");
        let mut state = RemoteState::new("node-b");
        state.apply(
            ClusterEvent::Identity(Update::Upsert(300, labels("client"))),
            &mut engine,
        );
        let own = endpoint("10.244.2.5", 300, "node-b");
        let touched = state.apply(
            ClusterEvent::Endpoint(Update::Upsert(own.ip, own)),
            &mut engine,
        );
        assert!(touched.changes.is_empty());
        let touched = state.apply(
            ClusterEvent::Node(Update::Upsert(
                "node-b".into(),
                node("node-b", "192.168.90.2", "10.244.2.0/24"),
            )),
            &mut engine,
        );
        assert!(!touched.nodes);
        assert!(state.tunnel_routes().is_empty());
    }

    #[test]
    fn nodes_give_routes_peers_and_remote_node_addresses() {
        let (mut state, mut engine) = node_b();
        let a = node("node-a", "192.168.90.1", "10.244.1.0/24");
        let touched = state.apply(
            ClusterEvent::Node(Update::Upsert("node-a".into(), a.clone())),
            &mut engine,
        );
        assert!(touched.nodes);
        assert_eq!(
            engine.identity_of_ip("192.168.90.1".parse().expect("ip")),
            REMOTE_NODE
        );
        assert_eq!(
            state.tunnel_routes(),
            BTreeMap::from([(
                "10.244.1.0/24".parse().expect("cidr"),
                "192.168.90.1".parse().expect("ip")
            )])
        );
        let own = PeerNode {
            name: "node-b".into(),
            address: "unix:///run/b.sock".into(),
            tls_server_name: None,
        };
        let peers = state.peers(Some(&own));
        assert_eq!(
            peers.keys().cloned().collect::<Vec<_>>(),
            ["node-a", "node-b"]
        );
        assert_eq!(peers["node-a"].address, "192.168.90.1:4244");
        // The same record again (a resync): nothing to do.
        let touched = state.apply(
            ClusterEvent::Node(Update::Upsert("node-a".into(), a)),
            &mut engine,
        );
        assert!(!touched.nodes && touched.changes.is_empty());
        let touched = state.apply(
            ClusterEvent::Node(Update::Delete("node-a".into())),
            &mut engine,
        );
        assert!(touched.nodes);
        assert!(state.tunnel_routes().is_empty());
        assert_eq!(state.peers(Some(&own)).len(), 1);
    }

    #[test]
    fn an_endpoint_renumbered_to_an_unknown_identity_leaves_until_it_is_known() {
        let (mut state, mut engine) = node_b();
        state.apply(
            ClusterEvent::Identity(Update::Upsert(300, labels("client"))),
            &mut engine,
        );
        let mut ep = endpoint("10.244.7.5", 300, "node-a");
        state.apply(
            ClusterEvent::Endpoint(Update::Upsert(ep.ip, ep.clone())),
            &mut engine,
        );
        assert_eq!(engine.identity_of_ip(ep.ip), 300);
        ep.identity = 301;
        state.apply(
            ClusterEvent::Endpoint(Update::Upsert(ep.ip, ep.clone())),
            &mut engine,
        );
        assert!(engine.remote_endpoint(ep.ip).is_none());
        state.apply(
            ClusterEvent::Identity(Update::Upsert(301, labels("other"))),
            &mut engine,
        );
        assert_eq!(engine.identity_of_ip(ep.ip), 301);
    }
    #[test]
    fn touched_names_the_addresses_whose_pod_may_have_changed() {
        let (mut state, mut engine) = node_b();
        let ep = endpoint("10.244.7.5", 300, "node-a");
        let touched = state.apply(
            ClusterEvent::Endpoint(Update::Upsert(ep.ip, ep.clone())),
            &mut engine,
        );
        assert_eq!(touched.addresses, [ep.ip], "came, waiting for labels");
        let touched = state.apply(
            ClusterEvent::Identity(Update::Upsert(300, labels("client"))),
            &mut engine,
        );
        assert_eq!(touched.addresses, [ep.ip], "its labels came");
        let touched = state.apply(ClusterEvent::Endpoint(Update::Delete(ep.ip)), &mut engine);
        assert_eq!(touched.addresses, [ep.ip], "left");
        let touched = state.apply(ClusterEvent::Endpoint(Update::Delete(ep.ip)), &mut engine);
        assert!(touched.addresses.is_empty(), "not known");
    }

    #[test]
    fn endpoints_share_one_copy_of_their_node_namespace_and_ports() {
        let (mut state, mut engine) = node_b();
        state.apply(
            ClusterEvent::Identity(Update::Upsert(300, labels("client"))),
            &mut engine,
        );
        let (one, two) = (
            endpoint("10.244.7.5", 300, "node-a"),
            endpoint("10.244.7.6", 300, "node-a"),
        );
        for ep in [&one, &two] {
            state.apply(
                ClusterEvent::Endpoint(Update::Upsert(ep.ip, ep.clone())),
                &mut engine,
            );
        }
        let (a, b) = (
            engine.remote_endpoint(one.ip).expect("one"),
            engine.remote_endpoint(two.ip).expect("two"),
        );
        assert!(Arc::ptr_eq(&a.node, &b.node));
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
        assert!(Arc::ptr_eq(&a.ports, &b.ports));
        assert_ne!(a.pod, b.pod);
        // The same record again changes nothing.
        let touched = state.apply(
            ClusterEvent::Endpoint(Update::Upsert(one.ip, one.clone())),
            &mut engine,
        );
        assert!(touched.changes.is_empty());
    }

    #[test]
    fn shared_values_nobody_holds_are_dropped() {
        let mut shared: Shared<str> = Shared::default();
        let kept = shared.get("kept".to_string());
        for n in 0..1000 {
            drop(shared.get(format!("node{n}")));
        }
        assert!(shared.values.len() <= 64, "{}", shared.values.len());
        assert!(Arc::ptr_eq(&kept, &shared.get("kept".to_string())));
    }
}
