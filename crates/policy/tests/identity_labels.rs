//! The labels Cilium gives every pod identity beyond the pod's own
//! (https://docs.cilium.io/en/stable/security/policy/kubernetes/#serviceaccounts,
//! https://docs.cilium.io/en/stable/network/clustermesh/policy/): policies
//! select on them, and flows show them as Cilium writes them.

mod common;

use common::{apply, cluster, endpoint, verdict};
use myelin_policy::Verdict::{self, Allowed, Denied};
use myelin_policy::{PolicyEngine, identity};

/// A policy letting into the deathstar only the pods matching `labels`.
fn from_endpoints(labels: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p}}\nspec:\n  endpointSelector: {{matchLabels: {{class: deathstar}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{{labels}}}}}]\n"
    )
}

/// The verdict on `from` calling the deathstar's port 80.
fn to_deathstar(engine: &PolicyEngine, from: &str) -> Verdict {
    verdict(engine, from, "default/deathstar", "80/TCP")
}

#[test]
fn a_policy_selects_on_the_service_account() {
    let mut engine = cluster("");
    // A pod that names its service account; the others name none and run
    // as `default`, as Kubernetes assigns it.
    let mut probe = endpoint("default", "probe", &[("class", "probe")], "10.0.0.9", &[]);
    probe.service_account = Some("empire-probe".into());
    engine.upsert_endpoint(probe).expect("endpoint");
    apply(
        &mut engine,
        &from_endpoints("io.cilium.k8s.policy.serviceaccount: empire-probe"),
    );
    assert_eq!(to_deathstar(&engine, "default/probe"), Allowed);
    assert_eq!(to_deathstar(&engine, "default/tiefighter"), Denied);

    let engine = cluster(&from_endpoints(
        "k8s:io.cilium.k8s.policy.serviceaccount: default",
    ));
    assert_eq!(to_deathstar(&engine, "default/tiefighter"), Allowed);
}

#[test]
fn a_policy_selects_on_the_cluster() {
    let engine = cluster(&from_endpoints("io.cilium.k8s.policy.cluster: default"));
    assert_eq!(to_deathstar(&engine, "default/xwing"), Allowed);
    // Outside the cluster's pods: no match.
    assert_eq!(to_deathstar(&engine, "8.8.8.8"), Denied);

    let engine = cluster(&from_endpoints("io.cilium.k8s.policy.cluster: elsewhere"));
    assert_eq!(to_deathstar(&engine, "default/xwing"), Denied);
}

#[test]
fn identity_labels_read_as_cilium_writes_them() {
    let engine = cluster("");
    let xwing = engine.identity_of_ip("10.0.0.2".parse().expect("ip"));
    let labels = engine
        .identity_labels(xwing)
        .expect("xwing's identity")
        .to_strings();
    for label in [
        "k8s:class=xwing",
        "k8s:io.cilium.k8s.policy.cluster=default",
        "k8s:io.cilium.k8s.policy.serviceaccount=default",
        "k8s:io.kubernetes.pod.namespace=default",
    ] {
        assert!(labels.contains(&label.to_string()), "{label} in {labels:?}");
    }
    // A label without value has no `=`: `reserved:host`, not `reserved:host=`.
    let host = identity::reserved_labels(identity::HOST).expect("host labels");
    assert_eq!(host.to_strings(), ["reserved:host"]);
}
