//! How the lab names things the way Kubernetes does: a resource's
//! namespace, a kind in kubectl's output.

use myelin_model::Metadata;

/// The namespace of a namespaced object (`default` when none is given).
pub fn namespace_of(metadata: &Metadata) -> String {
    metadata
        .namespace
        .clone()
        .unwrap_or_else(|| myelin_model::manifest::DEFAULT_NAMESPACE.to_string())
}

/// How kubectl names a kind in its output lines.
pub fn kubectl_kind(kind: &str) -> &'static str {
    match kind {
        "Namespace" => "namespace",
        "Pod" => "pod",
        "Deployment" => "deployment.apps",
        "Service" => "service",
        "CiliumNetworkPolicy" => "ciliumnetworkpolicy.cilium.io",
        "CiliumClusterwideNetworkPolicy" => "ciliumclusterwidenetworkpolicy.cilium.io",
        "NetworkPolicy" => "networkpolicy.networking.k8s.io",
        _ => "resource",
    }
}
