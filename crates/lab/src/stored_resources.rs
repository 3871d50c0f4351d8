//! The lab's resources in the cluster store, under
//! `/myelin/<lab>/resources/<kind>/<namespace>/<name>` (`_` for
//! cluster-scoped kinds), as an API server keeps its objects in etcd: every
//! namespace, Service (with the cluster IPs the lab gave it, in
//! `spec.clusterIP`/`clusterIPs`), Deployment, pod (with the node it was
//! placed on in `spec.nodeName`, its addresses in `status.podIPs`) and
//! policy. The lab writes the difference to what the store holds after
//! every change, in one transaction, so that a reader sees all of an apply
//! or none of it; a node that joins learns the cluster's resources from
//! here.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context as _, anyhow};
use myelin_model::workload::Namespace;
use myelin_model::{Document, Resource, Source};
use myelin_store::{ResourceKey, Store};
use serde_json::{Value, json};

use crate::state::{LabState, ServiceRecord};

/// The namespace component of a cluster-scoped kind's key.
const CLUSTER_SCOPED: &str = "_";

/// The store's key of `resource`.
fn store_key(resource: &Resource) -> ResourceKey {
    let key = resource.key();
    ResourceKey {
        namespace: if key.namespace.is_empty() {
            CLUSTER_SCOPED.to_string()
        } else {
            key.namespace
        },
        kind: key.kind,
        name: key.name,
    }
}

/// `resource` as JSON (the model's own serialization: what it was applied as).
fn to_json(resource: &Resource) -> anyhow::Result<Value> {
    serde_json::to_value(resource).context("writing a resource as JSON")
}

/// Every resource of `state` as the store should hold it.
pub fn of_state(state: &LabState) -> anyhow::Result<BTreeMap<ResourceKey, Value>> {
    let mut resources = BTreeMap::new();
    let mut put = |resource: Resource, value: Value| {
        resources.insert(store_key(&resource), value);
    };
    for name in &state.namespaces {
        let mut namespace = Namespace::named(name);
        namespace.metadata.labels = state
            .namespace_labels
            .get(name)
            .cloned()
            .unwrap_or_default();
        let resource = Resource::Namespace(namespace);
        let value = to_json(&resource)?;
        put(resource, value);
    }
    for record in state.services.values() {
        let resource = Resource::Service(record.service.clone());
        let mut value = to_json(&resource)?;
        let ips: Vec<String> = record.cluster_ips.iter().map(IpAddr::to_string).collect();
        if let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("clusterIP".into(), json!(ips.first()));
            spec.insert("clusterIPs".into(), json!(ips));
        }
        put(resource, value);
    }
    for deployment in state.deployments.values() {
        let resource = Resource::Deployment(deployment.clone());
        let value = to_json(&resource)?;
        put(resource, value);
    }
    for record in state.pods.values() {
        let mut pod = record.pod.clone();
        pod.spec.node_name = Some(record.node.clone());
        let resource = Resource::Pod(pod);
        let mut value = to_json(&resource)?;
        value["status"] = json!({
            "podIPs": [{"ip": record.ipv4.to_string()}, {"ip": record.ipv6.to_string()}],
        });
        put(resource, value);
    }
    for document in state.policies.values() {
        let value = to_json(&document.resource)?;
        put(document.resource.clone(), value);
    }
    Ok(resources)
}

/// Makes the store hold exactly `wanted`, in one transaction; nothing is
/// written when it does already.
pub async fn write(store: &Store, wanted: &BTreeMap<ResourceKey, Value>) -> anyhow::Result<()> {
    let held = store
        .resources()
        .await
        .context("reading the lab's resources from the cluster store")?;
    let put: Vec<(ResourceKey, Value)> = wanted
        .iter()
        .filter(|(key, value)| held.get(*key) != Some(*value))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let delete: Vec<ResourceKey> = held
        .keys()
        .filter(|key| !wanted.contains_key(*key))
        .cloned()
        .collect();
    if put.is_empty() && delete.is_empty() {
        return Ok(());
    }
    store
        .apply_resources(&put, &delete)
        .await
        .context("writing the lab's resources to the cluster store")
}

/// What a node that joins must learn, read from the store: the namespaces,
/// Services and policies as documents (in creation order), and the Services
/// with their cluster IPs.
pub async fn for_joining_node(
    store: &Store,
) -> anyhow::Result<(Vec<Document>, Vec<ServiceRecord>)> {
    let held = store
        .resources()
        .await
        .context("reading the lab's resources from the cluster store")?;
    let mut documents = Vec::new();
    let mut services = Vec::new();
    for (key, value) in held {
        let resource: Resource = serde_json::from_value(value.clone()).map_err(|e| {
            anyhow!(
                "the cluster store's {}/{}/{} is not a resource: {e}",
                key.kind,
                key.namespace,
                key.name
            )
        })?;
        match &resource {
            Resource::Pod(_) | Resource::Deployment(_) => continue,
            Resource::Service(service) => services.push(ServiceRecord {
                service: service.clone(),
                cluster_ips: cluster_ips(&value),
            }),
            _ => {}
        }
        documents.push(Document {
            source: Source {
                file: "the cluster store".into(),
                document: 0,
            },
            resource,
        });
    }
    documents.sort_by_key(|d| crate::control::rank(&d.resource.key().kind));
    Ok((documents, services))
}

/// The cluster IPs a stored Service carries.
fn cluster_ips(service: &Value) -> Vec<IpAddr> {
    service["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.as_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_manifests::{lab_state, parse};

    #[test]
    fn a_lab_state_reads_as_stored_resources() {
        let mut state = lab_state();
        let documents = parse(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n",
        );
        let Resource::Service(service) = documents[0].resource.clone() else {
            panic!("a service");
        };
        state.services.insert(
            "default/web".into(),
            ServiceRecord {
                service,
                cluster_ips: vec!["10.96.0.10".parse().expect("ip")],
            },
        );
        state.namespaces.insert("default".into());
        let stored = of_state(&state).expect("stored");
        let web = &stored[&ResourceKey {
            kind: "Service".into(),
            namespace: "default".into(),
            name: "web".into(),
        }];
        assert_eq!(web["spec"]["clusterIPs"], json!(["10.96.0.10"]));
        assert_eq!(
            cluster_ips(web),
            vec!["10.96.0.10".parse::<IpAddr>().expect("ip")]
        );
        assert!(stored.contains_key(&ResourceKey {
            kind: "Namespace".into(),
            namespace: CLUSTER_SCOPED.into(),
            name: "default".into(),
        }));
    }
}
