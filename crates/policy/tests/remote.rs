//! Pods of other nodes as peers: selected by their identity's labels, in the
//! ipcache at their address, with no tables of their own; other nodes' own
//! addresses as `remote-node`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use myelin_policy::identity::{REMOTE_NODE, WORLD};
use myelin_policy::{
    Decision, Endpoint, EndpointChange, EndpointKey, LabelSet, MemoryStore, NamedPort,
    PolicyEngine, PolicyError, Proto, RemoteEndpoint,
};

fn apply(engine: &mut PolicyEngine, yaml: &str) {
    let parsed = myelin_model::parse_str("remote.yaml", yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    for document in parsed.documents {
        engine.apply(&document.resource).expect("policy");
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// The labels node B's allocator gives a pod `app: <app>` of `default`.
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

fn remote(address: &str, identity: u32, app: &str) -> RemoteEndpoint {
    RemoteEndpoint {
        ip: ip(address),
        identity,
        ports: Vec::new().into(),
        node: "node-a".into(),
        namespace: "default".into(),
        pod: format!("{app}-{address}").into(),
    }
}

/// Node B with a local `web` pod whose ingress admits `app: client` on 80.
fn node_b() -> PolicyEngine {
    let mut engine = PolicyEngine::new(Arc::new(MemoryStore::new()), "node-b");
    engine
        .upsert_endpoint(Endpoint {
            namespace: "default".into(),
            name: "web".into(),
            labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
            ips: vec![ip("10.244.2.10")],
            ports: Vec::new(),
            service_account: None,
        })
        .expect("web");
    apply(
        &mut engine,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: web, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n",
    );
    engine
}

fn web() -> EndpointKey {
    EndpointKey::new("default", "web")
}

#[test]
fn a_remote_pod_is_a_peer_by_its_labels_and_in_the_ipcache() {
    let mut engine = node_b();
    let changes = engine
        .upsert_remote_endpoint(remote("10.244.1.5", 300, "client"), &labels("client"))
        .expect("remote");
    // The selector matched the remote identity: web's table gained it.
    let Some(EndpointChange::Updated { ingress, .. }) = changes.endpoints.get(&web()) else {
        panic!("web's policy should change: {changes:?}");
    };
    assert!(ingress.upsert.iter().any(|e| e.key.peer == 300));
    assert!(
        changes
            .ipcache
            .upsert
            .contains(&(IpNet::from(ip("10.244.1.5")), 300))
    );
    let policy = engine.policy(&web()).expect("web");
    assert_eq!(
        policy.ingress.lookup(300, Proto::Tcp, 80).0,
        Decision::Allow
    );
    assert_eq!(engine.identity_of_ip(ip("10.244.1.5")), 300);
    assert_eq!(
        engine.identity_labels(300).map(ToString::to_string),
        Some(labels("client").to_string())
    );
    // No table of its own.
    assert_eq!(engine.policies().count(), 1);

    // A remote pod of other labels is not admitted.
    engine
        .upsert_remote_endpoint(remote("10.244.1.6", 301, "other"), &labels("other"))
        .expect("remote");
    let policy = engine.policy(&web()).expect("web");
    assert_eq!(
        policy.ingress.lookup(301, Proto::Tcp, 80).0,
        Decision::DefaultDeny
    );

    // Removed: out of the ipcache and of web's table.
    let changes = engine.remove_remote_endpoint(ip("10.244.1.5"));
    assert!(
        changes
            .ipcache
            .remove
            .contains(&IpNet::from(ip("10.244.1.5")))
    );
    let Some(EndpointChange::Updated { ingress, .. }) = changes.endpoints.get(&web()) else {
        panic!("web's policy should change: {changes:?}");
    };
    assert!(ingress.remove.iter().any(|k| k.peer == 300));
    assert_eq!(engine.identity_of_ip(ip("10.244.1.5")), WORLD);
    assert!(engine.identity_labels(300).is_none());
    assert!(engine.remote_endpoint(ip("10.244.1.5")).is_none());
}

#[test]
fn a_second_pod_of_a_known_identity_only_touches_its_address() {
    let mut engine = node_b();
    engine
        .upsert_remote_endpoint(remote("10.244.1.5", 300, "client"), &labels("client"))
        .expect("first");
    let changes = engine
        .upsert_remote_endpoint(remote("10.244.1.7", 300, "client"), &labels("client"))
        .expect("second");
    assert!(changes.endpoints.is_empty(), "{changes:?}");
    assert_eq!(
        changes.ipcache.upsert,
        vec![(IpNet::from(ip("10.244.1.7")), 300)]
    );
    // The identity stays while one of its pods does.
    let changes = engine.remove_remote_endpoint(ip("10.244.1.5"));
    assert!(changes.endpoints.is_empty(), "{changes:?}");
    assert_eq!(
        engine
            .policy(&web())
            .expect("web")
            .ingress
            .lookup(300, Proto::Tcp, 80)
            .0,
        Decision::Allow
    );
    // Delivered again unchanged: nothing to do.
    let again = engine
        .upsert_remote_endpoint(remote("10.244.1.7", 300, "client"), &labels("client"))
        .expect("again");
    assert!(again.is_empty());
}

#[test]
fn a_local_and_a_remote_pod_share_an_identity() {
    let mut engine = node_b();
    let local = engine
        .upsert_endpoint(Endpoint {
            namespace: "default".into(),
            name: "client".into(),
            labels: BTreeMap::from([("app".to_string(), "client".to_string())]),
            ips: vec![ip("10.244.2.20")],
            ports: Vec::new(),
            service_account: None,
        })
        .expect("client");
    assert!(!local.is_empty());
    let id = engine
        .policy(&EndpointKey::new("default", "client"))
        .expect("client")
        .identity;
    engine
        .upsert_remote_endpoint(remote("10.244.1.5", id, "client"), &labels("client"))
        .expect("remote");
    // The local pod leaves: the remote one keeps the identity admitted.
    engine.remove_endpoint(&EndpointKey::new("default", "client"));
    let policy = engine.policy(&web()).expect("web");
    assert_eq!(policy.ingress.lookup(id, Proto::Tcp, 80).0, Decision::Allow);
    assert_eq!(engine.identity_of_ip(ip("10.244.1.5")), id);
    engine.remove_remote_endpoint(ip("10.244.1.5"));
    let policy = engine.policy(&web()).expect("web");
    assert_eq!(
        policy.ingress.lookup(id, Proto::Tcp, 80).0,
        Decision::DefaultDeny
    );
}

#[test]
fn egress_named_ports_resolve_against_remote_pods() {
    let mut engine = node_b();
    apply(
        &mut engine,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: out, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  egress:\n  - toEndpoints: [{matchLabels: {app: db}}]\n    toPorts: [{ports: [{port: sql, protocol: TCP}]}]\n",
    );
    let mut db = remote("10.244.1.9", 400, "db");
    db.ports = Arc::from([NamedPort {
        name: "sql".into(),
        port: 5432,
        proto: Proto::Tcp,
    }]);
    engine
        .upsert_remote_endpoint(db.clone(), &labels("db"))
        .expect("db");
    let egress = &engine.policy(&web()).expect("web").egress;
    assert_eq!(egress.lookup(400, Proto::Tcp, 5432).0, Decision::Allow);
    // The port renamed on its node: the entry follows.
    db.ports = Arc::from([NamedPort {
        name: "sql".into(),
        port: 3306,
        proto: Proto::Tcp,
    }]);
    engine
        .upsert_remote_endpoint(db, &labels("db"))
        .expect("db");
    let egress = &engine.policy(&web()).expect("web").egress;
    assert_eq!(egress.lookup(400, Proto::Tcp, 3306).0, Decision::Allow);
    assert_eq!(
        egress.lookup(400, Proto::Tcp, 5432).0,
        Decision::DefaultDeny
    );
}

#[test]
fn a_remote_pod_moving_to_an_identity_in_use_takes_its_named_ports_along() {
    let mut engine = node_b();
    apply(
        &mut engine,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: out, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  egress:\n  - toEndpoints: [{matchLabels: {app: db}}]\n    toPorts: [{ports: [{port: sql, protocol: TCP}]}]\n",
    );
    // A local `db` pod without named ports holds the `db` identity already.
    engine
        .upsert_endpoint(Endpoint {
            namespace: "default".into(),
            name: "db".into(),
            labels: BTreeMap::from([("app".to_string(), "db".to_string())]),
            ips: vec![ip("10.244.2.11")],
            ports: Vec::new(),
            service_account: None,
        })
        .expect("db");
    let db = engine
        .policy(&EndpointKey::new("default", "db"))
        .expect("db")
        .identity;
    // A pod of node A with the named port, relabelled there from `cache` to `db`.
    let mut pod = remote("10.244.1.9", 400, "cache");
    pod.ports = Arc::from([NamedPort {
        name: "sql".into(),
        port: 5432,
        proto: Proto::Tcp,
    }]);
    engine
        .upsert_remote_endpoint(pod.clone(), &labels("cache"))
        .expect("cache");
    let egress = &engine.policy(&web()).expect("web").egress;
    assert_eq!(egress.lookup(db, Proto::Tcp, 5432).0, Decision::DefaultDeny);
    pod.identity = db;
    engine
        .upsert_remote_endpoint(pod, &labels("db"))
        .expect("db");
    let egress = &engine.policy(&web()).expect("web").egress;
    assert_eq!(
        egress.lookup(db, Proto::Tcp, 5432).0,
        Decision::Allow,
        "the named port the moved pod brings to its new identity"
    );
    let mut full = engine.clone();
    assert!(full.resolve_all().is_empty(), "incremental equals full");
}

#[test]
fn remote_nodes_and_the_cluster_entity() {
    let mut engine = node_b();
    apply(
        &mut engine,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: nodes, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - fromEntities: [remote-node]\n    toPorts: [{ports: [{port: \"9000\", protocol: TCP}]}]\n  - fromEntities: [cluster]\n    toPorts: [{ports: [{port: \"81\", protocol: TCP}]}]\n",
    );
    let changes = engine.set_remote_node("node-a", vec![ip("192.168.90.1"), ip("fd00:90::1")]);
    assert!(
        changes
            .ipcache
            .upsert
            .contains(&(IpNet::from(ip("192.168.90.1")), REMOTE_NODE))
    );
    assert_eq!(engine.identity_of_ip(ip("fd00:90::1")), REMOTE_NODE);
    engine
        .upsert_remote_endpoint(remote("10.244.1.5", 300, "other"), &labels("other"))
        .expect("remote");
    let ingress = &engine.policy(&web()).expect("web").ingress;
    assert_eq!(
        ingress.lookup(REMOTE_NODE, Proto::Tcp, 9000).0,
        Decision::Allow
    );
    // `cluster` takes in pods of every node.
    assert_eq!(ingress.lookup(300, Proto::Tcp, 81).0, Decision::Allow);
    // The node left: its addresses are the world's again.
    let changes = engine.remove_remote_node("node-a");
    assert_eq!(changes.ipcache.remove.len(), 2);
    assert_eq!(engine.identity_of_ip(ip("192.168.90.1")), WORLD);
}

#[test]
fn a_reserved_number_from_another_node_is_refused() {
    let mut engine = node_b();
    let refused =
        engine.upsert_remote_endpoint(remote("10.244.1.5", 1, "client"), &labels("client"));
    assert!(matches!(
        refused,
        Err(PolicyError::RemoteIdentity { identity: 1, .. })
    ));
    assert!(engine.remote_endpoint(ip("10.244.1.5")).is_none());
}
