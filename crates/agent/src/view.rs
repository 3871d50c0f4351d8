//! What flow enrichment and the agent's events know of the node, as an
//! immutable, indexed snapshot. The state owner builds a new [`View`] after
//! every change and publishes it; readers take the current one (an `Arc`),
//! never wait for the owner, and keep a consistent picture for as long as
//! they hold it. Every look-up is a hash look-up: by address (and, for
//! addresses of no pod, one per ipcache prefix length), by identity, by
//! service frontend, by rule id.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use myelin_policy::{PolicyEngine, Provenance};

use crate::api::EndpointSpec;
use crate::flows::{self, EndpointMeta};
use crate::services::ServiceTable;

/// The ipcache by prefix length, longest first: a longest-prefix match is
/// one hash look-up per length present (at most 33 for IPv4, 129 for IPv6).
#[derive(Debug, Default)]
struct PrefixIndex {
    lengths: Vec<(u8, HashMap<IpNet, u32>)>,
}

impl PrefixIndex {
    fn build<'a>(prefixes: impl Iterator<Item = (&'a IpNet, &'a u32)>) -> Self {
        let mut by_length: std::collections::BTreeMap<u8, HashMap<IpNet, u32>> = Default::default();
        for (net, identity) in prefixes {
            by_length
                .entry(net.prefix_len())
                .or_default()
                .insert(net.trunc(), *identity);
        }
        Self {
            lengths: by_length.into_iter().rev().collect(),
        }
    }

    fn lookup(&self, ip: IpAddr) -> Option<u32> {
        self.lengths.iter().find_map(|(length, nets)| {
            let net = IpNet::new(ip, *length).ok()?.trunc();
            nets.get(&net).copied()
        })
    }
}

/// Addresses and identities: what flows show of either side.
#[derive(Debug, Default)]
struct Addresses {
    /// The pods the engine knows, by address: their endpoint (local id,
    /// identity, labels, names).
    endpoints: HashMap<IpAddr, EndpointMeta>,
    v4: PrefixIndex,
    v6: PrefixIndex,
    /// The labels of every identity the engine knows.
    labels: HashMap<u32, Vec<String>>,
    /// The pods of this node by identity: the pod when one carries it, their
    /// shared workload when several do (identities no one pod or workload
    /// stands for are absent).
    local: HashMap<u32, EndpointMeta>,
    /// The host-side veth of each pod of this node, by endpoint id.
    interfaces: HashMap<u32, String>,
}

impl Addresses {
    fn identity_of(&self, ip: IpAddr) -> u32 {
        let prefixes = if ip.is_ipv4() { &self.v4 } else { &self.v6 };
        prefixes
            .lookup(ip)
            .unwrap_or(myelin_policy::identity::WORLD)
    }

    fn labels(&self, identity: u32) -> Vec<String> {
        self.labels.get(&identity).cloned().unwrap_or_default()
    }

    fn build<'a>(
        engine: &PolicyEngine,
        local: impl Iterator<Item = (u32, &'a EndpointSpec)> + Clone,
    ) -> Self {
        let (v4, v6): (Vec<_>, Vec<_>) = engine
            .ipcache()
            .iter()
            .partition(|(n, _)| n.addr().is_ipv4());
        let mut out = Self {
            v4: PrefixIndex::build(v4.into_iter()),
            v6: PrefixIndex::build(v6.into_iter()),
            labels: engine
                .identities()
                .map(|(id, labels)| (id, labels.to_strings()))
                .collect(),
            ..Self::default()
        };
        // The first local pod of an address names it, as the first engine
        // endpoint does (both in (namespace, name) order).
        let mut local_by_address: HashMap<IpAddr, (u32, &EndpointSpec)> = HashMap::new();
        for (id, spec) in local.clone() {
            out.interfaces.insert(id, spec.ifname.clone());
            for ip in addresses(spec) {
                local_by_address.entry(ip).or_insert((id, spec));
            }
        }
        for policy in engine.policies() {
            let key = &policy.endpoint;
            let Some(endpoint) = engine.endpoint(key) else {
                continue;
            };
            for ip in &endpoint.ips {
                if out.endpoints.contains_key(ip) {
                    continue;
                }
                let identity = out.identity_of(*ip);
                let local = local_by_address.get(ip);
                let meta = EndpointMeta {
                    id: local.map_or(0, |(id, _)| *id),
                    identity,
                    namespace: key.namespace.clone(),
                    pod: key.name.clone(),
                    labels: out.labels(identity),
                    workload: local.and_then(|(_, s)| flows::workload_of(&s.pod, &s.labels)),
                };
                out.endpoints.insert(*ip, meta);
            }
        }
        // Pods of other nodes: named in flows and ipcache events as Hubble
        // names them; never local.
        for remote in engine.remote_endpoints() {
            if out.endpoints.contains_key(&remote.ip) {
                continue;
            }
            let identity = out.identity_of(remote.ip);
            let meta = EndpointMeta {
                identity,
                namespace: remote.namespace.to_string(),
                pod: remote.pod.to_string(),
                labels: out.labels(identity),
                ..EndpointMeta::default()
            };
            out.endpoints.insert(remote.ip, meta);
        }
        let mut by_identity: HashMap<u32, Vec<EndpointMeta>> = HashMap::new();
        for (_, spec) in local {
            let Some(ip) = addresses(spec).next() else {
                continue;
            };
            let meta = out.endpoint(ip);
            by_identity.entry(meta.identity).or_default().push(meta);
        }
        for (identity, metas) in by_identity {
            let first = metas[0].clone();
            let shared = metas
                .iter()
                .all(|m| m.workload.is_some() && m.workload == first.workload);
            if metas.len() == 1 {
                out.local.insert(identity, first);
            } else if shared {
                let workload = EndpointMeta {
                    id: 0,
                    pod: String::new(),
                    ..first
                };
                out.local.insert(identity, workload);
            }
        }
        out
    }

    fn endpoint(&self, ip: IpAddr) -> EndpointMeta {
        if let Some(meta) = self.endpoints.get(&ip) {
            return meta.clone();
        }
        let identity = self.identity_of(ip);
        EndpointMeta {
            identity,
            labels: self.labels(identity),
            ..EndpointMeta::default()
        }
    }
}

/// A pod's addresses, IPv4 first.
fn addresses(spec: &EndpointSpec) -> impl Iterator<Item = IpAddr> {
    [spec.ipv4.map(IpAddr::V4), spec.ipv6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
}

/// One published state of the node. Its parts are shared between views: a
/// change rebuilds only the parts it touched.
#[derive(Debug, Clone, Default)]
pub struct View {
    addresses: Arc<Addresses>,
    /// (namespace, name) by frontend (cluster IP and port).
    services: Arc<HashMap<SocketAddr, (String, String)>>,
    /// Policy rules by id: id `n` at `n - 1`.
    rules: Arc<Vec<Provenance>>,
    /// This node's labels, `key=value` (the engine knows the node's name).
    node_labels: Arc<Vec<String>>,
}

impl View {
    /// This view with the addresses and identities of `engine` and the
    /// node's pods `local` (endpoint id and spec, in (namespace, pod) order).
    pub fn with_addresses<'a>(
        &self,
        engine: &PolicyEngine,
        local: impl Iterator<Item = (u32, &'a EndpointSpec)> + Clone,
    ) -> Self {
        Self {
            addresses: Arc::new(Addresses::build(engine, local)),
            node_labels: Arc::new(flows::node_labels(engine.node_name())),
            ..self.clone()
        }
    }

    /// This view with the services' frontends.
    pub fn with_services(&self, services: &ServiceTable) -> Self {
        let mut frontends = HashMap::new();
        // The first service of a frontend names it, in (namespace, name) order.
        for service in services.values() {
            for ip in &service.cluster_ips {
                for port in &service.ports {
                    frontends
                        .entry(SocketAddr::new(*ip, port.port))
                        .or_insert_with(|| (service.namespace.clone(), service.name.clone()));
                }
            }
        }
        Self {
            services: Arc::new(frontends),
            ..self.clone()
        }
    }

    /// This view with the rules numbered so far (ids only grow).
    pub fn with_rules(&self, rules: &[Provenance]) -> Self {
        Self {
            rules: Arc::new(rules.to_vec()),
            ..self.clone()
        }
    }

    /// How many rules this view numbers.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Whether `ip` is a pod of this node.
    pub fn is_local(&self, ip: IpAddr) -> bool {
        self.addresses.endpoints.get(&ip).is_some_and(|m| m.id != 0)
    }

    /// The pod (namespace, name) that owns `ip`, local or not.
    pub fn pod_of(&self, ip: IpAddr) -> Option<(&str, &str)> {
        self.addresses
            .endpoints
            .get(&ip)
            .map(|m| (m.namespace.as_str(), m.pod.as_str()))
    }
}

impl flows::FlowContext for View {
    /// What the node knows of an address: a local pod, a pod elsewhere, or
    /// a reserved identity such as world.
    fn endpoint(&self, ip: IpAddr) -> EndpointMeta {
        self.addresses.endpoint(ip)
    }

    fn rule(&self, id: u32) -> Option<Provenance> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        self.rules.get(index).cloned()
    }

    fn service(&self, frontend: SocketAddr) -> Option<(String, String)> {
        self.services.get(&frontend).cloned()
    }

    fn identity_labels(&self, identity: u32) -> Vec<String> {
        self.addresses.labels(identity)
    }

    fn local_identity(&self, identity: u32) -> Option<EndpointMeta> {
        self.addresses.local.get(&identity).cloned()
    }

    fn interface_name(&self, endpoint_id: u32) -> Option<String> {
        self.addresses.interfaces.get(&endpoint_id).cloned()
    }

    fn node_labels(&self) -> Vec<String> {
        self.node_labels.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::FlowContext as _;
    use crate::testing::{engine_with, identity, pod, service};
    use std::collections::BTreeMap;

    fn view_of(engine: &PolicyEngine, pods: &[(u32, EndpointSpec)]) -> View {
        View::default().with_addresses(engine, pods.iter().map(|(id, s)| (*id, s)))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn the_node_labels_and_the_pods_veths_are_known() {
        let pods = [(3, pod("deathstar-5b7-x1", "deathstar", Some("5b7"), 2))];
        let view = view_of(&engine_with(&pods), &pods);
        assert!(
            view.node_labels()
                .contains(&"kubernetes.io/hostname=node-a".to_string()),
            "{:?}",
            view.node_labels()
        );
        assert_eq!(view.interface_name(3).as_deref(), Some("veth2"));
        assert_eq!(view.interface_name(0), None);
    }

    #[test]
    fn addresses_name_pods_and_their_identity_in_both_families() {
        let pods = [
            (3, pod("deathstar-5b7-x1", "deathstar", Some("5b7"), 2)),
            (7, pod("tiefighter", "tiefighter", None, 4)),
        ];
        let engine = engine_with(&pods);
        let view = view_of(&engine, &pods);
        let deathstar = identity(&engine, "deathstar-5b7-x1");
        for address in ["10.244.1.2", "fd00:10:244:1::2"] {
            let meta = view.endpoint(ip(address));
            assert_eq!(meta.id, 3, "{address}");
            assert_eq!(meta.identity, deathstar);
            assert_eq!(meta.pod, "deathstar-5b7-x1");
            assert_eq!(meta.workload.as_deref(), Some("deathstar"));
            assert!(meta.labels.contains(&"k8s:app=deathstar".to_string()));
        }
        assert!(view.is_local(ip("10.244.1.4")));
        assert_eq!(
            view.pod_of(ip("10.244.1.4")),
            Some(("default", "tiefighter"))
        );
        // An address of no pod: the longest prefix of the ipcache (world).
        let outside = view.endpoint(ip("192.0.2.1"));
        assert_eq!(outside.identity, myelin_policy::identity::WORLD);
        assert_eq!(outside.id, 0);
        let world = engine
            .identity_labels(myelin_policy::identity::WORLD)
            .map(|l| l.to_strings());
        assert_eq!(Some(outside.labels), world);
        assert!(!view.is_local(ip("192.0.2.1")));
    }

    #[test]
    fn pods_of_other_nodes_are_named_but_not_local() {
        let pods = [(3, pod("web", "web", None, 2))];
        let mut engine = engine_with(&pods);
        let labels = myelin_policy::LabelSet::for_pod(
            "default",
            &BTreeMap::from([("app".to_string(), "client".to_string())]),
            &BTreeMap::new(),
            None,
        );
        let remote = myelin_policy::RemoteEndpoint {
            ip: ip("10.244.7.5"),
            identity: 300,
            ports: Vec::new().into(),
            node: "node-b".into(),
            namespace: "default".into(),
            pod: "client-1".into(),
        };
        engine
            .upsert_remote_endpoint(remote, &labels)
            .expect("remote");
        let view = view_of(&engine, &pods);
        let meta = view.endpoint(ip("10.244.7.5"));
        assert_eq!((meta.id, meta.identity), (0, 300));
        assert_eq!(meta.pod, "client-1");
        assert!(meta.labels.contains(&"k8s:app=client".to_string()));
        assert!(!view.is_local(ip("10.244.7.5")));
        assert_eq!(view.pod_of(ip("10.244.7.5")), Some(("default", "client-1")));
    }

    #[test]
    fn local_identity_is_the_pod_or_the_shared_workload() {
        let pods = [
            (1, pod("web-5b7-a", "web", Some("5b7"), 2)),
            (2, pod("web-5b7-b", "web", Some("5b7"), 3)),
            (3, pod("db", "db", None, 4)),
            (4, pod("cache-1", "cache", None, 5)),
            (5, pod("cache-2", "cache", None, 6)),
        ];
        let engine = engine_with(&pods);
        let view = view_of(&engine, &pods);
        let web = view
            .local_identity(identity(&engine, "web-5b7-a"))
            .expect("workload");
        assert_eq!((web.id, web.pod.as_str()), (0, ""));
        assert_eq!(web.workload.as_deref(), Some("web"));
        let db = view.local_identity(identity(&engine, "db")).expect("pod");
        assert_eq!((db.id, db.pod.as_str()), (3, "db"));
        // Two pods of no common workload: neither stands for the identity.
        assert_eq!(view.local_identity(identity(&engine, "cache-1")), None);
        assert_eq!(view.local_identity(999_999), None);
    }

    #[test]
    fn frontends_name_their_service_and_rules_their_provenance() {
        let mut services = ServiceTable::new();
        services.insert(
            ("default".into(), "deathstar".into()),
            service("deathstar", vec![ip("10.96.0.10"), ip("fd00:10:96::a")]),
        );
        let provenance = Provenance {
            policy: myelin_policy::PolicyKey {
                kind: myelin_policy::PolicyKind::CiliumNetworkPolicy,
                namespace: "default".into(),
                name: "rule1".into(),
            },
            rule: "spec.ingress[0]".into(),
        };
        let view = View::default()
            .with_services(&services)
            .with_rules(std::slice::from_ref(&provenance));
        let named = Some(("default".to_string(), "deathstar".to_string()));
        assert_eq!(view.service("10.96.0.10:80".parse().expect("addr")), named);
        assert_eq!(
            view.service("[fd00:10:96::a]:80".parse().expect("addr")),
            named
        );
        assert_eq!(view.service("10.96.0.10:81".parse().expect("addr")), None);
        assert_eq!(view.rule(1), Some(provenance));
        assert_eq!((view.rule(0), view.rule(2)), (None, None));
        assert_eq!(view.rule_count(), 1);
    }

    #[test]
    fn a_change_publishes_a_new_view_and_an_old_one_stays_as_it_was() {
        let first = [(1, pod("xwing", "xwing", None, 2))];
        let engine = engine_with(&first);
        let (publish, views) = tokio::sync::watch::channel(Arc::new(view_of(&engine, &first)));
        let held = views.borrow().clone();
        // The pod goes and another takes its address.
        let second = [(2, pod("ywing", "ywing", None, 2))];
        let engine = engine_with(&second);
        publish.send_replace(Arc::new(view_of(&engine, &second)));
        assert!(views.has_changed().expect("publisher alive"));
        let current = views.borrow().clone();
        assert_eq!(current.endpoint(ip("10.244.1.2")).pod, "ywing");
        assert_eq!(current.endpoint(ip("10.244.1.2")).id, 2);
        // The reader still holding the old view sees the old pod, whole.
        let old = held.endpoint(ip("10.244.1.2"));
        assert_eq!((old.id, old.pod.as_str()), (1, "xwing"));
        assert_eq!(old.identity, held.endpoint(ip("fd00:10:244:1::2")).identity);
        assert!(old.labels.contains(&"k8s:app=xwing".to_string()));
    }

    #[test]
    fn longest_prefix_wins() {
        let nets: BTreeMap<IpNet, u32> = [
            ("0.0.0.0/0", 2),
            ("10.0.0.0/8", 16_777_217),
            ("10.1.0.0/16", 16_777_218),
            ("10.1.2.3/32", 300),
        ]
        .into_iter()
        .map(|(n, id)| (n.parse().expect("net"), id))
        .collect();
        let index = PrefixIndex::build(nets.iter());
        assert_eq!(index.lookup(ip("10.1.2.3")), Some(300));
        assert_eq!(index.lookup(ip("10.1.9.9")), Some(16_777_218));
        assert_eq!(index.lookup(ip("10.9.9.9")), Some(16_777_217));
        assert_eq!(index.lookup(ip("192.0.2.1")), Some(2));
    }

    /// The look-ups flow enrichment made before views: scans of the
    /// engine's ipcache and endpoints, of the node's pods and services.
    struct Scans<'a> {
        engine: &'a PolicyEngine,
        pods: &'a [(u32, EndpointSpec)],
        services: &'a ServiceTable,
    }

    impl flows::FlowContext for Scans<'_> {
        fn endpoint(&self, ip: IpAddr) -> EndpointMeta {
            let identity = self.engine.identity_of_ip(ip);
            let labels = self.identity_labels(identity);
            let Some(key) = self.engine.endpoint_of_ip(ip) else {
                return EndpointMeta {
                    identity,
                    labels,
                    ..EndpointMeta::default()
                };
            };
            let local = self
                .pods
                .iter()
                .find(|(_, s)| addresses(s).any(|a| a == ip));
            EndpointMeta {
                id: local.map_or(0, |(id, _)| *id),
                identity,
                workload: local.and_then(|(_, s)| flows::workload_of(&s.pod, &s.labels)),
                namespace: key.namespace,
                pod: key.name,
                labels,
            }
        }
        fn rule(&self, _: u32) -> Option<Provenance> {
            None
        }
        fn service(&self, frontend: SocketAddr) -> Option<(String, String)> {
            self.services
                .values()
                .find(|s| {
                    s.cluster_ips.contains(&frontend.ip())
                        && s.ports.iter().any(|p| p.port == frontend.port())
                })
                .map(|s| (s.namespace.clone(), s.name.clone()))
        }
        fn identity_labels(&self, identity: u32) -> Vec<String> {
            self.engine
                .identity_labels(identity)
                .map(|l| l.to_strings())
                .unwrap_or_default()
        }
        fn local_identity(&self, _: u32) -> Option<EndpointMeta> {
            None
        }
        fn interface_name(&self, endpoint_id: u32) -> Option<String> {
            self.pods
                .iter()
                .find(|(id, _)| *id == endpoint_id)
                .map(|(_, s)| s.ifname.clone())
        }
        fn node_labels(&self) -> Vec<String> {
            Vec::new()
        }
    }

    /// Prints the cost of enriching one kernel event (`cargo test -p
    /// myelin-agent --release --lib enrichment_cost -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement: prints figures, asserts none"]
    fn enrichment_cost() {
        let pods: Vec<(u32, EndpointSpec)> = (1..=200u8)
            .map(|i| {
                (
                    u32::from(i),
                    pod(&format!("pod-{i}"), &format!("app-{}", i % 20), None, i),
                )
            })
            .collect();
        let engine = engine_with(&pods);
        let mut services = ServiceTable::new();
        for i in 0..100u8 {
            services.insert(
                ("default".into(), format!("svc-{i}")),
                service(&format!("svc-{i}"), vec![IpAddr::from([10, 96, 0, i])]),
            );
        }
        let view = view_of(&engine, &pods).with_services(&services);
        let scans = Scans {
            engine: &engine,
            pods: &pods,
            services: &services,
        };
        let clock = flows::KernelClock::now();
        let events: Vec<myelin_common::TraceEvent> = (0..10_000u32)
            .map(|n| {
                let mut event = flows::tcp_to_endpoint([0; 4], [0; 4]);
                let byte = |k: u32| u8::try_from(k % 200 + 1).unwrap_or(1);
                event.source[..4].copy_from_slice(&[10, 244, 1, byte(n)]);
                event.destination[..4].copy_from_slice(&[10, 244, 1, byte(n * 7 + 3)]);
                event
            })
            .collect();
        let measure = |name: &str, context: &dyn Fn(&myelin_common::TraceEvent) -> bool| {
            let start = std::time::Instant::now();
            let made = events.iter().filter(|e| context(e)).count();
            let per_event = start.elapsed() / u32::try_from(events.len()).unwrap_or(1);
            println!("{name}: {per_event:?} per event ({made} flows)");
        };
        measure("scans (before)", &|e| {
            flows::kernel_flow(e, &clock, &scans).is_some()
        });
        measure("view (after)", &|e| {
            flows::kernel_flow(e, &clock, &view).is_some()
        });
    }
}
