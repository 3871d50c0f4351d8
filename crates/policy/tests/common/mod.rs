//! A small cluster to resolve policies against, shared by the test files.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use myelin_policy::{
    Endpoint, EndpointKey, Explanation, HttpRequest, MemoryStore, NamedPort, PolicyEngine, Proto,
    Query, Target, Verdict, explain,
};

/// A test pod: namespace, name, labels, address, named TCP ports.
type TestPod = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static [(&'static str, u16)],
);

/// The pods of every test cluster.
pub const PODS: &[TestPod] = &[
    (
        "default",
        "tiefighter",
        &[("org", "empire"), ("class", "tiefighter")],
        "10.0.0.1",
        &[],
    ),
    (
        "default",
        "xwing",
        &[("org", "alliance"), ("class", "xwing")],
        "10.0.0.2",
        &[],
    ),
    (
        "default",
        "deathstar",
        &[
            ("org", "empire"),
            ("class", "deathstar"),
            ("pod-template-hash", "abc"),
        ],
        "10.0.0.3",
        &[("http", 80)],
    ),
    (
        "other",
        "spy",
        &[("org", "alliance"), ("class", "spy")],
        "10.0.1.1",
        &[("http", 8080)],
    ),
    (
        "other",
        "droid",
        &[("org", "empire"), ("class", "droid")],
        "10.0.1.2",
        &[],
    ),
];

pub fn endpoint(
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
    ip: &str,
    ports: &[(&str, u16)],
) -> Endpoint {
    Endpoint {
        namespace: ns.into(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ips: vec![ip.parse().expect("test address")],
        ports: ports
            .iter()
            .map(|(n, p)| NamedPort {
                name: n.to_string(),
                port: *p,
                proto: Proto::Tcp,
            })
            .collect(),
        service_account: None,
    }
}

/// An engine with the pods, namespace `other` labelled `team: rebels`, and
/// the policies of `yaml` (which must all be valid).
pub fn cluster(yaml: &str) -> PolicyEngine {
    let mut engine = PolicyEngine::new(Arc::new(MemoryStore::new()), "node1");
    engine
        .set_namespace_labels(
            "other",
            BTreeMap::from([("team".to_string(), "rebels".to_string())]),
        )
        .expect("namespace");
    engine
        .set_namespace_labels("default", BTreeMap::new())
        .expect("namespace");
    for (ns, name, labels, ip, ports) in PODS {
        engine
            .upsert_endpoint(endpoint(ns, name, labels, ip, ports))
            .expect("endpoint");
    }
    apply(&mut engine, yaml);
    engine
}

pub fn apply(engine: &mut PolicyEngine, yaml: &str) {
    let parsed = myelin_model::parse_str("test.yaml", yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    for doc in parsed.documents {
        engine.apply(&doc.resource).expect("apply");
    }
}

pub fn target(text: &str) -> Target {
    match text.parse::<IpAddr>() {
        Ok(ip) => Target::Ip(ip),
        Err(_) => {
            let (ns, name) = text.split_once('/').expect("ns/name or an address");
            Target::Endpoint(EndpointKey::new(ns, name))
        }
    }
}

/// `port` is `80/TCP`, `53/UDP` or `8/ICMP` (type).
pub fn query(from: &str, to: &str, port: &str, http: Option<(&str, &str)>) -> Query {
    let (number, proto) = port.split_once('/').expect("N/PROTO");
    Query {
        from: target(from),
        to: target(to),
        proto: match proto {
            "TCP" => Proto::Tcp,
            "UDP" => Proto::Udp,
            "ICMP" => Proto::Icmp,
            "ICMPv6" => Proto::Icmpv6,
            other => panic!("protocol {other}"),
        },
        port: number.parse().expect("port"),
        http: http.map(|(method, path)| HttpRequest {
            method: method.into(),
            path: path.into(),
            ..HttpRequest::default()
        }),
    }
}

pub fn explain_flow(
    engine: &PolicyEngine,
    from: &str,
    to: &str,
    port: &str,
    http: Option<(&str, &str)>,
) -> Explanation {
    explain(engine, &query(from, to, port, http), &[]).expect("explain")
}

pub fn verdict(engine: &PolicyEngine, from: &str, to: &str, port: &str) -> Verdict {
    explain_flow(engine, from, to, port, None).verdict
}
