//! What the node knows of the rest of the cluster, and the translation of
//! cluster events into policy engine changes: other nodes' endpoints become
//! remote endpoints once their identity's labels are known (an endpoint can
//! arrive before its identity: it waits here), other nodes' addresses
//! become `remote-node`, their pod CIDRs routes to their tunnel endpoint and
//! their observers peers of the Hubble peer service.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

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
}

/// The other nodes, their endpoints and the cluster's identities.
#[derive(Debug)]
pub struct RemoteState {
    node: String,
    identities: BTreeMap<Identity, LabelSet>,
    /// Other nodes' endpoints as published, by address.
    endpoints: BTreeMap<IpAddr, StoreEndpoint>,
    /// Their addresses by identity, to find those waiting for an identity.
    by_identity: BTreeMap<Identity, BTreeSet<IpAddr>>,
    /// Other nodes by name.
    nodes: BTreeMap<String, StoreNode>,
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
                if let Some(old) = self.endpoints.insert(ip, endpoint.clone()) {
                    self.unindex(ip, old.identity);
                }
                self.by_identity
                    .entry(endpoint.identity)
                    .or_default()
                    .insert(ip);
                self.to_engine(ip, engine, &mut touched.changes);
                touched.endpoints = true;
            }
            ClusterEvent::Endpoint(Update::Delete(ip)) => {
                if let Some(old) = self.endpoints.remove(&ip) {
                    self.unindex(ip, old.identity);
                    merge(&mut touched.changes, engine.remove_remote_endpoint(ip));
                    touched.endpoints = true;
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
        match engine.upsert_remote_endpoint(remote_endpoint(endpoint), labels) {
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
        for endpoint in self.endpoints.values() {
            let Some(labels) = self.identities.get(&endpoint.identity) else {
                continue;
            };
            let spec = pods
                .entry((&endpoint.namespace, &endpoint.pod))
                .or_insert_with(|| EndpointSpec {
                    namespace: endpoint.namespace.clone(),
                    pod: endpoint.pod.clone(),
                    labels: labels.of_source(SOURCE_K8S),
                    service_account: None,
                    ifname: String::new(),
                    ipv4: None,
                    ipv6: None,
                    mac: None,
                    ports: remote_endpoint(endpoint)
                        .ports
                        .into_iter()
                        .map(|p| ApiNamedPort {
                            name: Some(p.name),
                            port: p.port,
                            protocol: match p.proto {
                                Proto::Udp => Protocol::Udp,
                                _ => Protocol::Tcp,
                            },
                        })
                        .collect(),
                    ready: endpoint.ready,
                });
            match endpoint.ip {
                IpAddr::V4(ip) => spec.ipv4 = Some(ip),
                IpAddr::V6(ip) => spec.ipv6 = Some(ip),
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

/// A store endpoint as the engine takes it.
fn remote_endpoint(endpoint: &StoreEndpoint) -> RemoteEndpoint {
    let tcp = endpoint.named_ports.iter().map(|p| (p, Proto::Tcp));
    let udp = endpoint.named_udp_ports.iter().map(|p| (p, Proto::Udp));
    RemoteEndpoint {
        ip: endpoint.ip,
        identity: endpoint.identity,
        ports: tcp
            .chain(udp)
            .map(|((name, port), proto)| NamedPort {
                name: name.clone(),
                port: *port,
                proto,
            })
            .collect(),
        node: endpoint.node.clone(),
        namespace: endpoint.namespace.clone(),
        pod: endpoint.pod.clone(),
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
        assert_eq!(remote.node, "node-a");
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
}
