//! Any text fed to the manifest parser must give documents or located
//! errors, never a panic; valid resources must then resolve without one:
//! policies, Services and Namespaces through `apply`, Pods as endpoints
//! (with their named ports), against one fixed pod that is always there.
#![no_main]

use std::net::IpAddr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use myelin_model::Resource;
use myelin_policy::{Endpoint, MemoryStore, PolicyEngine};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = myelin_model::parse_str("fuzz.yaml", text);
    let mut engine = PolicyEngine::new(Arc::new(MemoryStore::new()), "fuzz");
    let pod = Endpoint {
        namespace: "default".into(),
        name: "p".into(),
        labels: [("app".to_string(), "x".to_string())].into_iter().collect(),
        ips: vec![IpAddr::from([10, 0, 0, 1])],
        ports: Vec::new(),
        service_account: None,
    };
    let _ = engine.upsert_endpoint(pod);
    for (index, doc) in parsed.documents.iter().enumerate() {
        match &doc.resource {
            Resource::Pod(pod) => {
                let host = u8::try_from(index % 250).unwrap_or(0) + 2;
                let ips = vec![
                    IpAddr::from([10, 0, 1, host]),
                    IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 1, u16::from(host)]),
                ];
                let _ = engine.upsert_endpoint(Endpoint::from_pod(pod, ips));
            }
            resource => {
                let _ = engine.apply(resource);
            }
        }
    }
    let _ = engine.resolve_all();
});
