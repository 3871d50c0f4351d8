//! `myelin delete`: what a delete removes is decided from the state at
//! once; the agents get one request for all they forget.

use std::collections::BTreeSet;

use myelin_api::agent::Request;
use myelin_api::lab::{Change, Outcome};
use myelin_model::ResourceKey;

use super::{delete_pod, rank};
use crate::state::{self, LabState};
use crate::supervisor::Lab;
use crate::vocabulary::kubectl_kind;

/// What a delete removes, decided from the state at once.
#[derive(Debug, Default, PartialEq)]
struct DeletePlan {
    /// One per key, in the order they are handled.
    changes: Vec<Change>,
    /// Pods to remove (named, owned by a deleted Deployment, or in a deleted namespace).
    pods: Vec<String>,
    /// Deployments to forget.
    deployments: Vec<String>,
    /// Services to remove, as `(namespace, name)`.
    services: Vec<(String, String)>,
    /// Namespaces to forget.
    namespaces: Vec<String>,
    /// Policies to forget, by their key's text.
    policies: Vec<String>,
    /// What the agents' policy engines forget: policies, namespaces, services.
    engine_keys: Vec<ResourceKey>,
}

impl DeletePlan {
    /// The requests every agent gets, besides one per pod: one per service
    /// and one for everything its policy engine forgets, however many.
    fn agent_requests(&self) -> Vec<Request> {
        let mut requests: Vec<Request> = self
            .services
            .iter()
            .map(|(namespace, name)| Request::ServiceDelete {
                namespace: namespace.clone(),
                name: name.clone(),
            })
            .collect();
        if !self.engine_keys.is_empty() {
            requests.push(Request::ResourcesDelete {
                keys: self.engine_keys.clone(),
            });
        }
        requests
    }
}

/// Plans the delete of `keys`: each is looked up once, in creation order
/// reversed (a namespace goes after what is in it).
fn plan_delete(state: &LabState, mut keys: Vec<ResourceKey>) -> DeletePlan {
    keys.sort_by_key(|k| std::cmp::Reverse(rank(&k.kind)));
    let mut plan = DeletePlan::default();
    let mut pods = BTreeSet::new();
    let mut services = BTreeSet::new();
    for key in keys {
        let k = state::key(&key.namespace, &key.name);
        let found = match key.kind.as_str() {
            "Pod" => state.pods.contains_key(&k).then(|| {
                pods.insert(k.clone());
            }),
            "Deployment" => state.deployments.contains_key(&k).then(|| {
                plan.deployments.push(k.clone());
                pods.extend(
                    state
                        .pods
                        .iter()
                        .filter(|(_, p)| p.owner.as_deref() == Some(k.as_str()))
                        .map(|(k, _)| k.clone()),
                );
            }),
            "Service" => state.services.contains_key(&k).then(|| {
                services.insert((key.namespace.clone(), key.name.clone()));
                plan.engine_keys.push(key.clone());
            }),
            "Namespace" => state.namespaces.contains(&key.name).then(|| {
                let prefix = format!("{}/", key.name);
                let inside = |k: &&String| k.starts_with(&prefix);
                pods.extend(state.pods.keys().filter(inside).cloned());
                plan.deployments
                    .extend(state.deployments.keys().filter(inside).cloned());
                services.extend(
                    state
                        .services
                        .keys()
                        .filter(inside)
                        .filter_map(|k| k.split_once('/'))
                        .map(|(n, s)| (n.to_string(), s.to_string())),
                );
                plan.namespaces.push(key.name.clone());
                plan.engine_keys.push(key.clone());
            }),
            _ => state.policies.contains_key(&key.to_string()).then(|| {
                plan.policies.push(key.to_string());
                plan.engine_keys.push(key.clone());
            }),
        };
        plan.changes.push(Change {
            kind: kubectl_kind(&key.kind).to_string(),
            name: key.name,
            outcome: match found {
                Some(()) => Outcome::Deleted,
                None => Outcome::NotFound,
            },
        });
    }
    plan.pods = pods.into_iter().collect();
    plan.services = services.into_iter().collect();
    plan
}

/// Deletes `keys`; a missing one is reported, the rest deleted. Linear in
/// what it deletes: the agents get one request for all the policies.
pub async fn delete(lab: &Lab, keys: Vec<ResourceKey>) -> Vec<Change> {
    let _turn = lab.writes.lock().await;
    let mut plan = lab.read(|state| plan_delete(state, keys));
    let mut failures = Vec::new();
    for pod in &plan.pods {
        if let Err(e) = delete_pod(lab, pod).await {
            failures.push(format!("pod {pod}: {e:#}"));
        }
    }
    for request in plan.agent_requests() {
        if let Err(e) = lab.tell_agents(&request).await {
            failures.push(format!("{e:#}"));
        }
    }
    let recorded = lab.write(|state| {
        for deployment in &plan.deployments {
            state.deployments.remove(deployment);
        }
        for (namespace, name) in &plan.services {
            state.services.remove(&state::key(namespace, name));
        }
        for namespace in &plan.namespaces {
            state.namespaces.remove(namespace);
            state.namespace_labels.remove(namespace);
        }
        for policy in &plan.policies {
            state.policies.remove(policy);
        }
    });
    if let Err(e) = recorded {
        failures.push(format!("recording the delete: {e:#}"));
    }
    if !failures.is_empty() {
        let reason = failures.join("; ");
        for change in plan.changes.iter_mut() {
            if change.outcome == Outcome::Deleted {
                change.outcome = Outcome::Failed {
                    reason: reason.clone(),
                };
            }
        }
    }
    plan.changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_manifests::{lab_state, parse, policies};

    #[test]
    fn deleting_many_policies_is_one_request_per_agent() {
        let mut state = lab_state();
        for document in parse(&policies(2000)) {
            state
                .policies
                .insert(document.resource.key().to_string(), document);
        }
        let keys: Vec<ResourceKey> = state.policies.values().map(|d| d.resource.key()).collect();
        let plan = plan_delete(&state, keys);
        assert_eq!(plan.agent_requests().len(), 1);
        assert_eq!(plan.policies.len(), 2000);
        assert!(plan.changes.iter().all(|c| c.outcome == Outcome::Deleted));
    }

    #[test]
    fn a_delete_reports_each_key_once_and_what_is_missing() {
        let state = lab_state();
        let keys: Vec<ResourceKey> = parse(&policies(1))
            .iter()
            .map(|d| d.resource.key())
            .collect();
        let plan = plan_delete(&state, keys);
        assert_eq!(plan.changes.len(), 1);
        assert_eq!(plan.changes[0].outcome, Outcome::NotFound);
        assert!(plan.agent_requests().is_empty());
    }
}
