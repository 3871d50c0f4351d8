//! Fixtures of the agent's unit tests: pods, an engine that knows them, and
//! policies from YAML.

use std::collections::BTreeMap;
use std::sync::Arc;

use myelin_policy::{Changes, EndpointKey, MemoryStore, PolicyEngine};

use crate::api::{EndpointSpec, Protocol, ServicePortSpec, ServiceSpec, TargetPort};

/// A pod of namespace `default` labelled `app: <app>` (and
/// `pod-template-hash` when given), at 10.244.1.`last` and
/// fd00:10:244:1::`last`.
pub fn pod(name: &str, app: &str, hash: Option<&str>, last: u8) -> EndpointSpec {
    let mut labels: BTreeMap<String, String> = [("app".to_string(), app.to_string())].into();
    if let Some(hash) = hash {
        labels.insert("pod-template-hash".into(), hash.into());
    }
    EndpointSpec {
        namespace: "default".into(),
        pod: name.into(),
        labels,
        ifname: format!("veth{last}"),
        ipv4: Some(std::net::Ipv4Addr::new(10, 244, 1, last)),
        ipv6: Some(format!("fd00:10:244:1::{last:x}").parse().expect("ipv6")),
        service_account: None,
        mac: None,
        ports: vec![],
        ready: true,
    }
}

/// An engine (with its own identity store) that knows `pods`.
pub fn engine_with(pods: &[(u32, EndpointSpec)]) -> PolicyEngine {
    let mut engine = PolicyEngine::new(Arc::new(MemoryStore::new()), "node-a");
    for (_, spec) in pods {
        engine
            .upsert_endpoint(crate::policy::endpoint(spec))
            .expect("endpoint");
    }
    engine
}

/// The resolved identity of pod `default/<pod>`.
pub fn identity(engine: &PolicyEngine, pod: &str) -> u32 {
    engine
        .policy(&EndpointKey::new("default", pod))
        .map(|p| p.identity)
        .expect("resolved")
}

/// Applies the documents of `yaml` to `engine`; what they changed.
pub fn apply(engine: &mut PolicyEngine, yaml: &str) -> Changes {
    let parsed = myelin_model::parse_str("test.yaml", yaml);
    let mut all = Changes::default();
    for document in parsed.documents {
        let changes = engine.apply(&document.resource).expect("valid policy");
        all.endpoints.extend(changes.endpoints);
        all.ipcache.upsert.extend(changes.ipcache.upsert);
        all.ipcache.remove.extend(changes.ipcache.remove);
    }
    all
}

/// A CiliumNetworkPolicy `name` letting pods labelled `app: <from>` reach
/// pods labelled `app: <to>` on TCP `port`, with `http` rules (YAML list
/// items) when given.
pub fn allow(name: &str, from: &str, to: &str, port: u16, http: Option<&str>) -> String {
    let rules = http.map_or_else(String::new, |rules| {
        format!("\n      rules:\n        http:\n{rules}")
    });
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  endpointSelector:\n    matchLabels:\n      app: {to}\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: {from}\n    toPorts:\n    - ports:\n      - port: \"{port}\"\n        protocol: TCP{rules}\n"
    )
}

/// A selector-less service `default/<name>` on TCP port 80 (target 8080) of
/// `cluster_ips`.
pub fn service(name: &str, cluster_ips: Vec<std::net::IpAddr>) -> ServiceSpec {
    ServiceSpec {
        namespace: "default".into(),
        name: name.into(),
        cluster_ips,
        ports: vec![ServicePortSpec {
            name: None,
            port: 80,
            target_port: TargetPort::Number(8080),
            protocol: Protocol::Tcp,
        }],
        selector: None,
        affinity_timeout_s: None,
    }
}
