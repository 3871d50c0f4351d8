//! Star Wars flows with L7, identities, incremental diffs, explain and
//! renderings.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{apply, cluster, endpoint, explain_flow, query, verdict};
use myelin_policy::identity::{self, CLUSTER_MAX, CLUSTER_MIN, LOCAL_SCOPE};
use myelin_policy::{
    Action, Allocator, Decision, Direction, EndpointChange, EndpointKey, FileStore, IdentityStore,
    LabelSet, MemoryStore, PolicyKey, PolicyKind, PolicyView, Proto, Verdict, explain,
};

const L7: &str = include_str!("../../../examples/starwars/sw_l3_l4_l7_policy.yaml");

fn deathstar() -> EndpointKey {
    EndpointKey::new("default", "deathstar")
}

// https://docs.cilium.io/en/stable/gettingstarted/demo/#apply-and-test-http-aware-l7-policy
#[test]
fn starwars_l7_policy_is_carried_to_the_proxy() {
    let engine = cluster(L7);
    let policy = engine.policy(&deathstar()).expect("resolved");
    assert!(policy.ingress.enforced);
    assert!(!policy.egress.enforced);
    let tie = engine
        .policy(&EndpointKey::new("default", "tiefighter"))
        .expect("resolved")
        .identity;
    let (decision, entries) = policy.ingress.lookup(tie, Proto::Tcp, 80);
    let Decision::Redirect(l7) = decision else {
        panic!("expected a redirect, got {decision:?}")
    };
    assert_eq!(l7.http.len(), 1);
    assert_eq!(l7.http[0].rule.method.as_deref(), Some("POST"));
    assert_eq!(l7.http[0].rule.path.as_deref(), Some("/v1/request-landing"));
    assert_eq!(l7.http[0].from.rule, "spec.ingress[0]");
    assert!(!l7.allow_all);
    assert_eq!(entries.len(), 1);

    let ok = explain_flow(
        &engine,
        "default/tiefighter",
        "default/deathstar",
        "80/TCP",
        Some(("POST", "/v1/request-landing")),
    );
    assert_eq!(ok.verdict, Verdict::Allowed);
    let put = explain_flow(
        &engine,
        "default/tiefighter",
        "default/deathstar",
        "80/TCP",
        Some(("PUT", "/v1/exhaust-port")),
    );
    assert_eq!(put.verdict, Verdict::L7Denied);
    // The path is a full match: a prefix is not enough.
    let sub = explain_flow(
        &engine,
        "default/tiefighter",
        "default/deathstar",
        "80/TCP",
        Some(("POST", "/v1/request-landing/x")),
    );
    assert_eq!(sub.verdict, Verdict::L7Denied);
    let xwing = explain_flow(
        &engine,
        "default/xwing",
        "default/deathstar",
        "80/TCP",
        Some(("POST", "/v1/request-landing")),
    );
    assert_eq!(xwing.verdict, Verdict::Denied);
    let text = ok.to_text();
    assert!(
        text.contains("CiliumNetworkPolicy default/rule1 spec.ingress[0]"),
        "{text}"
    );
}

// L7 rules of several policies on the same peer and port are ORed
// (https://docs.cilium.io/en/stable/security/policy/language/#layer-7-examples).
#[test]
fn l7_rules_from_two_policies_merge() {
    let extra = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: rule2}\nspec:\n  endpointSelector: {matchLabels: {class: deathstar}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {org: empire}}]\n    toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n      rules: {http: [{method: GET, path: \"/v1/.*\"}]}\n";
    let mut engine = cluster(L7);
    apply(&mut engine, extra);
    let get = explain_flow(
        &engine,
        "default/tiefighter",
        "default/deathstar",
        "80/TCP",
        Some(("GET", "/v1/status")),
    );
    assert_eq!(get.verdict, Verdict::Allowed);
    let post = explain_flow(
        &engine,
        "default/tiefighter",
        "default/deathstar",
        "80/TCP",
        Some(("POST", "/v1/request-landing")),
    );
    assert_eq!(post.verdict, Verdict::Allowed);
    let put = explain_flow(
        &engine,
        "default/tiefighter",
        "default/deathstar",
        "80/TCP",
        Some(("PUT", "/v1/exhaust-port")),
    );
    assert_eq!(put.verdict, Verdict::L7Denied);
    // An L3/L4 allow on the same key lets every request through the proxy.
    apply(
        &mut engine,
        include_str!("../../../examples/starwars/sw_l3_l4_policy.yaml")
            .replace("rule1", "plain")
            .as_str(),
    );
    let put = explain_flow(
        &engine,
        "default/tiefighter",
        "default/deathstar",
        "80/TCP",
        Some(("PUT", "/v1/exhaust-port")),
    );
    assert_eq!(put.verdict, Verdict::Allowed);
}

#[test]
fn what_if_leaves_the_engine_untouched() {
    let engine = cluster("");
    let proposed = myelin_model::parse_str(
        "proposed.yaml",
        include_str!("../../../examples/starwars/sw_l3_l4_policy.yaml"),
    );
    assert!(proposed.errors.is_empty());
    let q = query("default/xwing", "default/deathstar", "80/TCP", None);
    let e = explain(&engine, &q, &proposed.documents).expect("explain");
    assert_eq!(e.verdict, Verdict::Denied);
    let ingress = e.ingress.expect("ingress step");
    assert_eq!(ingress.decision, Decision::DefaultDeny);
    assert_eq!(
        explain(&engine, &q, &[]).expect("explain").verdict,
        Verdict::Allowed
    );
}

// https://docs.cilium.io/en/stable/internals/security-identities/ :
// reserved numbers, and one identity per distinct security-relevant label set.
#[test]
fn identities() {
    assert_eq!(identity::HOST, 1);
    assert_eq!(identity::WORLD, 2);
    assert_eq!(identity::UNMANAGED, 3);
    assert_eq!(identity::HEALTH, 4);
    assert_eq!(identity::INIT, 5);
    assert_eq!(identity::REMOTE_NODE, 6);
    assert_eq!(identity::KUBE_APISERVER, 7);
    assert_eq!(identity::INGRESS, 8);
    let mut engine = cluster("");
    let a = engine.policy(&deathstar()).expect("resolved").identity;
    assert!((CLUSTER_MIN..=CLUSTER_MAX).contains(&a));
    // A second replica differs only in volatile labels: same identity.
    let mut replica = endpoint(
        "default",
        "deathstar-2",
        &[
            ("org", "empire"),
            ("class", "deathstar"),
            ("pod-template-hash", "xyz"),
        ],
        "10.0.0.9",
        &[],
    );
    replica
        .labels
        .insert("controller-revision-hash".into(), "1".into());
    engine.upsert_endpoint(replica).expect("endpoint");
    assert_eq!(
        engine
            .policy(&EndpointKey::new("default", "deathstar-2"))
            .expect("resolved")
            .identity,
        a
    );
    let labels = engine.identity_labels(a).expect("labels").to_strings();
    assert!(
        labels.contains(&"k8s:io.kubernetes.pod.namespace=default".to_string()),
        "{labels:?}"
    );
    assert!(
        !labels.iter().any(|l| l.contains("pod-template-hash")),
        "{labels:?}"
    );
    // CIDR identities are node-local, bit 24 set, and the except is carved out.
    apply(
        &mut engine,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  egress:\n  - toCIDRSet: [{cidr: 172.16.0.0/12, except: [172.20.0.0/16]}]\n",
    );
    let cache = engine.ipcache();
    let outer = cache[&"172.16.0.0/12".parse().expect("net")];
    let inner = cache[&"172.20.0.0/16".parse().expect("net")];
    assert!(outer > LOCAL_SCOPE && inner > LOCAL_SCOPE && outer != inner);
    assert_eq!(cache[&"10.0.0.3/32".parse().expect("net")], a);
    assert_eq!(
        engine.identity_of_ip("172.20.1.1".parse().expect("ip")),
        inner
    );
    assert_eq!(
        engine.identity_of_ip("172.17.0.1".parse().expect("ip")),
        outer
    );
    assert_eq!(engine.identity_of_ip("10.0.0.3".parse().expect("ip")), a);
    assert_eq!(
        engine.identity_of_ip("9.9.9.9".parse().expect("ip")),
        identity::WORLD
    );
    assert_eq!(
        engine.identity_of_ip("2001:db8::1".parse().expect("ip")),
        identity::WORLD
    );
}

#[test]
fn two_agents_sharing_a_store_agree() {
    let store: Arc<dyn IdentityStore> = Arc::new(MemoryStore::new());
    let sets: Vec<LabelSet> = (0..200)
        .map(|i| {
            LabelSet::for_pod(
                "default",
                &BTreeMap::from([("app".to_string(), format!("a{i}"))]),
                &BTreeMap::new(),
                None,
            )
        })
        .collect();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let store = store.clone();
            let mut sets = sets.clone();
            if t == 1 {
                sets.reverse();
            }
            std::thread::spawn(move || {
                let mut alloc = Allocator::new(store, format!("node{t}"));
                sets.iter()
                    .map(|s| (s.clone(), alloc.allocate(s).expect("allocate")))
                    .collect::<BTreeMap<_, _>>()
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    assert_eq!(results[0], results[1]);
    let ids: std::collections::BTreeSet<_> = results[0].values().collect();
    assert_eq!(
        ids.len(),
        sets.len(),
        "distinct label sets got distinct numbers"
    );
}

#[test]
fn file_store_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("identities.json");
    let labels = LabelSet::for_pod(
        "default",
        &BTreeMap::from([("app".to_string(), "x".to_string())]),
        &BTreeMap::new(),
        None,
    );
    let other = LabelSet::for_pod(
        "default",
        &BTreeMap::from([("app".to_string(), "y".to_string())]),
        &BTreeMap::new(),
        None,
    );
    let first = Allocator::new(Arc::new(FileStore::new(&path)), "node1")
        .allocate(&labels)
        .expect("allocate");
    // A fresh allocator (a restarted agent) reads the same number back and
    // gives new label sets new numbers.
    let mut again = Allocator::new(Arc::new(FileStore::new(&path)), "node1");
    assert_eq!(again.allocate(&labels).expect("allocate"), first);
    assert_ne!(again.allocate(&other).expect("allocate"), first);
    assert_eq!(FileStore::new(&path).list().expect("list").len(), 2);
}

#[test]
fn incremental_changes_touch_only_affected_endpoints() {
    let mut engine = cluster("");
    let parsed = myelin_model::parse_str(
        "p.yaml",
        include_str!("../../../examples/starwars/sw_l3_l4_policy.yaml"),
    );
    let changes = engine.apply(&parsed.documents[0].resource).expect("apply");
    assert_eq!(
        changes.endpoints.keys().cloned().collect::<Vec<_>>(),
        vec![deathstar()]
    );
    let EndpointChange::Updated {
        ingress, egress, ..
    } = &changes.endpoints[&deathstar()]
    else {
        panic!("updated")
    };
    assert!(ingress.enforced && !egress.enforced);
    // Two empire identities: the tiefighter's and the deathstar's own.
    assert_eq!(ingress.upsert.len(), 2);
    assert!(
        ingress
            .upsert
            .iter()
            .all(|e| e.value.action == Action::Allow)
    );
    assert_eq!(
        verdict(&engine, "default/tiefighter", "default/deathstar", "80/TCP"),
        Verdict::Allowed
    );
    // The tiefighter changes sides: deathstar loses its entry for it.
    let before = engine.policy(&deathstar()).expect("resolved").clone();
    let changes = engine
        .upsert_endpoint(endpoint(
            "default",
            "tiefighter",
            &[("org", "alliance"), ("class", "tiefighter")],
            "10.0.0.1",
            &[],
        ))
        .expect("endpoint");
    assert!(changes.endpoints.contains_key(&deathstar()));
    assert!(
        changes
            .endpoints
            .contains_key(&EndpointKey::new("default", "tiefighter"))
    );
    assert!(
        !changes
            .endpoints
            .contains_key(&EndpointKey::new("other", "spy"))
    );
    let EndpointChange::Updated { ingress, .. } = &changes.endpoints[&deathstar()] else {
        panic!("updated")
    };
    assert_eq!(ingress.remove.len(), 1);
    assert_ne!(engine.policy(&deathstar()).expect("resolved"), &before);
    // Removing the policy reopens the deathstar.
    let changes = engine.remove_policy(&PolicyKey {
        kind: PolicyKind::CiliumNetworkPolicy,
        namespace: "default".into(),
        name: "rule1".into(),
    });
    let EndpointChange::Updated { ingress, .. } = &changes.endpoints[&deathstar()] else {
        panic!("updated")
    };
    assert!(!ingress.enforced);
    // A full recomputation finds nothing to change.
    assert!(engine.resolve_all().is_empty());
    let changes = engine.remove_endpoint(&deathstar());
    assert_eq!(changes.endpoints[&deathstar()], EndpointChange::Removed);
    assert!(
        changes
            .ipcache
            .remove
            .contains(&"10.0.0.3/32".parse().expect("net"))
    );
}

#[test]
fn renderings() {
    let engine = cluster(L7);
    let policy = engine.policy(&deathstar()).expect("resolved");
    let view = PolicyView::new(&engine, policy);
    let text = view.to_text();
    assert!(text.contains("ingress: enforced"), "{text}");
    assert!(
        text.contains("REDIRECT [POST /v1/request-landing]"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&view.to_json()).expect("json");
    assert_eq!(json["ingress"]["entries"][0]["action"], "redirect");
    assert_eq!(json["ingress"]["entries"][0]["proto"], "Tcp");
    assert!(
        json["ingress"]["entries"][0]["peer_labels"]
            .to_string()
            .contains("k8s:org=empire")
    );
    assert_eq!(policy.direction(Direction::Egress), &policy.egress);
}

// Namespace labels are part of pod identities (namespaceSelector): changing
// them re-identifies the namespace's pods with a diff that removes old keys.
#[test]
fn namespace_label_change_is_a_diff() {
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ns}\nspec:\n  podSelector: {matchLabels: {class: deathstar}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: rebels}}}]\n";
    let mut engine = cluster(policy);
    assert_eq!(
        verdict(&engine, "other/spy", "default/deathstar", "80/TCP"),
        Verdict::Allowed
    );
    let changes = engine
        .set_namespace_labels("other", BTreeMap::new())
        .expect("namespace");
    let EndpointChange::Updated { ingress, .. } = &changes.endpoints[&deathstar()] else {
        panic!("updated")
    };
    assert!(!ingress.remove.is_empty());
    assert_eq!(
        verdict(&engine, "other/spy", "default/deathstar", "80/TCP"),
        Verdict::Denied
    );
    assert!(engine.resolve_all().is_empty());
}

#[test]
fn identities_of_removed_pods_are_collected_after_the_grace_and_used_ones_stay() {
    let store: Arc<dyn IdentityStore> = Arc::new(MemoryStore::new());
    let mut engine = myelin_policy::PolicyEngine::new(store.clone(), "node1");
    let now = myelin_policy::unix_now();
    engine
        .upsert_endpoint(endpoint("default", "a-1", &[("app", "a")], "10.0.9.1", &[]))
        .expect("endpoint");
    engine
        .upsert_endpoint(endpoint("default", "b-1", &[("app", "b")], "10.0.9.2", &[]))
        .expect("endpoint");
    assert_eq!(store.list().expect("list").len(), 2);
    engine.remove_endpoint(&EndpointKey::new("default", "a-1"));
    let retention = myelin_policy::Retention {
        grace_secs: 60,
        holder_timeout_secs: 3600,
    };
    assert!(
        engine
            .collect_identities(now, retention)
            .expect("gc")
            .is_empty(),
        "within the grace nothing goes"
    );
    let removed = engine.collect_identities(now + 60, retention).expect("gc");
    assert_eq!(removed.len(), 1);
    let left = store.list().expect("list");
    assert_eq!(left.len(), 1);
    assert!(
        left.values()
            .all(|labels| labels.to_string().contains("app=b")),
        "{left:?}"
    );
    // A pod with the collected labels comes back: it gets a number again.
    engine
        .upsert_endpoint(endpoint("default", "a-2", &[("app", "a")], "10.0.9.3", &[]))
        .expect("endpoint");
    assert_eq!(store.list().expect("list").len(), 2);
}
