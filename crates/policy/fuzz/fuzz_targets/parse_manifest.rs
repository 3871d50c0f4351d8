//! Any text fed to the manifest parser must give documents or located
//! errors, never a panic; valid policies must then resolve without one.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = myelin_model::parse_str("fuzz.yaml", text);
    let mut engine = myelin_policy::PolicyEngine::new(Arc::new(myelin_policy::MemoryStore::new()));
    let pod = myelin_policy::Endpoint {
        namespace: "default".into(),
        name: "p".into(),
        labels: [("app".to_string(), "x".to_string())].into_iter().collect(),
        ips: vec![std::net::IpAddr::from([10, 0, 0, 1])],
        ports: Vec::new(),
        service_account: None,
    };
    let _ = engine.upsert_endpoint(pod);
    for doc in &parsed.documents {
        let _ = engine.apply(&doc.resource);
    }
});
