//! Property tests: selector matching agrees with Kubernetes semantics, and
//! incremental updates give the same tables as a full recomputation.

use std::collections::BTreeMap;
use std::sync::Arc;

use myelin_model::meta::{LabelSelector, LabelSelectorRequirement, SelectorOperator};
use myelin_policy::{
    Changes, Endpoint, EndpointChange, EndpointKey, EntryKey, EntryValue, LabelSet, MemoryStore,
    PolicyEngine, Selector,
};
use proptest::prelude::*;

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["a", "b", "c"]),
        prop::sample::select(vec!["x", "y"]),
        0..3,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    let op = prop::sample::select(vec![
        SelectorOperator::In,
        SelectorOperator::NotIn,
        SelectorOperator::Exists,
        SelectorOperator::DoesNotExist,
    ]);
    let req = (
        prop::sample::select(vec!["a", "b", "c"]),
        op,
        prop::collection::vec(prop::sample::select(vec!["x", "y"]), 1..3),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement {
            key: key.to_string(),
            operator,
            values: match operator {
                SelectorOperator::In | SelectorOperator::NotIn => {
                    values.iter().map(|v| v.to_string()).collect()
                }
                _ => Vec::new(),
            },
        });
    (labels(), prop::collection::vec(req, 0..3)).prop_map(|(match_labels, match_expressions)| {
        LabelSelector {
            match_labels,
            match_expressions,
        }
    })
}

proptest! {
    /// https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors :
    /// a pod selector over a pod's identity labels matches exactly when the
    /// plain selector matches the pod's labels; a Cilium selector without
    /// sources (read as `any`) does too.
    #[test]
    fn selectors_match_like_kubernetes(sel in selector(), pod in labels()) {
        let identity = LabelSet::for_pod("default", &pod, &BTreeMap::new(), None);
        let expected = sel.matches(&pod);
        prop_assert_eq!(Selector::pods(&sel).matches(&identity), expected);
        prop_assert_eq!(Selector::cilium(&sel).matches(&identity), expected);
        let sourced = LabelSelector {
            match_labels: sel.match_labels.iter().map(|(k, v)| (format!("k8s:{k}"), v.clone())).collect(),
            match_expressions: sel.match_expressions.clone(),
        };
        prop_assert_eq!(Selector::cilium(&sourced).matches(&identity), expected);
    }
}

/// A pool of policies the operations pick from.
const POLICIES: &[&str] = &[
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p0}\nspec:\n  endpointSelector: {matchLabels: {a: x}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {b: y}}]\n    toPorts: [{ports: [{port: http}]}]\n",
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p1}\nspec:\n  endpointSelector: {}\n  egress:\n  - toEndpoints: [{matchExpressions: [{key: c, operator: Exists}]}]\n    toPorts: [{ports: [{port: http, protocol: TCP}]}]\n  - toCIDRSet: [{cidr: 172.16.0.0/12, except: [172.20.0.0/16]}]\n",
    "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p2}\nspec:\n  endpointSelector: {matchLabels: {b: x}}\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {a: y}}]\n  ingress:\n  - fromEntities: [cluster]\n",
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p3}\nspec:\n  podSelector: {matchLabels: {c: x}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {a: x}}}, {ipBlock: {cidr: 10.9.0.0/16}}]\n    ports: [{port: 80}]\n",
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p0}\nspec:\n  endpointSelector: {matchLabels: {c: y}}\n  egress:\n  - toCIDR: [10.9.1.0/24]\n",
    // L7 rules of two policies on one key merge; an overlapping allow sets allow_all.
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: l7a}\nspec:\n  endpointSelector: {matchLabels: {a: x}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {b: y}}]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{method: GET}]}}]\n",
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: l7b}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{matchLabels: {b: y}}]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{method: POST}]}}]\n  - fromEndpoints: [{}]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n",
    // A deny of every peer on one port covers allows and redirects there; it leaves no default deny.
    "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: deny80}\nspec:\n  endpointSelector: {matchExpressions: [{key: b, operator: Exists}]}\n  enableDefaultDeny: {ingress: false, egress: false}\n  ingressDeny:\n  - toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n",
    // A deny of one peer on every port, and the same CIDR as p4 (a shared CIDR identity).
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: denyb}\nspec:\n  endpointSelector: {}\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {b: y}}]\n  egress:\n  - toCIDR: [10.9.1.0/24]\n    toPorts: [{ports: [{port: http}]}]\n",
];

#[derive(Debug, Clone)]
enum Op {
    Apply(usize),
    Remove(usize),
    Pod(usize, BTreeMap<String, String>, bool),
    Delete(usize),
    /// A pod of another node comes or changes (labels, named port).
    Remote(usize, BTreeMap<String, String>, bool),
    RemoteGone(usize),
}

/// One endpoint as the diffs describe it: ingress and egress enforced,
/// ingress and egress entries.
type MirroredTables = (
    bool,
    bool,
    BTreeMap<EntryKey, EntryValue>,
    BTreeMap<EntryKey, EntryValue>,
);

/// What a consumer of the diffs (the agent) holds: each endpoint's tables
/// and the ipcache, built from [`Changes`] alone.
#[derive(Debug, Default)]
struct Mirror {
    tables: BTreeMap<EndpointKey, MirroredTables>,
    ipcache: BTreeMap<ipnet::IpNet, myelin_policy::identity::Identity>,
}

impl Mirror {
    fn apply(&mut self, changes: &Changes) {
        for (key, change) in &changes.endpoints {
            match change {
                EndpointChange::Removed => {
                    self.tables.remove(key);
                }
                EndpointChange::Updated {
                    ingress, egress, ..
                } => {
                    let t = self.tables.entry(key.clone()).or_default();
                    t.0 = ingress.enforced;
                    t.1 = egress.enforced;
                    for (diff, map) in [(ingress, &mut t.2), (egress, &mut t.3)] {
                        for k in &diff.remove {
                            map.remove(k);
                        }
                        for e in &diff.upsert {
                            map.insert(e.key, e.value.clone());
                        }
                    }
                }
            }
        }
        for p in &changes.ipcache.remove {
            self.ipcache.remove(p);
        }
        self.ipcache.extend(changes.ipcache.upsert.iter().copied());
    }

    fn matches(&self, engine: &PolicyEngine) -> bool {
        let held: BTreeMap<_, _> = engine
            .policies()
            .map(|p| {
                (
                    p.endpoint.clone(),
                    (
                        p.ingress.enforced,
                        p.egress.enforced,
                        p.ingress.entries.clone(),
                        p.egress.entries.clone(),
                    ),
                )
            })
            .collect();
        held == self.tables && engine.ipcache() == &self.ipcache
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..POLICIES.len()).prop_map(Op::Apply),
        (0..POLICIES.len()).prop_map(Op::Remove),
        (0..6usize, labels(), any::<bool>()).prop_map(|(i, l, p)| Op::Pod(i, l, p)),
        (0..6usize).prop_map(Op::Delete),
        (0..4usize, labels(), any::<bool>()).prop_map(|(i, l, p)| Op::Remote(i, l, p)),
        (0..4usize).prop_map(Op::RemoteGone),
    ]
}

fn pod(i: usize, labels: BTreeMap<String, String>, named: bool) -> Endpoint {
    Endpoint {
        namespace: "default".into(),
        name: format!("pod{i}"),
        labels,
        ips: vec![format!("10.1.0.{}", i + 1).parse().expect("ip")],
        ports: if named {
            vec![myelin_policy::NamedPort {
                name: "http".into(),
                port: 8000 + i as u16,
                proto: myelin_policy::Proto::Tcp,
            }]
        } else {
            Vec::new()
        },
        service_account: None,
    }
}

/// Remote pod `i`, numbered by another node's allocator on the shared store.
fn remote(
    allocator: &mut myelin_policy::Allocator,
    i: usize,
    labels: BTreeMap<String, String>,
    named: bool,
) -> (myelin_policy::RemoteEndpoint, myelin_policy::LabelSet) {
    let labels = myelin_policy::LabelSet::for_pod("default", &labels, &BTreeMap::new(), None);
    let local = pod(i, BTreeMap::new(), named);
    let endpoint = myelin_policy::RemoteEndpoint {
        ip: format!("10.2.0.{}", i + 1).parse().expect("ip"),
        identity: allocator.allocate(&labels).expect("identity"),
        ports: local.ports.into(),
        node: "node2".into(),
        namespace: "default".into(),
        pod: format!("remote{i}").into(),
    };
    (endpoint, labels)
}

fn resource(i: usize) -> myelin_model::Resource {
    let parsed = myelin_model::parse_str("pool.yaml", POLICIES[i]);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    parsed.documents[0].resource.clone()
}

/// An identity by its labels, so engines that numbered CIDR identities
/// differently compare equal.
fn name(engine: &PolicyEngine, id: myelin_policy::identity::Identity) -> String {
    if id == 0 {
        "any".to_string()
    } else {
        engine
            .identity_labels(id)
            .map(|l| l.to_string())
            .unwrap_or_default()
    }
}

/// The ipcache with identities named by their labels.
fn canonical_ipcache(engine: &PolicyEngine) -> BTreeMap<ipnet::IpNet, String> {
    engine
        .ipcache()
        .iter()
        .map(|(p, id)| (*p, name(engine, *id)))
        .collect()
}

/// Every endpoint's tables with peer identities replaced by their labels.
fn canonical(engine: &PolicyEngine) -> BTreeMap<EndpointKey, String> {
    engine
        .policies()
        .map(|p| {
            let name = |id| name(engine, id);
            let mut text = format!(
                "{} {}|{}\n",
                name(p.identity),
                p.ingress.enforced,
                p.egress.enforced
            );
            for (dir, table) in [("in", &p.ingress), ("out", &p.egress)] {
                let mut lines: Vec<String> = table
                    .entries
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{dir} {} {} {} {:?} {:?}",
                            name(k.peer),
                            k.proto,
                            k.ports,
                            v.action,
                            v.provenance
                        )
                    })
                    .collect();
                lines.sort();
                text.push_str(&lines.join("\n"));
            }
            (p.endpoint.clone(), text)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Incremental updates (policy adds, replaces and deletes, pod changes)
    /// equal a full recomputation from the final state; after every step the
    /// engine agrees with its own recomputation from scratch, and the diffs
    /// it returned, replayed, give its tables and ipcache.
    #[test]
    fn incremental_equals_full(ops in prop::collection::vec(op(), 1..40)) {
        let store = Arc::new(MemoryStore::new());
        let mut incremental = PolicyEngine::new(store.clone(), "node1");
        let mut mirror = Mirror { ipcache: incremental.ipcache().clone(), ..Mirror::default() };
        let mut applied: BTreeMap<usize, myelin_model::Resource> = BTreeMap::new();
        let mut pods: BTreeMap<usize, Endpoint> = BTreeMap::new();
        let mut node2 = myelin_policy::Allocator::new(store.clone(), "node2");
        let mut remotes: BTreeMap<usize, (myelin_policy::RemoteEndpoint, myelin_policy::LabelSet)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Apply(i) => {
                    let r = resource(i);
                    // Pool entries 0 and 4 share a name: the later replaces the earlier.
                    applied.retain(|_, old| old.key() != r.key());
                    mirror.apply(&incremental.apply(&r).expect("apply"));
                    applied.insert(i, r);
                }
                Op::Remove(i) => {
                    let r = resource(i);
                    if applied.values().any(|a| a.key() == r.key()) {
                        let key = myelin_policy::PolicyKey {
                            kind: match &r {
                                myelin_model::Resource::NetworkPolicy(_) => myelin_policy::PolicyKind::NetworkPolicy,
                                myelin_model::Resource::CiliumClusterwideNetworkPolicy(_) => myelin_policy::PolicyKind::CiliumClusterwideNetworkPolicy,
                                _ => myelin_policy::PolicyKind::CiliumNetworkPolicy,
                            },
                            namespace: if matches!(r, myelin_model::Resource::CiliumClusterwideNetworkPolicy(_)) { String::new() } else { "default".into() },
                            name: r.key().name,
                        };
                        mirror.apply(&incremental.remove_policy(&key));
                        applied.retain(|_, old| old.key() != r.key());
                    }
                }
                Op::Pod(i, labels, named) => {
                    let p = pod(i, labels, named);
                    mirror.apply(&incremental.upsert_endpoint(p.clone()).expect("endpoint"));
                    pods.insert(i, p);
                }
                Op::Delete(i) => {
                    mirror.apply(&incremental.remove_endpoint(&EndpointKey::new("default", &format!("pod{i}"))));
                    pods.remove(&i);
                }
                Op::Remote(i, labels, named) => {
                    let (r, labels) = remote(&mut node2, i, labels, named);
                    mirror.apply(&incremental.upsert_remote_endpoint(r.clone(), &labels).expect("remote"));
                    remotes.insert(i, (r, labels));
                }
                Op::RemoteGone(i) => {
                    if let Some((r, _)) = remotes.remove(&i) {
                        mirror.apply(&incremental.remove_remote_endpoint(r.ip));
                    }
                }
            }
            prop_assert!(mirror.matches(&incremental));
            prop_assert!(incremental.clone().resolve_all().is_empty());
        }
        let mut full = PolicyEngine::new(store, "node1");
        for p in pods.values() {
            full.upsert_endpoint(p.clone()).expect("endpoint");
        }
        for (r, labels) in remotes.values() {
            full.upsert_remote_endpoint(r.clone(), labels).expect("remote");
        }
        for r in applied.values() {
            full.apply(r).expect("apply");
        }
        prop_assert_eq!(canonical(&incremental), canonical(&full));
        prop_assert_eq!(canonical_ipcache(&incremental), canonical_ipcache(&full));
        // And the incremental engine agrees with its own full recomputation.
        prop_assert!(incremental.resolve_all().is_empty());
    }
}
