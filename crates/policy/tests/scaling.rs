//! A change costs what it touches: the work the engine reports for one
//! policy delete, add or new identity does not grow with the number of
//! policies held. Counted, not timed (timings are in the benchmark).

use std::collections::BTreeMap;
use std::sync::Arc;

use myelin_policy::{
    Endpoint, EndpointChange, EndpointKey, MemoryStore, PolicyEngine, PolicyKey, PolicyKind,
};

/// Policy `i` of namespace `ns`: selects `app: web`, admits `app: client` on
/// port 80 (a key every policy shares) and opens egress to a CIDR of its own.
fn policy(ns: &str, i: usize) -> myelin_model::Resource {
    let text = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{i}, namespace: {ns}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n  egress:\n  - toCIDR: [10.{}.{}.0/24]\n",
        i / 250,
        i % 250
    );
    let parsed = myelin_model::parse_str("scaling.yaml", &text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    parsed.documents[0].resource.clone()
}

fn pod(ns: &str, name: &str, app: &str, ip: &str) -> Endpoint {
    Endpoint {
        namespace: ns.into(),
        name: name.into(),
        labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        ips: vec![ip.parse().expect("ip")],
        ports: Vec::new(),
        service_account: None,
    }
}

fn key(ns: &str, i: usize) -> PolicyKey {
    PolicyKey {
        kind: PolicyKind::CiliumNetworkPolicy,
        namespace: ns.into(),
        name: format!("p{i}"),
    }
}

/// An engine with `n` policies selecting one web pod, and as many policies
/// in another namespace that select nothing here.
fn engine(n: usize) -> PolicyEngine {
    let mut engine = PolicyEngine::new(Arc::new(MemoryStore::new()), "node1");
    engine
        .upsert_endpoint(pod("default", "client", "client", "10.250.0.1"))
        .expect("client");
    engine
        .upsert_endpoint(pod("default", "web", "web", "10.250.0.2"))
        .expect("web");
    for i in 0..n {
        engine.apply(&policy("default", i)).expect("apply");
        engine.apply(&policy("elsewhere", n + i)).expect("apply");
    }
    engine
}

/// The work of: deleting one policy, adding it back, and a new pod in a
/// namespace with no policies.
fn work_of_changes(n: usize) -> (usize, usize, usize) {
    let mut engine = engine(n);
    let web = EndpointKey::new("default", "web");
    let changes = engine.remove_policy(&key("default", n / 2));
    // The delete reaches the web pod's tables: its CIDR entry goes and the
    // shared port-80 entry loses one rule from its provenance.
    let Some(EndpointChange::Updated {
        ingress, egress, ..
    }) = changes.endpoints.get(&web)
    else {
        panic!("the delete changes the web pod: {changes:?}");
    };
    assert_eq!(egress.remove.len(), 1);
    assert_eq!(ingress.upsert.len(), 1);
    assert_eq!(ingress.upsert[0].value.provenance.len(), n - 1);
    assert_eq!(changes.ipcache.remove.len(), 1);
    let delete = engine.last_change_work();
    engine.apply(&policy("default", n / 2)).expect("apply");
    let add = engine.last_change_work();
    engine
        .upsert_endpoint(pod("quiet", "newcomer", "batch", "10.250.0.3"))
        .expect("pod");
    let pod_added = engine.last_change_work();
    // And the engine still agrees with a recomputation from scratch.
    assert!(engine.resolve_all().is_empty());
    (delete, add, pod_added)
}

#[test]
fn policy_delete_add_and_new_identity_work_does_not_grow_with_policies() {
    let (delete_small, add_small, pod_small) = work_of_changes(20);
    let (delete_large, add_large, pod_large) = work_of_changes(200);
    assert!(delete_small > 0 && add_small > 0 && pod_small > 0);
    assert_eq!(delete_small, delete_large, "delete");
    assert_eq!(pod_small, pod_large, "new pod identity");
    // Adding a policy checks which endpoints it selects (two pods here,
    // whatever the policy count); its CIDR identity is matched against the
    // selectors that contain the prefix only.
    assert_eq!(add_small, add_large, "add");
}

/// The labels of remote identity `id`: `app: remote-<id>`.
fn remote_labels(id: u32) -> myelin_policy::LabelSet {
    let labels = BTreeMap::from([("app".to_string(), format!("remote-{id}"))]);
    let ns = BTreeMap::from([(
        "kubernetes.io/metadata.name".to_string(),
        "default".to_string(),
    )]);
    myelin_policy::LabelSet::for_pod("default", &labels, &ns, None)
}

/// A remote pod of identity `id` at the n-th address of 10.128.0.0/9.
fn remote(n: u32, id: u32) -> myelin_policy::RemoteEndpoint {
    myelin_policy::RemoteEndpoint {
        ip: std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a80_0000 + n)),
        identity: id,
        ports: Vec::new().into(),
        node: format!("node{}", n % 1000).into(),
        namespace: "default".into(),
        pod: format!("pod-{n}").into(),
    }
}

/// The resident memory of this process, in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_remote_pod_of_a_known_identity_costs_the_same_at_any_count() {
    let mut engine = engine(20);
    let work = |engine: &mut PolicyEngine, n: u32| {
        engine
            .upsert_remote_endpoint(remote(n, 300 + n % 100), &remote_labels(300 + n % 100))
            .expect("remote");
        engine.last_change_work()
    };
    for n in 0..100 {
        work(&mut engine, n);
    }
    let early = work(&mut engine, 100);
    for n in 101..5_000 {
        work(&mut engine, n);
    }
    assert_eq!(early, work(&mut engine, 5_000));
    assert!(engine.resolve_all().is_empty());
}

/// 100,000 remote pods of 1,000 identities: how long they take to arrive
/// and what they cost in memory (printed, not asserted: a shared machine).
#[test]
fn one_hundred_thousand_remote_pods() {
    let mut engine = engine(20);
    let labels: Vec<myelin_policy::LabelSet> = (0..1_000).map(|i| remote_labels(300 + i)).collect();
    let before = rss_kib();
    let started = std::time::Instant::now();
    for n in 0..100_000 {
        engine
            .upsert_remote_endpoint(remote(n, 300 + n % 1_000), &labels[(n % 1_000) as usize])
            .expect("remote");
    }
    let elapsed = started.elapsed();
    let grown = rss_kib().saturating_sub(before);
    assert_eq!(engine.remote_endpoints().count(), 100_000);
    assert!(engine.ipcache().len() > 100_000);
    println!(
        "100000 remote pods, 1000 identities: {:.2} s, {} MiB resident more",
        elapsed.as_secs_f64(),
        grown / 1024
    );
}
