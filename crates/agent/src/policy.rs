//! The agent's side of policy: endpoints and resources into the policy
//! engine, and the views the CLI asks for.

use std::net::IpAddr;

use myelin_policy::{
    EndpointKey, Explanation, HttpRequest, NamedPort, PolicyEngine, PolicyView, Proto, Query,
    Target,
};

use crate::api::{EndpointSpec, ExplainRequest, ResourceOutcome};
use crate::reconcile::Dirty;

/// The policy engine's view of an endpoint.
pub fn endpoint(spec: &EndpointSpec) -> myelin_policy::Endpoint {
    myelin_policy::Endpoint {
        namespace: spec.namespace.clone(),
        name: spec.pod.clone(),
        labels: spec.labels.clone(),
        ips: [spec.ipv4.map(IpAddr::V4), spec.ipv6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
            .collect(),
        ports: spec
            .ports
            .iter()
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    port: p.port,
                    proto: match p.protocol.as_str() {
                        "UDP" => Proto::Udp,
                        _ => Proto::Tcp,
                    },
                })
            })
            .collect(),
        service_account: None,
    }
}

/// Applies each document on its own; the outcome of each is reported, and
/// what each changed is marked dirty.
pub fn apply(
    engine: &mut PolicyEngine,
    documents: &[myelin_model::Document],
    dirty: &mut Dirty,
) -> Vec<ResourceOutcome> {
    documents
        .iter()
        .map(|d| ResourceOutcome {
            key: d.resource.key(),
            error: match engine.apply(&d.resource) {
                Ok(changes) => {
                    dirty.record(&changes);
                    None
                }
                Err(e) => Some(format!(
                    "{}: document {}: {e}",
                    d.source.file, d.source.document
                )),
            },
        })
        .collect()
}

/// `pod`, `namespace/pod` or an IP address.
fn target(text: &str) -> Target {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Target::Ip(ip);
    }
    match text.split_once('/') {
        Some((namespace, pod)) => Target::Endpoint(EndpointKey::new(namespace, pod)),
        None => Target::Endpoint(EndpointKey::new("default", text)),
    }
}

/// Parses a protocol name as the CLI accepts it.
pub fn protocol(text: &str) -> Result<Proto, String> {
    match text.to_ascii_uppercase().as_str() {
        "TCP" => Ok(Proto::Tcp),
        "UDP" => Ok(Proto::Udp),
        "ICMP" => Ok(Proto::Icmp),
        "ICMPV6" => Ok(Proto::Icmpv6),
        "ANY" => Ok(Proto::Any),
        other => Err(format!(
            "unknown protocol {other:?}; use TCP, UDP, ICMP, ICMPv6 or ANY"
        )),
    }
}

/// Answers `myelin policy explain`.
pub fn explain(engine: &PolicyEngine, request: &ExplainRequest) -> Result<String, String> {
    let http = request.http_method.as_ref().map(|method| HttpRequest {
        method: method.clone(),
        path: request.http_path.clone().unwrap_or_else(|| "/".to_string()),
        host: None,
        headers: Vec::new(),
    });
    let query = Query {
        from: target(&request.from),
        to: target(&request.to),
        proto: protocol(&request.protocol)?,
        port: request.port,
        http,
    };
    let explanation: Explanation =
        myelin_policy::explain(engine, &query, &request.proposed).map_err(|e| e.to_string())?;
    Ok(if request.json {
        explanation.to_json()
    } else {
        explanation.to_text()
    })
}

/// Answers `myelin policy get`.
pub fn get(
    engine: &PolicyEngine,
    endpoint: Option<&(String, String)>,
    json: bool,
) -> Result<String, String> {
    let views: Vec<PolicyView> = match endpoint {
        Some((namespace, pod)) => {
            let key = EndpointKey::new(namespace, pod);
            let policy = engine
                .policy(&key)
                .ok_or_else(|| format!("no endpoint {namespace}/{pod} on this node"))?;
            vec![PolicyView::new(engine, policy)]
        }
        None => engine
            .policies()
            .map(|p| PolicyView::new(engine, p))
            .collect(),
    };
    Ok(if json {
        let values: Vec<serde_json::Value> = views
            .iter()
            .filter_map(|v| serde_json::from_str(&v.to_json()).ok())
            .collect();
        serde_json::to_string_pretty(&values).unwrap_or_default()
    } else {
        views
            .iter()
            .map(PolicyView::to_text)
            .collect::<Vec<_>>()
            .join("\n")
    })
}
