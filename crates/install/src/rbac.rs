//! Who the agent is to the API server: its ServiceAccount, the ClusterRole with exactly
//! the verbs the agent will use, and the binding between them. The CNI plugin needs no
//! grant of its own: it asks the node's agent, never the API server.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::labels;

/// The name of the ServiceAccount, the ClusterRole and the binding.
pub const NAME: &str = "myelin";

const READ: &[&str] = &["get", "list", "watch"];

/// One rule of the ClusterRole with who needs it and why: printed above the rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    /// Who uses the rule and for what.
    pub reason: &'static str,
    /// The rule.
    pub rule: PolicyRule,
}

fn grant(reason: &'static str, group: &str, resources: &[&str], verbs: &[&str]) -> Grant {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
    Grant {
        reason,
        rule: PolicyRule {
            api_groups: Some(vec![group.to_owned()]),
            resources: Some(strings(resources)),
            verbs: strings(verbs),
            ..PolicyRule::default()
        },
    }
}

/// Every rule the agent's ClusterRole holds, in the order printed.
pub fn grants() -> Vec<Grant> {
    vec![
        grant(
            "agent: pods' labels and service accounts and their namespaces' labels decide \
             identities; nodes give pod CIDRs and addresses; services are load-balanced",
            "",
            &["nodes", "namespaces", "pods", "services"],
            READ,
        ),
        grant(
            "agent: the backends of each service",
            "discovery.k8s.io",
            &["endpointslices"],
            READ,
        ),
        grant(
            "agent: Kubernetes NetworkPolicies, enforced in the datapath",
            "networking.k8s.io",
            &["networkpolicies"],
            READ,
        ),
        grant(
            "agent: Cilium's policies, enforced in the datapath and the proxy",
            "cilium.io",
            &["ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"],
            READ,
        ),
        grant(
            "agent: whether each Cilium policy is enforced or why not, in its status",
            "cilium.io",
            &[
                "ciliumnetworkpolicies/status",
                "ciliumclusterwidenetworkpolicies/status",
            ],
            &["patch", "update"],
        ),
        grant(
            "agent: its node, its pods' endpoints and the identities it allocates \
             (create-if-absent), and removing them when they go",
            myelin_crd::GROUP,
            &["myelinnodes", "myelinendpoints", "myelinidentities"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
        grant(
            "agent: events on pods and policies it cannot serve (a policy it refuses, an \
             address pool run dry)",
            "",
            &["events"],
            &["create", "patch"],
        ),
    ]
}

/// The agent's ServiceAccount in `namespace`.
pub fn service_account(namespace: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(NAME.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels::common()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    }
}

/// The ClusterRole holding `grants`' rules.
pub fn cluster_role(grants: &[Grant]) -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(NAME.to_owned()),
            labels: Some(labels::common()),
            ..ObjectMeta::default()
        },
        rules: Some(grants.iter().map(|grant| grant.rule.clone()).collect()),
        ..ClusterRole::default()
    }
}

/// Binds the ClusterRole to the agent's ServiceAccount in `namespace`.
pub fn cluster_role_binding(namespace: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(NAME.to_owned()),
            labels: Some(labels::common()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: NAME.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: NAME.to_owned(),
            namespace: Some(namespace.to_owned()),
            ..Subject::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every (group, resource, verb) the role grants.
    fn granted(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
        let mut out = BTreeSet::new();
        for rule in role.rules.as_deref().unwrap_or_default() {
            assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
            for group in rule.api_groups.as_deref().unwrap_or_default() {
                for resource in rule.resources.as_deref().unwrap_or_default() {
                    for verb in &rule.verbs {
                        assert!(
                            out.insert((group.clone(), resource.clone(), verb.clone())),
                            "{group} {resource} {verb} granted twice"
                        );
                    }
                }
            }
        }
        out
    }

    fn expand(group: &str, resources: &[&str], verbs: &[&str]) -> Vec<(String, String, String)> {
        resources
            .iter()
            .flat_map(|resource| {
                verbs
                    .iter()
                    .map(move |verb| (group.into(), (*resource).into(), (*verb).into()))
            })
            .collect()
    }

    #[test]
    fn the_role_grants_exactly_what_the_agent_uses() {
        let mut expected = BTreeSet::new();
        expected.extend(expand(
            "",
            &["nodes", "namespaces", "pods", "services"],
            READ,
        ));
        expected.extend(expand("discovery.k8s.io", &["endpointslices"], READ));
        expected.extend(expand("networking.k8s.io", &["networkpolicies"], READ));
        expected.extend(expand(
            "cilium.io",
            &["ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"],
            READ,
        ));
        expected.extend(expand(
            "cilium.io",
            &[
                "ciliumnetworkpolicies/status",
                "ciliumclusterwidenetworkpolicies/status",
            ],
            &["patch", "update"],
        ));
        expected.extend(expand(
            "myelin.io",
            &["myelinnodes", "myelinendpoints", "myelinidentities"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ));
        expected.extend(expand("", &["events"], &["create", "patch"]));
        assert_eq!(granted(&cluster_role(&grants())), expected);
    }

    #[test]
    fn every_rule_says_who_needs_it() {
        for grant in grants() {
            assert!(grant.reason.starts_with("agent: "), "{}", grant.reason);
        }
    }

    #[test]
    fn the_binding_names_the_role_and_the_account_in_its_namespace() {
        let binding = cluster_role_binding("mesh");
        assert_eq!(binding.role_ref.name, NAME);
        let subjects = binding.subjects.expect("subjects");
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].namespace.as_deref(), Some("mesh"));
        assert_eq!(
            service_account("mesh").metadata.namespace.as_deref(),
            Some("mesh")
        );
    }
}
