//! The labels Cilium gives every pod identity beyond the pod's own
//! (https://docs.cilium.io/en/stable/security/policy/kubernetes/#serviceaccounts,
//! https://docs.cilium.io/en/stable/network/clustermesh/policy/): policies
//! select on them, and flows show them as Cilium writes them.

mod common;

use common::{apply, cluster, endpoint, verdict};
use myelin_policy::Verdict::{Allowed, Denied};
use myelin_policy::identity;

fn cnp(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  endpointSelector: {{matchLabels: {{class: deathstar}}}}\n{spec}\n"
    )
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
        &cnp(
            "by-sa",
            "  ingress:\n  - fromEndpoints: [{matchLabels: {io.cilium.k8s.policy.serviceaccount: empire-probe}}]",
        ),
    );
    assert_eq!(
        verdict(&engine, "default/probe", "default/deathstar", "80/TCP"),
        Allowed
    );
    assert_eq!(
        verdict(&engine, "default/tiefighter", "default/deathstar", "80/TCP"),
        Denied
    );

    let mut engine = cluster("");
    apply(
        &mut engine,
        &cnp(
            "default-sa",
            "  ingress:\n  - fromEndpoints: [{matchLabels: {k8s:io.cilium.k8s.policy.serviceaccount: default}}]",
        ),
    );
    assert_eq!(
        verdict(&engine, "default/tiefighter", "default/deathstar", "80/TCP"),
        Allowed
    );
}

#[test]
fn a_policy_selects_on_the_cluster() {
    let this = cluster(&cnp(
        "this-cluster",
        "  ingress:\n  - fromEndpoints: [{matchLabels: {io.cilium.k8s.policy.cluster: default}}]",
    ));
    assert_eq!(
        verdict(&this, "default/xwing", "default/deathstar", "80/TCP"),
        Allowed
    );
    // Outside the cluster's pods: no match.
    assert_eq!(
        verdict(&this, "8.8.8.8", "default/deathstar", "80/TCP"),
        Denied
    );

    let other = cluster(&cnp(
        "other-cluster",
        "  ingress:\n  - fromEndpoints: [{matchLabels: {io.cilium.k8s.policy.cluster: elsewhere}}]",
    ));
    assert_eq!(
        verdict(&other, "default/xwing", "default/deathstar", "80/TCP"),
        Denied
    );
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
