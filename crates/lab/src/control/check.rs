//! Checks an apply against the lab before anything is touched: each
//! document's problems, with the file and document they come from.

use std::collections::BTreeMap;
use std::net::IpAddr;

use myelin_api::lab::{Change, Outcome};
use myelin_model::{Document, Resource};

use super::{Item, change_of};
use crate::state::{self, LabState};
use crate::{ipam, kubelet};

/// Every document, failed with its problems or not applied.
pub fn report_refused(
    documents: &[Document],
    problems: &BTreeMap<usize, Vec<String>>,
) -> Vec<Change> {
    documents
        .iter()
        .enumerate()
        .map(|(i, document)| {
            let outcome = match problems.get(&i) {
                Some(problems) => Outcome::Failed {
                    reason: format!(
                        "{}: document {}: {}",
                        document.source.file,
                        document.source.document,
                        problems.join("; ")
                    ),
                },
                None => Outcome::NotApplied,
            };
            change_of(&Item {
                document: document.clone(),
                outcome,
            })
        })
        .collect()
}

/// Checks a whole batch against the lab before changing anything; the
/// problems of each document by its index.
pub fn check(state: &LabState, documents: &[Document]) -> Result<(), BTreeMap<usize, Vec<String>>> {
    let mut problems: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut namespaces = state.namespaces.clone();
    for d in documents {
        if let Resource::Namespace(n) = &d.resource {
            namespaces.insert(n.metadata.name.clone());
        }
    }
    for (i, d) in documents.iter().enumerate() {
        let mut problem = |text: String| problems.entry(i).or_default().push(text);
        let key = d.resource.key();
        if !key.namespace.is_empty() && !namespaces.contains(&key.namespace) {
            problem(format!(
                "{key}: namespace {:?} does not exist; create it first (kind: Namespace)",
                key.namespace
            ));
        }
        let pod_spec = match &d.resource {
            Resource::Pod(p) => Some(&p.spec),
            Resource::Deployment(dep) => Some(&dep.spec.template.spec),
            _ => None,
        };
        for (c, container) in pod_spec
            .into_iter()
            .flat_map(|s| s.containers.iter().enumerate())
        {
            if let Some(why) = kubelet::container_problem(container) {
                problem(format!(
                    "{key}: containers[{c}] ({}): {why}",
                    container.name
                ));
            }
        }
        if let Resource::Pod(p) = &d.resource
            && let Some(existing) = state.pods.get(&state::key(&key.namespace, &key.name))
            && existing.pod.spec != p.spec
        {
            problem(format!(
                "{key}: a pod's spec cannot change; delete the pod and apply it again"
            ));
        }
        if let Resource::Service(s) = &d.resource
            && let Some(ip) = s
                .spec
                .cluster_ip
                .as_deref()
                .filter(|ip| *ip != "None" && !ip.is_empty())
        {
            match ip.parse::<IpAddr>() {
                Ok(ip) if !ipam::in_service_cidr(ip) => problem(format!(
                    "{key}: spec.clusterIP {ip} is outside the service CIDRs {}",
                    ipam::SERVICE_CIDRS.join(", ")
                )),
                Ok(ip) => {
                    let taken = state.services.iter().any(|(k, r)| {
                        *k != state::key(&key.namespace, &key.name) && r.cluster_ips.contains(&ip)
                    });
                    if taken {
                        problem(format!("{key}: spec.clusterIP {ip} is already allocated"));
                    }
                }
                Err(_) => problem(format!("{key}: spec.clusterIP {ip:?} is not an address")),
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_manifests::{lab_state, parse, policies};

    #[test]
    fn a_refused_apply_reports_every_document_once() {
        let state = lab_state();
        let documents = parse(&format!(
            "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: nowhere}}\n\
             spec:\n  containers:\n  - {{name: c, image: nginx:1.27}}\n",
            policies(1)
        ));
        let problems = check(&state, &documents).expect_err("problems");
        let changes = report_refused(&documents, &problems);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].outcome, Outcome::NotApplied);
        let Outcome::Failed { reason } = &changes[1].outcome else {
            panic!("{changes:?}");
        };
        assert!(
            reason.contains("\"nowhere\" does not exist") && reason.contains("nginx:1.27"),
            "{reason}"
        );
    }
}
