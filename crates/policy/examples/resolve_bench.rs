//! Times resolution of 1,000 policies over 1,000 endpoints, then one
//! incremental policy change and one pod label change; applying and
//! deleting one by one 10,000 policies that all select one endpoint; and
//! the largest policy document the model accepts, parsed, validated and
//! applied. A benchmark, not a test:
//! `cargo run --release -p myelin-policy --example resolve_bench`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use myelin_model::limits::MAX_OBJECT_BYTES;
use myelin_policy::{
    Changes, Endpoint, EndpointChange, MemoryStore, PolicyEngine, PolicyKey, PolicyKind,
};

const N: usize = 1000;

/// Policies in the delete benchmark.
const MANY: usize = 10_000;

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
    parse(&text)
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

fn parse(text: &str) -> myelin_model::Resource {
    let parsed = myelin_model::parse_str("bench.yaml", text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    parsed
        .documents
        .into_iter()
        .next()
        .map(|d| d.resource)
        .expect("valid policy")
}

/// Policy `i` of the delete benchmark: selects the one `app: web` pod and
/// admits `app: client` on port 80 (one entry all of them share, its
/// provenance naming every policy), with a CIDR of its own when `cidr`.
fn selecting_one(i: usize, cidr: bool) -> myelin_model::Resource {
    let egress = if cidr {
        format!("  egress:\n  - toCIDR: [10.{}.{}.0/24]\n", i / 250, i % 250)
    } else {
        String::new()
    };
    parse(&format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: d{i}, namespace: ns0}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n    toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]\n{egress}"
    ))
}

/// How many rules the upserted entries of a change name: the shared
/// entry's provenance is copied into each diff whole.
fn upserted_rules(changes: &Changes) -> usize {
    changes
        .endpoints
        .values()
        .map(|c| match c {
            EndpointChange::Updated {
                ingress, egress, ..
            } => ingress
                .upsert
                .iter()
                .chain(&egress.upsert)
                .map(|e| e.value.provenance.len())
                .sum(),
            EndpointChange::Removed => 0,
        })
        .sum()
}

/// Applies then deletes, one by one, `MANY` policies selecting one endpoint.
fn apply_then_delete(cidr: bool) -> Result<(), Box<dyn std::error::Error>> {
    let mut engine = PolicyEngine::new(Arc::new(MemoryStore::new()), "bench");
    let mut client = endpoint(0, 0);
    client.labels.insert("app".into(), "client".into());
    let mut web = endpoint(1, 0);
    web.namespace = "ns0".into();
    web.labels.insert("app".into(), "web".into());
    engine.upsert_endpoint(client)?;
    engine.upsert_endpoint(web)?;
    let policies: Vec<_> = (0..MANY).map(|i| selecting_one(i, cidr)).collect();
    let what = if cidr {
        "one CIDR rule each"
    } else {
        "no CIDR rule"
    };
    let start = Instant::now();
    for p in &policies {
        engine.apply(p)?;
    }
    println!(
        "apply 10,000 policies selecting one endpoint ({what}): {:?}",
        start.elapsed()
    );
    let start = Instant::now();
    let mut work = 0;
    let mut named = 0;
    for i in 0..MANY {
        let changes = engine.remove_policy(&PolicyKey {
            kind: PolicyKind::CiliumNetworkPolicy,
            namespace: "ns0".into(),
            name: format!("d{i}"),
        });
        work = work.max(engine.last_change_work());
        named += upserted_rules(&changes);
    }
    println!(
        "delete 10,000 policies one by one ({what}): {:?} (at most {work} entries visited per delete; the diffs' entries name {named} rules in all, shared, not copied)",
        start.elapsed()
    );
    Ok(())
}

/// A policy document just under the model's 1.5 MiB object limit: one
/// policy with as many ingress rules as fit.
fn largest_policy() -> String {
    let mut text = String::from(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: largest, namespace: ns0}\nspec:\n  endpointSelector: {}\n  ingress:\n",
    );
    for i in 0.. {
        let rule = format!(
            "  - fromEndpoints: [{{matchLabels: {{app: a{}}}}}]\n    toPorts: [{{ports: [{{port: \"{}\", protocol: TCP}}]}}]\n",
            i % N,
            1024 + i % 60000
        );
        if text.len() + rule.len() > MAX_OBJECT_BYTES {
            break;
        }
        text.push_str(&rule);
    }
    text
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

    let text = largest_policy();
    let start = Instant::now();
    let largest = parse(&text);
    let parsed = start.elapsed();
    let start = Instant::now();
    let changes = engine.apply(&largest)?;
    println!(
        "largest manifest accepted ({} bytes, one policy of {} rules): parse+validate {parsed:?}, apply over 1,000 endpoints {:?} ({} endpoints changed)",
        text.len(),
        text.matches("- fromEndpoints").count(),
        start.elapsed(),
        changes.endpoints.len()
    );

    apply_then_delete(false)?;
    apply_then_delete(true)?;
    Ok(())
}
