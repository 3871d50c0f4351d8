//! The lab's control plane: checks what is applied, plans it, carries it out
//! as one transaction, and reports what became of each resource.
//!
//! An apply is all or nothing. Everything is checked and planned first
//! (addresses, cluster IPs, pod names); nothing is touched if any document
//! fails. Then it is carried out: the agents learn namespaces, services and
//! policies (before any new pod starts, so pods start under their policy),
//! pods come up (without holding the state's lock), and only then does the
//! lab record the resources. Every step that changed something leaves an
//! undo; when a later step fails, the undos run in reverse, on the agents
//! too, and the failed resource is reported with its reason, the others as
//! not applied.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{Context as _, anyhow};
use myelin_api::agent::{EndpointSpec, Request, Response, ServiceSpec};
use myelin_api::lab::{Change, Outcome};
use myelin_model::workload::{Deployment, Namespace, Pod};
use myelin_model::{Document, Metadata, Resource, ResourceKey, Source};

use crate::ipam;
mod check;
mod delete;
mod generated_names;
mod status;

pub use delete::delete;
pub use status::status;

use crate::agent_specs::{endpoint_spec, service_spec};
use crate::kubelet;
use crate::names::host_veth;
use crate::node::Node;
use crate::placement::{self, NodeLoad};
use crate::state::{self, LabState, PodRecord, ServiceRecord};
use crate::supervisor::{Lab, Owner};
use crate::vocabulary::{kubectl_kind, namespace_of};
use check::{check, report_refused};
use generated_names::{random_suffix, template_hash};

/// One document of an apply and what the plan does with it.
struct Item {
    document: Document,
    outcome: Outcome,
}

/// What an apply will do, decided before anything is touched.
#[derive(Default)]
struct Plan {
    items: Vec<Item>,
    /// Services with their cluster IPs, by item index; with the record they replace.
    services: Vec<(usize, ServiceRecord, Option<ServiceRecord>)>,
    /// Pods to create, by item index (of the Pod or its Deployment), with
    /// their owner and the node placement chose.
    new_pods: Vec<(usize, Pod, Option<String>, String)>,
    /// Existing pods whose labels change: item index, key, new labels.
    relabelled: Vec<(usize, String, BTreeMap<String, String>)>,
    /// Pods of older templates or beyond the replicas: removed once the apply holds.
    retired: Vec<String>,
}

/// A change already made that a failed apply takes back.
enum Undo {
    /// Agents: apply these documents again (what was replaced) and forget these keys (what was new).
    Resources {
        restore: Vec<Document>,
        forget: Vec<ResourceKey>,
    },
    /// Agents: the service as it was (none: it was new).
    Service {
        namespace: String,
        name: String,
        previous: Option<ServiceSpec>,
    },
    /// An agent: the endpoint as it was.
    Endpoint {
        node: String,
        previous: EndpointSpec,
    },
    /// A pod this apply created.
    Pod(String),
}

/// A step of the apply failed: which item, and why.
struct Failure {
    item: usize,
    error: anyhow::Error,
}

/// Applies `documents` as one transaction and reports each resource once.
pub async fn apply(lab: &Lab, documents: Vec<Document>) -> Vec<Change> {
    let _turn = lab.writes.lock().await;
    apply_in_turn(lab, documents).await
}

/// [`apply`], for a caller that holds [`Lab::writes`] already.
async fn apply_in_turn(lab: &Lab, documents: Vec<Document>) -> Vec<Change> {
    let mut documents = documents;
    documents.sort_by_key(|d| rank(&d.resource.key().kind));
    let plan = lab.read(|state| {
        check(state, &documents)
            .and_then(|()| plan(state, &documents))
            .map_err(|problems| report_refused(&documents, &problems))
    });
    let mut plan = match plan {
        Ok(plan) => plan,
        Err(changes) => return changes,
    };
    let mut undo = Vec::new();
    match carry_out(lab, &plan, &mut undo).await {
        Ok(()) => {
            if let Err(e) = commit(lab, &plan) {
                tracing::error!("recording the apply: {e:#}");
            }
            for key in &plan.retired {
                if let Err(e) = delete_pod(lab, key).await {
                    tracing::warn!(pod = key, "removing a retired pod: {e:#}");
                }
            }
        }
        Err(Failure { item, error }) => {
            tracing::warn!("apply failed, rolling back: {error:#}");
            rollback(lab, undo).await;
            for (i, entry) in plan.items.iter_mut().enumerate() {
                entry.outcome = if i == item {
                    Outcome::Failed {
                        reason: format!("{error:#}"),
                    }
                } else {
                    Outcome::NotApplied
                };
            }
        }
    }
    plan.items.iter().map(change_of).collect()
}

/// Creation order: what others live in or refer to first.
pub(crate) fn rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "Service" => 1,
        "Deployment" => 3,
        "Pod" => 4,
        _ => 2,
    }
}

fn change_of(item: &Item) -> Change {
    let key = item.document.resource.key();
    Change {
        kind: kubectl_kind(&key.kind).to_string(),
        name: key.name,
        outcome: item.outcome.clone(),
    }
}

/// Decides what the apply does to each checked document, touching nothing;
/// new pods are placed on nodes here, so a pod no node can take refuses the
/// apply before anything exists (its problems by document index).
fn plan(state: &LabState, documents: &[Document]) -> Result<Plan, BTreeMap<usize, Vec<String>>> {
    let mut plan = Plan::default();
    let mut problems: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut loads: Vec<NodeLoad> = state
        .nodes
        .iter()
        .map(|node| NodeLoad {
            name: node.name.clone(),
            index: node.index,
            pods: state.pods.values().filter(|p| p.node == node.name).count(),
        })
        .collect();
    let mut fresh_namespaces = BTreeSet::new();
    let mut used_ips: BTreeSet<IpAddr> = state
        .services
        .values()
        .flat_map(|r| r.cluster_ips.iter().copied())
        .collect();
    let mut pod_names: BTreeSet<String> = state.pods.keys().cloned().collect();
    for (i, document) in documents.iter().enumerate() {
        let outcome = match &document.resource {
            Resource::Namespace(n) => {
                let name = &n.metadata.name;
                if !state.namespaces.contains(name) && fresh_namespaces.insert(name.clone()) {
                    Outcome::Created
                } else if namespace_labels(state, name) == n.metadata.labels {
                    Outcome::Unchanged
                } else {
                    Outcome::Configured
                }
            }
            Resource::Service(service) => {
                let key = state::key(&namespace_of(&service.metadata), &service.metadata.name);
                let existing = state.services.get(&key).cloned();
                let cluster_ips = match (&existing, service.spec.cluster_ip.as_deref()) {
                    (Some(record), _) => record.cluster_ips.clone(),
                    (None, Some("None")) => Vec::new(),
                    (None, Some(ip)) if !ip.is_empty() => ip.parse().into_iter().collect(),
                    _ => match ipam::next_service_addresses(&used_ips) {
                        Some((v4, v6)) => vec![IpAddr::V4(v4), IpAddr::V6(v6)],
                        None => Vec::new(),
                    },
                };
                used_ips.extend(cluster_ips.iter().copied());
                let outcome = match &existing {
                    None => Outcome::Created,
                    Some(r) if r.service == *service => Outcome::Unchanged,
                    Some(_) => Outcome::Configured,
                };
                let record = ServiceRecord {
                    service: service.clone(),
                    cluster_ips,
                };
                plan.services.push((i, record, existing));
                outcome
            }
            Resource::Deployment(deployment) => {
                match plan_deployment(state, i, deployment, &mut pod_names, &mut loads, &mut plan) {
                    Ok(outcome) => outcome,
                    Err(problem) => {
                        problems
                            .entry(i)
                            .or_default()
                            .push(format!("{}: {problem}", document.resource.key()));
                        Outcome::NotApplied
                    }
                }
            }
            Resource::Pod(pod) => {
                let key = state::key(&namespace_of(&pod.metadata), &pod.metadata.name);
                match state.pods.get(&key) {
                    Some(existing) if existing.pod.metadata.labels == pod.metadata.labels => {
                        Outcome::Unchanged
                    }
                    Some(_) => {
                        plan.relabelled.push((i, key, pod.metadata.labels.clone()));
                        Outcome::Configured
                    }
                    None if pod_names.insert(key) => {
                        let spec = &pod.spec;
                        match placement::place(
                            &mut loads,
                            spec.pinned_node(),
                            &spec.node_selector,
                            "spec",
                        ) {
                            Ok(node) => {
                                plan.new_pods.push((i, pod.clone(), None, node));
                                Outcome::Created
                            }
                            Err(problem) => {
                                problems
                                    .entry(i)
                                    .or_default()
                                    .push(format!("{}: {problem}", document.resource.key()));
                                Outcome::NotApplied
                            }
                        }
                    }
                    None => Outcome::Unchanged,
                }
            }
            policy => match state.policies.get(&policy.key().to_string()) {
                None => Outcome::Created,
                Some(existing) if existing.resource == *policy => Outcome::Unchanged,
                Some(_) => Outcome::Configured,
            },
        };
        plan.items.push(Item {
            document: document.clone(),
            outcome,
        });
    }
    if problems.is_empty() {
        Ok(plan)
    } else {
        Err(problems)
    }
}

/// A Deployment's pods: those of an older template and beyond the replicas
/// retire (the Recreate strategy, once the apply holds), missing ones are
/// created, each placed as a pod of its own (so they spread over the
/// nodes). Why a pod cannot be placed, if one cannot.
fn plan_deployment(
    state: &LabState,
    item: usize,
    deployment: &Deployment,
    pod_names: &mut BTreeSet<String>,
    loads: &mut [NodeLoad],
    plan: &mut Plan,
) -> Result<Outcome, String> {
    let namespace = namespace_of(&deployment.metadata);
    let key = state::key(&namespace, &deployment.metadata.name);
    let hash = template_hash(deployment);
    let (current, stale): (Vec<(&String, &PodRecord)>, Vec<_>) = state
        .pods
        .iter()
        .filter(|(_, p)| p.owner.as_deref() == Some(key.as_str()))
        .partition(|(_, p)| p.pod.metadata.labels.get("pod-template-hash") == Some(&hash));
    let replicas = deployment.spec.replicas as usize;
    plan.retired.extend(stale.iter().map(|(k, _)| (*k).clone()));
    plan.retired
        .extend(current.iter().skip(replicas).map(|(k, _)| (*k).clone()));
    for _ in current.len()..replicas {
        let mut labels = deployment.spec.template.metadata.labels.clone();
        labels.insert("pod-template-hash".into(), hash.clone());
        let name = loop {
            let candidate = format!("{}-{hash}-{}", deployment.metadata.name, random_suffix());
            if pod_names.insert(state::key(&namespace, &candidate)) {
                break candidate;
            }
        };
        let spec = &deployment.spec.template.spec;
        let node = placement::place(
            loads,
            spec.pinned_node(),
            &spec.node_selector,
            "spec.template.spec",
        )?;
        let pod = Pod::from_template(
            Metadata::named(name, Some(namespace.clone()), labels),
            spec.clone(),
        );
        plan.new_pods.push((item, pod, Some(key.clone()), node));
    }
    Ok(match state.deployments.get(&key) {
        None => Outcome::Created,
        Some(d) if d == deployment => Outcome::Unchanged,
        Some(_) => Outcome::Configured,
    })
}

/// Carries the plan out, leaving an undo for every change made.
async fn carry_out(lab: &Lab, plan: &Plan, undo: &mut Vec<Undo>) -> Result<(), Failure> {
    // The agents resolve policy from namespaces and services too.
    let for_agents: Vec<usize> = plan
        .items
        .iter()
        .enumerate()
        .filter(|(_, item)| {
            !matches!(
                item.document.resource,
                Resource::Pod(_) | Resource::Deployment(_)
            )
        })
        .map(|(i, _)| i)
        .collect();
    if !for_agents.is_empty() {
        let documents: Vec<Document> = for_agents
            .iter()
            .map(|&i| plan.items[i].document.clone())
            .collect();
        let (restore, forget) = lab.read(|state| replaced(state, &documents));
        for node in lab.nodes() {
            let request = Request::ResourcesApply {
                documents: documents.clone(),
            };
            let answer = node.agent(&request).await;
            // Whatever the agent took in is taken back on failure, even a part.
            undo.push(Undo::Resources {
                restore: restore.clone(),
                forget: forget.clone(),
            });
            let outcomes = match answer {
                Ok(Response::Resources { outcomes }) => outcomes,
                Ok(other) => {
                    return Err(Failure {
                        item: for_agents[0],
                        error: anyhow!("the agent of {} answered {other:?}", node.name()),
                    });
                }
                Err(error) => {
                    return Err(Failure {
                        item: for_agents[0],
                        error,
                    });
                }
            };
            if let Some((n, reason)) = rejected(&outcomes) {
                return Err(Failure {
                    item: for_agents[n],
                    error: anyhow!("rejected by the agent of {}: {reason}", node.name()),
                });
            }
        }
    }
    for (item, record, previous) in &plan.services {
        let spec = service_spec(record);
        undo.push(Undo::Service {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            previous: previous.as_ref().map(service_spec),
        });
        let result = if record.cluster_ips.is_empty()
            && record.service.spec.cluster_ip.as_deref() != Some("None")
        {
            Err(anyhow!("the service CIDRs are full"))
        } else {
            lab.tell_agents(&Request::ServiceUpsert(spec)).await
        };
        result.map_err(|error| Failure { item: *item, error })?;
    }
    for (item, key, labels) in &plan.relabelled {
        relabel(lab, key, labels, undo)
            .await
            .map_err(|error| Failure { item: *item, error })?;
    }
    for (item, pod, owner, node) in &plan.new_pods {
        create_pod(lab, pod.clone(), owner.clone(), node, undo)
            .await
            .map_err(|error| Failure { item: *item, error })?;
    }
    Ok(())
}

/// Gives the Deployments `owners` (`namespace/name`) the pods they miss
/// after a node was drained, placed on the nodes left, as a Deployment's
/// controller would; the caller holds [`Lab::writes`]. Returns the new
/// pods as `namespace/name on node`.
pub(crate) async fn replace_drained(
    lab: &Lab,
    owners: &BTreeSet<String>,
) -> anyhow::Result<Vec<String>> {
    let (documents, before) = lab.read(|state| {
        let documents: Vec<Document> = owners
            .iter()
            .filter_map(|key| state.deployments.get(key))
            .map(|d| from_state(Resource::Deployment(d.clone())))
            .collect();
        let before: BTreeSet<String> = state.pods.keys().cloned().collect();
        (documents, before)
    });
    if documents.is_empty() {
        return Ok(Vec::new());
    }
    let changes = apply_in_turn(lab, documents).await;
    if let Some(failed) = changes.iter().find(|c| c.outcome.is_error()) {
        anyhow::bail!("{failed}");
    }
    Ok(lab.read(|state| {
        state
            .pods
            .iter()
            .filter(|(key, _)| !before.contains(*key))
            .map(|(key, pod)| format!("{key} on {}", pod.node))
            .collect()
    }))
}

/// Tells the agent of a node that joins the running lab what the other
/// agents know: the namespaces (with their labels), the services and the
/// policies, in the order an apply sends them.
pub(crate) async fn catch_up(lab: &Lab, node: &Node) -> anyhow::Result<()> {
    // A joining node learns the cluster's resources from the store, as the
    // lab wrote them (now, in case a write is still due).
    let store = lab
        .store()
        .ok_or_else(|| anyhow!("the lab runs no cluster store to learn its resources from"))?;
    lab.store_resources().await?;
    let (documents, services) = crate::stored_resources::for_joining_node(store).await?;
    let services: Vec<ServiceSpec> = services.iter().map(service_spec).collect();
    match node.agent(&Request::ResourcesApply { documents }).await? {
        Response::Resources { outcomes } => {
            if let Some((_, reason)) = rejected(&outcomes) {
                anyhow::bail!(
                    "the agent of {} rejected the lab's resources: {reason}",
                    node.name()
                );
            }
        }
        other => anyhow::bail!("the agent of {} answered {other:?}", node.name()),
    }
    for spec in services {
        node.agent(&Request::ServiceUpsert(spec)).await?;
    }
    Ok(())
}

/// The first document an agent rejected: its index among those sent, and why.
fn rejected(outcomes: &[myelin_api::agent::ResourceOutcome]) -> Option<(usize, String)> {
    outcomes
        .iter()
        .enumerate()
        .find_map(|(n, o)| o.error.clone().map(|e| (n, e)))
}

/// What the agents must get back if `documents` are undone: the documents
/// they replace, and the keys of those that are new.
fn replaced(state: &LabState, documents: &[Document]) -> (Vec<Document>, Vec<ResourceKey>) {
    let mut restore = Vec::new();
    let mut forget = Vec::new();
    for document in documents {
        let key = document.resource.key();
        let previous = match &document.resource {
            Resource::Namespace(n) => {
                let name = &n.metadata.name;
                state.namespaces.contains(name).then(|| {
                    let mut namespace = Namespace::named(name);
                    namespace.metadata.labels = namespace_labels(state, name);
                    from_state(Resource::Namespace(namespace))
                })
            }
            Resource::Service(_) => state
                .services
                .get(&state::key(&key.namespace, &key.name))
                .map(|r| from_state(Resource::Service(r.service.clone()))),
            _ => state.policies.get(&key.to_string()).cloned(),
        };
        match previous {
            Some(previous) => restore.push(previous),
            None => forget.push(key),
        }
    }
    (restore, forget)
}

/// A resource as the lab recorded it, to give back to the agents.
fn from_state(resource: Resource) -> Document {
    Document {
        source: Source {
            file: "the lab's state".into(),
            document: 0,
        },
        resource,
    }
}

/// The labels namespace `name` has in the lab.
fn namespace_labels(state: &LabState, name: &str) -> BTreeMap<String, String> {
    state
        .namespace_labels
        .get(name)
        .cloned()
        .unwrap_or_default()
}

/// Changes an existing pod's labels in its agent.
async fn relabel(
    lab: &Lab,
    key: &str,
    labels: &BTreeMap<String, String>,
    undo: &mut Vec<Undo>,
) -> anyhow::Result<()> {
    let record = lab
        .read(|s| s.pods.get(key).cloned())
        .ok_or_else(|| anyhow!("pod {key} vanished"))?;
    let previous = endpoint_spec(&record);
    let mut spec = previous.clone();
    spec.labels = labels.clone();
    undo.push(Undo::Endpoint {
        node: record.node.clone(),
        previous,
    });
    lab.node(&record.node)?
        .agent(&Request::EndpointUpsert(spec))
        .await?;
    Ok(())
}

/// Creates a pod on node `node` (placement chose it): its record (before
/// anything exists, so a crash leaves nothing unnamed), namespace and veth,
/// the endpoint in the agent, its processes; waits until it is ready.
async fn create_pod(
    lab: &Lab,
    pod: Pod,
    owner: Option<String>,
    node: &str,
    undo: &mut Vec<Undo>,
) -> anyhow::Result<()> {
    let namespace = namespace_of(&pod.metadata);
    let key = state::key(&namespace, &pod.metadata.name);
    let node = lab.node(node)?;
    let (record, mtu) = lab.write(|state| {
        let used: BTreeSet<IpAddr> = state
            .pods
            .values()
            .flat_map(|p| [IpAddr::V4(p.ipv4), IpAddr::V6(p.ipv6)])
            .collect();
        let (ipv4, ipv6) = ipam::next_pod_addresses(node.record.index, &used)
            .ok_or_else(|| anyhow!("node {} has no free pod address", node.name()))?;
        let record = PodRecord {
            netns: lab.names.pod_netns(&namespace, &pod.metadata.name),
            host_veth: host_veth(&namespace, &pod.metadata.name),
            pod,
            owner,
            node: node.name().to_string(),
            ipv4,
            ipv6,
            mac: Some(ipam::pod_mac(ipv4)),
            processes: Vec::new(),
            phase: "Pending".into(),
            ready: false,
        };
        state.pods.insert(key.clone(), record.clone());
        anyhow::Ok((record, state.pod_mtu))
    })??;
    undo.push(Undo::Pod(key.clone()));
    kubelet::wire(&record, &node.record, mtu)?;
    node.agent(&Request::EndpointUpsert(endpoint_spec(&record)))
        .await?;
    let started = kubelet::start(&lab.names, &lab.exe, &record)
        .await
        .with_context(|| format!("pod {key} did not become ready"))?;
    let processes = started.iter().map(|s| s.record.clone()).collect();
    let spec = lab.write(|state| {
        let r = state.pods.get_mut(&key)?;
        r.processes = processes;
        r.phase = "Running".into();
        r.ready = true;
        Some(endpoint_spec(r))
    })?;
    for s in started {
        lab.watch(s.child, Owner::Pod(key.clone()), s.record.pid);
    }
    let spec = spec.ok_or_else(|| anyhow!("pod {key} vanished"))?;
    node.agent(&Request::EndpointUpsert(spec)).await?;
    Ok(())
}

/// Takes back what a failed apply changed, newest first. Best effort: what
/// cannot be undone is logged.
async fn rollback(lab: &Lab, undo: Vec<Undo>) {
    for step in undo.into_iter().rev() {
        let result = match step {
            Undo::Resources { restore, forget } => {
                let mut result = Ok(());
                for node in lab.nodes() {
                    if !forget.is_empty() {
                        let request = Request::ResourcesDelete {
                            keys: forget.clone(),
                        };
                        result = result.and(node.agent(&request).await.map(drop));
                    }
                    if !restore.is_empty() {
                        let request = Request::ResourcesApply {
                            documents: restore.clone(),
                        };
                        result = result.and(node.agent(&request).await.map(drop));
                    }
                }
                result
            }
            Undo::Service {
                namespace,
                name,
                previous,
            } => {
                let request = match previous {
                    Some(spec) => Request::ServiceUpsert(spec),
                    None => Request::ServiceDelete { namespace, name },
                };
                lab.tell_agents(&request).await
            }
            Undo::Endpoint { node, previous } => match lab.node(&node) {
                Ok(node) => node
                    .agent(&Request::EndpointUpsert(previous))
                    .await
                    .map(drop),
                Err(e) => Err(e),
            },
            Undo::Pod(key) => delete_pod(lab, &key).await,
        };
        if let Err(e) = result {
            tracing::error!("rolling back: {e:#}");
        }
    }
}

/// Records what the apply made, in one write.
fn commit(lab: &Lab, plan: &Plan) -> anyhow::Result<()> {
    lab.write(|state| {
        for item in &plan.items {
            let key = item.document.resource.key();
            match &item.document.resource {
                Resource::Namespace(n) => {
                    let name = &n.metadata.name;
                    state.namespaces.insert(name.clone());
                    if n.metadata.labels.is_empty() {
                        state.namespace_labels.remove(name);
                    } else {
                        state
                            .namespace_labels
                            .insert(name.clone(), n.metadata.labels.clone());
                    }
                }
                Resource::Deployment(d) => {
                    state
                        .deployments
                        .insert(state::key(&key.namespace, &key.name), d.clone());
                }
                Resource::Service(_) | Resource::Pod(_) => {}
                _ => {
                    state
                        .policies
                        .insert(key.to_string(), item.document.clone());
                }
            }
        }
        for (_, record, _) in &plan.services {
            let service = &record.service.metadata;
            let key = state::key(&namespace_of(service), &service.name);
            state.services.insert(key, record.clone());
        }
        for (_, key, labels) in &plan.relabelled {
            if let Some(pod) = state.pods.get_mut(key) {
                pod.pod.metadata.labels = labels.clone();
            }
        }
    })
}

/// Removes a pod: from its agent, then its processes and namespace, then
/// from the state.
pub(crate) async fn delete_pod(lab: &Lab, key: &str) -> anyhow::Result<()> {
    // Marked first: its containers' exits must not tell the agent of a pod
    // it has forgotten (an unready endpoint would come back in its place).
    let marked = lab.write(|s| {
        let record = s.pods.get_mut(key)?;
        record.phase = crate::state::TERMINATING.to_string();
        record.ready = false;
        Some(record.clone())
    })?;
    let Some(record) = marked else {
        return Ok(());
    };
    let request = Request::EndpointDelete {
        namespace: namespace_of(&record.pod.metadata),
        pod: record.pod.metadata.name.clone(),
    };
    let told = match lab.node(&record.node) {
        Ok(node) => node.agent(&request).await.map(drop),
        Err(e) => Err(e),
    };
    if let Err(e) = told {
        tracing::warn!(pod = key, "agent did not forget the endpoint: {e:#}");
    }
    // Stopping processes waits for them: off the async workers.
    tokio::task::spawn_blocking(move || kubelet::remove(&record))
        .await
        .map_err(|e| anyhow!("removing pod {key}: {e}"))??;
    lab.write(|s| {
        s.pods.remove(key);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_manifests::{lab_state, parse, policies};

    #[test]
    fn an_agent_rejection_names_the_document() {
        use myelin_api::agent::ResourceOutcome;
        let key = parse(&policies(1))[0].resource.key();
        let accepted = ResourceOutcome {
            key: key.clone(),
            error: None,
        };
        let refused = ResourceOutcome {
            key,
            error: Some("bad".into()),
        };
        assert_eq!(rejected(std::slice::from_ref(&accepted)), None);
        assert_eq!(rejected(&[accepted, refused]), Some((1, "bad".into())));
    }

    #[test]
    fn undoing_restores_replaced_policies_and_forgets_new_ones() {
        let mut state = lab_state();
        let old = parse(&policies(1));
        state
            .policies
            .insert(old[0].resource.key().to_string(), old[0].clone());
        let documents = parse(&policies(2));
        let (restore, forget) = replaced(&state, &documents);
        assert_eq!(restore, old);
        assert_eq!(forget, vec![documents[1].resource.key()]);
    }

    #[test]
    fn undoing_gives_a_namespace_back_its_labels() {
        let mut state = lab_state();
        state.namespace_labels.insert(
            "default".into(),
            [("team".to_string(), "a".to_string())].into(),
        );
        let documents = parse(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {team: b}}\n",
        );
        let (restore, forget) = replaced(&state, &documents);
        assert!(forget.is_empty());
        let [
            Document {
                resource: Resource::Namespace(namespace),
                ..
            },
        ] = restore.as_slice()
        else {
            panic!("{restore:?}");
        };
        assert_eq!(
            namespace.metadata.labels.get("team").map(String::as_str),
            Some("a")
        );
        let Ok(plan) = plan(&state, &documents) else {
            panic!("a namespace is always planned");
        };
        assert_eq!(plan.items[0].outcome, Outcome::Configured);
    }

    /// The lab state with nodes `node1` ... `node<count>`.
    fn state_with_nodes(count: u8) -> LabState {
        let names = crate::LabNames::new("plan");
        let mut state = lab_state();
        state.nodes = (1..=count)
            .map(|i| Node::new(&names, &crate::names::node_name(i), i).record)
            .collect();
        state
    }

    const SHIP: &str = "containers: [{name: c, image: quay.io/cilium/json-mock:v1.3.8}]";

    #[test]
    fn planning_places_replicas_pinned_and_free_pods() {
        let state = state_with_nodes(3);
        let documents = parse(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: pinned}}\nspec:\n  nodeName: node3\n  {SHIP}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: free}}\nspec:\n  {SHIP}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec:\n  replicas: 2\n  \
             selector: {{matchLabels: {{app: d}}}}\n  template:\n    metadata: {{labels: {{app: d}}}}\n    \
             spec:\n      {SHIP}\n"
        ));
        let mut documents = documents;
        documents.sort_by_key(|d| rank(&d.resource.key().kind));
        let Ok(plan) = plan(&state, &documents) else {
            panic!("every pod has a node");
        };
        let placed: Vec<(Option<&str>, &str)> = plan
            .new_pods
            .iter()
            .map(|(_, pod, owner, node)| {
                (
                    owner.is_none().then_some(pod.metadata.name.as_str()),
                    node.as_str(),
                )
            })
            .collect();
        // The replicas first (a Deployment ranks before pods), one a node;
        // then the pinned pod, then the free one on the node with the fewest.
        assert_eq!(
            placed,
            [
                (None, "node1"),
                (None, "node2"),
                (Some("pinned"), "node3"),
                (Some("free"), "node1"),
            ]
        );
    }

    #[test]
    fn planning_refuses_a_pod_pinned_to_a_missing_node() {
        let state = state_with_nodes(2);
        let documents = parse(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: fine}}\nspec:\n  {SHIP}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: lost}}\nspec:\n  nodeName: node9\n  {SHIP}\n"
        ));
        let Err(problems) = plan(&state, &documents) else {
            panic!("node9 does not exist");
        };
        assert_eq!(problems.keys().copied().collect::<Vec<_>>(), [1]);
        assert!(
            problems[&1][0].starts_with(
                "Pod default/lost: spec.nodeName: node \"node9\" does not exist; the lab's nodes are node1, node2"
            ),
            "{problems:?}"
        );
        let changes = report_refused(&documents, &problems);
        assert_eq!(changes[0].outcome, Outcome::NotApplied);
        assert!(matches!(changes[1].outcome, Outcome::Failed { .. }));
    }

    /// An agent that rejects every policy and records what it is asked.
    async fn rejecting_agent(
        socket: &std::path::Path,
    ) -> std::sync::Arc<std::sync::Mutex<Vec<Request>>> {
        use myelin_api::agent::ResourceOutcome;
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = tokio::net::UnixListener::bind(socket).expect("bind the agent's socket");
        let record = asked.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(myelin_api::serve_connection(
                    stream,
                    move |request: Request| {
                        record.lock().expect("record").push(request.clone());
                        async move {
                            Ok::<_, String>(match request {
                                Request::ResourcesApply { documents } => Response::Resources {
                                    outcomes: documents
                                        .iter()
                                        .map(|d| ResourceOutcome {
                                            key: d.resource.key(),
                                            error: (d.resource.key().kind == "CiliumNetworkPolicy")
                                                .then(|| "this agent takes no policy".to_string()),
                                        })
                                        .collect(),
                                },
                                _ => Response::Ok,
                            })
                        }
                    },
                ));
            }
        });
        asked
    }

    #[tokio::test]
    async fn a_policy_an_agent_rejects_fails_once_and_is_taken_back() {
        if !myelin_test_support::privileged(
            "a_policy_an_agent_rejects_fails_once_and_is_taken_back",
        ) {
            return;
        }
        let names = crate::LabNames::new(&format!("u{}-reject", std::process::id()));
        let node = crate::node::Node::new(&names, "node1", 1);
        std::fs::create_dir_all(names.node_dir("node1")).expect("node dir");
        let asked = rejecting_agent(&node.agent_socket()).await;
        let lab = Lab::for_tests(names.clone(), vec![node], lab_state());
        let documents = parse(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: fresh}}\n---\n{}",
            policies(1)
        ));
        let changes = apply(&lab, documents).await;
        let lines: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "namespace/fresh not applied: another resource of this apply failed",
                "ciliumnetworkpolicy.cilium.io/p0 failed: rejected by the agent of node1: this agent takes no policy",
            ]
        );
        lab.read(|state| {
            assert!(state.policies.is_empty() && !state.namespaces.contains("fresh"));
        });
        // What the agent took in is taken back from it.
        let asked = asked.lock().expect("asked").clone();
        let Some(Request::ResourcesDelete { keys }) = asked.last() else {
            panic!("no rollback on the agent: {asked:?}");
        };
        let names_taken_back: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names_taken_back, ["fresh", "p0"]);
        std::fs::remove_dir_all(names.run_dir()).expect("remove the test's run directory");
    }
}
