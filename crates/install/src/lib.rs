//! What `myelin install` prints: the Kubernetes objects a cluster needs to run Myelin,
//! built as typed `k8s-openapi` objects and written as one YAML stream for
//! `kubectl apply -f -`.
//!
//! In order: the Namespace, Myelin's CRDs (and Cilium's policy CRDs when asked), the
//! agent's ServiceAccount, ClusterRole and binding, the ConfigMap with the agent's
//! settings and the CNI conflist, and the DaemonSet.
//!
//! The agent has no Kubernetes mode yet: it does not read pods, services or policies
//! from the API server. These manifests are the install shape for that mode, validated
//! against the API types; [`HEADER`] says so at the top of the output.

#![forbid(unsafe_code)]

pub mod cilium_crds;
mod labels;
pub mod node_agent;
pub mod options;
pub mod rbac;
mod render;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use options::{Checked, Error as OptionError, Options, Routing};
pub use render::RenderError;

/// The comment at the top of the output: what the manifests are and what does not work
/// yet.
pub const HEADER: &str = "\
# Myelin, as printed by `myelin install`.
#
# NOT YET FUNCTIONAL ON A CLUSTER: the agent has no Kubernetes mode yet. It does not
# read pods, namespaces, services, endpoint slices or policies from the API server, and
# does not use the CRDs below. These manifests are the install shape for that mode,
# checked against the Kubernetes API types. Until then, on a real cluster, the CNI plugin
# they install cannot give pods addresses (the agent learns neither the node's pod CIDRs
# nor its pods), so new pods on the node would fail to start: apply them only to a
# cluster you can throw away.
";

/// Why `myelin install` printed nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option's value was refused.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// A manifest could not be written as YAML.
    #[error(transparent)]
    Render(#[from] RenderError),
}

/// One object of the output.
#[derive(Clone, Debug)]
pub enum Manifest {
    /// The namespace of the agent's objects.
    Namespace(Namespace),
    /// The agent's account.
    ServiceAccount(ServiceAccount),
    /// What the agent may do, rule by rule with who needs it.
    ClusterRole {
        /// The role, its rules those of `grants`.
        role: ClusterRole,
        /// The rules with their reasons.
        grants: Vec<rbac::Grant>,
    },
    /// The account bound to the role.
    ClusterRoleBinding(ClusterRoleBinding),
    /// The agent's settings and the CNI conflist.
    ConfigMap(ConfigMap),
    /// The agent, the proxy and the CNI installer on every node.
    DaemonSet(Box<DaemonSet>),
    /// A custom resource definition.
    CustomResourceDefinition(Box<CustomResourceDefinition>),
}

/// The objects for `options`, in the order they are applied.
pub fn manifests(options: &Options) -> Result<Vec<Manifest>, OptionError> {
    let checked = options.check()?;
    let mut out = vec![Manifest::Namespace(Namespace {
        metadata: ObjectMeta {
            name: Some(checked.namespace.clone()),
            labels: Some(labels::common()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    })];
    let mut definitions = myelin_crd::definitions();
    if checked.with_cilium_crds {
        definitions.extend(cilium_crds::definitions());
    }
    out.extend(
        definitions
            .into_iter()
            .map(|crd| Manifest::CustomResourceDefinition(Box::new(crd))),
    );
    let grants = rbac::grants();
    out.extend([
        Manifest::ServiceAccount(rbac::service_account(&checked.namespace)),
        Manifest::ClusterRole {
            role: rbac::cluster_role(&grants),
            grants,
        },
        Manifest::ClusterRoleBinding(rbac::cluster_role_binding(&checked.namespace)),
        Manifest::ConfigMap(node_agent::config_map(&checked)),
        Manifest::DaemonSet(Box::new(node_agent::daemon_set(&checked))),
    ]);
    Ok(out)
}

/// The YAML stream `myelin install` prints for `options`.
pub fn render(options: &Options) -> Result<String, Error> {
    Ok(render::render(HEADER, &manifests(options)?)?)
}

#[cfg(test)]
mod tests;
