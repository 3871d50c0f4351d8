//! The agent's side of policy: endpoints and resources into the policy
//! engine, and the views the CLI asks for.

use std::collections::BTreeMap;
use std::net::IpAddr;

use myelin_model::{Document, Resource, ResourceKey};

use myelin_policy::{
    EndpointKey, Explanation, HttpRequest, NamedPort, PolicyEngine, PolicyView, Proto, Query,
    Target,
};

use crate::api::{EndpointSpec, ExplainProtocol, ExplainRequest, Protocol, ResourceOutcome};
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
                    proto: port_protocol(p.protocol)?,
                })
            })
            .collect(),
        service_account: spec.service_account.clone(),
    }
}

/// The policy protocol of a container port. The API refuses SCTP, so none
/// reaches here; were one built in-process, its port names nothing policy
/// could match rather than passing for TCP.
fn port_protocol(protocol: Protocol) -> Option<Proto> {
    match protocol {
        Protocol::Tcp => Some(Proto::Tcp),
        Protocol::Udp => Some(Proto::Udp),
        Protocol::Sctp => None,
    }
}

/// Applies each document on its own; the outcome of each is reported, and
/// what each changed is marked dirty.
pub fn apply(
    engine: &mut PolicyEngine,
    documents: &[Document],
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

/// Takes a resource out of the engine (a namespace's labels back to none)
/// and marks what that changed dirty.
pub fn remove(engine: &mut PolicyEngine, resource: &Resource, dirty: &mut Dirty) {
    let changes = match resource {
        Resource::CiliumNetworkPolicy(_)
        | Resource::CiliumClusterwideNetworkPolicy(_)
        | Resource::NetworkPolicy(_) => match myelin_policy::PolicyKey::of(resource) {
            Some(key) => engine.remove_policy(&key),
            None => return,
        },
        Resource::Service(s) => {
            let namespace = s
                .metadata
                .namespace
                .as_deref()
                .unwrap_or(myelin_model::manifest::DEFAULT_NAMESPACE);
            engine.remove_service(namespace, &s.metadata.name)
        }
        Resource::Namespace(n) => {
            match engine.set_namespace_labels(&n.metadata.name, BTreeMap::new()) {
                Ok(changes) => changes,
                Err(e) => {
                    tracing::warn!(namespace = %n.metadata.name, "namespace labels not reset: {e}");
                    return;
                }
            }
        }
        Resource::Pod(_) | Resource::Deployment(_) => return,
    };
    dirty.record(&changes);
}

/// Undoes what [`apply`] accepted of `documents`: each resource goes back
/// to what `in_force` holds under its key, or out of the engine when it
/// holds none.
pub fn revert(
    engine: &mut PolicyEngine,
    documents: &[Document],
    outcomes: &[ResourceOutcome],
    in_force: &BTreeMap<ResourceKey, Document>,
    dirty: &mut Dirty,
) {
    let accepted = documents
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| outcome.error.is_none());
    for (document, outcome) in accepted {
        match in_force.get(&outcome.key) {
            // It was in force before: the engine took it then, and takes it again.
            Some(previous) => match engine.apply(&previous.resource) {
                Ok(changes) => dirty.record(&changes),
                Err(e) => tracing::warn!(resource = %outcome.key, "not restored: {e}"),
            },
            None => remove(engine, &document.resource, dirty),
        }
    }
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

/// The policy engine's protocol of a flow to explain.
fn protocol(protocol: ExplainProtocol) -> Proto {
    match protocol {
        ExplainProtocol::Tcp => Proto::Tcp,
        ExplainProtocol::Udp => Proto::Udp,
        ExplainProtocol::Icmp => Proto::Icmp,
        ExplainProtocol::Icmpv6 => Proto::Icmpv6,
        ExplainProtocol::Any => Proto::Any,
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
        proto: protocol(request.protocol),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    fn documents(yaml: &str) -> Vec<Document> {
        let parsed = myelin_model::parse_str("test.yaml", yaml);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        parsed.documents
    }

    fn resolved(engine: &PolicyEngine) -> String {
        get(engine, None, true).expect("every endpoint's policy")
    }

    #[test]
    fn a_reverted_apply_leaves_the_engine_as_it_was() {
        let pods = [
            (1, testing::pod("deathstar", "deathstar", None, 2)),
            (2, testing::pod("tiefighter", "tiefighter", None, 4)),
        ];
        let mut engine = testing::engine_with(&pods);
        let mut dirty = Dirty::default();
        let door = documents(&testing::allow("door", "tiefighter", "deathstar", 80, None));
        apply(&mut engine, &door, &mut dirty);
        let in_force: BTreeMap<ResourceKey, Document> =
            door.into_iter().map(|d| (d.resource.key(), d)).collect();
        let before = resolved(&engine);

        // One document replaces `door`, one is new.
        let mut request = documents(&testing::allow(
            "door",
            "tiefighter",
            "deathstar",
            8080,
            None,
        ));
        request.extend(documents(&testing::allow(
            "window",
            "deathstar",
            "tiefighter",
            443,
            None,
        )));
        let outcomes = apply(&mut engine, &request, &mut dirty);
        assert!(outcomes.iter().all(|o| o.error.is_none()), "{outcomes:?}");
        assert_ne!(resolved(&engine), before);

        revert(&mut engine, &request, &outcomes, &in_force, &mut dirty);
        assert_eq!(resolved(&engine), before);
    }

    #[test]
    fn a_policy_selects_pods_by_their_service_account() {
        let mut foo = testing::pod("a", "web", None, 2);
        foo.service_account = Some("foo".into());
        let without = testing::pod("b", "web", None, 3);
        let mut engine = testing::engine_with(&[(1, foo), (2, without)]);
        testing::apply(
            &mut engine,
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: sa, namespace: default}\n\
             spec:\n  endpointSelector: {matchLabels: {io.cilium.k8s.policy.serviceaccount: foo}}\n  \
             ingress: [{fromEndpoints: [{}]}]\n",
        );
        let enforced = |pod: &str| {
            engine
                .policy(&EndpointKey::new("default", pod))
                .map(|p| p.ingress.enforced)
        };
        assert_eq!(enforced("a"), Some(true));
        assert_eq!(enforced("b"), Some(false));
    }

    #[test]
    fn named_ports_keep_their_protocol() {
        let mut spec = testing::pod("a", "web", None, 2);
        spec.ports = vec![
            crate::api::NamedPort {
                name: Some("dns".into()),
                port: 53,
                protocol: Protocol::Udp,
            },
            crate::api::NamedPort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp,
            },
            crate::api::NamedPort {
                name: Some("signal".into()),
                port: 2905,
                protocol: Protocol::Sctp,
            },
        ];
        let protocols: Vec<(String, Proto)> = endpoint(&spec)
            .ports
            .into_iter()
            .map(|p| (p.name, p.proto))
            .collect();
        assert_eq!(
            protocols,
            [
                ("dns".to_string(), Proto::Udp),
                ("http".to_string(), Proto::Tcp)
            ]
        );
    }
}
