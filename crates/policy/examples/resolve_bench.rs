//! Times resolution of 1,000 policies over 1,000 endpoints, then one
//! incremental policy change and one pod label change. A benchmark, not a
//! test: `cargo run --release -p myelin-policy --example resolve_bench`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use myelin_policy::{Endpoint, MemoryStore, PolicyEngine};

const N: usize = 1000;

fn policy(i: usize, port: u16) -> myelin_model::Resource {
    // Each app admits its two neighbours of the same namespace on one port and allows egress to
    // a CIDR; one in ten also carries an HTTP rule.
    let l7 = if i.is_multiple_of(10) {
        "\n      rules: {http: [{method: GET, path: \"/api/.*\"}]}"
    } else {
        ""
    };
    let text = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{i}, namespace: ns{ns}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: a{i}}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: a{prev}}}}}, {{matchLabels: {{app: a{next}}}}}]\n    toPorts:\n    - ports: [{{port: \"{port}\", protocol: TCP}}]{l7}\n  egress:\n  - toCIDRSet: [{{cidr: 10.{a}.0.0/16, except: [10.{a}.1.0/24]}}]\n",
        ns = i % 10,
        prev = (i + N - 10) % N,
        next = (i + 10) % N,
        a = i % 200,
    );
    let parsed = myelin_model::parse_str("bench.yaml", &text);
    parsed
        .documents
        .into_iter()
        .next()
        .map(|d| d.resource)
        .expect("valid policy")
}

fn endpoint(i: usize, app: usize) -> Endpoint {
    Endpoint {
        namespace: format!("ns{}", i % 10),
        name: format!("pod{i}"),
        labels: BTreeMap::from([
            ("app".to_string(), format!("a{app}")),
            ("pod-template-hash".to_string(), format!("h{i}")),
        ]),
        ips: vec![
            format!("10.250.{}.{}", i / 250, i % 250 + 1)
                .parse()
                .expect("ip"),
        ],
        ports: Vec::new(),
        service_account: None,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut engine = PolicyEngine::new(Arc::new(MemoryStore::new()), "bench");
    let policies: Vec<_> = (0..N).map(|i| policy(i, 80)).collect();
    let start = Instant::now();
    for i in 0..N {
        engine.upsert_endpoint(endpoint(i, i))?;
    }
    for p in &policies {
        engine.apply(p)?;
    }
    let build = start.elapsed();
    let start = Instant::now();
    let full = engine.resolve_all();
    let full_time = start.elapsed();
    let entries: usize = engine
        .policies()
        .map(|p| p.ingress.entries.len() + p.egress.entries.len())
        .sum();
    println!("build (1,000 endpoints then 1,000 policies, incremental): {build:?}");
    println!(
        "full recomputation of 1,000 endpoints: {full_time:?} ({} changed, {entries} entries)",
        full.endpoints.len()
    );

    let start = Instant::now();
    let changes = engine.apply(&policy(500, 8080))?;
    println!(
        "one policy change: {:?} ({} endpoints changed)",
        start.elapsed(),
        changes.endpoints.len()
    );

    let start = Instant::now();
    let changes = engine.upsert_endpoint(endpoint(500, 501))?;
    println!(
        "one pod label change: {:?} ({} endpoints changed)",
        start.elapsed(),
        changes.endpoints.len()
    );
    Ok(())
}
